//! Gateways in: the `Uplink` gRPC service.
//!
//! Each event is committed (deduplicated on `(device_id, seq)`) and the store
//! flushed before the gateway hears `received` (guarantees 2 and 3). Events
//! that arrive together share one flush. New alerts are announced to
//! watchers only after that flush.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use anxin_proto::v1::{
    Deferred, DeviceRoster, GatewayMessage, RosterDevice, ServerMessage, gateway_message,
    server_message, uplink_server::Uplink,
};
use futures::{FutureExt, Stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    desks::{
        alerts::AlertDesk,
        auth::{AuthError, Authenticator},
        intake::{GatewayIntake, Settler, Taken, refuse_uplink, roster_of},
        signals::Signals,
    },
    domain::rights::Principal,
    metrics as m,
    store::StoreError,
    tasks::health::Health,
};

/// Most events committed under one flush.
const MAX_BATCH: usize = 512;

/// Test-only fault injection: with `ANXIN_FAULT=crash_after_commit` the
/// process dies right after a flush and before sending `received`, the
/// moment a kill -9 hurts most.
fn crash_if_asked() {
    if std::env::var("ANXIN_FAULT").is_ok_and(|v| v == "crash_after_commit") {
        tracing::error!("ANXIN_FAULT=crash_after_commit: dying before the received ack");
        std::process::abort();
    }
}

pub struct UplinkService {
    desk: AlertDesk,
    /// The health and safety rules, shared by every gateway's stream.
    signals: Arc<Signals>,
    auth: Authenticator,
    health: Arc<Health>,
    /// A gateway must present a client certificate naming it (grpc.tls
    /// with a client CA).
    require_cert: bool,
}

impl UplinkService {
    pub fn new(desk: AlertDesk, auth: Authenticator, health: Arc<Health>) -> Self {
        Self {
            signals: Arc::new(Signals::new(desk.clone())),
            desk,
            auth,
            health,
            require_cert: false,
        }
    }

    pub fn require_gateway_cert(mut self, require: bool) -> Self {
        self.require_cert = require;
        self
    }

    /// Refuses a stream whose client certificate does not name
    /// `gateway_id` (counted, logged, audited).
    fn check_certificate(
        &self,
        certs: Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
        gateway_id: &str,
    ) -> Result<(), Status> {
        if !self.require_cert {
            return Ok(());
        }
        let named = certs
            .as_ref()
            .and_then(|certs| certs.first())
            .and_then(|cert| certificate_cn(cert.as_ref()));
        let problem = match named {
            Some(cn) if cn == gateway_id => return Ok(()),
            Some(cn) => format!("the client certificate names gateway `{cn}`, not `{gateway_id}`"),
            None => "no client certificate naming a gateway (grpc.tls.client_ca is set)".into(),
        };
        metrics::counter!(m::UPLINK_REFUSED).increment(1);
        tracing::warn!(gateway_id, "uplink refused: {problem}");
        refuse_uplink(&self.desk, gateway_id, &problem);
        Err(Status::unauthenticated(problem))
    }
}

/// The subject CN of a DER certificate.
fn certificate_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// The status a gateway gets while the store cannot take events: it keeps
/// them in its journal and retries with backoff. A gateway that takes
/// deferrals is not refused for a low disk: its alarms still go in, and its
/// routine events are deferred one by one ([`defer_routine`]).
fn refusal(health: &Health, gateway_id: &str, takes_deferrals: bool) -> Option<Status> {
    if takes_deferrals && health.alarms_only().is_some() {
        return None;
    }
    let why = health.refuse_events()?;
    metrics::counter!(m::UPLINK_REFUSED_DISK).increment(1);
    tracing::warn!(gateway_id, "uplink refused: {why}");
    // The database's trouble may be this replica's alone: UNAVAILABLE
    // says "another server may take it"; the disk's is this host's.
    Some(if health.database_trouble() {
        Status::unavailable(why)
    } else {
        Status::resource_exhausted(why)
    })
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Uplink for UplinkService {
    type LinkStream = ServerStream;

    async fn link(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        // Kept: the open stream checks it again (`guard_token`).
        let token = crate::api::grpc::token_of(&request)
            .unwrap_or_default()
            .to_string();
        let principal =
            crate::api::grpc::authenticated(&self.auth, Some(&token)).inspect_err(|status| {
                metrics::counter!(m::UPLINK_REFUSED).increment(1);
                tracing::warn!(error = %status.message(), "uplink refused: no valid gateway token");
            })?;
        let certs = request.peer_certs();
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(GatewayMessage {
                body: Some(gateway_message::Body::Hello(hello)),
            }) if !hello.gateway_id.is_empty() => hello,
            _ => {
                metrics::counter!(m::EVENTS_INVALID).increment(1);
                return Err(Status::invalid_argument(
                    "the first message on an uplink stream must be a Hello with a gateway_id",
                ));
            }
        };
        let gateway_id = hello.gateway_id;
        let takes_deferrals = hello.takes_deferrals;
        match &principal {
            Principal::Gateway(id) if *id == gateway_id => {}
            _ => {
                metrics::counter!(m::UPLINK_REFUSED).increment(1);
                tracing::warn!(%gateway_id, caller = %principal.name(), "uplink refused: the token is not this gateway's");
                return Err(Status::permission_denied(format!(
                    "the token is not gateway {gateway_id}'s"
                )));
            }
        }
        self.check_certificate(certs, &gateway_id)?;
        if let Some(status) = refusal(&self.health, &gateway_id, takes_deferrals) {
            return Err(status);
        }
        let (outbound, outbound_rx) = mpsc::channel::<ServerMessage>(4 * MAX_BATCH);
        let gateways = self.desk.gateways().clone();
        let session = gateways.connect(&gateway_id, outbound.clone());
        tracing::info!(%gateway_id, version = %hello.software_version, "gateway connected");

        tokio::spawn(keep_roster(
            self.desk.clone(),
            gateway_id.clone(),
            gateways.roster_signal(&gateway_id),
            outbound.clone(),
        ));
        let desk = self.desk.clone();
        let signals = self.signals.clone();
        let health = self.health.clone();
        // When this side gives up on the stream (a commit failed: the
        // database went away, say), the gateway must hear it and connect
        // again, here or to another replica; other holders of `outbound`
        // (the roster task, the registry) would otherwise keep it open.
        let ended = tokio_util::sync::CancellationToken::new();
        let end_stream = ended.clone();
        // Why the server ended the stream, when it was not a failure of
        // the stream itself (the token revoked, say).
        let closing: Arc<Mutex<Option<Status>>> = Default::default();
        tokio::spawn(guard_token(
            self.auth.clone(),
            desk.clone(),
            token,
            gateway_id.clone(),
            ended.clone(),
            closing.clone(),
        ));
        tokio::spawn(async move {
            let mut intake = GatewayIntake::new(desk, signals, &gateway_id);
            let result = serve_gateway(
                &mut intake,
                &health,
                &mut inbound,
                &outbound,
                &end_stream,
                takes_deferrals,
            )
            .await;
            if let Err(GatewayStreamError::Store(err)) = &result {
                health.store_failed(err);
            }
            gateways.disconnect(&gateway_id, session);
            end_stream.cancel();
            match result {
                Ok(()) => tracing::info!(%gateway_id, "gateway disconnected"),
                Err(err) => tracing::warn!(%gateway_id, error = %err, "gateway stream ended"),
            }
        });
        let stream = futures::StreamExt::take_until(
            ReceiverStream::new(outbound_rx).map(Ok),
            ended.cancelled_owned(),
        );
        let ended = futures::stream::once(async move {
            Err(closing
                .lock()
                .expect("closing lock")
                .take()
                .unwrap_or_else(|| {
                    Status::unavailable(
                        "this server stopped taking events on this stream; connect again",
                    )
                }))
        });
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            stream, ended,
        ))))
    }
}

use tokio_stream::StreamExt as _;

/// How often an open uplink looks whether its token still holds: an
/// atomic read; the store is read only when a token (or anything in the
/// directory) changed, here or at another replica, or the token's expiry
/// has passed.
const TOKEN_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A gateway whose token ends sooner than this shows on the gateway board
/// (`token_expiring`): an expired token stops its alarms.
pub const TOKEN_EXPIRY_WARNING_MS: i64 = 14 * 24 * 3600 * 1000;

/// Closes a gateway's open uplink once its token is revoked or expires
/// (within [`TOKEN_CHECK_EVERY`] of the change reaching this replica):
/// logged, counted and audited, and the gateway told `UNAUTHENTICATED`.
async fn guard_token(
    auth: Authenticator,
    desk: AlertDesk,
    token: String,
    gateway_id: String,
    ended: tokio_util::sync::CancellationToken,
    closing: Arc<Mutex<Option<Status>>>,
) {
    let gateways = desk.gateways().clone();
    let mut seen = gateways.directory_epoch();
    let mut expires_ms = auth.expiry_of(&token).ok().flatten();
    gateways.token_expiry(&gateway_id, expires_ms);
    if let Some(at) = expires_ms.filter(|&at| at - anxin_proto::now_ms() < TOKEN_EXPIRY_WARNING_MS)
    {
        tracing::warn!(%gateway_id, expires_ms = at, "the gateway's uplink token expires soon; rotate it (POST /api/v1/gateways/{{id}}/tokens)");
    }
    loop {
        tokio::select! {
            _ = ended.cancelled() => return,
            _ = tokio::time::sleep(TOKEN_CHECK_EVERY) => {}
        }
        let epoch = gateways.directory_epoch();
        let expired = expires_ms.is_some_and(|at| anxin_proto::now_ms() >= at);
        if epoch == seen && !expired {
            continue;
        }
        seen = epoch;
        let why = match auth.authenticate(Some(&token)) {
            Ok(Principal::Gateway(id)) if id == gateway_id => {
                // A rotation gives an earlier token an expiry.
                expires_ms = auth.expiry_of(&token).ok().flatten();
                gateways.token_expiry(&gateway_id, expires_ms);
                continue;
            }
            // A store that cannot answer now does not end an uplink; the
            // next change or tick asks again.
            Err(AuthError::Store(err)) => {
                tracing::warn!(%gateway_id, error = %err, "checking an open uplink's token failed");
                continue;
            }
            Ok(_) => "the token is no longer this gateway's".to_string(),
            Err(err) => err.to_string(),
        };
        metrics::counter!(m::UPLINK_TOKEN_CLOSED).increment(1);
        tracing::warn!(%gateway_id, error = %why, "open uplink closed: its token no longer holds");
        refuse_uplink(&desk, &gateway_id, &format!("open uplink closed: {why}"));
        *closing.lock().expect("closing lock") = Some(Status::unauthenticated(format!(
            "{why}; the gateway needs a new token (docs/security.md, \"Gateway tokens\")"
        )));
        ended.cancel();
        return;
    }
}

/// Devices per roster message: 2,000 devices are ~200 KB, well under
/// gRPC's 4 MB message limit.
const ROSTER_PART: usize = 2000;

/// Sends the gateway its roster when its stream opens and whenever the
/// directory says its devices changed, until the stream closes.
async fn keep_roster(
    desk: AlertDesk,
    gateway_id: String,
    changed: Arc<tokio::sync::Notify>,
    outbound: mpsc::Sender<ServerMessage>,
) {
    let mut generation = 0u64;
    let mut last_sent: Option<Vec<RosterDevice>> = None;
    loop {
        match roster_of(&desk, &gateway_id) {
            Ok(roster) if last_sent.as_ref() != Some(&roster) => {
                generation += 1;
                let parts: Vec<&[RosterDevice]> = if roster.is_empty() {
                    vec![&[]]
                } else {
                    roster.chunks(ROSTER_PART).collect()
                };
                let last = parts.len() - 1;
                for (part, devices) in parts.into_iter().enumerate() {
                    let message = ServerMessage {
                        body: Some(server_message::Body::Roster(DeviceRoster {
                            generation,
                            part: part as u32,
                            complete: part == last,
                            devices: devices.to_vec(),
                        })),
                    };
                    if outbound.send(message).await.is_err() {
                        return;
                    }
                }
                tracing::info!(
                    gateway_id,
                    devices = roster.len(),
                    generation,
                    "device roster sent to the gateway"
                );
                last_sent = Some(roster);
            }
            Ok(_) => {}
            Err(err) => {
                tracing::error!(gateway_id, error = %err, "reading the gateway's device roster failed; retrying on the next change");
            }
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = outbound.closed() => return,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum GatewayStreamError {
    #[error(transparent)]
    Status(#[from] Status),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the gateway's response stream closed")]
    ResponseClosed,
}

/// How long a gateway holds back a lane the server deferred before trying
/// it again: the disk's state is checked every 250 ms, and a low disk is
/// rarely freed in less than seconds.
const DEFER_FOR_MS: u32 = 5_000;

/// While the store's disk is low, takes a batch's alarms (P0/P1) and
/// answers each routine event (P2/P3) with `Deferred`: the gateway keeps
/// it and holds that lane back, and the alarm lane goes on. Messages that
/// are not events pass.
async fn defer_routine(
    batch: Vec<GatewayMessage>,
    reason: &str,
    outbound: &mpsc::Sender<ServerMessage>,
) -> Result<Vec<GatewayMessage>, GatewayStreamError> {
    let mut kept = Vec::with_capacity(batch.len());
    for message in batch {
        let routine = match &message.body {
            Some(gateway_message::Body::Event(uplink)) => uplink
                .event
                .as_ref()
                .filter(|e| e.priority() > anxin_proto::Priority::P1),
            _ => None,
        };
        let Some(event) = routine else {
            kept.push(message);
            continue;
        };
        metrics::counter!(m::EVENTS_DEFERRED, "reason" => reason.to_string()).increment(1);
        tracing::debug!(device_id = %event.device_id, seq = event.seq, reason, "routine event deferred");
        let deferred = server_message::Body::Deferred(Deferred {
            device_id: event.device_id.clone(),
            seq: event.seq,
            priority: event.priority() as u32,
            retry_after_ms: DEFER_FOR_MS,
            reason: reason.to_string(),
        });
        outbound
            .send(ServerMessage {
                body: Some(deferred),
            })
            .await
            .map_err(|_| GatewayStreamError::ResponseClosed)?;
    }
    Ok(kept)
}

/// Batches with readings waiting for the stream's judge: past this the
/// stream waits too, so a judge that falls behind slows the gateway
/// rather than growing memory.
const JUDGE_QUEUE: usize = 4;

/// A batch in a judge's queue, counted on `anxin_server_judge_queue` from
/// when it is handed over until the judge takes it (or the queue is dropped
/// with it, a judge that failed).
struct Queued(Option<Taken>);

impl Queued {
    fn new(taken: Taken) -> Self {
        metrics::gauge!(m::JUDGE_QUEUE).increment(1.0);
        Self(Some(taken))
    }

    fn take(mut self) -> Taken {
        self.0.take().expect("a queued batch is taken once")
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        metrics::gauge!(m::JUDGE_QUEUE).decrement(1.0);
    }
}

/// Hands a batch to the stream's judge; a full queue is counted (the
/// stream then waits for the judge). False once the judge is gone.
async fn hand_to_judge(to_judge: &mpsc::Sender<Queued>, taken: Taken) -> bool {
    match to_judge.try_send(Queued::new(taken)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(queued)) => {
            metrics::counter!(m::JUDGE_WAITS).increment(1);
            to_judge.send(queued).await.is_ok()
        }
    }
}

/// The stream of one gateway: receive a batch, hand it to the intake desk,
/// flush, then answer `Received` for each event (never before the flush).
/// A batch with readings goes on to the stream's judge, which judges them
/// by the rules, flushes and answers; the next batch's alarm does not wait
/// for that.
async fn serve_gateway(
    intake: &mut GatewayIntake,
    health: &Health,
    inbound: &mut Streaming<GatewayMessage>,
    outbound: &mpsc::Sender<ServerMessage>,
    closed: &tokio_util::sync::CancellationToken,
    takes_deferrals: bool,
) -> Result<(), GatewayStreamError> {
    let (to_judge, queue) = mpsc::channel(JUDGE_QUEUE);
    let judge_failed = closed.child_token();
    let receiving_over = tokio_util::sync::CancellationToken::new();
    let judge = tokio::spawn(judge_readings(
        intake.settler().clone(),
        queue,
        outbound.clone(),
        judge_failed.clone(),
        receiving_over.clone(),
    ));
    let received = receive_batches(
        intake,
        health,
        inbound,
        outbound,
        &judge_failed,
        takes_deferrals,
        to_judge,
    )
    .await;
    receiving_over.cancel();
    // The judge finishes what it was given (its judgement is durable even
    // when the gateway is gone) before the stream counts as ended.
    let judged = match judge.await {
        Ok(judged) => judged,
        Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
    };
    match (received, judged) {
        (_, Err(err)) => Err(err.into()),
        (received, Ok(())) => received,
    }
}

/// The stream's judge: each batch's readings judged by the health and
/// safety rules in the order taken, flushed, then the batch answered. An
/// answer that cannot be sent (the stream ended, or stopped being read
/// once receiving is over) is not waited for: the gateway resends the
/// event and it is known by its seq.
async fn judge_readings(
    settler: Settler,
    mut queue: mpsc::Receiver<Queued>,
    outbound: mpsc::Sender<ServerMessage>,
    failed: tokio_util::sync::CancellationToken,
    receiving_over: tokio_util::sync::CancellationToken,
) -> Result<(), StoreError> {
    while let Some(queued) = queue.recv().await {
        let mut taken = queued.take();
        let judged = match settler.judge(&mut taken) {
            Ok(()) => settler.flush().await,
            Err(err) => Err(err),
        };
        if let Err(err) = judged {
            failed.cancel();
            return Err(err);
        }
        crash_if_asked();
        for received in settler.settle(taken) {
            let body = Some(server_message::Body::Received(received));
            tokio::select! {
                biased;
                _ = outbound.send(ServerMessage { body }) => {}
                _ = receiving_over.cancelled() => {}
            }
        }
    }
    Ok(())
}

async fn receive_batches(
    intake: &mut GatewayIntake,
    health: &Health,
    inbound: &mut Streaming<GatewayMessage>,
    outbound: &mpsc::Sender<ServerMessage>,
    closed: &tokio_util::sync::CancellationToken,
    takes_deferrals: bool,
    to_judge: mpsc::Sender<Queued>,
) -> Result<(), GatewayStreamError> {
    let settler = intake.settler().clone();
    let send = |body: server_message::Body| async move {
        outbound
            .send(ServerMessage { body: Some(body) })
            .await
            .map_err(|_| GatewayStreamError::ResponseClosed)
    };
    for downlink in intake.pending_downlinks()? {
        send(server_message::Body::Downlink(downlink)).await?;
    }
    loop {
        // Closed by the server (the token revoked): nothing more is taken
        // from this stream, even if the gateway keeps sending.
        let first = tokio::select! {
            _ = closed.cancelled() => return Ok(()),
            message = inbound.message() => message?,
        };
        let Some(first) = first else {
            return Ok(());
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match inbound.message().now_or_never() {
                Some(Ok(Some(message))) => batch.push(message),
                Some(Ok(None)) | None => break,
                Some(Err(status)) => return Err(status.into()),
            }
        }
        // The store cannot take events now: end the stream. The gateway
        // keeps everything unacknowledged, reconnects with backoff and is
        // told why at connect.
        if let Some(status) = refusal(health, intake.gateway_id(), takes_deferrals) {
            return Err(status.into());
        }
        if takes_deferrals && let Some(reason) = health.alarms_only() {
            batch = defer_routine(batch, reason, outbound).await?;
            if batch.is_empty() {
                continue;
            }
        }
        let mut taken = intake.take(batch)?;
        if taken.is_empty() {
            continue;
        }
        if taken.has_readings() {
            // Its alarms flushed and announced now; its readings judged,
            // flushed and answered by the judge while the stream goes on.
            if taken.has_alarms() {
                settler.flush().await?;
                settler.announce_alarms(&mut taken);
            }
            if !hand_to_judge(&to_judge, taken).await {
                return Ok(());
            }
            continue;
        }
        // Nothing acked if this fails: the gateway resends after reconnecting.
        settler.flush().await?;
        crash_if_asked();
        for received in settler.settle(taken) {
            send(server_message::Body::Received(received)).await?;
        }
    }
}
