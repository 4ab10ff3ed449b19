//! The console's files, embedded in the binary with `include_str!` (no
//! build step, no CDN: the machines have no internet): the dispatchers'
//! console at `/`, the family view at `/family`, Leaflet for maps, uPlot
//! for the vital-sign charts, and the map's settings for both.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};

use super::caller::RestState;

pub fn routes() -> Router<RestState> {
    Router::new()
        .route("/", get(console))
        .route("/family", get(family))
        .route("/console/map.json", get(map))
        .route("/console/{name}", get(asset))
        .route("/console/images/{name}", get(image))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

async fn console() -> Html<&'static str> {
    Html(include_str!("console/index.html"))
}

/// The family view: a phone-sized page a family member reaches from the
/// link in their SMS.
async fn family() -> Html<&'static str> {
    Html(include_str!("console/family.html"))
}

/// The map's tiles and datum (nothing secret: the same for everyone).
async fn map(State(state): State<RestState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "tileUrl": state.map.tile_url,
        "datum": state.map.datum,
        "attribution": state.map.attribution,
    }))
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.js" => (include_str!("console/app.js"), JS),
        "app.css" => (include_str!("console/app.css"), CSS),
        "i18n.js" => (include_str!("console/i18n.js"), JS),
        "map.js" => (include_str!("console/map.js"), JS),
        "family.js" => (include_str!("console/family.js"), JS),
        "signals.js" => (include_str!("console/signals.js"), JS),
        "uPlot.iife.min.js" => (include_str!("console/vendor/uplot/uPlot.iife.min.js"), JS),
        "uPlot.min.css" => (include_str!("console/vendor/uplot/uPlot.min.css"), CSS),
        "leaflet.js" => (include_str!("console/vendor/leaflet/leaflet.js"), JS),
        "leaflet.css" => (include_str!("console/vendor/leaflet/leaflet.css"), CSS),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Leaflet's marker and control images (its stylesheet names them
/// `images/…` beside itself).
async fn image(Path(name): Path<String>) -> Response {
    let body: &'static [u8] = match name.as_str() {
        "marker-icon.png" => include_bytes!("console/vendor/leaflet/images/marker-icon.png"),
        "marker-icon-2x.png" => include_bytes!("console/vendor/leaflet/images/marker-icon-2x.png"),
        "marker-shadow.png" => include_bytes!("console/vendor/leaflet/images/marker-shadow.png"),
        "layers.png" => include_bytes!("console/vendor/leaflet/images/layers.png"),
        "layers-2x.png" => include_bytes!("console/vendor/leaflet/images/layers-2x.png"),
        _ => return (StatusCode::NOT_FOUND, "no such image").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        body,
    )
        .into_response()
}
