//! Support contacts in the store: one row per (subscriber, invitation), with its life cycle
//! (`docs/accounts.md` has the table of transitions):
//!
//! - *invited* (a GUID, an expiry; `invitation_sent_at` once a mail went out) → *active* on
//!   acceptance (terms version, nickname, contact email, alert preferences), or *expired* by
//!   [`Store::expire_invitations`] once its expiry passed (an expired link is refused with
//!   [`AccountError::InvitationExpired`]: a new invitation is needed);
//! - *invited* or *active* → *removed* by the subscriber; *active* → *left* by the contact;
//!   *invited* or *active* → *ended* when the subscription is terminated.
//!
//! A user whose last active relation ends becomes inactive (`users.inactive_since`, in the same
//! transaction); [`Store::sweep_inactive`] makes them plain users later. Transitions take `now`
//! and refuse what the table does not allow with a typed [`AccountError`]. What it does not do:
//! send the mails the transitions say are due.

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::accounts::{lock_subscription, mark_inactive_if_unrelated, SubscriptionStatus};
use super::{is_unique_violation, AccountError, Cols, Stmt, Store, StoreError, Tx};

/// Where a contact relation is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContactState {
    Invited,
    Active,
    Expired,
    Removed,
    Left,
    /// The subscription was terminated.
    Ended,
}

impl ContactState {
    pub fn as_str(self) -> &'static str {
        match self {
            ContactState::Invited => "invited",
            ContactState::Active => "active",
            ContactState::Expired => "expired",
            ContactState::Removed => "removed",
            ContactState::Left => "left",
            ContactState::Ended => "ended",
        }
    }

    /// An unknown state (written by a newer version) counts as ended: it grants nothing.
    pub fn parse(text: &str) -> ContactState {
        match text {
            "invited" => ContactState::Invited,
            "active" => ContactState::Active,
            "expired" => ContactState::Expired,
            "removed" => ContactState::Removed,
            "left" => ContactState::Left,
            _ => ContactState::Ended,
        }
    }
}

/// One contact relation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContactRecord {
    pub id: i64,
    pub subscriber_id: i64,
    /// The contact's account, once accepted.
    pub user_id: Option<i64>,
    pub invitation_guid: Uuid,
    pub invited_email: String,
    #[serde(with = "time::serde::rfc3339")]
    pub invited_at: OffsetDateTime,
    /// `None`: no invitation mail was ever sent.
    #[serde(with = "time::serde::rfc3339::option")]
    pub invitation_sent_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub accepted_at: Option<OffsetDateTime>,
    pub terms_version: Option<String>,
    pub nickname: Option<String>,
    /// Where the contact wants mail about this subscriber, if not the invited address.
    pub contact_email: Option<String>,
    /// The alert preferences (JSON), as accepted or changed since.
    pub alert_prefs: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub state: ContactState,
}

impl ContactRecord {
    /// The address mail about this relation goes to.
    pub fn mail_address(&self) -> &str {
        self.contact_email.as_deref().unwrap_or(&self.invited_email)
    }

    /// Whether ending this relation is to be told by mail: an active contact always, an
    /// invitation only if it was ever sent.
    pub fn mail_due_on_end(&self) -> bool {
        self.state == ContactState::Active || self.invitation_sent_at.is_some()
    }
}

macro_rules! contact_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, subscriber_id, user_id, invitation_guid, invited_email, invited_at, invitation_sent_at, \
             expires_at, accepted_at, terms_version, nickname, contact_email, alert_prefs, ended_at, state \
             FROM contacts ",
            $tail
        )
    };
}

fn contact_row(r: &dyn Cols) -> sqlx::Result<ContactRecord> {
    Ok(ContactRecord {
        id: r.int(0)?.unwrap_or_default(),
        subscriber_id: r.int(1)?.unwrap_or_default(),
        user_id: r.int(2)?,
        invitation_guid: Uuid::parse_str(&r.string(3)?).unwrap_or_default(),
        invited_email: r.string(4)?,
        invited_at: r.time(5)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        invitation_sent_at: r.time(6)?,
        expires_at: r.time(7)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        accepted_at: r.time(8)?,
        terms_version: r.text(9)?,
        nickname: r.text(10)?,
        contact_email: r.text(11)?,
        alert_prefs: r.text(12)?.and_then(|text| serde_json::from_str(&text).ok()),
        ended_at: r.time(13)?,
        state: ContactState::parse(&r.string(14)?),
    })
}

/// An invitation made: the GUID its link carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invitation {
    pub contact_id: i64,
    pub guid: Uuid,
    pub expires_at: OffsetDateTime,
}

/// What the invited person accepts and chooses.
#[derive(Debug, Clone, PartialEq)]
pub struct Acceptance {
    pub terms_version: String,
    pub nickname: String,
    /// `None`: mail goes to the invited address.
    pub contact_email: Option<String>,
    pub alert_prefs: serde_json::Value,
}

/// A relation ended by the subscriber, the contact or a termination, and whom to tell.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedContact {
    pub contact_id: i64,
    pub user_id: Option<i64>,
    /// The state it was in before it ended.
    pub was: ContactState,
    /// Where to write, if a mail is due.
    pub mail_to: String,
    /// False when no invitation was ever sent (nobody knows of the relation).
    pub mail_due: bool,
}

impl EndedContact {
    fn from(record: &ContactRecord) -> EndedContact {
        EndedContact {
            contact_id: record.id,
            user_id: record.user_id,
            was: record.state,
            mail_to: record.mail_address().to_string(),
            mail_due: record.mail_due_on_end(),
        }
    }
}

/// What [`Store::remove_contact`] did.
pub type Removal = EndedContact;

async fn contact_in(tx: &mut Tx<'_>, stmt: Stmt) -> Result<Option<ContactRecord>, StoreError> {
    tx.fetch_optional(stmt, contact_row).await
}

/// Ends relation `record` (in `tx`) as `to`, if it is still in the state it was read in; marks
/// its user inactive if that was their last active relation.
async fn end(
    tx: &mut Tx<'_>,
    record: &ContactRecord,
    to: ContactState,
    now: OffsetDateTime,
) -> Result<(), AccountError> {
    let stmt = Stmt::new("UPDATE contacts SET state = $3, ended_at = $4 WHERE id = $1 AND state = $2")
        .int(record.id)
        .str(record.state.as_str())
        .str(to.as_str())
        .time(now);
    if tx.execute(stmt).await? == 0 {
        return Err(AccountError::ContactEnded("changed meanwhile"));
    }
    if let (ContactState::Active, Some(user_id)) = (record.state, record.user_id) {
        tx.execute(mark_inactive_if_unrelated(user_id, now)).await?;
    }
    Ok(())
}

impl Store {
    /// Invites `email` as a support contact of a subscriber with an active subscription, within
    /// its contact limit (invited and active contacts count); the invitation expires after
    /// `valid_for` (7 days by default).
    pub async fn invite_contact(
        &self,
        subscriber_id: i64,
        email: &str,
        now: OffsetDateTime,
        valid_for: time::Duration,
    ) -> Result<Invitation, AccountError> {
        let mut tx = self.begin().await?;
        let (status, _, max_contacts) = lock_subscription(&mut tx, subscriber_id).await?;
        if status != SubscriptionStatus::Active {
            return Err(AccountError::SubscriptionTerminated(subscriber_id));
        }
        // An invitation whose expiry passed holds no place, swept or not.
        let count = Stmt::new(
            "SELECT COUNT(*) FROM contacts WHERE subscriber_id = $1
               AND (state = 'active' OR (state = 'invited' AND expires_at > $2))",
        )
        .int(subscriber_id)
        .time(now);
        if tx.fetch_optional(count, |r| r.count(0)).await?.unwrap_or_default() >= max_contacts {
            return Err(AccountError::ContactLimit { subscriber: subscriber_id, max: max_contacts });
        }
        let guid = Uuid::new_v4();
        let expires_at = now + valid_for;
        let insert = Stmt::new(
            "INSERT INTO contacts (subscriber_id, invitation_guid, invited_email, invited_at, expires_at, state)
             VALUES ($1, $2, $3, $4, $5, 'invited') RETURNING id",
        )
        .int(subscriber_id)
        .text(guid.to_string())
        .str(email)
        .time(now)
        .time(expires_at);
        let contact_id = tx.fetch_optional(insert, |r| r.int(0)).await?.flatten().unwrap_or_default();
        tx.commit().await?;
        Ok(Invitation { contact_id, guid, expires_at })
    }

    /// Records that the invitation mail went out (the first time only); false if the
    /// invitation is no longer open.
    pub async fn mark_invitation_sent(&self, guid: Uuid, now: OffsetDateTime) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "UPDATE contacts SET invitation_sent_at = COALESCE(invitation_sent_at, $2)
             WHERE invitation_guid = $1 AND state = 'invited'",
        )
        .text(guid.to_string())
        .time(now);
        Ok(self.execute(stmt).await? > 0)
    }

    /// The relation an invitation link names, in whatever state it is.
    pub async fn invitation(&self, guid: Uuid) -> Result<Option<ContactRecord>, StoreError> {
        self.fetch_optional(
            Stmt::new(contact_select!("WHERE invitation_guid = $1")).text(guid.to_string()),
            contact_row,
        )
        .await
    }

    pub async fn contact(&self, id: i64) -> Result<Option<ContactRecord>, StoreError> {
        self.fetch_optional(Stmt::new(contact_select!("WHERE id = $1")).int(id), contact_row).await
    }

    /// A subscriber's contact relations, in every state, oldest first.
    pub async fn contacts_of(&self, subscriber_id: i64) -> Result<Vec<ContactRecord>, StoreError> {
        self.fetch_all(
            Stmt::new(contact_select!("WHERE subscriber_id = $1 ORDER BY id")).int(subscriber_id),
            contact_row,
        )
        .await
    }

    /// A user's contact relations, in every state, oldest first.
    pub async fn contacts_of_user(&self, user_id: i64) -> Result<Vec<ContactRecord>, StoreError> {
        self.fetch_all(Stmt::new(contact_select!("WHERE user_id = $1 ORDER BY id")).int(user_id), contact_row).await
    }

    /// User `user_id` accepts the invitation `guid`: the relation becomes active (and the user
    /// is no longer inactive). Refused if the invitation is expired (at `now`, swept or not),
    /// closed, of a terminated subscription, of the user's own subscriber, or if the user is
    /// suspended or an active contact of that subscriber already.
    pub async fn accept_invitation(
        &self,
        guid: Uuid,
        user_id: i64,
        acceptance: &Acceptance,
        now: OffsetDateTime,
    ) -> Result<ContactRecord, AccountError> {
        let mut tx = self.begin().await?;
        let suspended = Stmt::new("SELECT suspended_at IS NOT NULL FROM users WHERE id = $1").int(user_id);
        match tx.fetch_optional(suspended, |r| r.bool(0)).await? {
            None => return Err(AccountError::NoSuchUser(user_id)),
            Some(true) => return Err(AccountError::Suspended),
            Some(false) => {}
        }
        let by_guid = Stmt::new(contact_select!("WHERE invitation_guid = $1")).text(guid.to_string());
        let record = contact_in(&mut tx, by_guid).await?.ok_or(AccountError::NoSuchInvitation)?;
        match record.state {
            ContactState::Invited if record.expires_at > now => {}
            ContactState::Invited | ContactState::Expired => return Err(AccountError::InvitationExpired),
            other => return Err(AccountError::InvitationClosed(other.as_str())),
        }
        let (status, _, _) = lock_subscription(&mut tx, record.subscriber_id).await?;
        if status != SubscriptionStatus::Active {
            return Err(AccountError::SubscriptionTerminated(record.subscriber_id));
        }
        let owner = Stmt::new("SELECT owner_user_id FROM subscribers WHERE id = $1").int(record.subscriber_id);
        if tx.fetch_optional(owner, |r| r.int(0)).await?.flatten() == Some(user_id) {
            return Err(AccountError::OwnInvitation);
        }
        let prefs = acceptance.alert_prefs.to_string();
        let update = Stmt::new(
            "UPDATE contacts SET state = 'active', user_id = $2, accepted_at = $3, terms_version = $4, nickname = $5,
                 contact_email = $6, alert_prefs = $7
             WHERE id = $1 AND state = 'invited'",
        )
        .int(record.id)
        .int(user_id)
        .time(now)
        .str(&acceptance.terms_version)
        .str(&acceptance.nickname)
        .text(acceptance.contact_email.clone())
        .text(prefs);
        match tx.execute(update).await {
            Ok(0) => return Err(AccountError::InvitationClosed("accepted meanwhile")),
            Ok(_) => {}
            Err(err) if is_unique_violation(&err) => return Err(AccountError::AlreadyContact),
            Err(err) => return Err(err.into()),
        }
        tx.execute(Stmt::new("UPDATE users SET inactive_since = NULL WHERE id = $1").int(user_id)).await?;
        let accepted = contact_in(&mut tx, Stmt::new(contact_select!("WHERE id = $1")).int(record.id)).await?;
        tx.commit().await?;
        accepted.ok_or(AccountError::NoSuchInvitation)
    }

    /// User `user_id` changes the nickname and alert preferences of their own *active* relation
    /// `contact_id`; the relation as it is now. Any other relation (another user's, or one no
    /// longer active) is [`AccountError::NoSuchContact`].
    pub async fn update_contact_prefs(
        &self,
        user_id: i64,
        contact_id: i64,
        nickname: &str,
        alert_prefs: &serde_json::Value,
    ) -> Result<ContactRecord, AccountError> {
        let mut tx = self.begin().await?;
        let update = Stmt::new(
            "UPDATE contacts SET nickname = $3, alert_prefs = $4 WHERE id = $1 AND user_id = $2 AND state = 'active'",
        )
        .int(contact_id)
        .int(user_id)
        .str(nickname)
        .text(alert_prefs.to_string());
        if tx.execute(update).await? == 0 {
            return Err(AccountError::NoSuchContact(contact_id));
        }
        let updated = contact_in(&mut tx, Stmt::new(contact_select!("WHERE id = $1")).int(contact_id)).await?;
        tx.commit().await?;
        updated.ok_or(AccountError::NoSuchContact(contact_id))
    }

    /// Invitations whose expiry is at or before `now` become expired. The number that did.
    pub async fn expire_invitations(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let stmt = Stmt::new(
            "UPDATE contacts SET state = 'expired', ended_at = expires_at WHERE state = 'invited' AND expires_at <= $1",
        )
        .time(now);
        self.execute(stmt).await
    }

    /// The subscriber removes a contact, invited (even before any mail went out) or active.
    /// The result says whether the person is to be told: not when no invitation was ever sent.
    pub async fn remove_contact(
        &self,
        subscriber_id: i64,
        contact_id: i64,
        now: OffsetDateTime,
    ) -> Result<Removal, AccountError> {
        let mut tx = self.begin().await?;
        let stmt =
            Stmt::new(contact_select!("WHERE id = $1 AND subscriber_id = $2")).int(contact_id).int(subscriber_id);
        let record = contact_in(&mut tx, stmt).await?.ok_or(AccountError::NoSuchContact(contact_id))?;
        if !matches!(record.state, ContactState::Invited | ContactState::Active) {
            return Err(AccountError::ContactEnded(record.state.as_str()));
        }
        end(&mut tx, &record, ContactState::Removed, now).await?;
        tx.commit().await?;
        Ok(EndedContact::from(&record))
    }

    /// User `user_id` stops being an active contact of a subscriber.
    pub async fn leave_subscriber(
        &self,
        user_id: i64,
        subscriber_id: i64,
        now: OffsetDateTime,
    ) -> Result<EndedContact, AccountError> {
        let mut tx = self.begin().await?;
        let stmt = Stmt::new(contact_select!("WHERE user_id = $1 AND subscriber_id = $2 AND state = 'active'"))
            .int(user_id)
            .int(subscriber_id);
        let record = contact_in(&mut tx, stmt).await?.ok_or(AccountError::NotAContact(subscriber_id))?;
        end(&mut tx, &record, ContactState::Left, now).await?;
        tx.commit().await?;
        Ok(EndedContact::from(&record))
    }

    /// Terminates a subscription: every invited and active contact relation ends at once (the
    /// policy also refuses access through a terminated subscription). `reason` is kept for
    /// operators and never shown to contacts. The relations ended, to tell them (without the
    /// reason).
    pub async fn terminate_subscription(
        &self,
        subscriber_id: i64,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<EndedContact>, AccountError> {
        let mut tx = self.begin().await?;
        let (status, _, _) = lock_subscription(&mut tx, subscriber_id).await?;
        if status != SubscriptionStatus::Active {
            return Err(AccountError::SubscriptionTerminated(subscriber_id));
        }
        tx.execute(
            Stmt::new(
                "UPDATE subscriptions SET status = 'terminated', terminated_at = $2, terminate_reason = $3
                 WHERE subscriber_id = $1",
            )
            .int(subscriber_id)
            .time(now)
            .str(reason),
        )
        .await?;
        let open =
            Stmt::new(contact_select!("WHERE subscriber_id = $1 AND state IN ('invited', 'active') ORDER BY id"))
                .int(subscriber_id);
        let records = tx.fetch_all(open, contact_row).await?;
        for record in &records {
            end(&mut tx, record, ContactState::Ended, now).await?;
        }
        tx.commit().await?;
        Ok(records.iter().map(EndedContact::from).collect())
    }
}
