//! The root's signed content for technicians (`docs/silos.md`, "Signed content"):
//!
//! | endpoint | who |
//! |---|---|
//! | `GET /api/v1/content` | `ViewContent` (any user not suspended): the items this gateway holds |
//! | `GET /api/v1/content/{name}` | `ViewContent`: an item's bytes (a `Range` from an offset resumes), its signed manifest in the headers |
//!
//! On a maintenance silo the first request for an item fetches it from the root into the cache.
//! The client checks the manifest's signature with the root's key (`tether content get
//! --root-key`) and the bytes against it: this gateway is not trusted with them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use super::admission::Caller;
use super::silos::{content_answer, content_refused};
use super::{error, Api, ApiPath, ErrorBody, Refusals};
use crate::policy::{Action, Resource};

/// An item this gateway holds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ContentShown {
    pub name: String,
    /// signatures, script or rescue-image.
    pub kind: String,
    pub size: u64,
    /// Hex.
    pub sha256: String,
    /// When the root published it (RFC 3339).
    pub published_at: String,
    /// The manifest the root signed ([`protocols::tap::ContentManifest`], hex) and its Ed25519
    /// signature (hex): check it with the root's key before trusting anything above.
    pub manifest: String,
    pub signature: String,
}

impl ContentShown {
    fn of(item: &crate::content::Item) -> ContentShown {
        let signed = crate::content::SignedManifest::new(&item.signed);
        let m = &item.manifest;
        ContentShown {
            name: m.name.clone(),
            kind: m.kind.name().to_string(),
            size: m.size,
            sha256: hex::encode(m.sha256),
            published_at: time::OffsetDateTime::from_unix_timestamp(m.published_at)
                .map(crate::operator::rfc3339)
                .unwrap_or_default(),
            manifest: signed.payload,
            signature: signed.signature,
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/content",
    tag = "content",
    summary = "The root's signed content items this gateway holds (published here, or cached from the root)",
    responses(
        (status = 200, description = "the items, newest first", body = Vec<ContentShown>),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn list(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Response {
    if let Some(refused) = caller.authorize(&api, Action::ViewContent, Resource::Gateway, "listing content") {
        return refused;
    }
    let content = Arc::clone(&api.shared.content);
    match tokio::task::spawn_blocking(move || content.list()).await {
        Ok(Ok(items)) => Json(items.iter().map(ContentShown::of).collect::<Vec<_>>()).into_response(),
        Ok(Err(err)) => content_refused(err),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "listing the content failed"),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/content/{name}",
    tag = "content",
    summary = "A content item's bytes, with the root's signed manifest in the headers",
    params(
        ("name" = String, Path, description = "the item's name", pattern = "^[a-z0-9][a-z0-9._-]{0,63}$"),
        ("range" = Option<String>, Header, description = "bytes=START- (resume from START); another form is ignored"),
    ),
    responses(
        (status = 200, description = "the whole item", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("tether-content-manifest" = String, description = "the signed manifest, hex"),
                    ("tether-content-signature" = String, description = "the root's signature over it, hex"))),
        (status = 206, description = "the item from START", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("tether-content-manifest" = String, description = "the signed manifest, hex"),
                    ("tether-content-signature" = String, description = "the root's signature over it, hex"),
                    ("content-range" = String, description = "bytes START-END/SIZE"))),
        (status = 400, description = "not a content name", body = ErrorBody),
        (status = 404, description = "no such item (published, or at the root)", body = ErrorBody),
        (status = 416, description = "START is past the item's end", body = ErrorBody),
        (status = 502, description = "the root's copy was refused (signature, hash, or too large for the cache)", body = ErrorBody),
        (status = 503, description = "the root cannot be reached and no copy is held", body = ErrorBody),
        Refusals,
    ),
    security(("token" = []))
)]
pub(super) async fn get_item(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = caller.authorize(&api, Action::ViewContent, Resource::Gateway, "fetching content") {
        return refused;
    }
    if !protocols::tap::is_content_name(&name) {
        return content_refused(crate::content::ContentError::BadName(name));
    }
    // A range of another form is ignored, as HTTP allows: the whole item is sent.
    let from = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(range_start);
    let item = match api.shared.content.item(&name).await {
        Ok(item) => item,
        Err(err) => return content_refused(err),
    };
    let Some(from) = from else { return content_answer(&item, 0).await };
    let size = item.manifest.size;
    if from >= size && !(from == 0 && size == 0) {
        let mut response = error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("{name} has {size} bytes; a range from {from} is past its end"),
        );
        if let Ok(value) = format!("bytes */{size}").parse() {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        return response;
    }
    let mut response = content_answer(&item, from).await;
    if response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(value) = format!("bytes {from}-{}/{size}", size.saturating_sub(1)).parse() {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    response
}

/// START of `bytes=START-`, the one range form taken (any other is ignored).
fn range_start(value: &str) -> Option<u64> {
    value.trim().strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_an_open_range_from_a_start_is_taken() {
        assert_eq!(super::range_start("bytes=0-"), Some(0));
        assert_eq!(super::range_start("bytes=1048576-"), Some(1_048_576));
        for bad in ["bytes=0-10", "bytes=-5", "items=0-", "bytes=a-", "bytes=0-,5-"] {
            assert_eq!(super::range_start(bad), None, "{bad}");
        }
    }
}
