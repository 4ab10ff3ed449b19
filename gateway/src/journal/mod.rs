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

mod format;
mod marker;
mod open;
mod reader;
mod recovery;
mod shared;
#[cfg(test)]
mod tests;
mod writer;

pub use format::{
    Appended, CLEAN_MARKER, Cursor, DAMAGED_PREFIX, Entry, EntryKey, Evicted, JournalError, Quota,
    ROSTER_FILE,
};
pub use open::open;
pub use reader::JournalReader;
pub use recovery::{Recovery, open_or_recover};
pub use writer::{JournalWriter, Staging};
