//! The gateway's configuration file (`DATA_DIR/tether.toml` or `--config`), with defaults for
//! every key, and checks of the values that would otherwise fail later or silently mean
//! something else. What it does not do: apply flags and environment variables (`main`/`daemon`
//! do that on top, and may call [`Config::validate`] again afterwards).

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
    #[error("{path}: {key} {problem}")]
    Invalid { path: PathBuf, key: &'static str, problem: String },
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
    /// Reads and checks a configuration file; a missing file means the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
        };
        let config: Config = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(source) })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks values that cannot work (zero timeouts, limits and windows; listeners sharing an
    /// address; half an operator certificate). `origin` names where the values came from in the
    /// error (the file, or e.g. "command line").
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, problem: String| Err(ConfigError::Invalid { path: origin.to_path_buf(), key, problem });
        let at_least = |key: &'static str, value: u64, min: u64| {
            if value < min {
                invalid(key, format!("is {value}; it must be at least {min}"))
            } else {
                Ok(())
            }
        };
        let apf = &self.apf;
        at_least("apf.keepalive_interval_secs", apf.keepalive_interval_secs.into(), 1)?;
        at_least("apf.handshake_timeout_secs", apf.handshake_timeout_secs.into(), 1)?;
        at_least("apf.channel_open_timeout_secs", apf.channel_open_timeout_secs.into(), 1)?;
        at_least("apf.max_channels_per_tunnel", apf.max_channels_per_tunnel as u64, 1)?;
        at_least("apf.max_tunnels", apf.max_tunnels as u64, 1)?;
        at_least("apf.channel_window", apf.channel_window.into(), 1024)?;
        let limits = &self.limits;
        at_least("limits.connections_per_second_per_source", limits.connections_per_second_per_source.into(), 1)?;
        at_least("limits.connection_burst_per_source", limits.connection_burst_per_source.into(), 1)?;
        at_least("limits.auth_failures_per_minute", limits.auth_failures_per_minute.into(), 1)?;
        at_least("limits.auth_failure_burst", limits.auth_failure_burst.into(), 1)?;
        at_least("limits.api_requests_per_second", limits.api_requests_per_second.into(), 1)?;
        at_least("limits.api_burst", limits.api_burst.into(), 1)?;
        at_least("limits.max_tracked_sources", limits.max_tracked_sources as u64, 16)?;
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return invalid("tls.cert_file", "and tls.key_file go together: set both, or neither".into());
        }
        let listeners = [
            ("cira_listen", self.cira_listen),
            ("api_listen", self.api_listen),
            ("metrics_listen", self.metrics_listen),
        ];
        for (i, (key, addr)) in listeners.iter().enumerate() {
            for (other, other_addr) in &listeners[i + 1..] {
                if addr.port() != 0 && addr == other_addr {
                    return invalid(key, format!("and {other} are both {addr}; give each its own port"));
                }
            }
        }
        Ok(())
    }

    /// The configuration as a TOML file (every key, defaults included).
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
    fn the_defaults_are_valid_and_survive_a_round_trip() {
        let defaults = Config::default();
        defaults.validate(Path::new("defaults")).unwrap();
        let text = defaults.to_toml();
        assert!(text.contains("key_type = \"rsa3072\"") && text.contains("[limits]"), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), defaults);
        assert_eq!(defaults.apf.channel_window, 262_144);
        assert_eq!(defaults.metrics_listen, "127.0.0.1:9464".parse().unwrap());
    }

    #[test]
    fn values_that_cannot_work_are_errors_naming_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.toml");
        let cases = [
            ("[apf]\nhandshake_timeout_secs = 0\n", "apf.handshake_timeout_secs"),
            ("[apf]\nchannel_window = 512\n", "apf.channel_window"),
            ("[limits]\nauth_failure_burst = 0\n", "limits.auth_failure_burst"),
            ("[tls]\ncert_file = \"/etc/tether/chain.pem\"\n", "tls.key_file"),
            ("api_listen = \"0.0.0.0:4433\"\n", "api_listen"),
            ("[tls]\nkey_type = \"rsa2048\"\n", "rsa2048"),
        ];
        for (text, key) in cases {
            std::fs::write(&path, text).unwrap();
            let err = Config::load(&path).unwrap_err().to_string();
            assert!(err.contains("tether.toml") && err.contains(key), "{text}: {err}");
        }
        // Port 0 (any free port, as tests use) may repeat.
        std::fs::write(&path, "cira_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\n").unwrap();
        Config::load(&path).unwrap();
        std::fs::write(&path, "[tls]\nkey_type = \"ecdsa-p384\"\nnames = [\"mps.example.net\"]\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().tls.key_type, KeyType::EcdsaP384);
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
