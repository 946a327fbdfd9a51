//! The technician API (HTTPS, 8443) and the metrics endpoint (HTTP, 9464).
//!
//! - `GET /api/v1/devices` and `GET /api/v1/devices/{uuid}`: what the store knows of each device,
//!   with `connected` and `ports` taken from the live registry.
//! - `GET /api/v1/devices/{uuid}/tcp/{port}` (WebSocket): opens a channel to that device port and
//!   relays bytes both ways (see `relay` for the framing).
//!
//! Every `/api` request carries `Authorization: Bearer TOKEN`; tokens are stored hashed, and each
//! token has its own request rate limit. What it does not do: the relay loop itself (`relay`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::auth;
use crate::registry::OpenRefused;
use crate::relay;
use crate::state::Shared;

/// API connections served at once.
const MAX_API_CONNECTIONS: usize = 4096;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The technician's address, attached to each request of a connection.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

/// The token a request authenticated with.
#[derive(Debug, Clone)]
struct Caller {
    name: String,
}

pub fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{uuid}", get(show_device))
        .route("/api/v1/devices/{uuid}/tcp/{port}", get(relay_tcp))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), require_token));
    Router::new().route("/health", get(|| async { "ok\n" })).merge(api).with_state(shared)
}

/// Serves the API over TLS until the task is aborted.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let app = router(Arc::clone(&shared));
    let slots = Arc::new(Semaphore::new(MAX_API_CONNECTIONS));
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                warn!(error = %err, "API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(%remote, "API connection refused: too many open connections");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // A technician who vanishes (laptop asleep, VPN gone) holds a relay, an APF channel and
        // perhaps AMT's only redirection session: let TCP find out within about two minutes.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        let socket = socket2::SockRef::from(&tcp);
        let _ = socket.set_tcp_keepalive(&keepalive);
        #[cfg(target_os = "linux")]
        let _ = socket.set_tcp_user_timeout(Some(Duration::from_secs(90)));
        let acceptor = acceptor.clone();
        let app = app.clone().layer(Extension(Peer(remote)));
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => return debug!(%remote, error = %err, "API TLS handshake failed"),
                Err(_) => return debug!(%remote, "API TLS handshake timed out"),
            };
            let service = TowerToHyperService::new(app);
            // HTTP/1.1 only (the ALPN we offer); a client that never finishes its request headers,
            // including the first byte, is cut off.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            if let Err(err) = connection.await {
                debug!(%remote, error = %err, "API connection ended with an error");
            }
            drop(slot);
        });
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

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn require_token(State(shared): State<Arc<Shared>>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return error(StatusCode::UNAUTHORIZED, "missing bearer token (create one with `tether token create NAME`)");
    };
    let hash = auth::hash_token(token);
    let store = Arc::clone(&shared.store);
    let record = match tokio::task::spawn_blocking(move || store.token_by_hash(&hash)).await {
        Ok(Ok(record)) => record,
        _ => return error(StatusCode::INTERNAL_SERVER_ERROR, "token store unavailable"),
    };
    let Some(record) = record else {
        return error(StatusCode::UNAUTHORIZED, "unknown token");
    };
    if !shared.limiter.allow_api(record.id) {
        shared.metrics.api_request_limited();
        return error(StatusCode::TOO_MANY_REQUESTS, "request rate limit for this token exceeded; retry shortly");
    }
    request.extensions_mut().insert(Caller { name: record.name });
    next.run(request).await
}

/// A device as the API shows it: the stored record, with live state from the registry.
fn device_view(shared: &Shared, record: Option<Value>, uuid: Uuid) -> Value {
    let live = shared.registry.any(uuid);
    let mut view = record.unwrap_or_else(|| json!({ "uuid": uuid }));
    if let Value::Object(map) = &mut view {
        map.insert("connected".into(), Value::Bool(live.is_some()));
        if let Some(live) = live {
            map.insert("ports".into(), json!(live.ports()));
            map.insert("remote_addr".into(), json!(live.remote.to_string()));
        } else if !map.contains_key("ports") {
            map.insert("ports".into(), json!([]));
        }
        map.entry("last_hello").or_insert(Value::Null);
    }
    view
}

async fn list_devices(State(shared): State<Arc<Shared>>) -> Response {
    let store = Arc::clone(&shared.store);
    let records = match tokio::task::spawn_blocking(move || store.list_devices()).await {
        Ok(Ok(records)) => records,
        Ok(Err(err)) => return error(StatusCode::INTERNAL_SERVER_ERROR, err),
        Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, err),
    };
    let mut seen = std::collections::HashSet::new();
    let mut devices: Vec<Value> = records
        .into_iter()
        .map(|record| {
            seen.insert(record.uuid);
            let uuid = record.uuid;
            device_view(&shared, serde_json::to_value(record).ok(), uuid)
        })
        .collect();
    // Tunnels whose first records are still on their way to the store.
    for live in shared.registry.snapshot().into_iter().filter(|t| t.kind == crate::registry::TunnelKind::Cira) {
        if !seen.contains(&live.uuid) {
            devices.push(device_view(&shared, None, live.uuid));
        }
    }
    Json(Value::Array(devices)).into_response()
}

async fn show_device(State(shared): State<Arc<Shared>>, Path(uuid): Path<String>) -> Response {
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return error(StatusCode::BAD_REQUEST, format!("{uuid} is not a UUID"));
    };
    let store = Arc::clone(&shared.store);
    let record = match tokio::task::spawn_blocking(move || store.device(uuid)).await {
        Ok(Ok(record)) => record,
        Ok(Err(err)) => return error(StatusCode::INTERNAL_SERVER_ERROR, err),
        Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, err),
    };
    if record.is_none() && shared.registry.any(uuid).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no device {uuid} has ever connected to this gateway"));
    }
    Json(device_view(&shared, record.and_then(|r| serde_json::to_value(r).ok()), uuid)).into_response()
}

async fn relay_tcp(
    State(shared): State<Arc<Shared>>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(caller): Extension<Caller>,
    Path((uuid, port)): Path<(String, u16)>,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return error(StatusCode::BAD_REQUEST, format!("{uuid} is not a UUID"));
    };
    let Some(tunnel) = shared.registry.any(uuid) else {
        return error(StatusCode::NOT_FOUND, OpenRefused::NotConnected(uuid));
    };
    let end = match tunnel.open_stream(port, peer, shared.channel_open_timeout()).await {
        Ok(end) => end,
        Err(refused) => {
            let status = match refused {
                OpenRefused::NotConnected(_) | OpenRefused::TunnelGone => StatusCode::NOT_FOUND,
                OpenRefused::PortNotForwarded(_) => StatusCode::CONFLICT,
                OpenRefused::TooManyChannels => StatusCode::SERVICE_UNAVAILABLE,
                OpenRefused::DeviceRefused(_) => StatusCode::BAD_GATEWAY,
                OpenRefused::Timeout => {
                    shared.metrics.channel_open_refused(crate::metrics::ChannelRefusal::Timeout);
                    StatusCode::GATEWAY_TIMEOUT
                }
            };
            return error(status, refused);
        }
    };
    info!(%uuid, port, technician = %caller.name, from = %peer, "relay opened");
    let limits = relay::RelayLimits::from_config(&shared.config.api);
    relay::limit_frames(ws, &limits).on_upgrade(move |socket| async move {
        // Nothing stops a relay from outside yet.
        let (_, stop) = tokio::sync::oneshot::channel();
        let outcome = relay::run(socket, end, limits, stop).await;
        shared.metrics.relay_closed(outcome.end);
        info!(
            %uuid,
            port,
            to_device = outcome.to_device,
            from_device = outcome.from_device,
            duration_ms = outcome.duration.as_millis() as u64,
            reason = outcome.end.as_str(),
            "relay closed"
        );
    })
}
