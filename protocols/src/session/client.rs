//! The client (device) side of an APF tunnel, as Intel AMT firmware runs it.
//!
//! Sends the version with its UUID, asks for `auth@amt.intel.com`, authenticates with a password,
//! asks for `pfwd@amt.intel.com` and forwards its ports one request at a time (in firmware's
//! order). Then it sends keepalives at the interval the server asked for, accepts or refuses the
//! channels the server opens (the driver decides), and grants window in steps.

use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use super::channels::{is_channel_message, Channels};
use super::{deadline_min, ChannelConfig, ChannelId, CloseCause, Core, Event, ProtocolErrorKind};
use crate::apf::{
    self, AuthMethod, ChannelType, DisconnectReason, GlobalRequest, Message, OpenFailureReason, SERVICE_AUTH,
    SERVICE_PFWD,
};

/// The ports real AMT firmware forwards, in the order it sends them.
pub const AMT_PORTS: [u32; 7] = [16993, 16992, 664, 623, 16995, 16994, 5900];

/// Settings of the client role. `Debug` leaves the password out.
#[derive(Clone)]
pub struct ClientConfig {
    pub uuid: Uuid,
    pub username: Bytes,
    pub password: Bytes,
    /// Ports to forward, in order.
    pub ports: Vec<u32>,
    /// The bind address sent with each `tcpip-forward` (firmware sends its FQDN or nothing).
    pub bind_address: Bytes,
    /// The PROTOCOL_VERSION trigger reason (1 user-initiated, 2 alert, 4 periodic, …).
    pub trigger_reason: u32,
    pub limits: apf::Limits,
    pub channels: ChannelConfig,
    /// Keepalive interval until the server sets one.
    pub keepalive_interval: Duration,
    /// From connect to every forward answered.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("uuid", &self.uuid)
            .field("username", &self.username)
            .field("password", &super::Secret(self.password.clone()))
            .field("ports", &self.ports)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A device with firmware's defaults: the seven AMT ports, 4 KiB windows granted back in
    /// small steps, 30 s keepalives.
    pub fn new(uuid: Uuid, username: impl Into<Bytes>, password: impl Into<Bytes>) -> Self {
        Self {
            uuid,
            username: username.into(),
            password: password.into(),
            ports: AMT_PORTS.to_vec(),
            bind_address: Bytes::new(),
            trigger_reason: 0,
            limits: apf::Limits::default(),
            channels: ChannelConfig { max_channels: 16, window: 4096, adjust_threshold: 512, max_send_chunk: 4096 },
            keepalive_interval: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitAuthAccept,
    AwaitAuthResult,
    AwaitPfwdAccept,
    /// Waiting for the reply to the forward of `ports[i]`.
    Forwarding(usize),
    Established,
}

/// A device's side of one APF tunnel.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    core: Core,
    state: State,
    channels: Channels,
    handshake_deadline: Instant,
    keepalive_interval: Duration,
    next_keepalive: Option<Instant>,
    cookie: u32,
    /// Ports the server accepted so far: the server may open channels to them even before the
    /// last forward is answered.
    forwarded: Vec<u32>,
}

impl ClientSession {
    /// Starts a session: the version and the auth service request are queued at once.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let mut session = Self {
            core: Core::new(config.limits, super::INPUT_SLACK, now),
            channels: Channels::new(config.channels),
            handshake_deadline: now + config.handshake_timeout,
            keepalive_interval: config.keepalive_interval,
            next_keepalive: None,
            cookie: 0,
            forwarded: Vec::new(),
            state: State::AwaitAuthAccept,
            config,
        };
        let out = &mut session.core.out;
        out.send(&Message::ProtocolVersion {
            major: 1,
            minor: 0,
            trigger_reason: session.config.trigger_reason,
            uuid: session.config.uuid,
        });
        out.send(&Message::ServiceRequest { service: Bytes::from_static(SERVICE_AUTH) });
        session
    }

    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if !self.core.receive(data, now) {
            return;
        }
        while !self.core.closed {
            let message = match self.core.next_message() {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(cause) => return self.fail(cause),
            };
            if let Err(cause) = self.handle_message(message, now) {
                return self.fail(cause);
            }
        }
    }

    fn handle_message(&mut self, message: Message, now: Instant) -> Result<(), CloseCause> {
        let out = &mut self.core.out;
        match (self.state, message) {
            (_, Message::Disconnect { reason }) => return Err(CloseCause::PeerDisconnected(reason)),
            (State::AwaitAuthAccept, Message::ServiceAccept { service }) if service == SERVICE_AUTH => {
                out.send(&Message::UserauthRequest {
                    username: self.config.username.clone(),
                    service: Bytes::from_static(SERVICE_PFWD),
                    method: AuthMethod::Password(self.config.password.clone()),
                });
                self.state = State::AwaitAuthResult;
            }
            (State::AwaitAuthResult, Message::UserauthSuccess) => {
                out.events.push_back(Event::Authenticated);
                out.send(&Message::ServiceRequest { service: Bytes::from_static(SERVICE_PFWD) });
                self.state = State::AwaitPfwdAccept;
            }
            (State::AwaitAuthResult, Message::UserauthFailure { .. }) => {
                out.events.push_back(Event::AuthRejected);
                return Err(CloseCause::AuthFailed);
            }
            (State::AwaitPfwdAccept, Message::ServiceAccept { service }) if service == SERVICE_PFWD => {
                self.forward_next(0, now);
            }
            (State::Forwarding(i), Message::RequestSuccess { .. }) => {
                let port = self.config.ports[i];
                self.forwarded.push(port);
                out.events.push_back(Event::PortForwarded { port });
                self.forward_next(i + 1, now);
            }
            (State::Forwarding(i), Message::RequestFailure) => {
                let port = self.config.ports[i];
                out.events.push_back(Event::PortCancelled { port });
                self.forward_next(i + 1, now);
            }
            (
                State::Forwarding(_) | State::Established,
                Message::KeepaliveOptionsRequest { interval_secs, timeout_secs },
            ) => {
                out.send(&Message::KeepaliveOptionsReply { interval_secs, timeout_secs });
                out.events.push_back(Event::KeepaliveOptions { interval_secs, timeout_secs });
                if interval_secs > 0 {
                    self.keepalive_interval = Duration::from_secs(u64::from(interval_secs));
                    if self.next_keepalive.is_some() {
                        self.next_keepalive = Some(now + self.keepalive_interval);
                    }
                }
            }
            (state, Message::KeepaliveRequest { cookie }) if state != State::AwaitAuthAccept => {
                out.send(&Message::KeepaliveReply { cookie });
                out.events.push_back(Event::Keepalive);
            }
            (state, Message::KeepaliveReply { cookie }) if state != State::AwaitAuthAccept => {
                out.events.push_back(Event::KeepaliveReply { cookie });
            }
            (State::Forwarding(_) | State::Established, Message::ChannelOpen(open)) => {
                let forwarded = self.forwarded.contains(&open.connected_port);
                if open.channel_type != ChannelType::ForwardedTcpip {
                    out.send(&Message::ChannelOpenFailure {
                        recipient_channel: open.sender_channel,
                        reason: OpenFailureReason::UnknownChannelType,
                    });
                } else if !forwarded {
                    out.send(&Message::ChannelOpenFailure {
                        recipient_channel: open.sender_channel,
                        reason: OpenFailureReason::ConnectFailed,
                    });
                } else if let Some(ch) = self.channels.peer_open(out, &open) {
                    out.events.push_back(Event::ChannelOpenRequest {
                        ch,
                        port: open.connected_port,
                        originator: open.originator_address,
                        originator_port: open.originator_port,
                    });
                }
            }
            (State::Forwarding(_) | State::Established, message) if is_channel_message(&message) => {
                self.channels.handle(&mut self.core.out, message)?
            }
            (state, message) => {
                return Err(CloseCause::protocol(
                    ProtocolErrorKind::UnexpectedMessage,
                    format!("{:?} in state {state:?}", message.message_type()),
                ))
            }
        }
        Ok(())
    }

    fn forward_next(&mut self, i: usize, now: Instant) {
        if let Some(&port) = self.config.ports.get(i) {
            self.core.out.send(&Message::GlobalRequest {
                want_reply: true,
                request: GlobalRequest::TcpipForward { address: self.config.bind_address.clone(), port },
            });
            self.state = State::Forwarding(i);
        } else {
            self.state = State::Established;
            self.next_keepalive = Some(now + self.keepalive_interval);
            self.core.out.events.push_back(Event::Established);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.core.closed {
            return;
        }
        if self.state != State::Established && now >= self.handshake_deadline {
            return self.fail(CloseCause::HandshakeTimeout);
        }
        if now >= self.core.last_rx + self.keepalive_interval * 3 {
            return self.fail(CloseCause::IdleTimeout);
        }
        if matches!(self.next_keepalive, Some(at) if now >= at) {
            self.cookie = self.cookie.wrapping_add(1);
            self.core.out.send(&Message::KeepaliveRequest { cookie: self.cookie });
            self.next_keepalive = Some(now + self.keepalive_interval);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.core.closed {
            return None;
        }
        let handshake = (self.state != State::Established).then_some(self.handshake_deadline);
        let idle = Some(self.core.last_rx + self.keepalive_interval * 3);
        deadline_min(deadline_min(handshake, idle), self.next_keepalive)
    }

    shared_session_methods!();

    pub fn is_established(&self) -> bool {
        self.state == State::Established && !self.core.closed
    }

    /// Accepts a channel the server opened (after `Event::ChannelOpenRequest`).
    pub fn accept_channel(&mut self, ch: ChannelId) -> bool {
        !self.core.closed && self.channels.accept(&mut self.core.out, ch)
    }

    /// Refuses a channel the server opened.
    pub fn reject_channel(&mut self, ch: ChannelId, reason: OpenFailureReason) {
        if !self.core.closed {
            self.channels.reject(&mut self.core.out, ch, reason)
        }
    }
}
