//! The ledger: every event the simulator sent and every ack it got, one JSON
//! object per line. `anxin-sim verify` checks it against the server.

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::Path,
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// `sent`, `stored`, `rejected` or `acknowledged`.
    pub e: String,
    pub device: String,
    pub seq: u64,
    /// Event kind name (EVENT_KIND_…), on `sent` lines.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub t_ms: i64,
}

/// Appends entries from many devices through one writer task.
#[derive(Clone)]
pub struct LedgerWriter {
    tx: mpsc::UnboundedSender<Entry>,
}

impl LedgerWriter {
    /// Starts the writer; the returned task ends (and flushes) when every
    /// `LedgerWriter` clone is dropped.
    pub fn create(
        path: &Path,
    ) -> std::io::Result<(Self, tokio::task::JoinHandle<std::io::Result<()>>)> {
        let mut out = BufWriter::new(File::create(path)?);
        let (tx, mut rx) = mpsc::unbounded_channel::<Entry>();
        let task = tokio::task::spawn(async move {
            while let Some(entry) = rx.recv().await {
                serde_json::to_writer(&mut out, &entry)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            out.get_ref().sync_all()
        });
        Ok((Self { tx }, task))
    }

    pub fn record(&self, e: &str, device: &str, seq: u64, kind: &str) {
        let _ = self.tx.send(Entry {
            e: e.into(),
            device: device.into(),
            seq,
            kind: kind.into(),
            t_ms: anxin_proto::now_ms(),
        });
    }
}

pub fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for (number, line) in BufReader::new(File::open(path)?).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {}: {e}", number + 1),
            )
        })?;
        entries.push(entry);
    }
    Ok(entries)
}
