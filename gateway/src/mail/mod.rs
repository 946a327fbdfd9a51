//! Mail to people: the letters the accounts' life cycle calls for (an invitation, a removal, a
//! contact leaving, a subscription ending, an email change to confirm), rendered as plain text
//! (`templates`) and queued in the store's outbox ([`enqueue`]); the worker of `sender` sends
//! them over SMTP with retries, and records each sent or given up.
//!
//! What it does not do: decide when a letter is due (the store's transitions say so, their
//! callers queue it), or send anything inline: a caller never waits for an SMTP server.

pub mod sender;
mod templates;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::store::{NewMail, Store, StoreError};
pub use templates::Rendered;

/// The product's name as mail shows it.
pub const PRODUCT_NAME: &str = "Tether";

/// A letter to one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Letter {
    /// To the invited address: who invites, the accept link, until when.
    Invitation { to: String, subscriber: String, accept_url: String, expires_at: OffsetDateTime, guid: Uuid },
    /// To a contact the subscriber removed.
    ContactRemoved { to: String, subscriber: String },
    /// To the subscriber: a contact left.
    ContactLeft { to: String, contact: String },
    /// To a contact: the subscription ended (never the reason).
    SubscriptionTerminated { to: String, subscriber: String },
    /// To the NEW address: the confirmation link.
    EmailChange { to: String, confirm_url: String, expires_at: OffsetDateTime },
}

impl Letter {
    /// The kind of letter, as the outbox and `tether mail list` name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Letter::Invitation { .. } => "invitation",
            Letter::ContactRemoved { .. } => "contact_removed",
            Letter::ContactLeft { .. } => "contact_left",
            Letter::SubscriptionTerminated { .. } => "subscription_terminated",
            Letter::EmailChange { .. } => "email_change",
        }
    }

    /// The address the letter goes to.
    pub fn to(&self) -> &str {
        match self {
            Letter::Invitation { to, .. }
            | Letter::ContactRemoved { to, .. }
            | Letter::ContactLeft { to, .. }
            | Letter::SubscriptionTerminated { to, .. }
            | Letter::EmailChange { to, .. } => to,
        }
    }

    /// The subject and plain-text body, as `product_name` writes them.
    pub fn render(&self, product_name: &str) -> Rendered {
        templates::render(self, product_name)
    }

    fn invitation_guid(&self) -> Option<Uuid> {
        match self {
            Letter::Invitation { guid, .. } => Some(*guid),
            _ => None,
        }
    }
}

/// The link a portal page is reached by: `public_url` (as configured, without a trailing `/`)
/// and `path`.
pub fn link(public_url: &str, path: &str) -> String {
    format!("{}/{}", public_url.trim_end_matches('/'), path.trim_start_matches('/'))
}

/// Queue a letter; the worker sends it. Returns the outbox id.
pub async fn enqueue(store: &Store, letter: &Letter, now: OffsetDateTime) -> Result<i64, StoreError> {
    let rendered = letter.render(PRODUCT_NAME);
    let mail = NewMail {
        kind: letter.kind().to_string(),
        recipient: letter.to().trim().to_string(),
        subject: rendered.subject,
        body: rendered.body,
        invitation_guid: letter.invitation_guid(),
    };
    store.enqueue_mail(&mail, now).await
}

/// Queue a test letter to `to` (`tether mail test`): it checks the way to the SMTP server and on
/// to the mailbox. Returns the outbox id.
pub async fn enqueue_test(store: &Store, to: &str, now: OffsetDateTime) -> Result<i64, StoreError> {
    let rendered = templates::test_letter(PRODUCT_NAME, now);
    let mail = NewMail {
        kind: "test".to_string(),
        recipient: to.trim().to_string(),
        subject: rendered.subject,
        body: rendered.body,
        invitation_guid: None,
    };
    store.enqueue_mail(&mail, now).await
}
