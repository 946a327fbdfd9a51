//! The web portal: server-rendered HTML on the API's port (`/` and `/portal/…`), for subscribers,
//! their support contacts and operators, usable on a phone, with no JavaScript.
//!
//! - `signin`: sign in (password, then a TOTP code when the user has a second factor), sign out.
//! - `machines`: the machines the visitor may see, and one machine's page with its audit.
//! - `profile`: the visitor's account, TOTP enrolment and removal, email changes (and their
//!   confirmation page), a contact's nickname and alert preferences per subscriber, leaving.
//! - `contacts`: a subscriber's support contacts: invite, remove.
//! - `directory`: subscribers (an operator registers and terminates them) and users (an
//!   operator creates, suspends and unsuspends them).
//! - `enroll`: enrolling a machine: the one-time token for `tether-agent enroll`.
//! - `invitations`: an invitation's link: accept it signed in, or create an account to.
//! - `silos`: a root's maintenance silos and their aggregates (operators).
//! - `through_root`: the portal through the root: a root sends a signed-in person to a
//!   maintenance silo's portal, which opens a session for them without an account of its own.
//!
//! Every request first spends the source's request budget (as the API's do); every page asks
//! `policy::authorize` with the same actions as the API, and a refusal is a readable 403 with
//! the policy's reason. Sessions (`session`), CSRF (`csrf`) and TOTP (`totp`) have their own
//! modules; `views` renders. `docs/portal.md` describes the pages and rules.
//!
//! Every change to accounts goes through one flow of `crate::flows` (policy, store transition,
//! audit, mail), as the API's and the CLI's do; a flow's refusal is a readable page with its
//! message and stable code ([`refused`]).
//!
//! What it does not do: serve TLS (`api::serve` does, with `api.cert_file` when set).

mod actions;
mod contacts;
mod csrf;
mod directory;
mod enroll;
mod invitations;
mod machines;
mod profile;
pub(crate) mod session;
mod signin;
mod silos;
mod through_root;
pub(crate) mod totp;
mod views;

#[cfg(test)]
mod actions_tests;
#[cfg(test)]
mod directory_tests;
#[cfg(test)]
mod flows_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use time::OffsetDateTime;
use tracing::warn;

use crate::api::connection::Connection;
use crate::flows::{Actor, FlowError, Flows};
use crate::limits::{SignInLimiter, SourceLimiter};
use crate::state::Shared;
use crate::store::StoreError;
use session::{Gate, Resolved, Visitor};

/// Largest form body (sign-in, a code): far above any real form.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// How often expired sessions are swept from the store.
const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// What the portal's handlers share.
#[derive(Debug)]
pub struct Portal {
    shared: Arc<Shared>,
    /// Requests per source, as the API's (`api.requests_per_second_per_source`).
    sources: SourceLimiter,
    /// Failed sign-ins per source and per username, asked before argon2 (also by the
    /// sign-up on an invitation, which counts each account it makes as a failure would).
    sign_in: SignInLimiter,
    /// Where links in mail point (`[mail] public_url`).
    public_url: String,
    /// Passwords hashed by the sign-up on an invitation (an argon2 run each).
    signup_hashes: std::sync::atomic::AtomicU64,
}

impl Portal {
    pub fn new(shared: Arc<Shared>) -> Arc<Portal> {
        let api = &shared.config.api;
        let max_tracked = shared.config.limits.max_tracked_sources;
        Arc::new(Portal {
            sources: SourceLimiter::new(api.requests_per_second_per_source, api.request_burst_per_source, max_tracked),
            sign_in: SignInLimiter::new(max_tracked),
            public_url: shared.config.mail_public_url(),
            signup_hashes: std::sync::atomic::AtomicU64::new(0),
            shared,
        })
    }
}

/// The portal's routes (merged into the API's router at `/` and `/portal/…`).
pub fn router(portal: Arc<Portal>) -> Router {
    Router::new()
        .route("/", get(signin::home))
        .route("/portal", get(signin::home))
        .route("/portal/signin", get(signin::form).post(signin::submit))
        .route("/portal/signin/totp", get(signin::code_form).post(signin::code_submit))
        .route("/portal/signout", post(signin::signout))
        .route("/portal/machines", get(machines::list))
        .route("/portal/machines/{uuid}", get(machines::show))
        .route("/portal/machines/{uuid}/actions", post(actions::create))
        .route("/portal/actions/{id}", get(actions::show))
        .route("/portal/profile", get(profile::show))
        .route("/portal/profile/totp/start", post(profile::totp_start))
        .route("/portal/profile/totp/confirm", post(profile::totp_confirm))
        .route("/portal/profile/totp/remove", post(profile::totp_remove))
        .route("/portal/profile/email", post(profile::change_email))
        .route("/portal/profile/contacts/{contact}", post(profile::update_prefs))
        .route("/portal/email/confirm", get(profile::confirm_form).post(profile::confirm))
        .route("/portal/subscribers", get(directory::subscribers).post(directory::register))
        .route("/portal/subscribers/{id}/terminate", post(directory::terminate))
        .route("/portal/users", get(directory::users).post(directory::create_user))
        .route(silos::SILOS, get(silos::list))
        .route("/portal/silos/{name}/open", post(through_root::open))
        .route(crate::silo::signin::SIGNIN_PATH, get(through_root::arrive))
        .route("/portal/users/{id}/suspend", post(directory::suspend))
        .route("/portal/users/{id}/unsuspend", post(directory::unsuspend))
        .route("/portal/subscribers/{id}/contacts", get(contacts::show).post(contacts::invite))
        .route("/portal/subscribers/{id}/machines/enroll", get(enroll::form).post(enroll::submit))
        .route("/portal/subscribers/{id}/contacts/{contact}/remove", post(contacts::remove))
        .route("/portal/subscribers/{id}/leave", post(contacts::leave))
        .route("/portal/invitations/{guid}", get(invitations::show))
        .route("/portal/invitations/{guid}/accept", post(invitations::accept))
        .route("/portal/invitations/{guid}/signup", post(invitations::sign_up))
        .layer(middleware::from_fn_with_state(Arc::clone(&portal), admit))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(portal)
}

/// Every request: the source's budget first; every response: the portal's security headers.
async fn admit(
    State(portal): State<Arc<Portal>>,
    Extension(connection): Extension<Connection>,
    mut request: Request,
    next: Next,
) -> Response {
    // HTTP/2 has no Host header (browsers send `:authority`, which hyper puts in the URI): give
    // the pages one, so that the origin check (`csrf::same_origin`) sees this request's host.
    if !request.headers().contains_key(axum::http::header::HOST) {
        let authority = request.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(authority) = authority {
            request.headers_mut().insert(axum::http::header::HOST, authority);
        }
    }
    let mut response = match portal.sources.check_request(connection.remote_ip()) {
        Err(wait) => views::too_many(wait, None),
        Ok(()) => next.run(request).await,
    };
    views::secure_headers(response.headers_mut());
    response
}

/// Sweeps sessions past their end every few minutes, until the gateway stops.
pub async fn housekeeping(portal: Arc<Portal>) {
    let mut shutdown = portal.shared.shutdown.clone();
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::state::stopping(&mut shutdown) => return,
        }
        portal.sign_in.housekeeping();
        portal.sources.housekeeping();
        let now = OffsetDateTime::now_utc();
        let idle_before = now - portal.shared.config.portal.session_idle();
        if let Err(err) = portal.shared.store.sweep_sessions(now, idle_before).await {
            warn!(error = %err, "cannot sweep the portal's expired sessions");
        }
    }
}

/// The fields of a form body, first value of each name.
#[derive(Debug, Default)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn from(form: Result<Form<Vec<(String, String)>>, FormRejection>) -> Fields {
        form.map(|Form(fields)| Fields(fields)).unwrap_or_default()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether checkbox `name` was ticked.
    fn checked(&self, name: &str) -> bool {
        self.get(name) == Some("yes")
    }

    /// The alert preferences of [`views::alert_fields`], as the JSON the store keeps.
    fn alert_prefs(&self) -> serde_json::Value {
        let mut prefs: serde_json::Map<String, serde_json::Value> = views::ALERTS
            .iter()
            .map(|(key, _)| ((*key).to_string(), serde_json::Value::Bool(self.checked(&format!("alert_{key}")))))
            .collect();
        if let Some(url) = self.get("alert_webhook").map(str::trim).filter(|u| !u.is_empty()) {
            prefs.insert("webhook".into(), serde_json::Value::String(url.to_string()));
        }
        serde_json::Value::Object(prefs)
    }
}

impl Portal {
    /// The account flows, at the time of this request.
    fn flows(&self) -> Flows<'_> {
        Flows {
            store: &self.shared.store,
            accounts: &self.shared.config.accounts,
            public_url: self.public_url.as_str(),
            now: OffsetDateTime::now_utc(),
        }
    }

    /// Passwords hashed by the sign-up so far (tests: a throttled sign-up hashes none).
    #[cfg(test)]
    fn signup_hashes(&self) -> u64 {
        self.signup_hashes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The visitor as the flows see it (a portal session acts as a token of scope `attach`).
fn actor(visitor: &Visitor) -> Actor {
    Actor { principal: visitor.principal, relations: Arc::new(visitor.relations.clone()) }
}

/// A flow's refusal as a page: the policy's 403 with its reason, or the flow's status with its
/// message and stable code; the store being unavailable, without details.
fn refused(visitor: Option<&Visitor>, err: FlowError, what: &str) -> Response {
    match err {
        FlowError::Denied(denied) => views::forbidden(visitor, denied, what),
        FlowError::Store(err) | FlowError::Account(crate::store::AccountError::Store(err)) => unavailable(err),
        err => {
            let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
            views::refusal(status, visitor, what, &err.to_string(), err.code())
        }
    }
}

/// A same-site path to go on to after signing in: under `/portal/`, short, nothing that a
/// browser could read as another host or a way up.
fn safe_next(next: Option<&str>) -> Option<&str> {
    next.filter(|next| {
        next.starts_with("/portal/")
            && next.len() <= 256
            && next.bytes().all(|b| b.is_ascii_graphic())
            && !next.contains("//")
            && !next.contains('\\')
            && !next.contains("..")
    })
}

/// The CSRF token of a form shown to a visitor who may have no session yet: the session's
/// secret, or else a double-submit token (the browser's, if it has one) and its cookie.
fn form_token(headers: &HeaderMap, visitor: Option<&Visitor>) -> (String, Option<HeaderValue>) {
    match visitor {
        Some(visitor) => (visitor.session.csrf_secret.clone(), None),
        None => {
            let token =
                session::cookie(headers, session::SIGNIN_COOKIE).map_or_else(session::random_token, str::to_string);
            let cookie = session::set_cookie(session::SIGNIN_COOKIE, &token, 3600);
            (token, Some(cookie))
        }
    }
}

/// 404 for a path whose number (`what`: "subscriber", "user") is no number at all.
fn not_a_number(visitor: &Visitor, what: &str) -> Response {
    views::message(
        StatusCode::NOT_FOUND,
        &format!("No such {what}"),
        Some(visitor),
        &format!("That is not a {what}'s number."),
    )
}

/// A store failure: logged, answered without details.
fn unavailable(err: StoreError) -> Response {
    warn!(error = %err, "store query failed while answering the portal");
    views::message(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Unavailable",
        None,
        "The gateway's store is unavailable; try again shortly.",
    )
}

/// Which gates a page lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allow {
    /// Pages for a fully signed-in visitor.
    Open,
    /// [`Allow::Open`], and also for a person the root sent to this maintenance silo (the
    /// machines and their pages: what a silo keeps). Other pages send them to the root.
    Machines,
    /// The TOTP step.
    Code,
    /// The profile and TOTP enrolment (also for an operator who must enrol first).
    Enrol,
}

impl Portal {
    /// The visitor a page may be shown to, or where to send the browser instead: to sign in,
    /// to the TOTP step, or to enrolment.
    async fn require(&self, headers: &HeaderMap, allow: Allow) -> Result<Visitor, Response> {
        let now = OffsetDateTime::now_utc();
        let visitor = match self.resolve(headers, now).await {
            Ok(Resolved::Visitor(visitor)) => *visitor,
            Ok(Resolved::Nobody) => return Err(views::redirect("/portal/signin")),
            Ok(Resolved::Suspended) => {
                return Err(views::forbidden(None, crate::policy::Denied::Suspended, "Signing in"))
            }
            Err(err) => return Err(unavailable(err)),
        };
        if visitor.session.via_root && allow != Allow::Machines {
            return Err(self.at_the_root(&visitor));
        }
        match elsewhere(visitor.gate(), allow) {
            None => Ok(visitor),
            Some(to) => Err(views::redirect(to)),
        }
    }

    /// [`Portal::require`] for a POST: the origin first, then the session, then the form's CSRF
    /// token against the session's, before anything else.
    async fn require_post(&self, headers: &HeaderMap, fields: &Fields, allow: Allow) -> Result<Visitor, Response> {
        if !csrf::same_origin(headers) {
            return Err(cross_site());
        }
        let now = OffsetDateTime::now_utc();
        let visitor = match self.resolve(headers, now).await {
            Ok(Resolved::Visitor(visitor)) => *visitor,
            Ok(Resolved::Nobody) => return Err(views::redirect("/portal/signin")),
            Ok(Resolved::Suspended) => {
                return Err(views::forbidden(None, crate::policy::Denied::Suspended, "Signing in"))
            }
            Err(err) => return Err(unavailable(err)),
        };
        if !csrf::token_matches(&visitor.session.csrf_secret, fields.get(csrf::FIELD)) {
            return Err(bad_token());
        }
        // The same gates as the pages.
        if visitor.session.via_root && allow != Allow::Machines {
            return Err(self.at_the_root(&visitor));
        }
        match elsewhere(visitor.gate(), allow) {
            None => Ok(visitor),
            Some(to) => Err(views::redirect(to)),
        }
    }
}

impl Portal {
    /// A POST from a form that a visitor without a session may send too (the sign-up, an email
    /// confirmation): the origin first, then the form's token against the session's secret, or
    /// without a session against the double-submit cookie. The visitor, if signed in (at any
    /// gate: the caller decides).
    async fn check_form(&self, headers: &HeaderMap, fields: &Fields) -> Result<Option<Visitor>, Response> {
        if !csrf::same_origin(headers) {
            return Err(cross_site());
        }
        let visitor = match self.resolve(headers, OffsetDateTime::now_utc()).await {
            Ok(Resolved::Visitor(visitor)) => Some(*visitor),
            Ok(Resolved::Nobody) => None,
            Ok(Resolved::Suspended) => {
                return Err(views::forbidden(None, crate::policy::Denied::Suspended, "Signing in"))
            }
            Err(err) => return Err(unavailable(err)),
        };
        let expected = match &visitor {
            Some(visitor) => visitor.session.csrf_secret.as_str(),
            None => session::cookie(headers, session::SIGNIN_COOKIE).unwrap_or_default(),
        };
        if !csrf::token_matches(expected, fields.get(csrf::FIELD)) {
            return Err(bad_token());
        }
        Ok(visitor)
    }
}

/// Where a session at `gate` is sent instead of a page that lets `allow` through (`None`: it
/// may stay).
fn elsewhere(gate: Gate, allow: Allow) -> Option<&'static str> {
    match (gate, allow) {
        (Gate::NeedsCode, Allow::Code)
        | (Gate::Open, Allow::Open | Allow::Machines | Allow::Enrol)
        | (Gate::MustEnrol, Allow::Enrol) => None,
        (Gate::NeedsCode, _) => Some("/portal/signin/totp"),
        (Gate::MustEnrol, _) => Some("/portal/profile"),
        (Gate::Open, Allow::Code) => Some("/portal/machines"),
    }
}

fn cross_site() -> Response {
    views::message(
        StatusCode::FORBIDDEN,
        "Not allowed",
        None,
        "This form was sent from another site, and is refused. Open the portal itself and try again.",
    )
}

fn bad_token() -> Response {
    views::message(
        StatusCode::FORBIDDEN,
        "Not allowed",
        None,
        "This form has expired or did not come from this page (its security token is missing or wrong). \
         Reload the page and try again.",
    )
}
