//! A damaged server store (issue 19). A sled store with 3,000 telemetry
//! events and 20 alerts is written, sealed and closed; then, over 20 seeds,
//! four random bytes are written at four random offsets of each of its
//! files (odd seeds: of its log file only).
//! Every time: `anxin-server store check` and the server itself never
//! panic; the server either starts and serves every event and alert, or
//! refuses to start with an error that names `store check`, and then
//! `store check` reports the damage too (exit 1).

use std::{
    io::{Seek, SeekFrom, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anxin_proto::{
    DeviceEvent, EventKind,
    v1::{AlertState, UplinkEvent},
};
use anxin_server::domain::incidents::{IncidentPolicy, Origin};
use anxin_tests::{TEST_ADMIN_TOKEN, binary, free_port};
use rand::{Rng, SeedableRng, rngs::StdRng};

const SEEDS: u64 = 20;
const SENSORS: usize = 30;
const EVENTS_PER_SENSOR: u64 = 100;
const ALERTS: usize = 20;

fn uplink(device: &str, seq: u64, kind: EventKind) -> UplinkEvent {
    UplinkEvent {
        event: Some(DeviceEvent {
            device_id: device.into(),
            seq,
            kind: kind as i32,
            ..Default::default()
        }),
        stored_ms: 1,
    }
}

/// The store every seed starts from: written through the server's own
/// store code, flushed and sealed as a server that stopped cleanly leaves it.
async fn write_store(path: &Path) {
    let store = anxin_server::store::open_sled(path).unwrap();
    let now = anxin_proto::now_ms();
    for s in 0..SENSORS {
        let device = format!("sensor-{s:02}");
        let batch: Vec<_> = (1..=EVENTS_PER_SENSOR)
            .map(|seq| uplink(&device, seq, EventKind::Telemetry))
            .collect();
        for chunk in batch.chunks(25) {
            store.commit_plain_events("gw-test", chunk, now).unwrap();
        }
    }
    let policy = IncidentPolicy {
        window_ms: 600_000,
        cancel_grace_ms: 60_000,
    };
    for a in 0..ALERTS {
        let origin = Origin {
            resident_id: format!("r-{a:02}"),
            community_id: "c-1".into(),
            ..Default::default()
        };
        store
            .commit_event(
                "gw-test",
                &uplink(&format!("button-{a:02}"), 1, EventKind::Sos),
                now,
                &origin,
                &policy,
            )
            .unwrap();
    }
    store.flush().await.unwrap();
    store.seal().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Four random bytes at a random offset, four times, in every file that
/// `which` picks.
fn damage(dir: &Path, which: &dyn Fn(&str) -> bool, rng: &mut StdRng, spots: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            damage(&entry.path(), which, rng, spots);
            continue;
        }
        if !which(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let len = entry.metadata().unwrap().len();
        if len == 0 {
            continue;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(entry.path())
            .unwrap();
        for _ in 0..4 {
            let at = rng.random_range(0..len.saturating_sub(4).max(1));
            let bytes: [u8; 4] = rng.random();
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&bytes).unwrap();
            spots.push(format!("{}@{at}", entry.file_name().to_string_lossy()));
        }
    }
}

fn config(dir: &Path, store: &Path) -> std::path::PathBuf {
    let path = dir.join("server.toml");
    std::fs::write(
        &path,
        format!(
            "[grpc]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n\
             [store]\npath = \"{}\"\n[auth]\nadmin_token = \"{TEST_ADMIN_TOKEN}\"\n",
            free_port(),
            free_port(),
            store.display()
        ),
    )
    .unwrap();
    path
}

fn http_of(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let listen = text
        .lines()
        .filter(|l| l.starts_with("listen"))
        .nth(1)
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap()
        .to_string();
    format!("http://{listen}")
}

/// `store check`: its exit code and output; never a panic.
fn store_check(config: &Path) -> (i32, String) {
    let out = Command::new(binary("anxin-server"))
        .arg("--config")
        .arg(config)
        .args(["store", "check"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "store check panicked:\n{text}");
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("store check killed: {text}"));
    assert!(code == 0 || code == 1, "store check exit {code}:\n{text}");
    (code, text)
}

enum Start {
    Served,
    Refused(String),
}

/// Starts the server on the store: it serves everything, or it refuses.
async fn start(config: &Path, log: &Path) -> Start {
    let mut child = Command::new(binary("anxin-server"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::from(std::fs::File::create(log).unwrap()))
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().append(true).open(log).unwrap(),
        ))
        .spawn()
        .unwrap();
    let base = http_of(config);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let outcome = loop {
        if let Some(status) = child.try_wait().unwrap() {
            let text = std::fs::read_to_string(log).unwrap();
            assert!(!text.contains("panicked"), "the server panicked:\n{text}");
            assert!(
                !status.success() && status.code().is_some(),
                "the server stopped with {status} on a damaged store:\n{text}"
            );
            assert!(
                text.contains("store check"),
                "the server refused the store without naming `store check`:\n{text}"
            );
            break Start::Refused(text);
        }
        let ready = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200);
        if ready {
            break Start::Served;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server neither served nor refused within 60 s:\n{}",
            std::fs::read_to_string(log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Start::Served = outcome {
        let get = |path: String| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let response = client
                    .get(format!("{base}{path}"))
                    .bearer_auth(TEST_ADMIN_TOKEN)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200, "GET {path}");
                response.json::<serde_json::Value>().await.unwrap()
            }
        };
        let alerts = get("/api/v1/alerts".into()).await;
        let alerts = alerts["alerts"].as_array().unwrap();
        assert_eq!(
            alerts.len(),
            ALERTS,
            "the server started on a damaged store with alerts missing"
        );
        assert!(
            alerts
                .iter()
                .all(|a| a["state"] != AlertState::Unspecified.as_str_name())
        );
        for s in 0..SENSORS {
            let events = get(format!("/api/v1/devices/sensor-{s:02}/events")).await;
            assert_eq!(
                events["events"].as_array().unwrap().len() as u64,
                EVENTS_PER_SENSOR,
                "the server started on a damaged store with sensor-{s:02}'s events missing"
            );
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_with_a_clear_error_or_served_whole_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    write_store(&pristine).await;
    // sled lets go of its file lock a moment after the store is dropped.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Undamaged, the store checks clean and serves everything.
    let work = dir.path().join("undamaged");
    copy_dir(&pristine, &work);
    let cfg = config(dir.path(), &work);
    let (code, text) = store_check(&cfg);
    assert_eq!(code, 0, "an undamaged store does not check clean:\n{text}");
    assert!(matches!(
        start(&cfg, &dir.path().join("undamaged.log")).await,
        Start::Served
    ));

    let (mut served, mut refused) = (0, 0);
    for seed in 0..SEEDS {
        let work = dir.path().join(format!("seed-{seed}"));
        copy_dir(&pristine, &work);
        // Even seeds: every file (sled's `conf` has a checksum, so those are
        // mostly refused there). Odd seeds: only the log `db`, where sled
        // itself would take damage for a torn tail and the seal must tell.
        let every_file = |_: &str| true;
        let log_only = |name: &str| name == "db";
        let which: &dyn Fn(&str) -> bool = if seed % 2 == 0 {
            &every_file
        } else {
            &log_only
        };
        let mut spots = Vec::new();
        damage(&work, which, &mut StdRng::seed_from_u64(seed), &mut spots);
        let seed_dir = dir.path().join(format!("seed-{seed}-run"));
        std::fs::create_dir_all(&seed_dir).unwrap();
        let cfg = config(&seed_dir, &work);
        let (check_code, check_text) = store_check(&cfg);
        match start(&cfg, &seed_dir.join("server.log")).await {
            Start::Served => {
                served += 1;
                println!("seed {seed}: served whole");
            }
            Start::Refused(why) => {
                refused += 1;
                let reason = why
                    .lines()
                    .find(|l| l.contains("the store is damaged"))
                    .unwrap_or_default()
                    .to_string();
                println!(
                    "seed {seed}: refused: {}",
                    reason.chars().take(160).collect::<String>()
                );
                assert_eq!(
                    check_code, 1,
                    "seed {seed} ({spots:?}): the server refused the store but store check passed it:\n{check_text}\nserver:\n{why}"
                );
            }
        }
        std::fs::remove_dir_all(&work).unwrap();
    }
    println!(
        "{SEEDS} damaged stores: {served} served whole, {refused} refused with the clear error"
    );
}
