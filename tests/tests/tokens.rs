//! Token lifecycle: an expired token, a revoked token and a rotated-out
//! token past its grace are refused over REST and gRPC; the rotated-in one
//! works; a console session expires; last use is recorded.

use std::time::Duration;

use anxin_proto::v1::ListAlertsRequest;
use anxin_tests::{Server, free_port};

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
