//! The operator commands of `anxin-server` (`migrate`, `certs`, `audit
//! verify`, `store check`, `backup`, `restore`, `import`, `--seed`): each
//! opens what it needs, does one job, prints its answer on stdout and
//! exits. They run beside the server's wiring in `main.rs`, at the top of
//! the layers, and use the library's desks and store like any caller.

pub mod certs;
pub mod seed;

use std::sync::Arc;

use anxin_server::{
    config::ServerConfig,
    desks::admin::AdminDesk,
    store::Backend,
    store::{
        self, Store,
        backup::{Job, Outcome},
    },
};
use anyhow::Context;

pub async fn verify_audit(config: ServerConfig) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let entries = store
        .query(&Default::default())
        .context("reading the audit log")?;
    let anchor = store
        .audit_anchor()
        .context("reading the audit chain's anchor")?;
    let report = store::verify_chain(anchor.as_ref(), entries);
    match (report.broken_at, &report.problem) {
        (Some(id), Some(problem)) => {
            println!(
                "audit chain BROKEN at entry {id}: {problem} ({} entries read)",
                report.entries
            );
            println!("last good head {}", report.head);
            std::process::exit(1);
        }
        _ => {
            println!(
                "audit chain ok: {} entries ({} from before the chain), head {}",
                report.entries, report.unchained, report.head
            );
            if report.pruned_through > 0 {
                println!(
                    "entries up to {} were removed by retention; the chain was checked from the anchor they left",
                    report.pruned_through
                );
            }
            Ok(())
        }
    }
}

pub async fn check_store(config: ServerConfig) -> anyhow::Result<()> {
    let store = match store::open(&config.store.engine()).await {
        Ok(store) => store,
        Err(err @ store::StoreError::Damaged(_)) => {
            println!(
                "store check: {} cannot be opened: {err}",
                store_location(&config)
            );
            std::process::exit(1);
        }
        Err(err) => {
            return Err(err).with_context(|| {
                format!(
                    "opening {} (sled: is a server running on it? stop it first)",
                    store_location(&config)
                )
            });
        }
    };
    let report = tokio::task::spawn_blocking(move || store.check()).await?;
    for (kind, records) in &report.counts {
        println!("{kind:>24}  {records} records");
    }
    if report.is_ok() {
        println!("store check: ok");
        return Ok(());
    }
    for problem in &report.problems {
        println!("PROBLEM {problem}");
    }
    if report.more_problems > 0 {
        println!("… and {} more problems", report.more_problems);
    }
    println!(
        "store check: {} problems; restore the last backup (docs/operations.md, \"A damaged store\")",
        report.problems.len() as u64 + report.more_problems
    );
    std::process::exit(1);
}

/// Progress on stderr: each kind once it is done, and every 100,000
/// records of a big one.
fn progress_printer() -> impl FnMut(&str, u64) {
    let mut last = (String::new(), 0u64);
    move |kind: &str, records: u64| {
        if kind != last.0 {
            if !last.0.is_empty() {
                eprintln!("  {:<20} {} records", last.0, last.1);
            }
            last = (kind.to_string(), 0);
        } else if records / 100_000 > last.1 / 100_000 {
            eprintln!("  {kind:<20} {records} records …");
        }
        last.1 = records;
    }
}

/// Who ran this command, for the audit log: /proc/self belongs to the
/// process's user (no libc call needed).
fn operator() -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self") {
        Ok(meta) => format!("operator (uid {}, command line)", meta.uid()),
        Err(_) => "operator (command line)".into(),
    }
}

pub async fn backup(config: ServerConfig, to: &std::path::Path) -> anyhow::Result<()> {
    let to = std::path::absolute(to).context("the backup directory")?;
    let mut progress = progress_printer();
    let manifest = match config.store.backend {
        Backend::Sled => {
            let socket = anxin_server::tasks::control::socket_path(&config.store.path);
            match anxin_server::tasks::control::request_backup(&socket, &to, &mut progress)
                .await
                .context("backing up through the running server")?
            {
                Some(manifest) => {
                    progress("", 0);
                    eprintln!("made by the running server (its audit log has the entry)");
                    manifest
                }
                None => {
                    let store = open_store(&config).await?;
                    let copying = store.clone();
                    let target = to.clone();
                    let made = tokio::task::spawn_blocking(move || {
                        copying.backup(&target, &mut progress_printer())
                    })
                    .await?;
                    // The backup's own error first; the audit's, if any, after.
                    let audited = audit_store_job(&store, Job::Backup, &to, &made).await;
                    let manifest = made.context("backing up")?;
                    audited?;
                    manifest
                }
            }
        }
        Backend::Postgres => {
            let url = config.store.url.clone();
            let target = to.clone();
            let made =
                tokio::task::spawn_blocking(move || store::backup::postgres_backup(&url, &target))
                    .await?;
            let audited = match open_store(&config).await {
                Ok(store) => audit_store_job(&store, Job::Backup, &to, &made).await,
                Err(err) => Err(err),
            };
            let manifest = made.context("backing up with pg_dump")?;
            audited?;
            manifest
        }
    };
    for tree in &manifest.trees {
        println!("{:>24}  {} records", tree.name, tree.records);
    }
    println!(
        "backup complete: {} ({} store as of {} ms since the epoch)",
        to.display(),
        manifest.engine,
        manifest.cut_ms
    );
    Ok(())
}

/// Audits a backup or restore made by this command, made or not.
async fn audit_store_job(
    store: &Store,
    job: Job,
    dir: &std::path::Path,
    made: &Result<store::backup::Manifest, store::StoreError>,
) -> anyhow::Result<()> {
    let why;
    let outcome = match made {
        Ok(manifest) => Outcome::Made(manifest),
        Err(err) => {
            why = err.to_string();
            Outcome::Failed(&why)
        }
    };
    store
        .append(store::backup::audit_entry(
            job,
            operator(),
            Some(dir),
            outcome,
        ))
        .context("writing the audit entry")?;
    store.flush().await.context("flushing the store")?;
    store.seal().context("sealing the store")?;
    Ok(())
}

pub async fn restore(config: ServerConfig, from: &std::path::Path) -> anyhow::Result<()> {
    let manifest = match config.store.backend {
        Backend::Sled => {
            let (from, to) = (from.to_path_buf(), config.store.path.clone());
            tokio::task::spawn_blocking(move || {
                store::sled::restore(&from, &to, &mut progress_printer())
            })
            .await?
            .with_context(|| format!("restoring into {}", store_location(&config)))?
        }
        Backend::Postgres => store::backup::postgres_restore(&config.store.url, from)
            .await
            .with_context(|| format!("restoring into {}", store_location(&config)))?,
    };
    let store = open_store(&config).await?;
    audit_store_job(&store, Job::Restore, from, &Ok(manifest.clone())).await?;
    println!(
        "restored the {} store as of {} ms since the epoch into {}; checking it",
        manifest.engine,
        manifest.cut_ms,
        store_location(&config)
    );
    drop(store);
    check_store(config).await
}

pub async fn migrate(config: ServerConfig, to: &str) -> anyhow::Result<()> {
    let from = store::sled::SledStore::open(&config.store.path).with_context(|| {
        format!(
            "opening the sled store at store.path {}",
            config.store.path.display()
        )
    })?;
    let target = store::postgres::PgStore::connect(to, 2)
        .await
        .with_context(|| format!("connecting to {}", redact_url(to)))?;
    println!(
        "migrating {} -> {}",
        config.store.path.display(),
        redact_url(to)
    );
    let ack_target_ms = (config.reports.ack_target_secs * 1000) as i64;
    let migration = store::migrate::sled_to_postgres(&from, &target, ack_target_ms, |kind, n| {
        println!("copied {kind} {n}");
    })
    .await
    .context("migrating")?;
    for tally in &migration.tallies {
        let mark = if tally.sled == tally.postgres {
            "ok"
        } else {
            "MISMATCH"
        };
        println!(
            "count {} sled={} postgres={} {mark}",
            tally.kind, tally.sled, tally.postgres
        );
    }
    let same = migration.report_before == migration.report_after;
    println!(
        "report {} ({} lines)",
        if same { "identical" } else { "DIFFERS" },
        migration.report_before.lines().count()
    );
    if !migration.checked() {
        anyhow::bail!("the copy does not match the sled store; do not switch to it");
    }
    println!("migrated: set store.backend = \"postgres\" and store.url, then start the replicas");
    Ok(())
}

/// Where the config says the store is, for error messages.
pub fn store_location(config: &ServerConfig) -> String {
    match config.store.backend {
        Backend::Sled => format!("store.path {}", config.store.path.display()),
        Backend::Postgres => format!("store.url {}", redact_url(&config.store.url)),
    }
}

/// A connection URL without its password, for logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

pub async fn open_store(config: &ServerConfig) -> anyhow::Result<Store> {
    store::open(&config.store.engine())
        .await
        .with_context(|| format!("opening {}", store_location(config)))
}

pub async fn import_file(
    config: ServerConfig,
    kind: &str,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    let store = open_store(&config).await.context(
        "a running server holds a sled store: stop it first, or POST the file to its /api/v1/import/{kind}",
    )?;
    let admin = AdminDesk::new(store.clone(), 0, Arc::default());
    let started = std::time::Instant::now();
    let report = admin
        .import(
            &anxin_server::domain::rights::Principal::Admin,
            kind,
            anxin_server::desks::admin::ImportSource::File(file.to_path_buf()),
            move |p| {
                eprintln!(
                    "{:>7.1} s  {} {} rows",
                    started.elapsed().as_secs_f64(),
                    p.phase,
                    p.rows
                )
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store.flush().await.context("flushing the store")?;
    store.seal().context("sealing the store")?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.rejected.is_empty() {
        eprintln!(
            "nothing imported: {} bad rows (the first {} listed by line)",
            report.rejected.len() as u64 + report.more_rejected,
            report.rejected.len()
        );
        std::process::exit(1);
    }
    eprintln!(
        "imported {} {kind} rows in {:.1} s",
        report.imported,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub async fn seed_directory(config: ServerConfig, seed: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(seed)
        .with_context(|| format!("reading the seed file {}", seed.display()))?;
    let store = open_store(&config).await?;
    let admin = AdminDesk::new(store.clone(), 0, Arc::default());
    let written =
        seed::apply(&admin, &text).with_context(|| format!("seeding from {}", seed.display()))?;
    store.flush().await.context("flushing the store")?;
    store.seal().context("sealing the store")?;
    tracing::info!(written, seed = %seed.display(), "directory seeded");
    Ok(())
}
