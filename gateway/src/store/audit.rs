//! The audit log: an append-only record of who did what to which machine (or subscriber), and
//! when. The databases refuse to change or delete a row (triggers of the migration); reads are
//! newest first, by machine or by the user who acted, in pages.
//!
//! What it does not do: decide what is audited (the callers append) or who may read it
//! (`policy`, [`crate::policy::Action::ViewAudit`]).

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Cols, Stmt, Store, StoreError};

/// Largest page of audit rows one query returns.
pub const MAX_AUDIT: u32 = 1000;

/// What was done: a closed set of codes, stored as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AuditAction {
    UserCreated,
    SubscriberRegistered,
    MachineEnrolled,
    MachineViewed,
    RelayAttached,
    ConsoleSession,
    IderSession,
    ContactInvited,
    InvitationSent,
    ContactAccepted,
    ContactRemoved,
    ContactLeft,
    ContactPrefsChanged,
    SubscriptionTerminated,
    UserSuspended,
    UserUnsuspended,
    EmailChangeRequested,
    EmailChanged,
    TokenCreated,
    TokenRevoked,
    MpsAccountIssued,
    EnrollmentTokenCreated,
    AgentEnrolled,
    AgentCertRevoked,
    SupportActionCreated,
    SupportActionSent,
    SupportActionResult,
    SupportActionRefused,
    MessageSent,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::UserCreated => "user.created",
            AuditAction::SubscriberRegistered => "subscriber.registered",
            AuditAction::MachineEnrolled => "machine.enrolled",
            AuditAction::MachineViewed => "machine.viewed",
            AuditAction::RelayAttached => "relay.attached",
            AuditAction::ConsoleSession => "console.session",
            AuditAction::IderSession => "ider.session",
            AuditAction::ContactInvited => "contact.invited",
            AuditAction::InvitationSent => "contact.invitation_sent",
            AuditAction::ContactAccepted => "contact.accepted",
            AuditAction::ContactRemoved => "contact.removed",
            AuditAction::ContactLeft => "contact.left",
            AuditAction::ContactPrefsChanged => "contact.prefs_changed",
            AuditAction::SubscriptionTerminated => "subscription.terminated",
            AuditAction::UserSuspended => "user.suspended",
            AuditAction::UserUnsuspended => "user.unsuspended",
            AuditAction::EmailChangeRequested => "email.change_requested",
            AuditAction::EmailChanged => "email.changed",
            AuditAction::TokenCreated => "token.created",
            AuditAction::TokenRevoked => "token.revoked",
            AuditAction::MpsAccountIssued => "mps_account.issued",
            AuditAction::EnrollmentTokenCreated => "enrollment_token.created",
            AuditAction::AgentEnrolled => "agent.enrolled",
            AuditAction::AgentCertRevoked => "agent.cert_revoked",
            AuditAction::SupportActionCreated => "action.created",
            AuditAction::SupportActionSent => "action.sent",
            AuditAction::SupportActionResult => "action.result",
            AuditAction::SupportActionRefused => "action.refused",
            AuditAction::MessageSent => "message.sent",
        }
    }
}

/// A row to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    pub at: OffsetDateTime,
    /// `None`: the gateway itself (a sweep, a timer).
    pub actor_user_id: Option<i64>,
    pub action: AuditAction,
    pub machine_uuid: Option<Uuid>,
    pub subscriber_id: Option<i64>,
    pub detail: String,
}

/// A row read back. `action` is text: a newer version's code reads as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor_user_id: Option<i64>,
    pub action: String,
    pub machine_uuid: Option<Uuid>,
    pub subscriber_id: Option<i64>,
    pub detail: String,
}

macro_rules! audit_select {
    ($tail:literal) => {
        concat!("SELECT id, at, actor_user_id, action, machine_uuid, subscriber_id, detail FROM audit_log ", $tail)
    };
}

fn audit_row(r: &dyn Cols) -> sqlx::Result<AuditRecord> {
    Ok(AuditRecord {
        id: r.int(0)?.unwrap_or_default(),
        at: r.time(1)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        actor_user_id: r.int(2)?,
        action: r.string(3)?,
        machine_uuid: r.text(4)?.and_then(|u| Uuid::parse_str(&u).ok()),
        subscriber_id: r.int(5)?,
        detail: r.string(6)?,
    })
}

impl Store {
    /// Appends a row; its id.
    pub async fn append_audit(&self, row: &NewAudit) -> Result<i64, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO audit_log (at, actor_user_id, action, machine_uuid, subscriber_id, detail)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .time(row.at)
        .int(row.actor_user_id)
        .str(row.action.as_str())
        .text(row.machine_uuid.map(|u| u.to_string()))
        .int(row.subscriber_id)
        .str(&row.detail);
        Ok(self.fetch_optional(stmt, |r| r.int(0)).await?.flatten().unwrap_or_default())
    }

    /// What was done to machine `uuid`, newest first: rows before id `before` (all if `None`),
    /// at most `limit` (capped at [`MAX_AUDIT`]).
    pub async fn audit_for_machine(
        &self,
        uuid: Uuid,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let stmt = Stmt::new(audit_select!("WHERE machine_uuid = $1 AND id < $2 ORDER BY id DESC LIMIT $3"))
            .text(uuid.to_string())
            .int(before.unwrap_or(i64::MAX))
            .int(i64::from(limit.clamp(1, MAX_AUDIT)));
        self.fetch_all(stmt, audit_row).await
    }

    /// What user `user_id` did, newest first, paged as [`Store::audit_for_machine`].
    pub async fn audit_by_user(
        &self,
        user_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let stmt = Stmt::new(audit_select!("WHERE actor_user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"))
            .int(user_id)
            .int(before.unwrap_or(i64::MAX))
            .int(i64::from(limit.clamp(1, MAX_AUDIT)));
        self.fetch_all(stmt, audit_row).await
    }
}
