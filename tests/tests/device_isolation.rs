//! Guarantee 6 at the device front, tried with paho-mqtt and
//! mosquitto_sub as integrators would: a device with valid credentials can
//! neither make another resident's device hear a forged "help is coming",
//! nor read another device's acks or events, nor raise an event in another
//! device's name; bad logins are refused at CONNECT; every refusal is
//! counted and logged with the client id.

use std::{process::Command, time::Duration};

use anxin_tests::{Gateway, PATIENCE, SIM_PASSWORD, Server, device_password, eventually, paho};

const REFUSED: &str = "anxin_gateway_mqtt_refused_total";
/// paho reports 3.1.1 and 5 refusals alike, as MQTT 5 reason codes.
const BAD_USER_OR_PASSWORD: u64 = 0x86;
const NOT_AUTHORIZED: u64 = 0x87;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_can_only_speak_and_hear_for_itself() {
    if !paho::available("a_device_can_only_speak_and_hear_for_itself") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.add_community("c-001").await;
    server.add_resident("r-1", "c-001", &["btn-1"]).await;
    server.add_resident("r-2", "c-001", &["btn-2"]).await;
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["btn-1", "btn-2"]).await;

    let found = paho::run(
        "isolation.py",
        &[gateway.mqtt_port.to_string(), SIM_PASSWORD.to_string()],
        Duration::from_secs(120),
    )
    .await;
    let code = |key: &str| {
        found[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {found}"))
    };

    assert_eq!(code("victim_connack"), 0, "{found}");
    assert_eq!(
        found["victim_sub"],
        serde_json::json!([[1], [1]]),
        "{found}"
    );
    for login in [
        "wrong_password_v311",
        "unknown_device_v311",
        "no_credentials_v311",
        "other_devices_password_v311",
        "wrong_password_v5",
        "unknown_device_v5",
    ] {
        assert_eq!(code(login), BAD_USER_OR_PASSWORD, "{login}: {found}");
    }

    // Its own topics work; every other filter is refused.
    assert_eq!(code("attacker_connack"), 0);
    assert_eq!(found["attacker_own_ack_sub"], serde_json::json!([1]));
    let subs = found["attacker_v311_subscriptions"].as_object().unwrap();
    assert_eq!(subs.len(), 11);
    for (topic, granted) in subs {
        assert_eq!(
            granted,
            &serde_json::json!([0x80]),
            "{topic} was granted: {found}"
        );
    }
    assert_eq!(
        found["attacker_v5_sub_hash"],
        serde_json::json!([NOT_AUTHORIZED])
    );
    assert_eq!(
        found["attacker_v5_sub_victim_ack"],
        serde_json::json!([NOT_AUTHORIZED])
    );

    // 3.1.1: a publish outside its topics ends the connection, unacked.
    for forged in ["forged_ack_v311", "forged_sos_v311"] {
        assert_eq!(
            found[format!("{forged}_disconnected")],
            true,
            "{forged}: {found}"
        );
        assert!(
            found[format!("{forged}_puback")].is_null(),
            "{forged}: {found}"
        );
    }
    // 5: refused per packet with 0x87; the connection stays.
    for forged in [
        "forged_ack_v5_puback",
        "forged_sos_v5_puback",
        "forged_status_v5_puback",
    ] {
        assert_eq!(code(forged), NOT_AUTHORIZED, "{forged}: {found}");
    }
    assert_eq!(found["attacker_v5_still_connected"], true);

    // The victim heard its own stored ack and nothing forged; the attacker
    // heard nothing at all.
    assert_eq!(found["victim_heard_stored"], true, "{found}");
    assert_eq!(found["victim_heard_forged"], false, "{found}");
    assert_eq!(found["attacker_v5_heard"], serde_json::json!([]), "{found}");

    // mosquitto_sub, the other tool integrators reach for, is refused too.
    if Command::new("mosquitto_sub").arg("--help").output().is_ok() {
        let out = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &gateway.mqtt_port.to_string()])
            .args([
                "-u",
                "btn-1",
                "-P",
                &device_password("btn-1"),
                "-i",
                "snoop",
            ])
            .args(["-t", "#", "-C", "1", "-W", "3"])
            .output()
            .expect("running mosquitto_sub");
        let said = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        // It exits 0 but says so, and receives nothing.
        assert!(
            said.contains("All subscription requests were denied"),
            "mosquitto_sub ({}) said: {said}",
            out.status
        );
    } else {
        anxin_tests::host::skip("mosquitto_sub part", "mosquitto-clients not installed");
    }

    // Only the victim's own SOS reached the server; the forged ones did not.
    eventually("the victim's own alert", PATIENCE, || async {
        (server.alerts_for("btn-2").await.len() == 1).then_some(())
    })
    .await;
    let events = server.events_for("btn-2").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["seq"], "1");
    assert!(server.alerts_for("btn-1").await.is_empty());

    // Each refusal counted by reason, and logged with the client id.
    for (reason, at_least) in [
        ("bad_password", 3.0),
        ("unknown_device", 2.0),
        ("no_credentials", 1.0),
        ("subscribe_not_allowed", 14.0),
        ("publish_not_allowed", 5.0),
    ] {
        let n = gateway
            .metric(&format!("{REFUSED}{{reason=\"{reason}\"}}"))
            .await;
        assert!(n >= at_least, "{reason}: {n} < {at_least}");
    }
    let log = gateway.proc.log();
    for needle in [
        "client_id=\"attacker\"",
        "client_id=\"attacker5\"",
        "client_id=\"login-unknown_device_v311\"",
    ] {
        assert!(log.contains(needle), "no log line with {needle}:\n{log}");
    }
}
