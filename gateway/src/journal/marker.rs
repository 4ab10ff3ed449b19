//! The clean-shutdown marker (`anxin-clean`): how many entries a journal
//! held when it was closed cleanly, and a digest of its files, so a journal
//! that opens shorter is known to be damaged.

use std::path::Path;

use super::format::*;

/// What a clean shutdown left: the entries it held and a digest of the
/// journal's files.
pub(super) struct CleanMarker {
    pub(super) entries: u64,
    pub(super) digest: Option<String>,
}

pub(super) fn read_clean_marker(dir: &Path) -> Option<CleanMarker> {
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
pub(super) const DIGEST_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// SHA-256 over the journal's files (names and contents, in name order),
/// leaving out the reserve, the marker and damaged copies; `None` if they
/// are over [`DIGEST_MAX_BYTES`].
pub(super) fn files_digest(dir: &Path) -> std::io::Result<Option<String>> {
    use sha2::Digest;
    pub(super) fn collect(
        dir: &Path,
        top: bool,
        out: &mut Vec<std::path::PathBuf>,
    ) -> std::io::Result<()> {
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if top
                && (name.starts_with(DAMAGED_PREFIX)
                    || name == PRE_OPEN_COPY
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
