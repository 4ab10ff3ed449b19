//! `retention`: steady telemetry with a short retention (issue 19). The
//! server's store and memory must level off once pruning keeps pace, the
//! SOS presses made meanwhile must not slow down when pruning starts, and
//! every alert with its event must still be there at the end.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anxin_tests::{Gateway, Server, TEST_ADMIN_TOKEN, free_port, sse::SseStream};

use crate::{
    procstat::rss_bytes,
    scenarios::{
        LOAD_LIMITS, device_list, latency_histogram, pid, print_latency, telemetry_load,
        watch_alerts,
    },
    traffic::{self, SentAt},
};

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub async fn retention(
    devices: usize,
    rate: f64,
    duration: u64,
    keep_secs: u64,
    presses_per_sample: usize,
    batch: usize,
    pause_ms: u64,
) -> anyhow::Result<()> {
    const SAMPLE: u64 = 30;
    let rounds = (duration / SAMPLE) as usize;
    let presses = rounds * presses_per_sample;
    println!(
        "== retention: {devices} devices offering {rate} P3 events/s for {duration} s, events kept {keep_secs} s \
         (pruned every 10 s, {batch} records per batch, {pause_ms} ms apart); \
         {presses_per_sample} SOS presses every {SAMPLE} s"
    );
    let dir = tempfile::tempdir()?;
    let keep = format!("events = \"{keep_secs}s\"");
    let batch = format!("batch = {batch}");
    let pause = format!("pause_ms = {pause_ms}");
    let server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[
            ("retention", keep.as_str()),
            ("retention", "interval_secs = 10"),
            ("retention", batch.as_str()),
            ("retention", pause.as_str()),
        ],
    )
    .await;
    let ids = device_list(&[("s-", devices), ("p0-", presses)]);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let max_connections = format!("max_connections = {}", devices + presses + 10);
    let mut extra = LOAD_LIMITS.to_vec();
    extra.push(("mqtt", max_connections.as_str()));
    let gateway = Gateway::start_with(dir.path(), server.grpc_port, &refs, &extra).await;
    let sent_at: SentAt = Default::default();
    let seen = Arc::new(Mutex::new(latency_histogram()));
    watch_alerts(
        SseStream::connect(&server.stream_url(TEST_ADMIN_TOKEN)).await,
        sent_at.clone(),
        seen.clone(),
    );
    let probers = traffic::probers(gateway.mqtt_port, "p0-", presses, &sent_at, None).await;
    let mut sim = telemetry_load(
        dir.path(),
        &gateway,
        "s-",
        devices,
        rate,
        duration,
        Some(60),
    );
    let store_dir = server
        .config_path()
        .parent()
        .expect("config in a directory")
        .join("server-data");
    let server_pid = pid(&server.proc);
    let started = Instant::now();
    let mut before_pruning = latency_histogram();
    let mut pruning = latency_histogram();
    let mut sizes = Vec::new();
    let mut rss = Vec::new();
    for round in 0..rounds {
        let due = Duration::from_secs(SAMPLE * (round as u64 + 1));
        tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
        let batch = &probers[round * presses_per_sample..(round + 1) * presses_per_sample];
        *seen.lock().unwrap() = latency_histogram();
        traffic::probe(batch, Duration::from_millis(100), &sent_at).await;
        crate::scenarios::settle(&seen, presses_per_sample).await;
        let round_latency = seen.lock().unwrap().clone();
        // Pruning starts once the oldest events are `keep_secs` old.
        if started.elapsed().as_secs() < keep_secs {
            before_pruning.add(&round_latency)?;
        } else {
            pruning.add(&round_latency)?;
        }
        let mb = dir_bytes(&store_dir) as f64 / 1e6;
        let resident = rss_bytes(server_pid).unwrap_or(0) as f64 / 1e6;
        let events = server
            .metric("anxin_server_retention_pruned_total{kind=\"event\"}")
            .await;
        println!(
            "  t={:>4.0}s server store {mb:>6.1} MB, RSS {resident:>5.0} MB, events pruned so far {events:>9.0}; \
             SOS → SSE max {:.1} ms",
            started.elapsed().as_secs_f64(),
            round_latency.max() as f64 / 1e3
        );
        sizes.push(mb);
        rss.push(resident);
    }
    let line = sim
        .line_starting("{", Duration::from_secs(duration + 400))
        .await;
    let summary: serde_json::Value = serde_json::from_str(&line)?;
    println!(
        "  load: stored {} of {} sent",
        summary["stored"], summary["sent"]
    );
    // Samples at 31 s, 61 s, …: the one at the run's midpoint starts the
    // last half (t = 301 s of 600).
    let half = (sizes.len() - 1) / 2;
    if let (Some(a), Some(b), Some(ra), Some(rb)) =
        (sizes.get(half), sizes.last(), rss.get(half), rss.last())
    {
        println!(
            "  over the last half: store {a:.1} → {b:.1} MB ({:+.1}%), RSS {ra:.0} → {rb:.0} MB ({:+.1}%)",
            (b / a - 1.0) * 100.0,
            (rb / ra - 1.0) * 100.0
        );
    }
    print_latency("SOS press → SSE before pruning started", &before_pruning);
    print_latency("SOS press → SSE while pruning", &pruning);

    // Every alert, and the SOS event that raised it, is still there.
    let (status, alerts) = server
        .call("GET", "/api/v1/alerts", TEST_ADMIN_TOKEN, None)
        .await;
    anyhow::ensure!(status == 200, "alerts: {status}");
    let alerts = alerts["alerts"].as_array().cloned().unwrap_or_default();
    let mut missing = 0;
    for alert in &alerts {
        let device = alert["deviceId"].as_str().unwrap_or_default();
        let (status, events) = server
            .call(
                "GET",
                &format!("/api/v1/devices/{device}/events"),
                TEST_ADMIN_TOKEN,
                None,
            )
            .await;
        let found = status == 200
            && events["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["kind"] == "EVENT_KIND_SOS" && e["alertId"] != "")
            });
        if !found {
            missing += 1;
        }
    }
    println!(
        "  alerts: {} of {presses} presses, {} without their SOS event",
        alerts.len(),
        missing
    );
    drop(probers);
    sim.proc.kill9();
    Ok(())
}
