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
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::admission::Caller;
use super::schemas::{Agent, AlertDelivery, ReportedTime, SupportParameters};
use super::{bad_query, store_unavailable, Api, ApiPath};
use super::{ErrorBody, Refusals};
use crate::agents::view::{report_json, rfc3339};
use crate::metrics::{CloseReason, TunnelKind};
use crate::policy::Action;
use crate::store::{AuditAction, HealthChange, NewAudit, TelemetryRecord, MAX_REPORTS};

/// A telemetry report: its sequence, times and support parameters.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Report {
    seq: i64,
    /// When the agent took it (the agent's clock).
    #[schema(value_type = ReportedTime)]
    taken_at: Value,
    #[schema(value_type = ReportedTime)]
    received_at: Value,
    #[schema(value_type = SupportParameters)]
    parameters: Value,
}

/// A stored report as the API shows it: its sequence, times and parameters (or why they do not
/// decode).
fn report_view(record: &TelemetryRecord) -> Report {
    let parameters = base64::engine::general_purpose::STANDARD
        .decode(&record.report)
        .ok()
        .and_then(|bytes| protocols::telemetry::decode_report(&bytes).ok())
        .map(|report| report_json(&report))
        .unwrap_or_else(|| json!({ "error": "the stored report does not decode" }));
    Report {
        seq: record.seq,
        taken_at: rfc3339(record.taken_at.unix_timestamp()),
        received_at: rfc3339(record.received_at.unix_timestamp()),
        parameters,
    }
}

/// A machine's agent and its newest report.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AgentShown {
    uuid: Uuid,
    /// Null when no agent ever enrolled.
    agent: Option<Agent>,
    connected: bool,
    /// Null before the first report.
    latest: Option<Report>,
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/agent",
    tag = "agents",
    summary = "A machine's agent: its hello, consent to remote help, connection, newest support parameters",
    params(("uuid" = Uuid, Path, description = "the machine's UUID")),
    responses(
        (status = 200, description = "the agent, whether it is connected, and its newest report", body = AgentShown),
        (status = 400, description = "the UUID is not one", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn show_agent(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(uuid): ApiPath<Uuid>,
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
    Json(AgentShown { uuid, agent: agent.map(Agent::from), connected, latest: latest.as_ref().map(report_view) })
        .into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct TelemetryQuery {
    /// Reports received in the last this many hours (default 168, a week; at most ten years).
    #[param(minimum = 1, maximum = 87600)]
    hours: Option<u32>,
    /// At most this many (default and most: 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// The longest look back: ten years.
const MAX_HOURS: u32 = 87_600;

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/telemetry",
    tag = "agents",
    summary = "A machine's telemetry reports, newest first",
    params(("uuid" = Uuid, Path, description = "the machine's UUID"), TelemetryQuery),
    responses(
        (status = 200, description = "the reports, newest first", body = Vec<Report>),
        (status = 400, description = "the UUID or the query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn telemetry(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(uuid): ApiPath<Uuid>,
    query: Result<Query<TelemetryQuery>, QueryRejection>,
) -> Response {
    if let Some(refusal) =
        caller.authorize_machine(&api, Action::ViewMachine, uuid, "reading a machine's telemetry").await
    {
        return refusal;
    }
    let takes = format!("hours=1..{MAX_HOURS} and limit=1..{MAX_REPORTS}");
    let Ok(Query(query)) = query else {
        return bad_query(takes);
    };
    let (hours, limit) = (query.hours.unwrap_or(168), query.limit.unwrap_or(MAX_REPORTS));
    if !(1..=MAX_HOURS).contains(&hours) || !(1..=MAX_REPORTS).contains(&limit) {
        return bad_query(takes);
    }
    let since = OffsetDateTime::now_utc() - time::Duration::hours(hours.into());
    match api.shared.store.reports_since(uuid, since, limit).await {
        Ok(rows) => Json(rows.iter().map(report_view).collect::<Vec<_>>()).into_response(),
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
        (status = 200, description = "revoked: how many certificates were standing", body = Revoked),
        (status = 400, description = "the UUID is not one", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn revoke(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(uuid): ApiPath<Uuid>,
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
    Json(Revoked { uuid, revoked }).into_response()
}

/// A machine's agent certificates revoked.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Revoked {
    uuid: Uuid,
    /// Certificates that were standing.
    revoked: u64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthQuery {
    /// Changes and alerts of the last this many days (default 7, at most 90).
    #[param(minimum = 1, maximum = 90)]
    days: Option<u32>,
}

/// `green`, `yellow` or `red`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // Only described: the store keeps the colour as text.
pub(super) enum Colour {
    Green,
    Yellow,
    Red,
}

/// One reason a machine is not green (`crate::health::Reason`).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // Only described: the store keeps the reasons as JSON text.
pub(super) struct HealthReason {
    /// `firewall_off`, `antivirus_off`, `signatures_old`, … (`docs/health.md`).
    code: String,
    /// What this reason alone makes the machine.
    health: Colour,
    /// One line for people.
    text: String,
}

/// A change of a machine's health meter.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct HealthChangeView {
    #[schema(value_type = ReportedTime)]
    at: Value,
    #[schema(value_type = Colour)]
    health: String,
    #[schema(value_type = Option<Colour>)]
    previous: Option<String>,
    #[schema(value_type = Vec<HealthReason>)]
    reasons: Value,
}

/// A machine's health meter, its changes and the alerts sent.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct HealthShown {
    uuid: Uuid,
    /// Null before the first rating.
    #[schema(value_type = Option<Colour>)]
    health: Option<String>,
    #[schema(value_type = Vec<HealthReason>)]
    reasons: Value,
    /// Since when the meter shows this.
    #[schema(value_type = Option<ReportedTime>)]
    since: Option<Value>,
    #[schema(value_type = Option<ReportedTime>)]
    evaluated_at: Option<Value>,
    /// Newest first.
    changes: Vec<HealthChangeView>,
    alerts: Vec<AlertDelivery>,
}

fn reasons_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!([]))
}

fn change_view(change: &HealthChange) -> HealthChangeView {
    HealthChangeView {
        at: rfc3339(change.at.unix_timestamp()),
        health: change.health.clone(),
        previous: change.previous.clone(),
        reasons: reasons_json(&change.reasons),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/health",
    tag = "agents",
    summary = "A machine's health meter: now (with its reasons), its changes and the alerts sent",
    params(("uuid" = Uuid, Path, description = "the machine's UUID"), HealthQuery),
    responses(
        (status = 200, description = "the meter, its changes newest first, and the alerts sent", body = HealthShown),
        (status = 400, description = "the UUID or the query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn health(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(uuid): ApiPath<Uuid>,
    query: Result<Query<HealthQuery>, QueryRejection>,
) -> Response {
    if let Some(refusal) = caller.authorize_machine(&api, Action::ViewMachine, uuid, "reading a machine's health").await
    {
        return refusal;
    }
    let Ok(Query(query)) = query else {
        return bad_query("days=1..90");
    };
    let days = query.days.unwrap_or(7);
    if !(1..=90).contains(&days) {
        return bad_query(format!("days=1..90, not {days}"));
    }
    let since = OffsetDateTime::now_utc() - time::Duration::days(days.into());
    let store = &api.shared.store;
    let (now, changes, alerts) =
        match tokio::try_join!(store.health(uuid), store.health_changes(uuid, since), store.deliveries(uuid, since)) {
            Ok(all) => all,
            Err(err) => return store_unavailable(err),
        };
    Json(HealthShown {
        uuid,
        health: now.as_ref().map(|h| h.health.clone()),
        reasons: now.as_ref().map(|h| reasons_json(&h.reasons)).unwrap_or_else(|| json!([])),
        since: now.as_ref().map(|h| rfc3339(h.since.unix_timestamp())),
        evaluated_at: now.as_ref().map(|h| rfc3339(h.evaluated_at.unix_timestamp())),
        changes: changes.iter().map(change_view).collect(),
        alerts: alerts.into_iter().map(AlertDelivery::from).collect(),
    })
    .into_response()
}
