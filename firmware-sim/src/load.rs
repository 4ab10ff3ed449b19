//! `anxin-sim load`: many devices against one gateway at a steady rate, each
//! with its own MQTT connection and outbox, every event in the ledger.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anxin_device_core::{Detail, DeviceCore, Kind, seq::RamSeqStore};
use anxin_proto::now_ms;
use rand::Rng;
use tokio::sync::mpsc;

use crate::{
    config::SimConfig,
    device::{self, DeviceHandle, Heard},
    ledger::LedgerWriter,
};

/// Share of events per priority, P0..P3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix(pub [f64; 4]);

impl std::str::FromStr for Mix {
    type Err = String;

    /// `p0=0.05,p3=0.95`; shares are normalised, unnamed priorities get 0.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut shares = [0.0; 4];
        for part in text.split(',') {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not pN=share"))?;
            let index = match name.trim().to_ascii_lowercase().as_str() {
                "p0" => 0,
                "p1" => 1,
                "p2" => 2,
                "p3" => 3,
                other => return Err(format!("unknown priority `{other}` (p0..p3)")),
            };
            shares[index] = value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| *v >= 0.0)
                .ok_or_else(|| format!("`{value}` is not a share"))?;
        }
        let total: f64 = shares.iter().sum();
        if total <= 0.0 {
            return Err("the shares add up to zero".into());
        }
        Ok(Mix(shares.map(|s| s / total)))
    }
}

impl Mix {
    fn pick(&self, roll: f64) -> Kind {
        const KINDS: [Kind; 4] = [
            Kind::Sos,
            Kind::Inactivity,
            Kind::DeviceFault,
            Kind::Telemetry,
        ];
        let mut acc = 0.0;
        for (share, kind) in self.0.iter().zip(KINDS) {
            acc += share;
            if roll < acc {
                return kind;
            }
        }
        Kind::Telemetry
    }
}

pub struct Load {
    pub devices: usize,
    pub prefix: String,
    pub rate_per_sec: f64,
    pub duration: Duration,
    pub mix: Mix,
    pub ledger: Option<PathBuf>,
    pub drain: Duration,
    pub json: bool,
    /// Misbehave: duplicate publishes, malformed and oversize payloads,
    /// dropped connections, skewed device clocks.
    pub chaos: bool,
    /// Telemetry carries a wearable's readings: vitals and a position fix
    /// in turn (see [`reading`]).
    pub readings: bool,
}

/// Where `--readings` fixes fall: within 100 m of this point (Jing'an,
/// Shanghai), as a resident walking about their building.
pub const READINGS_HOME: (i32, i32) = (312_290_000, 1_214_550_000);

/// A healthy older adult's reading: vitals (heart rate 60–89, SpO2 94–98 %,
/// 36.0–36.9 °C) on even turns, a fix within 100 m of [`READINGS_HOME`]
/// (±10–29 m) on odd ones.
pub fn reading(rng: &mut impl Rng, turn: usize) -> Detail {
    if turn.is_multiple_of(2) {
        Detail::Vitals {
            heart_rate_bpm: rng.random_range(60..90),
            spo2_pct: rng.random_range(94..99),
            body_temp_dc: rng.random_range(360..370),
        }
    } else {
        // 1e-7 degrees of latitude is about 1.1 cm: ±6,000 is about ±67 m
        // north and ±57 m east, within 100 m of home.
        Detail::Location {
            lat_e7: READINGS_HOME.0 + rng.random_range(-6_000..6_000),
            lon_e7: READINGS_HOME.1 + rng.random_range(-6_000..6_000),
            accuracy_m: rng.random_range(10..30),
        }
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub devices: usize,
    pub sent: u64,
    pub stored: u64,
    pub rejected: u64,
    /// Dropped unsent because a device's outbox was full.
    pub dropped: u64,
    pub outstanding: u64,
    /// With --chaos: what was done to the gateway.
    pub chaos_duplicates: u64,
    pub chaos_malformed: u64,
    pub chaos_oversize: u64,
    pub chaos_disconnects: u64,
    pub elapsed_s: f64,
    pub stored_per_sec: f64,
    pub stored_latency_ms: Percentiles,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Latencies in microseconds, up to an hour, 3 significant digits.
fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn percentiles(histogram: &hdrhistogram::Histogram<u64>) -> Percentiles {
    if histogram.is_empty() {
        return Percentiles::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        p50: ms(histogram.value_at_quantile(0.5)),
        p90: ms(histogram.value_at_quantile(0.9)),
        p99: ms(histogram.value_at_quantile(0.99)),
        max: ms(histogram.max()),
    }
}

/// Devices started per 100 ms while ramping up (500 per second): the
/// embedded broker's cost per new subscription grows with the number of
/// topics it knows, so a gateway takes on many devices at a measured pace.
const RAMP_BATCH: usize = 50;

pub fn device_id(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:05}")
}

/// Resolves on SIGTERM or Ctrl-C: stop sending, then drain.
async fn stop_requested() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub async fn run(config: &SimConfig, load: Load) -> anyhow::Result<Summary> {
    let (ledger, ledger_task) = match &load.ledger {
        Some(path) => {
            let (writer, task) = LedgerWriter::create(path)?;
            (Some(writer), Some(task))
        }
        None => (None, None),
    };
    let (heard_tx, mut heard) = mpsc::unbounded_channel::<Heard>();
    // Seqs are unique per run: each device's counter starts past the start
    // time in microseconds.
    let base_seq = now_ms() as u64 * 1000;
    let epoch_ms = now_ms();
    let mut devices: Vec<(DeviceCore<RamSeqStore>, DeviceHandle)> =
        Vec::with_capacity(load.devices);
    for index in 0..load.devices {
        // Ramp up: devices power on over time, not in one instant.
        if index > 0 && index % RAMP_BATCH == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let id = device_id(&load.prefix, index);
        let handle = device::spawn(config, &id, load.json, heard_tx.clone())?;
        let store = RamSeqStore {
            value: Some(base_seq),
            writes: 0,
        };
        let mut core = DeviceCore::new(
            id.as_str()
                .try_into()
                .map_err(|_| anyhow::anyhow!("device id `{id}` is over 64 bytes"))?,
            store,
            80,
        );
        core.epoch_ms = epoch_ms;
        if load.chaos && index % 10 == 3 {
            // A device whose clock drifted an hour.
            core.clock_skew_ms = if index % 20 == 3 {
                3_600_000
            } else {
                -3_600_000
            };
        }
        devices.push((core, handle));
    }
    drop(heard_tx);
    let started = Instant::now();
    let mut summary = Summary {
        devices: load.devices,
        ..Default::default()
    };
    let mut latencies = latency_histogram();
    let mut on_heard = |heard: Heard, summary: &mut Summary| {
        let (name, device_id, seq) = match heard {
            Heard::Stored {
                device_id,
                seq,
                latency,
            } => {
                summary.stored += 1;
                summary.outstanding -= 1;
                latencies.saturating_record(latency.as_micros().max(1) as u64);
                ("stored", device_id, seq)
            }
            Heard::Rejected {
                device_id,
                seq,
                reason,
            } => {
                summary.rejected += 1;
                summary.outstanding -= 1;
                tracing::warn!(%device_id, seq, "rejected: {reason}");
                ("rejected", device_id, seq)
            }
            Heard::Dropped { device_id, seq } => {
                summary.dropped += 1;
                summary.outstanding -= 1;
                ("dropped", device_id, seq)
            }
            Heard::HelpIsComing { device_id, seq, .. } => ("acknowledged", device_id, seq),
        };
        if let Some(ledger) = &ledger {
            ledger.record(name, &device_id, seq, "");
        }
    };

    let stop = stop_requested();
    tokio::pin!(stop);
    let deadline = tokio::time::sleep(load.duration);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut budget = 0.0;
    let mut last_tick = Instant::now();
    let mut cursor = 0usize;
    let mut last_progress = Instant::now();
    // A bar for people at a terminal; plain lines for logs.
    let attended = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = indicatif::ProgressBar::new(load.duration.as_secs());
    if attended {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut rng = rand::rng();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = &mut deadline => break,
            Some(h) = heard.recv() => on_heard(h, &mut summary),
            _ = tick.tick() => {
                let now = Instant::now();
                budget += now.duration_since(last_tick).as_secs_f64() * load.rate_per_sec;
                last_tick = now;
                while budget >= 1.0 && !devices.is_empty() {
                    budget -= 1.0;
                    let index = cursor % devices.len();
                    cursor += 1;
                    let turn = (cursor - 1) / devices.len();
                    let kind = load.mix.pick(rng.random::<f64>());
                    let detail = if load.readings && kind == Kind::Telemetry {
                        reading(&mut rng, turn)
                    } else {
                        Detail::None
                    };
                    let (core, handle) = &mut devices[index];
                    let event = core.raise(kind, detail, 0, started.elapsed().as_millis() as u64);
                    if let Some(ledger) = &ledger {
                        ledger.record("sent", &event.device_id, event.seq, device::kind_name(kind));
                    }
                    let duplicate = event.clone();
                    if handle.submit.send(event).is_ok() {
                        summary.sent += 1;
                        summary.outstanding += 1;
                    }
                    if load.chaos {
                        use device::Mischief;
                        let roll = rng.random::<f64>();
                        let trick = if roll < 0.02 {
                            summary.chaos_duplicates += 1;
                            Some(Mischief::Duplicate(duplicate))
                        } else if roll < 0.03 {
                            summary.chaos_malformed += 1;
                            let len = rng.random_range(8..64);
                            Some(Mischief::Junk((0..len).map(|_| rng.random::<u8>() | 0x80).collect()))
                        } else if roll < 0.035 {
                            summary.chaos_oversize += 1;
                            Some(Mischief::Junk(vec![b'x'; 8 * 1024]))
                        } else if roll < 0.04 {
                            summary.chaos_disconnects += 1;
                            Some(Mischief::Disconnect)
                        } else {
                            None
                        };
                        if let Some(trick) = trick {
                            let _ = handle.mischief.send(trick);
                        }
                    }
                }
                bar.set_position(started.elapsed().as_secs());
                bar.set_message(format!("sent={} stored={} outstanding={}", summary.sent, summary.stored, summary.outstanding));
                if !attended && last_progress.elapsed() >= Duration::from_secs(5) {
                    last_progress = Instant::now();
                    eprintln!(
                        "progress: sent={} stored={} outstanding={} elapsed_s={:.0}",
                        summary.sent, summary.stored, summary.outstanding, started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    bar.finish_and_clear();
    // Stop sending; wait for every outstanding event to be settled.
    let drain_until = Instant::now() + load.drain;
    while summary.outstanding > 0 && Instant::now() < drain_until {
        match tokio::time::timeout_at(drain_until.into(), heard.recv()).await {
            Ok(Some(h)) => on_heard(h, &mut summary),
            Ok(None) | Err(_) => break,
        }
    }
    summary.elapsed_s = started.elapsed().as_secs_f64();
    summary.stored_per_sec = summary.stored as f64 / summary.elapsed_s.max(f64::EPSILON);
    summary.stored_latency_ms = percentiles(&latencies);
    futures::future::join_all(devices.into_iter().map(|(_, handle)| handle.close())).await;
    drop(ledger);
    if let Some(task) = ledger_task {
        task.await??;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_alternate_and_stay_healthy_and_near_home() {
        let mut rng = rand::rng();
        for turn in 0..200 {
            match reading(&mut rng, turn) {
                Detail::Vitals {
                    heart_rate_bpm,
                    spo2_pct,
                    body_temp_dc,
                } => {
                    assert_eq!(turn % 2, 0);
                    assert!((60..90).contains(&heart_rate_bpm));
                    assert!((94..99).contains(&spo2_pct));
                    assert!((360..370).contains(&body_temp_dc));
                }
                Detail::Location {
                    lat_e7,
                    lon_e7,
                    accuracy_m,
                } => {
                    assert_eq!(turn % 2, 1);
                    // Degrees ×1e7 → metres (latitude ~1.11 cm, longitude
                    // ~0.95 cm at 31° N).
                    let north = f64::from(lat_e7 - READINGS_HOME.0) * 0.0111;
                    let east = f64::from(lon_e7 - READINGS_HOME.1) * 0.0095;
                    assert!((north * north + east * east).sqrt() < 100.0);
                    assert!((10..30).contains(&accuracy_m));
                }
                other => panic!("turn {turn}: {other:?}"),
            }
        }
    }

    #[test]
    fn mix_parses_and_normalises() {
        let mix: Mix = "p0=1,p3=3".parse().unwrap();
        assert_eq!(mix.0, [0.25, 0.0, 0.0, 0.75]);
        assert_eq!(mix.pick(0.1), Kind::Sos);
        assert_eq!(mix.pick(0.5), Kind::Telemetry);
        assert!("p9=1".parse::<Mix>().is_err());
        assert!("p0=0".parse::<Mix>().is_err());
    }
}
