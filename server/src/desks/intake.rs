//! The intake desk: what the server does with a gateway's batch of events
//! — the one place that decides it, below the transport (`api/uplink.rs`
//! only receives, hands over, flushes and answers `Received`).
//!
//! Per batch: which devices the gateway may speak for (the directory, read
//! once per device and kept a while), each alarm or cancel committed with
//! its resident and its incident decision in one transaction, telemetry in
//! one write after them, signs of life recorded before any `Received`;
//! events for other gateways' devices acknowledged, never stored, counted
//! and audited. What follows a commit — watchers told, new alerts routed,
//! a resident's "I'm OK" reaching an open missed check-in — happens in
//! [`Settler::settle`], after the store's flush made the batch
//! durable (guarantees 2 and 3).

use anxin_proto::{
    now_ms,
    v1::{
        GatewayMessage, Position, Received, RosterDevice, SignOfLife, UplinkEvent, gateway_message,
    },
};

use crate::{
    desks::{
        alerts::AlertDesk,
        signals::{Reading, Signals},
    },
    domain::{
        incidents::{Decision, Origin},
        listing::{ListQuery, MAX_LIMIT},
        welfare::sign_in,
    },
    metrics as m,
    store::{
        Committed, StoreError,
        directory::{Directory, place_name, resident_origin},
    },
};

/// Who a device belongs to, as the directory says. A gateway reporting on
/// itself (GATEWAY_FAULT, device_id = its own id) belongs to the gateway's
/// community, so that community's dispatchers see it.
fn origin_of(
    desk: &AlertDesk,
    gateway_id: &str,
    event: &anxin_proto::DeviceEvent,
    received_ms: i64,
) -> Result<Origin, StoreError> {
    let store = desk.store();
    let device_id = event.device_id.as_str();
    if device_id == gateway_id && event.kind() == anxin_proto::EventKind::GatewayFault {
        let gateway = store.gateway(gateway_id)?.unwrap_or_default();
        return Ok(Origin {
            community_name: place_name(store, &gateway.community_id)?,
            community_id: gateway.community_id,
            address: gateway.name,
            device_kind: "gateway".into(),
            ..Default::default()
        });
    }
    // Where the resident is: the event's own fix, else the device's last.
    // Stamped as the batch's other positions are, so the raising event's
    // own fix is recognised among them (and not added to the track).
    let position = match position_of(event, received_ms) {
        Some(position) => Some(position),
        None => store.last_position(device_id)?.map(|p| Position {
            source: "last_known".into(),
            ..p
        }),
    };
    let Some(device) = store.device(device_id)? else {
        return Ok(Origin {
            position,
            ..Default::default()
        });
    };
    let resident = store.resident(&device.resident_id)?.unwrap_or_default();
    Ok(Origin {
        resident_id: device.resident_id,
        position,
        ..resident_origin(store, resident, device.kind)?
    })
}

/// The position an event carries, if any.
fn position_of(event: &anxin_proto::DeviceEvent, received_ms: i64) -> Option<Position> {
    match &event.detail {
        Some(anxin_proto::v1::device_event::Detail::Location(location)) => Some(Position {
            location: Some(location.clone()),
            at_ms: received_ms,
            device_id: event.device_id.clone(),
            source: "event".into(),
        }),
        _ => None,
    }
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
    let detail = format!(
        "{} event(s) for devices registered to another gateway, e.g. {}",
        refused.len(),
        examples.join(", ")
    );
    refuse_uplink(desk, gateway_id, &detail);
}

/// Audits what the uplink refused a gateway (`uplink.refused`): a stream at
/// connect (`detail` says why), or events for devices it may not speak for.
pub fn refuse_uplink(desk: &AlertDesk, gateway_id: &str, detail: &str) {
    let entry = anxin_proto::v1::AuditEntry {
        at_ms: now_ms(),
        actor: format!("gateway/{gateway_id}"),
        action: "uplink.refused".into(),
        target: format!("gateway/{gateway_id}"),
        detail: detail.to_string(),
        ..Default::default()
    };
    if let Err(err) = desk.store().append(entry) {
        tracing::error!(gateway_id, error = %err, "auditing a refusal on the uplink failed");
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

/// The devices a gateway serves, with their credentials, as the directory
/// has them.
pub fn roster_of(desk: &AlertDesk, gateway_id: &str) -> Result<Vec<RosterDevice>, StoreError> {
    let mut query = ListQuery {
        gateway: gateway_id.into(),
        limit: MAX_LIMIT,
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
            credential: d.credential,
        }));
        match page.next {
            Some(next) => query.after = next,
            None => return Ok(roster),
        }
    }
}

/// What a batch left to do once the store's flush made it durable.
#[derive(Default)]
pub struct Taken {
    /// Every event the gateway may now forget: committed, duplicate, or
    /// refused as another gateway's.
    acks: Vec<Received>,
    /// Alerts raised, attached to or cancelled by the batch.
    changed_alerts: Vec<(anxin_proto::v1::Alert, Decision)>,
    /// Residents' own "I'm OK", committed for the first time here.
    checkins: Vec<SignOfLife>,
    /// Positions the batch carried, with their devices' residents: added
    /// to the track of the residents' open alerts.
    positions: Vec<(String, Position)>,
    /// Episodes of the health and safety rules the batch ended.
    returned: Vec<crate::desks::signals::Returned>,
    /// The batch's readings, for the rules ([`Settler::judge`]).
    readings: Vec<Reading>,
    received_ms: i64,
}

impl Taken {
    /// Nothing to flush and nothing to answer.
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.changed_alerts.is_empty()
    }

    /// Readings for the rules to judge ([`Settler::judge`]).
    pub fn has_readings(&self) -> bool {
        !self.readings.is_empty()
    }

    /// Alarms (or cancels) to announce once flushed.
    pub fn has_alarms(&self) -> bool {
        !self.changed_alerts.is_empty()
    }
}

/// The intake of one gateway's stream: who it may speak for is learnt as
/// it goes.
pub struct GatewayIntake {
    settler: Settler,
    owners: DeviceOwners,
}

/// What follows a batch's take, shared with the stream's judge: the rules'
/// judgement of its readings, the flush, and the settling. Cloned into a
/// task of its own so that an alarm taken on the stream never waits for
/// the readings of the batch before it.
#[derive(Clone)]
pub struct Settler {
    desk: AlertDesk,
    gateway_id: String,
    signals: std::sync::Arc<Signals>,
}

impl GatewayIntake {
    pub fn new(desk: AlertDesk, signals: std::sync::Arc<Signals>, gateway_id: &str) -> Self {
        Self {
            settler: Settler {
                desk,
                gateway_id: gateway_id.to_string(),
                signals,
            },
            owners: DeviceOwners::new(),
        }
    }

    pub fn gateway_id(&self) -> &str {
        &self.settler.gateway_id
    }

    /// The flush, the rules and the settling of what this intake took.
    pub fn settler(&self) -> &Settler {
        &self.settler
    }

    /// "Help is coming" messages queued while the gateway was away.
    pub fn pending_downlinks(&self) -> Result<Vec<anxin_proto::v1::Downlink>, StoreError> {
        self.settler
            .desk
            .store()
            .pending_downlinks(&self.settler.gateway_id)
    }

    /// Commits a batch (not yet durable: [`Settler::flush`], then
    /// [`Settler::settle`]). An error means the store is out of use: the
    /// stream ends and the gateway resends what it did not hear back.
    pub fn take(&mut self, batch: Vec<GatewayMessage>) -> Result<Taken, StoreError> {
        let desk = &self.settler.desk;
        let gateway_id = self.settler.gateway_id.as_str();
        let received_ms = now_ms();
        let mut taken = Taken {
            received_ms,
            ..Taken::default()
        };
        // Telemetry and the like go to the store in one write; alarms and
        // cancels one by one, each with its incident decision.
        let mut plain = Vec::new();
        let mut others = Vec::with_capacity(batch.len());
        let mut foreign = Vec::new();
        let mut signs = Vec::new();
        for message in batch {
            if let Some(gateway_message::Body::Event(uplink)) = &message.body
                && let Some(event) = &uplink.event
            {
                // Only the server raises its own kinds (a missed check-in, a
                // left zone, a silent meter) and owns its sources' ids: from
                // a gateway they are refused like a foreign device's.
                let servers_own = event
                    .known_kind()
                    .is_some_and(anxin_proto::raised_by_server)
                    || anxin_proto::is_server_source(&event.device_id);
                if servers_own || !self.owners.allowed(desk, gateway_id, &event.device_id)? {
                    foreign.push((event.device_id.clone(), event.seq));
                    continue;
                }
                // Signs of life count resent events too: a kill between the
                // commit and this write must not lose the resident's "I'm OK".
                let resident = self.owners.resident(&event.device_id);
                if let Some(position) = position_of(event, received_ms) {
                    taken.positions.push((resident.to_string(), position));
                }
                if let Some(how) = sign_in(event)
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
                body => others.push(body),
            }
        }
        for body in others {
            match body {
                Some(gateway_message::Body::Event(uplink)) => {
                    if let Some(ack) = self.commit_one(&uplink, received_ms, &mut taken)? {
                        taken.acks.push(ack);
                    }
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
        let fresh_checkins = self.commit_plain(&plain, received_ms, &mut taken)?;
        // The rules judge every reading, resent ones too: a reading whose
        // judgement was lost to a crash is judged now, and one judged
        // already is known by its seq.
        taken.readings = plain
            .iter()
            .filter_map(|uplink| {
                let device = uplink.event.as_ref().map_or("", |e| e.device_id.as_str());
                Reading::of(self.owners.resident(device), uplink, received_ms)
            })
            .collect();
        if !signs.is_empty()
            && let Err(err) = desk.store().note_signs(&signs)
        {
            // No acks: the gateway resends, and the signs come again.
            metrics::counter!(m::STORE_ERRORS).increment(1);
            tracing::error!(gateway_id, error = %err, "recording signs of life failed");
            return Err(err);
        }
        if !taken.positions.is_empty() {
            let positions: Vec<Position> = taken.positions.iter().map(|(_, p)| p.clone()).collect();
            if let Err(err) = desk.store().note_positions(&positions) {
                metrics::counter!(m::STORE_ERRORS).increment(1);
                tracing::error!(gateway_id, error = %err, "recording positions failed");
                return Err(err);
            }
        }
        taken.checkins = signs
            .into_iter()
            .filter(|s| s.how == "checkin" && fresh_checkins.contains(&s.source))
            .collect();
        refuse_foreign(desk, gateway_id, &foreign);
        taken.acks.extend(
            foreign
                .into_iter()
                .map(|(device_id, seq)| Received { device_id, seq }),
        );
        Ok(taken)
    }

    /// An alarm or a cancel, with its resident and incident decision in one
    /// transaction. `None`: not committed now (no ack; the gateway resends).
    fn commit_one(
        &self,
        uplink: &UplinkEvent,
        received_ms: i64,
        taken: &mut Taken,
    ) -> Result<Option<Received>, StoreError> {
        let (desk, gateway_id) = (&self.settler.desk, self.settler.gateway_id.as_str());
        let Some(event) = uplink.event.as_ref() else {
            metrics::counter!(m::EVENTS_INVALID).increment(1);
            tracing::warn!(gateway_id, "uplink event without a body ignored");
            return Ok(None);
        };
        let (device_id, seq) = (event.device_id.clone(), event.seq);
        let committed = origin_of(desk, gateway_id, event, received_ms).and_then(|origin| {
            desk.store().commit_event(
                gateway_id,
                uplink,
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
                    taken.changed_alerts.push((alert, decision));
                }
            }
            Ok(Committed::Duplicate) => note_commit(gateway_id, event, false),
            Err(
                err @ (StoreError::Storage(_)
                | StoreError::Database(_)
                | StoreError::DatabaseFull(_)
                | StoreError::Stalled(_)),
            ) => {
                // The store is out of use: end the stream; the gateway
                // keeps the event and resends.
                metrics::counter!(m::STORE_ERRORS).increment(1);
                tracing::error!(gateway_id, %device_id, seq, error = %err, "commit failed");
                return Err(err);
            }
            Err(err) => {
                // No ack: the gateway keeps the event and resends.
                metrics::counter!(m::STORE_ERRORS).increment(1);
                tracing::error!(gateway_id, %device_id, seq, error = %err, "commit failed");
                return Ok(None);
            }
        }
        Ok(Some(Received { device_id, seq }))
    }

    /// Telemetry and the like in one write; returns the devices whose
    /// "I'm OK" was new here.
    fn commit_plain(
        &self,
        plain: &[UplinkEvent],
        received_ms: i64,
        taken: &mut Taken,
    ) -> Result<Vec<String>, StoreError> {
        let gateway_id = self.settler.gateway_id.as_str();
        let mut fresh_checkins = Vec::new();
        if plain.is_empty() {
            return Ok(fresh_checkins);
        }
        match self
            .settler
            .desk
            .store()
            .commit_plain_events(gateway_id, plain, received_ms)
        {
            Ok(new) => {
                for (uplink, new) in plain.iter().zip(new) {
                    let event = uplink.event.as_ref().expect("partitioned on Some");
                    note_commit(gateway_id, event, new);
                    if new && event.kind == anxin_proto::EventKind::CheckinOk as i32 {
                        fresh_checkins.push(event.device_id.clone());
                    }
                    taken.acks.push(Received {
                        device_id: event.device_id.clone(),
                        seq: event.seq,
                    });
                }
                Ok(fresh_checkins)
            }
            Err(err) => {
                // No acks: the gateway keeps the events and resends
                // them on its next stream.
                metrics::counter!(m::STORE_ERRORS).increment(plain.len() as u64);
                tracing::error!(gateway_id, events = plain.len(), error = %err, "commit failed");
                Err(err)
            }
        }
    }
}

impl Settler {
    /// Makes everything taken so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.desk.store().flush().await.inspect_err(|_| {
            metrics::counter!(m::STORE_ERRORS).increment(1);
        })
    }

    /// The batch's readings judged against their residents' rules
    /// (`desks/signals.rs`): a rule's raise is committed like an alarm and
    /// settled with the batch. Before the last flush: a reading's judgement
    /// is durable before the gateway hears `received`.
    pub fn judge(&self, taken: &mut Taken) -> Result<(), StoreError> {
        if taken.readings.is_empty() {
            return Ok(());
        }
        let readings = std::mem::take(&mut taken.readings);
        let (raised, returned) = self
            .signals
            .take(readings, taken.received_ms)
            .inspect_err(|err| {
                metrics::counter!(m::STORE_ERRORS).increment(1);
                tracing::error!(gateway_id = %self.gateway_id, error = %err, "judging the batch's readings failed");
            })?;
        taken.changed_alerts.extend(raised);
        taken.returned.extend(returned);
        Ok(())
    }

    /// After a flush: the alarms taken so far told and routed now, not
    /// after the rules have judged the batch's readings.
    pub fn announce_alarms(&self, taken: &mut Taken) {
        self.settle_alerts(std::mem::take(&mut taken.changed_alerts));
    }

    /// After the flush: watchers told, new alerts routed, cancels stood
    /// down, a tightened deadline for a raised priority, a resident's own
    /// "I'm OK" brought to an open missed check-in. Returns the acks to
    /// send.
    pub fn settle(&self, taken: Taken) -> Vec<Received> {
        let desk = &self.desk;
        for sign in taken.checkins {
            let desk = desk.clone();
            tokio::spawn(async move {
                crate::desks::welfare::checkins::tell_open_alerts(&desk, &sign).await;
            });
        }
        self.settle_alerts(taken.changed_alerts);
        if !taken.returned.is_empty() {
            let desk = desk.clone();
            let returned = taken.returned;
            tokio::spawn(
                async move { crate::desks::signals::note_returned(&desk, &returned).await },
            );
        }
        let positions: Vec<(String, Position)> = taken
            .positions
            .into_iter()
            .filter(|(resident, _)| !resident.is_empty())
            .collect();
        if !positions.is_empty() {
            let desk = desk.clone();
            tokio::spawn(async move { track(&desk, &positions).await });
        }
        taken.acks
    }

    fn settle_alerts(&self, changed: Vec<(anxin_proto::v1::Alert, Decision)>) {
        let desk = &self.desk;
        for (alert, decision) in changed {
            desk.announce(alert.clone());
            match decision {
                Decision::Raise => {
                    let desk = desk.clone();
                    tokio::spawn(async move { desk.route(&alert.id).await });
                }
                Decision::Cancel => {
                    desk.stand_down(&alert, &alert);
                    let desk = desk.clone();
                    tokio::spawn(async move {
                        crate::desks::family::tell_closed(&desk, &alert.id).await
                    });
                }
                Decision::Attach {
                    priority_raised: true,
                } => {
                    let desk = desk.clone();
                    tokio::spawn(async move { desk.tighten_deadline(&alert.id).await });
                }
                _ => {}
            }
        }
    }
}

/// Positions reported after an alert was raised join its track (the
/// last [`TRACK_LIMIT`]): a carer looking for a resident who wanders
/// follows where they went.
pub async fn track(desk: &AlertDesk, positions: &[(String, anxin_proto::v1::Position)]) {
    let open = match desk.store().alerts(&crate::domain::lifecycle::OPEN_STATES) {
        Ok(open) => open,
        Err(err) => {
            tracing::warn!(error = %err, "reading open alerts for their tracks failed");
            return;
        }
    };
    let mut changed = false;
    for alert in open {
        // The raising event's own fix is the alert's position already.
        let fresh: Vec<&anxin_proto::v1::Position> = positions
            .iter()
            .filter(|(resident, p)| *resident == alert.resident_id && p.at_ms >= alert.created_ms)
            .map(|(_, p)| p)
            .filter(|p| alert.position.as_ref() != Some(*p))
            .collect();
        if fresh.is_empty() {
            continue;
        }
        let result = desk.store().update_alert(&alert.id, |a| {
            let mut fresh = fresh.iter().map(|p| (*p).clone());
            // A wearable sends its fix just after the fall it detected: an
            // alert with no position, or only the last known one, takes
            // the first fix that follows it as its position.
            if a.position.as_ref().is_none_or(|p| p.source == "last_known")
                && let Some(first) = fresh.next()
            {
                a.position = Some(anxin_proto::v1::Position {
                    source: "after_alarm".into(),
                    ..first
                });
            }
            a.track.extend(fresh);
            let excess = a
                .track
                .len()
                .saturating_sub(crate::desks::alerts::TRACK_LIMIT);
            a.track.drain(..excess);
            Ok(crate::store::Change::default())
        });
        match result {
            Ok((alert, _)) => {
                changed = true;
                desk.announce(alert);
            }
            Err(err) => {
                tracing::warn!(alert_id = %alert.id, error = %err, "adding to an alert's track failed")
            }
        }
    }
    if changed && let Err(err) = desk.store().flush().await {
        tracing::warn!(error = %err, "flushing alert tracks failed");
    }
}
