//! The resident's family in the loop: which contacts may be called out and
//! in what order, their quiet hours, the call-out policy, what each message
//! says (zh-CN and en), and the steps of a family-first call-out. Pure
//! rules; the alert desk applies them in each alert change's transaction,
//! so a message is put in the outbox exactly when the change that causes it
//! is committed.
//!
//! What an SMS may carry (PIPL: the minimum necessary): the resident's name
//! as the family knows it, what happened and when, the address, who is
//! coming, the outcome, and a link to the family view. Never medical notes,
//! access notes (key safe) or anything of another resident.

use anxin_proto::v1::{Alert, EmergencyContact, FamilyCallout, FamilyMessage, Priority, Resident};

use crate::domain::calendar::{in_span, span};

/// Channels a contact may be reached by.
pub const CHANNELS: &[&str] = &["sms", "view"];
pub const LANGUAGES: &[&str] = &["zh-CN", "en"];
pub const POLICIES: &[&str] = &["staff_first", "family_first"];
/// A family member's answers.
pub const ANSWERS: &[&str] = &["going", "fine", "call_me"];

/// The call-out rules from the config (`[family]`).
#[derive(Debug, Clone)]
pub struct CalloutRules {
    /// Family first: how long each contact has to take responsibility.
    pub answer_ms: i64,
    /// Family first: how many times the list is gone through.
    pub rounds: u32,
    /// Family first: the longest the staff chain waits for the family, by
    /// priority (P0; others).
    pub p0_limit_ms: i64,
    pub limit_ms: i64,
    pub utc_offset_minutes: i32,
}

impl CalloutRules {
    fn limit_ms(&self, priority: i32) -> i64 {
        if priority == Priority::P0 as i32 {
            self.p0_limit_ms
        } else {
            self.limit_ms
        }
    }
}

/// A phone number as stored: E.164 (`+` and 7–15 digits), from either an
/// E.164 number or a mainland mobile number without `+86` (11 digits from
/// 13…19). Spaces and dashes are allowed in what is typed.
pub fn normalize_phone(text: &str) -> Result<String, String> {
    let compact: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let digits_only = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if let Some(rest) = compact.strip_prefix('+') {
        if digits_only(rest) && (7..=15).contains(&rest.len()) && !rest.starts_with('0') {
            if let Some(national) = rest.strip_prefix("86")
                && national.starts_with('1')
                && !mainland_mobile(national)
            {
                return Err(format!(
                    "phone `{text}`: +86 mobile numbers have 11 digits starting 13–19"
                ));
            }
            return Ok(compact);
        }
        return Err(format!(
            "phone `{text}` is not E.164 (+ country code and number, 7–15 digits)"
        ));
    }
    if mainland_mobile(&compact) {
        return Ok(format!("+86{compact}"));
    }
    Err(format!(
        "phone `{text}` is neither E.164 (+8613800000000) nor a mainland mobile number (13800000000)"
    ))
}

fn mainland_mobile(digits: &str) -> bool {
    digits.len() == 11
        && digits.chars().all(|c| c.is_ascii_digit())
        && digits.starts_with('1')
        && ('3'..='9').contains(&digits.chars().nth(1).unwrap_or('0'))
}

/// Checks a contact as written, and fills what the server records: the
/// phone in E.164, the default language, and consent (who entered it, when)
/// for a contact given channels with `consented`.
pub fn check_contact(
    contact: &mut EmergencyContact,
    entered_by: &str,
    now_ms: i64,
) -> Result<(), String> {
    let who = if contact.name.trim().is_empty() {
        return Err("an emergency contact has no name".into());
    } else {
        contact.name.trim().to_string()
    };
    contact.phone = normalize_phone(&contact.phone).map_err(|e| format!("contact {who}: {e}"))?;
    for channel in &contact.channels {
        if !CHANNELS.contains(&channel.as_str()) {
            return Err(format!(
                "contact {who}: channel `{channel}` is not one of {}",
                CHANNELS.join(", ")
            ));
        }
    }
    if contact.language.is_empty() {
        contact.language = "zh-CN".into();
    } else if !LANGUAGES.contains(&contact.language.as_str()) {
        return Err(format!(
            "contact {who}: language `{}` is not one of {}",
            contact.language,
            LANGUAGES.join(", ")
        ));
    }
    if !contact.quiet_hours.is_empty() && span(&contact.quiet_hours).is_none() {
        return Err(format!(
            "contact {who}: quiet_hours `{}` is not HH:MM-HH:MM",
            contact.quiet_hours
        ));
    }
    if !contact.channels.is_empty() && contact.consent_ms == 0 {
        if !contact.consented {
            return Err(format!(
                "contact {who}: channels need the contact's consent to be contacted (consented: true)"
            ));
        }
        contact.consent_by = entered_by.to_string();
        contact.consent_ms = now_ms;
    }
    if contact.channels.is_empty() {
        contact.consent_by.clear();
        contact.consent_ms = 0;
    }
    contact.consented = contact.consent_ms > 0;
    Ok(())
}

/// A resident's call-out fields as written: the policy named, every contact
/// checked (see [`check_contact`]), no phone twice. Consent is the
/// server's record, never the writer's: a contact's stored consent (by
/// phone, from `previous`) is kept, any other given is replaced.
pub fn check_resident(
    resident: &mut Resident,
    previous: Option<&Resident>,
    entered_by: &str,
    now_ms: i64,
) -> Result<(), String> {
    if !resident.callout.is_empty() && !POLICIES.contains(&resident.callout.as_str()) {
        return Err(format!(
            "callout `{}` is not one of {}",
            resident.callout,
            POLICIES.join(", ")
        ));
    }
    if !resident.birth_date.is_empty()
        && crate::domain::calendar::parse_date(&resident.birth_date).is_none()
    {
        return Err(format!(
            "birth_date `{}` is not YYYY-MM-DD",
            resident.birth_date
        ));
    }
    if !["", "female", "male"].contains(&resident.sex.as_str()) {
        return Err(format!("sex `{}` is not female or male", resident.sex));
    }
    let mut phones = std::collections::HashSet::new();
    for contact in &mut resident.emergency_contacts {
        let stored = normalize_phone(&contact.phone).ok().and_then(|phone| {
            previous?
                .emergency_contacts
                .iter()
                .find(|c| c.phone == phone && c.consent_ms > 0)
        });
        contact.consent_by = stored.map(|c| c.consent_by.clone()).unwrap_or_default();
        contact.consent_ms = stored.map_or(0, |c| c.consent_ms);
        check_contact(contact, entered_by, now_ms)?;
        if !phones.insert(contact.phone.clone()) {
            return Err(format!("contact phone {} appears twice", contact.phone));
        }
    }
    Ok(())
}

/// The contacts who may be called out, in call-out order: those with a
/// channel and consent, numbered ones first.
pub fn callable(resident: &Resident) -> Vec<&EmergencyContact> {
    let mut list: Vec<(usize, &EmergencyContact)> = resident
        .emergency_contacts
        .iter()
        .enumerate()
        .filter(|(_, c)| c.channels.iter().any(|ch| ch == "sms") && c.consent_ms > 0)
        .collect();
    list.sort_by_key(|(i, c)| (if c.order == 0 { u32::MAX } else { c.order }, *i));
    list.into_iter().map(|(_, c)| c).collect()
}

/// Whether `contact` is in their quiet hours at `now_ms` (local time).
pub fn quiet_now(contact: &EmergencyContact, now_ms: i64, utc_offset_minutes: i32) -> bool {
    span(&contact.quiet_hours).is_some_and(|span| in_span(span, now_ms, utc_offset_minutes))
}

/// Quiet hours hold back messages about anything but a P0: a missed
/// check-in, inactivity, a device offline (P1) and the household signals
/// (P2) wait for the staff; an SOS, a fall, smoke, gas or critical vitals
/// (P0) wakes them. A message held back is recorded on the alert, never
/// sent later (by morning the staff have it in hand), and the contact is
/// not told of its close either.
pub fn held_back(
    contact: &EmergencyContact,
    priority: i32,
    now_ms: i64,
    utc_offset_minutes: i32,
) -> bool {
    priority > Priority::P0 as i32 && quiet_now(contact, now_ms, utc_offset_minutes)
}

/// The policy that applies to a resident: theirs, else their community's,
/// else staff first.
pub fn policy(resident: &Resident, community_default: &str) -> &'static str {
    for text in [resident.callout.as_str(), community_default] {
        if let Some(p) = POLICIES.iter().find(|p| **p == text) {
            return p;
        }
    }
    "staff_first"
}

/// One message to send a contact: the alert records it, the outbox carries
/// it.
#[derive(Debug, Clone, PartialEq)]
pub struct Send {
    pub phone: String,
    pub name: String,
    pub language: String,
    /// Whether the message carries a family-view link.
    pub link: bool,
    pub kind: String,
}

fn send(contact: &EmergencyContact, kind: &str) -> Send {
    Send {
        phone: contact.phone.clone(),
        name: contact.name.clone(),
        language: contact.language.clone(),
        link: contact.channels.iter().any(|c| c == "view"),
        kind: kind.into(),
    }
}

/// Records a message on the alert, queued (or held back by quiet hours).
pub fn record(
    family: &mut FamilyCallout,
    send: &Send,
    delivery_id: &str,
    quiet: bool,
    now_ms: i64,
) {
    family.messages.push(FamilyMessage {
        at_ms: now_ms,
        phone: send.phone.clone(),
        name: send.name.clone(),
        kind: send.kind.clone(),
        delivery_id: delivery_id.into(),
        status: if quiet { "held: quiet hours" } else { "queued" }.into(),
        quiet,
        ..Default::default()
    });
}

/// The delivery id of a message: one per alert, contact, kind and step, so
/// a retried change never queues it twice.
pub fn delivery_id(alert: &Alert, send: &Send, step: usize) -> String {
    format!(
        "{}-family-{}-{}-{step}",
        alert.id,
        send.kind,
        send.phone.trim_start_matches('+')
    )
}

/// What happens when an alert is raised for a resident with callable
/// contacts: the call-out record and the messages to send. Staff first:
/// everyone is told it was raised (the staff chain starts as always).
/// Family first: the first contact is asked to take it, and the staff
/// chain waits until `staff_at_ms` (the family's whole list, never past
/// the limit for the priority).
pub fn start(
    alert: &Alert,
    contacts: &[&EmergencyContact],
    policy: &str,
    rules: &CalloutRules,
    now_ms: i64,
) -> (FamilyCallout, Vec<(Send, bool)>) {
    let mut family = FamilyCallout {
        policy: policy.into(),
        ..Default::default()
    };
    let kind = if alert.kind() == anxin_proto::EventKind::CheckinMissed {
        "checkin_missed"
    } else {
        "raised"
    };
    if policy != "family_first" {
        let sends = contacts
            .iter()
            .map(|c| {
                let quiet = held_back(c, alert.priority, now_ms, rules.utc_offset_minutes);
                (send(c, kind), quiet)
            })
            .collect();
        return (family, sends);
    }
    // Counted from the raise, not from this start: a restart between the
    // two never stretches the staff chain's wait.
    let whole = rules.answer_ms * contacts.len() as i64 * rules.rounds.max(1) as i64;
    let raised = if alert.created_ms > 0 {
        alert.created_ms
    } else {
        now_ms
    };
    family.staff_at_ms = raised + whole.min(rules.limit_ms(alert.priority));
    let sends = next_call(alert, &mut family, contacts, rules, now_ms)
        .into_iter()
        .collect();
    (family, sends)
}

/// Family first: calls the next contact who may be called now (skipping
/// those in quiet hours for anything but a P0), cycling the list up to `rounds`
/// times; sets the deadline of their answer. None once the list is done.
pub fn next_call(
    alert: &Alert,
    family: &mut FamilyCallout,
    contacts: &[&EmergencyContact],
    rules: &CalloutRules,
    now_ms: i64,
) -> Option<(Send, bool)> {
    family.deadline_ms = 0;
    if contacts.is_empty() || !family.taken_by.is_empty() {
        return None;
    }
    while family.round < rules.rounds.max(1) {
        let index = family.next as usize;
        if index >= contacts.len() {
            family.next = 0;
            family.round += 1;
            continue;
        }
        family.next += 1;
        let contact = contacts[index];
        if held_back(contact, alert.priority, now_ms, rules.utc_offset_minutes) {
            continue;
        }
        family.deadline_ms = now_ms + rules.answer_ms;
        return Some((send(contact, "call"), false));
    }
    None
}

/// Contacts told anything about this alert so far (each once), who hear
/// when it is taken and how it ended.
pub fn told<'a>(
    family: &FamilyCallout,
    contacts: &[&'a EmergencyContact],
) -> Vec<&'a EmergencyContact> {
    contacts
        .iter()
        .copied()
        .filter(|c| {
            family
                .messages
                .iter()
                .any(|m| m.phone == c.phone && !m.quiet && !m.delivery_id.is_empty())
        })
        .collect()
}

/// What a follow-up message (taken, resolved) goes to: everyone told.
pub fn follow_up(family: &FamilyCallout, contacts: &[&EmergencyContact], kind: &str) -> Vec<Send> {
    told(family, contacts)
        .into_iter()
        .map(|c| send(c, kind))
        .collect()
}

/// Everything an SMS needs, none of it medical.
#[derive(Debug, Clone, Default)]
pub struct MessageFacts {
    pub resident_name: String,
    pub what: String,
    /// Local time "HH:MM".
    pub at: String,
    pub address: String,
    /// Who is coming (a carer's name, or a family member's).
    pub who: String,
    pub outcome: String,
}

fn what(kind: anxin_proto::EventKind, zh: bool) -> &'static str {
    use anxin_proto::EventKind as K;
    match (kind, zh) {
        (K::Sos, true) => "按下了呼叫按钮",
        (K::Sos, false) => "pressed the call button",
        (K::Fall, true) => "可能跌倒了",
        (K::Fall, false) => "may have fallen",
        (K::Smoke, true) => "家中烟雾报警",
        (K::Smoke, false) => "has a smoke alarm at home",
        (K::Gas, true) => "家中燃气报警",
        (K::Gas, false) => "has a gas alarm at home",
        (K::VitalsCritical | K::VitalsWarning, true) => "体征读数异常",
        (K::VitalsCritical | K::VitalsWarning, false) => "has an unusual health reading",
        (K::Inactivity, true) => "长时间没有活动",
        (K::Inactivity, false) => "has not moved for a long time",
        (K::CheckinMissed, true) => "今天没有报平安",
        (K::CheckinMissed, false) => "has not checked in today",
        (K::LeftSafeZone, true) => "离开了安全区域",
        (K::LeftSafeZone, false) => "has left their safe area",
        (K::HouseholdSilent, true) => "家中长时间没有用水用电",
        (K::HouseholdSilent, false) => "shows no water or power use at home for a long time",
        (K::HouseholdUnusual, true) => "家中用水用电异常",
        (K::HouseholdUnusual, false) => "shows unusual water or power use at home",
        (_, true) => "发出了求助信号",
        (_, false) => "raised an alarm",
    }
}

/// The facts of an alert a message may carry.
pub fn facts(alert: &Alert, utc_offset_minutes: i32, zh: bool) -> MessageFacts {
    let local = alert.created_ms + crate::domain::calendar::offset_ms(utc_offset_minutes);
    let minute = local.rem_euclid(86_400_000) / 60_000;
    MessageFacts {
        resident_name: alert.resident_name.clone(),
        what: what(alert.kind(), zh).into(),
        at: format!("{:02}:{:02}", minute / 60, minute % 60),
        address: alert.address.clone(),
        outcome: outcome(&alert.outcome, zh).into(),
        ..Default::default()
    }
}

fn outcome(outcome: &str, zh: bool) -> &str {
    match (outcome, zh) {
        ("attended", true) => "工作人员已上门处理",
        ("attended", false) => "a carer attended",
        ("false_alarm", true) => "误报，老人平安",
        ("false_alarm", false) => "it was a false alarm; she is fine",
        ("hospital", true) => "已送医",
        ("hospital", false) => "taken to hospital",
        ("no_answer", true) => "未能联系上，请尽快联系社区",
        ("no_answer", false) => "no answer; please call the community centre",
        ("referred", true) => "已转介其他服务",
        ("referred", false) => "referred to another service",
        ("cancelled_by_resident" | "cancelled_by_staff", true) => "已取消",
        ("cancelled_by_resident" | "cancelled_by_staff", false) => "cancelled",
        (_, true) => "已处理完毕",
        (_, false) => "closed",
    }
}

/// The text of a message, in the contact's language (the link, when the
/// contact has the family view, is appended by [`with_link`] as it is
/// sent). Signed 【安心】: mainland carriers require a signature on
/// application SMS.
pub fn text(kind: &str, language: &str, f: &MessageFacts) -> String {
    let zh = language != "en";
    match (kind, zh) {
        ("raised" | "checkin_missed", true) => format!(
            "【安心】{}{}（{}，{}）。社区正在处理。",
            f.resident_name, f.what, f.at, f.address
        ),
        ("raised" | "checkin_missed", false) => format!(
            "[Anxin] {} {} ({}, {}). The community centre is on it.",
            f.resident_name, f.what, f.at, f.address
        ),
        ("call", true) => format!(
            "【安心】{}{}（{}，{}）。您能去看看吗？请打开链接回复“我去”。",
            f.resident_name, f.what, f.at, f.address
        ),
        ("call", false) => format!(
            "[Anxin] {} {} ({}, {}). Can you go? Open the link and answer \"I'm going\".",
            f.resident_name, f.what, f.at, f.address
        ),
        ("taken", true) => format!("【安心】{}正在前往{}处。", f.who, f.resident_name),
        ("taken", false) => format!("[Anxin] {} is on the way to {}.", f.who, f.resident_name),
        ("resolved", true) => format!("【安心】{}的求助已处理：{}。", f.resident_name, f.outcome),
        ("resolved", false) => format!(
            "[Anxin] {}'s alarm is closed: {}.",
            f.resident_name, f.outcome
        ),
        (_, true) => format!("【安心】{}的求助有新情况。", f.resident_name),
        (_, false) => format!("[Anxin] News about {}'s alarm.", f.resident_name),
    }
}

/// A message's text with the contact's family-view link.
pub fn with_link(text: &str, language: &str, link: &str) -> String {
    if language == "en" {
        format!("{text} See and answer: {link}")
    } else {
        format!("{text} 查看并回复：{link}")
    }
}

/// The tag in a delivery-report URL: HMAC-SHA256 of the delivery id under
/// the sendsms password (the secret Kannel and this server share), so a
/// report for a message is taken only from whoever was given its URL.
pub fn report_tag(key: &str, delivery_id: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(delivery_id.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Monday 2026-11-23 10:00 in UTC+8 (02:00 UTC).
    const MONDAY_10AM: i64 = 1_795_399_200_000;
    const HOUR: i64 = 3_600_000;

    fn contact(name: &str, phone: &str, order: u32) -> EmergencyContact {
        EmergencyContact {
            name: name.into(),
            relation: "daughter".into(),
            phone: phone.into(),
            channels: vec!["sms".into(), "view".into()],
            order,
            consent_ms: 1,
            language: "zh-CN".into(),
            ..Default::default()
        }
    }

    fn rules() -> CalloutRules {
        CalloutRules {
            answer_ms: 60_000,
            rounds: 2,
            p0_limit_ms: 90_000,
            limit_ms: 600_000,
            utc_offset_minutes: 480,
        }
    }

    #[test]
    fn phones_are_e164_or_mainland_mobiles() {
        assert_eq!(normalize_phone("13800000000").unwrap(), "+8613800000000");
        assert_eq!(normalize_phone("138 0000 0000").unwrap(), "+8613800000000");
        assert_eq!(normalize_phone("+8613800000000").unwrap(), "+8613800000000");
        assert_eq!(
            normalize_phone("+44 20 7946 0000").unwrap(),
            "+442079460000"
        );
        for bad in [
            "12800000000",
            "1380000000",
            "+86138000",
            "0211234567",
            "call me",
            "+0123456789",
            "",
        ] {
            assert!(normalize_phone(bad).is_err(), "{bad}");
        }
        // Landlines keep their E.164 form.
        assert!(normalize_phone("+862161234567").is_ok());
    }

    #[test]
    fn channels_need_consent_which_the_server_records() {
        let mut c = contact("Wang Fang", "13800000000", 1);
        c.consent_ms = 0;
        assert!(
            check_contact(&mut c, "admin", 5)
                .unwrap_err()
                .contains("consent")
        );
        c.consented = true;
        check_contact(&mut c, "admin", 5).unwrap();
        assert_eq!(
            (c.consent_by.as_str(), c.consent_ms, c.phone.as_str()),
            ("admin", 5, "+8613800000000")
        );
        // Consent once recorded stays as it was.
        check_contact(&mut c, "someone-else", 9).unwrap();
        assert_eq!((c.consent_by.as_str(), c.consent_ms), ("admin", 5));
        let mut bad = contact("X", "13800000000", 0);
        bad.quiet_hours = "22-7".into();
        assert!(
            check_contact(&mut bad, "a", 1)
                .unwrap_err()
                .contains("quiet_hours")
        );
        // An old record (no channels) keeps working.
        let mut old = EmergencyContact {
            name: "Li".into(),
            relation: "son".into(),
            phone: "13900000000".into(),
            ..Default::default()
        };
        check_contact(&mut old, "a", 1).unwrap();
    }

    #[test]
    fn callable_contacts_are_ordered_and_consented() {
        let mut unconsented = contact("C", "+8613900000003", 1);
        unconsented.consent_ms = 0;
        let resident = Resident {
            emergency_contacts: vec![
                contact("A", "+8613900000001", 0),
                contact("B", "+8613900000002", 2),
                unconsented,
                contact("D", "+8613900000004", 1),
            ],
            ..Default::default()
        };
        let names: Vec<_> = callable(&resident)
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["D", "B", "A"]);
    }

    #[test]
    fn quiet_hours_hold_back_p1_p2_and_never_p0() {
        let mut c = contact("A", "+8613900000001", 1);
        c.quiet_hours = "22:00-07:00".into();
        let (p0, p2) = (Priority::P0 as i32, Priority::P2 as i32);
        assert!(held_back(
            &c,
            Priority::P1 as i32,
            MONDAY_10AM + 13 * HOUR,
            480
        ));
        // 10:00 local: not quiet.
        assert!(!held_back(&c, p2, MONDAY_10AM, 480));
        // 23:00 and 06:00 local: quiet, across midnight.
        assert!(held_back(&c, p2, MONDAY_10AM + 13 * HOUR, 480));
        assert!(held_back(&c, p2, MONDAY_10AM + 20 * HOUR, 480));
        assert!(!held_back(&c, p0, MONDAY_10AM + 13 * HOUR, 480));
    }

    #[test]
    fn family_first_calls_in_order_cycles_then_stops_and_the_staff_wait_is_capped() {
        let (a, b) = (
            contact("A", "+8613900000001", 1),
            contact("B", "+8613900000002", 2),
        );
        let contacts = [&a, &b];
        let alert = Alert {
            id: "7".into(),
            priority: Priority::P0 as i32,
            ..Default::default()
        };
        let (mut family, sends) = start(&alert, &contacts, "family_first", &rules(), 0);
        assert_eq!(sends.len(), 1);
        assert_eq!(
            (sends[0].0.name.as_str(), sends[0].0.kind.as_str()),
            ("A", "call")
        );
        assert_eq!(family.deadline_ms, 60_000);
        // Four calls of a minute would be 240 s; a P0 waits 90 s at most.
        assert_eq!(family.staff_at_ms, 90_000);
        let mut called = vec!["A".to_string()];
        let mut now = 0;
        while let Some((send, _)) = next_call(&alert, &mut family, &contacts, &rules(), now) {
            called.push(send.name);
            now += 60_000;
        }
        assert_eq!(called, ["A", "B", "A", "B"]);
        assert_eq!(family.deadline_ms, 0);
        // A P1 waits for the whole list.
        let p1 = Alert {
            priority: Priority::P1 as i32,
            ..alert.clone()
        };
        assert_eq!(
            start(&p1, &contacts, "family_first", &rules(), 0)
                .0
                .staff_at_ms,
            240_000
        );
        // Staff first: everyone told at once.
        let (staff_first, sends) = start(&alert, &contacts, "staff_first", &rules(), 0);
        assert_eq!(sends.len(), 2);
        assert_eq!(staff_first.staff_at_ms, 0);
    }

    #[test]
    fn messages_carry_no_medical_detail_and_speak_the_contacts_language() {
        let alert = Alert {
            kind: anxin_proto::EventKind::Fall as i32,
            resident_name: "Wang Xiulan".into(),
            address: "Room 301, 12 Lane 5".into(),
            created_ms: MONDAY_10AM,
            ..Default::default()
        };
        let f = facts(&alert, 480, false);
        let en = with_link(&text("call", "en", &f), "en", "https://anxin.example/f/abc");
        assert!(
            en.contains("Wang Xiulan may have fallen (10:00, Room 301"),
            "{en}"
        );
        assert!(en.ends_with("https://anxin.example/f/abc"), "{en}");
        let zh = text("call", "zh-CN", &facts(&alert, 480, true));
        assert!(
            zh.starts_with("【安心】Wang Xiulan可能跌倒了（10:00"),
            "{zh}"
        );
    }
}
