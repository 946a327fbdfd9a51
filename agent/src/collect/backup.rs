//! The last backup snapshot, from what the administrator configured: a command that prints the
//! snapshot's time (RFC 3339, or Unix seconds, on its last non-empty line), or a marker file the
//! backup job touches (its modification time). The command wins when both are set.
//!
//! Unknown: nothing configured, the marker missing or unreadable, the command missing, failing,
//! timing out or printing no time.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use protocols::telemetry::{Backup, Reading, UnixTime};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::files::{io_reason, under_root, unknown};
use super::run::{run, Limits};

pub(crate) async fn collect(
    root: &Path,
    marker: Option<&Path>,
    command: Option<&[String]>,
    limits: Limits,
) -> Reading<Backup> {
    if let Some(command) = command {
        return match run(command, &[], limits).await {
            Ok(out) => match parse_timestamp(&out) {
                Some(last_snapshot) => Reading::Value(Backup { last_snapshot }),
                None => unknown(format!("the backup command printed no time: {:?}", out.trim())),
            },
            Err(e) => unknown(e.to_string()),
        };
    }
    let Some(marker) = marker else {
        return unknown("no backup source configured");
    };
    let path = under_root(root, marker);
    let shown = marker.to_path_buf();
    let modified = tokio::task::spawn_blocking(move || std::fs::metadata(&path).and_then(|m| m.modified())).await;
    match modified {
        Ok(Ok(at)) => match unix_seconds(at) {
            Some(last_snapshot) => Reading::Value(Backup { last_snapshot }),
            None => unknown(format!("{}: modification time out of range", shown.display())),
        },
        Ok(Err(e)) => unknown(io_reason(&shown, &e)),
        Err(e) => unknown(format!("backup collector failed: {e}")),
    }
}

/// A time as a backup command prints it: `2026-11-30T02:00:00Z`, `2026-11-30T03:00:00+01:00`, or
/// `1796004847`.
pub(crate) fn parse_timestamp(output: &str) -> Option<UnixTime> {
    let line = output.lines().map(str::trim).rfind(|line| !line.is_empty())?;
    if let Ok(seconds) = line.parse::<i64>() {
        return Some(seconds);
    }
    OffsetDateTime::parse(line, &Rfc3339).ok().map(OffsetDateTime::unix_timestamp)
}

pub(crate) fn unix_seconds(at: SystemTime) -> Option<UnixTime> {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok(),
        Err(before) => i64::try_from(before.duration().as_secs()).ok().map(|s| -s),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> Limits {
        Limits { timeout: Duration::from_secs(5), max_stdout: 4096 }
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1796004847\n"), Some(1_796_004_847));
        assert_eq!(parse_timestamp("2026-11-30T02:14:07Z"), Some(1_796_004_847));
        assert_eq!(parse_timestamp("restic 0.16\n2026-11-30T03:14:07+01:00\n\n"), Some(1_796_004_847));
        assert_eq!(parse_timestamp(""), None);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("2026-11-30 02:14:07"), None);
    }

    #[tokio::test]
    async fn nothing_configured() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(collect(root.path(), None, None, limits()).await, Reading::unknown("no backup source configured"));
    }

    #[tokio::test]
    async fn marker_file() {
        let root = tempfile::tempdir().unwrap();
        let marker = Path::new("/var/backups/last-snapshot");
        assert_eq!(
            collect(root.path(), Some(marker), None, limits()).await,
            Reading::unknown("/var/backups/last-snapshot: no such file")
        );
        let path = under_root(root.path(), marker);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::fs::File::create(&path).unwrap();
        file.set_modified(UNIX_EPOCH + Duration::from_secs(1_796_004_847)).unwrap();
        assert_eq!(
            collect(root.path(), Some(marker), None, limits()).await,
            Reading::Value(Backup { last_snapshot: 1_796_004_847 })
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn command() {
        let root = tempfile::tempdir().unwrap();
        let argv = |script: &str| vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        let ok = argv("echo 2026-11-30T02:14:07Z");
        assert_eq!(
            collect(root.path(), None, Some(&ok), limits()).await,
            Reading::Value(Backup { last_snapshot: 1_796_004_847 })
        );
        let garbage = argv("echo no snapshots");
        assert_eq!(
            collect(root.path(), None, Some(&garbage), limits()).await,
            Reading::unknown("the backup command printed no time: \"no snapshots\"")
        );
        let missing = vec!["/nonexistent/backup-status".to_string()];
        assert_eq!(
            collect(root.path(), None, Some(&missing), limits()).await,
            Reading::unknown("backup-status is not installed")
        );
    }
}
