//! Local fallback: when a P0 event has waited in the journal for longer than
//! `fallback.after_secs`, whatever the cause — the server unreachable, the
//! uplink refused, a server that takes the stream and never acknowledges —
//! the gateway alerts on site: a JSON message on `fallback.local_topic` (for
//! an on-site console or siren) and, if configured, a webhook POST. Each P0
//! is alarmed once; what fired is recorded in the journal's database, so a
//! restart does not repeat it. While such a P0 waits, `/healthz` says
//! `uplink_stalled`.
//!
//! The same local alarm is raised when the journal's quota is spent on
//! P0/P1 events (guarantee 4), and at once when a P0/P1 event could not be
//! written at all (ingest).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anxin_proto::{DeviceEvent, Priority, now_ms};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    config::GatewayConfig,
    health::Health,
    journal::{JournalError, JournalReader},
    metrics as m,
    mqtt_out::MqttOut,
    uplink::UplinkState,
};

const WEBHOOK_ATTEMPTS: u32 = 3;

/// Raises local alarms: publishes at once, posts the webhook in the
/// background (a slow webhook must not hold up ingest).
pub struct LocalAlarm {
    out: MqttOut,
    topic: String,
    webhook: Option<(reqwest::Client, String)>,
    gateway_id: String,
}

impl LocalAlarm {
    pub fn new(config: &GatewayConfig, out: MqttOut) -> Self {
        let webhook = (!config.fallback.webhook_url.is_empty()).then(|| {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("building the webhook client");
            (client, config.fallback.webhook_url.clone())
        });
        Self {
            out,
            topic: config.fallback.local_topic.clone(),
            webhook,
            gateway_id: config.gateway_id.clone(),
        }
    }

    pub fn raise(&self, reason: &'static str, events: &[DeviceEvent]) {
        let document = serde_json::json!({
            "gatewayId": self.gateway_id,
            "reason": reason,
            "raisedMs": now_ms(),
            "events": events,
        });
        tracing::error!(reason, events = events.len(), "LOCAL ALARM raised");
        metrics::counter!(m::LOCAL_ALARMS, "reason" => reason).increment(1);
        self.out.publish_json(&self.topic, &document);
        if let Some((client, url)) = self.webhook.clone() {
            tokio::spawn(async move {
                for attempt in 1..=WEBHOOK_ATTEMPTS {
                    match client.post(&url).json(&document).send().await {
                        Ok(response) if response.status().is_success() => return,
                        Ok(response) => {
                            tracing::warn!(%url, status = %response.status(), attempt, "local alarm webhook refused")
                        }
                        Err(err) => {
                            tracing::warn!(%url, error = %err, attempt, "local alarm webhook failed")
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                metrics::counter!(m::LOCAL_ALARM_WEBHOOK_FAILURES).increment(1);
            });
        }
    }
}

pub struct Fallback {
    journal: JournalReader,
    fired: sled::Tree,
    alarm: Arc<LocalAlarm>,
    uplink: watch::Receiver<UplinkState>,
    health: Arc<Health>,
    after: Duration,
    check_interval: Duration,
}

impl Fallback {
    pub fn new(
        config: &GatewayConfig,
        journal: JournalReader,
        alarm: Arc<LocalAlarm>,
        uplink: watch::Receiver<UplinkState>,
        health: Arc<Health>,
    ) -> Result<Self, JournalError> {
        Ok(Self {
            fired: journal.aux_tree("fallback_fired")?,
            journal,
            alarm,
            uplink,
            health,
            after: Duration::from_secs(config.fallback.after_secs),
            check_interval: Duration::from_millis(config.supervision.check_interval_ms),
        })
    }

    pub async fn run(self, cancel: CancellationToken) {
        // When each pending P0 was first seen here (monotonic, so a clock
        // step neither delays nor hastens the alarm). Start-up counts as
        // first sight: a gateway that boots into an outage waits the full
        // `after` before alarming.
        let mut first_seen: HashMap<(String, u64), Instant> = HashMap::new();
        let mut tick = tokio::time::interval(self.check_interval);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            metrics::counter!(m::FALLBACK_CHECKS).increment(1);
            if let Err(err) = self.check(&mut first_seen) {
                tracing::error!(error = %err, "fallback check failed");
            }
        }
    }

    fn check(&self, first_seen: &mut HashMap<(String, u64), Instant>) -> Result<(), JournalError> {
        let now = Instant::now();
        let pending: Vec<DeviceEvent> = self
            .journal
            .lane(Priority::P0, 1000)?
            .into_iter()
            .filter_map(|entry| entry.event.event)
            .collect();
        let mut still = HashMap::with_capacity(pending.len());
        let mut overdue = Vec::new();
        for event in pending {
            let id = (event.device_id.clone(), event.seq);
            let seen = first_seen.get(&id).copied().unwrap_or(now);
            if now.duration_since(seen) >= self.after {
                overdue.push(event);
            }
            still.insert(id, seen);
        }
        *first_seen = still;
        self.health.set_uplink_stalled(!overdue.is_empty());
        if first_seen.is_empty() {
            self.forget_delivered()?;
        }
        let mut fresh = Vec::new();
        for event in overdue {
            let key = format!("{}\0{}", event.device_id, event.seq);
            if self.fired.get(key.as_bytes())?.is_none() {
                self.fired.insert(key.as_bytes(), &now_ms().to_be_bytes())?;
                fresh.push(event);
            }
        }
        if !fresh.is_empty() {
            let reason = if matches!(*self.uplink.borrow(), UplinkState::Connected { .. }) {
                "server_not_acknowledging"
            } else {
                "server_unreachable"
            };
            self.alarm.raise(reason, &fresh);
            metrics::counter!(m::FALLBACK_FIRED).increment(fresh.len() as u64);
        }
        Ok(())
    }

    /// Drops the record of alarms whose events have left the journal.
    fn forget_delivered(&self) -> Result<(), JournalError> {
        for key in self.fired.iter().keys() {
            let key = key?;
            let text = String::from_utf8_lossy(&key);
            let Some((device_id, seq)) = text.split_once('\0') else {
                continue;
            };
            let seq = seq.parse().unwrap_or(0);
            if !self.journal.contains(device_id, seq)? {
                self.fired.remove(&key)?;
            }
        }
        Ok(())
    }
}
