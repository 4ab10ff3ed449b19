//! `anxin-sim`: simulated Anxin devices for integrators and tests.

mod config;
mod device;
mod ledger;
mod load;
mod press;
mod scenario;
mod verify;

use std::{path::PathBuf, time::Duration};

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
    /// MQTT password; the username is the device id unless the config sets
    /// one. `{id}` in it stands for each device's id, so one value serves a
    /// fleet provisioned by a pattern (test benches, the dev stack).
    #[arg(long, global = true, env = "ANXIN_SIM_PASSWORD")]
    password: Option<String>,
    /// Print the result as JSON (for machines).
    #[arg(long, global = true)]
    json_output: bool,
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
        kind: anxin_device_core::Kind,
        /// Event sequence number; defaults to the current time in
        /// milliseconds, which never repeats for one device.
        #[arg(long)]
        seq: Option<u64>,
        #[arg(long, default_value_t = 87)]
        battery: u32,
        /// Where the device is: `LAT,LON[,ACCURACY_M]` in WGS-84 degrees
        /// (a wearable's GNSS fix, sent with the event).
        #[arg(long, value_parser = parse_position)]
        at: Option<(i32, i32, u32)>,
        /// Publish proto3 JSON on the …/event/json topic instead of protobuf.
        #[arg(long)]
        json: bool,
        /// Stop after this ack.
        #[arg(long, value_enum, default_value = "acknowledged")]
        until: press::Until,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Give up if the gateway has not said `stored` within this many
        /// seconds (no Anxin gateway at --gateway, or one that cannot store).
        #[arg(long, default_value_t = 10)]
        stored_timeout_secs: u64,
    },
    /// Run many devices at a steady total rate, each with its own connection
    /// and retry outbox; SIGTERM or Ctrl-C stops sending, then drains.
    Load {
        /// Number of devices: ids are PREFIX00000, PREFIX00001, …
        #[arg(long, default_value_t = 10)]
        devices: usize,
        #[arg(long, default_value = "dev-")]
        prefix: String,
        /// Events per second across all devices.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds to send for.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Share of events per priority, e.g. p0=0.05,p3=0.95.
        #[arg(long, default_value = "p0=0.05,p3=0.95")]
        mix: load::Mix,
        /// Write every event and ack to this ledger file (JSON lines).
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// Seconds to wait for outstanding `stored` acks after sending stops.
        #[arg(long, default_value_t = 60)]
        drain: u64,
        /// Publish proto3 JSON instead of protobuf.
        #[arg(long)]
        json: bool,
        /// Misbehave as broken firmware does: duplicate publishes, malformed
        /// and oversize payloads, dropped connections, skewed clocks.
        #[arg(long)]
        chaos: bool,
        /// Telemetry carries a wearable's readings: vitals and a position
        /// fix in turn (normal vitals; fixes within 100 m of 31.2290 N,
        /// 121.4550 E), for the server's signal rules to judge.
        #[arg(long)]
        readings: bool,
    },
    /// Play a household's story from a scenario file (see
    /// firmware-sim/scenarios/): device state machines on a timeline.
    Run {
        #[arg(long)]
        scenario: PathBuf,
    },
    /// Check a ledger against the server: every `stored` event exactly once,
    /// one alert per stored P0. Exits 1 on any loss or duplicate.
    Verify {
        #[arg(long)]
        ledger: PathBuf,
        /// The server's HTTP base URL, e.g. http://127.0.0.1:8080
        #[arg(long)]
        server: String,
        /// An API token of the server that may read the devices' events
        /// and alerts (a dispatcher's, or the admin's).
        #[arg(long, env = "ANXIN_TOKEN", hide_env_values = true)]
        token: String,
    },
}

/// `LAT,LON[,ACCURACY_M]` → degrees ×1e7 and metres.
fn parse_position(text: &str) -> Result<(i32, i32, u32), String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let degrees = |s: &str, limit: f64| -> Result<i32, String> {
        let d: f64 = s
            .parse()
            .map_err(|_| format!("`{s}` is not a number of degrees"))?;
        if d.abs() > limit {
            return Err(format!("{d} is outside ±{limit}"));
        }
        Ok((d * 1e7).round() as i32)
    };
    match parts.as_slice() {
        [lat, lon] | [lat, lon, _] => Ok((
            degrees(lat, 90.0)?,
            degrees(lon, 180.0)?,
            match parts.get(2) {
                Some(a) => a
                    .parse()
                    .map_err(|_| format!("accuracy `{a}` is not metres"))?,
                None => 10,
            },
        )),
        _ => Err("expected LAT,LON or LAT,LON,ACCURACY_M".into()),
    }
}

fn parse_kind(text: &str) -> Result<anxin_device_core::Kind, String> {
    use anxin_device_core::Kind::*;
    const KINDS: [anxin_device_core::Kind; 15] = [
        Sos,
        Fall,
        Smoke,
        Gas,
        VitalsCritical,
        Inactivity,
        VitalsWarning,
        Tamper,
        Cancel,
        LowBattery,
        DeviceFault,
        Telemetry,
        Heartbeat,
        TestCall,
        CheckinOk,
    ];
    let upper = text.to_ascii_uppercase();
    let wanted = upper.strip_prefix("EVENT_KIND_").unwrap_or(&upper);
    KINDS
        .into_iter()
        .find(|k| device::kind_name(*k).strip_prefix("EVENT_KIND_") == Some(wanted))
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
    if args.password.is_some() {
        config.password = args.password;
    }
    config.validate()?;
    match args.command {
        Command::Press {
            device,
            kind,
            seq,
            battery,
            at,
            json,
            until,
            timeout_secs,
            stored_timeout_secs,
        } => {
            let seq = seq.unwrap_or_else(|| anxin_proto::now_ms() as u64);
            let press = press::Press {
                device_id: device,
                kind,
                seq,
                battery_pct: battery,
                at,
                json,
                until,
                timeout: Duration::from_secs(timeout_secs),
                stored_timeout: Duration::from_secs(stored_timeout_secs),
                gateway: config.gateway.clone(),
            };
            press::run(&config, press).await.context("press")?;
        }
        Command::Load {
            devices,
            prefix,
            rate,
            duration,
            mix,
            ledger,
            drain,
            json,
            chaos,
            readings,
        } => {
            let summary = load::run(
                &config,
                load::Load {
                    devices,
                    prefix,
                    rate_per_sec: rate,
                    duration: Duration::from_secs(duration),
                    mix,
                    ledger,
                    drain: Duration::from_secs(drain),
                    json,
                    chaos,
                    readings,
                },
            )
            .await?;
            if args.json_output {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "load devices={} sent={} stored={} rejected={} dropped={} outstanding={} elapsed_s={:.1} stored_per_sec={:.0} stored_latency_ms_p50={:.1} p90={:.1} p99={:.1} max={:.1}",
                    summary.devices,
                    summary.sent,
                    summary.stored,
                    summary.rejected,
                    summary.dropped,
                    summary.outstanding,
                    summary.elapsed_s,
                    summary.stored_per_sec,
                    summary.stored_latency_ms.p50,
                    summary.stored_latency_ms.p90,
                    summary.stored_latency_ms.p99,
                    summary.stored_latency_ms.max,
                );
            }
            if chaos {
                println!(
                    "chaos duplicates={} malformed={} oversize={} disconnects={}",
                    summary.chaos_duplicates,
                    summary.chaos_malformed,
                    summary.chaos_oversize,
                    summary.chaos_disconnects
                );
            }
            if summary.outstanding > 0 {
                anyhow::bail!("{} events were never acked `stored`", summary.outstanding);
            }
        }
        Command::Run { scenario } => {
            let scenario = scenario::Scenario::load(&scenario)?;
            let outcome = scenario::run(&config, scenario).await?;
            if args.json_output {
                println!("{}", serde_json::to_string(&outcome)?);
            }
            if outcome.stored + outcome.rejected < outcome.raised {
                anyhow::bail!(
                    "{} events were never acked `stored`",
                    outcome.raised - outcome.stored - outcome.rejected
                );
            }
        }
        Command::Verify {
            ledger,
            server,
            token,
        } => {
            let report = verify::run(&ledger, &server, &token)
                .await
                .context("verify")?;
            if args.json_output {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "verify stored={} found={} missing={} duplicated={} alert_mismatches={}",
                    report.stored_in_ledger,
                    report.found_at_server,
                    report.missing.len(),
                    report.duplicated.len(),
                    report.alert_mismatches.len()
                );
                for line in report.missing.iter().map(|m| format!("missing {m}")).chain(
                    report
                        .duplicated
                        .iter()
                        .map(|d| format!("duplicated {d}"))
                        .chain(report.alert_mismatches.iter().map(|a| format!("alert {a}"))),
                ) {
                    println!("{line}");
                }
            }
            if !report.ok() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
