//! `anxin-sim press`: one device, one event. The event stays in the device's
//! outbox until `stored`; then the device waits for `acknowledged`,
//! "help is coming".

use std::time::{Duration, Instant};

use anxin_proto::{AckKind, DeviceEvent, EventKind, now_ms};

use crate::{config::SimConfig, device};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    Stored,
    Acknowledged,
}

pub struct Press {
    pub device_id: String,
    pub kind: EventKind,
    pub seq: u64,
    pub battery_pct: u32,
    pub json: bool,
    pub until: Until,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PressError {
    #[error("the gateway rejected the event: {0}")]
    Rejected(String),
    #[error("no {0} ack within {1:?}")]
    Timeout(&'static str, Duration),
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
    let event = DeviceEvent {
        device_id: press.device_id.clone(),
        seq: press.seq,
        kind: press.kind as i32,
        device_time_ms: now_ms(),
        battery_pct: press.battery_pct,
        ..Default::default()
    };
    println!(
        "pressed device={} seq={} kind={}",
        press.device_id,
        press.seq,
        press.kind.as_str_name()
    );
    let started = Instant::now();
    device.submit.send(event).expect("device task runs");
    let mut stored = false;
    loop {
        let waiting = if stored { "acknowledged" } else { "stored" };
        let remaining = press.timeout.saturating_sub(started.elapsed());
        let heard = match tokio::time::timeout(remaining, heard.recv()).await {
            Ok(Some(heard)) => heard,
            Ok(None) | Err(_) => return Err(PressError::Timeout(waiting, press.timeout)),
        };
        let ack = heard.ack;
        if ack.seq != press.seq {
            continue;
        }
        let latency_ms = started.elapsed().as_millis();
        match ack.kind() {
            AckKind::Rejected => return Err(PressError::Rejected(ack.message)),
            AckKind::Stored if !stored => {
                stored = true;
                println!("stored seq={} latency_ms={latency_ms}", ack.seq);
                if press.until == Until::Stored {
                    return Ok(());
                }
            }
            AckKind::Acknowledged => {
                println!(
                    "acknowledged seq={} alert={} latency_ms={latency_ms} message=\"{}\"",
                    ack.seq, ack.alert_id, ack.message
                );
                return Ok(());
            }
            _ => {}
        }
    }
}
