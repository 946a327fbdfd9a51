//! The transport to a gateway: QUIC (quinn) on UDP, or, where UDP does not get through, TLS over
//! TCP to the same port, where the gateway tells an agent from an AMT device by its ALPN
//! `tether/1`. Both carry one control stream of `protocols::tap` frames ([`Control`]) and the
//! machine's certificate as the client certificate; over QUIC the gateway also opens a stream
//! per relayed session ([`Link::accept_stream`]).
//!
//! [`dial`] tries QUIC for [`QUIC_TIMEOUT`], then TLS. Over TLS the agent pings every keepalive
//! (TCP would not notice a vanished peer) and gives up on a gateway silent for the idle timeout;
//! QUIC does both itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use protocols::tap::{self, Message};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

/// A connection silent this long is given up (QUIC's idle timeout; over TLS, the agent's own).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for a TCP connection, a TLS handshake, or an answer from the gateway.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for QUIC's handshake before TLS over TCP is tried.
pub const QUIC_TIMEOUT: Duration = Duration::from_secs(5);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The agent's TLS client configuration: TLS 1.3, ALPN `tether/1`, the machine's certificate
/// when it has one (enrollment has none yet).
pub fn tls_client(
    roots: rustls::RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).context("the machine's certificate")?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![tap::ALPN.to_vec()];
    Ok(Arc::new(tls))
}

fn quic_client(tls: Arc<rustls::ClientConfig>, keepalive: Duration) -> Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls).context("a TLS 1.3 configuration for QUIC")?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(IDLE_TIMEOUT)?)).keep_alive_interval(Some(keepalive));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn any_address(addr: SocketAddr, local: Option<IpAddr>) -> SocketAddr {
    let any: IpAddr = if addr.is_ipv6() { [0u16; 8].into() } else { [0u8; 4].into() };
    SocketAddr::new(local.unwrap_or(any), 0)
}

async fn connect_tcp(addr: SocketAddr, local: Option<IpAddr>) -> Result<tokio::net::TcpStream> {
    let socket = if addr.is_ipv6() { tokio::net::TcpSocket::new_v6()? } else { tokio::net::TcpSocket::new_v4()? };
    if local.is_some() {
        socket.bind(any_address(addr, local))?;
    }
    let stream = socket.connect(addr).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// What carries a session to a gateway.
#[derive(Debug)]
pub enum Link {
    Quic { endpoint: quinn::Endpoint, connection: quinn::Connection },
    Tls { remote: SocketAddr },
}

impl Link {
    pub fn transport(&self) -> &'static str {
        match self {
            Link::Quic { .. } => "quic",
            Link::Tls { .. } => "tls",
        }
    }

    pub fn remote(&self) -> SocketAddr {
        match self {
            Link::Quic { connection, .. } => connection.remote_address(),
            Link::Tls { remote } => *remote,
        }
    }

    /// Resolves when QUIC says the connection is gone (over TLS, the control stream says so).
    pub async fn closed(&self) -> String {
        match self {
            Link::Quic { connection, .. } => connection.closed().await.to_string(),
            Link::Tls { .. } => std::future::pending().await,
        }
    }

    /// The next stream the gateway opens for a relayed session (QUIC); over TLS, and once the
    /// connection is gone (which [`Link::closed`] reports), never.
    pub async fn accept_stream(&self) -> (quinn::SendStream, quinn::RecvStream) {
        match self {
            Link::Quic { connection, .. } => match connection.accept_bi().await {
                Ok(pair) => pair,
                Err(_) => std::future::pending().await,
            },
            Link::Tls { .. } => std::future::pending().await,
        }
    }

    /// Over TLS, every keepalive a ping is due (QUIC sends its own keepalives).
    pub fn needs_pings(&self) -> bool {
        matches!(self, Link::Tls { .. })
    }

    /// Over TLS, resolves once the gateway has been silent for [`IDLE_TIMEOUT`] since
    /// `last_heard`; over QUIC, never (its idle timeout closes the connection).
    pub async fn silent(&self, last_heard: Instant) {
        match self {
            Link::Quic { .. } => std::future::pending().await,
            Link::Tls { .. } => tokio::time::sleep_until(last_heard + IDLE_TIMEOUT).await,
        }
    }

    /// Ends the link (QUIC: the close is sent before the socket goes; TLS: with its stream).
    pub async fn close(self, reason: &str) {
        if let Link::Quic { endpoint, connection } = self {
            connection.close(0u32.into(), reason.as_bytes());
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The control stream.
pub struct Control {
    send: Writer,
    recv: Reader,
    buf: BytesMut,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("buffered", &self.buf.len()).finish_non_exhaustive()
    }
}

impl Control {
    fn new(send: Writer, recv: Reader) -> Control {
        Control { send, recv, buf: BytesMut::new() }
    }

    pub async fn write(&mut self, message: &Message) -> Result<()> {
        let mut out = BytesMut::with_capacity(message.encoded_len());
        message.encode(&mut out);
        self.write_raw(&out).await
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.send.write_all(bytes).await.context("sending to the gateway")?;
        self.send.flush().await.context("sending to the gateway")
    }

    /// Raw bytes after the last frame read (a content item's): what is buffered first, then the
    /// stream's; 0 at its end.
    pub async fn read_raw(&mut self, out: &mut [u8]) -> Result<usize> {
        if !self.buf.is_empty() {
            let n = out.len().min(self.buf.len());
            out[..n].copy_from_slice(&self.buf.split_to(n));
            return Ok(n);
        }
        self.recv.read(out).await.context("reading from the gateway")
    }

    pub async fn read(&mut self) -> Result<Message> {
        loop {
            if let Some((message, used)) =
                tap::decode(&self.buf, &tap::Limits::default()).context("the gateway sent a malformed frame")?
            {
                let _ = self.buf.split_to(used);
                return Ok(message);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.recv.read(&mut chunk).await.context("reading from the gateway")? {
                0 => bail!("the gateway closed the control stream"),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Dials the gateway at `addr` (its certificate must name `server_name`) from `local` (any when
/// `None`): QUIC first, then TLS over TCP to the same port when QUIC gets no answer within
/// [`QUIC_TIMEOUT`] (UDP blocked) or fails. The link and its control stream.
pub async fn dial(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    keepalive: Duration,
    local: Option<IpAddr>,
) -> Result<(Link, Control)> {
    let quic = async {
        let endpoint = quinn::Endpoint::client(any_address(addr, local)).context("opening a UDP socket for QUIC")?;
        let config = quic_client(Arc::clone(&tls), keepalive)?;
        let connection = tokio::time::timeout(QUIC_TIMEOUT, endpoint.connect_with(config, addr, server_name)?)
            .await
            .with_context(|| format!("no QUIC answer from UDP {addr} within {QUIC_TIMEOUT:?}"))?
            .context("QUIC")?;
        let (send, recv) = connection.open_bi().await.context("opening the control stream")?;
        Ok::<_, anyhow::Error>((Link::Quic { endpoint, connection }, Control::new(Box::new(send), Box::new(recv))))
    };
    let quic_error = match quic.await {
        Ok(pair) => return Ok(pair),
        Err(err) => err,
    };
    debug!(%addr, error = %format!("{quic_error:#}"), "QUIC failed: trying TLS over TCP on the same port");
    let tls_attempt = async {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect_tcp(addr, local))
            .await
            .with_context(|| format!("no TCP answer from {addr} within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("TCP to {addr}"))?;
        let name = ServerName::try_from(server_name.to_string()).context("the gateway's name")?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
            .await
            .context("no TLS handshake in time")?
            .context("TLS")?;
        let (recv, send) = tokio::io::split(stream);
        Ok::<_, anyhow::Error>((Link::Tls { remote: addr }, Control::new(Box::new(send), Box::new(recv))))
    };
    tls_attempt.await.map_err(|tls_error| anyhow::anyhow!("{quic_error:#}; then over TLS: {tls_error:#}"))
}
