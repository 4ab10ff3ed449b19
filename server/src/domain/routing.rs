//! Routing: who is offered an alert next.
//!
//! The resident's community → its on-duty carers and nurses, least loaded
//! first, each tried once → the community's supervisors → the emergency
//! services hook. Pure functions of the staff list, each person's open load
//! and the clock; the alert desk applies the result.

use std::collections::HashMap;

use anxin_proto::v1::{Alert, EscalationStep, Shift, Staff, StaffRole};

/// The next step for an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Offer {
        staff_id: String,
        step: EscalationStep,
    },
    EmergencyServices,
}

fn parse_hhmm(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && text.len() == 5).then_some(h * 60 + m)
}

pub fn check_shift(shift: &Shift) -> Result<(), String> {
    if shift.weekdays.is_empty() || shift.weekdays.iter().any(|d| !(1..=7).contains(d)) {
        return Err("shift weekdays must be 1 (Monday) to 7 (Sunday)".into());
    }
    for (name, value) in [("start", &shift.start), ("end", &shift.end)] {
        if parse_hhmm(value).is_none() {
            return Err(format!("shift {name} `{value}` is not HH:MM"));
        }
    }
    if shift.start == shift.end {
        return Err("shift start and end are the same".into());
    }
    Ok(())
}

/// Local weekday (1 = Monday) and minute of day at `now_ms`.
fn local_time(now_ms: i64, utc_offset_minutes: i32) -> (u32, u32) {
    use crate::domain::calendar::{day_start_ms, local_day, weekday};
    let day = local_day(now_ms, utc_offset_minutes);
    let minute = ((now_ms - day_start_ms(day, utc_offset_minutes)) / 60_000) as u32;
    (weekday(day), minute)
}

/// Staff with no shifts are on call at all times; otherwise one shift must
/// cover `now`. A shift whose end is before its start runs past midnight and
/// belongs to the day it starts on.
pub fn on_duty(staff: &Staff, now_ms: i64, utc_offset_minutes: i32) -> bool {
    if !staff.active {
        return false;
    }
    if staff.shifts.is_empty() {
        return true;
    }
    let (weekday, minute) = local_time(now_ms, utc_offset_minutes);
    let yesterday = if weekday == 1 { 7 } else { weekday - 1 };
    staff.shifts.iter().any(|shift| {
        let (Some(start), Some(end)) = (parse_hhmm(&shift.start), parse_hhmm(&shift.end)) else {
            return false;
        };
        if start < end {
            shift.weekdays.contains(&weekday) && (start..end).contains(&minute)
        } else {
            (shift.weekdays.contains(&weekday) && minute >= start)
                || (shift.weekdays.contains(&yesterday) && minute < end)
        }
    })
}

pub fn serves(staff: &Staff, community_id: &str) -> bool {
    staff
        .communities
        .iter()
        .any(|c| c == "*" || (!community_id.is_empty() && c == community_id))
}

/// Open alerts each person holds (offered to or assigned to them).
pub fn loads<'a>(open_alerts: impl IntoIterator<Item = &'a Alert>) -> HashMap<String, usize> {
    let mut load = HashMap::new();
    for alert in open_alerts {
        for id in [&alert.offered_to, &alert.assigned_to] {
            if !id.is_empty() {
                *load.entry(id.clone()).or_insert(0) += 1;
            }
        }
    }
    load
}

/// Where `alert` goes next, skipping everyone already tried.
pub fn next_step(
    alert: &Alert,
    staff: &[Staff],
    load: &HashMap<String, usize>,
    now_ms: i64,
    utc_offset_minutes: i32,
) -> Step {
    let pick = |roles: &[StaffRole], step: EscalationStep| {
        staff
            .iter()
            .filter(|s| roles.contains(&s.role()))
            .filter(|s| serves(s, &alert.community_id))
            .filter(|s| !alert.tried.contains(&s.id))
            .filter(|s| on_duty(s, now_ms, utc_offset_minutes))
            .min_by_key(|s| (load.get(&s.id).copied().unwrap_or(0), s.id.clone()))
            .map(|s| Step::Offer {
                staff_id: s.id.clone(),
                step,
            })
    };
    pick(&[StaffRole::Carer, StaffRole::Nurse], EscalationStep::Carer)
        .or_else(|| pick(&[StaffRole::Supervisor], EscalationStep::Supervisor))
        .unwrap_or(Step::EmergencyServices)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Monday 2026-11-23 10:00 in UTC+8 (02:00 UTC).
    const MONDAY_10AM: i64 = 1_795_399_200_000;
    const CST: i32 = 480;

    fn person(id: &str, role: StaffRole, shifts: Vec<Shift>) -> Staff {
        Staff {
            id: id.into(),
            name: id.into(),
            role: role as i32,
            communities: vec!["c-1".into()],
            shifts,
            active: true,
            ..Default::default()
        }
    }

    fn shift(days: &[u32], start: &str, end: &str) -> Shift {
        Shift {
            weekdays: days.to_vec(),
            start: start.into(),
            end: end.into(),
        }
    }

    fn alert() -> Alert {
        Alert {
            community_id: "c-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_clock_reads_local_time() {
        assert_eq!(local_time(MONDAY_10AM, CST), (1, 600));
        assert_eq!(local_time(MONDAY_10AM, 0), (1, 120));
    }

    #[test]
    fn shifts_decide_who_is_on_duty_including_overnight() {
        let day = person(
            "a",
            StaffRole::Carer,
            vec![shift(&[1, 2, 3, 4, 5], "08:00", "20:00")],
        );
        assert!(on_duty(&day, MONDAY_10AM, CST));
        assert!(!on_duty(&day, MONDAY_10AM + 11 * 3_600_000, CST));
        let night = person("n", StaffRole::Carer, vec![shift(&[7], "22:00", "11:00")]);
        // Sunday's night shift still runs at 10:00 on Monday.
        assert!(on_duty(&night, MONDAY_10AM, CST));
        assert!(!on_duty(&night, MONDAY_10AM + 3_600_000, CST));
        let mut off = person("o", StaffRole::Carer, vec![]);
        assert!(on_duty(&off, MONDAY_10AM, CST));
        off.active = false;
        assert!(!on_duty(&off, MONDAY_10AM, CST));
    }

    #[test]
    fn the_least_loaded_on_duty_carer_of_the_community_is_offered_first() {
        let mut other_community = person("a-other", StaffRole::Carer, vec![]);
        other_community.communities = vec!["c-2".into()];
        let staff = vec![
            other_community,
            person(
                "b-off",
                StaffRole::Carer,
                vec![shift(&[6, 7], "08:00", "20:00")],
            ),
            person("c-busy", StaffRole::Carer, vec![]),
            person("d-free", StaffRole::Nurse, vec![]),
            person("e-sup", StaffRole::Supervisor, vec![]),
            person("f-disp", StaffRole::Dispatcher, vec![]),
        ];
        let load = HashMap::from([("c-busy".to_string(), 2)]);
        let mut alert = alert();
        let next = |alert: &Alert| next_step(alert, &staff, &load, MONDAY_10AM, CST);
        assert_eq!(
            next(&alert),
            Step::Offer {
                staff_id: "d-free".into(),
                step: EscalationStep::Carer
            }
        );
        alert.tried.push("d-free".into());
        assert_eq!(
            next(&alert),
            Step::Offer {
                staff_id: "c-busy".into(),
                step: EscalationStep::Carer
            }
        );
        alert.tried.push("c-busy".into());
        assert_eq!(
            next(&alert),
            Step::Offer {
                staff_id: "e-sup".into(),
                step: EscalationStep::Supervisor
            }
        );
        alert.tried.push("e-sup".into());
        assert_eq!(next(&alert), Step::EmergencyServices);
    }

    #[test]
    fn bad_shifts_are_named() {
        assert!(check_shift(&shift(&[8], "08:00", "09:00")).is_err());
        assert!(
            check_shift(&shift(&[1], "8:00", "09:00"))
                .unwrap_err()
                .contains("start")
        );
        assert!(
            check_shift(&shift(&[1], "08:00", "24:00"))
                .unwrap_err()
                .contains("end")
        );
        check_shift(&shift(&[1], "22:00", "06:00")).unwrap();
    }
}
