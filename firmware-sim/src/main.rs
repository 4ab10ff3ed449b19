//! `anxin-sim`: simulated Anxin devices for integrators and tests.

mod config;
mod press;

use std::{path::PathBuf, time::Duration};

use anxin_proto::EventKind;
use anyhow::Context;
use clap::{Parser, Subcommand};
use config::SimConfig;

#[derive(Parser)]
#[command(
    version,
    about = "Simulated Anxin devices (call buttons, wearables, sensors) over MQTT"
)]
struct Args {
    /// TOML configuration file (gateway address, credentials, retry interval).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The gateway's MQTT address, host:port (overrides the config file).
    #[arg(long, global = true)]
    gateway: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Press a device's button once: publish one event, retry until the
    /// gateway says `stored`, then wait for `acknowledged` ("help is coming").
    Press {
        /// Device id, as registered at the gateway.
        #[arg(long)]
        device: String,
        /// Event kind: sos, fall, smoke, gas, heartbeat, telemetry, ...
        #[arg(long, default_value = "sos", value_parser = parse_kind)]
        kind: EventKind,
        /// Event sequence number; defaults to the current time in
        /// milliseconds, which never repeats for one device.
        #[arg(long)]
        seq: Option<u64>,
        #[arg(long, default_value_t = 87)]
        battery: u32,
        /// Publish proto3 JSON on the …/event/json topic instead of protobuf.
        #[arg(long)]
        json: bool,
        /// Stop after this ack.
        #[arg(long, value_enum, default_value = "acknowledged")]
        until: press::Until,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
}

fn parse_kind(text: &str) -> Result<EventKind, String> {
    let upper = text.to_ascii_uppercase();
    EventKind::from_str_name(&upper)
        .or_else(|| EventKind::from_str_name(&format!("EVENT_KIND_{upper}")))
        .filter(|k| *k != EventKind::Unspecified)
        .ok_or_else(|| format!("unknown event kind `{text}`"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut config = match &args.config {
        Some(path) => SimConfig::load(path)?,
        None => SimConfig::default(),
    };
    if let Some(gateway) = args.gateway {
        config.gateway = gateway;
    }
    config.validate()?;
    match args.command {
        Command::Press {
            device,
            kind,
            seq,
            battery,
            json,
            until,
            timeout_secs,
        } => {
            let seq = seq.unwrap_or_else(|| anxin_proto::now_ms() as u64);
            let press = press::Press {
                device_id: device,
                kind,
                seq,
                battery_pct: battery,
                json,
                until,
                timeout: Duration::from_secs(timeout_secs),
            };
            press::run(&config, press).await.context("press")?;
        }
    }
    Ok(())
}
