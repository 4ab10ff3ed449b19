//! The web console in a real browser: tests/browser/console.mjs drives
//! Debian's Chromium with playwright-core against a real server and gateway
//! started here, and saves the README's screenshots to docs/screenshots/.
//!
//! Needs node, `npm ci` in tests/browser and /usr/bin/chromium (`.ci/run`
//! installs them); without them the test is skipped with a note, except in
//! CI, where it fails.

use std::{path::Path, process::Stdio, time::Duration};

use anxin_tests::{Gateway, Server, binary};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_alerts_live_acts_on_them_and_survives_a_dropped_stream() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let browser_dir = root.join("tests/browser");
    if let Some(why) = anxin_tests::browser::missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test: {why}"
        );
        eprintln!("skipping the browser test: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The server's local time near noon, so the script's check-in windows
    // (a few minutes) never cross midnight.
    let utc_minute = (anxin_proto::now_ms() / 60_000).rem_euclid(1440);
    let offset = (720 - utc_minute) as i32;
    let server = Server::start_configured(
        dir.path(),
        anxin_tests::free_port(),
        &[],
        &[("routing", &format!("utc_offset_minutes = {offset}"))],
    )
    .await;
    server.add_community("c-a").await;
    server.add_community("c-b").await;
    server
        .send(
            "PUT",
            "/api/v1/places/c-a",
            serde_json::json!({ "name": "和平社区 Heping", "level": "PLACE_LEVEL_COMMUNITY", "parentId": "street-test" }),
        )
        .await;
    for (resident, device, name) in [
        ("r-1", "btn-1", "王秀英 Wang Xiuying"),
        ("r-2", "btn-2", "李建国 Li Jianguo"),
        ("r-3", "btn-3", "赵淑珍 Zhao Shuzhen"),
    ] {
        server.add_resident(resident, "c-a", &[device]).await;
        let mut record = server.get(&format!("/api/v1/residents/{resident}")).await;
        record["name"] = name.into();
        server
            .send("PUT", &format!("/api/v1/residents/{resident}"), record)
            .await;
    }
    let dispatcher = server
        .add_staff(
            "dispatcher-zhang",
            "dispatcher",
            &["c-a"],
            serde_json::json!({ "name": "Zhang Wei 张伟" }),
        )
        .await;
    let carer = server
        .add_staff(
            "carer-li",
            "carer",
            &["c-a"],
            serde_json::json!({ "name": "Li Na 李娜" }),
        )
        .await;
    let other = server
        .add_staff(
            "carer-b",
            "carer",
            &["c-b"],
            serde_json::json!({ "name": "Sun Bo 孙波" }),
        )
        .await;
    let gateway = Gateway::start(dir.path(), server.grpc_port, &["btn-1", "btn-2", "btn-3"]).await;
    // The gateway board: the community centre's gateway is fine; a
    // household box of the same community is short of disk.
    for (id, name, token) in [
        (
            "gw-test",
            "和平社区中心 Heping centre",
            anxin_tests::TEST_GATEWAY_TOKEN,
        ),
        (
            "gw-home-7",
            "新华里7号 Xinhua Li 7",
            "test-gateway-home-7-token-0123",
        ),
    ] {
        server
            .send(
                "PUT",
                &format!("/api/v1/gateways/{id}"),
                serde_json::json!({ "name": name, "communityId": "c-a", "token": token }),
            )
            .await;
    }
    let home = dir.path().join("home-7");
    std::fs::create_dir_all(&home).unwrap();
    let _troubled = Gateway::start_with(
        &home,
        server.grpc_port,
        &["btn-7"],
        &[
            ("", "gateway_id = \"gw-home-7\""),
            ("uplink", "token = \"test-gateway-home-7-token-0123\""),
            ("journal", "reserve_bytes = 0"),
            ("journal", "min_free_bytes = 1000000000000000000"),
        ],
    )
    .await;

    let mut node = tokio::process::Command::new("node")
        .arg(browser_dir.join("console.mjs"))
        .env("ANXIN_SERVER_HTTP", server.http())
        .env("ANXIN_SIM", binary("anxin-sim"))
        // The sim logs each device in with the harness password.
        .env("ANXIN_SIM_PASSWORD", anxin_tests::SIM_PASSWORD)
        .env("ANXIN_MQTT", gateway.mqtt())
        .env("ANXIN_DISPATCHER_TOKEN", &dispatcher)
        .env("ANXIN_CARER_TOKEN", &carer)
        .env("ANXIN_OTHER_CARER_TOKEN", &other)
        .env("ANXIN_ADMIN_TOKEN", anxin_tests::TEST_ADMIN_TOKEN)
        .env("ANXIN_UTC_OFFSET", offset.to_string())
        .env("ANXIN_SCREENSHOTS", root.join("docs/screenshots"))
        .env("ANXIN_WORKDIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting node");
    let mut out = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(node.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let status = tokio::time::timeout(Duration::from_secs(240), async {
        loop {
            tokio::select! {
                line = out.next_line() => match line {
                    Ok(Some(line)) => { println!("{line}"); seen.push(line); }
                    _ => break,
                },
                line = err.next_line() => if let Ok(Some(line)) = line { eprintln!("{line}"); seen.push(line); },
            }
        }
        while let Ok(Some(line)) = err.next_line().await {
            eprintln!("{line}");
            seen.push(line);
        }
        node.wait().await
    })
    .await
    .expect("the browser test finished in time")
    .expect("node ran");
    assert!(
        status.success(),
        "browser test failed (server log: {}):\n{}",
        dir.path().join("server.log").display(),
        seen.join("\n")
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("console browser test passed"))
    );
    for name in ["queue", "detail", "phone", "welfare", "visits-phone"] {
        for language in ["en", "zh-CN"] {
            let shot = root.join(format!("docs/screenshots/{name}-{language}.png"));
            assert!(shot.exists(), "{} was not saved", shot.display());
        }
    }
}
