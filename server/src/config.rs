//! The server's one configuration struct, validated at start-up.

use std::{net::SocketAddr, path::PathBuf};

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
    Invalid {
        field: &'static str,
        problem: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub grpc: GrpcConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Gateways' Uplink streams and the Dispatch service.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// REST/SSE API, web console, /healthz, /metrics.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory of the sled database; created if missing.
    pub path: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc: GrpcConfig {
                listen: ([127, 0, 0, 1], 50051).into(),
            },
            http: HttpConfig {
                listen: ([127, 0, 0, 1], 8080).into(),
            },
            store: StoreConfig {
                path: PathBuf::from("anxin-server-data"),
            },
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        ServerConfig::default().grpc
    }
}
impl Default for HttpConfig {
    fn default() -> Self {
        ServerConfig::default().http
    }
}
impl Default for StoreConfig {
    fn default() -> Self {
        ServerConfig::default().store
    }
}

impl ServerConfig {
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
        if self.grpc.listen == self.http.listen {
            return Err(ConfigError::Invalid {
                field: "http.listen",
                problem: "must differ from grpc.listen".into(),
            });
        }
        if self.store.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                field: "store.path",
                problem: "must not be empty".into(),
            });
        }
        Ok(())
    }

    pub fn default_toml() -> String {
        toml::to_string_pretty(&Self::default()).expect("default config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/config/server.example.toml"
        );
        ServerConfig::load(std::path::Path::new(path)).unwrap();
    }

    #[test]
    fn default_round_trips_and_errors_name_the_field() {
        ServerConfig::parse(&ServerConfig::default_toml(), "default").unwrap();
        let err = ServerConfig::parse(
            "[grpc]\nlisten = \"127.0.0.1:1\"\n[http]\nlisten = \"127.0.0.1:1\"\n",
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("http.listen"), "{err}");
        let err = ServerConfig::parse("[store]\npth = \"x\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("pth"), "{err}");
    }
}
