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

use crate::store::directory::{self, Directory, DirectoryBatch};

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

/// Rows a report names one by one; further bad rows are only counted.
pub const REJECTED_LISTED: usize = 100;
/// Rows written per store transaction (and per progress report).
pub const CHUNK_ROWS: usize = 5000;

/// One checked row.
pub enum Row {
    Resident(Box<Resident>),
    Device(DeviceRecord),
    Staff(Staff),
    Plan(VisitPlan),
}

/// What an import is doing, for a progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// "checking" every row, then "writing" them.
    pub phase: &'static str,
    pub rows: u64,
}

fn reject(report: &mut ImportReport, line: u64, reason: String) {
    if report.rejected.len() < REJECTED_LISTED {
        report.rejected.push(RejectedRow { line, reason });
    } else {
        report.more_rejected += 1;
    }
}

/// Pass one: checks every row of the file (a file is all or nothing). The
/// report lists the first [`REJECTED_LISTED`] bad rows by line and counts
/// the rest; with none, `imported` is the number of rows to write.
pub fn check(
    dir: &crate::store::Store,
    kind: ImportKind,
    source: impl std::io::Read,
    progress: &mut dyn FnMut(Progress),
) -> ImportReport {
    let mut report = ImportReport::default();
    let mut seen = HashSet::new();
    let (mut rows, mut read) = (0u64, 0u64);
    read_rows(dir, kind, source, Some(&mut seen), |line, row| {
        match row {
            Ok(_) => rows += 1,
            Err(reason) => reject(&mut report, line, reason),
        }
        read += 1;
        if read.is_multiple_of(CHUNK_ROWS as u64) {
            progress(Progress {
                phase: "checking",
                rows: read,
            });
        }
    });
    if report.rejected.is_empty() {
        report.imported = rows;
    }
    report
}

/// Pass two, over a file [`check`] passed: its records in chunks of
/// [`CHUNK_ROWS`], in file order.
pub fn chunks(
    dir: &crate::store::Store,
    kind: ImportKind,
    source: impl std::io::Read,
    mut each: impl FnMut(DirectoryBatch, Vec<VisitPlan>),
) {
    let mut batch = DirectoryBatch::default();
    let mut plans = Vec::new();
    let mut held = 0;
    read_rows(dir, kind, source, None, |_, row| {
        match row {
            Ok(Row::Resident(r)) => batch.residents.push(*r),
            Ok(Row::Device(d)) => batch.devices.push(d),
            Ok(Row::Staff(s)) => batch.staff.push(s),
            Ok(Row::Plan(p)) => plans.push(p),
            Err(_) => return,
        }
        held += 1;
        if held == CHUNK_ROWS {
            each(std::mem::take(&mut batch), std::mem::take(&mut plans));
            held = 0;
        }
    });
    if held > 0 {
        each(batch, plans);
    }
}

fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(';').map(str::trim).filter(|s| !s.is_empty())
}

/// `Name|relation|phone[|channels|order|quiet hours|language|consent];…`,
/// channels joined by `+` (`sms+view`), consent `yes` (docs/dispatch.md,
/// "Family").
fn contacts(text: &str) -> Result<Vec<EmergencyContact>, String> {
    list(text)
        .map(|entry| {
            let parts: Vec<&str> = entry.split('|').map(str::trim).collect();
            let bad = || {
                format!(
                    "emergency contact `{entry}` is not `name|relation|phone[|channels|order|quiet_hours|language|consent]`"
                )
            };
            if parts.len() < 3 || parts.len() > 8 || parts[0].is_empty() || parts[2].is_empty() {
                return Err(bad());
            }
            let part = |i: usize| parts.get(i).copied().unwrap_or("");
            Ok(EmergencyContact {
                name: part(0).to_string(),
                relation: part(1).to_string(),
                phone: part(2).to_string(),
                channels: part(3)
                    .split('+')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect(),
                order: if part(4).is_empty() {
                    0
                } else {
                    part(4)
                        .parse()
                        .map_err(|_| format!("emergency contact `{entry}`: order `{}` is not a number", part(4)))?
                },
                quiet_hours: part(5).to_string(),
                language: part(6).to_string(),
                consented: match part(7) {
                    "" | "no" => false,
                    "yes" => true,
                    other => {
                        return Err(format!(
                            "emergency contact `{entry}`: consent `{other}` is not yes or no"
                        ));
                    }
                },
                ..Default::default()
            })
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
            crate::domain::routing::check_shift(&shift)?;
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

/// Reads the file row by row, turning each into a checked [`Row`] or the
/// reason it is refused (by line; the header is line 1). With `seen`, an id
/// met twice is refused.
fn read_rows(
    dir: &crate::store::Store,
    kind: ImportKind,
    source: impl std::io::Read,
    mut seen: Option<&mut HashSet<String>>,
    mut each: impl FnMut(u64, Result<Row, String>),
) {
    let now = anxin_proto::now_ms();
    // Pass one (which tracks the ids seen) only checks: a password is
    // sealed (a KDF, ~0.1 ms) once, in pass two, where it is kept.
    let sealing = seen.is_none();
    let mut communities: std::collections::HashMap<String, Result<(), String>> = Default::default();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(source);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(err) => {
            each(1, Err(format!("unreadable header: {err}")));
            return;
        }
    };
    let missing: Vec<&str> = kind
        .columns()
        .iter()
        .filter(|c| !headers.iter().any(|h| h == **c))
        .copied()
        .collect();
    if !missing.is_empty() {
        each(
            1,
            Err(format!("header lacks column(s): {}", missing.join(", "))),
        );
        return;
    }
    let index = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .expect("checked above")
    };
    let mut records = reader.records();
    loop {
        // A block of rows at a time, so the records they name are read in
        // one statement each, not one per row (PostgreSQL: 134 s per
        // 100,000 device rows when each row read its device and resident).
        let block: Vec<_> = records.by_ref().take(LOOKUP_BLOCK).collect();
        if block.is_empty() {
            break;
        }
        let known = match Known::prefetch(dir, kind, &headers, &block) {
            Ok(known) => known,
            Err(err) => {
                // Without what the store holds, a device row that gives no
                // password would lose its stored credential: the rows are
                // refused, and with them the import (all or nothing).
                for record in block {
                    let line = match &record {
                        Ok(row) => row.position().map_or(0, |p| p.line()),
                        Err(err) => err.position().map_or(0, |p| p.line()),
                    };
                    each(
                        line,
                        Err(format!(
                            "the store could not be read to check this row ({err}); nothing \
                             was imported: try again"
                        )),
                    );
                }
                continue;
            }
        };
        for record in block {
            let (line, row) = match record {
                Ok(row) => (row.position().map_or(0, |p| p.line()), row),
                Err(err) => {
                    let line = err.position().map_or(0, |p| p.line());
                    each(line, Err(format!("unreadable row: {err}")));
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
            let checked: Result<Row, String> = (|| {
                let id = get("id");
                if let Some(seen) = seen.as_deref_mut()
                    && !seen.insert(id.clone())
                {
                    return Err(format!("id `{id}` appears twice in the file"));
                }
                match kind {
                    ImportKind::Residents => {
                        let start = optional("checkin_start");
                        let end = optional("checkin_end");
                        // The stored window's start day is kept (read only
                        // for rows that give a window).
                        let before = if start.is_empty() && end.is_empty() {
                            None
                        } else {
                            known.residents.get(&id).and_then(|r| r.checkin.clone())
                        };
                        let mut resident = Resident {
                            name: get("name"),
                            community_id: get("community_id"),
                            address: get("address"),
                            phone: get("phone"),
                            medical_notes: get("medical_notes"),
                            emergency_contacts: contacts(&get("emergency_contacts"))?,
                            access_notes: get("access_notes"),
                            callout: optional("callout"),
                            birth_date: optional("birth_date"),
                            sex: optional("sex"),
                            conditions: optional("conditions")
                                .split('+')
                                .map(str::trim)
                                .filter(|c| !c.is_empty())
                                .map(String::from)
                                .collect(),
                            vital_limits: Vec::new(),
                            safe_zones: Vec::new(),
                            meter_rules: Vec::new(),
                            checkin: crate::domain::welfare::enrol(
                                Some(CheckinWindow {
                                    start,
                                    end,
                                    since_ms: 0,
                                }),
                                before.as_ref(),
                                now,
                            ),
                            id,
                        };
                        let stored = known.residents.get(&resident.id);
                        if let Some(stored) = stored {
                            resident.vital_limits = stored.vital_limits.clone();
                            resident.safe_zones = stored.safe_zones.clone();
                            resident.meter_rules = stored.meter_rules.clone();
                        }
                        directory::check_resident_record(&resident)?;
                        crate::domain::family::check_resident(
                            &mut resident,
                            stored,
                            "import",
                            now,
                        )?;
                        // A city's file names a few thousand communities for a
                        // million rows: each is looked up once.
                        communities
                            .entry(resident.community_id.clone())
                            .or_insert_with(|| {
                                directory::check_community(dir, &resident.community_id)
                            })
                            .clone()?;
                        Ok(Row::Resident(Box::new(resident)))
                    }
                    ImportKind::Devices => {
                        // A row without a password keeps the stored credential,
                        // and an import never re-activates a deactivated device.
                        directory::check_device_password(&get("password"))?;
                        let existing = known.devices.get(&id);
                        let device = DeviceRecord {
                            kind: get("kind"),
                            resident_id: get("resident_id"),
                            gateway_id: get("gateway_id"),
                            credential: match get("password") {
                                p if p.is_empty() => existing
                                    .as_ref()
                                    .map(|d| crate::desks::credentials::stored_credential(d))
                                    .unwrap_or_default(),
                                _ if !sealing => String::new(),
                                p => anxin_credentials::seal(&p),
                            },
                            deactivated: existing.is_some_and(|d| d.deactivated),
                            id,
                            ..Default::default()
                        };
                        directory::check_device(&device, |r| known.residents.contains_key(r))?;
                        Ok(Row::Device(device))
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
                        Ok(Row::Staff(staff))
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
                        crate::domain::welfare::check_plan(&plan)?;
                        if !plan.carer_id.is_empty()
                            && dir.staff_member(&plan.carer_id).ok().flatten().is_none()
                        {
                            return Err(format!("no staff member `{}`", plan.carer_id));
                        }
                        Ok(Row::Plan(plan))
                    }
                }
            })();
            each(line, checked);
        }
    }
}

/// Rows read ahead of checking them.
const LOOKUP_BLOCK: usize = 1000;

/// The stored records a block of rows names: residents (for a device's
/// owner, or a resident's stored check-in window) and devices (a stored
/// credential). A name missing here does not exist in the store.
#[derive(Default)]
struct Known {
    residents: std::collections::HashMap<String, Resident>,
    devices: std::collections::HashMap<String, DeviceRecord>,
}

impl Known {
    fn prefetch(
        dir: &crate::store::Store,
        kind: ImportKind,
        headers: &csv::StringRecord,
        block: &[Result<csv::StringRecord, csv::Error>],
    ) -> Result<Self, crate::store::StoreError> {
        let column = |name: &str| headers.iter().position(|h| h == name);
        let values = |name: &str, only_if: &dyn Fn(&csv::StringRecord) -> bool| -> Vec<String> {
            let Some(i) = column(name) else {
                return Vec::new();
            };
            block
                .iter()
                .flatten()
                .filter(|row| only_if(row))
                .filter_map(|row| row.get(i))
                .filter(|v| !v.is_empty())
                .map(String::from)
                .collect()
        };
        let mut known = Known::default();
        let residents = |ids: Vec<String>| -> Result<_, crate::store::StoreError> {
            Ok(dir
                .residents_by_id(&ids)?
                .into_iter()
                .map(|r| (r.id.clone(), r))
                .collect())
        };
        match kind {
            ImportKind::Residents => {
                // Every row reads the stored record: what a CSV does not
                // carry (the check-in's start day, contacts' consent, the
                // limits, zones and meter rules drawn in the console) is
                // kept, not wiped by a re-import.
                known.residents = residents(values("id", &|_| true))?;
            }
            ImportKind::Devices => {
                known.residents = residents(values("resident_id", &|_| true))?;
                known.devices = dir
                    .devices_by_id(&values("id", &|_| true))?
                    .into_iter()
                    .map(|d| (d.id.clone(), d))
                    .collect();
            }
            ImportKind::Staff | ImportKind::VisitPlans => {}
        }
        Ok(known)
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

    #[test]
    fn contacts_carry_the_call_out_fields_as_rest_does() {
        let c = contacts(
            "Wang Fang|daughter|13800000000|sms+view|1|22:00-07:00|en|yes;Li Ming|son|+447700900123",
        )
        .unwrap();
        assert_eq!(c[0].channels, ["sms", "view"]);
        assert_eq!(
            (
                c[0].order,
                c[0].quiet_hours.as_str(),
                c[0].language.as_str()
            ),
            (1, "22:00-07:00", "en")
        );
        assert!(c[0].consented);
        assert!(c[1].channels.is_empty() && !c[1].consented);
        let err = contacts("Wang Fang|daughter|13800000000|sms|first").unwrap_err();
        assert!(err.contains("order `first`"), "{err}");
        let err = contacts("Wang Fang|daughter|13800000000|sms|1||zh-CN|maybe").unwrap_err();
        assert!(err.contains("consent `maybe`"), "{err}");
    }
}
