//! What every REST handler is given: the state (desks, authenticator,
//! health) and the authenticated [`Caller`].

use axum::{extract::FromRequestParts, http::header, http::request::Parts};
use metrics_exporter_prometheus::PrometheusHandle;

use super::ApiError;
use crate::desks::{admin::AdminDesk, alerts::AlertDesk, auth::Authenticator};
use crate::domain::rights::Principal;

#[derive(Clone)]
pub struct RestState {
    pub desk: AlertDesk,
    pub admin: AdminDesk,
    pub auth: Authenticator,
    pub metrics: PrometheusHandle,
    pub health: std::sync::Arc<crate::tasks::health::Health>,
    pub family: crate::desks::family::FamilyDesk,
    /// The key of the tags in Kannel's delivery-report URLs.
    pub sms_report_key: String,
    /// Tiles for the map on alerts and in the family view.
    pub map: crate::config::MapConfig,
}

/// The request's token: `Authorization: Bearer`, or `?access_token=` for
/// EventSource, which cannot set headers.
fn token_of(parts: &Parts) -> Option<String> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let from_query = parts.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("access_token="))
            .map(str::to_string)
    });
    Authenticator::bearer(header)
        .map(str::to_string)
        .or(from_query)
}

/// The authenticated caller of a request.
pub struct Caller(pub Principal);

impl FromRequestParts<RestState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &RestState) -> Result<Self, ApiError> {
        let principal = state.auth.authenticate(token_of(parts).as_deref())?;
        if matches!(principal, Principal::Gateway(_)) {
            return Err(ApiError::Forbidden(
                "gateway tokens are for the uplink only".into(),
            ));
        }
        if matches!(principal, Principal::Family(_)) {
            let why = "a family session opens the family view only";
            crate::desks::audit::deny(state.desk.store(), &principal, "", parts.uri.path(), why);
            return Err(ApiError::Forbidden(why.into()));
        }
        Ok(Caller(principal))
    }
}

/// A family member signed in from a link: the only caller the family
/// view's endpoints take.
pub struct FamilyCaller(pub crate::domain::rights::FamilyMember);

impl FromRequestParts<RestState> for FamilyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &RestState) -> Result<Self, ApiError> {
        match state.auth.authenticate(token_of(parts).as_deref())? {
            Principal::Family(member) => Ok(FamilyCaller(member)),
            other => {
                let why = "the family view is for a family member signed in from their link";
                crate::desks::audit::deny(state.desk.store(), &other, "", parts.uri.path(), why);
                Err(ApiError::Forbidden(why.into()))
            }
        }
    }
}
