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
}

/// The authenticated caller of a request.
pub struct Caller(pub Principal);

impl FromRequestParts<RestState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &RestState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let from_query = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("access_token="))
                .map(str::to_string)
        });
        let token = Authenticator::bearer(header)
            .map(str::to_string)
            .or(from_query);
        let principal = state.auth.authenticate(token.as_deref())?;
        if matches!(principal, Principal::Gateway(_)) {
            return Err(ApiError::Forbidden(
                "gateway tokens are for the uplink only".into(),
            ));
        }
        Ok(Caller(principal))
    }
}
