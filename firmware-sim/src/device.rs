//! One simulated device's MQTT side. Retransmission is the device core's
//! (`anxin_device_core::outbox`): every event stays in the bounded outbox
//! until the gateway's `stored` ack for its seq (rumqttd's PUBACK only means
//! "in the broker's memory", and rumqttc drops unacked publishes on a clean
//! reconnect), and is resent with backoff and on every reconnect. Payloads
//! are encoded by the core into a fixed buffer. The device's MQTT last will
//! is `offline` on its status topic.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anxin_device_core::{
    Detail, Event, Kind,
    outbox::{Backoff, Outbox, Pushed},
    wire::{self, AckKind, MAX_EVENT_BYTES},
};
use anxin_proto::{DeviceAck, topics};
use prost::Message;
use rumqttc::{AsyncClient, Event as MqttEvent, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::config::SimConfig;

/// Events a simulated device holds at most while the gateway is away.
pub const OUTBOX_CAPACITY: usize = 64;

/// What the device task reports to its owner.
#[derive(Debug, Clone)]
pub enum Heard {
    Stored {
        device_id: String,
        seq: u64,
        latency: Duration,
    },
    Rejected {
        device_id: String,
        seq: u64,
        reason: String,
    },
    HelpIsComing {
        device_id: String,
        seq: u64,
        alert_id: String,
        message: String,
    },
    /// The outbox was full: this event was dropped (or displaced) unsent.
    Dropped { device_id: String, seq: u64 },
}

pub type HeardSender = mpsc::UnboundedSender<Heard>;

/// Misbehaviour on demand, for `anxin-sim load --chaos`.
#[derive(Debug, Clone)]
pub enum Mischief {
    /// Publish this event once more, outside the outbox (a duplicate).
    Duplicate(Event),
    /// Publish these bytes on the event topic (malformed or oversize).
    Junk(Vec<u8>),
    /// Drop the connection; the device reconnects and resends.
    Disconnect,
}

pub struct DeviceHandle {
    pub submit: mpsc::UnboundedSender<Event>,
    pub mischief: mpsc::UnboundedSender<Mischief>,
    task: tokio::task::JoinHandle<()>,
}

impl DeviceHandle {
    /// Disconnects cleanly (an MQTT DISCONNECT, so the broker does not
    /// publish the last will), then stops the task.
    pub async fn close(self) {
        let DeviceHandle {
            submit,
            mischief,
            mut task,
        } = self;
        drop((submit, mischief));
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Starts a device task connected to the configured gateway; what it hears
/// goes to `heard`.
pub fn spawn(
    config: &SimConfig,
    device_id: &str,
    json: bool,
    heard: HeardSender,
) -> Result<DeviceHandle, crate::config::ConfigError> {
    let (host, port) = config.gateway_addr()?;
    let mut options = MqttOptions::new(format!("anxin-sim-{device_id}"), host, port);
    // Battery devices keep a long keep-alive; it also rides out a busy
    // gateway warming up to thousands of new topics.
    options.set_keep_alive(Duration::from_secs(120));
    options.set_last_will(LastWill::new(
        topics::status(device_id),
        "offline",
        QoS::AtLeastOnce,
        false,
    ));
    let username = config
        .username
        .clone()
        .unwrap_or_else(|| device_id.to_string());
    if let Some(password) = &config.password {
        options.set_credentials(username, password.replace("{id}", device_id));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    // An alarm is one small packet: without TCP_NODELAY, Nagle's algorithm
    // and delayed ACKs hold it for ~40 ms.
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    // A gateway busy with thousands of (re)connecting devices may take a
    // while to answer CONNECT; giving up early only adds to the storm.
    network.set_connection_timeout(30);
    eventloop.set_network_options(network);
    let (submit, submitted) = mpsc::unbounded_channel();
    let (mischief, mischief_rx) = mpsc::unbounded_channel();
    let device = DeviceTask {
        device_id: device_id.to_string(),
        json,
        client,
        outbox: Outbox::new(Backoff {
            first_retry_ms: config.retry_ms,
            max_retry_ms: 30_000.max(config.retry_ms),
        }),
        first_sent: HashMap::new(),
        connected: false,
        started: Instant::now(),
    };
    // rumqttc's poll() must not be cancelled mid-flight by a select! on
    // other inputs (a device submitting events at 100/s would stall its own
    // connection), so the event loop runs in a task of its own.
    let (polled_tx, polled) = mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let result = eventloop.poll().await;
            let failed = result.is_err();
            if polled_tx.send(result).is_err() {
                return;
            }
            if failed {
                // Jittered exponential backoff, as firmware does: ten
                // thousand devices must not reconnect in lockstep.
                failures = (failures + 1).min(6);
                let ceiling = 200u64 << failures;
                let delay = rand::random_range(ceiling / 2..=ceiling);
                tokio::time::sleep(Duration::from_millis(delay)).await;
            } else {
                failures = 0;
            }
        }
    });
    let task = tokio::spawn(async move {
        device.run(polled, submitted, mischief_rx, heard).await;
        poller.abort();
    });
    Ok(DeviceHandle {
        submit,
        mischief,
        task,
    })
}

type Polled = mpsc::UnboundedReceiver<Result<MqttEvent, rumqttc::ConnectionError>>;

struct DeviceTask {
    device_id: String,
    json: bool,
    client: AsyncClient,
    outbox: Outbox<OUTBOX_CAPACITY>,
    first_sent: HashMap<u64, Instant>,
    connected: bool,
    started: Instant,
}

/// The same event as the proto type, for the JSON topic.
pub fn to_proto(event: &Event) -> anxin_proto::DeviceEvent {
    use anxin_proto::v1::{Fall, Location, Vitals, device_event::Detail as P};
    let detail = match event.detail {
        Detail::None => None,
        Detail::Vitals {
            heart_rate_bpm,
            spo2_pct,
            body_temp_dc,
        } => Some(P::Vitals(Vitals {
            heart_rate_bpm,
            spo2_pct,
            body_temp_dc,
            ..Default::default()
        })),
        Detail::Location {
            lat_e7,
            lon_e7,
            accuracy_m,
        } => Some(P::Location(Location {
            lat_e7,
            lon_e7,
            accuracy_m,
            room: String::new(),
        })),
        Detail::Fall {
            confidence_pct,
            peak_accel_mg,
        } => Some(P::Fall(Fall {
            confidence_pct,
            peak_accel_mg,
        })),
        Detail::Meter { kind, total } => Some(P::Meter(anxin_proto::v1::Meter {
            kind: kind.name().into(),
            total,
        })),
    };
    anxin_proto::DeviceEvent {
        device_id: event.device_id.to_string(),
        seq: event.seq,
        kind: event.kind as i32,
        device_time_ms: event.device_time_ms,
        battery_pct: event.battery_pct,
        detail,
        cancels_seq: event.cancels_seq,
        note: String::new(),
    }
}

/// The proto name of a core kind (EVENT_KIND_…).
pub fn kind_name(kind: Kind) -> &'static str {
    anxin_proto::EventKind::try_from(kind as i32)
        .map_or("EVENT_KIND_UNSPECIFIED", |k| k.as_str_name())
}

impl DeviceTask {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn disconnect(&self, polled: &mut Polled) {
        if !self.connected || self.client.try_disconnect().is_err() {
            return;
        }
        let goodbye = async {
            while let Some(result) = polled.recv().await {
                if matches!(
                    result,
                    Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
                ) {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
    }

    fn misbehave(&mut self, trick: Mischief) {
        if !self.connected {
            return;
        }
        let topic = topics::event(&self.device_id);
        match trick {
            Mischief::Duplicate(event) => {
                let mut buf = [0u8; MAX_EVENT_BYTES];
                let len = wire::encode_event(&event, &mut buf).expect("events fit MAX_EVENT_BYTES");
                let _ =
                    self.client
                        .try_publish(topic, QoS::AtLeastOnce, false, buf[..len].to_vec());
            }
            Mischief::Junk(bytes) => {
                let _ = self
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, false, bytes);
            }
            Mischief::Disconnect => {
                let _ = self.client.try_disconnect();
            }
        }
    }

    /// Publishes everything the outbox says is due.
    fn send_due(&mut self) {
        if !self.connected {
            return;
        }
        let now = self.now_ms();
        let (event_topic, json_topic) = (
            topics::event(&self.device_id),
            topics::event_json(&self.device_id),
        );
        while let Some(event) = self.outbox.next_due(now) {
            let (topic, payload) = if self.json {
                (
                    &json_topic,
                    serde_json::to_vec(&to_proto(event)).expect("events serialize"),
                )
            } else {
                let mut buf = [0u8; MAX_EVENT_BYTES];
                let len = wire::encode_event(event, &mut buf).expect("events fit MAX_EVENT_BYTES");
                (&event_topic, buf[..len].to_vec())
            };
            // A full client queue is fine: the outbox has scheduled a retry.
            let _ = self
                .client
                .try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload);
        }
    }

    async fn run(
        mut self,
        mut polled: Polled,
        mut submitted: mpsc::UnboundedReceiver<Event>,
        mut mischief: mpsc::UnboundedReceiver<Mischief>,
        heard: HeardSender,
    ) {
        let ack_topic = topics::ack(&self.device_id);
        loop {
            // Sleep exactly until the outbox's next retransmission: ten
            // thousand devices polling a short interval would burn a core.
            let next_retry = match (self.connected, self.outbox.next_due_in(self.now_ms())) {
                (true, Some(in_ms)) => {
                    tokio::time::Instant::now() + Duration::from_millis(in_ms.max(1))
                }
                _ => tokio::time::Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                event = submitted.recv() => {
                    let Some(event) = event else {
                        self.disconnect(&mut polled).await;
                        return;
                    };
                    let seq = event.seq;
                    match self.outbox.push(event, self.now_ms()) {
                        Ok(Pushed::Queued) => {}
                        Ok(Pushed::Displaced(gone)) => {
                            self.first_sent.remove(&gone.seq);
                            let _ = heard.send(Heard::Dropped { device_id: self.device_id.clone(), seq: gone.seq });
                        }
                        Err(_) => {
                            let _ = heard.send(Heard::Dropped { device_id: self.device_id.clone(), seq });
                            continue;
                        }
                    }
                    self.first_sent.insert(seq, Instant::now());
                    self.send_due();
                }
                _ = tokio::time::sleep_until(next_retry) => self.send_due(),
                Some(trick) = mischief.recv() => self.misbehave(trick),
                Some(result) = polled.recv() => match result {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        self.connected = true;
                        let _ = self.client.try_subscribe(&ack_topic, QoS::AtLeastOnce);
                        self.outbox.all_due(self.now_ms());
                        self.send_due();
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(publish))) if publish.topic == ack_topic => {
                        let Ok(ack) = wire::decode_ack(&publish.payload) else {
                            tracing::warn!(device_id = %self.device_id, "undecodable ack ignored");
                            continue;
                        };
                        let device_id = self.device_id.clone();
                        let report = match ack.kind {
                            AckKind::Stored => self.outbox.settle(ack.seq).map(|_| Heard::Stored {
                                device_id,
                                seq: ack.seq,
                                latency: self.first_sent.remove(&ack.seq).map_or(Duration::ZERO, |t| t.elapsed()),
                            }),
                            AckKind::Rejected => self.outbox.settle(ack.seq).map(|_| {
                                self.first_sent.remove(&ack.seq);
                                let full = DeviceAck::decode(publish.payload.as_ref()).unwrap_or_default();
                                Heard::Rejected { device_id, seq: ack.seq, reason: full.message }
                            }),
                            AckKind::Acknowledged => {
                                let full = DeviceAck::decode(publish.payload.as_ref()).unwrap_or_default();
                                Some(Heard::HelpIsComing {
                                    device_id,
                                    seq: ack.seq,
                                    alert_id: full.alert_id,
                                    message: full.message,
                                })
                            }
                            AckKind::Received | AckKind::Unknown => None,
                        };
                        if let Some(report) = report
                            && heard.send(report).is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        self.connected = false;
                        tracing::debug!(device_id = %self.device_id, error = %err, "gateway connection failed; retrying");
                    }
                }
            }
        }
    }
}
