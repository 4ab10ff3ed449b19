//! The MQTT topic scheme shared by devices, the gateway and the simulator.

pub const PREFIX: &str = "anxin/v1/dev/";
/// Subscription filters the gateway listens on.
pub const EVENT_FILTER: &str = "anxin/v1/dev/+/event";
pub const EVENT_JSON_FILTER: &str = "anxin/v1/dev/+/event/json";
/// Device status: devices set their MQTT last will to `offline` here.
pub const STATUS_FILTER: &str = "anxin/v1/dev/+/status";

pub fn event(device_id: &str) -> String {
    format!("{PREFIX}{device_id}/event")
}
pub fn event_json(device_id: &str) -> String {
    format!("{PREFIX}{device_id}/event/json")
}
pub fn status(device_id: &str) -> String {
    format!("{PREFIX}{device_id}/status")
}
pub fn ack(device_id: &str) -> String {
    format!("{PREFIX}{device_id}/ack")
}
pub fn ack_json(device_id: &str) -> String {
    format!("{PREFIX}{device_id}/ack/json")
}

/// The device id of a status topic.
pub fn parse_status(topic: &str) -> Option<&str> {
    let id = topic.strip_prefix(PREFIX)?.strip_suffix("/status")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Payload encoding, told by the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Parses an event topic into the device id it names and its encoding.
/// Returns `None` for any other topic.
pub fn parse_event(topic: &str) -> Option<(&str, Encoding)> {
    let rest = topic.strip_prefix(PREFIX)?;
    let (device_id, encoding) = if let Some(id) = rest.strip_suffix("/event/json") {
        (id, Encoding::Json)
    } else {
        (rest.strip_suffix("/event")?, Encoding::Protobuf)
    };
    (!device_id.is_empty() && !device_id.contains('/')).then_some((device_id, encoding))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_topics_and_rejects_others() {
        assert_eq!(
            parse_event("anxin/v1/dev/btn-1/event"),
            Some(("btn-1", Encoding::Protobuf))
        );
        assert_eq!(
            parse_event("anxin/v1/dev/btn-1/event/json"),
            Some(("btn-1", Encoding::Json))
        );
        assert_eq!(parse_event("anxin/v1/dev/btn-1/ack"), None);
        assert_eq!(parse_event("anxin/v1/dev//event"), None);
        assert_eq!(parse_event("anxin/v1/dev/a/b/event"), None);
        assert_eq!(parse_event("other/btn-1/event"), None);
        assert_eq!(parse_status("anxin/v1/dev/btn-1/status"), Some("btn-1"));
        assert_eq!(parse_status("anxin/v1/dev/btn-1/event"), None);
    }
}
