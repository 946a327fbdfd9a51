//! "Behind NAT", for real: network namespaces joined by veth pairs, with a router that masquerades.
//!
//! ```text
//!  home (the PC)            router                      public (gateway)        tech (technician)
//!  198.19.1.2/24 --veth-- 198.19.1.1 | 198.18.0.2 --veth-- 198.18.0.1/24
//!                          nft masquerade out rp          198.18.1.1/24 --veth-- 198.18.1.2/24
//!                          forward: drop new public→home
//! ```
//!
//! Only addresses from 198.18.0.0/15 (set aside for benchmarks) are used, inside namespaces this
//! module creates and deletes. Needs root (CI runs as root).

use std::process::Command;

/// The four hosts of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    Home,
    Router,
    Public,
    Tech,
}

pub const HOME_IP: &str = "198.19.1.2";
pub const ROUTER_PUBLIC_IP: &str = "198.18.0.2";
pub const PUBLIC_IP: &str = "198.18.0.1";
pub const TECH_IP: &str = "198.18.1.2";

/// Namespaces created for one test; deleted on drop.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
}

fn sh(args: &[&str]) -> Result<(), String> {
    let output = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

impl Topology {
    /// Builds the topology with namespaces named `PREFIX-home` and so on (stale ones with the same
    /// names are deleted first).
    pub fn create(prefix: &str) -> Result<Topology, String> {
        let topology = Topology { prefix: prefix.to_string() };
        topology.delete();
        topology.build().inspect_err(|_| topology.delete())?;
        Ok(topology)
    }

    pub fn ns(&self, host: Host) -> String {
        let name = match host {
            Host::Home => "home",
            Host::Router => "router",
            Host::Public => "public",
            Host::Tech => "tech",
        };
        format!("{}-{name}", self.prefix)
    }

    fn exec(&self, host: Host, args: &[&str]) -> Result<(), String> {
        let ns = self.ns(host);
        let mut full = vec!["ip", "netns", "exec", &ns];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn build(&self) -> Result<(), String> {
        let [home, router, public, tech] = [Host::Home, Host::Router, Host::Public, Host::Tech].map(|h| self.ns(h));
        for ns in [&home, &router, &public, &tech] {
            sh(&["ip", "netns", "add", ns])?;
        }
        for host in [Host::Home, Host::Router, Host::Public, Host::Tech] {
            self.exec(host, &["ip", "link", "set", "lo", "up"])?;
        }
        // Each veth end is created straight inside its namespace, so names only need to be unique
        // per namespace.
        let link = |a: &str, ns_a: &str, b: &str, ns_b: &str| {
            sh(&["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b])
        };
        link("eth0", &home, "rh", &router)?;
        link("rp", &router, "pr", &public)?;
        link("pt", &public, "eth0", &tech)?;
        let addr = |host: Host, cidr: &str, dev: &str| -> Result<(), String> {
            self.exec(host, &["ip", "addr", "add", cidr, "dev", dev])?;
            self.exec(host, &["ip", "link", "set", dev, "up"])
        };
        addr(Host::Home, "198.19.1.2/24", "eth0")?;
        addr(Host::Router, "198.19.1.1/24", "rh")?;
        addr(Host::Router, "198.18.0.2/24", "rp")?;
        addr(Host::Public, "198.18.0.1/24", "pr")?;
        addr(Host::Public, "198.18.1.1/24", "pt")?;
        addr(Host::Tech, "198.18.1.2/24", "eth0")?;
        self.exec(Host::Home, &["ip", "route", "add", "default", "via", "198.19.1.1"])?;
        self.exec(Host::Tech, &["ip", "route", "add", "default", "via", "198.18.1.1"])?;
        // The public side knows where the home network is; only the router's rules keep it out.
        self.exec(Host::Public, &["ip", "route", "add", "198.19.1.0/24", "via", "198.18.0.2"])?;
        self.exec(Host::Router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let rules = "table ip tether_nat {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname \"rp\" masquerade; }
  chain forward_filter {
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    iifname \"rp\" oifname \"rh\" drop
  }
}";
        let ns = self.ns(Host::Router);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e} (install the nftables package)"))?;
        use std::io::Write;
        child.stdin.take().expect("piped stdin").write_all(rules.as_bytes()).map_err(|e| e.to_string())?;
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(format!("nft failed: {}", String::from_utf8_lossy(&output.stderr)));
        }
        Ok(())
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(host)]).arg(program);
        command
    }

    /// Wraps an existing command so that it runs inside `host`'s namespace.
    pub fn wrap(&self, host: Host, command: Command) -> Command {
        let mut wrapped = self.command(host, command.get_program());
        wrapped.args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        wrapped
    }

    fn delete(&self) {
        for host in [Host::Home, Host::Router, Host::Public, Host::Tech] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(host)]).output();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.delete();
    }
}
