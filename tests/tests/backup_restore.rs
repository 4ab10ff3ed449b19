//! Backup and restore (issue 19), on the engine the store matrix names.
//!
//! A backup made while devices keep sending (sled: by the running server
//! over its control socket; PostgreSQL: pg_dump) restores into a fresh
//! directory or database as one consistent moment: `store check` passes,
//! its audit log is a prefix of the source's, every event and alert in it
//! is the source's, and everything acknowledged before the backup began is
//! there. A backup of a quiet server restores identical: every alert,
//! event, audit entry, resident, device, staff member and token. A server
//! started on the restored store serves the alerts, numbers a new alarm
//! after the old ones and continues the audit chain.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Output},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use anxin_proto::v1::{Alert, AuditEntry, AuditQuery, DeviceRecord, Resident, Staff};
use anxin_server::{store::StoredEvent, store::directory::TokenRecord};
use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, StoreEngine, binary, eventually, load_devices, logged,
    scratch_database, store_engine,
};

/// Everything the restore must bring back, read through the store's API.
#[derive(Debug, PartialEq)]
struct Contents {
    audit: Vec<AuditEntry>,
    alerts: Vec<Alert>,
    events: BTreeMap<String, Vec<StoredEvent>>,
    residents: Vec<Resident>,
    devices: Vec<DeviceRecord>,
    staff: Vec<Staff>,
    tokens: Vec<(String, TokenRecord)>,
}

async fn open(config: &Path) -> anxin_server::store::Store {
    let config = anxin_server::config::ServerConfig::load(config).expect("config");
    anxin_server::store::open(&config.store.engine())
        .await
        .expect("opening the store")
}

fn contents(store: &anxin_server::store::Store) -> Contents {
    let devices = store.devices().unwrap();
    let mut device_ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    device_ids.extend(load_devices(10));
    let staff = store.staff().unwrap();
    let mut tokens = store.tokens_of("gateway", "gw-test").unwrap();
    for person in &staff {
        tokens.extend(store.tokens_of("staff", &person.id).unwrap());
    }
    Contents {
        audit: store.query(&AuditQuery::default()).unwrap(),
        alerts: store.alerts(&[]).unwrap(),
        events: device_ids
            .into_iter()
            .map(|id| {
                let events = store.device_events(&id).unwrap();
                (id, events)
            })
            .collect(),
        residents: store.residents().unwrap(),
        devices,
        staff,
        tokens,
    }
}

fn cli(config: &Path, args: &[&str]) -> Output {
    logged(
        &format!("anxin-server {args:?}"),
        Command::new(binary("anxin-server"))
            .arg("--config")
            .arg(config)
            .args(args),
    )
}

/// A config for restoring into a fresh store: a new directory (sled) or a
/// new, empty database (PostgreSQL).
async fn fresh_store(dir: &Path) -> (std::path::PathBuf, Option<String>) {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("restore.toml");
    let mut text = format!(
        "[store]\npath = \"{}\"\n",
        dir.join("server-data").display()
    );
    let database = match store_engine() {
        StoreEngine::Sled => None,
        StoreEngine::Postgres => {
            let url = scratch_database().await;
            text.push_str(&format!("backend = \"postgres\"\nurl = \"{url}\"\n"));
            Some(url)
        }
    };
    std::fs::write(&config, text).unwrap();
    (config, database)
}

fn last_action(audit: &[AuditEntry]) -> &str {
    &audit.last().expect("an audit entry").action
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_consistent_and_a_quiet_one_identical() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("source");
    std::fs::create_dir_all(&home).unwrap();
    let mut server = Server::start(&home).await;
    server.add_community("c-a").await;
    server.add_resident("r-1", "c-a", &["btn-1"]).await;
    server.add_resident("r-2", "c-a", &["btn-2"]).await;
    let carer = server
        .add_staff("carer-1", "carer", &["c-a"], serde_json::json!({}))
        .await;
    let mut devices: Vec<String> = load_devices(10);
    devices.extend(["btn-1".to_string(), "btn-2".to_string()]);
    let gateway = Gateway::start_for_load(&home, server.grpc_port, &devices, &[]).await;
    Sim::press_until_stored(&home, &gateway.mqtt(), "btn-1").await;
    let first = eventually("the first alarm offered", PATIENCE, || async {
        server
            .alerts()
            .await
            .first()
            .map(|a| a["id"].as_str().unwrap().to_string())
    })
    .await;
    let (status, _) = server
        .call("POST", &format!("/api/v1/alerts/{first}/ack"), &carer, None)
        .await;
    assert_eq!(status, 200);

    // Devices keep sending (a fifth of it alarms) while the backup runs.
    let ledger = home.join("ledger.jsonl");
    let mut load = Sim::ledger_load(&home, &gateway.mqtt(), 10, 200, "p0=0.05,p3=0.95", &ledger);
    let flowing = server.event_count().await;
    eventually("events to flow", PATIENCE, || async {
        (server.event_count().await > flowing + 500).then_some(())
    })
    .await;
    let before = {
        let store_view = server.alerts().await;
        (server.event_count().await, store_view.len())
    };
    let under_load = dir.path().join("backup-under-load");
    let output = cli(
        server.config_path(),
        &["backup", "--to", under_load.to_str().unwrap()],
    );
    assert!(output.status.success());
    let printed = String::from_utf8_lossy(&output.stderr);
    if store_engine() == StoreEngine::Sled {
        assert!(
            printed.contains("made by the running server"),
            "the online backup goes through the server: {printed}"
        );
    }
    let after_backup = server.event_count().await;
    assert!(
        after_backup > before.0,
        "the load kept flowing during the backup"
    );
    // A second backup into the same directory is refused: it is not empty.
    let again = cli(
        server.config_path(),
        &["backup", "--to", under_load.to_str().unwrap()],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    if store_engine() == StoreEngine::Sled {
        assert_eq!(
            server.metric("anxin_server_backups_failed_total").await,
            1.0
        );
        // A request the control socket cannot take: refused, counted, audited.
        let socket = home.join("server-data").join("anxin.control");
        let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        stream
            .write_all(b"{\"backup\": \"relative/dir\"}\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.contains("absolute path"), "{answer}");
        assert_eq!(
            server
                .metric("anxin_server_control_refused_total{reason=\"relative_path\"}")
                .await,
            1.0
        );
    }

    load.finish_load().await;
    gateway.wait_drained(PATIENCE).await;
    drop(gateway);

    // The quiet backup: nothing moves while it is made.
    let quiet = dir.path().join("backup-quiet");
    let output = cli(
        server.config_path(),
        &["backup", "--to", quiet.to_str().unwrap()],
    );
    assert!(output.status.success());
    server.proc.terminate();
    server.proc.wait_exit(PATIENCE).await;
    assert!(
        cli(server.config_path(), &["store", "check"])
            .status
            .success(),
        "the source checks clean"
    );
    let source = contents(&open(server.config_path()).await);
    assert_eq!(last_action(&source.audit), "store.backup");
    let failed = source
        .audit
        .iter()
        .find(|e| e.action == "store.backup.failed")
        .expect("the refused second backup is audited");
    assert!(failed.detail.contains("not empty"), "{failed:?}");
    if store_engine() == StoreEngine::Sled {
        let refused = source
            .audit
            .iter()
            .find(|e| e.action == "store.backup.refused")
            .expect("the control socket's refusal is audited");
        assert!(refused.detail.contains("absolute path"), "{refused:?}");
        assert!(refused.actor.contains("control socket"), "{refused:?}");
    }

    // Under load: one consistent moment of the source.
    let (config, _) = fresh_store(&dir.path().join("restored-under-load")).await;
    let output = cli(
        &config,
        &["restore", "--from", under_load.to_str().unwrap()],
    );
    assert!(
        output.status.success(),
        "restore (with its store check) passes"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("store check: ok"));
    let restored = contents(&open(&config).await);
    assert_eq!(last_action(&restored.audit), "store.restore");
    let kept = &restored.audit[..restored.audit.len() - 1];
    assert_eq!(
        kept,
        &source.audit[..kept.len()],
        "the restored audit log is a prefix of the source's"
    );
    assert!(restored.alerts.len() >= before.1);
    for alert in &restored.alerts {
        assert!(
            source.alerts.iter().any(|a| a.id == alert.id),
            "alert {} is the source's",
            alert.id
        );
    }
    let mut restored_events = 0;
    for (device, events) in &restored.events {
        for event in events {
            restored_events += 1;
            assert!(
                source.events[device].contains(event),
                "{device} event {event:?} is the source's"
            );
        }
    }
    assert!(
        restored_events >= before.0,
        "every event committed before the backup began is there ({restored_events} < {})",
        before.0
    );
    assert!(
        restored_events < source.events.values().map(Vec::len).sum::<usize>() as u64,
        "the backup stands for a moment during the load, not its end"
    );
    assert_eq!(restored.residents, source.residents);
    assert_eq!(restored.devices, source.devices);
    assert_eq!(restored.staff, source.staff);

    // Quiet: identical, but for each side's own last audit entry (the
    // backup's on the source, the restore's on the copy).
    let (config, database) = fresh_store(&dir.path().join("restored-quiet")).await;
    let output = cli(&config, &["restore", "--from", quiet.to_str().unwrap()]);
    assert!(output.status.success());
    let mut restored = contents(&open(&config).await);
    assert_eq!(restored.audit.pop().unwrap().action, "store.restore");
    let mut expected = source;
    assert_eq!(expected.audit.pop().unwrap().action, "store.backup");
    let events: usize = expected.events.values().map(Vec::len).sum();
    eprintln!(
        "quiet backup: {} alerts, {events} events, {} audit entries",
        expected.alerts.len(),
        expected.audit.len()
    );
    assert!(
        expected.alerts.len() >= 2 && events > 500,
        "the comparison has records to compare"
    );
    assert_eq!(restored, expected, "the quiet backup restores identical");

    // A restore never overwrites a store.
    let output = cli(&config, &["restore", "--from", quiet.to_str().unwrap()]);
    assert!(!output.status.success());

    // The restored store serves: the old alerts, a new alarm numbered
    // after them, and the audit chain continues.
    let home = dir.path().join("restored-quiet");
    let server = match &database {
        Some(url) => Server::start_replica(&home, url, &[]).await,
        None => Server::start(&home).await,
    };
    assert_eq!(server.alert(&first).await["id"], first.as_str());
    let highest_old = expected
        .alerts
        .iter()
        .map(|a| a.id.parse::<u64>().unwrap())
        .max()
        .unwrap();
    let gateway = Gateway::start(&home, server.grpc_port, &["btn-2"]).await;
    Sim::press_until_stored(&home, &gateway.mqtt(), "btn-2").await;
    eventually(
        "a new alarm numbered after the restored ones",
        PATIENCE,
        || async {
            server
                .alerts()
                .await
                .iter()
                .any(|a| {
                    a["id"]
                        .as_str()
                        .and_then(|id| id.parse::<u64>().ok())
                        .is_some_and(|id| id > highest_old)
                })
                .then_some(())
        },
    )
    .await;
    drop(gateway);
    let mut server = server;
    server.proc.terminate();
    server.proc.wait_exit(PATIENCE).await;
    let verify = cli(&config, &["audit", "verify"]);
    assert!(
        verify.status.success(),
        "the audit chain holds across the restore"
    );
}
