//! Disk space as a first-class resource.
//!
//! sled cannot delete on a full disk (a delete is an append) and, after one
//! failed write, keeps its page cache failed until the process reopens it.
//! So a daemon must never let its store reach the end of the disk by its own
//! writes, and must have space to give back when something else takes it:
//!
//! - below `min_free_bytes` of free space the level is [`DiskLevel::Low`]:
//!   the caller stops accepting what can wait (the gateway refuses P2/P3,
//!   the server refuses new events);
//! - a reserve file of `reserve_bytes` is held while there is room. When
//!   free space falls under a small margin, or a write fails with `ENOSPC`,
//!   the reserve is deleted at once and the level is [`DiskLevel::Full`]:
//!   the space it returns is what life-safety writes and deletions use;
//! - the reserve is taken back when free space is again above
//!   `min_free_bytes + reserve_bytes`, and only then is the level `Ok`.
//!
//! The reserve lives in the store's own directory, so it is on the same
//! filesystem whatever is mounted where.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
};

/// The reserve file's name inside the guarded directory.
pub const RESERVE_FILE: &str = "anxin-reserve";

/// Replaces `file` with `bytes` so that a crash leaves the old or the new
/// contents, never a mix: a temporary file beside it (`<name>.tmp`),
/// fsync, rename, fsync of the directory.
pub fn replace_file(file: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = file
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
        .to_os_string();
    name.push(".tmp");
    let temporary = file.with_file_name(name);
    let mut out = std::fs::File::create(&temporary)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(&temporary, file)?;
    sync_dir(file.parent().unwrap_or(Path::new(".")))
}

/// Makes the entries of `dir` (a file renamed into it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Free bytes available to an unprivileged writer on the filesystem of
/// `path` (statvfs `f_bavail × f_frsize`).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Total bytes of the filesystem of `path`.
pub fn total_bytes(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_blocks.saturating_mul(stat.f_frsize))
}

/// Whether an I/O error means the disk (or a quota) is full.
pub fn is_out_of_space(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
            || code == rustix::io::Errno::DQUOT.raw_os_error()
    ) || err.kind() == io::ErrorKind::StorageFull
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskLevel {
    Ok = 0,
    /// Under `min_free_bytes`: accept only what cannot wait.
    Low = 1,
    /// The reserve has been given back: running on it.
    Full = 2,
}

impl DiskLevel {
    /// The reason `/healthz` gives, if any.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            DiskLevel::Ok => None,
            DiskLevel::Low => Some("disk_low"),
            DiskLevel::Full => Some("disk_full"),
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => DiskLevel::Ok,
            1 => DiskLevel::Low,
            _ => DiskLevel::Full,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("creating {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("reading free space of {path}: {source}")]
    Statvfs { path: PathBuf, source: io::Error },
}

/// The reserve and low-water mark: what the operator set, else fitted to
/// the filesystem (a 48 MB disk must not refuse everything while 47 MB are
/// free because the defaults were made for a real one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub reserve_bytes: Option<u64>,
    pub min_free_bytes: Option<u64>,
    /// What a disk of a real size gets: the caps of the fitted values.
    pub default_reserve_bytes: u64,
    pub default_min_free_bytes: u64,
}

impl Thresholds {
    /// `(reserve, min_free)` for a filesystem of `total` bytes: a set value
    /// as it is; an unset reserve 1/32 of the filesystem (at least 1 MiB),
    /// an unset mark 1/8 (at least the reserve), each capped by its default.
    pub fn fit(&self, total: u64) -> (u64, u64) {
        let reserve = self.reserve_bytes.unwrap_or_else(|| {
            self.default_reserve_bytes
                .min((total / 32).max(1024 * 1024))
        });
        let min_free = self
            .min_free_bytes
            .unwrap_or_else(|| self.default_min_free_bytes.min((total / 8).max(reserve)));
        (reserve, min_free)
    }
}

/// Watches one directory's filesystem and holds its reserve.
pub struct DiskGuard {
    dir: PathBuf,
    reserve_path: PathBuf,
    reserve_bytes: u64,
    min_free_bytes: u64,
    /// Whether the reserve file is in place; the lock also serialises
    /// taking and giving it back.
    held: Mutex<bool>,
    level: AtomicU8,
    free: AtomicU64,
    /// Space inside the store's own files that it will reuse before growing
    /// them (sled keeps its files' size after deletes and reuses dead
    /// segments), counted with free space for the low-water mark.
    reclaimable: AtomicU64,
}

impl DiskGuard {
    /// Guards `dir` (created if missing). Takes the reserve if there is
    /// room; a reserve left by an earlier run is kept.
    pub fn new(dir: &Path, reserve_bytes: u64, min_free_bytes: u64) -> Result<Self, GuardError> {
        std::fs::create_dir_all(dir).map_err(|source| GuardError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
        let reserve_path = dir.join(RESERVE_FILE);
        let held = std::fs::metadata(&reserve_path).is_ok_and(|m| m.len() >= reserve_bytes);
        let guard = Self {
            dir: dir.to_path_buf(),
            reserve_path,
            reserve_bytes,
            min_free_bytes,
            held: Mutex::new(held || reserve_bytes == 0),
            level: AtomicU8::new(DiskLevel::Ok as u8),
            free: AtomicU64::new(u64::MAX),
            reclaimable: AtomicU64::new(0),
        };
        if !held && reserve_bytes > 0 {
            // A partial reserve from a crash mid-write counts for nothing.
            let _ = std::fs::remove_file(&guard.reserve_path);
            *guard.held.lock().expect("reserve lock") = false;
        }
        if let Ok(total) = total_bytes(dir)
            && total < 2 * (reserve_bytes + min_free_bytes)
        {
            tracing::warn!(
                dir = %dir.display(),
                total,
                reserve_bytes,
                min_free_bytes,
                "the filesystem is small for this reserve and low-water mark; lower them or give the store more room"
            );
        }
        guard.check()?;
        Ok(guard)
    }

    /// Guards `dir` with `thresholds` fitted to its filesystem (and says
    /// so when a value was fitted rather than set).
    pub fn fitted(dir: &Path, thresholds: Thresholds) -> Result<Self, GuardError> {
        std::fs::create_dir_all(dir).map_err(|source| GuardError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
        let total = total_bytes(dir).map_err(|source| GuardError::Statvfs {
            path: dir.to_path_buf(),
            source,
        })?;
        let (reserve_bytes, min_free_bytes) = thresholds.fit(total);
        if (thresholds.reserve_bytes, thresholds.min_free_bytes)
            != (Some(reserve_bytes), Some(min_free_bytes))
            && (reserve_bytes, min_free_bytes)
                != (
                    thresholds.default_reserve_bytes,
                    thresholds.default_min_free_bytes,
                )
        {
            tracing::info!(
                dir = %dir.display(),
                total,
                reserve_bytes,
                min_free_bytes,
                "disk reserve and low-water mark fitted to a small filesystem (set them to choose)"
            );
        }
        Self::new(dir, reserve_bytes, min_free_bytes)
    }

    /// Margin under which the reserve is given back before anything fails.
    fn full_margin(&self) -> u64 {
        (self.min_free_bytes / 4).max(256 * 1024)
    }

    /// Reads free space, gives back or takes the reserve, and returns the
    /// level. Cheap (one statvfs): call it every few hundred milliseconds
    /// and before deciding on a write.
    pub fn check(&self) -> Result<DiskLevel, GuardError> {
        let mut held = self.held.lock().expect("reserve lock");
        let free = free_bytes(&self.dir).map_err(|source| GuardError::Statvfs {
            path: self.dir.clone(),
            source,
        })?;
        self.free.store(free, Ordering::Relaxed);
        if *held && self.reserve_bytes > 0 && free < self.full_margin() {
            self.give_back(&mut held, "free space under the margin");
        } else if !*held && free >= self.min_free_bytes.saturating_add(self.reserve_bytes) {
            match self.take_reserve() {
                Ok(()) => {
                    *held = true;
                    tracing::info!(dir = %self.dir.display(), bytes = self.reserve_bytes, "disk space is back; reserve taken again");
                }
                Err(err) => {
                    tracing::warn!(dir = %self.dir.display(), error = %err, "taking the disk reserve failed; will retry");
                    let _ = std::fs::remove_file(&self.reserve_path);
                }
            }
        }
        let free = free_bytes(&self.dir).unwrap_or(free);
        self.free.store(free, Ordering::Relaxed);
        let usable = free.saturating_add(self.reclaimable.load(Ordering::Relaxed));
        let level = if !*held {
            DiskLevel::Full
        } else if usable < self.min_free_bytes {
            DiskLevel::Low
        } else {
            DiskLevel::Ok
        };
        let before = DiskLevel::from_u8(self.level.swap(level as u8, Ordering::Relaxed));
        if before != level {
            match level {
                DiskLevel::Ok => tracing::info!(dir = %self.dir.display(), free, "disk space ok"),
                DiskLevel::Low => {
                    tracing::warn!(dir = %self.dir.display(), free, min_free_bytes = self.min_free_bytes, "disk space low: accepting only what cannot wait")
                }
                DiskLevel::Full => {
                    tracing::error!(dir = %self.dir.display(), free, "disk full: running on the reserve")
                }
            }
        }
        Ok(level)
    }

    /// A write failed for want of space: give the reserve back now.
    pub fn out_of_space(&self) {
        let mut held = self.held.lock().expect("reserve lock");
        self.give_back(&mut held, "a write failed with ENOSPC");
        self.level.store(DiskLevel::Full as u8, Ordering::Relaxed);
    }

    fn give_back(&self, held: &mut bool, why: &str) {
        if !*held || self.reserve_bytes == 0 {
            return;
        }
        match std::fs::remove_file(&self.reserve_path) {
            Ok(()) => {
                tracing::error!(dir = %self.dir.display(), bytes = self.reserve_bytes, why, "disk reserve given back")
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::error!(dir = %self.dir.display(), error = %err, "giving back the disk reserve failed")
            }
        }
        *held = false;
    }

    fn take_reserve(&self) -> io::Result<()> {
        let mut file = std::fs::File::create(&self.reserve_path)?;
        // Written, not fallocated: some filesystems (and SD-card FTLs) only
        // promise blocks that were written.
        let chunk = vec![0u8; 1024 * 1024];
        let mut left = self.reserve_bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        file.sync_all()
    }

    /// Tells the guard how much of the store's files is dead space it will
    /// reuse (see the field).
    pub fn set_reclaimable(&self, bytes: u64) {
        self.reclaimable.store(bytes, Ordering::Relaxed);
    }

    pub fn level(&self) -> DiskLevel {
        DiskLevel::from_u8(self.level.load(Ordering::Relaxed))
    }

    /// Free bytes at the last check.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Bytes of reserve held now (0 when given back).
    pub fn reserve_held(&self) -> u64 {
        if *self.held.lock().expect("reserve lock") {
            self.reserve_bytes
        } else {
            0
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.pb");
        replace_file(&file, b"old").unwrap();
        replace_file(&file, b"new").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.pb")]);
    }

    #[test]
    fn unset_thresholds_fit_a_small_disk_and_set_ones_win() {
        const MIB: u64 = 1024 * 1024;
        let unset = Thresholds {
            reserve_bytes: None,
            min_free_bytes: None,
            default_reserve_bytes: 64 * MIB,
            default_min_free_bytes: 256 * MIB,
        };
        // A 48 MB disk: 1.5 MB reserve, 6 MB mark — events accepted while
        // more than 6 MB are free, not refused at 47 MB free.
        assert_eq!(unset.fit(48 * MIB), (48 * MIB / 32, 6 * MIB));
        // A tiny one: the reserve never under 1 MiB, the mark never under it.
        assert_eq!(unset.fit(4 * MIB), (MIB, MIB));
        // A real disk: the defaults.
        assert_eq!(unset.fit(100 * 1024 * MIB), (64 * MIB, 256 * MIB));
        let set = Thresholds {
            reserve_bytes: Some(8 * MIB),
            min_free_bytes: Some(32 * MIB),
            ..unset
        };
        assert_eq!(set.fit(48 * MIB), (8 * MIB, 32 * MIB));
        let half = Thresholds {
            min_free_bytes: Some(20 * MIB),
            ..unset
        };
        assert_eq!(half.fit(48 * MIB), (48 * MIB / 32, 20 * MIB));
    }

    #[test]
    fn holds_a_reserve_and_gives_it_back_on_enospc_then_takes_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let guard = DiskGuard::new(dir.path(), 1024 * 1024, 1024 * 1024).unwrap();
        // /tmp has far more than 2 MiB free.
        assert_eq!(guard.level(), DiskLevel::Ok);
        assert_eq!(
            std::fs::metadata(dir.path().join(RESERVE_FILE))
                .unwrap()
                .len(),
            1024 * 1024
        );
        guard.out_of_space();
        assert_eq!(guard.level(), DiskLevel::Full);
        assert!(!dir.path().join(RESERVE_FILE).exists());
        assert_eq!(guard.reserve_held(), 0);
        // Space is plentiful here, so the next check takes it back.
        assert_eq!(guard.check().unwrap(), DiskLevel::Ok);
        assert_eq!(guard.reserve_held(), 1024 * 1024);
    }

    #[test]
    fn a_low_water_mark_above_free_space_reads_low() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        // A reserve of 0 is always "held"; the mark is above free space.
        let guard = DiskGuard::new(dir.path(), 0, free.saturating_mul(2)).unwrap();
        assert_eq!(guard.level(), DiskLevel::Low);
        assert_eq!(DiskLevel::Low.reason(), Some("disk_low"));
    }

    #[test]
    fn enospc_is_recognised() {
        let err = io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        assert!(is_out_of_space(&err));
        assert!(!is_out_of_space(&io::Error::other("x")));
    }
}
