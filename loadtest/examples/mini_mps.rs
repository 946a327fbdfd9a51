//! A minimal CIRA MPS for trying `amt-sim` without a gateway, and for measuring it: accepts TLS
//! with a throwaway certificate for "localhost" (its CA is written to `--ca-out`), runs a
//! `ServerSession` per connection, accepts any password (or only `--password`), and logs how
//! many tunnels are established. With `--probe`, it opens a channel to 16992 on every tunnel
//! and sends one unauthenticated WS-MAN request, counting the answers. With `--forward ADDR`, a
//! TCP connection to ADDR gets a channel to `--forward-port` (16994) of the device that connected
//! last, relayed byte for byte (each CHANNEL_DATA in a write of its own), so that a console such
//! as amtterm can reach the simulated device without a gateway.
//!
//! ```text
//! cargo run -p tether-loadtest --example mini_mps -- --listen 127.0.0.1:4433 --ca-out /tmp/ca.pem \
//!     --forward 127.0.0.1:16994
//! amt-sim --gateway 127.0.0.1:4433 --ca /tmp/ca.pem --server-name localhost --username u --password p
//! amtterm -u admin -p admin 127.0.0.1 16994
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use protocols::session::{ChannelId, Event, ServerConfig, ServerSession};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Where to write the CA certificate (PEM) that `amt-sim --ca` should trust.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Accept only this password (any password otherwise).
    #[arg(long)]
    password: Option<String>,
    /// Open a channel to 16992 on every tunnel and send one WS-MAN request.
    #[arg(long)]
    probe: bool,
    /// Listen here for technicians; each connection is relayed to a channel of the last device.
    #[arg(long)]
    forward: Option<SocketAddr>,
    /// The device port forwarded connections are relayed to.
    #[arg(long, default_value_t = 16994)]
    forward_port: u32,
}

/// The last established tunnel's inbox for forwarded connections.
type LastTunnel = Arc<Mutex<Option<mpsc::UnboundedSender<TcpStream>>>>;

/// One relayed connection, as the tunnel's task sees it.
struct Relay {
    /// Bytes from the technician not yet taken by the channel's window.
    pending: Vec<u8>,
    /// To the technician's socket; `None` once it closed its side.
    to_tcp: Option<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    established: AtomicU64,
    probes_answered: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let (acceptor, ca_pem) = throwaway_tls()?;
    if let Some(path) = &args.ca_out {
        std::fs::write(path, ca_pem).with_context(|| format!("writing {}", path.display()))?;
    }
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!("mini MPS listening on {}", listener.local_addr()?);
    let counters = Arc::new(Counters::default());
    let reporter = counters.clone();
    tokio::spawn(async move {
        let mut last = (u64::MAX, u64::MAX, u64::MAX);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = (
                reporter.connections.load(Ordering::Relaxed),
                reporter.established.load(Ordering::Relaxed),
                reporter.probes_answered.load(Ordering::Relaxed),
            );
            if now != last {
                tracing::info!("connections {}, established {}, probes answered {}", now.0, now.1, now.2);
                last = now;
            }
        }
    });
    let password = args.password.map(Bytes::from);
    let last_tunnel: LastTunnel = Arc::default();
    if let Some(addr) = args.forward {
        let forward = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!("forwarding {} to port {} of the last device", forward.local_addr()?, args.forward_port);
        let last_tunnel = last_tunnel.clone();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = forward.accept().await {
                let _ = tcp.set_nodelay(true);
                let sent = last_tunnel.lock().unwrap().as_ref().is_some_and(|tx| tx.send(tcp).is_ok());
                if !sent {
                    tracing::warn!("{peer}: no device connected to forward to");
                }
            }
        });
    }
    let forward_port = args.forward_port;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let counters = counters.clone();
        let password = password.clone();
        let last_tunnel = last_tunnel.clone();
        tokio::spawn(async move {
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let (tx, forwards) = mpsc::unbounded_channel();
                *last_tunnel.lock().unwrap() = Some(tx);
                serve(tls, password, args.probe, &counters, forwards, forward_port).await;
                counters.connections.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    password: Option<Bytes>,
    probe: bool,
    counters: &Counters,
    mut forwards: mpsc::UnboundedReceiver<TcpStream>,
    forward_port: u32,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut session = ServerSession::new(ServerConfig::default(), Instant::now());
    let mut buf = vec![0u8; 4096];
    let mut established = false;
    let mut probed = false;
    let mut relays: HashMap<ChannelId, Relay> = HashMap::new();
    let mut waiting: HashMap<ChannelId, TcpStream> = HashMap::new();
    let (from_tcp_tx, mut from_tcp) = mpsc::unbounded_channel::<(ChannelId, Option<Bytes>)>();
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                Event::ChannelOpened { ch, .. } if waiting.contains_key(&ch) => {
                    let Some(tcp) = waiting.remove(&ch) else { continue };
                    let (mut tcp_rd, mut tcp_wr) = tcp.into_split();
                    let (to_tcp, mut to_tcp_rx) = mpsc::unbounded_channel::<Bytes>();
                    tokio::spawn(async move {
                        while let Some(data) = to_tcp_rx.recv().await {
                            if tcp_wr.write_all(&data).await.is_err() {
                                break;
                            }
                        }
                        let _ = tcp_wr.shutdown().await;
                    });
                    let from_tcp_tx = from_tcp_tx.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match tcp_rd.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if from_tcp_tx.send((ch, Some(Bytes::copy_from_slice(&buf[..n])))).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                        let _ = from_tcp_tx.send((ch, None));
                    });
                    relays.insert(ch, Relay { pending: Vec::new(), to_tcp: Some(to_tcp) });
                }
                Event::ChannelOpenFailed { ch, .. } => {
                    waiting.remove(&ch);
                    tracing::warn!("the device refused the forwarded channel");
                }
                Event::ChannelData { ch, data } if relays.contains_key(&ch) => {
                    session.consumed(ch, data.len());
                    if let Some(to_tcp) = relays.get(&ch).and_then(|r| r.to_tcp.as_ref()) {
                        let _ = to_tcp.send(data);
                    }
                }
                Event::ChannelEof { ch } | Event::ChannelClosed { ch } if relays.contains_key(&ch) => {
                    if let Some(relay) = relays.get_mut(&ch) {
                        relay.to_tcp = None;
                    }
                    if matches!(event, Event::ChannelClosed { .. }) {
                        relays.remove(&ch);
                    }
                }
                Event::AuthRequest { password: given, .. } => {
                    if password.as_ref().is_none_or(|p| *p == given.0) {
                        session.accept_auth(Instant::now());
                    } else {
                        session.reject_auth(Instant::now());
                    }
                }
                Event::Established => {
                    established = true;
                    counters.established.fetch_add(1, Ordering::Relaxed);
                }
                Event::PortForwarded { port: 5900 } if probe && !probed => {
                    // 5900 is the last forward: the device accepts channels from now on.
                    probed = true;
                    if let Ok(ch) = session.open_channel(16992, (Bytes::from_static(b"127.0.0.1"), 50000)) {
                        tracing::debug!("probe channel {ch}");
                    }
                }
                Event::ChannelOpened { ch, .. } => {
                    session.send(ch, b"POST /wsman HTTP/1.1\r\nHost: device:16992\r\nContent-Length: 0\r\n\r\n");
                }
                Event::ChannelData { ch, data } => {
                    session.consumed(ch, data.len());
                    if data.starts_with(b"HTTP/1.1 401") {
                        counters.probes_answered.fetch_add(1, Ordering::Relaxed);
                        session.close_channel(ch);
                    }
                }
                _ => {}
            }
        }
        for (ch, relay) in &mut relays {
            if !relay.pending.is_empty() {
                let n = session.send(*ch, &relay.pending);
                relay.pending.drain(..n);
            }
        }
        while let Some(bytes) = session.poll_transmit() {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        if wr.flush().await.is_err() || session.is_closed() {
            break;
        }
        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => session.handle_input(&buf[..n], Instant::now()),
            },
            Some(tcp) = forwards.recv() => match session.open_channel(forward_port, (Bytes::from_static(b"127.0.0.1"), 50000)) {
                Ok(ch) => {
                    waiting.insert(ch, tcp);
                }
                Err(err) => tracing::warn!("cannot open a channel to {forward_port}: {err}"),
            },
            Some((ch, data)) = from_tcp.recv() => match data {
                Some(data) => {
                    if let Some(relay) = relays.get_mut(&ch) {
                        relay.pending.extend_from_slice(&data);
                    }
                }
                None => session.close_channel(ch),
            },
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => session.handle_timeout(Instant::now()),
        }
    }
    if established {
        counters.established.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A throwaway CA and a "localhost" certificate it issued; returns the acceptor and the CA PEM.
fn throwaway_tls() -> anyhow::Result<(TlsAcceptor, String)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "mini MPS CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&leaf_key, &issuer)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )?;
    Ok((TlsAcceptor::from(Arc::new(config)), ca_cert.pem()))
}
