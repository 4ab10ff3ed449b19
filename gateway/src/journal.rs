//! The durable store-and-forward journal (sled).
//!
//! Keeps guarantee 1 (`stored` means on disk) and guarantee 3 (nothing
//! acknowledged is lost): an entry is written by ingest ([`JournalWriter`]),
//! flushed before the device hears `stored`, read in priority order by the
//! uplink ([`JournalReader`]), and deleted only when the server has
//! acknowledged it as `received`.
//!
//! # Record format (one sled tree, two key spaces, written in one batch)
//! - entry:  `b'e' ‖ priority (u8, 0 = P0) ‖ journal seq (u64 BE)` →
//!   `FORMAT_V1 (u8) ‖ UplinkEvent (protobuf)`.
//!   Key order is the send order: by priority, FIFO within one (journal seqs
//!   come from sled's crash-safe monotonic id generator).
//! - index:  `b'i' ‖ device_id ‖ 0x00 ‖ device seq (u64 BE)` → entry key.
//!   Lets ingest collapse a device's retransmissions and lets the uplink
//!   delete by event identity.
//!
//! sled checksums its own log records; a torn write at a crash is discarded
//! by sled's recovery, and since the device only hears `stored` after the
//! flush, whatever is lost that way was never acknowledged.
//!
//! Failure modes: if the disk is full, `append` or `flush` fails; ingest then
//! sends no `stored` ack and the device keeps retrying.

use std::{
    collections::HashSet,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anxin_proto::{DeviceEvent, Priority, v1::UplinkEvent};
use prost::Message;
use tokio::sync::Notify;

const FORMAT_V1: u8 = 1;
const ENTRY: u8 = b'e';
const INDEX: u8 = b'i';

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("journal record {key:?} is unreadable: {reason}")]
    Corrupt { key: Vec<u8>, reason: String },
}

/// Position of an entry in the journal; orders entries in send order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey([u8; 10]);

impl EntryKey {
    fn new(priority: Priority, journal_seq: u64) -> Self {
        let mut key = [0u8; 10];
        key[0] = ENTRY;
        key[1] = priority as u8;
        key[2..].copy_from_slice(&journal_seq.to_be_bytes());
        Self(key)
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        let key: [u8; 10] = bytes.try_into().ok()?;
        (key[0] == ENTRY && key[1] <= 3).then_some(Self(key))
    }

    pub fn priority(&self) -> usize {
        self.0[1] as usize
    }
}

fn index_key(device_id: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(device_id.len() + 10);
    key.push(INDEX);
    key.extend_from_slice(device_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// What `append` did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Newly written (durable after the next flush).
    New(EntryKey),
    /// Already in the journal: a device retransmission.
    Duplicate(EntryKey),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: EntryKey,
    pub event: UplinkEvent,
}

struct Shared {
    db: sled::Db,
    tree: sled::Tree,
    depth: [AtomicU64; 4],
    appended: Notify,
}

/// Ingest's handle: appends and flushes.
#[derive(Clone)]
pub struct JournalWriter(Arc<Shared>);

/// The uplink's handle: reads in send order and deletes what the server has.
#[derive(Clone)]
pub struct JournalReader(Arc<Shared>);

/// Opens (or creates) the journal at `path`.
pub fn open(path: &Path) -> Result<(JournalWriter, JournalReader), JournalError> {
    let db = sled::Config::new()
        .path(path)
        // We flush explicitly before every `stored` ack; sled's background
        // flush only adds writes.
        .flush_every_ms(None)
        .open()?;
    let tree = db.open_tree("journal")?;
    let depth: [AtomicU64; 4] = Default::default();
    for item in tree.scan_prefix([ENTRY]).keys() {
        let key = item?;
        let entry = EntryKey::from_slice(&key).ok_or_else(|| JournalError::Corrupt {
            key: key.to_vec(),
            reason: "malformed entry key".into(),
        })?;
        depth[entry.priority()].fetch_add(1, Ordering::Relaxed);
    }
    let shared = Arc::new(Shared {
        db,
        tree,
        depth,
        appended: Notify::new(),
    });
    Ok((JournalWriter(shared.clone()), JournalReader(shared)))
}

impl Shared {
    fn depth(&self) -> [u64; 4] {
        std::array::from_fn(|p| self.depth[p].load(Ordering::Relaxed))
    }
}

impl JournalWriter {
    /// Writes the event unless the journal already holds `(device_id, seq)`.
    /// Not durable until [`JournalWriter::flush`] returns.
    pub fn append(&self, event: &DeviceEvent, stored_ms: i64) -> Result<Appended, JournalError> {
        let shared = &self.0;
        let index = index_key(&event.device_id, event.seq);
        if let Some(existing) = shared.tree.get(&index)? {
            let key = EntryKey::from_slice(&existing).ok_or_else(|| JournalError::Corrupt {
                key: index.clone(),
                reason: "index points at a malformed key".into(),
            })?;
            return Ok(Appended::Duplicate(key));
        }
        let priority = event.priority();
        let key = EntryKey::new(priority, shared.db.generate_id()?);
        let record = UplinkEvent {
            event: Some(event.clone()),
            stored_ms,
        };
        let mut value = Vec::with_capacity(1 + record.encoded_len());
        value.push(FORMAT_V1);
        record.encode(&mut value).expect("Vec has capacity");

        let mut batch = sled::Batch::default();
        batch.insert(&key.0[..], value);
        batch.insert(index, &key.0[..]);
        shared.tree.apply_batch(batch)?;
        shared.depth[priority as usize].fetch_add(1, Ordering::Relaxed);
        Ok(Appended::New(key))
    }

    /// Makes every earlier append durable, then wakes the uplink. One flush
    /// covers all appends before it (group commit).
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.0.db.flush_async().await?;
        self.0.appended.notify_one();
        Ok(())
    }

    pub fn depth(&self) -> [u64; 4] {
        self.0.depth()
    }
}

impl JournalReader {
    /// Up to `limit` entries in send order (priority, then FIFO), skipping
    /// those in `in_flight`.
    pub fn pending(
        &self,
        in_flight: &HashSet<EntryKey>,
        limit: usize,
    ) -> Result<Vec<Entry>, JournalError> {
        let mut entries = Vec::new();
        for item in self.0.tree.scan_prefix([ENTRY]) {
            if entries.len() >= limit {
                break;
            }
            let (raw_key, value) = item?;
            let corrupt = |reason: &str| JournalError::Corrupt {
                key: raw_key.to_vec(),
                reason: reason.into(),
            };
            let key = EntryKey::from_slice(&raw_key).ok_or_else(|| corrupt("malformed key"))?;
            if in_flight.contains(&key) {
                continue;
            }
            let (format, body) = value.split_first().ok_or_else(|| corrupt("empty record"))?;
            if *format != FORMAT_V1 {
                return Err(corrupt(&format!("unknown record format {format}")));
            }
            let event = UplinkEvent::decode(body).map_err(|e| corrupt(&e.to_string()))?;
            entries.push(Entry { key, event });
        }
        Ok(entries)
    }

    /// Deletes the event the server acknowledged as received. Returns the
    /// entry's key, or `None` if the journal did not hold it (an ack for a
    /// retransmission already deleted).
    pub fn remove(&self, device_id: &str, seq: u64) -> Result<Option<EntryKey>, JournalError> {
        let shared = &self.0;
        let index = index_key(device_id, seq);
        let Some(raw) = shared.tree.get(&index)? else {
            return Ok(None);
        };
        let key = EntryKey::from_slice(&raw).ok_or_else(|| JournalError::Corrupt {
            key: index.clone(),
            reason: "index points at a malformed key".into(),
        })?;
        let mut batch = sled::Batch::default();
        batch.remove(&key.0[..]);
        batch.remove(index);
        shared.tree.apply_batch(batch)?;
        shared.depth[key.priority()].fetch_sub(1, Ordering::Relaxed);
        Ok(Some(key))
    }

    /// Resolves when ingest has flushed new entries since the last call.
    pub async fn appended(&self) {
        self.0.appended.notified().await
    }

    pub fn depth(&self) -> [u64; 4] {
        self.0.depth()
    }

    /// Flushes deletions (not needed for safety: an un-flushed delete is
    /// resent after a crash and the server deduplicates it).
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.0.db.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anxin_proto::EventKind;

    fn event(device: &str, seq: u64, kind: EventKind) -> DeviceEvent {
        DeviceEvent {
            device_id: device.into(),
            seq,
            kind: kind as i32,
            ..Default::default()
        }
    }

    fn pending_ids(reader: &JournalReader) -> Vec<(String, u64)> {
        reader
            .pending(&HashSet::new(), usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| {
                let ev = e.event.event.unwrap();
                (ev.device_id, ev.seq)
            })
            .collect()
    }

    #[tokio::test]
    async fn sends_by_priority_then_fifo_and_collapses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(dir.path()).unwrap();
        writer
            .append(&event("a", 1, EventKind::Telemetry), 0)
            .unwrap();
        writer
            .append(&event("a", 2, EventKind::LowBattery), 0)
            .unwrap();
        writer.append(&event("b", 1, EventKind::Sos), 0).unwrap();
        writer
            .append(&event("a", 3, EventKind::Telemetry), 0)
            .unwrap();
        writer.append(&event("c", 9, EventKind::Fall), 0).unwrap();
        assert!(matches!(
            writer.append(&event("b", 1, EventKind::Sos), 0).unwrap(),
            Appended::Duplicate(_)
        ));
        writer.flush().await.unwrap();
        assert_eq!(
            pending_ids(&reader),
            vec![
                ("b".into(), 1),
                ("c".into(), 9),
                ("a".into(), 2),
                ("a".into(), 1),
                ("a".into(), 3)
            ]
        );
        assert_eq!(reader.depth(), [2, 0, 1, 2]);
    }

    #[tokio::test]
    async fn entries_survive_reopen_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, reader) = open(dir.path()).unwrap();
            writer.append(&event("a", 1, EventKind::Sos), 5).unwrap();
            writer
                .append(&event("a", 2, EventKind::Heartbeat), 6)
                .unwrap();
            writer.flush().await.unwrap();
            assert!(reader.remove("a", 2).unwrap().is_some());
            assert!(reader.remove("a", 2).unwrap().is_none());
            reader.flush().await.unwrap();
        }
        let (writer, reader) = open(dir.path()).unwrap();
        assert_eq!(pending_ids(&reader), vec![("a".into(), 1)]);
        assert_eq!(reader.depth(), [1, 0, 0, 0]);
        // The journal seq keeps increasing across reopen: FIFO holds.
        writer.append(&event("z", 1, EventKind::Sos), 7).unwrap();
        assert_eq!(pending_ids(&reader), vec![("a".into(), 1), ("z".into(), 1)]);
    }

    #[tokio::test]
    async fn pending_skips_in_flight_and_respects_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(dir.path()).unwrap();
        let mut keys = Vec::new();
        for seq in 1..=5 {
            match writer.append(&event("a", seq, EventKind::Sos), 0).unwrap() {
                Appended::New(key) => keys.push(key),
                other => panic!("{other:?}"),
            }
        }
        let in_flight: HashSet<_> = keys[..2].iter().copied().collect();
        let next = reader.pending(&in_flight, 2).unwrap();
        let seqs: Vec<u64> = next
            .iter()
            .map(|e| e.event.event.as_ref().unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![3, 4]);
    }
}
