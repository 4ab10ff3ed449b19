//! The reader (the uplink's side): pending events in send order from a
//! cursor, marked received by identity once the server has them.

use std::sync::{Arc, atomic::Ordering};

use anxin_proto::Priority;

use super::{format::*, shared::Shared};

/// The uplink's handle: reads in send order and deletes what the server has.
#[derive(Clone)]
pub struct JournalReader(pub(super) Arc<Shared>);

impl JournalReader {
    /// Up to `limit` pending events in send order that come after `cursor`
    /// in their priority lane, advancing the cursor past them. The uplink
    /// keeps one cursor per connection: everything behind it was sent on
    /// that connection, so a refill reads only new batches.
    pub fn next_unsent(
        &self,
        cursor: &mut Cursor,
        limit: usize,
    ) -> Result<Vec<Entry>, JournalError> {
        self.next_unsent_in(cursor, limit, [true; 4])
    }

    /// [`Self::next_unsent`] from the lanes marked open only (a lane the
    /// server deferred waits, the others go on).
    pub fn next_unsent_in(
        &self,
        cursor: &mut Cursor,
        limit: usize,
        open: [bool; 4],
    ) -> Result<Vec<Entry>, JournalError> {
        let mut entries = Vec::new();
        for priority in 0..4u8 {
            if entries.len() >= limit {
                break;
            }
            if !open[priority as usize] {
                continue;
            }
            let at = &mut cursor.0[priority as usize];
            self.read_lane(priority, at, limit, &mut entries)?;
        }
        Ok(entries)
    }

    /// Reads pending events of one priority from `at` (batch seq, index)
    /// until `out` holds `limit`, moving `at` past what it read.
    fn read_lane(
        &self,
        priority: u8,
        at: &mut (u64, u32),
        limit: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), JournalError> {
        let start = batch_key(priority, at.0);
        let end = batch_key(priority, u64::MAX);
        for item in self.0.tree(priority).range(start..=end) {
            if out.len() >= limit {
                break;
            }
            let (raw_key, value) = item?;
            let Some((_, seq)) = parse_batch_key(&raw_key) else {
                continue;
            };
            let from = if seq == at.0 { at.1 } else { 0 };
            let events = match decode_record(&raw_key, &value) {
                Ok(events) => events,
                Err(err) => {
                    // Damage met after open: skipped here (never a wedged
                    // uplink), counted, and found again by the next open's
                    // check, which sets the journal aside and salvages it.
                    self.0.corrupt_seen.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %err, "journal batch unreadable; skipped until the next start salvages it");
                    *at = (seq.saturating_add(1), 0);
                    continue;
                }
            };
            let index = self.0.index();
            let mut next = (seq.saturating_add(1), 0);
            for (n, event) in events.into_iter().enumerate().skip(from as usize) {
                if out.len() >= limit {
                    next = (seq, n as u32);
                    break;
                }
                let key = EntryKey {
                    priority,
                    batch: seq,
                    index: n as u32,
                };
                let (device_id, event_seq) = identity(&event);
                if index.is_pending(device_id, event_seq, key) {
                    out.push(Entry { key, event });
                }
            }
            *at = next;
        }
        Ok(())
    }

    /// Marks the event the server acknowledged as received (its batch is
    /// deleted once nothing in it is pending). Returns the event's key, or
    /// `None` if the journal did not hold it (an ack for a retransmission
    /// already received).
    pub fn remove(&self, device_id: &str, seq: u64) -> Result<Option<EntryKey>, JournalError> {
        Ok(self.remove_many(&[(device_id, seq)])?.remove(0))
    }

    /// [`JournalReader::remove`] for a burst of acks.
    pub fn remove_many(
        &self,
        events: &[(&str, u64)],
    ) -> Result<Vec<Option<EntryKey>>, JournalError> {
        self.0.receive(events)
    }

    /// The oldest pending events of one priority lane, up to `limit`.
    pub fn lane(&self, priority: Priority, limit: usize) -> Result<Vec<Entry>, JournalError> {
        let mut entries = Vec::new();
        self.read_lane(priority as u8, &mut (0, 0), limit, &mut entries)?;
        Ok(entries)
    }

    /// Whether the journal still holds `(device_id, seq)` pending.
    pub fn contains(&self, device_id: &str, seq: u64) -> Result<bool, JournalError> {
        Ok(self.0.index().find(device_id, seq).is_some())
    }

    /// A side tree in the journal's database (see [`JournalWriter::aux_tree`]).
    ///
    /// [`JournalWriter::aux_tree`]: super::JournalWriter::aux_tree
    pub fn aux_tree(&self, name: &str) -> Result<sled::Tree, JournalError> {
        Ok(self.0.lanes[0].db.open_tree(name)?)
    }

    /// Physical size of the journal's files, as sled reports it.
    pub fn size_on_disk(&self) -> Result<u64, JournalError> {
        let mut total = 0;
        for lane in &self.0.lanes {
            total += lane.db.size_on_disk()?;
        }
        Ok(total)
    }

    /// Resolves when ingest has flushed new entries since the last call.
    pub async fn appended(&self) {
        self.0.appended.notified().await
    }

    pub fn depth(&self) -> [u64; 4] {
        self.0.depth()
    }

    /// Logical bytes in the journal, per priority.
    pub fn bytes(&self) -> [u64; 4] {
        self.0.bytes()
    }

    /// Batch records found unreadable since open.
    pub fn corrupt_seen(&self) -> u64 {
        self.0.corrupt_seen.load(Ordering::Relaxed)
    }

    /// Flushes deletions (not needed for safety: an un-flushed delete is
    /// resent after a crash and the server deduplicates it).
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.0.flush_lane(0).await?;
        self.0.flush_lane(1).await
    }
}
