//! A city's directory through the real server: a million-row CSV in one
//! request (streamed, all or nothing, progress as it goes), an import
//! killed while it is written, and paged lists that never leave the
//! caller's communities.

use std::fmt::Write as _;

use anxin_tests::{Server, TEST_ADMIN_TOKEN};

fn resident_rows(csv: &mut String, from: usize, to: usize, community: impl Fn(usize) -> String) {
    for i in from..to {
        let _ = writeln!(
            csv,
            "r-{i:07},居民 Resident {i},{},Building {} Room {},138{i:08},,,",
            community(i),
            i / 100,
            i % 100
        );
    }
}

const HEADER: &str =
    "id,name,community_id,address,phone,medical_notes,emergency_contacts,access_notes\n";

async fn import(server: &Server, csv: String, progress: bool) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/v1/import/residents", server.http()))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .header("content-type", "text/csv")
        .body(csv);
    if progress {
        request = request.header("accept", "application/x-ndjson");
    }
    let response = request.send().await.expect("import request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Every resident the caller can page through, following `next`.
async fn page_all(server: &Server, token: &str, filter: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = server
            .call(
                "GET",
                &format!("/api/v1/residents?limit=1000&after={after}{filter}"),
                token,
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        out.extend(page["residents"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_row_import_with_one_bad_row_imports_nothing_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    for c in 0..50 {
        server.add_community(&format!("c-{c:03}")).await;
    }
    let mut csv = String::from(HEADER);
    let community = |i: usize| format!("c-{:03}", i % 50);
    resident_rows(&mut csv, 0, 654_321, community);
    // Line 654,323 (the header is line 1): a community that does not exist.
    csv.push_str("r-bad,Bad Row,c-nowhere,Somewhere,,,,\n");
    resident_rows(&mut csv, 654_321, 1_000_000, community);
    assert!(
        csv.len() > 2 << 20,
        "bigger than the old 2 MB cap: {}",
        csv.len()
    );
    let (status, body) = import(&server, csv, true).await;
    assert_eq!(status, 200, "{body}");
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON value per line"))
        .collect();
    let checking = lines
        .iter()
        .filter(|l| l["progress"]["phase"] == "checking")
        .count();
    assert!(checking >= 100, "progress while checking: {checking} lines");
    let report = &lines.last().unwrap()["report"];
    assert_eq!(report["imported"], "0", "{report}");
    let rejected = report["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{report}");
    assert_eq!(rejected[0]["line"], "654323");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("c-nowhere"),
        "{report}"
    );
    // Nothing was written.
    let page = server.get("/api/v1/residents?limit=5").await;
    assert!(page["residents"].as_array().unwrap().is_empty(), "{page}");
    let audit = server.get("/api/v1/audit?action=import").await;
    assert_eq!(
        audit["entries"][0]["action"], "import.residents.rejected",
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_killed_while_written_leaves_all_or_nothing_and_paging_keeps_to_the_callers_communities()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    for c in ["c-a", "c-b"] {
        server.add_community(c).await;
    }
    let rows = 120_000;
    let mut csv = String::from(HEADER);
    resident_rows(&mut csv, 0, rows, |i| {
        if i % 3 == 0 { "c-b" } else { "c-a" }.to_string()
    });
    // The import runs on its own; the server is killed as soon as it says
    // it is writing rows.
    let body = {
        let mut request = reqwest::Client::new()
            .post(format!("{}/api/v1/import/residents", server.http()))
            .bearer_auth(TEST_ADMIN_TOKEN)
            .header("accept", "application/x-ndjson")
            .body(csv.clone())
            .send()
            .await
            .expect("import request");
        let mut seen = String::new();
        loop {
            match request.chunk().await {
                Ok(Some(chunk)) => {
                    seen.push_str(&String::from_utf8_lossy(&chunk));
                    if seen.contains("\"writing\"") {
                        break;
                    }
                }
                other => panic!("the import ended before writing: {other:?} {seen}"),
            }
        }
        seen
    };
    assert!(body.contains("\"checking\""), "{body}");
    server.restart().await;
    // All or nothing, whatever the moment of the kill: sled marks an import
    // before writing it and finishes it on start; on PostgreSQL it is one
    // transaction, rolled back by the kill, and the file is posted again.
    let mut all = page_all(&server, TEST_ADMIN_TOKEN, "").await;
    match anxin_tests::store_engine() {
        anxin_tests::StoreEngine::Sled => {
            assert_eq!(all.len(), rows, "a marked import is finished on start")
        }
        anxin_tests::StoreEngine::Postgres => {
            assert!(all.is_empty() || all.len() == rows, "a part: {}", all.len())
        }
    }
    if all.is_empty() {
        let (status, body) = import(&server, csv, false).await;
        assert_eq!(status, 200, "{body}");
        all = page_all(&server, TEST_ADMIN_TOKEN, "").await;
    }
    assert_eq!(all.len(), rows, "all rows");
    let mut ids: Vec<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), rows, "each row once");
    let audit = server.get("/api/v1/audit?action=import.residents").await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1, "{audit}");

    // A carer of c-a pages c-a only, and a filter on c-b gives nothing.
    let carer = server
        .add_staff("carer-a", "carer", &["c-a"], serde_json::json!({}))
        .await;
    let own = page_all(&server, &carer, "").await;
    assert_eq!(own.len(), rows - rows / 3);
    assert!(own.iter().all(|r| r["communityId"] == "c-a"));
    assert!(own.iter().all(|r| r["medicalNotes"] == ""), "redacted");
    assert!(page_all(&server, &carer, "&community=c-b").await.is_empty());
    let (_, found) = server
        .call("GET", "/api/v1/residents?q=1380000000", &carer, None)
        .await;
    let found = found["residents"].as_array().unwrap();
    // r-0000000 is in c-b; the carer finds only their own matches.
    assert!(!found.is_empty() && found.iter().all(|r| r["communityId"] == "c-a"));
    // A cursor that was not issued is refused.
    let (status, _) = server
        .call("GET", "/api/v1/residents?after=zz", &carer, None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_directory_change_survives_a_kill_9_right_after_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    server.add_community("c-k").await;
    for i in 0..5 {
        server
            .send(
                "PUT",
                &format!("/api/v1/residents/r-k{i}"),
                serde_json::json!({ "name": format!("Resident {i}"), "communityId": "c-k", "address": "Room 1" }),
            )
            .await;
    }
    let token = server
        .add_staff("carer-k", "carer", &["c-k"], serde_json::json!({}))
        .await;
    // No pause: the process dies as soon as the last answer is read.
    server.restart().await;
    let page = server.get("/api/v1/residents?community=c-k").await;
    assert_eq!(page["residents"].as_array().unwrap().len(), 5, "{page}");
    let (status, me) = server.call("GET", "/api/v1/me", &token, None).await;
    assert_eq!(status, 200, "the token issued before the kill works: {me}");
}
