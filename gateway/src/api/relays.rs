//! Opening relays, and the table of live ones: each relay has an entry (its token, device and a
//! stop handle) from before its stream is opened until it ends. The table enforces
//! `api.max_relays_per_token_per_device`, and [`watch_tokens`] stops relays whose token was
//! revoked or has expired, or whose user the policy no longer lets reach the machine (suspended,
//! removed as a contact, subscription terminated), within about a second. Opening a relay is
//! [`Action::AttachRelay`] on the machine, and leaves an audit row (`relay.attached`, or
//! `console.session` for AMT's redirection ports: SOL and IDE-R).
//!
//! What it does not do: move bytes or decide when a relay ends otherwise (`relay`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};
use uuid::Uuid;

use super::admission::Caller;
use super::{error, not_a_uuid, rejection, Api, ApiPath, Connection, BAD_REQUEST};
use super::{ErrorBody, Refusals};
use crate::fleet::peers::{Peers, INSTANCE_HEADER};
use crate::metrics::ApiRejection;
use crate::policy::{self, Action, Principal, Resource};
use crate::redir_tap::RelayTap;
use crate::registry::OpenRefused;
use crate::relay::{self, Stop};
use crate::state::Shared;
use crate::store::{AuditAction, NewAudit};
use crate::view;

/// AMT's redirection ports (SOL and IDE-R), plain and TLS: relays to them are console sessions.
const AMT_REDIRECTION: u16 = 16994;
const AMT_REDIRECTION_TLS: u16 = 16995;

/// How often live relays' tokens are checked against the store.
const TOKEN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often (in token checks) the API's per-source tables are swept.
const HOUSEKEEPING_EVERY: u64 = 60;

#[derive(Debug)]
struct Entry {
    token_id: i64,
    /// Who the relay is for, as admitted: rechecked against the policy by [`watch_tokens`].
    principal: Principal,
    uuid: Uuid,
    expires_at: Option<OffsetDateTime>,
    stop: oneshot::Sender<Stop>,
}

#[derive(Debug, Default)]
struct Table {
    relays: HashMap<u64, Entry>,
    per_token_device: HashMap<(i64, Uuid), usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.relays.remove(&id)?;
        let key = (entry.token_id, entry.uuid);
        if let Some(count) = self.per_token_device.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.per_token_device.remove(&key);
            }
        }
        Some(entry)
    }
}

/// Live relays (see the module doc).
#[derive(Debug, Default)]
pub(super) struct LiveRelays {
    next_id: AtomicU64,
    table: Mutex<Table>,
}

/// A relay's entry in [`LiveRelays`]; dropping it removes the entry.
#[derive(Debug)]
pub(super) struct Ticket {
    pub id: u64,
    relays: Arc<LiveRelays>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.relays.lock().remove(self.id);
    }
}

impl LiveRelays {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An entry for a new relay of `caller` to `uuid`, unless it has `cap` live ones there already.
    pub fn try_open(
        self: &Arc<Self>,
        caller: &Caller,
        uuid: Uuid,
        cap: usize,
    ) -> Option<(Ticket, oneshot::Receiver<Stop>)> {
        let mut table = self.lock();
        let count = table.per_token_device.entry((caller.id, uuid)).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (stop, stopped) = oneshot::channel();
        let entry =
            Entry { token_id: caller.id, principal: caller.principal, uuid, expires_at: caller.expires_at, stop };
        table.relays.insert(id, entry);
        Some((Ticket { id, relays: Arc::clone(self) }, stopped))
    }

    /// Stops every relay whose token is not in `live` (revoked or expired at `now`); returns the
    /// relays stopped.
    pub fn stop_gone(&self, live: &HashSet<i64>, now: OffsetDateTime) -> Vec<(u64, Stop)> {
        let mut table = self.lock();
        let gone: Vec<u64> =
            table.relays.iter().filter(|(_, e)| !live.contains(&e.token_id)).map(|(id, _)| *id).collect();
        gone.into_iter()
            .filter_map(|id| {
                let entry = table.remove(id)?;
                let why =
                    if entry.expires_at.is_some_and(|at| at <= now) { Stop::TokenExpired } else { Stop::TokenRevoked };
                let _ = entry.stop.send(why);
                Some((id, why))
            })
            .collect()
    }

    /// The users of live relays and the machines they reach, each once.
    fn reaches(&self) -> (Vec<Principal>, HashSet<Uuid>) {
        let table = self.lock();
        let mut users: Vec<Principal> = Vec::new();
        for entry in table.relays.values() {
            if !users.contains(&entry.principal) {
                users.push(entry.principal);
            }
        }
        (users, table.relays.values().map(|e| e.uuid).collect())
    }

    /// Stops every relay for which `allowed(principal, uuid)` is false; returns the relays stopped.
    fn stop_denied(&self, allowed: impl Fn(&Principal, Uuid) -> bool) -> Vec<u64> {
        let mut table = self.lock();
        let denied: Vec<u64> =
            table.relays.iter().filter(|(_, e)| !allowed(&e.principal, e.uuid)).map(|(id, _)| *id).collect();
        denied
            .into_iter()
            .filter_map(|id| {
                let entry = table.remove(id)?;
                let _ = entry.stop.send(Stop::AccessRevoked);
                Some(id)
            })
            .collect()
    }

    /// Stops every relay to `uuid`; how many were stopped.
    pub fn stop_device(&self, uuid: Uuid, why: Stop) -> usize {
        let mut table = self.lock();
        let ids: Vec<u64> = table.relays.iter().filter(|(_, e)| e.uuid == uuid).map(|(id, _)| *id).collect();
        ids.into_iter()
            .filter_map(|id| table.remove(id))
            .map(|entry| {
                let _ = entry.stop.send(why);
            })
            .count()
    }

    pub fn len(&self) -> usize {
        self.lock().relays.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every second, stops relays whose token is gone; stops at shutdown. Also sweeps the API's
/// per-source tables now and then.
pub(super) async fn watch_tokens(api: Arc<Api>) {
    let mut shutdown = api.shared.shutdown.clone();
    let mut tick = tokio::time::interval(TOKEN_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    let mut failing = false;
    let mut recheck_failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::state::stopping(&mut shutdown) => return,
        }
        ticks += 1;
        if ticks % HOUSEKEEPING_EVERY == 0 {
            api.sources.housekeeping();
        }
        if api.relays.is_empty() {
            continue;
        }
        let now = OffsetDateTime::now_utc();
        match api.shared.store.live_token_ids(now).await {
            Ok(live) => {
                failing = false;
                for (relay, why) in api.relays.stop_gone(&live, now) {
                    info!(relay, reason = ?why, "stopping relay: its token is no longer valid");
                }
            }
            Err(err) if !failing => {
                failing = true;
                warn!(error = %err, "cannot check live relays' tokens against the store; retrying every second");
            }
            Err(_) => {}
        }
        match recheck_access(&api).await {
            Ok(()) => recheck_failing = false,
            Err(err) if !recheck_failing => {
                recheck_failing = true;
                warn!(error = %err, "cannot recheck live relays' access against the store; retrying every second");
            }
            Err(_) => {}
        }
    }
}

/// Stops relays whose user the policy no longer lets reach the machine: two queries per user
/// with a live relay and one per machine reached.
async fn recheck_access(api: &Api) -> Result<(), crate::store::StoreError> {
    let (users, machines) = api.relays.reaches();
    let store = &api.shared.store;
    let mut now_as = Vec::with_capacity(users.len());
    for admitted in users {
        let principal = store.principal(admitted.user_id, admitted.scope).await?;
        let relations = store.relations(admitted.user_id).await?;
        now_as.push((admitted, principal, relations));
    }
    let mut subscriber_of = HashMap::new();
    for uuid in machines {
        subscriber_of.insert(uuid, store.machine(uuid).await?.map(|m| m.subscriber_id));
    }
    let stopped = api.relays.stop_denied(|admitted, uuid| {
        let Some((_, Some(principal), relations)) = now_as.iter().find(|(a, _, _)| a == admitted) else {
            // The user is gone.
            return false;
        };
        let subscriber_id = subscriber_of.get(&uuid).copied().flatten();
        let machine = Resource::Machine { uuid, subscriber_id };
        policy::authorize(principal, relations, Action::AttachRelay, machine).is_ok()
    });
    for relay in stopped {
        info!(relay, "stopping relay: its user may no longer reach the machine");
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}/tcp/{port}",
    tag = "devices",
    summary = "A WebSocket relay to a port of the device (`tether forward`, `console`, `ider`)",
    params(
        ("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID"),
        ("port" = u16, Path, description = "the device port", minimum = 0, maximum = 65535),
        ("Connection" = UpgradeConnection, Header, description = "the WebSocket handshake (RFC 6455)"),
        ("Upgrade" = UpgradeTo, Header, description = "the WebSocket handshake"),
        ("Sec-WebSocket-Version" = WebSocketVersion, Header, description = "the WebSocket handshake"),
        ("Sec-WebSocket-Key" = String, Header, description = "the WebSocket handshake: 16 random bytes in base64",
         pattern = r"^[A-Za-z0-9+/]{22}==$", example = "dGhlIHNhbXBsZSBub25jZQ=="),
    ),
    responses(
        (status = 101, description = "switching to the WebSocket relay"),
        (status = 400, description = "the UUID or port is not one, or the request is no WebSocket upgrade (`bad_request`)", body = ErrorBody),
        (status = 404, description = "the device is not connected (`not_connected`, `tunnel_gone`)", body = ErrorBody),
        (status = 409, description = "the device does not forward the port (`port_not_forwarded`)", body = ErrorBody),
        (status = 426, description = "the connection cannot be upgraded (`bad_request`)", body = ErrorBody),
        (status = 502, description = "the device refused the channel, or the fleet link failed (`device_refused`, `fleet_link`)", body = ErrorBody),
        (status = 503, description = "the device's tunnel has no room for another channel (`too_many_channels`)", body = ErrorBody),
        (status = 504, description = "the device did not answer the channel open in time (`timeout`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn relay_tcp(
    State(api): State<Arc<Api>>,
    Extension(connection): Extension<Connection>,
    Extension(caller): Extension<Caller>,
    ApiPath((uuid, port)): ApiPath<(String, u16)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return not_a_uuid(&uuid);
    };
    let subscriber_id = match api.shared.store.machine(uuid).await {
        Ok(machine) => machine.map(|m| m.subscriber_id),
        Err(err) => return super::store_unavailable(err),
    };
    let machine = Resource::Machine { uuid, subscriber_id };
    if let Some(refused) = caller.authorize(&api, Action::AttachRelay, machine, "opening a relay") {
        return refused;
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let message = format!("a relay is a WebSocket: {}", rejection.body_text());
            return error(rejection.status(), BAD_REQUEST, message);
        }
    };
    let shared = &api.shared;
    let cap = shared.config.api.max_relays_per_token_per_device;
    let Some((ticket, stop)) = api.relays.try_open(&caller, uuid, cap) else {
        let message = format!(
            "token {:?} already has {cap} relays open to device {uuid} (api.max_relays_per_token_per_device); \
             close one first",
            caller.name
        );
        return rejection(&api, StatusCode::TOO_MANY_REQUESTS, ApiRejection::RelayCap, None, message);
    };
    if let Some(refused) = session_closed_refusal(&api, uuid).await {
        return refused;
    }
    let peer = connection.remote();
    let (stream, holder) = match open_device_stream(shared, uuid, port, peer).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let relay_id = ticket.id;
    audit_attach(shared, &caller, uuid, subscriber_id, port, &holder).await;
    let technician = caller.name;
    let user = caller.principal.user_id;
    info!(relay = relay_id, user, token = %technician, %uuid, port, remote = %peer, "relay opened");
    let limits = api.relay_limits;
    let api = Arc::clone(&api);
    let mut response = relay::limit_frames(ws, &limits).on_upgrade(move |socket| async move {
        // Relays to AMT's redirection ports are watched (sessions, users, SOL transcripts).
        let tap = RelayTap::for_relay(&api.shared, uuid, &technician, port);
        let outcome = relay::run_tapped(socket, stream, limits, stop, tap.as_ref()).await;
        if let Some(tap) = tap {
            tap.finish();
        }
        // Until here the relay held its place under the connection caps and the relay cap.
        drop((ticket, connection));
        api.shared.metrics.relay_closed(outcome.end);
        info!(
            relay = relay_id,
            user,
            token = %technician,
            %uuid,
            port,
            to_device = outcome.to_device,
            from_device = outcome.from_device,
            duration_ms = outcome.duration.as_millis() as u64,
            reason = outcome.end.as_str(),
            "relay closed"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&holder) {
        response.headers_mut().insert(INSTANCE_HEADER, value);
    }
    response
}

/// The WebSocket handshake's headers, for the OpenAPI document: a relay is a WebSocket, and a
/// request without them is refused 400 (`bad_request`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only described: axum's `WebSocketUpgrade` reads the headers.
pub(super) enum UpgradeConnection {
    Upgrade,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only described, as above.
pub(super) enum UpgradeTo {
    #[schema(rename = "websocket")]
    Websocket,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only described, as above.
pub(super) enum WebSocketVersion {
    #[schema(rename = "13")]
    Thirteen,
}

/// Appends the audit row of an opened relay: who (the token's user, and the token), which
/// machine, which port; AMT's redirection ports (SOL, IDE-R) as a console session.
async fn audit_attach(shared: &Shared, caller: &Caller, uuid: Uuid, subscriber_id: Option<i64>, port: u16, via: &str) {
    let action = match port {
        AMT_REDIRECTION | AMT_REDIRECTION_TLS => AuditAction::ConsoleSession,
        _ => AuditAction::RelayAttached,
    };
    let row = NewAudit {
        at: OffsetDateTime::now_utc(),
        actor_user_id: Some(caller.principal.user_id),
        action,
        machine_uuid: Some(uuid),
        subscriber_id,
        detail: format!("port {port} with token {:?} through gateway {via}", caller.name),
    };
    if let Err(err) = shared.store.append_audit(&row).await {
        warn!(%uuid, port, error = %err, "cannot append a relay's audit row");
    }
}

/// A stream to `port` of device `uuid`, and the instance holding its tunnel: held here, or by
/// another gateway of the fleet (then the stream is carried over the link); else the answer for
/// the technician.
pub(super) async fn open_device_stream(
    shared: &Shared,
    uuid: Uuid,
    port: u16,
    originator: std::net::SocketAddr,
) -> Result<(crate::stream::DeviceStream, String), Response> {
    match shared.registry.any(uuid) {
        Some(tunnel) => match tunnel.open_stream(port, originator, shared.channel_open_timeout()).await {
            Ok(stream) => Ok((stream, shared.instance.clone())),
            Err(refused) => Err(error(view::open_refused_status(shared, &refused), refused_code(&refused), refused)),
        },
        None => {
            let (instance, peers) = elsewhere(shared, uuid).await?;
            match peers.open_stream(&instance, uuid, port, originator).await {
                Ok(stream) => Ok((stream, instance)),
                Err(err) => {
                    warn!(%uuid, port, error = ?err, "stream through the fleet link failed");
                    Err(link_failure(&err))
                }
            }
        }
    }
}

/// A 403 when a technician closed the device's remote-fix session and none was opened since
/// (`tether session open`). A PC user who asked for help again (a user-initiated tunnel that
/// came up after the close) opens a new session by that.
pub(super) async fn session_closed_refusal(api: &Api, uuid: Uuid) -> Option<Response> {
    let shared = &api.shared;
    let closed = match shared.store.closed_session(uuid).await {
        Ok(closed) => closed?,
        Err(err) => return Some(super::store_unavailable(err)),
    };
    let asked_again = shared
        .registry
        .any(uuid)
        .is_some_and(|t| t.trigger_reason == crate::wsman::TRIGGER_USER_INITIATED && t.connected_since > closed.at);
    if asked_again {
        return None;
    }
    let message = format!(
        "{} closed the remote-fix session of device {uuid} at {}{}; technicians' connections to it are refused \
         until one opens a new session (`tether session open {uuid}`)",
        closed.by,
        closed.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        closed.message.as_deref().map(|m| format!(" ({m:?})")).unwrap_or_default(),
    );
    Some(rejection(api, StatusCode::FORBIDDEN, ApiRejection::SessionClosed, None, message))
}

/// The gateway of the fleet that holds `uuid`'s tunnel, when it is not this one, and the link to
/// it; else the answer for the technician (not connected, or no link configured).
pub(super) async fn elsewhere(shared: &Shared, uuid: Uuid) -> Result<(String, Peers), Response> {
    let holder = match shared.store.holder(uuid).await {
        Ok(holder) => holder,
        Err(err) => return Err(super::store_unavailable(err)),
    };
    match (holder, &shared.peers) {
        (Some(instance), Some(peers)) if instance != shared.instance => Ok((instance, peers.clone())),
        (Some(instance), None) if instance != shared.instance => Err(error(
            StatusCode::BAD_GATEWAY,
            "no_fleet_link",
            format!(
                "device {uuid} is connected to gateway {instance}, and this gateway has no fleet link (set \
                 fleet.internal_listen after `tether fleet init` or `join`); use that gateway's API"
            ),
        )),
        _ => Err(error(StatusCode::NOT_FOUND, "not_connected", OpenRefused::NotConnected(uuid))),
    }
}

/// The stable code of a refused channel open.
fn refused_code(refused: &OpenRefused) -> &'static str {
    match refused {
        OpenRefused::NotConnected(_) => "not_connected",
        OpenRefused::PortNotForwarded(_) => "port_not_forwarded",
        OpenRefused::TooManyChannels => "too_many_channels",
        OpenRefused::DeviceRefused(_) => "device_refused",
        OpenRefused::NotAllowed(_) => "not_allowed",
        OpenRefused::Timeout => "timeout",
        OpenRefused::TunnelGone => "tunnel_gone",
    }
}

/// The answer when the gateway holding a device could not be asked (or refused) over the
/// fleet link: its own status, `fleet_link` as the code.
fn link_failure(err: &crate::fleet::peers::LinkError) -> Response {
    let code = match err {
        crate::fleet::peers::LinkError::Store(_) => "store_unavailable",
        _ => "fleet_link",
    };
    error(err.status(), code, err)
}
