//! The database itself dies under load: PostgreSQL's postmaster is
//! SIGKILLed (a server of the test's own, so the machine's is spared) and
//! started again with crash recovery. The replica says it cannot work
//! (`/healthz`, refused uplinks), the gateway keeps what the server did not
//! take, and afterwards every event acked `stored` is at the server exactly
//! once.

use std::time::Duration;

use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, eventually, field, host::skip, load_devices, pg::PgInstance,
    verify_clean,
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
