//! A real HTTPS webhook receiver for the alert tests: Python's `http.server` behind `ssl`, with a
//! certificate from a CA the test makes (rcgen), saving each POST's body as `N.json`. The gateway
//! trusts that CA through `[webhooks] ca_file`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::smtp::python;
use crate::{poll_until, Process};

const RECEIVER: &str = r#"
import http.server, json, os, ssl, sys

out, host, port, cert, key = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
count = [0]

class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        count[0] += 1
        record = {"path": self.path, "content_type": self.headers.get("Content-Type"), "body": json.loads(body)}
        tmp = os.path.join(out, ".%d.tmp" % count[0])
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(out, "%d.json" % count[0]))
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.HTTPServer((host, port), Hook)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("listening", flush=True)
server.serve_forever()
"#;

/// The receiver, and the CA its certificate chains to.
#[derive(Debug)]
pub struct WebhookReceiver {
    _process: Process,
    dir: tempfile::TempDir,
    url: String,
}

impl WebhookReceiver {
    /// Listens on `ip:port` (a certificate for `ip`), with `wrap` applied to its command line
    /// (e.g. to run it in a network namespace).
    pub fn start(ip: IpAddr, port: u16, wrap: impl Fn(Command) -> Command) -> WebhookReceiver {
        let dir = tempfile::Builder::new().prefix("tether-e2e-webhook-").tempdir().expect("a temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "webhook test CA");
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().expect("a server key");
        let params = rcgen::CertificateParams::new(vec![ip.to_string()]).expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("the server certificate");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let script = dir.path().join("receiver.py");
        std::fs::write(&script, RECEIVER).unwrap();
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        let mut command = Command::new(python());
        command
            .arg(&script)
            .arg(&inbox)
            .arg(ip.to_string())
            .arg(port.to_string())
            .arg(dir.path().join("cert.pem"))
            .arg(dir.path().join("key.pem"));
        let mut process = Process::spawn("webhook receiver", &mut wrap(command));
        process.wait_for_log("listening", Duration::from_secs(20));
        WebhookReceiver { _process: process, url: format!("https://{ip}:{port}/hooks/tether"), dir }
    }

    /// The URL to give as a contact's webhook.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA its certificate chains to (for `[webhooks] ca_file`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The posts received so far, in order: `{"path", "content_type", "body"}`.
    pub fn posts(&self) -> Vec<serde_json::Value> {
        let inbox = self.dir.path().join("inbox");
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&inbox)
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
        files.iter().map(|(_, p)| read(p)).collect()
    }

    /// Waits for a post whose body satisfies `matches`; it.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut found = None;
        poll_until(timeout, || {
            found = self.posts().into_iter().find(|p| matches(&p["body"]));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no webhook post {what} within {timeout:?}; received: {:?}", self.posts()))
    }
}

fn read(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("a saved post")).expect("a saved post is JSON")
}
