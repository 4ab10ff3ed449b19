//! What the writer and the reader share: the two lane databases, the
//! in-memory index of pending events, the counts per priority, the lane
//! locks, the flushes and the deletes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anxin_proto::v1::UplinkEvent;
use tokio::sync::Notify;

use super::{format::*, seal::Seal};

/// A lane database: P0/P1 (`alarm`) or P2/P3 (`bulk`), each with its own
/// flush, so an alarm's flush never waits for a telemetry batch.
pub(super) struct LaneDb {
    pub(super) db: sled::Db,
    /// Highest batch seq written (applied, maybe not yet flushed).
    pub(super) written: AtomicU64,
}

/// One batch as the index sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchInfo {
    /// Events of the batch not yet received by the server.
    pub(super) pending: u32,
    /// The record's logical bytes.
    pub(super) bytes: u64,
}

/// The in-memory index, rebuilt from the batches at open: which batch
/// holds each pending event, and what each batch still holds. Device ids
/// are interned: a gateway serves thousands of devices, and a million
/// pending events cost 32 bytes each here, not a string each.
#[derive(Default)]
pub(super) struct Index {
    devices: HashMap<Arc<str>, u32>,
    pub(super) pending: HashMap<(u32, u64), EntryKey>,
    pub(super) batches: BTreeMap<(u8, u64), BatchInfo>,
}

impl Index {
    pub(super) fn device(&self, device_id: &str) -> Option<u32> {
        self.devices.get(device_id).copied()
    }

    pub(super) fn device_or_new(&mut self, device_id: &str) -> u32 {
        if let Some(n) = self.devices.get(device_id) {
            return *n;
        }
        let n = self.devices.len() as u32;
        self.devices.insert(Arc::from(device_id), n);
        n
    }

    pub(super) fn find(&self, device_id: &str, seq: u64) -> Option<EntryKey> {
        let device = self.device(device_id)?;
        self.pending.get(&(device, seq)).copied()
    }

    /// Whether the event at `key` is still pending (not received, not
    /// superseded by a later copy).
    pub(super) fn is_pending(&self, device_id: &str, seq: u64, key: EntryKey) -> bool {
        self.find(device_id, seq) == Some(key)
    }
}

pub(super) struct Shared {
    pub(super) lanes: [LaneDb; 2],
    pub(super) index: std::sync::Mutex<Index>,
    pub(super) quota: Quota,
    pub(super) depth: [AtomicU64; 4],
    pub(super) bytes: [AtomicU64; 4],
    pub(super) appended: Notify,
    /// Set while the disk guard reports low space: P2/P3 are deferred.
    pub(super) disk_low: std::sync::atomic::AtomicBool,
    /// Held from taking a batch seq to writing its record, so batches
    /// become visible in seq order and the uplink's cursor never passes a
    /// batch still being written (ingest and supervision both append).
    /// One per lane: an alarm never waits for a telemetry batch's lock.
    pub(super) append_order: [std::sync::Mutex<()>; 2],
    pub(super) seal: Arc<Seal>,
    /// Corrupt records met after open (skipped by the reader).
    pub(super) corrupt_seen: AtomicU64,
}

impl Shared {
    pub(super) fn tree(&self, priority: u8) -> &sled::Db {
        &self.lanes[lane_of(priority)].db
    }

    pub(super) fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().expect("journal index lock poisoned")
    }

    /// fsyncs one lane on tokio's blocking pool (sled's `flush_async` runs
    /// on its own pool, which starts and retires a thread per flush under
    /// load: the profile showed hundreds of `sled-io-N` threads), then
    /// moves the seal forward.
    pub(super) async fn flush_lane(self: &Arc<Self>, lane: usize) -> Result<(), JournalError> {
        let written = self.lanes[lane].written.load(Ordering::Acquire);
        let db = self.lanes[lane].db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .expect("journal flush task panicked")?;
        self.seal.flushed(lane, written);
        Ok(())
    }

    /// Each lane's highest batch seq written.
    pub(super) fn written_marks(&self) -> [u64; 2] {
        std::array::from_fn(|lane| self.lanes[lane].written.load(Ordering::Acquire))
    }

    pub(super) fn depth(&self) -> [u64; 4] {
        std::array::from_fn(|p| self.depth[p].load(Ordering::Relaxed))
    }

    pub(super) fn bytes(&self) -> [u64; 4] {
        std::array::from_fn(|p| self.bytes[p].load(Ordering::Relaxed))
    }

    /// Marks events received (by identity); deletes each batch left with
    /// nothing pending. Returns, per event, its key if it was pending.
    pub(super) fn receive(
        &self,
        events: &[(&str, u64)],
    ) -> Result<Vec<Option<EntryKey>>, JournalError> {
        let mut keys = Vec::with_capacity(events.len());
        let mut emptied = Vec::new();
        {
            let mut index = self.index();
            for (device_id, seq) in events {
                let Some(device) = index.device(device_id) else {
                    keys.push(None);
                    continue;
                };
                let Some(key) = index.pending.remove(&(device, *seq)) else {
                    keys.push(None);
                    continue;
                };
                self.unpend(&mut index, key, &mut emptied);
                keys.push(Some(key));
            }
        }
        self.delete_batches(&emptied)?;
        Ok(keys)
    }

    /// The event at `key` (already out of `pending`) is pending no more:
    /// counted off, and its batch, if that left it empty, out of the index
    /// and into `emptied` to be deleted.
    fn unpend(&self, index: &mut Index, key: EntryKey, emptied: &mut Vec<(u8, u64)>) {
        self.depth[key.priority()].fetch_sub(1, Ordering::Relaxed);
        let id = (key.priority, key.batch);
        if let Some(batch) = index.batches.get_mut(&id) {
            batch.pending -= 1;
            if batch.pending == 0 {
                let bytes = batch.bytes;
                index.batches.remove(&id);
                self.bytes[key.priority()].fetch_sub(bytes, Ordering::Relaxed);
                emptied.push(id);
            }
        }
    }

    /// Deletes batch records (already out of the index), one sled batch per
    /// lane. Not flushed: a delete lost in a crash only resends events the
    /// server deduplicates.
    pub(super) fn delete_batches(&self, ids: &[(u8, u64)]) -> Result<(), JournalError> {
        for lane in 0..2 {
            let mut batch = sled::Batch::default();
            let mut any = false;
            for (priority, seq) in ids.iter().filter(|(p, _)| lane_of(*p) == lane) {
                batch.remove(&batch_key(*priority, *seq)[..]);
                any = true;
            }
            if any {
                self.lanes[lane].db.apply_batch(batch)?;
            }
        }
        Ok(())
    }

    /// Evicts the oldest batch of one priority, if any: its pending events.
    pub(super) fn evict_oldest(&self, priority: u8) -> Result<Option<Vec<Evicted>>, JournalError> {
        let mut index = self.index();
        let Some((&id, &info)) = index
            .batches
            .range((priority, 0)..=(priority, u64::MAX))
            .next()
        else {
            return Ok(None);
        };
        index.batches.remove(&id);
        self.bytes[priority as usize].fetch_sub(info.bytes, Ordering::Relaxed);
        let key = batch_key(id.0, id.1);
        let mut gone = Vec::new();
        if let Some(value) = self.tree(priority).get(key)? {
            for (n, event) in decode_record(&key, &value)?.iter().enumerate() {
                let (device_id, seq) = identity(event);
                let at = EntryKey {
                    priority,
                    batch: id.1,
                    index: n as u32,
                };
                if index.is_pending(device_id, seq, at) {
                    let device = index.device(device_id).expect("pending device is interned");
                    index.pending.remove(&(device, seq));
                    self.depth[priority as usize].fetch_sub(1, Ordering::Relaxed);
                    gone.push(Evicted {
                        device_id: device_id.to_string(),
                        seq,
                        priority: priority as usize,
                    });
                }
            }
        }
        drop(index);
        self.delete_batches(&[id])?;
        Ok(Some(gone))
    }

    /// Indexes a batch's events (at open, and after a commit): each becomes
    /// the pending copy of its identity; an older copy elsewhere stops
    /// being pending (and its batch is deleted once nothing in it is).
    pub(super) fn index_batch<'b>(
        &self,
        index: &mut Index,
        priority: u8,
        seq: u64,
        identities: impl Iterator<Item = (&'b str, u64)>,
        bytes: u64,
        emptied: &mut Vec<(u8, u64)>,
    ) {
        let mut pending = 0;
        for (n, (device_id, event_seq)) in identities.enumerate() {
            let device = index.device_or_new(device_id);
            let key = EntryKey {
                priority,
                batch: seq,
                index: n as u32,
            };
            match index.pending.insert((device, event_seq), key) {
                Some(older) if older != key => {
                    // A retransmission journaled again after its first copy
                    // was read: the newer copy is the one sent.
                    self.unpend(index, older, emptied);
                }
                _ => {}
            }
            pending += 1;
        }
        self.depth[priority as usize].fetch_add(pending as u64, Ordering::Relaxed);
        self.bytes[priority as usize].fetch_add(bytes, Ordering::Relaxed);
        index
            .batches
            .insert((priority, seq), BatchInfo { pending, bytes });
    }
}

/// The identities of a batch's decoded events.
pub(super) fn identities(events: &[UplinkEvent]) -> impl Iterator<Item = (&str, u64)> + '_ {
    events.iter().map(identity)
}
