//! A network partition between gateway and server while devices keep
//! sending: everything is kept, everything arrives after the link returns,
//! and the P0s queued during the outage go out before the telemetry backlog.

use std::time::Duration;

use anxin_tests::{Gateway, PATIENCE, Server, Sim, eventually, field, proxy::Proxy, verify_ledger};

fn commit_index(event: &serde_json::Value) -> u64 {
    event["commitIndex"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_keeps_everything_and_p0_overtakes_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let link = Proxy::start(server.grpc_port).await;
    let mut devices: Vec<String> = (0..5).map(|i| format!("meter-{i:05}")).collect();
    devices.extend(["btn-a", "btn-b", "btn-c"].map(String::from));
    let device_refs: Vec<&str> = devices.iter().map(String::as_str).collect();
    let gateway = Gateway::start_routed(
        dir.path(),
        &link.url(),
        &device_refs,
        &[
            ("limits", "device_rate_per_sec = 1000.0"),
            ("limits", "device_burst = 1000"),
        ],
    )
    .await;
    eventually("the uplink to connect", PATIENCE, || async {
        (gateway.health().await["uplink"]["state"] == "connected").then_some(())
    })
    .await;

    link.cut();
    eventually("the gateway to notice the partition", PATIENCE, || async {
        (gateway.health().await["uplink"]["state"] != "connected").then_some(())
    })
    .await;

    // Telemetry piles up during the outage...
    let ledger = dir.path().join("telemetry.jsonl");
    let mut load = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &[
            "load",
            "--devices",
            "5",
            "--prefix",
            "meter-",
            "--rate",
            "500",
            "--duration",
            "3",
            "--mix",
            "p3=1",
            "--ledger",
            ledger.to_str().unwrap(),
        ],
    );
    let summary = load.line_starting("load ", PATIENCE).await;
    assert_eq!(field(&summary, "outstanding"), Some("0"), "{summary}");
    let backlog: u64 = field(&summary, "stored").unwrap().parse().unwrap();
    assert!(backlog > 1000, "{summary}");

    // ...then three residents press SOS, still during the outage.
    for device in ["btn-a", "btn-b", "btn-c"] {
        Sim::press_until_stored(dir.path(), &gateway.mqtt(), device).await;
    }
    let health = gateway.health().await;
    assert_eq!(health["journal_depth"]["P0"], 3);
    assert_eq!(health["journal_depth"]["P3"], backlog);
    assert_eq!(
        server.event_count().await,
        0,
        "nothing crossed the cut link"
    );

    link.restore();
    gateway.wait_drained(Duration::from_secs(120)).await;

    // All arrived, exactly once.
    let verdict = verify_ledger(dir.path(), &ledger, &server.http()).await;
    assert_eq!(verdict.exit_code, Some(0), "{}", verdict.report);
    assert_eq!(server.event_count().await, backlog + 3);

    // The P0s were committed before any of the telemetry queued before them.
    let mut p0_commits = Vec::new();
    for device in ["btn-a", "btn-b", "btn-c"] {
        let events = server.events_for(device).await;
        assert_eq!(events.len(), 1);
        assert_eq!(server.alerts_for(device).await.len(), 1);
        p0_commits.push(commit_index(&events[0]));
    }
    let mut first_telemetry = u64::MAX;
    for i in 0..5 {
        for event in server.events_for(&format!("meter-{i:05}")).await {
            first_telemetry = first_telemetry.min(commit_index(&event));
        }
    }
    let last_p0 = *p0_commits.iter().max().unwrap();
    assert!(
        last_p0 < first_telemetry,
        "P0 commits {p0_commits:?} must precede the first telemetry commit {first_telemetry}"
    );
}

/// A gateway (`btn-1`) whose uplink lists `first`, then `server`: an SOS
/// pressed reaches `server`'s queue, and the gateway ends on it.
async fn sos_reaches_the_second_server(
    dir: &std::path::Path,
    server: &Server,
    first: &str,
) -> Gateway {
    let gateway = Gateway::start_with(
        dir,
        server.grpc_port,
        &["btn-1"],
        &[(
            "uplink",
            &format!("servers = [\"{first}\", \"{}\"]", server.grpc()),
        )],
    )
    .await;
    Sim::press_until_stored(dir, &gateway.mqtt(), "btn-1").await;
    eventually("the alert via the second server", PATIENCE, || async {
        (server.alerts_for("btn-1").await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(gateway.health().await["uplink"]["server"], server.grpc());
    gateway
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_fails_over_to_the_next_server_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let dead = format!("http://127.0.0.1:{}", anxin_tests::free_port());
    sos_reaches_the_second_server(dir.path(), &server, &dead).await;
}

/// A server whose stream handler never answers (stuck before it reads
/// the Hello or accepts the stream), on a connection that stays healthy:
/// a real tonic `Uplink` on loopback that answers HTTP/2 pings but never
/// the stream.
struct StuckServer;

#[tonic::async_trait]
impl anxin_proto::v1::uplink_server::Uplink for StuckServer {
    type LinkStream = anxin_tests::grpc::UplinkStream;

    async fn link(
        &self,
        _request: tonic::Request<tonic::Streaming<anxin_proto::v1::GatewayMessage>>,
    ) -> Result<tonic::Response<Self::LinkStream>, tonic::Status> {
        std::future::pending().await
    }
}

/// The gateway does not wait for ever on a server that holds its
/// connection but never answers the stream: it gives up after a bound,
/// says so, and goes to the next server, where the SOS arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_the_stream_is_left_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let stuck = anxin_tests::grpc::serve_uplink(StuckServer).await;
    let gateway =
        sos_reaches_the_second_server(dir.path(), &server, &format!("http://127.0.0.1:{stuck}"))
            .await;
    let log = gateway.proc.log();
    assert!(
        log.contains("did not answer the stream within 10s"),
        "the gateway must say why it left the first server:\n{log}"
    );
}
