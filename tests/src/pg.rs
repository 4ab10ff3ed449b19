//! A PostgreSQL server of the test's own (Debian's binaries, a fresh data
//! directory, a free port), for faults the machine's shared server must
//! not suffer: SIGKILL of the postmaster and a restart with crash recovery.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{PATIENCE, Proc, eventually, free_port};

pub struct PgInstance {
    proc: Option<Proc>,
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    uid: u32,
    dir: PathBuf,
}

/// Debian's server binaries, newest version first.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn uid_of(user: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", user]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

impl PgInstance {
    /// Makes and starts a server in `dir`; `Err` says why it cannot here
    /// (no binaries, not root, no `postgres` user).
    pub async fn start(dir: &Path) -> Result<Self, String> {
        let bin = server_bin().ok_or("no PostgreSQL server binaries under /usr/lib/postgresql")?;
        if not_root() {
            return Err("running a PostgreSQL server of the test's own needs root".into());
        }
        let uid = uid_of("postgres").ok_or("no postgres user")?;
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .map_err(|e| e.to_string())?;
        if !chown.success() {
            return Err("chown of the data directory failed".into());
        }
        let initdb = Command::new(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .uid(uid)
            .output()
            .map_err(|e| e.to_string())?;
        if !initdb.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr)
            ));
        }
        let mut instance = Self {
            proc: None,
            port: free_port(),
            bin,
            data,
            uid,
            dir: dir.to_path_buf(),
        };
        instance.run().await;
        Ok(instance)
    }

    /// (Re)starts the postmaster on the same data and port, and waits until
    /// it answers (after crash recovery, if it was killed).
    pub async fn run(&mut self) {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
            .uid(self.uid);
        self.proc = Some(Proc::spawn("postgres", cmd, self.dir.join("postgres.log")));
        let url = self.url("postgres");
        eventually("the test's PostgreSQL to answer", PATIENCE, || async {
            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                // Refused by pg_hba.conf (a server that takes TLS only)
                // is answering too.
                Ok(_) => Some(()),
                Err(err) if err.as_db_error().is_some() => Some(()),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    None
                }
            }
        })
        .await;
    }

    /// SIGKILL of the postmaster: its backends see it gone and stop; the
    /// next start runs crash recovery from the WAL.
    pub async fn kill9(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9();
        }
        // Backends of the dead postmaster leave within moments; a new
        // postmaster refuses to start while they hold the shared memory.
        let pid_file = self.data.join("postmaster.pid");
        for _ in 0..100 {
            if !pid_file.exists() {
                break;
            }
            let still_running = Command::new("pgrep")
                .args(["-u", "postgres", "-f", &self.data.display().to_string()])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if !still_running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes the server take TLS only: `cert` and `key` (PEM) installed in
    /// its data directory, `ssl = on`, and pg_hba.conf refusing every TCP
    /// connection without TLS. Reloaded, not restarted.
    pub async fn require_tls(&self, cert: &Path, key: &Path) {
        for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
            let to = self.data.join(name);
            std::fs::copy(from, &to).unwrap();
            std::os::unix::fs::chown(&to, Some(self.uid), None).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(
            self.data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        self.execute("alter system set ssl = on").await;
        self.execute("select pg_reload_conf()").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        self.execute(&format!("create database {name}")).await;
        self.url(name)
    }

    /// Runs one statement as the superuser, on the `postgres` database.
    pub async fn execute(&self, sql: &str) {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connecting to the test's PostgreSQL");
        tokio::spawn(connection);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }
}

fn not_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() != "0")
        .unwrap_or(true)
}
