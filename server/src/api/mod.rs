//! The APIs: gRPC `Dispatch` and `Admin`, and REST/SSE, all thin layers over
//! [`crate::desks::alerts::AlertDesk`] and [`crate::desks::admin::AdminDesk`].

pub mod assets;
pub mod caller;
pub mod family;
pub mod grpc;
pub mod https;
pub mod rest;
pub mod signals;
pub mod tokens;
pub mod uplink;
pub mod welfare;

use crate::{desks::alerts::DeskError, desks::auth::AuthError, store::StoreError};

/// How an error reads to an API client.
pub enum ApiError {
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    BadRequest(String),
    /// A body larger than the call takes.
    TooLarge(String),
    Internal(String),
    /// The database cannot be reached now; retrying later may work.
    Unavailable(String),
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NoSuchAlert(_) | StoreError::NotFound(_) => {
                ApiError::NotFound(err.to_string())
            }
            StoreError::Illegal(_) | StoreError::Stale(_) => ApiError::Conflict(err.to_string()),
            StoreError::Refused(_) => ApiError::BadRequest(err.to_string()),
            StoreError::Database(_) => {
                tracing::error!(error = %err, "database error in API call");
                ApiError::Unavailable(
                    "the database cannot be reached now; nothing was changed, retry shortly".into(),
                )
            }
            StoreError::DatabaseFull(_) => {
                tracing::error!(error = %err, "database out of space in API call");
                ApiError::Unavailable(
                    "the database is out of disk space; nothing was changed. Alarms are taken first; \
                     retry shortly"
                        .into(),
                )
            }
            StoreError::Stalled(_) => {
                tracing::error!(error = %err, "database write stalled in API call");
                ApiError::Unavailable(
                    "the database did not finish the change in time (see /healthz); it may still \
                     apply when the database recovers: reload before retrying"
                        .into(),
                )
            }
            other => {
                tracing::error!(error = %other, "store error in API call");
                ApiError::Internal("storage error; see the server log".into())
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Missing | AuthError::Invalid | AuthError::Refused(_) => {
                ApiError::Unauthorized(err.to_string())
            }
            AuthError::Forbidden(_) => ApiError::Forbidden(err.to_string()),
            AuthError::Store(err) => err.into(),
        }
    }
}

impl From<DeskError> for ApiError {
    fn from(err: DeskError) -> Self {
        match err {
            DeskError::Store(err) => err.into(),
            DeskError::Auth(err) => err.into(),
            DeskError::BadRequest(m) => ApiError::BadRequest(m),
        }
    }
}

/// The one flush rule of REST and gRPC: a change is answered only once it
/// is on disk, so a kill -9 right after the answer cannot take it back (a
/// new token, a resident, a place).
pub async fn durable<T>(store: &crate::store::Store, answer: T) -> Result<T, ApiError> {
    store.flush().await?;
    Ok(answer)
}
