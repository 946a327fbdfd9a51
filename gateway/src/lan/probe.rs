//! What an AMT PC says about itself to anyone on its LAN, without credentials:
//!
//! - an RMCP/ASF presence ping on UDP 623 gets a pong whose OEM bytes carry AMT's major and
//!   minor version, its provisioning state and its web port ([`protocols::rmcp`]);
//! - its web/WS-MAN port answers any request with `401 Unauthorized` and a `Server: Intel(R)
//!   Active Management Technology X.Y.Z` header — on 16993 over TLS with its own (usually
//!   self-signed) certificate, whose fingerprint the probe also reports, and on 16992 in the
//!   clear where the firmware still opens it (before CSME 16.1).
//!
//! Every probe is bounded by a timeout and the answers by a size cap; what is not AMT (no
//! answer, another server) is reported as such, never as an error.
//!
//! What it does not do: pace probes (`scan`), or authenticate (`crate::wsman`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header;
use hyper_util::rt::TokioIo;
use protocols::rmcp::{self, AmtPresence, Message};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::redirect::pin::PinVerifier;

/// AMT's web and WS-MAN ports.
pub const HTTP_PORT: u16 = 16992;
pub const HTTPS_PORT: u16 = 16993;
/// AMT's redirection ports.
pub const REDIRECTION_PORT: u16 = 16994;
pub const REDIRECTION_TLS_PORT: u16 = 16995;

/// What AMT's `Server:` header starts with.
const AMT_SERVER: &str = "Intel(R) Active Management Technology";

/// What a web port answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebAnswer {
    pub port: u16,
    pub status: u16,
    /// The `Server:` header.
    pub server: Option<String>,
    /// SHA-256 of the TLS certificate (16993).
    pub fingerprint: Option<String>,
}

impl WebAnswer {
    /// The AMT version in the `Server:` header, when it is AMT's.
    pub fn amt_version(&self) -> Option<String> {
        amt_version(self.server.as_deref()?)
    }
}

/// `16.1.27` from `Intel(R) Active Management Technology 16.1.27`.
pub fn amt_version(server: &str) -> Option<String> {
    let rest = server.trim().strip_prefix(AMT_SERVER)?.trim();
    let version = rest.split_whitespace().next()?;
    let valid = !version.is_empty()
        && version.len() <= 32
        && version.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    valid.then(|| version.to_owned())
}

/// A TCP connection to `ip:port` within `timeout`.
pub async fn connect(ip: Ipv4Addr, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((ip, port));
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(connected) => connected,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer from {addr}"))),
    }
}

/// TLS to a device whose certificate must be `pinned` (its SHA-256), or any certificate when
/// `None`; the stream and the fingerprint it presented. A different certificate is refused,
/// naming both fingerprints.
pub async fn tls<IO>(io: IO, pinned: Option<&str>, timeout: Duration) -> Result<(TlsStream<IO>, String), String>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let verifier = Arc::new(PinVerifier::new(pinned.map(str::to_owned)));
    let config = PinVerifier::client_config(&verifier).map_err(|e| e.to_string())?;
    let name = ServerName::try_from("amt.tether.invalid").map_err(|e| e.to_string())?;
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, io);
    let result =
        tokio::time::timeout(timeout, handshake).await.map_err(|_| "the TLS handshake timed out".to_owned())?;
    match (result, verifier.seen(), pinned) {
        (Ok(stream), Some(seen), _) => Ok((stream, seen)),
        (Err(_), Some(seen), Some(pinned)) if seen != pinned => Err(format!(
            "the device presented a TLS certificate with SHA-256 {seen}, but {pinned} was pinned when it was \
             adopted: it was replaced, or someone is in the way (forget and adopt it again if it changed on purpose)"
        )),
        (Ok(_), None, _) => Err("the device presented no certificate".to_owned()),
        (Err(err), _, _) => Err(format!("TLS handshake: {err}")),
    }
}

/// Asks AMT's web port at `ip:port` (16993 over TLS, else in the clear) for `/`, without
/// credentials; `None` when nothing listens or it does not speak HTTP in time.
pub async fn web(ip: Ipv4Addr, port: u16, timeout: Duration) -> Option<WebAnswer> {
    let work = async {
        let tcp = connect(ip, port, timeout).await.ok()?;
        if port == HTTPS_PORT {
            let (tls, fingerprint) = tls(tcp, None, timeout).await.ok()?;
            let (status, server) = head(tls, ip, port).await?;
            Some(WebAnswer { port, status, server, fingerprint: Some(fingerprint) })
        } else {
            let (status, server) = head(tcp, ip, port).await?;
            Some(WebAnswer { port, status, server, fingerprint: None })
        }
    };
    // One deadline for connect, handshake and answer together.
    tokio::time::timeout(timeout * 2, work).await.ok().flatten()
}

/// One `GET /` and the answer's status and `Server:` header (the body is not read).
async fn head<IO>(io: IO, ip: Ipv4Addr, port: u16) -> Option<(u16, Option<String>)>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(16 * 1024)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .ok()?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::get("/")
        .header(header::HOST, format!("{ip}:{port}"))
        .header(header::CONNECTION, "close")
        .body(Empty::new())
        .ok()?;
    let response = sender.send_request(request).await;
    driver.abort();
    let response = response.ok()?;
    let server = response.headers().get(header::SERVER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Some((response.status().as_u16(), server))
}

/// Sends an RMCP presence ping to each address (paced by `pace`, awaited before each one) from
/// `socket`, and collects the pongs that arrive until `wait` after the last ping. Datagrams from
/// other addresses, or that are not pongs to our pings, are ignored.
pub async fn ping_all<F, Fut>(
    socket: &UdpSocket,
    targets: &[Ipv4Addr],
    wait: Duration,
    mut pace: F,
) -> HashMap<Ipv4Addr, Option<AmtPresence>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let wanted: std::collections::HashSet<Ipv4Addr> = targets.iter().copied().collect();
    let mut pongs = HashMap::new();
    let mut buf = vec![0u8; rmcp::MAX_DATAGRAM];
    let mut ping = Vec::with_capacity(rmcp::HEADER_LEN);
    let receive = |pongs: &mut HashMap<Ipv4Addr, Option<AmtPresence>>, datagram: &[u8], from: SocketAddr| {
        let IpAddr::V4(ip) = from.ip() else { return };
        if !wanted.contains(&ip) || from.port() != rmcp::PORT {
            return;
        }
        if let Ok(Message::Pong { pong, tag, .. }) = rmcp::decode(datagram) {
            if tag == tag_for(ip) {
                pongs.insert(ip, pong.amt());
            }
        }
    };
    for (i, ip) in targets.iter().enumerate() {
        pace().await;
        ping.clear();
        rmcp::encode(&Message::ping(tag_for(*ip)), &mut ping);
        if let Err(err) = socket.send_to(&ping, (*ip, rmcp::PORT)).await {
            tracing::debug!(%ip, error = %err, "RMCP ping not sent");
        }
        // Take what has arrived meanwhile, so that a busy LAN does not fill the socket's buffer.
        while let Ok((n, from)) = socket.try_recv_from(&mut buf) {
            receive(&mut pongs, &buf[..n], from);
        }
        if i + 1 == targets.len() {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    while pongs.len() < wanted.len() {
        match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => receive(&mut pongs, &buf[..n], from),
            Ok(Err(err)) => {
                // ICMP port unreachable from a host without 623 comes back as an error here.
                tracing::trace!(error = %err, "RMCP receive");
            }
            Err(_) => break,
        }
    }
    pongs
}

/// The message tag of the ping to `ip` (its last byte), so a pong is matched to its ping.
fn tag_for(ip: Ipv4Addr) -> u8 {
    ip.octets()[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_amt_version_is_read_from_the_server_header_only_when_it_is_amts() {
        assert_eq!(amt_version("Intel(R) Active Management Technology 16.1.27").as_deref(), Some("16.1.27"));
        assert_eq!(amt_version("Intel(R) Active Management Technology 11.8.55 ").as_deref(), Some("11.8.55"));
        assert_eq!(amt_version("nginx/1.22"), None);
        assert_eq!(amt_version("Intel(R) Active Management Technology"), None);
        assert_eq!(amt_version("Intel(R) Active Management Technology 16.x"), None);
    }

    /// Pings to a host where nothing listens on 623 find nothing, and the wait ends on time.
    #[tokio::test]
    async fn silence_is_waited_out() {
        let scanner = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        let found = ping_all(&scanner, &[Ipv4Addr::LOCALHOST], Duration::from_millis(200), || async {}).await;
        assert!(found.is_empty());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
