//! Refusals in the audit log: [`guard`] checks a caller's rights and writes
//! every refusal (`access.denied`). The log itself (one entry per
//! transition, assignment, note, notification, directory change and read of
//! a resident's sensitive fields) is the store's
//! ([`crate::store::audit::AuditLog`]); entries written with an alert change
//! share its transaction.

use anxin_proto::{now_ms, v1::AuditEntry};

use crate::{
    desks::auth::AuthError,
    domain::rights::{Need, Principal},
    store::Store,
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
    let refused = caller.require(need, community).map_err(AuthError::from);
    if let Err(err) = &refused {
        deny(
            store,
            caller,
            community.unwrap_or_default(),
            target,
            &err.to_string(),
        );
    }
    refused
}

/// Writes one refusal to the audit log (`access.denied`), logs and counts
/// it: for refusals decided elsewhere than [`guard`] (a family member
/// asking for another resident, a family session on a staff endpoint).
pub fn deny(store: &Store, caller: &Principal, community: &str, target: &str, why: &str) {
    metrics::counter!(crate::metrics::ACCESS_DENIED).increment(1);
    let entry = AuditEntry {
        at_ms: anxin_proto::now_ms(),
        actor: caller.name(),
        action: "access.denied".into(),
        target: target.to_string(),
        community_id: community.to_string(),
        detail: why.to_string(),
        ..Default::default()
    };
    if let Err(store_err) = store.append(entry) {
        tracing::error!(error = %store_err, "auditing a refused call failed");
    }
    tracing::warn!(caller = %caller.name(), target, error = %why, "call refused");
}

/// An audit entry by `caller`, now.
pub fn entry(
    caller: &Principal,
    action: &str,
    target: String,
    community: &str,
    detail: String,
) -> AuditEntry {
    AuditEntry {
        at_ms: now_ms(),
        actor: caller.name(),
        action: action.into(),
        target,
        community_id: community.into(),
        detail,
        ..Default::default()
    }
}
