//! The storage seam: what the server keeps, shaped by the domain (events
//! with their incident decisions, alerts, offer deadlines, downlinks, the
//! audit log, the directory and tokens), with one module per engine:
//!
//! - [`sled`]: embedded, one process; the default (a single-node install and
//!   the dev stack need no database).
//! - [`postgres`]: one database shared by several active replicas; changes
//!   made by one replica reach the others through LISTEN/NOTIFY
//!   ([`RemoteChange`]).
//!
//! Both keep the same invariants (ARCHITECTURE.md): `(device_id, seq)`
//! unique; an event, its incident decision and its audit entry in one
//! transaction; every alert change with its audit entries and downlinks in
//! one transaction; illegal transitions refused; the deadlines index true to
//! the alerts. The engine tests in `tests.rs` run against both.
//!
//! The trait is synchronous, as sled is: the PostgreSQL engine runs its
//! async driver under `block_in_place`, so callers (many of them synchronous
//! domain code) need not know which engine is underneath.

use std::sync::Arc;

pub mod audit;
pub mod backup;
pub mod directory;
pub mod error;
pub mod migrate;
pub mod outbox;
pub mod postgres;
pub mod signals;
pub mod sled;
pub mod storage;
#[cfg(test)]
mod tests;
pub mod welfare;

pub use error::StoreError;
pub use outbox::OutboxItem;
pub use storage::{
    AlertChange, AuditAnchor, ChainReport, Change, CheckReport, Committed, EventDay, RemoteChange,
    Storage, Store, StoredEvent, chain_hash, verify_chain,
};
pub(crate) use storage::{
    alert_number, closed_ms, decision_audit, decode, incident_key, latest_positions, latest_signs,
    offer_deadline,
};

/// Opens the sled store at `path` (the embedded default).
pub fn open_sled(path: &std::path::Path) -> Result<Store, StoreError> {
    Ok(Arc::new(sled::SledStore::open(path)?))
}

/// A sled store whose page cache holds at most `cache_bytes`.
pub fn open_sled_with_cache(path: &std::path::Path, cache_bytes: u64) -> Result<Store, StoreError> {
    Ok(Arc::new(sled::SledStore::open_with_cache(
        path,
        cache_bytes,
    )?))
}

/// Which engine keeps the server's state (`store.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sled,
    Postgres,
}

/// What opening a store needs to know: plain options, whoever reads them
/// from where (the server's `[store]` section, a test, `migrate`).
#[derive(Debug, Clone)]
pub struct EngineOptions<'a> {
    pub backend: Backend,
    /// sled: the store's directory.
    pub path: &'a std::path::Path,
    /// sled: the page cache's bound.
    pub cache_bytes: u64,
    /// PostgreSQL: the connection URL and the pool's size.
    pub url: &'a str,
    pub pool_size: usize,
    /// PostgreSQL: the bound on a write of the event path.
    pub write_bound: std::time::Duration,
}

/// Opens the store the options name: sled at `path`, or PostgreSQL at
/// `url` (schema migrations applied).
pub async fn open(options: &EngineOptions<'_>) -> Result<Store, StoreError> {
    match options.backend {
        Backend::Sled => open_sled_with_cache(options.path, options.cache_bytes),
        Backend::Postgres => Ok(Arc::new(
            postgres::PgStore::connect(options.url, options.pool_size)
                .await?
                .with_write_bound(options.write_bound),
        )),
    }
}
