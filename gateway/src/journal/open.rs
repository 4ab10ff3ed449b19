//! Opening a journal: the two lane databases with sled's settings, every
//! batch read and checked, the index and counts rebuilt from them, the
//! writer and the reader over one shared state.

use std::{
    path::Path,
    sync::{Arc, atomic::AtomicU64},
};

use tokio::sync::Notify;

use super::{
    format::*,
    reader::JournalReader,
    seal::{Seal, high_water},
    shared::{Index, LaneDb, Shared, identities},
    writer::JournalWriter,
};

/// sled caches up to 1 GB by default; the uplink reads the front of a lane
/// and ingest writes its end, so a small cache serves. The alarm lane holds
/// little.
const CACHE_BYTES: [u64; 2] = [4 * 1024 * 1024, 24 * 1024 * 1024];

/// Opens (or creates) the journal at `path`.
pub fn open(path: &Path, quota: Quota) -> Result<(JournalWriter, JournalReader), JournalError> {
    let (writer, reader, _) = open_marked(path, quota)?;
    Ok((writer, reader))
}

/// [`open`], also returning each lane's high-water mark as it opened.
pub(super) fn open_marked(
    path: &Path,
    quota: Quota,
) -> Result<(JournalWriter, JournalReader, [u64; 2]), JournalError> {
    std::fs::create_dir_all(path)?;
    let alarm = open_db(&path.join(LANE_DIRS[0]), CACHE_BYTES[0])?;
    let bulk = open_db(&path.join(LANE_DIRS[1]), CACHE_BYTES[1])?;
    let marks = [high_water(&alarm)?, high_water(&bulk)?];
    let shared = Arc::new(Shared {
        lanes: [
            LaneDb {
                db: alarm,
                written: AtomicU64::new(marks[0]),
            },
            LaneDb {
                db: bulk,
                written: AtomicU64::new(marks[1]),
            },
        ],
        index: Default::default(),
        quota,
        depth: Default::default(),
        bytes: Default::default(),
        appended: Notify::new(),
        disk_low: Default::default(),
        append_order: Default::default(),
        seal: Arc::new(Seal::new(path, marks)),
        corrupt_seen: AtomicU64::new(0),
    });
    rebuild(&shared)?;
    Ok((JournalWriter(shared.clone()), JournalReader(shared), marks))
}

pub(super) fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, JournalError> {
    Ok(sled::Config::new()
        .path(path)
        // We flush explicitly before every `stored` ack; sled's background
        // flush only adds writes.
        .flush_every_ms(None)
        .cache_capacity(cache_bytes)
        .open()?)
}

/// Reads every batch (checking each record's CRC: damage sled let through
/// is found here, at open, not by the uplink later) and rebuilds the index.
fn rebuild(shared: &Shared) -> Result<(), JournalError> {
    let mut index = Index::default();
    let mut emptied = Vec::new();
    for lane in &shared.lanes {
        for item in lane.db.iter() {
            let (key, value) = item?;
            let Some((priority, seq)) = parse_batch_key(&key) else {
                continue;
            };
            let events = decode_record(&key, &value)?;
            shared.index_batch(
                &mut index,
                priority,
                seq,
                identities(&events),
                9 + value.len() as u64,
                &mut emptied,
            );
        }
    }
    *shared.index() = index;
    shared.delete_batches(&emptied)?;
    Ok(())
}
