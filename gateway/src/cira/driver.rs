//! The CIRA listener: TLS on 4433, one task per AMT tunnel driving a sans-IO
//! [`ServerSession`](protocols::session::ServerSession).
//!
//! Per connection: the source passes the connection-rate limit, the TLS handshake finishes within
//! its timeout, the APF handshake runs (passwords checked against the store, with back-off per
//! source and per UUID), and the tunnel joins the [`Registry`](crate::registry::Registry). From then
//! on the task relays between the session and the technicians' channels, records life-cycle events
//! in the journal, and counts everything in the metrics.
//!
//! What it does not do: the WebSocket side of a relay (`relay`) or the HTTP API (`api`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use protocols::apf::DisconnectReason;
use protocols::session::{ChannelId, CloseCause, Event, OpenError, Secret, ServerSession};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::daemon::{Shared, Verify};
use crate::journal::DeviceEvent;
use crate::metrics::{AuthFailureReason, ChannelRefusal, CloseReason, Direction, RejectReason, TunnelKind};
use crate::registry::{
    ChannelEnd, ChannelMessage, ChannelSender, OpenRefused, TunnelCommand, TunnelHandle, FLAPS_FOR_DUPLICATE,
    FLAP_WINDOW,
};

/// A TLS handshake that takes longer than this is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Commands queued per tunnel before technicians wait.
const COMMAND_QUEUE: usize = 256;
/// Writes queued per tunnel before the tunnel stops reading (each at most one channel budget).
const WRITE_QUEUE: usize = 8;
/// A device that takes no bytes for this long is gone, whatever its TCP connection says.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts CIRA connections until shutdown.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.config.apf.max_tunnels));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %err, "CIRA accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        if !shared.limiter.allow_connection(remote.ip()) {
            shared.metrics.connection_rejected(RejectReason::ConnectionRate);
            debug!(%remote, "connection refused: over the per-source connection rate");
            continue;
        }
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            shared.metrics.connection_rejected(RejectReason::TooManyTunnels);
            warn!(%remote, max = shared.config.apf.max_tunnels, "connection refused: tunnel limit reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            handle_connection(tcp, remote, acceptor, shared).await;
            drop(slot);
        });
    }
}

async fn handle_connection(tcp: TcpStream, remote: SocketAddr, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let started = Instant::now();
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            shared.metrics.connection_rejected(RejectReason::TlsHandshake);
            info!(%remote, error = %err, "TLS handshake failed (is the device provisioned with this gateway's CA?)");
            return;
        }
        Err(_) => {
            shared.metrics.connection_rejected(RejectReason::TlsHandshake);
            info!(%remote, "TLS handshake timed out");
            return;
        }
    };
    shared.metrics.tls_handshake(started.elapsed().as_secs_f64());
    debug!(%remote, "TLS established");
    Tunnel::new(shared, remote).run(tls).await;
}

/// Per-channel state on the gateway side of the tunnel.
#[derive(Debug)]
struct Channel {
    to_technician: mpsc::UnboundedSender<ChannelMessage>,
    /// Technician data the device's window has not taken yet, with the budget it holds.
    pending: VecDeque<(Bytes, OwnedSemaphorePermit)>,
    eof_requested: bool,
    close_requested: bool,
}

struct Tunnel {
    shared: Arc<Shared>,
    remote: SocketAddr,
    session: ServerSession,
    id: u64,
    uuid: Option<Uuid>,
    hello_at: Option<OffsetDateTime>,
    registered: bool,
    ports: Arc<Mutex<BTreeSet<u16>>>,
    commands_tx: mpsc::Sender<TunnelCommand>,
    commands_rx: Option<mpsc::Receiver<TunnelCommand>>,
    opening: HashMap<ChannelId, oneshot::Sender<Result<ChannelEnd, OpenRefused>>>,
    channels: HashMap<ChannelId, Channel>,
    /// Set when we close the tunnel ourselves, for the metrics.
    local_close: Option<CloseReason>,
    last_keepalive_record: Option<Instant>,
}

impl Tunnel {
    fn new(shared: Arc<Shared>, remote: SocketAddr) -> Self {
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let session = ServerSession::new(shared.session_config(), Instant::now());
        let id = shared.registry.next_id();
        Self {
            shared,
            remote,
            session,
            id,
            uuid: None,
            hello_at: None,
            registered: false,
            ports: Arc::default(),
            commands_tx,
            commands_rx: Some(commands_rx),
            opening: HashMap::new(),
            channels: HashMap::new(),
            local_close: None,
            last_keepalive_record: None,
        }
    }

    async fn run<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, writer) = tokio::io::split(stream);
        let (write_tx, write_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer_task = tokio::spawn(write_loop(writer, write_rx));
        let Some(mut commands) = self.commands_rx.take() else { return };
        let mut shutdown = self.shared.shutdown.clone();
        let mut buf = BytesMut::new();
        // Why the transport ended, when it ended before the session did.
        let mut transport_end: Option<CloseReason> = None;

        loop {
            self.drain_events().await;
            while let Some(bytes) = self.session.poll_transmit() {
                // A device that stops reading would otherwise hold this task here for good, and no
                // timeout could fire.
                match tokio::time::timeout(WRITE_STALL_TIMEOUT, write_tx.send(bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        transport_end.get_or_insert(CloseReason::IoError);
                        break;
                    }
                    Err(_) => {
                        warn!(uuid = ?self.uuid, remote = %self.remote, "the device stopped reading; closing the tunnel");
                        transport_end.get_or_insert(CloseReason::IoError);
                        break;
                    }
                }
            }
            if self.session.is_closed() || transport_end.is_some() {
                break;
            }
            let deadline = self.session.poll_timeout().map(tokio::time::Instant::from_std);
            let wants_input = self.session.wants_input();
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                read = reader.read_buf(&mut buf), if wants_input => match read {
                    Ok(0) => transport_end = Some(CloseReason::PeerClosed),
                    Ok(n) => {
                        self.session.handle_input(&buf, Instant::now());
                        // Keep the buffer while data streams; an idle tunnel (keepalives) holds none.
                        if n < 1024 {
                            buf = BytesMut::new();
                        } else {
                            buf.clear();
                        }
                    }
                    Err(err) => {
                        debug!(remote = %self.remote, error = %err, "read failed");
                        transport_end = Some(CloseReason::IoError);
                    }
                },
                Some(command) = commands.recv() => self.handle_command(command),
                _ = sleep_until(deadline) => self.session.handle_timeout(Instant::now()),
                _ = shutdown.changed() => {
                    self.local_close = Some(CloseReason::Shutdown);
                    self.session.disconnect(DisconnectReason::ByApplication);
                }
            }
        }

        if let Some(reason) = transport_end {
            if !self.session.is_closed() {
                // The session never saw a DISCONNECT: close it quietly for the bookkeeping.
                self.local_close = Some(reason);
                self.session.disconnect(DisconnectReason::ConnectionLost);
                self.drain_events().await;
            }
        } else {
            while let Some(bytes) = self.session.poll_transmit() {
                if write_tx.try_send(bytes).is_err() {
                    break;
                }
            }
        }
        drop(write_tx);
        // Give the DISCONNECT a moment to leave; never wait on a peer that does not read.
        let abort = writer_task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), writer_task).await.is_err() {
            abort.abort();
        }
    }

    fn handle_command(&mut self, command: TunnelCommand) {
        match command {
            TunnelCommand::Open { port, originator, reply } => {
                let origin = (Bytes::from(originator.ip().to_string()), u32::from(originator.port()));
                match self.session.open_channel(port, origin) {
                    Ok(ch) => {
                        self.opening.insert(ch, reply);
                    }
                    Err(err) => {
                        let (refusal, answer) = match err {
                            OpenError::PortNotForwarded(p) => {
                                (ChannelRefusal::PortNotForwarded, OpenRefused::PortNotForwarded(p))
                            }
                            OpenError::TooManyChannels => {
                                (ChannelRefusal::TooManyChannels, OpenRefused::TooManyChannels)
                            }
                            OpenError::NotEstablished | OpenError::Closed => {
                                (ChannelRefusal::TunnelGone, OpenRefused::TunnelGone)
                            }
                        };
                        self.shared.metrics.channel_open_refused(refusal);
                        let _ = reply.send(Err(answer));
                    }
                }
            }
            TunnelCommand::Data { ch, data, permit } => {
                if let Some(channel) = self.channels.get_mut(&ch) {
                    if !channel.close_requested && !channel.eof_requested {
                        channel.pending.push_back((data, permit));
                        self.flush(ch);
                    }
                }
            }
            TunnelCommand::Consumed { ch, n } => self.session.consumed(ch, n),
            TunnelCommand::Eof { ch } => {
                if let Some(channel) = self.channels.get_mut(&ch) {
                    channel.eof_requested = true;
                    self.flush(ch);
                }
            }
            TunnelCommand::Close { ch } => {
                if let Some(channel) = self.channels.get_mut(&ch) {
                    channel.close_requested = true;
                    self.flush(ch);
                }
            }
            TunnelCommand::Replaced => {
                info!(uuid = ?self.uuid, remote = %self.remote, "a newer tunnel for this UUID took over; closing this one");
                self.local_close = Some(CloseReason::Replaced);
                self.session.disconnect(DisconnectReason::ByApplication);
            }
        }
    }

    /// Moves pending technician data into the session as far as the device's window allows, then
    /// sends a requested EOF or CLOSE once nothing is pending.
    fn flush(&mut self, ch: ChannelId) {
        let Some(channel) = self.channels.get_mut(&ch) else { return };
        while let Some((data, permit)) = channel.pending.front_mut() {
            let n = self.session.send(ch, data);
            self.shared.metrics.relayed_bytes(Direction::ToDevice, n as u64);
            if n == data.len() {
                channel.pending.pop_front();
            } else {
                data.advance(n);
                // Return the budget of the bytes the session took.
                drop(permit.split(n));
                return;
            }
        }
        if channel.close_requested {
            self.session.close_channel(ch);
        } else if channel.eof_requested {
            self.session.send_eof(ch);
        }
    }

    async fn drain_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            self.handle_event(event).await;
        }
    }

    async fn handle_event(&mut self, event: Event) {
        let now = OffsetDateTime::now_utc();
        match event {
            Event::Hello { uuid, major, minor, trigger_reason } => {
                info!(%uuid, remote = %self.remote, version = %format!("{major}.{minor}"), trigger_reason, "hello");
                self.uuid = Some(uuid);
                self.hello_at = Some(now);
            }
            Event::AuthRequest { username, password } => self.authenticate(username, password).await,
            Event::AuthMethodRefused { method } => {
                self.shared.metrics.auth_failure(AuthFailureReason::UnsupportedMethod);
                info!(uuid = ?self.uuid, remote = %self.remote, method = %String::from_utf8_lossy(&method),
                    "authentication method refused (only password is supported)");
            }
            Event::Established => self.register(now).await,
            // The session only reports ports in 1..=65535.
            Event::PortForwarded { port } => {
                let port = u16::try_from(port).unwrap_or_default();
                self.update_ports(|ports| ports.insert(port)).await
            }
            Event::PortCancelled { port } => {
                let port = u16::try_from(port).unwrap_or_default();
                self.update_ports(|ports| ports.remove(&port)).await
            }
            Event::KeepaliveOptions { interval_secs, timeout_secs } => {
                debug!(uuid = ?self.uuid, interval_secs, timeout_secs, "keepalive options accepted");
            }
            Event::Keepalive => {
                // Keepalives arrive every 30 s per device; record at most one per 10 s.
                let due = self.last_keepalive_record.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
                if let (Some(uuid), true, true) = (self.uuid, self.registered, due) {
                    self.last_keepalive_record = Some(Instant::now());
                    self.shared.journal.record(DeviceEvent::Keepalive { uuid, at: now }).await;
                }
            }
            Event::ChannelOpened { ch, port, .. } => {
                let Some(reply) = self.opening.remove(&ch) else {
                    self.session.close_channel(ch);
                    return;
                };
                let (to_technician, rx) = mpsc::unbounded_channel();
                let end = ChannelEnd { port, rx, tx: ChannelSender::new(ch, self.commands_tx.clone()) };
                if reply.send(Ok(end)).is_err() {
                    // The technician gave up waiting.
                    self.session.close_channel(ch);
                    return;
                }
                self.shared.metrics.channel_opened();
                self.channels.insert(
                    ch,
                    Channel { to_technician, pending: VecDeque::new(), eof_requested: false, close_requested: false },
                );
            }
            Event::ChannelOpenFailed { ch, reason } => {
                self.shared.metrics.channel_open_refused(ChannelRefusal::DeviceRefused);
                if let Some(reply) = self.opening.remove(&ch) {
                    let _ = reply.send(Err(OpenRefused::DeviceRefused(format!("{reason:?}"))));
                }
            }
            Event::ChannelData { ch, data } => {
                self.shared.metrics.relayed_bytes(Direction::FromDevice, data.len() as u64);
                if let Some(channel) = self.channels.get(&ch) {
                    if channel.to_technician.send(ChannelMessage::Data(data)).is_err() {
                        self.session.close_channel(ch);
                    }
                }
            }
            Event::ChannelEof { ch } => {
                if let Some(channel) = self.channels.get(&ch) {
                    let _ = channel.to_technician.send(ChannelMessage::Eof);
                }
            }
            Event::ChannelClosed { ch } => {
                if let Some(channel) = self.channels.remove(&ch) {
                    let _ = channel.to_technician.send(ChannelMessage::Closed);
                    self.shared.metrics.channel_closed();
                }
                if let Some(reply) = self.opening.remove(&ch) {
                    let _ = reply.send(Err(OpenRefused::TunnelGone));
                }
            }
            Event::ChannelWritable { ch } => self.flush(ch),
            Event::Closed(cause) => self.closed(cause, now).await,
            Event::Authenticated | Event::AuthRejected | Event::ChannelOpenRequest { .. } => {
                // Client-role events; a server session does not produce them.
            }
        }
    }

    async fn authenticate(&mut self, username: Bytes, password: Secret) {
        let Some(uuid) = self.uuid else { return self.session.reject_auth(Instant::now()) };
        let ip = self.remote.ip();
        let metrics = &self.shared.metrics;
        let blocked = self.shared.limiter.auth_blocked(ip, Some(uuid));
        let mode = if blocked.is_some() { Verify::KnownGoodOnly } else { Verify::Full };
        let shared = Arc::clone(&self.shared);
        let verdict =
            tokio::task::spawn_blocking(move || shared.check_device_credentials(uuid, &username, &password.0, mode))
                .await
                .unwrap_or(Err(AuthFailureReason::Unknown));
        if let (Some(wait), Err(_)) = (blocked, &verdict) {
            metrics.auth_failure(AuthFailureReason::RateLimited);
            metrics.connection_rejected(RejectReason::AuthBackoff);
            warn!(%uuid, remote = %self.remote, retry_in_secs = wait.as_secs(), "authentication refused: too many recent failures");
            self.local_close = Some(CloseReason::AuthFailed);
            self.session.disconnect(DisconnectReason::TooManyConnections);
            return;
        }
        match verdict {
            Ok(()) => {
                debug!(%uuid, "authenticated");
                self.session.accept_auth(Instant::now());
            }
            Err(reason) => {
                metrics.auth_failure(reason);
                let backoff = self.shared.limiter.auth_failed(ip, Some(uuid));
                warn!(%uuid, remote = %self.remote, ?reason, backoff_secs = backoff.map(|d| d.as_secs()), "authentication failed");
                self.session.reject_auth(Instant::now());
            }
        }
    }

    async fn register(&mut self, now: OffsetDateTime) {
        let Some(uuid) = self.uuid else { return };
        // A tunnel that replaces a young predecessor is one more flap; PCs that share a UUID
        // (behind one NAT, so from one address) show up as an endless run of them.
        let flaps = match self.shared.registry.get(&uuid) {
            Some(old) if now - old.connected_since < FLAP_WINDOW => old.flaps + 1,
            _ => 0,
        };
        let handle = TunnelHandle {
            id: self.id,
            uuid,
            remote: self.remote,
            connected_since: now,
            commands: self.commands_tx.clone(),
            ports: Arc::clone(&self.ports),
            flaps,
        };
        let journal = &self.shared.journal;
        journal.record(DeviceEvent::Hello { uuid, at: self.hello_at.unwrap_or(now), remote: self.remote }).await;
        journal.record(DeviceEvent::Connected { uuid, at: now, remote: self.remote }).await;
        if let Some(old) = self.shared.registry.insert(handle) {
            let other_address = old.remote.ip() != self.remote.ip();
            if other_address || flaps >= FLAPS_FOR_DUPLICATE {
                warn!(%uuid, previous = %old.remote, newer = %self.remote, flaps,
                    "two machines keep claiming one UUID (duplicate UUIDs on OEM boards?); the newer tunnel replaces the older");
                journal
                    .record(DeviceEvent::Duplicate { uuid, at: now, previous: old.remote, newer: self.remote })
                    .await;
            } else {
                info!(%uuid, "reconnected; replacing the previous tunnel");
            }
            if old.commands.try_send(TunnelCommand::Replaced).is_err() {
                tokio::spawn(async move {
                    let _ = old.commands.send(TunnelCommand::Replaced).await;
                });
            }
        }
        self.registered = true;
        self.shared.metrics.tunnel_opened(TunnelKind::Cira);
        info!(%uuid, remote = %self.remote, "tunnel established");
    }

    async fn update_ports(&mut self, change: impl FnOnce(&mut BTreeSet<u16>) -> bool) {
        let ports = {
            let Ok(mut set) = self.ports.lock() else { return };
            let changed = change(&mut set);
            if !changed {
                return;
            }
            set.iter().copied().collect::<Vec<u16>>()
        };
        if let (Some(uuid), true) = (self.uuid, self.registered) {
            self.shared.journal.record(DeviceEvent::Ports { uuid, ports }).await;
        }
    }

    async fn closed(&mut self, cause: CloseCause, now: OffsetDateTime) {
        let metrics = &self.shared.metrics;
        let reason = match (&cause, self.local_close) {
            (CloseCause::Local(_), Some(local)) => local,
            (CloseCause::Local(_), None) => CloseReason::Unknown,
            (CloseCause::PeerDisconnected(_), _) => CloseReason::PeerDisconnect,
            (CloseCause::Protocol { kind, .. }, _) => {
                metrics.protocol_error(*kind);
                CloseReason::ProtocolError
            }
            (CloseCause::HandshakeTimeout, _) => CloseReason::HandshakeTimeout,
            (CloseCause::IdleTimeout, _) => CloseReason::IdleTimeout,
            (CloseCause::AuthFailed, _) => CloseReason::AuthFailed,
        };
        for (_, reply) in self.opening.drain() {
            let _ = reply.send(Err(OpenRefused::TunnelGone));
        }
        let uuid = self.uuid.map(|u| u.to_string()).unwrap_or_else(|| "-".into());
        if !self.registered {
            info!(%uuid, remote = %self.remote, cause = %cause, "connection closed before the tunnel was established");
            return;
        }
        metrics.tunnel_closed(TunnelKind::Cira, reason);
        info!(%uuid, remote = %self.remote, cause = %cause, "tunnel closed");
        if let Some(uuid) = self.uuid {
            // A replaced tunnel leaves the device record to its successor, which is connected.
            if !self.shared.registry.remove(uuid, self.id) {
                return;
            }
            let text = match reason {
                CloseReason::Shutdown => "gateway shut down".to_string(),
                CloseReason::PeerClosed => "connection closed by the device".to_string(),
                CloseReason::IoError => "connection lost".to_string(),
                _ => cause.to_string(),
            };
            self.shared.journal.record(DeviceEvent::Disconnected { uuid, at: now, reason: text }).await;
        }
    }
}

async fn write_loop<W: AsyncWrite>(mut writer: tokio::io::WriteHalf<W>, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(bytes) = rx.recv().await {
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
        // Write what else is queued before paying for a flush.
        while let Ok(more) = rx.try_recv() {
            if writer.write_all(&more).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
