//! A damaged journal never bricks the gateway (issue 17). Over 20 seeds the
//! stopped gateway's journal is damaged three ways — random bytes at random
//! offsets, a truncated file, a zeroed 4 KiB block — and every time the
//! gateway comes up, acks an SOS `stored` within 10 s of its start, the SOS
//! reaches the server, the damage is reported (log line, metric, a P1
//! GATEWAY_FAULT event at the server) and the damaged files are kept aside.

use std::{
    io::{Seek, SeekFrom, Write},
    path::Path,
    time::{Duration, Instant},
};

use anxin_tests::{Gateway, PATIENCE, Server, Sim, eventually, proxy::Proxy};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Seeds whose gateway is stopped cleanly before the damage: the contract.
const SEEDS: u64 = 20;
/// Further seeds whose gateway is SIGKILLed instead: without the clean
/// shutdown's digest only sled's own checks can tell, and sled opens a log
/// damaged in its tail as if a write had been torn. There the gateway must
/// still come up and serve; how many damages were noticed is printed.
const KILLED_SEEDS: u64 = 10;

/// Damages sled's log file (`db`) the way seed picks.
fn damage(journal: &Path, seed: u64) -> String {
    let file = journal.join("db");
    let len = std::fs::metadata(&file).unwrap().len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    match seed % 3 {
        0 => {
            let mut spots = Vec::new();
            for _ in 0..4 {
                let at = rng.random_range(0..len.saturating_sub(16).max(1));
                let bytes: [u8; 16] = rng.random();
                f.seek(SeekFrom::Start(at)).unwrap();
                f.write_all(&bytes).unwrap();
                spots.push(at);
            }
            format!("16 random bytes at {spots:?} of {len}")
        }
        1 => {
            let to = rng.random_range(0..len);
            f.set_len(to).unwrap();
            format!("truncated from {len} to {to}")
        }
        _ => {
            let blocks = (len / 4096).max(1);
            let at = rng.random_range(0..blocks) * 4096;
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&[0u8; 4096]).unwrap();
            format!("zeroed 4 KiB at {at} of {len}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_never_bricks_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let proxy = Proxy::start(server.grpc_port).await;
    let mut salvaged_total = 0.0;
    let mut reports_expected = 0;
    let mut killed_detected = 0;
    for seed in 0..SEEDS + KILLED_SEEDS {
        let killed = seed >= SEEDS;
        let gdir = dir.path().join(format!("seed-{seed}"));
        std::fs::create_dir_all(&gdir).unwrap();
        let button = format!("btn-{seed:02}");
        let devices = [
            "meter-00000",
            "meter-00001",
            "meter-00002",
            "meter-00003",
            "meter-00004",
            button.as_str(),
        ];
        proxy.cut();
        let mut gateway = Gateway::start_routed(
            &gdir,
            &proxy.url(),
            &devices,
            &[
                ("limits", "device_rate_per_sec = 1000.0"),
                ("limits", "device_burst = 1000"),
            ],
        )
        .await;
        // Entries pending in the journal: the server is away.
        let mut fill = Sim::run(
            &gdir,
            &gateway.mqtt(),
            &[
                "load",
                "--devices",
                "5",
                "--prefix",
                "meter-",
                "--rate",
                "400",
                "--duration",
                "1",
                "--mix",
                "p1=0.1,p3=0.9",
            ],
        );
        fill.line_starting("load ", PATIENCE).await;
        assert!(gateway.journal_depth().await > 100);
        let stop = if !killed {
            gateway.proc.terminate();
            assert_eq!(gateway.proc.wait_exit(PATIENCE).await, Some(0));
            "stopped"
        } else {
            // Wait for the journal flush of the last round to be on disk.
            tokio::time::sleep(Duration::from_millis(300)).await;
            gateway.proc.kill9();
            "killed"
        };

        let how = format!("{stop}, {}", damage(&gdir.join("journal"), seed));
        let started = Instant::now();
        gateway.restart().await;
        Sim::press_until_stored(&gdir, &gateway.mqtt(), &button).await;
        let took = started.elapsed();
        assert!(
            took <= Duration::from_secs(10),
            "seed {seed} ({how}): SOS stored {took:?} after start"
        );
        let log = gateway.proc.log();
        let detected = log.contains("journal damaged");
        if killed {
            proxy.restore();
            eventually("the SOS at the server", PATIENCE, || async {
                (server.alerts_for(&button).await.len() == 1).then_some(())
            })
            .await;
            killed_detected += u64::from(detected);
            eprintln!(
                "seed {seed}: {how}; SOS stored {took:?} after start; damage noticed: {detected}"
            );
            if detected {
                reports_expected += 1;
            }
            drop(gateway);
            continue;
        }
        assert!(
            detected,
            "seed {seed} ({how}): no damage report in the log:\n{log}"
        );
        assert_eq!(
            gateway.metric("anxin_gateway_journal_damaged_total").await,
            1.0,
            "seed {seed} ({how})"
        );
        salvaged_total += gateway
            .metric("anxin_gateway_journal_salvaged_entries")
            .await;
        let kept: Vec<_> = std::fs::read_dir(gdir.join("journal"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("damaged-"))
            .collect();
        assert_eq!(kept.len(), 1, "seed {seed}: damaged files kept aside");
        assert!(
            kept[0].path().join("db").exists(),
            "seed {seed}: the damaged log is kept"
        );

        reports_expected += 1;
        proxy.restore();
        eventually("the SOS at the server", PATIENCE, || async {
            (server.alerts_for(&button).await.len() == 1).then_some(())
        })
        .await;
        eventually("the damage report at the server", PATIENCE, || async {
            let reports = server.events_for("gw-test").await;
            (reports.len() as u64 == reports_expected).then_some(reports)
        })
        .await;
        let report = log
            .lines()
            .find(|l| l.contains("journal damaged"))
            .and_then(|l| l.split("journal damaged").nth(1))
            .unwrap_or_default()
            .to_string();
        eprintln!("seed {seed}: {how}; SOS stored {took:?} after start; report:{report}");
        drop(gateway);
    }
    eprintln!(
        "entries salvaged over {SEEDS} stopped seeds: {salvaged_total}; damage noticed after SIGKILL: {killed_detected} of {KILLED_SEEDS}"
    );
    eventually("every damage report at the server", PATIENCE, || async {
        (server.events_for("gw-test").await.len() as u64 == reports_expected).then_some(())
    })
    .await;
    let reports = server.events_for("gw-test").await;
    assert!(
        reports
            .iter()
            .all(|r| r.to_string().contains("GATEWAY_FAULT")
                && r.to_string().contains("journal damaged")),
        "{reports:?}"
    );
    // A person sees it: the gateway's fault is an alert in the queue, the
    // report in its notes.
    let alerts = server.alerts_for("gw-test").await;
    assert!(
        alerts
            .iter()
            .any(|a| a["kind"] == "EVENT_KIND_GATEWAY_FAULT"
                && a.to_string().contains("entries salvaged")),
        "{alerts:?}"
    );
}
