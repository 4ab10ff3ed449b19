//! The PostgreSQL engine: one database shared by several active replicas.
//!
//! Each record is kept as the same protobuf bytes the sled engine stores,
//! with the columns it is looked up by beside it (schema in `0001_init.sql`;
//! migrations are versioned in `schema_migrations` and applied at start-up
//! under an advisory lock, so replicas starting together apply each once).
//!
//! Across replicas:
//! - an event's incident decision runs under a transaction-scoped advisory
//!   lock on its incident key, and the alert row is locked `FOR UPDATE`, so
//!   two replicas relaying alarms of one resident raise one alert;
//! - every alert change locks its row, so an offer deadline seen due by two
//!   timers escalates once (the second finds the offer no longer due);
//! - every commit that changes an alert, queues a downlink or touches the
//!   directory sends a `NOTIFY anxin` in its transaction, delivered on
//!   commit; each replica's listener turns those of other replicas into
//!   [`RemoteChange`]s (watchers, timers, gateways connected here).
//!
//! A commit is durable when it returns (`synchronous_commit` on), so
//! `flush` has nothing to do.

mod audit;
mod check;
mod core;
mod directory;
pub(crate) mod listing;
pub mod scratch;
mod signals;
mod storage;
pub mod tls;
mod welfare;

pub(crate) use core::merge_event_days;
pub use core::{DEFAULT_WRITE_BOUND, PgStore};
