//! Bounded reads of the files the collectors look at, with failures turned into "unknown" reasons
//! that name the file.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use protocols::telemetry::{Reading, MAX_TEXT_LEN};

/// Longest reason the collectors produce: below the protocol's text limit, with room to spare.
const MAX_REASON: usize = MAX_TEXT_LEN / 2;

/// Cuts a reason to [`MAX_REASON`] bytes at a character boundary.
pub(crate) fn bounded_reason(text: &str) -> String {
    if text.len() <= MAX_REASON {
        return text.to_string();
    }
    let mut end = MAX_REASON;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// An unknown reading whose reason is cut to [`MAX_REASON`] bytes.
pub(crate) fn unknown<T>(reason: impl AsRef<str>) -> Reading<T> {
    Reading::unknown(bounded_reason(reason.as_ref()))
}

/// `path` seen from `root` (the file system the collectors read, `/` outside tests).
pub(crate) fn under_root(root: &Path, path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    root.join(relative)
}

/// The reason for an I/O failure on `shown` (the configured path, not the root-prefixed one).
pub(crate) fn io_reason(shown: &Path, error: &io::Error) -> String {
    let shown = shown.display();
    bounded_reason(&match error.kind() {
        io::ErrorKind::NotFound => format!("{shown}: no such file"),
        io::ErrorKind::PermissionDenied => format!("{shown}: permission denied"),
        _ => format!("{shown}: {error}"),
    })
}

/// Reads at most `max` bytes from the start of the file; longer files are cut (the callers read
/// small files: os-release, /proc/stat, a database header).
pub(crate) fn read_head(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Like [`read_head`], as text (invalid UTF-8 replaced).
pub(crate) fn read_text(path: &Path, max: u64) -> io::Result<String> {
    read_head(path, max).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads the last `max` bytes of a log, as text, starting at a line boundary (a line cut by the
/// window is dropped).
pub(crate) fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if start == 0 {
        return Ok(text);
    }
    Ok(match text.find('\n') {
        Some(newline) => text[newline + 1..].to_string(),
        None => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_configured_path() {
        let missing = io::Error::from(io::ErrorKind::NotFound);
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(io_reason(Path::new("/etc/x"), &missing), "/etc/x: no such file");
        assert_eq!(io_reason(Path::new("/etc/x"), &denied), "/etc/x: permission denied");
    }

    #[test]
    fn long_reasons_are_cut_at_a_character() {
        let long = "é".repeat(MAX_TEXT_LEN);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MAX_REASON + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn unknown_readings_fit_the_protocol() {
        let Reading::<()>::Unknown(reason) = unknown("x".repeat(10 * MAX_TEXT_LEN)) else { unreachable!() };
        assert!(reason.len() <= MAX_TEXT_LEN);
    }

    #[test]
    fn root_prefixes_absolute_paths() {
        assert_eq!(under_root(Path::new("/"), Path::new("/etc/os-release")), Path::new("/etc/os-release"));
        assert_eq!(under_root(Path::new("/tmp/r"), Path::new("/etc/os-release")), Path::new("/tmp/r/etc/os-release"));
    }

    #[test]
    fn tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "first line\nsecond\nthird\n").unwrap();
        assert_eq!(read_tail(&path, 12).unwrap(), "third\n");
        assert_eq!(read_tail(&path, 1000).unwrap(), "first line\nsecond\nthird\n");
    }
}
