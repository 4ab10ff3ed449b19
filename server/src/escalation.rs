//! The escalation timer: when an offer's deadline passes without an
//! acknowledgement, the alert moves to the next step of its chain.
//!
//! Deadlines live in the store (the `deadlines` tree), not in memory: after
//! a restart the timer reads them back and fires every one that passed
//! while the server was down, at once.

use anxin_proto::now_ms;
use tokio_util::sync::CancellationToken;

use crate::{
    alerts::{AlertDesk, DeskError},
    store::StoreError,
};

/// Longest sleep when nothing is due, as a safety net.
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn run(desk: AlertDesk, cancel: CancellationToken) {
    loop {
        let (due, next) = match desk.store().due_offers(now_ms()) {
            Ok(found) => found,
            Err(err) => {
                tracing::error!(error = %err, "reading offer deadlines failed; retrying");
                (Vec::new(), Some(now_ms() + 1_000))
            }
        };
        let mut failed = false;
        for alert_id in due {
            match desk
                .advance(
                    &alert_id,
                    "system",
                    "no acknowledgement before the deadline",
                    true,
                )
                .await
            {
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
