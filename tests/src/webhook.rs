//! A real local HTTP receiver (axum on loopback) for webhook tests. It can
//! refuse the first N requests with 503 to exercise retries, and hands every
//! accepted delivery (body and headers) to the test.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use tokio::{sync::mpsc, task::JoinHandle};

#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub body: serde_json::Value,
    pub raw: Vec<u8>,
    pub headers: HashMap<String, String>,
}

pub struct WebhookReceiver {
    pub port: u16,
    https: bool,
    /// Bodies of accepted deliveries, in arrival order.
    pub bodies: mpsc::UnboundedReceiver<serde_json::Value>,
    /// Accepted deliveries with their headers.
    pub deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// Every request, refused or accepted.
    pub attempts: Arc<AtomicUsize>,
    /// Why a checking receiver refused each delivery it refused.
    pub refusals: mpsc::UnboundedReceiver<&'static str>,
    task: JoinHandle<()>,
}

/// How a receiver checks a delivery, as docs/dispatch.md tells receivers
/// to: the signature over `timestamp.delivery.body` with the shared
/// secret, a timestamp at most five minutes away, and a delivery id not
/// seen before (a retry or a replay of a captured delivery).
pub fn check_delivery(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    seen: &std::sync::Mutex<std::collections::HashSet<String>>,
) -> Result<(), (StatusCode, &'static str)> {
    use hmac::{Hmac, Mac};
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(timestamp), Some(delivery), Some(signature)) = (
        header("x-anxin-timestamp"),
        header("x-anxin-delivery"),
        header("x-anxin-signature"),
    ) else {
        return Err((StatusCode::UNAUTHORIZED, "unsigned"));
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(delivery.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    if expected != signature {
        return Err((StatusCode::UNAUTHORIZED, "bad signature"));
    }
    let sent: i64 = timestamp
        .parse()
        .map_err(|_| (StatusCode::UNAUTHORIZED, "bad timestamp"))?;
    if (anxin_proto::now_ms() - sent).abs() > 5 * 60 * 1000 {
        return Err((StatusCode::UNAUTHORIZED, "stale timestamp"));
    }
    if !seen.lock().unwrap().insert(delivery.to_string()) {
        return Err((StatusCode::CONFLICT, "replayed delivery"));
    }
    Ok(())
}

#[derive(Clone)]
struct Shared {
    /// Check every delivery with this secret ([`check_delivery`]).
    secret: Option<String>,
    seen: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Why each refused delivery was refused.
    refusals: mpsc::UnboundedSender<&'static str>,
    refuse_first: usize,
    attempts: Arc<AtomicUsize>,
    bodies: mpsc::UnboundedSender<serde_json::Value>,
    deliveries: mpsc::UnboundedSender<Delivery>,
}

async fn receive(
    State(shared): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let attempt = shared.attempts.fetch_add(1, Ordering::SeqCst);
    if attempt < shared.refuse_first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Some(secret) = &shared.secret
        && let Err((status, why)) = check_delivery(secret, &headers, &body, &shared.seen)
    {
        let _ = shared.refusals.send(why);
        return status;
    }
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let _ = shared.bodies.send(json.clone());
    let _ = shared.deliveries.send(Delivery {
        path: uri.path().to_string(),
        body: json,
        raw: body.to_vec(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
    });
    StatusCode::OK
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        Self::refusing_first(0).await
    }

    /// Answers 503 to the first `n` requests, then 200.
    pub async fn refusing_first(n: usize) -> Self {
        Self::serve(n, None).await
    }

    /// Checks every delivery as a receiver should ([`check_delivery`]) and
    /// refuses what fails: 401 for a bad signature or timestamp, 409 for a
    /// delivery id seen before.
    pub async fn checking(secret: &str) -> Self {
        Self::serve(0, Some(secret.to_string())).await
    }

    /// A checking receiver on HTTPS, with the certificate and key given
    /// (the server must trust their CA: SSL_CERT_FILE).
    pub async fn checking_https(
        secret: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Self {
        let tls = anxin_server::config::HttpTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        };
        let acceptor = anxin_server::api::https::acceptor(&tls).expect("receiver certificate");
        Self::serve_on(0, Some(secret.to_string()), Some(acceptor)).await
    }

    async fn serve(n: usize, secret: Option<String>) -> Self {
        Self::serve_on(n, secret, None).await
    }

    async fn serve_on(
        n: usize,
        secret: Option<String>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the receiver");
        let port = listener.local_addr().unwrap().port();
        let (bodies_tx, bodies) = mpsc::unbounded_channel();
        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        let attempts = Arc::new(AtomicUsize::new(0));
        let (refusals_tx, refusals) = mpsc::unbounded_channel();
        let shared = Shared {
            secret,
            seen: Default::default(),
            refusals: refusals_tx,
            refuse_first: n,
            attempts: attempts.clone(),
            bodies: bodies_tx,
            deliveries: deliveries_tx,
        };
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(shared);
        let https = tls.is_some();
        let task = match tls {
            Some(acceptor) => {
                let listener = anxin_server::api::https::TlsListener::new(listener, acceptor)
                    .expect("receiver listener");
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                })
            }
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
        };
        Self {
            https,
            port,
            bodies,
            deliveries,
            attempts,
            refusals,
            task,
        }
    }

    pub fn url(&self) -> String {
        self.url_for("alarm")
    }

    /// A URL under this receiver, so one receiver can stand in for several
    /// people: deliveries say which path they came to.
    pub fn url_for(&self, path: &str) -> String {
        if self.https {
            format!("https://localhost:{}/{path}", self.port)
        } else {
            format!("http://127.0.0.1:{}/{path}", self.port)
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
