//! Guarantee 3 under fire: 20 SIGKILLs of the gateway at random moments
//! while simulated devices keep sending; the checker (`anxin-sim verify`)
//! then proves every event acked `stored` reached the server exactly once.

use std::time::Duration;

use anxin_tests::{Gateway, PATIENCE, Server, Sim, eventually, field, load_devices, verify_ledger};
use rand::Rng;

const CYCLES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_under_load_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut gateway =
        Gateway::start_for_load(dir.path(), server.grpc_port, &load_devices(10), &[]).await;
    let ledger = dir.path().join("ledger.jsonl");
    let mut load = Sim::ledger_load(
        dir.path(),
        &gateway.mqtt(),
        10,
        200,
        "p0=0.2,p3=0.8",
        &ledger,
    );

    let mut rng = rand::rng();
    for cycle in 0..CYCLES {
        // Load is flowing: the server has committed something new since the
        // last kill.
        let before = server.event_count().await;
        eventually(
            &format!("events to flow before kill {cycle}"),
            PATIENCE,
            || async { (server.event_count().await > before).then_some(()) },
        )
        .await;
        let moment = Duration::from_millis(rng.random_range(0..400));
        tokio::time::sleep(moment).await;
        gateway.proc.kill9();
        gateway.restart().await;
    }

    // Stop the devices; they drain their outboxes and exit.
    let (summary, stored) = load.finish_load().await;
    assert!(
        stored >= 500,
        "too little load to prove anything: {summary}"
    );
    gateway.wait_drained(PATIENCE).await;

    let verdict = verify_ledger(dir.path(), &ledger, &server.http()).await;
    let report = &verdict.report;
    assert_eq!(verdict.exit_code, Some(0), "{report}\n{:?}", verdict.lines);
    assert_eq!(
        field(report, "stored"),
        Some(stored.to_string().as_str()),
        "{report}"
    );
    assert_eq!(field(report, "missing"), Some("0"), "{report}");
    assert_eq!(field(report, "duplicated"), Some("0"), "{report}");
    assert_eq!(field(report, "alert_mismatches"), Some("0"), "{report}");
    eprintln!("{CYCLES} SIGKILL cycles: {summary}; {report}");
}
