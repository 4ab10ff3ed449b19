//! The server survives a full disk (issue 17): its store lives on a real
//! small filesystem that another program fills to `ENOSPC`. The server
//! refuses new events with a clear status while it cannot write (the
//! gateway keeps them), says so on `/healthz`, and once the filler is
//! deleted — no hand restart — every acked event and an SOS sent while full
//! arrive exactly once.

use std::time::{Duration, Instant};

use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, eventually, free_port,
    host::{SmallDisk, skip},
    pg::PgInstance,
    sled_only, verify_clean,
};

/// Alerts of a device, or `None` while the server cannot answer.
async fn alerts_of(server: &Server, device: &str) -> Option<usize> {
    let (status, body) = server
        .call("GET", "/api/v1/alerts", anxin_tests::TEST_ADMIN_TOKEN, None)
        .await;
    (status == 200).then(|| {
        body["alerts"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|a| a["deviceId"] == device).count())
    })
}

/// A dispatcher notes an alert over and over (each note rewrites the alert
/// with all its notes) until a write fails for want of space; the health
/// the server then reports. The alert's id is read before the disk fills:
/// the store may fail at any moment after, and a failed store answers no
/// reads.
async fn note_until_the_store_fails(server: &Server, alert: &str) -> serde_json::Value {
    if let Some(health) = server_health(server).await
        && health["store_error"].is_string()
    {
        eprintln!("the store had already met ENOSPC before any note");
        return health;
    }
    let note = serde_json::json!({ "note": "x".repeat(16 * 1024) });
    for attempt in 1..=300 {
        let (status, _) = server
            .call(
                "POST",
                &format!("/api/v1/alerts/{alert}/note"),
                anxin_tests::TEST_ADMIN_TOKEN,
                Some(note.clone()),
            )
            .await;
        if let Some(health) = server_health(server).await
            && health["store_error"].is_string()
        {
            eprintln!("a note met ENOSPC after {attempt} notes (last answered {status})");
            return health;
        }
    }
    panic!("300 notes of 16 KiB on a full disk and the store never failed");
}

async fn server_health(server: &Server) -> Option<serde_json::Value> {
    let response = reqwest::Client::new()
        .get(format!("{}/healthz", server.http()))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_disk_holds_events_at_the_gateway_and_recovers_by_itself() {
    full_store_disk("reserve_bytes = 2097152", false, true).await;
}

/// Without a reserve nothing stands between sled and `ENOSPC`: its write
/// fails, sled stays failed, and the server must restart itself in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_hit_enospc_restarts_in_place_once_space_returns() {
    full_store_disk("reserve_bytes = 0", true, true).await;
}

/// With no gateway writing, the first write to meet `ENOSPC` is most often a
/// dispatcher's (their actions go on while the disk is low); sled then
/// fails without the uplink ever seeing it, and the server must still find
/// out and restart in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatchers_write_that_meets_enospc_restarts_the_store_in_place() {
    full_store_disk("reserve_bytes = 0", true, false).await;
}

async fn full_store_disk(reserve: &str, must_restart: bool, load: bool) {
    if !sled_only("server_disk", "sled's own files on a full disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(&dir.path().join("server-data"), 24) {
        Ok(disk) => disk,
        Err(why) => return skip("server_disk", &why),
    };
    let server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[("store", "min_free_bytes = 4194304"), ("store", reserve)],
    )
    .await;
    let pid = server.proc.pid();
    let (gdir, gateway) = meter_gateway(dir.path(), &server, &["btn-0", "btn-1"]).await;

    let ledger = dir.path().join("steady.jsonl");
    let mut steady = load.then(|| meter_load(dir.path(), &gateway, "p1=0.05,p3=0.95", &ledger));
    // An alert for a dispatcher to work on while the disk is full.
    Sim::press_until_stored(&gdir, &gateway.mqtt(), "btn-0").await;
    eventually("btn-0's alert", PATIENCE, || async {
        (alerts_of(&server, "btn-0").await? == 1).then_some(())
    })
    .await;
    let alert = server.alerts_for("btn-0").await[0]["id"]
        .as_str()
        .expect("btn-0's alert")
        .to_string();

    let (filler, filled) = disk.fill().await;
    eprintln!("filler wrote {filled} bytes");
    let reported = eventually(
        "the server to report the disk",
        Duration::from_secs(15),
        || async {
            let health = server_health(&server).await?;
            let reasons = health["reasons"].as_array()?.clone();
            (!reasons.is_empty()).then_some(health)
        },
    )
    .await;
    eprintln!("server health while full: {reported}");
    let reported = if must_restart && !reported["store_error"].is_string() {
        // The disk monitor saw the disk low before sled's next write, so the
        // uplink is refused and nothing has written yet. Dispatchers'
        // actions go on while the disk is low; one of them meets ENOSPC.
        note_until_the_store_fails(&server, &alert).await
    } else {
        reported
    };
    if must_restart {
        assert!(
            reported["store_error"].is_string(),
            "sled must have failed without a reserve: {reported}"
        );
    }
    if reported["store_error"].is_string() {
        // A failed store is not touched: clear refusals on every API, and
        // /healthz keeps answering (above).
        let (status, body) = server
            .call("GET", "/api/v1/alerts", anxin_tests::TEST_ADMIN_TOKEN, None)
            .await;
        // (The disk is still full, so no restart in place has happened.)
        assert_eq!(status, 503, "{body}");
        let mut dispatch = server.dispatch_client(anxin_tests::TEST_ADMIN_TOKEN).await;
        let refused = dispatch
            .list_alerts(anxin_proto::v1::ListAlertsRequest::default())
            .await
            .expect_err("a failed store refuses gRPC calls too");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    }

    // An SOS while the server cannot write: stored at the gateway, held.
    Sim::press_until_stored(&gdir, &gateway.mqtt(), "btn-1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        gateway.journal_depth().await > 0,
        "the gateway keeps what the server refused"
    );

    // Space returns; nobody restarts anything.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    eventually("the SOS at the server", Duration::from_secs(60), || async {
        (alerts_of(&server, "btn-1").await? == 1).then_some(())
    })
    .await;
    if let Some(steady) = &mut steady {
        let summary = steady.line_starting("load ", Duration::from_secs(90)).await;
        eprintln!("steady: {summary}");
    }
    gateway.wait_drained(Duration::from_secs(60)).await;
    eprintln!("drained {:?} after the filler was deleted", freed.elapsed());
    if load {
        verify_clean(dir.path(), &ledger, &server.http()).await;
    }
    assert_eq!(server.alerts_for("btn-1").await.len(), 1);
    // The same process (a restart in place keeps the PID), healthy again.
    assert_eq!(server.proc.pid(), pid);
    let health = eventually("the server to be healthy again", PATIENCE, || async {
        let health = server_health(&server).await?;
        (health["status"] == "ok").then_some(health)
    })
    .await;
    if must_restart {
        assert!(
            health["restarts_in_place"].as_u64() >= Some(1),
            "the failed store must have been reopened: {health}"
        );
    }
}

/// Left unset, the disk thresholds fit the disk: on a 48 MB store disk the
/// server is ready and an SOS reaches the queue (with the defaults made for
/// a real disk, 256 MiB of low-water mark, it refused every event while
/// 47 MB were free), and it says what it fitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_thresholds_fit_a_small_store_disk() {
    if !sled_only("server_disk", "sled's own files on a small disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _disk = match SmallDisk::mount(&dir.path().join("server-data"), 48) {
        Ok(disk) => disk,
        Err(why) => return skip("server_disk", &why),
    };
    let server = Server::start_configured(dir.path(), free_port(), &[], &[]).await;
    let health = eventually("the server's health", PATIENCE, || server_health(&server)).await;
    assert_eq!(health["status"], "ok", "{health}");
    let gdir = dir.path().join("gw");
    std::fs::create_dir_all(&gdir).unwrap();
    let gateway = Gateway::start_with(&gdir, server.grpc_port, &["btn-small"], &[]).await;
    Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-small"],
    )
    .line_starting("stored", PATIENCE)
    .await;
    eventually("the SOS in the queue", PATIENCE, || async {
        (alerts_of(&server, "btn-small").await? == 1).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(
        log.contains("fitted to a small filesystem"),
        "the server must say which thresholds it fitted:\n{log}"
    );
}

/// A gateway with ten meters and a button (`btn-0`) on `server`, the
/// meters flooding it with 200 routine events/s for 20 s (ledger kept), and
/// the flood already reaching the server.
struct Flood {
    gdir: std::path::PathBuf,
    gateway: Gateway,
    flood: Sim,
    ledger: std::path::PathBuf,
}

async fn flood(dir: &std::path::Path, server: &Server) -> Flood {
    let (gdir, gateway) = meter_gateway(dir, server, &["btn-0"]).await;
    let ledger = dir.join("flood.jsonl");
    let flood = meter_load(dir, &gateway, "p2=0.1,p3=0.9", &ledger);
    eventually("the flood to reach the server", PATIENCE, || async {
        (server.event_count().await > 100).then_some(())
    })
    .await;
    Flood {
        gdir,
        gateway,
        flood,
        ledger,
    }
}

/// A gateway (in `dir/gw`) on `server` with ten meters (`meter-00000` …)
/// and the given buttons, the meters allowed 1,000 events/s each.
async fn meter_gateway(
    dir: &std::path::Path,
    server: &Server,
    buttons: &[&str],
) -> (std::path::PathBuf, Gateway) {
    let meters: Vec<String> = (0..10).map(|i| format!("meter-{i:05}")).collect();
    let mut refs: Vec<&str> = meters.iter().map(String::as_str).collect();
    refs.extend_from_slice(buttons);
    let gdir = dir.join("gw");
    std::fs::create_dir_all(&gdir).unwrap();
    let gateway = Gateway::start_with(
        &gdir,
        server.grpc_port,
        &refs,
        &[
            ("limits", "device_rate_per_sec = 1000.0"),
            ("limits", "device_burst = 1000"),
        ],
    )
    .await;
    (gdir, gateway)
}

/// The ten meters offering 200 events/s of `mix` for 20 s, into `ledger`.
fn meter_load(
    dir: &std::path::Path,
    gateway: &Gateway,
    mix: &str,
    ledger: &std::path::Path,
) -> Sim {
    Sim::run(
        dir,
        &gateway.mqtt(),
        &[
            "load",
            "--devices",
            "10",
            "--prefix",
            "meter-",
            "--rate",
            "200",
            "--duration",
            "20",
            "--drain",
            "2",
            "--mix",
            mix,
            "--ledger",
            ledger.to_str().unwrap(),
        ],
    )
}

/// The store's disk held low by a filler (not full) under a flood: the
/// server goes on taking alarms on the gateway's stream and defers the
/// routine events one by one, so an SOS reaches the dispatcher's queue at
/// once while the telemetry waits at the gateway; once the filler is gone
/// everything arrives, each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_reach_the_queue_while_the_store_disk_is_low() {
    if !sled_only("server_disk", "sled's own files on a low disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(&dir.path().join("server-data"), 32) {
        Ok(disk) => disk,
        Err(why) => return skip("server_disk", &why),
    };
    let server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[
            ("store", "min_free_bytes = 8388608"),
            ("store", "reserve_bytes = 2097152"),
        ],
    )
    .await;
    let Flood {
        gdir,
        gateway,
        mut flood,
        ledger,
    } = flood(dir.path(), &server).await;

    let filler = disk.fill_leaving(4 << 20);
    eventually("the server to report its disk low", PATIENCE, || async {
        let health = server_health(&server).await?;
        let low = health["reasons"]
            .as_array()?
            .iter()
            .any(|r| r == "disk_low");
        low.then_some(())
    })
    .await;
    let deferred = "anxin_server_events_deferred_total{reason=\"disk_low\"}";
    eventually("routine events deferred", PATIENCE, || async {
        (server.metric(deferred).await > 0.0).then_some(())
    })
    .await;

    // The SOS: stored at the gateway, then in the queue at once, on the
    // same stream (the gateway never lost its uplink).
    let connects = gateway.metric("anxin_gateway_uplink_connects_total").await;
    Sim::press_until_stored(&gdir, &gateway.mqtt(), "btn-0").await;
    let stored = Instant::now();
    eventually("the SOS in the queue", PATIENCE, || async {
        (alerts_of(&server, "btn-0").await? == 1).then_some(())
    })
    .await;
    let queued_after = stored.elapsed();
    assert!(
        queued_after < Duration::from_secs(3),
        "an SOS waited {queued_after:?} behind a low disk"
    );
    assert!(
        gateway.journal_depth().await > 0,
        "the telemetry waits at the gateway"
    );
    assert!(
        gateway
            .metric("anxin_gateway_uplink_deferred_total{priority=\"P3\"}")
            .await
            > 0.0
    );
    assert_eq!(
        gateway.metric("anxin_gateway_uplink_connects_total").await,
        connects,
        "the stream was kept, not ended"
    );
    let health = server_health(&server).await.unwrap();
    assert!(health["store_error"].is_null(), "{health}");

    std::fs::remove_file(&filler).unwrap();
    let summary = flood.line_starting("load ", Duration::from_secs(90)).await;
    gateway.wait_drained(Duration::from_secs(60)).await;
    let verdict = verify_clean(dir.path(), &ledger, &server.http()).await;
    assert_eq!(server.alerts_for("btn-0").await.len(), 1);
    eprintln!(
        "SOS in the queue {queued_after:?} after the gateway stored it on a low disk; flood: {summary}; {}",
        verdict.report
    );
}

/// PostgreSQL out of space (the database on a small tablespace, filled by
/// another program) under a flood: the refusal (SQLSTATE 53100) is
/// recognised, `/healthz` says `database_full`, routine events wait at the
/// gateway, and when a little room comes back the SOS takes it first; once
/// the filler is gone everything arrives, each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_go_first_when_the_database_is_out_of_space() {
    if !anxin_tests::postgres_pass("alarms_go_first_when_the_database_is_out_of_space") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pg = match PgInstance::start(&dir.path().join("pg")).await {
        Ok(pg) => pg,
        Err(why) => return skip("server_disk", &why),
    };
    let space = match SmallDisk::mount(&dir.path().join("pgspace"), 48) {
        Ok(disk) => disk,
        Err(why) => return skip("server_disk", &why),
    };
    let chown = std::process::Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&space.path)
        .status()
        .unwrap();
    assert!(chown.success());
    pg.execute(&format!(
        "create tablespace small location '{}'",
        space.path.display()
    ))
    .await;
    pg.execute("create database anxin tablespace small").await;
    let home = dir.path().join("server");
    std::fs::create_dir_all(&home).unwrap();
    let server = Server::start_replica(&home, &pg.url("anxin"), &[]).await;
    let Flood {
        gdir,
        gateway,
        mut flood,
        ledger,
    } = flood(dir.path(), &server).await;

    let (filler, filled) = space.fill().await;
    eventually(
        "the server to report the database full",
        PATIENCE,
        || async {
            let health = server_health(&server).await?;
            let full = health["reasons"]
                .as_array()?
                .iter()
                .any(|r| r == "database_full");
            full.then_some(())
        },
    )
    .await;
    eventually("routine events deferred", PATIENCE, || async {
        let deferred = "anxin_server_events_deferred_total{reason=\"database_full\"}";
        (server.metric(deferred).await > 0.0).then_some(())
    })
    .await;
    // A little room comes back (autovacuum, an operator): the SOS has it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    file.set_len(filled - (4 << 20)).unwrap();
    drop(file);
    Sim::press_until_stored(&gdir, &gateway.mqtt(), "btn-0").await;
    let stored = Instant::now();
    eventually("the SOS in the queue", PATIENCE, || async {
        (alerts_of(&server, "btn-0").await? == 1).then_some(())
    })
    .await;
    let queued_after = stored.elapsed();
    assert!(
        gateway.journal_depth().await > 0,
        "the telemetry waits at the gateway"
    );

    std::fs::remove_file(&filler).unwrap();
    let summary = flood.line_starting("load ", Duration::from_secs(90)).await;
    gateway.wait_drained(Duration::from_secs(90)).await;
    let verdict = verify_clean(dir.path(), &ledger, &server.http()).await;
    assert_eq!(server.alerts_for("btn-0").await.len(), 1);
    assert!(server.metric("anxin_server_database_full_total").await >= 1.0);
    eprintln!(
        "database full: SOS in the queue {queued_after:?} after the gateway stored it; flood: {summary}; {}",
        verdict.report
    );
}
