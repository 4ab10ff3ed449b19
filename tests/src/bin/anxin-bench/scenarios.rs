//! The four scenarios. Each prints a block of figures; the comparisons with
//! Mosquitto print ours / Mosquitto's.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anxin_proto::{
    EventKind, now_ms,
    v1::{GatewayMessage, Hello, gateway_message, uplink_client::UplinkClient},
};
use anxin_tests::{
    Gateway, Server, Sim, TEST_ADMIN_TOKEN, binary, free_port, grpc::Bearer, sse::SseStream,
};
use hdrhistogram::Histogram;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    mosquitto::Mosquitto,
    procstat::{Usage, Watch, rss_bytes},
    traffic::{self, SentAt},
};

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpus} cores ({model})")
}

/// Gateway limits lifted for load: the simulator's few devices each send
/// far more than a real device's rate limit allows.
pub(crate) const LOAD_LIMITS: [(&str, &str); 2] = [
    ("limits", "device_rate_per_sec = 1000000.0"),
    ("limits", "device_burst = 1000000"),
];

const P3_COMMITTED: &str = "anxin_server_events_committed_total{priority=\"P3\"}";

pub(crate) fn pid(proc: &anxin_tests::Proc) -> u32 {
    proc.pid().expect("process is running")
}

fn print_usage(usage: &[Usage]) {
    for u in usage {
        println!("  {u}");
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

pub(crate) fn print_latency(label: &str, h: &Histogram<u64>) {
    println!(
        "  {label}: n={} p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max())
    );
}

pub(crate) fn device_list(groups: &[(&str, usize)]) -> Vec<String> {
    groups
        .iter()
        .flat_map(|(prefix, n)| (0..*n).map(|i| traffic::device_id(prefix, i)))
        .collect()
}

/// `anxin-sim load`: `devices` devices `prefix00000…` offering `rate` P3
/// events/s in all for `duration` s, then waiting up to `drain` s for their
/// acks; prints its JSON summary last.
pub(crate) fn telemetry_load(
    dir: &std::path::Path,
    gateway: &Gateway,
    prefix: &str,
    devices: usize,
    rate: f64,
    duration: u64,
    drain: Option<u64>,
) -> Sim {
    let (devices, rate, duration) = (devices.to_string(), rate.to_string(), duration.to_string());
    let drain = drain.map(|d| d.to_string());
    let mut args = vec![
        "--json-output",
        "load",
        "--devices",
        &devices,
        "--prefix",
        prefix,
        "--rate",
        &rate,
        "--duration",
        &duration,
        "--mix",
        "p3=1",
    ];
    if let Some(drain) = &drain {
        args.extend(["--drain", drain.as_str()]);
    }
    Sim::run(dir, &gateway.mqtt(), &args)
}

pub(crate) async fn wait_for(
    what: &str,
    within: Duration,
    mut done: impl AsyncFnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("gave up waiting for {what} after {within:?}");
    false
}

/// One server on the engine `ANXIN_TEST_STORE` names, or `replicas`
/// servers over one scratch PostgreSQL database. The gateway uses the
/// first; watchers the last, so their figures cross replicas.
async fn servers(dir: &std::path::Path, replicas: usize) -> Vec<Server> {
    if replicas <= 1 {
        println!("  store: {:?}, one server", anxin_tests::store_engine());
        return vec![Server::start_configured(dir, free_port(), &[], &[]).await];
    }
    println!(
        "  store: PostgreSQL, {replicas} replicas (gateway → the first, watchers on the last)"
    );
    let database = anxin_tests::scratch_database().await;
    let mut out = Vec::new();
    for i in 0..replicas {
        let home = dir.join(format!("r{i}"));
        std::fs::create_dir_all(&home).expect("replica directory");
        out.push(Server::start_replica(&home, &database, &[]).await);
    }
    out
}

// ---------------------------------------------------------------- throughput

pub async fn throughput(
    devices: usize,
    rate: f64,
    duration: u64,
    replicas: usize,
) -> anyhow::Result<()> {
    println!("== throughput: {devices} devices offering {rate} events/s of P3 for {duration} s");
    let dir = tempfile::tempdir()?;
    let mut servers = servers(dir.path(), replicas).await;
    let server = servers.remove(0);
    let ids = device_list(&[("l-", devices)]);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let gateway = Gateway::start_with(dir.path(), server.grpc_port, &refs, &LOAD_LIMITS).await;

    let started = Instant::now();
    let mut sim = telemetry_load(
        dir.path(),
        &gateway,
        "l-",
        devices,
        rate,
        duration,
        Some(300),
    );
    let watch = Watch::start(vec![
        ("anxin-gateway".into(), pid(&gateway.proc)),
        ("anxin-server".into(), pid(&server.proc)),
        ("anxin-sim".into(), pid(&sim.proc)),
    ]);
    let line = sim
        .line_starting("{", Duration::from_secs(duration + 400))
        .await;
    let summary: serde_json::Value = serde_json::from_str(&line)?;
    let stored = summary["stored"].as_u64().unwrap_or(0);
    // Through to the server: committed and flushed there.
    let mut committed = 0.0;
    wait_for(
        "the server to commit every stored event",
        Duration::from_secs(300),
        async || {
            committed = server.metric(P3_COMMITTED).await;
            committed >= stored as f64
        },
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let usage = watch.finish().await;
    let ours = committed / elapsed;
    let flushes = gateway
        .metric("anxin_gateway_journal_flushes_total{lane=\"bulk\"}")
        .await
        + gateway
            .metric("anxin_gateway_journal_flushes_total{lane=\"alarm\"}")
            .await;
    println!(
        "  sim: sent {} stored {} dropped {} (device outbox full) (stored-ack p50 {} ms, p99 {} ms), {:.0} stored/s at the gateway",
        summary["sent"],
        stored,
        summary["dropped"],
        summary["stored_latency_ms"]["p50"],
        summary["stored_latency_ms"]["p99"],
        summary["stored_per_sec"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  server: {committed} committed in {elapsed:.1} s from the first send: {ours:.0} events/s end to end"
    );
    println!(
        "  gateway: {flushes} journal flushes, {:.0} events per flush",
        stored as f64 / flushes.max(1.0)
    );
    print_usage(&usage);
    // The baseline gets the machine to itself.
    drop((sim, gateway, server, servers));

    let (theirs, usage) = mosquitto_throughput(devices, rate, duration).await?;
    println!("  mosquitto: {theirs:.0} events/s publisher → subscriber (QoS1, same payloads)");
    print_usage(&usage);
    println!("  ratio ours/mosquitto: {:.2}", ours / theirs);
    Ok(())
}

async fn mosquitto_throughput(
    devices: usize,
    rate: f64,
    duration: u64,
) -> anyhow::Result<(f64, Vec<Usage>)> {
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(dir.path()).await?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let _subscriber = traffic::connect(
        broker.port,
        "bench-sub",
        Some("anxin/v1/dev/+/event"),
        move |_, _| {
            counter.fetch_add(1, Ordering::Relaxed);
        },
    )
    .await;
    let watch = Watch::start(vec![("mosquitto".into(), pid(&broker.proc))]);
    let started = Instant::now();
    let sent = traffic::load(broker.port, devices, rate, Duration::from_secs(duration)).await;
    let mut last = (0, Instant::now());
    wait_for(
        "Mosquitto's subscriber to get everything",
        Duration::from_secs(60),
        async || {
            let now = received.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
            now >= sent
        },
    )
    .await;
    let usage = watch.finish().await;
    let got = received.load(Ordering::Relaxed);
    Ok((got as f64 / (last.1 - started).as_secs_f64(), usage))
}

// ------------------------------------------------------------------- latency

pub async fn latency(
    samples: usize,
    pace_ms: u64,
    load: f64,
    load_devices: usize,
    replicas: usize,
) -> anyhow::Result<()> {
    let pace = Duration::from_millis(pace_ms);
    println!(
        "== latency: {samples} P0 presses {pace_ms} ms apart, press → SSE; loaded run under {load} P3 events/s"
    );
    let dir = tempfile::tempdir()?;
    let mut servers = servers(dir.path(), replicas).await;
    let server = servers.remove(0);
    let watched = servers.last().unwrap_or(&server);
    let ids = device_list(&[("p0-", samples), ("q0-", samples), ("l-", load_devices)]);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let gateway = Gateway::start_with(dir.path(), server.grpc_port, &refs, &LOAD_LIMITS).await;

    let sent_at: SentAt = Default::default();
    let seen = Arc::new(Mutex::new(latency_histogram()));
    watch_alerts(
        SseStream::connect(&watched.stream_url(TEST_ADMIN_TOKEN)).await,
        sent_at.clone(),
        seen.clone(),
    );
    let acks = Arc::new(Mutex::new(latency_histogram()));
    let idle = traffic::probers(
        gateway.mqtt_port,
        "p0-",
        samples,
        &sent_at,
        Some(acks.clone()),
    )
    .await;
    let busy = traffic::probers(
        gateway.mqtt_port,
        "q0-",
        samples,
        &sent_at,
        Some(acks.clone()),
    )
    .await;

    traffic::probe(&idle, pace, &sent_at).await;
    settle(&seen, samples).await;
    let unloaded = std::mem::replace(&mut *seen.lock().unwrap(), latency_histogram());
    let unloaded_acks = std::mem::replace(&mut *acks.lock().unwrap(), latency_histogram());
    print_latency("ours, unloaded", &unloaded);
    print_latency("ours, unloaded, press → stored ack", &unloaded_acks);

    let run_for = (samples as u64 * pace_ms) / 1000 + 10;
    let mut sim = telemetry_load(
        dir.path(),
        &gateway,
        "l-",
        load_devices,
        load,
        run_for,
        Some(5),
    );
    let watch = Watch::start(vec![
        ("anxin-gateway".into(), pid(&gateway.proc)),
        ("anxin-server".into(), pid(&server.proc)),
    ]);
    // Let the load reach its rate before the first press.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = server.metric(P3_COMMITTED).await;
    let probing = Instant::now();
    traffic::probe(&busy, pace, &sent_at).await;
    settle(&seen, samples).await;
    let load_rate = (server.metric(P3_COMMITTED).await - before) / probing.elapsed().as_secs_f64();
    let usage = watch.finish().await;
    sim.proc.kill9();
    let loaded = std::mem::replace(&mut *seen.lock().unwrap(), latency_histogram());
    let loaded_acks = std::mem::replace(&mut *acks.lock().unwrap(), latency_histogram());
    print_latency(
        &format!("ours, under load ({load_rate:.0} P3 events/s reached the server meanwhile)"),
        &loaded,
    );
    print_latency("ours, under load, press → stored ack", &loaded_acks);
    print_usage(&usage);
    drop((gateway, server));

    let (m_unloaded, m_loaded) = mosquitto_latency(samples, pace, load, load_devices).await?;
    print_latency("mosquitto, unloaded", &m_unloaded);
    print_latency("mosquitto, under load", &m_loaded);
    for (label, ours, theirs) in [
        ("unloaded", &unloaded, &m_unloaded),
        ("under load", &loaded, &m_loaded),
    ] {
        println!(
            "  ratio ours/mosquitto {label}: p50 {:.1}, p99 {:.1}",
            ours.value_at_quantile(0.5) as f64 / theirs.value_at_quantile(0.5).max(1) as f64,
            ours.value_at_quantile(0.99) as f64 / theirs.value_at_quantile(0.99).max(1) as f64,
        );
    }
    Ok(())
}

/// Waits until `samples` latencies were recorded, or 30 s after the last.
pub(crate) async fn settle(seen: &Arc<Mutex<Histogram<u64>>>, samples: usize) {
    wait_for(
        "every probe to arrive",
        Duration::from_secs(30),
        async || seen.lock().unwrap().len() >= samples as u64,
    )
    .await;
}

async fn mosquitto_latency(
    samples: usize,
    pace: Duration,
    load: f64,
    load_devices: usize,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(dir.path()).await?;
    let sent_at: SentAt = Default::default();
    let seen = Arc::new(Mutex::new(latency_histogram()));
    let (at, hist) = (sent_at.clone(), seen.clone());
    let _subscriber = traffic::connect(
        broker.port,
        "bench-sub",
        Some("anxin/v1/dev/+/event"),
        move |topic, _| {
            let Some((device, _)) = anxin_proto::topics::parse_event(topic) else {
                return;
            };
            if let Some(sent) = at.lock().unwrap().remove(device) {
                hist.lock()
                    .unwrap()
                    .saturating_record((sent.elapsed().as_micros() as u64).max(1));
            }
        },
    )
    .await;
    let idle = traffic::probers(broker.port, "p0-", samples, &sent_at, None).await;
    let busy = traffic::probers(broker.port, "q0-", samples, &sent_at, None).await;
    traffic::probe(&idle, pace, &sent_at).await;
    settle(&seen, samples).await;
    let unloaded = std::mem::replace(&mut *seen.lock().unwrap(), latency_histogram());

    let run_for = pace * samples as u32 + Duration::from_secs(10);
    let port = broker.port;
    let loader =
        tokio::spawn(async move { traffic::load(port, load_devices, load, run_for).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    traffic::probe(&busy, pace, &sent_at).await;
    settle(&seen, samples).await;
    loader.abort();
    let loaded = std::mem::replace(&mut *seen.lock().unwrap(), latency_histogram());
    Ok((unloaded, loaded))
}

// --------------------------------------------------------------------- drain

pub async fn drain(events: u64, round: u64) -> anyhow::Result<()> {
    println!(
        "== drain: {events} P3 events ({round} per ingest round) and then one P0 queued during an outage"
    );
    let dir = tempfile::tempdir()?;
    let prefill = Instant::now();
    anxin_gateway_journal_prefill(&dir.path().join("journal"), events, round.max(1))?;
    println!(
        "  journal prefilled in {:.1} s",
        prefill.elapsed().as_secs_f64()
    );

    let grpc_port = free_port();
    let opened = Instant::now();
    let gateway = Gateway::start_with(dir.path(), grpc_port, &["p0-00000"], &[]).await;
    println!(
        "  gateway up with the backlog in {:.1} s (journal depth {})",
        opened.elapsed().as_secs_f64(),
        gateway.journal_depth().await
    );
    let watch = Watch::start(vec![("anxin-gateway".into(), pid(&gateway.proc))]);
    let back_ms = now_ms();
    let back = Instant::now();
    let server = Server::start_on(dir.path(), grpc_port, &[]).await;
    let mut committed = 0.0;
    wait_for(
        "the backlog to reach the server",
        Duration::from_secs(1800),
        async || {
            committed = server.metric(P3_COMMITTED).await;
            committed >= events as f64
        },
    )
    .await;
    let drained = back.elapsed().as_secs_f64();
    let usage = watch.finish().await;
    let p0 = server.events_for("p0-00000").await;
    let p0_after = p0
        .first()
        .and_then(|e| e["receivedMs"].as_str()?.parse::<i64>().ok())
        .map(|received| received - back_ms);
    println!(
        "  {committed} events committed {drained:.1} s after the server was started: {:.0} events/s",
        committed / drained
    );
    match p0_after {
        Some(ms) => {
            println!("  the P0 queued last reached the server {ms} ms after the server was started")
        }
        None => println!("  the P0 never reached the server"),
    }
    print_usage(&usage);
    Ok(())
}

/// Queues `events` P3 telemetry events from 1,000 devices, `round` per
/// ingest round, and then one SOS in a journal, as an outage would leave it.
fn anxin_gateway_journal_prefill(
    path: &std::path::Path,
    events: u64,
    round: u64,
) -> anyhow::Result<()> {
    use anxin_gateway::journal;
    let (writer, _reader) = journal::open(path, journal::Quota::unlimited())?;
    let runtime = tokio::runtime::Handle::current();
    let stored_ms = now_ms();
    let mut staging = writer.stage();
    for n in 0..events {
        let device = traffic::device_id("l-", (n % 1000) as usize);
        let event = anxin_proto::DeviceEvent {
            device_id: device,
            seq: n / 1000 + 1,
            kind: EventKind::Telemetry as i32,
            battery_pct: 80,
            device_time_ms: stored_ms,
            ..Default::default()
        };
        staging.add(&event, stored_ms)?;
        if n % round == round - 1 {
            staging.commit()?;
            staging = writer.stage();
        }
        if n % 10_000 == 9_999 {
            tokio::task::block_in_place(|| runtime.block_on(writer.flush()))?;
        }
    }
    let sos = anxin_proto::DeviceEvent {
        device_id: "p0-00000".into(),
        seq: 1,
        kind: EventKind::Sos as i32,
        battery_pct: 80,
        device_time_ms: stored_ms,
        ..Default::default()
    };
    staging.commit()?;
    writer.append(&sos, stored_ms)?;
    tokio::task::block_in_place(|| runtime.block_on(writer.flush()))?;
    Ok(())
}

// ----------------------------------------------------------------- footprint

pub async fn steady(devices: usize, rate: f64, duration: u64) -> anyhow::Result<()> {
    println!(
        "== steady: {devices} devices offering {rate} events/s of P3 for {duration} s; gateway RSS every 15 s"
    );
    let dir = tempfile::tempdir()?;
    let server = Server::start_configured(dir.path(), free_port(), &[], &[]).await;
    let ids = device_list(&[("s-", devices)]);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let max_connections = format!("max_connections = {}", devices + 10);
    let mut extra = LOAD_LIMITS.to_vec();
    extra.push(("mqtt", max_connections.as_str()));
    let gateway = Gateway::start_with(dir.path(), server.grpc_port, &refs, &extra).await;
    let mut sim = telemetry_load(dir.path(), &gateway, "s-", devices, rate, duration, None);
    let gateway_pid = pid(&gateway.proc);
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(duration) {
        tokio::time::sleep(Duration::from_secs(15)).await;
        let mb = rss_bytes(gateway_pid).unwrap_or(0) as f64 / 1e6;
        let depth = gateway.journal_depth().await;
        println!(
            "  t={:>4.0}s gateway RSS {mb:.0} MB, journal depth {depth}",
            started.elapsed().as_secs_f64()
        );
        samples.push(mb);
    }
    let line = sim.line_starting("{", Duration::from_secs(120)).await;
    let summary: serde_json::Value = serde_json::from_str(&line)?;
    println!(
        "  stored {} of {} sent; stored-ack p50 {} ms, p99 {} ms",
        summary["stored"],
        summary["sent"],
        summary["stored_latency_ms"]["p50"],
        summary["stored_latency_ms"]["p99"]
    );
    if let (Some(first_half), Some(last)) = (samples.get(samples.len() / 2), samples.last()) {
        println!(
            "  RSS growth over the second half: {:+.0} MB ({first_half:.0} → {last:.0} MB)",
            last - first_half
        );
    }
    Ok(())
}

pub async fn footprint(gateways: usize) -> anyhow::Result<()> {
    println!("== footprint");
    for name in ["anxin-gateway", "anxin-server", "anxin-sim"] {
        let size = std::fs::metadata(binary(name))?.len();
        println!("  {name} binary: {:.1} MB", size as f64 / 1e6);
    }
    let dir = tempfile::tempdir()?;
    let server = Server::start_configured(dir.path(), free_port(), &[], &[]).await;
    let ids = device_list(&[("d-", 100)]);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let gateway = Gateway::start_with(dir.path(), server.grpc_port, &refs, &[]).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mb = |pid| rss_bytes(pid).unwrap_or(0) as f64 / 1e6;
    println!(
        "  idle RSS after 10 s: gateway {:.1} MB (100 devices registered, uplink connected), server {:.1} MB",
        mb(pid(&gateway.proc)),
        mb(pid(&server.proc))
    );

    for n in 0..gateways {
        let (status, body) = server
            .call(
                "PUT",
                &format!("/api/v1/gateways/gw-bench-{n:05}"),
                TEST_ADMIN_TOKEN,
                Some(serde_json::json!({ "token": bench_token(n) })),
            )
            .await;
        anyhow::ensure!(
            (200..300).contains(&status),
            "provisioning a gateway: {status} {body}"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_bytes(pid(&server.proc)).unwrap_or(0);
    let mut streams = Vec::with_capacity(gateways);
    for n in 0..gateways {
        let channel = tonic::transport::Channel::from_shared(server.grpc())?
            .connect()
            .await?;
        let bearer = Bearer(format!("Bearer {}", bench_token(n)).parse()?);
        let mut client = UplinkClient::with_interceptor(channel, bearer);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(GatewayMessage {
            body: Some(gateway_message::Body::Hello(Hello {
                gateway_id: format!("gw-bench-{n:05}"),
                software_version: "bench".into(),
                takes_deferrals: false,
            })),
        })
        .await?;
        let response = client.link(ReceiverStream::new(rx)).await?;
        streams.push((tx, response.into_inner(), client));
    }
    let expected = (gateways + 1) as f64;
    wait_for(
        "every stream to be connected",
        Duration::from_secs(60),
        async || server.metric("anxin_server_gateways_connected").await >= expected,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_bytes(pid(&server.proc)).unwrap_or(0);
    println!(
        "  server RSS {:.1} MB → {:.1} MB with {gateways} gateway streams: {:.1} KB per gateway",
        before as f64 / 1e6,
        after as f64 / 1e6,
        after.saturating_sub(before) as f64 / gateways as f64 / 1e3
    );
    drop(streams);
    Ok(())
}

fn bench_token(n: usize) -> String {
    format!("bench-gateway-token-{n:05}-0123456789abcdef")
}

// ---------------------------------------------------------------------- many

/// Records press → alert on the server's SSE stream, by device id.
pub(crate) fn watch_alerts(mut sse: SseStream, sent_at: SentAt, seen: Arc<Mutex<Histogram<u64>>>) {
    tokio::spawn(async move {
        while let Some(event) = sse.next().await {
            if event.event != "alert" {
                continue;
            }
            let Ok(alert) = serde_json::from_str::<serde_json::Value>(&event.data) else {
                continue;
            };
            let device = alert["deviceId"].as_str().unwrap_or_default();
            if let Some(at) = sent_at.lock().unwrap().remove(device) {
                let micros = at.elapsed().as_micros() as u64;
                seen.lock().unwrap().saturating_record(micros.max(1));
            }
        }
    });
}

/// Many connected devices, each its own connection, a modest total rate,
/// and SOS presses from separate devices meanwhile (issue 15, benchmark a).
pub async fn many(devices: usize, rate: f64, duration: u64, presses: usize) -> anyhow::Result<()> {
    println!(
        "== many: {devices} connected devices offering {rate} P3 events/s for {duration} s; {presses} SOS presses from other devices meanwhile"
    );
    let dir = tempfile::tempdir()?;
    let server = Server::start_configured(dir.path(), free_port(), &[], &[]).await;
    let ids = device_list(&[("m-", devices), ("p0-", presses)]);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let max_connections = format!("max_connections = {}", devices + presses + 10);
    let mut extra = LOAD_LIMITS.to_vec();
    extra.push(("mqtt", max_connections.as_str()));
    let gateway = Gateway::start_with(dir.path(), server.grpc_port, &refs, &extra).await;
    let watch = Watch::start(vec![
        ("anxin-gateway".into(), pid(&gateway.proc)),
        ("anxin-server".into(), pid(&server.proc)),
    ]);
    let sent_at: SentAt = Default::default();
    let seen = Arc::new(Mutex::new(latency_histogram()));
    let acks = Arc::new(Mutex::new(latency_histogram()));
    watch_alerts(
        SseStream::connect(&server.stream_url(TEST_ADMIN_TOKEN)).await,
        sent_at.clone(),
        seen.clone(),
    );
    let probers = traffic::probers(
        gateway.mqtt_port,
        "p0-",
        presses,
        &sent_at,
        Some(acks.clone()),
    )
    .await;
    let connecting = Instant::now();
    let mut sim = telemetry_load(
        dir.path(),
        &gateway,
        "m-",
        devices,
        rate,
        duration,
        Some(60),
    );
    let connected = wait_for(
        "every device to connect",
        Duration::from_secs(300),
        async || {
            gateway.metric("anxin_gateway_mqtt_connections").await >= (devices + presses) as f64
        },
    )
    .await;
    println!(
        "  {} connections after {:.1} s",
        gateway.metric("anxin_gateway_mqtt_connections").await,
        connecting.elapsed().as_secs_f64()
    );
    if !connected {
        anyhow::bail!("the devices did not all connect");
    }
    // Presses spread over the middle of the run.
    let pace = Duration::from_millis((duration * 1000 / 2 / presses.max(1) as u64).max(10));
    tokio::time::sleep(Duration::from_secs(duration / 4)).await;
    traffic::probe(&probers, pace, &sent_at).await;
    settle(&seen, presses).await;
    let line = sim
        .line_starting("{", Duration::from_secs(duration + 400))
        .await;
    let usage = watch.finish().await;
    let summary: serde_json::Value = serde_json::from_str(&line)?;
    println!(
        "  load: stored {} of {} sent; stored-ack p50 {} ms, p99 {} ms, max {} ms",
        summary["stored"],
        summary["sent"],
        summary["stored_latency_ms"]["p50"],
        summary["stored_latency_ms"]["p99"],
        summary["stored_latency_ms"]["max"]
    );
    print_latency(
        "SOS press → alert on the server's SSE",
        &seen.lock().unwrap(),
    );
    print_latency("SOS press → stored ack", &acks.lock().unwrap());
    print_usage(&usage);
    drop(probers);
    sim.proc.kill9();
    Ok(())
}

// ------------------------------------------------------------------- presses

/// One device on a long-lived connection presses again and again on an
/// idle gateway: press → `stored` ack (issue 15, benchmark c).
pub async fn presses(samples: usize, pace_ms: u64) -> anyhow::Result<()> {
    println!(
        "== presses: {samples} presses {pace_ms} ms apart on one long-lived connection, idle gateway"
    );
    let dir = tempfile::tempdir()?;
    let server = Server::start_configured(dir.path(), free_port(), &[], &[]).await;
    let gateway =
        Gateway::start_with(dir.path(), server.grpc_port, &["btn-00000"], &LOAD_LIMITS).await;
    let watch = Watch::start(vec![("anxin-gateway".into(), pid(&gateway.proc))]);
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Default::default();
    let acks = Arc::new(Mutex::new(latency_histogram()));
    let (pending, histogram) = (sent.clone(), acks.clone());
    let device = "btn-00000";
    let client = traffic::connect(
        gateway.mqtt_port,
        device,
        Some(&anxin_proto::topics::ack(device)),
        move |_, payload| {
            use prost::Message;
            let Ok(ack) = anxin_proto::DeviceAck::decode(payload) else {
                return;
            };
            if ack.kind() != anxin_proto::AckKind::Stored {
                return;
            }
            if let Some(at) = pending.lock().unwrap().remove(&ack.seq) {
                histogram
                    .lock()
                    .unwrap()
                    .saturating_record((at.elapsed().as_micros() as u64).max(1));
            }
        },
    )
    .await;
    let mut tick = tokio::time::interval(Duration::from_millis(pace_ms));
    for seq in 1..=samples as u64 {
        tick.tick().await;
        // Telemetry-like presses would be P3; a press is the alarm lane's.
        let body = traffic::payload(device, seq, EventKind::Sos);
        sent.lock().unwrap().insert(seq, Instant::now());
        client
            .publish(
                anxin_proto::topics::event(device),
                rumqttc::QoS::AtLeastOnce,
                false,
                body,
            )
            .await?;
    }
    wait_for("every stored ack", Duration::from_secs(30), async || {
        acks.lock().unwrap().len() >= samples as u64
    })
    .await;
    let usage = watch.finish().await;
    print_latency("press → stored ack", &acks.lock().unwrap());
    print_usage(&usage);
    Ok(())
}
