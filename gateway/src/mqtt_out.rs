//! Everything the gateway sends to devices and on-site listeners: acks on
//! `anxin/v1/dev/{id}/ack` (protobuf) or `…/ack/json` (proto3 JSON) — to
//! that one device, on the ack topics it subscribed to — and local alarms
//! for an on-site console or siren.

use std::sync::Arc;

use anxin_proto::{AckKind, DeviceAck};
use bytes::Bytes;

use crate::front::session::Sessions;

#[derive(Clone)]
pub struct MqttOut {
    sessions: Arc<Sessions>,
}

impl MqttOut {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }

    /// Sends an ack to its device. `false`: the device is away without a
    /// persistent session (it will retry, or hear it on reconnect from the
    /// server's resent downlink).
    pub fn send(&self, ack: DeviceAck) -> bool {
        let (device_id, seq) = (ack.device_id.clone(), ack.seq);
        let delivered = self.sessions.deliver_ack(ack);
        if !delivered {
            tracing::debug!(%device_id, seq, "ack not delivered: the device is not connected or not subscribed");
        }
        delivered
    }

    /// Sends a downlink ("help is coming") to its device, or holds it until
    /// the device is back and subscribed.
    pub fn send_downlink(&self, ack: DeviceAck) {
        let (device_id, seq) = (ack.device_id.clone(), ack.seq);
        if !self.sessions.deliver_downlink(ack) {
            tracing::info!(%device_id, seq, "device away: downlink held until it returns");
        }
    }

    /// Publishes a JSON document on a local topic.
    pub fn publish_json(&self, topic: &str, document: &serde_json::Value) {
        let reached = self
            .sessions
            .deliver_local(topic, Bytes::from(document.to_string()));
        tracing::debug!(topic, reached, "local message published");
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
