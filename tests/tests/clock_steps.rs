//! Time that cannot go backwards for a person waiting (issue 17): the
//! server's wall clock steps back an hour, then forward an hour, while
//! offers are pending, and once more while the server is down. Every offer
//! escalates at its deadline by elapsed time (±2 s), exactly once.
//!
//! The clock is stepped for real with Debian's libfaketime (preloaded into
//! the server only; its monotonic and boot clocks are left alone, as an NTP
//! or RTC step leaves them).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anxin_tests::{Gateway, PATIENCE, Server, Sim, eventually, free_port, host::skip};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const DEADLINE: Duration = Duration::from_secs(10);
const TOLERANCE: Duration = Duration::from_secs(2);

/// Sets the server's wall clock to real time plus `offset` (atomically:
/// libfaketime rereads the file on every clock call).
fn set_clock(file: &Path, offset: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset} \n")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

async fn offered(server: &Server, device: &str) -> (String, Instant) {
    eventually("the alert offered", PATIENCE, || async {
        server
            .alerts_for(device)
            .await
            .into_iter()
            .find(|a| a["state"] == "ALERT_STATE_OFFERED")
            .map(|a| (a["id"].as_str().unwrap().to_string(), Instant::now()))
    })
    .await
}

async fn level(server: &Server, id: &str) -> u64 {
    server.alert(id).await["escalationLevel"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits for the first escalation and checks when it came and that it came
/// once.
async fn escalates_on_time(server: &Server, id: &str, offered_at: Instant, what: &str) {
    let escalated_at = eventually("the offer to escalate", PATIENCE, || async {
        (level(server, id).await >= 1).then(Instant::now)
    })
    .await;
    let after = escalated_at - offered_at;
    eprintln!("{what}: escalated {after:?} after the offer (deadline {DEADLINE:?})");
    assert!(
        after + TOLERANCE >= DEADLINE && after <= DEADLINE + TOLERANCE,
        "{what}: escalated {after:?} after the offer; the deadline is {DEADLINE:?}"
    );
    // Exactly once: the next step is a full deadline later.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        level(server, id).await,
        1,
        "{what}: escalated more than once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_escalate_by_elapsed_time_whatever_the_wall_clock_does() {
    if !Path::new(LIBFAKETIME).exists() {
        return skip(
            "clock_steps",
            "libfaketime is not installed (apt-get install faketime)",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("faketime");
    set_clock(&clock, "+0");
    let clock_path = clock.to_str().unwrap().to_string();
    let mut server = Server::start_configured(
        dir.path(),
        free_port(),
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &clock_path),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
        &[("routing", "p0_deadline_secs = 10")],
    )
    .await;
    server.add_community("c-a").await;
    for (resident, device) in [("r-1", "btn-1"), ("r-2", "btn-2"), ("r-3", "btn-3")] {
        server.add_resident(resident, "c-a", &[device]).await;
    }
    for (id, role) in [
        ("carer-1", "carer"),
        ("carer-2", "nurse"),
        ("sup-1", "supervisor"),
    ] {
        server
            .add_staff(id, role, &["c-a"], serde_json::json!({}))
            .await;
    }
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["btn-1", "btn-2", "btn-3"]).await;

    // Back one hour, two seconds into the answer window.
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-1").await;
    let (id, at) = offered(&server, "btn-1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_clock(&clock, "-3600");
    escalates_on_time(&server, &id, at, "clock stepped back 1 h").await;
    let back = "anxin_server_clock_steps_total{direction=\"back\"}";
    assert_eq!(server.metric(back).await, 1.0, "the step was counted");

    // Forward one hour (from -1 h back to true time).
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-2").await;
    let (id, at) = offered(&server, "btn-2").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_clock(&clock, "+0");
    escalates_on_time(&server, &id, at, "clock stepped forward 1 h").await;
    let forward = "anxin_server_clock_steps_total{direction=\"forward\"}";
    assert_eq!(server.metric(forward).await, 1.0, "the step was counted");

    // Forward one hour while the server is down (killed mid-window).
    Sim::press_until_stored(dir.path(), &gateway.mqtt(), "btn-3").await;
    let (id, at) = offered(&server, "btn-3").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.proc.kill9();
    set_clock(&clock, "+3600");
    server.restart().await;
    escalates_on_time(
        &server,
        &id,
        at,
        "clock stepped forward 1 h across a restart",
    )
    .await;

    assert_eq!(
        server.metric(forward).await,
        1.0,
        "the step at start-up was counted"
    );
    assert!(server.proc.log().contains("while the server was stopped"));
}
