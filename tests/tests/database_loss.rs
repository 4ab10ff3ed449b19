//! The database itself dies under load: PostgreSQL's postmaster is
//! SIGKILLed (a server of the test's own, so the machine's is spared) and
//! started again with crash recovery. The replica says it cannot work
//! (`/healthz`, refused uplinks), the gateway keeps what the server did not
//! take, and afterwards every event acked `stored` is at the server exactly
//! once. A database that answers but stops committing is noticed the same
//! way.

use std::time::{Duration, Instant};

use anxin_tests::{
    Gateway, PATIENCE, SIREN, Server, Sim, eventually, field, host::skip, load_devices,
    mqtt::Probe, pg::PgInstance, verify_clean,
};

async fn health(server: &Server) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::get(format!("{}/healthz", server.http()))
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_postgresql_under_load_loses_no_acknowledged_event() {
    if !anxin_tests::postgres_pass("killing_postgresql_under_load_loses_no_acknowledged_event") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut pg = match PgInstance::start(&dir.path().join("pg")).await {
        Ok(pg) => pg,
        Err(why) => return skip("database_loss", &why),
    };
    let url = pg.create_database("anxin").await;
    let home = dir.path().join("server");
    std::fs::create_dir_all(&home).unwrap();
    let server = Server::start_replica(&home, &url, &[]).await;
    let gateway =
        Gateway::start_for_load(dir.path(), server.grpc_port, &load_devices(10), &[]).await;
    let ledger = dir.path().join("ledger.jsonl");
    let mut load = Sim::ledger_load(
        dir.path(),
        &gateway.mqtt(),
        10,
        100,
        "p0=0.2,p3=0.8",
        &ledger,
    );
    let before = server.event_count().await;
    eventually("events to flow", PATIENCE, || async {
        (server.event_count().await > before + 100).then_some(())
    })
    .await;

    pg.kill9().await;
    // The replica says it cannot work, rather than acknowledging anything.
    let (status, body) = eventually(
        "the replica to report the database gone",
        PATIENCE,
        || async {
            health(&server).await.filter(|(_, body)| {
                body["reasons"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r == "database_unreachable"))
            })
        },
    )
    .await;
    assert_eq!(status, 503, "{body}");
    // The gateway keeps what the server does not take.
    eventually("the gateway to hold events", PATIENCE, || async {
        (gateway.journal_depth().await > 50).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    pg.run().await;
    eventually("the replica ready again", PATIENCE, || async {
        health(&server).await.filter(|(status, _)| *status == 200)
    })
    .await;
    let before = server.event_count().await;
    eventually("events to flow again", PATIENCE, || async {
        (server.event_count().await > before + 100).then_some(())
    })
    .await;

    let (summary, _) = load.finish_load().await;
    gateway.wait_drained(PATIENCE).await;
    let verdict = verify_clean(dir.path(), &ledger, &server.http()).await;
    assert_eq!(
        field(&verdict.report, "alert_mismatches"),
        Some("0"),
        "{}",
        verdict.report
    );
    eprintln!("database killed under load: {summary}; {}", verdict.report);
}

/// A database that answers but never finishes a commit: the primary waits
/// for a synchronous standby that is not there (set, then cleared, with
/// `pg_reload_conf()`). Reads still answer, so without a bound on writes
/// the replica would keep the gateway's stream open and `/healthz` green
/// while nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_never_returns_is_noticed_and_nothing_is_lost() {
    if !anxin_tests::postgres_pass("a_commit_that_never_returns_is_noticed_and_nothing_is_lost") {
        return;
    }
    const LOCAL_TOPIC: &str = "anxin/v1/gw/local-alarm";
    let dir = tempfile::tempdir().unwrap();
    let pg = match PgInstance::start(&dir.path().join("pg")).await {
        Ok(pg) => pg,
        Err(why) => return skip("database_loss", &why),
    };
    let url = pg.create_database("anxin").await;
    let home = dir.path().join("server");
    std::fs::create_dir_all(&home).unwrap();
    let server = Server::start_replica(&home, &url, &[("store", "write_timeout_ms = 1000")]).await;
    let gateway = Gateway::start_with(
        dir.path(),
        server.grpc_port,
        &["btn-1", "btn-2"],
        &[
            ("fallback", "after_secs = 1"),
            ("supervision", "check_interval_ms = 100"),
        ],
    )
    .await;
    let mut siren = Probe::connect(gateway.mqtt_port, SIREN, &[LOCAL_TOPIC]).await;
    let press = async |device: &str| {
        let mut sim = Sim::run(
            dir.path(),
            &gateway.mqtt(),
            &["press", "--device", device, "--until", "stored"],
        );
        let pressed = sim.line_starting("pressed", PATIENCE).await;
        sim.line_starting("stored", PATIENCE).await;
        field(&pressed, "seq").unwrap().to_string()
    };
    press("btn-1").await;
    eventually("btn-1's alert", PATIENCE, || async {
        (!server.alerts_for("btn-1").await.is_empty()).then_some(())
    })
    .await;

    pg.execute("alter system set synchronous_standby_names = 'standby_that_is_gone'")
        .await;
    pg.execute("select pg_reload_conf()").await;
    let stalled_at = Instant::now();
    let (status, body) = eventually(
        "the replica to report the database stalled",
        Duration::from_secs(10),
        || async {
            health(&server).await.filter(|(_, body)| {
                body["reasons"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r == "database_stalled"))
            })
        },
    )
    .await;
    let noticed_after = stalled_at.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(server.metric("anxin_server_database_stalled").await, 1.0);
    assert!(server.metric("anxin_server_database_stalls_total").await >= 1.0);

    // The SOS pressed meanwhile is the gateway's to keep: stored there, the
    // household's local alarm raised, nothing at the server.
    let seq = press("btn-2").await;
    let (topic, payload) = siren.next(PATIENCE).await.expect("a local alarm");
    assert_eq!(topic, LOCAL_TOPIC);
    let alarm: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(alarm["events"][0]["deviceId"], "btn-2", "{alarm}");
    assert_eq!(alarm["events"][0]["seq"], seq.as_str(), "{alarm}");
    assert!(gateway.journal_depth().await >= 1);
    assert!(server.alerts_for("btn-2").await.is_empty());
    assert!(
        server.proc.log().contains("does not finish writes"),
        "the server log says why"
    );

    pg.execute("alter system reset synchronous_standby_names")
        .await;
    pg.execute("select pg_reload_conf()").await;
    eventually("the replica ready again", PATIENCE, || async {
        health(&server).await.filter(|(status, _)| *status == 200)
    })
    .await;
    let alerts = eventually("btn-2's alert at the server", PATIENCE, || async {
        let alerts = server.alerts_for("btn-2").await;
        (!alerts.is_empty()).then_some(alerts)
    })
    .await;
    gateway.wait_drained(PATIENCE).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.alerts_for("btn-2").await.len(), 1, "{alerts:?}");
    assert_eq!(server.alerts_for("btn-1").await.len(), 1);
    assert_eq!(server.metric("anxin_server_database_stalled").await, 0.0);
    eprintln!("database_stalled reported {noticed_after:?} after commits stopped returning");
}
