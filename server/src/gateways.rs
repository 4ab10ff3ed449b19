//! Which gateways have an uplink stream open right now, so a downlink can be
//! pushed at once. Downlinks are stored first; this is only the fast path.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anxin_proto::v1::ServerMessage;
use tokio::sync::mpsc;

#[derive(Default)]
pub struct ConnectedGateways {
    sessions: Mutex<HashMap<String, (u64, mpsc::Sender<ServerMessage>)>>,
    next_session: AtomicU64,
}

impl ConnectedGateways {
    /// Registers a gateway's stream, replacing an older one (a gateway that
    /// reconnected before its old stream timed out). Returns the session id
    /// to pass to [`ConnectedGateways::disconnect`].
    pub fn connect(&self, gateway_id: &str, sender: mpsc::Sender<ServerMessage>) -> u64 {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .insert(gateway_id.to_string(), (session, sender));
        metrics::gauge!(crate::metrics::GATEWAYS_CONNECTED).set(self.lock().len() as f64);
        session
    }

    pub fn disconnect(&self, gateway_id: &str, session: u64) {
        let mut sessions = self.lock();
        if sessions.get(gateway_id).is_some_and(|(s, _)| *s == session) {
            sessions.remove(gateway_id);
        }
        metrics::gauge!(crate::metrics::GATEWAYS_CONNECTED).set(sessions.len() as f64);
    }

    /// Sends to the gateway if it is connected; returns whether it was queued.
    pub fn try_send(&self, gateway_id: &str, message: ServerMessage) -> bool {
        let sender = self.lock().get(gateway_id).map(|(_, s)| s.clone());
        sender.is_some_and(|s| s.try_send(message).is_ok())
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, mpsc::Sender<ServerMessage>)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}
