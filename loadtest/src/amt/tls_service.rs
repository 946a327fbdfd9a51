//! TLS inside a channel, as firmware speaks it on 16993 (WS-MAN) and 16995 (redirection): a
//! [`TlsService`] wraps another service, and each channel runs a rustls server connection in
//! front of the wrapped handler, which sees only plaintext. The certificate is the device's own
//! (self-signed, as AMT's usually is).
//!
//! The wrapped handler keeps its backpressure: plaintext it did not take waits (at most
//! [`MAX_PLAINTEXT`] bytes; beyond that the channel stops taking TLS records), and its output is
//! encrypted as it is written. Wake-ups and timers pass through. A TLS error closes the channel
//! after the alert; the wrapped handler's close sends close_notify first.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use rustls::ServerConnection;

use super::service::{ChannelHandler, ChannelInfo, Outbox, Service};

/// Most decrypted bytes held for a handler that is not taking them.
pub const MAX_PLAINTEXT: usize = 64 * 1024;

/// A service behind TLS.
#[derive(Debug, Clone)]
pub struct TlsService {
    inner: Arc<dyn Service>,
    config: Arc<rustls::ServerConfig>,
}

impl TlsService {
    pub fn new(inner: Arc<dyn Service>, config: Arc<rustls::ServerConfig>) -> Self {
        Self { inner, config }
    }
}

/// A self-signed certificate for a simulated device and the server configuration presenting it.
pub fn self_signed_config(name: &str) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let key = rcgen::KeyPair::generate().map_err(|e| rustls::Error::General(e.to_string()))?;
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .and_then(|params| params.self_signed(&key))
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let private = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], private)?;
    Ok(Arc::new(config))
}

impl Service for TlsService {
    fn open(&self, channel: &ChannelInfo) -> Option<Box<dyn ChannelHandler>> {
        let inner = self.inner.open(channel)?;
        let tls = ServerConnection::new(Arc::clone(&self.config)).ok()?;
        Some(Box::new(TlsChannel { tls, inner, plaintext: BytesMut::new(), inner_closed: false, failed: false }))
    }
}

struct TlsChannel {
    tls: ServerConnection,
    inner: Box<dyn ChannelHandler>,
    /// Decrypted bytes the handler has not taken yet.
    plaintext: BytesMut,
    inner_closed: bool,
    failed: bool,
}

impl TlsChannel {
    /// Runs `step` on the handler with an outbox of its own, then encrypts what it wrote.
    fn with_inner(&mut self, out: &mut Outbox<'_>, step: impl FnOnce(&mut dyn ChannelHandler, &mut Outbox<'_>)) {
        if self.inner_closed || self.failed {
            return;
        }
        let mut written = BytesMut::new();
        let mut close = false;
        {
            let mut inner_out = Outbox::new(&mut written, out.room(), &mut close);
            step(self.inner.as_mut(), &mut inner_out);
        }
        if !written.is_empty() && self.tls.writer().write_all(&written).is_err() {
            self.failed = true;
        }
        if close {
            self.inner_closed = true;
            self.tls.send_close_notify();
        }
        self.flush(out);
    }

    /// Gives waiting plaintext to the handler.
    fn deliver(&mut self, out: &mut Outbox<'_>) {
        if self.plaintext.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.plaintext);
        let mut taken = 0;
        self.with_inner(out, |inner, inner_out| taken = inner.on_data(&pending, inner_out));
        pending.advance(taken.min(pending.len()));
        self.plaintext = pending;
    }

    /// Moves TLS records to the channel; closes it once the handler closed or TLS failed.
    fn flush(&mut self, out: &mut Outbox<'_>) {
        while self.tls.wants_write() {
            let mut records = Vec::new();
            if self.tls.write_tls(&mut records).is_err() || records.is_empty() {
                break;
            }
            out.write(&records);
        }
        if self.inner_closed || self.failed {
            out.close();
        }
    }
}

impl ChannelHandler for TlsChannel {
    fn on_open(&mut self, out: &mut Outbox<'_>) {
        // The handler speaks once TLS is up; its first words wait in rustls until then.
        self.with_inner(out, |inner, inner_out| inner.on_open(inner_out));
    }

    fn on_data(&mut self, data: &[u8], out: &mut Outbox<'_>) -> usize {
        if self.failed || self.inner_closed {
            return data.len();
        }
        if self.plaintext.len() >= MAX_PLAINTEXT {
            self.deliver(out);
            if self.plaintext.len() >= MAX_PLAINTEXT {
                return 0;
            }
        }
        let mut input = data;
        while !input.is_empty() {
            match self.tls.read_tls(&mut input) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Err(err) = self.tls.process_new_packets() {
                tracing::debug!("TLS in a channel failed: {err}");
                self.failed = true;
                self.flush(out);
                return data.len();
            }
            let mut buf = [0u8; 16 * 1024];
            loop {
                match self.tls.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => self.plaintext.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
        }
        let taken = data.len() - input.len();
        self.deliver(out);
        self.flush(out);
        taken
    }

    fn on_eof(&mut self, out: &mut Outbox<'_>) {
        self.deliver(out);
        self.with_inner(out, |inner, inner_out| inner.on_eof(inner_out));
        out.close();
    }

    fn on_wake(&mut self, out: &mut Outbox<'_>) {
        self.deliver(out);
        self.with_inner(out, |inner, inner_out| inner.on_wake(inner_out));
    }

    fn poll_deadline(&self) -> Option<Instant> {
        self.inner.poll_deadline()
    }

    fn on_timer(&mut self, now: Instant, out: &mut Outbox<'_>) {
        self.with_inner(out, |inner, inner_out| inner.on_timer(now, inner_out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amt::echo::Echo;
    use crate::amt::service::WakeSet;

    /// A channel of `service` to 16993.
    fn open(service: &TlsService) -> Box<dyn ChannelHandler> {
        let ch = protocols::session::ChannelId(1);
        let info = ChannelInfo {
            uuid: uuid::Uuid::nil(),
            ch,
            port: 16993,
            originator: bytes::Bytes::new(),
            originator_port: 0,
            log_level: tracing::Level::DEBUG,
            waker: WakeSet::new().waker(ch),
        };
        service.open(&info).unwrap()
    }

    /// Drives a wrapped echo through a rustls client, in memory.
    #[test]
    fn a_client_talks_to_the_wrapped_service_through_tls() {
        let config = self_signed_config("amt.local").unwrap();
        let service = TlsService::new(Arc::new(Echo), config);
        let mut handler = open(&service);

        let verifier = Arc::new(AcceptAny(rustls::crypto::aws_lc_rs::default_provider()));
        let client_config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), "amt.local".try_into().unwrap()).unwrap();
        client.writer().write_all(b"hello through TLS").unwrap();
        let mut received = Vec::new();
        for _ in 0..20 {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).unwrap();
            }
            let mut buf = BytesMut::new();
            let mut close = false;
            let mut out = Outbox::new(&mut buf, 1 << 20, &mut close);
            if !to_server.is_empty() {
                assert_eq!(handler.on_data(&to_server, &mut out), to_server.len());
            }
            let mut from_server = &buf[..];
            while !from_server.is_empty() {
                client.read_tls(&mut from_server).unwrap();
                client.process_new_packets().unwrap();
            }
            let mut plain = [0u8; 256];
            while let Ok(n) = client.reader().read(&mut plain) {
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&plain[..n]);
            }
            if received.len() >= 17 {
                break;
            }
        }
        assert_eq!(received, b"hello through TLS");
    }

    #[test]
    fn garbage_instead_of_tls_closes_the_channel() {
        let service = TlsService::new(Arc::new(Echo), self_signed_config("amt.local").unwrap());
        let mut handler = open(&service);
        let mut buf = BytesMut::new();
        let mut close = false;
        let mut out = Outbox::new(&mut buf, 1 << 20, &mut close);
        let garbage = b"POST /wsman HTTP/1.1\r\n\r\n";
        assert_eq!(handler.on_data(garbage, &mut out), garbage.len());
        assert!(out.is_closing(), "plain HTTP on a TLS port ends the channel");
    }

    #[derive(Debug)]
    struct AcceptAny(rustls::crypto::CryptoProvider);

    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
