//! Local fallback: with the server away past `fallback.after_secs` and a P0
//! pending, the gateway alerts on site (local MQTT topic and webhook); with
//! the server up, it does not.

use std::time::Duration;

use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, eventually, free_port, mqtt::Probe, webhook::WebhookReceiver,
};

const LOCAL_TOPIC: &str = "anxin/v1/gw/local-alarm";

fn fallback_config(webhook: &str) -> Vec<(&'static str, String)> {
    vec![
        ("fallback", "after_secs = 1".into()),
        ("fallback", format!("webhook_url = \"{webhook}\"")),
        ("supervision", "check_interval_ms = 100".into()),
    ]
}

async fn start_gateway(dir: &std::path::Path, server_port: u16, webhook: &str) -> Gateway {
    let extra = fallback_config(webhook);
    let extra: Vec<(&str, &str)> = extra.iter().map(|(s, l)| (*s, l.as_str())).collect();
    Gateway::start_with(dir, server_port, &["btn-1"], &extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_locally_when_the_server_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut webhook = WebhookReceiver::start().await;
    let gateway = start_gateway(dir.path(), free_port(), &webhook.url()).await;
    let mut siren = Probe::connect(gateway.mqtt_port, "siren", &[LOCAL_TOPIC]).await;

    let mut press = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-1", "--until", "stored"],
    );
    let pressed = press.line_starting("pressed", PATIENCE).await;
    let seq = anxin_tests::field(&pressed, "seq").unwrap().to_string();
    press.line_starting("stored", PATIENCE).await;

    let (topic, payload) = siren.next(PATIENCE).await.expect("a local alarm on MQTT");
    assert_eq!(topic, LOCAL_TOPIC);
    let alarm: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(alarm["reason"], "server_unreachable");
    assert_eq!(alarm["gatewayId"], "gw-test");
    assert_eq!(alarm["events"][0]["deviceId"], "btn-1");
    assert_eq!(alarm["events"][0]["seq"], seq.as_str());

    let posted = tokio::time::timeout(PATIENCE, webhook.bodies.recv())
        .await
        .expect("the webhook to be called")
        .unwrap();
    assert_eq!(posted["events"], alarm["events"]);

    // Recorded, and raised once for that P0, not at every check.
    let checks = gateway.metric("anxin_gateway_fallback_checks_total").await;
    eventually("ten more fallback checks", PATIENCE, || async {
        (gateway.metric("anxin_gateway_fallback_checks_total").await >= checks + 10.0).then_some(())
    })
    .await;
    assert_eq!(
        gateway
            .metric("anxin_gateway_local_alarms_total{reason=\"server_unreachable\"}")
            .await,
        1.0
    );
    assert!(
        siren.next(Duration::from_millis(10)).await.is_none(),
        "raised twice"
    );
    assert!(gateway.proc.log().contains("LOCAL ALARM"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stays_quiet_when_the_server_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut webhook = WebhookReceiver::start().await;
    let server = Server::start(dir.path()).await;
    let gateway = start_gateway(dir.path(), server.grpc_port, &webhook.url()).await;
    let mut siren = Probe::connect(gateway.mqtt_port, "siren", &[LOCAL_TOPIC]).await;

    let mut press = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-1", "--until", "stored"],
    );
    press.line_starting("stored", PATIENCE).await;
    eventually("the alert at the server", PATIENCE, || async {
        (server.alerts_for("btn-1").await.len() == 1).then_some(())
    })
    .await;

    // Twenty checks at 100 ms: well past after_secs = 1.
    let checks = gateway.metric("anxin_gateway_fallback_checks_total").await;
    eventually("twenty more fallback checks", PATIENCE, || async {
        (gateway.metric("anxin_gateway_fallback_checks_total").await >= checks + 20.0).then_some(())
    })
    .await;
    assert_eq!(
        gateway
            .metric("anxin_gateway_local_alarms_total{reason=\"server_unreachable\"}")
            .await,
        0.0
    );
    assert!(siren.next(Duration::from_millis(10)).await.is_none());
    assert!(webhook.bodies.try_recv().is_err());
}

/// A server that takes the gateway's stream and never acknowledges anything:
/// a real tonic `Uplink` service on loopback.
struct SilentServer;

#[tonic::async_trait]
impl anxin_proto::v1::uplink_server::Uplink for SilentServer {
    type LinkStream = anxin_tests::grpc::UplinkStream;

    async fn link(
        &self,
        request: tonic::Request<tonic::Streaming<anxin_proto::v1::GatewayMessage>>,
    ) -> Result<tonic::Response<Self::LinkStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        Ok(tonic::Response::new(Box::pin(futures::stream::pending())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_when_the_server_takes_the_stream_but_never_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let port = anxin_tests::grpc::serve_uplink(SilentServer).await;
    let mut webhook = WebhookReceiver::start().await;
    let gateway = start_gateway(dir.path(), port, &webhook.url()).await;
    eventually("the uplink to connect", PATIENCE, || async {
        (gateway.health().await["uplink"]["state"] == "connected").then_some(())
    })
    .await;
    let mut siren = Probe::connect(gateway.mqtt_port, "siren", &[LOCAL_TOPIC]).await;
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-1").await;

    let (_, payload) = siren.next(PATIENCE).await.expect("a local alarm on MQTT");
    let alarm: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(alarm["reason"], "server_not_acknowledging");
    assert_eq!(alarm["events"][0]["deviceId"], "btn-1");
    tokio::time::timeout(PATIENCE, webhook.bodies.recv())
        .await
        .expect("the webhook to be called");
    // The stream is still up all along: health says what is wrong.
    let health = gateway.health().await;
    assert_eq!(health["uplink"]["state"], "connected", "{health}");
    assert!(
        health["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "uplink_stalled"),
        "{health}"
    );
}
