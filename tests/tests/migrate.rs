//! Moving up: `anxin-server migrate` copies a sled store into PostgreSQL;
//! a replica on the copy serves the same alerts, events and audit, and
//! numbers new alerts after the old ones.

use anxin_proto::v1::{
    AuditEntry, CheckinDay, DeviceEvent, EventKind, SignOfLife, UplinkEvent, Visit, VisitPlan,
};
use anxin_server::store::{EventDay, Storage, postgres::PgStore};
use anxin_tests::{Gateway, PATIENCE, Server, Sim, binary, eventually, require_postgres};

/// A local day of the check-in and the visit below.
const DAY: i32 = 20_000;

/// What the welfare desk and retention leave in a store, written through
/// the store's API on the stopped server's store: a sign of life, a judged
/// check-in day, a visit plan and its visit, and a daily summary of a
/// pruned telemetry event (received two hours ago: recent enough that no
/// server prunes the summary).
async fn add_welfare_and_summaries(store: &anxin_server::store::Store) {
    let audit = |action: &str| AuditEntry {
        at_ms: 1_000,
        actor: "system".into(),
        action: action.into(),
        target: "resident/r-1".into(),
        ..Default::default()
    };
    let sign = SignOfLife {
        resident_id: "r-1".into(),
        at_ms: 1_000,
        how: "checkin".into(),
        source: "btn-1".into(),
    };
    store.note_signs(std::slice::from_ref(&sign)).unwrap();
    let day = CheckinDay {
        resident_id: "r-1".into(),
        day: DAY,
        community_id: "c-a".into(),
        outcome: "ok".into(),
        sign: Some(sign),
        judged_ms: 2_000,
        ..Default::default()
    };
    store
        .judge_checkin_day(&day, audit("checkin.judged"))
        .unwrap();
    let plan = VisitPlan {
        id: "plan-1".into(),
        resident_id: "r-1".into(),
        community_id: "c-a".into(),
        weekdays: vec![1, 4],
        // Inactive: no server judges its days while the test runs.
        active: false,
        ..Default::default()
    };
    store
        .put_visit_plans(&[plan], audit("visit_plan.put"))
        .unwrap();
    let visit = Visit {
        plan_id: "plan-1".into(),
        day: DAY,
        resident_id: "r-1".into(),
        community_id: "c-a".into(),
        status: "done".into(),
        arrived_ms: 3_000,
        carer_id: "carer-1".into(),
        ..Default::default()
    };
    store
        .record_visit(&visit, audit("visit.done"), &[])
        .unwrap();
    let telemetry = UplinkEvent {
        event: Some(DeviceEvent {
            device_id: "room-1".into(),
            seq: 7,
            kind: EventKind::Telemetry as i32,
            ..Default::default()
        }),
        stored_ms: 1,
    };
    store
        .commit_plain_events("gw-test", &[telemetry], anxin_proto::now_ms() - 7_200_000)
        .unwrap();
    assert_eq!(
        store.prune_events(anxin_proto::now_ms(), 0, 100).unwrap(),
        1,
        "the telemetry is folded into its daily summary"
    );
    store.flush().await.unwrap();
}

type Welfare = (
    Option<SignOfLife>,
    Vec<CheckinDay>,
    Vec<VisitPlan>,
    Vec<Visit>,
    Vec<EventDay>,
);

fn welfare_of(store: &dyn Storage) -> Welfare {
    (
        store.sign_of_life("r-1").unwrap(),
        store.checkin_days(DAY, DAY).unwrap(),
        store.visit_plans().unwrap(),
        store.visits(DAY, DAY).unwrap(),
        store.event_days("room-1").unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_moves_to_postgres_with_every_record_and_the_same_report() {
    let Some(database) = require_postgres("migrate").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_on_sled(dir.path()).await;
    server.add_community("c-a").await;
    server
        .add_resident("r-1", "c-a", &["btn-1", "room-1:room_sensor"])
        .await;
    server.add_resident("r-2", "c-a", &["btn-2"]).await;
    let carer = server
        .add_staff("carer-1", "carer", &["c-a"], serde_json::json!({}))
        .await;
    let gateway = Gateway::start(
        dir.path(),
        server.grpc_port,
        &["btn-1", "room-1:room_sensor", "btn-2"],
    )
    .await;
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-1").await;
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-2").await;
    let offered = eventually("both alarms offered", PATIENCE, || async {
        let alerts = server.alerts().await;
        (alerts.len() == 2 && alerts.iter().all(|a| a["state"] == "ALERT_STATE_OFFERED"))
            .then_some(alerts)
    })
    .await;
    let first = offered[0]["id"].as_str().unwrap().to_string();
    let (status, _) = server
        .call("POST", &format!("/api/v1/alerts/{first}/ack"), &carer, None)
        .await;
    assert_eq!(status, 200);
    gateway.wait_drained(PATIENCE).await;
    let lists = [
        "/api/v1/residents?community=c-a",
        "/api/v1/residents?q=r-1",
        "/api/v1/devices?resident=r-1",
        "/api/v1/devices?gateway=gw-test",
        "/api/v1/staff?community=c-a",
    ];
    let mut lists_before = Vec::new();
    for list in lists {
        lists_before.push(server.get(list).await);
    }
    let alerts_before = server.alerts().await;
    let events_before = server.events_for("btn-1").await;
    let audit_before = server.audit_of(&format!("alert/{first}")).await;
    server.proc.terminate();
    server.proc.wait_exit(PATIENCE).await;
    drop(gateway);
    let welfare_before = {
        let store = server.open_store().await;
        add_welfare_and_summaries(&store).await;
        welfare_of(store.as_ref())
    };
    // The report, welfare included, as the sled server gives it.
    server.restart().await;
    let report_before = server.get("/api/v1/reports").await;
    server.proc.terminate();
    server.proc.wait_exit(PATIENCE).await;

    let migrate = |url: String| {
        let config = server.config_path().to_path_buf();
        async move {
            tokio::process::Command::new(binary("anxin-server"))
                .arg("migrate")
                .arg("--config")
                .arg(config)
                .arg("--to")
                .arg(url)
                .output()
                .await
                .unwrap()
        }
    };
    let output = migrate(database.clone()).await;
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for kind in [
        "residents",
        "devices",
        "staff",
        "tokens",
        "alerts",
        "events",
        "audit",
        "signs_of_life",
        "checkin_days",
        "visit_plans",
        "visits",
        "event_days",
    ] {
        let line = printed
            .lines()
            .find(|l| l.starts_with(&format!("count {kind} ")))
            .unwrap_or_else(|| panic!("no count of {kind}: {printed}"));
        assert!(line.ends_with(" ok"), "{line}");
        assert!(!line.contains("sled=0 "), "nothing to compare: {line}");
    }
    assert!(printed.contains("report identical"), "{printed}");
    // A second run would mix two stores: refused.
    let again = migrate(database.clone()).await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds records"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let copy = PgStore::connect(&database, 2).await.unwrap();
    assert_eq!(welfare_of(&copy), welfare_before);

    let home = dir.path().join("replica");
    std::fs::create_dir_all(&home).unwrap();
    let replica = Server::start_replica(&home, &database, &[]).await;
    assert_eq!(replica.alerts().await, alerts_before);
    // The directory's filtered lists read the same: their index columns and
    // tables are filled on the copy too.
    for (list, before) in lists.iter().zip(&lists_before) {
        let after = replica.get(list).await;
        eprintln!("{list}: {after}");
        assert_eq!(&after, before, "{list}");
    }
    assert_eq!(replica.events_for("btn-1").await, events_before);
    let audit_after = replica.audit_of(&format!("alert/{first}")).await;
    assert_eq!(audit_after, audit_before);
    assert_eq!(replica.get("/api/v1/reports").await, report_before);
    // The audit chain came along unbroken, and goes on from its head.
    let chain = replica.get("/api/v1/audit/verify").await;
    assert!(chain["brokenAt"].is_null(), "{chain}");
    assert_eq!(chain["unchained"], 0, "{chain}");
    // The staff's token works on the copy, and new alerts come after.
    let (status, _) = replica.call("GET", "/api/v1/alerts", &carer, None).await;
    assert_eq!(status, 200);
    replica.add_resident("r-3", "c-a", &["btn-3"]).await;
    let gateway = Gateway::start(dir.path(), replica.grpc_port, &["btn-3"]).await;
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-3").await;
    let newest = eventually("an alert raised on the copy", PATIENCE, || async {
        let alerts = replica.alerts().await;
        (alerts.len() == 3).then(|| alerts[2].clone())
    })
    .await;
    let number = |v: &serde_json::Value| v["id"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(alerts_before.iter().all(|a| number(a) < number(&newest)));
    let chain = replica.get("/api/v1/audit/verify").await;
    assert!(chain["brokenAt"].is_null(), "{chain}");
}
