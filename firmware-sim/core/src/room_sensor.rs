//! The room sensor: no movement for longer than the inactivity window (while
//! the resident is expected to be up) raises one INACTIVITY event; movement
//! re-arms it. Movement is also reported as activity (TELEMETRY), at most
//! once per report interval: the resident's sign of life for the daily
//! check-in, without a radio message per step they take.

use crate::event::Kind;

pub struct RoomSensor {
    window_ms: u64,
    last_motion_ms: u64,
    reported: bool,
    report_every_ms: u64,
    last_report_ms: Option<u64>,
}

/// Activity reports: at most one per 15 minutes of movement.
pub const ACTIVITY_REPORT_MS: u64 = 900_000;

impl RoomSensor {
    pub fn new(window_ms: u64, now_ms: u64) -> Self {
        Self {
            window_ms,
            last_motion_ms: now_ms,
            reported: false,
            report_every_ms: ACTIVITY_REPORT_MS,
            last_report_ms: None,
        }
    }

    /// Reports activity at most once per `every_ms` (0: never).
    pub fn with_activity_reports(mut self, every_ms: u64) -> Self {
        self.report_every_ms = every_ms;
        self
    }

    /// Movement: re-arms inactivity; returns TELEMETRY when an activity
    /// report is due.
    pub fn motion(&mut self, now_ms: u64) -> Option<Kind> {
        self.last_motion_ms = now_ms;
        self.reported = false;
        let due = self.report_every_ms > 0
            && self
                .last_report_ms
                .is_none_or(|at| now_ms.saturating_sub(at) >= self.report_every_ms);
        if due {
            self.last_report_ms = Some(now_ms);
            return Some(Kind::Telemetry);
        }
        None
    }

    pub fn tick(&mut self, now_ms: u64) -> Option<Kind> {
        if !self.reported && now_ms.saturating_sub(self.last_motion_ms) >= self.window_ms {
            self.reported = true;
            return Some(Kind::Inactivity);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inactivity_is_reported_once_per_quiet_spell() {
        let mut sensor = RoomSensor::new(1_000, 0);
        assert_eq!(sensor.tick(999), None);
        assert_eq!(sensor.tick(1_000), Some(Kind::Inactivity));
        assert_eq!(sensor.tick(5_000), None);
        sensor.motion(5_500);
        assert_eq!(sensor.tick(6_000), None);
        assert_eq!(sensor.tick(6_500), Some(Kind::Inactivity));
    }

    #[test]
    fn movement_is_reported_as_activity_once_per_interval() {
        let mut sensor = RoomSensor::new(60_000, 0).with_activity_reports(10_000);
        assert_eq!(sensor.motion(1_000), Some(Kind::Telemetry));
        assert_eq!(sensor.motion(5_000), None);
        assert_eq!(sensor.motion(10_999), None);
        assert_eq!(sensor.motion(11_000), Some(Kind::Telemetry));
        let mut quiet = RoomSensor::new(60_000, 0).with_activity_reports(0);
        assert_eq!(quiet.motion(1_000), None);
    }
}
