//! The per-device driver: dials the gateway, runs one APF tunnel at a time with
//! [`ClientSession`], serves the channels the gateway opens, and reconnects with back-off.
//!
//! Several gateway addresses, as AMT's CIRA policy lists several MPS servers: the device starts at
//! [`DeviceConfig::first_gateway`]; a failed TCP connect or TLS handshake (refused, timed out,
//! closed by a balancer with no live backend) moves it on to the next address at once. Only when
//! every address failed in a row does it wait a back-off delay, then start the next round where
//! the last one started. A connection that got through TLS ends the round: when it drops,
//! whether its tunnel was established or not, the device waits a back-off delay and dials the
//! same address again.
//!
//! One task per device and nothing else: the task selects over reading the TLS stream, writing
//! what the session queued, the session's next deadline and the stop signal. Buffers stay small
//! while idle: the read buffer shrinks back to 2 KiB after bulk traffic, and a channel's buffers
//! exist only while it carries data. Every wait is bounded: TCP connect and TLS handshake by
//! their timeouts, the tunnel by the session's handshake and idle timeouts, writes by a stall
//! timeout, and the final flush by a short linger.
//!
//! Backpressure, per channel: bytes from the gateway are offered to the service's handler, and
//! window is granted back (`consumed`) only for bytes the handler took; the handler's output is
//! passed to `send`, which takes no more than the gateway's window. While a channel's unsent
//! output is over [`DeviceConfig::max_pending`], its handler is offered nothing, so the gateway
//! runs out of window instead of the device buffering without bound. The same holds for the
//! socket: no channel data is queued while more than 256 KiB wait to be written.
//!
//! Handlers also run on wake-ups and timers: the task selects on the connection's [`WakeSet`]
//! (a handler's own tasks wake it) and sleeps until the earliest of the session's and the
//! handlers' deadlines. A handler's output is handed to the session one message at a time where
//! the handler marked message boundaries ([`Outbox::end_message`]), so each such message travels
//! in CHANNEL_DATA of its own.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use protocols::apf::{DisconnectReason, OpenFailureReason};
use protocols::session::{ChannelId, ClientSession, CloseCause, Event};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::backoff::Backoff;
use super::channel::HandlerChannel;
use super::config::{DeviceConfig, GatewayAddr};
use super::error::{ConnectionError, DeviceError};
use super::service::{ChannelInfo, WakeSet};
use super::shutdown::Shutdown;
use super::stats::{EstablishedGuard, Stats};

/// Smallest and largest read from the TLS stream.
const MIN_READ: usize = 2 * 1024;
const MAX_READ: usize = 64 * 1024;
/// No channel data is handed to the session while this much waits to be written.
const OUT_QUEUE_CAP: usize = 256 * 1024;
/// A write that makes no progress for this long ends the connection.
const WRITE_STALL: Duration = Duration::from_secs(60);
/// How long a closing connection may take to flush its last bytes (DISCONNECT).
const LINGER: Duration = Duration::from_secs(2);

/// What a device did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceReport {
    /// TLS connections made.
    pub connections: u64,
    /// Of those, the ones whose tunnel got established.
    pub established: u64,
}

/// Runs one device until `shutdown` fires (reconnecting whenever the tunnel drops), until the
/// gateway refuses its credentials when [`DeviceConfig::stop_on_auth_failure`] is set, or until
/// its one connection ends (or every address failed once) when [`DeviceConfig::no_reconnect`]
/// is set. Fails at once when [`DeviceConfig::gateways`] is empty.
pub async fn run_device(config: DeviceConfig, shutdown: Shutdown) -> Result<DeviceReport, DeviceError> {
    run_device_with_stats(config, Arc::new(Stats::default()), shutdown).await
}

/// [`run_device`], counting into `stats` (shared by the devices of a fleet).
pub async fn run_device_with_stats(
    config: DeviceConfig,
    stats: Arc<Stats>,
    mut shutdown: Shutdown,
) -> Result<DeviceReport, DeviceError> {
    let level = config.log_level;
    let count = config.gateways.len();
    if count == 0 {
        return Err(DeviceError::NoGateway { uuid: config.uuid });
    }
    let mut backoff = Backoff::new(config.reconnect);
    let mut report = DeviceReport::default();
    let mut attempts = 0u64;
    // The address dialled next, and how many addresses failed in a row (the round so far).
    let mut index = config.first_gateway % count;
    let mut failed_in_round = 0;
    loop {
        if shutdown.is_triggered() {
            return Ok(report);
        }
        if attempts > 0 {
            stats.reconnect();
        }
        attempts += 1;
        if let Some(help) = &config.remote_help {
            if !help.is_on() {
                device_log!(level, "remote help is off; waiting for the user");
                tokio::select! {
                    () = help.wait_on() => device_log!(level, "remote help requested by the user; dialling"),
                    () = shutdown.wait() => return Ok(report),
                }
            }
        }
        let gateway = &config.gateways[index];
        let connected = tokio::select! {
            result = connect(&config, gateway) => result,
            () = shutdown.wait() => return Ok(report),
        };
        let outcome = match connected {
            Ok(stream) => {
                failed_in_round = 0;
                report.connections += 1;
                if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    stats.resumed();
                }
                let connection = Connection::new(&config, &stats, index, report.established == 0);
                let outcome = connection.run(stream, &mut shutdown).await;
                match &outcome.end {
                    ConnectionError::Shutdown => device_log!(level, "disconnected: stopped"),
                    end => device_warn!(level, "disconnected: {end}"),
                }
                outcome
            }
            Err(err) => {
                stats.connect_failure();
                failed_in_round += 1;
                index = (index + 1) % count;
                if failed_in_round < count {
                    device_warn!(level, "{err}; trying {}", config.gateways[index].addr);
                    continue;
                }
                failed_in_round = 0;
                if count > 1 {
                    device_warn!(level, "{err}; none of the {count} gateway addresses answered");
                } else {
                    device_warn!(level, "{err}");
                }
                Outcome { established: false, auth_rejected: false, end: err }
            }
        };
        if outcome.established {
            report.established += 1;
            backoff.reset();
        }
        if matches!(outcome.end, ConnectionError::Shutdown) || shutdown.is_triggered() {
            return Ok(report);
        }
        if outcome.auth_rejected && config.stop_on_auth_failure {
            return Err(DeviceError::AuthRejected { uuid: config.uuid, username: config.username.clone() });
        }
        if config.no_reconnect {
            return Err(DeviceError::ConnectionEnded {
                uuid: config.uuid,
                established: outcome.established,
                end: outcome.end,
            });
        }
        if let Some(help) = &config.remote_help {
            if outcome.established && ended_by_gateway(&outcome.end) {
                help.turn_off();
                device_log!(level, "remote help ended by the gateway; waiting for the user");
            }
        }
        let delay = match outcome.end {
            ConnectionError::DroppedByFirmware => config.redial_delay,
            ConnectionError::Blip => Duration::ZERO,
            _ => backoff.next_delay(),
        };
        device_log!(level, "reconnecting in {:.1}s", delay.as_secs_f64());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.wait() => return Ok(report),
        }
    }
}

/// Whether the gateway ended a healthy tunnel (DISCONNECT from it, or its TLS/TCP close), as
/// opposed to a failure or our own doing.
fn ended_by_gateway(end: &ConnectionError) -> bool {
    matches!(
        end,
        ConnectionError::PeerClosed
            | ConnectionError::PeerReset
            | ConnectionError::Session(protocols::session::CloseCause::PeerDisconnected(_))
    )
}

/// TCP connect to `gateway` (to the first address its name resolves to that answers) and TLS
/// handshake, each with its timeout.
async fn connect(config: &DeviceConfig, gateway: &GatewayAddr) -> Result<TlsStream<TcpStream>, ConnectionError> {
    let addr = &gateway.addr;
    let tcp = match tokio::time::timeout(config.connect_timeout, dial(addr, config.source)).await {
        Ok(result) => result?,
        Err(_) => return Err(ConnectionError::ConnectTimeout { addr: addr.clone(), timeout: config.connect_timeout }),
    };
    // Small APF messages (keepalives, window adjusts) must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let connector = TlsConnector::from(config.tls.clone());
    match tokio::time::timeout(config.tls_timeout, connector.connect(gateway.server_name.clone(), tcp)).await {
        Ok(Ok(stream)) => {
            let (tcp, tls) = stream.get_ref();
            let peer = tcp.peer_addr().map_or_else(|_| addr.clone(), |a| a.to_string());
            device_log!(
                config.log_level,
                "connected to {peer} ({})",
                tls.protocol_version().map_or_else(|| "TLS".to_owned(), |v| format!("{v:?}"))
            );
            Ok(stream)
        }
        Ok(Err(source)) => {
            let hint = tls_hint(&source);
            Err(ConnectionError::Tls { addr: addr.clone(), source, hint })
        }
        Err(_) => Err(ConnectionError::TlsTimeout { addr: addr.clone(), timeout: config.tls_timeout }),
    }
}

/// Connects to the first address of `addr` that answers, from `local` when given (then only to
/// addresses of its family).
async fn dial(addr: &str, local: Option<IpAddr>) -> Result<TcpStream, ConnectionError> {
    let addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| ConnectionError::Resolve { addr: addr.to_owned(), source })?;
    let mut last_error = None;
    let mut resolved = false;
    for socket_addr in addrs {
        resolved = true;
        let result = match local {
            None => TcpStream::connect(socket_addr).await,
            Some(local) if local.is_ipv4() != socket_addr.is_ipv4() => continue,
            Some(local) => {
                let socket = bind(local, socket_addr)?;
                socket.connect(socket_addr).await
            }
        };
        match result {
            Ok(stream) => return Ok(stream),
            Err(err) => last_error = Some(err),
        }
    }
    Err(match (last_error, local) {
        (Some(source), _) => ConnectionError::Connect { addr: addr.to_owned(), source },
        (None, Some(local)) if resolved => ConnectionError::NoAddressForSource { addr: addr.to_owned(), local },
        (None, _) => ConnectionError::NoAddress { addr: addr.to_owned() },
    })
}

/// A socket for a connection to `to`, bound to `local` (any port).
fn bind(local: IpAddr, to: SocketAddr) -> Result<TcpSocket, ConnectionError> {
    let socket = if to.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    socket
        .and_then(|socket| socket.bind(SocketAddr::new(local, 0)).map(|()| socket))
        .map_err(|source| ConnectionError::Bind { local, source })
}

/// What the user can do about a failed handshake.
fn tls_hint(err: &io::Error) -> &'static str {
    match err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => {
            " (the gateway's certificate is not trusted: check --ca and --server-name, or use --insecure)"
        }
        Some(rustls::Error::NoCertificatesPresented) => " (the gateway sent no certificate)",
        Some(rustls::Error::PeerIncompatible(_)) => " (no TLS version or cipher suite in common with the gateway)",
        _ => "",
    }
}

/// Waits for `notify` (forever without one).
async fn notified(notify: Option<&tokio::sync::Notify>) {
    match notify {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    }
}

/// Waits for `blip` (forever without one).
async fn blip_wait(blip: Option<&mut super::blip::Blip>) {
    match blip {
        Some(blip) => blip.wait().await,
        None => std::future::pending().await,
    }
}

/// How one connection ended.
#[derive(Debug)]
pub struct ConnectionOutcome {
    /// The tunnel got established.
    pub established: bool,
    /// The gateway refused the credentials.
    pub auth_rejected: bool,
    pub end: ConnectionError,
}

type Outcome = ConnectionOutcome;

/// Runs one tunnel over an already connected stream: no TCP, no TLS, no reconnect, and
/// [`DeviceConfig::gateways`] unused. For joining a device to a gateway's tunnel driver in
/// memory (a duplex stream) in tests.
pub async fn run_connection<S>(config: &DeviceConfig, stream: S, shutdown: &mut Shutdown) -> ConnectionOutcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stats = Stats::default();
    Connection::new(config, &stats, 0, true).run(stream, shutdown).await
}

/// Bytes the session produced, waiting for the socket.
#[derive(Debug, Default)]
struct OutQueue {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl OutQueue {
    fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        self.chunks.push_back(bytes);
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// Writes some of the queue, or flushes the TLS layer once the queue is empty. Cancel-safe: a
/// write that did not complete took nothing. Returns an error when the socket is gone.
async fn write_step<W: AsyncWrite + Unpin>(wr: &mut W, out: &mut OutQueue, needs_flush: &mut bool) -> io::Result<()> {
    if let Some(front) = out.chunks.front_mut() {
        let n = wr.write(front).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        front.advance(n);
        out.len -= n;
        if front.is_empty() {
            out.chunks.pop_front();
        }
        *needs_flush = true;
    } else {
        wr.flush().await?;
        *needs_flush = false;
    }
    Ok(())
}

/// One accepted channel and its buffers.
struct Channel {
    port: u32,
    /// The handler and its buffers; `inbound` is bounded by the window we advertised.
    run: HandlerChannel,
}

/// One TLS connection's tunnel.
struct Connection<'a> {
    config: &'a DeviceConfig,
    stats: &'a Stats,
    /// The index of the gateway address this connection was made to (for the stats).
    gateway: usize,
    /// Whether an establishment now would be this device's first.
    first: bool,
    session: ClientSession,
    channels: HashMap<ChannelId, Channel>,
    forwarded: Vec<u32>,
    refused: Vec<u32>,
    established: Option<EstablishedGuard<'a>>,
    was_established: bool,
    auth_rejected: bool,
    closed: Option<CloseCause>,
    /// The channels whose handlers asked to be woken.
    wakes: Arc<WakeSet>,
}

impl<'a> Connection<'a> {
    fn new(config: &'a DeviceConfig, stats: &'a Stats, gateway: usize, first: bool) -> Self {
        Self {
            config,
            stats,
            gateway,
            first,
            session: ClientSession::new(config.session_config(), Instant::now()),
            channels: HashMap::new(),
            forwarded: Vec::new(),
            refused: Vec::new(),
            established: None,
            was_established: false,
            auth_rejected: false,
            closed: None,
            wakes: WakeSet::new(),
        }
    }

    async fn run<S>(mut self, stream: S, shutdown: &mut Shutdown) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let _connected = self.stats.connected();
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut out = OutQueue::default();
        let mut read_buf = BytesMut::with_capacity(MIN_READ);
        let mut read_size = MIN_READ;
        let mut needs_flush = false;
        let mut write_deadline: Option<Instant> = None;
        // Set once the connection is ending; then only the remaining output is flushed.
        let mut end: Option<ConnectionError> = None;
        let mut linger_until: Option<Instant> = None;
        let mut write_failed = false;
        let wakes = Arc::clone(&self.wakes);
        let firmware_drop = self.config.firmware.as_ref().map(|f| f.tunnel_drop(self.config.uuid));
        let mut blip = self.config.blip.clone();
        if let Some(blip) = &mut blip {
            blip.arm();
        }
        loop {
            self.process(&mut out);
            if end.is_none() {
                if let Some(cause) = self.closed.take() {
                    end = Some(ConnectionError::Session(cause));
                }
            }
            let has_output = !out.is_empty() || needs_flush;
            if end.is_some() {
                if !has_output {
                    break;
                }
                linger_until.get_or_insert_with(|| Instant::now() + LINGER);
            }
            if !has_output {
                write_deadline = None;
            } else if write_deadline.is_none() {
                write_deadline = Some(Instant::now() + WRITE_STALL);
            }
            let timer = match linger_until {
                Some(at) => Some(at),
                None => earliest(self.session.poll_timeout(), self.handler_deadline()),
            };
            tokio::select! {
                biased;
                () = shutdown.wait(), if end.is_none() => {
                    self.session.disconnect(DisconnectReason::ByApplication);
                    end = Some(ConnectionError::Shutdown);
                }
                result = write_step(&mut wr, &mut out, &mut needs_flush), if has_output => match result {
                    Ok(()) => write_deadline = Some(Instant::now() + WRITE_STALL),
                    Err(err) => {
                        end.get_or_insert(ConnectionError::Io(err));
                        write_failed = true;
                        break;
                    }
                },
                result = rd.read_buf(&mut read_buf), if end.is_none() => match result {
                    Ok(0) => end = Some(ConnectionError::PeerClosed),
                    Ok(n) => {
                        self.session.handle_input(&read_buf[..n], Instant::now());
                        read_size = next_read_size(read_size, n);
                        read_buf.clear();
                        if read_buf.capacity() > 2 * read_size {
                            read_buf = BytesMut::with_capacity(read_size);
                        } else {
                            read_buf.reserve(read_size);
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => end = Some(ConnectionError::PeerReset),
                    Err(err) => end = Some(ConnectionError::Io(err)),
                },
                () = notified(firmware_drop.as_deref()), if end.is_none() && firmware_drop.is_some() => {
                    device_log!(self.config.log_level, "firmware: dropping the tunnel after the power change");
                    self.session.disconnect(DisconnectReason::ByApplication);
                    self.channels.clear();
                    end = Some(ConnectionError::DroppedByFirmware);
                }
                () = blip_wait(blip.as_mut()), if end.is_none() && blip.is_some() => {
                    // As if the network went away: no DISCONNECT, no close_notify.
                    end = Some(ConnectionError::Blip);
                    write_failed = true;
                    break;
                }
                () = wakes.notified(), if end.is_none() => {
                    for ch in wakes.take() {
                        if let Some(channel) = self.channels.get_mut(&ch) {
                            channel.run.wake();
                        }
                    }
                }
                () = sleep_until(timer), if timer.is_some() => {
                    if linger_until.is_some() {
                        break;
                    }
                    self.session.handle_timeout(Instant::now());
                }
                () = sleep_until(write_deadline), if write_deadline.is_some() && end.is_none() => {
                    end = Some(ConnectionError::WriteStalled(WRITE_STALL));
                    write_failed = true;
                    break;
                }
            }
        }
        if !write_failed {
            // TLS close_notify, then FIN; bounded, the peer may be gone.
            let _ = tokio::time::timeout(LINGER, wr.shutdown()).await;
        }
        Outcome {
            established: self.was_established,
            auth_rejected: self.auth_rejected,
            end: end.unwrap_or(ConnectionError::PeerClosed),
        }
    }

    /// The earliest deadline of the channels' handlers.
    fn handler_deadline(&self) -> Option<Instant> {
        self.channels.values().filter_map(|c| c.run.deadline()).min()
    }

    /// Reacts to the session's events, moves channel data, and collects the bytes to send.
    fn process(&mut self, out: &mut OutQueue) {
        loop {
            let mut any = false;
            while let Some(event) = self.session.poll_event() {
                any = true;
                self.on_event(event);
            }
            self.pump_channels(out.len);
            while let Some(bytes) = self.session.poll_transmit() {
                out.push(bytes);
            }
            if !any {
                break;
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        let level = self.config.log_level;
        match event {
            Event::Authenticated => device_log!(level, "authenticated as {:?}", self.config.username),
            Event::AuthRejected => {
                self.auth_rejected = true;
                self.stats.auth_failure();
                device_warn!(
                    level,
                    "the gateway refused username {:?} and its password (check --username and --password)",
                    self.config.username
                );
            }
            Event::PortForwarded { port } => self.forwarded.push(port),
            Event::PortCancelled { port } => self.refused.push(port),
            Event::Established => {
                if self.refused.is_empty() {
                    device_log!(level, "established: ports {:?} forwarded", self.forwarded);
                } else {
                    device_log!(
                        level,
                        "established: ports {:?} forwarded, {:?} refused by the gateway",
                        self.forwarded,
                        self.refused
                    );
                }
                self.was_established = true;
                self.established = Some(self.stats.established(self.first, self.gateway));
                self.first = false;
            }
            Event::KeepaliveOptions { interval_secs, timeout_secs } => {
                tracing::debug!("keepalive interval {interval_secs}s (timeout {timeout_secs}s) set by the gateway");
            }
            Event::Keepalive => tracing::trace!("keepalive request from the gateway"),
            Event::KeepaliveReply { cookie } => tracing::trace!("keepalive reply {cookie}"),
            Event::ChannelOpenRequest { ch, port, originator, originator_port } => {
                self.open_channel(ch, port, originator, originator_port)
            }
            Event::ChannelData { ch, data } => match self.channels.get_mut(&ch) {
                Some(channel) => channel.run.received(&data),
                None => self.session.consumed(ch, data.len()),
            },
            Event::ChannelEof { ch } => {
                if let Some(channel) = self.channels.get_mut(&ch) {
                    channel.run.received_eof();
                }
            }
            Event::ChannelClosed { ch } => {
                if let Some(channel) = self.channels.remove(&ch) {
                    tracing::debug!("channel {ch} to port {} closed", channel.port);
                }
            }
            // The pump runs after every batch of events and sends what the new credit allows.
            Event::ChannelWritable { .. } => {}
            Event::Closed(cause) => {
                self.established = None;
                self.closed = Some(cause);
            }
            // Server-role events.
            Event::Hello { .. }
            | Event::AuthRequest { .. }
            | Event::AuthMethodRefused { .. }
            | Event::ChannelOpened { .. }
            | Event::ChannelOpenFailed { .. } => {}
        }
    }

    fn open_channel(&mut self, ch: ChannelId, port: u32, originator: Bytes, originator_port: u32) {
        let level = self.config.log_level;
        let info = ChannelInfo {
            uuid: self.config.uuid,
            ch,
            port,
            originator: originator.clone(),
            originator_port,
            log_level: level,
            waker: self.wakes.waker(ch),
        };
        let Some(handler) = self.config.services.get(port).and_then(|service| service.open(&info)) else {
            device_log!(level, "channel to port {port} refused: no service on that port");
            self.session.reject_channel(ch, OpenFailureReason::ConnectFailed);
            return;
        };
        if !self.session.accept_channel(ch) {
            return;
        }
        let channel = Channel { port, run: HandlerChannel::open(handler, self.config.max_pending) };
        self.channels.insert(ch, channel);
        self.stats.channel_opened();
        tracing::debug!(
            "channel {ch} to port {port} opened for {}:{originator_port}",
            String::from_utf8_lossy(&originator)
        );
    }

    /// Moves data between the channels' buffers, their handlers and the session, within the
    /// windows and bounds (see the module doc).
    fn pump_channels(&mut self, queued: usize) {
        let mut budget = OUT_QUEUE_CAP.saturating_sub(queued);
        let now = Instant::now();
        for (&id, channel) in self.channels.iter_mut() {
            let run = &mut channel.run;
            run.run_timer(now);
            loop {
                let mut moved = false;
                while budget > 0 {
                    // One message (up to the next boundary) per send, so one per CHANNEL_DATA.
                    let message = run.next_output(budget);
                    if message.is_empty() {
                        break;
                    }
                    let n = self.session.send(id, message);
                    if n == 0 {
                        break;
                    }
                    run.sent(n);
                    budget -= n;
                    moved = true;
                }
                let step = run.step();
                if step.consumed > 0 {
                    self.session.consumed(id, step.consumed);
                }
                moved |= step.moved;
                if run.take_output_end() {
                    self.session.send_eof(id);
                }
                if run.take_close() {
                    self.session.close_channel(id);
                }
                if !moved {
                    break;
                }
            }
            run.shrink();
        }
    }
}

/// Grows the read size after a full read, shrinks it after small ones.
fn next_read_size(current: usize, n: usize) -> usize {
    if n >= current {
        (current * 2).min(MAX_READ)
    } else if n < current / 4 {
        (current / 2).max(MIN_READ)
    } else {
        current
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_adapts_within_bounds() {
        let mut size = MIN_READ;
        for _ in 0..10 {
            size = next_read_size(size, size);
        }
        assert_eq!(size, MAX_READ);
        for _ in 0..10 {
            size = next_read_size(size, 5);
        }
        assert_eq!(size, MIN_READ);
        assert_eq!(next_read_size(8192, 4096), 8192);
    }

    #[tokio::test]
    async fn dial_binds_the_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        for (local, seen) in [(None, [127, 0, 0, 1]), (Some(IpAddr::from([127, 0, 0, 2])), [127, 0, 0, 2])] {
            let (dialled, accepted) = tokio::join!(dial(&addr, local), listener.accept());
            let stream = dialled.expect("connected");
            let (_, peer) = accepted.unwrap();
            assert_eq!(peer.ip(), IpAddr::from(seen));
            assert_eq!(stream.local_addr().unwrap().ip(), IpAddr::from(seen));
        }
        // An IPv6 source cannot reach an IPv4-only gateway address.
        match dial(&addr, Some("::1".parse().unwrap())).await {
            Err(err @ ConnectionError::NoAddressForSource { .. }) => {
                assert!(err.to_string().contains("::1"), "{err}")
            }
            other => panic!("expected NoAddressForSource, got {other:?}"),
        }
        // An address this machine does not have (unless non-local binds are allowed).
        if std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind").is_ok_and(|v| v.trim() == "1") {
            return;
        }
        match dial(&addr, Some(IpAddr::from([192, 0, 2, 1]))).await {
            Err(err @ ConnectionError::Bind { .. }) => assert!(err.to_string().contains("192.0.2.1"), "{err}"),
            other => panic!("expected Bind, got {other:?}"),
        }
    }
}
