//! An invitation's link, `/portal/invitations/{guid}` (the invitation mail points here):
//! `flows.invitation` says who invites and whether the invitation is still open; an expired one
//! says that a new invitation is needed. A signed-in visitor accepts it here: the terms (a short
//! text, [`TERMS_VERSION`]), a nickname, an optional contact email and alert preferences
//! (`flows.accept`). A visitor without a session signs in (and comes back, `next`) or creates an
//! account on this page: the GUID of an open invitation is what allows it (`flows.sign_up`).
//!
//! Creating an account is checked in this order, cheapest first: origin, the form's token, the
//! fields' sizes, the sign-in throttle (per source and username), the invitation being open,
//! the fields themselves and the username being free, and only then the password is hashed;
//! each account made counts against the source as a failed sign-in would, so one GUID cannot
//! make a source hash passwords without bound. The new user is signed in (a new session) and
//! sent back here to accept.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Form};
use maud::html;
use time::OffsetDateTime;
use tracing::info;
use uuid::Uuid;

use super::session::{self, Gate, Resolved, Visitor};
use super::{actor, form_token, refused, unavailable, views, Allow, Fields, Portal};
use crate::api::connection::Connection;
use crate::flows::{self, FlowError, InvitationView, NewUser};
use crate::policy::Role;
use crate::store::{Acceptance, AccountError};

/// The version of [`TERMS`] a contact accepts (kept with the relation).
pub const TERMS_VERSION: &str = "2026-1";
/// What a support contact agrees to.
pub const TERMS: &str = "As a support contact you may see the subscriber's machines, their state and \
    their activity, and open remote sessions to them while the subscriber's subscription is active. \
    You act on the subscriber's behalf only, keep what you see confidential, and use the access only \
    to help the subscriber. Every view and session is recorded in the machine's activity, which the \
    subscriber sees. The subscriber may remove you at any time, and you may leave at any time from \
    your profile.";

fn path_of(guid: Uuid) -> String {
    format!("/portal/invitations/{guid}")
}

fn no_such(visitor: Option<&Visitor>) -> Response {
    views::message(
        StatusCode::NOT_FOUND,
        "No such invitation",
        visitor,
        "This link names no invitation; check that the whole link from the mail was opened.",
    )
}

/// The visitor, if any; or where a session part-way through signing in is sent first.
async fn visitor_here(portal: &Portal, headers: &HeaderMap, guid: Uuid) -> Result<Option<Visitor>, Response> {
    match portal.resolve(headers, OffsetDateTime::now_utc()).await {
        Ok(Resolved::Visitor(visitor)) => match visitor.gate() {
            Gate::Open => Ok(Some(*visitor)),
            Gate::NeedsCode => {
                let next = views::query_value(&path_of(guid));
                Err(views::redirect(&format!("/portal/signin/totp?next={next}")))
            }
            Gate::MustEnrol => Err(views::redirect("/portal/profile")),
        },
        Ok(Resolved::Nobody) => Ok(None),
        Ok(Resolved::Suspended) => Err(views::forbidden(None, crate::policy::Denied::Suspended, "Signing in")),
        Err(err) => Err(unavailable(err)),
    }
}

pub(super) async fn show(State(portal): State<Arc<Portal>>, headers: HeaderMap, Path(guid): Path<String>) -> Response {
    let Ok(guid) = Uuid::parse_str(&guid) else { return no_such(None) };
    let visitor = match visitor_here(&portal, &headers, guid).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    invitation_page(&portal, &headers, visitor.as_ref(), guid, StatusCode::OK, None).await
}

/// The invitation, and what the visitor can do with it (`error`: why the last form failed).
async fn invitation_page(
    portal: &Portal,
    headers: &HeaderMap,
    visitor: Option<&Visitor>,
    guid: Uuid,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let view = match portal.flows().invitation(guid).await {
        Ok(view) => view,
        Err(FlowError::Account(AccountError::NoSuchInvitation)) => return no_such(visitor),
        Err(err) => return refused(visitor, err, "Opening this invitation"),
    };
    if view.state != "invited" {
        return closed_page(visitor, &view);
    }
    let (token, cookie) = form_token(headers, visitor);
    let here = path_of(guid);
    let body = html! {
        p { strong { (view.subscriber) } " invites " strong { (view.invited_email) }
            " to be a support contact on Tether. The invitation is open until " (views::when(Some(view.expires_at))) "." }
        @if let Some(error) = error { p.error { (error) } }
        @match visitor {
            Some(visitor) => {
                h2 { "Accept" }
                p.muted { "Signed in as " (visitor.user.username) "." }
                form method="post" action={ (here) "/accept" } {
                    (views::csrf_field(&token))
                    input type="hidden" name="terms_version" value=(TERMS_VERSION);
                    p { "Terms for support contacts, version " (TERMS_VERSION) ":" }
                    div.terms { p { (TERMS) } }
                    label.check {
                        input type="checkbox" name="accept_terms" value="yes" required;
                        " I accept these terms (version " (TERMS_VERSION) ")"
                    }
                    label for="nickname" { "Your name, as " (view.subscriber) " will see it" }
                    input #nickname type="text" name="nickname" value=(visitor.user.username) maxlength="254" required;
                    label for="contact_email" { "Email for this subscriber (optional; empty: the invited address)" }
                    input #contact_email type="email" name="contact_email" maxlength="254";
                    (views::alert_fields(None))
                    div { button type="submit" { "Accept the invitation" } }
                }
            },
            None => {
                h2 { "Have an account?" }
                p { a href={ "/portal/signin?next=" (views::query_value(&here)) } { "Sign in" }
                    ", then you come back to this page to accept." }
                h2 { "New here? Create an account" }
                form method="post" action={ (here) "/signup" } {
                    (views::csrf_field(&token))
                    label for="username" { "Username" }
                    input #username type="text" name="username" autocomplete="username" autocapitalize="none" maxlength="64" required;
                    label for="password" { "Password (at least 8 characters)" }
                    input #password type="password" name="password" autocomplete="new-password" minlength="8" maxlength="1024" required;
                    label for="password2" { "Password again" }
                    input #password2 type="password" name="password2" autocomplete="new-password" minlength="8" maxlength="1024" required;
                    label for="email" { "Email" }
                    input #email type="email" name="email" value=(view.invited_email) maxlength="254" required;
                    div { button type="submit" { "Create the account" } }
                }
            },
        }
    };
    let mut response = views::page(status, "Invitation", visitor, body);
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// An invitation that can no longer be accepted: expired (a new one is needed) or closed.
fn closed_page(visitor: Option<&Visitor>, view: &InvitationView) -> Response {
    let (status, code) = if view.state == "expired" {
        (StatusCode::GONE, AccountError::InvitationExpired.code())
    } else {
        (StatusCode::CONFLICT, AccountError::InvitationClosed("").code())
    };
    let title = if view.state == "expired" { "Invitation expired" } else { "Invitation closed" };
    let body = html! {
        p { strong { (view.subscriber) } " invited " strong { (view.invited_email) } " to be a support contact." }
        p.error { "This invitation cannot be accepted: " (view.message) "." }
        @if view.state == "expired" {
            p { "Ask " (view.subscriber) " to invite you again: the new mail has a new link." }
        }
        p.muted { "Reason code: " code { (code) } }
    };
    views::page(status, title, visitor, body)
}

pub(super) async fn accept(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(guid): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let Ok(guid) = Uuid::parse_str(&guid) else { return no_such(Some(&visitor)) };
    let again = |error: &'static str| {
        let portal = Arc::clone(&portal);
        let headers = headers.clone();
        let visitor = visitor.clone();
        async move { invitation_page(&portal, &headers, Some(&visitor), guid, StatusCode::BAD_REQUEST, Some(error)).await }
    };
    if fields.get("terms_version") != Some(TERMS_VERSION) {
        return again("The terms changed meanwhile; read them again.").await;
    }
    if !fields.checked("accept_terms") {
        return again("To become a support contact, accept the terms.").await;
    }
    let contact_email = fields.get("contact_email").map(str::trim).filter(|e| !e.is_empty());
    let acceptance = Acceptance {
        terms_version: TERMS_VERSION.to_string(),
        nickname: fields.get("nickname").unwrap_or_default().to_string(),
        contact_email: contact_email.map(str::to_string),
        alert_prefs: fields.alert_prefs(),
    };
    match portal.flows().accept(&actor(&visitor), guid, acceptance).await {
        Ok(contact) => {
            info!(user = %visitor.user.username, contact = contact.id, "portal: invitation accepted");
            views::redirect("/portal/machines")
        }
        Err(err) => refused(Some(&visitor), err, "Accepting the invitation"),
    }
}

pub(super) async fn sign_up(
    State(portal): State<Arc<Portal>>,
    Extension(connection): Extension<Connection>,
    headers: HeaderMap,
    Path(guid): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.check_form(&headers, &fields).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let Ok(guid) = Uuid::parse_str(&guid) else { return no_such(visitor.as_ref()) };
    if visitor.is_some() {
        // Signed in already: accept as that account.
        return views::redirect(&path_of(guid));
    }
    let again = |status: StatusCode, error: String| {
        let portal = Arc::clone(&portal);
        let headers = headers.clone();
        async move { invitation_page(&portal, &headers, None, guid, status, Some(&error)).await }
    };
    let username = fields.get("username").unwrap_or_default().trim();
    let password = fields.get("password").unwrap_or_default();
    let password2 = fields.get("password2").unwrap_or_default();
    let email = fields.get("email").unwrap_or_default();
    if username.is_empty()
        || username.len() > 64
        || password.len() > flows::MAX_PASSWORD
        || password2.len() > flows::MAX_PASSWORD
    {
        return again(
            StatusCode::BAD_REQUEST,
            "A username is 1 to 64 characters, a password at most 1024 bytes.".into(),
        )
        .await;
    }
    // Before anything is looked up or hashed.
    let source = connection.remote_ip();
    if let Some(wait) = portal.sign_in.blocked(source, username) {
        return views::too_many(wait, None);
    }
    let flows = portal.flows();
    match flows.invitation(guid).await {
        Ok(view) if view.state == "invited" => {}
        Ok(view) => return closed_page(None, &view),
        Err(FlowError::Account(AccountError::NoSuchInvitation)) => return no_such(None),
        Err(err) => return refused(None, err, "Creating an account"),
    }
    if password != password2 {
        return again(StatusCode::BAD_REQUEST, "The two passwords differ; type the same one twice.".into()).await;
    }
    let checked = flows::username(username)
        .and_then(|_| flows::check_password(password))
        .and_then(|()| flows::email_address(email));
    if let Err(err) = checked {
        return again(StatusCode::BAD_REQUEST, err.to_string()).await;
    }
    match portal.shared.store.user_by_name(username).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return again(StatusCode::CONFLICT, AccountError::UsernameTaken(username.into()).to_string()).await
        }
        Err(err) => return unavailable(err),
    }
    // Each account made counts as a failed sign-in would: a GUID does not buy unbounded hashing.
    portal.sign_in.failed(source, username);
    portal.signup_hashes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let new = NewUser { username, email: Some(email), password, role: Role::User };
    let user_id = match flows.sign_up(guid, &new).await {
        Ok(id) => id,
        Err(err @ FlowError::Account(AccountError::UsernameTaken(_))) => {
            return again(StatusCode::CONFLICT, err.to_string()).await
        }
        Err(err) => return refused(None, err, "Creating an account"),
    };
    let id = match portal.start_session(user_id, false, OffsetDateTime::now_utc()).await {
        Ok(id) => id,
        Err(err) => return unavailable(err),
    };
    info!(user = %username, %source, %guid, "portal: account created from an invitation");
    let mut response = views::redirect(&path_of(guid));
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, portal.session_cookie(&id));
    headers.append(header::SET_COOKIE, session::set_cookie(session::SIGNIN_COOKIE, "", 0));
    response
}
