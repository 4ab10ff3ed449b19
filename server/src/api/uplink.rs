//! Gateways in: the `Uplink` gRPC service.
//!
//! Each event is committed (deduplicated on `(device_id, seq)`) and the store
//! flushed before the gateway hears `received` (guarantees 2 and 3). Events
//! that arrive together share one flush. New alerts are announced to
//! watchers only after that flush.

use std::{pin::Pin, sync::Arc};

use anxin_proto::{
    now_ms,
    v1::{
        DeviceRoster, GatewayMessage, Received, RosterDevice, ServerMessage, SignOfLife,
        gateway_message, server_message, uplink_server::Uplink,
    },
};
use futures::{FutureExt, Stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    desks::alerts::AlertDesk,
    desks::auth::{Authenticator, Principal},
    domain::incidents::{Decision, Origin},
    metrics as m,
    store::directory::Directory,
    store::{Committed, StoreError},
    tasks::health::Health,
};

/// Who a device belongs to, as the directory says. A gateway reporting on
/// itself (GATEWAY_FAULT, device_id = its own id) belongs to the gateway's
/// community, so that community's dispatchers see it.
fn origin_of(
    desk: &AlertDesk,
    gateway_id: &str,
    event: &anxin_proto::DeviceEvent,
) -> Result<Origin, StoreError> {
    let store = desk.store();
    let device_id = event.device_id.as_str();
    if device_id == gateway_id && event.kind() == anxin_proto::EventKind::GatewayFault {
        let gateway = store.gateway(gateway_id)?.unwrap_or_default();
        return Ok(Origin {
            community_name: crate::store::directory::place_name(store, &gateway.community_id)?,
            community_id: gateway.community_id,
            address: gateway.name,
            device_kind: "gateway".into(),
            ..Default::default()
        });
    }
    let Some(device) = store.device(device_id)? else {
        return Ok(Origin::default());
    };
    let resident = store.resident(&device.resident_id)?.unwrap_or_default();
    Ok(Origin {
        resident_id: device.resident_id,
        ..resident_origin(store, resident, device.kind)?
    })
}

/// Who an alert of `resident` is about, as people read it.
pub(crate) fn resident_origin(
    store: &crate::store::Store,
    resident: anxin_proto::v1::Resident,
    device_kind: String,
) -> Result<Origin, StoreError> {
    Ok(Origin {
        community_name: crate::store::directory::place_name(store, &resident.community_id)?,
        community_id: resident.community_id,
        resident_id: resident.id,
        resident_name: resident.name,
        address: resident.address,
        device_kind,
    })
}

/// Which devices a gateway may speak for: those registered to it, and
/// devices the directory does not know (an unregistered device's SOS must
/// still reach a dispatcher). Looked up once per device and kept for a
/// while, so telemetry at full rate costs no directory read per event.
struct DeviceOwners {
    /// device → (may this gateway speak for it, its resident, when read).
    known: std::collections::HashMap<String, (bool, String, std::time::Instant)>,
}

const OWNER_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl DeviceOwners {
    fn new() -> Self {
        Self {
            known: Default::default(),
        }
    }

    fn allowed(
        &mut self,
        desk: &AlertDesk,
        gateway_id: &str,
        device_id: &str,
    ) -> Result<bool, StoreError> {
        if device_id == gateway_id {
            return Ok(true);
        }
        if let Some((allowed, _, at)) = self.known.get(device_id)
            && at.elapsed() < OWNER_TTL
        {
            return Ok(*allowed);
        }
        let device = desk.store().device(device_id)?;
        let allowed = device
            .as_ref()
            .is_none_or(|d| d.gateway_id.is_empty() || d.gateway_id == gateway_id);
        if self.known.len() > 100_000 {
            self.known.clear();
        }
        self.known.insert(
            device_id.to_string(),
            (
                allowed,
                device.map(|d| d.resident_id).unwrap_or_default(),
                std::time::Instant::now(),
            ),
        );
        Ok(allowed)
    }

    /// The resident of a device [`Self::allowed`] looked at ("" if none).
    fn resident(&self, device_id: &str) -> &str {
        self.known.get(device_id).map_or("", |k| k.1.as_str())
    }
}

/// Events for other gateways' devices: acknowledged so the sender's journal
/// lets go of them, never stored, counted, logged and audited once per
/// batch.
fn refuse_foreign(desk: &AlertDesk, gateway_id: &str, refused: &[(String, u64)]) {
    if refused.is_empty() {
        return;
    }
    metrics::counter!(m::EVENTS_FOREIGN).increment(refused.len() as u64);
    let examples: Vec<String> = refused
        .iter()
        .take(5)
        .map(|(device, seq)| format!("{device}#{seq}"))
        .collect();
    tracing::warn!(gateway_id, count = refused.len(), examples = %examples.join(","), "events for devices this gateway may not speak for refused (another gateway's, or the server's own)");
    let entry = anxin_proto::v1::AuditEntry {
        at_ms: now_ms(),
        actor: format!("gateway/{gateway_id}"),
        action: "uplink.refused".into(),
        target: format!("gateway/{gateway_id}"),
        detail: format!(
            "{} event(s) for devices registered to another gateway, e.g. {}",
            refused.len(),
            examples.join(", ")
        ),
        ..Default::default()
    };
    if let Err(err) = desk.store().append(entry) {
        tracing::error!(gateway_id, error = %err, "auditing refused events failed");
    }
}

/// Most events committed under one flush.
const MAX_BATCH: usize = 512;

/// Test-only fault injection: with `ANXIN_FAULT=crash_after_commit` the
/// process dies right after a flush and before sending `received`, the
/// moment a kill -9 hurts most.
fn crash_after_commit() -> bool {
    std::env::var("ANXIN_FAULT").is_ok_and(|v| v == "crash_after_commit")
}

pub struct UplinkService {
    desk: AlertDesk,
    auth: Authenticator,
    health: Arc<Health>,
    /// A gateway must present a client certificate naming it (grpc.tls
    /// with a client CA).
    require_cert: bool,
}

impl UplinkService {
    pub fn new(desk: AlertDesk, auth: Authenticator, health: Arc<Health>) -> Self {
        Self {
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
        let entry = anxin_proto::v1::AuditEntry {
            at_ms: now_ms(),
            actor: format!("gateway/{gateway_id}"),
            action: "uplink.refused".into(),
            target: format!("gateway/{gateway_id}"),
            detail: problem.clone(),
            ..Default::default()
        };
        if let Err(err) = self.desk.store().append(entry) {
            tracing::error!(gateway_id, error = %err, "auditing a refused uplink failed");
        }
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
/// them in its journal and retries with backoff.
fn refusal(health: &Health, gateway_id: &str) -> Option<Status> {
    let why = health.refuse_events()?;
    metrics::counter!(m::UPLINK_REFUSED_DISK).increment(1);
    tracing::warn!(gateway_id, "uplink refused: {why}");
    Some(Status::resource_exhausted(why))
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Uplink for UplinkService {
    type LinkStream = ServerStream;

    async fn link(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let principal = crate::api::grpc::caller(&self.auth, &request).inspect_err(|status| {
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
        if let Some(status) = refusal(&self.health, &gateway_id) {
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
        let health = self.health.clone();
        // When this side gives up on the stream (a commit failed: the
        // database went away, say), the gateway must hear it and connect
        // again, here or to another replica; other holders of `outbound`
        // (the roster task, the registry) would otherwise keep it open.
        let ended = tokio_util::sync::CancellationToken::new();
        let end_stream = ended.clone();
        tokio::spawn(async move {
            let result = serve_gateway(&desk, &health, &gateway_id, &mut inbound, &outbound).await;
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
        let ended = futures::stream::once(async {
            Err(Status::unavailable(
                "this server stopped taking events on this stream; connect again",
            ))
        });
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            stream, ended,
        ))))
    }
}

use tokio_stream::StreamExt as _;

/// Devices per roster message: 2,000 devices are ~200 KB, well under
/// gRPC's 4 MB message limit.
const ROSTER_PART: usize = 2000;

/// The devices a gateway serves, with their credentials, as the directory
/// has them.
pub fn roster_of(desk: &AlertDesk, gateway_id: &str) -> Result<Vec<RosterDevice>, StoreError> {
    let mut query = crate::domain::listing::ListQuery {
        gateway: gateway_id.into(),
        limit: crate::domain::listing::MAX_LIMIT,
        ..Default::default()
    };
    let mut roster = Vec::new();
    loop {
        let page = desk.store().devices_page(&query)?;
        roster.extend(page.items.into_iter().map(|d| RosterDevice {
            device_id: d.id,
            kind: d.kind,
            password_sha256: d.password_sha256,
            deactivated: d.deactivated,
        }));
        match page.next {
            Some(next) => query.after = next,
            None => return Ok(roster),
        }
    }
}

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

/// Counts a committed (or duplicate) event, with a log line per alarm and
/// telemetry only at debug.
fn note_commit(gateway_id: &str, event: &anxin_proto::DeviceEvent, new: bool) {
    let (device_id, seq) = (&event.device_id, event.seq);
    if !new {
        metrics::counter!(m::EVENTS_DUPLICATE).increment(1);
        tracing::debug!(gateway_id, %device_id, seq, "duplicate event absorbed");
        return;
    }
    let priority = ["P0", "P1", "P2", "P3"][event.priority() as usize];
    metrics::counter!(m::EVENTS_COMMITTED, "priority" => priority).increment(1);
    let kind = event.kind().as_str_name();
    if event.priority() <= anxin_proto::Priority::P1 {
        tracing::info!(gateway_id, %device_id, seq, kind, "event committed");
    } else {
        tracing::debug!(gateway_id, %device_id, seq, kind, "event committed");
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

async fn serve_gateway(
    desk: &AlertDesk,
    health: &Health,
    gateway_id: &str,
    inbound: &mut Streaming<GatewayMessage>,
    outbound: &mpsc::Sender<ServerMessage>,
) -> Result<(), GatewayStreamError> {
    let send = |message: ServerMessage| async move {
        outbound
            .send(message)
            .await
            .map_err(|_| GatewayStreamError::ResponseClosed)
    };
    let mut owners = DeviceOwners::new();
    // Help-is-coming messages queued while the gateway was away.
    for downlink in desk.store().pending_downlinks(gateway_id)? {
        send(ServerMessage {
            body: Some(server_message::Body::Downlink(downlink)),
        })
        .await?;
    }
    loop {
        let Some(first) = inbound.message().await? else {
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
        if let Some(status) = refusal(health, gateway_id) {
            return Err(status.into());
        }
        let received_ms = now_ms();
        let mut acks = Vec::new();
        let mut changed_alerts = Vec::new();
        // Telemetry and the like go to the store in one write; alarms and
        // cancels one by one, each with its incident decision.
        let mut plain = Vec::new();
        let mut others = Vec::with_capacity(batch.len());
        let mut foreign = Vec::new();
        let mut signs = Vec::new();
        // Devices whose "I'm OK" is committed for the first time here.
        let mut fresh_checkins = Vec::new();
        for message in batch {
            if let Some(gateway_message::Body::Event(uplink)) = &message.body
                && let Some(event) = &uplink.event
            {
                // Only the server raises CHECKIN_MISSED (and owns its device
                // ids): from a gateway it is refused like a foreign device's.
                let servers_own = event.kind == anxin_proto::EventKind::CheckinMissed as i32
                    || event
                        .device_id
                        .starts_with(crate::domain::welfare::CHECKIN_DEVICE_PREFIX);
                if servers_own || !owners.allowed(desk, gateway_id, &event.device_id)? {
                    foreign.push((event.device_id.clone(), event.seq));
                    continue;
                }
                // Signs of life count resent events too: a kill between the
                // commit and this write must not lose the resident's "I'm OK".
                let resident = owners.resident(&event.device_id);
                if let Some(how) = crate::domain::welfare::sign_in(event)
                    && !resident.is_empty()
                {
                    signs.push(SignOfLife {
                        resident_id: resident.to_string(),
                        at_ms: if (1..=received_ms).contains(&uplink.stored_ms) {
                            uplink.stored_ms
                        } else {
                            received_ms
                        },
                        how: how.into(),
                        source: event.device_id.clone(),
                    });
                }
            }
            match message.body {
                Some(gateway_message::Body::Event(uplink))
                    if uplink
                        .event
                        .as_ref()
                        .is_some_and(|e| !crate::domain::incidents::affects_incidents(e)) =>
                {
                    plain.push(uplink)
                }
                body => others.push(GatewayMessage { body }),
            }
        }
        for message in others {
            match message.body {
                Some(gateway_message::Body::Event(uplink)) => {
                    let Some(event) = uplink.event.as_ref() else {
                        metrics::counter!(m::EVENTS_INVALID).increment(1);
                        tracing::warn!(gateway_id, "uplink event without a body ignored");
                        continue;
                    };
                    let (device_id, seq) = (event.device_id.clone(), event.seq);
                    let committed = origin_of(desk, gateway_id, event).and_then(|origin| {
                        desk.store().commit_event(
                            gateway_id,
                            &uplink,
                            received_ms,
                            &origin,
                            &desk.policy().incidents,
                        )
                    });
                    match committed {
                        Ok(Committed::New { alert }) => {
                            note_commit(gateway_id, event, true);
                            if let Some(changed) = alert {
                                let (alert, decision) = *changed;
                                tracing::info!(gateway_id, %device_id, seq, alert_id = %alert.id, decision = crate::domain::incidents::action_name(decision), "incident");
                                if decision == Decision::Raise {
                                    metrics::counter!(m::ALERTS_CREATED).increment(1);
                                }
                                changed_alerts.push((alert, decision));
                            }
                        }
                        Ok(Committed::Duplicate) => note_commit(gateway_id, event, false),
                        Err(err @ (StoreError::Storage(_) | StoreError::Database(_))) => {
                            // The store is out of use: end the stream; the
                            // gateway keeps the event and resends.
                            metrics::counter!(m::STORE_ERRORS).increment(1);
                            tracing::error!(gateway_id, %device_id, seq, error = %err, "commit failed");
                            return Err(err.into());
                        }
                        Err(err) => {
                            // No ack: the gateway keeps the event and resends.
                            metrics::counter!(m::STORE_ERRORS).increment(1);
                            tracing::error!(gateway_id, %device_id, seq, error = %err, "commit failed");
                            continue;
                        }
                    }
                    acks.push(Received { device_id, seq });
                }
                Some(gateway_message::Body::DownlinkDone(done)) => {
                    desk.store().downlink_done(gateway_id, done.downlink_id)?;
                }
                Some(gateway_message::Body::Status(status)) => {
                    desk.gateways().report(gateway_id, status);
                }
                Some(gateway_message::Body::Hello(_)) | None => {
                    metrics::counter!(m::EVENTS_INVALID).increment(1);
                }
            }
        }
        // After the alarms: the gateway sends by priority, and commits keep
        // that order (a P0 is committed before telemetry that queued ahead).
        if !plain.is_empty() {
            match desk
                .store()
                .commit_plain_events(gateway_id, &plain, received_ms)
            {
                Ok(new) => {
                    for (uplink, new) in plain.iter().zip(new) {
                        let event = uplink.event.as_ref().expect("partitioned on Some");
                        note_commit(gateway_id, event, new);
                        if new && event.kind == anxin_proto::EventKind::CheckinOk as i32 {
                            fresh_checkins.push(event.device_id.clone());
                        }
                        acks.push(Received {
                            device_id: event.device_id.clone(),
                            seq: event.seq,
                        });
                    }
                }
                Err(err) => {
                    // No acks: the gateway keeps the events and resends
                    // them on its next stream.
                    metrics::counter!(m::STORE_ERRORS).increment(plain.len() as u64);
                    tracing::error!(gateway_id, events = plain.len(), error = %err, "commit failed");
                    return Err(err.into());
                }
            }
        }
        if !signs.is_empty()
            && let Err(err) = desk.store().note_signs(&signs)
        {
            // No acks: the gateway resends, and the signs come again.
            metrics::counter!(m::STORE_ERRORS).increment(1);
            tracing::error!(gateway_id, error = %err, "recording signs of life failed");
            return Err(err.into());
        }
        refuse_foreign(desk, gateway_id, &foreign);
        acks.extend(
            foreign
                .into_iter()
                .map(|(device_id, seq)| Received { device_id, seq }),
        );
        if acks.is_empty() && changed_alerts.is_empty() {
            continue;
        }
        if let Err(err) = desk.store().flush().await {
            metrics::counter!(m::STORE_ERRORS).increment(1);
            // Nothing acked: the gateway resends after reconnecting.
            return Err(err.into());
        }
        if crash_after_commit() {
            tracing::error!("ANXIN_FAULT=crash_after_commit: dying before the received ack");
            std::process::abort();
        }
        // A resident's own "I'm OK" reaches an open missed check-in alert.
        for sign in signs
            .into_iter()
            .filter(|s| s.how == "checkin" && fresh_checkins.contains(&s.source))
        {
            let desk = desk.clone();
            tokio::spawn(async move {
                crate::desks::welfare::checkins::tell_open_alerts(&desk, &sign).await;
            });
        }
        for (alert, decision) in changed_alerts {
            desk.announce(alert.clone());
            match decision {
                Decision::Raise => {
                    let desk = desk.clone();
                    tokio::spawn(async move { desk.route(&alert.id).await });
                }
                Decision::Cancel => desk.stand_down(&alert, &alert),
                Decision::Attach {
                    priority_raised: true,
                } => {
                    let desk = desk.clone();
                    tokio::spawn(async move { desk.tighten_deadline(&alert.id).await });
                }
                _ => {}
            }
        }
        for received in acks {
            send(ServerMessage {
                body: Some(server_message::Body::Received(received)),
            })
            .await?;
        }
    }
}
