//! The devices this gateway serves, as the server's directory says: taken
//! from the uplink (`DeviceRoster`), kept in a file of its own beside the
//! journal's (written whole, fsynced, renamed into place) so the gateway
//! goes on authenticating while the server is away — also after its
//! journal was found damaged and moved aside — and applied to the device
//! book at once: a device deactivated or re-keyed on the server loses its
//! connection within seconds.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anxin_proto::v1::{DeviceRoster, RosterDevice};
use prost::Message;

use crate::{
    front::{
        auth::{DeviceBook, DeviceEntry},
        codec::DisconnectReason,
        session::Sessions,
    },
    journal::{JournalError, ROSTER_FILE},
};

pub struct Roster {
    book: Arc<DeviceBook>,
    sessions: Arc<Sessions>,
    file: PathBuf,
    /// Parts of a roster still arriving: (generation, devices so far).
    partial: Mutex<Option<(u64, Vec<RosterDevice>)>>,
}

fn entries(devices: &[RosterDevice]) -> HashMap<String, DeviceEntry> {
    devices
        .iter()
        .map(|d| {
            (
                d.device_id.clone(),
                DeviceEntry {
                    kind: d.kind.clone(),
                    credential: if !d.credential.is_empty() {
                        Some(d.credential.clone())
                    } else {
                        (!d.password_sha256.is_empty())
                            .then(|| d.password_sha256.to_ascii_lowercase())
                    },
                    active: !d.deactivated,
                },
            )
        })
        .collect()
}

impl Roster {
    /// Opens the stored roster (if any) in the journal's directory and
    /// applies it to the book.
    pub fn open(
        journal_dir: &Path,
        book: Arc<DeviceBook>,
        sessions: Arc<Sessions>,
    ) -> Result<Self, JournalError> {
        let file = journal_dir.join(ROSTER_FILE);
        match std::fs::read(&file) {
            Ok(bytes) => match DeviceRoster::decode(bytes.as_slice()) {
                Ok(stored) => {
                    book.set_roster(entries(&stored.devices));
                    tracing::info!(
                        devices = stored.devices.len(),
                        "device roster from the server loaded from disk"
                    );
                }
                Err(err) => {
                    tracing::error!(file = %file.display(), error = %err, "the stored device roster does not decode; waiting for the server's");
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
        Ok(Self {
            book,
            sessions,
            file,
            partial: Mutex::new(None),
        })
    }

    /// Takes one part of a roster from the server; a complete roster is
    /// stored, then applied.
    pub async fn receive(&self, part: DeviceRoster) -> Result<(), JournalError> {
        let complete = {
            let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
            if part.part == 0 {
                *partial = Some((part.generation, Vec::new()));
            }
            match partial.as_mut() {
                Some((generation, devices)) if *generation == part.generation => {
                    devices.extend(part.devices);
                }
                _ => {
                    tracing::warn!(
                        generation = part.generation,
                        part = part.part,
                        "a roster part out of order; waiting for the next roster"
                    );
                    return Ok(());
                }
            }
            if !part.complete {
                return Ok(());
            }
            partial
                .take()
                .map(|(_, devices)| devices)
                .unwrap_or_default()
        };
        let stored = DeviceRoster {
            generation: part.generation,
            part: 0,
            complete: true,
            devices: complete,
        };
        let (file, bytes) = (self.file.clone(), stored.encode_to_vec());
        tokio::task::spawn_blocking(move || anxin_host::disk::replace_file(&file, &bytes))
            .await
            .map_err(|e| JournalError::Panicked(e.to_string()))??;
        // A sealed legacy digest is checked by a derivation: off the
        // async workers.
        let (book, devices) = (self.book.clone(), entries(&stored.devices));
        let revoked = tokio::task::spawn_blocking(move || book.set_roster(devices))
            .await
            .map_err(|e| JournalError::Panicked(e.to_string()))?;
        for device_id in &revoked {
            tracing::info!(%device_id, "device deactivated, removed or re-keyed on the server; its connection is closed");
            self.sessions.kick(device_id, DisconnectReason::Revoked);
        }
        tracing::info!(
            devices = stored.devices.len(),
            revoked = revoked.len(),
            "device roster from the server applied"
        );
        Ok(())
    }
}
