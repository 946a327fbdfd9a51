//! The technician API as a test speaks it: HTTPS requests and WebSocket relays from a chosen
//! loopback source address (127.0.0.0/8), with any bearer token — valid, wrong, revoked, of the
//! wrong scope — reporting the gateway's status codes instead of failing on them, and timing
//! each request.
//!
//! - [`ApiClient`]: a connection recipe (gateway address, trusted CA, source address).
//! - [`ApiConnection`]: one keep-alive HTTP/1.1 connection, for many requests.
//! - [`Relay`]: an open `GET /api/v1/devices/{uuid}/tcp/{port}` WebSocket.
//!
//! What it does not do: decide what a status means (the tests do), or load the gateway in a loop
//! (`attack` does).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use crate::process::Gateway;

/// A connect, a TLS handshake or one request that takes longer than this is an error.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// A multi-threaded tokio runtime with two workers (the machine has two cores), for tests that
/// drive the async helpers from a `#[test]` function.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the test")
}

/// A rustls client configuration trusting only the CA in `ca_pem` (the gateway's `tls/ca.pem`),
/// offering `alpn` (e.g. `http/1.1` for the API, nothing for CIRA).
pub fn tls_config(ca_pem: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(ca_pem).unwrap_or_else(|e| panic!("reading {}: {e}", ca_pem.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("a PEM certificate")).expect("a CA certificate rustls accepts");
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The name a test server's certificate carries for `addr`: its IP address (the harness starts
/// the gateway with `--tls-name IP`).
pub fn server_name_for(addr: SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

/// A TCP connection to `target`, from `source` if given (bound before connecting, port chosen
/// by the kernel), with `TCP_NODELAY`.
pub async fn tcp_connect_from(source: Option<IpAddr>, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A token of the gateway's format (`tth_` and 32 random bytes, base64url) that no one created.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("tth_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Where and how to reach one gateway's API.
#[derive(Clone)]
pub struct ApiClient {
    target: SocketAddr,
    source: Option<IpAddr>,
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").field("target", &self.target).field("source", &self.source).finish_non_exhaustive()
    }
}

/// One answer of the API.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    /// The `Retry-After` header, if any (expected on 429).
    pub retry_after: Option<String>,
    pub body: Bytes,
    /// From sending the request to having the whole body.
    pub elapsed: Duration,
}

impl ApiResponse {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl ApiClient {
    /// The API of `gateway`, trusting its CA, from the kernel's choice of source address.
    pub fn new(gateway: &Gateway) -> ApiClient {
        let target = gateway.api_addr();
        ApiClient {
            target,
            source: None,
            connector: TlsConnector::from(tls_config(&gateway.ca_path(), &[b"http/1.1"])),
            server_name: server_name_for(target),
        }
    }

    /// The same, with connections made from `source` (a loopback address such as 127.0.0.3).
    pub fn from_source(mut self, source: IpAddr) -> ApiClient {
        self.source = Some(source);
        self
    }

    pub fn source(&self) -> Option<IpAddr> {
        self.source
    }

    /// A TLS connection to the API (TCP connect and handshake, each within 15 s).
    pub async fn tls(&self) -> Result<TlsStream<TcpStream>> {
        let tcp = tokio::time::timeout(STEP_TIMEOUT, tcp_connect_from(self.source, self.target))
            .await
            .map_err(|_| anyhow!("TCP connect to the API at {} timed out", self.target))?
            .with_context(|| format!("TCP connect to the API at {} from {:?}", self.target, self.source))?;
        tokio::time::timeout(STEP_TIMEOUT, self.connector.connect(self.server_name.clone(), tcp))
            .await
            .map_err(|_| anyhow!("TLS handshake with the API at {} timed out", self.target))?
            .with_context(|| format!("TLS handshake with the API at {}", self.target))
    }

    /// A keep-alive HTTP/1.1 connection.
    pub async fn connect(&self) -> Result<ApiConnection> {
        let tls = self.tls().await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(ApiConnection { sender, authority: self.target.to_string() })
    }

    /// One `GET path` with `Authorization: Bearer token` on a connection of its own.
    pub async fn get(&self, path: &str, token: &str) -> Result<ApiResponse> {
        self.connect().await?.get(path, token).await
    }

    /// One `POST path` without a body, as [`ApiClient::get`].
    pub async fn post(&self, path: &str, token: &str) -> Result<ApiResponse> {
        self.connect().await?.request(hyper::Method::POST, path, token).await
    }

    /// Opens the relay WebSocket to `uuid`'s `port` with `token`. `Err` carries the HTTP status
    /// when the gateway refused the upgrade (401, 403, 404, 429, …).
    pub async fn relay(&self, uuid: Uuid, port: u16, token: &str) -> std::result::Result<Relay, RelayRefused> {
        let tls = self.tls().await.map_err(|e| RelayRefused { status: None, message: format!("{e:#}") })?;
        let path = format!("/api/v1/devices/{uuid}/tcp/{port}");
        let mut request =
            format!("wss://{}{path}", self.target).into_client_request().expect("a valid WebSocket request");
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, format!("Bearer {token}").parse().expect("a valid header value"));
        let config = WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(16 << 20));
        let handshake = tokio_tungstenite::client_async_with_config(request, tls, Some(config));
        match tokio::time::timeout(STEP_TIMEOUT, handshake).await {
            Err(_) => {
                Err(RelayRefused { status: None, message: format!("{path}: the upgrade took over {STEP_TIMEOUT:?}") })
            }
            Ok(Ok((ws, _))) => Ok(Relay { ws, path }),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
                Err(RelayRefused { status: Some(response.status().as_u16()), message: format!("{path}: {body}") })
            }
            Ok(Err(err)) => Err(RelayRefused { status: None, message: format!("{path}: {err}") }),
        }
    }
}

/// A relay the gateway did not open.
#[derive(Debug, Clone)]
pub struct RelayRefused {
    /// The HTTP status of the refusal; `None` when it failed below HTTP (TCP, TLS, timeout).
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for RelayRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "HTTP {status}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// One keep-alive HTTP/1.1 connection to the API.
#[derive(Debug)]
pub struct ApiConnection {
    sender: SendRequest<Empty<Bytes>>,
    authority: String,
}

impl ApiConnection {
    /// `GET path` with `Authorization: Bearer token`, timed; an error only when the connection
    /// failed (any HTTP status is an `Ok`).
    pub async fn get(&mut self, path: &str, token: &str) -> Result<ApiResponse> {
        self.request(hyper::Method::GET, path, token).await
    }

    /// `METHOD path` without a body, as [`ApiConnection::get`].
    pub async fn request(&mut self, method: hyper::Method, path: &str, token: &str) -> Result<ApiResponse> {
        let started = Instant::now();
        let work = async {
            self.sender.ready().await.context("the connection closed")?;
            let request = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(header::HOST, &self.authority)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Empty::<Bytes>::new())?;
            let response = self.sender.send_request(request).await.context("sending the request")?;
            let status = response.status().as_u16();
            let retry_after =
                response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = response.into_body().collect().await.context("reading the body")?.to_bytes();
            Ok(ApiResponse { status, retry_after, body, elapsed: started.elapsed() })
        };
        tokio::time::timeout(STEP_TIMEOUT, work)
            .await
            .map_err(|_| anyhow!("{method} {path}: no answer within {STEP_TIMEOUT:?}"))?
    }

    /// Whether the gateway (or an error) closed it.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// How an open relay ended, as [`Relay::wait_closed`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// A close frame, with its code and reason.
    CloseFrame(u16, String),
    /// The connection ended without a close frame.
    Ended(String),
}

/// An open relay WebSocket: binary messages carry the device port's bytes.
#[derive(Debug)]
pub struct Relay {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    path: String,
}

impl Relay {
    /// The WebSocket itself, to write without reading (or anything else the helpers do not do).
    pub fn ws(&mut self) -> &mut WebSocketStream<TlsStream<TcpStream>> {
        &mut self.ws
    }

    /// Sends `data` and reads until as many bytes came back (an echo port), within `timeout`;
    /// returns what came back.
    pub async fn echo(&mut self, data: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        // Send and read at once: an echo larger than the socket buffers would otherwise stall.
        let (mut tx, mut rx) = (&mut self.ws).split();
        let send = async {
            for chunk in data.chunks(64 * 1024) {
                tx.send(Message::Binary(Bytes::copy_from_slice(chunk))).await.context("sending")?;
            }
            Ok::<_, anyhow::Error>(())
        };
        let receive = async {
            let mut back = Vec::with_capacity(data.len());
            while back.len() < data.len() {
                match rx.next().await {
                    Some(Ok(Message::Binary(bytes))) => back.extend_from_slice(&bytes),
                    Some(Ok(Message::Close(frame))) => bail!("the relay closed after {} bytes: {frame:?}", back.len()),
                    Some(Ok(_)) => {}
                    Some(Err(err)) => bail!("the relay failed after {} bytes: {err}", back.len()),
                    None => bail!("the relay ended after {} bytes", back.len()),
                }
            }
            Ok(back)
        };
        let work = async {
            let (sent, back) = tokio::join!(send, receive);
            sent?;
            back
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| anyhow!("{}: no echo of {} bytes within {timeout:?}", self.path, data.len()))?
    }

    /// Reads (discarding data) until the gateway ends the relay; `None` if it is still open
    /// after `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Option<RelayEnd> {
        let work = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        return match frame {
                            Some(f) => RelayEnd::CloseFrame(f.code.into(), f.reason.to_string()),
                            None => RelayEnd::CloseFrame(1005, String::new()),
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return RelayEnd::Ended(err.to_string()),
                    None => return RelayEnd::Ended("end of stream".into()),
                }
            }
        };
        tokio::time::timeout(timeout, work).await.ok()
    }

    /// Writes binary messages of `chunk` bytes and never reads (so never answers a ping), until
    /// `max_bytes` are written, a write makes no progress for `stall`, the gateway ends the
    /// connection, or `max_time` passes — a technician whose program stopped reading.
    pub async fn write_without_reading(
        &mut self,
        chunk: usize,
        max_bytes: u64,
        stall: Duration,
        max_time: Duration,
    ) -> Written {
        let started = Instant::now();
        let payload = Bytes::from(vec![0x5a; chunk]);
        let mut written = Written { bytes: 0, stop: WriteStop::MaxBytes, last_progress: started };
        while written.bytes < max_bytes {
            if started.elapsed() >= max_time {
                written.stop = WriteStop::MaxTime;
                break;
            }
            match tokio::time::timeout(stall, self.ws.send(Message::Binary(payload.clone()))).await {
                Ok(Ok(())) => {
                    written.bytes += chunk as u64;
                    written.last_progress = Instant::now();
                }
                Ok(Err(err)) => {
                    written.stop = WriteStop::Ended(err.to_string());
                    break;
                }
                Err(_) => {
                    written.stop = WriteStop::Stalled;
                    break;
                }
            }
        }
        written
    }

    /// Closes it from the technician's side (close frame, then the connection).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ws.close(None)).await;
    }
}

/// What [`Relay::write_without_reading`] did.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes the WebSocket took (some may still sit in socket buffers).
    pub bytes: u64,
    pub stop: WriteStop,
    /// When the last write completed.
    pub last_progress: Instant,
}

/// Why [`Relay::write_without_reading`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteStop {
    /// A write made no progress for the stall time: backpressure reached the technician.
    Stalled,
    /// The gateway ended the connection (a write failed).
    Ended(String),
    MaxBytes,
    MaxTime,
}

/// Requests `path` with `token` every `interval` (measured from the end of one request to the
/// start of the next, so never faster) over a keep-alive connection from `client`'s source,
/// until `stop` fires; reconnects when the gateway closes the connection. Returns every outcome
/// with its latency (a reconnect's handshake counts in the request that needed it).
pub async fn probe(
    client: ApiClient,
    path: String,
    token: String,
    interval: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Probe> {
    let mut samples = Vec::new();
    let mut connection: Option<ApiConnection> = None;
    loop {
        let started = Instant::now();
        let outcome = async {
            if connection.as_ref().is_none_or(ApiConnection::is_closed) {
                connection = Some(client.connect().await?);
            }
            let c = connection.as_mut().expect("a connection");
            let result = c.get(&path, &token).await;
            if result.is_err() {
                connection = None;
            }
            result
        }
        .await;
        samples.push(Probe {
            status: outcome.map(|r| r.status).map_err(|e| format!("{e:#}")),
            latency: started.elapsed(),
        });
        tokio::select! {
            _ = &mut stop => return samples,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One request of [`probe`].
#[derive(Debug, Clone)]
pub struct Probe {
    /// The HTTP status, or what failed below HTTP.
    pub status: std::result::Result<u16, String>,
    pub latency: Duration,
}

/// The `p`-th percentile (0–100) of `values`, nearest rank; `Duration::ZERO` when empty.
pub fn percentile(values: &[Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        let values = ms(&[5, 1, 4, 2, 3, 10, 9, 8, 7, 6]);
        assert_eq!(percentile(&values, 50.0), Duration::from_millis(5));
        assert_eq!(percentile(&values, 99.0), Duration::from_millis(10));
        assert_eq!(percentile(&values, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn random_tokens_look_like_real_ones() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert!(a.starts_with("tth_") && a.len() == 4 + 43, "{a}");
    }
}
