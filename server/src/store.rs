//! The server's durable state (sled): committed events, alerts, downlinks
//! waiting for their gateway, offer deadlines, the audit log and the
//! directory (see [`crate::directory`]).
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
//! - `downlinks`: `gateway_id ‖ 0x00 ‖ downlink id (u64 BE)` → `Downlink`
//! - `audit`:     `entry id (u64 BE)` → `AuditEntry`, append-only.

use std::path::Path;

use anxin_proto::v1::{Alert, AlertState, AuditEntry, DeviceAck, Downlink, UplinkEvent};
use prost::Message;
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError, TransactionalTree},
};

use crate::{
    incidents::{self, Decision, IncidentPolicy, Origin},
    lifecycle::{self, IllegalTransition},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("record {0} does not decode: {1}")]
    Corrupt(String, prost::DecodeError),
    #[error("no alert {0}")]
    NoSuchAlert(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error("event has no body")]
    EmptyEvent,
    /// A change that no longer applies (the offer was acknowledged before its
    /// deadline fired, say); nothing was written.
    #[error("{0}")]
    Stale(String),
    /// A request that breaks a rule of the domain; nothing was written.
    #[error("{0}")]
    Refused(String),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(err: TransactionError<StoreError>) -> Self {
        match err {
            TransactionError::Abort(err) => err,
            TransactionError::Storage(err) => StoreError::Storage(err),
        }
    }
}

pub(crate) fn abort(err: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(err)
}

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
}

fn event_key(device_id: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(device_id.len() + 9);
    key.extend_from_slice(device_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn downlink_key(gateway_id: &str, id: u64) -> Vec<u8> {
    event_key(gateway_id, id)
}

fn alert_number(alert_id: &str) -> Option<u64> {
    alert_id.parse::<u64>().ok()
}

fn deadline_key(alert: &Alert) -> Option<[u8; 16]> {
    let number = alert_number(&alert.id)?;
    (alert.state() == AlertState::Offered && alert.offer_deadline_ms > 0).then(|| {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&(alert.offer_deadline_ms as u64).to_be_bytes());
        key[8..].copy_from_slice(&number.to_be_bytes());
        key
    })
}

fn incident_key(alert: &Alert) -> String {
    Origin {
        resident_id: alert.resident_id.clone(),
        community_id: String::new(),
    }
    .incident_key(&alert.device_id)
}

pub(crate) fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(what.to_string(), e))
}

/// Appends an audit entry inside a transaction.
pub(crate) fn append_audit(
    audit: &TransactionalTree,
    mut entry: AuditEntry,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    entry.id = audit.generate_id()? + 1;
    audit.insert(&entry.id.to_be_bytes(), entry.encode_to_vec())?;
    Ok(())
}

/// Keeps `deadlines` and `incidents` true to an alert that changed from
/// `before` to `after`.
fn reindex(
    before: Option<&Alert>,
    after: &Alert,
    deadlines: &TransactionalTree,
    incidents: &TransactionalTree,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let old = before.and_then(deadline_key);
    let new = deadline_key(after);
    if old != new {
        if let Some(key) = old {
            deadlines.remove(&key)?;
        }
        if let Some(key) = new {
            deadlines.insert(&key, &[])?;
        }
    }
    if !lifecycle::is_open(after.state()) {
        let key = incident_key(after);
        let number = alert_number(&after.id).unwrap_or(0).to_be_bytes();
        if incidents.get(key.as_bytes())?.is_some_and(|v| *v == number) {
            incidents.remove(key.as_bytes())?;
        }
    }
    Ok(())
}

#[derive(Clone)]
pub struct Store {
    pub(crate) db: sled::Db,
    events: sled::Tree,
    alerts: sled::Tree,
    incidents: sled::Tree,
    deadlines: sled::Tree,
    downlinks: sled::Tree,
    pub(crate) audit: sled::Tree,
    pub(crate) directory: crate::directory::Trees,
    /// `clock` → the last [`anxin_host::clock::Mark`], for clock steps
    /// across a restart.
    meta: sled::Tree,
    /// Serialises [`Store::commit_plain_events`] so two gateways relaying
    /// the same event cannot both find it absent.
    plain_commits: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).open()?;
        Ok(Self {
            events: db.open_tree("events")?,
            alerts: db.open_tree("alerts")?,
            incidents: db.open_tree("incidents")?,
            deadlines: db.open_tree("deadlines")?,
            downlinks: db.open_tree("downlinks")?,
            audit: db.open_tree("audit")?,
            directory: crate::directory::Trees::open(&db)?,
            meta: db.open_tree("meta")?,
            plain_commits: Default::default(),
            db,
        })
    }

    /// Commits events that cannot touch an incident (see
    /// [`incidents::affects_incidents`]: telemetry, heartbeats, battery and
    /// fault reports), skipping those already here, in one sled batch. A
    /// transaction per event took sled's exclusive lock each time and made
    /// the server the bottleneck of the whole path (BENCHMARKS.md). Returns,
    /// per event, whether it was new. Durable after [`Store::flush`].
    pub fn commit_plain_events(
        &self,
        gateway_id: &str,
        uplinks: &[UplinkEvent],
        received_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let _one_at_a_time = self.plain_commits.lock().expect("commit lock poisoned");
        let mut batch = sled::Batch::default();
        let mut seen = std::collections::HashSet::with_capacity(uplinks.len());
        let mut new = Vec::with_capacity(uplinks.len());
        for uplink in uplinks {
            let event = uplink.event.as_ref().ok_or(StoreError::EmptyEvent)?;
            debug_assert!(!incidents::affects_incidents(event));
            let key = event_key(&event.device_id, event.seq);
            if !seen.insert(key.clone()) || self.events.contains_key(&key)? {
                new.push(false);
                continue;
            }
            let stored = StoredEvent {
                gateway_id: gateway_id.to_string(),
                received_ms,
                uplink: Some(uplink.clone()),
                alert_id: String::new(),
                commit_index: self.db.generate_id()?,
            };
            batch.insert(key.as_slice(), stored.encode_to_vec());
            new.push(true);
        }
        self.events.apply_batch(batch)?;
        Ok(new)
    }

    /// Commits an event and its incident decision unless it is already here.
    /// Durable after [`Store::flush`].
    pub fn commit_event(
        &self,
        gateway_id: &str,
        uplink: &UplinkEvent,
        received_ms: i64,
        origin: &Origin,
        policy: &IncidentPolicy,
    ) -> Result<Committed, StoreError> {
        let event = uplink.event.as_ref().ok_or(StoreError::EmptyEvent)?;
        let key = event_key(&event.device_id, event.seq);
        let incident = origin.incident_key(&event.device_id);
        let trees = (
            &self.events,
            &self.alerts,
            &self.incidents,
            &self.deadlines,
            &self.audit,
        );
        let committed = trees.transaction(|(events, alerts, incidents, deadlines, audit)| {
            if events.get(&key)?.is_some() {
                return Ok(Committed::Duplicate);
            }
            let open: Option<Alert> = match incidents.get(incident.as_bytes())? {
                Some(number) => match alerts.get(&number)? {
                    Some(bytes) => Some(decode("alert", &bytes).map_err(abort)?),
                    None => None,
                },
                None => None,
            };
            let decision = incidents::decide(event, open.as_ref(), received_ms, policy);
            let alert = match (decision, open) {
                (Decision::Nothing, _) => None,
                (Decision::Raise, _) => {
                    let number = events.generate_id()? + 1;
                    let alert = incidents::raise(number, event, gateway_id, origin, received_ms);
                    alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                    incidents.insert(incident.as_bytes(), &number.to_be_bytes())?;
                    Some(alert)
                }
                (decision, Some(before)) => {
                    let mut alert = before.clone();
                    incidents::apply(decision, &mut alert, event, received_ms);
                    let number = alert_number(&alert.id).unwrap_or(0);
                    alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                    reindex(Some(&before), &alert, deadlines, incidents)?;
                    Some(alert)
                }
                (_, None) => None,
            };
            if let Some(alert) = &alert {
                append_audit(
                    audit,
                    AuditEntry {
                        at_ms: received_ms,
                        actor: "system".into(),
                        action: incidents::action_name(decision).into(),
                        target: format!("alert/{}", alert.id),
                        community_id: alert.community_id.clone(),
                        detail: format!(
                            "event {}#{} {} ({}) via {gateway_id}",
                            event.device_id,
                            event.seq,
                            event.kind().as_str_name(),
                            incidents::priority_name(alert.priority)
                        ),
                        ..Default::default()
                    },
                )?;
            }
            let stored = StoredEvent {
                gateway_id: gateway_id.to_string(),
                received_ms,
                uplink: Some(uplink.clone()),
                alert_id: alert.as_ref().map(|a| a.id.clone()).unwrap_or_default(),
                commit_index: events.generate_id()?,
            };
            events.insert(key.as_slice(), stored.encode_to_vec())?;
            Ok(Committed::New {
                alert: alert.map(|a| Box::new((a, decision))),
            })
        })?;
        Ok(committed)
    }

    /// Blocking flush, for tools that run without a runtime.
    pub fn db_flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// fsyncs on tokio's blocking pool (sled's `flush_async` starts and
    /// retires a thread of its own per flush under load).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .expect("store flush task panicked")?;
        Ok(())
    }

    pub fn event(&self, device_id: &str, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        self.events
            .get(event_key(device_id, seq))?
            .map(|bytes| decode("event", &bytes))
            .transpose()
    }

    /// A device's committed events in seq order.
    pub fn device_events(&self, device_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let mut prefix = device_id.as_bytes().to_vec();
        prefix.push(0);
        self.events
            .scan_prefix(prefix)
            .values()
            .map(|bytes| decode("event", &bytes?))
            .collect()
    }

    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    pub fn alert(&self, alert_id: &str) -> Result<Alert, StoreError> {
        let number =
            alert_number(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        let bytes = self
            .alerts
            .get(number.to_be_bytes())?
            .ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        decode("alert", &bytes)
    }

    /// Alerts in creation order, optionally only those in `states`.
    pub fn alerts(&self, states: &[AlertState]) -> Result<Vec<Alert>, StoreError> {
        let mut out = Vec::new();
        for item in self.alerts.iter() {
            let (_, bytes) = item?;
            let alert: Alert = decode("alert", &bytes)?;
            if states.is_empty() || states.contains(&alert.state()) {
                out.push(alert);
            }
        }
        Ok(out)
    }

    /// Writes an alert as given, for migrating history from another system
    /// (and seeding report tests). Indexes are kept as for any update.
    pub fn import_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        let number = alert_number(&alert.id).ok_or_else(|| {
            StoreError::Refused(format!("alert id `{}` is not a number", alert.id))
        })?;
        (&self.alerts, &self.deadlines, &self.incidents).transaction(
            |(alerts, deadlines, incidents)| {
                alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                reindex(None, alert, deadlines, incidents)
            },
        )?;
        Ok(())
    }

    /// Changes one alert. `change` edits it and says what else to write; an
    /// error from it aborts the whole update. Lifecycle rules are checked
    /// here, so no caller can move an alert illegally.
    pub fn update_alert(
        &self,
        alert_id: &str,
        change: impl Fn(&mut Alert) -> Result<Change, StoreError>,
    ) -> Result<(Alert, Vec<Downlink>), StoreError> {
        let number =
            alert_number(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        let trees = (
            &self.alerts,
            &self.downlinks,
            &self.deadlines,
            &self.incidents,
            &self.audit,
        );
        let result = trees.transaction(|(alerts, downlinks, deadlines, incidents, audit)| {
            let bytes = alerts
                .get(number.to_be_bytes())?
                .ok_or_else(|| abort(StoreError::NoSuchAlert(alert_id.into())))?;
            let before: Alert = decode("alert", &bytes).map_err(abort)?;
            let mut alert = before.clone();
            let Change {
                audit: entries,
                device_acks,
            } = change(&mut alert).map_err(abort)?;
            if alert.state != before.state {
                lifecycle::check(before.state(), alert.state()).map_err(|e| abort(e.into()))?;
            }
            alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
            reindex(Some(&before), &alert, deadlines, incidents)?;
            for entry in entries {
                append_audit(audit, entry)?;
            }
            let mut queued = Vec::new();
            for ack in &device_acks {
                let id = downlinks.generate_id()? + 1;
                let message = Downlink {
                    downlink_id: id,
                    ack: Some(ack.clone()),
                };
                downlinks.insert(downlink_key(&alert.gateway_id, id), message.encode_to_vec())?;
                queued.push(message);
            }
            Ok((alert, queued))
        })?;
        Ok(result)
    }

    /// Offers whose deadline is at or before `now_ms`, earliest first, and
    /// the next deadline after those.
    pub fn due_offers(&self, now_ms: i64) -> Result<(Vec<String>, Option<i64>), StoreError> {
        let mut due = Vec::new();
        for item in self.deadlines.iter() {
            let (key, _) = item?;
            let at = u64::from_be_bytes(key[..8].try_into().expect("16-byte key")) as i64;
            if at > now_ms {
                return Ok((due, Some(at)));
            }
            let number = u64::from_be_bytes(key[8..16].try_into().expect("16-byte key"));
            due.push(number.to_string());
        }
        Ok((due, None))
    }

    /// Moves every pending offer deadline by `step_ms` (the wall clock
    /// stepped by that much), in the `deadlines` index and on the alerts,
    /// in one transaction: an offer's answer window is elapsed time, not a
    /// wall-clock instant. Returns how many deadlines moved.
    pub fn rebase_deadlines(&self, step_ms: i64) -> Result<usize, StoreError> {
        let numbers: Vec<u64> = self
            .deadlines
            .iter()
            .keys()
            .map(|key| key.map(|k| u64::from_be_bytes(k[8..16].try_into().expect("16-byte key"))))
            .collect::<Result<_, _>>()?;
        let moved = (&self.alerts, &self.deadlines).transaction(|(alerts, deadlines)| {
            let mut moved = 0;
            for number in &numbers {
                let Some(bytes) = alerts.get(number.to_be_bytes())? else {
                    continue;
                };
                let mut alert: Alert = decode("alert", &bytes).map_err(abort)?;
                let Some(old) = deadline_key(&alert) else {
                    continue;
                };
                deadlines.remove(&old)?;
                alert.offer_deadline_ms = (alert.offer_deadline_ms + step_ms).max(1);
                if let Some(new) = deadline_key(&alert) {
                    deadlines.insert(&new, &[])?;
                }
                alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                moved += 1;
            }
            Ok(moved)
        })?;
        Ok(moved)
    }

    /// The clock reading saved by [`Store::save_clock_mark`], if any.
    pub fn clock_mark(&self) -> Result<Option<anxin_host::clock::Mark>, StoreError> {
        Ok(self
            .meta
            .get("clock")?
            .and_then(|bytes| anxin_host::clock::Mark::decode(&bytes)))
    }

    pub fn save_clock_mark(&self, mark: &anxin_host::clock::Mark) -> Result<(), StoreError> {
        self.meta.insert("clock", mark.encode())?;
        Ok(())
    }

    /// Downlinks a gateway has not yet confirmed, oldest first.
    pub fn pending_downlinks(&self, gateway_id: &str) -> Result<Vec<Downlink>, StoreError> {
        let mut prefix = gateway_id.as_bytes().to_vec();
        prefix.push(0);
        self.downlinks
            .scan_prefix(prefix)
            .values()
            .map(|bytes| decode("downlink", &bytes?))
            .collect()
    }

    pub fn downlink_done(&self, gateway_id: &str, downlink_id: u64) -> Result<(), StoreError> {
        self.downlinks
            .remove(downlink_key(gateway_id, downlink_id))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anxin_proto::{DeviceEvent, EventKind};

    const POLICY: IncidentPolicy = IncidentPolicy {
        window_ms: 600_000,
        cancel_grace_ms: 60_000,
    };

    fn uplink(device: &str, seq: u64, kind: EventKind) -> UplinkEvent {
        UplinkEvent {
            event: Some(DeviceEvent {
                device_id: device.into(),
                seq,
                kind: kind as i32,
                ..Default::default()
            }),
            stored_ms: 1,
        }
    }

    fn changed(committed: Committed) -> (Alert, Decision) {
        match committed {
            Committed::New {
                alert: Some(changed),
            } => *changed,
            other => panic!("no alert changed: {other:?}"),
        }
    }

    fn commit(store: &Store, device: &str, seq: u64, kind: EventKind, at: i64) -> Committed {
        let origin = Origin {
            resident_id: "r-1".into(),
            community_id: "c-1".into(),
        };
        store
            .commit_event("gw", &uplink(device, seq, kind), at, &origin, &POLICY)
            .unwrap()
    }

    #[tokio::test]
    async fn an_event_commits_once_and_an_incident_is_one_alert() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (alert, Decision::Raise) = changed(commit(&store, "btn", 1, EventKind::Sos, 10)) else {
            panic!()
        };
        assert!(matches!(
            commit(&store, "btn", 1, EventKind::Sos, 11),
            Committed::Duplicate
        ));
        assert!(matches!(
            commit(&store, "btn", 2, EventKind::Heartbeat, 12),
            Committed::New { alert: None }
        ));
        // Another device of the same resident: the same incident.
        let (joined, Decision::Attach { .. }) =
            changed(commit(&store, "wear", 1, EventKind::Fall, 13))
        else {
            panic!()
        };
        assert_eq!(joined.id, alert.id);
        store.flush().await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let alerts = store.alerts(&[]).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].events.len(), 2);
        assert_eq!(store.event("wear", 1).unwrap().unwrap().alert_id, alert.id);
        assert_eq!(store.event_count(), 3);
    }

    /// A fall's alert, offered with a deadline.
    fn offered_fall(store: &Store, deadline_ms: i64) -> Alert {
        let (alert, _) = changed(commit(store, "btn", 1, EventKind::Fall, 10));
        store
            .update_alert(&alert.id, |a| {
                a.set_state(AlertState::Offered);
                a.offer_deadline_ms = deadline_ms;
                Ok(Change::default())
            })
            .unwrap();
        alert
    }

    #[test]
    fn a_clock_step_moves_every_pending_deadline_and_its_alert_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alert = offered_fall(&store, 10_000);
        // The wall clock went back an hour: the deadline moves back with it.
        assert_eq!(store.rebase_deadlines(-3_600_000).unwrap(), 1);
        assert_eq!(store.alert(&alert.id).unwrap().offer_deadline_ms, 1);
        assert_eq!(store.due_offers(1).unwrap(), (vec![alert.id.clone()], None));
        // Forward: later, and the index and the alert agree, so the next
        // change of the alert still removes its index entry.
        assert_eq!(store.rebase_deadlines(60_000).unwrap(), 1);
        assert_eq!(store.alert(&alert.id).unwrap().offer_deadline_ms, 60_001);
        assert_eq!(store.due_offers(60_000).unwrap(), (vec![], Some(60_001)));
        store
            .update_alert(&alert.id, |a| {
                a.set_state(AlertState::Acknowledged);
                a.offer_deadline_ms = 0;
                Ok(Change::default())
            })
            .unwrap();
        assert_eq!(store.due_offers(i64::MAX).unwrap(), (vec![], None));
        assert_eq!(store.rebase_deadlines(5_000).unwrap(), 0);
        let mark = anxin_host::clock::Mark::now(123);
        store.save_clock_mark(&mark).unwrap();
        assert_eq!(store.clock_mark().unwrap(), Some(mark));
    }

    #[test]
    fn updates_queue_downlinks_keep_deadlines_indexed_and_refuse_illegal_moves() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alert = offered_fall(&store, 500);
        assert_eq!(store.due_offers(499).unwrap(), (vec![], Some(500)));
        assert_eq!(
            store.due_offers(500).unwrap(),
            (vec![alert.id.clone()], None)
        );

        let (acked, mut downlinks) = store
            .update_alert(&alert.id, |a| {
                a.set_state(AlertState::Acknowledged);
                a.offer_deadline_ms = 0;
                Ok(Change {
                    device_acks: vec![DeviceAck {
                        alert_id: a.id.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            })
            .unwrap();
        let downlink = downlinks.pop();
        assert_eq!(acked.state(), AlertState::Acknowledged);
        assert_eq!(store.due_offers(i64::MAX).unwrap(), (vec![], None));
        assert_eq!(
            store.pending_downlinks("gw").unwrap(),
            vec![downlink.clone().unwrap()]
        );
        store
            .downlink_done("gw", downlink.unwrap().downlink_id)
            .unwrap();
        assert!(store.pending_downlinks("gw").unwrap().is_empty());

        let err = store
            .update_alert(&alert.id, |a| {
                a.set_state(AlertState::New);
                Ok(Change::default())
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Illegal(_)), "{err}");
        assert_eq!(
            store.alert(&alert.id).unwrap().state(),
            AlertState::Acknowledged
        );
        assert!(matches!(
            store.update_alert("999", |_| Ok(Change::default())),
            Err(StoreError::NoSuchAlert(_))
        ));
    }

    #[test]
    fn a_closed_incident_lets_the_next_alarm_open_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (first, _) = changed(commit(&store, "btn", 1, EventKind::Sos, 10));
        let (cancelled, Decision::Cancel) =
            changed(commit(&store, "btn", 2, EventKind::Cancel, 20))
        else {
            panic!()
        };
        assert_eq!(cancelled.id, first.id);
        assert_eq!(cancelled.state(), AlertState::Cancelled);
        let (second, Decision::Raise) = changed(commit(&store, "btn", 3, EventKind::Sos, 30))
        else {
            panic!()
        };
        assert_ne!(second.id, first.id);
    }
}
