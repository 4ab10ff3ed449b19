//! The device book: who may connect, with which credential. A device logs
//! in with username = device id and its password. The server hands each
//! device's credential to its gateway sealed (`anxin-credentials`:
//! PBKDF2 over the password's SHA-256, salted per device); a gateway's own
//! `[[devices]]` list may still give a password or its bare SHA-256.
//!
//! A sealed credential costs about half a millisecond to verify, so the
//! book verifies on the blocking pool, one at a time per spare core (a
//! reconnect storm never takes the cores the alarm path runs on), and keeps
//! the logins it verified: a device that reconnects with the same password
//! costs one HMAC (a key of this process's own, so the cache is worth
//! nothing outside it). Only a gateway restart pays the KDF for every
//! device (BENCHMARKS.md, "Device secrets"). The last wrong password each
//! device gave is kept the same way: a device misconfigured with an old
//! password retries for ever, and each retry must not cost a derivation.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::acl::Identity;
use crate::{config::GatewayConfig, metrics as m};

/// Why a CONNECT was refused. The label is the `reason` on the refusal
/// counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    #[error("no username/password given, and this gateway requires them")]
    NoCredentials,
    #[error("no such device is registered at this gateway")]
    UnknownDevice,
    #[error("the device is deactivated")]
    Deactivated,
    #[error("wrong password")]
    BadPassword,
}

impl LoginRefusal {
    pub fn label(self) -> &'static str {
        match self {
            LoginRefusal::NoCredentials => "no_credentials",
            LoginRefusal::UnknownDevice => "unknown_device",
            LoginRefusal::Deactivated => "deactivated",
            LoginRefusal::BadPassword => "bad_password",
        }
    }
}

/// One registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    pub kind: String,
    /// A sealed credential or a legacy hex SHA-256 (lowercase); `None`: the
    /// device has no credential and can only connect while
    /// `mqtt.require_auth = false`.
    pub credential: Option<String>,
    pub active: bool,
}

struct Observer {
    /// Sealed, or a legacy hex SHA-256 (lowercase).
    credential: String,
    topics: Arc<[String]>,
}

/// A password this process checked against a sealed credential: the
/// credential and the HMAC of the password under [`DeviceBook::cache_key`].
type Checked = (String, Tag);

/// How a password was checked: the `how` on
/// `anxin_gateway_credential_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Against a legacy bare digest.
    Digest,
    /// A login this process verified before.
    Cached,
    /// The wrong password this device gave last, refused again.
    RefusedAgain,
    /// The KDF, on the blocking pool.
    Derived,
}

impl Check {
    pub fn label(self) -> &'static str {
        match self {
            Check::Digest => "digest",
            Check::Cached => "cached",
            Check::RefusedAgain => "refused_again",
            Check::Derived => "derived",
        }
    }
}

/// An HMAC-SHA256 output; `==` on it runs in constant time.
type Tag = hmac::digest::CtOutput<Hmac<Sha256>>;

/// Devices from two sources: the gateway's TOML `[[devices]]` (a static
/// list, for a gateway without a server) and the server's roster (the
/// source of truth, which wins for a device in both).
pub struct DeviceBook {
    require_auth: bool,
    configured: HashMap<String, DeviceEntry>,
    devices: RwLock<HashMap<String, DeviceEntry>>,
    observers: HashMap<String, Observer>,
    /// Bumped on every roster change, so supervision can follow.
    generation: AtomicU64,
    /// Per device, the last password verified and the last refused.
    verified: Mutex<HashMap<String, Checked>>,
    refused: Mutex<HashMap<String, Checked>>,
    cache_key: [u8; 32],
    /// Sealed credentials verified at once: the cores less one.
    deriving: Arc<tokio::sync::Semaphore>,
}

/// Hex SHA-256, the legacy stored form of a password.
pub fn digest(password: &str) -> String {
    anxin_credentials::legacy_digest(password)
}

/// Whether a roster's new credential for a device is its old one: equal,
/// or the old legacy digest sealed where it lay (the server upgrades
/// stored digests; that must not end the device's connection).
fn same_credential(old: Option<&str>, new: Option<&str>) -> bool {
    match (old, new) {
        (Some(old), Some(new)) if old != new => {
            anxin_credentials::is_legacy_digest(old)
                && anxin_credentials::is_sealed(new)
                && anxin_credentials::verify_digest(old, new)
        }
        (old, new) => old == new,
    }
}

impl DeviceBook {
    pub fn from_config(config: &GatewayConfig) -> Self {
        let configured: HashMap<String, DeviceEntry> = config
            .devices
            .iter()
            .map(|d| {
                let credential = d
                    .credential
                    .clone()
                    .or_else(|| d.password_sha256.as_ref().map(|h| h.to_ascii_lowercase()))
                    .or_else(|| d.password.as_deref().map(digest));
                (
                    d.id.clone(),
                    DeviceEntry {
                        kind: d.kind.clone(),
                        credential,
                        active: true,
                    },
                )
            })
            .collect();
        let local: Arc<[String]> = Arc::from(vec![config.fallback.local_topic.clone()]);
        let observers = config
            .mqtt
            .observers
            .iter()
            .map(|o| {
                (
                    o.username.clone(),
                    Observer {
                        credential: o
                            .credential
                            .clone()
                            .or_else(|| o.password_sha256.as_ref().map(|h| h.to_ascii_lowercase()))
                            .or_else(|| o.password.as_deref().map(digest))
                            .unwrap_or_default(),
                        topics: local.clone(),
                    },
                )
            })
            .collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            require_auth: config.mqtt.require_auth,
            devices: RwLock::new(configured.clone()),
            configured,
            observers,
            generation: AtomicU64::new(0),
            verified: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            cache_key: rand::random(),
            deriving: Arc::new(tokio::sync::Semaphore::new(cores.saturating_sub(1).max(1))),
        }
    }

    /// Takes the server's roster (the whole of it) over the configured
    /// list. Returns the devices whose connections must end now: those
    /// deactivated, removed or given a new credential. A legacy digest the
    /// server sealed is the same credential (checked by one derivation per
    /// such device: call this where blocking is fine).
    pub fn set_roster(&self, roster: HashMap<String, DeviceEntry>) -> Vec<String> {
        let mut next = self.configured.clone();
        for (id, mut entry) in roster {
            // A device the server lists without a credential keeps the one
            // configured here, if any.
            if entry.credential.is_none()
                && let Some(configured) = self.configured.get(&id)
            {
                entry.credential = configured.credential.clone();
            }
            next.insert(id, entry);
        }
        let current = self
            .devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let revoked = current
            .iter()
            .filter(|(id, old)| match next.get(*id) {
                None => true,
                Some(new) => {
                    !new.active
                        || !same_credential(old.credential.as_deref(), new.credential.as_deref())
                }
            })
            .map(|(id, _)| id.clone())
            .collect();
        for kept in [&self.verified, &self.refused] {
            kept.lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|id, (credential, _)| {
                    next.get(id)
                        .is_some_and(|d| d.credential.as_deref() == Some(credential.as_str()))
                });
        }
        *self.devices.write().unwrap_or_else(|p| p.into_inner()) = next;
        self.generation.fetch_add(1, Ordering::Relaxed);
        revoked
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Active devices and their kinds.
    pub fn active(&self) -> Vec<(String, String)> {
        self.devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, d)| d.active)
            .map(|(id, d)| (id.clone(), d.kind.clone()))
            .collect()
    }

    /// Checks a CONNECT's credentials and names who connected. Without
    /// `require_auth`, the username (or else the client id) is taken on
    /// trust; the topic rules still bind the connection to that one name.
    pub async fn login(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Identity, LoginRefusal> {
        let name = match username.filter(|u| !u.is_empty()) {
            Some(user) => user,
            None if !self.require_auth && !client_id.is_empty() => client_id,
            None => return Err(LoginRefusal::NoCredentials),
        };
        let (identity, stored) = match self.observers.get(name) {
            Some(observer) => (
                Identity::Observer {
                    name: name.to_string(),
                    topics: observer.topics.clone(),
                },
                Some(observer.credential.clone()),
            ),
            None => {
                let devices = self.devices.read().unwrap_or_else(|p| p.into_inner());
                let entry = devices.get(name).ok_or(LoginRefusal::UnknownDevice)?;
                if !entry.active {
                    return Err(LoginRefusal::Deactivated);
                }
                (Identity::Device(name.to_string()), entry.credential.clone())
            }
        };
        if !self.require_auth {
            return Ok(identity);
        }
        let (Some(stored), Some(given)) = (stored, password) else {
            return Err(LoginRefusal::NoCredentials);
        };
        if self.verify(name, stored, given).await {
            Ok(identity)
        } else {
            Err(LoginRefusal::BadPassword)
        }
    }

    /// A password against a stored credential, counted by how it was
    /// checked.
    async fn verify(&self, name: &str, stored: String, given: &str) -> bool {
        let (matches, how) = self.check(name, stored, given).await;
        metrics::counter!(m::CREDENTIAL_CHECKS, "how" => how.label()).increment(1);
        matches
    }

    /// A legacy digest at once; a sealed credential from what this process
    /// checked before (the last password verified, the last refused), else
    /// derived on the blocking pool.
    async fn check(&self, name: &str, stored: String, given: &str) -> (bool, Check) {
        if !anxin_credentials::is_sealed(&stored) {
            return (anxin_credentials::verify(given, &stored), Check::Digest);
        }
        let tag = self.tag(name, given);
        let seen = |kept: &Mutex<HashMap<String, Checked>>| {
            kept.lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .is_some_and(|(credential, known)| *credential == stored && *known == tag)
        };
        if seen(&self.verified) {
            return (true, Check::Cached);
        }
        if seen(&self.refused) {
            return (false, Check::RefusedAgain);
        }
        let Ok(_permit) = self.deriving.clone().acquire_owned().await else {
            return (false, Check::Derived);
        };
        let (password, credential) = (given.to_string(), stored.clone());
        let matches =
            tokio::task::spawn_blocking(move || anxin_credentials::verify(&password, &credential))
                .await
                .unwrap_or(false);
        let kept = if matches {
            &self.verified
        } else {
            &self.refused
        };
        kept.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (stored, tag));
        (matches, Check::Derived)
    }

    fn tag(&self, name: &str, password: &str) -> Tag {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.cache_key).expect("HMAC takes any key length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize()
    }

    /// A device that presented a client certificate the TLS layer verified
    /// against `mqtt.tls.client_ca`: the certificate is the credential, but
    /// the device must still be registered and active.
    pub fn login_certified(&self, device_id: &str) -> Result<Identity, LoginRefusal> {
        let devices = self.devices.read().unwrap_or_else(|p| p.into_inner());
        let entry = devices.get(device_id).ok_or(LoginRefusal::UnknownDevice)?;
        if !entry.active {
            return Err(LoginRefusal::Deactivated);
        }
        Ok(Identity::Device(device_id.to_string()))
    }

    /// Registered and active: its events are accepted.
    pub fn is_active(&self, device_id: &str) -> bool {
        self.devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(device_id)
            .is_some_and(|d| d.active)
    }

    pub fn len(&self) -> usize {
        self.devices.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(require_auth: bool) -> DeviceBook {
        let mut config = GatewayConfig::default();
        config.mqtt.require_auth = require_auth;
        let device = |id: &str| crate::config::DeviceConfig {
            id: id.into(),
            kind: "call_button".into(),
            password: None,
            password_sha256: None,
            credential: None,
        };
        config.devices = vec![
            crate::config::DeviceConfig {
                password: Some("s3cret-1".into()),
                ..device("btn-1")
            },
            crate::config::DeviceConfig {
                password_sha256: Some(digest("s3cret-2").to_uppercase()),
                ..device("btn-2")
            },
            crate::config::DeviceConfig {
                credential: Some(anxin_credentials::seal("s3cret-4")),
                ..device("btn-4")
            },
        ];
        config.mqtt.observers = vec![
            crate::config::ObserverConfig {
                username: "siren".into(),
                password: Some("loud".into()),
                password_sha256: None,
                credential: None,
            },
            crate::config::ObserverConfig {
                username: "lobby".into(),
                password: None,
                password_sha256: None,
                credential: Some(anxin_credentials::seal("lobby-screen")),
            },
        ];
        DeviceBook::from_config(&config)
    }

    fn entry(credential: String, active: bool) -> DeviceEntry {
        DeviceEntry {
            kind: "call_button".into(),
            credential: Some(credential),
            active,
        }
    }

    #[tokio::test]
    async fn a_device_logs_in_with_its_own_password_only() {
        let book = book(true);
        let login = |user: &'static str, password: Option<&'static str>| {
            let book = &book;
            async move { book.login("c", Some(user), password).await }
        };
        assert_eq!(
            login("btn-1", Some("s3cret-1")).await,
            Ok(Identity::Device("btn-1".into()))
        );
        assert_eq!(
            login("btn-2", Some("s3cret-2")).await,
            Ok(Identity::Device("btn-2".into()))
        );
        assert_eq!(
            login("btn-4", Some("s3cret-4")).await,
            Ok(Identity::Device("btn-4".into()))
        );
        assert_eq!(
            login("btn-1", Some("s3cret-2")).await,
            Err(LoginRefusal::BadPassword)
        );
        assert_eq!(
            login("btn-4", Some("s3cret-1")).await,
            Err(LoginRefusal::BadPassword)
        );
        assert_eq!(
            login("btn-9", Some("s3cret-1")).await,
            Err(LoginRefusal::UnknownDevice)
        );
        assert_eq!(
            book.login("btn-1", None, None).await,
            Err(LoginRefusal::NoCredentials)
        );
        assert_eq!(login("btn-1", None).await, Err(LoginRefusal::NoCredentials));
        assert!(matches!(
            login("siren", Some("loud")).await,
            Ok(Identity::Observer { .. })
        ));
        assert_eq!(
            login("siren", Some("quiet")).await,
            Err(LoginRefusal::BadPassword)
        );
        assert!(matches!(
            login("lobby", Some("lobby-screen")).await,
            Ok(Identity::Observer { .. })
        ));
        assert_eq!(
            login("lobby", Some("loud")).await,
            Err(LoginRefusal::BadPassword)
        );
    }

    #[tokio::test]
    async fn a_verified_login_is_kept_for_that_password_and_that_credential_only() {
        let book = book(true);
        assert!(
            book.login("c", Some("btn-4"), Some("s3cret-4"))
                .await
                .is_ok()
        );
        let cached = |book: &DeviceBook| {
            book.verified
                .lock()
                .unwrap()
                .get("btn-4")
                .map(|(credential, _)| credential.clone())
        };
        let sealed = cached(&book).expect("the verified login is kept");
        // A wrong password is not taken from the cache, nor does it spoil it.
        assert_eq!(
            book.login("c", Some("btn-4"), Some("s3cret-x")).await,
            Err(LoginRefusal::BadPassword)
        );
        assert!(
            book.login("c", Some("btn-4"), Some("s3cret-4"))
                .await
                .is_ok()
        );
        // Re-keyed by the server: the kept login is forgotten with the
        // credential it was verified against.
        book.set_roster(HashMap::from([(
            "btn-4".to_string(),
            entry(anxin_credentials::seal("new-secret-4"), true),
        )]));
        assert_eq!(cached(&book), None);
        assert_eq!(
            book.login("c", Some("btn-4"), Some("s3cret-4")).await,
            Err(LoginRefusal::BadPassword)
        );
        assert!(
            book.login("c", Some("btn-4"), Some("new-secret-4"))
                .await
                .is_ok()
        );
        assert_ne!(cached(&book), Some(sealed));
    }

    #[tokio::test]
    async fn a_wrong_password_given_again_costs_no_derivation() {
        let book = book(true);
        let check = |password: &'static str| {
            let book = &book;
            async move {
                let stored = book.devices.read().unwrap()["btn-4"].credential.clone();
                book.check("btn-4", stored.expect("btn-4 is sealed"), password)
                    .await
            }
        };
        assert_eq!(check("old-secret").await, (false, Check::Derived));
        assert_eq!(check("old-secret").await, (false, Check::RefusedAgain));
        // Another wrong password is derived; only the last one is kept.
        assert_eq!(check("older-secret").await, (false, Check::Derived));
        assert_eq!(check("older-secret").await, (false, Check::RefusedAgain));
        assert_eq!(check("old-secret").await, (false, Check::Derived));
        // The right password is never taken for a refused one.
        assert_eq!(check("s3cret-4").await, (true, Check::Derived));
        assert_eq!(check("s3cret-4").await, (true, Check::Cached));
        assert_eq!(check("old-secret").await, (false, Check::RefusedAgain));
        // Re-keyed to what was refused: the refusal is forgotten with the
        // credential it was checked against.
        book.set_roster(HashMap::from([(
            "btn-4".to_string(),
            entry(anxin_credentials::seal("old-secret"), true),
        )]));
        assert_eq!(check("old-secret").await, (true, Check::Derived));
    }

    #[tokio::test]
    async fn a_legacy_digest_sealed_by_the_server_keeps_the_connection() {
        let book = book(true);
        let legacy = digest("s3cret-3");
        book.set_roster(HashMap::from([(
            "btn-3".to_string(),
            entry(legacy.clone(), true),
        )]));
        assert!(
            book.login("c", Some("btn-3"), Some("s3cret-3"))
                .await
                .is_ok()
        );
        // The same digest, sealed where it lay: not a re-key.
        let revoked = book.set_roster(HashMap::from([(
            "btn-3".to_string(),
            entry(anxin_credentials::seal_digest(&legacy), true),
        )]));
        assert!(revoked.is_empty(), "{revoked:?}");
        assert!(
            book.login("c", Some("btn-3"), Some("s3cret-3"))
                .await
                .is_ok()
        );
        // Sealed from another password: a re-key, the connection ends.
        let revoked = book.set_roster(HashMap::from([(
            "btn-3".to_string(),
            entry(anxin_credentials::seal("other-secret-3"), true),
        )]));
        assert_eq!(revoked, ["btn-3"]);
    }

    #[tokio::test]
    async fn the_servers_roster_wins_and_revokes_what_it_changes() {
        let book = book(true);
        let revoked = book.set_roster(HashMap::from([
            // re-keyed by the server
            ("btn-1".to_string(), entry(digest("new-secret-1"), true)),
            // deactivated
            ("btn-2".to_string(), entry(digest("s3cret-2"), false)),
            // new
            (
                "btn-3".to_string(),
                entry(anxin_credentials::seal("s3cret-3"), true),
            ),
        ]));
        let mut revoked = revoked;
        revoked.sort();
        assert_eq!(revoked, ["btn-1", "btn-2"]);
        assert_eq!(
            book.login("c", Some("btn-1"), Some("s3cret-1")).await,
            Err(LoginRefusal::BadPassword)
        );
        assert!(
            book.login("c", Some("btn-1"), Some("new-secret-1"))
                .await
                .is_ok()
        );
        assert_eq!(
            book.login("c", Some("btn-2"), Some("s3cret-2")).await,
            Err(LoginRefusal::Deactivated)
        );
        assert!(
            book.login("c", Some("btn-3"), Some("s3cret-3"))
                .await
                .is_ok()
        );
        assert!(!book.is_active("btn-2"));
        // A later roster without btn-3 removes it; the configured list stays.
        let revoked = book.set_roster(HashMap::new());
        assert!(revoked.contains(&"btn-3".to_string()));
        assert!(
            book.login("c", Some("btn-1"), Some("s3cret-1"))
                .await
                .is_ok()
        );
        assert_eq!(
            book.login("c", Some("btn-3"), Some("s3cret-3")).await,
            Err(LoginRefusal::UnknownDevice)
        );
    }

    #[tokio::test]
    async fn without_require_auth_the_name_is_trusted_but_must_be_registered() {
        let book = book(false);
        assert_eq!(
            book.login("btn-1", None, None).await,
            Ok(Identity::Device("btn-1".into()))
        );
        assert_eq!(
            book.login("ghost", None, None).await,
            Err(LoginRefusal::UnknownDevice)
        );
    }
}
