//! `city`: a city-sized directory (issue 18). Builds residents, devices,
//! communities, staff and past alerts, then measures the import, every list
//! page and search, the console's first load in Chromium, SOS → SSE with
//! the big directory, and the server's memory at rest and serving consoles.
//! Run it once with `--residents 0` for the empty-directory baseline.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anxin_proto::v1::{Alert, AlertState, EventKind, Priority};
use anxin_tests::{Gateway, Server, TEST_ADMIN_TOKEN, device_password, free_port, sse::SseStream};
use hdrhistogram::Histogram;

use crate::{
    procstat::{Watch, rss_bytes},
    scenarios::{latency_histogram, pid, print_latency, settle, watch_alerts},
    traffic::{self, SentAt},
};

pub struct City {
    pub residents: usize,
    /// Devices (one per resident, the first `devices` residents).
    pub devices: usize,
    pub communities: usize,
    pub staff: usize,
    pub alerts: usize,
    pub probes: usize,
    pub consoles: usize,
}

fn community(i: usize, communities: usize) -> String {
    format!("c-{:05}", i % communities.max(1))
}

fn resident_id(i: usize) -> String {
    format!("r-{i:07}")
}

fn secs(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

pub(crate) async fn post_csv(
    server: &Server,
    kind: &str,
    csv: String,
) -> anyhow::Result<serde_json::Value> {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/import/{kind}", server.http()))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await?;
    let status = response.status();
    let report: serde_json::Value = response.json().await?;
    anyhow::ensure!(status.is_success(), "import {kind}: {status} {report}");
    Ok(report)
}

/// Past alerts written straight into the stopped server's store (history
/// from another system, as `import_alert` is meant for).
async fn seed_alerts(server: &Server, city: &City) -> anyhow::Result<()> {
    let store = server.open_store().await;
    let year_ago = anxin_proto::now_ms() - 365 * 86_400_000;
    let step = (365 * 86_400_000) / city.alerts.max(1) as i64;
    let mut chunk = Vec::with_capacity(1000);
    for n in 0..city.alerts {
        let i = (n * 7919) % city.residents.max(1);
        let mut alert = Alert {
            id: (n + 1).to_string(),
            device_id: format!("d-{i:07}"),
            resident_id: resident_id(i),
            community_id: community(i, city.communities),
            gateway_id: format!("gw-{:04}", i % 1000),
            kind: EventKind::Sos as i32,
            priority: Priority::P0 as i32,
            created_ms: year_ago + n as i64 * step,
            resident_name: format!("居民 Resident {i}"),
            ..Default::default()
        };
        alert.set_state(if n % 10 == 0 {
            AlertState::Cancelled
        } else {
            AlertState::Resolved
        });
        alert.resolved_ms = alert.created_ms + 600_000;
        chunk.push(alert);
        if chunk.len() == 1000 {
            store.import_alerts(&chunk)?;
            chunk.clear();
        }
    }
    store.import_alerts(&chunk)?;
    store.flush().await?;
    Ok(())
}

fn quantiles(label: &str, h: &Histogram<u64>) {
    print_latency(label, h);
}

/// `samples` GETs of `paths` in turn (each as the dispatcher), timed.
async fn time_gets(token: &str, base: &str, paths: &[String]) -> anyhow::Result<Histogram<u64>> {
    let client = reqwest::Client::new();
    let mut h = latency_histogram();
    for path in paths {
        let started = Instant::now();
        let response = client
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        h.saturating_record(started.elapsed().as_micros() as u64);
        anyhow::ensure!(
            status.is_success(),
            "GET {path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(h)
}

/// The `next` cursors of a walk over `path`, for deep pages.
async fn cursors(token: &str, base: &str, path: &str, key: &str, pages: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    let mut after = String::new();
    for _ in 0..pages {
        let page: serde_json::Value = client
            .get(format!("{base}{path}&after={after}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("page")
            .json()
            .await
            .expect("page JSON");
        let _ = &page[key];
        match page["next"].as_str() {
            Some(next) => {
                after = next.to_string();
                out.push(after.clone());
            }
            None => break,
        }
    }
    out
}

fn server_rss_mb(server: &Server) -> f64 {
    rss_bytes(pid(&server.proc)).unwrap_or(0) as f64 / 1e6
}

pub async fn city(city: City) -> anyhow::Result<()> {
    println!(
        "== city: {} residents, {} devices, {} communities, {} staff, {} past alerts; {} SOS probes; {} consoles",
        city.residents,
        city.devices,
        city.communities,
        city.staff,
        city.alerts,
        city.probes,
        city.consoles
    );
    let dir = tempfile::tempdir()?;
    let mut server = Server::start_configured(dir.path(), free_port(), &[], &[]).await;
    let started = Instant::now();
    // Places: one city, district and street, and the communities.
    server.add_community(&community(0, city.communities)).await;
    for c in 1..city.communities {
        server
            .send(
                "PUT",
                &format!("/api/v1/places/{}", community(c, city.communities)),
                serde_json::json!({ "name": format!("社区 Community {c}"), "level": "PLACE_LEVEL_COMMUNITY", "parentId": "street-test" }),
            )
            .await;
    }
    println!(
        "  {} communities in {:.1} s",
        city.communities,
        secs(started)
    );
    if city.alerts > 0 {
        let started = Instant::now();
        server.proc.kill9();
        seed_alerts(&server, &city).await?;
        server.restart().await;
        println!(
            "  {} past alerts written (store, server stopped) in {:.1} s",
            city.alerts,
            secs(started)
        );
    }

    // Residents, in one request, with the server's memory watched.
    let probe_ids: Vec<String> = (0..city.probes)
        .map(|i| traffic::device_id("p0-", i))
        .collect();
    let mut csv = String::from(
        "id,name,community_id,address,phone,medical_notes,emergency_contacts,access_notes\n",
    );
    for i in 0..city.residents.max(city.probes) {
        let _ = writeln!(
            csv,
            "{},居民 Resident {i},{},Building {} Room {},138{i:08},,,",
            resident_id(i),
            community(i, city.communities),
            i / 100,
            i % 100
        );
    }
    let bytes = csv.len();
    let rows = city.residents.max(city.probes);
    let watch = Watch::start(vec![("anxin-server".into(), pid(&server.proc))]);
    let started = Instant::now();
    let report = post_csv(&server, "residents", csv).await?;
    let took = secs(started);
    let usage = watch.finish().await;
    println!(
        "  import {rows} residents ({:.0} MB CSV) in one request: {took:.1} s ({:.0} rows/s), imported {}; server peak RSS {:.0} MB",
        bytes as f64 / 1e6,
        rows as f64 / took,
        report["imported"],
        usage[0].peak_rss_mb
    );
    // Devices: one per resident, on 1,000 gateways; the probes on gw-test.
    let mut csv = String::from("id,kind,resident_id,gateway_id,password\n");
    let devices = city.devices.min(rows).max(city.probes);
    for i in 0..devices {
        let (id, gateway, password) = if let Some(probe) = probe_ids.get(i) {
            (probe.clone(), "gw-test".to_string(), device_password(probe))
        } else {
            (
                format!("d-{i:07}"),
                format!("gw-{:04}", i % 1000),
                String::new(),
            )
        };
        let _ = writeln!(
            csv,
            "{id},call_button,{},{gateway},{password}",
            resident_id(i)
        );
    }
    let started = Instant::now();
    let report = post_csv(&server, "devices", csv).await?;
    println!(
        "  import {devices} devices in one request: {:.1} s, imported {}",
        secs(started),
        report["imported"]
    );
    let mut csv = String::from("id,name,role,communities,shifts,contact,active\n");
    for i in 0..city.staff {
        let role = if i % 20 == 0 {
            "dispatcher"
        } else {
            "STAFF_ROLE_CARER"
        };
        let _ = writeln!(
            csv,
            "s-{i:05},护理员 Carer {i},{role},{},1-7 00:00-23:59,,true",
            community(i, city.communities)
        );
    }
    let started = Instant::now();
    post_csv(&server, "staff", csv).await?;
    println!("  import {} staff: {:.1} s", city.staff, secs(started));
    let dispatcher = server
        .add_staff(
            "disp-city",
            "dispatcher",
            &["*"],
            serde_json::json!({ "name": "City dispatcher 市级调度" }),
        )
        .await;
    let carer = server
        .add_staff(
            "carer-one",
            "carer",
            &[&community(7, city.communities)],
            serde_json::json!({}),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    println!(
        "  server RSS at rest after the imports: {:.0} MB",
        server_rss_mb(&server)
    );

    // Every list and search, as a city-wide dispatcher (and a carer).
    let base = server.http();
    let n = 200;
    let deep = cursors(
        &dispatcher,
        &base,
        "/api/v1/residents?limit=100",
        "residents",
        50,
    )
    .await;
    let mut lists: Vec<(&str, &str, Vec<String>)> = vec![
        (
            "residents, first page",
            &dispatcher,
            vec!["/api/v1/residents?limit=100".to_string(); n],
        ),
        (
            "residents, deep pages (cursor)",
            &dispatcher,
            (0..n)
                .map(|i| {
                    format!(
                        "/api/v1/residents?limit=100&after={}",
                        deep[i % deep.len().max(1)]
                    )
                })
                .collect(),
        ),
        (
            "residents of one community",
            &dispatcher,
            (0..n)
                .map(|i| {
                    format!(
                        "/api/v1/residents?limit=100&community={}",
                        community(i * 13, city.communities)
                    )
                })
                .collect(),
        ),
        (
            "residents, a carer's community",
            &carer,
            vec!["/api/v1/residents?limit=100".to_string(); n],
        ),
        (
            "devices of a gateway",
            TEST_ADMIN_TOKEN,
            (0..n)
                .map(|i| format!("/api/v1/devices?limit=100&gateway=gw-{:04}", i % 1000))
                .collect(),
        ),
        (
            "devices of a resident",
            &dispatcher,
            (0..n)
                .map(|i| {
                    format!(
                        "/api/v1/devices?resident={}",
                        resident_id(i * 4999 % devices.max(1))
                    )
                })
                .collect(),
        ),
        (
            "staff board, first page",
            &dispatcher,
            vec!["/api/v1/staff/board?limit=200".to_string(); n],
        ),
        (
            "staff of a community",
            &dispatcher,
            (0..n)
                .map(|i| {
                    format!(
                        "/api/v1/staff?community={}",
                        community(i * 17, city.communities)
                    )
                })
                .collect(),
        ),
        (
            "gateway board, first page",
            &dispatcher,
            vec!["/api/v1/gateways/board?limit=200".to_string(); n],
        ),
        (
            "places, first page",
            &dispatcher,
            vec!["/api/v1/places?limit=1000".to_string(); n],
        ),
        (
            "alert history, newest 100",
            &dispatcher,
            vec!["/api/v1/alerts?limit=100".to_string(); n],
        ),
        (
            "alert history of a community",
            &dispatcher,
            (0..n)
                .map(|i| {
                    format!(
                        "/api/v1/alerts?limit=50&community={}",
                        community(i * 31, city.communities)
                    )
                })
                .collect(),
        ),
        (
            "open alerts (the queue)",
            &dispatcher,
            vec!["/api/v1/alerts?state=new,offered,acknowledged,en_route,on_scene".to_string(); n],
        ),
        (
            "audit, newest 100",
            TEST_ADMIN_TOKEN,
            vec!["/api/v1/audit?limit=100".to_string(); n],
        ),
    ];
    let searches: Vec<(&str, Vec<String>)> = vec![
        (
            "search by name prefix",
            (0..n)
                .map(|i| {
                    format!(
                        "/api/v1/residents?limit=20&q=居民%20Resident%20{}",
                        (i * 7919) % rows.max(1)
                    )
                })
                .collect(),
        ),
        (
            "search by phone prefix",
            (0..n)
                .map(|i| {
                    format!(
                        "/api/v1/residents?limit=20&q=138{:06}",
                        (i * 7919) % (rows.max(1) / 100).max(1)
                    )
                })
                .collect(),
        ),
        (
            "search by id",
            (0..n)
                .map(|i| {
                    format!(
                        "/api/v1/residents?limit=20&q={}",
                        resident_id((i * 104_729) % rows.max(1))
                    )
                })
                .collect(),
        ),
    ];
    println!("  list pages ({n} requests each, sequential):");
    for (label, token, paths) in lists.drain(..) {
        let h = time_gets(token, &base, &paths).await?;
        quantiles(label, &h);
    }
    println!("  resident search as the city-wide dispatcher:");
    for (label, paths) in searches {
        let h = time_gets(&dispatcher, &base, &paths).await?;
        quantiles(label, &h);
    }

    // The console's first load, in Chromium.
    first_load(&base, &dispatcher);

    // SOS press → SSE, with the directory in place.
    let gateway_dir = dir.path().join("gw");
    std::fs::create_dir_all(&gateway_dir)?;
    let refs: Vec<&str> = probe_ids.iter().map(String::as_str).collect();
    let gateway = Gateway::start_with(&gateway_dir, server.grpc_port, &refs, &[]).await;
    let sent_at: SentAt = Default::default();
    let seen = Arc::new(Mutex::new(latency_histogram()));
    watch_alerts(
        SseStream::connect(&server.stream_url(&dispatcher)).await,
        sent_at.clone(),
        seen.clone(),
    );
    let probers = traffic::probers(gateway.mqtt_port, "p0-", city.probes, &sent_at, None).await;
    traffic::probe(&probers, Duration::from_millis(50), &sent_at).await;
    settle(&seen, city.probes).await;
    print_latency("SOS press → dispatcher's SSE", &seen.lock().unwrap());

    // Twenty consoles: each holds the stream and refreshes its pages.
    let watch = Watch::start(vec![("anxin-server".into(), pid(&server.proc))]);
    let stop = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for c in 0..city.consoles {
        let (base, token) = (base.clone(), dispatcher.clone());
        let url = server.stream_url(&token);
        tasks.push(tokio::spawn(async move {
            let _stream = SseStream::connect(&url).await;
            let client = reqwest::Client::new();
            let mut served = 0u64;
            while Instant::now() < stop {
                for path in [
                    "/api/v1/staff/board?limit=200".to_string(),
                    "/api/v1/gateways/board?limit=200".to_string(),
                    format!(
                        "/api/v1/residents?limit=50&q=居民%20Resident%20{}",
                        c * 101 + served as usize
                    ),
                    "/api/v1/alerts?limit=50".to_string(),
                ] {
                    if let Ok(r) = client
                        .get(format!("{base}{path}"))
                        .bearer_auth(&token)
                        .send()
                        .await
                    {
                        let _ = r.bytes().await;
                        served += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            served
        }));
    }
    let mut served = 0;
    for task in tasks {
        served += task.await.unwrap_or(0);
    }
    let usage = watch.finish().await;
    println!(
        "  {} consoles for 30 s ({served} requests): server {}",
        city.consoles, usage[0]
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!(
        "  server RSS at rest afterwards: {:.0} MB",
        server_rss_mb(&server)
    );
    drop(gateway);
    Ok(())
}

/// tests/browser/first-load.mjs: the console opened by a city-wide
/// dispatcher in Chromium, until the live queue shows; time and bytes.
fn first_load(base: &str, token: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    let chromium = std::env::var("ANXIN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !root.join("node_modules").exists() || !std::path::Path::new(&chromium).exists() {
        println!("  console first load: SKIPPED (needs npm ci in tests/browser and {chromium})");
        return;
    }
    let output = std::process::Command::new("node")
        .arg(root.join("first-load.mjs"))
        .env("ANXIN_BASE", base)
        .env("ANXIN_TOKEN", token)
        .env("ANXIN_CHROMIUM", &chromium)
        .output();
    match output {
        Ok(out) => print!(
            "  console first load (Chromium, city-wide dispatcher): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => println!("  console first load: node failed: {err}"),
    }
}
