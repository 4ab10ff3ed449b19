//! Which gateways have an uplink stream open right now, so a downlink can be
//! pushed at once (downlinks are stored first; this is only the fast path),
//! and what each gateway last said of its own health ([`GatewayStatus`]),
//! for the dispatchers' gateway board. Kept in memory: after a server
//! restart every gateway reports again as it reconnects.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anxin_proto::{
    now_ms,
    v1::{GatewayStatus, ServerMessage},
};
use tokio::sync::{Notify, mpsc};

#[derive(Default)]
pub struct ConnectedGateways {
    sessions: Mutex<HashMap<String, (u64, mpsc::Sender<ServerMessage>)>>,
    next_session: AtomicU64,
    seen: Mutex<HashMap<String, Seen>>,
    /// Per connected gateway: woken when its device roster changed.
    rosters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Bumped on every directory change here or at another replica, so
    /// what keeps a view of the directory (the check-in and visit judges)
    /// reads it again only then, not on a timer: a city's directory is
    /// large.
    directory_epoch: AtomicU64,
}

/// What the server knows of a gateway's link and health.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    pub connected: bool,
    /// Server clock: when the stream opened or closed last.
    pub since_ms: i64,
    /// Server clock: when the gateway last reported its status.
    pub reported_ms: i64,
    pub status: Option<GatewayStatus>,
    /// When the token its open stream was made with expires (`None`:
    /// never, or not connected here).
    pub token_expires_ms: Option<i64>,
}

impl ConnectedGateways {
    pub fn directory_changed(&self) {
        self.directory_epoch.fetch_add(1, Ordering::Relaxed);
    }

    pub fn directory_epoch(&self) -> u64 {
        self.directory_epoch.load(Ordering::Relaxed)
    }

    /// Registers a gateway's stream, replacing an older one (a gateway that
    /// reconnected before its old stream timed out). Returns the session id
    /// to pass to [`ConnectedGateways::disconnect`].
    pub fn connect(&self, gateway_id: &str, sender: mpsc::Sender<ServerMessage>) -> u64 {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        // Sessions before `seen`, as `disconnect` takes them: taking the
        // sessions again while holding `seen` (as this did) could deadlock
        // with a gateway disconnecting at that moment, and with it every
        // worker thread of the server.
        let mut sessions = self.lock();
        sessions.insert(gateway_id.to_string(), (session, sender));
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(gateway_id.to_string()).or_default();
        entry.connected = true;
        entry.since_ms = now_ms();
        metrics::gauge!(crate::metrics::GATEWAYS_CONNECTED).set(sessions.len() as f64);
        session
    }

    pub fn disconnect(&self, gateway_id: &str, session: u64) {
        let mut sessions = self.lock();
        if sessions.get(gateway_id).is_some_and(|(s, _)| *s == session) {
            sessions.remove(gateway_id);
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let entry = seen.entry(gateway_id.to_string()).or_default();
            entry.connected = false;
            entry.since_ms = now_ms();
        }
        metrics::gauge!(crate::metrics::GATEWAYS_CONNECTED).set(sessions.len() as f64);
    }

    /// The signal a gateway's stream waits on to send its roster again.
    pub fn roster_signal(&self, gateway_id: &str) -> Arc<Notify> {
        self.rosters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(gateway_id.to_string())
            .or_default()
            .clone()
    }

    /// The devices of these gateways changed (registered, re-keyed, moved,
    /// deactivated): each connected one is sent its roster again.
    pub fn roster_changed<'a>(&self, gateway_ids: impl IntoIterator<Item = &'a str>) {
        let rosters = self.rosters.lock().unwrap_or_else(|p| p.into_inner());
        for id in gateway_ids {
            if let Some(signal) = rosters.get(id) {
                signal.notify_one();
            }
        }
    }

    /// Sends to the gateway if it is connected; returns whether it was queued.
    /// The gateways connected to this process now.
    pub fn connected(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn is_connected(&self, gateway_id: &str) -> bool {
        self.lock().contains_key(gateway_id)
    }

    pub fn try_send(&self, gateway_id: &str, message: ServerMessage) -> bool {
        let sender = self.lock().get(gateway_id).map(|(_, s)| s.clone());
        sender.is_some_and(|s| s.try_send(message).is_ok())
    }

    /// Records when the token of a gateway's open stream expires.
    pub fn token_expiry(&self, gateway_id: &str, expires_ms: Option<i64>) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(gateway_id.to_string())
            .or_default()
            .token_expires_ms = expires_ms;
    }

    /// Records a gateway's report of its own health.
    pub fn report(&self, gateway_id: &str, status: GatewayStatus) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(gateway_id.to_string()).or_default();
        if entry.status.as_ref().map(|s| &s.reasons) != Some(&status.reasons) {
            if status.reasons.is_empty() {
                tracing::info!(gateway_id, "gateway reports healthy");
            } else {
                tracing::warn!(gateway_id, reasons = ?status.reasons, "gateway reports trouble");
            }
        }
        entry.reported_ms = now_ms();
        entry.status = Some(status);
    }

    /// What is known of one gateway; `None` if it never connected since
    /// this server started.
    pub fn seen(&self, gateway_id: &str) -> Option<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(gateway_id)
            .cloned()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, mpsc::Sender<ServerMessage>)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gateways connecting and disconnecting at once on several threads
    /// never deadlock the registry (its locks are taken in one order).
    #[test]
    fn gateways_connecting_while_others_disconnect_do_not_deadlock() {
        let gateways = Arc::new(ConnectedGateways::default());
        let (done, finished) = std::sync::mpsc::channel();
        for id in ["gw-a", "gw-b"] {
            let (gateways, done) = (gateways.clone(), done.clone());
            std::thread::spawn(move || {
                let (sender, _receiver) = mpsc::channel(1);
                for _ in 0..200_000 {
                    let session = gateways.connect(id, sender.clone());
                    gateways.disconnect(id, session);
                }
                let _ = done.send(());
            });
        }
        for _ in 0..2 {
            finished
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("connect and disconnect deadlocked");
        }
        assert!(gateways.connected().is_empty());
    }
}
