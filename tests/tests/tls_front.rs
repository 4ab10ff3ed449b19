//! The device front over TLS (8883): a device verifies the gateway's
//! certificate and logs in with its password, or presents a client
//! certificate naming it (no password); a certificate from another CA, or
//! one naming another device, is refused; with `plaintext = false` plain
//! MQTT gets nowhere.

use std::time::Duration;

use anxin_tests::{Gateway, SIM_PASSWORD, Server, certs::Pki, free_port, paho};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_connect_over_tls_with_a_password_or_a_client_certificate() {
    if !paho::available("devices_connect_over_tls_with_a_password_or_a_client_certificate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let pki = Pki::new(&certs, "anxin-ca");
    let server_pair = pki.server("gateway");
    // The same CN, from a CA the gateway does not trust (issued first: it
    // is written under the same file name, then moved aside).
    let rogue = Pki::new(&certs, "rogue-ca");
    let forged = rogue.device("btn-cert");
    std::fs::rename(&forged.cert, certs.join("device-rogue.pem")).unwrap();
    std::fs::rename(&forged.key, certs.join("device-rogue.key")).unwrap();
    pki.device("btn-cert");

    let server = Server::start(dir.path()).await;
    let tls_port = free_port();
    let lines = [
        format!("listen = \"127.0.0.1:{tls_port}\""),
        format!("cert = \"{}\"", server_pair.cert.display()),
        format!("key = \"{}\"", server_pair.key.display()),
        format!("client_ca = \"{}\"", pki.ca("anxin-ca").display()),
    ];
    let mut extra: Vec<(&str, &str)> = vec![("mqtt", "plaintext = false")];
    extra.extend(lines.iter().map(|l| ("mqtt.tls", l.as_str())));
    let gateway = Gateway::start_with(
        dir.path(),
        server.grpc_port,
        &["btn-pw", "btn-cert"],
        &extra,
    )
    .await;

    let found = paho::run(
        "tls.py",
        &[
            tls_port.to_string(),
            pki.ca("anxin-ca").display().to_string(),
            gateway.mqtt_port.to_string(),
            SIM_PASSWORD.to_string(),
            certs.display().to_string(),
        ],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(found["password_connack"], 0, "{found}");
    assert_eq!(found["password_stored"], true, "{found}");
    assert_eq!(found["cert_connack"], 0, "{found}");
    assert_eq!(found["cert_stored"], true, "{found}");
    assert_eq!(
        found["cert_other_sub"],
        serde_json::json!([0x80]),
        "{found}"
    );
    // 3.1.1 "not authorized" (5), as paho reports it.
    assert_eq!(found["cert_mismatch_connack"], 0x87, "{found}");
    assert_ne!(found["rogue_connack"], 0, "{found}");
    assert_eq!(
        found["plain_port_connack"], "ConnectionRefusedError",
        "{found}"
    );
    assert_ne!(found["plain_on_tls_port_connack"], 0, "{found}");

    for reason in ["tls_handshake", "certificate_mismatch"] {
        let n = gateway
            .metric(&format!(
                "anxin_gateway_mqtt_refused_total{{reason=\"{reason}\"}}"
            ))
            .await;
        assert!(n >= 1.0, "{reason} not counted");
    }
}
