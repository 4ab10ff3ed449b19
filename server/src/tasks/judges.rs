//! The welfare judges' task: check-in windows judged as they close, missed
//! visits flagged, once a second while the store is healthy.

use anxin_proto::now_ms;

use crate::{
    desks::{
        alerts::AlertDesk,
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
    let mut visits = VisitJudge::new(desk);
    let mut rounds = Rounds::every(std::time::Duration::from_secs(1), &health, &cancel);
    while rounds.next().await {
        let now = now_ms();
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
