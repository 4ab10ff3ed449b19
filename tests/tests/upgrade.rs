//! Upgrades (issue 19): a store written by an earlier build opens with this
//! one, on the engine the store matrix names.
//!
//! `tests/fixtures/upgrade` holds a sled store and a PostgreSQL dump made by
//! `make-fixture.sh` from the commit in `FROM` (before retention's indexes,
//! PostgreSQL migration 6 and sled's spans of plain events): two alerts, one
//! acknowledged, and eight telemetry and heartbeat events. This build must
//! serve what that one served, pass `store check` and `audit verify`, number
//! a new alarm after the old ones, and prune the old store's plain events
//! by its retention policy.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anxin_tests::{
    Gateway, PATIENCE, Server, Sim, StoreEngine, binary, eventually, logged, scratch_database,
    store_engine,
};
use serde_json::Value;

const DISPATCHER: &str = "fixture-dispatcher-zhang";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/upgrade")
}

/// The queue as the fixture recorded it: the fields an upgrade must keep
/// (not the state: an offer may move on with the shifts of the day).
async fn queue(server: &Server) -> Vec<Value> {
    let (status, body) = server.call("GET", "/api/v1/alerts", DISPATCHER, None).await;
    assert_eq!(status, 200, "{body}");
    let keys = [
        "id",
        "deviceId",
        "residentId",
        "kind",
        "createdMs",
        "acknowledgedMs",
        "acknowledgedBy",
    ];
    let mut alerts: Vec<Value> = body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            keys.iter()
                .map(|k| (k.to_string(), a.get(*k).cloned().unwrap_or(Value::Null)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect();
    alerts.sort_by_key(|a| a["id"].as_str().unwrap().to_string());
    alerts
}

/// Starts this build's server on the fixture's store; its name in
/// `expected.json`.
async fn server_on_fixture(home: &Path) -> (Server, &'static str) {
    match store_engine() {
        StoreEngine::Sled => {
            let data = home.join("server-data");
            std::fs::create_dir_all(&data).unwrap();
            let untar = logged(
                "unpacking the sled fixture",
                Command::new("tar")
                    .arg("-C")
                    .arg(&data)
                    .arg("-xzf")
                    .arg(fixture().join("sled-store.tar.gz")),
            );
            assert!(untar.status.success());
            (Server::start_on_store(home, None, &[]).await, "sled")
        }
        StoreEngine::Postgres => {
            let url = scratch_database().await;
            let load = logged(
                "loading the PostgreSQL fixture",
                Command::new("bash").arg("-c").arg(format!(
                    "set -o pipefail; gunzip -c '{}' | psql -q -v ON_ERROR_STOP=1 '{url}'",
                    fixture().join("postgres.sql.gz").display()
                )),
            );
            assert!(load.status.success());
            (
                Server::start_on_store(home, Some(&url), &[]).await,
                "postgres",
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_by_an_earlier_build_is_served_whole_and_pruned_by_policy() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("server");
    std::fs::create_dir_all(&home).unwrap();
    let (mut server, engine) = server_on_fixture(&home).await;

    // As that build served them (a check-in judged since the fixture was
    // made may add an alert of its own: the old ones must all be there).
    let old: Vec<Value> = expected[engine].as_array().unwrap().clone();
    assert_eq!(old.len(), 2);
    let served = queue(&server).await;
    for alert in &old {
        assert!(
            served.contains(alert),
            "{alert} is not served as it was: {served:?}"
        );
    }
    assert_eq!(server.events_for("btn-0001").await.len(), 9);
    assert_eq!(server.events_for("btn-0002").await.len(), 1);

    // A new alarm is numbered after the old ones.
    server.add_resident("r-new", "c-heping", &["btn-new"]).await;
    let gateway = Gateway::start(&home, server.grpc_port, &["btn-new"]).await;
    Sim::press_until_stored(&home, &gateway.mqtt(), "btn-new").await;
    let newest = eventually("the new alarm in the queue", PATIENCE, || async {
        queue(&server)
            .await
            .iter()
            .find(|a| a["deviceId"] == "btn-new")
            .map(|a| a["id"].as_str().unwrap().parse::<u64>().unwrap())
    })
    .await;
    let old_max = old
        .iter()
        .map(|a| a["id"].as_str().unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert!(newest > old_max, "alert {newest} after {old_max}");
    drop(gateway);

    // Retention prunes the old store's plain events (received when the
    // fixture was made, long before now) and keeps the alerts' own.
    let database = server.database();
    server.proc.terminate();
    server.proc.wait_exit(PATIENCE).await;
    drop(server);
    let mut server = Server::start_on_store(
        &home,
        database.as_deref(),
        &[
            ("retention", "events = \"60s\""),
            ("retention", "interval_secs = 1"),
        ],
    )
    .await;
    eventually("the old telemetry pruned", PATIENCE, || async {
        (server.events_for("btn-0001").await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(server.events_for("btn-0002").await.len(), 1, "its alarm's");
    assert_eq!(server.events_for("btn-new").await.len(), 1, "its alarm's");
    let served = queue(&server).await;
    assert!(old.iter().all(|alert| served.contains(alert)));

    server.proc.terminate();
    server.proc.wait_exit(PATIENCE).await;
    let config = server.config_path().to_path_buf();
    drop(server);
    for args in [["store", "check"], ["audit", "verify"]] {
        let output = logged(
            &args.join(" "),
            Command::new(binary("anxin-server"))
                .arg("--config")
                .arg(&config)
                .args(args),
        );
        assert!(output.status.success(), "{args:?} on the upgraded store");
    }
}
