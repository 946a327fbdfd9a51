//! One simulated AMT device on its LAN: instead of dialling a gateway, it listens, as a PC's
//! firmware does, on TCP 16993 (WS-MAN) and 16995 (redirection) behind TLS with the device's
//! self-signed certificate (one certificate for both ports), optionally on the plain 16992 and
//! 16994, and answers RMCP presence pings on UDP 623.
//!
//! Every accepted TCP connection is one channel of the port's [`Service`] (the same services
//! the CIRA mode serves, sharing one firmware state), driven by [`HandlerChannel`] as
//! [`device`](super::device) drives an APF channel: the socket's bytes are offered to the
//! handler, what it writes goes to the socket, wake-ups and timers reach it, and the socket is
//! closed once the handler closed and its output is written. TLS is the in-channel
//! [`TlsService`], as `--tls-only` uses it.
//!
//! Limits, so that a peer that stalls or floods does not shut others out: at most
//! [`LanConfig::max_connections`] connections at once (one more is closed at once), at most
//! [`MAX_UNCONSUMED`] received bytes held for a handler that is not taking them (the socket is
//! not read meanwhile), and a connection without progress either way for
//! [`LanConfig::idle_timeout`] is closed.
//!
//! What it does not do: ARP or DHCP, IPv6 link-local scoping, KVM (5900), RMCP+ (IPMI
//! sessions), the shared-with-the-host-OS port behaviour of real firmware.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocols::rmcp::{self, AmtPresence, Message, Pong, Provisioning};
use protocols::session::ChannelId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::channel::HandlerChannel;
use super::error::LanError;
use super::service::{ChannelInfo, Service, Services, WakeSet};
use super::shutdown::Shutdown;
use super::tls_service::TlsService;

/// Most received bytes held for a handler that has not taken them; the socket is not read
/// while more wait.
pub const MAX_UNCONSUMED: usize = 64 * 1024;
/// Largest write to a socket at once.
const MAX_WRITE: usize = 64 * 1024;
/// How long a closing connection may take to flush its last bytes.
const LINGER: Duration = Duration::from_secs(2);

/// The local ports a device binds, per AMT port. [`LanPorts::AMT`] in amt-sim; tests use
/// [`LanPorts::ephemeral`] and ask [`LanDevice::local_addr`] where they landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanPorts {
    /// WS-MAN over HTTP (16992), bound only with [`LanConfig::plain`].
    pub wsman: u16,
    /// WS-MAN over HTTPS (16993).
    pub wsman_tls: u16,
    /// Redirection (16994), bound only with [`LanConfig::plain`].
    pub redirection: u16,
    /// Redirection over TLS (16995).
    pub redirection_tls: u16,
    /// RMCP presence (UDP 623).
    pub rmcp: u16,
}

impl LanPorts {
    /// The ports of real firmware.
    pub const AMT: LanPorts =
        LanPorts { wsman: 16992, wsman_tls: 16993, redirection: 16994, redirection_tls: 16995, rmcp: rmcp::PORT };

    /// Ports chosen by the OS (port 0 everywhere).
    pub fn ephemeral() -> Self {
        LanPorts { wsman: 0, wsman_tls: 0, redirection: 0, redirection_tls: 0, rmcp: 0 }
    }
}

/// One LAN device: where it listens, what it serves, and its limits.
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// The address every listener binds.
    pub addr: IpAddr,
    pub uuid: Uuid,
    /// The services by AMT port (16992–16995), without TLS: 16993 and 16995 are served behind
    /// TLS with [`LanConfig::tls`].
    pub services: Services,
    /// The device's certificate and key, presented on 16993 and 16995.
    pub tls: Arc<rustls::ServerConfig>,
    /// Also listen on 16992 and 16994 without TLS.
    pub plain: bool,
    pub ports: LanPorts,
    /// The firmware version (`16.1.27`); the RMCP pong carries its major and minor number.
    pub amt_version: String,
    /// The provisioning state the RMCP pong reports.
    pub provisioning: Provisioning,
    /// Connections open at once, over all ports (64).
    pub max_connections: usize,
    /// A connection with no byte read or written for this long is closed (10 minutes).
    pub idle_timeout: Duration,
    /// Most bytes of unsent output per connection before the handler is offered no input.
    pub max_pending: usize,
    pub log_level: tracing::Level,
}

impl LanConfig {
    /// A device on `addr` with firmware's ports, TLS only, post-provisioning, the default limits.
    pub fn new(addr: IpAddr, uuid: Uuid, services: Services, tls: Arc<rustls::ServerConfig>) -> Self {
        Self {
            addr,
            uuid,
            services,
            tls,
            plain: false,
            ports: LanPorts::AMT,
            amt_version: super::wsman::AMT_VERSION.to_owned(),
            provisioning: Provisioning::Post,
            max_connections: 64,
            idle_timeout: Duration::from_secs(10 * 60),
            max_pending: 256 * 1024,
            log_level: tracing::Level::INFO,
        }
    }

    /// What the RMCP pong says: the version's major and minor number (each at most 15, the
    /// pong's nibbles), the provisioning state, 16993 (16992 when the plain ports are on).
    pub fn presence(&self) -> AmtPresence {
        let mut numbers = self.amt_version.split('.').map(|n| n.parse::<u8>().unwrap_or(0));
        let major = numbers.next().unwrap_or(0);
        let minor = numbers.next().unwrap_or(0);
        AmtPresence {
            major,
            minor,
            provisioning: self.provisioning,
            port: if self.plain { 16992 } else { 16993 },
            both_ports: self.plain,
        }
    }
}

/// A LAN device with its sockets bound, not yet serving.
#[derive(Debug)]
pub struct LanDevice {
    config: Arc<LanConfig>,
    /// AMT port, listener, the service behind it (with TLS where the port has it).
    listeners: Vec<(u16, TcpListener, Arc<dyn Service>)>,
    rmcp: UdpSocket,
}

/// Binds the device's sockets and serves until `shutdown` fires.
pub async fn serve_lan(config: LanConfig, shutdown: Shutdown) -> Result<(), LanError> {
    LanDevice::bind(config).await?.run(shutdown).await;
    Ok(())
}

impl LanDevice {
    /// Binds the TCP listeners and the RMCP socket. A port of an AMT port without a service is
    /// not bound.
    pub async fn bind(config: LanConfig) -> Result<Self, LanError> {
        let ports = config.ports;
        let mut wanted = vec![(16993, ports.wsman_tls, true), (16995, ports.redirection_tls, true)];
        if config.plain {
            wanted.extend([(16992, ports.wsman, false), (16994, ports.redirection, false)]);
        }
        let mut listeners = Vec::new();
        for (amt_port, local_port, tls) in wanted {
            let Some(service) = config.services.get(u32::from(amt_port)) else {
                tracing::debug!("lan: no service on {amt_port}; not listening there");
                continue;
            };
            let service: Arc<dyn Service> = if tls {
                Arc::new(TlsService::new(Arc::clone(service), Arc::clone(&config.tls)))
            } else {
                Arc::clone(service)
            };
            let addr = SocketAddr::new(config.addr, local_port);
            let listener =
                TcpListener::bind(addr).await.map_err(|source| LanError::Bind { proto: "TCP", addr, source })?;
            listeners.push((amt_port, listener, service));
        }
        let addr = SocketAddr::new(config.addr, ports.rmcp);
        let rmcp = UdpSocket::bind(addr).await.map_err(|source| LanError::Bind { proto: "UDP", addr, source })?;
        Ok(Self { config: Arc::new(config), listeners, rmcp })
    }

    /// Where the socket of AMT port `amt_port` (16992–16995, or 623 for RMCP) is bound.
    pub fn local_addr(&self, amt_port: u16) -> Option<SocketAddr> {
        if amt_port == rmcp::PORT {
            return self.rmcp.local_addr().ok();
        }
        self.listeners.iter().find(|(port, _, _)| *port == amt_port).and_then(|(_, l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` fires; open connections end then too.
    pub async fn run(self, mut shutdown: Shutdown) {
        let slots = Arc::new(Semaphore::new(self.config.max_connections));
        let next_id = Arc::new(AtomicU32::new(0));
        let mut tasks = JoinSet::new();
        for (amt_port, listener, service) in self.listeners {
            let accept = Accept {
                config: Arc::clone(&self.config),
                amt_port,
                service,
                slots: Arc::clone(&slots),
                next_id: Arc::clone(&next_id),
                shutdown: shutdown.clone(),
            };
            tasks.spawn(accept.run(listener));
        }
        let pong = Pong::from_amt(&self.config.presence());
        tasks.spawn(answer_pings(self.rmcp, pong));
        shutdown.wait().await;
        tasks.abort_all();
    }
}

/// The accept loop of one port.
struct Accept {
    config: Arc<LanConfig>,
    amt_port: u16,
    service: Arc<dyn Service>,
    slots: Arc<Semaphore>,
    next_id: Arc<AtomicU32>,
    shutdown: Shutdown,
}

impl Accept {
    async fn run(self, listener: TcpListener) {
        let level = self.config.log_level;
        let port = self.amt_port;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before it was accepted.
                    device_warn!(level, "lan: accept on {port} failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                device_warn!(
                    level,
                    "lan: connection from {peer} to {port} refused: {} connections open",
                    self.config.max_connections
                );
                continue;
            };
            device_log!(level, "lan: connection from {peer} to {port}");
            let ch = ChannelId(self.next_id.fetch_add(1, Ordering::Relaxed));
            let wakes = WakeSet::new();
            let info = ChannelInfo {
                uuid: self.config.uuid,
                ch,
                port: u32::from(port),
                originator: Bytes::from(peer.ip().to_string()),
                originator_port: u32::from(peer.port()),
                log_level: level,
                waker: wakes.waker(ch),
            };
            let Some(handler) = self.service.open(&info) else {
                device_log!(level, "lan: connection from {peer} to {port} refused by its service");
                continue;
            };
            let connection = LanConnection {
                peer,
                port,
                ch,
                wakes,
                run: HandlerChannel::open(handler, self.config.max_pending),
                idle_timeout: self.config.idle_timeout,
                _slot: permit,
            };
            tokio::spawn(connection.run(stream, self.shutdown.clone()));
        }
    }
}

/// One accepted connection and its handler.
struct LanConnection {
    peer: SocketAddr,
    port: u16,
    ch: ChannelId,
    wakes: Arc<WakeSet>,
    run: HandlerChannel,
    idle_timeout: Duration,
    /// Frees a connection slot when the connection ends.
    _slot: OwnedSemaphorePermit,
}

impl LanConnection {
    async fn run(mut self, stream: TcpStream, mut shutdown: Shutdown) {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = vec![0u8; 16 * 1024];
        let mut idle_until = Instant::now() + self.idle_timeout;
        let run = &mut self.run;
        let end = loop {
            run.run_timer(Instant::now());
            while run.step().moved {}
            run.shrink();
            if run.take_close() {
                break "closed by the device";
            }
            if run.take_output_end() && tokio::time::timeout(LINGER, wr.shutdown()).await.is_err() {
                break "the peer stopped reading";
            }
            let read = !run.eof_received() && run.unconsumed() < MAX_UNCONSUMED;
            tokio::select! {
                result = rd.read(&mut buf), if read => match result {
                    Ok(0) => run.received_eof(),
                    Ok(n) => {
                        run.received(&buf[..n]);
                        idle_until = Instant::now() + self.idle_timeout;
                    }
                    Err(_) => break "reset by the peer",
                },
                result = wr.write(run.next_output(MAX_WRITE)), if run.has_output() => match result {
                    Ok(0) | Err(_) => break "the peer stopped reading",
                    Ok(n) => {
                        run.sent(n);
                        idle_until = Instant::now() + self.idle_timeout;
                    }
                },
                () = self.wakes.notified() => {
                    if self.wakes.take_one(self.ch) {
                        run.wake();
                    }
                }
                () = sleep_until(run.deadline()) => {}
                () = tokio::time::sleep_until(idle_until.into()) => break "idle",
                () = shutdown.wait() => break "shut down",
            }
        };
        let _ = tokio::time::timeout(LINGER, wr.shutdown()).await;
        tracing::debug!("lan: connection from {} to {} ended: {end}", self.peer, self.port);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Answers RMCP presence pings with `pong`; ignores every other datagram.
async fn answer_pings(socket: UdpSocket, pong: Pong) {
    // One byte more than the largest datagram, so that a longer one is seen as too long.
    let mut buf = [0u8; rmcp::MAX_DATAGRAM + 1];
    let mut reply = Vec::with_capacity(rmcp::HEADER_LEN + rmcp::PONG_DATA_LEN);
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::debug!("lan: RMCP receive failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let ping = match rmcp::decode(&buf[..n]) {
            Ok(ping @ Message::Ping { .. }) => ping,
            Ok(other) => {
                tracing::debug!("lan: RMCP {other:?} from {from} ignored");
                continue;
            }
            Err(err) => {
                tracing::debug!("lan: datagram from {from} on the RMCP port ignored: {err}");
                continue;
            }
        };
        let Some(answer) = Message::pong_to(&ping, pong) else { continue };
        reply.clear();
        rmcp::encode(&answer, &mut reply);
        match socket.send_to(&reply, from).await {
            Ok(_) => tracing::debug!("lan: RMCP pong to {from}"),
            Err(err) => tracing::debug!("lan: RMCP pong to {from} failed: {err}"),
        }
    }
}

#[cfg(test)]
#[path = "lan_test.rs"]
mod tests;
