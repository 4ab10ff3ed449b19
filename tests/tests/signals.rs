//! Health and safety signals end to end, through the real binaries: the
//! three shipped scenarios run at once through one gateway — a wearable
//! whose SpO2 drifts down (firmware-sim/scenarios/spo2-drift.toml), a
//! resident who walks out of his night-time safe zone while his neighbour's
//! wide fixes near the edge prove nothing (zone-exit-night.toml), a flat
//! with no water use (water-silent.toml) — with a kill -9 of the server in
//! the middle of the SpO2 episode, and again over three replicas with the
//! gateway's replica killed. Each rule raises exactly once.

use std::time::Duration;

use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, eventually, free_port, offset_for, require_postgres,
};
use serde_json::{Value, json};

const DEVICES: [&str; 4] = [
    "wear-qian:wearable",
    "wear-feng:wearable",
    "wear-ma:wearable",
    "meter-wu:meter",
];

/// Mr Feng's and Mrs Ma's safe zone: 150 m around their building, at night.
fn home_zone() -> Value {
    json!({
        "name": "home",
        "center": { "latE7": 312_290_000, "lonE7": 1_214_550_000 },
        "radiusM": 150,
        "hours": "20:00-07:00",
    })
}

/// The residents, their devices and their rules, written through `server`.
async fn register(server: &Server) {
    server.add_community("c-1").await;
    server
        .add_staff("carer-1", "carer", &["c-1"], json!({}))
        .await;
    for (id, device) in [
        ("r-qian", DEVICES[0]),
        ("r-feng", DEVICES[1]),
        ("r-ma", DEVICES[2]),
        ("r-wu", DEVICES[3]),
    ] {
        server.add_resident(id, "c-1", &[device]).await;
    }
    let put = |id: &'static str, name: &'static str, rules: Value| async move {
        let mut body = json!({
            "name": name,
            "communityId": "c-1",
            "address": "Building 7, Yanping Road",
        });
        body.as_object_mut()
            .unwrap()
            .extend(rules.as_object().unwrap().clone());
        server
            .call(
                "PUT",
                &format!("/api/v1/residents/{id}"),
                anxin_tests::TEST_ADMIN_TOKEN,
                Some(body),
            )
            .await
    };
    // A rule written wrong is refused by name, and nothing is stored.
    let (status, body) = put(
        "r-feng",
        "Feng Guoqiang",
        json!({ "safeZones": [{ "name": "home", "center": { "latE7": 1, "lonE7": 1 }, "radiusM": 5 }] }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("radius_m"), "{body}");
    for (id, name, rules) in [
        ("r-qian", "Qian Meilan", json!({})),
        (
            "r-feng",
            "Feng Guoqiang",
            json!({ "safeZones": [home_zone()] }),
        ),
        ("r-ma", "Ma Suzhen", json!({ "safeZones": [home_zone()] })),
        (
            "r-wu",
            "Wu Yufang",
            // 0.01 h = 36 s: the scenario's day, compressed.
            json!({ "meterRules": [{ "kind": "water", "silentHours": 0.01 }] }),
        ),
    ] {
        let (status, body) = put(id, name, rules).await;
        assert_eq!(status, 200, "{body}");
    }
}

fn of(alerts: &[Value], resident: &str) -> Vec<Value> {
    alerts
        .iter()
        .filter(|a| a["residentId"] == resident)
        .cloned()
        .collect()
}

fn notes(alert: &Value) -> String {
    alert["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .map(|n| n["text"].as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .unwrap_or_default()
}

/// Waits for the outcome every scenario must have, read through `server`:
/// one alert each for Qian (stepped up to P0, then back within limits),
/// Feng (left the zone, with his track) and Wu (no water), none for Ma.
async fn one_alert_each(server: &Server) -> [Value; 3] {
    let (qian, feng, wu) = eventually("each rule's one alert, settled", PATIENCE * 2, || async {
        let alerts = server.alerts().await;
        let qian = of(&alerts, "r-qian");
        let feng = of(&alerts, "r-feng");
        let wu = of(&alerts, "r-wu");
        let settled = qian.len() == 1
            && notes(&qian[0]).contains("back within limits")
            && feng.len() == 1
            && feng[0]["track"].as_array().map_or(0, Vec::len) >= 6
            && wu.len() == 1;
        // More than one is a failure now, not a wait.
        assert!(
            qian.len() <= 1 && feng.len() <= 1 && wu.len() <= 1,
            "{alerts:#?}"
        );
        settled.then(|| (qian[0].clone(), feng[0].clone(), wu[0].clone()))
    })
    .await;
    assert!(
        of(&server.alerts().await, "r-ma").is_empty(),
        "Mrs Ma's wide fixes prove nothing"
    );

    assert_eq!(qian["kind"], "EVENT_KIND_VITALS_CRITICAL", "{qian:#}");
    assert_eq!(qian["priority"], "PRIORITY_P0");
    let events: Vec<(&str, &str)> = qian["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["deviceId"].as_str().unwrap(), e["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [
            ("vitals/r-qian/spo2", "EVENT_KIND_VITALS_WARNING"),
            ("vitals/r-qian/spo2", "EVENT_KIND_VITALS_CRITICAL"),
        ],
        "one warning, one step up, nothing while it stayed low"
    );
    let text = notes(&qian);
    assert!(
        text.contains("warning limit 92") && text.contains("91, 91, 90"),
        "{text}"
    );
    assert!(text.contains("critical limit 88"), "{text}");
    assert_eq!(qian["residentName"], "Qian Meilan");
    assert_eq!(qian["deviceKind"], "wearable");

    assert_eq!(feng["kind"], "EVENT_KIND_LEFT_SAFE_ZONE", "{feng:#}");
    assert_eq!(feng["priority"], "PRIORITY_P0");
    let track = feng["track"].as_array().unwrap();
    // The three sure fixes outside that raised it, then the three after.
    assert_eq!(track.len(), 6, "{feng:#}");
    let north = |p: &Value| {
        (p["location"]["latE7"].as_i64().unwrap() - 312_290_000) as f64 / 1e7 * 111_195.0
    };
    assert!((north(&track[0]) - 250.0).abs() < 2.0, "{:?}", track[0]);
    assert!((north(&track[5]) - 700.0).abs() < 2.0, "{:?}", track[5]);
    assert!((north(&feng["position"]) - 420.0).abs() < 2.0, "{feng:#}");
    assert!(
        notes(&feng).contains("Left the safe zone (home)"),
        "{feng:#}"
    );

    assert_eq!(wu["kind"], "EVENT_KIND_HOUSEHOLD_SILENT", "{wu:#}");
    assert_eq!(wu["priority"], "PRIORITY_P2");
    assert!(notes(&wu).contains("water meter: no use for"), "{wu:#}");
    [qian, feng, wu]
}

/// Starts the three scenarios; returns them (to be finished) once started.
fn start_scenarios(dir: &std::path::Path, gateway: &Gateway) -> Vec<Sim> {
    [
        "spo2-drift.toml",
        "zone-exit-night.toml",
        "water-silent.toml",
    ]
    .into_iter()
    .map(|file| Sim::start_scenario(dir, &gateway.mqtt(), file))
    .collect()
}

async fn first_alert_of(server: &Server, resident: &str) -> Value {
    eventually(&format!("{resident}'s first alert"), PATIENCE, || async {
        of(&server.alerts().await, resident).into_iter().next()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_raises_once_across_a_kill_9_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    anxin_tests::binary("anxin-server");
    anxin_tests::binary("anxin-sim");
    // Local time 23:00: Mr Feng's night-time zone applies for the whole run.
    let offset = offset_for(23 * 60);
    let tile_port = free_port();
    let map = format!(
        "tile_url = \"http://127.0.0.1:{tile_port}/{{z}}/{{x}}/{{y}}.png\"\nattribution = \"test tiles\""
    );
    let mut server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[
            ("routing", &format!("utc_offset_minutes = {offset}")),
            ("signals", "meter_check_secs = 1"),
            ("map", &map),
        ],
    )
    .await;
    register(&server).await;
    let audit = server
        .get("/api/v1/audit?action=resident.put&target=resident/r-feng")
        .await;
    assert!(
        audit
            .to_string()
            .contains("signals changed — safe zones: home"),
        "{audit:#}"
    );
    let gateway = Gateway::start(dir.path(), server.grpc_port, &DEVICES).await;
    let mut runs = start_scenarios(dir.path(), &gateway);

    // kill -9 once the SpO2 warning is raised, in the middle of the
    // episode: the readings that follow wait in the gateway's journal.
    let warning = first_alert_of(&server, "r-qian").await;
    assert_eq!(warning["priority"], "PRIORITY_P1", "{warning:#}");
    server.restart().await;
    for run in &mut runs {
        run.finish_scenario().await;
    }
    let [qian, feng, _] = one_alert_each(&server).await;
    assert_eq!(qian["id"], warning["id"], "the step up is the same alert");
    // Every batch handed to a stream's judge has left its queue.
    gateway.wait_drained(PATIENCE).await;
    assert!(
        server
            .metric("anxin_server_signal_readings_total{kind=\"vitals\"}")
            .await
            > 0.0
    );
    assert_eq!(server.metric("anxin_server_judge_queue").await, 0.0);

    // The trend: every reading counted once, however often it was sent.
    let trend = server.get("/api/v1/residents/r-qian/vitals?days=7").await;
    let spo2: Vec<&Value> = trend["days"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["sign"] == "spo2")
        .collect();
    let count: u64 = spo2
        .iter()
        .map(|d| d["count"].as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(count, 19, "{trend:#}");
    assert!(spo2.iter().any(|d| d["min"] == 86.0), "{trend:#}");
    assert!(
        trend["limits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["sign"] == "spo2"
                && l["warningBelow"] == 92.0
                && l["criticalBelow"] == 88.0)
    );
    assert_eq!(trend["alerts"][0]["id"], qian["id"], "{trend:#}");
    assert!(
        server
            .audit_of("resident/r-qian")
            .await
            .iter()
            .any(|e| e["action"] == "resident.vitals.read"),
        "reading the trend is audited"
    );

    // Another kill -9 and a few judging rounds: still one alert each.
    // While it is down, a month of her earlier days goes into the store,
    // as the trend would have them.
    server.proc.kill9();
    plant_history(&server, trend["toDay"].as_i64().unwrap() as i32).await;
    server.respawn().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    one_alert_each(&server).await;

    // The console in Chromium: the trend, the printable page, the zone on
    // the alert's map, the zone editor.
    match anxin_tests::browser::missing() {
        None => {
            anxin_tests::browser::run(
                "signals.mjs",
                &[
                    ("ANXIN_SERVER_HTTP", server.http()),
                    ("ANXIN_TOKEN", anxin_tests::TEST_ADMIN_TOKEN.to_string()),
                    ("ANXIN_ZONE_ALERT", feng["id"].as_str().unwrap().to_string()),
                    (
                        "ANXIN_VITALS_ALERT",
                        qian["id"].as_str().unwrap().to_string(),
                    ),
                    ("ANXIN_TILE_PORT", tile_port.to_string()),
                ],
                "signals browser test passed",
            )
            .await;
        }
        Some(why) => anxin_host::skip::skip("signals in Chromium", &why),
    }
}

/// Mrs Qian's 29 days before today, as the rules would have summed them:
/// SpO2 95–98 and a heart rate of 70–80, with the week of her chest
/// infection lower. Written into the stopped server's store.
async fn plant_history(server: &Server, today: i32) {
    let store = server.open_store().await;
    let mut days = Vec::new();
    for back in 1..30 {
        let day = today - back;
        let ill = (5..10).contains(&back);
        let (lo, hi) = if ill { (89.0, 93.0) } else { (95.0, 98.0) };
        for (sign, min, max) in [
            ("spo2", lo, hi),
            (
                "heart_rate",
                68.0 + (back % 5) as f64,
                82.0 + (back % 7) as f64,
            ),
        ] {
            days.push(anxin_proto::v1::VitalDay {
                resident_id: "r-qian".into(),
                sign: sign.into(),
                day,
                min,
                max,
                sum: (min + max) / 2.0 * 48.0,
                count: 48,
            });
        }
    }
    store.save_signals(&[], &days).unwrap();
    store.flush().await.unwrap();
    drop(store);
    // sled lets go of its file lock a moment after the drop.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_raise_each_rule_once_when_the_gateways_replica_dies() {
    let Some(database) = require_postgres("signals over three replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    anxin_tests::binary("anxin-server");
    anxin_tests::binary("anxin-sim");
    let offset = offset_for(23 * 60);
    let routing = format!("utc_offset_minutes = {offset}");
    let extra = [
        ("routing", routing.as_str()),
        ("signals", "meter_check_secs = 1"),
    ];
    let mut replicas = Vec::new();
    for i in 0..3 {
        let home = dir.path().join(format!("r{i}"));
        std::fs::create_dir_all(&home).unwrap();
        replicas.push(Server::start_replica(&home, &database, &extra).await);
    }
    register(&replicas[0]).await;
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| format!("\"http://127.0.0.1:{}\"", r.grpc_port))
        .collect();
    let servers = format!("servers = [{}]", urls.join(", "));
    let gateway = Gateway::start_with(
        dir.path(),
        replicas[0].grpc_port,
        &DEVICES,
        &[("uplink", servers.as_str())],
    )
    .await;
    let mut runs = start_scenarios(dir.path(), &gateway);
    // The gateway's replica dies in the middle of the SpO2 episode: the
    // rest of the readings are judged by another, from the shared state;
    // every replica's timer judges the silent meter.
    let warning = first_alert_of(&replicas[1], "r-qian").await;
    assert_eq!(warning["priority"], "PRIORITY_P1", "{warning:#}");
    replicas[0].proc.kill9();
    for run in &mut runs {
        run.finish_scenario().await;
    }
    let [qian, _, _] = one_alert_each(&replicas[2]).await;
    assert_eq!(qian["id"], warning["id"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    one_alert_each(&replicas[1]).await;
}
