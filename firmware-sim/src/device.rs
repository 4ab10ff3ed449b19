//! One simulated device's MQTT side, written the way firmware does it: an
//! outbox keeps every event until the gateway's `stored` ack for its seq
//! arrives (rumqttd's PUBACK only means "in the broker's memory", and
//! rumqttc drops unacked publishes on a clean reconnect), and republishes
//! unacknowledged events on every reconnect and retry interval. The device's
//! MQTT last will is `offline` on its status topic.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anxin_proto::{AckKind, DeviceAck, DeviceEvent, topics};
use prost::Message;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::config::SimConfig;

/// What the device task reports to its owner.
#[derive(Debug, Clone)]
pub struct Heard {
    pub ack: DeviceAck,
    /// Time since the event was first handed to the device.
    pub latency: Duration,
}

/// What the device task reports to its owner.
pub type HeardSender = mpsc::UnboundedSender<Heard>;

pub struct DeviceHandle {
    pub submit: mpsc::UnboundedSender<DeviceEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl DeviceHandle {
    /// Disconnects cleanly (an MQTT DISCONNECT, so the broker does not
    /// publish the last will), then stops the task.
    pub async fn close(self) {
        let DeviceHandle { submit, mut task } = self;
        drop(submit);
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

struct Pending {
    payload: Vec<u8>,
    first_sent: Instant,
    last_sent: Option<Instant>,
}

/// Starts a device task connected to the configured gateway; acks it hears
/// go to `heard`.
pub fn spawn(
    config: &SimConfig,
    device_id: &str,
    json: bool,
    heard: HeardSender,
) -> Result<DeviceHandle, crate::config::ConfigError> {
    let (host, port) = config.gateway_addr()?;
    let mut options = MqttOptions::new(format!("anxin-sim-{device_id}"), host, port);
    options.set_keep_alive(Duration::from_secs(30));
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
        options.set_credentials(username, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    // An alarm is one small packet: without TCP_NODELAY, Nagle's algorithm
    // and delayed ACKs hold it for ~40 ms.
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let (submit, submitted) = mpsc::unbounded_channel();
    let device = DeviceTask {
        device_id: device_id.to_string(),
        json,
        retry_every: Duration::from_millis(config.retry_ms),
        client,
        outbox: BTreeMap::new(),
        connected: false,
    };
    // rumqttc's poll() must not be cancelled mid-flight by a select! on
    // other inputs (a device submitting events at 100/s would stall its own
    // connection), so the event loop runs in a task of its own.
    let (polled_tx, polled) = mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            let result = eventloop.poll().await;
            let failed = result.is_err();
            if polled_tx.send(result).is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let task = tokio::spawn(async move {
        device.run(polled, submitted, heard).await;
        poller.abort();
    });
    Ok(DeviceHandle { submit, task })
}

type Polled = mpsc::UnboundedReceiver<Result<Event, rumqttc::ConnectionError>>;

struct DeviceTask {
    device_id: String,
    json: bool,
    retry_every: Duration,
    client: AsyncClient,
    outbox: BTreeMap<u64, Pending>,
    connected: bool,
}

impl DeviceTask {
    async fn disconnect(&self, polled: &mut Polled) {
        if !self.connected || self.client.try_disconnect().is_err() {
            return;
        }
        let goodbye = async {
            while let Some(result) = polled.recv().await {
                if matches!(
                    result,
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
                ) {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
    }

    fn topic(&self) -> String {
        if self.json {
            topics::event_json(&self.device_id)
        } else {
            topics::event(&self.device_id)
        }
    }

    fn send(&mut self, seq: u64) {
        let topic = self.topic();
        if let Some(pending) = self.outbox.get_mut(&seq) {
            // try_publish: a full client queue just means "retry later".
            if self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, pending.payload.clone())
                .is_ok()
            {
                pending.last_sent = Some(Instant::now());
            }
        }
    }

    async fn run(
        mut self,
        mut polled: Polled,
        mut submitted: mpsc::UnboundedReceiver<DeviceEvent>,
        heard: mpsc::UnboundedSender<Heard>,
    ) {
        let ack_topic = topics::ack(&self.device_id);
        let mut retry = tokio::time::interval(self.retry_every);
        loop {
            tokio::select! {
                event = submitted.recv() => {
                    let Some(event) = event else {
                        self.disconnect(&mut polled).await;
                        return;
                    };
                    let payload = if self.json {
                        serde_json::to_vec(&event).expect("events serialize")
                    } else {
                        event.encode_to_vec()
                    };
                    self.outbox.insert(event.seq, Pending { payload, first_sent: Instant::now(), last_sent: None });
                    if self.connected {
                        self.send(event.seq);
                    }
                }
                _ = retry.tick() => {
                    if self.connected {
                        let due: Vec<u64> = self
                            .outbox
                            .iter()
                            .filter(|(_, p)| p.last_sent.is_none_or(|at| at.elapsed() >= self.retry_every))
                            .map(|(seq, _)| *seq)
                            .collect();
                        for seq in due {
                            self.send(seq);
                        }
                    }
                }
                Some(result) = polled.recv() => match result {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        self.connected = true;
                        let _ = self.client.try_subscribe(&ack_topic, QoS::AtLeastOnce);
                        let seqs: Vec<u64> = self.outbox.keys().copied().collect();
                        for seq in seqs {
                            self.send(seq);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == ack_topic => {
                        let Ok(ack) = DeviceAck::decode(publish.payload.as_ref()) else {
                            tracing::warn!(device_id = %self.device_id, "undecodable ack ignored");
                            continue;
                        };
                        let latency = match ack.kind() {
                            AckKind::Stored | AckKind::Rejected => match self.outbox.remove(&ack.seq) {
                                Some(p) => p.first_sent.elapsed(),
                                // A repeated ack for an event already settled.
                                None => continue,
                            },
                            _ => Duration::ZERO,
                        };
                        if heard.send(Heard { ack, latency }).is_err() {
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
