//! Token lifecycle: an expired token, a revoked token and a rotated-out
//! token past its grace are refused over REST and gRPC; the rotated-in one
//! works; a console session expires; last use is recorded. A gateway's
//! tokens are rotated, revoked and expire on its live uplink.

use std::time::Duration;

use anxin_proto::v1::{
    ListAlertsRequest, ListTokensRequest, RevokeTokenRequest, RotateGatewayTokenRequest,
};
use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, TEST_ADMIN_TOKEN, TEST_GATEWAY_TOKEN, eventually, free_port,
};

async fn rest_status(server: &Server, token: &str) -> u16 {
    server.call("GET", "/api/v1/alerts", token, None).await.0
}

async fn grpc_refused(server: &Server, token: &str) -> bool {
    let mut client = server.dispatch_client(token).await;
    match client.list_alerts(ListAlertsRequest::default()).await {
        Ok(_) => false,
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
            true
        }
    }
}

async fn issue(server: &Server, staff: &str, ttl_secs: Option<u64>) -> serde_json::Value {
    let body = match ttl_secs {
        Some(ttl) => serde_json::json!({ "ttlSecs": ttl }),
        None => serde_json::json!({}),
    };
    server
        .send("POST", &format!("/api/v1/staff/{staff}/tokens"), body)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revoked_and_rotated_out_tokens_are_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[
            ("auth", "rotation_grace_secs = 2"),
            ("auth", "console_session_secs = 2"),
        ],
    )
    .await;
    server
        .add_staff("disp-1", "dispatcher", &["*"], serde_json::json!({}))
        .await;

    // Expiry.
    let short = issue(&server, "disp-1", Some(1)).await;
    let short = short["token"].as_str().unwrap().to_string();
    assert_eq!(rest_status(&server, &short).await, 200);
    assert!(!grpc_refused(&server, &short).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = server.call("GET", "/api/v1/alerts", &short, None).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    assert!(grpc_refused(&server, &short).await);

    // Revocation of one token, by its id; another token of the same person
    // goes on working.
    let doomed = issue(&server, "disp-1", None).await;
    let kept = issue(&server, "disp-1", None).await;
    let doomed_token = doomed["token"].as_str().unwrap().to_string();
    let kept_token = kept["token"].as_str().unwrap().to_string();
    assert_eq!(rest_status(&server, &doomed_token).await, 200);
    server
        .send(
            "DELETE",
            &format!(
                "/api/v1/staff/disp-1/tokens/{}",
                doomed["tokenId"].as_str().unwrap()
            ),
            serde_json::json!({}),
        )
        .await;
    let (status, body) = server
        .call("GET", "/api/v1/alerts", &doomed_token, None)
        .await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    assert!(grpc_refused(&server, &doomed_token).await);
    assert_eq!(rest_status(&server, &kept_token).await, 200);

    // Rotation: the new token works; the old one for the grace only.
    let (status, rotated) = server
        .call("POST", "/api/v1/tokens/rotate", &kept_token, None)
        .await;
    assert_eq!(status, 200, "{rotated}");
    let fresh = rotated["token"].as_str().unwrap().to_string();
    assert_eq!(rest_status(&server, &fresh).await, 200);
    assert_eq!(
        rest_status(&server, &kept_token).await,
        200,
        "within the grace"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        rest_status(&server, &kept_token).await,
        401,
        "past the grace"
    );
    assert!(grpc_refused(&server, &kept_token).await);
    assert_eq!(rest_status(&server, &fresh).await, 200);
    assert!(!grpc_refused(&server, &fresh).await);

    // A console session, made from a token, lives 2 s here.
    let (status, session) = server.call("POST", "/api/v1/sessions", &fresh, None).await;
    assert_eq!(status, 200, "{session}");
    let session = session["token"].as_str().unwrap().to_string();
    assert_eq!(rest_status(&server, &session).await, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rest_status(&server, &session).await, 401);

    // The list names every token by id, never the token, with its use.
    let listed = server.get("/api/v1/staff/disp-1/tokens").await;
    let tokens = listed["tokens"].as_array().unwrap();
    assert!(tokens.len() >= 5, "{listed}");
    assert!(!listed.to_string().contains(&fresh), "a listed token leaks");
    let fresh_id = rotated["tokenId"].as_str().unwrap();
    let fresh_row = tokens.iter().find(|t| t["tokenId"] == fresh_id).unwrap();
    assert!(fresh_row["lastUsedMs"].as_i64().unwrap() > 0, "{fresh_row}");
    let revoked_row = tokens
        .iter()
        .find(|t| t["tokenId"] == doomed["tokenId"])
        .unwrap();
    assert!(
        revoked_row["revokedMs"].as_i64().unwrap() > 0,
        "{revoked_row}"
    );
    let audit = server.audit_of("staff/disp-1").await;
    for action in [
        "token.issue",
        "token.revoke",
        "token.rotate",
        "session.open",
    ] {
        assert!(
            audit.iter().any(|e| e["action"] == action),
            "no {action} in {audit:?}"
        );
    }
}

/// Points the test gateway at another token and restarts it.
async fn use_token(gateway: &mut Gateway, dir: &std::path::Path, token: &str) {
    let path = dir.join("gateway.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let config: String = config
        .lines()
        .map(|line| {
            if line.starts_with("token = ") {
                format!("token = \"{token}\"\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(&path, config).unwrap();
    gateway.restart().await;
}

async fn uplink_up(gateway: &Gateway) -> bool {
    gateway.metric("anxin_gateway_uplink_connected").await == 1.0
}

async fn press(dir: &std::path::Path, gateway: &Gateway, device: &str) {
    let mut sim = Sim::run(
        dir,
        &gateway.mqtt(),
        &["press", "--device", device, "--until", "stored"],
    );
    sim.line_starting("stored", PATIENCE).await;
}

/// A gateway's tokens over its live gRPC uplink: a rotation keeps the
/// earlier token working for the grace period, then the open uplink made
/// with it is closed; a revoked token's open uplink is closed within
/// seconds; a token with a lifetime closes its uplink when it ends. Events
/// pressed meanwhile wait at the gateway and arrive with the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_tokens_rotate_expire_and_revoke_on_a_live_uplink() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[("auth", "rotation_grace_secs = 3")],
    )
    .await;
    let mut gateway =
        Gateway::start(dir.path(), server.grpc_port, &["btn-1", "btn-2", "btn-3"]).await;
    eventually("the uplink", PATIENCE, || async {
        uplink_up(&gateway).await.then_some(())
    })
    .await;
    let closed = async || {
        server
            .metric("anxin_server_uplink_closed_token_total")
            .await
    };

    // Updating the gateway's record leaves its tokens as they are.
    let updated = server
        .send(
            "PUT",
            "/api/v1/gateways/gw-test",
            serde_json::json!({ "name": "Home 1" }),
        )
        .await;
    assert_eq!(updated["token"], "", "{updated}");
    // The provisioned token, listed by id only.
    let listed = server.get("/api/v1/gateways/gw-test/tokens").await;
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1, "{listed}");
    assert!(!listed.to_string().contains(TEST_GATEWAY_TOKEN));
    let (status, _) = server
        .call(
            "GET",
            "/api/v1/gateways/gw-nobody/tokens",
            TEST_ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Rotation: a new token; the earlier one holds for the grace (3 s).
    let rotated = server
        .send(
            "POST",
            "/api/v1/gateways/gw-test/tokens",
            serde_json::json!({}),
        )
        .await;
    let second = rotated["token"].as_str().unwrap().to_string();
    let grace_end = rotated["earlierValidUntilMs"].as_i64().unwrap();
    assert!(grace_end > anxin_proto::now_ms(), "{rotated}");
    press(dir.path(), &gateway, "btn-1").await;
    eventually("btn-1's alert, within the grace", PATIENCE, || async {
        (!server.alerts_for("btn-1").await.is_empty()).then_some(())
    })
    .await;
    // Past it, the open uplink is closed (UNAUTHENTICATED), audited.
    eventually("the uplink closed after the grace", PATIENCE, || async {
        (closed().await >= 1.0 && !uplink_up(&gateway).await).then_some(())
    })
    .await;
    let late_by = anxin_proto::now_ms() - grace_end;
    press(dir.path(), &gateway, "btn-2").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        server.alerts_for("btn-2").await.is_empty(),
        "taken with an expired token"
    );
    assert!(gateway.journal_depth().await >= 1);
    let audit = server.audit_of("gateway/gw-test").await;
    assert!(
        audit.iter().any(|e| e["action"] == "uplink.refused"
            && e["detail"].as_str().unwrap().contains("expired")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|e| e["action"] == "token.rotate"),
        "{audit:?}"
    );

    // The gateway given the new token delivers what it kept.
    use_token(&mut gateway, dir.path(), &second).await;
    eventually("btn-2's alert with the new token", PATIENCE, || async {
        (!server.alerts_for("btn-2").await.is_empty()).then_some(())
    })
    .await;

    // Revocation by id (over the Admin gRPC service here) closes the open
    // uplink within seconds.
    let second_id = rotated["tokenId"].as_str().unwrap();
    let before = closed().await;
    let revoked_at = std::time::Instant::now();
    let mut admin = anxin_tests::grpc::admin(&server.grpc(), TEST_ADMIN_TOKEN).await;
    admin
        .revoke_token(RevokeTokenRequest {
            subject_kind: "gateway".into(),
            subject_id: "gw-test".into(),
            token_id: second_id.into(),
        })
        .await
        .unwrap();
    eventually(
        "the uplink closed after the revocation",
        PATIENCE,
        || async { (closed().await > before && !uplink_up(&gateway).await).then_some(()) },
    )
    .await;
    let revoked_after = revoked_at.elapsed();
    assert!(
        revoked_after < Duration::from_secs(5),
        "an open uplink outlived its revoked token by {revoked_after:?}"
    );

    // A revoked token cannot be given back through the gateway's record.
    let (status, body) = server
        .call(
            "PUT",
            "/api/v1/gateways/gw-test",
            TEST_ADMIN_TOKEN,
            Some(serde_json::json!({ "token": second })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // A token with a lifetime: flagged on the gateway board, and its
    // uplink closes when it ends.
    let short = admin
        .rotate_gateway_token(RotateGatewayTokenRequest {
            gateway_id: "gw-test".into(),
            ttl_secs: Some(6),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        short.earlier_valid_until_ms, 0,
        "no earlier token was valid"
    );
    assert!(short.expires_ms > 0);
    use_token(&mut gateway, dir.path(), &short.token).await;
    // The board tells the dispatchers before it ends.
    let row = eventually("the board to flag the token", PATIENCE, || async {
        let board = server.get("/api/v1/gateways/board").await;
        board["gateways"]
            .as_array()?
            .iter()
            .find(|g| {
                g["id"] == "gw-test"
                    && g["reasons"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r == "token_expiring"))
            })
            .cloned()
    })
    .await;
    assert_eq!(row["state"], "degraded", "{row}");
    assert_eq!(row["tokenExpiresMs"], short.expires_ms.to_string(), "{row}");
    press(dir.path(), &gateway, "btn-3").await;
    eventually("btn-3's alert", PATIENCE, || async {
        (!server.alerts_for("btn-3").await.is_empty()).then_some(())
    })
    .await;
    let before = closed().await;
    eventually(
        "the uplink closed at the token's expiry",
        PATIENCE,
        || async { (closed().await > before && !uplink_up(&gateway).await).then_some(()) },
    )
    .await;

    let tokens = admin
        .list_tokens(ListTokensRequest {
            subject_kind: "gateway".into(),
            subject_id: "gw-test".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    assert!(tokens.iter().any(|t| t.revoked_ms > 0));
    assert!(tokens.iter().all(|t| t.expires_ms > 0 || t.revoked_ms > 0));
    let refused = admin
        .list_tokens(ListTokensRequest {
            subject_kind: "device".into(),
            subject_id: "btn-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    eprintln!(
        "uplink closed {late_by} ms after the grace ended and {revoked_after:?} after the revocation"
    );
}

/// Revoked at one replica, the token's uplink open at another is closed
/// within seconds (the revocation reaches it as a directory change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_at_one_replica_closes_the_uplink_at_another() {
    if !anxin_tests::postgres_pass("a_token_revoked_at_one_replica_closes_the_uplink_at_another") {
        return;
    }
    let Some(url) = anxin_tests::require_postgres("tokens").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, gw_dir) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("gw"),
    );
    for d in [&a_dir, &b_dir, &gw_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let a = Server::start_replica(&a_dir, &url, &[]).await;
    let b = Server::start_replica(&b_dir, &url, &[]).await;
    let gateway = Gateway::start(&gw_dir, b.grpc_port, &["btn-1"]).await;
    eventually("the uplink to b", PATIENCE, || async {
        uplink_up(&gateway).await.then_some(())
    })
    .await;
    let listed = a.get("/api/v1/gateways/gw-test/tokens").await;
    let id = listed["tokens"][0]["tokenId"].as_str().unwrap().to_string();
    let revoked_at = std::time::Instant::now();
    a.send(
        "DELETE",
        &format!("/api/v1/gateways/gw-test/tokens/{id}"),
        serde_json::json!({}),
    )
    .await;
    eventually("b to close the uplink", PATIENCE, || async {
        (b.metric("anxin_server_uplink_closed_token_total").await >= 1.0
            && !uplink_up(&gateway).await)
            .then_some(())
    })
    .await;
    let after = revoked_at.elapsed();
    assert!(
        after < Duration::from_secs(5),
        "the uplink at b outlived the revocation at a by {after:?}"
    );
    eprintln!("revoked at replica a, closed at replica b after {after:?}");
}
