//! The API of a machine's agent:
//!
//! | endpoint | policy |
//! |---|---|
//! | `GET /api/v1/devices/{uuid}/agent` | `ViewMachine`: the agent's hello, consent, connection, and its newest support parameters |
//! | `GET /api/v1/devices/{uuid}/telemetry` | `ViewMachine`: the reports of the last `hours` (default a week), newest first |
//! | `POST /api/v1/devices/{uuid}/agent/revoke` | `RevokeAgent` (operators): the machine's certificates are revoked and its connection cut |
//! | `GET /api/v1/devices/{uuid}/health` | `ViewMachine`: the health meter now, its changes and the alerts sent over the last `days` (default 7) |
//!
//! What it does not do: speak to agents (`agents`), or rate the parameters (the health meter).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::admission::Caller;
use super::{error, store_unavailable, Api};
use super::{ErrorBody, Refusals};
use crate::agents::view::{report_json, rfc3339};
use crate::metrics::{CloseReason, TunnelKind};
use crate::policy::Action;
use crate::store::{AuditAction, HealthChange, NewAudit, TelemetryRecord, MAX_REPORTS};

/// A stored report as JSON: its sequence, times and parameters (or why they do not decode).
fn record_json(record: &TelemetryRecord) -> Value {
    let parameters = base64::engine::general_purpose::STANDARD
        .decode(&record.report)
        .ok()
        .and_then(|bytes| protocols::telemetry::decode_report(&bytes).ok())
        .map(|report| report_json(&report))
        .unwrap_or_else(|| json!({ "error": "the stored report does not decode" }));
    json!({
        "seq": record.seq,
        "taken_at": rfc3339(record.taken_at.unix_timestamp()),
        "received_at": rfc3339(record.received_at.unix_timestamp()),
        "parameters": parameters,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/agent",
    tag = "agents",
    summary = "A machine's agent: its hello, consent to remote help, connection, newest support parameters",
    params(("uuid" = Uuid, Path, description = "the machine's UUID")),
    responses(
        (status = 200, description = "`agent` (null when no agent ever enrolled), `connected`, `latest` (null before the first report)"),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn show_agent(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<Uuid>,
) -> Response {
    if let Some(refusal) = caller.authorize_machine(&api, Action::ViewMachine, uuid, "reading a machine's agent").await
    {
        return refusal;
    }
    let store = &api.shared.store;
    let (agent, latest) = match tokio::try_join!(store.agent(uuid), store.latest_report(uuid)) {
        Ok(pair) => pair,
        Err(err) => return store_unavailable(err),
    };
    let connected = api.shared.registry.get(uuid, TunnelKind::Agent).is_some()
        || agent.as_ref().is_some_and(|a| a.connected_since.is_some());
    Json(json!({
        "uuid": uuid,
        "agent": agent,
        "connected": connected,
        "latest": latest.as_ref().map(record_json),
    }))
    .into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct TelemetryQuery {
    /// Reports received in the last this many hours (default 168, a week).
    hours: Option<u32>,
    /// At most this many (default and cap 500).
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/telemetry",
    tag = "agents",
    summary = "A machine's telemetry reports, newest first",
    params(("uuid" = Uuid, Path, description = "the machine's UUID"), TelemetryQuery),
    responses(
        (status = 200, description = "the reports: seq, taken_at, received_at, parameters"),
        (status = 400, description = "the body or query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn telemetry(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<Uuid>,
    query: Result<Query<TelemetryQuery>, QueryRejection>,
) -> Response {
    if let Some(refusal) =
        caller.authorize_machine(&api, Action::ViewMachine, uuid, "reading a machine's telemetry").await
    {
        return refusal;
    }
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, format!("the query takes hours=N and limit=1..{MAX_REPORTS}"));
    };
    let since = OffsetDateTime::now_utc() - time::Duration::hours(query.hours.unwrap_or(168).into());
    match api.shared.store.reports_since(uuid, since, query.limit.unwrap_or(MAX_REPORTS)).await {
        Ok(rows) => Json(rows.iter().map(record_json).collect::<Vec<_>>()).into_response(),
        Err(err) => store_unavailable(err),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/agent/revoke",
    tag = "agents",
    summary = "Revoke a machine's agent certificates (operators): its agent is refused until enrolled again",
    params(("uuid" = Uuid, Path, description = "the machine's UUID")),
    responses(
        (status = 200, description = "`revoked`: how many certificates were standing"),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn revoke(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<Uuid>,
) -> Response {
    if let Some(refusal) = caller.authorize_machine(&api, Action::RevokeAgent, uuid, "revoking a machine's agent").await
    {
        return refusal;
    }
    let now = OffsetDateTime::now_utc();
    let store = &api.shared.store;
    let revoked = match store.revoke_agent_certs(uuid, "revoked by an operator", now).await {
        Ok(n) => n,
        Err(err) => return store_unavailable(err),
    };
    // Its live connection here ends now; on other gateways of a fleet, at its next connection.
    if let Some(tunnel) = api.shared.registry.get(uuid, TunnelKind::Agent) {
        tunnel.close(CloseReason::AuthFailed);
    }
    let audit = NewAudit {
        at: now,
        actor_user_id: Some(caller.principal.user_id),
        action: AuditAction::AgentCertRevoked,
        machine_uuid: Some(uuid),
        subscriber_id: None,
        detail: format!("{revoked} certificate(s)"),
    };
    if let Err(err) = store.append_audit(&audit).await {
        return store_unavailable(err);
    }
    Json(json!({ "uuid": uuid, "revoked": revoked })).into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthQuery {
    /// Changes and alerts of the last this many days (default 7, at most 90).
    days: Option<u32>,
}

fn reasons_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!([]))
}

fn change_json(change: &HealthChange) -> Value {
    json!({
        "at": rfc3339(change.at.unix_timestamp()),
        "health": change.health,
        "previous": change.previous,
        "reasons": reasons_json(&change.reasons),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/health",
    tag = "agents",
    summary = "A machine's health meter: now (with its reasons), its changes and the alerts sent",
    params(("uuid" = Uuid, Path, description = "the machine's UUID"), HealthQuery),
    responses(
        (status = 200, description = "`health` (null before the first rating), `reasons`, `since`, `changes` newest first, `alerts`"),
        (status = 400, description = "the body or query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn health(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<Uuid>,
    query: Result<Query<HealthQuery>, QueryRejection>,
) -> Response {
    if let Some(refusal) = caller.authorize_machine(&api, Action::ViewMachine, uuid, "reading a machine's health").await
    {
        return refusal;
    }
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "the query takes days=1..90".to_string());
    };
    let since = OffsetDateTime::now_utc() - time::Duration::days(query.days.unwrap_or(7).clamp(1, 90).into());
    let store = &api.shared.store;
    let (now, changes, alerts) =
        match tokio::try_join!(store.health(uuid), store.health_changes(uuid, since), store.deliveries(uuid, since)) {
            Ok(all) => all,
            Err(err) => return store_unavailable(err),
        };
    Json(json!({
        "uuid": uuid,
        "health": now.as_ref().map(|h| h.health.clone()),
        "reasons": now.as_ref().map(|h| reasons_json(&h.reasons)).unwrap_or_else(|| json!([])),
        "since": now.as_ref().map(|h| rfc3339(h.since.unix_timestamp())),
        "evaluated_at": now.as_ref().map(|h| rfc3339(h.evaluated_at.unix_timestamp())),
        "changes": changes.iter().map(change_json).collect::<Vec<_>>(),
        "alerts": alerts,
    }))
    .into_response()
}
