//! The hand-off to the emergency services as people use it: a dispatcher
//! reads the sheet (`domain/handoff.rs`; the read is audited, as it holds
//! the resident's sensitive fields) and records the receiver's reference
//! (a 120 CAD number) on the alert.

use anxin_proto::{now_ms, v1::Alert};

use crate::{
    desks::alerts::{AlertDesk, DeskError, audit},
    desks::audit::guard,
    domain::handoff::{Handoff, sheet, text},
    domain::rights::{Need, Principal},
    store::{Change, directory::Directory},
};

/// The sheet for an alert, as JSON and as text.
pub fn read(
    desk: &AlertDesk,
    caller: &Principal,
    alert_id: &str,
) -> Result<(Handoff, String), DeskError> {
    let alert = desk.store().alert(alert_id)?;
    guard(
        desk.store(),
        caller,
        Need::ReadResidents,
        Some(&alert.community_id),
        &format!("alert/{alert_id}"),
    )?;
    let resident = desk
        .store()
        .resident(&alert.resident_id)?
        .unwrap_or_default();
    let offset = desk.policy().utc_offset_minutes;
    let handoff = sheet(&alert, &resident, now_ms(), offset);
    desk.store().append(audit(
        &caller.name(),
        "alert.handoff",
        &alert,
        "hand-off sheet read (resident's sensitive fields)".into(),
    ))?;
    let text = text(&handoff, offset);
    Ok((handoff, text))
}

/// Records the emergency services' reference on an alert.
pub async fn record_reference(
    desk: &AlertDesk,
    caller: &Principal,
    alert_id: &str,
    reference: &str,
) -> Result<Alert, DeskError> {
    let current = desk.store().alert(alert_id)?;
    guard(
        desk.store(),
        caller,
        Need::Act,
        Some(&current.community_id),
        &format!("alert/{alert_id}"),
    )?;
    let reference = reference.trim();
    if reference.is_empty() || reference.chars().count() > 64 {
        return Err(DeskError::BadRequest(
            "a reference is 1 to 64 characters (the 120 centre's case number)".into(),
        ));
    }
    let actor = caller.name();
    let (alert, _) = desk.store().update_alert(alert_id, |a| {
        let detail = format!("emergency services' reference {reference}");
        a.emergency_reference = reference.to_string();
        Ok(Change {
            audit: vec![audit(&actor, "alert.reference", a, detail)],
            ..Default::default()
        })
    })?;
    desk.store().flush().await?;
    desk.announce(alert.clone());
    Ok(alert)
}
