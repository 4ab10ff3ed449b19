//! Several server replicas over one PostgreSQL database, all active: a
//! change made through one reaches watchers on the others, "help is
//! coming" reaches the device whichever replica acknowledged, and an offer
//! deadline fires once however many timers see it, also when a replica
//! dies. (These need PostgreSQL whatever `ANXIN_TEST_STORE` says: SKIPPED
//! without it, a failure under CI=true.)

use std::time::{Duration, Instant};

use anxin_proto::v1::{AlertState, WatchAlertsRequest};
use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, eventually, field, require_postgres, sse::SseStream,
};

/// `n` replicas over `database`, each with its files in `dir/r{i}`.
async fn replicas(
    dir: &std::path::Path,
    database: &str,
    n: usize,
    extra: &[(&str, &str)],
) -> Vec<Server> {
    let mut out = Vec::new();
    for i in 0..n {
        let home = dir.join(format!("r{i}"));
        std::fs::create_dir_all(&home).unwrap();
        out.push(Server::start_replica(&home, database, extra).await);
    }
    out
}

/// The uplink list of a gateway that knows every replica.
fn servers_line(replicas: &[Server]) -> String {
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| format!("\"http://127.0.0.1:{}\"", r.grpc_port))
        .collect();
    format!("servers = [{}]", urls.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_reaches_watchers_and_the_device_through_the_others() {
    let Some(database) = require_postgres("replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), &database, 3, &[]).await;
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);
    // The gateway is connected to A only.
    let gateway = Gateway::start(dir.path(), a.grpc_port, &["btn-0001"]).await;
    // Staff written through A log in on every replica.
    let wang = a
        .add_staff(
            "dispatcher-wang",
            "dispatcher",
            &["*"],
            serde_json::json!({}),
        )
        .await;
    let mut on_a = SseStream::connect(&a.stream_url(&wang)).await;
    let mut on_b = SseStream::connect(&b.stream_url(&wang)).await;
    let mut on_c = SseStream::connect(&c.stream_url(&wang)).await;
    let mut watch_c = c
        .dispatch_client(&wang)
        .await
        .watch_alerts(WatchAlertsRequest { states: vec![] })
        .await
        .unwrap()
        .into_inner();

    let mut sim = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-0001"],
    );
    sim.line_starting("stored", PATIENCE).await;
    // Raised through A (the gateway's replica): B and C show it too.
    let raised = on_b.next_alert(|a| a["deviceId"] == "btn-0001").await;
    let alert_id = raised["id"].as_str().unwrap().to_string();
    on_c.next_alert(|a| a["id"] == alert_id.as_str()).await;

    // Acknowledged through B: A's console (and C's gRPC watchers) see it
    // within a second.
    let asked = Instant::now();
    let (status, acked) = b
        .call(
            "POST",
            &format!("/api/v1/alerts/{alert_id}/ack"),
            &wang,
            None,
        )
        .await;
    assert_eq!(status, 200, "{acked}");
    let seen = on_a
        .next_alert(|a| a["id"] == alert_id.as_str() && a["state"] == "ALERT_STATE_ACKNOWLEDGED")
        .await;
    let delay = asked.elapsed();
    eprintln!("acknowledged through B, seen on A's SSE after {delay:?}");
    assert_eq!(seen["acknowledgedBy"], "dispatcher-wang");
    assert!(
        delay < Duration::from_secs(1),
        "the acknowledgement reached another replica's watchers after {delay:?}"
    );
    tokio::time::timeout(PATIENCE, async {
        loop {
            let update = watch_c.message().await.unwrap().expect("watch open");
            let alert = update.alert.unwrap();
            if alert.id == alert_id && alert.state() == AlertState::Acknowledged {
                break;
            }
        }
    })
    .await
    .expect("C's gRPC watcher sees the acknowledgement");

    // The device, behind A, hears "help is coming" that B queued.
    let heard = sim.line_starting("acknowledged", PATIENCE).await;
    assert_eq!(field(&heard, "alert"), Some(alert_id.as_str()));
    assert!(heard.contains("help is coming"), "{heard}");
    assert_eq!(sim.proc.wait_exit(PATIENCE).await, Some(0));

    // Alert numbers are one sequence across replicas: the next alarm,
    // through C, gets the next number.
    drop(gateway);
    let gateway = Gateway::start(dir.path(), c.grpc_port, &["btn-0002"]).await;
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-0002").await;
    let next = on_a.next_alert(|a| a["deviceId"] == "btn-0002").await;
    let number = |v: &serde_json::Value| v["id"].as_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(number(&next), number(&raised) + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_offer_deadline_fires_once_across_replicas_also_when_one_dies() {
    let Some(database) = require_postgres("replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = replicas(
        dir.path(),
        &database,
        3,
        &[("routing", "p0_deadline_secs = 2")],
    )
    .await;
    let a = &replicas[0];
    a.add_community("c-a").await;
    a.add_resident("r-1", "c-a", &["btn-0001"]).await;
    for (id, role) in [
        ("carer-1", "carer"),
        ("carer-2", "carer"),
        ("sup-1", "supervisor"),
    ] {
        a.add_staff(id, role, &["c-a"], serde_json::json!({})).await;
    }
    let servers = servers_line(&replicas);
    let gateway = Gateway::start_with(
        dir.path(),
        a.grpc_port,
        &["btn-0001"],
        &[("uplink", servers.as_str())],
    )
    .await;
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-0001").await;
    let alert_id = eventually("the alarm offered", PATIENCE, || async {
        replicas[1]
            .alerts()
            .await
            .into_iter()
            .find(|a| a["deviceId"] == "btn-0001" && a["state"] == "ALERT_STATE_OFFERED")
            .map(|a| a["id"].as_str().unwrap().to_string())
    })
    .await;
    // The replica that raised and offered it dies; the others' timers
    // carry the chain on: carer, carer, supervisor, emergency services.
    replicas[0].proc.kill9();
    let last = eventually("the chain run to its end", PATIENCE, || async {
        let alert = replicas[2].alert(&alert_id).await;
        (alert["escalationStep"] == "ESCALATION_STEP_EMERGENCY_SERVICES").then_some(alert)
    })
    .await;
    assert_eq!(last["escalationLevel"], 3, "{last}");
    // Three timers saw every deadline; the audit holds each step once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    replicas[0].restart().await;
    let actions: Vec<String> = replicas[1]
        .audit_of(&format!("alert/{alert_id}"))
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .filter(|a| a == "alert.offer" || a == "alert.escalate")
        .collect();
    assert_eq!(
        actions,
        vec![
            "alert.offer",
            "alert.escalate",
            "alert.escalate",
            "alert.escalate"
        ]
    );
    assert_eq!(replicas[0].alert(&alert_id).await["escalationLevel"], 3);
    replicas.clear();
}

/// Three replicas judge the same check-in window at the same second: one
/// missed check-in alert, one day outcome, one audit entry of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_checkin_is_raised_once_whatever_the_replicas() {
    let Some(database) = require_postgres("replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Local noon, so the window below stays within one day.
    let now = anxin_proto::now_ms();
    let offset = (720 - (now / 60_000).rem_euclid(1440)) as i32;
    let routing = format!("utc_offset_minutes = {offset}");
    let replicas = replicas(dir.path(), &database, 3, &[("routing", &routing)]).await;
    let a = &replicas[0];
    a.add_community("c-1").await;
    a.add_staff("carer-1", "carer", &["c-1"], serde_json::json!({}))
        .await;
    // Taken now, not before the replicas started (the first start in a
    // test binary may build them).
    let now = anxin_proto::now_ms();
    let clock = |ms: i64| {
        let secs = (ms + i64::from(offset) * 60_000).rem_euclid(86_400_000) / 1000;
        format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    };
    a.send(
        "PUT",
        "/api/v1/residents/r-alone",
        serde_json::json!({
            "name": "Zhou Guilan",
            "communityId": "c-1",
            "address": "Building 2, Room 502",
            "checkin": { "start": clock(now - 60_000), "end": clock(now + 12_000) },
        }),
    )
    .await;
    let missed = |alerts: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        alerts
            .into_iter()
            .filter(|a| a["kind"] == "EVENT_KIND_CHECKIN_MISSED")
            .collect()
    };
    eventually("the missed check-in, offered", PATIENCE, || async {
        missed(replicas[2].alerts().await)
            .first()
            .filter(|a| a["offeredTo"] == "carer-1")
            .cloned()
    })
    .await;
    // Every replica's judge has had several rounds since.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for replica in &replicas {
        assert_eq!(missed(replica.alerts().await).len(), 1);
    }
    let judged = a.get("/api/v1/audit?action=checkin.judged").await;
    assert_eq!(judged["entries"].as_array().unwrap().len(), 1, "{judged}");
    let raised = a.get("/api/v1/audit?action=alert.raise").await;
    assert_eq!(raised["entries"].as_array().unwrap().len(), 1, "{raised}");
}
