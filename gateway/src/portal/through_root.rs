//! The portal through the root (`silo::signin`, `docs/silos.md`, "The portal through the root"):
//! both ends.
//!
//! At a **root**: the machines page shows a button for each maintenance silo with a portal that
//! holds machines the visitor sees (every such silo, for an operator; [`silos_for`]). The button
//! posts to `/portal/silos/{name}/open` ([`open`]): the root signs an assertion for that silo
//! naming the visitor by its opaque id, with its role and the subscribers it owns or is an
//! active contact of (by their opaque ids), and sends the browser to the silo's portal with it.
//!
//! At a **maintenance** silo: [`arrive`] (`GET /portal/root-signin`) checks the assertion with the
//! root's key from the bundle (signature, this silo, its times, its shape), without asking the
//! root; takes its nonce once; makes or updates the person (`store::root_visitors`: a user under
//! the opaque id, no name or email, and the grants); opens a session that ends within
//! [`session::ROOT_SESSION_MAX`]; and goes on to the machines. Such a session sees the machines
//! and their pages only; every other page sends the person back to the root
//! ([`Portal::at_the_root`]).

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::session::{self, Visitor};
use super::{unavailable, views, Allow, Fields, Portal};
use crate::silo::signin::{Assertion, Grant, Handoff, SigninError, MAX_ASSERTION, MAX_GRANTS};
use crate::silo::{Role as SiloRole, Silo};
use crate::store::{SiloRecord, StoreError};

/// The silos whose portal the visitor may be sent to (a root; none elsewhere): for an operator
/// every silo with a portal, for anyone else those holding machines of its subscribers.
pub(super) async fn silos_for(portal: &Portal, visitor: &Visitor) -> Result<Vec<SiloRecord>, StoreError> {
    if portal.shared.silo.role() != SiloRole::Root {
        return Ok(Vec::new());
    }
    if visitor.principal.role == crate::policy::Role::Operator {
        return portal.shared.store.silo_portals(None).await;
    }
    let relations = &visitor.relations;
    let ids: Vec<i64> = relations.owns.iter().chain(&relations.contact_of).map(|r| r.subscriber_id).collect();
    portal.shared.store.silo_portals(Some(&ids)).await
}

/// The buttons that open each silo's portal (nothing when there is none).
pub(super) fn buttons(visitor: &Visitor, silos: &[SiloRecord]) -> Markup {
    html! {
        @if !silos.is_empty() {
            h2 { "Maintenance silos" }
            p { "The health, reports and history of these machines are kept by the maintenance silo that looks
                 after them. Open its portal, signed in as you are here:" }
            @for silo in silos {
                form method="post" action={ "/portal/silos/" (silo.name) "/open" } {
                    (views::csrf_field(&visitor.session.csrf_secret))
                    button type="submit" { "Open " (silo.name) }
                }
            }
        }
    }
}

/// The silos' portals, as origins a page's forms may go to (through the root's redirect).
pub(super) fn origins(silos: &[SiloRecord]) -> Vec<String> {
    silos.iter().filter_map(|s| s.portal_url.clone()).collect()
}

/// `POST /portal/silos/{name}/open` (a root): the visitor goes to silo `name`'s portal, signed in.
pub(super) async fn open(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    if portal.shared.silo.role() != SiloRole::Root {
        let text = "Only a root sends people to maintenance silos; this gateway is not one.";
        return views::message(StatusCode::NOT_FOUND, "Not a root", Some(&visitor), text);
    }
    let store = &portal.shared.store;
    let silo = match store.silo(&name).await {
        Ok(silo) => silo,
        Err(err) => return unavailable(err),
    };
    let Some((silo, portal_url)) = silo.and_then(|s| s.portal_url.clone().map(|url| (s, url))) else {
        let text = "No registered silo of that name has a portal (`tether silo portal NAME URL` on the root).";
        return views::message(StatusCode::NOT_FOUND, "No such silo portal", Some(&visitor), text);
    };
    let (subject, grants) = match what_to_assert(&portal, &visitor).await {
        Ok(Some(both)) => both,
        Ok(None) => return views::redirect("/portal/signin"),
        Err(err) => return unavailable(err),
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let granted = grants.len();
    let assertion = Assertion::new(&silo.name, &subject, visitor.principal.role, grants, now);
    let handoff = Handoff::sign(&portal.shared.agent_keys, &assertion);
    info!(user = %visitor.user.username, silo = %silo.name, granted, "portal: sent to a maintenance silo, signed in");
    views::redirect(&handoff.url(&portal_url))
}

/// The visitor's opaque id, and the subscribers it owns or is an active contact of, by their
/// opaque ids (the first [`MAX_GRANTS`]). `None`: the user is gone.
async fn what_to_assert(portal: &Portal, visitor: &Visitor) -> Result<Option<(String, Vec<Grant>)>, StoreError> {
    let store = &portal.shared.store;
    let Some(subject) = store.user_opaque_id(visitor.user.id).await? else { return Ok(None) };
    let relations = &visitor.relations;
    let owned = relations.owns.iter().map(|r| (r, true));
    let related = owned.chain(relations.contact_of.iter().map(|r| (r, false))).take(MAX_GRANTS);
    let mut grants = Vec::new();
    for (relation, owner) in related {
        match store.entitlement(relation.subscriber_id).await {
            Ok(entitlement) => {
                grants.push(Grant { subscriber: entitlement.opaque_id, owner, active: relation.subscription_active })
            }
            Err(crate::store::SiloError::Store(err)) => return Err(err),
            // Gone since the relations were read: nothing to grant.
            Err(_) => {}
        }
    }
    Ok(Some((subject, grants)))
}

/// `GET /portal/root-signin?assertion=…&signature=…` (a maintenance silo): a person the root
/// sent arrives.
pub(super) async fn arrive(State(portal): State<Arc<Portal>>, uri: Uri) -> Response {
    let Silo::Maintenance(maintenance) = &portal.shared.silo else {
        let text = "Only a maintenance silo takes people its root sends; this gateway is not one.";
        return views::message(StatusCode::NOT_FOUND, "Not a maintenance silo", None, text);
    };
    // The cheap checks first: the length, the shape, then one signature check.
    if uri.query().map_or(0, str::len) > 2 * MAX_ASSERTION {
        return refused_link(StatusCode::BAD_REQUEST, "the sign-in link is too long", "malformed");
    }
    let Ok(Query(handoff)) = Query::<Handoff>::try_from_uri(&uri) else {
        return refused_link(StatusCode::BAD_REQUEST, "the sign-in link is damaged", "malformed");
    };
    let root_key = match maintenance.bundle.signing_key() {
        Ok(key) => key,
        Err(err) => {
            warn!(error = %format!("{err:#}"), "cannot read the root's signing key from the bundle");
            return refused_link(StatusCode::INTERNAL_SERVER_ERROR, "this silo's bundle is damaged", "bundle");
        }
    };
    let now = OffsetDateTime::now_utc();
    let assertion = match handoff.verify(&root_key, maintenance.name(), now.unix_timestamp()) {
        Ok(assertion) => assertion,
        Err(err) => return refused_assertion(err),
    };
    let store = &portal.shared.store;
    let ends = OffsetDateTime::from_unix_timestamp(assertion.expires_at).unwrap_or(now);
    match store.spend_signin_nonce(&assertion.nonce, ends, now).await {
        Ok(true) => {}
        Ok(false) => return refused_assertion(SigninError::Replayed),
        Err(err) => return unavailable(err),
    }
    let grants = &assertion.grants;
    let user_id = match store.root_visitor(&assertion.subject, assertion.role(), grants, now).await {
        Ok(id) => id,
        Err(err) => return unavailable(err),
    };
    match store.principal(user_id, crate::store::TokenScope::Attach).await {
        Ok(Some(principal)) if !principal.suspended => {}
        Ok(_) => return views::forbidden(None, crate::policy::Denied::Suspended, "Signing in through the root"),
        Err(err) => return unavailable(err),
    }
    let id = match portal.start_root_session(user_id, now).await {
        Ok(id) => id,
        Err(err) => return unavailable(err),
    };
    info!(subject = %assertion.subject, role = %assertion.role, grants = grants.len(), "portal: signed in through the root");
    let mut response = views::redirect("/portal/machines");
    let cookie = session::set_cookie(session::SESSION_COOKIE, &id, session::ROOT_SESSION_MAX.whole_seconds());
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

/// An assertion refused (logged): 403 with why.
fn refused_assertion(err: SigninError) -> Response {
    warn!(code = err.code(), error = %err, "portal: a sign-in through the root refused");
    refused_link(StatusCode::FORBIDDEN, &err.to_string(), err.code())
}

/// A refused sign-in link: what was wrong, and where to start again.
fn refused_link(status: StatusCode, text: &str, code: &str) -> Response {
    views::refusal(status, None, "Signing in through the root", text, code)
}

impl Portal {
    /// The page a person the root sent gets for anything but the machines: it is done at the root.
    pub(super) fn at_the_root(&self, visitor: &Visitor) -> Response {
        let root = self.root_portal();
        let body = html! {
            p { "You came here through the root's portal: this maintenance silo shows the machines and their
                 history. Accounts, contacts, subscribers and support actions are at the root." }
            p { a href=(root) { "Go to the root's portal" } " · " a href="/portal/machines" { "Machines here" } }
        };
        views::page(StatusCode::FORBIDDEN, "At the root", Some(visitor), body)
    }

    /// The root's portal, as this maintenance silo's bundle names the root (this portal elsewhere).
    pub(super) fn root_portal(&self) -> String {
        match &self.shared.silo {
            Silo::Maintenance(maintenance) => format!("{}/portal/machines", maintenance.bundle.root_api),
            _ => "/portal/machines".to_string(),
        }
    }
}
