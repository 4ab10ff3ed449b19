//! `anxin-sim press`: one device, one event. The event stays in the device's
//! outbox until `stored`; then the device waits for `acknowledged`,
//! "help is coming".

use std::time::{Duration, Instant};

use anxin_device_core::{Detail, Event, Kind};
use anxin_proto::now_ms;

use crate::{
    config::SimConfig,
    device::{self, Heard},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    Stored,
    Acknowledged,
}

pub struct Press {
    pub device_id: String,
    pub kind: Kind,
    pub seq: u64,
    pub battery_pct: u32,
    /// A position fix sent with the event (degrees ×1e7, metres).
    pub at: Option<(i32, i32, u32)>,
    pub json: bool,
    pub until: Until,
    pub timeout: Duration,
    /// How long to wait for `stored` before saying the gateway is not there.
    pub stored_timeout: Duration,
    /// For the error message.
    pub gateway: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PressError {
    #[error("the gateway rejected the event: {0}")]
    Rejected(String),
    #[error("no {0} ack within {1:?}")]
    Timeout(&'static str, Duration),
    #[error(
        "no `stored` ack from the gateway at {gateway} within {within:?}: is an Anxin gateway listening there (--gateway), and is the device registered with it? (--stored-timeout-secs to wait longer)"
    )]
    NoGateway { gateway: String, within: Duration },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

pub async fn run(config: &SimConfig, press: Press) -> Result<(), PressError> {
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let device = device::spawn(config, &press.device_id, press.json, heard_tx)?;
    let result = wait_for_acks(&press, &device, &mut heard).await;
    device.close().await;
    result
}

async fn wait_for_acks(
    press: &Press,
    device: &device::DeviceHandle,
    heard: &mut tokio::sync::mpsc::UnboundedReceiver<device::Heard>,
) -> Result<(), PressError> {
    let event = Event {
        device_id: press
            .device_id
            .as_str()
            .try_into()
            .map_err(|_| PressError::Rejected("device ids are at most 64 bytes".into()))?,
        seq: press.seq,
        kind: press.kind,
        device_time_ms: now_ms(),
        battery_pct: press.battery_pct,
        detail: match press.at {
            Some((lat_e7, lon_e7, accuracy_m)) => Detail::Location {
                lat_e7,
                lon_e7,
                accuracy_m,
            },
            None => Detail::None,
        },
        cancels_seq: 0,
    };
    println!(
        "pressed device={} seq={} kind={}",
        press.device_id,
        press.seq,
        device::kind_name(press.kind)
    );
    let started = Instant::now();
    device.submit.send(event).expect("device task runs");
    let mut stored = false;
    loop {
        let waiting = if stored { "acknowledged" } else { "stored" };
        let limit = if stored {
            press.timeout
        } else {
            press.timeout.min(press.stored_timeout)
        };
        let remaining = limit.saturating_sub(started.elapsed());
        let report = match tokio::time::timeout(remaining, heard.recv()).await {
            Ok(Some(report)) => report,
            Ok(None) | Err(_) if !stored => {
                return Err(PressError::NoGateway {
                    gateway: press.gateway.clone(),
                    within: limit,
                });
            }
            Ok(None) | Err(_) => return Err(PressError::Timeout(waiting, press.timeout)),
        };
        let latency_ms = started.elapsed().as_millis();
        match report {
            Heard::Rejected { seq, reason, .. } if seq == press.seq => {
                return Err(PressError::Rejected(reason));
            }
            Heard::Dropped { .. } => {
                return Err(PressError::Rejected("the device's outbox is full".into()));
            }
            Heard::Stored { seq, .. } if seq == press.seq && !stored => {
                stored = true;
                println!("stored seq={seq} latency_ms={latency_ms}");
                if press.until == Until::Stored {
                    return Ok(());
                }
            }
            Heard::HelpIsComing {
                seq,
                alert_id,
                message,
                ..
            } if seq == press.seq => {
                println!(
                    "acknowledged seq={seq} alert={alert_id} latency_ms={latency_ms} message=\"{message}\""
                );
                return Ok(());
            }
            _ => {}
        }
    }
}
