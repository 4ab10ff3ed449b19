//! Guarantee 5: bad input is rejected with a log line, a counter and a
//! `rejected` ack, and the gateway keeps serving: the next valid event gets
//! through.

use std::time::Duration;

use anxin_proto::{AckKind, DeviceAck, DeviceEvent, EventKind, topics};
use anxin_tests::{Gateway, PATIENCE, Server, Sim, device_password, eventually};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// An MQTT client that publishes raw payloads and collects acks.
/// A raw MQTT client logged in as `device`, reading its acks.
async fn raw_client(
    gateway: &Gateway,
    device: &str,
) -> (AsyncClient, tokio::sync::mpsc::Receiver<DeviceAck>) {
    let mut options = MqttOptions::new("bad-input-test", "127.0.0.1", gateway.mqtt_port);
    options.set_max_packet_size(128 * 1024, 128 * 1024);
    options.set_credentials(device, device_password(device));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe(topics::ack(device), QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(ack) = DeviceAck::decode(p.payload.as_ref()) {
                        let _ = tx.send(ack).await;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    (client, rx)
}

async fn next_ack(acks: &mut tokio::sync::mpsc::Receiver<DeviceAck>) -> DeviceAck {
    tokio::time::timeout(PATIENCE, acks.recv())
        .await
        .expect("an ack")
        .expect("ack channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_misnamed_and_oversize_are_rejected_and_counted_and_service_continues() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["btn-1"]).await;
    let (client, mut acks) = raw_client(&gateway, "btn-1").await;
    // The broker handles one connection's packets in order, so the ack
    // subscriptions are active before the first bad publish. Each bad input
    // is sent alone and its rejection read before the next.
    let rejected = "anxin_gateway_events_rejected_total";

    // 1. Malformed protobuf.
    client
        .publish(
            topics::event("btn-1"),
            QoS::AtLeastOnce,
            false,
            vec![0xff, 0xff, 0xff, 0x01],
        )
        .await
        .unwrap();
    let ack = next_ack(&mut acks).await;
    assert_eq!(ack.kind(), AckKind::Rejected);
    assert!(ack.message.contains("does not decode"), "{}", ack.message);
    eventually("the malformed counter", PATIENCE, || async {
        (gateway
            .metric(&format!("{rejected}{{reason=\"malformed\"}}"))
            .await
            == 1.0)
            .then_some(())
    })
    .await;

    // 2. A well-formed event from a device this gateway does not know.
    // An event on btn-1's own topic whose payload names another device.
    // (Unknown devices are refused at CONNECT: tests/tests/device_isolation.rs.)
    let ghost = DeviceEvent {
        device_id: "ghost".into(),
        seq: 1,
        kind: EventKind::Sos as i32,
        ..Default::default()
    };
    client
        .publish(
            topics::event("btn-1"),
            QoS::AtLeastOnce,
            false,
            ghost.encode_to_vec(),
        )
        .await
        .unwrap();
    let ack = next_ack(&mut acks).await;
    assert_eq!(
        (ack.device_id.as_str(), ack.kind()),
        ("btn-1", AckKind::Rejected)
    );
    eventually("the device-mismatch counter", PATIENCE, || async {
        (gateway
            .metric(&format!("{rejected}{{reason=\"device_mismatch\"}}"))
            .await
            == 1.0)
            .then_some(())
    })
    .await;

    // 3. Oversize: 10 KiB against the 4 KiB default limit.
    client
        .publish(
            topics::event("btn-1"),
            QoS::AtLeastOnce,
            false,
            vec![b' '; 10 * 1024],
        )
        .await
        .unwrap();
    let ack = next_ack(&mut acks).await;
    assert_eq!(ack.kind(), AckKind::Rejected);
    assert!(ack.message.contains("exceeds the limit"), "{}", ack.message);
    eventually("the oversize counter", PATIENCE, || async {
        (gateway
            .metric(&format!("{rejected}{{reason=\"oversize\"}}"))
            .await
            == 1.0)
            .then_some(())
    })
    .await;

    // Each rejection left a log line naming its reason.
    let log = gateway.proc.log();
    for reason in ["malformed", "device_mismatch", "oversize"] {
        assert!(
            log.lines()
                .any(|l| l.contains("rejected event") && l.contains(reason)),
            "no log line for {reason}:\n{log}"
        );
    }

    // Nothing bad was stored, and the next valid event gets through.
    assert_eq!(gateway.journal_depth().await, 0);
    let mut sim = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-1", "--until", "stored"],
    );
    sim.line_starting("stored", PATIENCE).await;
    eventually("the valid event's alert", PATIENCE, || async {
        (server.alerts_for("btn-1").await.len() == 1).then_some(())
    })
    .await;
    assert!(server.alerts_for("ghost").await.is_empty());
}
