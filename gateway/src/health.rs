//! What the gateway can and cannot do right now, for `/healthz`, the
//! metrics and the restart in place.
//!
//! Reasons (each one makes `/healthz` answer 503):
//! - `disk_low`: free space under `journal.min_free_bytes`; P2/P3 deferred.
//! - `disk_full`: the disk reserve was given back; running on it.
//! - `journal_error`: a journal write or flush failed; the gateway restarts
//!   itself in place to reopen it (sled stays failed until reopened).
//! - `uplink_stalled`: a P0 has waited longer than `fallback.after_secs`.
//! - `mqtt_not_listening`: the device port fails to accept connections (out
//!   of file descriptors, say).
//!
//! A gateway whose MQTT port is taken never gets this far: start-up fails.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anxin_host::disk::{DiskGuard, DiskLevel};
use tokio_util::sync::CancellationToken;

use crate::{
    journal::{JournalError, JournalReader, JournalWriter},
    metrics as m,
};

pub struct Health {
    disk: Arc<DiskGuard>,
    journal_error: Mutex<Option<String>>,
    uplink_stalled: AtomicBool,
    mqtt_deaf: AtomicBool,
}

impl Health {
    pub fn new(disk: Arc<DiskGuard>) -> Self {
        Self {
            disk,
            journal_error: Mutex::new(None),
            uplink_stalled: AtomicBool::new(false),
            mqtt_deaf: AtomicBool::new(false),
        }
    }

    pub fn disk(&self) -> &DiskGuard {
        &self.disk
    }

    /// Why the gateway is not fully able to do its job; empty when it is.
    pub fn reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        reasons.extend(self.disk.level().reason());
        if self.journal_error.lock().expect("health lock").is_some() {
            reasons.push("journal_error");
        }
        if self.uplink_stalled.load(Ordering::Relaxed) {
            reasons.push("uplink_stalled");
        }
        if self.mqtt_deaf.load(Ordering::Relaxed) {
            reasons.push("mqtt_not_listening");
        }
        reasons
    }

    /// The device front's accept loop says whether accepting works.
    pub fn device_port_accepting(&self, accepting: bool, addr: std::net::SocketAddr) {
        let was_deaf = self.mqtt_deaf.swap(!accepting, Ordering::Relaxed);
        if was_deaf == accepting {
            if accepting {
                tracing::info!(%addr, "the device port accepts connections again");
            } else {
                tracing::error!(%addr, "the device port cannot accept connections: devices cannot reach this gateway");
            }
        }
    }

    pub fn journal_error(&self) -> Option<String> {
        self.journal_error.lock().expect("health lock").clone()
    }

    pub fn set_uplink_stalled(&self, stalled: bool) {
        self.uplink_stalled.store(stalled, Ordering::Relaxed);
    }

    /// A journal write or flush failed. If for want of space, the disk
    /// reserve is given back at once; either way the journal cannot be used
    /// again in this process, so the process restarts in place after a
    /// short grace (the local alarm for an unwritable P0 is on its way out).
    /// From its own OS thread: a failed sled can block the runtime's.
    pub fn journal_failed(&self, err: &JournalError) {
        let out_of_space = match err {
            JournalError::Storage(sled::Error::Io(io)) | JournalError::Files(io) => {
                anxin_host::disk::is_out_of_space(io)
            }
            _ => false,
        };
        if out_of_space {
            self.disk.out_of_space();
        }
        metrics::counter!(m::JOURNAL_ERRORS).increment(1);
        let mut slot = self.journal_error.lock().expect("health lock");
        if slot.is_none() {
            tracing::error!(error = %err, out_of_space, "journal failed; restarting in place to reopen it");
            *slot = Some(err.to_string());
            std::thread::spawn(|| {
                std::thread::sleep(RESTART_GRACE);
                anxin_host::restart::in_place(
                    "the journal failed; reopening it in a fresh process",
                );
            });
        }
    }
}

/// Between a journal failure and the restart in place.
const RESTART_GRACE: Duration = Duration::from_secs(1);
/// How often free space is read (one statvfs).
const DISK_CHECK_EVERY: Duration = Duration::from_millis(200);

/// Reads free space, moves the reserve, tells the journal whether P2/P3 must
/// wait, and keeps the disk gauges current.
pub async fn watch_disk(
    health: Arc<Health>,
    journal: JournalWriter,
    reader: JournalReader,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(DISK_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        // sled reuses its dead segments before growing its files: that space
        // is as good as free for the journal. Logical bytes × 8 bounds the
        // live part (BENCHMARKS.md measured files ~7× the logical bytes).
        if let Ok(on_disk) = reader.size_on_disk() {
            let live: u64 = reader.bytes().iter().sum::<u64>().saturating_mul(8);
            health.disk.set_reclaimable(on_disk.saturating_sub(live));
        }
        let level = match health.disk.check() {
            Ok(level) => level,
            Err(err) => {
                tracing::warn!(error = %err, "reading free disk space failed");
                continue;
            }
        };
        journal.set_disk_low(level != DiskLevel::Ok);
        metrics::gauge!(m::DISK_FREE_BYTES).set(health.disk.free() as f64);
        metrics::gauge!(m::DISK_RESERVE_BYTES).set(health.disk.reserve_held() as f64);
        metrics::gauge!(m::DISK_LEVEL).set(level as u8 as f64);
    }
}
