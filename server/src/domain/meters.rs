//! Household signals: a water or electricity meter, a door sensor. "No use
//! for H hours" (Jing'an's rule for a lone resident's water meter: a work
//! order after 12 hours) and "more than X in a local day" each raise one P2
//! welfare alert, routed like a missed check-in.
//!
//! Pure: the watch is a value the caller stores between readings, and the
//! silence is judged by a timer against it.

use anxin_proto::v1::MeterRule;
use serde::{Deserialize, Serialize};

pub const KINDS: [&str; 3] = ["water", "electricity", "door"];

/// The unit a kind's totals count.
pub fn unit(kind: &str) -> &'static str {
    match kind {
        "water" => "L",
        "electricity" => "Wh",
        _ => "openings",
    }
}

pub fn check_rules(rules: &[MeterRule]) -> Result<(), String> {
    for rule in rules {
        if !KINDS.contains(&rule.kind.as_str()) {
            return Err(format!(
                "meter rule kind `{}` is not one of {}",
                rule.kind,
                KINDS.join(", ")
            ));
        }
        if !rule.silent_hours.is_finite()
            || rule.silent_hours < 0.0
            || rule.silent_hours > 24.0 * 14.0
        {
            return Err(format!(
                "meter rule {}: silent_hours {} must be between 0 and two weeks (336)",
                rule.kind, rule.silent_hours
            ));
        }
        if !rule.daily_max.is_finite() || rule.daily_max < 0.0 {
            return Err(format!(
                "meter rule {}: daily_max must be 0 or more",
                rule.kind
            ));
        }
        if rule.silent_hours == 0.0 && rule.daily_max == 0.0 {
            return Err(format!(
                "meter rule {}: set silent_hours, daily_max or both",
                rule.kind
            ));
        }
    }
    Ok(())
}

/// One meter of one resident, stored between readings
/// (`meter/{resident}/{kind}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeterWatch {
    pub resident_id: String,
    pub kind: String,
    /// The latest total and when it last went up (or was first seen).
    pub total: u64,
    pub last_use_ms: i64,
    pub last_report_ms: i64,
    /// The local day of the latest reading and the total it started at.
    pub day: i32,
    pub day_start_total: u64,
    /// The rule as of the latest reading (the timer judges silence
    /// without reading the directory).
    pub silent_hours: f64,
    pub daily_max: f64,
    /// The use a silence alert was raised after, and the day an unusual
    /// use alert was raised on: one each.
    pub silent_raised_for: i64,
    pub unusual_raised_day: i32,
}

/// Identity of a silence alert (`last_use << 2 | 1`) and of an unusual
/// day's (`day << 2 | 2`): never the same, never an episode's other step.
pub fn silent_seq(last_use_ms: i64) -> u64 {
    ((last_use_ms.max(0) as u64) << 2) | 1
}

pub fn unusual_seq(day: i32) -> u64 {
    ((day.max(0) as u64) << 2) | 2
}

/// A reading: the watch moves on; `Some` when the day's use just went past
/// the rule's daily maximum (seq, note).
pub fn reading(
    watch: &mut Option<MeterWatch>,
    resident_id: &str,
    kind: &str,
    total: u64,
    at_ms: i64,
    day: i32,
    rule: Option<&MeterRule>,
) -> Option<(u64, String)> {
    let w = watch.get_or_insert_with(|| MeterWatch {
        resident_id: resident_id.into(),
        kind: kind.into(),
        total,
        last_use_ms: at_ms,
        day,
        day_start_total: total,
        ..Default::default()
    });
    if at_ms < w.last_report_ms {
        // An older reading, resent after a newer one: the totals say
        // nothing new.
        return None;
    }
    if total < w.total {
        // A new or reset meter: count from here.
        w.day_start_total = total;
        w.last_use_ms = at_ms;
    } else if total > w.total {
        w.last_use_ms = at_ms;
    }
    if day != w.day {
        // The new day starts from the last total of the old one.
        w.day_start_total = w.total.min(total);
        w.day = day;
    }
    w.total = total;
    w.last_report_ms = at_ms;
    w.silent_hours = rule.map_or(0.0, |r| r.silent_hours);
    w.daily_max = rule.map_or(0.0, |r| r.daily_max);
    let used = total.saturating_sub(w.day_start_total) as f64;
    if w.daily_max > 0.0 && used > w.daily_max && w.unusual_raised_day != day {
        w.unusual_raised_day = day;
        return Some((
            unusual_seq(day),
            format!(
                "{} meter: {used:.0} {} used today, more than the {:.0} {} set for this home.",
                kind,
                unit(kind),
                w.daily_max,
                unit(kind)
            ),
        ));
    }
    None
}

/// Whether a watch's silence is due at `now_ms` (seq, note); the caller
/// records `silent_raised_for` once the alert is committed.
pub fn silence_due(w: &MeterWatch, now_ms: i64) -> Option<(u64, String)> {
    let hours = w.silent_hours;
    if hours <= 0.0 || w.silent_raised_for == w.last_use_ms {
        return None;
    }
    let quiet_ms = now_ms - w.last_use_ms;
    (quiet_ms as f64 >= hours * 3_600_000.0).then(|| {
        (
            silent_seq(w.last_use_ms),
            format!(
                "{} meter: no use for {:.1} h (rule: {} h); the last reading came {} min ago.",
                w.kind,
                quiet_ms as f64 / 3_600_000.0,
                hours,
                (now_ms - w.last_report_ms).max(0) / 60_000
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn rule(silent_hours: f64, daily_max: f64) -> MeterRule {
        MeterRule {
            kind: "water".into(),
            silent_hours,
            daily_max,
        }
    }

    #[test]
    fn silence_counts_from_the_last_use_and_is_raised_once() {
        let r = rule(12.0, 0.0);
        let mut watch = None;
        assert_eq!(
            reading(&mut watch, "r-1", "water", 100, 0, 0, Some(&r)),
            None
        );
        reading(&mut watch, "r-1", "water", 130, H, 0, Some(&r));
        // Unchanged totals keep coming: no use.
        for hour in 2..14 {
            reading(&mut watch, "r-1", "water", 130, hour * H, 0, Some(&r));
        }
        let w = watch.clone().unwrap();
        assert_eq!(w.last_use_ms, H);
        assert_eq!(silence_due(&w, 12 * H), None);
        let (seq, note) = silence_due(&w, 13 * H).expect("12 h after the last use");
        assert_eq!(seq, silent_seq(H));
        assert!(note.contains("no use for 12.0 h"), "{note}");
        let mut raised = w.clone();
        raised.silent_raised_for = raised.last_use_ms;
        assert_eq!(silence_due(&raised, 20 * H), None, "once per silence");
        // Use again, then a new silence: a new identity.
        reading(&mut watch, "r-1", "water", 135, 21 * H, 0, Some(&r));
        let w = watch.unwrap();
        assert_eq!(
            silence_due(&w, 34 * H).map(|d| d.0),
            Some(silent_seq(21 * H))
        );
    }

    #[test]
    fn a_day_over_its_maximum_is_raised_once_and_days_start_at_the_last_total() {
        let r = rule(0.0, 500.0);
        let mut watch = None;
        assert_eq!(
            reading(&mut watch, "r-1", "water", 1_000, 0, 7, Some(&r)),
            None
        );
        assert_eq!(
            reading(&mut watch, "r-1", "water", 1_400, H, 7, Some(&r)),
            None
        );
        let (seq, note) = reading(&mut watch, "r-1", "water", 1_600, 2 * H, 7, Some(&r)).unwrap();
        assert_eq!(seq, unusual_seq(7));
        assert!(note.contains("600 L used today"), "{note}");
        assert_eq!(
            reading(&mut watch, "r-1", "water", 1_700, 3 * H, 7, Some(&r)),
            None
        );
        // The next day counts from 1 700.
        assert_eq!(
            reading(&mut watch, "r-1", "water", 2_100, 26 * H, 8, Some(&r)),
            None
        );
        assert!(reading(&mut watch, "r-1", "water", 2_300, 27 * H, 8, Some(&r)).is_some());
        assert!(check_rules(&[rule(0.0, 0.0)]).is_err());
        assert!(check_rules(&[rule(-1.0, 0.0)]).is_err());
        assert!(
            check_rules(&[MeterRule {
                kind: "gas".into(),
                ..rule(12.0, 0.0)
            }])
            .unwrap_err()
            .contains("water")
        );
    }
}
