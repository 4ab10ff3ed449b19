//! The embedded rumqttd broker that devices connect to.
//!
//! rumqttd acknowledges a QoS1 publish (PUBACK) once the message is in its
//! in-memory log, not on disk, and its in-process link is QoS0: a lagging
//! reader can skip messages. Neither is a promise to the resident. The promise
//! is the application-level `stored` ack that ingest publishes after the
//! journal flush; devices retransmit until they see it.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use rumqttd::{
    Broker, Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings,
    local::{LinkRx, LinkTx},
};

use crate::config::{BROKER_MAX_PAYLOAD, GatewayConfig};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("creating the in-process broker link: {0}")]
    Link(#[from] Box<rumqttd::local::LinkError>),
    #[error("the MQTT listener on {0} did not come up within {1:?}")]
    NotListening(SocketAddr, Duration),
    #[error(transparent)]
    PortUnavailable(#[from] anxin_host::net::BindError),
}

/// The gateway's own connection into the broker.
pub struct BrokerLink {
    pub tx: LinkTx,
    pub rx: LinkRx,
}

/// The per-device ack filters, as rumqttd matches a subscription against
/// its custom segment settings.
const ACK_FILTER: &str = "anxin/v1/dev/+/ack";
const ACK_JSON_FILTER: &str = "anxin/v1/dev/+/ack/json";
/// rumqttd refuses segments under 1 KiB.
const ACK_SEGMENT_BYTES: usize = 4 * 1024;

fn broker_config(config: &GatewayConfig) -> Config {
    // Values follow rumqttd's shipped rumqttd.toml; RouterConfig::default()
    // is all zeros and would drop everything.
    let router = RouterConfig {
        max_connections: config.mqtt.max_connections,
        max_outgoing_packet_count: 10_000,
        // The router keeps up to size x count of publishes in memory per
        // filter (counted in payload bytes; the heap holds ~3x that);
        // ingest reads them within one round, so 1 MB x 4 — half a minute
        // of 2,000 events/s — bounds memory (16 MB segments let a busy
        // gateway grow past 500 MB). A reader that fell further behind
        // loses only unacked publishes, which devices resend.
        max_segment_size: 1024 * 1024,
        max_segment_count: 4,
        // Every device subscribes to its own ack topic, and rumqttd keeps a
        // commit log per subscription filter, trimmed only past size x
        // count: with the defaults above each device's acks could hold
        // 40 MB, and a busy gateway grew ~95 MB a minute without end
        // (BENCHMARKS.md, "gateway memory under steady load"). A device's
        // ack log only has to bridge a short absence: 2 x 4 KiB holds some
        // fifty acks.
        custom_segment: Some(
            [ACK_FILTER, ACK_JSON_FILTER]
                .into_iter()
                .map(|filter| {
                    (
                        filter.to_string(),
                        SegmentConfig {
                            max_segment_size: ACK_SEGMENT_BYTES,
                            max_segment_count: 2,
                        },
                    )
                })
                .collect(),
        ),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    // Username = device id, password from config. rumqttd checks the pair
    // at CONNECT and refuses anything else.
    let auth = config.mqtt.require_auth.then(|| {
        config
            .devices
            .iter()
            .filter_map(|d| Some((d.id.clone(), d.password.clone()?)))
            .collect()
    });
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: BROKER_MAX_PAYLOAD,
        max_inflight_count: 100,
        auth,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "devices-v4".into(),
        listen: config.mqtt.listen,
        tls: None,
        // rumqttd serves all device connections of a listener on one thread
        // and sleeps this long after each accept; after a gateway restart
        // thousands of devices reconnect at once, so do not pace accepts.
        next_connection_delay_ms: 0,
        connections,
    };
    Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("devices".to_string(), server)])),
        ..Default::default()
    }
}

/// Starts the broker on its own OS thread (rumqttd runs a runtime per
/// listener and blocks) and returns the gateway's link, already subscribed to
/// the device event topics.
pub fn start(config: &GatewayConfig) -> Result<BrokerLink, BrokerError> {
    check_port(config)?;
    let mut broker = Broker::new(broker_config(config));
    let (mut tx, rx) = broker.link("anxin-gateway").map_err(Box::new)?;
    tx.subscribe(anxin_proto::topics::EVENT_FILTER)
        .map_err(Box::new)?;
    tx.subscribe(anxin_proto::topics::EVENT_JSON_FILTER)
        .map_err(Box::new)?;
    tx.subscribe(anxin_proto::topics::STATUS_FILTER)
        .map_err(Box::new)?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(err) = broker.start() {
                tracing::error!(error = %err, "embedded MQTT broker stopped");
                // Without the broker no device can reach us: exit so the
                // supervisor (systemd) restarts the gateway.
                std::process::exit(70);
            }
        })
        .expect("spawning the broker thread");
    Ok(BrokerLink { tx, rx })
}

/// Fails if the device port cannot be bound. rumqttd logs a bind failure
/// and carries on, and then a test connect reaches whoever holds the port
/// (a Mosquitto, say): check that the port is ours first. The probe is
/// closed before rumqttd binds; a thief in that gap is caught by nobody, but
/// a port held before start-up always is. main.rs checks before anything
/// slow, so the error comes at once.
pub fn check_port(config: &GatewayConfig) -> Result<(), BrokerError> {
    std::net::TcpListener::bind(config.mqtt.listen)
        .map(drop)
        .map_err(|source| {
            anxin_host::net::BindError {
                addr: config.mqtt.listen,
                field: "mqtt.listen",
                source,
            }
            .into()
        })
}

/// Turns off Nagle for every device connection. rumqttd does not set
/// TCP_NODELAY on the sockets it accepts, so a device that already sent
/// once waited ~40 ms for each `stored` ack (Nagle and the device's delayed
/// ACK); Linux gives accepted sockets the listener's TCP_NODELAY, and the
/// listener is found among this process's sockets.
pub fn set_nodelay(addr: SocketAddr) {
    match anxin_host::net::set_nodelay_on_listeners(addr.port()) {
        Ok(0) => {
            tracing::warn!(%addr, "no device listener found to set TCP_NODELAY on; acks may wait ~40 ms")
        }
        Ok(_) => tracing::debug!(%addr, "TCP_NODELAY set on the device listener"),
        Err(err) => {
            tracing::warn!(%addr, error = %err, "setting TCP_NODELAY on the device listener failed; acks may wait ~40 ms")
        }
    }
}

/// Waits until this process listens on the device port, so that
/// `/healthz` answering means devices can connect. (Looked up in the
/// kernel's socket table: a test connect would make rumqttd log an error.)
pub async fn wait_listening(addr: SocketAddr, within: Duration) -> Result<(), BrokerError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let listening = match anxin_host::net::listening_here(addr.port()) {
            Ok(listening) => listening,
            Err(_) => tokio::net::TcpStream::connect(addr).await.is_ok(),
        };
        if listening {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BrokerError::NotListening(addr, within));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
