//! anxin-server: the dispatch centre. Gateways stream events in; dispatchers
//! watch and act on alerts. See ARCHITECTURE.md for the map.

pub mod alerts;
pub mod api;
pub mod config;
pub mod gateways;
pub mod lifecycle;
pub mod metrics;
pub mod store;
pub mod uplink;
