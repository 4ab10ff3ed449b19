//! MQTT traffic the harness makes itself: the P0 prober (ours and
//! Mosquitto's) and the device load for the Mosquitto baseline, with the
//! same payloads the simulator sends.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anxin_proto::{AckKind, DeviceAck, DeviceEvent, EventKind, now_ms, topics};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};

pub fn payload(device_id: &str, seq: u64, kind: EventKind) -> Vec<u8> {
    DeviceEvent {
        device_id: device_id.into(),
        seq,
        kind: kind as i32,
        battery_pct: 80,
        device_time_ms: now_ms(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Id of the `index`th device of a group, as `anxin-sim` names them.
pub fn device_id(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:05}")
}

/// A connected client whose event loop runs in its own task (never
/// cancelled mid-poll); incoming publishes go to `on_publish`. It logs in
/// as `client_id` with the harness's password for that device (the
/// gateway requires it; Mosquitto ignores it), and returns once CONNACK
/// and, if asked, SUBACK came.
pub async fn connect(
    port: u16,
    client_id: &str,
    subscribe: Option<&str>,
    on_publish: impl Fn(&str, &[u8]) + Send + 'static,
) -> AsyncClient {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_inflight(100);
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    options.set_credentials(client_id, anxin_tests::device_password(client_id));
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(60);
    eventloop.set_network_options(network);
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut connected_tx = Some(connected_tx);
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p.topic, &p.payload),
                Ok(_) => {}
                // The broker going away at the end of a run is expected;
                // rumqttc reconnects on the next poll.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let _ = connected.await;
    if let Some(filter) = subscribe {
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe request");
        let _ = subscribed.await;
    }
    client
}

/// When each probe was published, by device id.
pub type SentAt = Arc<Mutex<HashMap<String, Instant>>>;

/// One pressing device, connected before the measurement starts.
pub struct Prober {
    client: AsyncClient,
    device: String,
}

/// Connects `samples` pressing devices `prefix00000…`, each on its own
/// connection (a device may only publish for itself). With `stored_acks`,
/// each also listens on its ack topic and records the time from its press
/// to its `stored` ack.
pub async fn probers(
    port: u16,
    prefix: &str,
    samples: usize,
    sent_at: &SentAt,
    stored_acks: Option<Arc<Mutex<hdrhistogram::Histogram<u64>>>>,
) -> Vec<Prober> {
    let mut connecting = tokio::task::JoinSet::new();
    for index in 0..samples {
        let device = device_id(prefix, index);
        let (sent_at, stored_acks) = (sent_at.clone(), stored_acks.clone());
        connecting.spawn(async move {
            let ack_topic = topics::ack(&device);
            let subscribe = stored_acks.is_some().then_some(ack_topic.as_str());
            let key = device.clone();
            let client = connect(port, &device, subscribe, move |_, payload| {
                let Some(histogram) = &stored_acks else {
                    return;
                };
                let Ok(ack) = DeviceAck::decode(payload) else {
                    return;
                };
                if ack.kind() != AckKind::Stored {
                    return;
                }
                if let Some(at) = sent_at.lock().unwrap().get(&format!("ack:{key}")).copied() {
                    histogram
                        .lock()
                        .unwrap()
                        .saturating_record((at.elapsed().as_micros() as u64).max(1));
                }
            })
            .await;
            Prober { client, device }
        });
    }
    let mut probers = Vec::with_capacity(samples);
    while let Some(prober) = connecting.join_next().await {
        probers.push(prober.expect("connecting a prober"));
    }
    probers.sort_by(|a, b| a.device.cmp(&b.device));
    probers
}

/// Each prober presses SOS once, one every `pace`, recording when (under
/// its device id, and under `ack:<id>` for its stored ack).
pub async fn probe(probers: &[Prober], pace: Duration, sent_at: &SentAt) {
    let mut tick = tokio::time::interval(pace);
    for prober in probers {
        tick.tick().await;
        let body = payload(&prober.device, 1, EventKind::Sos);
        {
            let now = Instant::now();
            let mut sent = sent_at.lock().unwrap();
            sent.insert(prober.device.clone(), now);
            sent.insert(format!("ack:{}", prober.device), now);
        }
        prober
            .client
            .publish(topics::event(&prober.device), QoS::AtLeastOnce, false, body)
            .await
            .expect("publish request");
    }
}

/// `devices` connections publishing QoS1 telemetry at `rate` events/s in
/// all for `duration`. Returns how many were published.
pub async fn load(port: u16, devices: usize, rate: f64, duration: Duration) -> u64 {
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..devices {
        let device = device_id("l-", index);
        let client = connect(port, &device, None, |_, _| {}).await;
        let sent = sent.clone();
        let per_device = rate / devices as f64;
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut budget = 0.0;
            let mut last = Instant::now();
            let mut seq = 0u64;
            while started.elapsed() < duration {
                tick.tick().await;
                budget += last.elapsed().as_secs_f64() * per_device;
                last = Instant::now();
                while budget >= 1.0 {
                    budget -= 1.0;
                    seq += 1;
                    let body = payload(&device, seq, EventKind::Telemetry);
                    if client
                        .publish(topics::event(&device), QoS::AtLeastOnce, false, body)
                        .await
                        .is_ok()
                    {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    sent.load(Ordering::Relaxed)
}
