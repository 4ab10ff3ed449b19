//! Guarantees 2 and 3 under real SIGKILLs: an event the device heard
//! `stored` for reaches the server exactly once, whichever process dies.

use anxin_tests::{Gateway, PATIENCE, Server, Sim, eventually, field, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_after_stored_before_uplink_delivers_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // The server is not up yet, so the event can only be in the journal.
    let server_port = free_port();
    let mut gateway = Gateway::start(dir.path(), server_port, &["btn-7"]).await;

    let mut sim = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-7", "--until", "stored"],
    );
    let pressed = sim.line_starting("pressed", PATIENCE).await;
    let seq = field(&pressed, "seq").unwrap().to_string();
    sim.line_starting("stored", PATIENCE).await;
    assert_eq!(sim.proc.wait_exit(PATIENCE).await, Some(0));
    assert_eq!(gateway.health().await["journal_depth"]["P0"], 1);

    gateway.proc.kill9();
    let server = Server::start_on(dir.path(), server_port, &[]).await;
    gateway.restart().await;

    eventually(
        "the replayed event to raise its alert",
        PATIENCE,
        || async { (server.alerts_for("btn-7").await.len() == 1).then_some(()) },
    )
    .await;
    eventually(
        "the gateway to delete the delivered event",
        PATIENCE,
        || async { (gateway.journal_depth().await == 0).then_some(()) },
    )
    .await;

    // The device retransmits the same event late (it never saw an ack, say):
    // it is stored and forwarded again, and the server absorbs it.
    let mut again = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &[
            "press", "--device", "btn-7", "--seq", &seq, "--until", "stored",
        ],
    );
    again.line_starting("stored", PATIENCE).await;
    eventually(
        "the server to absorb the retransmission",
        PATIENCE,
        || async {
            (server.metric("anxin_server_events_duplicate_total").await >= 1.0).then_some(())
        },
    )
    .await;
    eventually(
        "the retransmission to leave the journal",
        PATIENCE,
        || async { (gateway.journal_depth().await == 0).then_some(()) },
    )
    .await;

    let alerts = server.alerts_for("btn-7").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["seq"], seq.as_str());
    assert_eq!(server.event_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_between_commit_and_ack_raises_no_duplicate_alert() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        Server::start_with_env(dir.path(), &[("ANXIN_FAULT", "crash_after_commit")]).await;
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["wear-3"]).await;

    let mut sim = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &[
            "press", "--device", "wear-3", "--kind", "fall", "--until", "stored",
        ],
    );
    sim.line_starting("stored", PATIENCE).await;

    // The server commits, flushes and dies before `received` goes out.
    server.proc.wait_exit(PATIENCE).await;
    assert!(
        server.proc.log().contains("crash_after_commit"),
        "the fault point was not reached"
    );
    // So the gateway still holds the event.
    assert_eq!(gateway.health().await["journal_depth"]["P0"], 1);

    server.restart_clean().await;
    eventually(
        "the gateway to resend and get the ack",
        PATIENCE,
        || async { (gateway.journal_depth().await == 0).then_some(()) },
    )
    .await;

    let alerts = server.alerts_for("wear-3").await;
    assert_eq!(alerts.len(), 1, "one alert, not two: {alerts:?}");
    assert_eq!(alerts[0]["kind"], "EVENT_KIND_FALL");
    assert_eq!(server.event_count().await, 1);
    // The resend was the duplicate the store absorbed: proof the event had
    // been committed before the crash.
    assert_eq!(
        server.metric("anxin_server_events_duplicate_total").await,
        1.0
    );
}
