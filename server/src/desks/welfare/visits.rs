//! Scheduled visits: which are due on a day, a carer's record of arrival,
//! and the flag a supervisor gets for a planned visit not done by the day's
//! end.

use std::collections::{HashMap, HashSet};

use anxin_proto::{
    now_ms,
    v1::{AuditEntry, Resident, StaffRole, Visit, VisitPlan},
};

use crate::domain::welfare::plan_due;
use crate::{
    desks::alerts::AlertDesk,
    desks::outbox::Notifier,
    domain::calendar::{date_of, local_day},
    domain::notification::Notification,
    domain::routing,
    store::{OutboxItem, StoreError},
};

/// Days back a restarted server still flags (a box that was down over a
/// weekend flags Friday's and Saturday's missed visits on Monday).
const LOOK_BACK_DAYS: i32 = 7;

pub struct VisitJudge {
    desk: AlertDesk,
    checked: HashSet<(String, i32)>,
}

/// A planned visit on a day, as the console and the carer's phone show it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VisitStatus {
    pub plan_id: String,
    pub resident_id: String,
    pub resident_name: String,
    pub address: String,
    pub community_id: String,
    pub community_name: String,
    pub carer_id: String,
    pub plan_note: String,
    pub day: String,
    /// due, done, missed.
    pub status: String,
    pub arrived_ms: i64,
    pub visited_by: String,
    pub note: String,
    pub flagged_ms: i64,
}

impl VisitJudge {
    pub fn new(desk: AlertDesk) -> Self {
        Self {
            desk,
            checked: HashSet::new(),
        }
    }

    /// Flags every planned visit of the last days that ended without one.
    /// Returns how many were flagged by this call.
    pub fn tick(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        let plans = self
            .desk
            .welfare()
            .plans(self.desk.store(), self.desk.gateways().directory_epoch())?;
        if self.checked.len() > 1_000_000 {
            self.checked.clear();
        }
        let offset = self.desk.policy().utc_offset_minutes;
        let today = local_day(now_ms, offset);
        let mut flagged = 0;
        for day in today - LOOK_BACK_DAYS..today {
            let due: Vec<&VisitPlan> = plans
                .iter()
                .filter(|p| plan_due(p, day, offset))
                .filter(|p| !self.checked.contains(&(p.id.clone(), day)))
                .collect();
            if due.is_empty() {
                continue;
            }
            // One read of the day's visits for all its plans: those stored
            // (done, or flagged before a restart) need nothing more.
            let recorded: HashSet<String> = self
                .desk
                .store()
                .visits(day, day + 1)?
                .into_iter()
                .map(|v| v.plan_id)
                .collect();
            for plan in due {
                if !recorded.contains(&plan.id) {
                    let (_, written) = self.flag_missed(plan, day, now_ms)?;
                    flagged += usize::from(written);
                }
                self.checked.insert((plan.id.clone(), day));
            }
        }
        Ok(flagged)
    }

    fn flag_missed(
        &self,
        plan: &VisitPlan,
        day: i32,
        now_ms: i64,
    ) -> Result<(Visit, bool), StoreError> {
        let store = self.desk.store();
        let visit = Visit {
            plan_id: plan.id.clone(),
            day,
            resident_id: plan.resident_id.clone(),
            community_id: plan.community_id.clone(),
            status: "missed".into(),
            flagged_ms: now_ms,
            ..Default::default()
        };
        let notifications = supervisors_told(self.desk.store(), plan, day)?;
        let told: Vec<&str> = notifications.iter().map(|n| n.1.as_str()).collect();
        let audit = AuditEntry {
            at_ms: now_ms,
            actor: "system".into(),
            action: "visit.missed".into(),
            target: format!("resident/{}", plan.resident_id),
            community_id: plan.community_id.clone(),
            detail: format!(
                "visit plan {} on {}: not done by the day's end; supervisors told: {}",
                plan.id,
                date_of(day),
                if told.is_empty() {
                    "none with a contact".to_string()
                } else {
                    told.join(", ")
                }
            ),
            ..Default::default()
        };
        let items: Vec<OutboxItem> = notifications.into_iter().map(|n| n.0).collect();
        let (stored, written) = store.record_visit(&visit, audit, &items)?;
        if written {
            metrics::counter!(crate::metrics::VISITS_MISSED).increment(1);
            tracing::warn!(plan_id = %plan.id, resident_id = %plan.resident_id, day = %date_of(day), "planned visit not done; supervisors flagged");
            if !items.is_empty() {
                self.desk.notifier().wake();
            }
        }
        Ok((stored, written))
    }
}

/// The flag for each active supervisor of the plan's community who has a
/// contact, with their id.
fn supervisors_told(
    store: &crate::store::Store,
    plan: &VisitPlan,
    day: i32,
) -> Result<Vec<(OutboxItem, String)>, StoreError> {
    Ok(store
        .staff()?
        .into_iter()
        .filter(|s| s.active && s.role() == StaffRole::Supervisor && !s.contact.is_empty())
        .filter(|s| routing::serves(s, &plan.community_id))
        .map(|s| {
            let notification = Notification {
                delivery_id: format!("visit-{}-{}-{}", plan.id, day, s.id),
                kind: "visit_missed".into(),
                community_id: plan.community_id.clone(),
                resident_id: plan.resident_id.clone(),
                staff_id: s.id.clone(),
                sent_ms: now_ms(),
                visit_plan_id: plan.id.clone(),
                day: date_of(day),
                ..Default::default()
            };
            (Notifier::item(&s.contact, &notification), s.id)
        })
        .collect())
}

/// A carer's record of a visit: arrival now, with a short note. Only on a
/// day the plan has a visit due, and once.
pub fn record_arrival(
    desk: &AlertDesk,
    plan: &VisitPlan,
    staff_id: &str,
    note: &str,
    now_ms: i64,
) -> Result<(Visit, bool), StoreError> {
    let offset = desk.policy().utc_offset_minutes;
    let day = local_day(now_ms, offset);
    if !plan_due(plan, day, offset) {
        return Err(StoreError::Refused(format!(
            "visit plan {} has no visit due today ({})",
            plan.id,
            date_of(day)
        )));
    }
    let visit = Visit {
        plan_id: plan.id.clone(),
        day,
        resident_id: plan.resident_id.clone(),
        community_id: plan.community_id.clone(),
        status: "done".into(),
        arrived_ms: now_ms,
        carer_id: staff_id.to_string(),
        note: note.chars().take(500).collect(),
        flagged_ms: 0,
    };
    let audit = AuditEntry {
        at_ms: now_ms,
        actor: staff_id.to_string(),
        action: "visit.done".into(),
        target: format!("resident/{}", plan.resident_id),
        community_id: plan.community_id.clone(),
        detail: format!("visit plan {} on {}: {}", plan.id, date_of(day), visit.note),
        ..Default::default()
    };
    desk.store().record_visit(&visit, audit, &[])
}

/// Every visit due on a day (plans of the given residents), with what
/// happened.
pub fn day_visits(
    desk: &AlertDesk,
    plans: &[VisitPlan],
    residents: &HashMap<String, Resident>,
    day: i32,
) -> Result<Vec<VisitStatus>, StoreError> {
    let offset = desk.policy().utc_offset_minutes;
    let visits: HashMap<String, Visit> = desk
        .store()
        .visits(day, day + 1)?
        .into_iter()
        .map(|v| (v.plan_id.clone(), v))
        .collect();
    let mut names = super::view::PlaceNames::default();
    let mut out = Vec::new();
    for plan in plans
        .iter()
        .filter(|p| plan_due(p, day, offset) || visits.contains_key(&p.id))
    {
        let Some(resident) = residents.get(&plan.resident_id) else {
            continue;
        };
        let visit = visits.get(&plan.id);
        out.push(VisitStatus {
            plan_id: plan.id.clone(),
            resident_id: plan.resident_id.clone(),
            resident_name: resident.name.clone(),
            address: resident.address.clone(),
            community_name: names.of(desk.store(), &plan.community_id)?,
            community_id: plan.community_id.clone(),
            carer_id: plan.carer_id.clone(),
            plan_note: plan.note.clone(),
            day: date_of(day),
            status: visit.map_or("due".into(), |v| v.status.clone()),
            arrived_ms: visit.map_or(0, |v| v.arrived_ms),
            visited_by: visit.map_or(String::new(), |v| v.carer_id.clone()),
            note: visit.map_or(String::new(), |v| v.note.clone()),
            flagged_ms: visit.map_or(0, |v| v.flagged_ms),
        });
    }
    out.sort_by(|a, b| {
        let rank = |s: &str| match s {
            "missed" => 0,
            "due" => 1,
            _ => 2,
        };
        rank(&a.status)
            .cmp(&rank(&b.status))
            .then(a.resident_name.cmp(&b.resident_name))
    });
    Ok(out)
}
