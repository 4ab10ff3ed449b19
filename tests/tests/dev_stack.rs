//! The README's first command, run as a newcomer would on this machine kind
//! (where Mosquitto already holds 1883): `deploy/dev-stack.sh` picks free
//! ports, says which, and a simulated resident's SOS reaches the dispatcher
//! queue the banner points at. Then Ctrl-C (SIGINT) stops it all.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anxin_tests::{PATIENCE, binary, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_stack_starts_where_default_ports_are_taken_and_shows_an_sos() {
    // Build first (the script builds too, but must not count that here).
    binary("anxin-server");
    let state = tempfile::tempdir().unwrap();
    // Hold the default MQTT port if nothing else does, as Mosquitto does.
    let _held = std::net::TcpListener::bind("127.0.0.1:1883").ok();
    let (mut child, lines) = anxin_tests::spawn_dev_stack(state.path(), &[]);
    let mut seen = Vec::new();
    anxin_tests::dev_stack_until(&mut child, &lines, &mut seen, |l| l.contains("Alerts API:"));
    let banner = seen.join("\n");
    assert!(
        banner.contains("port 1883 (gateway mqtt) is taken; using"),
        "the script must say which port it chose instead of 1883:\n{banner}"
    );
    // `curl -H 'Authorization: Bearer TOKEN' http://127.0.0.1:PORT/api/v1/alerts`
    let api = seen.iter().find(|l| l.contains("Alerts API:")).unwrap();
    let token = api
        .split("Bearer ")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    let url = api.split_whitespace().last().unwrap().to_string();
    let client = reqwest::Client::new();
    let alert = eventually("btn-0001's SOS in the queue", PATIENCE, || {
        anxin_tests::listed_alert(&url, token, "btn-0001")
    })
    .await;
    assert_eq!(alert["kind"], "EVENT_KIND_SOS", "{alert}");

    // Ctrl-C: everything stops.
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let stopped = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            eprintln!(
                "dev-stack exited with {status} {:?} after Ctrl-C",
                stopped.elapsed()
            );
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "the stack did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("the server to be gone", Duration::from_secs(10), || async {
        client.get(&url).send().await.is_err().then_some(())
    })
    .await;
}
