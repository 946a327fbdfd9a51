//! Who may make an API request, cheapest check first: the source's request budget (before any
//! token lookup), the token's format (a malformed token is refused without a lookup), the lookup
//! itself (off the runtime), expiry, the token's own rate limit, then the [`Principal`] the
//! token acts as and its [`Relations`] (two more queries; a suspended user is refused here with
//! 403 `suspended`). Handlers then ask the policy ([`Caller::authorize`],
//! [`Caller::authorize_machine`]), which also covers the token's scope. Every token that could
//! have been one and fails (unknown, revoked, expired, its user gone) also charges the source's
//! stricter budget of failures (`limits::SourceLimiter`), so a source trying tokens is soon
//! answered 429 outright. A request without a token, or with one that cannot be a token, tries
//! nothing and costs no lookup: it is answered 401 and not charged, so that a client that forgot
//! its token is told so, not told to wait.
//!
//! Refusals of the policy are 403 with `{"error", "reason": "scope"|"denied", "code"}`, `code`
//! being [`Denied::code`]; never 404, so that a denied machine and a missing one are told apart
//! only to those who may see it (the check runs before anything is looked up about the device).
//! A token refused is 401 with code `invalid_token` or `expired_token`; a rate limit is 429 with
//! `source_rate` or `token_rate`.
//!
//! What it does not do: decide (`policy`), count connections (`api::serve`) or relays
//! (`api::relays`).

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

use super::{error, rejection, store_unavailable, Api, Connection, ErrorBody};
use crate::auth;
use crate::metrics::ApiRejection;
use crate::policy::{self, Action, Denied, Principal, Relations, Resource};
use crate::store::TokenScope;
use uuid::Uuid;

/// What `auth::new_token` makes: this prefix and 32 bytes in unpadded base64url.
const TOKEN_PREFIX: &str = "tth_";
const TOKEN_BODY_LEN: usize = 43;

/// The token a request authenticated with, the user it acts as and that user's relations.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub id: i64,
    pub name: String,
    pub scope: TokenScope,
    pub expires_at: Option<OffsetDateTime>,
    pub principal: Principal,
    pub relations: Arc<Relations>,
}

impl Caller {
    /// `None` if the policy allows `action` on `resource`; else the 403; `what` names the action
    /// for the message.
    pub fn authorize(&self, api: &Api, action: Action, resource: Resource, what: &str) -> Option<Response> {
        let denied = policy::authorize(&self.principal, &self.relations, action, resource).err()?;
        Some(self.refusal(api, denied, what))
    }

    /// [`Caller::authorize`] for `action` on machine `uuid`, whose subscriber (if enrolled) is
    /// looked up in the store first.
    pub async fn authorize_machine(&self, api: &Api, action: Action, uuid: Uuid, what: &str) -> Option<Response> {
        let subscriber_id = match api.shared.store.machine(uuid).await {
            Ok(machine) => machine.map(|m| m.subscriber_id),
            Err(err) => return Some(store_unavailable(err)),
        };
        self.authorize(api, action, Resource::Machine { uuid, subscriber_id }, what)
    }

    /// Whether the principal is an operator (sees unassigned machines, the LAN, everything).
    pub fn is_operator(&self) -> bool {
        self.principal.role == policy::Role::Operator
    }

    /// The 403 for a refusal of the policy, with its stable code and what to do.
    pub fn refusal(&self, api: &Api, denied: Denied, what: &str) -> Response {
        let (reason, advice) = match denied {
            Denied::Scope => (
                ApiRejection::Scope,
                format!(
                    "token {:?} has scope {}; {what} needs scope attach \
                     (create one with `tether token create NAME --scope attach`)",
                    self.name,
                    self.scope.as_str()
                ),
            ),
            Denied::Suspended => {
                (ApiRejection::Denied, format!("{what} is refused: {denied}; an operator can lift it"))
            }
            Denied::OperatorOnly | Denied::UnassignedMachine | Denied::WrongResource => {
                (ApiRejection::Denied, format!("{what} is refused: {denied}; ask an operator"))
            }
            Denied::NotRelated | Denied::SubscriptionTerminated => (
                ApiRejection::Denied,
                format!("{what} is refused: {denied}; ask the machine's subscriber to invite you as a support contact"),
            ),
        };
        api.shared.metrics.api_rejected(reason);
        ErrorBody { reason: Some(reason.as_str()), ..ErrorBody::new(denied.code(), advice) }
            .into_response(StatusCode::FORBIDDEN)
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

/// A failed check of a well-formed token: counted, charged to the source, answered 401.
fn refuse(api: &Api, source: IpAddr, reason: ApiRejection, message: impl std::fmt::Display) -> Response {
    api.sources.token_failed(source);
    rejection(api, StatusCode::UNAUTHORIZED, reason, None, message)
}

/// No token, or one that cannot be a token: counted and answered 401, not charged to the source
/// (nothing was tried, nothing looked up).
fn refuse_without_charge(api: &Api, message: impl std::fmt::Display) -> Response {
    rejection(api, StatusCode::UNAUTHORIZED, ApiRejection::InvalidToken, None, message)
}

pub(super) async fn require_token(
    State(api): State<Arc<Api>>,
    Extension(connection): Extension<Connection>,
    mut request: Request,
    next: Next,
) -> Response {
    let source = connection.remote_ip();
    if let Err(wait) = api.sources.check_request(source) {
        let message = format!(
            "too many requests (or failed token checks) from your address; retry in {} s",
            super::retry_secs(wait)
        );
        return rejection(&api, StatusCode::TOO_MANY_REQUESTS, ApiRejection::SourceRate, Some(wait), message);
    }
    let Some(token) = bearer(&request) else {
        return refuse_without_charge(
            &api,
            "missing bearer token: send `Authorization: Bearer TOKEN` (create one with `tether token create NAME`)",
        );
    };
    if !well_formed(token) {
        return refuse_without_charge(
            &api,
            "malformed token: Tether tokens are `tth_` and 43 more characters, as printed by `tether token create`",
        );
    }
    let hash = auth::hash_token(token);
    let record = match api.shared.store.token_by_hash(&hash).await {
        Ok(record) => record,
        Err(err) => {
            return super::store_unavailable(err);
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
            "token_rate",
            format!(
                "request rate limit for token {:?} exceeded (limits.api_requests_per_second); retry shortly",
                record.name
            ),
        );
        response.headers_mut().insert(header::RETRY_AFTER, super::retry_secs(Duration::from_secs(1)).into());
        return response;
    }
    let store = &api.shared.store;
    let principal = match store.token_principal(&record).await {
        Ok(Some(principal)) => principal,
        Ok(None) => {
            return refuse(
                &api,
                source,
                ApiRejection::InvalidToken,
                format!("token {:?} belongs to no user any more; ask an operator for a new one", record.name),
            )
        }
        Err(err) => return store_unavailable(err),
    };
    let relations = match store.relations(principal.user_id).await {
        Ok(relations) => relations,
        Err(err) => return store_unavailable(err),
    };
    let caller = Caller {
        id: record.id,
        name: record.name,
        scope: record.scope,
        expires_at: record.expires_at,
        principal,
        relations: Arc::new(relations),
    };
    if principal.suspended {
        return caller.refusal(&api, Denied::Suspended, "every request of a suspended user");
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}
