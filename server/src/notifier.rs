//! Telling people: offers to carers and supervisors, the emergency-services
//! hook, stand-downs.
//!
//! [`Channel`] is the seam for SMS, voice or app push; [`Webhook`] is the one
//! built here: a JSON POST signed with HMAC-SHA256 over
//! `"{timestamp}.{body}"` with a shared secret (header
//! `X-Anxin-Signature: sha256=<hex>`, timestamp in `X-Anxin-Timestamp`),
//! retried with backoff on network errors, 429 and 5xx. Every delivery
//! carries a `deliveryId` so a receiver can drop a retried duplicate.
//! Deliveries run in the background; their outcome is written to the audit
//! log.

use std::time::Duration;

use anxin_proto::{now_ms, v1::AuditEntry};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::store::Store;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub delivery_id: String,
    /// `offer`, `emergency_services`, `stand_down`.
    #[serde(rename = "type")]
    pub kind: String,
    pub alert_id: String,
    pub priority: String,
    pub alert_kind: String,
    pub community_id: String,
    pub resident_id: String,
    pub staff_id: String,
    pub escalation_level: u32,
    pub deadline_ms: i64,
    pub sent_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("receiver answered {0}")]
    Status(u16),
    #[error("request failed: {0}")]
    Transport(String),
}

impl NotifyError {
    fn retryable(&self) -> bool {
        match self {
            NotifyError::Status(code) => *code == 429 || *code >= 500,
            NotifyError::Transport(_) => true,
        }
    }
}

#[async_trait::async_trait]
pub trait Channel: Send + Sync {
    /// One attempt to deliver to `address`.
    async fn deliver(&self, address: &str, notification: &Notification) -> Result<(), NotifyError>;
}

pub struct Webhook {
    client: reqwest::Client,
    secret: String,
}

impl Webhook {
    pub fn new(secret: &str, timeout: Duration) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("building the webhook HTTP client"),
            secret: secret.to_string(),
        }
    }
}

/// The signature a receiver recomputes to check a delivery.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait::async_trait]
impl Channel for Webhook {
    async fn deliver(&self, address: &str, notification: &Notification) -> Result<(), NotifyError> {
        let body = serde_json::to_vec(notification).expect("notifications serialize");
        let timestamp = now_ms().to_string();
        let response = self
            .client
            .post(address)
            .header("content-type", "application/json")
            .header("x-anxin-timestamp", &timestamp)
            .header(
                "x-anxin-signature",
                signature(&self.secret, &timestamp, &body),
            )
            .header("x-anxin-delivery", &notification.delivery_id)
            .body(body)
            .send()
            .await
            .map_err(|e| NotifyError::Transport(e.to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(NotifyError::Status(response.status().as_u16()))
        }
    }
}

#[derive(Clone)]
pub struct Notifier {
    channel: std::sync::Arc<dyn Channel>,
    store: Store,
    attempts: u32,
    backoff_initial: Duration,
}

impl Notifier {
    pub fn new(
        channel: std::sync::Arc<dyn Channel>,
        store: Store,
        attempts: u32,
        backoff_initial: Duration,
    ) -> Self {
        Self {
            channel,
            store,
            attempts: attempts.max(1),
            backoff_initial,
        }
    }

    /// Delivers in the background, retrying; the outcome is audited.
    pub fn send(&self, address: String, notification: Notification) {
        let this = self.clone();
        tokio::spawn(async move { this.deliver_with_retries(&address, &notification).await });
    }

    async fn deliver_with_retries(&self, address: &str, notification: &Notification) {
        let mut backoff = self.backoff_initial;
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match self.channel.deliver(address, notification).await {
                Ok(()) => break Ok(()),
                Err(err) if err.retryable() && attempt < self.attempts => {
                    tracing::warn!(%address, attempt, error = %err, alert_id = %notification.alert_id, "notification failed; retrying");
                    metrics::counter!(crate::metrics::NOTIFY_RETRIES).increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(err) => break Err(err),
            }
        };
        let (action, detail) = match &outcome {
            Ok(()) => {
                metrics::counter!(crate::metrics::NOTIFY_DELIVERED).increment(1);
                (
                    "notify.delivered",
                    format!(
                        "{} to {address} after {attempt} attempt(s)",
                        notification.kind
                    ),
                )
            }
            Err(err) => {
                metrics::counter!(crate::metrics::NOTIFY_FAILED).increment(1);
                tracing::error!(%address, attempt, error = %err, alert_id = %notification.alert_id, "notification undeliverable");
                (
                    "notify.failed",
                    format!(
                        "{} to {address}: {err} after {attempt} attempt(s)",
                        notification.kind
                    ),
                )
            }
        };
        let entry = AuditEntry {
            at_ms: now_ms(),
            actor: "system".into(),
            action: action.into(),
            target: format!("alert/{}", notification.alert_id),
            community_id: notification.community_id.clone(),
            detail,
            ..Default::default()
        };
        let written = match self.store.append(entry) {
            Ok(_) => self.store.flush().await,
            Err(err) => Err(err),
        };
        if let Err(err) = written {
            tracing::error!(error = %err, "writing the notification's audit entry failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        let a = signature("s3cret", "1", b"{}");
        assert!(a.starts_with("sha256="));
        assert_ne!(a, signature("s3cret", "2", b"{}"));
        assert_ne!(a, signature("other", "1", b"{}"));
        assert_ne!(a, signature("s3cret", "1", b"{ }"));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(NotifyError::Status(503).retryable());
        assert!(NotifyError::Status(429).retryable());
        assert!(!NotifyError::Status(400).retryable());
        assert!(NotifyError::Transport("refused".into()).retryable());
    }
}
