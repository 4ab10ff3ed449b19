//! Device supervision: notices devices that fall silent or run low on
//! battery, and raises events for them through the journal like any other
//! event (so they survive crashes and reach the server in priority order).
//!
//! - silent past its kind's heartbeat deadline → P1 `DEVICE_OFFLINE`;
//! - MQTT last will (`offline` on its status topic) → the deadline shrinks to
//!   `last_will_grace_secs` from now;
//! - speaks again after being declared offline → P1 `DEVICE_ONLINE`;
//! - reports battery below `low_battery_pct` → P2 `LOW_BATTERY`, once per
//!   dip (re-armed 5 points above the threshold).
//!
//! Raised events use the gateway's reserved seq range (from 2^63), so they
//! never collide with the device's own numbering. Offline and low-battery
//! flags are persisted, so a gateway restart neither repeats nor forgets them.
//! After a restart every device gets a full deadline of grace.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use anxin_proto::{DeviceEvent, EventKind, now_ms};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    config::GatewayConfig,
    front::auth::DeviceBook,
    journal::{Appended, JournalError, JournalWriter},
    metrics as m,
};

/// What ingest tells the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sighting {
    /// A valid event from the device (battery 0 = not reported).
    Event { device_id: String, battery_pct: u32 },
    /// The broker published the device's last will.
    LastWill { device_id: String },
}

const BATTERY_HYSTERESIS: u32 = 5;

struct Watch {
    deadline: Duration,
    offline_at: Instant,
    offline: bool,
    battery_low: bool,
}

pub struct Supervisor {
    journal: JournalWriter,
    flags: sled::Tree,
    devices: HashMap<String, Watch>,
    /// Who to watch: the device book, which the server's roster changes.
    book: Arc<DeviceBook>,
    book_generation: Option<u64>,
    deadlines: BTreeMap<String, u64>,
    check_interval: Duration,
    last_will_grace: Duration,
    low_battery_pct: u32,
}

impl Supervisor {
    pub fn new(
        config: &GatewayConfig,
        journal: JournalWriter,
        book: Arc<DeviceBook>,
    ) -> Result<Self, JournalError> {
        let flags = journal.aux_tree("supervision")?;
        let mut supervisor = Self {
            journal,
            flags,
            devices: HashMap::new(),
            book,
            book_generation: None,
            deadlines: config.supervision.heartbeat_deadline_secs.clone(),
            check_interval: Duration::from_millis(config.supervision.check_interval_ms),
            last_will_grace: Duration::from_secs(config.supervision.last_will_grace_secs),
            low_battery_pct: config.supervision.low_battery_pct,
        };
        supervisor.follow_book()?;
        Ok(supervisor)
    }

    /// Watches the devices the book lists now: a new one gets a full
    /// deadline of grace, a removed or deactivated one is no longer watched.
    fn follow_book(&mut self) -> Result<(), JournalError> {
        let generation = self.book.generation();
        if self.book_generation == Some(generation) {
            return Ok(());
        }
        self.book_generation = Some(generation);
        let now = Instant::now();
        let active = self.book.active();
        let listed: std::collections::HashSet<&str> =
            active.iter().map(|(id, _)| id.as_str()).collect();
        self.devices.retain(|id, _| listed.contains(id.as_str()));
        for (id, kind) in &active {
            if self.devices.contains_key(id) {
                continue;
            }
            let Some(secs) = self.deadlines.get(kind) else {
                tracing::warn!(device_id = %id, kind, "no supervision.heartbeat_deadline_secs for this kind; the device is not supervised");
                continue;
            };
            let deadline = Duration::from_secs(*secs);
            let (offline, battery_low) = match self.flags.get(id.as_bytes())?.as_deref() {
                Some([offline, low]) => (*offline == 1, *low == 1),
                _ => (false, false),
            };
            self.devices.insert(
                id.clone(),
                Watch {
                    deadline,
                    offline_at: now + deadline,
                    offline,
                    battery_low,
                },
            );
        }
        Ok(())
    }

    pub async fn run(mut self, mut sightings: mpsc::Receiver<Sighting>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                sighting = sightings.recv() => match sighting {
                    Some(sighting) => self.on_sighting(sighting).await,
                    None => return,
                },
                _ = tick.tick() => match self.follow_book() {
                    Ok(()) => self.check_deadlines().await,
                    Err(err) => Err(err),
                },
            };
            if let Err(err) = result {
                // The flag stays unset, so the next tick tries again.
                metrics::counter!(m::JOURNAL_ERRORS).increment(1);
                tracing::error!(error = %err, "supervision could not journal its event");
            }
        }
    }

    async fn on_sighting(&mut self, sighting: Sighting) -> Result<(), JournalError> {
        let now = Instant::now();
        match sighting {
            Sighting::LastWill { device_id } => {
                if let Some(watch) = self.devices.get_mut(&device_id) {
                    watch.offline_at = watch.offline_at.min(now + self.last_will_grace);
                    tracing::info!(%device_id, "device's last will received; offline unless it returns");
                }
            }
            Sighting::Event {
                device_id,
                battery_pct,
            } => {
                let low_threshold = self.low_battery_pct;
                let Some(watch) = self.devices.get_mut(&device_id) else {
                    return Ok(());
                };
                watch.offline_at = now + watch.deadline;
                let came_back = watch.offline;
                let battery_dipped =
                    battery_pct > 0 && battery_pct < low_threshold && !watch.battery_low;
                let battery_recovered =
                    watch.battery_low && battery_pct >= low_threshold + BATTERY_HYSTERESIS;
                if came_back {
                    self.raise(&device_id, EventKind::DeviceOnline, battery_pct)
                        .await?;
                    self.set_flags(&device_id, |w| w.offline = false)?;
                }
                if battery_dipped {
                    self.raise(&device_id, EventKind::LowBattery, battery_pct)
                        .await?;
                    self.set_flags(&device_id, |w| w.battery_low = true)?;
                } else if battery_recovered {
                    self.set_flags(&device_id, |w| w.battery_low = false)?;
                }
            }
        }
        Ok(())
    }

    async fn check_deadlines(&mut self) -> Result<(), JournalError> {
        let now = Instant::now();
        let overdue: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, w)| !w.offline && now >= w.offline_at)
            .map(|(id, _)| id.clone())
            .collect();
        for device_id in overdue {
            tracing::warn!(%device_id, "device silent past its deadline: raising DEVICE_OFFLINE");
            self.raise(&device_id, EventKind::DeviceOffline, 0).await?;
            self.set_flags(&device_id, |w| w.offline = true)?;
        }
        Ok(())
    }

    fn set_flags(
        &mut self,
        device_id: &str,
        change: impl FnOnce(&mut Watch),
    ) -> Result<(), JournalError> {
        let watch = self.devices.get_mut(device_id).expect("supervised device");
        change(watch);
        let value = [watch.offline as u8, watch.battery_low as u8];
        self.flags.insert(device_id.as_bytes(), &value)?;
        Ok(())
    }

    async fn raise(
        &self,
        device_id: &str,
        kind: EventKind,
        battery_pct: u32,
    ) -> Result<(), JournalError> {
        let event = DeviceEvent {
            device_id: device_id.to_string(),
            seq: self.journal.gateway_seq()?,
            kind: kind as i32,
            device_time_ms: now_ms(),
            battery_pct,
            ..Default::default()
        };
        match self.journal.append(&event, now_ms())? {
            Appended::Refused => {
                tracing::error!(%device_id, kind = kind.as_str_name(), "journal full: supervision event refused");
            }
            _ => {
                self.journal.flush().await?;
                metrics::counter!(m::SUPERVISION_EVENTS, "kind" => kind.as_str_name()).increment(1);
                tracing::info!(%device_id, seq = event.seq, kind = kind.as_str_name(), "supervision event journaled");
            }
        }
        Ok(())
    }
}
