//! REST for check-ins and visits (docs/dispatch.md, "Living alone"): thin
//! handlers over [`WelfareDesk`].

use anxin_proto::v1::VisitPlan;
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{get, post, put},
};

use super::{
    ApiError,
    caller::{Caller, RestState},
};
use crate::desks::welfare::desk::WelfareDesk;

pub fn routes() -> Router<RestState> {
    Router::new()
        .route("/api/v1/checkins", get(checkins))
        .route("/api/v1/residents/{id}/checkin", post(confirm))
        .route("/api/v1/residents/{id}/welfare", get(resident_welfare))
        .route("/api/v1/visit-plans", get(plans))
        .route("/api/v1/visit-plans/{id}", put(put_plan))
        .route("/api/v1/visits", get(visits))
        .route("/api/v1/visits/{plan}/arrive", post(arrive))
}

fn desk(state: &RestState) -> WelfareDesk {
    WelfareDesk::new(state.desk.clone())
}

#[derive(serde::Deserialize, Default)]
struct DayFilter {
    /// "YYYY-MM-DD" (server's local time); absent: today.
    day: Option<String>,
    community: Option<String>,
    /// Visits only: due, done, missed.
    status: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct NoteBody {
    #[serde(default)]
    note: String,
}

async fn checkins(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(filter): Query<DayFilter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = desk(&state).checkins(
        &caller,
        filter.day.as_deref(),
        filter.community.as_deref().unwrap_or(""),
    )?;
    Ok(Json(serde_json::json!({ "checkins": list })))
}

async fn confirm(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    body: Option<Json<NoteBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let note = body.map(|b| b.0.note).unwrap_or_default();
    let sign = desk(&state).confirm(&caller, &id, &note).await?;
    Ok(Json(serde_json::json!({ "sign": sign })))
}

async fn resident_welfare(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let welfare = desk(&state).resident_welfare(&caller, &id)?;
    Ok(Json(serde_json::to_value(welfare).unwrap_or_default()))
}

async fn plans(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(filter): Query<DayFilter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let plans = desk(&state).plans(&caller, filter.community.as_deref().unwrap_or(""))?;
    Ok(Json(serde_json::json!({ "plans": plans })))
}

async fn put_plan(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Json(mut plan): Json<VisitPlan>,
) -> Result<Json<VisitPlan>, ApiError> {
    plan.id = id;
    Ok(Json(desk(&state).put_plan(&caller, plan).await?))
}

async fn visits(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(filter): Query<DayFilter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = desk(&state).visits(
        &caller,
        filter.day.as_deref(),
        filter.community.as_deref().unwrap_or(""),
        filter.status.as_deref().unwrap_or(""),
    )?;
    Ok(Json(serde_json::json!({ "visits": list })))
}

async fn arrive(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(plan): Path<String>,
    body: Option<Json<NoteBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let note = body.map(|b| b.0.note).unwrap_or_default();
    let visit = desk(&state).arrive(&caller, &plan, &note).await?;
    Ok(Json(serde_json::json!({ "visit": visit })))
}
