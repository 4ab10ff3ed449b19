//! A resident's vital signs over weeks, for a carer, a dispatcher or the
//! family doctor (家庭医生): the daily summaries, the limits that hold for
//! each sign now, and the alerts the rules raised, in one answer. Health
//! data: each read is audited.

use anxin_proto::{
    EventKind, now_ms,
    v1::{Alert, AuditEntry, VitalDay, VitalLimit},
};

use crate::{
    desks::{
        alerts::{AlertDesk, DeskError},
        audit::guard,
    },
    domain::{
        calendar::{date_of, local_day},
        listing::{ListQuery, MAX_LIMIT},
        rights::{Need, Principal},
        vitals::{Sign, limits_for},
    },
    store::StoreError,
};

/// Longest span a trend covers.
pub const MAX_DAYS: i32 = 366;

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrendAlert {
    pub id: String,
    pub kind: String,
    pub priority: String,
    pub created_ms: i64,
    /// The local day it was raised on (the days' axis).
    pub day: i32,
    pub state: String,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trend {
    pub resident_id: String,
    pub resident_name: String,
    pub community_id: String,
    pub conditions: Vec<String>,
    /// `[from, to]` as local dates, and as day numbers.
    pub from: String,
    pub to: String,
    pub from_day: i32,
    pub to_day: i32,
    pub days: Vec<VitalDay>,
    /// The limits that hold now, for every sign.
    pub limits: Vec<VitalLimit>,
    /// Alerts about vital signs raised in the span (the device's own and
    /// the rules').
    pub alerts: Vec<TrendAlert>,
}

fn is_vitals(kind: i32) -> bool {
    kind == EventKind::VitalsWarning as i32 || kind == EventKind::VitalsCritical as i32
}

/// The last `days` local days (today included) of a resident's vitals.
pub async fn vitals_trend(
    desk: &AlertDesk,
    caller: &Principal,
    resident_id: &str,
    days: i32,
) -> Result<Trend, DeskError> {
    let store = desk.store();
    let resident = store
        .resident(resident_id)?
        .ok_or_else(|| StoreError::NotFound(format!("no resident {resident_id}")))?;
    guard(
        store,
        caller,
        Need::ReadResidents,
        Some(&resident.community_id),
        &format!("resident/{resident_id}"),
    )?;
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(DeskError::BadRequest(format!(
            "days must be between 1 and {MAX_DAYS}"
        )));
    }
    let offset = desk.policy().utc_offset_minutes;
    let today = local_day(now_ms(), offset);
    let from_day = today - days + 1;
    let community_limits = store
        .place(&resident.community_id)?
        .map(|p| p.vital_limits)
        .unwrap_or_default();
    let limits = Sign::ALL
        .map(|sign| {
            limits_for(
                sign,
                &resident.conditions,
                &community_limits,
                &resident.vital_limits,
            )
            .as_limit(sign)
        })
        .to_vec();
    let from_ms = crate::domain::calendar::day_start_ms(from_day, offset);
    // The community's alerts of the span, newest first, a page at a time
    // (a bounded number of pages: a trend is a picture, not an audit).
    let mut query = ListQuery {
        community: resident.community_id.clone(),
        from_ms,
        limit: MAX_LIMIT,
        ..Default::default()
    };
    let mut found: Vec<Alert> = Vec::new();
    for _ in 0..20 {
        let page = store.alerts_page(&query)?;
        found.extend(
            page.items
                .into_iter()
                .filter(|a| a.resident_id == resident_id),
        );
        match page.next {
            Some(next) => query.after = next,
            None => break,
        }
    }
    let alerts = found
        .into_iter()
        .filter(|a| is_vitals(a.kind) || a.events.iter().any(|e| is_vitals(e.kind)))
        .map(|a| TrendAlert {
            kind: a.kind().as_str_name().to_string(),
            priority: a.priority().as_str_name().to_string(),
            state: a.state().as_str_name().to_string(),
            day: local_day(a.created_ms, offset),
            id: a.id,
            created_ms: a.created_ms,
        })
        .collect();
    store.append(AuditEntry {
        at_ms: now_ms(),
        actor: caller.name(),
        action: "resident.vitals.read".into(),
        target: format!("resident/{resident_id}"),
        community_id: resident.community_id.clone(),
        detail: format!("{days} days of vital signs"),
        ..Default::default()
    })?;
    store.flush().await?;
    Ok(Trend {
        days: store.vital_days(resident_id, from_day, today + 1)?,
        resident_id: resident.id,
        resident_name: resident.name,
        community_id: resident.community_id,
        conditions: resident.conditions,
        from: date_of(from_day),
        to: date_of(today),
        from_day,
        to_day: today,
        limits,
        alerts,
    })
}
