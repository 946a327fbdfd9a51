//! The LAN endpoints (`crate::lan`): scans, the hosts found, Wake-on-LAN, and adopting AMT PCs as
//! devices of kind `lan`. All of it answers 403 with reason `lan_off`-style messages until
//! `lan.interfaces` names the interfaces the tools may use. The LAN tools are operators' only
//! (`Action::UseLan` for actions, which needs scope `attach`; `Action::ViewLan` for lists);
//! waking an enrolled device is `Action::AttachRelay` on that machine. They act on the LAN of the gateway that answers (named in `instance`).
//!
//! - `POST /api/v1/lan/scans` `{"interface": IF, "cidr": CIDR?}` → 202 and the scan's progress;
//!   `GET /api/v1/lan/scans/{id}` → its progress, and the hosts once done
//! - `GET /api/v1/lan/hosts[?all=true]`: the hosts scans found (this gateway's LAN, or all)
//! - `POST /api/v1/lan/wake` `{"mac": MAC, "interface": IF}`: a magic packet
//! - `POST /api/v1/devices/{uuid}/wake` `{"interface": IF?, amt account}`: AMT's power-on when
//!   it can be reached (the power state it then reports), else a magic packet to its MAC
//! - `POST /api/v1/lan/devices` `{"ip": IP, "uuid": UUID?, amt account}`: adopt;
//!   `GET /api/v1/lan/devices`; `POST /api/v1/lan/devices/{uuid}/forget`
//!
//! What it does not do: scan, probe or wake (`crate::lan`).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;
use uuid::Uuid;

use super::admission::Caller;
use super::amt::{amt_failure, record_action, AccountBody, Call};
use super::relays::session_closed_refusal;
use super::{error, store_unavailable, Api};
use super::{ErrorBody, Refusals};
use crate::lan::adopt::{self, AdoptError, AdoptRequest};
use crate::lan::{scan, wake, LanError, ScanRequest};
use crate::metrics::WakeMethod;
use crate::policy::{Action, Resource};
use crate::registry::TunnelKind;
use crate::store::MAX_LAN_ROWS;
use crate::wsman::{self, PowerAction};

/// The answer for a LAN tool's refusal.
fn lan_failure(err: &LanError) -> Response {
    let status = match err {
        LanError::Off | LanError::NotAllowed { .. } => StatusCode::FORBIDDEN,
        LanError::NoSuchInterface { .. } | LanError::NoAddress(_) => StatusCode::CONFLICT,
        LanError::CidrOutside { .. } | LanError::TooManyHosts { .. } | LanError::BadCidr(_) => StatusCode::BAD_REQUEST,
        LanError::NotOnLan(..) => StatusCode::FORBIDDEN,
        LanError::Busy(..) => StatusCode::CONFLICT,
        LanError::Raw { .. } | LanError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, err)
}

/// The LAN tools are the gateway's own: operators only ([`Action::ViewLan`], [`Action::UseLan`]).
macro_rules! lan_allowed {
    ($caller:expr, $api:expr, $action:expr, $what:expr) => {
        if let Some(refused) = $caller.authorize(&$api, $action, Resource::Gateway, $what) {
            return refused;
        }
    };
}

#[utoipa::path(
    post,
    path = "/api/v1/lan/scans",
    tag = "lan",
    summary = "Scan a LAN interface for hosts and AMT (operators)",
    request_body = serde_json::Value,
    responses(
        (status = 202, description = "the scan started; its status"),
        (status = 400, description = "the body or query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn start_scan(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<ScanRequest>, JsonRejection>,
) -> Response {
    lan_allowed!(caller, api, Action::UseLan, "scanning the LAN");
    let request = body!(body);
    match scan::start(&api.shared, &request) {
        Ok(scan) => {
            info!(scan = scan.id(), technician = %caller.name, interface = %request.interface, "LAN scan requested");
            let mut status = json!(scan.status());
            status["instance"] = json!(api.shared.instance);
            (StatusCode::ACCEPTED, Json(status)).into_response()
        }
        Err(err) => lan_failure(&err),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/lan/scans/{id}",
    tag = "lan",
    summary = "A recent scan's status and findings (operators)",
    params(("id" = String, Path, description = "the scan id")),
    responses(
        (status = 200, description = "done"),
        (status = 404, description = "not found", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn show_scan(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    lan_allowed!(caller, api, Action::ViewLan, "reading a LAN scan");
    let scan = id.parse::<u64>().ok().and_then(|id| api.shared.lan.scan(id));
    match scan {
        Some(scan) => Json(scan.status()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no scan {id} on gateway {} (only its recent scans are kept)", api.shared.instance),
        ),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct HostsQuery {
    #[serde(default)]
    all: bool,
}

#[utoipa::path(
    get,
    path = "/api/v1/lan/hosts",
    tag = "lan",
    summary = "Hosts the scans found (operators)",
    params(HostsQuery),
    responses(
        (status = 200, description = "done"),
        (status = 400, description = "the body or query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn hosts(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<HostsQuery>, QueryRejection>,
) -> Response {
    lan_allowed!(caller, api, Action::ViewLan, "listing LAN hosts");
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "the query takes all=true|false");
    };
    let instance = (!query.all).then_some(api.shared.instance.as_str());
    match api.shared.store.lan_hosts(instance).await {
        Ok(hosts) => Json(hosts).into_response(),
        Err(err) => store_unavailable(err),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct WakeBody {
    mac: String,
    interface: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/lan/wake",
    tag = "lan",
    summary = "Send a magic packet to a MAC (operators)",
    request_body = WakeBody,
    responses(
        (status = 200, description = "done"),
        (status = 400, description = "the body or query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn wake_mac(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<WakeBody>, JsonRejection>,
) -> Response {
    lan_allowed!(caller, api, Action::UseLan, "waking a PC");
    let body = body!(body);
    let mac = match body.mac.parse::<protocols::wol::Mac>() {
        Ok(mac) => mac,
        Err(err) => return error(StatusCode::BAD_REQUEST, err),
    };
    match wake::magic_packet(&api.shared.config.lan, &body.interface, mac).await {
        Ok(sent) => {
            api.shared.metrics.lan_wake(WakeMethod::MagicPacket);
            info!(technician = %caller.name, %mac, interface = %sent.interface, "magic packet sent");
            Json(json!({ "method": "magic_packet", "magic_packet": sent })).into_response()
        }
        Err(err) => lan_failure(&err),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct DeviceWakeBody {
    interface: Option<String>,
    #[serde(flatten)]
    account: AccountBody,
}

/// AMT's own power-on first: it answers while the PC is off, so what counts is the power state
/// it reports afterwards. Without AMT (no account, not reachable, refused), a magic packet to the
/// PC's MAC (from its adoption or the scans) on the interface given or the one it was found on.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/wake",
    tag = "lan",
    summary = "Wake a PC: AMT power-on, else a magic packet",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    request_body = DeviceWakeBody,
    responses(
        (status = 200, description = "done"),
        (status = 400, description = "the body or query is not what this endpoint takes", body = ErrorBody),
        (status = 404, description = "not found", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn wake_device(call: Call, body: Result<Json<DeviceWakeBody>, JsonRejection>) -> Response {
    // Refusals first: a token that may not act, or a closed session, gets no magic packet either.
    if let Some(refused) = call.authorize(Action::AttachRelay, "waking a PC").await {
        return refused;
    }
    if let Some(refused) = session_closed_refusal(&call.api, call.uuid).await {
        return refused;
    }
    let body = body!(body);
    let shared = &call.api.shared;
    let amt = async {
        let (mut amt, credentials) = call.open(&body.account.account, true).await?;
        let before = amt.power_state().await.map_err(|e| amt_failure(&e))?;
        if before != wsman::amt::POWER_ON {
            amt.power(PowerAction::On).await.map_err(|e| amt_failure(&e))?;
        }
        let after = amt.power_state().await.ok();
        call.remember(&body.account.account, &credentials).await;
        Ok::<_, Response>((before, after))
    };
    let amt_error = match amt.await {
        Ok((before, after)) => {
            shared.metrics.lan_wake(WakeMethod::Amt);
            let changed = before != wsman::amt::POWER_ON;
            let answer = json!({
                "uuid": call.uuid,
                "method": "amt",
                "was": wsman::amt::power_state_name(before),
                "power_state": after,
                "power": after.map(wsman::amt::power_state_name),
                "changed": changed,
            });
            let detail = format!("wake through AMT (was {})", wsman::amt::power_state_name(before));
            call.audit("power.on", detail, "ok", None).await;
            return Json(answer).into_response();
        }
        Err(response) => response_text(response).await,
    };

    // No AMT: a magic packet, if the PC's MAC is known.
    let adoption = match shared.store.lan_device(call.uuid).await {
        Ok(adoption) => adoption,
        Err(err) => return store_unavailable(err),
    };
    let host = match &adoption {
        Some(adopted) => shared.store.lan_host_by_ip(&shared.instance, &adopted.ip).await.ok().flatten(),
        None => None,
    };
    let mac = adoption.as_ref().and_then(|a| a.mac.clone()).or_else(|| host.as_ref().map(|h| h.mac.clone()));
    let interface = body.interface.clone().or_else(|| host.as_ref().map(|h| h.interface.clone()));
    let (Some(mac), Some(interface)) = (mac, interface) else {
        return error(
            StatusCode::CONFLICT,
            format!(
                "device {} could not be woken through AMT ({amt_error}), and no MAC address and interface are known \
                 for a magic packet: adopt it after a scan found it, or wake its MAC (`tether lan wake MAC \
                 --interface IF`)",
                call.uuid
            ),
        );
    };
    let Ok(mac) = mac.parse::<protocols::wol::Mac>() else {
        return error(StatusCode::CONFLICT, format!("the MAC recorded for {} ({mac}) is not valid", call.uuid));
    };
    match wake::magic_packet(&shared.config.lan, &interface, mac).await {
        Ok(sent) => {
            shared.metrics.lan_wake(WakeMethod::MagicPacket);
            call.audit("power.on", format!("magic packet to {mac} on {interface}"), "ok", Some(amt_error.clone()))
                .await;
            Json(json!({ "uuid": call.uuid, "method": "magic_packet", "magic_packet": sent, "amt_error": amt_error }))
                .into_response()
        }
        Err(err) => lan_failure(&err),
    }
}

/// The error message of a refusal, to be reported beside the fallback.
async fn response_text(response: Response) -> String {
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| status.to_string())
}

#[utoipa::path(
    post,
    path = "/api/v1/lan/devices",
    tag = "lan",
    summary = "Adopt an AMT PC of the LAN as a device (operators)",
    request_body = serde_json::Value,
    responses(
        (status = 201, description = "adopted"),
        (status = 400, description = "the body or query is not what this endpoint takes", body = ErrorBody),
        (status = 502, description = "the device's AMT did not answer as expected", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn adopt_device(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<AdoptRequest>, JsonRejection>,
) -> Response {
    lan_allowed!(caller, api, Action::UseLan, "adopting a LAN PC");
    let request = body!(body);
    if request.amt_password.as_ref().is_some_and(|p| p.len() > 32)
        || request.amt_user.as_ref().is_some_and(|u| u.len() > 32)
    {
        return error(StatusCode::BAD_REQUEST, "AMT user names and passwords are at most 32 bytes");
    }
    let shared = &api.shared;
    match adopt::adopt(shared, &request, &caller.name).await {
        Ok(adopted) => {
            let how = if request.uuid.is_some() { "UUID given by hand" } else { "UUID read through WS-MAN" };
            record_action(
                &api.shared,
                &caller,
                adopted.uuid,
                "lan.adopt",
                format!("{} ({how})", adopted.ip),
                "ok",
                None,
            )
            .await;
            (StatusCode::CREATED, Json(json!(adopted))).into_response()
        }
        Err(err) => {
            let status = match &err {
                AdoptError::Lan(lan) => return lan_failure(lan),
                AdoptError::BadAddress(_) | AdoptError::NeedAccount => StatusCode::BAD_REQUEST,
                AdoptError::NotAmt(_) => StatusCode::NOT_FOUND,
                AdoptError::Amt(amt) => return amt_failure(amt),
                AdoptError::Tls(_) => StatusCode::BAD_GATEWAY,
                AdoptError::Adopted { .. } | AdoptError::AddressTaken { .. } => StatusCode::CONFLICT,
                AdoptError::Store(err) => {
                    tracing::warn!(error = %err, "store failed during an adoption");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            error(status, err)
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/lan/devices",
    tag = "lan",
    summary = "The adopted LAN PCs (operators)",
    responses(
        (status = 200, description = "done"),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn list_devices(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    lan_allowed!(caller, api, Action::ViewLan, "listing LAN devices");
    let shared = &api.shared;
    match shared.store.lan_devices(None, None, MAX_LAN_ROWS).await {
        Ok(devices) => {
            let list: Vec<Value> = devices
                .into_iter()
                .map(|device| {
                    let live = shared.registry.get(device.uuid, TunnelKind::Lan);
                    let mut view = json!(device);
                    view["connected"] = json!(live.is_some() || device.instance != shared.instance);
                    view["reachable_here"] = json!(live.is_some());
                    view["ports"] = json!(live.map(|t| t.ports()).unwrap_or_default());
                    view
                })
                .collect();
            Json(list).into_response()
        }
        Err(err) => store_unavailable(err),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/lan/devices/{uuid}/forget",
    tag = "lan",
    summary = "Forget an adopted LAN PC (operators)",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    responses(
        (status = 200, description = "done"),
        (status = 400, description = "the body or query is not what this endpoint takes", body = ErrorBody),
        (status = 404, description = "not found", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn forget_device(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
) -> Response {
    lan_allowed!(caller, api, Action::UseLan, "forgetting a LAN PC");
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return error(StatusCode::BAD_REQUEST, format!("{uuid} is not a UUID"));
    };
    match adopt::forget(&api.shared, uuid).await {
        Ok(true) => {
            record_action(&api.shared, &caller, uuid, "lan.forget", String::new(), "ok", None).await;
            Json(json!({ "uuid": uuid, "forgotten": true })).into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, format!("device {uuid} is not adopted on the LAN")),
        Err(err) => store_unavailable(err),
    }
}
