//! Starting the real binaries for a test: the gateway with a fresh data dir, device simulators,
//! `tether forward`, and the CLI. Every child is killed when its handle drops; its output goes to a
//! file so that a failing test can show the last lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The directory holding the binaries of the profile the tests were built with.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test binary>
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

/// The path of a workspace binary, built beforehand with the same profile.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --release --workspace --bins` \
         (or the profile the tests run with)",
        path.display()
    );
    path
}

/// Polls `condition` until it holds, panicking with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        if condition() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// A child process killed on drop, with its stdout and stderr in files.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command) -> Process {
        let dir = tempfile::tempdir().expect("a temp dir for logs");
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process { name: name.to_string(), child, stdout, stderr, _dir: dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The first line of stdout or stderr containing `needle`.
    pub fn log_line_containing(&self, needle: &str) -> Option<String> {
        let (out, err) = (self.stdout(), self.stderr());
        out.lines().chain(err.lines()).find(|l| l.contains(needle)).map(str::to_string)
    }

    /// Waits for the process to exit.
    pub fn wait(mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {timeout:?}\n{}", self.name, self.tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub fn terminate(&mut self, timeout: Duration) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }

    /// The last lines of its output, for failure messages.
    pub fn tail(&self) -> String {
        let err = self.stderr();
        let lines: Vec<&str> = err.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!(
            "--- {} stdout:\n{}\n--- {} stderr (last lines):\n{}",
            self.name,
            self.stdout(),
            self.name,
            lines[start..].join("\n")
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion; panics with its output unless it succeeds. Returns stdout.
pub fn run(command: &mut Command) -> String {
    let output = command.stdin(Stdio::null()).env("NO_COLOR", "1").output().expect("running a command");
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A running `tether gateway` with its own data dir.
#[derive(Debug)]
pub struct Gateway {
    data_dir: tempfile::TempDir,
    process: Option<Process>,
    args: Vec<String>,
    listen: Listen,
    token: String,
    mps_user: String,
    mps_password: String,
    /// Network namespace the technician commands run in, if any.
    cli_netns: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Listen {
    cira: SocketAddr,
    api: SocketAddr,
    metrics: SocketAddr,
}

impl Gateway {
    /// Starts a gateway on loopback with fresh state, MPS credentials and an API token.
    pub fn start(extra_args: &[&str]) -> Gateway {
        Self::start_with_config("", extra_args)
    }

    /// Like `start`, with a `tether.toml` in the data dir.
    pub fn start_with_config(config_toml: &str, extra_args: &[&str]) -> Gateway {
        Self::start_at("127.0.0.1", config_toml, extra_args, |c| c)
    }

    /// Starts a gateway listening on `ip`, with `wrap` applied to its command (e.g. to run it in a
    /// network namespace).
    pub fn start_at(ip: &str, config_toml: &str, extra_args: &[&str], wrap: impl Fn(Command) -> Command) -> Gateway {
        let data_dir = tempfile::tempdir().expect("a data dir");
        if !config_toml.is_empty() {
            std::fs::write(data_dir.path().join("tether.toml"), config_toml).unwrap();
        }
        let mps_user = "mpsuser".to_string();
        let mps_password = format!("P@ss-{}", Uuid::new_v4().simple());
        let dir = data_dir.path().to_str().unwrap().to_string();
        run(Command::new(bin("tether")).args(["--data-dir", &dir, "mps-credentials", "set", &mps_user, &mps_password]));
        let out = run(Command::new(bin("tether")).args(["--data-dir", &dir, "token", "create", "e2e"]));
        let token = out.lines().last().expect("the token line").trim().to_string();
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            dir,
            "gateway".into(),
            "--cira-listen".into(),
            format!("{ip}:0"),
            "--api-listen".into(),
            format!("{ip}:0"),
            "--metrics-listen".into(),
            format!("{ip}:0"),
            "--tls-name".into(),
            ip.to_string(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut gateway = Gateway {
            data_dir,
            process: None,
            args,
            listen: Listen {
                cira: ([0, 0, 0, 0], 0).into(),
                api: ([0, 0, 0, 0], 0).into(),
                metrics: ([0, 0, 0, 0], 0).into(),
            },
            token,
            mps_user,
            mps_password,
            cli_netns: None,
        };
        gateway.launch(&wrap);
        gateway
    }

    fn listen_file(&self) -> PathBuf {
        self.data_dir.path().join("run/listen.json")
    }

    fn launch(&mut self, wrap: &dyn Fn(Command) -> Command) {
        let _ = std::fs::remove_file(self.listen_file());
        let mut command = Command::new(bin("tether"));
        command.args(&self.args).env("RUST_LOG", "info");
        let process = Process::spawn("tether gateway", &mut wrap(command));
        let file = self.listen_file();
        wait_for("the gateway to listen", Duration::from_secs(60), || file.exists());
        let listen: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let addr = |k: &str| listen[k].as_str().unwrap().parse::<SocketAddr>().unwrap();
        self.listen = Listen { cira: addr("cira"), api: addr("api"), metrics: addr("metrics") };
        self.process = Some(process);
    }

    /// Stops the gateway (SIGTERM) and starts it again on the same ports and data dir.
    pub fn restart(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate(Duration::from_secs(20));
        }
        let l = self.listen;
        // Same ports as before, so that devices come back to the same address.
        let mut args: Vec<String> = Vec::new();
        let mut iter = self.args.iter();
        while let Some(a) = iter.next() {
            args.push(a.clone());
            let fixed = match a.as_str() {
                "--cira-listen" => Some(l.cira),
                "--api-listen" => Some(l.api),
                "--metrics-listen" => Some(l.metrics),
                _ => None,
            };
            if let Some(addr) = fixed {
                iter.next();
                args.push(addr.to_string());
            }
        }
        self.args = args;
        self.launch(&|c| c);
    }

    /// Runs technician commands (`cli`, `devices_json`, `forward`) inside a network namespace.
    pub fn set_cli_netns(&mut self, ns: &str) {
        self.cli_netns = Some(ns.to_string());
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn cira_addr(&self) -> SocketAddr {
        self.listen.cira
    }

    pub fn api_url(&self) -> String {
        format!("https://{}", self.listen.api)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.path().join("tls/ca.pem")
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn mps_credentials(&self) -> (String, String) {
        (self.mps_user.clone(), self.mps_password.clone())
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("running").pid()
    }

    /// The gateway's resident set size, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// A `tether` technician command against this gateway's API, as a remote technician runs it.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = match &self.cli_netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("tether"));
                c
            }
            None => Command::new(bin("tether")),
        };
        command
            .args(["--api", &self.api_url(), "--token", &self.token, "--ca", self.ca_path().to_str().unwrap()])
            .args(args);
        command
    }

    /// Runs a technician command; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        run(&mut self.cli_command(args))
    }

    pub fn devices_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli(&["devices", "--json"])).expect("devices --json prints JSON")
    }

    /// GET /metrics (plain HTTP).
    pub fn metrics_text(&self) -> String {
        http_get(self.listen.metrics, "/metrics")
    }

    /// Starts `tether forward UUID PORT` on a free loopback port.
    pub fn forward(&self, uuid: Uuid, port: u16) -> Forward {
        let mut command =
            self.cli_command(&["forward", &uuid.to_string(), &port.to_string(), "--listen", "127.0.0.1:0"]);
        let process = Process::spawn("tether forward", &mut command);
        let mut addr = None;
        wait_for("tether forward to listen", Duration::from_secs(30), || {
            addr = process
                .log_line_containing("forwarding ")
                .and_then(|l| l.split_whitespace().nth(1).and_then(|a| a.parse::<SocketAddr>().ok()));
            addr.is_some()
        });
        Forward { process, addr: addr.unwrap() }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(process) = &self.process {
            if std::thread::panicking() {
                eprintln!("{}", process.tail());
            }
        }
    }
}

/// A running `tether forward`.
#[derive(Debug)]
pub struct Forward {
    pub process: Process,
    addr: SocketAddr,
}

impl Forward {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A running `amt-sim`.
#[derive(Debug)]
pub struct Sim {
    process: Process,
}

impl Sim {
    /// Starts amt-sim against `gateway` with the gateway's MPS credentials.
    pub fn start(gateway: &Gateway, args: &[&str]) -> Sim {
        Self::start_with_password(gateway, &gateway.mps_password, args)
    }

    pub fn start_with_password(gateway: &Gateway, password: &str, args: &[&str]) -> Sim {
        let mut command = Command::new(bin("amt-sim"));
        command
            .args(["--gateway", &gateway.cira_addr().to_string(), "--ca", gateway.ca_path().to_str().unwrap()])
            .args(["--username", &gateway.mps_user, "--password", password])
            .args(args)
            .env("RUST_LOG", "info");
        Sim { process: Process::spawn("amt-sim", &mut command) }
    }

    pub fn from_command(command: &mut Command) -> Sim {
        Sim { process: Process::spawn("amt-sim", command) }
    }

    pub fn log_line_containing(&self, needle: &str) -> Option<String> {
        self.process.log_line_containing(needle)
    }

    pub fn wait(self, timeout: Duration) -> ExitStatus {
        self.process.wait(timeout)
    }

    pub fn tail(&self) -> String {
        self.process.tail()
    }
}

/// A plain HTTP/1.0 GET; returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connecting for GET");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// Reads lines from a child's pipe until one contains `needle` (bounded by `timeout`).
pub fn read_until(reader: impl Read, needle: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    for line in BufReader::new(reader).lines() {
        let line = line.ok()?;
        if line.contains(needle) {
            return Some(line);
        }
        if Instant::now() > deadline {
            return None;
        }
    }
    None
}
