//! The checker itself: `anxin-sim verify` passes a clean run and catches a
//! planted loss and a planted duplicate alert (a test of the test tool: the
//! fault tests rely on it).

use anxin_tests::{Gateway, PATIENCE, Server, Sim, field, verify_ledger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_clean_runs_and_catches_planted_loss_and_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["dev-00000", "dev-00001"]).await;
    let ledger = dir.path().join("ledger.jsonl");
    let ledger_arg = ledger.to_str().unwrap().to_string();
    let mut load = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &[
            "load",
            "--devices",
            "2",
            "--prefix",
            "dev-",
            "--rate",
            "20",
            "--duration",
            "2",
            "--mix",
            "p0=0.5,p3=0.5",
            "--ledger",
            &ledger_arg,
        ],
    );
    let summary = load.line_starting("load ", PATIENCE).await;
    let stored: u64 = field(&summary, "stored").unwrap().parse().unwrap();
    assert!(stored >= 20, "{summary}");
    gateway.wait_drained(PATIENCE).await;

    // A clean run passes.
    let clean = verify_ledger(dir.path(), &ledger, &server.http()).await;
    assert_eq!(clean.exit_code, Some(0), "{}", clean.report);
    assert_eq!(
        field(&clean.report, "found"),
        Some(stored.to_string().as_str())
    );

    // Planted loss: the ledger says an event was stored that the server
    // never saw.
    let planted = dir.path().join("planted-loss.jsonl");
    let mut text = std::fs::read_to_string(&ledger).unwrap();
    text.push_str("{\"e\":\"sent\",\"device\":\"dev-00001\",\"seq\":42,\"kind\":\"EVENT_KIND_SOS\",\"t_ms\":0}\n");
    text.push_str("{\"e\":\"stored\",\"device\":\"dev-00001\",\"seq\":42,\"t_ms\":0}\n");
    std::fs::write(&planted, text).unwrap();
    let lost = verify_ledger(dir.path(), &planted, &server.http()).await;
    assert_eq!(lost.exit_code, Some(1), "{}", lost.report);
    assert_eq!(field(&lost.report, "missing"), Some("1"), "{}", lost.report);
    assert!(
        lost.lines.iter().any(|l| l == "missing dev-00001#42"),
        "{:?}",
        lost.lines
    );

    // Planted duplicate: a second alert holding one event, written into the
    // server's store (either engine) while it is down.
    server.proc.kill9();
    {
        let store = server.open_store().await;
        let mut twin = store.alerts(&[]).unwrap().remove(0);
        twin.id = "999999".into();
        twin.events.truncate(1);
        store.import_alert(&twin).unwrap();
        store.flush().await.unwrap();
    }
    server.restart_clean().await;
    let doubled = verify_ledger(dir.path(), &ledger, &server.http()).await;
    assert_eq!(doubled.exit_code, Some(1), "{}", doubled.report);
    assert_eq!(
        field(&doubled.report, "alert_mismatches"),
        Some("1"),
        "{}",
        doubled.report
    );
    assert!(
        doubled
            .lines
            .iter()
            .any(|l| l.starts_with("alert ") && l.ends_with(": 2 alerts")),
        "{:?}",
        doubled.lines
    );
}
