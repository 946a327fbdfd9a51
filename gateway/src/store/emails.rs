//! Email changes waiting for confirmation: a change of a user's email, or of the contact email
//! of one of their contact relations, takes effect only when the link sent to the new address
//! is followed ([`Store::confirm_email_change`] with the link's secret). Only a hash of the
//! secret is stored.
//!
//! What it does not do: send the link (the mail slice does, with what
//! [`Store::request_email_change`] returns).

use base64::Engine;
use rand::RngCore;
use time::OffsetDateTime;

use super::{AccountError, Stmt, Store};
use crate::auth;

/// A confirmed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailChanged {
    pub user_id: i64,
    /// `Some`: the contact email of this relation changed; `None`: the user's email did.
    pub contact_id: Option<i64>,
    pub new_email: String,
}

/// The secret of a confirmation link: 32 random bytes, base64url.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Store {
    /// Asks to change user `user_id`'s email (or, with `contact_id`, the contact email of that
    /// relation of theirs) to `new_email`; the change waits until the secret returned (for the
    /// link mailed to the new address) is confirmed before `now + valid_for`. A newer request
    /// for the same address replaces older ones.
    pub async fn request_email_change(
        &self,
        user_id: i64,
        contact_id: Option<i64>,
        new_email: &str,
        now: OffsetDateTime,
        valid_for: time::Duration,
    ) -> Result<String, AccountError> {
        if self.user(user_id).await?.is_none() {
            return Err(AccountError::NoSuchUser(user_id));
        }
        if let Some(id) = contact_id {
            if self.contact(id).await?.and_then(|c| c.user_id) != Some(user_id) {
                return Err(AccountError::NoSuchContact(id));
            }
        }
        let secret = new_secret();
        let mut tx = self.begin().await?;
        tx.execute(
            Stmt::new(
                "DELETE FROM email_changes WHERE user_id = $1
                   AND COALESCE(contact_id, 0) = COALESCE($2, 0)",
            )
            .int(user_id)
            .int(contact_id),
        )
        .await?;
        tx.execute(
            Stmt::new(
                "INSERT INTO email_changes (user_id, contact_id, new_email, token_hash, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .int(user_id)
            .int(contact_id)
            .str(new_email)
            .text(auth::hash_token(&secret))
            .time(now)
            .time(now + valid_for),
        )
        .await?;
        tx.commit().await?;
        Ok(secret)
    }

    /// Follows a confirmation link: the change takes effect, once. An expired link is refused
    /// (and forgotten).
    pub async fn confirm_email_change(&self, secret: &str, now: OffsetDateTime) -> Result<EmailChanged, AccountError> {
        let hash = auth::hash_token(secret);
        let mut tx = self.begin().await?;
        let stmt =
            Stmt::new("SELECT user_id, contact_id, new_email, expires_at FROM email_changes WHERE token_hash = $1")
                .text(hash.clone());
        let row = tx
            .fetch_optional(stmt, |r| Ok((r.int(0)?.unwrap_or_default(), r.int(1)?, r.string(2)?, r.time(3)?)))
            .await?;
        let Some((user_id, contact_id, new_email, expires_at)) = row else {
            return Err(AccountError::NoSuchEmailChange);
        };
        tx.execute(Stmt::new("DELETE FROM email_changes WHERE token_hash = $1").text(hash)).await?;
        if expires_at.is_none_or(|at| at <= now) {
            tx.commit().await?;
            return Err(AccountError::EmailChangeExpired);
        }
        let apply = match contact_id {
            Some(id) => Stmt::new("UPDATE contacts SET contact_email = $3 WHERE id = $1 AND user_id = $2")
                .int(id)
                .int(user_id)
                .str(&new_email),
            None => Stmt::new("UPDATE users SET email = $2 WHERE id = $1").int(user_id).str(&new_email),
        };
        tx.execute(apply).await?;
        tx.commit().await?;
        Ok(EmailChanged { user_id, contact_id, new_email })
    }
}
