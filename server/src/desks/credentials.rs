//! Device credentials as the directory keeps them: sealed
//! (`anxin-credentials`, PBKDF2 over the password's SHA-256, salted per
//! device), never the password, never a bare digest, never shown.
//!
//! A write may give a password, a legacy digest or a sealed credential;
//! each is stored sealed. Records an earlier version wrote with a bare
//! digest are sealed where they lie when a server starts
//! ([`seal_legacy`]): the digest is the KDF's input, so no device has to
//! log in for its record to be upgraded, and its gateway sees the same
//! credential (no connection is ended for it).

use anxin_proto::{now_ms, v1::AuditEntry, v1::DeviceRecord};

use crate::{
    desks::gateways::ConnectedGateways,
    domain::listing::{ListQuery, MAX_LIMIT},
    store::{
        Store, StoreError,
        directory::{Directory, DirectoryBatch},
    },
};

/// Seals what a device write gives — a password, else a legacy digest,
/// else a sealed credential — into `credential`; with none of them the
/// stored record's credential is kept. Returns whether the device was
/// given a new credential. Costs one derivation when something is given.
pub fn seal_given(
    device: &mut DeviceRecord,
    existing: Option<&DeviceRecord>,
) -> Result<bool, String> {
    let given = if !device.password.is_empty() {
        Some(anxin_credentials::seal(&device.password))
    } else if !device.password_sha256.is_empty() {
        if !anxin_credentials::is_legacy_digest(&device.password_sha256) {
            return Err("password_sha256 must be 64 hex digits".into());
        }
        Some(anxin_credentials::seal_digest(&device.password_sha256))
    } else if !device.credential.is_empty() {
        if !anxin_credentials::is_sealed(&device.credential) {
            return Err("credential must be a sealed credential ($pbkdf2-sha256$…)".into());
        }
        anxin_credentials::check_stored(&device.credential)
            .map_err(|why| format!("credential {why}"))?;
        Some(device.credential.clone())
    } else {
        None
    };
    device.password.clear();
    device.password_sha256.clear();
    let rekeyed = given.is_some();
    device.credential = match given {
        Some(sealed) => sealed,
        None => existing.map(stored_credential).unwrap_or_default(),
    };
    Ok(rekeyed)
}

/// A stored record's credential, sealed (a legacy record's digest sealed
/// now).
pub fn stored_credential(device: &DeviceRecord) -> String {
    if !device.credential.is_empty() {
        device.credential.clone()
    } else if anxin_credentials::is_legacy_digest(&device.password_sha256) {
        anxin_credentials::seal_digest(&device.password_sha256)
    } else {
        String::new()
    }
}

/// A record as the API shows it: no credential of any form.
pub fn redacted(mut device: DeviceRecord) -> DeviceRecord {
    device.password.clear();
    device.password_sha256.clear();
    device.credential.clear();
    device
}

/// Devices sealed per directory write while upgrading.
const SEAL_BLOCK: usize = 1_000;

/// Seals every record that still holds a bare digest (written by an
/// earlier version), a block at a time, each block audited, and tells
/// their gateways. Returns how many were sealed. Run once at start, on
/// the blocking pool: about a tenth of a millisecond per device. Replicas
/// starting together take turns ([`Directory::exclusively`]): a second
/// sealing of the same digest, under another salt, would reach the
/// gateways as a new credential and end the devices' connections.
pub fn seal_legacy(store: &Store, gateways: &ConnectedGateways) -> Result<usize, StoreError> {
    store.exclusively("anxin.devices.seal_legacy", &mut || {
        seal_legacy_here(store, gateways)
    })
}

fn seal_legacy_here(store: &Store, gateways: &ConnectedGateways) -> Result<usize, StoreError> {
    let mut query = ListQuery {
        limit: MAX_LIMIT,
        ..Default::default()
    };
    let mut sealed = 0;
    let mut block = Vec::new();
    loop {
        let page = store.devices_page(&query)?;
        block.extend(
            page.items
                .into_iter()
                .filter(|d| d.credential.is_empty() && !d.password_sha256.is_empty()),
        );
        let last = page.next.is_none();
        while block.len() >= SEAL_BLOCK || (last && !block.is_empty()) {
            let take = block.len().min(SEAL_BLOCK);
            let devices: Vec<DeviceRecord> = block
                .drain(..take)
                .map(|mut d| {
                    d.credential = stored_credential(&d);
                    d.password_sha256.clear();
                    d
                })
                .collect();
            let audit = AuditEntry {
                at_ms: now_ms(),
                actor: "server".into(),
                action: "device.credentials_sealed".into(),
                target: "directory".into(),
                detail: format!(
                    "{} legacy password digests sealed (PBKDF2-HMAC-SHA256, {} iterations)",
                    devices.len(),
                    anxin_credentials::ITERATIONS
                ),
                ..Default::default()
            };
            store.put_batch(
                &DirectoryBatch {
                    devices: devices.clone(),
                    ..Default::default()
                },
                audit,
            )?;
            gateways.roster_changed(devices.iter().map(|d| d.gateway_id.as_str()));
            sealed += devices.len();
            tracing::info!(sealed, "sealing legacy device password digests");
        }
        match page.next {
            Some(next) => query.after = next,
            None => return Ok(sealed),
        }
    }
}
