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
//! # Disk space (see `anxin_host::disk`)
//! The quota counts logical bytes; the filesystem may run out first (sled's
//! files are several times the logical bytes, and other programs share the
//! disk). While the disk guard reports low space, a new P2/P3 event is
//! [`Appended::Deferred`]: no ack, the device keeps it and retries. Evicting
//! would not help there: a sled delete is an append and frees nothing until
//! a whole segment is dead. P0/P1 events are still written, into the space
//! the guard's reserve gives back.
//!
//! Failure modes: if a write or flush fails, ingest sends no `stored` ack
//! and the device keeps retrying; sled then refuses every later operation
//! until reopened, so the gateway restarts itself in place (main.rs).
//!
//! # Damage
//! sled can panic or fail on a damaged file (`tried to serialize
//! Uninitialized`), and can also open a damaged log silently shorter.
//! [`open_or_recover`] catches both: a panic or a corruption error at open,
//! or fewer entries than the clean-shutdown marker (`anxin-clean`) promised,
//! moves the files aside into `damaged-{unix ms}/` (kept, never deleted),
//! salvages what still reads, and starts a fresh journal with it.

use std::{
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
const JOURNAL_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Written after a clean shutdown's last flush: the depth per priority.
pub const CLEAN_MARKER: &str = "anxin-clean";
/// Side tree of journal facts; `SEQ_OFFSET` is where the gateway's own seqs
/// start after a damaged journal was replaced (a fresh id generator starts
/// at 0 and would reuse identities the server already has).
const META: &str = "meta";
const SEQ_OFFSET: &str = "gateway_seq_offset";
/// Prefix of the folders damaged journals are moved into.
pub const DAMAGED_PREFIX: &str = "damaged-";
/// The device roster from the server lives beside the journal's files, not
/// in them: a damaged journal moved aside must not take the list of
/// devices the gateway may admit with it (`roster.rs`).
pub const ROSTER_FILE: &str = "anxin-roster.pb";
const ENTRY: u8 = b'e';
const INDEX: u8 = b'i';

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("journal files: {0}")]
    Files(#[from] std::io::Error),
    #[error("the journal's storage engine panicked: {0}")]
    Panicked(String),
    #[error("journal record {key:?} is unreadable: {reason}")]
    Corrupt { key: Vec<u8>, reason: String },
    #[error("a {0:?} event was staged in the other lane's batch (a bug)")]
    WrongLane(Priority),
}

/// Position of an entry in the journal; orders entries in send order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey([u8; 10]);

impl EntryKey {
    fn new(priority: Priority, journal_seq: u64) -> Self {
        Self::new_raw(priority as u8, journal_seq)
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

    fn new_raw(lane: u8, journal_seq: u64) -> Self {
        let mut key = [0u8; 10];
        key[0] = ENTRY;
        key[1] = lane;
        key[2..].copy_from_slice(&journal_seq.to_be_bytes());
        Self(key)
    }
}

/// Where an uplink connection is in each priority lane: the last entry it
/// sent. A new connection starts from [`Cursor::default`], the beginning.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cursor([Option<EntryKey>; 4]);

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
    /// A P2/P3 event not taken now because disk space is low: no ack, the
    /// device keeps it and retries.
    Deferred,
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
    /// Set while the disk guard reports low space: P2/P3 are deferred.
    disk_low: std::sync::atomic::AtomicBool,
    /// Held from taking a journal seq to writing its entry, so entries
    /// become visible in seq order and the uplink's cursor never passes an
    /// entry still being written (ingest and supervision both append).
    /// One per lane group — [0] P0/P1, [1] P2/P3 — since cursors are kept
    /// per priority: an alarm never waits for a telemetry batch's lock.
    append_order: [std::sync::Mutex<()>; 2],
    /// Serialises deletes (the uplink's, and ingest's evictions), which
    /// check that an entry is still there before counting it gone.
    removal: std::sync::Mutex<()>,
}

/// Ingest's handle: appends and flushes.
#[derive(Clone)]
pub struct JournalWriter(Arc<Shared>);

/// The uplink's handle: reads in send order and deletes what the server has.
#[derive(Clone)]
pub struct JournalReader(Arc<Shared>);

/// Opens (or creates) the journal at `path`.
pub fn open(path: &Path, quota: Quota) -> Result<(JournalWriter, JournalReader), JournalError> {
    let db = open_db(path)?;
    build(db, quota)
}

fn open_db(path: &Path) -> Result<sled::Db, JournalError> {
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

fn build(db: sled::Db, quota: Quota) -> Result<(JournalWriter, JournalReader), JournalError> {
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
    /// fsyncs on tokio's blocking pool. (sled's `flush_async` runs on its
    /// own pool, which starts and retires a thread per flush under load: the
    /// profile showed hundreds of `sled-io-N` threads.)
    async fn flush(&self) -> Result<(), JournalError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .expect("journal flush task panicked")?;
        Ok(())
    }

    fn depth(&self) -> [u64; 4] {
        std::array::from_fn(|p| self.depth[p].load(Ordering::Relaxed))
    }

    fn bytes(&self) -> [u64; 4] {
        std::array::from_fn(|p| self.bytes[p].load(Ordering::Relaxed))
    }

    /// Removes entries and their indexes in one batch; for each, whether
    /// it was still there (the writer's eviction and the reader's delete
    /// may race; the removal lock makes check and delete one step).
    fn remove_entries(&self, targets: &[(EntryKey, Vec<u8>)]) -> Result<Vec<bool>, JournalError> {
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
    fn evict_oldest(&self, priority: u8) -> Result<Option<Evicted>, JournalError> {
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

    fn stage_lanes(&self, alarms: bool, bulk: bool) -> Staging<'_> {
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
    shared: &'a Shared,
    alarm_order: Option<std::sync::MutexGuard<'a, ()>>,
    bulk_order: Option<std::sync::MutexGuard<'a, ()>>,
    batch: sled::Batch,
    /// Index keys staged here, for duplicates within one batch.
    staged: std::collections::HashMap<Vec<u8>, EntryKey>,
    /// (events, bytes) staged per priority.
    added: [(u64, u64); 4],
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

/// What [`open_or_recover`] found wrong, and what it saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Why the journal was judged damaged.
    pub reason: String,
    /// Entries read back from the damaged files into the fresh journal.
    pub salvaged: u64,
    /// Entries the clean-shutdown marker promised, when there was one.
    pub expected: Option<u64>,
    /// Where the damaged files were moved (kept for forensics).
    pub kept_at: std::path::PathBuf,
}

impl Recovery {
    /// The one-line report for the log and the server.
    pub fn summary(&self) -> String {
        let others = match self.expected {
            Some(expected) if expected > self.salvaged => {
                format!("{} others lost", expected - self.salvaged)
            }
            Some(_) => "none lost".to_string(),
            None => "others unknown".to_string(),
        };
        format!(
            "journal damaged ({}): {} entries salvaged, {}; damaged files kept at {}",
            self.reason,
            self.salvaged,
            others,
            self.kept_at.display()
        )
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning a panic of the storage engine into an error.
fn unpanicked<T>(f: impl FnOnce() -> Result<T, JournalError>) -> Result<T, JournalError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(JournalError::Panicked(panic_text(payload))))
}

/// Whether an open failure means the files are damaged (rather than, say,
/// a full disk or a permission, which moving the files would not mend).
fn is_damage(err: &JournalError) -> bool {
    match err {
        JournalError::Storage(sled::Error::Io(io)) => io.kind() == std::io::ErrorKind::InvalidData,
        JournalError::Storage(sled::Error::Corruption { .. })
        | JournalError::Storage(sled::Error::ReportableBug(_))
        | JournalError::Storage(sled::Error::Unsupported(_))
        | JournalError::Panicked(_)
        | JournalError::Corrupt { .. } => true,
        JournalError::Storage(sled::Error::CollectionNotFound(_)) => true,
        JournalError::Files(_) | JournalError::WrongLane(_) => false,
    }
}

/// What a clean shutdown left: the entries it held and a digest of the
/// journal's files.
struct CleanMarker {
    entries: u64,
    digest: Option<String>,
}

fn read_clean_marker(dir: &Path) -> Option<CleanMarker> {
    let text = std::fs::read_to_string(dir.join(CLEAN_MARKER)).ok()?;
    let mut parts = text.split_whitespace();
    let entries = (0..4)
        .map(|_| parts.next()?.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some(CleanMarker {
        entries,
        digest: parts.next().filter(|d| !d.is_empty()).map(String::from),
    })
}

/// Journals bigger than this are not hashed at shutdown and start (the
/// check would delay start-up on a slow SD card); the entry count still is.
const DIGEST_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// SHA-256 over the journal's files (names and contents, in name order),
/// leaving out the reserve, the marker and damaged copies; `None` if they
/// are over [`DIGEST_MAX_BYTES`].
fn files_digest(dir: &Path) -> std::io::Result<Option<String>> {
    use sha2::Digest;
    fn collect(dir: &Path, top: bool, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if top
                && (name.starts_with(DAMAGED_PREFIX)
                    || name == CLEAN_MARKER
                    || name == anxin_host::disk::RESERVE_FILE
                    || name.starts_with(ROSTER_FILE))
            {
                continue;
            }
            if item.file_type()?.is_dir() {
                collect(&item.path(), false, out)?;
            } else {
                out.push(item.path());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    collect(dir, true, &mut files)?;
    files.sort();
    let mut total = 0;
    for file in &files {
        total += std::fs::metadata(file)?.len();
    }
    if total > DIGEST_MAX_BYTES {
        return Ok(None);
    }
    let mut hasher = sha2::Sha256::new();
    for file in &files {
        hasher.update(
            file.strip_prefix(dir)
                .unwrap_or(file)
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.update([0]);
        hasher.update(std::fs::read(file)?);
    }
    Ok(Some(hex::encode(hasher.finalize())))
}

/// Opens the journal at `path`; if it is damaged, moves it aside, salvages
/// what reads, and opens a fresh one holding the salvage. Never returns a
/// damage error: only failures that a fresh journal would meet too (disk
/// full, permissions). The clean-shutdown marker is consumed.
pub fn open_or_recover(
    path: &Path,
    quota: Quota,
) -> Result<(JournalWriter, JournalReader, Option<Recovery>), JournalError> {
    std::fs::create_dir_all(path)?;
    let marker = read_clean_marker(path);
    // After a clean shutdown nothing may touch the files: any change is
    // damage, even one sled would open without noticing.
    let changed = match &marker {
        Some(CleanMarker {
            digest: Some(digest),
            ..
        }) => files_digest(path)?.is_some_and(|now| now != *digest),
        _ => false,
    };
    let expected = marker.as_ref().map(|m| m.entries);
    let reason = if changed {
        // Not opened: sled's recovery would rewrite the evidence.
        "its files changed after a clean shutdown".to_string()
    } else {
        match unpanicked(|| open(path, quota)) {
            Ok((writer, reader)) => {
                let held: u64 = reader.depth().iter().sum();
                match expected {
                    Some(expected) if held < expected => {
                        drop((writer, reader));
                        format!("opened with {held} of the {expected} entries it held at shutdown")
                    }
                    _ => {
                        let _ = std::fs::remove_file(path.join(CLEAN_MARKER));
                        return Ok((writer, reader, None));
                    }
                }
            }
            Err(err) if is_damage(&err) => err.to_string(),
            Err(err) => return Err(err),
        }
    };
    let kept_at = path.join(format!("{DAMAGED_PREFIX}{}", anxin_proto::now_ms()));
    std::fs::create_dir(&kept_at)?;
    for item in std::fs::read_dir(path)? {
        let item = item?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(DAMAGED_PREFIX)
            || name == anxin_host::disk::RESERVE_FILE
            || name.starts_with(ROSTER_FILE)
        {
            continue;
        }
        std::fs::rename(item.path(), kept_at.join(&*name))?;
    }
    let salvage = salvage(&kept_at);
    let (writer, reader) = open(path, quota)?;
    // Milliseconds × 2^20: past any id the lost journal can have handed out.
    let offset = (anxin_proto::now_ms().max(0) as u64) << 20;
    writer
        .0
        .db
        .open_tree(META)?
        .insert(SEQ_OFFSET, &offset.to_be_bytes())?;
    let mut salvaged = 0;
    {
        let mut staging = writer.stage();
        for record in &salvage {
            if let Some(event) = &record.event
                && matches!(staging.add(event, record.stored_ms)?, Appended::New { .. })
            {
                salvaged += 1;
            }
        }
        staging.commit()?;
    }
    writer.0.db.flush()?;
    Ok((
        writer,
        reader,
        Some(Recovery {
            reason,
            salvaged,
            expected,
            kept_at,
        }),
    ))
}

/// Every entry that still reads in a damaged journal. sled may panic or
/// fail at open or at any record; whatever came before that is kept. Works
/// on a copy so the damaged files stay as they were found (sled's recovery
/// rewrites the log it opens); without room for a copy, reads nothing.
fn salvage(damaged: &Path) -> Vec<UplinkEvent> {
    let copy = damaged.join("salvage-copy");
    let copied = copy_dir(damaged, &copy, "salvage-copy");
    let mut found = Vec::new();
    if let Err(err) = copied {
        tracing::error!(error = %err, "no room to copy the damaged journal for salvage; nothing salvaged");
        let _ = std::fs::remove_dir_all(&copy);
        return found;
    }
    let result = unpanicked(|| {
        let db = open_db(&copy)?;
        let tree = db.open_tree("journal")?;
        for item in tree.scan_prefix([ENTRY]) {
            let Ok((key, value)) = item else { break };
            if let Ok(record) = decode_record(&key, &value) {
                found.push(record);
            }
        }
        Ok(())
    });
    if let Err(err) = result {
        tracing::warn!(error = %err, salvaged = found.len(), "salvage stopped at damage");
    }
    let _ = std::fs::remove_dir_all(&copy);
    found
}

fn copy_dir(from: &Path, to: &Path, skip: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for item in std::fs::read_dir(from)? {
        let item = item?;
        if item.file_name() == skip {
            continue;
        }
        let target = to.join(item.file_name());
        if item.file_type()?.is_dir() {
            copy_dir(&item.path(), &target, skip)?;
        } else {
            std::fs::copy(item.path(), target)?;
        }
    }
    Ok(())
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
            .next_unsent(&mut Cursor::default(), usize::MAX)
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

    fn seqs(entries: &[Entry]) -> Vec<u64> {
        entries
            .iter()
            .map(|e| e.event.event.as_ref().unwrap().seq)
            .collect()
    }

    #[tokio::test]
    async fn the_cursor_reads_only_unsent_entries_and_a_new_alarm_first() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
        for seq in 1..=5 {
            writer
                .append(&event("a", seq, EventKind::Telemetry), 0)
                .unwrap();
        }
        let mut cursor = Cursor::default();
        assert_eq!(
            seqs(&reader.next_unsent(&mut cursor, 2).unwrap()),
            vec![1, 2]
        );
        assert_eq!(
            seqs(&reader.next_unsent(&mut cursor, 2).unwrap()),
            vec![3, 4]
        );
        // An alarm raised after the cursor passed goes before the rest.
        writer.append(&event("b", 9, EventKind::Sos), 0).unwrap();
        assert_eq!(
            seqs(&reader.next_unsent(&mut cursor, 5).unwrap()),
            vec![9, 5]
        );
        assert!(reader.next_unsent(&mut cursor, 5).unwrap().is_empty());
        // A new connection starts over: nothing was deleted.
        assert_eq!(
            reader
                .next_unsent(&mut Cursor::default(), 10)
                .unwrap()
                .len(),
            6
        );
    }

    #[tokio::test]
    async fn one_staged_batch_dedupes_within_itself_and_removes_in_bulk() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
        let mut staging = writer.stage();
        assert!(matches!(
            staging.add(&event("a", 1, EventKind::Sos), 0).unwrap(),
            Appended::New { .. }
        ));
        assert!(matches!(
            staging.add(&event("a", 1, EventKind::Sos), 0).unwrap(),
            Appended::Duplicate(_)
        ));
        staging
            .add(&event("a", 2, EventKind::Telemetry), 0)
            .unwrap();
        // Nothing is visible before the commit.
        assert_eq!(reader.depth(), [0, 0, 0, 0]);
        staging.commit().unwrap();
        assert_eq!(reader.depth(), [1, 0, 0, 1]);
        let gone = reader
            .remove_many(&[("a", 1), ("a", 7), ("a", 2), ("a", 1)])
            .unwrap();
        assert_eq!(
            gone.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, true, false]
        );
        assert_eq!(reader.depth(), [0, 0, 0, 0]);
        assert_eq!(reader.bytes(), [0, 0, 0, 0]);
        assert!(pending_ids(&reader).is_empty());
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
    async fn a_clean_journal_reopens_as_is_and_a_changed_one_is_moved_aside_and_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, _) = open(dir.path(), Quota::unlimited()).unwrap();
            for seq in 1..=50 {
                writer
                    .append(&event("a", seq, EventKind::Telemetry), 0)
                    .unwrap();
            }
            writer.flush().await.unwrap();
            writer.mark_clean(dir.path()).unwrap();
        }
        // Untouched: no recovery, the marker is consumed.
        {
            let (writer, reader, recovery) =
                open_or_recover(dir.path(), Quota::unlimited()).unwrap();
            assert_eq!(recovery, None);
            assert_eq!(reader.depth(), [0, 0, 0, 50]);
            assert!(!dir.path().join(CLEAN_MARKER).exists());
            writer.mark_clean(dir.path()).unwrap();
        }
        // One byte changed after the clean stop: damage, even if sled would
        // not notice.
        let db = dir.path().join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&db, bytes).unwrap();
        let (writer, reader, recovery) = open_or_recover(dir.path(), Quota::unlimited()).unwrap();
        let recovery = recovery.expect("the change is found");
        assert_eq!(recovery.expected, Some(50));
        assert!(
            recovery.kept_at.join("db").exists(),
            "the damaged log is kept"
        );
        assert_eq!(reader.depth()[3], recovery.salvaged);
        assert!(recovery.summary().contains("entries salvaged"));
        // The gateway's own seqs continue past anything the lost journal
        // handed out.
        assert!(writer.gateway_seq().unwrap() > anxin_proto::GATEWAY_SEQ_BASE | 1 << 40);
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
        let next = reader.next_unsent(&mut Cursor::default(), 2).unwrap();
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
