//! What the agent keeps on disk, in its state dir (default `/var/lib/tether-agent`, mode 0700):
//!
//! | file | what |
//! |---|---|
//! | `enrollment.json` | the machine's UUID, the gateways, the gateway's signing key (hex), when |
//! | `key.pem` (0600), `cert.pem` | the machine's own key (made here) and the certificate the gateway signed for it |
//! | `gateway-ca.pem` | the CA the gateway's server certificate must chain to (`enroll --ca`); absent: the system's roots |
//! | `state.json` | the next report sequence number, the PC user's consent to remote help |
//! | `config.json` | the last configuration the gateway sent whose signature verified |
//! | `status.json` | what `run` last did (connected gateway, last ack), for `status` |
//! | `spool/` | reports not yet acknowledged ([`crate::spool`]) |
//! | `policy.toml` | the PC's local policy, written by its owner ([`crate::policy`]) |
//! | `actions.json` | the replay ledger: actions started here ([`crate::actions::ledger`]) |
//! | `results/` | action results not yet acknowledged ([`crate::actions::results`]) |
//! | `run/` | a running script's file and home directory ([`crate::actions::script`]) |
//! | `inbox.json`, `read/` | messages and instructions for the PC user, the ones read ([`crate::inbox`]) |
//!
//! What it does not do: talk to the gateway (`conn`), or collect (`collect`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The default state dir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tether-agent";

/// The result of `enroll`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Enrollment {
    pub uuid: Uuid,
    /// HOST:PORT, in order of preference.
    pub gateways: Vec<String>,
    /// The gateway's Ed25519 public key (hex), which signs configuration and actions.
    pub signing_key: String,
    /// Unix seconds.
    pub enrolled_at: i64,
}

/// Mutable state kept across restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AgentState {
    /// The sequence number the next report gets.
    pub next_seq: u64,
    /// The PC user's consent to remote help (`tether-agent enable` / `disable`); off until given.
    pub remote_help: bool,
}

/// The last verified configuration from the gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedConfig {
    pub issued_at: i64,
    pub heartbeat_secs: u32,
    pub keepalive_secs: u32,
    pub gateways: Vec<String>,
}

/// What `run` last did, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Status {
    pub connected_to: Option<String>,
    pub connected_since: Option<i64>,
    pub last_ack: Option<i64>,
    pub last_error: Option<String>,
    pub pid: u32,
}

/// The state dir's paths.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) the state dir.
    pub fn open(root: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(root).with_context(|| format!("creating the state dir {}", root.display()))?;
        set_mode(root, 0o700)?;
        std::fs::create_dir_all(root.join("spool")).with_context(|| format!("creating {}/spool", root.display()))?;
        Ok(StateDir { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("spool")
    }

    pub fn enrollment(&self) -> Result<Option<Enrollment>> {
        read_json(&self.path("enrollment.json"))
    }

    /// The enrollment, or an error saying to enroll first.
    pub fn require_enrollment(&self) -> Result<Enrollment> {
        self.enrollment()?.with_context(|| {
            format!(
                "this PC is not enrolled ({} has no enrollment.json): run `tether-agent enroll --gateway HOST --token TOKEN` first",
                self.root.display()
            )
        })
    }

    pub fn save_enrollment(&self, enrollment: &Enrollment) -> Result<()> {
        write_json(&self.path("enrollment.json"), enrollment, 0o644)
    }

    pub fn state(&self) -> Result<AgentState> {
        Ok(read_json(&self.path("state.json"))?.unwrap_or_default())
    }

    pub fn save_state(&self, state: &AgentState) -> Result<()> {
        write_json(&self.path("state.json"), state, 0o644)
    }

    pub fn config(&self) -> Result<Option<SavedConfig>> {
        read_json(&self.path("config.json"))
    }

    pub fn save_config(&self, config: &SavedConfig) -> Result<()> {
        write_json(&self.path("config.json"), config, 0o644)
    }

    pub fn status(&self) -> Result<Option<Status>> {
        read_json(&self.path("status.json"))
    }

    pub fn save_status(&self, status: &Status) -> Result<()> {
        write_json(&self.path("status.json"), status, 0o644)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is damaged (not the JSON this agent writes)", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<()> {
    write_durable(path, &serde_json::to_vec_pretty(value)?, mode)
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never half:
/// a temporary file, flushed to disk, renamed over, and the directory flushed.
pub fn write_durable(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        set_mode(&tmp, mode)?;
        file.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("flushing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Flushes a directory's entries (a rename or a delete in it) to disk; best effort.
pub fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// The machine's UUID: SMBIOS's (`/sys/class/dmi/id/product_uuid`) when readable and real, else
/// one generated once and kept in the state dir (`machine-uuid`).
pub fn machine_uuid(state: &StateDir) -> Result<(Uuid, &'static str)> {
    if let Ok(text) = std::fs::read_to_string("/sys/class/dmi/id/product_uuid") {
        if let Ok(uuid) = text.trim().parse::<Uuid>() {
            // Boards without a UUID report all zeros or all ones.
            if !uuid.is_nil() && uuid != Uuid::max() {
                return Ok((uuid, "SMBIOS"));
            }
        }
    }
    let path = state.path("machine-uuid");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(uuid) = text.trim().parse::<Uuid>() {
            return Ok((uuid, "generated earlier"));
        }
    }
    let uuid = Uuid::new_v4();
    write_durable(&path, format!("{uuid}\n").as_bytes(), 0o644)?;
    Ok((uuid, "generated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_defaults_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.state().unwrap(), AgentState::default());
        state.save_state(&AgentState { next_seq: 7, remote_help: true }).unwrap();
        assert_eq!(state.state().unwrap(), AgentState { next_seq: 7, remote_help: true });
        assert!(state.require_enrollment().unwrap_err().to_string().contains("tether-agent enroll"));
    }

    #[test]
    fn a_damaged_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        std::fs::write(state.path("state.json"), b"{not json").unwrap();
        assert!(state.state().unwrap_err().to_string().contains("state.json is damaged"));
    }
}
