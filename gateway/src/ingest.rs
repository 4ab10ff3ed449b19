//! Device events in: decode, validate, deduplicate, journal, flush, ack.
//!
//! Keeps guarantee 1: a device hears `stored` only after the journal flush
//! that made its event durable returned. Keeps guarantee 5: a bad payload is
//! rejected with a log line, a counter and a `rejected` ack, and never stops
//! the loop. Many events share one flush (group commit).

use std::collections::HashSet;

use anxin_proto::{
    AckKind, DeviceEvent, EventKind, now_ms,
    topics::{self, Encoding},
};
use futures::FutureExt;
use prost::Message;
use rumqttd::{Notification, local::LinkRx};
use tokio_util::sync::CancellationToken;

use crate::{
    config::GatewayConfig,
    device_acks::DeviceAcks,
    journal::{Appended, JournalWriter},
    metrics as m,
};

/// Most notifications handled per flush.
const MAX_BATCH: usize = 1024;

/// Why an event was refused. The label is the `reason` on the rejection
/// counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("payload of {size} bytes exceeds the limit of {limit}")]
    Oversize { size: usize, limit: usize },
    #[error("payload does not decode: {0}")]
    Malformed(String),
    #[error("device `{0}` is not registered at this gateway")]
    UnknownDevice(String),
    #[error("payload names device `{payload}` but was published on the topic of `{topic}`")]
    DeviceMismatch { topic: String, payload: String },
    #[error("event kind {0} is not supported")]
    UnknownKind(i32),
}

impl Rejection {
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Oversize { .. } => "oversize",
            Rejection::Malformed(_) => "malformed",
            Rejection::UnknownDevice(_) => "unknown_device",
            Rejection::DeviceMismatch { .. } => "device_mismatch",
            Rejection::UnknownKind(_) => "unknown_kind",
        }
    }
}

/// Validates one publish. Pure, so it can be tested without a broker.
pub fn validate(
    topic_device: &str,
    encoding: Encoding,
    payload: &[u8],
    max_bytes: usize,
    known_devices: &HashSet<String>,
) -> Result<DeviceEvent, Rejection> {
    if payload.len() > max_bytes {
        return Err(Rejection::Oversize {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    let mut event = match encoding {
        Encoding::Protobuf => {
            DeviceEvent::decode(payload).map_err(|e| Rejection::Malformed(e.to_string()))?
        }
        Encoding::Json => {
            serde_json::from_slice(payload).map_err(|e| Rejection::Malformed(e.to_string()))?
        }
    };
    if event.device_id.is_empty() {
        event.device_id = topic_device.to_string();
    } else if event.device_id != topic_device {
        return Err(Rejection::DeviceMismatch {
            topic: topic_device.to_string(),
            payload: event.device_id,
        });
    }
    if !known_devices.contains(topic_device) {
        return Err(Rejection::UnknownDevice(topic_device.to_string()));
    }
    if event.seq == 0 {
        return Err(Rejection::Malformed("seq must be 1 or more".into()));
    }
    match event.known_kind() {
        None => return Err(Rejection::UnknownKind(event.kind)),
        Some(EventKind::Unspecified) => {
            return Err(Rejection::Malformed("kind is missing".into()));
        }
        Some(_) => {}
    }
    if event.battery_pct > 100 {
        return Err(Rejection::Malformed(format!(
            "battery_pct {} is over 100",
            event.battery_pct
        )));
    }
    Ok(event)
}

pub struct Ingest {
    journal: JournalWriter,
    acks: DeviceAcks,
    known_devices: HashSet<String>,
    max_event_bytes: usize,
}

enum Outcome {
    Store {
        device_id: String,
        seq: u64,
    },
    Reject {
        device_id: String,
        seq: u64,
        reason: String,
    },
    Ignore,
}

impl Ingest {
    pub fn new(config: &GatewayConfig, journal: JournalWriter, acks: DeviceAcks) -> Self {
        Self {
            journal,
            acks,
            known_devices: config.devices.iter().map(|d| d.id.clone()).collect(),
            max_event_bytes: config.limits.max_event_bytes,
        }
    }

    pub async fn run(self, mut link: LinkRx, cancel: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                next = link.next() => next,
            };
            let mut batch = Vec::new();
            let mut unscheduled = false;
            let mut next = first;
            loop {
                match next {
                    Ok(Some(Notification::Forward(forward))) => batch.push(forward.publish),
                    Ok(Some(Notification::Unschedule)) => unscheduled = true,
                    Ok(Some(_)) | Ok(None) => {}
                    Err(err) => {
                        tracing::error!(error = %err, "broker link closed; ingest stops");
                        return;
                    }
                }
                if batch.len() >= MAX_BATCH {
                    break;
                }
                match link.next().now_or_never() {
                    Some(n) => next = n,
                    None => break,
                }
            }
            self.handle_batch(&batch).await;
            if unscheduled {
                // rumqttd pauses a link whose buffer filled; we drained it.
                if let Err(err) = link.wake().await {
                    tracing::error!(error = %err, "waking the broker link failed");
                }
            }
        }
        // Everything appended was flushed before its ack; a last flush makes
        // shutdown leave a clean journal.
        if let Err(err) = self.journal.flush().await {
            tracing::error!(error = %err, "final journal flush failed");
        }
    }

    async fn handle_batch(&self, batch: &[rumqttd::protocol::Publish]) {
        if batch.is_empty() {
            return;
        }
        let stored_ms = now_ms();
        let outcomes: Vec<Outcome> = batch
            .iter()
            .map(|publish| self.accept(&publish.topic, &publish.payload, stored_ms))
            .collect();
        let needs_flush = outcomes.iter().any(|o| matches!(o, Outcome::Store { .. }));
        let durable = if needs_flush {
            match self.journal.flush().await {
                Ok(()) => true,
                Err(err) => {
                    metrics::counter!(m::JOURNAL_ERRORS).increment(1);
                    tracing::error!(error = %err, "journal flush failed; no stored acks sent, devices will retry");
                    false
                }
            }
        } else {
            true
        };
        for outcome in outcomes {
            match outcome {
                Outcome::Store { device_id, seq } if durable => {
                    self.acks.send(DeviceAcks::simple(
                        &device_id,
                        seq,
                        AckKind::Stored,
                        "stored",
                    ));
                }
                Outcome::Store { .. } | Outcome::Ignore => {}
                Outcome::Reject {
                    device_id,
                    seq,
                    reason,
                } => {
                    self.acks.send(DeviceAcks::simple(
                        &device_id,
                        seq,
                        AckKind::Rejected,
                        reason,
                    ));
                }
            }
        }
        m::set_journal_depth(self.journal.depth());
    }

    fn accept(&self, topic: &[u8], payload: &[u8], stored_ms: i64) -> Outcome {
        let topic = String::from_utf8_lossy(topic);
        let Some((topic_device, encoding)) = topics::parse_event(&topic) else {
            metrics::counter!(m::EVENTS_REJECTED, "reason" => "topic").increment(1);
            tracing::warn!(%topic, "ignoring publish on a topic that is not an event topic");
            return Outcome::Ignore;
        };
        let event = match validate(
            topic_device,
            encoding,
            payload,
            self.max_event_bytes,
            &self.known_devices,
        ) {
            Ok(event) => event,
            Err(rejection) => {
                metrics::counter!(m::EVENTS_REJECTED, "reason" => rejection.label()).increment(1);
                tracing::warn!(
                    device_id = topic_device,
                    reason = rejection.label(),
                    "rejected event: {rejection}"
                );
                return Outcome::Reject {
                    device_id: topic_device.to_string(),
                    seq: 0,
                    reason: rejection.to_string(),
                };
            }
        };
        let (device_id, seq) = (event.device_id.clone(), event.seq);
        match self.journal.append(&event, stored_ms) {
            Ok(Appended::New(_)) => {
                let priority = m::PRIORITY_LABELS[event.priority() as usize];
                metrics::counter!(m::EVENTS_STORED, "priority" => priority).increment(1);
                tracing::info!(%device_id, seq, kind = event.kind().as_str_name(), priority, "event journaled");
                Outcome::Store { device_id, seq }
            }
            Ok(Appended::Duplicate(_)) => {
                metrics::counter!(m::EVENTS_DUPLICATE).increment(1);
                tracing::debug!(%device_id, seq, "retransmission of a journaled event");
                Outcome::Store { device_id, seq }
            }
            Err(err) => {
                metrics::counter!(m::JOURNAL_ERRORS).increment(1);
                tracing::error!(%device_id, seq, error = %err, "journal append failed; no stored ack");
                Outcome::Ignore
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> HashSet<String> {
        HashSet::from(["btn-1".to_string()])
    }

    fn sos(device: &str) -> DeviceEvent {
        DeviceEvent {
            device_id: device.into(),
            seq: 1,
            kind: EventKind::Sos as i32,
            battery_pct: 90,
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_valid_event_in_both_encodings() {
        let bytes = sos("btn-1").encode_to_vec();
        assert_eq!(
            validate("btn-1", Encoding::Protobuf, &bytes, 4096, &known()).unwrap(),
            sos("btn-1")
        );
        let json = br#"{"seq":"1","kind":"EVENT_KIND_SOS","batteryPct":90}"#;
        assert_eq!(
            validate("btn-1", Encoding::Json, json, 4096, &known()).unwrap(),
            sos("btn-1")
        );
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        let k = known();
        let label = |r: Result<DeviceEvent, Rejection>| r.unwrap_err().label();
        assert_eq!(
            label(validate("btn-1", Encoding::Protobuf, &[0xff; 10], 4096, &k)),
            "malformed"
        );
        assert_eq!(
            label(validate("btn-1", Encoding::Json, b"{nope", 4096, &k)),
            "malformed"
        );
        assert_eq!(
            label(validate("btn-1", Encoding::Json, &[b' '; 5000], 4096, &k)),
            "oversize"
        );
        let stranger = sos("btn-9").encode_to_vec();
        assert_eq!(
            label(validate("btn-9", Encoding::Protobuf, &stranger, 4096, &k)),
            "unknown_device"
        );
        assert_eq!(
            label(validate("btn-1", Encoding::Protobuf, &stranger, 4096, &k)),
            "device_mismatch"
        );
        let no_seq = DeviceEvent {
            seq: 0,
            ..sos("btn-1")
        }
        .encode_to_vec();
        assert_eq!(
            label(validate("btn-1", Encoding::Protobuf, &no_seq, 4096, &k)),
            "malformed"
        );
        let odd_kind = DeviceEvent {
            kind: 999,
            ..sos("btn-1")
        }
        .encode_to_vec();
        assert_eq!(
            label(validate("btn-1", Encoding::Protobuf, &odd_kind, 4096, &k)),
            "unknown_kind"
        );
    }
}
