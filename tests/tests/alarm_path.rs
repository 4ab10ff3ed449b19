//! The alarm path end to end, with the real three binaries: a press reaches
//! the dispatcher over SSE and gRPC, the dispatcher acknowledges over REST,
//! and "help is coming" reaches the device.

use anxin_proto::v1::{AlertState, WatchAlertsRequest};
use anxin_tests::{Gateway, PATIENCE, Server, Sim, field, sse::SseStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn press_reaches_dispatcher_and_help_is_coming_reaches_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["btn-0001"]).await;

    // The device is not in the directory, so only city-wide staff see it.
    let wang = server
        .add_staff(
            "dispatcher-wang",
            "dispatcher",
            &["*"],
            serde_json::json!({}),
        )
        .await;
    let li = server
        .add_staff("carer-li", "carer", &["*"], serde_json::json!({}))
        .await;

    // Dispatchers watch before anything happens.
    let mut sse = SseStream::connect(&server.stream_url(&wang)).await;
    let mut dispatch = server.dispatch_client(&wang).await;
    let mut watch = dispatch
        .watch_alerts(WatchAlertsRequest { states: vec![] })
        .await
        .unwrap()
        .into_inner();

    let mut sim = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-0001"],
    );
    let pressed = sim.line_starting("pressed", PATIENCE).await;
    let seq = field(&pressed, "seq").unwrap().to_string();
    sim.line_starting("stored", PATIENCE).await;

    // Over SSE.
    let alert = sse.next_alert(|_| true).await;
    assert_eq!(alert["deviceId"], "btn-0001");
    assert_eq!(alert["seq"], seq.as_str());
    assert_eq!(alert["kind"], "EVENT_KIND_SOS");
    assert_eq!(alert["state"], "ALERT_STATE_NEW");
    let alert_id = alert["id"].as_str().unwrap().to_string();

    // Over gRPC WatchAlerts.
    let update = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("alert over WatchAlerts")
        .unwrap()
        .expect("WatchAlerts stream open");
    let watched = update.alert.unwrap();
    assert_eq!(watched.id, alert_id);
    assert_eq!(watched.device_id, "btn-0001");
    assert_eq!(watched.state(), AlertState::New);

    // The dispatcher acknowledges over REST, as the person the token names.
    let (status, acked) = server
        .call(
            "POST",
            &format!("/api/v1/alerts/{alert_id}/ack"),
            &wang,
            None,
        )
        .await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["state"], "ALERT_STATE_ACKNOWLEDGED");
    assert_eq!(acked["acknowledgedBy"], "dispatcher-wang");

    // The device hears "help is coming".
    let heard = sim.line_starting("acknowledged", PATIENCE).await;
    assert_eq!(field(&heard, "alert"), Some(alert_id.as_str()));
    assert!(heard.contains("help is coming"), "{heard}");
    assert_eq!(sim.proc.wait_exit(PATIENCE).await, Some(0));

    // Watchers see the change too.
    let update = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(update.alert.unwrap().state(), AlertState::Acknowledged);

    // A second acknowledgement is refused: it is not a silent no-op.
    let (status, _) = server
        .call("POST", &format!("/api/v1/alerts/{alert_id}/ack"), &li, None)
        .await;
    assert_eq!(status, 409);

    // Without a token, nothing.
    let (status, _) = server
        .call(
            "POST",
            &format!("/api/v1/alerts/{alert_id}/resolve"),
            "",
            None,
        )
        .await;
    assert_eq!(status, 401);

    // The carer resolves it.
    let (status, resolved) = server
        .call(
            "POST",
            &format!("/api/v1/alerts/{alert_id}/resolve"),
            &li,
            Some(serde_json::json!({ "outcome": "attended" })),
        )
        .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["state"], "ALERT_STATE_RESOLVED");
    assert_eq!(resolved["outcome"], "attended");
    assert_eq!(resolved["resolvedBy"], "carer-li");
    let open = server.get("/api/v1/alerts?state=new,acknowledged").await;
    assert_eq!(open["alerts"].as_array().unwrap().len(), 0);
}
