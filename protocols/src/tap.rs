//! TAP, the Tether agent protocol: what an agent on a PC and the gateway say to each other over the
//! QUIC connection the agent dials (ALPN [`ALPN`], UDP port [`DEFAULT_PORT`]). Types, a streaming
//! decoder and an encoder; no I/O.
//!
//! # What is said
//!
//! - One **control stream**, the first bidirectional stream the agent opens. The agent sends
//!   [`Message::Hello`] first; the gateway answers [`Message::Welcome`], then sends
//!   [`Message::Config`] when it has configuration for the agent. After that, in any order: the
//!   agent's [`Message::Report`]s, each acknowledged with [`Message::Ack`] once it is durable;
//!   [`Message::Message`]s for the PC's user, answered with [`Message::MessageState`] (received,
//!   then read); signed support [`Message::Action`]s, answered with [`Message::ActionResult`];
//!   [`Message::Receipt`] once what the agent said about a message or an action is durable;
//!   [`Message::RemoteHelp`] when the user changes consent; [`Message::Ping`]/[`Message::Pong`]
//!   either way; and [`Message::Close`] to end with a reason.
//! - One **stream per relayed session**, opened by the gateway, starting with
//!   [`Message::ChannelOpen`]. The agent answers [`Message::ChannelAccept`] (after which the stream
//!   carries the session's raw bytes, no longer frames) or [`Message::ChannelRefuse`].
//! - **Enrollment**, on a connection without a client certificate: the agent sends
//!   [`Message::Enroll`] with a one-time token and a CSR, the gateway answers
//!   [`Message::Enrolled`] (or [`Message::Close`] with [`CloseCode::EnrollRefused`]).
//!
//! # What this module does not do
//!
//! No sockets, streams or timers (the gateway and the agent drive QUIC), and no cryptography:
//! [`Message::Config`], [`Message::Message`] and [`Message::Action`] carry a [`Signed`] payload,
//! and [`signed_message`] gives the exact bytes the gateway signs and the agent verifies (Ed25519,
//! in the daemons, with aws-lc-rs). Decode a payload ([`ConfigBody::decode`],
//! [`MessageBody::decode`], [`ActionBody::decode`]) only after its signature checks out.
//!
//! # Framing
//!
//! Every frame is `version: u8` (= [`VERSION`]), `type: u8` ([`MessageType`]), `length: u32` (the
//! body's length), then the body. All integers are big-endian. Inside bodies, a *string* is a `u16`
//! length and that many bytes of UTF-8; a *blob* is a `u32` length and that many bytes; a UUID is
//! its 16 bytes in RFC 4122 order; a flag is one byte, 0 or 1; a list is a `u16` count and that many
//! entries. The layout of each body is documented on its [`Message`] variant.
//!
//! [`decode`] is streaming: it returns `Ok(None)` until the whole frame has arrived, and fails as
//! soon as the header shows a bad version, an unknown type or a length over [`Limits::max_frame`]
//! (with 1, 2 and 6 bytes in). Lengths inside the body are checked against [`Limits`] before their
//! bytes are read. A body must be consumed exactly: bytes after the last field are an error.
//!
//! Unknown codes inside a body (a [`RefuseReason`], a [`CloseCode`]) are decode errors, like an
//! unknown message type: a peer that needs new codes speaks a new [`VERSION`].
//!
//! The encoder never fails: a string longer than a `u16` length allows is cut at a character
//! boundary, and lists longer than a `u16` count are cut; the decoder's limits are smaller than
//! both, so a sender that exceeds them has a bug whatever the encoding does.

use std::ops::{BitOr, BitOrAssign};

use bytes::{BufMut, Bytes, BytesMut};
use nom::Parser;
use uuid::Uuid;

use crate::telemetry::{self, TelemetryError};

/// The protocol version this module speaks (the first byte of every frame).
pub const VERSION: u8 = 1;
/// The ALPN protocol identifier of a TAP connection.
pub const ALPN: &[u8] = b"tether/1";
/// The gateway's default UDP port for TAP.
pub const DEFAULT_PORT: u16 = 4433;
/// Bytes of a frame header: version, type, length.
pub const HEADER_LEN: usize = 6;

/// Default [`Limits::max_frame`]: 256 KiB of body.
pub const DEFAULT_MAX_FRAME: usize = 256 * 1024;
/// Default [`Limits::max_text`]: 512 bytes per string.
pub const DEFAULT_MAX_TEXT: usize = 512;
/// Default [`Limits::max_blob`]: 64 KiB per certificate, CSR, signed payload or action output.
pub const DEFAULT_MAX_BLOB: usize = 64 * 1024;
/// Longest string in a signed payload ([`ConfigBody`], [`MessageBody`]) but the message text.
pub const MAX_PAYLOAD_TEXT: usize = 512;
/// Longest text of a [`MessageBody`].
pub const MAX_MESSAGE_TEXT: usize = 4096;
/// Longest body (script or instructions) of an [`ActionBody`].
pub const MAX_ACTION_BODY: usize = 32 * 1024;
/// Most output bytes an agent sends back in an [`ActionResult`] (the rest is cut and flagged).
pub const MAX_ACTION_OUTPUT: usize = 32 * 1024;
/// Most gateway addresses in a [`ConfigBody`] or [`Message::Enrolled`].
pub const MAX_GATEWAYS: usize = 16;
/// Most bytes of a client's exported history in a [`Handover`].
pub const MAX_EXPORT: usize = 160 * 1024;
/// Largest content item a [`ContentManifest`] may describe: 16 GiB.
pub const MAX_CONTENT_SIZE: u64 = 16 << 30;
/// Longest name of a content item.
pub const MAX_CONTENT_NAME: usize = 64;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of an Ed25519 public key.
pub const SIGNING_KEY_LEN: usize = 32;

/// Size limits the decoder enforces, each as soon as the length field concerned has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest frame body (the header's length field).
    pub max_frame: usize,
    /// Longest string in a frame body.
    pub max_text: usize,
    /// Longest blob (certificate, CSR, signed payload).
    pub max_blob: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_frame: DEFAULT_MAX_FRAME, max_text: DEFAULT_MAX_TEXT, max_blob: DEFAULT_MAX_BLOB }
    }
}

impl Limits {
    /// The longest frame, header included, that [`decode`] accepts under these limits.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame.saturating_add(HEADER_LEN)
    }
}

/// Message type codes (the second byte of every frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    Hello = 1,
    Welcome = 2,
    Report = 3,
    Ack = 4,
    Config = 5,
    Message = 6,
    RemoteHelp = 7,
    ChannelOpen = 8,
    ChannelAccept = 9,
    ChannelRefuse = 10,
    Enroll = 11,
    Enrolled = 12,
    Close = 13,
    Ping = 14,
    Pong = 15,
    Action = 16,
    ActionResult = 17,
    MessageState = 18,
    Receipt = 19,
    SiloKey = 20,
    Move = 21,
    Transfer = 22,
    ContentGet = 23,
    ContentItem = 24,
}

impl MessageType {
    /// The type for a wire code, or `None` for a code this version does not define.
    pub fn from_u8(code: u8) -> Option<Self> {
        use MessageType::*;
        Some(match code {
            1 => Hello,
            2 => Welcome,
            3 => Report,
            4 => Ack,
            5 => Config,
            6 => Message,
            7 => RemoteHelp,
            8 => ChannelOpen,
            9 => ChannelAccept,
            10 => ChannelRefuse,
            11 => Enroll,
            12 => Enrolled,
            13 => Close,
            14 => Ping,
            15 => Pong,
            16 => Action,
            17 => ActionResult,
            18 => MessageState,
            19 => Receipt,
            20 => SiloKey,
            21 => Move,
            22 => Transfer,
            23 => ContentGet,
            24 => ContentItem,
            _ => return None,
        })
    }

    /// The type's name, as errors report it.
    pub fn name(self) -> &'static str {
        use MessageType::*;
        match self {
            Hello => "hello",
            Welcome => "welcome",
            Report => "report",
            Ack => "ack",
            Config => "config",
            Message => "message",
            RemoteHelp => "remote_help",
            ChannelOpen => "channel_open",
            ChannelAccept => "channel_accept",
            ChannelRefuse => "channel_refuse",
            Enroll => "enroll",
            Enrolled => "enrolled",
            Close => "close",
            Ping => "ping",
            Pong => "pong",
            Action => "action",
            ActionResult => "action_result",
            MessageState => "message_state",
            Receipt => "receipt",
            SiloKey => "silo_key",
            Move => "move",
            Transfer => "transfer",
            ContentGet => "content_get",
            ContentItem => "content_item",
        }
    }
}

/// What an agent can do, as a bit set. Bits this version does not name are kept as they came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// Sends telemetry reports.
    pub const TELEMETRY: Self = Self(1);
    /// Runs signed actions.
    pub const ACTIONS: Self = Self(2);
    /// Shows signed messages to the PC's user.
    pub const MESSAGES: Self = Self(4);
    /// Relays sessions (channels) to local ports.
    pub const RELAY: Self = Self(8);

    pub const fn empty() -> Self {
        Self(0)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Capabilities {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for Capabilities {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// Why an agent refuses a relayed channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RefuseReason {
    /// The PC's user has not consented to remote help.
    RemoteHelpDisabled = 1,
    /// The port is not one the agent's configuration allows.
    PortNotAllowed = 2,
    /// Connecting to the local port failed.
    ConnectFailed = 3,
    /// Too many channels already.
    Busy = 4,
}

impl RefuseReason {
    /// The reason for a wire code, or `None` for a code this version does not define.
    pub fn from_u8(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::RemoteHelpDisabled),
            2 => Some(Self::PortNotAllowed),
            3 => Some(Self::ConnectFailed),
            4 => Some(Self::Busy),
            _ => None,
        }
    }
}

/// Why a side closes (the code of [`Message::Close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// Nothing wrong: the side is done.
    Normal = 0,
    /// The peer sent a frame that does not decode, or one out of place.
    BadMessage = 1,
    /// The agent's certificate is missing or not valid.
    Unauthenticated = 2,
    /// The agent's certificate has been revoked.
    Revoked = 3,
    /// The enrollment token is unknown, used or expired.
    EnrollRefused = 4,
    /// The request is refused by policy.
    Refused = 5,
    /// The side has too much to do; try again later.
    Busy = 6,
    /// The peer's [`VERSION`] is not spoken here.
    UnsupportedVersion = 7,
    /// The peer did not answer in time.
    Timeout = 8,
    /// The side is shutting down.
    Shutdown = 9,
}

impl CloseCode {
    /// The code for a wire value, or `None` for a value this version does not define.
    pub fn from_u16(code: u16) -> Option<Self> {
        use CloseCode::*;
        Some(match code {
            0 => Normal,
            1 => BadMessage,
            2 => Unauthenticated,
            3 => Revoked,
            4 => EnrollRefused,
            5 => Refused,
            6 => Busy,
            7 => UnsupportedVersion,
            8 => Timeout,
            9 => Shutdown,
            _ => return None,
        })
    }
}

/// A payload and the gateway's Ed25519 signature over [`signed_message`] of it.
///
/// Wire layout: payload blob, then the 64 signature bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub payload: Bytes,
    pub signature: [u8; SIGNATURE_LEN],
}

/// What a signature is for. Each kind signs under its own prefix, so that a signature over one
/// kind of payload never verifies as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignDomain {
    /// A [`ConfigBody`].
    Config,
    /// A [`MessageBody`].
    Message,
    /// An [`ActionBody`].
    Action,
    /// A root silo's list of revoked certificates, as its maintenance silos pull it (the
    /// gateway's `silo` module; not sent to agents).
    Revocations,
    /// A [`SiloKeyBody`]: the root certifies a maintenance silo's signing key.
    SiloKey,
    /// A [`MoveOrder`]: the root moves a client from one maintenance silo to another.
    Move,
    /// A client's history as the silo it leaves exports it (signed by that silo's key).
    SiloExport,
    /// What a maintenance silo reports to its root (moves it took over, aggregates).
    SiloReport,
    /// A [`ContentManifest`]: the root publishes a content item.
    Content,
    /// A root's portal sends a signed-in person to a maintenance silo's portal (the gateway's
    /// `silo::signin`; not sent to agents).
    PortalSignin,
}

impl SignDomain {
    /// The domain-separation prefix of this kind (it ends with a NUL byte).
    pub fn prefix(self) -> &'static [u8] {
        match self {
            SignDomain::Config => b"tether-config-v1\0",
            SignDomain::Message => b"tether-message-v1\0",
            SignDomain::Action => b"tether-action-v1\0",
            SignDomain::Revocations => b"tether-revocations-v1\0",
            SignDomain::SiloKey => b"tether-silo-key-v1\0",
            SignDomain::Move => b"tether-move-v1\0",
            SignDomain::SiloExport => b"tether-silo-export-v1\0",
            SignDomain::SiloReport => b"tether-silo-report-v1\0",
            SignDomain::Content => b"tether-content-v1\0",
            SignDomain::PortalSignin => b"tether-portal-signin-v1\0",
        }
    }
}

/// The exact bytes signed and verified for `payload` of kind `domain`: the domain's prefix, then
/// the payload.
pub fn signed_message(domain: SignDomain, payload: &[u8]) -> Vec<u8> {
    let prefix = domain.prefix();
    let mut message = Vec::with_capacity(prefix.len() + payload.len());
    message.extend_from_slice(prefix);
    message.extend_from_slice(payload);
    message
}

/// The payload of a [`Message::Config`]: the agent's configuration.
///
/// Layout: issued-at `i64`, heartbeat `u32`, keepalive `u32`, list of gateway strings (at most
/// [`MAX_GATEWAYS`], each at most [`MAX_PAYLOAD_TEXT`] bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigBody {
    /// Unix seconds; an agent ignores a configuration older than the one it has.
    pub issued_at: i64,
    pub heartbeat_secs: u32,
    pub keepalive_secs: u32,
    /// Gateways to dial, as `host:port`.
    pub gateways: Vec<String>,
}

impl ConfigBody {
    /// Appends the payload's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_i64(self.issued_at);
        out.put_u32(self.heartbeat_secs);
        out.put_u32(self.keepalive_secs);
        put_list(out, &self.gateways);
    }

    /// The number of bytes [`ConfigBody::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        16 + list_len(&self.gateways)
    }

    /// Decodes a whole payload (trailing bytes are an error).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        parse_whole(payload, "config payload", |input| {
            let (input, issued_at) = be_i64(input, "config.issued_at")?;
            let (input, heartbeat_secs) = be_u32(input, "config.heartbeat_secs")?;
            let (input, keepalive_secs) = be_u32(input, "config.keepalive_secs")?;
            let (input, gateways) = list(input, "config.gateways", MAX_PAYLOAD_TEXT)?;
            Ok((input, ConfigBody { issued_at, heartbeat_secs, keepalive_secs, gateways }))
        })
    }
}

/// The payload of a [`Message::SiloKey`]: the root says that maintenance silo `silo` signs with
/// `key` until `not_after`.
///
/// Layout: silo string (at most [`MAX_PAYLOAD_TEXT`] bytes), key (32 bytes, Ed25519), issued-at
/// `i64`, not-after `i64` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloKeyBody {
    pub silo: String,
    pub key: [u8; SIGNING_KEY_LEN],
    pub issued_at: i64,
    /// An agent trusts the key no longer than this.
    pub not_after: i64,
}

impl SiloKeyBody {
    /// Appends the payload's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        put_str(out, &self.silo);
        out.put_slice(&self.key);
        out.put_i64(self.issued_at);
        out.put_i64(self.not_after);
    }

    /// The number of bytes [`SiloKeyBody::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        str_len(&self.silo) + SIGNING_KEY_LEN + 16
    }

    /// Decodes a whole payload (trailing bytes are an error).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        parse_whole(payload, "silo key payload", |input| {
            let (input, silo) = string(input, "silo_key.silo", MAX_PAYLOAD_TEXT)?;
            let (input, key) = array(input, "silo_key.key")?;
            let (input, issued_at) = be_i64(input, "silo_key.issued_at")?;
            let (input, not_after) = be_i64(input, "silo_key.not_after")?;
            Ok((input, SiloKeyBody { silo, key, issued_at, not_after }))
        })
    }
}

/// The payload of a [`Message::Move`]'s order: the root moves machine `machine` from silo `from`
/// to silo `to`, whose agent listener is at `location`, with the certificate whose SHA-256 is
/// `cert_sha256`. The silo it goes to initialises the client's storage from it.
///
/// Layout: id UUID, machine UUID, from string, to string, location string (each at most
/// [`MAX_PAYLOAD_TEXT`] bytes), certificate SHA-256 (32 bytes), issued-at `i64` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveOrder {
    /// Names this move (a silo's receipt for the transfer names it too).
    pub id: Uuid,
    pub machine: Uuid,
    pub from: String,
    pub to: String,
    pub location: String,
    pub cert_sha256: [u8; 32],
    pub issued_at: i64,
}

impl MoveOrder {
    /// Appends the payload's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_slice(self.id.as_bytes());
        out.put_slice(self.machine.as_bytes());
        put_str(out, &self.from);
        put_str(out, &self.to);
        put_str(out, &self.location);
        out.put_slice(&self.cert_sha256);
        out.put_i64(self.issued_at);
    }

    /// The number of bytes [`MoveOrder::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        16 + 16 + str_len(&self.from) + str_len(&self.to) + str_len(&self.location) + 32 + 8
    }

    /// Decodes a whole payload (trailing bytes are an error).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        parse_whole(payload, "move order", |input| {
            let (input, id) = uuid(input, "move.id")?;
            let (input, machine) = uuid(input, "move.machine")?;
            let (input, from) = string(input, "move.from", MAX_PAYLOAD_TEXT)?;
            let (input, to) = string(input, "move.to", MAX_PAYLOAD_TEXT)?;
            let (input, location) = string(input, "move.location", MAX_PAYLOAD_TEXT)?;
            let (input, cert_sha256) = array(input, "move.cert_sha256")?;
            let (input, issued_at) = be_i64(input, "move.issued_at")?;
            Ok((input, MoveOrder { id, machine, from, to, location, cert_sha256, issued_at }))
        })
    }
}

/// What a content item is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentKind {
    /// Antivirus signatures or other detection data an agent installs.
    Signatures = 1,
    /// A script an agent or a technician runs.
    Script = 2,
    /// A bootable image a technician serves to a PC over IDE-R.
    RescueImage = 3,
}

impl ContentKind {
    /// The kind for a wire code, or `None` for a code this version does not define.
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            1 => ContentKind::Signatures,
            2 => ContentKind::Script,
            3 => ContentKind::RescueImage,
            _ => return None,
        })
    }

    /// The kind's name, as the CLI and the API write it.
    pub fn name(self) -> &'static str {
        match self {
            ContentKind::Signatures => "signatures",
            ContentKind::Script => "script",
            ContentKind::RescueImage => "rescue-image",
        }
    }

    /// The kind a name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        [ContentKind::Signatures, ContentKind::Script, ContentKind::RescueImage].into_iter().find(|k| k.name() == name)
    }
}

/// Whether `name` may name a content item: 1 to [`MAX_CONTENT_NAME`] bytes of lower-case ASCII
/// letters, digits, `.`, `_` and `-`, starting with a letter or digit (so it is a safe file name
/// and URL path segment everywhere).
pub fn is_content_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_CONTENT_NAME
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// A content item the root publishes, signed with its key ([`SignDomain::Content`]): whoever holds
/// the bytes (a gateway's cache, an agent, a technician) checks them against it before use.
///
/// Layout: name string (see [`is_content_name`]), kind `u8` ([`ContentKind`]), published-at `i64`
/// (Unix seconds; a newer manifest of the same name replaces an older one), size `u64` (at most
/// [`MAX_CONTENT_SIZE`]), SHA-256 of the bytes (32 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentManifest {
    pub name: String,
    pub kind: ContentKind,
    pub published_at: i64,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl ContentManifest {
    /// Appends the payload's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        put_str(out, &self.name);
        out.put_u8(self.kind as u8);
        out.put_i64(self.published_at);
        out.put_u64(self.size);
        out.put_slice(&self.sha256);
    }

    /// The number of bytes [`ContentManifest::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        str_len(&self.name) + 1 + 8 + 8 + 32
    }

    /// Decodes a whole payload (trailing bytes are an error). The name must pass
    /// [`is_content_name`] and the size [`MAX_CONTENT_SIZE`].
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        parse_whole(payload, "content manifest", |input| {
            let (input, name) = content_name(input, "content.name")?;
            let (input, code) = byte(input, "content.kind")?;
            let kind = ContentKind::from_u8(code)
                .ok_or_else(|| fail(DecodeError::UnknownCode { field: "content.kind", value: u16::from(code) }))?;
            let (input, published_at) = be_i64(input, "content.published_at")?;
            let (input, size) = be_u64(input, "content.size")?;
            if size > MAX_CONTENT_SIZE {
                return Err(fail(DecodeError::TooLarge { field: "content.size", size, max: MAX_CONTENT_SIZE }));
            }
            let (input, sha256) = array(input, "content.sha256")?;
            Ok((input, ContentManifest { name, kind, published_at, size, sha256 }))
        })
    }
}

/// What a client carries from the silo it leaves to the silo it goes to (the client is the hub
/// between silos: no exchange spans two of them). The same three parts travel in
/// [`Message::Move`] and [`Message::Transfer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// A [`MoveOrder`], signed by the root ([`SignDomain::Move`]).
    pub order: Signed,
    /// The leaving silo's [`SiloKeyBody`], signed by the root ([`SignDomain::SiloKey`]).
    pub silo_key: Signed,
    /// The client's history, signed by the leaving silo's key ([`SignDomain::SiloExport`]); at
    /// most [`MAX_EXPORT`] bytes. Its encoding is the gateways' (the agent only carries it).
    pub export: Signed,
}

impl Handover {
    fn encode(&self, out: &mut BytesMut) {
        for signed in [&self.order, &self.silo_key, &self.export] {
            put_blob(out, &signed.payload);
            out.put_slice(&signed.signature);
        }
    }

    fn encoded_len(&self) -> usize {
        [&self.order, &self.silo_key, &self.export].iter().map(|s| blob_len(&s.payload) + SIGNATURE_LEN).sum()
    }

    fn decode<'a>(input: &'a [u8], limits: &Limits) -> PResult<'a, Handover> {
        let (input, order) = signed(input, "handover.order", "handover.order_signature", limits)?;
        let (input, silo_key) = signed(input, "handover.silo_key", "handover.silo_key_signature", limits)?;
        let (input, export) = blob(input, "handover.export", MAX_EXPORT)?;
        let (input, signature) = array(input, "handover.export_signature")?;
        let export = Signed { payload: Bytes::copy_from_slice(export), signature };
        Ok((input, Handover { order, silo_key, export }))
    }
}

/// The payload of a [`Message::Message`]: a text for the PC's user.
///
/// Layout: id UUID, issued-at `i64`, expires-at `i64`, target UUID, from string (at most
/// [`MAX_PAYLOAD_TEXT`] bytes), text string (at most [`MAX_MESSAGE_TEXT`] bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody {
    /// Identifies the message (an agent shows a message once).
    pub id: Uuid,
    pub issued_at: i64,
    /// An agent does not show a message after this time.
    pub expires_at: i64,
    /// The agent (PC) the message is for; an agent ignores a message for another.
    pub target: Uuid,
    /// Who sent it, as shown to the user.
    pub from: String,
    pub text: String,
}

impl MessageBody {
    /// Appends the payload's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_slice(self.id.as_bytes());
        out.put_i64(self.issued_at);
        out.put_i64(self.expires_at);
        out.put_slice(self.target.as_bytes());
        put_str(out, &self.from);
        put_str(out, &self.text);
    }

    /// The number of bytes [`MessageBody::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        16 + 8 + 8 + 16 + str_len(&self.from) + str_len(&self.text)
    }

    /// Decodes a whole payload (trailing bytes are an error).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        parse_whole(payload, "message payload", |input| {
            let (input, id) = uuid(input, "message.id")?;
            let (input, issued_at) = be_i64(input, "message.issued_at")?;
            let (input, expires_at) = be_i64(input, "message.expires_at")?;
            let (input, target) = uuid(input, "message.target")?;
            let (input, from) = string(input, "message.from", MAX_PAYLOAD_TEXT)?;
            let (input, text) = string(input, "message.text", MAX_MESSAGE_TEXT)?;
            Ok((input, MessageBody { id, issued_at, expires_at, target, from, text }))
        })
    }
}

/// What a support action asks of the PC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ActionKind {
    /// A script the agent runs (`/bin/sh` on Linux), with a timeout, in a clean environment.
    Script = 1,
    /// Instructions shown to the PC's user.
    Instructions = 2,
}

impl ActionKind {
    /// The kind for a wire code, or `None` for a code this version does not define.
    pub fn from_u8(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Script),
            2 => Some(Self::Instructions),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Script => "script",
            Self::Instructions => "instructions",
        }
    }
}

/// The payload of a [`Message::Action`]: a support action for one PC, signed by the gateway.
///
/// Layout: id UUID, target UUID, kind `u8` ([`ActionKind`]), issued-at `i64`, expires-at `i64`,
/// timeout `u32` (seconds), issued-by string (at most [`MAX_PAYLOAD_TEXT`] bytes), then the body as
/// a `u32` length and that many bytes of UTF-8 (at most [`MAX_ACTION_BODY`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionBody {
    /// Identifies the action: an agent runs an action once (replays are refused).
    pub id: Uuid,
    /// The PC the action is for; an agent refuses an action for another.
    pub target: Uuid,
    pub kind: ActionKind,
    /// Unix seconds.
    pub issued_at: i64,
    /// An agent refuses the action after this time (Unix seconds).
    pub expires_at: i64,
    /// How long a script may run before it is killed.
    pub timeout_secs: u32,
    /// The user who issued it, as the gateway knows them (shown to the PC's user, recorded).
    pub issued_by: String,
    /// The script, or the instructions.
    pub body: String,
}

impl ActionBody {
    /// Appends the payload's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_slice(self.id.as_bytes());
        out.put_slice(self.target.as_bytes());
        out.put_u8(self.kind as u8);
        out.put_i64(self.issued_at);
        out.put_i64(self.expires_at);
        out.put_u32(self.timeout_secs);
        put_str(out, &self.issued_by);
        put_blob(out, self.body.as_bytes());
    }

    /// The number of bytes [`ActionBody::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        16 + 16 + 1 + 8 + 8 + 4 + str_len(&self.issued_by) + blob_len(self.body.as_bytes())
    }

    /// Decodes a whole payload (trailing bytes are an error).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        parse_whole(payload, "action payload", |input| {
            let (input, id) = uuid(input, "action.id")?;
            let (input, target) = uuid(input, "action.target")?;
            let (input, code) = byte(input, "action.kind")?;
            let kind = ActionKind::from_u8(code)
                .ok_or_else(|| fail(DecodeError::UnknownCode { field: "action.kind", value: u16::from(code) }))?;
            let (input, issued_at) = be_i64(input, "action.issued_at")?;
            let (input, expires_at) = be_i64(input, "action.expires_at")?;
            let (input, timeout_secs) = be_u32(input, "action.timeout_secs")?;
            let (input, issued_by) = string(input, "action.issued_by", MAX_PAYLOAD_TEXT)?;
            let (input, body) = blob(input, "action.body", MAX_ACTION_BODY)?;
            let body = std::str::from_utf8(body).map_err(|_| fail(DecodeError::BadUtf8 { field: "action.body" }))?;
            let body = body.to_owned();
            Ok((input, ActionBody { id, target, kind, issued_at, expires_at, timeout_secs, issued_by, body }))
        })
    }
}

/// What became of a support action on the PC (the status of an [`ActionResult`]). Codes from 16
/// up are refusals: the action did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ActionStatus {
    /// The script ran to its end; the exit code says how it went.
    Completed = 1,
    /// The script ran past its timeout and was killed.
    TimedOut = 2,
    /// The script could not be started.
    Failed = 3,
    /// The instructions were shown to the PC's user.
    Shown = 4,
    /// The signature does not verify with the key pinned at enrollment.
    BadSignature = 16,
    /// The action is for another PC.
    WrongTarget = 17,
    /// The action's expiry has passed.
    Expired = 18,
    /// The action ran here before.
    Replayed = 19,
    /// The PC's user has turned remote help off.
    RemoteHelpDisabled = 20,
    /// The PC's local policy does not allow this kind of action.
    NotAllowed = 21,
    /// The signed payload does not decode.
    Malformed = 22,
    /// The agent has too many actions waiting.
    Busy = 23,
}

impl ActionStatus {
    /// The status for a wire code, or `None` for a code this version does not define.
    pub fn from_u8(code: u8) -> Option<Self> {
        use ActionStatus::*;
        Some(match code {
            1 => Completed,
            2 => TimedOut,
            3 => Failed,
            4 => Shown,
            16 => BadSignature,
            17 => WrongTarget,
            18 => Expired,
            19 => Replayed,
            20 => RemoteHelpDisabled,
            21 => NotAllowed,
            22 => Malformed,
            23 => Busy,
            _ => return None,
        })
    }

    /// Whether the agent refused the action (it did not run).
    pub fn is_refusal(self) -> bool {
        self as u8 >= 16
    }

    /// A stable name (API, store, logs).
    pub fn as_str(self) -> &'static str {
        use ActionStatus::*;
        match self {
            Completed => "completed",
            TimedOut => "timed_out",
            Failed => "failed",
            Shown => "shown",
            BadSignature => "refused_bad_signature",
            WrongTarget => "refused_wrong_target",
            Expired => "refused_expired",
            Replayed => "refused_replayed",
            RemoteHelpDisabled => "refused_remote_help_off",
            NotAllowed => "refused_by_local_policy",
            Malformed => "refused_malformed",
            Busy => "refused_busy",
        }
    }
}

/// Agent → gateway: what became of an action ([`Message::ActionResult`]).
///
/// Layout: id UUID, status `u8` ([`ActionStatus`]), exit code `i32`, duration `u32`
/// (milliseconds), a flag and then, when set, the sequence `u64` of the fresh report taken after
/// the action, text string (why it was refused or failed), output blob (at most
/// [`Limits::max_blob`]), output-truncated flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionResult {
    /// The action's id (nil when a payload that does not decode was refused).
    pub id: Uuid,
    pub status: ActionStatus,
    /// The script's exit code (-1 when killed by a signal or not run).
    pub exit_code: i32,
    pub duration_ms: u32,
    /// The report taken after the action, sent just before this result.
    pub report_seq: Option<u64>,
    /// Why the action was refused or failed, for people.
    pub text: String,
    /// What the script wrote (stdout, then stderr), at most [`MAX_ACTION_OUTPUT`] bytes.
    pub output: Bytes,
    /// Output beyond [`MAX_ACTION_OUTPUT`] was cut.
    pub output_truncated: bool,
}

/// One TAP message. Each variant's doc gives its direction and its body's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Agent → gateway, first on the control stream. Body: uuid, agent version string, hostname
    /// string, OS string, capabilities `u32`, remote-help flag.
    Hello {
        uuid: Uuid,
        agent_version: String,
        hostname: String,
        os: String,
        capabilities: Capabilities,
        /// Whether the PC's user consents to remote help (relayed sessions).
        remote_help: bool,
    },
    /// Gateway → agent, the answer to Hello. Body: server time `i64` (Unix seconds), heartbeat `u32`.
    Welcome { server_time: i64, heartbeat_secs: u32 },
    /// Agent → gateway. Body: seq `u64`, taken-at `i64`, then a `u32` length and the report in the
    /// [`telemetry`] encoding.
    Report { seq: u64, taken_at: i64, report: telemetry::Report },
    /// Gateway → agent, once the report `seq` is durable. Body: seq `u64`.
    Ack { seq: u64 },
    /// Gateway → agent. Body: a [`Signed`] [`ConfigBody`] ([`SignDomain::Config`]).
    Config(Signed),
    /// Gateway → agent, a message for the PC's user. Body: a [`Signed`] [`MessageBody`]
    /// ([`SignDomain::Message`]).
    Message(Signed),
    /// Agent → gateway when the PC's user changes consent. Body: a flag.
    RemoteHelp { enabled: bool },
    /// Gateway → agent, first frame of a relayed session's stream. Body: channel `u32`, port `u16`,
    /// requested-by string (who asked, as shown to the user).
    ChannelOpen { channel: u32, port: u16, requested_by: String },
    /// Agent → gateway: the channel is connected; raw bytes follow on the stream. Body: channel `u32`.
    ChannelAccept { channel: u32 },
    /// Agent → gateway. Body: channel `u32`, reason `u8`, text string.
    ChannelRefuse { channel: u32, reason: RefuseReason, text: String },
    /// Agent → gateway on a connection without a client certificate. Body: token string, uuid,
    /// hostname string, CSR blob (DER).
    Enroll { token: String, uuid: Uuid, hostname: String, csr_der: Bytes },
    /// Gateway → agent. Body: certificate blob (DER), CA certificate blob (DER), the gateway's
    /// 32-byte Ed25519 public key for signed payloads, list of gateway strings (`host:port`, at
    /// most [`MAX_GATEWAYS`]).
    Enrolled { cert_der: Bytes, ca_der: Bytes, signing_key: [u8; SIGNING_KEY_LEN], gateways: Vec<String> },
    /// Either way, the last frame before closing. Body: code `u16`, text string.
    Close { code: CloseCode, text: String },
    /// Either way. Body: nonce `u64`.
    Ping { nonce: u64 },
    /// The answer to Ping, with its nonce. Body: nonce `u64`.
    Pong { nonce: u64 },
    /// Gateway → agent, a support action. Body: a [`Signed`] [`ActionBody`]
    /// ([`SignDomain::Action`]).
    Action(Signed),
    /// Agent → gateway, what became of an action. Body: an [`ActionResult`].
    ActionResult(ActionResult),
    /// Agent → gateway: a message was received (kept and shown), or read by the PC's user. Body:
    /// message id UUID, read flag.
    MessageState { id: Uuid, read: bool },
    /// Gateway → agent: what the agent sent about `id` (an action's result, a message's state) is
    /// durable; the agent stops sending it again. Body: id UUID.
    Receipt { id: Uuid },
    /// Maintenance silo → agent, before its [`Message::Config`]: the root's certification of the
    /// key the silo signs its configuration and messages with. Payload: [`SiloKeyBody`], signed
    /// by the root's key ([`SignDomain::SiloKey`]). Body: as [`Message::Config`].
    SiloKey(Signed),
    /// Maintenance silo → agent: the root moved this machine to another silo. Body: the new
    /// certificate blob (DER, for the machine's own key, naming the new silo), then a
    /// [`Handover`]. The agent checks the order's signature with the root's key it pinned, keeps
    /// the certificate and the handover, and dials the new silo.
    Move { cert_der: Bytes, handover: Handover },
    /// Agent → the silo it moved to, after [`Message::Welcome`]: the handover it carries. The
    /// silo answers [`Message::Receipt`] with the order's id once the history is imported.
    /// Body: a [`Handover`].
    Transfer(Handover),
    /// Agent → gateway, the first frame of a connection that fetches a content item instead of a
    /// session (with the machine's certificate, as for [`Message::Hello`]). Body: uuid, name
    /// string (see [`is_content_name`]), offset `u64` (where a resumed download goes on).
    ContentGet { uuid: Uuid, name: String, offset: u64 },
    /// Gateway → agent, the answer to [`Message::ContentGet`]: the root's signed
    /// [`ContentManifest`] ([`SignDomain::Content`]). The item's bytes from the offset asked to its
    /// end follow on the stream, raw; then the stream ends. Body: as [`Message::Config`].
    ContentItem(Signed),
}

/// Why bytes could not be decoded. Every variant is the peer's fault; [`DecodeError::close_code`]
/// says how to close over it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported TAP version {0} (this side speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown TAP message type {0}")]
    UnknownType(u8),
    #[error("{field} is {len} bytes, over the limit of {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("{field} has {count} entries, over the limit of {max}")]
    TooMany { field: &'static str, count: usize, max: usize },
    #[error("{field} is truncated")]
    Truncated { field: &'static str },
    #[error("{what} has {extra} bytes after its last field")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("{field} is not UTF-8")]
    BadUtf8 { field: &'static str },
    #[error("{field} is {value}, which is not a valid code for it")]
    UnknownCode { field: &'static str, value: u16 },
    #[error("{field} is {size}, over the limit of {max}")]
    TooLarge { field: &'static str, size: u64, max: u64 },
    #[error("{field} is not a content name (lower-case letters, digits, '.', '_' and '-')")]
    BadName { field: &'static str },
    #[error("report: {0}")]
    Telemetry(#[from] TelemetryError),
}

impl DecodeError {
    /// The code to close with after this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            DecodeError::UnsupportedVersion(_) => CloseCode::UnsupportedVersion,
            _ => CloseCode::BadMessage,
        }
    }
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(Some((message, consumed)))` with the number of bytes the frame took, `Ok(None)`
/// while `buf` holds only part of a frame (read more and call again), or an error when the bytes
/// can never become a valid frame: a bad version (known with 1 byte in), an unknown type (2 bytes),
/// a length over [`Limits::max_frame`] (6 bytes), or a malformed body.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Message, usize)>, DecodeError> {
    match frame(buf, limits) {
        Ok((rest, message)) => Ok(Some((message, buf.len() - rest.len()))),
        Err(nom::Err::Incomplete(_)) => Ok(None),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e.into_decode_error("frame")),
    }
}

/// One frame, streaming: the header's fields are checked as each arrives, and the body is taken
/// whole once its length is known to be within [`Limits::max_frame`].
fn frame<'a>(input: &'a [u8], limits: &Limits) -> PResult<'a, Message> {
    let (input, version) = nom::number::streaming::u8(input)?;
    if version != VERSION {
        return Err(fail(DecodeError::UnsupportedVersion(version)));
    }
    let (input, code) = nom::number::streaming::u8(input)?;
    let ty = MessageType::from_u8(code).ok_or_else(|| fail(DecodeError::UnknownType(code)))?;
    let (input, len) = nom::number::streaming::be_u32(input)?;
    // A length that does not fit a usize is over any limit.
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > limits.max_frame {
        return Err(fail(DecodeError::TooLong { field: "frame", len, max: limits.max_frame }));
    }
    let (input, body) = nom::bytes::streaming::take(len).parse(input)?;
    // The body is complete: whatever goes wrong inside it is a hard error, never Incomplete.
    let message = parse_whole(body, ty.name(), |body| body_of(ty, body, limits)).map_err(fail)?;
    Ok((input, message))
}

fn body_of<'a>(ty: MessageType, input: &'a [u8], limits: &Limits) -> PResult<'a, Message> {
    use MessageType as T;
    let text = limits.max_text;
    Ok(match ty {
        T::Hello => {
            let (input, uuid) = uuid(input, "hello.uuid")?;
            let (input, agent_version) = string(input, "hello.agent_version", text)?;
            let (input, hostname) = string(input, "hello.hostname", text)?;
            let (input, os) = string(input, "hello.os", text)?;
            let (input, capabilities) = be_u32(input, "hello.capabilities")?;
            let (input, remote_help) = flag(input, "hello.remote_help")?;
            let capabilities = Capabilities(capabilities);
            (input, Message::Hello { uuid, agent_version, hostname, os, capabilities, remote_help })
        }
        T::Welcome => {
            let (input, server_time) = be_i64(input, "welcome.server_time")?;
            let (input, heartbeat_secs) = be_u32(input, "welcome.heartbeat_secs")?;
            (input, Message::Welcome { server_time, heartbeat_secs })
        }
        T::Report => {
            let (input, seq) = be_u64(input, "report.seq")?;
            let (input, taken_at) = be_i64(input, "report.taken_at")?;
            // The frame's length already bounds the nested report.
            let (input, nested) = blob(input, "report.telemetry", limits.max_frame)?;
            let report = telemetry::decode_report(nested).map_err(|e| fail(DecodeError::Telemetry(e)))?;
            (input, Message::Report { seq, taken_at, report })
        }
        T::Ack => {
            let (input, seq) = be_u64(input, "ack.seq")?;
            (input, Message::Ack { seq })
        }
        T::Config => {
            let (input, signed) = signed(input, "config.payload", "config.signature", limits)?;
            (input, Message::Config(signed))
        }
        T::SiloKey => {
            let (input, signed) = signed(input, "silo_key.payload", "silo_key.signature", limits)?;
            (input, Message::SiloKey(signed))
        }
        T::Message => {
            let (input, signed) = signed(input, "message.payload", "message.signature", limits)?;
            (input, Message::Message(signed))
        }
        T::Move => {
            let (input, cert_der) = blob(input, "move.cert_der", limits.max_blob)?;
            let (input, handover) = Handover::decode(input, limits)?;
            (input, Message::Move { cert_der: Bytes::copy_from_slice(cert_der), handover })
        }
        T::Transfer => {
            let (input, handover) = Handover::decode(input, limits)?;
            (input, Message::Transfer(handover))
        }
        T::ContentGet => {
            let (input, uuid) = uuid(input, "content_get.uuid")?;
            let (input, name) = content_name(input, "content_get.name")?;
            let (input, offset) = be_u64(input, "content_get.offset")?;
            (input, Message::ContentGet { uuid, name, offset })
        }
        T::ContentItem => {
            let (input, signed) = signed(input, "content_item.payload", "content_item.signature", limits)?;
            (input, Message::ContentItem(signed))
        }
        T::RemoteHelp => {
            let (input, enabled) = flag(input, "remote_help.enabled")?;
            (input, Message::RemoteHelp { enabled })
        }
        T::ChannelOpen => {
            let (input, channel) = be_u32(input, "channel_open.channel")?;
            let (input, port) = be_u16(input, "channel_open.port")?;
            let (input, requested_by) = string(input, "channel_open.requested_by", text)?;
            (input, Message::ChannelOpen { channel, port, requested_by })
        }
        T::ChannelAccept => {
            let (input, channel) = be_u32(input, "channel_accept.channel")?;
            (input, Message::ChannelAccept { channel })
        }
        T::ChannelRefuse => {
            let (input, channel) = be_u32(input, "channel_refuse.channel")?;
            let (input, code) = byte(input, "channel_refuse.reason")?;
            let reason = RefuseReason::from_u8(code).ok_or_else(|| {
                fail(DecodeError::UnknownCode { field: "channel_refuse.reason", value: u16::from(code) })
            })?;
            let (input, text) = string(input, "channel_refuse.text", text)?;
            (input, Message::ChannelRefuse { channel, reason, text })
        }
        T::Enroll => {
            let (input, token) = string(input, "enroll.token", text)?;
            let (input, uuid) = uuid(input, "enroll.uuid")?;
            let (input, hostname) = string(input, "enroll.hostname", text)?;
            let (input, csr_der) = blob(input, "enroll.csr_der", limits.max_blob)?;
            (input, Message::Enroll { token, uuid, hostname, csr_der: Bytes::copy_from_slice(csr_der) })
        }
        T::Enrolled => {
            let (input, cert_der) = blob(input, "enrolled.cert_der", limits.max_blob)?;
            let (input, ca_der) = blob(input, "enrolled.ca_der", limits.max_blob)?;
            let (input, signing_key) = array(input, "enrolled.signing_key")?;
            let (input, gateways) = list(input, "enrolled.gateways", text)?;
            let cert_der = Bytes::copy_from_slice(cert_der);
            let ca_der = Bytes::copy_from_slice(ca_der);
            (input, Message::Enrolled { cert_der, ca_der, signing_key, gateways })
        }
        T::Close => {
            let (input, value) = be_u16(input, "close.code")?;
            let code = CloseCode::from_u16(value)
                .ok_or_else(|| fail(DecodeError::UnknownCode { field: "close.code", value }))?;
            let (input, text) = string(input, "close.text", text)?;
            (input, Message::Close { code, text })
        }
        T::Ping => {
            let (input, nonce) = be_u64(input, "ping.nonce")?;
            (input, Message::Ping { nonce })
        }
        T::Pong => {
            let (input, nonce) = be_u64(input, "pong.nonce")?;
            (input, Message::Pong { nonce })
        }
        T::Action => {
            let (input, signed) = signed(input, "action.payload", "action.signature", limits)?;
            (input, Message::Action(signed))
        }
        T::ActionResult => {
            let (input, id) = uuid(input, "action_result.id")?;
            let (input, code) = byte(input, "action_result.status")?;
            let status = ActionStatus::from_u8(code).ok_or_else(|| {
                fail(DecodeError::UnknownCode { field: "action_result.status", value: u16::from(code) })
            })?;
            let (input, exit_code) = named(input, "action_result.exit_code", nom::number::complete::be_i32)?;
            let (input, duration_ms) = be_u32(input, "action_result.duration_ms")?;
            let (input, has_report) = flag(input, "action_result.report")?;
            let (input, report_seq) = if has_report {
                let (input, seq) = be_u64(input, "action_result.report_seq")?;
                (input, Some(seq))
            } else {
                (input, None)
            };
            let (input, text) = string(input, "action_result.text", text)?;
            let (input, output) = blob(input, "action_result.output", limits.max_blob)?;
            let (input, output_truncated) = flag(input, "action_result.output_truncated")?;
            let output = Bytes::copy_from_slice(output);
            let result =
                ActionResult { id, status, exit_code, duration_ms, report_seq, text, output, output_truncated };
            (input, Message::ActionResult(result))
        }
        T::MessageState => {
            let (input, id) = uuid(input, "message_state.id")?;
            let (input, read) = flag(input, "message_state.read")?;
            (input, Message::MessageState { id, read })
        }
        T::Receipt => {
            let (input, id) = uuid(input, "receipt.id")?;
            (input, Message::Receipt { id })
        }
    })
}

impl Message {
    /// The type byte this message is sent with.
    pub fn message_type(&self) -> MessageType {
        use MessageType as T;
        match self {
            Message::Hello { .. } => T::Hello,
            Message::Welcome { .. } => T::Welcome,
            Message::Report { .. } => T::Report,
            Message::Ack { .. } => T::Ack,
            Message::Config(_) => T::Config,
            Message::Message(_) => T::Message,
            Message::RemoteHelp { .. } => T::RemoteHelp,
            Message::ChannelOpen { .. } => T::ChannelOpen,
            Message::ChannelAccept { .. } => T::ChannelAccept,
            Message::ChannelRefuse { .. } => T::ChannelRefuse,
            Message::Enroll { .. } => T::Enroll,
            Message::Enrolled { .. } => T::Enrolled,
            Message::Close { .. } => T::Close,
            Message::Ping { .. } => T::Ping,
            Message::Pong { .. } => T::Pong,
            Message::Action(_) => T::Action,
            Message::ActionResult(_) => T::ActionResult,
            Message::MessageState { .. } => T::MessageState,
            Message::Receipt { .. } => T::Receipt,
            Message::SiloKey(_) => T::SiloKey,
            Message::Move { .. } => T::Move,
            Message::Transfer(_) => T::Transfer,
            Message::ContentGet { .. } => T::ContentGet,
            Message::ContentItem(_) => T::ContentItem,
        }
    }

    /// Appends the frame of this message (header and body) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_u8(VERSION);
        out.put_u8(self.message_type() as u8);
        let len_at = out.len();
        out.put_u32(0);
        match self {
            Message::Hello { uuid, agent_version, hostname, os, capabilities, remote_help } => {
                out.put_slice(uuid.as_bytes());
                put_str(out, agent_version);
                put_str(out, hostname);
                put_str(out, os);
                out.put_u32(capabilities.bits());
                put_flag(out, *remote_help);
            }
            Message::Welcome { server_time, heartbeat_secs } => {
                out.put_i64(*server_time);
                out.put_u32(*heartbeat_secs);
            }
            Message::Report { seq, taken_at, report } => {
                out.put_u64(*seq);
                out.put_i64(*taken_at);
                let nested_at = out.len();
                out.put_u32(0);
                report.encode(out);
                patch_u32(out, nested_at);
            }
            Message::Ack { seq } => out.put_u64(*seq),
            Message::Config(signed)
            | Message::Message(signed)
            | Message::Action(signed)
            | Message::SiloKey(signed)
            | Message::ContentItem(signed) => {
                put_blob(out, &signed.payload);
                out.put_slice(&signed.signature);
            }
            Message::RemoteHelp { enabled } => put_flag(out, *enabled),
            Message::ChannelOpen { channel, port, requested_by } => {
                out.put_u32(*channel);
                out.put_u16(*port);
                put_str(out, requested_by);
            }
            Message::ChannelAccept { channel } => out.put_u32(*channel),
            Message::ChannelRefuse { channel, reason, text } => {
                out.put_u32(*channel);
                out.put_u8(*reason as u8);
                put_str(out, text);
            }
            Message::Enroll { token, uuid, hostname, csr_der } => {
                put_str(out, token);
                out.put_slice(uuid.as_bytes());
                put_str(out, hostname);
                put_blob(out, csr_der);
            }
            Message::Enrolled { cert_der, ca_der, signing_key, gateways } => {
                put_blob(out, cert_der);
                put_blob(out, ca_der);
                out.put_slice(signing_key);
                put_list(out, gateways);
            }
            Message::Close { code, text } => {
                out.put_u16(*code as u16);
                put_str(out, text);
            }
            Message::Ping { nonce } | Message::Pong { nonce } => out.put_u64(*nonce),
            Message::ActionResult(result) => {
                out.put_slice(result.id.as_bytes());
                out.put_u8(result.status as u8);
                out.put_i32(result.exit_code);
                out.put_u32(result.duration_ms);
                put_flag(out, result.report_seq.is_some());
                if let Some(seq) = result.report_seq {
                    out.put_u64(seq);
                }
                put_str(out, &result.text);
                put_blob(out, &result.output);
                put_flag(out, result.output_truncated);
            }
            Message::MessageState { id, read } => {
                out.put_slice(id.as_bytes());
                put_flag(out, *read);
            }
            Message::Receipt { id } => out.put_slice(id.as_bytes()),
            Message::Move { cert_der, handover } => {
                put_blob(out, cert_der);
                handover.encode(out);
            }
            Message::Transfer(handover) => handover.encode(out),
            Message::ContentGet { uuid, name, offset } => {
                out.put_slice(uuid.as_bytes());
                put_str(out, name);
                out.put_u64(*offset);
            }
        }
        patch_u32(out, len_at);
    }

    /// The number of bytes [`Message::encode`] writes, header included.
    pub fn encoded_len(&self) -> usize {
        const UUID: usize = 16;
        HEADER_LEN
            + match self {
                Message::Hello { agent_version, hostname, os, .. } => {
                    UUID + str_len(agent_version) + str_len(hostname) + str_len(os) + 4 + 1
                }
                Message::Welcome { .. } => 12,
                Message::Report { report, .. } => 16 + 4 + report.encoded_len(),
                Message::Ack { .. } | Message::Ping { .. } | Message::Pong { .. } => 8,
                Message::Config(signed)
                | Message::Message(signed)
                | Message::Action(signed)
                | Message::SiloKey(signed)
                | Message::ContentItem(signed) => blob_len(&signed.payload) + SIGNATURE_LEN,
                Message::RemoteHelp { .. } => 1,
                Message::ChannelOpen { requested_by, .. } => 4 + 2 + str_len(requested_by),
                Message::ChannelAccept { .. } => 4,
                Message::ChannelRefuse { text, .. } => 4 + 1 + str_len(text),
                Message::Enroll { token, hostname, csr_der, .. } => {
                    str_len(token) + UUID + str_len(hostname) + blob_len(csr_der)
                }
                Message::Enrolled { cert_der, ca_der, gateways, .. } => {
                    blob_len(cert_der) + blob_len(ca_der) + SIGNING_KEY_LEN + list_len(gateways)
                }
                Message::Close { text, .. } => 2 + str_len(text),
                Message::ActionResult(result) => {
                    UUID + 1
                        + 4
                        + 4
                        + 1
                        + if result.report_seq.is_some() { 8 } else { 0 }
                        + str_len(&result.text)
                        + blob_len(&result.output)
                        + 1
                }
                Message::MessageState { .. } => UUID + 1,
                Message::Receipt { .. } => UUID,
                Message::Move { cert_der, handover } => blob_len(cert_der) + handover.encoded_len(),
                Message::Transfer(handover) => handover.encoded_len(),
                Message::ContentGet { name, .. } => UUID + str_len(name) + 8,
            }
    }
}

/// Writes the number of bytes after the `u32` at `at` into it.
fn patch_u32(out: &mut BytesMut, at: usize) {
    // Frames are bounded by what the encoder writes: blobs are cut to u32::MAX below.
    let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn put_str(out: &mut BytesMut, text: &str) {
    let text = clip(text, usize::from(u16::MAX));
    out.put_u16(u16::try_from(text.len()).unwrap_or(u16::MAX));
    out.put_slice(text.as_bytes());
}

fn str_len(text: &str) -> usize {
    2 + clip(text, usize::from(u16::MAX)).len()
}

/// The part of a blob that fits a `u32` length (all of it, in practice).
fn blob_part(blob: &[u8]) -> &[u8] {
    let max = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
    &blob[..blob.len().min(max)]
}

fn put_blob(out: &mut BytesMut, blob: &[u8]) {
    let blob = blob_part(blob);
    out.put_u32(u32::try_from(blob.len()).unwrap_or(u32::MAX));
    out.put_slice(blob);
}

fn blob_len(blob: &[u8]) -> usize {
    4 + blob_part(blob).len()
}

fn put_list(out: &mut BytesMut, items: &[String]) {
    let items = &items[..items.len().min(usize::from(u16::MAX))];
    out.put_u16(u16::try_from(items.len()).unwrap_or(u16::MAX));
    for item in items {
        put_str(out, item);
    }
}

fn list_len(items: &[String]) -> usize {
    2 + items.iter().take(usize::from(u16::MAX)).map(|item| str_len(item)).sum::<usize>()
}

fn put_flag(out: &mut BytesMut, flag: bool) {
    out.put_u8(u8::from(flag));
}

/// Parser-internal error, turned into a [`DecodeError`] at the end of [`decode`] or of a payload's
/// `decode`.
#[derive(Debug)]
enum ParseError {
    /// One of nom's own parsers failed. Inside a body they fail only by running out of bytes, and
    /// [`named`] turns that into [`DecodeError::Truncated`] for the field at hand, so this is left
    /// only if a parser was used without a name.
    Nom,
    Decode(DecodeError),
}

impl ParseError {
    /// `what` names the frame or payload, for a [`ParseError::Nom`] that no field named.
    fn into_decode_error(self, what: &'static str) -> DecodeError {
        match self {
            ParseError::Nom => DecodeError::Truncated { field: what },
            ParseError::Decode(e) => e,
        }
    }
}

impl nom::error::ParseError<&[u8]> for ParseError {
    fn from_error_kind(_: &[u8], _: nom::error::ErrorKind) -> Self {
        ParseError::Nom
    }

    fn append(_: &[u8], _: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

type PResult<'a, T> = nom::IResult<&'a [u8], T, ParseError>;

/// A hard error: the bytes can never become a valid frame.
fn fail(e: DecodeError) -> nom::Err<ParseError> {
    nom::Err::Failure(ParseError::Decode(e))
}

/// Runs `parser` over the whole of a complete `body` (a frame's body or a signed payload): bytes
/// after the last field are [`DecodeError::TrailingBytes`] naming `what`.
fn parse_whole<'a, O>(
    body: &'a [u8],
    what: &'static str,
    mut parser: impl Parser<&'a [u8], Output = O, Error = ParseError>,
) -> Result<O, DecodeError> {
    match parser.parse(body) {
        Ok(([], out)) => Ok(out),
        Ok((rest, _)) => Err(DecodeError::TrailingBytes { what, extra: rest.len() }),
        Err(nom::Err::Incomplete(_)) => Err(DecodeError::Truncated { field: what }),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e.into_decode_error(what)),
    }
}

/// Runs one of nom's parsers on a complete body: running out of bytes is
/// [`DecodeError::Truncated`] naming `field`, a hard error.
fn named<'a, O>(
    input: &'a [u8],
    field: &'static str,
    mut parser: impl Parser<&'a [u8], Output = O, Error = ParseError>,
) -> PResult<'a, O> {
    parser.parse(input).map_err(|e| match e {
        nom::Err::Failure(e) => nom::Err::Failure(e),
        nom::Err::Error(_) | nom::Err::Incomplete(_) => fail(DecodeError::Truncated { field }),
    })
}

fn take<'a>(input: &'a [u8], n: usize, field: &'static str) -> PResult<'a, &'a [u8]> {
    named(input, field, nom::bytes::complete::take(n))
}

fn array<'a, const N: usize>(input: &'a [u8], field: &'static str) -> PResult<'a, [u8; N]> {
    let (input, bytes) = take(input, N, field)?;
    let mut array = [0u8; N];
    array.copy_from_slice(bytes);
    Ok((input, array))
}

fn byte<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, u8> {
    named(input, field, nom::number::complete::u8)
}

fn be_u16<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, u16> {
    named(input, field, nom::number::complete::be_u16)
}

fn be_u32<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, u32> {
    named(input, field, nom::number::complete::be_u32)
}

fn be_u64<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, u64> {
    named(input, field, nom::number::complete::be_u64)
}

fn be_i64<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, i64> {
    named(input, field, nom::number::complete::be_i64)
}

fn uuid<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, Uuid> {
    let (input, bytes) = array(input, field)?;
    Ok((input, Uuid::from_bytes(bytes)))
}

fn flag<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, bool> {
    match byte(input, field)? {
        (input, 0) => Ok((input, false)),
        (input, 1) => Ok((input, true)),
        (_, other) => Err(fail(DecodeError::UnknownCode { field, value: u16::from(other) })),
    }
}

/// A `u16`-length UTF-8 string of at most `max` bytes, checked before its bytes are taken.
fn string<'a>(input: &'a [u8], field: &'static str, max: usize) -> PResult<'a, String> {
    let (input, len) = be_u16(input, field)?;
    let len = usize::from(len);
    if len > max {
        return Err(fail(DecodeError::TooLong { field, len, max }));
    }
    let (input, bytes) = take(input, len, field)?;
    let text = std::str::from_utf8(bytes).map_err(|_| fail(DecodeError::BadUtf8 { field }))?;
    Ok((input, text.to_owned()))
}

/// A string that [`is_content_name`].
fn content_name<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, String> {
    let (input, name) = string(input, field, MAX_CONTENT_NAME)?;
    if !is_content_name(&name) {
        return Err(fail(DecodeError::BadName { field }));
    }
    Ok((input, name))
}

/// A `u32`-length blob of at most `max` bytes, checked before its bytes are taken.
fn blob<'a>(input: &'a [u8], field: &'static str, max: usize) -> PResult<'a, &'a [u8]> {
    let (input, len) = be_u32(input, field)?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(fail(DecodeError::TooLong { field, len, max }));
    }
    take(input, len, field)
}

/// A payload blob of at most [`Limits::max_blob`] bytes, then its signature.
fn signed<'a>(input: &'a [u8], payload: &'static str, signature: &'static str, limits: &Limits) -> PResult<'a, Signed> {
    let (input, payload) = blob(input, payload, limits.max_blob)?;
    let (input, signature) = array(input, signature)?;
    Ok((input, Signed { payload: Bytes::copy_from_slice(payload), signature }))
}

/// A `u16`-count list of at most [`MAX_GATEWAYS`] strings of at most `max_text` bytes each; the
/// count is checked before any entry is read.
fn list<'a>(input: &'a [u8], field: &'static str, max_text: usize) -> PResult<'a, Vec<String>> {
    let (input, count) = be_u16(input, field)?;
    let count = usize::from(count);
    if count > MAX_GATEWAYS {
        return Err(fail(DecodeError::TooMany { field, count, max: MAX_GATEWAYS }));
    }
    nom::multi::count(|input| string(input, field, max_text), count).parse(input)
}

#[cfg(test)]
#[path = "tap_test.rs"]
mod tests;
