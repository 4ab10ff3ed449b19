//! The desks: the one place each kind of change is decided, with the
//! caller's rights checked — alerts ([`alerts::AlertDesk`]), the directory
//! ([`admin::AdminDesk`], [`import`]), a gateway's batch of events
//! ([`intake::GatewayIntake`]), the health and safety rules on its readings
//! ([`signals::Signals`]) and the welfare of residents who live alone
//! ([`welfare`]). Below the transports and the tasks, above the store.

pub mod admin;
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod callout;
pub mod credentials;
pub mod family;
pub mod gateways;
pub mod handoff;
pub mod import;
pub mod intake;
pub mod outbox;
pub mod policy;
pub mod signals;
pub mod tokens;
pub mod trends;
pub mod welfare;
