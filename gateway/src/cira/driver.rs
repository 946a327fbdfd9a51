//! The tunnel driver: one task per CIRA connection, a thin driver of the sans-IO APF
//! [`ServerSession`] over any `AsyncRead + AsyncWrite` (TLS in production, an in-memory duplex in
//! tests).
//!
//! It feeds the session what the device sends and the time, writes what the session wants sent,
//! and maps the session's channels onto [`DeviceStream`]s for whoever opened them through the
//! tunnel's [`TunnelHandle`]. Who the device is gets decided in `identity` (the driver runs that as
//! a future beside its loop, so keepalives and the device's own input keep flowing and the wait is
//! bounded by `apf.auth_timeout_secs`); records go through the `journal`, which never waits.
//!
//! What it does not do: accept connections or TLS (`cira`), check passwords (`identity`).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocols::apf::DisconnectReason;
use protocols::session::{ChannelId, CloseCause, Event, OpenError, ServerSession};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::identity::{self, Claimed, Credential, Refusal};
use crate::journal::DeviceEvent;
use crate::limits::ConnectionSlot;
use crate::metrics::{AuthFailureReason, ChannelRefusal, CloseReason, Direction, RejectReason, StoreWrite, TunnelKind};
use crate::registry::{Liveness, OpenRefused, OpenRequest, TunnelCommand, TunnelHandle};
use crate::state::Shared;
use crate::stream::{self, DeviceStream, StreamClosed, StreamConfig, StreamEnd, Written};

/// Bytes read from the socket at a time: small while the tunnel is idle or handshaking (a
/// connection that never sends anything costs no more), up to the large size while data streams.
const READ_SMALL: usize = 2 * 1024;
const READ_LARGE: usize = 64 * 1024;
/// Commands queued per tunnel before senders wait.
const COMMAND_QUEUE: usize = 256;
/// Writes queued per tunnel before the tunnel stops taking output from the session.
const WRITE_QUEUE: usize = 8;
/// A device that takes no bytes for this long is gone, whatever its TCP connection says.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Liveness probes waiting on one tunnel at most; beyond, claims are refused as busy.
const MAX_PROBES: usize = 16;
/// Keepalive stamps are handed to the journal at most this often per tunnel.
const STAMP_EVERY: Duration = Duration::from_secs(10);

/// How long a device that replaced a dead tunnel waits for that tunnel's slot when the gateway
/// holds `max_tunnels` (the old task frees it as soon as it has closed).
const REPLACED_SLOT_WAIT: Duration = Duration::from_secs(5);

/// What an admission yields: the credential, the claim, and a tunnel slot if one was free.
type Admission = (Credential, Claimed, Option<OwnedSemaphorePermit>);
type AdmitFuture = Pin<Box<dyn Future<Output = Result<Admission, Refusal>> + Send>>;

/// One CIRA connection, from the first APF byte to the close.
pub struct Tunnel {
    shared: Arc<Shared>,
    remote: SocketAddr,
    /// Accept order (see `identity::claim`).
    id: u64,
    session: ServerSession,
    uuid: Option<Uuid>,
    hello_at: Option<OffsetDateTime>,
    /// A place in the pool of unauthenticated connections, until admitted.
    pending: Option<ConnectionSlot>,
    tunnel_slots: Arc<Semaphore>,
    /// Held while the tunnel is admitted.
    tunnel_slot: Option<OwnedSemaphorePermit>,
    /// Admitted: in the registry, counted, recorded.
    admitted: bool,
    admit: Option<AdmitFuture>,
    ports: Arc<Mutex<BTreeSet<u16>>>,
    commands_tx: mpsc::Sender<TunnelCommand>,
    commands_rx: Option<mpsc::Receiver<TunnelCommand>>,
    wake_tx: mpsc::UnboundedSender<stream::StreamKey>,
    wake_rx: Option<mpsc::UnboundedReceiver<stream::StreamKey>>,
    opening: HashMap<ChannelId, (u16, oneshot::Sender<Result<DeviceStream, OpenRefused>>)>,
    streams: HashMap<ChannelId, StreamEnd>,
    /// Written guards of bytes the session took, to go with the next write.
    unwritten: Vec<Written>,
    probes: Vec<oneshot::Sender<Liveness>>,
    /// Set when we close the tunnel ourselves, for the metrics.
    local_close: Option<CloseReason>,
    /// The PROTOCOL_VERSION's trigger reason (see `TunnelHandle::trigger_reason`).
    trigger_reason: u32,
    last_stamp: Option<Instant>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").field("id", &self.id).field("remote", &self.remote).field("uuid", &self.uuid).finish()
    }
}

impl Tunnel {
    pub fn new(
        shared: Arc<Shared>,
        remote: SocketAddr,
        id: u64,
        pending: ConnectionSlot,
        tunnel_slots: Arc<Semaphore>,
    ) -> Self {
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        let session = ServerSession::new(shared.session_config(), Instant::now());
        Self {
            shared,
            remote,
            id,
            session,
            uuid: None,
            hello_at: None,
            pending: Some(pending),
            tunnel_slots,
            tunnel_slot: None,
            admitted: false,
            admit: None,
            ports: Arc::default(),
            commands_tx,
            commands_rx: Some(commands_rx),
            wake_tx,
            wake_rx: Some(wake_rx),
            opening: HashMap::new(),
            streams: HashMap::new(),
            unwritten: Vec::new(),
            probes: Vec::new(),
            local_close: None,
            trigger_reason: 0,
            last_stamp: None,
        }
    }

    /// Drives the tunnel until it closes.
    ///
    /// The stream is split before the driving future is made: an `async fn`'s arguments keep their
    /// room in its future for its whole life, and a TLS stream's is about 1.2 KiB per idle tunnel.
    pub fn run<S>(self, stream: S) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        self.drive(reader, writer)
    }

    async fn drive<S>(mut self, mut reader: tokio::io::ReadHalf<S>, writer: tokio::io::WriteHalf<S>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (write_tx, write_rx) = mpsc::channel::<(Bytes, Vec<Written>)>(WRITE_QUEUE);
        let writer_task = tokio::spawn(write_loop(writer, write_rx));
        let (Some(mut commands), Some(mut wakes)) = (self.commands_rx.take(), self.wake_rx.take()) else {
            return;
        };
        let mut shutdown = self.shared.shutdown.clone();
        let mut buf = BytesMut::new();
        let mut read_size = READ_SMALL;
        // Why the transport ended, when it ended before the session did.
        let mut transport_end: Option<CloseReason> = None;

        loop {
            self.drain_events();
            while let Some(bytes) = self.session.poll_transmit() {
                let written = std::mem::take(&mut self.unwritten);
                // A device that stops reading would otherwise hold this task here for good; before
                // admission, no longer than the session's own deadline either.
                let mut limit = tokio::time::Instant::now() + WRITE_STALL_TIMEOUT;
                if !self.admitted {
                    if let Some(deadline) = self.session.poll_timeout() {
                        limit = limit.min(tokio::time::Instant::from_std(deadline));
                    }
                }
                match tokio::time::timeout_at(limit, write_tx.send((bytes, written))).await {
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
            let admitting = self.admit.is_some();
            tokio::select! {
                read = read_input(&mut reader, &mut buf, read_size), if wants_input => match read {
                    Ok(0) => transport_end = Some(CloseReason::PeerClosed),
                    Ok(n) => {
                        // Whatever the device sends proves it alive (TLS binds it to this
                        // connection); its reply may be queued behind channel data.
                        self.answer_probes();
                        self.session.handle_input(&buf, Instant::now());
                        // Grow the reads while they come back full; an idle tunnel (keepalives)
                        // holds no buffer at all (see `read_input`).
                        if n >= read_size / 2 {
                            read_size = (read_size * 2).min(READ_LARGE);
                            buf.clear();
                        } else {
                            read_size = READ_SMALL;
                            buf = BytesMut::new();
                        }
                    }
                    Err(err) => {
                        debug!(remote = %self.remote, error = %err, "read failed");
                        transport_end = Some(CloseReason::IoError);
                    }
                },
                verdict = async { self.admit.as_mut().expect("guarded by `admitting`").await }, if admitting => {
                    self.admit = None;
                    self.admitted(verdict);
                }
                Some(command) = commands.recv() => self.handle_command(command),
                Some(key) = wakes.recv() => self.handle_wake(ChannelId(key)),
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
                self.drain_events();
            }
        } else {
            while let Some(bytes) = self.session.poll_transmit() {
                if write_tx.try_send((bytes, std::mem::take(&mut self.unwritten))).is_err() {
                    break;
                }
            }
        }
        // An admission still running may have put this tunnel in the registry.
        self.admit = None;
        if let Some(uuid) = self.uuid {
            self.shared.registry.remove(uuid, TunnelKind::Cira, self.id);
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
            TunnelCommand::Open(request) => {
                let OpenRequest { port, originator, reply } = *request;
                let origin = (Bytes::from(originator.ip().to_string()), u32::from(originator.port()));
                match self.session.open_channel(u32::from(port), origin) {
                    Ok(ch) => {
                        self.opening.insert(ch, (port, reply));
                    }
                    Err(err) => {
                        let (refusal, answer) = match err {
                            OpenError::PortNotForwarded(_) => {
                                (ChannelRefusal::PortNotForwarded, OpenRefused::PortNotForwarded(port))
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
            TunnelCommand::Probe { reply } => {
                if self.probes.len() >= MAX_PROBES {
                    let _ = reply.send(Liveness::Busy);
                } else if !self.probes.is_empty() {
                    // A keepalive request is out already: its reply answers this one too.
                    self.probes.push(reply);
                } else if self.session.probe().is_some() {
                    self.probes.push(reply);
                } else {
                    let _ = reply.send(Liveness::Busy);
                }
            }
            TunnelCommand::Close { reason } => {
                if reason == CloseReason::Replaced {
                    info!(uuid = ?self.uuid, remote = %self.remote,
                        "a newer connection took this UUID over after this tunnel failed its liveness check; closing it");
                }
                self.local_close = Some(reason);
                self.session.disconnect(DisconnectReason::ByApplication);
            }
            // Support actions and messages are for agents.
            TunnelCommand::Deliver => {}
        }
    }

    /// A stream's user did something: grant credit, move data, pass a shutdown or close.
    fn handle_wake(&mut self, ch: ChannelId) {
        let Some(end) = self.streams.get(&ch) else { return };
        let wanted = end.poll_wanted();
        if wanted.released > 0 {
            self.session.consumed(ch, wanted.released);
        }
        if wanted.close {
            // What the user wrote before it went goes out first, as far as the window allows.
            if wanted.outbound > 0 {
                self.flush(ch);
            }
            self.session.close_channel(ch);
            return;
        }
        if wanted.outbound > 0 {
            self.flush(ch);
        } else if wanted.eof {
            self.session.send_eof(ch);
        }
    }

    /// Moves the user's bytes into the session as far as the device's window allows; then an EOF
    /// if the user shut down and everything has gone.
    fn flush(&mut self, ch: ChannelId) {
        let Some(end) = self.streams.get(&ch) else { return };
        loop {
            let capacity = self.session.send_capacity(ch);
            if capacity == 0 {
                break;
            }
            let Some((data, written)) = end.take_outbound(capacity) else { break };
            let n = self.session.send(ch, &data);
            self.shared.metrics.relayed_bytes(Direction::ToDevice, n as u64);
            self.unwritten.push(written);
            if n < data.len() {
                error!(uuid = ?self.uuid, %ch, "the session took less than its capacity; closing the channel");
                self.session.close_channel(ch);
                return;
            }
        }
        if end.take_eof() {
            self.session.send_eof(ch);
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            self.handle_event(event);
        }
    }

    fn handle_event(&mut self, event: Event) {
        let now = OffsetDateTime::now_utc();
        match event {
            Event::Hello { uuid, major, minor, trigger_reason } => {
                info!(%uuid, remote = %self.remote, version = %format!("{major}.{minor}"), trigger_reason, "hello");
                self.uuid = Some(uuid);
                self.trigger_reason = trigger_reason;
                self.hello_at = Some(now);
            }
            Event::AuthRequest { username, password } => self.start_admission(username, password.0),
            Event::AuthMethodRefused { method } => {
                self.shared.metrics.auth_failure(AuthFailureReason::UnsupportedMethod);
                info!(uuid = ?self.uuid, remote = %self.remote, method = %String::from_utf8_lossy(&method),
                    "authentication method refused (only password is supported)");
            }
            Event::Established => debug!(uuid = ?self.uuid, "port forwarding service up"),
            // The session only reports ports in 1..=65535.
            Event::PortForwarded { port } => {
                let port = u16::try_from(port).unwrap_or_default();
                self.update_ports(|ports| ports.insert(port))
            }
            Event::PortCancelled { port } => {
                let port = u16::try_from(port).unwrap_or_default();
                self.update_ports(|ports| ports.remove(&port))
            }
            Event::KeepaliveOptions { interval_secs, timeout_secs } => {
                debug!(uuid = ?self.uuid, interval_secs, timeout_secs, "keepalive options accepted");
            }
            Event::Keepalive => self.stamp(now),
            Event::KeepaliveReply { .. } => {
                self.answer_probes();
                self.stamp(now);
            }
            Event::ChannelOpened { ch, port, .. } => {
                let Some((port16, reply)) = self.opening.remove(&ch) else {
                    self.session.close_channel(ch);
                    return;
                };
                debug_assert_eq!(u32::from(port16), port);
                let (user, end) = stream::pair(ch.0, port16, StreamConfig::default(), self.wake_tx.clone());
                if reply.send(Ok(user)).is_err() {
                    // The opener gave up waiting.
                    self.session.close_channel(ch);
                    return;
                }
                self.shared.metrics.channel_opened();
                self.streams.insert(ch, end);
            }
            Event::ChannelOpenFailed { ch, reason } => {
                self.shared.metrics.channel_open_refused(ChannelRefusal::DeviceRefused);
                if let Some((_, reply)) = self.opening.remove(&ch) {
                    let _ = reply.send(Err(OpenRefused::DeviceRefused(format!("{reason:?}"))));
                }
            }
            Event::ChannelData { ch, data } => {
                self.shared.metrics.relayed_bytes(Direction::FromDevice, data.len() as u64);
                match self.streams.get(&ch) {
                    Some(end) => end.push(data),
                    None => self.session.consumed(ch, data.len()),
                }
            }
            Event::ChannelEof { ch } => {
                if let Some(end) = self.streams.get(&ch) {
                    end.push_eof();
                }
            }
            Event::ChannelClosed { ch } => {
                if let Some(end) = self.streams.remove(&ch) {
                    // A closing session closes every channel first: that is the tunnel going.
                    end.close(if self.session.is_closed() { StreamClosed::TunnelGone } else { StreamClosed::Device });
                    self.shared.metrics.channel_closed();
                }
                if let Some((_, reply)) = self.opening.remove(&ch) {
                    let _ = reply.send(Err(OpenRefused::TunnelGone));
                }
            }
            Event::ChannelWritable { ch } => self.flush(ch),
            Event::Closed(cause) => self.closed(cause, now),
            Event::Authenticated | Event::AuthRejected | Event::ChannelOpenRequest { .. } => {
                // Client-role events; a server session does not produce them.
            }
        }
    }

    fn answer_probes(&mut self) {
        for probe in self.probes.drain(..) {
            let _ = probe.send(Liveness::Alive);
        }
    }

    /// Whether this tunnel still holds its UUID in the registry (a replaced one, until it has
    /// closed, must not write the device record its successor owns).
    fn holds_uuid(&self) -> bool {
        self.admitted && self.uuid.is_some_and(|uuid| self.shared.registry.holds(uuid, TunnelKind::Cira, self.id))
    }

    fn stamp(&mut self, now: OffsetDateTime) {
        // The cheap timer first: keepalives arrive every 30 s per device.
        if self.last_stamp.is_some_and(|t| t.elapsed() < STAMP_EVERY) || !self.holds_uuid() {
            return;
        }
        if let Some(uuid) = self.uuid {
            self.last_stamp = Some(Instant::now());
            if !self.shared.journal.stamp(uuid, now) {
                self.shared.metrics.store_write_dropped(StoreWrite::Keepalive);
            }
        }
    }

    fn record(&self, event: DeviceEvent) {
        if !self.shared.journal.record(event) {
            self.shared.metrics.store_write_dropped(StoreWrite::Lifecycle);
        }
    }

    /// Starts checking the device's credentials and claiming its UUID, beside the loop.
    fn start_admission(&mut self, username: Bytes, password: Bytes) {
        let Some(uuid) = self.uuid else { return self.session.reject_auth(Instant::now()) };
        let handle = TunnelHandle {
            id: self.id,
            uuid,
            kind: TunnelKind::Cira,
            remote: self.remote,
            connected_since: OffsetDateTime::now_utc(),
            trigger_reason: self.trigger_reason,
            commands: self.commands_tx.clone(),
            ports: Arc::clone(&self.ports),
        };
        let shared = Arc::clone(&self.shared);
        let remote = self.remote;
        let deadline = tokio::time::Instant::now() + shared.auth_timeout();
        let slots = Arc::clone(&self.tunnel_slots);
        self.admit = Some(Box::pin(async move {
            let work = async {
                let credential = identity::authenticate(&shared, uuid, remote, &username, &password, deadline).await?;
                let free = Arc::clone(&slots).try_acquire_owned().ok();
                let claimed = identity::claim(&shared, handle).await?;
                let slot = match free {
                    Some(slot) => Some(slot),
                    // At the limit, a device replacing its own dead tunnel takes that one's slot.
                    None if claimed.replaced.is_some() => {
                        tokio::time::timeout(REPLACED_SLOT_WAIT, slots.acquire_owned()).await.ok().and_then(Result::ok)
                    }
                    None => None,
                };
                Ok((credential, claimed, slot))
            };
            // The claim's liveness probe may outlast the credential check's deadline by its own
            // timeout; nothing more.
            let limit = deadline + shared.liveness_timeout();
            tokio::time::timeout_at(limit, work).await.unwrap_or(Err(Refusal::Timeout))
        }));
    }

    fn admitted(&mut self, verdict: Result<Admission, Refusal>) {
        let Some(uuid) = self.uuid else { return };
        let now = Instant::now();
        let metrics = &self.shared.metrics;
        match verdict {
            Ok((credential, claimed, slot)) => {
                let Some(slot) = slot else {
                    metrics.connection_rejected(RejectReason::TooManyTunnels);
                    warn!(%uuid, remote = %self.remote, max = self.shared.config.apf.max_tunnels,
                        "tunnel refused: the gateway holds its maximum number of tunnels");
                    // The close (not admitted) removes the registry entry and the record's claim.
                    self.local_close = Some(CloseReason::Unknown);
                    return self.session.disconnect(DisconnectReason::TooManyConnections);
                };
                self.tunnel_slot = Some(slot);
                self.pending = None;
                self.admitted = true;
                self.session.accept_auth(now);
                metrics.tunnel_opened(TunnelKind::Cira);
                let at = OffsetDateTime::now_utc();
                self.record(DeviceEvent::Hello { uuid, at: self.hello_at.unwrap_or(at), remote: self.remote });
                self.record(DeviceEvent::Connected { uuid, at, remote: self.remote });
                match claimed.replaced {
                    Some(old) => {
                        info!(%uuid, remote = %self.remote, previous = %old.remote, credential = %credential.pin(),
                        "tunnel established, replacing a tunnel that no longer answered")
                    }
                    None => info!(%uuid, remote = %self.remote, credential = %credential.pin(), "tunnel established"),
                }
            }
            Err(Refusal::Auth(reason)) => {
                metrics.auth_failure(reason);
                warn!(%uuid, remote = %self.remote, reason = reason.as_str(), "authentication failed");
                self.session.reject_auth(now);
            }
            Err(Refusal::Backoff(wait)) => {
                metrics.auth_failure(AuthFailureReason::RateLimited);
                metrics.connection_rejected(RejectReason::AuthBackoff);
                warn!(%uuid, remote = %self.remote, retry_in_secs = wait.as_secs(),
                    "authentication refused: too many recent failures");
                self.local_close = Some(CloseReason::AuthFailed);
                self.session.disconnect(DisconnectReason::TooManyConnections);
            }
            Err(Refusal::Timeout) => {
                metrics.connection_rejected(RejectReason::AuthTimeout);
                warn!(%uuid, remote = %self.remote, "authentication could not be decided in time; closing");
                self.local_close = Some(CloseReason::AuthFailed);
                self.session.disconnect(DisconnectReason::TemporarilyUnavailable);
            }
            Err(Refusal::Conflict { live }) => {
                metrics.connection_rejected(RejectReason::UuidConflict);
                if self.shared.conflicts.due(uuid) {
                    warn!(%uuid, %live, claimant = %self.remote,
                        "refused a claim for a UUID whose tunnel is live and answering (an impostor, or two machines \
                         with one UUID); further refusals for this UUID are counted, not logged, for a minute");
                }
                self.record(DeviceEvent::Conflict { uuid, at: OffsetDateTime::now_utc(), live, claimant: self.remote });
                self.local_close = Some(CloseReason::AuthFailed);
                self.session.disconnect(DisconnectReason::HostNotAllowed);
            }
        }
    }

    fn update_ports(&mut self, change: impl FnOnce(&mut BTreeSet<u16>) -> bool) {
        let ports = {
            let Ok(mut set) = self.ports.lock() else { return };
            if !change(&mut set) {
                return;
            }
            set.iter().copied().collect::<Vec<u16>>()
        };
        if let (Some(uuid), true) = (self.uuid, self.holds_uuid()) {
            self.record(DeviceEvent::Ports { uuid, ports });
        }
    }

    fn closed(&mut self, cause: CloseCause, now: OffsetDateTime) {
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
        // Free the tunnel slot now, not when the task ends: a successor may be waiting for it.
        self.tunnel_slot = None;
        for (_, (_, reply)) in self.opening.drain() {
            let _ = reply.send(Err(OpenRefused::TunnelGone));
        }
        for (_, end) in self.streams.drain() {
            end.close(StreamClosed::TunnelGone);
            metrics.channel_closed();
        }
        let uuid_text = self.uuid.map(|u| u.to_string()).unwrap_or_else(|| "-".into());
        if !self.admitted {
            // A claim cut short (the device hung up, or the admission timed out while another
            // gateway was asked) may have left this connection's registry entry: it goes too.
            // If it got that far, the store may already name this gateway as the device's holder:
            // undo that too (guarded by instance, so a successor's record is left alone).
            if let Some(uuid) = self.uuid {
                if self.shared.registry.remove(uuid, TunnelKind::Cira, self.id) {
                    self.record(DeviceEvent::Disconnected {
                        uuid,
                        at: OffsetDateTime::now_utc(),
                        reason: "its admission did not complete".into(),
                    });
                }
            }
            info!(uuid = %uuid_text, remote = %self.remote, cause = %cause, "connection closed before the tunnel was established");
            return;
        }
        metrics.tunnel_closed(TunnelKind::Cira, reason);
        info!(uuid = %uuid_text, remote = %self.remote, cause = %cause, "tunnel closed");
        let Some(uuid) = self.uuid else { return };
        // A replaced tunnel leaves the device record to its successor, which is connected.
        // Unanswered probes are dropped (telling a claimant this tunnel is gone) only after the
        // registry entry is, so that the claimant's record comes after this one's.
        let removed = self.shared.registry.remove(uuid, TunnelKind::Cira, self.id);
        if !removed {
            self.probes.clear();
            return;
        }
        let text = match reason {
            CloseReason::Shutdown => "gateway shut down".to_string(),
            CloseReason::PeerClosed => "connection closed by the device".to_string(),
            CloseReason::IoError => "connection lost".to_string(),
            CloseReason::SessionClosed => "a technician closed the remote-fix session".to_string(),
            _ => cause.to_string(),
        };
        self.record(DeviceEvent::Disconnected { uuid, at: now, reason: text });
        self.probes.clear();
    }
}

async fn write_loop<W: AsyncWrite>(mut writer: tokio::io::WriteHalf<W>, mut rx: mpsc::Receiver<(Bytes, Vec<Written>)>) {
    // Guards of bytes written but not yet flushed: they return budget once the socket took them.
    let mut done: Vec<Written> = Vec::new();
    while let Some((bytes, written)) = rx.recv().await {
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
        done.extend(written);
        // Write what else is queued before paying for a flush.
        while let Ok((more, written)) = rx.try_recv() {
            if writer.write_all(&more).await.is_err() {
                return;
            }
            done.extend(written);
        }
        if writer.flush().await.is_err() {
            return;
        }
        done.clear();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
}

/// Reads what the device sent into `buf`, which the caller empties after each read.
///
/// While reads are small (an idle tunnel's keepalives, a console), the read goes into a buffer on
/// the stack and `buf` keeps only the bytes that came: a tunnel waiting for input holds no read
/// buffer (2 KiB less per idle tunnel, docs/benchmarks.md). Once reads come back full and
/// `read_size` has grown, they go straight into `buf`, without the extra copy.
async fn read_input<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    read_size: usize,
) -> std::io::Result<usize> {
    if read_size > READ_SMALL {
        if buf.capacity() - buf.len() < read_size / 4 {
            buf.reserve(read_size);
        }
        return reader.read_buf(buf).await;
    }
    std::future::poll_fn(|cx| {
        let mut scratch = [0u8; READ_SMALL];
        let mut chunk = ReadBuf::new(&mut scratch);
        std::task::ready!(Pin::new(&mut *reader).poll_read(cx, &mut chunk))?;
        buf.extend_from_slice(chunk.filled());
        std::task::Poll::Ready(Ok(chunk.filled().len()))
    })
    .await
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "driver_test.rs"]
mod tests;
