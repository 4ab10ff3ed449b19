//! Device events in: decode, validate, rate, journal, flush, ack.
//!
//! Keeps guarantee 1: a device hears `stored` only after the journal flush
//! that made its event durable returned. Keeps guarantee 5: a bad payload is
//! rejected with a log line, a counter and a `rejected` ack, and never stops
//! anything. Keeps guarantee 7: decoding and checking happen on each
//! device's connection task ([`Admission`]); P0/P1 events then take the
//! alarm lane, P2/P3 the bulk lane, each with its own writer, so an alarm
//! never waits for a telemetry round. Many events share one flush (group
//! commit). A device over its rate, or offering more than a lane holds,
//! gets no ack (it keeps the event and retries), so neither a flooding
//! device nor a flood of devices can starve others, fill the disk or grow
//! memory.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anxin_proto::{AckKind, DeviceAck, DeviceEvent, EventKind, now_ms, topics::Encoding};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    config::GatewayConfig,
    fallback::LocalAlarm,
    front::{DeviceBook, Session},
    health::Health,
    journal::{Appended, JournalError, JournalWriter, Staging},
    metrics as m,
    mqtt_out::MqttOut,
    supervisor::Sighting,
};

/// Most events handled per flush.
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

/// Decodes one publish's payload. Pure, so it can be tested without a broker.
pub fn decode(
    encoding: Encoding,
    payload: &[u8],
    max_bytes: usize,
) -> Result<DeviceEvent, Rejection> {
    if payload.len() > max_bytes {
        return Err(Rejection::Oversize {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    match encoding {
        Encoding::Protobuf => {
            DeviceEvent::decode(payload).map_err(|e| Rejection::Malformed(e.to_string()))
        }
        Encoding::Json => {
            serde_json::from_slice(payload).map_err(|e| Rejection::Malformed(e.to_string()))
        }
    }
}

/// Checks a decoded event against its topic and the device list.
pub fn check(
    mut event: DeviceEvent,
    topic_device: &str,
    is_known: impl Fn(&str) -> bool,
) -> Result<DeviceEvent, Rejection> {
    if event.device_id.is_empty() {
        event.device_id = topic_device.to_string();
    } else if event.device_id != topic_device {
        return Err(Rejection::DeviceMismatch {
            topic: topic_device.to_string(),
            payload: event.device_id,
        });
    }
    if !is_known(topic_device) {
        return Err(Rejection::UnknownDevice(topic_device.to_string()));
    }
    if event.seq == 0 || event.seq >= anxin_proto::GATEWAY_SEQ_BASE {
        return Err(Rejection::Malformed(
            "seq must be between 1 and 2^63-1 (the rest is the gateway's)".into(),
        ));
    }
    match event.known_kind() {
        None => return Err(Rejection::UnknownKind(event.kind)),
        Some(EventKind::Unspecified) => {
            return Err(Rejection::Malformed("kind is missing".into()));
        }
        // The server raises these from what it knows of a resident (a
        // check-in window passing in silence, a safe zone, a meter); a
        // device saying so would be a forged welfare alert.
        Some(kind) if anxin_proto::raised_by_server(kind) => {
            return Err(Rejection::Malformed(format!(
                "{} is raised by the dispatch server, never by a device",
                kind.as_str_name().trim_start_matches("EVENT_KIND_")
            )));
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

/// Decodes and checks one publish.
pub fn validate(
    topic_device: &str,
    encoding: Encoding,
    payload: &[u8],
    max_bytes: usize,
    is_known: impl Fn(&str) -> bool,
) -> Result<DeviceEvent, Rejection> {
    check(
        decode(encoding, payload, max_bytes)?,
        topic_device,
        is_known,
    )
}

/// Capacity of the alarm lane (P0/P1) and the bulk lane (P2/P3), in
/// events. A full lane turns events away without an ack (the device keeps
/// them and retries): memory stays bounded whatever devices offer.
pub const ALARM_LANE: usize = 4096;
pub const BULK_LANE: usize = 8192;

/// The two ways into the journal. An alarm never waits behind telemetry:
/// it has its own channel and its own writer task, which writes and
/// flushes it as soon as it arrives.
#[derive(Clone)]
pub struct Lanes {
    alarm: mpsc::Sender<DeviceEvent>,
    bulk: mpsc::Sender<DeviceEvent>,
}

impl Lanes {
    pub fn new() -> (
        Self,
        mpsc::Receiver<DeviceEvent>,
        mpsc::Receiver<DeviceEvent>,
    ) {
        let (alarm, alarm_rx) = mpsc::channel(ALARM_LANE);
        let (bulk, bulk_rx) = mpsc::channel(BULK_LANE);
        (Self { alarm, bulk }, alarm_rx, bulk_rx)
    }
}

/// What the device front does with a device's publish, on the device's own
/// connection task: decode, check, rate, and hand to a lane. Runs in
/// parallel across connections; only journal writes are serialized.
#[derive(Clone)]
pub struct Admission {
    book: Arc<DeviceBook>,
    lanes: Lanes,
    max_event_bytes: usize,
    rate_per_sec: f64,
    burst: f64,
}

/// The outcome of [`Admission::admit`] the device must hear now; `None`
/// from `admit` means "queued for the journal" or "silently deferred".
pub type Answer = Option<DeviceAck>;

impl Admission {
    pub fn new(config: &GatewayConfig, book: Arc<DeviceBook>, lanes: Lanes) -> Self {
        Self {
            book,
            lanes,
            max_event_bytes: config.limits.max_event_bytes,
            rate_per_sec: config.limits.device_rate_per_sec,
            burst: f64::from(config.limits.device_burst),
        }
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// One publish on a device's own event topic (the front checked the
    /// topic against the connection's identity).
    pub fn admit(
        &self,
        session: &Session,
        device_id: &str,
        encoding: Encoding,
        payload: &[u8],
    ) -> Answer {
        let decoded = decode(encoding, payload, self.max_event_bytes);
        // Echo the seq in a rejection when it could be read, so the device
        // can drop that event from its retry queue.
        let seq_hint = decoded.as_ref().map_or(0, |e| e.seq);
        let event = match decoded.and_then(|e| check(e, device_id, |d| self.book.is_active(d))) {
            Ok(event) => event,
            Err(rejection) => {
                metrics::counter!(m::EVENTS_REJECTED, "reason" => rejection.label()).increment(1);
                tracing::warn!(
                    device_id,
                    reason = rejection.label(),
                    "rejected event: {rejection}"
                );
                return Some(MqttOut::simple(
                    device_id,
                    seq_hint,
                    AckKind::Rejected,
                    rejection.to_string(),
                ));
            }
        };
        if !session.allow_event(self.rate_per_sec, self.burst) {
            metrics::counter!(m::EVENTS_REJECTED, "reason" => "rate_limited").increment(1);
            tracing::debug!(
                device_id,
                seq = event.seq,
                "device over its rate; no ack, it will retry"
            );
            return None;
        }
        let alarm = event.priority() <= anxin_proto::Priority::P1;
        let lane = if alarm {
            &self.lanes.alarm
        } else {
            &self.lanes.bulk
        };
        if let Err(err) = lane.try_send(event) {
            let reason = match err {
                mpsc::error::TrySendError::Full(_) => "ingest_busy",
                mpsc::error::TrySendError::Closed(_) => "shutting_down",
            };
            metrics::counter!(m::EVENTS_DEFERRED, "reason" => reason).increment(1);
            if alarm {
                tracing::warn!(
                    device_id,
                    reason,
                    "alarm lane full: no ack, the device will retry"
                );
            }
        }
        None
    }
}

/// At most one journal-full local alarm per this interval.
const JOURNAL_FULL_ALARM_EVERY: Duration = Duration::from_secs(60);

/// Which way into the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// P0/P1.
    Alarm,
    /// P2/P3.
    Bulk,
}

impl Lane {
    pub fn label(self) -> &'static str {
        match self {
            Lane::Alarm => "alarm",
            Lane::Bulk => "bulk",
        }
    }
}

/// A lane's writer: takes what is queued, writes it as one batch, flushes,
/// then acks. The alarm lane and the bulk lane each run one.
pub struct Ingest {
    lane: Lane,
    journal: JournalWriter,
    acks: MqttOut,
    alarm: Arc<LocalAlarm>,
    sightings: tokio::sync::mpsc::Sender<Sighting>,
    last_full_alarm: Option<Instant>,
    health: Arc<Health>,
    /// P0/P1 events staged in the current round: if the round cannot be
    /// written, they are alarmed locally at once.
    round_alarms: Vec<DeviceEvent>,
    /// Set after a write failed: the journal is unusable until the restart
    /// in place, so nothing more is staged meanwhile.
    failed: bool,
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
    pub fn new(
        lane: Lane,
        journal: JournalWriter,
        acks: MqttOut,
        alarm: Arc<LocalAlarm>,
        sightings: tokio::sync::mpsc::Sender<Sighting>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            lane,
            journal,
            acks,
            alarm,
            sightings,
            last_full_alarm: None,
            health,
            round_alarms: Vec::new(),
            failed: false,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<DeviceEvent>, cancel: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                next = rx.recv() => next,
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            self.handle_batch(&mut batch).await;
            batch.clear();
        }
        if self.failed {
            return;
        }
        // Everything appended was flushed before its ack; a last flush makes
        // shutdown leave a clean journal.
        if let Err(err) = self.flush().await {
            tracing::error!(lane = self.lane.label(), error = %err, "final journal flush failed");
        }
    }

    /// Flushes this lane's database only: an alarm round never waits for
    /// a telemetry batch's fsync.
    async fn flush(&self) -> Result<(), JournalError> {
        match self.lane {
            Lane::Alarm => self.journal.flush_alarms().await,
            Lane::Bulk => self.journal.flush_bulk().await,
        }
    }

    /// A round could not be made durable: no `stored` acks (devices retry),
    /// its alarms raised on site now, and the journal handed to the restart
    /// in place.
    fn round_failed(&mut self, err: &JournalError, what: &str) {
        tracing::error!(lane = self.lane.label(), error = %err, "journal {what} failed; no stored acks sent, devices will retry");
        let alarms = std::mem::take(&mut self.round_alarms);
        if !alarms.is_empty() {
            self.alarm.raise("journal_write_failed", &alarms);
        }
        self.failed = true;
        self.health.journal_failed(err);
    }

    async fn handle_batch(&mut self, batch: &mut Vec<DeviceEvent>) {
        if batch.is_empty() || self.failed {
            return;
        }
        self.round_alarms.clear();
        let stored_ms = now_ms();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut sightings = Vec::with_capacity(batch.len());
        // The whole round goes to the journal as one write.
        let journal = self.journal.clone();
        let written = {
            let mut staging = match self.lane {
                Lane::Alarm => journal.stage_alarms(),
                Lane::Bulk => journal.stage_bulk(),
            };
            for event in batch.drain(..) {
                sightings.push(Sighting::Event {
                    device_id: event.device_id.clone(),
                    battery_pct: event.battery_pct,
                });
                outcomes.push(self.accept(event, stored_ms, &mut staging));
            }
            staging.commit()
        };
        let needs_flush = outcomes.iter().any(|o| matches!(o, Outcome::Store { .. }));
        let durable = if let Err(err) = written {
            self.round_failed(&err, "write");
            false
        } else if needs_flush {
            metrics::counter!(m::JOURNAL_FLUSHES, "lane" => self.lane.label()).increment(1);
            match self.flush().await {
                Ok(()) => true,
                Err(err) => {
                    self.round_failed(&err, "flush");
                    false
                }
            }
        } else {
            true
        };
        for outcome in outcomes {
            match outcome {
                Outcome::Store { device_id, seq } if durable => {
                    self.acks
                        .send(MqttOut::simple(&device_id, seq, AckKind::Stored, "stored"));
                }
                Outcome::Store { .. } | Outcome::Ignore => {}
                Outcome::Reject {
                    device_id,
                    seq,
                    reason,
                } => {
                    self.acks
                        .send(MqttOut::simple(&device_id, seq, AckKind::Rejected, reason));
                }
            }
        }
        m::set_journal_depth(self.journal.depth());
        for sighting in sightings {
            // Supervision runs beside ingest; if it stops, ingest goes on.
            let _ = self.sightings.send(sighting).await;
        }
    }

    fn accept(&mut self, event: DeviceEvent, stored_ms: i64, staging: &mut Staging<'_>) -> Outcome {
        let (device_id, seq) = (event.device_id.clone(), event.seq);
        if self.failed {
            return Outcome::Ignore;
        }
        match staging.add(&event, stored_ms) {
            Ok(Appended::New {
                evicted,
                over_quota,
                ..
            }) => {
                let priority = m::PRIORITY_LABELS[event.priority() as usize];
                metrics::counter!(m::EVENTS_STORED, "priority" => priority).increment(1);
                // A line per alarm for the operator; telemetry only at debug
                // (at tens of thousands a second the log would be the load).
                if event.priority() <= anxin_proto::Priority::P1 {
                    tracing::info!(%device_id, seq, kind = event.kind().as_str_name(), priority, "event journaled");
                } else {
                    tracing::debug!(%device_id, seq, kind = event.kind().as_str_name(), priority, "event journaled");
                }
                for gone in &evicted {
                    metrics::counter!(m::EVICTIONS, "priority" => m::PRIORITY_LABELS[gone.priority]).increment(1);
                    tracing::warn!(device_id = %gone.device_id, seq = gone.seq, priority = m::PRIORITY_LABELS[gone.priority], "journal quota reached: evicted");
                }
                if over_quota {
                    self.journal_full_alarm(&event);
                }
                if event.priority() <= anxin_proto::Priority::P1 {
                    self.round_alarms.push(event);
                }
                Outcome::Store { device_id, seq }
            }
            Ok(Appended::Refused) => {
                metrics::counter!(m::EVENTS_REJECTED, "reason" => "journal_full").increment(1);
                self.journal_full_alarm(&event);
                Outcome::Reject {
                    device_id,
                    seq,
                    reason: "the gateway's journal is full of life-safety events".into(),
                }
            }
            Ok(Appended::Duplicate(_)) => {
                metrics::counter!(m::EVENTS_DUPLICATE).increment(1);
                tracing::debug!(%device_id, seq, "retransmission of a journaled event");
                Outcome::Store { device_id, seq }
            }
            Ok(Appended::Deferred) => {
                metrics::counter!(m::EVENTS_DEFERRED, "reason" => "disk_low").increment(1);
                tracing::debug!(%device_id, seq, "disk space low: P2/P3 deferred, the device will retry");
                Outcome::Ignore
            }
            Err(err) => {
                if event.priority() <= anxin_proto::Priority::P1 {
                    self.round_alarms.push(event);
                }
                tracing::error!(%device_id, seq, error = %err, "journal append failed; no stored ack");
                self.round_failed(&err, "append");
                Outcome::Ignore
            }
        }
    }

    fn journal_full_alarm(&mut self, event: &DeviceEvent) {
        let due = self
            .last_full_alarm
            .is_none_or(|at| at.elapsed() >= JOURNAL_FULL_ALARM_EVERY);
        if due {
            self.last_full_alarm = Some(Instant::now());
            self.alarm
                .raise("journal_full", std::slice::from_ref(event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> impl Fn(&str) -> bool {
        |device| device == "btn-1"
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
            validate("btn-1", Encoding::Protobuf, &bytes, 4096, known()).unwrap(),
            sos("btn-1")
        );
        let json = br#"{"seq":"1","kind":"EVENT_KIND_SOS","batteryPct":90}"#;
        assert_eq!(
            validate("btn-1", Encoding::Json, json, 4096, known()).unwrap(),
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
