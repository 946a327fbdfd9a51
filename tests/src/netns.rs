//! "Behind NAT", for real: network namespaces joined by veth pairs, with a router that masquerades.
//!
//! ```text
//!   home (the PC)           router                        public (gateway)       tech (technician)
//!   eth0 198.19.1.2/24 ── rh 198.19.1.1/24
//!   default via .1.1        rp 198.18.0.2/24 ──────────── pr 198.18.0.1/24
//!                           ip_forward=1                  pt 198.18.1.1/24 ───── eth0 198.18.1.2/24
//!                           nft: masquerade out of rp     route 198.19.1.0/24     default via 198.18.1.1
//!                           nft: drop new rp → rh           via 198.18.0.2
//! ```
//!
//! - `home` reaches `public` (198.18.0.1) only through the router, which rewrites the source to its
//!   public address 198.18.0.2: the gateway sees the NAT's address, as on the internet.
//! - `public` *has* a route to the home network (so "unreachable" is not just a missing route), but
//!   the router's forward filter drops new connections from its public side into the home side:
//!   only replies to connections the home side opened get through.
//! - `tech` is a separate network attached to `public` (198.18.1.0/24); it reaches the gateway at
//!   198.18.0.1 (a local address of `public`, so `public` needs no forwarding) and cannot reach the
//!   home network (public does not forward).
//!
//! Only addresses from 198.18.0.0/15 (set aside for benchmarks, RFC 2544) are used, and only inside
//! namespaces this module creates and deletes. Needs root (CI runs as root), `ip` (iproute2) and
//! `nft` (nftables). Interface names are fixed but live inside each test's own namespaces, so
//! tests can build topologies in parallel as long as their prefixes differ.
//!
//! Traps: `fwd` is an nft keyword (a chain named so is a syntax error: it is `forward_filter`);
//! a namespace outlives `ip netns del` while a process still runs in it, so drop the processes
//! (declare them after the `Topology`) before the topology.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::process::{bin, http_request_via, Process};

/// The four hosts of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// The PC behind NAT (runs `amt-sim`).
    Home,
    /// The NAT router between `home` and `public`.
    Router,
    /// The public network where the gateway runs.
    Public,
    /// The technician's machine, on another network attached to `public`.
    Tech,
}

impl Host {
    pub const ALL: [Host; 4] = [Host::Home, Host::Router, Host::Public, Host::Tech];

    /// The short name used in namespace names (`PREFIX-home`, …).
    pub fn name(self) -> &'static str {
        match self {
            Host::Home => "home",
            Host::Router => "router",
            Host::Public => "public",
            Host::Tech => "tech",
        }
    }

    /// The host's main address: where others reach it (the router: its public side).
    pub fn ip(self) -> &'static str {
        match self {
            Host::Home => HOME_IP,
            Host::Router => ROUTER_PUBLIC_IP,
            Host::Public => PUBLIC_IP,
            Host::Tech => TECH_IP,
        }
    }
}

/// The PC, in the home network 198.19.1.0/24.
pub const HOME_IP: &str = "198.19.1.2";
/// The router's home-side address (the PC's default gateway).
pub const ROUTER_HOME_IP: &str = "198.19.1.1";
/// The router's public address: what the gateway sees as the PC's source address.
pub const ROUTER_PUBLIC_IP: &str = "198.18.0.2";
/// The gateway's host on the public network 198.18.0.0/24.
pub const PUBLIC_IP: &str = "198.18.0.1";
/// The public host's address on the technician network (the technician's default gateway).
pub const PUBLIC_TECH_SIDE_IP: &str = "198.18.1.1";
/// The technician, in 198.18.1.0/24.
pub const TECH_IP: &str = "198.18.1.2";

/// Namespaces created for one test; deleted on drop.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
}

/// Runs a command to completion; an error carries its stderr.
pub(crate) fn sh(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (install iproute2/nftables: scripts/install-test-deps.sh)"))?;
    if !output.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// The names of the existing network namespaces (`ip netns list` prints `NAME (id: N)`).
fn list_namespaces() -> Vec<String> {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).stdin(Stdio::null()).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

static NEXT: AtomicU32 = AtomicU32::new(0);
const UNIQUE_PREFIX: &str = "tether";

impl Topology {
    /// A prefix no other test in any running process uses: `tether-PID-N-TAG`. Namespaces left by
    /// a test process that died without cleaning up (SIGKILL, abort) carry a dead PID and are
    /// deleted by the next [`Topology::create`].
    pub fn unique_prefix(tag: &str) -> String {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("{UNIQUE_PREFIX}-{}-{n}-{tag}", std::process::id())
    }

    /// [`Topology::create`] with [`Topology::unique_prefix`]`(tag)`.
    pub fn create_unique(tag: &str) -> anyhow::Result<Topology> {
        Self::create(&Self::unique_prefix(tag))
    }

    /// Builds the topology in namespaces named `PREFIX-home`, `PREFIX-router`, `PREFIX-public`
    /// and `PREFIX-tech`. Stale namespaces with those names are deleted first, and so are those
    /// of [`Topology::unique_prefix`] form whose process is gone. On error, whatever was built is
    /// deleted again.
    pub fn create(prefix: &str) -> anyhow::Result<Topology> {
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            bail!("namespace prefix {prefix:?}: use 1 to 64 of [A-Za-z0-9._-]");
        }
        sweep_dead_unique_namespaces();
        let topology = Topology { prefix: prefix.to_string() };
        topology.delete();
        if let Err(e) = topology.build() {
            topology.delete();
            return Err(e.context(format!("building the NAT topology {prefix}-* (needs root, ip and nft)")));
        }
        Ok(topology)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace name of `host`.
    pub fn ns(&self, host: Host) -> String {
        format!("{}-{}", self.prefix, host.name())
    }

    /// `ip -n NS ARGS…`
    fn ip(&self, host: Host, args: &[&str]) -> anyhow::Result<()> {
        let ns = self.ns(host);
        let mut full = vec!["-n", &ns];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    fn build(&self) -> anyhow::Result<()> {
        let [home, router, public, tech] = Host::ALL.map(|h| self.ns(h));
        for ns in [&home, &router, &public, &tech] {
            sh("ip", &["netns", "add", ns])?;
        }
        for host in Host::ALL {
            self.ip(host, &["link", "set", "lo", "up"])?;
        }
        // Each veth end is created straight inside its namespace, so its name only has to be
        // unique there (parallel tests cannot collide on interface names).
        let veth = |a: &str, ns_a: &str, b: &str, ns_b: &str| {
            sh("ip", &["link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b])
        };
        veth("eth0", &home, "rh", &router)?;
        veth("rp", &router, "pr", &public)?;
        veth("pt", &public, "eth0", &tech)?;
        let addr = |host: Host, ip: &str, dev: &str| -> anyhow::Result<()> {
            self.ip(host, &["addr", "add", &format!("{ip}/24"), "dev", dev])?;
            self.ip(host, &["link", "set", dev, "up"])
        };
        addr(Host::Home, HOME_IP, "eth0")?;
        addr(Host::Router, ROUTER_HOME_IP, "rh")?;
        addr(Host::Router, ROUTER_PUBLIC_IP, "rp")?;
        addr(Host::Public, PUBLIC_IP, "pr")?;
        addr(Host::Public, PUBLIC_TECH_SIDE_IP, "pt")?;
        addr(Host::Tech, TECH_IP, "eth0")?;
        self.ip(Host::Home, &["route", "add", "default", "via", ROUTER_HOME_IP])?;
        self.ip(Host::Tech, &["route", "add", "default", "via", PUBLIC_TECH_SIDE_IP])?;
        // The public side knows where the home network is; only the router's filter keeps it out.
        self.ip(Host::Public, &["route", "add", "198.19.1.0/24", "via", ROUTER_PUBLIC_IP])?;
        // Not `sysctl` (procps may be missing): the write lands in the namespace `ip netns exec`
        // entered.
        sh("ip", &["netns", "exec", &router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
        let rules = r#"
table ip tether_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "rp" masquerade
    }
    chain forward_filter {
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        iifname "rp" oifname "rh" drop
    }
}
"#;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &router, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (install the nftables package)")?;
        child.stdin.take().context("nft's stdin")?.write_all(rules.as_bytes()).context("writing nft rules")?;
        let output = child.wait_with_output().context("waiting for nft")?;
        if !output.status.success() {
            bail!("nft -f failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }

    /// A command that runs `program` inside `host`'s namespace (`ip netns exec NS PROGRAM`).
    /// `ip netns exec` execs the program, so the child's PID is the program's.
    pub fn command(&self, host: Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(host)]).arg(program);
        command
    }

    /// Wraps an existing command so that it runs inside `host`'s namespace; keeps its program,
    /// arguments and environment changes (not its working directory or stdio settings).
    pub fn wrap(&self, host: Host, command: Command) -> Command {
        let mut wrapped = self.command(host, command.get_program());
        wrapped.args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// Starts a TCP echo listener on `addr` inside `host` (the `tether-netprobe` helper) and
    /// waits until it listens. It reports the peer address of every connection it accepts.
    pub fn tcp_listen(&self, host: Host, addr: SocketAddr) -> ProbeListener {
        let mut command = self.command(host, bin("tether-netprobe"));
        command.args(["listen", &addr.to_string()]);
        let mut process = Process::spawn(&format!("tether-netprobe listen in {}", host.name()), &mut command);
        let line = process.wait_for_log("listening ", Duration::from_secs(10));
        let addr = line.split_whitespace().nth(1).and_then(|a| a.parse().ok()).expect("the listening address");
        ProbeListener { process, addr }
    }

    /// Connects from inside `host` to `addr` (timeout `timeout`) and exchanges a line with it
    /// (the peer must echo, as [`Topology::tcp_listen`] does). Returns the connection's local and
    /// peer addresses as seen from `host`, or why it failed.
    pub fn tcp_connect(
        &self,
        host: Host,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        let ms = timeout.as_millis().to_string();
        let output = self
            .command(host, bin("tether-netprobe"))
            .args(["connect", &addr.to_string(), &ms])
            .stdin(Stdio::null())
            .output()
            .context("running tether-netprobe")?;
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !output.status.success() {
            bail!("from {} to {addr}: {stdout} {}", host.name(), String::from_utf8_lossy(&output.stderr).trim());
        }
        // `connected LOCAL -> PEER`
        let words: Vec<&str> = stdout.split_whitespace().collect();
        match (words.get(1).and_then(|a| a.parse().ok()), words.get(3).and_then(|a| a.parse().ok())) {
            (Some(local), Some(peer)) => Ok((local, peer)),
            _ => bail!("unexpected tether-netprobe output {stdout:?}"),
        }
    }

    /// A plain HTTP/1.0 `GET` made from inside `host` (by `tether-netprobe http-get`); returns
    /// the status code and the body.
    pub fn http_request(&self, host: Host, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
        let prefix: Vec<OsString> = ["ip", "netns", "exec", &self.ns(host)].iter().map(OsString::from).collect();
        http_request_via(&prefix, addr, path)
    }

    fn delete(&self) {
        for host in Host::ALL {
            let ns = self.ns(host);
            // Quietly: usually it does not exist.
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        }
    }
}

/// Deletes namespaces named by [`Topology::unique_prefix`] (this module's and `lan`'s) whose test
/// process no longer exists.
pub(crate) fn sweep_dead_unique_namespaces() {
    for name in list_namespaces() {
        let mut parts = name.split('-');
        if parts.next() != Some(UNIQUE_PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A `tether-netprobe listen` inside a namespace: echoes lines, reports accepted peers.
#[derive(Debug)]
pub struct ProbeListener {
    pub process: Process,
    addr: SocketAddr,
}

impl ProbeListener {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer address of every connection accepted so far, in order.
    pub fn accepted_peers(&self) -> Vec<SocketAddr> {
        self.process
            .stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("accepted "))
            .filter_map(|a| a.trim().parse().ok())
            .collect()
    }
}
