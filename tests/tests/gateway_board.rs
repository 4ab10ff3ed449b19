//! Health tells the truth, up to the dispatcher (issue 17): a gateway
//! reports its state over the uplink, and the gateway board that the
//! console shows names a gateway in trouble and why — to staff of its
//! community only — and shows it offline when its link is gone.

use std::time::Duration;

use anxin_tests::{Gateway, PATIENCE, Server, TEST_ADMIN_TOKEN, TEST_GATEWAY_TOKEN, eventually};

async fn board(server: &Server, token: &str) -> Vec<serde_json::Value> {
    let (status, body) = server
        .call("GET", "/api/v1/gateways/board", token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["gateways"].as_array().cloned().unwrap_or_default()
}

/// Communities c-a and c-b with a dispatcher each (their tokens, c-a's
/// first), and the test gateway registered in c-a.
async fn two_communities(server: &Server) -> (String, String) {
    server.add_community("c-a").await;
    server.add_community("c-b").await;
    let dispatcher = server
        .add_staff("disp-a", "dispatcher", &["c-a"], serde_json::json!({}))
        .await;
    let other = server
        .add_staff("disp-b", "dispatcher", &["c-b"], serde_json::json!({}))
        .await;
    server
        .send(
            "PUT",
            "/api/v1/gateways/gw-test",
            serde_json::json!({ "name": "Heping centre", "communityId": "c-a", "token": TEST_GATEWAY_TOKEN }),
        )
        .await;
    (dispatcher, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_in_trouble_shows_on_the_board_of_its_community() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (dispatcher, other) = two_communities(&server).await;

    // A low-water mark above any real free space: the gateway is short of
    // disk from the start (it defers telemetry, still takes alarms).
    let mut gateway = Gateway::start_with(
        dir.path(),
        server.grpc_port,
        &["btn-1"],
        &[
            ("journal", "reserve_bytes = 0"),
            ("journal", "min_free_bytes = 1000000000000000000"),
        ],
    )
    .await;
    let health = gateway.health().await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(
        health["reasons"],
        serde_json::json!(["disk_low"]),
        "{health}"
    );
    let response = reqwest::get(format!("{}/healthz", gateway.http()))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);

    let row = eventually("the board to show the trouble", PATIENCE, || async {
        board(&server, &dispatcher)
            .await
            .into_iter()
            .find(|g| g["id"] == "gw-test" && g["state"] == "degraded")
    })
    .await;
    assert_eq!(row["reasons"], serde_json::json!(["disk_low"]), "{row}");
    assert_eq!(row["name"], "Heping centre");
    assert!(row["diskFreeBytes"].as_str().is_some(), "{row}");
    // Another community's dispatcher does not see it; the admin does.
    assert!(board(&server, &other).await.is_empty());
    assert_eq!(board(&server, TEST_ADMIN_TOKEN).await.len(), 1);

    // The link goes: offline.
    gateway.proc.kill9();
    eventually(
        "the board to show it offline",
        Duration::from_secs(30),
        || async {
            board(&server, &dispatcher)
                .await
                .into_iter()
                .find(|g| g["id"] == "gw-test" && g["state"] == "offline")
        },
    )
    .await;
}

/// A gateway that found its journal damaged tells the server; the alert
/// belongs to the gateway's community (its dispatchers see it, others do
/// not) and is not offered to carers or escalated: it needs a technician.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_fault_reaches_its_communitys_dispatchers_and_is_not_routed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_configured(
        dir.path(),
        anxin_tests::free_port(),
        &[],
        &[
            ("routing", "p0_deadline_secs = 2"),
            ("routing", "p1_deadline_secs = 2"),
        ],
    )
    .await;
    let (dispatcher, other) = two_communities(&server).await;
    server
        .add_staff("carer-a", "carer", &["c-a"], serde_json::json!({}))
        .await;
    let mut gateway = Gateway::start(dir.path(), server.grpc_port, &["btn-1"]).await;
    gateway.proc.terminate();
    assert_eq!(gateway.proc.wait_exit(PATIENCE).await, Some(0));
    // One byte of the stopped journal changes.
    let db = dir.path().join("journal").join("alarm").join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&db, bytes).unwrap();
    gateway.restart().await;

    let alerts_of = |token: String| {
        let server = &server;
        async move {
            let (status, body) = server.call("GET", "/api/v1/alerts", &token, None).await;
            assert_eq!(status, 200, "{body}");
            body["alerts"].as_array().cloned().unwrap_or_default()
        }
    };
    let fault = eventually(
        "the gateway fault in the community's queue",
        PATIENCE,
        || async {
            alerts_of(dispatcher.clone())
                .await
                .into_iter()
                .find(|a| a["kind"] == "EVENT_KIND_GATEWAY_FAULT")
        },
    )
    .await;
    assert_eq!(fault["deviceId"], "gw-test");
    assert_eq!(fault["communityId"], "c-a");
    assert!(fault.to_string().contains("journal damaged"), "{fault}");
    assert!(
        alerts_of(other).await.is_empty(),
        "another community's dispatcher"
    );
    // Past any offer deadline: still not offered to the carer.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fault = server.alert(fault["id"].as_str().unwrap()).await;
    assert_eq!(fault["state"], "ALERT_STATE_NEW", "{fault}");
    assert!(
        fault["offeredTo"].as_str().unwrap_or_default().is_empty(),
        "{fault}"
    );
}
