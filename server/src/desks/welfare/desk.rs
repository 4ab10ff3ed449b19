//! Who may see and do what with check-ins and visits, for REST (and the
//! console): every call checks the caller's rights and community scope,
//! and every refusal is audited (`audit::guard`).

use std::collections::HashMap;

use anxin_proto::{
    now_ms,
    v1::{Alert, CheckinDay, Resident, SignOfLife, StaffRole, Visit, VisitPlan},
};

use super::{
    checkins::{self, CheckinStatus},
    visits::{self, VisitStatus},
};
use crate::{
    desks::alerts::{AlertDesk, DeskError},
    desks::audit::guard,
    domain::calendar::{date_of, local_day, parse_date},
    domain::rights::{Need, Principal},
    store::StoreError,
};

#[derive(Clone)]
pub struct WelfareDesk {
    desk: AlertDesk,
}

/// A resident's welfare at a glance (the alert detail, the directory).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResidentWelfare {
    pub resident_id: String,
    pub resident_name: String,
    pub checkin_window: String,
    pub last_sign: Option<SignOfLife>,
    /// The last 14 judged days, newest first.
    pub checkins: Vec<CheckinDay>,
    /// The last 10 alerts, newest first.
    pub recent_alerts: Vec<Alert>,
    /// Visits of the last 30 days, newest first.
    pub visits: Vec<Visit>,
}

/// A visit plan as listed: the plan's fields and the names people read.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    #[serde(flatten)]
    pub plan: VisitPlan,
    pub resident_name: String,
    pub community_name: String,
}

fn bad(text: impl Into<String>) -> DeskError {
    DeskError::BadRequest(text.into())
}

impl WelfareDesk {
    pub fn new(desk: AlertDesk) -> Self {
        Self { desk }
    }

    fn offset(&self) -> i32 {
        self.desk.policy().utc_offset_minutes
    }

    /// "YYYY-MM-DD" or today.
    fn day(&self, day: Option<&str>) -> Result<i32, DeskError> {
        match day.filter(|d| !d.is_empty()) {
            Some(text) => {
                parse_date(text).ok_or_else(|| bad(format!("day `{text}` is not YYYY-MM-DD")))
            }
            None => Ok(local_day(now_ms(), self.offset())),
        }
    }

    fn resident(&self, id: &str) -> Result<Resident, DeskError> {
        Ok(self
            .desk
            .store()
            .resident(id)?
            .ok_or_else(|| StoreError::NotFound(format!("no resident {id}")))?)
    }

    /// Every enrolled resident's check-in on a day.
    pub fn checkins(
        &self,
        caller: &Principal,
        day: Option<&str>,
        community: &str,
    ) -> Result<Vec<CheckinStatus>, DeskError> {
        guard(
            self.desk.store(),
            caller,
            Need::ViewAlerts,
            None,
            "checkins",
        )?;
        let day = self.day(day)?;
        let enrolled: Vec<_> = self
            .desk
            .welfare()
            .enrolled(self.desk.store(), self.desk.gateways().directory_epoch())?
            .iter()
            .filter(|(r, _)| caller.sees(&r.community_id))
            .filter(|(r, _)| community.is_empty() || r.community_id == community)
            .cloned()
            .collect();
        Ok(checkins::day_status(&self.desk, &enrolled, day, now_ms())?)
    }

    /// A carer (or anyone who may act in the community) confirms the
    /// resident is well: a sign of life for today's check-in.
    pub async fn confirm(
        &self,
        caller: &Principal,
        resident_id: &str,
        note: &str,
    ) -> Result<SignOfLife, DeskError> {
        let resident = self.resident(resident_id)?;
        guard(
            self.desk.store(),
            caller,
            Need::Act,
            Some(&resident.community_id),
            &format!("resident/{resident_id}"),
        )?;
        let sign = checkins::confirm(&self.desk, &resident, &caller.name(), note)?;
        self.desk.store().flush().await?;
        Ok(sign)
    }

    /// Plans of the caller's communities, each with its resident's and
    /// community's names.
    pub fn plans(&self, caller: &Principal, community: &str) -> Result<Vec<PlanView>, DeskError> {
        guard(
            self.desk.store(),
            caller,
            Need::ViewAlerts,
            None,
            "visit-plans",
        )?;
        let store = self.desk.store();
        let mut names = super::view::PlaceNames::default();
        let mut out = Vec::new();
        for plan in store
            .visit_plans()?
            .into_iter()
            .filter(|p| caller.sees(&p.community_id))
            .filter(|p| community.is_empty() || p.community_id == community)
        {
            out.push(PlanView {
                resident_name: store
                    .resident(&plan.resident_id)?
                    .map(|r| r.name)
                    .unwrap_or_default(),
                community_name: names.of(store, &plan.community_id)?,
                plan,
            });
        }
        Ok(out)
    }

    /// Saves a plan: administrators anywhere, supervisors in their
    /// communities.
    pub async fn put_plan(
        &self,
        caller: &Principal,
        plan: VisitPlan,
    ) -> Result<VisitPlan, DeskError> {
        let resident = self
            .desk
            .store()
            .resident(&plan.resident_id)?
            .ok_or_else(|| bad(format!("no resident `{}`", plan.resident_id)))?;
        let target = format!("visit-plan/{}", plan.id);
        // Supervisors plan for their communities (the right they hold
        // there beyond acting is the audit's); everyone else must administer.
        let need = if caller.role() == Some(StaffRole::Supervisor) {
            Need::Audit
        } else {
            Need::Administer
        };
        guard(
            self.desk.store(),
            caller,
            need,
            Some(&resident.community_id),
            &target,
        )?;
        let plan = super::plans::prepare_plan(self.desk.store(), plan, now_ms()).map_err(bad)?;
        super::plans::save_plan(self.desk.store(), &caller.name(), &plan)?;
        self.desk.gateways().directory_changed();
        self.desk.store().flush().await?;
        Ok(plan)
    }

    /// Visits due on a day (and what happened), optionally only `status`.
    pub fn visits(
        &self,
        caller: &Principal,
        day: Option<&str>,
        community: &str,
        status: &str,
    ) -> Result<Vec<VisitStatus>, DeskError> {
        guard(self.desk.store(), caller, Need::ViewAlerts, None, "visits")?;
        let day = self.day(day)?;
        let plans: Vec<VisitPlan> = self
            .desk
            .welfare()
            .plans(self.desk.store(), self.desk.gateways().directory_epoch())?
            .iter()
            .filter(|p| caller.sees(&p.community_id))
            .filter(|p| community.is_empty() || p.community_id == community)
            .cloned()
            .collect();
        // Only the planned residents are read, one by one.
        let mut residents = HashMap::new();
        for plan in &plans {
            if !residents.contains_key(&plan.resident_id)
                && let Some(r) = self.desk.store().resident(&plan.resident_id)?
            {
                residents.insert(r.id.clone(), r);
            }
        }
        Ok(visits::day_visits(&self.desk, &plans, &residents, day)?
            .into_iter()
            .filter(|v| status.is_empty() || v.status == status)
            .collect())
    }

    /// A carer records arriving for today's planned visit, with a note.
    pub async fn arrive(
        &self,
        caller: &Principal,
        plan_id: &str,
        note: &str,
    ) -> Result<Visit, DeskError> {
        let plan = self
            .desk
            .store()
            .visit_plan(plan_id)?
            .ok_or_else(|| StoreError::NotFound(format!("no visit plan {plan_id}")))?;
        guard(
            self.desk.store(),
            caller,
            Need::Act,
            Some(&plan.community_id),
            &format!("visit-plan/{plan_id}"),
        )?;
        let (visit, written) =
            visits::record_arrival(&self.desk, &plan, &caller.name(), note, now_ms()).map_err(
                |e| match e {
                    StoreError::Refused(text) => bad(text),
                    other => other.into(),
                },
            )?;
        if !written {
            return Err(StoreError::Stale(format!(
                "the visit of {} is already recorded for {} ({} by {})",
                plan.resident_id,
                date_of(visit.day),
                visit.status,
                if visit.carer_id.is_empty() {
                    "the day's end"
                } else {
                    &visit.carer_id
                }
            ))
            .into());
        }
        self.desk.store().flush().await?;
        Ok(visit)
    }

    /// A resident's recent check-ins, alerts and visits (no sensitive
    /// fields: those stay behind the audited resident read).
    pub fn resident_welfare(
        &self,
        caller: &Principal,
        resident_id: &str,
    ) -> Result<ResidentWelfare, DeskError> {
        let resident = self.resident(resident_id)?;
        guard(
            self.desk.store(),
            caller,
            Need::ViewAlerts,
            Some(&resident.community_id),
            &format!("resident/{resident_id}"),
        )?;
        let store = self.desk.store();
        let today = local_day(now_ms(), self.offset());
        let mut checkins: Vec<CheckinDay> = store
            .checkin_days(today - 14, today + 1)?
            .into_iter()
            .filter(|d| d.resident_id == resident_id)
            .collect();
        checkins.sort_by_key(|d| std::cmp::Reverse(d.day));
        let mut recent_alerts: Vec<Alert> = store
            .alerts(&[])?
            .into_iter()
            .filter(|a| a.resident_id == resident_id)
            .collect();
        recent_alerts.sort_by_key(|a| std::cmp::Reverse(a.created_ms));
        recent_alerts.truncate(10);
        let plans: Vec<String> = store
            .visit_plans()?
            .into_iter()
            .filter(|p| p.resident_id == resident_id)
            .map(|p| p.id)
            .collect();
        let mut visits: Vec<Visit> = store
            .visits(today - 30, today + 1)?
            .into_iter()
            .filter(|v| plans.contains(&v.plan_id))
            .collect();
        visits.sort_by_key(|v| std::cmp::Reverse(v.day));
        let window = resident
            .checkin
            .as_ref()
            .map(|w| format!("{}–{}", w.start, w.end))
            .unwrap_or_default();
        Ok(ResidentWelfare {
            resident_id: resident.id,
            resident_name: resident.name,
            checkin_window: window,
            last_sign: store.sign_of_life(resident_id)?,
            checkins,
            recent_alerts,
            visits,
        })
    }
}
