//! API tokens, on the admin desk: issued, listed, rotated with a grace
//! period, revoked by id — for staff and for gateways — and console
//! sessions. Every change is audited; the store keeps only digests.

use anxin_proto::now_ms;

use std::sync::Arc;

use crate::{
    desks::alerts::DeskError,
    desks::audit::{entry, guard},
    desks::gateways::ConnectedGateways,
    domain::rights::{self, Need, Principal},
    store::Store,
    store::directory::{self, Directory, TokenRecord},
};

fn bad(text: String) -> DeskError {
    DeskError::BadRequest(text)
}

/// Tokens and sessions: on the admin desk ([`crate::desks::admin::AdminDesk::tokens`]).
#[derive(Clone)]
pub struct TokenDesk {
    store: Store,
    /// Told of every token write: open uplinks check theirs again.
    gateways: Arc<ConnectedGateways>,
    policy: TokenPolicy,
}

/// How long tokens live, from `auth.*` in the config.
#[derive(Debug, Clone, Default)]
pub struct TokenPolicy {
    /// A staff token issued through the API; 0: no expiry.
    pub ttl_ms: i64,
    /// A gateway token issued through the API; 0: no expiry.
    pub gateway_ttl_ms: i64,
    pub rotation_grace_ms: i64,
    pub session_ms: i64,
}

/// A token as issued: shown once.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub token: String,
    pub token_id: String,
    /// 0: never.
    pub expires_ms: i64,
}

/// A token as listed: never the token itself.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub token_id: String,
    pub issued_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: i64,
    pub last_used_ms: i64,
    pub session: bool,
}

impl TokenDesk {
    pub fn new(store: Store, gateways: Arc<ConnectedGateways>, policy: TokenPolicy) -> Self {
        Self {
            store,
            gateways,
            policy,
        }
    }

    fn write_token(
        &self,
        caller: &Principal,
        digest: &str,
        record: &TokenRecord,
        action: &str,
        detail: String,
    ) -> Result<(), DeskError> {
        let target = format!("{}/{}", record.subject_kind, record.subject_id);
        self.store
            .put_token(digest, record, entry(caller, action, target, "", detail))?;
        // Open uplinks check their token again (another replica hears of it
        // as a directory change).
        self.gateways.directory_changed();
        Ok(())
    }

    /// A new random API token for a staff member, expiring after `ttl_ms`
    /// (`None`: `auth.token_ttl_secs`; 0: never).
    pub fn issue_token(
        &self,
        caller: &Principal,
        staff_id: &str,
        ttl_ms: Option<i64>,
    ) -> Result<IssuedToken, DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        if self.store.staff_member(staff_id)?.is_none() {
            return Err(
                crate::store::StoreError::NotFound(format!("no staff member {staff_id}")).into(),
            );
        }
        let ttl = ttl_ms.unwrap_or(self.policy.ttl_ms);
        self.new_token(caller, "staff", staff_id, ttl, false, "token.issue")
    }

    fn new_token(
        &self,
        caller: &Principal,
        subject_kind: &str,
        subject_id: &str,
        ttl_ms: i64,
        session: bool,
        action: &str,
    ) -> Result<IssuedToken, DeskError> {
        let token = rights::new_token();
        let digest = rights::digest(&token);
        let now = now_ms();
        let record = TokenRecord {
            subject_kind: subject_kind.into(),
            subject_id: subject_id.into(),
            issued_ms: now,
            expires_ms: if ttl_ms > 0 { now + ttl_ms } else { 0 },
            session,
            ..Default::default()
        };
        let id = directory::token_id(&digest);
        let detail = format!("token {id}, expires {}", record.expires_ms);
        self.write_token(caller, &digest, &record, action, detail)?;
        Ok(IssuedToken {
            token,
            token_id: id,
            expires_ms: record.expires_ms,
        })
    }

    /// The caller's own token replaced by a new one; the old one keeps
    /// working for `auth.rotation_grace_secs`, so a device or script can
    /// switch over without a gap.
    pub fn rotate_token(
        &self,
        caller: &Principal,
        presented: &str,
    ) -> Result<(IssuedToken, i64), DeskError> {
        let digest = rights::digest(presented);
        let Some(mut old) = self.store.token(&digest)? else {
            return Err(bad(
                "only a token from the directory can be rotated (not the bootstrap admin token)"
                    .into(),
            ));
        };
        if old.session {
            return Err(bad("a console session is not rotated; sign in again".into()));
        }
        let now = now_ms();
        let grace_end = now + self.policy.rotation_grace_ms;
        if old.expires_ms == 0 || old.expires_ms > grace_end {
            old.expires_ms = grace_end;
        }
        let ttl = self.policy.ttl_ms;
        let issued = self.new_token(
            caller,
            &old.subject_kind.clone(),
            &old.subject_id.clone(),
            ttl,
            false,
            "token.rotate",
        )?;
        let detail = format!(
            "token {} replaced by {}; valid until {grace_end}",
            directory::token_id(&digest),
            issued.token_id
        );
        self.write_token(caller, &digest, &old, "token.rotate", detail)?;
        Ok((issued, old.expires_ms))
    }

    /// A short-lived console session for the caller, made from the token
    /// they signed in with.
    pub fn open_session(&self, caller: &Principal) -> Result<IssuedToken, DeskError> {
        let (kind, id) = match caller {
            Principal::Admin => ("admin", "admin".to_string()),
            Principal::Staff(s) => ("staff", s.id.clone()),
            Principal::Gateway(_) | Principal::Family(_) => {
                return Err(crate::desks::auth::AuthError::Forbidden(
                    "a gateway or a family member has no console session".into(),
                )
                .into());
            }
        };
        self.new_token(
            caller,
            kind,
            &id,
            self.policy.session_ms,
            true,
            "session.open",
        )
    }

    /// A person's tokens (never the tokens themselves): the administrator,
    /// or the person.
    pub fn staff_tokens(
        &self,
        caller: &Principal,
        staff_id: &str,
    ) -> Result<Vec<TokenInfo>, DeskError> {
        if !matches!(caller, Principal::Staff(s) if s.id == staff_id) {
            guard(&self.store, caller, Need::Administer, None, "directory")?;
        }
        self.tokens_of("staff", staff_id)
    }

    /// Revokes one token by its id: the administrator any, a person their own.
    pub fn revoke_token(
        &self,
        caller: &Principal,
        staff_id: &str,
        token_id: &str,
    ) -> Result<(), DeskError> {
        if !matches!(caller, Principal::Staff(s) if s.id == staff_id) {
            guard(&self.store, caller, Need::Administer, None, "directory")?;
        }
        self.revoke(caller, "staff", staff_id, token_id)
    }

    /// A gateway's uplink tokens (never the tokens themselves): the
    /// administrator only.
    pub fn gateway_tokens(
        &self,
        caller: &Principal,
        gateway_id: &str,
    ) -> Result<Vec<TokenInfo>, DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        self.known_gateway(gateway_id)?;
        self.tokens_of("gateway", gateway_id)
    }

    /// Revokes one of a gateway's tokens: an uplink open with it is closed
    /// within seconds, on whichever replica it is (`api/uplink.rs`).
    pub fn revoke_gateway_token(
        &self,
        caller: &Principal,
        gateway_id: &str,
        token_id: &str,
    ) -> Result<(), DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        self.known_gateway(gateway_id)?;
        self.revoke(caller, "gateway", gateway_id, token_id)
    }

    /// A new uplink token for a gateway (`ttl_ms` `None`:
    /// `auth.gateway_token_ttl_secs`; 0: never); every earlier token of it
    /// still valid keeps working for `auth.rotation_grace_secs`, so the
    /// gateway's config can be changed without a gap. Returns the new token
    /// and until when the earlier ones work (0: there were none).
    pub fn rotate_gateway_token(
        &self,
        caller: &Principal,
        gateway_id: &str,
        ttl_ms: Option<i64>,
    ) -> Result<(IssuedToken, i64), DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        self.known_gateway(gateway_id)?;
        let now = now_ms();
        let grace_end = now + self.policy.rotation_grace_ms;
        let earlier: Vec<(String, TokenRecord)> = self
            .store
            .tokens_of("gateway", gateway_id)?
            .into_iter()
            .filter(|(_, r)| r.refusal(now).is_none())
            .collect();
        let ttl = ttl_ms.unwrap_or(self.policy.gateway_ttl_ms);
        let issued = self.new_token(caller, "gateway", gateway_id, ttl, false, "token.issue")?;
        let mut earlier_until = 0;
        for (digest, mut record) in earlier {
            if record.expires_ms == 0 || record.expires_ms > grace_end {
                record.expires_ms = grace_end;
            }
            earlier_until = earlier_until.max(record.expires_ms);
            let detail = format!(
                "token {} replaced by {}; valid until {}",
                directory::token_id(&digest),
                issued.token_id,
                record.expires_ms
            );
            self.write_token(caller, &digest, &record, "token.rotate", detail)?;
        }
        Ok((issued, earlier_until))
    }

    fn known_gateway(&self, gateway_id: &str) -> Result<(), DeskError> {
        match self.store.gateway(gateway_id)? {
            Some(_) => Ok(()),
            None => {
                Err(crate::store::StoreError::NotFound(format!("no gateway {gateway_id}")).into())
            }
        }
    }

    fn tokens_of(&self, kind: &str, id: &str) -> Result<Vec<TokenInfo>, DeskError> {
        Ok(self
            .store
            .tokens_of(kind, id)?
            .into_iter()
            .map(|(digest, r)| TokenInfo {
                token_id: directory::token_id(&digest),
                issued_ms: r.issued_ms,
                expires_ms: r.expires_ms,
                revoked_ms: r.revoked_ms,
                last_used_ms: r.last_used_ms,
                session: r.session,
            })
            .collect())
    }

    fn revoke(
        &self,
        caller: &Principal,
        kind: &str,
        id: &str,
        token_id: &str,
    ) -> Result<(), DeskError> {
        let found = self
            .store
            .tokens_of(kind, id)?
            .into_iter()
            .find(|(digest, _)| directory::token_id(digest) == token_id);
        let Some((digest, mut record)) = found else {
            return Err(crate::store::StoreError::NotFound(format!(
                "no token {token_id} of {kind}/{id}"
            ))
            .into());
        };
        if record.revoked_ms == 0 {
            record.revoked_ms = now_ms();
            self.write_token(
                caller,
                &digest,
                &record,
                "token.revoke",
                format!("token {token_id}"),
            )?;
        }
        Ok(())
    }

    /// Registers a token chosen elsewhere (seed files, provisioning tools).
    pub fn set_staff_token(
        &self,
        caller: &Principal,
        staff_id: &str,
        token: &str,
    ) -> Result<(), DeskError> {
        guard(&self.store, caller, Need::Administer, None, "directory")?;
        if self.store.staff_member(staff_id)?.is_none() {
            return Err(
                crate::store::StoreError::NotFound(format!("no staff member {staff_id}")).into(),
            );
        }
        if token.len() < 16 {
            return Err(bad("an API token needs at least 16 characters".into()));
        }
        self.store.put_token(
            &rights::digest(token),
            &TokenRecord {
                subject_kind: "staff".into(),
                subject_id: staff_id.into(),
                issued_ms: now_ms(),
                ..Default::default()
            },
            entry(
                caller,
                "token.issue",
                format!("staff/{staff_id}"),
                "",
                String::new(),
            ),
        )?;
        Ok(())
    }
}
