//! Residents who live alone, end to end through the real binaries: the
//! daily check-in (firmware-sim/scenarios/checkins-3.toml with a window of
//! a minute and a half) across a kill -9 between the window's end and the
//! alert, and scheduled visits across a local midnight.

use std::time::Duration;

use anxin_tests::webhook::WebhookReceiver;
use anxin_tests::{Gateway, PATIENCE, Server, Sim, eventually, field, free_port, offset_for};

const MIN: i64 = 60_000;
const DAY: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// "HH:MM:SS" of an instant in the server's local time.
fn local_clock(ms: i64, offset_minutes: i32) -> String {
    let secs = (ms + i64::from(offset_minutes) * MIN).rem_euclid(DAY) / 1000;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

async fn enrol(server: &Server, id: &str, name: &str, start: &str, end: &str) {
    server
        .send(
            "PUT",
            &format!("/api/v1/residents/{id}"),
            serde_json::json!({
                "name": name,
                "communityId": "c-1",
                "address": "Building 3, Room 101",
                "checkin": { "start": start, "end": end },
            }),
        )
        .await;
}

fn missed_checkins(alerts: &[serde_json::Value]) -> Vec<serde_json::Value> {
    alerts
        .iter()
        .filter(|a| a["kind"] == "EVENT_KIND_CHECKIN_MISSED")
        .cloned()
        .collect()
}

async fn checkin_of(server: &Server, resident: &str) -> serde_json::Value {
    let list = server.get("/api/v1/checkins").await;
    list["checkins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["residentId"] == resident)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_missed_checkin_alert_for_the_silent_resident_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    anxin_tests::binary("anxin-server");
    // Local noon: a window from a minute ago to 40 s ahead stays in one day.
    let offset = offset_for(12 * 60);
    let mut server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[("routing", &format!("utc_offset_minutes = {offset}"))],
    )
    .await;
    server.add_community("c-1").await;
    let mut carer_hook = WebhookReceiver::start().await;
    server
        .add_staff(
            "carer-1",
            "carer",
            &["c-1"],
            serde_json::json!({ "contact": carer_hook.url_for("carer-1") }),
        )
        .await;
    let now = now_ms();
    let (opens, closes) = (now - MIN, now + 40_000);
    let (start, end) = (local_clock(opens, offset), local_clock(closes, offset));
    for (id, name, device) in [
        ("r-li", "Li Jianguo", "btn-li:call_button"),
        ("r-zhao", "Zhao Xiuying", "room-zhao:room_sensor"),
        ("r-sun", "Sun Deming", "btn-sun:call_button"),
    ] {
        server.add_resident(id, "c-1", &[device]).await;
        enrol(&server, id, name, &start, &end).await;
    }
    let before = checkin_of(&server, "r-sun").await;
    assert_eq!(before["status"], "pending", "{before}");
    assert_eq!(before["window"], format!("{start}–{end}"));

    let gateway = Gateway::start(
        dir.path(),
        server.grpc_port,
        &[
            "btn-li:call_button",
            "room-zhao:room_sensor",
            "btn-sun:call_button",
        ],
    )
    .await;
    let (run, done) = Sim::scenario(dir.path(), &gateway.mqtt(), "checkins-3.toml").await;
    // Sun's heartbeat, Zhao's two activity reports, Li's "I'm OK".
    assert_eq!(field(&done, "raised"), Some("4"), "{:?}", run.seen);
    assert_eq!(field(&done, "stored"), Some("4"), "{:?}", run.seen);

    // Li's press and Zhao's movement reach the server as signs of life;
    // Sun's heartbeat does not (it says the button lives, not him).
    eventually("Li and Zhao checked in", PATIENCE, || async {
        let li = checkin_of(&server, "r-li").await;
        let zhao = checkin_of(&server, "r-zhao").await;
        (li["status"] == "ok" && zhao["status"] == "ok").then_some(())
    })
    .await;
    assert_eq!(
        checkin_of(&server, "r-li").await["lastSign"]["how"],
        "checkin"
    );
    assert_eq!(
        checkin_of(&server, "r-zhao").await["lastSign"]["how"],
        "activity"
    );
    let sun = checkin_of(&server, "r-sun").await;
    assert_eq!(sun["status"], "pending", "{sun}");
    assert!(
        now_ms() < closes,
        "the setup outran the window; nothing was tested"
    );
    assert!(missed_checkins(&server.alerts().await).is_empty());

    // kill -9 before the window closes; the server is away while it
    // closes and comes back after: the deadline lives in the store.
    let pause = Duration::from_millis((closes - now_ms() + 3_000) as u64);
    server.restart_after(pause).await;

    let alert = eventually(
        "the missed check-in alert, offered to the carer",
        PATIENCE,
        || async {
            let missed = missed_checkins(&server.alerts().await);
            missed
                .first()
                .filter(|a| a["state"] == "ALERT_STATE_OFFERED")
                .cloned()
        },
    )
    .await;
    assert_eq!(alert["residentId"], "r-sun");
    assert_eq!(alert["communityId"], "c-1");
    assert_eq!(alert["priority"], "PRIORITY_P1");
    assert_eq!(alert["offeredTo"], "carer-1");
    let note = alert["notes"][0]["text"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("between {start} and {end}"))
            && note.contains("Last sign of life: none recorded"),
        "{note}"
    );
    // The carer's phone hears of it (the outbox delivers the offer).
    let offer = tokio::time::timeout(PATIENCE, carer_hook.deliveries.recv())
        .await
        .expect("an offer within the patience")
        .unwrap();
    assert_eq!(offer.path, "/carer-1");
    assert_eq!(offer.body["alertId"], alert["id"]);
    assert_eq!(offer.body["alertKind"], "EVENT_KIND_CHECKIN_MISSED");

    let sun = checkin_of(&server, "r-sun").await;
    assert_eq!(sun["status"], "missed");
    assert_eq!(sun["alertId"], alert["id"]);
    assert_eq!(checkin_of(&server, "r-li").await["status"], "ok");
    assert_eq!(checkin_of(&server, "r-zhao").await["status"], "ok");

    // Sun presses "I'm OK" after all: the people answering the alert read
    // it on the alert (they decide whether to stand down).
    let mut late = Sim::run(
        dir.path(),
        &gateway.mqtt(),
        &["press", "--device", "btn-sun", "--kind", "checkin_ok"],
    );
    late.line_starting("stored", PATIENCE).await;
    let noted = eventually("the late check-in noted on the alert", PATIENCE, || async {
        let alert = server.alert(alert["id"].as_str().unwrap()).await;
        let notes = alert["notes"].as_array().cloned().unwrap_or_default();
        notes
            .iter()
            .find(|n| {
                n["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("checked in after the window")
            })
            .cloned()
    })
    .await;
    assert_eq!(noted["by"], "system");
    assert_eq!(checkin_of(&server, "r-sun").await["status"], "missed");

    // Another kill -9 and a few judging rounds: still exactly one alert,
    // and each day judged once.
    server.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let missed = missed_checkins(&server.alerts().await);
    assert_eq!(missed.len(), 1, "{missed:#?}");
    let judged = server.get("/api/v1/audit?action=checkin.judged").await;
    let judged = judged["entries"].as_array().unwrap();
    assert_eq!(judged.len(), 3, "{judged:#?}");

    // The alert detail's welfare view: the window, the missed day, the alert.
    let welfare = server.get("/api/v1/residents/r-sun/welfare").await;
    assert_eq!(welfare["checkinWindow"], format!("{start}–{end}"));
    assert_eq!(welfare["checkins"][0]["outcome"], "missed");
    assert_eq!(welfare["recentAlerts"][0]["id"], alert["id"]);

    // A carer who goes round confirms Sun is well: a sign of life, audited.
    let (status, _) = server
        .call(
            "POST",
            "/api/v1/residents/r-sun/checkin",
            anxin_tests::TEST_ADMIN_TOKEN,
            Some(serde_json::json!({ "note": "visited, he had forgotten the button" })),
        )
        .await;
    assert_eq!(status, 200);
    let welfare = server.get("/api/v1/residents/r-sun/welfare").await;
    assert_eq!(welfare["lastSign"]["how"], "carer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_visits_are_done_or_flagged_to_the_supervisor_at_the_day_s_end() {
    let dir = tempfile::tempdir().unwrap();
    // Build the binaries first (the first start in a test binary does), so
    // the clock below is read just before the server starts.
    anxin_tests::binary("anxin-server");
    // The server's local time is 23:59 and some seconds: its day ends
    // during this test. Too close to the minute's end: wait for the next.
    if now_ms() % MIN > 35_000 {
        tokio::time::sleep(Duration::from_millis((MIN - now_ms() % MIN + 200) as u64)).await;
    }
    let offset = offset_for(23 * 60 + 59);
    let server = Server::start_configured(
        dir.path(),
        free_port(),
        &[],
        &[("routing", &format!("utc_offset_minutes = {offset}"))],
    )
    .await;
    let local_day = (now_ms() + i64::from(offset) * MIN).div_euclid(DAY);
    let midnight = (local_day + 1) * DAY - i64::from(offset) * MIN;
    let today = ((local_day + 3).rem_euclid(7) + 1) as u32;
    let other_day = today % 7 + 1;
    server.add_community("c-1").await;
    let mut hooks = WebhookReceiver::start().await;
    server
        .add_staff(
            "sup-1",
            "supervisor",
            &["c-1"],
            serde_json::json!({ "contact": hooks.url_for("sup-1") }),
        )
        .await;
    let carer = server
        .add_staff("carer-1", "carer", &["c-1"], serde_json::json!({}))
        .await;
    for (resident, plan, day) in [
        ("r-a", "v-a", today),
        ("r-b", "v-b", today),
        ("r-c", "v-c", other_day),
    ] {
        server.add_resident(resident, "c-1", &[]).await;
        server
            .send(
                "PUT",
                &format!("/api/v1/visit-plans/{plan}"),
                serde_json::json!({
                    "residentId": resident,
                    "weekdays": [day],
                    "carerId": "carer-1",
                    "note": "weekly welfare visit",
                    "active": true,
                }),
            )
            .await;
    }

    // The carer's phone: today's visits, then one recorded on arrival.
    let (status, due) = server.call("GET", "/api/v1/visits", &carer, None).await;
    assert_eq!(status, 200, "{due}");
    let due: Vec<&str> = due["visits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["planId"].as_str().unwrap())
        .collect();
    assert_eq!(due, ["v-a", "v-b"], "v-c is not due today");
    let (status, arrived) = server
        .call(
            "POST",
            "/api/v1/visits/v-a/arrive",
            &carer,
            Some(serde_json::json!({ "note": "all well, fridge stocked" })),
        )
        .await;
    assert_eq!(status, 200, "{arrived}");
    assert_eq!(arrived["visit"]["status"], "done");
    let (status, again) = server
        .call("POST", "/api/v1/visits/v-a/arrive", &carer, None)
        .await;
    assert_eq!(status, 409, "recorded twice: {again}");
    let (status, not_due) = server
        .call("POST", "/api/v1/visits/v-c/arrive", &carer, None)
        .await;
    assert_eq!(status, 400, "a visit not due today: {not_due}");
    let list = server.get("/api/v1/visits").await;
    let day = list["visits"][0]["day"].as_str().unwrap().to_string();
    assert!(
        now_ms() < midnight,
        "the setup outran the day; nothing was tested"
    );
    assert!(
        hooks.deliveries.try_recv().is_err(),
        "nobody flagged before the day's end"
    );

    // The day ends: v-b was never recorded, so its supervisor is told.
    let until_midnight = Duration::from_millis((midnight - now_ms()).max(0) as u64);
    let flag = tokio::time::timeout(until_midnight + PATIENCE, hooks.deliveries.recv())
        .await
        .expect("the supervisor's flag within the patience")
        .unwrap();
    assert!(now_ms() >= midnight);
    assert_eq!(flag.path, "/sup-1");
    assert_eq!(flag.body["type"], "visit_missed");
    assert_eq!(flag.body["visitPlanId"], "v-b");
    assert_eq!(flag.body["residentId"], "r-b");
    assert_eq!(flag.body["day"], day);
    let yesterday = server.get(&format!("/api/v1/visits?day={day}")).await;
    let status_of = |plan: &str| {
        yesterday["visits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["planId"] == plan)
            .map(|v| v["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status_of("v-a").as_deref(), Some("done"));
    assert_eq!(status_of("v-b").as_deref(), Some("missed"));
    assert_eq!(status_of("v-c"), None);
    let missed = server.get("/api/v1/audit?action=visit.missed").await;
    assert_eq!(missed["entries"].as_array().unwrap().len(), 1, "{missed}");

    // The report over that day: two planned, one done, one missed.
    let from = midnight - DAY;
    let report = server
        .get(&format!(
            "/api/v1/reports?community=c-1&from={from}&to={midnight}"
        ))
        .await;
    assert_eq!(report["visitsPlanned"], "2", "{report}");
    assert_eq!(report["visitsDone"], "1");
    assert_eq!(report["visitsMissed"], "1");
    // One flag only, whatever the judge's later rounds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hooks.deliveries.try_recv().is_err());
}

async fn import(server: &Server, kind: &str, csv: &str) -> (u16, serde_json::Value) {
    server
        .import_csv(kind, csv, anxin_tests::TEST_ADMIN_TOKEN)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkin_windows_and_visit_plans_import_from_csv_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.add_community("c-1").await;
    let header = "id,name,community_id,address,phone,medical_notes,emergency_contacts,access_notes,checkin_start,checkin_end\n";
    let bad = format!(
        "{header}r-1,Li Jianguo,c-1,Room 1,,,,,07:00,10:00\nr-2,Zhao Xiuying,c-1,Room 2,,,,,10:00,07:00\n"
    );
    let (status, report) = import(&server, "residents", &bad).await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(report["rejected"][0]["line"], "3", "{report}");
    assert!(
        report["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("must end after it starts"),
        "{report}"
    );
    assert_eq!(
        server.get("/api/v1/residents").await["residents"],
        serde_json::json!([])
    );
    // Without the check-in columns a file imports as before (not enrolled).
    let good = format!(
        "{header}r-1,Li Jianguo,c-1,Room 1,,,,,07:00,10:00\nr-2,Zhao Xiuying,c-1,Room 2,,,,,,\n"
    );
    let (status, report) = import(&server, "residents", &good).await;
    assert_eq!(status, 200, "{report}");
    let checkins = server.get("/api/v1/checkins").await;
    let enrolled: Vec<&str> = checkins["checkins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["residentId"].as_str().unwrap())
        .collect();
    assert_eq!(enrolled, ["r-1"]);
    assert_eq!(checkins["checkins"][0]["window"], "07:00–10:00");
    let status = checkins["checkins"][0]["status"].as_str().unwrap();
    assert!(
        ["pending", "not_due"].contains(&status),
        "enrolled just now: judged from the first window that closes after it, not {status}"
    );

    let plans = "id,resident_id,weekdays,carer_id,note,active\nv-1,r-1,1;4,,weekly,true\nv-2,r-2,8,,,true\nv-3,r-9,1,,,true\n";
    let (status, report) = import(&server, "visit_plans", plans).await;
    assert_eq!(status, 422, "{report}");
    let lines: Vec<&str> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["3", "4"], "{report}");
    assert_eq!(
        server.get("/api/v1/visit-plans").await["plans"],
        serde_json::json!([])
    );
    let plans = "id,resident_id,weekdays,carer_id,note,active\nv-1,r-1,1;4,,weekly,true\nv-2,r-2,1-5,,,false\n";
    let (status, report) = import(&server, "visit_plans", plans).await;
    assert_eq!(status, 200, "{report}");
    let stored = server.get("/api/v1/visit-plans").await;
    assert_eq!(stored["plans"][0]["weekdays"], serde_json::json!([1, 4]));
    assert_eq!(stored["plans"][0]["communityId"], "c-1");
    assert_eq!(
        stored["plans"][1]["weekdays"],
        serde_json::json!([1, 2, 3, 4, 5])
    );
    let audit = server.get("/api/v1/audit?action=import.visit_plans").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["import.visit_plans.rejected", "import.visit_plans"],
        "{audit}"
    );
}
