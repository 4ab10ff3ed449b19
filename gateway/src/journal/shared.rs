//! What the writer and the reader share: the sled tree, the counts per
//! priority, the lane locks, the flush and the deletes.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use super::format::*;

pub(super) struct Shared {
    pub(super) db: sled::Db,
    pub(super) tree: sled::Tree,
    pub(super) quota: Quota,
    pub(super) depth: [AtomicU64; 4],
    pub(super) bytes: [AtomicU64; 4],
    pub(super) appended: Notify,
    /// Set while the disk guard reports low space: P2/P3 are deferred.
    pub(super) disk_low: std::sync::atomic::AtomicBool,
    /// Held from taking a journal seq to writing its entry, so entries
    /// become visible in seq order and the uplink's cursor never passes an
    /// entry still being written (ingest and supervision both append).
    /// One per lane group — [0] P0/P1, [1] P2/P3 — since cursors are kept
    /// per priority: an alarm never waits for a telemetry batch's lock.
    pub(super) append_order: [std::sync::Mutex<()>; 2],
    /// Serialises deletes (the uplink's, and ingest's evictions), which
    /// check that an entry is still there before counting it gone.
    pub(super) removal: std::sync::Mutex<()>,
}

impl Shared {
    /// fsyncs on tokio's blocking pool. (sled's `flush_async` runs on its
    /// own pool, which starts and retires a thread per flush under load: the
    /// profile showed hundreds of `sled-io-N` threads.)
    pub(super) async fn flush(&self) -> Result<(), JournalError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .expect("journal flush task panicked")?;
        Ok(())
    }

    pub(super) fn depth(&self) -> [u64; 4] {
        std::array::from_fn(|p| self.depth[p].load(Ordering::Relaxed))
    }

    pub(super) fn bytes(&self) -> [u64; 4] {
        std::array::from_fn(|p| self.bytes[p].load(Ordering::Relaxed))
    }

    /// Removes entries and their indexes in one batch; for each, whether
    /// it was still there (the writer's eviction and the reader's delete
    /// may race; the removal lock makes check and delete one step).
    pub(super) fn remove_entries(
        &self,
        targets: &[(EntryKey, Vec<u8>)],
    ) -> Result<Vec<bool>, JournalError> {
        let _removal = self.removal.lock().expect("removal lock poisoned");
        let mut batch = sled::Batch::default();
        let mut gone = Vec::with_capacity(targets.len());
        let mut freed = [(0u64, 0u64); 4];
        let mut seen = std::collections::HashSet::with_capacity(targets.len());
        for (key, index) in targets {
            if !seen.insert(*key) {
                gone.push(false);
                continue;
            }
            match self.tree.get(key.0)? {
                Some(value) => {
                    batch.remove(&key.0[..]);
                    batch.remove(&index[..]);
                    // The index key is device_id plus 10 bytes, as in
                    // record_bytes.
                    let lane = &mut freed[key.priority()];
                    lane.0 += 1;
                    lane.1 += (10 + value.len() + index.len() + 10) as u64;
                    gone.push(true);
                }
                None => gone.push(false),
            }
        }
        if gone.iter().any(|g| *g) {
            self.tree.apply_batch(batch)?;
        }
        for (lane, (events, bytes)) in freed.iter().enumerate() {
            self.depth[lane].fetch_sub(*events, Ordering::Relaxed);
            self.bytes[lane].fetch_sub(*bytes, Ordering::Relaxed);
        }
        Ok(gone)
    }

    /// Evicts the oldest entry of one lane, if any.
    pub(super) fn evict_oldest(&self, priority: u8) -> Result<Option<Evicted>, JournalError> {
        loop {
            let Some(item) = self.tree.scan_prefix([ENTRY, priority]).next() else {
                return Ok(None);
            };
            let (raw_key, value) = item?;
            let key = EntryKey::parse(&raw_key)?;
            let (device_id, seq) = identity_of(&raw_key, &value)?;
            if self.remove_entries(&[(key, index_key(&device_id, seq))])?[0] {
                return Ok(Some(Evicted {
                    device_id,
                    seq,
                    priority: priority as usize,
                }));
            }
            // The uplink deleted it meanwhile; look again.
        }
    }
}
