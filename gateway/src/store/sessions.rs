//! The portal's sign-in sessions: one row per signed-in browser, keyed by the SHA-256 of the
//! session's random id (the id itself lives only in the browser's cookie), with its user, when it
//! began, was last seen and ends at the latest, whether the second factor was passed, its CSRF
//! secret, and a TOTP secret being enrolled (until the user confirms it with a code). A user has
//! at most [`MAX_SESSIONS_PER_USER`]: a new one ends the oldest.
//!
//! Also the users' TOTP secrets (sealed by the caller) and the last time step each user spent,
//! so that no code is accepted twice.
//!
//! What it does not do: make ids or secrets, check a password or a code, or decide how long a
//! session lasts (`portal::session` does, and passes `now` and the limits in).

use time::OffsetDateTime;

use super::{Cols, Stmt, Store, StoreError};

/// Sessions one user may hold at once (browsers, phones); a new one beyond ends the oldest.
pub const MAX_SESSIONS_PER_USER: i64 = 8;

/// A session as the store keeps it (never the id itself: only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: i64,
    pub user_id: i64,
    pub created_at: OffsetDateTime,
    pub last_seen: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// The user gave a TOTP code in this session (at sign-in or when enrolling).
    pub second_factor: bool,
    /// The secret CSRF tokens of this session's forms are checked against.
    pub csrf_secret: String,
    /// A TOTP secret shown for enrolment, not yet confirmed with a code (sealed).
    pub totp_pending: Option<String>,
    /// The root's portal sent this person, signed in there (a maintenance silo's session).
    pub via_root: bool,
}

/// A session to create.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id_hash: String,
    pub user_id: i64,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub second_factor: bool,
    pub csrf_secret: String,
    pub via_root: bool,
}

fn session_row(r: &dyn Cols) -> sqlx::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.int(0)?.unwrap_or_default(),
        user_id: r.int(1)?.unwrap_or_default(),
        created_at: r.time(2)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        last_seen: r.time(3)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        expires_at: r.time(4)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        second_factor: r.bool(5)?,
        csrf_secret: r.string(6)?,
        totp_pending: r.text(7)?,
        via_root: r.bool(8)?,
    })
}

impl Store {
    /// Creates a session, first ending the user's sessions past `expires_at` or idle since
    /// `idle_before`, and its oldest ones beyond [`MAX_SESSIONS_PER_USER`] − 1; its row id.
    pub async fn create_session(&self, new: &NewSession, idle_before: OffsetDateTime) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        tx.execute(
            Stmt::new("DELETE FROM portal_sessions WHERE user_id = $1 AND (expires_at <= $2 OR last_seen <= $3)")
                .int(new.user_id)
                .time(new.now)
                .time(idle_before),
        )
        .await?;
        tx.execute(
            Stmt::new(
                "DELETE FROM portal_sessions WHERE user_id = $1 AND id NOT IN
                 (SELECT id FROM portal_sessions WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2)",
            )
            .int(new.user_id)
            .int(MAX_SESSIONS_PER_USER - 1),
        )
        .await?;
        let insert = Stmt::new(
            "INSERT INTO portal_sessions (id_hash, user_id, created_at, last_seen, expires_at, second_factor, csrf_secret,
                via_root)
             VALUES ($1, $2, $3, $3, $4, $5, $6, $7) RETURNING id",
        )
        .str(&new.id_hash)
        .int(new.user_id)
        .time(new.now)
        .time(new.expires_at)
        .bool(new.second_factor)
        .str(&new.csrf_secret)
        .bool(new.via_root);
        let id = tx.fetch_optional(insert, |r| r.int(0)).await?.flatten().unwrap_or_default();
        tx.commit().await?;
        Ok(id)
    }

    /// The session whose id hashes to `id_hash`, whatever its times (the caller judges them).
    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT id, user_id, created_at, last_seen, expires_at, second_factor, csrf_secret, totp_pending, via_root
             FROM portal_sessions WHERE id_hash = $1",
        )
        .str(id_hash);
        self.fetch_optional(stmt, session_row).await
    }

    /// Records that the session was used at `now`.
    pub async fn touch_session(&self, id: i64, now: OffsetDateTime) -> Result<(), StoreError> {
        self.execute(Stmt::new("UPDATE portal_sessions SET last_seen = $2 WHERE id = $1").int(id).time(now))
            .await
            .map(drop)
    }

    /// Marks the second factor passed in this session.
    pub async fn pass_second_factor(&self, id: i64) -> Result<(), StoreError> {
        let stmt = Stmt::new("UPDATE portal_sessions SET second_factor = $2, totp_pending = NULL WHERE id = $1");
        self.execute(stmt.int(id).bool(true)).await.map(drop)
    }

    /// Keeps (or, with `None`, forgets) a TOTP secret being enrolled in this session.
    pub async fn set_session_totp_pending(&self, id: i64, sealed: Option<String>) -> Result<(), StoreError> {
        let stmt = Stmt::new("UPDATE portal_sessions SET totp_pending = $2 WHERE id = $1").int(id).text(sealed);
        self.execute(stmt).await.map(drop)
    }

    /// Ends one session (sign-out); false if it was gone already.
    pub async fn delete_session(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.execute(Stmt::new("DELETE FROM portal_sessions WHERE id = $1").int(id)).await? > 0)
    }

    /// Ends every session of a user but `keep` (after its second factor changed); the number ended.
    pub async fn delete_user_sessions(&self, user_id: i64, keep: Option<i64>) -> Result<u64, StoreError> {
        let stmt = Stmt::new("DELETE FROM portal_sessions WHERE user_id = $1 AND id <> $2")
            .int(user_id)
            .int(keep.unwrap_or(-1));
        self.execute(stmt).await
    }

    /// Ends every session past its absolute end or idle since `idle_before`; the number ended.
    pub async fn sweep_sessions(&self, now: OffsetDateTime, idle_before: OffsetDateTime) -> Result<u64, StoreError> {
        let stmt = Stmt::new("DELETE FROM portal_sessions WHERE expires_at <= $1 OR last_seen <= $2");
        self.execute(stmt.time(now).time(idle_before)).await
    }

    /// How many sessions a user holds (tests, the profile page).
    pub async fn session_count(&self, user_id: i64) -> Result<u64, StoreError> {
        let stmt = Stmt::new("SELECT COUNT(*) FROM portal_sessions WHERE user_id = $1").int(user_id);
        Ok(self.fetch_optional(stmt, |r| r.count(0)).await?.unwrap_or_default())
    }

    /// A user's TOTP secret, as stored (sealed by the portal); `None`: no second factor.
    pub async fn user_totp_secret(&self, user_id: i64) -> Result<Option<String>, StoreError> {
        let stmt = Stmt::new("SELECT totp_secret FROM users WHERE id = $1").int(user_id);
        Ok(self.fetch_optional(stmt, |r| r.text(0)).await?.flatten())
    }

    /// Sets (or, with `None`, removes) a user's TOTP secret, and forgets the last step spent.
    pub async fn set_user_totp_secret(&self, user_id: i64, sealed: Option<String>) -> Result<bool, StoreError> {
        let stmt = Stmt::new("UPDATE users SET totp_secret = $2, totp_last_step = NULL WHERE id = $1")
            .int(user_id)
            .text(sealed);
        Ok(self.execute(stmt).await? > 0)
    }

    /// Spends TOTP time step `step` for a user: true if it is later than any step the user spent
    /// before (a code is good once), false if it was spent already (a replay).
    pub async fn spend_totp_step(&self, user_id: i64, step: i64) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "UPDATE users SET totp_last_step = $2 WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
        )
        .int(user_id)
        .int(step);
        Ok(self.execute(stmt).await? > 0)
    }
}
