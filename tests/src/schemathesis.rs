//! Schemathesis (PyPI), the real CLI, against a live gateway's `/api/openapi.json`: requests
//! generated from the document with one token, every answer checked against it.
//!
//! - [`require`]: the `schemathesis` command of the pinned version ([`PIN`]), or a panic with the
//!   command that installs it (nothing is skipped silently).
//! - [`Run`]: one run (the document's URL, a token, the gateway's CA, bounds on examples and
//!   time, the checks, ids of things that exist for path parameters), with Tether's own check
//!   added through a hooks module ([`ERROR_BODY_CHECK`]): every 4xx and 5xx answer is JSON with a
//!   non-empty `code`.
//! - [`Outcome`]: what the run printed, for the test's message.
//!
//! What it does not do: start the gateway or make its tokens (the test does), or decide which
//! checks a run may skip (the test says, with its reasons).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The schemathesis release the tests are written for (`python3 -m pip install
/// schemathesis==PIN`; `scripts/install-test-deps.sh` does).
pub const PIN: &str = "4.32.5";

/// What installs it.
pub fn install_command() -> String {
    format!("python3 -m pip install schemathesis=={PIN}")
}

/// The `schemathesis` command (`$SCHEMATHESIS` if set, else the one on `PATH`), checked to be
/// [`PIN`]. Panics with the install command when it is missing or another version.
pub fn require() -> PathBuf {
    let program = std::env::var_os("SCHEMATHESIS").map(PathBuf::from).unwrap_or_else(|| "schemathesis".into());
    let output = Command::new(&program).arg("--version").stdin(Stdio::null()).output();
    let version = match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => panic!(
            "`{} --version` failed ({}): {}\nInstall schemathesis {PIN}: {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            install_command()
        ),
        Err(err) => panic!(
            "schemathesis is not installed ({}: {err}); the OpenAPI test runs the real CLI. Install it: {} \
             (or set SCHEMATHESIS to its path)",
            program.display(),
            install_command()
        ),
    };
    // `schemathesis, version 4.32.5`
    assert!(
        version.ends_with(&format!("version {PIN}")),
        "{} is {version:?}, the test is written for schemathesis {PIN}: {}",
        program.display(),
        install_command()
    );
    program
}

/// The name of Tether's own check, as schemathesis lists it.
pub const ERROR_BODY_CHECK: &str = "error_bodies_carry_a_code";

/// The hooks module that registers [`ERROR_BODY_CHECK`] (loaded with `SCHEMATHESIS_HOOKS`).
const HOOKS: &str = r#"# Tether's own schemathesis check: every error answer carries its stable code.
import json

import schemathesis


@schemathesis.check
def error_bodies_carry_a_code(ctx, response, case):
    """Every 4xx and 5xx answer is JSON {"error": MESSAGE, "code": CODE}, CODE a non-empty string."""
    if response.status_code < 400:
        return None
    text = response.content[:300].decode("utf-8", "replace")
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"HTTP {response.status_code} with a body that is not JSON: {text!r}")
    if not isinstance(body, dict):
        raise AssertionError(f"HTTP {response.status_code} with a body that is not a JSON object: {text!r}")
    code = body.get("code")
    if not isinstance(code, str) or not code:
        raise AssertionError(f"HTTP {response.status_code} without a stable `code`: {text!r}")
    error = body.get("error")
    if not isinstance(error, str) or not error:
        raise AssertionError(f"HTTP {response.status_code} without an `error` message: {text!r}")
    return None
"#;

/// One schemathesis run against a live API.
#[derive(Debug, Clone)]
pub struct Run {
    /// `https://IP:PORT/api/openapi.json`.
    pub schema_url: String,
    /// The CA the API's certificate is checked against (`DATA_DIR/tls/ca.pem`).
    pub ca: PathBuf,
    /// The bearer token every request carries.
    pub token: String,
    /// Test cases per operation and phase (`--max-examples`).
    pub max_examples: u32,
    /// `--phases`.
    pub phases: Vec<&'static str>,
    /// `--checks all` but these (`--exclude-checks`).
    pub exclude_checks: Vec<&'static str>,
    /// Operations left out (`--exclude-path`).
    pub exclude_paths: Vec<&'static str>,
    /// `--request-timeout`, seconds.
    pub request_timeout: u32,
    /// The run is killed (and reported as such) when it takes longer. Not `--max-time`, which
    /// is a budget schemathesis spends in full (its fuzzing repeats until it is over).
    pub deadline: Duration,
    /// `--generation-codec`.
    pub codec: &'static str,
    /// Values that name things which exist, drawn for path parameters half of the time
    /// (`"path.uuid"` → UUIDs): a dictionary in the run's `schemathesis.toml`.
    pub known: Vec<(&'static str, Vec<serde_json::Value>)>,
}

/// What a run printed.
#[derive(Debug)]
pub struct Outcome {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// The end of what it printed: its summary and the failures it found.
    pub fn tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.stdout.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!("{}\n{}", all[from..].join("\n"), self.stderr.trim())
    }

    /// Its count of test cases (`2281 generated, 2281 passed, 12 skipped`), as it printed it.
    pub fn cases(&self) -> &str {
        self.stdout.lines().map(str::trim).find(|l| l.contains(" generated")).unwrap_or("no test cases counted")
    }
}

impl Run {
    /// The command line, with its hooks module and report in `dir`.
    pub fn command(&self, program: &Path, dir: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .arg("--config-file")
            .arg(dir.join("schemathesis.toml"))
            .arg("run")
            .arg(&self.schema_url)
            .arg("--header")
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg("--tls-verify")
            .arg(&self.ca)
            .arg("--checks")
            .arg("all")
            .arg("--max-examples")
            .arg(self.max_examples.to_string())
            .arg("--phases")
            .arg(self.phases.join(","))
            .arg("--request-timeout")
            .arg(self.request_timeout.to_string())
            .arg("--generation-database")
            .arg("none")
            .arg("--generation-codec")
            .arg(self.codec)
            .arg("--workers")
            .arg("1")
            .arg("--no-color");
        if !self.exclude_checks.is_empty() {
            command.arg("--exclude-checks").arg(self.exclude_checks.join(","));
        }
        for path in &self.exclude_paths {
            command.arg("--exclude-path").arg(path);
        }
        // The hooks module first on the path; run in `dir`, so that no `schemathesis.toml` of the
        // developer's changes the run.
        let mut python_path = std::ffi::OsString::from(dir);
        if let Some(existing) = std::env::var_os("PYTHONPATH") {
            python_path.push(":");
            python_path.push(existing);
        }
        command
            .env("SCHEMATHESIS_HOOKS", "tether_schemathesis_checks")
            .env("PYTHONPATH", python_path)
            .env_remove("SCHEMATHESIS_CONFIG")
            .current_dir(dir);
        command
    }

    /// The `schemathesis.toml`: a dictionary per parameter in [`Run::known`].
    pub fn config(&self) -> String {
        let mut dictionaries = String::new();
        let mut parameters = String::from("[parameters]\n");
        for (index, (parameter, values)) in self.known.iter().enumerate() {
            let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            dictionaries.push_str(&format!("[dictionaries.known{index}]\nvalues = [{}]\n\n", values.join(", ")));
            parameters.push_str(&format!("{parameter:?} = {{ dictionary = \"known{index}\", probability = 0.5 }}\n"));
        }
        format!("{dictionaries}{parameters}")
    }

    /// Runs it in a fresh temp dir, to its end or to [`Run::deadline`].
    pub fn run(&self, program: &Path) -> Outcome {
        let dir = tempfile::Builder::new().prefix("tether-schemathesis-").tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("tether_schemathesis_checks.py"), HOOKS).expect("writing the hooks module");
        std::fs::write(dir.path().join("schemathesis.toml"), self.config()).expect("writing schemathesis.toml");
        let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let started = Instant::now();
        let mut child = self
            .command(program, dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("creating the stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("creating the stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
        let mut status = None;
        crate::process::poll_until(self.deadline, || {
            status = child.try_wait().expect("waiting for schemathesis");
            status.is_some()
        });
        let mut stderr = std::fs::read_to_string(&stderr).unwrap_or_default();
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            stderr.push_str(&format!("\nkilled: still running after {:?}", self.deadline));
        }
        Outcome {
            success: status.is_some_and(|s| s.success()),
            stdout: std::fs::read_to_string(&stdout).unwrap_or_default(),
            stderr,
            elapsed: started.elapsed(),
        }
    }
}
