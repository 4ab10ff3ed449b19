//! Who is calling, and what they may do.
//!
//! API tokens are random strings shown once; the store keeps only their
//! SHA-256 digest. A staff token carries no role of its own: the role and
//! communities are read from the staff record at every call, so deactivating
//! a person or moving them to another community takes effect at once. The
//! bootstrap admin token comes from the config (`auth.admin_token`).

use crate::domain::rights::{Forbidden, Principal, digest};
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

pub use anxin_credentials::constant_time_eq;

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
            // Only while the resident still lists them with the family view:
            // taking a contact off ends their session at once.
            "family" => {
                let (resident_id, phone) = record
                    .subject_id
                    .split_once('|')
                    .ok_or(AuthError::Invalid)?;
                let resident = self
                    .store
                    .resident(resident_id)?
                    .ok_or(AuthError::Invalid)?;
                let contact = resident
                    .emergency_contacts
                    .iter()
                    .find(|c| c.phone == phone && c.channels.iter().any(|ch| ch == "view"))
                    .ok_or(AuthError::Invalid)?;
                Ok(Principal::Family(crate::domain::rights::FamilyMember {
                    resident_id: resident_id.to_string(),
                    phone: phone.to_string(),
                    name: contact.name.clone(),
                    language: contact.language.clone(),
                }))
            }
            _ => Err(AuthError::Invalid),
        }
    }

    /// When a directory token expires (`None`: never, or not a directory
    /// token), for a caller that holds a connection open with it.
    pub fn expiry_of(&self, token: &str) -> Result<Option<i64>, AuthError> {
        Ok(self
            .store
            .token(&digest(token))?
            .map(|r| r.expires_ms)
            .filter(|&at| at > 0))
    }

    /// Token from an `authorization: Bearer …` header value.
    pub fn bearer(header: Option<&str>) -> Option<&str> {
        header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
    }
}

impl From<Forbidden> for AuthError {
    fn from(refused: Forbidden) -> Self {
        AuthError::Forbidden(refused.0)
    }
}
