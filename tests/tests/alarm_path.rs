//! The alarm path end to end, with the real three binaries: a press reaches
//! the dispatcher over SSE and gRPC, the dispatcher acknowledges over REST,
//! and "help is coming" reaches the device.

use anxin_proto::v1::{AlertState, WatchAlertsRequest, dispatch_client::DispatchClient};
use anxin_tests::{Gateway, PATIENCE, Server, Sim, field, sse::SseStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn press_reaches_dispatcher_and_help_is_coming_reaches_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["btn-0001"]).await;

    // Dispatchers watch before anything happens.
    let mut sse = SseStream::connect(&format!("{}/api/v1/alerts/stream", server.http())).await;
    let mut dispatch = DispatchClient::connect(server.grpc()).await.unwrap();
    let mut watch = dispatch
        .watch_alerts(WatchAlertsRequest { states: vec![] })
        .await
        .unwrap()
        .into_inner();

    let mut sim = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-0001"],
    );
    let pressed = sim.line_starting("pressed", PATIENCE).await;
    let seq = field(&pressed, "seq").unwrap().to_string();
    sim.line_starting("stored", PATIENCE).await;

    // Over SSE.
    let alert = tokio::time::timeout(PATIENCE, async {
        loop {
            let event = sse.next().await.expect("SSE stream ended");
            if event.event == "alert" {
                break serde_json::from_str::<serde_json::Value>(&event.data).unwrap();
            }
        }
    })
    .await
    .expect("alert over SSE");
    assert_eq!(alert["deviceId"], "btn-0001");
    assert_eq!(alert["seq"], seq.as_str());
    assert_eq!(alert["kind"], "EVENT_KIND_SOS");
    assert_eq!(alert["state"], "ALERT_STATE_NEW");
    let alert_id = alert["id"].as_str().unwrap().to_string();

    // Over gRPC WatchAlerts.
    let update = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("alert over WatchAlerts")
        .unwrap()
        .expect("WatchAlerts stream open");
    let watched = update.alert.unwrap();
    assert_eq!(watched.id, alert_id);
    assert_eq!(watched.device_id, "btn-0001");
    assert_eq!(watched.state(), AlertState::New);

    // The dispatcher acknowledges over REST.
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/alerts/{alert_id}/ack", server.http()))
        .json(&serde_json::json!({ "by": "dispatcher-wang" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let acked: serde_json::Value = response.json().await.unwrap();
    assert_eq!(acked["state"], "ALERT_STATE_ACKNOWLEDGED");
    assert_eq!(acked["acknowledgedBy"], "dispatcher-wang");

    // The device hears "help is coming".
    let heard = sim.line_starting("acknowledged", PATIENCE).await;
    assert_eq!(field(&heard, "alert"), Some(alert_id.as_str()));
    assert!(heard.contains("help is coming"), "{heard}");
    assert_eq!(sim.proc.wait_exit(PATIENCE).await, Some(0));

    // Watchers see the change too.
    let update = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(update.alert.unwrap().state(), AlertState::Acknowledged);

    // A second acknowledgement is refused: it is not a silent no-op.
    let again = reqwest::Client::new()
        .post(format!("{}/api/v1/alerts/{alert_id}/ack", server.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    // Resolve closes it.
    let resolved: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/alerts/{alert_id}/resolve",
            server.http()
        ))
        .json(&serde_json::json!({ "by": "carer-li", "outcome": "attended" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resolved["state"], "ALERT_STATE_RESOLVED");
    assert_eq!(resolved["outcome"], "attended");
    let open: serde_json::Value = reqwest::get(format!(
        "{}/api/v1/alerts?state=new,acknowledged",
        server.http()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(open["alerts"].as_array().unwrap().len(), 0);
}
