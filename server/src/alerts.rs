//! The alert desk: the one place alerts change, shared by the REST and gRPC
//! APIs. Every change is committed to the store before anyone hears of it,
//! then broadcast to watchers (SSE, WatchAlerts).

use std::sync::Arc;

use anxin_proto::{
    AckKind, DeviceAck, now_ms,
    v1::{Alert, AlertState, Downlink, ServerMessage, server_message},
};
use tokio::sync::broadcast;

use crate::{
    gateways::ConnectedGateways,
    metrics as m,
    store::{Store, StoreError},
};

/// What a device says when its alarm is acknowledged.
pub const HELP_IS_COMING: &str = "help is coming";

/// Who acted when an API caller did not say.
fn actor(by: &str) -> &str {
    if by.is_empty() { "dispatcher" } else { by }
}

#[derive(Clone)]
pub struct AlertDesk {
    store: Store,
    gateways: Arc<ConnectedGateways>,
    changes: broadcast::Sender<Alert>,
}

impl AlertDesk {
    pub fn new(store: Store, gateways: Arc<ConnectedGateways>) -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self {
            store,
            gateways,
            changes,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn gateways(&self) -> &Arc<ConnectedGateways> {
        &self.gateways
    }

    /// Tells watchers about a committed (and flushed) alert or change.
    pub fn announce(&self, alert: Alert) {
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(alert);
    }

    pub fn list(&self, states: &[AlertState]) -> Result<Vec<Alert>, StoreError> {
        self.store.alerts(states)
    }

    /// A snapshot plus every change after it. Subscribing before reading the
    /// snapshot means no change falls between the two; a change may show up
    /// in both, which is harmless because each update carries the whole alert.
    pub fn watch(
        &self,
        states: &[AlertState],
    ) -> Result<(Vec<Alert>, broadcast::Receiver<Alert>), StoreError> {
        let receiver = self.changes.subscribe();
        Ok((self.store.alerts(states)?, receiver))
    }

    /// `by` may be empty: the API caller did not say who.
    pub async fn acknowledge(&self, alert_id: &str, by: &str) -> Result<Alert, StoreError> {
        let by = actor(by);
        let now = now_ms();
        let make_downlink = |alert: &Alert, downlink_id: u64| Downlink {
            downlink_id,
            ack: Some(DeviceAck {
                device_id: alert.device_id.clone(),
                seq: alert.seq,
                kind: AckKind::Acknowledged as i32,
                alert_id: alert.id.clone(),
                message: HELP_IS_COMING.into(),
                sent_ms: 0,
            }),
        };
        let (alert, downlink) = self.store.transition(
            alert_id,
            AlertState::Acknowledged,
            |a| {
                a.acknowledged_ms = now;
                a.acknowledged_by = by.to_string();
            },
            Some(make_downlink),
        )?;
        self.store.flush().await?;
        tracing::info!(alert_id, device_id = %alert.device_id, seq = alert.seq, by, "alert acknowledged");
        metrics::counter!(m::ALERT_TRANSITIONS, "to" => "acknowledged").increment(1);
        if let Some(downlink) = downlink {
            let message = ServerMessage {
                body: Some(server_message::Body::Downlink(downlink)),
            };
            if !self.gateways.try_send(&alert.gateway_id, message) {
                tracing::warn!(alert_id, gateway_id = %alert.gateway_id, "gateway not connected; help-is-coming queued until it returns");
            }
        }
        self.announce(alert.clone());
        Ok(alert)
    }

    pub async fn resolve(
        &self,
        alert_id: &str,
        by: &str,
        outcome: &str,
    ) -> Result<Alert, StoreError> {
        let by = actor(by);
        let now = now_ms();
        let (alert, _) = self.store.transition(
            alert_id,
            AlertState::Resolved,
            |a| {
                a.resolved_ms = now;
                a.resolved_by = by.to_string();
                a.outcome = outcome.to_string();
            },
            None::<fn(&Alert, u64) -> Downlink>,
        )?;
        self.store.flush().await?;
        tracing::info!(alert_id, by, outcome, "alert resolved");
        metrics::counter!(m::ALERT_TRANSITIONS, "to" => "resolved").increment(1);
        self.announce(alert.clone());
        Ok(alert)
    }
}
