//! Several replicas over one shared store: what another replica committed
//! reaches this one's watchers, timer and connected gateways.
//!
//! The store reports other replicas' commits as [`RemoteChange`]s (the
//! PostgreSQL engine: LISTEN/NOTIFY). Each is read back from the store
//! before it is passed on, so what watchers see is what was committed.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use anxin_proto::v1::{AlertState, ServerMessage, server_message};

use crate::{desks::alerts::AlertDesk, metrics as m, store::RemoteChange};

pub async fn follow(
    desk: AlertDesk,
    mut changes: mpsc::UnboundedReceiver<RemoteChange>,
    cancel: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            change = changes.recv() => match change {
                Some(change) => change,
                None => return,
            },
            _ = cancel.cancelled() => return,
        };
        metrics::counter!(m::REMOTE_CHANGES).increment(1);
        match change {
            RemoteChange::Alert(alert_id) => match desk.store().alert(&alert_id) {
                Ok(alert) => {
                    desk.deadlines_changed().notify_one();
                    desk.announce(alert);
                }
                Err(err) => {
                    tracing::warn!(alert_id, error = %err, "reading another replica's alert change failed")
                }
            },
            RemoteChange::Downlinks { gateway_id, ids } => {
                push_downlinks(&desk, &gateway_id, |id| ids.contains(&id))
            }
            RemoteChange::Directory => {
                desk.gateways().directory_changed();
                let connected = desk.gateways().connected();
                desk.gateways()
                    .roster_changed(connected.iter().map(String::as_str));
            }
            RemoteChange::Resync => resync(&desk),
        }
    }
}

/// Sends a gateway connected here the stored downlinks `wanted` picks.
fn push_downlinks(desk: &AlertDesk, gateway_id: &str, wanted: impl Fn(u64) -> bool) {
    if !desk.gateways().is_connected(gateway_id) {
        return;
    }
    match desk.store().pending_downlinks(gateway_id) {
        Ok(pending) => {
            for downlink in pending.into_iter().filter(|d| wanted(d.downlink_id)) {
                let message = ServerMessage {
                    body: Some(server_message::Body::Downlink(downlink)),
                };
                if !desk.gateways().try_send(gateway_id, message) {
                    tracing::warn!(
                        gateway_id,
                        "gateway stream full; the downlink is resent when it reconnects"
                    );
                }
            }
        }
        Err(err) => {
            tracing::warn!(gateway_id, error = %err, "reading another replica's downlinks failed")
        }
    }
}

/// After a gap in the feed: watchers get every open alert again, the timer
/// looks at the deadlines, gateways here get what is pending for them and
/// their rosters.
fn resync(desk: &AlertDesk) {
    desk.gateways().directory_changed();
    match desk.store().alerts(&[
        AlertState::New,
        AlertState::Offered,
        AlertState::Acknowledged,
        AlertState::EnRoute,
        AlertState::OnScene,
    ]) {
        Ok(open) => open.into_iter().for_each(|alert| desk.announce(alert)),
        Err(err) => tracing::warn!(error = %err, "resync after a change-feed gap failed"),
    }
    desk.deadlines_changed().notify_one();
    let connected = desk.gateways().connected();
    for gateway_id in &connected {
        push_downlinks(desk, gateway_id, |_| true);
    }
    desk.gateways()
        .roster_changed(connected.iter().map(String::as_str));
}
