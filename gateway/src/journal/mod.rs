//! The durable store-and-forward journal (sled, as a log of batches).
//!
//! Keeps guarantee 1 (`stored` means on disk) and guarantee 3 (nothing
//! acknowledged is lost): an ingest round is written as one batch record
//! per priority ([`JournalWriter`]), flushed before the devices hear
//! `stored`, read in priority order by the uplink ([`JournalReader`]), and
//! deleted only when the server has acknowledged every event in it as
//! `received`.
//!
//! # Layout
//! Two sled databases, one per lane, each with its own flush, so an
//! alarm's flush never waits for a telemetry batch being written:
//! `alarm/` (P0/P1, plus the side trees: supervision flags, fired
//! fallbacks, gateway seq offset) and `bulk/` (P2/P3). Beside them: the
//! seal (`anxin-seal`), the clean-shutdown marker (`anxin-clean`), the
//! disk reserve and the roster, which are not the journal's.
//!
//! # Record format
//! key `priority (u8, 0 = P0) ‖ batch seq (u64 BE)` → `"AXJB" ‖ format 2 ‖
//! CRC32C of the body ‖ body length ‖ body`, the body being priority, batch
//! seq, event count and each `UplinkEvent` (protobuf) length-prefixed. Key
//! order is send order: by priority, FIFO within one (batch seqs come from
//! each database's crash-safe monotonic id generator). Each lane also keeps
//! its high-water mark (`~hwm`, the highest batch seq written) in the same
//! sled batch as each record. The header lets salvage find and check
//! records in a damaged file without sled.
//!
//! # Index (memory)
//! `(device, device seq)` → the event's place, for every event not yet
//! received, and per batch how many such events it holds. Rebuilt from the
//! batches at open (reading and checking every record). Ingest uses it to
//! collapse a device's retransmissions, the uplink to skip events already
//! received in a partly received batch, and acks to find the batch to
//! delete. Partial progress lives only here: after a restart a partly
//! received batch is sent whole again, and the server deduplicates.
//!
//! # Quota (guarantee 4)
//! The journal counts its logical bytes (records and keys) per priority. An
//! append that would pass the quota first evicts the oldest whole P3
//! batches, then P2; P0/P1 are never evicted. If that is not enough, a new
//! P2/P3 event is refused, while a P0/P1 event is still accepted over
//! quota: life-safety events are never turned away, the caller raises a
//! local alarm instead.
//!
//! # Disk space (see `anxin_host::disk`)
//! The quota counts logical bytes; the filesystem may run out first (sled's
//! files are larger than the logical bytes, and other programs share the
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
//! sled can panic or fail on a damaged file, and can also open a damaged
//! log silently shorter (it takes a damaged record for a torn write and
//! drops the log after it). [`open_or_recover`] finds all of these: a
//! panic or a corruption error at open, a record whose CRC does not hold,
//! a lane whose high-water mark is behind the seal (`seal.rs`: written
//! after flushes, at most once a second), fewer events than the
//! clean-shutdown marker promised, or files changed after a clean
//! shutdown. It moves the files aside into `damaged-{unix ms}/` (kept,
//! never deleted), salvages every intact batch (sled's view first, then
//! the raw files past every bad record), and starts a fresh journal with
//! them. A record found unreadable after open is skipped by the reader and
//! counted; the next start salvages it.

mod convert;
mod damage;
mod format;
mod marker;
mod open;
mod reader;
mod recovery;
mod seal;
mod shared;
#[cfg(test)]
mod tests;
mod writer;

pub use damage::Recovery;
pub use format::{
    Appended, CLEAN_MARKER, Cursor, DAMAGED_PREFIX, Entry, EntryKey, Evicted, JournalError,
    LANE_DIRS, Quota, ROSTER_FILE, RecordSpan, SEAL_FILE, scan_records,
};
pub use open::open;
pub use reader::JournalReader;
pub use recovery::open_or_recover;
pub use writer::{JournalWriter, Staging};
