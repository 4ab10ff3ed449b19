//! The gateway's operator endpoints: `GET /healthz` and `GET /metrics`.

use axum::{Json, Router, extract::State, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::{journal::JournalReader, uplink::UplinkState};

#[derive(Clone)]
pub struct HttpState {
    pub metrics: PrometheusHandle,
    pub uplink: watch::Receiver<UplinkState>,
    pub journal: JournalReader,
    pub gateway_id: String,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(state): State<HttpState>) -> Json<serde_json::Value> {
    let uplink = state.uplink.borrow().clone();
    let depth = state.journal.depth();
    Json(serde_json::json!({
        "status": "ok",
        "gateway_id": state.gateway_id,
        "uplink": uplink,
        "journal_depth": { "P0": depth[0], "P1": depth[1], "P2": depth[2], "P3": depth[3] },
    }))
}

async fn metrics(State(state): State<HttpState>) -> String {
    crate::metrics::refresh_journal_gauges(&state.journal);
    state.metrics.render()
}
