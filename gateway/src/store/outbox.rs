//! The mail outbox: every mail the gateway writes is a row here first, and stays until an SMTP
//! server accepted it (`sent_at`) or the worker gave up on it (`gave_up_at`, with the last
//! error). So no mail is lost while SMTP is down or the gateway restarts.
//!
//! Life cycle of a row: *queued* (`next_attempt_at` says when it is due) → claimed by a worker
//! ([`Store::claim_mail`]: `attempts + 1`, and `next_attempt_at` pushed past the claim's lease in
//! the same statement, so that another gateway of the fleet does not take it meanwhile; on
//! PostgreSQL the rows are also locked `FOR UPDATE SKIP LOCKED`) → *sent*, or back to *queued*
//! with a later `next_attempt_at` ([`Store::mail_failed`]), or *given up*. A worker that dies
//! while holding a claim leaves the mail due again once the lease ends: a mail may go out twice
//! then, never zero times.
//!
//! Webhooks (alerts posted as JSON for IM) go through the same rows, with `channel = 'webhook'`:
//! the same lease, retries and giving up, claimed by their own worker.
//!
//! What it does not do: render mail (`mail::templates`), talk SMTP (`mail::sender`) or decide
//! the back-off (the worker passes the times in).

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Cols, Stmt, Store, StoreError};

/// Longest error text kept with a mail (an SMTP server's answer can be long).
pub const MAX_MAIL_ERROR: usize = 1000;
/// Most mails one claim or listing returns.
pub const MAX_MAIL_BATCH: u32 = 1000;
/// The outbox's channels: mail over SMTP, and webhooks (a JSON POST, for IM).
const CHANNEL_EMAIL: &str = "email";
const CHANNEL_WEBHOOK: &str = "webhook";

/// A mail to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    /// What kind of mail (`invitation`, `contact_removed`, …), for operators and metrics.
    pub kind: String,
    pub recipient: String,
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    /// The invitation this mail carries: marked sent (`contacts.invitation_sent_at`) when an SMTP
    /// server accepts it.
    pub invitation_guid: Option<Uuid>,
}

/// A mail claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMail {
    pub id: i64,
    pub kind: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub invitation_guid: Option<Uuid>,
    pub created_at: OffsetDateTime,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

/// Where a mail is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MailState {
    /// Waiting for its next attempt (or being sent now).
    Queued,
    Sent,
    GaveUp,
}

impl MailState {
    pub fn as_str(self) -> &'static str {
        match self {
            MailState::Queued => "queued",
            MailState::Sent => "sent",
            MailState::GaveUp => "gave_up",
        }
    }
}

/// One row of the outbox as operators see it (never the body: it may carry a link's secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxRecord {
    pub id: i64,
    pub kind: String,
    pub recipient: String,
    pub subject: String,
    pub invitation_guid: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub gave_up_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    pub state: MailState,
}

fn guid(text: Option<String>) -> Option<Uuid> {
    text.and_then(|t| Uuid::parse_str(&t).ok())
}

fn attempts(r: &dyn Cols, i: usize) -> sqlx::Result<u32> {
    Ok(u32::try_from(r.count(i)?).unwrap_or(u32::MAX))
}

fn mail_row(r: &dyn Cols) -> sqlx::Result<OutboxMail> {
    Ok(OutboxMail {
        id: r.int(0)?.unwrap_or_default(),
        kind: r.string(1)?,
        recipient: r.string(2)?,
        subject: r.string(3)?,
        body: r.string(4)?,
        invitation_guid: guid(r.text(5)?),
        created_at: r.time(6)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        attempts: attempts(r, 7)?,
    })
}

fn record_row(r: &dyn Cols) -> sqlx::Result<OutboxRecord> {
    let sent_at = r.time(8)?;
    let gave_up_at = r.time(9)?;
    let state = match (sent_at, gave_up_at) {
        (Some(_), _) => MailState::Sent,
        (None, Some(_)) => MailState::GaveUp,
        (None, None) => MailState::Queued,
    };
    Ok(OutboxRecord {
        id: r.int(0)?.unwrap_or_default(),
        kind: r.string(1)?,
        recipient: r.string(2)?,
        subject: r.string(3)?,
        invitation_guid: guid(r.text(4)?),
        created_at: r.time(5)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        attempts: attempts(r, 6)?,
        next_attempt_at: r.time(7)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        sent_at,
        gave_up_at,
        last_error: r.text(10)?,
        state,
    })
}

/// `error` cut to [`MAX_MAIL_ERROR`] bytes (at a character boundary).
fn bounded(error: &str) -> String {
    let mut end = error.len().min(MAX_MAIL_ERROR);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_string()
}

/// The due mails' claim: the subquery picks them, the update pushes them past the lease.
const CLAIM_SQLITE: &str = "UPDATE mail_outbox SET attempts = attempts + 1, next_attempt_at = $2
     WHERE id IN (SELECT id FROM mail_outbox
                  WHERE sent_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= $1 AND channel = $4
                  ORDER BY next_attempt_at, id LIMIT $3)
       AND sent_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= $1
     RETURNING id, kind, recipient, subject, body, invitation_guid, created_at, attempts";
/// The same on PostgreSQL, whose gateways share the table: rows another gateway is claiming at
/// this moment are skipped rather than claimed twice.
const CLAIM_POSTGRES: &str = "UPDATE mail_outbox SET attempts = attempts + 1, next_attempt_at = $2
     WHERE id IN (SELECT id FROM mail_outbox
                  WHERE sent_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= $1 AND channel = $4
                  ORDER BY next_attempt_at, id LIMIT $3
                  FOR UPDATE SKIP LOCKED)
       AND sent_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= $1
     RETURNING id, kind, recipient, subject, body, invitation_guid, created_at, attempts";

impl Store {
    /// Queues a mail, due at once. Its id.
    pub async fn enqueue_mail(&self, mail: &NewMail, now: OffsetDateTime) -> Result<i64, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO mail_outbox (kind, recipient, subject, body, invitation_guid, created_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
        )
        .str(&mail.kind)
        .str(&mail.recipient)
        .str(&mail.subject)
        .str(&mail.body)
        .text(mail.invitation_guid.map(|g| g.to_string()))
        .time(now);
        Ok(self.fetch_optional(stmt, |r| r.int(0)).await?.flatten().unwrap_or_default())
    }

    /// Claims up to `limit` mails due at `now` (oldest due first) for one attempt each: their
    /// attempts count up, and they are not due again before `lease_until` (by then the worker has
    /// marked each sent, failed or given up; if it died, they are due again).
    pub async fn claim_mail(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<OutboxMail>, StoreError> {
        self.claim(CHANNEL_EMAIL, now, lease_until, limit).await
    }

    /// Claims webhook deliveries as [`Store::claim_mail`] claims mail: `recipient` is the URL,
    /// `subject` the event, `body` the JSON to post.
    pub async fn claim_webhooks(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<OutboxMail>, StoreError> {
        self.claim(CHANNEL_WEBHOOK, now, lease_until, limit).await
    }

    /// Queues a webhook delivery (a POST of `payload` to `url`), due at once. Its id.
    pub async fn enqueue_webhook(
        &self,
        kind: &str,
        url: &str,
        event: &str,
        payload: &str,
        now: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO mail_outbox (kind, recipient, subject, body, created_at, next_attempt_at, channel)
             VALUES ($1, $2, $3, $4, $5, $5, $6) RETURNING id",
        )
        .str(kind)
        .str(url)
        .str(event)
        .str(payload)
        .time(now)
        .str(CHANNEL_WEBHOOK);
        Ok(self.fetch_optional(stmt, |r| r.int(0)).await?.flatten().unwrap_or_default())
    }

    async fn claim(
        &self,
        channel: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<OutboxMail>, StoreError> {
        let sql = if self.is_postgres() { CLAIM_POSTGRES } else { CLAIM_SQLITE };
        let stmt =
            Stmt::new(sql).time(now).time(lease_until).int(i64::from(limit.clamp(1, MAX_MAIL_BATCH))).str(channel);
        let mut mails = self.fetch_all(stmt, mail_row).await?;
        // RETURNING gives no order.
        mails.sort_by_key(|m| m.id);
        Ok(mails)
    }

    /// An SMTP server accepted mail `id`. False if it was sent or given up already.
    pub async fn mail_sent(&self, id: i64, now: OffsetDateTime) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "UPDATE mail_outbox SET sent_at = $2, last_error = NULL
             WHERE id = $1 AND sent_at IS NULL AND gave_up_at IS NULL",
        )
        .int(id)
        .time(now);
        Ok(self.execute(stmt).await? > 0)
    }

    /// An attempt at mail `id` failed with `error`; it is due again at `next_attempt_at`.
    pub async fn mail_failed(&self, id: i64, error: &str, next_attempt_at: OffsetDateTime) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "UPDATE mail_outbox SET last_error = $2, next_attempt_at = $3
             WHERE id = $1 AND sent_at IS NULL AND gave_up_at IS NULL",
        )
        .int(id)
        .text(bounded(error))
        .time(next_attempt_at);
        Ok(self.execute(stmt).await? > 0)
    }

    /// The worker stops trying mail `id`; `error` is kept as why.
    pub async fn mail_gave_up(&self, id: i64, error: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "UPDATE mail_outbox SET last_error = $2, gave_up_at = $3
             WHERE id = $1 AND sent_at IS NULL AND gave_up_at IS NULL",
        )
        .int(id)
        .text(bounded(error))
        .time(now);
        Ok(self.execute(stmt).await? > 0)
    }

    /// The newest `limit` mails of the outbox, newest first, in every state.
    pub async fn list_outbox(&self, limit: u32) -> Result<Vec<OutboxRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT id, kind, recipient, subject, invitation_guid, created_at, attempts, next_attempt_at, sent_at,
                    gave_up_at, last_error
             FROM mail_outbox ORDER BY id DESC LIMIT $1",
        )
        .int(i64::from(limit.clamp(1, MAX_MAIL_BATCH)));
        self.fetch_all(stmt, record_row).await
    }

    /// One mail of the outbox.
    pub async fn outbox_mail(&self, id: i64) -> Result<Option<OutboxRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT id, kind, recipient, subject, invitation_guid, created_at, attempts, next_attempt_at, sent_at,
                    gave_up_at, last_error
             FROM mail_outbox WHERE id = $1",
        )
        .int(id);
        self.fetch_optional(stmt, record_row).await
    }

    /// Mails neither sent nor given up.
    pub async fn outbox_pending(&self) -> Result<u64, StoreError> {
        let stmt = Stmt::new(
            "SELECT COUNT(*) FROM mail_outbox WHERE sent_at IS NULL AND gave_up_at IS NULL AND channel = 'email'",
        );
        Ok(self.fetch_optional(stmt, |r| r.count(0)).await?.unwrap_or_default())
    }
}
