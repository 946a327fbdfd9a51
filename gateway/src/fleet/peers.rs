//! The asking side of the fleet link (see `fleet::link` for the protocol): [`Peers`] asks the
//! gateway that holds a device for its view, a stream to one of its ports, or a claim; and
//! [`bridge`] turns the link's upgraded connection into a [`DeviceStream`] like a tunnel's, so
//! that a technician's relay runs unchanged on the gateway the technician reached.
//!
//! Which gateway holds a device, and where it listens, come from the store.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_rustls::TlsConnector;
use tracing::debug;
use uuid::Uuid;

use crate::store::Store;
use crate::stream::{self, DeviceStream, StreamClosed, StreamConfig};

/// The upgrade token of a stream on the link.
pub(crate) const UPGRADE: &str = "tether-stream";
/// Header naming the gateway that holds a device, on answers carried from another gateway.
pub const INSTANCE_HEADER: &str = "x-tether-instance";
pub(crate) const TLS_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the link ahead of what the stream's user has taken.
const WINDOW: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("gateway {0} is not in the store (removed from the fleet?)")]
    UnknownInstance(String),
    #[error("gateway {0} has no fleet link address (fleet.internal_listen unset there)")]
    NoAddress(String),
    #[error("gateway {instance} is down (its fleet link refuses connections)")]
    Down { instance: String, addr: String },
    #[error("gateway {instance} cannot be reached over the fleet link: {detail}")]
    Unreachable { instance: String, addr: String, detail: String },
    #[error("gateway {instance} answered {status}: {message}")]
    Refused { instance: String, status: StatusCode, message: String },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl LinkError {
    /// The status a technician sees for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            LinkError::Refused { status, .. } => *status,
            LinkError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// What the holding gateway said of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// Its tunnel is live and answered: the claim is refused.
    Alive { live: String },
    /// It holds no live tunnel for the UUID (any more).
    Free,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ClaimRequest {
    pub(crate) claimant: String,
}

/// The asking side of the link.
#[derive(Debug, Clone)]
pub struct Peers {
    tls: Arc<rustls::ClientConfig>,
    store: Store,
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>;

impl Peers {
    pub fn new(client: Arc<rustls::ClientConfig>, store: Store) -> Peers {
        Peers { tls: client, store }
    }

    /// A fresh HTTP connection to `instance` (one per call: link calls are rare and streams
    /// need their own connection).
    async fn connect(&self, instance: &str) -> Result<Sender, LinkError> {
        let record =
            self.store.instance(instance).await?.ok_or_else(|| LinkError::UnknownInstance(instance.to_string()))?;
        let addr = record.internal_addr.ok_or_else(|| LinkError::NoAddress(instance.to_string()))?;
        let unreachable =
            |detail: String| LinkError::Unreachable { instance: instance.to_string(), addr: addr.clone(), detail };
        let tcp = tokio::time::timeout(TLS_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    LinkError::Down { instance: instance.to_string(), addr: addr.clone() }
                }
                _ => unreachable(e.to_string()),
            })?;
        crate::limits::detect_dead_peer(&tcp);
        let name = rustls::pki_types::ServerName::try_from(instance.to_string())
            .map_err(|_| unreachable("its instance id is not a valid TLS name".into()))?;
        let tls = tokio::time::timeout(TLS_TIMEOUT, TlsConnector::from(Arc::clone(&self.tls)).connect(name, tcp))
            .await
            .map_err(|_| unreachable("TLS handshake timed out".into()))?
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(format!("HTTP: {e}")))?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                debug!(error = %err, "fleet link connection ended");
            }
        });
        Ok(sender)
    }

    async fn call(
        &self,
        instance: &str,
        request: hyper::Request<http_body_util::Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, LinkError> {
        let mut sender = self.connect(instance).await?;
        sender.send_request(request).await.map_err(|e| LinkError::Unreachable {
            instance: instance.to_string(),
            addr: String::new(),
            detail: e.to_string(),
        })
    }

    /// The device as the gateway holding it shows it.
    pub async fn device(&self, instance: &str, uuid: Uuid) -> Result<(StatusCode, Value), LinkError> {
        let request = request("GET", &format!("/internal/v1/devices/{uuid}"), Bytes::new());
        let work = async {
            let response = self.call(instance, request).await?;
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work).await.unwrap_or_else(|_| Err(timed_out(instance)))
    }

    /// Asks `instance` whether its tunnel for `uuid` is live (see the module doc).
    pub async fn claim(&self, instance: &str, uuid: Uuid, claimant: SocketAddr) -> Result<ClaimAnswer, LinkError> {
        let body = serde_json::to_vec(&ClaimRequest { claimant: claimant.to_string() }).unwrap_or_default();
        let request = request("POST", &format!("/internal/v1/devices/{uuid}/claim"), body.into());
        let response = self.call(instance, request).await?;
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match status {
            StatusCode::OK => Ok(ClaimAnswer::Free),
            StatusCode::CONFLICT => {
                Ok(ClaimAnswer::Alive { live: answer["live"].as_str().unwrap_or("another gateway").to_string() })
            }
            status => Err(refused(instance, status, &answer)),
        }
    }

    /// Opens a stream to `port` of the device `instance` holds.
    pub async fn open_stream(
        &self,
        instance: &str,
        uuid: Uuid,
        port: u16,
        originator: SocketAddr,
    ) -> Result<DeviceStream, LinkError> {
        let mut request = request("GET", &format!("/internal/v1/devices/{uuid}/tcp/{port}"), Bytes::new());
        let headers = request.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE));
        if let Ok(value) = HeaderValue::from_str(&originator.to_string()) {
            headers.insert("x-tether-originator", value);
        }
        let work = async {
            let response = self.call(instance, request).await?;
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                let status = response.status();
                let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                return Err(refused(instance, status, &serde_json::from_slice(&body).unwrap_or(Value::Null)));
            }
            let upgraded = hyper::upgrade::on(response).await.map_err(|e| LinkError::Unreachable {
                instance: instance.to_string(),
                addr: String::new(),
                detail: format!("upgrade: {e}"),
            })?;
            Ok(bridge(TokioIo::new(upgraded), port))
        };
        tokio::time::timeout(REQUEST_TIMEOUT + REQUEST_TIMEOUT, work).await.unwrap_or_else(|_| Err(timed_out(instance)))
    }
}

fn timed_out(instance: &str) -> LinkError {
    LinkError::Unreachable { instance: instance.to_string(), addr: String::new(), detail: "no answer in time".into() }
}

fn refused(instance: &str, status: StatusCode, body: &Value) -> LinkError {
    LinkError::Refused {
        instance: instance.to_string(),
        status,
        message: body["error"].as_str().unwrap_or("no reason given").to_string(),
    }
}

fn request(method: &str, path: &str, body: Bytes) -> hyper::Request<http_body_util::Full<Bytes>> {
    let mut request = hyper::Request::new(http_body_util::Full::new(body));
    *request.method_mut() = method.parse().unwrap_or(hyper::Method::GET);
    *request.uri_mut() = path.parse().unwrap_or_default();
    request.headers_mut().insert(header::HOST, HeaderValue::from_static("tether-fleet"));
    request.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    request
}

/// A [`DeviceStream`] over a byte stream (the link's upgraded connection), with the same flow
/// control as a tunnel's: at most [`WINDOW`] bytes are read from the link ahead of what the
/// stream's user took, and the user's writes are bounded by its send budget.
///
/// Three tasks, so that neither direction ever waits on the other: the reader (link → user,
/// while there is credit), the writer (user → link, in order, then the half-close), and the
/// control task, which turns the user's wakes into credit for the reader and bytes for the
/// writer. All three end when the user drops the stream or either direction of the link fails.
pub fn bridge<IO>(io: IO, port: u16) -> DeviceStream
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    enum Out {
        Bytes(Bytes, crate::stream::Written),
        Eof,
    }
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel();
    let (user, end) = stream::pair(0, port, StreamConfig::default(), wake_tx);
    let end = Arc::new(end);
    let (mut rd, mut wr) = tokio::io::split(io);
    let credit = Arc::new((AtomicUsize::new(WINDOW), Notify::new()));
    // Either direction of the link failed: everything ends.
    let failed = Arc::new(Notify::new());
    // Bounded by the user's send budget: each entry holds its bytes' share of it.
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();

    let reader = {
        let (end, credit, failed) = (Arc::clone(&end), Arc::clone(&credit), Arc::clone(&failed));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let available = credit.0.load(Ordering::Acquire);
                if available == 0 {
                    credit.1.notified().await;
                    continue;
                }
                let want = available.min(buf.len());
                match rd.read(&mut buf[..want]).await {
                    Ok(0) => return end.push_eof(),
                    Ok(n) => {
                        credit.0.fetch_sub(n, Ordering::AcqRel);
                        end.push(Bytes::copy_from_slice(&buf[..n]));
                    }
                    Err(_) => {
                        end.close(StreamClosed::TunnelGone);
                        return failed.notify_one();
                    }
                }
            }
        })
    };
    let writer = {
        let (end, failed) = (Arc::clone(&end), Arc::clone(&failed));
        tokio::spawn(async move {
            while let Some(out) = out_rx.recv().await {
                let done = match out {
                    // The budget returns (the guard drops) once the link took the bytes.
                    Out::Bytes(data, _written) => wr.write_all(&data).await,
                    Out::Eof => wr.shutdown().await,
                };
                if done.is_err() {
                    end.close(StreamClosed::TunnelGone);
                    return failed.notify_one();
                }
            }
        })
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                woken = wake_rx.recv() => if woken.is_none() { break },
                _ = failed.notified() => break,
            }
            let wanted = end.poll_wanted();
            if wanted.released > 0 {
                credit.0.fetch_add(wanted.released, Ordering::AcqRel);
                credit.1.notify_one();
            }
            if wanted.close {
                break;
            }
            while let Some((data, written)) = end.take_outbound(64 * 1024) {
                let _ = out_tx.send(Out::Bytes(data, written));
            }
            if wanted.eof || end.take_eof() {
                let _ = out_tx.send(Out::Eof);
            }
        }
        reader.abort();
        writer.abort();
    });
    user
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The far end (like a device) writes all it has before it reads anything, while the user
    /// writes and reads at once: credit for the far end's bytes must flow while the user's
    /// writes wait for the far end.
    #[tokio::test]
    async fn credit_flows_while_writes_wait() {
        let (near, mut far) = tokio::io::duplex(4096);
        let stream = bridge(near, 16994);
        let (mut reader, mut writer) = tokio::io::split(stream);
        let size = 4 * WINDOW;
        let far_task = tokio::spawn(async move {
            far.write_all(&vec![1u8; size]).await.unwrap();
            let mut got = vec![0u8; size];
            far.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|b| *b == 2));
        });
        let user_reads = tokio::spawn(async move {
            let mut got = vec![0u8; size];
            reader.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|b| *b == 1));
        });
        writer.write_all(&vec![2u8; size]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), async {
            far_task.await.unwrap();
            user_reads.await.unwrap();
        })
        .await
        .expect("the bridge deadlocked");
    }

    /// A link that fails (a peer killed without a TLS goodbye) ends the stream, and its tasks.
    #[tokio::test]
    async fn a_failed_link_ends_the_stream() {
        let (near, far) = tokio::io::duplex(4096);
        let mut stream = bridge(near, 16994);
        drop(far);
        let mut buf = [0u8; 16];
        // The duplex reports EOF, not an error: the user sees the end of the stream.
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        // Writes fail once the writer finds the link gone.
        let failed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if stream.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(failed.is_ok(), "writes to a dead link kept succeeding");
    }

    #[tokio::test]
    async fn a_bridged_stream_carries_bytes_both_ways_with_half_closes() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut stream = bridge(near, 16992);
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // More than the window and the duplex buffer, while nobody reads on one side for a while.
        let big = vec![7u8; 3 * WINDOW];
        let writer = tokio::spawn(async move {
            far.write_all(&big).await.unwrap();
            far.shutdown().await.unwrap();
            far
        });
        let mut got = Vec::new();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 3 * WINDOW);
        let mut far = writer.await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
