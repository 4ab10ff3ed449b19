//! The writer (ingest's side): appends in lanes, staged batches, the
//! flush before `stored`, quota eviction of P3 then P2.

use std::{
    path::Path,
    sync::{Arc, atomic::Ordering},
};

use anxin_proto::{DeviceEvent, Priority, v1::UplinkEvent};
use prost::Message;

use super::{format::*, marker::files_digest, shared::Shared};

/// Ingest's handle: appends and flushes.
#[derive(Clone)]
pub struct JournalWriter(pub(super) Arc<Shared>);

impl JournalWriter {
    /// Writes the event unless the journal already holds `(device_id, seq)`.
    /// Not durable until [`JournalWriter::flush`] returns.
    pub fn append(&self, event: &DeviceEvent, stored_ms: i64) -> Result<Appended, JournalError> {
        let mut staging = self.stage();
        let appended = staging.add(event, stored_ms)?;
        staging.commit()?;
        Ok(appended)
    }

    /// Starts a group of appends written as one sled batch by
    /// [`Staging::commit`]. sled takes a process-wide exclusive lock and
    /// seals a log manifest per batch, so one batch per ingest round instead
    /// of one per event is what lets ingest keep up with tens of thousands
    /// of events a second (BENCHMARKS.md).
    /// This one may stage any priority (it holds both lane groups' locks).
    pub fn stage(&self) -> Staging<'_> {
        self.stage_lanes(true, true)
    }

    /// A staging for P0/P1 only: the alarm lane's, which never waits for
    /// the bulk lane's batch.
    pub fn stage_alarms(&self) -> Staging<'_> {
        self.stage_lanes(true, false)
    }

    /// A staging for P2/P3 only: the bulk lane's.
    pub fn stage_bulk(&self) -> Staging<'_> {
        self.stage_lanes(false, true)
    }

    pub(super) fn stage_lanes(&self, alarms: bool, bulk: bool) -> Staging<'_> {
        // Always alarm group first, then bulk: one lock order, no deadlock.
        let lock = |group: usize| {
            self.0.append_order[group]
                .lock()
                .expect("append lock poisoned")
        };
        Staging {
            shared: &self.0,
            alarm_order: alarms.then(|| lock(0)),
            bulk_order: bulk.then(|| lock(1)),
            batch: sled::Batch::default(),
            staged: std::collections::HashMap::new(),
            added: [(0, 0); 4],
        }
    }

    /// Makes every earlier append durable, then wakes the uplink. One flush
    /// covers all appends before it (group commit).
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.0.flush().await?;
        self.0.appended.notify_one();
        Ok(())
    }

    pub fn depth(&self) -> [u64; 4] {
        self.0.depth()
    }

    /// Logical bytes in the journal, per priority.
    pub fn bytes(&self) -> [u64; 4] {
        self.0.bytes()
    }

    /// While set, new P2/P3 events are [`Appended::Deferred`].
    pub fn set_disk_low(&self, low: bool) {
        self.0.disk_low.store(low, Ordering::Relaxed);
    }

    /// After a clean shutdown's final flush: records how many entries the
    /// journal holds, so the next start can tell a log that sled opened
    /// shorter than it was.
    pub fn mark_clean(&self, dir: &Path) -> Result<(), JournalError> {
        self.0.db.flush()?;
        let depth = self.0.depth();
        let digest = files_digest(dir)?.unwrap_or_default();
        let text = format!(
            "{} {} {} {} {digest}\n",
            depth[0], depth[1], depth[2], depth[3]
        );
        let path = dir.join(CLEAN_MARKER);
        std::fs::write(&path, text)?;
        std::fs::File::open(&path)?.sync_all()?;
        Ok(())
    }

    /// A fresh seq from the range reserved for events the gateway raises on
    /// a device's behalf; crash-safe and increasing.
    pub fn gateway_seq(&self) -> Result<u64, JournalError> {
        let offset = match self.0.db.open_tree(META)?.get(SEQ_OFFSET)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_ref().try_into().unwrap_or_default()),
            None => 0,
        };
        Ok(anxin_proto::GATEWAY_SEQ_BASE | (offset + self.0.db.generate_id()?))
    }

    /// A side tree in the journal's database, for small state that must
    /// survive restarts with the journal (supervision flags).
    pub fn aux_tree(&self, name: &str) -> Result<sled::Tree, JournalError> {
        Ok(self.0.db.open_tree(name)?)
    }
}

/// Appends not yet written; see [`JournalWriter::stage`]. Holds the append
/// order lock until committed or dropped, so journal seqs become visible in
/// order. Dropping it without `commit` writes nothing.
pub struct Staging<'a> {
    pub(super) shared: &'a Shared,
    pub(super) alarm_order: Option<std::sync::MutexGuard<'a, ()>>,
    pub(super) bulk_order: Option<std::sync::MutexGuard<'a, ()>>,
    pub(super) batch: sled::Batch,
    /// Index keys staged here, for duplicates within one batch.
    pub(super) staged: std::collections::HashMap<Vec<u8>, EntryKey>,
    /// (events, bytes) staged per priority.
    pub(super) added: [(u64, u64); 4],
}

impl Staging<'_> {
    /// Stages the event unless the journal (or this batch) already holds
    /// `(device_id, seq)`.
    pub fn add(&mut self, event: &DeviceEvent, stored_ms: i64) -> Result<Appended, JournalError> {
        let shared = self.shared;
        let index = index_key(&event.device_id, event.seq);
        if let Some(key) = self.staged.get(&index) {
            return Ok(Appended::Duplicate(*key));
        }
        if let Some(existing) = shared.tree.get(&index)? {
            return Ok(Appended::Duplicate(EntryKey::parse(&existing)?));
        }
        let priority = event.priority();
        let holds = match priority {
            Priority::P0 | Priority::P1 => self.alarm_order.is_some(),
            Priority::P2 | Priority::P3 => self.bulk_order.is_some(),
        };
        if !holds {
            return Err(JournalError::WrongLane(priority));
        }
        if priority >= Priority::P2 && shared.disk_low.load(Ordering::Relaxed) {
            return Ok(Appended::Deferred);
        }
        let record = UplinkEvent {
            event: Some(event.clone()),
            stored_ms,
        };
        let mut value = Vec::with_capacity(1 + record.encoded_len());
        value.push(FORMAT_V1);
        record.encode(&mut value).expect("Vec has capacity");
        let size = record_bytes(value.len(), &event.device_id);

        let mut evicted = Vec::new();
        let mut over_quota = false;
        if let Some(max) = shared.quota.max_bytes {
            let staged: u64 = self.added.iter().map(|(_, bytes)| bytes).sum();
            let fits = |shared: &Shared| shared.bytes().iter().sum::<u64>() + staged + size <= max;
            // P3 first, then P2, oldest first; never P0/P1.
            for lane in [Priority::P3 as u8, Priority::P2 as u8] {
                while !fits(shared) {
                    match shared.evict_oldest(lane)? {
                        Some(gone) => evicted.push(gone),
                        None => break,
                    }
                }
            }
            if !fits(shared) {
                if matches!(priority, Priority::P2 | Priority::P3) {
                    return Ok(Appended::Refused);
                }
                over_quota = true;
            }
        }

        let key = EntryKey::new(priority, shared.db.generate_id()?);
        self.batch.insert(&key.0[..], value);
        self.batch.insert(&index[..], &key.0[..]);
        self.staged.insert(index, key);
        let lane = &mut self.added[priority as usize];
        lane.0 += 1;
        lane.1 += size;
        Ok(Appended::New {
            key,
            evicted,
            over_quota,
        })
    }

    /// Writes everything staged in one batch (not yet durable: flush).
    pub fn commit(self) -> Result<(), JournalError> {
        let Staging {
            shared,
            alarm_order,
            bulk_order,
            batch,
            added,
            ..
        } = self;
        shared.tree.apply_batch(batch)?;
        drop((bulk_order, alarm_order));
        for (lane, (events, bytes)) in added.iter().enumerate() {
            shared.depth[lane].fetch_add(*events, Ordering::Relaxed);
            shared.bytes[lane].fetch_add(*bytes, Ordering::Relaxed);
        }
        Ok(())
    }
}
