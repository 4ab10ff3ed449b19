//! The wearable: fall detection from the accelerometer, heart-rate and SpO2
//! thresholds, and its last known location.
//!
//! Fall: a free fall (magnitude below 400 mg), an impact (above 2,500 mg)
//! within 1 s, then lying still (900–1,100 mg) for 2 s. Confidence grows with
//! the impact's strength. Vitals: each episode (critical or warning) raises
//! one event; it re-arms when the readings are normal again.

use crate::event::{Detail, Kind};

const FREE_FALL_MG: u32 = 400;
const IMPACT_MG: u32 = 2_500;
const IMPACT_WITHIN_MS: u64 = 1_000;
const STILL_MG: core::ops::RangeInclusive<u32> = 900..=1_100;
const STILL_FOR_MS: u64 = 2_000;
/// After the impact the body bounces and settles; movement then is expected.
const SETTLE_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FallState {
    Upright,
    Falling {
        since_ms: u64,
    },
    Impacted {
        at_ms: u64,
        peak_mg: u32,
        still_since_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum VitalsLevel {
    Normal,
    Warning,
    Critical,
}

pub struct Wearable {
    fall: FallState,
    vitals: VitalsLevel,
    location: Option<(i32, i32, u32)>,
}

impl Default for Wearable {
    fn default() -> Self {
        Self::new()
    }
}

impl Wearable {
    pub const fn new() -> Self {
        Self {
            fall: FallState::Upright,
            vitals: VitalsLevel::Normal,
            location: None,
        }
    }

    /// The "I'm OK" gesture (a double tap on the face): the daily check-in.
    pub fn ok_gesture(&mut self) -> (Kind, Detail) {
        (Kind::CheckinOk, Detail::None)
    }

    /// One accelerometer sample (vector magnitude in milli-g).
    pub fn accel(&mut self, now_ms: u64, magnitude_mg: u32) -> Option<(Kind, Detail)> {
        self.fall = match self.fall {
            FallState::Upright if magnitude_mg < FREE_FALL_MG => {
                FallState::Falling { since_ms: now_ms }
            }
            FallState::Upright => FallState::Upright,
            FallState::Falling { since_ms } if now_ms - since_ms > IMPACT_WITHIN_MS => {
                FallState::Upright
            }
            FallState::Falling { .. } if magnitude_mg > IMPACT_MG => FallState::Impacted {
                at_ms: now_ms,
                peak_mg: magnitude_mg,
                still_since_ms: None,
            },
            falling @ FallState::Falling { .. } => falling,
            FallState::Impacted {
                at_ms,
                peak_mg,
                still_since_ms,
            } => {
                if magnitude_mg > IMPACT_MG {
                    FallState::Impacted {
                        at_ms: now_ms,
                        peak_mg: peak_mg.max(magnitude_mg),
                        still_since_ms: None,
                    }
                } else if STILL_MG.contains(&magnitude_mg) {
                    let since = still_since_ms.unwrap_or(now_ms);
                    if now_ms - since >= STILL_FOR_MS {
                        self.fall = FallState::Upright;
                        let confidence_pct = (60 + (peak_mg - IMPACT_MG) / 50).min(99);
                        return Some((
                            Kind::Fall,
                            Detail::Fall {
                                confidence_pct,
                                peak_accel_mg: peak_mg,
                            },
                        ));
                    }
                    FallState::Impacted {
                        at_ms,
                        peak_mg,
                        still_since_ms: Some(since),
                    }
                } else if now_ms - at_ms <= SETTLE_MS {
                    FallState::Impacted {
                        at_ms,
                        peak_mg,
                        still_since_ms: None,
                    }
                } else {
                    // Moving again: the wearer got up, no fall to report.
                    FallState::Upright
                }
            }
        };
        None
    }

    /// One vitals reading.
    pub fn vitals(&mut self, heart_rate_bpm: u32, spo2_pct: u32) -> Option<(Kind, Detail)> {
        let level = if !(40..=150).contains(&heart_rate_bpm) || spo2_pct < 88 {
            VitalsLevel::Critical
        } else if !(50..=120).contains(&heart_rate_bpm) || spo2_pct < 92 {
            VitalsLevel::Warning
        } else {
            VitalsLevel::Normal
        };
        let previous = core::mem::replace(&mut self.vitals, level);
        if level <= previous {
            // Same episode (or recovering): nothing new to say.
            return None;
        }
        let detail = Detail::Vitals {
            heart_rate_bpm,
            spo2_pct,
            body_temp_dc: 0,
        };
        match level {
            VitalsLevel::Critical => Some((Kind::VitalsCritical, detail)),
            VitalsLevel::Warning => Some((Kind::VitalsWarning, detail)),
            VitalsLevel::Normal => None,
        }
    }

    /// A periodic reading, sent as telemetry whatever its level: the
    /// dispatch server judges it against the wearer's own limits.
    pub fn reading(&self, heart_rate_bpm: u32, spo2_pct: u32) -> (Kind, Detail) {
        (
            Kind::Telemetry,
            Detail::Vitals {
                heart_rate_bpm,
                spo2_pct,
                body_temp_dc: 0,
            },
        )
    }

    /// A periodic position report: remembered for a fall, and sent as
    /// telemetry (the server judges it against the wearer's safe zones).
    pub fn fix(&mut self, lat_e7: i32, lon_e7: i32, accuracy_m: u32) -> (Kind, Detail) {
        self.locate(lat_e7, lon_e7, accuracy_m);
        (
            Kind::Telemetry,
            Detail::Location {
                lat_e7,
                lon_e7,
                accuracy_m,
            },
        )
    }

    pub fn locate(&mut self, lat_e7: i32, lon_e7: i32, accuracy_m: u32) {
        self.location = Some((lat_e7, lon_e7, accuracy_m));
    }

    /// Where the wearer was last seen, to send right after a fall.
    pub fn location(&self) -> Option<Detail> {
        self.location
            .map(|(lat_e7, lon_e7, accuracy_m)| Detail::Location {
                lat_e7,
                lon_e7,
                accuracy_m,
            })
    }
}

/// A recorded fall: walking, free fall, impact, lying still (one sample per
/// 100 ms). Used by the simulator's `fall` action and by the tests.
pub const FALL_TRACE_MG: [u32; 40] = [
    1000, 1020, 980, 1010, 990, 1000, // walking
    300, 150, 120, // free fall
    3400, 2100, // impact and bounce
    1000, 1010, 990, 1000, 1005, 995, 1000, 1000, 1010, 990, 1000, 1000, 1000, 1000,
    1000, // still
    1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000,
];

/// Sitting down hard on a chair: an impact-like jolt without free fall.
pub const SIT_DOWN_TRACE_MG: [u32; 12] = [
    1000, 1100, 1400, 1800, 1200, 1000, 1000, 1000, 1000, 1000, 1000, 1000,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(wearable: &mut Wearable, trace: &[u32]) -> std::vec::Vec<(u64, Kind, Detail)> {
        trace
            .iter()
            .enumerate()
            .filter_map(|(i, mg)| {
                let t = i as u64 * 100;
                wearable.accel(t, *mg).map(|(k, d)| (t, k, d))
            })
            .collect()
    }

    #[test]
    fn a_fall_is_detected_once_after_the_wearer_lies_still() {
        let mut wearable = Wearable::new();
        let falls = replay(&mut wearable, &FALL_TRACE_MG);
        assert_eq!(falls.len(), 1, "{falls:?}");
        let (at, kind, detail) = falls[0];
        assert_eq!(kind, Kind::Fall);
        assert!(
            at >= 1000 + STILL_FOR_MS,
            "reported at {at} ms, before lying still 2 s"
        );
        assert_eq!(
            detail,
            Detail::Fall {
                confidence_pct: 78,
                peak_accel_mg: 3400
            }
        );
    }

    #[test]
    fn sitting_down_or_getting_up_is_not_a_fall() {
        let mut wearable = Wearable::new();
        assert!(replay(&mut wearable, &SIT_DOWN_TRACE_MG).is_empty());
        // Free fall and impact, then the wearer walks off.
        let got_up = [1000, 200, 3000, 1000, 1500, 600, 1400, 1000, 1000, 1000];
        assert!(replay(&mut wearable, &got_up).is_empty());
    }

    #[test]
    fn vitals_raise_one_event_per_episode() {
        let mut wearable = Wearable::new();
        assert_eq!(wearable.vitals(72, 97), None);
        assert_eq!(
            wearable.vitals(125, 97).map(|(k, _)| k),
            Some(Kind::VitalsWarning)
        );
        assert_eq!(wearable.vitals(128, 96), None);
        assert_eq!(
            wearable.vitals(35, 85).map(|(k, _)| k),
            Some(Kind::VitalsCritical)
        );
        assert_eq!(wearable.vitals(36, 86), None);
        assert_eq!(wearable.vitals(70, 97), None);
        assert_eq!(
            wearable.vitals(38, 97).map(|(k, _)| k),
            Some(Kind::VitalsCritical)
        );
    }
}
