//! [`Storage`] on PostgreSQL: events with their incident decisions (an
//! advisory lock per incident), alerts with their row locked, deadlines,
//! downlinks, the outbox, retention, backups by `pg_dump`.

use std::collections::HashSet;

use anxin_proto::v1::{Alert, AlertState, AuditEntry, DeviceAck, Downlink, UplinkEvent};
use futures::future::BoxFuture;
use prost::Message;
use tokio::sync::mpsc;

use crate::store::{
    AlertChange, Committed, OutboxItem, RemoteChange, Storage, StoreError, StoredEvent,
    alert_number, decode, incident_key, offer_deadline,
};
use crate::{
    domain::incidents::{self, IncidentPolicy, Origin},
    domain::lifecycle,
    domain::listing::{ListQuery, Page},
};

use super::check;
use super::core::*;

impl Storage for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn commit_plain_events(
        &self,
        gateway_id: &str,
        uplinks: &[UplinkEvent],
        received_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let mut devices = Vec::with_capacity(uplinks.len());
        let mut keys = Vec::with_capacity(uplinks.len());
        let mut bodies = Vec::with_capacity(uplinks.len());
        for uplink in uplinks {
            let event = uplink.event.as_ref().ok_or(StoreError::EmptyEvent)?;
            debug_assert!(!incidents::affects_incidents(event));
            devices.push(event.device_id.clone());
            keys.push(seq_key(event.seq));
            bodies.push(
                StoredEvent {
                    gateway_id: gateway_id.to_string(),
                    received_ms,
                    uplink: Some(uplink.clone()),
                    alert_id: String::new(),
                    commit_index: 0,
                }
                .encode_to_vec(),
            );
        }
        let inserted: HashSet<(String, i64)> = self.block_bounded(async {
            let client = self.pool.get().await?;
            let statement = client
                .prepare_cached(
                    "insert into events (device_id, seq_key, received_ms, body)
                     select d, k, $3, b from unnest($1::text[], $2::bigint[], $4::bytea[]) as t(d, k, b)
                     on conflict do nothing
                     returning device_id, seq_key",
                )
                .await?;
            Ok(client
                .query(&statement, &[&devices, &keys, &received_ms, &bodies])
                .await?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect())
        })?;
        let mut seen = HashSet::with_capacity(uplinks.len());
        Ok(devices
            .into_iter()
            .zip(keys)
            .map(|key| inserted.contains(&key) && seen.insert(key))
            .collect())
    }

    fn commit_event(
        &self,
        gateway_id: &str,
        uplink: &UplinkEvent,
        received_ms: i64,
        origin: &Origin,
        policy: &IncidentPolicy,
    ) -> Result<Committed, StoreError> {
        self.block_bounded(retried(|| {
            self.try_commit_event(gateway_id, uplink, received_ms, origin, policy)
        }))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn event(&self, device_id: &str, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            let row = client
                .query_opt(
                    "select body, commit_index from events where device_id = $1 and seq_key = $2",
                    &[&device_id, &seq_key(seq)],
                )
                .await?;
            row.map(|row| event_of(&row)).transpose()
        })
    }

    fn device_events(&self, device_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            client
                .query(
                    "select body, commit_index from events where device_id = $1 order by seq_key",
                    &[&device_id],
                )
                .await?
                .iter()
                .map(event_of)
                .collect()
        })
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            let count: i64 = client
                .query_one("select count(*) from events", &[])
                .await?
                .get(0);
            Ok(count as u64)
        })
    }

    fn prune_events(
        &self,
        before_ms: i64,
        utc_offset_minutes: i32,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.write(async |tx| {
            let gone = tx
                .query(
                    "delete from events where ctid = any(array(
                         select ctid from events
                         where alert_id = '' and received_ms < $1
                         order by received_ms limit $2
                         for update skip locked))
                     returning body",
                    &[&before_ms, &(limit as i64)],
                )
                .await?;
            let events: Vec<StoredEvent> = gone
                .iter()
                .map(|row| decode("event", row.get::<_, &[u8]>(0)))
                .collect::<Result<_, _>>()?;
            let days = crate::store::EventDay::fold(
                events
                    .iter()
                    .map(|e| crate::store::EventDay::of(e, utc_offset_minutes)),
            );
            merge_event_days(tx, &days).await?;
            Ok(events.len() as u64)
        })
    }

    fn prune_event_days(&self, before_day: i32, limit: usize) -> Result<u64, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            Ok(client
                .execute(
                    "delete from event_days where ctid = any(array(
                         select ctid from event_days where day < $1 limit $2))",
                    &[&before_day, &(limit as i64)],
                )
                .await?)
        })
    }

    /// Oldest first by number (numbers follow creation), stopping at the
    /// first alert created after `before_ms`.
    fn prune_alerts(&self, before_ms: i64, limit: usize) -> Result<(u64, u64), StoreError> {
        self.write(async |tx| {
            let rows = tx
                .query(
                    "select number, body from alerts order by number limit $1",
                    &[&(limit as i64 * 4 + 16)],
                )
                .await?;
            let mut doomed: Vec<i64> = Vec::new();
            let mut ids: Vec<String> = Vec::new();
            for row in &rows {
                let alert: Alert = decode("alert", row.get::<_, &[u8]>(1))?;
                if alert.created_ms >= before_ms || doomed.len() >= limit {
                    break;
                }
                if !lifecycle::is_open(alert.state()) && crate::store::closed_ms(&alert) < before_ms
                {
                    doomed.push(row.get(0));
                    ids.push(alert.id);
                }
            }
            if doomed.is_empty() {
                return Ok((0, 0));
            }
            let events = tx
                .execute("delete from events where alert_id = any($1)", &[&ids])
                .await?;
            let alerts = tx
                .execute("delete from alerts where number = any($1)", &[&doomed])
                .await?;
            Ok((alerts, events))
        })
    }

    fn check(&self) -> crate::store::CheckReport {
        let mut report = crate::store::CheckReport::default();
        if let Err(err) = self.block(check::check(&self.pool, &mut report)) {
            report.problem(format!("the check stopped: {err}"));
        }
        report
    }

    /// Walks the oldest entries by id (the primary key), so the cut-off
    /// needs no index on time. One pruner at a time across replicas (an
    /// advisory lock for the transaction): the anchor moves in id order.
    fn prune_audit(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        self.write(async |tx| {
            tx.execute(
                "select pg_advisory_xact_lock(hashtext('anxin.audit.prune'))",
                &[],
            )
            .await?;
            let oldest = tx
                .query(
                    "select id, at_ms from audit order by id limit $1",
                    &[&(limit as i64)],
                )
                .await?;
            let ids: Vec<i64> = oldest
                .iter()
                .take_while(|row| row.get::<_, i64>(1) < before_ms)
                .map(|row| row.get(0))
                .collect();
            let Some(&last) = ids.last() else {
                return Ok(0);
            };
            let body: Vec<u8> = tx
                .query_one("select body from audit where id = $1", &[&last])
                .await?
                .get(0);
            let entry: AuditEntry = decode("audit entry", &body)?;
            let anchor = crate::store::AuditAnchor {
                id: entry.id,
                hash: entry.hash,
            };
            tx.execute("delete from audit where id = any($1)", &[&ids])
                .await?;
            tx.execute(
                "insert into meta (key, value) values ('audit_anchor', $1)
                 on conflict (key) do update set value = excluded.value",
                &[&anchor.encode()],
            )
            .await?;
            Ok(ids.len() as u64)
        })
    }

    fn audit_anchor(&self) -> Result<Option<crate::store::AuditAnchor>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            client
                .query_opt("select value from meta where key = 'audit_anchor'", &[])
                .await?
                .map(|row| crate::store::AuditAnchor::decode(row.get(0)))
                .transpose()
        })
    }

    fn note_positions(&self, positions: &[anxin_proto::v1::Position]) -> Result<(), StoreError> {
        use prost::Message;
        let latest = crate::store::latest_positions(positions);
        if latest.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = latest.iter().map(|p| p.device_id.as_str()).collect();
        let at: Vec<i64> = latest.iter().map(|p| p.at_ms).collect();
        let bodies: Vec<Vec<u8>> = latest.iter().map(|p| p.encode_to_vec()).collect();
        self.block_bounded(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "insert into positions (device_id, at_ms, body)
                     select * from unnest($1::text[], $2::bigint[], $3::bytea[])
                     on conflict (device_id) do update
                       set at_ms = excluded.at_ms, body = excluded.body
                       where positions.at_ms <= excluded.at_ms",
                    &[&ids, &at, &bodies],
                )
                .await?;
            Ok(())
        })
    }

    fn last_position(
        &self,
        device_id: &str,
    ) -> Result<Option<anxin_proto::v1::Position>, StoreError> {
        self.get_one(
            "position",
            "select body from positions where device_id = $1",
            device_id,
        )
    }

    fn event_days(&self, device_id: &str) -> Result<Vec<crate::store::EventDay>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            Ok(client
                .query(
                    "select day, kind, events, first_ms, last_ms from event_days
                     where device_id = $1 order by day, kind",
                    &[&device_id],
                )
                .await?
                .iter()
                .map(|row| crate::store::EventDay {
                    device_id: device_id.to_string(),
                    day: row.get(0),
                    kind: row.get(1),
                    events: row.get::<_, i64>(2) as u64,
                    first_ms: row.get(3),
                    last_ms: row.get(4),
                })
                .collect())
        })
    }

    fn alert(&self, alert_id: &str) -> Result<Alert, StoreError> {
        let number =
            alert_number(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        self.block(async {
            let client = self.pool.get().await?;
            let row = client
                .query_opt(
                    "select body from alerts where number = $1",
                    &[&(number as i64)],
                )
                .await?
                .ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
            decode("alert", row.get(0))
        })
    }

    fn alerts_page(&self, query: &ListQuery) -> Result<Page<Alert>, StoreError> {
        let before = query
            .before_alert()
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        let states: Vec<i32> = query.states.iter().map(|s| *s as i32).collect();
        let limit = query.limit();
        self.block(async {
            let client = self.pool.get().await?;
            let mut items = Vec::new();
            let mut below = before.min(i64::MAX as u64) as i64;
            let mut looked = 0;
            loop {
                let batch = (limit + 1) as i64;
                let rows = if states.is_empty() {
                    client
                        .query(
                            "select number, body from alerts where number < $1
                             order by number desc limit $2",
                            &[&below, &batch],
                        )
                        .await?
                } else {
                    client
                        .query(
                            "select number, body from alerts
                             where number < $1 and state = any($3)
                             order by number desc limit $2",
                            &[&below, &batch, &states],
                        )
                        .await?
                };
                let exhausted = rows.len() < batch as usize;
                for row in &rows {
                    let number: i64 = row.get(0);
                    if items.len() == limit {
                        let last = items
                            .last()
                            .and_then(|a: &Alert| alert_number(&a.id))
                            .unwrap_or(0);
                        return Ok(Page {
                            items,
                            next: Some(crate::domain::listing::cursor(&last.to_be_bytes())),
                        });
                    }
                    looked += 1;
                    below = number;
                    let alert: Alert = decode("alert", row.get(1))?;
                    if query.wants_alert(&alert) {
                        items.push(alert);
                    }
                }
                if exhausted {
                    return Ok(Page { items, next: None });
                }
                if looked >= crate::domain::listing::SCAN_BUDGET {
                    return Ok(Page {
                        items,
                        next: Some(crate::domain::listing::cursor(
                            &(below as u64).to_be_bytes(),
                        )),
                    });
                }
            }
        })
    }

    fn alerts(&self, states: &[AlertState]) -> Result<Vec<Alert>, StoreError> {
        let states: Vec<i32> = states.iter().map(|s| *s as i32).collect();
        self.block(async {
            let client = self.pool.get().await?;
            let rows = if states.is_empty() {
                client
                    .query("select body from alerts order by number", &[])
                    .await?
            } else {
                client
                    .query(
                        "select body from alerts where state = any($1) order by number",
                        &[&states],
                    )
                    .await?
            };
            rows.iter().map(|row| decode("alert", row.get(0))).collect()
        })
    }

    fn import_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        self.import_alerts(std::slice::from_ref(alert))
    }

    fn import_alerts(&self, alerts: &[Alert]) -> Result<(), StoreError> {
        let mut highest = 0;
        for alert in alerts {
            highest = highest.max(alert_number(&alert.id).ok_or_else(|| {
                StoreError::Refused(format!("alert id `{}` is not a number", alert.id))
            })?);
        }
        // What `write_alert` does for each, as two statements for all.
        let mut numbers = Vec::with_capacity(alerts.len());
        let mut states = Vec::with_capacity(alerts.len());
        let mut deadlines = Vec::with_capacity(alerts.len());
        let mut bodies = Vec::with_capacity(alerts.len());
        let (mut closed_keys, mut closed_numbers) = (Vec::new(), Vec::new());
        for alert in alerts {
            let number = alert_number(&alert.id).unwrap_or_default() as i64;
            numbers.push(number);
            states.push(alert.state);
            deadlines.push(offer_deadline(alert));
            bodies.push(alert.encode_to_vec());
            if !lifecycle::is_open(alert.state()) {
                closed_keys.push(incident_key(alert));
                closed_numbers.push(number);
            }
        }
        self.write(async |tx| {
            tx.execute(
                "insert into alerts (number, state, deadline_ms, body)
                 select * from unnest($1::bigint[], $2::int[], $3::bigint[], $4::bytea[])
                 on conflict (number) do update
                 set state = excluded.state, deadline_ms = excluded.deadline_ms, body = excluded.body",
                &[&numbers, &states, &deadlines, &bodies],
            )
            .await?;
            tx.execute(
                "delete from incidents i using unnest($1::text[], $2::bigint[]) as c(key, number)
                 where i.key = c.key and i.number = c.number",
                &[&closed_keys, &closed_numbers],
            )
            .await?;
            // Numbers taken later continue after the imported ones.
            tx.execute(
                "update counters set value = greatest(value, $1) where name = 'alert'",
                &[&(highest as i64)],
            )
            .await?;
            Ok(())
        })
    }

    fn update_alert_dyn(
        &self,
        alert_id: &str,
        change: AlertChange<'_>,
    ) -> Result<(Alert, Vec<Downlink>), StoreError> {
        let number =
            alert_number(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        self.block_bounded(retried(|| self.try_update_alert(number, alert_id, change)))
    }

    fn due_offers(&self, now_ms: i64) -> Result<(Vec<String>, Option<i64>), StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "(select number, deadline_ms from alerts
                      where deadline_ms is not null and deadline_ms <= $1
                      order by deadline_ms, number)
                     union all
                     (select number, deadline_ms from alerts
                      where deadline_ms is not null and deadline_ms > $1
                      order by deadline_ms, number limit 1)",
                    &[&now_ms],
                )
                .await?;
            let mut due = Vec::new();
            let mut next = None;
            for row in rows {
                let (number, at): (i64, i64) = (row.get(0), row.get(1));
                if at > now_ms {
                    next = Some(at);
                } else {
                    due.push(number.to_string());
                }
            }
            Ok((due, next))
        })
    }

    fn rebase_deadlines(&self, step_ms: i64) -> Result<usize, StoreError> {
        self.write(async |tx| {
            let rows = tx
                .query(
                    "select body from alerts where deadline_ms is not null for update",
                    &[],
                )
                .await?;
            let mut moved = 0;
            for row in rows {
                let mut alert: Alert = decode("alert", row.get(0))?;
                crate::store::storage::rebase_alert(&mut alert, step_ms);
                Self::write_alert(tx, None, &alert).await?;
                moved += 1;
            }
            Ok(moved)
        })
    }

    fn clock_mark(&self) -> Result<Option<anxin_host::clock::Mark>, StoreError> {
        let key = format!("clock@{}", hostname());
        self.block(async {
            let client = self.pool.get().await?;
            Ok(client
                .query_opt("select value from meta where key = $1", &[&key])
                .await?
                .and_then(|row| anxin_host::clock::Mark::decode(row.get(0))))
        })
    }

    fn save_clock_mark(&self, mark: &anxin_host::clock::Mark) -> Result<(), StoreError> {
        // Per host: a mark compares this host's wall clock with its own
        // boot clock, and replicas on other hosts have other clocks.
        let key = format!("clock@{}", hostname());
        let value = mark.encode().to_vec();
        self.block(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "insert into meta (key, value) values ($1, $2)
                     on conflict (key) do update set value = excluded.value",
                    &[&key, &value],
                )
                .await?;
            Ok(())
        })
    }

    fn pending_downlinks(&self, gateway_id: &str) -> Result<Vec<Downlink>, StoreError> {
        self.block_bounded(async {
            let client = self.pool.get().await?;
            client
                .query(
                    "select id, body from downlinks where gateway_id = $1 order by id",
                    &[&gateway_id],
                )
                .await?
                .iter()
                .map(|row| {
                    Ok(Downlink {
                        downlink_id: row.get::<_, i64>(0) as u64,
                        ack: Some(decode::<DeviceAck>("downlink", row.get(1))?),
                    })
                })
                .collect()
        })
    }

    fn enqueue_notifications(&self, items: &[OutboxItem]) -> Result<(), StoreError> {
        self.block_bounded(async {
            let client = self.pool.get().await?;
            Self::insert_outbox(&**client, items).await
        })
    }

    fn claim_notifications(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            // SKIP LOCKED: replicas claiming at once take different rows.
            client
                .query(
                    "with due as (
                         select delivery_id from outbox
                         where next_at_ms <= $1 and lease_until_ms <= $1
                         order by next_at_ms limit $3
                         for update skip locked)
                     update outbox o set lease_until_ms = $1 + $2
                     from due where o.delivery_id = due.delivery_id
                     returning o.body, o.lease_until_ms",
                    &[&now_ms, &lease_ms, &(max as i64)],
                )
                .await?
                .iter()
                .map(|row| {
                    let mut item: OutboxItem = decode("outbox item", row.get(0))?;
                    item.lease_until_ms = row.get(1);
                    Ok(item)
                })
                .collect()
        })
    }

    fn finish_notification(
        &self,
        delivery_id: &str,
        entry: AuditEntry,
    ) -> Result<bool, StoreError> {
        self.write(async |tx| {
            let removed = tx
                .execute("delete from outbox where delivery_id = $1", &[&delivery_id])
                .await?;
            if removed == 0 {
                return Ok(false);
            }
            Self::insert_audit(tx, &entry).await?;
            Ok(true)
        })
    }

    fn retry_notification(&self, item: &OutboxItem) -> Result<(), StoreError> {
        let body = OutboxItem {
            lease_until_ms: 0,
            ..item.clone()
        }
        .encode_to_vec();
        self.block(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "update outbox set next_at_ms = $2, lease_until_ms = 0, body = $3
                     where delivery_id = $1",
                    &[&item.delivery_id, &item.next_at_ms, &body],
                )
                .await?;
            Ok(())
        })
    }

    fn downlink_done(&self, gateway_id: &str, downlink_id: u64) -> Result<(), StoreError> {
        self.block_bounded(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "delete from downlinks where gateway_id = $1 and id = $2",
                    &[&gateway_id, &(downlink_id as i64)],
                )
                .await?;
            Ok(())
        })
    }

    fn remote_changes(&self) -> Option<mpsc::UnboundedReceiver<RemoteChange>> {
        self.feed.lock().expect("feed lock").take()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async {
            let client = self.pool.get().await?;
            client.execute("select 1", &[]).await?;
            Ok(())
        })
    }

    fn probe_commit(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(PgStore::probe_commit(self))
    }
}
