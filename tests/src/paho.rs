//! Runs the paho-mqtt scripts of `tests/paho/` — the client integrators use
//! — against a gateway, and returns the JSON findings each prints last.

use std::{path::PathBuf, process::Command, time::Duration};

/// `None` (after saying SKIPPED, or failing under CI=true) when python3 or
/// paho-mqtt is missing: `pip install paho-mqtt==2.1.0` (.ci/run does).
pub fn available(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        crate::host::skip(
            test,
            "python3 with paho-mqtt is missing (pip install paho-mqtt==2.1.0)",
        );
    }
    ok
}

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("paho")
}

/// Runs `tests/paho/<script>` with `args` (blocking, in a thread of its
/// own) and parses its last stdout line.
pub async fn run(script: &str, args: &[String], within: Duration) -> serde_json::Value {
    let path = scripts().join(script);
    let args = args.to_vec();
    let script = script.to_string();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(&path)
            .args(&args)
            .current_dir(scripts())
            .output()
            .expect("running python3")
    });
    let output = tokio::time::timeout(within, run)
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {within:?}"))
        .expect("joining the script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{script} printed no JSON findings ({e}):\n{stdout}\n{stderr}"))
}
