//! Time that cannot go backwards for a person waiting.
//!
//! Deadlines are stored as wall-clock milliseconds (they must survive a
//! restart and be shown to people), but a wall clock steps: a VM restore,
//! an RTC without battery, an NTP step. [`StepDetector`] compares wall time
//! with `CLOCK_BOOTTIME` (which never steps and, unlike `CLOCK_MONOTONIC`,
//! keeps counting through a suspend) and reports the difference as a step,
//! so the owner of stored deadlines can re-base them by it. [`Mark`] carries
//! the comparison across a restart of the process on the same boot.

/// A step smaller than this is drift or scheduling noise, not a step.
pub const DEFAULT_TOLERANCE_MS: i64 = 1_000;

/// Milliseconds since boot, counting suspend; never steps.
pub fn boottime_ms() -> i64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    ts.tv_sec * 1_000 + ts.tv_nsec / 1_000_000
}

/// The kernel's id of this boot; marks from another boot cannot be compared.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Wall and boot time read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub boot_id: String,
    pub boottime_ms: i64,
    pub wall_ms: i64,
}

impl Mark {
    pub fn now(wall_ms: i64) -> Self {
        Self {
            boot_id: boot_id(),
            boottime_ms: boottime_ms(),
            wall_ms,
        }
    }

    /// How far the wall clock stepped between `self` (earlier) and `now`:
    /// positive forward, negative back; `None` within tolerance.
    ///
    /// On the same boot the elapsed time is known exactly. Across a reboot
    /// only a wall clock that is now *before* the mark is certainly a step
    /// (back by at least the difference); a clock later than the mark may
    /// be real downtime.
    pub fn step_to(&self, now: &Mark, tolerance_ms: i64) -> Option<i64> {
        let step = if !self.boot_id.is_empty() && self.boot_id == now.boot_id {
            (now.wall_ms - self.wall_ms) - (now.boottime_ms - self.boottime_ms)
        } else {
            (now.wall_ms - self.wall_ms).min(0)
        };
        (step.abs() > tolerance_ms).then_some(step)
    }

    /// `boot_id ‖ boottime ‖ wall`, for a store.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(16 + self.boot_id.len());
        bytes.extend_from_slice(&self.boottime_ms.to_be_bytes());
        bytes.extend_from_slice(&self.wall_ms.to_be_bytes());
        bytes.extend_from_slice(self.boot_id.as_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 16 {
            return None;
        }
        Some(Self {
            boottime_ms: i64::from_be_bytes(bytes[..8].try_into().ok()?),
            wall_ms: i64::from_be_bytes(bytes[8..16].try_into().ok()?),
            boot_id: String::from_utf8(bytes[16..].to_vec()).ok()?,
        })
    }
}

/// Detects wall-clock steps within a running process.
pub struct StepDetector {
    last: Mark,
    tolerance_ms: i64,
}

impl StepDetector {
    pub fn new(wall_ms: i64, tolerance_ms: i64) -> Self {
        Self {
            last: Mark::now(wall_ms),
            tolerance_ms,
        }
    }

    /// The step since the last call, if any; either way the new reading
    /// becomes the reference.
    pub fn check(&mut self, wall_ms: i64) -> Option<i64> {
        let now = Mark::now(wall_ms);
        let step = self.last.step_to(&now, self.tolerance_ms);
        self.last = now;
        step
    }

    pub fn last(&self) -> &Mark {
        &self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(boot: &str, boottime_ms: i64, wall_ms: i64) -> Mark {
        Mark {
            boot_id: boot.into(),
            boottime_ms,
            wall_ms,
        }
    }

    #[test]
    fn same_boot_steps_are_exact_both_ways() {
        let then = mark("b", 1_000, 50_000);
        assert_eq!(then.step_to(&mark("b", 3_000, 52_000), 1_000), None);
        assert_eq!(
            then.step_to(&mark("b", 3_000, 52_000 - 3_600_000), 1_000),
            Some(-3_600_000)
        );
        assert_eq!(
            then.step_to(&mark("b", 3_000, 52_000 + 3_600_000), 1_000),
            Some(3_600_000)
        );
    }

    #[test]
    fn across_a_reboot_only_a_clock_behind_the_mark_is_a_step() {
        let then = mark("a", 1_000_000, 50_000_000);
        assert_eq!(
            then.step_to(&mark("b", 10, 50_000_000 + 600_000), 1_000),
            None
        );
        assert_eq!(
            then.step_to(&mark("b", 10, 50_000_000 - 7_200_000), 1_000),
            Some(-7_200_000)
        );
    }

    #[test]
    fn marks_round_trip_and_boottime_advances() {
        let m = Mark::now(123);
        assert_eq!(Mark::decode(&m.encode()), Some(m.clone()));
        assert!(boottime_ms() >= m.boottime_ms);
        let mut detector = StepDetector::new(anxin_now(), DEFAULT_TOLERANCE_MS);
        assert_eq!(detector.check(anxin_now()), None);
        assert!(detector.check(anxin_now() - 3_600_000).is_some());
    }

    fn anxin_now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }
}
