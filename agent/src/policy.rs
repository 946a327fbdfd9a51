//! The PC's local policy (`STATE_DIR/policy.toml`, or `tether-agent run --policy FILE`): what the
//! PC's owner allows the gateway's technicians to do here, whatever the gateway signs. A missing
//! file is the defaults; an unknown key is an error (a typo must not silently allow or refuse).
//!
//! ```toml
//! [actions]
//! scripts = true          # run signed scripts
//! instructions = true     # show signed instructions to the PC user
//! max_timeout_secs = 600  # a script's timeout is the action's, at most this
//! shell = "/bin/sh"
//! [forward]
//! ports = []              # local TCP ports (on 127.0.0.1) a technician may reach through the gateway
//! ```
//!
//! What it does not do: the PC user's consent to remote help (`state.json`, `tether-agent
//! enable`), which is checked before this policy, nor any check itself (`actions`, `conn`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use protocols::tap::ActionKind;
use serde::{Deserialize, Serialize};

/// Ports a forward policy lists at most.
pub const MAX_FORWARD_PORTS: usize = 64;

/// The whole `policy.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalPolicy {
    pub actions: ActionPolicy,
    pub forward: ForwardPolicy,
}

/// `[actions]`: which signed support actions run here, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionPolicy {
    /// Run signed scripts (false: every script is refused).
    pub scripts: bool,
    /// Show signed instructions to the PC user.
    pub instructions: bool,
    /// A script's timeout is the action's, at most this many seconds.
    pub max_timeout_secs: u32,
    /// The shell that runs scripts (`SHELL FILE`).
    pub shell: PathBuf,
}

impl Default for ActionPolicy {
    fn default() -> Self {
        ActionPolicy { scripts: true, instructions: true, max_timeout_secs: 600, shell: PathBuf::from("/bin/sh") }
    }
}

/// `[forward]`: the local ports relayed sessions may reach.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardPolicy {
    /// TCP ports on 127.0.0.1 a technician may reach through the gateway; none by default.
    pub ports: Vec<u16>,
}

impl LocalPolicy {
    /// The default path: `STATE_DIR/policy.toml`.
    pub fn default_path(state_dir: &Path) -> PathBuf {
        state_dir.join("policy.toml")
    }

    /// Reads `path`; a missing file is the defaults. Errors name the file.
    pub fn load(path: &Path) -> Result<LocalPolicy> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(LocalPolicy::default()),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        LocalPolicy::parse(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parses and checks the text of a `policy.toml`.
    pub fn parse(text: &str) -> Result<LocalPolicy> {
        let policy: LocalPolicy = toml::from_str(text)?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<()> {
        if self.actions.max_timeout_secs == 0 {
            bail!("[actions] max_timeout_secs must be at least 1");
        }
        if self.actions.shell.as_os_str().is_empty() {
            bail!("[actions] shell is empty");
        }
        if self.forward.ports.contains(&0) {
            bail!("[forward] ports: 0 is not a port");
        }
        if self.forward.ports.len() > MAX_FORWARD_PORTS {
            bail!("[forward] ports lists {} ports, over the limit of {MAX_FORWARD_PORTS}", self.forward.ports.len());
        }
        Ok(())
    }

    /// Whether actions of `kind` may run here; if not, why (naming the file and the key).
    pub fn allows(&self, kind: ActionKind) -> Result<(), String> {
        match kind {
            ActionKind::Script if !self.actions.scripts => {
                Err("scripts are turned off on this PC ([actions] scripts = false in policy.toml)".into())
            }
            ActionKind::Instructions if !self.actions.instructions => {
                Err("instructions are turned off on this PC ([actions] instructions = false in policy.toml)".into())
            }
            _ => Ok(()),
        }
    }

    /// Whether a relayed session may reach local `port`.
    pub fn forwards(&self, port: u16) -> bool {
        self.forward.ports.contains(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_or_missing_is_the_defaults() {
        assert_eq!(LocalPolicy::parse("").unwrap(), LocalPolicy::default());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LocalPolicy::load(&dir.path().join("policy.toml")).unwrap(), LocalPolicy::default());
        let defaults = LocalPolicy::default();
        assert!(defaults.actions.scripts && defaults.actions.instructions);
        assert_eq!(defaults.actions.max_timeout_secs, 600);
        assert_eq!(defaults.actions.shell, PathBuf::from("/bin/sh"));
        assert!(defaults.forward.ports.is_empty());
    }

    #[test]
    fn the_documented_format_parses() {
        let policy = LocalPolicy::parse(
            "[actions]\nscripts = false\ninstructions = true\nmax_timeout_secs = 30\nshell = \"/bin/bash\"\n\
             [forward]\nports = [22, 5900]\n",
        )
        .unwrap();
        assert!(!policy.actions.scripts);
        assert_eq!(policy.actions.max_timeout_secs, 30);
        assert_eq!(policy.forward.ports, [22, 5900]);
        assert!(policy.forwards(22) && !policy.forwards(80));
        assert!(policy.allows(ActionKind::Script).unwrap_err().contains("scripts are turned off on this PC"));
        assert!(policy.allows(ActionKind::Instructions).is_ok());
        // A partial table keeps the other defaults.
        let policy = LocalPolicy::parse("[actions]\nscripts = false\n").unwrap();
        assert_eq!(policy.actions.shell, PathBuf::from("/bin/sh"));
    }

    #[test]
    fn a_typo_is_an_error_naming_the_file() {
        assert!(LocalPolicy::parse("[actions]\nscript = false\n").is_err());
        assert!(LocalPolicy::parse("[forwards]\nports = [22]\n").is_err());
        assert!(LocalPolicy::parse("[actions]\nmax_timeout_secs = 0\n").is_err());
        assert!(LocalPolicy::parse("[forward]\nports = [0]\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[actions]\nscirpts = true\n").unwrap();
        let err = format!("{:#}", LocalPolicy::load(&path).unwrap_err());
        assert!(err.contains("policy.toml") && err.contains("scirpts"), "{err}");
    }
}
