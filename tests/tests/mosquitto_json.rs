//! An integrator with nothing but Debian's mosquitto-clients can raise an
//! alert by publishing proto3 JSON (the command the README shows).

use std::process::Command;

use anxin_tests::{Gateway, PATIENCE, Server, device_password, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_json_sos_raises_an_alert() {
    let Ok(status) = Command::new("mosquitto_pub").arg("--help").output() else {
        // .ci/run installs mosquitto-clients, so CI never skips this.
        anxin_tests::host::skip(
            "mosquitto_json",
            "mosquitto_pub not installed (apt-get install mosquitto-clients)",
        );
        return;
    };
    drop(status);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["btn-0042"]).await;

    // The same command as in README.md, with this test's port.
    let output = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &gateway.mqtt_port.to_string(),
            "-q",
            "1",
        ])
        .args(["-u", "btn-0042", "-P", &device_password("btn-0042")])
        .args(["-t", "anxin/v1/dev/btn-0042/event/json"])
        .args([
            "-m",
            r#"{"seq": 1, "kind": "EVENT_KIND_SOS", "batteryPct": 80}"#,
        ])
        .output()
        .expect("running mosquitto_pub");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let alert = eventually("an alert from the JSON event", PATIENCE, || async {
        server.alerts_for("btn-0042").await.into_iter().next()
    })
    .await;
    assert_eq!(alert["kind"], "EVENT_KIND_SOS");
    assert_eq!(alert["seq"], "1");
    assert_eq!(alert["batteryPct"], 80);
    assert_eq!(alert["gatewayId"], "gw-test");
}
