//! The domain: pure rules and records, no I/O. Everything above may use
//! it; it imports nothing of the server but the metric names.

pub mod calendar;
pub mod family;
pub mod handoff;
pub mod incidents;
pub mod lifecycle;
pub mod listing;
pub mod meters;
pub mod notification;
pub mod reports;
pub mod rights;
pub mod routing;
pub mod signals;
pub mod vitals;
pub mod welfare;
pub mod zones;
