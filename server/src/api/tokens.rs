//! REST for API tokens: a person's (issue, list, revoke, rotate their
//! own, console sessions) and a gateway's (issue with rotation, list,
//! revoke). Thin handlers over the admin desk (`desks/tokens.rs`).

use axum::{
    Json, Router,
    extract::{Path, State},
    http::header,
    routing::{delete, post},
};

use super::{
    ApiError,
    caller::{Caller, RestState},
};
use crate::desks::{admin::IssuedToken, auth::Authenticator};

pub fn routes() -> Router<RestState> {
    Router::new()
        .route(
            "/api/v1/staff/{id}/tokens",
            post(issue_token).get(list_tokens),
        )
        .route("/api/v1/staff/{id}/tokens/{token_id}", delete(revoke_token))
        .route("/api/v1/tokens/rotate", post(rotate_token))
        .route("/api/v1/sessions", post(open_session))
        .route(
            "/api/v1/gateways/{id}/tokens",
            post(rotate_gateway_token).get(list_gateway_tokens),
        )
        .route(
            "/api/v1/gateways/{id}/tokens/{token_id}",
            delete(revoke_gateway_token),
        )
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct IssueRequest {
    /// Lifetime in seconds; absent: the config's default for the kind of
    /// token (`auth.token_ttl_secs`, `auth.gateway_token_ttl_secs`); 0: no
    /// expiry.
    ttl_secs: Option<u64>,
}

/// The lifetime asked for in an optional body, in ms.
fn ttl_ms(body: Option<Json<IssueRequest>>) -> Option<i64> {
    body.and_then(|Json(b)| b.ttl_secs)
        .map(|s| (s as i64).saturating_mul(1000))
}

/// `POST /api/v1/staff/{id}/tokens` (`{"ttlSecs": …}` optional): a new
/// token, shown once, with its id and expiry.
async fn issue_token(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    body: Option<Json<IssueRequest>>,
) -> Result<Json<IssuedToken>, ApiError> {
    let ttl_ms = ttl_ms(body);
    Ok(Json(
        state.admin.tokens().issue_token(&caller, &id, ttl_ms)?,
    ))
}

/// `GET /api/v1/staff/{id}/tokens`: ids, issue, expiry, revocation, last use.
async fn list_tokens(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tokens = state.admin.tokens().staff_tokens(&caller, &id)?;
    Ok(Json(serde_json::json!({ "tokens": tokens })))
}

/// `DELETE /api/v1/staff/{id}/tokens/{token_id}`: that one token stops
/// working at once.
async fn revoke_token(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path((id, token_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admin.tokens().revoke_token(&caller, &id, &token_id)?;
    Ok(Json(serde_json::json!({ "revoked": token_id })))
}

/// `POST /api/v1/tokens/rotate`: the token sent is replaced; it keeps
/// working for the grace period (`oldExpiresMs`).
async fn rotate_token(
    State(state): State<RestState>,
    Caller(caller): Caller,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let presented = Authenticator::bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
    .unwrap_or_default();
    let (issued, old_expires_ms) = state.admin.tokens().rotate_token(&caller, presented)?;
    let mut body = serde_json::to_value(issued).expect("serializes");
    body["oldExpiresMs"] = old_expires_ms.into();
    Ok(Json(body))
}

/// `POST /api/v1/sessions`: a short-lived console session for whoever
/// signs in; the console keeps only this, never the person's token.
async fn open_session(
    State(state): State<RestState>,
    Caller(caller): Caller,
) -> Result<Json<IssuedToken>, ApiError> {
    Ok(Json(state.admin.tokens().open_session(&caller)?))
}

/// `POST /api/v1/gateways/{id}/tokens` (`{"ttlSecs": …}` optional): a new
/// uplink token for the gateway, shown once; its earlier tokens keep
/// working until `earlierValidUntilMs` (`auth.rotation_grace_secs`).
async fn rotate_gateway_token(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    body: Option<Json<IssueRequest>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ttl_ms = ttl_ms(body);
    let (issued, earlier_until) = state
        .admin
        .tokens()
        .rotate_gateway_token(&caller, &id, ttl_ms)?;
    let mut body = serde_json::to_value(issued).expect("serializes");
    body["earlierValidUntilMs"] = earlier_until.into();
    Ok(Json(body))
}

/// `GET /api/v1/gateways/{id}/tokens`: ids, issue, expiry, revocation, last use.
async fn list_gateway_tokens(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tokens = state.admin.tokens().gateway_tokens(&caller, &id)?;
    Ok(Json(serde_json::json!({ "tokens": tokens })))
}

/// `DELETE /api/v1/gateways/{id}/tokens/{token_id}`: that token stops
/// working at once; an uplink open with it is closed within seconds.
async fn revoke_gateway_token(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path((id, token_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .admin
        .tokens()
        .revoke_gateway_token(&caller, &id, &token_id)?;
    Ok(Json(serde_json::json!({ "revoked": token_id })))
}
