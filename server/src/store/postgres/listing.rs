//! The directory's index columns and side tables (schema version 5) and its
//! paged lists, with the order and cursors of [`crate::domain::listing`].
//!
//! Every list is a keyset walk over a btree in byte order (`collate "C"`),
//! so its cursors are the same index keys the sled engine issues.

use anxin_proto::v1::{DeviceRecord, GatewayRecord, Place, Resident, Staff};
use deadpool_postgres::GenericClient;
use prost::Message;
use tokio_postgres::types::ToSql;

use crate::domain::listing::{self, ListQuery, Page, SCAN_BUDGET};
use crate::store::{StoreError, decode, directory::TokenRecord};

/// The statements of the pages, each served by an index (the EXPLAIN test
/// in `store/tests.rs` checks that none needs a sequential scan).
pub(crate) mod sql {
    pub const RESIDENTS: &str = "select community_id, id, body from residents
         where (community_id, id) > ($1, $2)
         order by community_id, id limit $3";
    pub const RESIDENTS_OF_COMMUNITY: &str = "select community_id, id, body from residents
         where community_id = $1 and id > $2 order by id limit $3";
    /// Completed with the cursor (only when there is one: a row comparison
    /// from `('', '')` makes the index scan start at the very first term),
    /// the scope and community conditions, then [`SEARCH_ORDER`] and the
    /// limit's parameter.
    pub const SEARCH: &str =
        "select t.term, t.id, r.body from resident_terms t join residents r on r.id = t.id
         where t.term >= $1 and t.term < $2
           and not exists (select 1 from resident_terms e
                           where e.id = t.id and e.term >= $1 and e.term < t.term)";
    pub const SEARCH_ORDER: &str = " order by t.term, t.id limit ";
    pub const DEVICES: &str = "select id, body from devices where id > $1 order by id limit $2";
    pub const DEVICES_OF_GATEWAY: &str = "select gateway_id, id, body from devices
         where gateway_id = $1 and id > $2 order by id limit $3";
    pub const DEVICES_OF_RESIDENT: &str = "select resident_id, id, body from devices
         where resident_id = $1 and id > $2 order by id limit $3";
    pub const STAFF: &str = "select id, body from staff where id > $1 order by id limit $2";
    pub const STAFF_OF_COMMUNITY: &str =
        "select s.id, s.body from staff_communities c join staff s on s.id = c.id
         where c.community_id = $3 and c.id > $1 order by c.id limit $2";
    pub const GATEWAYS: &str = "select id, body from gateways where id > $1 order by id limit $2";
    pub const PLACES: &str = "select id, body from places where id > $1 order by id limit $2";
    pub const ENROLLED: &str = "select body from residents where checkin_start <> '' order by id";
}

/// The schema version whose migration needs [`backfill`].
pub(super) const BACKFILL_VERSION: i32 = 5;

/// A multi-valued index: `(value, id)` rows, replaced whole for `ids`.
pub(super) struct Side {
    table: &'static str,
    column: &'static str,
    ids: Vec<String>,
    values: Vec<String>,
    owners: Vec<String>,
}

impl Side {
    fn of<M>(
        table: &'static str,
        column: &'static str,
        records: &[M],
        id: impl Fn(&M) -> &str,
        values: impl Fn(&M) -> Vec<String>,
    ) -> Self {
        let mut side = Side {
            table,
            column,
            ids: Vec::new(),
            values: Vec::new(),
            owners: Vec::new(),
        };
        for r in records {
            side.ids.push(id(r).to_string());
            for v in values(r) {
                side.values.push(v);
                side.owners.push(id(r).to_string());
            }
        }
        side
    }
}

fn column<M>(
    name: &'static str,
    records: &[M],
    f: impl Fn(&M) -> &str,
) -> (&'static str, Vec<String>) {
    (name, records.iter().map(|r| f(r).to_string()).collect())
}

pub(super) fn residents_write(records: &[Resident]) -> Upsert {
    let mut write = Upsert::of("residents", records, |r| &r.id);
    write.columns = vec![
        column("community_id", records, |r| &r.community_id),
        column("checkin_start", records, |r| {
            r.checkin.as_ref().map_or("", |c| c.start.as_str())
        }),
    ];
    write.sides = vec![Side::of(
        "resident_terms",
        "term",
        records,
        |r| &r.id,
        listing::resident_terms,
    )];
    write
}

pub(super) fn devices_write(records: &[DeviceRecord]) -> Upsert {
    let mut write = Upsert::of("devices", records, |d| &d.id);
    write.columns = vec![
        column("gateway_id", records, |d| &d.gateway_id),
        column("resident_id", records, |d| &d.resident_id),
    ];
    write
}

pub(super) fn staff_write(records: &[Staff]) -> Upsert {
    let mut write = Upsert::of("staff", records, |s| &s.id);
    write.sides = vec![Side::of(
        "staff_communities",
        "community_id",
        records,
        |s| &s.id,
        |s| {
            let mut list = s.communities.clone();
            list.sort();
            list.dedup();
            list
        },
    )];
    write
}

pub(super) fn gateways_write(records: &[GatewayRecord]) -> Upsert {
    let mut write = Upsert::of("gateways", records, |g| &g.id);
    write.columns = vec![column("community_id", records, |g| &g.community_id)];
    write
}

/// Writes one table's records with their index columns and side tables.
pub(super) async fn upsert(
    tx: &impl GenericClient,
    write: &Upsert,
) -> Result<(), tokio_postgres::Error> {
    if write.ids.is_empty() {
        return Ok(());
    }
    let (table, key) = (write.table, write.key);
    let mut names = vec![key, "body"];
    let mut types = vec!["text[]", "bytea[]"];
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&write.ids, &write.bodies];
    for (name, values) in &write.columns {
        names.push(name);
        types.push("text[]");
        params.push(values);
    }
    let unnest = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}", i + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let updates = names[1..]
        .iter()
        .map(|n| format!("{n} = excluded.{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let names = names.join(", ");
    tx.execute(
        &format!(
            "insert into {table} ({names}) select * from unnest({unnest})
             on conflict ({key}) do update set {updates}"
        ),
        &params,
    )
    .await?;
    for side in &write.sides {
        let (table, column) = (side.table, side.column);
        tx.execute(
            &format!("delete from {table} where id = any($1)"),
            &[&side.ids],
        )
        .await?;
        tx.execute(
            &format!(
                "insert into {table} ({column}, id) select * from unnest($1::text[], $2::text[])
                 on conflict do nothing"
            ),
            &[&side.values, &side.owners],
        )
        .await?;
    }
    Ok(())
}

/// Fills version 5's columns and side tables from the records' bodies, in
/// batches, inside the migration's transaction.
pub(in crate::store) async fn backfill(tx: &impl GenericClient) -> Result<(), StoreError> {
    async fn each<M: Message + Default>(
        tx: &impl GenericClient,
        table: &str,
        what: &str,
        write: impl Fn(&[M]) -> Upsert,
    ) -> Result<usize, StoreError> {
        let mut after = String::new();
        let mut count = 0;
        loop {
            let rows = tx
                .query(
                    &format!("select id, body from {table} where id > $1 order by id limit 5000"),
                    &[&after],
                )
                .await?;
            let Some(last) = rows.last() else {
                return Ok(count);
            };
            after = last.get(0);
            let records = rows
                .iter()
                .map(|row| decode(what, row.get(1)))
                .collect::<Result<Vec<M>, _>>()?;
            count += records.len();
            upsert(tx, &write(&records)).await?;
        }
    }
    let count = each(tx, "residents", "resident", residents_write).await?
        + each(tx, "devices", "device", devices_write).await?
        + each(tx, "staff", "staff", staff_write).await?
        + each(tx, "gateways", "gateway", gateways_write).await?;
    if count > 0 {
        tracing::info!(records = count, "directory indexes built");
    }
    Ok(())
}

/// A page from rows walked in key order: `rows` holds up to `limit + 1`
/// `(key, record)`; one more than `limit` means the page is followed.
fn page<T>(mut rows: Vec<(Vec<u8>, T)>, limit: usize) -> Page<T> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more.then(|| listing::cursor(&rows.last().expect("limit > 0").0));
    Page {
        items: rows.into_iter().map(|(_, t)| t).collect(),
        next,
    }
}

fn after_parts(query: &ListQuery) -> Result<Vec<String>, StoreError> {
    let key = query
        .after_key()
        .map_err(|e| StoreError::Refused(e.to_string()))?;
    Ok(if key.is_empty() {
        Vec::new()
    } else {
        listing::parts(&key)
    })
}

/// The part of a cursor at `i` (empty when the cursor is shorter).
fn part(parts: &[String], i: usize) -> &str {
    parts.get(i).map(String::as_str).unwrap_or("")
}

/// Walks `sql` (which takes the last id seen as `$1` and a row count as
/// `$2`, then `extra`) in id order, keeping the records `keep` wants, until
/// the page is full or [`SCAN_BUDGET`] rows were looked at. With `within`
/// (the one value of an index's first column), keys are `within ‖ 0 ‖ id`.
async fn walk_ids<M: Message + Default>(
    client: &impl GenericClient,
    what: &str,
    sql: &str,
    extra: &[&(dyn ToSql + Sync)],
    within: Option<&str>,
    query: &ListQuery,
    keep: impl Fn(&M) -> bool,
) -> Result<Page<M>, StoreError> {
    let limit = query.limit();
    let key = |id: &str| match within {
        Some(first) => listing::key(&[first, id]),
        None => id.as_bytes().to_vec(),
    };
    let mut after = after_parts(query)?.pop().unwrap_or_default();
    let mut rows = Vec::new();
    let mut looked = 0usize;
    loop {
        let batch = (limit + 1) as i64;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after, &batch];
        params.extend_from_slice(extra);
        let found = client.query(sql, &params).await?;
        let exhausted = found.len() < batch as usize;
        for row in &found {
            let id: String = row.get(0);
            looked += 1;
            let record: M = decode(what, row.get(1))?;
            if keep(&record) {
                rows.push((key(&id), record));
                if rows.len() > limit {
                    return Ok(page(rows, limit));
                }
            }
            after = id;
        }
        if exhausted {
            return Ok(page(rows, limit));
        }
        if looked >= SCAN_BUDGET {
            let mut page = page(rows, limit);
            page.next = Some(listing::cursor(&key(&after)));
            return Ok(page);
        }
    }
}

pub(super) async fn residents(
    client: &impl GenericClient,
    query: &ListQuery,
) -> Result<Page<Resident>, StoreError> {
    let limit = query.limit();
    let after = after_parts(query)?;
    let decode_rows = |found: Vec<tokio_postgres::Row>| -> Result<Vec<_>, StoreError> {
        found
            .iter()
            .map(|row| {
                let key = listing::key(&[row.get(0), row.get(1)]);
                Ok((key, decode::<Resident>("resident", row.get(2))?))
            })
            .collect()
    };
    let search = query.search_term();
    if !search.is_empty() {
        let upper = format!("{search}\u{10FFFF}");
        let mut sql = String::from(sql::SEARCH);
        let batch = (limit + 1) as i64;
        let (after_term, after_id) = (part(&after, 0), part(&after, 1));
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&search, &upper];
        if !after.is_empty() {
            sql.push_str(" and (t.term, t.id) > ($3, $4)");
            params.push(&after_term);
            params.push(&after_id);
        }
        let scope = query.scope.clone();
        if let Some(scope) = &scope {
            sql.push_str(&format!(" and r.community_id = any(${})", params.len() + 1));
            params.push(scope);
        }
        if !query.community.is_empty() {
            sql.push_str(&format!(" and r.community_id = ${}", params.len() + 1));
            params.push(&query.community);
        }
        sql.push_str(&format!("{}${}", sql::SEARCH_ORDER, params.len() + 1));
        params.push(&batch);
        let found = client.query(&sql, &params).await?;
        return Ok(page(decode_rows(found)?, limit));
    }
    let (after_community, after_id) = (part(&after, 0), part(&after, 1));
    let Some(communities) = query.communities() else {
        let found = client
            .query(
                sql::RESIDENTS,
                &[&after_community, &after_id, &((limit + 1) as i64)],
            )
            .await?;
        return Ok(page(decode_rows(found)?, limit));
    };
    let mut rows = Vec::new();
    for community in communities
        .iter()
        .filter(|c| after.is_empty() || c.as_str() >= after_community)
    {
        let from = if community == after_community {
            after_id
        } else {
            ""
        };
        let found = client
            .query(
                sql::RESIDENTS_OF_COMMUNITY,
                &[community, &from, &((limit + 1 - rows.len()) as i64)],
            )
            .await?;
        rows.extend(decode_rows(found)?);
        if rows.len() > limit {
            break;
        }
    }
    Ok(page(rows, limit))
}

pub(super) async fn devices(
    client: &impl GenericClient,
    query: &ListQuery,
) -> Result<Page<DeviceRecord>, StoreError> {
    let limit = query.limit();
    let after = after_parts(query)?;
    let (statement, value) = if !query.gateway.is_empty() {
        (sql::DEVICES_OF_GATEWAY, query.gateway.as_str())
    } else if !query.resident.is_empty() {
        (sql::DEVICES_OF_RESIDENT, query.resident.as_str())
    } else {
        let found = client
            .query(sql::DEVICES, &[&part(&after, 0), &((limit + 1) as i64)])
            .await?;
        let rows = found
            .iter()
            .map(|row| {
                let id: &str = row.get(0);
                Ok((id.as_bytes().to_vec(), decode("device", row.get(1))?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        return Ok(page(rows, limit));
    };
    let found = client
        .query(
            statement,
            &[&value, &part(&after, 1), &((limit + 1) as i64)],
        )
        .await?;
    let rows = found
        .iter()
        .map(|row| {
            let key = listing::key(&[row.get(0), row.get(1)]);
            Ok((key, decode("device", row.get(2))?))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(page(rows, limit))
}

pub(super) async fn staff(
    client: &impl GenericClient,
    query: &ListQuery,
) -> Result<Page<Staff>, StoreError> {
    let keep = |s: &Staff| query.wants_staff(s);
    if query.community.is_empty() {
        return walk_ids(client, "staff", sql::STAFF, &[], None, query, keep).await;
    }
    if !query.in_scope(&query.community) {
        return Ok(Page {
            items: Vec::new(),
            next: None,
        });
    }
    walk_ids(
        client,
        "staff",
        sql::STAFF_OF_COMMUNITY,
        &[&query.community],
        Some(&query.community),
        query,
        keep,
    )
    .await
}

pub(super) async fn gateways(
    client: &impl GenericClient,
    query: &ListQuery,
) -> Result<Page<GatewayRecord>, StoreError> {
    walk_ids(
        client,
        "gateway",
        sql::GATEWAYS,
        &[],
        None,
        query,
        |g: &GatewayRecord| query.wants_gateway(g),
    )
    .await
}

pub(super) async fn places(
    client: &impl GenericClient,
    query: &ListQuery,
) -> Result<Page<Place>, StoreError> {
    walk_ids(
        client,
        "place",
        sql::PLACES,
        &[],
        None,
        query,
        |p: &Place| query.wants_place(p),
    )
    .await
}

pub(super) async fn enrolled(client: &impl GenericClient) -> Result<Vec<Resident>, StoreError> {
    client
        .query(sql::ENROLLED, &[])
        .await?
        .iter()
        .map(|row| decode("resident", row.get(0)))
        .collect()
}

/// Directory records of one table, written by [`PgStore::directory_write`]
/// with the columns and side tables their lists are paged by.
pub(crate) struct Upsert {
    pub(crate) table: &'static str,
    pub(crate) key: &'static str,
    pub(crate) ids: Vec<String>,
    pub(crate) bodies: Vec<Vec<u8>>,
    /// Index columns beside `body`, one value per record.
    pub(crate) columns: Vec<(&'static str, Vec<String>)>,
    /// Multi-valued indexes, replaced whole for these records.
    pub(super) sides: Vec<Side>,
}

impl Upsert {
    pub(crate) fn of<M: Message>(
        table: &'static str,
        records: &[M],
        id: impl Fn(&M) -> &str,
    ) -> Self {
        let (ids, bodies) = records
            .iter()
            .map(|r| (id(r).to_string(), r.encode_to_vec()))
            .unzip();
        Self {
            table,
            key: "id",
            ids,
            bodies,
            columns: Vec::new(),
            sides: Vec::new(),
        }
    }

    pub(crate) fn token(digest: &str, record: &TokenRecord) -> Self {
        Self {
            table: "tokens",
            key: "digest",
            ids: vec![digest.to_string()],
            bodies: vec![record.encode_to_vec()],
            columns: Vec::new(),
            sides: Vec::new(),
        }
    }
}
