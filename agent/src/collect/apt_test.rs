use std::time::Duration;

use super::*;

/// `LC_ALL=C apt-get -s -o Debug::NoLocking=1 upgrade` on Debian 12 (shortened).
const SIMULATION: &str = "\
NOTE: This is only a simulation!
      apt-get needs root privileges for real execution.
      Keep also in mind that locking is deactivated,
      so don't depend on the relevance to the real current situation!
Reading package lists...
Building dependency tree...
Reading state information...
Calculating upgrade...
The following packages will be upgraded:
  bash libgcrypt20 libgcrypt20-dev liblzma5 libssl3
5 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.
Inst bash [5.2.15-2+b8] (5.2.15-2+b13 Debian:12.15/oldstable [amd64])
Inst libgcrypt20-dev [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64]) []
Inst libgcrypt20 [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64])
Inst liblzma5 [5.4.1-1] (5.4.1-1+deb12u2 Debian-Security:12/oldstable-security [amd64])
Inst libssl3 [3.0.11-1] (3.0.13-1~deb12u1 Debian-Security:12/stable-security [amd64])
Conf bash (5.2.15-2+b13 Debian:12.15/oldstable [amd64])
Conf libgcrypt20 (1.10.1-3+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64])
Conf liblzma5 (5.4.1-1+deb12u2 Debian-Security:12/oldstable-security [amd64])
Conf libssl3 (3.0.13-1~deb12u1 Debian-Security:12/stable-security [amd64])
";

#[test]
fn simulation_counts_pending_and_security() {
    let pending = parse_simulation(SIMULATION);
    assert_eq!(pending.all, 5);
    assert_eq!(pending.security, ["libgcrypt20", "libgcrypt20-dev", "liblzma5", "libssl3"]);
    let ubuntu = "Inst libc6 [2.35-0ubuntu3.4] (2.35-0ubuntu3.5 Ubuntu:22.04/jammy-updates, Ubuntu:22.04/jammy-security [amd64])\n";
    assert_eq!(parse_simulation(ubuntu).security, ["libc6"]);
    // A package whose name mentions "security" is not a security update by that.
    let named = "Inst apparmor-security-x [1] (2 Debian:12.15/oldstable [amd64])\n";
    assert_eq!(parse_simulation(named), Pending { all: 1, security: vec![] });
    assert_eq!(
        parse_simulation("0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n"),
        Pending::default()
    );
    assert_eq!(parse_simulation("Inst \nInst"), Pending::default());
}

/// `/var/log/apt/history.log`: a good run, a failed one, and a good one before a failed one.
const HISTORY: &str = "
Start-Date: 2026-11-02  09:00:00
Commandline: apt-get install -y expect
Install: expect:amd64 (5.45.4-2+b1)
End-Date: 2026-11-02  09:00:00

Start-Date: 2026-11-30  06:12:02
Commandline: apt-get -y upgrade
Upgrade: libssl3:amd64 (3.0.11-1, 3.0.13-1~deb12u1)
End-Date: 2026-11-30  06:12:44

Start-Date: 2026-12-01  06:00:00
Commandline: apt-get -y upgrade
Upgrade: linux-image-amd64:amd64 (6.1.0-1, 6.1.0-2)
Error: Sub-process /usr/bin/dpkg returned an error code (1)
End-Date: 2026-12-01  06:01:00
";

#[test]
fn last_success_skips_failed_runs() {
    assert_eq!(last_success(HISTORY), Some(1_796_019_164));
    let first = &HISTORY[..HISTORY.find("Start-Date: 2026-11-30").unwrap()];
    assert_eq!(last_success(first), Some(1_793_610_000));
    assert_eq!(last_success(""), None);
    assert_eq!(last_success("End-Date: yesterday\nEnd-Date: 2026-13-01  00:00:00\n"), None);
}

#[test]
fn security_pending_since_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/security-pending.json");
    let pkgs = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(remember_security(&state, &pkgs(&[]), 100), None);
    assert_eq!(remember_security(&state, &pkgs(&["libssl3"]), 1000), Some(1000));
    assert_eq!(remember_security(&state, &pkgs(&["libssl3", "liblzma5"]), 2000), Some(1000));
    // libssl3 installed: the oldest still pending is liblzma5.
    assert_eq!(remember_security(&state, &pkgs(&["liblzma5"]), 3000), Some(2000));
    assert_eq!(remember_security(&state, &pkgs(&[]), 4000), None);
    assert_eq!(remember_security(&state, &pkgs(&["liblzma5"]), 5000), Some(5000));
    // A corrupt state file starts afresh.
    std::fs::write(&state, b"{not json").unwrap();
    assert_eq!(remember_security(&state, &pkgs(&["liblzma5"]), 6000), Some(6000));
    assert_eq!(remember_security(&state, &pkgs(&["liblzma5"]), 7000), Some(6000));
    // A state file that cannot be written still gives an answer.
    let unwritable = dir.path().join("file-not-dir");
    std::fs::write(&unwritable, b"").unwrap();
    assert_eq!(remember_security(&unwritable.join("state.json"), &pkgs(&["x"]), 8000), Some(8000));
}

fn limits() -> Limits {
    Limits { timeout: Duration::from_secs(5), max_stdout: 1 << 20 }
}

#[tokio::test]
async fn no_apt_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let apt_get = vec!["/nonexistent/apt-get".to_string()];
    let sources = AptSources {
        root: dir.path(),
        apt_get: &apt_get,
        history_log: Path::new("/var/log/apt/history.log"),
        state_file: &dir.path().join("state.json"),
    };
    assert_eq!(collect(&sources, limits(), 0).await, Reading::unknown("apt-get is not installed"));
}

#[cfg(unix)]
#[tokio::test]
async fn updates_from_a_simulation_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("simulation.txt");
    std::fs::write(&fixture, SIMULATION).unwrap();
    let history = dir.path().join("var/log/apt/history.log");
    std::fs::create_dir_all(history.parent().unwrap()).unwrap();
    std::fs::write(&history, HISTORY).unwrap();
    // A stand-in apt-get that prints the fixture, whatever its arguments.
    let script = format!("cat '{}'", fixture.display());
    let apt_get = vec!["sh".to_string(), "-c".to_string(), script, "apt-get".to_string()];
    let sources = AptSources {
        root: dir.path(),
        apt_get: &apt_get,
        history_log: Path::new("/var/log/apt/history.log"),
        state_file: &dir.path().join("state.json"),
    };
    assert_eq!(
        collect(&sources, limits(), 1_796_100_000).await,
        Reading::Value(Updates {
            pending: 5,
            security_pending: 4,
            security_pending_since: Some(1_796_100_000),
            last_success: Some(1_796_019_164),
        })
    );
}
