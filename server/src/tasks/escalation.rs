//! The escalation timer: when an offer's deadline passes without an
//! acknowledgement, the alert moves to the next step of its chain.
//!
//! Deadlines live in the store (the `deadlines` tree), not in memory: after
//! a restart the timer reads them back and fires every one that passed
//! while the server was down, at once.
//!
//! An answer window is elapsed time. Stored deadlines are wall-clock
//! instants, so before every look at them the timer checks whether the wall
//! clock stepped (against `CLOCK_BOOTTIME`, see `anxin_host::clock`) and, if
//! it did, moves every pending deadline by the step: a clock set back an
//! hour neither holds an SOS for an hour nor, set forward, fires every offer
//! at once. The last reading is saved in the store, so a step while the
//! server was stopped is caught at start-up too. The timer never sleeps
//! longer than [`STEP_CHECK`], so a step is seen within that.

use anxin_host::clock::{DEFAULT_TOLERANCE_MS, Mark, StepDetector};
use anxin_proto::now_ms;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::{
    desks::alerts::{AlertDesk, DeskError},
    store::StoreError,
    tasks::health::Health,
};

/// Longest sleep: also how soon a wall-clock step is noticed.
const STEP_CHECK: std::time::Duration = std::time::Duration::from_millis(500);
const IDLE: std::time::Duration = STEP_CHECK;
/// How often the clock mark is written.
const SAVE_MARK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Moves the stored deadlines by a detected step, and counts it.
fn rebase(desk: &AlertDesk, step_ms: i64, when: &str) {
    let direction = if step_ms < 0 { "back" } else { "forward" };
    metrics::counter!(crate::metrics::CLOCK_STEPS, "direction" => direction).increment(1);
    match desk.store().rebase_deadlines(step_ms) {
        Ok(moved) => tracing::warn!(
            step_ms,
            moved,
            when,
            "wall clock stepped {direction}; offer deadlines re-based so answer windows keep their length"
        ),
        Err(err) => {
            tracing::error!(step_ms, error = %err, "re-basing offer deadlines after a clock step failed")
        }
    }
}

pub async fn run(desk: AlertDesk, health: Arc<Health>, cancel: CancellationToken) {
    let mut clock = StepDetector::new(now_ms(), DEFAULT_TOLERANCE_MS);
    match desk.store().clock_mark() {
        Ok(Some(saved)) => {
            if let Some(step) = saved.step_to(&Mark::now(now_ms()), DEFAULT_TOLERANCE_MS) {
                rebase(&desk, step, "while the server was stopped");
            }
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %err, "reading the saved clock mark failed"),
    }
    let mut mark_saved = None;
    loop {
        if health.store_error().is_some() {
            // The store is out of use until the restart in place; a failed
            // sled can block its callers, so leave it alone meanwhile.
            tokio::select! {
                _ = tokio::time::sleep(STEP_CHECK) => continue,
                _ = cancel.cancelled() => return,
            }
        }
        if let Some(step) = clock.check(now_ms()) {
            rebase(&desk, step, "while running");
            // At once: a mark from before this step would make the next
            // start re-base the deadlines a second time.
            mark_saved = None;
        }
        // Otherwise a mark of any age catches a step across a restart (it
        // compares wall and boot clocks over the gap), so it need not be
        // written at every look: with a shared database that was a write
        // per replica every half second.
        if mark_saved.is_none_or(|at: std::time::Instant| at.elapsed() >= SAVE_MARK_EVERY) {
            match desk.store().save_clock_mark(clock.last()) {
                Ok(()) => mark_saved = Some(std::time::Instant::now()),
                Err(err) => tracing::debug!(error = %err, "saving the clock mark failed"),
            }
        }
        let (due, next) = match desk.store().due_offers(now_ms()) {
            Ok(found) => found,
            Err(err) => {
                tracing::error!(error = %err, "reading offer deadlines failed; retrying");
                (Vec::new(), Some(now_ms() + 1_000))
            }
        };
        let mut failed = false;
        for alert_id in due {
            match desk.due(&alert_id).await {
                Ok(alert) if alert.state() == anxin_proto::v1::AlertState::New => {
                    tracing::info!(
                        alert_id,
                        "family call-out: the contact called had their minutes; the next step taken"
                    )
                }
                Ok(alert) => {
                    tracing::warn!(alert_id, level = alert.escalation_level, offered_to = %alert.offered_to, "offer deadline passed; escalated")
                }
                Err(DeskError::Store(StoreError::Stale(why))) => {
                    tracing::debug!(alert_id, why, "deadline no longer applies")
                }
                Err(err) => {
                    failed = true;
                    tracing::error!(alert_id, error = %err, "escalation failed; retrying")
                }
            }
        }
        let mut wait = next.map_or(IDLE, |at| {
            std::time::Duration::from_millis(
                (at - now_ms()).clamp(0, IDLE.as_millis() as i64) as u64
            )
        });
        if failed {
            // The failed deadline is still due: don't spin on it.
            wait = wait.max(std::time::Duration::from_secs(1));
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = desk.deadlines_changed().notified() => {}
            _ = cancel.cancelled() => return,
        }
    }
}
