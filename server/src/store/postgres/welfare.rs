//! [`WelfareStore`] on PostgreSQL.

use anxin_proto::v1::{AuditEntry, CheckinDay, SignOfLife, Visit, VisitPlan};
use prost::Message;

use crate::store::welfare::WelfareStore;
use crate::store::{OutboxItem, StoreError, decode, latest_signs};

use super::core::*;

impl WelfareStore for PgStore {
    fn note_signs(&self, signs: &[SignOfLife]) -> Result<(), StoreError> {
        let latest = latest_signs(signs);
        if latest.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = latest.iter().map(|s| s.resident_id.as_str()).collect();
        let at: Vec<i64> = latest.iter().map(|s| s.at_ms).collect();
        let bodies: Vec<Vec<u8>> = latest.iter().map(Message::encode_to_vec).collect();
        self.block_bounded(async {
            let client = self.pool.get().await?;
            // An older sign (a resend, another replica's slower batch)
            // leaves the newer one.
            client
                .execute(
                    "insert into signs_of_life (resident_id, at_ms, body)
                     select * from unnest($1::text[], $2::bigint[], $3::bytea[])
                     on conflict (resident_id) do update
                       set at_ms = excluded.at_ms, body = excluded.body
                       where signs_of_life.at_ms < excluded.at_ms",
                    &[&ids, &at, &bodies],
                )
                .await?;
            Ok(())
        })
    }

    fn sign_of_life(&self, resident_id: &str) -> Result<Option<SignOfLife>, StoreError> {
        self.get_one(
            "sign of life",
            "select body from signs_of_life where resident_id = $1",
            resident_id,
        )
    }

    fn judge_checkin_day(
        &self,
        day: &CheckinDay,
        audit: AuditEntry,
    ) -> Result<CheckinDay, StoreError> {
        self.write(async |tx| {
            let (stored, new) = Self::insert_once(
                tx,
                "check-in day",
                "checkin_days",
                "resident_id",
                day.day,
                &day.resident_id,
                day,
            )
            .await?;
            if new {
                Self::insert_audit(tx, &audit).await?;
            }
            Ok(stored)
        })
    }

    fn checkin_day(&self, resident_id: &str, day: i32) -> Result<Option<CheckinDay>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            match client
                .query_opt(
                    "select body from checkin_days where day = $1 and resident_id = $2",
                    &[&day, &resident_id],
                )
                .await?
            {
                Some(row) => Ok(Some(decode("check-in day", row.get(0))?)),
                None => Ok(None),
            }
        })
    }

    fn checkin_days(&self, from_day: i32, to_day: i32) -> Result<Vec<CheckinDay>, StoreError> {
        self.days(
            "check-in day",
            "checkin_days",
            "resident_id",
            from_day,
            to_day,
        )
    }

    fn put_visit_plans(&self, plans: &[VisitPlan], audit: AuditEntry) -> Result<(), StoreError> {
        let ids: Vec<&str> = plans.iter().map(|p| p.id.as_str()).collect();
        let bodies: Vec<Vec<u8>> = plans.iter().map(Message::encode_to_vec).collect();
        self.write(async |tx| {
            tx.execute(
                "insert into visit_plans (id, body)
                 select * from unnest($1::text[], $2::bytea[])
                 on conflict (id) do update set body = excluded.body",
                &[&ids, &bodies],
            )
            .await?;
            Self::insert_audit(tx, &audit).await?;
            // Other replicas' visit judges read the plans again.
            self.notify(tx, Notice::Directory).await?;
            Ok(())
        })
    }

    fn visit_plan(&self, id: &str) -> Result<Option<VisitPlan>, StoreError> {
        self.get_one(
            "visit plan",
            "select body from visit_plans where id = $1",
            id,
        )
    }

    fn visit_plans(&self) -> Result<Vec<VisitPlan>, StoreError> {
        self.list("visit plan", "select body from visit_plans order by id")
    }

    fn record_visit(
        &self,
        visit: &Visit,
        audit: AuditEntry,
        notifications: &[OutboxItem],
    ) -> Result<(Visit, bool), StoreError> {
        self.write(async |tx| {
            let (stored, new) = Self::insert_once(
                tx,
                "visit",
                "visits",
                "plan_id",
                visit.day,
                &visit.plan_id,
                visit,
            )
            .await?;
            if !new {
                return Ok((stored, false));
            }
            Self::insert_audit(tx, &audit).await?;
            Self::insert_outbox(&**tx, notifications).await?;
            Ok((visit.clone(), true))
        })
    }

    fn visits(&self, from_day: i32, to_day: i32) -> Result<Vec<Visit>, StoreError> {
        self.days("visit", "visits", "plan_id", from_day, to_day)
    }
}
