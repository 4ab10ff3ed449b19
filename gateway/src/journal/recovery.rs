//! Damage found and salvaged at open: sled's panics and corruption errors,
//! a batch whose CRC does not hold, a lane behind its seal, files changed
//! after a clean shutdown; the files moved aside (never deleted), every
//! intact batch salvaged into a fresh journal.

use std::{collections::BTreeMap, path::Path};

use anxin_proto::v1::UplinkEvent;
use prost::Message;

use super::{
    format::*,
    marker::{CleanMarker, files_digest, read_clean_marker},
    open::{open, open_db, open_marked},
    reader::JournalReader,
    seal,
    writer::JournalWriter,
};

/// What [`open_or_recover`] found wrong, and what it saved.
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

/// Opens the journal at `path`; if it is damaged, moves it aside, salvages
/// every intact batch, and opens a fresh one holding the salvage. Never
/// returns a damage error: only failures that a fresh journal would meet
/// too (disk full, permissions). A journal in the previous format (one
/// sled map of single events) is converted. The clean-shutdown marker is
/// consumed.
pub fn open_or_recover(
    path: &Path,
    quota: Quota,
) -> Result<(JournalWriter, JournalReader, Option<Recovery>), JournalError> {
    std::fs::create_dir_all(path)?;
    if super::convert::is_v1(path) {
        return super::convert::convert(path, quota);
    }
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
    // After a crash sled's recovery may find a damaged record, take it for
    // a torn write and shred the log after it: the lanes are copied first,
    // so what was there can still be salvaged. A clean shutdown's log has
    // nothing to shred.
    let evidence = if marker.is_none() {
        copy_before_open(path)
    } else {
        None
    };
    let reason = if changed {
        // Not opened: sled's recovery would rewrite the evidence.
        "its files changed after a clean shutdown".to_string()
    } else {
        match seal::read(path) {
            Err(reason) => reason,
            Ok(sealed) => match unpanicked(|| open_marked(path, quota)) {
                Ok((writer, reader, opened)) => {
                    let held: u64 = reader.depth().iter().sum();
                    let behind = sealed.and_then(|marks| seal::behind(marks, opened));
                    match (behind, expected) {
                        (Some(reason), _) => {
                            drop((writer, reader));
                            reason
                        }
                        (None, Some(expected)) if held < expected => {
                            drop((writer, reader));
                            format!(
                                "opened with {held} of the {expected} entries it held at shutdown"
                            )
                        }
                        _ => {
                            let _ = std::fs::remove_file(path.join(CLEAN_MARKER));
                            if let Some(copy) = &evidence {
                                let _ = std::fs::remove_dir_all(copy);
                            }
                            return Ok((writer, reader, None));
                        }
                    }
                }
                Err(err) if is_damage(&err) => err.to_string(),
                Err(err) => return Err(err),
            },
        }
    };
    let kept_at = set_aside(path)?;
    if let Some(copy) = evidence {
        // The lanes as they were before sled opened them replace the ones
        // sled's recovery rewrote.
        for name in LANE_DIRS {
            let copied = copy.join(name);
            if copied.is_dir() {
                let _ = std::fs::remove_dir_all(kept_at.join(name));
                std::fs::rename(&copied, kept_at.join(name))?;
            }
        }
        let _ = std::fs::remove_dir_all(&copy);
    }
    let salvage = salvage(&kept_at);
    let (writer, reader, salvaged) = fresh(path, quota, &salvage)?;
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

/// Journals bigger than this are not copied before opening after a crash
/// (the copy would delay start-up too long); damage is still found, but
/// salvage then reads only what sled's recovery left.
const COPY_MAX_BYTES: u64 = 512 * 1024 * 1024;

/// Copies the lanes into `pre-open-copy/`, if they fit (in the size limit
/// and on the disk); `None` if not copied.
fn copy_before_open(path: &Path) -> Option<std::path::PathBuf> {
    let copy = path.join(PRE_OPEN_COPY);
    let _ = std::fs::remove_dir_all(&copy);
    let mut files = Vec::new();
    for name in LANE_DIRS {
        let lane = path.join(name);
        if lane.is_dir() && collect_files(&lane, &mut files).is_err() {
            return None;
        }
    }
    if files.is_empty() {
        return None;
    }
    let size: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    if size > COPY_MAX_BYTES {
        tracing::warn!(
            bytes = size,
            "journal too large to copy before opening after a crash; salvage of damage, if any, limited to what sled reads"
        );
        return None;
    }
    for name in LANE_DIRS {
        let lane = path.join(name);
        if lane.is_dir()
            && let Err(err) = copy_dir(&lane, &copy.join(name), "")
        {
            tracing::warn!(error = %err, "no room to copy the journal before opening after a crash; salvage of damage, if any, limited to what sled reads");
            let _ = std::fs::remove_dir_all(&copy);
            return None;
        }
    }
    Some(copy)
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

/// Every intact batch in a damaged journal. Per lane, sled's own view
/// comes first (it knows which batches were deleted); sled stops at the
/// first damaged log record, so the batches written after that are read
/// from the raw files by their magic and CRC, past every bad one. sled
/// works on a copy, so the damaged files stay as they were found (sled's
/// recovery rewrites the log it opens).
pub(super) fn salvage(damaged: &Path) -> Salvage {
    let mut out = Salvage::default();
    let mut batches: BTreeMap<(u8, u64), Vec<UplinkEvent>> = BTreeMap::new();
    for (lane, name) in LANE_DIRS.iter().enumerate() {
        let dir = damaged.join(name);
        if !dir.is_dir() {
            continue;
        }
        let (view, view_hwm, aux) = sled_view(&dir, lane == 0);
        if lane == 0 {
            out.aux = aux;
        }
        batches.extend(view);
        let (spans, bad) = match raw_records(&dir) {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(error = %err, lane = name, "reading the damaged lane's files failed");
                continue;
            }
        };
        out.skipped += bad;
        for ((priority, seq), events) in spans {
            if view_hwm.is_none_or(|hwm| seq > hwm) {
                batches.entry((priority, seq)).or_insert(events);
            }
        }
    }
    out.batches = batches.len() as u64;
    out.events = batches.into_values().flatten().collect();
    out
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

type Batches = BTreeMap<(u8, u64), Vec<UplinkEvent>>;

/// What sled can still read of a damaged lane: its intact batches, its
/// high-water mark, and (for the alarm lane) its side trees. `None` for
/// the mark when sled could not open it at all.
fn sled_view(dir: &Path, with_aux: bool) -> (Batches, Option<u64>, Vec<SideTree>) {
    let copy = dir.with_extension("salvage-copy");
    let mut batches = Batches::new();
    let mut aux = Vec::new();
    if let Err(err) = copy_dir(dir, &copy, "") {
        tracing::error!(error = %err, "no room to copy the damaged journal for salvage; reading its raw files only");
        let _ = std::fs::remove_dir_all(&copy);
        return (batches, None, aux);
    }
    let mut hwm = None;
    let result = unpanicked(|| {
        let db = open_db(&copy, 8 * 1024 * 1024)?;
        hwm = Some(seal::high_water(&db)?);
        for item in db.iter() {
            let Ok((key, value)) = item else { break };
            let Some(id) = parse_batch_key(&key) else {
                continue;
            };
            if let Ok(events) = decode_record(&key, &value) {
                batches.insert(id, events);
            }
        }
        if with_aux {
            aux = side_trees(&db, &[])?;
        }
        Ok(())
    });
    if let Err(err) = result {
        tracing::warn!(error = %err, salvaged = batches.len(), "sled stopped at damage; reading on in the raw files");
    }
    let _ = std::fs::remove_dir_all(&copy);
    (batches, hwm, aux)
}

/// Intact records in a lane's raw files, by key, and how many did not check.
fn raw_records(dir: &Path) -> std::io::Result<(Batches, u64)> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    let mut found = Batches::new();
    let mut bad = 0;
    for file in files {
        let bytes = std::fs::read(&file)?;
        for (_, record) in scan_bytes(&bytes, &mut bad) {
            let Ok(checked) = check_record(record) else {
                continue;
            };
            let events: Result<Vec<_>, _> = checked
                .events
                .iter()
                .map(|e| UplinkEvent::decode(*e))
                .collect();
            if let Ok(events) = events {
                found
                    .entry((checked.priority, checked.seq))
                    .or_insert(events);
            }
        }
    }
    Ok((found, bad))
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
