//! The writer (ingest's side): appends in lanes, one batch record per
//! priority per ingest round, the flush before `stored`, quota eviction of
//! whole P3 then P2 batches.

use std::{
    collections::HashMap,
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

    /// Starts a group of appends written by [`Staging::commit`] as one
    /// record per priority: one sled insert per ingest round instead of two
    /// per event is what lets ingest keep up with tens of thousands of
    /// events a second (BENCHMARKS.md).
    /// This one may stage any priority (it holds both lanes' locks).
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
        // Always alarm lane first, then bulk: one lock order, no deadlock.
        let lock = |lane: usize| {
            self.0.append_order[lane]
                .lock()
                .expect("append lock poisoned")
        };
        Staging {
            shared: &self.0,
            alarm_order: alarms.then(|| lock(0)),
            bulk_order: bulk.then(|| lock(1)),
            batches: Default::default(),
            staged: HashMap::new(),
            staged_bytes: 0,
        }
    }

    /// Makes every earlier append durable (both lanes), then wakes the
    /// uplink.
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (alarms, bulk) = tokio::join!(self.0.flush_lane(0), self.0.flush_lane(1));
        alarms?;
        bulk?;
        self.0.appended.notify_one();
        Ok(())
    }

    /// Makes every earlier P0/P1 append durable without waiting for the
    /// bulk lane (group commit: one flush covers all appends before it).
    pub async fn flush_alarms(&self) -> Result<(), JournalError> {
        self.0.flush_lane(0).await?;
        self.0.appended.notify_one();
        Ok(())
    }

    /// Makes every earlier P2/P3 append durable.
    pub async fn flush_bulk(&self) -> Result<(), JournalError> {
        self.0.flush_lane(1).await?;
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

    /// After a clean shutdown's final flush: seals what was written, and
    /// records how many events the journal holds and a digest of its
    /// files, so the next start can tell files changed while it was down.
    pub fn mark_clean(&self, dir: &Path) -> Result<(), JournalError> {
        for lane in &self.0.lanes {
            lane.db.flush()?;
        }
        self.0.seal.close();
        super::seal::write(dir, self.0.written_marks())?;
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
        let db = &self.0.lanes[0].db;
        let offset = match db.open_tree(META)?.get(SEQ_OFFSET)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_ref().try_into().unwrap_or_default()),
            None => 0,
        };
        Ok(anxin_proto::GATEWAY_SEQ_BASE | (offset + db.generate_id()?))
    }

    /// A side tree in the journal's (alarm lane's) database, for small
    /// state that must survive restarts with the journal (supervision
    /// flags).
    pub fn aux_tree(&self, name: &str) -> Result<sled::Tree, JournalError> {
        Ok(self.0.lanes[0].db.open_tree(name)?)
    }
}

/// One priority's batch being staged.
struct StagedBatch {
    seq: u64,
    events: Vec<Vec<u8>>,
    identities: Vec<(String, u64)>,
}

/// Appends not yet written; see [`JournalWriter::stage`]. Holds the lanes'
/// append locks until committed or dropped, so batch seqs become visible
/// in order. Dropping it without `commit` writes nothing.
pub struct Staging<'a> {
    pub(super) shared: &'a Shared,
    pub(super) alarm_order: Option<std::sync::MutexGuard<'a, ()>>,
    pub(super) bulk_order: Option<std::sync::MutexGuard<'a, ()>>,
    batches: [Option<StagedBatch>; 4],
    /// Identities staged here, for duplicates within one round.
    staged: HashMap<(String, u64), EntryKey>,
    staged_bytes: u64,
}

impl Staging<'_> {
    /// Stages the event unless the journal (or this round) already holds
    /// `(device_id, seq)`.
    pub fn add(&mut self, event: &DeviceEvent, stored_ms: i64) -> Result<Appended, JournalError> {
        let shared = self.shared;
        let identity = (event.device_id.clone(), event.seq);
        if let Some(key) = self.staged.get(&identity) {
            return Ok(Appended::Duplicate(*key));
        }
        if let Some(key) = shared.index().find(&event.device_id, event.seq) {
            return Ok(Appended::Duplicate(key));
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
        let encoded = record.encode_to_vec();
        let p = priority as u8;
        let size = event_bytes(encoded.len())
            + if self.batches[p as usize].is_none() {
                RECORD_OVERHEAD
            } else {
                0
            };

        let mut evicted = Vec::new();
        let mut over_quota = false;
        if let Some(max) = shared.quota.max_bytes {
            let staged = self.staged_bytes;
            let fits = |shared: &Shared| shared.bytes().iter().sum::<u64>() + staged + size <= max;
            // Whole batches, P3 first, then P2, oldest first; never P0/P1.
            for lane in [Priority::P3 as u8, Priority::P2 as u8] {
                while !fits(shared) {
                    match shared.evict_oldest(lane)? {
                        Some(gone) => evicted.extend(gone),
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

        let batch = match &mut self.batches[p as usize] {
            Some(batch) => batch,
            slot => slot.insert(StagedBatch {
                // From 1: a high-water mark of 0 means "nothing written".
                seq: shared.tree(p).generate_id()? + 1,
                events: Vec::new(),
                identities: Vec::new(),
            }),
        };
        let key = EntryKey {
            priority: p,
            batch: batch.seq,
            index: batch.events.len() as u32,
        };
        batch.events.push(encoded);
        batch.identities.push(identity.clone());
        self.staged.insert(identity, key);
        self.staged_bytes += size;
        Ok(Appended::New {
            key,
            evicted,
            over_quota,
        })
    }

    /// Writes what is staged, one record per priority, one sled batch per
    /// lane (not yet durable: flush).
    pub fn commit(self) -> Result<(), JournalError> {
        let Staging {
            shared,
            alarm_order,
            bulk_order,
            batches,
            ..
        } = self;
        let mut writes: [Option<(sled::Batch, u64)>; 2] = Default::default();
        let mut indexed = Vec::new();
        for (priority, staged) in batches.into_iter().enumerate() {
            let Some(staged) = staged else { continue };
            let priority = priority as u8;
            let record = encode_record(priority, staged.seq, &staged.events);
            let bytes = 9 + record.len() as u64;
            let (batch, hwm) = writes[lane_of(priority)].get_or_insert_with(Default::default);
            batch.insert(&batch_key(priority, staged.seq)[..], record);
            *hwm = (*hwm).max(staged.seq);
            indexed.push((priority, staged.seq, staged.identities, bytes));
        }
        // Indexed before written: the uplink reads a batch's events only
        // if the index calls them pending, so it must never see the record
        // first.
        let mut emptied = Vec::new();
        {
            let mut index = shared.index();
            for (priority, seq, identities, bytes) in &indexed {
                shared.index_batch(
                    &mut index,
                    *priority,
                    *seq,
                    identities
                        .iter()
                        .map(|(device_id, seq)| (device_id.as_str(), *seq)),
                    *bytes,
                    &mut emptied,
                );
            }
        }
        for (lane, write) in writes.into_iter().enumerate() {
            let Some((mut batch, hwm)) = write else {
                continue;
            };
            batch.insert(HWM_KEY, &hwm.to_be_bytes()[..]);
            if let Err(err) = shared.lanes[lane].db.apply_batch(batch) {
                // Not written: out of the index again (the journal is
                // restarted in place after a failed write anyway).
                let mut index = shared.index();
                for (priority, seq, identities, _) in &indexed {
                    if lane_of(*priority) != lane {
                        continue;
                    }
                    for (device_id, event_seq) in identities {
                        if let Some(device) = index.device(device_id) {
                            index.pending.remove(&(device, *event_seq));
                        }
                    }
                    if let Some(info) = index.batches.remove(&(*priority, *seq)) {
                        shared.depth[*priority as usize]
                            .fetch_sub(u64::from(info.pending), Ordering::Relaxed);
                        shared.bytes[*priority as usize].fetch_sub(info.bytes, Ordering::Relaxed);
                    }
                }
                return Err(err.into());
            }
            shared.lanes[lane].written.fetch_max(hwm, Ordering::AcqRel);
        }
        drop((bulk_order, alarm_order));
        shared.delete_batches(&emptied)?;
        Ok(())
    }
}
