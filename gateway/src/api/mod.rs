//! The technician API (HTTPS, 8443) and the metrics endpoint (HTTP, 9464).
//!
//! - `GET /api/v1/devices` and `GET /api/v1/devices/{uuid}`: what the store knows of each device,
//!   with `connected` and `ports` taken from the live registry; the list holds what the caller
//!   may see (operators: every device; others: their subscribers' machines).
//! - `GET /api/v1/devices/{uuid}/tcp/{port}` (WebSocket): opens a stream to that device port and
//!   relays it (see `relay` for the framing and how a relay ends).
//! - `GET /api/v1/devices/{uuid}/redirections?active=BOOL&limit=N`: the AMT redirection sessions
//!   relayed to the device, newest first (`redirections`).
//! - `POST /api/v1/devices/{uuid}/power|redirection|boot|consent|rescue/…|session/…` and
//!   `GET …/actions`: the remote fix through AMT's WS-Management, every action recorded (`amt`).
//! - `POST|GET|DELETE /api/v1/devices/{uuid}/ider`: the gateway serving a rescue image of its
//!   signed content to the device over IDE-R (`ider`).
//! - `/api/v1/lan/…` and `POST /api/v1/devices/{uuid}/wake`: the appliance's LAN — scans, hosts
//!   found, Wake-on-LAN, AMT PCs adopted as devices of kind `lan` (`lan`).
//!
//! Technicians are admitted cheapest check first: the connection caps, in all and per source,
//! before TLS ([`serve`]); then per request the source's budget before any token lookup, the
//! token's format, its lookup, expiry, per-token rate, and the user it acts as (`admission`).
//! Every endpoint then asks the policy (`crate::policy`, default deny; `docs/accounts.md` maps
//! each endpoint to its action), which also checks the token's scope; a refusal is 403 with the
//! policy's stable `code`. For a relay, the cap on relays per token and device (`relays`). Live
//! relays end when their token is revoked or expires, or when the policy no longer lets their user
//! reach the machine (`relays::watch_tokens`). Every error is an [`ErrorBody`], JSON
//! `{"error": MESSAGE, "code": CODE}` with a stable code (`docs/api.md`), including axum's own
//! refusals (a path that does not parse: [`ApiPath`]; a method a route does not take; a route
//! that does not exist); refusals counted in `tether_api_rejected_total` add `"reason"` (the
//! label), and 429s for rate limits carry `Retry-After`. Successful answers are typed
//! (`schemas`, and the handlers' own structs), so that `GET /api/openapi.json` (`openapi`)
//! describes what they are.
//!
//! The web portal (`crate::portal`) is merged into the same router, at `/` and `/portal/…`.
//!
//! What it does not do: the relay loop (`relay`), or keep rate budgets (`limits`).

/// The JSON body of a request, or (from the handler) a 400 saying what is wrong with it.
macro_rules! body {
    ($body:expr) => {
        match $body {
            Ok(axum::Json(body)) => body,
            Err(rejection) => return $crate::api::bad_json(rejection),
        }
    };
}

mod accounts;
mod admission;
mod agents;
mod amt;
pub(crate) mod connection;
mod content;
mod ider;
mod input;
mod lan;
mod openapi;
mod redirections;
mod relays;
mod schemas;
mod silos;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::limits::{ConnectionCaps, SourceLimiter};
use crate::metrics::{ApiRejection, Listener};
use crate::policy::{Action, Resource};
use crate::relay::RelayLimits;
use crate::state::Shared;
use crate::store::{DevicePage, MAX_PAGE};
use crate::view;
use admission::Caller;
use connection::Connection;
use relays::LiveRelays;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What the API's handlers share: the daemon's state and the API's own limits and relay table.
#[derive(Debug)]
pub struct Api {
    shared: Arc<Shared>,
    sources: SourceLimiter,
    connections: Arc<ConnectionCaps>,
    relays: Arc<LiveRelays>,
    relay_limits: RelayLimits,
    /// Rescue images the gateway serves to devices over IDE-R (`ider`).
    ider: Arc<crate::content_ider::IderSessions>,
    /// Where links in mail point (the portal's public address).
    public_url: String,
    /// The time the account flows run at (moved forward only by tests).
    clock: crate::flows::Clock,
    /// The web portal on the same port (`crate::portal`).
    portal: Arc<crate::portal::Portal>,
    /// A root's signed revocation list, made at most once a second whoever asks.
    revocations: tokio::sync::Mutex<Option<(std::time::Instant, crate::silo::SignedRevocations)>>,
    /// The moves out of each silo, as last served (at most once a second per silo).
    #[allow(clippy::type_complexity)]
    moves: tokio::sync::Mutex<
        std::collections::HashMap<String, (std::time::Instant, Option<crate::silo::moves::MovesOut>)>,
    >,
}

impl Api {
    pub fn new(shared: Arc<Shared>) -> Arc<Api> {
        let api = &shared.config.api;
        Arc::new(Api {
            sources: SourceLimiter::new(
                api.requests_per_second_per_source,
                api.request_burst_per_source,
                shared.config.limits.max_tracked_sources,
            ),
            connections: Arc::new(ConnectionCaps::new(api.max_connections, api.max_connections_per_source)),
            relays: Arc::new(LiveRelays::default()),
            relay_limits: RelayLimits::from_config(api),
            ider: Arc::default(),
            public_url: shared.config.mail_public_url(),
            clock: crate::flows::Clock::default(),
            portal: crate::portal::Portal::new(Arc::clone(&shared)),
            revocations: tokio::sync::Mutex::new(None),
            moves: tokio::sync::Mutex::new(std::collections::HashMap::new()),
            shared,
        })
    }

    /// The portal on the API's port (tests look at its counters).
    #[cfg(test)]
    pub(crate) fn portal(&self) -> &Arc<crate::portal::Portal> {
        &self.portal
    }

    /// Relays open now.
    pub fn live_relays(&self) -> usize {
        self.relays.len()
    }
}

pub fn router(api: Arc<Api>) -> Router {
    let v1 = Router::new()
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{uuid}", get(show_device))
        .route("/api/v1/devices/{uuid}/tcp/{port}", get(relays::relay_tcp))
        .route("/api/v1/devices/{uuid}/redirections", get(redirections::list_redirections))
        .route("/api/v1/devices/{uuid}/actions", get(amt::actions))
        .route("/api/v1/devices/{uuid}/power", post(amt::power))
        .route("/api/v1/devices/{uuid}/redirection", post(amt::redirection))
        .route("/api/v1/devices/{uuid}/boot", post(amt::boot))
        .route("/api/v1/devices/{uuid}/consent", post(amt::consent))
        .route("/api/v1/devices/{uuid}/rescue/start", post(amt::rescue_start))
        .route("/api/v1/devices/{uuid}/rescue/boot", post(amt::rescue_boot))
        .route("/api/v1/devices/{uuid}/rescue/finish", post(amt::rescue_finish))
        .route("/api/v1/devices/{uuid}/session/close", post(amt::session_close))
        .route("/api/v1/devices/{uuid}/session/open", post(amt::session_open))
        .route("/api/v1/devices/{uuid}/amt/forget", post(amt::forget))
        .route("/api/v1/devices/{uuid}/ider", get(ider::status).post(ider::start).delete(ider::stop))
        .route("/api/v1/devices/{uuid}/wake", post(lan::wake_device))
        .route("/api/v1/lan/scans", post(lan::start_scan))
        .route("/api/v1/lan/scans/{id}", get(lan::show_scan))
        .route("/api/v1/lan/hosts", get(lan::hosts))
        .route("/api/v1/lan/wake", post(lan::wake_mac))
        .route("/api/v1/lan/devices", get(lan::list_devices).post(lan::adopt_device))
        .route("/api/v1/lan/devices/{uuid}/forget", post(lan::forget_device))
        .route("/api/v1/devices/{uuid}/audit", get(accounts::machine_audit))
        .route("/api/v1/devices/{uuid}/agent", get(agents::show_agent))
        .route("/api/v1/devices/{uuid}/agent/revoke", post(agents::revoke))
        .route("/api/v1/devices/{uuid}/telemetry", get(agents::telemetry))
        .route("/api/v1/devices/{uuid}/health", get(agents::health))
        .route("/api/v1/devices/{uuid}/support-actions", get(support::list_actions).post(support::create_action))
        .route("/api/v1/support-actions/{id}", get(support::show_action))
        .route("/api/v1/messages", get(support::list_messages).post(support::send_message))
        .route("/api/v1/messages/{id}", get(support::show_message))
        .route("/api/v1/me", get(accounts::me))
        .route("/api/v1/me/email", post(accounts::change_email))
        .route("/api/v1/email-changes/confirm", post(accounts::confirm_email))
        .route("/api/v1/users", get(accounts::list_users).post(accounts::create_user))
        .route("/api/v1/users/{id}/suspend", post(accounts::suspend_user))
        .route("/api/v1/users/{id}/unsuspend", post(accounts::unsuspend_user))
        .route("/api/v1/users/{id}/audit", get(accounts::user_audit))
        .route("/api/v1/subscribers", get(accounts::list_subscribers).post(accounts::register_subscriber))
        .route("/api/v1/subscribers/{id}", get(accounts::show_subscriber))
        .route("/api/v1/subscribers/{id}/terminate", post(accounts::terminate))
        .route("/api/v1/subscribers/{id}/machines", get(accounts::subscriber_machines).post(accounts::enroll))
        .route("/api/v1/subscribers/{id}/contacts", get(accounts::contacts).post(accounts::invite))
        .route("/api/v1/subscribers/{id}/contacts/{contact}", delete(accounts::remove_contact))
        .route("/api/v1/subscribers/{id}/leave", post(accounts::leave))
        .route("/api/v1/subscribers/{id}/mps-account", post(accounts::mps_account))
        .route("/api/v1/silos", get(silos::list))
        .route("/api/v1/content", get(content::list))
        .route("/api/v1/content/{name}", get(content::get_item))
        .route("/api/v1/invitations/{guid}", get(accounts::show_invitation))
        .route("/api/v1/invitations/{guid}/accept", post(accounts::accept))
        // Before the layer, so that a wrong method, too, is answered only after the token.
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(Arc::clone(&api), admission::require_token))
        .layer(middleware::map_response_with_state(Arc::clone(&api), count_store_failures));
    let portal = crate::portal::router(Arc::clone(&api.portal));
    Router::new()
        .route(
            "/health",
            get(|| async {
                "ok
"
            }),
        )
        .route("/api/openapi.json", get(openapi::openapi_json))
        .route(crate::silo::REVOCATIONS_PATH, get(silos::revocations))
        .route(crate::silo::moves::MOVES_PATH, get(silos::moves))
        .route(crate::silo::moves::MOVED_PATH, post(silos::moved))
        .route(crate::silo::aggregates::AGGREGATES_PATH, post(silos::take_aggregates))
        .route(crate::silo::actions::ACTIONS_PATH, post(silos::actions))
        .route(crate::content::CONTENT_PATH, post(silos::content))
        .merge(v1)
        .with_state(api)
        .merge(portal)
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
}

/// Serves the API over TLS until shutdown, and watches live relays' tokens.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    serve_api(listener, Some(acceptor), Api::new(shared)).await
}

/// The accept loop; without an acceptor (tests), plain HTTP.
async fn serve_api(listener: TcpListener, acceptor: Option<TlsAcceptor>, api: Arc<Api>) {
    let app = router(Arc::clone(&api));
    tokio::spawn(relays::watch_tokens(Arc::clone(&api)));
    tokio::spawn(crate::portal::housekeeping(Arc::clone(&api.portal)));
    let mut shutdown = api.shared.shutdown.clone();
    let mut backoff = crate::files::AcceptBackoff::new(Listener::Api);
    loop {
        let (mut tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    backoff.failed(&err, &api.shared.metrics).await;
                    continue;
                }
            },
            _ = crate::state::stopping(&mut shutdown) => return,
        };
        backoff.accepted();
        // Technicians may use half of the files devices leave in reserve.
        let Some(file) = api.shared.files.try_take(crate::files::FileUse::Technician) else {
            api.shared.metrics.api_rejected(ApiRejection::FileLimit);
            debug!(%peer, "API connection refused: the open-files budget is spent");
            continue;
        };
        let (api, app, acceptor) = (Arc::clone(&api), app.clone(), acceptor.clone());
        if api.shared.config.proxy.trusted.contains(peer.ip()) {
            // Behind a load balancer: the technician's address (for the caps and every per-source
            // budget) is in its PROXY header.
            tokio::spawn(async move {
                let timeout = Duration::from_millis(api.shared.config.proxy.header_timeout_ms);
                match crate::proxy_header::read_header(&mut tcp, timeout).await {
                    Ok(Some(remote)) => accept(api, app, acceptor, tcp, remote).await,
                    Ok(None) => {}
                    Err(err) => warn!(balancer = %peer, error = %err, "bad PROXY header from a load balancer"),
                }
                drop(file);
            });
            continue;
        }
        tokio::spawn(async move {
            accept(api, app, acceptor, tcp, peer).await;
            drop(file);
        });
    }
}

/// One technician connection: the caps (before TLS, so that a source holding many connections
/// costs no handshakes), TCP keepalives, TLS, then HTTP.
async fn accept(api: Arc<Api>, app: Router, acceptor: Option<TlsAcceptor>, tcp: TcpStream, remote: SocketAddr) {
    let slot = match api.connections.try_enter(remote.ip()) {
        Ok(slot) => slot,
        Err(cap) => {
            api.shared.metrics.api_rejected(ApiRejection::ConnectionCap);
            debug!(%remote, "API connection refused: {cap} (api.max_connections, api.max_connections_per_source)");
            return;
        }
    };
    // A technician who vanishes (laptop asleep, VPN gone) holds a relay, a device channel and
    // perhaps AMT's only redirection session.
    crate::limits::detect_dead_peer(&tcp);
    let connection = Connection::new(remote, slot);
    match acceptor {
        None => serve_connection(tcp, connection, app).await,
        Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => serve_connection(tls, connection, app).await,
            Ok(Err(err)) => debug!(%remote, error = %err, "API TLS handshake failed"),
            Err(_) => debug!(%remote, "API TLS handshake timed out"),
        },
    }
}

/// Serves HTTP/1.1 on one connection, each request tagged with the [`Connection`].
async fn serve_connection<IO>(io: IO, connection: Connection, app: Router)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = connection.remote();
    let service = tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(connection.clone());
        app.clone().oneshot(request)
    });
    // HTTP/1.1 only (the ALPN we offer); a client that never finishes its request headers,
    // including the first byte, is cut off.
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    if let Err(err) = served.await {
        debug!(%remote, error = %err, "API connection ended with an error");
    }
}

/// Serves `/metrics` in plain HTTP until the task is aborted.
pub async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(shared): State<Arc<Shared>>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render())
            }),
        )
        .with_state(shared);
    if let Err(err) = axum::serve(listener, app).await {
        warn!(error = %err, "metrics listener stopped");
    }
}

/// A store failure: logged in full, answered without details (they name the database).
fn store_unavailable(err: crate::store::StoreError) -> Response {
    warn!(error = %err, "store query failed while answering the API");
    let mut response = error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store_unavailable",
        "the gateway's store is unavailable; see the gateway's log",
    );
    response.extensions_mut().insert(StoreFailed);
    response
}

/// Marks an answer that a store failure made (`tether_store_errors_total{task="api"}`).
#[derive(Debug, Clone, Copy)]
struct StoreFailed;

async fn count_store_failures(State(api): State<Arc<Api>>, response: Response) -> Response {
    if response.extensions().get::<StoreFailed>().is_some() {
        api.shared.metrics.store_error(crate::metrics::StoreTask::Api);
    }
    response
}

/// A body that is not JSON, or not the JSON this endpoint takes: 400 `bad_request`.
fn bad_json(rejection: axum::extract::rejection::JsonRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        BAD_REQUEST,
        format!("the request body is not what this endpoint takes: {}", rejection.body_text()),
    )
}

/// The code of every answer saying the path, query or body is not what the endpoint takes.
const BAD_REQUEST: &str = "bad_request";

/// Every error answer: what went wrong and what to do, with a stable code (`docs/api.md`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody {
    /// A message a person can act on.
    pub error: String,
    /// A stable code a program can act on: the policy's, a flow's, or the API's own
    /// (`docs/api.md` lists them).
    #[schema(min_length = 1, example = "not_related")]
    pub code: &'static str,
    /// The label the refusal is counted under in `tether_api_rejected_total`, when it is counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The AMT step that failed (WS-Management answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<&'static str>,
}

impl ErrorBody {
    pub(super) fn new(code: &'static str, message: impl std::fmt::Display) -> ErrorBody {
        ErrorBody { error: message.to_string(), code, reason: None, step: None }
    }

    pub(super) fn into_response(self, status: StatusCode) -> Response {
        (status, Json(self)).into_response()
    }
}

/// The refusals every endpoint may answer, for the OpenAPI document (`openapi`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only described, never built: the handlers answer with `rejection` and `Caller::refusal`.
pub(super) enum Refusals {
    /// No token, or not a valid one (`code`: `invalid_token`, `expired_token`).
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// Refused by the policy, or the device's session is closed (`code` says why).
    #[response(status = 403)]
    Refused(ErrorBody),
    /// Too many requests from this source or token (see `Retry-After`).
    #[response(status = 429)]
    TooMany(ErrorBody),
}

/// An error answer with its stable `code`.
fn error(status: StatusCode, code: &'static str, message: impl std::fmt::Display) -> Response {
    ErrorBody::new(code, message).into_response(status)
}

/// A refusal counted in `tether_api_rejected_total`, with its reason in the body (also its
/// code); `retry_after` becomes the `Retry-After` header (whole seconds, at least 1).
fn rejection(
    api: &Api,
    status: StatusCode,
    reason: ApiRejection,
    retry_after: Option<Duration>,
    message: impl std::fmt::Display,
) -> Response {
    api.shared.metrics.api_rejected(reason);
    let body = ErrorBody { reason: Some(reason.as_str()), ..ErrorBody::new(reason.as_str(), message) };
    let mut response = body.into_response(status);
    if let Some(wait) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(wait)));
    }
    response
}

/// [`Path`], refused like everything else: a path parameter that does not parse (`/users/abc`)
/// is 400 `bad_request` with an [`ErrorBody`], not axum's plain text.
pub(super) struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(bad_path(&rejection)),
        }
    }
}

fn bad_path(rejection: &axum::extract::rejection::PathRejection) -> Response {
    let status = rejection.status();
    // A route whose parameters do not fit its handler is the gateway's own bug.
    let code = if status.is_server_error() { "internal" } else { BAD_REQUEST };
    error(status, code, format!("the path is not what this endpoint takes: {}", rejection.body_text()))
}

/// A query that is not what the endpoint takes: 400 `bad_request`, saying what it takes.
fn bad_query(takes: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, BAD_REQUEST, format!("the query takes {takes}"))
}

/// A path that names something that is not a UUID.
fn not_a_uuid(text: &str) -> Response {
    error(StatusCode::BAD_REQUEST, BAD_REQUEST, format!("{text} is not a UUID"))
}

/// Any path no route serves: 404 `not_found`, as JSON.
async fn no_route(uri: axum::http::Uri) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", format!("nothing is served at {}", uri.path()))
}

/// A route asked with a method it does not take: 405 `method_not_allowed` (axum adds `Allow`).
async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let message = format!("{} does not take {method} (the Allow header lists what it takes)", uri.path());
    error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
}

/// Whole seconds to wait, rounded up, at least 1.
fn retry_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// `?limit=N&after=UUID`: a page of the device list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Devices on the page (default and most: 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The last UUID of the page before (from the `Link` header).
    after: Option<Uuid>,
}

/// Pages of at most [`MAX_PAGE`] devices in UUID order; a full page carries a `Link: <…>;
/// rel="next"` header to the next one (the body stays a JSON array).
#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    summary = "The devices the caller may see, a page at a time",
    params(PageQuery),
    responses(
        (status = 200, description = "the devices, in UUID order; a full page carries a `Link: <…>; rel=\"next\"` header to the next",
         body = Vec<schemas::DeviceView>,
         headers(("Link" = String, description = "the next page, when this one is full"))),
        (status = 400, description = "the query is not what this endpoint takes", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
async fn list_devices(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    if let Some(refused) = caller.authorize(&api, Action::ListMachines, Resource::Gateway, "listing devices") {
        return refused;
    }
    let Ok(Query(query)) = query else {
        return bad_query(format!("limit=N (1 to {MAX_PAGE}) and after=UUID"));
    };
    let limit = query.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return bad_query(format!("limit=1 to {MAX_PAGE}, not {limit}"));
    }
    let shared = &api.shared;
    let devices = if caller.is_operator() {
        match all_devices(shared, query.after, limit).await {
            Ok(devices) => devices,
            Err(err) => return store_unavailable(err),
        }
    } else {
        match visible_devices(shared, &caller, query.after, limit).await {
            Ok(devices) => devices,
            Err(err) => return store_unavailable(err),
        }
    };
    let full = devices.len() >= limit as usize;
    let devices: Vec<(Uuid, Value)> = devices.into_iter().take(limit as usize).collect();
    let last = devices.last().map(|(uuid, _)| *uuid);
    let mut response = Json(Value::Array(devices.into_iter().map(|(_, v)| v).collect())).into_response();
    if let (true, Some(last)) = (full, last) {
        let link = format!("</api/v1/devices?limit={limit}&after={last}>; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    response
}

/// An operator's page: every device the gateway knows, enrolled for a subscriber or not.
async fn all_devices(
    shared: &Shared,
    after: Option<Uuid>,
    limit: u32,
) -> Result<BTreeMap<Uuid, Value>, crate::store::StoreError> {
    let records = shared.store.list_devices(DevicePage { after, limit }).await?;
    let adopted = shared.store.lan_devices(None, after, limit).await?;
    // Each source gives its first `limit` devices after `after`; merged, the first `limit` are
    // this page: CIRA records, LAN PCs adopted, and live tunnels whose first records are still on
    // their way to the store.
    let mut adopted: std::collections::HashMap<Uuid, _> = adopted.into_iter().map(|a| (a.uuid, a)).collect();
    let mut devices: BTreeMap<Uuid, Value> = BTreeMap::new();
    for record in records {
        let uuid = record.uuid;
        devices.insert(uuid, view::device_view(shared, Some(record), adopted.remove(&uuid), uuid));
    }
    for (uuid, lan) in adopted {
        devices.insert(uuid, view::device_view(shared, None, Some(lan), uuid));
    }
    for live in shared.registry.snapshot() {
        if !devices.contains_key(&live.uuid) && after.is_none_or(|after| live.uuid > after) {
            devices.insert(live.uuid, view::device_view(shared, None, None, live.uuid));
        }
    }
    Ok(devices)
}

/// Anyone else's page: the machines of the subscribers the principal sees
/// (`policy::visible_subscribers`), connected or not; one query for the machines and two per
/// machine for what is known of it.
async fn visible_devices(
    shared: &Shared,
    caller: &Caller,
    after: Option<Uuid>,
    limit: u32,
) -> Result<BTreeMap<Uuid, Value>, crate::store::StoreError> {
    let machines = shared.store.visible_machines_with(&caller.principal, &caller.relations, after, limit).await?;
    let mut devices = BTreeMap::new();
    for machine in machines {
        let record = shared.store.device(machine.uuid).await?;
        let lan = shared.store.lan_device(machine.uuid).await?;
        devices.insert(machine.uuid, view::device_view(shared, record, lan, machine.uuid));
    }
    Ok(devices)
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{uuid}",
    tag = "devices",
    summary = "One device",
    params(("uuid" = Uuid, Path, description = "the device's SMBIOS/AMT UUID")),
    responses(
        (status = 200, description = "the device, and the gateway holding it in the `X-Tether-Instance` header",
         body = schemas::DeviceView),
        (status = 400, description = "the UUID is not one", body = ErrorBody),
        (status = 404, description = "no device with this UUID ever connected (`no_such_device`)", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
async fn show_device(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(uuid): ApiPath<String>,
) -> Response {
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return not_a_uuid(&uuid);
    };
    if let Some(refused) = caller.authorize_machine(&api, Action::ViewMachine, uuid, "showing a device").await {
        return refused;
    }
    let shared = &api.shared;
    let record = match shared.store.device(uuid).await {
        Ok(record) => record,
        Err(err) => return store_unavailable(err),
    };
    let lan = match shared.store.lan_device(uuid).await {
        Ok(lan) => lan,
        Err(err) => return store_unavailable(err),
    };
    if record.is_none() && lan.is_none() && shared.registry.any(uuid).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "no_such_device",
            format!("no device {uuid} has ever connected to this gateway"),
        );
    }
    let held_elsewhere = shared.registry.any(uuid).is_none()
        && (record.as_ref().is_some_and(|r| {
            r.connected_since.is_some() && r.instance.as_deref().is_some_and(|i| i != shared.instance)
        }) || lan.as_ref().is_some_and(|l| l.instance != shared.instance));
    if held_elsewhere {
        // The gateway holding the tunnel knows its live state (ports, address).
        if let Ok((instance, peers)) = relays::elsewhere(shared, uuid).await {
            match peers.device(&instance, uuid).await {
                Ok((StatusCode::OK, view)) => return with_instance(Json(view).into_response(), &instance),
                Ok((status, view)) => warn!(%uuid, %instance, %status, answer = %view, "device view from its gateway"),
                Err(err) => warn!(%uuid, %instance, error = %err, "cannot ask the gateway holding a device"),
            }
        }
    }
    let instance = record
        .as_ref()
        .and_then(|r| r.instance.clone())
        .or_else(|| lan.as_ref().map(|l| l.instance.clone()))
        .unwrap_or_else(|| shared.instance.clone());
    with_instance(Json(view::device_view(shared, record, lan, uuid)).into_response(), &instance)
}

/// Names the gateway holding (or last holding) the device in a response header.
fn with_instance(mut response: Response, instance: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(instance) {
        response.headers_mut().insert(crate::fleet::peers::INSTANCE_HEADER, value);
    }
    response
}

#[cfg(test)]
mod accounts_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
