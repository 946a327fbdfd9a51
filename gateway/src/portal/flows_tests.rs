//! The portal's account pages in process, over the real router and a real SQLite store: a
//! subscriber invites and removes contacts on the contacts page; a contact accepts an invitation
//! signed in, or creates an account from it (refused for an expired one, throttled before any
//! password is hashed); a stranger is refused another subscriber's contacts; an email change is
//! confirmed only by a POST; every new form refuses a missing CSRF token.

use axum::http::StatusCode;
use serde_json::json;
use uuid::Uuid;

use super::invitations::TERMS_VERSION;
use super::session::SESSION_COOKIE;
use super::tests::{now, Bed, Browser, PASSWORD};
use crate::policy::Role;
use crate::store::{ContactState, NewSubscriber, SubscriberPii};

/// olga owns a subscriber ("Olga's Bakery") with the machine "kitchen pc"; otto owns another.
pub(super) struct Shop {
    pub(super) bed: Bed,
    pub(super) olga: i64,
    pub(super) otto: i64,
    pub(super) machine: Uuid,
}

pub(super) async fn shop() -> Shop {
    let bed = Bed::new().await;
    let register = |name: &str, shown: &str| NewSubscriber {
        username: name.into(),
        password: Some(PASSWORD.into()),
        pii: SubscriberPii {
            name: shown.into(),
            email: format!("{name}@example.com"),
            phone: None,
            billing_note: None,
        },
        max_machines: 5,
        max_contacts: 5,
    };
    let store = bed.store();
    let olga = store.register_subscriber(&register("olga", "Olga's Bakery"), now()).await.unwrap().subscriber_id;
    let otto = store.register_subscriber(&register("otto", "Otto's Garage"), now()).await.unwrap().subscriber_id;
    let machine = Uuid::new_v4();
    store.enroll_machine(olga, machine, Some("kitchen pc"), now()).await.unwrap();
    Shop { bed, olga, otto, machine }
}

impl Shop {
    /// An invitation of olga's subscriber to `email`, made `days_ago` (7 days valid).
    pub(super) async fn invite(&self, email: &str, days_ago: i64) -> Uuid {
        let at = now() - time::Duration::days(days_ago);
        self.bed.store().invite_contact(self.olga, email, at, time::Duration::days(7)).await.unwrap().guid
    }

    /// `name` (a new user) accepts an invitation of olga's subscriber to `email`: an active contact.
    pub(super) async fn active_contact(&self, email: &str, name: &str) -> i64 {
        let guid = self.invite(email, 0).await;
        let user = self.bed.user(name, Role::User).await;
        let acceptance = crate::store::Acceptance {
            terms_version: TERMS_VERSION.into(),
            nickname: name.into(),
            contact_email: None,
            alert_prefs: json!({}),
        };
        self.bed.store().accept_invitation(guid, user, &acceptance, now()).await.unwrap();
        user
    }

    pub(super) async fn signed_in(&self, name: &str, from: &str) -> Browser<'_> {
        let mut browser = self.bed.browser(from);
        assert_eq!(browser.sign_in(name, PASSWORD).await.status, StatusCode::SEE_OTHER);
        browser
    }

    /// The outbox: (kind, recipient), oldest first.
    pub(super) async fn mails(&self) -> Vec<(String, String)> {
        let mut list = self.bed.store().list_outbox(100).await.unwrap();
        list.reverse();
        list.into_iter().map(|m| (m.kind, m.recipient)).collect()
    }
}

fn contacts_path(id: i64) -> String {
    format!("/portal/subscribers/{id}/contacts")
}

#[tokio::test]
async fn the_owner_invites_and_removes_contacts_on_the_contacts_page() {
    let shop = shop().await;
    let mut olga = shop.signed_in("olga", "192.0.2.30").await;
    let machines = olga.get("/portal/machines").await;
    assert!(machines.body.contains(&format!("href=\"{}\"", contacts_path(shop.olga))), "{}", machines.body);
    let page = olga.get(&contacts_path(shop.olga)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Contacts of Olga&#39;s Bakery") || page.body.contains("Contacts of Olga's Bakery"));
    assert!(page.body.contains("No contacts yet"), "{}", page.body);
    let csrf = page.csrf();

    // No token, no invitation.
    let forged = olga.post(&contacts_path(shop.olga), &[("email", "carl@example.com")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(shop.bed.store().contacts_of(shop.olga).await.unwrap().is_empty());

    let invited = olga.post(&contacts_path(shop.olga), &[("csrf", &csrf), ("email", "carl@example.com")]).await;
    assert_eq!(invited.location(), contacts_path(shop.olga), "{}", invited.body);
    let page = olga.get(&contacts_path(shop.olga)).await;
    assert!(page.body.contains("carl@example.com") && page.body.contains("invited"), "{}", page.body);
    assert!(page.body.contains(">Remove<"), "{}", page.body);
    assert_eq!(shop.mails().await, vec![("invitation".to_string(), "carl@example.com".to_string())]);
    let contact = shop.bed.store().contacts_of(shop.olga).await.unwrap()[0].clone();
    assert_eq!(contact.state, ContactState::Invited);

    // A flow's refusal is a readable page with its code.
    let bad = olga.post(&contacts_path(shop.olga), &[("csrf", &csrf), ("email", "not an address")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("bad_input") && bad.body.contains("is not an email address"), "{}", bad.body);

    let remove = format!("{}/{}/remove", contacts_path(shop.olga), contact.id);
    assert_eq!(olga.post(&remove, &[]).await.status, StatusCode::FORBIDDEN, "no token");
    assert_eq!(shop.bed.store().contact(contact.id).await.unwrap().unwrap().state, ContactState::Invited);
    assert_eq!(olga.post(&remove, &[("csrf", &csrf)]).await.location(), contacts_path(shop.olga));
    assert_eq!(shop.bed.store().contact(contact.id).await.unwrap().unwrap().state, ContactState::Removed);
    let page = olga.get(&contacts_path(shop.olga)).await;
    assert!(page.body.contains("removed") && !page.body.contains(">Remove<"), "{}", page.body);
    // Removed twice: the store's refusal, with its code.
    let again = olga.post(&remove, &[("csrf", &csrf)]).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.body.contains("contact_ended"), "{}", again.body);
    let olga_id = shop.bed.store().user_by_name("olga").await.unwrap().unwrap().id;
    let audit = shop.bed.store().audit_by_user(olga_id, None, 10).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert!(actions.contains(&"contact.invited") && actions.contains(&"contact.removed"), "{actions:?}");
}

#[tokio::test]
async fn strangers_and_contacts_are_refused_another_subscribers_contacts_page() {
    let shop = shop().await;
    shop.active_contact("carl@example.com", "carl").await;

    // A contact of olga's does not manage olga's contacts.
    let mut carl = shop.signed_in("carl", "192.0.2.31").await;
    let refused = carl.get(&contacts_path(shop.olga)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("not_related") && !refused.body.contains("carl@example.com"), "{}", refused.body);
    let csrf = carl.csrf().await;
    let invite = carl.post(&contacts_path(shop.olga), &[("csrf", &csrf), ("email", "mallory@example.com")]).await;
    assert_eq!(invite.status, StatusCode::FORBIDDEN);
    // The owner of another subscriber neither.
    let mut otto = shop.signed_in("otto", "192.0.2.32").await;
    let refused = otto.get(&contacts_path(shop.olga)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("not_related"), "{}", refused.body);
    let csrf = otto.csrf().await;
    let invite = otto.post(&contacts_path(shop.olga), &[("csrf", &csrf), ("email", "mallory@example.com")]).await;
    assert_eq!(invite.status, StatusCode::FORBIDDEN);
    let remove = format!("{}/1/remove", contacts_path(shop.olga));
    assert_eq!(otto.post(&remove, &[("csrf", &csrf)]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(shop.bed.store().contacts_of(shop.olga).await.unwrap().len(), 1, "nothing invited or removed");
    assert_eq!(shop.bed.store().contacts_of(shop.olga).await.unwrap()[0].state, ContactState::Active);
    // Its own page works, and a number that is no subscriber is a page too.
    assert_eq!(otto.get(&contacts_path(shop.otto)).await.status, StatusCode::OK);
    assert_eq!(otto.get("/portal/subscribers/x/contacts").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_signed_in_user_accepts_an_invitation_sees_the_machine_sets_preferences_and_leaves() {
    let shop = shop().await;
    let guid = shop.invite("carl@example.com", 0).await;
    shop.bed.user("carl", Role::User).await;
    let link = format!("/portal/invitations/{guid}");

    // Signed out: who invites, sign in (coming back here) or create an account.
    let mut carl = shop.bed.browser("192.0.2.33");
    let page = carl.get(&link).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("invites") && page.body.contains("carl@example.com"), "{}", page.body);
    let next = format!("/portal/signin?next=/portal/invitations/{guid}");
    assert!(page.body.contains(&next), "{}", page.body);
    assert!(page.body.contains("Create the account"), "{}", page.body);
    let form = carl.get(&next).await;
    let csrf = form.csrf();
    let fields = [("csrf", csrf.as_str()), ("username", "carl"), ("password", PASSWORD), ("next", &link)];
    assert_eq!(carl.post("/portal/signin", &fields).await.location(), link);
    // Only paths of the portal are followed.
    let mut other = shop.bed.browser("192.0.2.34");
    for evil in ["https://evil.example/", "//evil.example/portal/", "/portal/../x", "/api/v1/me"] {
        let csrf = other.get("/portal/signin").await.csrf();
        let fields = [("csrf", csrf.as_str()), ("username", "carl"), ("password", PASSWORD), ("next", evil)];
        assert_eq!(other.post("/portal/signin", &fields).await.location(), "/portal", "{evil}");
    }

    let page = carl.get(&link).await;
    assert!(page.body.contains("Signed in as carl") && page.body.contains(TERMS_VERSION), "{}", page.body);
    let csrf = page.csrf();
    let accept = format!("{link}/accept");
    let mut fields = vec![
        ("terms_version", TERMS_VERSION),
        ("nickname", "Carl from IT"),
        ("contact_email", ""),
        ("alert_red", "yes"),
        ("alert_green", "yes"),
    ];
    assert_eq!(carl.post(&accept, &fields).await.status, StatusCode::FORBIDDEN, "no token");
    fields.push(("csrf", &csrf));
    let unticked = carl.post(&accept, &fields).await;
    assert_eq!(unticked.status, StatusCode::BAD_REQUEST);
    assert!(unticked.body.contains("accept the terms"), "{}", unticked.body);
    fields.push(("accept_terms", "yes"));
    assert_eq!(carl.post(&accept, &fields).await.location(), "/portal/machines");
    let machines = carl.get("/portal/machines").await;
    assert!(machines.body.contains("kitchen pc") && machines.body.contains(&shop.machine.to_string()));
    let contact = shop.bed.store().invitation(guid).await.unwrap().unwrap();
    assert_eq!(contact.state, ContactState::Active);
    assert_eq!(contact.terms_version.as_deref(), Some(TERMS_VERSION));
    assert_eq!(contact.alert_prefs, Some(json!({"red": true, "yellow": false, "green": true})));
    // Accepting twice: the flow says it is closed.
    let twice = carl.post(&accept, &fields).await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
    assert!(twice.body.contains("invitation_closed"), "{}", twice.body);

    // The profile lists the subscriber: nickname and alerts can change, and carl can leave.
    let profile = carl.get("/portal/profile").await;
    assert!(profile.body.contains("Your subscribers") && profile.body.contains("Olga"), "{}", profile.body);
    let prefs = format!("/portal/profile/contacts/{}", contact.id);
    let fields = [("nickname", "Carl (IT)"), ("alert_yellow", "yes")];
    assert_eq!(carl.post(&prefs, &fields).await.status, StatusCode::FORBIDDEN, "no token");
    let fields = [("csrf", csrf.as_str()), ("nickname", "Carl (IT)"), ("alert_yellow", "yes")];
    assert_eq!(carl.post(&prefs, &fields).await.location(), "/portal/profile");
    let changed = shop.bed.store().contact(contact.id).await.unwrap().unwrap();
    assert_eq!(changed.nickname.as_deref(), Some("Carl (IT)"));
    assert_eq!(changed.alert_prefs, Some(json!({"red": false, "yellow": true, "green": false})));
    // Not someone else's relation.
    let mut olga = shop.signed_in("olga", "192.0.2.35").await;
    let olga_csrf = olga.csrf().await;
    let theirs = olga.post(&prefs, &[("csrf", olga_csrf.as_str()), ("nickname", "x")]).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.body);
    // The owner sees the contact's nickname on the contacts page.
    assert!(olga.get(&contacts_path(shop.olga)).await.body.contains("Carl (IT)"));

    let leave = format!("/portal/subscribers/{}/leave", shop.olga);
    assert_eq!(carl.post(&leave, &[]).await.status, StatusCode::FORBIDDEN, "no token");
    assert_eq!(carl.post(&leave, &[("csrf", &csrf)]).await.location(), "/portal/profile");
    assert_eq!(shop.bed.store().contact(contact.id).await.unwrap().unwrap().state, ContactState::Left);
    assert!(!carl.get("/portal/machines").await.body.contains("kitchen pc"));
    assert!(shop.mails().await.contains(&("contact_left".to_string(), "olga@example.com".to_string())));
    let carl_id = shop.bed.store().user_by_name("carl").await.unwrap().unwrap().id;
    let audit = shop.bed.store().audit_by_user(carl_id, None, 20).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    for action in ["contact.accepted", "contact.prefs_changed", "contact.left"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

/// The sign-up form's fields for `username`.
fn sign_up_fields<'a>(csrf: &'a str, username: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf", csrf),
        ("username", username),
        ("password", PASSWORD),
        ("password2", PASSWORD),
        ("email", "dan@example.com"),
    ]
}

#[tokio::test]
async fn an_open_invitation_lets_a_new_person_create_an_account_and_accept() {
    let shop = shop().await;
    let guid = shop.invite("dan@example.com", 0).await;
    let link = format!("/portal/invitations/{guid}");
    let mut dan = shop.bed.browser("192.0.2.36");
    let page = dan.get(&link).await;
    assert!(page.body.contains("value=\"dan@example.com\""), "the email is prefilled: {}", page.body);
    let csrf = page.csrf();
    let signup = format!("{link}/signup");
    let mut fields = sign_up_fields(&csrf, "dan");
    assert_eq!(dan.post(&signup, &fields[1..]).await.status, StatusCode::FORBIDDEN, "no token");
    fields[3] = ("password2", "something else");
    let differ = dan.post(&signup, &fields).await;
    assert_eq!(differ.status, StatusCode::BAD_REQUEST);
    assert!(differ.body.contains("passwords differ"), "{}", differ.body);
    let taken = dan.post(&signup, &sign_up_fields(&csrf, "olga")).await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    assert!(taken.body.contains("taken"), "{}", taken.body);
    assert_eq!(shop.bed.api.portal().signup_hashes(), 0, "nothing hashed for refused forms");

    let made = dan.post(&signup, &sign_up_fields(&csrf, "dan")).await;
    assert_eq!(made.location(), link, "{}", made.body);
    assert!(dan.cookies.contains_key(SESSION_COOKIE), "signed in");
    let user = shop.bed.store().user_by_name("dan").await.unwrap().expect("dan exists");
    assert_eq!((user.role, user.email.as_deref()), (Role::User, Some("dan@example.com")));
    let audit = shop.bed.store().audit_by_user(user.id, None, 10).await.unwrap();
    assert!(audit.iter().any(|a| a.action == "user.created" && a.actor_user_id == Some(user.id)), "{audit:?}");

    let page = dan.get(&link).await;
    assert!(page.body.contains("Signed in as dan"), "{}", page.body);
    let csrf = page.csrf();
    let fields = [
        ("csrf", csrf.as_str()),
        ("terms_version", TERMS_VERSION),
        ("accept_terms", "yes"),
        ("nickname", "Dan"),
        ("contact_email", "dan.alerts@example.com"),
    ];
    assert_eq!(dan.post(&format!("{link}/accept"), &fields).await.location(), "/portal/machines");
    assert!(dan.get("/portal/machines").await.body.contains("kitchen pc"));
    let contact = shop.bed.store().invitation(guid).await.unwrap().unwrap();
    assert_eq!(contact.contact_email.as_deref(), Some("dan.alerts@example.com"));
    // The invitation is closed now: no more accounts from it.
    let mut late = shop.bed.browser("192.0.2.37");
    let csrf = late.get("/portal/signin").await.csrf();
    let closed = late.post(&format!("{link}/signup"), &sign_up_fields(&csrf, "eve")).await;
    assert_eq!(closed.status, StatusCode::CONFLICT, "{}", closed.body);
    assert!(shop.bed.store().user_by_name("eve").await.unwrap().is_none());
}

#[tokio::test]
async fn an_expired_invitation_says_a_new_one_is_needed_and_makes_no_account() {
    let shop = shop().await;
    let guid = shop.invite("dan@example.com", 8).await;
    let link = format!("/portal/invitations/{guid}");
    let mut dan = shop.bed.browser("192.0.2.38");
    let page = dan.get(&link).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.body.contains("a new invitation is needed"), "{}", page.body);
    assert!(page.body.contains("invitation_expired") && !page.body.contains("Create the account"), "{}", page.body);
    let csrf = dan.get("/portal/signin").await.csrf();
    let refused = dan.post(&format!("{link}/signup"), &sign_up_fields(&csrf, "dan")).await;
    assert_eq!(refused.status, StatusCode::GONE);
    assert!(refused.body.contains("a new invitation is needed"), "{}", refused.body);
    assert!(shop.bed.store().user_by_name("dan").await.unwrap().is_none());
    assert_eq!(shop.bed.api.portal().signup_hashes(), 0);
    // An unknown GUID, and no GUID at all.
    assert_eq!(dan.get(&format!("/portal/invitations/{}", Uuid::new_v4())).await.status, StatusCode::NOT_FOUND);
    assert_eq!(dan.get("/portal/invitations/nope").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn creating_accounts_is_throttled_before_any_password_is_hashed() {
    let shop = shop().await;
    let guid = shop.invite("dan@example.com", 0).await;
    let signup = format!("/portal/invitations/{guid}/signup");
    // Each account made counts against the source: one GUID does not buy unbounded hashing.
    let mut maker = shop.bed.browser("198.51.100.20");
    let mut throttled = None;
    for i in 0..20 {
        let csrf = maker.get(&format!("/portal/invitations/{guid}")).await.csrf();
        let name = format!("dan{i}");
        let page = maker.post(&signup, &sign_up_fields(&csrf, &name)).await;
        if page.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(i);
            break;
        }
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        maker.cookies.remove(SESSION_COOKIE);
    }
    let made = throttled.expect("throttled within 20 accounts");
    assert!(made <= crate::limits::SIGN_IN_FAILURE_BURST as usize + 1, "{made}");
    assert_eq!(shop.bed.api.portal().signup_hashes(), made as u64);

    // A source in back-off for failed sign-ins makes no account, and hashes nothing.
    let mut guesser = shop.bed.browser("198.51.100.21");
    for i in 0..20 {
        if guesser.sign_in("olga", &format!("guess {i}")).await.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }
    let hashed = shop.bed.api.portal().signup_hashes();
    let csrf = guesser.get(&format!("/portal/invitations/{guid}")).await.csrf();
    let page = guesser.post(&signup, &sign_up_fields(&csrf, "mallory")).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS, "{}", page.body);
    assert_eq!(shop.bed.api.portal().signup_hashes(), hashed);
    assert!(shop.bed.store().user_by_name("mallory").await.unwrap().is_none());
}

#[tokio::test]
async fn an_email_change_is_confirmed_by_a_post_not_by_following_the_link() {
    let shop = shop().await;
    let mut olga = shop.signed_in("olga", "192.0.2.39").await;
    let csrf = olga.csrf().await;
    let fields = [("email", "olga.new@example.com")];
    assert_eq!(olga.post("/portal/profile/email", &fields).await.status, StatusCode::FORBIDDEN, "no token");
    let asked = olga.post("/portal/profile/email", &[("csrf", csrf.as_str()), ("email", "olga.new@example.com")]).await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{}", asked.body);
    assert!(asked.body.contains("A link went to olga.new@example.com"), "{}", asked.body);
    // The link from the mail.
    let mails = shop.bed.store().claim_mail(now(), now() + time::Duration::minutes(5), 10).await.unwrap();
    let mail = mails.iter().find(|m| m.kind == "email_change").expect("the confirmation mail");
    assert_eq!(mail.recipient, "olga.new@example.com");
    let at = mail.body.find("/portal/email/confirm?secret=").expect("a confirmation link");
    let link: String = mail.body[at..].split_whitespace().next().unwrap().to_string();

    // Following it (as a mail scanner would, without a session) changes nothing.
    let mut scanner = shop.bed.browser("192.0.2.40");
    let page = scanner.get(&link).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Confirm the new address"), "{}", page.body);
    let olga_id = shop.bed.store().user_by_name("olga").await.unwrap().unwrap().id;
    let email = || async { shop.bed.store().user(olga_id).await.unwrap().unwrap().email };
    assert_eq!(email().await.as_deref(), Some("olga@example.com"));
    let secret = link.split("secret=").nth(1).unwrap().to_string();
    let token = page.csrf();
    assert_eq!(scanner.post("/portal/email/confirm", &[("secret", &secret)]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(email().await.as_deref(), Some("olga@example.com"));
    let done = scanner.post("/portal/email/confirm", &[("csrf", &token), ("secret", &secret)]).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("is now olga.new@example.com"), "{}", done.body);
    assert_eq!(email().await.as_deref(), Some("olga.new@example.com"));
    // Once only.
    let again = scanner.post("/portal/email/confirm", &[("csrf", &token), ("secret", &secret)]).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert!(again.body.contains("no_such_email_change"), "{}", again.body);
    assert_eq!(scanner.get("/portal/email/confirm").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn forms_work_over_http2_where_the_host_is_in_the_uri_and_browsers_send_the_origin() {
    use axum::body::Body;
    use axum::http::{header, Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let shop = shop().await;
    let mut browser = shop.bed.browser("192.0.2.41");
    let form = browser.get("/portal/signin").await;
    // Under `no-referrer`, browsers send `Origin: null` with form POSTs, which is refused.
    assert_eq!(form.headers[header::REFERRER_POLICY], "same-origin");
    let csrf = form.csrf();
    let cookie = format!("{}={csrf}", super::session::SIGNIN_COOKIE);
    let body = super::tests::form_body(&[("csrf", &csrf), ("username", "olga"), ("password", PASSWORD)]);
    // HTTP/2: no Host header, the authority in the URI.
    let mut request = Request::post("https://gw.example.net/portal/signin")
        .header(header::ORIGIN, "https://gw.example.net")
        .header("sec-fetch-site", "same-origin")
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let from = std::net::SocketAddr::new("192.0.2.41".parse().unwrap(), 50_000);
    request.extensions_mut().insert(crate::api::connection::Connection::for_test(from));
    let response = shop.bed.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let text = String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes()).into_owned();
    assert_eq!(status, StatusCode::SEE_OTHER, "{text}");
}

#[tokio::test]
async fn the_owner_gets_a_one_time_enrollment_token_and_others_are_refused() {
    let shop = shop().await;
    let mut olga = shop.signed_in("olga", "192.0.2.40").await;
    let path = format!("/portal/subscribers/{}/machines/enroll", shop.olga);
    let machines = olga.get("/portal/machines").await;
    assert!(machines.body.contains(&format!("href=\"{path}\"")), "{}", machines.body);
    let form = olga.get(&path).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let csrf = form.csrf();
    assert_eq!(olga.post(&path, &[("nickname", "till")]).await.status, StatusCode::FORBIDDEN, "no CSRF token");

    let amt = Uuid::new_v4();
    let page = olga.post(&path, &[("csrf", &csrf), ("nickname", "till"), ("uuid", &amt.to_string())]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.headers.get(axum::http::header::CACHE_CONTROL).unwrap(), "no-store");
    let token = page.body.split("<pre id=\"token\">").nth(1).and_then(|t| t.split('<').next()).unwrap().to_string();
    assert!(token.starts_with("tte_"), "{}", page.body);
    assert!(page.body.contains("tether-agent enroll --gateway"), "{}", page.body);
    // The UUID is bound now; the store keeps the token's hash only.
    assert_eq!(shop.bed.store().machine(amt).await.unwrap().unwrap().subscriber_id, shop.olga);
    let kept: Option<String> = shop
        .bed
        .store()
        .fetch_optional(
            crate::store::Stmt::new("SELECT hash FROM enrollment_tokens WHERE uuid = $1").text(amt.to_string()),
            |r| r.text(0),
        )
        .await
        .unwrap()
        .flatten();
    assert_eq!(kept.as_deref(), Some(crate::auth::hash_token(&token).as_str()));

    let bad = olga.post(&path, &[("csrf", &csrf), ("uuid", "not-a-uuid")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("bad_input"), "{}", bad.body);

    // Otto may not enroll machines for Olga.
    let mut otto = shop.signed_in("otto", "192.0.2.41").await;
    let refused = otto.get(&path).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("not_related"), "{}", refused.body);
}
