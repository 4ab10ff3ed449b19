//! The dispatcher-facing APIs: gRPC `Dispatch` and REST/SSE, both thin layers
//! over [`crate::alerts::AlertDesk`].

pub mod grpc;
pub mod rest;

use crate::store::StoreError;

/// How a store error reads to an API client.
pub enum ApiError {
    NotFound(String),
    Conflict(String),
    BadRequest(String),
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NoSuchAlert(_) => ApiError::NotFound(err.to_string()),
            StoreError::Illegal(_) => ApiError::Conflict(err.to_string()),
            other => {
                tracing::error!(error = %other, "store error in API call");
                ApiError::Internal("storage error; see the server log".into())
            }
        }
    }
}
