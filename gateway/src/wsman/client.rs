//! WS-Management over HTTP/1.1 with digest authentication, on any byte stream to a device's
//! 16992 (or, after TLS, 16993): hyper's client connection runs over the stream, and every
//! request is a SOAP envelope built by [`protocols::wsman::Request`].
//!
//! Authentication is AMT's: the first request goes without credentials, the 401's challenge is
//! answered (RFC 2617, MD5, qop `auth`), and later requests on the connection reuse that nonce
//! with a growing nonce count, as MeshCentral and Intel's libraries do. A challenge marked
//! `stale` is answered once more; a second refusal of fresh credentials is a wrong password.
//!
//! Limits: each exchange has a deadline ([`REQUEST_TIMEOUT`]), and a response body over
//! [`MAX_RESPONSE`] bytes is refused before it is parsed.
//!
//! What it does not do: know which calls make up a workflow ([`super::amt`]), or open the
//! stream (the API opens it through the tunnel).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request as HttpRequest, StatusCode};
use hyper_util::rt::TokioIo;
use protocols::http_digest::{Authorization, Challenge};
use protocols::wsman::{self, Envelope, Fault};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

/// The path of the WS-MAN service.
pub const PATH: &str = "/wsman";
/// Longest a request may take, from sending to the whole response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read.
pub const MAX_RESPONSE: usize = wsman::DEFAULT_MAX_DOCUMENT_LEN;

/// The device's AMT account.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).finish_non_exhaustive()
    }
}

/// Why a call failed, before any meaning is given to its answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the connection to the device's WS-MAN port failed: {0}")]
    Connection(String),
    #[error("the device did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("the device refused the AMT credentials of user {user:?} (HTTP 401); check the AMT admin password")]
    Unauthorized { user: String },
    #[error("the device's authentication challenge is not one Tether can answer: {0}")]
    Challenge(String),
    #[error("the device answered HTTP {status} with no SOAP response")]
    Http { status: u16 },
    #[error("the device's response is over {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("the device's response is not a WS-MAN envelope: {0}")]
    Malformed(String),
    #[error("the device answered with a fault: {0}")]
    Fault(Fault),
}

/// A WS-MAN session on one connection.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    connection: JoinHandle<()>,
    credentials: Credentials,
    /// The host the requests name (`Host` header and `wsa:To`).
    host: String,
    /// The challenge being answered, and the last nonce count used with it.
    challenge: Option<(Challenge, u32)>,
    cnonce: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("host", &self.host).field("credentials", &self.credentials).finish()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Client {
    /// Starts HTTP/1.1 on `io`; `host` is what requests name as their target (e.g. the device's
    /// UUID and port).
    pub async fn handshake<IO>(io: IO, host: &str, credentials: Credentials) -> Result<Client, CallError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| CallError::Connection(e.to_string()))?;
        let connection = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "WS-MAN connection ended");
            }
        });
        let mut cnonce = [0u8; 16];
        rand::rng().fill_bytes(&mut cnonce);
        Ok(Client {
            sender,
            connection,
            credentials,
            host: host.to_owned(),
            challenge: None,
            cnonce: hex::encode(cnonce),
        })
    }

    /// The address requests are sent to (`wsa:To`).
    pub fn to(&self) -> String {
        format!("http://{}{PATH}", self.host)
    }

    /// Sends `request` and returns the response envelope (a SOAP fault is an error).
    pub async fn call(&mut self, request: &wsman::Request) -> Result<Envelope, CallError> {
        let body = Bytes::from(request.to_bytes().map_err(|e| CallError::Malformed(e.to_string()))?);
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(body)).await.map_err(|_| CallError::Timeout)?
    }

    async fn exchange(&mut self, body: Bytes) -> Result<Envelope, CallError> {
        // Without credentials (or with a nonce reused from an earlier request), then with the
        // fresh challenge; a device that calls its own fresh nonce stale gets one more try.
        for _ in 0..3 {
            let (authorization, fresh) = self.authorization()?;
            let (status, headers, response) = self.send(body.clone(), authorization.clone()).await?;
            if status != StatusCode::UNAUTHORIZED {
                return parse(status, &response);
            }
            let offered = headers
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| Challenge::parse(v).ok());
            let Some(challenge) = offered else {
                return Err(CallError::Challenge("a 401 without a Digest challenge".into()));
            };
            if authorization.is_some() && fresh && !challenge.stale {
                return Err(CallError::Unauthorized { user: self.credentials.user.clone() });
            }
            self.challenge = Some((challenge, 0));
        }
        Err(CallError::Unauthorized { user: self.credentials.user.clone() })
    }

    /// The `Authorization` value for the next request, if a challenge is known, and whether it
    /// answers that challenge for the first time.
    fn authorization(&mut self) -> Result<(Option<String>, bool), CallError> {
        let Some((challenge, nc)) = self.challenge.as_mut() else { return Ok((None, false)) };
        *nc += 1;
        let answer = Authorization::answer(
            challenge,
            &self.credentials.user,
            &self.credentials.password,
            "POST",
            PATH,
            &self.cnonce,
            *nc,
        )
        .and_then(|a| a.to_header_value())
        .map_err(|e| CallError::Challenge(e.to_string()))?;
        Ok((Some(answer), *nc == 1))
    }

    async fn send(
        &mut self,
        body: Bytes,
        authorization: Option<String>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), CallError> {
        self.sender.ready().await.map_err(|e| CallError::Connection(e.to_string()))?;
        let mut request = HttpRequest::post(PATH)
            .header(header::HOST, &self.host)
            .header(header::CONTENT_TYPE, "application/soap+xml;charset=UTF-8");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| CallError::Connection(e.to_string()))?;
        let response = self.sender.send_request(request).await.map_err(|e| CallError::Connection(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                CallError::TooLarge
            } else {
                CallError::Connection(e.to_string())
            }
        })?;
        Ok((parts.status, parts.headers, body.to_bytes()))
    }
}

/// The envelope of a response; a fault (in a 200 or a 400/500) is an error.
fn parse(status: StatusCode, body: &[u8]) -> Result<Envelope, CallError> {
    if body.is_empty() {
        return Err(CallError::Http { status: status.as_u16() });
    }
    let envelope = match Envelope::parse(body, &wsman::Limits::default()) {
        Ok(envelope) => envelope,
        Err(_) if !status.is_success() => return Err(CallError::Http { status: status.as_u16() }),
        Err(err) => return Err(CallError::Malformed(err.to_string())),
    };
    if let Some(fault) = envelope.fault() {
        return Err(CallError::Fault(fault));
    }
    if !status.is_success() {
        return Err(CallError::Http { status: status.as_u16() });
    }
    Ok(envelope)
}
