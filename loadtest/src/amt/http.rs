//! An AMT-like HTTP/1.1 server for the WS-MAN ports (16992, and 16993 without its TLS layer:
//! a client that starts TLS there gets a 400 and the channel closes at once).
//!
//! It answers the way firmware does towards a management console: a request without
//! `Authorization` gets `401 Unauthorized` with a Digest challenge (realm `Digest:<hex>`, a fresh
//! nonce, `qop="auth"`); a request with any `Digest` authorization gets `200 OK`, with an
//! `AMT_GeneralSettings`-like SOAP body for `POST` (naming the device's UUID and echoing the
//! request's `MessageID`) and a small HTML page for `GET`. It does not check the digest.
//!
//! Parsing: request line, headers (at most [`Limits::max_head`] bytes → 431 and close),
//! `Content-Length` bodies (at most [`Limits::max_body`] → 413 and close); `Transfer-Encoding` is
//! refused with 501 and close. Connections stay open across requests (HTTP/1.1 keep-alive,
//! pipelining), until the client sends `Connection: close`. Every request line is logged as
//! `16992 request: POST /wsman`.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use rand::Rng;
use uuid::Uuid;

use super::service::{ChannelHandler, ChannelInfo, Outbox, Service};

/// The firmware version this simulator reports by default (also in the HTTP `Server` header).
pub const AMT_VERSION: &str = "16.1.27";
pub const AMT_BUILD: &str = "2176";

/// What firmware of `version` (`16.1.27`) puts in its `Server` header: the version and the build
/// number, `Intel(R) Active Management Technology 16.1.27.2176`.
pub fn server_header(version: &str) -> String {
    format!("Intel(R) Active Management Technology {version}.{AMT_BUILD}")
}

/// Size limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, with the blank line.
    pub max_head: usize,
    pub max_headers: usize,
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_head: 8 * 1024, max_headers: 64, max_body: 256 * 1024 }
    }
}

/// The AMT-like HTTP service.
#[derive(Debug, Clone, Default)]
pub struct HttpResponder {
    pub limits: Limits,
}

impl Service for HttpResponder {
    fn open(&self, channel: &ChannelInfo) -> Option<Box<dyn ChannelHandler>> {
        Some(Box::new(HttpChannel::new(channel.uuid, channel.port, channel.log_level, self.limits)))
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the connection ends after the response.
    pub fn wants_close(&self) -> bool {
        let connection = self.header("connection").unwrap_or("");
        let has = |token: &str| connection.split(',').any(|t| t.trim().eq_ignore_ascii_case(token));
        if self.minor_version == 0 {
            !has("keep-alive")
        } else {
            has("close")
        }
    }

    /// Whether it carries Digest credentials (which we do not check).
    pub fn has_digest_auth(&self) -> bool {
        self.header("authorization")
            .map(str::trim_start)
            .is_some_and(|v| v.len() >= 6 && v.as_bytes()[..6].eq_ignore_ascii_case(b"digest"))
    }
}

/// A request we refuse; the connection closes after the error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("request head over {max} bytes")]
    HeadTooLarge { max: usize },
    #[error("more than {max} headers")]
    TooManyHeaders { max: usize },
    #[error("body of {len} bytes over the limit of {max}")]
    BodyTooLarge { len: u64, max: usize },
    #[error("Transfer-Encoding is not supported")]
    TransferEncoding,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl ParseError {
    /// The status line this error is answered with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            ParseError::HeadTooLarge { .. } | ParseError::TooManyHeaders { .. } => {
                (431, "Request Header Fields Too Large")
            }
            ParseError::BodyTooLarge { .. } => (413, "Payload Too Large"),
            ParseError::TransferEncoding => (501, "Not Implemented"),
            ParseError::Malformed(_) => (400, "Bad Request"),
        }
    }
}

/// Parses one request from the front of `buf`: `Ok(None)` while incomplete, else the request and
/// the bytes it used.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, ParseError> {
    // Refuse at once what cannot become a request line (a TLS ClientHello sent to 16993, say),
    // rather than waiting for a blank line that never comes.
    let method_end = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
    if !buf[..method_end].iter().all(|&b| is_tchar(b)) || (method_end == 0 && !buf.is_empty()) {
        return Err(ParseError::Malformed("not an HTTP request"));
    }
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > limits.max_head {
            Err(ParseError::HeadTooLarge { max: limits.max_head })
        } else {
            Ok(None)
        };
    };
    let head_len = end + 4;
    if head_len > limits.max_head {
        return Err(ParseError::HeadTooLarge { max: limits.max_head });
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::Malformed("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed("request line is not METHOD TARGET VERSION"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(ParseError::Malformed("bad method"));
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(ParseError::Malformed("bad request target"));
    }
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(ParseError::Malformed("unsupported HTTP version")),
    };
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == limits.max_headers {
            return Err(ParseError::TooManyHeaders { max: limits.max_headers });
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ParseError::Malformed("header line without a colon"));
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            // Also refuses obsolete line folding (a line starting with whitespace).
            return Err(ParseError::Malformed("bad header name"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut request =
        Request { method: method.to_owned(), target: target.to_owned(), minor_version, headers, body: Bytes::new() };
    if request.header("transfer-encoding").is_some() {
        return Err(ParseError::TransferEncoding);
    }
    let mut content_length: Option<u64> = None;
    for (_, value) in request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::Malformed("bad Content-Length"));
        }
        let len = value.parse::<u64>().map_err(|_| ParseError::Malformed("bad Content-Length"))?;
        if content_length.is_some_and(|previous| previous != len) {
            return Err(ParseError::Malformed("conflicting Content-Length headers"));
        }
        content_length = Some(len);
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_body as u64 {
        return Err(ParseError::BodyTooLarge { len: body_len, max: limits.max_body });
    }
    let body_len = body_len as usize;
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    request.body = Bytes::copy_from_slice(&buf[head_len..head_len + body_len]);
    Ok(Some((request, head_len + body_len)))
}

/// The HTTP side of one channel: input not yet parsed (at most one incomplete request), and
/// whether the channel is closing. Shared by the responders on 16992/16993.
#[derive(Debug, Default)]
pub struct Connection {
    pub buf: BytesMut,
    /// After an error or `Connection: close`: input is discarded.
    pub closing: bool,
}

impl Connection {
    /// Takes `data`, answering each complete request with `respond` (which sets `closing` when
    /// the connection ends after its answer); returns how many bytes of `data` were taken. A
    /// request the parser refuses is answered with its error status and the channel closes.
    pub fn feed(
        &mut self,
        data: &[u8],
        out: &mut Outbox<'_>,
        limits: &Limits,
        log: (u32, tracing::Level),
        server: &str,
        mut respond: impl FnMut(&Request, &mut Outbox<'_>) -> bool,
    ) -> usize {
        if self.closing {
            return data.len();
        }
        if out.room() == 0 {
            return 0;
        }
        // Invariant: `buf` holds no complete request when this is called, so once a request was
        // answered everything left in `buf` came from `data`, and can be handed back.
        self.buf.extend_from_slice(data);
        while out.room() > 0 {
            match parse_request(&self.buf, limits) {
                Ok(Some((request, used))) => {
                    self.buf.advance(used);
                    if respond(&request, out) {
                        self.closing = true;
                        self.buf.clear();
                        return data.len();
                    }
                }
                Ok(None) => return data.len(),
                Err(err) => {
                    let (port, level) = log;
                    device_log!(level, "{port} request refused: {err}");
                    write_response(out, server, err.status(), &[], b"", false, true);
                    self.closing = true;
                    self.buf.clear();
                    out.close();
                    return data.len();
                }
            }
        }
        // Out of room with requests left: give back the unanswered bytes (all from `data`).
        let left = self.buf.len().min(data.len());
        self.buf.clear();
        data.len() - left
    }
}

/// A character of an HTTP token (RFC 9110).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The handler of one channel.
#[derive(Debug)]
struct HttpChannel {
    uuid: Uuid,
    port: u32,
    log_level: tracing::Level,
    limits: Limits,
    realm: String,
    connection: Connection,
    responses: u64,
    /// The `Server` header.
    server: Arc<str>,
}

impl HttpChannel {
    fn new(uuid: Uuid, port: u32, log_level: tracing::Level, limits: Limits) -> Self {
        // Firmware's realm is "Digest:" and 32 hex digits, fixed per device.
        let realm = format!("Digest:{}", uuid.simple().to_string().to_uppercase());
        let server = server_header(AMT_VERSION).into();
        Self { uuid, port, log_level, limits, realm, connection: Connection::default(), responses: 0, server }
    }

    /// Answers `request`; whether the connection ends after it.
    fn respond(&mut self, request: &Request, out: &mut Outbox<'_>) -> bool {
        device_log!(self.log_level, "{} request: {} {}", self.port, request.method, request.target);
        self.responses += 1;
        let close = request.wants_close();
        let head_only = request.method == "HEAD";
        if !request.has_digest_auth() {
            let nonce: u128 = rand::rng().random();
            let body = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\">\n\
                        <html><head><title>Intel&reg; Active Management Technology</title></head>\
                        <body>Unauthorized</body></html>\n";
            let challenge =
                format!("Digest realm=\"{}\", nonce=\"{nonce:032x}\", stale=\"false\", qop=\"auth\"", self.realm);
            write_response(
                out,
                &self.server,
                (401, "Unauthorized"),
                &[("WWW-Authenticate", &challenge), ("Content-Type", "text/html")],
                body.as_bytes(),
                head_only,
                close,
            );
        } else if request.method == "POST" {
            let body = self.soap_response(&request.body);
            write_response(
                out,
                &self.server,
                (200, "OK"),
                &[("Content-Type", "application/soap+xml; charset=UTF-8")],
                body.as_bytes(),
                false,
                close,
            );
        } else {
            let body = format!(
                "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\">\n<html><head><title>\
                 Intel&reg; Active Management Technology</title></head><body>System ID {}</body></html>\n",
                self.uuid
            );
            let headers = [("Content-Type", "text/html")];
            write_response(out, &self.server, (200, "OK"), &headers, body.as_bytes(), head_only, close);
        }
        if close {
            out.close();
        }
        close
    }

    /// An `AMT_GeneralSettings` Get response naming this device, related to the request's
    /// `MessageID`.
    fn soap_response(&self, request_body: &[u8]) -> String {
        let relates_to = element_text(request_body, "MessageID").unwrap_or("0");
        let mut xml = String::with_capacity(1536);
        let _ = write!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><a:Envelope \
             xmlns:a=\"http://www.w3.org/2003/05/soap-envelope\" \
             xmlns:b=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
             xmlns:c=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\" \
             xmlns:g=\"http://intel.com/wbem/wscim/1/amt-schema/1/AMT_GeneralSettings\">\
             <a:Header><b:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</b:To>\
             <b:RelatesTo>{relates_to}</b:RelatesTo>\
             <b:Action a:mustUnderstand=\"true\">http://schemas.xmlsoap.org/ws/2004/09/transfer/GetResponse</b:Action>\
             <b:MessageID>uuid:00000000-8086-8086-8086-{:012X}</b:MessageID>\
             <c:ResourceURI>http://intel.com/wbem/wscim/1/amt-schema/1/AMT_GeneralSettings</c:ResourceURI>\
             </a:Header><a:Body><g:AMT_GeneralSettings>\
             <g:AMTNetworkEnabled>1</g:AMTNetworkEnabled>\
             <g:DigestRealm>{}</g:DigestRealm>\
             <g:ElementName>Intel(r) AMT: General Settings</g:ElementName>\
             <g:HostName>amt-{}</g:HostName>\
             <g:InstanceID>Intel(r) AMT: General Settings</g:InstanceID>\
             <g:NetworkInterfaceEnabled>true</g:NetworkInterfaceEnabled>\
             <g:PowerSource>0</g:PowerSource>\
             <g:RmcpPingResponseEnabled>true</g:RmcpPingResponseEnabled>\
             <g:SharedFQDN>true</g:SharedFQDN>\
             <g:WsmanOnlyMode>false</g:WsmanOnlyMode>\
             </g:AMT_GeneralSettings></a:Body></a:Envelope>",
            self.responses, self.realm, self.uuid
        );
        xml
    }
}

/// The text of the first element whose local name is `name`, if it is plain text.
fn element_text<'a>(xml: &'a [u8], name: &str) -> Option<&'a str> {
    let xml = std::str::from_utf8(xml).ok()?;
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let tag_end = rest.find('>')?;
        let tag = &rest[..tag_end];
        let tag_name = tag.split_whitespace().next().unwrap_or("");
        let local = tag_name.rsplit(':').next().unwrap_or("");
        if local == name && !tag.starts_with('/') && !tag.ends_with('/') {
            let text = &rest[tag_end + 1..];
            let text = &text[..text.find('<')?];
            let text = text.trim();
            let safe = !text.is_empty() && !text.contains(['<', '>', '&', '"']);
            return safe.then_some(text);
        }
    }
    None
}

pub(crate) fn write_response(
    out: &mut Outbox<'_>,
    server: &str,
    (code, reason): (u16, &str),
    headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
    close: bool,
) {
    let mut head = String::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {code} {reason}\r\n");
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let _ = write!(head, "Server: {server}\r\nContent-Length: {}\r\n", body.len());
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.write(head.as_bytes());
    if !head_only {
        out.write(body);
    }
}

impl ChannelHandler for HttpChannel {
    fn on_data(&mut self, data: &[u8], out: &mut Outbox<'_>) -> usize {
        let mut connection = std::mem::take(&mut self.connection);
        let (limits, log) = (self.limits, (self.port, self.log_level));
        let server = Arc::clone(&self.server);
        let taken = connection.feed(data, out, &limits, log, &server, |request, out| self.respond(request, out));
        self.connection = connection;
        taken
    }
}

#[cfg(test)]
#[path = "http_test.rs"]
mod tests;
