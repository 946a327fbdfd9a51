//! The portal in a real browser: headless Debian Chromium driven by npm `playwright-core`
//! (scripts/install-test-deps.sh installs both), through the scripts in `tests/browser/` (their
//! common part is `tests/browser/browser.mjs`). Each call runs one step of a script as its own
//! `node` process, which prints a line `ok: …` for each thing done, or `FAILED: …` and exits 1.
//! Screenshots go to `target/portal-screens/` (not committed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Where `playwright-core` is installed: `TETHER_PLAYWRIGHT_DIR`, else
/// `<workspace>/.test-cache/playwright` (as scripts/install-test-deps.sh does).
fn playwright_dir() -> PathBuf {
    std::env::var_os("TETHER_PLAYWRIGHT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.test-cache/playwright"))
}

/// `target/portal-screens` of the target dir the tests were built in.
pub fn screens_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("portal-screens")
}

/// Runs one step of `tests/browser/<script>`; its stdout. Panics with the script's own message
/// (`FAILED: …`) unless it exits 0.
pub fn browser_step(script: &str, step: serde_json::Value) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser").join(script);
    let dir = playwright_dir();
    assert!(
        dir.join("node_modules/playwright-core/package.json").is_file(),
        "playwright-core is not in {}: run scripts/install-test-deps.sh",
        dir.display()
    );
    let started = Instant::now();
    let output = Command::new("node")
        .arg(&script)
        .arg(step.to_string())
        .env("TETHER_PLAYWRIGHT_DIR", &dir)
        .output()
        .expect("node (run scripts/install-test-deps.sh)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser step {} of {} failed ({:?}, after {:?}):\n{stdout}\n{stderr}",
        step["step"],
        script.display(),
        output.status,
        started.elapsed()
    );
    stdout
}
