//! The gateway's WS-Management client: AMT power, boot, redirection and consent, spoken over a
//! stream through the device's tunnel, so that the API (and later the portal) share it.
//!
//! - [`client`]: HTTP/1.1 and digest authentication over any byte stream, one SOAP call at a time;
//! - [`amt`]: the typed AMT calls and what they return ([`amt::Facts`], [`amt::PowerAction`], …);
//! - this module: reaching the WS-MAN port — 16992 in the clear when the device forwards it, else
//!   16993 with TLS, the device's certificate pinned on first use (firmware from CSME 16.1 on
//!   closes 16992 to remote consoles).
//!
//! The wire formats are [`protocols::wsman`] and [`protocols::http_digest`].

pub mod amt;
pub mod client;

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use uuid::Uuid;

pub use amt::{Amt, AmtError, AmtErrorKind, Facts, PowerAction};
pub use client::{CallError, Client, Credentials};

/// AMT's WS-MAN port in the clear.
pub const PORT_HTTP: u16 = 16992;
/// AMT's WS-MAN port with TLS.
pub const PORT_HTTPS: u16 = 16993;

/// The port to use among those a device forwards: 16992 when it is there, else 16993 (TLS).
pub fn pick_port(forwarded: &[u16]) -> u16 {
    if forwarded.contains(&PORT_HTTP) || !forwarded.contains(&PORT_HTTPS) {
        PORT_HTTP
    } else {
        PORT_HTTPS
    }
}

/// A session on `io`, a stream to `port` of device `uuid`. For 16993 the TLS certificate must be
/// `pinned` (its SHA-256 fingerprint) when one is; the second value is the fingerprint seen when
/// none was pinned yet (to be remembered by the caller).
pub async fn connect<IO>(
    io: IO,
    uuid: Uuid,
    port: u16,
    credentials: Credentials,
    pinned: Option<String>,
) -> Result<(Amt, Option<String>), AmtError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let host = format!("{uuid}:{port}");
    let connection = |e: String| AmtError {
        step: "connecting to the device's WS-MAN port",
        kind: AmtErrorKind::Call(CallError::Connection(e)),
    };
    if port != PORT_HTTPS {
        let client = Client::handshake(io, &host, credentials).await.map_err(|e| connection(e.to_string()))?;
        return Ok((Amt::new(client), None));
    }
    let verifier = Arc::new(crate::redirect::pin::PinVerifier::new(pinned.clone()));
    let config = crate::redirect::pin::PinVerifier::client_config(&verifier).map_err(|e| connection(e.to_string()))?;
    let name = ServerName::try_from("amt.tether.invalid").map_err(|e| connection(e.to_string()))?;
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, io);
    let tls = tokio::time::timeout(client::REQUEST_TIMEOUT, handshake)
        .await
        .map_err(|_| connection("the TLS handshake timed out".into()))?;
    let seen = verifier.seen();
    let tls = match (tls, &pinned, &seen) {
        (Ok(tls), _, _) => tls,
        (Err(_), Some(pinned), Some(seen)) if pinned != seen => {
            return Err(connection(format!(
                "the device presented a TLS certificate with SHA-256 {seen} on 16993, but {pinned} is pinned for \
                 it: the device was replaced or someone is in the way (if its certificate changed on purpose, \
                 clear the device's pin: `tether amt forget UUID`)"
            )))
        }
        (Err(err), _, _) => return Err(connection(format!("TLS handshake on 16993: {err}"))),
    };
    let client = Client::handshake(tls, &host, credentials).await.map_err(|e| connection(e.to_string()))?;
    Ok((Amt::new(client), if pinned.is_none() { seen } else { None }))
}

/// APF PROTOCOL_VERSION trigger reason of a connection the PC user asked for ("remote help").
pub const TRIGGER_USER_INITIATED: u32 = 1;

#[cfg(test)]
mod tests;
