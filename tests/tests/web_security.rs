//! The console and the webhooks as an attacker meets them: the console's
//! responses carry a strict policy (no inline script, never framed, no
//! sniffing, no referrer); a report CSV keeps a formula-looking name as
//! text; a webhook receiver that checks signature, timestamp and delivery
//! id refuses a replayed or re-stamped delivery; and no webhook goes to a
//! host the operator did not list.

use anxin_tests::{Gateway, PATIENCE, Server, Sim, free_port, webhook::WebhookReceiver};

/// A resident of `c-a` presses; the offer to carer-1, whose contact is
/// `receiver`, arrives there.
async fn offer_delivered(
    server: &Server,
    receiver: &mut WebhookReceiver,
    dir: &std::path::Path,
) -> anxin_tests::webhook::Delivery {
    server.add_resident("r-1", "c-a", &["btn-1"]).await;
    server
        .add_staff(
            "carer-1",
            "carer",
            &["c-a"],
            serde_json::json!({ "contact": receiver.url_for("carer-1") }),
        )
        .await;
    let gateway = Gateway::start(dir, server.grpc_port, &["btn-1"]).await;
    Sim::press_until_stored(dir, &gateway.mqtt(), "btn-1").await;
    let delivery = tokio::time::timeout(PATIENCE, receiver.deliveries.recv())
        .await
        .expect("the offer delivered")
        .unwrap();
    assert_eq!(delivery.body["type"], "offer");
    delivery
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_headers_csv_cells_and_webhook_checks_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = WebhookReceiver::checking("s3cret").await;
    let server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[("notify", "secret = \"s3cret\"")],
    )
    .await;

    // Every response carries the policy, the console's page and its API.
    for path in ["/", "/console/app.js", "/api/v1/alerts", "/healthz"] {
        let response = reqwest::get(format!("{}{path}", server.http()))
            .await
            .unwrap();
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }

    // A community whose name would be a formula in a spreadsheet.
    server.add_community("c-a").await;
    server
        .send(
            "PUT",
            "/api/v1/places/c-a",
            serde_json::json!({
                "name": "=HYPERLINK(\"http://evil.example/\",\"click\")",
                "level": "PLACE_LEVEL_COMMUNITY",
                "parentId": "street-test",
            }),
        )
        .await;
    let csv = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/reports?community=c-a&format=csv",
            server.http()
        ))
        .bearer_auth(anxin_tests::TEST_ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = csv
        .lines()
        .find(|l| l.starts_with("community_name,"))
        .unwrap_or_else(|| panic!("no community_name row: {csv}"));
    assert_eq!(
        row,
        "community_name,\"'=HYPERLINK(\"\"http://evil.example/\"\",\"\"click\"\")\""
    );

    // A contact on a host the operator did not list is refused when written.
    let (status, body) = server
        .call(
            "PUT",
            "/api/v1/staff/carer-x",
            anxin_tests::TEST_ADMIN_TOKEN,
            Some(serde_json::json!({
                "name": "X", "role": "STAFF_ROLE_CARER", "communities": ["c-a"],
                "active": true, "contact": "http://169.254.169.254/latest/meta-data",
            })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("notify.webhook_hosts"),
        "{body}"
    );

    // An offer reaches a checking receiver, signed.
    let delivery = offer_delivered(&server, &mut receiver, dir.path()).await;

    // The same delivery captured and sent again: refused as a replay.
    let url = receiver.url_for("carer-1");
    let resend = |timestamp: &str| {
        let mut request = reqwest::Client::new().post(&url).body(delivery.raw.clone());
        for (name, value) in &delivery.headers {
            if name.starts_with("x-anxin-") || name == "content-type" {
                let value = if name == "x-anxin-timestamp" {
                    timestamp.to_string()
                } else {
                    value.clone()
                };
                request = request.header(name, value);
            }
        }
        request.send()
    };
    let replayed = resend(&delivery.headers["x-anxin-timestamp"])
        .await
        .unwrap();
    assert_eq!(replayed.status(), 409);
    assert_eq!(receiver.refusals.recv().await, Some("replayed delivery"));
    // Re-stamped to look fresh: the signature no longer matches.
    let restamped = resend(&anxin_proto::now_ms().to_string()).await.unwrap();
    assert_eq!(restamped.status(), 401);
    assert_eq!(receiver.refusals.recv().await, Some("bad signature"));
}

/// Webhooks over HTTPS: the server verifies the receiver's certificate
/// against the system's trust store (here SSL_CERT_FILE names the test CA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_go_over_https_to_a_verified_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let pki = anxin_tests::certs::Pki::new(dir.path(), "hooks-ca");
    let pair = pki.server("receiver");
    let mut receiver = WebhookReceiver::checking_https("s3cret", &pair.cert, &pair.key).await;
    let ca = pki.ca("hooks-ca");
    let server = Server::start_configured(
        dir.path(),
        free_port(),
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
        &[
            ("notify", "secret = \"s3cret\""),
            ("notify", "webhook_hosts = [\"localhost\"]"),
        ],
    )
    .await;
    server.add_community("c-a").await;
    offer_delivered(&server, &mut receiver, dir.path()).await;
    assert!(receiver.url_for("x").starts_with("https://"));
}
