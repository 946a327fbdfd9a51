//! WS-Management on the device ports 16992 (and 16993 without its TLS layer), as Intel AMT
//! firmware answers it: HTTP/1.1 with keep-alive, Digest authentication against the device's
//! admin account, and SOAP envelopes read and written with [`protocols::wsman`].
//!
//! - [`state`]: the per-device firmware state ([`Firmware`]) shared with the redirection service;
//! - [`digest`]: issued nonces and nonce counts;
//! - [`responder`]: the answers (Get, Put, Enumerate/Pull/Release, method calls, faults).
//!
//! HTTP: the request parser and limits of [`crate::amt::http`]. A request without
//! `Authorization` gets `401` with `WWW-Authenticate: Digest realm="Digest:<32 hex>",
//! nonce="…", stale="false", qop="auth"`; a wrong answer gets another 401 with a fresh nonce; a
//! right answer to an unknown or expired nonce, or a replayed nonce count, gets a 401 with
//! `stale="true"`. An authenticated `POST /wsman` gets `200` with the response envelope, or `400`
//! with a SOAP fault (as AMT); an authenticated `GET` gets a small HTML page. Every request line
//! is logged as `16992 request: POST /wsman`.
//!
//! Where it differs from firmware, knowingly:
//! - TLS on 16993 only with `--tls-only` or `--lan` (`tls_service::TlsService` in front; otherwise
//!   16993 is plain, and a client that starts TLS there gets a 400 and the channel closes), no
//!   Kerberos, no users but the admin account, no realms or ACLs, no audit or event log;
//! - most of AMT's classes are missing (see [`responder`] for those it answers; others are
//!   `wsa:DestinationUnreachable`, and several MeshCentral asks for are known with no instances);
//! - power states other than on (2), cycle (5), off (8) and reset (10) are not simulated
//!   (ReturnValue 1), and the OS power state is S0 whenever the power is on;
//! - an IDE-R boot needs only UseIDER (ChangeBootOrder and SetBootConfigRole are recorded but not
//!   required), and boot settings stay until changed (as the brief for the gateway assumes);
//! - the consent code does not expire after OptInCodeTimeout; it is voided by three wrong codes,
//!   CancelOptIn, or a new StartOptIn;
//! - every fault comes with HTTP 400 (as AMT answers the faults MeshCentral relies on);
//! - the namespaces of enumerated items are declared on the response element, not on the
//!   envelope, and empty properties are left out (see [`responder`]), so that MeshCentral's XML
//!   reader can read the responses.

pub mod digest;
pub mod responder;
pub mod state;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use protocols::wsman::{Envelope, Limits as XmlLimits};
use uuid::Uuid;

pub use responder::{platform_guid, Reply, AMT_VERSION};
pub use state::{ControlMode, Firmware, FirmwareConfig};

use super::http::{server_header, write_response, Connection, Limits, Request};
use super::service::{ChannelHandler, ChannelInfo, Outbox, Service};
use digest::{challenge_header, Verdict};

/// The WS-MAN service of a simulator's devices. Clones share the firmware state.
#[derive(Debug, Clone, Default)]
pub struct WsmanService {
    pub firmware: Firmware,
    pub limits: Limits,
}

impl WsmanService {
    pub fn new(firmware: Firmware) -> Self {
        Self { firmware, limits: Limits::default() }
    }

    /// A handler for a channel of device `uuid` to `port`.
    pub fn handler(&self, uuid: Uuid, port: u32, log_level: tracing::Level) -> WsmanChannel {
        WsmanChannel {
            firmware: self.firmware.clone(),
            uuid,
            port,
            log_level,
            limits: self.limits,
            realm: realm_of(uuid),
            connection: Connection::default(),
            server: server_header(&self.firmware.config().amt_version).into(),
        }
    }
}

impl Service for WsmanService {
    fn open(&self, channel: &ChannelInfo) -> Option<Box<dyn ChannelHandler>> {
        Some(Box::new(self.handler(channel.uuid, channel.port, channel.log_level)))
    }
}

/// A device's digest realm: `Digest:` and 32 uppercase hex digits, fixed per device.
pub fn realm_of(uuid: Uuid) -> String {
    format!("Digest:{}", uuid.simple().to_string().to_uppercase())
}

const UNAUTHORIZED_PAGE: &str = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\">\n\
    <html><head><title>Intel&reg; Active Management Technology</title></head><body>Unauthorized</body></html>\n";

/// One channel to 16992/16993.
#[derive(Debug)]
pub struct WsmanChannel {
    firmware: Firmware,
    uuid: Uuid,
    port: u32,
    log_level: tracing::Level,
    limits: Limits,
    realm: String,
    connection: Connection,
    /// The `Server` header, with the firmware's version.
    server: Arc<str>,
}

impl WsmanChannel {
    /// Answers `request`; whether the connection ends after it.
    fn respond(&mut self, request: &Request, out: &mut Outbox<'_>) -> bool {
        device_log!(self.log_level, "{} request: {} {}", self.port, request.method, request.target);
        let close = request.wants_close();
        let head_only = request.method == "HEAD";
        let now = Instant::now();
        let verdict =
            match request.header("authorization") {
                None => None,
                Some(value) => {
                    let (user, password) = {
                        let config = self.firmware.config();
                        (config.admin_user.clone(), config.admin_password.clone())
                    };
                    let realm = self.realm.clone();
                    let method = request.method.clone();
                    Some(self.firmware.with(self.uuid, |state, _, _| {
                        state.nonces.check(value, &method, &user, &password, &realm, now)
                    }))
                }
            };
        match verdict {
            Some(Verdict::Accepted) => {
                if request.method == "POST" {
                    let reply = self.wsman(&request.body, now);
                    let (status, body) = responder::to_bytes(&reply);
                    let status = if status == 200 { (200, "OK") } else { (400, "Bad Request") };
                    let headers = [("Content-Type", "application/soap+xml;charset=UTF-8")];
                    write_response(out, &self.server, status, &headers, &body, false, close);
                } else {
                    let body = format!(
                        "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\">\n<html><head><title>\
                         Intel&reg; Active Management Technology</title></head><body>System ID {}</body></html>\n",
                        self.uuid
                    );
                    write_response(
                        out,
                        &self.server,
                        (200, "OK"),
                        &[("Content-Type", "text/html")],
                        body.as_bytes(),
                        head_only,
                        close,
                    );
                }
            }
            verdict => {
                let stale = matches!(verdict, Some(Verdict::Stale));
                if let Some(Verdict::Refused(why)) = &verdict {
                    device_warn!(self.log_level, "{} digest authentication refused: {why}", self.port);
                } else if stale {
                    device_log!(self.log_level, "{} digest nonce stale; challenging again", self.port);
                }
                let nonce = self.firmware.with(self.uuid, |state, _, _| state.nonces.issue(now));
                let challenge = challenge_header(&self.realm, &nonce, stale);
                write_response(
                    out,
                    &self.server,
                    (401, "Unauthorized"),
                    &[("WWW-Authenticate", &challenge), ("Content-Type", "text/html")],
                    UNAUTHORIZED_PAGE.as_bytes(),
                    head_only,
                    close,
                );
            }
        }
        if close {
            out.close();
        }
        close
    }

    /// Answers one authenticated SOAP body.
    fn wsman(&self, body: &[u8], now: Instant) -> Reply {
        let envelope = match Envelope::parse(body, &XmlLimits::default()) {
            Ok(envelope) => envelope,
            Err(err) => {
                device_warn!(self.log_level, "{} WS-MAN request refused: {err}", self.port);
                return responder::schema_fault(&err.to_string());
            }
        };
        let realm = self.realm.clone();
        let uuid = self.uuid;
        let level = self.log_level;
        self.firmware.with(uuid, |state, config, effects| {
            let cx = responder::Context { uuid, config, now, realm: &realm };
            let reply = responder::respond(&envelope, state, &cx, effects);
            device_log!(
                level,
                "{} WS-MAN {} {} -> {}",
                self.port,
                envelope.header.action.rsplit('/').next().unwrap_or(""),
                envelope.header.resource_uri.as_deref().and_then(|u| u.rsplit('/').next()).unwrap_or(""),
                if reply.status == 200 { "ok".to_owned() } else { format!("fault {}", fault_name(&reply)) }
            );
            reply
        })
    }
}

fn fault_name(reply: &Reply) -> String {
    reply.envelope.fault().and_then(|f| f.subcode).unwrap_or_default()
}

impl ChannelHandler for WsmanChannel {
    fn on_data(&mut self, data: &[u8], out: &mut Outbox<'_>) -> usize {
        let mut connection = std::mem::take(&mut self.connection);
        let (limits, log) = (self.limits, (self.port, self.log_level));
        let server = Arc::clone(&self.server);
        let taken = connection.feed(data, out, &limits, log, &server, |request, out| self.respond(request, out));
        self.connection = connection;
        taken
    }
}
