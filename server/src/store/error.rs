//! The store's one error type, shared by the seam and both engines.

use crate::domain::lifecycle::IllegalTransition;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Storage(#[from] ::sled::Error),
    /// The database could not be reached or refused a statement; nothing
    /// was committed. Unlike a sled I/O error this does not poison the
    /// process: the pool reconnects.
    #[error("database: {0}")]
    Database(String),
    #[error("record {0} does not decode: {1}")]
    Corrupt(String, prost::DecodeError),
    #[error("no alert {0}")]
    NoSuchAlert(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error("event has no body")]
    EmptyEvent,
    /// A change that no longer applies (the offer was acknowledged before its
    /// deadline fired, say); nothing was written.
    #[error("{0}")]
    Stale(String),
    /// A write to the database did not finish within `store.write_timeout_ms`
    /// (a commit held for a synchronous standby that is gone, a lock held
    /// that long). It may still commit later; nothing was acknowledged.
    #[error(
        "the database did not finish a write within {0} ms; it may be waiting for a synchronous standby or a lock"
    )]
    Stalled(u64),
    /// The database refused a write for want of space (SQLSTATE 53100);
    /// nothing was written. Routine events wait at the gateways until it
    /// has room; alarms are tried first.
    #[error("the database is out of disk space: {0}")]
    DatabaseFull(String),
    /// A request that breaks a rule of the domain; nothing was written.
    #[error("{0}")]
    Refused(String),
    /// The store's files cannot be read as a store: the server must not
    /// start on it (docs/operations.md, "A damaged store").
    #[error(
        "the store is damaged ({0}): nothing was started on it. Find what is damaged with \
         `anxin-server --config <file> store check`, then restore the last backup \
         (docs/operations.md, \"A damaged store\")"
    )]
    Damaged(String),
}
