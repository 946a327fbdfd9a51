//! The server (MPS / gateway) side of an APF tunnel.
//!
//! Handshake order, enforced: PROTOCOL_VERSION → SERVICE_REQUEST auth → USERAUTH_REQUEST (the
//! driver decides) → SERVICE_REQUEST pfwd → GLOBAL_REQUEST tcpip-forward…; anything else out of
//! order is a protocol error. After the forwards settle (or at once on 5900, the port real
//! firmware forwards last) we send KEEPALIVE_OPTIONS_REQUEST ourselves, so that devices that
//! never forward 5900 still get an interval; a tunnel silent for three intervals is dropped.
//!
//! Before authentication the session decodes with small limits ([`ServerConfig::pre_auth_limits`])
//! and holds at most one such message plus a few KiB of input, so that an unauthenticated peer
//! cannot make the gateway buffer megabytes; the normal limits apply from `accept_auth` on.
//! [`ServerSession::probe`] asks an authenticated device for a sign of life.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::channels::{is_channel_message, Channels};
use super::{deadline_min, ChannelConfig, ChannelId, CloseCause, Core, Event, OpenError, ProtocolErrorKind, Secret};
use crate::apf::{
    self, AuthMethod, ChannelType, DisconnectReason, GlobalRequest, Message, OpenFailureReason, SERVICE_AUTH,
    SERVICE_PFWD,
};

/// The largest APF message accepted before authentication by default (the gateway's
/// `pre_auth_max_message`).
pub const PRE_AUTH_MAX_MESSAGE: usize = 4096;

/// Input held before authentication beyond one maximal pre-auth message (what a device may
/// pipeline behind its USERAUTH_REQUEST while the decision is pending).
const PRE_AUTH_INPUT_SLACK: usize = 4 * 1024;

/// Settings of the server role.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Size limits once the device has authenticated.
    pub limits: apf::Limits,
    /// Size limits until `accept_auth` (never looser than `limits`). The default,
    /// `Limits::for_max_message(PRE_AUTH_MAX_MESSAGE)`, caps strings and data at 1348 bytes, so
    /// that no message decoded before authentication is longer than 4096 bytes; a version,
    /// service request and USERAUTH_REQUEST with any realistic username and password fit well
    /// within. Input held before authentication is capped at one such message plus 4 KiB: more
    /// is a protocol error (InputOverflow), as is a longer field (TooLong).
    pub pre_auth_limits: apf::Limits,
    pub channels: ChannelConfig,
    /// Keepalive interval we ask the device for.
    pub keepalive_interval: Duration,
    /// The keepalive timeout we announce (seconds; 0 = firmware default). Informational for AMT.
    pub keepalive_timeout_secs: u32,
    /// From the first byte to the port-forwarding service being up.
    pub handshake_timeout: Duration,
    /// Quiet time after the last `tcpip-forward` before we send keepalive options.
    pub forward_settle: Duration,
    /// Failed password attempts allowed on one tunnel before it is disconnected.
    pub max_auth_attempts: u32,
    /// Most ports one device may forward.
    pub max_forwarded_ports: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: apf::Limits::default(),
            pre_auth_limits: apf::Limits::for_max_message(PRE_AUTH_MAX_MESSAGE),
            channels: ChannelConfig::default(),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout_secs: 0,
            handshake_timeout: Duration::from_secs(30),
            forward_settle: Duration::from_millis(500),
            max_auth_attempts: 3,
            max_forwarded_ports: 32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitVersion,
    AwaitAuthService,
    AwaitUserauth,
    /// An AuthRequest event is out; input is held until the driver decides.
    AuthPending,
    AwaitPfwdService,
    Established,
}

/// The gateway's side of one APF tunnel.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    core: Core,
    state: State,
    channels: Channels,
    /// Forwarded ports and the bind address the device gave for each.
    ports: BTreeMap<u32, Bytes>,
    handshake_deadline: Instant,
    /// Idle limit: three keepalive intervals.
    idle_limit: Duration,
    keepalive_options_at: Option<Instant>,
    keepalive_options_sent: bool,
    auth_failures: u32,
    /// The cookie of the last `probe`.
    probe_cookie: u32,
}

impl ServerSession {
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        let idle_limit = config.keepalive_interval * 3;
        Self {
            core: Core::new(config.pre_auth_limits.min(config.limits), PRE_AUTH_INPUT_SLACK, now),
            channels: Channels::new(config.channels),
            handshake_deadline: now + config.handshake_timeout,
            config,
            state: State::AwaitVersion,
            ports: BTreeMap::new(),
            idle_limit,
            keepalive_options_at: None,
            keepalive_options_sent: false,
            auth_failures: 0,
            probe_cookie: 0,
        }
    }

    /// Feeds bytes received from the device.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if !self.core.receive(data, now) {
            return;
        }
        self.process(now);
    }

    /// Whether the driver should read more input now (false while an auth decision is pending or
    /// after close, so that a peer cannot make us buffer).
    pub fn wants_input(&self) -> bool {
        !self.core.closed && self.state != State::AuthPending
    }

    fn process(&mut self, now: Instant) {
        while !self.core.closed && self.state != State::AuthPending {
            let message = match self.core.next_message() {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(cause) => return self.fail(cause),
            };
            if let Err(cause) = self.handle_message(message, now) {
                return self.fail(cause);
            }
        }
        if !self.core.closed && self.core.input_overflows() {
            self.fail(CloseCause::protocol(
                ProtocolErrorKind::InputOverflow,
                format!("{} bytes of input held in state {:?}", self.core.input.len(), self.state),
            ));
        }
    }

    fn unexpected(&self, message: &Message) -> CloseCause {
        CloseCause::protocol(
            ProtocolErrorKind::UnexpectedMessage,
            format!("{:?} in state {:?}", message.message_type(), self.state),
        )
    }

    fn handle_message(&mut self, message: Message, now: Instant) -> Result<(), CloseCause> {
        let out = &mut self.core.out;
        match (self.state, message) {
            (_, Message::Disconnect { reason }) => return Err(CloseCause::PeerDisconnected(reason)),
            (State::AwaitVersion, Message::ProtocolVersion { major, minor, trigger_reason, uuid }) => {
                if major != 1 {
                    return Err(CloseCause::protocol(
                        ProtocolErrorKind::UnsupportedVersion,
                        format!("APF version {major}.{minor}"),
                    ));
                }
                out.events.push_back(Event::Hello { uuid, major, minor, trigger_reason });
                self.state = State::AwaitAuthService;
            }
            (State::AwaitAuthService, Message::ServiceRequest { service }) => {
                if service != SERVICE_AUTH {
                    return Err(CloseCause::protocol(ProtocolErrorKind::UnknownService, "expected auth@amt.intel.com"));
                }
                out.send(&Message::ServiceAccept { service });
                self.state = State::AwaitUserauth;
            }
            (State::AwaitUserauth, Message::UserauthRequest { username, service, method }) => {
                if service != SERVICE_PFWD {
                    return Err(CloseCause::protocol(
                        ProtocolErrorKind::UnknownService,
                        "userauth for an unknown service",
                    ));
                }
                match method {
                    AuthMethod::Password(password) => {
                        out.events.push_back(Event::AuthRequest { username, password: Secret(password) });
                        self.state = State::AuthPending;
                    }
                    AuthMethod::None | AuthMethod::Other(_) => {
                        // SSH clients probe with "none" to learn the methods; count it as a try.
                        let method = match method {
                            AuthMethod::Other(name) => name,
                            _ => Bytes::from_static(b"none"),
                        };
                        out.events.push_back(Event::AuthMethodRefused { method });
                        self.send_auth_failure();
                    }
                }
            }
            (State::AwaitPfwdService, Message::ServiceRequest { service }) => {
                if service != SERVICE_PFWD {
                    return Err(CloseCause::protocol(ProtocolErrorKind::UnknownService, "expected pfwd@amt.intel.com"));
                }
                out.send(&Message::ServiceAccept { service });
                self.state = State::Established;
                out.events.push_back(Event::Established);
            }
            (State::Established, Message::GlobalRequest { want_reply, request }) => {
                self.handle_global_request(want_reply, request, now)
            }
            // Keepalives only once authenticated: before, a peer that floods requests and never
            // reads would make us queue replies (firmware starts them with the tunnel).
            (State::AwaitPfwdService | State::Established, Message::KeepaliveRequest { cookie }) => {
                out.send(&Message::KeepaliveReply { cookie });
                out.events.push_back(Event::Keepalive);
            }
            (State::AwaitPfwdService | State::Established, Message::KeepaliveReply { cookie }) => {
                out.events.push_back(Event::KeepaliveReply { cookie });
            }
            (State::Established, Message::KeepaliveOptionsReply { interval_secs, timeout_secs }) => {
                if interval_secs > 0 {
                    // The device may answer with its own interval, but not stretch our idle
                    // limit without bound: at most four times the interval we asked for.
                    let asked = self.config.keepalive_interval;
                    let interval = Duration::from_secs(u64::from(interval_secs)).min(asked * 4);
                    self.idle_limit = interval * 3;
                }
                out.events.push_back(Event::KeepaliveOptions { interval_secs, timeout_secs });
            }
            (State::Established, Message::ChannelOpen(open)) => {
                // Device-initiated channels (direct-tcpip, event delivery) are refused, as real
                // MPSs do; other types are unknown.
                let reason = match open.channel_type {
                    ChannelType::DirectTcpip => OpenFailureReason::AdministrativelyProhibited,
                    _ => OpenFailureReason::UnknownChannelType,
                };
                out.send(&Message::ChannelOpenFailure { recipient_channel: open.sender_channel, reason });
            }
            (State::Established, message) if is_channel_message(&message) => {
                self.channels.handle(&mut self.core.out, message)?
            }
            (_, message) => return Err(self.unexpected(&message)),
        }
        Ok(())
    }

    fn handle_global_request(&mut self, want_reply: bool, request: GlobalRequest, now: Instant) {
        let out = &mut self.core.out;
        match request {
            GlobalRequest::TcpipForward { address, port } => {
                let valid = port != 0 && port <= u32::from(u16::MAX);
                if !valid || (self.ports.len() >= self.config.max_forwarded_ports && !self.ports.contains_key(&port)) {
                    if want_reply {
                        out.send(&Message::RequestFailure);
                    }
                    return;
                }
                self.ports.insert(port, address);
                if want_reply {
                    out.send(&Message::RequestSuccess { port: Some(port) });
                }
                out.events.push_back(Event::PortForwarded { port });
                if !self.keepalive_options_sent {
                    // Real firmware forwards 5900 last; anyone else gets the options once the
                    // forwards have been quiet for a moment.
                    self.keepalive_options_at = Some(if port == 5900 { now } else { now + self.config.forward_settle });
                    if port == 5900 {
                        self.send_keepalive_options();
                    }
                }
            }
            GlobalRequest::CancelTcpipForward { port, .. } => {
                let known = self.ports.remove(&port).is_some();
                if want_reply {
                    out.send(if known { &Message::RequestSuccess { port: None } } else { &Message::RequestFailure });
                }
                if known {
                    out.events.push_back(Event::PortCancelled { port });
                }
            }
            GlobalRequest::UdpSendTo { .. } | GlobalRequest::Other { .. } => {
                if want_reply {
                    out.send(&Message::RequestFailure);
                }
            }
        }
    }

    fn send_keepalive_options(&mut self) {
        self.keepalive_options_sent = true;
        self.keepalive_options_at = None;
        let interval_secs = u32::try_from(self.config.keepalive_interval.as_secs()).unwrap_or(u32::MAX).max(1);
        self.core.out.send(&Message::KeepaliveOptionsRequest {
            interval_secs,
            timeout_secs: self.config.keepalive_timeout_secs,
        });
    }

    fn send_auth_failure(&mut self) {
        self.auth_failures += 1;
        self.core
            .out
            .send(&Message::UserauthFailure { methods: Bytes::from_static(b"password"), partial_success: false });
        if self.auth_failures >= self.config.max_auth_attempts {
            self.fail(CloseCause::AuthFailed);
        }
    }

    /// Accepts the pending AuthRequest.
    pub fn accept_auth(&mut self, now: Instant) {
        if self.state != State::AuthPending || self.core.closed {
            return;
        }
        self.core.out.send(&Message::UserauthSuccess);
        self.state = State::AwaitPfwdService;
        self.core.set_limits(self.config.limits, super::INPUT_SLACK);
        self.process(now);
    }

    /// Refuses the pending AuthRequest. The device may try again until `max_auth_attempts`.
    pub fn reject_auth(&mut self, now: Instant) {
        if self.state != State::AuthPending || self.core.closed {
            return;
        }
        self.state = State::AwaitUserauth;
        self.send_auth_failure();
        self.process(now);
    }

    /// Handles expired deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.core.closed {
            return;
        }
        if self.state != State::Established && now >= self.handshake_deadline {
            return self.fail(CloseCause::HandshakeTimeout);
        }
        if now >= self.core.last_rx + self.idle_limit {
            return self.fail(CloseCause::IdleTimeout);
        }
        if matches!(self.keepalive_options_at, Some(at) if now >= at) {
            self.send_keepalive_options();
        }
    }

    /// The next time `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.core.closed {
            return None;
        }
        let handshake = (self.state != State::Established).then_some(self.handshake_deadline);
        let idle = Some(self.core.last_rx + self.idle_limit);
        deadline_min(deadline_min(handshake, idle), self.keepalive_options_at)
    }

    shared_session_methods!();

    pub fn is_established(&self) -> bool {
        self.state == State::Established && !self.core.closed
    }

    /// Asks the device for a sign of life: sends KEEPALIVE_REQUEST with a fresh cookie and
    /// returns it. The device echoes it in a KEEPALIVE_REPLY, reported as
    /// [`Event::KeepaliveReply`] with the same cookie; how long to wait is the driver's choice.
    /// `None` (and nothing sent) before the device has authenticated, or once closed.
    pub fn probe(&mut self) -> Option<u32> {
        if self.core.closed || !matches!(self.state, State::AwaitPfwdService | State::Established) {
            return None;
        }
        self.probe_cookie = self.probe_cookie.wrapping_add(1);
        self.core.out.send(&Message::KeepaliveRequest { cookie: self.probe_cookie });
        Some(self.probe_cookie)
    }

    /// Ports the device forwards now.
    pub fn forwarded_ports(&self) -> impl Iterator<Item = u32> + '_ {
        self.ports.keys().copied()
    }

    /// Opens a channel to a forwarded device port. `originator` is reported to the device as the
    /// connection's source (address and port).
    pub fn open_channel(&mut self, port: u32, originator: (Bytes, u32)) -> Result<ChannelId, OpenError> {
        if self.core.closed {
            return Err(OpenError::Closed);
        }
        if self.state != State::Established {
            return Err(OpenError::NotEstablished);
        }
        let Some(address) = self.ports.get(&port) else { return Err(OpenError::PortNotForwarded(port)) };
        self.channels.open(&mut self.core.out, address.clone(), port, originator)
    }
}
