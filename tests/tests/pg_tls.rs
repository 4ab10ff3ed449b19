//! The replicas reach PostgreSQL over TLS (rustls): a PostgreSQL of the
//! test's own with `ssl = on` and a certificate made by `anxin-server
//! certs`, taking TLS connections only. `sslmode=verify-full` with the
//! right CA and name serves two replicas (an SOS through one, seen and
//! acknowledged on the other, every session encrypted); a wrong name, a
//! wrong CA and a plain connection are refused at start with the reason.

use std::{path::Path, process::Command, time::Duration};

use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, TEST_ADMIN_TOKEN, anxin_server_certs, binary, eventually,
    free_port, host::skip, pg::PgInstance, postgres_pass,
};

/// Runs a server on `url` and expects it to refuse to start; its output.
fn refused_start(dir: &Path, url: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[grpc]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n\
             [store]\nbackend = \"postgres\"\npath = \"{}\"\nurl = \"{url}\"\n\
             [auth]\nadmin_token = \"{TEST_ADMIN_TOKEN}\"\n",
            free_port(),
            free_port(),
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(binary("anxin-server"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server started on {url}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "exit {status}: {text}");
    assert!(!text.contains("panicked"), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reach_postgresql_over_verified_tls_and_nothing_else() {
    if !postgres_pass("replicas_reach_postgresql_over_verified_tls_and_nothing_else") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut pg = match PgInstance::start(&dir.path().join("pg")).await {
        Ok(pg) => pg,
        Err(why) => return skip("pg_tls", &why),
    };
    let pki = dir.path().join("pki");
    anxin_server_certs(&pki, &["--server-name", "localhost"]);
    let other = dir.path().join("other-pki");
    anxin_server_certs(&other, &["--server-name", "localhost"]);
    pg.execute("create database anxin").await;
    pg.require_tls(&pki.join("server.pem"), &pki.join("server.key"))
        .await;
    let ca = pki.join("ca.pem");
    let url =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{}/anxin?{query}", pg.port);
    let verified = url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );

    // Refused, each with its reason.
    let plain = refused_start(
        &dir.path().join("plain"),
        &url("localhost", "sslmode=disable"),
    );
    assert!(plain.contains("no encryption"), "{plain}");
    let wrong_name = refused_start(
        &dir.path().join("wrong-name"),
        &url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
        ),
    );
    assert!(wrong_name.contains("not valid for name"), "{wrong_name}");
    let wrong_ca = refused_start(
        &dir.path().join("wrong-ca"),
        &url(
            "localhost",
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                other.join("ca.pem").display()
            ),
        ),
    );
    assert!(wrong_ca.contains("invalid peer certificate"), "{wrong_ca}");

    // Two replicas over verify-full.
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let a = Server::start_replica(&a_dir, &verified, &[]).await;
    let b = Server::start_replica(&b_dir, &verified, &[]).await;
    let gw_dir = dir.path().join("gw-home");
    std::fs::create_dir_all(&gw_dir).unwrap();
    let gateway = Gateway::start(&gw_dir, a.grpc_port, &["btn-1"]).await;
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-1").await;
    let alert = eventually("the SOS on the other replica", PATIENCE, || async {
        b.alerts_for("btn-1").await.into_iter().next()
    })
    .await;
    let id = alert["id"].as_str().unwrap();
    let (status, body) = b
        .call(
            "POST",
            &format!("/api/v1/alerts/{id}/acknowledge"),
            TEST_ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "the acknowledgement on the first replica",
        PATIENCE,
        || async {
            (a.alerts_for("btn-1").await.first()?["state"] == "ALERT_STATE_ACKNOWLEDGED")
                .then_some(())
        },
    )
    .await;
    // Every session of the replicas is encrypted (the only way in).
    let (client, connection) =
        anxin_server::store::postgres::tls::connect(&url("localhost", "sslmode=require"))
            .await
            .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "select count(*) filter (where s.ssl), count(*) from pg_stat_activity a \
             join pg_stat_ssl s using (pid) where a.datname = 'anxin' and a.backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap();
    let (encrypted, sessions): (i64, i64) = (row.get(0), row.get(1));
    assert!(sessions >= 2, "the replicas' sessions: {sessions}");
    assert_eq!(encrypted, sessions);
    pg.kill9().await;
    eprintln!("{sessions} sessions of two replicas, all over TLS (verify-full)");
}
