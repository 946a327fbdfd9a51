use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn script<'a>(dir: &'a Path, body: &'a str, timeout_secs: u64) -> Script<'a> {
    Script {
        id: Uuid::new_v4(),
        body,
        shell: Path::new("/bin/sh"),
        timeout: Duration::from_secs(timeout_secs),
        run_dir: dir,
    }
}

#[tokio::test]
async fn the_exit_code_and_both_streams_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(script(dir.path(), "echo out; echo err >&2; exit 3\n", 10)).await;
    assert_eq!(ran.status, ActionStatus::Completed);
    assert_eq!(ran.exit_code, 3);
    assert_eq!(ran.output, b"out\nerr\n");
    assert!(!ran.output_truncated);
    assert_eq!(ran.text, "");
    // The script file and its home are gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn output_is_cut_at_the_limit_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    // 100 KB on stdout, then a line on stderr: the child must never block on a full pipe.
    let body = "head -c 100000 /dev/zero | tr '\\0' a; echo late >&2; exit 0\n";
    let ran = run(script(dir.path(), body, 20)).await;
    assert_eq!((ran.status, ran.exit_code), (ActionStatus::Completed, 0));
    assert_eq!(ran.output.len(), MAX_ACTION_OUTPUT);
    assert!(ran.output.iter().all(|b| *b == b'a'));
    assert!(ran.output_truncated);

    let ran = run(script(dir.path(), "printf 12345\n", 20)).await;
    assert_eq!(ran.output, b"12345");
    assert!(!ran.output_truncated);
}

#[tokio::test]
async fn a_timeout_kills_the_script_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("child.pid");
    let body = format!("sleep 30 &\necho $! > {}\nsleep 30\n", marker.display());
    let started = std::time::Instant::now();
    let ran = run(script(&dir.path().join("run"), &body, 1)).await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(ran.status, ActionStatus::TimedOut);
    assert_eq!(ran.exit_code, -1);
    assert!(ran.text.contains("timeout of 1 s"), "{}", ran.text);
    let pid: u32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    // The background child is gone too (at most a zombie until its new parent reaps it).
    let mut gone = false;
    for _ in 0..50 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("");
        if stat.is_empty() || state == "Z" {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the script's child {pid} outlived the timeout");
}

#[tokio::test]
async fn a_signal_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(script(dir.path(), "kill -TERM $$\n", 10)).await;
    assert_eq!((ran.status, ran.exit_code), (ActionStatus::Completed, -1));
    assert!(ran.text.contains("SIGTERM"), "{}", ran.text);
}

#[tokio::test]
async fn the_environment_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(script(dir.path(), "env; echo cwd=$(pwd)\n", 10)).await;
    assert_eq!(ran.exit_code, 0, "{}", String::from_utf8_lossy(&ran.output));
    let text = String::from_utf8(ran.output).unwrap();
    let mut names = Vec::new();
    let mut home = None;
    let mut cwd = None;
    for line in text.lines() {
        if let Some(dir) = line.strip_prefix("cwd=") {
            cwd = Some(dir.to_string());
            continue;
        }
        let (name, value) = line.split_once('=').unwrap();
        names.push(name.to_string());
        match name {
            "PATH" => assert_eq!(value, SCRIPT_PATH),
            "LANG" => assert_eq!(value, "C.UTF-8"),
            "HOME" => home = Some(value.to_string()),
            _ => {}
        }
    }
    for needed in ["PATH", "LANG", "HOME", "TETHER_ACTION_ID"] {
        assert!(names.iter().any(|n| n == needed), "{needed} missing from {names:?}");
    }
    // Only those, and what the shell sets itself (dash: PWD; bash: also SHLVL and _).
    let allowed = ["PATH", "LANG", "HOME", "TETHER_ACTION_ID", "PWD", "OLDPWD", "SHLVL", "_"];
    for name in &names {
        assert!(allowed.contains(&name.as_str()), "{name} leaked into the script's environment");
    }
    let home = PathBuf::from(home.unwrap());
    assert_eq!(cwd.map(PathBuf::from), Some(home.clone()));
    assert!(home.starts_with(dir.path()));
}

#[tokio::test]
async fn a_missing_shell_fails_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut missing = script(dir.path(), "true\n", 10);
    missing.shell = Path::new("/nonexistent/sh");
    let ran = run(missing).await;
    assert_eq!((ran.status, ran.exit_code), (ActionStatus::Failed, -1));
    assert!(ran.text.contains("/nonexistent/sh"), "{}", ran.text);
}
