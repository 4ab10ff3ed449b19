//! Backups (`anxin-server backup --to DIR`, `restore --from DIR`).
//!
//! sled: the server's own consistent copy (see `sled/backup.rs`), made by
//! the running server when asked over its control socket, or by the
//! command itself when no server holds the store. PostgreSQL: the standard
//! tools, `pg_dump --format=directory` (one snapshot: consistent while the
//! replicas serve) and `pg_restore --single-transaction` into an empty
//! database. Either way the directory holds `manifest.json`, written last:
//! a backup without one is incomplete and is not restored.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde::{Deserialize, Serialize};

use super::StoreError;

/// What a backup directory holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: u32,
    /// "sled" or "postgres".
    pub engine: String,
    pub server_version: String,
    pub started_ms: i64,
    /// The moment the copy stands for (sled: the cut; PostgreSQL: when
    /// pg_dump took its snapshot, at the latest).
    pub cut_ms: i64,
    /// sled: the id counter at the cut; a restored store starts past it.
    #[serde(default)]
    pub id_floor: u64,
    /// sled: every tree, by name, with its count and SHA-256.
    #[serde(default)]
    pub trees: Vec<TreeDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeDigest {
    pub name: String,
    pub records: u64,
    pub sha256: String,
}

pub(crate) fn io(err: std::io::Error) -> StoreError {
    StoreError::Storage(::sled::Error::Io(err))
}

/// An empty directory to write into (made when missing).
pub(crate) fn empty_dir(dir: &Path, what: &str) -> Result<(), StoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(StoreError::Refused(format!(
                    "{what} {} is not empty; give a new directory",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io)
        }
        Err(err) => Err(io(err)),
    }
}

impl Manifest {
    pub const FORMAT: u32 = 1;
    pub const FILE: &'static str = "manifest.json";
    pub const SLED_DIR: &'static str = "sled";
    pub const POSTGRES_DIR: &'static str = "postgres";

    /// Written last, atomically: its presence says the backup is whole.
    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        let text = serde_json::to_string_pretty(self).expect("a manifest serializes");
        anxin_host::disk::replace_file(&dir.join(Self::FILE), text.as_bytes()).map_err(io)
    }

    /// The manifest of the backup in `dir`, which must be of `engine`.
    pub fn read(dir: &Path, engine: &str) -> Result<Self, StoreError> {
        let path = dir.join(Self::FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Refused(format!(
                    "{} has no {}: it is not a backup, or one that did not finish",
                    dir.display(),
                    Self::FILE
                )));
            }
            Err(err) => return Err(io(err)),
        };
        let manifest: Self = serde_json::from_str(&text).map_err(|err| {
            StoreError::Damaged(format!("the backup's {} is damaged: {err}", path.display()))
        })?;
        if manifest.format != Self::FORMAT {
            return Err(StoreError::Refused(format!(
                "{} is a backup of format {}; this server reads format {}",
                dir.display(),
                manifest.format,
                Self::FORMAT
            )));
        }
        if manifest.engine != engine {
            return Err(StoreError::Refused(format!(
                "{} holds a backup of a {} store; store.backend is {engine}",
                dir.display(),
                manifest.engine
            )));
        }
        Ok(manifest)
    }
}

/// What an audit entry of a backup or a restore is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Backup,
    Restore,
}

/// How a backup or restore ended, for its audit entry.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    Made(&'a Manifest),
    /// Tried, and failed for this reason.
    Failed(&'a str),
    /// Not tried: the request could not be taken (control socket).
    Refused(&'a str),
}

/// The audit entry of a backup or a restore, however it was asked for (the
/// control socket or the command line): `store.backup` / `store.restore`
/// when it was made, `….failed` or `….refused` with the reason when not.
pub fn audit_entry(
    job: Job,
    actor: String,
    dir: Option<&Path>,
    outcome: Outcome<'_>,
) -> anxin_proto::v1::AuditEntry {
    let (action, preposition) = match job {
        Job::Backup => ("store.backup", "to"),
        Job::Restore => ("store.restore", "from"),
    };
    let (action, what) = match outcome {
        Outcome::Made(manifest) => {
            let records: u64 = manifest.trees.iter().map(|t| t.records).sum();
            let counted = if manifest.trees.is_empty() {
                String::new()
            } else {
                format!(", {records} records in {} trees", manifest.trees.len())
            };
            (
                action.to_string(),
                format!(
                    "a {} store as of {}{counted}",
                    manifest.engine, manifest.cut_ms
                ),
            )
        }
        Outcome::Failed(why) => (format!("{action}.failed"), why.to_string()),
        Outcome::Refused(why) => (format!("{action}.refused"), why.to_string()),
    };
    let detail = match dir {
        Some(dir) => format!("{preposition} {}: {what}", dir.display()),
        None => what,
    };
    anxin_proto::v1::AuditEntry {
        at_ms: anxin_proto::now_ms(),
        actor,
        action,
        target: "store".into(),
        detail,
        ..Default::default()
    }
}

/// Runs one of PostgreSQL's client tools; its own message on failure.
fn run_tool(mut command: Command, tool: &str) -> Result<(), StoreError> {
    let output = command.output().map_err(|err| {
        StoreError::Refused(format!(
            "{tool} cannot be run ({err}); install PostgreSQL's client tools \
             (Debian: postgresql-client) of the server's major version"
        ))
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(StoreError::Database(format!(
        "{tool} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// `pg_dump` of the database at `url` into `dir` (new or empty).
pub fn postgres_backup(url: &str, dir: &Path) -> Result<Manifest, StoreError> {
    empty_dir(dir, "the backup directory")?;
    let started_ms = anxin_proto::now_ms();
    let mut dump = Command::new("pg_dump");
    dump.arg("--format=directory")
        .arg("--no-owner")
        .arg("--no-privileges")
        .arg("--file")
        .arg(dir.join(Manifest::POSTGRES_DIR))
        .arg("--dbname")
        .arg(url);
    run_tool(dump, "pg_dump")?;
    let manifest = Manifest {
        format: Manifest::FORMAT,
        engine: "postgres".into(),
        server_version: env!("CARGO_PKG_VERSION").into(),
        started_ms,
        cut_ms: anxin_proto::now_ms(),
        id_floor: 0,
        trees: Vec::new(),
    };
    manifest.write(dir)?;
    Ok(manifest)
}

/// `pg_restore` of the backup in `from` into the empty database at `url`,
/// all or nothing.
pub async fn postgres_restore(url: &str, from: &Path) -> Result<Manifest, StoreError> {
    let manifest = Manifest::read(from, "postgres")?;
    let (client, connection) = crate::store::postgres::tls::connect(url)
        .await
        .map_err(StoreError::Database)?;
    let connection = tokio::spawn(connection);
    let tables: i64 = client
        .query_one(
            "select count(*) from information_schema.tables where table_schema = 'public'",
            &[],
        )
        .await
        .map_err(|err| StoreError::Database(err.to_string()))?
        .get(0);
    drop(client);
    let _ = connection.await;
    if tables > 0 {
        return Err(StoreError::Refused(format!(
            "the database at store.url already has {tables} tables; restore into a new, empty \
             database (createdb) and point store.url at it"
        )));
    }
    let dump: PathBuf = from.join(Manifest::POSTGRES_DIR);
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let mut restore = Command::new("pg_restore");
        restore
            .arg("--no-owner")
            .arg("--no-privileges")
            .arg("--exit-on-error")
            .arg("--single-transaction")
            .arg("--dbname")
            .arg(&url)
            .arg(&dump);
        run_tool(restore, "pg_restore")
    })
    .await
    .expect("pg_restore task panicked")?;
    Ok(manifest)
}
