//! A simulated device against a minimal in-process MPS (`ServerSession` over a real TLS
//! listener on 127.0.0.1): HTTP on 16992, echo across the 4 KiB window on 16994, backpressure,
//! reconnect after the gateway goes away, credentials refused, a small fleet, and several gateway
//! addresses (dead ones skipped, a fleet spread over live ones and moving off a stopped one).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use loadtest::amt::{
    amt_services_with_redirection, client_config, device_uuid, run_device, run_device_with_stats, run_fleet,
    server_name, shutdown_pair, DeviceConfig, DeviceError, FleetConfig, GatewayAddr, Progress, ReconnectPolicy,
    RedirectionConfig, RedirectionService, Stats, Trust,
};
use protocols::session::{ChannelId, Event, OpenError, ServerConfig, ServerSession};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use uuid::Uuid;

const UUID: Uuid = Uuid::from_u128(0x12345678_9abc_def0_1234_56789abcdef0);
const PASSWORD: &str = "P@ssw0rd-test";
/// The device's forwards. Channels are opened only once all are answered: `ClientSession`
/// treats a CHANNEL_OPEN that arrives while it still forwards ports as a protocol error.
const FIRMWARE_PORTS: [u32; 7] = [16993, 16992, 664, 623, 16995, 16994, 5900];
/// Longest wait for any single thing in these tests.
const STEP: Duration = Duration::from_secs(20);

/// A throwaway CA and a certificate for "localhost" issued by it.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "amt-sim test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            chain: vec![leaf.der().clone(), ca_cert.der().clone()],
            key_der: leaf_key.serialize_der(),
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())))
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

#[derive(Debug)]
enum Cmd {
    Open {
        port: u32,
        reply: oneshot::Sender<Result<ChannelId, OpenError>>,
    },
    Send {
        ch: ChannelId,
        data: Vec<u8>,
    },
    Close {
        ch: ChannelId,
    },
    /// Stop (or resume) granting window for received data.
    Consume(bool),
    /// Bytes queued on a channel that the device's window did not take yet.
    Pending {
        ch: ChannelId,
        reply: oneshot::Sender<usize>,
    },
}

/// A minimal MPS: accepts TLS, runs a `ServerSession` per connection, hands each connection to
/// the test as a [`Tunnel`].
struct Gateway {
    addr: SocketAddr,
    tunnels: mpsc::UnboundedReceiver<Tunnel>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    async fn start(addr: SocketAddr, acceptor: TlsAcceptor, password: &'static str) -> Self {
        Self::start_with(addr, acceptor, password, None).await
    }

    /// With `open_on_forward`, every tunnel opens a channel to that port the moment the device
    /// forwards it, as a gateway with a technician waiting would.
    async fn start_with(
        addr: SocketAddr,
        acceptor: TlsAcceptor,
        password: &'static str,
        open_on_forward: Option<u32>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (tx, tunnels) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, peer)) = listener.accept().await else { break };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                connections.spawn(async move {
                    if let Ok(Ok(tls)) = tokio::time::timeout(STEP, acceptor.accept(tcp)).await {
                        serve(tls, peer, password, open_on_forward, tx).await;
                    }
                });
            }
        });
        Self { addr, tunnels, task }
    }

    async fn next_tunnel(&mut self) -> Tunnel {
        tokio::time::timeout(STEP, self.tunnels.recv()).await.expect("a device connects").expect("gateway running")
    }

    /// Drops the listener and every connection at once, as a crashed gateway would.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    password: &'static str,
    open_on_forward: Option<u32>,
    tunnels: mpsc::UnboundedSender<Tunnel>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut session = ServerSession::new(ServerConfig::default(), Instant::now());
    let (cmd_tx, mut cmds) = mpsc::unbounded_channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    let _ = tunnels.send(Tunnel { peer, cmds: cmd_tx, events, received: HashMap::new() });
    let mut pending: HashMap<ChannelId, BytesMut> = HashMap::new();
    let mut consume = true;
    let mut unconsumed: Vec<(ChannelId, usize)> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(event) = session.poll_event() {
            match &event {
                Event::AuthRequest { password: given, .. } => {
                    if given.0 == password.as_bytes() {
                        session.accept_auth(Instant::now());
                    } else {
                        session.reject_auth(Instant::now());
                    }
                }
                Event::ChannelData { ch, data } if consume => session.consumed(*ch, data.len()),
                Event::ChannelData { ch, data } => unconsumed.push((*ch, data.len())),
                Event::ChannelClosed { ch } => {
                    pending.remove(ch);
                }
                Event::PortForwarded { port } if Some(*port) == open_on_forward => {
                    session.open_channel(*port, ("1.2.3.4".into(), 1024)).expect("port forwarded");
                }
                _ => {}
            }
            let _ = events_tx.send(event);
        }
        for (ch, data) in &mut pending {
            let n = session.send(*ch, data);
            data.advance(n);
        }
        while let Some(bytes) = session.poll_transmit() {
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if wr.flush().await.is_err() || session.is_closed() {
            return;
        }
        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => session.handle_input(&buf[..n], Instant::now()),
            },
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(Cmd::Open { port, reply }) => {
                    let _ = reply.send(session.open_channel(port, ("1.2.3.4".into(), 1024)));
                }
                Some(Cmd::Send { ch, data }) => pending.entry(ch).or_default().extend_from_slice(&data),
                Some(Cmd::Close { ch }) => session.close_channel(ch),
                Some(Cmd::Consume(on)) => {
                    consume = on;
                    if on {
                        for (ch, n) in unconsumed.drain(..) {
                            session.consumed(ch, n);
                        }
                    }
                }
                Some(Cmd::Pending { ch, reply }) => {
                    let _ = reply.send(pending.get(&ch).map_or(0, BytesMut::len));
                }
            },
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => session.handle_timeout(Instant::now()),
        }
    }
}

/// The test's side of one device connection.
struct Tunnel {
    /// The device's address, as the gateway sees it.
    peer: SocketAddr,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: mpsc::UnboundedReceiver<Event>,
    received: HashMap<ChannelId, Vec<u8>>,
}

impl Tunnel {
    async fn next_event(&mut self) -> Event {
        let event = tokio::time::timeout(STEP, self.events.recv())
            .await
            .expect("an event from the device in time")
            .expect("the connection is up");
        if let Event::ChannelData { ch, data } = &event {
            self.received.entry(*ch).or_default().extend_from_slice(data);
        }
        event
    }

    async fn wait_for<T>(&mut self, mut f: impl FnMut(&Event) -> Option<T>) -> T {
        loop {
            let event = self.next_event().await;
            if let Some(found) = f(&event) {
                return found;
            }
        }
    }

    /// Waits for the device's hello and for the forwards of `ports` (in any order); returns the
    /// UUID.
    async fn handshake(&mut self, ports: &[u32]) -> Uuid {
        let uuid = self.wait_for(|e| if let Event::Hello { uuid, .. } = e { Some(*uuid) } else { None }).await;
        let mut missing: Vec<u32> = ports.to_vec();
        while !missing.is_empty() {
            let port = self.wait_for(|e| if let Event::PortForwarded { port } = e { Some(*port) } else { None }).await;
            missing.retain(|&p| p != port);
        }
        uuid
    }

    async fn open(&mut self, port: u32) -> ChannelId {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Open { port, reply }).expect("connection up");
        let ch = rx.await.unwrap().expect("channel open");
        self.wait_for(|e| matches!(e, Event::ChannelOpened { ch: c, .. } if *c == ch).then_some(())).await;
        ch
    }

    fn send(&self, ch: ChannelId, data: &[u8]) {
        self.cmds.send(Cmd::Send { ch, data: data.to_vec() }).expect("connection up");
    }

    fn command(&self, cmd: Cmd) {
        self.cmds.send(cmd).expect("connection up");
    }

    async fn pending(&self, ch: ChannelId) -> usize {
        let (reply, rx) = oneshot::channel();
        self.command(Cmd::Pending { ch, reply });
        rx.await.unwrap()
    }

    async fn read_exact(&mut self, ch: ChannelId, n: usize) -> Vec<u8> {
        while self.received.get(&ch).map_or(0, Vec::len) < n {
            self.next_event().await;
        }
        self.received.get_mut(&ch).unwrap().drain(..n).collect()
    }

    /// One HTTP response: (status, head, body).
    async fn read_http_response(&mut self, ch: ChannelId) -> (u16, String, String) {
        loop {
            let got = self.received.entry(ch).or_default();
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(got[..end].to_vec()).unwrap();
                let len: usize =
                    head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map_or(0, |v| v.parse().unwrap());
                if got.len() >= end + 4 + len {
                    let body = String::from_utf8(got[end + 4..end + 4 + len].to_vec()).unwrap();
                    got.drain(..end + 4 + len);
                    return (head[9..12].parse().unwrap(), head, body);
                }
            }
            self.next_event().await;
        }
    }
}

fn device_config(addr: SocketAddr, trust: &Trust, password: &str) -> DeviceConfig {
    let tls = client_config(trust).expect("TLS config");
    let mut config =
        DeviceConfig::new(addr.to_string(), server_name("localhost").unwrap(), tls, UUID, "user", password);
    config.reconnect = ReconnectPolicy { min: Duration::from_millis(100), max: Duration::from_millis(500) };
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_serves_http_and_echo_and_reconnects() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let pki = Pki::new();
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca_file.path(), &pki.ca_pem).unwrap();
        let mut gateway = Gateway::start("127.0.0.1:0".parse().unwrap(), pki.acceptor(), PASSWORD).await;
        let addr = gateway.addr;
        let config = device_config(addr, &Trust::CaFile(ca_file.path().to_owned()), PASSWORD);
        let stats = Arc::new(Stats::default());
        let (stop, shutdown) = shutdown_pair();
        let device = tokio::spawn(run_device_with_stats(config, stats.clone(), shutdown));

        let mut tunnel = gateway.next_tunnel().await;
        assert_eq!(tunnel.handshake(&FIRMWARE_PORTS).await, UUID);

        // WS-MAN port: a challenge first, then 200 with a Digest authorization, on one channel.
        let http = tunnel.open(16992).await;
        let body = "<a:Envelope><a:Header><b:MessageID>uuid:test-1</b:MessageID></a:Header></a:Envelope>";
        tunnel.send(
            http,
            format!("POST /wsman HTTP/1.1\r\nHost: localhost:16992\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
        let (status, head, _) = tunnel.read_http_response(http).await;
        assert_eq!(status, 401, "{head}");
        assert!(head.contains("WWW-Authenticate: Digest realm=\"Digest:"), "{head}");
        assert!(head.contains("qop=\"auth\""), "{head}");
        tunnel.send(
            http,
            format!(
                "POST /wsman HTTP/1.1\r\nHost: localhost:16992\r\nAuthorization: Digest username=\"admin\", \
                 realm=\"x\", nonce=\"y\", uri=\"/wsman\", response=\"z\"\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let (status, head, soap) = tunnel.read_http_response(http).await;
        assert_eq!(status, 200, "{head}");
        assert!(soap.contains(&UUID.to_string()), "{soap}");
        assert!(soap.contains("<b:RelatesTo>uuid:test-1</b:RelatesTo>"), "{soap}");
        tunnel.command(Cmd::Close { ch: http });
        tunnel.wait_for(|e| matches!(e, Event::ChannelClosed { ch } if *ch == http).then_some(())).await;

        // Redirection port: 1 MiB echoed back byte for byte through the device's 4 KiB window.
        let echo = tunnel.open(16994).await;
        let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let started = Instant::now();
        tunnel.send(echo, &payload);
        let echoed = tunnel.read_exact(echo, payload.len()).await;
        assert!(echoed == payload, "echo differs");
        eprintln!("1 MiB echoed in {:.2}s", started.elapsed().as_secs_f64());
        assert_eq!(stats.snapshot().channels_opened, 2);

        // The gateway goes away; the device comes back to a new one on the same port.
        gateway.stop().await;
        let mut gateway = Gateway::start(addr, pki.acceptor(), PASSWORD).await;
        let mut tunnel = gateway.next_tunnel().await;
        assert_eq!(tunnel.handshake(&FIRMWARE_PORTS).await, UUID);
        tunnel.wait_for(|e| matches!(e, Event::KeepaliveOptions { .. }).then_some(())).await;
        let snapshot = stats.snapshot();
        assert!(snapshot.reconnects >= 1, "{snapshot:?}");
        assert_eq!(snapshot.ever_established, 1, "{snapshot:?}");

        // A clean stop: DISCONNECT reaches the gateway and the task ends.
        stop.trigger();
        let report = tokio::time::timeout(STEP, device).await.expect("device stops").unwrap().unwrap();
        assert_eq!(report.connections, 2);
        assert_eq!(report.established, 2);
        tunnel.wait_for(|e| matches!(e, Event::Closed(_)).then_some(())).await;
        gateway.stop().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_backpressure_bounds_what_the_device_buffers() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let pki = Pki::new();
        let mut gateway = Gateway::start("127.0.0.1:0".parse().unwrap(), pki.acceptor(), PASSWORD).await;
        let config = device_config(gateway.addr, &Trust::CaPem(pki.ca_pem.clone().into_bytes()), PASSWORD);
        let max_pending = config.max_pending;
        let (stop, shutdown) = shutdown_pair();
        let device = tokio::spawn(run_device(config, shutdown));
        let mut tunnel = gateway.next_tunnel().await;
        tunnel.handshake(&FIRMWARE_PORTS).await;
        let echo = tunnel.open(16994).await;

        // The gateway stops granting window: the device's echo stalls at the gateway's window
        // (256 KiB), then its pending output fills, then it stops taking input.
        tunnel.command(Cmd::Consume(false));
        let total = 4 * 1024 * 1024;
        tunnel.send(echo, &vec![0x5a; total]);
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let pending = tunnel.pending(echo).await;
            if pending == last {
                break;
            }
            last = pending;
        }
        let taken_by_device = total - last;
        eprintln!("with the gateway's window closed, the device took {taken_by_device} bytes");
        // Gateway window + the device's pending bound + one device window, plus a handler's overshoot.
        let bound = 256 * 1024 + max_pending + 4096 + 4096;
        assert!(taken_by_device <= bound, "the device took {taken_by_device} bytes, more than {bound}");
        assert!(taken_by_device >= 256 * 1024, "the device took only {taken_by_device} bytes");

        // Window again: everything flows.
        tunnel.command(Cmd::Consume(true));
        let echoed = tunnel.read_exact(echo, total).await;
        assert!(echoed.iter().all(|&b| b == 0x5a));

        stop.trigger();
        tokio::time::timeout(STEP, device).await.expect("device stops").unwrap().unwrap();
        gateway.stop().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_the_device_when_asked() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let pki = Pki::new();
        let gateway = Gateway::start("127.0.0.1:0".parse().unwrap(), pki.acceptor(), PASSWORD).await;
        let mut config = device_config(gateway.addr, &Trust::Insecure, "wrong password");
        config.stop_on_auth_failure = true;
        let result = tokio::time::timeout(STEP, run_device(config, shutdown_pair().1)).await.expect("device stops");
        match result {
            Err(err @ DeviceError::AuthRejected { .. }) => {
                assert!(err.to_string().contains("--password"), "{err}");
            }
            other => panic!("expected AuthRejected, got {other:?}"),
        }
        gateway.stop().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_from_another_source_that_does_not_reconnect() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let pki = Pki::new();
        let mut gateway = Gateway::start("127.0.0.1:0".parse().unwrap(), pki.acceptor(), PASSWORD).await;
        let mut config = device_config(gateway.addr, &Trust::Insecure, PASSWORD);
        config.source = Some([127, 0, 0, 2].into());
        config.no_reconnect = true;
        let device = tokio::spawn(run_device(config, shutdown_pair().1));
        let mut tunnel = gateway.next_tunnel().await;
        assert_eq!(tunnel.peer.ip(), std::net::IpAddr::from([127, 0, 0, 2]));
        assert_eq!(tunnel.handshake(&FIRMWARE_PORTS).await, UUID);

        // The gateway goes away: the device stops instead of reconnecting, and says why.
        gateway.stop().await;
        let result = tokio::time::timeout(STEP, device).await.expect("device stops").unwrap();
        match result {
            Err(err @ DeviceError::ConnectionEnded { established: true, .. }) => {
                assert!(err.to_string().contains("not reconnecting"), "{err}");
            }
            other => panic!("expected ConnectionEnded, got {other:?}"),
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_of_distinct_devices_gets_established() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let pki = Pki::new();
        let mut gateway = Gateway::start("127.0.0.1:0".parse().unwrap(), pki.acceptor(), PASSWORD).await;
        let config = device_config(gateway.addr, &Trust::Insecure, PASSWORD);
        let mut fleet = FleetConfig::new(config, 25);
        fleet.exit_after_established = true;
        fleet.ramp = Duration::from_millis(200);
        fleet.progress = Progress::Quiet;
        let report = run_fleet(fleet, shutdown_pair().1).await.expect("fleet runs");
        assert_eq!(report.count, 25);
        assert!(report.all_established_after.is_some());
        assert_eq!(report.stats.ever_established, 25);
        assert_eq!(report.stats.auth_failures, 0);

        let mut uuids = Vec::new();
        for _ in 0..25 {
            let mut tunnel = gateway.next_tunnel().await;
            uuids.push(tunnel.wait_for(|e| if let Event::Hello { uuid, .. } = e { Some(*uuid) } else { None }).await);
        }
        uuids.sort();
        uuids.dedup();
        assert_eq!(uuids.len(), 25, "distinct UUIDs");
        assert!(uuids.contains(&UUID));
        gateway.stop().await;
    })
    .await
    .expect("test finished in time");
}

/// Real firmware accepts a channel to a port it has forwarded while it still forwards the next
/// ones; a gateway (ServerSession) may open one as soon as the port's forward is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_opened_before_the_last_forward_is_served() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let pki = Pki::new();
        let mut gateway =
            Gateway::start_with("127.0.0.1:0".parse().unwrap(), pki.acceptor(), PASSWORD, Some(16992)).await;
        let config = device_config(gateway.addr, &Trust::Insecure, PASSWORD);
        let (stop, shutdown) = shutdown_pair();
        let device = tokio::spawn(run_device(config, shutdown));
        let mut tunnel = gateway.next_tunnel().await;
        let ch = tunnel
            .wait_for(|e| match e {
                Event::ChannelOpened { ch, .. } => Some(*ch),
                Event::Closed(cause) => panic!("the device dropped the tunnel: {cause}"),
                _ => None,
            })
            .await;
        tunnel.send(ch, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(tunnel.read_http_response(ch).await.0, 401);
        stop.trigger();
        tokio::time::timeout(STEP, device).await.expect("device stops").unwrap().unwrap();
        gateway.stop().await;
    })
    .await
    .expect("test finished in time");
}

/// The next CHANNEL_DATA of `ch`, as one message.
async fn next_data(tunnel: &mut Tunnel, ch: ChannelId) -> Vec<u8> {
    tunnel
        .wait_for(|e| match e {
            Event::ChannelData { ch: c, data } if *c == ch => Some(data.to_vec()),
            Event::ChannelClosed { ch: c } if *c == ch => panic!("channel closed"),
            _ => None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sol_through_the_tunnel_sends_each_reply_in_its_own_channel_data() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let pki = Pki::new();
        let mut gateway = Gateway::start("127.0.0.1:0".parse().unwrap(), pki.acceptor(), PASSWORD).await;
        let mut config = device_config(gateway.addr, &Trust::Insecure, PASSWORD);
        config.services = amt_services_with_redirection(RedirectionService::new(RedirectionConfig {
            admin_password: "P@ssw0rd".to_owned(),
            ..RedirectionConfig::default()
        }));
        let (stop, shutdown) = shutdown_pair();
        let device = tokio::spawn(run_device(config, shutdown));
        let mut tunnel = gateway.next_tunnel().await;
        tunnel.handshake(&FIRMWARE_PORTS).await;

        // amtterm 1.4's start and login, sent in one go: two replies, two CHANNEL_DATA.
        let sol = tunnel.open(16994).await;
        let mut login = vec![0x10, 0, 0, 0, 0x53, 0x4f, 0x4c, 0x20];
        login.extend_from_slice(&[0x13, 0, 0, 0, 1, 0x0f, 0, 0, 0, 5]);
        login.extend_from_slice(b"admin");
        login.push(8);
        login.extend_from_slice(b"P@ssw0rd");
        tunnel.send(sol, &login);
        assert_eq!(next_data(&mut tunnel, sol).await, [0x11, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(next_data(&mut tunnel, sol).await, [0x14, 0, 0, 0, 1, 0, 0, 0, 0]);
        let start_sol =
            [0x20, 0, 0, 0, 0, 0, 0, 0, 0xe8, 0x03, 0x64, 0, 0, 0, 0x10, 0x27, 0, 0, 0x88, 0x13, 0, 0, 0, 0];
        tunnel.send(sol, &start_sol);
        assert_eq!(next_data(&mut tunnel, sol).await[..2], [0x21, 0]);
        assert_eq!(next_data(&mut tunnel, sol).await, [0x29, 0, 0, 0, 1, 0, 0, 0, 3, 4]);

        // A second SOL console for the same device is refused, and its channel closed.
        let second = tunnel.open(16995).await;
        tunnel.send(second, &login[..8]);
        assert_eq!(next_data(&mut tunnel, second).await[..2], [0x11, 1]);
        tunnel.wait_for(|e| matches!(e, Event::ChannelClosed { ch } if *ch == second).then_some(())).await;

        // The shell runs what is typed; its output comes as 0x2A, heartbeats as 0x2B.
        let mut typed = vec![0x28, 0, 0, 0, 0, 0, 0, 0];
        let line = b"echo hi-$((40+2))\r";
        typed.extend_from_slice(&(line.len() as u16).to_le_bytes());
        typed.extend_from_slice(line);
        tunnel.send(sol, &typed);
        let mut text = Vec::new();
        let mut heartbeat = false;
        while !(heartbeat && text.windows(5).any(|w| w == b"hi-42")) {
            let data = next_data(&mut tunnel, sol).await;
            match data[0] {
                0x2a => text.extend_from_slice(&data[10..]),
                0x2b => heartbeat = data.len() == 8,
                other => panic!("unexpected message {other:#04x}"),
            }
        }

        // EndSOL, the stray ^], EndRedirectionSession: the device closes the channel.
        tunnel.send(sol, &[0x22, 0, 0, 0, 0, 0, 0, 0]);
        loop {
            let data = next_data(&mut tunnel, sol).await;
            if data[0] == 0x23 {
                assert_eq!(data, [0x23, 0, 0, 0, 0, 0, 0, 0]);
                break;
            }
        }
        tunnel.send(sol, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x1d, 0x12, 0, 0, 0]);
        tunnel.wait_for(|e| matches!(e, Event::ChannelClosed { ch } if *ch == sol).then_some(())).await;

        // The slot is free again.
        let again = tunnel.open(16994).await;
        tunnel.send(again, &login[..8]);
        assert_eq!(next_data(&mut tunnel, again).await[..2], [0x11, 0]);

        stop.trigger();
        tokio::time::timeout(STEP, device).await.expect("device stops").unwrap().unwrap();
        gateway.stop().await;
    })
    .await
    .expect("test finished in time");
}

/// A device that knows `addrs`, in that order, all with the name "localhost".
fn multi_gateway_config(addrs: &[SocketAddr], trust: &Trust) -> DeviceConfig {
    let tls = client_config(trust).expect("TLS config");
    let gateways = addrs.iter().map(|a| GatewayAddr::new(a.to_string(), server_name("localhost").unwrap())).collect();
    let mut config = DeviceConfig::with_gateways(gateways, tls, UUID, "user", PASSWORD);
    config.reconnect = ReconnectPolicy { min: Duration::from_millis(100), max: Duration::from_millis(500) };
    config
}

/// A loopback port nothing listens on (bound a moment ago, then closed): connects are refused.
fn refused_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A listener that accepts TCP and closes at once, as a balancer with no live backend does: the
/// TLS handshake fails.
async fn closing_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            drop(tcp);
        }
    });
    (addr, task)
}

async fn poll_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_moves_past_dead_addresses_to_a_live_gateway() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let pki = Pki::new();
        let mut gateway = Gateway::start("127.0.0.1:0".parse().unwrap(), pki.acceptor(), PASSWORD).await;
        let (closing, closing_task) = closing_listener().await;
        let mut config = multi_gateway_config(&[refused_addr(), closing, gateway.addr], &Trust::Insecure);
        // A back-off far longer than the test waits: moving on to the next address must not wait.
        config.reconnect = ReconnectPolicy { min: Duration::from_secs(30), max: Duration::from_secs(30) };
        let stats = Arc::new(Stats::default());
        let (stop, shutdown) = shutdown_pair();
        let started = Instant::now();
        let device = tokio::spawn(run_device_with_stats(config, stats.clone(), shutdown));

        let mut tunnel = gateway.next_tunnel().await;
        assert_eq!(tunnel.handshake(&FIRMWARE_PORTS).await, UUID);
        poll_until("the tunnel counted through the third address", || stats.established_per_gateway() == [0, 0, 1])
            .await;
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}: it backed off", started.elapsed());
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.connect_failures, 2, "{snapshot:?}");
        assert_eq!(snapshot.connections, 1, "{snapshot:?}");

        stop.trigger();
        let report = tokio::time::timeout(STEP, device).await.expect("device stops").unwrap().unwrap();
        assert_eq!((report.connections, report.established), (1, 1));
        closing_task.abort();
        gateway.stop().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_a_device_tries_every_address_once() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (closing, closing_task) = closing_listener().await;
        let mut config = multi_gateway_config(&[closing, refused_addr()], &Trust::Insecure);
        config.no_reconnect = true;
        let stats = Arc::new(Stats::default());
        let result = tokio::time::timeout(STEP, run_device_with_stats(config, stats.clone(), shutdown_pair().1))
            .await
            .expect("device stops");
        match result {
            Err(err @ DeviceError::ConnectionEnded { established: false, .. }) => {
                assert!(err.to_string().contains("not reconnecting"), "{err}");
            }
            other => panic!("expected ConnectionEnded, got {other:?}"),
        }
        assert_eq!(stats.snapshot().connect_failures, 2);
        closing_task.abort();

        let config = multi_gateway_config(&[], &Trust::Insecure);
        assert!(matches!(run_device(config, shutdown_pair().1).await, Err(DeviceError::NoGateway { .. })));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_spreads_over_two_gateways_and_leaves_one_that_stops() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let pki = Pki::new();
        let mut first = Gateway::start("127.0.0.1:0".parse().unwrap(), pki.acceptor(), PASSWORD).await;
        let mut second = Gateway::start("127.0.0.1:0".parse().unwrap(), pki.acceptor(), PASSWORD).await;
        let config = multi_gateway_config(&[first.addr, second.addr], &Trust::Insecure);
        let mut fleet = FleetConfig::new(config, 2);
        fleet.progress = Progress::Quiet;
        let (stop, shutdown) = shutdown_pair();
        let fleet = tokio::spawn(run_fleet(fleet, shutdown));

        // Device 0 starts at the first address, device 1 at the second.
        let mut on_first = first.next_tunnel().await;
        assert_eq!(on_first.handshake(&FIRMWARE_PORTS).await, device_uuid(UUID, 0));
        let mut on_second = second.next_tunnel().await;
        assert_eq!(on_second.handshake(&FIRMWARE_PORTS).await, device_uuid(UUID, 1));

        // The first gateway goes away: its device backs off, finds it refusing, and moves on.
        first.stop().await;
        let mut moved = second.next_tunnel().await;
        assert_eq!(moved.handshake(&FIRMWARE_PORTS).await, device_uuid(UUID, 0));

        stop.trigger();
        let report = tokio::time::timeout(STEP, fleet).await.expect("fleet stops").unwrap().expect("fleet ran");
        assert_eq!(report.stats.ever_established, 2);
        assert!(report.stats.reconnects >= 2, "{:?}", report.stats);
        assert!(report.stats.connect_failures >= 1, "{:?}", report.stats);
        // Three TLS connections: the other device never left the second gateway.
        assert_eq!(report.stats.connections, 3, "{:?}", report.stats);
        second.stop().await;
    })
    .await
    .expect("test finished in time");
}
