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

pub mod browser;
pub mod certs;
pub mod grpc;
pub mod host;
pub mod https;
pub mod kannel;
pub mod layers;
pub mod mqtt;
pub mod paho;
pub mod pg;
pub mod proxy;
pub mod sse;
pub mod webhook;

/// Generous: CI machines are slow and shared. Tests wait on conditions, and
/// only fail when the condition never comes.
pub const PATIENCE: Duration = Duration::from_secs(60);

fn target_dir() -> PathBuf {
    // target/<profile>/deps/<test-binary>, or target/<profile>/<bin> for the
    // benchmark harness.
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().expect("executables live in a directory");
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir.parent()
            .expect("deps lives in target/<profile>")
            .to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Clears from `cmd` the variables cargo gives a test process about its
/// package, for a command that runs cargo (a build script that reruns when
/// one changes, ring's watches CARGO_MANIFEST_DIR, would rebuild there and
/// again in the next plain `cargo test`: minutes of CI each time).
pub fn without_test_package_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "OUT_DIR"
            || name == "CARGO_MANIFEST_DIR"
            || name == "CARGO_MANIFEST_PATH"
            || name == "CARGO_MANIFEST_LINKS"
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
            || name == "CARGO_RUSTC_CURRENT_DIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
        {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
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
        without_test_package_env(&mut cmd);
        let status = cmd.status().expect("running cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Runs `command` to its end and prints its status and output under
/// `what` (shown when the test fails).
pub fn logged(what: &str, command: &mut Command) -> std::process::Output {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!(
        "{what}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A port free right now on 127.0.0.1, and never one this test process
/// handed out before: the kernel may give a just-released ephemeral port
/// again, and two of a process's ports the same number (a gateway's MQTT
/// and HTTP, say) is a start-up error, which CI met.
/// A server offset (`routing.utc_offset_minutes`) that puts its local
/// time at `minute_of_day` now (the seconds are UTC's): a test's window
/// never crosses midnight, or its day ends, or its night falls, when the
/// test wants.
pub fn offset_for(minute_of_day: i64) -> i32 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let utc_minute = (now_ms / 60_000).rem_euclid(1440);
    let offset = minute_of_day - utc_minute;
    // Keep within ±12 h (the config allows ±14 h).
    (if offset > 720 {
        offset - 1440
    } else if offset < -720 {
        offset + 1440
    } else {
        offset
    }) as i32
}

pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding an ephemeral port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
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
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
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

/// The bootstrap admin token of every test server.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The uplink token of the test gateway `gw-test`.
pub const TEST_GATEWAY_TOKEN: &str = "test-gateway-token-0123456789";

/// A TOML file from default lines per section (`""` is the top level) and
/// extra lines, where an extra line replaces a default with the same key.
fn config_text(defaults: Vec<(&str, Vec<String>)>, extra: &[(&str, &str)]) -> String {
    let mut sections: Vec<(String, Vec<String>)> = defaults
        .into_iter()
        .map(|(name, lines)| (name.to_string(), lines))
        .collect();
    let key_of = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    for (section, line) in extra {
        match sections.iter_mut().find(|(name, _)| name == section) {
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
    text
}

/// The store engine the suite runs on: `ANXIN_TEST_STORE=postgres` runs
/// every server on its own scratch PostgreSQL database (`ANXIN_TEST_PG`
/// names the server to make them on); unset or `sled`, on sled. One
/// suite, two engines: `.ci/run` runs it on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEngine {
    Sled,
    Postgres,
}

pub fn store_engine() -> StoreEngine {
    match std::env::var("ANXIN_TEST_STORE").as_deref() {
        Ok("postgres") => StoreEngine::Postgres,
        Ok("sled") | Ok("") | Err(_) => StoreEngine::Sled,
        Ok(other) => panic!("ANXIN_TEST_STORE={other}: expected sled or postgres"),
    }
}

/// For a test of sled's own files (a full store disk, a record written
/// into the store behind the server's back): whether it applies to this
/// run, saying so when it does not.
pub fn sled_only(test: &str, why: &str) -> bool {
    let sled = store_engine() == StoreEngine::Sled;
    if !sled {
        eprintln!("not run on PostgreSQL: {test} ({why}); the sled pass runs it");
    }
    sled
}

/// The operator's helper, `anxin-server certs --dir <dir> <args…>`: a CA
/// and the certificates `args` ask for (`--server-name`, `--gateway`, …).
pub fn anxin_server_certs(dir: &Path, args: &[&str]) {
    let made = Command::new(binary("anxin-server"))
        .args(["certs", "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// For a test that runs a PostgreSQL server of its own (whatever the
/// matrix says): it runs once, in the PostgreSQL pass, saying so in the
/// other.
pub fn postgres_pass(test: &str) -> bool {
    let postgres = store_engine() == StoreEngine::Postgres;
    if !postgres {
        eprintln!("not run on sled: {test} runs a PostgreSQL of its own, in the PostgreSQL pass");
    }
    postgres
}

/// A scratch database for a server or a group of replicas.
pub async fn scratch_database() -> String {
    anxin_server::store::postgres::scratch::create()
        .await
        .unwrap_or_else(|why| panic!("the PostgreSQL store matrix needs a server: {why}"))
}

/// A scratch database for a test that needs PostgreSQL whatever the
/// matrix says (replicas); `None` after saying SKIPPED (a failure under
/// CI=true) where no server runs.
pub async fn require_postgres(test: &str) -> Option<String> {
    match anxin_server::store::postgres::scratch::create().await {
        Ok(url) => Some(url),
        Err(why) => {
            host::skip(test, &format!("no PostgreSQL: {why}"));
            None
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
        Self::start_configured(dir, grpc_port, env, &[]).await
    }

    /// Starts a server with extra config lines per section, e.g.
    /// `("routing", "p0_deadline_secs = 2")`. The admin token is
    /// [`TEST_ADMIN_TOKEN`], and the gateway `gw-test` is provisioned with
    /// [`TEST_GATEWAY_TOKEN`], the token [`Gateway`] configures.
    pub async fn start_configured(
        dir: &Path,
        grpc_port: u16,
        env: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Self {
        let database = match store_engine() {
            StoreEngine::Sled => None,
            StoreEngine::Postgres => Some(scratch_database().await),
        };
        Self::start_full(dir, grpc_port, env, extra, database.as_deref()).await
    }

    /// Starts a server on sled whatever the store matrix says (a test of
    /// moving from sled).
    pub async fn start_on_sled(dir: &Path) -> Self {
        Self::start_full(dir, free_port(), &[], &[], None).await
    }

    /// Starts a server on a store that is already there: sled's in
    /// `dir/server-data` (`database` `None`) or the PostgreSQL database
    /// `database`, with extra config lines (an upgrade, a changed policy).
    pub async fn start_on_store(
        dir: &Path,
        database: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::start_full(dir, free_port(), &[], extra, database).await
    }

    /// The server's config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Starts a replica over the PostgreSQL database at `database` (made
    /// with [`require_postgres`] or [`scratch_database`]); its own ports,
    /// its files in `dir`.
    pub async fn start_replica(dir: &Path, database: &str, extra: &[(&str, &str)]) -> Self {
        Self::start_full(dir, free_port(), &[], extra, Some(database)).await
    }

    /// Opens this server's store directly (while the server is down, for
    /// sled), to plant what a test needs behind its back.
    pub async fn open_store(&self) -> anxin_server::store::Store {
        match self.database() {
            Some(url) => std::sync::Arc::new(
                anxin_server::store::postgres::PgStore::connect(&url, 2)
                    .await
                    .expect("connecting to the server's database"),
            ),
            None => {
                anxin_server::store::open_sled(&self.config.parent().unwrap().join("server-data"))
                    .expect("opening the server's sled store")
            }
        }
    }

    /// The PostgreSQL database this server uses, if it uses one.
    pub fn database(&self) -> Option<String> {
        let text = fs::read_to_string(&self.config).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("url = \""))
            .map(|url| url.trim_end_matches('"').to_string())
    }

    async fn start_full(
        dir: &Path,
        grpc_port: u16,
        env: &[(&str, &str)],
        extra: &[(&str, &str)],
        database: Option<&str>,
    ) -> Self {
        let http_port = free_port();
        let config = dir.join("server.toml");
        let mut store = vec![format!("path = \"{}\"", dir.join("server-data").display())];
        if let Some(url) = database {
            store.push("backend = \"postgres\"".into());
            store.push(format!("url = \"{url}\""));
            store.push("pool_size = 8".into());
        }
        let sections = vec![
            ("grpc", vec![format!("listen = \"127.0.0.1:{grpc_port}\"")]),
            ("http", vec![format!("listen = \"127.0.0.1:{http_port}\"")]),
            ("store", store),
            // The tests' webhook receivers listen on loopback.
            ("notify", vec!["webhook_hosts = [\"127.0.0.1\"]".into()]),
            (
                "auth",
                vec![format!("admin_token = \"{TEST_ADMIN_TOKEN}\"")],
            ),
        ];
        fs::write(&config, config_text(sections, extra)).unwrap();
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

    /// SIGKILL, then a restart on the same ports, data and environment.
    pub async fn restart(&mut self) {
        self.proc.kill9();
        let dir = self.config.parent().unwrap().to_path_buf();
        self.proc = Self::spawn(&self.config, &self.env, &dir);
        self.wait_ready().await;
    }

    /// SIGKILL, `pause` with no server at all (time passes: a window
    /// closes, a day ends), then a restart on the same ports and data.
    pub async fn restart_after(&mut self, pause: Duration) {
        self.proc.kill9();
        tokio::time::sleep(pause).await;
        let dir = self.config.parent().unwrap().to_path_buf();
        self.proc = Self::spawn(&self.config, &self.env, &dir);
        self.wait_ready().await;
    }

    /// Starts the server again on the same ports, data and environment
    /// after a test stopped it (`proc.kill9()`) to work on its store.
    pub async fn respawn(&mut self) {
        let dir = self.config.parent().unwrap().to_path_buf();
        self.proc = Self::spawn(&self.config, &self.env, &dir);
        self.wait_ready().await;
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
        let (status, body) = self
            .call(
                "PUT",
                "/api/v1/gateways/gw-test",
                TEST_ADMIN_TOKEN,
                Some(serde_json::json!({ "token": TEST_GATEWAY_TOKEN })),
            )
            .await;
        assert_eq!(status, 200, "provisioning gw-test: {body}");
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// One REST call with a bearer token; returns the status and the JSON
    /// body (`null` if there is none).
    /// `POST /api/v1/import/{kind}` with a CSV body, as `token`: the status
    /// and the import's report (`Null` when the body is not JSON).
    pub async fn import_csv(&self, kind: &str, csv: &str, token: &str) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/import/{kind}", self.http()))
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body(csv.to_string())
            .send()
            .await
            .expect("POST an import");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        // A server restarting in place (store failure) is briefly away, and
        // a request in flight at that moment is cut: retry for a while.
        let started = Instant::now();
        let response = loop {
            let mut request = reqwest::Client::new()
                .request(method.clone(), format!("{}{path}", self.http()))
                .bearer_auth(token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => break response,
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(err) => panic!("{method} {path}: {err}"),
            }
        };
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// A GET as the admin that must succeed.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.call("GET", path, TEST_ADMIN_TOKEN, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// A PUT or POST as the admin that must succeed.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let (status, reply) = self.call(method, path, TEST_ADMIN_TOKEN, Some(body)).await;
        assert_eq!(status, 200, "{method} {path}: {reply}");
        reply
    }

    /// Value of one Prometheus series of the server, or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&format!("{}/metrics", self.http()), series).await
    }

    /// Creates a community (and a test city, district and street above it).
    pub async fn add_community(&self, id: &str) {
        for (place, level, parent) in [
            ("city-test", "PLACE_LEVEL_CITY", ""),
            ("district-test", "PLACE_LEVEL_DISTRICT", "city-test"),
            ("street-test", "PLACE_LEVEL_STREET", "district-test"),
            (id, "PLACE_LEVEL_COMMUNITY", "street-test"),
        ] {
            self.send(
                "PUT",
                &format!("/api/v1/places/{place}"),
                serde_json::json!({ "name": place, "level": level, "parentId": parent }),
            )
            .await;
        }
    }

    /// Registers a resident of `community` with the given devices
    /// (`id:kind`, call buttons by default).
    pub async fn add_resident(&self, id: &str, community: &str, devices: &[&str]) {
        self.send(
            "PUT",
            &format!("/api/v1/residents/{id}"),
            serde_json::json!({
                "name": format!("Resident {id}"),
                "communityId": community,
                "address": "Room 101, Building 3",
                "medicalNotes": "diabetic; pacemaker",
                "emergencyContacts": [{ "name": "Wang Fang", "relation": "daughter", "phone": "13800000000" }],
                "accessNotes": "key box code 4321",
            }),
        )
        .await;
        for device in devices {
            let (device, kind) = device.split_once(':').unwrap_or((device, "call_button"));
            self.send(
                "PUT",
                &format!("/api/v1/devices/{device}"),
                serde_json::json!({
                    "kind": kind,
                    "residentId": id,
                    "gatewayId": "gw-test",
                    "password": device_password(device),
                }),
            )
            .await;
        }
    }

    /// Registers resident `resident` of `community` with one call button
    /// `device` that belongs to gateway `gateway` (provisioned too), not to
    /// the test gateway.
    pub async fn add_device_of_gateway(
        &self,
        resident: &str,
        community: &str,
        device: &str,
        gateway: &str,
    ) {
        self.add_resident(resident, community, &[device]).await;
        self.send(
            "PUT",
            &format!("/api/v1/gateways/{gateway}"),
            serde_json::json!({ "communityId": community }),
        )
        .await;
        self.send(
            "PUT",
            &format!("/api/v1/devices/{device}"),
            serde_json::json!({ "kind": "call_button", "residentId": resident, "gatewayId": gateway }),
        )
        .await;
    }

    /// Creates a staff member (`role`: carer, nurse, dispatcher, supervisor,
    /// admin; `extra` merges more fields, e.g. shifts or contact) and
    /// returns a fresh API token for them.
    pub async fn add_staff(
        &self,
        id: &str,
        role: &str,
        communities: &[&str],
        extra: serde_json::Value,
    ) -> String {
        let mut body = serde_json::json!({
            "name": id,
            "role": format!("STAFF_ROLE_{}", role.to_ascii_uppercase()),
            "communities": communities,
            "active": true,
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.send("PUT", &format!("/api/v1/staff/{id}"), body).await;
        let reply = self
            .send(
                "POST",
                &format!("/api/v1/staff/{id}/tokens"),
                serde_json::json!({}),
            )
            .await;
        reply["token"].as_str().expect("token").to_string()
    }

    /// The SSE alert stream's URL for a caller (EventSource style: the
    /// token in the query).
    pub fn stream_url(&self, token: &str) -> String {
        format!("{}/api/v1/alerts/stream?access_token={token}", self.http())
    }

    /// A gRPC `Dispatch` client that sends `token`.
    pub async fn dispatch_client(&self, token: &str) -> grpc::Dispatch {
        grpc::dispatch(&self.grpc(), token).await
    }

    /// Events the server has committed (each identity once).
    pub async fn event_count(&self) -> u64 {
        let health: serde_json::Value =
            reqwest::get(format!("{}/healthz?events=exact", self.http()))
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
        let body = self.get("/api/v1/alerts").await;
        body["alerts"].as_array().cloned().unwrap_or_default()
    }

    pub async fn alert(&self, id: &str) -> serde_json::Value {
        self.get(&format!("/api/v1/alerts/{id}")).await
    }

    /// Audit entries about one target (`alert/7`).
    pub async fn audit_of(&self, target: &str) -> Vec<serde_json::Value> {
        let body = self.get(&format!("/api/v1/audit?target={target}")).await;
        body["entries"].as_array().cloned().unwrap_or_default()
    }

    /// A device's committed events, as `GET /api/v1/devices/{id}/events`
    /// returns them.
    pub async fn events_for(&self, device_id: &str) -> Vec<serde_json::Value> {
        let body = self
            .get(&format!("/api/v1/devices/{device_id}/events"))
            .await;
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// A dispatcher (`token`) acknowledges `device`'s first alert once it
    /// is there (200 asserted).
    pub async fn acknowledge_alert_of(&self, token: &str, device: &str) {
        let alert_id = eventually(&format!("the alert of {device}"), PATIENCE, || async {
            self.alerts_for(device).await.first()?["id"]
                .as_str()
                .map(str::to_string)
        })
        .await;
        let (status, body) = self
            .call(
                "POST",
                &format!("/api/v1/alerts/{alert_id}/ack"),
                token,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    pub async fn alerts_for(&self, device_id: &str) -> Vec<serde_json::Value> {
        self.alerts()
            .await
            .into_iter()
            .filter(|a| a["deviceId"] == device_id)
            .collect()
    }
}

/// The password the harness gives each device (and observer) it registers
/// at a gateway, unless the test names one: `anxin-sim` derives it from
/// `ANXIN_SIM_PASSWORD`, which [`Sim::run`] sets.
pub fn device_password(id: &str) -> String {
    SIM_PASSWORD.replace("{id}", id)
}
pub const SIM_PASSWORD: &str = "pw-{id}-secret-0123";
/// The observer every test gateway knows (it may read the local alarm topic).
pub const SIREN: &str = "siren";

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
    /// call buttons by default; the password may be given sealed or as its
    /// SHA-256.
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
        let sections = vec![
            ("", vec!["gateway_id = \"gw-test\"".into()]),
            ("mqtt", vec![format!("listen = \"127.0.0.1:{mqtt_port}\"")]),
            ("http", vec![format!("listen = \"127.0.0.1:{http_port}\"")]),
            (
                "journal",
                vec![format!("path = \"{}\"", dir.join("journal").display())],
            ),
            (
                "uplink",
                vec![
                    format!("servers = [\"{server_url}\"]"),
                    "backoff_initial_ms = 50".into(),
                    "backoff_max_ms = 500".into(),
                    format!("token = \"{TEST_GATEWAY_TOKEN}\""),
                ],
            ),
            ("limits", vec![]),
            ("supervision", vec![]),
            ("fallback", vec![]),
        ];
        let mut text = config_text(sections, extra);
        for device in devices {
            let mut parts = device.split(':');
            let id = parts.next().unwrap();
            let kind = parts.next().unwrap_or("call_button");
            let password = parts
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| device_password(id));
            // A sealed credential or a bare digest may stand for the password.
            let key = if anxin_credentials::is_sealed(&password) {
                "credential"
            } else if anxin_credentials::is_legacy_digest(&password) {
                "password_sha256"
            } else {
                "password"
            };
            text.push_str(&format!(
                "[[devices]]\nid = \"{id}\"\nkind = \"{kind}\"\n{key} = \"{password}\"\n"
            ));
        }
        // The on-site siren of the fallback tests.
        text.push_str(&format!(
            "[[mqtt.observers]]\nusername = \"{SIREN}\"\npassword = \"{}\"\n",
            device_password(SIREN)
        ));
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

    /// The gateway's /healthz document (200 or 503). Waits through a
    /// restart in place, when the port is briefly closed.
    pub async fn health(&self) -> serde_json::Value {
        let url = format!("{}/healthz", self.http());
        eventually(&format!("{url} to answer"), PATIENCE, || async {
            reqwest::get(&url).await.ok()?.json().await.ok()
        })
        .await
    }

    /// Value of one Prometheus series (name with labels, as rendered), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&format!("{}/metrics", self.http()), series).await
    }

    /// Passwords the gateway checked at CONNECT, by how: `derived` (a
    /// sealed credential), `cached` (a login it verified before), `digest`.
    pub async fn credential_checks(&self, how: &str) -> f64 {
        let series = format!("anxin_gateway_credential_checks_total{{how=\"{how}\"}}");
        self.metric(&series).await
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

/// Waits until `/healthz` answers: 200 (ok) or 503 (degraded, with its
/// reasons; a degraded process still serves, e.g. a gateway on a full disk
/// still stores alarms).
async fn wait_healthy(url: &str) {
    let client = reqwest::Client::new();
    eventually(&format!("{url} to answer"), PATIENCE, || {
        let request = client.get(url).timeout(Duration::from_secs(2)).send();
        async move {
            request
                .await
                .ok()
                .filter(|r| r.status().is_success() || r.status().as_u16() == 503)
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

/// The devices of a load test: `dev-00000`, `dev-00001`, …
pub fn load_devices(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("dev-{i:05}")).collect()
}

impl Gateway {
    /// A gateway for a load test: `devices` with their rate limits lifted
    /// (1,000 events/s each), plus `extra` config lines.
    pub async fn start_for_load(
        dir: &Path,
        server_grpc_port: u16,
        devices: &[String],
        extra: &[(&str, &str)],
    ) -> Self {
        let refs: Vec<&str> = devices.iter().map(String::as_str).collect();
        let mut lines = vec![
            ("limits", "device_rate_per_sec = 1000.0"),
            ("limits", "device_burst = 1000"),
        ];
        lines.extend_from_slice(extra);
        Self::start_with(dir, server_grpc_port, &refs, &lines).await
    }
}

impl Sim {
    /// Runs `anxin-sim --gateway ADDR <args…>`.
    pub fn run(dir: &Path, gateway_mqtt: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(binary("anxin-sim"));
        cmd.arg("--gateway").arg(gateway_mqtt).args(args);
        cmd.env("ANXIN_SIM_PASSWORD", SIM_PASSWORD);
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

    /// `anxin-sim run --scenario firmware-sim/scenarios/{file}`, started
    /// (several may run at once; [`Sim::finish_scenario`] waits for one).
    pub fn start_scenario(dir: &Path, gateway_mqtt: &str, file: &str) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../firmware-sim/scenarios")
            .join(file);
        let path = path.to_str().expect("a UTF-8 path");
        Self::run(dir, gateway_mqtt, &["run", "--scenario", path])
    }

    /// A started scenario to its end: its `scenario done …` line (it
    /// exited 0).
    pub async fn finish_scenario(&mut self) -> String {
        let done = self.line_starting("scenario done", PATIENCE).await;
        assert_eq!(
            self.proc.wait_exit(PATIENCE).await,
            Some(0),
            "{:?}",
            self.seen
        );
        done
    }

    /// `anxin-sim run --scenario firmware-sim/scenarios/{file}` to its end:
    /// the sim and its `scenario done …` line (it exited 0).
    pub async fn scenario(dir: &Path, gateway_mqtt: &str, file: &str) -> (Self, String) {
        let mut run = Self::start_scenario(dir, gateway_mqtt, file);
        let done = run.line_starting("scenario done", PATIENCE).await;
        assert_eq!(
            run.proc.wait_exit(PATIENCE).await,
            Some(0),
            "{:?}",
            run.seen
        );
        (run, done)
    }

    /// `anxin-sim load` from `devices` devices `dev-…` at `rate` events/s of
    /// `mix`, writing `ledger`, until stopped with [`Sim::finish_load`].
    pub fn ledger_load(
        dir: &Path,
        gateway_mqtt: &str,
        devices: usize,
        rate: u32,
        mix: &str,
        ledger: &Path,
    ) -> Self {
        Self::run(
            dir,
            gateway_mqtt,
            &[
                "load",
                "--devices",
                &devices.to_string(),
                "--prefix",
                "dev-",
                "--rate",
                &rate.to_string(),
                "--duration",
                "600",
                "--mix",
                mix,
                "--ledger",
                ledger.to_str().expect("utf-8 path"),
                "--drain",
                "120",
            ],
        )
    }

    /// Stops a [`Sim::ledger_load`]: the devices drain their outboxes and
    /// exit. Returns the summary line and how many events were `stored`.
    pub async fn finish_load(&mut self) -> (String, u64) {
        self.proc.terminate();
        let summary = self.line_starting("load ", Duration::from_secs(180)).await;
        assert_eq!(field(&summary, "outstanding"), Some("0"), "{summary}");
        let stored = field(&summary, "stored")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no stored count in {summary}"));
        assert_eq!(self.proc.wait_exit(PATIENCE).await, Some(0));
        (summary, stored)
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
            "--token",
            TEST_ADMIN_TOKEN,
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

/// Runs the checker and asserts nothing was lost or doubled: every event
/// the ledger says was acked `stored` is at the server exactly once.
pub async fn verify_clean(dir: &Path, ledger: &Path, server_http: &str) -> Verdict {
    let verdict = verify_ledger(dir, ledger, server_http).await;
    assert_eq!(verdict.exit_code, Some(0), "{:?}", verdict.lines);
    assert!(
        verdict.report.contains("missing=0 duplicated=0"),
        "{}",
        verdict.report
    );
    verdict
}

/// A field `key=value` from a sim output line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

/// `deploy/dev-stack.sh` as a newcomer starts it (without this test's
/// package variables, which would rebuild ring and what uses it), its
/// state in `state`, with `env` (ports); its stdout and stderr lines as
/// they come.
/// The first alert of `device` that `GET alerts_url` lists for `token`;
/// `None` while there is none or the server cannot answer.
pub async fn listed_alert(
    alerts_url: &str,
    token: &str,
    device: &str,
) -> Option<serde_json::Value> {
    let body: serde_json::Value = reqwest::Client::new()
        .get(alerts_url)
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["deviceId"] == device)
        .cloned()
}

pub fn spawn_dev_stack(state: &Path, env: &[(&str, String)]) -> (Child, mpsc::Receiver<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut bash = Command::new("bash");
    without_test_package_env(&mut bash)
        .arg(root.join("deploy/dev-stack.sh"))
        .current_dir(&root)
        .env("ANXIN_STACK_DIR", state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    for (k, v) in env {
        bash.env(k, v);
    }
    let mut child = bash.spawn().expect("running deploy/dev-stack.sh");
    let (tx, lines) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    (child, lines)
}

/// Reads the dev stack's lines into `seen` until one satisfies `done`;
/// fails with what it printed if the stack exits or 300 s pass.
pub fn dev_stack_until(
    child: &mut Child,
    lines: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    done: impl Fn(&str) -> bool,
) -> String {
    let started = Instant::now();
    loop {
        if let Some(line) = seen.iter().find(|l| done(l)) {
            return line.clone();
        }
        match lines.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => seen.push(line),
            Err(_) => assert!(
                started.elapsed() < Duration::from_secs(300) && child.try_wait().unwrap().is_none(),
                "the stack did not come up; it printed:\n{}",
                seen.join("\n")
            ),
        }
    }
}
