//! The dispatch rules the desks apply, as the config gives them.

use anxin_proto::v1::Priority;

use crate::domain::incidents::IncidentPolicy;

/// The dispatch rules from the config.
#[derive(Debug, Clone)]
pub struct DeskPolicy {
    pub incidents: IncidentPolicy,
    /// Time to acknowledge an offer, by priority (P0, P1; P2/P3 use P1's).
    pub p0_deadline_ms: i64,
    pub p1_deadline_ms: i64,
    pub utc_offset_minutes: i32,
    /// Where the last step of the chain goes; empty: logged only.
    pub emergency_hook: String,
    /// The family call-out (`[family]`).
    pub callout: crate::domain::family::CalloutRules,
    /// Health and safety signals (`[signals]`).
    pub signals: crate::domain::signals::SignalRules,
}

impl DeskPolicy {
    pub fn deadline_ms(&self, priority: i32) -> i64 {
        if priority == Priority::P0 as i32 {
            self.p0_deadline_ms
        } else {
            self.p1_deadline_ms
        }
    }
}
