//! `GET /api/v1/devices/{uuid}/redirections?active=true&limit=N` (policy: view the machine's
//! audit, [`Action::ViewAudit`]): the AMT
//! redirection sessions (SOL, IDE-R, KVM) relayed to a device, newest first, as the relay tap
//! recorded them: who opened the relay (the token name), the AMT user, when, how long, how it
//! went, the bytes each way. With `active=true`, only the sessions open now: who holds the
//! device's SOL or IDE-R session, and since when, when the device refuses a second one.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use uuid::Uuid;

use super::admission::Caller;
use super::{error, store_unavailable, Api};
use super::{ErrorBody, Refusals};
use crate::policy::Action;
use crate::store::MAX_REDIRECTIONS;

/// Sessions listed when the query does not say.
const DEFAULT_LIMIT: u32 = 100;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RedirectionsQuery {
    active: Option<bool>,
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/redirections",
    tag = "devices",
    summary = "The AMT redirection sessions relayed to the device, newest first",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID"), RedirectionsQuery),
    responses(
        (status = 200, description = "done"),
        (status = 400, description = "the body or query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn list_redirections(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
    query: Result<Query<RedirectionsQuery>, QueryRejection>,
) -> Response {
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return error(StatusCode::BAD_REQUEST, format!("{uuid} is not a UUID"));
    };
    let what = "listing redirection sessions";
    if let Some(refused) = caller.authorize_machine(&api, Action::ViewAudit, uuid, what).await {
        return refused;
    }
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "the query takes active=true|false and limit=N (1 to 1000)");
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_REDIRECTIONS).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, format!("limit must be 1 to {MAX_REDIRECTIONS}, not {limit}"));
    }
    match api.shared.store.redirections_for(uuid, query.active.unwrap_or(false), limit).await {
        Ok(sessions) => Json(sessions).into_response(),
        Err(err) => store_unavailable(err),
    }
}
