//! A real SMTP server for the mail tests: PyPI `aiosmtpd` (from scripts/install-test-deps.sh) on
//! a loopback port, with a small handler (written by the test) that saves each message as JSON
//! in a directory. It is started by the interpreter's real path, not the pyenv shim, so that the
//! PID the test holds (and kills on drop) is the server's own (TESTBED.md, "SMTP for mail tests").
//! Used by `tests/mail.rs` and `tests/portal_browser.rs`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{poll_until, wait_for, Gateway, Process};

/// How long a mail may take to arrive.
pub const ARRIVAL: Duration = Duration::from_secs(30);

/// Saves every message as `N.json`: envelope, headers and the decoded text body.
const HANDLER: &str = r#"
import email, email.policy, json, os, sys, threading
from aiosmtpd.controller import Controller

out, port = sys.argv[1], int(sys.argv[2])

class Save:
    def __init__(self):
        self.n = 0
    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "content_type": msg.get_content_type(),
            "body": msg.get_content(),
        }
        tmp = os.path.join(out, ".%d.tmp" % self.n)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(out, "%d.json" % self.n))
        return "250 OK saved"

controller = Controller(Save(), hostname="127.0.0.1", port=port)
controller.start()
print("listening", flush=True)
threading.Event().wait()
"#;

/// The Python interpreter's real path (`python3` may be a pyenv shim whose PID is not the
/// server's).
pub fn python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys, aiosmtpd; print(sys.executable)"])
        .stderr(Stdio::inherit())
        .output()
        .expect("python3 (run scripts/install-test-deps.sh)");
    assert!(out.status.success(), "python3 cannot import aiosmtpd: run scripts/install-test-deps.sh");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A real SMTP server on 127.0.0.1:`port`, saving messages in its own directory.
#[derive(Debug)]
pub struct Smtp {
    _process: Process,
    dir: tempfile::TempDir,
}

impl Smtp {
    pub fn start(port: u16) -> Smtp {
        let smtp = Smtp::start_wrapped(port, |c| c);
        wait_for("the SMTP server to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        smtp
    }

    /// Like [`Smtp::start`], with `wrap` applied to its command line (e.g. to run it in a network
    /// namespace, on that namespace's loopback); waits until it says it listens.
    pub fn start_wrapped(port: u16, wrap: impl Fn(Command) -> Command) -> Smtp {
        let dir = tempfile::Builder::new().prefix("tether-e2e-smtp-").tempdir().expect("a temp dir");
        let script = dir.path().join("smtpd.py");
        std::fs::write(&script, HANDLER).expect("writing the handler");
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).expect("the inbox dir");
        let mut command = Command::new(python());
        command.arg(&script).arg(&inbox).arg(port.to_string());
        let mut process = Process::spawn("aiosmtpd", &mut wrap(command));
        process.wait_for_log("listening", Duration::from_secs(20));
        Smtp { _process: process, dir }
    }

    pub fn inbox(&self) -> PathBuf {
        self.dir.path().join("inbox")
    }

    /// The messages received so far, in order.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(self.inbox())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let n = path.file_stem()?.to_str()?.parse().ok()?;
                (path.extension()? == "json").then_some((n, path))
            })
            .collect();
        files.sort();
        files.iter().map(|(_, p)| read_json(p)).collect()
    }

    /// Waits for a message to `to`, and returns it.
    pub fn wait_for_message_to(&self, to: &str, timeout: Duration) -> serde_json::Value {
        let mut found = None;
        poll_until(timeout, || {
            found =
                self.messages().into_iter().find(|m| m["rcpt_tos"].as_array().is_some_and(|r| r.contains(&to.into())));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no mail to {to} within {timeout:?}; received: {:?}", self.messages()))
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("reading a saved message");
    serde_json::from_str(&text).expect("a saved message is JSON")
}

/// `[mail]` sending to 127.0.0.1:`port` without TLS, looking every second and retrying after
/// 1 s, then 2 s; links point at `public_url` (`None`: the gateway's default, its TLS name and
/// API port, which is where a test reaches it).
pub fn mail_config(port: u16, public_url: Option<&str>) -> String {
    let public_url = public_url.map(|url| format!("public_url = \"{url}\"\n")).unwrap_or_default();
    format!(
        "[mail]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsecurity = \"none\"\n\
         from = \"Tether <tether@gw.example>\"\n{public_url}\
         poll_interval_secs = 1\nretry_base_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\n"
    )
}

/// A gateway with [`mail_config`], links pointing at `https://gw.example:8443`.
pub fn gateway_mailing_to(port: u16) -> Gateway {
    Gateway::start_with_config(&mail_config(port, Some("https://gw.example:8443")), &[])
}
