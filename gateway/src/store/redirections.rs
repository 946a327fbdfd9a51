//! AMT redirection sessions (SOL, IDE-R, KVM) carried by this fleet's relays, as the relay tap
//! saw them: which device and port, which technician (API token name) opened the relay, the AMT
//! user the console logged in as, when the session started and ended, how it went, the bytes
//! each way and, with `--record-sol`, the SOL transcript's file.
//!
//! A row is written once the session's kind is known, and ended as soon as the session ends in
//! the protocol (or is refused, or fails its authentication), so that the active rows of a device
//! say who holds its redirection sessions now. A gateway ends its own leftover active rows when
//! it starts ([`Store::end_instance_redirections`]).
//!
//! What it does not do: parse the protocol (`redir_tap`) or queue the writes (the tap's log
//! writer does, off the relays' tasks).

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Cols, Stmt, Store, StoreError};

/// How a redirection session went (the `outcome` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedirOutcome {
    /// Still open.
    Active,
    /// Ended in the protocol (EndRedirectionSession, EndSOL or EndIDER reply).
    Ended,
    /// The relay closed without an end in the protocol.
    Closed,
    /// The device refused the AMT credentials.
    AuthFailed,
    /// The device refused the session: it already has one of that kind.
    RefusedInUse,
    /// The device refused to start SOL or IDE-R after authentication.
    StartFailed,
    /// Not redirection the tap can read (TLS on 16995, or another protocol).
    Unparsed,
    /// The tap could not parse the stream part way through (the relay went on).
    TapError,
    /// Still open when its gateway stopped (found at the gateway's next start).
    Interrupted,
}

impl RedirOutcome {
    pub const ALL: [RedirOutcome; 9] = [
        RedirOutcome::Active,
        RedirOutcome::Ended,
        RedirOutcome::Closed,
        RedirOutcome::AuthFailed,
        RedirOutcome::RefusedInUse,
        RedirOutcome::StartFailed,
        RedirOutcome::Unparsed,
        RedirOutcome::TapError,
        RedirOutcome::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RedirOutcome::Active => "active",
            RedirOutcome::Ended => "ended",
            RedirOutcome::Closed => "closed",
            RedirOutcome::AuthFailed => "auth_failed",
            RedirOutcome::RefusedInUse => "refused_in_use",
            RedirOutcome::StartFailed => "start_failed",
            RedirOutcome::Unparsed => "unparsed",
            RedirOutcome::TapError => "tap_error",
            RedirOutcome::Interrupted => "interrupted",
        }
    }
}

/// A session as it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRedirection {
    pub uuid: Uuid,
    /// `sol`, `ider`, `kvm` or `unknown` (see `metrics::RedirKind`).
    pub kind: &'static str,
    /// The API token name that opened the relay.
    pub technician: String,
    /// The AMT username, once the console sent it (never a password or digest).
    pub device_user: Option<String>,
    pub port: u16,
    /// The gateway instance whose relay carries it.
    pub instance: String,
    pub started_at: OffsetDateTime,
    /// Usually [`RedirOutcome::Active`]; [`RedirOutcome::Unparsed`] for a stream the tap cannot
    /// read (the row is open all the same until the relay ends).
    pub outcome: RedirOutcome,
}

/// How a session ended, or how far it got (bytes so far).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectionEnd {
    pub ended_at: OffsetDateTime,
    pub outcome: RedirOutcome,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
}

/// One session, as the API shows it (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedirectionRecord {
    pub id: i64,
    pub uuid: Uuid,
    pub kind: String,
    pub technician: String,
    pub device_user: Option<String>,
    pub port: u16,
    pub instance: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// Until `ended_at`, or until now for an open session.
    pub duration_ms: i64,
    pub outcome: String,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    /// The SOL transcript's file on the gateway that recorded it (not shown by the API).
    #[serde(skip)]
    pub transcript: Option<String>,
}

/// Longest list one query returns.
pub const MAX_REDIRECTIONS: u32 = 1000;

fn redirection_row(r: &dyn Cols) -> sqlx::Result<RedirectionRecord> {
    let started_at = r.time(7)?.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let ended_at = r.time(8)?;
    let until = ended_at.unwrap_or_else(OffsetDateTime::now_utc);
    let duration_ms = i64::try_from((until - started_at).whole_milliseconds()).unwrap_or(i64::MAX).max(0);
    Ok(RedirectionRecord {
        id: r.int(0)?.unwrap_or_default(),
        uuid: Uuid::parse_str(&r.string(1)?).unwrap_or_default(),
        kind: r.string(2)?,
        technician: r.string(3)?,
        device_user: r.text(4)?,
        port: u16::try_from(r.int(5)?.unwrap_or_default()).unwrap_or_default(),
        instance: r.string(6)?,
        started_at,
        ended_at,
        duration_ms,
        outcome: r.string(9)?,
        bytes_to_device: r.count(10)?,
        bytes_from_device: r.count(11)?,
        transcript: r.text(12)?,
    })
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Records a session that started; its id.
    pub async fn start_redirection(&self, new: &NewRedirection) -> Result<i64, StoreError> {
        self.insert_redirection(new, None).await
    }

    /// Records a session whole, ended or not, in one statement (a session never accepted, or
    /// whose start was dropped): its id. It is never seen open when `end` is given.
    pub async fn record_redirection(&self, new: &NewRedirection, end: &RedirectionEnd) -> Result<i64, StoreError> {
        self.insert_redirection(new, Some(end)).await
    }

    async fn insert_redirection(&self, new: &NewRedirection, end: Option<&RedirectionEnd>) -> Result<i64, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO redirections (uuid, kind, technician, device_user, port, instance, started_at, outcome,
                                       ended_at, bytes_to_device, bytes_from_device)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             RETURNING id",
        )
        .text(new.uuid.to_string())
        .str(new.kind)
        .str(&new.technician)
        .text(new.device_user.clone())
        .int(i64::from(new.port))
        .str(&new.instance)
        .time(new.started_at)
        .str(end.map_or(new.outcome, |e| e.outcome).as_str())
        .int(end.map(|e| crate::store::millis(e.ended_at)))
        .int(end.map_or(0, |e| as_i64(e.bytes_to_device)))
        .int(end.map_or(0, |e| as_i64(e.bytes_from_device)));
        Ok(self.fetch_optional(stmt, |r| r.int(0)).await?.flatten().unwrap_or_default())
    }

    /// The AMT username the console logged in as.
    pub async fn set_redirection_user(&self, id: i64, user: &str) -> Result<(), StoreError> {
        self.execute(Stmt::new("UPDATE redirections SET device_user = $2 WHERE id = $1").int(id).str(user))
            .await
            .map(drop)
    }

    /// The file holding the session's SOL transcript.
    pub async fn set_redirection_transcript(&self, id: i64, path: &str) -> Result<(), StoreError> {
        let stmt = Stmt::new("UPDATE redirections SET transcript = $2 WHERE id = $1").int(id).str(path);
        self.execute(stmt).await.map(drop)
    }

    /// Ends a session, or updates its byte counts: the first end written stays (its time and
    /// outcome); the byte counts are always the latest.
    pub async fn end_redirection(&self, id: i64, end: &RedirectionEnd) -> Result<(), StoreError> {
        let stmt = Stmt::new(
            "UPDATE redirections SET
                 outcome = CASE WHEN ended_at IS NULL THEN $3 ELSE outcome END,
                 ended_at = COALESCE(ended_at, $2),
                 bytes_to_device = $4, bytes_from_device = $5
             WHERE id = $1",
        )
        .int(id)
        .time(end.ended_at)
        .str(end.outcome.as_str())
        .int(as_i64(end.bytes_to_device))
        .int(as_i64(end.bytes_from_device));
        self.execute(stmt).await.map(drop)
    }

    /// A device's sessions, newest first: all of them, or only those still open; at most `limit`
    /// (capped at [`MAX_REDIRECTIONS`]).
    pub async fn redirections_for(
        &self,
        uuid: Uuid,
        active_only: bool,
        limit: u32,
    ) -> Result<Vec<RedirectionRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT id, uuid, kind, technician, device_user, port, instance, started_at, ended_at, outcome,
                    bytes_to_device, bytes_from_device, transcript
             FROM redirections WHERE uuid = $1 AND (NOT $2 OR ended_at IS NULL)
             ORDER BY started_at DESC, id DESC LIMIT $3",
        )
        .text(uuid.to_string())
        .bool(active_only)
        .int(i64::from(limit.clamp(1, MAX_REDIRECTIONS)));
        self.fetch_all(stmt, redirection_row).await
    }

    /// Ends the open sessions of the other gateways of the fleet that stopped, or whose heartbeat
    /// is older than `stale_after` (they died: their relays are gone): outcome `interrupted`.
    /// Judged by the database's clock, through `me`'s own heartbeat (just written). The number
    /// ended. Meant to run beside `reap_stale_instances`.
    pub async fn end_stale_instance_redirections(
        &self,
        me: &str,
        stale_after: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let stmt = Stmt::new(
            "UPDATE redirections SET ended_at = (SELECT heartbeat_at FROM instances WHERE id = $1), outcome = $3
             WHERE ended_at IS NULL AND instance <> $1
               AND instance IN (SELECT id FROM instances WHERE stopped_at IS NOT NULL
                   OR heartbeat_at < (SELECT heartbeat_at FROM instances WHERE id = $1) - $2)",
        )
        .str(me)
        .int(i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX))
        .str(RedirOutcome::Interrupted.as_str());
        self.execute(stmt).await
    }

    /// Ends the sessions `instance` left open (it stopped without ending them): outcome
    /// `interrupted` at `at`. The number ended.
    pub async fn end_instance_redirections(&self, instance: &str, at: OffsetDateTime) -> Result<u64, StoreError> {
        let stmt =
            Stmt::new("UPDATE redirections SET ended_at = $2, outcome = $3 WHERE instance = $1 AND ended_at IS NULL")
                .str(instance)
                .time(at)
                .str(RedirOutcome::Interrupted.as_str());
        self.execute(stmt).await
    }
}
