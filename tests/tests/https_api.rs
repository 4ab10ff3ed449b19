//! HTTPS on the REST/SSE/console port (`http.tls`): REST answers and the
//! SSE stream flows over TLS, the security headers come along, and a
//! plain-HTTP client gets nothing.

use std::time::Duration;

use anxin_tests::{
    PATIENCE, Proc, TEST_ADMIN_TOKEN, binary, certs::Pki, eventually, free_port, https,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_sse_over_https_and_no_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "city-ca");
    let pair = pki.server("server");
    let (grpc, http) = (free_port(), free_port());
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             [http.tls]\ncert = \"{}\"\nkey = \"{}\"\n[store]\npath = \"{}\"\n\
             [auth]\nadmin_token = \"{TEST_ADMIN_TOKEN}\"\n",
            pair.cert.display(),
            pair.key.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(binary("anxin-server"));
    cmd.arg("--config").arg(&config);
    let _server = Proc::spawn("anxin-server", cmd, dir.path().join("server.log"));
    let ca = pki.ca("city-ca");

    let (status, body) = eventually("the server to answer over HTTPS", PATIENCE, || async {
        https::request(http, &ca, "/healthz", "", Duration::from_secs(5), |_| false)
            .await
            .ok()
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = https::request(
        http,
        &ca,
        "/api/v1/alerts",
        TEST_ADMIN_TOKEN,
        Duration::from_secs(5),
        |_| false,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("alerts"), "{body}");

    // The live queue's stream, over TLS: its snapshot arrives.
    let (status, stream) = https::request(
        http,
        &ca,
        &format!("/api/v1/alerts/stream?access_token={TEST_ADMIN_TOKEN}"),
        "",
        PATIENCE,
        |text| text.contains("snapshot_end"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(stream.contains("snapshot_end"), "{stream}");

    // Plain HTTP to the HTTPS port: no HTTP answer at all.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{http}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
}
