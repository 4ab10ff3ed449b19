//! `anxin-server store check` on PostgreSQL: every record's body decodes,
//! each lookup column the engine keeps beside a body agrees with it, the
//! audit chain holds. PostgreSQL keeps its own indexes; `amcheck` or
//! `pg_amcheck` checks those (docs/operations.md).

use anxin_proto::v1::{
    Alert, AuditEntry, CheckinDay, DeviceRecord, Downlink, GatewayRecord, Place, Resident,
    SignOfLife, Staff, Visit, VisitPlan,
};
use deadpool_postgres::Pool;
use futures::{StreamExt, pin_mut};
use prost::Message;

use crate::{
    store::directory::TokenRecord,
    store::{CheckReport, OutboxItem, StoreError, StoredEvent},
};

/// Decodes the bodies `sql` returns (a key as text first, the body
/// second), row by row as they stream, and hands each record to `each`.
async fn decode_all<M: Message + Default>(
    pool: &Pool,
    report: &mut CheckReport,
    kind: &str,
    sql: &str,
    mut each: impl FnMut(&mut CheckReport, &str, M),
) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query_raw(
            sql,
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        )
        .await?;
    pin_mut!(rows);
    let mut count = 0u64;
    while let Some(row) = rows.next().await {
        let row = row?;
        count += 1;
        let key: String = row.get(0);
        match M::decode(row.get::<_, &[u8]>(1)) {
            Ok(record) => each(report, &key, record),
            Err(err) => {
                report.problem(format!("{kind}: the record `{key}` does not decode: {err}"))
            }
        }
    }
    report.count(kind, count);
    Ok(())
}

fn nothing<M>(_: &mut CheckReport, _: &str, _: M) {}

pub(super) async fn check(pool: &Pool, report: &mut CheckReport) -> Result<(), StoreError> {
    decode_all::<StoredEvent>(
        pool,
        report,
        "events",
        "select device_id || '/' || seq_key::text, body from events",
        nothing,
    )
    .await?;
    decode_all(
        pool,
        report,
        "alerts",
        "select number::text || '/' || state::text, body from alerts order by number",
        |report, key, alert: Alert| {
            if key.rsplit('/').next() != Some(alert.state.to_string().as_str()) {
                report.problem(format!(
                    "alerts: alert {}'s state column disagrees with its record ({:?})",
                    alert.id,
                    alert.state()
                ));
            }
        },
    )
    .await?;
    let mut entries = Vec::new();
    decode_all(
        pool,
        report,
        "audit",
        // `audit.id`: a bare `id` would be the text column above, and
        // entry 10 would come before entry 2.
        "select id::text, body from audit order by audit.id",
        |_, _, entry: AuditEntry| entries.push(entry),
    )
    .await?;
    let anchor = pool
        .get()
        .await?
        .query_opt("select value from meta where key = 'audit_anchor'", &[])
        .await?
        .map(|row| crate::store::AuditAnchor::decode(row.get(0)));
    let anchor = match anchor.transpose() {
        Ok(anchor) => anchor,
        Err(err) => {
            report.problem(format!("audit: {err}"));
            None
        }
    };
    let chain = crate::store::verify_chain(anchor.as_ref(), entries);
    if let (Some(id), Some(problem)) = (chain.broken_at, chain.problem) {
        report.problem(format!("audit chain broken at entry {id}: {problem}"));
    }
    decode_all::<Downlink>(
        pool,
        report,
        "downlinks",
        "select gateway_id, body from downlinks",
        nothing,
    )
    .await?;
    decode_all::<OutboxItem>(
        pool,
        report,
        "outbox",
        "select delivery_id, body from outbox",
        nothing,
    )
    .await?;
    decode_all::<SignOfLife>(
        pool,
        report,
        "signs_of_life",
        "select resident_id, body from signs_of_life",
        nothing,
    )
    .await?;
    decode_all::<CheckinDay>(
        pool,
        report,
        "checkin_days",
        "select resident_id || '/' || day::text, body from checkin_days",
        nothing,
    )
    .await?;
    decode_all::<VisitPlan>(
        pool,
        report,
        "visit_plans",
        "select id, body from visit_plans",
        nothing,
    )
    .await?;
    decode_all::<Visit>(
        pool,
        report,
        "visits",
        "select plan_id || '/' || day::text, body from visits",
        nothing,
    )
    .await?;
    decode_all::<Place>(
        pool,
        report,
        "places",
        "select id, body from places",
        nothing,
    )
    .await?;
    decode_all::<GatewayRecord>(
        pool,
        report,
        "gateways",
        "select id, body from gateways",
        nothing,
    )
    .await?;
    decode_all::<TokenRecord>(
        pool,
        report,
        "tokens",
        "select digest, body from tokens",
        nothing,
    )
    .await?;
    decode_all(
        pool,
        report,
        "residents",
        "select id || '/' || coalesce(community_id, ''), body from residents",
        |report, key, r: Resident| {
            if key != format!("{}/{}", r.id, r.community_id) {
                report.problem(format!(
                    "residents: {}'s community column disagrees with its record",
                    r.id
                ));
            }
        },
    )
    .await?;
    decode_all::<DeviceRecord>(
        pool,
        report,
        "devices",
        "select id, body from devices",
        nothing,
    )
    .await?;
    decode_all::<Staff>(pool, report, "staff", "select id, body from staff", nothing).await?;
    Ok(())
}
