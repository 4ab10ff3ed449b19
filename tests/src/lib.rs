//! Test harness: starts the real `anxin-server`, `anxin-gateway` and
//! `anxin-sim` binaries as processes on ports chosen at run time, waits for
//! readiness on `/healthz`, and kills them (SIGKILL) on drop.
//!
//! The binaries are built once per test run with the same cargo and profile
//! that built the tests, so a test never runs a stale binary.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{OnceLock, mpsc},
    time::{Duration, Instant},
};

pub mod mqtt;
pub mod proxy;
pub mod sse;
pub mod webhook;

/// Generous: CI machines are slow and shared. Tests wait on conditions, and
/// only fail when the condition never comes.
pub const PATIENCE: Duration = Duration::from_secs(60);

fn target_dir() -> PathBuf {
    // target/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary, building all three on first use.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = target_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--bins",
            "-p",
            "anxin-server",
            "-p",
            "anxin-gateway",
            "-p",
            "anxin-sim",
        ]);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// Waits until `check` returns `Some`, polling every 50 ms, or panics.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process that is SIGKILLed when dropped; its output goes to a log
/// file that is printed if the test fails.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdout(out).stderr(err).stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Self {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// SIGKILL, no goodbye: the process gets no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM: ask the process to stop gracefully.
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }
}

pub struct Server {
    pub proc: Proc,
    pub grpc_port: u16,
    pub http_port: u16,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Server {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with_env(dir, &[]).await
    }

    /// Starts a server whose data lives in `dir`; `env` is for fault
    /// injection (e.g. `ANXIN_FAULT`).
    pub async fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(dir, free_port(), env).await
    }

    /// Starts a server on a given gRPC port (one a gateway already points at).
    pub async fn start_on(dir: &Path, grpc_port: u16, env: &[(&str, &str)]) -> Self {
        let http_port = free_port();
        let config = dir.join("server.toml");
        fs::write(
            &config,
            format!(
                "[grpc]\nlisten = \"127.0.0.1:{grpc_port}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[store]\npath = \"{}\"\n",
                dir.join("server-data").display()
            ),
        )
        .unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut server = Self {
            proc: Self::spawn(&config, &env, dir),
            grpc_port,
            http_port,
            config,
            env,
        };
        server.wait_ready().await;
        server
    }

    fn spawn(config: &Path, env: &[(String, String)], dir: &Path) -> Proc {
        let mut cmd = Command::new(binary("anxin-server"));
        cmd.arg("--config")
            .arg(config)
            .envs(env.iter().map(|(k, v)| (k, v)));
        Proc::spawn("anxin-server", cmd, dir.join("server.log"))
    }

    /// Restarts on the same ports and data, without the fault injection.
    pub async fn restart_clean(&mut self) {
        self.proc.kill9();
        self.env.clear();
        let dir = self.config.parent().unwrap().to_path_buf();
        self.proc = Self::spawn(&self.config, &self.env, &dir);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        wait_healthy(&format!("{}/healthz", self.http())).await;
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Value of one Prometheus series of the server, or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&format!("{}/metrics", self.http()), series).await
    }

    /// Events the server has committed (each identity once).
    pub async fn event_count(&self) -> u64 {
        let health: serde_json::Value = reqwest::get(format!("{}/healthz", self.http()))
            .await
            .expect("GET /healthz")
            .json()
            .await
            .expect("healthz JSON");
        health["events"].as_u64().expect("events in healthz")
    }

    pub fn grpc(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// All alerts, as the REST API returns them.
    pub async fn alerts(&self) -> Vec<serde_json::Value> {
        let body: serde_json::Value = reqwest::get(format!("{}/api/v1/alerts", self.http()))
            .await
            .expect("GET /api/v1/alerts")
            .json()
            .await
            .expect("alerts JSON");
        body["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// A device's committed events, as `GET /api/v1/devices/{id}/events`
    /// returns them.
    pub async fn events_for(&self, device_id: &str) -> Vec<serde_json::Value> {
        let body: serde_json::Value =
            reqwest::get(format!("{}/api/v1/devices/{device_id}/events", self.http()))
                .await
                .expect("GET device events")
                .json()
                .await
                .expect("events JSON");
        body["events"].as_array().cloned().unwrap_or_default()
    }

    pub async fn alerts_for(&self, device_id: &str) -> Vec<serde_json::Value> {
        self.alerts()
            .await
            .into_iter()
            .filter(|a| a["deviceId"] == device_id)
            .collect()
    }
}

pub struct Gateway {
    pub proc: Proc,
    pub mqtt_port: u16,
    pub http_port: u16,
    config: PathBuf,
}

impl Gateway {
    /// Starts a gateway whose journal lives in `dir`, forwarding to the
    /// server at `server_grpc_port` (which need not be up).
    pub async fn start(dir: &Path, server_grpc_port: u16, devices: &[&str]) -> Self {
        Self::start_with(dir, server_grpc_port, devices, &[]).await
    }

    /// Like [`Gateway::start`], with extra config lines per section, e.g.
    /// `("journal", "quota_bytes = 65536")`. Devices are `id[:kind[:password]]`,
    /// call buttons by default.
    pub async fn start_with(
        dir: &Path,
        server_grpc_port: u16,
        devices: &[&str],
        extra: &[(&str, &str)],
    ) -> Self {
        Self::start_routed(
            dir,
            &format!("http://127.0.0.1:{server_grpc_port}"),
            devices,
            extra,
        )
        .await
    }

    /// Like [`Gateway::start_with`], with the server endpoint given in full
    /// (e.g. a proxy the test controls).
    pub async fn start_routed(
        dir: &Path,
        server_url: &str,
        devices: &[&str],
        extra: &[(&str, &str)],
    ) -> Self {
        let (mqtt_port, http_port) = (free_port(), free_port());
        let config = dir.join("gateway.toml");
        let mut sections: Vec<(String, Vec<String>)> = vec![
            ("".into(), vec!["gateway_id = \"gw-test\"".into()]),
            (
                "mqtt".into(),
                vec![format!("listen = \"127.0.0.1:{mqtt_port}\"")],
            ),
            (
                "http".into(),
                vec![format!("listen = \"127.0.0.1:{http_port}\"")],
            ),
            (
                "journal".into(),
                vec![format!("path = \"{}\"", dir.join("journal").display())],
            ),
            (
                "uplink".into(),
                vec![
                    format!("servers = [\"{server_url}\"]"),
                    "backoff_initial_ms = 50".into(),
                    "backoff_max_ms = 500".into(),
                ],
            ),
            ("limits".into(), vec![]),
            ("supervision".into(), vec![]),
            ("fallback".into(), vec![]),
        ];
        // An extra line replaces a default with the same key.
        let key_of = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
        for (section, line) in extra {
            let entry = sections.iter_mut().find(|(name, _)| name == section);
            match entry {
                Some((_, lines)) => {
                    lines.retain(|existing| key_of(existing) != key_of(line));
                    lines.push(line.to_string());
                }
                None => sections.push((section.to_string(), vec![line.to_string()])),
            }
        }
        let mut text = String::new();
        for (name, lines) in &sections {
            if !name.is_empty() {
                text.push_str(&format!("[{name}]\n"));
            }
            for line in lines {
                text.push_str(line);
                text.push('\n');
            }
        }
        for device in devices {
            let mut parts = device.split(':');
            let id = parts.next().unwrap();
            let kind = parts.next().unwrap_or("call_button");
            text.push_str(&format!("[[devices]]\nid = \"{id}\"\nkind = \"{kind}\"\n"));
            if let Some(password) = parts.next() {
                text.push_str(&format!("password = \"{password}\"\n"));
            }
        }
        fs::write(&config, text).unwrap();
        let mut gateway = Self {
            proc: Self::spawn(&config, dir),
            mqtt_port,
            http_port,
            config,
        };
        gateway.wait_ready().await;
        gateway
    }

    fn spawn(config: &Path, dir: &Path) -> Proc {
        let mut cmd = Command::new(binary("anxin-gateway"));
        cmd.arg("--config").arg(config);
        Proc::spawn("anxin-gateway", cmd, dir.join("gateway.log"))
    }

    pub async fn restart(&mut self) {
        self.proc.kill9();
        let dir = self.config.parent().unwrap().to_path_buf();
        self.proc = Self::spawn(&self.config, &dir);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        wait_healthy(&format!("{}/healthz", self.http())).await;
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn mqtt(&self) -> String {
        format!("127.0.0.1:{}", self.mqtt_port)
    }

    /// The gateway's /healthz document.
    pub async fn health(&self) -> serde_json::Value {
        reqwest::get(format!("{}/healthz", self.http()))
            .await
            .expect("GET /healthz")
            .json()
            .await
            .expect("healthz JSON")
    }

    /// Value of one Prometheus series (name with labels, as rendered), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&format!("{}/metrics", self.http()), series).await
    }

    /// Waits until the journal is empty: everything reached the server.
    pub async fn wait_drained(&self, within: Duration) {
        eventually("the gateway's journal to drain", within, || async {
            (self.journal_depth().await == 0).then_some(())
        })
        .await
    }

    /// Events waiting in the journal, summed over priorities.
    pub async fn journal_depth(&self) -> u64 {
        let health = self.health().await;
        ["P0", "P1", "P2", "P3"]
            .iter()
            .map(|p| health["journal_depth"][p].as_u64().expect("journal depth"))
            .sum()
    }
}

/// Reads one series from a Prometheus text endpoint; absent counts as 0.
pub async fn metric(url: &str, series: &str) -> f64 {
    let text = reqwest::get(url)
        .await
        .expect("GET metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

async fn wait_healthy(url: &str) {
    let client = reqwest::Client::new();
    eventually(&format!("{url} to answer"), PATIENCE, || {
        let request = client.get(url).timeout(Duration::from_secs(2)).send();
        async move {
            request
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await
}

/// A running `anxin-sim` whose stdout lines can be awaited.
pub struct Sim {
    pub proc: Proc,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Sim {
    /// Runs `anxin-sim --gateway ADDR <args…>`.
    pub fn run(dir: &Path, gateway_mqtt: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(binary("anxin-sim"));
        cmd.arg("--gateway").arg(gateway_mqtt).args(args);
        let log = dir.join(format!("sim-{}.log", free_port()));
        // stdout is ours to read; stderr goes to the log.
        let err = fs::File::create(&log).expect("sim log");
        cmd.stdout(Stdio::piped()).stderr(err).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawning anxin-sim");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            proc: Proc {
                name: "anxin-sim".into(),
                child: Some(child),
                log,
            },
            lines,
            seen: Vec::new(),
        }
    }

    /// Presses a device's button once and waits for the gateway's `stored`.
    pub async fn press_until_stored(dir: &Path, gateway_mqtt: &str, device: &str) {
        let mut press = Self::run(
            dir,
            gateway_mqtt,
            &["press", "--device", device, "--until", "stored"],
        );
        press.line_starting("stored", PATIENCE).await;
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    pub async fn line_starting(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "anxin-sim printed no `{prefix}` line within {within:?}; it printed {:?}; log:\n{}",
                self.seen,
                self.proc.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What `anxin-sim verify` said about a ledger.
pub struct Verdict {
    pub exit_code: Option<i32>,
    /// The `verify stored=… found=… missing=…` line.
    pub report: String,
    /// Everything it printed (the report, then one line per finding).
    pub lines: Vec<String>,
}

/// Runs the checker, `anxin-sim verify`, on a ledger against a server.
pub async fn verify_ledger(dir: &Path, ledger: &Path, server_http: &str) -> Verdict {
    // verify talks only to the server; the gateway address is unused.
    let mut run = Sim::run(
        dir,
        "127.0.0.1:1",
        &[
            "verify",
            "--ledger",
            ledger.to_str().expect("utf-8 path"),
            "--server",
            server_http,
        ],
    );
    let report = run.line_starting("verify ", PATIENCE).await;
    let exit_code = run.proc.wait_exit(PATIENCE).await;
    while let Ok(line) = run.lines.try_recv() {
        run.seen.push(line);
    }
    Verdict {
        exit_code,
        report,
        lines: run.seen,
    }
}

/// A field `key=value` from a sim output line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}
