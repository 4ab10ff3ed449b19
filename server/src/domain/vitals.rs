//! Vital-sign limits and their episodes: which limits hold for a resident
//! (built-in default, then their conditions, then their community, then
//! their own), how a reading stands against them, and when a run of
//! readings outside raises an alert — once per episode, a warning first
//! (P1), the critical step later (P0) on the same alert, and nothing more
//! until the readings have been back inside for a while.
//!
//! Pure: the episode is a value the caller stores between readings.

use anxin_proto::v1::{VitalDay, VitalLimit, Vitals};
use serde::{Deserialize, Serialize};

/// The signs a device may report, with their names in limits and days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sign {
    HeartRate,
    Spo2,
    BodyTemp,
    Systolic,
    Diastolic,
    Glucose,
}

impl Sign {
    pub const ALL: [Sign; 6] = [
        Sign::HeartRate,
        Sign::Spo2,
        Sign::BodyTemp,
        Sign::Systolic,
        Sign::Diastolic,
        Sign::Glucose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Sign::HeartRate => "heart_rate",
            Sign::Spo2 => "spo2",
            Sign::BodyTemp => "body_temp",
            Sign::Systolic => "systolic",
            Sign::Diastolic => "diastolic",
            Sign::Glucose => "glucose",
        }
    }

    pub fn parse(name: &str) -> Option<Sign> {
        Sign::ALL.into_iter().find(|s| s.name() == name)
    }

    /// How a person reads it: "SpO2 87 %".
    pub fn describe(self, value: f64) -> String {
        match self {
            Sign::HeartRate => format!("heart rate {value:.0} bpm"),
            Sign::Spo2 => format!("SpO2 {value:.0} %"),
            Sign::BodyTemp => format!("body temperature {value:.1} °C"),
            Sign::Systolic => format!("systolic pressure {value:.0} mmHg"),
            Sign::Diastolic => format!("diastolic pressure {value:.0} mmHg"),
            Sign::Glucose => format!("blood glucose {value:.1} mmol/L"),
        }
    }
}

/// The readings a device's `Vitals` carries (0 = not measured).
pub fn readings(vitals: &Vitals) -> Vec<(Sign, f64)> {
    [
        (Sign::HeartRate, f64::from(vitals.heart_rate_bpm)),
        (Sign::Spo2, f64::from(vitals.spo2_pct)),
        (Sign::BodyTemp, f64::from(vitals.body_temp_dc) / 10.0),
        (Sign::Systolic, f64::from(vitals.systolic_mmhg)),
        (Sign::Diastolic, f64::from(vitals.diastolic_mmhg)),
        (Sign::Glucose, f64::from(vitals.glucose_dmmol) / 10.0),
    ]
    .into_iter()
    .filter(|(_, v)| *v > 0.0)
    .collect()
}

/// One sign's limits; 0 = no bound on that side at that level.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bounds {
    pub warning_below: f64,
    pub warning_above: f64,
    pub critical_below: f64,
    pub critical_above: f64,
}

impl Bounds {
    /// Each bound `limit` sets replaces this one's.
    fn over(mut self, limit: &VitalLimit) -> Self {
        for (mine, theirs) in [
            (&mut self.warning_below, limit.warning_below),
            (&mut self.warning_above, limit.warning_above),
            (&mut self.critical_below, limit.critical_below),
            (&mut self.critical_above, limit.critical_above),
        ] {
            if theirs > 0.0 {
                *mine = theirs;
            }
        }
        self
    }

    pub fn as_limit(self, sign: Sign) -> VitalLimit {
        VitalLimit {
            sign: sign.name().into(),
            warning_below: self.warning_below,
            warning_above: self.warning_above,
            critical_below: self.critical_below,
            critical_above: self.critical_above,
        }
    }
}

const fn bounds(wb: f64, wa: f64, cb: f64, ca: f64) -> Bounds {
    Bounds {
        warning_below: wb,
        warning_above: wa,
        critical_below: cb,
        critical_above: ca,
    }
}

/// The built-in limits for an older adult at rest (docs/dispatch.md says
/// where each comes from).
pub fn default_bounds(sign: Sign) -> Bounds {
    match sign {
        Sign::HeartRate => bounds(50.0, 110.0, 40.0, 130.0),
        Sign::Spo2 => bounds(92.0, 0.0, 88.0, 0.0),
        Sign::BodyTemp => bounds(35.5, 37.8, 35.0, 39.5),
        Sign::Systolic => bounds(90.0, 160.0, 80.0, 180.0),
        Sign::Diastolic => bounds(50.0, 100.0, 40.0, 110.0),
        Sign::Glucose => bounds(3.9, 13.9, 3.0, 16.7),
    }
}

/// Conditions a resident may have that move the defaults.
pub const CONDITIONS: [&str; 3] = ["copd", "diabetes", "hypertension"];

/// What a condition changes: a COPD patient lives at a lower SpO2 (target
/// 88–92 %), a diabetic's glucose runs higher, a treated hypertensive's
/// pressure sits higher without being an emergency.
fn condition_limit(condition: &str, sign: Sign) -> Option<VitalLimit> {
    let b = match (condition, sign) {
        ("copd", Sign::Spo2) => bounds(88.0, 0.0, 85.0, 0.0),
        ("diabetes", Sign::Glucose) => bounds(3.9, 16.7, 3.0, 22.2),
        ("hypertension", Sign::Systolic) => bounds(90.0, 170.0, 80.0, 180.0),
        _ => return None,
    };
    Some(b.as_limit(sign))
}

/// The limits that hold for one sign of one resident.
pub fn limits_for(
    sign: Sign,
    conditions: &[String],
    community: &[VitalLimit],
    own: &[VitalLimit],
) -> Bounds {
    let mut b = default_bounds(sign);
    for condition in conditions {
        if let Some(limit) = condition_limit(condition, sign) {
            b = b.over(&limit);
        }
    }
    for limit in community.iter().chain(own) {
        if limit.sign == sign.name() {
            b = b.over(limit);
        }
    }
    b
}

/// Limits as written: known signs, finite non-negative bounds, a critical
/// bound beyond its warning bound, below under above.
pub fn check_limits(limits: &[VitalLimit]) -> Result<(), String> {
    for limit in limits {
        let Some(sign) = Sign::parse(&limit.sign) else {
            return Err(format!(
                "vital limit sign `{}` is not one of {}",
                limit.sign,
                Sign::ALL.map(Sign::name).join(", ")
            ));
        };
        let l = limit;
        let all = [
            l.warning_below,
            l.warning_above,
            l.critical_below,
            l.critical_above,
        ];
        if all.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(format!("vital limit {}: bounds must be 0 or more", l.sign));
        }
        let b = default_bounds(sign).over(l);
        if b.critical_below > 0.0 && b.warning_below > 0.0 && b.critical_below > b.warning_below {
            return Err(format!(
                "vital limit {}: critical_below {} must not be above warning_below {}",
                l.sign, b.critical_below, b.warning_below
            ));
        }
        if b.critical_above > 0.0 && b.warning_above > 0.0 && b.critical_above < b.warning_above {
            return Err(format!(
                "vital limit {}: critical_above {} must not be below warning_above {}",
                l.sign, b.critical_above, b.warning_above
            ));
        }
        if b.warning_above > 0.0 && b.warning_below >= b.warning_above {
            return Err(format!(
                "vital limit {}: warning_below {} must be under warning_above {}",
                l.sign, b.warning_below, b.warning_above
            ));
        }
    }
    Ok(())
}

pub fn check_conditions(conditions: &[String]) -> Result<(), String> {
    match conditions
        .iter()
        .find(|c| !CONDITIONS.contains(&c.as_str()))
    {
        Some(c) => Err(format!(
            "condition `{c}` is not one of {}",
            CONDITIONS.join(", ")
        )),
        None => Ok(()),
    }
}

/// How a reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    Normal = 0,
    Warning = 1,
    Critical = 2,
}

pub fn level(b: Bounds, value: f64) -> Level {
    let below = |bound: f64| bound > 0.0 && value < bound;
    let above = |bound: f64| bound > 0.0 && value > bound;
    if below(b.critical_below) || above(b.critical_above) {
        Level::Critical
    } else if below(b.warning_below) || above(b.warning_above) {
        Level::Warning
    } else {
        Level::Normal
    }
}

/// How many readings, and for how long, make or end an episode.
#[derive(Debug, Clone, Copy)]
pub struct EpisodeRules {
    /// Consecutive readings outside that raise…
    pub readings: u32,
    /// …or this long outside without a reading back inside.
    pub out_ms: i64,
    /// Consecutive readings back inside that end the episode.
    pub clear_readings: u32,
}

/// A resident's run of readings of one sign outside its limits, stored
/// between readings (`vitals/{resident}/{sign}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// The first reading outside: the episode's identity.
    pub start_ms: i64,
    /// Consecutive readings outside, and critical, and since when critical.
    pub out: u32,
    pub critical: u32,
    pub critical_since_ms: i64,
    /// The highest level raised so far (0: none yet).
    pub raised: u8,
    /// Consecutive readings back inside since a raise.
    pub inside: u32,
    /// The latest readings (time, value), for the alert's note.
    pub recent: Vec<(i64, f64)>,
}

const RECENT: usize = 6;

/// What a reading did.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Nothing,
    /// Raise (or step up) the episode's alert: its identity's seq is
    /// `start_ms << 2 | level`.
    Raise {
        level: Level,
        seq: u64,
        note: String,
    },
    /// Back inside long enough: the episode is over.
    Cleared {
        note: String,
    },
}

/// The identity a raise of an episode takes: `episode << 2 | level` (the
/// incident rules attach a later level to the same alert by it).
pub fn episode_seq(start_ms: i64, level: u8) -> u64 {
    ((start_ms.max(0) as u64) << 2) | u64::from(level)
}

fn recent_text(sign: Sign, recent: &[(i64, f64)]) -> String {
    recent
        .iter()
        .map(|(_, v)| match sign {
            Sign::BodyTemp | Sign::Glucose => format!("{v:.1}"),
            _ => format!("{v:.0}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Judges one reading against the resident's limits; `episode` is the
/// stored state (None: no episode open) and is updated in place.
pub fn judge(
    episode: &mut Option<Episode>,
    sign: Sign,
    value: f64,
    at_ms: i64,
    b: Bounds,
    rules: EpisodeRules,
) -> Step {
    let now = level(b, value);
    if now == Level::Normal {
        let Some(e) = episode.as_mut() else {
            return Step::Nothing;
        };
        if e.raised == 0 {
            // Not consecutive any more: the run starts again.
            *episode = None;
            return Step::Nothing;
        }
        e.inside += 1;
        e.out = 0;
        e.critical = 0;
        if e.inside >= rules.clear_readings.max(1) {
            let note = format!(
                "{} back within limits ({} readings in a row, latest {}).",
                capitalised(sign.describe(value)),
                e.inside,
                sign.describe(value)
            );
            *episode = None;
            return Step::Cleared { note };
        }
        return Step::Nothing;
    }
    let e = episode.get_or_insert_with(|| Episode {
        start_ms: at_ms,
        ..Default::default()
    });
    e.inside = 0;
    e.out += 1;
    if now == Level::Critical {
        if e.critical == 0 {
            e.critical_since_ms = at_ms;
        }
        e.critical += 1;
    } else {
        e.critical = 0;
    }
    e.recent.push((at_ms, value));
    let excess = e.recent.len().saturating_sub(RECENT);
    e.recent.drain(..excess);
    let long =
        |count: u32, since: i64| count >= rules.readings.max(1) || at_ms - since >= rules.out_ms;
    let due = if e.critical > 0 && long(e.critical, e.critical_since_ms) {
        Level::Critical
    } else if long(e.out, e.start_ms) {
        Level::Warning
    } else {
        Level::Normal
    };
    if due == Level::Normal || due as u8 <= e.raised {
        return Step::Nothing;
    }
    e.raised = due as u8;
    let limit = match due {
        Level::Critical if value < b.critical_below => {
            format!("critical limit {}", b.critical_below)
        }
        Level::Critical => format!("critical limit {}", b.critical_above),
        _ if value < b.warning_below => format!("warning limit {}", b.warning_below),
        _ => format!("warning limit {}", b.warning_above),
    };
    let note = format!(
        "{} outside its {limit}: latest readings {}.",
        capitalised(sign.describe(value)),
        recent_text(sign, &e.recent)
    );
    Step::Raise {
        level: due,
        seq: episode_seq(e.start_ms, e.raised),
        note,
    }
}

fn capitalised(text: String) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => text,
    }
}

/// A day's summary with one more reading in it.
pub fn fold_day(day: &mut VitalDay, value: f64) {
    if day.count == 0 {
        day.min = value;
        day.max = value;
    } else {
        day.min = day.min.min(value);
        day.max = day.max.max(value);
    }
    day.sum += value;
    day.count += 1;
}

/// Two summaries of the same resident, sign and day as one.
pub fn merge_days(into: &mut VitalDay, other: &VitalDay) {
    if other.count == 0 {
        return;
    }
    if into.count == 0 {
        *into = other.clone();
        return;
    }
    into.min = into.min.min(other.min);
    into.max = into.max.max(other.max);
    into.sum += other.sum;
    into.count += other.count;
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: EpisodeRules = EpisodeRules {
        readings: 3,
        out_ms: 300_000,
        clear_readings: 3,
    };

    fn run(values: &[f64]) -> (Vec<Step>, Option<Episode>) {
        let mut episode = None;
        let b = limits_for(Sign::Spo2, &[], &[], &[]);
        let steps = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                judge(
                    &mut episode,
                    Sign::Spo2,
                    *v,
                    1_000 + i as i64 * 30_000,
                    b,
                    RULES,
                )
            })
            .collect();
        (steps, episode)
    }

    #[test]
    fn a_drifting_spo2_warns_once_then_steps_up_once_then_clears() {
        let (steps, episode) = run(&[
            96.0, 95.0, 91.0, 91.0, 90.0, 90.0, 89.0, 87.0, 86.0, 86.0, 86.0, 87.0, 95.0, 96.0,
            96.0,
        ]);
        let raises: Vec<(usize, Level, u64)> = steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Step::Raise { level, seq, .. } => Some((i, *level, *seq)),
                _ => None,
            })
            .collect();
        // Out from reading 2 on: the warning at the third reading out, the
        // critical step at the third critical reading; one episode.
        assert_eq!(raises.len(), 2, "{steps:?}");
        assert_eq!((raises[0].0, raises[0].1), (4, Level::Warning));
        assert_eq!((raises[1].0, raises[1].1), (9, Level::Critical));
        assert_eq!(raises[0].2 >> 2, raises[1].2 >> 2, "one episode");
        assert!(matches!(steps[14], Step::Cleared { .. }), "{steps:?}");
        assert_eq!(episode, None);
        match &steps[4] {
            Step::Raise { note, .. } => {
                assert!(note.contains("91, 91, 90"), "{note}");
                assert!(note.contains("warning limit 92"), "{note}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_single_low_reading_or_a_broken_run_raises_nothing() {
        let (steps, episode) = run(&[91.0, 96.0, 91.0, 91.0, 97.0, 90.0]);
        assert!(steps.iter().all(|s| *s == Step::Nothing), "{steps:?}");
        assert_eq!(episode.map(|e| e.out), Some(1));
    }

    #[test]
    fn a_long_stretch_outside_raises_even_with_few_readings() {
        let mut episode = None;
        let b = default_bounds(Sign::HeartRate);
        assert_eq!(
            judge(&mut episode, Sign::HeartRate, 120.0, 0, b, RULES),
            Step::Nothing
        );
        let step = judge(&mut episode, Sign::HeartRate, 121.0, 300_000, b, RULES);
        assert!(
            matches!(
                step,
                Step::Raise {
                    level: Level::Warning,
                    ..
                }
            ),
            "{step:?}"
        );
    }

    #[test]
    fn limits_stack_default_condition_community_then_own() {
        let copd = vec!["copd".to_string()];
        assert_eq!(limits_for(Sign::Spo2, &copd, &[], &[]).warning_below, 88.0);
        let community = [VitalLimit {
            sign: "spo2".into(),
            warning_below: 90.0,
            ..Default::default()
        }];
        let own = [VitalLimit {
            sign: "spo2".into(),
            critical_below: 80.0,
            ..Default::default()
        }];
        let b = limits_for(Sign::Spo2, &copd, &community, &own);
        assert_eq!((b.warning_below, b.critical_below), (90.0, 80.0));
        assert_eq!(level(b, 89.0), Level::Warning);
        assert_eq!(level(b, 79.0), Level::Critical);
        assert_eq!(level(b, 99.0), Level::Normal, "SpO2 has no upper bound");
    }

    #[test]
    fn limits_as_written_are_checked() {
        let bad = |l: VitalLimit| check_limits(&[l]).unwrap_err();
        assert!(
            bad(VitalLimit {
                sign: "pulse".into(),
                ..Default::default()
            })
            .contains("heart_rate")
        );
        assert!(
            bad(VitalLimit {
                sign: "spo2".into(),
                warning_below: 85.0,
                critical_below: 90.0,
                ..Default::default()
            })
            .contains("critical_below")
        );
        assert!(
            check_limits(&[VitalLimit {
                sign: "glucose".into(),
                warning_above: 15.0,
                ..Default::default()
            }])
            .is_ok()
        );
        assert!(
            check_conditions(&["asthma".into()])
                .unwrap_err()
                .contains("copd")
        );
    }

    #[test]
    fn readings_and_days() {
        let vitals = Vitals {
            spo2_pct: 95,
            body_temp_dc: 368,
            glucose_dmmol: 56,
            ..Default::default()
        };
        assert_eq!(
            readings(&vitals),
            vec![
                (Sign::Spo2, 95.0),
                (Sign::BodyTemp, 36.8),
                (Sign::Glucose, 5.6)
            ]
        );
        let mut day = VitalDay::default();
        for v in [95.0, 91.0, 97.0] {
            fold_day(&mut day, v);
        }
        assert_eq!(
            (day.min, day.max, day.sum, day.count),
            (91.0, 97.0, 283.0, 3)
        );
        let mut other = VitalDay::default();
        fold_day(&mut other, 88.0);
        merge_days(&mut day, &other);
        assert_eq!((day.min, day.count), (88.0, 4));
    }
}
