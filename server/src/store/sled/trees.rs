//! The sled engine's trees and the helpers every part of it shares: the
//! [`SledStore`] handle, the directory's [`Trees`], keys, the audit chain's
//! append, the indexes an alert change keeps true ([`reindex`]). The
//! engine's parts (`open.rs`, `storage.rs`, `directory.rs`, `audit.rs`,
//! `welfare.rs`, and `listing`, `partitions`, `retention`, `import`,
//! `seal`, `check`, `backup`) build on this file; it imports none of them
//! but `partitions`.

use anxin_proto::v1::{Alert, AuditEntry};
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::partitions;
use crate::domain::lifecycle;
use crate::store::{StoreError, alert_number, decode, incident_key, offer_deadline};

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

pub(crate) fn event_key(device_id: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(device_id.len() + 9);
    key.extend_from_slice(device_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn downlink_key(gateway_id: &str, id: u64) -> Vec<u8> {
    event_key(gateway_id, id)
}

pub(crate) fn deadline_key(alert: &Alert) -> Option<[u8; 16]> {
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
    entry.hash = crate::store::chain_hash(&previous, &entry);
    audit.insert(&entry.id.to_be_bytes(), entry.encode_to_vec())?;
    audit.insert(CHAIN_HEAD, entry.hash.as_bytes())?;
    Ok(entry)
}

/// The audit tree's one key that is not an entry: the last entry's hash.
/// Entry keys are 8 bytes, so it can never be mistaken for one.
pub(crate) const CHAIN_HEAD: &[u8] = b"chain-head";
/// The audit tree's other key that is not an entry: the
/// [`crate::store::AuditAnchor`] retention left, once it removed entries.
pub(crate) const CHAIN_ANCHOR: &[u8] = b"chain-anchor";

/// The audit tree's entries, in id order (the chain head left out).
pub(crate) fn audit_entries(
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
pub(crate) fn reindex(
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
    pub(crate) events: sled::Tree,
    pub(crate) alerts: sled::Tree,
    pub(crate) incidents: sled::Tree,
    pub(crate) deadlines: sled::Tree,
    /// `alert number (u64 BE)` → (): exactly the open alerts (the queue
    /// never reads the whole history).
    pub(crate) open_alerts: sled::Tree,
    pub(crate) downlinks: sled::Tree,
    pub(crate) audit: sled::Tree,
    pub(crate) directory: Trees,
    /// `clock` → the last [`anxin_host::clock::Mark`], for clock steps
    /// across a restart.
    pub(crate) meta: sled::Tree,
    /// Chunks of an import being written (see `import`).
    pub(crate) import_staging: sled::Tree,
    /// `delivery id` → [`OutboxItem`]: notifications not yet delivered.
    pub(crate) outbox: sled::Tree,
    pub(crate) signs: sled::Tree,
    /// `device_id` → its last known `Position`.
    pub(crate) positions: sled::Tree,
    pub(crate) checkin_days: sled::Tree,
    pub(crate) visit_plans: sled::Tree,
    pub(crate) visits: sled::Tree,
    pub(crate) events_by_time: sled::Tree,
    pub(crate) alert_events: sled::Tree,
    pub(crate) event_days: sled::Tree,
    pub(crate) event_days_by_day: sled::Tree,
    pub(crate) signal_states: sled::Tree,
    pub(crate) vital_days: sled::Tree,
    pub(crate) vital_days_by_day: sled::Tree,
    /// Plain events by span of receipt time.
    pub(super) partitions: std::sync::Arc<partitions::Partitions>,
    /// The store's directory (its seal file lives there).
    pub(crate) path: std::path::PathBuf,
    /// Serialises [`Storage::commit_plain_events`] so two gateways relaying
    /// the same event cannot both find it absent.
    pub(crate) plain_commits: std::sync::Arc<std::sync::Mutex<()>>,
}

/// The store's format, recorded in `meta` (`format`, u32 BE) so that a
/// build older than the store refuses it instead of serving it without
/// what it does not know of (an older build does not read spans, say).
/// 1: no mark (stores from before it); 2: plain events in spans, the audit
/// chain's anchor.
pub const FORMAT: u32 = 2;
pub(crate) const FORMAT_KEY: &str = "format";

std::thread_local! {
    pub(crate) static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic without printing it. The panic hook is
/// process-wide: swapping it around each call let two threads opening
/// stores at once leave it silent for good (a test's failure then printed
/// nothing), so one hook is installed once and stays quiet only for the
/// thread inside this call.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::thread::Result<T> {
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

// ---- the directory ----

#[derive(Clone)]
pub(crate) struct Trees {
    pub(crate) places: sled::Tree,
    pub(crate) residents: sled::Tree,
    pub(crate) devices: sled::Tree,
    pub(crate) gateways: sled::Tree,
    pub(crate) staff: sled::Tree,
    pub(crate) tokens: sled::Tree,
    pub(crate) residents_by_community: sled::Tree,
    pub(crate) resident_terms: sled::Tree,
    pub(crate) devices_by_gateway: sled::Tree,
    pub(crate) devices_by_resident: sled::Tree,
    pub(crate) staff_by_community: sled::Tree,
    pub(crate) residents_enrolled: sled::Tree,
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

pub(crate) fn get<M: Message + Default>(
    tree: &sled::Tree,
    what: &str,
    id: impl AsRef<[u8]>,
) -> Result<Option<M>, StoreError> {
    tree.get(id)?.map(|bytes| decode(what, &bytes)).transpose()
}

pub(crate) fn list<M: Message + Default>(
    tree: &sled::Tree,
    what: &str,
) -> Result<Vec<M>, StoreError> {
    tree.iter()
        .values()
        .map(|bytes| decode(what, &bytes?))
        .collect()
}

pub(crate) fn day_key(day: i32, id: &str) -> Vec<u8> {
    let mut key = (day as u32).to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// Values of a day-keyed tree for local days in `[from_day, to_day)`.
pub(crate) fn days_in(
    tree: &sled::Tree,
    from_day: i32,
    to_day: i32,
) -> Result<Vec<sled::IVec>, StoreError> {
    tree.range((from_day.max(0) as u32).to_be_bytes()..(to_day.max(0) as u32).to_be_bytes())
        .values()
        .map(|v| Ok(v?))
        .collect()
}
