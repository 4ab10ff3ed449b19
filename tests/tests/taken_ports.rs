//! A port that cannot be opened is fatal at start-up, with a message that
//! names the address and the config field; a simulator pressing against a
//! port with no Anxin gateway gives up with an error naming the address.

use std::{net::TcpListener, process::Command, time::Duration};

use anxin_tests::{Proc, Sim, binary};

/// Holds a port the way Mosquitto holds 1883 on this machine kind.
fn hold_a_port() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

async fn exits_naming(name: &str, config: &str, dir: &std::path::Path, port: u16, field: &str) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(binary(name));
    cmd.arg("--config").arg(&path);
    let mut proc = Proc::spawn(name, cmd, dir.join(format!("{name}.log")));
    let code = proc.wait_exit(Duration::from_secs(5)).await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "{name} exited with {code:?}"
    );
    let log = proc.log();
    assert!(
        log.contains(&format!("127.0.0.1:{port}")) && log.contains(field),
        "{name}'s error must name the address and {field}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_server_exit_non_zero_on_a_taken_port() {
    let dir = tempfile::tempdir().unwrap();
    let (_held, taken) = hold_a_port();
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };

    let journal = dir.path().join("journal");
    let gateway = format!(
        "gateway_id = \"gw-test\"\n[mqtt]\nlisten = \"127.0.0.1:{taken}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n[journal]\npath = \"{}\"\n",
        free(),
        journal.display()
    );
    exits_naming("anxin-gateway", &gateway, dir.path(), taken, "mqtt.listen").await;
    let gateway_http = format!(
        "gateway_id = \"gw-test\"\n[mqtt]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{taken}\"\n[journal]\npath = \"{}\"\n",
        free(),
        journal.display()
    );
    exits_naming(
        "anxin-gateway",
        &gateway_http,
        dir.path(),
        taken,
        "http.listen",
    )
    .await;

    let store = dir.path().join("store");
    let grpc_taken = format!(
        "[grpc]\nlisten = \"127.0.0.1:{taken}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n[store]\npath = \"{}\"\n",
        free(),
        store.display()
    );
    exits_naming(
        "anxin-server",
        &grpc_taken,
        dir.path(),
        taken,
        "grpc.listen",
    )
    .await;
    let http_taken = format!(
        "[grpc]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{taken}\"\n[store]\npath = \"{}\"\n",
        free(),
        store.display()
    );
    exits_naming(
        "anxin-server",
        &http_taken,
        dir.path(),
        taken,
        "http.listen",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_press_against_no_gateway_gives_up_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    // Something listens, but it is not an Anxin gateway (it never answers).
    let (_held, port) = hold_a_port();
    let address = format!("127.0.0.1:{port}");
    let mut press = Sim::run(
        dir.path(),
        &address,
        &["press", "--device", "btn-1", "--stored-timeout-secs", "2"],
    );
    let code = press.proc.wait_exit(Duration::from_secs(10)).await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "press exited with {code:?}"
    );
    let log = press.proc.log();
    assert!(
        log.contains("no `stored` ack") && log.contains(&address),
        "the error must name the gateway address:\n{log}"
    );
}
