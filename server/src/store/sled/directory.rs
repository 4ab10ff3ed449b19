//! [`Directory`] on sled: records with their index trees, tokens, pages.

use anxin_proto::v1::{AuditEntry, DeviceRecord, GatewayRecord, Place, Resident, Staff};
use prost::Message;
use sled::Transactional;

use super::trees::*;
use super::{import, listing};
use crate::store::{StoreError, decode};
use crate::{
    domain::listing::{ListQuery, Page},
    store::directory::{Directory, DirectoryBatch, TokenRecord},
};

impl Directory for SledStore {
    fn put_place(&self, place: &Place, audit: AuditEntry) -> Result<(), StoreError> {
        (&self.directory.places, &self.audit).transaction(|(places, log)| {
            places.insert(place.id.as_bytes(), place.encode_to_vec())?;
            append_audit(log, audit.clone())
        })?;
        Ok(())
    }
    fn place(&self, id: &str) -> Result<Option<Place>, StoreError> {
        get(&self.directory.places, "place", id)
    }
    fn places(&self) -> Result<Vec<Place>, StoreError> {
        list(&self.directory.places, "place")
    }
    fn resident(&self, id: &str) -> Result<Option<Resident>, StoreError> {
        get(&self.directory.residents, "resident", id)
    }
    fn residents(&self) -> Result<Vec<Resident>, StoreError> {
        list(&self.directory.residents, "resident")
    }
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        get(&self.directory.devices, "device", id)
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        list(&self.directory.devices, "device")
    }
    fn put_gateway(
        &self,
        gateway: &GatewayRecord,
        token_sha256: &str,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        let token = TokenRecord {
            subject_kind: "gateway".into(),
            subject_id: gateway.id.clone(),
            issued_ms: audit.at_ms,
            ..Default::default()
        };
        (
            &self.directory.gateways,
            &self.directory.tokens,
            &self.audit,
        )
            .transaction(|(gateways, tokens, log)| {
                gateways.insert(gateway.id.as_bytes(), gateway.encode_to_vec())?;
                if !token_sha256.is_empty() {
                    tokens.insert(token_sha256.as_bytes(), token.encode_to_vec())?;
                }
                append_audit(log, audit.clone())
            })?;
        Ok(())
    }
    fn gateway(&self, id: &str) -> Result<Option<GatewayRecord>, StoreError> {
        get(&self.directory.gateways, "gateway", id)
    }
    fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        list(&self.directory.gateways, "gateway")
    }
    fn staff_member(&self, id: &str) -> Result<Option<Staff>, StoreError> {
        get(&self.directory.staff, "staff", id)
    }
    fn staff(&self) -> Result<Vec<Staff>, StoreError> {
        list(&self.directory.staff, "staff")
    }
    fn put_batch(&self, batch: &DirectoryBatch, audit: AuditEntry) -> Result<(), StoreError> {
        self.write_batch(batch, Some(&audit), None)
    }
    fn put_import(
        &self,
        chunks: &mut dyn Iterator<Item = DirectoryBatch>,
        expected: u64,
        audit: AuditEntry,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        import::put_import(self, chunks, expected, audit, progress)
    }
    fn enrolled_residents(&self) -> Result<Vec<Resident>, StoreError> {
        listing::enrolled(&self.directory)
    }
    fn residents_page(&self, query: &ListQuery) -> Result<Page<Resident>, StoreError> {
        listing::residents(&self.directory, query)
    }
    fn devices_page(&self, query: &ListQuery) -> Result<Page<DeviceRecord>, StoreError> {
        listing::devices(&self.directory, query)
    }
    fn staff_page(&self, query: &ListQuery) -> Result<Page<Staff>, StoreError> {
        listing::staff(&self.directory, query)
    }
    fn gateways_page(&self, query: &ListQuery) -> Result<Page<GatewayRecord>, StoreError> {
        listing::gateways(&self.directory, query)
    }
    fn places_page(&self, query: &ListQuery) -> Result<Page<Place>, StoreError> {
        listing::places(&self.directory, query)
    }
    fn put_token(
        &self,
        token_sha256: &str,
        record: &TokenRecord,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        (&self.directory.tokens, &self.audit).transaction(|(tokens, log)| {
            if token_sha256.is_empty() {
                return Err(abort(StoreError::Refused("empty token digest".into())));
            }
            tokens.insert(token_sha256.as_bytes(), record.encode_to_vec())?;
            append_audit(log, audit.clone())
        })?;
        Ok(())
    }
    fn token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        get(&self.directory.tokens, "token", token_sha256)
    }
    fn tokens_of(
        &self,
        subject_kind: &str,
        subject_id: &str,
    ) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.directory.tokens.iter() {
            let (key, bytes) = item?;
            let record: TokenRecord = decode("token", &bytes)?;
            if record.subject_kind == subject_kind && record.subject_id == subject_id {
                out.push((String::from_utf8_lossy(&key).into_owned(), record));
            }
        }
        Ok(out)
    }
    fn spend_token(
        &self,
        token_sha256: &str,
        subject_kind: &str,
        now_ms: i64,
        audit: AuditEntry,
    ) -> Result<Option<TokenRecord>, StoreError> {
        Ok(
            (&self.directory.tokens, &self.audit).transaction(|(tokens, log)| {
                let Some(bytes) = tokens.get(token_sha256.as_bytes())? else {
                    return Ok(None);
                };
                let before: TokenRecord = decode("token", &bytes).map_err(abort)?;
                if before.subject_kind == subject_kind && before.refusal(now_ms).is_none() {
                    let mut spent = before.clone();
                    spent.revoked_ms = now_ms;
                    tokens.insert(token_sha256.as_bytes(), spent.encode_to_vec())?;
                    append_audit(log, audit.clone())?;
                }
                Ok(Some(before))
            })?,
        )
    }
    fn touch_token(&self, token_sha256: &str, at_ms: i64) -> Result<(), StoreError> {
        self.directory
            .tokens
            .fetch_and_update(token_sha256.as_bytes(), |old| {
                let mut record: TokenRecord = old.and_then(|b| TokenRecord::decode(b).ok())?;
                record.last_used_ms = at_ms;
                Some(record.encode_to_vec())
            })?;
        Ok(())
    }
}
