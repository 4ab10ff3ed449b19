//! HTTPS for the REST/SSE/console port: rustls (ring) in front of the same
//! axum router. Handshakes run concurrently, each bounded in time, so a
//! client that stalls its handshake holds up nobody else.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::config::HttpTls;

/// Longest a client may take over its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("config field `{field}`: {problem}")]
pub struct HttpsError {
    field: &'static str,
    problem: String,
}

/// The acceptor for `http.tls`; errors name the field.
pub fn acceptor(tls: &HttpTls) -> Result<TlsAcceptor, HttpsError> {
    let fail = |field, problem: String| HttpsError { field, problem };
    let read_certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, HttpsError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fail("http.tls.cert", format!("reading {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(fail("http.tls.cert", "no PEM certificate in it".into()));
        }
        Ok(certs)
    };
    let chain = read_certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        fail(
            "http.tls.key",
            format!("reading {}: {e}", tls.key.display()),
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail("http.tls", e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| fail("http.tls.key", e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener that yields connections whose TLS handshake completed.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "accepting an HTTPS connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let handed = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = handed.send((tls, peer)).await;
                        }
                        Ok(Err(err)) => {
                            metrics::counter!(crate::metrics::HTTPS_HANDSHAKES_FAILED).increment(1);
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!(crate::metrics::HTTPS_HANDSHAKES_FAILED).increment(1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
