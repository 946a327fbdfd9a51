//! The remote-fix workflow: a technician watches a PC's serial console (Serial-over-LAN) and serves
//! it a rescue image (IDE-R), through the gateway, with Debian's amtterm and with `tether console`
//! and `tether ider`, against `amt-sim`'s redirection service (a real shell on a pseudo-terminal,
//! and simulated firmware that boots from IDE-R and prints the SHA-256 of what it read).
//!
//! Figures (printed as `FIGURE …` lines, collected in docs/performance.md): IDE-R throughput with
//! firmware-sized and large device windows, SOL keystroke-to-echo round trip.

use std::time::{Duration, Instant};

use e2e::remote::{
    amtterm, console, exit_of, ider, pc, random_image, require_amtterm, Interactive, TlsFront, ADMIN_PASSWORD,
};
use e2e::Gateway;
use protocols::redir::{Message, SessionType};
use tether_gateway::redirect::{self, Account, Endpoint};

#[test]
fn technician_runs_a_shell_command_in_amtterm_through_the_gateway() {
    require_amtterm();
    let gateway = Gateway::start(&[]);
    let (uuid, _sim) = pc(&gateway, &[]);
    let forward = gateway.forward(uuid, 16994);

    let mut term = amtterm(forward.addr(), "admin", ADMIN_PASSWORD);
    term.wait_for_screen("serial-over-lan redirection ok", Duration::from_secs(30));
    // amtterm sends Enter as CR; the PC's terminal turns it into a newline for the shell.
    term.type_keys(b"echo tether-$((6*7))\r");
    term.wait_for_screen("tether-42", Duration::from_secs(20));
    term.type_keys(&[0x1d]);
    let (status, screen, _) = exit_of(term, Duration::from_secs(15));
    assert!(status.success(), "amtterm failed ({status}):\n{screen}");
    assert!(screen.contains("CLOSED") || screen.contains("redirection shutdown"), "amtterm did not close:\n{screen}");

    // A wrong admin password: the PC refuses it and amtterm says so.
    let mut wrong = amtterm(forward.addr(), "admin", "not-the-password");
    let screen = wrong.wait_for_screen("authentication", Duration::from_secs(30));
    let (_, screen_after, _) = exit_of(wrong, Duration::from_secs(30));
    let screen = if screen_after.len() > screen.len() { screen_after } else { screen };
    assert!(screen.contains("ERROR") || screen.contains("fail"), "amtterm did not report the refusal:\n{screen}");
    assert!(!screen.contains("redirection ok"), "a wrong password opened SOL:\n{screen}");
}

#[test]
fn technician_uses_tether_console_and_a_second_one_is_told_who_holds_sol() {
    let gateway = Gateway::start(&["--record-sol"]);
    let (uuid, _sim) = pc(&gateway, &[]);

    let mut first = console(&gateway, uuid, ADMIN_PASSWORD, &[]);
    first.process.wait_for_log("Serial-over-LAN on", Duration::from_secs(30));
    first.type_keys(b"echo console-$((20+3))\n");
    first.wait_for_screen("console-23", Duration::from_secs(20));

    // A second technician asks for SOL while the first holds it: a clear refusal, no hang.
    let second = console(&gateway, uuid, ADMIN_PASSWORD, &[]);
    let (status, _, err) = exit_of(second, Duration::from_secs(30));
    assert!(!status.success(), "a second SOL session was opened:\n{err}");
    assert!(
        err.contains("already open") && err.contains("held by e2e-"),
        "the refusal does not name the holder:\n{err}"
    );
    assert!(err.contains(" since "), "the refusal does not say since when:\n{err}");

    // Ctrl-] quits the first; SOL is free again afterwards.
    first.type_keys(&[0x1d]);
    let (status, _, err) = exit_of(first, Duration::from_secs(15));
    assert!(status.success(), "tether console failed ({status}):\n{err}");
    assert!(err.contains("ended (Ctrl-])"), "{err}");

    // A wrong password is refused with a message naming the account.
    let wrong = console(&gateway, uuid, "wrong-password", &[]);
    let (status, _, err) = exit_of(wrong, Duration::from_secs(30));
    assert!(!status.success());
    assert!(err.contains("refused the AMT credentials of user \"admin\""), "{err}");

    let mut again = console(&gateway, uuid, ADMIN_PASSWORD, &[]);
    again.type_keys(b"echo again-$((1+1))\n");
    again.wait_for_screen("again-2", Duration::from_secs(30));
    again.close_stdin();
    let (status, _, err) = exit_of(again, Duration::from_secs(15));
    assert!(status.success(), "{err}");
    assert!(err.contains("ended (end of input)"), "{err}");

    // The gateway saw it all without taking part: who used SOL, as which AMT user, for how long,
    // and (with --record-sol) what was typed and shown.
    let rows: serde_json::Value =
        serde_json::from_str(&gateway.cli(&["redirections", &uuid.to_string(), "--json"])).unwrap();
    let rows = rows.as_array().unwrap();
    let outcome = |o: &str| rows.iter().filter(|r| r["outcome"] == o).count();
    assert_eq!(outcome("ended"), 2, "{rows:#?}");
    assert_eq!(outcome("refused_in_use"), 1, "{rows:#?}");
    assert_eq!(outcome("auth_failed"), 1, "{rows:#?}");
    let first = rows.iter().rev().find(|r| r["outcome"] == "ended").unwrap();
    assert_eq!(first["kind"], "sol");
    assert_eq!(first["device_user"], "admin");
    assert!(first["technician"].as_str().unwrap().starts_with("e2e-"), "{first}");
    assert!(first["ended_at"].is_string() && first["duration_ms"].as_u64().is_some(), "{first}");
    let metrics = gateway.metrics_text();
    assert!(metrics.contains("tether_redirection_sessions_total{kind=\"sol\"} 4"), "{metrics}");
    assert!(metrics.contains("tether_redirection_auth_failures_total 1"), "{metrics}");
    let transcripts = gateway.data_dir().join("transcripts").join(uuid.to_string());
    let casts: Vec<_> = std::fs::read_dir(&transcripts).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(casts.len(), 2, "one transcript per SOL session: {casts:?}");
    let all: String = casts.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    assert!(all.contains("console-23") && all.contains("again-2"), "{all}");
}

/// Serves a random ISO of `mib` MiB with `tether ider` to a PC whose firmware boots from it
/// (amt-sim `--boot-ider`, plus `sim_args`), watching the PC's console for the SHA-256 of what
/// its firmware read. Returns the seconds from the start of serving to the hash on the console.
fn boot_from_ider(mib: usize, sim_args: &[&str], label: &str) -> f64 {
    let gateway = Gateway::start(&[]);
    let mut args = vec!["--boot-ider"];
    args.extend_from_slice(sim_args);
    let (uuid, _sim) = pc(&gateway, &args);
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("rescue.iso");
    let sha = random_image(&iso, mib << 20);

    let mut screen = console(&gateway, uuid, ADMIN_PASSWORD, &[]);
    screen.process.wait_for_log("Serial-over-LAN on", Duration::from_secs(30));
    let started = Instant::now();
    let mut serving = ider(&gateway, uuid, ADMIN_PASSWORD, &["--image", iso.to_str().unwrap()]);
    let expected = format!("IDE-R boot: cd read {} bytes sha256=", mib << 20);
    let shown = screen.wait_for_screen(&expected, Duration::from_secs(300));
    let seconds = started.elapsed().as_secs_f64();
    let line = shown.lines().find(|l| l.contains(&expected)).unwrap();
    assert!(line.contains(&format!("sha256={sha}")), "the firmware read something else than {sha}:\n{line}");

    serving.signal("INT");
    let status = serving.terminate(Duration::from_secs(10));
    let summary = serving.stderr();
    assert!(status.success(), "tether ider failed ({status}):\n{summary}");
    assert!(summary.contains(&format!("({} bytes)", mib << 20)), "no summary of what was served:\n{summary}");
    println!("FIGURE IDE-R {mib} MiB through the gateway, {label}: {seconds:.2} s, {:.1} MiB/s", mib as f64 / seconds);
    screen.type_keys(&[0x1d]);
    seconds
}

#[test]
fn pc_boots_a_64_mib_rescue_iso_served_by_tether_ider() {
    // Firmware's windows: 4 KiB per channel, granted back in 512-byte steps (amt-sim's defaults).
    boot_from_ider(64, &[], "firmware windows (4 KiB, 512 B steps)");
}

#[test]
fn ider_throughput_with_large_device_windows() {
    boot_from_ider(64, &["--window", "1048576", "--adjust-step", "262144"], "large windows (1 MiB, 256 KiB steps)");
}

#[test]
fn sol_keystroke_round_trip_through_the_gateway() {
    const SAMPLES: usize = 200;
    let gateway = Gateway::start(&[]);
    let (uuid, _sim) = pc(&gateway, &["--sol-shell", "/bin/cat"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut rtts = runtime.block_on(async {
        let client =
            tether_gateway::client::ApiClient::new(&gateway.api_url(), gateway.token(), &gateway.ca_path(), None)
                .unwrap();
        let endpoint = Endpoint::Relay { client, uuid, port: 16994 };
        let account = Account { username: "admin".into(), password: ADMIN_PASSWORD.into() };
        let mut session = redirect::open(&endpoint, SessionType::Sol, &account).await.unwrap();
        let settings = redirect::console::settings();
        session.writer.send(&Message::StartSol { seq: 0, settings }).await.unwrap();
        let reply = session.expect("the SOL start reply").await.unwrap();
        assert!(matches!(reply, Message::StartSolReply { status: 0, .. }), "{reply:?}");
        let mut rtts = Vec::with_capacity(SAMPLES);
        for i in 0..SAMPLES {
            // `cat` on a terminal echoes each key (the terminal's echo) as it arrives.
            let key = b'a' + (i % 26) as u8;
            let sent = Instant::now();
            let data = bytes::Bytes::copy_from_slice(&[key]);
            session.writer.send(&Message::SolDataToHost { seq: i as u32 + 1, data }).await.unwrap();
            loop {
                let message = tokio::time::timeout(Duration::from_secs(10), session.reader.next())
                    .await
                    .expect("an echo within 10 s")
                    .unwrap()
                    .expect("the session open");
                if let Message::SolDataFromHost { data, .. } = message {
                    if data.contains(&key) {
                        break;
                    }
                }
            }
            rtts.push(sent.elapsed());
        }
        session.writer.send(&Message::EndSol { seq: SAMPLES as u32 + 1 }).await.unwrap();
        redirect::finish(&mut session.writer).await;
        rtts
    });
    rtts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "FIGURE SOL keystroke-to-echo through the gateway ({SAMPLES} keys): median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(rtts[SAMPLES / 2]),
        ms(rtts[SAMPLES * 99 / 100]),
        ms(rtts[SAMPLES - 1])
    );
    assert_eq!(rtts.len(), SAMPLES);
}

#[test]
fn technician_reaches_a_lan_pc_directly_and_its_certificate_is_pinned() {
    // The PC's 16995 on the LAN: TLS with its own certificate in front of its redirection service
    // (here reached through `tether forward`; what matters is the TLS and the pin).
    let gateway = Gateway::start(&[]);
    let (uuid, _sim) = pc(&gateway, &[]);
    let forward = gateway.forward(uuid, 16994);
    let front = TlsFront::start("127.0.0.1:0".parse().unwrap(), forward.addr());
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_devices");
    let port = front.addr().port().to_string();
    let direct = |extra: &[&str]| {
        let mut command = std::process::Command::new(e2e::bin("tether"));
        command
            .args(["console", "--direct", "127.0.0.1", "--port", &port])
            .args(["--password", ADMIN_PASSWORD, "--known-devices", known.to_str().unwrap()])
            .args(extra);
        Interactive::spawn("tether console --direct", &mut command)
    };

    let mut first = direct(&[]);
    first.type_keys(b"echo direct-$((3*3))\n");
    first.wait_for_screen("direct-9", Duration::from_secs(30));
    first.type_keys(&[0x1d]);
    let (status, _, err) = exit_of(first, Duration::from_secs(15));
    assert!(status.success(), "{err}");
    assert!(err.contains("pinned the certificate of 127.0.0.1:"), "{err}");
    let pins = std::fs::read_to_string(&known).unwrap();
    assert_eq!(pins.lines().count(), 1, "{pins}");

    // The same PC again: the pin holds, nothing new is written.
    let mut second = direct(&[]);
    second.process.wait_for_log("Serial-over-LAN on", Duration::from_secs(30));
    second.type_keys(&[0x1d]);
    let (status, _, err) = exit_of(second, Duration::from_secs(15));
    assert!(status.success(), "{err}");
    assert_eq!(std::fs::read_to_string(&known).unwrap(), pins);

    // Another certificate at the same address: refused, with what to do about it.
    let addr = front.addr();
    drop(front);
    let _impostor = TlsFront::start(addr, forward.addr());
    let third = direct(&[]);
    let (status, _, err) = exit_of(third, Duration::from_secs(30));
    assert!(!status.success(), "a changed certificate was accepted:\n{err}");
    assert!(err.contains("was pinned for it") && err.contains("delete the line"), "{err}");
}
