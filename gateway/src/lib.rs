//! anxin-gateway: the household / community-centre daemon between devices
//! (MQTT) and the dispatch server (gRPC). See ARCHITECTURE.md for the map.

pub mod config;
pub mod fallback;
pub mod front;
pub mod health;
pub mod http;
pub mod ingest;
pub mod journal;
pub mod metrics;
pub mod mqtt_out;
pub mod roster;
pub mod supervisor;
pub mod uplink;
