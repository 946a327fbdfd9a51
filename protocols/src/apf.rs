//! APF (Intel AMT Port Forwarding), the message layer of CIRA: types, a streaming parser and an
//! encoder. No I/O: bytes in, messages out, and back.
//!
//! APF is SSH's connection protocol without SSH's transport: TLS carries it, and there is no outer
//! length prefix. Every message starts with a type byte; its length follows from the type and the
//! length fields inside it. All integers are big-endian. A "string" is a `u32` length and that many
//! bytes.
//!
//! What this module does not do: decide what a message means for a tunnel (that is
//! [`crate::session`]), or read and write sockets (that is the gateway and the simulator).
//!
//! Parsing is streaming: [`decode`] returns `Ok(None)` while the buffer holds only part of a
//! message, and fails early (before the whole message arrives) when a length field already exceeds
//! its [`Limits`]. Encoding writes exactly the sizes real peers send (see `encoded_len`).

use bytes::{BufMut, Bytes, BytesMut};
use nom::Parser;
use uuid::Uuid;

/// Longest name, address, username or password accepted (real MPSs cap these at 2048 bytes).
pub const MAX_STRING_LEN: usize = 2048;
/// Longest CHANNEL_DATA payload accepted by default (Open AMT's MPS closes above this).
pub const DEFAULT_MAX_DATA_LEN: usize = 1 << 20;

/// Service the device asks for first, to authenticate.
pub const SERVICE_AUTH: &[u8] = b"auth@amt.intel.com";
/// Service the device asks for after authenticating, to forward ports.
pub const SERVICE_PFWD: &[u8] = b"pfwd@amt.intel.com";

/// Size limits the parser enforces. A field longer than its limit is a [`DecodeError::TooLong`],
/// reported as soon as its length field has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest string field (names, addresses, usernames, passwords).
    pub max_string: usize,
    /// Longest CHANNEL_DATA payload.
    pub max_data: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_string: MAX_STRING_LEN, max_data: DEFAULT_MAX_DATA_LEN }
    }
}

impl Limits {
    /// The longest message, type byte included, that [`decode`] accepts under these limits.
    ///
    /// The longest shapes are CHANNEL_OPEN (three strings: 33 bytes plus 3 × `max_string`), a
    /// password USERAUTH_REQUEST (26 plus 3 × `max_string`), `udp-send-to` (51 plus 2 ×
    /// `max_string` plus `max_data`), CHANNEL_DATA (9 plus `max_data`) and PROTOCOL_VERSION
    /// (93, fixed); every other message is shorter than one of these.
    pub fn max_message_len(&self) -> usize {
        let s = self.max_string;
        let d = self.max_data;
        let three_strings = s.saturating_mul(3).saturating_add(33);
        let udp_send_to = s.saturating_mul(2).saturating_add(d).saturating_add(51);
        let channel_data = d.saturating_add(9);
        three_strings.max(udp_send_to).max(channel_data).max(93)
    }

    /// Limits under which no message is longer than `max_message` bytes: strings and channel
    /// data get the same cap, the largest that keeps [`Limits::max_message_len`] within
    /// `max_message` (4096 gives 1348-byte usernames and passwords). PROTOCOL_VERSION is 93 bytes
    /// whatever the limits, so a smaller `max_message` cannot be honoured; below about 160 bytes
    /// no USERAUTH_REQUEST with a realistic username and password fits.
    pub fn for_max_message(max_message: usize) -> Self {
        // The tightest bound with equal caps is `udp-send-to`: 51 + 3 × cap.
        let cap = max_message.saturating_sub(51) / 3;
        Self { max_string: cap, max_data: cap }
    }

    /// The tighter of two limits, field by field.
    pub fn min(self, other: Limits) -> Self {
        Self { max_string: self.max_string.min(other.max_string), max_data: self.max_data.min(other.max_data) }
    }
}

/// Message type codes (the first byte of every message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    Disconnect = 1,
    ServiceRequest = 5,
    ServiceAccept = 6,
    UserauthRequest = 50,
    UserauthFailure = 51,
    UserauthSuccess = 52,
    GlobalRequest = 80,
    RequestSuccess = 81,
    RequestFailure = 82,
    ChannelOpen = 90,
    ChannelOpenConfirmation = 91,
    ChannelOpenFailure = 92,
    ChannelWindowAdjust = 93,
    ChannelData = 94,
    ChannelEof = 96,
    ChannelClose = 97,
    ProtocolVersion = 192,
    KeepaliveRequest = 208,
    KeepaliveReply = 209,
    KeepaliveOptionsRequest = 210,
    KeepaliveOptionsReply = 211,
}

impl MessageType {
    /// The type for a wire code, or `None` for a code APF does not define.
    pub fn from_u8(code: u8) -> Option<Self> {
        use MessageType::*;
        Some(match code {
            1 => Disconnect,
            5 => ServiceRequest,
            6 => ServiceAccept,
            50 => UserauthRequest,
            51 => UserauthFailure,
            52 => UserauthSuccess,
            80 => GlobalRequest,
            81 => RequestSuccess,
            82 => RequestFailure,
            90 => ChannelOpen,
            91 => ChannelOpenConfirmation,
            92 => ChannelOpenFailure,
            93 => ChannelWindowAdjust,
            94 => ChannelData,
            96 => ChannelEof,
            97 => ChannelClose,
            192 => ProtocolVersion,
            208 => KeepaliveRequest,
            209 => KeepaliveReply,
            210 => KeepaliveOptionsRequest,
            211 => KeepaliveOptionsReply,
            _ => return None,
        })
    }
}

/// DISCONNECT reason codes (SSH-derived; 16–18 are Node MPS extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    HostNotAllowed,
    ProtocolError,
    KeyExchangeFailed,
    Reserved,
    MacError,
    CompressionError,
    ServiceNotAvailable,
    ProtocolVersionNotSupported,
    HostKeyNotVerifiable,
    ConnectionLost,
    ByApplication,
    TooManyConnections,
    AuthCancelledByUser,
    NoMoreAuthMethods,
    InvalidCredentials,
    ConnectionTimedOut,
    ByPolicy,
    TemporarilyUnavailable,
    /// A code this module does not name; kept so that it round-trips.
    Unknown(u32),
}

impl DisconnectReason {
    pub fn from_u32(code: u32) -> Self {
        use DisconnectReason::*;
        match code {
            1 => HostNotAllowed,
            2 => ProtocolError,
            3 => KeyExchangeFailed,
            4 => Reserved,
            5 => MacError,
            6 => CompressionError,
            7 => ServiceNotAvailable,
            8 => ProtocolVersionNotSupported,
            9 => HostKeyNotVerifiable,
            10 => ConnectionLost,
            11 => ByApplication,
            12 => TooManyConnections,
            13 => AuthCancelledByUser,
            14 => NoMoreAuthMethods,
            15 => InvalidCredentials,
            16 => ConnectionTimedOut,
            17 => ByPolicy,
            18 => TemporarilyUnavailable,
            other => Unknown(other),
        }
    }

    pub fn to_u32(self) -> u32 {
        use DisconnectReason::*;
        match self {
            HostNotAllowed => 1,
            ProtocolError => 2,
            KeyExchangeFailed => 3,
            Reserved => 4,
            MacError => 5,
            CompressionError => 6,
            ServiceNotAvailable => 7,
            ProtocolVersionNotSupported => 8,
            HostKeyNotVerifiable => 9,
            ConnectionLost => 10,
            ByApplication => 11,
            TooManyConnections => 12,
            AuthCancelledByUser => 13,
            NoMoreAuthMethods => 14,
            InvalidCredentials => 15,
            ConnectionTimedOut => 16,
            ByPolicy => 17,
            TemporarilyUnavailable => 18,
            Unknown(code) => code,
        }
    }
}

/// CHANNEL_OPEN_FAILURE reason codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenFailureReason {
    AdministrativelyProhibited,
    ConnectFailed,
    UnknownChannelType,
    ResourceShortage,
    Unknown(u32),
}

impl OpenFailureReason {
    pub fn from_u32(code: u32) -> Self {
        match code {
            1 => Self::AdministrativelyProhibited,
            2 => Self::ConnectFailed,
            3 => Self::UnknownChannelType,
            4 => Self::ResourceShortage,
            other => Self::Unknown(other),
        }
    }

    pub fn to_u32(self) -> u32 {
        match self {
            Self::AdministrativelyProhibited => 1,
            Self::ConnectFailed => 2,
            Self::UnknownChannelType => 3,
            Self::ResourceShortage => 4,
            Self::Unknown(code) => code,
        }
    }
}

/// The authentication method of a USERAUTH_REQUEST. Only `password` carries more fields (a FALSE
/// byte and the password); other methods end after the method name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    Password(Bytes),
    None,
    /// Any other method name; no method-specific fields are read.
    Other(Bytes),
}

/// The body of a GLOBAL_REQUEST, by request name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalRequest {
    /// `tcpip-forward`: the device asks the MPS to accept channels to this port.
    TcpipForward { address: Bytes, port: u32 },
    /// `cancel-tcpip-forward`.
    CancelTcpipForward { address: Bytes, port: u32 },
    /// `udp-send-to@amt.intel.com`: parsed so that framing holds, then refused.
    UdpSendTo { address: Bytes, port: u32, originator_address: Bytes, originator_port: u32, data: Bytes },
    /// Any other request name. APF gives no framing rule for unknown requests; like both Node
    /// MPSs, we assume no request-specific data follows `want_reply`.
    Other { name: Bytes },
}

/// Channel types of CHANNEL_OPEN. Every type uses the same field layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelType {
    /// MPS → device: a channel to one of the device's forwarded ports.
    ForwardedTcpip,
    /// Device → MPS: a channel the device opens (event delivery); real MPSs refuse it.
    DirectTcpip,
    Other(Bytes),
}

/// CHANNEL_OPEN fields (besides the type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOpen {
    pub channel_type: ChannelType,
    pub sender_channel: u32,
    pub initial_window: u32,
    /// "Reserved" in AMT's documents; both real MPSs send 0xFFFFFFFF (SSH's maximum packet size).
    pub max_packet: u32,
    pub connected_address: Bytes,
    pub connected_port: u32,
    pub originator_address: Bytes,
    pub originator_port: u32,
}

/// One APF message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Disconnect {
        reason: DisconnectReason,
    },
    ServiceRequest {
        service: Bytes,
    },
    ServiceAccept {
        service: Bytes,
    },
    UserauthRequest {
        username: Bytes,
        service: Bytes,
        method: AuthMethod,
    },
    /// Real MPSs write the partial-success flag as a `u16` (15 bytes in all); the spec says `u8`.
    /// The encoder writes the `u16` form; the parser accepts both, and decides which once the
    /// byte after the flag has arrived (the `u8` form ends only when the next message begins).
    UserauthFailure {
        methods: Bytes,
        partial_success: bool,
    },
    UserauthSuccess,
    GlobalRequest {
        want_reply: bool,
        request: GlobalRequest,
    },
    /// `port` is present in the reply to `tcpip-forward` (the port bound), absent otherwise.
    RequestSuccess {
        port: Option<u32>,
    },
    RequestFailure,
    ChannelOpen(ChannelOpen),
    ChannelOpenConfirmation {
        recipient_channel: u32,
        sender_channel: u32,
        initial_window: u32,
        max_packet: u32,
    },
    ChannelOpenFailure {
        recipient_channel: u32,
        reason: OpenFailureReason,
    },
    ChannelWindowAdjust {
        recipient_channel: u32,
        bytes_to_add: u32,
    },
    ChannelData {
        recipient_channel: u32,
        data: Bytes,
    },
    ChannelEof {
        recipient_channel: u32,
    },
    ChannelClose {
        recipient_channel: u32,
    },
    /// The device's first message. The UUID travels in SMBIOS (mixed-endian GUID) order.
    ProtocolVersion {
        major: u32,
        minor: u32,
        trigger_reason: u32,
        uuid: Uuid,
    },
    KeepaliveRequest {
        cookie: u32,
    },
    KeepaliveReply {
        cookie: u32,
    },
    KeepaliveOptionsRequest {
        interval_secs: u32,
        timeout_secs: u32,
    },
    KeepaliveOptionsReply {
        interval_secs: u32,
        timeout_secs: u32,
    },
}

/// Why bytes could not be decoded. Every variant is the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown APF message type {0}")]
    UnknownType(u8),
    #[error("{field} is {len} bytes, over the limit of {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("malformed {message:?}: {detail}")]
    Malformed { message: MessageType, detail: &'static str },
}

/// Decodes one message from the front of `buf`.
///
/// Returns `Ok(Some((message, consumed)))` with the number of bytes it used, `Ok(None)` when
/// `buf` holds only the beginning of a message (read more and call again), or an error when the
/// bytes can never become a valid message.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(&code) = buf.first() else { return Ok(None) };
    let ty = MessageType::from_u8(code).ok_or(DecodeError::UnknownType(code))?;
    match parse_body(ty, &buf[1..], limits) {
        Ok((rest, message)) => Ok(Some((message, buf.len() - rest.len()))),
        Err(nom::Err::Incomplete(_)) => Ok(None),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e.into_decode_error(ty)),
    }
}

impl Message {
    /// The type byte this message is sent with.
    pub fn message_type(&self) -> MessageType {
        use MessageType as T;
        match self {
            Message::Disconnect { .. } => T::Disconnect,
            Message::ServiceRequest { .. } => T::ServiceRequest,
            Message::ServiceAccept { .. } => T::ServiceAccept,
            Message::UserauthRequest { .. } => T::UserauthRequest,
            Message::UserauthFailure { .. } => T::UserauthFailure,
            Message::UserauthSuccess => T::UserauthSuccess,
            Message::GlobalRequest { .. } => T::GlobalRequest,
            Message::RequestSuccess { .. } => T::RequestSuccess,
            Message::RequestFailure => T::RequestFailure,
            Message::ChannelOpen(_) => T::ChannelOpen,
            Message::ChannelOpenConfirmation { .. } => T::ChannelOpenConfirmation,
            Message::ChannelOpenFailure { .. } => T::ChannelOpenFailure,
            Message::ChannelWindowAdjust { .. } => T::ChannelWindowAdjust,
            Message::ChannelData { .. } => T::ChannelData,
            Message::ChannelEof { .. } => T::ChannelEof,
            Message::ChannelClose { .. } => T::ChannelClose,
            Message::ProtocolVersion { .. } => T::ProtocolVersion,
            Message::KeepaliveRequest { .. } => T::KeepaliveRequest,
            Message::KeepaliveReply { .. } => T::KeepaliveReply,
            Message::KeepaliveOptionsRequest { .. } => T::KeepaliveOptionsRequest,
            Message::KeepaliveOptionsReply { .. } => T::KeepaliveOptionsReply,
        }
    }

    /// Appends the wire form of this message to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        buf.put_u8(self.message_type() as u8);
        match self {
            Message::Disconnect { reason } => {
                buf.put_u32(reason.to_u32());
                buf.put_u16(0);
            }
            Message::ServiceRequest { service } | Message::ServiceAccept { service } => put_string(buf, service),
            Message::UserauthRequest { username, service, method } => {
                put_string(buf, username);
                put_string(buf, service);
                match method {
                    AuthMethod::Password(password) => {
                        put_string(buf, b"password");
                        buf.put_u8(0);
                        put_string(buf, password);
                    }
                    AuthMethod::None => put_string(buf, b"none"),
                    AuthMethod::Other(name) => put_string(buf, name),
                }
            }
            Message::UserauthFailure { methods, partial_success } => {
                put_string(buf, methods);
                buf.put_u16(u16::from(*partial_success) << 8);
            }
            Message::UserauthSuccess | Message::RequestFailure => {}
            Message::GlobalRequest { want_reply, request } => {
                put_string(buf, request.name());
                buf.put_u8(u8::from(*want_reply));
                match request {
                    GlobalRequest::TcpipForward { address, port }
                    | GlobalRequest::CancelTcpipForward { address, port } => {
                        put_string(buf, address);
                        buf.put_u32(*port);
                    }
                    GlobalRequest::UdpSendTo { address, port, originator_address, originator_port, data } => {
                        put_string(buf, address);
                        buf.put_u32(*port);
                        put_string(buf, originator_address);
                        buf.put_u32(*originator_port);
                        put_string(buf, data);
                    }
                    GlobalRequest::Other { .. } => {}
                }
            }
            Message::RequestSuccess { port } => {
                if let Some(port) = port {
                    buf.put_u32(*port);
                }
            }
            Message::ChannelOpen(open) => {
                put_string(buf, open.channel_type.name());
                buf.put_u32(open.sender_channel);
                buf.put_u32(open.initial_window);
                buf.put_u32(open.max_packet);
                put_string(buf, &open.connected_address);
                buf.put_u32(open.connected_port);
                put_string(buf, &open.originator_address);
                buf.put_u32(open.originator_port);
            }
            Message::ChannelOpenConfirmation { recipient_channel, sender_channel, initial_window, max_packet } => {
                buf.put_u32(*recipient_channel);
                buf.put_u32(*sender_channel);
                buf.put_u32(*initial_window);
                buf.put_u32(*max_packet);
            }
            Message::ChannelOpenFailure { recipient_channel, reason } => {
                buf.put_u32(*recipient_channel);
                buf.put_u32(reason.to_u32());
                buf.put_u32(0);
                buf.put_u32(0);
            }
            Message::ChannelWindowAdjust { recipient_channel, bytes_to_add } => {
                buf.put_u32(*recipient_channel);
                buf.put_u32(*bytes_to_add);
            }
            Message::ChannelData { recipient_channel, data } => {
                buf.put_u32(*recipient_channel);
                put_string(buf, data);
            }
            Message::ChannelEof { recipient_channel } | Message::ChannelClose { recipient_channel } => {
                buf.put_u32(*recipient_channel)
            }
            Message::ProtocolVersion { major, minor, trigger_reason, uuid } => {
                buf.put_u32(*major);
                buf.put_u32(*minor);
                buf.put_u32(*trigger_reason);
                buf.put_slice(&uuid.to_bytes_le());
                buf.put_bytes(0, VERSION_RESERVED_LEN);
            }
            Message::KeepaliveRequest { cookie } | Message::KeepaliveReply { cookie } => buf.put_u32(*cookie),
            Message::KeepaliveOptionsRequest { interval_secs, timeout_secs }
            | Message::KeepaliveOptionsReply { interval_secs, timeout_secs } => {
                buf.put_u32(*interval_secs);
                buf.put_u32(*timeout_secs);
            }
        }
    }

    /// The number of bytes [`Message::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        const STR: usize = 4;
        1 + match self {
            Message::Disconnect { .. } => 6,
            Message::ServiceRequest { service } | Message::ServiceAccept { service } => STR + service.len(),
            Message::UserauthRequest { username, service, method } => {
                STR + username.len()
                    + STR
                    + service.len()
                    + match method {
                        AuthMethod::Password(password) => STR + 8 + 1 + STR + password.len(),
                        AuthMethod::None => STR + 4,
                        AuthMethod::Other(name) => STR + name.len(),
                    }
            }
            Message::UserauthFailure { methods, .. } => STR + methods.len() + 2,
            Message::UserauthSuccess | Message::RequestFailure => 0,
            Message::GlobalRequest { request, .. } => {
                STR + request.name().len()
                    + 1
                    + match request {
                        GlobalRequest::TcpipForward { address, .. }
                        | GlobalRequest::CancelTcpipForward { address, .. } => STR + address.len() + 4,
                        GlobalRequest::UdpSendTo { address, originator_address, data, .. } => {
                            STR + address.len() + 4 + STR + originator_address.len() + 4 + STR + data.len()
                        }
                        GlobalRequest::Other { .. } => 0,
                    }
            }
            Message::RequestSuccess { port } => port.map_or(0, |_| 4),
            Message::ChannelOpen(open) => {
                STR + open.channel_type.name().len()
                    + 12
                    + STR
                    + open.connected_address.len()
                    + 4
                    + STR
                    + open.originator_address.len()
                    + 4
            }
            Message::ChannelOpenConfirmation { .. } | Message::ChannelOpenFailure { .. } => 16,
            Message::ChannelWindowAdjust { .. } => 8,
            Message::ChannelData { data, .. } => 4 + STR + data.len(),
            Message::ChannelEof { .. } | Message::ChannelClose { .. } => 4,
            Message::ProtocolVersion { .. } => 12 + 16 + VERSION_RESERVED_LEN,
            Message::KeepaliveRequest { .. } | Message::KeepaliveReply { .. } => 4,
            Message::KeepaliveOptionsRequest { .. } | Message::KeepaliveOptionsReply { .. } => 8,
        }
    }
}

impl GlobalRequest {
    /// The request name on the wire.
    pub fn name(&self) -> &[u8] {
        match self {
            GlobalRequest::TcpipForward { .. } => b"tcpip-forward",
            GlobalRequest::CancelTcpipForward { .. } => b"cancel-tcpip-forward",
            GlobalRequest::UdpSendTo { .. } => b"udp-send-to@amt.intel.com",
            GlobalRequest::Other { name } => name,
        }
    }
}

impl ChannelType {
    /// The channel type name on the wire.
    pub fn name(&self) -> &[u8] {
        match self {
            ChannelType::ForwardedTcpip => b"forwarded-tcpip",
            ChannelType::DirectTcpip => b"direct-tcpip",
            ChannelType::Other(name) => name,
        }
    }

    fn from_name(name: &[u8]) -> Self {
        match name {
            b"forwarded-tcpip" => ChannelType::ForwardedTcpip,
            b"direct-tcpip" => ChannelType::DirectTcpip,
            other => ChannelType::Other(Bytes::copy_from_slice(other)),
        }
    }
}

/// PROTOCOL_VERSION ends with 64 reserved zero bytes (93 bytes in all).
const VERSION_RESERVED_LEN: usize = 64;

fn put_string(buf: &mut BytesMut, s: &[u8]) {
    // Lengths above u32::MAX cannot be produced by the parser and are not sent by this crate.
    buf.put_u32(s.len() as u32);
    buf.put_slice(s);
}

/// Parser-internal error, turned into a [`DecodeError`] once the message type is known.
#[derive(Debug)]
enum ParseError {
    TooLong { field: &'static str, len: usize, max: usize },
    Malformed(&'static str),
}

impl ParseError {
    fn into_decode_error(self, message: MessageType) -> DecodeError {
        match self {
            ParseError::TooLong { field, len, max } => DecodeError::TooLong { field, len, max },
            ParseError::Malformed(detail) => DecodeError::Malformed { message, detail },
        }
    }
}

impl nom::error::ParseError<&[u8]> for ParseError {
    fn from_error_kind(_: &[u8], _: nom::error::ErrorKind) -> Self {
        ParseError::Malformed("unexpected bytes")
    }

    fn append(_: &[u8], _: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

type PResult<'a, T> = nom::IResult<&'a [u8], T, ParseError>;

fn u32_be(input: &[u8]) -> PResult<'_, u32> {
    nom::number::streaming::be_u32(input)
}

fn u8_be(input: &[u8]) -> PResult<'_, u8> {
    nom::number::streaming::u8(input)
}

/// A length-prefixed field of at most `max` bytes. An oversized length fails at once, before the
/// bytes arrive, so that a peer cannot make us buffer a lie.
fn lp_bytes<'a>(input: &'a [u8], field: &'static str, max: usize) -> PResult<'a, &'a [u8]> {
    let (input, len) = u32_be(input)?;
    let len = len as usize;
    if len > max {
        return Err(nom::Err::Failure(ParseError::TooLong { field, len, max }));
    }
    nom::bytes::streaming::take(len).parse(input)
}

fn string<'a>(input: &'a [u8], field: &'static str, limits: &Limits) -> PResult<'a, Bytes> {
    let (input, s) = lp_bytes(input, field, limits.max_string)?;
    Ok((input, Bytes::copy_from_slice(s)))
}

fn boolean(input: &[u8]) -> PResult<'_, bool> {
    let (input, b) = u8_be(input)?;
    Ok((input, b != 0))
}

fn parse_body<'a>(ty: MessageType, input: &'a [u8], limits: &Limits) -> PResult<'a, Message> {
    use MessageType as T;
    Ok(match ty {
        T::Disconnect => {
            let (input, reason) = u32_be(input)?;
            let (input, _reserved) = nom::number::streaming::be_u16(input)?;
            (input, Message::Disconnect { reason: DisconnectReason::from_u32(reason) })
        }
        T::ServiceRequest | T::ServiceAccept => {
            let (input, service) = string(input, "service name", limits)?;
            let message = if ty == T::ServiceRequest {
                Message::ServiceRequest { service }
            } else {
                Message::ServiceAccept { service }
            };
            (input, message)
        }
        T::UserauthRequest => {
            let (input, username) = string(input, "username", limits)?;
            let (input, service) = string(input, "service name", limits)?;
            let (input, method_name) = lp_bytes(input, "method name", limits.max_string)?;
            let (input, method) = match method_name {
                b"password" => {
                    let (input, change) = boolean(input)?;
                    if change {
                        return Err(nom::Err::Failure(ParseError::Malformed("password change is not supported")));
                    }
                    let (input, password) = string(input, "password", limits)?;
                    (input, AuthMethod::Password(password))
                }
                b"none" => (input, AuthMethod::None),
                other => (input, AuthMethod::Other(Bytes::copy_from_slice(other))),
            };
            (input, Message::UserauthRequest { username, service, method })
        }
        T::UserauthFailure => {
            let (input, methods) = string(input, "method list", limits)?;
            let (input, partial_success) = boolean(input)?;
            // Real MPSs write the flag as a u16, the spec as a u8. No message has type 0, so a
            // zero byte right after the flag is the low byte of the u16 form, and any other byte
            // starts the next message. Until that byte arrives we wait, as for REQUEST_SUCCESS:
            // ending the message early would read the second byte of a u16 flag that a read
            // boundary split off as a message of type 0.
            let input = match input.first() {
                None => return Err(nom::Err::Incomplete(nom::Needed::new(1))),
                Some(0) => &input[1..],
                Some(_) => input,
            };
            (input, Message::UserauthFailure { methods, partial_success })
        }
        T::UserauthSuccess => (input, Message::UserauthSuccess),
        T::GlobalRequest => {
            let (input, name) = lp_bytes(input, "request name", limits.max_string)?;
            let (input, want_reply) = boolean(input)?;
            match name {
                b"tcpip-forward" | b"cancel-tcpip-forward" => {
                    let (input, address) = string(input, "bind address", limits)?;
                    let (input, port) = u32_be(input)?;
                    let request = if name == b"tcpip-forward" {
                        GlobalRequest::TcpipForward { address, port }
                    } else {
                        GlobalRequest::CancelTcpipForward { address, port }
                    };
                    (input, Message::GlobalRequest { want_reply, request })
                }
                b"udp-send-to@amt.intel.com" => {
                    let (input, address) = string(input, "address", limits)?;
                    let (input, port) = u32_be(input)?;
                    let (input, originator_address) = string(input, "originator address", limits)?;
                    let (input, originator_port) = u32_be(input)?;
                    let (input, data) = lp_bytes(input, "udp data", limits.max_data)?;
                    let request = GlobalRequest::UdpSendTo {
                        address,
                        port,
                        originator_address,
                        originator_port,
                        data: Bytes::copy_from_slice(data),
                    };
                    (input, Message::GlobalRequest { want_reply, request })
                }
                other => {
                    let request = GlobalRequest::Other { name: Bytes::copy_from_slice(other) };
                    (input, Message::GlobalRequest { want_reply, request })
                }
            }
        }
        T::RequestSuccess => {
            // A reply to tcpip-forward carries the port bound; a reply to anything else carries
            // nothing, and APF has no framing to tell them apart. Ports are below 2^24, so the
            // port's first byte is 0, and no message type is 0: a 0 after the type byte starts a
            // port. With nothing after the type byte yet we wait for the next byte (the one case
            // that can stall is a portless reply that ends the stream; the next keepalive ends it).
            match input.first() {
                None => return Err(nom::Err::Incomplete(nom::Needed::new(1))),
                Some(0) => {
                    let (input, port) = u32_be(input)?;
                    (input, Message::RequestSuccess { port: Some(port) })
                }
                Some(_) => (input, Message::RequestSuccess { port: None }),
            }
        }
        T::RequestFailure => (input, Message::RequestFailure),
        T::ChannelOpen => {
            let (input, type_name) = lp_bytes(input, "channel type", limits.max_string)?;
            let (input, sender_channel) = u32_be(input)?;
            let (input, initial_window) = u32_be(input)?;
            let (input, max_packet) = u32_be(input)?;
            let (input, connected_address) = string(input, "connected address", limits)?;
            let (input, connected_port) = u32_be(input)?;
            let (input, originator_address) = string(input, "originator address", limits)?;
            let (input, originator_port) = u32_be(input)?;
            let open = ChannelOpen {
                channel_type: ChannelType::from_name(type_name),
                sender_channel,
                initial_window,
                max_packet,
                connected_address,
                connected_port,
                originator_address,
                originator_port,
            };
            (input, Message::ChannelOpen(open))
        }
        T::ChannelOpenConfirmation => {
            let (input, recipient_channel) = u32_be(input)?;
            let (input, sender_channel) = u32_be(input)?;
            let (input, initial_window) = u32_be(input)?;
            let (input, max_packet) = u32_be(input)?;
            (input, Message::ChannelOpenConfirmation { recipient_channel, sender_channel, initial_window, max_packet })
        }
        T::ChannelOpenFailure => {
            let (input, recipient_channel) = u32_be(input)?;
            let (input, reason) = u32_be(input)?;
            let (input, _reserved) = u32_be(input)?;
            let (input, _reserved) = u32_be(input)?;
            (input, Message::ChannelOpenFailure { recipient_channel, reason: OpenFailureReason::from_u32(reason) })
        }
        T::ChannelWindowAdjust => {
            let (input, recipient_channel) = u32_be(input)?;
            let (input, bytes_to_add) = u32_be(input)?;
            (input, Message::ChannelWindowAdjust { recipient_channel, bytes_to_add })
        }
        T::ChannelData => {
            let (input, recipient_channel) = u32_be(input)?;
            let (input, data) = lp_bytes(input, "channel data", limits.max_data)?;
            (input, Message::ChannelData { recipient_channel, data: Bytes::copy_from_slice(data) })
        }
        T::ChannelEof | T::ChannelClose => {
            let (input, recipient_channel) = u32_be(input)?;
            let message = if ty == T::ChannelEof {
                Message::ChannelEof { recipient_channel }
            } else {
                Message::ChannelClose { recipient_channel }
            };
            (input, message)
        }
        T::ProtocolVersion => {
            let (input, major) = u32_be(input)?;
            let (input, minor) = u32_be(input)?;
            let (input, trigger_reason) = u32_be(input)?;
            let (input, uuid) = nom::bytes::streaming::take(16usize).parse(input)?;
            let (input, _reserved) = nom::bytes::streaming::take(VERSION_RESERVED_LEN).parse(input)?;
            let mut le = [0u8; 16];
            le.copy_from_slice(uuid);
            (input, Message::ProtocolVersion { major, minor, trigger_reason, uuid: Uuid::from_bytes_le(le) })
        }
        T::KeepaliveRequest | T::KeepaliveReply => {
            let (input, cookie) = u32_be(input)?;
            let message = if ty == T::KeepaliveRequest {
                Message::KeepaliveRequest { cookie }
            } else {
                Message::KeepaliveReply { cookie }
            };
            (input, message)
        }
        T::KeepaliveOptionsRequest | T::KeepaliveOptionsReply => {
            let (input, interval_secs) = u32_be(input)?;
            let (input, timeout_secs) = u32_be(input)?;
            let message = if ty == T::KeepaliveOptionsRequest {
                Message::KeepaliveOptionsRequest { interval_secs, timeout_secs }
            } else {
                Message::KeepaliveOptionsReply { interval_secs, timeout_secs }
            };
            (input, message)
        }
    })
}

#[cfg(test)]
#[path = "apf_test.rs"]
mod tests;
