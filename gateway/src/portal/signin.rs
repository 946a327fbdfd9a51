//! Signing in and out. The sign-in form carries a double-submit CSRF token (also its own cookie);
//! a POST is checked in this order, cheapest first: origin, token, the sizes of the fields, the
//! throttle (failed sign-ins per source and per username, before any password is hashed), then
//! argon2 (an unknown user costs a dummy check, so that it cannot be told apart by timing). Any
//! failure says only "wrong username or password". A user with a second factor is then asked
//! for a code (same throttle; a code spent once is refused); a fresh session id is made at each
//! sign-in, and sign-out deletes the session's row.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Form};
use maud::html;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::session::{self, Gate, Resolved, SIGNIN_COOKIE};
use super::{csrf, form_token, safe_next, totp, unavailable, views, Allow, Fields, Portal};
use crate::api::connection::Connection;

/// Longest username and password looked at (longer: wrong, without a hash).
const MAX_USERNAME: usize = 64;
const MAX_PASSWORD: usize = 1024;
/// How long a password check may wait for the argon2 threads.
const CHECK_DEADLINE: Duration = Duration::from_secs(10);
const WRONG: &str = "Wrong username or password.";

/// `/` and `/portal`: to the machines when signed in, else to sign in.
pub(super) async fn home(State(portal): State<Arc<Portal>>, headers: HeaderMap) -> Response {
    match portal.resolve(&headers, OffsetDateTime::now_utc()).await {
        Ok(Resolved::Visitor(visitor)) => match visitor.gate() {
            Gate::Open => views::redirect("/portal/machines"),
            Gate::NeedsCode => views::redirect("/portal/signin/totp"),
            Gate::MustEnrol => views::redirect("/portal/profile"),
        },
        Ok(Resolved::Nobody | Resolved::Suspended) => views::redirect("/portal/signin"),
        Err(err) => unavailable(err),
    }
}

/// Where to go after signing in: `?next=PATH`, a same-site path (see `safe_next`).
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct NextQuery {
    next: Option<String>,
}

impl NextQuery {
    fn from(query: Result<Query<NextQuery>, QueryRejection>) -> Option<String> {
        let next = query.ok().and_then(|Query(q)| q.next);
        safe_next(next.as_deref()).map(str::to_string)
    }
}

/// The sign-in form, with a double-submit token (the browser's, if it has one already).
pub(super) async fn form(headers: HeaderMap, query: Result<Query<NextQuery>, QueryRejection>) -> Response {
    signin_page(&headers, StatusCode::OK, None, NextQuery::from(query).as_deref())
}

fn signin_page(headers: &HeaderMap, status: StatusCode, error: Option<&str>, next: Option<&str>) -> Response {
    let (token, _) = form_token(headers, None);
    let body = html! {
        @if let Some(error) = error { p.error { (error) } }
        form method="post" action="/portal/signin" {
            (views::csrf_field(&token))
            @if let Some(next) = next { input type="hidden" name="next" value=(next); }
            label for="username" { "Username" }
            input #username type="text" name="username" autocomplete="username" autocapitalize="none" required;
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required;
            div { button type="submit" { "Sign in" } }
        }
    };
    let mut response = views::page(status, "Sign in", None, body);
    response.headers_mut().append(header::SET_COOKIE, session::set_cookie(SIGNIN_COOKIE, &token, 3600));
    response
}

pub(super) async fn submit(
    State(portal): State<Arc<Portal>>,
    Extension(connection): Extension<Connection>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    if !csrf::same_origin(&headers) {
        return super::cross_site();
    }
    let expected = session::cookie(&headers, SIGNIN_COOKIE).unwrap_or_default();
    if !csrf::token_matches(expected, fields.get(csrf::FIELD)) {
        return super::bad_token();
    }
    let source = connection.remote_ip();
    let next = safe_next(fields.get("next"));
    let wrong = || signin_page(&headers, StatusCode::UNAUTHORIZED, Some(WRONG), next);
    let username = fields.get("username").unwrap_or_default().trim();
    let password = fields.get("password").unwrap_or_default();
    if username.is_empty() || username.len() > MAX_USERNAME || password.is_empty() || password.len() > MAX_PASSWORD {
        return wrong();
    }
    // Before any hash is computed.
    if let Some(wait) = portal.sign_in.blocked(source, username) {
        return views::too_many(wait, None);
    }
    let store = &portal.shared.store;
    let hash = match store.user_password_hash(username).await {
        Ok(hash) => hash,
        Err(err) => return unavailable(err),
    };
    let deadline = tokio::time::Instant::now() + CHECK_DEADLINE;
    let checked = match &hash {
        Some(hash) => portal.shared.passwords.check(hash, password.as_bytes(), deadline).await,
        None => portal.shared.passwords.check_dummy(password.as_bytes(), deadline).await,
    };
    match checked {
        Ok(true) => {}
        Ok(false) => {
            portal.sign_in.failed(source, username);
            info!(%source, "portal sign-in failed: wrong username or password");
            return wrong();
        }
        Err(err) => {
            warn!(%source, error = %err, "portal sign-in: the password could not be checked");
            return views::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                None,
                "The gateway is busy checking passwords; try again in a few seconds.",
            );
        }
    }
    let user = match store.user_by_name(username).await {
        Ok(Some(user)) => user,
        Ok(None) => return wrong(),
        Err(err) => return unavailable(err),
    };
    if user.is_suspended() {
        return views::forbidden(None, crate::policy::Denied::Suspended, "Signing in");
    }
    let now = OffsetDateTime::now_utc();
    let id = match portal.start_session(user.id, false, now).await {
        Ok(id) => id,
        Err(err) => return unavailable(err),
    };
    info!(user = %user.username, %source, "portal sign-in");
    let mut response = views::redirect(next.unwrap_or("/portal"));
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, portal.session_cookie(&id));
    headers.append(header::SET_COOKIE, session::set_cookie(SIGNIN_COOKIE, "", 0));
    response
}

/// The second step: a TOTP code.
pub(super) async fn code_form(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    query: Result<Query<NextQuery>, QueryRejection>,
) -> Response {
    match portal.require(&headers, Allow::Code).await {
        Ok(visitor) => code_page(&visitor, StatusCode::OK, None, NextQuery::from(query).as_deref()),
        Err(response) => response,
    }
}

fn code_page(visitor: &session::Visitor, status: StatusCode, error: Option<&str>, next: Option<&str>) -> Response {
    let body = html! {
        @if let Some(error) = error { p.error { (error) } }
        p { "Enter the 6-digit code your authenticator app shows for Tether." }
        form method="post" action="/portal/signin/totp" {
            (views::csrf_field(&visitor.session.csrf_secret))
            @if let Some(next) = next { input type="hidden" name="next" value=(next); }
            label for="code" { "Code" }
            input #code type="text" name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required;
            div { button type="submit" { "Continue" } }
        }
    };
    views::page(status, "Second factor", Some(visitor), body)
}

pub(super) async fn code_submit(
    State(portal): State<Arc<Portal>>,
    Extension(connection): Extension<Connection>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Code).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let source = connection.remote_ip();
    let next = safe_next(fields.get("next"));
    match portal.check_code(&visitor, source, fields.get("code").unwrap_or_default()).await {
        Ok(()) => {}
        Err(refused) => return refused.page(&visitor, |v, status, error| code_page(v, status, error, next)),
    }
    if let Err(err) = portal.shared.store.pass_second_factor(visitor.session.id).await {
        return unavailable(err);
    }
    info!(user = %visitor.user.username, %source, "portal second factor passed");
    views::redirect(next.unwrap_or("/portal/machines"))
}

/// Why a TOTP code was refused.
#[derive(Debug)]
pub(super) enum CodeRefused {
    Throttled(Duration),
    Wrong,
    Replayed,
    Other(Response),
}

impl CodeRefused {
    /// The answer: 429, or `render` again with the reason.
    pub(super) fn page(
        self,
        visitor: &session::Visitor,
        render: impl FnOnce(&session::Visitor, StatusCode, Option<&str>) -> Response,
    ) -> Response {
        match self {
            CodeRefused::Throttled(wait) => views::too_many(wait, Some(visitor)),
            CodeRefused::Wrong => render(visitor, StatusCode::UNAUTHORIZED, Some("Wrong code.")),
            CodeRefused::Replayed => render(
                visitor,
                StatusCode::UNAUTHORIZED,
                Some("This code was used already; wait for the next one your app shows."),
            ),
            CodeRefused::Other(response) => response,
        }
    }
}

impl Portal {
    /// Checks `code` against the user's stored secret (throttled like passwords; a step spent
    /// once is refused).
    pub(super) async fn check_code(
        &self,
        visitor: &session::Visitor,
        source: std::net::IpAddr,
        code: &str,
    ) -> Result<(), CodeRefused> {
        let sealed = match self.shared.store.user_totp_secret(visitor.user.id).await {
            Ok(Some(sealed)) => sealed,
            Ok(None) => return Err(CodeRefused::Wrong),
            Err(err) => return Err(CodeRefused::Other(unavailable(err))),
        };
        let secret = match totp::open(&self.shared.sealer, visitor.user.id, &sealed) {
            Ok(secret) => secret,
            Err(err) => {
                warn!(user = %visitor.user.username, error = %err, "cannot open a user's TOTP secret");
                return Err(CodeRefused::Other(views::message(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Unavailable",
                    Some(visitor),
                    "Your second factor cannot be checked on this gateway; ask an operator.",
                )));
            }
        };
        self.spend_code(visitor, source, &secret, code).await
    }

    /// Checks `code` against `secret` and spends its step (see [`Portal::check_code`]).
    pub(super) async fn spend_code(
        &self,
        visitor: &session::Visitor,
        source: std::net::IpAddr,
        secret: &str,
        code: &str,
    ) -> Result<(), CodeRefused> {
        let username = &visitor.user.username;
        if let Some(wait) = self.sign_in.blocked(source, username) {
            return Err(CodeRefused::Throttled(wait));
        }
        let unix = u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or_default();
        let step = match totp::matching_step(secret, code, unix) {
            Ok(Some(step)) => step,
            Ok(None) | Err(_) => {
                self.sign_in.failed(source, username);
                return Err(CodeRefused::Wrong);
            }
        };
        match self.shared.store.spend_totp_step(visitor.user.id, step).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.sign_in.failed(source, username);
                Err(CodeRefused::Replayed)
            }
            Err(err) => Err(CodeRefused::Other(unavailable(err))),
        }
    }
}

/// Ends the session (its row is deleted) at whatever gate it is.
pub(super) async fn signout(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    if !csrf::same_origin(&headers) {
        return super::cross_site();
    }
    let visitor = match portal.resolve(&headers, OffsetDateTime::now_utc()).await {
        Ok(Resolved::Visitor(visitor)) => visitor,
        Ok(Resolved::Nobody | Resolved::Suspended) => return signed_out(),
        Err(err) => return unavailable(err),
    };
    if !csrf::token_matches(&visitor.session.csrf_secret, fields.get(csrf::FIELD)) {
        return super::bad_token();
    }
    if let Err(err) = portal.shared.store.delete_session(visitor.session.id).await {
        return unavailable(err);
    }
    signed_out()
}

fn signed_out() -> Response {
    let mut response = views::redirect("/portal/signin");
    response.headers_mut().append(header::SET_COOKIE, session::set_cookie(session::SESSION_COOKIE, "", 0));
    response
}
