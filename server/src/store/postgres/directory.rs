//! [`Directory`] on PostgreSQL: records with their index columns and side
//! tables, tokens, keyset pages.

use anxin_proto::v1::{AuditEntry, DeviceRecord, GatewayRecord, Place, Resident, Staff};
use prost::Message;

use crate::store::{StoreError, decode};
use crate::{
    domain::listing::{ListQuery, Page},
    store::directory::{Directory, DirectoryBatch, TokenRecord},
};

use super::core::*;
use super::listing::{self, Upsert};

impl Directory for PgStore {
    fn put_place(&self, place: &Place, audit: AuditEntry) -> Result<(), StoreError> {
        let places = Upsert::of("places", std::slice::from_ref(place), |p| &p.id);
        self.directory_write(audit, vec![places])
    }
    fn place(&self, id: &str) -> Result<Option<Place>, StoreError> {
        self.get_one("place", "select body from places where id = $1", id)
    }
    fn places(&self) -> Result<Vec<Place>, StoreError> {
        self.list("place", "select body from places order by id")
    }
    fn places_by_id(&self, ids: &[String]) -> Result<Vec<Place>, StoreError> {
        self.get_many("place", "select body from places where id = any($1)", ids)
    }
    fn residents_by_id(&self, ids: &[String]) -> Result<Vec<Resident>, StoreError> {
        self.get_many(
            "resident",
            "select body from residents where id = any($1)",
            ids,
        )
    }
    fn devices_by_id(&self, ids: &[String]) -> Result<Vec<DeviceRecord>, StoreError> {
        self.get_many("device", "select body from devices where id = any($1)", ids)
    }
    fn resident(&self, id: &str) -> Result<Option<Resident>, StoreError> {
        self.get_one("resident", "select body from residents where id = $1", id)
    }
    fn residents(&self) -> Result<Vec<Resident>, StoreError> {
        self.list("resident", "select body from residents order by id")
    }
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        self.get_one("device", "select body from devices where id = $1", id)
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.list("device", "select body from devices order by id")
    }
    fn put_gateway(
        &self,
        gateway: &GatewayRecord,
        token_sha256: &str,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        let mut writes = vec![listing::gateways_write(std::slice::from_ref(gateway))];
        if !token_sha256.is_empty() {
            let token = TokenRecord {
                subject_kind: "gateway".into(),
                subject_id: gateway.id.clone(),
                issued_ms: audit.at_ms,
                ..Default::default()
            };
            writes.push(Upsert::token(token_sha256, &token));
        }
        self.directory_write(audit, writes)
    }
    fn gateway(&self, id: &str) -> Result<Option<GatewayRecord>, StoreError> {
        self.get_one("gateway", "select body from gateways where id = $1", id)
    }
    fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        self.list("gateway", "select body from gateways order by id")
    }
    fn staff_member(&self, id: &str) -> Result<Option<Staff>, StoreError> {
        self.get_one("staff", "select body from staff where id = $1", id)
    }
    fn staff(&self) -> Result<Vec<Staff>, StoreError> {
        self.list("staff", "select body from staff order by id")
    }
    fn put_batch(&self, batch: &DirectoryBatch, audit: AuditEntry) -> Result<(), StoreError> {
        let writes = vec![
            listing::residents_write(&batch.residents),
            listing::devices_write(&batch.devices),
            listing::staff_write(&batch.staff),
        ];
        self.directory_write(audit, writes)
    }
    fn put_import(
        &self,
        chunks: &mut dyn Iterator<Item = DirectoryBatch>,
        expected: u64,
        audit: AuditEntry,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        // One transaction, written a chunk at a time: the database holds
        // the uncommitted rows, this process only the chunk in hand.
        let mut client = self.block(async { Ok(self.pool.get().await?) })?;
        let tx = self.block(async { Ok(client.transaction().await?) })?;
        let mut written = 0u64;
        for chunk in chunks {
            self.block(async {
                for write in [
                    listing::residents_write(&chunk.residents),
                    listing::devices_write(&chunk.devices),
                    listing::staff_write(&chunk.staff),
                ] {
                    listing::upsert(&tx, &write).await?;
                }
                Ok(())
            })?;
            written += (chunk.residents.len() + chunk.devices.len() + chunk.staff.len()) as u64;
            progress(written);
        }
        if written != expected {
            return Err(StoreError::Refused(format!(
                "the file changed while it was imported ({expected} rows checked, {written} read); nothing was written"
            )));
        }
        self.block(async {
            Self::insert_audit(&tx, &audit).await?;
            self.notify(&tx, Notice::Directory).await?;
            tx.commit().await?;
            Ok(())
        })?;
        Ok(written)
    }
    fn enrolled_residents(&self) -> Result<Vec<Resident>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::enrolled(&client).await
        })
    }
    fn residents_page(&self, query: &ListQuery) -> Result<Page<Resident>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::residents(&client, query).await
        })
    }
    fn exclusively(
        &self,
        name: &str,
        work: &mut dyn FnMut() -> Result<usize, StoreError>,
    ) -> Result<usize, StoreError> {
        let client = self.block(async { Ok(self.pool.get().await?) })?;
        self.block(async {
            client
                .execute("select pg_advisory_lock(hashtextextended($1, 0))", &[&name])
                .await?;
            Ok(())
        })?;
        let result = work();
        let unlocked = self.block(async {
            client
                .execute(
                    "select pg_advisory_unlock(hashtextextended($1, 0))",
                    &[&name],
                )
                .await?;
            Ok(())
        });
        // Never back into the pool: a session lock must not outlive the
        // work, and closing the connection releases it whatever happened.
        drop(deadpool_postgres::Object::take(client));
        let done = result?;
        unlocked?;
        Ok(done)
    }
    fn devices_page(&self, query: &ListQuery) -> Result<Page<DeviceRecord>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::devices(&client, query).await
        })
    }
    fn staff_page(&self, query: &ListQuery) -> Result<Page<Staff>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::staff(&client, query).await
        })
    }
    fn gateways_page(&self, query: &ListQuery) -> Result<Page<GatewayRecord>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::gateways(&client, query).await
        })
    }
    fn places_page(&self, query: &ListQuery) -> Result<Page<Place>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::places(&client, query).await
        })
    }
    fn put_token(
        &self,
        token_sha256: &str,
        record: &TokenRecord,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        if token_sha256.is_empty() {
            return Err(StoreError::Refused("empty token digest".into()));
        }
        self.directory_write(audit, vec![Upsert::token(token_sha256, record)])
    }
    fn spend_token(
        &self,
        token_sha256: &str,
        subject_kind: &str,
        now_ms: i64,
        audit: AuditEntry,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.write(async |tx| {
            // The row lock makes a racing second caller wait, then see it
            // revoked.
            let Some(row) = tx
                .query_opt(
                    "select body from tokens where digest = $1 for update",
                    &[&token_sha256],
                )
                .await?
            else {
                return Ok(None);
            };
            let before: TokenRecord = decode("token", row.get(0))?;
            if before.subject_kind == subject_kind && before.refusal(now_ms).is_none() {
                let mut spent = before.clone();
                spent.revoked_ms = now_ms;
                super::listing::upsert(tx, &Upsert::token(token_sha256, &spent)).await?;
                Self::insert_audit(tx, &audit).await?;
            }
            Ok(Some(before))
        })
    }
    fn token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get_one(
            "token",
            "select body from tokens where digest = $1",
            token_sha256,
        )
    }
    fn tokens_of(
        &self,
        subject_kind: &str,
        subject_id: &str,
    ) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            let mut out = Vec::new();
            for row in client
                .query("select digest, body from tokens order by digest", &[])
                .await?
            {
                let record: TokenRecord = decode("token", row.get(1))?;
                if record.subject_kind == subject_kind && record.subject_id == subject_id {
                    out.push((row.get(0), record));
                }
            }
            Ok(out)
        })
    }
    fn touch_token(&self, token_sha256: &str, at_ms: i64) -> Result<(), StoreError> {
        let Some(mut record) = self.token(token_sha256)? else {
            return Ok(());
        };
        record.last_used_ms = at_ms;
        let body = record.encode_to_vec();
        self.block(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "update tokens set body = $2 where digest = $1",
                    &[&token_sha256, &body],
                )
                .await?;
            Ok(())
        })
    }
}
