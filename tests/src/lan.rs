//! An office LAN, for real: the appliance, simulated AMT PCs and a plain host, each in its own
//! network namespace with its own veth and MAC, joined by a bridge (in a namespace of its own),
//! and a technician on a separate network attached to the appliance.
//!
//! ```text
//!   PREFIX-appl (the appliance)         PREFIX-lan           PREFIX-pcN / PREFIX-plain
//!   lan0 198.18.5.1/24 ───────────────── br0 ─────────────── eth0 198.18.5.(10+N)/24, MAC 02:54:…
//!   tech0 198.18.6.1/24 ─┐                                   eth0 198.18.5.9/24 (plain host)
//!                        └─ PREFIX-tech eth0 198.18.6.2/24
//! ```
//!
//! ARP sweeps, RMCP pings and magic packets stay on the bridge, which exists only inside these
//! namespaces; the technician reaches the appliance's API on 198.18.6.1 and has no route into
//! the LAN. Needs root (CI runs as root) and iproute2. Namespaces are deleted on drop (declare
//! the processes after the topology, so they stop first).

use std::process::{Command, Stdio};

use anyhow::bail;

use crate::netns::{sh, sweep_dead_unique_namespaces, Topology};
use crate::process::{bin, Process};

/// The appliance's address on the LAN, and the LAN.
pub const APPLIANCE_LAN_IP: &str = "198.18.5.1";
pub const LAN_CIDR: &str = "198.18.5.0/24";
/// The plain host (no AMT) on the LAN.
pub const PLAIN_IP: &str = "198.18.5.9";
pub const PLAIN_MAC: &str = "02:54:00:00:00:09";
/// The appliance's address on the technician's network, and the technician's.
pub const APPLIANCE_TECH_IP: &str = "198.18.6.1";
pub const TECH_IP: &str = "198.18.6.2";
/// The appliance's interface on the LAN (the one `lan.interfaces` names), and the other one.
pub const LAN_IF: &str = "lan0";
pub const TECH_IF: &str = "tech0";

/// One host of the LAN.
#[derive(Debug, Clone)]
pub struct LanHost {
    pub ns: String,
    pub ip: String,
    pub mac: String,
}

/// The namespaces of one test (see the module doc).
#[derive(Debug)]
pub struct LanTopology {
    prefix: String,
    pcs: Vec<LanHost>,
    plain: LanHost,
}

impl LanTopology {
    /// Builds the LAN with `pcs` PC namespaces (for simulated AMT PCs) and the plain host.
    pub fn create(tag: &str, pcs: usize) -> anyhow::Result<LanTopology> {
        if !is_root() {
            bail!("the LAN tests build network namespaces and send raw frames: they need root (CI runs them as root)");
        }
        sweep_dead_unique_namespaces();
        let prefix = Topology::unique_prefix(tag);
        let pcs = (1..=pcs)
            .map(|n| LanHost {
                ns: format!("{prefix}-pc{n}"),
                ip: format!("198.18.5.{}", 10 + n),
                mac: format!("02:54:00:00:00:{:02x}", 0x10 + n),
            })
            .collect();
        let plain = LanHost { ns: format!("{prefix}-plain"), ip: PLAIN_IP.into(), mac: PLAIN_MAC.into() };
        let topology = LanTopology { prefix, pcs, plain };
        if let Err(err) = topology.build() {
            topology.delete();
            return Err(err.context("building the LAN namespaces (needs root and iproute2)"));
        }
        Ok(topology)
    }

    /// The appliance's namespace.
    pub fn appliance(&self) -> String {
        format!("{}-appl", self.prefix)
    }

    /// The technician's namespace.
    pub fn tech(&self) -> String {
        format!("{}-tech", self.prefix)
    }

    fn bridge(&self) -> String {
        format!("{}-lan", self.prefix)
    }

    pub fn pcs(&self) -> &[LanHost] {
        &self.pcs
    }

    pub fn plain(&self) -> &LanHost {
        &self.plain
    }

    fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.appliance(), self.bridge(), self.tech(), self.plain.ns.clone()];
        all.extend(self.pcs.iter().map(|pc| pc.ns.clone()));
        all
    }

    fn build(&self) -> anyhow::Result<()> {
        for ns in self.namespaces() {
            sh("ip", &["netns", "add", &ns])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let bridge = self.bridge();
        sh("ip", &["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        sh("ip", &["-n", &bridge, "link", "set", "br0", "up"])?;
        // Each host's end straight inside its namespace; the other end on the bridge.
        let attach = |ns: &str, dev: &str, port: &str, ip: &str, mac: Option<&str>| -> anyhow::Result<()> {
            sh("ip", &["link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns", &bridge])?;
            if let Some(mac) = mac {
                sh("ip", &["-n", ns, "link", "set", dev, "address", mac])?;
            }
            sh("ip", &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev])?;
            sh("ip", &["-n", ns, "link", "set", dev, "up"])?;
            sh("ip", &["-n", &bridge, "link", "set", port, "master", "br0"])?;
            sh("ip", &["-n", &bridge, "link", "set", port, "up"])
        };
        attach(&self.appliance(), LAN_IF, "pa", APPLIANCE_LAN_IP, Some("02:54:00:00:00:01"))?;
        attach(&self.plain.ns, "eth0", "pp", &self.plain.ip, Some(&self.plain.mac))?;
        for (n, pc) in self.pcs.iter().enumerate() {
            attach(&pc.ns, "eth0", &format!("p{n}"), &pc.ip, Some(&pc.mac))?;
        }
        // The technician's network: a veth straight between the appliance and the technician.
        let (appliance, tech) = (self.appliance(), self.tech());
        sh(
            "ip",
            &["link", "add", TECH_IF, "netns", &appliance, "type", "veth", "peer", "name", "eth0", "netns", &tech],
        )?;
        for (ns, dev, ip) in [(&appliance, TECH_IF, APPLIANCE_TECH_IP), (&tech, "eth0", TECH_IP)] {
            sh("ip", &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev])?;
            sh("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    /// Wraps a command so that it runs in the appliance's namespace.
    pub fn in_appliance(&self, command: Command) -> Command {
        let mut wrapped = self.command(&self.appliance(), command.get_program());
        wrapped.args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        wrapped
    }

    /// Starts `amt-sim --lan IP ARGS…` in `pc`'s namespace and waits until it listens.
    pub fn start_pc(&self, pc: &LanHost, args: &[&str]) -> Process {
        let mut command = self.command(&pc.ns, bin("amt-sim"));
        command.args(["--lan", &pc.ip]).args(args).env("RUST_LOG", "info");
        let mut process = Process::spawn(&format!("amt-sim --lan {}", pc.ip), &mut command);
        process.wait_for_log("amt-sim: LAN device UUID", std::time::Duration::from_secs(20));
        process
    }

    /// Starts a capture of magic packets on `host`'s interface (`tether-netprobe capture`) and
    /// waits until it listens.
    pub fn capture(&self, host: &LanHost, seconds: u32) -> Process {
        let mut command = self.command(&host.ns, bin("tether-netprobe"));
        command.args(["capture", "eth0", &seconds.to_string()]);
        let mut process = Process::spawn(&format!("capture on {}", host.ip), &mut command);
        process.wait_for_log("capturing", std::time::Duration::from_secs(10));
        process
    }

    fn delete(&self) {
        for ns in self.namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for LanTopology {
    fn drop(&mut self) {
        self.delete();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        .unwrap_or(false)
}

/// The magic packets a capture saw: (kind, target MAC), kind `ethertype-0842` or `udp-9`.
pub fn magic_packets(capture: &Process) -> Vec<(String, String)> {
    capture
        .stdout()
        .lines()
        .filter_map(|l| l.strip_prefix("magic "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}
