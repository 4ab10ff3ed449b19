//! A large import on sled: staged, then written chunk by chunk.
//!
//! sled keeps a transaction's writes in memory, so a million rows cannot be
//! one transaction. Instead every chunk is first staged in `import_staging`;
//! only when all are there is the import marked pending (with its audit
//! entry) in `meta`, and from that moment it is finished whatever happens:
//! each chunk is written with its indexes in one transaction that also
//! removes it from the stage, and a store opened with an import pending
//! finishes it before it serves. A file is therefore written whole or, if
//! the process dies before it was marked, not at all.

use anxin_proto::v1::AuditEntry;
use prost::Message;
use sled::Transactional;

use super::{SledStore, append_audit};
use crate::store::{StoreError, decode};

use crate::store::directory::DirectoryBatch;

const PENDING: &str = "import_pending";

fn rows(batch: &DirectoryBatch) -> u64 {
    (batch.residents.len() + batch.devices.len() + batch.staff.len()) as u64
}

pub(super) fn put_import(
    store: &SledStore,
    chunks: &mut dyn Iterator<Item = DirectoryBatch>,
    expected: u64,
    audit: AuditEntry,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, StoreError> {
    if store.meta.get(PENDING)?.is_some() {
        return Err(StoreError::Refused(
            "another import is being written; try again when it is done".into(),
        ));
    }
    store.import_staging.clear()?;
    let mut staged = 0u64;
    for (n, chunk) in chunks.enumerate() {
        staged += rows(&chunk);
        store
            .import_staging
            .insert((n as u64).to_be_bytes(), chunk.encode_to_vec())?;
    }
    if staged != expected {
        store.import_staging.clear()?;
        return Err(StoreError::Refused(format!(
            "the file changed while it was imported ({expected} rows checked, {staged} read); nothing was written"
        )));
    }
    store.db.flush()?;
    store.meta.insert(PENDING, audit.encode_to_vec())?;
    store.db.flush()?;
    write_staged(store, progress)
}

fn write_staged(store: &SledStore, progress: &mut dyn FnMut(u64)) -> Result<u64, StoreError> {
    let Some(bytes) = store.meta.get(PENDING)? else {
        return Ok(0);
    };
    let audit: AuditEntry = decode("pending import", &bytes)?;
    let mut written = 0;
    for item in store.import_staging.iter() {
        let (key, bytes) = item?;
        let chunk: DirectoryBatch = decode("staged import", &bytes)?;
        store.write_batch(&chunk, None, Some(&key))?;
        written += rows(&chunk);
        progress(written);
    }
    (&store.audit, &store.meta).transaction(|(log, meta)| {
        append_audit(log, audit.clone())?;
        meta.remove(PENDING)?;
        Ok(())
    })?;
    store.db.flush()?;
    Ok(written)
}

/// Finishes an import that was marked pending when the process stopped.
pub(super) fn finish_staged(store: &SledStore) -> Result<(), StoreError> {
    if store.meta.get(PENDING)?.is_none() {
        store.import_staging.clear()?;
        return Ok(());
    }
    let written = write_staged(store, &mut |_| {})?;
    tracing::warn!(
        rows_written_now = written,
        "finished an import that was being written when the server stopped"
    );
    Ok(())
}
