//! The server's local calendar (`routing.utc_offset_minutes`): local day
//! numbers (days since 1970-01-01 in local time), weekdays, dates. Shifts,
//! check-in windows, visit plans and reports all count days the same way.

pub const DAY_MS: i64 = 86_400_000;

pub fn offset_ms(utc_offset_minutes: i32) -> i64 {
    i64::from(utc_offset_minutes) * 60_000
}

/// The local day (days since 1970-01-01, local time) an instant falls on.
pub fn local_day(ms: i64, utc_offset_minutes: i32) -> i32 {
    (ms + offset_ms(utc_offset_minutes)).div_euclid(DAY_MS) as i32
}

/// The instant a local day starts.
pub fn day_start_ms(day: i32, utc_offset_minutes: i32) -> i64 {
    i64::from(day) * DAY_MS - offset_ms(utc_offset_minutes)
}

/// 1 = Monday … 7 = Sunday (1970-01-01 was a Thursday).
pub fn weekday(day: i32) -> u32 {
    ((i64::from(day) + 3).rem_euclid(7) + 1) as u32
}

const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// "2026-11-26".
pub fn date_of(day: i32) -> String {
    time::Date::from_julian_day(day + UNIX_EPOCH_JULIAN_DAY)
        .map(|d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()))
        .unwrap_or_default()
}

/// The local day of "YYYY-MM-DD".
pub fn parse_date(text: &str) -> Option<i32> {
    let mut parts = text.trim().splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    Some(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY)
}

fn parse_hhmm(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && text.len() == 5).then_some(h * 60 + m)
}

/// `"HH:MM-HH:MM"` (local time; may wrap past midnight, "22:00-07:00") as
/// (start, end) minutes of the day.
pub fn span(text: &str) -> Option<(u32, u32)> {
    let (start, end) = text.split_once('-')?;
    let (start, end) = (parse_hhmm(start.trim())?, parse_hhmm(end.trim())?);
    (start != end).then_some((start, end))
}

/// Whether `now_ms` falls in a [`span`] of local time.
pub fn in_span((start, end): (u32, u32), now_ms: i64, utc_offset_minutes: i32) -> bool {
    let day = local_day(now_ms, utc_offset_minutes);
    let minute = ((now_ms - day_start_ms(day, utc_offset_minutes)) / 60_000) as u32;
    if start < end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_days_dates_and_weekdays() {
        // 2026-11-26 00:30 in UTC+8 is 2026-11-25 16:30 UTC.
        let ms = 1_764_088_200_000 + 365 * DAY_MS; // 2026-11-25T16:30:00Z
        let day = local_day(ms, 480);
        assert_eq!(date_of(day), "2026-11-26");
        assert_eq!(parse_date("2026-11-26"), Some(day));
        assert_eq!(weekday(day), 4, "2026-11-26 is a Thursday");
        assert_eq!(day_start_ms(day, 480), ms - 30 * 60_000);
        assert_eq!(weekday(0), 4, "1970-01-01 was a Thursday");
        assert_eq!(parse_date("2026-02-30"), None);
    }
}
