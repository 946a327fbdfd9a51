//! `--expose` end to end in one process: a device runs its tunnel over an in-memory stream
//! against a gateway stand-in (`ServerSession`), which opens a channel to the exposed port; the
//! device carries it over TCP to an echo server on 127.0.0.1. 8 MiB go through and come back
//! intact, and the half-close passes both ways: the gateway's EOF reaches the echo server, whose
//! EOF comes back as CHANNEL_EOF before the channel closes. Meanwhile a second exposed port leads
//! to a server that never reads: that channel stalls without holding back the first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use loadtest::amt::{client_config, run_connection, server_name, shutdown_pair, DeviceConfig, ExposeService, Trust};
use protocols::session::{ChannelId, Event, ServerConfig, ServerSession};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

const EXPOSED: u32 = 5201;
/// Exposed to a server that accepts and never reads.
const STALLED: u32 = 5202;
const TOTAL: usize = 8 * 1024 * 1024;

/// Echoes each connection until its EOF, then shuts down its write side.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.into_split();
                tokio::io::copy(&mut rd, &mut wr).await.unwrap();
                wr.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// Accepts connections and keeps them open without reading, with a small receive buffer (no
/// autotuning), so that what a stalled channel takes is bounded by the device, not the kernel.
async fn black_hole() -> std::net::SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// Bytes that are not all alike, so that a reordering shows.
fn payload() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..TOTAL)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// What the gateway saw on the exposed channel.
#[derive(Debug, Default)]
struct Seen {
    received: Vec<u8>,
    eof_before_close: bool,
    /// Bytes the device's window took on the stalled channel.
    stalled_sent: usize,
}

/// The gateway's side: accepts the device, opens a channel to [`EXPOSED`] once every forward is
/// answered, sends `data` then EOF, and collects what comes back until the channel closes. It
/// also opens a channel to [`STALLED`] and keeps sending `data` there over and over, as far as
/// the device's window lets it.
async fn gateway(stream: tokio::io::DuplexStream, ports: usize, data: &[u8]) -> Seen {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut session = ServerSession::new(ServerConfig::default(), Instant::now());
    let mut buf = vec![0u8; 64 * 1024];
    let mut forwarded = 0;
    let mut channel: Option<ChannelId> = None;
    let mut stalled: Option<ChannelId> = None;
    let mut stalled_sent = 0;
    let mut open = false;
    let mut sent = 0;
    let mut eof_sent = false;
    let mut seen = Seen::default();
    let mut eof = false;
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                Event::AuthRequest { .. } => session.accept_auth(Instant::now()),
                Event::PortForwarded { .. } => {
                    forwarded += 1;
                    if forwarded == ports {
                        stalled = Some(session.open_channel(STALLED, ("10.0.0.1".into(), 40001)).expect("open"));
                        channel = Some(session.open_channel(EXPOSED, ("10.0.0.1".into(), 40000)).expect("open"));
                    }
                }
                Event::ChannelOpened { ch, .. } if Some(ch) == channel => open = true,
                Event::ChannelOpenFailed { reason, .. } => panic!("channel refused: {reason:?}"),
                Event::ChannelData { ch, data } if Some(ch) == channel => {
                    session.consumed(ch, data.len());
                    seen.received.extend_from_slice(&data);
                }
                Event::ChannelEof { ch } if Some(ch) == channel => eof = true,
                Event::ChannelClosed { ch } if Some(ch) == channel => {
                    seen.eof_before_close = eof;
                    seen.stalled_sent = stalled_sent;
                    return seen;
                }
                Event::Closed(cause) => panic!("tunnel closed: {cause:?}"),
                _ => {}
            }
        }
        if let Some(ch) = stalled {
            // Zero until that channel is open, and once its window is used up.
            stalled_sent += session.send(ch, &data[stalled_sent % data.len()..]);
        }
        if let (true, Some(ch)) = (open, channel) {
            while sent < data.len() {
                let n = session.send(ch, &data[sent..]);
                if n == 0 {
                    break;
                }
                sent += n;
            }
            if sent == data.len() && !eof_sent {
                session.send_eof(ch);
                eof_sent = true;
            }
        }
        while let Some(bytes) = session.poll_transmit() {
            wr.write_all(&bytes).await.expect("device reads");
        }
        wr.flush().await.unwrap();
        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => panic!("the device went away"),
                Ok(n) => session.handle_input(&buf[..n], Instant::now()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_port_carries_8_mib_to_a_socket_and_back_beside_a_stalled_one() {
    let echo = echo_server().await;
    let tls = client_config(&Trust::Insecure).unwrap();
    let mut config =
        DeviceConfig::new("unused:1", server_name("localhost").unwrap(), tls, Uuid::from_u128(7), "user", "pw");
    let stalled = black_hole().await;
    config.services = config
        .services
        .clone()
        .with_shared(EXPOSED, Arc::new(ExposeService::new(echo)))
        .with_shared(STALLED, Arc::new(ExposeService::new(stalled)));
    config.ports.extend([EXPOSED, STALLED]);
    config.window = 128 * 1024;
    config.adjust_step = 32 * 1024;
    let ports = config.ports.len();
    let (device_end, gateway_end) = tokio::io::duplex(256 * 1024);
    let (stop, mut shutdown) = shutdown_pair();
    let device = tokio::spawn(async move { run_connection(&config, device_end, &mut shutdown).await });

    let data = payload();
    let started = Instant::now();
    let seen = tokio::time::timeout(Duration::from_secs(120), gateway(gateway_end, ports, &data))
        .await
        .expect("the channel closed in time");
    let elapsed = started.elapsed();
    eprintln!(
        "8 MiB there and back in {elapsed:?} ({:.0} MiB/s each way)",
        TOTAL as f64 / 1048576.0 / elapsed.as_secs_f64()
    );
    assert_eq!(seen.received.len(), data.len());
    assert_eq!(Sha256::digest(&seen.received), Sha256::digest(&data), "the echo is intact");
    assert!(seen.eof_before_close, "the echo server's EOF came back as CHANNEL_EOF");
    eprintln!("the stalled channel took {} bytes", seen.stalled_sent);
    assert!(seen.stalled_sent > 0, "the stalled channel was open");
    // Its socket's send buffer (tcp_wmem, 4 MiB at most by default), what the device buffers
    // (256 KiB toward the socket, its window and pending input), nothing like 32 MiB.
    assert!(seen.stalled_sent < 4 * TOTAL, "a server that does not read holds its channel back");

    stop.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), device).await;
}
