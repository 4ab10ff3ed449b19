//! The family view's REST/SSE endpoints, Kannel's delivery reports, and
//! the emergency services' hand-off.
//!
//! `POST /api/v1/family/session` exchanges a link's token (once) for a
//! session; every other family endpoint takes that session
//! ([`FamilyCaller`]) and answers only about the member's own resident.
//! `GET /api/v1/sms/report` is Kannel's `dlr-url`: its tag (an HMAC of the
//! delivery id) is checked before the report is written on the alert.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::sse::{Event, KeepAlive, Sse},
    routing::{get, post},
};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::ApiError;
use super::caller::{Caller, FamilyCaller, RestState};
use crate::desks::family::{FamilyAlert, FamilyDesk, FamilySession, FamilyView};

pub fn routes() -> Router<RestState> {
    Router::new()
        .route("/api/v1/family/session", post(sign_in))
        .route("/api/v1/family/view", get(view))
        .route("/api/v1/family/stream", get(stream))
        .route("/api/v1/family/alerts/{id}", get(alert))
        .route("/api/v1/family/alerts/{id}/answer", post(answer))
        .route("/api/v1/sms/report", get(report).post(report))
        .route("/api/v1/alerts/{id}/handoff", get(handoff))
        .route("/api/v1/alerts/{id}/reference", post(reference))
}

/// The hand-off sheet (JSON and text); the read is audited.
async fn handoff(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let result = crate::desks::handoff::read(&state.desk, &caller, &id);
    let (sheet, text) = super::durable(state.desk.store(), result).await??;
    Ok(Json(serde_json::json!({ "sheet": sheet, "text": text })))
}

#[derive(Deserialize)]
struct Reference {
    reference: String,
}

async fn reference(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Json(body): Json<Reference>,
) -> Result<Json<anxin_proto::v1::Alert>, ApiError> {
    Ok(Json(
        crate::desks::handoff::record_reference(&state.desk, &caller, &id, &body.reference).await?,
    ))
}

#[derive(Deserialize)]
struct Link {
    link: String,
}

async fn sign_in(
    State(state): State<RestState>,
    Json(body): Json<Link>,
) -> Result<Json<FamilySession>, ApiError> {
    // A refused link is audited too: flushed either way.
    let session = state.family.sign_in(&body.link);
    let session = super::durable(state.desk.store(), session).await??;
    Ok(Json(session))
}

async fn view(
    State(state): State<RestState>,
    FamilyCaller(member): FamilyCaller,
) -> Result<Json<FamilyView>, ApiError> {
    let view = state.family.view(&member)?;
    Ok(Json(super::durable(state.desk.store(), view).await?))
}

async fn alert(
    State(state): State<RestState>,
    FamilyCaller(member): FamilyCaller,
    Path(id): Path<String>,
) -> Result<Json<FamilyAlert>, ApiError> {
    let alert = state.family.alert(&member, &id);
    Ok(Json(super::durable(state.desk.store(), alert).await??))
}

#[derive(Deserialize)]
struct Answer {
    answer: String,
}

async fn answer(
    State(state): State<RestState>,
    FamilyCaller(member): FamilyCaller,
    Path(id): Path<String>,
    Json(body): Json<Answer>,
) -> Result<Json<FamilyAlert>, ApiError> {
    let result = state.family.answer(&member, &id, &body.answer).await;
    Ok(Json(super::durable(state.desk.store(), result).await??))
}

/// The member's resident's alerts: first those the view shows now, then
/// `snapshot_end`, then every change (`alert` events, the family's shape
/// of an alert); other residents' never. Subscribed before the snapshot is
/// read, so no change between the two is missed.
async fn stream(
    State(state): State<RestState>,
    FamilyCaller(member): FamilyCaller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let mut changes = state.desk.subscribe();
    let snapshot = state.family.view(&member)?.alerts;
    state.desk.store().flush().await?;
    let family: FamilyDesk = state.family.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        for alert in &snapshot {
            let event = Event::default()
                .event("alert")
                .data(serde_json::to_string(alert).unwrap_or_default());
            if tx.send(event).await.is_err() {
                return;
            }
        }
        if tx
            .send(Event::default().event("snapshot_end").data("{}"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let event = match changes.recv().await {
                Ok(alert) if FamilyDesk::is_theirs(&member, &alert) => Event::default()
                    .event("alert")
                    .data(serde_json::to_string(&family.shown(&alert)).unwrap_or_default()),
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
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

#[derive(Deserialize)]
struct Report {
    /// The delivery id.
    d: String,
    /// Its tag.
    k: String,
    /// Kannel's report type (`%d`).
    s: u32,
    /// The carrier's reply (`%A`).
    #[serde(default)]
    r: String,
}

async fn report(
    State(state): State<RestState>,
    Query(report): Query<Report>,
) -> Result<StatusCode, ApiError> {
    let expected = crate::domain::family::report_tag(&state.sms_report_key, &report.d);
    if state.sms_report_key.is_empty()
        || !crate::desks::auth::constant_time_eq(expected.as_bytes(), report.k.as_bytes())
    {
        metrics::counter!(crate::metrics::SMS_REPORTS, "outcome" => "refused").increment(1);
        tracing::warn!(delivery_id = %report.d, "delivery report with a wrong tag refused");
        return Err(ApiError::Forbidden(
            "the report's tag does not match".into(),
        ));
    }
    let status = crate::desks::callout::delivery_status(report.s, &report.r);
    metrics::counter!(crate::metrics::SMS_REPORTS, "outcome" => "recorded").increment(1);
    tracing::info!(delivery_id = %report.d, %status, "SMS delivery report");
    state.family.record_delivery(&report.d, &status).await?;
    Ok(StatusCode::NO_CONTENT)
}
