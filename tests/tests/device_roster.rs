//! One source of truth for devices: a device registered, deactivated or
//! re-keyed through the server's API takes effect at its gateway within
//! seconds, without a restart — and the gateway keeps the roster on disk,
//! so it still admits the device after a restart while the server is down,
//! even when its journal was found damaged and moved aside.

use std::time::{Duration, Instant};

use anxin_tests::{Gateway, PATIENCE, Server, eventually, mqtt::login};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};

/// The time the issue allows a change to reach the gateway.
const PROPAGATION: Duration = Duration::from_secs(10);

/// Waits (at most [`PROPAGATION`]) until a login gives `want`.
async fn until_login(
    gateway: &Gateway,
    user: &str,
    password: &str,
    want: Result<(), ConnectReturnCode>,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = login(gateway.mqtt_port, user, password).await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < PROPAGATION,
            "{user} still gets {got:?}, not {want:?}, {PROPAGATION:?} after the change"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_registered_changed_and_deactivated_on_the_server_take_effect_at_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    server.add_community("c-001").await;
    server.add_resident("r-1", "c-001", &[]).await;
    // The gateway's own config lists no device at all.
    let mut gateway = Gateway::start(dir.path(), server.grpc_port, &[]).await;
    assert_eq!(
        login(gateway.mqtt_port, "btn-new", "first-secret-0123").await,
        Err(ConnectReturnCode::BadUserNamePassword)
    );

    // Registered through the admin API.
    let put = |password: Option<&str>, deactivated: bool| {
        let mut body = serde_json::json!({
            "kind": "call_button",
            "residentId": "r-1",
            "gatewayId": "gw-test",
            "deactivated": deactivated,
        });
        if let Some(password) = password {
            body["password"] = password.into();
        }
        body
    };
    let answer = server
        .send(
            "PUT",
            "/api/v1/devices/btn-new",
            put(Some("first-secret-0123"), false),
        )
        .await;
    let took = until_login(&gateway, "btn-new", "first-secret-0123", Ok(())).await;
    eprintln!("registration reached the gateway in {took:?}");

    // Kept and handed to the gateway sealed (salted PBKDF2): not the
    // password, no bare digest, and no form of it in the API's answer.
    for field in ["password", "passwordSha256", "credential"] {
        let shown = answer.get(field).and_then(|v| v.as_str()).unwrap_or("");
        assert!(shown.is_empty(), "{field} shown: {answer}");
    }
    let roster = std::fs::read(dir.path().join("journal").join("anxin-roster.pb")).unwrap();
    let roster =
        <anxin_proto::v1::DeviceRoster as prost::Message>::decode(roster.as_slice()).unwrap();
    let held = roster
        .devices
        .iter()
        .find(|d| d.device_id == "btn-new")
        .unwrap();
    assert!(anxin_credentials::is_sealed(&held.credential), "{held:?}");
    assert!(held.password_sha256.is_empty(), "{held:?}");
    assert!(anxin_credentials::verify(
        "first-secret-0123",
        &held.credential
    ));
    // A login the gateway verified once is not derived again.
    let derived = gateway.credential_checks("derived").await;
    assert!(derived >= 1.0);
    assert_eq!(
        login(gateway.mqtt_port, "btn-new", "first-secret-0123").await,
        Ok(())
    );
    assert_eq!(gateway.credential_checks("derived").await, derived);
    assert!(gateway.credential_checks("cached").await >= 1.0);
    // Nor is a wrong password a device keeps retrying: the first costs a
    // derivation, the retries one HMAC each, and all are refused.
    for _ in 0..3 {
        assert_eq!(
            login(gateway.mqtt_port, "btn-new", "an-old-secret-000").await,
            Err(ConnectReturnCode::BadUserNamePassword)
        );
    }
    assert_eq!(gateway.credential_checks("derived").await, derived + 1.0);
    assert_eq!(gateway.credential_checks("refused_again").await, 2.0);

    // Its events are accepted, not rejected as an unknown device.
    let mut press = anxin_tests::Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &[
            "--password",
            "first-secret-0123",
            "press",
            "--device",
            "btn-new",
            "--until",
            "stored",
        ],
    );
    press.line_starting("stored", PATIENCE).await;

    // The server goes down; the gateway restarts and still knows the device.
    server.proc.kill9();
    gateway.restart().await;
    assert_eq!(
        login(gateway.mqtt_port, "btn-new", "first-secret-0123").await,
        Ok(())
    );
    assert!(
        gateway
            .proc
            .log()
            .contains("device roster from the server loaded from disk")
    );

    // Still down, and now the journal is found damaged and moved aside:
    // the roster is kept beside it, so the device is still admitted.
    gateway.proc.kill9();
    let db = dir.path().join("journal").join("alarm").join("db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, vec![0xA5; len.max(4096)]).unwrap();
    gateway.restart().await;
    assert!(
        gateway.proc.log().contains("journal damaged"),
        "the journal was not found damaged:\n{}",
        gateway.proc.log()
    );
    assert_eq!(
        login(gateway.mqtt_port, "btn-new", "first-secret-0123").await,
        Ok(())
    );

    // Back up: re-keyed on the server — the old password stops working.
    server.restart().await;
    server
        .send(
            "PUT",
            "/api/v1/devices/btn-new",
            put(Some("second-secret-4567"), false),
        )
        .await;
    until_login(
        &gateway,
        "btn-new",
        "first-secret-0123",
        Err(ConnectReturnCode::BadUserNamePassword),
    )
    .await;
    assert_eq!(
        login(gateway.mqtt_port, "btn-new", "second-secret-4567").await,
        Ok(())
    );

    // The CSV import: a new device's password sealed once and working at
    // the gateway; a row without one keeps the device's credential.
    let csv = "id,kind,resident_id,gateway_id,password\n\
               btn-csv,call_button,r-1,gw-test,csv-secret-89ab-cdef\n\
               btn-new,call_button,r-1,gw-test,\n";
    let (status, report) = server
        .import_csv("devices", csv, anxin_tests::TEST_ADMIN_TOKEN)
        .await;
    assert_eq!(status, 200, "{report}");
    until_login(&gateway, "btn-csv", "csv-secret-89ab-cdef", Ok(())).await;
    assert_eq!(
        login(gateway.mqtt_port, "btn-csv", "second-secret-4567").await,
        Err(ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(
        login(gateway.mqtt_port, "btn-new", "second-secret-4567").await,
        Ok(())
    );

    // Deactivated (an update without a password keeps the credential):
    // its open connection is closed, a new one refused at CONNECT, and
    // both counted.
    let mut options = MqttOptions::new("roster-live", "127.0.0.1", gateway.mqtt_port);
    options.set_credentials("btn-new", "second-secret-4567");
    let (_live, mut live_loop) = AsyncClient::new(options, 4);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = live_loop.poll().await.expect("live CONNACK") {
            break;
        }
    }
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        loop {
            if live_loop.poll().await.is_err() {
                let _ = closed_tx.send(());
                return;
            }
        }
    });
    server
        .send("PUT", "/api/v1/devices/btn-new", put(None, true))
        .await;
    until_login(
        &gateway,
        "btn-new",
        "second-secret-4567",
        Err(ConnectReturnCode::NotAuthorized),
    )
    .await;
    tokio::time::timeout(PROPAGATION, closed)
        .await
        .expect("the deactivated device's open connection to be closed")
        .unwrap();
    eventually("the deactivated refusal counted", PATIENCE, || async {
        (gateway
            .metric("anxin_gateway_mqtt_refused_total{reason=\"deactivated\"}")
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    // Reactivated without a password: the stored credential is still good.
    server
        .send("PUT", "/api/v1/devices/btn-new", put(None, false))
        .await;
    until_login(&gateway, "btn-new", "second-secret-4567", Ok(())).await;
}
