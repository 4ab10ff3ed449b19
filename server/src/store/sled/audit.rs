//! [`AuditLog`] on sled: the hash chain, written with its head in one
//! transaction.

use anxin_proto::v1::{AuditEntry, AuditQuery};

use super::trees::*;
use crate::store::audit::AuditLog;
use crate::store::{StoreError, decode};

impl AuditLog for SledStore {
    fn append(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        Ok(self
            .audit
            .transaction(|audit| append_audit(audit, entry.clone()))?)
    }

    fn query(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let before = match query.before_id {
            0 => u64::MAX,
            id => id,
        };
        let mut out = Vec::new();
        if query.limit == 0 {
            for entry in audit_entries(&self.audit) {
                let entry = entry?;
                if entry.id < before && crate::store::audit::matches(query, &entry) {
                    out.push(entry);
                }
            }
            return Ok(out);
        }
        // Newest first, holding no more than the page.
        for item in self.audit.range(..before.to_be_bytes()).rev() {
            let (key, bytes) = item?;
            if key.len() != 8 {
                continue;
            }
            let entry: AuditEntry = decode("audit entry", &bytes)?;
            if crate::store::audit::matches(query, &entry) {
                out.push(entry);
                if out.len() == query.limit as usize {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }
}
