//! The audit log is tamper-evident: an entry edited in the store behind
//! the server's back is found by `anxin-server audit verify` (exit 1, the
//! entry's id) and by `GET /api/v1/audit/verify`, on either engine.

use anxin_proto::v1::AuditEntry;
use anxin_tests::{PATIENCE, Server, binary};
use prost::Message;

/// Rewrites one audit entry's detail directly in the server's store (the
/// server stopped), as someone with access to the disk or the database
/// could.
async fn tamper(server: &Server, id: u64) {
    match server.database() {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let row = client
                .query_one("select body from audit where id = $1", &[&(id as i64)])
                .await
                .unwrap();
            let mut entry = AuditEntry::decode(row.get::<_, &[u8]>(0)).unwrap();
            entry.detail = "nothing to see here".into();
            let changed = client
                .execute(
                    "update audit set body = $2 where id = $1",
                    &[&(id as i64), &entry.encode_to_vec()],
                )
                .await
                .unwrap();
            assert_eq!(changed, 1, "entry {id} rewritten in {url}");
        }
        None => {
            let db =
                sled::open(server.config_path().parent().unwrap().join("server-data")).unwrap();
            let audit = db.open_tree("audit").unwrap();
            let bytes = audit.get(id.to_be_bytes()).unwrap().expect("the entry");
            let mut entry = AuditEntry::decode(bytes.as_ref()).unwrap();
            entry.detail = "nothing to see here".into();
            audit
                .insert(id.to_be_bytes(), entry.encode_to_vec())
                .unwrap();
            db.flush().unwrap();
        }
    }
}

async fn verify_offline(server: &Server) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(binary("anxin-server"))
        .args(["audit", "verify", "--config"])
        .arg(server.config_path())
        .output()
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_audit_entry_is_found_by_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    server.add_community("c-a").await;
    server.add_resident("r-1", "c-a", &["btn-1"]).await;
    server
        .add_staff("carer-1", "carer", &["c-a"], serde_json::json!({}))
        .await;
    let clean = server.get("/api/v1/audit/verify").await;
    assert!(clean["brokenAt"].is_null(), "{clean}");
    let entries = server.get("/api/v1/audit").await["entries"]
        .as_array()
        .cloned()
        .unwrap();
    assert!(entries.len() >= 5, "{entries:?}");
    let victim: u64 = entries[2]["id"].as_str().unwrap().parse().unwrap();

    server.proc.terminate();
    server.proc.wait_exit(PATIENCE).await;
    let (code, printed) = verify_offline(&server).await;
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.starts_with("audit chain ok"), "{printed}");

    tamper(&server, victim).await;
    let (code, printed) = verify_offline(&server).await;
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains(&format!("BROKEN at entry {victim}:")),
        "{printed}"
    );

    server.restart_clean().await;
    let report = server.get("/api/v1/audit/verify").await;
    assert_eq!(report["brokenAt"], victim, "{report}");
}
