//! Support actions and messages to PC users (`docs/actions.md`): made here, signed with the
//! gateway's Ed25519 key (the one that signs the agents' configuration, shared by a fleet), kept
//! in the store as signed, and delivered by the agent's session (`agents::deliver`).
//!
//! Every action and message is signed over exactly what the agent checks: an action's id, target
//! UUID, kind, issued-at, expiry, timeout, issuing user and body ([`ActionBody`]); a message's
//! id, target UUID, issued-at, expiry, sender and text ([`MessageBody`], one signed copy per
//! machine of a broadcast). The agent refuses what does not verify, so a row changed in the store
//! is refused on the PC.
//!
//! What it does not do: decide who may send (`policy`, asked by the API and the portal), or speak
//! to agents (`agents`).

use base64::Engine;
use bytes::BytesMut;
use protocols::tap::{ActionBody, ActionKind, MessageBody, SignDomain, MAX_ACTION_BODY, MAX_MESSAGE_TEXT};
use time::OffsetDateTime;
use tracing::{info, warn};
use uuid::Uuid;

use crate::metrics::TunnelKind;
use crate::registry::TunnelCommand;
use crate::state::Shared;
use crate::store::{
    AuditAction, NewAudit, NewSupportAction, NewSupportMessage, StoreError, SupportAction, SupportMessage,
};

/// A script's timeout when none is given, and the longest one.
pub const DEFAULT_TIMEOUT_SECS: u32 = 300;
pub const MAX_TIMEOUT_SECS: u32 = 3600;
/// How long an action or message waits for its machine when no expiry is given, and at most.
pub const DEFAULT_EXPIRY_SECS: u32 = 24 * 3600;
pub const MAX_EXPIRY_SECS: u32 = 7 * 24 * 3600;
/// The shortest expiry (a PC that is offline a moment still gets it).
pub const MIN_EXPIRY_SECS: u32 = 10;
/// Machines one broadcast reaches at most.
pub const MAX_BROADCAST: usize = 100_000;

/// Why an action or message was not made.
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error("the {0} is empty")]
    Empty(&'static str),
    #[error("the {what} is {len} bytes; at most {max} are sent")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("{what} must be between {min} and {max} seconds")]
    OutOfRange { what: &'static str, min: u32, max: u32 },
    #[error("the broadcast would reach {0} machines; at most {MAX_BROADCAST} at once")]
    TooMany(usize),
    #[error("there is no enrolled machine to send it to")]
    NoMachines,
    /// Something of the gateway's own failed (a signing task, a row that vanished once written).
    #[error("the gateway could not finish: {0}; see its log")]
    Internal(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SupportError {
    /// A stable code for API bodies.
    pub fn code(&self) -> &'static str {
        match self {
            SupportError::Empty(_) => "empty",
            SupportError::TooLong { .. } => "too_long",
            SupportError::OutOfRange { .. } => "out_of_range",
            SupportError::TooMany(_) => "too_many_machines",
            SupportError::NoMachines => "no_machines",
            SupportError::Internal(_) => "internal",
            SupportError::Store(_) => "store_unavailable",
        }
    }
}

/// Who sends: the user, and how the PC's user is shown it.
#[derive(Debug, Clone)]
pub struct Sender {
    pub user_id: i64,
    /// `NAME (user ID)`.
    pub name: String,
}

impl Sender {
    /// The sender as the store knows user `user_id`.
    pub async fn of(shared: &Shared, user_id: i64) -> Result<Sender, StoreError> {
        let username = shared.store.user(user_id).await?.map(|u| u.username).unwrap_or_else(|| "unknown".into());
        Ok(Sender { user_id, name: format!("{username} (user {user_id})") })
    }
}

/// What an action asks for, as a user wrote it.
#[derive(Debug, Clone)]
pub struct ActionRequest {
    pub kind: ActionKind,
    pub body: String,
    pub timeout_secs: Option<u32>,
    pub expires_in_secs: Option<u32>,
}

fn in_range(value: Option<u32>, default: u32, min: u32, max: u32, what: &'static str) -> Result<u32, SupportError> {
    let value = value.unwrap_or(default);
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(SupportError::OutOfRange { what, min, max })
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Makes, signs and stores an action for machine `uuid` (of `subscriber_id`), audits it, and
/// tells the agent's session here (if it is connected here) to deliver it.
pub async fn create_action(
    shared: &Shared,
    sender: &Sender,
    uuid: Uuid,
    subscriber_id: Option<i64>,
    request: ActionRequest,
) -> Result<SupportAction, SupportError> {
    if request.body.trim().is_empty() {
        return Err(SupportError::Empty(if request.kind == ActionKind::Script { "script" } else { "instructions" }));
    }
    if request.body.len() > MAX_ACTION_BODY {
        return Err(SupportError::TooLong { what: "body", len: request.body.len(), max: MAX_ACTION_BODY });
    }
    let timeout_secs = in_range(request.timeout_secs, DEFAULT_TIMEOUT_SECS, 1, MAX_TIMEOUT_SECS, "the timeout")?;
    let expires_in =
        in_range(request.expires_in_secs, DEFAULT_EXPIRY_SECS, MIN_EXPIRY_SECS, MAX_EXPIRY_SECS, "the expiry")?;
    // Whole seconds: what is signed is what is stored.
    let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let expires_at = now + time::Duration::seconds(expires_in.into());
    let id = Uuid::new_v4();
    let issued_by = issued_by(shared, sender).await?;
    let body = ActionBody {
        id,
        target: uuid,
        kind: request.kind,
        issued_at: now.unix_timestamp(),
        expires_at: expires_at.unix_timestamp(),
        timeout_secs,
        issued_by: issued_by.clone(),
        body: request.body,
    };
    let mut payload = BytesMut::new();
    body.encode(&mut payload);
    let signature = shared.agent_keys.sign(SignDomain::Action, &payload);
    let action = NewSupportAction {
        id,
        uuid,
        subscriber_id,
        kind: request.kind.as_str(),
        body: body.body,
        timeout_secs,
        issued_by_user_id: sender.user_id,
        issued_by,
        created_at: now,
        expires_at,
        payload: b64(&payload),
        signature: b64(&signature),
    };
    shared.store.create_support_action(&action).await?;
    audit(
        shared,
        AuditAction::SupportActionCreated,
        Some(sender.user_id),
        Some(uuid),
        subscriber_id,
        format!("{} {id}, timeout {timeout_secs}s, expires {expires_at}", action.kind),
    )
    .await;
    info!(%uuid, action = %id, kind = action.kind, user = %sender.name, "support action created and signed");
    nudge(shared, uuid);
    shared.store.support_action(id).await?.ok_or(SupportError::Internal("the stored action cannot be read back"))
}

/// Who an action says issued it (shown to the PC's user): the sender's name, or on a root,
/// whose machines are served by maintenance silos that keep no personal data, the sender's
/// opaque id (`support (user 0123abcd)`).
async fn issued_by(shared: &Shared, sender: &Sender) -> Result<String, SupportError> {
    if shared.silo.role() != crate::silo::maintenance::Role::Root {
        return Ok(sender.name.clone());
    }
    let opaque = shared.store.user_opaque_id(sender.user_id).await?.unwrap_or_default();
    Ok(format!("support (user {})", &opaque[..opaque.len().min(8)]))
}

/// Whom a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageTarget {
    Machine {
        uuid: Uuid,
        subscriber_id: Option<i64>,
    },
    /// Every machine of a subscriber.
    Subscriber(i64),
    /// Every enrolled machine of the gateway (of the fleet).
    Gateway,
}

/// Makes a message, signs a copy for each machine it is for, stores them, audits, and tells the
/// sessions here to deliver.
pub async fn send_message(
    shared: &Shared,
    sender: &Sender,
    target: MessageTarget,
    text: String,
    expires_in_secs: Option<u32>,
) -> Result<SupportMessage, SupportError> {
    if text.trim().is_empty() {
        return Err(SupportError::Empty("message"));
    }
    if text.len() > MAX_MESSAGE_TEXT {
        return Err(SupportError::TooLong { what: "message", len: text.len(), max: MAX_MESSAGE_TEXT });
    }
    let expires_in = in_range(expires_in_secs, DEFAULT_EXPIRY_SECS, MIN_EXPIRY_SECS, MAX_EXPIRY_SECS, "the expiry")?;
    let (scope, subscriber_id, single, machines) = match target {
        MessageTarget::Machine { uuid, subscriber_id } => ("machine", subscriber_id, Some(uuid), vec![uuid]),
        MessageTarget::Subscriber(id) => {
            ("subscriber", Some(id), None, shared.store.broadcast_machines(Some(id)).await?)
        }
        MessageTarget::Gateway => ("gateway", None, None, shared.store.broadcast_machines(None).await?),
    };
    if machines.is_empty() {
        return Err(SupportError::NoMachines);
    }
    if machines.len() > MAX_BROADCAST {
        return Err(SupportError::TooMany(machines.len()));
    }
    let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let expires_at = now + time::Duration::seconds(expires_in.into());
    let id = Uuid::new_v4();
    // One signature per machine (each copy names its target): off the runtime for a broadcast.
    let keys = std::sync::Arc::clone(&shared.agent_keys);
    let (from, body_text) = (sender.name.clone(), text.clone());
    let signed = tokio::task::spawn_blocking(move || {
        machines
            .into_iter()
            .map(|target| {
                let body = MessageBody {
                    id,
                    issued_at: now.unix_timestamp(),
                    expires_at: expires_at.unix_timestamp(),
                    target,
                    from: from.clone(),
                    text: body_text.clone(),
                };
                let mut payload = BytesMut::new();
                body.encode(&mut payload);
                let signature = keys.sign(SignDomain::Message, &payload);
                (target, b64(&payload), b64(&signature))
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|err| {
        tracing::error!(error = %err, "the task signing a message's copies failed");
        SupportError::Internal("signing the message failed")
    })?;
    let targets: Vec<Uuid> = signed.iter().map(|(uuid, _, _)| *uuid).collect();
    let message = NewSupportMessage {
        id,
        scope,
        subscriber_id,
        uuid: single,
        from_user_id: sender.user_id,
        from_name: sender.name.clone(),
        text,
        created_at: now,
        expires_at,
        deliveries: signed,
    };
    shared.store.create_support_message(&message).await?;
    audit(
        shared,
        AuditAction::MessageSent,
        Some(sender.user_id),
        single,
        subscriber_id,
        format!("message {id} to {scope} ({} machine(s)), expires {expires_at}", targets.len()),
    )
    .await;
    info!(message = %id, scope, machines = targets.len(), user = %sender.name, "message signed for each machine");
    for uuid in targets {
        nudge(shared, uuid);
    }
    shared.store.support_message(id).await?.ok_or(SupportError::Internal("the stored message cannot be read back"))
}

/// Tells machine `uuid`'s agent session, if it is held here, that something waits in the store.
/// Sessions elsewhere in a fleet look every `agents.delivery_poll_secs`.
pub fn nudge(shared: &Shared, uuid: Uuid) {
    if let Some(tunnel) = shared.registry.get(uuid, TunnelKind::Agent) {
        // A full queue: the session's next poll delivers it.
        let _ = tunnel.commands.try_send(TunnelCommand::Deliver);
    }
}

/// Appends an audit row; a failure is logged (the action itself stands).
pub async fn audit(
    shared: &Shared,
    action: AuditAction,
    actor_user_id: Option<i64>,
    machine_uuid: Option<Uuid>,
    subscriber_id: Option<i64>,
    detail: String,
) {
    let row = NewAudit { at: OffsetDateTime::now_utc(), actor_user_id, action, machine_uuid, subscriber_id, detail };
    if let Err(err) = shared.store.append_audit(&row).await {
        warn!(error = %err, action = action.as_str(), "cannot append an audit row");
    }
}
