//! The signals desk: the health and safety rules judged where the
//! resident's context is — on the server, on the event path. A gateway's
//! batch brings readings (vital signs, a wearable's fixes, a meter's
//! totals); each is judged against the resident's limits, zones and meter
//! rules and its rule's stored state; a rule that fires commits its own
//! event, keyed by the episode (`domain::vitals::episode_seq`, …), so a
//! kill -9, a resent batch or three replicas judging the same readings
//! raise one alert. The states are saved after the raises are committed:
//! a crash in between judges the readings again and finds the raise there.
//!
//! The household meters' silence is judged by a timer (`judge_silence`,
//! from `tasks/judges.rs`), against the same stored state.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anxin_proto::{
    DeviceEvent, EventKind,
    v1::{
        AlertNote, Location, Meter, Position, Resident, UplinkEvent, VitalDay, VitalLimit, Vitals,
        device_event::Detail,
    },
};

use crate::{
    desks::alerts::AlertDesk,
    domain::{
        calendar::local_day,
        incidents::Decision,
        meters::{self, MeterWatch},
        signals::{METER, Stored, meter_source, vitals_source, zone_source},
        vitals::{self, Episode, Level, Sign, Step},
        zones::{self, ZoneStep, ZoneWatch},
    },
    metrics as m,
    store::{Committed, StoreError, directory::resident_origin},
};

/// What a reading measured.
#[derive(Debug, Clone)]
pub enum Measure {
    Vitals(Vitals),
    Fix(Location),
    Meter(Meter),
}

/// One reading of a resident's device, as a gateway's batch brought it.
#[derive(Debug, Clone)]
pub struct Reading {
    pub resident_id: String,
    pub device_id: String,
    pub seq: u64,
    /// When it was taken: the gateway's stored time (a backlog after an
    /// outage is judged as it happened), else the server's receipt.
    pub at_ms: i64,
    pub measure: Measure,
}

impl Reading {
    /// The reading an event carries, if any (telemetry, a heartbeat with a
    /// fix, a meter's report).
    pub fn of(resident_id: &str, uplink: &UplinkEvent, received_ms: i64) -> Option<Reading> {
        let event = uplink.event.as_ref()?;
        if resident_id.is_empty() {
            return None;
        }
        let measure = match &event.detail {
            Some(Detail::Vitals(v)) => Measure::Vitals(*v),
            Some(Detail::Location(l)) => Measure::Fix(l.clone()),
            Some(Detail::Meter(meter)) => Measure::Meter(meter.clone()),
            _ => return None,
        };
        Some(Reading {
            resident_id: resident_id.to_string(),
            device_id: event.device_id.clone(),
            seq: event.seq,
            at_ms: if (1..=received_ms).contains(&uplink.stored_ms) {
                uplink.stored_ms
            } else {
                received_ms
            },
            measure,
        })
    }
}

/// An episode that ended (readings back inside, the resident back in a
/// zone): noted on its alert once the batch is durable.
#[derive(Debug, Clone)]
pub struct Returned {
    pub resident_id: String,
    pub source: String,
    pub note: String,
}

/// A rule's event: committed like a device's.
struct Raise {
    uplink: UplinkEvent,
    resident: Arc<Context>,
    rule: &'static str,
    device_kind: String,
    position: Option<Position>,
    track: Vec<Position>,
}

/// What the rules need of a resident.
struct Context {
    resident: Resident,
    community_limits: Vec<VitalLimit>,
}

/// A resident's context (None: no such resident), the directory epoch and
/// when it was read.
type Cached = (Option<Arc<Context>>, u64, Instant);

/// The alerts a batch's raises changed, and the episodes it ended.
pub type Taken = (Vec<(anxin_proto::v1::Alert, Decision)>, Vec<Returned>);

const CONTEXT_TTL: Duration = Duration::from_secs(10);

/// The rules, with the residents' context kept a while (a directory change
/// reads it again).
pub struct Signals {
    desk: AlertDesk,
    residents: Mutex<HashMap<String, Cached>>,
}

/// The states a batch read, decoded per rule.
#[derive(Default)]
struct States {
    vitals: HashMap<String, Stored<Episode>>,
    zones: HashMap<String, Stored<ZoneWatch>>,
    meters: HashMap<String, Stored<MeterWatch>>,
}

impl Signals {
    pub fn new(desk: AlertDesk) -> Self {
        Self {
            desk,
            residents: Mutex::new(HashMap::new()),
        }
    }

    fn context(&self, resident_id: &str) -> Result<Option<Arc<Context>>, StoreError> {
        let epoch = self.desk.gateways().directory_epoch();
        if let Some((context, at_epoch, at)) = self.residents.lock().unwrap().get(resident_id)
            && *at_epoch == epoch
            && at.elapsed() < CONTEXT_TTL
        {
            return Ok(context.clone());
        }
        let store = self.desk.store();
        let context = match store.resident(resident_id)? {
            Some(resident) => {
                let community_limits = store
                    .place(&resident.community_id)?
                    .map(|p| p.vital_limits)
                    .unwrap_or_default();
                Some(Arc::new(Context {
                    resident,
                    community_limits,
                }))
            }
            None => None,
        };
        let mut residents = self.residents.lock().unwrap();
        if residents.len() > 100_000 {
            residents.clear();
        }
        residents.insert(
            resident_id.to_string(),
            (context.clone(), epoch, Instant::now()),
        );
        Ok(context)
    }

    /// Judges a batch's readings: raises committed (not yet durable; the
    /// caller flushes), states and daily summaries saved. Returns the
    /// alerts changed and the episodes that ended.
    pub fn take(&self, mut readings: Vec<Reading>, received_ms: i64) -> Result<Taken, StoreError> {
        let rules = self.desk.policy().signals;
        if !rules.enabled || readings.is_empty() {
            return Ok(Default::default());
        }
        // Each device's readings in the order it took them.
        readings.sort_by(|a, b| a.device_id.cmp(&b.device_id).then(a.seq.cmp(&b.seq)));
        let mut contexts = HashMap::new();
        let mut keys = Vec::new();
        for r in &readings {
            if !contexts.contains_key(&r.resident_id) {
                contexts.insert(r.resident_id.clone(), self.context(&r.resident_id)?);
            }
            let Some(Some(ctx)) = contexts.get(&r.resident_id) else {
                continue;
            };
            match &r.measure {
                Measure::Vitals(v) => keys.extend(
                    vitals::readings(v)
                        .into_iter()
                        .map(|(sign, _)| vitals_source(&r.resident_id, sign.name())),
                ),
                Measure::Fix(_) if !ctx.resident.safe_zones.is_empty() => {
                    keys.push(zone_source(&r.resident_id))
                }
                Measure::Meter(meter) => keys.push(meter_source(&r.resident_id, &meter.kind)),
                Measure::Fix(_) => {}
            }
        }
        keys.sort();
        keys.dedup();
        let stored: HashMap<String, Option<Vec<u8>>> = keys
            .iter()
            .cloned()
            .zip(self.desk.store().signal_states(&keys)?)
            .collect();
        let raw = |key: &str| stored.get(key).and_then(|b| b.as_deref());
        let mut states = States::default();
        let mut days: HashMap<(String, &'static str, i32), VitalDay> = HashMap::new();
        let mut raises = Vec::new();
        let mut returned = Vec::new();
        let offset = self.desk.policy().utc_offset_minutes;
        for r in &readings {
            let Some(Some(ctx)) = contexts.get(&r.resident_id) else {
                continue;
            };
            let resident = &ctx.resident;
            match &r.measure {
                Measure::Vitals(v) => {
                    for (sign, value) in vitals::readings(v) {
                        let key = vitals_source(&resident.id, sign.name());
                        let st = states
                            .vitals
                            .entry(key.clone())
                            .or_insert_with(|| Stored::decode(raw(&key)));
                        if !st.first_time(&r.device_id, r.seq) {
                            continue;
                        }
                        metrics::counter!(m::SIGNAL_READINGS, "kind" => "vitals").increment(1);
                        let day = local_day(r.at_ms, offset);
                        vitals::fold_day(
                            days.entry((resident.id.clone(), sign.name(), day))
                                .or_insert_with(|| VitalDay {
                                    resident_id: resident.id.clone(),
                                    sign: sign.name().into(),
                                    day,
                                    ..Default::default()
                                }),
                            value,
                        );
                        let bounds = vitals::limits_for(
                            sign,
                            &resident.conditions,
                            &ctx.community_limits,
                            &resident.vital_limits,
                        );
                        match vitals::judge(
                            &mut st.state,
                            sign,
                            value,
                            r.at_ms,
                            bounds,
                            rules.episode,
                        ) {
                            Step::Nothing => {}
                            Step::Raise { level, seq, note } => {
                                raises.push(self.raise_vitals(ctx, r, key, level, seq, note, sign)?)
                            }
                            Step::Cleared { note } => returned.push(Returned {
                                resident_id: resident.id.clone(),
                                source: key,
                                note,
                            }),
                        }
                    }
                }
                Measure::Fix(fix) => {
                    if resident.safe_zones.is_empty() {
                        continue;
                    }
                    let key = zone_source(&resident.id);
                    let st = states
                        .zones
                        .entry(key.clone())
                        .or_insert_with(|| Stored::decode(raw(&key)));
                    if !st.first_time(&r.device_id, r.seq) {
                        continue;
                    }
                    metrics::counter!(m::SIGNAL_READINGS, "kind" => "fix").increment(1);
                    let applying: Vec<_> = resident
                        .safe_zones
                        .iter()
                        .filter(|z| zones::applies(z, r.at_ms, offset))
                        .collect();
                    match zones::judge(&mut st.state, fix, r.at_ms, &applying, rules.zone_fixes) {
                        ZoneStep::Nothing => {}
                        ZoneStep::Raise { seq, note } => {
                            let fixes = st.state.as_ref().map(|w| w.fixes.clone());
                            let raise = self.raise_zone(ctx, r, key, (seq, note), fix, fixes)?;
                            raises.push(Raise {
                                // Stamped as the intake stamps the batch's
                                // positions: the raising fix is the alert's
                                // position, not added to its track again.
                                position: Some(Position {
                                    location: Some(fix.clone()),
                                    at_ms: received_ms,
                                    device_id: r.device_id.clone(),
                                    source: "event".into(),
                                }),
                                ..raise
                            });
                        }
                        ZoneStep::Returned { note } => returned.push(Returned {
                            resident_id: resident.id.clone(),
                            source: key,
                            note,
                        }),
                    }
                }
                Measure::Meter(meter) => {
                    let key = meter_source(&resident.id, &meter.kind);
                    let rule = resident.meter_rules.iter().find(|m| m.kind == meter.kind);
                    let st = states
                        .meters
                        .entry(key.clone())
                        .or_insert_with(|| Stored::decode(raw(&key)));
                    if !st.first_time(&r.device_id, r.seq) {
                        continue;
                    }
                    metrics::counter!(m::SIGNAL_READINGS, "kind" => "meter").increment(1);
                    let day = local_day(r.at_ms, offset);
                    if let Some((seq, note)) = meters::reading(
                        &mut st.state,
                        &resident.id,
                        &meter.kind,
                        meter.total,
                        r.at_ms,
                        day,
                        rule,
                    ) {
                        raises.push(Raise {
                            uplink: server_event(
                                &key,
                                seq,
                                EventKind::HouseholdUnusual,
                                r.at_ms,
                                note,
                            ),
                            resident: ctx.clone(),
                            rule: "meter_unusual",
                            device_kind: "meter".into(),
                            position: None,
                            track: Vec::new(),
                        });
                    }
                }
            }
        }
        let changed = self.commit(raises, received_ms)?;
        let mut save: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        save.extend(
            states
                .vitals
                .iter()
                .map(|(k, s)| (k.clone(), Some(s.encode()))),
        );
        save.extend(
            states
                .zones
                .iter()
                .map(|(k, s)| (k.clone(), Some(s.encode()))),
        );
        save.extend(
            states
                .meters
                .iter()
                .map(|(k, s)| (k.clone(), Some(s.encode()))),
        );
        let days: Vec<VitalDay> = days.into_values().collect();
        self.desk.store().save_signals(&save, &days)?;
        for r in &returned {
            metrics::counter!(m::SIGNAL_CLEARS, "rule" => rule_of(&r.source)).increment(1);
        }
        Ok((changed, returned))
    }

    #[allow(clippy::too_many_arguments)]
    fn raise_vitals(
        &self,
        ctx: &Arc<Context>,
        r: &Reading,
        key: String,
        level: Level,
        seq: u64,
        note: String,
        sign: Sign,
    ) -> Result<Raise, StoreError> {
        let store = self.desk.store();
        let (kind, rule) = match level {
            Level::Critical => (EventKind::VitalsCritical, "vitals_critical"),
            _ => (EventKind::VitalsWarning, "vitals_warning"),
        };
        tracing::info!(resident_id = %ctx.resident.id, sign = sign.name(), level = ?level, "vital-sign limit crossed");
        Ok(Raise {
            uplink: server_event(&key, seq, kind, r.at_ms, note),
            resident: ctx.clone(),
            rule,
            device_kind: device_kind(store, &r.device_id)?,
            position: store.last_position(&r.device_id)?.map(|p| Position {
                source: "last_known".into(),
                ..p
            }),
            track: Vec::new(),
        })
    }

    fn raise_zone(
        &self,
        ctx: &Arc<Context>,
        r: &Reading,
        key: String,
        (seq, note): (u64, String),
        fix: &Location,
        fixes: Option<Vec<(i64, i32, i32, u32)>>,
    ) -> Result<Raise, StoreError> {
        tracing::info!(resident_id = %ctx.resident.id, "safe zone left");
        let position = |at_ms: i64, lat_e7: i32, lon_e7: i32, accuracy_m: u32| Position {
            location: Some(Location {
                lat_e7,
                lon_e7,
                accuracy_m,
                room: String::new(),
            }),
            at_ms,
            device_id: r.device_id.clone(),
            source: "event".into(),
        };
        let track: Vec<Position> = fixes
            .unwrap_or_default()
            .into_iter()
            .map(|(at, lat, lon, acc)| position(at, lat, lon, acc))
            .collect();
        Ok(Raise {
            uplink: server_event(&key, seq, EventKind::LeftSafeZone, r.at_ms, note),
            resident: ctx.clone(),
            rule: "zone",
            device_kind: device_kind(self.desk.store(), &r.device_id)?,
            position: Some(position(r.at_ms, fix.lat_e7, fix.lon_e7, fix.accuracy_m)),
            track,
        })
    }

    /// Commits the rules' events as a device's are: the same identity
    /// twice is a duplicate, and changes nothing.
    fn commit(
        &self,
        raises: Vec<Raise>,
        received_ms: i64,
    ) -> Result<Vec<(anxin_proto::v1::Alert, Decision)>, StoreError> {
        let store = self.desk.store();
        let mut changed = Vec::new();
        for raise in raises {
            let origin = crate::domain::incidents::Origin {
                position: raise.position,
                track: raise.track,
                ..resident_origin(store, raise.resident.resident.clone(), raise.device_kind)?
            };
            let committed = store.commit_event(
                "",
                &raise.uplink,
                received_ms,
                &origin,
                &self.desk.policy().incidents,
            )?;
            if let Committed::New { alert } = committed {
                metrics::counter!(m::SIGNAL_RAISES, "rule" => raise.rule).increment(1);
                if let Some(alert) = alert {
                    changed.push(*alert);
                }
            }
        }
        Ok(changed)
    }

    /// The household meters whose silence is due: each raised once (the
    /// identity is the last use), then made durable and routed.
    pub async fn judge_silence(&self, now_ms: i64) -> Result<usize, StoreError> {
        if !self.desk.policy().signals.enabled {
            return Ok(0);
        }
        let store = self.desk.store();
        let mut raised = 0;
        for (key, bytes) in store.signal_states_under(METER)? {
            let mut st: Stored<MeterWatch> = Stored::decode(Some(&bytes));
            let Some(watch) = st.state.as_mut() else {
                continue;
            };
            let Some((seq, note)) = meters::silence_due(watch, now_ms) else {
                continue;
            };
            let Some(ctx) = self.context(&watch.resident_id)? else {
                continue;
            };
            watch.silent_raised_for = watch.last_use_ms;
            let changed = self.commit(
                vec![Raise {
                    uplink: server_event(&key, seq, EventKind::HouseholdSilent, now_ms, note),
                    resident: ctx,
                    rule: "meter_silent",
                    device_kind: "meter".into(),
                    position: None,
                    track: Vec::new(),
                }],
                now_ms,
            )?;
            store.save_signals(&[(key, Some(st.encode()))], &[])?;
            store.flush().await?;
            for (alert, decision) in changed {
                self.desk.raised(alert, decision).await;
            }
            raised += 1;
        }
        Ok(raised)
    }
}

fn rule_of(source: &str) -> &'static str {
    if source.starts_with(crate::domain::signals::ZONE) {
        "zone"
    } else {
        "vitals"
    }
}

fn device_kind(store: &crate::store::Store, device_id: &str) -> Result<String, StoreError> {
    Ok(store
        .device(device_id)?
        .map_or_else(|| "wearable".into(), |d| d.kind))
}

fn server_event(source: &str, seq: u64, kind: EventKind, at_ms: i64, note: String) -> UplinkEvent {
    UplinkEvent {
        event: Some(DeviceEvent {
            device_id: source.to_string(),
            seq,
            kind: kind as i32,
            device_time_ms: at_ms,
            note,
            ..Default::default()
        }),
        stored_ms: at_ms,
    }
}

/// Episodes that ended, noted on their open alerts (once the batch that
/// ended them is durable).
pub async fn note_returned(desk: &AlertDesk, returned: &[Returned]) {
    let open = match desk.store().alerts(&crate::domain::lifecycle::OPEN_STATES) {
        Ok(open) => open,
        Err(err) => {
            tracing::warn!(error = %err, "reading open alerts to note a return failed");
            return;
        }
    };
    let mut changed = false;
    for r in returned {
        for alert in open.iter().filter(|a| {
            a.resident_id == r.resident_id && a.events.iter().any(|e| e.device_id == r.source)
        }) {
            let result = desk.store().update_alert(&alert.id, |a| {
                a.notes.push(AlertNote {
                    at_ms: anxin_proto::now_ms(),
                    by: "system".into(),
                    text: r.note.clone(),
                });
                Ok(crate::store::Change::default())
            });
            match result {
                Ok((alert, _)) => {
                    changed = true;
                    desk.announce(alert);
                }
                Err(err) => {
                    tracing::warn!(alert_id = %alert.id, error = %err, "noting a return on an alert failed")
                }
            }
        }
    }
    if changed && let Err(err) = desk.store().flush().await {
        tracing::warn!(error = %err, "flushing returns noted on alerts failed");
    }
}
