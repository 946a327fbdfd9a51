//! The Intel AMT redirection protocol (TCP 16994/16995: SOL and IDE-R): message types, a
//! streaming parser, an encoder, the HTTP digest computation its authentication uses, and a
//! sequence-number check. No I/O: bytes in, messages out, and back.
//!
//! The layouts are those of the project's research notes on the protocol (redirection.md §1),
//! checked against the amtterm exchanges recorded there (§2). The stream has no generic length
//! prefix: every message starts with a type byte, and its length follows from the type and, for
//! some types, a length field inside it. All integers are little-endian.
//!
//! Who sends a message matters: [`decode`] takes the [`Sender`] and refuses a type the other side
//! sends ([`RedirError::WrongSender`]); heartbeats and IDE-R keepalives go both ways.
//!
//! What this module does not do: drive a session (who answers what, timers), speak KVM (after
//! authentication a KVM session switches to RFB; its 8-byte `0x40` is not this module's 18-byte
//! StartIDERRedirection), or read and write sockets. Reserved bytes are ignored when read and
//! written as zeros, so a decoded message re-encodes to the same bytes whenever its reserved bytes
//! were zero (they are in every exchange recorded in redirection.md).
//!
//! Parsing is streaming: [`decode`] returns `Ok(None)` while the buffer holds only part of a
//! message, and fails as soon as a length field exceeds its [`Limits`].

use bytes::Bytes;
use md5::{Digest, Md5};
use nom::Parser;

/// Longest SOL or IDE-R data payload accepted by default: all that a `u16` length can say.
pub const DEFAULT_MAX_DATA_LEN: usize = u16::MAX as usize;
/// Longest authentication payload accepted by default (redirection.md §1.8 suggests 1024; a
/// digest response with amtterm's own limits is under 300 bytes).
pub const DEFAULT_MAX_AUTH_PAYLOAD_LEN: usize = 1024;
/// Longest authentication string (username, password, realm, nonce, ...) accepted by default.
/// amtterm caps realms at 64 and the other strings at 32; real realms are `Digest:` and 32 hex
/// digits (39 bytes).
pub const DEFAULT_MAX_AUTH_STRING_LEN: usize = 128;

/// The URI both open consoles send in a digest authentication, and hash into HA2.
pub const REDIRECTION_URI: &[u8] = b"/RedirectionService";
/// The nonce count both open consoles send (a constant, not a counter).
pub const DIGEST_NONCE_COUNT: &[u8] = b"00000002";

/// IDE-R header attribute: this is the last message for the command.
pub const ATTR_COMPLETED: u8 = 0x02;
/// IDE-R header attribute: the transfer used DMA.
pub const ATTR_DMA: u8 = 0x01;

/// SOLControlsFromHost control bits (byte 8).
pub mod sol_control {
    pub const RTS: u8 = 0x01;
    pub const DTR: u8 = 0x02;
    pub const BREAK: u8 = 0x04;
}

/// SOLControlsFromHost status bits (byte 9).
pub mod sol_status {
    pub const TX_OVERFLOW: u8 = 0x01;
    pub const LOOPBACK: u8 = 0x02;
    /// amtterm prints "The system is powered off" when this bit is clear.
    pub const SYSTEM_POWER_ON: u8 = 0x04;
    pub const RX_FLUSH_TIMEOUT: u8 = 0x08;
    pub const TEST_MODE: u8 = 0x10;
}

/// Size limits the parser enforces. A field longer than its limit is a [`RedirError::TooLong`],
/// reported as soon as its length field has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest SOL data (0x28, 0x2A) or IDE-R data (0x53, 0x54) payload.
    pub max_data: usize,
    /// Longest AuthenticateSession(Reply) payload (the `u32` at offset 5).
    pub max_auth_payload: usize,
    /// Longest string inside an authentication payload.
    pub max_auth_string: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_data: DEFAULT_MAX_DATA_LEN,
            max_auth_payload: DEFAULT_MAX_AUTH_PAYLOAD_LEN,
            max_auth_string: DEFAULT_MAX_AUTH_STRING_LEN,
        }
    }
}

impl Limits {
    /// The longest message, type byte included, that [`decode`] accepts under these limits:
    /// IDE-R DataToHost (34 bytes plus data), an authentication message (9 plus its payload), or
    /// a reply with 255 bytes of OEM data (285 for StartIDERRedirectionReply).
    pub fn max_message_len(&self) -> usize {
        let data = self.max_data.min(u16::MAX as usize).saturating_add(34);
        let auth = self.max_auth_payload.min(u32::MAX as usize).saturating_add(9);
        data.max(auth).max(30 + 255)
    }
}

/// Which side sent the bytes being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sender {
    /// The technician's client (amtterm, MeshCommander): the side that connects.
    Console,
    /// The AMT firmware (or a relay speaking for it).
    Device,
}

/// Message type codes (the first byte of every message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    StartRedirectionSession = 0x10,
    StartRedirectionSessionReply = 0x11,
    EndRedirectionSession = 0x12,
    AuthenticateSession = 0x13,
    AuthenticateSessionReply = 0x14,
    StartSol = 0x20,
    StartSolReply = 0x21,
    EndSol = 0x22,
    EndSolReply = 0x23,
    SolKeepAlivePing = 0x24,
    SolKeepAlivePong = 0x25,
    SolControlsToHost = 0x27,
    SolDataToHost = 0x28,
    SolControlsFromHost = 0x29,
    SolDataFromHost = 0x2A,
    SolHeartbeat = 0x2B,
    StartIder = 0x40,
    StartIderReply = 0x41,
    EndIder = 0x42,
    EndIderReply = 0x43,
    IderKeepAlivePing = 0x44,
    IderKeepAlivePong = 0x45,
    IderResetOccurred = 0x46,
    IderResetOccurredResponse = 0x47,
    IderDisableEnableFeatures = 0x48,
    IderDisableEnableFeaturesReply = 0x49,
    IderErrorOccurred = 0x4A,
    IderHeartbeat = 0x4B,
    IderCommandWritten = 0x50,
    IderCommandEndResponse = 0x51,
    IderGetDataFromHost = 0x52,
    IderDataFromHost = 0x53,
    IderDataToHost = 0x54,
    /// MeshCentral's relay-only "this session is recorded" marker (one byte, not AMT's).
    SessionRecorded = 0xF0,
}

impl MessageType {
    /// Every type, in code order.
    pub const ALL: [MessageType; 34] = {
        use MessageType::*;
        [
            StartRedirectionSession,
            StartRedirectionSessionReply,
            EndRedirectionSession,
            AuthenticateSession,
            AuthenticateSessionReply,
            StartSol,
            StartSolReply,
            EndSol,
            EndSolReply,
            SolKeepAlivePing,
            SolKeepAlivePong,
            SolControlsToHost,
            SolDataToHost,
            SolControlsFromHost,
            SolDataFromHost,
            SolHeartbeat,
            StartIder,
            StartIderReply,
            EndIder,
            EndIderReply,
            IderKeepAlivePing,
            IderKeepAlivePong,
            IderResetOccurred,
            IderResetOccurredResponse,
            IderDisableEnableFeatures,
            IderDisableEnableFeaturesReply,
            IderErrorOccurred,
            IderHeartbeat,
            IderCommandWritten,
            IderCommandEndResponse,
            IderGetDataFromHost,
            IderDataFromHost,
            IderDataToHost,
            SessionRecorded,
        ]
    };

    /// The type for a wire code, or `None` for a code this module does not define.
    pub fn from_u8(code: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|ty| *ty as u8 == code)
    }

    /// Whether `sender` may send this type (redirection.md §1.1, "direction").
    pub fn sent_by(self, sender: Sender) -> bool {
        use MessageType::*;
        match self {
            SolHeartbeat | IderKeepAlivePing | IderKeepAlivePong | IderHeartbeat => true,
            StartRedirectionSession
            | EndRedirectionSession
            | AuthenticateSession
            | StartSol
            | EndSol
            | SolKeepAlivePing
            | SolControlsToHost
            | SolDataToHost
            | StartIder
            | EndIder
            | IderResetOccurredResponse
            | IderDisableEnableFeatures
            | IderCommandEndResponse
            | IderGetDataFromHost
            | IderDataToHost => sender == Sender::Console,
            StartRedirectionSessionReply
            | AuthenticateSessionReply
            | StartSolReply
            | EndSolReply
            | SolKeepAlivePong
            | SolControlsFromHost
            | SolDataFromHost
            | StartIderReply
            | EndIderReply
            | IderResetOccurred
            | IderDisableEnableFeaturesReply
            | IderErrorOccurred
            | IderCommandWritten
            | IderDataFromHost
            | SessionRecorded => sender == Sender::Device,
        }
    }
}

/// The session a StartRedirectionSession asks for: its 4-byte ASCII tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionType {
    /// `"SOL "`: serial over LAN.
    Sol,
    /// `"IDER"`: IDE redirection.
    Ider,
    /// `"KVMR"`: KVM (decoded so that a relay can tell it apart; its RFB phase is not parsed here).
    Kvm,
}

impl SessionType {
    pub fn tag(self) -> [u8; 4] {
        match self {
            SessionType::Sol => *b"SOL ",
            SessionType::Ider => *b"IDER",
            SessionType::Kvm => *b"KVMR",
        }
    }

    pub fn from_tag(tag: [u8; 4]) -> Option<Self> {
        match &tag {
            b"SOL " => Some(SessionType::Sol),
            b"IDER" => Some(SessionType::Ider),
            b"KVMR" => Some(SessionType::Kvm),
            _ => None,
        }
    }
}

/// Protocol and firmware versions, as StartRedirectionSessionReply and StartIDERRedirectionReply
/// carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Versions {
    pub protocol_major: u8,
    pub protocol_minor: u8,
    pub firmware_major: u8,
    pub firmware_minor: u8,
}

/// StartRedirectionSessionReply (0x11): 13 bytes plus the OEM data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReply {
    /// 0 is success; consoles drop the connection on anything else.
    pub status: u8,
    pub versions: Versions,
    pub oem_iana: u32,
    /// At most 255 bytes (a one-byte length). amtterm reads exactly 13 bytes, so send none.
    pub oem_data: Bytes,
}

/// Authentication method codes (byte 4 of AuthenticateSession and its reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AuthMethod {
    Query = 0,
    /// Username and password in clear ("basic"; deprecated from AMT 7).
    UsernamePassword = 1,
    Kerberos = 2,
    /// HTTP digest as in RFC 2069 (no cnonce or qop in the hash).
    Digest = 3,
    /// HTTP digest as in RFC 2617 with `qop=auth`.
    DigestQop = 4,
}

impl AuthMethod {
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            0 => AuthMethod::Query,
            1 => AuthMethod::UsernamePassword,
            2 => AuthMethod::Kerberos,
            3 => AuthMethod::Digest,
            4 => AuthMethod::DigestQop,
            _ => return None,
        })
    }
}

/// The two digest variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestMethod {
    /// Method 3: response = MD5(HA1:nonce:HA2); seven strings, no qop.
    Rfc2069,
    /// Method 4: response = MD5(HA1:nonce:nc:cnonce:qop:HA2); eight strings, qop last.
    Rfc2617,
}

impl DigestMethod {
    pub fn auth_method(self) -> AuthMethod {
        match self {
            DigestMethod::Rfc2069 => AuthMethod::Digest,
            DigestMethod::Rfc2617 => AuthMethod::DigestQop,
        }
    }
}

/// The fields of a digest AuthenticateSession, in wire order. The first request of a digest
/// exchange carries only `username` and `uri` (every other string empty); the second carries
/// them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestAuth {
    pub method: DigestMethod,
    pub username: Bytes,
    pub realm: Bytes,
    pub nonce: Bytes,
    pub uri: Bytes,
    pub cnonce: Bytes,
    pub nc: Bytes,
    /// 32 lowercase hex digits (see [`digest_response`]).
    pub response: Bytes,
    /// Sent only with [`DigestMethod::Rfc2617`]; must be empty with [`DigestMethod::Rfc2069`]
    /// (the encoder does not write it).
    pub qop: Bytes,
}

/// AuthenticateSession (0x13), by method. Every string is a one-byte length and that many bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// Which methods does the device support? (An empty payload.)
    Query,
    UsernamePassword {
        username: Bytes,
        password: Bytes,
    },
    /// An opaque Kerberos token. Parsed so that framing holds; [`verify`] refuses it.
    Kerberos {
        token: Bytes,
    },
    Digest(DigestAuth),
}

/// A digest challenge: what the device sends (with status 1) after the first digest request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestChallenge {
    pub realm: Bytes,
    pub nonce: Bytes,
    /// Sent only with [`DigestMethod::Rfc2617`] (where it must be `auth`); empty otherwise.
    pub qop: Bytes,
}

/// The payload of an AuthenticateSessionReply, by method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthReplyBody {
    /// The reply to a query: the supported method codes, one byte each (kept raw: a device may
    /// list codes this module does not name; amtterm rejects 0 and codes of 32 and above).
    Methods(Bytes),
    /// The verdict on a username/password request (an empty payload).
    UsernamePassword,
    /// An opaque Kerberos token.
    Kerberos { token: Bytes },
    /// A digest challenge (`Some`, with status 1), or the verdict on a digest response (`None`,
    /// an empty payload).
    Digest { method: DigestMethod, challenge: Option<DigestChallenge> },
}

/// AuthenticateSessionReply (0x14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthReply {
    /// 0 is success; 1 is failure, and, with a digest challenge, "challenge follows".
    pub status: u8,
    pub body: AuthReplyBody,
}

/// The six settings of StartSOLRedirection, echoed by the device in its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SolSettings {
    /// Bytes.
    pub max_tx_buffer: u16,
    /// Milliseconds, like every other field.
    pub tx_buffer_timeout: u16,
    pub tx_overflow_timeout: u16,
    pub host_session_rx_timeout: u16,
    pub host_fifo_rx_flush_timeout: u16,
    /// 0 turns heartbeats off.
    pub heartbeat_interval: u16,
}

/// StartIDERRedirection (0x40), in the layout MeshCommander and MeshCentral send: the header,
/// then the three timeouts and the version. For amtider's layout see [`AmtiderOpen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IderOpen {
    pub seq: u32,
    /// Milliseconds (MeshCommander: 30000).
    pub rx_timeout: u16,
    /// Milliseconds (MeshCommander: 0).
    pub tx_timeout: u16,
    /// Milliseconds (MeshCommander: 20000).
    pub heartbeat: u16,
    /// MeshCommander: 1.
    pub version: u32,
}

/// StartIDERRedirection (0x40) in the layout amtider (amtterm ≥ 1.7) sends (redirection.md §1.4):
/// no header; the three timeouts in bytes 1..6, the version (1) in byte 7, then ten zero bytes
/// (ignored when read). 18 bytes, like the other layout.
///
/// The decoder tells the layouts apart by bytes 1..3, always zero in MeshCommander's. An amtider
/// message whose `rx_timeout` is 0 and whose `tx_timeout` has a zero low byte is therefore read
/// as MeshCommander's layout; amtider sends 100 and 10000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AmtiderOpen {
    /// Milliseconds (amtider: 100).
    pub rx_timeout: u16,
    /// Milliseconds (amtider: 10000).
    pub tx_timeout: u16,
    /// Milliseconds (amtider: 5000).
    pub heartbeat: u16,
    /// amtider: 1.
    pub version: u8,
}

/// StartIDERRedirectionReply (0x41): 30 bytes plus the OEM data. Bytes 12..15, 20 and 22..24
/// are not parsed by any console and are ignored (written as zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IderOpenReply {
    pub status: u8,
    pub seq: u32,
    pub versions: Versions,
    /// The most bytes per DataToHost (MeshCommander aborts above 8192).
    pub read_buffer_size: u16,
    pub write_buffer_size: u16,
    /// Supported protocol / features (MeshCommander requires 0).
    pub features: u8,
    pub oem_iana: u32,
    /// At most 255 bytes.
    pub oem_data: Bytes,
}

/// DisableEnableFeatures sub-command codes (byte 8 of 0x48 and 0x49).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FeaturesCommand {
    GetSupported = 1,
    GetState = 2,
    SetState = 3,
}

impl FeaturesCommand {
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            1 => FeaturesCommand::GetSupported,
            2 => FeaturesCommand::GetState,
            3 => FeaturesCommand::SetState,
            _ => return None,
        })
    }
}

/// A DisableEnableFeatures (0x48) request. Only "set" carries data: a `u32` whose bit 0 enables
/// the IDE-R registers and whose bits 3..4 say when (0x08 next reboot, 0x10 graceful, 0x18 now).
/// redirection.md does not say that "get state" carries data; it is read as carrying none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeaturesRequest {
    GetSupported,
    GetState,
    SetState(u32),
}

impl FeaturesRequest {
    pub fn command(self) -> FeaturesCommand {
        match self {
            FeaturesRequest::GetSupported => FeaturesCommand::GetSupported,
            FeaturesRequest::GetState => FeaturesCommand::GetState,
            FeaturesRequest::SetState(_) => FeaturesCommand::SetState,
        }
    }
}

/// An ATA register block as IDE-R carries it (8 bytes): `mask` says which registers are valid
/// (0x01 interrupt, 0x02 error, 0x04 sector count, 0x08 sector number, 0x10 byte-count LSB, 0x20
/// byte-count MSB, 0x40 drive select, 0x80 status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AtaRegisters {
    pub mask: u8,
    pub error: u8,
    /// Doubles as the ATAPI interrupt reason: bit 0 C/D, bit 1 I/O (3 = status phase).
    pub sector_count: u8,
    pub sector_number: u8,
    /// The byte-count LSB and MSB registers.
    pub byte_count: u16,
    /// 0xA0 the floppy/disk, 0xB0 the CD-ROM.
    pub drive_select: u8,
    /// 0x80 BSY, 0x40 DRDY, 0x20 DF, 0x10 DSC, 0x08 DRQ, 0x04 CORR, 0x02 IDX, 0x01 ERR.
    pub status: u8,
}

/// SCSI sense data as IDE-R carries it (sense key, additional sense code and qualifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

/// The register area of CommandEndResponse, GetDataFromHost and DataToHost (offsets 8..31,
/// without the transfer length at 9..10, which each message holds itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RegisterArea {
    pub cable_select: u8,
    pub packet_number: u8,
    pub input: AtaRegisters,
    pub output: AtaRegisters,
    pub sense: Sense,
}

/// CommandWritten (0x50): the ATA task-file registers the host wrote, and the ATAPI packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AtaCommand {
    pub cable_select: u8,
    /// Bit 0: DMA requested.
    pub feature: u8,
    pub sector_count: u8,
    pub sector_number: u8,
    pub byte_count_limit: u16,
    /// Bit 4 set: the secondary device (CD-ROM, 0xB0); clear: the floppy/disk (0xA0).
    pub drive_select: u8,
    /// 0xA0 is PACKET, the only command the open consoles handle.
    pub command: u8,
    /// The SCSI CDB (big-endian fields inside).
    pub packet: [u8; 12],
}

/// One redirection message. `seq` is the sequence number at offsets 4..7 of the 8-byte header;
/// `attributes` is the IDE-R header's byte 3 ([`ATTR_COMPLETED`], [`ATTR_DMA`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 0x10, 8 bytes. Bytes 1..3 are ignored (MeshCommander puts 1 in byte 1 for KVM).
    StartRedirectionSession { session_type: SessionType },
    /// 0x11.
    StartRedirectionSessionReply(SessionReply),
    /// 0x12, 4 bytes.
    EndRedirectionSession,
    /// 0x13.
    AuthenticateSession(AuthRequest),
    /// 0x14.
    AuthenticateSessionReply(AuthReply),
    /// 0x20, 24 bytes.
    StartSol { seq: u32, settings: SolSettings },
    /// 0x21, 23 bytes: the status in byte 1, the settings the device accepted.
    StartSolReply { status: u8, seq: u32, settings: SolSettings },
    /// 0x22, 8 bytes.
    EndSol { seq: u32 },
    /// 0x23, 8 bytes.
    EndSolReply { seq: u32 },
    /// 0x24, 8 bytes.
    SolKeepAlivePing { seq: u32 },
    /// 0x25, 8 bytes.
    SolKeepAlivePong { seq: u32 },
    /// 0x27, 14 bytes: MeshCommander's "controls to host" (`00 00 1B 00 00 00`). No public
    /// definition exists; the six bytes are kept raw.
    SolControlsToHost { seq: u32, controls: [u8; 6] },
    /// 0x28: keystrokes, console to host.
    SolDataToHost { seq: u32, data: Bytes },
    /// 0x29, 10 bytes: modem lines ([`sol_control`]) and status ([`sol_status`]).
    SolControlsFromHost { seq: u32, control: u8, status: u8 },
    /// 0x2A: screen output, host to console.
    SolDataFromHost { seq: u32, data: Bytes },
    /// 0x2B, 8 bytes, both ways.
    SolHeartbeat { seq: u32 },
    /// 0x40, 18 bytes, MeshCommander's layout.
    StartIder(IderOpen),
    /// 0x40, 18 bytes, amtider's layout. It has no sequence number; [`Message::seq`] reports 0
    /// (it is the first message the console numbers).
    StartIderAmtider(AmtiderOpen),
    /// 0x41.
    StartIderReply(IderOpenReply),
    /// 0x42, 8 bytes.
    EndIder { seq: u32 },
    /// 0x43, 8 bytes.
    EndIderReply { seq: u32 },
    /// 0x44, 8 bytes, both ways.
    IderKeepAlivePing { seq: u32 },
    /// 0x45, 8 bytes, both ways.
    IderKeepAlivePong { seq: u32 },
    /// 0x46, 9 bytes.
    IderResetOccurred { seq: u32, mask: u8 },
    /// 0x47, 8 bytes.
    IderResetOccurredResponse { seq: u32 },
    /// 0x48, 9 bytes (13 for a set).
    IderDisableEnableFeatures { seq: u32, request: FeaturesRequest },
    /// 0x49, 13 bytes.
    IderDisableEnableFeaturesReply { seq: u32, command: FeaturesCommand, value: u32 },
    /// 0x4A, 11 bytes (bytes 9..10 are ignored).
    IderErrorOccurred { seq: u32, code: u8 },
    /// 0x4B, 8 bytes, both ways.
    IderHeartbeat { seq: u32 },
    /// 0x50, 28 bytes.
    IderCommandWritten { seq: u32, attributes: u8, command: AtaCommand },
    /// 0x51, 31 bytes.
    IderCommandEndResponse { seq: u32, attributes: u8, transfer_bytes: u16, area: RegisterArea },
    /// 0x52, 31 bytes: the console asks for `transfer_bytes` of write data.
    IderGetDataFromHost { seq: u32, attributes: u8, transfer_bytes: u16, area: RegisterArea },
    /// 0x53: write data; bytes 12..13 are ignored.
    IderDataFromHost { seq: u32, attributes: u8, cable_select: u8, packet_number: u8, data: Bytes },
    /// 0x54: read data (the transfer length at 9..10 is the data's length; bytes 31..33 ignored).
    IderDataToHost { seq: u32, attributes: u8, area: RegisterArea, data: Bytes },
    /// 0xF0, 1 byte: MeshCentral's relay tells the console the session is recorded.
    SessionRecorded,
}

/// Why bytes could not be decoded. Every variant is the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirError {
    #[error("unknown redirection message type {0:#04x}")]
    UnknownType(u8),
    #[error("{message:?} is not sent by the {from:?}")]
    WrongSender { message: MessageType, from: Sender },
    #[error("{field} is {len} bytes, over the limit of {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("unknown session type {0:02x?}")]
    UnknownSessionType([u8; 4]),
    #[error("unknown authentication method {0}")]
    UnknownAuthMethod(u8),
    #[error("unknown DisableEnableFeatures sub-command {0}")]
    UnknownFeaturesCommand(u8),
    #[error("malformed {message:?}: {detail}")]
    Malformed { message: MessageType, detail: &'static str },
}

/// Decodes one message sent by `from` from the front of `input`.
///
/// Returns `Ok(Some((message, consumed)))` with the number of bytes it used, `Ok(None)` when
/// `input` holds only the beginning of a message (read more and call again), or an error when the
/// bytes can never become a valid message.
pub fn decode(input: &[u8], from: Sender, limits: &Limits) -> Result<Option<(Message, usize)>, RedirError> {
    let Some(&code) = input.first() else { return Ok(None) };
    let ty = MessageType::from_u8(code).ok_or(RedirError::UnknownType(code))?;
    if !ty.sent_by(from) {
        return Err(RedirError::WrongSender { message: ty, from });
    }
    match parse_message(ty, input, limits) {
        Ok((rest, message)) => Ok(Some((message, input.len() - rest.len()))),
        Err(nom::Err::Incomplete(_)) => Ok(None),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e.into_redir_error(ty)),
    }
}

/// The length of the message at the front of `input`, type byte included, as soon as the bytes
/// that say it have arrived (at most the first 30): `Ok(None)` until then. For a relay that
/// follows message boundaries without buffering whole messages: it reads only the type and the
/// length fields, checking the type against its sender and the lengths against `limits` as
/// [`decode`] does; it does not validate the rest of the message (use [`decode`] for that).
pub fn message_len(input: &[u8], from: Sender, limits: &Limits) -> Result<Option<usize>, RedirError> {
    use MessageType as T;
    let Some(&code) = input.first() else { return Ok(None) };
    let ty = MessageType::from_u8(code).ok_or(RedirError::UnknownType(code))?;
    if !ty.sent_by(from) {
        return Err(RedirError::WrongSender { message: ty, from });
    }
    let byte_at = |i: usize| input.get(i).copied();
    let le16_at = |i: usize| Some(u16::from_le_bytes([byte_at(i)?, byte_at(i + 1)?]));
    let data_len = |len: u16, field: &'static str| {
        let len = usize::from(len);
        if len > limits.max_data {
            Err(RedirError::TooLong { field, len, max: limits.max_data })
        } else {
            Ok(len)
        }
    };
    let len = match ty {
        T::SessionRecorded => 1,
        T::EndRedirectionSession => 4,
        T::StartRedirectionSession
        | T::EndSol
        | T::EndSolReply
        | T::SolKeepAlivePing
        | T::SolKeepAlivePong
        | T::SolHeartbeat
        | T::EndIder
        | T::EndIderReply
        | T::IderKeepAlivePing
        | T::IderKeepAlivePong
        | T::IderResetOccurredResponse
        | T::IderHeartbeat => 8,
        T::IderResetOccurred => 9,
        T::SolControlsFromHost => 10,
        T::IderErrorOccurred => 11,
        T::IderDisableEnableFeaturesReply => 13,
        T::SolControlsToHost => 14,
        T::StartIder => 18,
        T::StartSolReply => 23,
        T::StartSol => 24,
        T::IderCommandWritten => 28,
        T::IderCommandEndResponse | T::IderGetDataFromHost => 31,
        T::StartRedirectionSessionReply => match byte_at(12) {
            Some(oem) => 13 + usize::from(oem),
            None => return Ok(None),
        },
        T::StartIderReply => match byte_at(29) {
            Some(oem) => 30 + usize::from(oem),
            None => return Ok(None),
        },
        T::AuthenticateSession | T::AuthenticateSessionReply => {
            let Some(method) = byte_at(4) else { return Ok(None) };
            if AuthMethod::from_u8(method).is_none() {
                return Err(RedirError::UnknownAuthMethod(method));
            }
            let Some(bytes) = input.get(5..9) else { return Ok(None) };
            let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > limits.max_auth_payload {
                let max = limits.max_auth_payload;
                return Err(RedirError::TooLong { field: "authentication payload", len, max });
            }
            9 + len
        }
        T::IderDisableEnableFeatures => match byte_at(8) {
            Some(code) => match FeaturesCommand::from_u8(code) {
                Some(FeaturesCommand::SetState) => 13,
                Some(FeaturesCommand::GetSupported | FeaturesCommand::GetState) => 9,
                None => return Err(RedirError::UnknownFeaturesCommand(code)),
            },
            None => return Ok(None),
        },
        T::SolDataToHost | T::SolDataFromHost => match le16_at(8) {
            Some(len) => 10 + data_len(len, "SOL data")?,
            None => return Ok(None),
        },
        T::IderDataFromHost => match le16_at(9) {
            Some(len) => 14 + data_len(len, "IDE-R data")?,
            None => return Ok(None),
        },
        T::IderDataToHost => match le16_at(9) {
            Some(len) => 34 + data_len(len, "IDE-R data")?,
            None => return Ok(None),
        },
    };
    Ok(Some(len))
}

impl Message {
    /// The type byte this message is sent with.
    pub fn message_type(&self) -> MessageType {
        use MessageType as T;
        match self {
            Message::StartRedirectionSession { .. } => T::StartRedirectionSession,
            Message::StartRedirectionSessionReply(_) => T::StartRedirectionSessionReply,
            Message::EndRedirectionSession => T::EndRedirectionSession,
            Message::AuthenticateSession(_) => T::AuthenticateSession,
            Message::AuthenticateSessionReply(_) => T::AuthenticateSessionReply,
            Message::StartSol { .. } => T::StartSol,
            Message::StartSolReply { .. } => T::StartSolReply,
            Message::EndSol { .. } => T::EndSol,
            Message::EndSolReply { .. } => T::EndSolReply,
            Message::SolKeepAlivePing { .. } => T::SolKeepAlivePing,
            Message::SolKeepAlivePong { .. } => T::SolKeepAlivePong,
            Message::SolControlsToHost { .. } => T::SolControlsToHost,
            Message::SolDataToHost { .. } => T::SolDataToHost,
            Message::SolControlsFromHost { .. } => T::SolControlsFromHost,
            Message::SolDataFromHost { .. } => T::SolDataFromHost,
            Message::SolHeartbeat { .. } => T::SolHeartbeat,
            Message::StartIder(_) | Message::StartIderAmtider(_) => T::StartIder,
            Message::StartIderReply(_) => T::StartIderReply,
            Message::EndIder { .. } => T::EndIder,
            Message::EndIderReply { .. } => T::EndIderReply,
            Message::IderKeepAlivePing { .. } => T::IderKeepAlivePing,
            Message::IderKeepAlivePong { .. } => T::IderKeepAlivePong,
            Message::IderResetOccurred { .. } => T::IderResetOccurred,
            Message::IderResetOccurredResponse { .. } => T::IderResetOccurredResponse,
            Message::IderDisableEnableFeatures { .. } => T::IderDisableEnableFeatures,
            Message::IderDisableEnableFeaturesReply { .. } => T::IderDisableEnableFeaturesReply,
            Message::IderErrorOccurred { .. } => T::IderErrorOccurred,
            Message::IderHeartbeat { .. } => T::IderHeartbeat,
            Message::IderCommandWritten { .. } => T::IderCommandWritten,
            Message::IderCommandEndResponse { .. } => T::IderCommandEndResponse,
            Message::IderGetDataFromHost { .. } => T::IderGetDataFromHost,
            Message::IderDataFromHost { .. } => T::IderDataFromHost,
            Message::IderDataToHost { .. } => T::IderDataToHost,
            Message::SessionRecorded => T::SessionRecorded,
        }
    }

    /// The header's sequence number, for the messages that have the 8-byte header.
    pub fn seq(&self) -> Option<u32> {
        Some(match self {
            Message::StartRedirectionSession { .. }
            | Message::StartRedirectionSessionReply(_)
            | Message::EndRedirectionSession
            | Message::AuthenticateSession(_)
            | Message::AuthenticateSessionReply(_)
            | Message::SessionRecorded => return None,
            Message::StartIder(open) => open.seq,
            Message::StartIderAmtider(_) => 0,
            Message::StartIderReply(reply) => reply.seq,
            Message::StartSol { seq, .. }
            | Message::StartSolReply { seq, .. }
            | Message::EndSol { seq }
            | Message::EndSolReply { seq }
            | Message::SolKeepAlivePing { seq }
            | Message::SolKeepAlivePong { seq }
            | Message::SolControlsToHost { seq, .. }
            | Message::SolDataToHost { seq, .. }
            | Message::SolControlsFromHost { seq, .. }
            | Message::SolDataFromHost { seq, .. }
            | Message::SolHeartbeat { seq }
            | Message::EndIder { seq }
            | Message::EndIderReply { seq }
            | Message::IderKeepAlivePing { seq }
            | Message::IderKeepAlivePong { seq }
            | Message::IderResetOccurred { seq, .. }
            | Message::IderResetOccurredResponse { seq }
            | Message::IderDisableEnableFeatures { seq, .. }
            | Message::IderDisableEnableFeaturesReply { seq, .. }
            | Message::IderErrorOccurred { seq, .. }
            | Message::IderHeartbeat { seq }
            | Message::IderCommandWritten { seq, .. }
            | Message::IderCommandEndResponse { seq, .. }
            | Message::IderGetDataFromHost { seq, .. }
            | Message::IderDataFromHost { seq, .. }
            | Message::IderDataToHost { seq, .. } => *seq,
        })
    }
}

/// Appends the wire form of `message` to `out`: exactly the bytes [`decode`] reads, reserved
/// bytes as zeros.
///
/// # Panics
///
/// When a field is longer than its length field can say: data over 65535 bytes, OEM data or an
/// authentication string over 255 bytes. The decoder never produces such a message.
pub fn encode(message: &Message, out: &mut Vec<u8>) {
    let ty = message.message_type() as u8;
    match message {
        Message::StartRedirectionSession { session_type } => {
            out.extend_from_slice(&[ty, 0, 0, 0]);
            out.extend_from_slice(&session_type.tag());
        }
        Message::StartRedirectionSessionReply(reply) => {
            out.extend_from_slice(&[ty, reply.status, 0, 0]);
            put_versions(out, &reply.versions);
            out.extend_from_slice(&reply.oem_iana.to_le_bytes());
            put_u8_len(out, &reply.oem_data, "OEM data");
        }
        Message::EndRedirectionSession => out.extend_from_slice(&[ty, 0, 0, 0]),
        Message::AuthenticateSession(request) => {
            let mut payload = Vec::new();
            let method = match request {
                AuthRequest::Query => AuthMethod::Query,
                AuthRequest::UsernamePassword { username, password } => {
                    put_u8_len(&mut payload, username, "username");
                    put_u8_len(&mut payload, password, "password");
                    AuthMethod::UsernamePassword
                }
                AuthRequest::Kerberos { token } => {
                    payload.extend_from_slice(token);
                    AuthMethod::Kerberos
                }
                AuthRequest::Digest(auth) => {
                    for s in
                        [&auth.username, &auth.realm, &auth.nonce, &auth.uri, &auth.cnonce, &auth.nc, &auth.response]
                    {
                        put_u8_len(&mut payload, s, "digest field");
                    }
                    if auth.method == DigestMethod::Rfc2617 {
                        put_u8_len(&mut payload, &auth.qop, "qop");
                    }
                    auth.method.auth_method()
                }
            };
            put_auth(out, ty, 0, method, &payload);
        }
        Message::AuthenticateSessionReply(reply) => {
            let mut payload = Vec::new();
            let method = match &reply.body {
                AuthReplyBody::Methods(methods) => {
                    payload.extend_from_slice(methods);
                    AuthMethod::Query
                }
                AuthReplyBody::UsernamePassword => AuthMethod::UsernamePassword,
                AuthReplyBody::Kerberos { token } => {
                    payload.extend_from_slice(token);
                    AuthMethod::Kerberos
                }
                AuthReplyBody::Digest { method, challenge } => {
                    if let Some(challenge) = challenge {
                        put_u8_len(&mut payload, &challenge.realm, "realm");
                        put_u8_len(&mut payload, &challenge.nonce, "nonce");
                        if *method == DigestMethod::Rfc2617 {
                            put_u8_len(&mut payload, &challenge.qop, "qop");
                        }
                    }
                    method.auth_method()
                }
            };
            put_auth(out, ty, reply.status, method, &payload);
        }
        Message::StartSol { seq, settings } => {
            put_header(out, ty, 0, 0, *seq);
            put_sol_settings(out, settings);
            out.extend_from_slice(&[0; 4]);
        }
        Message::StartSolReply { status, seq, settings } => {
            put_header(out, ty, *status, 0, *seq);
            put_sol_settings(out, settings);
            out.extend_from_slice(&[0; 3]);
        }
        Message::EndSol { seq }
        | Message::EndSolReply { seq }
        | Message::SolKeepAlivePing { seq }
        | Message::SolKeepAlivePong { seq }
        | Message::SolHeartbeat { seq }
        | Message::EndIder { seq }
        | Message::EndIderReply { seq }
        | Message::IderKeepAlivePing { seq }
        | Message::IderKeepAlivePong { seq }
        | Message::IderResetOccurredResponse { seq }
        | Message::IderHeartbeat { seq } => put_header(out, ty, 0, 0, *seq),
        Message::SolControlsToHost { seq, controls } => {
            put_header(out, ty, 0, 0, *seq);
            out.extend_from_slice(controls);
        }
        Message::SolDataToHost { seq, data } | Message::SolDataFromHost { seq, data } => {
            put_header(out, ty, 0, 0, *seq);
            out.extend_from_slice(&data_len(data).to_le_bytes());
            out.extend_from_slice(data);
        }
        Message::SolControlsFromHost { seq, control, status } => {
            put_header(out, ty, 0, 0, *seq);
            out.extend_from_slice(&[*control, *status]);
        }
        Message::StartIder(open) => {
            put_header(out, ty, 0, 0, open.seq);
            out.extend_from_slice(&open.rx_timeout.to_le_bytes());
            out.extend_from_slice(&open.tx_timeout.to_le_bytes());
            out.extend_from_slice(&open.heartbeat.to_le_bytes());
            out.extend_from_slice(&open.version.to_le_bytes());
        }
        Message::StartIderAmtider(open) => {
            out.push(ty);
            out.extend_from_slice(&open.rx_timeout.to_le_bytes());
            out.extend_from_slice(&open.tx_timeout.to_le_bytes());
            out.extend_from_slice(&open.heartbeat.to_le_bytes());
            out.push(open.version);
            out.extend_from_slice(&[0; 10]);
        }
        Message::StartIderReply(reply) => {
            put_header(out, ty, reply.status, 0, reply.seq);
            put_versions(out, &reply.versions);
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&reply.read_buffer_size.to_le_bytes());
            out.extend_from_slice(&reply.write_buffer_size.to_le_bytes());
            out.extend_from_slice(&[0, reply.features, 0, 0, 0]);
            out.extend_from_slice(&reply.oem_iana.to_le_bytes());
            put_u8_len(out, &reply.oem_data, "OEM data");
        }
        Message::IderResetOccurred { seq, mask } => {
            put_header(out, ty, 0, 0, *seq);
            out.push(*mask);
        }
        Message::IderDisableEnableFeatures { seq, request } => {
            put_header(out, ty, 0, 0, *seq);
            out.push(request.command() as u8);
            if let FeaturesRequest::SetState(value) = request {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        Message::IderDisableEnableFeaturesReply { seq, command, value } => {
            put_header(out, ty, 0, 0, *seq);
            out.push(*command as u8);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Message::IderErrorOccurred { seq, code } => {
            put_header(out, ty, 0, 0, *seq);
            out.extend_from_slice(&[*code, 0, 0]);
        }
        Message::IderCommandWritten { seq, attributes, command } => {
            put_header(out, ty, 0, *attributes, *seq);
            out.extend_from_slice(&[
                command.cable_select,
                command.feature,
                command.sector_count,
                command.sector_number,
            ]);
            out.extend_from_slice(&command.byte_count_limit.to_le_bytes());
            out.extend_from_slice(&[command.drive_select, command.command]);
            out.extend_from_slice(&command.packet);
        }
        Message::IderCommandEndResponse { seq, attributes, transfer_bytes, area }
        | Message::IderGetDataFromHost { seq, attributes, transfer_bytes, area } => {
            put_header(out, ty, 0, *attributes, *seq);
            put_area(out, area, *transfer_bytes);
        }
        Message::IderDataFromHost { seq, attributes, cable_select, packet_number, data } => {
            put_header(out, ty, 0, *attributes, *seq);
            out.push(*cable_select);
            out.extend_from_slice(&data_len(data).to_le_bytes());
            out.extend_from_slice(&[*packet_number, 0, 0]);
            out.extend_from_slice(data);
        }
        Message::IderDataToHost { seq, attributes, area, data } => {
            put_header(out, ty, 0, *attributes, *seq);
            put_area(out, area, data_len(data));
            out.extend_from_slice(&[0; 3]);
            out.extend_from_slice(data);
        }
        Message::SessionRecorded => out.push(ty),
    }
}

/// The 8-byte header: type, byte 1 (a status in some replies), 0, byte 3 (IDE-R attributes), seq.
fn put_header(out: &mut Vec<u8>, ty: u8, byte1: u8, attributes: u8, seq: u32) {
    out.extend_from_slice(&[ty, byte1, 0, attributes]);
    out.extend_from_slice(&seq.to_le_bytes());
}

fn put_versions(out: &mut Vec<u8>, v: &Versions) {
    out.extend_from_slice(&[v.protocol_major, v.protocol_minor, v.firmware_major, v.firmware_minor]);
}

fn put_sol_settings(out: &mut Vec<u8>, s: &SolSettings) {
    for value in [
        s.max_tx_buffer,
        s.tx_buffer_timeout,
        s.tx_overflow_timeout,
        s.host_session_rx_timeout,
        s.host_fifo_rx_flush_timeout,
        s.heartbeat_interval,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn put_ata_registers(out: &mut Vec<u8>, r: &AtaRegisters) {
    let [lsb, msb] = r.byte_count.to_le_bytes();
    out.extend_from_slice(&[r.mask, r.error, r.sector_count, r.sector_number, lsb, msb, r.drive_select, r.status]);
}

/// Offsets 8..31: cable select, transfer bytes, packet number, input and output registers, sense.
fn put_area(out: &mut Vec<u8>, area: &RegisterArea, transfer_bytes: u16) {
    out.push(area.cable_select);
    out.extend_from_slice(&transfer_bytes.to_le_bytes());
    out.push(area.packet_number);
    put_ata_registers(out, &area.input);
    put_ata_registers(out, &area.output);
    out.extend_from_slice(&[area.sense.key, area.sense.asc, area.sense.ascq]);
}

fn put_auth(out: &mut Vec<u8>, ty: u8, status: u8, method: AuthMethod, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("authentication payload over 4 GiB");
    out.extend_from_slice(&[ty, status, 0, 0, method as u8]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
}

fn put_u8_len(out: &mut Vec<u8>, s: &[u8], field: &str) {
    let len = u8::try_from(s.len()).unwrap_or_else(|_| panic!("{field} is {} bytes, over 255", s.len()));
    out.push(len);
    out.extend_from_slice(s);
}

fn data_len(data: &[u8]) -> u16 {
    u16::try_from(data.len()).unwrap_or_else(|_| panic!("data is {} bytes, over 65535", data.len()))
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Parser-internal error, turned into a [`RedirError`] once the message type is known.
#[derive(Debug)]
enum ParseError {
    TooLong { field: &'static str, len: usize, max: usize },
    UnknownSessionType([u8; 4]),
    UnknownAuthMethod(u8),
    UnknownFeaturesCommand(u8),
    Malformed(&'static str),
}

impl ParseError {
    fn into_redir_error(self, message: MessageType) -> RedirError {
        match self {
            ParseError::TooLong { field, len, max } => RedirError::TooLong { field, len, max },
            ParseError::UnknownSessionType(tag) => RedirError::UnknownSessionType(tag),
            ParseError::UnknownAuthMethod(code) => RedirError::UnknownAuthMethod(code),
            ParseError::UnknownFeaturesCommand(code) => RedirError::UnknownFeaturesCommand(code),
            ParseError::Malformed(detail) => RedirError::Malformed { message, detail },
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

fn fail<T>(e: ParseError) -> Result<T, nom::Err<ParseError>> {
    Err(nom::Err::Failure(e))
}

fn byte(input: &[u8]) -> PResult<'_, u8> {
    nom::number::streaming::u8(input)
}

fn le16(input: &[u8]) -> PResult<'_, u16> {
    nom::number::streaming::le_u16(input)
}

fn le32(input: &[u8]) -> PResult<'_, u32> {
    nom::number::streaming::le_u32(input)
}

fn take(input: &[u8], n: usize) -> PResult<'_, &[u8]> {
    nom::bytes::streaming::take(n).parse(input)
}

fn array<const N: usize>(input: &[u8]) -> PResult<'_, [u8; N]> {
    let (input, bytes) = take(input, N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok((input, out))
}

/// The 8-byte header, type byte included: (byte 1, byte 3, seq).
fn header(input: &[u8]) -> PResult<'_, (u8, u8, u32)> {
    let (input, [_ty, byte1, _reserved, byte3]) = array::<4>(input)?;
    let (input, seq) = le32(input)?;
    Ok((input, (byte1, byte3, seq)))
}

/// A `u16` data length, checked against the limit as soon as it arrives.
fn data_length<'a>(input: &'a [u8], field: &'static str, limits: &Limits) -> PResult<'a, usize> {
    let (input, len) = le16(input)?;
    let len = usize::from(len);
    if len > limits.max_data {
        return fail(ParseError::TooLong { field, len, max: limits.max_data });
    }
    Ok((input, len))
}

fn data(input: &[u8], len: usize) -> PResult<'_, Bytes> {
    let (input, bytes) = take(input, len)?;
    Ok((input, Bytes::copy_from_slice(bytes)))
}

fn versions(input: &[u8]) -> PResult<'_, Versions> {
    let (input, [protocol_major, protocol_minor, firmware_major, firmware_minor]) = array::<4>(input)?;
    Ok((input, Versions { protocol_major, protocol_minor, firmware_major, firmware_minor }))
}

fn sol_settings(input: &[u8]) -> PResult<'_, SolSettings> {
    let (input, max_tx_buffer) = le16(input)?;
    let (input, tx_buffer_timeout) = le16(input)?;
    let (input, tx_overflow_timeout) = le16(input)?;
    let (input, host_session_rx_timeout) = le16(input)?;
    let (input, host_fifo_rx_flush_timeout) = le16(input)?;
    let (input, heartbeat_interval) = le16(input)?;
    let settings = SolSettings {
        max_tx_buffer,
        tx_buffer_timeout,
        tx_overflow_timeout,
        host_session_rx_timeout,
        host_fifo_rx_flush_timeout,
        heartbeat_interval,
    };
    Ok((input, settings))
}

fn oem_data(input: &[u8]) -> PResult<'_, Bytes> {
    let (input, len) = byte(input)?;
    data(input, usize::from(len))
}

fn ata_registers(input: &[u8]) -> PResult<'_, AtaRegisters> {
    let (input, [mask, error, sector_count, sector_number, lsb, msb, drive_select, status]) = array::<8>(input)?;
    let byte_count = u16::from_le_bytes([lsb, msb]);
    Ok((input, AtaRegisters { mask, error, sector_count, sector_number, byte_count, drive_select, status }))
}

/// Offsets 8..31 of 0x51, 0x52 and 0x54: the area and the transfer length at 9..10 (checked
/// against `max_data` when the message carries that much data, i.e. `data_field` is set).
fn register_area<'a>(
    input: &'a [u8],
    data_field: Option<&'static str>,
    limits: &Limits,
) -> PResult<'a, (RegisterArea, u16)> {
    let (input, cable_select) = byte(input)?;
    let (input, transfer_bytes) = le16(input)?;
    if let Some(field) = data_field {
        let len = usize::from(transfer_bytes);
        if len > limits.max_data {
            return fail(ParseError::TooLong { field, len, max: limits.max_data });
        }
    }
    let (input, packet_number) = byte(input)?;
    let (input, ata_in) = ata_registers(input)?;
    let (input, ata_out) = ata_registers(input)?;
    let (input, [key, asc, ascq]) = array::<3>(input)?;
    let area =
        RegisterArea { cable_select, packet_number, input: ata_in, output: ata_out, sense: Sense { key, asc, ascq } };
    Ok((input, (area, transfer_bytes)))
}

/// The 9-byte authentication header, type byte included: (status, method code, payload length).
/// The length is checked against the limit as soon as it arrives; the method code is checked
/// before it.
fn auth_header<'a>(input: &'a [u8], limits: &Limits) -> PResult<'a, (u8, AuthMethod, usize)> {
    let (input, [_ty, status, _r1, _r2, method]) = array::<5>(input)?;
    let Some(method) = AuthMethod::from_u8(method) else { return fail(ParseError::UnknownAuthMethod(method)) };
    let (input, len) = le32(input)?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > limits.max_auth_payload {
        return fail(ParseError::TooLong { field: "authentication payload", len, max: limits.max_auth_payload });
    }
    Ok((input, (status, method, len)))
}

/// Reads the length-prefixed strings of an authentication payload of `left` bytes, one at a
/// time, failing as soon as a length exceeds the limit or runs past the payload.
struct AuthStrings<'l> {
    left: usize,
    limits: &'l Limits,
}

impl AuthStrings<'_> {
    fn next<'a>(&mut self, input: &'a [u8], field: &'static str) -> PResult<'a, Bytes> {
        if self.left == 0 {
            return fail(ParseError::Malformed("authentication payload ends before its last string"));
        }
        let (input, len) = byte(input)?;
        let len = usize::from(len);
        if len > self.limits.max_auth_string {
            return fail(ParseError::TooLong { field, len, max: self.limits.max_auth_string });
        }
        if 1 + len > self.left {
            return fail(ParseError::Malformed("authentication string runs past the payload length"));
        }
        self.left -= 1 + len;
        data(input, len)
    }

    fn end(self) -> Result<(), nom::Err<ParseError>> {
        if self.left == 0 {
            Ok(())
        } else {
            fail(ParseError::Malformed("authentication payload has bytes after its last string"))
        }
    }
}

fn empty_payload(len: usize) -> Result<(), nom::Err<ParseError>> {
    if len == 0 {
        Ok(())
    } else {
        fail(ParseError::Malformed("this authentication method carries no payload here"))
    }
}

fn digest_method(method: AuthMethod) -> Option<DigestMethod> {
    match method {
        AuthMethod::Digest => Some(DigestMethod::Rfc2069),
        AuthMethod::DigestQop => Some(DigestMethod::Rfc2617),
        _ => None,
    }
}

fn auth_request<'a>(input: &'a [u8], limits: &Limits) -> PResult<'a, AuthRequest> {
    let (input, (_status, method, len)) = auth_header(input, limits)?;
    let mut strings = AuthStrings { left: len, limits };
    let (input, request) = match method {
        AuthMethod::Query => {
            empty_payload(len)?;
            (input, AuthRequest::Query)
        }
        AuthMethod::UsernamePassword => {
            let (input, username) = strings.next(input, "username")?;
            let (input, password) = strings.next(input, "password")?;
            strings.end()?;
            (input, AuthRequest::UsernamePassword { username, password })
        }
        AuthMethod::Kerberos => {
            let (input, token) = data(input, len)?;
            (input, AuthRequest::Kerberos { token })
        }
        AuthMethod::Digest | AuthMethod::DigestQop => {
            let method = digest_method(method).expect("a digest method");
            let (input, username) = strings.next(input, "username")?;
            let (input, realm) = strings.next(input, "realm")?;
            let (input, nonce) = strings.next(input, "nonce")?;
            let (input, uri) = strings.next(input, "uri")?;
            let (input, cnonce) = strings.next(input, "cnonce")?;
            let (input, nc) = strings.next(input, "nc")?;
            let (input, response) = strings.next(input, "response")?;
            let (input, qop) = match method {
                DigestMethod::Rfc2617 => strings.next(input, "qop")?,
                DigestMethod::Rfc2069 => (input, Bytes::new()),
            };
            strings.end()?;
            (input, AuthRequest::Digest(DigestAuth { method, username, realm, nonce, uri, cnonce, nc, response, qop }))
        }
    };
    Ok((input, request))
}

fn auth_reply<'a>(input: &'a [u8], limits: &Limits) -> PResult<'a, AuthReply> {
    let (input, (status, method, len)) = auth_header(input, limits)?;
    let mut strings = AuthStrings { left: len, limits };
    let (input, body) = match method {
        AuthMethod::Query => {
            let (input, methods) = data(input, len)?;
            (input, AuthReplyBody::Methods(methods))
        }
        AuthMethod::UsernamePassword => {
            empty_payload(len)?;
            (input, AuthReplyBody::UsernamePassword)
        }
        AuthMethod::Kerberos => {
            let (input, token) = data(input, len)?;
            (input, AuthReplyBody::Kerberos { token })
        }
        AuthMethod::Digest | AuthMethod::DigestQop => {
            let method = digest_method(method).expect("a digest method");
            if len == 0 {
                (input, AuthReplyBody::Digest { method, challenge: None })
            } else {
                let (input, realm) = strings.next(input, "realm")?;
                let (input, nonce) = strings.next(input, "nonce")?;
                let (input, qop) = match method {
                    DigestMethod::Rfc2617 => strings.next(input, "qop")?,
                    DigestMethod::Rfc2069 => (input, Bytes::new()),
                };
                strings.end()?;
                (input, AuthReplyBody::Digest { method, challenge: Some(DigestChallenge { realm, nonce, qop }) })
            }
        }
    };
    Ok((input, AuthReply { status, body }))
}

/// Parses a whole message, type byte included (so that offsets match redirection.md's tables).
fn parse_message<'a>(ty: MessageType, input: &'a [u8], limits: &Limits) -> PResult<'a, Message> {
    use MessageType as T;
    Ok(match ty {
        T::StartRedirectionSession => {
            let (input, _head) = take(input, 4)?;
            let (input, tag) = array::<4>(input)?;
            let Some(session_type) = SessionType::from_tag(tag) else {
                return fail(ParseError::UnknownSessionType(tag));
            };
            (input, Message::StartRedirectionSession { session_type })
        }
        T::StartRedirectionSessionReply => {
            let (input, [_ty, status, _r1, _r2]) = array::<4>(input)?;
            let (input, versions) = versions(input)?;
            let (input, oem_iana) = le32(input)?;
            let (input, oem_data) = oem_data(input)?;
            (input, Message::StartRedirectionSessionReply(SessionReply { status, versions, oem_iana, oem_data }))
        }
        T::EndRedirectionSession => {
            let (input, _) = take(input, 4)?;
            (input, Message::EndRedirectionSession)
        }
        T::AuthenticateSession => {
            let (input, request) = auth_request(input, limits)?;
            (input, Message::AuthenticateSession(request))
        }
        T::AuthenticateSessionReply => {
            let (input, reply) = auth_reply(input, limits)?;
            (input, Message::AuthenticateSessionReply(reply))
        }
        T::StartSol => {
            let (input, (_, _, seq)) = header(input)?;
            let (input, settings) = sol_settings(input)?;
            let (input, _reserved) = take(input, 4)?;
            (input, Message::StartSol { seq, settings })
        }
        T::StartSolReply => {
            let (input, (status, _, seq)) = header(input)?;
            let (input, settings) = sol_settings(input)?;
            let (input, _reserved) = take(input, 3)?;
            (input, Message::StartSolReply { status, seq, settings })
        }
        T::EndSol
        | T::EndSolReply
        | T::SolKeepAlivePing
        | T::SolKeepAlivePong
        | T::SolHeartbeat
        | T::EndIder
        | T::EndIderReply
        | T::IderKeepAlivePing
        | T::IderKeepAlivePong
        | T::IderResetOccurredResponse
        | T::IderHeartbeat => {
            let (input, (_, _, seq)) = header(input)?;
            let message = match ty {
                T::EndSol => Message::EndSol { seq },
                T::EndSolReply => Message::EndSolReply { seq },
                T::SolKeepAlivePing => Message::SolKeepAlivePing { seq },
                T::SolKeepAlivePong => Message::SolKeepAlivePong { seq },
                T::SolHeartbeat => Message::SolHeartbeat { seq },
                T::EndIder => Message::EndIder { seq },
                T::EndIderReply => Message::EndIderReply { seq },
                T::IderKeepAlivePing => Message::IderKeepAlivePing { seq },
                T::IderKeepAlivePong => Message::IderKeepAlivePong { seq },
                T::IderResetOccurredResponse => Message::IderResetOccurredResponse { seq },
                _ => Message::IderHeartbeat { seq },
            };
            (input, message)
        }
        T::SolControlsToHost => {
            let (input, (_, _, seq)) = header(input)?;
            let (input, controls) = array::<6>(input)?;
            (input, Message::SolControlsToHost { seq, controls })
        }
        T::SolDataToHost | T::SolDataFromHost => {
            let (input, (_, _, seq)) = header(input)?;
            let (input, len) = data_length(input, "SOL data", limits)?;
            let (input, data) = data(input, len)?;
            let message = if ty == T::SolDataToHost {
                Message::SolDataToHost { seq, data }
            } else {
                Message::SolDataFromHost { seq, data }
            };
            (input, message)
        }
        T::SolControlsFromHost => {
            let (input, (_, _, seq)) = header(input)?;
            let (input, [control, status]) = array::<2>(input)?;
            (input, Message::SolControlsFromHost { seq, control, status })
        }
        T::StartIder if input.get(1..4).is_some_and(|b| b != [0, 0, 0]) => {
            let (input, _ty) = byte(input)?;
            let (input, rx_timeout) = le16(input)?;
            let (input, tx_timeout) = le16(input)?;
            let (input, heartbeat) = le16(input)?;
            let (input, version) = byte(input)?;
            let (input, _zeros) = take(input, 10)?;
            (input, Message::StartIderAmtider(AmtiderOpen { rx_timeout, tx_timeout, heartbeat, version }))
        }
        T::StartIder => {
            let (input, (_, _, seq)) = header(input)?;
            let (input, rx_timeout) = le16(input)?;
            let (input, tx_timeout) = le16(input)?;
            let (input, heartbeat) = le16(input)?;
            let (input, version) = le32(input)?;
            (input, Message::StartIder(IderOpen { seq, rx_timeout, tx_timeout, heartbeat, version }))
        }
        T::StartIderReply => {
            let (input, (status, _, seq)) = header(input)?;
            let (input, versions) = versions(input)?;
            let (input, _timeouts) = take(input, 4)?;
            let (input, read_buffer_size) = le16(input)?;
            let (input, write_buffer_size) = le16(input)?;
            let (input, [_, features, _, _, _]) = array::<5>(input)?;
            let (input, oem_iana) = le32(input)?;
            let (input, oem_data) = oem_data(input)?;
            let reply = IderOpenReply {
                status,
                seq,
                versions,
                read_buffer_size,
                write_buffer_size,
                features,
                oem_iana,
                oem_data,
            };
            (input, Message::StartIderReply(reply))
        }
        T::IderResetOccurred => {
            let (input, (_, _, seq)) = header(input)?;
            let (input, mask) = byte(input)?;
            (input, Message::IderResetOccurred { seq, mask })
        }
        T::IderDisableEnableFeatures => {
            let (input, (_, _, seq)) = header(input)?;
            let (input, code) = byte(input)?;
            let (input, request) = match FeaturesCommand::from_u8(code) {
                Some(FeaturesCommand::GetSupported) => (input, FeaturesRequest::GetSupported),
                Some(FeaturesCommand::GetState) => (input, FeaturesRequest::GetState),
                Some(FeaturesCommand::SetState) => {
                    let (input, value) = le32(input)?;
                    (input, FeaturesRequest::SetState(value))
                }
                None => return fail(ParseError::UnknownFeaturesCommand(code)),
            };
            (input, Message::IderDisableEnableFeatures { seq, request })
        }
        T::IderDisableEnableFeaturesReply => {
            let (input, (_, _, seq)) = header(input)?;
            let (input, code) = byte(input)?;
            let Some(command) = FeaturesCommand::from_u8(code) else {
                return fail(ParseError::UnknownFeaturesCommand(code));
            };
            let (input, value) = le32(input)?;
            (input, Message::IderDisableEnableFeaturesReply { seq, command, value })
        }
        T::IderErrorOccurred => {
            let (input, (_, _, seq)) = header(input)?;
            let (input, [code, _, _]) = array::<3>(input)?;
            (input, Message::IderErrorOccurred { seq, code })
        }
        T::IderCommandWritten => {
            let (input, (_, attributes, seq)) = header(input)?;
            let (input, [cable_select, feature, sector_count, sector_number]) = array::<4>(input)?;
            let (input, byte_count_limit) = le16(input)?;
            let (input, [drive_select, command]) = array::<2>(input)?;
            let (input, packet) = array::<12>(input)?;
            let command = AtaCommand {
                cable_select,
                feature,
                sector_count,
                sector_number,
                byte_count_limit,
                drive_select,
                command,
                packet,
            };
            (input, Message::IderCommandWritten { seq, attributes, command })
        }
        T::IderCommandEndResponse | T::IderGetDataFromHost => {
            let (input, (_, attributes, seq)) = header(input)?;
            let (input, (area, transfer_bytes)) = register_area(input, None, limits)?;
            let message = if ty == T::IderCommandEndResponse {
                Message::IderCommandEndResponse { seq, attributes, transfer_bytes, area }
            } else {
                Message::IderGetDataFromHost { seq, attributes, transfer_bytes, area }
            };
            (input, message)
        }
        T::IderDataFromHost => {
            let (input, (_, attributes, seq)) = header(input)?;
            let (input, cable_select) = byte(input)?;
            let (input, len) = data_length(input, "IDE-R data", limits)?;
            let (input, [packet_number, _, _]) = array::<3>(input)?;
            let (input, data) = data(input, len)?;
            (input, Message::IderDataFromHost { seq, attributes, cable_select, packet_number, data })
        }
        T::IderDataToHost => {
            let (input, (_, attributes, seq)) = header(input)?;
            let (input, (area, len)) = register_area(input, Some("IDE-R data"), limits)?;
            let (input, _reserved) = take(input, 3)?;
            let (input, data) = data(input, usize::from(len))?;
            (input, Message::IderDataToHost { seq, attributes, area, data })
        }
        T::SessionRecorded => (&input[1..], Message::SessionRecorded),
    })
}

// ---------------------------------------------------------------------------------------------
// Authentication

/// The HTTP method hashed into HA2: always POST for redirection.
const DIGEST_HTTP_METHOD: &[u8] = b"POST";

/// The digest response for `auth` and `password`, as 32 lowercase hex digits, computed as
/// redirection.md §1.2 says (and as amtterm and MeshCommander do):
///
/// - HA1 = MD5(`username:realm:password`), HA2 = MD5(`POST:uri`), with `uri` as sent;
/// - with [`DigestMethod::Rfc2617`], MD5(`HA1:nonce:nc:cnonce:qop:HA2`);
/// - with [`DigestMethod::Rfc2069`], MD5(`HA1:nonce:HA2`) (cnonce and nc are sent but not hashed).
///
/// `auth.response` is not read: a console fills it with this value, a device compares it.
pub fn digest_response(auth: &DigestAuth, password: &[u8]) -> [u8; 32] {
    digest_response_for_method(DIGEST_HTTP_METHOD, auth, password)
}

fn digest_response_for_method(http_method: &[u8], auth: &DigestAuth, password: &[u8]) -> [u8; 32] {
    let ha1 = md5_hex(&[&auth.username, b":", &auth.realm, b":", password]);
    let ha2 = md5_hex(&[http_method, b":", &auth.uri]);
    match auth.method {
        DigestMethod::Rfc2617 => {
            md5_hex(&[&ha1, b":", &auth.nonce, b":", &auth.nc, b":", &auth.cnonce, b":", &auth.qop, b":", &ha2])
        }
        DigestMethod::Rfc2069 => md5_hex(&[&ha1, b":", &auth.nonce, b":", &ha2]),
    }
}

/// MD5 over the concatenation of `parts`, as lowercase hex.
fn md5_hex(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut out = [0u8; 32];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX_DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = HEX_DIGITS[usize::from(b & 0x0f)];
    }
    out
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

impl DigestAuth {
    /// The first digest request of a console: the username and [`REDIRECTION_URI`], every other
    /// string empty (the device answers with a [`DigestChallenge`]).
    pub fn initial(method: DigestMethod, username: &[u8]) -> Self {
        DigestAuth {
            method,
            username: Bytes::copy_from_slice(username),
            realm: Bytes::new(),
            nonce: Bytes::new(),
            uri: Bytes::from_static(REDIRECTION_URI),
            cnonce: Bytes::new(),
            nc: Bytes::new(),
            response: Bytes::new(),
            qop: Bytes::new(),
        }
    }

    /// The console's answer to `challenge`: the challenge's realm, nonce and qop,
    /// [`REDIRECTION_URI`], the given `cnonce` (clients send 32 lowercase hex digits),
    /// [`DIGEST_NONCE_COUNT`], and the response computed by [`digest_response`].
    pub fn answer(
        method: DigestMethod,
        username: &[u8],
        password: &[u8],
        challenge: &DigestChallenge,
        cnonce: &[u8],
    ) -> Self {
        let mut auth = DigestAuth {
            method,
            username: Bytes::copy_from_slice(username),
            realm: challenge.realm.clone(),
            nonce: challenge.nonce.clone(),
            uri: Bytes::from_static(REDIRECTION_URI),
            cnonce: Bytes::copy_from_slice(cnonce),
            nc: Bytes::from_static(DIGEST_NONCE_COUNT),
            response: Bytes::new(),
            qop: match method {
                DigestMethod::Rfc2617 => challenge.qop.clone(),
                DigestMethod::Rfc2069 => Bytes::new(),
            },
        };
        auth.response = Bytes::copy_from_slice(&digest_response(&auth, password));
        auth
    }
}

/// What a device expects of an AuthenticateSession: the account, and for digest, the realm and
/// nonce of the challenge it sent.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub username: &'a [u8],
    pub password: &'a [u8],
    pub realm: &'a [u8],
    pub nonce: &'a [u8],
}

/// Why [`verify`] refused an AuthenticateSession.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Kerberos authentication is not supported")]
    KerberosUnsupported,
    #[error("a query carries no credentials")]
    NoCredentials,
    #[error("the digest request answers no challenge (realm or nonce is not the one sent)")]
    WrongChallenge,
    #[error("wrong username or password")]
    WrongCredentials,
}

/// Checks an AuthenticateSession against what the device expects. Kerberos is refused
/// ([`AuthError::KerberosUnsupported`]); a digest request must echo the challenge's realm and
/// nonce and carry the right response (for either digest method). Comparisons of secrets do not
/// stop at the first differing byte.
pub fn verify(request: &AuthRequest, expected: &Credentials<'_>) -> Result<(), AuthError> {
    match request {
        AuthRequest::Query => Err(AuthError::NoCredentials),
        AuthRequest::Kerberos { .. } => Err(AuthError::KerberosUnsupported),
        AuthRequest::UsernamePassword { username, password } => {
            let user_ok = equal_no_early_exit(username, expected.username);
            let password_ok = equal_no_early_exit(password, expected.password);
            if user_ok & password_ok {
                Ok(())
            } else {
                Err(AuthError::WrongCredentials)
            }
        }
        AuthRequest::Digest(auth) => {
            if auth.realm != expected.realm || auth.nonce != expected.nonce {
                return Err(AuthError::WrongChallenge);
            }
            let user_ok = equal_no_early_exit(&auth.username, expected.username);
            let response_ok = equal_no_early_exit(&auth.response, &digest_response(auth, expected.password));
            if user_ok & response_ok {
                Ok(())
            } else {
                Err(AuthError::WrongCredentials)
            }
        }
    }
}

/// Byte equality that reads every byte (lengths are not secret).
fn equal_no_early_exit(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------------
// Sequence numbers

/// How a peer's sequence numbers must advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SequenceRule {
    /// Exactly one more than the previous message's (IDE-R: both sides number their messages
    /// 0, 1, 2, … with no gaps, and MeshCommander aborts otherwise). Wraps after `u32::MAX`.
    Consecutive,
    /// Never smaller than the previous message's (SOL: amtterm sends 0 throughout, MeshCommander
    /// and devices a running counter).
    NonDecreasing,
}

/// A sequence number that broke its [`SequenceRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("sequence number {got}, expected {expected}")]
    Gap { expected: u32, got: u32 },
    #[error("sequence number {got} after {previous}")]
    Backwards { previous: u32, got: u32 },
}

/// Checks the sequence numbers of the messages one side sends. Feed it only that side's
/// messages: amtterm echoes the device's heartbeats byte for byte, sequence number included, so a
/// driver that checks amtterm's numbers must skip its echoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceCheck {
    rule: SequenceRule,
    /// The number the next message must carry (`Consecutive`) or must not be below
    /// (`NonDecreasing`); `None` before the first message under `NonDecreasing`.
    next: Option<u32>,
}

impl SequenceCheck {
    /// Consecutive numbers starting at `first` (0 for IDE-R).
    pub fn consecutive(first: u32) -> Self {
        Self { rule: SequenceRule::Consecutive, next: Some(first) }
    }

    /// Non-decreasing numbers starting anywhere.
    pub fn non_decreasing() -> Self {
        Self { rule: SequenceRule::NonDecreasing, next: None }
    }

    pub fn rule(&self) -> SequenceRule {
        self.rule
    }

    /// Checks the next sequence number. A refused number leaves the check where it was.
    pub fn check(&mut self, seq: u32) -> Result<(), SequenceError> {
        match (self.rule, self.next) {
            (SequenceRule::Consecutive, Some(expected)) if seq != expected => {
                Err(SequenceError::Gap { expected, got: seq })
            }
            (SequenceRule::Consecutive, _) => {
                self.next = Some(seq.wrapping_add(1));
                Ok(())
            }
            (SequenceRule::NonDecreasing, Some(previous)) if seq < previous => {
                Err(SequenceError::Backwards { previous, got: seq })
            }
            (SequenceRule::NonDecreasing, _) => {
                self.next = Some(seq);
                Ok(())
            }
        }
    }

    /// Checks `message`'s sequence number; messages without one (session setup and
    /// authentication) pass unchecked.
    pub fn check_message(&mut self, message: &Message) -> Result<(), SequenceError> {
        match message.seq() {
            Some(seq) => self.check(seq),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "redir_test.rs"]
mod tests;
