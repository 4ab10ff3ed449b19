//! firmware-sim/scenarios/household-12.toml end to end: the device state
//! machines (call button, wearable, room sensor) tell a household's story
//! through a real gateway to a real server.

use anxin_tests::{Gateway, PATIENCE, Server, Sim, eventually, field};

fn kinds(events: &[serde_json::Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn household_12_story_reaches_the_server_as_told() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    // Mrs Wang and her three devices are in the directory: her events are
    // one person's incidents.
    server.add_community("c-heping").await;
    server
        .add_resident(
            "hh-12",
            "c-heping",
            &[
                "btn-0012:call_button",
                "wear-0012:wearable",
                "room-0012:room_sensor",
            ],
        )
        .await;
    let gateway = Gateway::start(
        dir.path(),
        server.grpc_port,
        &[
            "btn-0012:call_button",
            "wear-0012:wearable",
            "room-0012:room_sensor",
        ],
    )
    .await;
    let (run, done) = Sim::scenario(dir.path(), &gateway.mqtt(), "household-12.toml").await;
    // Her first movement (an activity report), SOS, CANCEL, FALL +
    // location, VITALS_CRITICAL, INACTIVITY.
    assert_eq!(field(&done, "raised"), Some("7"), "{:?}", run.seen);
    assert_eq!(field(&done, "stored"), Some("7"));

    eventually("every event at the server", PATIENCE, || async {
        (server.event_count().await == 7).then_some(())
    })
    .await;

    // The mistaken press and its cancel, which names the press.
    let button = server.events_for("btn-0012").await;
    assert_eq!(kinds(&button), ["EVENT_KIND_SOS", "EVENT_KIND_CANCEL"]);
    let sos_seq = button[0]["seq"].as_str().unwrap();
    let raised_cancel = run
        .seen
        .iter()
        .find(|l| l.contains("EVENT_KIND_CANCEL"))
        .unwrap();
    assert_eq!(field(raised_cancel, "cancels_seq"), Some(sos_seq));
    assert_eq!(button[0]["batteryPct"], 90);

    // Sitting down was no fall; the real fall was, with where it happened;
    // then the critical vitals.
    let wearable = server.events_for("wear-0012").await;
    assert_eq!(
        kinds(&wearable),
        [
            "EVENT_KIND_FALL",
            "EVENT_KIND_TELEMETRY",
            "EVENT_KIND_VITALS_CRITICAL"
        ]
    );
    assert_eq!(wearable[0]["batteryPct"], 64);

    // She moved once (reported as activity), then nobody moved in the
    // room for its window.
    assert_eq!(
        kinds(&server.events_for("room-0012").await),
        ["EVENT_KIND_TELEMETRY", "EVENT_KIND_INACTIVITY"]
    );

    // Two incidents. The mistaken press, stood down by her cancel within the
    // grace period; then the quiet room, the fall and the vitals as one
    // alert, raised to P0 by the fall.
    let alerts = server.alerts().await;
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let event_kinds = |alert: &serde_json::Value| -> Vec<String> {
        let mut kinds: Vec<String> = alert["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect();
        kinds.sort();
        kinds
    };
    let press = &alerts[0];
    assert_eq!(press["deviceId"], "btn-0012");
    assert_eq!(press["state"], "ALERT_STATE_CANCELLED");
    assert_eq!(press["outcome"], "cancelled_by_resident");
    assert_eq!(event_kinds(press), ["EVENT_KIND_CANCEL", "EVENT_KIND_SOS"]);
    let fall = &alerts[1];
    assert_eq!(fall["residentId"], "hh-12");
    assert_eq!(fall["communityId"], "c-heping");
    assert_eq!(fall["priority"], "PRIORITY_P0");
    assert_eq!(fall["kind"], "EVENT_KIND_FALL");
    assert_eq!(
        event_kinds(fall),
        [
            "EVENT_KIND_FALL",
            "EVENT_KIND_INACTIVITY",
            "EVENT_KIND_VITALS_CRITICAL"
        ]
    );
    // Each event names its alert.
    for event in server.events_for("wear-0012").await {
        if event["kind"] != "EVENT_KIND_TELEMETRY" {
            assert_eq!(event["alertId"], fall["id"]);
        }
    }
    let audit = server
        .audit_of(&format!("alert/{}", press["id"].as_str().unwrap()))
        .await;
    let actions: Vec<&str> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // (Routed in between: with no staff in the community, to the emergency
    // services' step.)
    assert_eq!(actions.first(), Some(&"alert.raise"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"alert.cancel"), "{actions:?}");
}
