//! The technician's side of the API: an HTTPS client for the JSON endpoints and the WebSocket
//! relay, trusting only the gateway's CA (or one given with `--ca`).
//!
//! What it does not do: decide what to print (`main`) or listen for local connections (`forward`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;

use crate::certs;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a download could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The API answered with this status and message.
    #[error("the API answered {0}: {1}")]
    Status(StatusCode, String),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// A connection recipe for one gateway's API.
#[derive(Clone)]
pub struct ApiClient {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    token: String,
    connector: TlsConnector,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").field("host", &self.host).field("port", &self.port).finish_non_exhaustive()
    }
}

impl ApiClient {
    /// `api` is `https://HOST:PORT`; `server_name` overrides the name the certificate must carry.
    pub fn new(api: &str, token: &str, ca: &Path, server_name: Option<&str>) -> Result<Self> {
        let uri: Uri = api.parse().with_context(|| format!("{api} is not a URL such as https://gateway:8443"))?;
        if uri.scheme_str() != Some("https") {
            bail!("the API URL must start with https:// (got {api})");
        }
        let host = uri.host().ok_or_else(|| anyhow!("no host in {api}"))?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(8443);
        let name = server_name.unwrap_or(&host).to_string();
        let server_name =
            ServerName::try_from(name.clone()).with_context(|| format!("{name} is not a valid server name"))?;
        let config = certs::client_config_trusting(ca)
            .with_context(|| format!("loading the gateway CA from {} (pass --ca or TETHER_CA)", ca.display()))?;
        let mut config = Arc::unwrap_or_clone(config);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { host, port, server_name, token: token.to_string(), connector: TlsConnector::from(Arc::new(config)) })
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>> {
        let addr = (self.host.as_str(), self.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                crate::exit::unreachable(format!("connecting to the API at {}:{} timed out", self.host, self.port))
            })?
            .with_context(|| {
                format!("connecting to the API at {}:{} (is the gateway running?)", self.host, self.port)
            })?;
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(CONNECT_TIMEOUT, self.connector.connect(self.server_name.clone(), tcp))
            .await
            .map_err(|_| crate::exit::unreachable("TLS handshake with the API timed out"))?
            .context("TLS handshake with the API failed (wrong --ca, or a certificate without this host name?)")
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// GETs a JSON document. A non-2xx answer becomes an error carrying the API's message.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        self.get_page(path).await.map(|(value, _)| value)
    }

    /// GETs a paginated list: follows the `Link: <…>; rel="next"` headers (at most `max_pages`)
    /// and returns one array.
    pub async fn get_all(&self, path: &str, max_pages: usize) -> Result<Vec<serde_json::Value>> {
        let mut items = Vec::new();
        let mut next = Some(path.to_string());
        for _ in 0..max_pages {
            let Some(path) = next.take() else { return Ok(items) };
            let (page, link) = self.get_page(&path).await?;
            match page {
                serde_json::Value::Array(page) => items.extend(page),
                other => bail!("the API answered {path} with {other} where a list was expected"),
            }
            next = link;
        }
        match next {
            None => Ok(items),
            Some(_) => bail!("{path} has more than {max_pages} pages; stopped"),
        }
    }

    /// One GET: the JSON body, and the `rel="next"` link if the answer has one.
    async fn get_page(&self, path: &str) -> Result<(serde_json::Value, Option<String>)> {
        let (status, headers, value) = self.send(Request::get(path), Bytes::new(), REQUEST_TIMEOUT).await?;
        if !status.is_success() {
            return Err(api_error(status, &value).into());
        }
        let next = headers.get(header::LINK).and_then(|v| v.to_str().ok()).and_then(next_link);
        Ok((value, next))
    }

    /// One request with the token and a JSON answer: its status, headers and body.
    async fn send(
        &self,
        request: hyper::http::request::Builder,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, hyper::HeaderMap, serde_json::Value)> {
        let work = async {
            let response = self.request(request, body, None).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            let value: serde_json::Value = serde_json::from_slice(&body)
                .with_context(|| format!("the API answered {} with something other than JSON", parts.status))?;
            Ok((parts.status, parts.headers, value))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| crate::exit::unreachable("the API did not answer in time"))?
    }

    /// One request with the token (a JSON body when not empty, a `Range` from `from`), on a new
    /// connection; the answer before its body is read.
    async fn request(
        &self,
        request: hyper::http::request::Builder,
        body: Bytes,
        from: Option<u64>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let tls = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let mut request = request
            .header(header::HOST, self.authority())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(from) = from {
            request = request.header(header::RANGE, format!("bytes={from}-"));
        }
        Ok(sender.send_request(request.body(Full::new(body))?).await?)
    }

    /// POSTs a JSON body; the answer's status and JSON body, whatever the status (a body that is
    /// not JSON is an error).
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<(StatusCode, serde_json::Value)> {
        self.post_with_timeout(path, body, REQUEST_TIMEOUT).await
    }

    /// [`ApiClient::post`] with its own deadline (a call that waits on a device).
    pub async fn post_with_timeout(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(StatusCode, serde_json::Value)> {
        let body = Bytes::from(serde_json::to_vec(body)?);
        let (status, _, value) = self.send(Request::post(path), body, timeout).await?;
        Ok((status, value))
    }

    /// DELETEs `path`; a non-2xx answer becomes an error carrying the API's message.
    pub async fn delete_json(&self, path: &str, timeout: Duration) -> Result<serde_json::Value> {
        let (status, _, value) = self.send(Request::delete(path), Bytes::new(), timeout).await?;
        if !status.is_success() {
            return Err(api_error(status, &value).into());
        }
        Ok(value)
    }

    /// POSTs a JSON body; a non-2xx answer becomes an error carrying the API's message.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let (status, value) = self.post(path, body).await?;
        if !status.is_success() {
            return Err(api_error(status, &value).into());
        }
        Ok(value)
    }

    /// POSTs a JSON body and hands back the answer before its body is read, for a download: the
    /// connection and the headers have [`REQUEST_TIMEOUT`]; the caller times the body's frames.
    /// A non-2xx answer is [`StreamError::Status`] with the API's message.
    pub async fn stream_post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<hyper::Response<hyper::body::Incoming>, StreamError> {
        self.stream(Request::post(path), Bytes::from(serde_json::to_vec(body).map_err(anyhow::Error::from)?), None)
            .await
    }

    /// GETs `path` from byte `from` on (a `Range` header when not 0) and hands back the answer
    /// before its body is read, as [`ApiClient::stream_post`] does.
    pub async fn stream_get(
        &self,
        path: &str,
        from: u64,
    ) -> Result<hyper::Response<hyper::body::Incoming>, StreamError> {
        self.stream(Request::get(path), Bytes::new(), (from > 0).then_some(from)).await
    }

    async fn stream(
        &self,
        request: hyper::http::request::Builder,
        body: Bytes,
        from: Option<u64>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, StreamError> {
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.request(request, body, from))
            .await
            .map_err(|_| StreamError::Other(crate::exit::unreachable("the API did not answer in time")))??;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let message = value.get("error").and_then(|m| m.as_str()).unwrap_or("").to_string();
        Err(StreamError::Status(status, message))
    }

    /// Opens the WebSocket relay at `path`.
    pub async fn websocket(&self, path: &str) -> Result<WebSocketStream<TlsStream<TcpStream>>> {
        let tls = self.connect().await?;
        let mut request = format!("wss://{}{}", self.authority(), path).into_client_request()?;
        request.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {}", self.token).parse()?);
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let handshake = tokio_tungstenite::client_async_with_config(request, tls, Some(config));
        match tokio::time::timeout(REQUEST_TIMEOUT, handshake).await {
            Err(_) => Err(crate::exit::unreachable("the relay did not open in time")),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let status = response.status();
                let body = response.body().as_deref().unwrap_or_default();
                let value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
                Err(api_error(status, &value).into())
            }
            Ok(Err(err)) => Err(err).context("opening the relay WebSocket"),
        }
    }
}

/// What the API said: its message, the status and, for a refusal of the policy, its stable code
/// (the exit code follows the status: `exit`).
pub fn api_error(status: StatusCode, body: &serde_json::Value) -> crate::exit::ApiError {
    crate::exit::ApiError::new(status, body)
}

/// The target of a `rel="next"` link in a `Link` header (a path on the same API).
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        (params.split(';').any(|p| p.trim() == "rel=\"next\"") && target.starts_with('/')).then(|| target.to_string())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_links_are_found_and_foreign_ones_ignored() {
        let header = r#"</api/v1/devices?limit=2&after=x>; rel="next""#;
        assert_eq!(super::next_link(header).as_deref(), Some("/api/v1/devices?limit=2&after=x"));
        assert_eq!(super::next_link(r#"<https://evil.example/x>; rel="next""#), None);
        assert_eq!(super::next_link(r#"</a>; rel="prev""#), None);
    }
}
