//! The device front: the gateway's own MQTT server for devices (3.1.1 and
//! 5), a task per connection. Each connection is one authenticated
//! identity that may publish only on its own topics and read only its own
//! acks (`acl`); events are decoded on the connection's task and handed to
//! the journal's alarm or bulk lane (`ingest::Admission`); acks go to
//! exactly the device they are for (`session`).
//!
//! It replaces the embedded rumqttd broker, which could not isolate
//! devices (no per-client topic rules), matched every ack against every
//! subscription in one router thread (10,000 devices: stored-ack p50 81 s)
//! and kept a commit log per subscription filter (unbounded memory under
//! load). See ARCHITECTURE.md and BENCHMARKS.md for the measurements.

pub mod acl;
pub mod auth;
pub mod codec;
mod connection;
pub mod session;
mod state;
pub mod tls;

pub use auth::DeviceBook;
pub use session::{Session, Sessions};
pub use state::Front;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Accepts device connections until cancelled; each gets its own task.
/// With `tls`, each connection's handshake runs on its own task first.
pub async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    front: Arc<Front>,
    cancel: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, mostly: say so in /healthz, wait
                // a moment, go on.
                tracing::warn!(error = %err, "accepting a device connection failed");
                if let (false, Some(addr)) = (failing, addr) {
                    front.health.device_port_accepting(false, addr);
                }
                failing = true;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if let (true, Some(addr)) = (failing, addr) {
            front.health.device_port_accepting(true, addr);
            failing = false;
        }
        // Acks are small and latency is the point: no Nagle (with the
        // device's delayed ACK it cost ~40 ms per ack).
        let _ = socket.set_nodelay(true);
        let permit = front.permits.clone().try_acquire_owned().ok();
        let (front, cancel) = (front.clone(), cancel.clone());
        match tls.clone() {
            None => {
                tokio::spawn(connection::serve(socket, peer, None, front, permit, cancel));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            metrics::counter!(crate::metrics::MQTT_REFUSED, "reason" => "tls_handshake").increment(1);
                            tracing::warn!(%peer, error = %err, "refused a connection: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!(crate::metrics::MQTT_REFUSED, "reason" => "tls_handshake").increment(1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let certified = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| tls::device_of(leaf).ok_or(()));
                    let certified = match certified {
                        None => None,
                        Some(Ok(device)) => Some(device),
                        Some(Err(())) => {
                            metrics::counter!(crate::metrics::MQTT_REFUSED, "reason" => "certificate_unnamed").increment(1);
                            tracing::warn!(%peer, "refused a connection: the client certificate names no device (subject CN)");
                            return;
                        }
                    };
                    connection::serve(stream, peer, certified, front, permit, cancel).await;
                });
            }
        }
    }
}

/// A TLS handshake must finish within this long.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
