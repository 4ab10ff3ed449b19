//! The gateway's one configuration struct: defaults in one place, validated at
//! start-up so that a bad field is named before anything starts.

use std::{collections::HashSet, net::SocketAddr, path::PathBuf, time::Duration};

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
    /// Devices allowed to publish through this gateway. Events from any other
    /// device id are rejected and counted.
    pub devices: Vec<DeviceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Where the embedded broker listens for devices (MQTT 3.1.1).
    pub listen: SocketAddr,
    pub max_connections: usize,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest event payload accepted, in bytes. Larger ones are rejected and
    /// counted (the broker itself drops a connection above 64 KiB).
    pub max_event_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    /// call_button, wearable, room_sensor, smoke_detector, …
    #[serde(default = "default_device_kind")]
    pub kind: String,
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
            devices: Vec::new(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 1883).into(),
            max_connections: 10_010,
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
        }
    }
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            servers: vec!["http://127.0.0.1:50051".into()],
            window: 256,
            backoff_initial_ms: 200,
            backoff_max_ms: 10_000,
            connect_timeout_ms: 3_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: 4096,
        }
    }
}

/// The largest payload the embedded broker lets through at all.
pub const BROKER_MAX_PAYLOAD: usize = 64 * 1024;

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
        let mut seen = HashSet::new();
        for (i, device) in self.devices.iter().enumerate() {
            let id = device.id.as_str();
            if id.is_empty() || id.contains(['/', '+', '#']) || id.len() > 64 {
                return Err(invalid(
                    format!("devices[{i}].id"),
                    format!("`{id}` must be 1-64 characters without '/', '+' or '#'"),
                ));
            }
            if !seen.insert(id) {
                return Err(invalid(
                    format!("devices[{i}].id"),
                    format!("`{id}` is listed twice"),
                ));
            }
        }
        Ok(())
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
    fn errors_name_the_field() {
        let err = GatewayConfig::parse("[uplink]\nwindow = 0\n", "t").unwrap_err();
        assert!(err.to_string().contains("uplink.window"), "{err}");

        let err = GatewayConfig::parse("[[devices]]\nid = \"a/b\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("devices[0].id"), "{err}");

        let err = GatewayConfig::parse("[mqtt]\nlisten = \"nonsense\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");

        let err = GatewayConfig::parse("gatway_id = \"x\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("gatway_id"), "{err}");
    }
}
