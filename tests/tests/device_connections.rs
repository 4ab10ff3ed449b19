//! Several connections of one device, as integrators hold them: an app and
//! a test console, or `mosquitto_sub` listening while `mosquitto_pub`
//! sends (the README's "Five minutes as an integrator"). Each connection
//! has its own client id and hears every `stored` ack and "help is coming"
//! of its device; the same client id still takes its own session over; no
//! connection hears another device. Tried with mosquitto-clients, paho-mqtt
//! and MQTT.js on one shared stack.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anxin_tests::{
    Gateway, PATIENCE, SIM_PASSWORD, Server, browser, device_password, eventually, paho,
};

const DEVICES: [&str; 4] = ["btn-mosq", "btn-paho", "btn-mqttjs", "btn-other"];

/// `mosquitto_sub` for `device`'s JSON acks until `count` came (or 60 s).
fn listen(port: u16, device: &str, count: u32) -> std::process::Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-u", device, "-P", &device_password(device)])
        .args(["-t", &format!("anxin/v1/dev/{device}/ack/json")])
        .args(["-C", &count.to_string(), "-W", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running mosquitto_sub")
}

fn publish(port: u16, device: &str, message: &str) {
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-u", device, "-P", &device_password(device)])
        .args(["-t", &format!("anxin/v1/dev/{device}/event/json")])
        .args(["-m", message])
        .output()
        .expect("running mosquitto_pub");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn finished(child: std::process::Child) -> String {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("mosquitto_sub ran");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_of_a_device_hears_its_acks_with_mosquitto_paho_and_mqtt_js() {
    let mosquitto = Command::new("mosquitto_sub").arg("--help").output().is_ok();
    if !mosquitto {
        anxin_tests::host::skip(
            "device_connections",
            "mosquitto_sub not installed (apt-get install mosquitto-clients)",
        );
        return;
    }
    if !paho::available("device_connections") {
        return;
    }
    let node_missing = browser::missing_module("mqtt");
    if let Some(why) = &node_missing {
        anxin_tests::host::skip("device_connections (MQTT.js)", why);
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let gateway = Gateway::start(dir.path(), server.grpc_port, &DEVICES).await;
    let port = gateway.mqtt_port;
    let dispatcher = server
        .add_staff("dispatcher-li", "dispatcher", &["*"], serde_json::json!({}))
        .await;

    // mosquitto: two listeners of one device (each its own random client
    // id), a listener of another device, and the SOS sent by a third
    // connection, as the README shows it.
    let first = listen(port, "btn-mosq", 2);
    let second = listen(port, "btn-mosq", 2);
    let mut other = listen(port, "btn-other", 1);
    eventually("the three listeners connected", PATIENCE, || async {
        (gateway.metric("anxin_gateway_mqtt_connections").await >= 3.0).then_some(())
    })
    .await;
    // Their SUBSCRIBE follows the CONNACK at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(
        port,
        "btn-mosq",
        r#"{"seq": 1, "kind": "EVENT_KIND_SOS", "batteryPct": 80}"#,
    );
    server.acknowledge_alert_of(&dispatcher, "btn-mosq").await;
    for heard in [finished(first).await, finished(second).await] {
        let lines: Vec<&str> = heard.lines().collect();
        assert_eq!(lines.len(), 2, "{heard}");
        assert!(lines[0].contains("ACK_KIND_STORED"), "{heard}");
        assert!(lines[1].contains("ACK_KIND_ACKNOWLEDGED"), "{heard}");
        assert!(lines[1].contains("help is coming"), "{heard}");
    }
    let _ = other.kill();
    assert_eq!(
        finished(other).await,
        "",
        "another device's listener heard btn-mosq"
    );
    assert!(
        gateway
            .metric("anxin_gateway_mqtt_parallel_connections_total")
            .await
            >= 2.0
    );

    // paho: an app and a console of one device, then the app's client id
    // again.
    let args = [
        port.to_string(),
        SIM_PASSWORD.to_string(),
        "btn-paho".to_string(),
    ];
    let (found, ()) = tokio::join!(
        paho::run("connections.py", &args, Duration::from_secs(120)),
        server.acknowledge_alert_of(&dispatcher, "btn-paho"),
    );
    assert_eq!(found["connack"], serde_json::json!([0, 0]), "{found}");
    assert_eq!(
        found["stored_1"],
        serde_json::json!([true, true]),
        "{found}"
    );
    assert_eq!(
        found["stored_2"],
        serde_json::json!([true, true]),
        "{found}"
    );
    assert_eq!(
        found["acknowledged"],
        serde_json::json!(["help is coming", "help is coming"]),
        "{found}"
    );
    assert_eq!(found["both_still_connected"], true, "{found}");
    assert_eq!(found["again_connack"], 0, "{found}");
    assert_eq!(found["app_taken_over"], true, "{found}");
    assert_eq!(found["console_stays"], true, "{found}");

    // MQTT.js: the same, from node.
    if node_missing.is_none() {
        let vars = [
            ("ANXIN_MQTT_PORT", port.to_string()),
            ("ANXIN_DEVICE", "btn-mqttjs".to_string()),
            ("ANXIN_PASSWORD", device_password("btn-mqttjs")),
        ];
        let (lines, ()) = tokio::join!(
            browser::run("mqttjs_connections.mjs", &vars, "passed"),
            server.acknowledge_alert_of(&dispatcher, "btn-mqttjs"),
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("stored 2 heard on both connections")),
            "{lines:?}"
        );
    }
}
