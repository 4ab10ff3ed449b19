//! Everything the gateway publishes into its own broker: acks to devices on
//! `anxin/v1/dev/{id}/ack` (protobuf) or `…/ack/json` (proto3 JSON), and
//! local alarms for an on-site console or siren.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use anxin_proto::{
    AckKind, DeviceAck, now_ms,
    topics::{self, Encoding},
};
use prost::Message;
use rumqttd::local::LinkTx;

/// Acks go out in the encoding the device itself last used, on that one
/// topic. Publishing to a topic nobody subscribes to is not free in
/// rumqttd: its router matches such a topic against every subscription
/// each time (it caches only topics that match something), which at
/// 10,000 devices saturated the router.
#[derive(Clone)]
pub struct MqttOut {
    link: Arc<Mutex<LinkTx>>,
    json_devices: Arc<Mutex<HashSet<String>>>,
}

impl MqttOut {
    pub fn new(link: LinkTx) -> Self {
        Self {
            link: Arc::new(Mutex::new(link)),
            json_devices: Arc::default(),
        }
    }

    /// Remembers the encoding a registered device publishes in.
    pub fn note_encoding(&self, device_id: &str, encoding: Encoding) {
        let mut json = self.json_devices.lock().unwrap_or_else(|p| p.into_inner());
        match encoding {
            Encoding::Json if !json.contains(device_id) => {
                json.insert(device_id.to_string());
            }
            Encoding::Protobuf if json.contains(device_id) => {
                json.remove(device_id);
            }
            _ => {}
        }
    }

    /// Sends in the encoding the device last used (protobuf if unknown).
    pub fn send(&self, ack: DeviceAck) {
        let json = self
            .json_devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&ack.device_id);
        self.send_as(
            ack,
            if json {
                Encoding::Json
            } else {
                Encoding::Protobuf
            },
        );
    }

    pub fn send_as(&self, mut ack: DeviceAck, encoding: Encoding) {
        ack.sent_ms = now_ms();
        let (topic, payload) = match encoding {
            Encoding::Protobuf => (topics::ack(&ack.device_id), ack.encode_to_vec()),
            Encoding::Json => (
                topics::ack_json(&ack.device_id),
                serde_json::to_vec(&ack).expect("acks serialize"),
            ),
        };
        let result = self
            .link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .publish(topic, payload);
        if let Err(err) = result {
            tracing::warn!(device_id = %ack.device_id, seq = ack.seq, error = %err, "publishing ack to device failed");
        }
    }

    /// Publishes a JSON document on a local topic.
    pub fn publish_json(&self, topic: &str, document: &serde_json::Value) {
        let mut link = self
            .link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(err) = link.publish(topic.to_string(), document.to_string()) {
            tracing::warn!(topic, error = %err, "local publish failed");
        }
    }

    pub fn simple(
        device_id: &str,
        seq: u64,
        kind: AckKind,
        message: impl Into<String>,
    ) -> DeviceAck {
        DeviceAck {
            device_id: device_id.to_string(),
            seq,
            kind: kind as i32,
            message: message.into(),
            ..Default::default()
        }
    }
}
