//! The asking side of the fleet link (see `fleet::link` for the protocol): [`Peers`] asks the
//! gateway that holds a device for its view, a stream to one of its ports, or a claim; and
//! [`crate::bridge::bridge`] turns the link's upgraded connection into a [`DeviceStream`] like a tunnel's, so
//! that a technician's relay runs unchanged on the gateway the technician reached.
//!
//! Which gateway holds a device, and where it listens, come from the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;
use uuid::Uuid;

use crate::store::Store;
use crate::stream::DeviceStream;

/// The upgrade token of a stream on the link.
pub(crate) const UPGRADE: &str = "tether-stream";
/// Header naming the gateway that holds a device, on answers carried from another gateway.
pub const INSTANCE_HEADER: &str = "x-tether-instance";
pub(crate) const TLS_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
            Ok(crate::bridge::bridge(TokioIo::new(upgraded), port))
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
