//! The gateway's guards: device credentials at the device front, the
//! per-device rate limit against floods, and a clean SIGTERM shutdown.

use std::time::{Duration, Instant};

use anxin_proto::{DeviceEvent, EventKind, topics};
use anxin_tests::{Gateway, PATIENCE, Sim, device_password, eventually, free_port, mqtt::login};
use prost::Message;
use rumqttc::{AsyncClient, MqttOptions, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_need_their_own_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        dir.path(),
        free_port(),
        &["btn-1:call_button:s3cret-1"],
        &[("mqtt", "require_auth = true")],
    )
    .await;
    assert!(login(gateway.mqtt_port, "btn-1", "wrong").await.is_err());
    assert!(login(gateway.mqtt_port, "btn-9", "s3cret-1").await.is_err());
    assert!(login(gateway.mqtt_port, "btn-1", "s3cret-1").await.is_ok());

    let mut press = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &[
            "--password",
            "s3cret-1",
            "press",
            "--device",
            "btn-1",
            "--until",
            "stored",
        ],
    );
    press.line_starting("stored", PATIENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_cannot_fill_the_journal_or_starve_others() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        dir.path(),
        free_port(), // server away: everything accepted stays in the journal
        &["flood-1", "btn-2"],
        &[
            ("limits", "device_rate_per_sec = 5.0"),
            ("limits", "device_burst = 20"),
        ],
    )
    .await;

    let mut options = MqttOptions::new("flooder", "127.0.0.1", gateway.mqtt_port);
    options.set_credentials("flood-1", device_password("flood-1"));
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let started = Instant::now();
    for seq in 1..=2000u64 {
        let event = DeviceEvent {
            device_id: "flood-1".into(),
            seq,
            kind: EventKind::Sos as i32,
            ..Default::default()
        };
        client
            .publish(
                topics::event("flood-1"),
                QoS::AtMostOnce,
                false,
                event.encode_to_vec(),
            )
            .await
            .unwrap();
    }
    eventually("the flood to be turned away", PATIENCE, || async {
        let limited = gateway
            .metric("anxin_gateway_events_rejected_total{reason=\"rate_limited\"}")
            .await;
        (limited >= 1000.0).then_some(())
    })
    .await;

    // Another resident is not starved.
    let mut press = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-2", "--until", "stored"],
    );
    press.line_starting("stored", PATIENCE).await;

    // The flooder got its burst plus the sustained rate, no more.
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 20.0 + 5.0 * elapsed;
    let p0_depth = gateway.health().await["journal_depth"]["P0"]
        .as_f64()
        .unwrap();
    assert!(
        p0_depth - 1.0 <= allowed,
        "flooder journaled {} events in {elapsed:.1} s; its allowance was {allowed:.0}",
        p0_depth - 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_and_exits_cleanly_keeping_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(dir.path(), free_port(), &["btn-1"]).await;
    let mut press = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-1", "--until", "stored"],
    );
    press.line_starting("stored", PATIENCE).await;

    gateway.proc.terminate();
    assert_eq!(
        gateway.proc.wait_exit(Duration::from_secs(30)).await,
        Some(0)
    );
    assert!(gateway.proc.log().contains("anxin-gateway stopped"));
    gateway.restart().await;
    assert_eq!(gateway.health().await["journal_depth"]["P0"], 1);
}
