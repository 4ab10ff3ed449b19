//! `signals`: what the health and safety rules cost (issue 31). Wearables
//! report vitals and a position fix every `period` s each, every wearable
//! bound to a resident with a safe zone (and a fifth with COPD, a seventh
//! with diabetes), while SOS presses from other residents' call buttons
//! measure press → SSE. Run twice on fresh stacks, the rules on and then off
//! (`[signals] enabled = false`): the server's CPU and RSS, and the press
//! latency, side by side.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anxin_tests::{
    Gateway, Server, Sim, TEST_ADMIN_TOKEN, device_password, free_port, sse::SseStream,
};
use futures::StreamExt;
use hdrhistogram::Histogram;

use crate::{
    city::post_csv,
    procstat::{Usage, Watch},
    scenarios::{
        LOAD_LIMITS, latency_histogram, pid, print_latency, settle, wait_for, watch_alerts,
    },
    traffic::{self, SentAt},
};

const HOME: (i32, i32) = (312_290_000, 1_214_550_000);

struct Run {
    server: Usage,
    gateway: Usage,
    latency: Histogram<u64>,
    readings: f64,
    raises: f64,
    p3_per_sec: f64,
}

fn wearer(i: usize) -> String {
    format!("r-w{i:05}")
}

/// A fifth of the wearers have COPD, a seventh diabetes (other limits).
fn conditions(i: usize) -> &'static [&'static str] {
    match (i % 5, i % 7) {
        (0, 0) => &["copd", "diabetes"],
        (0, _) => &["copd"],
        (_, 0) => &["diabetes"],
        _ => &[],
    }
}

fn presser(i: usize) -> String {
    format!("r-p{i:05}")
}

/// Residents, their devices and the wearers' zones, through the API.
async fn register(server: &Server, wearables: usize, presses: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    server.add_community("c-1").await;
    let mut csv = String::from(
        "id,name,community_id,address,phone,medical_notes,emergency_contacts,access_notes,conditions\n",
    );
    for i in 0..wearables {
        let conditions = conditions(i).join("+");
        let _ = writeln!(
            csv,
            "{},Wearer {i},c-1,Building {} Room {},,,,,{conditions}",
            wearer(i),
            i / 100,
            i % 100
        );
    }
    for i in 0..presses {
        let _ = writeln!(csv, "{},Presser {i},c-1,Tower {i},,,,,", presser(i));
    }
    post_csv(server, "residents", csv).await?;
    let mut csv = String::from("id,kind,resident_id,gateway_id,password\n");
    for i in 0..wearables {
        let id = traffic::device_id("w-", i);
        let _ = writeln!(
            csv,
            "{id},wearable,{},gw-test,{}",
            wearer(i),
            device_password(&id)
        );
    }
    for i in 0..presses {
        let id = traffic::device_id("p0-", i);
        let _ = writeln!(
            csv,
            "{id},call_button,{},gw-test,{}",
            presser(i),
            device_password(&id)
        );
    }
    post_csv(server, "devices", csv).await?;
    // Each wearer's safe zone: 300 m around the building the simulator's
    // fixes stay within 100 m of, so every fix is judged and none raises.
    let zones = futures::stream::iter(0..wearables)
        .map(|i| async move {
            server
                .send(
                    "PUT",
                    &format!("/api/v1/residents/{}", wearer(i)),
                    serde_json::json!({
                        "name": format!("Wearer {i}"),
                        "communityId": "c-1",
                        "address": format!("Building {} Room {}", i / 100, i % 100),
                        "conditions": conditions(i),
                        "safeZones": [{
                            "name": "home",
                            "center": { "latE7": HOME.0, "lonE7": HOME.1 },
                            "radiusM": 300,
                        }],
                    }),
                )
                .await
        })
        .buffer_unordered(16);
    zones.collect::<Vec<_>>().await;
    println!(
        "  {wearables} wearers with a zone and {presses} pressers registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn readings_judged(server: &Server) -> f64 {
    server
        .metric("anxin_server_signal_readings_total{kind=\"vitals\"}")
        .await
        + server
            .metric("anxin_server_signal_readings_total{kind=\"fix\"}")
            .await
}

async fn run(
    rules: bool,
    wearables: usize,
    period: u64,
    warmup: u64,
    measure: u64,
    presses: usize,
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let enabled = format!("enabled = {rules}");
    let server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[("signals", enabled.as_str())],
    )
    .await;
    register(&server, wearables, presses).await?;
    let ids: Vec<String> = (0..wearables)
        .map(|i| format!("{}:wearable", traffic::device_id("w-", i)))
        .chain((0..presses).map(|i| traffic::device_id("p0-", i)))
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let max_connections = format!("max_connections = {}", wearables + presses + 10);
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
    // Each wearable a vitals reading and a fix every `period` s: two
    // events per period, sent in turn.
    let rate = (wearables * 2) as f64 / period as f64;
    let (devices, rate_arg, duration) = (
        wearables.to_string(),
        rate.to_string(),
        (warmup + measure + 30).to_string(),
    );
    let mut sim = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &[
            "--json-output",
            "load",
            "--devices",
            &devices,
            "--prefix",
            "w-",
            "--rate",
            &rate_arg,
            "--duration",
            &duration,
            "--mix",
            "p3=1",
            "--readings",
            "--drain",
            "30",
        ],
    );
    let connected = wait_for(
        "every wearable to connect",
        Duration::from_secs(300),
        async || {
            gateway.metric("anxin_gateway_mqtt_connections").await >= (wearables + presses) as f64
        },
    )
    .await;
    anyhow::ensure!(connected, "the wearables did not all connect");
    // A full period and more, so every wearer has a state before measuring.
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let p3 = "anxin_server_events_committed_total{priority=\"P3\"}";
    let (readings_before, p3_before) = (readings_judged(&server).await, server.metric(p3).await);
    let watch = Watch::start(vec![
        ("anxin-server".into(), pid(&server.proc)),
        ("anxin-gateway".into(), pid(&gateway.proc)),
    ]);
    let started = Instant::now();
    let pace = Duration::from_millis(measure * 1000 / presses.max(1) as u64);
    traffic::probe(&probers, pace, &sent_at).await;
    settle(&seen, presses).await;
    let secs = started.elapsed().as_secs_f64();
    let mut usage = watch.finish().await.into_iter();
    let (server_usage, gateway_usage) = (usage.next().unwrap(), usage.next().unwrap());
    let latency = seen.lock().unwrap().clone();
    let run = Run {
        server: server_usage,
        gateway: gateway_usage,
        latency,
        readings: (readings_judged(&server).await - readings_before) / secs,
        raises: server
            .metric("anxin_server_signal_raises_total{rule=\"vitals\"}")
            .await
            + server
                .metric("anxin_server_signal_raises_total{rule=\"zone\"}")
                .await,
        p3_per_sec: (server.metric(p3).await - p3_before) / secs,
    };
    drop(probers);
    sim.proc.kill9();
    Ok(run)
}

pub async fn signals(
    wearables: usize,
    period: u64,
    warmup: u64,
    measure: u64,
    presses: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    println!(
        "== signals: {wearables} wearables, each a vitals reading and a fix every {period} s \
         ({:.0} events/s), every wearer with a safe zone; {presses} SOS presses over {measure} s \
         after {warmup} s of warm-up; rules on, then off, {rounds} rounds",
        (wearables * 2) as f64 / period as f64
    );
    for round in 1..=rounds {
        println!("  round {round} of {rounds}");
        let on = run(true, wearables, period, warmup, measure, presses).await?;
        let off = run(false, wearables, period, warmup, measure, presses).await?;
        compare(&on, &off);
    }
    Ok(())
}

fn compare(on: &Run, off: &Run) {
    for (label, r) in [("rules on", on), ("rules off", off)] {
        println!(
            "  {label}: {:.0} P3 events/s committed, {:.0} readings/s judged (a sign or a fix each), {} raised; {}; {}",
            r.p3_per_sec, r.readings, r.raises, r.server, r.gateway
        );
        print_latency(&format!("{label}, SOS press → SSE"), &r.latency);
    }
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    println!(
        "  rules on vs off: server CPU {:+.1} points, peak RSS {:+.0} MB, SOS → SSE p99 {:.2} vs {:.2} ms ({:+.1}%)",
        on.server.cpu_pct - off.server.cpu_pct,
        on.server.peak_rss_mb - off.server.peak_rss_mb,
        p99(&on.latency),
        p99(&off.latency),
        (p99(&on.latency) / p99(&off.latency) - 1.0) * 100.0
    );
}
