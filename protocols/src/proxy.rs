//! The PROXY protocol version 2 (HAProxy's `send-proxy-v2`): the binary header a TCP load balancer
//! puts in front of a relayed connection to tell the server who the client really is. A streaming
//! decoder and an encoder, no I/O.
//!
//! As specified by HAProxy's `doc/proxy-protocol.txt` (§2.2): a 16-byte fixed part (the 12-byte
//! signature `\r\n\r\n\0\r\nQUIT\n`, a version and command byte, an address family and transport
//! byte, and a big-endian `u16` length), then exactly that many bytes: the addresses of the
//! family, then TLVs. The whole header is always `16 + length` bytes.
//!
//! What this module does: [`decode`] a header from the front of a buffer, failing as soon as the
//! bytes seen so far cannot start one (a TLS ClientHello fails on its first byte, a version 1 text
//! header on its sixth); [`header_len`] says how many bytes the header takes once its fixed part
//! has arrived, so that a reader can take exactly the header off a socket and leave what follows
//! (the TLS handshake) untouched; [`encode`] writes a header as HAProxy does (for tests and test
//! tools).
//!
//! What it does not do: version 1 (the text header is recognised and refused with its own error),
//! TLV contents (TLVs are bounds-checked and skipped; a CRC32C TLV is not verified), AF_UNIX
//! addresses (skipped; reported as no address), or decide whom to believe (a header is only
//! meaningful from a trusted load balancer: that is the gateway's `proxy_header`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nom::Parser;

/// The first 12 bytes of every version 2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Bytes before the addresses: signature, version and command, family and transport, length.
pub const FIXED_LEN: usize = 16;

/// Longest header accepted, fixed part included (so the length field may announce at most 520).
/// The specification designs headers to fit in the smallest TCP segment every host must accept
/// (576 − 40 = 536 bytes); addresses take at most 216 of them (AF_UNIX), the rest is room for
/// TLVs. A longer length field is a [`ProxyError::TooLong`] as soon as it arrives.
pub const MAX_HEADER_LEN: usize = 536;

/// What a version 1 (text) header starts with.
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// The only version defined: the high nibble of the 13th byte.
const VERSION: u8 = 2;

/// Size of a TLV's type and length.
const TLV_HEAD_LEN: usize = 3;

/// The low nibble of the 13th byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// A connection the load balancer made on its own behalf (a health check): the real
    /// endpoints are the connection's own, and the rest of the header is ignored.
    Local,
    /// A relayed connection: the header carries the client's addresses.
    Proxy,
}

impl Command {
    /// The command for a wire code, or `None` for an unassigned one.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0x0 => Some(Command::Local),
            0x1 => Some(Command::Proxy),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Command::Local => 0x0,
            Command::Proxy => 0x1,
        }
    }
}

/// The high nibble of the 14th byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Unspec,
    Inet,
    Inet6,
    Unix,
}

impl Family {
    /// The family for a wire code, or `None` for an unassigned one.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0x0 => Some(Family::Unspec),
            0x1 => Some(Family::Inet),
            0x2 => Some(Family::Inet6),
            0x3 => Some(Family::Unix),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Family::Unspec => 0x0,
            Family::Inet => 0x1,
            Family::Inet6 => 0x2,
            Family::Unix => 0x3,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Unspec => "AF_UNSPEC",
            Family::Inet => "AF_INET",
            Family::Inet6 => "AF_INET6",
            Family::Unix => "AF_UNIX",
        })
    }
}

/// The low nibble of the 14th byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Unspec,
    Stream,
    Dgram,
}

impl Transport {
    /// The transport for a wire code, or `None` for an unassigned one.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0x0 => Some(Transport::Unspec),
            0x1 => Some(Transport::Stream),
            0x2 => Some(Transport::Dgram),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Transport::Unspec => 0x0,
            Transport::Stream => 0x1,
            Transport::Dgram => 0x2,
        }
    }
}

/// The source (the client) and destination (the address the client connected to, on the load
/// balancer) of a relayed connection. Both are of one family on the wire; IPv6 flow information
/// and scope ids are not carried (they decode as 0 and are not encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addresses {
    Inet { source: SocketAddrV4, destination: SocketAddrV4 },
    Inet6 { source: SocketAddrV6, destination: SocketAddrV6 },
}

impl Addresses {
    /// The addresses of a connection from `source` to `destination`. When one is IPv4 and the
    /// other IPv6, the IPv4 one becomes IPv4-mapped IPv6 (`::ffff:a.b.c.d`), as HAProxy does.
    pub fn from_pair(source: SocketAddr, destination: SocketAddr) -> Self {
        match (source, destination) {
            (SocketAddr::V4(source), SocketAddr::V4(destination)) => Addresses::Inet { source, destination },
            (source, destination) => Addresses::Inet6 { source: to_v6(source), destination: to_v6(destination) },
        }
    }

    /// The client's address.
    pub fn source(&self) -> SocketAddr {
        match self {
            Addresses::Inet { source, .. } => SocketAddr::V4(*source),
            Addresses::Inet6 { source, .. } => SocketAddr::V6(*source),
        }
    }

    /// The address the client connected to.
    pub fn destination(&self) -> SocketAddr {
        match self {
            Addresses::Inet { destination, .. } => SocketAddr::V4(*destination),
            Addresses::Inet6 { destination, .. } => SocketAddr::V6(*destination),
        }
    }

    fn family(&self) -> Family {
        match self {
            Addresses::Inet { .. } => Family::Inet,
            Addresses::Inet6 { .. } => Family::Inet6,
        }
    }
}

fn to_v6(addr: SocketAddr) -> SocketAddrV6 {
    match addr {
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => v6,
    }
}

/// A decoded header: what a receiver needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    pub command: Command,
    /// The relayed connection's addresses: `Some` only for [`Command::Proxy`] with AF_INET or
    /// AF_INET6 and a STREAM or DGRAM transport. `None` for LOCAL (whose addresses, if any, are
    /// ignored, as the specification requires), for AF_UNSPEC and AF_UNIX, and for an UNSPEC
    /// transport (whose address block has no defined layout).
    pub addresses: Option<Addresses>,
}

impl Header {
    /// A LOCAL header, as HAProxy sends it on health checks (16 bytes, AF_UNSPEC, no addresses).
    pub fn local() -> Self {
        Header { command: Command::Local, addresses: None }
    }

    /// A PROXY header for a relayed TCP connection from `source` to `destination`.
    pub fn proxy(source: SocketAddr, destination: SocketAddr) -> Self {
        Header { command: Command::Proxy, addresses: Some(Addresses::from_pair(source, destination)) }
    }

    /// The number of bytes [`encode`] writes.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + self.addresses.map_or(0, |a| address_len(a.family()))
    }
}

/// Why bytes are not a PROXY v2 header we accept. Every variant is the sender's fault (or a
/// sender that does not speak the PROXY protocol at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header: the first bytes differ from the version 2 signature")]
    NotProxy,
    #[error("a PROXY protocol version 1 (text) header; only version 2 (binary) is accepted")]
    Version1,
    #[error("PROXY header version {0}; only version 2 is defined")]
    UnsupportedVersion(u8),
    #[error("unassigned PROXY v2 command {0:#x} (LOCAL is 0x0, PROXY 0x1)")]
    UnknownCommand(u8),
    #[error("unassigned PROXY v2 address family {0:#x}")]
    UnknownFamily(u8),
    #[error("unassigned PROXY v2 transport protocol {0:#x}")]
    UnknownTransport(u8),
    #[error("the PROXY v2 length field announces {len} bytes, over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("the PROXY v2 length field announces {len} bytes, fewer than the {needed} of {family} addresses")]
    TooShort { family: Family, len: usize, needed: usize },
    #[error("the PROXY v2 header ends {left} byte(s) into the TLV at byte {offset}, before its type and length")]
    TlvTruncated { offset: usize, left: usize },
    #[error("the PROXY v2 TLV of type {tlv_type:#04x} at byte {offset} announces {len} bytes, but {left} remain")]
    TlvTooLong { offset: usize, tlv_type: u8, len: usize, left: usize },
}

/// The length of the whole header that `input` starts with, once its 16-byte fixed part has
/// arrived: `Ok(Some(16 + length))`. `Ok(None)` while fewer bytes have arrived and they could
/// still start a header; an error as soon as they cannot (the same errors as [`decode`] for
/// those bytes). Bytes after the fixed part are not looked at.
pub fn header_len(input: &[u8]) -> Result<Option<usize>, ProxyError> {
    match fixed(input) {
        Ok((_, fixed)) => Ok(Some(FIXED_LEN + fixed.len)),
        Err(nom::Err::Incomplete(_)) => Ok(None),
        Err(nom::Err::Error(Fail(e)) | nom::Err::Failure(Fail(e))) => Err(e),
    }
}

/// Decodes the header at the front of `input`.
///
/// Returns `Ok(Some((header, consumed)))` with the header's length in bytes (what follows it is
/// the relayed connection's own data), `Ok(None)` when `input` holds only the beginning of a
/// header (read more and call again; never once `input` holds the `16 + length` bytes the header
/// announces), or an error as soon as the bytes can never become a header we accept.
pub fn decode(input: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    match header(input) {
        Ok((rest, header)) => Ok(Some((header, input.len() - rest.len()))),
        Err(nom::Err::Incomplete(_)) => Ok(None),
        Err(nom::Err::Error(Fail(e)) | nom::Err::Failure(Fail(e))) => Err(e),
    }
}

/// Appends the wire form of `header` to `out`, as HAProxy writes it: AF_INET or AF_INET6 over
/// STREAM with the addresses and no TLVs, or AF_UNSPEC with no address block when `addresses`
/// is `None`. A LOCAL header with addresses keeps them on the wire (receivers ignore them).
pub fn encode(header: &Header, out: &mut Vec<u8>) {
    out.reserve(header.encoded_len());
    out.extend_from_slice(&SIGNATURE);
    out.push((VERSION << 4) | header.command.code());
    let Some(addresses) = header.addresses else {
        out.push((Family::Unspec.code() << 4) | Transport::Unspec.code());
        out.extend_from_slice(&0u16.to_be_bytes());
        return;
    };
    out.push((addresses.family().code() << 4) | Transport::Stream.code());
    // At most 36: fits in the u16.
    out.extend_from_slice(&(address_len(addresses.family()) as u16).to_be_bytes());
    match addresses {
        Addresses::Inet { source, destination } => {
            out.extend_from_slice(&source.ip().octets());
            out.extend_from_slice(&destination.ip().octets());
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
        }
        Addresses::Inet6 { source, destination } => {
            out.extend_from_slice(&source.ip().octets());
            out.extend_from_slice(&destination.ip().octets());
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
        }
    }
}

/// Size of the address block of a family over STREAM or DGRAM: two addresses, then (for
/// AF_INET and AF_INET6) two ports.
fn address_len(family: Family) -> usize {
    match family {
        Family::Unspec => 0,
        Family::Inet => 2 * 4 + 2 * 2,
        Family::Inet6 => 2 * 16 + 2 * 2,
        Family::Unix => 2 * 108,
    }
}

/// The address block's layout, when the specification defines one: for a known family over
/// STREAM or DGRAM. AF_UNSPEC and the UNSPEC transport leave it undefined (the whole block is
/// skipped, TLVs included, since where they start is unknown).
fn block_layout(family: Family, transport: Transport) -> Option<usize> {
    match (family, transport) {
        (Family::Unspec, _) | (_, Transport::Unspec) => None,
        (family, Transport::Stream | Transport::Dgram) => Some(address_len(family)),
    }
}

/// The fixed part, checked.
#[derive(Debug)]
struct Fixed {
    command: Command,
    family: Family,
    transport: Transport,
    /// The length field: bytes after the fixed part.
    len: usize,
}

/// A [`ProxyError`] as nom's error type.
#[derive(Debug)]
struct Fail(ProxyError);

impl nom::error::ParseError<&[u8]> for Fail {
    // Never reached: the signature is compared by hand, and nom's streaming number parsers and
    // `take` only ever ask for more input. Were it reached, the bytes are no header we can read.
    fn from_error_kind(_: &[u8], _: nom::error::ErrorKind) -> Self {
        Fail(ProxyError::NotProxy)
    }

    fn append(_: &[u8], _: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

type PResult<'a, T> = nom::IResult<&'a [u8], T, Fail>;

fn fail<T>(e: ProxyError) -> PResult<'static, T> {
    Err(nom::Err::Failure(Fail(e)))
}

/// The 12-byte signature, refused at the first byte that differs from it. A version 1 header
/// ("PROXY ") is told apart once its sixth byte has arrived; until then a prefix of "PROXY " is
/// incomplete, anything else not a header.
fn signature(input: &[u8]) -> PResult<'_, ()> {
    let seen = input.len().min(SIGNATURE.len());
    if input[..seen] == SIGNATURE[..seen] {
        if seen < SIGNATURE.len() {
            return Err(nom::Err::Incomplete(nom::Needed::new(SIGNATURE.len() - seen)));
        }
        return Ok((&input[seen..], ()));
    }
    let seen = input.len().min(V1_SIGNATURE.len());
    if input[..seen] == V1_SIGNATURE[..seen] {
        if seen < V1_SIGNATURE.len() {
            return Err(nom::Err::Incomplete(nom::Needed::new(V1_SIGNATURE.len() - seen)));
        }
        return fail(ProxyError::Version1);
    }
    fail(ProxyError::NotProxy)
}

/// The 16-byte fixed part, each field checked as soon as it arrives: the length against
/// [`MAX_HEADER_LEN`] and against the size of the announced family's addresses.
fn fixed(input: &[u8]) -> PResult<'_, Fixed> {
    let (input, ()) = signature(input)?;
    let (input, version_command) = nom::number::streaming::be_u8(input)?;
    let version = version_command >> 4;
    if version != VERSION {
        return fail(ProxyError::UnsupportedVersion(version));
    }
    let code = version_command & 0x0f;
    let Some(command) = Command::from_code(code) else { return fail(ProxyError::UnknownCommand(code)) };

    let (input, family_transport) = nom::number::streaming::be_u8(input)?;
    // A LOCAL header's family is ignored, whatever it is (proxy-protocol.txt: "discard the
    // protocol block including the family").
    let (family, transport) = match command {
        Command::Local => (Family::Unspec, Transport::Unspec),
        Command::Proxy => {
            let code = family_transport >> 4;
            let Some(family) = Family::from_code(code) else { return fail(ProxyError::UnknownFamily(code)) };
            let code = family_transport & 0x0f;
            let Some(transport) = Transport::from_code(code) else {
                return fail(ProxyError::UnknownTransport(code));
            };
            (family, transport)
        }
    };

    let (input, len) = nom::number::streaming::be_u16(input)?;
    let len = usize::from(len);
    let max = MAX_HEADER_LEN - FIXED_LEN;
    if len > max {
        return fail(ProxyError::TooLong { len, max });
    }
    if let Some(needed) = block_layout(family, transport) {
        if len < needed {
            return fail(ProxyError::TooShort { family, len, needed });
        }
    }
    Ok((input, Fixed { command, family, transport, len }))
}

/// A whole header. The block after the fixed part is looked at only once all of it has arrived.
fn header(input: &[u8]) -> PResult<'_, Header> {
    let (input, fixed) = fixed(input)?;
    let (input, block) = nom::bytes::streaming::take(fixed.len).parse(input)?;
    let addresses = match (fixed.command, block_layout(fixed.family, fixed.transport)) {
        (Command::Local, _) | (Command::Proxy, None) => None,
        (Command::Proxy, Some(addresses_len)) => {
            // `fixed` checked that the block holds the addresses.
            let (addresses, tlvs) = block.split_at(addresses_len);
            check_tlvs(tlvs, FIXED_LEN + addresses_len).map_err(|e| nom::Err::Failure(Fail(e)))?;
            match fixed.family {
                Family::Inet => Some(inet(array(addresses))),
                Family::Inet6 => Some(inet6(array(addresses))),
                Family::Unspec | Family::Unix => None,
            }
        }
    };
    Ok((input, Header { command: fixed.command, addresses }))
}

/// The first `N` bytes of `bytes` (callers pass exactly `N`; a shorter slice is zero-padded).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = bytes.len().min(N);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

/// AF_INET addresses: source and destination addresses, then source and destination ports.
fn inet(block: [u8; 12]) -> Addresses {
    let ip = |at: usize| Ipv4Addr::from(array::<4>(&block[at..at + 4]));
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    Addresses::Inet { source: SocketAddrV4::new(ip(0), port(8)), destination: SocketAddrV4::new(ip(4), port(10)) }
}

/// AF_INET6 addresses, laid out as AF_INET's.
fn inet6(block: [u8; 36]) -> Addresses {
    let ip = |at: usize| Ipv6Addr::from(array::<16>(&block[at..at + 16]));
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    Addresses::Inet6 {
        source: SocketAddrV6::new(ip(0), port(32), 0, 0),
        destination: SocketAddrV6::new(ip(16), port(34), 0, 0),
    }
}

/// Walks the TLVs (a type byte, a big-endian `u16` length, that many bytes) that fill the rest
/// of the header, checking that each fits; their contents are not interpreted. `offset` is where
/// they start in the header, for the error.
fn check_tlvs(mut tlvs: &[u8], mut offset: usize) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        let [tlv_type, hi, lo] = match tlvs {
            [tlv_type, hi, lo, ..] => [*tlv_type, *hi, *lo],
            _ => return Err(ProxyError::TlvTruncated { offset, left: tlvs.len() }),
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let left = tlvs.len() - TLV_HEAD_LEN;
        if len > left {
            return Err(ProxyError::TlvTooLong { offset, tlv_type, len, left });
        }
        tlvs = &tlvs[TLV_HEAD_LEN + len..];
        offset += TLV_HEAD_LEN + len;
    }
    Ok(())
}

#[cfg(test)]
#[path = "proxy_test.rs"]
mod tests;
