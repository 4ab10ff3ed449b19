//! The device book: who may connect, with which credential. A device logs
//! in with username = device id and its password; the book keeps only the
//! password's SHA-256 (the server stores the same digest, so it can hand
//! a device's credential to its gateway without the password ever
//! leaving the admin's request). Device passwords are machine-generated
//! secrets, not words a person chose, so one fast hash is enough and a
//! gateway restart with 10,000 devices reconnecting costs milliseconds.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use sha2::{Digest, Sha256};

use super::acl::Identity;
use crate::config::GatewayConfig;

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
    /// Hex SHA-256 of the password; `None`: the device has no credential
    /// and can only connect while `mqtt.require_auth = false`.
    pub password_sha256: Option<String>,
    pub active: bool,
}

struct Observer {
    password_sha256: String,
    topics: Arc<[String]>,
}

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
}

/// Hex SHA-256, as the server stores device passwords.
pub fn digest(password: &str) -> String {
    hex::encode(Sha256::digest(password.as_bytes()))
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl DeviceBook {
    pub fn from_config(config: &GatewayConfig) -> Self {
        let configured: HashMap<String, DeviceEntry> = config
            .devices
            .iter()
            .map(|d| {
                let password_sha256 = d
                    .password_sha256
                    .clone()
                    .map(|h| h.to_ascii_lowercase())
                    .or_else(|| d.password.as_deref().map(digest));
                (
                    d.id.clone(),
                    DeviceEntry {
                        kind: d.kind.clone(),
                        password_sha256,
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
                        password_sha256: o
                            .password_sha256
                            .clone()
                            .map(|h| h.to_ascii_lowercase())
                            .or_else(|| o.password.as_deref().map(digest))
                            .unwrap_or_default(),
                        topics: local.clone(),
                    },
                )
            })
            .collect();
        Self {
            require_auth: config.mqtt.require_auth,
            devices: RwLock::new(configured.clone()),
            configured,
            observers,
            generation: AtomicU64::new(0),
        }
    }

    /// Takes the server's roster (the whole of it) over the configured
    /// list. Returns the devices whose connections must end now: those
    /// deactivated, removed or given a new credential.
    pub fn set_roster(&self, roster: HashMap<String, DeviceEntry>) -> Vec<String> {
        let mut next = self.configured.clone();
        for (id, mut entry) in roster {
            // A device the server lists without a credential keeps the one
            // configured here, if any.
            if entry.password_sha256.is_none()
                && let Some(configured) = self.configured.get(&id)
            {
                entry.password_sha256 = configured.password_sha256.clone();
            }
            next.insert(id, entry);
        }
        let mut devices = self.devices.write().unwrap_or_else(|p| p.into_inner());
        let revoked = devices
            .iter()
            .filter(|(id, old)| match next.get(*id) {
                None => true,
                Some(new) => !new.active || new.password_sha256 != old.password_sha256,
            })
            .map(|(id, _)| id.clone())
            .collect();
        *devices = next;
        drop(devices);
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
    pub fn login(
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
        let password_ok = |stored: Option<&str>| -> Result<(), LoginRefusal> {
            if !self.require_auth {
                return Ok(());
            }
            let (Some(stored), Some(given)) = (stored, password) else {
                return Err(LoginRefusal::NoCredentials);
            };
            if same(stored, &digest(given)) {
                Ok(())
            } else {
                Err(LoginRefusal::BadPassword)
            }
        };
        if let Some(observer) = self.observers.get(name) {
            password_ok(Some(&observer.password_sha256))?;
            return Ok(Identity::Observer {
                name: name.to_string(),
                topics: observer.topics.clone(),
            });
        }
        let devices = self.devices.read().unwrap_or_else(|p| p.into_inner());
        let entry = devices.get(name).ok_or(LoginRefusal::UnknownDevice)?;
        if !entry.active {
            return Err(LoginRefusal::Deactivated);
        }
        password_ok(entry.password_sha256.as_deref())?;
        Ok(Identity::Device(name.to_string()))
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
        config.devices = vec![
            crate::config::DeviceConfig {
                id: "btn-1".into(),
                kind: "call_button".into(),
                password: Some("s3cret-1".into()),
                password_sha256: None,
            },
            crate::config::DeviceConfig {
                id: "btn-2".into(),
                kind: "call_button".into(),
                password: None,
                password_sha256: Some(digest("s3cret-2").to_uppercase()),
            },
        ];
        config.mqtt.observers = vec![crate::config::ObserverConfig {
            username: "siren".into(),
            password: Some("loud".into()),
            password_sha256: None,
        }];
        DeviceBook::from_config(&config)
    }

    #[test]
    fn a_device_logs_in_with_its_own_password_only() {
        let book = book(true);
        assert_eq!(
            book.login("c", Some("btn-1"), Some("s3cret-1")),
            Ok(Identity::Device("btn-1".into()))
        );
        assert_eq!(
            book.login("c", Some("btn-2"), Some("s3cret-2")),
            Ok(Identity::Device("btn-2".into()))
        );
        assert_eq!(
            book.login("c", Some("btn-1"), Some("s3cret-2")),
            Err(LoginRefusal::BadPassword)
        );
        assert_eq!(
            book.login("c", Some("btn-9"), Some("s3cret-1")),
            Err(LoginRefusal::UnknownDevice)
        );
        assert_eq!(
            book.login("btn-1", None, None),
            Err(LoginRefusal::NoCredentials)
        );
        assert_eq!(
            book.login("c", Some("btn-1"), None),
            Err(LoginRefusal::NoCredentials)
        );
        assert!(matches!(
            book.login("c", Some("siren"), Some("loud")),
            Ok(Identity::Observer { .. })
        ));
        assert_eq!(
            book.login("c", Some("siren"), Some("quiet")),
            Err(LoginRefusal::BadPassword)
        );
    }

    #[test]
    fn the_servers_roster_wins_and_revokes_what_it_changes() {
        let book = book(true);
        let entry = |password: &str, active| DeviceEntry {
            kind: "call_button".into(),
            password_sha256: Some(digest(password)),
            active,
        };
        let revoked = book.set_roster(HashMap::from([
            // re-keyed by the server
            ("btn-1".to_string(), entry("new-secret-1", true)),
            // deactivated
            ("btn-2".to_string(), entry("s3cret-2", false)),
            // new
            ("btn-3".to_string(), entry("s3cret-3", true)),
        ]));
        let mut revoked = revoked;
        revoked.sort();
        assert_eq!(revoked, ["btn-1", "btn-2"]);
        assert_eq!(
            book.login("c", Some("btn-1"), Some("s3cret-1")),
            Err(LoginRefusal::BadPassword)
        );
        assert!(book.login("c", Some("btn-1"), Some("new-secret-1")).is_ok());
        assert_eq!(
            book.login("c", Some("btn-2"), Some("s3cret-2")),
            Err(LoginRefusal::Deactivated)
        );
        assert!(book.login("c", Some("btn-3"), Some("s3cret-3")).is_ok());
        assert!(!book.is_active("btn-2"));
        // A later roster without btn-3 removes it; the configured list stays.
        let revoked = book.set_roster(HashMap::new());
        assert!(revoked.contains(&"btn-3".to_string()));
        assert!(book.login("c", Some("btn-1"), Some("s3cret-1")).is_ok());
        assert_eq!(
            book.login("c", Some("btn-3"), Some("s3cret-3")),
            Err(LoginRefusal::UnknownDevice)
        );
    }

    #[test]
    fn without_require_auth_the_name_is_trusted_but_must_be_registered() {
        let book = book(false);
        assert_eq!(
            book.login("btn-1", None, None),
            Ok(Identity::Device("btn-1".into()))
        );
        assert_eq!(
            book.login("ghost", None, None),
            Err(LoginRefusal::UnknownDevice)
        );
    }
}
