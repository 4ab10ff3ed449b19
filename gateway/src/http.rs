//! The gateway's operator endpoints: `GET /healthz` and `GET /metrics`.

use std::sync::Arc;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::{health::Health, journal::JournalReader, uplink::UplinkState};

#[derive(Clone)]
pub struct HttpState {
    pub metrics: PrometheusHandle,
    pub uplink: watch::Receiver<UplinkState>,
    pub journal: JournalReader,
    pub gateway_id: String,
    pub health: Arc<Health>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// 200 with `"status": "ok"` when the gateway can do all of its job; 503
/// with `"status": "degraded"` and the reasons (see `health.rs`) when not.
/// Either way the body says what it can still do: a degraded gateway still
/// stores and forwards alarms.
async fn healthz(State(state): State<HttpState>) -> (StatusCode, Json<serde_json::Value>) {
    let uplink = state.uplink.borrow().clone();
    let depth = state.journal.depth();
    let reasons = state.health.reasons();
    let disk = state.health.disk();
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if reasons.is_empty() { "ok" } else { "degraded" },
        "reasons": reasons,
        "gateway_id": state.gateway_id,
        "uplink": uplink,
        "journal_depth": { "P0": depth[0], "P1": depth[1], "P2": depth[2], "P3": depth[3] },
        "journal_error": state.health.journal_error(),
        "disk": {
            "free_bytes": disk.free(),
            "reserve_bytes": disk.reserve_held(),
        },
        "restarts_in_place": anxin_host::restart::restarts(),
    });
    (code, Json(body))
}

async fn metrics(State(state): State<HttpState>) -> String {
    crate::metrics::refresh_journal_gauges(&state.journal);
    state.metrics.render()
}
