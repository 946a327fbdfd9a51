//! Operating-system updates from apt.
//!
//! - Pending: the `Inst ` lines of `apt-get -s -o Debug::NoLocking=1 upgrade` (a simulation: no
//!   root, no lock, nothing changed). Security updates are those whose origin mentions `-security`
//!   (`Debian-Security:12/stable-security`, `Ubuntu:22.04/jammy-security`). Packages `upgrade`
//!   keeps back (new dependencies needed) are not counted; the index is as fresh as the last
//!   `apt-get update`.
//! - `security_pending_since`: a small state file (JSON, package → first seen) remembers when the
//!   agent first saw each pending security update; the oldest still pending is reported. A state
//!   file that cannot be read starts afresh, one that cannot be written is logged.
//! - `last_success`: the `End-Date:` of the last entry in `/var/log/apt/history.log` without an
//!   `Error:` line, any apt run (install or upgrade). apt writes local time without a zone: read as
//!   UTC. No log or no such entry → `None`.
//! - Unknown: apt-get is not installed, failed, or timed out.

use std::collections::BTreeMap;
use std::path::Path;

use protocols::telemetry::{Reading, UnixTime, Updates};
use time::{Date, Month, PrimitiveDateTime};

use super::clamav::parse_hms;
use super::files::{read_tail, under_root, unknown};
use super::run::{run, Limits};

/// How much of the end of apt's history is read.
const MAX_HISTORY_TAIL: u64 = 4 << 20;
/// Largest state file read back.
const MAX_STATE: u64 = 1 << 20;

/// What the update collector is given.
#[derive(Debug, Clone)]
pub(crate) struct AptSources<'a> {
    pub root: &'a Path,
    pub apt_get: &'a [String],
    pub history_log: &'a Path,
    /// The state file (not under `root`: it is the agent's own).
    pub state_file: &'a Path,
}

pub(crate) async fn collect(sources: &AptSources<'_>, limits: Limits, now: UnixTime) -> Reading<Updates> {
    let simulation = match run(sources.apt_get, &["-s", "-o", "Debug::NoLocking=1", "upgrade"], limits).await {
        Ok(text) => text,
        Err(e) => return unknown(e.to_string()),
    };
    let pending = parse_simulation(&simulation);
    let history = under_root(sources.root, sources.history_log);
    let state_file = sources.state_file.to_path_buf();
    let security = pending.security.clone();
    let blocking = tokio::task::spawn_blocking(move || {
        let last_success = read_tail(&history, MAX_HISTORY_TAIL).ok().and_then(|text| last_success(&text));
        let since = remember_security(&state_file, &security, now);
        (last_success, since)
    })
    .await;
    let (last_success, security_pending_since) = match blocking {
        Ok(found) => found,
        Err(e) => return unknown(format!("update collector failed: {e}")),
    };
    Reading::Value(Updates {
        pending: saturating_u32(pending.all),
        security_pending: saturating_u32(pending.security.len()),
        security_pending_since,
        last_success,
    })
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Upgrades an apt simulation would install.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    pub all: usize,
    /// Names of the security upgrades (`libssl3`, `libc6:i386`).
    pub security: Vec<String>,
}

/// Reads `apt-get -s upgrade` output:
/// `Inst libssl3 [3.0.11-1] (3.0.13-1~deb12u1 Debian-Security:12/stable-security [amd64])`.
pub(crate) fn parse_simulation(text: &str) -> Pending {
    let mut pending = Pending::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else { continue };
        let Some(package) = rest.split_whitespace().next() else { continue };
        pending.all += 1;
        let origin = rest.find('(').map_or("", |open| &rest[open..]);
        if origin.to_ascii_lowercase().contains("-security") {
            pending.security.push(package.to_string());
        }
    }
    pending.security.sort();
    pending.security.dedup();
    pending
}

/// Updates the state file with the security updates pending `now` and returns the oldest first
/// sighting among them (`None` when none is pending).
pub(crate) fn remember_security(state_file: &Path, pending: &[String], now: UnixTime) -> Option<UnixTime> {
    let seen: BTreeMap<String, UnixTime> = std::fs::read(state_file)
        .ok()
        .filter(|bytes| bytes.len() as u64 <= MAX_STATE)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let updated: BTreeMap<String, UnixTime> =
        pending.iter().map(|package| (package.clone(), seen.get(package).copied().unwrap_or(now).min(now))).collect();
    if updated != seen {
        if let Err(e) = write_state(state_file, &updated) {
            tracing::warn!(path = %state_file.display(), error = %e, "cannot save the pending security updates");
        }
    }
    updated.values().copied().min()
}

/// Writes the state beside its final name, then renames it into place.
fn write_state(state_file: &Path, state: &BTreeMap<String, UnixTime>) -> std::io::Result<()> {
    if let Some(dir) = state_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = state_file.with_extension("tmp");
    std::fs::write(&temporary, serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
    std::fs::rename(&temporary, state_file)
}

/// The end of the last apt run that logged no error, from `/var/log/apt/history.log`.
pub(crate) fn last_success(history: &str) -> Option<UnixTime> {
    let mut last = None;
    let mut error = false;
    for line in history.lines() {
        if line.starts_with("Start-Date:") {
            error = false;
        } else if line.starts_with("Error:") {
            error = true;
        } else if let Some(end) = line.strip_prefix("End-Date:") {
            if !error {
                if let Some(at) = parse_apt_date(end.trim()) {
                    last = Some(at);
                }
            }
        }
    }
    last
}

/// apt's `2026-11-30  06:12:44` (local time, read as UTC).
fn parse_apt_date(text: &str) -> Option<UnixTime> {
    let mut words = text.split_whitespace();
    let date = words.next()?;
    let time = parse_hms(words.next()?)?;
    if words.next().is_some() {
        return None;
    }
    let mut parts = date.split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc().unix_timestamp())
}

#[cfg(test)]
#[path = "apt_test.rs"]
mod tests;
