//! `anxin-server store check` on sled: every record decodes, every index
//! agrees with the records it is built from, the audit chain holds.
//!
//! Run on a stopped server's store (sled allows one process). It reads
//! everything once and keeps each index's expected keys in memory: minutes
//! and a few hundred MB for a city-sized store.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap},
};

use anxin_proto::v1::{
    Alert, AuditEntry, CheckinDay, DeviceRecord, Downlink, GatewayRecord, Place, Resident,
    SignOfLife, Staff, Visit, VisitPlan,
};
use prost::Message;

use super::{CHAIN_HEAD, SledStore, deadline_key, listing, retention};
use crate::{
    domain::lifecycle,
    store::directory::TokenRecord,
    store::{CheckReport, EventDay, OutboxItem, StoredEvent, incident_key},
};

/// Decodes every value of `tree` as `M`; returns the decoded ones.
fn decode_all<M: Message + Default>(
    report: &mut CheckReport,
    name: &str,
    tree: &sled::Tree,
) -> Vec<(sled::IVec, M)> {
    decode_records(report, name, tree, |_| true)
}

/// [`decode_all`] for the keys `is_record` accepts (a tree may hold a
/// bookkeeping key beside its records).
fn decode_records<M: Message + Default>(
    report: &mut CheckReport,
    name: &str,
    tree: &sled::Tree,
    is_record: impl Fn(&[u8]) -> bool,
) -> Vec<(sled::IVec, M)> {
    let mut out = Vec::new();
    let mut count = 0u64;
    for item in tree.iter() {
        match item {
            Ok((key, _)) if !is_record(&key) => {}
            Ok((key, value)) => {
                count += 1;
                match M::decode(&*value) {
                    Ok(record) => out.push((key, record)),
                    Err(err) => report.problem(format!(
                        "{name}: the record at key {} does not decode: {err}",
                        show(&key)
                    )),
                }
            }
            Err(err) => {
                report.problem(format!(
                    "{name}: reading stopped after {count} records: {err}"
                ));
                break;
            }
        }
    }
    report.count(name, count);
    out
}

fn show(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => format!("`{text}`"),
        _ => format!("0x{}", hex::encode(key)),
    }
}

/// Compares an index tree with the keys its records say it must hold.
fn agree(report: &mut CheckReport, name: &str, tree: &sled::Tree, mut expected: BTreeSet<Vec<u8>>) {
    let mut stray = 0u64;
    let mut first_stray = None;
    for key in tree.iter().keys() {
        match key {
            Ok(key) => {
                if !expected.remove(key.as_ref()) {
                    stray += 1;
                    first_stray.get_or_insert_with(|| show(&key));
                }
            }
            Err(err) => {
                report.problem(format!("{name}: reading stopped: {err}"));
                return;
            }
        }
    }
    if stray > 0 {
        report.problem(format!(
            "index {name}: {stray} entries no record accounts for (first {})",
            first_stray.unwrap_or_default()
        ));
    }
    if let Some(first) = expected.first() {
        report.problem(format!(
            "index {name}: {} entries missing (first {})",
            expected.len(),
            show(first)
        ));
    }
}

/// Keys held by more than one of `trees`, and the first with the two trees
/// holding it. A merge of the trees' key orders: one key per tree in memory.
#[allow(clippy::type_complexity)]
fn keys_in_several(
    trees: &[(&str, &sled::Tree)],
) -> Result<(u64, Option<(Vec<u8>, String, String)>), sled::Error> {
    let mut walks: Vec<_> = trees.iter().map(|(_, tree)| tree.iter().keys()).collect();
    let mut next = BinaryHeap::new();
    for (i, walk) in walks.iter_mut().enumerate() {
        if let Some(key) = walk.next() {
            next.push(Reverse((key?.to_vec(), i)));
        }
    }
    let (mut count, mut first) = (0, None);
    let mut last: Option<(Vec<u8>, usize)> = None;
    while let Some(Reverse((key, i))) = next.pop() {
        if let Some((previous, j)) = &last
            && *previous == key
        {
            count += 1;
            first.get_or_insert_with(|| {
                (key.clone(), trees[*j].0.to_string(), trees[i].0.to_string())
            });
        }
        if let Some(key) = walks[i].next() {
            next.push(Reverse((key?.to_vec(), i)));
        }
        last = Some((key, i));
    }
    Ok((count, first))
}

pub(super) fn check(store: &SledStore) -> CheckReport {
    let mut report = CheckReport::default();
    let d = &store.directory;

    let events = decode_all::<StoredEvent>(&mut report, "events", &store.events);
    let (mut by_time, mut of_alerts) = (BTreeSet::new(), BTreeSet::new());
    for (key, event) in &events {
        match retention::index_key(key, event) {
            (true, index) => by_time.insert(index),
            (false, index) => of_alerts.insert(index),
        };
    }
    drop(events);
    agree(
        &mut report,
        "events_by_time",
        &store.events_by_time,
        by_time,
    );
    agree(&mut report, "alert_events", &store.alert_events, of_alerts);
    store.partitions.with_spans(|spans| {
        for span in spans {
            let name = String::from_utf8_lossy(&span.name()).into_owned();
            let events = decode_all::<StoredEvent>(&mut report, "events", &span.tree);
            if let Some((key, event)) = events.iter().find(|(_, e)| !e.alert_id.is_empty()) {
                report.problem(format!(
                    "{name}: event {} belongs to alert {}; a span holds only plain events",
                    show(key),
                    event.alert_id
                ));
            }
        }
        let names: Vec<String> = spans
            .iter()
            .map(|s| String::from_utf8_lossy(&s.name()).into_owned())
            .collect();
        let mut trees: Vec<(&str, &sled::Tree)> = vec![("events", &store.events)];
        trees.extend(
            names
                .iter()
                .map(String::as_str)
                .zip(spans.iter().map(|s| &s.tree)),
        );
        match keys_in_several(&trees) {
            Ok((0, _)) => {}
            Ok((n, first)) => {
                let (key, a, b) = first.expect("a first key when some are found");
                report.problem(format!(
                    "{n} events are stored twice (first {} in {a} and {b}): \
                     an event is kept in one place only",
                    show(&key)
                ));
            }
            Err(err) => report.problem(format!("events: reading stopped: {err}")),
        }
    });

    let alerts = decode_all::<Alert>(&mut report, "alerts", &store.alerts);
    let mut open = BTreeSet::new();
    let mut deadlines = BTreeSet::new();
    let mut incidents = BTreeSet::new();
    for (key, alert) in &alerts {
        if lifecycle::is_open(alert.state()) {
            open.insert(key.to_vec());
            incidents.insert(incident_key(alert));
        }
        if let Some(deadline) = deadline_key(alert) {
            deadlines.insert(deadline.to_vec());
        }
    }
    drop(alerts);
    agree(&mut report, "open_alerts", &store.open_alerts, open.clone());
    agree(&mut report, "deadlines", &store.deadlines, deadlines);
    // An incident names its latest open alert; an open alert's incident
    // is named (an older open alert of the same incident may exist).
    let mut named = 0u64;
    for item in store.incidents.iter() {
        let Ok((key, number)) = item else {
            report.problem("incidents: reading stopped".into());
            break;
        };
        named += 1;
        if !open.contains(number.as_ref()) {
            report.problem(format!(
                "incidents: {} names alert 0x{} which is not open",
                show(&key),
                hex::encode(&number)
            ));
        }
        incidents.remove(&*String::from_utf8_lossy(&key));
    }
    report.count("incidents", named);
    if !incidents.is_empty() {
        report.problem(format!(
            "incidents: {} open alerts' incidents are not recorded (first `{}`)",
            incidents.len(),
            incidents.first().cloned().unwrap_or_default()
        ));
    }

    // Entry keys are 8 bytes; the head and the anchor are longer.
    let audit = decode_records::<AuditEntry>(&mut report, "audit", &store.audit, |k| k.len() == 8);
    let anchor = match crate::store::Storage::audit_anchor(store) {
        Ok(anchor) => anchor,
        Err(err) => {
            report.problem(format!("audit: {err}"));
            None
        }
    };
    let chain = crate::store::verify_chain(anchor.as_ref(), audit.into_iter().map(|(_, e)| e));
    if let (Some(id), Some(problem)) = (chain.broken_at, chain.problem) {
        report.problem(format!("audit chain broken at entry {id}: {problem}"));
    } else {
        let head = store.audit.get(CHAIN_HEAD).ok().flatten();
        // (A chain pruned to nothing has its anchor's hash as head.)
        if head.as_deref().unwrap_or_default() != chain.head.as_bytes() {
            report.problem(format!(
                "audit: the recorded chain head is not the last entry's hash ({})",
                chain.head
            ));
        }
    }
    decode_all::<Downlink>(&mut report, "downlinks", &store.downlinks);
    decode_all::<OutboxItem>(&mut report, "outbox", &store.outbox);
    decode_all::<SignOfLife>(&mut report, "signs", &store.signs);
    decode_all::<anxin_proto::v1::Position>(&mut report, "positions", &store.positions);
    decode_all::<CheckinDay>(&mut report, "checkin_days", &store.checkin_days);
    decode_all::<VisitPlan>(&mut report, "visit_plans", &store.visit_plans);
    decode_all::<Visit>(&mut report, "visits", &store.visits);
    let days = decode_all::<EventDay>(&mut report, "event_days", &store.event_days);
    agree(
        &mut report,
        "event_days_by_day",
        &store.event_days_by_day,
        days.iter()
            .map(|(_, day)| retention::by_day_key(day))
            .collect(),
    );
    drop(days);
    let vital =
        decode_all::<anxin_proto::v1::VitalDay>(&mut report, "vital_days", &store.vital_days);
    agree(
        &mut report,
        "vital_days_by_day",
        &store.vital_days_by_day,
        vital
            .iter()
            .map(|(key, day)| {
                let mut index = (day.day.max(0) as u32).to_be_bytes().to_vec();
                index.extend_from_slice(key);
                index
            })
            .collect(),
    );
    drop(vital);

    decode_all::<Place>(&mut report, "places", &d.places);
    decode_all::<GatewayRecord>(&mut report, "gateways", &d.gateways);
    decode_all::<TokenRecord>(&mut report, "tokens", &d.tokens);
    let residents = decode_all::<Resident>(&mut report, "residents", &d.residents);
    let (mut by_community, mut terms, mut enrolled) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (_, r) in &residents {
        let (community, resident_terms) = listing::resident_keys(r);
        by_community.insert(community);
        terms.extend(resident_terms);
        if r.checkin.is_some() {
            enrolled.insert(r.id.as_bytes().to_vec());
        }
    }
    drop(residents);
    agree(
        &mut report,
        "residents_by_community",
        &d.residents_by_community,
        by_community,
    );
    agree(&mut report, "resident_terms", &d.resident_terms, terms);
    agree(
        &mut report,
        "residents_enrolled",
        &d.residents_enrolled,
        enrolled,
    );
    let devices = decode_all::<DeviceRecord>(&mut report, "devices", &d.devices);
    let (mut by_gateway, mut by_resident) = (BTreeSet::new(), BTreeSet::new());
    for (_, device) in &devices {
        let [gateway, resident] = listing::device_keys(device);
        by_gateway.insert(gateway);
        by_resident.insert(resident);
    }
    drop(devices);
    agree(
        &mut report,
        "devices_by_gateway",
        &d.devices_by_gateway,
        by_gateway,
    );
    agree(
        &mut report,
        "devices_by_resident",
        &d.devices_by_resident,
        by_resident,
    );
    let staff = decode_all::<Staff>(&mut report, "staff", &d.staff);
    agree(
        &mut report,
        "staff_by_community",
        &d.staff_by_community,
        staff
            .iter()
            .flat_map(|(_, s)| listing::staff_keys(s))
            .collect(),
    );
    report
}
