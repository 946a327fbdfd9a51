//! Collectors of support parameters. Each gives a value or "unknown: reason", never a guess.
//!
//! [`Collectors::collect`] reads every parameter of a [`Report`] at once (concurrently, each tool
//! under a time limit and an output bound) from the sources a [`CollectorConfig`] names:
//!
//! | Parameter        | Linux source                                         | Unknown when                          |
//! |------------------|------------------------------------------------------|---------------------------------------|
//! | `firewall`       | `nft -j list ruleset`, else `iptables-save`          | neither runs (missing, not root, …)   |
//! | `antivirus`      | ClamAV binaries, `/proc/*/comm`, `daily.cld` header   | ClamAV not installed, `/proc` unread  |
//! | `last_full_scan` | the last summary in clamscan's log                   | no log, no complete summary           |
//! | `updates`        | `apt-get -s upgrade`, a state file, apt's history    | apt-get missing or failing            |
//! | `backup`         | a configured command or marker file                  | nothing configured, source fails      |
//! | `os_version`     | `PRETTY_NAME` in `/etc/os-release`                   | no file, no `PRETTY_NAME`             |
//! | `boot_time`      | `btime` in `/proc/stat`                              | no file, no line                      |
//! | `disk`           | `statvfs("/")`                                       | the call fails                        |
//!
//! Each module's doc says what exactly is read. An unknown's text says why, naming the file or the
//! tool ("/var/log/clamav/clamscan.log: no such file", "apt-get is not installed"). A source that
//! answers with "nothing" is a value, not an unknown: an empty ruleset is an inactive firewall.
//!
//! On Windows the same report is read through PowerShell's CIM cmdlets (Security Center,
//! Defender, the firewall profiles); the decoding lives in [`windows`], plain code tested on
//! every platform.
//!
//! What this module does not do: schedule collection, encode or upload reports, or rate them.
//! A load generator plugs synthetic reports in through the [`Collect`] trait.

#[cfg_attr(windows, allow(dead_code))]
mod apt;
mod backup;
#[cfg_attr(windows, allow(dead_code))]
mod clamav;
mod files;
#[cfg_attr(windows, allow(dead_code))]
mod firewall;
mod run;
#[cfg_attr(windows, allow(dead_code))]
mod system;
pub mod windows;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use protocols::telemetry::{Reading, Report, UnixTime};
use serde::Deserialize;

use files::unknown;
use run::Limits;

/// Where the collectors look. Every field has a default (the Debian locations), so an empty
/// `[collect]` table is a working configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// Prefix for every file read (not for commands, nor for `state_dir`): `/`, or a test's
    /// directory standing in for it.
    pub root: PathBuf,
    /// The agent's own state (pending security updates first seen): `/var/lib/tether-agent`.
    pub state_dir: PathBuf,
    /// Time limit for each external command, in seconds (at least 1): 5.
    pub command_timeout_secs: u64,
    /// Most bytes a command may print before its output is refused: 16 MiB.
    pub max_command_output: usize,
    /// Commands are argument vectors, the program first, so that a wrapper fits
    /// (`["ip", "netns", "exec", "lab", "nft"]`): `["nft"]`.
    pub nft: Vec<String>,
    /// `["iptables-save"]`.
    pub iptables_save: Vec<String>,
    /// `/usr/sbin/clamd`: its existence says ClamAV's engine is installed.
    pub clamd: PathBuf,
    /// `/usr/bin/freshclam`.
    pub freshclam: PathBuf,
    /// `/proc`: processes (`PID/comm`) and `stat`.
    pub proc_dir: PathBuf,
    /// `/var/lib/clamav`: `daily.cld` / `daily.cvd`.
    pub clamav_database_dir: PathBuf,
    /// `/var/log/clamav/clamscan.log`: the log the full-scan job writes (`clamscan --log`).
    pub clamscan_log: PathBuf,
    /// `["apt-get"]`; run as `apt-get -s -o Debug::NoLocking=1 upgrade`.
    pub apt_get: Vec<String>,
    /// `/var/log/apt/history.log`.
    pub apt_history_log: PathBuf,
    /// A file the backup job touches after each snapshot: none.
    pub backup_marker: Option<PathBuf>,
    /// A command printing the last snapshot's time (RFC 3339 or Unix seconds): none. Wins over
    /// `backup_marker`.
    pub backup_command: Option<Vec<String>>,
    /// `/etc/os-release`.
    pub os_release: PathBuf,
    /// The volume whose free space is reported: `/`.
    pub disk_path: PathBuf,
    /// Windows only: how PowerShell is started, the script appended:
    /// `["powershell", "-NoProfile", "-NonInteractive", "-Command"]`.
    pub powershell: Vec<String>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        let words = |words: &[&str]| words.iter().map(|w| w.to_string()).collect();
        CollectorConfig {
            root: PathBuf::from("/"),
            state_dir: PathBuf::from("/var/lib/tether-agent"),
            command_timeout_secs: 5,
            max_command_output: 16 << 20,
            nft: words(&["nft"]),
            iptables_save: words(&["iptables-save"]),
            clamd: PathBuf::from("/usr/sbin/clamd"),
            freshclam: PathBuf::from("/usr/bin/freshclam"),
            proc_dir: PathBuf::from("/proc"),
            clamav_database_dir: PathBuf::from("/var/lib/clamav"),
            clamscan_log: PathBuf::from("/var/log/clamav/clamscan.log"),
            apt_get: words(&["apt-get"]),
            apt_history_log: PathBuf::from("/var/log/apt/history.log"),
            backup_marker: None,
            backup_command: None,
            os_release: PathBuf::from("/etc/os-release"),
            disk_path: PathBuf::from("/"),
            powershell: words(&["powershell", "-NoProfile", "-NonInteractive", "-Command"]),
        }
    }
}

impl CollectorConfig {
    fn limits(&self) -> Limits {
        Limits { timeout: Duration::from_secs(self.command_timeout_secs.max(1)), max_stdout: self.max_command_output }
    }

    /// The file remembering when pending security updates were first seen.
    pub fn security_state_file(&self) -> PathBuf {
        self.state_dir.join("security-pending.json")
    }
}

/// Something that produces reports: the real [`Collectors`], or a load generator's synthetic
/// ones (any `Fn() -> Report` is one).
pub trait Collect: Send + Sync {
    fn collect(&self) -> Pin<Box<dyn Future<Output = Report> + Send + '_>>;
}

impl<F> Collect for F
where
    F: Fn() -> Report + Send + Sync,
{
    fn collect(&self) -> Pin<Box<dyn Future<Output = Report> + Send + '_>> {
        let report = self();
        Box::pin(async move { report })
    }
}

/// The real collectors, reading this machine as configured.
#[derive(Debug, Clone)]
pub struct Collectors {
    config: Arc<CollectorConfig>,
}

impl Collectors {
    pub fn new(config: CollectorConfig) -> Self {
        Collectors { config: Arc::new(config) }
    }

    pub fn config(&self) -> &CollectorConfig {
        &self.config
    }

    /// Reads every parameter. Never fails: what cannot be read is unknown, with the reason.
    pub async fn collect(&self) -> Report {
        self.collect_at(now()).await
    }

    #[cfg(not(windows))]
    async fn collect_at(&self, now: UnixTime) -> Report {
        let config = &self.config;
        let limits = config.limits();
        let root = config.root.as_path();
        let state_file = config.security_state_file();
        let apt_sources = apt::AptSources {
            root,
            apt_get: &config.apt_get,
            history_log: &config.apt_history_log,
            state_file: &state_file,
        };
        let (firewall, antivirus, last_full_scan, updates, backup, os_version, boot_time, disk) = tokio::join!(
            firewall::collect(&config.nft, &config.iptables_save, limits),
            self.blocking(|c| {
                clamav::antivirus(&clamav::ClamavPaths {
                    root: &c.root,
                    clamd: &c.clamd,
                    freshclam: &c.freshclam,
                    proc_dir: &c.proc_dir,
                    database_dir: &c.clamav_database_dir,
                })
            }),
            self.blocking(|c| clamav::last_scan(&c.root, &c.clamscan_log)),
            apt::collect(&apt_sources, limits, now),
            backup::collect(root, config.backup_marker.as_deref(), config.backup_command.as_deref(), limits),
            self.blocking(|c| system::os_version(&c.root, &c.os_release)),
            self.blocking(|c| system::boot_time(&c.root, &c.proc_dir.join("stat"))),
            self.blocking(disk),
        );
        Report {
            firewall,
            antivirus,
            last_full_scan,
            updates,
            backup,
            os_version,
            boot_time,
            disk,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    #[cfg(windows)]
    async fn collect_at(&self, _now: UnixTime) -> Report {
        windows::collect(&self.config, self.config.limits()).await
    }

    /// Runs a blocking read off the async threads.
    #[cfg_attr(windows, allow(dead_code))]
    async fn blocking<T, F>(&self, read: F) -> Reading<T>
    where
        T: Send + 'static,
        F: FnOnce(&CollectorConfig) -> Reading<T> + Send + 'static,
    {
        let config = Arc::clone(&self.config);
        tokio::task::spawn_blocking(move || read(&config))
            .await
            .unwrap_or_else(|e| unknown(format!("collector failed: {e}")))
    }
}

impl Collect for Collectors {
    fn collect(&self) -> Pin<Box<dyn Future<Output = Report> + Send + '_>> {
        Box::pin(Collectors::collect(self))
    }
}

#[cfg(unix)]
fn disk(config: &CollectorConfig) -> Reading<protocols::telemetry::Disk> {
    system::disk(&config.root, &config.disk_path)
}

#[cfg(all(not(unix), not(windows)))]
fn disk(_config: &CollectorConfig) -> Reading<protocols::telemetry::Disk> {
    unknown("free space is not read on this platform")
}

fn now() -> UnixTime {
    backup::unix_seconds(std::time::SystemTime::now()).unwrap_or(0)
}

#[cfg(test)]
#[path = "mod_test.rs"]
mod tests;
