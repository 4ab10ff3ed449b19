//! The audit log's seam: append-only entries and their queries, which
//! both engines keep ([`matches`] is the query's one definition).

use anxin_proto::v1::{AuditEntry, AuditQuery};

use super::error::StoreError;

pub trait AuditLog {
    fn append(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError>;
    /// Matching entries, oldest first; at most `query.limit` (newest kept)
    /// when it is set.
    fn query(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
}

pub fn matches(q: &AuditQuery, e: &AuditEntry) -> bool {
    (q.target.is_empty() || e.target == q.target)
        && (q.actor.is_empty() || e.actor == q.actor)
        && (q.action.is_empty()
            || e.action == q.action
            || e.action.starts_with(&format!("{}.", q.action)))
        && (q.since_ms == 0 || e.at_ms >= q.since_ms)
        && (q.until_ms == 0 || e.at_ms < q.until_ms)
}
