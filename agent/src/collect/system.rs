//! The operating system's name, the boot time and the system volume's free space.
//!
//! - `os_version`: `PRETTY_NAME` of `/etc/os-release` (or `/usr/lib/os-release` when the first is
//!   missing, as os-release(5) says). No file or no `PRETTY_NAME` → unknown.
//! - `boot_time`: the `btime` line of `/proc/stat`. No file or no line → unknown.
//! - `disk`: `statvfs` of the configured path (`/`): free is what an unprivileged user may still
//!   write (`f_bavail`), total the file system's size. Failure → unknown; Unix only.

use std::path::Path;

use protocols::telemetry::{Reading, UnixTime};

use super::files::{io_reason, read_text, under_root, unknown};

/// Small files: os-release, /proc/stat (a few KiB even with many CPUs).
const MAX_SMALL_FILE: u64 = 1 << 20;

pub(crate) fn os_version(root: &Path, os_release: &Path) -> Reading<String> {
    let fallback = Path::new("/usr/lib/os-release");
    let (shown, text) = match read_text(&under_root(root, os_release), MAX_SMALL_FILE) {
        Ok(text) => (os_release, text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && os_release != fallback => {
            match read_text(&under_root(root, fallback), MAX_SMALL_FILE) {
                Ok(text) => (fallback, text),
                Err(_) => return unknown(io_reason(os_release, &e)),
            }
        }
        Err(e) => return unknown(io_reason(os_release, &e)),
    };
    match pretty_name(&text) {
        Some(name) => Reading::Value(name),
        None => unknown(format!("{}: no PRETTY_NAME", shown.display())),
    }
}

/// `PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"`, unquoted (shell-style quotes and escapes).
pub(crate) fn pretty_name(os_release: &str) -> Option<String> {
    let value = os_release.lines().filter_map(|line| line.trim().strip_prefix("PRETTY_NAME=")).next_back()?;
    let unquoted = match value.as_bytes().first() {
        Some(&quote @ (b'"' | b'\'')) => {
            let inner = value.get(1..)?.strip_suffix(char::from(quote))?;
            if quote == b'"' {
                unescape(inner)
            } else {
                inner.to_string()
            }
        }
        _ => value.to_string(),
    };
    let trimmed = unquoted.trim();
    (!trimmed.is_empty()).then(|| trimmed.chars().take(200).collect())
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn boot_time(root: &Path, proc_stat: &Path) -> Reading<UnixTime> {
    match read_text(&under_root(root, proc_stat), MAX_SMALL_FILE) {
        Ok(text) => match btime(&text) {
            Some(at) => Reading::Value(at),
            None => unknown(format!("{}: no btime line", proc_stat.display())),
        },
        Err(e) => unknown(io_reason(proc_stat, &e)),
    }
}

/// `btime 1796004847` in `/proc/stat`.
pub(crate) fn btime(proc_stat: &str) -> Option<UnixTime> {
    proc_stat.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("btime")).then(|| words.next()?.parse().ok()).flatten()
    })
}

#[cfg(unix)]
pub(crate) fn disk(root: &Path, path: &Path) -> Reading<protocols::telemetry::Disk> {
    match rustix::fs::statvfs(under_root(root, path)) {
        Ok(stat) => {
            let fragment = stat.f_frsize;
            Reading::Value(protocols::telemetry::Disk {
                free_bytes: stat.f_bavail.saturating_mul(fragment),
                total_bytes: stat.f_blocks.saturating_mul(fragment),
            })
        }
        Err(e) => unknown(io_reason(path, &std::io::Error::from(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"#;

    #[test]
    fn pretty_names() {
        assert_eq!(pretty_name(DEBIAN).as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(pretty_name("PRETTY_NAME='Alpine Linux v3.20'\n").as_deref(), Some("Alpine Linux v3.20"));
        assert_eq!(pretty_name("PRETTY_NAME=Arch\n").as_deref(), Some("Arch"));
        assert_eq!(pretty_name(r#"PRETTY_NAME="Say \"hi\"""#).as_deref(), Some("Say \"hi\""));
        assert_eq!(pretty_name("NAME=x\n"), None);
        assert_eq!(pretty_name("PRETTY_NAME=\"\"\n"), None);
        assert_eq!(pretty_name("PRETTY_NAME=\"\n"), None);
        assert_eq!(pretty_name("PRETTY_NAME=\"é"), None);
    }

    /// `/proc/stat` on a 2-CPU machine (shortened).
    const PROC_STAT: &str = "\
cpu  1162 0 1392 1034812 216 0 93 0 0 0
cpu0 566 0 712 517403 109 0 56 0 0 0
cpu1 596 0 680 517409 107 0 37 0 0 0
intr 1128321 0 9 0 0 0
ctxt 2345771
btime 1796004847
processes 13012
procs_running 1
procs_blocked 0
softirq 602034 0 84128 2 9713 0 0 21 230114 0 278056
";

    #[test]
    fn boot_time_from_proc_stat() {
        assert_eq!(btime(PROC_STAT), Some(1_796_004_847));
        assert_eq!(btime("btime\n"), None);
        assert_eq!(btime("btime x\n"), None);
        assert_eq!(btime(""), None);
    }

    #[test]
    fn files_under_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(os_version(r, Path::new("/etc/os-release")), Reading::unknown("/etc/os-release: no such file"));
        assert_eq!(boot_time(r, Path::new("/proc/stat")), Reading::unknown("/proc/stat: no such file"));
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::write(r.join("usr/lib/os-release"), DEBIAN).unwrap();
        assert_eq!(
            os_version(r, Path::new("/etc/os-release")),
            Reading::Value("Debian GNU/Linux 12 (bookworm)".into())
        );
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/os-release"), "NAME=x\n").unwrap();
        assert_eq!(os_version(r, Path::new("/etc/os-release")), Reading::unknown("/etc/os-release: no PRETTY_NAME"));
        std::fs::create_dir_all(r.join("proc")).unwrap();
        std::fs::write(r.join("proc/stat"), PROC_STAT).unwrap();
        assert_eq!(boot_time(r, Path::new("/proc/stat")), Reading::Value(1_796_004_847));
    }

    #[cfg(unix)]
    #[test]
    fn disk_of_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let reading = disk(root.path(), Path::new("/"));
        let disk = reading.value().unwrap();
        assert!(disk.total_bytes > 0 && disk.free_bytes <= disk.total_bytes, "{disk:?}");
        assert_eq!(disk_missing(root.path()), Reading::unknown("/missing: no such file"));
    }

    #[cfg(unix)]
    fn disk_missing(root: &Path) -> Reading<protocols::telemetry::Disk> {
        disk(root, Path::new("/missing"))
    }
}
