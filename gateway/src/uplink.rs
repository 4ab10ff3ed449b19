//! Journal out: streams journaled events to the dispatch server and deletes
//! each only after the server's `received` ack (guarantee 3).
//!
//! One bidirectional gRPC stream per connection. At most `window` events are
//! in flight; the rest wait in the journal in priority order, so a P0 stored
//! now is the next event sent once a window slot frees. After a disconnect
//! everything unacknowledged is sent again from the journal and the server
//! deduplicates on (device_id, seq) (guarantee 2). The same stream carries
//! the server's downlinks ("help is coming") to devices.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use std::sync::Arc;

use anxin_proto::v1::{
    Deferred, DownlinkDone, GatewayMessage, GatewayStatus, Hello, ServerMessage, gateway_message,
    server_message, uplink_client::UplinkClient,
};
use futures::FutureExt;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{
    config::GatewayConfig,
    health::Health,
    journal::{Cursor, EntryKey, JournalError, JournalReader},
    metrics as m,
    mqtt_out::MqttOut,
    roster::Roster,
};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UplinkState {
    Connecting { server: String },
    Connected { server: String },
    Disconnected { last_error: String },
}

/// What one connection has out at the server and not yet heard `received`
/// for, and the lanes the server deferred (its store's disk is low: it
/// takes alarms only). A deferred lane is held back until its time, then
/// read again from its start; the other lanes go on meanwhile, so an
/// alarm is never behind deferred telemetry.
#[derive(Default)]
struct InFlight {
    sent_at: HashMap<EntryKey, Instant>,
    by_event: HashMap<(String, u64), EntryKey>,
    held_until: [Option<Instant>; 4],
}

/// Bounds on a deferral's pause, whatever the server asks.
const DEFER_MIN: Duration = Duration::from_millis(100);
const DEFER_MAX: Duration = Duration::from_secs(60);

impl InFlight {
    fn len(&self) -> usize {
        self.sent_at.len()
    }

    /// Records an entry as sent; `false` if it is out already.
    fn sent(&mut self, entry: &crate::journal::Entry) -> bool {
        if self.sent_at.contains_key(&entry.key) {
            return false;
        }
        self.sent_at.insert(entry.key, Instant::now());
        if let Some(event) = &entry.event.event {
            self.by_event
                .insert((event.device_id.clone(), event.seq), entry.key);
        }
        true
    }

    /// The server has it: when it was sent, if it was sent on this connection.
    fn received(&mut self, key: EntryKey, device_id: &str, seq: u64) -> Option<Instant> {
        self.by_event.remove(&(device_id.to_string(), seq));
        self.sent_at.remove(&key)
    }

    /// The server deferred one event: it stays in the journal, and its lane
    /// waits.
    fn deferred(&mut self, deferred: &Deferred) {
        let Some(key) = self
            .by_event
            .remove(&(deferred.device_id.clone(), deferred.seq))
        else {
            return;
        };
        self.sent_at.remove(&key);
        let lane = key.priority();
        let pause =
            Duration::from_millis(deferred.retry_after_ms.into()).clamp(DEFER_MIN, DEFER_MAX);
        if self.held_until[lane].is_none() {
            tracing::warn!(
                priority = m::PRIORITY_LABELS[lane],
                reason = %deferred.reason,
                pause_ms = pause.as_millis() as u64,
                "the server defers routine events (its disk is low); they wait here, alarms go on"
            );
        }
        self.held_until[lane] = Some(Instant::now() + pause);
        metrics::counter!(m::UPLINK_DEFERRED, "priority" => m::PRIORITY_LABELS[lane]).increment(1);
    }

    /// Lanes whose pause is over are opened and read again from the start.
    fn release_due(&mut self, cursor: &mut Cursor) {
        let now = Instant::now();
        for (lane, held) in self.held_until.iter_mut().enumerate() {
            if held.is_some_and(|until| now >= until) {
                *held = None;
                cursor.rewind(lane);
            }
        }
    }

    fn open_lanes(&self) -> [bool; 4] {
        self.held_until.map(|held| held.is_none())
    }

    fn next_release(&self) -> Option<Instant> {
        self.held_until.iter().flatten().min().copied()
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("server closed the stream")]
    Closed,
    #[error("the server did not answer the stream within {0:?}; trying again, or the next server")]
    NoAnswer(Duration),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

pub struct Uplink {
    gateway_id: String,
    servers: Vec<String>,
    window: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
    connect_timeout: Duration,
    /// `Bearer <token>`, checked at construction.
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// TLS to the servers, read at start-up ([`client_tls`]).
    tls: Option<tonic::transport::ClientTlsConfig>,
    journal: JournalReader,
    acks: MqttOut,
    roster: Arc<Roster>,
    state: watch::Sender<UplinkState>,
    health: Arc<Health>,
}

/// How often the gateway looks whether its status changed.
const STATUS_CHECK: Duration = Duration::from_secs(1);

/// How long a server may take to answer a new stream (its connection set
/// up, the Hello read, the stream accepted). A server that holds the
/// connection and answers HTTP/2 pings but never the stream (a handler
/// stuck) would otherwise keep this gateway waiting for ever instead of
/// going to the next server.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A status is resent this often even if unchanged.
const STATUS_REFRESH: Duration = Duration::from_secs(30);

/// The uplink's TLS from `uplink.tls`, files read now so a bad path is a
/// start-up error naming the field.
pub fn client_tls(
    tls: &crate::config::UplinkTls,
) -> Result<tonic::transport::ClientTlsConfig, String> {
    let read = |path: &std::path::Path, field: &str| {
        std::fs::read(path).map_err(|e| format!("{field}: reading {}: {e}", path.display()))
    };
    let mut config = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(read(&tls.ca, "uplink.tls.ca")?),
    );
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        config = config.identity(tonic::transport::Identity::from_pem(
            read(cert, "uplink.tls.cert")?,
            read(key, "uplink.tls.key")?,
        ));
    }
    Ok(config)
}

impl Uplink {
    pub fn new(
        config: &GatewayConfig,
        journal: JournalReader,
        acks: MqttOut,
        roster: Arc<Roster>,
        health: Arc<Health>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> (Self, watch::Receiver<UplinkState>) {
        if config.uplink.token.is_empty() {
            tracing::warn!(
                "uplink.token is empty: servers that check gateway tokens will refuse this gateway"
            );
        }
        let (state, state_rx) = watch::channel(UplinkState::Connecting {
            server: config.uplink.servers[0].clone(),
        });
        let uplink = Self {
            gateway_id: config.gateway_id.clone(),
            servers: config.uplink.servers.clone(),
            window: config.uplink.window,
            backoff_initial: config.backoff_initial(),
            backoff_max: config.backoff_max(),
            connect_timeout: Duration::from_millis(config.uplink.connect_timeout_ms),
            token: (!config.uplink.token.is_empty()).then(|| {
                format!("Bearer {}", config.uplink.token)
                    .parse()
                    .expect("uplink.token is validated as printable ASCII")
            }),
            journal,
            acks,
            roster,
            state,
            health,
            tls,
        };
        (uplink, state_rx)
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = self.backoff_initial;
        let mut server_index = 0;
        loop {
            let server = self.servers[server_index].clone();
            self.state.send_replace(UplinkState::Connecting {
                server: server.clone(),
            });
            // Shutdown never waits on the network: a session may be stuck in
            // a handshake or a full send buffer. Dropping it mid-way loses
            // nothing (entries leave the journal only on `received`).
            let result = tokio::select! {
                _ = cancel.cancelled() => {
                    metrics::gauge!(m::UPLINK_CONNECTED).set(0.0);
                    return;
                }
                result = self.session(&server, &cancel, &mut backoff) => result,
            };
            metrics::gauge!(m::UPLINK_CONNECTED).set(0.0);
            match result {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(%server, error = %err, "uplink down; events stay in the journal");
                    self.state.send_replace(UplinkState::Disconnected {
                        last_error: format!("{server}: {err}"),
                    });
                }
            }
            server_index = (server_index + 1) % self.servers.len();
            // Full jitter: thousands of gateways reconnecting after a server
            // restart must not arrive in lockstep.
            let delay = rand::rng().random_range(Duration::ZERO..=backoff);
            backoff = (backoff * 2).min(self.backoff_max);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(
        &self,
        server: &str,
        cancel: &CancellationToken,
        backoff: &mut Duration,
    ) -> Result<(), SessionError> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(server.to_string())?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let answered_by = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let channel = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            channel = tokio::time::timeout_at(answered_by, endpoint.connect()) => {
                channel.map_err(|_| SessionError::NoAnswer(ANSWER_TIMEOUT))??
            }
        };
        let mut client = UplinkClient::new(channel);
        let (outbound, outbound_rx) = mpsc::channel::<GatewayMessage>(self.window + 16);
        let hello = GatewayMessage {
            body: Some(gateway_message::Body::Hello(Hello {
                gateway_id: self.gateway_id.clone(),
                software_version: env!("CARGO_PKG_VERSION").into(),
                takes_deferrals: true,
            })),
        };
        outbound
            .send(hello)
            .await
            .map_err(|_| SessionError::Closed)?;
        let mut request = tonic::Request::new(ReceiverStream::new(outbound_rx));
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        let mut inbound = tokio::time::timeout_at(answered_by, client.link(request))
            .await
            .map_err(|_| SessionError::NoAnswer(ANSWER_TIMEOUT))??
            .into_inner();

        tracing::info!(%server, gateway_id = %self.gateway_id, "uplink connected");
        self.state.send_replace(UplinkState::Connected {
            server: server.to_string(),
        });
        metrics::gauge!(m::UPLINK_CONNECTED).set(1.0);
        metrics::counter!(m::UPLINK_CONNECTS).increment(1);
        *backoff = self.backoff_initial;

        let mut out = InFlight::default();
        let mut cursor = Cursor::default();
        let mut status_tick = tokio::time::interval(STATUS_CHECK);
        let mut last_status: Option<(GatewayStatus, Instant)> = None;
        loop {
            out.release_due(&mut cursor);
            if out.len() < self.window {
                for entry in self.journal.next_unsent_in(
                    &mut cursor,
                    self.window - out.len(),
                    out.open_lanes(),
                )? {
                    // Read again after a deferred lane was rewound, but
                    // still out at the server: not sent twice.
                    if !out.sent(&entry) {
                        continue;
                    }
                    let message = GatewayMessage {
                        body: Some(gateway_message::Body::Event(entry.event)),
                    };
                    outbound
                        .send(message)
                        .await
                        .map_err(|_| SessionError::Closed)?;
                }
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                message = inbound.message() => {
                    // Take every message already here before refilling the
                    // window: one journal delete and one read per burst,
                    // not per ack.
                    let mut burst = vec![message?.ok_or(SessionError::Closed)?];
                    while let Some(next) = inbound.message().now_or_never() {
                        burst.push(next?.ok_or(SessionError::Closed)?);
                    }
                    self.on_server_messages(burst, &mut out, &outbound).await?;
                    m::set_journal_depth(self.journal.depth());
                }
                _ = self.journal.appended(), if out.len() < self.window => {}
                _ = tokio::time::sleep_until(out.next_release().unwrap_or_else(Instant::now).into()), if out.next_release().is_some() => {}
                _ = status_tick.tick() => {
                    let status = self.status();
                    let due = last_status.as_ref().is_none_or(|(last, at)| {
                        last.reasons != status.reasons
                            || last.journal_depth != status.journal_depth
                            || at.elapsed() >= STATUS_REFRESH
                    });
                    if due {
                        let message = GatewayMessage {
                            body: Some(gateway_message::Body::Status(status.clone())),
                        };
                        outbound.send(message).await.map_err(|_| SessionError::Closed)?;
                        last_status = Some((status, Instant::now()));
                    }
                }
            }
        }
    }

    fn status(&self) -> GatewayStatus {
        let disk = self.health.disk();
        GatewayStatus {
            reasons: self
                .health
                .reasons()
                .into_iter()
                .map(String::from)
                .collect(),
            disk_free_bytes: disk.free(),
            disk_reserve_bytes: disk.reserve_held(),
            journal_depth: self.journal.depth().iter().sum(),
            restarts_in_place: anxin_host::restart::restarts(),
            at_ms: anxin_proto::now_ms(),
            software_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    async fn on_server_messages(
        &self,
        burst: Vec<ServerMessage>,
        out: &mut InFlight,
        outbound: &mpsc::Sender<GatewayMessage>,
    ) -> Result<(), SessionError> {
        let mut received = Vec::new();
        for message in burst {
            match message.body {
                Some(server_message::Body::Received(r)) => received.push(r),
                Some(server_message::Body::Deferred(d)) => out.deferred(&d),
                other => self.on_server_message(other, outbound).await?,
            }
        }
        let events: Vec<(&str, u64)> = received
            .iter()
            .map(|r| (r.device_id.as_str(), r.seq))
            .collect();
        for (deleted, r) in self
            .journal
            .remove_many(&events)?
            .into_iter()
            .zip(&received)
        {
            let Some(key) = deleted else { continue };
            if let Some(at) = out.received(key, &r.device_id, r.seq) {
                metrics::histogram!(m::UPLINK_ACK_SECONDS).record(at.elapsed().as_secs_f64());
            }
            metrics::counter!(m::EVENTS_DELIVERED).increment(1);
            tracing::debug!(device_id = %r.device_id, seq = r.seq, "server received event; deleted from journal");
        }
        Ok(())
    }

    async fn on_server_message(
        &self,
        body: Option<server_message::Body>,
        outbound: &mpsc::Sender<GatewayMessage>,
    ) -> Result<(), SessionError> {
        match body {
            Some(server_message::Body::Received(_) | server_message::Body::Deferred(_)) => {}
            Some(server_message::Body::Roster(roster)) => {
                if let Err(err) = self.roster.receive(roster).await {
                    // The old roster stays in force; the server sends the
                    // whole roster again on the next connection.
                    tracing::error!(error = %err, "storing the device roster failed");
                    return Err(err.into());
                }
            }
            Some(server_message::Body::Downlink(downlink)) => {
                if let Some(ack) = downlink.ack {
                    tracing::info!(device_id = %ack.device_id, seq = ack.seq, alert_id = %ack.alert_id, "downlink to device: {}", ack.message);
                    self.acks.send_downlink(ack);
                    metrics::counter!(m::DOWNLINKS).increment(1);
                }
                let done = GatewayMessage {
                    body: Some(gateway_message::Body::DownlinkDone(DownlinkDone {
                        downlink_id: downlink.downlink_id,
                    })),
                };
                outbound
                    .send(done)
                    .await
                    .map_err(|_| SessionError::Closed)?;
            }
            None => {}
        }
        Ok(())
    }
}
