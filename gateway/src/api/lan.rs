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
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::info;
use utoipa::ToSchema;
use uuid::Uuid;

use super::admission::Caller;
use super::amt::{amt_failure, record_action, AccountBody, Call};
use super::relays::session_closed_refusal;
use super::schemas::{Adoption, Host, MagicPacket, Scan};
use super::{bad_query, error, not_a_uuid, store_unavailable, Api, ApiPath, BAD_REQUEST};
use super::{ErrorBody, Refusals};
use crate::lan::adopt::{self, AdoptError, AdoptRequest};
use crate::lan::{scan, wake, LanError, ScanRequest};
use crate::metrics::WakeMethod;
use crate::policy::{Action, Resource};
use crate::registry::TunnelKind;
use crate::store::MAX_LAN_ROWS;
use crate::wsman::{self, PowerAction};

/// The answer for a LAN tool's refusal, with its stable code.
fn lan_failure(err: &LanError) -> Response {
    let (status, code) = match err {
        LanError::Off => (StatusCode::FORBIDDEN, "lan_off"),
        LanError::NotAllowed { .. } => (StatusCode::FORBIDDEN, "interface_not_allowed"),
        LanError::NoSuchInterface { .. } => (StatusCode::CONFLICT, "no_such_interface"),
        LanError::NoAddress(_) => (StatusCode::CONFLICT, "no_address"),
        LanError::CidrOutside { .. } => (StatusCode::BAD_REQUEST, "cidr_outside"),
        LanError::TooManyHosts { .. } => (StatusCode::BAD_REQUEST, "too_many_hosts"),
        LanError::BadCidr(_) => (StatusCode::BAD_REQUEST, "bad_cidr"),
        LanError::NotOnLan(..) => (StatusCode::FORBIDDEN, "not_on_lan"),
        LanError::Busy(..) => (StatusCode::CONFLICT, "scan_busy"),
        LanError::Raw { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "raw_socket"),
        LanError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "lan_io"),
    };
    error(status, code, err)
}

/// What to scan.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct ScanBody {
    /// One of `lan.interfaces`.
    #[schema(min_length = 1, max_length = 15, example = "eth1")]
    interface: String,
    /// Default: the interface's subnet.
    #[schema(example = "192.168.1.0/24")]
    cidr: Option<String>,
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
    request_body = ScanBody,
    responses(
        (status = 202, description = "the scan started; its status", body = Scan),
        (status = 400, description = "the body is not what this endpoint takes, or the range is not one to scan (`bad_cidr`, `cidr_outside`, `too_many_hosts`)", body = ErrorBody),
        (status = 409, description = "the interface is missing or has no address, or a scan runs (`code` says which)", body = ErrorBody),
        (status = 500, description = "the gateway cannot open a raw socket (`raw_socket`, `lan_io`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn start_scan(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<ScanBody>, JsonRejection>,
) -> Response {
    lan_allowed!(caller, api, Action::UseLan, "scanning the LAN");
    let body = body!(body);
    let request = ScanRequest { interface: body.interface, cidr: body.cidr };
    match scan::start(&api.shared, &request) {
        Ok(scan) => {
            info!(scan = scan.id(), technician = %caller.name, interface = %request.interface, "LAN scan requested");
            let status = Scan { instance: Some(api.shared.instance.clone()), ..Scan::from(scan.status()) };
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
        (status = 200, description = "the scan", body = Scan),
        (status = 400, description = "the id is not UTF-8", body = ErrorBody),
        (status = 404, description = "no such scan on this gateway (`no_such_scan`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn show_scan(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Response {
    lan_allowed!(caller, api, Action::ViewLan, "reading a LAN scan");
    let scan = id.parse::<u64>().ok().and_then(|id| api.shared.lan.scan(id));
    match scan {
        Some(scan) => Json(Scan::from(scan.status())).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no_such_scan",
            format!("no scan {id} on gateway {} (only its recent scans are kept)", api.shared.instance),
        ),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct HostsQuery {
    /// The hosts of every gateway's LAN, not only this one's.
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
        (status = 200, description = "the hosts", body = Vec<Host>),
        (status = 400, description = "the query is not what this endpoint takes", body = ErrorBody),
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
        return bad_query("all=true|false");
    };
    let instance = (!query.all).then_some(api.shared.instance.as_str());
    match api.shared.store.lan_hosts(instance).await {
        Ok(hosts) => Json(hosts.into_iter().map(Host::from).collect::<Vec<_>>()).into_response(),
        Err(err) => store_unavailable(err),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct WakeBody {
    /// A PC's own (unicast, not zero) address: `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`.
    #[schema(
        pattern = r"^(?!00([:-])00\1(00\1){3}00$)[0-9A-Fa-f][02468ACEace]([:-])[0-9A-Fa-f]{2}(\3[0-9A-Fa-f]{2}){4}$",
        example = "00:16:3e:12:34:56"
    )]
    mac: String,
    /// One of `lan.interfaces`.
    #[schema(min_length = 1, max_length = 15, example = "eth1")]
    interface: String,
}

/// A magic packet sent.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MagicAnswer {
    #[schema(example = "magic_packet")]
    method: &'static str,
    magic_packet: MagicPacket,
}

#[utoipa::path(
    post,
    path = "/api/v1/lan/wake",
    tag = "lan",
    summary = "Send a magic packet to a MAC (operators)",
    request_body = WakeBody,
    responses(
        (status = 200, description = "sent", body = MagicAnswer),
        (status = 400, description = "the body is not what this endpoint takes", body = ErrorBody),
        (status = 409, description = "the interface is missing or has no address (`code` says which)", body = ErrorBody),
        (status = 500, description = "the gateway cannot send raw frames (`raw_socket`, `lan_io`)", body = ErrorBody),
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
        Ok(mac) if mac.is_unicast() => mac,
        Ok(mac) => {
            let message = format!("{mac} is not a PC's address (a broadcast, multicast or zero MAC)");
            return error(StatusCode::BAD_REQUEST, BAD_REQUEST, message);
        }
        Err(err) => return error(StatusCode::BAD_REQUEST, BAD_REQUEST, err),
    };
    match wake::magic_packet(&api.shared.config.lan, &body.interface, mac).await {
        Ok(sent) => {
            api.shared.metrics.lan_wake(WakeMethod::MagicPacket);
            info!(technician = %caller.name, %mac, interface = %sent.interface, "magic packet sent");
            Json(MagicAnswer { method: "magic_packet", magic_packet: sent.into() }).into_response()
        }
        Err(err) => lan_failure(&err),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct DeviceWakeBody {
    /// Where to send a magic packet if it comes to that (default: where a scan found the PC).
    #[schema(min_length = 1, max_length = 15)]
    interface: Option<String>,
    #[serde(flatten)]
    account: AccountBody,
}

/// A PC woken: through AMT (`was`, `power_state`, `power`, `changed`), or by a magic packet
/// (`magic_packet`, and `amt_error` saying why not through AMT).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WakeAnswer {
    uuid: Uuid,
    /// `amt` or `magic_packet`.
    method: &'static str,
    /// The power state before, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    was: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = true)]
    power_state: Option<Option<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = true)]
    power: Option<Option<&'static str>>,
    /// Whether it was off.
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    magic_packet: Option<MagicPacket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amt_error: Option<String>,
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
        (status = 200, description = "woken through AMT or by a magic packet", body = WakeAnswer),
        (status = 400, description = "the UUID or the body is not what this endpoint takes", body = ErrorBody),
        (status = 409, description = "neither AMT nor a magic packet can reach it (`cannot_wake`), or the interface is not usable (`code` says why)", body = ErrorBody),
        (status = 500, description = "the gateway cannot send raw frames (`raw_socket`, `lan_io`)", body = ErrorBody),
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
            let answer = WakeAnswer {
                uuid: call.uuid,
                method: "amt",
                was: Some(wsman::amt::power_state_name(before)),
                power_state: Some(after),
                power: Some(after.map(wsman::amt::power_state_name)),
                changed: Some(changed),
                magic_packet: None,
                amt_error: None,
            };
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
            "cannot_wake",
            format!(
                "device {} could not be woken through AMT ({amt_error}), and no MAC address and interface are known \
                 for a magic packet: adopt it after a scan found it, or wake its MAC (`tether lan wake MAC \
                 --interface IF`)",
                call.uuid
            ),
        );
    };
    let Ok(mac) = mac.parse::<protocols::wol::Mac>() else {
        return error(
            StatusCode::CONFLICT,
            "cannot_wake",
            format!("the MAC recorded for {} ({mac}) is not valid", call.uuid),
        );
    };
    match wake::magic_packet(&shared.config.lan, &interface, mac).await {
        Ok(sent) => {
            shared.metrics.lan_wake(WakeMethod::MagicPacket);
            call.audit("power.on", format!("magic packet to {mac} on {interface}"), "ok", Some(amt_error.clone()))
                .await;
            Json(WakeAnswer {
                uuid: call.uuid,
                method: "magic_packet",
                was: None,
                power_state: None,
                power: None,
                changed: None,
                magic_packet: Some(sent.into()),
                amt_error: Some(amt_error),
            })
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

/// An AMT PC of the LAN to adopt.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct AdoptBody {
    /// Its IPv4 address on one of `lan.interfaces`.
    #[schema(format = Ipv4, example = "192.168.1.20")]
    ip: String,
    /// Given by hand; otherwise read through WS-MAN with the account below.
    #[schema(example = "8c4f0e2a-6b1d-4f3e-9a57-2d0c1b7e5f31")]
    uuid: Option<Uuid>,
    #[schema(max_length = 32)]
    #[serde(default, deserialize_with = "super::input::opt_text::<32, _>")]
    amt_user: Option<String>,
    #[schema(max_length = 32)]
    #[serde(default, deserialize_with = "super::input::opt_text::<32, _>")]
    amt_password: Option<String>,
    /// Keep the account (sealed) for later AMT calls to this PC.
    #[serde(default)]
    remember: bool,
}

#[utoipa::path(
    post,
    path = "/api/v1/lan/devices",
    tag = "lan",
    summary = "Adopt an AMT PC of the LAN as a device (operators)",
    request_body = AdoptBody,
    responses(
        (status = 201, description = "adopted", body = Adoption),
        (status = 400, description = "the body is not what this endpoint takes, or it needs the AMT account (`amt_password_needed`)", body = ErrorBody),
        (status = 404, description = "no AMT answers at that address (`not_amt`)", body = ErrorBody),
        (status = 409, description = "adopted already, or the address is taken (`code` says which)", body = ErrorBody),
        (status = 502, description = "the device's AMT did not answer as expected (`amt_failed`, `amt_tls`)", body = ErrorBody),
        (status = 504, description = "the device did not answer in time (`amt_timeout`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn adopt_device(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<AdoptBody>, JsonRejection>,
) -> Response {
    lan_allowed!(caller, api, Action::UseLan, "adopting a LAN PC");
    let body = body!(body);
    let request = AdoptRequest {
        ip: body.ip,
        uuid: body.uuid,
        amt_user: body.amt_user,
        amt_password: body.amt_password,
        remember: body.remember,
    };
    if request.amt_password.as_ref().is_some_and(|p| p.len() > 32)
        || request.amt_user.as_ref().is_some_and(|u| u.len() > 32)
    {
        return error(StatusCode::BAD_REQUEST, BAD_REQUEST, "AMT user names and passwords are at most 32 bytes");
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
            (StatusCode::CREATED, Json(Adoption::from(adopted))).into_response()
        }
        Err(err) => {
            let (status, code) = match &err {
                AdoptError::Lan(lan) => return lan_failure(lan),
                AdoptError::BadAddress(_) => (StatusCode::BAD_REQUEST, BAD_REQUEST),
                AdoptError::NeedAccount => (StatusCode::BAD_REQUEST, "amt_password_needed"),
                AdoptError::NotAmt(_) => (StatusCode::NOT_FOUND, "not_amt"),
                AdoptError::Amt(amt) => return amt_failure(amt),
                AdoptError::Tls(_) => (StatusCode::BAD_GATEWAY, "amt_tls"),
                AdoptError::Adopted { .. } => (StatusCode::CONFLICT, "already_adopted"),
                AdoptError::AddressTaken { .. } => (StatusCode::CONFLICT, "address_taken"),
                AdoptError::Store(err) => {
                    tracing::warn!(error = %err, "store failed during an adoption");
                    (StatusCode::INTERNAL_SERVER_ERROR, "store_unavailable")
                }
            };
            error(status, code, err)
        }
    }
}

/// An adopted LAN PC and whether it is reachable.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LanDevice {
    #[serde(flatten)]
    adoption: Adoption,
    /// Reachable here, or adopted by another gateway of the fleet (which reaches it).
    connected: bool,
    /// This gateway holds its LAN tunnel.
    reachable_here: bool,
    ports: Vec<u16>,
}

#[utoipa::path(
    get,
    path = "/api/v1/lan/devices",
    tag = "lan",
    summary = "The adopted LAN PCs (operators)",
    responses(
        (status = 200, description = "the adopted PCs", body = Vec<LanDevice>),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn list_devices(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    lan_allowed!(caller, api, Action::ViewLan, "listing LAN devices");
    let shared = &api.shared;
    match shared.store.lan_devices(None, None, MAX_LAN_ROWS).await {
        Ok(devices) => {
            let list: Vec<LanDevice> = devices
                .into_iter()
                .map(|device| {
                    let live = shared.registry.get(device.uuid, TunnelKind::Lan);
                    LanDevice {
                        connected: live.is_some() || device.instance != shared.instance,
                        reachable_here: live.is_some(),
                        ports: live.map(|t| t.ports()).unwrap_or_default(),
                        adoption: device.into(),
                    }
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
        (status = 200, description = "forgotten", body = LanForgotten),
        (status = 400, description = "the UUID is not one", body = ErrorBody),
        (status = 404, description = "the device is not adopted (`not_adopted`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn forget_device(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(uuid): ApiPath<String>,
) -> Response {
    lan_allowed!(caller, api, Action::UseLan, "forgetting a LAN PC");
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return not_a_uuid(&uuid);
    };
    match adopt::forget(&api.shared, uuid).await {
        Ok(true) => {
            record_action(&api.shared, &caller, uuid, "lan.forget", String::new(), "ok", None).await;
            Json(LanForgotten { uuid, forgotten: true }).into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, "not_adopted", format!("device {uuid} is not adopted on the LAN")),
        Err(err) => store_unavailable(err),
    }
}

/// A LAN PC forgotten.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LanForgotten {
    uuid: Uuid,
    forgotten: bool,
}
