//! Both ends of the portal through the root (`silo::signin`, `docs/silos.md`).
//!
//! On a **root**: each user's opaque id ([`Store::user_opaque_id`]), made the first time the
//! user is sent to a maintenance silo; the only name of the person that leaves the root.
//!
//! On a **maintenance** silo: a person the root sent is a `users` row under that opaque id (its
//! username is `root:` and the id; no email, no password), with what the root's assertion
//! granted it (`silo_grants`: the subscribers, by the silo's own number for each opaque id,
//! whether it owns them and whether their subscription is active), replaced at each arrival.
//! `Store::relations` reads those grants as it reads owners and contacts, so the policy decides
//! as everywhere. The nonces of the assertions taken are kept until they expire: each is taken
//! once.
//!
//! What it does not do: check an assertion's signature or times (`silo::signin`).

use time::OffsetDateTime;

use super::{is_unique_violation, Stmt, Store, StoreError};
use crate::policy::Role;

/// What a root's assertion granted a person, per subscriber (as the assertion carries it,
/// `silo::signin::Grant`, and as the silo keeps it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootGrant {
    /// The subscriber's opaque id.
    pub subscriber: String,
    /// The person is the subscriber's own account (else an active support contact).
    pub owner: bool,
    /// The subscription is active.
    pub active: bool,
}

/// The username a person the root sent has on a maintenance silo.
pub fn root_username(subject: &str) -> String {
    format!("root:{subject}")
}

impl Store {
    /// User `user_id`'s opaque id, made now if it has none (root).
    pub async fn user_opaque_id(&self, user_id: i64) -> Result<Option<String>, StoreError> {
        let make = Stmt::new("UPDATE users SET opaque_id = $2 WHERE id = $1 AND opaque_id IS NULL")
            .int(user_id)
            .text(uuid::Uuid::new_v4().simple().to_string());
        self.execute(make).await?;
        let read = Stmt::new("SELECT opaque_id FROM users WHERE id = $1").int(user_id);
        Ok(self.fetch_optional(read, |r| r.text(0)).await?.flatten())
    }

    /// Takes an assertion's nonce (maintenance): `false` if it was taken before. Nonces past
    /// their assertion's end are forgotten first (an assertion that old is refused anyway).
    pub async fn spend_signin_nonce(
        &self,
        nonce: &str,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.execute(Stmt::new("DELETE FROM silo_signin_nonces WHERE expires_at < $1").time(now)).await?;
        let insert =
            Stmt::new("INSERT INTO silo_signin_nonces (nonce, expires_at) VALUES ($1, $2)").str(nonce).time(expires_at);
        match self.execute(insert).await {
            Ok(_) => Ok(true),
            Err(err) if is_unique_violation(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The user a person the root sent is here (maintenance), made on the first arrival, with
    /// its role and grants as the root's assertion says now; its id. A user this silo's
    /// operator suspended stays suspended.
    pub async fn root_visitor(
        &self,
        subject: &str,
        role: Role,
        grants: &[RootGrant],
        now: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        let find = Stmt::new("SELECT id FROM users WHERE opaque_id = $1").str(subject);
        let user_id = match tx.fetch_optional(find, |r| r.int(0)).await?.flatten() {
            Some(id) => {
                tx.execute(Stmt::new("UPDATE users SET role = $2 WHERE id = $1").int(id).str(role.as_str())).await?;
                id
            }
            None => {
                let insert = Stmt::new(
                    "INSERT INTO users (username, role, created_at, opaque_id) VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .text(root_username(subject))
                .str(role.as_str())
                .time(now)
                .str(subject);
                tx.fetch_optional(insert, |r| r.int(0)).await?.flatten().unwrap_or_default()
            }
        };
        tx.execute(Stmt::new("DELETE FROM silo_grants WHERE user_id = $1").int(user_id)).await?;
        for grant in grants {
            let number = Stmt::new("INSERT INTO silo_subscribers (opaque) VALUES ($1) ON CONFLICT (opaque) DO NOTHING")
                .str(&grant.subscriber);
            tx.execute(number).await?;
            let insert = Stmt::new(
                "INSERT INTO silo_grants (user_id, subscriber_id, owner, active)
                 SELECT $1, id, $3, $4 FROM silo_subscribers WHERE opaque = $2
                 ON CONFLICT (user_id, subscriber_id) DO NOTHING",
            )
            .int(user_id)
            .str(&grant.subscriber)
            .bool(grant.owner)
            .bool(grant.active);
            tx.execute(insert).await?;
        }
        tx.commit().await?;
        Ok(user_id)
    }
}
