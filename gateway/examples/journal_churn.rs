//! Measures the journal's disk use under long insert/delete churn (sled does
//! not reclaim space well under that pattern).
//!
//! `cargo run --release -p anxin-gateway --example journal_churn -- 1000000 [backlog]`
//! appends and deletes that many events, keeping `backlog` (default 100) in
//! the journal, flushing every 100 appends (a busy gateway's group commit),
//! and prints the files' size and the process's RSS at checkpoints.

use std::{path::Path, time::Instant};

use anxin_gateway::journal;
use anxin_proto::{DeviceEvent, EventKind};

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// This process's resident memory (VmRSS), in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let cycles: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let backlog: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader) = journal::open(dir.path(), journal::Quota::unlimited()).unwrap();
    let started = Instant::now();
    println!("cycles,elapsed_s,files_bytes,live_events,rss_bytes");
    for i in 1..=cycles {
        let event = DeviceEvent {
            device_id: format!("dev-{:05}", i % 10_000),
            seq: i,
            kind: EventKind::Telemetry as i32,
            device_time_ms: 1_795_000_000_000 + i as i64,
            battery_pct: 80,
            ..Default::default()
        };
        writer.append(&event, 0).unwrap();
        if i > backlog {
            let oldest = reader
                .next_unsent(&mut journal::Cursor::default(), 1)
                .unwrap()
                .remove(0);
            let ev = oldest.event.event.unwrap();
            reader.remove(&ev.device_id, ev.seq).unwrap();
        }
        if i % 100 == 0 {
            writer.flush().await.unwrap();
        }
        if i % (cycles / 10).max(1) == 0 {
            writer.flush().await.unwrap();
            println!(
                "{i},{:.1},{},{},{}",
                started.elapsed().as_secs_f64(),
                dir_size(dir.path()),
                reader.depth().iter().sum::<u64>(),
                rss()
            );
        }
    }
}
