//! The browser half of a test: a script in tests/browser run by node with
//! playwright-core driving Debian's Chromium, its README screenshots saved
//! to docs/screenshots/.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::io::{AsyncBufReadExt, BufReader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// What a node script needs that this machine may lack (`None`: all
/// there): node, and `module` installed by `npm ci` in tests/browser.
pub fn missing_module(module: &str) -> Option<String> {
    let node = std::process::Command::new("node").arg("--version").output();
    if node.map(|o| !o.status.success()).unwrap_or(true) {
        return Some("node is not installed".into());
    }
    let browser_dir = root().join("tests/browser");
    (!browser_dir.join("node_modules").join(module).is_dir())
        .then(|| format!("run `npm ci` in {}", browser_dir.display()))
}

/// What the browser half needs that this machine may lack (`None`: all
/// there): node, `npm ci` in tests/browser, Chromium.
pub fn missing() -> Option<String> {
    if let Some(why) = missing_module("playwright-core") {
        return Some(why);
    }
    let chromium = std::env::var("ANXIN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    (!Path::new(&chromium).exists())
        .then(|| format!("{chromium} is missing (apt-get install chromium)"))
}

/// Runs tests/browser/`script` with `vars` (and `ANXIN_SCREENSHOTS`) to
/// its end; fails unless it exits 0 having printed `passed`. Its output
/// lines.
pub async fn run(script: &str, vars: &[(&str, String)], passed: &str) -> Vec<String> {
    let root = root();
    let mut node = tokio::process::Command::new("node");
    node.arg(root.join("tests/browser").join(script))
        .env("ANXIN_SCREENSHOTS", root.join("docs/screenshots"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in vars {
        node.env(k, v);
    }
    let mut node = node.spawn().expect("starting node");
    let mut out = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(node.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let status = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            tokio::select! {
                line = out.next_line() => match line {
                    Ok(Some(line)) => { println!("{line}"); seen.push(line); }
                    _ => break,
                },
                line = err.next_line() => if let Ok(Some(line)) = line { eprintln!("{line}"); seen.push(line); },
            }
        }
        node.wait().await
    })
    .await
    .expect("the browser test finished in time")
    .expect("node ran");
    assert!(
        status.success(),
        "browser test {script} failed:\n{}",
        seen.join("\n")
    );
    assert!(
        seen.iter().any(|l| l.contains(passed)),
        "{script} never said `{passed}`"
    );
    seen
}
