//! MeshCentral (npm `meshcentral`), run offline on loopback as a real MPS: it proves `amt-sim`'s
//! APF bytes against a server we did not write (protocols/apf.md §2).
//!
//! The package is installed by `scripts/install-test-deps.sh` into `TETHER_MESHCENTRAL_DIR`
//! (default `<workspace>/.test-cache/meshcentral`, gitignored). Each [`MeshCentral::start`] gets a
//! fresh data dir in a temp dir (`--datapath`/`--filespath`), so several can run at once.
//!
//! Configuration (apf.md §2.1), and why:
//! - `cert: "mps.test.local"`: the name must contain a dot, else MeshCentral forces LAN-only mode,
//!   which starts no MPS at all.
//! - `WANonly`, `amtScanner`/`meshScanner` off: no LAN scanning.
//! - loopback binds (`portBind`, `mpsPortBind`), `exactPorts`, `redirPort: 0` (no HTTP listener).
//! - `mpsPass`: the password every CIRA device must present (unset = any password accepted).
//! - `no2FactorAuth` (else it tries to `npm install otplib` at start), `selfUpdate: false`,
//!   `agentTimeStampServer: false` (else signing its bundled agents calls a time-stamp server),
//!   `autoBackup: false` (else it writes backups beside `node_modules`).
//! - domain `amtManager.adminAccounts`: its AMT manager then opens WS-MAN channels (to 16992)
//!   through the tunnel and speaks HTTP Digest, as it would to real firmware.
//! - `debug: "amt,mps,mpscmd"`: protocol traces on stdout. Never `mpsDebug: true`: with it,
//!   MeshCentral 1.1.55 silently drops every CHANNEL_DATA it sends (apf.md §2.2).
//!
//! Measured here (Debian 12, 2 cores, Node 20.20, MeshCentral 1.1.55):
//! - `--createaccount` and `--adminaccount` (server stopped): about 0.5 s each.
//! - first start in an empty data dir: about 7.6 s until the MPS listens; most of it is generating
//!   five RSA certificates and Authenticode-signing six bundled Windows agents (23 MB).
//! - so the first start leaves a template (the certificates and `signedagents/`) in
//!   `TETHER_MESHCENTRAL_DIR/tether-template-VERSION-CERTNAME/`, and later starts copy it into
//!   their fresh data dir: then about 2.4 s to listening.
//! - `meshctrl` commands: about 0.2 s each. RSS: launcher about 54 MB, server about 160 MB.
//! - it forks: `node meshcentral` launches `node … --launch PARENTPID`, which holds the ports.
//!   Both run in their own process group here, and the group is stopped on drop (SIGTERM ends
//!   both within a second).
//! - with no devices, `meshctrl ListDevices --json` prints `[]`; without `--json`, `None`.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use uuid::Uuid;

use crate::process::{bin, free_local_port, poll_until, run, Process};

/// The MeshCentral release `scripts/install-test-deps.sh` installs (the newest on npm when pinned).
pub const VERSION: &str = "1.1.55";
/// The `mpsPass` every CIRA device must present.
pub const MPS_PASSWORD: &str = "MpsTestPass1!";
/// The server's certificate name (with a dot: see the module docs). Its MPS certificate also
/// names `localhost` and 127.0.0.1.
pub const CERT_NAME: &str = "mps.test.local";
/// The MeshCentral web/meshctrl administrator.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "Admin-Pass1!";
/// The AMT admin password MeshCentral's AMT manager tries on devices (Digest, user `admin`).
pub const AMT_ADMIN_PASSWORD: &str = "AmtAdmin1!";

/// Where the npm package is installed: `TETHER_MESHCENTRAL_DIR`, else
/// `<workspace>/.test-cache/meshcentral`.
pub fn install_dir() -> PathBuf {
    std::env::var_os("TETHER_MESHCENTRAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.test-cache/meshcentral"))
}

fn package_dir() -> PathBuf {
    install_dir().join("node_modules/meshcentral")
}

/// The installed MeshCentral version, if any.
pub fn installed_version() -> Option<String> {
    let text = std::fs::read_to_string(package_dir().join("package.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["version"].as_str().map(str::to_string)
}

/// MeshCentral's node id for an agent-less AMT device: `node//` and base64 of the UUID's 16 bytes
/// in canonical (textual) order, three times, with `+` as `@` and `/` as `$` (apf.md §2.4).
pub fn node_id_for(uuid: Uuid) -> String {
    let bytes = uuid.as_bytes().repeat(3);
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes).replace('+', "@").replace('/', "$");
    format!("node//{b64}")
}

/// The CIRA username for a device group id `mesh//ABC…`: its first 16 characters after
/// `mesh//`, with `@` and `$` replaced by `X` (apf.md §2.4).
pub fn cira_username_for(group_id: &str) -> String {
    let id = group_id.strip_prefix("mesh//").unwrap_or(group_id);
    id.chars().take(16).map(|c| if c == '@' || c == '$' { 'X' } else { c }).collect()
}

/// A running MeshCentral with an agent-less (`--amtonly`) device group.
#[derive(Debug)]
pub struct MeshCentral {
    process: Option<Process>,
    web_port: u16,
    /// The MPS (CIRA) listener, on 127.0.0.1.
    pub mps_addr: SocketAddr,
    /// The device group's id, `mesh//…`.
    pub group_id: String,
    /// The CIRA username for the device group (apf.md §2.4); the password is [`MPS_PASSWORD`].
    pub cira_username: String,
    /// From spawning the server to both its MPS and HTTPS listeners being up.
    pub startup_time: Duration,
    // Last: deleted after the server is stopped.
    data: tempfile::TempDir,
}

impl MeshCentral {
    /// Starts MeshCentral in a fresh data dir on free loopback ports, creates the admin account
    /// and an agent-less device group. Panics (with its output) if anything fails.
    pub fn start() -> MeshCentral {
        let package = package_dir();
        assert!(
            package.join("package.json").exists(),
            "MeshCentral is not installed in {}: run scripts/install-test-deps.sh (or set TETHER_MESHCENTRAL_DIR)",
            install_dir().display()
        );
        let data = tempfile::Builder::new().prefix("tether-meshcentral-").tempdir().expect("a temp dir");
        let data_path = data.path().join("meshcentral-data");
        std::fs::create_dir_all(&data_path).expect("creating meshcentral-data");
        let template = template_dir();
        let from_template = copy_template(&template, &data_path);
        let (web_port, mps_port) = (free_local_port(), free_local_port());
        let config = serde_json::json!({
            "settings": {
                "cert": CERT_NAME,
                "WANonly": true,
                "port": web_port,
                "portBind": "127.0.0.1",
                "redirPort": 0,
                "mpsPort": mps_port,
                "mpsPortBind": "127.0.0.1",
                "mpsPass": MPS_PASSWORD,
                "exactPorts": true,
                "selfUpdate": false,
                "no2FactorAuth": true,
                "amtScanner": false,
                "meshScanner": false,
                "agentTimeStampServer": false,
                "autoBackup": false,
                "debug": "amt,mps,mpscmd"
            },
            "domains": {
                "": { "amtManager": { "adminAccounts": [ { "user": "admin", "pass": AMT_ADMIN_PASSWORD } ] } }
            }
        });
        std::fs::write(data_path.join("config.json"), serde_json::to_vec_pretty(&config).expect("JSON"))
            .expect("writing config.json");

        let node = |args: &[&str]| {
            let mut command = Command::new("node");
            command
                .current_dir(install_dir())
                .arg(&package)
                .arg("--datapath")
                .arg(&data_path)
                .arg("--filespath")
                .arg(data.path().join("meshcentral-files"))
                .args(args);
            command
        };
        // Accounts are made with the server stopped.
        run(&mut node(&["--createaccount", ADMIN_USER, "--pass", ADMIN_PASSWORD, "--email", "admin@test.local"]));
        run(&mut node(&["--adminaccount", ADMIN_USER]));

        // It forks the real server: both go in a new process group, stopped together on drop.
        let mut server = node(&[]);
        server.process_group(0);
        let started = Instant::now();
        let mut process = Process::spawn("meshcentral", &mut server);
        let mps_addr: SocketAddr = ([127, 0, 0, 1], mps_port).into();
        let web_addr: SocketAddr = ([127, 0, 0, 1], web_port).into();
        let timeout = Duration::from_secs(if from_template { 60 } else { 180 });
        // The log lines prove these are its listeners, not someone else's on a reused port.
        process.wait_for_log(&format!("Intel(R) AMT server running on {CERT_NAME}:{mps_port}"), timeout);
        process.wait_for_log(&format!("HTTPS server running on {CERT_NAME}:{web_port}"), timeout);
        let up = poll_until(Duration::from_secs(10), || {
            [mps_addr, web_addr].iter().all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok())
        });
        assert!(
            up,
            "MeshCentral logged its listeners but {mps_addr} or {web_addr} does not accept\n{}",
            process.tail()
        );
        let startup_time = started.elapsed();
        if !from_template {
            save_template(&data_path, &template);
        }

        let mut mesh = MeshCentral {
            process: Some(process),
            web_port,
            mps_addr,
            group_id: String::new(),
            cira_username: String::new(),
            startup_time,
            data,
        };
        let out = mesh.meshctrl(&["AddDeviceGroup", "--name", "CIRA test", "--amtonly"]);
        let group = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("ok "))
            .filter(|id| id.starts_with("mesh//"))
            .unwrap_or_else(|| panic!("AddDeviceGroup printed no group id:\n{out}"));
        mesh.group_id = group.to_string();
        mesh.cira_username = cira_username_for(group);
        mesh
    }

    /// `wss://127.0.0.1:PORT`, MeshCentral's web/meshctrl endpoint.
    pub fn web_url(&self) -> String {
        format!("wss://127.0.0.1:{}", self.web_port)
    }

    /// Its `meshcentral-data` directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join("meshcentral-data")
    }

    /// Its root CA (`root-cert-public.crt`): the MPS certificate chains to it and names
    /// [`CERT_NAME`], `localhost` and 127.0.0.1.
    pub fn root_cert_path(&self) -> PathBuf {
        self.data_dir().join("root-cert-public.crt")
    }

    /// The server process (its stdout carries the child server's log and debug traces).
    pub fn process(&mut self) -> &mut Process {
        self.process.as_mut().expect("MeshCentral was stopped")
    }

    /// Runs `meshctrl` logged in as the admin; panics unless it exits 0; returns stdout.
    /// (meshctrl exits 0 on many errors and prints them: check the output.)
    pub fn meshctrl(&self, args: &[&str]) -> String {
        let url = self.web_url();
        let mut command = Command::new("node");
        command.current_dir(install_dir()).arg(package_dir().join("meshctrl.js")).args(args).args([
            "--url",
            &url,
            "--loginuser",
            ADMIN_USER,
            "--loginpass",
            ADMIN_PASSWORD,
        ]);
        run(&mut command)
    }

    /// The devices MeshCentral knows (`meshctrl ListDevices --json`). Each has `_id` (see
    /// [`node_id_for`]), `conn` (a bit set: 2 = CIRA), `pwr` (7 = present), `intelamt`, ….
    pub fn list_devices(&self) -> Vec<serde_json::Value> {
        let out = self.meshctrl(&["ListDevices", "--json"]);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("ListDevices --json printed no JSON array ({e}):\n{out}"))
    }

    /// The device with `uuid`, if MeshCentral knows it.
    pub fn device(&self, uuid: Uuid) -> Option<serde_json::Value> {
        let id = node_id_for(uuid);
        self.list_devices().into_iter().find(|d| d["_id"] == id.as_str())
    }

    /// Whether MeshCentral lists `uuid` as CIRA-connected (`conn & 2`).
    pub fn is_cira_connected(&self, uuid: Uuid) -> bool {
        self.device(uuid).and_then(|d| d["conn"].as_u64()).is_some_and(|conn| conn & 2 != 0)
    }

    /// `amt-sim` pointed at this MPS as device `uuid`: verifying the server against MeshCentral's
    /// root CA with the name [`CERT_NAME`], the group's CIRA username and [`MPS_PASSWORD`]. Add
    /// arguments, then start it with `Sim::from_command`.
    pub fn sim_command(&self, uuid: Uuid) -> Command {
        let mut command = Command::new(bin("amt-sim"));
        command
            .arg("--gateway")
            .arg(self.mps_addr.to_string())
            .arg("--ca")
            .arg(self.root_cert_path())
            .args(["--server-name", CERT_NAME])
            .args(["--username", &self.cira_username, "--password", MPS_PASSWORD])
            .args(["--uuid", &uuid.to_string()])
            .env("RUST_LOG", "info");
        command
    }

    /// Stops the server and its forked child (SIGTERM to the group, SIGKILL after 10 s).
    pub fn stop(&mut self) {
        let Some(process) = self.process.take() else { return };
        let pgid = process.pid();
        let signal = |sig: &str| {
            let _ = Command::new("sh").args(["-c", &format!("kill -{sig} -{pgid}")]).stderr(Stdio::null()).status();
        };
        signal("TERM");
        let ports = [self.mps_addr, ([127, 0, 0, 1], self.web_port).into()];
        let gone = || {
            live_group_members(pgid).is_empty()
                && ports.iter().all(|a| TcpStream::connect_timeout(a, Duration::from_millis(100)).is_err())
        };
        if !poll_until(Duration::from_secs(10), gone) {
            signal("KILL");
            poll_until(Duration::from_secs(5), gone);
        }
        drop(process);
    }
}

impl Drop for MeshCentral {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The processes in process group `pgid` that still have a live thread, from /proc. (A dying
/// multi-threaded process shows its leader as a zombie while its other threads still hold its
/// sockets: look at every thread.)
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_fields(&format!("/proc/{pid}/stat")).is_some_and(|f| f[2].parse() == Ok(pgid)))
        .filter(|pid| {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
            tasks.filter_map(|t| t.ok()).any(|t| {
                stat_fields(&t.path().join("stat").to_string_lossy()).is_some_and(|f| f[0] != "Z" && f[0] != "X")
            })
        })
        .collect()
}

/// The fields after `PID (COMM)` of a /proc stat file: state, ppid, pgrp, ….
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    // COMM may contain spaces and parentheses: split after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
    (fields.len() > 2).then_some(fields)
}

/// Where the certificates and signed agents of a first start are kept for later starts.
fn template_dir() -> PathBuf {
    install_dir().join(format!("tether-template-{}-{CERT_NAME}", installed_version().unwrap_or_default()))
}

/// The files a fresh start generates and a later start can reuse.
const TEMPLATE_FILES: [&str; 10] = [
    "root-cert-private.key",
    "root-cert-public.crt",
    "webserver-cert-private.key",
    "webserver-cert-public.crt",
    "mpsserver-cert-private.key",
    "mpsserver-cert-public.crt",
    "agentserver-cert-private.key",
    "agentserver-cert-public.crt",
    "codesign-cert-private.key",
    "codesign-cert-public.crt",
];

/// Copies a complete template into `data`; false (copying nothing) if there is none.
fn copy_template(template: &Path, data: &Path) -> bool {
    if !TEMPLATE_FILES.iter().all(|f| template.join(f).is_file()) {
        return false;
    }
    let copied = (|| -> std::io::Result<()> {
        for file in TEMPLATE_FILES {
            std::fs::copy(template.join(file), data.join(file))?;
        }
        let agents = template.join("signedagents");
        if agents.is_dir() {
            std::fs::create_dir_all(data.join("signedagents"))?;
            for entry in std::fs::read_dir(&agents)? {
                let entry = entry?;
                std::fs::copy(entry.path(), data.join("signedagents").join(entry.file_name()))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = copied {
        eprintln!("MeshCentral template {} unusable ({e}); generating certificates", template.display());
        for file in TEMPLATE_FILES {
            let _ = std::fs::remove_file(data.join(file));
        }
        let _ = std::fs::remove_dir_all(data.join("signedagents"));
        return false;
    }
    true
}

/// Saves a started server's certificates and signed agents as the template (atomically: built
/// beside it, then renamed; a concurrent test that got there first wins).
fn save_template(data: &Path, template: &Path) {
    let Some(parent) = template.parent() else { return };
    let Ok(staging) = tempfile::Builder::new().prefix(".tether-template-staging-").tempdir_in(parent) else { return };
    let saved = (|| -> std::io::Result<()> {
        for file in TEMPLATE_FILES {
            std::fs::copy(data.join(file), staging.path().join(file))?;
        }
        let agents = data.join("signedagents");
        if agents.is_dir() {
            std::fs::create_dir(staging.path().join("signedagents"))?;
            for entry in std::fs::read_dir(&agents)? {
                let entry = entry?;
                std::fs::copy(entry.path(), staging.path().join("signedagents").join(entry.file_name()))?;
            }
        }
        Ok(())
    })();
    if saved.is_ok() {
        let staged = staging.keep();
        if std::fs::rename(&staged, template).is_err() {
            let _ = std::fs::remove_dir_all(&staged);
        }
    }
}
