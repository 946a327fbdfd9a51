//! Debian's Prometheus (`/usr/bin/prometheus`, package `prometheus`) as the SRE runs it: scraping
//! gateways' `/metrics` on loopback every second, evaluating alert rules every second, and
//! answering PromQL through its HTTP API ([`Prometheus::query`], [`Prometheus::rules`],
//! [`Prometheus::alerts`]).
//!
//! What it does not do: Alertmanager (the alerts are read from Prometheus itself), or remote
//! storage; its TSDB is a temp dir deleted on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::process::{free_local_port, http_request, wait_for, Process};

/// Where Debian's package puts the server.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A running Prometheus on a loopback port.
#[derive(Debug)]
pub struct Prometheus {
    process: Process,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A file of the repository (e.g. `deploy/prometheus/tether-alerts.yml`).
pub fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` as job `tether` (1 s scrape and evaluation), with
    /// the rule file `rules` loaded (its text as given: a test may shorten its `for:`).
    pub fn start(targets: &[SocketAddr], rules: &str) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: install Debian's prometheus package (scripts/install-test-deps.sh does)"
        );
        let dir = tempfile::Builder::new().prefix("tether-prometheus-").tempdir().expect("a temp dir");
        let rules_path = dir.path().join("rules.yml");
        std::fs::write(&rules_path, rules).expect("writing the rules");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tether\n    static_configs:\n      - targets: [{}]\n",
            rules_path.display(),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let addr: SocketAddr = ([127, 0, 0, 1], free_local_port()).into();
        let mut command = Command::new(PROMETHEUS);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let mut process = Process::spawn("prometheus", &mut command);
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            assert!(process.is_running(), "prometheus exited:\n{}", process.tail());
            matches!(http_request(addr, "/-/ready"), Ok((200, _)))
        });
        Prometheus { process, addr, _dir: dir }
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = http_request(self.addr, path)
            .unwrap_or_else(|e| panic!("GET {path} from Prometheus: {e}\n{}", self.process.tail()));
        let value: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
        assert!(status == 200 && value["status"] == "success", "GET {path}: status {status}: {body}");
        value["data"].clone()
    }

    /// An instant query: its `result` (a list of series, each with `metric` and `value`).
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.get(&format!("/api/v1/query?query={}", url_encode(promql)));
        match &data["result"] {
            Value::Array(series) => series.clone(),
            // A scalar answers one value.
            other if data["resultType"] == "scalar" => vec![other.clone()],
            other => panic!("{promql}: unexpected result {other}"),
        }
    }

    /// Every rule loaded, as `/api/v1/rules` lists them (name, query, health, lastError, state).
    pub fn rules(&self) -> Vec<Value> {
        let data = self.get("/api/v1/rules");
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect()
    }

    /// The alerts pending or firing now (`/api/v1/alerts`).
    pub fn alerts(&self) -> Vec<Value> {
        self.get("/api/v1/alerts")["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// The names of the alerts firing now.
    pub fn firing(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .alerts()
            .iter()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The health of each scrape target: (`instance`, `up`).
    pub fn targets(&self) -> Vec<(String, String)> {
        let data = self.get("/api/v1/targets");
        let active = data["activeTargets"].as_array().cloned().unwrap_or_default();
        active
            .iter()
            .map(|t| {
                let instance = t["labels"]["instance"].as_str().unwrap_or_default().to_string();
                (instance, t["health"].as_str().unwrap_or_default().to_string())
            })
            .collect()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a query string value).
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
