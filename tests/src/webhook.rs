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
    /// Bodies of accepted deliveries, in arrival order.
    pub bodies: mpsc::UnboundedReceiver<serde_json::Value>,
    /// Accepted deliveries with their headers.
    pub deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// Every request, refused or accepted.
    pub attempts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the receiver");
        let port = listener.local_addr().unwrap().port();
        let (bodies_tx, bodies) = mpsc::unbounded_channel();
        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        let attempts = Arc::new(AtomicUsize::new(0));
        let shared = Shared {
            refuse_first: n,
            attempts: attempts.clone(),
            bodies: bodies_tx,
            deliveries: deliveries_tx,
        };
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            port,
            bodies,
            deliveries,
            attempts,
            task,
        }
    }

    pub fn url(&self) -> String {
        self.url_for("alarm")
    }

    /// A URL under this receiver, so one receiver can stand in for several
    /// people: deliveries say which path they came to.
    pub fn url_for(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
