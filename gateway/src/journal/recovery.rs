//! Damage found and salvaged at open: sled's panics and corruption errors,
//! a log that opens shorter than the clean-shutdown marker promised; the
//! files moved aside (never deleted), what still reads salvaged into a
//! fresh journal.

use std::path::Path;

use anxin_proto::v1::UplinkEvent;

use super::{
    format::*,
    marker::{CleanMarker, files_digest, read_clean_marker},
    open::{open, open_db},
    reader::JournalReader,
    writer::JournalWriter,
};

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
pub(super) fn salvage(damaged: &Path) -> Vec<UplinkEvent> {
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

pub(super) fn copy_dir(from: &Path, to: &Path, skip: &str) -> std::io::Result<()> {
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
