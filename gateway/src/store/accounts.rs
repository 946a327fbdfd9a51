//! Accounts in the store: users (local accounts with argon2id passwords, the built-in operator
//! among them), subscribers (a user's own account with its personal data in `subscriber_pii`,
//! apart from maintenance data), their subscription (active or terminated, with limits on
//! machines and contacts), and the machines they enrolled; central suspension and the
//! inactive → plain-user sweep. The errors of every account transition ([`AccountError`]) are
//! here too, shared with `contacts` and `emails`.
//!
//! Transitions take `now` (a controllable clock) and never read the system clock. What it does
//! not do: decide who may call them (`policy`), or mail anyone (the mail slice reads what the
//! transitions return).

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{is_unique_violation, Cols, Stmt, Store, StoreError, Tx};
use crate::auth::{self, AuthError};
use crate::policy::Role;

/// The built-in operator's username (made by the migration, with no password: the CLI acts as it).
pub const OPERATOR: &str = "operator";

/// Why an account transition was refused; [`AccountError::code`] is the stable code for API
/// bodies and the portal.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] AuthError),
    #[error("the username {0:?} is taken; pick another")]
    UsernameTaken(String),
    #[error("no user with id {0}")]
    NoSuchUser(i64),
    #[error("no subscriber with id {0}")]
    NoSuchSubscriber(i64),
    #[error("user {0} owns a subscriber already; a user owns at most one")]
    OwnsSubscriber(i64),
    #[error("the subscription of subscriber {0} is terminated")]
    SubscriptionTerminated(i64),
    #[error("subscriber {subscriber} has its {max} machines already; its subscription allows no more")]
    MachineLimit { subscriber: i64, max: u64 },
    #[error("machine {0} is enrolled for another subscriber")]
    MachineTaken(Uuid),
    #[error(
        "subscriber {subscriber} has its {max} contacts (invited or active) already; its subscription allows no more"
    )]
    ContactLimit { subscriber: i64, max: u64 },
    #[error("no such invitation")]
    NoSuchInvitation,
    #[error("this invitation has expired; a new invitation is needed from the subscriber")]
    InvitationExpired,
    #[error("this invitation is no longer open (the contact is {0})")]
    InvitationClosed(&'static str),
    #[error("a subscriber cannot be their own support contact")]
    OwnInvitation,
    #[error("this user is an active contact of that subscriber already")]
    AlreadyContact,
    #[error("no contact {0} of this subscriber")]
    NoSuchContact(i64),
    #[error("not an active contact of subscriber {0}")]
    NotAContact(i64),
    #[error("the contact is {0}; only an invited or active contact can be removed, only an active one can leave")]
    ContactEnded(&'static str),
    #[error("the account is suspended")]
    Suspended,
    #[error("the built-in operator cannot be suspended")]
    OperatorNotSuspendable,
    #[error("no such email change (already confirmed, or the link is wrong)")]
    NoSuchEmailChange,
    #[error("this email change link has expired; ask for a new one")]
    EmailChangeExpired,
}

impl AccountError {
    /// A stable code for API error bodies (`store` and `hash`: the gateway's own failures).
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::Store(_) => "store",
            AccountError::Hash(_) => "hash",
            AccountError::UsernameTaken(_) => "username_taken",
            AccountError::NoSuchUser(_) => "no_such_user",
            AccountError::NoSuchSubscriber(_) => "no_such_subscriber",
            AccountError::OwnsSubscriber(_) => "owns_subscriber",
            AccountError::SubscriptionTerminated(_) => "subscription_terminated",
            AccountError::MachineLimit { .. } => "machine_limit",
            AccountError::MachineTaken(_) => "machine_taken",
            AccountError::ContactLimit { .. } => "contact_limit",
            AccountError::NoSuchInvitation => "no_such_invitation",
            AccountError::InvitationExpired => "invitation_expired",
            AccountError::InvitationClosed(_) => "invitation_closed",
            AccountError::OwnInvitation => "own_invitation",
            AccountError::AlreadyContact => "already_contact",
            AccountError::NoSuchContact(_) => "no_such_contact",
            AccountError::NotAContact(_) => "not_a_contact",
            AccountError::ContactEnded(_) => "contact_ended",
            AccountError::Suspended => "suspended",
            AccountError::OperatorNotSuspendable => "operator_not_suspendable",
            AccountError::NoSuchEmailChange => "no_such_email_change",
            AccountError::EmailChangeExpired => "email_change_expired",
        }
    }
}

/// A user as the store knows it; the password hash and TOTP secret are never part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRecord {
    pub id: i64,
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub has_password: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Suspended centrally by an operator: every access ends.
    #[serde(with = "time::serde::rfc3339::option")]
    pub suspended_at: Option<OffsetDateTime>,
    /// Since when the user, once a support contact, is an active contact of no subscriber; a
    /// plain user again (`None`) after [`Store::sweep_inactive`]'s delay.
    #[serde(with = "time::serde::rfc3339::option")]
    pub inactive_since: Option<OffsetDateTime>,
}

impl UserRecord {
    pub fn is_suspended(&self) -> bool {
        self.suspended_at.is_some()
    }
}

macro_rules! user_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, username, email, role, password_hash IS NOT NULL, created_at, suspended_at, inactive_since \
             FROM users ",
            $tail
        )
    };
}

pub(super) fn user_row(r: &dyn Cols) -> sqlx::Result<UserRecord> {
    Ok(UserRecord {
        id: r.int(0)?.unwrap_or_default(),
        username: r.string(1)?,
        email: r.text(2)?,
        // An unknown role (written by a newer version) grants the least.
        role: Role::parse(&r.string(3)?).unwrap_or(Role::User),
        has_password: r.bool(4)?,
        created_at: r.time(5)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        suspended_at: r.time(6)?,
        inactive_since: r.time(7)?,
    })
}

/// Active or terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionStatus {
    Active,
    Terminated,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Terminated => "terminated",
        }
    }

    /// Anything but `active` (a status a newer version wrote) counts as terminated: no access.
    pub fn parse(text: &str) -> SubscriptionStatus {
        if text == "active" {
            SubscriptionStatus::Active
        } else {
            SubscriptionStatus::Terminated
        }
    }
}

/// A subscriber and its subscription: maintenance data only (the personal data is
/// [`SubscriberPii`]; the termination reason is never shown to contacts, so it is not here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriberRecord {
    pub id: i64,
    pub owner_user_id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub status: SubscriptionStatus,
    pub max_machines: u64,
    pub max_contacts: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub terminated_at: Option<OffsetDateTime>,
}

macro_rules! subscriber_select {
    ($tail:literal) => {
        concat!(
            "SELECT s.id, s.owner_user_id, s.created_at, p.status, p.max_machines, p.max_contacts, p.started_at, \
             p.terminated_at FROM subscribers s JOIN subscriptions p ON p.subscriber_id = s.id ",
            $tail
        )
    };
}

pub(super) fn subscriber_row(r: &dyn Cols) -> sqlx::Result<SubscriberRecord> {
    Ok(SubscriberRecord {
        id: r.int(0)?.unwrap_or_default(),
        owner_user_id: r.int(1)?.unwrap_or_default(),
        created_at: r.time(2)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        status: SubscriptionStatus::parse(&r.string(3)?),
        max_machines: r.count(4)?,
        max_contacts: r.count(5)?,
        started_at: r.time(6)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        terminated_at: r.time(7)?,
    })
}

/// A subscriber's personal data, kept in its own table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriberPii {
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub billing_note: Option<String>,
}

/// What registering a subscriber takes: its own account, its personal data, its limits.
#[derive(Debug, Clone)]
pub struct NewSubscriber {
    pub username: String,
    /// `None`: the account has no password until one is set.
    pub password: Option<String>,
    pub pii: SubscriberPii,
    pub max_machines: u32,
    pub max_contacts: u32,
}

/// The rows a registration made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub user_id: i64,
    pub subscriber_id: i64,
}

/// A machine (by its SMBIOS/AMT UUID) and the subscriber it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineRecord {
    pub uuid: Uuid,
    pub subscriber_id: i64,
    pub nickname: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
}

pub(super) fn machine_row(r: &dyn Cols) -> sqlx::Result<MachineRecord> {
    Ok(MachineRecord {
        uuid: Uuid::parse_str(&r.string(0)?).unwrap_or_default(),
        subscriber_id: r.int(1)?.unwrap_or_default(),
        nickname: r.text(2)?,
        enrolled_at: r.time(3)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
    })
}

/// Hashes a password off the runtime (argon2 takes tens of milliseconds of CPU).
async fn hash(password: Option<&str>) -> Result<Option<String>, AccountError> {
    let Some(password) = password else {
        return Ok(None);
    };
    let password = password.to_string();
    let hashed = tokio::task::spawn_blocking(move || auth::hash_password(password.as_bytes()))
        .await
        .map_err(|e| AuthError::Hash(e.to_string()))??;
    Ok(Some(hashed))
}

fn insert_user(
    username: &str,
    email: Option<&str>,
    password_hash: Option<String>,
    role: Role,
    now: OffsetDateTime,
) -> Stmt {
    Stmt::new(
        "INSERT INTO users (username, email, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .str(username)
    .text(email.map(str::to_string))
    .text(password_hash)
    .str(role.as_str())
    .time(now)
}

/// A unique violation on a user insert is the username.
fn user_insert_error(err: StoreError, username: &str) -> AccountError {
    if is_unique_violation(&err) {
        AccountError::UsernameTaken(username.to_string())
    } else {
        err.into()
    }
}

/// Inserts subscriber rows (the subscriber, its personal data, its active subscription) owned by
/// `user_id`, in `tx`; the subscriber's id. A user owning a subscriber already is refused by
/// the database (`owner_user_id` is unique).
pub(super) async fn insert_subscriber(
    tx: &mut Tx<'_>,
    user_id: i64,
    pii: &SubscriberPii,
    limits: (u32, u32),
    now: OffsetDateTime,
) -> Result<i64, StoreError> {
    let (max_machines, max_contacts) = limits;
    let subscriber = Stmt::new("INSERT INTO subscribers (owner_user_id, created_at) VALUES ($1, $2) RETURNING id")
        .int(user_id)
        .time(now);
    let subscriber_id = tx.fetch_optional(subscriber, |r| r.int(0)).await?.flatten().unwrap_or_default();
    tx.execute(
        Stmt::new(
            "INSERT INTO subscriber_pii (subscriber_id, name, email, phone, billing_note) VALUES ($1, $2, $3, $4, $5)",
        )
        .int(subscriber_id)
        .str(&pii.name)
        .str(&pii.email)
        .text(pii.phone.clone())
        .text(pii.billing_note.clone()),
    )
    .await?;
    tx.execute(
        Stmt::new(
            "INSERT INTO subscriptions (subscriber_id, status, max_machines, max_contacts, started_at)
                 VALUES ($1, 'active', $2, $3, $4)",
        )
        .int(subscriber_id)
        .int(i64::from(max_machines))
        .int(i64::from(max_contacts))
        .time(now),
    )
    .await?;
    Ok(subscriber_id)
}

/// Locks subscriber `id`'s subscription row for the rest of `tx` (PostgreSQL: a row lock;
/// SQLite: the transaction holds the write lock anyway) and reads its status and limits.
pub(super) async fn lock_subscription(
    tx: &mut Tx<'_>,
    id: i64,
) -> Result<(SubscriptionStatus, u64, u64), AccountError> {
    tx.execute(Stmt::new("UPDATE subscriptions SET status = status WHERE subscriber_id = $1").int(id)).await?;
    let stmt =
        Stmt::new("SELECT status, max_machines, max_contacts FROM subscriptions WHERE subscriber_id = $1").int(id);
    let row =
        tx.fetch_optional(stmt, |r| Ok((SubscriptionStatus::parse(&r.string(0)?), r.count(1)?, r.count(2)?))).await?;
    row.ok_or(AccountError::NoSuchSubscriber(id))
}

/// Marks `user_id` inactive at `now` if it is a plain `user` (not an operator, not a
/// subscriber's owner) with no active contact relation left (run after a relation ends).
pub(super) fn mark_inactive_if_unrelated(user_id: i64, now: OffsetDateTime) -> Stmt {
    Stmt::new(
        "UPDATE users SET inactive_since = $2
         WHERE id = $1 AND role = 'user' AND inactive_since IS NULL
           AND NOT EXISTS (SELECT 1 FROM contacts c WHERE c.user_id = users.id AND c.state = 'active')
           AND NOT EXISTS (SELECT 1 FROM subscribers s WHERE s.owner_user_id = users.id)",
    )
    .int(user_id)
    .time(now)
}

impl Store {
    /// Creates a user (`password`: hashed here with argon2id; `None`: none until one is set).
    pub async fn create_user(
        &self,
        username: &str,
        email: Option<&str>,
        password: Option<&str>,
        role: Role,
        now: OffsetDateTime,
    ) -> Result<i64, AccountError> {
        let password_hash = hash(password).await?;
        let stmt = insert_user(username, email, password_hash, role, now);
        match self.fetch_optional(stmt, |r| r.int(0)).await {
            Ok(id) => Ok(id.flatten().unwrap_or_default()),
            Err(err) => Err(user_insert_error(err, username)),
        }
    }

    /// Sets (or replaces) a user's password; false if there is no such user.
    pub async fn set_user_password(&self, user_id: i64, password: &str) -> Result<bool, AccountError> {
        let password_hash = hash(Some(password)).await?;
        let stmt = Stmt::new("UPDATE users SET password_hash = $2 WHERE id = $1").int(user_id).text(password_hash);
        Ok(self.execute(stmt).await? > 0)
    }

    /// The password hash of `username`, to check a sign-in against (`None`: no such user, or no
    /// password set).
    pub async fn user_password_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        let stmt = Stmt::new("SELECT password_hash FROM users WHERE username = $1").str(username);
        Ok(self.fetch_optional(stmt, |r| r.text(0)).await?.flatten())
    }

    pub async fn user(&self, id: i64) -> Result<Option<UserRecord>, StoreError> {
        self.fetch_optional(Stmt::new(user_select!("WHERE id = $1")).int(id), user_row).await
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        self.fetch_optional(Stmt::new(user_select!("WHERE username = $1")).str(username), user_row).await
    }

    /// Registers a subscriber in one transaction: its own user account, the subscriber, its
    /// personal data and an active subscription.
    pub async fn register_subscriber(
        &self,
        new: &NewSubscriber,
        now: OffsetDateTime,
    ) -> Result<Registered, AccountError> {
        let password_hash = hash(new.password.as_deref()).await?;
        let mut tx = self.begin().await?;
        let user = insert_user(&new.username, Some(&new.pii.email), password_hash, Role::User, now);
        let user_id = match tx.fetch_optional(user, |r| r.int(0)).await {
            Ok(id) => id.flatten().unwrap_or_default(),
            Err(err) => return Err(user_insert_error(err, &new.username)),
        };
        let subscriber_id =
            insert_subscriber(&mut tx, user_id, &new.pii, (new.max_machines, new.max_contacts), now).await?;
        tx.commit().await?;
        Ok(Registered { user_id, subscriber_id })
    }

    pub async fn subscriber(&self, id: i64) -> Result<Option<SubscriberRecord>, StoreError> {
        self.fetch_optional(Stmt::new(subscriber_select!("WHERE s.id = $1")).int(id), subscriber_row).await
    }

    /// The subscriber whose own account `user_id` is.
    pub async fn subscriber_of_owner(&self, user_id: i64) -> Result<Option<SubscriberRecord>, StoreError> {
        self.fetch_optional(Stmt::new(subscriber_select!("WHERE s.owner_user_id = $1")).int(user_id), subscriber_row)
            .await
    }

    pub async fn subscriber_pii(&self, id: i64) -> Result<Option<SubscriberPii>, StoreError> {
        let stmt =
            Stmt::new("SELECT name, email, phone, billing_note FROM subscriber_pii WHERE subscriber_id = $1").int(id);
        self.fetch_optional(stmt, |r| {
            Ok(SubscriberPii { name: r.string(0)?, email: r.string(1)?, phone: r.text(2)?, billing_note: r.text(3)? })
        })
        .await
    }

    /// Why subscriber `id`'s subscription was terminated (operators only: never shown to contacts).
    pub async fn termination_reason(&self, id: i64) -> Result<Option<String>, StoreError> {
        let stmt = Stmt::new("SELECT terminate_reason FROM subscriptions WHERE subscriber_id = $1").int(id);
        Ok(self.fetch_optional(stmt, |r| r.text(0)).await?.flatten())
    }

    /// Enrolls machine `uuid` for a subscriber with an active subscription, within its machine
    /// limit. Enrolling a machine the subscriber has already changes nothing (false); one of
    /// another subscriber is refused.
    pub async fn enroll_machine(
        &self,
        subscriber_id: i64,
        uuid: Uuid,
        nickname: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<bool, AccountError> {
        let mut tx = self.begin().await?;
        let (status, max_machines, _) = lock_subscription(&mut tx, subscriber_id).await?;
        if status != SubscriptionStatus::Active {
            return Err(AccountError::SubscriptionTerminated(subscriber_id));
        }
        let owner = Stmt::new("SELECT subscriber_id FROM machines WHERE uuid = $1").text(uuid.to_string());
        match tx.fetch_optional(owner, |r| r.int(0)).await?.flatten() {
            Some(owner) if owner == subscriber_id => return Ok(false),
            Some(_) => return Err(AccountError::MachineTaken(uuid)),
            None => {}
        }
        let count = Stmt::new("SELECT COUNT(*) FROM machines WHERE subscriber_id = $1").int(subscriber_id);
        if tx.fetch_optional(count, |r| r.count(0)).await?.unwrap_or_default() >= max_machines {
            return Err(AccountError::MachineLimit { subscriber: subscriber_id, max: max_machines });
        }
        let insert =
            Stmt::new("INSERT INTO machines (uuid, subscriber_id, nickname, enrolled_at) VALUES ($1, $2, $3, $4)")
                .text(uuid.to_string())
                .int(subscriber_id)
                .text(nickname.map(str::to_string))
                .time(now);
        match tx.execute(insert).await {
            Ok(_) => {}
            // Enrolled by another subscriber in the meantime.
            Err(err) if is_unique_violation(&err) => return Err(AccountError::MachineTaken(uuid)),
            Err(err) => return Err(err.into()),
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn machine(&self, uuid: Uuid) -> Result<Option<MachineRecord>, StoreError> {
        // On a maintenance silo: a client its certificates admitted (`store::access`).
        let stmt = Stmt::new(
            "SELECT uuid, subscriber_id, nickname, enrolled_at FROM machines WHERE uuid = $1
             UNION ALL
             SELECT c.uuid, s.id, NULL, c.first_seen FROM silo_clients c
                 JOIN silo_subscribers s ON s.opaque = c.subscriber WHERE c.uuid = $1",
        )
        .text(uuid.to_string());
        self.fetch_optional(stmt, machine_row).await
    }

    /// The subscriber machine `uuid` is enrolled for, and whether an MPS account was issued for
    /// that subscriber (then its devices must use it, not the gateway-wide account).
    pub async fn machine_binding(&self, uuid: Uuid) -> Result<Option<(i64, bool)>, StoreError> {
        let stmt = Stmt::new(
            "SELECT m.subscriber_id,
                    EXISTS (SELECT 1 FROM mps_accounts a WHERE a.subscriber_id = m.subscriber_id)
             FROM machines m WHERE m.uuid = $1",
        )
        .text(uuid.to_string());
        self.fetch_optional(stmt, |r| Ok((r.int(0)?.unwrap_or_default(), r.bool(1)?))).await
    }

    /// A subscriber's machines, in UUID order.
    pub async fn machines_of(&self, subscriber_id: i64) -> Result<Vec<MachineRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT uuid, subscriber_id, nickname, enrolled_at FROM machines WHERE subscriber_id = $1 ORDER BY uuid",
        )
        .int(subscriber_id);
        self.fetch_all(stmt, machine_row).await
    }

    /// Suspends a user centrally (all access ends at once: the policy denies a suspended
    /// principal everything). False if it was suspended already.
    pub async fn suspend_user(&self, user_id: i64, now: OffsetDateTime) -> Result<bool, AccountError> {
        let user = self.user(user_id).await?.ok_or(AccountError::NoSuchUser(user_id))?;
        if user.username == OPERATOR {
            return Err(AccountError::OperatorNotSuspendable);
        }
        let stmt = Stmt::new("UPDATE users SET suspended_at = $2 WHERE id = $1 AND suspended_at IS NULL")
            .int(user_id)
            .time(now);
        Ok(self.execute(stmt).await? > 0)
    }

    /// Lifts a suspension; false if the user was not suspended.
    pub async fn unsuspend_user(&self, user_id: i64) -> Result<bool, StoreError> {
        let stmt = Stmt::new("UPDATE users SET suspended_at = NULL WHERE id = $1 AND suspended_at IS NOT NULL");
        Ok(self.execute(stmt.int(user_id)).await? > 0)
    }

    /// Users inactive (an active contact of no subscriber) since `after` or longer before `now`
    /// become plain users again. The number that did.
    pub async fn sweep_inactive(&self, now: OffsetDateTime, after: time::Duration) -> Result<u64, StoreError> {
        let stmt = Stmt::new(
            "UPDATE users SET inactive_since = NULL WHERE inactive_since IS NOT NULL AND inactive_since <= $1",
        )
        .time(now - after);
        self.execute(stmt).await
    }
}
