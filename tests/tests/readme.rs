//! The README, run as a newcomer runs it: every shell block of "Five
//! minutes as a dispatcher" and "Five minutes as an integrator" is executed
//! as written against the dev stack (`deploy/dev-stack.sh`), with only what
//! the README tells the reader to put in substituted — the ports the banner
//! shows, the stack's directory, the dispatcher's token for `export T=…`.
//! Every output line a block shows (`# …` on a line of its own) must be
//! printed by that block: a number other than 0 and `…` stand for what
//! varies, a 0 is a claim ("missing=0"). A dispatcher acknowledges the
//! alerts the blocks wait for, as the README says one will; after a
//! command left in the background the next waits a second, as a reader
//! would before typing it.
//!
//! `ANXIN_README=path` runs another copy (to see the test fail on a broken
//! command).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anxin_tests::{PATIENCE, binary, eventually, free_port};
use regex::Regex;

const SECTIONS: [&str; 2] = [
    "## Five minutes as a dispatcher",
    "## Five minutes as an integrator",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `sh` blocks of the sections named, in order.
fn blocks(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_section = false;
    let mut block: Option<String> = None;
    for line in readme.lines() {
        if let Some(b) = block.as_mut() {
            if line.starts_with("```") {
                out.push(block.take().unwrap());
            } else {
                b.push_str(line);
                b.push('\n');
            }
            continue;
        }
        if line.starts_with("## ") {
            in_section = SECTIONS.contains(&line.trim());
        } else if in_section && line.trim() == "```sh" {
            block = Some(String::new());
        }
    }
    out
}

/// What a block shows it prints: its lines that are a comment of their own.
fn shown(block: &str) -> Vec<(String, Regex)> {
    let number = Regex::new(r"\d+").unwrap();
    block
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .map(|text| {
            let mut pattern = String::new();
            for (i, part) in text.split('…').enumerate() {
                if i > 0 {
                    pattern.push_str(".*");
                }
                let mut last = 0;
                for m in number.find_iter(part) {
                    pattern.push_str(&regex::escape(&part[last..m.start()]));
                    pattern.push_str(if m.as_str() == "0" { "0" } else { r"\d+" });
                    last = m.end();
                }
                pattern.push_str(&regex::escape(&part[last..]));
            }
            (text.to_string(), Regex::new(&pattern).unwrap())
        })
        .collect()
}

struct Stack {
    child: std::process::Child,
    http: u16,
    mqtt: u16,
    state: tempfile::TempDir,
    token: String,
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SIGINT, as Ctrl-C: the script stops everything it started.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn start_stack() -> Stack {
    binary("anxin-server");
    let state = tempfile::tempdir().unwrap();
    let (http, grpc, mqtt, gw_http) = (free_port(), free_port(), free_port(), free_port());
    let (mut child, lines) = anxin_tests::spawn_dev_stack(
        state.path(),
        &[
            ("ANXIN_HTTP_PORT", http.to_string()),
            ("ANXIN_GRPC_PORT", grpc.to_string()),
            ("ANXIN_MQTT_PORT", mqtt.to_string()),
            ("ANXIN_GATEWAY_HTTP_PORT", gw_http.to_string()),
        ],
    );
    let mut seen = Vec::new();
    let token =
        anxin_tests::dev_stack_until(&mut child, &lines, &mut seen, |l| l.contains("#token="))
            .split_once("#token=")
            .map(|(_, t)| t.trim().to_string())
            .unwrap();
    Stack {
        child,
        http,
        mqtt,
        state,
        token,
    }
}

/// The block as the reader runs it on this stack.
fn substituted(block: &str, stack: &Stack) -> String {
    block
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{}", stack.mqtt))
        .replace("-p 1883", &format!("-p {}", stack.mqtt))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", stack.http))
        .replace(".stack/", &format!("{}/", stack.state.path().display()))
        .replace("export T=…", &format!("export T={}", stack.token))
}

/// Acknowledges, as the dispatcher, every offered alert of `devices` until
/// `stop`; the presses the README shows wait for it.
async fn dispatcher(http: u16, token: String, stop: tokio::sync::watch::Receiver<bool>) {
    let client = reqwest::Client::new();
    while !*stop.borrow() {
        let alerts: serde_json::Value = match client
            .get(format!(
                "http://127.0.0.1:{http}/api/v1/alerts?state=offered"
            ))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Default::default(),
        };
        for alert in alerts["alerts"].as_array().into_iter().flatten() {
            if alert["deviceId"] == "btn-0002" {
                let id = alert["id"].as_str().unwrap_or_default();
                let _ = client
                    .post(format!("http://127.0.0.1:{http}/api/v1/alerts/{id}/ack"))
                    .bearer_auth(&token)
                    .send()
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_commands_run_as_written_and_print_what_it_shows() {
    for tool in ["curl", "mosquitto_sub", "mosquitto_pub"] {
        if Command::new(tool).arg("--help").output().is_err() {
            anxin_tests::host::skip(
                "readme",
                &format!("{tool} is not installed (apt-get install curl mosquitto-clients)"),
            );
            return;
        }
    }
    let path = std::env::var("ANXIN_README")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("README.md"));
    let readme = std::fs::read_to_string(&path).unwrap();
    let blocks = blocks(&readme);
    assert!(
        blocks.len() >= 5,
        "{}: the two sections' shell blocks were not found",
        path.display()
    );
    binary("anxin-sim");
    let stack = start_stack();
    // A streaming call (the SSE line) ends after a few seconds instead of
    // never; the README's commands themselves are unchanged.
    let curl_home = tempfile::tempdir().unwrap();
    std::fs::write(curl_home.path().join(".curlrc"), "max-time = 5\n").unwrap();
    // The README's step 2: "王秀英 has already pressed SOS: the alert is in
    // the live queue" — where the reader starts.
    eventually(
        "btn-0001's alert offered, as the README says",
        PATIENCE,
        || async {
            let offered = format!(
                "http://127.0.0.1:{}/api/v1/alerts?state=offered",
                stack.http
            );
            anxin_tests::listed_alert(&offered, &stack.token, "btn-0001")
                .await
                .map(|_| ())
        },
    )
    .await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let acking = tokio::spawn(dispatcher(stack.http, stack.token.clone(), stop));
    // One shell, as one reader's terminal: what a block exports, the next
    // sees. Markers split the output by block.
    let mut script = String::from("cd \"$1\"\n");
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '=== block {i}'\n"));
        for line in substituted(block, &stack).lines() {
            script.push_str(line);
            script.push('\n');
            // A reader types the next command a moment after one left in
            // the background (mosquitto_sub) has subscribed; a script
            // would race it.
            if line.trim_end().ends_with('&') {
                script.push_str("sleep 1\n");
            }
        }
        // A listener the block left in the background prints within it.
        if block.lines().any(|l| l.trim_end().ends_with('&')) {
            script.push_str("sleep 2\n");
        }
    }
    // What a block left running in the background (mosquitto_sub) has
    // printed by now; then it is stopped.
    script.push_str("sleep 2; kill $(jobs -p) 2>/dev/null; echo '=== end'\n");
    let (root_dir, curl_home_dir) = (root(), curl_home.path().to_path_buf());
    let output = tokio::task::spawn_blocking(move || {
        let mut bash = Command::new("bash");
        anxin_tests::without_test_package_env(&mut bash)
            .arg("-c")
            .arg(&script)
            .arg("readme")
            .arg(&root_dir)
            .env("CURL_HOME", &curl_home_dir)
            .env_remove("ANXIN_SIM_PASSWORD")
            .output()
            .expect("running bash")
    });
    let output = tokio::time::timeout(Duration::from_secs(300), output)
        .await
        .expect("the README's commands finished within 5 minutes")
        .unwrap();
    let _ = stop_tx.send(true);
    let _ = acking.await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut parts: Vec<&str> = stdout.split("=== block ").skip(1).collect();
    assert_eq!(
        parts.len(),
        blocks.len(),
        "not every block ran:\n{stdout}\n{stderr}"
    );
    if let Some(last) = parts.last_mut() {
        *last = last.split("=== end").next().unwrap_or_default();
    }
    let mut missing = Vec::new();
    for (i, (block, printed)) in blocks.iter().zip(&parts).enumerate() {
        for (text, pattern) in shown(block) {
            if !printed.lines().any(|l| pattern.is_match(l)) {
                missing.push(format!("block {i} shows `{text}`, but printed:\n{printed}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{}\n--- stderr:\n{stderr}",
        missing.join("\n\n")
    );
    // The stack is still serving what the blocks did.
    eventually("the stack's console still answering", PATIENCE, || async {
        reqwest::get(format!("http://127.0.0.1:{}/healthz", stack.http))
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
}

#[test]
fn shown_output_matches_numbers_but_keeps_zeros() {
    let block = "x\n# verify stored=200 missing=0 message=\"help is coming\"\n# {\"id\":\"1\",…}\n";
    let shown = shown(block);
    assert_eq!(shown.len(), 2);
    assert!(
        shown[0]
            .1
            .is_match("verify stored=10 missing=0 message=\"help is coming\"")
    );
    assert!(
        !shown[0]
            .1
            .is_match("verify stored=10 missing=3 message=\"help is coming\"")
    );
    assert!(shown[1].1.is_match("{\"id\":\"7\",\"state\":\"X\"}"));
    let readme = "## Set up\n```sh\nnot this\n```\n## Five minutes as an integrator\n```sh\nthis\n```\n## Next\n```sh\nnor this\n```\n";
    assert_eq!(blocks(readme), vec!["this\n".to_string()]);
}
