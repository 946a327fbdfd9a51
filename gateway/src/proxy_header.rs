//! The PROXY protocol v2 on the gateway's side: which peers may send the header
//! ([`TrustedProxies`]) and reading it off a freshly accepted connection ([`read_header`]), before
//! the TLS handshake.
//!
//! Behind HAProxy in TCP mode (`mode tcp`, `send-proxy-v2` on the `server` lines), every
//! connection the gateway accepts comes from the load balancer, and the header it sends first is
//! the only place the device's or technician's real address appears. The header is believed only
//! from a trusted proxy, and a listener that expects it must not guess whether it is there:
//! proxy-protocol.txt §2, "The receiver MUST be configured to only receive the protocol described
//! in this specification and MUST not try to guess whether the protocol header is present or not".
//!
//! What this module does not do: decode bytes (that is [`protocols::proxy`]), or decide which
//! listeners expect the header and what to do with a peer outside the trusted list (that is the
//! listeners' configuration).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use protocols::proxy::{self, Command, ProxyError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

// ---------------------------------------------------------------------------------------------
// Trusted proxies

/// The load balancers whose PROXY headers are believed: a list of networks, written in the
/// configuration as strings (`["127.0.0.1/32", "10.0.0.0/8", "::1/128"]`; a bare address means
/// that one address). Empty by default: nobody is trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct TrustedProxies {
    networks: Vec<Network>,
}

impl TrustedProxies {
    /// Parses every entry; the first bad one is the error, named in it.
    pub fn new<I, S>(entries: I) -> Result<Self, TrustedProxyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let networks = entries.into_iter().map(|entry| entry.as_ref().parse()).collect::<Result<_, _>>()?;
        Ok(Self { networks })
    }

    /// Whether `ip` is in one of the networks. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as
    /// a dual-stack listener reports an IPv4 peer) is matched as the IPv4 address it maps (so
    /// `10.0.0.0/8` covers `::ffff:10.1.2.3`, and `::/0` does not).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|network| network.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// The networks, as parsed.
    pub fn networks(&self) -> &[Network] {
        &self.networks
    }
}

impl TryFrom<Vec<String>> for TrustedProxies {
    type Error = TrustedProxyError;

    fn try_from(entries: Vec<String>) -> Result<Self, Self::Error> {
        Self::new(entries)
    }
}

impl From<TrustedProxies> for Vec<String> {
    fn from(trusted: TrustedProxies) -> Self {
        trusted.networks.iter().map(Network::to_string).collect()
    }
}

/// One network of [`TrustedProxies`]: an address and a prefix length, with no bits set past the
/// prefix. Written `10.0.0.0/8`, `::1/128`, or a bare address for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(network)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(ip) & mask == u128::from(network)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An entry of the trusted proxies that is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trusted proxy {entry:?} {problem}")]
pub struct TrustedProxyError {
    pub entry: String,
    pub problem: String,
}

impl FromStr for Network {
    type Err = TrustedProxyError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let error = |problem: String| TrustedProxyError { entry: entry.to_owned(), problem };
        let (addr, prefix) = match entry.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (entry.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            error(format!("is not an IP address or a network such as 10.0.0.0/8 or ::1/128 ({addr:?} is no address)"))
        })?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= bits => prefix,
                _ => {
                    return Err(error(format!("has prefix length {prefix:?}: an {} one is 0 to {bits}", family(addr))))
                }
            },
        };
        let network = mask(addr, prefix);
        if network != addr {
            return Err(error(format!("has bits set past its /{prefix} prefix: write {network}/{prefix}")));
        }
        Ok(canonical_network(Network { addr, prefix }))
    }
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// `addr` with the bits past `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// A network inside `::ffff:0:0/96` (IPv4-mapped) as the IPv4 network it maps, since
/// [`TrustedProxies::contains`] matches mapped addresses as IPv4.
fn canonical_network(network: Network) -> Network {
    match network.addr {
        IpAddr::V6(v6) if network.prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => Network { addr: IpAddr::V4(v4), prefix: network.prefix - 96 },
            None => network,
        },
        _ => network,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the header

/// Why no PROXY header could be read. The messages are written for an operator reading the
/// gateway's log; the caller adds the load balancer's address (the connection's peer).
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error(
        "no complete PROXY v2 header from the load balancer within {timeout:?} ({received} bytes received): \
         a load balancer sends it at once, so check `send-proxy-v2` on its server lines for this gateway"
    )]
    Timeout { timeout: Duration, received: usize },
    #[error(
        "the connection closed after {received} bytes, before a complete PROXY v2 header \
         (a health check without the header? HAProxy sends it on checks unless they have their own \
         `port` or `addr`; add `check-send-proxy` then)"
    )]
    Eof { received: usize },
    #[error(
        "expected a PROXY v2 header from the load balancer, but {}: set `send-proxy-v2` on its server lines \
         for this gateway (or, if this peer is no load balancer, take it out of the trusted proxies)",
        describe_first_byte(*.first_byte)
    )]
    NotProxy { first_byte: u8 },
    #[error(
        "the load balancer sent a PROXY version 1 (text) header: use `send-proxy-v2` instead of `send-proxy` \
         on its server lines for this gateway"
    )]
    Version1,
    #[error("malformed PROXY v2 header from the load balancer: {0}")]
    Malformed(ProxyError),
    #[error("reading the PROXY v2 header: {0}")]
    Io(#[from] std::io::Error),
}

fn describe_first_byte(first_byte: u8) -> String {
    match first_byte {
        // A TLS record of type handshake: the client started its handshake directly.
        0x16 => "a TLS handshake started instead (first byte 0x16)".to_owned(),
        other => format!("the connection starts with byte {other:#04x}"),
    }
}

impl ProxyHeaderError {
    fn from_decode(error: ProxyError, first_byte: u8) -> Self {
        match error {
            ProxyError::NotProxy => ProxyHeaderError::NotProxy { first_byte },
            ProxyError::Version1 => ProxyHeaderError::Version1,
            other => ProxyHeaderError::Malformed(other),
        }
    }
}

/// Reads the PROXY v2 header at the start of `stream`, within `timeout` for the whole header.
///
/// Reads exactly the header's bytes and not one more (the 16-byte fixed part, then exactly the
/// length it announces), so that what follows (the TLS handshake) is left in `stream`. Fails as
/// soon as the bytes read cannot start a header (a device speaking TLS directly fails on its
/// first byte). The timeout should be a few seconds at least (proxy-protocol.txt suggests 3, to
/// cover a TCP retransmit).
///
/// Returns the client's address (the source) for a PROXY header with AF_INET or AF_INET6, with
/// an IPv4-mapped IPv6 address given as IPv4; `None` for LOCAL (the load balancer's own
/// connection, a health check) and for families without an address (AF_UNSPEC, AF_UNIX): the
/// caller then uses the connection's own peer address.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = [0u8; proxy::MAX_HEADER_LEN];
    let mut received = 0;
    let result = tokio::time::timeout(timeout, read_exactly_header(stream, &mut buf, &mut received)).await;
    match result {
        Ok(result) => result,
        Err(_elapsed) => Err(ProxyHeaderError::Timeout { timeout, received }),
    }
}

async fn read_exactly_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8; proxy::MAX_HEADER_LEN],
    received: &mut usize,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    loop {
        // How far to read: the fixed part, then the whole header once the fixed part tells.
        // `header_len` never announces more than MAX_HEADER_LEN, and `received` never passes it.
        let want = match proxy::header_len(&buf[..*received]) {
            Ok(None) => proxy::FIXED_LEN,
            Ok(Some(len)) => len,
            Err(e) => return Err(ProxyHeaderError::from_decode(e, buf[0])),
        };
        if *received == want {
            break;
        }
        let n = stream.read(&mut buf[*received..want]).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Eof { received: *received });
        }
        *received += n;
    }
    match proxy::decode(&buf[..*received]) {
        Ok(Some((header, _))) => Ok(match (header.command, header.addresses) {
            (Command::Proxy, Some(addresses)) => {
                let source = addresses.source();
                Some(SocketAddr::new(source.ip().to_canonical(), source.port()))
            }
            _ => None,
        }),
        Err(e) => Err(ProxyHeaderError::from_decode(e, buf[0])),
        // `decode` never wants more than the length `header_len` announced.
        Ok(None) => Err(ProxyHeaderError::Io(std::io::Error::other(
            "the PROXY v2 decoder wanted more bytes than the header announces",
        ))),
    }
}

#[cfg(test)]
#[path = "proxy_header_test.rs"]
mod tests;
