//! Opening a journal: sled's settings, the counts rebuilt from the
//! entries, the writer and the reader over one shared state.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::Notify;

use super::{format::*, reader::JournalReader, shared::Shared, writer::JournalWriter};

/// Opens (or creates) the journal at `path`.
pub fn open(path: &Path, quota: Quota) -> Result<(JournalWriter, JournalReader), JournalError> {
    let db = open_db(path)?;
    build(db, quota)
}

pub(super) fn open_db(path: &Path) -> Result<sled::Db, JournalError> {
    Ok(sled::Config::new()
        .path(path)
        // We flush explicitly before every `stored` ack; sled's background
        // flush only adds writes.
        .flush_every_ms(None)
        // sled caches up to 1 GB by default; the uplink reads the front of
        // the journal and ingest writes its end, so a small cache serves.
        .cache_capacity(JOURNAL_CACHE_BYTES)
        .open()?)
}

pub(super) fn build(
    db: sled::Db,
    quota: Quota,
) -> Result<(JournalWriter, JournalReader), JournalError> {
    let tree = db.open_tree("journal")?;
    let depth: [AtomicU64; 4] = Default::default();
    let bytes: [AtomicU64; 4] = Default::default();
    for item in tree.scan_prefix([ENTRY]) {
        let (key, value) = item?;
        let entry = EntryKey::parse(&key)?;
        let (device_id, _) = identity_of(&key, &value)?;
        let size = record_bytes(value.len(), &device_id);
        depth[entry.priority()].fetch_add(1, Ordering::Relaxed);
        bytes[entry.priority()].fetch_add(size, Ordering::Relaxed);
    }
    let shared = Arc::new(Shared {
        db,
        tree,
        quota,
        depth,
        bytes,
        appended: Notify::new(),
        disk_low: Default::default(),
        append_order: Default::default(),
        removal: std::sync::Mutex::new(()),
    });
    Ok((JournalWriter(shared.clone()), JournalReader(shared)))
}
