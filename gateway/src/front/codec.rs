//! MQTT 3.1.1 and 5 framing for the device front, on the codec of the rumqtt
//! family (rumqttc's `mqttbytes`, v4 and v5). Everything a device sends is
//! parsed here, so this is the fuzzed surface (`gateway/fuzz`): any byte
//! string gives a packet, "need more bytes" or an error — never a panic.
//!
//! The two versions differ in details (properties, reason codes, a v5
//! DISCONNECT may be two bytes); the connection task sees one small
//! vocabulary, [`Inbound`] in and [`Codec`]'s writers out.

use bytes::{Bytes, BytesMut};
use rumqttc::{
    mqttbytes::{self as m3, v4},
    v5::mqttbytes::{self as m5, v5},
};

/// The protocol a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// What a device sent, in either version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Connect(Connect),
    Publish(Publish),
    PubAck {
        pkid: u16,
    },
    PubRec {
        pkid: u16,
    },
    PubRel {
        pkid: u16,
    },
    PubComp {
        pkid: u16,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    /// `with_will`: a v5 DISCONNECT with reason 0x04 asks for the will.
    Disconnect {
        with_will: bool,
    },
    /// A packet a device has no business sending (CONNACK, SUBACK, AUTH, …).
    Unexpected(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub keep_alive_secs: u16,
    /// 3.1.1 clean session / v5 clean start.
    pub clean_start: bool,
    /// v5 session expiry interval; `None` in 3.1.1 (a persistent session
    /// there lasts until a clean one replaces it).
    pub session_expiry_secs: Option<u32>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub will: Option<Will>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub pkid: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("MQTT 3.1.1 framing: {0}")]
    V311(#[from] m3::Error),
    #[error("MQTT 5 framing: {0}")]
    V5(#[from] m5::Error),
    #[error("protocol level {0} is not supported (MQTT 3.1.1 = 4, MQTT 5 = 5)")]
    UnsupportedLevel(u8),
    #[error("the first packet must be CONNECT")]
    NotConnect,
    #[error("a topic is not UTF-8")]
    TopicNotUtf8,
    #[error("packet of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
}

impl CodecError {
    /// The label on the refusal counter.
    pub fn label(&self) -> &'static str {
        match self {
            CodecError::UnsupportedLevel(_) => "protocol_version",
            CodecError::TooLarge { .. } => "packet_too_large",
            _ => "malformed_packet",
        }
    }
}

/// Reads the protocol level of a CONNECT at the head of `stream` without
/// consuming it. `Ok(None)`: not enough bytes yet.
pub fn connect_level(stream: &[u8], max_size: usize) -> Result<Option<u8>, CodecError> {
    let Some(&first) = stream.first() else {
        return Ok(None);
    };
    if first >> 4 != 1 {
        return Err(CodecError::NotConnect);
    }
    // Remaining length: up to four 7-bit groups.
    let mut len = 0usize;
    let mut at = 1;
    loop {
        let Some(&byte) = stream.get(at) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * (at - 1));
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(m3::Error::MalformedRemainingLength.into());
        }
    }
    if len > max_size {
        return Err(CodecError::TooLarge {
            size: len,
            limit: max_size,
        });
    }
    // Protocol name (two-byte length, "MQTT" or "MQIsdp"), then the level.
    let (Some(&hi), Some(&lo)) = (stream.get(at), stream.get(at + 1)) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    if name_len > len {
        return Err(m3::Error::MalformedPacket.into());
    }
    Ok(stream.get(at + 2 + name_len).copied())
}

/// One connection's codec: which version, and the largest packet accepted.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    pub version: Version,
    pub max_packet: usize,
}

impl Codec {
    /// Reads the CONNECT that opens a connection and fixes the version.
    /// `Ok(None)`: more bytes needed.
    pub fn read_connect(
        stream: &mut BytesMut,
        max_packet: usize,
    ) -> Result<Option<(Codec, Connect)>, CodecError> {
        let Some(level) = connect_level(stream, max_packet)? else {
            return Ok(None);
        };
        let version = match level {
            4 => Version::V311,
            5 => Version::V5,
            other => return Err(CodecError::UnsupportedLevel(other)),
        };
        let codec = Codec {
            version,
            max_packet,
        };
        match codec.read(stream)? {
            None => Ok(None),
            Some(Inbound::Connect(connect)) => Ok(Some((codec, connect))),
            Some(_) => Err(CodecError::NotConnect),
        }
    }

    /// Reads the next packet. `Ok(None)`: more bytes needed.
    pub fn read(&self, stream: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        match self.version {
            Version::V311 => match v4::Packet::read(stream, self.max_packet) {
                Ok(packet) => Ok(Some(from_v4(packet)?)),
                Err(m3::Error::InsufficientBytes(_)) => Ok(None),
                Err(m3::Error::PayloadSizeLimitExceeded(size)) => Err(CodecError::TooLarge {
                    size,
                    limit: self.max_packet,
                }),
                Err(err) => Err(err.into()),
            },
            Version::V5 => {
                // A v5 DISCONNECT may omit its reason (normal); the codec
                // insists on one.
                if stream.len() >= 2 && stream[0] == 0xE0 && stream[1] == 0 {
                    let _ = stream.split_to(2);
                    return Ok(Some(Inbound::Disconnect { with_will: false }));
                }
                match v5::Packet::read(stream, Some(self.max_packet as u32)) {
                    Ok(packet) => Ok(Some(from_v5(packet)?)),
                    Err(m5::Error::InsufficientBytes(_)) => Ok(None),
                    Err(m5::Error::PayloadSizeLimitExceeded { pkt_size, .. }) => {
                        Err(CodecError::TooLarge {
                            size: pkt_size,
                            limit: self.max_packet,
                        })
                    }
                    Err(err) => Err(err.into()),
                }
            }
        }
    }

    /// `assigned`: the client id the front gave a client that sent none
    /// (MQTT 5 tells it in the CONNACK; 3.1.1 has no way to).
    pub fn connack(
        &self,
        out: &mut BytesMut,
        answer: ConnAnswer,
        session_present: bool,
        assigned: Option<&str>,
    ) {
        match self.version {
            Version::V311 => {
                let code = match answer {
                    ConnAnswer::Accepted => v4::ConnectReturnCode::Success,
                    ConnAnswer::BadCredentials => v4::ConnectReturnCode::BadUserNamePassword,
                    ConnAnswer::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                    ConnAnswer::Busy => v4::ConnectReturnCode::ServiceUnavailable,
                    ConnAnswer::BadClientId => v4::ConnectReturnCode::BadClientId,
                };
                write4(
                    out,
                    v4::Packet::ConnAck(v4::ConnAck::new(code, session_present)),
                );
            }
            Version::V5 => {
                let code = match answer {
                    ConnAnswer::Accepted => v5::ConnectReturnCode::Success,
                    ConnAnswer::BadCredentials => v5::ConnectReturnCode::BadUserNamePassword,
                    ConnAnswer::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                    ConnAnswer::Busy => v5::ConnectReturnCode::ServerBusy,
                    ConnAnswer::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                };
                // Tell a v5 device what this front does not do, so it never
                // tries: no retained messages, no wildcards, no shared
                // subscriptions, no topic aliases.
                let properties = v5::ConnAckProperties {
                    session_expiry_interval: None,
                    receive_max: Some(RECEIVE_MAXIMUM),
                    max_qos: Some(1),
                    retain_available: Some(0),
                    max_packet_size: Some(self.max_packet as u32),
                    assigned_client_identifier: assigned.map(str::to_string),
                    topic_alias_max: Some(0),
                    reason_string: None,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: Some(0),
                    subscription_identifiers_available: Some(0),
                    shared_subscription_available: Some(0),
                    server_keep_alive: None,
                    response_information: None,
                    server_reference: None,
                    authentication_method: None,
                    authentication_data: None,
                };
                write5(
                    out,
                    v5::Packet::ConnAck(v5::ConnAck {
                        session_present,
                        code,
                        properties: (answer == ConnAnswer::Accepted).then_some(properties),
                    }),
                );
            }
        }
    }

    /// PUBACK; `refused` sends "not authorized" in v5 (3.1.1 has no code:
    /// the caller disconnects instead).
    pub fn puback(&self, out: &mut BytesMut, pkid: u16, refused: bool) {
        match self.version {
            Version::V311 => write4(out, v4::Packet::PubAck(v4::PubAck::new(pkid))),
            Version::V5 => {
                let mut ack = v5::PubAck::new(pkid, None);
                if refused {
                    ack.reason = v5::PubAckReason::NotAuthorized;
                }
                write5(out, v5::Packet::PubAck(ack));
            }
        }
    }

    pub fn pubrec(&self, out: &mut BytesMut, pkid: u16, refused: bool) {
        match self.version {
            Version::V311 => write4(out, v4::Packet::PubRec(v4::PubRec::new(pkid))),
            Version::V5 => {
                let mut rec = v5::PubRec::new(pkid, None);
                if refused {
                    rec.reason = v5::PubRecReason::NotAuthorized;
                }
                write5(out, v5::Packet::PubRec(rec));
            }
        }
    }

    pub fn pubcomp(&self, out: &mut BytesMut, pkid: u16) {
        match self.version {
            Version::V311 => write4(out, v4::Packet::PubComp(v4::PubComp::new(pkid))),
            Version::V5 => write5(out, v5::Packet::PubComp(v5::PubComp::new(pkid, None))),
        }
    }

    /// SUBACK: `Some(qos)` granted, `None` refused.
    pub fn suback(&self, out: &mut BytesMut, pkid: u16, granted: &[Option<u8>]) {
        match self.version {
            Version::V311 => {
                let codes = granted
                    .iter()
                    .map(|g| match g {
                        Some(q) => v4::SubscribeReasonCode::Success(qos3(*q)),
                        None => v4::SubscribeReasonCode::Failure,
                    })
                    .collect();
                write4(out, v4::Packet::SubAck(v4::SubAck::new(pkid, codes)));
            }
            Version::V5 => {
                let return_codes = granted
                    .iter()
                    .map(|g| match g {
                        Some(q) => v5::SubscribeReasonCode::Success(qos5(*q)),
                        None => v5::SubscribeReasonCode::NotAuthorized,
                    })
                    .collect();
                write5(
                    out,
                    v5::Packet::SubAck(v5::SubAck {
                        pkid,
                        return_codes,
                        properties: None,
                    }),
                );
            }
        }
    }

    pub fn unsuback(&self, out: &mut BytesMut, pkid: u16, count: usize) {
        match self.version {
            Version::V311 => write4(out, v4::Packet::UnsubAck(v4::UnsubAck::new(pkid))),
            Version::V5 => write5(
                out,
                v5::Packet::UnsubAck(v5::UnsubAck {
                    pkid,
                    reasons: vec![v5::UnsubAckReason::Success; count.max(1)],
                    properties: None,
                }),
            ),
        }
    }

    pub fn pingresp(&self, out: &mut BytesMut) {
        match self.version {
            Version::V311 => write4(out, v4::Packet::PingResp),
            Version::V5 => write5(out, v5::Packet::PingResp(v5::PingResp)),
        }
    }

    /// A publish to the device (QoS 0 or 1).
    pub fn publish(
        &self,
        out: &mut BytesMut,
        topic: &str,
        payload: Bytes,
        qos: u8,
        pkid: u16,
        dup: bool,
    ) {
        match self.version {
            Version::V311 => {
                let mut publish = v4::Publish::new(topic, qos3(qos), Vec::new());
                publish.payload = payload;
                publish.pkid = if qos == 0 { 0 } else { pkid };
                publish.dup = dup && qos > 0;
                write4(out, v4::Packet::Publish(publish));
            }
            Version::V5 => {
                let mut publish = v5::Publish::new(topic, qos5(qos), payload, None);
                publish.pkid = if qos == 0 { 0 } else { pkid };
                publish.dup = dup && qos > 0;
                write5(out, v5::Packet::Publish(publish));
            }
        }
    }

    /// A server-side DISCONNECT with a reason (v5 only; 3.1.1 just closes).
    pub fn disconnect(&self, out: &mut BytesMut, reason: DisconnectReason) {
        if self.version == Version::V5 {
            let code = match reason {
                DisconnectReason::NotAuthorized => v5::DisconnectReasonCode::NotAuthorized,
                DisconnectReason::KeepAliveTimeout => v5::DisconnectReasonCode::KeepAliveTimeout,
                DisconnectReason::SessionTakenOver => v5::DisconnectReasonCode::SessionTakenOver,
                DisconnectReason::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
                DisconnectReason::PacketTooLarge => v5::DisconnectReasonCode::PacketTooLarge,
                DisconnectReason::ShuttingDown => v5::DisconnectReasonCode::ServerShuttingDown,
                DisconnectReason::Revoked => v5::DisconnectReasonCode::AdministrativeAction,
            };
            write5(out, v5::Packet::Disconnect(v5::Disconnect::new(code)));
        }
    }
}

/// In-flight publishes to a device at most (v5 receive maximum, both ways).
pub const RECEIVE_MAXIMUM: u16 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnAnswer {
    Accepted,
    BadCredentials,
    NotAuthorized,
    Busy,
    BadClientId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    NotAuthorized,
    KeepAliveTimeout,
    SessionTakenOver,
    ProtocolError,
    PacketTooLarge,
    ShuttingDown,
    Revoked,
}

fn qos3(q: u8) -> m3::QoS {
    if q == 0 {
        m3::QoS::AtMostOnce
    } else {
        m3::QoS::AtLeastOnce
    }
}

fn qos5(q: u8) -> m5::QoS {
    if q == 0 {
        m5::QoS::AtMostOnce
    } else {
        m5::QoS::AtLeastOnce
    }
}

fn write4(out: &mut BytesMut, packet: v4::Packet) {
    // Outgoing packets are built here from bounded parts; a failure is a
    // bug, and dropping the packet is the safe answer (the device retries).
    if let Err(err) = packet.write(out, usize::MAX) {
        tracing::error!(error = %err, "encoding an MQTT 3.1.1 packet failed");
    }
}

fn write5(out: &mut BytesMut, packet: v5::Packet) {
    if let Err(err) = packet.write(out, None) {
        tracing::error!(error = %err, "encoding an MQTT 5 packet failed");
    }
}

fn from_v4(packet: v4::Packet) -> Result<Inbound, CodecError> {
    Ok(match packet {
        v4::Packet::Connect(c) => Inbound::Connect(Connect {
            version: Version::V311,
            client_id: c.client_id,
            keep_alive_secs: c.keep_alive,
            clean_start: c.clean_session,
            session_expiry_secs: None,
            username: c.login.as_ref().map(|l| l.username.clone()),
            password: c.login.map(|l| l.password),
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
            }),
        }),
        v4::Packet::Publish(p) => Inbound::Publish(Publish {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos as u8,
            pkid: p.pkid,
        }),
        v4::Packet::PubAck(p) => Inbound::PubAck { pkid: p.pkid },
        v4::Packet::PubRec(p) => Inbound::PubRec { pkid: p.pkid },
        v4::Packet::PubRel(p) => Inbound::PubRel { pkid: p.pkid },
        v4::Packet::PubComp(p) => Inbound::PubComp { pkid: p.pkid },
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect { with_will: false },
        v4::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Inbound::Unexpected("PINGRESP"),
    })
}

fn from_v5(packet: v5::Packet) -> Result<Inbound, CodecError> {
    let utf8 = |b: Bytes| String::from_utf8(b.to_vec()).map_err(|_| CodecError::TopicNotUtf8);
    Ok(match packet {
        v5::Packet::Connect(c, will, login) => Inbound::Connect(Connect {
            version: Version::V5,
            client_id: c.client_id,
            keep_alive_secs: c.keep_alive,
            clean_start: c.clean_start,
            session_expiry_secs: Some(
                c.properties
                    .and_then(|p| p.session_expiry_interval)
                    .unwrap_or(0),
            ),
            username: login.as_ref().map(|l| l.username.clone()),
            password: login.map(|l| l.password),
            will: match will {
                Some(w) => Some(Will {
                    topic: utf8(w.topic)?,
                    payload: w.message,
                }),
                None => None,
            },
        }),
        v5::Packet::Publish(p) => Inbound::Publish(Publish {
            topic: utf8(p.topic)?,
            payload: p.payload,
            qos: p.qos as u8,
            pkid: p.pkid,
        }),
        v5::Packet::PubAck(p) => Inbound::PubAck { pkid: p.pkid },
        v5::Packet::PubRec(p) => Inbound::PubRec { pkid: p.pkid },
        v5::Packet::PubRel(p) => Inbound::PubRel { pkid: p.pkid },
        v5::Packet::PubComp(p) => Inbound::PubComp { pkid: p.pkid },
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(d) => Inbound::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
        },
        v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        v5::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
    })
}

/// Feeds arbitrary bytes through everything a connection parses, as a
/// device would send them: a CONNECT, then packets until the bytes run out
/// or an error. The fuzz target and a unit test call it.
pub fn parse_all(data: &[u8], max_packet: usize) {
    let mut stream = BytesMut::from(data);
    let Ok(Some((codec, _))) = Codec::read_connect(&mut stream, max_packet) else {
        // Also try the same bytes as a stream after a valid CONNECT of
        // either version, so the fuzzer reaches every packet reader.
        for version in [Version::V311, Version::V5] {
            let codec = Codec {
                version,
                max_packet,
            };
            let mut stream = BytesMut::from(data);
            while let Ok(Some(_)) = codec.read(&mut stream) {}
        }
        return;
    };
    while let Ok(Some(_)) = codec.read(&mut stream) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn connect_v311(keep_alive: u16) -> BytesMut {
        let mut connect = v4::Connect::new("dev-1");
        connect.keep_alive = keep_alive;
        connect.login = Some(v4::Login::new("dev-1", "secret"));
        let mut out = BytesMut::new();
        v4::Packet::Connect(connect)
            .write(&mut out, usize::MAX)
            .unwrap();
        out
    }

    #[test]
    fn reads_a_311_connect_and_fixes_the_version() {
        let mut stream = connect_v311(0);
        let (codec, connect) = Codec::read_connect(&mut stream, 1024).unwrap().unwrap();
        assert_eq!(codec.version, Version::V311);
        assert_eq!(connect.keep_alive_secs, 0);
        assert_eq!(connect.username.as_deref(), Some("dev-1"));
        assert!(stream.is_empty());
    }

    #[test]
    fn needs_more_bytes_until_the_packet_is_whole() {
        let whole = connect_v311(30);
        for cut in 0..whole.len() {
            let mut stream = BytesMut::from(&whole[..cut]);
            assert!(
                Codec::read_connect(&mut stream, 1024).unwrap().is_none(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn refuses_mqtt_31_and_oversize_packets() {
        // MQTT 3.1: protocol name MQIsdp, level 3.
        let mut v31 = BytesMut::from(&b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00"[..]);
        assert!(matches!(
            Codec::read_connect(&mut v31, 1024),
            Err(CodecError::UnsupportedLevel(3))
        ));
        let mut big = connect_v311(30);
        assert!(matches!(
            Codec::read_connect(&mut big, 8),
            Err(CodecError::TooLarge { .. })
        ));
        let mut not_connect = BytesMut::from(&b"\xc0\x00"[..]);
        assert!(matches!(
            Codec::read_connect(&mut not_connect, 1024),
            Err(CodecError::NotConnect)
        ));
    }

    #[test]
    fn a_short_v5_disconnect_is_normal() {
        let codec = Codec {
            version: Version::V5,
            max_packet: 1024,
        };
        let mut stream = BytesMut::from(&b"\xe0\x00"[..]);
        assert_eq!(
            codec.read(&mut stream).unwrap(),
            Some(Inbound::Disconnect { with_will: false })
        );
    }

    /// The fuzz target's entry, on random and mutated input, so every
    /// test run exercises it (the long runs are `cargo fuzz`, BENCHMARKS.md).
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(7);
        let seed = connect_v311(60);
        for _ in 0..20_000 {
            let mut data = if rng.random_bool(0.5) {
                seed.to_vec()
            } else {
                let len = rng.random_range(0..64);
                (0..len).map(|_| rng.random()).collect()
            };
            for _ in 0..rng.random_range(0..4) {
                if !data.is_empty() {
                    let at = rng.random_range(0..data.len());
                    data[at] = rng.random();
                }
            }
            parse_all(&data, 4096);
        }
    }
}
