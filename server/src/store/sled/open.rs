//! Opening a sled store: the format mark, the seal, indexes built for older
//! stores, a staged import finished, sled's damage panics turned into a
//! refusal; and the directory's batch write.

use std::path::Path;

use anxin_proto::v1::{Alert, AuditEntry, DeviceRecord, Resident, Staff};
use prost::Message;
use sled::Transactional;

use super::trees::*;
use super::{import, listing, partitions, retention, seal};
use crate::store::{OutboxItem, StoreError, decode};
use crate::{domain::lifecycle, store::directory::DirectoryBatch};

impl SledStore {
    /// Writes directory records with their indexes in one transaction, with
    /// the audit entry of the change, or as the staged import chunk at
    /// `staged` (removed in the same transaction).
    pub(super) fn write_batch(
        &self,
        batch: &DirectoryBatch,
        audit: Option<&AuditEntry>,
        staged: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let d = &self.directory;
        let trees = (
            &d.residents,
            &d.devices,
            &d.staff,
            &self.audit,
            &d.residents_by_community,
            &d.resident_terms,
            &d.devices_by_gateway,
            &d.devices_by_resident,
            &d.staff_by_community,
            &d.residents_enrolled,
            &self.import_staging,
        );
        trees.transaction(
            |(
                residents,
                devices,
                staff,
                log,
                by_community,
                terms,
                by_gateway,
                by_resident,
                staff_by,
                enrolled,
                staging,
            )| {
                let index = listing::IndexTx {
                    residents_by_community: by_community,
                    resident_terms: terms,
                    devices_by_gateway: by_gateway,
                    devices_by_resident: by_resident,
                    staff_by_community: staff_by,
                    residents_enrolled: enrolled,
                };
                for r in &batch.residents {
                    let old = residents.insert(r.id.as_bytes(), r.encode_to_vec())?;
                    let old: Option<Resident> = old.and_then(|b| Resident::decode(&*b).ok());
                    index.resident(old.as_ref(), r)?;
                }
                for dev in &batch.devices {
                    let old = devices.insert(dev.id.as_bytes(), dev.encode_to_vec())?;
                    let old: Option<DeviceRecord> =
                        old.and_then(|b| DeviceRecord::decode(&*b).ok());
                    index.device(old.as_ref(), dev)?;
                }
                for s in &batch.staff {
                    let old = staff.insert(s.id.as_bytes(), s.encode_to_vec())?;
                    let old: Option<Staff> = old.and_then(|b| Staff::decode(&*b).ok());
                    index.staff(old.as_ref(), s)?;
                }
                if let Some(key) = staged {
                    staging.remove(key)?;
                }
                match audit {
                    Some(audit) => append_audit(log, audit.clone()).map(|_| ()),
                    None => Ok(()),
                }
            },
        )?;
        Ok(())
    }

    /// `events` and every span of plain events: for a store no server runs
    /// on (spans are dropped only by a running server's retention).
    pub(crate) fn event_trees(&self) -> Vec<sled::Tree> {
        let mut trees = vec![self.events.clone()];
        self.partitions
            .with_spans(|spans| trees.extend(spans.iter().map(|s| s.tree.clone())));
        trees
    }

    /// Builds `open_alerts` for a store written before it existed.
    fn ensure_open_index(&self) -> Result<(), StoreError> {
        const KEY: &str = "open_alerts_index";
        if self.meta.get(KEY)?.is_some() {
            return Ok(());
        }
        self.open_alerts.clear()?;
        for item in self.alerts.iter() {
            let (key, bytes) = item?;
            let alert: Alert = decode("alert", &bytes)?;
            if lifecycle::is_open(alert.state()) {
                self.open_alerts.insert(key, &[])?;
            }
        }
        self.meta.insert(KEY, b"1")?;
        Ok(())
    }

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens the store; damage sled trips over while reading it (a panic in
    /// its recovery, a corruption error) is [`StoreError::Damaged`], never
    /// a crash of the process.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        // sled reports some damage by panicking; its default message on
        // stderr would read like a bug of ours, so it is held back here.
        let opened = quietly(|| Self::open_unguarded(path, cache_bytes));
        match opened {
            Ok(Err(StoreError::Storage(sled::Error::Corruption { at, .. }))) => Err(
                StoreError::Damaged(format!("sled found a damaged record at {at:?}")),
            ),
            // A damaged `conf` reads as a format sled does not support;
            // I/O errors (a lock held by another process, permissions) are
            // not damage and keep their own message.
            Ok(Err(StoreError::Storage(
                err @ (sled::Error::Unsupported(_)
                | sled::Error::ReportableBug(_)
                | sled::Error::CollectionNotFound(_)),
            ))) => Err(StoreError::Damaged(format!("sled cannot read it: {err}"))),
            Ok(Err(StoreError::Corrupt(what, err))) => Err(StoreError::Damaged(format!(
                "a {what} does not decode: {err}"
            ))),
            Ok(result) => result,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no reason given");
                Err(StoreError::Damaged(format!(
                    "sled stopped reading it: {why}"
                )))
            }
        }
    }

    fn open_unguarded(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()?;
        let meta = db.open_tree("meta")?;
        let format = match meta.get(FORMAT_KEY)? {
            Some(bytes) => u32::from_be_bytes(bytes.as_ref().try_into().map_err(|_| {
                StoreError::Damaged("the store's format mark is not 4 bytes".into())
            })?),
            None => 1,
        };
        if format > FORMAT {
            return Err(StoreError::Refused(format!(
                "the store at {} is of format {format}, written by a newer anxin-server; this \
                 build reads formats up to {FORMAT}. Run the newer build, or restore a backup \
                 made with this one into a fresh store (docs/operations.md, \"Upgrades\")",
                path.display()
            )));
        }
        let store = Self {
            partitions: std::sync::Arc::new(partitions::Partitions::open(&db, &meta)?),
            events: db.open_tree("events")?,
            alerts: db.open_tree("alerts")?,
            incidents: db.open_tree("incidents")?,
            deadlines: db.open_tree("deadlines")?,
            open_alerts: db.open_tree("open_alerts")?,
            downlinks: db.open_tree("downlinks")?,
            audit: db.open_tree("audit")?,
            directory: Trees::open(&db)?,
            meta,
            import_staging: db.open_tree("import_staging")?,
            outbox: db.open_tree("outbox")?,
            signs: db.open_tree("signs")?,
            positions: db.open_tree("positions")?,
            checkin_days: db.open_tree("checkin_days")?,
            visit_plans: db.open_tree("visit_plans")?,
            visits: db.open_tree("visits")?,
            events_by_time: db.open_tree("events_by_time")?,
            alert_events: db.open_tree("alert_events")?,
            event_days: db.open_tree("event_days")?,
            event_days_by_day: db.open_tree("event_days_by_day")?,
            signal_states: db.open_tree("signal_states")?,
            vital_days: db.open_tree("vital_days")?,
            vital_days_by_day: db.open_tree("vital_days_by_day")?,
            plain_commits: Default::default(),
            path: path.to_path_buf(),
            db,
        };
        seal::verify(&store)?;
        store.release_outbox_leases()?;
        listing::ensure_indexes(&store.directory, &store.meta)?;
        store.ensure_open_index()?;
        retention::ensure_indexes(&store)?;
        import::finish_staged(&store)?;
        if format < FORMAT {
            store.meta.insert(FORMAT_KEY, &FORMAT.to_be_bytes())?;
        }
        Ok(store)
    }

    /// One process uses a sled store: what it held when it stopped is
    /// nobody's now, so it is tried again at once rather than at the end
    /// of its lease.
    fn release_outbox_leases(&self) -> Result<(), StoreError> {
        for item in self.outbox.iter() {
            let (key, bytes) = item?;
            let mut item: OutboxItem = decode("outbox item", &bytes)?;
            if item.lease_until_ms != 0 {
                item.lease_until_ms = 0;
                self.outbox.insert(key, item.encode_to_vec())?;
            }
        }
        Ok(())
    }

    /// Blocking flush, for tools that run without a runtime.
    pub fn db_flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}
