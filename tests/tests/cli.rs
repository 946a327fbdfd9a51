//! The `tether` command as scripts and operators use it: exit codes that tell why a command
//! failed, shell completions and man pages from the command definitions, and log lines an
//! operator can ship (JSON lines with structured fields, plain text without colour codes when
//! not on a terminal).

use std::process::Command;
use std::time::Duration;

use e2e::process::free_local_port;
use e2e::{bin, wait_for, Gateway, Sim};
use serde_json::Value;
use uuid::Uuid;

/// Runs `command`; its exit code and stderr.
fn exit_of(command: &mut Command) -> (Option<i32>, String) {
    let output = command.output().expect("running tether");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_script_tells_why_a_command_failed_by_its_exit_code() {
    let gateway = Gateway::start(&[]);
    let dir = gateway.data_dir().to_str().unwrap().to_string();
    let tether = |args: &[&str]| {
        let mut command = Command::new(bin("tether"));
        command.args(args);
        command
    };
    let unknown = Uuid::new_v4().to_string();

    // 3: not found, from the API (404) and from the store.
    let (code, err) = exit_of(&mut gateway.cli_command(&["device", "show", &unknown]));
    assert_eq!(code, Some(3), "{err}");
    let (code, err) = exit_of(&mut tether(&["--data-dir", &dir, "token", "revoke", "nobody"]));
    assert_eq!(code, Some(3), "{err}");
    let (code, err) = exit_of(&mut tether(&["--data-dir", &dir, "user", "suspend", "nobody"]));
    assert_eq!(code, Some(3), "{err}");

    // 4: refused, a wrong token (401) and a token whose scope does not allow it (403).
    let ca = gateway.ca_path();
    let random = e2e::api::random_token();
    let mut wrong = tether(&["--api", &gateway.api_url(), "--token", &random, "--ca", ca.to_str().unwrap(), "devices"]);
    let (code, err) = exit_of(&mut wrong);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("HTTP 401"), "{err}");

    // 5: unreachable, nothing listens where --api points.
    let closed = format!("https://127.0.0.1:{}", free_local_port());
    let (code, err) =
        exit_of(&mut tether(&["--api", &closed, "--token", gateway.token(), "--ca", ca.to_str().unwrap(), "devices"]));
    assert_eq!(code, Some(5), "{err}");

    // 2: bad input, from clap and from the command's own checks.
    let (code, err) = exit_of(&mut tether(&["--data-dir", &dir, "token", "create", "x", "--expires-in", "5y"]));
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = exit_of(&mut gateway.cli_command(&["action", "run", &unknown]));
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = exit_of(&mut tether(&["--data-dir", &dir, "mps-credentials", "set", "bad name", "pw"]));
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn listings_print_json_for_scripts() {
    let gateway = Gateway::start(&[]);
    let dir = gateway.data_dir().to_str().unwrap().to_string();
    let local = |args: &[&str]| {
        let mut full = vec!["--data-dir", dir.as_str()];
        full.extend_from_slice(args);
        e2e::process::run(Command::new(bin("tether")).args(&full))
    };
    for args in [
        &["mps-credentials", "list", "--json"][..],
        &["token", "list", "--json"],
        &["user", "list", "--json"],
        &["subscriber", "list", "--json"],
        &["mail", "list", "--json"],
        &["db", "check", "--json"],
    ] {
        let out = local(args);
        let value: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("tether {args:?}: not JSON ({e}):\n{out}"));
        assert!(value.is_array() || value.is_object(), "tether {args:?}: {value}");
    }
    let names: Value = serde_json::from_str(&local(&["mps-credentials", "list", "--json"])).unwrap();
    assert_eq!(names, serde_json::json!([e2e::process::MPS_USER]));
    let devices: Value = serde_json::from_str(&gateway.cli(&["devices", "--json"])).unwrap();
    assert_eq!(devices, serde_json::json!([]));
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    for (program, sub) in [("tether", "mps-credentials"), ("tether-agent", "enroll")] {
        for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef"), ("fish", "complete -c")] {
            let out = e2e::process::run(Command::new(bin(program)).args(["completions", shell]));
            assert!(out.contains(marker) && out.contains(sub), "{program} completions {shell}:\n{out}");
        }
        let dir = tempfile::tempdir().unwrap();
        e2e::process::run(Command::new(bin(program)).args(["manpages", dir.path().to_str().unwrap()]));
        let page = std::fs::read_to_string(dir.path().join(format!("{program}.1"))).unwrap();
        // roff escapes the hyphens of option and command names.
        assert!(page.contains(".TH") && page.contains(&sub.replace('-', "\\-")), "{program}.1:\n{page}");
        let sub_page = dir.path().join(format!("{program}-{sub}.1"));
        assert!(sub_page.exists(), "no {}", sub_page.display());
    }
}

#[test]
fn the_gateway_logs_json_lines_with_structured_fields_and_plain_text_without_colour() {
    let gateway = Gateway::start(&["--log-format", "json"]);
    let uuid = Uuid::new_v4();
    let sim = Sim::start_with_password(&gateway, "wrong", &["--uuid", &uuid.to_string(), "--exit-on-auth-failure"]);
    let _ = sim.wait(Duration::from_secs(30));
    let mut line = String::new();
    wait_for("the refusal to be logged", Duration::from_secs(10), || {
        line = gateway.process().log_line_containing("authentication failed").unwrap_or_default();
        !line.is_empty()
    });
    let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    assert_eq!(event["level"], "WARN", "{event}");
    assert_eq!(event["uuid"], uuid.to_string(), "{event}");
    assert_eq!(event["reason"], "bad_password", "{event}");
    assert!(event["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1:")), "{event}");
    assert!(event["timestamp"].is_string() && event["message"] == "authentication failed", "{event}");
    for line in gateway.process().stderr().lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "a log line that is not JSON: {line}");
    }

    // Text, to a pipe (not a terminal): no escape sequences.
    let plain = Gateway::start(&[]);
    let _sim = Sim::start_with_password(&plain, "wrong", &["--uuid", &uuid.to_string(), "--exit-on-auth-failure"]);
    let mut line = String::new();
    wait_for("the refusal to be logged", Duration::from_secs(30), || {
        line = plain.process().log_line_containing("authentication failed").unwrap_or_default();
        !line.is_empty()
    });
    assert!(line.contains(&format!("uuid={uuid}")) && line.contains("reason=\"bad_password\""), "{line}");
    assert!(!plain.process().stderr().contains('\u{1b}'), "colour codes in a log written to a pipe");
}
