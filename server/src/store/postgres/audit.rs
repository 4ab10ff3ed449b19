//! [`AuditLog`] on PostgreSQL: the chain's head row locked, the id taken
//! under the lock.

use anxin_proto::v1::{AuditEntry, AuditQuery};

use crate::store::audit::AuditLog;
use crate::store::{StoreError, decode};

use super::core::*;

impl AuditLog for PgStore {
    fn append(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        self.write(async |tx| {
            let entry = Self::insert_audit(tx, &entry).await?;
            Ok(entry)
        })
    }

    fn query(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = if query.limit > 0 {
            query.limit as i64
        } else {
            i64::MAX
        };
        let before = match query.before_id {
            0 => i64::MAX,
            id => id.min(i64::MAX as u64) as i64,
        };
        self.block(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "select id, body from audit
                     where ($1 = '' or target = $1)
                       and ($2 = '' or actor = $2)
                       and ($3 = '' or action = $3 or starts_with(action, $3 || '.'))
                       and ($4::bigint = 0 or at_ms >= $4)
                       and ($5::bigint = 0 or at_ms < $5)
                       and id < $7
                     order by id desc limit $6",
                    &[
                        &query.target,
                        &query.actor,
                        &query.action,
                        &query.since_ms,
                        &query.until_ms,
                        &limit,
                        &before,
                    ],
                )
                .await?;
            let mut entries = rows
                .iter()
                .map(|row| {
                    let mut entry: AuditEntry = decode("audit entry", row.get(1))?;
                    entry.id = row.get::<_, i64>(0) as u64;
                    Ok(entry)
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            entries.reverse();
            Ok(entries)
        })
    }
}
