//! Who is calling, and what they may do.
//!
//! API tokens are random strings shown once; the store keeps only their
//! SHA-256 digest. A staff token carries no role of its own: the role and
//! communities are read from the staff record at every call, so deactivating
//! a person or moving them to another community takes effect at once. The
//! bootstrap admin token comes from the config (`auth.admin_token`).

use anxin_proto::v1::{Staff, StaffRole};
use sha2::{Digest, Sha256};

use crate::{
    store::directory::Directory,
    store::{Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no API token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the API token is not valid")]
    Invalid,
    /// A known token that may no longer be used (expired, revoked).
    #[error("{0}; sign in again or ask for a new token")]
    Refused(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub enum Principal {
    /// The bootstrap administrator from the config.
    Admin,
    Staff(Staff),
    Gateway(String),
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// See alerts and the staff board.
    ViewAlerts,
    /// Act on alerts.
    Act,
    /// Read residents' sensitive fields (audited).
    ReadResidents,
    /// Reports.
    Reports,
    /// The audit log.
    Audit,
    /// Create and change the directory, issue tokens, import.
    Administer,
}

impl Principal {
    /// How the audit log names this caller.
    pub fn name(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Staff(s) => s.id.clone(),
            Principal::Gateway(id) => format!("gateway/{id}"),
        }
    }

    pub fn role(&self) -> Option<StaffRole> {
        match self {
            Principal::Admin => Some(StaffRole::Admin),
            Principal::Staff(s) => Some(s.role()),
            Principal::Gateway(_) => None,
        }
    }

    pub fn is_field_staff(&self) -> bool {
        matches!(self.role(), Some(StaffRole::Carer | StaffRole::Nurse))
    }

    /// Whether this caller's scope covers `community_id`. Records without a
    /// community (a device the directory does not know) are visible only to
    /// callers who serve every community.
    pub fn sees(&self, community_id: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Staff(s) => s
                .communities
                .iter()
                .any(|c| c == "*" || (!community_id.is_empty() && c == community_id)),
            Principal::Gateway(_) => false,
        }
    }

    /// The communities whose records this caller may list; `None`: all
    /// of them (the administrator, city-wide staff).
    pub fn scope(&self) -> Option<Vec<String>> {
        match self {
            Principal::Admin => None,
            Principal::Staff(s) if s.communities.iter().any(|c| c == "*") => None,
            Principal::Staff(s) => Some(s.communities.clone()),
            Principal::Gateway(_) => Some(Vec::new()),
        }
    }

    pub fn allows(&self, need: Need) -> bool {
        use StaffRole::*;
        let Some(role) = self.role() else {
            return false;
        };
        match need {
            Need::ViewAlerts | Need::Act | Need::ReadResidents => {
                matches!(role, Carer | Nurse | Dispatcher | Supervisor | Admin)
            }
            Need::Reports => matches!(role, Dispatcher | Supervisor | Admin),
            Need::Audit => matches!(role, Supervisor | Admin),
            Need::Administer => role == Admin,
        }
    }

    /// `need` in `community_id` (or anywhere, if `None`).
    pub fn require(&self, need: Need, community_id: Option<&str>) -> Result<(), AuthError> {
        if !self.allows(need) {
            return Err(AuthError::Forbidden(format!(
                "{} may not {}",
                self.name(),
                need_text(need)
            )));
        }
        if let Some(community) = community_id
            && !self.sees(community)
        {
            return Err(AuthError::Forbidden(format!(
                "{} does not serve community `{community}`",
                self.name()
            )));
        }
        Ok(())
    }
}

fn need_text(need: Need) -> &'static str {
    match need {
        Need::ViewAlerts => "see alerts",
        Need::Act => "act on alerts",
        Need::ReadResidents => "read residents' records",
        Need::Reports => "read reports",
        Need::Audit => "read the audit log",
        Need::Administer => "administer the directory",
    }
}

pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: 32 bytes of OS randomness, hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("anx_{}", hex::encode(bytes))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token's last use is written at most this often.
const TOUCH_EVERY_MS: i64 = 60_000;

#[derive(Clone)]
pub struct Authenticator {
    store: Store,
    admin_digest: String,
}

impl Authenticator {
    pub fn new(store: Store, admin_token: &str) -> Self {
        Self {
            store,
            admin_digest: digest(admin_token),
        }
    }

    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let digest = digest(token);
        if constant_time_eq(digest.as_bytes(), self.admin_digest.as_bytes()) {
            return Ok(Principal::Admin);
        }
        let record = self.store.token(&digest)?.ok_or(AuthError::Invalid)?;
        let now = anxin_proto::now_ms();
        if let Some(why) = record.refusal(now) {
            return Err(AuthError::Refused(why));
        }
        if now - record.last_used_ms >= TOUCH_EVERY_MS
            && let Err(err) = self.store.touch_token(&digest, now)
        {
            tracing::debug!(error = %err, "recording a token's use failed");
        }
        match record.subject_kind.as_str() {
            "admin" => Ok(Principal::Admin),
            "staff" => match self.store.staff_member(&record.subject_id)? {
                Some(staff) if staff.active => Ok(Principal::Staff(staff)),
                _ => Err(AuthError::Invalid),
            },
            "gateway" => match self.store.gateway(&record.subject_id)? {
                Some(_) => Ok(Principal::Gateway(record.subject_id)),
                None => Err(AuthError::Invalid),
            },
            _ => Err(AuthError::Invalid),
        }
    }

    /// Token from an `authorization: Bearer …` header value.
    pub fn bearer(header: Option<&str>) -> Option<&str> {
        header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carer(communities: &[&str]) -> Principal {
        Principal::Staff(Staff {
            id: "li".into(),
            role: StaffRole::Carer as i32,
            communities: communities.iter().map(|c| c.to_string()).collect(),
            active: true,
            ..Default::default()
        })
    }

    #[test]
    fn a_carer_acts_in_their_community_only() {
        let li = carer(&["c-a"]);
        li.require(Need::Act, Some("c-a")).unwrap();
        let err = li.require(Need::Act, Some("c-b")).unwrap_err();
        assert!(err.to_string().contains("c-b"), "{err}");
        assert!(li.require(Need::Administer, None).is_err());
        assert!(li.require(Need::Audit, None).is_err());
        assert!(
            !li.sees(""),
            "unknown-community alerts are for city-wide staff"
        );
        assert!(carer(&["*"]).sees(""));
    }

    #[test]
    fn gateways_get_nothing_but_their_uplink() {
        let gw = Principal::Gateway("gw-1".into());
        for need in [
            Need::ViewAlerts,
            Need::Act,
            Need::ReadResidents,
            Need::Administer,
        ] {
            assert!(gw.require(need, None).is_err());
        }
    }

    #[test]
    fn tokens_are_random_and_digests_stable() {
        assert_ne!(new_token(), new_token());
        assert_eq!(digest("x"), digest("x"));
        assert_eq!(digest("x").len(), 64);
    }
}
