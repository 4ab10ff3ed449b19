//! The server's durable state (sled): committed events, alerts, downlinks
//! waiting for their gateway, offer deadlines, the audit log and the
//! directory (see [`crate::store::directory`]).
//!
//! Keeps guarantee 2 (exactly-once effect): an event, the incident decision it
//! causes (raise, attach, cancel) and its audit entry are written in one
//! transaction keyed by `(device_id, seq)`, so a replayed or retransmitted
//! event finds its key and changes nothing. The uplink flushes before it acks
//! `received`, so a crash between commit and ack only causes a
//! retransmission, which this dedupe absorbs.
//!
//! Trees and the invariants the store keeps between them:
//! - `events`:    `device_id ‖ 0x00 ‖ seq (u64 BE)` → [`StoredEvent`]
//! - `alerts`:    `alert number (u64 BE)` → `Alert` (protobuf)
//! - `incidents`: incident key (`resident/{id}` or `device/{id}`) → the
//!   number of its latest open alert; removed when that alert closes.
//! - `deadlines`: `offer deadline ms (u64 BE) ‖ alert number` → (); exactly
//!   the alerts that are offered with a deadline, so escalation timers
//!   survive a restart.
//! - `open_alerts`: `alert number (u64 BE)` → (); exactly the alerts in an
//!   open state, so the queue is read without the history.
//! - `downlinks`: `gateway_id ‖ 0x00 ‖ downlink id (u64 BE)` → `Downlink`
//! - `audit`:     `entry id (u64 BE)` → `AuditEntry`, append-only.
//! - `signs`:     `resident_id` → the latest `SignOfLife`.
//! - `positions`: `device_id` → its last known `Position`.
//! - `checkin_days`: `local day (u32 BE) ‖ resident_id` → `CheckinDay`,
//!   written once.
//! - `visit_plans`: `plan id` → `VisitPlan`; `visits`: `local day (u32 BE) ‖
//!   plan id` → `Visit`, written once.
//! - `signal_states`: a rule's source (`vitals/{resident}/{sign}`, …) →
//!   its state between readings; `vital_days` and `vital_days_by_day`: a
//!   resident's vital signs per sign and local day (see `signals`).
//! - `events@{start}-{end}`: plain events by span of receipt time (see
//!   `partitions`), keyed like `events`; an event key is in one of these
//!   or in `events`, never two.
//! - `events_by_time`, `alert_events`, `event_days`, `event_days_by_day`:
//!   retention (see `retention`); every event in `events` is in exactly
//!   one of the first two, written in its commit.

mod audit;
mod backup;
mod check;
mod directory;
mod import;
mod listing;
mod open;
mod partitions;
mod retention;
mod seal;
mod signals;
mod storage;
pub(crate) mod trees;
mod welfare;

pub use backup::restore;
pub(crate) use trees::{
    CHAIN_ANCHOR, CHAIN_HEAD, Trees, abort, append_audit, audit_entries, deadline_key, get,
};
pub use trees::{DEFAULT_CACHE_BYTES, FORMAT, SledStore};
