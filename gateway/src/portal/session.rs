//! Who is signed in: the session cookie (`__Host-tether_session`: `Secure; HttpOnly;
//! SameSite=Lax; Path=/`) holds 32 random bytes; the store keeps only their SHA-256. Each request
//! resolves the cookie to its session row, judges its idle and absolute ends, and resolves the
//! user afresh through `Store::principal` (a portal session acts as scope `attach`), so a
//! suspended user's session stops working at once. [`Visitor::gate`] says how far the session
//! may go: everywhere, only to the TOTP step (the user has a second factor and has not given a
//! code yet), or only to enrolment (an operator without a second factor).
//!
//! What it does not do: check passwords or codes (`signin`, `totp`), or CSRF tokens (`csrf`).

use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine;
use rand::RngCore;
use time::OffsetDateTime;

use crate::policy::{Principal, Relations, Role};
use crate::store::{NewSession, SessionRecord, StoreError, TokenScope, UserRecord};

use super::Portal;

/// The session cookie. `__Host-`: the browser keeps it only if it is `Secure`, `Path=/` and has
/// no `Domain`, so no other host (a subdomain) can set or read it.
pub const SESSION_COOKIE: &str = "__Host-tether_session";
/// The sign-in form's own CSRF cookie (there is no session yet): a double-submit token.
pub const SIGNIN_COOKIE: &str = "__Host-tether_signin";
/// How long a session that passed the password may wait for its TOTP code.
pub const CODE_WINDOW: time::Duration = time::Duration::minutes(5);
/// Largest `Cookie` header value looked at.
const MAX_COOKIE_HEADER: usize = 8 * 1024;
/// Sessions are written as used at most this often (not on every request).
const TOUCH_EVERY: time::Duration = time::Duration::minutes(1);
/// The longest a session of a person the root sent lasts (then the root's portal sends them
/// again, with what it grants them then).
pub const ROOT_SESSION_MAX: time::Duration = time::Duration::hours(1);

/// 32 random bytes, base64url: a session id, a CSRF secret, a sign-in form token.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keys a session by.
pub fn id_hash(id: &str) -> String {
    crate::auth::hash_token(id)
}

/// The value of cookie `name` in the request, if it has the shape of one of ours.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter(|v| v.len() <= MAX_COOKIE_HEADER)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| v.len() == 43 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// `Set-Cookie` for `name` = `value`, living `max_age` seconds (0: delete it).
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> HeaderValue {
    let text = format!("{name}={value}; Max-Age={}; Path=/; Secure; HttpOnly; SameSite=Lax", max_age.max(0));
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("__Host-tether_invalid=; Max-Age=0"))
}

/// How far a session may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Everywhere the policy allows.
    Open,
    /// Only the TOTP step (the password was right; the code is still due).
    NeedsCode,
    /// Only TOTP enrolment (an operator without a second factor) and sign-out.
    MustEnrol,
}

/// A signed-in browser: its session, its user as of this request, and what the policy needs.
#[derive(Debug, Clone)]
pub struct Visitor {
    pub session: SessionRecord,
    pub user: UserRecord,
    pub principal: Principal,
    pub relations: Relations,
    pub has_totp: bool,
}

impl Visitor {
    pub fn gate(&self) -> Gate {
        if self.session.via_root {
            // The root checked the password and the second factor; this silo has neither.
            Gate::Open
        } else if self.has_totp && !self.session.second_factor {
            Gate::NeedsCode
        } else if self.principal.role == Role::Operator && !self.has_totp {
            Gate::MustEnrol
        } else {
            Gate::Open
        }
    }
}

/// What resolving a cookie came to.
#[derive(Debug)]
pub enum Resolved {
    /// No cookie, an unknown one, or a session past its end (deleted now).
    Nobody,
    /// The session's user is suspended (the session is deleted now).
    Suspended,
    Visitor(Box<Visitor>),
}

impl Portal {
    /// The visitor behind the request's session cookie (see the module doc).
    pub async fn resolve(&self, headers: &HeaderMap, now: OffsetDateTime) -> Result<Resolved, StoreError> {
        let Some(id) = cookie(headers, SESSION_COOKIE) else { return Ok(Resolved::Nobody) };
        let store = &self.shared.store;
        let Some(session) = store.session(&id_hash(id)).await? else { return Ok(Resolved::Nobody) };
        let config = &self.shared.config.portal;
        let idle_end = session.last_seen + config.session_idle();
        if now >= session.expires_at || now >= idle_end {
            store.delete_session(session.id).await?;
            return Ok(Resolved::Nobody);
        }
        let Some(principal) = store.principal(session.user_id, TokenScope::Attach).await? else {
            store.delete_session(session.id).await?;
            return Ok(Resolved::Nobody);
        };
        if principal.suspended {
            store.delete_session(session.id).await?;
            return Ok(Resolved::Suspended);
        }
        let Some(user) = store.user(session.user_id).await? else { return Ok(Resolved::Nobody) };
        let has_totp = store.user_totp_secret(user.id).await?.is_some();
        if has_totp && !session.second_factor && now >= session.created_at + CODE_WINDOW {
            // The code was never given: sign in again.
            store.delete_session(session.id).await?;
            return Ok(Resolved::Nobody);
        }
        if now - session.last_seen >= TOUCH_EVERY {
            store.touch_session(session.id, now).await?;
        }
        let relations = store.relations(user.id).await?;
        Ok(Resolved::Visitor(Box::new(Visitor { session, user, principal, relations, has_totp })))
    }

    /// Starts a session for `user_id` (its old ones beyond the cap end); the id for the cookie.
    pub async fn start_session(
        &self,
        user_id: i64,
        second_factor: bool,
        now: OffsetDateTime,
    ) -> Result<String, StoreError> {
        self.new_session(user_id, second_factor, false, self.shared.config.portal.session_max(), now).await
    }

    /// Starts the session of a person the root sent (a maintenance silo): it ends after
    /// [`ROOT_SESSION_MAX`] at the latest, since what the root granted may change.
    pub async fn start_root_session(&self, user_id: i64, now: OffsetDateTime) -> Result<String, StoreError> {
        let lasts = self.shared.config.portal.session_max().min(ROOT_SESSION_MAX);
        self.new_session(user_id, true, true, lasts, now).await
    }

    async fn new_session(
        &self,
        user_id: i64,
        second_factor: bool,
        via_root: bool,
        lasts: time::Duration,
        now: OffsetDateTime,
    ) -> Result<String, StoreError> {
        let config = &self.shared.config.portal;
        let id = random_token();
        let new = NewSession {
            id_hash: id_hash(&id),
            user_id,
            now,
            expires_at: now + lasts,
            second_factor,
            csrf_secret: random_token(),
            via_root,
        };
        self.shared.store.create_session(&new, now - config.session_idle()).await?;
        Ok(id)
    }

    /// The session cookie for a new session.
    pub fn session_cookie(&self, id: &str) -> HeaderValue {
        set_cookie(SESSION_COOKIE, id, self.shared.config.portal.session_max().whole_seconds())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name_and_shape_only() {
        let id = random_token();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&format!("a=b; {SESSION_COOKIE}={id}; c=d")).unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some(id.as_str()));
        assert_eq!(cookie(&headers, SIGNIN_COOKIE), None);
        headers.insert(header::COOKIE, HeaderValue::from_static("__Host-tether_session=short"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), None);
        let set = set_cookie(SESSION_COOKIE, &id, 60);
        let set = set.to_str().unwrap();
        for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=60"] {
            assert!(set.contains(flag), "{set}");
        }
        assert!(!set.contains("Domain"), "{set}");
    }
}
