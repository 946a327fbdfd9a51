//! Webhook deliveries: the outbox's `webhook` rows POSTed as JSON (`Content-Type:
//! application/json`) to the contact's https URL, over rustls with the system's roots and
//! `webhooks.ca_file`, each within `webhooks.timeout_secs`. A 2xx answer delivers it; anything
//! else is retried with the mail's back-off (`mail.retry_*`) until `mail.max_attempts` or
//! `mail.max_age_hours`, as [`crate::mail::sender::send_due`] does for mail.
//!
//! What it does not do: decide what to post (`alerting`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tracing::info;

use crate::config::WebhooksConfig;
use crate::mail::sender::{drain, Courier, RetryPolicy, SendError};
use crate::state::Shared;
use crate::store::{OutboxMail, Store, StoreError};

/// Posts webhooks.
#[derive(Clone)]
pub struct Poster {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for Poster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poster").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Poster {
    /// The poster `config` describes (a relative `ca_file` is taken from `config_dir`).
    pub fn from_config(config: &WebhooksConfig, config_dir: &Path) -> anyhow::Result<Poster> {
        use anyhow::Context;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(file) = &config.ca_file {
            let path = config_dir.join(file);
            let pem = std::fs::read(&path).with_context(|| format!("reading webhooks.ca_file {}", path.display()))?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(cert.with_context(|| format!("webhooks.ca_file {} is not PEM", path.display()))?)?;
                added += 1;
            }
            anyhow::ensure!(added > 0, "webhooks.ca_file {} holds no certificate", path.display());
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Poster {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            timeout: Duration::from_secs(config.timeout_secs.max(1)),
        })
    }

    /// POSTs `body` to `url`; the status.
    async fn post(&self, url: &str, body: &str) -> Result<u16, SendError> {
        let unsendable = |why: &str| SendError::Unsendable(format!("webhook URL {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| unsendable("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(unsendable("only https:// URLs are posted to"));
        }
        let host = uri.host().ok_or_else(|| unsendable("no host"))?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(443);
        let name = ServerName::try_from(host.clone()).map_err(|_| unsendable("not a host name"))?;
        // Each URL is its own server: one down says nothing of the rest of a batch.
        let failed =
            |e: &dyn std::fmt::Display| SendError::Failed { message: format!("{url}: {e}"), connection: false };
        let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| failed(&e))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| failed(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| failed(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or(host);
        let request = Request::post(path)
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("tether/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| unsendable(&e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
        let status = response.status().as_u16();
        // Read (a bounded amount of) the answer so that the server sees the exchange through.
        let _ = tokio::time::timeout(Duration::from_secs(1), response.into_body().collect()).await;
        Ok(status)
    }
}

impl Courier for Poster {
    const WHAT: &'static str = "webhook";

    fn deadline(&self) -> Duration {
        self.timeout
    }

    async fn claim(
        &self,
        store: &Store,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        batch: u32,
    ) -> Result<Vec<OutboxMail>, StoreError> {
        store.claim_webhooks(now, lease_until, batch).await
    }

    async fn deliver(&self, mail: &OutboxMail) -> Result<(), SendError> {
        let posted = tokio::time::timeout(self.timeout, self.post(&mail.recipient, &mail.body)).await;
        match posted {
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(SendError::Failed {
                message: format!("{} answered HTTP {status}", mail.recipient),
                connection: false,
            }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(SendError::Failed {
                message: format!("{}: no answer within {:?}", mail.recipient, self.timeout),
                connection: false,
            }),
        }
    }
}

/// The daemon's webhook worker: every `mail.poll_interval_secs`, posts what is due.
pub async fn run(shared: Arc<Shared>, poster: Poster) {
    let policy = RetryPolicy::from_config(&shared.config.mail);
    let batch = shared.config.mail.batch_size.max(1);
    let mut tick = tokio::time::interval(Duration::from_secs(shared.config.mail.poll_interval_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!("webhooks: posting alerts from the outbox");
    loop {
        tick.tick().await;
        drain(&shared.store, &poster, &policy, batch, &shared.metrics).await;
    }
}
