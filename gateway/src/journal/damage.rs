//! What finding damage and recovering from it share (`recovery.rs` for
//! today's format, `convert.rs` for the previous one): the report, a
//! storage panic turned into an error, which errors are damage, setting
//! files aside, and a fresh journal filled with what was salvaged.

use std::path::Path;

use anxin_proto::v1::UplinkEvent;

use super::{format::*, open::open, reader::JournalReader, writer::JournalWriter};

/// What [`open_or_recover`](super::open_or_recover) found wrong, and what
/// it saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Why the journal was judged damaged.
    pub reason: String,
    /// Events read back from the damaged files into the fresh journal.
    pub salvaged: u64,
    /// Intact batch records those events came from.
    pub salvaged_batches: u64,
    /// Places in the damaged files where a record was found but did not
    /// check (its bytes damaged); skipped, the reading went on past them.
    pub skipped: u64,
    /// Events the clean-shutdown marker promised, when there was one.
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
            "journal damaged ({}): {} entries salvaged from {} intact batches, {} damaged records skipped, {}; damaged files kept at {}",
            self.reason,
            self.salvaged,
            self.salvaged_batches,
            self.skipped,
            others,
            self.kept_at.display()
        )
    }
}

pub(super) fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning a panic of the storage engine into an error.
pub(super) fn unpanicked<T>(
    f: impl FnOnce() -> Result<T, JournalError>,
) -> Result<T, JournalError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(JournalError::Panicked(panic_text(payload))))
}

/// Whether an open failure means the files are damaged (rather than, say,
/// a full disk or a permission, which moving the files would not mend).
pub(super) fn is_damage(err: &JournalError) -> bool {
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

/// Moves the journal's files into `damaged-{unix ms}/`, leaving the
/// reserve, the roster and earlier damaged copies in place.
pub(super) fn set_aside(path: &Path) -> Result<std::path::PathBuf, JournalError> {
    let kept_at = path.join(format!("{DAMAGED_PREFIX}{}", anxin_proto::now_ms()));
    std::fs::create_dir(&kept_at)?;
    for item in std::fs::read_dir(path)? {
        let item = item?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(DAMAGED_PREFIX)
            || name == PRE_OPEN_COPY
            || name == anxin_host::disk::RESERVE_FILE
            || name.starts_with(ROSTER_FILE)
        {
            continue;
        }
        std::fs::rename(item.path(), kept_at.join(&*name))?;
    }
    Ok(kept_at)
}

/// What salvage read from damaged files.
#[derive(Default)]
pub(super) struct Salvage {
    /// In send order: by priority, then as they were journaled.
    pub(super) events: Vec<UplinkEvent>,
    pub(super) batches: u64,
    pub(super) skipped: u64,
    /// Side trees (supervision flags, fired fallbacks) that still read.
    pub(super) aux: Vec<SideTree>,
}

/// A side tree's name and items.
pub(super) type SideTree = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// The side trees of a database (what still reads of each), leaving out
/// sled's default tree, the journal's facts and `skip`.
pub(super) fn side_trees(db: &sled::Db, skip: &[&str]) -> Result<Vec<SideTree>, JournalError> {
    let mut trees = Vec::new();
    for name in db.tree_names() {
        if name == "__sled__default"
            || name == META.as_bytes()
            || skip.iter().any(|s| name == s.as_bytes())
        {
            continue;
        }
        let items = db
            .open_tree(&name)?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        trees.push((name.to_vec(), items));
    }
    Ok(trees)
}

/// A fresh journal at `path` holding the salvage: gateway seqs moved past
/// any the lost journal handed out, side trees restored, events in send
/// order, flushed.
pub(super) fn fresh(
    path: &Path,
    quota: Quota,
    salvage: &Salvage,
) -> Result<(JournalWriter, JournalReader, u64), JournalError> {
    let (writer, reader) = open(path, quota)?;
    // Milliseconds × 2^20: past any id the lost journal can have handed out.
    let offset = (anxin_proto::now_ms().max(0) as u64) << 20;
    writer
        .aux_tree(META)?
        .insert(SEQ_OFFSET, &offset.to_be_bytes())?;
    for (name, items) in &salvage.aux {
        let tree = writer.0.lanes[0].db.open_tree(name)?;
        for (k, v) in items {
            tree.insert(k.as_slice(), v.as_slice())?;
        }
    }
    let salvaged = restage(&writer, salvage.events.iter())?;
    for lane in &writer.0.lanes {
        lane.db.flush()?;
    }
    Ok((writer, reader, salvaged))
}

/// A damaged journal, already set aside at `kept_at`, replaced by a fresh
/// one holding `salvage`; with the report of what happened.
pub(super) fn replace_damaged(
    path: &Path,
    quota: Quota,
    salvage: &Salvage,
    reason: String,
    expected: Option<u64>,
    kept_at: std::path::PathBuf,
) -> Result<(JournalWriter, JournalReader, Option<Recovery>), JournalError> {
    let (writer, reader, salvaged) = fresh(path, quota, salvage)?;
    Ok((
        writer,
        reader,
        Some(Recovery {
            reason,
            salvaged,
            salvaged_batches: salvage.batches,
            skipped: salvage.skipped,
            expected,
            kept_at,
        }),
    ))
}

/// Appends events (in send order) as batches of at most 10,000; how many
/// were new (copies of one event are kept once).
pub(super) fn restage<'a>(
    writer: &JournalWriter,
    events: impl Iterator<Item = &'a UplinkEvent>,
) -> Result<u64, JournalError> {
    let mut staging = writer.stage();
    let mut staged = 0;
    let mut new = 0;
    for record in events {
        let Some(event) = &record.event else { continue };
        if matches!(staging.add(event, record.stored_ms)?, Appended::New { .. }) {
            new += 1;
        }
        staged += 1;
        if staged % 10_000 == 0 {
            staging.commit()?;
            staging = writer.stage();
        }
    }
    staging.commit()?;
    Ok(new)
}

pub(super) fn copy_dir(from: &Path, to: &Path, skip: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for item in std::fs::read_dir(from)? {
        let item = item?;
        if !skip.is_empty() && item.file_name() == skip {
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
