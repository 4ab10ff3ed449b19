//! Three replicas over one PostgreSQL database, the simulator offering
//! load with a ledger, and 20 cycles of SIGKILL of a random replica and its
//! restart. Afterwards: every event acked `stored` is at the server exactly
//! once and each incident is one alert (`anxin-sim verify`); every offer
//! deadline that passed fired once (the audit holds each escalation once);
//! every webhook reached the receiver at least once and is recorded once.

use std::{collections::HashMap, time::Duration};

use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, eventually, field, load_devices, require_postgres,
    verify_ledger, webhook::WebhookReceiver,
};
use rand::Rng;

const CYCLES: usize = 20;
const DEVICES: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_replica_kills_lose_duplicate_and_double_fire_nothing() {
    let Some(database) = require_postgres("replica_kill_cycles").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = WebhookReceiver::start().await;
    let emergency = format!("emergency_webhook = \"{}\"", receiver.url_for("emergency"));
    let extra = [
        ("routing", "p0_deadline_secs = 2"),
        ("notify", "backoff_initial_ms = 100"),
        ("notify", emergency.as_str()),
    ];
    let mut replicas = Vec::new();
    for i in 0..3 {
        let home = dir.path().join(format!("r{i}"));
        std::fs::create_dir_all(&home).unwrap();
        replicas.push(Server::start_replica(&home, &database, &extra).await);
    }
    let admin = &replicas[0];
    admin.add_community("c-a").await;
    let devices = load_devices(DEVICES);
    for (i, device) in devices.iter().enumerate() {
        admin
            .add_resident(&format!("r-{i}"), "c-a", &[device.as_str()])
            .await;
    }
    for (id, role) in [
        ("carer-1", "carer"),
        ("carer-2", "carer"),
        ("sup-1", "supervisor"),
    ] {
        let contact = serde_json::json!({ "contact": receiver.url_for(id) });
        admin.add_staff(id, role, &["c-a"], contact).await;
    }
    let servers: Vec<String> = replicas
        .iter()
        .map(|r| format!("\"http://127.0.0.1:{}\"", r.grpc_port))
        .collect();
    let servers = format!("servers = [{}]", servers.join(", "));
    let gateway = Gateway::start_for_load(
        dir.path(),
        replicas[0].grpc_port,
        &devices,
        &[("uplink", servers.as_str())],
    )
    .await;
    let ledger = dir.path().join("ledger.jsonl");
    let mut load = Sim::ledger_load(
        dir.path(),
        &gateway.mqtt(),
        DEVICES,
        100,
        "p0=0.1,p3=0.9",
        &ledger,
    );

    let mut rng = rand::rng();
    for cycle in 0..CYCLES {
        let victim = rng.random_range(0..replicas.len());
        let witness = &replicas[(victim + 1) % replicas.len()];
        let before = witness.event_count().await;
        eventually(
            &format!("events to flow before kill {cycle}"),
            PATIENCE,
            || async { (witness.event_count().await > before).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        replicas[victim].restart().await;
    }

    let (summary, stored) = load.finish_load().await;
    assert!(
        stored >= 500,
        "too little load to prove anything: {summary}"
    );
    gateway.wait_drained(PATIENCE).await;

    // Every stored event once, one alert per incident.
    let verdict = verify_ledger(dir.path(), &ledger, &replicas[2].http()).await;
    let report = &verdict.report;
    assert_eq!(verdict.exit_code, Some(0), "{report}\n{:?}", verdict.lines);
    assert_eq!(field(report, "missing"), Some("0"), "{report}");
    assert_eq!(field(report, "duplicated"), Some("0"), "{report}");
    assert_eq!(field(report, "alert_mismatches"), Some("0"), "{report}");

    // Every chain runs to its end: carer, carer, supervisor, emergency
    // services, each step's deadline fired once, each notification
    // recorded once.
    let alerts = eventually("every chain at its end", PATIENCE, || async {
        let alerts = replicas[1].alerts().await;
        alerts
            .iter()
            .all(|a| a["escalationStep"] == "ESCALATION_STEP_EMERGENCY_SERVICES")
            .then_some(alerts)
    })
    .await;
    assert_eq!(alerts.len(), DEVICES, "one incident per resident");
    let mut recorded: HashMap<String, usize> = HashMap::new();
    for alert in &alerts {
        let id = alert["id"].as_str().unwrap().to_string();
        let target = format!("alert/{id}");
        let audit = eventually("every notification recorded", PATIENCE, || async {
            let audit = replicas[0].audit_of(&target).await;
            let delivered = audit
                .iter()
                .filter(|e| e["action"] == "notify.delivered")
                .count();
            (delivered >= 4).then_some(audit)
        })
        .await;
        let count = |action: &str| audit.iter().filter(|e| e["action"] == action).count();
        assert_eq!(alert["escalationLevel"], 3, "{alert}");
        assert_eq!(count("alert.offer"), 1, "alert {id}: {audit:?}");
        assert_eq!(count("alert.escalate"), 3, "alert {id}: {audit:?}");
        assert_eq!(count("notify.delivered"), 4, "alert {id}: {audit:?}");
        recorded.insert(id, 4);
    }
    // Delivered at least once each: the receiver saw every delivery id.
    let mut seen: HashMap<String, usize> = HashMap::new();
    while let Ok(delivery) = receiver.deliveries.try_recv() {
        *seen
            .entry(delivery.headers["x-anxin-delivery"].clone())
            .or_default() += 1;
    }
    for id in recorded.keys() {
        let of_alert = seen
            .keys()
            .filter(|d| d.starts_with(&format!("{id}-")))
            .count();
        assert_eq!(of_alert, 4, "deliveries of alert {id}: {seen:?}");
    }
    let repeats: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "{CYCLES} replica kills: {summary}; {report}; {} deliveries, {repeats} repeated",
        seen.len()
    );
}
