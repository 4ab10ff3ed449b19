//! REST/SSE API for dispatchers, carers, administrators and integrators,
//! plus /healthz, /metrics and the web console. JSON bodies use the proto3
//! JSON mapping of the `anxin.v1` messages (camelCase fields, enum names as
//! strings). Every `/api/v1` call needs `Authorization: Bearer <token>`
//! (EventSource, which cannot set headers, may pass `?access_token=`).

use std::{convert::Infallible, time::Duration};

use anxin_proto::v1::{
    Alert, AlertAction, AlertState, AuditQuery, DeviceRecord, GatewayRecord, Place, Resident, Staff,
};
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post, put},
};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::ApiError;
use super::caller::{Caller, RestState};
use crate::{
    desks::alerts::Act,
    desks::welfare::view::PlaceNames,
    domain::lifecycle,
    domain::listing::{ListQuery, Page},
    domain::reports,
    domain::rights::{Need, Principal},
    store::directory::Directory,
};

pub fn router(state: RestState) -> Router {
    let csp =
        header::HeaderValue::from_str(&content_security_policy(state.map.tile_origin().as_deref()))
            .expect("the policy is plain ASCII");
    Router::new()
        .merge(super::assets::routes())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/me", get(me))
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/alerts/stream", get(stream_alerts))
        .route("/api/v1/alerts/{id}", get(get_alert))
        .route("/api/v1/alerts/{id}/{action}", post(act))
        .route("/api/v1/devices/{id}/events", get(device_events))
        .route("/api/v1/places", get(list_places))
        .route("/api/v1/places/{id}", put(put_place))
        .route("/api/v1/residents", get(list_residents))
        .route(
            "/api/v1/residents/{id}",
            put(put_resident).get(get_resident),
        )
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}", put(put_device))
        .route("/api/v1/gateways", get(list_gateways))
        .route("/api/v1/gateways/board", get(gateway_board))
        .route("/api/v1/gateways/{id}", put(put_gateway))
        .route("/api/v1/staff", get(list_staff))
        .route("/api/v1/staff/board", get(staff_board))
        .route("/api/v1/staff/{id}", put(put_staff))
        .route("/api/v1/import/{kind}", post(import))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/audit/verify", get(verify_audit))
        .route("/api/v1/reports", get(report))
        .merge(super::tokens::routes())
        .merge(super::welfare::routes())
        .merge(super::signals::routes())
        .merge(super::family::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            store_guard,
        ))
        .layer(axum::middleware::map_response(move |response: Response| {
            let csp = csp.clone();
            async move { security_headers(response, &csp) }
        }))
        .with_state(state)
}

/// The console's policy: scripts, styles and connections from this origin
/// only (no inline script or style, no eval), never framed, nothing sent
/// as a referrer; images from here and from the map's tile server, if one
/// is configured. On every response, API answers included: they are
/// cheap, and a JSON answer must not be sniffed into a page either.
pub fn content_security_policy(tile_origin: Option<&str>) -> String {
    format!(
        "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:{}; font-src 'self'; connect-src 'self'; \
    media-src 'self' data:; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'",
        tile_origin.map(|o| format!(" {o}")).unwrap_or_default()
    )
}

fn security_headers(mut response: Response, csp: &header::HeaderValue) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// While the store has failed (until the restart in place), API calls get a
/// clear 503 instead of reaching a sled that may block them; `/healthz`,
/// `/metrics` and the console's files are served as always.
async fn store_guard(
    State(state): State<RestState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path().starts_with("/api/")
        && let Some(why) = state.health.store_failure()
    {
        let body = serde_json::json!({ "error": format!("{why}. Retry in a few seconds") });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    // A change is answered only once it is on disk: a kill -9 right after
    // a 200 (a new token, a resident, a place) must not take it back.
    let change = request.uri().path().starts_with("/api/")
        && !matches!(
            *request.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        );
    let response = next.run(request).await;
    if change
        && response.status().is_success()
        && let Err(err) = super::durable(state.admin.store(), ()).await
    {
        return err.into_response();
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

#[derive(serde::Deserialize, Default)]
struct HealthQuery {
    /// `exact`: count the committed events (a scan of them all); a load
    /// balancer's probe should not ask.
    #[serde(default)]
    events: String,
}

/// 200 `ok` when the server can do all of its job; 503 `degraded` with
/// the reasons (see `health.rs`) when it cannot take new events.
async fn healthz(
    State(state): State<RestState>,
    Query(query): Query<HealthQuery>,
) -> (StatusCode, Json<serde_json::Value>) {
    let reasons = state.health.reasons();
    let disk = state.health.disk();
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let store_error = state.health.store_error();
    // A failed sled can block its callers: don't read it then. Counting
    // reads every event on either engine (sled's `len` walks the tree), so
    // only when asked, never at every probe.
    let store = state.desk.store();
    let events = (store_error.is_none()
        && state.health.database_error().is_none()
        && query.events == "exact")
        .then(|| store.event_count().ok())
        .flatten();
    let body = serde_json::json!({
        "status": if reasons.is_empty() { "ok" } else { "degraded" },
        "reasons": reasons,
        "store_error": store_error,
        "backend": store.backend(),
        "events": events,
        "disk": { "free_bytes": disk.free(), "reserve_bytes": disk.reserve_held() },
        "restarts_in_place": anxin_host::restart::restarts(),
    });
    (code, Json(body))
}

async fn metrics(State(state): State<RestState>) -> String {
    state.metrics.render()
}

async fn me(Caller(caller): Caller) -> Json<serde_json::Value> {
    let (role, communities, name) = match &caller {
        Principal::Admin => (
            "admin".to_string(),
            vec!["*".to_string()],
            "admin".to_string(),
        ),
        Principal::Staff(s) => (
            crate::store::directory::role_name(s.role()).to_string(),
            s.communities.clone(),
            s.name.clone(),
        ),
        Principal::Gateway(_) | Principal::Family(_) => unreachable!("refused by the extractor"),
    };
    Json(serde_json::json!({
        "id": caller.name(), "name": name, "role": role, "communities": communities,
    }))
}

#[derive(Deserialize)]
struct StateFilter {
    /// Comma-separated states: `new,acknowledged`.
    state: Option<String>,
    /// Any of these asks for a page of the history, newest first.
    limit: Option<usize>,
    after: Option<String>,
    community: Option<String>,
    /// Raised in `[from, to)` (ms since the epoch).
    from: Option<i64>,
    to: Option<i64>,
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
    Caller(caller): Caller,
    Query(filter): Query<StateFilter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let states = filter.parse()?;
    let paged = filter.limit.is_some()
        || filter.after.is_some()
        || filter.community.is_some()
        || filter.from.is_some()
        || filter.to.is_some();
    if !paged {
        let alerts = state.desk.list(&caller, &states)?;
        return Ok(Json(serde_json::json!({ "alerts": alerts })));
    }
    let query = ListQuery {
        limit: filter.limit.unwrap_or(0),
        after: filter.after.unwrap_or_default(),
        community: filter.community.unwrap_or_default(),
        states,
        from_ms: filter.from.unwrap_or(0),
        to_ms: filter.to.unwrap_or(0),
        ..Default::default()
    };
    Ok(page_json("alerts", state.desk.history(&caller, query)?))
}

async fn get_alert(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Alert>, ApiError> {
    Ok(Json(state.desk.get(&caller, &id)?))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ActionBody {
    outcome: Option<String>,
    note: Option<String>,
    staff_id: Option<String>,
}

/// `POST /api/v1/alerts/{id}/{action}`: ack, decline, en_route, on_scene,
/// resolve, cancel, assign, escalate, note.
async fn act(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Alert>, ApiError> {
    // A body is optional whatever the content type says.
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("action body: {e}")))?
    };
    let action = match action.as_str() {
        "ack" | "acknowledge" => AlertAction::Acknowledge,
        "decline" => AlertAction::Decline,
        "en_route" => AlertAction::EnRoute,
        "on_scene" => AlertAction::OnScene,
        "resolve" => AlertAction::Resolve,
        "cancel" => AlertAction::Cancel,
        "assign" => AlertAction::Assign,
        "escalate" => AlertAction::Escalate,
        "note" => AlertAction::Note,
        other => return Err(ApiError::NotFound(format!("no alert action `{other}`"))),
    };
    let act = Act {
        action: Some(action),
        outcome: body.outcome.unwrap_or_else(|| "attended".into()),
        note: body.note.unwrap_or_default(),
        staff_id: body.staff_id.unwrap_or_default(),
    };
    Ok(Json(state.desk.act(&caller, &id, act).await?))
}

/// A device's committed events, for integrators and checkers (`anxin-sim
/// verify`): identity, kind, and the order they reached the server.
async fn device_events(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(device_id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let store = state.desk.store();
    let community = match store.device(&device_id)? {
        Some(device) => store
            .resident(&device.resident_id)?
            .map(|r| r.community_id)
            .unwrap_or_default(),
        None => String::new(),
    };
    caller
        .require(Need::ViewAlerts, Some(&community))
        .map_err(crate::desks::auth::AuthError::from)?;
    let mut events = store.device_events(&device_id)?;
    // `?limit=N`: the newest N only.
    if params.limit > 0 && events.len() > params.limit {
        events.drain(..events.len() - params.limit);
    }
    let events: Vec<serde_json::Value> = events
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
                "note": event.note,
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
/// (`snapshot_end` and `resync` carry `{}`: browsers drop an event whose
/// data is empty.)
async fn stream_alerts(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(filter): Query<StateFilter>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let states = filter.parse()?;
    let (snapshot, mut changes) = state.desk.watch(&caller, &states)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        for alert in &snapshot {
            if tx.send(alert_event(alert)).await.is_err() {
                return;
            }
        }
        let _ = tx
            .send(Event::default().event("snapshot_end").data("{}"))
            .await;
        loop {
            let event = match changes.recv().await {
                Ok(alert)
                    if caller.sees(&alert.community_id)
                        && (states.is_empty() || states.contains(&alert.state())) =>
                {
                    alert_event(&alert)
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => {
                    let _ = tx.send(Event::default().event("resync").data("{}")).await;
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

// ---- directory ----

/// `?limit=&after=` and the filters of a directory list
/// ([`crate::domain::listing`]); the answer carries `next` for the page after.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ListParams {
    limit: usize,
    after: String,
    community: String,
    /// Residents: name, phone or id prefix; staff: name or id prefix.
    q: String,
    gateway: String,
    resident: String,
    parent: String,
}

impl From<ListParams> for ListQuery {
    fn from(p: ListParams) -> Self {
        ListQuery {
            limit: p.limit,
            after: p.after,
            community: p.community,
            search: p.q,
            gateway: p.gateway,
            resident: p.resident,
            parent: p.parent,
            ..Default::default()
        }
    }
}

fn page_json<T: serde::Serialize>(name: &str, page: Page<T>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ name: page.items, "next": page.next }))
}

async fn list_places(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(page_json(
        "places",
        state.admin.places(&caller, params.into())?,
    ))
}

async fn put_place(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Json(mut place): Json<Place>,
) -> Result<Json<Place>, ApiError> {
    place.id = id;
    Ok(Json(state.admin.put_place(&caller, place)?))
}

async fn list_residents(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page = state.admin.residents(&caller, params.into())?;
    let mut names = PlaceNames::default();
    names.prefetch(
        state.admin.store(),
        page.items.iter().map(|r| &r.community_id),
    )?;
    let mut rows = Vec::with_capacity(page.items.len());
    for resident in page.items {
        let community = names.of(state.admin.store(), &resident.community_id)?;
        let mut row = serde_json::to_value(resident).unwrap_or_default();
        row["communityName"] = community.into();
        rows.push(row);
    }
    Ok(Json(
        serde_json::json!({ "residents": rows, "next": page.next }),
    ))
}

async fn put_resident(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Json(mut resident): Json<Resident>,
) -> Result<Json<Resident>, ApiError> {
    resident.id = id;
    Ok(Json(state.admin.put_resident(&caller, resident)?))
}

async fn get_resident(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Resident>, ApiError> {
    Ok(Json(state.admin.resident(&caller, &id).await?))
}

async fn list_devices(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(page_json(
        "devices",
        state.admin.devices(&caller, params.into())?,
    ))
}

async fn put_device(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Json(mut device): Json<DeviceRecord>,
) -> Result<Json<DeviceRecord>, ApiError> {
    device.id = id;
    Ok(Json(state.admin.put_device(&caller, device)?))
}

async fn list_gateways(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(page_json(
        "gateways",
        state.admin.gateways(&caller, params.into())?,
    ))
}

/// Every gateway the caller may watch, with its link and its own report of
/// its health: `state` is `ok`, `degraded` (it reports reasons), `offline`
/// (its stream is closed) or `unknown` (not seen since this server started).
async fn gateway_board(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page = state.admin.watched_gateways(&caller, params.into())?;
    let mut names = PlaceNames::default();
    names.prefetch(
        state.admin.store(),
        page.items.iter().map(|g| &g.community_id),
    )?;
    let rows: Vec<serde_json::Value> = page
        .items
        .into_iter()
        .map(|gateway| {
            let community = names
                .of(state.admin.store(), &gateway.community_id)
                .unwrap_or_else(|_| gateway.community_id.clone());
            let seen = state.desk.gateways().seen(&gateway.id);
            let status = seen.as_ref().and_then(|s| s.status.clone());
            let mut reasons = status
                .as_ref()
                .map(|s| s.reasons.clone())
                .unwrap_or_default();
            let token_expires_ms = seen
                .as_ref()
                .filter(|s| s.connected)
                .and_then(|s| s.token_expires_ms);
            if token_expires_ms.is_some_and(|at| {
                at - anxin_proto::now_ms() < super::uplink::TOKEN_EXPIRY_WARNING_MS
            }) {
                reasons.push("token_expiring".into());
            }
            let board_state = match &seen {
                None => "unknown",
                Some(seen) if !seen.connected => "offline",
                Some(_) if !reasons.is_empty() => "degraded",
                Some(_) => "ok",
            };
            serde_json::json!({
                "id": gateway.id,
                "name": gateway.name,
                "communityId": gateway.community_id,
                "communityName": community,
                "state": board_state,
                "reasons": reasons,
                "sinceMs": seen.as_ref().map(|s| s.since_ms.to_string()),
                "reportedMs": seen.as_ref().map(|s| s.reported_ms.to_string()),
                "diskFreeBytes": status.as_ref().map(|s| s.disk_free_bytes.to_string()),
                "journalDepth": status.as_ref().map(|s| s.journal_depth.to_string()),
                "restartsInPlace": status.as_ref().map(|s| s.restarts_in_place),
                "softwareVersion": status.as_ref().map(|s| s.software_version.clone()),
                "tokenExpiresMs": token_expires_ms.map(|at| at.to_string()),
            })
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "gateways": rows, "next": page.next }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GatewayBody {
    name: String,
    #[serde(rename = "communityId")]
    community_id: String,
    token: String,
}

async fn put_gateway(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    body: Option<Json<GatewayBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let gateway = GatewayRecord {
        id,
        name: body.name,
        community_id: body.community_id,
    };
    let (gateway, token) = state.admin.put_gateway(&caller, gateway, &body.token)?;
    Ok(Json(
        serde_json::json!({ "gateway": gateway, "token": token }),
    ))
}

async fn list_staff(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(page_json(
        "staff",
        state.admin.staff(&caller, params.into())?,
    ))
}

/// A page of the staff of the caller's communities with on-duty status and
/// what they hold.
async fn staff_board(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page = state.admin.staff(&caller, params.into())?;
    let mut names = PlaceNames::default();
    names.prefetch(
        state.admin.store(),
        page.items.iter().flat_map(|s| &s.communities),
    )?;
    let mut rows = Vec::new();
    for entry in state.desk.staff_board(page.items)? {
        let communities = entry
            .staff
            .communities
            .iter()
            .map(|c| names.of(state.admin.store(), c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut row = serde_json::to_value(entry).unwrap_or_default();
        row["communityNames"] = communities.into();
        rows.push(row);
    }
    Ok(Json(
        serde_json::json!({ "staff": rows, "next": page.next }),
    ))
}

async fn put_staff(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Json(mut staff): Json<Staff>,
) -> Result<Json<Staff>, ApiError> {
    staff.id = id;
    Ok(Json(state.admin.put_staff(&caller, staff)?))
}

/// `POST /api/v1/import/{residents|devices|staff}` with the CSV as the body.
/// 200 with the report when imported; 422 with it when any row was bad
/// (and nothing was imported).
/// Largest CSV an import accepts (a million residents are ~150 MB).
const IMPORT_MAX_BYTES: u64 = 2 << 30;

async fn import(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Path(kind): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use futures::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    // Refused before a byte is spooled.
    state.admin.may_import(&caller)?;
    // Spooled to a file, not held in memory: the file is read twice.
    let spool = tempfile::NamedTempFile::new()
        .map_err(|e| ApiError::Internal(format!("spooling the import: {e}")))?;
    let mut file = tokio::fs::File::from_std(
        spool
            .reopen()
            .map_err(|e| ApiError::Internal(format!("spooling the import: {e}")))?,
    );
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        size += chunk.len() as u64;
        if size > IMPORT_MAX_BYTES {
            return Err(ApiError::TooLarge(format!(
                "an import is at most {IMPORT_MAX_BYTES} bytes; split the file"
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::Internal(format!("spooling the import: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::Internal(format!("spooling the import: {e}")))?;
    let source = crate::desks::admin::ImportSource::File(spool.path().to_path_buf());
    let wants_progress = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if !wants_progress {
        let report = state.admin.import(&caller, &kind, source, |_| {}).await?;
        drop(spool);
        return Ok(import_answer(report));
    }
    // `Accept: application/x-ndjson`: one line per progress step, then the
    // report as the last line.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let progress_tx = tx.clone();
    tokio::spawn(async move {
        let outcome = state
            .admin
            .import(&caller, &kind, source, move |p| {
                let _ = progress_tx.send(serde_json::json!({ "progress": p }));
            })
            .await;
        drop(spool);
        let last = match outcome {
            Ok(report) => serde_json::json!({ "report": report }),
            Err(err) => serde_json::json!({ "error": err.to_string() }),
        };
        let _ = tx.send(last);
    });
    let lines = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .map(|v| Ok::<_, std::convert::Infallible>(format!("{v}\n")));
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

fn import_answer(report: anxin_proto::v1::ImportReport) -> Response {
    let status = if report.rejected.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, Json(report)).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuditParams {
    target: String,
    actor: String,
    action: String,
    since: i64,
    until: i64,
    limit: u32,
    /// Entries older than this id (the page before starts at a page's
    /// first id).
    before: u64,
}

async fn audit(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(p): Query<AuditParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = AuditQuery {
        target: p.target,
        actor: p.actor,
        action: p.action,
        since_ms: p.since,
        until_ms: p.until,
        limit: p.limit,
        before_id: p.before,
    };
    Ok(Json(
        serde_json::json!({ "entries": state.admin.audit(&caller, &query)? }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReportParams {
    community: String,
    from: i64,
    to: i64,
    format: String,
}

/// `GET /api/v1/audit/verify`: the audit chain checked, with the first
/// broken entry's id if there is one (admin only).
async fn verify_audit(
    State(state): State<RestState>,
    Caller(caller): Caller,
) -> Result<Json<crate::store::ChainReport>, ApiError> {
    Ok(Json(state.admin.verify_audit(&caller)?))
}

/// `GET /api/v1/reports?community=&from=&to=` (ms; `to` 0 = now), JSON or
/// `format=csv`.
async fn report(
    State(state): State<RestState>,
    Caller(caller): Caller,
    Query(p): Query<ReportParams>,
) -> Result<Response, ApiError> {
    let report = state.admin.report(&caller, &p.community, p.from, p.to)?;
    Ok(match p.format.as_str() {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            reports::to_csv(&report),
        )
            .into_response(),
        "" | "json" => Json(report).into_response(),
        other => {
            return Err(ApiError::BadRequest(format!(
                "format `{other}` is not json or csv"
            )));
        }
    })
}
