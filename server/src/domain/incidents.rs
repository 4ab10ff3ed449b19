//! Incidents: which alert an event belongs to.
//!
//! A resident's alarm events correlate into one open alert while they keep
//! coming within the correlation window (an SOS then a fall is one incident,
//! its priority the highest of its events); a CANCEL within the grace period
//! of the alert's creation cancels it. Events of a device the directory does
//! not know correlate by device instead of resident.
//!
//! Pure decisions over the open alert; the store applies them inside the
//! event's commit transaction, so correlation is as exactly-once as the
//! event itself.

use anxin_proto::{
    DeviceEvent, EventKind, Priority,
    v1::{Alert, AlertEvent, AlertNote, AlertState},
};

use crate::domain::lifecycle;

#[derive(Debug, Clone, Copy)]
pub struct IncidentPolicy {
    /// An open alert absorbs a new alarm event only if its latest event is
    /// at most this old; later, the event opens a new incident.
    pub window_ms: i64,
    /// A resident's cancel this soon after the alert was raised cancels it.
    pub cancel_grace_ms: i64,
}

/// Who an event is about, as the directory knows it (empty if unknown).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub resident_id: String,
    pub community_id: String,
    /// Shown on the alert (see `Alert.resident_name` and the rest).
    pub resident_name: String,
    pub community_name: String,
    pub address: String,
    pub device_kind: String,
    /// Where the device was: the raising event's fix, or its last known.
    pub position: Option<anxin_proto::v1::Position>,
    /// Fixes that led up to the alarm (a resident who left their safe
    /// zone): the alert's track from its start.
    pub track: Vec<anxin_proto::v1::Position>,
}

impl Origin {
    /// The key incidents correlate on.
    pub fn incident_key(&self, device_id: &str) -> String {
        if self.resident_id.is_empty() {
            format!("device/{device_id}")
        } else {
            format!("resident/{}", self.resident_id)
        }
    }
}

/// Kinds that need a person: every P0 and the P1s about the resident or the
/// device's ability to call. CANCEL and DEVICE_ONLINE only ever act on an
/// existing alert.
pub fn raises_alert(kind: EventKind) -> bool {
    use EventKind::*;
    matches!(
        kind,
        Sos | Fall
            | Smoke
            | Gas
            | VitalsCritical
            | Inactivity
            | VitalsWarning
            | DeviceOffline
            | Tamper
            | GatewayFault
            | CheckinMissed
            | LeftSafeZone
            | HouseholdSilent
            | HouseholdUnusual
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not an incident event, and no alert to attach to.
    Nothing,
    Raise,
    Attach {
        priority_raised: bool,
    },
    Cancel,
    /// A cancel that came too late (or after a carer set off): kept on the
    /// alert as a note, the alert stays open.
    CancelRefused,
}

/// Whether [`decide`] can do anything but [`Decision::Nothing`] with this
/// event, whatever alert is open.
pub fn affects_incidents(event: &DeviceEvent) -> bool {
    event
        .known_kind()
        .is_some_and(|kind| kind == EventKind::Cancel || raises_alert(kind))
}

pub fn decide(
    event: &DeviceEvent,
    open: Option<&Alert>,
    now_ms: i64,
    policy: &IncidentPolicy,
) -> Decision {
    let Some(kind) = event.known_kind() else {
        return Decision::Nothing;
    };
    let open = open.filter(|a| lifecycle::is_open(a.state()));
    if kind == EventKind::Cancel {
        return match open {
            None => Decision::Nothing,
            Some(alert)
                if now_ms - alert.created_ms <= policy.cancel_grace_ms
                    && lifecycle::check(alert.state(), AlertState::Cancelled).is_ok() =>
            {
                Decision::Cancel
            }
            Some(_) => Decision::CancelRefused,
        };
    }
    if !raises_alert(kind) {
        return Decision::Nothing;
    }
    match open {
        Some(alert)
            if now_ms - alert.last_event_ms <= policy.window_ms || same_episode(event, alert) =>
        {
            Decision::Attach {
                priority_raised: (event.priority() as i32) < alert.priority,
            }
        }
        _ => Decision::Raise,
    }
}

/// A server rule's later step of an episode already on the alert (a
/// reading that stayed low for an hour and then crossed the critical
/// limit): it joins the alert however long the episode took. The rule
/// numbers its raises `episode << 2 | level`.
fn same_episode(event: &DeviceEvent, alert: &Alert) -> bool {
    anxin_proto::is_server_source(&event.device_id)
        && alert
            .events
            .iter()
            .any(|e| e.device_id == event.device_id && e.seq >> 2 == event.seq >> 2)
}

fn event_ref(event: &DeviceEvent, now_ms: i64) -> AlertEvent {
    AlertEvent {
        device_id: event.device_id.clone(),
        seq: event.seq,
        kind: event.kind,
        received_ms: now_ms,
    }
}

/// A new alert for `event`.
pub fn raise(
    id: u64,
    event: &DeviceEvent,
    gateway_id: &str,
    origin: &Origin,
    now_ms: i64,
) -> Alert {
    Alert {
        id: id.to_string(),
        device_id: event.device_id.clone(),
        seq: event.seq,
        kind: event.kind,
        priority: event.priority() as i32,
        state: AlertState::New as i32,
        gateway_id: gateway_id.to_string(),
        device_time_ms: event.device_time_ms,
        created_ms: now_ms,
        battery_pct: event.battery_pct,
        resident_id: origin.resident_id.clone(),
        community_id: origin.community_id.clone(),
        resident_name: origin.resident_name.clone(),
        community_name: origin.community_name.clone(),
        address: origin.address.clone(),
        device_kind: origin.device_kind.clone(),
        position: origin.position.clone(),
        track: origin.track.clone(),
        events: vec![event_ref(event, now_ms)],
        last_event_ms: now_ms,
        notes: gateway_note(event, now_ms).into_iter().collect(),
        ..Default::default()
    }
}

/// The text a gateway attached to an event it raised about itself (a
/// damaged journal, say), as a note a person reads on the alert.
fn gateway_note(event: &DeviceEvent, now_ms: i64) -> Option<AlertNote> {
    (!event.note.is_empty()).then(|| AlertNote {
        at_ms: now_ms,
        // The server's own events (a missed check-in, a rule on readings)
        // speak as the system, a gateway about itself under its id.
        by: if anxin_proto::is_server_source(&event.device_id) {
            "system".into()
        } else {
            event.device_id.clone()
        },
        text: event.note.clone(),
    })
}

/// Applies an Attach/Cancel/CancelRefused decision to the open alert.
pub fn apply(decision: Decision, alert: &mut Alert, event: &DeviceEvent, now_ms: i64) {
    alert.events.push(event_ref(event, now_ms));
    alert.notes.extend(gateway_note(event, now_ms));
    if event.battery_pct > 0 {
        alert.battery_pct = event.battery_pct;
    }
    match decision {
        Decision::Attach { priority_raised } => {
            alert.last_event_ms = now_ms;
            if priority_raised {
                alert.priority = event.priority() as i32;
                // The headline follows the most serious event.
                alert.kind = event.kind;
            }
        }
        Decision::Cancel => {
            alert.set_state(AlertState::Cancelled);
            alert.cancelled_ms = now_ms;
            alert.outcome = "cancelled_by_resident".into();
            alert.offer_deadline_ms = 0;
        }
        Decision::CancelRefused => alert.notes.push(AlertNote {
            at_ms: now_ms,
            by: "system".into(),
            text: "the resident pressed cancel, too late to stand the response down".into(),
        }),
        Decision::Nothing | Decision::Raise => {}
    }
}

/// Short name of a decision, for the audit log.
pub fn action_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Nothing => "none",
        Decision::Raise => "alert.raise",
        Decision::Attach { .. } => "alert.attach",
        Decision::Cancel => "alert.cancel",
        Decision::CancelRefused => "alert.cancel_refused",
    }
}

pub fn priority_name(priority: i32) -> &'static str {
    Priority::try_from(priority).map_or("P?", |p| match p {
        Priority::P0 => "P0",
        Priority::P1 => "P1",
        Priority::P2 => "P2",
        Priority::P3 => "P3",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: IncidentPolicy = IncidentPolicy {
        window_ms: 600_000,
        cancel_grace_ms: 60_000,
    };

    fn event(kind: EventKind) -> DeviceEvent {
        DeviceEvent {
            device_id: "wear-1".into(),
            seq: 1,
            kind: kind as i32,
            ..Default::default()
        }
    }

    fn open_alert(kind: EventKind, created_ms: i64) -> Alert {
        raise(1, &event(kind), "gw", &Origin::default(), created_ms)
    }

    #[test]
    fn an_sos_then_a_fall_is_one_incident() {
        let alert = open_alert(EventKind::Sos, 0);
        assert_eq!(
            decide(&event(EventKind::Fall), Some(&alert), 5_000, &POLICY),
            Decision::Attach {
                priority_raised: false
            }
        );
    }

    #[test]
    fn a_fall_raises_an_inactivity_alert_to_p0() {
        let mut alert = open_alert(EventKind::Inactivity, 0);
        let fall = event(EventKind::Fall);
        let decision = decide(&fall, Some(&alert), 5_000, &POLICY);
        assert_eq!(
            decision,
            Decision::Attach {
                priority_raised: true
            }
        );
        apply(decision, &mut alert, &fall, 5_000);
        assert_eq!(alert.priority, Priority::P0 as i32);
        assert_eq!(alert.kind, EventKind::Fall as i32);
        assert_eq!(alert.events.len(), 2);
    }

    #[test]
    fn a_rules_later_step_joins_its_episode_however_long_it_took() {
        let rule = |seq: u64, kind: EventKind| DeviceEvent {
            device_id: "vitals/r-1/spo2".into(),
            seq,
            kind: kind as i32,
            ..Default::default()
        };
        let episode = 1_000u64 << 2;
        let alert = raise(
            1,
            &rule(episode | 1, EventKind::VitalsWarning),
            "",
            &Origin::default(),
            0,
        );
        // Two hours later, far past the window: the same episode's step up.
        let later = 2 * 3_600_000;
        assert_eq!(
            decide(
                &rule(episode | 2, EventKind::VitalsCritical),
                Some(&alert),
                later,
                &POLICY
            ),
            Decision::Attach {
                priority_raised: true
            }
        );
        // Another episode of the same rule, or a device, that late: a new one.
        let next = (5_000u64 << 2) | 1;
        assert_eq!(
            decide(
                &rule(next, EventKind::VitalsWarning),
                Some(&alert),
                later,
                &POLICY
            ),
            Decision::Raise
        );
        assert_eq!(
            decide(&event(EventKind::Fall), Some(&alert), later, &POLICY),
            Decision::Raise
        );
    }

    #[test]
    fn outside_the_window_or_after_closing_a_new_incident_opens() {
        let alert = open_alert(EventKind::Sos, 0);
        let late = POLICY.window_ms + 1;
        assert_eq!(
            decide(&event(EventKind::Fall), Some(&alert), late, &POLICY),
            Decision::Raise
        );
        let mut closed = alert.clone();
        closed.set_state(AlertState::Resolved);
        assert_eq!(
            decide(&event(EventKind::Fall), Some(&closed), 1, &POLICY),
            Decision::Raise
        );
    }

    #[test]
    fn cancel_within_grace_cancels_and_after_it_is_only_noted() {
        let mut alert = open_alert(EventKind::Sos, 0);
        let cancel = event(EventKind::Cancel);
        assert_eq!(
            decide(&cancel, Some(&alert), POLICY.cancel_grace_ms, &POLICY),
            Decision::Cancel
        );
        assert_eq!(
            decide(&cancel, Some(&alert), POLICY.cancel_grace_ms + 1, &POLICY),
            Decision::CancelRefused
        );
        alert.set_state(AlertState::EnRoute);
        assert_eq!(
            decide(&cancel, Some(&alert), 1, &POLICY),
            Decision::CancelRefused
        );
        assert_eq!(decide(&cancel, None, 1, &POLICY), Decision::Nothing);
    }

    #[test]
    fn routine_events_raise_nothing() {
        for kind in [
            EventKind::Heartbeat,
            EventKind::Telemetry,
            EventKind::LowBattery,
            EventKind::TestCall,
            EventKind::DeviceOnline,
        ] {
            assert_eq!(decide(&event(kind), None, 0, &POLICY), Decision::Nothing);
        }
    }
}
