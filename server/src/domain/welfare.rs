//! The welfare rules for residents who live alone (独居, 空巢), pure:
//! check-in windows on local days, a resident's standing in a window, what
//! counts as a sign of life, visit plans due on their weekdays. The desks
//! (`desks/welfare/`) and the judges apply them; the store keeps their
//! records ([`crate::store::welfare::WelfareStore`]).

use anxin_proto::{
    DeviceEvent, EventKind,
    v1::{CheckinWindow, SignOfLife, VisitPlan},
};

use crate::domain::calendar::{DAY_MS, date_of, day_start_ms, local_day, offset_ms, weekday};

/// Device ids of the server's own CHECKIN_MISSED events.
pub const CHECKIN_DEVICE_PREFIX: &str = "checkin/";

/// Milliseconds after local midnight of "HH:MM" or "HH:MM:SS" (24:00 is
/// the day's end).
pub fn parse_clock(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let numbers: Vec<i64> = parts
        .iter()
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (h, m, s) = (numbers[0], numbers[1], numbers.get(2).copied().unwrap_or(0));
    if m > 59 || s > 59 || h > 24 || (h == 24 && (m, s) != (0, 0)) {
        return None;
    }
    Some(((h * 60 + m) * 60 + s) * 1000)
}

/// A check-in window, as offsets into the local day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Window {
    pub fn of(window: &CheckinWindow) -> Result<Self, String> {
        let start_ms = parse_clock(&window.start).ok_or_else(|| {
            format!(
                "checkin.start `{}` is not a time of day (HH:MM or HH:MM:SS)",
                window.start
            )
        })?;
        let end_ms = parse_clock(&window.end).ok_or_else(|| {
            format!(
                "checkin.end `{}` is not a time of day (HH:MM or HH:MM:SS)",
                window.end
            )
        })?;
        if end_ms <= start_ms {
            return Err(format!(
                "checkin window {}–{} must end after it starts, within one day",
                window.start, window.end
            ));
        }
        Ok(Self { start_ms, end_ms })
    }

    /// The instants the window opens and closes on a local day.
    pub fn on(self, day: i32, utc_offset_minutes: i32) -> (i64, i64) {
        let midnight = day_start_ms(day, utc_offset_minutes);
        (midnight + self.start_ms, midnight + self.end_ms)
    }

    /// The latest day whose window has closed by `now_ms`.
    pub fn last_closed_day(self, now_ms: i64, utc_offset_minutes: i32) -> i32 {
        let today = local_day(now_ms, utc_offset_minutes);
        if now_ms >= self.on(today, utc_offset_minutes).1 {
            today
        } else {
            today - 1
        }
    }
}

/// How a day's check-in stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// A sign of life within the window.
    Ok,
    /// None within the window, one after it (before the day was judged).
    Late,
    /// The window is open (or not yet open) and no sign yet.
    Pending,
    Missed,
}

impl Standing {
    pub fn name(self) -> &'static str {
        match self {
            Standing::Ok => "ok",
            Standing::Late => "late",
            Standing::Pending => "pending",
            Standing::Missed => "missed",
        }
    }
}

/// Pure: a day's standing from its window, the latest sign and the time.
pub fn standing(opens_ms: i64, closes_ms: i64, sign_ms: Option<i64>, now_ms: i64) -> Standing {
    match sign_ms {
        Some(at) if at >= opens_ms && at < closes_ms => Standing::Ok,
        Some(at) if at >= closes_ms => Standing::Late,
        _ if now_ms < closes_ms => Standing::Pending,
        _ => Standing::Missed,
    }
}

/// Whether an event shows the resident is well, and how: their own "I'm
/// OK", activity their devices report, or a call they made. Heartbeats,
/// battery and fault reports say the device lives, not the person; a fall
/// or inactivity says the opposite.
pub fn sign_in(event: &DeviceEvent) -> Option<&'static str> {
    match event.known_kind()? {
        EventKind::CheckinOk => Some("checkin"),
        EventKind::Telemetry => Some("activity"),
        EventKind::Sos | EventKind::Cancel | EventKind::TestCall => Some("call"),
        _ => None,
    }
}

/// Names of how a sign came, for people.
pub fn describe_sign(sign: &SignOfLife, utc_offset_minutes: i32) -> String {
    let local = sign.at_ms + offset_ms(utc_offset_minutes);
    let day = local.div_euclid(DAY_MS) as i32;
    let secs = local.rem_euclid(DAY_MS) / 1000;
    let how = match sign.how.as_str() {
        "checkin" => "I'm OK press",
        "activity" => "activity",
        "call" => "a call",
        "carer" => "confirmed by a carer",
        other => other,
    };
    format!(
        "{} {:02}:{:02} ({how}, {})",
        date_of(day),
        secs / 3600,
        secs / 60 % 60,
        sign.source
    )
}

/// The window to store for a resident: `since_ms` is kept from an earlier
/// enrolment, else it is now (days that closed before it are not judged).
pub fn enrol(
    window: Option<CheckinWindow>,
    before: Option<&CheckinWindow>,
    now_ms: i64,
) -> Option<CheckinWindow> {
    let mut window = window.filter(|w| !w.start.is_empty() || !w.end.is_empty())?;
    window.since_ms = before.map_or(0, |b| b.since_ms);
    if window.since_ms == 0 {
        window.since_ms = now_ms;
    }
    Some(window)
}

/// Checks a resident's check-in window (API and import).
pub fn check_window(window: Option<&CheckinWindow>) -> Result<(), String> {
    match window {
        Some(w) => Window::of(w).map(|_| ()),
        None => Ok(()),
    }
}

/// Checks a visit plan's own fields (the resident is checked by the caller).
pub fn check_plan(plan: &VisitPlan) -> Result<(), String> {
    if plan.id.trim().is_empty() {
        return Err("visit plan id is empty".into());
    }
    if plan.resident_id.trim().is_empty() {
        return Err("visit plan needs a resident_id".into());
    }
    if plan.weekdays.is_empty() {
        return Err("visit plan needs weekdays (1 = Monday … 7 = Sunday)".into());
    }
    if let Some(bad) = plan.weekdays.iter().find(|d| !(1..=7).contains(*d)) {
        return Err(format!("weekday {bad} is not 1 (Monday) … 7 (Sunday)"));
    }
    Ok(())
}

/// Whether a plan has a visit due on a local day.
pub fn plan_due(plan: &VisitPlan, day: i32, utc_offset_minutes: i32) -> bool {
    plan.active
        && plan.weekdays.contains(&weekday(day))
        && plan.since_ms < day_start_ms(day + 1, utc_offset_minutes)
}

/// Residents with a valid check-in window.
pub fn enrolled(
    residents: &[anxin_proto::v1::Resident],
) -> Vec<(anxin_proto::v1::Resident, Window)> {
    residents
        .iter()
        .filter_map(|r| {
            let window = Window::of(r.checkin.as_ref()?).ok()?;
            Some((r.clone(), window))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_checked_and_placed_on_days() {
        let w = Window::of(&CheckinWindow {
            start: "07:00".into(),
            end: "10:00:30".into(),
            since_ms: 0,
        })
        .unwrap();
        assert_eq!(w.start_ms, 7 * 3_600_000);
        assert_eq!(w.end_ms, 10 * 3_600_000 + 30_000);
        let (opens, closes) = w.on(10, 0);
        assert_eq!(opens, 10 * DAY_MS + 7 * 3_600_000);
        assert_eq!(w.last_closed_day(closes - 1, 0), 9);
        assert_eq!(w.last_closed_day(closes, 0), 10);
        for (start, end) in [("10:00", "07:00"), ("7:00", "10:00"), ("07:60", "10:00")] {
            let bad = CheckinWindow {
                start: start.into(),
                end: end.into(),
                since_ms: 0,
            };
            assert!(Window::of(&bad).is_err(), "{start}–{end} accepted");
        }
    }

    #[test]
    fn standing_follows_the_sign_and_the_clock() {
        assert_eq!(standing(100, 200, Some(150), 120), Standing::Ok);
        assert_eq!(standing(100, 200, Some(99), 150), Standing::Pending);
        assert_eq!(standing(100, 200, None, 199), Standing::Pending);
        assert_eq!(standing(100, 200, None, 200), Standing::Missed);
        assert_eq!(standing(100, 200, Some(99), 250), Standing::Missed);
        assert_eq!(standing(100, 200, Some(230), 250), Standing::Late);
    }

    #[test]
    fn only_a_person_s_doing_is_a_sign_of_life() {
        let event = |kind: EventKind| DeviceEvent {
            kind: kind as i32,
            ..Default::default()
        };
        assert_eq!(sign_in(&event(EventKind::CheckinOk)), Some("checkin"));
        assert_eq!(sign_in(&event(EventKind::Telemetry)), Some("activity"));
        assert_eq!(sign_in(&event(EventKind::Sos)), Some("call"));
        for kind in [
            EventKind::Heartbeat,
            EventKind::LowBattery,
            EventKind::Fall,
            EventKind::Inactivity,
            EventKind::DeviceOffline,
        ] {
            assert_eq!(sign_in(&event(kind)), None, "{kind:?}");
        }
    }

    #[test]
    fn plans_are_due_on_their_weekdays_from_their_start() {
        let plan = VisitPlan {
            id: "v-1".into(),
            resident_id: "r-1".into(),
            weekdays: vec![4],
            active: true,
            since_ms: day_start_ms(10, 0) + 5,
            ..Default::default()
        };
        assert!(check_plan(&plan).is_ok());
        assert!(plan_due(&plan, 14, 0), "day 14 is a Thursday");
        assert!(!plan_due(&plan, 15, 0));
        assert!(!plan_due(&plan, 7, 0), "before the plan existed");
        assert!(!plan_due(
            &VisitPlan {
                active: false,
                ..plan.clone()
            },
            14,
            0
        ));
        let bad = VisitPlan {
            weekdays: vec![8],
            ..plan
        };
        assert!(check_plan(&bad).is_err());
    }
}
