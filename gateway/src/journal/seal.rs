//! The seal (`anxin-seal`): the highest batch seq of each lane known to be
//! flushed, written after flushes at most once a second into its own small
//! file (like the server's store seal). A lane database that opens with a
//! high-water mark behind its seal lost flushed batches — sled opened a
//! damaged log as if a write had been torn — and is treated as damaged, not
//! served silently shorter.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::format::*;

/// How often the seal is written at most.
pub(super) const SEAL_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Seal {
    path: PathBuf,
    state: Mutex<SealState>,
}

struct SealState {
    /// Highest batch seq per lane known flushed.
    flushed: [u64; 2],
    /// What the file says now.
    written: [u64; 2],
    last_write: Option<Instant>,
    /// A write is scheduled (a task waits for the interval).
    scheduled: bool,
    /// Set at a clean shutdown: the seal is written once more, by the
    /// shutdown, and then never again (its digest covers the file).
    closed: bool,
}

/// What the seal file says: each lane's high-water mark.
pub(super) fn read(dir: &Path) -> Result<Option<[u64; 2]>, String> {
    let text = match std::fs::read(dir.join(SEAL_FILE)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("its seal is unreadable: {err}")),
    };
    parse(&text)
        .map(Some)
        .ok_or_else(|| "its seal is damaged".to_string())
}

fn parse(bytes: &[u8]) -> Option<[u64; 2]> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (body, crc) = text.trim_end().rsplit_once(' ')?;
    if format!("{:08x}", crc32c::crc32c(body.as_bytes())) != crc {
        return None;
    }
    let mut parts = body.split(' ');
    (parts.next()? == "anxin-seal-v1").then_some(())?;
    let alarm = parts.next()?.parse().ok()?;
    let bulk = parts.next()?.parse().ok()?;
    Some([alarm, bulk])
}

/// Writes the seal durably (a crash leaves the old one or the new one).
pub(super) fn write(dir: &Path, marks: [u64; 2]) -> std::io::Result<()> {
    let body = format!("anxin-seal-v1 {} {}", marks[0], marks[1]);
    let text = format!("{body} {:08x}\n", crc32c::crc32c(body.as_bytes()));
    anxin_host::disk::replace_file(&dir.join(SEAL_FILE), text.as_bytes())
}

impl Seal {
    pub(super) fn new(dir: &Path, marks: [u64; 2]) -> Self {
        Self {
            path: dir.to_path_buf(),
            state: Mutex::new(SealState {
                flushed: marks,
                written: marks,
                last_write: None,
                scheduled: false,
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SealState> {
        self.state.lock().expect("seal lock poisoned")
    }

    /// A lane's flush made everything up to `seq` durable: writes the seal
    /// now if the last write is a second old, or schedules it.
    pub(super) fn flushed(self: &Arc<Self>, lane: usize, seq: u64) {
        let mut state = self.lock();
        if seq <= state.flushed[lane] {
            return;
        }
        state.flushed[lane] = seq;
        if state.scheduled {
            return;
        }
        state.scheduled = true;
        let wait = state
            .last_write
            .map(|at| SEAL_EVERY.saturating_sub(at.elapsed()))
            .unwrap_or_default();
        drop(state);
        // Weak: a journal dropped meanwhile (a restart in place, a damaged
        // one replaced) must not have its seal written after it.
        let seal = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(seal) = seal.upgrade() {
                    let _ = seal.write_now();
                }
            })
            .await;
        });
    }

    /// Writes what is flushed now (also at a clean shutdown).
    pub(super) fn write_now(&self) -> std::io::Result<()> {
        let mut state = self.lock();
        state.scheduled = false;
        if state.closed {
            return Ok(());
        }
        if state.written == state.flushed && state.last_write.is_some() {
            return Ok(());
        }
        let marks = state.flushed;
        let result = write(&self.path, marks);
        match &result {
            Ok(()) => state.written = marks,
            Err(err) => tracing::warn!(error = %err, "writing the journal's seal failed"),
        }
        state.last_write = Some(Instant::now());
        result
    }

    /// No more writes: a clean shutdown writes the last one itself.
    pub(super) fn close(&self) {
        self.lock().closed = true;
    }

    /// What the seal file says now (tests).
    #[cfg(test)]
    pub(super) fn written(&self) -> [u64; 2] {
        self.lock().written
    }
}

/// A lane database's high-water mark as it opened.
pub(super) fn high_water(db: &sled::Db) -> Result<u64, JournalError> {
    Ok(db
        .get(HWM_KEY)?
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// Why a journal that opened is behind its seal, if it is.
pub(super) fn behind(marks: [u64; 2], opened: [u64; 2]) -> Option<String> {
    (0..2).find(|&lane| opened[lane] < marks[lane]).map(|lane| {
        format!(
            "its {} lane opened at batch {}, behind its seal at {}",
            LANE_DIRS[lane], opened[lane], marks[lane]
        )
    })
}
