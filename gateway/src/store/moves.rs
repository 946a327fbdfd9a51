//! Moving clients between maintenance silos (`docs/silos.md`, "Moving a client").
//!
//! On a **root**: the public key of each machine's certificate (`agent_certs.spki`, to reissue
//! for it), each silo's signing key (`silos.signing_key`, to check what the silo reports), and
//! the moves it ordered (`silo_moves`): the new certificate and the signed order, until the silo
//! the machine went to confirms it.
//!
//! On a **maintenance** silo: a client's history, exported for the silo it goes to or imported
//! from the silo it came from (telemetry, its health meter and every change of it, the agent's
//! own description), and forgetting a client that left. No personal data is in any of it.
//!
//! What it does not do: sign or verify anything (`silo::moves`).

use time::OffsetDateTime;
use uuid::Uuid;

use super::{AgentRecord, Cols, HealthChange, HealthRecord, Stmt, Store, StoreError, TelemetryRecord};

/// Moves a root lists at most in one answer.
pub const MAX_MOVES: i64 = 10_000;

/// A move a root ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveRecord {
    /// The order's id (UUID).
    pub id: String,
    pub uuid: Uuid,
    pub from_silo: String,
    pub to_silo: String,
    /// The serial of the certificate the machine held before (revoked once the move is confirmed).
    pub old_serial: Option<String>,
    /// The new certificate's serial.
    pub serial: String,
    /// The new certificate, DER in base64.
    pub certificate: String,
    /// The `MoveOrder`'s bytes in base64, and the root's signature over them in hex.
    pub order_payload: String,
    pub order_signature: String,
    pub created_at: OffsetDateTime,
    pub confirmed_at: Option<OffsetDateTime>,
}

fn move_row(r: &dyn Cols) -> sqlx::Result<MoveRecord> {
    Ok(MoveRecord {
        id: r.string(0)?,
        uuid: r.string(1)?.parse().unwrap_or_default(),
        from_silo: r.string(2)?,
        to_silo: r.string(3)?,
        old_serial: r.text(4)?,
        serial: r.string(5)?,
        certificate: r.string(6)?,
        order_payload: r.string(7)?,
        order_signature: r.string(8)?,
        created_at: r.time(9)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        confirmed_at: r.time(10)?,
    })
}

/// `SELECT` of the moves' columns (in [`move_row`]'s order) and the rest of the query.
macro_rules! moves {
    ($rest:literal) => {
        concat!(
            "SELECT id, uuid, from_silo, to_silo, old_serial, serial, certificate, order_payload, order_signature,
                    created_at, confirmed_at FROM silo_moves",
            $rest
        )
    };
}

/// What a maintenance silo holds of one client, as it leaves or arrives.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ClientHistory {
    pub agent: Option<AgentRecord>,
    pub health: Option<HealthRecord>,
    /// Oldest first.
    pub changes: Vec<HealthChange>,
    /// Oldest first.
    pub reports: Vec<TelemetryRecord>,
}

impl Store {
    /// The newest standing certificate of machine `uuid` whose public key is on record: its
    /// serial and key (hex SubjectPublicKeyInfo). Root.
    pub async fn agent_key(&self, uuid: Uuid) -> Result<Option<(String, String)>, StoreError> {
        let stmt = Stmt::new(
            "SELECT serial, spki FROM agent_certs WHERE uuid = $1 AND revoked_at IS NULL AND spki IS NOT NULL
             ORDER BY issued_at DESC, serial LIMIT 1",
        )
        .text(uuid.to_string());
        self.fetch_optional(stmt, |r| Ok((r.string(0)?, r.string(1)?))).await
    }

    /// Records a certificate a root reissued (on a move).
    pub async fn add_agent_cert(&self, cert: &super::NewAgentCert) -> Result<(), StoreError> {
        self.execute(super::agents::insert_agent_cert(cert)).await.map(drop)
    }

    /// The signing key (hex) silo `name` was registered with. Root.
    pub async fn silo_signing_key(&self, name: &str) -> Result<Option<String>, StoreError> {
        let stmt = Stmt::new("SELECT signing_key FROM silos WHERE name = $1").str(name);
        Ok(self.fetch_optional(stmt, |r| r.text(0)).await?.flatten())
    }

    /// Records a move, replacing an earlier one of the same machine, and gives the machine to
    /// the silo it goes to. Root.
    pub async fn put_move(&self, record: &MoveRecord) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.execute(Stmt::new("DELETE FROM silo_moves WHERE uuid = $1").text(record.uuid.to_string())).await?;
        let insert = Stmt::new(
            "INSERT INTO silo_moves (id, uuid, from_silo, to_silo, old_serial, serial, certificate, order_payload,
                                     order_signature, created_at, confirmed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL)",
        )
        .str(&record.id)
        .text(record.uuid.to_string())
        .str(&record.from_silo)
        .str(&record.to_silo)
        .text(record.old_serial.clone())
        .str(&record.serial)
        .str(&record.certificate)
        .str(&record.order_payload)
        .str(&record.order_signature)
        .time(record.created_at);
        tx.execute(insert).await?;
        tx.execute(
            Stmt::new(
                "INSERT INTO silo_assignments (uuid, silo, assigned_at) VALUES ($1, $2, $3)
                 ON CONFLICT (uuid) DO UPDATE SET silo = $2, assigned_at = $3",
            )
            .text(record.uuid.to_string())
            .str(&record.to_silo)
            .time(record.created_at),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The moves out of silo `from`: those not confirmed yet, and those confirmed since `since`
    /// (so the silo forgets those clients), at most [`MAX_MOVES`]. Root.
    pub async fn moves_from(&self, from: &str, since: OffsetDateTime) -> Result<Vec<MoveRecord>, StoreError> {
        let sql = moves!(
            " WHERE from_silo = $1 AND (confirmed_at IS NULL OR confirmed_at >= $2) ORDER BY created_at, id LIMIT $3"
        );
        self.fetch_all(Stmt::new(sql).str(from).time(since).int(MAX_MOVES), move_row).await
    }

    /// Machine `uuid`'s move, if one was ordered. Root.
    pub async fn move_of(&self, uuid: Uuid) -> Result<Option<MoveRecord>, StoreError> {
        let sql = moves!(" WHERE uuid = $1");
        self.fetch_optional(Stmt::new(sql).text(uuid.to_string()), move_row).await
    }

    /// Silo `to` says it took over the client of move `id`: the move is confirmed (once), and
    /// the machine's old certificate revoked, in one transaction. The move, when it was one to
    /// that silo and not confirmed before. Root.
    pub async fn confirm_move(
        &self,
        id: &str,
        to: &str,
        now: OffsetDateTime,
    ) -> Result<Option<MoveRecord>, StoreError> {
        let mut tx = self.begin().await?;
        let stmt = Stmt::new(
            "UPDATE silo_moves SET confirmed_at = $3 WHERE id = $1 AND to_silo = $2 AND confirmed_at IS NULL",
        )
        .str(id)
        .str(to)
        .time(now);
        if tx.execute(stmt).await? == 0 {
            return Ok(None);
        }
        let sql = moves!(" WHERE id = $1");
        let Some(done) = tx.fetch_optional(Stmt::new(sql).str(id), move_row).await? else { return Ok(None) };
        if let Some(old) = &done.old_serial {
            let revoke = Stmt::new(
                "UPDATE agent_certs SET revoked_at = $2, revoked_reason = $3 WHERE serial = $1 AND revoked_at IS NULL",
            )
            .str(old)
            .time(now)
            .text(format!("moved to silo {}", done.to_silo));
            tx.execute(revoke).await?;
        }
        tx.commit().await?;
        Ok(Some(done))
    }

    /// What this maintenance silo holds of client `uuid`: the newest `max_reports` reports and
    /// the newest `max_changes` changes of its meter (both oldest first).
    pub async fn client_history(
        &self,
        uuid: Uuid,
        max_reports: i64,
        max_changes: i64,
    ) -> Result<ClientHistory, StoreError> {
        let agent = self.agent(uuid).await?;
        let health = self.health(uuid).await?;
        let changes = Stmt::new(
            "SELECT id, uuid, at, health, previous, reasons FROM health_changes WHERE uuid = $1
             ORDER BY at DESC, id DESC LIMIT $2",
        )
        .text(uuid.to_string())
        .int(max_changes);
        let mut changes = self.fetch_all(changes, super::health::change_row).await?;
        changes.reverse();
        let reports = Stmt::new(
            "SELECT uuid, seq, taken_at, received_at, report FROM telemetry WHERE uuid = $1
             ORDER BY seq DESC LIMIT $2",
        )
        .text(uuid.to_string())
        .int(max_reports);
        let mut reports = self.fetch_all(reports, super::agents::telemetry_row).await?;
        reports.reverse();
        Ok(ClientHistory { agent, health, changes, reports })
    }

    /// Takes in a client's history from the silo it came from (`from`, move `move_id`), in one
    /// transaction: reports it does not have, the changes of its meter, its meter (unless this
    /// silo rated it since), the agent's description (unless it said hello here already). The
    /// client is marked as moved in, to be reported to the root. False when this move was
    /// imported before (nothing is written twice).
    pub async fn import_client(
        &self,
        history: &ClientHistory,
        uuid: Uuid,
        from: &str,
        move_id: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let claimed = tx
            .execute(
                Stmt::new(
                    "UPDATE silo_clients SET moved_from = $2, move_id = $3, move_reported_at = NULL
                     WHERE uuid = $1 AND (move_id IS NULL OR move_id <> $3)",
                )
                .text(uuid.to_string())
                .str(from)
                .str(move_id),
            )
            .await?;
        if claimed == 0 {
            return Ok(false);
        }
        for report in &history.reports {
            tx.execute(
                Stmt::new(
                    "INSERT INTO telemetry (uuid, seq, taken_at, received_at, report) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (uuid, seq) DO NOTHING",
                )
                .text(uuid.to_string())
                .int(report.seq)
                .time(report.taken_at)
                .time(report.received_at)
                .str(&report.report),
            )
            .await?;
        }
        for change in &history.changes {
            tx.execute(
                Stmt::new(
                    "INSERT INTO health_changes (uuid, at, health, previous, reasons) VALUES ($1, $2, $3, $4, $5)",
                )
                .text(uuid.to_string())
                .time(change.at)
                .str(&change.health)
                .text(change.previous.clone())
                .str(&change.reasons),
            )
            .await?;
        }
        if let Some(health) = &history.health {
            tx.execute(
                Stmt::new(
                    "INSERT INTO health (uuid, health, reasons, since, evaluated_at) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (uuid) DO NOTHING",
                )
                .text(uuid.to_string())
                .str(&health.health)
                .str(&health.reasons)
                .time(health.since)
                .time(health.evaluated_at),
            )
            .await?;
        }
        if let Some(agent) = &history.agent {
            tx.execute(
                Stmt::new(
                    "INSERT INTO agents (uuid, hostname, os, agent_version, capabilities, remote_help, enrolled_at,
                                         last_report)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (uuid) DO UPDATE SET enrolled_at = $7,
                        last_report = COALESCE(agents.last_report, $8)",
                )
                .text(uuid.to_string())
                .str(&agent.hostname)
                .str(&agent.os)
                .str(&agent.agent_version)
                .int(i64::from(agent.capabilities))
                .bool(agent.remote_help)
                .time(agent.enrolled_at)
                .int(agent.last_report.map(super::millis)),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Moves this silo took over and has not told the root of yet: (UUID, move id).
    pub async fn unreported_moves(&self) -> Result<Vec<(Uuid, String)>, StoreError> {
        let stmt = Stmt::new(
            "SELECT uuid, move_id FROM silo_clients WHERE move_id IS NOT NULL AND move_reported_at IS NULL
             ORDER BY uuid LIMIT $1",
        )
        .int(MAX_MOVES);
        self.fetch_all(stmt, |r| Ok((r.string(0)?.parse().unwrap_or_default(), r.string(1)?))).await
    }

    /// The root has the report of move `move_id`.
    pub async fn move_reported(&self, move_id: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        let stmt = Stmt::new("UPDATE silo_clients SET move_reported_at = $2 WHERE move_id = $1").str(move_id).time(now);
        self.execute(stmt).await.map(drop)
    }

    /// Forgets a client that moved to another silo: its reports, its meter and every change of
    /// it, the agent's row and the client's. Whether it was here.
    pub async fn forget_client(&self, uuid: Uuid) -> Result<bool, StoreError> {
        let here = Stmt::new("SELECT uuid FROM silo_clients WHERE uuid = $1").text(uuid.to_string());
        if self.fetch_optional(here, |r| r.string(0)).await?.is_none() {
            return Ok(false);
        }
        let mut tx = self.begin().await?;
        for sql in [
            "DELETE FROM telemetry WHERE uuid = $1",
            "DELETE FROM health WHERE uuid = $1",
            "DELETE FROM health_changes WHERE uuid = $1",
            "DELETE FROM alert_state WHERE uuid = $1",
            "DELETE FROM agents WHERE uuid = $1",
        ] {
            tx.execute(Stmt::new(sql).text(uuid.to_string())).await?;
        }
        let found = tx.execute(Stmt::new("DELETE FROM silo_clients WHERE uuid = $1").text(uuid.to_string())).await?;
        tx.commit().await?;
        Ok(found > 0)
    }
}
