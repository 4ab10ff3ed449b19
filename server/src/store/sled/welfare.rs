//! [`WelfareStore`] on sled: signs of life, judged days, visit plans and
//! visits.

use anxin_proto::v1::{AuditEntry, CheckinDay, SignOfLife, Visit, VisitPlan};
use prost::Message;
use sled::Transactional;

use super::trees::*;
use crate::store::welfare::WelfareStore;
use crate::store::{OutboxItem, StoreError, decode, latest_signs};

impl WelfareStore for SledStore {
    fn note_signs(&self, signs: &[SignOfLife]) -> Result<(), StoreError> {
        for sign in latest_signs(signs) {
            self.signs
                .fetch_and_update(sign.resident_id.as_bytes(), |old| {
                    let newer = old
                        .and_then(|b| SignOfLife::decode(b).ok())
                        .is_none_or(|o| sign.at_ms > o.at_ms);
                    if newer {
                        Some(sign.encode_to_vec())
                    } else {
                        old.map(<[u8]>::to_vec)
                    }
                })?;
        }
        Ok(())
    }

    fn sign_of_life(&self, resident_id: &str) -> Result<Option<SignOfLife>, StoreError> {
        get(&self.signs, "sign of life", resident_id)
    }

    fn judge_checkin_day(
        &self,
        day: &CheckinDay,
        audit: AuditEntry,
    ) -> Result<CheckinDay, StoreError> {
        let key = day_key(day.day, &day.resident_id);
        Ok(
            (&self.checkin_days, &self.audit).transaction(|(days, log)| {
                if let Some(bytes) = days.get(&key)? {
                    return decode("check-in day", &bytes).map_err(abort);
                }
                days.insert(key.as_slice(), day.encode_to_vec())?;
                append_audit(log, audit.clone())?;
                Ok(day.clone())
            })?,
        )
    }

    fn checkin_day(&self, resident_id: &str, day: i32) -> Result<Option<CheckinDay>, StoreError> {
        self.checkin_days
            .get(day_key(day, resident_id))?
            .map(|bytes| decode("check-in day", &bytes))
            .transpose()
    }

    fn checkin_days(&self, from_day: i32, to_day: i32) -> Result<Vec<CheckinDay>, StoreError> {
        days_in(&self.checkin_days, from_day, to_day)?
            .iter()
            .map(|bytes| decode("check-in day", bytes))
            .collect()
    }

    fn put_visit_plans(&self, list: &[VisitPlan], audit: AuditEntry) -> Result<(), StoreError> {
        (&self.visit_plans, &self.audit).transaction(|(plans, log)| {
            for plan in list {
                plans.insert(plan.id.as_bytes(), plan.encode_to_vec())?;
            }
            append_audit(log, audit.clone())?;
            Ok(())
        })?;
        Ok(())
    }

    fn visit_plan(&self, id: &str) -> Result<Option<VisitPlan>, StoreError> {
        get(&self.visit_plans, "visit plan", id)
    }

    fn visit_plans(&self) -> Result<Vec<VisitPlan>, StoreError> {
        list(&self.visit_plans, "visit plan")
    }

    fn record_visit(
        &self,
        visit: &Visit,
        audit: AuditEntry,
        notifications: &[OutboxItem],
    ) -> Result<(Visit, bool), StoreError> {
        let key = day_key(visit.day, &visit.plan_id);
        Ok(
            (&self.visits, &self.audit, &self.outbox).transaction(|(visits, log, outbox)| {
                if let Some(bytes) = visits.get(&key)? {
                    return Ok((decode("visit", &bytes).map_err(abort)?, false));
                }
                visits.insert(key.as_slice(), visit.encode_to_vec())?;
                append_audit(log, audit.clone())?;
                for item in notifications {
                    if outbox.get(item.delivery_id.as_bytes())?.is_none() {
                        outbox.insert(item.delivery_id.as_bytes(), item.encode_to_vec())?;
                    }
                }
                Ok((visit.clone(), true))
            })?,
        )
    }

    fn visits(&self, from_day: i32, to_day: i32) -> Result<Vec<Visit>, StoreError> {
        days_in(&self.visits, from_day, to_day)?
            .iter()
            .map(|bytes| decode("visit", bytes))
            .collect()
    }
}
