//! The API of support actions and messages (`docs/actions.md`):
//!
//! | endpoint | policy |
//! |---|---|
//! | `POST /api/v1/devices/{uuid}/support-actions` | `SendSupport`: a signed script or instructions for the machine's agent |
//! | `GET /api/v1/devices/{uuid}/support-actions` | `ViewMachine`: the machine's actions and their life cycle, newest first |
//! | `GET /api/v1/support-actions/{id}` | `ViewMachine` of its machine |
//! | `POST /api/v1/messages` | `SendSupport` (one machine), `Broadcast` (a subscriber's machines: its owner; every machine: operators) |
//! | `GET /api/v1/messages` | the messages the caller sent (operators: all) |
//! | `GET /api/v1/messages/{id}` | its sender or an operator: who received and read it |
//!
//! What it does not do: sign or deliver (`support`, `agents`).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use protocols::tap::ActionKind;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::admission::Caller;
use super::{error, store_unavailable, Api, ErrorBody, Refusals};
use crate::policy::{Action, Resource};
use crate::support::{self, ActionRequest, MessageTarget, Sender, SupportError};

/// The answer for a support error: 400 with its code, or a 500 (the store, or the gateway's own).
fn refused(err: SupportError) -> Response {
    if let SupportError::Store(err) = err {
        return store_unavailable(err);
    }
    let status = match err {
        SupportError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    (status, Json(json!({ "error": err.to_string(), "code": err.code() }))).into_response()
}

async fn sender(api: &Api, caller: &Caller) -> Result<Sender, Response> {
    Sender::of(&api.shared, caller.principal.user_id).await.map_err(store_unavailable)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(super) enum ActionKindBody {
    Script,
    Instructions,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionBody {
    /// `script` (run by the agent with a timeout) or `instructions` (shown to the PC's user).
    kind: ActionKindBody,
    /// The script or the instructions (at most 32 KiB).
    body: String,
    /// A script's timeout in seconds (default 300, at most 3600; the PC's policy may cut it).
    timeout_secs: Option<u32>,
    /// Seconds the action waits for the PC to come online (default a day, at most a week).
    expires_in_secs: Option<u32>,
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/support-actions",
    tag = "support",
    summary = "Send a machine's agent a signed support action (a script, or instructions for the PC user)",
    params(("uuid" = Uuid, Path, description = "the machine's UUID")),
    request_body = ActionBody,
    responses(
        (status = 201, description = "the action, signed and waiting for the agent (`state`: pending)"),
        (status = 400, description = "the body is empty, too long, or a time is out of range", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn create_action(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<Uuid>,
    body: Result<Json<ActionBody>, JsonRejection>,
) -> Response {
    let machine = match api.shared.store.machine(uuid).await {
        Ok(machine) => machine,
        Err(err) => return store_unavailable(err),
    };
    let subscriber_id = machine.as_ref().map(|m| m.subscriber_id);
    if let Some(refusal) = caller.authorize(
        &api,
        Action::SendSupport,
        Resource::Machine { uuid, subscriber_id },
        "sending a support action",
    ) {
        return refusal;
    }
    let body = body!(body);
    let sender = match sender(&api, &caller).await {
        Ok(sender) => sender,
        Err(response) => return response,
    };
    let request = ActionRequest {
        kind: match body.kind {
            ActionKindBody::Script => ActionKind::Script,
            ActionKindBody::Instructions => ActionKind::Instructions,
        },
        body: body.body,
        timeout_secs: body.timeout_secs,
        expires_in_secs: body.expires_in_secs,
    };
    match support::create_action(&api.shared, &sender, uuid, subscriber_id, request).await {
        Ok(action) => (StatusCode::CREATED, Json(action)).into_response(),
        Err(err) => refused(err),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/support-actions",
    tag = "support",
    summary = "A machine's support actions and where each is (pending, sent, its result), newest first",
    params(("uuid" = Uuid, Path, description = "the machine's UUID")),
    responses((status = 200, description = "the actions"), Refusals),
    security(("token" = []))
)]
pub(super) async fn list_actions(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<Uuid>,
) -> Response {
    if let Some(refusal) =
        caller.authorize_machine(&api, Action::ViewMachine, uuid, "reading a machine's support actions").await
    {
        return refusal;
    }
    match api.shared.store.support_actions(uuid).await {
        Ok(actions) => Json(actions).into_response(),
        Err(err) => store_unavailable(err),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/support-actions/{id}",
    tag = "support",
    summary = "One support action: its life cycle and result (exit code, output, duration, or why it was refused)",
    params(("id" = Uuid, Path, description = "the action's id")),
    responses(
        (status = 200, description = "the action"),
        (status = 404, description = "no such action", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn show_action(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> Response {
    let action = match api.shared.store.support_action(id).await {
        Ok(Some(action)) => action,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no support action {id}")),
        Err(err) => return store_unavailable(err),
    };
    let resource = Resource::Machine { uuid: action.uuid, subscriber_id: action.subscriber_id };
    if let Some(refusal) = caller.authorize(&api, Action::ViewMachine, resource, "reading a support action") {
        return refusal;
    }
    Json(action).into_response()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MessageBody {
    /// The text shown to the PC's user (at most 4096 bytes).
    text: String,
    /// One machine...
    machine: Option<Uuid>,
    /// ...or every machine of a subscriber...
    subscriber: Option<i64>,
    /// ...or every machine of the gateway (operators).
    #[serde(default)]
    all: bool,
    /// Seconds the message waits for offline PCs (default a day, at most a week).
    expires_in_secs: Option<u32>,
}

#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "support",
    summary = "A signed message for the users of one machine, of a subscriber's machines, or of all machines",
    request_body = MessageBody,
    responses(
        (status = 201, description = "the message, with how many machines it is for"),
        (status = 400, description = "no single target, or the text is empty or too long", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn send_message(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<MessageBody>, JsonRejection>,
) -> Response {
    let body = body!(body);
    let (target, action, resource) = match (body.machine, body.subscriber, body.all) {
        (Some(uuid), None, false) => {
            let subscriber_id = match api.shared.store.machine(uuid).await {
                Ok(machine) => machine.map(|m| m.subscriber_id),
                Err(err) => return store_unavailable(err),
            };
            (
                MessageTarget::Machine { uuid, subscriber_id },
                Action::SendSupport,
                Resource::Machine { uuid, subscriber_id },
            )
        }
        (None, Some(id), false) => (MessageTarget::Subscriber(id), Action::Broadcast, Resource::Subscriber(id)),
        (None, None, true) => (MessageTarget::Gateway, Action::Broadcast, Resource::Gateway),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "say whom the message is for: exactly one of \"machine\", \"subscriber\" or \"all\": true",
            )
        }
    };
    if let Some(refusal) = caller.authorize(&api, action, resource, "sending a message") {
        return refusal;
    }
    let sender = match sender(&api, &caller).await {
        Ok(sender) => sender,
        Err(response) => return response,
    };
    match support::send_message(&api.shared, &sender, target, body.text, body.expires_in_secs).await {
        Ok(message) => (StatusCode::CREATED, Json(message)).into_response(),
        Err(err) => refused(err),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/messages",
    tag = "support",
    summary = "The messages the caller sent (operators: every message), newest first, with delivery counts",
    responses((status = 200, description = "the messages"), Refusals),
    security(("token" = []))
)]
pub(super) async fn list_messages(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    let from = (!caller.is_operator()).then_some(caller.principal.user_id);
    match api.shared.store.support_messages(from).await {
        Ok(messages) => Json(messages).into_response(),
        Err(err) => store_unavailable(err),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/messages/{id}",
    tag = "support",
    summary = "One message: how many machines received and read it, and each machine's delivery",
    params(("id" = Uuid, Path, description = "the message's id")),
    responses(
        (status = 200, description = "the message, its counts, and `deliveries` (at most 10,000 machines)"),
        (status = 404, description = "no such message", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn show_message(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> Response {
    let store = &api.shared.store;
    let message = match store.support_message(id).await {
        Ok(Some(message)) => message,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no message {id}")),
        Err(err) => return store_unavailable(err),
    };
    if !caller.is_operator() && message.from_user_id != caller.principal.user_id {
        return caller.refusal(&api, crate::policy::Denied::NotRelated, "reading another user's message");
    }
    match store.message_deliveries(id, 10_000).await {
        Ok(deliveries) => Json(json!({ "message": message, "deliveries": deliveries })).into_response(),
        Err(err) => store_unavailable(err),
    }
}
