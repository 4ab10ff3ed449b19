//! The gateway→server hop over TLS with mutual authentication: the server
//! presents its certificate, each gateway its own, whose subject CN must be
//! its gateway id (the token stays a second factor). A gateway without a
//! certificate, with another gateway's, or speaking plaintext to the TLS
//! port gets nothing through; the refusals are counted and audited.

use std::time::Duration;

use anxin_tests::{Gateway, PATIENCE, Server, Sim, eventually, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_gateway_with_its_own_certificate_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    // The operator's helper makes the deployment's certificates.
    let pki = dir.path().join("pki");
    anxin_tests::anxin_server_certs(
        &pki,
        &[
            "--server-name",
            "localhost",
            "--server-name",
            "127.0.0.1",
            "--gateway",
            "gw-test",
            "--gateway",
            "gw-x",
        ],
    );
    let file = |name: &str| pki.join(name);
    let tls = |field: &str, path: &std::path::Path| format!("{field} = \"{}\"", path.display());
    let server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[
            ("grpc.tls", &tls("cert", &file("server.pem"))),
            ("grpc.tls", &tls("key", &file("server.key"))),
            ("grpc.tls", &tls("client_ca", &file("ca.pem"))),
        ],
    )
    .await;
    server.add_community("c-a").await;
    server
        .add_resident("r-1", "c-a", &["btn-1", "btn-2", "btn-3", "btn-4"])
        .await;
    // A device of another gateway, which gw-test's certificate does not
    // make gw-test's.
    server
        .add_device_of_gateway("r-2", "c-a", "btn-other", "gw-other")
        .await;
    let https = format!("servers = [\"https://localhost:{}\"]", server.grpc_port);
    let ca = tls("ca", &file("ca.pem"));

    // With its own certificate: through.
    let home = dir.path().join("good");
    std::fs::create_dir_all(&home).unwrap();
    let good = Gateway::start_with(
        &home,
        server.grpc_port,
        &["btn-1", "btn-other"],
        &[
            ("uplink", &https),
            ("uplink.tls", &ca),
            ("uplink.tls", &tls("cert", &file("gateway-gw-test.pem"))),
            ("uplink.tls", &tls("key", &file("gateway-gw-test.key"))),
        ],
    )
    .await;
    Sim::press_until_stored(&home, &good.mqtt(), "btn-other").await;
    Sim::press_until_stored(&home, &good.mqtt(), "btn-1").await;
    eventually("the event at the server", PATIENCE, || async {
        (server.events_for("btn-1").await.len() == 1).then_some(())
    })
    .await;
    good.wait_drained(PATIENCE).await;
    assert!(
        server.events_for("btn-other").await.is_empty(),
        "gw-test spoke for gw-other's device"
    );
    assert_eq!(
        server
            .metric("anxin_server_events_foreign_device_total")
            .await,
        1.0
    );
    drop(good);

    // A dispatcher's gRPC client needs no certificate of its own, only the
    // CA, and reads the same alerts over TLS.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", server.grpc_port))
            .unwrap()
            .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
                tonic::transport::Certificate::from_pem(std::fs::read(file("ca.pem")).unwrap()),
            ))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut dispatch = anxin_proto::v1::dispatch_client::DispatchClient::with_interceptor(
        channel,
        |mut request: tonic::Request<()>| {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", anxin_tests::TEST_ADMIN_TOKEN)
                    .parse()
                    .unwrap(),
            );
            Ok(request)
        },
    );
    let listed = dispatch
        .list_alerts(anxin_proto::v1::ListAlertsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.alerts.len(), 1, "the press's alert over TLS");

    // Without a client certificate, with gw-x's, and in plaintext: held.
    let refused_before = server.metric("anxin_server_uplink_refused_total").await;
    let cases: [(&str, Vec<(&str, String)>); 3] = [
        (
            "btn-2",
            vec![("uplink", https.clone()), ("uplink.tls", ca.clone())],
        ),
        (
            "btn-3",
            vec![
                ("uplink", https.clone()),
                ("uplink.tls", ca.clone()),
                ("uplink.tls", tls("cert", &file("gateway-gw-x.pem"))),
                ("uplink.tls", tls("key", &file("gateway-gw-x.key"))),
            ],
        ),
        ("btn-4", vec![]),
    ];
    for (device, extra) in cases {
        let home = dir.path().join(device);
        std::fs::create_dir_all(&home).unwrap();
        let extra: Vec<(&str, &str)> = extra.iter().map(|(s, l)| (*s, l.as_str())).collect();
        let gateway = Gateway::start_with(&home, server.grpc_port, &[device], &extra).await;
        Sim::press_until_stored(&home, &gateway.mqtt(), device).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            server.events_for(device).await.is_empty(),
            "{device}'s event got through"
        );
        assert_eq!(
            gateway.journal_depth().await,
            1,
            "{device} waits in the journal"
        );
    }
    // The two TLS gateways reached the service and were refused there (the
    // plaintext one never got past the handshake).
    eventually("the refusals counted", PATIENCE, || async {
        (server.metric("anxin_server_uplink_refused_total").await >= refused_before + 2.0)
            .then_some(())
    })
    .await;
    let audit = server.audit_of("gateway/gw-test").await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "uplink.refused"
                && e["detail"].as_str().unwrap().contains("gw-x")),
        "{audit:?}"
    );
}
