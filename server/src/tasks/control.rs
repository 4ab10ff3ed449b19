//! The control socket: how `anxin-server backup` reaches the server that
//! holds a sled store (sled allows one process per store).
//!
//! A Unix socket beside the store's files, `anxin.control`, mode 0600:
//! whoever may use it may read the store's files anyway. One JSON line
//! asks (`{"backup": "/abs/dir"}`); the server answers with progress lines
//! and a last line, `{"done": manifest}` or `{"error": "..."}`. Each backup
//! is audited (`store.backup`, or `store.backup.failed` with the reason;
//! the caller's uid as actor); one runs at a time. A request refused (it
//! does not parse, a relative path, one already running) is logged,
//! counted (`anxin_server_control_refused_total{reason}`) and audited
//! (`store.backup.refused`).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anxin_proto::v1::AuditEntry;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics as m,
    store::{
        Store, StoreError,
        backup::{Job, Manifest, Outcome, audit_entry},
    },
};

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
    let actor = match uid {
        Some(uid) => format!("operator (uid {uid}, control socket)"),
        None => "operator (control socket)".into(),
    };
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(err) => {
            let why = format!("the request does not parse: {err}");
            return refuse(&store, &mut stream, actor, "unparsed", None, why).await;
        }
    };
    if !request.backup.is_absolute() {
        let why = "the backup directory must be an absolute path".to_string();
        return refuse(
            &store,
            &mut stream,
            actor,
            "relative_path",
            Some(&request.backup),
            why,
        )
        .await;
    }
    if busy.swap(true, Ordering::SeqCst) {
        let why = "a backup is running already; try again when it is done".to_string();
        return refuse(
            &store,
            &mut stream,
            actor,
            "busy",
            Some(&request.backup),
            why,
        )
        .await;
    }
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
    let (entry, reply) = match result {
        Ok(manifest) => {
            let records: u64 = manifest.trees.iter().map(|t| t.records).sum();
            tracing::info!(to = %request.backup.display(), records, "backup done");
            let entry = audit_entry(
                Job::Backup,
                actor,
                Some(&request.backup),
                Outcome::Made(&manifest),
            );
            (entry, Reply::Done(Box::new(manifest)))
        }
        Err(err) => {
            tracing::warn!(to = %request.backup.display(), error = %err, "backup failed");
            metrics::counter!(m::BACKUPS_FAILED).increment(1);
            let why = err.to_string();
            let entry = audit_entry(
                Job::Backup,
                actor,
                Some(&request.backup),
                Outcome::Failed(&why),
            );
            (entry, Reply::Error(why))
        }
    };
    audit(&store, entry).await;
    send(&mut stream, &reply).await
}

/// A request not carried out: logged, counted by reason, audited
/// (`store.backup.refused`), and answered.
async fn refuse(
    store: &Store,
    stream: &mut UnixStream,
    actor: String,
    reason: &'static str,
    dir: Option<&Path>,
    why: String,
) -> std::io::Result<()> {
    tracing::warn!(reason, %actor, "control socket: request refused: {why}");
    metrics::counter!(m::CONTROL_REFUSED, "reason" => reason).increment(1);
    let entry = audit_entry(Job::Backup, actor, dir, Outcome::Refused(&why));
    audit(store, entry).await;
    send(stream, &Reply::Error(why)).await
}

async fn audit(store: &Store, entry: AuditEntry) {
    let action = entry.action.clone();
    let written = match store.append(entry) {
        Ok(_) => store.flush().await,
        Err(err) => Err(err),
    };
    if let Err(err) = written {
        tracing::warn!(%action, error = %err, "the audit entry of a control request was not written");
    }
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
