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
//! - `checkin_days`: `local day (u32 BE) ‖ resident_id` → `CheckinDay`,
//!   written once.
//! - `visit_plans`: `plan id` → `VisitPlan`; `visits`: `local day (u32 BE) ‖
//!   plan id` → `Visit`, written once.
//! - `events@{start}-{end}`: plain events by span of receipt time (see
//!   `partitions`), keyed like `events`; an event key is in one of these
//!   or in `events`, never two.
//! - `events_by_time`, `alert_events`, `event_days`, `event_days_by_day`:
//!   retention (see `retention`); every event in `events` is in exactly
//!   one of the first two, written in its commit.

use std::path::Path;

use anxin_proto::v1::{
    Alert, AlertState, AuditEntry, AuditQuery, CheckinDay, DeviceRecord, Downlink, GatewayRecord,
    Place, Resident, SignOfLife, Staff, UplinkEvent, Visit, VisitPlan,
};
use prost::Message;
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError, TransactionalTree},
};

use super::{
    AlertChange, Change, Committed, OutboxItem, Storage, StoreError, StoredEvent, alert_number,
    decision_audit, decode, incident_key, latest_signs, offer_deadline,
};
mod backup;
mod check;
mod import;
mod listing;
mod partitions;
mod retention;
mod seal;

pub use backup::restore;

use crate::{
    domain::incidents::{self, Decision, IncidentPolicy, Origin},
    domain::lifecycle,
    domain::listing::{ListQuery, Page},
    store::audit::AuditLog,
    store::directory::{Directory, DirectoryBatch, TokenRecord},
    store::welfare::WelfareStore,
};

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

fn deadline_key(alert: &Alert) -> Option<[u8; 16]> {
    let number = alert_number(&alert.id)?;
    offer_deadline(alert).map(|deadline| {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&(deadline as u64).to_be_bytes());
        key[8..].copy_from_slice(&number.to_be_bytes());
        key
    })
}

/// Appends an audit entry inside a transaction.
pub(crate) fn append_audit(
    audit: &TransactionalTree,
    mut entry: AuditEntry,
) -> Result<AuditEntry, ConflictableTransactionError<StoreError>> {
    // The head is read and written in the entry's transaction, so two
    // writers conflict and one runs again with a fresh id: the chain
    // follows id order.
    let previous = audit
        .get(CHAIN_HEAD)?
        .map(|h| String::from_utf8_lossy(&h).into_owned())
        .unwrap_or_default();
    entry.id = audit.generate_id()? + 1;
    entry.hash = super::chain_hash(&previous, &entry);
    audit.insert(&entry.id.to_be_bytes(), entry.encode_to_vec())?;
    audit.insert(CHAIN_HEAD, entry.hash.as_bytes())?;
    Ok(entry)
}

/// The audit tree's one key that is not an entry: the last entry's hash.
/// Entry keys are 8 bytes, so it can never be mistaken for one.
pub(super) const CHAIN_HEAD: &[u8] = b"chain-head";
/// The audit tree's other key that is not an entry: the
/// [`super::AuditAnchor`] retention left, once it removed entries.
pub(super) const CHAIN_ANCHOR: &[u8] = b"chain-anchor";

/// The audit tree's entries, in id order (the chain head left out).
pub(super) fn audit_entries(
    audit: &sled::Tree,
) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
    audit.iter().filter_map(|item| match item {
        Ok((key, _)) if key.len() != 8 => None,
        Ok((_, bytes)) => Some(decode("audit entry", &bytes)),
        Err(err) => Some(Err(err.into())),
    })
}

/// Keeps `deadlines`, `incidents` and `open_alerts` true to an alert that
/// changed from `before` to `after` (or was just raised).
fn reindex(
    before: Option<&Alert>,
    after: &Alert,
    deadlines: &TransactionalTree,
    incidents: &TransactionalTree,
    open: &TransactionalTree,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let number = alert_number(&after.id).unwrap_or(0).to_be_bytes();
    if lifecycle::is_open(after.state()) {
        open.insert(&number, &[])?;
    } else {
        open.remove(&number)?;
    }
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
pub struct SledStore {
    pub(crate) db: sled::Db,
    pub(super) events: sled::Tree,
    pub(super) alerts: sled::Tree,
    pub(super) incidents: sled::Tree,
    deadlines: sled::Tree,
    /// `alert number (u64 BE)` → (): exactly the open alerts (the queue
    /// never reads the whole history).
    open_alerts: sled::Tree,
    pub(super) downlinks: sled::Tree,
    pub(crate) audit: sled::Tree,
    pub(super) directory: Trees,
    /// `clock` → the last [`anxin_host::clock::Mark`], for clock steps
    /// across a restart.
    meta: sled::Tree,
    /// Chunks of an import being written (see `import`).
    import_staging: sled::Tree,
    /// `delivery id` → [`OutboxItem`]: notifications not yet delivered.
    pub(super) outbox: sled::Tree,
    pub(super) signs: sled::Tree,
    pub(super) checkin_days: sled::Tree,
    pub(super) visit_plans: sled::Tree,
    pub(super) visits: sled::Tree,
    events_by_time: sled::Tree,
    alert_events: sled::Tree,
    pub(super) event_days: sled::Tree,
    event_days_by_day: sled::Tree,
    /// Plain events by span of receipt time.
    partitions: std::sync::Arc<partitions::Partitions>,
    /// The store's directory (its seal file lives there).
    path: std::path::PathBuf,
    /// Serialises [`Storage::commit_plain_events`] so two gateways relaying
    /// the same event cannot both find it absent.
    plain_commits: std::sync::Arc<std::sync::Mutex<()>>,
}

/// The store's format, recorded in `meta` (`format`, u32 BE) so that a
/// build older than the store refuses it instead of serving it without
/// what it does not know of (an older build does not read spans, say).
/// 1: no mark (stores from before it); 2: plain events in spans, the audit
/// chain's anchor.
pub const FORMAT: u32 = 2;
const FORMAT_KEY: &str = "format";

std::thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic without printing it. The panic hook is
/// process-wide: swapping it around each call let two threads opening
/// stores at once leave it silent for good (a test's failure then printed
/// nothing), so one hook is installed once and stays quiet only for the
/// thread inside this call.
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::thread::Result<T> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|quiet| quiet.set(true));
    let result = std::panic::catch_unwind(f);
    QUIET.with(|quiet| quiet.set(false));
    result
}

/// sled's page cache unless `store.cache_bytes` says otherwise.
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

impl SledStore {
    /// Writes directory records with their indexes in one transaction, with
    /// the audit entry of the change, or as the staged import chunk at
    /// `staged` (removed in the same transaction).
    pub(super) fn write_batch(
        &self,
        batch: &DirectoryBatch,
        audit: Option<&AuditEntry>,
        staged: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let d = &self.directory;
        let trees = (
            &d.residents,
            &d.devices,
            &d.staff,
            &self.audit,
            &d.residents_by_community,
            &d.resident_terms,
            &d.devices_by_gateway,
            &d.devices_by_resident,
            &d.staff_by_community,
            &d.residents_enrolled,
            &self.import_staging,
        );
        trees.transaction(
            |(
                residents,
                devices,
                staff,
                log,
                by_community,
                terms,
                by_gateway,
                by_resident,
                staff_by,
                enrolled,
                staging,
            )| {
                let index = listing::IndexTx {
                    residents_by_community: by_community,
                    resident_terms: terms,
                    devices_by_gateway: by_gateway,
                    devices_by_resident: by_resident,
                    staff_by_community: staff_by,
                    residents_enrolled: enrolled,
                };
                for r in &batch.residents {
                    let old = residents.insert(r.id.as_bytes(), r.encode_to_vec())?;
                    let old: Option<Resident> = old.and_then(|b| Resident::decode(&*b).ok());
                    index.resident(old.as_ref(), r)?;
                }
                for dev in &batch.devices {
                    let old = devices.insert(dev.id.as_bytes(), dev.encode_to_vec())?;
                    let old: Option<DeviceRecord> =
                        old.and_then(|b| DeviceRecord::decode(&*b).ok());
                    index.device(old.as_ref(), dev)?;
                }
                for s in &batch.staff {
                    let old = staff.insert(s.id.as_bytes(), s.encode_to_vec())?;
                    let old: Option<Staff> = old.and_then(|b| Staff::decode(&*b).ok());
                    index.staff(old.as_ref(), s)?;
                }
                if let Some(key) = staged {
                    staging.remove(key)?;
                }
                match audit {
                    Some(audit) => append_audit(log, audit.clone()).map(|_| ()),
                    None => Ok(()),
                }
            },
        )?;
        Ok(())
    }

    /// `events` and every span of plain events: for a store no server runs
    /// on (spans are dropped only by a running server's retention).
    pub(crate) fn event_trees(&self) -> Vec<sled::Tree> {
        let mut trees = vec![self.events.clone()];
        self.partitions
            .with_spans(|spans| trees.extend(spans.iter().map(|s| s.tree.clone())));
        trees
    }

    /// Builds `open_alerts` for a store written before it existed.
    fn ensure_open_index(&self) -> Result<(), StoreError> {
        const KEY: &str = "open_alerts_index";
        if self.meta.get(KEY)?.is_some() {
            return Ok(());
        }
        self.open_alerts.clear()?;
        for item in self.alerts.iter() {
            let (key, bytes) = item?;
            let alert: Alert = decode("alert", &bytes)?;
            if lifecycle::is_open(alert.state()) {
                self.open_alerts.insert(key, &[])?;
            }
        }
        self.meta.insert(KEY, b"1")?;
        Ok(())
    }

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens the store; damage sled trips over while reading it (a panic in
    /// its recovery, a corruption error) is [`StoreError::Damaged`], never
    /// a crash of the process.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        // sled reports some damage by panicking; its default message on
        // stderr would read like a bug of ours, so it is held back here.
        let opened = quietly(|| Self::open_unguarded(path, cache_bytes));
        match opened {
            Ok(Err(StoreError::Storage(sled::Error::Corruption { at, .. }))) => Err(
                StoreError::Damaged(format!("sled found a damaged record at {at:?}")),
            ),
            // A damaged `conf` reads as a format sled does not support;
            // I/O errors (a lock held by another process, permissions) are
            // not damage and keep their own message.
            Ok(Err(StoreError::Storage(
                err @ (sled::Error::Unsupported(_)
                | sled::Error::ReportableBug(_)
                | sled::Error::CollectionNotFound(_)),
            ))) => Err(StoreError::Damaged(format!("sled cannot read it: {err}"))),
            Ok(Err(StoreError::Corrupt(what, err))) => Err(StoreError::Damaged(format!(
                "a {what} does not decode: {err}"
            ))),
            Ok(result) => result,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no reason given");
                Err(StoreError::Damaged(format!(
                    "sled stopped reading it: {why}"
                )))
            }
        }
    }

    fn open_unguarded(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()?;
        let meta = db.open_tree("meta")?;
        let format = match meta.get(FORMAT_KEY)? {
            Some(bytes) => u32::from_be_bytes(bytes.as_ref().try_into().map_err(|_| {
                StoreError::Damaged("the store's format mark is not 4 bytes".into())
            })?),
            None => 1,
        };
        if format > FORMAT {
            return Err(StoreError::Refused(format!(
                "the store at {} is of format {format}, written by a newer anxin-server; this \
                 build reads formats up to {FORMAT}. Run the newer build, or restore a backup \
                 made with this one into a fresh store (docs/operations.md, \"Upgrades\")",
                path.display()
            )));
        }
        let store = Self {
            partitions: std::sync::Arc::new(partitions::Partitions::open(&db, &meta)?),
            events: db.open_tree("events")?,
            alerts: db.open_tree("alerts")?,
            incidents: db.open_tree("incidents")?,
            deadlines: db.open_tree("deadlines")?,
            open_alerts: db.open_tree("open_alerts")?,
            downlinks: db.open_tree("downlinks")?,
            audit: db.open_tree("audit")?,
            directory: Trees::open(&db)?,
            meta,
            import_staging: db.open_tree("import_staging")?,
            outbox: db.open_tree("outbox")?,
            signs: db.open_tree("signs")?,
            checkin_days: db.open_tree("checkin_days")?,
            visit_plans: db.open_tree("visit_plans")?,
            visits: db.open_tree("visits")?,
            events_by_time: db.open_tree("events_by_time")?,
            alert_events: db.open_tree("alert_events")?,
            event_days: db.open_tree("event_days")?,
            event_days_by_day: db.open_tree("event_days_by_day")?,
            plain_commits: Default::default(),
            path: path.to_path_buf(),
            db,
        };
        seal::verify(&store)?;
        store.release_outbox_leases()?;
        listing::ensure_indexes(&store.directory, &store.meta)?;
        store.ensure_open_index()?;
        retention::ensure_indexes(&store)?;
        import::finish_staged(&store)?;
        if format < FORMAT {
            store.meta.insert(FORMAT_KEY, &FORMAT.to_be_bytes())?;
        }
        Ok(store)
    }

    /// One process uses a sled store: what it held when it stopped is
    /// nobody's now, so it is tried again at once rather than at the end
    /// of its lease.
    fn release_outbox_leases(&self) -> Result<(), StoreError> {
        for item in self.outbox.iter() {
            let (key, bytes) = item?;
            let mut item: OutboxItem = decode("outbox item", &bytes)?;
            if item.lease_until_ms != 0 {
                item.lease_until_ms = 0;
                self.outbox.insert(key, item.encode_to_vec())?;
            }
        }
        Ok(())
    }

    /// Blocking flush, for tools that run without a runtime.
    pub fn db_flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

impl Storage for SledStore {
    fn backend(&self) -> &'static str {
        "sled"
    }

    /// Commits events that cannot touch an incident (see
    /// [`incidents::affects_incidents`]: telemetry, heartbeats, battery and
    /// fault reports), skipping those already here, in one sled batch into
    /// the span of `received_ms` (see `partitions`). A transaction per
    /// event took sled's exclusive lock each time and made the server the
    /// bottleneck of the whole path (BENCHMARKS.md). Returns, per event,
    /// whether it was new. Durable after [`Store::flush`].
    fn commit_plain_events(
        &self,
        gateway_id: &str,
        uplinks: &[UplinkEvent],
        received_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let _one_at_a_time = self.plain_commits.lock().expect("commit lock poisoned");
        self.partitions
            .with_target(&self.db, received_ms, |span, spans| {
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
                    if spans.iter().try_fold(false, |found, tree| {
                        Ok::<_, sled::Error>(found || tree.contains_key(&key)?)
                    })? {
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
                span.apply_batch(batch)?;
                Ok(new)
            })
    }

    fn retain_events_for(&self, keep_ms: Option<i64>) {
        self.partitions.set_keep(keep_ms);
    }

    /// Commits an event and its incident decision unless it is already here.
    /// Durable after [`Store::flush`].
    fn commit_event(
        &self,
        gateway_id: &str,
        uplink: &UplinkEvent,
        received_ms: i64,
        origin: &Origin,
        policy: &IncidentPolicy,
    ) -> Result<Committed, StoreError> {
        let event = uplink.event.as_ref().ok_or(StoreError::EmptyEvent)?;
        let key = event_key(&event.device_id, event.seq);
        // Only plain commits write spans, and an event's kind decides which
        // commit it takes: this finds the key only if a device reused a seq.
        if self.partitions.contains(&key)? {
            return Ok(Committed::Duplicate);
        }
        let incident = origin.incident_key(&event.device_id);
        let trees = (
            &self.events,
            &self.alerts,
            &self.incidents,
            &self.deadlines,
            &self.audit,
            &self.open_alerts,
            &self.events_by_time,
            &self.alert_events,
        );
        let committed = trees.transaction(
            |(events, alerts, incidents, deadlines, audit, open_index, by_time, alert_events)| {
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
                        let alert =
                            incidents::raise(number, event, gateway_id, origin, received_ms);
                        alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                        incidents.insert(incident.as_bytes(), &number.to_be_bytes())?;
                        reindex(None, &alert, deadlines, incidents, open_index)?;
                        Some(alert)
                    }
                    (decision, Some(before)) => {
                        let mut alert = before.clone();
                        incidents::apply(decision, &mut alert, event, received_ms);
                        let number = alert_number(&alert.id).unwrap_or(0);
                        alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                        reindex(Some(&before), &alert, deadlines, incidents, open_index)?;
                        Some(alert)
                    }
                    (_, None) => None,
                };
                if let Some(alert) = &alert {
                    append_audit(
                        audit,
                        decision_audit(event, alert, decision, gateway_id, received_ms),
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
                match retention::index_key(&key, &stored) {
                    (true, index) => by_time.insert(index, &retention::kind_value(&stored))?,
                    (false, index) => alert_events.insert(index, &[])?,
                };
                Ok(Committed::New {
                    alert: alert.map(|a| Box::new((a, decision))),
                })
            },
        )?;
        Ok(committed)
    }

    /// fsyncs on tokio's blocking pool (sled's `flush_async` starts and
    /// retires a thread of its own per flush under load).
    fn flush(&self) -> futures::future::BoxFuture<'_, Result<(), StoreError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .expect("store flush task panicked")?;
            Ok(())
        })
    }

    fn event(&self, device_id: &str, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        let key = event_key(device_id, seq);
        match self.events.get(&key)? {
            Some(bytes) => Some(bytes),
            None => self.partitions.get(&key)?,
        }
        .map(|bytes| decode("event", &bytes))
        .transpose()
    }

    /// A device's committed events in seq order.
    fn device_events(&self, device_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let mut prefix = device_id.as_bytes().to_vec();
        prefix.push(0);
        let mut keyed = Vec::new();
        self.partitions.with_spans(|spans| {
            for tree in std::iter::once(&self.events).chain(spans.iter().map(|s| &s.tree)) {
                for item in tree.scan_prefix(&prefix) {
                    let (key, bytes) = item?;
                    keyed.push((key, decode("event", &bytes)?));
                }
            }
            Ok::<_, StoreError>(())
        })?;
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keyed.into_iter().map(|(_, event)| event).collect())
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        let spans: usize = self
            .partitions
            .with_spans(|spans| spans.iter().map(|s| s.tree.len()).sum());
        Ok((self.events.len() + spans) as u64)
    }

    fn prune_events(
        &self,
        before_ms: i64,
        utc_offset_minutes: i32,
        limit: usize,
    ) -> Result<u64, StoreError> {
        retention::prune_events(self, before_ms, utc_offset_minutes, limit)
    }

    fn prune_event_days(&self, before_day: i32, limit: usize) -> Result<u64, StoreError> {
        retention::prune_event_days(self, before_day, limit)
    }

    fn prune_alerts(&self, before_ms: i64, limit: usize) -> Result<(u64, u64), StoreError> {
        retention::prune_alerts(self, before_ms, limit)
    }

    fn prune_audit(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        retention::prune_audit(self, before_ms, limit)
    }

    fn audit_anchor(&self) -> Result<Option<super::AuditAnchor>, StoreError> {
        self.audit
            .get(CHAIN_ANCHOR)?
            .map(|bytes| super::AuditAnchor::decode(&bytes))
            .transpose()
    }

    fn event_days(&self, device_id: &str) -> Result<Vec<super::EventDay>, StoreError> {
        retention::event_days(self, device_id)
    }

    fn check(&self) -> super::CheckReport {
        check::check(self)
    }

    fn seal(&self) -> Result<(), StoreError> {
        seal::seal(self)
    }

    fn backup(
        &self,
        dir: &Path,
        progress: &mut dyn FnMut(&str, u64),
    ) -> Result<super::backup::Manifest, StoreError> {
        backup::backup(self, dir, progress)
    }

    fn alert(&self, alert_id: &str) -> Result<Alert, StoreError> {
        let number =
            alert_number(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        let bytes = self
            .alerts
            .get(number.to_be_bytes())?
            .ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        decode("alert", &bytes)
    }

    /// Alerts in creation order, optionally only those in `states`. Open
    /// states are read through `open_alerts`, not the whole history.
    fn alerts(&self, states: &[AlertState]) -> Result<Vec<Alert>, StoreError> {
        let mut out = Vec::new();
        if lifecycle::only_open(states) {
            for key in self.open_alerts.iter().keys() {
                if let Some(bytes) = self.alerts.get(key?)? {
                    let alert: Alert = decode("alert", &bytes)?;
                    if states.contains(&alert.state()) {
                        out.push(alert);
                    }
                }
            }
            return Ok(out);
        }
        for item in self.alerts.iter() {
            let (_, bytes) = item?;
            let alert: Alert = decode("alert", &bytes)?;
            if states.is_empty() || states.contains(&alert.state()) {
                out.push(alert);
            }
        }
        Ok(out)
    }

    fn alerts_page(&self, query: &ListQuery) -> Result<Page<Alert>, StoreError> {
        let before = query
            .before_alert()
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        // The open states through their index, anything else through the
        // history, newest first either way.
        let walked = if lifecycle::only_open(&query.states) {
            &self.open_alerts
        } else {
            &self.alerts
        };
        let limit = query.limit();
        let mut items = Vec::new();
        let mut looked = 0;
        for entry in walked.range(..before.to_be_bytes()).rev() {
            let (key, _) = entry?;
            if items.len() == limit {
                let last: &Alert = items.last().expect("limit > 0");
                let number = alert_number(&last.id).unwrap_or(0);
                return Ok(Page {
                    items,
                    next: Some(crate::domain::listing::cursor(&number.to_be_bytes())),
                });
            }
            looked += 1;
            if let Some(bytes) = self.alerts.get(&key)? {
                let alert: Alert = decode("alert", &bytes)?;
                if query.wants_alert(&alert) {
                    items.push(alert);
                }
            }
            if looked >= crate::domain::listing::SCAN_BUDGET && items.len() < limit {
                return Ok(Page {
                    items,
                    next: Some(crate::domain::listing::cursor(&key)),
                });
            }
        }
        Ok(Page { items, next: None })
    }

    /// Writes an alert as given, for migrating history from another system
    /// (and seeding report tests). Indexes are kept as for any update.
    fn import_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        let number = alert_number(&alert.id).ok_or_else(|| {
            StoreError::Refused(format!("alert id `{}` is not a number", alert.id))
        })?;
        (
            &self.alerts,
            &self.deadlines,
            &self.incidents,
            &self.open_alerts,
        )
            .transaction(|(alerts, deadlines, incidents, open)| {
                alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                reindex(None, alert, deadlines, incidents, open)
            })?;
        Ok(())
    }

    /// Changes one alert. `change` edits it and says what else to write; an
    /// error from it aborts the whole update. Lifecycle rules are checked
    /// here, so no caller can move an alert illegally.
    fn update_alert_dyn(
        &self,
        alert_id: &str,
        change: AlertChange<'_>,
    ) -> Result<(Alert, Vec<Downlink>), StoreError> {
        let number =
            alert_number(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        let trees = (
            &self.alerts,
            &self.downlinks,
            &self.deadlines,
            &self.incidents,
            &self.audit,
            &self.outbox,
            &self.open_alerts,
        );
        let result = trees.transaction(
            |(alerts, downlinks, deadlines, incidents, audit, outbox, open)| {
                let bytes = alerts
                    .get(number.to_be_bytes())?
                    .ok_or_else(|| abort(StoreError::NoSuchAlert(alert_id.into())))?;
                let before: Alert = decode("alert", &bytes).map_err(abort)?;
                let mut alert = before.clone();
                let Change {
                    audit: entries,
                    device_acks,
                    notifications,
                } = change(&mut alert).map_err(abort)?;
                if alert.state != before.state {
                    lifecycle::check(before.state(), alert.state()).map_err(|e| abort(e.into()))?;
                }
                alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                reindex(Some(&before), &alert, deadlines, incidents, open)?;
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
                    downlinks
                        .insert(downlink_key(&alert.gateway_id, id), message.encode_to_vec())?;
                    queued.push(message);
                }
                for item in &notifications {
                    if outbox.get(item.delivery_id.as_bytes())?.is_none() {
                        outbox.insert(item.delivery_id.as_bytes(), item.encode_to_vec())?;
                    }
                }
                Ok((alert, queued))
            },
        )?;
        Ok(result)
    }

    /// Offers whose deadline is at or before `now_ms`, earliest first, and
    /// the next deadline after those.
    fn due_offers(&self, now_ms: i64) -> Result<(Vec<String>, Option<i64>), StoreError> {
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
    fn rebase_deadlines(&self, step_ms: i64) -> Result<usize, StoreError> {
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
    fn clock_mark(&self) -> Result<Option<anxin_host::clock::Mark>, StoreError> {
        Ok(self
            .meta
            .get("clock")?
            .and_then(|bytes| anxin_host::clock::Mark::decode(&bytes)))
    }

    fn save_clock_mark(&self, mark: &anxin_host::clock::Mark) -> Result<(), StoreError> {
        self.meta.insert("clock", mark.encode())?;
        Ok(())
    }

    /// Downlinks a gateway has not yet confirmed, oldest first.
    fn pending_downlinks(&self, gateway_id: &str) -> Result<Vec<Downlink>, StoreError> {
        let mut prefix = gateway_id.as_bytes().to_vec();
        prefix.push(0);
        self.downlinks
            .scan_prefix(prefix)
            .values()
            .map(|bytes| decode("downlink", &bytes?))
            .collect()
    }

    fn enqueue_notifications(&self, items: &[OutboxItem]) -> Result<(), StoreError> {
        for item in items {
            self.outbox
                .compare_and_swap(
                    item.delivery_id.as_bytes(),
                    None as Option<&[u8]>,
                    Some(item.encode_to_vec()),
                )?
                .ok();
        }
        Ok(())
    }

    fn claim_notifications(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let mut claimed = Vec::new();
        for item in self.outbox.iter() {
            let (key, bytes) = item?;
            let mut item: OutboxItem = decode("outbox item", &bytes)?;
            if item.next_at_ms > now_ms || item.lease_until_ms > now_ms {
                continue;
            }
            item.lease_until_ms = now_ms + lease_ms;
            // One process uses a sled store: a failed swap is a finish or
            // retry racing this claim, and that one wins.
            if self
                .outbox
                .compare_and_swap(&key, Some(bytes), Some(item.encode_to_vec()))?
                .is_ok()
            {
                claimed.push(item);
                if claimed.len() == max {
                    break;
                }
            }
        }
        Ok(claimed)
    }

    fn finish_notification(
        &self,
        delivery_id: &str,
        entry: AuditEntry,
    ) -> Result<bool, StoreError> {
        let finished = (&self.outbox, &self.audit).transaction(|(outbox, audit)| {
            if outbox.remove(delivery_id.as_bytes())?.is_none() {
                return Ok(false);
            }
            append_audit(audit, entry.clone())?;
            Ok(true)
        })?;
        Ok(finished)
    }

    fn retry_notification(&self, item: &OutboxItem) -> Result<(), StoreError> {
        let item = OutboxItem {
            lease_until_ms: 0,
            ..item.clone()
        };
        self.outbox
            .insert(item.delivery_id.as_bytes(), item.encode_to_vec())?;
        Ok(())
    }

    fn downlink_done(&self, gateway_id: &str, downlink_id: u64) -> Result<(), StoreError> {
        self.downlinks
            .remove(downlink_key(gateway_id, downlink_id))?;
        Ok(())
    }
}

// ---- the directory ----

#[derive(Clone)]
pub(crate) struct Trees {
    pub(super) places: sled::Tree,
    pub(super) residents: sled::Tree,
    pub(super) devices: sled::Tree,
    pub(super) gateways: sled::Tree,
    pub(super) staff: sled::Tree,
    pub(super) tokens: sled::Tree,
    pub(super) residents_by_community: sled::Tree,
    pub(super) resident_terms: sled::Tree,
    pub(super) devices_by_gateway: sled::Tree,
    pub(super) devices_by_resident: sled::Tree,
    pub(super) staff_by_community: sled::Tree,
    pub(super) residents_enrolled: sled::Tree,
}

impl Trees {
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            places: db.open_tree("places")?,
            residents: db.open_tree("residents")?,
            devices: db.open_tree("devices")?,
            gateways: db.open_tree("gateways")?,
            staff: db.open_tree("staff")?,
            tokens: db.open_tree("tokens")?,
            residents_by_community: db.open_tree("residents_by_community")?,
            resident_terms: db.open_tree("resident_terms")?,
            devices_by_gateway: db.open_tree("devices_by_gateway")?,
            devices_by_resident: db.open_tree("devices_by_resident")?,
            staff_by_community: db.open_tree("staff_by_community")?,
            residents_enrolled: db.open_tree("residents_enrolled")?,
        })
    }
}

fn get<M: Message + Default>(
    tree: &sled::Tree,
    what: &str,
    id: impl AsRef<[u8]>,
) -> Result<Option<M>, StoreError> {
    tree.get(id)?.map(|bytes| decode(what, &bytes)).transpose()
}

fn list<M: Message + Default>(tree: &sled::Tree, what: &str) -> Result<Vec<M>, StoreError> {
    tree.iter()
        .values()
        .map(|bytes| decode(what, &bytes?))
        .collect()
}

impl Directory for SledStore {
    fn put_place(&self, place: &Place, audit: AuditEntry) -> Result<(), StoreError> {
        (&self.directory.places, &self.audit).transaction(|(places, log)| {
            places.insert(place.id.as_bytes(), place.encode_to_vec())?;
            append_audit(log, audit.clone())
        })?;
        Ok(())
    }
    fn place(&self, id: &str) -> Result<Option<Place>, StoreError> {
        get(&self.directory.places, "place", id)
    }
    fn places(&self) -> Result<Vec<Place>, StoreError> {
        list(&self.directory.places, "place")
    }
    fn resident(&self, id: &str) -> Result<Option<Resident>, StoreError> {
        get(&self.directory.residents, "resident", id)
    }
    fn residents(&self) -> Result<Vec<Resident>, StoreError> {
        list(&self.directory.residents, "resident")
    }
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        get(&self.directory.devices, "device", id)
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        list(&self.directory.devices, "device")
    }
    fn put_gateway(
        &self,
        gateway: &GatewayRecord,
        token_sha256: &str,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        let token = TokenRecord {
            subject_kind: "gateway".into(),
            subject_id: gateway.id.clone(),
            issued_ms: audit.at_ms,
            ..Default::default()
        };
        (
            &self.directory.gateways,
            &self.directory.tokens,
            &self.audit,
        )
            .transaction(|(gateways, tokens, log)| {
                gateways.insert(gateway.id.as_bytes(), gateway.encode_to_vec())?;
                if !token_sha256.is_empty() {
                    tokens.insert(token_sha256.as_bytes(), token.encode_to_vec())?;
                }
                append_audit(log, audit.clone())
            })?;
        Ok(())
    }
    fn gateway(&self, id: &str) -> Result<Option<GatewayRecord>, StoreError> {
        get(&self.directory.gateways, "gateway", id)
    }
    fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        list(&self.directory.gateways, "gateway")
    }
    fn staff_member(&self, id: &str) -> Result<Option<Staff>, StoreError> {
        get(&self.directory.staff, "staff", id)
    }
    fn staff(&self) -> Result<Vec<Staff>, StoreError> {
        list(&self.directory.staff, "staff")
    }
    fn put_batch(&self, batch: &DirectoryBatch, audit: AuditEntry) -> Result<(), StoreError> {
        self.write_batch(batch, Some(&audit), None)
    }
    fn put_import(
        &self,
        chunks: &mut dyn Iterator<Item = DirectoryBatch>,
        expected: u64,
        audit: AuditEntry,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        import::put_import(self, chunks, expected, audit, progress)
    }
    fn enrolled_residents(&self) -> Result<Vec<Resident>, StoreError> {
        listing::enrolled(&self.directory)
    }
    fn residents_page(&self, query: &ListQuery) -> Result<Page<Resident>, StoreError> {
        listing::residents(&self.directory, query)
    }
    fn devices_page(&self, query: &ListQuery) -> Result<Page<DeviceRecord>, StoreError> {
        listing::devices(&self.directory, query)
    }
    fn staff_page(&self, query: &ListQuery) -> Result<Page<Staff>, StoreError> {
        listing::staff(&self.directory, query)
    }
    fn gateways_page(&self, query: &ListQuery) -> Result<Page<GatewayRecord>, StoreError> {
        listing::gateways(&self.directory, query)
    }
    fn places_page(&self, query: &ListQuery) -> Result<Page<Place>, StoreError> {
        listing::places(&self.directory, query)
    }
    fn put_token(
        &self,
        token_sha256: &str,
        record: &TokenRecord,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        (&self.directory.tokens, &self.audit).transaction(|(tokens, log)| {
            if token_sha256.is_empty() {
                return Err(abort(StoreError::Refused("empty token digest".into())));
            }
            tokens.insert(token_sha256.as_bytes(), record.encode_to_vec())?;
            append_audit(log, audit.clone())
        })?;
        Ok(())
    }
    fn token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        get(&self.directory.tokens, "token", token_sha256)
    }
    fn tokens_of(
        &self,
        subject_kind: &str,
        subject_id: &str,
    ) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.directory.tokens.iter() {
            let (key, bytes) = item?;
            let record: TokenRecord = decode("token", &bytes)?;
            if record.subject_kind == subject_kind && record.subject_id == subject_id {
                out.push((String::from_utf8_lossy(&key).into_owned(), record));
            }
        }
        Ok(out)
    }
    fn touch_token(&self, token_sha256: &str, at_ms: i64) -> Result<(), StoreError> {
        self.directory
            .tokens
            .fetch_and_update(token_sha256.as_bytes(), |old| {
                let mut record: TokenRecord = old.and_then(|b| TokenRecord::decode(b).ok())?;
                record.last_used_ms = at_ms;
                Some(record.encode_to_vec())
            })?;
        Ok(())
    }
}

// ---- the audit log ----

impl AuditLog for SledStore {
    fn append(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        Ok(self
            .audit
            .transaction(|audit| append_audit(audit, entry.clone()))?)
    }

    fn query(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let before = match query.before_id {
            0 => u64::MAX,
            id => id,
        };
        let mut out = Vec::new();
        if query.limit == 0 {
            for entry in audit_entries(&self.audit) {
                let entry = entry?;
                if entry.id < before && crate::store::audit::matches(query, &entry) {
                    out.push(entry);
                }
            }
            return Ok(out);
        }
        // Newest first, holding no more than the page.
        for item in self.audit.range(..before.to_be_bytes()).rev() {
            let (key, bytes) = item?;
            if key.len() != 8 {
                continue;
            }
            let entry: AuditEntry = decode("audit entry", &bytes)?;
            if crate::store::audit::matches(query, &entry) {
                out.push(entry);
                if out.len() == query.limit as usize {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }
}

fn day_key(day: i32, id: &str) -> Vec<u8> {
    let mut key = (day as u32).to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// Values of a day-keyed tree for local days in `[from_day, to_day)`.
fn days_in(tree: &sled::Tree, from_day: i32, to_day: i32) -> Result<Vec<sled::IVec>, StoreError> {
    tree.range((from_day.max(0) as u32).to_be_bytes()..(to_day.max(0) as u32).to_be_bytes())
        .values()
        .map(|v| Ok(v?))
        .collect()
}

impl WelfareStore for SledStore {
    fn note_signs(&self, signs: &[SignOfLife]) -> Result<(), StoreError> {
        for sign in latest_signs(signs) {
            self.signs
                .fetch_and_update(sign.resident_id.as_bytes(), |old| {
                    let newer = old
                        .and_then(|b| SignOfLife::decode(b).ok())
                        .is_none_or(|o| sign.at_ms > o.at_ms);
                    if newer {
                        Some(sign.encode_to_vec())
                    } else {
                        old.map(<[u8]>::to_vec)
                    }
                })?;
        }
        Ok(())
    }

    fn sign_of_life(&self, resident_id: &str) -> Result<Option<SignOfLife>, StoreError> {
        get(&self.signs, "sign of life", resident_id)
    }

    fn judge_checkin_day(
        &self,
        day: &CheckinDay,
        audit: AuditEntry,
    ) -> Result<CheckinDay, StoreError> {
        let key = day_key(day.day, &day.resident_id);
        Ok(
            (&self.checkin_days, &self.audit).transaction(|(days, log)| {
                if let Some(bytes) = days.get(&key)? {
                    return decode("check-in day", &bytes).map_err(abort);
                }
                days.insert(key.as_slice(), day.encode_to_vec())?;
                append_audit(log, audit.clone())?;
                Ok(day.clone())
            })?,
        )
    }

    fn checkin_day(&self, resident_id: &str, day: i32) -> Result<Option<CheckinDay>, StoreError> {
        self.checkin_days
            .get(day_key(day, resident_id))?
            .map(|bytes| decode("check-in day", &bytes))
            .transpose()
    }

    fn checkin_days(&self, from_day: i32, to_day: i32) -> Result<Vec<CheckinDay>, StoreError> {
        days_in(&self.checkin_days, from_day, to_day)?
            .iter()
            .map(|bytes| decode("check-in day", bytes))
            .collect()
    }

    fn put_visit_plans(&self, list: &[VisitPlan], audit: AuditEntry) -> Result<(), StoreError> {
        (&self.visit_plans, &self.audit).transaction(|(plans, log)| {
            for plan in list {
                plans.insert(plan.id.as_bytes(), plan.encode_to_vec())?;
            }
            append_audit(log, audit.clone())?;
            Ok(())
        })?;
        Ok(())
    }

    fn visit_plan(&self, id: &str) -> Result<Option<VisitPlan>, StoreError> {
        get(&self.visit_plans, "visit plan", id)
    }

    fn visit_plans(&self) -> Result<Vec<VisitPlan>, StoreError> {
        list(&self.visit_plans, "visit plan")
    }

    fn record_visit(
        &self,
        visit: &Visit,
        audit: AuditEntry,
        notifications: &[OutboxItem],
    ) -> Result<(Visit, bool), StoreError> {
        let key = day_key(visit.day, &visit.plan_id);
        Ok(
            (&self.visits, &self.audit, &self.outbox).transaction(|(visits, log, outbox)| {
                if let Some(bytes) = visits.get(&key)? {
                    return Ok((decode("visit", &bytes).map_err(abort)?, false));
                }
                visits.insert(key.as_slice(), visit.encode_to_vec())?;
                append_audit(log, audit.clone())?;
                for item in notifications {
                    if outbox.get(item.delivery_id.as_bytes())?.is_none() {
                        outbox.insert(item.delivery_id.as_bytes(), item.encode_to_vec())?;
                    }
                }
                Ok((visit.clone(), true))
            })?,
        )
    }

    fn visits(&self, from_day: i32, to_day: i32) -> Result<Vec<Visit>, StoreError> {
        days_in(&self.visits, from_day, to_day)?
            .iter()
            .map(|bytes| decode("visit", bytes))
            .collect()
    }
}
