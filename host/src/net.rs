//! Listening ports, named by their config field: a port another program
//! holds is a start-up error that says which field to change.

use std::{io, net::SocketAddr};

/// A listening port that could not be had, named by its config field.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} ({field}): {source}. Is another program using that port? Set {field} to a free one"
)]
pub struct BindError {
    pub addr: SocketAddr,
    pub field: &'static str,
    pub source: io::Error,
}

/// Binds a listener for the address of config field `field`; an error
/// names both, so an operator knows what to change.
pub async fn bind(
    addr: SocketAddr,
    field: &'static str,
) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError {
            addr,
            field,
            source,
        })
}
