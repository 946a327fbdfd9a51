//! Who may make an API request, cheapest check first: the source's request budget (before any
//! token lookup), the token's format (a malformed token is refused without a lookup), the lookup
//! itself (off the runtime), expiry, the token's own rate limit; handlers then check the scope
//! ([`Caller::scope_refusal`]). Every failed token check also charges the source's stricter
//! budget of failures (`limits::SourceLimiter`), so a source trying tokens is soon answered 429
//! outright.
//!
//! What it does not do: count connections (`api::serve`) or relays (`api::relays`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Extension;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{error, rejection, Api, Connection};
use crate::auth;
use crate::metrics::ApiRejection;
use crate::store::TokenScope;
use tracing::warn;

/// What `auth::new_token` makes: this prefix and 32 bytes in unpadded base64url.
const TOKEN_PREFIX: &str = "tth_";
const TOKEN_BODY_LEN: usize = 43;

/// The token a request authenticated with.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub id: i64,
    pub name: String,
    pub scope: TokenScope,
    pub expires_at: Option<OffsetDateTime>,
}

impl Caller {
    /// A 403 if this token's scope does not allow `needed`; `what` names the action refused.
    pub fn scope_refusal(&self, api: &Api, needed: TokenScope, what: &str) -> Option<Response> {
        if self.scope.allows(needed) {
            return None;
        }
        Some(rejection(
            api,
            StatusCode::FORBIDDEN,
            ApiRejection::Scope,
            None,
            format!(
                "token {:?} has scope {}; {what} needs scope {} \
                 (create one with `tether token create NAME --scope {}`)",
                self.name,
                self.scope.as_str(),
                needed.as_str(),
                needed.as_str()
            ),
        ))
    }
}

/// Whether `token` has the shape of a Tether API token (`tth_` and 43 base64url characters).
pub(super) fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|body| {
        body.len() == TOKEN_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A failed token check: counted, charged to the source, answered 401.
fn refuse(api: &Api, source: IpAddr, reason: ApiRejection, message: impl std::fmt::Display) -> Response {
    api.sources.token_failed(source);
    rejection(api, StatusCode::UNAUTHORIZED, reason, None, message)
}

pub(super) async fn require_token(
    State(api): State<Arc<Api>>,
    Extension(connection): Extension<Connection>,
    mut request: Request,
    next: Next,
) -> Response {
    let source = connection.remote.ip();
    if let Err(wait) = api.sources.check_request(source) {
        let message = format!(
            "too many requests (or failed token checks) from your address; retry in {} s",
            super::retry_secs(wait)
        );
        return rejection(&api, StatusCode::TOO_MANY_REQUESTS, ApiRejection::SourceRate, Some(wait), message);
    }
    let Some(token) = bearer(&request) else {
        return refuse(
            &api,
            source,
            ApiRejection::InvalidToken,
            "missing bearer token: send `Authorization: Bearer TOKEN` (create one with `tether token create NAME`)",
        );
    };
    if !well_formed(token) {
        return refuse(
            &api,
            source,
            ApiRejection::InvalidToken,
            "malformed token: Tether tokens are `tth_` and 43 more characters, as printed by `tether token create`",
        );
    }
    let hash = auth::hash_token(token);
    let record = match api.shared.store.token_by_hash(&hash).await {
        Ok(record) => record,
        Err(err) => {
            warn!(error = %err, "cannot look a token up in the store");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "the token store is unavailable; see the gateway's log");
        }
    };
    let Some(record) = record else {
        return refuse(
            &api,
            source,
            ApiRejection::InvalidToken,
            "unknown token (revoked, or not from this gateway); ask an operator for one (`tether token create`)",
        );
    };
    let now = OffsetDateTime::now_utc();
    if record.is_expired(now) {
        let at = record.expires_at.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default();
        return refuse(
            &api,
            source,
            ApiRejection::ExpiredToken,
            format!("token {:?} expired at {at}; ask an operator for a new one", record.name),
        );
    }
    if !api.shared.limiter.allow_api(record.id) {
        api.shared.metrics.api_request_limited();
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "request rate limit for token {:?} exceeded (limits.api_requests_per_second); retry shortly",
                record.name
            ),
        );
        response.headers_mut().insert(header::RETRY_AFTER, super::retry_secs(Duration::from_secs(1)).into());
        return response;
    }
    request.extensions_mut().insert(Caller {
        id: record.id,
        name: record.name,
        scope: record.scope,
        expires_at: record.expires_at,
    });
    next.run(request).await
}
