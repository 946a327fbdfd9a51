//! Sending the outbox over SMTP: [`Transport`] (lettre's async SMTP client on tokio, rustls with
//! the system's roots and an optional CA file; plain, STARTTLS or implicit TLS; optional login;
//! timeouts) and [`run`], the daemon's worker that looks at the outbox every
//! `mail.poll_interval_secs`, sends the due mail in bounded batches, retries failures with
//! exponential back-off ([`RetryPolicy`]) and gives up after `mail.max_attempts` attempts or
//! `mail.max_age_hours`, keeping the last error.
//!
//! Every failure is retried (a server's 5xx too: a wrong password or a full mailbox is fixed
//! by people, and mail must not be lost meanwhile), except a mail that cannot be a message at
//! all (an address that does not parse, a subject with a line break): it is given up at once.
//! With no `mail.smtp_host`, mail stays queued and a warning is logged once.
//!
//! What it does not do: render letters (`templates`) or decide which are due (their callers).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::config::{MailConfig, MailSecurity};
use crate::metrics::Metrics;
use crate::state::Shared;
use crate::store::{OutboxMail, Store, StoreError};

/// Why the transport could not be set up (at the daemon's start).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read mail.password_file {path}: {source}")]
    PasswordFile { path: String, source: std::io::Error },
    #[error("mail.password_file {0} is empty")]
    EmptyPassword(String),
    #[error("cannot read mail.ca_file {path}: {source}")]
    CaFile { path: String, source: std::io::Error },
    #[error("mail.ca_file {path} holds no usable PEM certificate: {source}")]
    BadCa { path: String, source: lettre::transport::smtp::Error },
    #[error("mail.from {0:?} is not an address")]
    BadFrom(String),
    #[error("the SMTP TLS settings for {host}: {source}")]
    Tls { host: String, source: lettre::transport::smtp::Error },
}

/// Why one mail was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The mail cannot be a message (a bad address, a line break in the subject): retrying
    /// cannot help.
    #[error("{0}")]
    Unsendable(String),
    /// The server or the way to it failed; a later attempt may work. `connection`: no server
    /// answered (refused, timed out, TLS failed), so the rest of a batch would fail alike.
    #[error("{message}")]
    Failed { message: String, connection: bool },
}

/// The SMTP client, as configured.
#[derive(Clone)]
pub struct Transport {
    smtp: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port (security)`, for logs.
    describe: String,
    /// The longest one send may take (connect, TLS, login and the commands).
    deadline: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("server", &self.describe).field("from", &self.from.to_string()).finish()
    }
}

impl Transport {
    /// The transport `config` describes; `None` without `mail.smtp_host`. The password file is
    /// read now (a relative path is taken from `config_dir`).
    pub fn from_config(config: &MailConfig, config_dir: &Path) -> Result<Option<Transport>, SetupError> {
        let Some(host) = config.smtp_host.as_deref().map(str::trim) else {
            return Ok(None);
        };
        let from_text = config.from.clone().unwrap_or_default();
        let from: Mailbox = from_text.parse().map_err(|_| SetupError::BadFrom(from_text.clone()))?;
        let port = config.smtp_port.unwrap_or_else(|| config.security.default_port());
        let timeout = Duration::from_secs(config.timeout_secs.max(1));
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(2).idle_timeout(Duration::from_secs(60)));
        if config.security != MailSecurity::None {
            let mut tls = TlsParameters::builder(host.to_string());
            if let Some(path) = &config.ca_file {
                let path = config_dir.join(path);
                let pem = std::fs::read(&path)
                    .map_err(|source| SetupError::CaFile { path: path.display().to_string(), source })?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|source| SetupError::BadCa { path: path.display().to_string(), source })?;
                tls = tls.add_root_certificate(cert);
            }
            let tls = tls.build_rustls().map_err(|source| SetupError::Tls { host: host.to_string(), source })?;
            builder = builder.tls(match config.security {
                MailSecurity::Tls => Tls::Wrapper(tls),
                _ => Tls::Required(tls),
            });
        }
        if let (Some(user), Some(file)) = (&config.username, &config.password_file) {
            let path = config_dir.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| SetupError::PasswordFile { path: path.display().to_string(), source })?;
            let password = text.lines().next().unwrap_or_default().to_string();
            if password.is_empty() {
                return Err(SetupError::EmptyPassword(path.display().to_string()));
            }
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Some(Transport {
            smtp: builder.build(),
            from,
            describe: format!("{host}:{port} ({})", config.security.as_str()),
            // Connect, TLS, EHLO, login, MAIL, RCPT, DATA and the body: each within the timeout.
            deadline: timeout * 8,
        }))
    }

    /// `host:port (security)`.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// The message of `mail`, built with lettre's builders (which encode headers; a subject
    /// with a line break is refused before that).
    pub fn message(&self, mail: &OutboxMail) -> Result<Message, SendError> {
        if mail.subject.contains(['\r', '\n']) {
            return Err(SendError::Unsendable("the subject holds a line break".into()));
        }
        let to: Mailbox = mail
            .recipient
            .parse()
            .map_err(|e| SendError::Unsendable(format!("{:?} is not an address: {e}", mail.recipient)))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body.clone())
            .map_err(|e| SendError::Unsendable(format!("cannot build the message: {e}")))
    }

    /// Sends one mail: Ok once the server accepted it.
    pub async fn send(&self, mail: &OutboxMail) -> Result<(), SendError> {
        let message = self.message(mail)?;
        match tokio::time::timeout(self.deadline, self.smtp.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(SendError::Failed {
                connection: !err.is_response(),
                message: format!("{} ({}): {err}", self.describe, error_kind(&err)),
            }),
            Err(_) => Err(SendError::Failed {
                connection: true,
                message: format!("{}: no answer within {:?}", self.describe, self.deadline),
            }),
        }
    }
}

fn error_kind(err: &lettre::transport::smtp::Error) -> &'static str {
    if err.is_permanent() {
        "permanent error"
    } else if err.is_transient() {
        "transient error"
    } else if err.is_timeout() {
        "timeout"
    } else if err.is_tls() {
        "TLS"
    } else {
        "connection"
    }
}

/// When to try a failed mail again, and when to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
}

impl RetryPolicy {
    pub fn from_config(config: &MailConfig) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(config.retry_base_secs.max(1)),
            max: Duration::from_secs(config.retry_max_secs.max(config.retry_base_secs).max(1)),
            max_attempts: config.max_attempts.max(1),
            max_age: Duration::from_secs(u64::from(config.max_age_hours.max(1)) * 3600),
        }
    }

    /// The wait after attempt number `attempts` (1 the first) failed: `base`, doubling after
    /// each further attempt, at most `max`.
    pub fn delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// Whether a mail queued at `created_at` whose attempt number `attempts` just failed is
    /// given up at `now`.
    pub fn gives_up(&self, attempts: u32, created_at: OffsetDateTime, now: OffsetDateTime) -> bool {
        attempts >= self.max_attempts || (now - created_at).unsigned_abs() >= self.max_age
    }
}

/// What one pass over the outbox did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub sent: usize,
    pub failed: usize,
    pub gave_up: usize,
}

/// What delivers the outbox rows of one channel: SMTP ([`Transport`]) or webhooks
/// (`meter::webhook::Poster`). [`send_due`] does the rest, the same for both: the claim and its
/// lease, retries with back-off, giving up, the records.
pub trait Courier: Sync {
    /// What it delivers, for logs ("mail", "webhook").
    const WHAT: &'static str;
    /// The longest one delivery may take.
    fn deadline(&self) -> Duration;
    /// Claims the due rows of its channel.
    fn claim(
        &self,
        store: &Store,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        batch: u32,
    ) -> impl std::future::Future<Output = Result<Vec<OutboxMail>, StoreError>> + Send;
    /// Delivers one row.
    fn deliver(&self, mail: &OutboxMail) -> impl std::future::Future<Output = Result<(), SendError>> + Send;
    /// Counts an outcome in the metrics (mail has its own; others none yet).
    fn count(&self, _metrics: &Metrics, _outcome: Outcome) {}
}

/// What became of one delivery attempt, for [`Courier::count`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Failed,
    GaveUp,
}

impl Courier for Transport {
    const WHAT: &'static str = "mail";

    fn deadline(&self) -> Duration {
        self.deadline
    }

    async fn claim(
        &self,
        store: &Store,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        batch: u32,
    ) -> Result<Vec<OutboxMail>, StoreError> {
        store.claim_mail(now, lease_until, batch).await
    }

    async fn deliver(&self, mail: &OutboxMail) -> Result<(), SendError> {
        self.send(mail).await
    }

    fn count(&self, metrics: &Metrics, outcome: Outcome) {
        match outcome {
            Outcome::Sent => metrics.mail_sent(),
            Outcome::Failed => metrics.mail_failed(),
            Outcome::GaveUp => metrics.mail_gave_up(),
        }
    }
}

/// Claims the due rows of `courier`'s channel (at most `batch`) and delivers them, recording
/// each outcome in the store and in `metrics`. After a failure where no server answered, the
/// rest of the batch is not tried: it fails with the same error (and its back-off).
pub async fn send_due<C: Courier>(
    store: &Store,
    courier: &C,
    policy: &RetryPolicy,
    batch: u32,
    metrics: &Metrics,
) -> Result<Pass, StoreError> {
    let what = C::WHAT;
    let now = OffsetDateTime::now_utc();
    // Long enough for the whole batch at its worst; a worker that died meanwhile leaves its
    // rows due again once it ends.
    let lease = courier.deadline().saturating_mul(batch.max(1)) + Duration::from_secs(60);
    let lease_until = now + lease;
    let mails = courier.claim(store, now, lease_until, batch).await?;
    let mut pass = Pass::default();
    let mut down: Option<String> = None;
    for mail in &mails {
        let outcome = match &down {
            Some(message) => Err(SendError::Failed { message: format!("not tried: {message}"), connection: true }),
            None => courier.deliver(mail).await,
        };
        let now = OffsetDateTime::now_utc();
        match outcome {
            Ok(()) => {
                store.mail_sent(mail.id, now).await?;
                courier.count(metrics, Outcome::Sent);
                pass.sent += 1;
                info!(id = mail.id, kind = %mail.kind, attempts = mail.attempts, "{what} sent");
                if let Some(guid) = mail.invitation_guid {
                    store.mark_invitation_sent(guid, now).await?;
                }
            }
            Err(SendError::Unsendable(error)) => {
                store.mail_gave_up(mail.id, &error, now).await?;
                courier.count(metrics, Outcome::GaveUp);
                pass.gave_up += 1;
                warn!(id = mail.id, kind = %mail.kind, %error, "{what} given up: it cannot be sent");
            }
            Err(SendError::Failed { message, connection }) => {
                courier.count(metrics, Outcome::Failed);
                pass.failed += 1;
                if policy.gives_up(mail.attempts, mail.created_at, now) {
                    store.mail_gave_up(mail.id, &message, now).await?;
                    courier.count(metrics, Outcome::GaveUp);
                    pass.gave_up += 1;
                    warn!(id = mail.id, kind = %mail.kind, attempts = mail.attempts, error = %message, "{what} given up");
                } else {
                    let delay = policy.delay(mail.attempts);
                    store.mail_failed(mail.id, &message, now + delay).await?;
                    warn!(
                        id = mail.id, kind = %mail.kind, attempts = mail.attempts, retry_in_secs = delay.as_secs(),
                        error = %message, "{what} not sent; retrying later"
                    );
                }
                if connection && down.is_none() {
                    down = Some(message);
                }
            }
        }
    }
    Ok(pass)
}

/// One tick of an outbox worker: batch after batch while full batches go out, at most ten, then
/// the next tick.
pub async fn drain<C: Courier>(store: &Store, courier: &C, policy: &RetryPolicy, batch: u32, metrics: &Metrics) {
    for _ in 0..10 {
        match send_due(store, courier, policy, batch, metrics).await {
            Ok(pass) if pass.sent + pass.failed + pass.gave_up == batch as usize && pass.failed == 0 => {}
            Ok(_) => break,
            Err(err) => {
                warn!(error = %err, "{}: the outbox could not be updated", C::WHAT);
                break;
            }
        }
    }
}

/// The daemon's mail worker (aborted with the daemon's other tasks at shutdown): every
/// `mail.poll_interval_secs`, updates the pending gauge and sends what is due (batch after
/// batch while full batches go out).
pub async fn run(shared: Arc<Shared>, transport: Option<Transport>) {
    let (store, config, metrics) = (&shared.store, &shared.config.mail, &shared.metrics);
    let policy = RetryPolicy::from_config(config);
    let batch = config.batch_size.max(1);
    let mut warned = false;
    let mut tick = tokio::time::interval(Duration::from_secs(config.poll_interval_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Some(t) = &transport {
        info!(server = %t.describe(), "mail: sending the outbox");
    }
    loop {
        tick.tick().await;
        match store.outbox_pending().await {
            Ok(pending) => {
                metrics.mail_pending(pending);
                if transport.is_none() && pending > 0 && !warned {
                    warn!(
                        pending,
                        "mail.smtp_host is unset: mail waits in the outbox until an SMTP server is configured"
                    );
                    warned = true;
                }
                if pending == 0 {
                    continue;
                }
            }
            Err(err) => {
                warn!(error = %err, "mail: cannot read the outbox");
                continue;
            }
        }
        let Some(transport) = &transport else {
            continue;
        };
        drain(store, transport, &policy, batch, metrics).await;
        if let Ok(pending) = store.outbox_pending().await {
            metrics.mail_pending(pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::from_config(&MailConfig::default())
    }

    #[test]
    fn mail_retries_back_off_doubling_up_to_the_cap() {
        let p = policy();
        let secs: Vec<u64> = (1..=9).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(p.delay(u32::MAX).as_secs(), 3600);
        assert_eq!(p.delay(0).as_secs(), 30);
    }

    #[test]
    fn mail_is_given_up_after_max_attempts_or_max_age() {
        let p = policy();
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert!(!p.gives_up(11, t0, t0 + time::Duration::hours(1)));
        assert!(p.gives_up(12, t0, t0 + time::Duration::hours(1)));
        assert!(!p.gives_up(1, t0, t0 + time::Duration::hours(71)));
        assert!(p.gives_up(1, t0, t0 + time::Duration::hours(72)));
    }

    fn transport(config: &MailConfig) -> Transport {
        Transport::from_config(config, Path::new("/")).unwrap().unwrap()
    }

    fn smtp_config() -> MailConfig {
        MailConfig {
            smtp_host: Some("127.0.0.1".into()),
            security: MailSecurity::None,
            from: Some("Tether <tether@example.net>".into()),
            ..MailConfig::default()
        }
    }

    fn outbox_mail(recipient: &str, subject: &str) -> OutboxMail {
        OutboxMail {
            id: 1,
            kind: "test".into(),
            recipient: recipient.into(),
            subject: subject.into(),
            body: "body\n".into(),
            invitation_guid: None,
            created_at: OffsetDateTime::now_utc(),
            attempts: 1,
        }
    }

    // The transport's pool lives on a tokio runtime.
    #[tokio::test]
    async fn mail_without_a_server_is_no_transport_and_a_missing_password_file_is_named() {
        assert!(Transport::from_config(&MailConfig::default(), Path::new("/")).unwrap().is_none());
        let config = MailConfig {
            username: Some("u".into()),
            password_file: Some("missing-smtp-password".into()),
            ..smtp_config()
        };
        let dir = tempfile::tempdir().unwrap();
        let err = Transport::from_config(&config, dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing-smtp-password"), "{err}");
        std::fs::write(dir.path().join("missing-smtp-password"), "s3cret\n").unwrap();
        Transport::from_config(&config, dir.path()).unwrap().unwrap();
        for security in [MailSecurity::Starttls, MailSecurity::Tls] {
            let t = transport(&MailConfig { security, smtp_host: Some("smtp.example.net".into()), ..smtp_config() });
            assert!(t.describe().starts_with(&format!("smtp.example.net:{}", security.default_port())));
        }
    }

    #[tokio::test]
    async fn mail_messages_refuse_header_injection_and_bad_addresses() {
        let t = transport(&smtp_config());
        let message = t.message(&outbox_mail("carl@example.org", "Hello")).unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(text.contains("To: carl@example.org") && text.contains("Subject: Hello"), "{text}");
        assert!(text.contains("From: Tether <tether@example.net>") && text.contains("text/plain"), "{text}");
        let err = t.message(&outbox_mail("carl@example.org", "Hi\r\nBcc: x@example.org")).unwrap_err();
        assert!(matches!(err, SendError::Unsendable(_)), "{err}");
        let err = t.message(&outbox_mail("carl@example.org\r\nBcc: x@example.org", "Hi")).unwrap_err();
        assert!(matches!(err, SendError::Unsendable(_)), "{err}");
        assert!(matches!(t.message(&outbox_mail("not an address", "Hi")), Err(SendError::Unsendable(_))));
    }
}
