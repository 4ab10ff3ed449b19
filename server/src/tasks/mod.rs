//! The tasks: what runs on its own beside the requests — the escalation
//! timer, retention, the outbox deliverer, the welfare judges, other
//! replicas' changes, the store's health and seal, the control socket.
//! Each is spawned once, in `main.rs`, and ends on the shutdown token.

pub mod control;
pub mod escalation;
pub mod health;
pub mod judges;
pub mod outbox;
pub mod replicas;
pub mod retention;
