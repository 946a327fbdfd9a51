//! Support actions and messages to PC users (`docs/actions.md`): `support_actions` (each action,
//! its signed payload as sent, where it is in its life cycle and its result), `support_messages`
//! (each message as its sender wrote it) and `message_deliveries` (the signed copy for each
//! machine, and when it was sent, received and read).
//!
//! The signed payloads are kept as they were signed, so that any gateway of a fleet delivers the
//! same bytes; the agent verifies them, so a changed row is refused on the PC, not trusted here.
//! What it does not do: sign, decide who may send (`policy`), or deliver (`agents::session`).

use time::OffsetDateTime;
use uuid::Uuid;

use super::{Cols, Stmt, Store, StoreError};

/// Actions or messages a listing returns at most, and a delivery round sends at most.
pub const MAX_SUPPORT_ROWS: i64 = 500;
/// Actions, or messages, sent to one agent in one delivery round (the rest follow in the next).
pub const DELIVERY_BATCH: i64 = 32;

/// Where an action is: `pending` (not yet sent), `sent`, `expired` (never reached the PC in
/// time), or the agent's result (`completed`, `timed_out`, `failed`, `shown`, `refused_…`).
pub const STATES_OPEN: [&str; 2] = ["pending", "sent"];

/// A new action, signed.
#[derive(Debug, Clone)]
pub struct NewSupportAction {
    pub id: Uuid,
    pub uuid: Uuid,
    pub subscriber_id: Option<i64>,
    pub kind: &'static str,
    pub body: String,
    pub timeout_secs: u32,
    pub issued_by_user_id: i64,
    pub issued_by: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// Base64 of the signed payload, and of its signature.
    pub payload: String,
    pub signature: String,
}

/// An action as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SupportAction {
    pub id: Uuid,
    pub uuid: Uuid,
    pub subscriber_id: Option<i64>,
    pub kind: String,
    pub body: String,
    pub timeout_secs: i64,
    pub issued_by_user_id: i64,
    pub issued_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// `pending`, `sent`, `expired`, or the result's status.
    pub state: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub result_at: Option<OffsetDateTime>,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
    pub output: Option<String>,
    pub output_truncated: bool,
    /// Why the agent refused it or it failed.
    pub result_text: Option<String>,
    /// The telemetry report the agent took after the action.
    pub report_seq: Option<i64>,
}

/// An agent's result for an action.
#[derive(Debug, Clone)]
pub struct ActionOutcome {
    pub state: &'static str,
    pub exit_code: i64,
    pub duration_ms: i64,
    pub output: String,
    pub output_truncated: bool,
    pub text: String,
    pub report_seq: Option<i64>,
    pub at: OffsetDateTime,
}

/// A signed payload waiting for its machine: (id, payload base64, signature base64).
pub type Deliverable = (Uuid, String, String);

/// A new message, and its signed copy for each machine.
#[derive(Debug, Clone)]
pub struct NewSupportMessage {
    pub id: Uuid,
    /// `machine`, `subscriber` or `gateway`.
    pub scope: &'static str,
    pub subscriber_id: Option<i64>,
    pub uuid: Option<Uuid>,
    pub from_user_id: i64,
    pub from_name: String,
    pub text: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// (machine, payload base64, signature base64).
    pub deliveries: Vec<(Uuid, String, String)>,
}

/// A message as stored, with its delivery counts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SupportMessage {
    pub id: Uuid,
    pub scope: String,
    pub subscriber_id: Option<i64>,
    pub uuid: Option<Uuid>,
    pub from_user_id: i64,
    pub from_name: String,
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Machines it is for, and how many of them have it, and how many PC users read it.
    pub machines: u64,
    pub sent: u64,
    pub received: u64,
    pub read: u64,
}

/// One machine's copy of a message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageDelivery {
    pub uuid: Uuid,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub received_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub read_at: Option<OffsetDateTime>,
}

macro_rules! action_columns {
    () => {
        "id, uuid, subscriber_id, kind, body, timeout_secs, issued_by_user_id, issued_by, created_at, expires_at, \
         state, sent_at, result_at, exit_code, duration_ms, output, output_truncated, result_text, report_seq"
    };
}

fn action_row(r: &dyn Cols) -> sqlx::Result<SupportAction> {
    let expires_at = r.time(9)?.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut state = r.string(10)?;
    // Never delivered (or never answered) in time: expired, whatever the row still says.
    if STATES_OPEN.contains(&state.as_str()) && expires_at <= OffsetDateTime::now_utc() {
        state = "expired".into();
    }
    Ok(SupportAction {
        id: r.string(0)?.parse().unwrap_or_default(),
        uuid: r.string(1)?.parse().unwrap_or_default(),
        subscriber_id: r.int(2)?,
        kind: r.string(3)?,
        body: r.string(4)?,
        timeout_secs: r.int(5)?.unwrap_or_default(),
        issued_by_user_id: r.int(6)?.unwrap_or_default(),
        issued_by: r.string(7)?,
        created_at: r.time(8)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        expires_at,
        state,
        sent_at: r.time(11)?,
        result_at: r.time(12)?,
        exit_code: r.int(13)?,
        duration_ms: r.int(14)?,
        output: r.text(15)?,
        output_truncated: r.bool(16)?,
        result_text: r.text(17)?,
        report_seq: r.int(18)?,
    })
}

/// A message's columns and its delivery counts, over `support_messages m LEFT JOIN
/// message_deliveries d`, grouped by the message.
macro_rules! message_select {
    ($where:literal, $tail:literal) => {
        concat!(
            "SELECT m.id, m.scope, m.subscriber_id, m.uuid, m.from_user_id, m.from_name, m.text, m.created_at,
                 m.expires_at, COUNT(d.uuid), COUNT(d.sent_at), COUNT(d.received_at), COUNT(d.read_at)
             FROM support_messages m LEFT JOIN message_deliveries d ON d.message_id = m.id WHERE ",
            $where,
            " GROUP BY m.id, m.scope, m.subscriber_id, m.uuid, m.from_user_id, m.from_name, m.text, m.created_at,
                 m.expires_at ",
            $tail
        )
    };
}

fn message_row(r: &dyn Cols) -> sqlx::Result<SupportMessage> {
    Ok(SupportMessage {
        id: r.string(0)?.parse().unwrap_or_default(),
        scope: r.string(1)?,
        subscriber_id: r.int(2)?,
        uuid: r.text(3)?.and_then(|u| u.parse().ok()),
        from_user_id: r.int(4)?.unwrap_or_default(),
        from_name: r.string(5)?,
        text: r.string(6)?,
        created_at: r.time(7)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        expires_at: r.time(8)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        machines: r.count(9)?,
        sent: r.count(10)?,
        received: r.count(11)?,
        read: r.count(12)?,
    })
}

fn deliverable(r: &dyn Cols) -> sqlx::Result<Deliverable> {
    Ok((r.string(0)?.parse().unwrap_or_default(), r.string(1)?, r.string(2)?))
}

impl Store {
    pub async fn create_support_action(&self, action: &NewSupportAction) -> Result<(), StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO support_actions (id, uuid, subscriber_id, kind, body, timeout_secs, issued_by_user_id, issued_by,
                 created_at, expires_at, payload, signature, state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending')",
        )
        .text(action.id.to_string())
        .text(action.uuid.to_string())
        .int(action.subscriber_id)
        .str(action.kind)
        .str(&action.body)
        .int(i64::from(action.timeout_secs))
        .int(action.issued_by_user_id)
        .str(&action.issued_by)
        .time(action.created_at)
        .time(action.expires_at)
        .str(&action.payload)
        .str(&action.signature);
        self.execute(stmt).await.map(drop)
    }

    pub async fn support_action(&self, id: Uuid) -> Result<Option<SupportAction>, StoreError> {
        let sql = concat!("SELECT ", action_columns!(), " FROM support_actions WHERE id = $1");
        self.fetch_optional(Stmt::new(sql).text(id.to_string()), action_row).await
    }

    /// Machine `uuid`'s actions, newest first, at most [`MAX_SUPPORT_ROWS`].
    pub async fn support_actions(&self, uuid: Uuid) -> Result<Vec<SupportAction>, StoreError> {
        let sql = concat!(
            "SELECT ",
            action_columns!(),
            " FROM support_actions WHERE uuid = $1 ORDER BY created_at DESC, id LIMIT $2"
        );
        self.fetch_all(Stmt::new(sql).text(uuid.to_string()).int(MAX_SUPPORT_ROWS), action_row).await
    }

    /// Actions for machine `uuid` still to send (pending, or sent without a result: the agent
    /// answers a duplicate with the result it keeps), not expired at `now`, oldest first.
    pub async fn deliverable_actions(
        &self,
        uuid: Uuid,
        now: OffsetDateTime,
        resend: bool,
    ) -> Result<Vec<Deliverable>, StoreError> {
        macro_rules! actions {
            ($state:literal) => {
                concat!(
                    "SELECT id, payload, signature FROM support_actions WHERE uuid = $1 AND ",
                    $state,
                    " AND expires_at > $2 ORDER BY created_at, id LIMIT $3"
                )
            };
        }
        let stmt =
            Stmt::new(if resend { actions!("state IN ('pending', 'sent')") } else { actions!("state = 'pending'") })
                .text(uuid.to_string())
                .time(now)
                .int(DELIVERY_BATCH);
        self.fetch_all(stmt, deliverable).await
    }

    /// Actions still open (pending, or handed over without a result) and not expired at `now`
    /// for the machines a root gave to silo `silo`, oldest first, at most [`DELIVERY_BATCH`] × 10.
    pub async fn actions_for_silo(&self, silo: &str, now: OffsetDateTime) -> Result<Vec<Deliverable>, StoreError> {
        let stmt = Stmt::new(
            "SELECT a.id, a.payload, a.signature FROM support_actions a
                 JOIN silo_assignments s ON s.uuid = a.uuid
             WHERE s.silo = $1 AND a.state IN ('pending', 'sent') AND a.expires_at > $2
             ORDER BY a.created_at, a.id LIMIT $3",
        )
        .str(silo)
        .time(now)
        .int(DELIVERY_BATCH * 10);
        self.fetch_all(stmt, deliverable).await
    }

    /// The results of actions recorded since `since` (a maintenance silo's, for its root), oldest
    /// first, at most `limit`: each with its machine and what the agent said.
    pub async fn action_results_since(
        &self,
        since: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<SupportAction>, StoreError> {
        let sql = concat!(
            "SELECT ",
            action_columns!(),
            " FROM support_actions WHERE result_at > $1 ORDER BY result_at, id LIMIT $2"
        );
        self.fetch_all(Stmt::new(sql).time(since).int(limit), action_row).await
    }

    /// Records that action `id` went to its agent at `now`; whether this was the first time.
    pub async fn mark_action_sent(&self, id: Uuid, now: OffsetDateTime) -> Result<bool, StoreError> {
        let stmt =
            Stmt::new("UPDATE support_actions SET state = 'sent', sent_at = $2 WHERE id = $1 AND state = 'pending'")
                .text(id.to_string())
                .time(now);
        Ok(self.execute(stmt).await? > 0)
    }

    /// Machine `uuid`'s actions that were never answered before their expiry: `expired`.
    pub async fn expire_support_actions(&self, uuid: Uuid, now: OffsetDateTime) -> Result<u64, StoreError> {
        let stmt = Stmt::new(
            "UPDATE support_actions SET state = 'expired'
             WHERE uuid = $1 AND state IN ('pending', 'sent') AND expires_at <= $2",
        )
        .text(uuid.to_string())
        .time(now);
        self.execute(stmt).await
    }

    /// Records machine `uuid`'s result for action `id`, if the action is that machine's and
    /// still open (the first result stands). The action as now stored, or `None` when nothing
    /// was recorded.
    pub async fn record_action_outcome(
        &self,
        id: Uuid,
        uuid: Uuid,
        outcome: &ActionOutcome,
    ) -> Result<Option<SupportAction>, StoreError> {
        let stmt = Stmt::new(
            "UPDATE support_actions SET state = $3, result_at = $4, exit_code = $5, duration_ms = $6, output = $7,
                 output_truncated = $8, result_text = $9, report_seq = $10, sent_at = COALESCE(sent_at, $4)
             WHERE id = $1 AND uuid = $2 AND state IN ('pending', 'sent')",
        )
        .text(id.to_string())
        .text(uuid.to_string())
        .str(outcome.state)
        .time(outcome.at)
        .int(outcome.exit_code)
        .int(outcome.duration_ms)
        .str(&outcome.output)
        .bool(outcome.output_truncated)
        .str(&outcome.text)
        .int(outcome.report_seq);
        if self.execute(stmt).await? == 0 {
            return Ok(None);
        }
        self.support_action(id).await
    }

    /// Stores a message and its signed copy for each machine, all or nothing.
    pub async fn create_support_message(&self, message: &NewSupportMessage) -> Result<(), StoreError> {
        let mut stmts = vec![Stmt::new(
            "INSERT INTO support_messages (id, scope, subscriber_id, uuid, from_user_id, from_name, text, created_at,
                 expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .text(message.id.to_string())
        .str(message.scope)
        .int(message.subscriber_id)
        .text(message.uuid.map(|u| u.to_string()))
        .int(message.from_user_id)
        .str(&message.from_name)
        .str(&message.text)
        .time(message.created_at)
        .time(message.expires_at)];
        for (uuid, payload, signature) in &message.deliveries {
            stmts.push(
                Stmt::new(
                    "INSERT INTO message_deliveries (message_id, uuid, payload, signature) VALUES ($1, $2, $3, $4)",
                )
                .text(message.id.to_string())
                .text(uuid.to_string())
                .str(payload)
                .str(signature),
            );
        }
        self.execute_all(&stmts).await
    }

    pub async fn support_message(&self, id: Uuid) -> Result<Option<SupportMessage>, StoreError> {
        let sql = message_select!("m.id = $1", "");
        self.fetch_optional(Stmt::new(sql).text(id.to_string()), message_row).await
    }

    /// Messages newest first, at most [`MAX_SUPPORT_ROWS`]: all of them (`from_user: None`), or
    /// those user `from_user` sent.
    pub async fn support_messages(&self, from_user: Option<i64>) -> Result<Vec<SupportMessage>, StoreError> {
        let sql = message_select!("$1 IS NULL OR m.from_user_id = $1", "ORDER BY m.created_at DESC, m.id LIMIT $2");
        self.fetch_all(Stmt::new(sql).int(from_user).int(MAX_SUPPORT_ROWS), message_row).await
    }

    /// Where message `id` is on each machine, by UUID, at most `limit` machines (a broadcast is
    /// counted whole by [`Store::support_message`]).
    pub async fn message_deliveries(&self, id: Uuid, limit: i64) -> Result<Vec<MessageDelivery>, StoreError> {
        let stmt = Stmt::new(
            "SELECT uuid, sent_at, received_at, read_at FROM message_deliveries WHERE message_id = $1
             ORDER BY uuid LIMIT $2",
        )
        .text(id.to_string())
        .int(limit.clamp(0, 100_000));
        self.fetch_all(stmt, |r| {
            Ok(MessageDelivery {
                uuid: r.string(0)?.parse().unwrap_or_default(),
                sent_at: r.time(1)?,
                received_at: r.time(2)?,
                read_at: r.time(3)?,
            })
        })
        .await
    }

    /// Messages for machine `uuid` it has not said it received, not expired at `now`, oldest
    /// first.
    pub async fn deliverable_messages(
        &self,
        uuid: Uuid,
        now: OffsetDateTime,
        resend: bool,
    ) -> Result<Vec<Deliverable>, StoreError> {
        macro_rules! messages {
            ($unsent:literal) => {
                concat!(
                    "SELECT d.message_id, d.payload, d.signature FROM message_deliveries d
                     JOIN support_messages m ON m.id = d.message_id
                     WHERE d.uuid = $1 AND d.received_at IS NULL",
                    $unsent,
                    " AND m.expires_at > $2 ORDER BY m.created_at, m.id LIMIT $3"
                )
            };
        }
        let stmt = Stmt::new(if resend { messages!("") } else { messages!(" AND d.sent_at IS NULL") })
            .text(uuid.to_string())
            .time(now)
            .int(DELIVERY_BATCH);
        self.fetch_all(stmt, deliverable).await
    }

    /// Records that message `id` went to machine `uuid` at `now` (the first time counts).
    pub async fn mark_message_sent(&self, id: Uuid, uuid: Uuid, now: OffsetDateTime) -> Result<(), StoreError> {
        let stmt = Stmt::new(
            "UPDATE message_deliveries SET sent_at = COALESCE(sent_at, $3) WHERE message_id = $1 AND uuid = $2",
        )
        .text(id.to_string())
        .text(uuid.to_string())
        .time(now);
        self.execute(stmt).await.map(drop)
    }

    /// Records what machine `uuid` says of message `id`: received, or read (which implies
    /// received). The first time of each counts. Whether the machine has that message.
    pub async fn record_message_state(
        &self,
        id: Uuid,
        uuid: Uuid,
        read: bool,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "UPDATE message_deliveries SET sent_at = COALESCE(sent_at, $3), received_at = COALESCE(received_at, $3),
                 read_at = CASE WHEN $4 THEN COALESCE(read_at, $3) ELSE read_at END
             WHERE message_id = $1 AND uuid = $2",
        )
        .text(id.to_string())
        .text(uuid.to_string())
        .time(now)
        .bool(read);
        Ok(self.execute(stmt).await? > 0)
    }

    /// The enrolled machines a broadcast goes to: a subscriber's, or every one (`None`).
    pub async fn broadcast_machines(&self, subscriber_id: Option<i64>) -> Result<Vec<Uuid>, StoreError> {
        let stmt = Stmt::new("SELECT uuid FROM machines WHERE $1 IS NULL OR subscriber_id = $1 ORDER BY uuid")
            .int(subscriber_id);
        self.fetch_all(stmt, |r| Ok(r.string(0)?.parse().unwrap_or_default())).await
    }
}
