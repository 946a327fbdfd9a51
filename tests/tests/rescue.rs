//! The remote-fix workflow end to end, as a technician runs it: `tether rescue` boots a PC behind
//! the gateway from an ISO on the technician's machine (the gateway speaks WS-MAN to the PC's AMT:
//! check, enable SOL and IDE-R, one-time boot, reset), the technician watches the boot on the
//! serial console, and `tether session close` ends it; or the gateway serves a rescue image it
//! publishes as signed content (`--image content:NAME`). The PC is `amt-sim`: WS-MAN with digest
//! auth and power/boot/redirection state, simulated firmware that boots from IDE-R and prints the
//! SHA-256 of what it read, and a shell on its serial console.

use std::time::Duration;

use e2e::remote::{console, exit_of, ider, pc, random_image, Interactive, ADMIN_PASSWORD};
use e2e::{wait_for, Gateway};
use uuid::Uuid;

/// `tether rescue UUID --image ISO --password …` plus `args`, typed into like a terminal.
fn rescue(gateway: &Gateway, uuid: Uuid, iso: &std::path::Path, args: &[&str]) -> Interactive {
    let uuid = uuid.to_string();
    let iso = iso.to_str().unwrap();
    let mut command = gateway.cli_command(&["rescue", &uuid, "--image", iso, "--password", ADMIN_PASSWORD]);
    command.args(args);
    Interactive::spawn("tether rescue", &mut command)
}

/// A technician command that must fail; its stderr.
fn cli_fails(gateway: &Gateway, args: &[&str]) -> String {
    let output = gateway.cli_command(args).stdin(std::process::Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "`tether {}` succeeded:\n{err}", args.join(" "));
    err
}

/// The recorded remote-fix actions of a device: (action, outcome) pairs, oldest first.
fn actions(gateway: &Gateway, uuid: Uuid) -> Vec<(String, String)> {
    let out = gateway.cli(&["actions", &uuid.to_string(), "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut rows: Vec<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["action"].as_str().unwrap().to_owned(), r["outcome"].as_str().unwrap().to_owned()))
        .collect();
    rows.reverse();
    rows
}

#[test]
fn technician_rescues_a_pc_from_an_iso_watches_it_boot_and_closes_the_session() {
    let gateway = Gateway::start(&["--record-sol"]);
    // Redirection off, as on a freshly provisioned PC; firmware that drops and redials its tunnel
    // around the power change, as real firmware often does.
    let (uuid, mut sim) = pc(&gateway, &["--redirection", "disabled", "--redial-on-power-change"]);
    let id = uuid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("rescue.iso");
    let len = 8 << 20;
    let sha = random_image(&iso, len);

    assert_eq!(gateway.cli(&["power", &id, "status", "--password", ADMIN_PASSWORD]).trim(), "on");

    let mut session = rescue(&gateway, uuid, &iso, &[]);
    // The PC reset into the technician's ISO: its firmware read all of it, and the hash shows on
    // the serial console the technician is watching.
    let banner = format!("IDE-R boot: cd read {len} bytes sha256={sha}");
    session.wait_for_screen(&banner, Duration::from_secs(180));
    sim.wait_for_log("power: on -> reset", Duration::from_secs(5));
    // The console is the PC's: the technician works in it.
    session.type_keys(b"echo rescued-$((2*21))\n");
    session.wait_for_screen("rescued-42", Duration::from_secs(30));
    session.type_keys(&[0x1d]);
    let (status, _, err) = exit_of(session, Duration::from_secs(60));
    assert!(status.success(), "tether rescue failed ({status}):\n{err}");
    assert!(err.contains("boot settings restored: UseIDER=false"), "{err}");
    // The firmware dropped its tunnel at the reset, and the rescue carried on after it redialled.
    assert!(sim.count_log_lines("established: ports") >= 2, "the PC never redialled");

    let done = actions(&gateway, uuid);
    for step in ["rescue.start", "rescue.boot", "rescue.finish"] {
        assert!(done.contains(&(step.into(), "ok".into())), "{step} not recorded as ok: {done:?}");
    }
    // SOL and IDE-R stay on until the session ends (the rescue image is still running).
    assert_eq!(sim.count_log_lines("redirection: EnabledState 32768"), 0);

    // The technician ends the remote fix: the tunnel ends and the record says why; the PC dials
    // again on its policy, but technicians are refused until a new session is opened.
    let out =
        gateway.cli(&["session", "close", &id, "--message", "replaced the boot loader", "--password", ADMIN_PASSWORD]);
    assert!(out.contains("tunnel closed"), "{out}");
    // What the rescue changed is put back: redirection as found (off).
    assert!(out.contains("restored"), "{out}");
    sim.wait_for_log("redirection: EnabledState 32768", Duration::from_secs(5));
    // AMT cannot show the PC user a message: it is typed on the PC's serial console.
    let transcripts = gateway.data_dir().join("transcripts").join(&id);
    let shown: String = std::fs::read_dir(&transcripts)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(shown.contains("Tether: replaced the boot loader"), "the message is not on the console:\n{shown}");
    wait_for("the PC to dial again", Duration::from_secs(60), || {
        gateway.is_connected(uuid) && sim.count_log_lines("established: ports") >= 3
    });
    let record = gateway.device_record(uuid).unwrap();
    assert_eq!(record["last_disconnect_reason"], "a technician closed the remote-fix session", "{record}");
    assert!(gateway.metrics_text().contains("tether_tunnels_closed_total{kind=\"cira\",reason=\"session_closed\"} 1"));
    let refused = console(&gateway, uuid, ADMIN_PASSWORD, &[]);
    let (status, _, err) = exit_of(refused, Duration::from_secs(30));
    assert!(!status.success() && err.contains("closed the remote-fix session"), "{err}");
    let err = cli_fails(&gateway, &["power", &id, "status", "--password", ADMIN_PASSWORD]);
    assert!(err.contains("tether session open"), "{err}");
    let close = actions(&gateway, uuid);
    assert!(close.contains(&("session.close".into(), "ok".into())), "{close:?}");

    gateway.cli(&["session", "open", &id]);
    // Redirection was put back as found (off): the refusal says so, and enabling it helps.
    let refused = console(&gateway, uuid, ADMIN_PASSWORD, &[]);
    let (_, _, err) = exit_of(refused, Duration::from_secs(30));
    assert!(err.contains("disabled (`tether redirection"), "{err}");
    gateway.cli(&["redirection", &id, "enable", "--password", ADMIN_PASSWORD]);
    let mut again = console(&gateway, uuid, ADMIN_PASSWORD, &[]);
    again.type_keys(b"echo back-$((3*3))\n");
    again.wait_for_screen("back-9", Duration::from_secs(30));
    again.type_keys(&[0x1d]);
    let (status, _, err) = exit_of(again, Duration::from_secs(30));
    assert!(status.success(), "{err}");
}

#[test]
fn technician_types_the_consent_code_the_pc_user_reads_out() {
    let gateway = Gateway::start(&[]);
    let (uuid, mut sim) = pc(&gateway, &["--consent", "--redirection", "disabled"]);
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("rescue.iso");
    let len = 1 << 20;
    let sha = random_image(&iso, len);

    let mut session = rescue(&gateway, uuid, &iso, &["--disable-redirection"]);
    session.process.wait_for_log("type it here", Duration::from_secs(60));
    // The PC user reads the code off their screen (amt-sim prints it on its console).
    let line = sim.wait_for_log("consent code", Duration::from_secs(10));
    let code: String = line.rsplit(':').next().unwrap().chars().filter(char::is_ascii_digit).collect();
    assert_eq!(code.len(), 6, "{line}");
    session.type_keys(format!("{code}\n").as_bytes());
    session.wait_for_screen(&format!("IDE-R boot: cd read {len} bytes sha256={sha}"), Duration::from_secs(180));
    session.type_keys(&[0x1d]);
    let (status, _, err) = exit_of(session, Duration::from_secs(60));
    assert!(status.success(), "tether rescue failed ({status}):\n{err}");
    let done = actions(&gateway, uuid);
    assert!(done.contains(&("consent.code".into(), "ok".into())), "{done:?}");
    // With --disable-redirection, SOL and IDE-R are off again, as they were found.
    sim.wait_for_log("redirection: EnabledState 32768", Duration::from_secs(5));
    assert!(err.contains("and redirection as found"), "{err}");
}

#[test]
fn technician_controls_power_and_amt_refuses_off_during_a_console_session() {
    let gateway = Gateway::start(&[]);
    let (uuid, mut sim) = pc(&gateway, &[]);
    let id = uuid.to_string();
    let power = |action: &str| gateway.cli(&["power", &id, action, "--password", ADMIN_PASSWORD]);

    // A wrong password is the device's refusal, named as such.
    let err = cli_fails(&gateway, &["power", &id, "status", "--password", "nope"]);
    assert!(err.contains("refused the AMT credentials"), "{err}");

    // Remembered once, sealed at rest; later calls need no password.
    gateway.cli(&["power", &id, "status", "--password", ADMIN_PASSWORD, "--remember"]);
    assert_eq!(gateway.cli(&["power", &id, "status"]).trim(), "on");
    gateway.cli(&["amt", "forget", &id]);
    let err = cli_fails(&gateway, &["power", &id, "status"]);
    assert!(err.contains("none is remembered"), "{err}");
    gateway.cli(&["power", &id, "status", "--password", ADMIN_PASSWORD, "--remember"]);
    for file in ["tether.db", "tether.db-wal"] {
        let data = std::fs::read(gateway.data_dir().join(file)).unwrap_or_default();
        let clear = data.windows(ADMIN_PASSWORD.len()).any(|w| w == ADMIN_PASSWORD.as_bytes());
        assert!(!clear, "the AMT password is stored in clear in {file}");
    }

    assert!(power("off").contains("off: done"));
    sim.wait_for_log("power: on -> off", Duration::from_secs(10));
    assert_eq!(power("status").trim(), "off");
    power("on");
    sim.wait_for_log("power: off -> on", Duration::from_secs(10));
    power("cycle");
    sim.wait_for_log("power: on -> cycle", Duration::from_secs(10));

    // While a SOL session is open AMT refuses off (and cycle) but resets.
    let mut held = console(&gateway, uuid, ADMIN_PASSWORD, &[]);
    held.process.wait_for_log("Serial-over-LAN on", Duration::from_secs(30));
    let err = cli_fails(&gateway, &["power", &id, "off"]);
    assert!(err.contains("ReturnValue 2") && err.contains("SOL or IDE-R session is open"), "{err}");
    power("reset");
    held.type_keys(&[0x1d]);
    let _ = exit_of(held, Duration::from_secs(30));

    let out = gateway.cli(&["boot", &id, "--ider", "cd", "--sol"]);
    assert!(out.contains("next boot: UseIDER=true IDERBootDevice=1 UseSOL=true"), "{out}");
    gateway.cli(&["redirection", &id, "disable"]);
    sim.wait_for_log("EnabledState 32768", Duration::from_secs(10));

    let done = actions(&gateway, uuid);
    let names: Vec<&str> = done.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        names,
        [
            "amt.forget",
            "power.off",
            "power.on",
            "power.cycle",
            "power.off",
            "power.reset",
            "boot",
            "redirection.disable"
        ],
        "{done:?}"
    );
    assert_eq!(done[4].1, "refused", "{done:?}");
    let metrics = gateway.metrics_text();
    assert!(metrics.contains("tether_amt_actions_total{action=\"power\",outcome=\"refused\"} 1"), "{metrics}");
    assert!(metrics.contains("tether_amt_actions_total{action=\"power\",outcome=\"ok\"} 4"), "{metrics}");
}

#[test]
fn a_pc_user_who_asked_for_help_is_left_alone_after_the_session_closes_until_they_ask_again() {
    let gateway = Gateway::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let help = dir.path().join("remote-help");
    std::fs::write(&help, "").unwrap();
    let (uuid, mut sim) = pc(&gateway, &["--user-initiated", "--remote-help-file", help.to_str().unwrap()]);
    let id = uuid.to_string();

    let out = gateway.cli(&["session", "close", &id, "--message", "all done"]);
    assert!(out.contains("used up"), "{out}");
    sim.wait_for_log("remote help ended by the gateway", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(5));
    assert!(!gateway.is_connected(uuid), "the PC dialled again without its user asking");

    // The user asks again: the PC dials, and technicians may reach it without a new session.
    std::fs::write(&help, "").unwrap();
    wait_for("the PC to dial again", Duration::from_secs(60), || gateway.is_connected(uuid));
    let mut console = console(&gateway, uuid, ADMIN_PASSWORD, &[]);
    console.type_keys(b"echo help-$((5+5))\n");
    console.wait_for_screen("help-10", Duration::from_secs(30));
    console.type_keys(&[0x1d]);
    let (status, _, err) = exit_of(console, Duration::from_secs(30));
    assert!(status.success(), "{err}");
}

#[test]
fn the_gateway_speaks_tls_to_a_pc_that_forwards_only_16993_and_pins_its_certificate() {
    let gateway = Gateway::start(&[]);
    // Firmware from CSME 16.1 on: no 16992 for remote consoles, TLS with its own certificate.
    let (uuid, mut sim) = pc(&gateway, &["--tls-only"]);
    let id = uuid.to_string();
    assert_eq!(gateway.cli(&["power", &id, "status", "--password", ADMIN_PASSWORD]).trim(), "on");
    let pinned = gateway.process().log_line_containing("pinned the device's WS-MAN TLS certificate");
    assert!(pinned.is_some(), "the certificate was not pinned:\n{}", gateway.process().tail());
    // Later calls present the pinned certificate again and work.
    assert!(gateway.cli(&["power", &id, "off", "--password", ADMIN_PASSWORD]).contains("off: done"));
    sim.wait_for_log("power: on -> off", Duration::from_secs(10));
    assert_eq!(sim.count_log_lines("16992 request"), 0, "WS-MAN went over the plain port");
}

/// `tether content publish NAME FILE --kind KIND` on the gateway's data dir (role `all`
/// publishes its own signed content).
fn publish(gateway: &Gateway, name: &str, file: &std::path::Path, kind: &str) {
    gateway.operator(&["content", "publish", name, file.to_str().unwrap(), "--kind", kind]);
}

#[test]
fn technician_has_the_gateway_serve_a_published_rescue_image_and_the_pc_boots_it() {
    let gateway = Gateway::start(&[]);
    // Firmware that drops and redials its tunnel around the reset, as real firmware often does:
    // the gateway opens IDE-R again once it is back.
    let (uuid, mut sim) = pc(&gateway, &["--redirection", "disabled", "--redial-on-power-change"]);
    let id = uuid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("rescue.iso");
    let len = 64 << 20;
    let sha = random_image(&iso, len);
    publish(&gateway, "rescue-64", &iso, "rescue-image");
    // The ISO is the gateway's now: nothing is served from the technician's machine.
    std::fs::remove_file(&iso).unwrap();

    let mut command =
        gateway.cli_command(&["rescue", &id, "--image", "content:rescue-64", "--password", ADMIN_PASSWORD]);
    let mut session = Interactive::spawn("tether rescue", &mut command);
    // The PC reset into the gateway's image: its firmware read all of it, and the hash shows on
    // the serial console the technician is watching.
    let banner = format!("IDE-R boot: cd read {len} bytes sha256={sha}");
    sim.wait_for_log(&banner, Duration::from_secs(240));
    session.wait_for_screen(&banner, Duration::from_secs(30));
    sim.wait_for_log("power: on -> reset", Duration::from_secs(5));
    session.type_keys(b"echo rescued-$((6*7))\n");
    session.wait_for_screen("rescued-42", Duration::from_secs(30));
    // The technician sees how far the gateway got.
    session.process.wait_for_log("the gateway served 64.00 MiB of 64.00 MiB", Duration::from_secs(10));
    session.type_keys(&[0x1d]);
    let (status, _, err) = exit_of(session, Duration::from_secs(60));
    assert!(status.success(), "tether rescue failed ({status}):\n{err}");
    assert!(err.contains(&format!("rescue-64 (SHA-256 {sha}")), "{err}");
    assert!(err.contains("boot settings restored: UseIDER=false"), "{err}");
    assert!(sim.count_log_lines("established: ports") >= 2, "the PC never redialled");

    // Stopped with the rescue, which said what the gateway had served.
    assert!(err.contains("rescue ended; served 64.00 MiB over IDE-R"), "{err}");
    let done = actions(&gateway, uuid);
    for step in ["rescue.start", "ider.start", "rescue.boot", "ider.stop", "rescue.finish"] {
        assert!(done.contains(&(step.into(), "ok".into())), "{step} not recorded as ok: {done:?}");
    }
    // The gateway's IDE-R sessions are recorded like a technician's relays.
    let rows: serde_json::Value =
        serde_json::from_str(&gateway.cli(&["redirections", &id, "--json"])).expect("redirections as JSON");
    let served = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "ider" && r["technician"].as_str().unwrap_or("").ends_with("(served by the gateway)"))
        .count();
    assert!(served >= 2, "the IDE-R sessions before and after the redial are not recorded: {rows}");
}

#[test]
fn the_gateway_serves_only_published_rescue_images_and_tether_ider_stops_what_it_serves() {
    let gateway = Gateway::start(&[]);
    // Firmware that boots from IDE-R as soon as it is enabled.
    let (uuid, mut sim) = pc(&gateway, &["--boot-ider"]);
    let id = uuid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fix.sh");
    std::fs::write(&script, "#!/bin/sh\necho fixed\n").unwrap();
    publish(&gateway, "fix-script", &script, "script");
    let iso = dir.path().join("small.iso");
    let len = 4 << 20;
    let sha = random_image(&iso, len);
    publish(&gateway, "small-rescue", &iso, "rescue-image");

    // What is not a published rescue image is refused, saying why.
    for (image, says) in [
        ("content:fix-script", "not a rescue image"),
        ("content:nothing-here", "no content item \"nothing-here\" is published"),
    ] {
        let output = gateway
            .cli_command(&["ider", &id, "--password", ADMIN_PASSWORD, "--image", image])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && err.contains(says), "--image {image}:\n{err}");
    }
    let err = cli_fails(&gateway, &["rescue", &id, "--image", "content:fix-script", "--password", ADMIN_PASSWORD]);
    assert!(err.contains("not a rescue image"), "{err}");
    assert_eq!(sim.count_log_lines("IDE-R boot: starting"), 0, "something was served");

    let mut serving = ider(&gateway, uuid, ADMIN_PASSWORD, &["--image", "content:small-rescue"]);
    sim.wait_for_log(&format!("IDE-R boot: cd read {len} bytes sha256={sha}"), Duration::from_secs(120));
    // One session per device: a second one is refused while the first serves.
    let err = cli_fails(&gateway, &["ider", &id, "--password", ADMIN_PASSWORD, "--image", "content:small-rescue"]);
    assert!(err.contains("already serving \"small-rescue\""), "{err}");
    serving.signal("INT");
    let status = serving.terminate(Duration::from_secs(30));
    let summary = serving.stderr();
    assert!(status.success(), "tether ider failed ({status}):\n{summary}");
    assert!(summary.contains(&format!("small-rescue (SHA-256 {sha}, 4.00 MiB): 4.00 MiB served")), "{summary}");
    let done = actions(&gateway, uuid);
    assert!(done.contains(&("ider.stop".into(), "ok".into())), "{done:?}");
    assert!(done.contains(&("ider.start".into(), "refused".into())), "{done:?}");
}
