//! Everything the gateway publishes into its own broker: acks to devices on
//! `anxin/v1/dev/{id}/ack` (protobuf) and `…/ack/json` (proto3 JSON), and
//! local alarms for an on-site console or siren.

use std::sync::{Arc, Mutex};

use anxin_proto::{AckKind, DeviceAck, now_ms, topics};
use prost::Message;
use rumqttd::local::LinkTx;

#[derive(Clone)]
pub struct MqttOut {
    link: Arc<Mutex<LinkTx>>,
}

impl MqttOut {
    pub fn new(link: LinkTx) -> Self {
        Self {
            link: Arc::new(Mutex::new(link)),
        }
    }

    pub fn send(&self, mut ack: DeviceAck) {
        ack.sent_ms = now_ms();
        let json = serde_json::to_vec(&ack).expect("acks serialize");
        let mut link = self
            .link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let results = [
            link.publish(topics::ack(&ack.device_id), ack.encode_to_vec()),
            link.publish(topics::ack_json(&ack.device_id), json),
        ];
        for result in results {
            if let Err(err) = result {
                tracing::warn!(device_id = %ack.device_id, seq = ack.seq, error = %err, "publishing ack to device failed");
            }
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
