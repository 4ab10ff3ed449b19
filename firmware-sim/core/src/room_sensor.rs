//! The room sensor: no movement for longer than the inactivity window (while
//! the resident is expected to be up) raises one INACTIVITY event; movement
//! re-arms it.

use crate::event::Kind;

pub struct RoomSensor {
    window_ms: u64,
    last_motion_ms: u64,
    reported: bool,
}

impl RoomSensor {
    pub fn new(window_ms: u64, now_ms: u64) -> Self {
        Self {
            window_ms,
            last_motion_ms: now_ms,
            reported: false,
        }
    }

    pub fn motion(&mut self, now_ms: u64) {
        self.last_motion_ms = now_ms;
        self.reported = false;
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
}
