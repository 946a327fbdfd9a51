//! Starting the real binaries for a test: the gateway with a fresh data dir, device simulators,
//! `tether forward`, and the CLI. Every child is killed when its handle drops; its stdout and
//! stderr go to files in a temp dir, so that a failing test can show the last lines.
//!
//! The binaries are not built by the tests: `cargo build --release --workspace --bins` first, then
//! `cargo test --release --workspace` (the test binaries find `tether` and `amt-sim` next to their
//! own `deps/` directory, i.e. in the same profile's `target/<profile>/`).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The directory holding the binaries of the profile the tests were built with:
/// `$TETHER_BIN_DIR` if set, else `target/<profile>/` found from the test binary's own path
/// (`target/<profile>/deps/<test>-<hash>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TETHER_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    // Integration and unit tests live in deps/; a bin run through `cargo run` lives one level up.
    if deps.file_name().is_some_and(|n| n == "deps") { deps.parent().unwrap_or(deps) } else { deps }.to_path_buf()
}

/// The path of a workspace binary (`tether`, `amt-sim`, `tether-netprobe`), built beforehand with
/// the same profile as the tests. Panics with the build command when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let dir = bin_dir();
    let path = dir.join(name);
    if !path.exists() {
        let profile = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let build = match profile.as_str() {
            "release" => "cargo build --release --workspace --bins".to_string(),
            "debug" => "cargo build --workspace --bins".to_string(),
            other => format!("cargo build --profile {other} --workspace --bins"),
        };
        panic!(
            "{} is missing: the end-to-end tests run the real binaries but do not build them. \
             Build them first with `{build}` (the same profile as `cargo test`; scripts/test.sh does \
             `cargo build --release --workspace --bins` then `cargo test --release --workspace`).",
            path.display()
        );
    }
    path
}

/// A note if `tether` or `amt-sim` is older than a source file it is built from: `cargo test`
/// does not rebuild them (tether-tests does not depend on them), so a failing test may be testing
/// old code. Computed once; printed with the output of failing tests.
pub fn stale_binaries_note() -> Option<String> {
    static NOTE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NOTE.get_or_init(|| {
        let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
        let dir = bin_dir();
        let oldest_bin = ["tether", "amt-sim"].iter().filter_map(|b| modified(&dir.join(b))).min()?;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
        let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
        let mut stack: Vec<PathBuf> = ["gateway", "loadtest", "protocols"].iter().map(|c| root.join(c)).collect();
        stack.push(root.join("Cargo.lock"));
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "target" || n == "tests" || n == "benches") {
                    continue;
                }
                stack.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|e| e.path()));
            } else if let Some(t) = modified(&path) {
                if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                    newest = Some((t, path));
                }
            }
        }
        let (newest, path) = newest?;
        (newest > oldest_bin).then(|| {
            format!(
                "note: {} is newer than the tether/amt-sim binaries in {}: they may be stale; rebuild with \
                 `cargo build --release --workspace --bins --tests` (scripts/test.sh does)",
                path.display(),
                dir.display()
            )
        })
    })
    .clone()
}

/// Polls `condition` until it holds; returns false once `timeout` has passed without it.
pub fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Polls `condition` until it holds, panicking with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, condition: impl FnMut() -> bool) {
    let started = Instant::now();
    assert!(poll_until(timeout, condition), "timed out after {:?} waiting for {what}", started.elapsed());
}

/// A loopback port that was free a moment ago (bind to port 0, read it, close). Another process
/// may take it in between: prefer letting the server bind port 0 and report its address.
pub fn free_local_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding 127.0.0.1:0").port()
}

/// Environment variables the binaries read (`TETHER_*`, `AMT_SIM_*`): a developer's shell may
/// have them set, and they must not leak into a test's processes unless the test sets them.
fn scrub_env(command: &mut Command) {
    let explicit: Vec<OsString> = command.get_envs().map(|(k, _)| k.to_owned()).collect();
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if (name.starts_with("TETHER_") || name.starts_with("AMT_SIM_")) && !explicit.contains(&key) {
            command.env_remove(&key);
        }
    }
    if !explicit.iter().any(|k| k == "NO_COLOR") {
        command.env("NO_COLOR", "1");
    }
    // With RUST_BACKTRACE set (as it often is in CI), an `anyhow` error also prints a backtrace
    // that pushes the error itself out of the tail a failing test shows; panics keep theirs.
    if !explicit.iter().any(|k| k == "RUST_LIB_BACKTRACE") {
        command.env("RUST_LIB_BACKTRACE", "0");
    }
}

/// A child process killed (SIGKILL) on drop, with its stdout and stderr in files.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `command` with stdin from /dev/null and its output in files. `TETHER_*` and
    /// `AMT_SIM_*` variables of the test's own environment are removed unless `command` sets them.
    pub fn spawn(name: &str, command: &mut Command) -> Process {
        Self::spawn_with(name, command, Stdio::null())
    }

    /// Like [`Process::spawn`], with stdin a pipe the test writes to (keys typed into a console).
    pub fn spawn_interactive(name: &str, command: &mut Command) -> (Process, ChildStdin) {
        let mut process = Self::spawn_with(name, command, Stdio::piped());
        let stdin = process.child.stdin.take().expect("the piped stdin");
        (process, stdin)
    }

    fn spawn_with(name: &str, command: &mut Command, stdin: Stdio) -> Process {
        let dir = tempfile::Builder::new().prefix("tether-e2e-log-").tempdir().expect("a temp dir for logs");
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        scrub_env(command);
        let child = command
            .stdin(stdin)
            .stdout(std::fs::File::create(&stdout).expect("creating the stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("creating the stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({:?}): {e}", command.get_program()));
        Process { name: name.to_string(), child, stdout, stderr, _dir: dir }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The file its stderr goes to (kept until the `Process` drops).
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// The first line of stdout or stderr containing `needle`.
    pub fn log_line_containing(&self, needle: &str) -> Option<String> {
        let (out, err) = (self.stdout(), self.stderr());
        out.lines().chain(err.lines()).find(|l| l.contains(needle)).map(str::to_string)
    }

    /// Waits until a line of stdout or stderr contains `needle` and returns it. Panics, with the
    /// output, after `timeout` or if the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let mut found = None;
        let mut exited = None;
        poll_until(timeout, || {
            found = self.log_line_containing(needle);
            if found.is_none() {
                exited = self.try_wait();
            }
            found.is_some() || exited.is_some()
        });
        // A line written just before exiting still counts.
        found.or_else(|| self.log_line_containing(needle)).unwrap_or_else(|| match exited {
            Some(status) => panic!("{} exited ({status}) before logging {needle:?}\n{}", self.name, self.tail()),
            None => panic!("{} did not log {needle:?} within {timeout:?}\n{}", self.name, self.tail()),
        })
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits for the process to exit by itself; panics (killing it) after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        poll_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        status.unwrap_or_else(|| panic!("{} did not exit within {timeout:?}\n{}", self.name, self.tail()))
    }

    /// Sends it a signal by name (`STOP`, `CONT`, `TERM`, …) with `sh`'s built-in kill; panics
    /// if the process is gone or the name is unknown.
    pub fn signal(&mut self, name: &str) {
        assert!(self.is_running(), "{} has exited; cannot send it SIG{name}\n{}", self.name, self.tail());
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {}", self.child.id())])
            .status()
            .expect("running sh for kill");
        assert!(status.success(), "kill -{name} {} failed ({status})", self.child.id());
    }

    /// Asks the process to stop (SIGTERM), waits up to `timeout`, then kills it (SIGKILL).
    /// Returns its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if self.is_running() {
            // `sh`'s built-in kill: no dependency on procps, no unsafe code for kill(2).
            let _ = Command::new("sh").args(["-c", &format!("kill -TERM {}", self.child.id())]).status();
            if !poll_until(timeout, || !self.is_running()) {
                eprintln!("{} ignored SIGTERM for {timeout:?}; killing it", self.name);
                let _ = self.child.kill();
            }
        }
        self.child.wait().expect("waiting for a child")
    }

    /// Its stdout and the last 40 lines of its stderr, for failure messages.
    pub fn tail(&self) -> String {
        self.tail_lines(40)
    }

    /// Its stdout and the last `n` lines of its stderr.
    pub fn tail_lines(&self, n: usize) -> String {
        let err = self.stderr();
        let lines: Vec<&str> = err.lines().collect();
        let start = lines.len().saturating_sub(n);
        let out = self.stdout();
        let out_lines: Vec<&str> = out.lines().collect();
        let out_start = out_lines.len().saturating_sub(n);
        format!(
            "--- {name} (pid {pid}) stdout (last lines):\n{}\n--- {name} stderr (last lines):\n{}\n--- end of {name}",
            out_lines[out_start..].join("\n"),
            lines[start..].join("\n"),
            name = self.name,
            pid = self.child.id(),
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.tail());
            if let Some(note) = stale_binaries_note() {
                eprintln!("{note}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident set size of process `pid` in KiB (`VmRSS` in /proc), `None` once it is gone.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The last non-empty line of `text`, trimmed (where `tether token create` prints the token).
pub fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// An operator command on a data dir (`tether --data-dir DIR ARGS…`); panics unless it
/// succeeds; returns stdout. For a running gateway, [`Gateway::operator`] does the same.
pub fn operator_in(data_dir: &Path, args: &[&str]) -> String {
    run(Command::new(bin("tether")).arg("--data-dir").arg(data_dir).args(args))
}

/// Runs a command to completion (stdin from /dev/null); panics with its output unless it
/// succeeds. Returns stdout. Scrubs `TETHER_*`/`AMT_SIM_*` like [`Process::spawn`].
pub fn run(command: &mut Command) -> String {
    scrub_env(command);
    let output =
        command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {:?}: {e}", command.get_program()));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n--- stdout:\n{}\n--- stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A running `tether gateway` with its own data dir (a temp dir, deleted on drop).
#[derive(Debug)]
pub struct Gateway {
    data_dir: tempfile::TempDir,
    process: Option<Process>,
    /// What runs before `tether` (e.g. `ip netns exec NS`), from the `wrap` given at start.
    prefix: Vec<OsString>,
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
    agents: SocketAddr,
}

/// The MPS username every test gateway gets (AMT allows letters and digits only).
pub const MPS_USER: &str = "mpsuser";

impl Gateway {
    /// Starts a gateway on loopback (ports chosen by the OS) with fresh state, MPS credentials
    /// and an API token. `extra_args` go after `tether … gateway`.
    pub fn start(extra_args: &[&str]) -> Gateway {
        Self::start_with_config("", extra_args)
    }

    /// Like [`Gateway::start`], with `config_toml` written to `DATA_DIR/tether.toml` first.
    pub fn start_with_config(config_toml: &str, extra_args: &[&str]) -> Gateway {
        Self::start_at("127.0.0.1", config_toml, extra_args, |c| c)
    }

    /// Starts a gateway listening on `ip` (port 0 for all three listeners), with `wrap` applied to
    /// its command line, e.g. `|c| topology.wrap(Host::Public, c)` to run it in a namespace.
    /// `wrap` may only put something in front of the command (it is remembered that way for
    /// [`Gateway::restart`]). The generated server certificate names `ip`.
    pub fn start_at(ip: &str, config_toml: &str, extra_args: &[&str], wrap: impl Fn(Command) -> Command) -> Gateway {
        Self::start_prepared(ip, config_toml, extra_args, wrap, |_| {})
    }

    /// Like [`Gateway::start_with_config`], with `setup` run on the fresh data dir after the
    /// harness's MPS account and API token exist and before the gateway starts: operator commands
    /// that must precede the start, e.g.
    /// `|dir| { operator_in(dir, &["mps-credentials", "set", "other", "PASS2"]); }`.
    pub fn start_with_setup(config_toml: &str, extra_args: &[&str], setup: impl FnOnce(&Path)) -> Gateway {
        Self::start_prepared("127.0.0.1", config_toml, extra_args, |c| c, setup)
    }

    /// [`Gateway::start_at`] with a `setup` step before the start (see [`Gateway::start_with_setup`]).
    pub fn start_prepared(
        ip: &str,
        config_toml: &str,
        extra_args: &[&str],
        wrap: impl Fn(Command) -> Command,
        setup: impl FnOnce(&Path),
    ) -> Gateway {
        let data_dir = tempfile::Builder::new().prefix("tether-e2e-data-").tempdir().expect("a data dir");
        if !config_toml.is_empty() {
            std::fs::write(data_dir.path().join("tether.toml"), config_toml).expect("writing tether.toml");
        }
        let mps_password = format!("P@ss-{}", Uuid::new_v4().simple());
        let dir = data_dir.path().to_str().expect("a UTF-8 temp dir").to_string();
        let tether = bin("tether");
        run(Command::new(&tether).args(["--data-dir", &dir, "mps-credentials", "set", MPS_USER, &mps_password]));
        // Named per gateway: gateways of a fleet share one store.
        let name = format!("e2e-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let out = run(Command::new(&tether).args(["--data-dir", &dir, "token", "create", &name]));
        let token = last_line(&out).expect("the token line").to_string();
        setup(data_dir.path());
        let mut args: Vec<String> = vec!["--data-dir".into(), dir, "gateway".into()];
        // Each listener on a port of the OS's choosing, unless the test gives its own.
        for flag in ["--cira-listen", "--api-listen", "--metrics-listen", "--agent-listen"] {
            if extra_args.contains(&flag) {
                continue;
            }
            args.push(flag.into());
            args.push(format!("{ip}:0"));
        }
        args.extend(["--tls-name".to_string(), ip.to_string()]);
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let unset: SocketAddr = ([0, 0, 0, 0], 0).into();
        let mut gateway = Gateway {
            data_dir,
            process: None,
            prefix: command_prefix(&wrap),
            args,
            listen: Listen { cira: unset, api: unset, metrics: unset, agents: unset },
            token,
            mps_user: MPS_USER.to_string(),
            mps_password,
            cli_netns: None,
        };
        gateway.launch();
        gateway
    }

    fn listen_file(&self) -> PathBuf {
        self.data_dir.path().join("run/listen.json")
    }

    fn launch(&mut self) {
        let _ = std::fs::remove_file(self.listen_file());
        let mut command = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin("tether"));
                c
            }
            None => Command::new(bin("tether")),
        };
        command.args(&self.args).env("RUST_LOG", "info");
        let mut process = Process::spawn("tether gateway", &mut command);
        let file = self.listen_file();
        let mut exited = None;
        poll_until(Duration::from_secs(60), || {
            exited = process.try_wait();
            file.exists() || exited.is_some()
        });
        if let Some(status) = exited {
            let config = self.data_dir.path().join("tether.toml");
            let config = std::fs::read_to_string(&config).map(|t| format!("\n--- its {}:\n{t}", config.display()));
            panic!(
                "tether gateway exited ({status}) before listening (a configuration key it does not know?)\n{}{}",
                process.tail(),
                config.unwrap_or_default()
            );
        }
        assert!(file.exists(), "tether gateway wrote no {} within 60 s\n{}", file.display(), process.tail());
        let text = std::fs::read_to_string(&file).expect("reading listen.json");
        let listen: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("listen.json is not JSON ({e}): {text}"));
        let addr = |k: &str| -> SocketAddr {
            listen[k]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("listen.json has no address {k:?}: {text}"))
        };
        self.listen = Listen { cira: addr("cira"), api: addr("api"), metrics: addr("metrics"), agents: addr("agents") };
        self.process = Some(process);
    }

    /// Stops the gateway (SIGTERM, then SIGKILL after 20 s) and starts it again with the same
    /// data dir, arguments, namespace and ports, so that devices come back to the same address.
    pub fn restart(&mut self) {
        self.stop();
        let l = self.listen;
        let mut args: Vec<String> = Vec::new();
        let mut iter = std::mem::take(&mut self.args).into_iter();
        while let Some(a) = iter.next() {
            let fixed = match a.as_str() {
                "--cira-listen" => Some(l.cira),
                "--api-listen" => Some(l.api),
                "--metrics-listen" => Some(l.metrics),
                "--agent-listen" => Some(l.agents),
                _ => None,
            };
            args.push(a);
            if let Some(addr) = fixed {
                iter.next();
                args.push(addr.to_string());
            }
        }
        self.args = args;
        self.launch();
    }

    /// Kills the gateway at once (SIGKILL, as a crash or `kill -9` would) and reaps it. The data
    /// dir stays until the `Gateway` drops.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal("KILL");
            process.wait(Duration::from_secs(10));
        }
    }

    /// The gateway's instance id in a fleet (`DATA_DIR/instance-id`, written at its first start).
    pub fn instance_id(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("instance-id"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| panic!("reading the gateway's instance-id: {e}"))
    }

    /// Stops the gateway (SIGTERM, then SIGKILL after 20 s) and returns its exit status, if it
    /// was running. The data dir stays until the `Gateway` drops.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.process.take().map(|mut p| p.terminate(Duration::from_secs(20)))
    }

    /// Runs technician commands ([`Gateway::cli`], [`Gateway::devices_json`],
    /// [`Gateway::forward`]) inside a network namespace (`ip netns exec NS`).
    pub fn set_cli_netns(&mut self, ns: &str) {
        self.cli_netns = Some(ns.to_string());
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn cira_addr(&self) -> SocketAddr {
        self.listen.cira
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.listen.api
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.listen.metrics
    }

    /// The agents' QUIC listener (UDP).
    pub fn agent_addr(&self) -> SocketAddr {
        self.listen.agents
    }

    /// `https://IP:PORT` of the technician API.
    pub fn api_url(&self) -> String {
        format!("https://{}", self.listen.api)
    }

    /// The CA devices and technicians trust (`DATA_DIR/tls/ca.pem`).
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.path().join("tls/ca.pem")
    }

    /// The API token created at start.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The MPS (CIRA) username and password devices authenticate with.
    pub fn mps_credentials(&self) -> (String, String) {
        (self.mps_user.clone(), self.mps_password.clone())
    }

    /// The running gateway process.
    pub fn process(&self) -> &Process {
        self.process.as_ref().expect("the gateway is not running")
    }

    pub fn pid(&self) -> u32 {
        self.process().pid()
    }

    /// The gateway's resident set size, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid()).expect("VmRSS in /proc/PID/status of the gateway")
    }

    /// An operator command on the gateway's data dir (`tether --data-dir DIR ARGS…`), run on the
    /// gateway's own machine (outside any namespace: it only touches files).
    pub fn operator(&self, args: &[&str]) -> String {
        operator_in(self.data_dir(), args)
    }

    /// [`Gateway::operator`] with `stdin` fed in (`--password-stdin`); panics unless it succeeds.
    pub fn operator_with_stdin(&self, args: &[&str], stdin: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(bin("tether"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running tether");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("writing stdin");
        let output = child.wait_with_output().expect("tether ran");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "tether {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    /// `tether token create NAME ARGS…` on the data dir; returns the token (its last line).
    pub fn create_token(&self, name: &str, args: &[&str]) -> String {
        let mut all = vec!["token", "create", name];
        all.extend_from_slice(args);
        let out = self.operator(&all);
        last_line(&out).unwrap_or_else(|| panic!("`tether token create {name}` printed no token:\n{out}")).to_string()
    }

    /// `tether device show UUID --json` (through the API), parsed; `None` when the command fails
    /// (e.g. the gateway has never seen the device) or prints no JSON.
    pub fn device_record(&self, uuid: Uuid) -> Option<serde_json::Value> {
        let mut command = self.cli_command(&["device", "show", &uuid.to_string(), "--json"]);
        scrub_env(&mut command);
        let output = command.stdin(Stdio::null()).output().ok()?;
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// A `tether` technician command against this gateway's API (`--api`, `--token`, `--ca`),
    /// as a remote technician runs it; inside the CLI namespace if one was set.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = match &self.cli_netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("tether"));
                c
            }
            None => Command::new(bin("tether")),
        };
        command.arg("--api").arg(self.api_url()).arg("--token").arg(&self.token).arg("--ca").arg(self.ca_path());
        command.args(args);
        command
    }

    /// Runs a technician command; panics unless it succeeds; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        run(&mut self.cli_command(args))
    }

    /// `tether devices --json`, parsed.
    pub fn devices_json(&self) -> serde_json::Value {
        let out = self.cli(&["devices", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("`devices --json` printed no JSON ({e}):\n{out}"))
    }

    /// The `devices --json` entry whose `uuid` is `uuid`.
    pub fn device(&self, uuid: Uuid) -> Option<serde_json::Value> {
        let uuid = uuid.to_string();
        self.devices_json().as_array()?.iter().find(|d| d["uuid"].as_str() == Some(uuid.as_str())).cloned()
    }

    /// Whether `devices --json` lists `uuid` with `connected: true`.
    pub fn is_connected(&self, uuid: Uuid) -> bool {
        self.device(uuid).is_some_and(|d| d["connected"] == true)
    }

    /// `GET /metrics` on the metrics listener (plain HTTP), the body. Made from the gateway's
    /// own namespace when it runs in one (its metrics address is only reachable there).
    pub fn metrics_text(&self) -> String {
        self.http_get(self.listen.metrics, "/metrics")
    }

    /// A plain HTTP `GET` that must answer 200, made from where the gateway runs (its
    /// namespace, if any); returns the body.
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> String {
        expect_200(addr, path, http_request_via(&self.prefix, addr, path))
    }

    /// Starts `tether forward UUID PORT --listen 127.0.0.1:0` (in the CLI namespace if set) and
    /// waits until it listens.
    pub fn forward(&self, uuid: Uuid, port: u16) -> Forward {
        self.forward_on(uuid, port, "127.0.0.1:0")
    }

    /// Starts `tether forward UUID PORT --listen LISTEN` and waits until it listens.
    pub fn forward_on(&self, uuid: Uuid, port: u16, listen: &str) -> Forward {
        let mut command = self.cli_command(&["forward", &uuid.to_string(), &port.to_string(), "--listen", listen]);
        let mut process = Process::spawn("tether forward", &mut command);
        // It prints `forwarding 127.0.0.1:PORT -> device UUID port N` once it listens.
        let line = process.wait_for_log("forwarding ", Duration::from_secs(30));
        let addr = line
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no address in tether forward's line {line:?}"));
        Forward { process, addr }
    }
}

/// What `wrap` puts in front of a command: wraps a marker program and keeps what precedes it.
fn command_prefix(wrap: &dyn Fn(Command) -> Command) -> Vec<OsString> {
    const MARKER: &str = "\u{1}tether-e2e-program";
    let wrapped = wrap(Command::new(MARKER));
    if wrapped.get_program() == MARKER {
        return Vec::new();
    }
    let mut prefix = vec![wrapped.get_program().to_owned()];
    prefix.extend(wrapped.get_args().take_while(|a| *a != MARKER).map(|a| a.to_owned()));
    prefix
}

/// A running `tether forward`.
#[derive(Debug)]
pub struct Forward {
    pub process: Process,
    addr: SocketAddr,
}

impl Forward {
    /// The local address it listens on.
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
    /// `amt-sim --gateway CIRA --ca CA --username U --password P` for `gateway`, to add
    /// arguments to or wrap (e.g. `topology.wrap(Host::Home, …)`) before [`Sim::from_command`].
    pub fn command(gateway: &Gateway, password: &str) -> Command {
        Self::command_as(gateway, &gateway.mps_user, password)
    }

    /// Like [`Sim::command`], with MPS username `user` (another MPS account, or a wrong one).
    pub fn command_as(gateway: &Gateway, user: &str, password: &str) -> Command {
        let mut command = Command::new(bin("amt-sim"));
        command
            .arg("--gateway")
            .arg(gateway.cira_addr().to_string())
            .arg("--ca")
            .arg(gateway.ca_path())
            .args(["--username", user, "--password", password])
            .env("RUST_LOG", "info");
        command
    }

    /// Starts amt-sim against `gateway` as MPS user `user` with `password`.
    pub fn start_as(gateway: &Gateway, user: &str, password: &str, args: &[&str]) -> Sim {
        Self::from_command(Self::command_as(gateway, user, password).args(args))
    }

    /// Starts amt-sim with the gateway's MPS credentials, its connections made from the loopback
    /// address `source` (`--source`, e.g. 127.0.0.2). Panics with a clear message when this
    /// amt-sim has no `--source` flag.
    pub fn start_from(gateway: &Gateway, source: &str, args: &[&str]) -> Sim {
        require_sim_flag("--source", "connecting from a chosen loopback address");
        let mut command = Self::command(gateway, &gateway.mps_password);
        command.args(["--source", source]).args(args);
        Self::from_command(&mut command)
    }

    /// Starts amt-sim against `gateway` with the gateway's MPS credentials.
    pub fn start(gateway: &Gateway, args: &[&str]) -> Sim {
        Self::start_with_password(gateway, &gateway.mps_password, args)
    }

    /// Starts amt-sim against `gateway` with its MPS username and `password`.
    pub fn start_with_password(gateway: &Gateway, password: &str, args: &[&str]) -> Sim {
        Self::from_command(Self::command(gateway, password).args(args))
    }

    /// Starts amt-sim from a command line built by the test.
    pub fn from_command(command: &mut Command) -> Sim {
        Sim { process: Process::spawn("amt-sim", command) }
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log_line_containing(&self, needle: &str) -> Option<String> {
        self.process.log_line_containing(needle)
    }

    /// Waits for a log line containing `needle` (panics after `timeout` or if amt-sim exits).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.process.wait_for_log(needle, timeout)
    }

    /// How many lines of its output contain `needle` (e.g. `"established: ports"`: tunnels it
    /// got established).
    pub fn count_log_lines(&self, needle: &str) -> usize {
        let (out, err) = (self.process.stdout(), self.process.stderr());
        out.lines().chain(err.lines()).filter(|l| l.contains(needle)).count()
    }

    /// Freezes it (SIGSTOP): its TCP connection stays open but it answers nothing, like a PC
    /// whose network went away. [`Sim::thaw`] resumes it; dropping it kills it either way.
    pub fn freeze(&mut self) {
        self.process.signal("STOP");
    }

    /// Resumes a frozen amt-sim (SIGCONT).
    pub fn thaw(&mut self) {
        self.process.signal("CONT");
    }

    /// Waits for amt-sim to exit by itself (e.g. `--exit-on-auth-failure`).
    pub fn wait(self, timeout: Duration) -> ExitStatus {
        self.process.wait(timeout)
    }

    pub fn tail(&self) -> String {
        self.process.tail()
    }
}

/// Whether this amt-sim binary knows the command-line flag `flag` (from its `--help`).
pub fn sim_has_flag(flag: &str) -> bool {
    static HELP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let help = HELP.get_or_init(|| {
        Command::new(bin("amt-sim"))
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    });
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '<').any(|word| word == flag)
}

/// Panics, naming `flag` and what it is needed for, when amt-sim lacks it.
pub fn require_sim_flag(flag: &str, needed_for: &str) {
    assert!(
        sim_has_flag(flag),
        "{} has no {flag} flag (needed for {needed_for}); rebuild amt-sim from a tree that has it",
        bin("amt-sim").display()
    );
}

/// A plain HTTP/1.0 `GET` (std only); returns the status code and the body.
pub fn http_request(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_http_response(&response)
}

/// The same `GET`, made from wherever `prefix` runs a program (e.g. `ip netns exec NS`), by the
/// `tether-netprobe http-get` helper; in this process if `prefix` is empty.
pub fn http_request_via(prefix: &[OsString], addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let Some((program, rest)) = prefix.split_first() else { return http_request(addr, path) };
    let output = Command::new(program)
        .args(rest)
        .arg(bin("tether-netprobe"))
        .args(["http-get", &addr.to_string(), path])
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    parse_http_response(&output.stdout)
}

fn parse_http_response(response: &[u8]) -> std::io::Result<(u16, String)> {
    let response = String::from_utf8_lossy(response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// A plain HTTP/1.0 `GET` that must answer 200; returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    expect_200(addr, path, http_request(addr, path))
}

fn expect_200(addr: SocketAddr, path: &str, response: std::io::Result<(u16, String)>) -> String {
    match response {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET http://{addr}{path}: status {status}\n{body}"),
        Err(e) => panic!("GET http://{addr}{path}: {e}"),
    }
}

/// Reads lines from a child's pipe until one contains `needle`. The timeout is checked between
/// lines only: give the pipe's writer a way to end (or use [`Process::wait_for_log`]).
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
