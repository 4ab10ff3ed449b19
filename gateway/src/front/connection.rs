//! One device connection: its own task that reads CONNECT, authenticates,
//! then checks every packet against the identity it logged in with, hands
//! events to the journal lanes and writes what is owed to the device.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{OwnedSemaphorePermit, mpsc},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    Front,
    acl::{self, Identity, Route},
    codec::{Codec, CodecError, ConnAnswer, Connect, DisconnectReason, Inbound, RECEIVE_MAXIMUM},
    session::{Message, Outbound},
};
use crate::{metrics as m, supervisor::Sighting};

/// A connection must send CONNECT within this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer to start with; grows to the largest packet, at most.
const READ_CHUNK: usize = 1024;

fn refused(reason: &'static str) {
    metrics::counter!(m::MQTT_REFUSED, "reason" => reason).increment(1);
}

/// Serves one accepted connection to its end. `permit` is `None` when the
/// gateway already holds `mqtt.max_connections`: the device is told the
/// server is busy.
pub async fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    certified: Option<String>,
    front: Arc<Front>,
    permit: Option<OwnedSemaphorePermit>,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let opened = tokio::time::timeout(
        CONNECT_TIMEOUT,
        read_connect(&mut stream, &mut buf, front.max_packet),
    );
    let (codec, connect) = match opened.await {
        Ok(Ok(Some(opened))) => opened,
        Ok(Ok(None)) => return, // closed before CONNECT
        Ok(Err(err)) => {
            refused(err.label());
            tracing::warn!(%peer, error = %err, "refused a connection: bad CONNECT");
            if let CodecError::UnsupportedLevel(_) = err {
                // 3.1.1 §3.2.2.3: answer 0x01 before closing.
                let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            }
            return;
        }
        Err(_) => {
            refused("connect_timeout");
            tracing::debug!(%peer, "no CONNECT within {CONNECT_TIMEOUT:?}; closed");
            return;
        }
    };
    let mut out = BytesMut::new();
    // A client that sent no client id (only with a clean session, checked
    // in `admit`) gets one of its own, so two such connections of a device
    // (`mosquitto_sub` beside `mosquitto_pub`) are two sessions, not one
    // taking the other over.
    let assigned = connect
        .client_id
        .is_empty()
        .then(|| front.sessions.assign_client_id());
    let client_id = assigned
        .clone()
        .unwrap_or_else(|| connect.client_id.clone());
    let Some(_permit) = permit else {
        refused("too_many_connections");
        tracing::warn!(%peer, client_id, "refused a connection: mqtt.max_connections reached");
        codec.connack(&mut out, ConnAnswer::Busy, false, None);
        let _ = stream.write_all(&out).await;
        return;
    };
    let identity = match admit(&front, &connect, certified.as_deref()).await {
        Ok(identity) => identity,
        Err((answer, reason, why)) => {
            refused(reason);
            tracing::warn!(%peer, client_id, username = connect.username.as_deref().unwrap_or(""), reason, "refused a connection: {why}");
            codec.connack(&mut out, answer, false, None);
            let _ = stream.write_all(&out).await;
            return;
        }
    };
    let persistent = match connect.session_expiry_secs {
        None => !connect.clean_start,
        Some(secs) => secs > 0,
    };
    let expiry = connect
        .session_expiry_secs
        .filter(|s| *s > 0 && *s != u32::MAX)
        .map(|s| Duration::from_secs(u64::from(s)));
    // A device's sessions are keyed by client id under its identity (a
    // few at once); observers' are apart from devices', one per client id.
    let key = match &identity {
        Identity::Device(id) => id.clone(),
        Identity::Observer { name, .. } => format!("observer:{name}:{client_id}"),
    };
    let mut attachment = front.sessions.attach(
        &key,
        &client_id,
        connect.clean_start,
        persistent && identity.device().is_some(),
        expiry,
        front.admission.burst(),
    );
    codec.connack(
        &mut out,
        ConnAnswer::Accepted,
        attachment.session_present,
        assigned.as_deref(),
    );
    metrics::gauge!(m::MQTT_CONNECTIONS).increment(1.0);
    tracing::debug!(%peer, client_id, identity = identity.name(), session_present = attachment.session_present, "device connected");

    let mut conn = Conn {
        codec,
        client_id: client_id.clone(),
        identity,
        front: front.clone(),
        out,
        inflight: Vec::new(),
        queued: std::collections::VecDeque::new(),
        next_pkid: 1,
        will: connect.will.clone(),
        session: attachment.session.clone(),
    };
    for message in attachment.backlog.drain(..) {
        conn.send(message);
    }
    let end = conn
        .run(
            &mut stream,
            &mut buf,
            &mut attachment.rx,
            connect.keep_alive_secs,
            &attachment.kick,
            &cancel,
        )
        .await;
    metrics::gauge!(m::MQTT_CONNECTIONS).decrement(1.0);
    let _ = stream.flush().await;
    let mut unacked: Vec<Message> = conn.inflight.drain(..).map(|(_, m)| m).collect();
    unacked.extend(conn.queued.drain(..));
    front.sessions.detach(
        &attachment.session,
        attachment.conn_id,
        unacked,
        &mut attachment.rx,
    );
    if end.publishes_will() {
        conn.publish_will();
    }
    tracing::debug!(%peer, client_id, identity = conn.identity.name(), end = ?end, "device disconnected");
}

async fn read_connect<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<(Codec, Connect)>, CodecError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some(opened) = Codec::read_connect(buf, max_packet)? {
            return Ok(Some(opened));
        }
        buf.reserve(READ_CHUNK);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

type Refusal = (ConnAnswer, &'static str, String);

/// Authenticates a CONNECT (by the client certificate's device, if one was
/// verified, else by username and password) and checks its will.
async fn admit(
    front: &Front,
    connect: &Connect,
    certified: Option<&str>,
) -> Result<Identity, Refusal> {
    if connect.client_id.is_empty() && !connect.clean_start {
        return Err((
            ConnAnswer::BadClientId,
            "bad_client_id",
            "an empty client id needs a clean session".into(),
        ));
    }
    if let (Some(device), Some(user)) = (certified, connect.username.as_deref())
        && !user.is_empty()
        && user != device
    {
        return Err((
            ConnAnswer::NotAuthorized,
            "certificate_mismatch",
            format!("username `{user}` is not the device `{device}` its certificate names"),
        ));
    }
    let login = match certified {
        Some(device) => front.book.login_certified(device),
        None => {
            front
                .book
                .login(
                    &connect.client_id,
                    connect.username.as_deref(),
                    connect.password.as_deref(),
                )
                .await
        }
    };
    let identity = login.map_err(|refusal| {
        let answer = match refusal {
            crate::front::auth::LoginRefusal::Deactivated => ConnAnswer::NotAuthorized,
            _ => ConnAnswer::BadCredentials,
        };
        (answer, refusal.label(), refusal.to_string())
    })?;
    if let Some(will) = &connect.will
        && !acl::will(&identity, &will.topic)
    {
        return Err((
            ConnAnswer::NotAuthorized,
            "will_not_allowed",
            format!(
                "a last will on `{}` is not this identity's status topic",
                will.topic
            ),
        ));
    }
    Ok(identity)
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// DISCONNECT from the device.
    Clean {
        with_will: bool,
    },
    /// The socket closed or failed without DISCONNECT.
    Lost,
    KeepAliveExpired,
    /// The device broke the rules (its will is published: it did not say
    /// goodbye).
    Refused(&'static str),
    TakenOver,
    ShuttingDown,
}

impl End {
    fn publishes_will(&self) -> bool {
        matches!(
            self,
            End::Clean { with_will: true } | End::Lost | End::KeepAliveExpired | End::Refused(_)
        )
    }
}

struct Conn {
    codec: Codec,
    client_id: String,
    identity: Identity,
    front: Arc<Front>,
    out: BytesMut,
    /// QoS1 publishes sent and not yet acknowledged by the device.
    inflight: Vec<(u16, Message)>,
    /// Waiting for room in flight.
    queued: std::collections::VecDeque<Message>,
    next_pkid: u16,
    will: Option<super::codec::Will>,
    session: Arc<super::session::Session>,
}

impl Conn {
    async fn run<S>(
        &mut self,
        stream: &mut S,
        buf: &mut BytesMut,
        rx: &mut mpsc::Receiver<Outbound>,
        keep_alive_secs: u16,
        kick: &CancellationToken,
        cancel: &CancellationToken,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // 3.1.1 §3.1.2.10: one and a half keep-alive periods; 0 = none.
        let grace =
            (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500));
        let mut deadline = grace.map(|g| Instant::now() + g);
        loop {
            // Every complete packet buffered is handled before one write:
            // a device that pipelines publishes gets its PUBACKs together.
            loop {
                match self.codec.read(buf) {
                    Ok(Some(packet)) => {
                        if let Some(g) = grace {
                            deadline = Some(Instant::now() + g);
                        }
                        if let Some(end) = self.on_packet(packet) {
                            let _ = stream.write_all(&self.out).await;
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        let reason = err.label();
                        refused(reason);
                        tracing::warn!(identity = self.identity.name(), client_id = self.client_id.as_str(), error = %err, "closing a connection: bad packet");
                        let why = if matches!(err, CodecError::TooLarge { .. }) {
                            DisconnectReason::PacketTooLarge
                        } else {
                            DisconnectReason::ProtocolError
                        };
                        self.codec.disconnect(&mut self.out, why);
                        let _ = stream.write_all(&self.out).await;
                        return End::Refused(reason);
                    }
                }
            }
            if !self.out.is_empty() {
                if stream.write_all(&self.out).await.is_err() {
                    return End::Lost;
                }
                self.out.clear();
            }
            buf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.codec.disconnect(&mut self.out, DisconnectReason::ShuttingDown);
                    let _ = stream.write_all(&self.out).await;
                    return End::ShuttingDown;
                }
                _ = kick.cancelled() => {
                    // Drain the reason the session left in the channel.
                    let mut reason = DisconnectReason::SessionTakenOver;
                    while let Ok(out) = rx.try_recv() {
                        match out {
                            Outbound::Kick(r) => reason = r,
                            Outbound::Publish(message) => self.queued.push_back(message),
                        }
                    }
                    self.codec.disconnect(&mut self.out, reason);
                    let _ = stream.write_all(&self.out).await;
                    return End::TakenOver;
                }
                read = stream.read_buf(buf) => match read {
                    Ok(0) | Err(_) => return End::Lost,
                    Ok(_) => {}
                },
                Some(out) = rx.recv() => match out {
                    Outbound::Publish(message) => self.send(message),
                    Outbound::Kick(reason) => {
                        self.codec.disconnect(&mut self.out, reason);
                        let _ = stream.write_all(&self.out).await;
                        return End::TakenOver;
                    }
                },
                _ = sleep_until(deadline) => {
                    metrics::counter!(m::MQTT_KEEPALIVE_EXPIRED).increment(1);
                    tracing::info!(identity = self.identity.name(), client_id = self.client_id.as_str(), "keep-alive expired; closing and publishing the will");
                    self.codec.disconnect(&mut self.out, DisconnectReason::KeepAliveTimeout);
                    let _ = stream.write_all(&self.out).await;
                    return End::KeepAliveExpired;
                }
            }
        }
    }

    /// Writes a publish to the device, or queues it while the in-flight
    /// window is full.
    fn send(&mut self, mut message: Message) {
        if message.qos == 0 {
            self.codec
                .publish(&mut self.out, &message.topic, message.payload, 0, 0, false);
            return;
        }
        if self.inflight.len() >= usize::from(RECEIVE_MAXIMUM) {
            if self.queued.len() >= super::session::CONNECTION_QUEUE {
                self.queued.pop_front();
                metrics::counter!(m::MQTT_DROPPED, "reason" => "connection_busy").increment(1);
            }
            self.queued.push_back(message);
            return;
        }
        let pkid = self.take_pkid();
        self.codec.publish(
            &mut self.out,
            &message.topic,
            message.payload.clone(),
            1,
            pkid,
            message.dup,
        );
        message.dup = true;
        self.inflight.push((pkid, message));
    }

    fn take_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|(p, _)| *p == pkid) {
                return pkid;
            }
        }
    }

    /// Handles one packet; `Some`: the connection ends.
    fn on_packet(&mut self, packet: Inbound) -> Option<End> {
        match packet {
            Inbound::Publish(publish) => return self.on_publish(publish),
            Inbound::PubAck { pkid } | Inbound::PubComp { pkid } => {
                self.inflight.retain(|(p, _)| *p != pkid);
                while self.inflight.len() < usize::from(RECEIVE_MAXIMUM) {
                    let Some(next) = self.queued.pop_front() else {
                        break;
                    };
                    self.send(next);
                }
            }
            // We only send QoS 1; a PUBREC is a confused device: ignore.
            Inbound::PubRec { .. } => {}
            Inbound::PubRel { pkid } => self.codec.pubcomp(&mut self.out, pkid),
            Inbound::Subscribe { pkid, filters } => {
                let granted: Vec<Option<u8>> = filters
                    .iter()
                    .map(
                        |(filter, qos)| match acl::subscribe(&self.identity, filter) {
                            Some(feed) => {
                                let qos = (*qos).min(1);
                                self.session.subscribe(feed, qos);
                                Some(qos)
                            }
                            None => {
                                refused("subscribe_not_allowed");
                                tracing::warn!(
                                    identity = self.identity.name(),
                                    client_id = self.client_id.as_str(),
                                    filter,
                                    "refused a subscription outside this identity's topics"
                                );
                                None
                            }
                        },
                    )
                    .collect();
                self.codec.suback(&mut self.out, pkid, &granted);
                if let Some(device_id) = self.identity.device()
                    && granted.iter().any(Option::is_some)
                {
                    self.front.sessions.release_held(device_id);
                }
            }
            Inbound::Unsubscribe { pkid, filters } => {
                for filter in &filters {
                    if let Some(feed) = acl::subscribe(&self.identity, filter) {
                        self.session.unsubscribe(&feed);
                    }
                }
                self.codec.unsuback(&mut self.out, pkid, filters.len());
            }
            Inbound::PingReq => self.codec.pingresp(&mut self.out),
            Inbound::Disconnect { with_will } => return Some(End::Clean { with_will }),
            Inbound::Connect(_) => {
                refused("protocol_error");
                tracing::warn!(
                    identity = self.identity.name(),
                    client_id = self.client_id.as_str(),
                    "a second CONNECT on one connection; closing"
                );
                self.codec
                    .disconnect(&mut self.out, DisconnectReason::ProtocolError);
                return Some(End::Refused("protocol_error"));
            }
            Inbound::Unexpected(what) => {
                refused("protocol_error");
                tracing::warn!(
                    identity = self.identity.name(),
                    client_id = self.client_id.as_str(),
                    packet = what,
                    "a device sent a server's packet; closing"
                );
                self.codec
                    .disconnect(&mut self.out, DisconnectReason::ProtocolError);
                return Some(End::Refused("protocol_error"));
            }
        }
        None
    }

    fn on_publish(&mut self, publish: super::codec::Publish) -> Option<End> {
        let Some(route) = acl::publish(&self.identity, &publish.topic) else {
            refused("publish_not_allowed");
            tracing::warn!(identity = self.identity.name(), client_id = self.client_id.as_str(), topic = %publish.topic, "refused a publish outside this identity's topics");
            return match (self.codec.version, publish.qos) {
                // MQTT 5 can say no per packet and keep the connection.
                (super::codec::Version::V5, 1) => {
                    self.codec.puback(&mut self.out, publish.pkid, true);
                    None
                }
                (super::codec::Version::V5, 2) => {
                    self.codec.pubrec(&mut self.out, publish.pkid, true);
                    None
                }
                (super::codec::Version::V5, _) => None,
                // 3.1.1 has no refusal code: disconnect (§3.3.5).
                _ => Some(End::Refused("publish_not_allowed")),
            };
        };
        match publish.qos {
            1 => self.codec.puback(&mut self.out, publish.pkid, false),
            2 => self.codec.pubrec(&mut self.out, publish.pkid, false),
            _ => {}
        }
        let device_id = self.identity.device().unwrap_or_default().to_string();
        match route {
            Route::Status => self.on_status(&device_id, &publish.payload),
            Route::Event(encoding) => {
                if let Some(answer) = self.front.admission.admit(
                    &self.session,
                    &device_id,
                    encoding,
                    &publish.payload,
                ) {
                    self.front.sessions.deliver_ack(answer);
                }
            }
        }
        None
    }

    fn on_status(&self, device_id: &str, payload: &[u8]) {
        if payload == b"offline" {
            let _ = self.front.sightings.try_send(Sighting::LastWill {
                device_id: device_id.to_string(),
            });
        }
    }

    fn publish_will(&self) {
        let (Some(will), Some(device_id)) = (&self.will, self.identity.device()) else {
            return;
        };
        tracing::info!(device_id, topic = %will.topic, "publishing the device's last will");
        self.on_status(device_id, &will.payload);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
