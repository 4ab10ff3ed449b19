//! Visit plans as they are stored: checked against the directory, saved
//! with their audit entry.

use anxin_proto::v1::{AuditEntry, VisitPlan};

use crate::{domain::welfare::check_plan, store::StoreError};

/// A plan as it is stored: weekdays in order, the resident's community,
/// `since_ms` kept from the stored plan (or now), every field checked.
pub fn prepare_plan(
    store: &crate::store::Store,
    mut plan: VisitPlan,
    now_ms: i64,
) -> Result<VisitPlan, String> {
    let read = |e: StoreError| e.to_string();
    let resident = store
        .resident(&plan.resident_id)
        .map_err(read)?
        .ok_or_else(|| format!("no resident `{}`", plan.resident_id))?;
    plan.weekdays.sort_unstable();
    plan.weekdays.dedup();
    plan.community_id = resident.community_id;
    plan.since_ms = match store.visit_plan(&plan.id).map_err(read)? {
        Some(before) if before.resident_id != plan.resident_id => {
            return Err(format!(
                "visit plan {} belongs to resident {}; make a new plan",
                plan.id, before.resident_id
            ));
        }
        Some(before) => before.since_ms,
        None => now_ms,
    };
    check_plan(&plan)?;
    if !plan.carer_id.is_empty() && store.staff_member(&plan.carer_id).map_err(read)?.is_none() {
        return Err(format!("no staff member `{}`", plan.carer_id));
    }
    Ok(plan)
}

/// Saves a prepared plan with its audit entry.
pub fn save_plan(
    store: &crate::store::Store,
    actor: &str,
    plan: &VisitPlan,
) -> Result<(), StoreError> {
    let days: Vec<String> = plan.weekdays.iter().map(u32::to_string).collect();
    store.put_visit_plans(
        std::slice::from_ref(plan),
        AuditEntry {
            at_ms: anxin_proto::now_ms(),
            actor: actor.to_string(),
            action: "visit_plan.put".into(),
            target: format!("visit-plan/{}", plan.id),
            community_id: plan.community_id.clone(),
            detail: format!(
                "resident {} on weekdays {}{}",
                plan.resident_id,
                days.join(","),
                if plan.active { "" } else { " (inactive)" }
            ),
            ..Default::default()
        },
    )
}
