//! The device side of Anxin, written the way firmware is: `#![no_std]`, no
//! allocator, every buffer bounded at compile time (heapless). Time is passed
//! in as milliseconds, so the same code runs on a microcontroller tick and in
//! the host simulator.
//!
//! - [`event`]: the event a device raises, its kinds and priorities.
//! - [`wire`]: protobuf encoding of `anxin.v1.DeviceEvent` into a fixed
//!   buffer and decoding of `DeviceAck`, byte-for-byte with prost (tested).
//! - [`outbox`]: keeps every event until the gateway's `stored` ack, and
//!   retransmits with exponential backoff.
//! - [`seq`]: sequence numbers that never repeat across reboots.
//! - [`button`], [`wearable`], [`room_sensor`]: the devices' state machines.
//! - [`device`]: identity, seq, battery and clock, what every device shares.

#![no_std]

#[cfg(test)]
extern crate std;

pub mod button;
pub mod device;
pub mod event;
pub mod outbox;
pub mod room_sensor;
pub mod seq;
pub mod wearable;
pub mod wire;

pub use device::DeviceCore;
pub use event::{Detail, DeviceId, Event, Kind, Priority};
