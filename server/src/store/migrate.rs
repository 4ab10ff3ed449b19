//! Moving up: `anxin-server migrate` copies a sled store into an empty
//! PostgreSQL database, record for record (the same protobuf bytes, the
//! same alert numbers, event commit order, audit and downlink ids), in one
//! transaction: the target has all of it or none.
//!
//! The directory's index columns and side tables (filtered, paged lists)
//! are built from the copied records in the same transaction, as schema
//! version 5's backfill does.
//!
//! Checked twice: every kind of record is counted on both sides, and the
//! report over all alerts (`reports::to_csv`) is computed from each store
//! and must be the same text.

use prost::Message;

use super::{
    EventDay, OutboxItem, Storage, StoreError, StoredEvent, decode, offer_deadline,
    postgres::PgStore, sled::SledStore,
};
use anxin_proto::v1::{
    Alert, AuditEntry, CheckinDay, Downlink, SignOfLife, Visit, VisitPlan, VitalDay,
};

/// Rows written per statement.
const CHUNK: usize = 2_000;

/// One kind of record, counted on both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    pub kind: &'static str,
    pub sled: u64,
    pub postgres: u64,
}

#[derive(Debug)]
pub struct Migration {
    pub tallies: Vec<Tally>,
    pub report_before: String,
    pub report_after: String,
}

impl Migration {
    /// Every count matches and the report reads the same.
    pub fn checked(&self) -> bool {
        self.tallies.iter().all(|t| t.sled == t.postgres) && self.report_before == self.report_after
    }
}

/// The tables of the target, in the order they are filled and counted.
const KINDS: &[&str] = &[
    "places",
    "residents",
    "devices",
    "gateways",
    "staff",
    "tokens",
    "alerts",
    "incidents",
    "events",
    "downlinks",
    "audit",
    "outbox",
    "signs_of_life",
    "checkin_days",
    "visit_plans",
    "visits",
    "event_days",
    "signal_states",
    "vital_days",
];

/// Walks `tree`, decoding each record as `M` (the copy keeps the stored
/// bytes), and hands `insert` CHUNK of them at a time; how many there were.
async fn copy_tree<M: Message + Default>(
    tree: &sled::Tree,
    what: &str,
    mut insert: impl AsyncFnMut(&[(M, Vec<u8>)]) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut copied = 0u64;
    for item in tree.iter() {
        let (_, value) = item?;
        chunk.push((decode(what, &value)?, value.to_vec()));
        if chunk.len() == CHUNK {
            insert(&chunk).await?;
            copied += chunk.len() as u64;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        insert(&chunk).await?;
        copied += chunk.len() as u64;
    }
    Ok(copied)
}

fn split_key(key: &[u8]) -> Result<(String, u64), StoreError> {
    let bad = || StoreError::Refused(format!("a store key of {} bytes has no id", key.len()));
    if key.len() < 9 || key[key.len() - 9] != 0 {
        return Err(bad());
    }
    let (name, rest) = key.split_at(key.len() - 9);
    let id = u64::from_be_bytes(rest[1..].try_into().map_err(|_| bad())?);
    Ok((String::from_utf8_lossy(name).into_owned(), id))
}

/// Copies `from` into `to`, which must hold no records yet; `progress`
/// hears each kind as it is copied, with its count.
pub async fn sled_to_postgres(
    from: &SledStore,
    to: &PgStore,
    ack_target_ms: i64,
    progress: impl Fn(&str, u64),
) -> Result<Migration, StoreError> {
    let mut client = to.pool.get().await?;
    let filled: i64 = client
        .query_one(
            "select (select count(*) from events) + (select count(*) from alerts)
                  + (select count(*) from places) + (select count(*) from audit)",
            &[],
        )
        .await?
        .get(0);
    if filled > 0 {
        return Err(StoreError::Refused(
            "the PostgreSQL database already holds records; migrate into an empty one".into(),
        ));
    }
    let report = |alerts: &[Alert]| {
        crate::domain::reports::to_csv(&crate::domain::reports::compute(
            alerts,
            "",
            0,
            i64::MAX,
            ack_target_ms,
        ))
    };
    let report_before = report(&Storage::alerts(from, &[])?);

    let tx = client.transaction().await?;
    let directory = [
        ("places", &from.directory.places),
        ("residents", &from.directory.residents),
        ("devices", &from.directory.devices),
        ("gateways", &from.directory.gateways),
        ("staff", &from.directory.staff),
    ];
    for (table, tree) in directory {
        let mut ids = Vec::new();
        let mut bodies = Vec::new();
        for item in tree.iter() {
            let (key, value) = item?;
            ids.push(String::from_utf8_lossy(&key).into_owned());
            bodies.push(value.to_vec());
        }
        progress(table, ids.len() as u64);
        for (ids, bodies) in ids.chunks(CHUNK).zip(bodies.chunks(CHUNK)) {
            tx.execute(
                &format!(
                    "insert into {table} (id, body) select * from unnest($1::text[], $2::bytea[])"
                ),
                &[&ids, &bodies],
            )
            .await?;
        }
    }
    let mut digests = Vec::new();
    let mut bodies = Vec::new();
    for item in from.directory.tokens.iter() {
        let (key, value) = item?;
        digests.push(String::from_utf8_lossy(&key).into_owned());
        bodies.push(value.to_vec());
    }
    progress("tokens", digests.len() as u64);
    tx.execute(
        "insert into tokens (digest, body) select * from unnest($1::text[], $2::bytea[])",
        &[&digests, &bodies],
    )
    .await?;

    let mut alerts = Vec::new();
    let mut highest = 0i64;
    for item in from.alerts.iter() {
        let (key, value) = item?;
        let number = u64::from_be_bytes(
            key.as_ref()
                .try_into()
                .map_err(|_| StoreError::Refused(format!("an alert key of {} bytes", key.len())))?,
        ) as i64;
        let alert: Alert = decode("alert", &value)?;
        highest = highest.max(number);
        alerts.push((number, alert.state, offer_deadline(&alert), value.to_vec()));
    }
    progress("alerts", alerts.len() as u64);
    for chunk in alerts.chunks(CHUNK) {
        let numbers: Vec<i64> = chunk.iter().map(|a| a.0).collect();
        let states: Vec<i32> = chunk.iter().map(|a| a.1).collect();
        let deadlines: Vec<Option<i64>> = chunk.iter().map(|a| a.2).collect();
        let bodies: Vec<&[u8]> = chunk.iter().map(|a| a.3.as_slice()).collect();
        tx.execute(
            "insert into alerts (number, state, deadline_ms, body)
             select * from unnest($1::bigint[], $2::integer[], $3::bigint[], $4::bytea[])",
            &[&numbers, &states, &deadlines, &bodies],
        )
        .await?;
    }
    tx.execute(
        "update counters set value = $1 where name = 'alert'",
        &[&highest],
    )
    .await?;
    let mut keys = Vec::new();
    let mut numbers = Vec::new();
    for item in from.incidents.iter() {
        let (key, value) = item?;
        keys.push(String::from_utf8_lossy(&key).into_owned());
        numbers.push(u64::from_be_bytes(
            value.as_ref().try_into().map_err(|_| {
                StoreError::Refused("an incident entry is not an alert number".into())
            })?,
        ) as i64);
    }
    progress("incidents", keys.len() as u64);
    tx.execute(
        "insert into incidents (key, number) select * from unnest($1::text[], $2::bigint[])",
        &[&keys, &numbers],
    )
    .await?;

    let mut copied = 0u64;
    let mut batch: Vec<(String, i64, i64, i64, String, Vec<u8>)> = Vec::with_capacity(CHUNK);
    let mut last_commit = 0i64;
    let trees = from.event_trees();
    let mut events = trees.iter().flat_map(|tree| tree.iter()).peekable();
    while let Some(item) = events.next() {
        let (key, value) = item?;
        let (device_id, seq) = split_key(&key)?;
        let mut event: StoredEvent = decode("event", &value)?;
        let commit_index = event.commit_index as i64;
        last_commit = last_commit.max(commit_index);
        event.commit_index = 0;
        batch.push((
            device_id,
            (seq ^ (1 << 63)) as i64,
            commit_index,
            event.received_ms,
            event.alert_id.clone(),
            event.encode_to_vec(),
        ));
        if batch.len() == CHUNK || events.peek().is_none() {
            let devices: Vec<&str> = batch.iter().map(|e| e.0.as_str()).collect();
            let seqs: Vec<i64> = batch.iter().map(|e| e.1).collect();
            let commits: Vec<i64> = batch.iter().map(|e| e.2).collect();
            let received: Vec<i64> = batch.iter().map(|e| e.3).collect();
            let alert_ids: Vec<&str> = batch.iter().map(|e| e.4.as_str()).collect();
            let bodies: Vec<&[u8]> = batch.iter().map(|e| e.5.as_slice()).collect();
            tx.execute(
                "insert into events (device_id, seq_key, commit_index, received_ms, alert_id, body)
                 select * from unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                                      $5::text[], $6::bytea[])",
                &[&devices, &seqs, &commits, &received, &alert_ids, &bodies],
            )
            .await?;
            copied += batch.len() as u64;
            batch.clear();
            progress("events", copied);
        }
    }
    tx.execute(
        "select setval('event_commit_index', greatest($1::bigint, 1))",
        &[&last_commit],
    )
    .await?;

    let mut downlinks = 0u64;
    let mut last_downlink = 0i64;
    for item in from.downlinks.iter() {
        let (key, value) = item?;
        let (gateway_id, _) = split_key(&key)?;
        let downlink: Downlink = decode("downlink", &value)?;
        let id = downlink.downlink_id as i64;
        last_downlink = last_downlink.max(id);
        let ack = downlink.ack.unwrap_or_default().encode_to_vec();
        tx.execute(
            "insert into downlinks (id, gateway_id, body) values ($1, $2, $3)",
            &[&id, &gateway_id, &ack],
        )
        .await?;
        downlinks += 1;
    }
    progress("downlinks", downlinks);
    tx.execute(
        "select setval(pg_get_serial_sequence('downlinks', 'id'), greatest($1::bigint, 1))",
        &[&last_downlink],
    )
    .await?;

    let mut entries: Vec<AuditEntry> = Vec::new();
    let mut last_audit = 0i64;
    let mut audited = 0u64;
    let mut head = String::new();
    let mut audit = super::sled::audit_entries(&from.audit).peekable();
    while let Some(entry) = audit.next() {
        let entry = entry?;
        last_audit = last_audit.max(entry.id as i64);
        if !entry.hash.is_empty() {
            head = entry.hash.clone();
        }
        entries.push(entry);
        if entries.len() == CHUNK || audit.peek().is_none() {
            let ids: Vec<i64> = entries.iter().map(|e| e.id as i64).collect();
            let at: Vec<i64> = entries.iter().map(|e| e.at_ms).collect();
            let actors: Vec<&str> = entries.iter().map(|e| e.actor.as_str()).collect();
            let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
            let targets: Vec<&str> = entries.iter().map(|e| e.target.as_str()).collect();
            let bodies: Vec<Vec<u8>> = entries.iter().map(|e| e.encode_to_vec()).collect();
            tx.execute(
                "insert into audit (id, at_ms, actor, action, target, body)
                 select * from unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[],
                                      $5::text[], $6::bytea[])",
                &[&ids, &at, &actors, &actions, &targets, &bodies],
            )
            .await?;
            audited += entries.len() as u64;
            entries.clear();
            progress("audit", audited);
        }
    }
    tx.execute(
        "select setval(pg_get_serial_sequence('audit', 'id'), greatest($1::bigint, 1))",
        &[&last_audit],
    )
    .await?;
    // The chain goes on from the copied entries, and starts where
    // retention left it.
    let anchor = Storage::audit_anchor(from)?;
    if let Some(anchor) = anchor.as_ref().filter(|_| head.is_empty()) {
        // Every entry was pruned: the next one follows the anchor.
        head = anchor.hash.clone();
    }
    tx.execute("update audit_head set hash = $1", &[&head])
        .await?;
    if let Some(anchor) = anchor {
        tx.execute(
            "insert into meta (key, value) values ('audit_anchor', $1)",
            &[&anchor.encode()],
        )
        .await?;
    }

    let mut outbox = 0u64;
    for item in from.outbox.iter() {
        let (_, value) = item?;
        let item: OutboxItem = decode("outbox item", &value)?;
        let item = OutboxItem {
            lease_until_ms: 0,
            ..item
        };
        tx.execute(
            "insert into outbox (delivery_id, next_at_ms, body) values ($1, $2, $3)",
            &[&item.delivery_id, &item.next_at_ms, &item.encode_to_vec()],
        )
        .await?;
        outbox += 1;
    }
    progress("outbox", outbox);

    // Residents who live alone, and what retention keeps of pruned events.
    let copied = copy_tree(
        &from.signs,
        "sign of life",
        async |chunk: &[(SignOfLife, Vec<u8>)]| {
            let ids: Vec<&str> = chunk.iter().map(|(s, _)| s.resident_id.as_str()).collect();
            let at: Vec<i64> = chunk.iter().map(|(s, _)| s.at_ms).collect();
            let bodies: Vec<&[u8]> = chunk.iter().map(|(_, b)| b.as_slice()).collect();
            tx.execute(
                "insert into signs_of_life (resident_id, at_ms, body)
             select * from unnest($1::text[], $2::bigint[], $3::bytea[])",
                &[&ids, &at, &bodies],
            )
            .await?;
            Ok(())
        },
    )
    .await?;
    progress("signs_of_life", copied);
    let copied = copy_tree(
        &from.checkin_days,
        "check-in day",
        async |chunk: &[(CheckinDay, Vec<u8>)]| {
            let days: Vec<i32> = chunk.iter().map(|(d, _)| d.day).collect();
            let ids: Vec<&str> = chunk.iter().map(|(d, _)| d.resident_id.as_str()).collect();
            let bodies: Vec<&[u8]> = chunk.iter().map(|(_, b)| b.as_slice()).collect();
            tx.execute(
                "insert into checkin_days (day, resident_id, body)
             select * from unnest($1::integer[], $2::text[], $3::bytea[])",
                &[&days, &ids, &bodies],
            )
            .await?;
            Ok(())
        },
    )
    .await?;
    progress("checkin_days", copied);
    let copied = copy_tree(
        &from.visit_plans,
        "visit plan",
        async |chunk: &[(VisitPlan, Vec<u8>)]| {
            let ids: Vec<&str> = chunk.iter().map(|(p, _)| p.id.as_str()).collect();
            let bodies: Vec<&[u8]> = chunk.iter().map(|(_, b)| b.as_slice()).collect();
            tx.execute(
                "insert into visit_plans (id, body) select * from unnest($1::text[], $2::bytea[])",
                &[&ids, &bodies],
            )
            .await?;
            Ok(())
        },
    )
    .await?;
    progress("visit_plans", copied);
    let copied = copy_tree(
        &from.visits,
        "visit",
        async |chunk: &[(Visit, Vec<u8>)]| {
            let days: Vec<i32> = chunk.iter().map(|(v, _)| v.day).collect();
            let plans: Vec<&str> = chunk.iter().map(|(v, _)| v.plan_id.as_str()).collect();
            let bodies: Vec<&[u8]> = chunk.iter().map(|(_, b)| b.as_slice()).collect();
            tx.execute(
                "insert into visits (day, plan_id, body)
             select * from unnest($1::integer[], $2::text[], $3::bytea[])",
                &[&days, &plans, &bodies],
            )
            .await?;
            Ok(())
        },
    )
    .await?;
    progress("visits", copied);
    let copied = copy_tree(
        &from.event_days,
        "event day",
        async |chunk: &[(EventDay, Vec<u8>)]| {
            let days: Vec<EventDay> = chunk.iter().map(|(d, _)| d.clone()).collect();
            super::postgres::merge_event_days(&tx, &days).await
        },
    )
    .await?;
    progress("event_days", copied);
    let copied = copy_tree(
        &from.vital_days,
        "vital day",
        async |chunk: &[(VitalDay, Vec<u8>)]| {
            let residents: Vec<&str> = chunk.iter().map(|(d, _)| d.resident_id.as_str()).collect();
            let signs: Vec<&str> = chunk.iter().map(|(d, _)| d.sign.as_str()).collect();
            let days: Vec<i32> = chunk.iter().map(|(d, _)| d.day).collect();
            let mins: Vec<f64> = chunk.iter().map(|(d, _)| d.min).collect();
            let maxes: Vec<f64> = chunk.iter().map(|(d, _)| d.max).collect();
            let sums: Vec<f64> = chunk.iter().map(|(d, _)| d.sum).collect();
            let counts: Vec<i64> = chunk.iter().map(|(d, _)| d.count as i64).collect();
            tx.execute(
                "insert into vital_days (resident_id, sign, day, min, max, sum, count)
             select * from unnest($1::text[], $2::text[], $3::int[], $4::float8[],
                                  $5::float8[], $6::float8[], $7::bigint[])",
                &[&residents, &signs, &days, &mins, &maxes, &sums, &counts],
            )
            .await?;
            Ok(())
        },
    )
    .await?;
    progress("vital_days", copied);
    // Rule states are the rules' own bytes (not protobuf): copied as they are.
    let mut copied = 0u64;
    for item in from.signal_states.iter() {
        let (key, body) = item?;
        tx.execute(
            "insert into signal_states (key, body) values ($1, $2)",
            &[&String::from_utf8_lossy(&key).as_ref(), &body.as_ref()],
        )
        .await?;
        copied += 1;
    }
    progress("signal_states", copied);

    // The filtered lists' columns and side tables, from the records copied.
    super::postgres::listing::backfill(&tx).await?;
    tx.commit().await?;

    let sled_counts = [
        from.directory.places.len(),
        from.directory.residents.len(),
        from.directory.devices.len(),
        from.directory.gateways.len(),
        from.directory.staff.len(),
        from.directory.tokens.len(),
        from.alerts.len(),
        from.incidents.len(),
        from.event_trees().iter().map(sled::Tree::len).sum(),
        from.downlinks.len(),
        super::sled::audit_entries(&from.audit).count(),
        from.outbox.len(),
        from.signs.len(),
        from.checkin_days.len(),
        from.visit_plans.len(),
        from.visits.len(),
        from.event_days.len(),
        from.signal_states.len(),
        from.vital_days.len(),
    ];
    let mut tallies = Vec::new();
    for (kind, sled) in KINDS.iter().zip(sled_counts) {
        let postgres: i64 = client
            .query_one(&format!("select count(*) from {kind}"), &[])
            .await?
            .get(0);
        tallies.push(Tally {
            kind,
            sled: sled as u64,
            postgres: postgres as u64,
        });
    }
    drop(client);
    let report_after = report(&Storage::alerts(to, &[])?);
    Ok(Migration {
        tallies,
        report_before,
        report_after,
    })
}
