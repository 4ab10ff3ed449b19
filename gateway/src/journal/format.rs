//! The journal's record format (see the module's documentation): batch
//! records with their own checksum, keys in send order, what an entry
//! holds, the quota.

use anxin_proto::{Priority, v1::UplinkEvent};
use prost::Message;

/// Written after a clean shutdown's last flush: the depth per priority.
pub const CLEAN_MARKER: &str = "anxin-clean";
/// The high-water marks of what was flushed (`seal.rs`).
pub const SEAL_FILE: &str = "anxin-seal";
/// Side tree of journal facts (in the alarm lane's database); `SEQ_OFFSET`
/// is where the gateway's own seqs start after a damaged journal was
/// replaced (a fresh id generator starts at 0 and would reuse identities
/// the server already has).
pub(super) const META: &str = "meta";
pub(super) const SEQ_OFFSET: &str = "gateway_seq_offset";
/// Prefix of the folders damaged journals are moved into.
pub const DAMAGED_PREFIX: &str = "damaged-";
/// Where the lanes are copied before sled opens them after a crash: sled's
/// recovery shreds a log after a damaged record, and salvage needs the
/// batches that were there.
pub const PRE_OPEN_COPY: &str = "pre-open-copy";
/// The device roster from the server lives beside the journal's files, not
/// in them: a damaged journal moved aside must not take the list of
/// devices the gateway may admit with it (`roster.rs`).
pub const ROSTER_FILE: &str = "anxin-roster.pb";
/// The two lane databases' folders: P0/P1 and P2/P3.
pub const LANE_DIRS: [&str; 2] = ["alarm", "bulk"];
/// Key of a lane database's high-water mark: the highest batch seq written,
/// updated in the same sled batch as the record (compared with the seal at
/// open). Never a batch key: those are 9 bytes starting with 0..=3.
pub(super) const HWM_KEY: &[u8] = b"~hwm";

pub(super) const MAGIC: [u8; 4] = *b"AXJB";
pub(super) const FORMAT_V2: u8 = 2;
/// magic, format, CRC32C of the body, body length.
pub(super) const HEADER_LEN: usize = 4 + 1 + 4 + 4;
/// priority, batch seq, event count.
pub(super) const BODY_PREFIX_LEN: usize = 1 + 8 + 4;
/// A batch never holds more: the largest ingest round is far smaller.
pub(super) const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

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

/// Which lane database holds a priority: 0 (alarm) for P0/P1, 1 (bulk).
pub(super) fn lane_of(priority: u8) -> usize {
    usize::from(priority >= Priority::P2 as u8)
}

/// A batch's sled key: priority ‖ batch seq (BE), so key order is send
/// order: by priority, then FIFO (batch seqs come from the lane database's
/// crash-safe monotonic id generator).
pub(super) fn batch_key(priority: u8, seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = priority;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn parse_batch_key(bytes: &[u8]) -> Option<(u8, u64)> {
    let key: [u8; 9] = bytes.try_into().ok()?;
    (key[0] <= 3).then(|| (key[0], u64::from_be_bytes(key[1..].try_into().unwrap())))
}

/// Position of an event in the journal (its batch and its place in it);
/// orders events in send order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    pub(super) priority: u8,
    pub(super) batch: u64,
    pub(super) index: u32,
}

impl EntryKey {
    pub fn priority(&self) -> usize {
        self.priority as usize
    }
}

/// Where an uplink connection is in each priority lane: the next event to
/// send, as (batch seq, index in it). A new connection starts from
/// [`Cursor::default`], the beginning.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cursor(pub(super) [(u64, u32); 4]);

impl Cursor {
    /// Back to the start of one lane: what the server deferred is sent
    /// again (it is still in the journal).
    pub fn rewind(&mut self, priority: usize) {
        self.0[priority] = (0, 0);
    }
}

/// The journal's size limit, in logical bytes.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub(super) max_bytes: Option<u64>,
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

/// Logical bytes one event adds to a batch record.
pub(super) fn event_bytes(encoded_len: usize) -> u64 {
    (4 + encoded_len) as u64
}

/// Logical bytes of a record besides its events (key, header).
pub(super) const RECORD_OVERHEAD: u64 = (9 + HEADER_LEN + BODY_PREFIX_LEN) as u64;

/// Encodes one batch record: header (magic, format, CRC32C of the body,
/// body length), then the body: priority, seq, count, and each event
/// length-prefixed. The header lets salvage find and check records in a
/// damaged file without sled.
pub(super) fn encode_record(priority: u8, seq: u64, events: &[Vec<u8>]) -> Vec<u8> {
    let body_len = BODY_PREFIX_LEN + events.iter().map(|e| 4 + e.len()).sum::<usize>();
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_V2);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.push(priority);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for event in events {
        out.extend_from_slice(&(event.len() as u32).to_le_bytes());
        out.extend_from_slice(event);
    }
    let crc = crc32c::crc32c(&out[HEADER_LEN..]);
    out[5..9].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A record checked and split: its key and its events' encodings.
pub(super) struct Record<'a> {
    pub(super) priority: u8,
    pub(super) seq: u64,
    pub(super) events: Vec<&'a [u8]>,
}

/// Checks a record (its length, its CRC32C, its events' framing).
pub(super) fn check_record(value: &[u8]) -> Result<Record<'_>, String> {
    if value.len() < HEADER_LEN + BODY_PREFIX_LEN {
        return Err("shorter than a record header".into());
    }
    if value[..4] != MAGIC {
        return Err("no record magic".into());
    }
    if value[4] != FORMAT_V2 {
        return Err(format!("unknown record format {}", value[4]));
    }
    let crc = u32::from_le_bytes(value[5..9].try_into().unwrap());
    let body_len = u32::from_le_bytes(value[9..13].try_into().unwrap()) as usize;
    let body = value
        .get(HEADER_LEN..HEADER_LEN + body_len)
        .ok_or("body shorter than its length")?;
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    let priority = body[0];
    if priority > 3 {
        return Err(format!("priority {priority}"));
    }
    let seq = u64::from_be_bytes(body[1..9].try_into().unwrap());
    let count = u32::from_le_bytes(body[9..13].try_into().unwrap()) as usize;
    let mut events = Vec::with_capacity(count.min(body_len / 4));
    let mut rest = &body[BODY_PREFIX_LEN..];
    for _ in 0..count {
        let len = rest
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
            .ok_or("event framing")?;
        let event = rest.get(4..4 + len).ok_or("event framing")?;
        events.push(event);
        rest = &rest[4 + len..];
    }
    if !rest.is_empty() {
        return Err("bytes after the last event".into());
    }
    Ok(Record {
        priority,
        seq,
        events,
    })
}

/// The record at `key`, checked, with its events decoded.
pub(super) fn decode_record(key: &[u8], value: &[u8]) -> Result<Vec<UplinkEvent>, JournalError> {
    let corrupt = |reason: String| JournalError::Corrupt {
        key: key.to_vec(),
        reason,
    };
    let record = check_record(value).map_err(corrupt)?;
    if batch_key(record.priority, record.seq)[..] != *key {
        return Err(corrupt("record holds another key".into()));
    }
    record
        .events
        .iter()
        .map(|bytes| UplinkEvent::decode(*bytes).map_err(|e| corrupt(e.to_string())))
        .collect()
}

/// An event's identity, `(device_id, seq)`.
pub(super) fn identity(event: &UplinkEvent) -> (&str, u64) {
    event
        .event
        .as_ref()
        .map(|e| (e.device_id.as_str(), e.seq))
        .unwrap_or(("", 0))
}

/// Where raw scanning found an intact record in a file (salvage; and tests
/// that measure what damage touched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpan {
    pub file: std::path::PathBuf,
    pub offset: u64,
    pub len: u64,
    pub priority: u8,
    pub seq: u64,
    pub events: u32,
}

/// Every intact record in `bytes` (found by its magic, kept if its CRC
/// holds), checked, with its offset and length; `bad` counts places where
/// a record header was found but its record did not check.
pub(super) fn scan_bytes<'a>(bytes: &'a [u8], bad: &mut u64) -> Vec<(usize, usize, Record<'a>)> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(pos) = find(&bytes[at..], &MAGIC) {
        let start = at + pos;
        let header = &bytes[start..];
        let total = header
            .get(9..13)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize + HEADER_LEN);
        let checked = total
            .filter(|total| *total <= MAX_RECORD_BYTES && header.len() >= *total)
            .and_then(|total| Some((total, check_record(&header[..total]).ok()?)));
        match checked {
            Some((total, record)) => {
                found.push((start, total, record));
                at = start + total;
            }
            None => {
                if header.get(4) == Some(&FORMAT_V2) {
                    *bad += 1;
                }
                at = start + 1;
            }
        }
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every intact record in every file under `dir` (recursively).
pub fn scan_records(dir: &std::path::Path) -> std::io::Result<(Vec<RecordSpan>, u64)> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    let mut spans = Vec::new();
    let mut bad = 0;
    for file in files {
        let bytes = std::fs::read(&file)?;
        for (offset, len, record) in scan_bytes(&bytes, &mut bad) {
            spans.push(RecordSpan {
                file: file.clone(),
                offset: offset as u64,
                len: len as u64,
                priority: record.priority,
                seq: record.seq,
                events: record.events.len() as u32,
            });
        }
    }
    Ok((spans, bad))
}

pub(super) fn collect_files(
    dir: &std::path::Path,
    out: &mut Vec<std::path::PathBuf>,
) -> std::io::Result<()> {
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        if item.file_type()?.is_dir() {
            collect_files(&item.path(), out)?;
        } else {
            out.push(item.path());
        }
    }
    Ok(())
}
