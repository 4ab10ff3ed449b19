//! The storage seam itself: the [`Storage`] trait every engine implements
//! (events with their incident decisions, alerts, deadlines, downlinks, the
//! outbox, retention, backups; plus [`Directory`], [`AuditLog`] and
//! [`WelfareStore`]), its records and the rules both engines share (the
//! audit chain, the decision's audit entry).

use std::sync::Arc;

use anxin_proto::v1::{Alert, AuditEntry, DeviceAck, Downlink, Position, UplinkEvent};
use futures::future::BoxFuture;
use prost::Message;

use super::{
    audit::AuditLog, backup, directory::Directory, error::StoreError, outbox::OutboxItem,
    signals::SignalStore, welfare::WelfareStore,
};
use crate::domain::incidents::{Decision, IncidentPolicy, Origin};

/// An event as the server keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredEvent {
    #[prost(string, tag = "1")]
    pub gateway_id: String,
    #[prost(int64, tag = "2")]
    pub received_ms: i64,
    #[prost(message, optional, tag = "3")]
    pub uplink: Option<UplinkEvent>,
    /// The alert this event raised, joined or cancelled, if any.
    #[prost(string, tag = "4")]
    pub alert_id: String,
    /// Increases with every commit: the order events reached the server.
    #[prost(uint64, tag = "5")]
    pub commit_index: u64,
}

/// One device's events of one kind on one local day: what is kept of
/// telemetry and heartbeats once the events themselves are pruned
/// (`retention.events`), until `retention.event_days`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventDay {
    #[prost(string, tag = "1")]
    pub device_id: String,
    /// Local day (days since 1970-01-01 at `routing.utc_offset_minutes`).
    #[prost(int32, tag = "2")]
    pub day: i32,
    /// `EventKind`.
    #[prost(int32, tag = "3")]
    pub kind: i32,
    #[prost(uint64, tag = "4")]
    pub events: u64,
    /// When the first and the last of them reached the server.
    #[prost(int64, tag = "5")]
    pub first_ms: i64,
    #[prost(int64, tag = "6")]
    pub last_ms: i64,
}

impl EventDay {
    /// The summary of one event.
    pub fn one(device_id: &str, received_ms: i64, kind: i32, utc_offset_minutes: i32) -> Self {
        Self {
            device_id: device_id.to_string(),
            day: crate::domain::calendar::local_day(received_ms, utc_offset_minutes),
            kind,
            events: 1,
            first_ms: received_ms,
            last_ms: received_ms,
        }
    }

    /// The summary of one stored event.
    pub fn of(event: &StoredEvent, utc_offset_minutes: i32) -> Self {
        let inner = event.uplink.as_ref().and_then(|u| u.event.as_ref());
        Self::one(
            inner.map(|e| e.device_id.as_str()).unwrap_or_default(),
            event.received_ms,
            inner.map(|e| e.kind).unwrap_or_default(),
            utc_offset_minutes,
        )
    }

    pub fn merge(&mut self, other: &EventDay) {
        self.events += other.events;
        self.first_ms = self.first_ms.min(other.first_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
    }

    /// `days` merged: one per (device, day, kind).
    pub fn fold(days: impl IntoIterator<Item = EventDay>) -> Vec<EventDay> {
        let mut merged: std::collections::BTreeMap<(String, i32, i32), EventDay> =
            Default::default();
        for day in days {
            merged
                .entry((day.device_id.clone(), day.day, day.kind))
                .and_modify(|d| d.merge(&day))
                .or_insert(day);
        }
        merged.into_values().collect()
    }
}

/// What `anxin-server store check` found: records read per kind, and
/// what is wrong, each naming the kind and the record.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub counts: Vec<(String, u64)>,
    pub problems: Vec<String>,
    /// Problems beyond the first [`CheckReport::LISTED`], only counted.
    pub more_problems: u64,
}

impl CheckReport {
    pub const LISTED: usize = 100;

    /// Adds `records` to the count of `kind` (one kind may span trees).
    pub fn count(&mut self, kind: &str, records: u64) {
        match self.counts.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += records,
            None => self.counts.push((kind.to_string(), records)),
        }
    }

    pub fn problem(&mut self, problem: String) {
        if self.problems.len() < Self::LISTED {
            self.problems.push(problem);
        } else {
            self.more_problems += 1;
        }
    }

    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The moment an alert stopped being open (its retention counts from it).
pub(crate) fn closed_ms(alert: &Alert) -> i64 {
    alert
        .created_ms
        .max(alert.resolved_ms)
        .max(alert.cancelled_ms)
}

#[derive(Debug)]
pub enum Committed {
    /// First time the server sees this event; `alert` is the alert it raised
    /// or changed, with what happened to it.
    New {
        alert: Option<Box<(Alert, Decision)>>,
    },
    /// Already committed earlier: nothing changed.
    Duplicate,
}

/// What one alert update writes besides the alert itself.
#[derive(Default)]
pub struct Change {
    pub audit: Vec<AuditEntry>,
    /// Queued for the alert's gateway in the same transaction, so "help is
    /// coming" is never lost between the state change and the message.
    pub device_acks: Vec<DeviceAck>,
    /// Put in the outbox in the same transaction, so an offer is never
    /// committed without the message that tells its person.
    pub notifications: Vec<OutboxItem>,
}

/// A change another replica committed, as the shared store reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteChange {
    /// An alert was raised or changed.
    Alert(String),
    /// Downlinks were queued for a gateway (which may be connected here).
    Downlinks { gateway_id: String, ids: Vec<u64> },
    /// The directory changed (devices, credentials): rosters may differ.
    Directory,
    /// The feed was interrupted: anything may have changed meanwhile.
    Resync,
}

/// The change function of [`Storage::update_alert_dyn`].
pub type AlertChange<'a> = &'a (dyn Fn(&mut Alert) -> Result<Change, StoreError> + Sync);

pub trait Storage:
    Directory + AuditLog + WelfareStore + SignalStore + Send + Sync + 'static
{
    /// "sled" or "postgres", for logs and `/healthz`.
    fn backend(&self) -> &'static str;

    /// Commits events that cannot touch an incident (see
    /// [`crate::domain::incidents::affects_incidents`]: telemetry, heartbeats,
    /// battery and fault reports), skipping those already here, in one
    /// batch. Returns, per event, whether it was new. Durable after
    /// [`Storage::flush`].
    fn commit_plain_events(
        &self,
        gateway_id: &str,
        uplinks: &[UplinkEvent],
        received_ms: i64,
    ) -> Result<Vec<bool>, StoreError>;

    /// Commits an event and its incident decision unless it is already here.
    /// Durable after [`Storage::flush`].
    fn commit_event(
        &self,
        gateway_id: &str,
        uplink: &UplinkEvent,
        received_ms: i64,
        origin: &Origin,
        policy: &IncidentPolicy,
    ) -> Result<Committed, StoreError>;

    /// Makes everything committed so far durable (sled's fsync; a no-op
    /// where a commit is already durable).
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    fn event(&self, device_id: &str, seq: u64) -> Result<Option<StoredEvent>, StoreError>;
    /// A device's committed events in seq order.
    fn device_events(&self, device_id: &str) -> Result<Vec<StoredEvent>, StoreError>;
    fn event_count(&self) -> Result<u64, StoreError>;

    fn alert(&self, alert_id: &str) -> Result<Alert, StoreError>;
    /// Alerts in creation order, optionally only those in `states`.
    fn alerts(&self, states: &[anxin_proto::v1::AlertState]) -> Result<Vec<Alert>, StoreError>;
    /// A page of alerts, newest first ([`crate::domain::listing`]): states,
    /// community, time raised and the caller's scope; a page looks at no
    /// more than [`crate::domain::listing::SCAN_BUDGET`] alerts.
    fn alerts_page(
        &self,
        query: &crate::domain::listing::ListQuery,
    ) -> Result<crate::domain::listing::Page<Alert>, StoreError>;
    /// Writes an alert as given, for migrating history from another system
    /// (and seeding report tests). Indexes are kept as for any update.
    fn import_alert(&self, alert: &Alert) -> Result<(), StoreError>;
    /// [`Storage::import_alert`] for many, in one transaction where the
    /// engine can (history from an earlier system comes by the million).
    fn import_alerts(&self, alerts: &[Alert]) -> Result<(), StoreError> {
        alerts.iter().try_for_each(|alert| self.import_alert(alert))
    }
    /// Changes one alert; see [`dyn Storage::update_alert`].
    fn update_alert_dyn(
        &self,
        alert_id: &str,
        change: AlertChange<'_>,
    ) -> Result<(Alert, Vec<Downlink>), StoreError>;

    /// Offers whose deadline is at or before `now_ms`, earliest first, and
    /// the next deadline after those.
    fn due_offers(&self, now_ms: i64) -> Result<(Vec<String>, Option<i64>), StoreError>;
    /// Moves every pending offer deadline by `step_ms` (the wall clock
    /// stepped by that much), in the deadlines index and on the alerts, in
    /// one transaction. Returns how many deadlines moved.
    fn rebase_deadlines(&self, step_ms: i64) -> Result<usize, StoreError>;
    /// The clock reading saved by [`Storage::save_clock_mark`], if any.
    fn clock_mark(&self) -> Result<Option<anxin_host::clock::Mark>, StoreError>;
    fn save_clock_mark(&self, mark: &anxin_host::clock::Mark) -> Result<(), StoreError>;

    /// Downlinks a gateway has not yet confirmed, oldest first.
    fn pending_downlinks(&self, gateway_id: &str) -> Result<Vec<Downlink>, StoreError>;
    fn downlink_done(&self, gateway_id: &str, downlink_id: u64) -> Result<(), StoreError>;

    /// Puts notifications in the outbox (one already there is left as is).
    fn enqueue_notifications(&self, items: &[OutboxItem]) -> Result<(), StoreError>;
    /// Takes up to `max` notifications due at `now_ms` that no live
    /// deliverer holds, and holds them until `now_ms + lease_ms`.
    fn claim_notifications(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<OutboxItem>, StoreError>;
    /// Takes a notification out of the outbox with its outcome's audit
    /// entry, in one transaction; `false` (nothing written) when another
    /// deliverer already did.
    fn finish_notification(&self, delivery_id: &str, audit: AuditEntry)
    -> Result<bool, StoreError>;
    /// Writes back a notification to be tried again (attempts, next time;
    /// the lease let go).
    fn retry_notification(&self, item: &OutboxItem) -> Result<(), StoreError>;

    /// Removes up to `limit` events received before `before_ms` that
    /// belong to no alert, folding each into its device's [`EventDay`]
    /// first, exactly once. Returns how many were removed (sled: counted
    /// as summarised; a span goes whole once all of it is before
    /// `before_ms`, see [`Storage::retain_events_for`]).
    fn prune_events(
        &self,
        before_ms: i64,
        utc_offset_minutes: i32,
        limit: usize,
    ) -> Result<u64, StoreError>;
    /// How long events that belong to no alert are kept (`None`: for
    /// good), told once at start-up so an engine can lay them out to be
    /// removed cheaply (sled: spans of receipt time a tenth that long,
    /// each dropped whole, so such an event may stay up to a tenth longer).
    fn retain_events_for(&self, _keep_ms: Option<i64>) {}
    /// Removes up to `limit` event-day summaries of days before `before_day`.
    fn prune_event_days(&self, before_day: i32, limit: usize) -> Result<u64, StoreError>;
    /// Removes up to `limit` alerts closed before `before_ms` (never an
    /// open one) with the events that belong to them: (alerts, events).
    fn prune_alerts(&self, before_ms: i64, limit: usize) -> Result<(u64, u64), StoreError>;
    /// Removes up to `limit` of the oldest audit entries, in id order,
    /// stopping at the first written at or after `before_ms`, and moves the
    /// chain's [`AuditAnchor`] to the last one removed, in the same
    /// transaction.
    fn prune_audit(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError>;
    /// Where the audit chain starts, once retention has removed its
    /// beginning; `None` while it is whole.
    fn audit_anchor(&self) -> Result<Option<AuditAnchor>, StoreError>;
    /// A device's daily summaries, oldest first.
    /// Records devices' positions (the newest per device wins, whatever
    /// order batches arrive in). Durable after [`Storage::flush`].
    fn note_positions(&self, positions: &[Position]) -> Result<(), StoreError>;
    /// A device's last known position.
    fn last_position(&self, device_id: &str) -> Result<Option<Position>, StoreError>;

    fn event_days(&self, device_id: &str) -> Result<Vec<EventDay>, StoreError>;
    /// Records, outside the store, how far the store has made its writes
    /// durable, so that a store which later opens with less is refused
    /// rather than served (sled; see `sled/seal.rs`). A shared database
    /// keeps its own write-ahead log: nothing to do there.
    fn seal(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Reads every record: each must decode, the indexes the engine keeps
    /// itself must agree with them, the audit chain must hold. Slow: for
    /// `anxin-server store check`, not for a serving process.
    fn check(&self) -> CheckReport;

    /// A consistent copy of the store into `dir` (new or empty) while it
    /// serves; progress is told per kind of record. sled only: PostgreSQL's
    /// backups are `pg_dump`'s ([`backup::postgres_backup`]).
    fn backup(
        &self,
        dir: &std::path::Path,
        progress: &mut dyn FnMut(&str, u64),
    ) -> Result<backup::Manifest, StoreError> {
        let _ = (dir, progress);
        Err(StoreError::Refused(format!(
            "the {} store is backed up with pg_dump (anxin-server backup does it)",
            self.backend()
        )))
    }

    fn remote_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<RemoteChange>> {
        None
    }

    /// Whether the store can take writes now (readiness): a round trip to
    /// the database, nothing for an embedded engine.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether a commit returns within the engine's write bound (a
    /// database that answers reads while every commit hangs is deaf).
    fn probe_commit(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}

impl dyn Storage {
    /// Changes one alert. `change` edits it and says what else to write; an
    /// error from it aborts the whole update. Lifecycle rules are checked
    /// by the engine, so no caller can move an alert illegally. `change`
    /// may run more than once (a transaction retried on a conflict).
    pub fn update_alert(
        &self,
        alert_id: &str,
        change: impl Fn(&mut Alert) -> Result<Change, StoreError> + Sync,
    ) -> Result<(Alert, Vec<Downlink>), StoreError> {
        self.update_alert_dyn(alert_id, &change)
    }
}

/// The server's store, whichever engine holds it.
pub type Store = Arc<dyn Storage>;

pub(crate) fn alert_number(alert_id: &str) -> Option<u64> {
    alert_id.parse::<u64>().ok()
}

/// The incident an alert belongs to (see [`Origin::incident_key`]).
pub(crate) fn incident_key(alert: &Alert) -> String {
    Origin {
        resident_id: alert.resident_id.clone(),
        ..Default::default()
    }
    .incident_key(&alert.device_id)
}

/// The deadline the timer must watch for this alert, if any: the earliest
/// of an offer's deadline, the start of the staff chain of a new alert
/// waiting for the family (family first), and the family's next step.
pub(crate) fn offer_deadline(alert: &Alert) -> Option<i64> {
    use anxin_proto::v1::AlertState::{New, Offered};
    let staff = (matches!(alert.state(), Offered | New) && alert.offer_deadline_ms > 0)
        .then_some(alert.offer_deadline_ms);
    let family = alert
        .family
        .as_ref()
        .filter(|f| f.deadline_ms > 0 && crate::domain::lifecycle::is_open(alert.state()))
        .map(|f| f.deadline_ms);
    staff.into_iter().chain(family).min()
}

/// Moves an alert's pending deadlines by a wall-clock step (see
/// [`Storage::rebase_deadlines`]); a deadline not set stays unset.
pub(crate) fn rebase_alert(alert: &mut Alert, step_ms: i64) {
    let moved = |at: &mut i64| {
        if *at > 0 {
            *at = (*at + step_ms).max(1);
        }
    };
    moved(&mut alert.offer_deadline_ms);
    if let Some(family) = alert.family.as_mut() {
        moved(&mut family.deadline_ms);
        moved(&mut family.staff_at_ms);
    }
}

/// The chain hash of `entry` after an entry whose hash is `previous`
/// (empty for the first): SHA-256 over the previous hash's text and the
/// entry's encoding with its own `hash` empty.
pub fn chain_hash(previous: &str, entry: &AuditEntry) -> String {
    use sha2::{Digest, Sha256};
    let mut unhashed = entry.clone();
    unhashed.hash.clear();
    let mut digest = Sha256::new();
    digest.update(previous.as_bytes());
    digest.update(unhashed.encode_to_vec());
    hex::encode(digest.finalize())
}

/// The last audit entry retention removed: the first entry kept must
/// follow from its hash. Recorded with the removal, so the chain stays
/// checkable from where it now starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditAnchor {
    pub id: u64,
    /// Empty when that entry was written before the chain existed.
    pub hash: String,
}

impl AuditAnchor {
    pub fn encode(&self) -> Vec<u8> {
        format!("{}:{}", self.id, self.hash).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let damaged = || StoreError::Damaged("the audit chain's anchor does not parse".into());
        let text = std::str::from_utf8(bytes).map_err(|_| damaged())?;
        let (id, hash) = text.split_once(':').ok_or_else(damaged)?;
        Ok(Self {
            id: id.parse().map_err(|_| damaged())?,
            hash: hash.to_string(),
        })
    }
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainReport {
    /// Entries read.
    pub entries: u64,
    /// Entries written before the chain existed (no hash), all before the
    /// first chained one.
    pub unchained: u64,
    /// The last good hash: write it down somewhere else to notice a
    /// rewrite of the whole chain later.
    pub head: String,
    /// The first entry whose hash does not follow from the one before it,
    /// and why; `None`: the chain holds.
    pub broken_at: Option<u64>,
    pub problem: Option<String>,
    /// Entries up to this id were removed by retention (0: none); the
    /// chain was checked from the anchor they left.
    pub pruned_through: u64,
}

/// Walks entries in id order and checks every link, from `anchor` when
/// retention has removed the chain's beginning.
pub fn verify_chain(
    anchor: Option<&AuditAnchor>,
    entries: impl IntoIterator<Item = AuditEntry>,
) -> ChainReport {
    let anchor = anchor.cloned().unwrap_or_default();
    let mut report = ChainReport {
        entries: 0,
        unchained: 0,
        head: anchor.hash,
        broken_at: None,
        problem: None,
        pruned_through: anchor.id,
    };
    for entry in entries {
        report.entries += 1;
        if entry.id <= anchor.id {
            report.broken_at = Some(entry.id);
            report.problem = Some(format!(
                "the entry is still here, but retention removed every entry up to {}",
                anchor.id
            ));
            return report;
        }
        if entry.hash.is_empty() {
            if report.head.is_empty() {
                report.unchained += 1;
                continue;
            }
            report.broken_at = Some(entry.id);
            report.problem = Some("the entry carries no hash inside the chain".into());
            return report;
        }
        if chain_hash(&report.head, &entry) != entry.hash {
            report.broken_at = Some(entry.id);
            report.problem = Some(
                "its hash does not follow from the entry before it: this entry was changed, \
                 or one before it was removed or changed"
                    .into(),
            );
            return report;
        }
        report.head = entry.hash;
    }
    report
}

/// The newest position per device among `positions`.
pub(crate) fn latest_positions(positions: &[Position]) -> Vec<&Position> {
    let mut latest: std::collections::HashMap<&str, &Position> = Default::default();
    for p in positions {
        let slot = latest.entry(p.device_id.as_str()).or_insert(p);
        if p.at_ms > slot.at_ms {
            *slot = p;
        }
    }
    latest.into_values().collect()
}

/// The latest sign per resident among `signs` (a batch may carry several
/// of one resident; an engine writes each resident once).
pub(crate) fn latest_signs(
    signs: &[anxin_proto::v1::SignOfLife],
) -> Vec<anxin_proto::v1::SignOfLife> {
    let mut latest: std::collections::HashMap<&str, &anxin_proto::v1::SignOfLife> =
        Default::default();
    for sign in signs {
        let slot = latest.entry(sign.resident_id.as_str()).or_insert(sign);
        if sign.at_ms > slot.at_ms {
            *slot = sign;
        }
    }
    latest.into_values().cloned().collect()
}

pub(crate) fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(what.to_string(), e))
}

/// The audit entry of an event's incident decision, the same on every
/// engine.
pub(crate) fn decision_audit(
    event: &anxin_proto::DeviceEvent,
    alert: &Alert,
    decision: Decision,
    gateway_id: &str,
    received_ms: i64,
) -> AuditEntry {
    AuditEntry {
        at_ms: received_ms,
        actor: "system".into(),
        action: crate::domain::incidents::action_name(decision).into(),
        target: format!("alert/{}", alert.id),
        community_id: alert.community_id.clone(),
        detail: format!(
            "event {}#{} {} ({}) via {gateway_id}",
            event.device_id,
            event.seq,
            event.kind().as_str_name(),
            crate::domain::incidents::priority_name(alert.priority)
        ),
        ..Default::default()
    }
}
