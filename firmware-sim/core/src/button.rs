//! The call button: a short press calls for help (SOS); holding it cancels
//! the last call (the resident pressed by mistake); the green key says "I'm
//! OK" for the daily check-in (a key of its own: an SOS must never wait to
//! be told apart from a check-in, as a double press would make it); a
//! periodic heartbeat
//! reports the battery; a test call from the service menu exercises the
//! whole path without raising an alert.

use crate::event::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ButtonConfig {
    /// Held at least this long: cancel instead of SOS.
    pub long_press_ms: u64,
    pub heartbeat_ms: u64,
}

impl Default for ButtonConfig {
    fn default() -> Self {
        Self {
            long_press_ms: 3_000,
            heartbeat_ms: 3_600_000,
        }
    }
}

/// What the button wants raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonEvent {
    Raise(Kind),
    /// Cancel the last SOS (its seq is the device's to fill in).
    CancelLast,
}

pub struct CallButton {
    config: ButtonConfig,
    pressed_at: Option<u64>,
    cancel_sent: bool,
    next_heartbeat_ms: u64,
}

impl CallButton {
    pub fn new(config: ButtonConfig, now_ms: u64) -> Self {
        Self {
            config,
            pressed_at: None,
            cancel_sent: false,
            next_heartbeat_ms: now_ms + config.heartbeat_ms,
        }
    }

    pub fn press(&mut self, now_ms: u64) {
        if self.pressed_at.is_none() {
            self.pressed_at = Some(now_ms);
            self.cancel_sent = false;
        }
    }

    /// Button released: a short press is an SOS.
    pub fn release(&mut self, now_ms: u64) -> Option<ButtonEvent> {
        let pressed_at = self.pressed_at.take()?;
        let held = now_ms.saturating_sub(pressed_at);
        if held >= self.config.long_press_ms {
            // Cancel fires on the hold itself (see `tick`), or here if no
            // tick came in between.
            return (!self.cancel_sent).then_some(ButtonEvent::CancelLast);
        }
        Some(ButtonEvent::Raise(Kind::Sos))
    }

    /// The green "I'm OK" key.
    pub fn ok_press(&mut self) -> ButtonEvent {
        ButtonEvent::Raise(Kind::CheckinOk)
    }

    pub fn test_call(&mut self) -> ButtonEvent {
        ButtonEvent::Raise(Kind::TestCall)
    }

    /// Time passes: the long press fires while still held; heartbeats.
    pub fn tick(&mut self, now_ms: u64) -> Option<ButtonEvent> {
        if let Some(pressed_at) = self.pressed_at
            && !self.cancel_sent
            && now_ms.saturating_sub(pressed_at) >= self.config.long_press_ms
        {
            self.cancel_sent = true;
            return Some(ButtonEvent::CancelLast);
        }
        if now_ms >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now_ms + self.config.heartbeat_ms;
            return Some(ButtonEvent::Raise(Kind::Heartbeat));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_press_is_sos_and_long_press_cancels_once() {
        let mut button = CallButton::new(
            ButtonConfig {
                long_press_ms: 3000,
                heartbeat_ms: 60_000,
            },
            0,
        );
        button.press(100);
        assert_eq!(button.release(400), Some(ButtonEvent::Raise(Kind::Sos)));
        button.press(1000);
        assert_eq!(button.tick(2000), None);
        assert_eq!(button.tick(4000), Some(ButtonEvent::CancelLast));
        assert_eq!(button.tick(5000), None);
        assert_eq!(button.release(6000), None);
        // A long press with no tick in between still cancels on release.
        button.press(7000);
        assert_eq!(button.release(10_500), Some(ButtonEvent::CancelLast));
        assert_eq!(button.release(11_000), None);
    }

    #[test]
    fn heartbeats_on_schedule_and_test_calls_on_demand() {
        let mut button = CallButton::new(
            ButtonConfig {
                long_press_ms: 3000,
                heartbeat_ms: 60_000,
            },
            0,
        );
        assert_eq!(button.tick(59_999), None);
        assert_eq!(
            button.tick(60_000),
            Some(ButtonEvent::Raise(Kind::Heartbeat))
        );
        assert_eq!(button.tick(60_001), None);
        assert_eq!(
            button.tick(120_000),
            Some(ButtonEvent::Raise(Kind::Heartbeat))
        );
        assert_eq!(button.test_call(), ButtonEvent::Raise(Kind::TestCall));
    }
}
