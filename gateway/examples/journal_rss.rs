//! Memory of a journal holding many pending events: RSS after writing them
//! in batches, and after reopening (the index rebuilt). `cargo run --release
//! -p anxin-gateway --example journal_rss -- 1000000`.

use anxin_gateway::journal::{Quota, open};
use anxin_proto::{DeviceEvent, EventKind};

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::main]
async fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let per_batch: u64 = std::env::var("PER_BATCH")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let tmp = tempfile::tempdir().unwrap();
    let dir_path = std::env::var("ANXIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    struct D(std::path::PathBuf);
    impl D {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    let dir = D(dir_path);
    println!("start: RSS {:.1} MB", rss_mb());
    if std::env::args().nth(2).as_deref() != Some("reopen-only") {
        let (writer, _) = open(dir.path(), Quota::unlimited()).unwrap();
        let mut seq = 0;
        while seq < events {
            let mut staging = writer.stage();
            for _ in 0..per_batch {
                seq += 1;
                let event = DeviceEvent {
                    device_id: format!("meter-{:05}", seq % 50),
                    seq,
                    kind: EventKind::Telemetry as i32,
                    device_time_ms: 1_800_000_000_000,
                    note: "t=21.5 hr=72".into(),
                    ..Default::default()
                };
                staging.add(&event, 1_800_000_000_000).unwrap();
            }
            staging.commit().unwrap();
        }
        writer.flush().await.unwrap();
        println!("{events} events written: RSS {:.1} MB", rss_mb());
    }
    println!("closed: RSS {:.1} MB", rss_mb());
    // A fresh process would not carry the writer's freed heap: run with
    // `reopen-only` against a kept directory to see that (ANXIN_DIR).
    let started = std::time::Instant::now();
    let (_, reader) = open(dir.path(), Quota::unlimited()).unwrap();
    println!(
        "reopened in {:?} with {} pending: RSS {:.1} MB",
        started.elapsed(),
        reader.depth().iter().sum::<u64>(),
        rss_mb()
    );
    // Drained as the uplink does it: reads of 2,048, acks by identity.
    let mut cursor = Default::default();
    let mut peak = rss_mb();
    loop {
        let sent = reader.next_unsent(&mut cursor, 2048).unwrap();
        if sent.is_empty() {
            break;
        }
        let ids: Vec<(&str, u64)> = sent
            .iter()
            .map(|e| {
                let ev = e.event.event.as_ref().unwrap();
                (ev.device_id.as_str(), ev.seq)
            })
            .collect();
        reader.remove_many(&ids).unwrap();
        peak = peak.max(rss_mb());
    }
    println!(
        "drained in {:?}: peak RSS {peak:.1} MB, now {:.1} MB",
        started.elapsed(),
        rss_mb()
    );
}
