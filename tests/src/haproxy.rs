//! HAProxy as the load balancer in front of a fleet of gateways: TCP mode (TLS passes through),
//! one loopback frontend per [`Frontend`], round-robin over its servers, health-checked, with the
//! PROXY protocol v2 towards the servers so that a gateway learns the device's address. Run in
//! the foreground (`haproxy -f haproxy.cfg -db`) with its config, log and admin socket in a temp
//! dir; killed on drop. Never the system service.
//!
//! What a server sees (checked with HAProxy 2.6 by this module's tests):
//! - a relayed connection with `send-proxy-v2`: a PROXY v2 header (the 12-byte signature
//!   `\r\n\r\n\0\r\nQUIT\n`, `0x21` = v2 PROXY, `0x11` = TCP over IPv4, length 12, then source
//!   address, destination address, source port, destination port: the device's address and the
//!   frontend's), then the client's bytes;
//! - a health check with `send-proxy-v2`: exactly 16 bytes, `\r\n\r\n\0\r\nQUIT\n` `0x20 0x00
//!   0x00 0x00` (v2 LOCAL, AF_UNSPEC, no addresses), then the connection closes. HAProxy sends
//!   the header on checks by default when the server line has `send-proxy-v2` (and no check
//!   `port`/`addr`); we also set `check-send-proxy` so that this stays true if a check port is
//!   ever added. A gateway that requires a PROXY header from the balancer's address therefore
//!   sees a well-formed LOCAL header on checks, never a bare connection that it would have to
//!   time out or count as a protocol error;
//! - without `send-proxy-v2`: nothing from checks. A check with nothing to send is HAProxy's
//!   half-open probe (SYN, SYN-ACK, then RST instead of the last ACK), so the server's `accept`
//!   never returns it; relayed connections carry the client's bytes only.
//!
//! Readiness is read from HAProxy itself (every frontend `OPEN` in `show stat` on the admin
//! socket) rather than by connecting: a probe connection would be relayed to a server as a stray
//! connection with a PROXY header.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long HAProxy gets to open its frontends.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// One frontend: a loopback listener whose TCP connections are spread over `servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    /// Its name in the config and in [`Haproxy::frontend_addr`]: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// A loopback address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// The backend servers, in round-robin order.
    pub servers: Vec<SocketAddr>,
    /// `send-proxy-v2` (and `check-send-proxy`) on every server line.
    pub send_proxy_v2: bool,
    /// The local address HAProxy connects to the servers from (`source` on each server line), so
    /// that servers can tell the balancer's connections from others on loopback.
    pub source: Option<std::net::IpAddr>,
}

impl Frontend {
    /// A frontend on a free port of 127.0.0.1, sending the PROXY protocol v2 to its servers.
    pub fn new(name: impl Into<String>, servers: impl IntoIterator<Item = SocketAddr>) -> Frontend {
        Frontend {
            name: name.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            servers: servers.into_iter().collect(),
            send_proxy_v2: true,
            source: None,
        }
    }

    /// Connects to the servers from `ip` (a loopback address).
    pub fn source(mut self, ip: std::net::IpAddr) -> Frontend {
        self.source = Some(ip);
        self
    }

    /// Listens on `addr` (loopback only) instead.
    pub fn bind(mut self, addr: SocketAddr) -> Frontend {
        self.bind = addr;
        self
    }

    /// With `false`, servers get the client's bytes only (no PROXY header).
    pub fn send_proxy_v2(mut self, on: bool) -> Frontend {
        self.send_proxy_v2 = on;
        self
    }
}

/// HAProxy's view of one server (from `show servers state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// The frontend (a `listen` section) it belongs to.
    pub frontend: String,
    /// `s0`, `s1`, … in the order of [`Frontend::servers`].
    pub name: String,
    pub addr: SocketAddr,
    /// The operational state: 0 stopped (down), 1 starting, 2 running (up), 3 stopping.
    pub op_state: u8,
}

impl ServerState {
    /// Whether HAProxy sends new connections to it.
    pub fn is_up(&self) -> bool {
        self.op_state == 2
    }
}

/// A running HAProxy; killed when dropped.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    /// Holds `haproxy.cfg`, `haproxy.log` (its stdout and stderr) and `admin.sock`.
    dir: tempfile::TempDir,
    /// Each frontend's name and the address it listens on.
    frontends: Vec<(String, SocketAddr)>,
}

impl Haproxy {
    /// Writes the config and starts HAProxy in the foreground; returns once every frontend is
    /// open. Ports are picked anew up to three times if one was taken in between. Fails when
    /// HAProxy is not installed, saying how to install it.
    pub fn start(frontends: &[Frontend]) -> Result<Haproxy> {
        let program = find_haproxy()?;
        for frontend in frontends {
            validate(frontend)?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let bound: Vec<(String, SocketAddr)> = frontends
                .iter()
                .map(|f| Ok((f.name.clone(), if f.bind.port() == 0 { free_port(f.bind)? } else { f.bind })))
                .collect::<Result<_>>()?;
            match Self::spawn(&program, frontends, bound) {
                Ok(haproxy) => return Ok(haproxy),
                Err(err) if attempt < 3 && format!("{err:#}").contains("cannot bind socket") => continue,
                Err(err) => return Err(err),
            }
        }
    }

    fn spawn(program: &Path, frontends: &[Frontend], bound: Vec<(String, SocketAddr)>) -> Result<Haproxy> {
        let dir = tempfile::Builder::new().prefix("tether-haproxy-").tempdir().context("creating a temp dir")?;
        let socket = dir.path().join("admin.sock");
        let config = render_config(frontends, &bound, &socket);
        std::fs::write(dir.path().join("haproxy.cfg"), config).context("writing haproxy.cfg")?;
        let log = std::fs::File::create(dir.path().join("haproxy.log")).context("creating haproxy.log")?;
        let child = Command::new(program)
            .arg("-f")
            .arg(dir.path().join("haproxy.cfg"))
            .arg("-db")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut haproxy = Haproxy { child, dir, frontends: bound };
        haproxy.wait_until_open()?;
        Ok(haproxy)
    }

    /// Waits until `show stat` lists every frontend as OPEN; fails if HAProxy exits first.
    fn wait_until_open(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("haproxy exited ({status}) while starting:\n{}", self.log());
            }
            if let Ok(stat) = self.command("show stat") {
                let open = |name: &str| {
                    stat.lines().any(|line| {
                        let fields: Vec<&str> = line.split(',').collect();
                        fields.len() > 17 && fields[0] == name && fields[1] == "FRONTEND" && fields[17] == "OPEN"
                    })
                };
                if self.frontends.iter().all(|(name, _)| open(name)) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("haproxy did not open its frontends within {START_TIMEOUT:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The address frontend `name` listens on. Panics on an unknown name.
    pub fn frontend_addr(&self, name: &str) -> SocketAddr {
        self.frontends
            .iter()
            .find_map(|(n, addr)| (n == name).then_some(*addr))
            .unwrap_or_else(|| panic!("no HAProxy frontend named {name:?} (there are {:?})", self.frontends))
    }

    /// HAProxy's view of every server (`show servers state`).
    pub fn servers(&self) -> Result<Vec<ServerState>> {
        parse_servers_state(&self.command("show servers state")?)
    }

    /// Waits until exactly `up` servers of frontend `name` are up (health checks run every
    /// 500 ms; two in a row change a server's state).
    pub fn wait_for_servers_up(&self, name: &str, up: usize, timeout: Duration) -> Result<Vec<ServerState>> {
        let deadline = Instant::now() + timeout;
        loop {
            let servers: Vec<ServerState> = self.servers()?.into_iter().filter(|s| s.frontend == name).collect();
            if servers.iter().filter(|s| s.is_up()).count() == up {
                return Ok(servers);
            }
            if Instant::now() >= deadline {
                bail!("frontend {name}: waited {timeout:?} for {up} servers up; they are {servers:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one command to the admin socket (`show stat`, `show servers state`,
    /// `disable server NAME/s0`, …) and returns the answer.
    pub fn command(&self, command: &str) -> Result<String> {
        let path = self.socket_path();
        let mut stream =
            UnixStream::connect(&path).with_context(|| format!("connecting to the admin socket {}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\n").as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).with_context(|| format!("reading the answer to {command:?}"))?;
        Ok(answer)
    }

    /// Its output so far: warnings, alerts, server state changes and one line per connection.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// The config it runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.cfg")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it now (SIGKILL), as a crashed balancer; dropping does the same.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            eprintln!("--- haproxy (pid {}) log (last lines):\n{tail}\n--- end of haproxy log", self.child.id());
        }
        self.kill();
    }
}

/// The config: one `listen` section per frontend.
///
/// - `timeout connect 1s` with `retries 3` and `option redispatch`: a connect to a dead server
///   fails fast and is retried on another one, so that a client rarely sees the failure;
/// - `timeout client/server 1h`: CIRA tunnels are long-lived and may be idle between keepalives;
/// - `maxconn` per process and per frontend: 10,000 (room for 2,000 devices several times over),
///   less when the open-files hard limit cannot hold two descriptors per connection (HAProxy
///   refuses to start when it cannot raise its limit to what `maxconn` needs);
/// - `check inter 500ms fall 2 rise 2`: a plain TCP connect check; a server is out within about
///   a second of dying and back within a second of answering again;
/// - with `send-proxy-v2`, `check-send-proxy` (see the module doc for the bytes a check sends).
fn render_config(frontends: &[Frontend], bound: &[(String, SocketAddr)], socket: &Path) -> String {
    let maxconn = maxconn();
    let mut config = [
        "global",
        &format!("    maxconn {maxconn}"),
        &format!("    stats socket {} mode 600 level admin", socket.display()),
        "    log stderr format raw local0 info",
        "",
        "defaults",
        "    mode tcp",
        "    log global",
        "    option tcplog",
        &format!("    maxconn {maxconn}"),
        "    timeout connect 1s",
        "    timeout client 1h",
        "    timeout server 1h",
        "    option redispatch",
        "    retries 3",
        "",
    ]
    .join("\n");
    for (frontend, (_, bind)) in frontends.iter().zip(bound) {
        config.push_str(&format!("\nlisten {}\n    bind {bind}\n    balance roundrobin\n", frontend.name));
        for (i, server) in frontend.servers.iter().enumerate() {
            let proxy = if frontend.send_proxy_v2 { " send-proxy-v2 check-send-proxy" } else { "" };
            let source = frontend.source.map(|ip| format!(" source {ip}")).unwrap_or_default();
            config.push_str(&format!("    server s{i} {server} check inter 500ms fall 2 rise 2{proxy}{source}\n"));
        }
    }
    config
}

/// 10,000 connections, or what the open-files hard limit allows: two descriptors per connection
/// plus some for listeners, checks and the admin socket.
fn maxconn() -> u64 {
    let hard = rlimit::Resource::NOFILE.get().map_or(20_000, |(_, hard)| hard);
    (hard.saturating_sub(200) / 2).clamp(256, 10_000)
}

fn validate(frontend: &Frontend) -> Result<()> {
    let name = &frontend.name;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        bail!("HAProxy frontend name {name:?}: use letters, digits, '-', '_' and '.'");
    }
    if !frontend.bind.ip().is_loopback() {
        bail!("HAProxy frontend {name}: {} is not a loopback address (tests bind loopback only)", frontend.bind);
    }
    Ok(())
}

/// The `haproxy` binary: on the PATH, or in /usr/sbin (not on a non-root user's PATH on Debian).
fn find_haproxy() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join("haproxy")).find(|p| p.is_file()));
    if let Some(path) = on_path.or_else(|| Some(PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.is_file())) {
        return Ok(path);
    }
    bail!("HAProxy is not installed (no haproxy on the PATH or in /usr/sbin); run scripts/install-test-deps.sh as root")
}

/// A port of `addr`'s IP that was free a moment ago.
fn free_port(addr: SocketAddr) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(listener.local_addr()?)
}

/// Parses `show servers state` (format version 1): a version line, a `# ` header naming the
/// columns, one line per server.
fn parse_servers_state(text: &str) -> Result<Vec<ServerState>> {
    let mut columns: Vec<&str> = Vec::new();
    let mut servers = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(header) = line.strip_prefix('#') {
            columns = header.split_whitespace().collect();
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() == 1 {
            continue; // the format version
        }
        let field = |name: &str| {
            columns
                .iter()
                .position(|c| *c == name)
                .and_then(|i| fields.get(i).copied())
                .with_context(|| format!("no {name} in the servers state line {line:?}"))
        };
        let ip = field("srv_addr")?;
        let port = field("srv_port")?;
        servers.push(ServerState {
            frontend: field("be_name")?.to_owned(),
            name: field("srv_name")?.to_owned(),
            addr: format!("{ip}:{port}").parse().with_context(|| format!("server address {ip}:{port}"))?,
            op_state: field("srv_op_state")?.parse().with_context(|| format!("srv_op_state in {line:?}"))?,
        });
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    use super::*;

    /// The PROXY protocol v2 signature.
    const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

    /// What a test backend saw on one connection.
    #[derive(Debug)]
    struct Seen {
        /// The PROXY v2 header (signature to the end of its addresses), when one was expected.
        header: Option<Vec<u8>>,
        /// The bytes after it (echoed back).
        data: Vec<u8>,
        /// It ended with a reset rather than a FIN.
        reset: bool,
    }

    /// An echo server on a free loopback port that reads a PROXY v2 header first when
    /// `expect_proxy`, and reports every connection once it ends.
    fn echo_backend(expect_proxy: bool) -> (SocketAddr, mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut header = None;
                    if expect_proxy {
                        let mut fixed = [0u8; 16];
                        if stream.read_exact(&mut fixed).is_err() {
                            return;
                        }
                        let mut whole = fixed.to_vec();
                        let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
                        let mut rest = vec![0u8; len];
                        if stream.read_exact(&mut rest).is_err() {
                            return;
                        }
                        whole.extend_from_slice(&rest);
                        header = Some(whole);
                    }
                    let mut data = Vec::new();
                    let mut buf = [0u8; 4096];
                    let reset = loop {
                        match stream.read(&mut buf) {
                            Ok(0) => break false,
                            Ok(n) => {
                                data.extend_from_slice(&buf[..n]);
                                if stream.write_all(&buf[..n]).is_err() {
                                    break true;
                                }
                            }
                            Err(err) => break err.kind() == std::io::ErrorKind::ConnectionReset,
                        }
                    };
                    let _ = tx.send(Seen { header, data, reset });
                });
            }
        });
        (addr, rx)
    }

    /// Sends `message` through `addr` and returns what comes back; returns the client's local
    /// address too.
    fn round_trip(addr: SocketAddr, message: &[u8]) -> (SocketAddr, Vec<u8>) {
        let mut client = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client.write_all(message).unwrap();
        let mut echoed = vec![0u8; message.len()];
        client.read_exact(&mut echoed).unwrap();
        (client.local_addr().unwrap(), echoed)
    }

    fn next_seen(rx: &mpsc::Receiver<Seen>, mut matches: impl FnMut(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let seen = rx.recv_timeout(left).expect("the backend saw the connection in time");
            if matches(&seen) {
                return seen;
            }
        }
    }

    #[test]
    fn proxy_v2_carries_the_client_address_and_checks_send_local() {
        let (backend, seen) = echo_backend(true);
        let haproxy = Haproxy::start(&[Frontend::new("cira", [backend])]).expect("HAProxy starts");
        let front = haproxy.frontend_addr("cira");
        assert!(front.ip().is_loopback() && front.port() != 0, "{front}");

        // A health check: the 16-byte LOCAL header, nothing else.
        let check = next_seen(&seen, |s| s.header.as_ref().is_some_and(|h| h[12] == 0x20));
        assert_eq!(check.header.unwrap(), b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00");
        assert!(check.data.is_empty(), "{:?}", check.data);
        eprintln!("a check ends with {}", if check.reset { "a reset" } else { "a FIN" });

        // A client: bytes go through, after a PROXY header naming it and the frontend.
        let (client, echoed) = round_trip(front, b"hello through haproxy");
        assert_eq!(echoed, b"hello through haproxy");
        let relayed = next_seen(&seen, |s| s.header.as_ref().is_some_and(|h| h[12] == 0x21));
        let header = relayed.header.unwrap();
        assert_eq!(&header[..12], SIGNATURE);
        let mut expected = SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
        expected.extend_from_slice(&client.port().to_be_bytes());
        expected.extend_from_slice(&front.port().to_be_bytes());
        assert_eq!(header, expected, "PROXY v2 header for {client} -> {front}");
        assert_eq!(relayed.data, b"hello through haproxy");

        let servers = haproxy.servers().unwrap();
        assert_eq!(servers.len(), 1, "{servers:?}");
        assert_eq!((servers[0].frontend.as_str(), servers[0].name.as_str()), ("cira", "s0"));
        assert_eq!(servers[0].addr, backend);
        assert!(servers[0].is_up(), "{servers:?}");
        // One log line per connection, written when it ends.
        let logged = crate::poll_until(Duration::from_secs(5), || haproxy.log().contains("cira cira/s0"));
        assert!(logged, "no connection line in the log:\n{}", haproxy.log());
    }

    #[test]
    fn without_proxy_v2_checks_and_clients_send_only_their_bytes() {
        let (backend, seen) = echo_backend(false);
        let haproxy = Haproxy::start(&[Frontend::new("plain", [backend]).send_proxy_v2(false)]).unwrap();
        let config = std::fs::read_to_string(haproxy.config_path()).unwrap();
        assert!(!config.contains("send-proxy"), "{config}");
        // Checks run (the server is up after two) but never reach the application.
        haproxy.wait_for_servers_up("plain", 1, Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(seen.try_recv().is_err(), "a check reached the backend");
        let (_, echoed) = round_trip(haproxy.frontend_addr("plain"), b"\r\n\r\nnot a header");
        assert_eq!(echoed, b"\r\n\r\nnot a header");
        let relayed = next_seen(&seen, |_| true);
        assert_eq!(relayed.data, b"\r\n\r\nnot a header");
    }

    #[test]
    fn a_dead_server_is_taken_out_and_connections_go_to_the_live_one() {
        let (live, _seen) = echo_backend(true);
        let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (other, _other_seen) = echo_backend(false);
        let haproxy = Haproxy::start(&[
            Frontend::new("fleet", [dead, live]),
            Frontend::new("second", [other]).send_proxy_v2(false),
        ])
        .unwrap();
        let servers = haproxy.wait_for_servers_up("fleet", 1, Duration::from_secs(10)).unwrap();
        assert!(servers.iter().any(|s| s.addr == dead && !s.is_up()), "{servers:?}");
        assert!(servers.iter().any(|s| s.addr == live && s.is_up()), "{servers:?}");
        for i in 0..4u8 {
            let (_, echoed) = round_trip(haproxy.frontend_addr("fleet"), &[i; 100]);
            assert_eq!(echoed, [i; 100]);
        }
        assert_eq!(round_trip(haproxy.frontend_addr("second"), b"x").1, b"x");
        assert_ne!(haproxy.frontend_addr("fleet"), haproxy.frontend_addr("second"));
    }

    #[test]
    fn frontends_bind_loopback_only() {
        let err = Haproxy::start(&[Frontend::new("open", []).bind("0.0.0.0:0".parse().unwrap())]).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        assert!(Haproxy::start(&[Frontend::new("bad name", [])]).is_err());
    }

    #[test]
    fn servers_state_is_parsed_by_column_name() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_port\n\
                    2 fleet 1 s0 127.0.0.1 2 0 4433\n2 fleet 2 s1 127.0.0.1 0 0 4434\n\n";
        let servers = parse_servers_state(text).unwrap();
        assert_eq!(servers.len(), 2);
        assert!(servers[0].is_up() && !servers[1].is_up());
        assert_eq!(servers[1].addr, "127.0.0.1:4434".parse().unwrap());
        assert_eq!(servers[1].name, "s1");
    }
}
