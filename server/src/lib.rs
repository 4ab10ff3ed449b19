//! anxin-server: the dispatch centre. Gateways stream events in; incidents
//! are correlated, routed to on-duty staff and escalated on deadline;
//! dispatchers, carers and administrators work through gRPC, REST/SSE and
//! the web console. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod calendar;
pub mod certs;
pub mod config;
pub mod control;
pub mod directory;
pub mod escalation;
pub mod gateways;
pub mod health;
pub mod import;
pub mod incidents;
pub mod lifecycle;
pub mod listing;
pub mod metrics;
pub mod notifier;
pub mod replicas;
pub mod reports;
pub mod retention;
pub mod routing;
pub mod seed;
pub mod store;
pub mod uplink;
pub mod welfare;
