//! The gateway's one configuration struct: defaults in one place, validated at
//! start-up so that a bad field is named before anything starts.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("config field `{field}`: {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Identifies this gateway to the server; appears on every alert it forwards.
    pub gateway_id: String,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub journal: JournalConfig,
    pub uplink: UplinkConfig,
    pub limits: LimitsConfig,
    pub supervision: SupervisionConfig,
    pub fallback: FallbackConfig,
    /// Devices allowed to publish through this gateway. Events from any other
    /// device id are rejected and counted.
    pub devices: Vec<DeviceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Where the device front listens (MQTT 3.1.1 and 5).
    pub listen: SocketAddr,
    /// Device connections at most; one more is answered "server busy".
    pub max_connections: usize,
    /// Live connections one device may hold at once, each with its own
    /// client id (a wearable's firmware and its app; `mosquitto_sub` beside
    /// `mosquitto_pub`). One more: the oldest gives way. The same client id
    /// always takes its own session over.
    pub connections_per_device: usize,
    /// Devices log in with username = device id and their password (on by
    /// default). Off: the username, or else the client id, is trusted as
    /// the device id — for a closed test bench only. Either way a
    /// connection may only use its own device's topics.
    pub require_auth: bool,
    /// On-site consoles and sirens: may subscribe to `fallback.local_topic`
    /// and nothing else.
    pub observers: Vec<ObserverConfig>,
    /// Listen in plain text on `listen`. Off: devices connect over TLS
    /// only (`[mqtt.tls]`).
    pub plaintext: bool,
    /// A TLS listener beside the plain one (MQTT over TLS, 8883).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MqttTlsConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    pub listen: SocketAddr,
    /// PEM: the gateway's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: CA whose client certificates name devices (subject CN = device
    /// id). A device with such a certificate needs no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS connections without a client certificate.
    #[serde(default)]
    pub require_client_cert: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObserverConfig {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Hex SHA-256 of the password, instead of `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_sha256: Option<String>,
    /// The password sealed (`anxin-gateway --seal-password`), instead of
    /// either: the file then holds no fast digest of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `/healthz` and `/metrics`.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Directory of the sled journal; created if missing.
    pub path: PathBuf,
    /// Logical size limit of the journal. At the limit P3 then P2 events are
    /// evicted oldest first; P0/P1 are never evicted.
    pub quota_bytes: u64,
    /// Free space on the journal's filesystem under which P2/P3 events are
    /// deferred (no ack; devices keep them and retry) — long before the disk
    /// is full. See docs/operations.md, "Running out of disk". Unset: 1/8
    /// of the filesystem, at most 64 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_bytes: Option<u64>,
    /// Disk reserve held as a file in the journal directory and given back
    /// when the disk fills, so P0/P1 events are still stored and delivered
    /// entries can still be deleted. 0 disables it. Unset: 1/32 of the
    /// filesystem (at least 1 MiB), at most 16 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_bytes: Option<u64>,
}

impl JournalConfig {
    /// The disk guard's thresholds: as set, else fitted to the filesystem.
    pub fn disk_thresholds(&self) -> anxin_host::disk::Thresholds {
        anxin_host::disk::Thresholds {
            reserve_bytes: self.reserve_bytes,
            min_free_bytes: self.min_free_bytes,
            default_reserve_bytes: 16 * 1024 * 1024,
            default_min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Dispatch servers' gRPC endpoints, tried in turn ("http://host:port").
    pub servers: Vec<String>,
    /// Events sent but not yet acknowledged by the server, at most.
    pub window: usize,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub connect_timeout_ms: u64,
    /// This gateway's uplink token, issued by the server's admin
    /// (`PUT /api/v1/gateways/{id}`). Sent as `authorization: Bearer`.
    pub token: String,
    /// TLS to the servers (`https://` endpoints): the CA that issued the
    /// servers' certificates, and this gateway's own certificate (subject
    /// CN = gateway_id) and key when the servers ask for one.
    pub tls: Option<UplinkTls>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkTls {
    pub ca: std::path::PathBuf,
    #[serde(default)]
    pub cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub key: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest event payload accepted, in bytes. Larger ones are rejected and
    /// counted (the broker itself drops a connection above 64 KiB).
    pub max_event_bytes: usize,
    /// Sustained events per second one device may send; above it events get
    /// no ack (the device retries later) and are counted as `rate_limited`.
    pub device_rate_per_sec: f64,
    /// Events one device may send in a burst above the sustained rate.
    pub device_burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// How often deadlines are checked.
    pub check_interval_ms: u64,
    /// A device silent this long (by kind) raises a P1 DEVICE_OFFLINE.
    pub heartbeat_deadline_secs: BTreeMap<String, u64>,
    /// After a device's MQTT last will ("offline" on its status topic), it
    /// is declared offline this much later unless it speaks again.
    pub last_will_grace_secs: u64,
    /// Reported battery below this raises a P2 LOW_BATTERY (once per dip).
    pub low_battery_pct: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    /// With the server unreachable this long and a P0 pending, alert locally.
    pub after_secs: u64,
    /// Local MQTT topic an on-site console or siren listens on.
    pub local_topic: String,
    /// Optional webhook (JSON POST) for the local alarm; empty for none.
    pub webhook_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    /// call_button, wearable, room_sensor, smoke_detector, …
    #[serde(default = "default_device_kind")]
    pub kind: String,
    /// MQTT password (username = device id); this or `password_sha256` is
    /// required with `mqtt.require_auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Hex SHA-256 of the password (what earlier servers stored), so the
    /// gateway's config need not hold the password itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_sha256: Option<String>,
    /// A sealed credential (`$pbkdf2-sha256$…`, as the server stores and
    /// `anxin-gateway --seal-password` prints): neither the password nor a fast
    /// digest of it in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

fn default_device_kind() -> String {
    "call_button".into()
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            gateway_id: "gw-local".into(),
            mqtt: MqttConfig::default(),
            http: HttpConfig::default(),
            journal: JournalConfig::default(),
            uplink: UplinkConfig::default(),
            limits: LimitsConfig::default(),
            supervision: SupervisionConfig::default(),
            fallback: FallbackConfig::default(),
            devices: Vec::new(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 1883).into(),
            max_connections: 10_010,
            connections_per_device: 4,
            require_auth: true,
            observers: Vec::new(),
            plaintext: true,
            tls: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 9181).into(),
        }
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("anxin-gateway-journal"),
            quota_bytes: 256 * 1024 * 1024,
            min_free_bytes: None,
            reserve_bytes: None,
        }
    }
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            servers: vec!["http://127.0.0.1:50051".into()],
            // In flight over one round trip of the server's commit: 256
            // capped the uplink at ~27,000 events/s on loopback, 2,048
            // reached ~33,000 (BENCHMARKS.md, throughput).
            window: 2048,
            backoff_initial_ms: 200,
            backoff_max_ms: 10_000,
            connect_timeout_ms: 3_000,
            token: String::new(),
            tls: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: 4096,
            device_rate_per_sec: 5.0,
            device_burst: 20,
        }
    }
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            check_interval_ms: 1000,
            // Typical firmware: buttons and smoke detectors report hourly,
            // wearables every 5 minutes, room sensors every 10; the deadline
            // allows one missed report plus slack.
            heartbeat_deadline_secs: BTreeMap::from([
                ("call_button".to_string(), 2 * 3600 + 300),
                ("smoke_detector".to_string(), 2 * 3600 + 300),
                ("wearable".to_string(), 2 * 300 + 60),
                ("room_sensor".to_string(), 2 * 600 + 60),
                // Household meters and door sensors report hourly.
                ("meter".to_string(), 2 * 3600 + 300),
                ("door_sensor".to_string(), 2 * 3600 + 300),
            ]),
            last_will_grace_secs: 120,
            low_battery_pct: 20,
        }
    }
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            after_secs: 60,
            local_topic: "anxin/v1/gw/local-alarm".into(),
            webhook_url: String::new(),
        }
    }
}

/// The largest payload the embedded broker lets through at all.
pub const BROKER_MAX_PAYLOAD: usize = 64 * 1024;

/// A credential is a password, the hex SHA-256 of one, or a sealed
/// credential: one of them.
fn check_credential(
    at: &str,
    password: Option<&str>,
    sha256: Option<&str>,
    sealed: Option<&str>,
    required: bool,
) -> Result<(), ConfigError> {
    let password = password.filter(|p| !p.is_empty());
    let given = [password.is_some(), sha256.is_some(), sealed.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        let field = if sealed.is_some() {
            "credential"
        } else {
            "password_sha256"
        };
        return Err(invalid(
            format!("{at}.{field}"),
            "give one of password, password_sha256 and credential",
        ));
    }
    if let Some(hash) = sha256
        && !anxin_credentials::is_legacy_digest(hash)
    {
        return Err(invalid(
            format!("{at}.password_sha256"),
            "must be 64 hex digits (sha256sum of the password)",
        ));
    }
    if let Some(sealed) = sealed {
        if !anxin_credentials::is_sealed(sealed) {
            return Err(invalid(
                format!("{at}.credential"),
                "must be a sealed credential ($pbkdf2-sha256$…, from `anxin-gateway --seal-password`)",
            ));
        }
        anxin_credentials::check_stored(sealed)
            .map_err(|why| invalid(format!("{at}.credential"), why))?;
    }
    if required && given == [false, false, false] {
        return Err(invalid(
            format!("{at}.password"),
            "is required when mqtt.require_auth = true (or give password_sha256 or credential)",
        ));
    }
    Ok(())
}

impl GatewayConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&text, &display)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_string(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.gateway_id.trim().is_empty() {
            return Err(invalid("gateway_id", "must not be empty"));
        }
        if self.uplink.servers.is_empty() {
            return Err(invalid(
                "uplink.servers",
                "list at least one server endpoint",
            ));
        }
        for (i, server) in self.uplink.servers.iter().enumerate() {
            if !(server.starts_with("http://") || server.starts_with("https://")) {
                return Err(invalid(
                    format!("uplink.servers[{i}]"),
                    format!("`{server}` must start with http:// or https://"),
                ));
            }
        }
        if let Some(tls) = &self.uplink.tls
            && tls.cert.is_some() != tls.key.is_some()
        {
            return Err(invalid(
                "uplink.tls.key",
                "uplink.tls.cert and uplink.tls.key go together",
            ));
        }
        if self.uplink.tls.is_some()
            && let Some(plain) = self
                .uplink
                .servers
                .iter()
                .find(|s| s.starts_with("http://"))
        {
            return Err(invalid(
                "uplink.servers",
                format!("`{plain}` is plaintext while uplink.tls is set: use https://"),
            ));
        }
        if !self.uplink.token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(invalid(
                "uplink.token",
                "must be printable ASCII without spaces",
            ));
        }
        if self.uplink.window == 0 {
            return Err(invalid("uplink.window", "must be at least 1"));
        }
        if self.uplink.backoff_initial_ms == 0
            || self.uplink.backoff_max_ms < self.uplink.backoff_initial_ms
        {
            return Err(invalid(
                "uplink.backoff_max_ms",
                "needs 0 < backoff_initial_ms <= backoff_max_ms",
            ));
        }
        if self.limits.max_event_bytes == 0 || self.limits.max_event_bytes > BROKER_MAX_PAYLOAD {
            return Err(invalid(
                "limits.max_event_bytes",
                format!("must be between 1 and {BROKER_MAX_PAYLOAD}"),
            ));
        }
        if self.mqtt.listen == self.http.listen {
            return Err(invalid("http.listen", "must differ from mqtt.listen"));
        }
        if self.journal.quota_bytes < 64 * 1024 {
            return Err(invalid("journal.quota_bytes", "must be at least 65536"));
        }
        if let Some(reserve) = self.journal.reserve_bytes
            && reserve > 0
            && reserve < 1024 * 1024
        {
            return Err(invalid(
                "journal.reserve_bytes",
                "must be 0 (no reserve) or at least 1048576: the reserve is what alarms are written into when the disk is full",
            ));
        }
        if let (Some(min_free), Some(reserve)) =
            (self.journal.min_free_bytes, self.journal.reserve_bytes)
            && min_free < reserve
        {
            return Err(invalid(
                "journal.min_free_bytes",
                "must be at least journal.reserve_bytes",
            ));
        }
        if self.limits.device_rate_per_sec.is_nan()
            || self.limits.device_rate_per_sec <= 0.0
            || self.limits.device_burst == 0
        {
            return Err(invalid(
                "limits.device_rate_per_sec",
                "rate must be > 0 and device_burst >= 1",
            ));
        }
        if self.supervision.check_interval_ms == 0 {
            return Err(invalid(
                "supervision.check_interval_ms",
                "must be at least 1",
            ));
        }
        if self.supervision.low_battery_pct > 100 {
            return Err(invalid(
                "supervision.low_battery_pct",
                "is a percentage (0-100)",
            ));
        }
        for (kind, secs) in &self.supervision.heartbeat_deadline_secs {
            if *secs == 0 {
                return Err(invalid(
                    format!("supervision.heartbeat_deadline_secs.{kind}"),
                    "must be at least 1",
                ));
            }
        }
        if self.fallback.local_topic.is_empty() || self.fallback.local_topic.contains(['+', '#']) {
            return Err(invalid(
                "fallback.local_topic",
                "must be a topic name without wildcards",
            ));
        }
        let webhook = &self.fallback.webhook_url;
        if !webhook.is_empty() && !webhook.starts_with("http://") {
            // reqwest is built without TLS here: the webhook is meant for a
            // siren or console on the site's own network.
            return Err(invalid(
                "fallback.webhook_url",
                format!("`{webhook}` must start with http:// (on-site endpoints only)"),
            ));
        }
        match &self.mqtt.tls {
            None if !self.mqtt.plaintext => {
                return Err(invalid(
                    "mqtt.plaintext",
                    "is false but there is no [mqtt.tls]: devices could not connect at all",
                ));
            }
            Some(tls) => {
                if tls.listen == self.http.listen
                    || (self.mqtt.plaintext && tls.listen == self.mqtt.listen)
                {
                    return Err(invalid(
                        "mqtt.tls.listen",
                        "must differ from mqtt.listen and http.listen",
                    ));
                }
                if tls.require_client_cert && tls.client_ca.is_none() {
                    return Err(invalid(
                        "mqtt.tls.require_client_cert",
                        "needs mqtt.tls.client_ca to verify the certificates against",
                    ));
                }
            }
            None => {}
        }
        if self.mqtt.max_connections == 0 {
            return Err(invalid("mqtt.max_connections", "must be at least 1"));
        }
        if !(1..=64).contains(&self.mqtt.connections_per_device) {
            return Err(invalid(
                "mqtt.connections_per_device",
                "must be between 1 and 64",
            ));
        }
        for (i, observer) in self.mqtt.observers.iter().enumerate() {
            if observer.username.is_empty() || observer.username.contains(['/', '+', '#']) {
                return Err(invalid(
                    format!("mqtt.observers[{i}].username"),
                    "must be non-empty, without '/', '+' or '#'",
                ));
            }
            if self.devices.iter().any(|d| d.id == observer.username) {
                return Err(invalid(
                    format!("mqtt.observers[{i}].username"),
                    format!("`{}` is also a device id", observer.username),
                ));
            }
            check_credential(
                &format!("mqtt.observers[{i}]"),
                observer.password.as_deref(),
                observer.password_sha256.as_deref(),
                observer.credential.as_deref(),
                true,
            )?;
        }
        let mut seen = HashSet::new();
        for (i, device) in self.devices.iter().enumerate() {
            let id = device.id.as_str();
            if id.is_empty() || id.contains(['/', '+', '#', '\0']) || id.len() > 64 {
                return Err(invalid(
                    format!("devices[{i}].id"),
                    format!("`{id}` must be 1-64 characters without '/', '+' or '#'"),
                ));
            }
            if !self
                .supervision
                .heartbeat_deadline_secs
                .contains_key(&device.kind)
            {
                return Err(invalid(
                    format!("devices[{i}].kind"),
                    format!(
                        "`{}` has no supervision.heartbeat_deadline_secs entry (known: {})",
                        device.kind,
                        self.supervision
                            .heartbeat_deadline_secs
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            check_credential(
                &format!("devices[{i}]"),
                device.password.as_deref(),
                device.password_sha256.as_deref(),
                device.credential.as_deref(),
                self.mqtt.require_auth,
            )?;
            if !seen.insert(id) {
                return Err(invalid(
                    format!("devices[{i}].id"),
                    format!("`{id}` is listed twice"),
                ));
            }
        }
        Ok(())
    }

    /// The port devices reach this gateway on: plain if enabled, else TLS.
    pub fn device_port(&self) -> SocketAddr {
        match (&self.mqtt.tls, self.mqtt.plaintext) {
            (Some(tls), false) => tls.listen,
            _ => self.mqtt.listen,
        }
    }

    pub fn backoff_initial(&self) -> Duration {
        Duration::from_millis(self.uplink.backoff_initial_ms)
    }

    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.uplink.backoff_max_ms)
    }

    /// The documented default configuration, for `--print-default-config`.
    pub fn default_toml() -> String {
        let example = Self {
            devices: vec![DeviceConfig {
                id: "btn-0001".into(),
                kind: "call_button".into(),
                password: Some("change-me-to-a-long-random-secret".into()),
                password_sha256: None,
                credential: None,
            }],
            ..Self::default()
        };
        toml::to_string_pretty(&example).expect("default config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_and_validates() {
        let text = GatewayConfig::default_toml();
        let parsed = GatewayConfig::parse(&text, "default").unwrap();
        assert_eq!(parsed.devices.len(), 1);
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/config/gateway.example.toml"
        );
        let config = GatewayConfig::load(std::path::Path::new(path)).unwrap();
        assert!(config.mqtt.require_auth);
    }

    #[test]
    fn the_compose_and_kubernetes_configs_are_valid() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/");
        let compose =
            GatewayConfig::load(&std::path::Path::new(root).join("compose/gateway.toml")).unwrap();
        assert!(compose.devices.len() >= 5);
        // The DaemonSet's Secret: the block under `gateway.toml: |`.
        let manifest = std::fs::read_to_string(format!("{root}kubernetes/gateway.yaml")).unwrap();
        let mut lines = manifest
            .lines()
            .skip_while(|l| l.trim() != "gateway.toml: |");
        lines.next().expect("the Secret holds gateway.toml");
        let text: String = lines
            .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
            .map(|l| format!("{}\n", l.trim_start()))
            .collect();
        let config = GatewayConfig::parse(&text, "kubernetes/gateway.yaml").unwrap();
        assert_eq!(config.devices.len(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        let err = GatewayConfig::parse("[uplink]\nwindow = 0\n", "t").unwrap_err();
        assert!(err.to_string().contains("uplink.window"), "{err}");

        let err = GatewayConfig::parse("[[devices]]\nid = \"a/b\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("devices[0].id"), "{err}");

        let err = GatewayConfig::parse("[mqtt]\nlisten = \"nonsense\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");

        let err =
            GatewayConfig::parse("[[devices]]\nid = \"a\"\nkind = \"toaster\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("devices[0].kind"), "{err}");

        let err = GatewayConfig::parse(
            "[mqtt]\nrequire_auth = true\n[[devices]]\nid = \"a\"\n",
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("devices[0].password"), "{err}");

        let err = GatewayConfig::parse("[[devices]]\nid = \"a\"\npassword_sha256 = \"abc\"\n", "t")
            .unwrap_err();
        assert!(
            err.to_string().contains("devices[0].password_sha256"),
            "{err}"
        );

        let err =
            GatewayConfig::parse("[[mqtt.observers]]\nusername = \"siren\"\n", "t").unwrap_err();
        assert!(
            err.to_string().contains("mqtt.observers[0].password"),
            "{err}"
        );
        let err = GatewayConfig::parse(
            "[[mqtt.observers]]\nusername = \"siren\"\ncredential = \"5e88\"\n",
            "t",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("mqtt.observers[0].credential"),
            "{err}"
        );

        let err = GatewayConfig::parse("gatway_id = \"x\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("gatway_id"), "{err}");
    }
}
