//! Local fallback: when the dispatch server has been unreachable for longer
//! than `fallback.after_secs` and a P0 event is waiting in the journal, the
//! gateway alerts on site — a JSON message on `fallback.local_topic` (for an
//! on-site console or siren) and, if configured, a webhook POST. Each P0 is
//! alarmed once; what fired is recorded in the journal's database, so a
//! restart does not repeat it.
//!
//! The same local alarm is raised when the journal's quota is spent on
//! P0/P1 events (guarantee 4).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anxin_proto::{DeviceEvent, Priority, now_ms};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    config::GatewayConfig,
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
    after: Duration,
    check_interval: Duration,
}

impl Fallback {
    pub fn new(
        config: &GatewayConfig,
        journal: JournalReader,
        alarm: Arc<LocalAlarm>,
        uplink: watch::Receiver<UplinkState>,
    ) -> Result<Self, JournalError> {
        Ok(Self {
            fired: journal.aux_tree("fallback_fired")?,
            journal,
            alarm,
            uplink,
            after: Duration::from_secs(config.fallback.after_secs),
            check_interval: Duration::from_millis(config.supervision.check_interval_ms),
        })
    }

    pub async fn run(self, cancel: CancellationToken) {
        // Start-up counts as the last contact: a gateway that boots into an
        // outage waits the full `after` before alarming.
        let mut last_connected = Instant::now();
        let mut tick = tokio::time::interval(self.check_interval);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            metrics::counter!(m::FALLBACK_CHECKS).increment(1);
            if matches!(*self.uplink.borrow(), UplinkState::Connected { .. }) {
                last_connected = Instant::now();
                if let Err(err) = self.forget_delivered() {
                    tracing::warn!(error = %err, "pruning fallback records failed");
                }
                continue;
            }
            if last_connected.elapsed() < self.after {
                continue;
            }
            if let Err(err) = self.alarm_pending_p0() {
                tracing::error!(error = %err, "fallback check failed");
            }
        }
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

    fn alarm_pending_p0(&self) -> Result<(), JournalError> {
        let mut fresh = Vec::new();
        for entry in self.journal.lane(Priority::P0, 1000)? {
            let Some(event) = entry.event.event else {
                continue;
            };
            let key = format!("{}\0{}", event.device_id, event.seq);
            if self.fired.get(key.as_bytes())?.is_none() {
                self.fired.insert(key.as_bytes(), &now_ms().to_be_bytes())?;
                fresh.push(event);
            }
        }
        if !fresh.is_empty() {
            self.alarm.raise("server_unreachable", &fresh);
            metrics::counter!(m::FALLBACK_FIRED).increment(fresh.len() as u64);
        }
        Ok(())
    }
}
