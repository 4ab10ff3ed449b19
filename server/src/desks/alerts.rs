//! The alert desk: the one place alerts change, shared by the REST and gRPC
//! APIs, the uplink (new incidents) and the escalation timer. Every change
//! is checked against the caller's rights, committed with its audit entries
//! and flushed before anyone hears of it, then broadcast to watchers (SSE,
//! WatchAlerts) and, where someone must act, sent through the notifier.

use std::{collections::HashSet, sync::Arc};

use anxin_proto::{
    AckKind, DeviceAck, EventKind, now_ms,
    v1::{
        Alert, AlertAction, AlertNote, AlertState, AuditEntry, Downlink, EscalationStep,
        ServerMessage, server_message,
    },
};
use tokio::sync::{Notify, broadcast};

use crate::{
    desks::audit::guard,
    desks::auth::AuthError,
    desks::callout::Callout,
    desks::gateways::ConnectedGateways,
    desks::outbox::Notifier,
    domain::incidents,
    domain::lifecycle,
    domain::notification::Notification,
    domain::rights::{Need, Principal},
    domain::routing::{self, Step},
    metrics as m,
    store::directory::Directory,
    store::{Change, Store, StoreError},
};

/// Positions kept on an alert's track.
pub const TRACK_LIMIT: usize = 200;

/// What a device says when its alarm is acknowledged.
pub const HELP_IS_COMING: &str = "help is coming";

/// Outcomes a resolved alert may carry.
pub const OUTCOMES: &[&str] = &[
    "attended",
    "false_alarm",
    "hospital",
    "no_answer",
    "referred",
    "other",
];

#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    BadRequest(String),
}

pub use super::policy::DeskPolicy;

#[derive(Clone)]
pub struct AlertDesk {
    store: Store,
    gateways: Arc<ConnectedGateways>,
    changes: broadcast::Sender<Alert>,
    policy: Arc<DeskPolicy>,
    notifier: Notifier,
    deadlines_changed: Arc<Notify>,
    /// Enrolled residents and visit plans, read again after a directory
    /// change (shared by the welfare judges and the welfare API).
    welfare: Arc<crate::desks::welfare::view::WelfareView>,
    callout: Callout,
}

/// One row of the staff board.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BoardEntry {
    #[serde(flatten)]
    pub staff: anxin_proto::v1::Staff,
    pub on_duty: bool,
    /// Alerts offered to this person now.
    pub offers: Vec<String>,
    /// Open alerts this person has taken.
    pub assigned: Vec<String>,
}

/// One action on an alert, as the APIs pass it.
#[derive(Debug, Clone, Default)]
pub struct Act {
    pub action: Option<AlertAction>,
    pub outcome: String,
    pub note: String,
    pub staff_id: String,
}

pub fn audit(actor: &str, action: &str, alert: &Alert, detail: String) -> AuditEntry {
    AuditEntry {
        at_ms: now_ms(),
        actor: actor.to_string(),
        action: action.to_string(),
        target: format!("alert/{}", alert.id),
        community_id: alert.community_id.clone(),
        detail,
        ..Default::default()
    }
}

pub fn stale(text: impl Into<String>) -> StoreError {
    StoreError::Stale(text.into())
}

impl AlertDesk {
    pub fn new(
        store: Store,
        gateways: Arc<ConnectedGateways>,
        policy: DeskPolicy,
        notifier: Notifier,
    ) -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self {
            callout: Callout::new(store.clone(), policy.callout.clone()),
            store,
            gateways,
            changes,
            policy: Arc::new(policy),
            notifier,
            deadlines_changed: Arc::new(Notify::new()),
            welfare: Default::default(),
        }
    }

    pub fn welfare(&self) -> &crate::desks::welfare::view::WelfareView {
        &self.welfare
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn gateways(&self) -> &Arc<ConnectedGateways> {
        &self.gateways
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    pub fn callout(&self) -> &Callout {
        &self.callout
    }

    pub fn policy(&self) -> &DeskPolicy {
        &self.policy
    }

    /// Woken whenever an offer deadline may have moved earlier.
    pub fn deadlines_changed(&self) -> &Notify {
        &self.deadlines_changed
    }

    /// Tells watchers about a committed (and flushed) alert or change.
    pub fn announce(&self, alert: Alert) {
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(alert);
    }

    /// What follows an alarm the server raised itself (a missed check-in,
    /// a rule on readings) once its commit is durable: watchers told, a new
    /// alert routed, a raised priority's offer deadline tightened.
    pub async fn raised(&self, alert: Alert, decision: crate::domain::incidents::Decision) {
        use crate::domain::incidents::Decision;
        self.announce(alert.clone());
        match decision {
            Decision::Raise => {
                metrics::counter!(crate::metrics::ALERTS_CREATED).increment(1);
                self.route(&alert.id).await
            }
            Decision::Attach {
                priority_raised: true,
            } => self.tighten_deadline(&alert.id).await,
            _ => {}
        }
    }

    /// Alerts the caller may see.
    pub fn list(&self, caller: &Principal, states: &[AlertState]) -> Result<Vec<Alert>, DeskError> {
        guard(&self.store, caller, Need::ViewAlerts, None, "alerts")?;
        Ok(self
            .store
            .alerts(states)?
            .into_iter()
            .filter(|a| caller.sees(&a.community_id))
            .collect())
    }

    /// A page of the alerts the caller may see, newest first (history:
    /// [`crate::domain::listing`]).
    pub fn history(
        &self,
        caller: &Principal,
        mut query: crate::domain::listing::ListQuery,
    ) -> Result<crate::domain::listing::Page<Alert>, DeskError> {
        guard(&self.store, caller, Need::ViewAlerts, None, "alerts")?;
        query.scope = caller.scope();
        Ok(self.store.alerts_page(&query)?)
    }

    /// Open alerts (offered, acknowledged, en route, on scene).
    fn open_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        self.store.alerts(&[
            AlertState::Offered,
            AlertState::Acknowledged,
            AlertState::EnRoute,
            AlertState::OnScene,
        ])
    }

    /// The staff board: who is on duty now and what each person holds.
    pub fn staff_board(
        &self,
        staff: Vec<anxin_proto::v1::Staff>,
    ) -> Result<Vec<BoardEntry>, DeskError> {
        let open = self.open_alerts()?;
        let now = now_ms();
        Ok(staff
            .into_iter()
            .map(|s| {
                let offers = open
                    .iter()
                    .filter(|a| a.offered_to == s.id)
                    .map(|a| a.id.clone())
                    .collect();
                let assigned = open
                    .iter()
                    .filter(|a| a.assigned_to == s.id)
                    .map(|a| a.id.clone())
                    .collect();
                BoardEntry {
                    on_duty: routing::on_duty(&s, now, self.policy.utc_offset_minutes),
                    offers,
                    assigned,
                    staff: s,
                }
            })
            .collect())
    }

    pub fn get(&self, caller: &Principal, alert_id: &str) -> Result<Alert, DeskError> {
        let alert = self.store.alert(alert_id)?;
        guard(
            &self.store,
            caller,
            Need::ViewAlerts,
            Some(&alert.community_id),
            &format!("alert/{alert_id}"),
        )?;
        Ok(alert)
    }

    /// A snapshot plus every change after it. Subscribing before reading the
    /// snapshot means no change falls between the two; a change may show up
    /// in both, which is harmless because each update carries the whole
    /// alert. The caller filters changes with [`Principal::sees`].
    /// A snapshot, then every change. Without `states` the snapshot is the
    /// open alerts (a city's history is years of alerts: it is read in
    /// pages, never sent whole down a stream), and changes of any state
    /// follow, so a watcher sees an alert close.
    /// Every change from now on, unfiltered (the family view filters its
    /// own resident's).
    pub fn subscribe(&self) -> broadcast::Receiver<Alert> {
        self.changes.subscribe()
    }

    pub fn watch(
        &self,
        caller: &Principal,
        states: &[AlertState],
    ) -> Result<(Vec<Alert>, broadcast::Receiver<Alert>), DeskError> {
        let receiver = self.changes.subscribe();
        let snapshot = if states.is_empty() {
            self.list(caller, &crate::domain::lifecycle::OPEN_STATES)?
        } else {
            self.list(caller, states)?
        };
        Ok((snapshot, receiver))
    }

    pub async fn acknowledge(
        &self,
        caller: &Principal,
        alert_id: &str,
    ) -> Result<Alert, DeskError> {
        self.act(
            caller,
            alert_id,
            Act {
                action: Some(AlertAction::Acknowledge),
                ..Default::default()
            },
        )
        .await
    }

    pub async fn resolve(
        &self,
        caller: &Principal,
        alert_id: &str,
        outcome: &str,
    ) -> Result<Alert, DeskError> {
        self.act(
            caller,
            alert_id,
            Act {
                action: Some(AlertAction::Resolve),
                outcome: outcome.to_string(),
                ..Default::default()
            },
        )
        .await
    }

    /// Any step of the lifecycle, by a person.
    pub async fn act(
        &self,
        caller: &Principal,
        alert_id: &str,
        act: Act,
    ) -> Result<Alert, DeskError> {
        let current = self.store.alert(alert_id)?;
        guard(
            &self.store,
            caller,
            Need::Act,
            Some(&current.community_id),
            &format!("alert/{alert_id}"),
        )?;
        let action = act
            .action
            .filter(|a| *a != AlertAction::Unspecified)
            .ok_or_else(|| DeskError::BadRequest("no action given".into()))?;
        let actor = caller.name();
        let now = now_ms();
        match action {
            AlertAction::Decline => {
                if caller.is_field_staff() && current.offered_to != actor {
                    return Err(AuthError::Forbidden(format!(
                        "alert {alert_id} is not offered to {actor}"
                    ))
                    .into());
                }
                return self
                    .advance(alert_id, &actor, &format!("declined by {actor}"), false)
                    .await;
            }
            AlertAction::Escalate => {
                return self
                    .advance(alert_id, &actor, &format!("escalated by {actor}"), false)
                    .await;
            }
            AlertAction::Assign => return self.assign(caller, alert_id, &act.staff_id).await,
            _ => {}
        }
        if action == AlertAction::Resolve && !OUTCOMES.contains(&act.outcome.as_str()) {
            return Err(DeskError::BadRequest(format!(
                "outcome `{}` is not one of {}",
                act.outcome,
                OUTCOMES.join(", ")
            )));
        }
        if action == AlertAction::Note && act.note.trim().is_empty() {
            return Err(DeskError::BadRequest("a note needs text".into()));
        }
        let field_staff = caller.is_field_staff();
        let family = match action {
            AlertAction::Acknowledge | AlertAction::Resolve | AlertAction::Cancel
                if current.family.is_some() =>
            {
                self.callout.family_of(&current)?
            }
            _ => None,
        };
        // Who the family hears is coming: the person who took it.
        let taker = if field_staff {
            caller.display_name()
        } else {
            self.store
                .staff_member(&current.offered_to)?
                .map_or_else(|| actor.clone(), |s| s.name)
        };
        let (alert, downlinks) = self.store.update_alert(alert_id, |a| {
            let before = a.clone();
            let mut change = Change::default();
            let name = match action {
                AlertAction::Acknowledge => {
                    a.set_state(AlertState::Acknowledged);
                    a.acknowledged_ms = now;
                    a.acknowledged_by = actor.clone();
                    a.assigned_to = if field_staff {
                        actor.clone()
                    } else {
                        a.offered_to.clone()
                    };
                    a.offered_to.clear();
                    a.offer_deadline_ms = 0;
                    change.device_acks = device_acks_help_is_coming(a);
                    "acknowledge"
                }
                AlertAction::EnRoute => {
                    a.set_state(AlertState::EnRoute);
                    a.en_route_ms = now;
                    "en_route"
                }
                AlertAction::OnScene => {
                    a.set_state(AlertState::OnScene);
                    a.on_scene_ms = now;
                    "on_scene"
                }
                AlertAction::Resolve => {
                    a.set_state(AlertState::Resolved);
                    a.resolved_ms = now;
                    a.resolved_by = actor.clone();
                    a.outcome = act.outcome.clone();
                    "resolve"
                }
                AlertAction::Cancel => {
                    a.set_state(AlertState::Cancelled);
                    a.cancelled_ms = now;
                    a.outcome = "cancelled_by_staff".into();
                    a.offer_deadline_ms = 0;
                    "cancel"
                }
                AlertAction::Note => "note",
                _ => unreachable!("handled above"),
            };
            if action != AlertAction::Note {
                // The store checks only moves that change the state; a
                // repeated action (a second acknowledge) is refused here.
                lifecycle::check(before.state(), a.state())?;
            }
            if field_staff
                && a.assigned_to.is_empty()
                && matches!(action, AlertAction::EnRoute | AlertAction::OnScene)
            {
                a.assigned_to = actor.clone();
            }
            if !act.note.trim().is_empty() {
                a.notes.push(AlertNote {
                    at_ms: now,
                    by: actor.clone(),
                    text: act.note.trim().to_string(),
                });
            }
            let detail = format!(
                "{} → {}{}",
                lifecycle::name(before.state()),
                lifecycle::name(a.state()),
                match (action, act.note.trim()) {
                    (AlertAction::Resolve, _) => format!(" outcome={}", a.outcome),
                    (_, "") => String::new(),
                    (_, note) => format!(" note: {note}"),
                }
            );
            change
                .audit
                .push(audit(&actor, &format!("alert.{name}"), a, detail));
            if let Some(family) = &family {
                let kind = if action == AlertAction::Acknowledge {
                    "taken"
                } else {
                    "resolved"
                };
                // Family first: nobody else is called once it is taken.
                if let Some(record) = a.family.as_mut() {
                    record.deadline_ms = 0;
                }
                change
                    .notifications
                    .extend(self.callout.follow_up(a, family, kind, &taker, "", now));
            }
            Ok(change)
        })?;
        self.store.flush().await?;
        if alert.family.is_some() {
            self.notifier.wake();
        }
        tracing::info!(alert_id, by = %actor, action = action.as_str_name(), state = lifecycle::name(alert.state()), "alert changed");
        metrics::counter!(m::ALERT_TRANSITIONS, "to" => lifecycle::name(alert.state()))
            .increment(1);
        self.push_downlinks(&alert, downlinks);
        if action == AlertAction::Cancel {
            self.stand_down(&alert, &current);
        }
        self.announce(alert.clone());
        Ok(alert)
    }

    pub fn push_downlinks(&self, alert: &Alert, downlinks: Vec<Downlink>) {
        for downlink in downlinks {
            let message = ServerMessage {
                body: Some(server_message::Body::Downlink(downlink)),
            };
            if !self.gateways.try_send(&alert.gateway_id, message) {
                tracing::warn!(alert_id = %alert.id, gateway_id = %alert.gateway_id, "gateway not connected; help-is-coming queued until it returns");
            }
        }
    }

    /// Offers the alert to a named person (or reassigns it once taken).
    async fn assign(
        &self,
        caller: &Principal,
        alert_id: &str,
        staff_id: &str,
    ) -> Result<Alert, DeskError> {
        let staff = self
            .store
            .staff_member(staff_id)?
            .filter(|s| s.active)
            .ok_or_else(|| DeskError::BadRequest(format!("no active staff member `{staff_id}`")))?;
        let actor = caller.name();
        let now = now_ms();
        let deadline = self
            .policy
            .deadline_ms(self.store.alert(alert_id)?.priority);
        let (alert, _) = self.store.update_alert(alert_id, |a| {
            if !routing::serves(&staff, &a.community_id) {
                return Err(StoreError::Refused(format!(
                    "{staff_id} does not serve community `{}`",
                    a.community_id
                )));
            }
            let detail;
            if matches!(a.state(), AlertState::New | AlertState::Offered) {
                a.set_state(AlertState::Offered);
                if !a.tried.is_empty() {
                    a.escalation_level += 1;
                }
                a.offered_to = staff.id.clone();
                a.tried.push(staff.id.clone());
                a.escalation_step = step_of(&staff) as i32;
                a.offer_deadline_ms = now + deadline;
                a.offered_ms = now;
                detail = format!("offered to {staff_id} until {}", a.offer_deadline_ms);
            } else if lifecycle::is_open(a.state()) {
                detail = format!("reassigned from {} to {staff_id}", a.assigned_to);
                a.assigned_to = staff.id.clone();
            } else {
                return Err(stale(format!("alert {} is closed", a.id)));
            }
            Ok(Change {
                audit: vec![audit(&actor, "alert.assign", a, detail)],
                notifications: if a.state() == AlertState::Offered {
                    self.offer_notifications(a, std::slice::from_ref(&staff), None)
                } else {
                    Vec::new()
                },
                ..Default::default()
            })
        })?;
        self.after_offer(&alert).await?;
        Ok(alert)
    }

    /// Moves an alert to the next step of its chain: the next carer, a
    /// supervisor, then the emergency services. `only_if_due`: the timer's
    /// call, which does nothing unless the offer's deadline has passed.
    pub async fn advance(
        &self,
        alert_id: &str,
        actor: &str,
        reason: &str,
        only_if_due: bool,
    ) -> Result<Alert, DeskError> {
        let now = now_ms();
        let staff = self.store.staff()?;
        let open: Vec<Alert> = self.store.alerts(&[
            AlertState::Offered,
            AlertState::Acknowledged,
            AlertState::EnRoute,
            AlertState::OnScene,
        ])?;
        let load = routing::loads(open.iter().filter(|a| a.id != alert_id));
        let policy = &self.policy;
        // For the hand-off, should this step reach the emergency services.
        let resident = self
            .store
            .alert(alert_id)
            .ok()
            .and_then(|a| self.store.resident(&a.resident_id).ok().flatten());
        let (alert, _) = self.store.update_alert(alert_id, |a| {
            if !matches!(a.state(), AlertState::New | AlertState::Offered) {
                return Err(stale(format!(
                    "alert {} is {}; nothing to escalate",
                    a.id,
                    lifecycle::name(a.state())
                )));
            }
            if only_if_due && (a.offer_deadline_ms == 0 || a.offer_deadline_ms > now) {
                return Err(stale("the offer is no longer due"));
            }
            if a.escalation_step() == EscalationStep::EmergencyServices {
                return Err(stale(format!(
                    "alert {} is already with the emergency services",
                    a.id
                )));
            }
            let first = a.state() == AlertState::New && a.tried.is_empty();
            let previous = a.offered_to.clone();
            // Family first: once the staff chain has it, no more family calls.
            if let Some(family) = a.family.as_mut() {
                family.deadline_ms = 0;
            }
            a.set_state(AlertState::Offered);
            if !first {
                a.escalation_level += 1;
            }
            let detail = match routing::next_step(a, &staff, &load, now, policy.utc_offset_minutes)
            {
                Step::Offer { staff_id, step } => {
                    a.offered_to = staff_id.clone();
                    a.tried.push(staff_id.clone());
                    a.escalation_step = step as i32;
                    a.offer_deadline_ms = now + policy.deadline_ms(a.priority);
                    a.offered_ms = now;
                    format!(
                        "offered to {staff_id} until {} ({reason})",
                        a.offer_deadline_ms
                    )
                }
                Step::EmergencyServices => {
                    a.offered_to.clear();
                    a.offered_ms = now;
                    a.escalation_step = EscalationStep::EmergencyServices as i32;
                    a.offer_deadline_ms = 0;
                    format!("handed to the emergency services ({reason})")
                }
            };
            let action = if first {
                "alert.offer"
            } else {
                "alert.escalate"
            };
            let detail = if previous.is_empty() {
                detail
            } else {
                format!("{previous} did not take it; {detail}")
            };
            Ok(Change {
                audit: vec![audit(actor, action, a, detail)],
                notifications: self.offer_notifications(a, &staff, resident.as_ref()),
                ..Default::default()
            })
        })?;
        if alert.escalation_level > 0 {
            metrics::counter!(m::ESCALATIONS, "step" => step_name(alert.escalation_step()))
                .increment(1);
        }
        self.after_offer(&alert).await?;
        Ok(alert)
    }

    /// What tells the person an alert is offered to (or the emergency
    /// services): put in the outbox in the offer's own transaction.
    fn offer_notifications(
        &self,
        alert: &Alert,
        staff: &[anxin_proto::v1::Staff],
        resident: Option<&anxin_proto::v1::Resident>,
    ) -> Vec<crate::store::OutboxItem> {
        let notification = |kind: &str, staff_id: &str| Notification {
            delivery_id: format!("{}-{}-{}", alert.id, alert.escalation_level, kind),
            kind: kind.into(),
            alert_id: alert.id.clone(),
            priority: incidents::priority_name(alert.priority).into(),
            alert_kind: alert.kind().as_str_name().into(),
            community_id: alert.community_id.clone(),
            resident_id: alert.resident_id.clone(),
            staff_id: staff_id.into(),
            escalation_level: alert.escalation_level,
            deadline_ms: alert.offer_deadline_ms,
            sent_ms: now_ms(),
            ..Default::default()
        };
        if alert.escalation_step() == EscalationStep::EmergencyServices {
            if self.policy.emergency_hook.is_empty() {
                return Vec::new();
            }
            let handoff = crate::domain::handoff::sheet(
                alert,
                &resident.cloned().unwrap_or_default(),
                now_ms(),
                self.policy.utc_offset_minutes,
            );
            return vec![Notifier::item(
                &self.policy.emergency_hook,
                &Notification {
                    handoff: serde_json::to_value(handoff).ok(),
                    ..notification("emergency_services", "")
                },
            )];
        }
        staff
            .iter()
            .find(|s| s.id == alert.offered_to && !s.contact.is_empty())
            .map(|s| Notifier::item(&s.contact, &notification("offer", &s.id)))
            .into_iter()
            .collect()
    }

    /// Flushes an offer or escalation (its notification went into the
    /// outbox with it), wakes the deliverer, re-arms the timer and the
    /// watchers.
    async fn after_offer(&self, alert: &Alert) -> Result<(), DeskError> {
        self.store.flush().await?;
        tracing::info!(alert_id = %alert.id, offered_to = %alert.offered_to, level = alert.escalation_level, step = step_name(alert.escalation_step()), "alert offered");
        if alert.escalation_step() == EscalationStep::EmergencyServices
            && self.policy.emergency_hook.is_empty()
        {
            tracing::error!(alert_id = %alert.id, "alert reached the emergency-services step, but no notify.emergency_webhook is configured");
        } else if !alert.offered_to.is_empty()
            && self
                .store
                .staff_member(&alert.offered_to)?
                .is_none_or(|s| s.contact.is_empty())
        {
            tracing::info!(alert_id = %alert.id, staff_id = %alert.offered_to, "offered to staff without a contact channel; the console shows it");
        }
        self.notifier.wake();
        self.deadlines_changed.notify_one();
        self.announce(alert.clone());
        Ok(())
    }

    /// Tells whoever held an alert that it is off.
    pub fn stand_down(&self, alert: &Alert, before: &Alert) {
        for staff_id in [&before.offered_to, &before.assigned_to] {
            if staff_id.is_empty() {
                continue;
            }
            if let Ok(Some(staff)) = self.store.staff_member(staff_id)
                && !staff.contact.is_empty()
            {
                self.notifier.send(
                    staff.contact.clone(),
                    Notification {
                        delivery_id: format!("{}-stand-down-{staff_id}", alert.id),
                        kind: "stand_down".into(),
                        alert_id: alert.id.clone(),
                        priority: incidents::priority_name(alert.priority).into(),
                        alert_kind: alert.kind().as_str_name().into(),
                        community_id: alert.community_id.clone(),
                        resident_id: alert.resident_id.clone(),
                        staff_id: staff_id.clone(),
                        escalation_level: alert.escalation_level,
                        deadline_ms: 0,
                        sent_ms: now_ms(),
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// An offered alert whose priority was raised (a fall joined an
    /// inactivity alert) gets the shorter deadline of its new priority,
    /// counted from the offer.
    pub async fn tighten_deadline(&self, alert_id: &str) {
        let policy = &self.policy;
        let result = self.store.update_alert(alert_id, |a| {
            let due = a.offered_ms + policy.deadline_ms(a.priority);
            if a.state() != AlertState::Offered || a.offer_deadline_ms <= due {
                return Err(stale("no offer deadline to tighten"));
            }
            let detail = format!(
                "priority now {}: deadline {} → {due}",
                incidents::priority_name(a.priority),
                a.offer_deadline_ms
            );
            a.offer_deadline_ms = due;
            Ok(Change {
                audit: vec![audit("system", "alert.deadline", a, detail)],
                ..Default::default()
            })
        });
        match result {
            Ok((alert, _)) => {
                if let Err(err) = self.store.flush().await {
                    tracing::error!(alert_id, error = %err, "flushing a tightened deadline failed");
                }
                self.deadlines_changed.notify_one();
                self.announce(alert);
            }
            Err(StoreError::Stale(_)) => {}
            Err(err) => tracing::error!(alert_id, error = %err, "tightening a deadline failed"),
        }
    }

    /// A note the system adds to an alert (what people acting on it should
    /// know), audited, and shown to every watcher.
    pub async fn system_note(&self, alert_id: &str, text: &str) -> Result<Alert, DeskError> {
        let now = now_ms();
        let (alert, _) = self.store.update_alert(alert_id, |a| {
            let mut change = Change::default();
            a.notes.push(AlertNote {
                at_ms: now,
                by: "system".into(),
                text: text.to_string(),
            });
            change
                .audit
                .push(audit("system", "alert.note", a, format!("note: {text}")));
            Ok(change)
        })?;
        self.store.flush().await?;
        self.announce(alert.clone());
        Ok(alert)
    }

    /// Starts the family call-out of a new alert whose resident has
    /// contacts to call (once: a routed-again alert keeps its record).
    /// `true`: family first, the staff chain waits on its deadline.
    async fn start_callout(&self, alert: &Alert) -> Result<bool, DeskError> {
        if alert.family.is_some() {
            return Ok(alert.offer_deadline_ms > 0);
        }
        let Some(family) = self.callout.family_of(alert)? else {
            return Ok(false);
        };
        let now = now_ms();
        let (alert, _) = self.store.update_alert(&alert.id, |a| {
            if a.family.is_some() || a.state() != AlertState::New {
                return Err(stale("the call-out already started"));
            }
            let notifications = self.callout.start(a, &family, now);
            let detail = match family.policy {
                "family_first" => format!(
                    "family first: {} contact(s) called in turn; staff from {}",
                    family.contacts().len(),
                    a.offer_deadline_ms
                ),
                _ => format!("staff first: {} contact(s) told", notifications.len()),
            };
            Ok(Change {
                audit: vec![audit("system", "alert.callout", a, detail)],
                notifications,
                ..Default::default()
            })
        })?;
        self.store.flush().await?;
        tracing::info!(alert_id = %alert.id, policy = family.policy, "family call-out started");
        self.notifier.wake();
        self.deadlines_changed.notify_one();
        self.announce(alert.clone());
        Ok(alert.offer_deadline_ms > 0)
    }

    /// The timer's call for an alert with a deadline due: the family's
    /// next step, then the staff chain's.
    pub async fn due(&self, alert_id: &str) -> Result<Alert, DeskError> {
        let now = now_ms();
        let current = self.store.alert(alert_id)?;
        let family_due = current
            .family
            .as_ref()
            .is_some_and(|f| f.deadline_ms > 0 && f.deadline_ms <= now)
            && current.state() == AlertState::New;
        if family_due && let Some(family) = self.callout.family_of(&current)? {
            let (alert, _) = self.store.update_alert(alert_id, |a| {
                let Some(record) = a.family.as_ref() else {
                    return Err(stale("no call-out"));
                };
                if record.deadline_ms == 0 || record.deadline_ms > now {
                    return Err(stale("the family step is no longer due"));
                }
                let notifications = self.callout.next(a, &family, now);
                let detail = match notifications.len() {
                    0 => "nobody in the family took it; the staff chain has it".to_string(),
                    _ => "the contact called did not answer in time; the next is called".into(),
                };
                Ok(Change {
                    audit: vec![audit("system", "alert.callout", a, detail)],
                    notifications,
                    ..Default::default()
                })
            })?;
            self.store.flush().await?;
            self.notifier.wake();
            self.deadlines_changed.notify_one();
            self.announce(alert);
        }
        let current = self.store.alert(alert_id)?;
        if current.offer_deadline_ms > 0 && current.offer_deadline_ms <= now {
            let reason = if current.state() == AlertState::New {
                "the family did not take it in time"
            } else {
                "no acknowledgement before the deadline"
            };
            return self.advance(alert_id, "system", reason, true).await;
        }
        Ok(current)
    }

    /// Routes a new alert to its first person. Alerts of devices the
    /// directory does not know have no community to route in; they wait for
    /// a dispatcher.
    pub async fn route(&self, alert_id: &str) {
        match self.store.alert(alert_id) {
            Ok(alert) if alert.community_id.is_empty() => {
                tracing::warn!(alert_id, device_id = %alert.device_id, "alert for a device the directory does not know; left for the dispatchers");
            }
            // A gateway's fault needs a technician, not a carer's visit nor
            // the emergency services: it stays in the dispatchers' queue.
            Ok(alert) if alert.kind() == anxin_proto::EventKind::GatewayFault => {
                tracing::warn!(alert_id, gateway_id = %alert.device_id, "gateway fault; left for the community's dispatchers, not routed");
            }
            Ok(alert) => {
                match self.start_callout(&alert).await {
                    // Family first: the staff chain starts at its deadline.
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(err) => {
                        tracing::error!(alert_id, error = %err, "starting the family call-out failed; the staff chain goes on")
                    }
                }
                match self.advance(alert_id, "system", "new alert", false).await {
                    Ok(_) | Err(DeskError::Store(StoreError::Stale(_))) => {}
                    Err(err) => tracing::error!(alert_id, error = %err, "routing failed"),
                }
            }
            Err(err) => tracing::error!(alert_id, error = %err, "routing: alert unreadable"),
        }
    }

    /// After a restart: routes alerts committed but never routed (a crash
    /// between the two). Pending offers need nothing: their deadlines are
    /// stored and the escalation timer picks them up.
    pub async fn recover(&self) -> Result<(), DeskError> {
        for alert in self.store.alerts(&[AlertState::New])? {
            // Family first: waiting for the family, on a stored deadline.
            let waiting = alert.offer_deadline_ms > 0;
            if !alert.community_id.is_empty() && alert.tried.is_empty() && !waiting {
                self.route(&alert.id).await;
            }
        }
        Ok(())
    }
}

/// "Help is coming" for every device that called in this incident.
pub fn device_acks_help_is_coming(alert: &Alert) -> Vec<DeviceAck> {
    let mut told = HashSet::new();
    alert
        .events
        .iter()
        .filter(|e| e.kind != EventKind::Cancel as i32)
        // The server's own sources (a missed check-in, a rule on
        // readings) have no device to tell.
        .filter(|e| !anxin_proto::is_server_source(&e.device_id))
        .filter(|e| told.insert(e.device_id.clone()))
        .map(|e| DeviceAck {
            device_id: e.device_id.clone(),
            seq: e.seq,
            kind: AckKind::Acknowledged as i32,
            alert_id: alert.id.clone(),
            message: HELP_IS_COMING.into(),
            sent_ms: 0,
        })
        .collect()
}

fn step_of(staff: &anxin_proto::v1::Staff) -> EscalationStep {
    match staff.role() {
        anxin_proto::v1::StaffRole::Supervisor => EscalationStep::Supervisor,
        _ => EscalationStep::Carer,
    }
}

pub fn step_name(step: EscalationStep) -> &'static str {
    match step {
        EscalationStep::Unspecified => "none",
        EscalationStep::Carer => "carer",
        EscalationStep::Supervisor => "supervisor",
        EscalationStep::EmergencyServices => "emergency_services",
    }
}
