//! The welfare judges' task: check-in windows judged as they close, missed
//! visits flagged, once a second while the store is healthy; household
//! meters' silence every `signals.meter_check_secs`.

use anxin_proto::now_ms;

use crate::{
    desks::{
        alerts::AlertDesk,
        signals::Signals,
        welfare::{checkins::CheckinJudge, visits::VisitJudge},
    },
    tasks::health::{Health, Rounds},
};

/// The welfare task: judges check-in windows as they close and flags
/// missed visits, once a second, until cancelled.
pub async fn run(
    desk: AlertDesk,
    health: std::sync::Arc<Health>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut checkins = CheckinJudge::new(desk.clone());
    let meter_every = desk.policy().signals.meter_check;
    let signals = Signals::new(desk.clone());
    let mut visits = VisitJudge::new(desk);
    let mut rounds = Rounds::every(std::time::Duration::from_secs(1), &health, &cancel);
    let mut meters_judged = std::time::Instant::now();
    while rounds.next().await {
        let now = now_ms();
        if meters_judged.elapsed() >= meter_every {
            meters_judged = std::time::Instant::now();
            match signals.judge_silence(now).await {
                Ok(0) => {}
                Ok(raised) => tracing::info!(raised, "household meters' silence raised"),
                Err(err) => {
                    metrics::counter!(crate::metrics::STORE_ERRORS).increment(1);
                    health.store_failed(&err);
                    tracing::error!(error = %err, "judging household meters failed; trying again next round");
                }
            }
        }
        if let Err(err) = checkins.tick(now).await {
            metrics::counter!(crate::metrics::STORE_ERRORS).increment(1);
            health.store_failed(&err);
            tracing::error!(error = %err, "judging check-ins failed; trying again in a second");
        }
        if let Err(err) = visits.tick(now) {
            metrics::counter!(crate::metrics::STORE_ERRORS).increment(1);
            health.store_failed(&err);
            tracing::error!(error = %err, "flagging missed visits failed; trying again in a second");
        }
    }
}
