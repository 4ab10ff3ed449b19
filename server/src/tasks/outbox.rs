//! Telling people: offers to carers and supervisors, the emergency-services
//! hook, stand-downs.
//!
//! [`Channel`] is the seam for SMS, voice or app push; [`Webhook`] is the one
//! built here: a JSON POST signed with HMAC-SHA256 over
//! `"{timestamp}.{delivery id}.{body}"` with a shared secret (header
//! `X-Anxin-Signature: sha256=<hex>`, the timestamp in `X-Anxin-Timestamp`,
//! the delivery id in `X-Anxin-Delivery`), retried with backoff on network
//! errors, 429 and 5xx. A receiver checks the signature, refuses a timestamp
//! more than a few minutes away, and drops a delivery id it has seen (a
//! retry, or a captured delivery replayed). Only hosts the operator lists in
//! `notify.webhook_hosts` are ever called ([`WebhookHosts`]).
//! Notifications go through a durable outbox in the store (see
//! [`Notifier`]); their outcome is written to the audit log.

use std::time::Duration;

use anxin_proto::{now_ms, v1::AuditEntry};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::notification::{Notification, WebhookHosts};
use crate::{
    desks::outbox::Notifier,
    store::{OutboxItem, Store},
    tasks::health::Rounds,
};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("receiver answered {0}")]
    Status(u16),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("{0}")]
    NotAllowed(String),
}

impl NotifyError {
    fn retryable(&self) -> bool {
        match self {
            NotifyError::Status(code) => *code == 429 || *code >= 500,
            NotifyError::Transport(_) => true,
            NotifyError::NotAllowed(_) => false,
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
    hosts: WebhookHosts,
}

impl Webhook {
    pub fn new(secret: &str, timeout: Duration, hosts: WebhookHosts) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                // A redirect could lead anywhere: the allow-list is the
                // address that is called, nothing it points on to.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("building the webhook HTTP client"),
            secret: secret.to_string(),
            hosts,
        }
    }
}

/// The signature a receiver recomputes to check a delivery: HMAC-SHA256
/// of `"{timestamp}.{delivery id}.{body}"`.
pub fn signature(secret: &str, timestamp: &str, delivery_id: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(delivery_id.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait::async_trait]
impl Channel for Webhook {
    async fn deliver(&self, address: &str, notification: &Notification) -> Result<(), NotifyError> {
        self.hosts.check(address).map_err(NotifyError::NotAllowed)?;
        let body = serde_json::to_vec(notification).expect("notifications serialize");
        let timestamp = now_ms().to_string();
        let response = self
            .client
            .post(address)
            .header("content-type", "application/json")
            .header("x-anxin-timestamp", &timestamp)
            .header(
                "x-anxin-signature",
                signature(&self.secret, &timestamp, &notification.delivery_id, &body),
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

/// SMS through Kannel's smsbox: one `sendsms` request per message (smsbox
/// splits a long one and the phone joins it again), UTF-8 in, UCS-2 to
/// the carrier when the text is not plain ASCII, a delivery report asked
/// for at a tagged URL of this server. A family message that carries a
/// link gets a fresh single-use link, minted as it is sent.
pub struct Sms {
    client: reqwest::Client,
    config: crate::config::SmsConfig,
    family: crate::desks::family::FamilyDesk,
}

impl Sms {
    pub fn new(
        config: crate::config::SmsConfig,
        timeout: Duration,
        family: crate::desks::family::FamilyDesk,
    ) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("building the SMS gateway's HTTP client"),
            config,
            family,
        }
    }
}

#[async_trait::async_trait]
impl Channel for Sms {
    async fn deliver(&self, address: &str, notification: &Notification) -> Result<(), NotifyError> {
        let phone = address.trim_start_matches("sms:");
        if self.config.sendsms_url.is_empty() {
            return Err(NotifyError::NotAllowed(
                "no SMS gateway configured (sms.sendsms_url)".into(),
            ));
        }
        let mut text = notification.text.clone();
        if notification.link {
            let link = self
                .family
                .mint_link(&notification.resident_id, phone, &notification.alert_id)
                .map_err(|e| NotifyError::Transport(format!("making the family link: {e}")))?;
            text = crate::domain::family::with_link(&text, &notification.language, &link);
        }
        let mut query: Vec<(&str, String)> = vec![
            ("username", self.config.username.clone()),
            ("password", self.config.password.clone()),
            ("to", phone.to_string()),
            ("text", text.clone()),
            ("charset", "UTF-8".into()),
            ("coding", if text.is_ascii() { "0" } else { "2" }.into()),
        ];
        if !self.config.from.is_empty() {
            query.push(("from", self.config.from.clone()));
        }
        if !self.config.dlr_base_url.is_empty() {
            let tag =
                crate::domain::family::report_tag(&self.config.password, &notification.delivery_id);
            query.push(("dlr-mask", "27".into()));
            query.push((
                "dlr-url",
                format!(
                    "{}/api/v1/sms/report?d={}&k={tag}&s=%d&r=%A",
                    self.config.dlr_base_url.trim_end_matches('/'),
                    notification.delivery_id
                ),
            ));
        }
        let response = self
            .client
            .get(&self.config.sendsms_url)
            .query(&query)
            .send()
            .await
            .map_err(|e| NotifyError::Transport(e.to_string()))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        // smsbox: 202 "0: Accepted for delivery" or "3: Queued for later
        // delivery"; 4xx for a refused request (bad user, bad number).
        if status.is_success() {
            tracing::info!(%phone, delivery_id = %notification.delivery_id, answer = %body.trim(), "SMS handed to the SMS gateway");
            Ok(())
        } else {
            tracing::warn!(%phone, status = status.as_u16(), answer = %body.trim(), "the SMS gateway refused an SMS");
            Err(NotifyError::Status(status.as_u16()))
        }
    }
}

/// Where each notification goes by its address: `sms:+86…` to the SMS
/// gateway, anything else to a webhook.
pub struct Channels {
    pub webhook: Webhook,
    pub sms: Sms,
}

#[async_trait::async_trait]
impl Channel for Channels {
    async fn deliver(&self, address: &str, notification: &Notification) -> Result<(), NotifyError> {
        if address.starts_with("sms:") {
            self.sms.deliver(address, notification).await
        } else {
            self.webhook.deliver(address, notification).await
        }
    }
}

/// A family message keeps being tried for longer than a webhook: while the
/// SMS gateway is down its backoff reaches 30 s, so this is ~10 minutes.
const FAMILY_ATTEMPTS: u32 = 25;

/// How many notifications one deliverer takes from the outbox at a time.
const CLAIM: usize = 32;
/// How often the outbox is looked at when nothing wakes the deliverer
/// (another replica's notifications, retries coming due).
const POLL: Duration = Duration::from_millis(500);

/// The deliverer of the durable outbox: every notification is stored
/// before anyone tries to send it (see [`Notifier`]), tried until
/// delivered or out of attempts across restarts and replicas, and leaves
/// the outbox in the transaction that audits its outcome — so each is
/// delivered at least once and recorded once.
#[derive(Clone)]
pub struct Deliverer {
    channel: std::sync::Arc<dyn Channel>,
    store: Store,
    attempts: u32,
    backoff_initial: Duration,
    /// How long a claimed notification is held: longer than one attempt.
    lease: Duration,
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// Family messages: the alert shows each one sent as the SMS gateway
    /// takes it (Kannel's delivery reports follow).
    family: Option<crate::desks::family::FamilyDesk>,
}

impl Deliverer {
    /// Writes "sent" on each family message the SMS gateway takes.
    pub fn with_family(mut self, family: crate::desks::family::FamilyDesk) -> Self {
        self.family = Some(family);
        self
    }

    pub fn new(
        channel: std::sync::Arc<dyn Channel>,
        notifier: &Notifier,
        attempts: u32,
        backoff_initial: Duration,
        attempt_timeout: Duration,
    ) -> Self {
        Self {
            channel,
            store: notifier.store().clone(),
            attempts: attempts.max(1),
            backoff_initial,
            lease: attempt_timeout + Duration::from_secs(10),
            wake: notifier.signal(),
            family: None,
        }
    }

    /// Delivers from the outbox until cancelled.
    pub async fn run(
        self,
        health: std::sync::Arc<crate::tasks::health::Health>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        // A failed store is left alone until the restart in place (a
        // failed sled can block its callers); the outbox keeps what is due
        // and the next process delivers it.
        let mut rounds = Rounds::every(POLL, &health, &cancel).or_when(&self.wake);
        while rounds.next().await {
            let lease = self.lease.as_millis() as i64;
            match self.store.claim_notifications(now_ms(), lease, CLAIM) {
                Ok(items) => {
                    for item in items {
                        let this = self.clone();
                        tokio::spawn(async move { this.attempt(item).await });
                    }
                }
                Err(err) => {
                    health.store_failed(&err);
                    tracing::warn!(error = %err, "reading the notification outbox failed")
                }
            }
        }
    }

    /// One attempt at one claimed notification, and what follows from it.
    async fn attempt(&self, mut item: OutboxItem) {
        let notification: Notification = match serde_json::from_slice(&item.notification) {
            Ok(n) => n,
            Err(err) => {
                self.finish(&item, "notify.failed", format!("unreadable: {err}"))
                    .await;
                return;
            }
        };
        item.attempts += 1;
        let address = item.address.clone();
        match self.channel.deliver(&address, &notification).await {
            Ok(()) => {
                metrics::counter!(crate::metrics::NOTIFY_DELIVERED).increment(1);
                let detail = format!(
                    "{} to {address} after {} attempt(s)",
                    item.kind, item.attempts
                );
                self.finish(&item, "notify.delivered", detail).await;
                if item.kind.starts_with("family_")
                    && let Some(family) = &self.family
                    && let Err(err) = family.record_delivery(&item.delivery_id, "sent").await
                {
                    tracing::warn!(delivery_id = %item.delivery_id, error = %err, "recording a family message as sent failed");
                }
            }
            Err(err)
                if err.retryable()
                    && item.attempts
                        < if item.kind.starts_with("family_") {
                            self.attempts.max(FAMILY_ATTEMPTS)
                        } else {
                            self.attempts
                        } =>
            {
                tracing::warn!(%address, attempt = item.attempts, error = %err, alert_id = %item.alert_id, "notification failed; retrying");
                metrics::counter!(crate::metrics::NOTIFY_RETRIES).increment(1);
                let backoff = (self.backoff_initial * 2u32.pow(item.attempts.min(16) - 1))
                    .min(Duration::from_secs(30));
                item.next_at_ms = now_ms() + backoff.as_millis() as i64;
                if let Err(err) = self.store.retry_notification(&item) {
                    tracing::warn!(error = %err, "writing back a notification to retry failed; its lease runs out and it is tried again");
                }
                let wake = self.wake.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(backoff).await;
                    wake.notify_one();
                });
            }
            Err(err) => {
                metrics::counter!(crate::metrics::NOTIFY_FAILED).increment(1);
                tracing::error!(%address, attempt = item.attempts, error = %err, alert_id = %item.alert_id, "notification undeliverable");
                let detail = format!(
                    "{} to {address}: {err} after {} attempt(s)",
                    item.kind, item.attempts
                );
                self.finish(&item, "notify.failed", detail).await;
            }
        }
    }

    async fn finish(&self, item: &OutboxItem, action: &str, detail: String) {
        let entry = AuditEntry {
            at_ms: now_ms(),
            actor: "system".into(),
            action: action.into(),
            target: format!("alert/{}", item.alert_id),
            community_id: item.community_id.clone(),
            detail,
            ..Default::default()
        };
        let finished = match self.store.finish_notification(&item.delivery_id, entry) {
            Ok(finished) => self.store.flush().await.map(|()| finished),
            Err(err) => Err(err),
        };
        match finished {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(delivery_id = %item.delivery_id, "another deliverer already finished this notification")
            }
            Err(err) => {
                tracing::error!(error = %err, delivery_id = %item.delivery_id, "recording a notification's outcome failed; it is tried again when its lease runs out")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_delivery_and_body() {
        let a = signature("s3cret", "1", "7-0-offer", b"{}");
        assert!(a.starts_with("sha256="));
        assert_ne!(a, signature("s3cret", "2", "7-0-offer", b"{}"));
        assert_ne!(a, signature("s3cret", "1", "7-1-offer", b"{}"));
        assert_ne!(a, signature("other", "1", "7-0-offer", b"{}"));
        assert_ne!(a, signature("s3cret", "1", "7-0-offer", b"{ }"));
    }

    #[test]
    fn only_listed_hosts_are_called() {
        let hosts = WebhookHosts::new(&["hooks.example.cn".into(), "*.city.gov.cn".into()]);
        assert!(hosts.check("https://hooks.example.cn/x").is_ok());
        assert!(hosts.check("https://HOOKS.example.cn:8443/x").is_ok());
        assert!(hosts.check("https://sms.city.gov.cn/x").is_ok());
        assert!(hosts.check("https://city.gov.cn.evil.com/x").is_err());
        assert!(hosts.check("http://169.254.169.254/latest").is_err());
        assert!(hosts.check("file:///etc/passwd").is_err());
        let err = WebhookHosts::default()
            .check("https://hooks.example.cn/x")
            .unwrap_err();
        assert!(err.contains("notify.webhook_hosts"), "{err}");
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(NotifyError::Status(503).retryable());
        assert!(NotifyError::Status(429).retryable());
        assert!(!NotifyError::Status(400).retryable());
        assert!(NotifyError::Transport("refused".into()).retryable());
    }
}
