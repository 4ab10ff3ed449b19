//! CSV bulk import of residents, devices, staff and visit plans.
//!
//! Every row is checked (the same rules as the admin API, plus duplicates
//! within the file) before anything is written; a file with any rejected
//! row imports nothing, and the report names each bad row by its line in
//! the file (the header is line 1). Columns are in docs/dispatch.md.

use std::collections::HashSet;

use anxin_proto::v1::{
    CheckinWindow, DeviceRecord, EmergencyContact, ImportReport, RejectedRow, Resident, Shift,
    Staff, VisitPlan,
};

use crate::directory::{self, Directory, DirectoryBatch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    Residents,
    Devices,
    Staff,
    VisitPlans,
}

impl ImportKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "residents" => Some(Self::Residents),
            "devices" => Some(Self::Devices),
            "staff" => Some(Self::Staff),
            "visit_plans" => Some(Self::VisitPlans),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Residents => "residents",
            Self::Devices => "devices",
            Self::Staff => "staff",
            Self::VisitPlans => "visit_plans",
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            Self::Residents => &[
                "id",
                "name",
                "community_id",
                "address",
                "phone",
                "medical_notes",
                "emergency_contacts",
                "access_notes",
            ],
            Self::Devices => &["id", "kind", "resident_id", "gateway_id", "password"],
            Self::Staff => &[
                "id",
                "name",
                "role",
                "communities",
                "shifts",
                "contact",
                "active",
            ],
            Self::VisitPlans => &[
                "id",
                "resident_id",
                "weekdays",
                "carer_id",
                "note",
                "active",
            ],
        }
    }
}

/// A checked file, ready to write, or the rows that stop it.
pub struct Parsed {
    pub batch: DirectoryBatch,
    /// For [`ImportKind::VisitPlans`] (not part of the directory).
    pub plans: Vec<VisitPlan>,
    pub report: ImportReport,
}

fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(';').map(str::trim).filter(|s| !s.is_empty())
}

/// `Name|relation|phone;…`
fn contacts(text: &str) -> Result<Vec<EmergencyContact>, String> {
    list(text)
        .map(|entry| {
            let parts: Vec<&str> = entry.split('|').map(str::trim).collect();
            match parts.as_slice() {
                [name, relation, phone] if !name.is_empty() && !phone.is_empty() => {
                    Ok(EmergencyContact {
                        name: name.to_string(),
                        relation: relation.to_string(),
                        phone: phone.to_string(),
                    })
                }
                _ => Err(format!(
                    "emergency contact `{entry}` is not `name|relation|phone`"
                )),
            }
        })
        .collect()
}

/// `1-5 08:00-20:00;6,7 22:00-06:00`
pub fn shifts(text: &str) -> Result<Vec<Shift>, String> {
    list(text)
        .map(|entry| {
            let bad =
                || format!("shift `{entry}` is not `DAYS HH:MM-HH:MM` (days 1-7, e.g. 1-5 or 6,7)");
            let (days, hours) = entry.split_once(' ').ok_or_else(bad)?;
            let (start, end) = hours.trim().split_once('-').ok_or_else(bad)?;
            let shift = Shift {
                weekdays: weekdays(days).map_err(|_| bad())?,
                start: start.to_string(),
                end: end.to_string(),
            };
            crate::routing::check_shift(&shift)?;
            Ok(shift)
        })
        .collect()
}

/// "1-5", "1;4", "6,7": weekdays 1 (Monday) … 7 (Sunday).
fn weekdays(text: &str) -> Result<Vec<u32>, String> {
    let bad = || format!("weekdays `{text}` is not a list of days 1-7 (e.g. 1;4 or 1-5)");
    let mut days = Vec::new();
    for part in text
        .split([';', ','])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                days.extend(a..=b);
            }
            None => days.push(part.parse().map_err(|_| bad())?),
        }
    }
    days.sort_unstable();
    days.dedup();
    Ok(days)
}

fn boolean(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        other => Err(format!("active `{other}` is not true or false")),
    }
}

pub fn parse(dir: &crate::store::Store, kind: ImportKind, csv_text: &str) -> Parsed {
    let mut report = ImportReport::default();
    let mut batch = DirectoryBatch::default();
    let mut plans = Vec::new();
    let now = anxin_proto::now_ms();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(csv_text.as_bytes());
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(err) => {
            report.rejected.push(RejectedRow {
                line: 1,
                reason: format!("unreadable header: {err}"),
            });
            return Parsed {
                batch,
                plans,
                report,
            };
        }
    };
    let missing: Vec<&str> = kind
        .columns()
        .iter()
        .filter(|c| !headers.iter().any(|h| h == **c))
        .copied()
        .collect();
    if !missing.is_empty() {
        report.rejected.push(RejectedRow {
            line: 1,
            reason: format!("header lacks column(s): {}", missing.join(", ")),
        });
        return Parsed {
            batch,
            plans,
            report,
        };
    }
    let index = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .expect("checked above")
    };
    let mut seen = HashSet::new();
    for record in reader.records() {
        let (line, row) = match record {
            Ok(row) => (row.position().map_or(0, |p| p.line()), row),
            Err(err) => {
                let line = err.position().map_or(0, |p| p.line());
                report.rejected.push(RejectedRow {
                    line,
                    reason: format!("unreadable row: {err}"),
                });
                continue;
            }
        };
        let get = |name: &str| row.get(index(name)).unwrap_or("").to_string();
        // Columns a file may leave out.
        let optional = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .and_then(|i| row.get(i))
                .unwrap_or("")
                .to_string()
        };
        let checked: Result<(), String> = (|| {
            let id = get("id");
            if !seen.insert(id.clone()) {
                return Err(format!("id `{id}` appears twice in the file"));
            }
            match kind {
                ImportKind::Residents => {
                    let resident = Resident {
                        name: get("name"),
                        community_id: get("community_id"),
                        address: get("address"),
                        phone: get("phone"),
                        medical_notes: get("medical_notes"),
                        emergency_contacts: contacts(&get("emergency_contacts"))?,
                        access_notes: get("access_notes"),
                        checkin: crate::welfare::enrol(
                            Some(CheckinWindow {
                                start: optional("checkin_start"),
                                end: optional("checkin_end"),
                                since_ms: 0,
                            }),
                            dir.resident(&id)
                                .ok()
                                .flatten()
                                .and_then(|r| r.checkin)
                                .as_ref(),
                            now,
                        ),
                        id,
                    };
                    directory::check_resident(dir, &resident)?;
                    batch.residents.push(resident);
                }
                ImportKind::Devices => {
                    // A row without a password keeps the stored credential,
                    // and an import never re-activates a deactivated device.
                    directory::check_device_password(&get("password"))?;
                    let existing = dir.device(&id).ok().flatten();
                    let device = DeviceRecord {
                        kind: get("kind"),
                        resident_id: get("resident_id"),
                        gateway_id: get("gateway_id"),
                        password: String::new(),
                        password_sha256: match get("password") {
                            p if p.is_empty() => existing
                                .as_ref()
                                .map(|d| d.password_sha256.clone())
                                .unwrap_or_default(),
                            p => crate::auth::digest(&p),
                        },
                        deactivated: existing.is_some_and(|d| d.deactivated),
                        id,
                    };
                    directory::check_device(&device, |r| dir.resident(r).ok().flatten().is_some())?;
                    batch.devices.push(device);
                }
                ImportKind::Staff => {
                    let role = directory::parse_role(&get("role")).ok_or_else(|| {
                        format!(
                            "role `{}` is not carer, nurse, dispatcher, supervisor or admin",
                            get("role")
                        )
                    })?;
                    let staff = Staff {
                        id,
                        name: get("name"),
                        role: role as i32,
                        communities: list(&get("communities")).map(String::from).collect(),
                        shifts: shifts(&get("shifts"))?,
                        contact: get("contact"),
                        active: boolean(&get("active"))?,
                    };
                    directory::check_staff(dir, &staff)?;
                    batch.staff.push(staff);
                }
                ImportKind::VisitPlans => {
                    let resident_id = get("resident_id");
                    let resident = dir
                        .resident(&resident_id)
                        .ok()
                        .flatten()
                        .ok_or_else(|| format!("no resident `{resident_id}`"))?;
                    let before = dir.visit_plan(&id).ok().flatten();
                    let plan = VisitPlan {
                        resident_id,
                        community_id: resident.community_id,
                        weekdays: weekdays(&get("weekdays"))?,
                        carer_id: get("carer_id"),
                        note: get("note"),
                        active: boolean(&get("active"))?,
                        since_ms: before.map_or(now, |b| b.since_ms),
                        id,
                    };
                    crate::welfare::check_plan(&plan)?;
                    if !plan.carer_id.is_empty()
                        && dir.staff_member(&plan.carer_id).ok().flatten().is_none()
                    {
                        return Err(format!("no staff member `{}`", plan.carer_id));
                    }
                    plans.push(plan);
                }
            }
            Ok(())
        })();
        if let Err(reason) = checked {
            report.rejected.push(RejectedRow { line, reason });
        }
    }
    if report.rejected.is_empty() {
        report.imported =
            (batch.residents.len() + batch.devices.len() + batch.staff.len() + plans.len()) as u64;
    } else {
        batch = DirectoryBatch::default();
        plans.clear();
    }
    Parsed {
        batch,
        plans,
        report,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_lists_parse_and_bad_ones_are_named() {
        let parsed = shifts("1-5 08:00-20:00; 6,7 22:00-06:00").unwrap();
        assert_eq!(parsed[0].weekdays, vec![1, 2, 3, 4, 5]);
        assert_eq!(parsed[1].weekdays, vec![6, 7]);
        assert_eq!(parsed[1].end, "06:00");
        assert!(shifts("weekdays 08:00-20:00").is_err());
        assert!(shifts("1-5 8-20").is_err());
    }

    #[test]
    fn roles_are_read_as_csv_or_rest_spells_them() {
        use anxin_proto::v1::StaffRole;
        for text in ["carer", "Carer", "STAFF_ROLE_CARER", " staff_role_carer "] {
            assert_eq!(
                directory::parse_role(text),
                Some(StaffRole::Carer),
                "{text}"
            );
        }
        assert_eq!(
            directory::parse_role("STAFF_ROLE_SUPERVISOR"),
            Some(StaffRole::Supervisor)
        );
        assert_eq!(directory::parse_role("STAFF_ROLE_"), None);
        assert_eq!(directory::parse_role("janitor"), None);
    }

    #[test]
    fn weekday_lists_parse_and_bad_ones_are_named() {
        assert_eq!(weekdays("1;4").unwrap(), vec![1, 4]);
        assert_eq!(weekdays("1-5").unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(weekdays("6,7;6").unwrap(), vec![6, 7]);
        assert!(weekdays("Monday").is_err());
    }

    #[test]
    fn contacts_need_three_parts() {
        let c = contacts("Wang Fang|daughter|13800000000").unwrap();
        assert_eq!(c[0].relation, "daughter");
        assert!(contacts("Wang Fang 13800000000").is_err());
    }
}
