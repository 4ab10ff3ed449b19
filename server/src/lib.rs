//! anxin-server: the dispatch centre. Gateways stream events in; incidents
//! are correlated, routed to on-duty staff and escalated on deadline;
//! dispatchers, carers and administrators work through gRPC, REST/SSE and
//! the web console.
//!
//! The modules are layers, lowest first; each imports only from those
//! below it (ARCHITECTURE.md, "Layers"; `tests/tests/layers.rs` keeps it
//! so): [`metrics`] and [`domain`] (pure rules and records), [`store`] (the
//! storage traits and both engines), [`config`] (the server's settings),
//! [`desks`] (the one place each kind of change is decided), [`tasks`]
//! (what runs on its own: timers, judges, the outbox, health), [`api`] (the
//! transports: REST/SSE, gRPC, the uplink, the console). `main.rs` wires
//! them; the operator commands live beside it in `commands/`.

pub mod metrics;

pub mod domain;

pub mod store;

pub mod config;

pub mod desks;

pub mod tasks;

pub mod api;
