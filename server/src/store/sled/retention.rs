//! Retention on sled: the indexes that let old records be found without
//! reading the rest, and the pruning batches (`crate::tasks::retention` decides
//! when and how much).
//!
//! - plain events are in spans of receipt time (see `partitions`): a span
//!   behind the cut-off is summarised in batches, then dropped whole.
//! - `events_by_time`: `received ms (u64 BE) ‖ event key` → the event's
//!   kind (i32 BE): every event in `events` that belongs to no alert (a
//!   cancel with nothing to cancel; plain events of stores written before
//!   spans), oldest first. A batch is pruned and summarised from these
//!   keys alone.
//! - `alert_events`: `alert number (u64 BE) ‖ event key` → (): the events
//!   of each alert, removed with it.
//! - `event_days`: `device_id ‖ 0x00 ‖ day (u32 BE) ‖ kind (u32 BE)` →
//!   [`EventDay`]; `event_days_by_day`: `day ‖ device_id ‖ 0x00 ‖ kind` → ().
//!
//! - the audit log is pruned from its start, in id order; the last entry
//!   removed becomes the chain's anchor (`chain-anchor` in `audit`), in the
//!   same transaction.
//!
//! Each index entry is written in the transaction of its event, and each
//! batch removes records with their index entries in one transaction.

use anxin_proto::v1::Alert;
use prost::Message;
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionalTree},
};

use super::{
    CHAIN_ANCHOR, SledStore, abort, audit_entries,
    partitions::{Span, fold_key, fold_mark, read_fold_mark},
};
use crate::store::{StoreError, decode};

use crate::{
    domain::lifecycle,
    store::{AuditAnchor, EventDay, StoredEvent, closed_ms},
};

pub(super) fn by_time_key(received_ms: i64, event_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + event_key.len());
    key.extend_from_slice(&(received_ms.max(0) as u64).to_be_bytes());
    key.extend_from_slice(event_key);
    key
}

pub(super) fn alert_event_key(alert_number: u64, event_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + event_key.len());
    key.extend_from_slice(&alert_number.to_be_bytes());
    key.extend_from_slice(event_key);
    key
}

fn day_key(day: &EventDay) -> Vec<u8> {
    let mut key = Vec::with_capacity(day.device_id.len() + 9);
    key.extend_from_slice(day.device_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&(day.day.max(0) as u32).to_be_bytes());
    key.extend_from_slice(&(day.kind as u32).to_be_bytes());
    key
}

pub(super) fn by_day_key(day: &EventDay) -> Vec<u8> {
    let mut key = Vec::with_capacity(day.device_id.len() + 9);
    key.extend_from_slice(&(day.day.max(0) as u32).to_be_bytes());
    key.extend_from_slice(day.device_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&(day.kind as u32).to_be_bytes());
    key
}

/// The `by_day` key's `day_key`: same parts, device first.
fn day_key_of_by_day(by_day: &[u8]) -> Vec<u8> {
    let (day, rest) = by_day.split_at(4);
    let (device_nul, kind) = rest.split_at(rest.len() - 4);
    let mut key = Vec::with_capacity(by_day.len());
    key.extend_from_slice(device_nul);
    key.extend_from_slice(day);
    key.extend_from_slice(kind);
    key
}

/// The kind of an event, as `events_by_time` keeps it.
pub(super) fn kind_value(event: &StoredEvent) -> [u8; 4] {
    let kind = event
        .uplink
        .as_ref()
        .and_then(|u| u.event.as_ref())
        .map_or(0, |e| e.kind);
    kind.to_be_bytes()
}

/// The device of an event key (`device_id ‖ 0x00 ‖ seq`).
fn device_of(event_key: &[u8]) -> &[u8] {
    &event_key[..event_key.len().saturating_sub(9)]
}

/// The index entry an event gets when it is committed.
pub(super) fn index_key(event_key: &[u8], event: &StoredEvent) -> (bool, Vec<u8>) {
    match crate::store::alert_number(&event.alert_id) {
        Some(number) if !event.alert_id.is_empty() => (false, alert_event_key(number, event_key)),
        _ => (true, by_time_key(event.received_ms, event_key)),
    }
}

/// Builds the retention indexes for a store written before they existed.
pub(super) fn ensure_indexes(store: &SledStore) -> Result<(), StoreError> {
    const KEY: &str = "retention_index";
    if store.meta.get(KEY)?.is_some() {
        return Ok(());
    }
    let mut built = 0u64;
    for item in store.events.iter() {
        let (key, bytes) = item?;
        let event: StoredEvent = decode("event", &bytes)?;
        let (plain, index) = index_key(&key, &event);
        if plain {
            store.events_by_time.insert(index, &kind_value(&event))?;
        } else {
            store.alert_events.insert(index, &[])?;
        }
        built += 1;
    }
    store.meta.insert(KEY, b"1")?;
    if built > 0 {
        tracing::info!(events = built, "retention indexes built for an older store");
    }
    Ok(())
}

/// Summarises and drops the spans that end by `before_ms`, then prunes
/// `events` one by one; up to `limit` events in all.
pub(super) fn prune_events(
    store: &SledStore,
    before_ms: i64,
    utc_offset_minutes: i32,
    limit: usize,
) -> Result<u64, StoreError> {
    let mut pruned = 0;
    for span in store.partitions.claim(&store.meta, before_ms)? {
        if pruned >= limit {
            return Ok(pruned as u64);
        }
        pruned += fold_span(store, &span, utc_offset_minutes, limit - pruned)?;
    }
    if pruned < limit {
        pruned += prune_one_by_one(store, before_ms, utc_offset_minutes, limit - pruned)?;
    }
    Ok(pruned as u64)
}

/// Summarises up to `limit` more events of a claimed span; drops it once
/// all are (unless a backup is copying it: a later run does). Returns how
/// many it summarised.
fn fold_span(
    store: &SledStore,
    span: &Span,
    utc_offset_minutes: i32,
    limit: usize,
) -> Result<usize, StoreError> {
    let mark_key = fold_key(span);
    let mark = store.meta.get(&mark_key)?;
    let (done, last) = mark.as_deref().map_or((false, &[][..]), read_fold_mark);
    let mut folded = 0;
    if !done {
        let after = (
            std::ops::Bound::Excluded(last),
            std::ops::Bound::<&[u8]>::Unbounded,
        );
        let batch: Vec<(sled::IVec, sled::IVec)> = if last.is_empty() {
            span.tree.iter().take(limit).collect::<Result<_, _>>()?
        } else {
            span.tree
                .range::<&[u8], _>(after)
                .take(limit)
                .collect::<Result<_, _>>()?
        };
        folded = batch.len();
        let days = batch
            .iter()
            .map(|(key, bytes)| {
                let event: StoredEvent = decode("event", bytes)?;
                let device = String::from_utf8_lossy(device_of(key));
                Ok(EventDay::one(
                    &device,
                    event.received_ms,
                    i32::from_be_bytes(kind_value(&event)),
                    utc_offset_minutes,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let days = EventDay::fold(days);
        let finished = folded < limit;
        let mark = fold_mark(finished, batch.last().map_or(last, |(key, _)| key));
        (&store.event_days, &store.event_days_by_day, &store.meta).transaction(
            |(event_days, by_day, meta)| {
                merge_days(event_days, by_day, &days)?;
                meta.insert(mark_key.as_slice(), mark.as_slice())?;
                Ok(())
            },
        )?;
        if !finished {
            return Ok(folded);
        }
    }
    if store.partitions.forget(span) {
        store.db.drop_tree(span.name())?;
        store.meta.remove(&mark_key)?;
    }
    Ok(folded)
}

/// Adds each day to its device's summary, as one step of a transaction.
fn merge_days(
    event_days: &TransactionalTree,
    by_day: &TransactionalTree,
    days: &[EventDay],
) -> Result<(), ConflictableTransactionError<StoreError>> {
    for day in days {
        let key = day_key(day);
        let mut merged = day.clone();
        match event_days.get(&key)? {
            Some(bytes) => {
                let old: EventDay = decode("event day", &bytes).map_err(abort)?;
                merged.merge(&old);
            }
            None => {
                by_day.insert(by_day_key(day), &[])?;
            }
        }
        event_days.insert(key, merged.encode_to_vec())?;
    }
    Ok(())
}

fn prune_one_by_one(
    store: &SledStore,
    before_ms: i64,
    utc_offset_minutes: i32,
    limit: usize,
) -> Result<usize, StoreError> {
    let end = (before_ms.max(0) as u64).to_be_bytes();
    let gone: Vec<(sled::IVec, sled::IVec)> = store
        .events_by_time
        .range(..end)
        .take(limit)
        .collect::<Result<_, _>>()?;
    if gone.is_empty() {
        return Ok(0);
    }
    let days = EventDay::fold(gone.iter().map(|(key, kind)| {
        let received_ms = u64::from_be_bytes(key[..8].try_into().expect("8-byte time")) as i64;
        let kind = kind.as_ref().try_into().map_or(0, i32::from_be_bytes);
        let device = String::from_utf8_lossy(device_of(&key[8..]));
        EventDay::one(&device, received_ms, kind, utc_offset_minutes)
    }));
    (
        &store.events,
        &store.events_by_time,
        &store.event_days,
        &store.event_days_by_day,
    )
        .transaction(|(events, by_time, event_days, by_day)| {
            for (key, _) in &gone {
                events.remove(&key[8..])?;
                by_time.remove(key)?;
            }
            merge_days(event_days, by_day, &days)
        })?;
    Ok(gone.len())
}

pub(super) fn prune_event_days(
    store: &SledStore,
    before_day: i32,
    limit: usize,
) -> Result<u64, StoreError> {
    let end = (before_day.max(0) as u32).to_be_bytes();
    let keys: Vec<sled::IVec> = store
        .event_days_by_day
        .range(..end)
        .keys()
        .take(limit)
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Ok(0);
    }
    (&store.event_days, &store.event_days_by_day).transaction(|(event_days, by_day)| {
        for key in &keys {
            event_days.remove(day_key_of_by_day(key))?;
            by_day.remove(key)?;
        }
        Ok(())
    })?;
    Ok(keys.len() as u64)
}

/// Walks the alerts oldest first (numbers follow creation) and stops at
/// the first created after `before_ms`: an alert closed before then was
/// created before then too.
pub(super) fn prune_alerts(
    store: &SledStore,
    before_ms: i64,
    limit: usize,
) -> Result<(u64, u64), StoreError> {
    let mut doomed = Vec::new();
    for item in store.alerts.iter() {
        if doomed.len() >= limit {
            break;
        }
        let (key, bytes) = item?;
        let alert: Alert = decode("alert", &bytes)?;
        if alert.created_ms >= before_ms {
            break;
        }
        if lifecycle::is_open(alert.state()) || closed_ms(&alert) >= before_ms {
            continue;
        }
        let events: Vec<sled::IVec> = store
            .alert_events
            .scan_prefix(&key)
            .keys()
            .collect::<Result<_, _>>()?;
        doomed.push((key, events));
    }
    if doomed.is_empty() {
        return Ok((0, 0));
    }
    (&store.alerts, &store.alert_events, &store.events).transaction(
        |(alerts, alert_events, events)| {
            for (key, index) in &doomed {
                // Closed states are final: what was chosen above is still
                // closed, so it need not be read again here.
                alerts.remove(key)?;
                for entry in index {
                    alert_events.remove(entry)?;
                    events.remove(&entry[8..])?;
                }
            }
            Ok(())
        },
    )?;
    let events = doomed.iter().map(|(_, e)| e.len() as u64).sum();
    Ok((doomed.len() as u64, events))
}

pub(super) fn event_days(store: &SledStore, device_id: &str) -> Result<Vec<EventDay>, StoreError> {
    let mut prefix = device_id.as_bytes().to_vec();
    prefix.push(0);
    store
        .event_days
        .scan_prefix(prefix)
        .values()
        .map(|bytes| decode("event day", &bytes?))
        .collect()
}

/// Up to `limit` of the oldest audit entries written before `before_ms`,
/// removed with the anchor moved to the last of them in one transaction.
/// Appends only add at the end (ids grow), so reading the first entries
/// outside the transaction is safe; one pruner runs at a time.
pub(super) fn prune_audit(
    store: &SledStore,
    before_ms: i64,
    limit: usize,
) -> Result<u64, StoreError> {
    let mut gone = Vec::new();
    for entry in audit_entries(&store.audit) {
        let entry = entry?;
        if entry.at_ms >= before_ms || gone.len() == limit {
            break;
        }
        gone.push(entry);
    }
    let Some(last) = gone.last() else {
        return Ok(0);
    };
    let anchor = AuditAnchor {
        id: last.id,
        hash: last.hash.clone(),
    }
    .encode();
    store.audit.transaction(|audit| {
        for entry in &gone {
            audit.remove(&entry.id.to_be_bytes())?;
        }
        audit.insert(CHAIN_ANCHOR, anchor.as_slice())?;
        Ok::<_, ConflictableTransactionError<StoreError>>(())
    })?;
    Ok(gone.len() as u64)
}
