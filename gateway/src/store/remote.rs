//! The remote fix's records: every WS-MAN action technicians take on a device (who, which token,
//! what, how it went), what the gateway keeps to reach a device's AMT (a remembered admin account,
//! sealed; the TLS certificate pin of 16993), and the state of a device's remote-fix session (the
//! settings `tether rescue` found and must restore, and whether a technician closed the session).
//!
//! What it does not do: seal or open passwords (`crate::sealing`), or decide anything.

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Cols, Stmt, Store, StoreError};

/// One action as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAction {
    pub uuid: Uuid,
    pub at: OffsetDateTime,
    pub token_id: Option<i64>,
    /// The token's name.
    pub technician: String,
    /// `power.reset`, `boot.ider`, `redirection.enable`, `rescue.start`, `session.close`, …
    pub action: String,
    /// What was asked (never a password).
    pub detail: String,
    /// `ok`, `failed` or `refused`.
    pub outcome: String,
    /// What the device answered, or the technician's message.
    pub message: Option<String>,
    pub instance: String,
}

/// One recorded action, as the API shows it (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionRecord {
    pub id: i64,
    pub uuid: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub token_id: Option<i64>,
    pub technician: String,
    pub action: String,
    pub detail: String,
    pub outcome: String,
    pub message: Option<String>,
    pub instance: String,
}

/// Longest list of actions one query returns.
pub const MAX_ACTIONS: u32 = 1000;

/// What the gateway keeps to reach one device's AMT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmtAccess {
    pub user: Option<String>,
    /// The admin password, sealed (`crate::sealing`), base64.
    pub sealed_password: Option<String>,
    /// SHA-256 fingerprint of the certificate the device presented on 16993.
    pub tls_pin: Option<String>,
}

/// A closed remote-fix session: technicians' relays are refused until one opens a new session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClosedSession {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub by: String,
    pub message: Option<String>,
}

/// What `tether rescue` changed on a device, to be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RescueRecord {
    /// JSON of what was found (`api::amt::Found`).
    pub found: String,
    pub by: String,
    pub at: OffsetDateTime,
}

fn action_row(r: &dyn Cols) -> sqlx::Result<ActionRecord> {
    Ok(ActionRecord {
        id: r.int(0)?.unwrap_or_default(),
        uuid: Uuid::parse_str(&r.string(1)?).unwrap_or_default(),
        at: r.time(2)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        token_id: r.int(3)?,
        technician: r.string(4)?,
        action: r.string(5)?,
        detail: r.string(6)?,
        outcome: r.string(7)?,
        message: r.text(8)?,
        instance: r.string(9)?,
    })
}

impl Store {
    /// Records an action; its id.
    pub async fn record_action(&self, action: &NewAction) -> Result<i64, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO device_actions (uuid, at, token_id, technician, action, detail, outcome, message, instance)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING id",
        )
        .text(action.uuid.to_string())
        .time(action.at)
        .int(action.token_id)
        .str(&action.technician)
        .str(&action.action)
        .str(&action.detail)
        .str(&action.outcome)
        .text(action.message.clone())
        .str(&action.instance);
        Ok(self.fetch_optional(stmt, |r| r.int(0)).await?.flatten().unwrap_or_default())
    }

    /// A device's actions, newest first, at most `limit` (capped at [`MAX_ACTIONS`]).
    pub async fn actions_for(&self, uuid: Uuid, limit: u32) -> Result<Vec<ActionRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT id, uuid, at, token_id, technician, action, detail, outcome, message, instance
             FROM device_actions WHERE uuid = $1 ORDER BY at DESC, id DESC LIMIT $2",
        )
        .text(uuid.to_string())
        .int(i64::from(limit.clamp(1, MAX_ACTIONS)));
        self.fetch_all(stmt, action_row).await
    }

    /// What is kept to reach the device's AMT.
    pub async fn amt_access(&self, uuid: Uuid) -> Result<AmtAccess, StoreError> {
        let stmt = Stmt::new("SELECT amt_user, sealed_password, tls_pin FROM amt_access WHERE uuid = $1")
            .text(uuid.to_string());
        let row = self
            .fetch_optional(stmt, |r| {
                Ok(AmtAccess { user: r.text(0)?, sealed_password: r.text(1)?, tls_pin: r.text(2)? })
            })
            .await?;
        Ok(row.unwrap_or_default())
    }

    /// Remembers the device's AMT account (the password sealed), or forgets it (`None`).
    pub async fn remember_amt_account(
        &self,
        uuid: Uuid,
        account: Option<(&str, &str)>,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO amt_access (uuid, amt_user, sealed_password, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (uuid) DO UPDATE SET amt_user = $2, sealed_password = $3, updated_at = $4",
        )
        .text(uuid.to_string())
        .text(account.map(|(user, _)| user.to_owned()))
        .text(account.map(|(_, sealed)| sealed.to_owned()))
        .time(at);
        self.execute(stmt).await.map(drop)
    }

    /// Pins (or, with `None`, unpins) the device's 16993 certificate.
    pub async fn set_amt_tls_pin(&self, uuid: Uuid, pin: Option<&str>, at: OffsetDateTime) -> Result<(), StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO amt_access (uuid, tls_pin, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (uuid) DO UPDATE SET tls_pin = $2, updated_at = $3",
        )
        .text(uuid.to_string())
        .text(pin.map(str::to_owned))
        .time(at);
        self.execute(stmt).await.map(drop)
    }

    /// Keeps what a rescue found (replacing an earlier record only when `replace`); whether it
    /// was stored. A rescue started over an unfinished one keeps the first record, which holds
    /// the settings from before either.
    pub async fn save_rescue(&self, uuid: Uuid, record: &RescueRecord, replace: bool) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO remote_sessions (uuid, rescue_found, rescue_by, rescue_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (uuid) DO UPDATE SET rescue_found = $2, rescue_by = $3, rescue_at = $4
                 WHERE remote_sessions.rescue_found IS NULL OR $5",
        )
        .text(uuid.to_string())
        .str(&record.found)
        .str(&record.by)
        .time(record.at)
        .bool(replace);
        Ok(self.execute(stmt).await? > 0)
    }

    /// What an unfinished rescue found, if one is open.
    pub async fn rescue(&self, uuid: Uuid) -> Result<Option<RescueRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT rescue_found, rescue_by, rescue_at FROM remote_sessions
             WHERE uuid = $1 AND rescue_found IS NOT NULL",
        )
        .text(uuid.to_string());
        self.fetch_optional(stmt, |r| {
            Ok(RescueRecord {
                found: r.string(0)?,
                by: r.string(1)?,
                at: r.time(2)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
            })
        })
        .await
    }

    /// The rescue is over (its settings were restored).
    pub async fn clear_rescue(&self, uuid: Uuid) -> Result<(), StoreError> {
        let stmt = Stmt::new(
            "UPDATE remote_sessions SET rescue_found = NULL, rescue_by = NULL, rescue_at = NULL WHERE uuid = $1",
        )
        .text(uuid.to_string());
        self.execute(stmt).await.map(drop)
    }

    /// Marks the device's remote-fix session closed.
    pub async fn close_session(&self, uuid: Uuid, closed: &ClosedSession) -> Result<(), StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO remote_sessions (uuid, closed_at, closed_by, close_message) VALUES ($1, $2, $3, $4)
             ON CONFLICT (uuid) DO UPDATE SET closed_at = $2, closed_by = $3, close_message = $4",
        )
        .text(uuid.to_string())
        .time(closed.at)
        .str(&closed.by)
        .text(closed.message.clone());
        self.execute(stmt).await.map(drop)
    }

    /// Opens a new session: technicians may reach the device again. Whether one was closed.
    pub async fn open_session(&self, uuid: Uuid) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "UPDATE remote_sessions SET closed_at = NULL, closed_by = NULL, close_message = NULL
             WHERE uuid = $1 AND closed_at IS NOT NULL",
        )
        .text(uuid.to_string());
        Ok(self.execute(stmt).await? > 0)
    }

    /// The device's closed session, if it is closed.
    pub async fn closed_session(&self, uuid: Uuid) -> Result<Option<ClosedSession>, StoreError> {
        let stmt = Stmt::new(
            "SELECT closed_at, closed_by, close_message FROM remote_sessions
             WHERE uuid = $1 AND closed_at IS NOT NULL",
        )
        .text(uuid.to_string());
        self.fetch_optional(stmt, |r| {
            Ok(ClosedSession {
                at: r.time(0)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
                by: r.string(1)?,
                message: r.text(2)?,
            })
        })
        .await
    }
}
