//! What the policy module needs from the store: the [`Principal`] behind a token, the
//! [`Relations`] of a user (the subscribers it owns, those it is an active contact of, with
//! their subscriptions' status), and the machines a principal may see, chosen by
//! [`policy::visible_subscribers`] so that listing and [`policy::authorize`] never disagree.
//!
//! On a maintenance silo, the machines are the clients its certificates admitted
//! (`silo_clients`), each under the silo's number for its subscriber's opaque id
//! (`silo_subscribers`), and a person the root sent relates to the subscribers its assertion
//! granted (`root_visitors`). Elsewhere those tables are empty.
//!
//! What it does not do: decide anything itself.

use uuid::Uuid;

use super::accounts::machine_row;
use super::{Cols, MachineRecord, Stmt, Store, StoreError, TokenRecord, TokenScope, MAX_PAGE};
use crate::policy::{self, Principal, Relations, Role, SubscriberRelation, Visibility};

fn relation_row(r: &dyn Cols) -> sqlx::Result<SubscriberRelation> {
    Ok(SubscriberRelation {
        subscriber_id: r.int(0)?.unwrap_or_default(),
        subscription_active: r.string(1)? == "active",
    })
}

impl Store {
    /// The principal user `user_id` is with a credential of `scope` (`None`: no such user).
    pub async fn principal(&self, user_id: i64, scope: TokenScope) -> Result<Option<Principal>, StoreError> {
        let stmt = Stmt::new("SELECT role, suspended_at IS NOT NULL FROM users WHERE id = $1").int(user_id);
        let row = self.fetch_optional(stmt, |r| Ok((r.string(0)?, r.bool(1)?))).await?;
        Ok(row.map(|(role, suspended)| Principal {
            user_id,
            // An unknown role grants the least.
            role: Role::parse(&role).unwrap_or(Role::User),
            scope,
            suspended,
        }))
    }

    /// The principal a token acts as.
    pub async fn token_principal(&self, token: &TokenRecord) -> Result<Option<Principal>, StoreError> {
        self.principal(token.user_id, token.scope).await
    }

    /// A user's relations to subscribers, in subscriber order.
    pub async fn relations(&self, user_id: i64) -> Result<Relations, StoreError> {
        // A person the root sent to a maintenance silo has the grants of its assertion
        // (`root_visitors`); the silo has no subscribers or contacts of its own.
        let owns = Stmt::new(
            "SELECT s.id, p.status FROM subscribers s JOIN subscriptions p ON p.subscriber_id = s.id
             WHERE s.owner_user_id = $1
             UNION ALL
             SELECT g.subscriber_id, CASE WHEN g.active THEN 'active' ELSE 'terminated' END FROM silo_grants g
             WHERE g.user_id = $1 AND g.owner
             ORDER BY 1",
        )
        .int(user_id);
        let contact_of = Stmt::new(
            "SELECT DISTINCT c.subscriber_id, p.status FROM contacts c
                 JOIN subscriptions p ON p.subscriber_id = c.subscriber_id
             WHERE c.user_id = $1 AND c.state = 'active'
             UNION ALL
             SELECT g.subscriber_id, CASE WHEN g.active THEN 'active' ELSE 'terminated' END FROM silo_grants g
             WHERE g.user_id = $1 AND NOT g.owner
             ORDER BY 1",
        )
        .int(user_id);
        Ok(Relations {
            owns: self.fetch_all(owns, relation_row).await?,
            contact_of: self.fetch_all(contact_of, relation_row).await?,
        })
    }

    /// The machines `principal` may see, in UUID order: those after `after`, at most `limit`
    /// (capped at [`MAX_PAGE`]).
    pub async fn visible_machines(
        &self,
        principal: &Principal,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<MachineRecord>, StoreError> {
        let relations = self.relations(principal.user_id).await?;
        self.visible_machines_with(principal, &relations, after, limit).await
    }

    /// [`Store::visible_machines`] with the principal's relations known already (the API has
    /// them from admission).
    pub async fn visible_machines_with(
        &self,
        principal: &Principal,
        relations: &Relations,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<MachineRecord>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let after_text = after.map(|u| u.to_string()).unwrap_or_default();
        match policy::visible_subscribers(principal, relations) {
            Visibility::All => {
                let stmt = Stmt::new(
                    "SELECT uuid, subscriber_id, nickname, enrolled_at FROM machines WHERE uuid > $1
                     UNION ALL
                     SELECT c.uuid, s.id, NULL, c.first_seen FROM silo_clients c
                         JOIN silo_subscribers s ON s.opaque = c.subscriber WHERE c.uuid > $1
                     ORDER BY 1 LIMIT $2",
                )
                .text(after_text)
                .int(i64::from(limit));
                self.fetch_all(stmt, machine_row).await
            }
            Visibility::Subscribers(ids) => {
                let mut machines = Vec::new();
                for id in ids {
                    let stmt = Stmt::new(
                        "SELECT uuid, subscriber_id, nickname, enrolled_at FROM machines
                         WHERE subscriber_id = $1 AND uuid > $2
                         UNION ALL
                         SELECT c.uuid, s.id, NULL, c.first_seen FROM silo_clients c
                             JOIN silo_subscribers s ON s.opaque = c.subscriber WHERE s.id = $1 AND c.uuid > $2
                         ORDER BY 1 LIMIT $3",
                    )
                    .int(id)
                    .text(after_text.clone())
                    .int(i64::from(limit));
                    machines.extend(self.fetch_all(stmt, machine_row).await?);
                }
                machines.sort_by_key(|m| m.uuid);
                machines.truncate(limit as usize);
                Ok(machines)
            }
        }
    }
}
