//! The admin desk: directory changes, CSV import, audit queries and
//! reports, with the caller's rights checked, shared by REST and gRPC.

use anxin_proto::{
    now_ms,
    v1::{
        AuditEntry, AuditQuery, DeviceRecord, GatewayRecord, ImportReport, Place, Report, Resident,
        Staff,
    },
};

use std::sync::Arc;

use crate::{
    desks::alerts::DeskError,
    desks::audit::{entry, guard},
    desks::credentials,
    desks::gateways::ConnectedGateways,
    desks::import::{self, ImportKind},
    domain::listing::{ListQuery, Page},
    domain::reports,
    domain::rights::{self, Need, Principal},
    store::Store,
    store::directory::{self, Directory, DirectoryBatch},
};

pub use super::tokens::{IssuedToken, TokenDesk, TokenInfo, TokenPolicy};

#[derive(Clone)]
pub struct AdminDesk {
    store: Store,
    ack_target_ms: i64,
    /// Told when a gateway's devices change, so it gets its roster again.
    gateways: Arc<ConnectedGateways>,
    /// Staff contact webhooks must be on these hosts (`None`: not checked
    /// here; the deliverer still refuses any other host).
    webhook_hosts: Option<crate::domain::notification::WebhookHosts>,
    tokens: TokenDesk,
    /// The server's local time (`routing.utc_offset_minutes`): report days.
    utc_offset_minutes: i32,
}

/// What a resident write changed of the health and safety rules, for its
/// audit entry ("" when nothing): a rule change is read back in the log.
fn signal_changes(before: Option<&Resident>, after: &Resident) -> String {
    let empty = Resident::default();
    let before = before.unwrap_or(&empty);
    let mut changed = Vec::new();
    if before.conditions != after.conditions {
        changed.push(format!("conditions: {}", after.conditions.join("+")));
    }
    if before.vital_limits != after.vital_limits {
        let signs: Vec<&str> = after.vital_limits.iter().map(|l| l.sign.as_str()).collect();
        changed.push(format!("vital limits: {}", signs.join(", ")));
    }
    if before.safe_zones != after.safe_zones {
        let zones: Vec<&str> = after.safe_zones.iter().map(|z| z.name.as_str()).collect();
        changed.push(format!("safe zones: {}", zones.join(", ")));
    }
    if before.meter_rules != after.meter_rules {
        let meters: Vec<&str> = after.meter_rules.iter().map(|m| m.kind.as_str()).collect();
        changed.push(format!("meter rules: {}", meters.join(", ")));
    }
    if changed.is_empty() {
        String::new()
    } else {
        format!("signals changed — {}", changed.join("; "))
    }
}

/// Where an import's CSV comes from. It is read twice (checked, then
/// written), so a request body is first spooled to a file.
pub enum ImportSource {
    Text(String),
    File(std::path::PathBuf),
}

impl ImportSource {
    fn open(&self) -> Result<Box<dyn std::io::Read + Send>, DeskError> {
        Ok(match self {
            ImportSource::Text(text) => Box::new(std::io::Cursor::new(text.clone().into_bytes())),
            ImportSource::File(path) => Box::new(std::io::BufReader::new(
                std::fs::File::open(path)
                    .map_err(|e| bad(format!("reading {}: {e}", path.display())))?,
            )),
        })
    }
}

fn bad(text: String) -> DeskError {
    DeskError::BadRequest(text)
}

impl AdminDesk {
    pub fn new(store: Store, ack_target_ms: i64, gateways: Arc<ConnectedGateways>) -> Self {
        Self {
            tokens: TokenDesk::new(store.clone(), gateways.clone(), TokenPolicy::default()),
            store,
            ack_target_ms,
            gateways,
            webhook_hosts: None,
            utc_offset_minutes: 0,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How long tokens live (`auth.*` in the config).
    pub fn with_token_policy(mut self, policy: TokenPolicy) -> Self {
        self.tokens = TokenDesk::new(self.store.clone(), self.gateways.clone(), policy);
        self
    }

    /// Tokens and sessions, for staff and gateways.
    pub fn tokens(&self) -> &TokenDesk {
        &self.tokens
    }

    pub fn with_utc_offset(mut self, minutes: i32) -> Self {
        self.utc_offset_minutes = minutes;
        self
    }

    /// Refuses staff contacts outside `hosts` when they are written, so the
    /// administrator hears of it then, not when an offer fails.
    pub fn with_webhook_hosts(mut self, hosts: crate::domain::notification::WebhookHosts) -> Self {
        self.webhook_hosts = Some(hosts);
        self
    }

    pub fn put_place(&self, caller: &Principal, place: Place) -> Result<Place, DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        let parent = match place.parent_id.as_str() {
            "" => None,
            id => self.store.place(id)?,
        };
        directory::check_place(&place, parent.as_ref()).map_err(bad)?;
        let mut detail = format!("{} `{}`", directory::level_name(place.level()), place.name);
        let before = self.store.place(&place.id)?.map(|p| p.vital_limits);
        if before.as_ref().unwrap_or(&Vec::new()) != &place.vital_limits {
            let signs: Vec<&str> = place.vital_limits.iter().map(|l| l.sign.as_str()).collect();
            detail.push_str(&format!("; vital limits changed: {}", signs.join(", ")));
        }
        self.store.put_place(
            &place,
            entry(
                caller,
                "place.put",
                format!("place/{}", place.id),
                &place.id,
                detail,
            ),
        )?;
        Ok(place)
    }

    pub fn places(&self, caller: &Principal, query: ListQuery) -> Result<Page<Place>, DeskError> {
        guard(&self.store, caller, Need::ViewAlerts, None, "directory")?;
        Ok(self.store.places_page(&query)?)
    }

    pub fn put_resident(
        &self,
        caller: &Principal,
        mut resident: Resident,
    ) -> Result<Resident, DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        let stored = self.store.resident(&resident.id)?;
        let before = stored.as_ref().and_then(|r| r.checkin.clone());
        resident.checkin =
            crate::domain::welfare::enrol(resident.checkin.take(), before.as_ref(), now_ms());
        directory::check_resident(&self.store, &resident).map_err(bad)?;
        crate::domain::family::check_resident(
            &mut resident,
            stored.as_ref(),
            &caller.name(),
            now_ms(),
        )
        .map_err(bad)?;
        let audit = entry(
            caller,
            "resident.put",
            format!("resident/{}", resident.id),
            &resident.community_id,
            signal_changes(stored.as_ref(), &resident),
        );
        self.store.put_batch(
            &DirectoryBatch {
                residents: vec![resident.clone()],
                ..Default::default()
            },
            audit,
        )?;
        self.gateways.directory_changed();
        Ok(resident)
    }

    /// The whole record, sensitive fields included. The read is audited
    /// (and flushed) before the record is returned.
    pub async fn resident(&self, caller: &Principal, id: &str) -> Result<Resident, DeskError> {
        let resident = self
            .store
            .resident(id)?
            .ok_or_else(|| crate::store::StoreError::NotFound(format!("no resident {id}")))?;
        guard(
            &self.store,
            caller,
            Need::ReadResidents,
            Some(&resident.community_id),
            &format!("resident/{id}"),
        )?;
        self.store.append(entry(
            caller,
            "resident.read",
            format!("resident/{id}"),
            &resident.community_id,
            "medical notes, emergency contacts, access notes".into(),
        ))?;
        self.store.flush().await?;
        Ok(resident)
    }

    /// A page of the residents the caller serves, without the sensitive
    /// fields.
    pub fn residents(
        &self,
        caller: &Principal,
        mut query: ListQuery,
    ) -> Result<Page<Resident>, DeskError> {
        guard(&self.store, caller, Need::ViewAlerts, None, "directory")?;
        query.scope = caller.scope();
        Ok(self
            .store
            .residents_page(&query)?
            .map(|r| directory::redacted(&r)))
    }

    pub fn put_device(
        &self,
        caller: &Principal,
        mut device: DeviceRecord,
    ) -> Result<DeviceRecord, DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        directory::check_device_password(&device.password).map_err(bad)?;
        let existing = self.store.device(&device.id)?;
        let rekeyed = credentials::seal_given(&mut device, existing.as_ref()).map_err(bad)?;
        directory::check_device(&device, |r| self.store.resident(r).ok().flatten().is_some())
            .map_err(bad)?;
        let mut detail = format!("{} of {}", device.kind, device.resident_id);
        if rekeyed {
            detail.push_str(", new credential");
        }
        if device.deactivated {
            detail.push_str(", deactivated");
        }
        let audit = entry(
            caller,
            "device.put",
            format!("device/{}", device.id),
            "",
            detail,
        );
        self.store.put_batch(
            &DirectoryBatch {
                devices: vec![device.clone()],
                ..Default::default()
            },
            audit,
        )?;
        let old_gateway = existing.map(|d| d.gateway_id).unwrap_or_default();
        self.gateways
            .roster_changed([device.gateway_id.as_str(), old_gateway.as_str()]);
        Ok(credentials::redacted(device))
    }

    /// A page of devices. Administrators list any; staff who may read a
    /// resident list that resident's devices (`resident` filter), without
    /// their credentials.
    pub fn devices(
        &self,
        caller: &Principal,
        query: ListQuery,
    ) -> Result<Page<DeviceRecord>, DeskError> {
        if caller.allows(Need::Administer) {
            guard(&self.store, caller, Need::Administer, None, "directory")?;
            return Ok(self.store.devices_page(&query)?);
        }
        let community = match self.store.resident(&query.resident)? {
            Some(r) if !query.resident.is_empty() => r.community_id,
            _ => String::new(),
        };
        let target = format!("resident/{}", query.resident);
        guard(
            &self.store,
            caller,
            Need::ReadResidents,
            Some(&community),
            &target,
        )?;
        let query = ListQuery {
            gateway: String::new(),
            ..query
        };
        Ok(self.store.devices_page(&query)?.map(credentials::redacted))
    }

    /// Creates or updates a gateway; with a token (given or made here) its
    /// digest is stored and the token returned once.
    pub fn put_gateway(
        &self,
        caller: &Principal,
        gateway: GatewayRecord,
        token: &str,
    ) -> Result<(GatewayRecord, String), DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        if gateway.id.is_empty() {
            return Err(bad("gateway id is empty".into()));
        }
        if !gateway.community_id.is_empty() {
            directory::check_community(&self.store, &gateway.community_id).map_err(bad)?;
        }
        let exists = self.store.gateway(&gateway.id)?.is_some();
        // The token to write, if any: a new gateway gets one (chosen or
        // made); an existing one keeps its tokens unless one is named
        // (rotation is POST /api/v1/gateways/{id}/tokens).
        let token = match token {
            "" if exists => None,
            "" => Some(rights::new_token()),
            t if t.len() < 16 => {
                return Err(bad("a gateway token needs at least 16 characters".into()));
            }
            t => match self.store.token(&rights::digest(t))? {
                // Named again (a provisioning script run twice): as it is,
                // its expiry kept.
                Some(known)
                    if known.subject_kind == "gateway"
                        && known.subject_id == gateway.id
                        && known.revoked_ms == 0 =>
                {
                    None
                }
                Some(known) if known.revoked_ms > 0 => {
                    return Err(bad(
                        "this token was revoked and cannot be given again; choose a new one".into(),
                    ));
                }
                Some(_) => {
                    return Err(bad(
                        "this token belongs to someone else; choose a new one".into()
                    ));
                }
                None => Some(t.to_string()),
            },
        };
        let digest = token.as_deref().map(rights::digest).unwrap_or_default();
        let detail = match &token {
            Some(_) => format!("token {} issued", directory::token_id(&digest)),
            None => "record updated; tokens unchanged".to_string(),
        };
        self.store.put_gateway(
            &gateway,
            &digest,
            entry(
                caller,
                "gateway.put",
                format!("gateway/{}", gateway.id),
                &gateway.community_id,
                detail,
            ),
        )?;
        if token.is_some() {
            self.gateways.directory_changed();
        }
        Ok((gateway, token.unwrap_or_default()))
    }

    pub fn gateways(
        &self,
        caller: &Principal,
        query: ListQuery,
    ) -> Result<Page<GatewayRecord>, DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        Ok(self.store.gateways_page(&query)?)
    }

    /// A page of the gateways a dispatcher or carer may watch: those of
    /// communities they serve (gateways without a community: city-wide
    /// staff only).
    pub fn watched_gateways(
        &self,
        caller: &Principal,
        mut query: ListQuery,
    ) -> Result<Page<GatewayRecord>, DeskError> {
        guard(&self.store, caller, Need::ViewAlerts, None, "gateways")?;
        query.scope = caller.scope();
        Ok(self.store.gateways_page(&query)?)
    }

    pub fn put_staff(&self, caller: &Principal, staff: Staff) -> Result<Staff, DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        directory::check_staff(&self.store, &staff).map_err(bad)?;
        if let Some(hosts) = &self.webhook_hosts
            && !staff.contact.is_empty()
        {
            hosts
                .check(&staff.contact)
                .map_err(|why| bad(format!("contact: {why}")))?;
        }
        let detail = format!(
            "{} of {}{}",
            directory::role_name(staff.role()),
            staff.communities.join(","),
            if staff.active { "" } else { " (inactive)" }
        );
        self.store.put_batch(
            &DirectoryBatch {
                staff: vec![staff.clone()],
                ..Default::default()
            },
            entry(
                caller,
                "staff.put",
                format!("staff/{}", staff.id),
                "",
                detail,
            ),
        )?;
        Ok(staff)
    }

    /// A page of the staff who share a community with the caller (the
    /// staff board).
    pub fn staff(
        &self,
        caller: &Principal,
        mut query: ListQuery,
    ) -> Result<Page<Staff>, DeskError> {
        guard(&self.store, caller, Need::ViewAlerts, None, "directory")?;
        query.scope = caller.scope();
        Ok(self.store.staff_page(&query)?)
    }

    /// Refuses (and audits) a caller who may not import, before a file is
    /// received.
    pub fn may_import(&self, caller: &Principal) -> Result<(), DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        Ok(())
    }

    /// Imports a whole file or nothing: every row is checked first (the
    /// report lists bad rows by line), then the rows are written in chunks
    /// ([`Directory::put_import`]). Memory is bounded by a chunk, not by
    /// the file. `progress` hears both passes.
    pub async fn import(
        &self,
        caller: &Principal,
        kind: &str,
        source: ImportSource,
        mut progress: impl FnMut(import::Progress) + Send + 'static,
    ) -> Result<ImportReport, DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        let kind = ImportKind::parse(kind).ok_or_else(|| {
            bad(format!(
                "import kind `{kind}` is not residents, devices, staff or visit_plans"
            ))
        })?;
        let store = self.store.clone();
        let caller = caller.clone();
        let report = tokio::task::spawn_blocking(move || -> Result<ImportReport, DeskError> {
            let report = import::check(&store, kind, source.open()?, &mut progress);
            let name = kind.name();
            if !report.rejected.is_empty() {
                store.append(entry(
                    &caller,
                    &format!("import.{name}.rejected"),
                    format!("import/{name}"),
                    "",
                    format!(
                        "{} bad rows; nothing imported",
                        report.rejected.len() as u64 + report.more_rejected
                    ),
                ))?;
                return Ok(report);
            }
            let audit = entry(
                &caller,
                &format!("import.{name}"),
                format!("import/{name}"),
                "",
                format!("{} rows imported", report.imported),
            );
            if kind == ImportKind::VisitPlans {
                let mut plans = Vec::new();
                import::chunks(&store, kind, source.open()?, |_, mut p| {
                    plans.append(&mut p)
                });
                store.put_visit_plans(&plans, audit)?;
                return Ok(report);
            }
            // Read on one thread, written on this one, a few chunks apart.
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            let (reader, file) = (store.clone(), source.open()?);
            tokio::runtime::Handle::current().spawn_blocking(move || {
                import::chunks(&reader, kind, file, |batch, _| {
                    // A writer that gave up drops the receiver: the rest is
                    // read and let go.
                    let _ = tx.send(batch);
                })
            });
            store.put_import(&mut rx.into_iter(), report.imported, audit, &mut |rows| {
                progress(import::Progress {
                    phase: "writing",
                    rows,
                })
            })?;
            Ok(report)
        })
        .await
        .map_err(|e| DeskError::BadRequest(format!("import stopped: {e}")))??;
        if report.rejected.is_empty() {
            self.store.flush().await?;
            self.gateways.directory_changed();
            // A device file may move devices between any gateways: every
            // connected gateway rereads its roster (through its index).
            if kind == ImportKind::Devices {
                let connected = self.gateways.connected();
                self.gateways
                    .roster_changed(connected.iter().map(String::as_str));
            }
        }
        Ok(report)
    }

    /// Audit entries; a supervisor sees those of their communities.
    pub fn audit(
        &self,
        caller: &Principal,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>, DeskError> {
        guard(&self.store, caller, Need::Audit, None, "audit")?;
        Ok(self
            .store
            .query(query)?
            .into_iter()
            .filter(|e| matches!(caller, Principal::Admin) || caller.sees(&e.community_id))
            .collect())
    }

    /// Checks the audit chain: every entry's hash follows from the one
    /// before it (`anxin-server audit verify` does the same offline).
    pub fn verify_audit(&self, caller: &Principal) -> Result<crate::store::ChainReport, DeskError> {
        guard(&self.store, caller, Need::Administer, None, "audit")?;
        let entries = self.store.query(&AuditQuery::default())?;
        let anchor = self.store.audit_anchor()?;
        Ok(crate::store::verify_chain(anchor.as_ref(), entries))
    }

    pub fn report(
        &self,
        caller: &Principal,
        community: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Report, DeskError> {
        guard(
            &self.store,
            caller,
            Need::Reports,
            (!community.is_empty()).then_some(community),
            "reports",
        )?;
        if community.is_empty() && !caller.sees("") {
            return Err(crate::desks::auth::AuthError::Forbidden(format!(
                "{} must name a community they serve",
                caller.name()
            ))
            .into());
        }
        let alerts = self.store.alerts(&[])?;
        let mut report = reports::compute(&alerts, community, from_ms, to_ms, self.ack_target_ms);
        let now = now_ms();
        let offset = self.utc_offset_minutes;
        let first = crate::domain::calendar::local_day(from_ms, offset);
        let last =
            crate::domain::calendar::local_day(if to_ms == 0 { now } else { to_ms }, offset) + 1;
        reports::add_welfare(
            &mut report,
            &self.store.checkin_days(first, last)?,
            &self.store.visits(first, last)?,
            &alerts,
            offset,
            now,
        );
        if !community.is_empty() {
            report.community_name = directory::place_name(&self.store, community)?;
        }
        Ok(report)
    }
}
