//! Damage found and salvaged at open: sled's panics and corruption errors,
//! a batch whose CRC does not hold, a lane behind its seal, files changed
//! after a clean shutdown; the files moved aside (never deleted), every
//! intact batch salvaged into a fresh journal.

use std::{collections::BTreeMap, path::Path};

use anxin_proto::v1::UplinkEvent;
use prost::Message;

use super::{
    damage::{
        Recovery, Salvage, SideTree, copy_dir, is_damage, replace_damaged, set_aside, side_trees,
        unpanicked,
    },
    format::*,
    marker::{CleanMarker, files_digest, read_clean_marker},
    open::{open_db, open_marked},
    reader::JournalReader,
    seal,
    writer::JournalWriter,
};

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
    replace_damaged(path, quota, &salvage, reason, expected, kept_at)
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
    // Never the copy that fills the disk: as much must stay free after it.
    let free = anxin_host::disk::free_bytes(path).unwrap_or(0);
    if free < size.saturating_mul(2) {
        tracing::warn!(
            bytes = size,
            free,
            "too little free space to copy the journal before opening after a crash; salvage of damage, if any, limited to what sled reads"
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
        for (_, _, checked) in scan_bytes(&bytes, &mut bad) {
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
