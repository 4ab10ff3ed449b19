//! The reader (the uplink's side): entries in send order from a cursor,
//! deletes by event identity once the server has them.

use std::sync::Arc;

use anxin_proto::Priority;

use super::{format::*, shared::Shared};

/// The uplink's handle: reads in send order and deletes what the server has.
#[derive(Clone)]
pub struct JournalReader(pub(super) Arc<Shared>);

impl JournalReader {
    /// Up to `limit` entries in send order that come after `cursor` in
    /// their priority lane, advancing the cursor past them. The uplink keeps
    /// one cursor per connection: everything behind it was sent on that
    /// connection, so a refill reads only new entries instead of skipping
    /// over the whole in-flight window (which made each refill cost
    /// `window` reads).
    pub fn next_unsent(
        &self,
        cursor: &mut Cursor,
        limit: usize,
    ) -> Result<Vec<Entry>, JournalError> {
        let mut entries = Vec::new();
        for lane in 0..4u8 {
            if entries.len() >= limit {
                break;
            }
            let start = match cursor.0[lane as usize] {
                Some(last) => std::ops::Bound::Excluded(last.0),
                None => std::ops::Bound::Included(EntryKey::new_raw(lane, 0).0),
            };
            let end = std::ops::Bound::Included(EntryKey::new_raw(lane, u64::MAX).0);
            for item in self.0.tree.range::<[u8; 10], _>((start, end)) {
                if entries.len() >= limit {
                    break;
                }
                let (raw_key, value) = item?;
                let key = EntryKey::parse(&raw_key)?;
                cursor.0[lane as usize] = Some(key);
                entries.push(Entry {
                    key,
                    event: decode_record(&raw_key, &value)?,
                });
            }
        }
        Ok(entries)
    }

    /// Deletes the event the server acknowledged as received. Returns the
    /// entry's key, or `None` if the journal did not hold it (an ack for a
    /// retransmission already deleted).
    pub fn remove(&self, device_id: &str, seq: u64) -> Result<Option<EntryKey>, JournalError> {
        Ok(self.remove_many(&[(device_id, seq)])?.remove(0))
    }

    /// [`JournalReader::remove`] for a burst of acks, in one sled batch.
    pub fn remove_many(
        &self,
        events: &[(&str, u64)],
    ) -> Result<Vec<Option<EntryKey>>, JournalError> {
        let mut targets = Vec::with_capacity(events.len());
        let mut slots = Vec::with_capacity(events.len());
        for (device_id, seq) in events {
            let index = index_key(device_id, *seq);
            match self.0.tree.get(&index)? {
                Some(raw) => {
                    slots.push(Some(targets.len()));
                    targets.push((EntryKey::parse(&raw)?, index));
                }
                None => slots.push(None),
            }
        }
        let gone = self.0.remove_entries(&targets)?;
        Ok(slots
            .into_iter()
            .map(|slot| slot.filter(|i| gone[*i]).map(|i| targets[i].0))
            .collect())
    }

    /// The oldest entries of one priority lane, up to `limit`.
    pub fn lane(&self, priority: Priority, limit: usize) -> Result<Vec<Entry>, JournalError> {
        let mut entries = Vec::new();
        for item in self.0.tree.scan_prefix([ENTRY, priority as u8]).take(limit) {
            let (raw_key, value) = item?;
            let key = EntryKey::parse(&raw_key)?;
            entries.push(Entry {
                key,
                event: decode_record(&raw_key, &value)?,
            });
        }
        Ok(entries)
    }

    /// Whether the journal still holds `(device_id, seq)`.
    pub fn contains(&self, device_id: &str, seq: u64) -> Result<bool, JournalError> {
        Ok(self.0.tree.contains_key(index_key(device_id, seq))?)
    }

    /// A side tree in the journal's database (see [`JournalWriter::aux_tree`]).
    pub fn aux_tree(&self, name: &str) -> Result<sled::Tree, JournalError> {
        Ok(self.0.db.open_tree(name)?)
    }

    /// Physical size of the journal's files, as sled reports it.
    pub fn size_on_disk(&self) -> Result<u64, JournalError> {
        Ok(self.0.db.size_on_disk()?)
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

    /// Flushes deletions (not needed for safety: an un-flushed delete is
    /// resent after a crash and the server deduplicates it).
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.0.flush().await
    }
}
