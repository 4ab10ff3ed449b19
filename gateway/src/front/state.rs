//! What every connection task of the device front shares.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{auth::DeviceBook, session::Sessions};
use crate::{
    config::{BROKER_MAX_PAYLOAD, GatewayConfig},
    health::Health,
    ingest::Admission,
    supervisor::Sighting,
};

/// What every connection task shares.
pub struct Front {
    pub book: Arc<DeviceBook>,
    pub sessions: Arc<Sessions>,
    pub admission: Admission,
    pub sightings: tokio::sync::mpsc::Sender<Sighting>,
    /// Largest MQTT packet accepted (the event limit plus topic and header).
    pub max_packet: usize,
    pub(super) permits: Arc<Semaphore>,
    pub(super) health: Arc<Health>,
}

impl Front {
    pub fn new(
        config: &GatewayConfig,
        book: Arc<DeviceBook>,
        sessions: Arc<Sessions>,
        admission: Admission,
        sightings: tokio::sync::mpsc::Sender<Sighting>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            book,
            sessions,
            admission,
            sightings,
            max_packet: BROKER_MAX_PAYLOAD,
            permits: Arc::new(Semaphore::new(config.mqtt.max_connections)),
            health,
        }
    }
}
