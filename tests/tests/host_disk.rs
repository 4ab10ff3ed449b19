//! A full disk never stops the alarm path (issue 17). The gateway's journal
//! lives on a real small filesystem (tmpfs, mounted by the test as root).
//!
//! 1. Telemetry floods it with the server down until the gateway stops
//!    taking telemetry: the gateway is up, an SOS is still acked `stored`,
//!    and once the server returns every acked event arrives exactly once.
//! 2. Another program fills the disk to `ENOSPC` while the server is up: the
//!    gateway gives back its reserve, reports `disk_full`, keeps storing and
//!    delivering P0, and drains everything once the filler is deleted.

use std::time::Duration;

use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, eventually, field, free_port,
    host::{SmallDisk, skip},
    verify_clean,
};

fn meters(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("meter-{i:05}")).collect()
}

fn disk_config() -> Vec<(&'static str, &'static str)> {
    vec![
        ("journal", "quota_bytes = 1073741824"),
        ("journal", "min_free_bytes = 4194304"),
        ("journal", "reserve_bytes = 2097152"),
        ("limits", "device_rate_per_sec = 5000.0"),
        ("limits", "device_burst = 5000"),
        ("fallback", "after_secs = 600"),
    ]
}

async fn reasons(gateway: &Gateway) -> Vec<String> {
    gateway.health().await["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn load(
    dir: &std::path::Path,
    mqtt: &str,
    ledger: &std::path::Path,
    rate: &str,
    secs: &str,
) -> Sim {
    Sim::run(
        dir,
        mqtt,
        &[
            "load",
            "--devices",
            "20",
            "--prefix",
            "meter-",
            "--rate",
            rate,
            "--duration",
            secs,
            "--drain",
            "2",
            "--mix",
            "p3=1",
            "--ledger",
            ledger.to_str().unwrap(),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_fills_the_disk_yet_an_sos_is_stored_and_everything_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(&dir.path().join("journal"), 16) {
        Ok(disk) => disk,
        Err(why) => return skip("host_disk::telemetry_fills_the_disk", &why),
    };
    let server_port = free_port();
    let mut devices = meters(20);
    devices.push("btn-sos".into());
    let refs: Vec<&str> = devices.iter().map(String::as_str).collect();
    let gateway = Gateway::start_with(dir.path(), server_port, &refs, &disk_config()).await;

    // Flood until the gateway says the disk is low (or full) and takes no
    // more telemetry.
    let ledger = dir.path().join("flood.jsonl");
    let mut flood = load(dir.path(), &gateway.mqtt(), &ledger, "3000", "120");
    eventually(
        "the gateway to report the disk low",
        Duration::from_secs(150),
        || async {
            let r = reasons(&gateway).await;
            (r.iter().any(|r| r == "disk_low" || r == "disk_full")).then_some(())
        },
    )
    .await;
    let stored_before = gateway
        .metric("anxin_gateway_events_stored_total{priority=\"P3\"}")
        .await;
    // Keep pushing a while: deferred, not stored; the disk never fills up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        gateway
            .metric("anxin_gateway_events_deferred_total{reason=\"disk_low\"}")
            .await
            > 0.0
    );
    flood.proc.terminate();
    let summary = flood.line_starting("load ", PATIENCE).await;
    eprintln!(
        "flood: {summary}; P3 stored when low: {stored_before}; free now {}",
        disk.free()
    );
    assert!(
        field(&summary, "stored").unwrap().parse::<u64>().unwrap() > 1000,
        "{summary}"
    );

    // The gateway is up and an SOS is stored.
    let started = std::time::Instant::now();
    let mut press = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-sos", "--until", "stored"],
    );
    press.line_starting("stored", PATIENCE).await;
    eprintln!(
        "SOS stored {:?} after the press on a full journal disk",
        started.elapsed()
    );

    // The server returns: every acked event arrives exactly once, no hand work.
    let server = Server::start_on(dir.path(), server_port, &[]).await;
    gateway.wait_drained(Duration::from_secs(60)).await;
    verify_clean(dir.path(), &ledger, &server.http()).await;
    assert_eq!(server.alerts_for("btn-sos").await.len(), 1);
    eventually("the disk to be ok again", PATIENCE, || async {
        reasons(&gateway).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_program_fills_the_disk_and_p0_keeps_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(&dir.path().join("journal"), 16) {
        Ok(disk) => disk,
        Err(why) => return skip("host_disk::another_program_fills_the_disk", &why),
    };
    let server = Server::start(dir.path()).await;
    let mut devices = meters(20);
    devices.extend(["btn-1", "btn-2", "btn-3"].map(String::from));
    let refs: Vec<&str> = devices.iter().map(String::as_str).collect();
    let gateway = Gateway::start_with(dir.path(), server.grpc_port, &refs, &disk_config()).await;

    let ledger = dir.path().join("steady.jsonl");
    let mut steady = load(dir.path(), &gateway.mqtt(), &ledger, "200", "25");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (filler, filled) = disk.fill().await;
    eprintln!("filler wrote {filled} bytes; free now {}", disk.free());
    eventually(
        "the gateway to report disk_full",
        Duration::from_secs(10),
        || async {
            reasons(&gateway)
                .await
                .iter()
                .any(|r| r == "disk_full")
                .then_some(())
        },
    )
    .await;

    // P0 keeps flowing to the server while the disk is full.
    for device in ["btn-1", "btn-2", "btn-3"] {
        let pressed = std::time::Instant::now();
        Sim::press_until_stored(dir.path(), &gateway.mqtt(), device).await;
        eprintln!(
            "{device}: stored {:?} after the press on a full disk",
            pressed.elapsed()
        );
        eventually("the SOS at the server", Duration::from_secs(10), || async {
            (server.alerts_for(device).await.len() == 1).then_some(())
        })
        .await;
    }
    assert!(reasons(&gateway).await.iter().any(|r| r == "disk_full"));

    let health = gateway.health().await;
    eprintln!(
        "while full: reasons {} free {} restarts in place {}",
        health["reasons"], health["disk"]["free_bytes"], health["restarts_in_place"]
    );
    // Space returns: the gateway drains fully.
    std::fs::remove_file(&filler).unwrap();
    let summary = steady.line_starting("load ", Duration::from_secs(90)).await;
    eprintln!("steady: {summary}");
    gateway.wait_drained(Duration::from_secs(60)).await;
    verify_clean(dir.path(), &ledger, &server.http()).await;
    eventually("the disk to be ok again", PATIENCE, || async {
        reasons(&gateway).await.is_empty().then_some(())
    })
    .await;
}

/// Left unset, the journal's disk thresholds fit the disk: on a 24 MB
/// journal disk the gateway is healthy and acks telemetry (with the
/// defaults made for a real disk, a 64 MiB low-water mark, it deferred every
/// routine event while 23 MB were free), and says what it fitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_thresholds_fit_a_small_journal_disk() {
    let dir = tempfile::tempdir().unwrap();
    let _disk = match SmallDisk::mount(&dir.path().join("journal"), 24) {
        Ok(disk) => disk,
        Err(why) => return skip("host_disk", &why),
    };
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = Server::start(&server_dir).await;
    let devices = meters(20);
    let refs: Vec<&str> = devices.iter().map(String::as_str).collect();
    let gateway = Gateway::start_with(
        dir.path(),
        server.grpc_port,
        &refs,
        &[
            ("limits", "device_rate_per_sec = 5000.0"),
            ("limits", "device_burst = 5000"),
        ],
    )
    .await;
    assert!(
        gateway.proc.log().contains("fitted to a small filesystem"),
        "the gateway says what it fitted"
    );
    assert!(
        reasons(&gateway).await.is_empty(),
        "healthy on a 24 MB disk"
    );
    let ledger = dir.path().join("telemetry.jsonl");
    let mut telemetry = load(dir.path(), &gateway.mqtt(), &ledger, "200", "3");
    let summary = telemetry.line_starting("load ", PATIENCE).await;
    assert_eq!(field(&summary, "rejected"), Some("0"), "{summary}");
    assert_eq!(
        field(&summary, "stored"),
        field(&summary, "sent"),
        "{summary}"
    );
    gateway.wait_drained(PATIENCE).await;
    verify_clean(dir.path(), &ledger, &server.http()).await;
}
