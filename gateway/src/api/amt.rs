//! The remote-fix endpoints: AMT power, boot, redirection, user consent and the rescue run,
//! spoken by the gateway over WS-Management through the device's tunnel (`crate::wsman`), and the
//! end of a technician's session with a device. All POST, allowed by the policy as
//! [`Action::AttachRelay`] on the machine (so scope `attach`); every call is recorded
//! in the store (`device_actions`: token, device, action, outcome, what the device answered), and
//! `GET …/actions` ([`Action::ViewAudit`]) lists them.
//!
//! - `POST /api/v1/devices/{uuid}/power` `{"action": "status|on|off|cycle|reset"}`
//! - `POST …/redirection` `{"enable": BOOL}`: SOL, IDE-R and the redirection listener
//! - `POST …/boot` `{"ider": "cd"|"floppy"|null, "sol": BOOL}`: the next boot
//! - `POST …/consent` `{}` (the PC shows a code) or `{"code": "123456"}`
//! - `POST …/rescue/start`, `…/rescue/boot` `{"ider": "cd", "sol": true}`, `…/rescue/finish`
//!   `{"disable_redirection": BOOL}`: `tether rescue`'s gateway steps; start checks the device
//!   and keeps what it found (boot settings, redirection), finish puts it back
//! - `POST …/session/close` `{"message": TEXT}` and `…/session/open`
//! - `POST …/amt/forget`: drops the remembered account and the pinned TLS certificate
//!
//! Each AMT call takes the device's admin account in the body (`amt_user`, default `admin`, and
//! `amt_password`), as the PC user reads it out; `"remember": true` keeps it for that device,
//! sealed (`crate::sealing`), and later calls may leave it out.
//!
//! What it does not do: speak WS-MAN (`crate::wsman`) or serve the rescue image (the technician's
//! CLI serves it over IDE-R through a relay, `tether rescue`; or the gateway serves one of its
//! content items, `ider`). Closing the session also stops what the gateway serves the device.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};
use utoipa::ToSchema;
use uuid::Uuid;

use super::admission::Caller;
use super::relays::{open_device_stream, session_closed_refusal};
use super::schemas::{ConsentState, DeviceAction, DeviceFacts, RedirectionState};
use super::{bad_path, bad_query, error, not_a_uuid, store_unavailable, Api, Connection, BAD_REQUEST};
use super::{ErrorBody, Refusals};
use crate::metrics::{AmtAction, AmtOutcome, CloseReason};
use crate::policy::Action;
use crate::relay::Stop;
use crate::store::{ClosedSession, NewAction, RescueRecord, MAX_ACTIONS};
use crate::wsman::amt::{BootSettings, IderDevice, Redirection};
use crate::wsman::{self, Amt, AmtError, AmtErrorKind, Credentials, PowerAction};

/// The device's AMT admin account, as a request gives it.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub(super) struct Account {
    /// Default `admin` (or the user remembered for the device).
    #[schema(max_length = 32)]
    #[serde(default, deserialize_with = "super::input::opt_text::<32, _>")]
    amt_user: Option<String>,
    /// Needed unless one is remembered for the device (else 409 `amt_password_needed`).
    #[schema(max_length = 32)]
    #[serde(default, deserialize_with = "super::input::opt_text::<32, _>")]
    amt_password: Option<String>,
    /// Keep the account (sealed) for later calls to this device.
    #[serde(default)]
    remember: bool,
}

/// What to do with the device's power (`status`: only read it).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum PowerChoice {
    Status,
    On,
    Off,
    Cycle,
    Reset,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct PowerBody {
    action: PowerChoice,
    #[serde(flatten)]
    account: Account,
}

/// The device a one-time IDE-R boot uses.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // Only described: the bodies take `wsman::amt::IderDevice`, spelled the same.
pub(super) enum IderChoice {
    Cd,
    Floppy,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct RedirectionBody {
    enable: bool,
    #[serde(flatten)]
    account: Account,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct BootBody {
    /// Boot once from the IDE-R device (null: the device's own disks).
    #[schema(value_type = Option<IderChoice>)]
    ider: Option<IderDevice>,
    #[serde(default)]
    sol: bool,
    #[serde(flatten)]
    account: Account,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct ConsentBody {
    /// The code the PC shows; leave it out to make the PC show one.
    #[schema(pattern = r"^[0-9]{1,16}$")]
    code: Option<String>,
    #[serde(flatten)]
    account: Account,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct RescueBootBody {
    #[serde(default = "cd")]
    #[schema(value_type = IderChoice)]
    ider: IderDevice,
    #[serde(default = "yes")]
    sol: bool,
    #[serde(flatten)]
    account: Account,
}

fn cd() -> IderDevice {
    IderDevice::Cd
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct FinishBody {
    #[serde(default)]
    disable_redirection: bool,
    #[serde(flatten)]
    account: Account,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct CloseBody {
    /// Kept with the closed session (at most 1000 characters are).
    message: Option<String>,
    #[serde(flatten)]
    account: Account,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct AccountBody {
    #[serde(flatten)]
    pub(super) account: Account,
}

/// What `rescue/start` found and `rescue/finish` (or `session/close`) puts back. `rescue/finish`
/// restores the boot settings, and redirection only when asked (`--disable-redirection`); else
/// the record stays, marked `boot_restored`, so that `session/close` puts redirection back as
/// found when the remote fix ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Found {
    boot: BootSettings,
    redirection: Redirection,
    power_state: u32,
    #[serde(default)]
    boot_restored: bool,
}

impl Found {
    fn record(&self, by: &str) -> RescueRecord {
        RescueRecord {
            found: serde_json::to_string(self).unwrap_or_default(),
            by: by.to_owned(),
            at: OffsetDateTime::now_utc(),
        }
    }
}

/// The failures of a call through AMT, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only described: `amt_failure` and the handlers answer them.
pub(super) enum AmtFailures {
    /// The UUID or the body is not what the endpoint takes.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// The device is not connected (`not_connected`), or no rescue is open (`no_rescue`).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// No AMT password was given and none is remembered (`amt_password_needed`), the device
    /// refused (`amt_refused`), needs user consent (`consent_required`, with `facts`), reports
    /// another UUID (`uuid_mismatch`), does not forward the port (`port_not_forwarded`), or its
    /// remembered password does not open here (`amt_password_unreadable`).
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The device's AMT did not answer as WS-Management should (`amt_failed`, `device_refused`,
    /// `fleet_link`).
    #[response(status = 502)]
    BadGateway(ErrorBody),
    /// The device's tunnel has no room for another channel (`too_many_channels`).
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// The device did not answer in time (`amt_timeout`, `timeout`).
    #[response(status = 504)]
    Timeout(ErrorBody),
}

/// A device's power.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PowerAnswer {
    uuid: Uuid,
    /// What was done: `status` (nothing), `on`, `off`, `cycle` or `reset`.
    action: &'static str,
    /// The CIM power state (2 on, 8 off, …); null when the device could not tell after a change.
    power_state: Option<u32>,
    /// The power state in words.
    power: Option<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RedirectionAnswer {
    uuid: Uuid,
    redirection: RedirectionState,
}

/// The boot settings before and after (`UseIDER=… IDERBootDevice=… UseSOL=…`).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BootAnswer {
    uuid: Uuid,
    before: String,
    after: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ConsentAnswer {
    uuid: Uuid,
    consent: ConsentState,
}

/// The 409 of a rescue that needs the PC user's consent first: what the device is.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ConsentRequired {
    #[serde(flatten)]
    error: ErrorBody,
    facts: DeviceFacts,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RescueStarted {
    uuid: Uuid,
    facts: DeviceFacts,
    redirection: RedirectionState,
    /// An unfinished rescue of the device was taken up again.
    resumed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RescueBooted {
    uuid: Uuid,
    /// `reset` (it was on) or `on`.
    power_action: &'static str,
}

/// What a rescue's end put back.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Restored {
    /// The boot settings as found (`UseIDER=… IDERBootDevice=… UseSOL=…`).
    boot: String,
    /// Redirection as found, when asked to put it back.
    redirection: Option<RedirectionState>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RescueFinished {
    uuid: Uuid,
    restored: Restored,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SessionClosedAnswer {
    uuid: Uuid,
    relays_stopped: u64,
    /// What an open rescue left was put back (null: none was open, or see `notes`).
    restored: Option<Restored>,
    tunnel_closed: bool,
    /// Whether the PC user had asked for help (null: the tunnel is not held here).
    user_initiated: Option<bool>,
    message: Option<String>,
    notes: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SessionOpened {
    uuid: Uuid,
    /// False: it was open.
    was_closed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Forgotten {
    uuid: Uuid,
    forgotten: Vec<&'static str>,
}

/// Longest technician message kept with a closed session.
const MAX_MESSAGE: usize = 1000;

/// One remote-fix request: who asks (the token), for which device (the path's UUID), from where.
/// An extractor: a path that is not a UUID is answered 400 before anything else.
pub(super) struct Call {
    pub(super) api: Arc<Api>,
    pub(super) caller: Caller,
    pub(super) uuid: Uuid,
    pub(super) remote: SocketAddr,
}

impl FromRequestParts<Arc<Api>> for Call {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, Response> {
        let missing = || error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the request was not admitted");
        let caller = parts.extensions.get::<Caller>().cloned().ok_or_else(missing)?;
        let remote = parts.extensions.get::<Connection>().map(|c| c.remote()).ok_or_else(missing)?;
        let Path(uuid) = Path::<String>::from_request_parts(parts, api).await.map_err(|r| bad_path(&r))?;
        let uuid = Uuid::parse_str(&uuid).map_err(|_| not_a_uuid(&uuid))?;
        Ok(Call { api: Arc::clone(api), caller, uuid, remote })
    }
}

/// The answer for a failed AMT step: which step, and what the device said.
pub(super) fn amt_failure(err: &AmtError) -> Response {
    let (status, code) = match &err.kind {
        AmtErrorKind::Call(wsman::CallError::Unauthorized { .. }) => (StatusCode::FORBIDDEN, "amt_unauthorized"),
        AmtErrorKind::Refused { .. } => (StatusCode::CONFLICT, "amt_refused"),
        AmtErrorKind::Call(wsman::CallError::Timeout) => (StatusCode::GATEWAY_TIMEOUT, "amt_timeout"),
        _ => (StatusCode::BAD_GATEWAY, "amt_failed"),
    };
    ErrorBody { step: Some(err.step), ..ErrorBody::new(code, err) }.into_response(status)
}

impl Call {
    /// `None` if the caller may do `action` to this call's machine; else the 403.
    pub(super) async fn authorize(&self, action: Action, what: &str) -> Option<Response> {
        self.caller.authorize_machine(&self.api, action, self.uuid, what).await
    }

    /// The account to use: the request's, else the one remembered for the device.
    pub(super) async fn credentials(&self, account: &Account) -> Result<Credentials, Response> {
        let user = account.amt_user.clone().filter(|u| !u.is_empty());
        if let Some(password) = account.amt_password.clone().filter(|p| !p.is_empty()) {
            if password.len() > 32 || user.as_ref().is_some_and(|u| u.len() > 32) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    BAD_REQUEST,
                    "AMT user names and passwords are at most 32 bytes",
                ));
            }
            return Ok(Credentials { user: user.unwrap_or_else(|| "admin".into()), password });
        }
        let access = self.api.shared.store.amt_access(self.uuid).await.map_err(store_unavailable)?;
        let (Some(stored_user), Some(sealed)) = (access.user, access.sealed_password) else {
            // The request is well formed; what it lacks depends on what the gateway remembers.
            return Err(error(
                StatusCode::CONFLICT,
                "amt_password_needed",
                format!(
                    "give device {}'s AMT admin password (amt_password; the CLI's --password or AMT_PASSWORD): none \
                     is remembered for it (--remember keeps one)",
                    self.uuid
                ),
            ));
        };
        match self.api.shared.sealer.open(self.uuid, &sealed) {
            Ok(password) => Ok(Credentials {
                user: user.unwrap_or(stored_user),
                password: String::from_utf8_lossy(&password).into_owned(),
            }),
            Err(err) => {
                warn!(uuid = %self.uuid, error = %err, "a remembered AMT password does not open");
                Err(error(
                    StatusCode::CONFLICT,
                    "amt_password_unreadable",
                    format!(
                        "the AMT password remembered for {} cannot be opened on this gateway ({err}); give it again",
                        self.uuid
                    ),
                ))
            }
        }
    }

    /// A WS-MAN session with the device: 16992, or 16993 with TLS when the device forwards only
    /// that (its certificate pinned on first use).
    async fn connect(&self, credentials: Credentials) -> Result<Amt, Response> {
        let shared = &self.api.shared;
        let forwarded = shared.registry.any(self.uuid).map(|t| t.ports()).unwrap_or_default();
        let port = wsman::pick_port(&forwarded);
        let (stream, _) = open_device_stream(shared, self.uuid, port, self.remote).await?;
        let access = shared.store.amt_access(self.uuid).await.map_err(store_unavailable)?;
        let (amt, new_pin) =
            wsman::connect(stream, self.uuid, port, credentials, access.tls_pin).await.map_err(|e| amt_failure(&e))?;
        if let Some(pin) = new_pin {
            info!(uuid = %self.uuid, fingerprint = %pin, "pinned the device's WS-MAN TLS certificate");
            if let Err(err) = shared.store.set_amt_tls_pin(self.uuid, Some(&pin), OffsetDateTime::now_utc()).await {
                warn!(uuid = %self.uuid, error = %err, "cannot store the device's TLS pin");
            }
        }
        Ok(amt)
    }

    /// Refusals before any work: scope, a closed session; then the account and the session.
    pub(super) async fn open(&self, account: &Account, check_closed: bool) -> Result<(Amt, Credentials), Response> {
        if let Some(refused) = self.authorize(Action::AttachRelay, "changing a device through AMT").await {
            return Err(refused);
        }
        if check_closed {
            if let Some(refused) = session_closed_refusal(&self.api, self.uuid).await {
                return Err(refused);
            }
        }
        let credentials = self.credentials(account).await?;
        let amt = self.connect(credentials.clone()).await?;
        Ok((amt, credentials))
    }

    /// Keeps the account when asked to (after it worked).
    pub(super) async fn remember(&self, account: &Account, credentials: &Credentials) {
        if !account.remember || account.amt_password.is_none() {
            return;
        }
        let sealed = self.api.shared.sealer.seal(self.uuid, credentials.password.as_bytes());
        let stored = self
            .api
            .shared
            .store
            .remember_amt_account(self.uuid, Some((&credentials.user, &sealed)), OffsetDateTime::now_utc())
            .await;
        if let Err(err) = stored {
            warn!(uuid = %self.uuid, error = %err, "cannot remember the AMT account");
        }
    }

    /// Records the action in the store.
    pub(super) async fn audit(&self, action: &str, detail: String, outcome: &str, message: Option<String>) {
        let counted = match outcome {
            "ok" => AmtOutcome::Ok,
            "refused" => AmtOutcome::Refused,
            _ => AmtOutcome::Failed,
        };
        self.api.shared.metrics.amt_action(AmtAction::of(action), counted);
        record_action(&self.api.shared, &self.caller, self.uuid, action, detail, outcome, message).await;
    }

    /// Audits the outcome of `result` and turns it into the answer.
    async fn finish<T: Serialize>(&self, action: &str, detail: String, result: Result<T, AmtError>) -> Response {
        match result {
            Ok(value) => {
                self.audit(action, detail, "ok", None).await;
                Json(value).into_response()
            }
            Err(err) => {
                let outcome = if matches!(err.kind, AmtErrorKind::Refused { .. }) { "refused" } else { "failed" };
                self.audit(action, detail, outcome, Some(err.to_string())).await;
                amt_failure(&err)
            }
        }
    }
}

/// Records an action a technician took on a device in its action log (`GET …/actions`).
pub(super) async fn record_action(
    shared: &crate::state::Shared,
    caller: &Caller,
    uuid: Uuid,
    action: &str,
    detail: String,
    outcome: &str,
    message: Option<String>,
) {
    let record = NewAction {
        uuid,
        at: OffsetDateTime::now_utc(),
        token_id: Some(caller.id),
        technician: caller.name.clone(),
        action: action.to_owned(),
        detail,
        outcome: outcome.to_owned(),
        message,
        instance: shared.instance.clone(),
    };
    info!(%uuid, technician = %caller.name, action, outcome, "device action");
    if let Err(err) = shared.store.record_action(&record).await {
        warn!(%uuid, action, error = %err, "cannot record a device action in the store");
    }
}

macro_rules! session {
    ($call:expr, $account:expr) => {
        session!($call, $account, true)
    };
    ($call:expr, $account:expr, $check_closed:expr) => {
        match $call.open($account, $check_closed).await {
            Ok(opened) => opened,
            Err(response) => return response,
        }
    };
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/power",
    tag = "amt",
    summary = "Power state or action through WS-Management",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    request_body = PowerBody,
    responses(
        (status = 200, description = "done, and the power state after it", body = PowerAnswer),
        AmtFailures,
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn power(call: Call, body: Result<Json<PowerBody>, JsonRejection>) -> Response {
    let body = body!(body);
    let action = match body.action {
        PowerChoice::Status => None,
        PowerChoice::On => Some(PowerAction::On),
        PowerChoice::Off => Some(PowerAction::Off),
        PowerChoice::Cycle => Some(PowerAction::Cycle),
        PowerChoice::Reset => Some(PowerAction::Reset),
    };
    let (mut amt, credentials) = session!(call, &body.account);
    let result = async {
        if let Some(action) = action {
            amt.power(action).await?;
        }
        // After a change the device may already be dropping its tunnel: the state is a bonus.
        let state = match (action, amt.power_state().await) {
            (_, Ok(state)) => Some(state),
            (None, Err(err)) => return Err(err),
            (Some(_), Err(_)) => None,
        };
        Ok(PowerAnswer {
            uuid: call.uuid,
            action: action.map_or("status", PowerAction::as_str),
            power_state: state,
            power: state.map(wsman::amt::power_state_name),
        })
    }
    .await;
    if result.is_ok() {
        call.remember(&body.account, &credentials).await;
    }
    match action {
        // Reading the state changes nothing: not audited.
        None => match result {
            Ok(value) => Json(value).into_response(),
            Err(err) => amt_failure(&err),
        },
        Some(action) => call.finish(&format!("power.{}", action.as_str()), String::new(), result).await,
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/redirection",
    tag = "amt",
    summary = "Enable or disable AMT redirection (SOL, IDE-R)",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    request_body = RedirectionBody,
    responses(
        (status = 200, description = "done", body = RedirectionAnswer),
        AmtFailures,
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn redirection(call: Call, body: Result<Json<RedirectionBody>, JsonRejection>) -> Response {
    let body = body!(body);
    let (mut amt, credentials) = session!(call, &body.account);
    let result = amt
        .set_redirection(body.enable, body.enable)
        .await
        .map(|r| RedirectionAnswer { uuid: call.uuid, redirection: r.into() });
    if result.is_ok() {
        call.remember(&body.account, &credentials).await;
    }
    let action = if body.enable { "redirection.enable" } else { "redirection.disable" };
    call.finish(action, "SOL and IDE-R".into(), result).await
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/boot",
    tag = "amt",
    summary = "Set the next boot (IDE-R CD or floppy, SOL)",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    request_body = BootBody,
    responses(
        (status = 200, description = "done: the boot settings before and after", body = BootAnswer),
        AmtFailures,
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn boot(call: Call, body: Result<Json<BootBody>, JsonRejection>) -> Response {
    let body = body!(body);
    let (mut amt, credentials) = session!(call, &body.account);
    let result = async {
        let before = amt.boot_settings().await?;
        let after = before.with_ider_boot(body.ider, body.sol);
        amt.put_boot_settings(&after).await?;
        if body.ider.is_some() {
            amt.arm_one_time_boot().await?;
        }
        Ok(BootAnswer { uuid: call.uuid, before: before.summary(), after: after.summary() })
    }
    .await;
    if result.is_ok() {
        call.remember(&body.account, &credentials).await;
    }
    let detail = format!("ider={:?} sol={}", body.ider, body.sol);
    call.finish("boot", detail, result).await
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/consent",
    tag = "amt",
    summary = "Ask for or give the user-consent code",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    request_body = ConsentBody,
    responses(
        (status = 200, description = "done: where consent is now", body = ConsentAnswer),
        AmtFailures,
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn consent(call: Call, body: Result<Json<ConsentBody>, JsonRejection>) -> Response {
    let body = body!(body);
    if body.code.as_ref().is_some_and(|c| c.is_empty() || c.len() > 16 || !c.bytes().all(|b| b.is_ascii_digit())) {
        return error(StatusCode::BAD_REQUEST, BAD_REQUEST, "a consent code is the digits the PC shows");
    }
    let (mut amt, _) = session!(call, &body.account);
    let result = async {
        match &body.code {
            None => amt.start_consent().await?,
            Some(code) => amt.send_consent_code(code).await?,
        }
        let consent = amt.consent().await?;
        Ok(ConsentAnswer { uuid: call.uuid, consent: consent.into() })
    }
    .await;
    let action = if body.code.is_some() { "consent.code" } else { "consent.start" };
    call.finish(action, String::new(), result).await
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/rescue/start",
    tag = "amt",
    summary = "Start a rescue: record the boot settings and enable redirection",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    request_body = AccountBody,
    responses(
        (status = 200, description = "started: what the device is, and its redirection now", body = RescueStarted),
        AmtFailures,
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn rescue_start(call: Call, body: Result<Json<AccountBody>, JsonRejection>) -> Response {
    let body = body!(body);
    let (mut amt, credentials) = session!(call, &body.account);
    let facts = match amt.facts().await {
        Ok(facts) => facts,
        Err(err) => return call.finish("rescue.start", "checking the device".into(), Err::<(), _>(err)).await,
    };
    call.remember(&body.account, &credentials).await;
    // Identity is proven, never claimed: the firmware's own UUID must be the tunnel's.
    if let Some(reported) = facts.platform_uuid.filter(|reported| *reported != call.uuid) {
        let message = format!(
            "the firmware reports platform UUID {reported}, but the tunnel authenticated as {}: refusing to change \
             this device",
            call.uuid
        );
        call.audit("rescue.start", "checking the device".into(), "refused", Some(message.clone())).await;
        return error(StatusCode::CONFLICT, "uuid_mismatch", message);
    }
    if facts.consent.needs_code() {
        let message = "the device requires user consent: ask the PC to show a code (POST …/consent {}) and enter \
                       the code the PC user reads out (POST …/consent {\"code\": …})";
        let body = ConsentRequired {
            error: ErrorBody { reason: Some("consent_required"), ..ErrorBody::new("consent_required", message) },
            facts: facts.into(),
        };
        return (StatusCode::CONFLICT, Json(body)).into_response();
    }
    // An unfinished rescue's record holds the settings from before it: kept. One whose boot
    // settings were put back keeps only its redirection as found.
    let earlier = match open_rescue(&call).await {
        Ok(earlier) => earlier,
        Err(response) => return response,
    };
    let (found, replace) = match earlier {
        Some(earlier) if !earlier.boot_restored => (earlier, false),
        Some(earlier) => {
            (Found { boot: facts.boot.clone(), power_state: facts.power_state, boot_restored: false, ..earlier }, true)
        }
        None => (
            Found {
                boot: facts.boot.clone(),
                redirection: facts.redirection,
                power_state: facts.power_state,
                boot_restored: false,
            },
            false,
        ),
    };
    let fresh = match call.api.shared.store.save_rescue(call.uuid, &found.record(&call.caller.name), replace).await {
        Ok(fresh) => fresh,
        Err(err) => return store_unavailable(err),
    };
    let result = async {
        let redirection = if facts.redirection.sol && facts.redirection.ider && facts.redirection.listener {
            facts.redirection
        } else {
            amt.set_redirection(true, true).await?
        };
        Ok(RescueStarted {
            uuid: call.uuid,
            facts: facts.clone().into(),
            redirection: redirection.into(),
            resumed: !fresh,
        })
    }
    .await;
    let detail = format!("found {} {:?}", facts.boot.summary(), facts.redirection);
    call.finish("rescue.start", detail, result).await
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/rescue/boot",
    tag = "amt",
    summary = "Boot the rescue image over IDE-R",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    request_body = RescueBootBody,
    responses(
        (status = 200, description = "the device boots the IDE-R image", body = RescueBooted),
        AmtFailures,
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn rescue_boot(call: Call, body: Result<Json<RescueBootBody>, JsonRejection>) -> Response {
    let body = body!(body);
    let (mut amt, _) = session!(call, &body.account);
    let result = async {
        let boot = amt.boot_settings().await?;
        amt.put_boot_settings(&boot.with_ider_boot(Some(body.ider), body.sol)).await?;
        amt.arm_one_time_boot().await?;
        let action = if amt.power_state().await? == 2 { PowerAction::Reset } else { PowerAction::On };
        amt.power(action).await?;
        Ok(RescueBooted { uuid: call.uuid, power_action: action.as_str() })
    }
    .await;
    let detail = format!("ider={:?} sol={}", body.ider, body.sol);
    call.finish("rescue.boot", detail, result).await
}

/// Puts back what a rescue found: the boot settings (unless already), and (when asked)
/// redirection as it was.
async fn restore(amt: &mut Amt, found: &Found, disable_redirection: bool) -> Result<Restored, AmtError> {
    if !found.boot_restored {
        amt.put_boot_settings(&found.boot).await?;
    }
    let redirection = if disable_redirection {
        Some(amt.set_redirection(found.redirection.sol, found.redirection.ider).await?)
    } else {
        None
    };
    Ok(Restored { boot: found.boot.summary(), redirection: redirection.map(RedirectionState::from) })
}

async fn open_rescue(call: &Call) -> Result<Option<Found>, Response> {
    let record = call.api.shared.store.rescue(call.uuid).await.map_err(store_unavailable)?;
    Ok(record.and_then(|r| serde_json::from_str(&r.found).ok()))
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/rescue/finish",
    tag = "amt",
    summary = "Finish a rescue: restore the boot settings",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    request_body = FinishBody,
    responses(
        (status = 200, description = "finished: what was put back", body = RescueFinished),
        AmtFailures,
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn rescue_finish(call: Call, body: Result<Json<FinishBody>, JsonRejection>) -> Response {
    let body = body!(body);
    // Before the rescue record is read: whether one is open is the device's business.
    if let Some(refused) = call.authorize(Action::AttachRelay, "finishing a rescue").await {
        return refused;
    }
    let found = match open_rescue(&call).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return error(StatusCode::NOT_FOUND, "no_rescue", format!("no rescue of device {} is open", call.uuid))
        }
        Err(response) => return response,
    };
    let (mut amt, _) = session!(call, &body.account, false);
    let result = restore(&mut amt, &found, body.disable_redirection).await;
    if result.is_ok() {
        let stored = if body.disable_redirection {
            call.api.shared.store.clear_rescue(call.uuid).await
        } else {
            let kept = Found { boot_restored: true, ..found.clone() };
            call.api.shared.store.save_rescue(call.uuid, &kept.record(&call.caller.name), true).await.map(drop)
        };
        if let Err(err) = stored {
            return store_unavailable(err);
        }
    }
    let detail = format!("restore {} disable_redirection={}", found.boot.summary(), body.disable_redirection);
    call.finish("rescue.finish", detail, result.map(|restored| RescueFinished { uuid: call.uuid, restored })).await
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/session/close",
    tag = "amt",
    summary = "Close the remote session: put everything back and refuse relays",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    request_body = CloseBody,
    responses(
        (status = 200, description = "closed: relays stopped, what was put back, and notes on what was not", body = SessionClosedAnswer),
        (status = 400, description = "the UUID or the body is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn session_close(call: Call, body: Result<Json<CloseBody>, JsonRejection>) -> Response {
    let body = body!(body);
    if let Some(refused) = call.authorize(Action::AttachRelay, "closing a device's session").await {
        return refused;
    }
    let message = body.message.map(|m| m.chars().take(MAX_MESSAGE).collect::<String>());
    let shared = &call.api.shared;
    // The technicians' relays end first, so that nothing holds AMT's redirection sessions while
    // the boot settings are put back.
    let relays = call.api.relays.stop_device(call.uuid, Stop::SessionClosed);
    // So does a rescue image the gateway serves it.
    if let Some(ider) = call.api.ider.stop(call.uuid) {
        ider.ended(Duration::from_secs(10)).await;
    }
    let mut notes = Vec::new();
    let restored = match open_rescue(&call).await {
        Err(response) => return response,
        Ok(None) => None,
        Ok(Some(found)) => {
            let attempt = async {
                let credentials = call.credentials(&body.account).await.map_err(|_| {
                    "no AMT password given or remembered, so the boot settings were not restored".to_owned()
                })?;
                let mut amt = call
                    .connect(credentials)
                    .await
                    .map_err(|_| "the device's WS-MAN port did not answer".to_owned())?;
                restore(&mut amt, &found, true).await.map_err(|e| e.to_string())
            };
            match attempt.await {
                Ok(restored) => {
                    if let Err(err) = shared.store.clear_rescue(call.uuid).await {
                        return store_unavailable(err);
                    }
                    Some(restored)
                }
                Err(why) => {
                    notes.push(why);
                    None
                }
            }
        }
    };
    let closed =
        ClosedSession { at: OffsetDateTime::now_utc(), by: call.caller.name.clone(), message: message.clone() };
    if let Err(err) = shared.store.close_session(call.uuid, &closed).await {
        return store_unavailable(err);
    }
    let tunnel = shared.registry.any(call.uuid);
    let user_initiated = tunnel.as_ref().map(|t| t.trigger_reason == wsman::TRIGGER_USER_INITIATED);
    if let Some(tunnel) = &tunnel {
        tunnel.close(CloseReason::SessionClosed);
    } else {
        notes.push("the device's tunnel is not held by this gateway; it was not closed".into());
    }
    let detail = format!("relays stopped: {relays}; tunnel closed: {}", tunnel.is_some());
    call.audit("session.close", detail, "ok", message.clone()).await;
    Json(SessionClosedAnswer {
        uuid: call.uuid,
        relays_stopped: u64::try_from(relays).unwrap_or(u64::MAX),
        restored,
        tunnel_closed: tunnel.is_some(),
        user_initiated,
        message,
        notes,
    })
    .into_response()
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/session/open",
    tag = "amt",
    summary = "Open the remote session again",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    responses(
        (status = 200, description = "open", body = SessionOpened),
        (status = 400, description = "the UUID is not one", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn session_open(call: Call) -> Response {
    if let Some(refused) = call.authorize(Action::AttachRelay, "opening a device's session").await {
        return refused;
    }
    let reopened = match call.api.shared.store.open_session(call.uuid).await {
        Ok(reopened) => reopened,
        Err(err) => return store_unavailable(err),
    };
    call.audit("session.open", String::new(), "ok", None).await;
    Json(SessionOpened { uuid: call.uuid, was_closed: reopened }).into_response()
}

/// Forgets what the gateway keeps to reach the device's AMT: the remembered account and the
/// pinned TLS certificate (after the device's certificate changed on purpose).
#[utoipa::path(
    post,
    path = "/api/v1/devices/{uuid}/amt/forget",
    tag = "amt",
    summary = "Forget the AMT password the gateway remembered for the device",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    responses(
        (status = 200, description = "forgotten", body = Forgotten),
        (status = 400, description = "the UUID is not one", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn forget(call: Call) -> Response {
    if let Some(refused) = call.authorize(Action::AttachRelay, "forgetting a device's AMT access").await {
        return refused;
    }
    let now = OffsetDateTime::now_utc();
    let store = &call.api.shared.store;
    if let Err(err) = store.remember_amt_account(call.uuid, None, now).await {
        return store_unavailable(err);
    }
    if let Err(err) = store.set_amt_tls_pin(call.uuid, None, now).await {
        return store_unavailable(err);
    }
    call.audit("amt.forget", "account and TLS pin".into(), "ok", None).await;
    Json(Forgotten { uuid: call.uuid, forgotten: vec!["account", "tls_pin"] }).into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ActionsQuery {
    /// Actions listed (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/actions",
    tag = "amt",
    summary = "The remote-fix actions taken on the device, newest first",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID"), ActionsQuery),
    responses(
        (status = 200, description = "the actions, newest first", body = Vec<DeviceAction>),
        (status = 400, description = "the UUID or the query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn actions(call: Call, query: Result<Query<ActionsQuery>, QueryRejection>) -> Response {
    let (api, uuid) = (&call.api, call.uuid);
    if let Some(refused) =
        call.caller.authorize_machine(api, Action::ViewAudit, uuid, "listing a device's actions").await
    {
        return refused;
    }
    let Ok(Query(query)) = query else {
        return bad_query(format!("limit=N (1 to {MAX_ACTIONS})"));
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_ACTIONS).contains(&limit) {
        return bad_query(format!("limit=1 to {MAX_ACTIONS}, not {limit}"));
    }
    match call.api.shared.store.actions_for(uuid, limit).await {
        Ok(actions) => Json(actions.into_iter().map(DeviceAction::from).collect::<Vec<_>>()).into_response(),
        Err(err) => store_unavailable(err),
    }
}
