//! Scratch databases for tests: `anxin_t_{pid}_{n}` beside the database
//! of `admin_url`, so that a test run cleans up after runs that died.

/// Where tests find a PostgreSQL server they may create databases on.
pub fn admin_url() -> String {
    std::env::var("ANXIN_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database and returns its URL; `Err` with the reason
/// when no server can be reached.
pub async fn create() -> Result<String, String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin = admin_url();
    let (client, connection) = super::tls::connect(&admin)
        .await
        .map_err(|e| format!("PostgreSQL at {admin} (ANXIN_TEST_PG): {e}"))?;
    tokio::spawn(connection);
    let stale = client
        .query(
            "select datname from pg_database where datname like 'anxin\\_t\\_%'",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    for row in stale {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = client
                .batch_execute(&format!("drop database if exists {name} with (force)"))
                .await;
        }
    }
    let name = format!(
        "anxin_t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    client
        .batch_execute(&format!("create database {name}"))
        .await
        .map_err(|e| e.to_string())?;
    // The admin URL's query (sslmode, sslrootcert) holds for the new one.
    let (path, query) = admin.split_once('?').unwrap_or((admin.as_str(), ""));
    let base = path.rsplit_once('/').map_or(path, |(base, _)| base);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    Ok(format!("{base}/{name}{query}"))
}

/// Drops a database [`create`] made.
pub async fn drop(url: &str) {
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    let Some((_, name)) = path.rsplit_once('/') else {
        return;
    };
    if let Ok((client, connection)) = super::tls::connect(&admin_url()).await {
        tokio::spawn(connection);
        let _ = client
            .batch_execute(&format!("drop database if exists {name} with (force)"))
            .await;
    }
}
