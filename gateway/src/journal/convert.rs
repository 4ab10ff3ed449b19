//! Converting a journal written in the previous format (issue 15's: one
//! sled database at the journal's path, a map of single events plus a
//! per-device index) into lanes of batches. The old files stay untouched
//! until the new lanes are flushed; the old `db` file is removed first, so
//! a conversion interrupted at any point is either redone from whole old
//! files or finished.

use std::path::Path;

use anxin_proto::v1::UplinkEvent;
use prost::Message;

use super::{
    damage::{
        Recovery, Salvage, SideTree, fresh, is_damage, replace_damaged, set_aside, side_trees,
        unpanicked,
    },
    format::*,
    marker::{files_digest, read_clean_marker},
    open::open_db,
    reader::JournalReader,
    writer::JournalWriter,
};

const V1_FORMAT: u8 = 1;
const V1_TREE: &str = "journal";
const V1_ENTRY: u8 = b'e';

/// Whether `path` holds a journal in the previous format.
pub(super) fn is_v1(path: &Path) -> bool {
    path.join("db").is_file()
}

/// What an old journal held.
struct V1 {
    events: Vec<UplinkEvent>,
    seq_offset: u64,
    aux: Vec<SideTree>,
    /// Whether every entry read (false: reading stopped at damage).
    whole: bool,
}

fn read_v1(dir: &Path) -> Result<V1, JournalError> {
    let db = open_db(dir, 8 * 1024 * 1024)?;
    let tree = db.open_tree(V1_TREE)?;
    let mut events = Vec::new();
    let mut whole = true;
    for item in tree.scan_prefix([V1_ENTRY]) {
        let Ok((_, value)) = item else {
            whole = false;
            break;
        };
        match value.split_first() {
            Some((&V1_FORMAT, body)) => match UplinkEvent::decode(body) {
                Ok(event) => events.push(event),
                Err(_) => whole = false,
            },
            _ => whole = false,
        }
    }
    let offset = match db.open_tree(META)?.get(SEQ_OFFSET)? {
        Some(bytes) => u64::from_be_bytes(bytes.as_ref().try_into().unwrap_or_default()),
        None => 0,
    };
    // Past every gateway seq the old journal handed out.
    let seq_offset = offset + db.generate_id()? + 1;
    let aux = side_trees(&db, &[V1_TREE])?;
    Ok(V1 {
        events,
        seq_offset,
        aux,
        whole,
    })
}

/// Converts the old journal at `path` (or, if it is damaged, sets it aside
/// and salvages what reads, as for a damaged journal of today's format).
pub(super) fn convert(
    path: &Path,
    quota: Quota,
) -> Result<(JournalWriter, JournalReader, Option<Recovery>), JournalError> {
    // A conversion interrupted before the old `db` was removed: redone.
    for name in LANE_DIRS {
        let lane = path.join(name);
        if lane.exists() {
            std::fs::remove_dir_all(lane)?;
        }
    }
    let _ = std::fs::remove_file(path.join(SEAL_FILE));
    let marker = read_clean_marker(path);
    let expected = marker.as_ref().map(|m| m.entries);
    let changed = match marker.as_ref().and_then(|m| m.digest.clone()) {
        Some(digest) => files_digest(path)?.is_some_and(|now| now != digest),
        None => false,
    };
    let read = if changed {
        Err("its files changed after a clean shutdown".to_string())
    } else {
        match unpanicked(|| read_v1(path)) {
            Ok(v1) if !v1.whole => Err("an entry of the previous format is unreadable".into()),
            Ok(v1) if expected.is_some_and(|e| (v1.events.len() as u64) < e) => Err(format!(
                "opened with {} of the {} entries it held at shutdown",
                v1.events.len(),
                expected.unwrap_or_default()
            )),
            Ok(v1) => Ok(v1),
            Err(err) if is_damage(&err) => Err(err.to_string()),
            Err(err) => return Err(err),
        }
    };
    match read {
        Ok(v1) => {
            let salvage = Salvage {
                events: v1.events,
                aux: v1.aux,
                ..Default::default()
            };
            let (writer, reader, converted) = fresh(path, quota, &salvage)?;
            writer
                .aux_tree(META)?
                .insert(SEQ_OFFSET, &v1.seq_offset.to_be_bytes())?;
            writer.0.lanes[0].db.flush()?;
            remove_v1(path)?;
            tracing::info!(
                events = converted,
                "journal converted from the previous format (one record per event) to lanes of batches"
            );
            Ok((writer, reader, None))
        }
        Err(reason) => {
            let kept_at = set_aside(path)?;
            // sled reads a damaged old log up to its damage; whatever reads
            // is salvaged.
            let salvage = salvage_v1(&kept_at);
            replace_damaged(path, quota, &salvage, reason, expected, kept_at)
        }
    }
}

/// What still reads of a damaged old journal, from a copy (sled's recovery
/// rewrites the log it opens).
fn salvage_v1(damaged: &Path) -> Salvage {
    let copy = damaged.join("salvage-copy");
    let mut salvage = Salvage::default();
    if let Err(err) = super::damage::copy_dir(damaged, &copy, "salvage-copy") {
        tracing::error!(error = %err, "no room to copy the damaged journal for salvage; nothing salvaged");
    } else if let Ok(v1) = unpanicked(|| read_v1(&copy)) {
        salvage.events = v1.events;
    }
    let _ = std::fs::remove_dir_all(&copy);
    salvage
}

/// Removes the old format's files: `db` first (after that the journal is
/// converted, whatever else remains), then the rest.
fn remove_v1(path: &Path) -> Result<(), JournalError> {
    std::fs::remove_file(path.join("db"))?;
    std::fs::File::open(path)?.sync_all()?;
    for item in std::fs::read_dir(path)? {
        let item = item?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        if name == "conf" || name == "blobs" || name.starts_with("snap.") || name == CLEAN_MARKER {
            if item.file_type()?.is_dir() {
                std::fs::remove_dir_all(item.path())?;
            } else {
                std::fs::remove_file(item.path())?;
            }
        }
    }
    Ok(())
}
