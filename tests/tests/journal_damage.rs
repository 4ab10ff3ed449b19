//! A damaged journal never bricks the gateway and is never served silently
//! shorter (issues 17 and 30). Over 20 seeds the cleanly stopped gateway's
//! journal is damaged three ways — random bytes at random offsets, a
//! truncated file, a zeroed 4 KiB block — and every time the gateway comes
//! up, acks an SOS `stored`, the SOS reaches the server, the damage is
//! reported (log line, metric, a P1 GATEWAY_FAULT event at the server) and
//! the damaged files are kept aside. Over 20 more seeds the gateway is
//! SIGKILLed under load before the damage: then the damage is reported or
//! the journal holds at least every batch its seal vouched for. Salvage
//! must read at least 90% of the batches the damage did not touch.

use std::{
    collections::BTreeSet,
    io::{Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anxin_gateway::journal::{LANE_DIRS, SEAL_FILE, scan_records};
use anxin_tests::{Gateway, PATIENCE, Server, Sim, eventually, proxy::Proxy};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Seeds whose gateway is stopped cleanly before the damage.
const STOPPED_SEEDS: u64 = 20;
/// Seeds whose gateway is SIGKILLed under load before the damage.
const KILLED_SEEDS: u64 = 20;

/// Damages `file` the way seed picks; returns what was done and the byte
/// ranges it touched.
fn damage(file: &Path, seed: u64) -> (String, Vec<(u64, u64)>) {
    let len = std::fs::metadata(file).unwrap().len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    match seed % 3 {
        0 => {
            let mut spots = Vec::new();
            for _ in 0..4 {
                let at = rng.random_range(0..len.saturating_sub(16).max(1));
                let bytes: [u8; 16] = rng.random();
                f.seek(SeekFrom::Start(at)).unwrap();
                f.write_all(&bytes).unwrap();
                spots.push((at, at + 16));
            }
            let at: Vec<u64> = spots.iter().map(|s| s.0).collect();
            (format!("16 random bytes at {at:?} of {len}"), spots)
        }
        1 => {
            let to = rng.random_range(0..len);
            f.set_len(to).unwrap();
            (
                format!("truncated from {len} to {to}"),
                vec![(to, u64::MAX)],
            )
        }
        _ => {
            let blocks = (len / 4096).max(1);
            let at = rng.random_range(0..blocks) * 4096;
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&[0u8; 4096]).unwrap();
            (
                format!("zeroed 4 KiB at {at} of {len}"),
                vec![(at, at + 4096)],
            )
        }
    }
}

/// The seal's high-water marks, as the test reads the file itself.
fn seal_marks(journal: &Path) -> Option<[u64; 2]> {
    let text = std::fs::read_to_string(journal.join(SEAL_FILE)).ok()?;
    let mut parts = text.split_whitespace().skip(1);
    Some([parts.next()?.parse().ok()?, parts.next()?.parse().ok()?])
}

/// What the journal's raw files hold before the damage: every intact
/// record, by lane.
struct Before {
    spans: Vec<(usize, anxin_gateway::journal::RecordSpan)>,
    seal: Option<[u64; 2]>,
}

impl Before {
    fn read(journal: &Path) -> Self {
        let mut spans = Vec::new();
        for (lane, name) in LANE_DIRS.iter().enumerate() {
            let (found, _) = scan_records(&journal.join(name)).unwrap();
            spans.extend(found.into_iter().map(|s| (lane, s)));
        }
        Self {
            spans,
            seal: seal_marks(journal),
        }
    }

    /// Distinct batches with at least one copy the damage did not touch.
    fn untouched(&self, file: &Path, ranges: &[(u64, u64)]) -> u64 {
        let mut keys = BTreeSet::new();
        for (lane, span) in &self.spans {
            let end = span.offset + span.len;
            let touched = span.file == file
                && ranges
                    .iter()
                    .any(|(from, to)| span.offset < *to && *from < end);
            if !touched {
                keys.insert((*lane, span.priority, span.seq));
            }
        }
        keys.len() as u64
    }

    /// Events in the batches the seal vouched for.
    fn sealed_events(&self) -> u64 {
        let Some(marks) = self.seal else { return 0 };
        let mut seen = BTreeSet::new();
        self.spans
            .iter()
            .filter(|(lane, s)| s.seq <= marks[*lane] && seen.insert((*lane, s.priority, s.seq)))
            .map(|(_, s)| u64::from(s.events))
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_never_bricks_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let proxy = Proxy::start(server.grpc_port).await;
    let (mut untouched_total, mut salvaged_total) = (0u64, 0u64);
    let mut reports_expected = 0;
    let mut killed_detected = 0;
    let mut slowest = Duration::ZERO;
    for seed in 0..STOPPED_SEEDS + KILLED_SEEDS {
        let killed = seed >= STOPPED_SEEDS;
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
        // Events pending in the journal: the server is away.
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
                if killed { "4" } else { "1" },
                "--mix",
                "p1=0.1,p3=0.9",
            ],
        );
        let journal = gdir.join("journal");
        let stop = if !killed {
            fill.line_starting("load ", PATIENCE).await;
            assert!(gateway.journal_depth().await > 100);
            gateway.proc.terminate();
            assert_eq!(gateway.proc.wait_exit(PATIENCE).await, Some(0));
            "stopped"
        } else {
            // Killed under load, once the seal vouches for a good part of
            // what is pending.
            eventually("the journal to fill and be sealed", PATIENCE, || async {
                (gateway.journal_depth().await > 400
                    && Before::read(&journal).sealed_events() > 200)
                    .then_some(())
            })
            .await;
            gateway.proc.kill9();
            "killed under load"
        };
        drop(fill);

        let before = Before::read(&journal);
        // Mostly the bulk lane (most of what is pending); every fourth seed
        // the alarm lane.
        let lane = if seed % 4 == 3 { 0 } else { 1 };
        let file: PathBuf = journal.join(LANE_DIRS[lane]).join("db");
        let (what, ranges) = damage(&file, seed);
        let how = format!("{stop}, {} lane: {what}", LANE_DIRS[lane]);
        let untouched = before.untouched(&file, &ranges);

        let started = Instant::now();
        gateway.restart().await;
        let depth_at_start = gateway.journal_depth().await;
        Sim::press_until_stored(&gdir, &gateway.mqtt(), &button).await;
        let took = started.elapsed();
        slowest = slowest.max(took);
        // The goal is 1 s (printed below and in the note); the
        // bound here only catches a gateway that does not serve at all.
        assert!(
            took <= Duration::from_secs(10),
            "seed {seed} ({how}): SOS stored {took:?} after start"
        );
        let log = gateway.proc.log();
        let detected = log.contains("journal damaged");
        if !detected {
            // Whole, or at least never shorter than its seal.
            assert!(
                !killed || depth_at_start >= before.sealed_events(),
                "seed {seed} ({how}): opened with {depth_at_start} events, the seal vouched for {}, and no damage was reported:\n{log}",
                before.sealed_events()
            );
            assert!(
                killed,
                "seed {seed} ({how}): no damage report in the log:\n{log}"
            );
            proxy.restore();
            eventually("the SOS at the server", PATIENCE, || async {
                (server.alerts_for(&button).await.len() == 1).then_some(())
            })
            .await;
            eprintln!(
                "seed {seed}: {how}; SOS stored {took:?} after start; journal whole ({depth_at_start} events, {} sealed)",
                before.sealed_events()
            );
            drop(gateway);
            continue;
        }
        killed_detected += u64::from(killed);
        assert_eq!(
            gateway.metric("anxin_gateway_journal_damaged_total").await,
            1.0,
            "seed {seed} ({how})"
        );
        let salvaged = gateway
            .metric("anxin_gateway_journal_salvaged_batches")
            .await as u64;
        untouched_total += untouched;
        salvaged_total += salvaged.min(untouched);
        let kept: Vec<_> = std::fs::read_dir(&journal)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("damaged-"))
            .collect();
        assert_eq!(kept.len(), 1, "seed {seed}: damaged files kept aside");
        assert!(
            kept[0].path().join(LANE_DIRS[lane]).join("db").exists(),
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
        eprintln!(
            "seed {seed}: {how}; SOS stored {took:?} after start; {salvaged} of {untouched} untouched batches salvaged; report:{report}"
        );
        drop(gateway);
    }
    let ratio = salvaged_total as f64 / untouched_total.max(1) as f64;
    eprintln!(
        "salvaged {salvaged_total} of {untouched_total} batches the damage did not touch ({:.1}%); damage reported after SIGKILL: {killed_detected} of {KILLED_SEEDS} (the rest opened whole); slowest SOS stored after start: {slowest:?}",
        ratio * 100.0
    );
    assert!(
        ratio >= 0.9,
        "salvage read {salvaged_total} of {untouched_total} untouched batches"
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
