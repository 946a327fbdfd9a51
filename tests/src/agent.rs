//! A PC with the Tether agent, for the end-to-end tests: its state dir and a fake root its
//! collectors read, enrollment with the real `tether-agent`, and a gateway with subscriber olga
//! to enroll it with (on loopback, or on the public network of a NAT topology).

use std::path::Path;
use std::process::Command;

use uuid::Uuid;

use crate::process::last_line;
use crate::{bin, Gateway, Process};

/// A gateway whose agents report every 5 s, with subscriber `olga` registered; (gateway, her
/// subscriber id).
pub fn gateway_with_subscriber() -> (Gateway, String) {
    gateway_with_subscriber_config("[agents]\nheartbeat_secs = 5\n")
}

/// [`gateway_with_subscriber`] with the gateway's configuration `toml`.
pub fn gateway_with_subscriber_config(toml: &str) -> (Gateway, String) {
    let gateway = Gateway::start_with_config(toml, &[]);
    let subscriber = register_olga(&gateway);
    (gateway, subscriber)
}

/// User olga and her subscriber (room for 1,000 machines); its id.
pub fn register_olga(gateway: &Gateway) -> String {
    gateway.operator_with_stdin(
        &["user", "add", "olga", "--email", "olga@example.com", "--password-stdin"],
        "pw-olga-long-enough\n",
    );
    let out = gateway.operator(&[
        "subscriber",
        "register",
        "--owner",
        "olga",
        "--name",
        "Olga's Bakery",
        "--email",
        "olga@example.com",
        "--max-machines",
        "1000",
    ]);
    out.split_whitespace().nth(1).unwrap_or_else(|| panic!("no subscriber id in {out:?}")).to_string()
}

/// `tether machine enroll SUBSCRIBER`: the token it prints last.
pub fn enrollment_token(gateway: &Gateway, subscriber: &str) -> String {
    let out = gateway.operator(&["machine", "enroll", subscriber]);
    assert!(out.contains("tether-agent enroll"), "{out}");
    last_line(&out).unwrap_or_else(|| panic!("no token in {out:?}")).to_string()
}

/// A PC: its agent's state dir and a fake root the collectors read (an os-release of its own).
#[derive(Debug)]
pub struct Pc {
    state: tempfile::TempDir,
    /// The collectors' root; kept for the agent's life.
    _root: tempfile::TempDir,
    pub uuid: Uuid,
}

impl Default for Pc {
    fn default() -> Self {
        Pc::new()
    }
}

impl Pc {
    pub fn new() -> Pc {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/os-release"), "PRETTY_NAME=\"Tether Test OS 1\"\n").unwrap();
        let state = tempfile::tempdir().unwrap();
        let config = format!(
            "root = {root:?}\nnft = [\"/nonexistent/nft\"]\niptables_save = [\"/nonexistent/iptables-save\"]\n\
             apt_get = [\"/nonexistent/apt-get\"]\n",
            root = root.path().display().to_string()
        );
        std::fs::write(state.path().join("agent.toml"), config).unwrap();
        Pc { state, _root: root, uuid: Uuid::new_v4() }
    }

    pub fn agent(&self) -> Command {
        let mut command = Command::new(bin("tether-agent"));
        command.arg("--state-dir").arg(self.state.path());
        command
    }

    /// `tether-agent enroll`; its output, or its error.
    pub fn enroll(&self, gateway: &Gateway, token: &str) -> Result<String, String> {
        self.enroll_at(&gateway.agent_addr().to_string(), token, &gateway.ca_path())
    }

    /// `tether-agent enroll` with gateway `addr`, trusting the server certificates of `ca` (a PEM
    /// file, possibly of several CAs); its output, or its error.
    pub fn enroll_at(&self, addr: &str, token: &str, ca: &Path) -> Result<String, String> {
        let output = self
            .agent()
            .args(["enroll", "--gateway", addr, "--token", token, "--uuid"])
            .arg(self.uuid.to_string())
            .arg("--ca")
            .arg(ca)
            .output()
            .expect("running tether-agent");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(stderr)
        }
    }

    pub fn run(&self) -> Process {
        let mut command = self.agent();
        command.arg("run").env("RUST_LOG", "info,tether_agent=debug,agent=debug");
        Process::spawn("tether-agent run", &mut command)
    }

    pub fn status(&self) -> serde_json::Value {
        let output = self.agent().args(["status", "--json"]).output().expect("tether-agent status");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
    }

    pub fn state_path(&self) -> &Path {
        self.state.path()
    }
}

/// A gateway on the public network of `topology` (its `[agents]` settings `agents_toml`), with
/// subscriber olga, and a PC in the home network behind the NAT, enrolled and running.
pub fn enrolled_behind_nat(
    topology: &crate::netns::Topology,
    agents_toml: &str,
    gateway_args: &[&str],
) -> (Gateway, Pc, Process) {
    use crate::netns::Host;
    let config = format!("[agents]\n{agents_toml}");
    let gateway = Gateway::start_at(Host::Public.ip(), &config, gateway_args, |c| topology.wrap(Host::Public, c));
    let subscriber = register_olga(&gateway);
    let token = enrollment_token(&gateway, &subscriber);
    let pc = Pc::new();
    let in_home = |command: Command| topology.wrap(Host::Home, command);
    let mut enroll = pc.agent();
    enroll
        .args(["enroll", "--gateway", &gateway.agent_addr().to_string(), "--token", &token, "--uuid"])
        .arg(pc.uuid.to_string())
        .arg("--ca")
        .arg(gateway.ca_path());
    let out = in_home(enroll).output().unwrap();
    assert!(out.status.success(), "enroll from behind the NAT: {}", String::from_utf8_lossy(&out.stderr));
    let mut run = pc.agent();
    run.arg("run").env("RUST_LOG", "info");
    let agent = Process::spawn("tether-agent run (home)", &mut in_home(run));
    (gateway, pc, agent)
}
