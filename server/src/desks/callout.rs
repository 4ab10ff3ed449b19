//! The family call-out as the alert desk applies it: who of a resident's
//! contacts is told what, written on the alert (`Alert.family`) and put in
//! the outbox in the same transaction as the change that causes it — so a
//! message is sent once it is committed, and never twice for one change.
//! The rules themselves are `domain/family.rs`.

use anxin_proto::v1::{Alert, FamilyCallout, FamilyMessage, Resident};

use crate::{
    desks::outbox::Notifier,
    domain::family::{self, CalloutRules, Send},
    domain::incidents::priority_name,
    domain::lifecycle,
    domain::notification::Notification,
    store::{OutboxItem, Store, StoreError, directory::Directory},
};

/// A resident's contacts and policy, read before an alert change.
#[derive(Debug, Clone, Default)]
pub struct Family {
    pub resident: Resident,
    pub policy: &'static str,
}

impl Family {
    pub fn contacts(&self) -> Vec<&anxin_proto::v1::EmergencyContact> {
        family::callable(&self.resident)
    }
}

#[derive(Clone)]
pub struct Callout {
    store: Store,
    rules: CalloutRules,
}

impl Callout {
    pub fn new(store: Store, rules: CalloutRules) -> Self {
        Self { store, rules }
    }

    pub fn rules(&self) -> &CalloutRules {
        &self.rules
    }

    /// The family of an alert's resident; `None` when nobody can be called.
    pub fn family_of(&self, alert: &Alert) -> Result<Option<Family>, StoreError> {
        if alert.resident_id.is_empty() {
            return Ok(None);
        }
        let Some(resident) = self.store.resident(&alert.resident_id)? else {
            return Ok(None);
        };
        if family::callable(&resident).is_empty() {
            return Ok(None);
        }
        let community = self
            .store
            .place(&resident.community_id)?
            .map(|p| p.callout)
            .unwrap_or_default();
        let policy = family::policy(&resident, &community);
        Ok(Some(Family { resident, policy }))
    }

    /// Starts the call-out on a new alert (see [`family::start`]): the
    /// record on the alert and the messages in the outbox. Family first:
    /// the staff chain's first offer waits until `staff_at_ms` (the alert
    /// stays new, with that as its deadline).
    pub fn start(&self, a: &mut Alert, family: &Family, now_ms: i64) -> Vec<OutboxItem> {
        let contacts = family.contacts();
        let (record, sends) = family::start(a, &contacts, family.policy, &self.rules, now_ms);
        a.family = Some(record);
        if family.policy == "family_first" {
            a.offer_deadline_ms = a.family.as_ref().map_or(0, |f| f.staff_at_ms);
        }
        self.queue(a, sends, now_ms)
    }

    /// Family first: the contact called has had their minutes; the next
    /// is called (or nobody, once the list is done).
    pub fn next(&self, a: &mut Alert, family: &Family, now_ms: i64) -> Vec<OutboxItem> {
        let contacts = family.contacts();
        let Some(mut record) = a.family.take() else {
            return Vec::new();
        };
        let send = family::next_call(a, &mut record, &contacts, &self.rules, now_ms);
        a.family = Some(record);
        self.queue(a, send.into_iter().collect(), now_ms)
    }

    /// Tells everyone told so far (but `except`, the phone of who took it)
    /// that the alert was taken (by `who`) or closed.
    pub fn follow_up(
        &self,
        a: &mut Alert,
        family: &Family,
        kind: &str,
        who: &str,
        except: &str,
        now_ms: i64,
    ) -> Vec<OutboxItem> {
        let Some(record) = a.family.as_ref() else {
            return Vec::new();
        };
        let contacts = family.contacts();
        let sends: Vec<(Send, bool)> = family::follow_up(record, &contacts, kind)
            .into_iter()
            .filter(|s| s.phone != except)
            .map(|s| (s, false))
            .collect();
        self.queue_with(a, sends, now_ms, who)
    }

    fn queue(&self, a: &mut Alert, sends: Vec<(Send, bool)>, now_ms: i64) -> Vec<OutboxItem> {
        self.queue_with(a, sends, now_ms, "")
    }

    fn queue_with(
        &self,
        a: &mut Alert,
        sends: Vec<(Send, bool)>,
        now_ms: i64,
        who: &str,
    ) -> Vec<OutboxItem> {
        let mut items = Vec::new();
        for (send, quiet) in sends {
            let record = a.family.get_or_insert_with(FamilyCallout::default);
            let step = record.messages.len();
            let delivery_id = family::delivery_id(a, &send, step);
            family::record(
                a.family.as_mut().expect("set above"),
                &send,
                &delivery_id,
                quiet,
                now_ms,
            );
            if quiet {
                continue;
            }
            let zh = send.language != "en";
            let mut facts = family::facts(a, self.rules.utc_offset_minutes, zh);
            facts.who = who.to_string();
            let notification = Notification {
                delivery_id,
                kind: format!("family_{}", send.kind),
                alert_id: a.id.clone(),
                priority: priority_name(a.priority).into(),
                alert_kind: a.kind().as_str_name().into(),
                community_id: a.community_id.clone(),
                resident_id: a.resident_id.clone(),
                escalation_level: a.escalation_level,
                sent_ms: now_ms,
                text: family::text(&send.kind, &send.language, &facts),
                language: send.language.clone(),
                link: send.link && lifecycle::is_open(a.state()),
                ..Default::default()
            };
            items.push(Notifier::item(
                &format!("sms:{}", send.phone),
                &notification,
            ));
        }
        items
    }
}

/// Records a family member's answer on the alert; an answer to a closed
/// alert is kept and marked late.
pub fn answer(a: &mut Alert, phone: &str, name: &str, kind: &str, now_ms: i64) {
    let late = !lifecycle::is_open(a.state());
    a.family
        .get_or_insert_with(FamilyCallout::default)
        .messages
        .push(FamilyMessage {
            at_ms: now_ms,
            phone: phone.into(),
            name: name.into(),
            kind: kind.into(),
            late,
            ..Default::default()
        });
}

/// The delivery status Kannel reports (`%d` of its `dlr-url`): 1
/// delivered, 2 failed, 4 buffered, 8 accepted by the carrier, 16 refused
/// by the carrier.
pub fn delivery_status(dlr: u32, reply: &str) -> String {
    match dlr {
        1 => "delivered".into(),
        2 => format!("failed: {reply}"),
        4 => "buffered".into(),
        8 => "accepted".into(),
        16 => format!("failed: refused by the carrier: {reply}"),
        other => format!("report {other}: {reply}"),
    }
}

/// Writes a delivery state on the message it is about ("sent": the SMS
/// gateway took it; then Kannel's reports); `false` when the alert has no
/// such message. A later report never goes back (a
/// "delivered" stays, whatever "accepted" arrives after it).
pub fn record_delivery(a: &mut Alert, delivery_id: &str, status: &str) -> bool {
    let Some(message) = a
        .family
        .as_mut()
        .and_then(|f| f.messages.iter_mut().find(|m| m.delivery_id == delivery_id))
    else {
        return false;
    };
    let rank = |s: &str| match s {
        "queued" => 0,
        "sent" => 1,
        "buffered" => 2,
        "accepted" => 3,
        _ => 4,
    };
    if rank(status) >= rank(&message.status) {
        message.status = status.to_string();
    }
    true
}
