//! Guarantee 4: at the journal quota, telemetry is evicted (and counted) to
//! make room, and life-safety events are stored and delivered.

use anxin_tests::{Gateway, PATIENCE, Server, Sim, field, free_port};

const QUOTA: u64 = 65_536;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_is_evicted_for_p0_and_p0_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let server_port = free_port(); // the server is away until the end
    let mut devices: Vec<String> = (0..5).map(|i| format!("meter-{i:05}")).collect();
    devices.extend(["btn-a", "btn-b", "btn-c"].map(String::from));
    let device_refs: Vec<&str> = devices.iter().map(String::as_str).collect();
    let gateway = Gateway::start_with(
        dir.path(),
        server_port,
        &device_refs,
        &[
            ("journal", &format!("quota_bytes = {QUOTA}")),
            ("limits", "device_rate_per_sec = 1000.0"),
            ("limits", "device_burst = 1000"),
        ],
    )
    .await;

    let telemetry = |name: &str| {
        let ledger = dir.path().join(name);
        let args = [
            "load",
            "--devices",
            "5",
            "--prefix",
            "meter-",
            "--rate",
            "1000",
            "--duration",
            "2",
            "--mix",
            "p3=1",
            "--ledger",
            ledger.to_str().unwrap(),
        ]
        .map(String::from);
        Sim::run(
            dir.path(),
            &gateway.mqtt(),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let stored_count =
        |summary: &str| -> u64 { field(summary, "stored").unwrap().parse().unwrap() };

    // Fill the quota with telemetry (more than fits).
    let mut fill = telemetry("fill.jsonl");
    let summary = fill.line_starting("load ", PATIENCE).await;
    assert_eq!(field(&summary, "outstanding"), Some("0"), "{summary}");
    let mut telemetry_stored = stored_count(&summary);
    let evicted = "anxin_gateway_journal_evictions_total{priority=\"P3\"}";
    assert!(
        gateway.metric(evicted).await > 0.0,
        "the quota was not reached: {summary}"
    );

    // P0s at a full journal are stored.
    for device in ["btn-a", "btn-b", "btn-c"] {
        Sim::press_until_stored(dir.path(), &gateway.mqtt(), device).await;
    }
    // More telemetry cannot push them out.
    let mut more = telemetry("more.jsonl");
    let summary = more.line_starting("load ", PATIENCE).await;
    telemetry_stored += stored_count(&summary);
    let health = gateway.health().await;
    assert_eq!(health["journal_depth"]["P0"], 3);
    let mut journal_bytes = 0.0;
    for p in ["P0", "P1", "P2", "P3"] {
        journal_bytes += gateway
            .metric(&format!("anxin_gateway_journal_bytes{{priority=\"{p}\"}}"))
            .await;
    }
    assert!(
        journal_bytes <= QUOTA as f64,
        "journal holds {journal_bytes} bytes over the quota"
    );
    assert_eq!(
        gateway
            .metric("anxin_gateway_journal_evictions_total{priority=\"P0\"}")
            .await,
        0.0
    );

    // The server returns: every P0 arrives; every telemetry event either
    // arrives or was counted as evicted.
    let server = Server::start_on(dir.path(), server_port, &[]).await;
    gateway.wait_drained(PATIENCE).await;
    for device in ["btn-a", "btn-b", "btn-c"] {
        assert_eq!(server.alerts_for(device).await.len(), 1, "{device}");
    }
    let evicted_count = gateway.metric(evicted).await as u64;
    let mut delivered_telemetry = 0;
    for i in 0..5 {
        delivered_telemetry += server.events_for(&format!("meter-{i:05}")).await.len() as u64;
    }
    assert_eq!(delivered_telemetry + evicted_count, telemetry_stored);
}
