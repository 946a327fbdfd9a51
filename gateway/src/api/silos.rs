//! A root's side of its maintenance silos (`docs/silos.md`):
//!
//! | endpoint | who |
//! |---|---|
//! | `GET /silo/v1/revocations` | anyone: the serials the root revoked, signed by it |
//! | `GET /silo/v1/moves?from=SILO` | anyone: the moves out of a silo, each order signed by the root |
//! | `POST /silo/v1/moved` | a silo, its body signed with its key: the moves it took over |
//! | `POST /silo/v1/aggregates` | a silo, its body signed with its key: its aggregates |
//! | `POST /silo/v1/content` | a silo, its body signed with its key: a content item from an offset |
//! | `GET /api/v1/silos` | `ViewSilos` (operators): the silos, their last aggregates and the sum |
//!
//! A maintenance silo answers none of the `/silo/v1` ones (404).
//!
//! What it does not do: sign or check (`silo`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use tracing::warn;

use super::admission::Caller;
use super::Refusals;
use super::{bad_json, error, store_unavailable, Api, BAD_REQUEST};
use crate::policy::{Action, Resource};
use crate::silo::aggregates::{AcrossSilos, Aggregates};
use crate::silo::moves::{ReportError, SiloReport};

/// A root's revocation list, signed, for its maintenance silos to pull: public (it names only
/// serials), so without a token; made at most once a second. A maintenance silo has none.
pub(super) async fn revocations(State(api): State<Arc<Api>>) -> Response {
    if api.shared.silo.role() == crate::silo::Role::Maintenance {
        return error(StatusCode::NOT_FOUND, "not_found", "a maintenance silo publishes no revocation list");
    }
    let mut cached = api.revocations.lock().await;
    if let Some((at, signed)) = &*cached {
        if at.elapsed() < Duration::from_secs(1) {
            return Json(signed.clone()).into_response();
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let serials = match api.shared.store.revoked_agent_serials(now, crate::silo::MAX_REVOKED).await {
        Ok(serials) => serials,
        Err(err) => return store_unavailable(err),
    };
    let list = crate::silo::RevocationList { issued_at: now.unix_timestamp(), serials };
    let signed = crate::silo::SignedRevocations::sign(&api.shared.agent_keys, &list);
    *cached = Some((std::time::Instant::now(), signed.clone()));
    Json(signed).into_response()
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct MovesQuery {
    from: String,
}

/// Silos the moves cache holds at most (past it, it starts again).
const MOVES_CACHED: usize = 256;

/// A root's moves out of silo `from`, for that silo to pull: each order is signed by the root,
/// so without a token; made at most once a second per silo.
pub(super) async fn moves(State(api): State<Arc<Api>>, query: Result<Query<MovesQuery>, QueryRejection>) -> Response {
    if api.shared.silo.role() == crate::silo::Role::Maintenance {
        return error(StatusCode::NOT_FOUND, "not_found", "a maintenance silo orders no moves");
    }
    let Ok(Query(MovesQuery { from })) = query else {
        return error(StatusCode::BAD_REQUEST, BAD_REQUEST, "from=SILO is required");
    };
    if crate::silo::check_name(&from).is_err() {
        return error(StatusCode::BAD_REQUEST, BAD_REQUEST, "from= is not a silo name");
    }
    let mut cached = api.moves.lock().await;
    if let Some((at, moves)) = cached.get(&from) {
        if at.elapsed() < Duration::from_secs(1) {
            return match moves {
                Some(moves) => Json(moves.clone()).into_response(),
                None => no_such_silo(&from),
            };
        }
    }
    // Unknown names are cached too, so that made-up ones cost one query a second each at most.
    let moves = match api.shared.store.silo(&from).await {
        Ok(None) => None,
        Ok(Some(_)) => match crate::silo::moves::served(&api.shared.store, &from).await {
            Ok(moves) => Some(moves),
            Err(err) => return store_unavailable(err),
        },
        Err(err) => return store_unavailable(err),
    };
    if cached.len() >= MOVES_CACHED {
        cached.clear();
    }
    cached.insert(from.clone(), (std::time::Instant::now(), moves.clone()));
    match moves {
        Some(moves) => Json(moves).into_response(),
        None => no_such_silo(&from),
    }
}

/// The signed report a silo posted to its root (`Err`: this gateway is a maintenance silo, which
/// answers `refusal`, or the body is not a report).
fn silo_report(
    api: &Api,
    body: Result<Json<SiloReport>, axum::extract::rejection::JsonRejection>,
    refusal: &'static str,
) -> Result<SiloReport, Box<Response>> {
    if api.shared.silo.role() == crate::silo::Role::Maintenance {
        return Err(Box::new(error(StatusCode::NOT_FOUND, "not_found", refusal)));
    }
    body.map(|Json(report)| report).map_err(|rejection| Box::new(bad_json(rejection)))
}

fn no_such_silo(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", format!("no silo named {name} is registered here"))
}

/// A maintenance silo's report of the moves it took over, signed with the key it was registered
/// with: each is confirmed, and the machine's old certificate revoked.
pub(super) async fn moved(
    State(api): State<Arc<Api>>,
    body: Result<Json<SiloReport>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let report = match silo_report(&api, body, "a maintenance silo takes no reports") {
        Ok(report) => report,
        Err(response) => return *response,
    };
    match crate::silo::moves::take_report(&api.shared.store, &report).await {
        Ok(confirmed) => Json(serde_json::json!({ "confirmed": confirmed })).into_response(),
        Err(err) => report_refused(&report, err),
    }
}

/// A silo's signed aggregates: kept when its key signed them.
pub(super) async fn take_aggregates(
    State(api): State<Arc<Api>>,
    body: Result<Json<SiloReport>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let report = match silo_report(&api, body, "a maintenance silo takes no aggregates") {
        Ok(report) => report,
        Err(response) => return *response,
    };
    match crate::silo::aggregates::take(&api.shared.store, &report).await {
        Ok(()) => Json(serde_json::json!({ "kept": true })).into_response(),
        Err(err) => report_refused(&report, err),
    }
}

/// A silo's exchange of actions: its agents' results taken, the root's open actions for its
/// machines answered (`silo::actions`).
pub(super) async fn actions(
    State(api): State<Arc<Api>>,
    body: Result<Json<SiloReport>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let report = match silo_report(&api, body, "a maintenance silo serves no actions to silos") {
        Ok(report) => report,
        Err(response) => return *response,
    };
    match crate::silo::actions::at_root(&api.shared.store, &report).await {
        Ok(out) => Json(out).into_response(),
        Err(err) => report_refused(&report, err),
    }
}

/// A content item for a silo's cache: the root's signed manifest in the headers, the bytes from
/// the offset asked in the body (none when the offset is past the end).
pub(super) async fn content(
    State(api): State<Arc<Api>>,
    body: Result<Json<SiloReport>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let report = match silo_report(&api, body, "a maintenance silo publishes no content") {
        Ok(report) => report,
        Err(response) => return *response,
    };
    let request = match crate::content::take_request(&api.shared.store, &report).await {
        Ok(request) => request,
        Err(err) => return report_refused(&report, err),
    };
    match api.shared.content.item(&request.name).await {
        Ok(item) => content_answer(&item, request.offset).await,
        Err(err) => content_refused(err),
    }
}

/// The item's bytes from `offset`, with its manifest in the headers.
pub(super) async fn content_answer(item: &crate::content::Item, offset: u64) -> Response {
    let signed = crate::content::SignedManifest::new(&item.signed);
    let from = offset.min(item.manifest.size);
    let body = match file_body(&item.path, from, item.manifest.size - from).await {
        Ok(body) => body,
        Err(err) => {
            warn!(name = %item.manifest.name, error = %err, "cannot read a content item");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the content item cannot be read");
        }
    };
    (
        [
            (crate::content::MANIFEST_HEADER, signed.payload),
            (crate::content::SIGNATURE_HEADER, signed.signature),
            ("content-type", "application/octet-stream".to_string()),
            ("content-length", (item.manifest.size - from).to_string()),
        ],
        body,
    )
        .into_response()
}

/// `len` bytes of the file at `path` from `offset`, read as the body is sent.
pub(super) async fn file_body(path: &std::path::Path, offset: u64, len: u64) -> std::io::Result<axum::body::Body> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let reader = file.take(len);
    let stream = futures_util::stream::unfold(reader, |mut reader| async move {
        let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
        match reader.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok::<_, std::io::Error>(buf.freeze()), reader)),
            Err(err) => Some((Err(err), reader)),
        }
    });
    Ok(axum::body::Body::from_stream(stream))
}

/// The answer for a content item that cannot be had.
pub(super) fn content_refused(err: crate::content::ContentError) -> Response {
    use crate::content::ContentError as E;
    match err {
        err @ E::BadName(_) => error(StatusCode::BAD_REQUEST, BAD_REQUEST, err.to_string()),
        err @ E::NotFound(_) => error(StatusCode::NOT_FOUND, "not_found", err.to_string()),
        err @ (E::Unavailable { .. } | E::Busy) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", err.to_string())
        }
        err @ (E::Refused { .. } | E::TooLarge { .. }) => {
            warn!(error = %err, "a content item refused");
            error(StatusCode::BAD_GATEWAY, "content_refused", err.to_string())
        }
        E::Io(err) => {
            warn!(error = %err, "the content store");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the content store cannot be read")
        }
    }
}

fn report_refused(report: &SiloReport, err: ReportError) -> Response {
    match err {
        ReportError::Store(err) => store_unavailable(err),
        err @ (ReportError::UnknownSilo(_) | ReportError::BadSignature(_)) => {
            warn!(silo = %report.silo, error = %err, "refused a silo's report");
            error(StatusCode::FORBIDDEN, "bad_signature", err.to_string())
        }
        err @ ReportError::Malformed(_) => error(StatusCode::BAD_REQUEST, BAD_REQUEST, err.to_string()),
    }
}

/// A registered silo with its last aggregates.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct SiloShown {
    pub name: String,
    pub location: String,
    pub capacity: i64,
    /// Machines the root gave it.
    pub assigned: i64,
    pub region: Option<String>,
    pub oem: Option<String>,
    /// When the root last received its aggregates (RFC 3339), if ever.
    pub aggregates_received_at: Option<String>,
    pub aggregates: Option<Aggregates>,
}

/// The silos and the sum of their aggregates.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct SilosShown {
    pub silos: Vec<SiloShown>,
    /// The sum of the silos' last aggregates.
    pub total: Aggregates,
}

#[utoipa::path(
    get,
    path = "/api/v1/silos",
    tag = "silos",
    summary = "A root's maintenance silos and their aggregates (operators)",
    responses(
        (status = 200, description = "the silos (none but on a root), each with its last aggregates, and their sum", body = SilosShown),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn list(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    if let Some(refused) = caller.authorize(&api, Action::ViewSilos, Resource::Gateway, "listing silos") {
        return refused;
    }
    let store = &api.shared.store;
    let (silos, AcrossSilos { silos: sent, total }) =
        match tokio::try_join!(store.silos(), crate::silo::aggregates::across(store)) {
            Ok(both) => both,
            Err(err) => return store_unavailable(err),
        };
    let silos = silos
        .into_iter()
        .map(|s| {
            let last = sent.iter().find(|a| a.aggregates.silo == s.name);
            SiloShown {
                aggregates_received_at: last
                    .and_then(|a| time::OffsetDateTime::from_unix_timestamp(a.received_at).ok())
                    .map(crate::operator::rfc3339),
                aggregates: last.map(|a| a.aggregates.clone()),
                name: s.name,
                location: s.location,
                capacity: s.capacity,
                assigned: s.assigned,
                region: s.region,
                oem: s.oem,
            }
        })
        .collect();
    Json(SilosShown { silos, total }).into_response()
}
