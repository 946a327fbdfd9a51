//! APF tunnel state machines: the server role ([`ServerSession`], the gateway) and the client role
//! ([`ClientSession`], a device), without I/O.
//!
//! Like quinn-proto's `Connection`, a session is fed what arrived and the current time, and hands
//! back bytes to send, events and the next deadline:
//!
//! - [`ServerSession::handle_input`] / [`ServerSession::handle_timeout`] feed it;
//! - [`ServerSession::poll_transmit`], [`ServerSession::poll_event`] and
//!   [`ServerSession::poll_timeout`] drain it;
//! - methods such as [`ServerSession::open_channel`] and [`ServerSession::send`] act on it.
//!
//! A session never blocks and never buffers more than the windows it advertised plus one message
//! of input (before authentication, one small message: see [`ServerConfig::pre_auth_limits`]).
//! The input buffer grows to the largest message and shrinks back once it is processed, so an
//! idle tunnel holds kilobytes, not the megabyte a large message needed.
//! What it does not do: sockets, TLS, clocks, password checks (the driver decides and calls
//! [`ServerSession::accept_auth`] or [`ServerSession::reject_auth`]).

use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use uuid::Uuid;

use crate::apf::{self, DecodeError, DisconnectReason, Message, OpenFailureReason};

/// The methods both roles share: draining output, channel I/O and closing. Each role struct has
/// a `core: Core` and a `channels: Channels` field; this expands inside its `impl`.
macro_rules! shared_session_methods {
    () => {
        /// Bytes to write to the peer, if any (everything queued so far, in one buffer).
        pub fn poll_transmit(&mut self) -> Option<Bytes> {
            self.core.poll_transmit()
        }

        /// Bytes queued for the wire and not yet taken by `poll_transmit`.
        pub fn pending_transmit(&self) -> usize {
            self.core.out.transmit.len()
        }

        /// Bytes received and not processed yet: the start of an incomplete message, or input
        /// held while a decision is pending. For tests and metrics.
        pub fn buffered_input(&self) -> usize {
            self.core.input.len()
        }

        /// The allocation behind the input buffer, in bytes: it grows to hold the largest message
        /// and shrinks back once that message has been processed. For tests and metrics.
        pub fn buffered_capacity(&self) -> usize {
            self.core.input.capacity()
        }

        pub fn poll_event(&mut self) -> Option<Event> {
            self.core.out.events.pop_front()
        }

        pub fn is_closed(&self) -> bool {
            self.core.closed
        }

        /// Channels open or opening on this tunnel.
        pub fn channel_count(&self) -> usize {
            self.channels.len()
        }

        /// Bytes `send` would take now on this channel (the peer's window).
        pub fn send_capacity(&self, ch: ChannelId) -> usize {
            self.channels.send_capacity(ch)
        }

        /// Queues data on a channel, up to the peer's window; returns the bytes taken.
        pub fn send(&mut self, ch: ChannelId, data: &[u8]) -> usize {
            if self.core.closed {
                return 0;
            }
            self.channels.send(&mut self.core.out, ch, data)
        }

        /// Reports that `n` bytes received on `ch` were passed on; grants window when due.
        pub fn consumed(&mut self, ch: ChannelId, n: usize) {
            if !self.core.closed {
                self.channels.consumed(&mut self.core.out, ch, n)
            }
        }

        /// Tells the peer no more data follows on `ch`.
        pub fn send_eof(&mut self, ch: ChannelId) {
            if !self.core.closed {
                self.channels.send_eof(&mut self.core.out, ch)
            }
        }

        /// Closes `ch`; the peer's CLOSE (then `Event::ChannelClosed`) completes it.
        pub fn close_channel(&mut self, ch: ChannelId) {
            if !self.core.closed {
                self.channels.close(&mut self.core.out, ch)
            }
        }

        /// Ends the tunnel with DISCONNECT(`reason`).
        pub fn disconnect(&mut self, reason: DisconnectReason) {
            self.fail(CloseCause::Local(reason));
        }

        fn fail(&mut self, cause: CloseCause) {
            if self.core.closed {
                return;
            }
            self.channels.clear(&mut self.core.out);
            self.core.close(cause);
        }
    };
}

mod channels;
mod client;
mod server;

pub use channels::{ChannelConfig, OpenError};
pub use client::{ClientConfig, ClientSession, AMT_PORTS};
pub use server::{ServerConfig, ServerSession, PRE_AUTH_MAX_MESSAGE};

use channels::Output;

/// A channel, by the id this side chose for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ch{}", self.0)
    }
}

/// Bytes that must not show up in logs (passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Bytes);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// What happened on a tunnel, for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Server: the device's PROTOCOL_VERSION arrived.
    Hello { uuid: Uuid, major: u32, minor: u32, trigger_reason: u32 },
    /// Server: the device asks to authenticate; answer with `accept_auth` or `reject_auth`.
    /// No input is processed until then.
    AuthRequest { username: Bytes, password: Secret },
    /// Server: the device tried an authentication method other than `password` (refused, and
    /// counted against its attempts).
    AuthMethodRefused { method: Bytes },
    /// Client: the server accepted our credentials.
    Authenticated,
    /// Client: the server refused our credentials (the session is closing).
    AuthRejected,
    /// Both: the port-forwarding service is up. Server: channels can be opened to forwarded
    /// ports from now on. Client: every requested forward has been answered.
    Established,
    /// Server: the device forwards this port (a `tcpip-forward` arrived and was accepted).
    /// Client: the server accepted our forward of this port.
    PortForwarded { port: u32 },
    /// Server: the device cancelled a forward. Client: the server refused a forward.
    PortCancelled { port: u32 },
    /// Server: the device accepted keepalive options. Client: the server set them.
    KeepaliveOptions { interval_secs: u32, timeout_secs: u32 },
    /// A KEEPALIVE_REQUEST arrived (and was answered).
    Keepalive,
    /// A KEEPALIVE_REPLY arrived, echoing `cookie`. Server: the answer to
    /// [`ServerSession::probe`] (or an unsolicited reply: compare the cookie). Client: the answer
    /// to one of our keepalives.
    KeepaliveReply { cookie: u32 },
    /// Client: the server wants a channel to `port`; answer with `accept_channel` or
    /// `reject_channel`.
    ChannelOpenRequest { ch: ChannelId, port: u32, originator: Bytes, originator_port: u32 },
    /// Server: a channel we opened was confirmed; `send_window` is the device's window.
    ChannelOpened { ch: ChannelId, port: u32, send_window: u32 },
    /// Server: the device refused a channel we opened.
    ChannelOpenFailed { ch: ChannelId, reason: OpenFailureReason },
    /// Data arrived on a channel. Call `consumed` once it has been passed on, to grant credit.
    ChannelData { ch: ChannelId, data: Bytes },
    /// The peer will send no more data on this channel.
    ChannelEof { ch: ChannelId },
    /// The channel is gone (closed by either side, or the tunnel closed).
    ChannelClosed { ch: ChannelId },
    /// The peer granted window on a channel whose send credit was exhausted.
    ChannelWritable { ch: ChannelId },
    /// The session ended; nothing more will happen. Flush `poll_transmit`, then close the socket.
    Closed(CloseCause),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseCause {
    /// The peer sent DISCONNECT.
    PeerDisconnected(DisconnectReason),
    /// The peer broke the protocol; we sent DISCONNECT (protocol error).
    Protocol { kind: ProtocolErrorKind, detail: String },
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// Nothing arrived for three keepalive intervals.
    IdleTimeout,
    /// Authentication failed (client: refused by the server; server: attempts exhausted).
    AuthFailed,
    /// The local application closed the session with this reason.
    Local(DisconnectReason),
}

impl CloseCause {
    pub(crate) fn protocol(kind: ProtocolErrorKind, detail: impl Into<String>) -> Self {
        CloseCause::Protocol { kind, detail: detail.into() }
    }

    fn from_decode(err: DecodeError) -> Self {
        let kind = match err {
            DecodeError::UnknownType(_) => ProtocolErrorKind::UnknownType,
            DecodeError::TooLong { .. } => ProtocolErrorKind::TooLong,
            DecodeError::Malformed { .. } => ProtocolErrorKind::Malformed,
        };
        CloseCause::Protocol { kind, detail: err.to_string() }
    }

    /// The DISCONNECT reason the session sends for this cause, if it sends one (none when the
    /// peer disconnected).
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        match self {
            CloseCause::PeerDisconnected(_) => None,
            CloseCause::Protocol { kind: ProtocolErrorKind::UnsupportedVersion, .. } => {
                Some(DisconnectReason::ProtocolVersionNotSupported)
            }
            CloseCause::Protocol { kind: ProtocolErrorKind::UnknownService, .. } => {
                Some(DisconnectReason::ServiceNotAvailable)
            }
            CloseCause::Protocol { .. } => Some(DisconnectReason::ProtocolError),
            CloseCause::HandshakeTimeout | CloseCause::IdleTimeout => Some(DisconnectReason::ConnectionTimedOut),
            CloseCause::AuthFailed => Some(DisconnectReason::NoMoreAuthMethods),
            CloseCause::Local(reason) => Some(*reason),
        }
    }
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseCause::PeerDisconnected(reason) => write!(f, "peer disconnected ({reason:?})"),
            CloseCause::Protocol { kind, detail } => write!(f, "protocol error ({}): {detail}", kind.as_str()),
            CloseCause::HandshakeTimeout => f.write_str("handshake timed out"),
            CloseCause::IdleTimeout => f.write_str("no traffic for three keepalive intervals"),
            CloseCause::AuthFailed => f.write_str("authentication failed"),
            CloseCause::Local(reason) => write!(f, "closed locally ({reason:?})"),
        }
    }
}

/// Input buffered beyond one maximal message once authenticated (what one read may bring in
/// while the session holds input).
const INPUT_SLACK: usize = 64 * 1024;
/// An input buffer whose allocation is larger than this is given back once it holds at most a
/// quarter of it, after a batch of messages has been processed.
const INPUT_KEEP_CAPACITY: usize = 64 * 1024;
/// The allocation a shrunk input buffer starts with (at least the remainder it holds).
const INPUT_SHRUNK_CAPACITY: usize = 4 * 1024;

/// Bytes received and not yet decoded. A `Vec` and a read offset rather than a `BytesMut`: its
/// capacity is the allocation it holds (a `BytesMut` hides the part it has consumed), so that
/// the allocation can be seen and given back.
#[derive(Debug, Default)]
struct InputBuffer {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already decoded.
    start: usize,
}

impl InputBuffer {
    fn extend(&mut self, data: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Called once no complete message is left: moves the remainder (less than one message) to
    /// the front, and replaces a large allocation holding little with a small one.
    fn compact(&mut self) {
        self.buf.drain(..self.start);
        self.start = 0;
        if self.buf.capacity() > INPUT_KEEP_CAPACITY && self.buf.len() <= INPUT_KEEP_CAPACITY / 4 {
            let mut small = Vec::with_capacity(self.buf.len().max(INPUT_SHRUNK_CAPACITY));
            small.extend_from_slice(&self.buf);
            self.buf = small;
        }
    }

    /// Drops everything, allocation included.
    fn release(&mut self) {
        *self = Self::default();
    }
}

/// Input buffering, decoding and output shared by both roles.
#[derive(Debug)]
struct Core {
    limits: apf::Limits,
    /// Input buffered beyond one maximal message before the session fails with InputOverflow.
    input_slack: usize,
    input: InputBuffer,
    out: Output,
    closed: bool,
    /// When the peer last sent anything: every byte counts as liveness.
    last_rx: Instant,
}

impl Core {
    fn new(limits: apf::Limits, input_slack: usize, now: Instant) -> Self {
        Self { limits, input_slack, input: InputBuffer::default(), out: Output::default(), closed: false, last_rx: now }
    }

    /// Decodes from now on with `limits` and caps held input at one maximal message plus `slack`.
    fn set_limits(&mut self, limits: apf::Limits, slack: usize) {
        self.limits = limits;
        self.input_slack = slack;
    }

    /// Buffers bytes from the peer; false once the session is closed (the bytes are dropped).
    fn receive(&mut self, data: &[u8], now: Instant) -> bool {
        if self.closed {
            return false;
        }
        if !data.is_empty() {
            self.last_rx = now;
        }
        self.input.extend(data);
        true
    }

    /// Whether more input is buffered than one maximal message plus slack (possible only while
    /// the session holds input: otherwise what stays buffered is less than one message).
    fn input_overflows(&self) -> bool {
        self.input.len() > self.limits.max_message_len().saturating_add(self.input_slack)
    }

    /// Decodes the next complete message, if any.
    fn next_message(&mut self) -> Result<Option<Message>, CloseCause> {
        match apf::decode(self.input.bytes(), &self.limits) {
            Ok(Some((message, consumed))) => {
                self.input.consume(consumed);
                Ok(Some(message))
            }
            Ok(None) => {
                self.input.compact();
                Ok(None)
            }
            Err(err) => Err(CloseCause::from_decode(err)),
        }
    }

    /// Ends the session: sends DISCONNECT when the cause calls for one, reports the cause.
    fn close(&mut self, cause: CloseCause) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.input.release();
        if let Some(reason) = cause.disconnect_reason() {
            self.out.send(&Message::Disconnect { reason });
        }
        self.out.events.push_back(Event::Closed(cause));
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.transmit.is_empty() {
            None
        } else {
            Some(self.out.transmit.split().freeze())
        }
    }
}

fn deadline_min(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
#[path = "session_test.rs"]
mod tests;

/// What a peer did wrong, as a closed set (used for metrics labels and DISCONNECT reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolErrorKind {
    /// A message type byte APF does not define.
    UnknownType,
    /// A length field over its limit.
    TooLong,
    /// A message whose fields do not parse.
    Malformed,
    /// A valid message at the wrong point of the handshake, or in the wrong direction.
    UnexpectedMessage,
    /// A protocol version this implementation does not speak.
    UnsupportedVersion,
    /// A service other than `auth@amt.intel.com` / `pfwd@amt.intel.com`.
    UnknownService,
    /// A channel message naming a channel that does not exist.
    UnknownChannel,
    /// More channel data than the window we granted.
    WindowExceeded,
    /// More input than allowed while the session was not reading (e.g. during an auth decision).
    InputOverflow,
}

impl ProtocolErrorKind {
    pub const ALL: [ProtocolErrorKind; 9] = [
        Self::UnknownType,
        Self::TooLong,
        Self::Malformed,
        Self::UnexpectedMessage,
        Self::UnsupportedVersion,
        Self::UnknownService,
        Self::UnknownChannel,
        Self::WindowExceeded,
        Self::InputOverflow,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownType => "unknown_type",
            Self::TooLong => "too_long",
            Self::Malformed => "malformed",
            Self::UnexpectedMessage => "unexpected_message",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownService => "unknown_service",
            Self::UnknownChannel => "unknown_channel",
            Self::WindowExceeded => "window_exceeded",
            Self::InputOverflow => "input_overflow",
        }
    }
}
