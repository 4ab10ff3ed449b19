//! The dispatch centre with the real binaries: routing to the right carer,
//! the escalation chain on deadline across a server kill -9, signed webhook
//! offers with retries, the lifecycle through the API, community scoping,
//! audit, CSV import, gateway tokens.

use std::time::Duration;

use anxin_proto::now_ms;
use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, eventually, field, free_port,
    sse::SseStream,
    webhook::{Delivery, WebhookReceiver},
};

/// Today's weekday (1 = Monday) in UTC+8, the servers' default shift zone.
fn local_weekday() -> u64 {
    let day = (now_ms() as u64 / 60_000 + 480) / 1440;
    (day + 3) % 7 + 1
}

/// A shift that never covers now: three days from today, all day.
fn off_duty_shift() -> serde_json::Value {
    let day = (local_weekday() + 2) % 7 + 1;
    serde_json::json!({ "shifts": [{ "weekdays": [day], "start": "00:00", "end": "23:59" }] })
}

fn actions(entries: &[serde_json::Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

async fn next_delivery(receiver: &mut WebhookReceiver) -> Delivery {
    tokio::time::timeout(PATIENCE, receiver.deliveries.recv())
        .await
        .expect("a webhook delivery")
        .expect("receiver open")
}

fn signature_ok(delivery: &Delivery, secret: &str) -> bool {
    let headers: axum::http::HeaderMap = delivery
        .headers
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
        .collect();
    anxin_tests::webhook::check_delivery(secret, &headers, &delivery.raw, &Default::default())
        .is_ok()
}

/// The single alert, once `ready` holds for it.
async fn alert_when(
    server: &Server,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(what, PATIENCE, || async {
        server.alerts().await.into_iter().find(|a| ready(a))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_offer_climbs_the_chain_across_a_server_kill() {
    let dir = tempfile::tempdir().unwrap();
    // The first two deliveries fail: the notifier must retry.
    let mut receiver = WebhookReceiver::refusing_first(2).await;
    let mut server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[
            ("routing", "p0_deadline_secs = 3"),
            ("notify", "secret = \"s3cret\""),
            ("notify", "backoff_initial_ms = 100"),
            (
                "notify",
                &format!("emergency_webhook = \"{}\"", receiver.url_for("emergency")),
            ),
        ],
    )
    .await;
    server.add_community("c-a").await;
    server.add_community("c-b").await;
    server.add_resident("r-1", "c-a", &["btn-1"]).await;
    let contact = |id: &str| serde_json::json!({ "contact": receiver.url_for(id) });
    server
        .add_staff("carer-a1", "carer", &["c-a"], contact("carer-a1"))
        .await;
    server
        .add_staff("carer-a2", "nurse", &["c-a"], contact("carer-a2"))
        .await;
    let mut off = off_duty_shift();
    off["contact"] = receiver.url_for("carer-off").into();
    server.add_staff("carer-off", "carer", &["c-a"], off).await;
    server
        .add_staff("carer-b", "carer", &["c-b"], contact("carer-b"))
        .await;
    server
        .add_staff("sup-a", "supervisor", &["c-a"], contact("sup-a"))
        .await;
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["btn-1"]).await;

    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-1").await;

    // The first offer goes to an on-duty carer of the resident's community.
    let offered = alert_when(&server, "the alert offered", |a| {
        a["state"] == "ALERT_STATE_OFFERED"
    })
    .await;
    assert_eq!(offered["offeredTo"], "carer-a1");
    assert_eq!(offered["escalationStep"], "ESCALATION_STEP_CARER");
    let id = offered["id"].as_str().unwrap().to_string();
    let first = next_delivery(&mut receiver).await;
    assert_eq!(first.path, "/carer-a1");
    assert_eq!(first.body["type"], "offer");
    assert_eq!(first.body["alertId"], id.as_str());
    assert!(signature_ok(&first, "s3cret"), "{:?}", first.headers);
    assert!(!signature_ok(&first, "another"));
    assert_eq!(
        receiver.attempts.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "two refusals, then the delivery"
    );

    // The delivery is on the record before the server dies mid-deadline
    // and stays away until after it.
    eventually("the delivery audited", PATIENCE, || async {
        actions(&server.audit_of(&format!("alert/{id}")).await)
            .contains(&"notify.delivered".to_string())
            .then_some(())
    })
    .await;
    server.proc.kill9();
    let deadline: i64 = offered["offerDeadlineMs"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let wait = (deadline - now_ms()).max(0) as u64 + 500;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    server.restart_clean().await;

    // The stored deadline fires after the restart: the next carer.
    let second = alert_when(&server, "the offer to move on", |a| {
        a["offeredTo"] == "carer-a2"
    })
    .await;
    assert_eq!(second["escalationLevel"], 1);
    assert_eq!(next_delivery(&mut receiver).await.path, "/carer-a2");

    // Then the community's supervisor, then the emergency services.
    let third = alert_when(&server, "the supervisor's turn", |a| {
        a["offeredTo"] == "sup-a"
    })
    .await;
    assert_eq!(third["escalationStep"], "ESCALATION_STEP_SUPERVISOR");
    assert_eq!(next_delivery(&mut receiver).await.path, "/sup-a");
    let last = alert_when(&server, "the emergency services' turn", |a| {
        a["escalationStep"] == "ESCALATION_STEP_EMERGENCY_SERVICES"
    })
    .await;
    assert_eq!(last["escalationLevel"], 3);
    let handoff = next_delivery(&mut receiver).await;
    assert_eq!(handoff.path, "/emergency");
    assert_eq!(handoff.body["type"], "emergency_services");
    assert!(signature_ok(&handoff, "s3cret"));
    // Off-duty and other-community carers were never offered it.
    assert_eq!(
        last["tried"],
        serde_json::json!(["carer-a1", "carer-a2", "sup-a"])
    );

    // Each step and each delivery after the restart is on the record. (The
    // first delivery's entry was visible before the kill, but a kill -9
    // between its write and its flush may take it: notification outcomes are
    // audited after the fact, the offer itself is in the alert.)
    let audit = eventually("the deliveries audited", PATIENCE, || async {
        let audit = actions(&server.audit_of(&format!("alert/{id}")).await);
        (audit.iter().filter(|a| *a == "notify.delivered").count() >= 3).then_some(audit)
    })
    .await;
    let steps: Vec<&String> = audit.iter().filter(|a| a.starts_with("alert.")).collect();
    assert_eq!(
        steps,
        [
            "alert.raise",
            "alert.offer",
            "alert.escalate",
            "alert.escalate",
            "alert.escalate"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carer_takes_an_alert_through_its_lifecycle_and_other_communities_see_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.add_community("c-a").await;
    server.add_community("c-b").await;
    server.add_resident("r-1", "c-a", &["btn-1"]).await;
    let a1 = server
        .add_staff("carer-a1", "carer", &["c-a"], serde_json::json!({}))
        .await;
    let a2 = server
        .add_staff("carer-a2", "carer", &["c-a"], serde_json::json!({}))
        .await;
    let b = server
        .add_staff("carer-b", "carer", &["c-b"], serde_json::json!({}))
        .await;
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["btn-1"]).await;

    // The press waits for "help is coming".
    let mut sim = Sim::run(dir.path(), &gateway.mqtt(), &["press", "--device", "btn-1"]);
    sim.line_starting("stored", PATIENCE).await;
    let offered = alert_when(&server, "the alert offered", |a| {
        a["state"] == "ALERT_STATE_OFFERED"
    })
    .await;
    assert_eq!(offered["offeredTo"], "carer-a1");
    let id = offered["id"].as_str().unwrap().to_string();
    let path = |action: &str| format!("/api/v1/alerts/{id}/{action}");

    // Community B's carer sees nothing of it and can do nothing with it.
    let (status, list) = server.call("GET", "/api/v1/alerts", &b, None).await;
    assert_eq!(status, 200);
    assert_eq!(list["alerts"], serde_json::json!([]));
    assert_eq!(
        server
            .call("GET", &format!("/api/v1/alerts/{id}"), &b, None)
            .await
            .0,
        403
    );
    assert_eq!(server.call("POST", &path("ack"), &b, None).await.0, 403);
    assert_eq!(
        server
            .call("GET", "/api/v1/residents/r-1", &b, None)
            .await
            .0,
        403
    );
    assert_eq!(server.call("GET", "/api/v1/audit", &b, None).await.0, 403);
    let denied = server
        .get("/api/v1/audit?actor=carer-b&action=access.denied")
        .await;
    let targets: Vec<&str> = denied["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    let alert_target = format!("alert/{id}");
    assert_eq!(
        targets,
        [
            alert_target.as_str(),
            alert_target.as_str(),
            "resident/r-1",
            "audit"
        ],
        "every refusal is on the record"
    );
    let mut stream = SseStream::connect(&server.stream_url(&b)).await;
    loop {
        let event = stream.next().await.expect("SSE open");
        assert_ne!(event.event, "alert", "carer-b was shown {}", event.data);
        if event.event == "snapshot_end" {
            break;
        }
    }

    // Only the person offered may decline; then it moves to the next carer.
    assert_eq!(
        server.call("POST", &path("decline"), &a2, None).await.0,
        403
    );
    let (status, declined) = server.call("POST", &path("decline"), &a1, None).await;
    assert_eq!(status, 200, "{declined}");
    assert_eq!(declined["state"], "ALERT_STATE_OFFERED");
    assert_eq!(declined["offeredTo"], "carer-a2");

    // carer-a2 takes it: the device hears "help is coming".
    let (status, acked) = server.call("POST", &path("ack"), &a2, None).await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["state"], "ALERT_STATE_ACKNOWLEDGED");
    assert_eq!(acked["assignedTo"], "carer-a2");
    let heard = sim.line_starting("acknowledged", PATIENCE).await;
    assert_eq!(field(&heard, "alert"), Some(id.as_str()));

    let step = |action: &'static str, body: serde_json::Value| {
        let (server, a2, path) = (&server, &a2, path(action));
        async move { server.call("POST", &path, a2, Some(body)).await }
    };
    let none = serde_json::json!({});
    assert_eq!(step("ack", none.clone()).await.0, 409, "acknowledged twice");
    let (status, moving) = step("en_route", none.clone()).await;
    assert_eq!(
        (status, moving["state"].as_str()),
        (200, Some("ALERT_STATE_EN_ROUTE"))
    );
    let (status, there) = step("on_scene", none.clone()).await;
    assert_eq!(
        (status, there["state"].as_str()),
        (200, Some("ALERT_STATE_ON_SCENE"))
    );
    assert_eq!(
        step("en_route", none.clone()).await.0,
        409,
        "back on the road"
    );
    let (status, noted) = step("note", serde_json::json!({ "note": "conscious, hip pain" })).await;
    assert_eq!(status, 200);
    assert_eq!(noted["notes"][0]["text"], "conscious, hip pain");
    let (status, err) = step("resolve", serde_json::json!({ "outcome": "bogus" })).await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("hospital"), "{err}");
    let (status, done) = step("resolve", serde_json::json!({ "outcome": "hospital" })).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("ALERT_STATE_RESOLVED"))
    );
    assert_eq!(done["outcome"], "hospital");
    assert_eq!(
        step("on_scene", none.clone()).await.0,
        409,
        "closed stays closed"
    );

    // The resident's card: lists leave out sensitive fields; reading them is
    // audited.
    let (_, residents) = server.call("GET", "/api/v1/residents", &a1, None).await;
    assert_eq!(residents["residents"][0]["id"], "r-1");
    assert_eq!(residents["residents"][0]["medicalNotes"], "", "{residents}");
    let (status, card) = server.call("GET", "/api/v1/residents/r-1", &a1, None).await;
    assert_eq!(status, 200);
    assert_eq!(card["medicalNotes"], "diabetic; pacemaker");

    let audit: Vec<serde_json::Value> = server
        .audit_of(&format!("alert/{id}"))
        .await
        .into_iter()
        .filter(|e| e["action"] != "access.denied")
        .collect();
    assert_eq!(
        actions(&audit),
        [
            "alert.raise",
            "alert.offer",
            "alert.escalate",
            "alert.acknowledge",
            "alert.en_route",
            "alert.on_scene",
            "alert.note",
            "alert.resolve"
        ]
    );
    assert_eq!(audit[2]["actor"], "carer-a1");
    assert_eq!(audit[3]["actor"], "carer-a2");
    let reads = server.audit_of("resident/r-1").await;
    assert_eq!(
        actions(&reads),
        ["resident.put", "access.denied", "resident.read"]
    );
    assert_eq!(reads[1]["actor"], "carer-b");
    assert_eq!(reads[2]["actor"], "carer-a1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_import_with_bad_rows_imports_nothing_and_names_each_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.add_community("c-a").await;
    let admin = anxin_tests::TEST_ADMIN_TOKEN;
    let header =
        "id,name,community_id,address,phone,medical_notes,emergency_contacts,access_notes\n";
    let good = format!(
        "{header}r-1,Wang Li,c-a,Room 1,138,,Wang Fang|daughter|13800000000,\nr-2,Zhao Min,c-a,Room 2,139,asthma,,key under mat\n"
    );
    let (status, report) = server.import_csv("residents", &good, admin).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["imported"], "2");

    let bad = format!(
        "{header}r-3,Sun Wei,c-a,Room 3,,,,\nr-4,Qian Yu,c-zzz,Room 4,,,,\nr-3,Sun Wei again,c-a,Room 3,,,,\nr-5,Li Na,c-a,Room 5,,,just a name,\n"
    );
    let (status, report) = server.import_csv("residents", &bad, admin).await;
    assert_eq!(status, 422, "{report}");
    let rejected: Vec<(String, String)> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let lines: Vec<&str> = rejected.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(lines, ["3", "4", "5"], "{rejected:?}");
    assert!(rejected[0].1.contains("c-zzz"), "{rejected:?}");
    assert!(rejected[1].1.contains("twice"), "{rejected:?}");
    assert!(
        rejected[2].1.contains("name|relation|phone"),
        "{rejected:?}"
    );
    assert_eq!(report["imported"], "0", "{report}");
    // Not even the good row of the bad file.
    let residents = server.get("/api/v1/residents").await;
    let ids: Vec<&str> = residents["residents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r-1", "r-2"]);

    let devices = "id,kind,resident_id,gateway_id,password\nbtn-1,call_button,r-1,gw-test,pw1-long-enough-secret\nbtn-2,toaster,r-2,gw-test,\nbtn-3,wearable,r-9,gw-test,\n";
    let (status, report) = server.import_csv("devices", devices, admin).await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(report["rejected"][0]["line"], "3");
    assert!(
        report["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("toaster")
    );
    assert_eq!(report["rejected"][1]["line"], "4");
    assert_eq!(
        server.get("/api/v1/devices").await["devices"],
        serde_json::json!([])
    );

    // A device password is a generated secret: a short one is refused, in
    // an import row and through the API alike.
    let short = "id,kind,resident_id,gateway_id,password\nbtn-1,call_button,r-1,gw-test,pw1\n";
    let (status, report) = server.import_csv("devices", short, admin).await;
    assert_eq!(status, 422, "{report}");
    assert!(
        report["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("at least 16 characters"),
        "{report}"
    );
    let (status, body) = server
        .call(
            "PUT",
            "/api/v1/devices/btn-1",
            admin,
            Some(serde_json::json!({ "kind": "call_button", "residentId": "r-1", "password": "short" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let staff = "id,name,role,communities,shifts,contact,active\nli,Li Hua,carer,c-a,1-5 08:00-20:00;6 22:00-06:00,,true\nzhou,Zhou Jie,supervisor,c-a,,,\n";
    let (status, report) = server.import_csv("staff", staff, admin).await;
    assert_eq!(status, 200, "{report}");
    let board = server.get("/api/v1/staff").await;
    assert_eq!(board["staff"][0]["shifts"][1]["end"], "06:00");

    // Only administrators import.
    let carer = server
        .add_staff("carer-x", "carer", &["c-a"], serde_json::json!({}))
        .await;
    assert_eq!(server.import_csv("residents", &good, &carer).await.0, 403);

    let audit = server.get("/api/v1/audit?action=import").await;
    assert_eq!(
        actions(audit["entries"].as_array().unwrap()),
        [
            "import.residents",
            "import.residents.rejected",
            "import.devices.rejected",
            "import.devices.rejected",
            "import.staff"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_its_own_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let gateway = Gateway::start_with(
        dir.path(),
        server.grpc_port,
        &["btn-1"],
        &[("uplink", "token = \"someone-elses-token-0000\"")],
    )
    .await;
    eventually("the uplink refused", PATIENCE, || async {
        (server.metric("anxin_server_uplink_refused_total").await >= 1.0).then_some(())
    })
    .await;
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        server.event_count().await,
        0,
        "an unauthenticated gateway's event was taken"
    );
    assert_eq!(
        gateway.journal_depth().await,
        1,
        "the event waits in the journal"
    );
}

/// A gateway speaks only for its own devices: an event it relays for a
/// device registered to another gateway is refused (acknowledged, so its
/// journal lets go, but never stored), counted and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cannot_submit_events_for_another_gateways_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.add_community("c-a").await;
    server.add_resident("r-1", "c-a", &["btn-own"]).await;
    server
        .add_device_of_gateway("r-2", "c-a", "btn-other", "gw-other")
        .await;
    // gw-test knows btn-other's credentials (its own TOML): it can take
    // the press, but it is not btn-other's gateway.
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["btn-own", "btn-other"]).await;
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-other").await;
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-own").await;
    gateway.wait_drained(PATIENCE).await;
    assert_eq!(server.events_for("btn-own").await.len(), 1);
    assert!(server.events_for("btn-other").await.is_empty());
    assert!(server.alerts_for("btn-other").await.is_empty());
    assert_eq!(
        server
            .metric("anxin_server_events_foreign_device_total")
            .await,
        1.0
    );
    let refused = server.audit_of("gateway/gw-test").await;
    assert!(
        refused.iter().any(|e| e["action"] == "uplink.refused"
            && e["detail"].as_str().unwrap().contains("btn-other#")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_admin_and_dispatch_services_check_the_same_rights() {
    use anxin_proto::v1::{ActRequest, AlertAction, ListRequest, Place, PlaceLevel, ReportRequest};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let url = server.grpc();
    let mut admin = anxin_tests::grpc::admin(&url, anxin_tests::TEST_ADMIN_TOKEN).await;
    let city = Place {
        id: "bj".into(),
        name: "北京市".into(),
        level: PlaceLevel::City as i32,
        parent_id: String::new(),
        ..Default::default()
    };
    admin.put_place(city.clone()).await.unwrap();
    let mut orphan = city.clone();
    orphan.id = "c-x".into();
    orphan.level = PlaceLevel::Community as i32;
    let err = admin.put_place(orphan).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert_eq!(
        admin
            .list_places(ListRequest::default())
            .await
            .unwrap()
            .into_inner()
            .places,
        std::slice::from_ref(&city)
    );

    let mut anonymous = anxin_tests::grpc::admin(&url, "not-a-token").await;
    let err = anonymous.put_place(city.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    server.add_community("c-a").await;
    let carer = server
        .add_staff("carer-a", "carer", &["c-a"], serde_json::json!({}))
        .await;
    let mut as_carer = anxin_tests::grpc::admin(&url, &carer).await;
    let err = as_carer.put_place(city).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = as_carer
        .get_report(ReportRequest {
            community_id: "c-a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "carers read no reports"
    );

    let mut dispatch = server.dispatch_client(&carer).await;
    let err = dispatch
        .act(ActRequest {
            alert_id: "1".into(),
            action: AlertAction::EnRoute as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}
