//! `GET /api/v1/devices/{uuid}/redirections?active=true&limit=N` (policy: view the machine's
//! audit, [`Action::ViewAudit`]): the AMT
//! redirection sessions (SOL, IDE-R, KVM) relayed to a device, newest first, as the relay tap
//! recorded them: who opened the relay (the token name), the AMT user, when, how long, how it
//! went, the bytes each way. With `active=true`, only the sessions open now: who holds the
//! device's SOL or IDE-R session, and since when, when the device refuses a second one.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use uuid::Uuid;

use super::admission::Caller;
use super::schemas::RedirectionSession;
use super::{bad_query, not_a_uuid, store_unavailable, Api, ApiPath};
use super::{ErrorBody, Refusals};
use crate::policy::Action;
use crate::store::MAX_REDIRECTIONS;

/// Sessions listed when the query does not say.
const DEFAULT_LIMIT: u32 = 100;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RedirectionsQuery {
    /// Only the sessions open now.
    active: Option<bool>,
    /// Sessions listed (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/redirections",
    tag = "devices",
    summary = "The AMT redirection sessions relayed to the device, newest first",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID"), RedirectionsQuery),
    responses(
        (status = 200, description = "the sessions, newest first", body = Vec<RedirectionSession>),
        (status = 400, description = "the UUID or the query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn list_redirections(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(uuid): ApiPath<String>,
    query: Result<Query<RedirectionsQuery>, QueryRejection>,
) -> Response {
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return not_a_uuid(&uuid);
    };
    let what = "listing redirection sessions";
    if let Some(refused) = caller.authorize_machine(&api, Action::ViewAudit, uuid, what).await {
        return refused;
    }
    let Ok(Query(query)) = query else {
        return bad_query(format!("active=true|false and limit=N (1 to {MAX_REDIRECTIONS})"));
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_REDIRECTIONS).contains(&limit) {
        return bad_query(format!("limit=1 to {MAX_REDIRECTIONS}, not {limit}"));
    }
    match api.shared.store.redirections_for(uuid, query.active.unwrap_or(false), limit).await {
        Ok(sessions) => Json(sessions.into_iter().map(RedirectionSession::from).collect::<Vec<_>>()).into_response(),
        Err(err) => store_unavailable(err),
    }
}
