//! The agents' tables: one-time enrollment tokens (only their SHA-256 is kept), the certificates
//! issued to agents (revocable), what each agent said in its last hello, and the telemetry
//! reports, keyed by (UUID, the agent's sequence number) so that a report sent again after a lost
//! acknowledgement is stored once.
//!
//! What it does not do: make tokens or certificates (`agents::enroll`), decide who may create a
//! token (`policy`, through `flows`), or decode a report (it keeps the agent's encoding, base64).

use time::OffsetDateTime;
use uuid::Uuid;

use super::accounts::lock_subscription;
use super::{is_unique_violation, AccountError, Cols, Stmt, Store, StoreError, SubscriptionStatus};

/// Reports a listing returns at most.
pub const MAX_REPORTS: i64 = 500;

/// An enrollment token to store.
#[derive(Debug, Clone)]
pub struct NewEnrollmentToken {
    pub hash: String,
    pub subscriber_id: i64,
    /// The machine the token is for, when the subscriber named it (an AMT UUID); else any.
    pub uuid: Option<Uuid>,
    pub nickname: Option<String>,
    pub created_by: Option<i64>,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// Why an enrollment token was not accepted. The agent is told only "refused" and this code; the
/// gateway's log says more.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no such enrollment token")]
    Unknown,
    #[error("the enrollment token was used already")]
    Used,
    #[error("the enrollment token has expired; ask for a new one")]
    Expired,
    #[error("the enrollment token is for machine {expected}, not {got}")]
    OtherMachine { expected: Uuid, got: Uuid },
    #[error(transparent)]
    Account(#[from] AccountError),
}

impl RedeemError {
    pub fn code(&self) -> &'static str {
        match self {
            RedeemError::Store(_) => "store",
            RedeemError::Unknown => "unknown_token",
            RedeemError::Used => "token_used",
            RedeemError::Expired => "token_expired",
            RedeemError::OtherMachine { .. } => "token_other_machine",
            RedeemError::Account(err) => err.code(),
        }
    }
}

/// What redeeming a token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    pub subscriber_id: i64,
    /// The machine was enrolled by this redemption (false: it was the subscriber's already).
    pub new_machine: bool,
}

/// A certificate issued to an agent.
#[derive(Debug, Clone)]
pub struct NewAgentCert {
    pub serial: String,
    pub uuid: Uuid,
    pub fingerprint: String,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// Hex of the machine's SubjectPublicKeyInfo (a root reissues for it on a move).
    pub spki: Option<String>,
}

/// A certificate's standing, as the admission of an agent checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStanding {
    /// Issued for this UUID and not revoked.
    Valid,
    /// Issued, and revoked (with the reason given).
    Revoked(String),
    /// Not issued by this gateway's store (or for another UUID).
    Unknown,
}

/// What an agent said in its hello.
#[derive(Debug, Clone)]
pub struct AgentHello {
    pub uuid: Uuid,
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
    pub capabilities: u32,
    pub remote_help: bool,
    pub remote_addr: String,
    pub instance_id: String,
    pub now: OffsetDateTime,
}

/// An agent as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentRecord {
    pub uuid: Uuid,
    pub hostname: String,
    pub os: String,
    pub agent_version: String,
    pub capabilities: u32,
    pub remote_help: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_hello: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_report: Option<OffsetDateTime>,
    pub remote_addr: Option<String>,
    /// The gateway holding its connection, while connected.
    pub instance_id: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub connected_since: Option<OffsetDateTime>,
}

/// A stored telemetry report (the agent's encoding of its support parameters, base64).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TelemetryRecord {
    pub uuid: Uuid,
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub report: String,
}

pub(super) fn insert_agent_cert(cert: &NewAgentCert) -> Stmt {
    Stmt::new(
        "INSERT INTO agent_certs (serial, uuid, fingerprint, issued_at, expires_at, spki)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .str(&cert.serial)
    .text(cert.uuid.to_string())
    .str(&cert.fingerprint)
    .time(cert.issued_at)
    .time(cert.expires_at)
    .text(cert.spki.clone())
}

fn agent_row(r: &dyn Cols) -> sqlx::Result<AgentRecord> {
    Ok(AgentRecord {
        uuid: r.string(0)?.parse().unwrap_or_default(),
        hostname: r.string(1)?,
        os: r.string(2)?,
        agent_version: r.string(3)?,
        capabilities: u32::try_from(r.int(4)?.unwrap_or_default()).unwrap_or_default(),
        remote_help: r.bool(5)?,
        enrolled_at: r.time(6)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        last_hello: r.time(7)?,
        last_report: r.time(8)?,
        remote_addr: r.text(9)?,
        instance_id: r.text(10)?,
        connected_since: r.time(11)?,
    })
}

pub(super) fn telemetry_row(r: &dyn Cols) -> sqlx::Result<TelemetryRecord> {
    Ok(TelemetryRecord {
        uuid: r.string(0)?.parse().unwrap_or_default(),
        seq: r.int(1)?.unwrap_or_default(),
        taken_at: r.time(2)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        received_at: r.time(3)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        report: r.string(4)?,
    })
}

impl Store {
    /// Stores a new enrollment token; its row id.
    pub async fn create_enrollment_token(&self, new: &NewEnrollmentToken) -> Result<i64, AccountError> {
        let mut tx = self.begin().await?;
        let (status, _, _) = lock_subscription(&mut tx, new.subscriber_id).await?;
        if status != SubscriptionStatus::Active {
            return Err(AccountError::SubscriptionTerminated(new.subscriber_id));
        }
        if let Some(uuid) = new.uuid {
            let owner = Stmt::new("SELECT subscriber_id FROM machines WHERE uuid = $1").text(uuid.to_string());
            if let Some(owner) = tx.fetch_optional(owner, |r| r.int(0)).await?.flatten() {
                if owner != new.subscriber_id {
                    return Err(AccountError::MachineTaken(uuid));
                }
            }
        }
        let insert = Stmt::new(
            "INSERT INTO enrollment_tokens (hash, subscriber_id, uuid, nickname, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .str(&new.hash)
        .int(new.subscriber_id)
        .text(new.uuid.map(|u| u.to_string()))
        .text(new.nickname.clone())
        .int(new.created_by)
        .time(new.now)
        .time(new.expires_at);
        let id = tx.fetch_optional(insert, |r| r.int(0)).await?.flatten().unwrap_or_default();
        tx.commit().await?;
        Ok(id)
    }

    /// Spends the token hashing to `hash` for machine `uuid`: enrolls the machine for the
    /// token's subscriber (within its limits) and records the certificate issued to it, all or
    /// nothing. A token is spent once, whatever happens next.
    /// The subscriber an unused enrollment token is for, without spending it (a root needs the
    /// subscriber's entitlement before it can issue the certificate the redemption stores). The
    /// redemption checks the token again.
    pub async fn enrollment_token_subscriber(&self, hash: &str) -> Result<Option<i64>, StoreError> {
        let stmt =
            Stmt::new("SELECT subscriber_id FROM enrollment_tokens WHERE hash = $1 AND used_at IS NULL").str(hash);
        Ok(self.fetch_optional(stmt, |r| r.int(0)).await?.flatten())
    }

    pub async fn redeem_enrollment_token(
        &self,
        hash: &str,
        uuid: Uuid,
        cert: &NewAgentCert,
        hello: &AgentHello,
    ) -> Result<Redeemed, RedeemError> {
        let mut tx = self.begin().await?;
        // Locks the token's row (PostgreSQL) before reading it: two redemptions queue.
        let claimed =
            tx.execute(Stmt::new("UPDATE enrollment_tokens SET hash = hash WHERE hash = $1").str(hash)).await?;
        if claimed == 0 {
            return Err(RedeemError::Unknown);
        }
        let stmt = Stmt::new(
            "SELECT id, subscriber_id, uuid, nickname, expires_at, used_at FROM enrollment_tokens WHERE hash = $1",
        )
        .str(hash);
        let row = tx
            .fetch_optional(stmt, |r| Ok((r.int(0)?, r.int(1)?, r.text(2)?, r.text(3)?, r.time(4)?, r.time(5)?)))
            .await?;
        let Some((Some(id), Some(subscriber_id), for_uuid, nickname, expires_at, used_at)) = row else {
            return Err(RedeemError::Unknown);
        };
        if used_at.is_some() {
            return Err(RedeemError::Used);
        }
        if expires_at.is_none_or(|at| at <= hello.now) {
            return Err(RedeemError::Expired);
        }
        if let Some(expected) = for_uuid.and_then(|u| u.parse::<Uuid>().ok()) {
            if expected != uuid {
                return Err(RedeemError::OtherMachine { expected, got: uuid });
            }
        }
        let (status, max_machines, _) = lock_subscription(&mut tx, subscriber_id).await?;
        if status != SubscriptionStatus::Active {
            return Err(AccountError::SubscriptionTerminated(subscriber_id).into());
        }
        let owner = Stmt::new("SELECT subscriber_id FROM machines WHERE uuid = $1").text(uuid.to_string());
        let new_machine = match tx.fetch_optional(owner, |r| r.int(0)).await?.flatten() {
            Some(owner) if owner == subscriber_id => false,
            Some(_) => return Err(AccountError::MachineTaken(uuid).into()),
            None => {
                let count = Stmt::new("SELECT COUNT(*) FROM machines WHERE subscriber_id = $1").int(subscriber_id);
                if tx.fetch_optional(count, |r| r.count(0)).await?.unwrap_or_default() >= max_machines {
                    return Err(AccountError::MachineLimit { subscriber: subscriber_id, max: max_machines }.into());
                }
                let insert = Stmt::new(
                    "INSERT INTO machines (uuid, subscriber_id, nickname, enrolled_at) VALUES ($1, $2, $3, $4)",
                )
                .text(uuid.to_string())
                .int(subscriber_id)
                .text(nickname)
                .time(hello.now);
                match tx.execute(insert).await {
                    Ok(_) => true,
                    Err(err) if is_unique_violation(&err) => return Err(AccountError::MachineTaken(uuid).into()),
                    Err(err) => return Err(err.into()),
                }
            }
        };
        tx.execute(
            Stmt::new("UPDATE enrollment_tokens SET used_at = $2, used_by = $3 WHERE id = $1")
                .int(id)
                .time(hello.now)
                .text(uuid.to_string()),
        )
        .await?;
        tx.execute(insert_agent_cert(cert)).await?;
        tx.execute(upsert_agent(hello, false)).await?;
        tx.commit().await?;
        Ok(Redeemed { subscriber_id, new_machine })
    }

    /// Whether the certificate with `serial` was issued to `uuid` and stands.
    pub async fn agent_cert_standing(&self, serial: &str, uuid: Uuid) -> Result<CertStanding, StoreError> {
        let stmt = Stmt::new("SELECT revoked_at, revoked_reason FROM agent_certs WHERE serial = $1 AND uuid = $2")
            .str(serial)
            .text(uuid.to_string());
        Ok(match self.fetch_optional(stmt, |r| Ok((r.time(0)?, r.text(1)?))).await? {
            None => CertStanding::Unknown,
            Some((None, _)) => CertStanding::Valid,
            Some((Some(_), reason)) => CertStanding::Revoked(reason.unwrap_or_default()),
        })
    }

    /// The serials of revoked certificates that have not expired yet (a root's revocation list),
    /// at most `limit`.
    pub async fn revoked_agent_serials(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<String>, StoreError> {
        let stmt = Stmt::new(
            "SELECT serial FROM agent_certs WHERE revoked_at IS NOT NULL AND expires_at > $1 ORDER BY serial LIMIT $2",
        )
        .time(now)
        .int(i64::try_from(limit).unwrap_or(i64::MAX));
        self.fetch_all(stmt, |r| r.string(0)).await
    }

    /// Revokes every certificate of machine `uuid`; how many were standing.
    pub async fn revoke_agent_certs(&self, uuid: Uuid, reason: &str, now: OffsetDateTime) -> Result<u64, StoreError> {
        self.execute(
            Stmt::new(
                "UPDATE agent_certs SET revoked_at = $2, revoked_reason = $3 WHERE uuid = $1 AND revoked_at IS NULL",
            )
            .text(uuid.to_string())
            .time(now)
            .str(reason),
        )
        .await
    }

    /// Records an agent's hello (and that it is connected to this gateway).
    pub async fn agent_connected(&self, hello: &AgentHello) -> Result<(), StoreError> {
        self.execute(upsert_agent(hello, true)).await.map(drop)
    }

    /// Records that the agent's connection to gateway `instance` ended (unless a newer one, on
    /// this or another gateway, holds it).
    pub async fn agent_disconnected(
        &self,
        uuid: Uuid,
        instance: &str,
        since: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.execute(
            Stmt::new(
                "UPDATE agents SET instance_id = NULL, connected_since = NULL
                 WHERE uuid = $1 AND instance_id = $2 AND connected_since = $3",
            )
            .text(uuid.to_string())
            .str(instance)
            .time(since),
        )
        .await
        .map(drop)
    }

    /// Records the PC user's consent to remote help, as the agent reported it.
    pub async fn set_agent_remote_help(&self, uuid: Uuid, enabled: bool) -> Result<(), StoreError> {
        self.execute(
            Stmt::new("UPDATE agents SET remote_help = $2 WHERE uuid = $1").text(uuid.to_string()).bool(enabled),
        )
        .await
        .map(drop)
    }

    /// Records the agent's new address (its connection migrated).
    pub async fn set_agent_address(&self, uuid: Uuid, remote: &str) -> Result<(), StoreError> {
        self.execute(Stmt::new("UPDATE agents SET remote_addr = $2 WHERE uuid = $1").text(uuid.to_string()).str(remote))
            .await
            .map(drop)
    }

    pub async fn agent(&self, uuid: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT uuid, hostname, os, agent_version, capabilities, remote_help, enrolled_at, last_hello, last_report,
                    remote_addr, instance_id, connected_since
             FROM agents WHERE uuid = $1",
        )
        .text(uuid.to_string());
        self.fetch_optional(stmt, agent_row).await
    }

    /// Stores a report; false when (UUID, seq) was stored before (a report sent again).
    pub async fn insert_report(
        &self,
        uuid: Uuid,
        seq: i64,
        taken_at: OffsetDateTime,
        received_at: OffsetDateTime,
        report: &str,
    ) -> Result<bool, StoreError> {
        let stmts = [
            Stmt::new(
                "INSERT INTO telemetry (uuid, seq, taken_at, received_at, report) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (uuid, seq) DO NOTHING",
            )
            .text(uuid.to_string())
            .int(seq)
            .time(taken_at)
            .time(received_at)
            .str(report),
            Stmt::new("UPDATE agents SET last_report = $2 WHERE uuid = $1").text(uuid.to_string()).time(received_at),
        ];
        let mut tx = self.begin().await?;
        let [insert, touch] = stmts;
        let new = tx.execute(insert).await? > 0;
        tx.execute(touch).await?;
        tx.commit().await?;
        Ok(new)
    }

    /// The newest report of machine `uuid` (by the time the agent took it).
    pub async fn latest_report(&self, uuid: Uuid) -> Result<Option<TelemetryRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT uuid, seq, taken_at, received_at, report FROM telemetry WHERE uuid = $1
             ORDER BY taken_at DESC, seq DESC LIMIT 1",
        )
        .text(uuid.to_string());
        self.fetch_optional(stmt, telemetry_row).await
    }

    /// Reports of machine `uuid` received since `since`, newest first, at most `limit`
    /// (capped at [`MAX_REPORTS`]).
    pub async fn reports_since(
        &self,
        uuid: Uuid,
        since: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<TelemetryRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT uuid, seq, taken_at, received_at, report FROM telemetry WHERE uuid = $1 AND received_at >= $2
             ORDER BY received_at DESC, seq DESC LIMIT $3",
        )
        .text(uuid.to_string())
        .time(since)
        .int(limit.clamp(1, MAX_REPORTS));
        self.fetch_all(stmt, telemetry_row).await
    }
}

/// Inserts or updates the agent's row from its hello; `connected` also records the connection.
fn upsert_agent(hello: &AgentHello, connected: bool) -> Stmt {
    let sql = if connected {
        "INSERT INTO agents (uuid, hostname, os, agent_version, capabilities, remote_help, enrolled_at, last_hello,
                             remote_addr, instance_id, connected_since)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $7)
         ON CONFLICT (uuid) DO UPDATE SET hostname = $2, os = $3, agent_version = $4, capabilities = $5,
             remote_help = $6, last_hello = $7, remote_addr = $8, instance_id = $9, connected_since = $7"
    } else {
        "INSERT INTO agents (uuid, hostname, os, agent_version, capabilities, remote_help, enrolled_at, remote_addr)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (uuid) DO UPDATE SET hostname = $2, os = $3, agent_version = $4, enrolled_at = $7"
    };
    let stmt = Stmt::new(sql)
        .text(hello.uuid.to_string())
        .str(&hello.hostname)
        .str(&hello.os)
        .str(&hello.agent_version)
        .int(i64::from(hello.capabilities))
        .bool(hello.remote_help)
        .time(hello.now)
        .str(&hello.remote_addr);
    if connected {
        stmt.str(&hello.instance_id)
    } else {
        stmt
    }
}
