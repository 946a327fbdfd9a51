//! The health meter end to end, behind NAT for real (network namespaces, needs root): a PC with
//! the Tether agent sits in a home network behind a masquerading router, with a real nftables
//! ruleset of its own; ClamAV's signature database, its scan log, apt's answers and the backup
//! marker come from files in the formats the collectors read. The agent reports; the test
//! flushes the PC's ruleset, the next report turns the machine red with "firewall off", and the
//! contact who asked for alerts gets the mail at a real SMTP server (aiosmtpd) and the JSON at a
//! real HTTPS webhook receiver; the ruleset is restored, the machine is green again, and a
//! resolved notice arrives both ways.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::netns::{Host, Topology};
use e2e::process::last_line;
use e2e::smtp::Smtp;
use e2e::webhook::WebhookReceiver;
use e2e::{bin, wait_for, Gateway, Process};
use time::OffsetDateTime;
use uuid::Uuid;

const ALERT_WAIT: Duration = Duration::from_secs(60);
const SMTP_PORT: u16 = 2525;
const WEBHOOK_PORT: u16 = 8765;

/// The PC's ruleset: input dropped but for loopback and replies.
const RULESET: &str = "table inet filter {
    chain input {
        type filter hook input priority 0; policy drop;
        iif lo accept
        ct state established,related accept
    }
}
";

fn nft_in(topology: &Topology, host: Host, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut command = topology.command(host, "nft");
    command.args(args).stdin(std::process::Stdio::piped());
    let mut child = command.spawn().expect("nft");
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success(), "nft {args:?} in {}", host.name());
}

/// A root the collectors read, in the real formats, all healthy as of now.
fn healthy_pc_files(root: &Path) {
    let now = OffsetDateTime::now_utc();
    let write = |path: &str, text: &str| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n");
    // ClamAV installed and running, signatures of today, a clean full scan this morning.
    write("usr/sbin/clamd", "");
    write("usr/bin/freshclam", "");
    write("proc/401/comm", "clamd\n");
    write("proc/402/comm", "freshclam\n");
    write("proc/stat", &format!("cpu  1 2 3 4\nbtime {}\n", now.unix_timestamp() - 3600));
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let build = format!(
        "{:02} {} {} {:02}-{:02} +0000",
        now.day(),
        months[usize::from(u8::from(now.month())) - 1],
        now.year(),
        now.hour(),
        now.minute()
    );
    let mut header = format!("ClamAV-VDB:{build}:27480:2071234:90:X:X:raynman:{}", now.unix_timestamp());
    header.push_str(&" ".repeat(512 - header.len()));
    write("var/lib/clamav/daily.cld", &header);
    let scanned = now - time::Duration::hours(2);
    let stamp = |t: OffsetDateTime| {
        format!(
            "{}:{:02}:{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    };
    write(
        "var/log/clamav/clamscan.log",
        &format!(
            "\n----------- SCAN SUMMARY -----------\nKnown viruses: 8700000\nEngine version: 1.0.7\n\
             Scanned directories: 4000\nScanned files: 90000\nInfected files: 0\nData scanned: 9000.00 MB\n\
             Time: 900.000 sec (15 m 0 s)\nStart Date: {}\nEnd Date:   {}\n",
            stamp(scanned - time::Duration::minutes(15)),
            stamp(scanned)
        ),
    );
    // apt: nothing pending (the simulation's answer), the last upgrade yesterday.
    write("apt-upgrade.txt", "Reading package lists...\nBuilding dependency tree...\n0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n");
    let yesterday = now - time::Duration::days(1);
    write(
        "var/log/apt/history.log",
        &format!(
            "\nStart-Date: {0}-{1:02}-{2:02}  06:12:01\nCommandline: apt-get -y upgrade\nUpgrade: libc6:amd64 (2.36-9, 2.36-9+deb12u1)\nEnd-Date: {0}-{1:02}-{2:02}  06:12:44\n",
            yesterday.year(),
            u8::from(yesterday.month()),
            yesterday.day()
        ),
    );
    write("backup/last-snapshot", "");
}

#[test]
fn a_pc_whose_firewall_goes_off_turns_red_and_its_contact_is_alerted_then_resolved() {
    let topology = Topology::create_unique("hlth").expect("network namespaces (run as root)");
    let public: IpAddr = Host::Public.ip().parse().unwrap();
    let smtp = Smtp::start_wrapped(SMTP_PORT, |c| topology.wrap(Host::Public, c));
    let hook = WebhookReceiver::start(public, WEBHOOK_PORT, |c| topology.wrap(Host::Public, c));
    let config = format!(
        "[agents]\nheartbeat_secs = 5\n[webhooks]\nca_file = {ca:?}\n[mail]\nsmtp_host = \"127.0.0.1\"\n\
         smtp_port = {SMTP_PORT}\nsecurity = \"none\"\nfrom = \"Tether <tether@gw.example>\"\n\
         poll_interval_secs = 1\nretry_base_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\n",
        ca = hook.ca_path().display().to_string()
    );
    let gateway = Gateway::start_at(Host::Public.ip(), &config, &[], |c| topology.wrap(Host::Public, c));

    // Olga's subscription, Carl her contact who wants every change, by mail and webhook.
    gateway.operator_with_stdin(
        &["user", "add", "olga", "--email", "olga@example.com", "--password-stdin"],
        "pw-olga-long-enough\n",
    );
    let out = gateway.operator(&[
        "subscriber",
        "register",
        "--owner",
        "olga",
        "--name",
        "Olga's Bakery",
        "--email",
        "olga@example.com",
    ]);
    let subscriber = out.split_whitespace().nth(1).unwrap().to_string();
    gateway.operator_with_stdin(
        &["user", "add", "carl", "--email", "carl@example.com", "--password-stdin"],
        "pw-carl-long-enough\n",
    );
    let invited = gateway.operator(&["contact", "invite", &subscriber, "carl@example.com"]);
    let guid = last_line(&invited).unwrap().to_string();
    gateway.operator(&[
        "contact",
        "accept",
        &guid,
        "--user",
        "carl",
        "--terms",
        "2026-01",
        "--alerts",
        "red,yellow,green",
        "--webhook",
        hook.url(),
    ]);
    let enrolled = gateway.operator(&["machine", "enroll", &subscriber, "--nickname", "front desk"]);
    let token = last_line(&enrolled).unwrap().to_string();

    // The PC behind NAT: its ruleset, its files, its agent.
    nft_in(&topology, Host::Home, &["-f", "-"], Some(RULESET));
    let root = tempfile::tempdir().unwrap();
    healthy_pc_files(root.path());
    let state = tempfile::tempdir().unwrap();
    let r = root.path().display().to_string();
    std::fs::write(
        state.path().join("agent.toml"),
        format!(
            "root = {r:?}\nproc_dir = \"/proc\"\napt_get = [\"sh\", \"-c\", \"cat {r}/apt-upgrade.txt\", \"apt-get\"]\n\
             backup_marker = \"/backup/last-snapshot\"\n"
        ),
    )
    .unwrap();
    let uuid = Uuid::new_v4();
    let agent = |args: &[&str]| {
        let mut command = Command::new(bin("tether-agent"));
        command.arg("--state-dir").arg(state.path()).args(args);
        topology.wrap(Host::Home, command)
    };
    let gateway_addr = gateway.agent_addr().to_string();
    let ca = gateway.ca_path().display().to_string();
    let out =
        agent(&["enroll", "--gateway", &gateway_addr, "--token", &token, "--ca", &ca, "--uuid", &uuid.to_string()])
            .output()
            .unwrap();
    assert!(out.status.success(), "enroll: {}", String::from_utf8_lossy(&out.stderr));
    let mut run = agent(&["run"]);
    run.env("RUST_LOG", "info");
    let mut running = Process::spawn("tether-agent run (home)", &mut run);

    // Green first: nobody is alerted of a machine that is fine.
    std::thread::sleep(Duration::from_secs(12));
    assert!(hook.posts().is_empty(), "no alert while green: {:?}\nagent: {}", hook.posts(), running.tail());

    // The PC user (or malware) turns the firewall off.
    nft_in(&topology, Host::Home, &["flush", "ruleset"], None);
    let raised = hook.wait_for("about the machine turning red", ALERT_WAIT, |b| b["health"] == "red");
    let body = &raised["body"];
    assert_eq!(raised["content_type"], "application/json");
    assert_eq!(body["event"], "health_changed", "{body}");
    assert_eq!(body["machine_uuid"], uuid.to_string());
    assert_eq!(body["nickname"], "front desk");
    assert_eq!(body["previous"], "green");
    assert_eq!(body["reasons"][0]["code"], "firewall_off", "{body}");
    assert!(body["reasons"][0]["text"].as_str().unwrap().contains("firewall off"), "{body}");
    // Carl's mail: after his invitation, the alert.
    let alert_to_carl = |needle: &str| {
        smtp.messages().into_iter().find(|m| {
            m["rcpt_tos"] == serde_json::json!(["carl@example.com"])
                && m["subject"].as_str().is_some_and(|s| s.to_lowercase().contains(needle))
        })
    };
    wait_for("the alert mail", ALERT_WAIT, || alert_to_carl("is red").is_some());
    let mail = alert_to_carl("is red").unwrap();
    assert!(mail["subject"].as_str().unwrap().contains("front desk"), "{mail}");
    assert!(mail["body"].as_str().unwrap().contains("firewall off"), "{mail}");

    // Nothing more while it stays red.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(hook.posts().len(), 1, "one alert while unchanged: {:?}", hook.posts());

    // Fixed: green again, and a resolved notice both ways.
    nft_in(&topology, Host::Home, &["-f", "-"], Some(RULESET));
    let resolved = hook.wait_for("resolving it", ALERT_WAIT, |b| b["event"] == "resolved");
    assert_eq!(resolved["body"]["health"], "green", "{resolved}");
    wait_for("the resolved mail", ALERT_WAIT, || alert_to_carl("green").is_some());
    assert_eq!(smtp.messages().len(), 3, "the invitation, the alert, the resolved notice: {:?}", smtp.messages());

    // The history is kept: two changes after the first rating, and every delivery recorded.
    let history = gateway.operator(&["mail", "list", "--json"]);
    assert!(history.contains("health_raised") && history.contains("health_resolved"), "{history}");
    running.terminate(Duration::from_secs(10));
}
