//! The daily check-in: judging each enrolled resident's day when their
//! window closes, raising `CHECKIN_MISSED` through the ordinary event path,
//! and today's standing for the console.

use std::collections::{HashMap, HashSet};

use anxin_proto::{
    DeviceEvent, EventKind, now_ms,
    v1::{AuditEntry, CheckinDay, Resident, SignOfLife, UplinkEvent},
};

use crate::domain::welfare::{CHECKIN_DEVICE_PREFIX, Standing, Window, describe_sign, standing};
use crate::{
    desks::alerts::AlertDesk,
    store::{Committed, StoreError},
};

pub struct CheckinJudge {
    desk: AlertDesk,
    /// Days known to be judged (in the store), so each is read once.
    judged: HashSet<(String, i32)>,
}

/// One resident's check-in on a day, as the console shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckinStatus {
    pub resident_id: String,
    pub resident_name: String,
    pub community_id: String,
    pub community_name: String,
    pub day: String,
    pub window: String,
    /// ok, late, pending, missed; not_due (enrolled after the day's window).
    pub status: &'static str,
    pub opens_ms: i64,
    pub closes_ms: i64,
    pub last_sign: Option<SignOfLife>,
    pub alert_id: String,
}

impl CheckinJudge {
    pub fn new(desk: AlertDesk) -> Self {
        Self {
            desk,
            judged: HashSet::new(),
        }
    }

    fn offset(&self) -> i32 {
        self.desk.policy().utc_offset_minutes
    }

    /// Judges every enrolled resident's latest closed window not judged yet.
    /// Returns how many days were judged by this call.
    pub async fn tick(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        let enrolled = self
            .desk
            .welfare()
            .enrolled(self.desk.store(), self.desk.gateways().directory_epoch())?;
        if self.judged.len() > 1_000_000 {
            self.judged.clear();
        }
        let offset = self.offset();
        let mut judged = 0;
        for (resident, window) in enrolled.iter() {
            let window = *window;
            let day = window.last_closed_day(now_ms, offset);
            let (_, closes) = window.on(day, offset);
            let since = resident.checkin.as_ref().map_or(0, |c| c.since_ms);
            if closes < since || self.judged.contains(&(resident.id.clone(), day)) {
                continue;
            }
            if self.desk.store().checkin_day(&resident.id, day)?.is_none() {
                self.judge(resident, window, day, now_ms).await?;
                judged += 1;
            }
            self.judged.insert((resident.id.clone(), day));
        }
        Ok(judged)
    }

    async fn judge(
        &self,
        resident: &Resident,
        window: Window,
        day: i32,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let store = self.desk.store();
        let offset = self.offset();
        let (opens, closes) = window.on(day, offset);
        let device_id = format!("{CHECKIN_DEVICE_PREFIX}{}", resident.id);
        let sign = store.sign_of_life(&resident.id)?;
        // Raised already (a kill between the alert and this record, or
        // another replica): the day is missed whatever came since.
        let raised = store.event(&device_id, day as u64)?;
        let outcome = match &raised {
            Some(_) => Standing::Missed,
            None => standing(opens, closes, sign.as_ref().map(|s| s.at_ms), now_ms),
        };
        let mut alert_id = raised.map(|e| e.alert_id).unwrap_or_default();
        if outcome == Standing::Missed && alert_id.is_empty() {
            alert_id = self
                .raise(resident, &device_id, day, closes, sign.as_ref(), now_ms)
                .await?;
        }
        let record = CheckinDay {
            resident_id: resident.id.clone(),
            day,
            community_id: resident.community_id.clone(),
            outcome: outcome.name().into(),
            sign: sign.clone(),
            alert_id: alert_id.clone(),
            judged_ms: now_ms,
        };
        let detail = match (&sign, outcome) {
            (_, Standing::Missed) => format!(
                "{}: no check-in by the window's end; alert {alert_id}",
                crate::domain::calendar::date_of(day)
            ),
            (Some(sign), _) => format!(
                "{}: {} — {}",
                crate::domain::calendar::date_of(day),
                outcome.name(),
                describe_sign(sign, offset)
            ),
            (None, _) => format!(
                "{}: {}",
                crate::domain::calendar::date_of(day),
                outcome.name()
            ),
        };
        store.judge_checkin_day(
            &record,
            AuditEntry {
                at_ms: now_ms,
                actor: "system".into(),
                action: "checkin.judged".into(),
                target: format!("resident/{}", resident.id),
                community_id: resident.community_id.clone(),
                detail,
                ..Default::default()
            },
        )?;
        metrics::counter!(crate::metrics::CHECKINS_JUDGED, "outcome" => outcome.name())
            .increment(1);
        tracing::info!(resident_id = %resident.id, day = %crate::domain::calendar::date_of(day), outcome = outcome.name(), alert_id, "check-in judged");
        Ok(())
    }

    /// The CHECKIN_MISSED alert, committed like a device's event: the same
    /// identity twice (a restart, another replica) is a duplicate.
    async fn raise(
        &self,
        resident: &Resident,
        device_id: &str,
        day: i32,
        closes: i64,
        sign: Option<&SignOfLife>,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        let store = self.desk.store();
        let window = resident.checkin.clone().unwrap_or_default();
        let last = match sign {
            Some(sign) => describe_sign(sign, self.offset()),
            None => "none recorded".into(),
        };
        let uplink = UplinkEvent {
            event: Some(DeviceEvent {
                device_id: device_id.to_string(),
                seq: day as u64,
                kind: EventKind::CheckinMissed as i32,
                device_time_ms: closes,
                note: format!(
                    "No check-in between {} and {} on {}. Last sign of life: {last}.",
                    window.start,
                    window.end,
                    crate::domain::calendar::date_of(day)
                ),
                ..Default::default()
            }),
            stored_ms: now_ms,
        };
        let origin =
            crate::store::directory::resident_origin(store, resident.clone(), "server".into())?;
        let committed =
            store.commit_event("", &uplink, now_ms, &origin, &self.desk.policy().incidents)?;
        store.flush().await?;
        match committed {
            Committed::New {
                alert: Some(changed),
            } => {
                let (alert, decision) = *changed;
                let id = alert.id.clone();
                self.desk.raised(alert, decision).await;
                Ok(id)
            }
            Committed::New { alert: None } => Ok(String::new()),
            Committed::Duplicate => Ok(store
                .event(device_id, day as u64)?
                .map(|e| e.alert_id)
                .unwrap_or_default()),
        }
    }
}

/// Each enrolled resident's standing on a local day (today: live; a past
/// day: as judged).
pub fn day_status(
    desk: &AlertDesk,
    enrolled: &[(Resident, Window)],
    day: i32,
    now_ms: i64,
) -> Result<Vec<CheckinStatus>, StoreError> {
    let store = desk.store();
    let offset = desk.policy().utc_offset_minutes;
    let judged: HashMap<String, CheckinDay> = store
        .checkin_days(day, day + 1)?
        .into_iter()
        .map(|d| (d.resident_id.clone(), d))
        .collect();
    let mut out = Vec::new();
    let mut names = super::view::PlaceNames::default();
    for (resident, window) in enrolled {
        let window = *window;
        let (opens, closes) = window.on(day, offset);
        let checkin = resident.checkin.clone().unwrap_or_default();
        let (status, last_sign, alert_id) = match judged.get(&resident.id) {
            Some(d) => (
                match d.outcome.as_str() {
                    "ok" => "ok",
                    "late" => "late",
                    _ => "missed",
                },
                d.sign.clone(),
                d.alert_id.clone(),
            ),
            None => {
                let sign = store.sign_of_life(&resident.id)?;
                let standing = standing(opens, closes, sign.as_ref().map(|s| s.at_ms), now_ms);
                if closes < checkin.since_ms {
                    // Enrolled after this day's window: judged from the
                    // next day on.
                    ("not_due", sign, String::new())
                } else {
                    (standing.name(), sign, String::new())
                }
            }
        };
        out.push(CheckinStatus {
            resident_id: resident.id.clone(),
            resident_name: resident.name.clone(),
            community_name: names.of(store, &resident.community_id)?,
            community_id: resident.community_id.clone(),
            day: crate::domain::calendar::date_of(day),
            window: format!("{}–{}", checkin.start, checkin.end),
            status,
            opens_ms: opens,
            closes_ms: closes,
            last_sign,
            alert_id,
        });
    }
    out.sort_by(|a, b| {
        rank(a.status)
            .cmp(&rank(b.status))
            .then(a.resident_name.cmp(&b.resident_name))
    });
    Ok(out)
}

/// Missed first, then pending: what needs a person comes first.
fn rank(status: &str) -> u8 {
    match status {
        "missed" => 0,
        "pending" => 1,
        "late" => 2,
        "ok" => 3,
        _ => 4,
    }
}

/// A carer's confirmation that a resident is well: a sign of life.
pub fn confirm(
    desk: &AlertDesk,
    resident: &Resident,
    staff_id: &str,
    note: &str,
) -> Result<SignOfLife, StoreError> {
    let sign = SignOfLife {
        resident_id: resident.id.clone(),
        at_ms: now_ms(),
        how: "carer".into(),
        source: staff_id.to_string(),
    };
    desk.store().note_signs(std::slice::from_ref(&sign))?;
    desk.store().append(AuditEntry {
        at_ms: sign.at_ms,
        actor: staff_id.to_string(),
        action: "checkin.confirm".into(),
        target: format!("resident/{}", resident.id),
        community_id: resident.community_id.clone(),
        detail: note.to_string(),
        ..Default::default()
    })?;
    Ok(sign)
}

/// A resident's own "I'm OK" after their check-in was missed: the people
/// answering the open CHECKIN_MISSED alert learn of it on the alert (they
/// still decide whether to stand down; the press may not be the resident).
pub async fn tell_open_alerts(desk: &AlertDesk, sign: &SignOfLife) {
    let open = match desk.store().alerts(&[
        anxin_proto::v1::AlertState::New,
        anxin_proto::v1::AlertState::Offered,
        anxin_proto::v1::AlertState::Acknowledged,
        anxin_proto::v1::AlertState::EnRoute,
        anxin_proto::v1::AlertState::OnScene,
    ]) {
        Ok(open) => open,
        Err(err) => {
            tracing::error!(resident_id = %sign.resident_id, error = %err, "reading open alerts for a late check-in failed");
            return;
        }
    };
    let text = format!(
        "The resident checked in after the window: {}.",
        describe_sign(sign, desk.policy().utc_offset_minutes)
    );
    for alert in open
        .iter()
        .filter(|a| a.resident_id == sign.resident_id && a.kind == EventKind::CheckinMissed as i32)
    {
        if let Err(err) = desk.system_note(&alert.id, &text).await {
            tracing::error!(alert_id = %alert.id, error = %err, "noting a late check-in failed");
        }
    }
}
