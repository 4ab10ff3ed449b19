//! REST for the health and safety signals (docs/dispatch.md, "Health and
//! safety signals"): a resident's vital-sign trend. The rules themselves
//! are fields of the resident and community records (`PUT
//! /api/v1/residents/{id}`, `PUT /api/v1/places/{id}`).

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::get,
};

use super::{
    ApiError,
    caller::{Caller, RestState},
};

pub fn routes() -> Router<RestState> {
    Router::new().route("/api/v1/residents/{id}/vitals", get(vitals))
}

#[derive(serde::Deserialize)]
struct Span {
    /// 7, 30, 90 (any 1–366); default 30.
    days: Option<i32>,
}

async fn vitals(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Query(span): Query<Span>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let trend =
        crate::desks::trends::vitals_trend(&state.desk, &caller, &id, span.days.unwrap_or(30))
            .await?;
    Ok(Json(serde_json::to_value(trend).unwrap_or_default()))
}
