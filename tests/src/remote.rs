//! The remote-fix peers: `tether console` and `tether ider` as a technician runs them, Debian's
//! `amtterm` (which needs a tty: it runs under `script`), and a TLS front that plays a LAN PC's
//! port 16995 (TLS with its own self-signed certificate) in front of a plain redirection port.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ChildStdin, Command};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::process::{poll_until, Gateway, Process, Sim};

/// The simulated PC's AMT admin password in the remote-fix tests (amt-sim --admin-password).
pub const ADMIN_PASSWORD: &str = "Adm1n-Secret";

/// A PC behind the gateway with that admin password; `args` go to amt-sim. Waits until the
/// gateway lists it connected.
pub fn pc(gateway: &Gateway, args: &[&str]) -> (Uuid, Sim) {
    let uuid = Uuid::new_v4();
    let mut all = vec!["--uuid".to_string(), uuid.to_string(), "--admin-password".into(), ADMIN_PASSWORD.into()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let sim = Sim::start(gateway, &all);
    crate::wait_for("the PC to connect", Duration::from_secs(30), || gateway.is_connected(uuid));
    (uuid, sim)
}

/// Waits for `session` to exit; its status, stdout and stderr.
pub fn exit_of(mut session: Interactive, timeout: Duration) -> (std::process::ExitStatus, String, String) {
    poll_until(timeout, || !session.process.is_running());
    let out = session.process.stdout();
    let err = session.process.stderr();
    let status = session.process.wait(timeout);
    (status, out, err)
}

/// A console-like program with its stdin a pipe: keys are typed into it, its screen is its stdout.
#[derive(Debug)]
pub struct Interactive {
    pub process: Process,
    stdin: Option<ChildStdin>,
}

impl Interactive {
    pub fn spawn(name: &str, command: &mut Command) -> Interactive {
        let (process, stdin) = Process::spawn_interactive(name, command);
        Interactive { process, stdin: Some(stdin) }
    }

    /// Types `keys` (written to its stdin at once).
    pub fn type_keys(&mut self, keys: &[u8]) {
        let name = self.process.name().to_string();
        let stdin = self.stdin.as_mut().unwrap_or_else(|| panic!("{name}'s stdin is closed"));
        stdin.write_all(keys).and_then(|()| stdin.flush()).unwrap_or_else(|e| panic!("typing into {name}: {e}"));
    }

    /// Closes its stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until its stdout contains `needle`; returns the whole stdout. Panics (with its output)
    /// after `timeout` or when it exits first.
    pub fn wait_for_screen(&mut self, needle: &str, timeout: Duration) -> String {
        let mut screen = String::new();
        let mut exited = false;
        poll_until(timeout, || {
            screen = self.process.stdout();
            exited = !self.process.is_running();
            screen.contains(needle) || exited
        });
        let screen = self.process.stdout();
        if !screen.contains(needle) {
            let state = if exited { "exited" } else { "is still running" };
            panic!("{} {state} without showing {needle:?}\n{}", self.process.name(), self.process.tail());
        }
        screen
    }
}

/// `tether console UUID --password PASSWORD ARGS…` against `gateway`, stdin a pipe.
pub fn console(gateway: &Gateway, uuid: Uuid, password: &str, args: &[&str]) -> Interactive {
    let mut command = gateway.cli_command(&["console", &uuid.to_string(), "--password", password]);
    command.args(args);
    Interactive::spawn("tether console", &mut command)
}

/// `tether ider UUID --password PASSWORD ARGS…` against `gateway` (e.g. `--image FILE`).
pub fn ider(gateway: &Gateway, uuid: Uuid, password: &str, args: &[&str]) -> Process {
    let mut command = gateway.cli_command(&["ider", &uuid.to_string(), "--password", password]);
    command.args(args);
    Process::spawn("tether ider", &mut command)
}

/// Debian's `amtterm -u USER -p PASSWORD HOST PORT`, under `script` for the terminal it needs;
/// everything it prints (state lines too) is on stdout.
pub fn amtterm(addr: SocketAddr, user: &str, password: &str) -> Interactive {
    let inner = format!("amtterm -u {user} -p {password} {} {}", addr.ip(), addr.port());
    let mut command = Command::new("script");
    command.args(["-qfec", &inner, "/dev/null"]);
    Interactive::spawn("amtterm", &mut command)
}

/// Whether Debian's amtterm and `script` are installed (scripts/install-test-deps.sh).
pub fn require_amtterm() {
    for program in ["amtterm", "script"] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
            .unwrap_or(false);
        assert!(found, "{program} is not installed: run scripts/install-test-deps.sh (Debian package amtterm)");
    }
}

/// A random file of `len` bytes in `dir`; returns its SHA-256 as lowercase hex.
pub fn random_image(path: &Path, len: usize) -> String {
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    hex::encode(Sha256::digest(&data))
}

/// A TLS listener with a fresh self-signed certificate, carrying each connection to a plain
/// TCP `upstream`: a LAN PC's 16995 in front of a redirection service. Stops when dropped.
#[derive(Debug)]
pub struct TlsFront {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    /// Listens on `listen` (port 0 for any) with a new certificate.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> TlsFront {
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["amt-pc.local".to_string()])
            .and_then(|params| params.self_signed(&key))
            .expect("a self-signed certificate");
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("the key in DER");
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .and_then(|b| b.with_no_client_auth().with_single_cert(vec![cert.der().clone()], der))
                .expect("a TLS server configuration");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let std_listener = std::net::TcpListener::bind(listen).expect("binding the TLS front");
        std_listener.set_nonblocking(true).expect("a non-blocking listener");
        let addr = std_listener.local_addr().expect("its address");
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("a tokio listener");
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                                let Ok(Ok(mut tls)) = handshake.await else { return };
                                let Ok(mut plain) = TcpStream::connect(upstream).await else { return };
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                            });
                        }
                    }
                }
            });
        });
        TlsFront { addr, stop: Some(stop), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
