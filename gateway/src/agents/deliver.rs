//! What an agent's session delivers and hears back beyond reports: signed support actions and
//! messages waiting in the store (sent on connection, when `support::nudge` says so, and every
//! `agents.delivery_poll_secs`), the agent's results and message states (recorded, audited, and
//! answered with a `Receipt` once durable), and relayed sessions, each on its own QUIC stream
//! (`ChannelOpen`, then `ChannelAccept` and raw bytes, or `ChannelRefuse` with the PC's reason).
//!
//! What it does not do: sign (`support`), or check anything the agent checks (signature,
//! target, expiry, replay, consent, local policy): the PC decides, and says why.

use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use protocols::tap::{self, ActionResult, Message, Signed, MAX_ACTION_OUTPUT, SIGNATURE_LEN};
use time::OffsetDateTime;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{info, warn};
use uuid::Uuid;

use crate::metrics::StoreTask;
use crate::registry::{OpenRefused, OpenRequest};
use crate::state::Shared;
use crate::store::{ActionOutcome, AuditAction, Deliverable};
use crate::support::audit;

/// Time for an agent to answer a `ChannelOpen`.
const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Relayed sessions open at once to one agent.
pub(super) const MAX_CHANNELS: usize = 16;

fn signed(row: &Deliverable) -> Option<Signed> {
    let engine = base64::engine::general_purpose::STANDARD;
    let payload = engine.decode(&row.1).ok()?;
    let signature: [u8; SIGNATURE_LEN] = engine.decode(&row.2).ok()?.try_into().ok()?;
    Some(Signed { payload: Bytes::from(payload), signature })
}

/// Whether what was sent before, and not answered yet, goes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resend {
    /// A new connection: the previous one may have lost what it carried.
    Yes,
    /// A nudge or a poll on a live connection (a QUIC stream loses nothing): only what is new.
    No,
}

/// The actions, then the messages, waiting for machine `uuid`, each recorded as sent (the
/// session writes them next; one not written is sent again at the next connection).
pub(super) async fn due(shared: &Shared, uuid: Uuid, resend: Resend) -> Vec<Message> {
    let store = &shared.store;
    let now = OffsetDateTime::now_utc();
    let resend = resend == Resend::Yes;
    let failed = |err: &dyn std::fmt::Display, what: &str| {
        shared.metrics.store_error(StoreTask::Delivery);
        warn!(%uuid, error = %err, "cannot {what}");
    };
    let mut out = Vec::new();
    if let Err(err) = store.expire_support_actions(uuid, now).await {
        failed(&err, "expire a machine's old support actions");
    }
    match store.deliverable_actions(uuid, now, resend).await {
        Ok(rows) => {
            for row in rows {
                let Some(action) = signed(&row) else {
                    warn!(%uuid, action = %row.0, "a stored support action does not decode; not sent");
                    continue;
                };
                match store.mark_action_sent(row.0, now).await {
                    Ok(true) => {
                        audit(
                            shared,
                            AuditAction::SupportActionSent,
                            None,
                            Some(uuid),
                            None,
                            format!("action {}", row.0),
                        )
                        .await
                    }
                    Ok(false) => {}
                    Err(err) => failed(&err, "record a support action as sent"),
                }
                out.push(Message::Action(action));
            }
        }
        Err(err) => failed(&err, "read a machine's support actions"),
    }
    match store.deliverable_messages(uuid, now, resend).await {
        Ok(rows) => {
            for row in rows {
                let Some(message) = signed(&row) else {
                    warn!(%uuid, message = %row.0, "a stored message does not decode; not sent");
                    continue;
                };
                if let Err(err) = store.mark_message_sent(row.0, uuid, now).await {
                    failed(&err, "record a message as sent");
                }
                out.push(Message::Message(message));
            }
        }
        Err(err) => failed(&err, "read a machine's messages"),
    }
    out
}

/// Records machine `uuid`'s result for an action and audits it; the `Receipt` to send once it is
/// durable (`None`: the store failed, and the agent sends the result again later).
pub(super) async fn action_result(shared: &Shared, uuid: Uuid, result: ActionResult) -> Option<Message> {
    let output = &result.output[..result.output.len().min(MAX_ACTION_OUTPUT)];
    let outcome = ActionOutcome {
        state: result.status.as_str(),
        exit_code: result.exit_code.into(),
        duration_ms: result.duration_ms.into(),
        output: String::from_utf8_lossy(output).into_owned(),
        output_truncated: result.output_truncated || result.output.len() > MAX_ACTION_OUTPUT,
        text: result.text.clone(),
        report_seq: result.report_seq.and_then(|s| i64::try_from(s).ok()),
        at: OffsetDateTime::now_utc(),
    };
    let recorded = match shared.store.record_action_outcome(result.id, uuid, &outcome).await {
        Ok(recorded) => recorded,
        Err(err) => {
            warn!(%uuid, action = %result.id, error = %err, "cannot record an action's result");
            return None;
        }
    };
    let refused = result.status.is_refusal();
    let detail = match (&recorded, refused) {
        (Some(_), false) => format!(
            "action {}: {}, exit code {}, {} ms{}",
            result.id,
            outcome.state,
            result.exit_code,
            result.duration_ms,
            if result.text.is_empty() { String::new() } else { format!(": {}", result.text) }
        ),
        (Some(_), true) => format!("action {} refused by the agent ({}): {}", result.id, outcome.state, result.text),
        // Nothing open here to record it on (an id this gateway never issued to this machine, a
        // payload the agent could not read): the PC's word is still audited.
        (None, _) => format!(
            "agent reported {} for action {} that has no open record for this machine: {}",
            outcome.state, result.id, result.text
        ),
    };
    let kind = if refused { AuditAction::SupportActionRefused } else { AuditAction::SupportActionResult };
    let subscriber_id = recorded.as_ref().and_then(|a| a.subscriber_id);
    audit(shared, kind, None, Some(uuid), subscriber_id, detail).await;
    info!(%uuid, action = %result.id, status = outcome.state, exit_code = result.exit_code, duration_ms = result.duration_ms, "support action result");
    Some(Message::Receipt { id: result.id })
}

/// Records what machine `uuid` says of message `id`; the `Receipt` once durable.
pub(super) async fn message_state(shared: &Shared, uuid: Uuid, id: Uuid, read: bool) -> Option<Message> {
    match shared.store.record_message_state(id, uuid, read, OffsetDateTime::now_utc()).await {
        Ok(known) => {
            if !known {
                info!(%uuid, message = %id, "agent acknowledged a message it was not sent; ignored");
            }
            Some(Message::Receipt { id })
        }
        Err(err) => {
            warn!(%uuid, message = %id, error = %err, "cannot record a message's state");
            None
        }
    }
}

/// Opens a relayed session to the agent's local `port` on a new QUIC stream, answering
/// `request` with a device stream, or the PC's refusal. The stream holds `permit` (its place
/// among [`MAX_CHANNELS`]) until it ends.
pub(super) fn open_channel(
    connection: quinn::Connection,
    uuid: Uuid,
    channel: u32,
    request: OpenRequest,
    permit: OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        let OpenRequest { port, originator, reply } = request;
        let requested_by = format!("a technician through the gateway (from {originator})");
        let opened = tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, open(&connection, channel, port, requested_by))
            .await
            .unwrap_or(Err(OpenRefused::Timeout));
        match opened {
            Ok((send, recv)) => {
                info!(%uuid, port, channel, %originator, "relayed session to the agent's PC opened");
                let stream = crate::bridge::bridge_holding(tokio::io::join(recv, send), port, permit);
                if reply.send(Ok(stream)).is_err() {
                    info!(%uuid, port, channel, "the technician left before the relayed session opened");
                }
            }
            Err(refused) => {
                info!(%uuid, port, channel, %originator, reason = %refused, "relayed session to the agent's PC refused");
                let _ = reply.send(Err(refused));
            }
        }
    });
}

async fn open(
    connection: &quinn::Connection,
    channel: u32,
    port: u16,
    requested_by: String,
) -> Result<(quinn::SendStream, quinn::RecvStream), OpenRefused> {
    let lost = |e: &dyn std::fmt::Display| OpenRefused::DeviceRefused(format!("the agent's connection: {e}"));
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| lost(&e))?;
    let mut frame = BytesMut::new();
    Message::ChannelOpen { channel, port, requested_by }.encode(&mut frame);
    send.write_all(&frame).await.map_err(|e| lost(&e))?;
    // Exactly one frame: the session's raw bytes follow it on the stream.
    let mut header = [0u8; tap::HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(|e| lost(&e))?;
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    let limits = tap::Limits { max_frame: 2048, ..tap::Limits::default() };
    if len > limits.max_frame {
        return Err(OpenRefused::DeviceRefused(format!("the agent answered with a {len}-byte frame")));
    }
    let mut whole = header.to_vec();
    whole.resize(tap::HEADER_LEN + len, 0);
    recv.read_exact(&mut whole[tap::HEADER_LEN..]).await.map_err(|e| lost(&e))?;
    match tap::decode(&whole, &limits) {
        Ok(Some((Message::ChannelAccept { channel: answered }, _))) if answered == channel => Ok((send, recv)),
        Ok(Some((Message::ChannelRefuse { reason, text, .. }, _))) => Err(match reason {
            tap::RefuseReason::RemoteHelpDisabled | tap::RefuseReason::PortNotAllowed => {
                OpenRefused::NotAllowed(format!("the PC refused: {text}"))
            }
            tap::RefuseReason::Busy => OpenRefused::TooManyChannels,
            tap::RefuseReason::ConnectFailed => OpenRefused::DeviceRefused(text),
        }),
        Ok(other) => Err(OpenRefused::DeviceRefused(format!("the agent answered the channel with {other:?}"))),
        Err(err) => Err(OpenRefused::DeviceRefused(format!("the agent's answer does not decode: {err}"))),
    }
}
