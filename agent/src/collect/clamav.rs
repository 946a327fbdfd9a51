//! ClamAV: whether it is installed and running, the date of its signatures, and the last scan
//! its log records.
//!
//! - Installed: the `clamd` or the `freshclam` binary exists (paths configured). Neither →
//!   unknown "ClamAV is not installed" (the machine may run another product we cannot read).
//! - Running: a process whose `/proc/PID/comm` is `clamd` (the engine) or `freshclam` (the
//!   updater). An unreadable `/proc` → unknown.
//! - Signatures: the build time in the 512-byte header of `daily.cld` (or `daily.cvd`) in the
//!   database directory, `ClamAV-VDB:14 Nov 2026 08-29 +0000:27456:…`; the newer of the two when
//!   both exist. No database or an unreadable header → `signatures_at: None`, not a guess.
//! - Last scan: the last complete `----------- SCAN SUMMARY -----------` block in clamscan's log
//!   (`Infected files: N`, `End Date: 2026:11:30 02:14:07`); threats cleaned are the lines of that
//!   scan ending in `Removed.` or containing `moved to` (`--remove`, `--move`). clamscan prints its
//!   dates in local time without a zone: they are read as UTC (agents on servers run in UTC; on a PC
//!   in another zone the time is off by the zone's offset). Every summary in the configured log
//!   counts as a scan: point the setting at the log the full-scan job writes. Only the last
//!   [`MAX_LOG_TAIL`] bytes are read. No log, or no complete summary in it → unknown.

use std::path::{Path, PathBuf};

use protocols::telemetry::{Antivirus, Reading, Scan, UnixTime};
use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

use super::files::{io_reason, read_head, read_tail, under_root, unknown};

/// How much of the end of the scan log is read.
pub(crate) const MAX_LOG_TAIL: u64 = 8 << 20;

/// The size of a ClamAV database header.
const HEADER_LEN: u64 = 512;

/// Where ClamAV lives (all paths as configured; `root` prefixes them).
#[derive(Debug, Clone)]
pub(crate) struct ClamavPaths<'a> {
    pub root: &'a Path,
    pub clamd: &'a Path,
    pub freshclam: &'a Path,
    pub proc_dir: &'a Path,
    pub database_dir: &'a Path,
}

/// Reads the antivirus parameter (blocking: run it off the async threads).
pub(crate) fn antivirus(paths: &ClamavPaths<'_>) -> Reading<Antivirus> {
    let clamd = under_root(paths.root, paths.clamd).exists();
    let freshclam = under_root(paths.root, paths.freshclam).exists();
    if !clamd && !freshclam {
        return unknown("ClamAV is not installed");
    }
    let running = match processes_named(&under_root(paths.root, paths.proc_dir), &["clamd", "freshclam"]) {
        Ok(found) => found,
        Err(e) => return unknown(io_reason(paths.proc_dir, &e)),
    };
    let database = under_root(paths.root, paths.database_dir);
    let signatures_at = ["daily.cld", "daily.cvd"]
        .iter()
        .filter_map(|name| read_head(&database.join(name), HEADER_LEN).ok())
        .filter_map(|header| database_built_at(&header))
        .max();
    Reading::Value(Antivirus {
        product: "ClamAV".to_string(),
        running: running[0],
        updater_running: running[1],
        signatures_at,
    })
}

/// For each name, whether a process of that name (`/proc/PID/comm`) exists.
pub(crate) fn processes_named<const N: usize>(proc_dir: &Path, names: &[&str; N]) -> std::io::Result<[bool; N]> {
    let mut found = [false; N];
    for entry in std::fs::read_dir(proc_dir)? {
        let Ok(entry) = entry else { continue };
        let is_pid =
            entry.file_name().to_str().is_some_and(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        // A process may exit between the listing and the read: skip it.
        let Ok(comm) = read_head(&entry.path().join("comm"), 64) else { continue };
        let comm = String::from_utf8_lossy(&comm);
        let comm = comm.trim_end_matches('\n');
        for (slot, name) in found.iter_mut().zip(names) {
            *slot |= comm == *name;
        }
    }
    Ok(found)
}

/// The build time of a ClamAV database from its header:
/// `ClamAV-VDB:14 Nov 2026 08-29 +0000:27456:2070000:90:X:X:raynman:1794644940`.
pub(crate) fn database_built_at(header: &[u8]) -> Option<UnixTime> {
    let header = std::str::from_utf8(header.get(..HEADER_LEN as usize).unwrap_or(header)).ok()?;
    let rest = header.strip_prefix("ClamAV-VDB:")?;
    let built = rest.split(':').next()?;
    let mut words = built.split_whitespace();
    let day: u8 = words.next()?.parse().ok()?;
    let month = month_from_abbreviation(words.next()?)?;
    let year: i32 = words.next()?.parse().ok()?;
    let (hour, minute) = words.next()?.split_once('-')?;
    let offset = parse_offset(words.next()?)?;
    if words.next().is_some() {
        return None;
    }
    let date = Date::from_calendar_date(year, month, day).ok()?;
    let time = Time::from_hms(hour.parse().ok()?, minute.parse().ok()?, 0).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_offset(offset).unix_timestamp())
}

fn month_from_abbreviation(name: &str) -> Option<Month> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let index = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(name))?;
    Month::try_from(u8::try_from(index + 1).ok()?).ok()
}

/// `+0000`, `-0530`.
fn parse_offset(text: &str) -> Option<UtcOffset> {
    let (sign, digits) = match text.as_bytes().first()? {
        b'+' => (1i8, &text[1..]),
        b'-' => (-1i8, &text[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i8 = digits[..2].parse().ok()?;
    let minutes: i8 = digits[2..].parse().ok()?;
    UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()
}

/// Reads the last scan from clamscan's log (blocking).
pub(crate) fn last_scan(root: &Path, log: &Path) -> Reading<Scan> {
    let path: PathBuf = under_root(root, log);
    match read_tail(&path, MAX_LOG_TAIL) {
        Ok(text) => match parse_scan_log(&text) {
            Some(scan) => Reading::Value(scan),
            None => unknown(format!("{}: no completed scan summary", log.display())),
        },
        Err(e) => unknown(io_reason(log, &e)),
    }
}

const SUMMARY_HEADER: &str = "----------- SCAN SUMMARY -----------";

/// The last complete scan in a clamscan log: a summary with both `Infected files:` and
/// `End Date:`.
pub(crate) fn parse_scan_log(text: &str) -> Option<Scan> {
    let mut last = None;
    let mut current: Option<Summary> = None;
    let mut cleaned = 0u32;
    for line in text.lines().map(str::trim_end) {
        if line == SUMMARY_HEADER {
            if let Some(summary) = current.take() {
                summary.finish(&mut last);
            }
            current = Some(Summary { cleaned, ..Summary::default() });
            cleaned = 0;
            continue;
        }
        if let Some(summary) = current.as_mut() {
            if let Some(value) = line.strip_prefix("Infected files:") {
                summary.infected = value.trim().parse().ok();
                continue;
            }
            if let Some(value) = line.strip_prefix("End Date:") {
                summary.ended = parse_clamscan_date(value.trim());
                continue;
            }
            if !is_scan_output(line) {
                // Other summary lines (`Scanned files: 2`, `Time: …`) and blank lines.
                continue;
            }
            // The next scan's output has begun.
            if let Some(summary) = current.take() {
                summary.finish(&mut last);
            }
        }
        if is_cleaned(line) {
            cleaned = cleaned.saturating_add(1);
        }
    }
    if let Some(summary) = current.take() {
        summary.finish(&mut last);
    }
    last
}

/// One summary block being read.
#[derive(Debug, Default)]
struct Summary {
    infected: Option<u32>,
    ended: Option<UnixTime>,
    /// Files the scan before the block removed or moved.
    cleaned: u32,
}

impl Summary {
    fn finish(self, last: &mut Option<Scan>) {
        if let (Some(found), Some(finished_at)) = (self.infected, self.ended) {
            *last = Some(Scan { finished_at, threats_found: found, threats_cleaned: self.cleaned.min(found) });
        }
    }
}

/// A line that belongs to a scan, not to a summary: a per-file result or the separator clamscan
/// writes when it starts logging a run.
fn is_scan_output(line: &str) -> bool {
    line.starts_with("-----") || line.ends_with(" FOUND") || is_cleaned(line) || line.ends_with(": OK")
}

/// `/path: Removed.` (`--remove`), `/path: moved to '/quarantine/…'` (`--move`).
fn is_cleaned(line: &str) -> bool {
    line.ends_with(": Removed.") || line.contains(": moved to ")
}

/// clamscan's `2026:11:30 02:14:07` (local time, read as UTC).
pub(crate) fn parse_clamscan_date(text: &str) -> Option<UnixTime> {
    let (date, time) = text.split_once(' ')?;
    let mut parts = date.split(':');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let time = parse_hms(time.trim())?;
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc().unix_timestamp())
}

/// `HH:MM:SS`.
pub(crate) fn parse_hms(text: &str) -> Option<Time> {
    let mut parts = text.split(':');
    let hour = parts.next()?.parse().ok()?;
    let minute = parts.next()?.parse().ok()?;
    let second = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Time::from_hms(hour, minute, second).ok()
}

#[cfg(test)]
#[path = "clamav_test.rs"]
mod tests;
