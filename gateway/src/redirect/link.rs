//! The byte pipe under a redirection session, and the messages on it: through the gateway's API
//! relay (a WebSocket to `/api/v1/devices/{uuid}/tcp/{port}`), straight to a device on the
//! technician's LAN (TLS to 16995 with the device's certificate pinned on first use, or plain
//! 16994 for firmware before CSME 16.1), or, inside the gateway, a stream through the device's
//! own tunnel (the gateway serving a content item over IDE-R, `crate::content_ider`).
//!
//! [`MessageReader::next`] is cancel-safe, so a driver can `select!` on it beside its keyboard and
//! timers. What it does not do: the session's steps (`session`), SOL or IDE-R.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use protocols::redir::{self, Message, Sender};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use super::pin::{KnownDevices, PinVerifier};
use crate::client::ApiClient;
use crate::redir_tap::RelayTap;
use crate::relay::EOF_MESSAGE;
use crate::stream::{DeviceReader, DeviceStream, DeviceWriter};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes put in one WebSocket message (the gateway's `api.max_frame_bytes` is 1 MiB by
/// default; staying well under it keeps any configuration working).
const MAX_WS_MESSAGE: usize = 64 * 1024;

/// Where a device's redirection service is reached.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Through the gateway's relay to the device's `port` (16994).
    Relay { client: ApiClient, uuid: Uuid, port: u16 },
    /// Straight to `host:port` on the technician's LAN: TLS (16995) with the certificate pinned in
    /// `known` on first use, or plain TCP (16994) when `tls` is off.
    Direct { host: String, port: u16, tls: bool, known: PathBuf },
    /// Inside the gateway: a stream to device `uuid`'s redirection port through its tunnel,
    /// opened anew by `open` for every session.
    Tunnel { uuid: Uuid, open: StreamOpener },
}

/// A stream the gateway opened to a device's redirection port, and the tap that records the
/// session on it (as a technician's relay to that port is recorded).
#[derive(Debug)]
pub struct OpenedStream {
    pub stream: DeviceStream,
    pub tap: Option<RelayTap>,
}

/// Opens a stream to the device's redirection port (see [`Endpoint::Tunnel`]).
#[derive(Clone)]
pub struct StreamOpener(pub Arc<dyn Fn() -> BoxFuture<'static, Result<OpenedStream>> + Send + Sync>);

impl std::fmt::Debug for StreamOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamOpener")
    }
}

/// A relay tap shared by a stream's two halves: the session's record ends once both are gone.
#[derive(Debug)]
struct SharedTap(Option<RelayTap>);

impl Drop for SharedTap {
    fn drop(&mut self) {
        if let Some(tap) = self.0.take() {
            tap.finish();
        }
    }
}

impl Endpoint {
    /// How the user names the device in messages.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Relay { uuid, .. } => format!("device {uuid}"),
            Endpoint::Direct { host, port, .. } => format!("{host}:{port}"),
            Endpoint::Tunnel { uuid, .. } => format!("device {uuid}"),
        }
    }

    /// Opens the pipe and splits it into a message reader and writer.
    pub async fn connect(&self) -> Result<(MessageReader, MessageWriter)> {
        let (rx, tx) = match self {
            Endpoint::Relay { client, uuid, port } => {
                let ws = client.websocket(&format!("/api/v1/devices/{uuid}/tcp/{port}")).await?;
                let (tx, rx) = ws.split();
                (Rx::Relay(rx), Tx::Relay(tx))
            }
            Endpoint::Direct { host, port, tls, known } => {
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port)))
                    .await
                    .map_err(|_| anyhow!("connecting to {host}:{port} timed out"))?
                    .with_context(|| format!("connecting to {host}:{port}"))?;
                let _ = tcp.set_nodelay(true);
                if *tls {
                    let stream = direct_tls(host, *port, known, tcp).await?;
                    let (rd, wr) = tokio::io::split(stream);
                    (Rx::Tls(rd), Tx::Tls(wr))
                } else {
                    let (rd, wr) = tcp.into_split();
                    (Rx::Plain(rd), Tx::Plain(wr))
                }
            }
            Endpoint::Tunnel { open, .. } => {
                let opened = (open.0)().await?;
                let tap = Arc::new(SharedTap(opened.tap));
                let (rd, wr) = opened.stream.into_split();
                (Rx::Tunnel(rd, Arc::clone(&tap)), Tx::Tunnel(wr, tap))
            }
        };
        let limits = redir::Limits::default();
        Ok((
            MessageReader { rx, buf: BytesMut::with_capacity(4096), limits, eof: false, close_reason: None },
            MessageWriter { tx },
        ))
    }
}

/// TLS to a device on the LAN, pinning its certificate on first use.
async fn direct_tls(host: &str, port: u16, known: &Path, tcp: TcpStream) -> Result<TlsStream<TcpStream>> {
    let mut devices = KnownDevices::load(known)?;
    let key = format!("{host}:{port}");
    let pinned = devices.get(&key).map(str::to_owned);
    let verifier = Arc::new(PinVerifier::new(pinned.clone()));
    let config = PinVerifier::client_config(&verifier)?;
    let name =
        ServerName::try_from(host.to_owned()).with_context(|| format!("{host} is not a host name or address"))?;
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp);
    let result = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| anyhow!("the TLS handshake with {key} timed out"))?;
    let seen = verifier.seen();
    match (result, pinned, seen) {
        (Ok(stream), None, Some(fingerprint)) => {
            devices.add(&key, &fingerprint)?;
            eprintln!(
                "pinned the certificate of {key} (SHA-256 {fingerprint}) in {}; later connections must present it",
                known.display()
            );
            Ok(stream)
        }
        (Ok(stream), Some(_), _) => Ok(stream),
        (Err(_), Some(pinned), Some(fingerprint)) if pinned != fingerprint => bail!(
            "{key} presented a certificate with SHA-256 {fingerprint}, but {pinned} was pinned for it in {}: the \
             device was replaced or someone is in the way. If its certificate changed on purpose, delete the line \
             for {key} there and connect again",
            known.display()
        ),
        (Err(err), _, _) => Err(err).with_context(|| format!("TLS handshake with {key}")),
        (Ok(_), None, None) => bail!("{key} completed TLS without presenting a certificate"),
    }
}

enum Rx {
    Relay(SplitStream<WebSocketStream<TlsStream<TcpStream>>>),
    Tls(ReadHalf<TlsStream<TcpStream>>),
    Plain(tokio::net::tcp::OwnedReadHalf),
    Tunnel(DeviceReader, Arc<SharedTap>),
}

enum Tx {
    Relay(SplitSink<WebSocketStream<TlsStream<TcpStream>>, WsMessage>),
    Tls(WriteHalf<TlsStream<TcpStream>>),
    Plain(tokio::net::tcp::OwnedWriteHalf),
    Tunnel(DeviceWriter, Arc<SharedTap>),
}

/// Reads the device's redirection messages.
pub struct MessageReader {
    rx: Rx,
    buf: BytesMut,
    limits: redir::Limits,
    eof: bool,
    /// Why the gateway closed the relay, when it said.
    close_reason: Option<String>,
}

impl std::fmt::Debug for MessageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageReader").field("buffered", &self.buf.len()).field("eof", &self.eof).finish()
    }
}

impl MessageReader {
    /// The next message, or `None` once the device (or the relay) closed the connection.
    /// Cancel-safe: bytes read before a cancellation stay buffered.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            match redir::decode(&self.buf, Sender::Device, &self.limits) {
                Ok(Some((message, used))) => {
                    self.buf.advance(used);
                    return Ok(Some(message));
                }
                Ok(None) => {}
                Err(err) => bail!("the device sent a message this console cannot read: {err}"),
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("the connection ended in the middle of a message");
            }
            self.fill().await?;
        }
    }

    /// Why the relay was closed (the gateway's close reason), if it said.
    pub fn close_reason(&self) -> Option<&str> {
        self.close_reason.as_deref()
    }

    async fn fill(&mut self) -> Result<()> {
        match &mut self.rx {
            Rx::Relay(ws) => match ws.next().await {
                None => self.eof = true,
                Some(Err(err)) => return Err(err).context("the relay connection failed"),
                Some(Ok(WsMessage::Binary(bytes))) => self.buf.extend_from_slice(&bytes),
                Some(Ok(WsMessage::Text(text))) if text.as_str() == EOF_MESSAGE => self.eof = true,
                Some(Ok(WsMessage::Close(frame))) => {
                    self.eof = true;
                    self.close_reason = frame.map(|f| f.reason.to_string()).filter(|r| !r.is_empty());
                }
                Some(Ok(_)) => {}
            },
            Rx::Tls(rd) => {
                if rd.read_buf(&mut self.buf).await? == 0 {
                    self.eof = true;
                }
            }
            Rx::Plain(rd) => {
                if rd.read_buf(&mut self.buf).await? == 0 {
                    self.eof = true;
                }
            }
            Rx::Tunnel(rd, tap) => {
                let before = self.buf.len();
                if rd.read_buf(&mut self.buf).await? == 0 {
                    self.eof = true;
                } else if let Some(tap) = &tap.0 {
                    tap.from_device(&self.buf[before..]);
                }
            }
        }
        Ok(())
    }
}

/// Writes redirection messages to the device.
pub struct MessageWriter {
    tx: Tx,
}

impl std::fmt::Debug for MessageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageWriter").finish_non_exhaustive()
    }
}

impl MessageWriter {
    /// Sends one message, on its own (consoles and firmware care about message boundaries).
    pub async fn send(&mut self, message: &Message) -> Result<()> {
        let mut bytes = Vec::new();
        redir::encode(message, &mut bytes);
        self.send_bytes(Bytes::from(bytes)).await
    }

    /// Sends already encoded messages as one write (split only to respect the relay's frame size).
    pub async fn send_bytes(&mut self, mut bytes: Bytes) -> Result<()> {
        match &mut self.tx {
            Tx::Relay(ws) => {
                while bytes.len() > MAX_WS_MESSAGE {
                    ws.feed(WsMessage::Binary(bytes.split_to(MAX_WS_MESSAGE))).await?;
                }
                ws.send(WsMessage::Binary(bytes)).await.context("sending through the relay")?;
            }
            Tx::Tls(wr) => {
                wr.write_all(&bytes).await?;
                wr.flush().await?;
            }
            Tx::Plain(wr) => wr.write_all(&bytes).await?,
            Tx::Tunnel(wr, tap) => {
                if let Some(tap) = &tap.0 {
                    tap.from_console(&bytes);
                }
                wr.write_all(&bytes).await.context("writing to the device's tunnel")?;
            }
        }
        Ok(())
    }

    /// Ends the connection: a half-close for the relay and plain TCP, a TLS close_notify.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            match &mut self.tx {
                Tx::Relay(ws) => {
                    let _ = ws.send(WsMessage::Text(EOF_MESSAGE.into())).await;
                    let _ = ws.close().await;
                }
                Tx::Tls(wr) => {
                    let _ = wr.shutdown().await;
                }
                Tx::Plain(wr) => {
                    let _ = wr.shutdown().await;
                }
                Tx::Tunnel(wr, _) => {
                    let _ = wr.shutdown().await;
                }
            }
        })
        .await;
    }
}
