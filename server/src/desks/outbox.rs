//! The outbox's front door: a notification is stored before anyone tries
//! to send it — in the transaction of the alert change that causes it
//! ([`crate::store::Change::notifications`]), or on its own through
//! [`Notifier::send`] — and the deliverer (`tasks/outbox.rs`) is woken.

use std::sync::Arc;

use anxin_proto::now_ms;

use crate::{
    domain::notification::Notification,
    store::{OutboxItem, Store},
};

/// Puts notifications in the durable outbox and wakes the deliverer.
#[derive(Clone)]
pub struct Notifier {
    store: Store,
    wake: Arc<tokio::sync::Notify>,
}

impl Notifier {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            wake: Default::default(),
        }
    }

    /// The store the outbox is in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The signal the deliverer waits on.
    pub fn signal(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// The outbox entry of a notification to `address`, due now.
    pub fn item(address: &str, notification: &Notification) -> OutboxItem {
        OutboxItem {
            delivery_id: notification.delivery_id.clone(),
            address: address.to_string(),
            notification: serde_json::to_vec(notification).expect("notifications serialize"),
            attempts: 0,
            next_at_ms: now_ms(),
            lease_until_ms: 0,
            alert_id: notification.alert_id.clone(),
            community_id: notification.community_id.clone(),
            kind: notification.kind.clone(),
        }
    }

    /// Puts a notification in the outbox on its own (one not written with
    /// an alert change) and wakes the deliverer.
    pub fn send(&self, address: String, notification: Notification) {
        let item = Self::item(&address, &notification);
        if let Err(err) = self.store.enqueue_notifications(&[item]) {
            metrics::counter!(crate::metrics::NOTIFY_FAILED).increment(1);
            tracing::error!(%address, error = %err, alert_id = %notification.alert_id, "putting a notification in the outbox failed");
        }
        self.wake();
    }

    /// Something was put in the outbox: look now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}
