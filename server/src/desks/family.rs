//! The family's side: one-time links sent by SMS, the session a link opens
//! (bound to one contact of one resident), what the family view shows, and
//! the family's answers. Every read is audited; a family member asking for
//! anything of another resident is refused and audited.
//!
//! A link is a random token whose digest is stored as a `family_link`
//! token: short-lived and single-use (exchanging it revokes it). The
//! session it opens is a `family` token for `resident|phone`, accepted
//! only while the resident still lists that phone with the family view.

use anxin_proto::{
    now_ms,
    v1::{Alert, AlertState, AuditEntry, CheckinDay, FamilyMessage, Position, Visit},
};

use crate::{
    desks::alerts::{AlertDesk, DeskError, audit, device_acks_help_is_coming, stale},
    desks::audit::deny,
    desks::auth::AuthError,
    desks::callout,
    domain::calendar::local_day,
    domain::lifecycle,
    domain::rights::{FamilyMember, Principal, digest, new_token},
    store::Change,
    store::{Store, StoreError, directory::Directory, directory::TokenRecord},
};

/// Link and session lifetimes, and where links point (`[family]`).
#[derive(Debug, Clone)]
pub struct LinkPolicy {
    /// The console's public address; a link is `{public_url}/family#{token}`.
    pub public_url: String,
    pub link_ttl_ms: i64,
    pub session_ms: i64,
}

#[derive(Clone)]
pub struct FamilyDesk {
    desk: AlertDesk,
    links: LinkPolicy,
}

/// An alert as the family sees it: what happened, where, who is coming,
/// the family's messages — no staff notes, no medical detail.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilyAlert {
    pub id: String,
    pub kind: String,
    pub priority: String,
    pub state: String,
    pub created_ms: i64,
    pub address: String,
    pub position: Option<Position>,
    /// Positions since the alert was raised.
    pub track: Vec<Position>,
    /// Who took it: a carer's name, or a family member's.
    pub taken_by: String,
    pub en_route_ms: i64,
    pub on_scene_ms: i64,
    pub resolved_ms: i64,
    pub outcome: String,
    pub messages: Vec<FamilyMessage>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilyView {
    pub resident_name: String,
    /// The signed-in family member.
    pub name: String,
    pub language: String,
    pub alerts: Vec<FamilyAlert>,
    /// Today's check-in, if the resident is enrolled.
    pub checkin_window: String,
    pub checkin_today: Option<CheckinDay>,
    pub visits: Vec<Visit>,
}

/// What exchanging a link gives: the session's token.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilySession {
    pub token: String,
    pub expires_ms: i64,
    pub resident_id: String,
    pub alert_id: String,
}

fn state_name(state: AlertState) -> String {
    lifecycle::name(state).to_string()
}

impl FamilyDesk {
    pub fn new(desk: AlertDesk, links: LinkPolicy) -> Self {
        Self { desk, links }
    }

    fn store(&self) -> &Store {
        self.desk.store()
    }

    pub fn alerts(&self) -> &AlertDesk {
        &self.desk
    }

    /// A new single-use link for one contact about one alert (made as the
    /// SMS carrying it is sent, so each attempt carries a link of its own).
    pub fn mint_link(
        &self,
        resident_id: &str,
        phone: &str,
        alert_id: &str,
    ) -> Result<String, StoreError> {
        let token = new_token();
        let now = now_ms();
        let record = TokenRecord {
            subject_kind: "family_link".into(),
            subject_id: format!("{resident_id}|{phone}|{alert_id}"),
            issued_ms: now,
            expires_ms: now + self.links.link_ttl_ms,
            session: true,
            ..Default::default()
        };
        let audit = AuditEntry {
            at_ms: now,
            actor: "system".into(),
            action: "family.link".into(),
            target: format!("resident/{resident_id}"),
            detail: format!(
                "a link for {phone} about alert {alert_id}, until {}",
                record.expires_ms
            ),
            ..Default::default()
        };
        self.store().put_token(&digest(&token), &record, audit)?;
        metrics::counter!(crate::metrics::FAMILY_LINKS).increment(1);
        Ok(format!(
            "{}/family#{}",
            self.links.public_url.trim_end_matches('/'),
            token
        ))
    }

    /// Exchanges a link for a session: once, before it expires.
    pub fn sign_in(&self, link_token: &str) -> Result<FamilySession, DeskError> {
        let link_digest = digest(link_token);
        let refused = |why: &str| -> DeskError {
            let entry = AuditEntry {
                at_ms: now_ms(),
                actor: "family".into(),
                action: "access.denied".into(),
                target: "family/link".into(),
                detail: why.to_string(),
                ..Default::default()
            };
            if let Err(err) = self.store().append(entry) {
                tracing::error!(error = %err, "auditing a refused family link failed");
            }
            metrics::counter!(crate::metrics::ACCESS_DENIED).increment(1);
            tracing::warn!(why, "family link refused");
            AuthError::Forbidden(why.to_string()).into()
        };
        let now = now_ms();
        let used = AuditEntry {
            at_ms: now,
            actor: "family".into(),
            action: "family.sign_in".into(),
            target: "family/link".into(),
            detail: "a link used".into(),
            ..Default::default()
        };
        // Spent in one transaction: of two racing openings one wins.
        let Some(link) = self
            .store()
            .spend_token(&link_digest, "family_link", now, used)?
            .filter(|t| t.subject_kind == "family_link")
        else {
            return Err(refused("this link is not valid"));
        };
        if link.revoked_ms > 0 {
            return Err(refused("this link was already used"));
        }
        if link.expires_ms > 0 && now >= link.expires_ms {
            return Err(refused("this link has expired"));
        }
        let mut parts = link.subject_id.splitn(3, '|');
        let (resident_id, phone, alert_id) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        let token = new_token();
        let session = TokenRecord {
            subject_kind: "family".into(),
            subject_id: format!("{resident_id}|{phone}"),
            issued_ms: now,
            expires_ms: now + self.links.session_ms,
            session: true,
            ..Default::default()
        };
        let opened = AuditEntry {
            at_ms: now,
            actor: format!("family/{phone}"),
            action: "session.open".into(),
            target: format!("resident/{resident_id}"),
            detail: format!("family session until {}", session.expires_ms),
            ..Default::default()
        };
        self.store().put_token(&digest(&token), &session, opened)?;
        Ok(FamilySession {
            token,
            expires_ms: session.expires_ms,
            resident_id,
            alert_id,
        })
    }

    fn family_alert(&self, alert: &Alert) -> FamilyAlert {
        let taken_by = alert
            .family
            .as_ref()
            .filter(|f| !f.taken_by.is_empty())
            .map(|_| {
                alert
                    .acknowledged_by
                    .trim_start_matches("family: ")
                    .to_string()
            })
            .or_else(|| {
                [&alert.assigned_to, &alert.offered_to]
                    .into_iter()
                    .find(|id| !id.is_empty())
                    .filter(|_| alert.state() != AlertState::Offered)
                    .map(|id| {
                        self.store()
                            .staff_member(id)
                            .ok()
                            .flatten()
                            .map_or_else(|| id.clone(), |s| s.name)
                    })
            })
            .unwrap_or_default();
        FamilyAlert {
            id: alert.id.clone(),
            kind: alert.kind().as_str_name().to_string(),
            priority: crate::domain::incidents::priority_name(alert.priority).into(),
            state: state_name(alert.state()),
            created_ms: alert.created_ms,
            address: alert.address.clone(),
            position: alert.position.clone(),
            track: alert.track.clone(),
            taken_by,
            en_route_ms: alert.en_route_ms,
            on_scene_ms: alert.on_scene_ms,
            resolved_ms: alert.resolved_ms.max(alert.cancelled_ms),
            outcome: alert.outcome.clone(),
            messages: alert
                .family
                .as_ref()
                .map(|f| f.messages.clone())
                .unwrap_or_default(),
        }
    }

    /// One alert, if it is this family's; a request for another resident's
    /// is refused and audited.
    pub fn alert(&self, member: &FamilyMember, alert_id: &str) -> Result<FamilyAlert, DeskError> {
        let alert = self.store().alert(alert_id)?;
        if alert.resident_id != member.resident_id {
            let why = format!("alert {alert_id} is not about this family's resident");
            deny(
                self.store(),
                &Principal::Family(member.clone()),
                &alert.community_id,
                &format!("alert/{alert_id}"),
                &why,
            );
            return Err(AuthError::Forbidden(why).into());
        }
        self.audit_read(member, &format!("alert/{alert_id}"))?;
        Ok(self.family_alert(&alert))
    }

    /// Whether an alert (as watchers hear of it) is this family's.
    pub fn is_theirs(member: &FamilyMember, alert: &Alert) -> bool {
        alert.resident_id == member.resident_id
    }

    pub fn shown(&self, alert: &Alert) -> FamilyAlert {
        self.family_alert(alert)
    }

    /// What the family view shows: the resident's open alerts and those of
    /// the last day, today's check-in, the last week's visits.
    pub fn view(&self, member: &FamilyMember) -> Result<FamilyView, DeskError> {
        let store = self.store();
        let resident = store
            .resident(&member.resident_id)?
            .ok_or_else(|| StoreError::NotFound("no such resident".into()))?;
        let now = now_ms();
        let mut alerts: Vec<Alert> = store
            .alerts(&[])?
            .into_iter()
            .filter(|a| a.resident_id == member.resident_id)
            .filter(|a| lifecycle::is_open(a.state()) || now - a.created_ms < 86_400_000)
            .collect();
        alerts.sort_by_key(|a| std::cmp::Reverse(a.created_ms));
        let offset = self.desk.policy().utc_offset_minutes;
        let today = local_day(now, offset);
        let checkin_today = store.checkin_day(&member.resident_id, today)?;
        let plans: Vec<String> = store
            .visit_plans()?
            .into_iter()
            .filter(|p| p.resident_id == member.resident_id)
            .map(|p| p.id)
            .collect();
        let mut visits: Vec<Visit> = store
            .visits(today - 7, today + 1)?
            .into_iter()
            .filter(|v| plans.contains(&v.plan_id))
            .collect();
        visits.sort_by_key(|v| std::cmp::Reverse(v.day));
        self.audit_read(member, &format!("resident/{}", member.resident_id))?;
        Ok(FamilyView {
            resident_name: resident.name,
            name: member.name.clone(),
            language: member.language.clone(),
            alerts: alerts.iter().map(|a| self.family_alert(a)).collect(),
            checkin_window: resident
                .checkin
                .as_ref()
                .map(|w| format!("{}–{}", w.start, w.end))
                .unwrap_or_default(),
            checkin_today,
            visits,
        })
    }

    fn audit_read(&self, member: &FamilyMember, target: &str) -> Result<(), StoreError> {
        self.store().append(AuditEntry {
            at_ms: now_ms(),
            actor: format!("family/{}", member.phone),
            action: "family.read".into(),
            target: target.to_string(),
            ..Default::default()
        })?;
        Ok(())
    }

    /// A family member's answer ("going", "fine", "call_me"): refused
    /// and audited for another resident's alert.
    pub async fn answer(
        &self,
        member: &FamilyMember,
        alert_id: &str,
        answer: &str,
    ) -> Result<FamilyAlert, DeskError> {
        match self
            .take_answer(&member.resident_id, &member.phone, alert_id, answer)
            .await
        {
            Ok(alert) => Ok(self.family_alert(&alert)),
            Err(DeskError::Auth(AuthError::Forbidden(why))) => {
                deny(
                    self.store(),
                    &Principal::Family(member.clone()),
                    "",
                    &format!("alert/{alert_id}"),
                    &why,
                );
                Err(AuthError::Forbidden(why).into())
            }
            Err(err) => Err(err),
        }
    }

    /// A family member's answer to an alert of their resident: recorded on
    /// the alert and audited; "going" on a family-first alert nobody has
    /// taken yet takes it (the device hears "help is coming", the staff
    /// chain does not start, the others are told). An answer to a closed
    /// alert is recorded as late and changes nothing else.
    async fn take_answer(
        &self,
        resident_id: &str,
        phone: &str,
        alert_id: &str,
        answer: &str,
    ) -> Result<Alert, DeskError> {
        let desk = &self.desk;
        let current = desk.store().alert(alert_id)?;
        if current.resident_id != resident_id {
            return Err(
                AuthError::Forbidden(format!("alert {alert_id} is not your family's")).into(),
            );
        }
        if !crate::domain::family::ANSWERS.contains(&answer) {
            return Err(DeskError::BadRequest(format!(
                "answer `{answer}` is not one of {}",
                crate::domain::family::ANSWERS.join(", ")
            )));
        }
        let family = desk.callout().family_of(&current)?.unwrap_or_default();
        let name = family
            .resident
            .emergency_contacts
            .iter()
            .find(|c| c.phone == phone)
            .map_or_else(
                || phone.to_string(),
                |c| format!("{} ({})", c.name, c.relation),
            );
        let actor = format!("family/{phone}");
        let now = now_ms();
        let (alert, downlinks) = desk.store().update_alert(alert_id, |a| {
            callout::answer(a, phone, &name, answer, now);
            let mut change = Change::default();
            let late = !lifecycle::is_open(a.state());
            let takes = answer == "going"
                && !late
                && a.state() == AlertState::New
                && a.family
                    .as_ref()
                    .is_some_and(|f| f.policy == "family_first" && f.taken_by.is_empty());
            if takes {
                a.set_state(AlertState::Acknowledged);
                a.acknowledged_ms = now;
                a.acknowledged_by = format!("family: {name}");
                a.offer_deadline_ms = 0;
                if let Some(record) = a.family.as_mut() {
                    record.taken_by = phone.to_string();
                    record.deadline_ms = 0;
                }
                change.device_acks = device_acks_help_is_coming(a);
                change.notifications = desk
                    .callout()
                    .follow_up(a, &family, "taken", &name, phone, now);
            }
            let detail = format!(
                "{name}: {answer}{}{}",
                if late {
                    " (late: the alert was closed)"
                } else {
                    ""
                },
                if takes { "; taken by the family" } else { "" }
            );
            change
                .audit
                .push(audit(&actor, "alert.family_answer", a, detail));
            Ok(change)
        })?;
        desk.store().flush().await?;
        tracing::info!(alert_id, %phone, answer, "family answered");
        desk.push_downlinks(&alert, downlinks);
        desk.notifier().wake();
        desk.deadlines_changed().notify_one();
        desk.announce(alert.clone());
        Ok(alert)
    }

    /// A delivery report for a family message (Kannel's `dlr-url`):
    /// written on the message and audited.
    pub async fn record_delivery(
        &self,
        delivery_id: &str,
        status: &str,
    ) -> Result<Option<Alert>, DeskError> {
        let desk = &self.desk;
        let Some(alert_id) = delivery_id.split('-').next().filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let result = desk.store().update_alert(alert_id, |a| {
            if !callout::record_delivery(a, delivery_id, status) {
                return Err(stale("no such message"));
            }
            Ok(Change {
                audit: vec![audit(
                    "sms",
                    "notify.report",
                    a,
                    format!("{delivery_id}: {status}"),
                )],
                ..Default::default()
            })
        });
        match result {
            Ok((alert, _)) => {
                desk.store().flush().await?;
                desk.announce(alert.clone());
                Ok(Some(alert))
            }
            Err(StoreError::Stale(_) | StoreError::NotFound(_)) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
}

/// An alert the resident cancelled: the family told so far hears it is
/// over.
pub async fn tell_closed(desk: &AlertDesk, alert_id: &str) {
    let Ok(current) = desk.store().alert(alert_id) else {
        return;
    };
    if current.family.is_none() {
        return;
    }
    let family = match desk.callout().family_of(&current) {
        Ok(Some(family)) => family,
        _ => return,
    };
    let now = now_ms();
    let result = desk.store().update_alert(alert_id, |a| {
        let told_closed = a
            .family
            .as_ref()
            .is_some_and(|f| f.messages.iter().any(|m| m.kind == "resolved"));
        if told_closed || lifecycle::is_open(a.state()) {
            return Err(stale("nothing to tell"));
        }
        if let Some(record) = a.family.as_mut() {
            record.deadline_ms = 0;
        }
        Ok(Change {
            notifications: desk
                .callout()
                .follow_up(a, &family, "resolved", "", "", now),
            ..Default::default()
        })
    });
    if let Ok((alert, _)) = result {
        if let Err(err) = desk.store().flush().await {
            tracing::warn!(alert_id, error = %err, "flushing the family's stand-down failed");
        }
        desk.notifier().wake();
        desk.announce(alert);
    }
}
