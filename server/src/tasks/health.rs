//! What the server can and cannot do right now: free space on the store's
//! filesystem and the store's own state, for `/healthz`, the uplink's
//! refusals and the restart in place.
//!
//! - `disk_low`: free space under `store.min_free_bytes`. Alarms (P0/P1)
//!   are still taken; routine events (P2/P3) are deferred one by one
//!   (`Deferred`: the gateway keeps them and holds that lane back) — or,
//!   for a gateway that does not understand `Deferred`, the stream is
//!   refused with `RESOURCE_EXHAUSTED`. Reads and dispatchers' actions go
//!   on.
//! - `disk_full`: the store's disk reserve was given back; the same, alarms
//!   written into the reserve's space.
//! - `database_stalled`: the database answers but a write on the event
//!   path did not finish within `store.write_timeout_ms` (a commit held
//!   for a synchronous standby that is gone). Gateways' streams end with
//!   `UNAVAILABLE` and new ones are refused; they keep their events. It
//!   clears by itself once a probe commit returns.
//! - `store_error`: a store write failed. sled keeps its page cache failed
//!   until reopened, so once there is room again the server restarts
//!   itself in place (same PID, same arguments) and reopens the store.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anxin_host::disk::{DiskGuard, DiskLevel};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics as m,
    store::{Store, StoreError},
};

pub struct Health {
    disk: DiskGuard,
    /// The failure, when it happened, and whether it was for want of space.
    store_error: Mutex<Option<(String, Instant, bool)>>,
    /// Why the database does not answer, while it does not (PostgreSQL).
    database_error: Mutex<Option<String>>,
    /// Why writes do not finish although the database answers, while they
    /// do not (PostgreSQL).
    database_stalled: Mutex<Option<String>>,
    /// Until when routine events are deferred because the database refused
    /// a write for want of space (PostgreSQL). Tried again after it.
    database_full_until: Mutex<Option<Instant>>,
}

/// How long routine events wait after the database said it was full,
/// before one is tried again (alarms are tried at once, always).
const DATABASE_FULL_HOLD: Duration = Duration::from_secs(15);

impl Health {
    pub fn new(disk: DiskGuard) -> Self {
        Self {
            disk,
            store_error: Mutex::new(None),
            database_error: Mutex::new(None),
            database_stalled: Mutex::new(None),
            database_full_until: Mutex::new(None),
        }
    }

    pub fn disk(&self) -> &DiskGuard {
        &self.disk
    }

    pub fn reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        reasons.extend(self.disk.level().reason());
        if self.store_error.lock().expect("health lock").is_some() {
            reasons.push("store_error");
        }
        if self.database_error().is_some() {
            reasons.push("database_unreachable");
        }
        if self.database_stalled().is_some() {
            reasons.push("database_stalled");
        }
        if self.database_full() {
            reasons.push("database_full");
        }
        reasons
    }

    pub fn store_error(&self) -> Option<String> {
        self.store_error
            .lock()
            .expect("health lock")
            .as_ref()
            .map(|(e, _, _)| e.clone())
    }

    /// What every API answers while the store has failed, if it has.
    pub fn store_failure(&self) -> Option<String> {
        self.store_error().map(|err| {
            format!(
                "the server's store failed ({err}); it restarts itself as soon as it can write again"
            )
        })
    }

    pub fn database_error(&self) -> Option<String> {
        self.database_error.lock().expect("health lock").clone()
    }

    pub fn database_stalled(&self) -> Option<String> {
        self.database_stalled.lock().expect("health lock").clone()
    }

    /// Whether the refusal is the database's (a gateway should try another
    /// replica: `UNAVAILABLE`) rather than this host's disk.
    pub fn database_trouble(&self) -> bool {
        self.database_error().is_some() || self.database_stalled().is_some()
    }

    /// Notes whether writes finish (`None`) or not (why), logging and
    /// counting each change.
    pub fn set_stalled(&self, stalled: Option<String>) {
        let mut slot = self.database_stalled.lock().expect("health lock");
        match (&*slot, &stalled) {
            (None, Some(why)) => {
                metrics::counter!(m::DATABASE_STALLS).increment(1);
                tracing::error!(
                    error = %why,
                    "the database answers but does not finish writes; gateways' streams are ended \
                     (they keep their events) until a commit returns. Look for a synchronous standby \
                     that is gone (synchronous_standby_names) or a long-held lock"
                );
            }
            (Some(_), None) => tracing::info!("the database finishes writes again; taking events"),
            _ => {}
        }
        metrics::gauge!(m::DATABASE_STALLED).set(if stalled.is_some() { 1.0 } else { 0.0 });
        *slot = stalled;
    }

    /// Whether the refusal of [`Self::refuse_events`] is for the store's
    /// disk alone: then alarms (a few hundred bytes each) are still taken,
    /// per event, and only routine events wait at the gateway. Not when
    /// the store has failed or the database is in trouble: nothing is
    /// taken then.
    pub fn alarms_only(&self) -> Option<&'static str> {
        if self.store_error().is_some() || self.database_trouble() {
            return None;
        }
        self.disk
            .level()
            .reason()
            .or_else(|| self.database_full().then_some("database_full"))
    }

    /// Whether the database refused a write for space lately (within
    /// [`DATABASE_FULL_HOLD`]).
    pub fn database_full(&self) -> bool {
        self.database_full_until
            .lock()
            .expect("health lock")
            .is_some_and(|until| Instant::now() < until)
    }

    /// Why new events must be refused now, if they must.
    pub fn refuse_events(&self) -> Option<String> {
        if let Some(why) = self.store_failure() {
            return Some(format!("{why}. Keep the events and retry"));
        }
        if let Some(why) = self.database_error() {
            return Some(format!(
                "this replica cannot reach the database ({why}); keep the events and retry"
            ));
        }
        if let Some(why) = self.database_stalled() {
            return Some(format!(
                "the database does not finish writes ({why}); keep the events and retry"
            ));
        }
        if self.database_full() {
            return Some(
                "the database is out of disk space; keep the events and retry".to_string(),
            );
        }
        match self.disk.level() {
            DiskLevel::Ok => None,
            level => Some(format!(
                "the server's store is short of disk space ({}, {} bytes free); keep the events and retry",
                level.reason().unwrap_or_default(),
                self.disk.free()
            )),
        }
    }

    /// A store operation failed. A storage (I/O) error leaves sled failed
    /// for good in this process; note it for the restart in place.
    pub fn store_failed(&self, err: &StoreError) {
        if let StoreError::Stalled(_) = err {
            self.set_stalled(Some(err.to_string()));
            return;
        }
        if let StoreError::DatabaseFull(_) = err {
            let mut until = self.database_full_until.lock().expect("health lock");
            if !until.is_some_and(|u| Instant::now() < u) {
                metrics::counter!(m::DATABASE_FULL).increment(1);
                tracing::error!(
                    error = %err,
                    "the database refused a write for want of space: alarms are taken first, routine \
                     events wait at the gateways and are tried again every {} s. Free space on the \
                     database's disk",
                    DATABASE_FULL_HOLD.as_secs()
                );
            }
            *until = Some(Instant::now() + DATABASE_FULL_HOLD);
            return;
        }
        let StoreError::Storage(storage) = err else {
            return;
        };
        let out_of_space =
            matches!(storage, sled::Error::Io(io) if anxin_host::disk::is_out_of_space(io));
        if out_of_space {
            self.disk.out_of_space();
        }
        let mut slot = self.store_error.lock().expect("health lock");
        if slot.is_none() {
            metrics::counter!(m::STORE_FAILURES).increment(1);
            tracing::error!(error = %err, "store failed; new events are refused until the server has restarted in place");
            *slot = Some((err.to_string(), Instant::now(), out_of_space));
        }
    }
}

/// A gRPC interceptor for the dispatchers' and admins' services: while the
/// store has failed, calls get `UNAVAILABLE` with the reason instead of
/// reaching a sled that may block them (the REST API does the same).
pub fn refuse_while_failed(
    health: Arc<Health>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request| match health.store_failure() {
        Some(why) => Err(tonic::Status::unavailable(format!(
            "{why}. Retry in a few seconds"
        ))),
        None => Ok(request),
    }
}

/// How often a replica asks the database whether it is there, and how long
/// it waits for the answer.
const PING_EVERY: Duration = Duration::from_millis(500);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a replica commits a probe (each takes a transaction id); the
/// probe's own bound is the store's write bound, so a stall shows within
/// this plus `store.write_timeout_ms`.
const PROBE_COMMIT_EVERY: Duration = Duration::from_secs(2);

/// Readiness of a shared store: `/healthz` reports `database_unreachable`
/// and uplinks are refused (gateways keep their events and fail over)
/// while the database does not answer.
pub async fn watch_database(health: Arc<Health>, store: Store, cancel: CancellationToken) {
    let mut last_probe: Option<Instant> = None;
    loop {
        let answer = match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(err.to_string()),
            Err(_) => Some(format!("no answer within {} s", PING_TIMEOUT.as_secs())),
        };
        metrics::gauge!(m::DATABASE_UP).set(if answer.is_none() { 1.0 } else { 0.0 });
        {
            let mut slot = health.database_error.lock().expect("health lock");
            match (&*slot, &answer) {
                (None, Some(why)) => {
                    tracing::error!(error = %why, "the database does not answer; refusing events until it does")
                }
                (Some(_), None) => tracing::info!("the database answers again"),
                _ => {}
            }
            *slot = answer;
        }
        // Reads can answer while every commit hangs: a commit of its own,
        // now and then, tells this replica which. While the database does
        // not answer at all, that is the reason already.
        if health.database_error().is_none()
            && last_probe.is_none_or(|at| at.elapsed() >= PROBE_COMMIT_EVERY)
        {
            last_probe = Some(Instant::now());
            match store.probe_commit().await {
                Ok(()) => health.set_stalled(None),
                Err(err @ StoreError::Stalled(_)) => health.set_stalled(Some(err.to_string())),
                Err(err) => tracing::warn!(error = %err, "the probe commit failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PING_EVERY) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

const CHECK_EVERY: Duration = Duration::from_millis(250);
/// A store that failed for another reason than space is reopened after
/// this long (a restart loop on a broken disk stays slow).
const RETRY_OTHER_FAILURES_AFTER: Duration = Duration::from_secs(5);

/// Reads free space, moves the reserve, keeps the gauges current, and
/// restarts the process in place once a failed store can be reopened.
///
/// Runs on its own OS thread, not on the async runtime: a failed sled can
/// block the threads that call it, and the way out must not depend on them.
pub fn watch(health: Arc<Health>, cancel: CancellationToken) {
    std::thread::Builder::new()
        .name("store-watch".into())
        .spawn(move || watch_loop(&health, &cancel))
        .expect("spawning the store watch thread");
}

fn watch_loop(health: &Health, cancel: &CancellationToken) {
    loop {
        std::thread::sleep(CHECK_EVERY);
        if cancel.is_cancelled() {
            return;
        }
        let level = match health.disk.check() {
            Ok(level) => level,
            Err(err) => {
                tracing::warn!(error = %err, "reading free disk space failed");
                continue;
            }
        };
        metrics::gauge!(m::DISK_FREE_BYTES).set(health.disk.free() as f64);
        metrics::gauge!(m::DISK_RESERVE_BYTES).set(health.disk.reserve_held() as f64);
        metrics::gauge!(m::DISK_LEVEL).set(level as u8 as f64);
        let failed_at = health
            .store_error
            .lock()
            .expect("health lock")
            .as_ref()
            .map(|(_, at, out_of_space)| (*at, *out_of_space));
        if let Some((at, out_of_space)) = failed_at
            && if out_of_space {
                level == DiskLevel::Ok
            } else {
                at.elapsed() >= RETRY_OTHER_FAILURES_AFTER
            }
        {
            anxin_host::restart::in_place("the store failed; reopening it in a fresh process");
        }
    }
}

/// The rounds of a periodic task: [`Rounds::next`] waits for the next
/// tick (or the wake signal) and skips rounds while the store has failed —
/// a failed sled can block its callers, so it is left alone until the
/// restart in place, and the next round after it catches up. The welfare
/// judges, retention and the outbox's deliverer run this way; the
/// escalation timer sleeps until the next deadline and the seal runs once
/// more at shutdown, so they keep loops of their own.
pub struct Rounds<'a> {
    tick: tokio::time::Interval,
    wake: Option<&'a tokio::sync::Notify>,
    health: &'a Health,
    cancel: &'a CancellationToken,
}

impl<'a> Rounds<'a> {
    /// A round every `period` (a late one delays the next).
    pub fn every(period: Duration, health: &'a Health, cancel: &'a CancellationToken) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            tick,
            wake: None,
            health,
            cancel,
        }
    }

    /// Also a round as soon as `wake` is signalled (new work was stored).
    pub fn or_when(mut self, wake: &'a tokio::sync::Notify) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Waits for the next round the store can take; `false` once
    /// cancelled.
    pub async fn next(&mut self) -> bool {
        loop {
            match self.wake {
                None => tokio::select! {
                    _ = self.cancel.cancelled() => return false,
                    _ = self.tick.tick() => {}
                },
                Some(wake) => tokio::select! {
                    _ = self.cancel.cancelled() => return false,
                    _ = self.tick.tick() => {}
                    _ = wake.notified() => {}
                },
            }
            if self.health.store_error().is_none() {
                return true;
            }
        }
    }
}

/// Seals the store every second, and once more when the server stops, so a
/// store that later opens with less than it had made durable is refused.
/// Not while the store has failed (sled is left alone then; see
/// `health.rs`). While it is short of space nothing new is written, but the
/// store is still flushed: dispatchers' actions go on then, and a write of
/// theirs that met `ENOSPC` leaves sled failed without telling anyone; the
/// flush finds it, and the restart in place follows once there is room.
pub async fn seal(store: Store, health: Arc<Health>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tick.tick() => false,
        };
        let outcome = if health.store_error().is_some() {
            Ok(())
        } else if health.refuse_events().is_none() {
            let sealing = store.clone();
            tokio::task::spawn_blocking(move || sealing.seal())
                .await
                .expect("seal task panicked")
        } else {
            store.flush().await
        };
        if let Err(err) = outcome {
            metrics::counter!(m::STORE_ERRORS).increment(1);
            health.store_failed(&err);
            tracing::warn!(error = %err, "sealing or flushing the store failed");
        }
        if stopping {
            return;
        }
    }
}
