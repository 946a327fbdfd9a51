//! The operator's directory pages in process, over the real router and a real SQLite store: an
//! operator (signed in with a second factor) creates a user, registers a subscriber for it,
//! terminates a subscription (its active contact is told) and suspends and unsuspends a user,
//! whose open session stops working at once; every form refuses a missing CSRF token; an owner
//! sees only its own subscriber and is refused every operator's page and form, with its code.

use axum::http::StatusCode;

use super::flows_tests::{shop, Shop};
use super::tests::{enrol, unix_now, Browser, PASSWORD};
use super::totp;
use crate::policy::Role;
use crate::store::SubscriptionStatus;

/// olaf, an operator with a second factor, signed in (password, then a code).
async fn operator(shop: &Shop) -> Browser<'_> {
    let olaf = shop.bed.user("olaf", Role::Operator).await;
    let secret = enrol(&shop.bed, olaf).await;
    let mut browser = shop.bed.browser("192.0.2.40");
    assert_eq!(browser.sign_in("olaf", PASSWORD).await.status, StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/portal/machines").await.location(), "/portal/signin/totp");
    let csrf = browser.get("/portal/signin/totp").await.csrf();
    let code = totp::code_at(&secret, unix_now());
    assert_eq!(
        browser.post("/portal/signin/totp", &[("csrf", &csrf), ("code", &code)]).await.location(),
        "/portal/machines"
    );
    browser
}

async fn audit_actions(shop: &Shop, user: &str) -> Vec<String> {
    let id = shop.bed.store().user_by_name(user).await.unwrap().unwrap().id;
    shop.bed.store().audit_by_user(id, None, 20).await.unwrap().into_iter().map(|a| a.action).collect()
}

#[tokio::test]
async fn an_operator_creates_a_user_and_registers_a_subscriber_for_it() {
    let shop = shop().await;
    let mut olaf = operator(&shop).await;
    let page = olaf.get("/portal/subscribers").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Olga's Bakery") && page.body.contains("Otto's Garage"), "{}", page.body);
    assert!(page.body.contains("href=\"/portal/users\""), "the operator's navigation: {}", page.body);
    let csrf = page.csrf();
    let nina = [
        ("csrf", csrf.as_str()),
        ("owner", "nina"),
        ("name", "Nina's Cafe"),
        ("email", "nina@example.com"),
        ("phone", "+1 555 0100"),
        ("max_machines", "3"),
        ("max_contacts", ""),
    ];
    // No token, nothing registered.
    assert_eq!(olaf.post("/portal/subscribers", &nina[1..]).await.status, StatusCode::FORBIDDEN);
    // The owner must exist first: the page says so and how.
    let missing = olaf.post("/portal/subscribers", &nina).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
    assert!(missing.body.contains("create it first") && missing.body.contains("not_found"), "{}", missing.body);

    let users = olaf.get("/portal/users").await;
    assert_eq!(users.status, StatusCode::OK, "{}", users.body);
    let new_user = [("csrf", csrf.as_str()), ("username", "nina"), ("email", "nina@example.com")];
    let short = olaf.post("/portal/users", &[new_user.as_slice(), &[("password", "short")]].concat()).await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST, "{}", short.body);
    let long = [new_user.as_slice(), &[("password", PASSWORD)]].concat();
    assert_eq!(olaf.post("/portal/users", &long).await.location(), "/portal/users");
    let users = olaf.get("/portal/users").await;
    assert!(users.body.contains("nina@example.com"), "{}", users.body);
    let nina_user = shop.bed.store().user_by_name("nina").await.unwrap().unwrap();
    assert_eq!(nina_user.role, Role::User);

    let bad_limit = olaf.post("/portal/subscribers", &[&nina[..5], &[("max_machines", "many")]].concat()).await;
    assert_eq!(bad_limit.status, StatusCode::BAD_REQUEST);
    assert!(bad_limit.body.contains("whole number"), "{}", bad_limit.body);
    assert_eq!(olaf.post("/portal/subscribers", &nina).await.location(), "/portal/subscribers");
    let page = olaf.get("/portal/subscribers").await;
    assert!(page.body.contains("Nina's Cafe") && page.body.contains("3 machines, 5 contacts"), "{}", page.body);
    let listing = shop.bed.store().list_subscribers().await.unwrap();
    let cafe = listing.iter().find(|s| s.owner == "nina").expect("registered");
    assert_eq!(cafe.subscriber.status, SubscriptionStatus::Active);
    let pii = shop.bed.store().subscriber_pii(cafe.subscriber.id).await.unwrap().unwrap();
    assert_eq!((pii.email.as_str(), pii.phone.as_deref()), ("nina@example.com", Some("+1 555 0100")));
    // nina now manages her subscriber in the portal.
    let mut nina = shop.signed_in("nina", "192.0.2.41").await;
    let own = nina.get(&format!("/portal/subscribers/{}/contacts", cafe.subscriber.id)).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    let actions = audit_actions(&shop, "olaf").await;
    assert!(
        actions.iter().any(|a| a == "user.created") && actions.iter().any(|a| a == "subscriber.registered"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn an_operator_terminates_a_subscription_and_suspends_a_user() {
    let shop = shop().await;
    // carl is an active contact of olga's.
    shop.active_contact("carl@example.com", "carl").await;
    let mut carl_browser = shop.signed_in("carl", "192.0.2.42").await;
    assert!(carl_browser.get("/portal/machines").await.body.contains("kitchen pc"));

    let mut olaf = operator(&shop).await;
    let csrf = olaf.get("/portal/subscribers").await.csrf();
    let terminate = format!("/portal/subscribers/{}/terminate", shop.olga);
    assert_eq!(olaf.post(&terminate, &[("reason", "unpaid")]).await.status, StatusCode::FORBIDDEN, "no token");
    let no_reason = olaf.post(&terminate, &[("csrf", &csrf), ("reason", "")]).await;
    assert_eq!(no_reason.status, StatusCode::BAD_REQUEST, "{}", no_reason.body);
    assert_eq!(olaf.post(&terminate, &[("csrf", &csrf), ("reason", "unpaid")]).await.location(), "/portal/subscribers");
    let subscriber = shop.bed.store().subscriber(shop.olga).await.unwrap().unwrap();
    assert_eq!(subscriber.status, SubscriptionStatus::Terminated);
    let page = olaf.get("/portal/subscribers").await;
    assert!(page.body.contains("terminated"), "{}", page.body);
    // The contact is told (without the reason) and sees nothing of olga's any more.
    assert!(shop.mails().await.contains(&("subscription_terminated".to_string(), "carl@example.com".to_string())));
    let after = carl_browser.get("/portal/machines").await;
    assert!(!after.body.contains("kitchen pc"), "{}", after.body);
    // Terminated twice: the store's refusal, with its code.
    let again = olaf.post(&terminate, &[("csrf", &csrf), ("reason", "unpaid")]).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);

    // otto, signed in, is suspended: his session stops at once; lifted, he signs in again.
    let otto = shop.bed.store().user_by_name("otto").await.unwrap().unwrap().id;
    let mut otto_browser = shop.signed_in("otto", "192.0.2.43").await;
    let suspend = format!("/portal/users/{otto}/suspend");
    assert_eq!(olaf.post(&suspend, &[]).await.status, StatusCode::FORBIDDEN, "no token");
    assert_eq!(otto_browser.get("/portal/machines").await.status, StatusCode::OK);
    assert_eq!(olaf.post(&suspend, &[("csrf", &csrf)]).await.location(), "/portal/users");
    let refused = otto_browser.get("/portal/machines").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("suspended"), "{}", refused.body);
    let users = olaf.get("/portal/users").await;
    assert!(users.body.contains("Lift the suspension"), "{}", users.body);
    let unsuspend = format!("/portal/users/{otto}/unsuspend");
    assert_eq!(olaf.post(&unsuspend, &[("csrf", &csrf)]).await.location(), "/portal/users");
    assert_eq!(shop.signed_in("otto", "192.0.2.44").await.get("/portal/machines").await.status, StatusCode::OK);
    let actions = audit_actions(&shop, "olaf").await;
    for action in ["subscription.terminated", "user.suspended", "user.unsuspended"] {
        assert!(actions.iter().any(|a| a == action), "{action} in {actions:?}");
    }
}

#[tokio::test]
async fn an_owner_sees_only_its_own_subscriber_and_is_refused_the_operators_pages() {
    let shop = shop().await;
    let mut olga = shop.signed_in("olga", "192.0.2.45").await;
    let page = olga.get("/portal/subscribers").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Olga's Bakery") && !page.body.contains("Otto"), "{}", page.body);
    assert!(!page.body.contains("Register a subscriber") && !page.body.contains(">Terminate<"), "{}", page.body);
    assert!(!page.body.contains("href=\"/portal/users\""), "no operator's navigation: {}", page.body);
    let csrf = page.csrf();

    let users = olga.get("/portal/users").await;
    assert_eq!(users.status, StatusCode::FORBIDDEN);
    assert!(users.body.contains("operator_only") && !users.body.contains("otto@example.com"), "{}", users.body);
    let otto = shop.bed.store().user_by_name("otto").await.unwrap().unwrap().id;
    let forms: [(String, Vec<(&str, &str)>); 4] = [
        ("/portal/subscribers".into(), vec![("owner", "olga"), ("name", "Mine"), ("email", "m@example.com")]),
        (format!("/portal/subscribers/{}/terminate", shop.otto), vec![("reason", "rival")]),
        ("/portal/users".into(), vec![("username", "mallory"), ("password", PASSWORD), ("operator", "yes")]),
        (format!("/portal/users/{otto}/suspend"), vec![]),
    ];
    for (path, fields) in forms {
        let fields = [&[("csrf", csrf.as_str())], fields.as_slice()].concat();
        let refused = olga.post(&path, &fields).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}: {}", refused.body);
        assert!(refused.body.contains("operator_only"), "{path}: {}", refused.body);
    }
    // Her own subscription is not hers to terminate either.
    let own =
        olga.post(&format!("/portal/subscribers/{}/terminate", shop.olga), &[("csrf", &csrf), ("reason", "x")]).await;
    assert_eq!(own.status, StatusCode::FORBIDDEN);
    let store = shop.bed.store();
    assert!(store.user_by_name("mallory").await.unwrap().is_none());
    assert_eq!(store.list_subscribers().await.unwrap().len(), 2);
    assert!(store.list_subscribers().await.unwrap().iter().all(|s| s.subscriber.status == SubscriptionStatus::Active));
    assert!(store.user(otto).await.unwrap().unwrap().suspended_at.is_none());
}

#[tokio::test]
async fn an_operator_sees_each_silos_aggregates_and_their_sum_and_an_owner_is_refused() {
    use crate::silo::aggregates::{Aggregates, Counts};
    let shop = shop().await;
    let store = shop.bed.store();
    let now = time::OffsetDateTime::now_utc();
    for (name, region) in [("silo-a", "eu"), ("silo-b", "us")] {
        let silo = crate::store::NewSilo {
            name: name.into(),
            location: format!("{name}.example:4433"),
            capacity: 100,
            region: Some(region.into()),
            oem: None,
            signing_key: None,
            portal_url: None,
            now,
        };
        store.add_silo(&silo).await.unwrap();
    }
    // Only silo A has sent its counts.
    let counts = Aggregates {
        silo: "silo-a".into(),
        issued_at: now.unix_timestamp(),
        machines: Counts { machines: 7, green: 4, yellow: 2, red: 1, unrated: 0 },
        connected: 5,
        reasons: [("firewall_off".to_string(), 3)].into(),
        tiers: [("standard".to_string(), Counts { machines: 7, green: 4, yellow: 2, red: 1, unrated: 0 })].into(),
        alerts_24h: 11,
        actions_24h: 13,
        ..Aggregates::default()
    };
    let stored = crate::store::StoredAggregates {
        silo: "silo-a".into(),
        issued_at: now,
        received_at: now,
        payload: serde_json::to_string(&counts).unwrap(),
    };
    assert!(store.put_silo_aggregates(&stored).await.unwrap());

    let mut olaf = operator(&shop).await;
    let page = olaf.get("/portal/silos").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("href=\"/portal/silos\""), "the operator's navigation: {}", page.body);
    for cell in ["silo-a", "silo-b", "nothing received yet", "firewall_off", "standard", ">11<", ">13<", ">5<"] {
        assert!(page.body.contains(cell), "{cell}: {}", page.body);
    }
    // The sum row: A's counts, as B sent none.
    let total = &page.body[page.body.find("All silos").expect("a total row")..];
    assert!(total.contains(">7<") && total.contains(">4<"), "{total}");

    let mut olga = shop.signed_in("olga", "192.0.2.46").await;
    let refused = olga.get("/portal/silos").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("operator_only") && !refused.body.contains("silo-a"), "{}", refused.body);
}
