//! Where things live in the data dir, and the run files through which the CLI on the gateway's
//! own machine finds the API (`run/listen.json`, `run/local-token`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The names under which gateways keep their local operator tokens in the store start with this.
pub const LOCAL_TOKEN_PREFIX: &str = "local-operator";

/// The local operator token's name of one gateway instance (several share a fleet's store).
pub fn local_token_name(instance: &str) -> String {
    format!("{LOCAL_TOKEN_PREFIX}-{instance}")
}

/// The default data dir: `$TETHER_DATA_DIR` is handled by clap; this is the fallback.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() && home != "/" => PathBuf::from(home).join(".local/share/tether"),
        _ => PathBuf::from("/var/lib/tether"),
    }
}

pub fn database(data_dir: &Path) -> PathBuf {
    data_dir.join("tether.db")
}

pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

pub fn ca_cert(data_dir: &Path) -> PathBuf {
    tls_dir(data_dir).join("ca.pem")
}

fn run_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("run")
}

/// Creates the data dir (mode 0700) if needed.
pub fn ensure_data_dir(data_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data dir {} (set --data-dir or TETHER_DATA_DIR)", data_dir.display()))?;
    set_mode(data_dir, 0o700)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions of {}", path.display()))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<()> {
    Ok(())
}

/// The addresses the gateway actually bound.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ListenAddrs {
    pub cira: SocketAddr,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    /// The agents' QUIC listener (UDP).
    #[serde(default)]
    pub agents: Option<SocketAddr>,
}

/// Writes `run/listen.json` and `run/local-token` atomically (temp file + rename).
pub fn write_run_files(data_dir: &Path, addrs: &ListenAddrs, local_token: &str) -> Result<()> {
    let dir = run_dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    set_mode(&dir, 0o700)?;
    write_atomic(&dir.join("local-token"), local_token.as_bytes(), 0o600)?;
    write_atomic(&dir.join("listen.json"), serde_json::to_string_pretty(addrs)?.as_bytes(), 0o644)
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    set_mode(&tmp, mode)?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}

pub fn remove_run_files(data_dir: &Path) {
    let dir = run_dir(data_dir);
    let _ = std::fs::remove_file(dir.join("listen.json"));
    let _ = std::fs::remove_file(dir.join("local-token"));
}

/// What a CLI on the gateway's machine needs: the API address, the CA and the local token.
pub struct LocalGateway {
    pub api: SocketAddr,
    pub ca: PathBuf,
    pub token: String,
}

impl std::fmt::Debug for LocalGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGateway").field("api", &self.api).field("ca", &self.ca).finish_non_exhaustive()
    }
}

/// Reads the run files of a running gateway.
pub fn local_gateway(data_dir: &Path) -> Result<LocalGateway> {
    let dir = run_dir(data_dir);
    let listen = std::fs::read_to_string(dir.join("listen.json")).with_context(|| {
        format!(
            "no running gateway found in {} (start `tether gateway`, or pass --api/--token/--ca)",
            data_dir.display()
        )
    })?;
    let addrs: ListenAddrs = serde_json::from_str(&listen).context("reading run/listen.json")?;
    let token = std::fs::read_to_string(dir.join("local-token")).context("reading run/local-token")?;
    let mut api = addrs.api;
    if api.ip().is_unspecified() {
        api.set_ip(if api.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    Ok(LocalGateway { api, ca: ca_cert(data_dir), token: token.trim().to_string() })
}
