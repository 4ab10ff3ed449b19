//! The checker itself: `anxin-sim verify` passes a clean run and catches a
//! planted loss and a planted duplicate alert (a test of the test tool: the
//! fault tests rely on it).

use anxin_proto::v1::Alert;
use anxin_tests::{Gateway, PATIENCE, Server, Sim, eventually, field};
use prost::Message;

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
    eventually("the journal to drain", PATIENCE, || async {
        (gateway.journal_depth().await == 0).then_some(())
    })
    .await;

    let verify = |ledger: String, server: String| {
        let dir = dir.path().to_path_buf();
        let mqtt = gateway.mqtt();
        async move {
            let mut run = Sim::run(
                &dir,
                &mqtt,
                &["verify", "--ledger", &ledger, "--server", &server],
            );
            let report = run.line_starting("verify ", PATIENCE).await;
            let code = run.proc.wait_exit(PATIENCE).await;
            (code, report, run.seen)
        }
    };

    // A clean run passes.
    let (code, report, _) = verify(ledger_arg.clone(), server.http()).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(field(&report, "found"), Some(stored.to_string().as_str()));

    // Planted loss: the ledger says an event was stored that the server
    // never saw.
    let planted = dir.path().join("planted-loss.jsonl");
    let mut text = std::fs::read_to_string(&ledger).unwrap();
    text.push_str("{\"e\":\"sent\",\"device\":\"dev-00001\",\"seq\":42,\"kind\":\"EVENT_KIND_SOS\",\"t_ms\":0}\n");
    text.push_str("{\"e\":\"stored\",\"device\":\"dev-00001\",\"seq\":42,\"t_ms\":0}\n");
    std::fs::write(&planted, text).unwrap();
    let (code, report, seen) = verify(planted.to_str().unwrap().to_string(), server.http()).await;
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(field(&report, "missing"), Some("1"), "{report}");
    assert!(seen.iter().any(|l| l == "missing dev-00001#42"), "{seen:?}");

    // Planted duplicate: a second alert for one event, written into the
    // server's store while it is down.
    server.proc.kill9();
    {
        let db = sled::open(dir.path().join("server-data")).unwrap();
        let alerts = db.open_tree("alerts").unwrap();
        let (_, bytes) = alerts.iter().next().unwrap().unwrap();
        let mut twin = Alert::decode(bytes.as_ref()).unwrap();
        twin.id = "999999".into();
        alerts
            .insert(999_999u64.to_be_bytes(), twin.encode_to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    server.restart_clean().await;
    let (code, report, seen) = verify(ledger_arg, server.http()).await;
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(field(&report, "alert_mismatches"), Some("1"), "{report}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("alert ") && l.ends_with(": 2 alerts")),
        "{seen:?}"
    );
}
