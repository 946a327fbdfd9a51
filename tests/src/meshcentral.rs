//! MeshCentral (npm `meshcentral`) run on loopback as a real MPS, to prove the simulator's APF
//! bytes against a server we did not write.
//!
//! The package is installed by `scripts/install-test-deps.sh` into `TETHER_MESHCENTRAL_DIR`
//! (default `<workspace>/.test-cache/meshcentral`). MeshCentral keeps its data in
//! `meshcentral-data` beside its `node_modules`; a test wipes and rewrites it, so only one
//! MeshCentral runs at a time. Configuration follows apf.md §2.1: a certificate name with a dot
//! (else LAN-only mode, which starts no MPS), WAN-only, loopback binds, no scanners, no
//! self-update, no 2FA (else it tries to npm-install a module), no time-stamp server, and an AMT
//! admin account so that its AMT manager opens WS-MAN channels. Measured here: the MPS port
//! listens about 6 s after start.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use uuid::Uuid;

use crate::process::{run, wait_for, Process};

pub const MPS_PASSWORD: &str = "MpsTestPass1!";
pub const CERT_NAME: &str = "mps.test.local";
const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "Admin-Pass1!";

/// Where the npm package is installed.
pub fn install_dir() -> PathBuf {
    std::env::var_os("TETHER_MESHCENTRAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.test-cache/meshcentral"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running MeshCentral.
#[derive(Debug)]
pub struct MeshCentral {
    dir: PathBuf,
    process: Process,
    web_port: u16,
    pub mps_addr: SocketAddr,
    /// The CIRA username for the agent-less device group (apf.md §2.4).
    pub cira_username: String,
}

impl MeshCentral {
    pub fn start() -> MeshCentral {
        let dir = install_dir();
        let package = dir.join("node_modules/meshcentral");
        assert!(
            package.exists(),
            "MeshCentral is not installed in {}: run scripts/install-test-deps.sh (or set TETHER_MESHCENTRAL_DIR)",
            dir.display()
        );
        let data = dir.join("meshcentral-data");
        let _ = std::fs::remove_dir_all(&data);
        let _ = std::fs::remove_dir_all(dir.join("meshcentral-files"));
        std::fs::create_dir_all(&data).unwrap();
        let (web_port, mps_port) = (free_port(), free_port());
        let config = serde_json::json!({
            "settings": {
                "cert": CERT_NAME, "WANonly": true, "port": web_port, "portBind": "127.0.0.1", "redirPort": 0,
                "mpsPort": mps_port, "mpsPortBind": "127.0.0.1", "mpsPass": MPS_PASSWORD, "exactPorts": true,
                "selfUpdate": false, "no2FactorAuth": true, "amtScanner": false, "meshScanner": false,
                "agentTimeStampServer": false, "debug": "amt,mps,mpscmd"
            },
            "domains": { "": { "amtManager": { "adminAccounts": [ { "user": "admin", "pass": "AmtAdmin1!" } ] } } }
        });
        std::fs::write(data.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let node = |args: &[&str]| {
            let mut command = Command::new("node");
            command.current_dir(&dir).arg("node_modules/meshcentral").args(args);
            command
        };
        run(&mut node(&["--createaccount", ADMIN, "--pass", ADMIN_PASSWORD, "--email", "admin@test.local"]));
        run(&mut node(&["--adminaccount", ADMIN]));
        // MeshCentral forks a child server: run it in its own process group and stop the group.
        let mut server = node(&[]);
        server.process_group(0);
        let process = Process::spawn("meshcentral", &mut server);
        let mps_addr: SocketAddr = ([127, 0, 0, 1], mps_port).into();
        wait_for("MeshCentral's MPS to listen", Duration::from_secs(120), || {
            TcpStream::connect_timeout(&mps_addr, Duration::from_millis(200)).is_ok()
        });
        let mut mesh = MeshCentral { dir, process, web_port, mps_addr, cira_username: String::new() };
        let out = mesh.meshctrl(&["AddDeviceGroup", "--name", "CIRA test", "--amtonly"]);
        let group =
            out.lines().find_map(|l| l.strip_prefix("ok mesh//")).expect("a device group id").trim().to_string();
        mesh.cira_username = group.chars().take(16).map(|c| if c == '@' || c == '$' { 'X' } else { c }).collect();
        mesh
    }

    /// Runs `meshctrl` logged in as the admin; returns stdout.
    pub fn meshctrl(&self, args: &[&str]) -> String {
        let url = format!("wss://127.0.0.1:{}", self.web_port);
        let mut command = Command::new("node");
        command.current_dir(&self.dir).arg("node_modules/meshcentral/meshctrl.js").args(args).args([
            "--url",
            &url,
            "--loginuser",
            ADMIN,
            "--loginpass",
            ADMIN_PASSWORD,
        ]);
        run(&mut command)
    }

    /// The devices MeshCentral knows (`meshctrl ListDevices --json`).
    pub fn list_devices(&self) -> Vec<serde_json::Value> {
        let out = self.meshctrl(&["ListDevices", "--json"]);
        serde_json::from_str(&out).unwrap_or_default()
    }
}

impl Drop for MeshCentral {
    fn drop(&mut self) {
        let group = format!("-{}", self.process.pid());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    }
}

/// MeshCentral's node id for an agent-less AMT device: `node//` and base64 of the UUID's bytes
/// (canonical order) three times, with `+` as `@` and `/` as `$`.
pub fn node_id_for(uuid: Uuid) -> String {
    let bytes = uuid.as_bytes().repeat(3);
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes).replace('+', "@").replace('/', "$");
    format!("node//{b64}")
}
