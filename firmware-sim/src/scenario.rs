//! `anxin-sim run --scenario FILE`: a household's story on a timeline. Each
//! device runs the device core's state machine (call button, wearable, room
//! sensor); steps feed it inputs at their time (a press, an accelerometer
//! trace, a vitals reading); whatever the machines raise goes out through
//! the device's outbox like real firmware.

use std::{collections::HashMap, path::Path, time::Duration};

use anxin_device_core::{
    Detail, DeviceCore, Kind,
    button::{ButtonConfig, ButtonEvent, CallButton},
    event::MeterKind,
    room_sensor::RoomSensor,
    seq::RamSeqStore,
    wearable::{FALL_TRACE_MG, SIT_DOWN_TRACE_MG, Wearable},
};
use anxin_proto::now_ms;
use serde::Deserialize;
use tokio::{sync::mpsc, time::Instant};

use crate::{
    config::SimConfig,
    device::{self, DeviceHandle, Heard},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub devices: Vec<ScenarioDevice>,
    pub steps: Vec<Step>,
    /// After the last step, how long to wait for every event's `stored`.
    #[serde(default = "default_settle")]
    pub settle_secs: u64,
}

fn default_settle() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioDevice {
    pub id: String,
    #[serde(rename = "type")]
    pub device_type: DeviceType,
    #[serde(default = "default_battery")]
    pub battery: u32,
    /// Added to the device's clock (a device whose RTC drifted).
    #[serde(default)]
    pub clock_skew_ms: i64,
    /// Room sensors: quiet this long raises INACTIVITY.
    #[serde(default = "default_window")]
    pub inactivity_window_ms: u64,
    /// Room sensors: movement is reported as activity at most this often.
    #[serde(default = "default_activity_report")]
    pub activity_report_ms: u64,
    /// Meters: what it counts ("water", "electricity", "door").
    #[serde(default)]
    pub meter: Option<String>,
}

fn default_activity_report() -> u64 {
    anxin_device_core::room_sensor::ACTIVITY_REPORT_MS
}

fn default_battery() -> u32 {
    80
}
fn default_window() -> u64 {
    3_600_000
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeviceType {
    CallButton,
    Wearable,
    RoomSensor,
    /// A household water or electricity meter, or a door sensor.
    Meter,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub at_ms: u64,
    pub device: String,
    pub action: Action,
    pub hr: Option<u32>,
    pub spo2: Option<u32>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    /// `fix`: the fix's accuracy in metres (default 10).
    pub accuracy: Option<u32>,
    /// `meter`: the meter's running total.
    pub total: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Call button: a short press (SOS).
    Press,
    /// Call button: held past the long-press time (cancels the last SOS).
    LongPress,
    TestCall,
    Heartbeat,
    /// Wearable: replay a recorded fall through the fall detector.
    Fall,
    /// Wearable: replay sitting down hard (must not be a fall).
    SitDown,
    /// Wearable: a heart-rate / SpO2 reading (`hr`, `spo2`).
    Vitals,
    /// Wearable: a location fix (`lat`, `lon`), sent along with a fall.
    Locate,
    /// Wearable: a periodic reading (`hr`, `spo2`) sent as telemetry,
    /// judged by the server against the wearer's limits.
    Reading,
    /// Wearable: a periodic position report (`lat`, `lon`, `accuracy`)
    /// sent as telemetry, judged against the wearer's safe zones.
    Fix,
    /// Meter: its running total (`total`).
    Meter,
    /// Room sensor: movement.
    Motion,
    /// Call button's green key, or the wearable's gesture: "I'm OK".
    Checkin,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, Box<toml::de::Error>),
    #[error("{0}: step {1}: {2}")]
    Invalid(String, usize, String),
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ScenarioError::Read(name.clone(), e))?;
        let scenario: Scenario =
            toml::from_str(&text).map_err(|e| ScenarioError::Parse(name.clone(), Box::new(e)))?;
        for (i, step) in scenario.steps.iter().enumerate() {
            let invalid = |why: String| ScenarioError::Invalid(name.clone(), i + 1, why);
            let device = scenario
                .devices
                .iter()
                .find(|d| d.id == step.device)
                .ok_or_else(|| invalid(format!("no device `{}` in [[devices]]", step.device)))?;
            let fits = match step.action {
                Action::Press | Action::LongPress | Action::TestCall => {
                    device.device_type == DeviceType::CallButton
                }
                Action::Fall
                | Action::SitDown
                | Action::Vitals
                | Action::Locate
                | Action::Reading
                | Action::Fix => device.device_type == DeviceType::Wearable,
                Action::Meter => device.device_type == DeviceType::Meter,
                Action::Motion => device.device_type == DeviceType::RoomSensor,
                Action::Checkin => matches!(
                    device.device_type,
                    DeviceType::CallButton | DeviceType::Wearable
                ),
                Action::Heartbeat => true,
            };
            if !fits {
                return Err(invalid(format!(
                    "{:?} is not something a {:?} does",
                    step.action, device.device_type
                )));
            }
            if matches!(step.action, Action::Vitals | Action::Reading)
                && (step.hr.is_none() || step.spo2.is_none())
            {
                return Err(invalid(format!("{:?} needs hr and spo2", step.action)));
            }
            if matches!(step.action, Action::Locate | Action::Fix)
                && (step.lat.is_none() || step.lon.is_none())
            {
                return Err(invalid(format!("{:?} needs lat and lon", step.action)));
            }
            if step.action == Action::Meter && step.total.is_none() {
                return Err(invalid("meter needs total".into()));
            }
        }
        for device in &scenario.devices {
            if device.device_type == DeviceType::Meter && meter_kind(device).is_none() {
                return Err(ScenarioError::Invalid(
                    name.clone(),
                    0,
                    format!(
                        "meter `{}` needs meter = \"water\", \"electricity\" or \"door\"",
                        device.id
                    ),
                ));
            }
        }
        Ok(scenario)
    }
}

fn meter_kind(device: &ScenarioDevice) -> Option<MeterKind> {
    match device.meter.as_deref() {
        Some("water") => Some(MeterKind::Water),
        Some("electricity") => Some(MeterKind::Electricity),
        Some("door") => Some(MeterKind::Door),
        _ => None,
    }
}

enum Machine {
    Button(CallButton),
    Wearable(Wearable),
    Room(RoomSensor),
    Meter(MeterKind),
}

struct SimDevice {
    core: DeviceCore<RamSeqStore>,
    machine: Machine,
    transport: DeviceHandle,
    last_sos: u64,
}

const LONG_PRESS_MS: u64 = 3_000;

#[derive(Debug, Default, serde::Serialize)]
pub struct Outcome {
    pub raised: u64,
    pub stored: u64,
    pub rejected: u64,
}

pub async fn run(config: &SimConfig, scenario: Scenario) -> anyhow::Result<Outcome> {
    println!("scenario \"{}\"", scenario.name);
    for line in scenario
        .description
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        eprintln!("  {line}");
    }
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    let base_seq = now_ms() as u64 * 1000;
    let epoch_ms = now_ms();
    let mut devices: HashMap<String, SimDevice> = HashMap::new();
    for spec in &scenario.devices {
        let mut core = DeviceCore::new(
            spec.id
                .as_str()
                .try_into()
                .map_err(|_| anyhow::anyhow!("device id `{}` is over 64 bytes", spec.id))?,
            RamSeqStore {
                value: Some(base_seq),
                writes: 0,
            },
            spec.battery,
        );
        core.epoch_ms = epoch_ms;
        core.clock_skew_ms = spec.clock_skew_ms;
        let machine = match spec.device_type {
            DeviceType::CallButton => Machine::Button(CallButton::new(
                ButtonConfig {
                    long_press_ms: LONG_PRESS_MS,
                    heartbeat_ms: 3_600_000,
                },
                0,
            )),
            DeviceType::Wearable => Machine::Wearable(Wearable::new()),
            DeviceType::RoomSensor => Machine::Room(
                RoomSensor::new(spec.inactivity_window_ms, 0)
                    .with_activity_reports(spec.activity_report_ms),
            ),
            DeviceType::Meter => Machine::Meter(meter_kind(spec).expect("checked at load")),
        };
        let transport = device::spawn(config, &spec.id, false, heard_tx.clone())?;
        devices.insert(
            spec.id.clone(),
            SimDevice {
                core,
                machine,
                transport,
                last_sos: 0,
            },
        );
    }
    drop(heard_tx);

    let mut steps: Vec<&Step> = scenario.steps.iter().collect();
    steps.sort_by_key(|s| s.at_ms);
    let start = Instant::now();
    let mut outcome = Outcome::default();
    let on_heard = |report: Heard, outcome: &mut Outcome| match report {
        Heard::Stored {
            device_id,
            seq,
            latency,
        } => {
            outcome.stored += 1;
            println!(
                "stored device={device_id} seq={seq} latency_ms={}",
                latency.as_millis()
            );
        }
        Heard::Rejected {
            device_id,
            seq,
            reason,
        } => {
            outcome.rejected += 1;
            println!("rejected device={device_id} seq={seq} reason=\"{reason}\"");
        }
        Heard::HelpIsComing {
            device_id,
            seq,
            alert_id,
            message,
        } => {
            println!(
                "acknowledged device={device_id} seq={seq} alert={alert_id} message=\"{message}\""
            );
        }
        Heard::Dropped { device_id, seq } => println!("dropped device={device_id} seq={seq}"),
    };

    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next_step = 0;
    loop {
        let now = start.elapsed().as_millis() as u64;
        while next_step < steps.len() && steps[next_step].at_ms <= now {
            let step = steps[next_step];
            next_step += 1;
            let device = devices.get_mut(&step.device).expect("validated at load");
            for (kind, detail, cancels) in apply(device, step) {
                raise(device, kind, detail, cancels, step.at_ms, &mut outcome);
            }
        }
        let settled = outcome.stored + outcome.rejected >= outcome.raised;
        if next_step >= steps.len() && settled {
            break;
        }
        if next_step >= steps.len()
            && now > steps.last().map_or(0, |s| s.at_ms) + scenario.settle_secs * 1000
        {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {
                let now = start.elapsed().as_millis() as u64;
                for device in devices.values_mut() {
                    let raised = match &mut device.machine {
                        Machine::Button(button) => match button.tick(now) {
                            Some(ButtonEvent::Raise(kind)) => Some((kind, 0)),
                            Some(ButtonEvent::CancelLast) => Some((Kind::Cancel, device.last_sos)),
                            None => None,
                        },
                        Machine::Room(room) => room.tick(now).map(|kind| (kind, 0)),
                        Machine::Wearable(_) | Machine::Meter(_) => None,
                    };
                    if let Some((kind, cancels)) = raised {
                        raise(device, kind, Detail::None, cancels, now, &mut outcome);
                    }
                }
            }
            Some(report) = heard.recv() => on_heard(report, &mut outcome),
        }
    }
    println!(
        "scenario done raised={} stored={} rejected={}",
        outcome.raised, outcome.stored, outcome.rejected
    );
    futures::future::join_all(devices.into_values().map(|d| d.transport.close())).await;
    Ok(outcome)
}

/// Feeds one step to its device's machine; returns what to raise.
fn apply(device: &mut SimDevice, step: &Step) -> Vec<(Kind, Detail, u64)> {
    let t = step.at_ms;
    let mut raised = Vec::new();
    match (&mut device.machine, step.action) {
        (_, Action::Heartbeat) => raised.push((Kind::Heartbeat, Detail::None, 0)),
        (Machine::Button(button), Action::Press) => {
            button.press(t);
            if let Some(ButtonEvent::Raise(kind)) = button.release(t + 150) {
                raised.push((kind, Detail::None, 0));
            }
        }
        (Machine::Button(button), Action::LongPress) => {
            button.press(t);
            if let Some(ButtonEvent::CancelLast) = button.tick(t + LONG_PRESS_MS) {
                raised.push((Kind::Cancel, Detail::None, device.last_sos));
            }
            button.release(t + LONG_PRESS_MS + 100);
        }
        (Machine::Button(button), Action::TestCall) => {
            if let ButtonEvent::Raise(kind) = button.test_call() {
                raised.push((kind, Detail::None, 0));
            }
        }
        (Machine::Wearable(wearable), Action::Fall | Action::SitDown) => {
            let trace: &[u32] = if step.action == Action::Fall {
                &FALL_TRACE_MG
            } else {
                &SIT_DOWN_TRACE_MG
            };
            for (i, mg) in trace.iter().enumerate() {
                if let Some((kind, detail)) = wearable.accel(t + i as u64 * 100, *mg) {
                    raised.push((kind, detail, 0));
                    if let Some(location) = wearable.location() {
                        raised.push((Kind::Telemetry, location, 0));
                    }
                }
            }
        }
        (Machine::Wearable(wearable), Action::Vitals) => {
            if let Some((kind, detail)) =
                wearable.vitals(step.hr.unwrap_or(0), step.spo2.unwrap_or(0))
            {
                raised.push((kind, detail, 0));
            }
        }
        (Machine::Wearable(wearable), Action::Reading) => {
            raised.push(with_none(
                wearable.reading(step.hr.unwrap_or(0), step.spo2.unwrap_or(0)),
            ));
        }
        (Machine::Wearable(wearable), Action::Fix) => {
            let e7 = |deg: f64| (deg * 1e7).round() as i32;
            raised.push(with_none(wearable.fix(
                e7(step.lat.unwrap_or(0.0)),
                e7(step.lon.unwrap_or(0.0)),
                step.accuracy.unwrap_or(10),
            )));
        }
        (Machine::Meter(kind), Action::Meter) => raised.push((
            Kind::Telemetry,
            Detail::Meter {
                kind: *kind,
                total: step.total.unwrap_or(0),
            },
            0,
        )),
        (Machine::Wearable(wearable), Action::Locate) => {
            let e7 = |deg: f64| (deg * 1e7).round() as i32;
            wearable.locate(e7(step.lat.unwrap_or(0.0)), e7(step.lon.unwrap_or(0.0)), 10);
        }
        (Machine::Room(room), Action::Motion) => {
            if let Some(kind) = room.motion(t) {
                raised.push((kind, Detail::None, 0));
            }
        }
        (Machine::Button(button), Action::Checkin) => {
            if let ButtonEvent::Raise(kind) = button.ok_press() {
                raised.push((kind, Detail::None, 0));
            }
        }
        (Machine::Wearable(wearable), Action::Checkin) => {
            let (kind, detail) = wearable.ok_gesture();
            raised.push((kind, detail, 0));
        }
        _ => {}
    }
    raised
}

fn with_none((kind, detail): (Kind, Detail)) -> (Kind, Detail, u64) {
    (kind, detail, 0)
}

fn raise(
    device: &mut SimDevice,
    kind: Kind,
    detail: Detail,
    cancels: u64,
    at_ms: u64,
    outcome: &mut Outcome,
) {
    let event = device.core.raise(kind, detail, cancels, at_ms);
    if kind == Kind::Sos {
        device.last_sos = event.seq;
    }
    outcome.raised += 1;
    println!(
        "raised device={} seq={} kind={} at_ms={at_ms}{}",
        event.device_id,
        event.seq,
        device::kind_name(kind),
        if cancels > 0 {
            format!(" cancels_seq={cancels}")
        } else {
            String::new()
        }
    );
    let _ = device.transport.submit.send(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!scenario.steps.is_empty(), "{}", path.display());
                loaded += 1;
            }
        }
        assert!(loaded >= 6, "{loaded} scenarios");
    }

    #[test]
    fn a_meter_needs_its_kind_and_a_total() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "name = \"m\"\n[[devices]]\nid = \"m-1\"\ntype = \"meter\"\n[[steps]]\nat_ms = 0\ndevice = \"m-1\"\naction = \"meter\"\ntotal = 5\n",
        )
        .unwrap();
        assert!(
            Scenario::load(&path)
                .unwrap_err()
                .to_string()
                .contains("water")
        );
    }
}
