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
//! # Quota (guarantee 4)
//! The journal counts its logical bytes (keys and values of both key
//! spaces) per priority. An append that would pass the quota first evicts
//! the oldest P3 entries, then the oldest P2; P0/P1 are never evicted. If
//! that is not enough, a new P2/P3 event is refused, while a P0/P1 event is
//! still accepted over quota: life-safety events are never turned away, the
//! caller raises a local alarm instead.
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

    fn parse(bytes: &[u8]) -> Result<Self, JournalError> {
        let key: Option<[u8; 10]> = bytes.try_into().ok();
        key.filter(|k| k[0] == ENTRY && k[1] <= 3)
            .map(Self)
            .ok_or_else(|| JournalError::Corrupt {
                key: bytes.to_vec(),
                reason: "malformed entry key".into(),
            })
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

/// The journal's size limit, in logical bytes.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    max_bytes: Option<u64>,
}

impl Quota {
    pub fn bytes(max_bytes: u64) -> Self {
        Self {
            max_bytes: Some(max_bytes),
        }
    }

    pub fn unlimited() -> Self {
        Self { max_bytes: None }
    }
}

/// An event pushed out of the journal to make room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub device_id: String,
    pub seq: u64,
    pub priority: usize,
}

/// What `append` did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Newly written (durable after the next flush). `evicted` lists the
    /// lower-priority events removed to make room; `over_quota` is set when
    /// a P0/P1 event was accepted although the quota is spent.
    New {
        key: EntryKey,
        evicted: Vec<Evicted>,
        over_quota: bool,
    },
    /// Already in the journal: a device retransmission.
    Duplicate(EntryKey),
    /// A P2/P3 event refused: the quota is full of P0/P1 events.
    Refused,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: EntryKey,
    pub event: UplinkEvent,
}

struct Shared {
    db: sled::Db,
    tree: sled::Tree,
    quota: Quota,
    depth: [AtomicU64; 4],
    bytes: [AtomicU64; 4],
    appended: Notify,
}

/// Ingest's handle: appends and flushes.
#[derive(Clone)]
pub struct JournalWriter(Arc<Shared>);

/// The uplink's handle: reads in send order and deletes what the server has.
#[derive(Clone)]
pub struct JournalReader(Arc<Shared>);

/// Opens (or creates) the journal at `path`.
pub fn open(path: &Path, quota: Quota) -> Result<(JournalWriter, JournalReader), JournalError> {
    let db = sled::Config::new()
        .path(path)
        // We flush explicitly before every `stored` ack; sled's background
        // flush only adds writes.
        .flush_every_ms(None)
        .open()?;
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
    });
    Ok((JournalWriter(shared.clone()), JournalReader(shared)))
}

/// Logical size of one journaled event: entry key and value, index key and
/// value.
fn record_bytes(value_len: usize, device_id: &str) -> u64 {
    (10 + value_len + (device_id.len() + 10) + 10) as u64
}

fn decode_record(key: &[u8], value: &[u8]) -> Result<UplinkEvent, JournalError> {
    let corrupt = |reason: String| JournalError::Corrupt {
        key: key.to_vec(),
        reason,
    };
    let (format, body) = value
        .split_first()
        .ok_or_else(|| corrupt("empty record".into()))?;
    if *format != FORMAT_V1 {
        return Err(corrupt(format!("unknown record format {format}")));
    }
    UplinkEvent::decode(body).map_err(|e| corrupt(e.to_string()))
}

fn identity_of(key: &[u8], value: &[u8]) -> Result<(String, u64), JournalError> {
    let event = decode_record(key, value)?
        .event
        .ok_or_else(|| JournalError::Corrupt {
            key: key.to_vec(),
            reason: "record without event".into(),
        })?;
    Ok((event.device_id, event.seq))
}

impl Shared {
    fn depth(&self) -> [u64; 4] {
        std::array::from_fn(|p| self.depth[p].load(Ordering::Relaxed))
    }

    fn bytes(&self) -> [u64; 4] {
        std::array::from_fn(|p| self.bytes[p].load(Ordering::Relaxed))
    }

    /// Removes an entry and its index atomically; `None` if it was already
    /// gone (the writer's eviction and the reader's delete may race).
    fn remove_entry(&self, key: &EntryKey, index: &[u8]) -> Result<Option<()>, JournalError> {
        let removed: Result<Option<usize>, sled::transaction::TransactionError<()>> =
            self.tree.transaction(|tree| {
                let Some(value) = tree.remove(&key.0[..])? else {
                    return Ok(None);
                };
                tree.remove(index)?;
                Ok(Some(value.len()))
            });
        let removed = removed.map_err(|e| match e {
            sled::transaction::TransactionError::Storage(e) => JournalError::Storage(e),
            sled::transaction::TransactionError::Abort(()) => unreachable!("never aborts"),
        })?;
        Ok(removed.map(|value_len| {
            // The index key is device_id plus 10 bytes, as in record_bytes.
            let size = (10 + value_len + index.len() + 10) as u64;
            self.depth[key.priority()].fetch_sub(1, Ordering::Relaxed);
            self.bytes[key.priority()].fetch_sub(size, Ordering::Relaxed);
        }))
    }

    /// Evicts the oldest entry of one lane, if any.
    fn evict_oldest(&self, priority: u8) -> Result<Option<Evicted>, JournalError> {
        let Some(item) = self.tree.scan_prefix([ENTRY, priority]).next() else {
            return Ok(None);
        };
        let (raw_key, value) = item?;
        let key = EntryKey::parse(&raw_key)?;
        let (device_id, seq) = identity_of(&raw_key, &value)?;
        self.remove_entry(&key, &index_key(&device_id, seq))?;
        Ok(Some(Evicted {
            device_id,
            seq,
            priority: priority as usize,
        }))
    }
}

impl JournalWriter {
    /// Writes the event unless the journal already holds `(device_id, seq)`.
    /// Not durable until [`JournalWriter::flush`] returns.
    pub fn append(&self, event: &DeviceEvent, stored_ms: i64) -> Result<Appended, JournalError> {
        let shared = &self.0;
        let index = index_key(&event.device_id, event.seq);
        if let Some(existing) = shared.tree.get(&index)? {
            return Ok(Appended::Duplicate(EntryKey::parse(&existing)?));
        }
        let priority = event.priority();
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
            let fits = |shared: &Shared| shared.bytes().iter().sum::<u64>() + size <= max;
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
        let mut batch = sled::Batch::default();
        batch.insert(&key.0[..], value);
        batch.insert(index, &key.0[..]);
        shared.tree.apply_batch(batch)?;
        shared.depth[priority as usize].fetch_add(1, Ordering::Relaxed);
        shared.bytes[priority as usize].fetch_add(size, Ordering::Relaxed);
        Ok(Appended::New {
            key,
            evicted,
            over_quota,
        })
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

    /// Logical bytes in the journal, per priority.
    pub fn bytes(&self) -> [u64; 4] {
        self.0.bytes()
    }

    /// A fresh seq from the range reserved for events the gateway raises on
    /// a device's behalf; crash-safe and increasing.
    pub fn gateway_seq(&self) -> Result<u64, JournalError> {
        Ok(anxin_proto::GATEWAY_SEQ_BASE | self.0.db.generate_id()?)
    }

    /// A side tree in the journal's database, for small state that must
    /// survive restarts with the journal (supervision flags).
    pub fn aux_tree(&self, name: &str) -> Result<sled::Tree, JournalError> {
        Ok(self.0.db.open_tree(name)?)
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
            let key = EntryKey::parse(&raw_key)?;
            if in_flight.contains(&key) {
                continue;
            }
            let event = decode_record(&raw_key, &value)?;
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
        let key = EntryKey::parse(&raw)?;
        Ok(shared.remove_entry(&key, &index)?.map(|()| key))
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
        let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
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
            let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
            writer.append(&event("a", 1, EventKind::Sos), 5).unwrap();
            writer
                .append(&event("a", 2, EventKind::Heartbeat), 6)
                .unwrap();
            writer.flush().await.unwrap();
            assert!(reader.remove("a", 2).unwrap().is_some());
            assert!(reader.remove("a", 2).unwrap().is_none());
            reader.flush().await.unwrap();
        }
        let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
        assert_eq!(pending_ids(&reader), vec![("a".into(), 1)]);
        assert_eq!(reader.depth(), [1, 0, 0, 0]);
        // The journal seq keeps increasing across reopen: FIFO holds.
        writer.append(&event("z", 1, EventKind::Sos), 7).unwrap();
        assert_eq!(pending_ids(&reader), vec![("a".into(), 1), ("z".into(), 1)]);
    }

    #[tokio::test]
    async fn pending_skips_in_flight_and_respects_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
        let mut keys = Vec::new();
        for seq in 1..=5 {
            match writer.append(&event("a", seq, EventKind::Sos), 0).unwrap() {
                Appended::New { key, .. } => keys.push(key),
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

    #[tokio::test]
    async fn quota_evicts_p3_then_p2_oldest_first_and_never_p0_or_p1() {
        let dir = tempfile::tempdir().unwrap();
        // Room for about ten records of this size.
        let one = record_bytes(
            1 + UplinkEvent {
                event: Some(event("d", 1, EventKind::Telemetry)),
                stored_ms: 0,
            }
            .encoded_len(),
            "d",
        );
        let (writer, reader) = open(dir.path(), Quota::bytes(one * 10)).unwrap();
        for seq in 1..=8 {
            writer
                .append(&event("d", seq, EventKind::Telemetry), 0)
                .unwrap();
        }
        writer
            .append(&event("d", 9, EventKind::LowBattery), 0)
            .unwrap();
        writer
            .append(&event("d", 10, EventKind::LowBattery), 0)
            .unwrap();
        assert_eq!(reader.depth(), [0, 0, 2, 8]);

        // A P0 at the quota evicts the oldest P3.
        let Appended::New {
            evicted,
            over_quota,
            ..
        } = writer.append(&event("d", 11, EventKind::Sos), 0).unwrap()
        else {
            panic!("P0 must be stored")
        };
        assert_eq!(
            evicted
                .iter()
                .map(|e| (e.seq, e.priority))
                .collect::<Vec<_>>(),
            vec![(1, 3)]
        );
        assert!(!over_quota);

        // More life-safety events push out every P3, then the P2s, oldest first.
        let mut evicted_order = Vec::new();
        for seq in 12..=21 {
            match writer.append(&event("d", seq, EventKind::Fall), 0).unwrap() {
                Appended::New { evicted, .. } => {
                    evicted_order.extend(evicted.into_iter().map(|e| e.seq))
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(evicted_order, vec![2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(reader.depth(), [11, 0, 0, 0]);

        // Full of P0: telemetry is refused, a P1 or P0 still goes in.
        assert_eq!(
            writer
                .append(&event("d", 30, EventKind::Telemetry), 0)
                .unwrap(),
            Appended::Refused
        );
        assert_eq!(
            writer
                .append(&event("d", 31, EventKind::LowBattery), 0)
                .unwrap(),
            Appended::Refused
        );
        let Appended::New {
            over_quota,
            evicted,
            ..
        } = writer
            .append(&event("d", 32, EventKind::DeviceOffline), 0)
            .unwrap()
        else {
            panic!("P1 must be stored")
        };
        assert!(over_quota && evicted.is_empty());
        assert_eq!(reader.depth(), [11, 1, 0, 0]);

        // Byte accounting survives a reopen.
        let bytes = reader.bytes();
        drop((writer, reader));
        let (_, reader) = open(dir.path(), Quota::bytes(one * 10)).unwrap();
        assert_eq!(reader.bytes(), bytes);
    }

    #[tokio::test]
    async fn a_p0_behind_100k_queued_telemetry_events_goes_out_first() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
        for seq in 1..=100_000 {
            writer
                .append(&event("meter", seq, EventKind::Telemetry), 0)
                .unwrap();
        }
        writer.append(&event("btn", 1, EventKind::Sos), 0).unwrap();
        writer.flush().await.unwrap();
        let next = reader.pending(&HashSet::new(), 2).unwrap();
        let ids: Vec<_> = next
            .iter()
            .map(|e| {
                let ev = e.event.event.as_ref().unwrap();
                (ev.device_id.as_str(), ev.seq)
            })
            .collect();
        assert_eq!(ids, vec![("btn", 1), ("meter", 1)]);
    }
}
