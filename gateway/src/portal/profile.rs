//! The visitor's own account: username, email, role, and the TOTP second factor. Enrolment
//! shows a new secret (base32 and `otpauth://` URI), kept sealed in the session until the user
//! confirms it with a code; only then is it saved, the session counted as having passed the
//! second factor and the user's other sessions ended. Removing it takes a current code; an
//! operator who removes it is sent straight back to enrolment (operators must have one).
//!
//!
//! Also, through the flows: a change of the account's email, or of one relation's contact email
//! (`flows.request_email_change`: a link goes to the new address), and its confirmation page
//! `/portal/email/confirm?secret=…` (the link in the mail; confirming is a POST, so that a mail
//! scanner following links confirms nothing: `flows.confirm_email_change`); and per active
//! contact relation, "your subscribers": nickname and alert preferences
//! (`flows.update_contact_prefs`), the contact email, and leaving (`contacts::leave`).

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Form};
use maud::html;
use tracing::{info, warn};

use super::session::{Gate, Visitor};
use super::{actor, refused, totp, unavailable, views, Allow, Fields, Portal};
use crate::api::connection::Connection;
use crate::policy::Role;
use crate::store::{ContactRecord, ContactState};

pub(super) async fn show(State(portal): State<Arc<Portal>>, headers: HeaderMap) -> Response {
    match portal.require(&headers, Allow::Enrol).await {
        Ok(visitor) => full_profile_page(&portal, &visitor, StatusCode::OK, None).await,
        Err(response) => response,
    }
}

/// A subscriber the visitor is an active contact of: the relation and the subscriber's name.
struct Related {
    contact: ContactRecord,
    subscriber: String,
}

/// The visitor's active relations, with their subscribers' names.
async fn related(portal: &Portal, visitor: &Visitor) -> Result<Vec<Related>, Response> {
    let store = &portal.shared.store;
    let contacts = store.contacts_of_user(visitor.user.id).await.map_err(unavailable)?;
    let mut list = Vec::new();
    for contact in contacts.into_iter().filter(|c| c.state == ContactState::Active) {
        let pii = store.subscriber_pii(contact.subscriber_id).await.map_err(unavailable)?;
        let subscriber = pii.map_or_else(|| format!("Subscriber #{}", contact.subscriber_id), |p| p.name);
        list.push(Related { contact, subscriber });
    }
    Ok(list)
}

/// The profile with the visitor's relations (when the gate lets the visitor past enrolment).
async fn full_profile_page(portal: &Portal, visitor: &Visitor, status: StatusCode, note: Option<&str>) -> Response {
    let relations = if visitor.gate() == Gate::Open {
        match related(portal, visitor).await {
            Ok(list) => list,
            Err(response) => return response,
        }
    } else {
        Vec::new()
    };
    profile_page_with(portal, visitor, status, None, note, &relations)
}

fn profile_page(portal: &Portal, visitor: &Visitor, status: StatusCode, error: Option<&str>) -> Response {
    profile_page_with(portal, visitor, status, error, None, &[])
}

fn profile_page_with(
    portal: &Portal,
    visitor: &Visitor,
    status: StatusCode,
    error: Option<&str>,
    note: Option<&str>,
    relations: &[Related],
) -> Response {
    let pending = visitor
        .session
        .totp_pending
        .as_deref()
        .and_then(|sealed| totp::open(&portal.shared.sealer, visitor.user.id, sealed).ok());
    let issuer = &portal.shared.config.portal.totp_issuer;
    let csrf = &visitor.session.csrf_secret;
    let body = html! {
        @if let Some(error) = error { p.error { (error) } }
        @if let Some(note) = note { p.note { (note) } }
        @if visitor.gate() == Gate::MustEnrol {
            p.note { "Operators must use a second factor. Set one up below before anything else." }
        }
        table {
            tr { th { "Username" } td { (visitor.user.username) } }
            tr { th { "Email" } td { (visitor.user.email.as_deref().unwrap_or("—")) } }
            tr { th { "Role" } td { (visitor.user.role.as_str()) } }
            tr { th { "Second factor" } td { @if visitor.has_totp { "on (TOTP)" } @else { "off" } } }
        }
        @if visitor.gate() == Gate::Open {
            h2 { "Email" }
            p { "A link goes to the new address; the change takes effect when it is followed." }
            form method="post" action="/portal/profile/email" {
                (views::csrf_field(csrf))
                label for="new-email" { "New email address" }
                input #new-email type="email" name="email" maxlength="254" required;
                div { button type="submit" { "Change the email" } }
            }
            @for owned in &visitor.relations.owns {
                p { a href={ "/portal/subscribers/" (owned.subscriber_id) "/contacts" } { "Your support contacts" } }
            }
            @if !relations.is_empty() {
                h2 { "Your subscribers" }
                p { "You are a support contact of:" }
                @for r in relations {
                    @let id = r.contact.id;
                    section.relation {
                        h3 { (r.subscriber) }
                        p.muted { "Since " (views::when(r.contact.accepted_at)) "; mail about it goes to " (r.contact.mail_address()) "." }
                        form method="post" action={ "/portal/profile/contacts/" (id) } {
                            (views::csrf_field(csrf))
                            label for={ "nickname-" (id) } { "Your name, as " (r.subscriber) " sees it" }
                            input id={ "nickname-" (id) } type="text" name="nickname" value=(r.contact.nickname.as_deref().unwrap_or_default()) maxlength="254" required;
                            (views::alert_fields(Some(r.contact.alert_prefs.as_ref().unwrap_or(&serde_json::Value::Null))))
                            div { button type="submit" { "Save" } }
                        }
                        form method="post" action="/portal/profile/email" {
                            (views::csrf_field(csrf))
                            input type="hidden" name="contact_id" value=(id);
                            label for={ "contact-email-" (id) } { "Email for " (r.subscriber) }
                            input id={ "contact-email-" (id) } type="email" name="email" maxlength="254" required;
                            div { button type="submit" { "Change this email" } }
                        }
                        form method="post" action={ "/portal/subscribers/" (r.contact.subscriber_id) "/leave" } {
                            (views::csrf_field(csrf))
                            button type="submit" { "Leave " (r.subscriber) }
                        }
                    }
                }
            }
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

/// Asks to change the account's email, or with `contact_id` one relation's contact email.
pub(super) async fn change_email(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let contact_id = match fields.get("contact_id").filter(|id| !id.is_empty()) {
        None => None,
        Some(id) => match id.parse::<i64>() {
            Ok(id) => Some(id),
            Err(_) => return views::message(StatusCode::BAD_REQUEST, "Profile", Some(&visitor), "No such contact."),
        },
    };
    let email = fields.get("email").unwrap_or_default();
    match portal.flows().request_email_change(&actor(&visitor), contact_id, email).await {
        Ok(()) => {
            let note = format!("A link went to {}: the change takes effect when it is followed.", email.trim());
            full_profile_page(&portal, &visitor, StatusCode::ACCEPTED, Some(&note)).await
        }
        Err(err) => refused(Some(&visitor), err, "Changing the email"),
    }
}

/// Changes the nickname and alert preferences of one of the visitor's active relations.
pub(super) async fn update_prefs(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(contact): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let Ok(contact) = contact.parse::<i64>() else {
        return views::message(StatusCode::BAD_REQUEST, "Profile", Some(&visitor), "No such contact.");
    };
    let nickname = fields.get("nickname").unwrap_or_default();
    match portal.flows().update_contact_prefs(&actor(&visitor), contact, nickname, &fields.alert_prefs()).await {
        Ok(_) => views::redirect("/portal/profile"),
        Err(err) => refused(Some(&visitor), err, "Saving the preferences"),
    }
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ConfirmQuery {
    secret: Option<String>,
}

/// Longest confirmation secret looked at (they are 43 characters).
const MAX_SECRET: usize = 128;

/// The page the email change link opens: a button to confirm (a GET changes nothing).
pub(super) async fn confirm_form(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    query: Result<Query<ConfirmQuery>, QueryRejection>,
) -> Response {
    let visitor = match portal.resolve(&headers, time::OffsetDateTime::now_utc()).await {
        Ok(super::session::Resolved::Visitor(visitor)) => Some(*visitor),
        Ok(_) => None,
        Err(err) => return unavailable(err),
    };
    let secret = query.ok().and_then(|Query(q)| q.secret).unwrap_or_default();
    if secret.is_empty() || secret.len() > MAX_SECRET {
        return views::message(
            StatusCode::NOT_FOUND,
            "Confirm the email",
            visitor.as_ref(),
            "This link is incomplete: open the whole link from the mail.",
        );
    }
    let (token, cookie) = super::form_token(&headers, visitor.as_ref());
    let body = maud::html! {
        p { "Confirm the new email address of your Tether account." }
        form method="post" action="/portal/email/confirm" {
            (views::csrf_field(&token))
            input type="hidden" name="secret" value=(secret);
            button type="submit" { "Confirm the new address" }
        }
    };
    let mut response = views::page(StatusCode::OK, "Confirm the email", visitor.as_ref(), body);
    if let Some(cookie) = cookie {
        response.headers_mut().append(axum::http::header::SET_COOKIE, cookie);
    }
    response
}

/// Confirms an email change (the secret is the proof: it was mailed to the new address).
pub(super) async fn confirm(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.check_form(&headers, &fields).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let secret = fields.get("secret").unwrap_or_default();
    match portal.flows().confirm_email_change(secret).await {
        Ok(changed) => {
            let what = if changed.contact_id.is_some() { "The contact email" } else { "Your account's email" };
            let text = format!("{what} is now {}.", changed.new_email);
            let body = maud::html! { p.note { (text) } p { a href="/portal" { "Continue" } } };
            views::page(StatusCode::OK, "Email confirmed", visitor.as_ref(), body)
        }
        Err(err) => refused(visitor.as_ref(), err, "Confirming the email"),
    }
}
