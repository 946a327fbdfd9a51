//! Running an external tool (nft, iptables-save, apt-get, a backup command) with a time limit and a
//! bound on what it may print. The tool's absence, a refusal and a timeout each come back as a
//! reason fit for a [`Reading::Unknown`](protocols::telemetry::Reading::Unknown).

use std::io;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::files::bounded_reason;

/// What a tool may cost: wall time and bytes of output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub timeout: Duration,
    pub max_stdout: usize,
}

/// Stderr is kept only for the first line of an error message.
const MAX_STDERR: usize = 4096;

/// Why a tool gave no usable output. `Display` is the "unknown" reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RunError {
    #[error("no command configured")]
    Empty,
    #[error("{0} is not installed")]
    NotInstalled(String),
    #[error("{0}: permission denied")]
    PermissionDenied(String),
    #[error("{0} did not finish within {1} s")]
    Timeout(String, u64),
    #[error("{0} printed more than {1} bytes")]
    TooLarge(String, usize),
    #[error("{program} failed ({status}): {message}")]
    Failed { program: String, status: String, message: String },
    #[error("{0}: {1}")]
    Io(String, String),
}

/// Runs `argv` (program and leading arguments, as configured) followed by `args`, with stdin
/// closed, `LC_ALL=C` so that the output is not translated, and the limits applied. A success is
/// exit status 0; its stdout comes back (lossily decoded as UTF-8).
pub(crate) async fn run(argv: &[String], args: &[&str], limits: Limits) -> Result<String, RunError> {
    let Some((program, leading)) = argv.split_first() else {
        return Err(RunError::Empty);
    };
    let name = program_name(program);
    let mut command = Command::new(program);
    command
        .args(leading)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => RunError::NotInstalled(name.clone()),
        io::ErrorKind::PermissionDenied => RunError::PermissionDenied(name.clone()),
        _ => RunError::Io(name.clone(), e.to_string()),
    })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(RunError::Io(name, "no pipes to the child".into()));
    };
    let finished = async {
        let (out, err) = tokio::join!(drain_bounded(stdout, limits.max_stdout), drain_bounded(stderr, MAX_STDERR));
        let status = child.wait().await;
        (out, err, status)
    };
    // On timeout the future (and with it the child, kill_on_drop) is dropped.
    let (out, err, status) = tokio::time::timeout(limits.timeout, finished)
        .await
        .map_err(|_| RunError::Timeout(name.clone(), limits.timeout.as_secs()))?;
    let status = status.map_err(|e| RunError::Io(name.clone(), e.to_string()))?;
    let (out, overflow) = out.map_err(|e| RunError::Io(name.clone(), e.to_string()))?;
    let (err, _) = err.unwrap_or_default();
    if !status.success() {
        let stderr = String::from_utf8_lossy(&err);
        let message = stderr.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("no message");
        return Err(RunError::Failed { program: name, status: status.to_string(), message: bounded_reason(message) });
    }
    if overflow {
        return Err(RunError::TooLarge(name, limits.max_stdout));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Reads to the end, keeping at most `max` bytes; the flag says whether more was discarded. The
/// rest is drained so that the child never blocks on a full pipe.
async fn drain_bounded(mut reader: impl AsyncRead + Unpin, max: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut overflow = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, overflow));
        }
        let room = max.saturating_sub(kept.len());
        let take = n.min(room);
        kept.extend_from_slice(&buf[..take]);
        if take < n {
            overflow = true;
        }
    }
}

/// The name a reason calls a program by: its file name, not its whole path.
pub(crate) fn program_name(program: &str) -> String {
    std::path::Path::new(program)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.to_string())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { timeout: Duration::from_secs(5), max_stdout: 16 }
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[tokio::test]
    async fn output_of_a_successful_tool() {
        let out = run(&argv(&["sh", "-c"]), &["echo hello"], limits()).await;
        assert_eq!(out, Ok("hello\n".to_string()));
    }

    #[tokio::test]
    async fn missing_tool_is_not_installed() {
        let out = run(&argv(&["/nonexistent/tether-no-such-tool"]), &[], limits()).await;
        assert_eq!(out, Err(RunError::NotInstalled("tether-no-such-tool".into())));
        assert_eq!(run(&[], &[], limits()).await, Err(RunError::Empty));
    }

    #[tokio::test]
    async fn failure_carries_the_first_stderr_line() {
        let out =
            run(&argv(&["sh", "-c"]), &["echo; echo 'Operation not permitted' >&2; echo more >&2; exit 1"], limits())
                .await;
        let Err(RunError::Failed { program, message, .. }) = out else {
            panic!("expected a failure, got {out:?}");
        };
        assert_eq!(program, "sh");
        assert_eq!(message, "Operation not permitted");
    }

    #[tokio::test]
    async fn too_much_output_is_refused_without_blocking() {
        let out = run(&argv(&["sh", "-c"]), &["head -c 1000000 /dev/zero"], limits()).await;
        assert_eq!(out, Err(RunError::TooLarge("sh".into(), 16)));
    }

    #[tokio::test]
    async fn slow_tool_times_out() {
        let limits = Limits { timeout: Duration::from_millis(200), max_stdout: 16 };
        let started = std::time::Instant::now();
        let out = run(&argv(&["sleep", "10"]), &[], limits).await;
        assert!(matches!(out, Err(RunError::Timeout(ref name, _)) if name == "sleep"), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
