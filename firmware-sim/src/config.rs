//! The simulator's configuration: where the gateway is and how to log in.
//! Every field can also be given on the command line.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// The gateway's MQTT listener, `host:port`.
    pub gateway: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// How often an unacknowledged event is published again.
    pub retry_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            gateway: "127.0.0.1:1883".into(),
            username: None,
            password: None,
            retry_ms: 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, Box<toml::de::Error>),
    #[error("config field `{0}`: {1}")]
    Invalid(&'static str, String),
}

impl SimConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(display.clone(), e))?;
        let config: Self =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(display, Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.gateway_addr()?;
        if self.retry_ms == 0 {
            return Err(ConfigError::Invalid(
                "retry_ms",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn gateway_addr(&self) -> Result<(String, u16), ConfigError> {
        let (host, port) = self.gateway.rsplit_once(':').ok_or_else(|| {
            ConfigError::Invalid("gateway", format!("`{}` is not host:port", self.gateway))
        })?;
        let port = port.parse().map_err(|_| {
            ConfigError::Invalid("gateway", format!("`{port}` is not a port number"))
        })?;
        Ok((host.to_string(), port))
    }
}
