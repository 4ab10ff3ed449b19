//! Guarantees 2 and 5 under misbehaving firmware: duplicate publishes,
//! malformed and oversize payloads, dropped connections and skewed clocks,
//! all at once, while every good event still arrives exactly once.

use anxin_tests::{Gateway, PATIENCE, Server, Sim, field, verify_ledger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_is_rejected_and_counted_and_nothing_good_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let devices: Vec<String> = (0..10).map(|i| format!("dev-{i:05}")).collect();
    let device_refs: Vec<&str> = devices.iter().map(String::as_str).collect();
    let gateway = Gateway::start_with(
        dir.path(),
        server.grpc_port,
        &device_refs,
        &[
            ("limits", "device_rate_per_sec = 100.0"),
            ("limits", "device_burst = 100"),
        ],
    )
    .await;
    let ledger = dir.path().join("ledger.jsonl");
    let mut load = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &[
            "load",
            "--devices",
            "10",
            "--prefix",
            "dev-",
            // Each trick has a 0.5-2% chance per event: 2,000 events make
            // "none of a trick" a 1-in-20,000 run (at 1,000 it was 1 in 150,
            // and CI saw it).
            "--rate",
            "400",
            "--duration",
            "5",
            "--mix",
            "p0=0.2,p3=0.8",
            "--ledger",
            ledger.to_str().unwrap(),
            "--chaos",
        ],
    );
    let summary = load.line_starting("load ", PATIENCE).await;
    let chaos = load.line_starting("chaos ", PATIENCE).await;
    assert_eq!(field(&summary, "outstanding"), Some("0"), "{summary}");
    for trick in ["duplicates", "malformed", "oversize", "disconnects"] {
        let done: u64 = field(&chaos, trick).unwrap().parse().unwrap();
        assert!(done > 0, "no {trick} in {chaos}");
    }
    gateway.wait_drained(PATIENCE).await;

    // Every good event exactly once, one alert per P0.
    let verdict = verify_ledger(dir.path(), &ledger, &server.http()).await;
    assert_eq!(verdict.exit_code, Some(0), "{}", verdict.report);

    // The junk was seen, counted and turned away.
    let rejected = |reason: &str| {
        let series = format!("anxin_gateway_events_rejected_total{{reason=\"{reason}\"}}");
        let gateway = &gateway;
        async move { gateway.metric(&series).await }
    };
    assert!(rejected("malformed").await > 0.0);
    assert!(rejected("oversize").await > 0.0);
    assert!(
        gateway.metric("anxin_gateway_events_duplicate_total").await > 0.0
            || server.metric("anxin_server_events_duplicate_total").await > 0.0
    );
}
