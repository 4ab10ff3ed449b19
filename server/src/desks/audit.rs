//! The audit log: append-only, one entry per transition, assignment, note,
//! notification, directory change and read of a resident's sensitive fields,
//! with who and when. Entries written with an alert change share its
//! transaction (see [`crate::store::Store::update_alert`]); the rest go
//! through [`AuditLog::append`].

use anxin_proto::v1::{AuditEntry, AuditQuery};

use crate::{
    desks::auth::{AuthError, Need, Principal},
    store::{Store, StoreError},
};

/// [`Principal::require`], with every refusal written to the audit log
/// (`access.denied`): who tried what, on which target.
pub fn guard(
    store: &Store,
    caller: &Principal,
    need: Need,
    community: Option<&str>,
    target: &str,
) -> Result<(), AuthError> {
    let refused = caller.require(need, community);
    if let Err(err) = &refused {
        let entry = AuditEntry {
            at_ms: anxin_proto::now_ms(),
            actor: caller.name(),
            action: "access.denied".into(),
            target: target.to_string(),
            community_id: community.unwrap_or_default().to_string(),
            detail: err.to_string(),
            ..Default::default()
        };
        if let Err(store_err) = store.append(entry) {
            tracing::error!(error = %store_err, "auditing a refused call failed");
        }
        tracing::warn!(caller = %caller.name(), target, error = %err, "call refused");
    }
    refused
}

pub trait AuditLog {
    fn append(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError>;
    /// Matching entries, oldest first; at most `query.limit` (newest kept)
    /// when it is set.
    fn query(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
}

pub(crate) fn matches(q: &AuditQuery, e: &AuditEntry) -> bool {
    (q.target.is_empty() || e.target == q.target)
        && (q.actor.is_empty() || e.actor == q.actor)
        && (q.action.is_empty()
            || e.action == q.action
            || e.action.starts_with(&format!("{}.", q.action)))
        && (q.since_ms == 0 || e.at_ms >= q.since_ms)
        && (q.until_ms == 0 || e.at_ms < q.until_ms)
}
