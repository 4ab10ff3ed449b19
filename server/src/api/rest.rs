//! REST/SSE API for dispatchers and integrators, plus /healthz, /metrics and
//! the web console. JSON bodies use the proto3 JSON mapping of the
//! `anxin.v1` messages (camelCase fields, enum names as strings).

use std::{convert::Infallible, time::Duration};

use anxin_proto::v1::{Alert, AlertState};
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{
        Html, IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures::Stream;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::ApiError;
use crate::{alerts::AlertDesk, lifecycle};

#[derive(Clone)]
pub struct RestState {
    pub desk: AlertDesk,
    pub metrics: PrometheusHandle,
}

pub fn router(state: RestState) -> Router {
    Router::new()
        .route("/", get(console))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/alerts/stream", get(stream_alerts))
        .route("/api/v1/alerts/{id}", get(get_alert))
        .route("/api/v1/alerts/{id}/ack", post(acknowledge))
        .route("/api/v1/alerts/{id}/resolve", post(resolve))
        .route("/api/v1/devices/{id}/events", get(device_events))
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

async fn console() -> Html<&'static str> {
    Html(include_str!("console.html"))
}

async fn healthz(State(state): State<RestState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "events": state.desk.store().event_count(),
    }))
}

async fn metrics(State(state): State<RestState>) -> String {
    state.metrics.render()
}

#[derive(Deserialize)]
struct StateFilter {
    /// Comma-separated states: `new,acknowledged`.
    state: Option<String>,
}

impl StateFilter {
    fn parse(&self) -> Result<Vec<AlertState>, ApiError> {
        let Some(raw) = self.state.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(Vec::new());
        };
        raw.split(',')
            .map(|name| {
                lifecycle::parse(name.trim())
                    .ok_or_else(|| ApiError::BadRequest(format!("unknown alert state `{name}`")))
            })
            .collect()
    }
}

async fn list_alerts(
    State(state): State<RestState>,
    Query(filter): Query<StateFilter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let alerts = state.desk.list(&filter.parse()?)?;
    Ok(Json(serde_json::json!({ "alerts": alerts })))
}

async fn get_alert(
    State(state): State<RestState>,
    Path(id): Path<String>,
) -> Result<Json<Alert>, ApiError> {
    Ok(Json(state.desk.store().alert(&id)?))
}

#[derive(Deserialize, Default)]
struct ActionBody {
    by: Option<String>,
    outcome: Option<String>,
}

fn body_or_default(body: Option<Json<ActionBody>>) -> ActionBody {
    body.map(|Json(b)| b).unwrap_or_default()
}

async fn acknowledge(
    State(state): State<RestState>,
    Path(id): Path<String>,
    body: Option<Json<ActionBody>>,
) -> Result<Json<Alert>, ApiError> {
    let body = body_or_default(body);
    let by = body.by.as_deref().unwrap_or_default();
    Ok(Json(state.desk.acknowledge(&id, by).await?))
}

async fn resolve(
    State(state): State<RestState>,
    Path(id): Path<String>,
    body: Option<Json<ActionBody>>,
) -> Result<Json<Alert>, ApiError> {
    let body = body_or_default(body);
    let by = body.by.as_deref().unwrap_or_default();
    let outcome = body.outcome.as_deref().unwrap_or("attended");
    Ok(Json(state.desk.resolve(&id, by, outcome).await?))
}

/// A device's committed events, for integrators and checkers (`anxin-sim
/// verify`): identity, kind, and the order they reached the server.
async fn device_events(
    State(state): State<RestState>,
    Path(device_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let events: Vec<serde_json::Value> = state
        .desk
        .store()
        .device_events(&device_id)?
        .into_iter()
        .filter_map(|stored| {
            let uplink = stored.uplink?;
            let event = uplink.event?;
            Some(serde_json::json!({
                "deviceId": event.device_id,
                "seq": event.seq.to_string(),
                "kind": event.kind().as_str_name(),
                "priority": event.priority().as_str_name(),
                "batteryPct": event.battery_pct,
                "deviceTimeMs": event.device_time_ms.to_string(),
                "storedMs": uplink.stored_ms.to_string(),
                "receivedMs": stored.received_ms.to_string(),
                "gatewayId": stored.gateway_id,
                "alertId": stored.alert_id,
                "commitIndex": stored.commit_index.to_string(),
            }))
        })
        .collect();
    Ok(Json(serde_json::json!({ "events": events })))
}

fn alert_event(alert: &Alert) -> Event {
    Event::default()
        .event("alert")
        .id(alert.id.clone())
        .json_data(alert)
        .expect("alerts serialize")
}

/// SSE: every alert matching the filter once, then each change. A client
/// that falls behind gets a `resync` event and the stream ends, so its
/// reconnect fetches a fresh snapshot instead of silently missing changes.
async fn stream_alerts(
    State(state): State<RestState>,
    Query(filter): Query<StateFilter>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let states = filter.parse()?;
    let (snapshot, mut changes) = state.desk.watch(&states)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        for alert in &snapshot {
            if tx.send(alert_event(alert)).await.is_err() {
                return;
            }
        }
        let _ = tx
            .send(Event::default().event("snapshot_end").data(""))
            .await;
        loop {
            let event = match changes.recv().await {
                Ok(alert) if states.is_empty() || states.contains(&alert.state()) => {
                    alert_event(&alert)
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => {
                    let _ = tx.send(Event::default().event("resync").data("")).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
