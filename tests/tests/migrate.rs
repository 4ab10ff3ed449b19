//! Moving up: `anxin-server migrate` copies a sled store into PostgreSQL;
//! a replica on the copy serves the same alerts, events and audit, and
//! numbers new alerts after the old ones.

use anxin_tests::{Gateway, PATIENCE, Server, Sim, binary, eventually, require_postgres};

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
    let alerts_before = server.alerts().await;
    let events_before = server.events_for("btn-1").await;
    let audit_before = server.audit_of(&format!("alert/{first}")).await;
    let report_before = server.get("/api/v1/reports").await;
    server.proc.terminate();
    server.proc.wait_exit(PATIENCE).await;
    drop(gateway);

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

    let home = dir.path().join("replica");
    std::fs::create_dir_all(&home).unwrap();
    let replica = Server::start_replica(&home, &database, &[]).await;
    assert_eq!(replica.alerts().await, alerts_before);
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
