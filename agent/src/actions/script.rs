//! Running a support script (Linux and other Unixes): the body is written to a 0700 file under
//! `STATE_DIR/run/` and run as `SHELL FILE` in a clean environment (`PATH`, `LANG=C.UTF-8`,
//! `HOME` and the working directory a fresh empty directory, `TETHER_ACTION_ID`), stdin closed,
//! in a process group of its own. Stdout and stderr are read to their end, concurrently, so the
//! script never blocks on a full pipe, but only [`MAX_ACTION_OUTPUT`] bytes are kept in all
//! (stdout, then stderr; the cut is flagged). Past its timeout the whole process group is killed.
//! When the script ends, whatever it left running in its process group is killed too (a daemon
//! is started through the init system, not from a support script).
//!
//! On other platforms every script fails: "scripts run on Linux in this version".

use std::path::Path;
use std::time::Duration;

use protocols::tap::{ActionStatus, MAX_ACTION_OUTPUT};
use uuid::Uuid;

/// `PATH` in a script's environment.
pub const SCRIPT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Script<'a> {
    pub id: Uuid,
    pub body: &'a str,
    pub shell: &'a Path,
    /// Already bounded by the local policy; at least 1 s.
    pub timeout: Duration,
    /// Where the script file and its home go (`STATE_DIR/run`).
    pub run_dir: &'a Path,
}

/// How a script went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// `Completed`, `TimedOut` or `Failed`.
    pub status: ActionStatus,
    /// The exit code; -1 when killed by a signal, timed out, or not started.
    pub exit_code: i32,
    pub duration: Duration,
    /// Why it failed or how it was killed ("" for an exit).
    pub text: String,
    /// Stdout then stderr, at most [`MAX_ACTION_OUTPUT`] bytes.
    pub output: Vec<u8>,
    pub output_truncated: bool,
}

impl Ran {
    fn failed(text: String) -> Ran {
        Ran {
            status: ActionStatus::Failed,
            exit_code: -1,
            duration: Duration::ZERO,
            text,
            output: Vec::new(),
            output_truncated: false,
        }
    }
}

/// Stdout followed by stderr, cut at [`MAX_ACTION_OUTPUT`] bytes in all.
#[cfg_attr(not(unix), allow(dead_code))]
fn combine(mut out: Vec<u8>, out_cut: bool, err: Vec<u8>, err_cut: bool) -> (Vec<u8>, bool) {
    let total = out.len() + err.len();
    out.extend_from_slice(&err);
    out.truncate(MAX_ACTION_OUTPUT);
    (out, out_cut || err_cut || total > MAX_ACTION_OUTPUT)
}

#[cfg(not(unix))]
pub async fn run(script: Script<'_>) -> Ran {
    let _ = script;
    Ran::failed("scripts run on Linux in this version".into())
}

#[cfg(unix)]
pub use unix::run;

#[cfg(unix)]
mod unix {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use std::time::Duration;

    use protocols::tap::{ActionStatus, MAX_ACTION_OUTPUT};
    use rustix::process::{kill_process_group, Pid, Signal};
    use tokio::io::{AsyncRead, AsyncReadExt};
    use tokio::process::Command;
    use tokio::time::Instant;

    use super::{combine, Ran, Script, SCRIPT_PATH};
    use crate::state::set_mode;

    /// Time for the pipes to reach their end once the script is over (a process that left the
    /// group may hold them).
    const DRAIN_GRACE: Duration = Duration::from_secs(2);
    /// Time for a killed script to be reaped.
    const REAP_TIMEOUT: Duration = Duration::from_secs(5);

    /// Kills the script's process group when dropped: at the end of the run, on a timeout, and
    /// when the agent stops while the script runs.
    struct Group(Option<Pid>);

    impl Group {
        fn kill(&self) {
            if let Some(pid) = self.0 {
                // ESRCH (nothing left in the group) is the usual case at the end.
                let _ = kill_process_group(pid, Signal::KILL);
            }
        }
    }

    impl Drop for Group {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Bytes kept from one pipe, read to its end.
    #[derive(Default)]
    struct Captured {
        bytes: Vec<u8>,
        cut: bool,
    }

    async fn drain(mut pipe: impl AsyncRead + Unpin, into: &mut Captured) {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let room = MAX_ACTION_OUTPUT - into.bytes.len();
                    into.bytes.extend_from_slice(&chunk[..n.min(room)]);
                    into.cut |= n > room;
                }
            }
        }
    }

    fn signal_name(signal: i32) -> &'static str {
        match signal {
            1 => "SIGHUP",
            2 => "SIGINT",
            3 => "SIGQUIT",
            4 => "SIGILL",
            6 => "SIGABRT",
            7 => "SIGBUS",
            8 => "SIGFPE",
            9 => "SIGKILL",
            11 => "SIGSEGV",
            13 => "SIGPIPE",
            14 => "SIGALRM",
            15 => "SIGTERM",
            _ => "a signal",
        }
    }

    /// Writes the script file (0700) and makes its empty home; their paths.
    fn prepare(script: &Script<'_>) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
        std::fs::create_dir_all(script.run_dir)?;
        set_mode(script.run_dir, 0o700).map_err(std::io::Error::other)?;
        let file = script.run_dir.join(format!("{}.sh", script.id));
        let home = script.run_dir.join(format!("{}.home", script.id));
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_dir_all(&home);
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o700).open(&file)?;
        out.write_all(script.body.as_bytes())?;
        out.sync_all()?;
        std::fs::create_dir(&home)?;
        set_mode(&home, 0o700).map_err(std::io::Error::other)?;
        Ok((file, home))
    }

    pub async fn run(script: Script<'_>) -> Ran {
        let (file, home) = match prepare(&script) {
            Ok(paths) => paths,
            Err(err) => {
                return Ran::failed(format!("cannot write the script under {}: {err}", script.run_dir.display()))
            }
        };
        let ran = spawn_and_wait(&script, &file, &home).await;
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_dir_all(&home);
        ran
    }

    async fn spawn_and_wait(script: &Script<'_>, file: &std::path::Path, home: &std::path::Path) -> Ran {
        let started = Instant::now();
        let mut child = match Command::new(script.shell)
            .arg(file)
            .env_clear()
            .env("PATH", SCRIPT_PATH)
            .env("LANG", "C.UTF-8")
            .env("HOME", home)
            .env("TETHER_ACTION_ID", script.id.to_string())
            .current_dir(home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(err) => return Ran::failed(format!("cannot start {}: {err}", script.shell.display())),
        };
        // The child leads its own group: its pid is the group's id.
        let group = Group(child.id().and_then(|id| Pid::from_raw(i32::try_from(id).ok()?)));
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Ran::failed("no pipes to the script".into());
        };
        let (mut out, mut err) = (Captured::default(), Captured::default());
        let (waited, timed_out) = {
            let reading = async { tokio::join!(drain(stdout, &mut out), drain(stderr, &mut err)) };
            tokio::pin!(reading);
            let mut read_all = false;
            let deadline = started + script.timeout;
            let waited = tokio::time::timeout_at(deadline, async {
                loop {
                    tokio::select! {
                        status = child.wait() => return status,
                        _ = &mut reading, if !read_all => read_all = true,
                    }
                }
            })
            .await;
            let (waited, timed_out) = match waited {
                Ok(status) => (status, false),
                Err(_) => {
                    group.kill();
                    let reaped = tokio::time::timeout(REAP_TIMEOUT, child.wait()).await;
                    (reaped.unwrap_or_else(|_| Err(std::io::Error::other("not reaped"))), true)
                }
            };
            // What the script left behind goes with it; then the pipes reach their end.
            group.kill();
            if !read_all {
                let _ = tokio::time::timeout(DRAIN_GRACE, &mut reading).await;
            }
            (waited, timed_out)
        };
        let duration = started.elapsed();
        let (output, output_truncated) = combine(out.bytes, out.cut, err.bytes, err.cut);
        let mut ran = Ran {
            status: ActionStatus::Completed,
            exit_code: -1,
            duration,
            text: String::new(),
            output,
            output_truncated,
        };
        if timed_out {
            ran.status = ActionStatus::TimedOut;
            ran.text = format!(
                "the script ran past its timeout of {} s and was killed with its process group",
                script.timeout.as_secs()
            );
            return ran;
        }
        match waited {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => ran.exit_code = code,
                (None, Some(signal)) => {
                    ran.text = format!("the script was killed by {} ({signal})", signal_name(signal))
                }
                (None, None) => ran.text = format!("the script ended with {status}"),
            },
            Err(e) => {
                ran.status = ActionStatus::Failed;
                ran.text = format!("waiting for the script: {e}");
            }
        }
        ran
    }
}

#[cfg(all(test, unix))]
#[path = "script_test.rs"]
mod tests;
