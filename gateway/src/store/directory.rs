//! What operators list and register from the CLI: every user, every subscriber with its name
//! and email, and a subscriber registered for a user who exists already (`tether subscriber
//! register --owner USERNAME`).
//!
//! What it does not do: decide who may (the CLI acts on the data dir's store as the built-in
//! operator), or write the audit rows (the callers do).

use serde::Serialize;
use time::OffsetDateTime;

use super::accounts::{insert_subscriber, subscriber_row, user_row};
use super::{is_unique_violation, AccountError, Stmt, Store, StoreError, SubscriberPii, SubscriberRecord, UserRecord};

/// A subscriber as an operator lists it: its record, owner and the name and email it gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriberListing {
    #[serde(flatten)]
    pub subscriber: SubscriberRecord,
    pub owner: String,
    pub name: String,
    pub email: String,
}

impl Store {
    /// Every user, in id order.
    pub async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT id, username, email, role, password_hash IS NOT NULL, created_at, suspended_at, inactive_since
             FROM users ORDER BY id",
        );
        self.fetch_all(stmt, user_row).await
    }

    /// Every subscriber, in id order.
    pub async fn list_subscribers(&self) -> Result<Vec<SubscriberListing>, StoreError> {
        let stmt = Stmt::new(
            "SELECT s.id, s.owner_user_id, s.created_at, p.status, p.max_machines, p.max_contacts, p.started_at,
                 p.terminated_at, u.username, i.name, i.email
             FROM subscribers s JOIN subscriptions p ON p.subscriber_id = s.id
                 JOIN users u ON u.id = s.owner_user_id JOIN subscriber_pii i ON i.subscriber_id = s.id
             ORDER BY s.id",
        );
        self.fetch_all(stmt, |r| {
            Ok(SubscriberListing {
                subscriber: subscriber_row(r)?,
                owner: r.string(8)?,
                name: r.string(9)?,
                email: r.string(10)?,
            })
        })
        .await
    }

    /// Registers a subscriber owned by the existing user `owner_user_id`, with an active
    /// subscription of these limits (machines, contacts). A user owns at most one subscriber.
    pub async fn register_subscriber_for(
        &self,
        owner_user_id: i64,
        pii: &SubscriberPii,
        limits: (u32, u32),
        now: OffsetDateTime,
    ) -> Result<i64, AccountError> {
        let mut tx = self.begin().await?;
        match insert_subscriber(&mut tx, owner_user_id, pii, limits, now).await {
            Ok(id) => {
                tx.commit().await?;
                Ok(id)
            }
            Err(err) if is_unique_violation(&err) => Err(AccountError::OwnsSubscriber(owner_user_id)),
            Err(err) => Err(err.into()),
        }
    }
}
