//! The gateway's configuration file (`DATA_DIR/tether.toml` or `--config`), with defaults for
//! every key. Flags and environment variables are applied on top by `main`/`daemon`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::certs::KeyType;
pub use crate::limits::LimitsConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid configuration: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub cira_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub tls: TlsConfig,
    pub apf: ApfConfig,
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cira_listen: ([0, 0, 0, 0], 4433).into(),
            api_listen: ([0, 0, 0, 0], 8443).into(),
            metrics_listen: ([127, 0, 0, 1], 9464).into(),
            tls: TlsConfig::default(),
            apf: ApfConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Extra DNS names / IP addresses for the generated server certificate.
    pub names: Vec<String>,
    pub key_type: KeyType,
    /// Operator-supplied certificate chain (PEM) and key, used instead of generating.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApfConfig {
    pub keepalive_interval_secs: u32,
    pub handshake_timeout_secs: u32,
    pub max_channels_per_tunnel: usize,
    pub max_tunnels: usize,
    pub channel_window: u32,
    pub channel_open_timeout_secs: u32,
}

impl Default for ApfConfig {
    fn default() -> Self {
        Self {
            keepalive_interval_secs: 30,
            handshake_timeout_secs: 30,
            max_channels_per_tunnel: 64,
            max_tunnels: 50_000,
            channel_window: 256 * 1024,
            channel_open_timeout_secs: 15,
        }
    }
}

impl Config {
    /// Reads a configuration file; a missing file means the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
        };
        toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(source) })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_means_defaults_and_partial_files_merge() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(&dir.path().join("none.toml")).unwrap(), Config::default());
        let path = dir.path().join("tether.toml");
        std::fs::write(&path, "cira_listen = \"127.0.0.1:14433\"\n[limits]\nconnection_burst_per_source = 5000\n")
            .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.cira_listen, "127.0.0.1:14433".parse().unwrap());
        assert_eq!(config.limits.connection_burst_per_source, 5000);
        assert_eq!(config.limits.auth_failure_burst, LimitsConfig::default().auth_failure_burst);
        assert_eq!(Config::load(&path).unwrap(), toml::from_str(&config.to_toml()).unwrap());
    }

    #[test]
    fn unknown_keys_are_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.toml");
        std::fs::write(&path, "cira_lisen = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("tether.toml") && err.contains("cira_lisen"), "{err}");
    }
}
