//! The journal's record format (see the module's documentation): keys in
//! send order, the per-device index, what an entry holds, the quota.

use anxin_proto::{Priority, v1::UplinkEvent};
use prost::Message;

pub(super) const FORMAT_V1: u8 = 1;
pub(super) const JOURNAL_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Written after a clean shutdown's last flush: the depth per priority.
pub const CLEAN_MARKER: &str = "anxin-clean";
/// Side tree of journal facts; `SEQ_OFFSET` is where the gateway's own seqs
/// start after a damaged journal was replaced (a fresh id generator starts
/// at 0 and would reuse identities the server already has).
pub(super) const META: &str = "meta";
pub(super) const SEQ_OFFSET: &str = "gateway_seq_offset";
/// Prefix of the folders damaged journals are moved into.
pub const DAMAGED_PREFIX: &str = "damaged-";
/// The device roster from the server lives beside the journal's files, not
/// in them: a damaged journal moved aside must not take the list of
/// devices the gateway may admit with it (`roster.rs`).
pub const ROSTER_FILE: &str = "anxin-roster.pb";
pub(super) const ENTRY: u8 = b'e';
pub(super) const INDEX: u8 = b'i';

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
pub struct EntryKey(pub(super) [u8; 10]);

impl EntryKey {
    pub(super) fn new(priority: Priority, journal_seq: u64) -> Self {
        Self::new_raw(priority as u8, journal_seq)
    }

    pub(super) fn parse(bytes: &[u8]) -> Result<Self, JournalError> {
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

    pub(super) fn new_raw(lane: u8, journal_seq: u64) -> Self {
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
pub struct Cursor(pub(super) [Option<EntryKey>; 4]);

pub(super) fn index_key(device_id: &str, seq: u64) -> Vec<u8> {
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

/// Logical size of one journaled event: entry key and value, index key and
/// value.
pub(super) fn record_bytes(value_len: usize, device_id: &str) -> u64 {
    (10 + value_len + (device_id.len() + 10) + 10) as u64
}

pub(super) fn decode_record(key: &[u8], value: &[u8]) -> Result<UplinkEvent, JournalError> {
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

pub(super) fn identity_of(key: &[u8], value: &[u8]) -> Result<(String, u64), JournalError> {
    let event = decode_record(key, value)?
        .event
        .ok_or_else(|| JournalError::Corrupt {
            key: key.to_vec(),
            reason: "record without event".into(),
        })?;
    Ok((event.device_id, event.seq))
}
