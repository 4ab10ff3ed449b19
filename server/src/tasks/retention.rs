//! Retention: what the server keeps, and for how long (`[retention]`,
//! docs/operations.md "Retention").
//!
//! A background task prunes in bounded batches (one transaction each, a
//! pause between them) so the alarm path never waits behind it. Events
//! that belong to no alert go first, each folded into its device's daily
//! summary in the same transaction; then summaries past their own period;
//! then closed alerts with their events; then the oldest audit entries,
//! the chain's anchor moved to the last one removed. A run that removed
//! anything leaves one audit entry saying what and up to when (and where
//! the chain now starts).

use std::time::Duration;

use anxin_proto::{now_ms, v1::AuditEntry};
use tokio_util::sync::CancellationToken;

use crate::tasks::health::Rounds;
use crate::{
    config::RetentionConfig,
    domain::calendar,
    store::{Store, StoreError},
};

/// The periods in milliseconds and the calendar the summaries use.
#[derive(Debug, Clone)]
pub struct Policy {
    pub events_ms: Option<i64>,
    pub event_days_ms: Option<i64>,
    pub alerts_ms: Option<i64>,
    pub audit_ms: Option<i64>,
    pub batch: usize,
    pub pause: Duration,
    pub interval: Duration,
    pub utc_offset_minutes: i32,
}

impl Policy {
    pub fn new(config: &RetentionConfig, utc_offset_minutes: i32) -> Self {
        Self {
            events_ms: config.events.ms(),
            event_days_ms: config.event_days.ms(),
            alerts_ms: config.alerts.ms(),
            audit_ms: config.audit.ms(),
            batch: config.batch,
            pause: Duration::from_millis(config.pause_ms),
            interval: Duration::from_secs(config.interval_secs),
            utc_offset_minutes,
        }
    }
}

/// What one run removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub event_days: u64,
    pub vital_days: u64,
    pub alerts: u64,
    pub alert_events: u64,
    pub audit: u64,
}

impl Pruned {
    pub fn is_empty(&self) -> bool {
        *self == Pruned::default()
    }
}

/// Runs batches of `prune` until one comes back short, `pause` apart. A
/// sled batch holds the store's write lock while it applies (every commit
/// waits for it), and on two cores its work competes with the alarm path:
/// spread evenly, pruning adds a little to every commit instead of a lot
/// to the commits of a burst. It also caps pruning at `batch` records per
/// pause (50 / 10 ms = 5,000 a second).
async fn drain(
    store: &Store,
    batch: usize,
    pause: Duration,
    prune: impl Fn(&Store, usize) -> Result<u64, StoreError> + Send + Sync + Clone + 'static,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let (store_, prune_) = (store.clone(), prune.clone());
        let removed = tokio::task::spawn_blocking(move || prune_(&store_, batch))
            .await
            .expect("pruning batch panicked")?;
        total += removed;
        if (removed as usize) < batch {
            return Ok(total);
        }
        tokio::time::sleep(pause).await;
    }
}

/// One pruning run as of `now_ms`; audited when it removed anything.
pub async fn prune(store: &Store, policy: &Policy, now_ms: i64) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    let mut detail = Vec::new();
    if let Some(keep) = policy.events_ms {
        let before = now_ms - keep;
        let offset = policy.utc_offset_minutes;
        pruned.events = drain(store, policy.batch, policy.pause, move |s, n| {
            s.prune_events(before, offset, n)
        })
        .await?;
        if pruned.events > 0 {
            detail.push(format!(
                "{} events of no alert received before {before} (folded into daily summaries)",
                pruned.events
            ));
        }
    }
    if let Some(keep) = policy.event_days_ms {
        let before = calendar::local_day(now_ms - keep, policy.utc_offset_minutes);
        pruned.event_days = drain(store, policy.batch, policy.pause, move |s, n| {
            s.prune_event_days(before, n)
        })
        .await?;
        if pruned.event_days > 0 {
            detail.push(format!(
                "{} daily summaries of days before {}",
                pruned.event_days,
                calendar::date_of(before)
            ));
        }
        // Residents' vital signs by day are daily summaries too.
        pruned.vital_days = drain(store, policy.batch, policy.pause, move |s, n| {
            s.prune_vital_days(before, n)
        })
        .await?;
        if pruned.vital_days > 0 {
            detail.push(format!(
                "{} vital-sign days before {}",
                pruned.vital_days,
                calendar::date_of(before)
            ));
        }
    }
    if let Some(keep) = policy.alerts_ms {
        let before = now_ms - keep;
        let events = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = events.clone();
        pruned.alerts = drain(store, policy.batch, policy.pause, move |s, n| {
            let (alerts, events) = s.prune_alerts(before, n)?;
            counted.fetch_add(events, std::sync::atomic::Ordering::Relaxed);
            Ok(alerts)
        })
        .await?;
        pruned.alert_events = events.load(std::sync::atomic::Ordering::Relaxed);
        if pruned.alerts > 0 {
            detail.push(format!(
                "{} alerts closed before {before} with their {} events",
                pruned.alerts, pruned.alert_events
            ));
        }
    }
    if let Some(keep) = policy.audit_ms {
        let before = now_ms - keep;
        pruned.audit = drain(store, policy.batch, policy.pause, move |s, n| {
            s.prune_audit(before, n)
        })
        .await?;
        if pruned.audit > 0 {
            let anchor = store.audit_anchor()?.unwrap_or_default();
            detail.push(format!(
                "{} audit entries written before {before}; the chain now starts after entry {} \
                 (hash {})",
                pruned.audit, anchor.id, anchor.hash
            ));
        }
    }
    if !pruned.is_empty() {
        store.append(AuditEntry {
            at_ms: now_ms,
            actor: "system".into(),
            action: "retention.pruned".into(),
            target: "store".into(),
            detail: detail.join("; "),
            ..Default::default()
        })?;
        store.flush().await?;
    }
    Ok(pruned)
}

pub async fn run(
    store: Store,
    health: std::sync::Arc<crate::tasks::health::Health>,
    policy: Policy,
    cancel: CancellationToken,
) {
    if policy.events_ms.is_none()
        && policy.event_days_ms.is_none()
        && policy.alerts_ms.is_none()
        && policy.audit_ms.is_none()
    {
        tracing::info!("retention: every record is kept (retention.* = \"keep\")");
        return;
    }
    let mut rounds = Rounds::every(policy.interval, &health, &cancel);
    while rounds.next().await {
        let started = std::time::Instant::now();
        match prune(&store, &policy, now_ms()).await {
            Ok(pruned) => {
                for (kind, n) in [
                    ("event", pruned.events),
                    ("event_day", pruned.event_days),
                    ("vital_day", pruned.vital_days),
                    ("alert", pruned.alerts),
                    ("alert_event", pruned.alert_events),
                    ("audit", pruned.audit),
                ] {
                    metrics::counter!(crate::metrics::RETENTION_PRUNED, "kind" => kind)
                        .increment(n);
                }
                metrics::gauge!(crate::metrics::RETENTION_LAST_RUN).set(now_ms() as f64 / 1e3);
                if !pruned.is_empty() {
                    tracing::info!(
                        events = pruned.events,
                        event_days = pruned.event_days,
                        vital_days = pruned.vital_days,
                        alerts = pruned.alerts,
                        alert_events = pruned.alert_events,
                        audit = pruned.audit,
                        took_ms = started.elapsed().as_millis() as u64,
                        "retention: pruned"
                    );
                }
            }
            Err(err) => {
                metrics::counter!(crate::metrics::STORE_ERRORS).increment(1);
                health.store_failed(&err);
                tracing::error!(error = %err, "retention: pruning failed; trying again next run");
            }
        }
    }
}
