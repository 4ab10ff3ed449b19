//! [`Storage`] on sled: events with their incident decisions, alerts and
//! their indexes in one transaction, deadlines, downlinks, the outbox,
//! retention, backups.

use std::path::Path;

use anxin_proto::v1::{Alert, AlertState, AuditEntry, Downlink, UplinkEvent};
use prost::Message;
use sled::Transactional;

use super::trees::*;
use super::{backup, check, retention, seal};
use crate::store::{
    AlertChange, Change, Committed, OutboxItem, Storage, StoreError, StoredEvent, alert_number,
    decision_audit, decode,
};
use crate::{
    domain::incidents::{self, Decision, IncidentPolicy, Origin},
    domain::lifecycle,
    domain::listing::{ListQuery, Page},
};

impl Storage for SledStore {
    fn backend(&self) -> &'static str {
        "sled"
    }

    /// Commits events that cannot touch an incident (see
    /// [`incidents::affects_incidents`]: telemetry, heartbeats, battery and
    /// fault reports), skipping those already here, in one sled batch into
    /// the span of `received_ms` (see `partitions`). A transaction per
    /// event took sled's exclusive lock each time and made the server the
    /// bottleneck of the whole path (BENCHMARKS.md). Returns, per event,
    /// whether it was new. Durable after [`Store::flush`].
    fn commit_plain_events(
        &self,
        gateway_id: &str,
        uplinks: &[UplinkEvent],
        received_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let _one_at_a_time = self.plain_commits.lock().expect("commit lock poisoned");
        self.partitions
            .with_target(&self.db, received_ms, |span, spans| {
                let mut batch = sled::Batch::default();
                let mut seen = std::collections::HashSet::with_capacity(uplinks.len());
                let mut new = Vec::with_capacity(uplinks.len());
                for uplink in uplinks {
                    let event = uplink.event.as_ref().ok_or(StoreError::EmptyEvent)?;
                    debug_assert!(!incidents::affects_incidents(event));
                    let key = event_key(&event.device_id, event.seq);
                    if !seen.insert(key.clone()) || self.events.contains_key(&key)? {
                        new.push(false);
                        continue;
                    }
                    if spans.iter().try_fold(false, |found, tree| {
                        Ok::<_, sled::Error>(found || tree.contains_key(&key)?)
                    })? {
                        new.push(false);
                        continue;
                    }
                    let stored = StoredEvent {
                        gateway_id: gateway_id.to_string(),
                        received_ms,
                        uplink: Some(uplink.clone()),
                        alert_id: String::new(),
                        commit_index: self.db.generate_id()?,
                    };
                    batch.insert(key.as_slice(), stored.encode_to_vec());
                    new.push(true);
                }
                span.apply_batch(batch)?;
                Ok(new)
            })
    }

    fn retain_events_for(&self, keep_ms: Option<i64>) {
        self.partitions.set_keep(keep_ms);
    }

    /// Commits an event and its incident decision unless it is already here.
    /// Durable after [`Store::flush`].
    fn commit_event(
        &self,
        gateway_id: &str,
        uplink: &UplinkEvent,
        received_ms: i64,
        origin: &Origin,
        policy: &IncidentPolicy,
    ) -> Result<Committed, StoreError> {
        let event = uplink.event.as_ref().ok_or(StoreError::EmptyEvent)?;
        let key = event_key(&event.device_id, event.seq);
        // Only plain commits write spans, and an event's kind decides which
        // commit it takes: this finds the key only if a device reused a seq.
        if self.partitions.contains(&key)? {
            return Ok(Committed::Duplicate);
        }
        let incident = origin.incident_key(&event.device_id);
        let trees = (
            &self.events,
            &self.alerts,
            &self.incidents,
            &self.deadlines,
            &self.audit,
            &self.open_alerts,
            &self.events_by_time,
            &self.alert_events,
        );
        let committed = trees.transaction(
            |(events, alerts, incidents, deadlines, audit, open_index, by_time, alert_events)| {
                if events.get(&key)?.is_some() {
                    return Ok(Committed::Duplicate);
                }
                let open: Option<Alert> = match incidents.get(incident.as_bytes())? {
                    Some(number) => match alerts.get(&number)? {
                        Some(bytes) => Some(decode("alert", &bytes).map_err(abort)?),
                        None => None,
                    },
                    None => None,
                };
                let decision = incidents::decide(event, open.as_ref(), received_ms, policy);
                let alert = match (decision, open) {
                    (Decision::Nothing, _) => None,
                    (Decision::Raise, _) => {
                        let number = events.generate_id()? + 1;
                        let alert =
                            incidents::raise(number, event, gateway_id, origin, received_ms);
                        alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                        incidents.insert(incident.as_bytes(), &number.to_be_bytes())?;
                        reindex(None, &alert, deadlines, incidents, open_index)?;
                        Some(alert)
                    }
                    (decision, Some(before)) => {
                        let mut alert = before.clone();
                        incidents::apply(decision, &mut alert, event, received_ms);
                        let number = alert_number(&alert.id).unwrap_or(0);
                        alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                        reindex(Some(&before), &alert, deadlines, incidents, open_index)?;
                        Some(alert)
                    }
                    (_, None) => None,
                };
                if let Some(alert) = &alert {
                    append_audit(
                        audit,
                        decision_audit(event, alert, decision, gateway_id, received_ms),
                    )?;
                }
                let stored = StoredEvent {
                    gateway_id: gateway_id.to_string(),
                    received_ms,
                    uplink: Some(uplink.clone()),
                    alert_id: alert.as_ref().map(|a| a.id.clone()).unwrap_or_default(),
                    commit_index: events.generate_id()?,
                };
                events.insert(key.as_slice(), stored.encode_to_vec())?;
                match retention::index_key(&key, &stored) {
                    (true, index) => by_time.insert(index, &retention::kind_value(&stored))?,
                    (false, index) => alert_events.insert(index, &[])?,
                };
                Ok(Committed::New {
                    alert: alert.map(|a| Box::new((a, decision))),
                })
            },
        )?;
        Ok(committed)
    }

    /// fsyncs on tokio's blocking pool (sled's `flush_async` starts and
    /// retires a thread of its own per flush under load).
    fn flush(&self) -> futures::future::BoxFuture<'_, Result<(), StoreError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .expect("store flush task panicked")?;
            Ok(())
        })
    }

    fn event(&self, device_id: &str, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        let key = event_key(device_id, seq);
        match self.events.get(&key)? {
            Some(bytes) => Some(bytes),
            None => self.partitions.get(&key)?,
        }
        .map(|bytes| decode("event", &bytes))
        .transpose()
    }

    /// A device's committed events in seq order.
    fn device_events(&self, device_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let mut prefix = device_id.as_bytes().to_vec();
        prefix.push(0);
        let mut keyed = Vec::new();
        self.partitions.with_spans(|spans| {
            for tree in std::iter::once(&self.events).chain(spans.iter().map(|s| &s.tree)) {
                for item in tree.scan_prefix(&prefix) {
                    let (key, bytes) = item?;
                    keyed.push((key, decode("event", &bytes)?));
                }
            }
            Ok::<_, StoreError>(())
        })?;
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keyed.into_iter().map(|(_, event)| event).collect())
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        let spans: usize = self
            .partitions
            .with_spans(|spans| spans.iter().map(|s| s.tree.len()).sum());
        Ok((self.events.len() + spans) as u64)
    }

    fn prune_events(
        &self,
        before_ms: i64,
        utc_offset_minutes: i32,
        limit: usize,
    ) -> Result<u64, StoreError> {
        retention::prune_events(self, before_ms, utc_offset_minutes, limit)
    }

    fn prune_event_days(&self, before_day: i32, limit: usize) -> Result<u64, StoreError> {
        retention::prune_event_days(self, before_day, limit)
    }

    fn prune_alerts(&self, before_ms: i64, limit: usize) -> Result<(u64, u64), StoreError> {
        retention::prune_alerts(self, before_ms, limit)
    }

    fn prune_audit(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        retention::prune_audit(self, before_ms, limit)
    }

    fn audit_anchor(&self) -> Result<Option<crate::store::AuditAnchor>, StoreError> {
        self.audit
            .get(CHAIN_ANCHOR)?
            .map(|bytes| crate::store::AuditAnchor::decode(&bytes))
            .transpose()
    }

    fn event_days(&self, device_id: &str) -> Result<Vec<crate::store::EventDay>, StoreError> {
        retention::event_days(self, device_id)
    }

    fn note_positions(&self, positions: &[anxin_proto::v1::Position]) -> Result<(), StoreError> {
        use prost::Message;
        for position in crate::store::latest_positions(positions) {
            self.positions
                .fetch_and_update(position.device_id.as_bytes(), |old| {
                    let newer = old
                        .and_then(|b| anxin_proto::v1::Position::decode(b).ok())
                        .is_none_or(|o| position.at_ms >= o.at_ms);
                    if newer {
                        Some(position.encode_to_vec())
                    } else {
                        old.map(<[u8]>::to_vec)
                    }
                })?;
        }
        Ok(())
    }

    fn last_position(
        &self,
        device_id: &str,
    ) -> Result<Option<anxin_proto::v1::Position>, StoreError> {
        crate::store::sled::trees::get(&self.positions, "position", device_id)
    }

    fn check(&self) -> crate::store::CheckReport {
        check::check(self)
    }

    fn seal(&self) -> Result<(), StoreError> {
        seal::seal(self)
    }

    fn backup(
        &self,
        dir: &Path,
        progress: &mut dyn FnMut(&str, u64),
    ) -> Result<crate::store::backup::Manifest, StoreError> {
        backup::backup(self, dir, progress)
    }

    fn alert(&self, alert_id: &str) -> Result<Alert, StoreError> {
        let number =
            alert_number(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        let bytes = self
            .alerts
            .get(number.to_be_bytes())?
            .ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        decode("alert", &bytes)
    }

    /// Alerts in creation order, optionally only those in `states`. Open
    /// states are read through `open_alerts`, not the whole history.
    fn alerts(&self, states: &[AlertState]) -> Result<Vec<Alert>, StoreError> {
        let mut out = Vec::new();
        if lifecycle::only_open(states) {
            for key in self.open_alerts.iter().keys() {
                if let Some(bytes) = self.alerts.get(key?)? {
                    let alert: Alert = decode("alert", &bytes)?;
                    if states.contains(&alert.state()) {
                        out.push(alert);
                    }
                }
            }
            return Ok(out);
        }
        for item in self.alerts.iter() {
            let (_, bytes) = item?;
            let alert: Alert = decode("alert", &bytes)?;
            if states.is_empty() || states.contains(&alert.state()) {
                out.push(alert);
            }
        }
        Ok(out)
    }

    fn alerts_page(&self, query: &ListQuery) -> Result<Page<Alert>, StoreError> {
        let before = query
            .before_alert()
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        // The open states through their index, anything else through the
        // history, newest first either way.
        let walked = if lifecycle::only_open(&query.states) {
            &self.open_alerts
        } else {
            &self.alerts
        };
        let limit = query.limit();
        let mut items = Vec::new();
        let mut looked = 0;
        for entry in walked.range(..before.to_be_bytes()).rev() {
            let (key, _) = entry?;
            if items.len() == limit {
                let last: &Alert = items.last().expect("limit > 0");
                let number = alert_number(&last.id).unwrap_or(0);
                return Ok(Page {
                    items,
                    next: Some(crate::domain::listing::cursor(&number.to_be_bytes())),
                });
            }
            looked += 1;
            if let Some(bytes) = self.alerts.get(&key)? {
                let alert: Alert = decode("alert", &bytes)?;
                if query.wants_alert(&alert) {
                    items.push(alert);
                }
            }
            if looked >= crate::domain::listing::SCAN_BUDGET && items.len() < limit {
                return Ok(Page {
                    items,
                    next: Some(crate::domain::listing::cursor(&key)),
                });
            }
        }
        Ok(Page { items, next: None })
    }

    /// Writes an alert as given, for migrating history from another system
    /// (and seeding report tests). Indexes are kept as for any update.
    fn import_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        let number = alert_number(&alert.id).ok_or_else(|| {
            StoreError::Refused(format!("alert id `{}` is not a number", alert.id))
        })?;
        (
            &self.alerts,
            &self.deadlines,
            &self.incidents,
            &self.open_alerts,
        )
            .transaction(|(alerts, deadlines, incidents, open)| {
                alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                reindex(None, alert, deadlines, incidents, open)
            })?;
        Ok(())
    }

    /// Changes one alert. `change` edits it and says what else to write; an
    /// error from it aborts the whole update. Lifecycle rules are checked
    /// here, so no caller can move an alert illegally.
    fn update_alert_dyn(
        &self,
        alert_id: &str,
        change: AlertChange<'_>,
    ) -> Result<(Alert, Vec<Downlink>), StoreError> {
        let number =
            alert_number(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        let trees = (
            &self.alerts,
            &self.downlinks,
            &self.deadlines,
            &self.incidents,
            &self.audit,
            &self.outbox,
            &self.open_alerts,
        );
        let result = trees.transaction(
            |(alerts, downlinks, deadlines, incidents, audit, outbox, open)| {
                let bytes = alerts
                    .get(number.to_be_bytes())?
                    .ok_or_else(|| abort(StoreError::NoSuchAlert(alert_id.into())))?;
                let before: Alert = decode("alert", &bytes).map_err(abort)?;
                let mut alert = before.clone();
                let Change {
                    audit: entries,
                    device_acks,
                    notifications,
                } = change(&mut alert).map_err(abort)?;
                if alert.state != before.state {
                    lifecycle::check(before.state(), alert.state()).map_err(|e| abort(e.into()))?;
                }
                alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                reindex(Some(&before), &alert, deadlines, incidents, open)?;
                for entry in entries {
                    append_audit(audit, entry)?;
                }
                let mut queued = Vec::new();
                for ack in &device_acks {
                    let id = downlinks.generate_id()? + 1;
                    let message = Downlink {
                        downlink_id: id,
                        ack: Some(ack.clone()),
                    };
                    downlinks
                        .insert(downlink_key(&alert.gateway_id, id), message.encode_to_vec())?;
                    queued.push(message);
                }
                for item in &notifications {
                    if outbox.get(item.delivery_id.as_bytes())?.is_none() {
                        outbox.insert(item.delivery_id.as_bytes(), item.encode_to_vec())?;
                    }
                }
                Ok((alert, queued))
            },
        )?;
        Ok(result)
    }

    /// Offers whose deadline is at or before `now_ms`, earliest first, and
    /// the next deadline after those.
    fn due_offers(&self, now_ms: i64) -> Result<(Vec<String>, Option<i64>), StoreError> {
        let mut due = Vec::new();
        for item in self.deadlines.iter() {
            let (key, _) = item?;
            let at = u64::from_be_bytes(key[..8].try_into().expect("16-byte key")) as i64;
            if at > now_ms {
                return Ok((due, Some(at)));
            }
            let number = u64::from_be_bytes(key[8..16].try_into().expect("16-byte key"));
            due.push(number.to_string());
        }
        Ok((due, None))
    }

    /// Moves every pending offer deadline by `step_ms` (the wall clock
    /// stepped by that much), in the `deadlines` index and on the alerts,
    /// in one transaction: an offer's answer window is elapsed time, not a
    /// wall-clock instant. Returns how many deadlines moved.
    fn rebase_deadlines(&self, step_ms: i64) -> Result<usize, StoreError> {
        let numbers: Vec<u64> = self
            .deadlines
            .iter()
            .keys()
            .map(|key| key.map(|k| u64::from_be_bytes(k[8..16].try_into().expect("16-byte key"))))
            .collect::<Result<_, _>>()?;
        let moved = (&self.alerts, &self.deadlines).transaction(|(alerts, deadlines)| {
            let mut moved = 0;
            for number in &numbers {
                let Some(bytes) = alerts.get(number.to_be_bytes())? else {
                    continue;
                };
                let mut alert: Alert = decode("alert", &bytes).map_err(abort)?;
                let Some(old) = deadline_key(&alert) else {
                    continue;
                };
                deadlines.remove(&old)?;
                crate::store::storage::rebase_alert(&mut alert, step_ms);
                if let Some(new) = deadline_key(&alert) {
                    deadlines.insert(&new, &[])?;
                }
                alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                moved += 1;
            }
            Ok(moved)
        })?;
        Ok(moved)
    }

    /// The clock reading saved by [`Store::save_clock_mark`], if any.
    fn clock_mark(&self) -> Result<Option<anxin_host::clock::Mark>, StoreError> {
        Ok(self
            .meta
            .get("clock")?
            .and_then(|bytes| anxin_host::clock::Mark::decode(&bytes)))
    }

    fn save_clock_mark(&self, mark: &anxin_host::clock::Mark) -> Result<(), StoreError> {
        self.meta.insert("clock", mark.encode())?;
        Ok(())
    }

    /// Downlinks a gateway has not yet confirmed, oldest first.
    fn pending_downlinks(&self, gateway_id: &str) -> Result<Vec<Downlink>, StoreError> {
        let mut prefix = gateway_id.as_bytes().to_vec();
        prefix.push(0);
        self.downlinks
            .scan_prefix(prefix)
            .values()
            .map(|bytes| decode("downlink", &bytes?))
            .collect()
    }

    fn enqueue_notifications(&self, items: &[OutboxItem]) -> Result<(), StoreError> {
        for item in items {
            self.outbox
                .compare_and_swap(
                    item.delivery_id.as_bytes(),
                    None as Option<&[u8]>,
                    Some(item.encode_to_vec()),
                )?
                .ok();
        }
        Ok(())
    }

    fn claim_notifications(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let mut claimed = Vec::new();
        for item in self.outbox.iter() {
            let (key, bytes) = item?;
            let mut item: OutboxItem = decode("outbox item", &bytes)?;
            if item.next_at_ms > now_ms || item.lease_until_ms > now_ms {
                continue;
            }
            item.lease_until_ms = now_ms + lease_ms;
            // One process uses a sled store: a failed swap is a finish or
            // retry racing this claim, and that one wins.
            if self
                .outbox
                .compare_and_swap(&key, Some(bytes), Some(item.encode_to_vec()))?
                .is_ok()
            {
                claimed.push(item);
                if claimed.len() == max {
                    break;
                }
            }
        }
        Ok(claimed)
    }

    fn finish_notification(
        &self,
        delivery_id: &str,
        entry: AuditEntry,
    ) -> Result<bool, StoreError> {
        let finished = (&self.outbox, &self.audit).transaction(|(outbox, audit)| {
            if outbox.remove(delivery_id.as_bytes())?.is_none() {
                return Ok(false);
            }
            append_audit(audit, entry.clone())?;
            Ok(true)
        })?;
        Ok(finished)
    }

    fn retry_notification(&self, item: &OutboxItem) -> Result<(), StoreError> {
        let item = OutboxItem {
            lease_until_ms: 0,
            ..item.clone()
        };
        self.outbox
            .insert(item.delivery_id.as_bytes(), item.encode_to_vec())?;
        Ok(())
    }

    fn downlink_done(&self, gateway_id: &str, downlink_id: u64) -> Result<(), StoreError> {
        self.downlinks
            .remove(downlink_key(gateway_id, downlink_id))?;
        Ok(())
    }
}
