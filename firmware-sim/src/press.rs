//! `anxin-sim press`: one device, one event, the way firmware does it.
//!
//! The event stays in the device's retry loop until the gateway's `stored`
//! ack arrives (rumqttd's PUBACK only means "in the broker's memory"); then
//! the device waits for `acknowledged`, "help is coming".

use std::time::{Duration, Instant};

use anxin_proto::{AckKind, DeviceAck, DeviceEvent, EventKind, now_ms, topics};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::config::SimConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    Stored,
    Acknowledged,
}

pub struct Press {
    pub device_id: String,
    pub kind: EventKind,
    pub seq: u64,
    pub battery_pct: u32,
    pub json: bool,
    pub until: Until,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PressError {
    #[error("the gateway rejected the event: {0}")]
    Rejected(String),
    #[error("no {0} ack within {1:?}")]
    Timeout(&'static str, Duration),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("MQTT client: {0}")]
    Client(#[from] rumqttc::ClientError),
}

pub async fn run(config: &SimConfig, press: Press) -> Result<(), PressError> {
    let (host, port) = config.gateway_addr()?;
    let mut options = MqttOptions::new(format!("anxin-sim-{}", press.device_id), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    if let (Some(user), Some(pass)) = (&config.username, &config.password) {
        options.set_credentials(user, pass);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 64);

    let event = DeviceEvent {
        device_id: press.device_id.clone(),
        seq: press.seq,
        kind: press.kind as i32,
        device_time_ms: now_ms(),
        battery_pct: press.battery_pct,
        ..Default::default()
    };
    let (topic, payload) = if press.json {
        (
            topics::event_json(&press.device_id),
            serde_json::to_vec(&event).expect("event serializes"),
        )
    } else {
        (topics::event(&press.device_id), event.encode_to_vec())
    };
    let ack_topic = topics::ack(&press.device_id);

    println!(
        "pressed device={} seq={} kind={}",
        press.device_id,
        press.seq,
        press.kind.as_str_name()
    );
    let started = Instant::now();
    let retry_every = Duration::from_millis(config.retry_ms);
    let mut next_retry = tokio::time::Instant::now() + retry_every;
    let mut stored = false;
    loop {
        if started.elapsed() > press.timeout {
            let waiting = if stored { "acknowledged" } else { "stored" };
            return Err(PressError::Timeout(waiting, press.timeout));
        }
        let polled = tokio::select! {
            polled = eventloop.poll() => polled,
            _ = tokio::time::sleep_until(next_retry) => {
                if !stored {
                    tracing::info!(seq = press.seq, "no stored ack yet; retransmitting");
                    client.try_publish(&topic, QoS::AtLeastOnce, false, payload.clone())?;
                }
                next_retry = tokio::time::Instant::now() + retry_every;
                continue;
            }
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Clean session: subscribe and (re)send on every connect.
                client.try_subscribe(&ack_topic, QoS::AtLeastOnce)?;
                if !stored {
                    client.try_publish(&topic, QoS::AtLeastOnce, false, payload.clone())?;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == ack_topic => {
                let Ok(ack) = DeviceAck::decode(publish.payload.as_ref()) else {
                    tracing::warn!("undecodable ack ignored");
                    continue;
                };
                let latency_ms = started.elapsed().as_millis();
                match ack.kind() {
                    AckKind::Rejected => return Err(PressError::Rejected(ack.message)),
                    AckKind::Stored if ack.seq == press.seq && !stored => {
                        stored = true;
                        println!("stored seq={} latency_ms={latency_ms}", ack.seq);
                        if press.until == Until::Stored {
                            return Ok(());
                        }
                    }
                    AckKind::Acknowledged if ack.seq == press.seq => {
                        println!(
                            "acknowledged seq={} alert={} latency_ms={latency_ms} message=\"{}\"",
                            ack.seq, ack.alert_id, ack.message
                        );
                        return Ok(());
                    }
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(err) => {
                // The gateway may be restarting: keep trying, like a device.
                tracing::warn!(error = %err, "gateway connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
