//! The control socket: how `anxin-server backup` reaches the server that
//! holds a sled store (sled allows one process per store).
//!
//! A Unix socket beside the store's files, `anxin.control`, mode 0600:
//! whoever may use it may read the store's files anyway. One JSON line
//! asks (`{"backup": "/abs/dir"}`); the server answers with progress lines
//! and a last line, `{"done": manifest}` or `{"error": "..."}`. Each backup
//! is audited (`store.backup`, the caller's uid as actor); one runs at a
//! time.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anxin_proto::{now_ms, v1::AuditEntry};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError, backup::Manifest};

pub const SOCKET: &str = "anxin.control";

/// Requests are one short line.
const MAX_REQUEST: u64 = 4096;

pub fn socket_path(store_path: &Path) -> PathBuf {
    store_path.join(SOCKET)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    backup: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Reply {
    Progress { kind: String, records: u64 },
    Done(Box<Manifest>),
    Error(String),
}

/// Serves the socket until `cancel`; removes it when it stops.
pub async fn serve(store: Store, path: PathBuf, cancel: CancellationToken) {
    // A server killed earlier leaves its socket behind; the store's lock
    // (held by this process) says no other server uses it.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err,
                "the control socket cannot be opened: `anxin-server backup` cannot reach this \
                 server (stop it to back up its store)");
            return;
        }
    };
    if let Err(err) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %err, "the control socket's mode cannot be set to 0600; closing it");
        let _ = std::fs::remove_file(&path);
        return;
    }
    let busy = Arc::new(AtomicBool::new(false));
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "control socket: accept failed");
                    continue;
                }
            },
        };
        let (store, busy) = (store.clone(), busy.clone());
        tokio::spawn(async move {
            if let Err(err) = answer(store, stream, busy).await {
                tracing::warn!(error = %err, "control socket: the caller went away");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn send(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("a reply serializes");
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn answer(
    store: Store,
    mut stream: UnixStream,
    busy: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let mut line = String::new();
    BufReader::new((&mut stream).take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!(error = %err, "control socket: a request that does not parse");
            return send(
                &mut stream,
                &Reply::Error(format!("the request does not parse: {err}")),
            )
            .await;
        }
    };
    if !request.backup.is_absolute() {
        return send(
            &mut stream,
            &Reply::Error("the backup directory must be an absolute path".into()),
        )
        .await;
    }
    if busy.swap(true, Ordering::SeqCst) {
        return send(
            &mut stream,
            &Reply::Error("a backup is running already; try again when it is done".into()),
        )
        .await;
    }
    let actor = match uid {
        Some(uid) => format!("operator (uid {uid}, control socket)"),
        None => "operator (control socket)".into(),
    };
    tracing::info!(to = %request.backup.display(), %actor, "backup started");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let dir = request.backup.clone();
    let copying = store.clone();
    let mut job = tokio::task::spawn_blocking(move || {
        copying.backup(&dir, &mut |kind, records| {
            let _ = tx.send(Reply::Progress {
                kind: kind.into(),
                records,
            });
        })
    });
    let result = loop {
        tokio::select! {
            Some(progress) = rx.recv() => {
                // The caller may have gone; the backup still finishes.
                let _ = send(&mut stream, &progress).await;
            }
            done = &mut job => break done.expect("backup task panicked"),
        }
    };
    busy.store(false, Ordering::SeqCst);
    let reply = match result {
        Ok(manifest) => {
            let records: u64 = manifest.trees.iter().map(|t| t.records).sum();
            tracing::info!(to = %request.backup.display(), records, "backup done");
            let audited = store.append(AuditEntry {
                at_ms: now_ms(),
                actor,
                action: "store.backup".into(),
                target: "store".into(),
                detail: format!(
                    "to {}: {records} records in {} trees, as of {}",
                    request.backup.display(),
                    manifest.trees.len(),
                    manifest.cut_ms
                ),
                ..Default::default()
            });
            if let Err(err) = audited {
                tracing::warn!(error = %err, "the backup's audit entry was not written");
            }
            Reply::Done(Box::new(manifest))
        }
        Err(err) => {
            tracing::warn!(to = %request.backup.display(), error = %err, "backup failed");
            Reply::Error(err.to_string())
        }
    };
    send(&mut stream, &reply).await
}

/// Asks the server on the socket at `path` for a backup into `dir`. `None`
/// when no server answers there (none runs, or one was killed).
pub async fn request_backup(
    path: &Path,
    dir: &Path,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<Option<Manifest>, StoreError> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(err) => return Err(StoreError::Storage(sled::Error::Io(err))),
    };
    let mut request = serde_json::to_vec(&Request {
        backup: dir.to_path_buf(),
    })
    .expect("a request serializes");
    request.push(b'\n');
    let io = |err| StoreError::Storage(sled::Error::Io(err));
    stream.write_all(&request).await.map_err(io)?;
    let mut lines = BufReader::new(stream).lines();
    while let Some(line) = lines.next_line().await.map_err(io)? {
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Progress { kind, records }) => progress(&kind, records),
            Ok(Reply::Done(manifest)) => return Ok(Some(*manifest)),
            Ok(Reply::Error(why)) => return Err(StoreError::Refused(why)),
            Err(err) => {
                return Err(StoreError::Refused(format!(
                    "the server's answer does not parse: {err}"
                )));
            }
        }
    }
    Err(StoreError::Refused(
        "the server closed the control socket before the backup finished; see its log".into(),
    ))
}
