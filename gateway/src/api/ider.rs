//! The gateway serving a rescue image of its signed content to a device over IDE-R
//! (`crate::content_ider`), as [`Action::AttachRelay`] on the machine (scope `attach`):
//!
//! - `POST /api/v1/devices/{uuid}/ider` `{"content": NAME, "amt_user", "amt_password",
//!   "remember"}`: checks the item (a rescue image, its file the signed manifest's size and
//!   SHA-256), opens IDE-R with the device and enables it for the next boot, then answers 202
//!   with the status while serving goes on;
//! - `GET …/ider`: the status (bytes served, reads, state, why it ended);
//! - `DELETE …/ider`: stops serving, and answers the last status.
//!
//! The AMT account follows `amt`: given in the body, or the one remembered for the device. Starts
//! and stops are recorded as the device's actions (`ider.start`, `ider.stop`).
//!
//! What it does not do: serve (`crate::content_ider`), or set the boot and reset the PC (`amt`).

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tracing::info;

use super::amt::{Account, Call};
use super::relays::session_closed_refusal;
use super::{error, ErrorBody, Refusals, BAD_REQUEST};
use crate::content::ContentError;
use crate::content_ider::{self, IderServeError, IderStatus, Start};
use crate::policy::Action;
use crate::redirect;

/// How long the start waits for the device to enable IDE-R (a session open, authentication, the
/// IDE-R start and enable: a few steps of [`redirect::STEP_TIMEOUT`] at most).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stop waits for the device to end the session.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct IderBody {
    /// The content item to serve as the CD: a published rescue image (`tether content list`).
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    content: String,
    #[serde(flatten)]
    account: Account,
}

/// The failures of serving IDE-R, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only described: the handlers answer them.
pub(super) enum IderFailures {
    /// The UUID or the body is not what the endpoint takes (also a content name that is not one).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No content item of that name is published (`content_not_found`), the device is not
    /// connected (`not_connected`), or (GET, DELETE) the gateway serves it nothing (`no_ider`).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The item is not a rescue image (`not_rescue_image`), its file does not match its signed
    /// manifest (`content_damaged`), is larger than the cache keeps (`content_too_large`), the
    /// gateway already serves the device (`ider_running`), no AMT password was given and none is
    /// remembered (`amt_password_needed`), or the remembered one does not open here
    /// (`amt_password_unreadable`).
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The content store could not be read (`content_io`), or the store failed
    /// (`store_unavailable`).
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The device refused or failed the IDE-R session: its credentials, a session already open,
    /// redirection disabled (`ider_failed`), or the root could not give the item
    /// (`content_unavailable`, `content_refused`).
    #[response(status = 502)]
    BadGateway(ErrorBody),
    /// The gateway serves as many sessions as it may (`too_many_ider`), or too many items are
    /// being fetched (`busy`).
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// The device did not enable IDE-R in time (`timeout`).
    #[response(status = 504)]
    Timeout(ErrorBody),
}

/// The answer for an item or a session that cannot be served.
fn refusal(err: &IderServeError) -> Response {
    let (status, code) = match err {
        IderServeError::AlreadyServing { .. } => (StatusCode::CONFLICT, "ider_running"),
        IderServeError::TooMany(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_ider"),
        IderServeError::NotRescueImage { .. } => (StatusCode::CONFLICT, "not_rescue_image"),
        IderServeError::Damaged { .. } => (StatusCode::CONFLICT, "content_damaged"),
        IderServeError::Content(content) => match content {
            ContentError::BadName(_) => (StatusCode::BAD_REQUEST, BAD_REQUEST),
            ContentError::NotFound(_) => (StatusCode::NOT_FOUND, "content_not_found"),
            ContentError::TooLarge { .. } => (StatusCode::CONFLICT, "content_too_large"),
            ContentError::Unavailable { .. } => (StatusCode::BAD_GATEWAY, "content_unavailable"),
            ContentError::Refused { .. } => (StatusCode::BAD_GATEWAY, "content_refused"),
            ContentError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ContentError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "content_io"),
        },
    };
    error(status, code, err)
}

fn no_ider(call: &Call) -> Response {
    error(StatusCode::NOT_FOUND, "no_ider", format!("the gateway serves device {} nothing over IDE-R", call.uuid))
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/ider",
    tag = "amt",
    summary = "Serve a published rescue image to the device's CD over IDE-R, from the gateway",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    request_body = IderBody,
    responses(
        (status = 202, description = "IDE-R is enabled for the device's next boot and the image is served", body = IderStatus),
        IderFailures,
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn start(call: Call, body: Result<Json<IderBody>, JsonRejection>) -> Response {
    let body = body!(body);
    if let Some(refused) = call.authorize(Action::AttachRelay, "serving a rescue image over IDE-R").await {
        return refused;
    }
    if let Some(refused) = session_closed_refusal(&call.api, call.uuid).await {
        return refused;
    }
    let shared = &call.api.shared;
    let image = match content_ider::checked_image(&shared.content, &body.content).await {
        Ok(image) => image,
        Err(err) => {
            call.audit("ider.start", format!("content {}", body.content), "refused", Some(err.to_string())).await;
            return refusal(&err);
        }
    };
    let credentials = match call.credentials(&body.account).await {
        Ok(credentials) => credentials,
        Err(response) => return response,
    };
    let detail = format!("content {} sha256 {}", image.name, hex::encode(image.sha256));
    let start = Start {
        uuid: call.uuid,
        image,
        account: redirect::Account { username: credentials.user.clone(), password: credentials.password.clone() },
        technician: call.caller.name.clone(),
        originator: call.remote,
    };
    let (session, ready) = match call.api.ider.start(shared, start) {
        Ok(started) => started,
        Err(err) => {
            call.audit("ider.start", detail, "refused", Some(err.to_string())).await;
            return refusal(&err);
        }
    };
    match tokio::time::timeout(READY_TIMEOUT, ready).await {
        Ok(Ok(())) => {
            call.remember(&body.account, &credentials).await;
            call.audit("ider.start", detail, "ok", None).await;
            (StatusCode::ACCEPTED, Json(session.status())).into_response()
        }
        Ok(Err(_)) => {
            session.ended(STOP_TIMEOUT).await;
            let why = session.status().error.unwrap_or_else(|| "the IDE-R session ended".into());
            let message = format!("device {} did not take IDE-R from the gateway: {why}", call.uuid);
            call.audit("ider.start", detail, "failed", Some(message.clone())).await;
            error(StatusCode::BAD_GATEWAY, "ider_failed", message)
        }
        Err(_) => {
            session.stop();
            let message = format!("device {} did not enable IDE-R within {} s", call.uuid, READY_TIMEOUT.as_secs());
            call.audit("ider.start", detail, "failed", Some(message.clone())).await;
            error(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/ider",
    tag = "amt",
    summary = "What the gateway serves the device over IDE-R, and how far it got",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    responses(
        (status = 200, description = "the session, running or the last one ended", body = IderStatus),
        (status = 400, description = "the UUID is not one", body = ErrorBody),
        (status = 404, description = "the gateway serves the device nothing (`no_ider`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn status(call: Call) -> Response {
    if let Some(refused) = call.authorize(Action::AttachRelay, "watching IDE-R served by the gateway").await {
        return refused;
    }
    match call.api.ider.get(call.uuid) {
        Some(session) => Json(session.status()).into_response(),
        None => no_ider(&call),
    }
}

#[utoipa::path(
    delete,
    path = "/api/v1/devices/{uuid}/ider",
    tag = "amt",
    summary = "Stop serving the device over IDE-R",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    responses(
        (status = 200, description = "stopped (or it had ended): the last status", body = IderStatus),
        (status = 400, description = "the UUID is not one", body = ErrorBody),
        (status = 404, description = "the gateway serves the device nothing (`no_ider`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn stop(call: Call) -> Response {
    if let Some(refused) = call.authorize(Action::AttachRelay, "stopping IDE-R served by the gateway").await {
        return refused;
    }
    let Some(session) = call.api.ider.stop(call.uuid) else {
        return no_ider(&call);
    };
    session.ended(STOP_TIMEOUT).await;
    let status = session.status();
    info!(uuid = %call.uuid, bytes = status.bytes_served, "stopped serving IDE-R");
    call.audit("ider.stop", format!("content {} served {} bytes", status.content, status.bytes_served), "ok", None)
        .await;
    Json(status).into_response()
}
