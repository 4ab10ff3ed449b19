//! anxin-bench: the benchmark harness. Each scenario starts the real release
//! binaries on loopback (and Mosquitto for the baseline), drives them, and
//! prints its figures. BENCHMARKS.md records the commands and results.
//!
//! ```sh
//! cargo run --release -p anxin-tests --bin anxin-bench -- throughput
//! cargo run --release -p anxin-tests --bin anxin-bench -- latency
//! cargo run --release -p anxin-tests --bin anxin-bench -- drain
//! cargo run --release -p anxin-tests --bin anxin-bench -- footprint
//! cargo run --release -p anxin-tests --bin anxin-bench -- many
//! cargo run --release -p anxin-tests --bin anxin-bench -- presses
//! cargo run --release -p anxin-tests --bin anxin-bench -- city
//! cargo run --release -p anxin-tests --bin anxin-bench -- callout
//! cargo run --release -p anxin-tests --bin anxin-bench -- signals
//! cargo run --release -p anxin-tests --bin anxin-bench -- storm
//! ```
//!
//! Every hop is durable, as in production: the gateway acks `stored` after
//! its journal flush, the server acks `received` after its store flush.

mod callout;
mod city;
mod mosquitto;
mod procstat;
mod retention;
mod scenarios;
mod signals;
mod storm;
mod traffic;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Anxin benchmarks: real processes on loopback, Mosquitto alongside")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Sustained events/s through sim → gateway → server (QoS1, `stored`
    /// acks), with each process's CPU and RSS; then Mosquitto QoS1
    /// pub → sub of the same payloads at the same offered rate.
    Throughput {
        #[arg(long, default_value_t = 50)]
        devices: usize,
        /// Offered events/s across all devices.
        #[arg(long, default_value_t = 50_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Server replicas over one PostgreSQL database (more than 1);
        /// 1: one server on the engine ANXIN_TEST_STORE names.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// P0 latency from the device's publish to the alert on the server's
    /// SSE stream, unloaded and under P3 telemetry load; Mosquitto's
    /// publish → subscriber latency alongside.
    Latency {
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        /// Milliseconds between presses.
        #[arg(long, default_value_t = 20)]
        pace_ms: u64,
        /// P3 events/s during the loaded run.
        #[arg(long, default_value_t = 20_000.0)]
        load: f64,
        #[arg(long, default_value_t = 50)]
        load_devices: usize,
        /// Server replicas over one PostgreSQL database; the SSE watcher is
        /// on another replica than the gateway's.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// A backlog queued in the gateway's journal during a server outage:
    /// time to drain once the server is back, and when the P0 queued last
    /// arrived.
    Drain {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Events per ingest round as the outage wrote them (the journal
        /// holds one record per round): 1 is the worst case, a trickle;
        /// ~10 a 10-minute outage of 1,000,000 (1,700/s, a round per fsync).
        #[arg(long, default_value_t = 10)]
        round: u64,
    },
    /// The gateway's memory under a steady load from many devices, sampled
    /// every 15 s: it must level off, not climb.
    Steady {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 240)]
        duration: u64,
    },
    /// Many connected devices (each its own connection) at a modest total
    /// rate, with SOS presses from other devices: stored-ack latency of the
    /// load, press → server and press → stored ack, gateway RSS.
    Many {
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 60)]
        duration: u64,
        #[arg(long, default_value_t = 200)]
        presses: usize,
    },
    /// A reconnect storm: every device of a gateway killed with SIGKILL
    /// reconnecting at once; time to all reconnected and the gateway's
    /// CPU, with legacy digests and with sealed credentials.
    Storm {
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// digest, sealed or both.
        #[arg(long, default_value = "both")]
        credentials: String,
        /// PBKDF2 rounds of the sealed credentials (the server's default
        /// unless given).
        #[arg(long, default_value_t = anxin_credentials::ITERATIONS)]
        iterations: u32,
    },
    /// Repeated presses on one long-lived connection, idle gateway:
    /// press → stored ack.
    Presses {
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        #[arg(long, default_value_t = 20)]
        pace_ms: u64,
    },
    /// Steady telemetry with a short retention (issue 19): the server's
    /// store and RSS every 30 s, SOS → SSE before and while pruning, and
    /// every alert with its SOS event at the end.
    Retention {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 600)]
        duration: u64,
        /// retention.events, in seconds.
        #[arg(long, default_value_t = 120)]
        keep: u64,
        /// SOS presses (each from its own device) every 30 s.
        #[arg(long, default_value_t = 10)]
        presses: usize,
        /// retention.batch.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// retention.pause_ms.
        #[arg(long, default_value_t = 10)]
        pause_ms: u64,
    },
    /// A city's directory (issue 18): imports, every list page and search,
    /// the console's first load in Chromium, SOS → SSE and the server's
    /// memory, with a million residents (`--residents 0`: the baseline).
    City {
        #[arg(long, default_value_t = 1_000_000)]
        residents: usize,
        /// One per resident, at most `residents`.
        #[arg(long, default_value_t = 1_000_000)]
        devices: usize,
        #[arg(long, default_value_t = 5000)]
        communities: usize,
        #[arg(long, default_value_t = 10_000)]
        staff: usize,
        #[arg(long, default_value_t = 1_000_000)]
        alerts: usize,
        #[arg(long, default_value_t = 200)]
        probes: usize,
        #[arg(long, default_value_t = 20)]
        consoles: usize,
    },
    /// The family call-out (issue 29): SOS → the first SMS at the carrier
    /// through a real Kannel, and SOS → SSE with call-out on and off.
    Callout {
        #[arg(long, default_value_t = 200)]
        samples: usize,
        #[arg(long, default_value_t = 50)]
        pace_ms: u64,
    },
    /// Binary sizes, idle RSS, and the server's memory per connected
    /// gateway stream.
    Footprint {
        #[arg(long, default_value_t = 1000)]
        gateways: usize,
    },
    /// Wearables reporting vitals and fixes against the signal rules, the
    /// rules on and then off.
    Signals {
        #[arg(long, default_value_t = 10_000)]
        wearables: usize,
        /// Seconds between one wearable's vitals readings (and its fixes).
        #[arg(long, default_value_t = 30)]
        period: u64,
        #[arg(long, default_value_t = 45)]
        warmup: u64,
        #[arg(long, default_value_t = 180)]
        measure: u64,
        #[arg(long, default_value_t = 300)]
        presses: usize,
        /// Pairs of runs (rules on, then off) on fresh stacks.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("machine: {}", scenarios::machine());
    match args.scenario {
        Scenario::Throughput {
            devices,
            rate,
            duration,
            replicas,
        } => scenarios::throughput(devices, rate, duration, replicas).await,
        Scenario::Latency {
            samples,
            pace_ms,
            load,
            load_devices,
            replicas,
        } => scenarios::latency(samples, pace_ms, load, load_devices, replicas).await,
        Scenario::Drain { events, round } => scenarios::drain(events, round).await,
        Scenario::Steady {
            devices,
            rate,
            duration,
        } => scenarios::steady(devices, rate, duration).await,
        Scenario::Footprint { gateways } => scenarios::footprint(gateways).await,
        Scenario::Callout { samples, pace_ms } => callout::callout(samples, pace_ms).await,
        Scenario::Many {
            devices,
            rate,
            duration,
            presses,
        } => scenarios::many(devices, rate, duration, presses).await,
        Scenario::Presses { samples, pace_ms } => scenarios::presses(samples, pace_ms).await,
        Scenario::Storm {
            devices,
            credentials,
            iterations,
        } => storm::storm(devices, &credentials, iterations).await,
        Scenario::Signals {
            wearables,
            period,
            warmup,
            measure,
            presses,
            rounds,
        } => signals::signals(wearables, period, warmup, measure, presses, rounds).await,
        Scenario::Retention {
            devices,
            rate,
            duration,
            keep,
            presses,
            batch,
            pause_ms,
        } => retention::retention(devices, rate, duration, keep, presses, batch, pause_ms).await,
        Scenario::City {
            residents,
            devices,
            communities,
            staff,
            alerts,
            probes,
            consoles,
        } => {
            city::city(city::City {
                residents,
                devices,
                communities,
                staff,
                alerts,
                probes,
                consoles,
            })
            .await
        }
    }
}
