//! An MQTT client for tests: publishes raw payloads and collects whatever
//! arrives on its subscriptions.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

pub struct Probe {
    pub client: AsyncClient,
    pub received: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl Probe {
    /// Connects to the gateway's device front as `name` (a device or an
    /// observer the harness registered, with its harness password) and
    /// subscribes to `topics`. The front handles one connection's packets
    /// in order, so the subscriptions are active before anything this probe
    /// publishes next.
    pub async fn connect(mqtt_port: u16, name: &str, topics: &[&str]) -> Self {
        let mut options = MqttOptions::new(name, "127.0.0.1", mqtt_port);
        options.set_max_packet_size(128 * 1024, 128 * 1024);
        options.set_credentials(name, crate::device_password(name));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        for topic in topics {
            client.subscribe(*topic, QoS::AtLeastOnce).await.unwrap();
        }
        let (tx, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Self { client, received }
    }

    /// The next message, waiting up to `within`.
    pub async fn next(&mut self, within: Duration) -> Option<(String, Vec<u8>)> {
        tokio::time::timeout(within, self.received.recv())
            .await
            .ok()
            .flatten()
    }
}

/// Tries to log in to a gateway's device front; returns its verdict.
pub async fn login(
    port: u16,
    user: &str,
    password: &str,
) -> Result<(), rumqttc::ConnectReturnCode> {
    let mut options = MqttOptions::new(format!("login-{user}-{password}"), "127.0.0.1", port);
    options.set_credentials(user, password);
    let (_client, mut eventloop) = AsyncClient::new(options, 4);
    loop {
        match tokio::time::timeout(crate::PATIENCE, eventloop.poll())
            .await
            .expect("a CONNACK")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(other) => panic!("unexpected connection error: {other:?}"),
        }
    }
}
