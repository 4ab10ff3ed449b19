//! The hand-off to the emergency services (120): what a call-taker needs
//! to send an ambulance to the right door and treat the right person —
//! who (name, age, sex), where (address and position), what is known of
//! their health, how to get in, whom to call, and what happened so far.
//! A JSON sheet (the emergency-services webhook carries it; docs/dispatch.md
//! documents its fields) and the same as plain text for an SMS or a voice
//! relay. Pure: the desk reads the records and audits the read.

use anxin_proto::v1::{Alert, Resident};
use serde::Serialize;

use crate::domain::calendar::{local_day, parse_date};

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    pub alert_id: String,
    pub kind: String,
    pub priority: String,
    pub raised_ms: i64,
    pub community: String,
    pub name: String,
    /// Whole years at the hand-off; `None` when no birth date is recorded.
    pub age: Option<i32>,
    pub sex: String,
    pub address: String,
    pub phone: String,
    pub position: Option<HandoffPosition>,
    pub medical_notes: String,
    pub access_notes: String,
    pub contacts: Vec<HandoffContact>,
    pub timeline: Vec<HandoffStep>,
    /// The emergency services' own reference, once recorded.
    pub reference: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HandoffPosition {
    /// WGS-84 degrees.
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: u32,
    pub room: String,
    pub at_ms: i64,
    /// "event" or "last_known".
    pub source: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HandoffContact {
    pub name: String,
    pub relation: String,
    pub phone: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HandoffStep {
    pub at_ms: i64,
    pub what: String,
}

/// Whole years from `birth_date` ("YYYY-MM-DD") to the local day of `now_ms`.
pub fn age(birth_date: &str, now_ms: i64, utc_offset_minutes: i32) -> Option<i32> {
    let born = parse_date(birth_date)?;
    let today = local_day(now_ms, utc_offset_minutes);
    let (by, bm, bd) = ymd(birth_date)?;
    let today_text = crate::domain::calendar::date_of(today);
    let (ty, tm, td) = ymd(&today_text)?;
    (born <= today).then(|| ty - by - i32::from((tm, td) < (bm, bd)))
}

fn ymd(text: &str) -> Option<(i32, u32, u32)> {
    let mut parts = text.split('-');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

/// The sheet for `alert`, from its resident's record.
pub fn sheet(alert: &Alert, resident: &Resident, now_ms: i64, utc_offset_minutes: i32) -> Handoff {
    let mut timeline = vec![HandoffStep {
        at_ms: alert.created_ms,
        what: format!("raised: {}", alert.kind().as_str_name()),
    }];
    for (at, what) in [
        (
            alert.acknowledged_ms,
            format!("acknowledged by {}", alert.acknowledged_by),
        ),
        (alert.en_route_ms, "carer en route".to_string()),
        (alert.on_scene_ms, "carer on scene".to_string()),
    ] {
        if at > 0 {
            timeline.push(HandoffStep { at_ms: at, what });
        }
    }
    for note in &alert.notes {
        timeline.push(HandoffStep {
            at_ms: note.at_ms,
            what: format!("note by {}: {}", note.by, note.text),
        });
    }
    if let Some(family) = &alert.family {
        for m in family.messages.iter().filter(|m| m.delivery_id.is_empty()) {
            timeline.push(HandoffStep {
                at_ms: m.at_ms,
                what: format!("family ({}) answered: {}", m.name, m.kind),
            });
        }
    }
    timeline.sort_by_key(|s| s.at_ms);
    Handoff {
        alert_id: alert.id.clone(),
        kind: alert.kind().as_str_name().into(),
        priority: crate::domain::incidents::priority_name(alert.priority).into(),
        raised_ms: alert.created_ms,
        community: alert.community_name.clone(),
        name: resident.name.clone(),
        age: age(&resident.birth_date, now_ms, utc_offset_minutes),
        sex: resident.sex.clone(),
        address: resident.address.clone(),
        phone: resident.phone.clone(),
        position: alert.position.as_ref().and_then(|p| {
            let l = p.location.as_ref()?;
            Some(HandoffPosition {
                lat: l.lat_e7 as f64 / 1e7,
                lon: l.lon_e7 as f64 / 1e7,
                accuracy_m: l.accuracy_m,
                room: l.room.clone(),
                at_ms: p.at_ms,
                source: p.source.clone(),
            })
        }),
        medical_notes: resident.medical_notes.clone(),
        access_notes: resident.access_notes.clone(),
        contacts: resident
            .emergency_contacts
            .iter()
            .map(|c| HandoffContact {
                name: c.name.clone(),
                relation: c.relation.clone(),
                phone: c.phone.clone(),
            })
            .collect(),
        timeline,
        reference: alert.emergency_reference.clone(),
    }
}

/// The sheet as plain text, labels in Chinese and English, for an SMS or a
/// call-taker reading it out.
pub fn text(h: &Handoff, utc_offset_minutes: i32) -> String {
    let clock = |ms: i64| {
        let local = ms + crate::domain::calendar::offset_ms(utc_offset_minutes);
        let minute = local.rem_euclid(86_400_000) / 60_000;
        format!("{:02}:{:02}", minute / 60, minute % 60)
    };
    let mut out = vec![
        format!(
            "【安心】120 转交 hand-off · 警情 alert {} · {} {}",
            h.alert_id, h.priority, h.kind
        ),
        format!(
            "姓名 Name: {} · 年龄 Age: {} · 性别 Sex: {}",
            h.name,
            h.age.map_or("—".to_string(), |a| a.to_string()),
            if h.sex.is_empty() { "—" } else { &h.sex }
        ),
        format!("地址 Address: {} ({})", h.address, h.community),
    ];
    if let Some(p) = &h.position {
        out.push(format!(
            "位置 Position (WGS-84): {:.6},{:.6} ±{} m{} · {}",
            p.lat,
            p.lon,
            p.accuracy_m,
            if p.room.is_empty() {
                String::new()
            } else {
                format!(" · {}", p.room)
            },
            if p.source == "last_known" {
                "last known 最后已知"
            } else {
                "at the alarm 报警时"
            }
        ));
    }
    out.push(format!(
        "电话 Phone: {}",
        if h.phone.is_empty() { "—" } else { &h.phone }
    ));
    out.push(format!(
        "病史 Medical: {}",
        if h.medical_notes.is_empty() {
            "—"
        } else {
            &h.medical_notes
        }
    ));
    out.push(format!(
        "入户 Access: {}",
        if h.access_notes.is_empty() {
            "—"
        } else {
            &h.access_notes
        }
    ));
    for c in &h.contacts {
        out.push(format!(
            "联系人 Contact: {} ({}) {}",
            c.name, c.relation, c.phone
        ));
    }
    for step in &h.timeline {
        out.push(format!("{} {}", clock(step.at_ms), step.what));
    }
    if !h.reference.is_empty() {
        out.push(format!("120 编号 reference: {}", h.reference));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Monday 2026-11-23 10:00 in UTC+8.
    const MONDAY_10AM: i64 = 1_795_399_200_000;

    #[test]
    fn age_counts_whole_years_in_local_time() {
        assert_eq!(age("1941-11-23", MONDAY_10AM, 480), Some(85));
        assert_eq!(age("1941-11-24", MONDAY_10AM, 480), Some(84));
        assert_eq!(age("", MONDAY_10AM, 480), None);
        assert_eq!(age("2030-01-01", MONDAY_10AM, 480), None);
    }

    #[test]
    fn the_sheet_carries_what_a_call_taker_needs() {
        let alert = Alert {
            id: "9".into(),
            kind: anxin_proto::EventKind::Fall as i32,
            created_ms: MONDAY_10AM,
            position: Some(anxin_proto::v1::Position {
                location: Some(anxin_proto::v1::Location {
                    lat_e7: 312_304_000,
                    lon_e7: 1_214_737_000,
                    accuracy_m: 15,
                    room: String::new(),
                }),
                at_ms: MONDAY_10AM,
                source: "event".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let resident = Resident {
            name: "Wang Xiulan".into(),
            address: "Room 301".into(),
            birth_date: "1941-05-01".into(),
            sex: "female".into(),
            medical_notes: "diabetic".into(),
            access_notes: "key box 4321".into(),
            ..Default::default()
        };
        let sheet = sheet(&alert, &resident, MONDAY_10AM, 480);
        assert_eq!(sheet.age, Some(85));
        let text = text(&sheet, 480);
        for needed in [
            "Wang Xiulan",
            "85",
            "female",
            "Room 301",
            "31.230400,121.473700 ±15 m",
            "diabetic",
            "key box 4321",
            "10:00 raised: EVENT_KIND_FALL",
        ] {
            assert!(text.contains(needed), "{needed} missing from:\n{text}");
        }
    }
}
