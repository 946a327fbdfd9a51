//! The link between gateways of a fleet: HTTP/1.1 over mutual TLS under the fleet CA (TLS 1.3,
//! ALPN `tether-fleet/1`), on `fleet.internal_listen`. A gateway asks the one that holds a
//! device's tunnel to:
//!
//! - `GET /internal/v1/devices/{uuid}`: show the device as that gateway sees it;
//! - `GET /internal/v1/devices/{uuid}/tcp/{port}` with `Upgrade: tether-stream`: open a stream
//!   to a device port; after `101 Switching Protocols` the connection carries the stream's bytes
//!   both ways (a half-close is an EOF). On the asking side the connection becomes a
//!   [`DeviceStream`] like any other ([`bridge`]), so a technician's relay runs unchanged, with its
//!   limits, on the gateway the technician reached;
//! - `POST /internal/v1/devices/{uuid}/claim`: a device connected to the asking gateway claims a
//!   UUID this one holds. The same liveness rule as on one gateway: if the live tunnel answers a
//!   probe within `devices.liveness_timeout_ms`, `409` with its address (the claim is refused);
//!   otherwise the tunnel is closed as replaced and `200`.
//!
//! A peer is whoever presents a certificate from the fleet CA; its instance id is the
//! certificate's name. This is the answering side; the asking side is `fleet::peers`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::peers::{ClaimRequest, TLS_TIMEOUT, UPGRADE};
use crate::journal::DeviceEvent;
use crate::metrics::CloseReason;
use crate::registry::{Liveness, OpenRefused, TunnelKind};
use crate::state::Shared;
use crate::view;

/// Link connections open at once (each relayed stream holds one): beyond, new ones are refused.
const MAX_LINK_CONNECTIONS: usize = 4096;

/// Who is calling, from its certificate.
#[derive(Debug, Clone)]
struct Peer {
    instance: String,
}

/// Serves the link until shutdown.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/internal/v1/devices/{uuid}", get(show))
        .route("/internal/v1/devices/{uuid}/tcp/{port}", get(open))
        .route("/internal/v1/devices/{uuid}/claim", post(claim))
        .with_state(Arc::clone(&shared));
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_LINK_CONNECTIONS));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    warn!(error = %err, "fleet link accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => return,
        };
        // Link connections from anyone who can reach the port: bounded before the handshake.
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            warn!(%remote, "fleet link connection refused: {MAX_LINK_CONNECTIONS} open already");
            continue;
        };
        crate::limits::detect_dead_peer(&tcp);
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => return debug!(%remote, error = %err, "fleet link TLS handshake refused"),
                Err(_) => return debug!(%remote, "fleet link TLS handshake timed out"),
            };
            let Some(instance) = super::keys::peer_instance(tls.get_ref().1.peer_certificates()) else {
                return warn!(%remote, "fleet link peer presented no usable certificate");
            };
            let peer = Peer { instance };
            let service = tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(peer.clone());
                app.clone().oneshot(request)
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), hyper_util::service::TowerToHyperService::new(service))
                .with_upgrades();
            if let Err(err) = served.await {
                debug!(%remote, error = %err, "fleet link connection ended with an error");
            }
        });
    }
}

fn link_error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn show(State(shared): State<Arc<Shared>>, Path(uuid): Path<Uuid>) -> Response {
    let record = match shared.store.device(uuid).await {
        Ok(record) => record,
        Err(err) => return link_error(StatusCode::INTERNAL_SERVER_ERROR, err),
    };
    let lan = match shared.store.lan_device(uuid).await {
        Ok(lan) => lan,
        Err(err) => return link_error(StatusCode::INTERNAL_SERVER_ERROR, err),
    };
    if record.is_none() && lan.is_none() && shared.registry.any(uuid).is_none() {
        return link_error(StatusCode::NOT_FOUND, format!("no device {uuid}"));
    }
    Json(view::device_view(&shared, record, lan, uuid)).into_response()
}

async fn claim(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(uuid): Path<Uuid>,
    Json(request): Json<ClaimRequest>,
) -> Response {
    let Some(current) = shared.registry.get(uuid, TunnelKind::Cira) else {
        return Json(json!({ "held": false })).into_response();
    };
    match current.probe(shared.liveness_timeout()).await {
        Some(Liveness::Alive) | Some(Liveness::Busy) => {
            (StatusCode::CONFLICT, Json(json!({ "live": current.remote.to_string() }))).into_response()
        }
        None => {
            info!(%uuid, claimant = %request.claimant, via = %peer.instance,
                "device claimed through another gateway and its tunnel here did not answer: replacing it");
            if shared.registry.remove(uuid, TunnelKind::Cira, current.id) {
                current.close(CloseReason::Replaced);
                // The closing tunnel leaves the record to its successor (as a replaced one does);
                // end this gateway's claim on it now, in case the claimant's admission fails.
                shared.journal.record(DeviceEvent::Disconnected {
                    uuid,
                    at: time::OffsetDateTime::now_utc(),
                    reason: format!("replaced by a connection through gateway {}", peer.instance),
                });
            }
            Json(json!({ "held": false, "replaced": true })).into_response()
        }
    }
}

async fn open(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path((uuid, port)): Path<(Uuid, u16)>,
    mut request: Request,
) -> Response {
    let wants_stream = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE));
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>().filter(|_| wants_stream)
    else {
        return link_error(StatusCode::UPGRADE_REQUIRED, format!("this endpoint upgrades to {UPGRADE}"));
    };
    let originator = request
        .headers()
        .get("x-tether-originator")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let Some(tunnel) = shared.registry.any(uuid) else {
        return link_error(StatusCode::NOT_FOUND, OpenRefused::NotConnected(uuid));
    };
    let mut device = match tunnel.open_stream(port, originator, shared.channel_open_timeout()).await {
        Ok(stream) => stream,
        Err(refused) => return link_error(view::open_refused_status(&shared, &refused), refused),
    };
    let instance = peer.instance.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let mut upgraded = TokioIo::new(upgraded);
        match tokio::io::copy_bidirectional(&mut upgraded, &mut device).await {
            Ok((to_device, from_device)) => {
                debug!(%uuid, port, via = %instance, to_device, from_device, "fleet stream closed")
            }
            Err(err) => debug!(%uuid, port, via = %instance, error = %err, "fleet stream ended with an error"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(UPGRADE));
    response
}
