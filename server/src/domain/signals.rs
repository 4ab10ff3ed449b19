//! What the health and safety rules share: their numbers (`[signals]`),
//! the names of their sources — each rule's events and stored state are
//! keyed alike, `vitals/{resident}/{sign}`, `zone/{resident}`,
//! `meter/{resident}/{kind}` — and the stored state's envelope, which
//! remembers the last reading judged of each device so a resent reading
//! is never judged twice (after a kill, another replica's retry).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::vitals::EpisodeRules;

/// The rules' numbers, from the config.
#[derive(Debug, Clone, Copy)]
pub struct SignalRules {
    pub enabled: bool,
    pub episode: EpisodeRules,
    pub zone_fixes: u32,
    /// How often the household meters' silence is judged.
    pub meter_check: std::time::Duration,
}

impl Default for SignalRules {
    fn default() -> Self {
        Self {
            enabled: true,
            episode: EpisodeRules {
                readings: 3,
                out_ms: 300_000,
                clear_readings: 3,
            },
            zone_fixes: 3,
            meter_check: std::time::Duration::from_secs(60),
        }
    }
}

pub const VITALS: &str = "vitals/";
pub const ZONE: &str = "zone/";
pub const METER: &str = "meter/";

pub fn vitals_source(resident_id: &str, sign: &str) -> String {
    format!("{VITALS}{resident_id}/{sign}")
}

pub fn zone_source(resident_id: &str) -> String {
    format!("{ZONE}{resident_id}")
}

pub fn meter_source(resident_id: &str, kind: &str) -> String {
    format!("{METER}{resident_id}/{kind}")
}

/// A rule's state as stored: the rule's own value and, per device, the
/// seq of the last reading judged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stored<T> {
    pub seen: BTreeMap<String, u64>,
    pub state: Option<T>,
}

impl<T: Serialize + for<'de> Deserialize<'de>> Stored<T> {
    /// A stored state that does not read as this rule's (a build that
    /// changed it) starts afresh: the worst is one episode counted again.
    pub fn decode(bytes: Option<&[u8]>) -> Self {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Self {
                seen: BTreeMap::new(),
                state: None,
            })
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether this reading is new here (and marks it judged).
    pub fn first_time(&mut self, device_id: &str, seq: u64) -> bool {
        match self.seen.get(device_id) {
            Some(&last) if seq <= last => false,
            _ => {
                self.seen.insert(device_id.to_string(), seq);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_judged_once_and_a_bad_state_starts_afresh() {
        let mut stored: Stored<u32> = Stored::decode(None);
        assert!(stored.first_time("w-1", 5));
        assert!(!stored.first_time("w-1", 5));
        assert!(!stored.first_time("w-1", 4));
        assert!(stored.first_time("w-2", 1));
        stored.state = Some(7);
        let back: Stored<u32> = Stored::decode(Some(&stored.encode()));
        assert_eq!((back.state, back.seen.len()), (Some(7), 2));
        let bad: Stored<u32> = Stored::decode(Some(b"{not json"));
        assert_eq!((bad.state, bad.seen.len()), (None, 0));
        assert_eq!(vitals_source("r-1", "spo2"), "vitals/r-1/spo2");
        assert!(anxin_proto::is_server_source(&zone_source("r-1")));
    }
}
