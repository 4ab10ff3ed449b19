//! Who may publish and subscribe where. Pure: the identity is bound at
//! CONNECT and every PUBLISH, SUBSCRIBE and last will is checked against
//! it (what Mosquitto's `pattern readwrite anxin/v1/dev/%u/#` does, but
//! narrower: a device writes only its event and status topics and reads
//! only its ack topics).

use std::sync::Arc;

use anxin_proto::topics::{self, Encoding};

/// Who is on the other end of a connection, fixed at CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Device(String),
    /// An on-site console or siren: reads the gateway's local alarm topics,
    /// writes nothing.
    Observer {
        name: String,
        topics: Arc<[String]>,
    },
}

impl Identity {
    pub fn name(&self) -> &str {
        match self {
            Identity::Device(id) => id,
            Identity::Observer { name, .. } => name,
        }
    }

    pub fn device(&self) -> Option<&str> {
        match self {
            Identity::Device(id) => Some(id),
            Identity::Observer { .. } => None,
        }
    }
}

/// What a permitted publish is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Event(Encoding),
    Status,
}

/// What a permitted subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Feed {
    Ack(Encoding),
    Local(String),
}

impl Feed {
    pub fn topic(&self, device_id: &str) -> String {
        match self {
            Feed::Ack(Encoding::Protobuf) => topics::ack(device_id),
            Feed::Ack(Encoding::Json) => topics::ack_json(device_id),
            Feed::Local(topic) => topic.clone(),
        }
    }
}

/// May `who` publish on `topic`? Only a device, only on its own event and
/// status topics.
pub fn publish(who: &Identity, topic: &str) -> Option<Route> {
    let Identity::Device(id) = who else {
        return None;
    };
    if let Some((named, encoding)) = topics::parse_event(topic) {
        return (named == id).then_some(Route::Event(encoding));
    }
    (topics::parse_status(topic) == Some(id.as_str())).then_some(Route::Status)
}

/// May `who` subscribe to `filter`? Exact topics only: a device its own ack
/// topics, an observer its local topics. Wildcards are never granted.
pub fn subscribe(who: &Identity, filter: &str) -> Option<Feed> {
    match who {
        Identity::Device(id) => {
            if filter == topics::ack(id) {
                Some(Feed::Ack(Encoding::Protobuf))
            } else if filter == topics::ack_json(id) {
                Some(Feed::Ack(Encoding::Json))
            } else {
                None
            }
        }
        Identity::Observer { topics, .. } => topics
            .iter()
            .any(|t| t == filter)
            .then(|| Feed::Local(filter.to_string())),
    }
}

/// May `who` leave a last will on `topic`? A device on its status topic.
pub fn will(who: &Identity, topic: &str) -> bool {
    matches!(publish(who, topic), Some(Route::Status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> Identity {
        Identity::Device(id.into())
    }

    #[test]
    fn a_device_writes_only_its_own_event_and_status_topics() {
        let me = device("btn-1");
        assert_eq!(
            publish(&me, "anxin/v1/dev/btn-1/event"),
            Some(Route::Event(Encoding::Protobuf))
        );
        assert_eq!(
            publish(&me, "anxin/v1/dev/btn-1/event/json"),
            Some(Route::Event(Encoding::Json))
        );
        assert_eq!(
            publish(&me, "anxin/v1/dev/btn-1/status"),
            Some(Route::Status)
        );
        for foreign in [
            "anxin/v1/dev/btn-2/event",
            "anxin/v1/dev/btn-2/event/json",
            "anxin/v1/dev/btn-2/status",
            "anxin/v1/dev/btn-1/ack",
            "anxin/v1/dev/btn-2/ack/json",
            "anxin/v1/gw/local-alarm",
            "anxin/v1/dev/btn-1/event/extra",
            "anxin/v1/dev/btn-1",
            "#",
            "",
        ] {
            assert_eq!(publish(&me, foreign), None, "{foreign}");
        }
    }

    #[test]
    fn a_device_reads_only_its_own_ack_topics_and_never_a_wildcard() {
        let me = device("btn-1");
        assert_eq!(
            subscribe(&me, "anxin/v1/dev/btn-1/ack"),
            Some(Feed::Ack(Encoding::Protobuf))
        );
        assert_eq!(
            subscribe(&me, "anxin/v1/dev/btn-1/ack/json"),
            Some(Feed::Ack(Encoding::Json))
        );
        for foreign in [
            "#",
            "+",
            "anxin/#",
            "anxin/v1/dev/+/ack",
            "anxin/v1/dev/btn-1/#",
            "anxin/v1/dev/btn-1/+",
            "anxin/v1/dev/btn-2/ack",
            "anxin/v1/dev/btn-1/event",
            "anxin/v1/gw/local-alarm",
            "$SYS/#",
        ] {
            assert_eq!(subscribe(&me, foreign), None, "{foreign}");
        }
        assert!(will(&me, "anxin/v1/dev/btn-1/status"));
        assert!(!will(&me, "anxin/v1/dev/btn-2/status"));
        assert!(!will(&me, "anxin/v1/dev/btn-1/event"));
    }

    #[test]
    fn an_observer_reads_its_local_topics_and_writes_nothing() {
        let siren = Identity::Observer {
            name: "siren".into(),
            topics: Arc::from(vec!["anxin/v1/gw/local-alarm".to_string()]),
        };
        assert_eq!(
            subscribe(&siren, "anxin/v1/gw/local-alarm"),
            Some(Feed::Local("anxin/v1/gw/local-alarm".into()))
        );
        assert_eq!(subscribe(&siren, "anxin/v1/dev/btn-1/ack"), None);
        assert_eq!(subscribe(&siren, "#"), None);
        assert_eq!(publish(&siren, "anxin/v1/dev/siren/event"), None);
        assert_eq!(publish(&siren, "anxin/v1/gw/local-alarm"), None);
        assert!(!will(&siren, "anxin/v1/dev/siren/status"));
    }
}
