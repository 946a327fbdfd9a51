//! The portal in process: a browser (a cookie jar, forms with their CSRF tokens) against the
//! API's real router, with a real SQLite store in a temp dir. What a user signing in, an
//! operator setting up a second factor, a contact looking at machines, and a stranger forging
//! forms or guessing passwords see.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::json;
use time::OffsetDateTime;
use tower::ServiceExt;
use uuid::Uuid;

use super::session::SESSION_COOKIE;
use super::totp;
use crate::api::connection::Connection;
use crate::api::{self, Api};
use crate::config::Config;
use crate::policy::Role;
use crate::state::TestState;
use crate::store::{Acceptance, NewSubscriber, Store, SubscriberPii, MAX_SESSIONS_PER_USER};

pub(super) const PASSWORD: &str = "correct horse battery";

pub(super) struct Bed {
    pub(super) app: Router,
    pub(super) api: Arc<Api>,
    pub(super) state: TestState,
}

impl Bed {
    pub(super) async fn new() -> Bed {
        let state = TestState::new(Config::default()).await;
        let api = Api::new(Arc::clone(&state.shared));
        let app = api::router(Arc::clone(&api));
        Bed { app, api, state }
    }

    pub(super) fn store(&self) -> &Store {
        &self.state.shared.store
    }

    pub(super) async fn user(&self, name: &str, role: Role) -> i64 {
        self.store().create_user(name, Some(&format!("{name}@example.com")), Some(PASSWORD), role, now()).await.unwrap()
    }

    pub(super) fn browser(&self, from: &str) -> Browser<'_> {
        Browser { bed: self, from: SocketAddr::new(from.parse().unwrap(), 50_000), cookies: HashMap::new() }
    }
}

pub(super) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub(super) fn unix_now() -> u64 {
    u64::try_from(now().unix_timestamp()).unwrap()
}

#[derive(Debug)]
pub(super) struct Page {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: String,
}

impl Page {
    pub(super) fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The CSRF token of the page's first form.
    pub(super) fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
        self.body[at..].split('"').next().unwrap().to_string()
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).collect()
    }
}

/// A browser: keeps cookies, sends forms from this site's pages.
pub(super) struct Browser<'b> {
    bed: &'b Bed,
    from: SocketAddr,
    pub(super) cookies: HashMap<String, String>,
}

pub(super) fn form_body(fields: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        text.bytes()
            .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
            .collect::<String>()
    };
    fields.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

impl Browser<'_> {
    pub(super) async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<String>,
        extra: &[(&str, &str)],
    ) -> Page {
        let mut request = Request::builder().method(method).uri(path).header(header::HOST, "gw.example.net");
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.header(header::COOKIE, jar.join("; "));
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Body::from(body)
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).unwrap();
        request.extensions_mut().insert(Connection::for_test(self.from));
        let response = self.bed.app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        let page = Page { status: parts.status, headers: parts.headers, body };
        for cookie in page.set_cookies() {
            let first = cookie.split(';').next().unwrap();
            let (name, value) = first.split_once('=').unwrap();
            if value.is_empty() || cookie.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        page
    }

    pub(super) async fn get(&mut self, path: &str) -> Page {
        self.request(Method::GET, path, None, &[]).await
    }

    pub(super) async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.request(Method::POST, path, Some(form_body(fields)), &[]).await
    }

    /// Fills in the sign-in form.
    pub(super) async fn sign_in(&mut self, username: &str, password: &str) -> Page {
        let form = self.get("/portal/signin").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.csrf();
        self.post("/portal/signin", &[("csrf", &csrf), ("username", username), ("password", password)]).await
    }

    /// The CSRF token of a signed-in page's forms.
    pub(super) async fn csrf(&mut self) -> String {
        self.get("/portal/profile").await.csrf()
    }
}

#[tokio::test]
async fn a_user_signs_in_sees_the_machines_and_signs_out() {
    let bed = Bed::new().await;
    let ann = bed.user("ann", Role::User).await;
    let mut browser = bed.browser("192.0.2.10");
    assert_eq!(browser.get("/portal/machines").await.location(), "/portal/signin");
    let signed_in = browser.sign_in("ann", PASSWORD).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER, "{}", signed_in.body);
    let cookie = signed_in.set_cookies().into_iter().find(|c| c.starts_with(SESSION_COOKIE)).expect("a session cookie");
    for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");
    // The store holds the id's hash, never the id.
    let id = browser.cookies[SESSION_COOKIE].clone();
    assert!(bed.store().session(&id).await.unwrap().is_none());
    assert!(bed.store().session(&super::session::id_hash(&id)).await.unwrap().is_some());
    assert_eq!(browser.get("/portal").await.location(), "/portal/machines");
    let machines = browser.get("/portal/machines").await;
    assert_eq!(machines.status, StatusCode::OK);
    assert!(machines.body.contains("No machines to show"), "{}", machines.body);
    assert!(machines.body.contains("name=\"viewport\""));
    assert_eq!(machines.headers[header::CACHE_CONTROL], "no-store");
    assert!(machines.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("frame-ancestors 'none'"));
    let csrf = machines.csrf();
    let out = browser.post("/portal/signout", &[("csrf", &csrf)]).await;
    assert_eq!(out.location(), "/portal/signin");
    assert_eq!(bed.store().session_count(ann).await.unwrap(), 0);
    assert!(!browser.cookies.contains_key(SESSION_COOKIE));
    // The old cookie is worth nothing now.
    browser.cookies.insert(SESSION_COOKIE.into(), id);
    assert_eq!(browser.get("/portal/machines").await.location(), "/portal/signin");
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_answer() {
    let bed = Bed::new().await;
    bed.user("ann", Role::User).await;
    let mut browser = bed.browser("192.0.2.11");
    let wrong = browser.sign_in("ann", "not it").await;
    let unknown = browser.sign_in("nobody", PASSWORD).await;
    for page in [&wrong, &unknown] {
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
        assert!(page.body.contains("Wrong username or password."), "{}", page.body);
        assert!(!page.set_cookies().iter().any(|c| c.starts_with(SESSION_COOKIE)));
    }
}

#[tokio::test]
async fn a_password_guesser_is_throttled_before_any_password_is_hashed() {
    let bed = Bed::new().await;
    bed.user("ann", Role::User).await;
    let mut guesser = bed.browser("198.51.100.7");
    let mut throttled = None;
    for i in 0..20 {
        let page = guesser.sign_in("ann", &format!("guess {i}")).await;
        if page.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some((i, page));
            break;
        }
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    }
    let (attempts, page) = throttled.expect("throttled within 20 attempts");
    assert!(attempts <= crate::limits::SIGN_IN_FAILURE_BURST as usize + 1, "{attempts}");
    assert!(page.headers.contains_key(header::RETRY_AFTER));
    assert!(page.body.contains("Too many attempts"), "{}", page.body);
    // While throttled, even the right password costs no argon2 run, from this source...
    let hashed = bed.state.shared.passwords.started();
    assert_eq!(guesser.sign_in("ann", PASSWORD).await.status, StatusCode::TOO_MANY_REQUESTS);
    // ...nor for this username from anywhere else.
    let mut elsewhere = bed.browser("203.0.113.9");
    assert_eq!(elsewhere.sign_in("ann", PASSWORD).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(bed.state.shared.passwords.started(), hashed);
    // Another user from another address is not affected.
    bed.user("bob", Role::User).await;
    assert_eq!(elsewhere.sign_in("bob", PASSWORD).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_form_without_its_csrf_token_or_from_another_site_is_refused() {
    let bed = Bed::new().await;
    let ann = bed.user("ann", Role::User).await;
    let mut browser = bed.browser("192.0.2.12");
    // The sign-in form's own token: missing or not matching its cookie.
    browser.get("/portal/signin").await;
    let page = browser.post("/portal/signin", &[("username", "ann"), ("password", PASSWORD)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = browser.post("/portal/signin", &[("csrf", "x"), ("username", "ann"), ("password", PASSWORD)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(browser.sign_in("ann", PASSWORD).await.status, StatusCode::SEE_OTHER);
    let csrf = browser.csrf().await;
    let wrong = format!("{}x", &csrf[..csrf.len() - 1]);
    for fields in [vec![], vec![("csrf", wrong.as_str())], vec![("csrf", "")]] {
        let page = browser.post("/portal/profile/totp/start", &fields).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{fields:?}");
        assert!(page.body.contains("security token"), "{}", page.body);
    }
    // The right token from another site's page.
    let body = Some(form_body(&[("csrf", &csrf)]));
    let page = browser
        .request(Method::POST, "/portal/profile/totp/start", body.clone(), &[("origin", "https://evil.example")])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = browser
        .request(Method::POST, "/portal/profile/totp/start", body.clone(), &[("sec-fetch-site", "cross-site")])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    // Sign-out too needs the token.
    assert_eq!(browser.post("/portal/signout", &[]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(bed.store().session_count(ann).await.unwrap(), 1);
    // And with it, from this site, it works.
    let page = browser
        .request(Method::POST, "/portal/profile/totp/start", body, &[("origin", "https://gw.example.net")])
        .await;
    assert_eq!(page.location(), "/portal/profile");
}

#[tokio::test]
async fn a_suspended_users_session_stops_working_at_once() {
    let bed = Bed::new().await;
    let ann = bed.user("ann", Role::User).await;
    let mut browser = bed.browser("192.0.2.13");
    browser.sign_in("ann", PASSWORD).await;
    assert_eq!(browser.get("/portal/machines").await.status, StatusCode::OK);
    bed.store().suspend_user(ann, now()).await.unwrap();
    let page = browser.get("/portal/machines").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("suspended"), "{}", page.body);
    assert_eq!(bed.store().session_count(ann).await.unwrap(), 0);
    // Signing in again is refused too, and says why (the password was right).
    assert_eq!(browser.sign_in("ann", PASSWORD).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_operator_without_a_second_factor_must_enrol_before_anything_else() {
    let bed = Bed::new().await;
    let olaf = bed.user("olaf", Role::Operator).await;
    let mut browser = bed.browser("192.0.2.14");
    assert_eq!(browser.sign_in("olaf", PASSWORD).await.status, StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/portal").await.location(), "/portal/profile");
    assert_eq!(browser.get("/portal/machines").await.location(), "/portal/profile");
    assert_eq!(browser.get(&format!("/portal/machines/{}", Uuid::new_v4())).await.location(), "/portal/profile");
    let profile = browser.get("/portal/profile").await;
    assert!(profile.body.contains("Operators must use a second factor"), "{}", profile.body);
    assert!(!profile.body.contains("href=\"/portal/machines\""), "no way around enrolment");
    let csrf = profile.csrf();
    assert_eq!(browser.post("/portal/profile/totp/start", &[("csrf", &csrf)]).await.location(), "/portal/profile");
    let enrolling = browser.get("/portal/profile").await;
    let at = enrolling.body.find("Key: <code>").expect("the key is shown") + 11;
    let secret = enrolling.body[at..].split('<').next().unwrap().to_string();
    assert!(enrolling.body.contains("otpauth://totp/Tether:olaf?secret="), "{}", enrolling.body);
    // Not saved until confirmed, and a wrong code does not save it.
    assert!(bed.store().user_totp_secret(olaf).await.unwrap().is_none());
    let wrong = browser.post("/portal/profile/totp/confirm", &[("csrf", &csrf), ("code", "000000")]).await;
    let right = totp::code_at(&secret, unix_now());
    if right != "000000" {
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    }
    let confirmed = browser.post("/portal/profile/totp/confirm", &[("csrf", &csrf), ("code", &right)]).await;
    assert_eq!(confirmed.location(), "/portal/profile");
    assert!(bed.store().user_totp_secret(olaf).await.unwrap().is_some());
    assert_eq!(browser.get("/portal/machines").await.status, StatusCode::OK);
    // The stored secret is sealed, not the key the user saw.
    assert_ne!(bed.store().user_totp_secret(olaf).await.unwrap().unwrap(), secret);
}

/// Gives `user_id` a second factor directly; its secret.
pub(super) async fn enrol(bed: &Bed, user_id: i64) -> String {
    let secret = totp::new_secret();
    let sealed = totp::seal(&bed.state.shared.sealer, user_id, &secret);
    bed.store().set_user_totp_secret(user_id, Some(sealed)).await.unwrap();
    secret
}

#[tokio::test]
async fn a_user_with_a_second_factor_gives_a_code_and_no_code_works_twice() {
    let bed = Bed::new().await;
    let ann = bed.user("ann", Role::User).await;
    let secret = enrol(&bed, ann).await;
    let mut browser = bed.browser("192.0.2.15");
    browser.sign_in("ann", PASSWORD).await;
    assert_eq!(browser.get("/portal").await.location(), "/portal/signin/totp");
    assert_eq!(browser.get("/portal/machines").await.location(), "/portal/signin/totp");
    assert_eq!(browser.get("/portal/profile").await.location(), "/portal/signin/totp");
    let step = browser.get("/portal/signin/totp").await;
    assert_eq!(step.status, StatusCode::OK);
    let csrf = step.csrf();
    let code = totp::code_at(&secret, unix_now());
    let passed = browser.post("/portal/signin/totp", &[("csrf", &csrf), ("code", &code)]).await;
    assert_eq!(passed.location(), "/portal/machines");
    assert_eq!(browser.get("/portal/machines").await.status, StatusCode::OK);
    // Someone who saw the code and knows the password cannot use it again.
    let mut replayer = bed.browser("192.0.2.16");
    replayer.sign_in("ann", PASSWORD).await;
    let csrf = replayer.get("/portal/signin/totp").await.csrf();
    let replayed = replayer.post("/portal/signin/totp", &[("csrf", &csrf), ("code", &code)]).await;
    assert_eq!(replayed.status, StatusCode::UNAUTHORIZED);
    assert!(replayed.body.contains("used already"), "{}", replayed.body);
    assert_eq!(replayer.get("/portal/machines").await.location(), "/portal/signin/totp");
}

#[tokio::test]
async fn a_contact_sees_only_their_subscribers_machines() {
    let bed = Bed::new().await;
    let store = bed.store();
    let register = |name: &str| NewSubscriber {
        username: name.into(),
        password: Some(PASSWORD.into()),
        pii: SubscriberPii { name: name.into(), email: format!("{name}@example.com"), phone: None, billing_note: None },
        max_machines: 5,
        max_contacts: 5,
    };
    let olga = store.register_subscriber(&register("olga"), now()).await.unwrap();
    let otto = store.register_subscriber(&register("otto"), now()).await.unwrap();
    let (mine, theirs) = (Uuid::new_v4(), Uuid::new_v4());
    store.enroll_machine(olga.subscriber_id, mine, Some("kitchen pc"), now()).await.unwrap();
    store.enroll_machine(otto.subscriber_id, theirs, Some("otto's laptop"), now()).await.unwrap();
    let carl = bed.user("carl", Role::User).await;
    let invitation =
        store.invite_contact(olga.subscriber_id, "carl@example.com", now(), time::Duration::days(7)).await.unwrap();
    let acceptance =
        Acceptance { terms_version: "1".into(), nickname: "carl".into(), contact_email: None, alert_prefs: json!({}) };
    store.accept_invitation(invitation.guid, carl, &acceptance, now()).await.unwrap();

    let mut browser = bed.browser("192.0.2.17");
    browser.sign_in("carl", PASSWORD).await;
    let list = browser.get("/portal/machines").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("kitchen pc") && list.body.contains(&mine.to_string()), "{}", list.body);
    assert!(!list.body.contains("laptop") && !list.body.contains(&theirs.to_string()), "{}", list.body);
    assert!(list.body.contains("not connected") && list.body.contains("no rating yet"), "{}", list.body);

    let refused = browser.get(&format!("/portal/machines/{theirs}")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("not_related"), "{}", refused.body);
    assert!(!refused.body.contains("laptop"));

    let page = browser.get(&format!("/portal/machines/{mine}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("kitchen pc") && page.body.contains("no rating yet"));
    let audit = store.audit_for_machine(mine, None, 10).await.unwrap();
    assert!(audit.iter().any(|a| a.action == "machine.viewed" && a.actor_user_id == Some(carl)), "{audit:?}");
    assert!(store.audit_for_machine(theirs, None, 10).await.unwrap().iter().all(|a| a.action != "machine.viewed"));
    // The second view shows the first in the machine's activity.
    let again = browser.get(&format!("/portal/machines/{mine}")).await;
    assert!(again.body.contains("machine.viewed") && again.body.contains("carl"), "{}", again.body);

    // The owner sees its own machine, not otto's.
    let mut owner = bed.browser("192.0.2.18");
    owner.sign_in("olga", PASSWORD).await;
    let list = owner.get("/portal/machines").await;
    assert!(list.body.contains("kitchen pc") && list.body.contains("yours") && !list.body.contains("laptop"));
    assert_eq!(owner.get(&format!("/portal/machines/{theirs}")).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_user_signing_in_on_many_browsers_keeps_the_newest_sessions_only() {
    let bed = Bed::new().await;
    let ann = bed.user("ann", Role::User).await;
    let mut first = bed.browser("192.0.2.19");
    first.sign_in("ann", PASSWORD).await;
    for _ in 0..MAX_SESSIONS_PER_USER {
        let mut other = bed.browser("192.0.2.20");
        assert_eq!(other.sign_in("ann", PASSWORD).await.status, StatusCode::SEE_OTHER);
    }
    assert_eq!(bed.store().session_count(ann).await.unwrap(), MAX_SESSIONS_PER_USER as u64);
    // The oldest went.
    assert_eq!(first.get("/portal/machines").await.location(), "/portal/signin");
}
