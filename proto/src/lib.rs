//! Anxin's wire contracts, generated from `proto/anxin/v1/*.proto`.
//!
//! Also owns the two rules every process must agree on: the priority of each
//! event kind, and the MQTT topic scheme (see docs/protocol.md).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/anxin.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/anxin.v1.serde.rs"));
}

pub mod topics;

pub use v1::{AckKind, DeviceAck, DeviceEvent, EventKind, Priority};

/// The fixed priority of an event kind (design.md, guarantee 4).
pub fn priority_of(kind: EventKind) -> Priority {
    use EventKind::*;
    match kind {
        Sos | Fall | Smoke | Gas | VitalsCritical | LeftSafeZone => Priority::P0,
        Inactivity | VitalsWarning | DeviceOffline | DeviceOnline | Tamper | Cancel
        | GatewayFault | CheckinMissed => Priority::P1,
        LowBattery | DeviceFault | CheckinOk | HouseholdSilent | HouseholdUnusual => Priority::P2,
        Telemetry | Heartbeat | TestCall | Unspecified => Priority::P3,
    }
}

/// Kinds only the dispatch server raises, from what it knows of a
/// resident (a check-in window, a safe zone, a household meter): a device
/// or gateway sending one is refused.
pub fn raised_by_server(kind: EventKind) -> bool {
    use EventKind::*;
    matches!(
        kind,
        CheckinMissed | LeftSafeZone | HouseholdSilent | HouseholdUnusual
    )
}

/// Whether a device id names one of the server's own sources
/// (`checkin/{resident}`, `vitals/{resident}/{sign}`, `zone/{resident}`,
/// `meter/{resident}/{kind}`): a real device's id never holds a `/` (it is
/// a level of its MQTT topic), so these can never be a device's.
pub fn is_server_source(device_id: &str) -> bool {
    device_id.contains('/')
}

impl DeviceEvent {
    /// The kind, or `None` when the number is not one this build knows.
    pub fn known_kind(&self) -> Option<EventKind> {
        EventKind::try_from(self.kind).ok()
    }

    /// Priority of this event; unknown kinds rank lowest.
    pub fn priority(&self) -> Priority {
        self.known_kind().map_or(Priority::P3, priority_of)
    }
}

/// First sequence number of the range the gateway uses for events it raises
/// on a device's behalf; devices number their own events below it.
pub const GATEWAY_SEQ_BASE: u64 = 1 << 63;

/// Milliseconds since the Unix epoch, the time unit of every Anxin message.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The encoded descriptor set of all Anxin protos (for gRPC reflection and
/// tools).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/anxin_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn life_safety_kinds_are_p0_and_routine_kinds_p3() {
        assert_eq!(priority_of(EventKind::Sos), Priority::P0);
        assert_eq!(priority_of(EventKind::Fall), Priority::P0);
        assert_eq!(priority_of(EventKind::DeviceOffline), Priority::P1);
        assert_eq!(priority_of(EventKind::LowBattery), Priority::P2);
        assert_eq!(priority_of(EventKind::Heartbeat), Priority::P3);
        assert_eq!(priority_of(EventKind::GatewayFault), Priority::P1);
        assert_eq!(priority_of(EventKind::CheckinMissed), Priority::P1);
        assert_eq!(priority_of(EventKind::CheckinOk), Priority::P2);
        assert_eq!(priority_of(EventKind::LeftSafeZone), Priority::P0);
        assert_eq!(priority_of(EventKind::HouseholdSilent), Priority::P2);
        assert!(raised_by_server(EventKind::HouseholdUnusual));
        assert!(!raised_by_server(EventKind::VitalsWarning));
        assert!(is_server_source("vitals/r-1/spo2") && !is_server_source("wear-1"));
    }

    #[test]
    fn device_event_round_trips_through_proto3_json() {
        let event = DeviceEvent {
            device_id: "btn-1".into(),
            seq: 7,
            kind: EventKind::Sos as i32,
            device_time_ms: 1_700_000_000_000,
            battery_pct: 80,
            detail: None,
            cancels_seq: 0,
            note: String::new(),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains("\"kind\":\"EVENT_KIND_SOS\""), "{json}");
        // proto3 JSON writes 64-bit integers as strings.
        assert!(json.contains("\"seq\":\"7\""), "{json}");
        let back: DeviceEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event);
        // Integrators may write numbers for 64-bit fields too.
        let loose: DeviceEvent = serde_json::from_str(
            r#"{"deviceId":"btn-1","seq":7,"kind":"EVENT_KIND_SOS","deviceTimeMs":"1700000000000","batteryPct":80}"#,
        )
        .unwrap();
        assert_eq!(loose, event);
    }
}
