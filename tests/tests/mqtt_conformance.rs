//! What devices do with MQTT, checked with paho-mqtt (`tests/paho/`):
//! keep-alive 0, a persistent session that receives "help is coming"
//! published while the device was away (and a clean one, for which the
//! gateway holds it until the device subscribes), the last will on keep-alive
//! expiry, and an MQTT 5 client (QoS 0 and 1, unsubscribe, session expiry).

use std::time::Duration;

use anxin_tests::{Gateway, PATIENCE, SIM_PASSWORD, Server, eventually, paho};

async fn run(check: &str, gateway: &Gateway, device: &str) -> serde_json::Value {
    paho::run(
        "conformance.py",
        &[
            check.to_string(),
            gateway.mqtt_port.to_string(),
            SIM_PASSWORD.to_string(),
            device.to_string(),
        ],
        Duration::from_secs(120),
    )
    .await
}

/// A dispatcher acknowledges `device`'s alert while the device is away;
/// returns once the gateway has taken the downlink (`downlinks` in all).
async fn acknowledge_while_away(
    server: &Server,
    gateway: &Gateway,
    dispatcher: &str,
    device: &str,
    downlinks: f64,
) {
    server.acknowledge_alert_of(dispatcher, device).await;
    eventually("the downlink at the gateway", PATIENCE, || async {
        (gateway.metric("anxin_gateway_downlinks_total").await >= downlinks).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_devices_connect_persist_and_leave_a_will() {
    if !paho::available("paho_devices_connect_persist_and_leave_a_will") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let gateway = Gateway::start_with(
        dir.path(),
        server.grpc_port,
        &[
            "btn-ka0",
            "btn-away",
            "btn-clean",
            "wear-will:wearable",
            "btn-v5",
        ],
        &[("supervision", "last_will_grace_secs = 1")],
    )
    .await;

    // Keep-alive 0: accepted, never timed out.
    let found = run("keepalive0", &gateway, "btn-ka0").await;
    assert_eq!(found["connack"], 0, "{found}");
    assert_eq!(found["stored"], true, "{found}");
    assert_eq!(found["still_connected"], true, "{found}");
    assert_eq!(found["stored_later"], true, "{found}");

    // A persistent session: the device presses, goes away, a dispatcher
    // acknowledges meanwhile, and "help is coming" reaches the device when
    // it returns, without subscribing again.
    let found = run("persist-away", &gateway, "btn-away").await;
    assert_eq!(found["connack"], 0, "{found}");
    assert_eq!(found["stored"], true, "{found}");
    let dispatcher = server
        .add_staff(
            "dispatcher-wang",
            "dispatcher",
            &["*"],
            serde_json::json!({}),
        )
        .await;
    acknowledge_while_away(&server, &gateway, &dispatcher, "btn-away", 1.0).await;
    let found = run("persist-back", &gateway, "btn-away").await;
    assert_eq!(found["session_present"], true, "{found}");
    assert_eq!(found["heard_acknowledged"], true, "{found}");

    // A clean session: the gateway holds "help is coming" for the device
    // that went away, and hands it over when it subscribes again.
    let found = run("clean-away", &gateway, "btn-clean").await;
    assert_eq!(found["stored"], true, "{found}");
    acknowledge_while_away(&server, &gateway, &dispatcher, "btn-clean", 2.0).await;
    let found = run("clean-back", &gateway, "btn-clean").await;
    assert_eq!(found["session_present"], false, "{found}");
    assert_eq!(found["heard_acknowledged"], true, "{found}");

    // Silent with the socket open: the keep-alive expires (1.5 x 1 s), the
    // gateway publishes the will, and supervision reports the device
    // offline.
    let found = run("will", &gateway, "wear-will").await;
    assert_eq!(found["connack"], 0, "{found}");
    eventually("DEVICE_OFFLINE from the will", PATIENCE, || async {
        server
            .events_for("wear-will")
            .await
            .into_iter()
            .find(|e| e["kind"] == "EVENT_KIND_DEVICE_OFFLINE")
    })
    .await;
    assert!(
        gateway
            .metric("anxin_gateway_mqtt_keepalive_expired_total")
            .await
            >= 1.0
    );

    // MQTT 5.
    let found = run("v5", &gateway, "btn-v5").await;
    assert_eq!(found["connack"], 0, "{found}");
    assert_eq!(found["sub"], serde_json::json!([1]), "{found}");
    assert_eq!(found["puback"], 0, "{found}");
    assert_eq!(found["stored"], true, "{found}");
    assert_eq!(found["stored_qos0"], true, "{found}");
    assert_eq!(found["stored_after_unsubscribe"], false, "{found}");
    assert_eq!(found["session_present"], true, "{found}");
    assert_eq!(found["clean_start_session_present"], false, "{found}");
}
