//! The directory: places, residents, devices, gateways, staff and API tokens.
//!
//! Storage sits behind the [`Directory`] trait, shaped by what the domain asks
//! (not by sled), so a PostgreSQL backend can implement it next to the sled
//! one. Validation ([`check_place`], [`check_resident`], …) is separate from
//! storage and shared by the admin APIs and the CSV import.

use crate::{
    domain::listing::{ListQuery, Page},
    store::StoreError,
};
use anxin_proto::v1::{
    AuditEntry, DeviceRecord, GatewayRecord, Place, PlaceLevel, Resident, Staff, StaffRole,
};

/// Who a token belongs to. Only its SHA-256 digest is stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenRecord {
    /// "staff" or "gateway".
    #[prost(string, tag = "1")]
    pub subject_kind: String,
    #[prost(string, tag = "2")]
    pub subject_id: String,
    #[prost(int64, tag = "3")]
    pub issued_ms: i64,
    /// Refused from this instant on; 0: never expires.
    #[prost(int64, tag = "4")]
    pub expires_ms: i64,
    /// Refused since this instant; 0: not revoked.
    #[prost(int64, tag = "5")]
    pub revoked_ms: i64,
    /// Last accepted (written at most once a minute).
    #[prost(int64, tag = "6")]
    pub last_used_ms: i64,
    /// A console session (short-lived, made from a person's token).
    #[prost(bool, tag = "7")]
    pub session: bool,
}

impl TokenRecord {
    /// Why this token is refused at `now_ms`, if it is.
    pub fn refusal(&self, now_ms: i64) -> Option<&'static str> {
        if self.revoked_ms > 0 {
            Some("the API token was revoked")
        } else if self.expires_ms > 0 && now_ms >= self.expires_ms {
            Some("the API token has expired")
        } else {
            None
        }
    }
}

/// The public name of a token: the start of its digest, enough to list and
/// revoke it by, useless to sign in with.
pub fn token_id(token_sha256: &str) -> String {
    token_sha256.chars().take(16).collect()
}

/// Directory records written together (one record, or one chunk of an
/// import, kept as protobuf while an import is staged).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DirectoryBatch {
    #[prost(message, repeated, tag = "1")]
    pub residents: Vec<Resident>,
    #[prost(message, repeated, tag = "2")]
    pub devices: Vec<DeviceRecord>,
    #[prost(message, repeated, tag = "3")]
    pub staff: Vec<Staff>,
}

pub trait Directory {
    fn put_place(&self, place: &Place, audit: AuditEntry) -> Result<(), StoreError>;
    fn place(&self, id: &str) -> Result<Option<Place>, StoreError>;
    fn places(&self) -> Result<Vec<Place>, StoreError>;
    /// The places of `ids` that exist, in one read where the engine can.
    fn places_by_id(&self, ids: &[String]) -> Result<Vec<Place>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.place(id)?);
        }
        Ok(out)
    }
    fn resident(&self, id: &str) -> Result<Option<Resident>, StoreError>;
    fn residents(&self) -> Result<Vec<Resident>, StoreError>;
    /// The residents of `ids` that exist, in one read where the engine can
    /// (an import checks a thousand rows at a time).
    fn residents_by_id(&self, ids: &[String]) -> Result<Vec<Resident>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.resident(id)?);
        }
        Ok(out)
    }
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError>;
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;
    /// The devices of `ids` that exist, in one read where the engine can.
    fn devices_by_id(&self, ids: &[String]) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.device(id)?);
        }
        Ok(out)
    }
    fn put_gateway(
        &self,
        gateway: &GatewayRecord,
        token_sha256: &str,
        audit: AuditEntry,
    ) -> Result<(), StoreError>;
    fn gateway(&self, id: &str) -> Result<Option<GatewayRecord>, StoreError>;
    fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError>;
    fn staff_member(&self, id: &str) -> Result<Option<Staff>, StoreError>;
    fn staff(&self) -> Result<Vec<Staff>, StoreError>;
    /// Residents, devices and staff (one record or a whole import) with
    /// their audit entry, in one transaction.
    fn put_batch(&self, batch: &DirectoryBatch, audit: AuditEntry) -> Result<(), StoreError>;
    /// A large import, read chunk by chunk (see [`crate::desks::import`]): all of
    /// `expected` rows are written, with `audit`, or none (a count that is
    /// not `expected` — the file changed — writes nothing).
    /// `progress` hears how many rows are written so far.
    fn put_import(
        &self,
        chunks: &mut dyn Iterator<Item = DirectoryBatch>,
        expected: u64,
        audit: AuditEntry,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError>;
    /// Residents with a check-in window, through an index.
    fn enrolled_residents(&self) -> Result<Vec<Resident>, StoreError>;
    /// Pages of the directory, in index order; [`crate::domain::listing`] has the
    /// contract both engines keep.
    fn residents_page(&self, query: &ListQuery) -> Result<Page<Resident>, StoreError>;
    fn devices_page(&self, query: &ListQuery) -> Result<Page<DeviceRecord>, StoreError>;
    /// Runs `work` while no other replica runs work of the same `name`:
    /// on PostgreSQL under a session advisory lock (replicas starting
    /// together do a one-off job one after the other, the second finding
    /// it done); one process holds a sled store, so there it just runs.
    fn exclusively(
        &self,
        name: &str,
        work: &mut dyn FnMut() -> Result<usize, StoreError>,
    ) -> Result<usize, StoreError> {
        let _ = name;
        work()
    }
    fn staff_page(&self, query: &ListQuery) -> Result<Page<Staff>, StoreError>;
    fn gateways_page(&self, query: &ListQuery) -> Result<Page<GatewayRecord>, StoreError>;
    fn places_page(&self, query: &ListQuery) -> Result<Page<Place>, StoreError>;
    fn put_token(
        &self,
        token_sha256: &str,
        record: &TokenRecord,
        audit: AuditEntry,
    ) -> Result<(), StoreError>;
    fn token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// The tokens of one person or gateway, with their digests.
    fn tokens_of(
        &self,
        subject_kind: &str,
        subject_id: &str,
    ) -> Result<Vec<(String, TokenRecord)>, StoreError>;
    /// Records a token's use (no audit entry: it is not a change of rights).
    fn touch_token(&self, token_sha256: &str, at_ms: i64) -> Result<(), StoreError>;
    /// Uses a single-use token of `subject_kind`: in one transaction,
    /// revokes it at `now_ms` and appends `audit`, only if it is of that
    /// kind and neither revoked nor expired.
    /// Returns the record as it was before (`None`: no such token); a
    /// caller that finds it already revoked or expired did not spend it —
    /// of two racing callers exactly one does.
    fn spend_token(
        &self,
        token_sha256: &str,
        subject_kind: &str,
        now_ms: i64,
        audit: AuditEntry,
    ) -> Result<Option<TokenRecord>, StoreError>;
}

// ---- validation, shared by the admin APIs and the CSV import ----

/// Device kinds a gateway knows how to supervise.
/// What devices the directory knows: household meters (water, electricity)
/// and door sensors report their totals for the household signals.
pub const DEVICE_KINDS: &[&str] = &[
    "call_button",
    "wearable",
    "room_sensor",
    "meter",
    "door_sensor",
];

fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{what} id is empty"));
    }
    if id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{what} id `{id}` must be 1-64 letters, digits, `-`, `_` or `.`"
        ));
    }
    Ok(())
}

pub fn check_place(place: &Place, parent: Option<&Place>) -> Result<(), String> {
    check_id("place", &place.id)?;
    if place.name.trim().is_empty() {
        return Err("place name is empty".into());
    }
    if !place.callout.is_empty()
        && !crate::domain::family::POLICIES.contains(&place.callout.as_str())
    {
        return Err(format!(
            "place callout `{}` is not one of {}",
            place.callout,
            crate::domain::family::POLICIES.join(", ")
        ));
    }
    crate::domain::vitals::check_limits(&place.vital_limits)?;
    let level = place.level();
    if level == PlaceLevel::Unspecified {
        return Err("place level must be city, district, street or community".into());
    }
    match (level, parent) {
        (PlaceLevel::City, None) if place.parent_id.is_empty() => Ok(()),
        (PlaceLevel::City, _) => Err("a city has no parent".into()),
        (_, None) => Err(format!("parent place `{}` does not exist", place.parent_id)),
        (_, Some(parent)) if parent.level + 1 != level as i32 => Err(format!(
            "a {} belongs to a {}, but `{}` is a {}",
            level_name(level),
            level_name(PlaceLevel::try_from(level as i32 - 1).unwrap_or_default()),
            parent.id,
            level_name(parent.level())
        )),
        _ => Ok(()),
    }
}

pub fn level_name(level: PlaceLevel) -> &'static str {
    match level {
        PlaceLevel::Unspecified => "unspecified",
        PlaceLevel::City => "city",
        PlaceLevel::District => "district",
        PlaceLevel::Street => "street",
        PlaceLevel::Community => "community",
    }
}

pub fn check_community(dir: &impl Directory, id: &str) -> Result<(), String> {
    match dir.place(id).map_err(|e| e.to_string())? {
        Some(place) if place.level() == PlaceLevel::Community => Ok(()),
        Some(place) => Err(format!(
            "`{id}` is a {}, not a community",
            level_name(place.level())
        )),
        None => Err(format!("community `{id}` does not exist")),
    }
}

pub fn check_resident(dir: &impl Directory, resident: &Resident) -> Result<(), String> {
    check_resident_record(resident)?;
    check_community(dir, &resident.community_id)
}

/// A resident's own fields (not whether the community exists).
pub fn check_resident_record(resident: &Resident) -> Result<(), String> {
    check_id("resident", &resident.id)?;
    if resident.name.trim().is_empty() {
        return Err("resident name is empty".into());
    }
    if resident.address.trim().is_empty() {
        return Err("resident address is empty".into());
    }
    crate::domain::welfare::check_window(resident.checkin.as_ref())?;
    crate::domain::vitals::check_conditions(&resident.conditions)?;
    crate::domain::vitals::check_limits(&resident.vital_limits)?;
    crate::domain::zones::check_zones(&resident.safe_zones)?;
    crate::domain::meters::check_rules(&resident.meter_rules)
}

/// Shortest device password accepted: a device's password is a machine
/// secret, stored (here and at the gateway) only as one SHA-256, so it must
/// be long enough that guessing it is hopeless.
pub const MIN_DEVICE_PASSWORD: usize = 16;

/// A device password given in a request or an import row (empty: none
/// given, the stored credential is kept).
pub fn check_device_password(password: &str) -> Result<(), String> {
    if !password.is_empty() && password.chars().count() < MIN_DEVICE_PASSWORD {
        return Err(format!(
            "device password must be at least {MIN_DEVICE_PASSWORD} characters (a generated secret, e.g. `openssl rand -hex 16`)"
        ));
    }
    Ok(())
}

/// `known_resident` answers for residents in the same batch as well as the
/// store.
pub fn check_device(
    device: &DeviceRecord,
    known_resident: impl Fn(&str) -> bool,
) -> Result<(), String> {
    check_id("device", &device.id)?;
    if !DEVICE_KINDS.contains(&device.kind.as_str()) {
        return Err(format!(
            "device kind `{}` is not one of {}",
            device.kind,
            DEVICE_KINDS.join(", ")
        ));
    }
    if device.resident_id.is_empty() {
        return Err("device has no resident_id".into());
    }
    if !known_resident(&device.resident_id) {
        return Err(format!("resident `{}` does not exist", device.resident_id));
    }
    if !device.gateway_id.is_empty() {
        check_id("gateway", &device.gateway_id)?;
    }
    Ok(())
}

pub fn check_staff(dir: &impl Directory, staff: &Staff) -> Result<(), String> {
    check_id("staff", &staff.id)?;
    if staff.name.trim().is_empty() {
        return Err("staff name is empty".into());
    }
    if staff.role() == StaffRole::Unspecified {
        return Err("staff role must be carer, nurse, dispatcher, supervisor or admin".into());
    }
    if staff.communities.is_empty() {
        return Err("staff serve no community (list ids, or `*` for all)".into());
    }
    for community in &staff.communities {
        if community != "*" {
            check_community(dir, community)?;
        }
    }
    for shift in &staff.shifts {
        crate::domain::routing::check_shift(shift)?;
    }
    let webhook = staff.contact.starts_with("http://") || staff.contact.starts_with("https://");
    if !staff.contact.is_empty() && !webhook {
        return Err(format!(
            "contact `{}` must be an http(s) webhook URL",
            staff.contact
        ));
    }
    Ok(())
}

pub fn role_name(role: StaffRole) -> &'static str {
    match role {
        StaffRole::Unspecified => "unspecified",
        StaffRole::Carer => "carer",
        StaffRole::Nurse => "nurse",
        StaffRole::Dispatcher => "dispatcher",
        StaffRole::Supervisor => "supervisor",
        StaffRole::Admin => "admin",
    }
}

pub fn parse_role(text: &str) -> Option<StaffRole> {
    [
        StaffRole::Carer,
        StaffRole::Nurse,
        StaffRole::Dispatcher,
        StaffRole::Supervisor,
        StaffRole::Admin,
    ]
    .into_iter()
    .find(|r| {
        // `carer` as in CSV, or `STAFF_ROLE_CARER` as in REST and gRPC.
        let text = text.trim().to_ascii_lowercase();
        role_name(*r) == text.strip_prefix("staff_role_").unwrap_or(&text)
    })
}

/// A place's name as people read it ("" if the directory has no such place).
pub fn place_name(dir: &impl Directory, id: &str) -> Result<String, StoreError> {
    Ok(dir.place(id)?.map(|p| p.name).unwrap_or_default())
}

/// Who an alert of `resident` is about, as people read it.
pub fn resident_origin(
    store: &impl Directory,
    resident: anxin_proto::v1::Resident,
    device_kind: String,
) -> Result<crate::domain::incidents::Origin, StoreError> {
    Ok(crate::domain::incidents::Origin {
        community_name: place_name(store, &resident.community_id)?,
        community_id: resident.community_id,
        resident_id: resident.id,
        resident_name: resident.name,
        address: resident.address,
        device_kind,
        position: None,
        track: Vec::new(),
    })
}

/// A resident without the sensitive fields, for lists.
pub fn redacted(resident: &Resident) -> Resident {
    Resident {
        medical_notes: String::new(),
        emergency_contacts: Vec::new(),
        access_notes: String::new(),
        birth_date: String::new(),
        sex: String::new(),
        ..resident.clone()
    }
}

/// A shared store is a directory (validation helpers take `&impl Directory`).
impl<T: Directory + ?Sized + Send + Sync> Directory for std::sync::Arc<T> {
    fn put_place(&self, place: &Place, audit: AuditEntry) -> Result<(), StoreError> {
        (**self).put_place(place, audit)
    }
    fn place(&self, id: &str) -> Result<Option<Place>, StoreError> {
        (**self).place(id)
    }
    fn places(&self) -> Result<Vec<Place>, StoreError> {
        (**self).places()
    }
    fn places_by_id(&self, ids: &[String]) -> Result<Vec<Place>, StoreError> {
        (**self).places_by_id(ids)
    }
    fn resident(&self, id: &str) -> Result<Option<Resident>, StoreError> {
        (**self).resident(id)
    }
    fn residents_by_id(&self, ids: &[String]) -> Result<Vec<Resident>, StoreError> {
        (**self).residents_by_id(ids)
    }
    fn devices_by_id(&self, ids: &[String]) -> Result<Vec<DeviceRecord>, StoreError> {
        (**self).devices_by_id(ids)
    }
    fn residents(&self) -> Result<Vec<Resident>, StoreError> {
        (**self).residents()
    }
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        (**self).device(id)
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        (**self).devices()
    }
    fn put_gateway(
        &self,
        gateway: &GatewayRecord,
        token_sha256: &str,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        (**self).put_gateway(gateway, token_sha256, audit)
    }
    fn gateway(&self, id: &str) -> Result<Option<GatewayRecord>, StoreError> {
        (**self).gateway(id)
    }
    fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        (**self).gateways()
    }
    fn staff_member(&self, id: &str) -> Result<Option<Staff>, StoreError> {
        (**self).staff_member(id)
    }
    fn staff(&self) -> Result<Vec<Staff>, StoreError> {
        (**self).staff()
    }
    fn put_batch(&self, batch: &DirectoryBatch, audit: AuditEntry) -> Result<(), StoreError> {
        (**self).put_batch(batch, audit)
    }
    fn put_import(
        &self,
        chunks: &mut dyn Iterator<Item = DirectoryBatch>,
        expected: u64,
        audit: AuditEntry,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        (**self).put_import(chunks, expected, audit, progress)
    }
    fn enrolled_residents(&self) -> Result<Vec<Resident>, StoreError> {
        (**self).enrolled_residents()
    }
    fn residents_page(&self, query: &ListQuery) -> Result<Page<Resident>, StoreError> {
        (**self).residents_page(query)
    }
    fn devices_page(&self, query: &ListQuery) -> Result<Page<DeviceRecord>, StoreError> {
        (**self).devices_page(query)
    }
    fn exclusively(
        &self,
        name: &str,
        work: &mut dyn FnMut() -> Result<usize, StoreError>,
    ) -> Result<usize, StoreError> {
        (**self).exclusively(name, work)
    }
    fn staff_page(&self, query: &ListQuery) -> Result<Page<Staff>, StoreError> {
        (**self).staff_page(query)
    }
    fn gateways_page(&self, query: &ListQuery) -> Result<Page<GatewayRecord>, StoreError> {
        (**self).gateways_page(query)
    }
    fn places_page(&self, query: &ListQuery) -> Result<Page<Place>, StoreError> {
        (**self).places_page(query)
    }
    fn put_token(
        &self,
        token_sha256: &str,
        record: &TokenRecord,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        (**self).put_token(token_sha256, record, audit)
    }
    fn token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        (**self).token(token_sha256)
    }
    fn tokens_of(
        &self,
        subject_kind: &str,
        subject_id: &str,
    ) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        (**self).tokens_of(subject_kind, subject_id)
    }
    fn touch_token(&self, token_sha256: &str, at_ms: i64) -> Result<(), StoreError> {
        (**self).touch_token(token_sha256, at_ms)
    }
    fn spend_token(
        &self,
        token_sha256: &str,
        subject_kind: &str,
        now_ms: i64,
        audit: AuditEntry,
    ) -> Result<Option<TokenRecord>, StoreError> {
        (**self).spend_token(token_sha256, subject_kind, now_ms, audit)
    }
}
