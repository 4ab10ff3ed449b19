//! The engine contract, run against every engine: sled always, PostgreSQL
//! on a scratch database (SKIPPED with the reason where no server runs;
//! a failure under `CI=true`).

use super::storage::*;
use super::*;
use crate::store::directory::Directory;
use anxin_proto::{
    DeviceEvent, EventKind,
    v1::{Alert, AlertState, AuditEntry, AuditQuery, DeviceAck, UplinkEvent},
};

use crate::domain::incidents::{Decision, IncidentPolicy, Origin};

/// One engine under test: opens (and reopens) the same store.
enum Engine {
    Sled(tempfile::TempDir),
    Postgres(String),
}

impl Engine {
    async fn open(&self) -> Store {
        match self {
            // sled's background threads let go of a dropped store's file
            // lock a moment after the drop: a reopen at once may wait.
            Engine::Sled(dir) => {
                for _ in 0..50 {
                    if let Ok(store) = open_sled(dir.path()) {
                        return store;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                open_sled(dir.path()).unwrap()
            }
            Engine::Postgres(url) => Arc::new(postgres::PgStore::connect(url, 4).await.unwrap()),
        }
    }
}

/// Runs `test` on each engine with a fresh, empty store.
async fn on_every_engine<F, Fut>(test: F)
where
    F: Fn(Engine) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    test(Engine::Sled(tempfile::tempdir().unwrap())).await;
    match postgres::scratch::create().await {
        Ok(url) => {
            test(Engine::Postgres(url.clone())).await;
            postgres::scratch::drop(&url).await;
        }
        Err(why) => {
            anxin_host::skip::skip("the PostgreSQL engine", &format!("no PostgreSQL: {why}"))
        }
    }
}

const POLICY: IncidentPolicy = IncidentPolicy {
    window_ms: 600_000,
    cancel_grace_ms: 60_000,
};

fn uplink(device: &str, seq: u64, kind: EventKind) -> UplinkEvent {
    UplinkEvent {
        event: Some(DeviceEvent {
            device_id: device.into(),
            seq,
            kind: kind as i32,
            ..Default::default()
        }),
        stored_ms: 1,
    }
}

fn changed(committed: Committed) -> (Alert, Decision) {
    match committed {
        Committed::New {
            alert: Some(changed),
        } => *changed,
        other => panic!("no alert changed: {other:?}"),
    }
}

fn commit(store: &Store, device: &str, seq: u64, kind: EventKind, at: i64) -> Committed {
    let origin = Origin {
        resident_id: "r-1".into(),
        community_id: "c-1".into(),
        ..Default::default()
    };
    store
        .commit_event("gw", &uplink(device, seq, kind), at, &origin, &POLICY)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_commits_once_and_an_incident_is_one_alert() {
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        let (alert, Decision::Raise) = changed(commit(&store, "btn", 1, EventKind::Sos, 10)) else {
            panic!()
        };
        assert!(matches!(
            commit(&store, "btn", 1, EventKind::Sos, 11),
            Committed::Duplicate
        ));
        assert!(matches!(
            commit(&store, "btn", 2, EventKind::Heartbeat, 12),
            Committed::New { alert: None }
        ));
        // Another device of the same resident: the same incident.
        let (joined, Decision::Attach { .. }) =
            changed(commit(&store, "wear", 1, EventKind::Fall, 13))
        else {
            panic!()
        };
        assert_eq!(joined.id, alert.id);
        store.flush().await.unwrap();
        drop(store);
        let store = engine.open().await;
        let alerts = store.alerts(&[]).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].events.len(), 2);
        assert_eq!(store.event("wear", 1).unwrap().unwrap().alert_id, alert.id);
        assert_eq!(store.event_count().unwrap(), 3);
        assert_eq!(store.device_events("btn").unwrap().len(), 2);
    })
    .await;
}

/// A fall's alert, offered with a deadline.
fn offered_fall(store: &Store, deadline_ms: i64) -> Alert {
    let (alert, _) = changed(commit(store, "btn", 1, EventKind::Fall, 10));
    store
        .update_alert(&alert.id, |a| {
            a.set_state(AlertState::Offered);
            a.offer_deadline_ms = deadline_ms;
            Ok(Change::default())
        })
        .unwrap();
    alert
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_step_moves_every_pending_deadline_and_its_alert_together() {
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        let alert = offered_fall(&store, 10_000);
        // The wall clock went back an hour: the deadline moves back with it.
        assert_eq!(store.rebase_deadlines(-3_600_000).unwrap(), 1);
        assert_eq!(store.alert(&alert.id).unwrap().offer_deadline_ms, 1);
        assert_eq!(store.due_offers(1).unwrap(), (vec![alert.id.clone()], None));
        // Forward: later, and the index and the alert agree, so the next
        // change of the alert still removes its index entry.
        assert_eq!(store.rebase_deadlines(60_000).unwrap(), 1);
        assert_eq!(store.alert(&alert.id).unwrap().offer_deadline_ms, 60_001);
        assert_eq!(store.due_offers(60_000).unwrap(), (vec![], Some(60_001)));
        store
            .update_alert(&alert.id, |a| {
                a.set_state(AlertState::Acknowledged);
                a.offer_deadline_ms = 0;
                Ok(Change::default())
            })
            .unwrap();
        assert_eq!(store.due_offers(i64::MAX).unwrap(), (vec![], None));
        assert_eq!(store.rebase_deadlines(5_000).unwrap(), 0);
        let mark = anxin_host::clock::Mark::now(123);
        store.save_clock_mark(&mark).unwrap();
        assert_eq!(store.clock_mark().unwrap(), Some(mark));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_queue_downlinks_keep_deadlines_indexed_and_refuse_illegal_moves() {
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        let alert = offered_fall(&store, 500);
        assert_eq!(store.due_offers(499).unwrap(), (vec![], Some(500)));
        assert_eq!(
            store.due_offers(500).unwrap(),
            (vec![alert.id.clone()], None)
        );

        let (acked, mut downlinks) = store
            .update_alert(&alert.id, |a| {
                a.set_state(AlertState::Acknowledged);
                a.offer_deadline_ms = 0;
                Ok(Change {
                    device_acks: vec![DeviceAck {
                        alert_id: a.id.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            })
            .unwrap();
        let downlink = downlinks.pop();
        assert_eq!(acked.state(), AlertState::Acknowledged);
        assert_eq!(store.due_offers(i64::MAX).unwrap(), (vec![], None));
        assert_eq!(
            store.pending_downlinks("gw").unwrap(),
            vec![downlink.clone().unwrap()]
        );
        store
            .downlink_done("gw", downlink.unwrap().downlink_id)
            .unwrap();
        assert!(store.pending_downlinks("gw").unwrap().is_empty());

        let err = store
            .update_alert(&alert.id, |a| {
                a.set_state(AlertState::New);
                Ok(Change::default())
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Illegal(_)), "{err}");
        assert_eq!(
            store.alert(&alert.id).unwrap().state(),
            AlertState::Acknowledged
        );
        assert!(matches!(
            store.update_alert("999", |_| Ok(Change::default())),
            Err(StoreError::NoSuchAlert(_))
        ));

        // The open states are read through an index: a closed alert
        // leaves them, and reopening the store keeps them.
        let open = [
            AlertState::New,
            AlertState::Offered,
            AlertState::Acknowledged,
        ];
        let ids = |store: &Store, states: &[AlertState]| -> Vec<String> {
            store
                .alerts(states)
                .unwrap()
                .into_iter()
                .map(|a| a.id)
                .collect()
        };
        assert_eq!(ids(&store, &open), vec![alert.id.clone()]);
        assert_eq!(ids(&store, &[AlertState::Offered]), Vec::<String>::new());
        store
            .update_alert(&alert.id, |a| {
                a.set_state(AlertState::Resolved);
                Ok(Change::default())
            })
            .unwrap();
        assert!(ids(&store, &open).is_empty());
        assert_eq!(ids(&store, &[AlertState::Resolved]), vec![alert.id.clone()]);
        drop(store);
        let store = engine.open().await;
        assert!(ids(&store, &open).is_empty());
        let (second, _) = changed(commit(&store, "btn-2", 1, EventKind::Fall, 20));
        assert_eq!(ids(&store, &open), vec![second.id]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_incident_lets_the_next_alarm_open_a_new_one() {
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        let (first, _) = changed(commit(&store, "btn", 1, EventKind::Sos, 10));
        let (cancelled, Decision::Cancel) =
            changed(commit(&store, "btn", 2, EventKind::Cancel, 20))
        else {
            panic!()
        };
        assert_eq!(cancelled.id, first.id);
        assert_eq!(cancelled.state(), AlertState::Cancelled);
        let (second, Decision::Raise) = changed(commit(&store, "btn", 3, EventKind::Sos, 30))
        else {
            panic!()
        };
        assert_ne!(second.id, first.id);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_events_dedupe_within_and_across_batches_and_audit_queries_filter() {
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        let batch = [
            uplink("sensor", 1, EventKind::Heartbeat),
            uplink("sensor", 2, EventKind::Heartbeat),
            uplink("sensor", 1, EventKind::Heartbeat),
        ];
        assert_eq!(
            store.commit_plain_events("gw", &batch, 5).unwrap(),
            vec![true, true, false]
        );
        assert_eq!(
            store.commit_plain_events("gw", &batch[1..], 6).unwrap(),
            vec![false, false]
        );
        // A gateway-raised seq (2^63 and up) sorts after the device's own.
        let high = 1u64 << 63;
        store
            .commit_plain_events("gw", &[uplink("sensor", high, EventKind::Heartbeat)], 7)
            .unwrap();
        let seqs: Vec<u64> = store
            .device_events("sensor")
            .unwrap()
            .iter()
            .map(|e| e.uplink.as_ref().unwrap().event.as_ref().unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, high]);
        let first = store.event("sensor", 1).unwrap().unwrap();
        let second = store.event("sensor", 2).unwrap().unwrap();
        assert!(first.commit_index < second.commit_index);
        assert_eq!(first.received_ms, 5);

        for (action, target) in [
            ("alert.ack", "alert/1"),
            ("alert.note", "alert/1"),
            ("directory.put", "x"),
        ] {
            store
                .append(anxin_proto::v1::AuditEntry {
                    at_ms: 100,
                    actor: "op".into(),
                    action: action.into(),
                    target: target.into(),
                    ..Default::default()
                })
                .unwrap();
        }
        let found = store
            .query(&AuditQuery {
                action: "alert".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(found.len(), 2);
        assert!(found[0].id < found[1].id);
        let newest = store
            .query(&AuditQuery {
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(newest[0].target, "x");
        // Paging back: the page before the newest starts below its id.
        let before = store
            .query(&AuditQuery {
                limit: 1,
                before_id: newest[0].id,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].action, "alert.note");
        let alert_page = store
            .query(&AuditQuery {
                action: "alert".into(),
                limit: 5,
                before_id: before[0].id,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(alert_page.len(), 1);
        assert_eq!(alert_page[0].action, "alert.ack");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_holds_a_notification_until_one_deliverer_finishes_it() {
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        let item = |id: &str| OutboxItem {
            delivery_id: id.into(),
            address: "http://127.0.0.1:9/hook".into(),
            notification: b"{}".to_vec(),
            next_at_ms: 1_000,
            alert_id: "1".into(),
            kind: "offer".into(),
            ..Default::default()
        };
        store
            .enqueue_notifications(&[item("1-0-offer"), item("1-0-offer")])
            .unwrap();
        // Written with an alert change, in its transaction.
        let alert = offered_fall(&store, 5_000);
        store
            .update_alert(&alert.id, |_| {
                Ok(Change {
                    notifications: vec![item("1-1-offer")],
                    ..Default::default()
                })
            })
            .unwrap();
        store.flush().await.unwrap();
        assert!(
            store
                .claim_notifications(999, 10_000, 10)
                .unwrap()
                .is_empty()
        );
        let mut claimed = store.claim_notifications(1_000, 10_000, 10).unwrap();
        claimed.sort_by(|a, b| a.delivery_id.cmp(&b.delivery_id));
        let ids: Vec<&str> = claimed.iter().map(|i| i.delivery_id.as_str()).collect();
        assert_eq!(ids, ["1-0-offer", "1-1-offer"]);
        // Held: nobody else takes them until the lease runs out.
        assert!(
            store
                .claim_notifications(2_000, 10_000, 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.claim_notifications(11_000, 10_000, 10).unwrap().len(),
            2
        );
        // One is to be retried later; the other is delivered, once.
        let mut retry = claimed[0].clone();
        retry.attempts = 1;
        retry.next_at_ms = 50_000;
        store.retry_notification(&retry).unwrap();
        let delivered = |id: &str| anxin_proto::v1::AuditEntry {
            action: "notify.delivered".into(),
            target: "alert/1".into(),
            detail: id.into(),
            ..Default::default()
        };
        assert!(
            store
                .finish_notification("1-1-offer", delivered("1-1-offer"))
                .unwrap()
        );
        assert!(
            !store
                .finish_notification("1-1-offer", delivered("1-1-offer"))
                .unwrap()
        );
        assert!(
            store
                .claim_notifications(49_999, 10_000, 10)
                .unwrap()
                .is_empty()
        );
        let again = store.claim_notifications(50_000, 10_000, 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
        let recorded = store
            .query(&AuditQuery {
                action: "notify".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(recorded.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_audit_entry_is_chained_and_an_edit_breaks_the_chain_there() {
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        // Entries from every path: an event's decision, an alert change,
        // a plain append, a directory write.
        let alert = offered_fall(&store, 5_000);
        store
            .update_alert(&alert.id, |a| {
                Ok(Change {
                    audit: vec![anxin_proto::v1::AuditEntry {
                        action: "alert.note".into(),
                        target: format!("alert/{}", a.id),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            })
            .unwrap();
        store
            .append(anxin_proto::v1::AuditEntry {
                action: "resident.read".into(),
                detail: "r-1".into(),
                ..Default::default()
            })
            .unwrap();
        store
            .put_place(
                &anxin_proto::v1::Place {
                    id: "city".into(),
                    ..Default::default()
                },
                anxin_proto::v1::AuditEntry {
                    action: "place.put".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        let entries = store.query(&AuditQuery::default()).unwrap();
        assert_eq!(entries.len(), 4);
        let report = verify_chain(None, entries.clone());
        assert_eq!(report.broken_at, None, "{report:?}");
        assert_eq!(report.head, entries[3].hash);
        assert_eq!(report.unchained, 0);

        // Changed, removed, reordered: found at the first entry it touches.
        let mut edited = entries.clone();
        edited[1].detail = "nothing happened".into();
        assert_eq!(verify_chain(None, edited).broken_at, Some(entries[1].id));
        let mut removed = entries.clone();
        removed.remove(1);
        assert_eq!(verify_chain(None, removed).broken_at, Some(entries[2].id));
        let mut swapped = entries.clone();
        swapped.swap(1, 2);
        assert_eq!(verify_chain(None, swapped).broken_at, Some(entries[2].id));
        let mut unhashed = entries.clone();
        unhashed[3].hash.clear();
        assert_eq!(verify_chain(None, unhashed).broken_at, Some(entries[3].id));
    })
    .await;
}

/// A store a newer build wrote (a format mark or schema version past this
/// build's) is refused with what to do, never served without what this
/// build cannot read.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_written_by_a_newer_build_is_refused_by_name() {
    on_every_engine(|engine| async move {
        drop(engine.open().await);
        let refused = match &engine {
            Engine::Sled(dir) => {
                let mark = || ::sled::Config::new().path(dir.path()).open();
                let mut db = mark();
                for _ in 0..50 {
                    if db.is_ok() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    db = mark();
                }
                let db = db.unwrap();
                db.open_tree("meta")
                    .unwrap()
                    .insert("format", &(sled::FORMAT + 1).to_be_bytes())
                    .unwrap();
                db.flush().unwrap();
                drop(db);
                let mut opened = open_sled(dir.path());
                for _ in 0..50 {
                    if !matches!(opened, Err(StoreError::Storage(_))) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    opened = open_sled(dir.path());
                }
                opened.err().expect("a newer store is refused")
            }
            Engine::Postgres(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                client
                    .execute(
                        "insert into schema_migrations (version, name, applied_ms)
                         values (999, 'from the future', 0)",
                        &[],
                    )
                    .await
                    .unwrap();
                postgres::PgStore::connect(url, 2)
                    .await
                    .err()
                    .expect("a newer database is refused")
            }
        };
        let StoreError::Refused(why) = &refused else {
            panic!("refused as {refused:?}")
        };
        assert!(why.contains("newer anxin-server"), "{why}");
        assert!(why.contains("Upgrades"), "{why}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_retention_removes_the_oldest_entries_and_the_chain_holds_from_its_anchor() {
    use crate::tasks::retention;
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        for second in 1..=6 {
            store
                .append(anxin_proto::v1::AuditEntry {
                    at_ms: second * 1_000,
                    action: "resident.read".into(),
                    detail: format!("read at {second} s"),
                    ..Default::default()
                })
                .unwrap();
        }
        let all = store.query(&AuditQuery::default()).unwrap();
        assert_eq!(store.audit_anchor().unwrap(), None);

        // Written before 3.5 s, two a batch: 2, then 1, then none.
        assert_eq!(store.prune_audit(3_500, 2).unwrap(), 2);
        assert_eq!(store.prune_audit(3_500, 2).unwrap(), 1);
        assert_eq!(store.prune_audit(3_500, 2).unwrap(), 0);
        let anchor = AuditAnchor {
            id: all[2].id,
            hash: all[2].hash.clone(),
        };
        drop(store);
        let store = engine.open().await;
        assert_eq!(store.audit_anchor().unwrap(), Some(anchor.clone()));
        let kept = store.query(&AuditQuery::default()).unwrap();
        assert_eq!(kept, all[3..]);
        let report = verify_chain(Some(&anchor), kept.clone());
        assert_eq!(report.broken_at, None, "{report:?}");
        assert_eq!((report.entries, report.pruned_through), (3, all[2].id));
        assert!(store.check().is_ok(), "{:?}", store.check().problems);
        // Without its anchor the kept chain does not check: the anchor is
        // what a removal of its start by anything but retention lacks.
        assert_eq!(verify_chain(None, kept.clone()).broken_at, Some(all[3].id));
        // An entry from before the anchor still present is named.
        let mut stale = vec![all[1].clone()];
        stale.extend(kept.clone());
        assert_eq!(
            verify_chain(Some(&anchor), stale).broken_at,
            Some(all[1].id)
        );

        // The pruning run: audited, saying where the chain now starts; new
        // entries chain on.
        let policy = retention::Policy {
            events_ms: None,
            event_days_ms: None,
            alerts_ms: None,
            audit_ms: Some(1_000),
            batch: 10,
            pause: std::time::Duration::from_millis(1),
            interval: std::time::Duration::from_secs(60),
            utc_offset_minutes: 0,
        };
        let pruned = retention::prune(&store, &policy, 5_500).await.unwrap();
        assert_eq!(pruned.audit, 1, "written at 4 s");
        let kept = store.query(&AuditQuery::default()).unwrap();
        let run = kept.last().unwrap();
        assert_eq!(run.action, "retention.pruned");
        assert!(
            run.detail.contains(&format!(
                "1 audit entries written before 4500; the chain now starts after entry {}",
                all[3].id
            )),
            "{}",
            run.detail
        );
        let anchor = store.audit_anchor().unwrap();
        assert_eq!(anchor.as_ref().map(|a| a.id), Some(all[3].id));
        let report = verify_chain(anchor.as_ref(), kept);
        assert_eq!(report.broken_at, None, "{report:?}");
        assert!(store.check().is_ok(), "{:?}", store.check().problems);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_prunes_old_plain_events_into_daily_summaries_and_never_an_open_alert() {
    use crate::{domain::calendar::DAY_MS, tasks::retention};
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        // 25 heartbeats on day 0, 5 telemetry readings on day 1: old.
        let heartbeats: Vec<_> = (1..=25)
            .map(|seq| uplink("sensor", seq, EventKind::Heartbeat))
            .collect();
        for (i, one) in heartbeats.iter().enumerate() {
            store
                .commit_plain_events("gw", std::slice::from_ref(one), 1_000 + i as i64)
                .unwrap();
        }
        let telemetry: Vec<_> = (26..=30)
            .map(|seq| uplink("sensor", seq, EventKind::Telemetry))
            .collect();
        store
            .commit_plain_events("gw", &telemetry, DAY_MS + 10)
            .unwrap();
        // An alert raised and cancelled long ago, and one still open.
        let (cancelled, _) = changed(commit(&store, "btn", 1, EventKind::Sos, 2_000));
        let (after, Decision::Cancel) = changed(commit(&store, "btn", 2, EventKind::Cancel, 2_500))
        else {
            panic!("the cancel within the grace did not cancel")
        };
        assert_eq!(after.state(), AlertState::Cancelled);
        let (open, Decision::Raise) = changed(commit(&store, "btn", 3, EventKind::Sos, 3_000))
        else {
            panic!()
        };
        commit(&store, "btn", 4, EventKind::Heartbeat, 3_100);
        // Recent: kept.
        store
            .commit_plain_events(
                "gw",
                &[uplink("sensor", 31, EventKind::Heartbeat)],
                10 * DAY_MS,
            )
            .unwrap();

        let policy = retention::Policy {
            events_ms: Some(5 * DAY_MS),
            event_days_ms: None,
            alerts_ms: Some(5 * DAY_MS),
            audit_ms: None,
            // Several batches, the last one short.
            batch: 7,
            pause: std::time::Duration::from_millis(1),
            interval: std::time::Duration::from_secs(60),
            utc_offset_minutes: 0,
        };
        let now = 10 * DAY_MS + 100;
        let pruned = retention::prune(&store, &policy, now).await.unwrap();
        assert_eq!(
            pruned,
            retention::Pruned {
                events: 31,
                event_days: 0,
                vital_days: 0,
                alerts: 1,
                alert_events: 2,
                audit: 0,
            }
        );
        drop(store);
        let store = engine.open().await;
        assert_eq!(
            store.event_count().unwrap(),
            2,
            "btn 3 (the open alert's) and sensor 31"
        );
        assert!(store.event("sensor", 1).unwrap().is_none());
        assert!(
            store.event("btn", 1).unwrap().is_none(),
            "went with its alert"
        );
        assert_eq!(store.event("btn", 3).unwrap().unwrap().alert_id, open.id);
        assert!(store.event("sensor", 31).unwrap().is_some());
        assert!(matches!(
            store.alert(&cancelled.id),
            Err(StoreError::NoSuchAlert(_))
        ));
        assert_eq!(store.alert(&open.id).unwrap().state(), open.state());
        let days = store.event_days("sensor").unwrap();
        assert_eq!(
            days,
            vec![
                EventDay {
                    device_id: "sensor".into(),
                    day: 0,
                    kind: EventKind::Heartbeat as i32,
                    events: 25,
                    first_ms: 1_000,
                    last_ms: 1_024,
                },
                EventDay {
                    device_id: "sensor".into(),
                    day: 1,
                    kind: EventKind::Telemetry as i32,
                    events: 5,
                    first_ms: DAY_MS + 10,
                    last_ms: DAY_MS + 10,
                },
            ]
        );
        assert_eq!(store.event_days("btn").unwrap().len(), 1, "btn's heartbeat");
        let runs = store
            .query(&AuditQuery {
                action: "retention.pruned".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(runs.len(), 1);
        assert!(runs[0].detail.contains("31 events"), "{}", runs[0].detail);

        // Nothing more to do: no run, no audit entry. Then the summaries'
        // own period.
        assert!(
            retention::prune(&store, &policy, now)
                .await
                .unwrap()
                .is_empty()
        );
        let summaries = retention::Policy {
            event_days_ms: Some(5 * DAY_MS),
            ..policy.clone()
        };
        let pruned = retention::prune(&store, &summaries, now).await.unwrap();
        assert_eq!(pruned.event_days, 3);
        assert!(store.event_days("sensor").unwrap().is_empty());
        let runs = store
            .query(&AuditQuery {
                action: "retention.pruned".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(runs.len(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signs_keep_the_latest_and_days_and_visits_are_written_once() {
    use anxin_proto::v1::{CheckinDay, SignOfLife, Visit, VisitPlan};
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        let sign = |resident: &str, at_ms: i64, how: &str| SignOfLife {
            resident_id: resident.into(),
            at_ms,
            how: how.into(),
            source: "dev".into(),
        };
        assert_eq!(store.sign_of_life("r-1").unwrap(), None);
        // A batch with two signs of one resident, then an older one alone.
        store
            .note_signs(&[
                sign("r-1", 100, "activity"),
                sign("r-1", 300, "checkin"),
                sign("r-2", 50, "call"),
            ])
            .unwrap();
        store.note_signs(&[sign("r-1", 200, "activity")]).unwrap();
        assert_eq!(
            store.sign_of_life("r-1").unwrap(),
            Some(sign("r-1", 300, "checkin"))
        );
        assert_eq!(store.sign_of_life("r-2").unwrap().unwrap().at_ms, 50);

        let audit = |action: &str| AuditEntry {
            at_ms: 1,
            actor: "system".into(),
            action: action.into(),
            ..Default::default()
        };
        let day = |resident: &str, d: i32, outcome: &str| CheckinDay {
            resident_id: resident.into(),
            day: d,
            community_id: "c-1".into(),
            outcome: outcome.into(),
            ..Default::default()
        };
        let first = store
            .judge_checkin_day(&day("r-1", 20_000, "missed"), audit("checkin.judged"))
            .unwrap();
        assert_eq!(first.outcome, "missed");
        // A second judgement of the same day (another replica) keeps the first.
        let again = store
            .judge_checkin_day(&day("r-1", 20_000, "ok"), audit("checkin.judged"))
            .unwrap();
        assert_eq!(again.outcome, "missed");
        store
            .judge_checkin_day(&day("r-2", 20_000, "ok"), audit("checkin.judged"))
            .unwrap();
        store
            .judge_checkin_day(&day("r-1", 20_001, "late"), audit("checkin.judged"))
            .unwrap();
        assert_eq!(store.checkin_days(20_000, 20_001).unwrap().len(), 2);
        assert_eq!(store.checkin_days(19_000, 21_000).unwrap().len(), 3);
        assert_eq!(
            store.checkin_day("r-1", 20_001).unwrap().unwrap().outcome,
            "late"
        );
        assert_eq!(store.checkin_day("r-2", 20_001).unwrap(), None);
        let judged = store
            .query(&AuditQuery {
                action: "checkin.judged".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(judged.len(), 3, "one audit entry per day actually judged");

        let plan = VisitPlan {
            id: "v-1".into(),
            resident_id: "r-1".into(),
            community_id: "c-1".into(),
            weekdays: vec![1, 4],
            active: true,
            ..Default::default()
        };
        store
            .put_visit_plans(std::slice::from_ref(&plan), audit("visit_plan.put"))
            .unwrap();
        assert_eq!(store.visit_plan("v-1").unwrap(), Some(plan.clone()));
        assert_eq!(store.visit_plans().unwrap().len(), 1);
        let visit = |status: &str| Visit {
            plan_id: "v-1".into(),
            day: 20_000,
            resident_id: "r-1".into(),
            community_id: "c-1".into(),
            status: status.into(),
            ..Default::default()
        };
        let flag = OutboxItem {
            delivery_id: "visit-v-1-20000-s-9".into(),
            address: "http://127.0.0.1:9/hook".into(),
            next_at_ms: 1,
            ..Default::default()
        };
        let (stored, written) = store
            .record_visit(&visit("done"), audit("visit.done"), &[])
            .unwrap();
        assert!(written);
        assert_eq!(stored.status, "done");
        // The day's end comes after the carer: nothing changes, nobody told.
        let (stored, written) = store
            .record_visit(
                &visit("missed"),
                audit("visit.missed"),
                std::slice::from_ref(&flag),
            )
            .unwrap();
        assert!(!written);
        assert_eq!(stored.status, "done");
        assert!(
            store
                .claim_notifications(i64::MAX / 2, 1000, 10)
                .unwrap()
                .is_empty()
        );
        // A missed visit and its flag are written together.
        let (_, written) = store
            .record_visit(
                &Visit {
                    day: 20_003,
                    ..visit("missed")
                },
                audit("visit.missed"),
                std::slice::from_ref(&flag),
            )
            .unwrap();
        assert!(written);
        assert_eq!(
            store
                .claim_notifications(i64::MAX / 2, 1000, 10)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(store.visits(20_000, 20_004).unwrap().len(), 2);
        assert_eq!(store.visits(20_001, 20_003).unwrap().len(), 0);
        drop(store);
        // All of it survives a reopen.
        let store = engine.open().await;
        assert_eq!(store.sign_of_life("r-1").unwrap().unwrap().at_ms, 300);
        assert_eq!(store.checkin_days(19_000, 21_000).unwrap().len(), 3);
        assert_eq!(store.visits(20_000, 20_004).unwrap().len(), 2);
    })
    .await;
}

fn person(id: &str, name: &str, community: &str, phone: &str) -> anxin_proto::v1::Resident {
    anxin_proto::v1::Resident {
        id: id.into(),
        name: name.into(),
        community_id: community.into(),
        phone: phone.into(),
        ..Default::default()
    }
}

fn put_residents(store: &Store, residents: Vec<anxin_proto::v1::Resident>) {
    let batch = crate::store::directory::DirectoryBatch {
        residents,
        ..Default::default()
    };
    store.put_batch(&batch, AuditEntry::default()).unwrap();
}

/// Every page of `query`, following `next`; `between` runs before each
/// page after the first.
fn walk_residents(
    store: &Store,
    mut query: crate::domain::listing::ListQuery,
    mut between: impl FnMut(usize),
) -> Vec<anxin_proto::v1::Resident> {
    let mut seen = Vec::new();
    for page_no in 0.. {
        if page_no > 0 {
            between(page_no);
        }
        let page = store.residents_page(&query).unwrap();
        assert!(page.items.len() <= query.limit());
        seen.extend(page.items);
        match page.next {
            Some(next) => query.after = next,
            None => return seen,
        }
        assert!(page_no < 10_000, "paging does not end");
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_visits_every_row_once_while_rows_come_and_go() {
    use crate::domain::listing::ListQuery;
    use std::collections::BTreeMap;
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        // 300 residents in 5 communities; the walk moves some of them to
        // c-9 (gone from the walked communities) and adds new ones.
        put_residents(
            &store,
            (0..300)
                .map(|i| person(&format!("r-{i:04}"), "n", &format!("c-{}", i % 5), ""))
                .collect(),
        );
        let mut touched = std::collections::BTreeSet::new();
        let scope = vec!["c-1".to_string(), "c-3".into(), "c-4".into()];
        for query in [
            ListQuery {
                limit: 7,
                ..Default::default()
            },
            ListQuery {
                limit: 9,
                scope: Some(scope.clone()),
                ..Default::default()
            },
            ListQuery {
                limit: 4,
                community: "c-3".into(),
                ..Default::default()
            },
        ] {
            let round = touched.len();
            let seen = walk_residents(&store, query.clone(), |page| {
                let moved = format!("r-{:04}", (page * 37 + round) % 300);
                let added = format!("r-new-{round}-{page}");
                touched.insert(moved.clone());
                touched.insert(added.clone());
                put_residents(
                    &store,
                    vec![
                        person(&moved, "n", "c-9", ""),
                        person(&added, "n", &format!("c-{}", page % 5), ""),
                    ],
                );
            });
            let mut counts = BTreeMap::new();
            for r in &seen {
                *counts.entry(r.id.clone()).or_insert(0) += 1;
                assert!(query.in_scope(&r.community_id), "{} out of scope", r.id);
            }
            // A row moved during the walk may be met again at its new
            // place; no other row is met twice, and every untouched row
            // of the walked communities is met.
            for (id, n) in &counts {
                assert!(
                    *n == 1 || (touched.contains(id) && *n == 2),
                    "{id} met {n} times"
                );
            }
            for i in 0..300 {
                let id = format!("r-{i:04}");
                let community = format!("c-{}", i % 5);
                let walked = query.in_scope(&community)
                    && (query.community.is_empty() || query.community == community);
                if walked && !touched.contains(&id) {
                    assert_eq!(counts.get(&id), Some(&1), "{id} missed");
                }
            }
            // Pages come in (community, id) order.
            let keys: Vec<_> = seen
                .iter()
                .map(|r| (r.community_id.clone(), r.id.clone()))
                .collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "out of order");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_filter_by_index_and_never_leave_the_callers_communities() {
    use crate::domain::listing::ListQuery;
    use anxin_proto::v1::{DeviceRecord, GatewayRecord, Place, Staff};
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        put_residents(
            &store,
            vec![
                person("r-1", "王秀英", "c-1", "138 0000 0001"),
                person("r-2", "王建国", "c-2", "+86 139-0000-0002"),
                person("r-3", "Wang Li", "c-1", ""),
                person("r-4", "李娜", "c-2", "138 0000 0004"),
                person("wang", "Wanda", "c-1", ""),
            ],
        );
        let search = |text: &str, scope: Option<Vec<&str>>| -> Vec<String> {
            let mut query = ListQuery {
                search: text.into(),
                limit: 2,
                scope: scope.map(|s| s.iter().map(|c| c.to_string()).collect()),
                ..Default::default()
            };
            let mut ids = Vec::new();
            loop {
                let page = store.residents_page(&query).unwrap();
                ids.extend(page.items.into_iter().map(|r| r.id));
                match page.next {
                    Some(next) => query.after = next,
                    None => return ids,
                }
            }
        };
        assert_eq!(search("王", None), ["r-2", "r-1"]);
        assert_eq!(search("王", Some(vec!["c-1"])), ["r-1"]);
        assert_eq!(search("138 0000", None), ["r-1", "r-4"]);
        assert_eq!(search("1390000", Some(vec!["c-1"])), Vec::<String>::new());
        // "wang" names r-3 and is both the name and the id of `wang`:
        // each is listed once.
        assert_eq!(search("WAN", None), ["wang", "r-3"]);
        assert_eq!(search("r-", None), ["r-1", "r-2", "r-3", "r-4"]);
        // A moved resident is found in its new community only.
        put_residents(&store, vec![person("r-1", "张秀英", "c-2", "")]);
        assert_eq!(search("王", Some(vec!["c-1"])), Vec::<String>::new());
        assert_eq!(search("张", None), ["r-1"]);
        let in_community = |community: &str, scope: Option<Vec<String>>| {
            let query = ListQuery {
                community: community.into(),
                scope,
                ..Default::default()
            };
            let page = store.residents_page(&query).unwrap();
            page.items.into_iter().map(|r| r.id).collect::<Vec<_>>()
        };
        assert_eq!(in_community("c-2", None), ["r-1", "r-2", "r-4"]);
        assert!(in_community("c-2", Some(vec!["c-1".into()])).is_empty());
        assert!(
            store
                .residents_page(&ListQuery {
                    after: "not hex".into(),
                    ..Default::default()
                })
                .is_err()
        );

        // Devices by gateway and by resident, moved with their record.
        let device = |id: &str, resident: &str, gateway: &str| DeviceRecord {
            id: id.into(),
            kind: "call_button".into(),
            resident_id: resident.into(),
            gateway_id: gateway.into(),
            ..Default::default()
        };
        let batch = crate::store::directory::DirectoryBatch {
            devices: vec![
                device("d-1", "r-1", "gw-a"),
                device("d-2", "r-1", "gw-b"),
                device("d-3", "r-2", "gw-a"),
            ],
            ..Default::default()
        };
        store.put_batch(&batch, AuditEntry::default()).unwrap();
        let devices = |query: ListQuery| -> Vec<String> {
            let page = store.devices_page(&query).unwrap();
            page.items.into_iter().map(|d| d.id).collect()
        };
        let on = |gateway: &str| ListQuery {
            gateway: gateway.into(),
            ..Default::default()
        };
        assert_eq!(devices(on("gw-a")), ["d-1", "d-3"]);
        let of_r1 = ListQuery {
            resident: "r-1".into(),
            ..Default::default()
        };
        assert_eq!(devices(of_r1), ["d-1", "d-2"]);
        let batch = crate::store::directory::DirectoryBatch {
            devices: vec![device("d-1", "r-1", "gw-b")],
            ..Default::default()
        };
        store.put_batch(&batch, AuditEntry::default()).unwrap();
        assert_eq!(devices(on("gw-a")), ["d-3"]);
        assert_eq!(devices(on("gw-b")), ["d-1", "d-2"]);
        assert_eq!(devices(ListQuery::default()), ["d-1", "d-2", "d-3"]);

        // Staff by community; a carer sees colleagues of their communities.
        let member = |id: &str, name: &str, communities: &[&str]| Staff {
            id: id.into(),
            name: name.into(),
            communities: communities.iter().map(|c| c.to_string()).collect(),
            active: true,
            ..Default::default()
        };
        let batch = crate::store::directory::DirectoryBatch {
            staff: vec![
                member("s-1", "Zhou", &["c-1"]),
                member("s-2", "Zhao", &["c-1", "c-2"]),
                member("s-3", "Qian", &["c-2"]),
                member("s-4", "City", &["*"]),
            ],
            ..Default::default()
        };
        store.put_batch(&batch, AuditEntry::default()).unwrap();
        let staff = |query: ListQuery| -> Vec<String> {
            let page = store.staff_page(&query).unwrap();
            page.items.into_iter().map(|s| s.id).collect()
        };
        let of = |community: &str| ListQuery {
            community: community.into(),
            ..Default::default()
        };
        assert_eq!(staff(of("c-2")), ["s-2", "s-3"]);
        let carer = ListQuery {
            scope: Some(vec!["c-1".into()]),
            ..Default::default()
        };
        assert_eq!(staff(carer.clone()), ["s-1", "s-2", "s-4"]);
        let searching = ListQuery {
            search: "zh".into(),
            ..carer.clone()
        };
        assert_eq!(staff(searching), ["s-1", "s-2"]);
        let elsewhere = ListQuery {
            community: "c-2".into(),
            ..carer
        };
        assert!(staff(elsewhere).is_empty());

        // Gateways by community and scope; places by parent.
        for (id, community) in [("gw-a", "c-1"), ("gw-b", "c-2"), ("gw-c", "")] {
            let gateway = GatewayRecord {
                id: id.into(),
                community_id: community.into(),
                ..Default::default()
            };
            store
                .put_gateway(&gateway, "", AuditEntry::default())
                .unwrap();
        }
        let page = store
            .gateways_page(&ListQuery {
                scope: Some(vec!["c-2".into()]),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].id, "gw-b");
        for (id, parent) in [("c-1", "s-x"), ("c-2", "s-y"), ("s-x", "")] {
            let place = Place {
                id: id.into(),
                name: id.into(),
                parent_id: parent.into(),
                ..Default::default()
            };
            store.put_place(&place, AuditEntry::default()).unwrap();
        }
        let page = store
            .places_page(&ListQuery {
                parent: "s-x".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].id, "c-1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn alert_history_pages_newest_first_within_the_callers_communities() {
    use crate::domain::listing::ListQuery;
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        // Ten alerts, raised at 100, 200, … in c-0 and c-1 in turn; the
        // even ones resolved.
        for i in 0..10i64 {
            let origin = Origin {
                resident_id: format!("r-{i}"),
                community_id: format!("c-{}", i % 2),
                ..Default::default()
            };
            let committed = store
                .commit_event(
                    "gw",
                    &uplink(&format!("btn-{i}"), 1, EventKind::Sos),
                    (i + 1) * 100,
                    &origin,
                    &POLICY,
                )
                .unwrap();
            let (alert, _) = changed(committed);
            if i % 2 == 0 {
                store
                    .update_alert(&alert.id, |a| {
                        a.set_state(AlertState::Cancelled);
                        Ok(Change::default())
                    })
                    .unwrap();
            }
        }
        let walk = |mut query: ListQuery| -> Vec<i64> {
            let mut out = Vec::new();
            loop {
                let page = store.alerts_page(&query).unwrap();
                out.extend(page.items.iter().map(|a| a.created_ms));
                match page.next {
                    Some(next) => query.after = next,
                    None => return out,
                }
            }
        };
        let all = ListQuery {
            limit: 3,
            ..Default::default()
        };
        assert_eq!(
            walk(all.clone()),
            [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100]
        );
        let open = ListQuery {
            states: vec![AlertState::New],
            ..all.clone()
        };
        assert_eq!(walk(open), [1000, 800, 600, 400, 200]);
        let cancelled_in_c0 = ListQuery {
            states: vec![AlertState::Cancelled],
            community: "c-0".into(),
            ..all.clone()
        };
        assert_eq!(walk(cancelled_in_c0), [900, 700, 500, 300, 100]);
        let carer = ListQuery {
            scope: Some(vec!["c-1".into()]),
            from_ms: 300,
            to_ms: 900,
            ..all.clone()
        };
        assert_eq!(walk(carer.clone()), [800, 600, 400]);
        let elsewhere = ListQuery {
            community: "c-0".into(),
            ..carer
        };
        assert!(walk(elsewhere).is_empty());
        assert!(
            store
                .alerts_page(&ListQuery {
                    after: "0102".into(),
                    ..Default::default()
                })
                .is_err()
        );
    })
    .await;
}

/// PostgreSQL: every page's statement can be served by an index. With
/// sequential scans priced out (`enable_seqscan = off`), a plan that still
/// holds one has no index to use.
#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_pages_are_served_by_indexes() {
    use postgres::listing::sql;
    let url = match postgres::scratch::create().await {
        Ok(url) => url,
        Err(why) => {
            anxin_host::skip::skip("the EXPLAIN test", &format!("no PostgreSQL: {why}"));
            return;
        }
    };
    // Connecting migrates the database to the newest schema.
    drop(postgres::PgStore::connect(&url, 1).await.unwrap());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("set enable_seqscan = off")
        .await
        .unwrap();
    let search = format!(
        "{} and (t.term, t.id) > ($3, $4){}21",
        sql::SEARCH,
        sql::SEARCH_ORDER
    );
    let scoped = format!(
        "{} and r.community_id = any('{{c-1}}'::text[]){}21",
        sql::SEARCH,
        sql::SEARCH_ORDER
    );
    // Each with the index that orders and bounds it.
    let statements = [
        (
            "residents",
            sql::RESIDENTS.to_string(),
            "residents_by_community",
        ),
        (
            "residents of a community",
            sql::RESIDENTS_OF_COMMUNITY.into(),
            "residents_by_community",
        ),
        ("search", search, "resident_terms_pkey"),
        ("search in a scope", scoped, "resident_terms_pkey"),
        ("devices", sql::DEVICES.into(), "devices_pkey"),
        (
            "devices of a gateway",
            sql::DEVICES_OF_GATEWAY.into(),
            "devices_by_gateway",
        ),
        (
            "devices of a resident",
            sql::DEVICES_OF_RESIDENT.into(),
            "devices_by_resident",
        ),
        ("staff", sql::STAFF.into(), "staff_pkey"),
        (
            "staff of a community",
            sql::STAFF_OF_COMMUNITY.into(),
            "staff_communities_pkey",
        ),
        ("gateways", sql::GATEWAYS.into(), "gateways_pkey"),
        ("places", sql::PLACES.into(), "places_pkey"),
        (
            "enrolled residents",
            sql::ENROLLED.into(),
            "residents_enrolled",
        ),
    ];
    for (what, statement, index) in statements {
        // Literal arguments in place of the parameters (text or a count).
        let statement = statement
            .replace("$1", "'c-1'")
            .replace("$2", "'c-1~'")
            .replace("$3", "'c-1'")
            .replace("$4", "''")
            .replace("$5", "21");
        let statement = statement
            .replace("limit 'c-1~'", "limit 100")
            .replace("limit 'c-1'", "limit 100");
        let plan: Vec<String> = client
            .query(&format!("explain {statement}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}\n{statement}"))
            .iter()
            .map(|row| row.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(
            !plan.contains("Seq Scan"),
            "{what} needs a sequential scan:\n{plan}"
        );
        assert!(
            plan.contains(&format!("using {index}")) || plan.contains(&format!("on {index}")),
            "{what} does not use {index}:\n{plan}"
        );
    }
    drop(client);
    postgres::scratch::drop(&url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn store_check_passes_a_sound_store_and_names_what_is_broken() {
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        changed(commit(&store, "btn", 1, EventKind::Sos, 10));
        store
            .commit_plain_events("gw", &[uplink("sensor", 1, EventKind::Heartbeat)], 5)
            .unwrap();
        put_residents(
            &store,
            vec![person("r-1", "Wang Fang", "c-1", "13800000001")],
        );
        let report = store.check();
        assert!(report.is_ok(), "{:?}", report.problems);
        let count = |kind: &str| {
            report
                .counts
                .iter()
                .find(|(k, _)| k == kind)
                .map(|(_, n)| *n)
        };
        assert_eq!(count("events"), Some(2));
        assert_eq!(count("alerts"), Some(1));
        assert_eq!(count("residents"), Some(1));
        let Engine::Sled(dir) = &engine else {
            return;
        };
        // An index entry lost behind the store's back (sled's own API, the
        // store closed): named by the check, kind and count.
        store.flush().await.unwrap();
        drop(store);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        {
            let db = ::sled::open(dir.path()).unwrap();
            db.open_tree("open_alerts").unwrap().clear().unwrap();
            db.flush().unwrap();
        }
        let store = engine.open().await;
        let report = store.check();
        assert_eq!(
            report.problems,
            vec!["index open_alerts: 1 entries missing (first 0x0000000000000001)".to_string()]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_use_token_is_spent_once_of_its_kind_and_positions_keep_the_newest() {
    use crate::store::directory::TokenRecord;
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        let audit = || AuditEntry {
            at_ms: 1,
            actor: "t".into(),
            action: "family.sign_in".into(),
            ..Default::default()
        };
        let link = TokenRecord {
            subject_kind: "family_link".into(),
            subject_id: "r-1|+8613800000000|7".into(),
            issued_ms: 1,
            expires_ms: 1_000,
            session: true,
            ..Default::default()
        };
        store.put_token("d-link", &link, audit()).unwrap();
        let staff = TokenRecord {
            subject_kind: "staff".into(),
            subject_id: "li".into(),
            ..Default::default()
        };
        store.put_token("d-staff", &staff, audit()).unwrap();
        // A token of another kind is never spent (nor revoked) by this.
        let other = store
            .spend_token("d-staff", "family_link", 10, audit())
            .unwrap();
        assert_eq!(other.map(|t| t.subject_kind).as_deref(), Some("staff"));
        assert_eq!(store.token("d-staff").unwrap().unwrap().revoked_ms, 0);
        // The first spends it; the second finds it spent.
        let first = store
            .spend_token("d-link", "family_link", 10, audit())
            .unwrap()
            .unwrap();
        assert_eq!(first.revoked_ms, 0);
        let second = store
            .spend_token("d-link", "family_link", 11, audit())
            .unwrap()
            .unwrap();
        assert_eq!(second.revoked_ms, 10);
        assert!(
            store
                .spend_token("d-none", "family_link", 10, audit())
                .unwrap()
                .is_none()
        );
        // Expired: not spent.
        let late = TokenRecord {
            expires_ms: 5,
            ..link.clone()
        };
        store.put_token("d-late", &late, audit()).unwrap();
        store
            .spend_token("d-late", "family_link", 10, audit())
            .unwrap();
        assert_eq!(store.token("d-late").unwrap().unwrap().revoked_ms, 0);

        let at = |device: &str, at_ms: i64, lat_e7: i32| anxin_proto::v1::Position {
            location: Some(anxin_proto::v1::Location {
                lat_e7,
                ..Default::default()
            }),
            at_ms,
            device_id: device.into(),
            source: "event".into(),
        };
        store
            .note_positions(&[at("w-1", 100, 1), at("w-1", 300, 3), at("w-2", 50, 5)])
            .unwrap();
        store.note_positions(&[at("w-1", 200, 2)]).unwrap();
        assert_eq!(store.last_position("w-1").unwrap(), Some(at("w-1", 300, 3)));
        assert_eq!(store.last_position("w-2").unwrap().unwrap().at_ms, 50);
        assert_eq!(store.last_position("w-3").unwrap(), None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signal_states_and_vital_days_fold_and_prune_on_both_engines() {
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        let day = |resident: &str, sign: &str, day: i32, values: &[f64]| {
            let mut d = anxin_proto::v1::VitalDay {
                resident_id: resident.into(),
                sign: sign.into(),
                day,
                ..Default::default()
            };
            for v in values {
                crate::domain::vitals::fold_day(&mut d, *v);
            }
            d
        };
        let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        store
            .save_signals(
                &[
                    ("vitals/r-1/spo2".into(), Some(b"one".to_vec())),
                    ("meter/r-1/water".into(), Some(b"m1".to_vec())),
                    ("meter/r_2/water".into(), Some(b"m2".to_vec())),
                ],
                // The same day twice in one call folds into one row.
                &[
                    day("r-1", "spo2", 100, &[95.0, 91.0]),
                    day("r-1", "spo2", 100, &[97.0]),
                    day("r-1", "spo2", 101, &[93.0]),
                    day("r-1", "heart_rate", 90, &[70.0]),
                ],
            )
            .unwrap();
        store
            .save_signals(
                &[
                    ("vitals/r-1/spo2".into(), Some(b"two".to_vec())),
                    ("meter/r-1/water".into(), None),
                ],
                &[day("r-1", "spo2", 100, &[89.0])],
            )
            .unwrap();
        assert_eq!(
            store
                .signal_states(&keys(&["meter/r-1/water", "vitals/r-1/spo2", "zone/r-9"]))
                .unwrap(),
            vec![None, Some(b"two".to_vec()), None]
        );
        // A prefix is a prefix: `_` matches only itself.
        let under = store.signal_states_under("meter/r_").unwrap();
        assert_eq!(under, vec![("meter/r_2/water".to_string(), b"m2".to_vec())]);

        let days = store.vital_days("r-1", 95, 102).unwrap();
        let spo2: Vec<_> = days.iter().filter(|d| d.sign == "spo2").collect();
        assert_eq!(spo2.len(), 2, "{days:?}");
        assert_eq!(
            (spo2[0].day, spo2[0].min, spo2[0].max, spo2[0].count),
            (100, 89.0, 97.0, 4)
        );
        assert_eq!(spo2[0].sum, 95.0 + 91.0 + 97.0 + 89.0);
        assert!(
            days.iter().all(|d| d.sign != "heart_rate"),
            "day 90 is before the range"
        );

        assert_eq!(store.prune_vital_days(101, 10).unwrap(), 2);
        assert_eq!(store.prune_vital_days(101, 10).unwrap(), 0);
        let left = store.vital_days("r-1", 0, 1_000).unwrap();
        assert_eq!(left.iter().map(|d| d.day).collect::<Vec<_>>(), vec![101]);
        assert!(store.check().is_ok(), "{:?}", store.check());
    })
    .await;
}

/// Device records an earlier version kept with a bare password digest are
/// sealed where they lie at start (`desks/credentials.rs`): the sealed
/// credential takes the same password, the digest is gone from the store,
/// the sealing is audited, and a sealed record is left as it is.
#[tokio::test(flavor = "multi_thread")]
async fn legacy_password_digests_are_sealed_where_they_lie() {
    on_every_engine(|engine| async move {
        let store = engine.open().await;
        let legacy = |id: &str| anxin_proto::v1::DeviceRecord {
            id: id.into(),
            kind: "call_button".into(),
            resident_id: "r-1".into(),
            gateway_id: "gw-a".into(),
            password_sha256: anxin_credentials::legacy_digest(&format!("secret-of-{id}-0123")),
            ..Default::default()
        };
        let already = anxin_proto::v1::DeviceRecord {
            credential: anxin_credentials::seal("secret-of-d-3-0123"),
            password_sha256: String::new(),
            ..legacy("d-3")
        };
        let batch = crate::store::directory::DirectoryBatch {
            devices: vec![legacy("d-1"), legacy("d-2"), already.clone()],
            ..Default::default()
        };
        store.put_batch(&batch, AuditEntry::default()).unwrap();
        let gateways = crate::desks::gateways::ConnectedGateways::default();
        let sealed = crate::desks::credentials::seal_legacy(&store, &gateways).unwrap();
        assert_eq!(sealed, 2);
        for id in ["d-1", "d-2", "d-3"] {
            let device = store.device(id).unwrap().unwrap();
            assert!(device.password_sha256.is_empty(), "{id}: {device:?}");
            assert!(anxin_credentials::is_sealed(&device.credential), "{id}");
            assert!(anxin_credentials::verify(
                &format!("secret-of-{id}-0123"),
                &device.credential
            ));
            assert!(!anxin_credentials::verify(
                "secret-of-d-9-0123",
                &device.credential
            ));
        }
        assert_eq!(store.device("d-3").unwrap().unwrap(), already);
        let audited = store
            .query(&AuditQuery {
                action: "device.credentials_sealed".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(audited.len(), 1);
        assert!(
            audited[0].detail.starts_with("2 legacy"),
            "{:?}",
            audited[0]
        );
        // Nothing left to seal: a second start writes nothing.
        assert_eq!(
            crate::desks::credentials::seal_legacy(&store, &gateways).unwrap(),
            0
        );
    })
    .await;
}

/// Two replicas starting together on one database both try to seal the
/// legacy digests: they take turns, so each record is sealed once (a
/// second sealing under another salt would reach the gateway as a new
/// credential and end the devices' connections), and the first one's
/// sealing is what stays.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_starting_together_seal_each_legacy_digest_once() {
    on_every_engine(|engine| async move {
        let Engine::Postgres(_) = engine else {
            return; // one process holds a sled store
        };
        let (first, second) = (engine.open().await, engine.open().await);
        let devices: Vec<_> = (0..300)
            .map(|i| anxin_proto::v1::DeviceRecord {
                id: format!("d-{i:03}"),
                kind: "call_button".into(),
                resident_id: "r-1".into(),
                gateway_id: "gw-a".into(),
                password_sha256: anxin_credentials::legacy_digest(&format!("secret-{i:03}-0123")),
                ..Default::default()
            })
            .collect();
        let batch = crate::store::directory::DirectoryBatch {
            devices,
            ..Default::default()
        };
        first.put_batch(&batch, AuditEntry::default()).unwrap();
        let seal = |store: Store| {
            tokio::task::spawn_blocking(move || {
                let gateways = crate::desks::gateways::ConnectedGateways::default();
                crate::desks::credentials::seal_legacy(&store, &gateways).unwrap()
            })
        };
        let (a, b) = tokio::join!(seal(first.clone()), seal(second));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a + b, 300, "sealed {a} and {b}: some records twice");
        let audited = first
            .query(&AuditQuery {
                action: "device.credentials_sealed".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(audited.len(), 1, "{audited:?}");
        let device = first.device("d-042").unwrap().unwrap();
        assert!(anxin_credentials::verify(
            "secret-042-0123",
            &device.credential
        ));
    })
    .await;
}
