//! Device supervision: a silent device raises DEVICE_OFFLINE within its
//! deadline, a returning one DEVICE_ONLINE, a battery dip LOW_BATTERY, and a
//! device that drops off without a goodbye is caught by its MQTT last will.

use anxin_tests::{Gateway, PATIENCE, Server, Sim, eventually};

fn kinds(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

fn ms(event: &serde_json::Value, field: &str) -> i64 {
    event[field].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_low_battery_and_last_will_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let gateway = Gateway::start_with(
        dir.path(),
        server.grpc_port,
        &["btn-quiet:call_button", "wear-1:wearable"],
        &[
            ("supervision", "check_interval_ms = 100"),
            ("supervision", "last_will_grace_secs = 1"),
            ("supervision.heartbeat_deadline_secs", "call_button = 2"),
            ("supervision.heartbeat_deadline_secs", "wearable = 3600"),
        ],
    )
    .await;
    let press = |device: &str, kind: &str, battery: &str| {
        Sim::run(
            dir.path(),
            &gateway.mqtt(),
            &[
                "press",
                "--device",
                device,
                "--kind",
                kind,
                "--battery",
                battery,
                "--until",
                "stored",
            ],
        )
    };

    // One heartbeat, then silence.
    let mut beat = press("btn-quiet", "heartbeat", "90");
    beat.line_starting("stored", PATIENCE).await;
    let offline = eventually("DEVICE_OFFLINE for the silent button", PATIENCE, || async {
        server
            .events_for("btn-quiet")
            .await
            .into_iter()
            .find(|e| e["kind"] == "EVENT_KIND_DEVICE_OFFLINE")
    })
    .await;
    let heartbeat = server.events_for("btn-quiet").await.remove(0);
    assert_eq!(heartbeat["kind"], "EVENT_KIND_HEARTBEAT");
    let silent_for = ms(&offline, "deviceTimeMs") - ms(&heartbeat, "storedMs");
    assert!(
        (2000..2000 + 5000).contains(&silent_for),
        "declared offline after {silent_for} ms of silence; the deadline is 2000 ms"
    );
    let seq: u64 = offline["seq"].as_str().unwrap().parse().unwrap();
    assert!(
        seq >= 1 << 63,
        "gateway-raised events use the reserved seq range"
    );
    assert_eq!(offline["priority"], "PRIORITY_P1");

    // It speaks again, with a low battery.
    let mut back = press("btn-quiet", "heartbeat", "9");
    back.line_starting("stored", PATIENCE).await;
    eventually("DEVICE_ONLINE and LOW_BATTERY", PATIENCE, || async {
        let kinds = kinds(&server.events_for("btn-quiet").await);
        (kinds.contains(&"EVENT_KIND_DEVICE_ONLINE".to_string())
            && kinds.contains(&"EVENT_KIND_LOW_BATTERY".to_string()))
        .then_some(())
    })
    .await;
    // A second low reading in the same dip raises nothing new.
    let mut again = press("btn-quiet", "heartbeat", "8");
    again.line_starting("stored", PATIENCE).await;
    eventually("the second heartbeat at the server", PATIENCE, || async {
        (server
            .events_for("btn-quiet")
            .await
            .iter()
            .filter(|e| e["kind"] == "EVENT_KIND_HEARTBEAT")
            .count()
            == 3)
            .then_some(())
    })
    .await;
    let low = kinds(&server.events_for("btn-quiet").await)
        .iter()
        .filter(|k| *k == "EVENT_KIND_LOW_BATTERY")
        .count();
    assert_eq!(low, 1);

    // The wearable's deadline is an hour, but it drops off the network
    // without a goodbye: its last will brings DEVICE_OFFLINE within the grace.
    let mut wearable = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &[
            "press",
            "--device",
            "wear-1",
            "--kind",
            "telemetry",
            "--until",
            "acknowledged",
        ],
    );
    wearable.line_starting("stored", PATIENCE).await;
    wearable.proc.kill9();
    eventually(
        "DEVICE_OFFLINE for the wearable from its last will",
        PATIENCE,
        || async {
            server
                .events_for("wear-1")
                .await
                .into_iter()
                .find(|e| e["kind"] == "EVENT_KIND_DEVICE_OFFLINE")
        },
    )
    .await;
    assert!(gateway.proc.log().contains("last will"));
}
