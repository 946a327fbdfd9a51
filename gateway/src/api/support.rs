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
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use protocols::tap::ActionKind;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;
use uuid::Uuid;

use super::admission::Caller;
use super::schemas::{Delivery, Message, SupportActionView};
use super::{error, store_unavailable, Api, ApiPath, ErrorBody, Refusals, BAD_REQUEST};
use crate::policy::{Action, Resource};
use crate::support::{self, ActionRequest, MessageTarget, Sender, SupportError};

/// The answer for a support error, with its code: 400 for what the request says (empty, too
/// long, out of range), 409 for what the target is (no machines, too many), 500 for the store
/// or the gateway's own failure.
fn refused(err: SupportError) -> Response {
    match err {
        SupportError::Store(err) => store_unavailable(err),
        err @ SupportError::Internal(_) => error(StatusCode::INTERNAL_SERVER_ERROR, err.code(), &err),
        err @ (SupportError::NoMachines | SupportError::TooMany(_)) => error(StatusCode::CONFLICT, err.code(), &err),
        other => error(StatusCode::BAD_REQUEST, other.code(), &other),
    }
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
    /// The script or the instructions (not blank, at most 32 KiB).
    #[schema(max_length = 32768, pattern = r"[\S\x1c-\x1f]")]
    body: String,
    /// A script's timeout in seconds (default 300, at most 3600; the PC's policy may cut it).
    #[schema(minimum = 1, maximum = 3600)]
    #[serde(default, deserialize_with = "super::input::opt_integer")]
    timeout_secs: Option<u32>,
    /// Seconds the action waits for the PC to come online (default a day, at least 10, at most
    /// a week).
    #[schema(minimum = 10, maximum = 604800)]
    #[serde(default, deserialize_with = "super::input::opt_integer")]
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
        (status = 201, description = "the action, signed and waiting for the agent (`state`: pending)", body = SupportActionView),
        (status = 400, description = "the UUID or the body is not what this endpoint takes: empty, too long, or a time out of range (`code` says which)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn create_action(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(uuid): ApiPath<Uuid>,
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
        Ok(action) => (StatusCode::CREATED, Json(SupportActionView::from(action))).into_response(),
        Err(err) => refused(err),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/support-actions",
    tag = "support",
    summary = "A machine's support actions and where each is (pending, sent, its result), newest first",
    params(("uuid" = Uuid, Path, description = "the machine's UUID")),
    responses(
        (status = 200, description = "the actions, newest first", body = Vec<SupportActionView>),
        (status = 400, description = "the UUID is not one", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn list_actions(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(uuid): ApiPath<Uuid>,
) -> Response {
    if let Some(refusal) =
        caller.authorize_machine(&api, Action::ViewMachine, uuid, "reading a machine's support actions").await
    {
        return refusal;
    }
    match api.shared.store.support_actions(uuid).await {
        Ok(actions) => Json(actions.into_iter().map(SupportActionView::from).collect::<Vec<_>>()).into_response(),
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
        (status = 200, description = "the action", body = SupportActionView),
        (status = 400, description = "the id is not a UUID", body = ErrorBody),
        (status = 404, description = "no such action (`no_such_action`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn show_action(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<Uuid>,
) -> Response {
    let action = match api.shared.store.support_action(id).await {
        Ok(Some(action)) => action,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no_such_action", format!("no support action {id}")),
        Err(err) => return store_unavailable(err),
    };
    let resource = Resource::Machine { uuid: action.uuid, subscriber_id: action.subscriber_id };
    if let Some(refusal) = caller.authorize(&api, Action::ViewMachine, resource, "reading a support action") {
        return refusal;
    }
    Json(SupportActionView::from(action)).into_response()
}

/// What `POST /api/v1/messages` takes (described for OpenAPI by [`MessageRequest`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MessageBody {
    /// The text shown to the PC's user (at most 4096 bytes).
    text: String,
    /// One machine...
    #[serde(default, deserialize_with = "super::input::present")]
    machine: Option<Uuid>,
    /// ...or every machine of a subscriber...
    #[serde(default, deserialize_with = "super::input::present_integer")]
    subscriber: Option<i64>,
    /// ...or every machine of the gateway (operators).
    #[serde(default)]
    all: bool,
    /// Seconds the message waits for offline PCs (default a day, at most a week).
    #[serde(default, deserialize_with = "super::input::present_integer")]
    expires_in_secs: Option<u32>,
}

#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "support",
    summary = "A signed message for the users of one machine, of a subscriber's machines, or of all machines",
    request_body = MessageRequest,
    responses(
        (status = 201, description = "the message, with how many machines it is for", body = Message),
        (status = 400, description = "no single target, the text empty or too long, or the expiry out of range (`code` says which)", body = ErrorBody),
        (status = 409, description = "the target has no enrolled machines, or too many (`no_machines`, `too_many_machines`)", body = ErrorBody),
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
                BAD_REQUEST,
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
        Ok(message) => (StatusCode::CREATED, Json(Message::from(message))).into_response(),
        Err(err) => refused(err),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/messages",
    tag = "support",
    summary = "The messages the caller sent (operators: every message), newest first, with delivery counts",
    responses((status = 200, description = "the messages", body = Vec<Message>), Refusals),
    security(("token" = []))
)]
pub(super) async fn list_messages(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    let from = (!caller.is_operator()).then_some(caller.principal.user_id);
    match api.shared.store.support_messages(from).await {
        Ok(messages) => Json(messages.into_iter().map(Message::from).collect::<Vec<_>>()).into_response(),
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
        (status = 200, description = "the message, its counts, and `deliveries` (at most 10,000 machines)", body = MessageShown),
        (status = 400, description = "the id is not a UUID", body = ErrorBody),
        (status = 404, description = "no such message (`no_such_message`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn show_message(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<Uuid>,
) -> Response {
    let store = &api.shared.store;
    let message = match store.support_message(id).await {
        Ok(Some(message)) => message,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no_such_message", format!("no message {id}")),
        Err(err) => return store_unavailable(err),
    };
    if !caller.is_operator() && message.from_user_id != caller.principal.user_id {
        return caller.refusal(&api, crate::policy::Denied::NotRelated, "reading another user's message");
    }
    match store.message_deliveries(id, 10_000).await {
        Ok(deliveries) => Json(MessageShown {
            message: message.into(),
            deliveries: deliveries.into_iter().map(Delivery::from).collect(),
        })
        .into_response(),
        Err(err) => store_unavailable(err),
    }
}

/// A message and each machine's copy of it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MessageShown {
    message: Message,
    deliveries: Vec<Delivery>,
}

/// [`MessageBody`] as OpenAPI says it: the text and exactly one target, `machine`,
/// `subscriber` or `"all": true` (a derive cannot say "exactly one").
pub(super) struct MessageRequest;

impl utoipa::PartialSchema for MessageRequest {
    fn schema() -> RefOr<Schema> {
        let text = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("The text shown to the PC's user (not blank, at most 4096 bytes)."))
                .max_length(Some(4096))
                .pattern(Some(r"[\S\x1c-\x1f]"))
        };
        let expires = || {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .description(Some(
                    "Seconds the message waits for offline PCs (default a day, at least 10, at most a week).",
                ))
                .minimum(Some(10))
                .maximum(Some(604_800))
        };
        let only = |value: bool| ObjectBuilder::new().schema_type(Type::Boolean).enum_values(Some([value]));
        let variant = |target: &str, schema: ObjectBuilder, description: &str, all: Option<ObjectBuilder>| {
            let mut object = ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(description))
                .property("text", text())
                .required("text")
                .property(target, schema)
                .required(target)
                .property("expires_in_secs", expires())
                .additional_properties(Some(AdditionalProperties::FreeForm(false)));
            if let Some(all) = all {
                object = object.property("all", all);
            }
            object
        };
        let machine =
            ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)));
        let subscriber =
            ObjectBuilder::new().schema_type(Type::Integer).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)));
        OneOfBuilder::new()
            .item(variant("machine", machine, "To one machine.", Some(only(false))))
            .item(variant("subscriber", subscriber, "To every machine of a subscriber (its owner).", Some(only(false))))
            .item(variant("all", only(true), "To every machine of the gateway (operators).", None))
            .into()
    }
}

impl ToSchema for MessageRequest {}
