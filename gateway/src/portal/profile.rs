//! The visitor's own account: username, email, role, and the TOTP second factor. Enrolment
//! shows a new secret (base32 and `otpauth://` URI), kept sealed in the session until the user
//! confirms it with a code; only then is it saved, the session counted as having passed the
//! second factor and the user's other sessions ended. Removing it takes a current code; an
//! operator who removes it is sent straight back to enrolment (operators must have one).
//!
//! Email change, nickname and alert preferences wait for the shared `flows` module.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Form};
use maud::html;
use tracing::{info, warn};

use super::session::{Gate, Visitor};
use super::{totp, unavailable, views, Allow, Fields, Portal};
use crate::api::Connection;
use crate::policy::Role;

pub(super) async fn show(State(portal): State<Arc<Portal>>, headers: HeaderMap) -> Response {
    match portal.require(&headers, Allow::Enrol).await {
        Ok(visitor) => profile_page(&portal, &visitor, StatusCode::OK, None),
        Err(response) => response,
    }
}

fn profile_page(portal: &Portal, visitor: &Visitor, status: StatusCode, error: Option<&str>) -> Response {
    let pending = visitor
        .session
        .totp_pending
        .as_deref()
        .and_then(|sealed| totp::open(&portal.shared.sealer, visitor.user.id, sealed).ok());
    let issuer = &portal.shared.config.portal.totp_issuer;
    let csrf = &visitor.session.csrf_secret;
    let body = html! {
        @if let Some(error) = error { p.error { (error) } }
        @if visitor.gate() == Gate::MustEnrol {
            p.note { "Operators must use a second factor. Set one up below before anything else." }
        }
        table {
            tr { th { "Username" } td { (visitor.user.username) } }
            tr { th { "Email" } td { (visitor.user.email.as_deref().unwrap_or("—")) } }
            tr { th { "Role" } td { (visitor.user.role.as_str()) } }
            tr { th { "Second factor" } td { @if visitor.has_totp { "on (TOTP)" } @else { "off" } } }
        }
        h2 { "Second factor (TOTP)" }
        @if visitor.has_totp {
            p { "To remove it, enter a current code." }
            @if visitor.user.role == Role::Operator {
                p.muted { "Operators must have one: you will be asked to set up a new one at once." }
            }
            form method="post" action="/portal/profile/totp/remove" {
                (views::csrf_field(csrf))
                label for="remove-code" { "Code" }
                input #remove-code type="text" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="6" required;
                div { button type="submit" { "Remove the second factor" } }
            }
        } @else if let Some(secret) = &pending {
            p { "Add this key to your authenticator app (type it in, or open the link on the phone that has the app), then enter the code the app shows." }
            p { "Key: " code { (secret) } }
            @let uri = totp::otpauth_uri(issuer, &visitor.user.username, secret);
            p { a href=(uri) { "Open in an authenticator app" } }
            p.muted { code { (uri) } }
            form method="post" action="/portal/profile/totp/confirm" {
                (views::csrf_field(csrf))
                label for="confirm-code" { "Code" }
                input #confirm-code type="text" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="6" required;
                div { button type="submit" { "Turn on" } }
            }
        } @else {
            p { "A code from an authenticator app on your phone, asked after your password." }
            form method="post" action="/portal/profile/totp/start" {
                (views::csrf_field(csrf))
                button type="submit" { "Set up a second factor" }
            }
        }
    };
    views::page(status, "Profile", Some(visitor), body)
}

/// Makes a new secret and keeps it (sealed) in the session until it is confirmed.
pub(super) async fn totp_start(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Enrol).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    if visitor.has_totp {
        return views::redirect("/portal/profile");
    }
    let sealed = totp::seal(&portal.shared.sealer, visitor.user.id, &totp::new_secret());
    if let Err(err) = portal.shared.store.set_session_totp_pending(visitor.session.id, Some(sealed)).await {
        return unavailable(err);
    }
    views::redirect("/portal/profile")
}

/// Saves the secret being enrolled once a code from it is right.
pub(super) async fn totp_confirm(
    State(portal): State<Arc<Portal>>,
    Extension(connection): Extension<Connection>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Enrol).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    if visitor.has_totp {
        return views::redirect("/portal/profile");
    }
    let Some(secret) = visitor
        .session
        .totp_pending
        .as_deref()
        .and_then(|sealed| totp::open(&portal.shared.sealer, visitor.user.id, sealed).ok())
    else {
        return profile_page(&portal, &visitor, StatusCode::BAD_REQUEST, Some("Start the setup again."));
    };
    let store = &portal.shared.store;
    let unix = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or_default();
    let source = connection.remote_ip();
    if let Some(wait) = portal.sign_in.blocked(source, &visitor.user.username) {
        return views::too_many(wait, Some(&visitor));
    }
    let step = match totp::matching_step(&secret, fields.get("code").unwrap_or_default(), unix) {
        Ok(Some(step)) => step,
        Ok(None) | Err(_) => {
            portal.sign_in.failed(source, &visitor.user.username);
            return profile_page(&portal, &visitor, StatusCode::UNAUTHORIZED, Some("Wrong code; try the next one."));
        }
    };
    let sealed = totp::seal(&portal.shared.sealer, visitor.user.id, &secret);
    let saved = async {
        store.set_user_totp_secret(visitor.user.id, Some(sealed)).await?;
        // The confirming code is spent: it cannot sign anyone in.
        store.spend_totp_step(visitor.user.id, step).await?;
        store.pass_second_factor(visitor.session.id).await?;
        store.delete_user_sessions(visitor.user.id, Some(visitor.session.id)).await
    };
    match saved.await {
        Ok(ended) => info!(user = %visitor.user.username, other_sessions_ended = ended, "TOTP second factor on"),
        Err(err) => return unavailable(err),
    }
    views::redirect("/portal/profile")
}

/// Removes the second factor, given a current code.
pub(super) async fn totp_remove(
    State(portal): State<Arc<Portal>>,
    Extension(connection): Extension<Connection>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Enrol).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    if !visitor.has_totp {
        return views::redirect("/portal/profile");
    }
    let source = connection.remote_ip();
    if let Err(refused) = portal.check_code(&visitor, source, fields.get("code").unwrap_or_default()).await {
        return refused.page(&visitor, |visitor, status, error| {
            views::message(status, "Profile", Some(visitor), error.unwrap_or("Wrong code."))
        });
    }
    if let Err(err) = portal.shared.store.set_user_totp_secret(visitor.user.id, None).await {
        warn!(user = %visitor.user.username, error = %err, "cannot remove a TOTP secret");
        return unavailable(err);
    }
    info!(user = %visitor.user.username, "TOTP second factor removed");
    views::redirect("/portal/profile")
}
