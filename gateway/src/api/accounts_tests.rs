//! Every account flow through the API, as the people in it would go: an operator sets up a
//! subscriber, the subscriber enrolls a machine and invites contacts, a contact accepts, sees the
//! machine and leaves; invitations expire on the API's clock (moved forward), former contacts
//! become plain users after three months, a terminated subscription and a suspension end
//! access at once.

use serde_json::{json, Value};
use uuid::Uuid;

use super::tests::{bed, Bed};
use crate::auth;
use crate::store::TokenScope;
use axum::http::StatusCode;

const FROM: &str = "198.18.7.1";

struct People {
    bed: Bed,
    operator: String,
    olga: String,
    olga_id: i64,
    carl: String,
    carl_id: i64,
    dora: String,
    subscriber: i64,
    machine: Uuid,
}

async fn token_for(bed: &Bed, user_id: i64, scope: TokenScope) -> String {
    let token = auth::new_token();
    let hash = auth::hash_token(&token);
    bed.api.shared.store.create_user_token(Some(user_id), &format!("t{user_id}"), &hash, scope, None).await.unwrap();
    token
}

async fn created(bed: &Bed, token: &str, path: &str, body: Value) -> Value {
    let (status, _, answer) = bed.post(FROM, Some(token), path, body).await;
    assert_eq!(status, StatusCode::CREATED, "POST {path}: {answer}");
    answer
}

/// The operator creates olga (who will own a subscriber), carl and dora, and registers olga's
/// subscriber; olga enrolls a connected machine.
async fn people() -> People {
    let bed = bed(|_| {}).await;
    let store = &bed.api.shared.store;
    let operator_id = store.user_by_name(crate::store::OPERATOR).await.unwrap().unwrap().id;
    let operator = token_for(&bed, operator_id, TokenScope::Attach).await;
    let mut ids = Vec::new();
    for name in ["olga", "carl", "dora"] {
        let body = json!({"username": name, "email": format!("{name}@example.com"), "password": "a long password"});
        ids.push(created(&bed, &operator, "/api/v1/users", body).await["id"].as_i64().unwrap());
    }
    let register = json!({"owner": "olga", "name": "Olga's Bakery", "email": "olga@example.com", "max_contacts": 3});
    let subscriber = created(&bed, &operator, "/api/v1/subscribers", register).await["id"].as_i64().unwrap();
    let olga = token_for(&bed, ids[0], TokenScope::Attach).await;
    let (machine, _ends) = bed.device();
    let path = format!("/api/v1/subscribers/{subscriber}/machines");
    let enrolled = created(&bed, &olga, &path, json!({"uuid": machine, "nickname": "till"})).await;
    assert_eq!(enrolled["new_machine"], true, "{enrolled}");
    assert!(enrolled["token"].as_str().is_some_and(|t| t.starts_with("tte_")), "an agent's token: {enrolled}");
    assert!(enrolled["token_expires_at"].is_string(), "{enrolled}");
    People {
        carl: token_for(&bed, ids[1], TokenScope::Attach).await,
        dora: token_for(&bed, ids[2], TokenScope::Attach).await,
        bed,
        operator,
        olga,
        olga_id: ids[0],
        carl_id: ids[1],
        subscriber,
        machine,
    }
}

impl People {
    async fn invite(&self, email: &str) -> Uuid {
        let path = format!("/api/v1/subscribers/{}/contacts", self.subscriber);
        let answer = created(&self.bed, &self.olga, &path, json!({"email": email})).await;
        assert!(answer["accept_url"].as_str().unwrap().ends_with(&answer["guid"].as_str().unwrap().to_string()));
        answer["guid"].as_str().unwrap().parse().unwrap()
    }

    async fn accept(&self, token: &str, guid: Uuid) -> (StatusCode, Value) {
        let body = json!({"terms_version": "2026-1", "nickname": "Carl from IT", "alert_prefs": {"red": true}});
        let (status, _, answer) =
            self.bed.post(FROM, Some(token), &format!("/api/v1/invitations/{guid}/accept"), body).await;
        (status, answer)
    }

    async fn sees_machine(&self, token: &str) -> (StatusCode, Value) {
        let (status, _, answer) = self.bed.get(FROM, Some(token), &format!("/api/v1/devices/{}", self.machine)).await;
        (status, answer)
    }

    async fn contacts(&self) -> Vec<Value> {
        let path = format!("/api/v1/subscribers/{}/contacts", self.subscriber);
        let (status, _, answer) = self.bed.get(FROM, Some(&self.olga), &path).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer.as_array().unwrap().clone()
    }

    /// The outbox, oldest first: (kind, recipient).
    async fn mails(&self) -> Vec<(String, String)> {
        let mut list = self.bed.api.shared.store.list_outbox(100).await.unwrap();
        list.reverse();
        list.into_iter().map(|m| (m.kind, m.recipient)).collect()
    }

    async fn sweep(&self) -> (u64, u64) {
        self.bed.api.flows().sweep().await.unwrap()
    }
}

#[tokio::test]
async fn a_subscriber_invites_a_contact_who_accepts_sees_the_machine_and_leaves() {
    let p = people().await;
    assert_eq!(p.sees_machine(&p.carl).await.1["code"], "not_related", "nothing before an invitation");
    let guid = p.invite("carl@example.com").await;
    let (status, _, view) = p.bed.get(FROM, Some(&p.carl), &format!("/api/v1/invitations/{guid}")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!((view["state"].as_str(), view["subscriber"].as_str()), (Some("invited"), Some("Olga's Bakery")));
    assert_eq!(p.sees_machine(&p.carl).await.1["code"], "not_related", "an invitation alone grants nothing");

    assert_eq!(p.mails().await, [("invitation".into(), "carl@example.com".into())], "the invitation is mailed");
    let (status, contact) = p.accept(&p.carl, guid).await;
    assert_eq!(status, StatusCode::OK, "{contact}");
    assert_eq!(contact["state"], "active");
    assert_eq!(p.sees_machine(&p.carl).await.0, StatusCode::OK);
    let (status, _, me) = p.bed.get(FROM, Some(&p.carl), "/api/v1/me").await;
    assert_eq!((status, me["contact_of"].clone()), (StatusCode::OK, json!([p.subscriber])));
    let (status, again) = p.accept(&p.carl, guid).await;
    assert_eq!((status, again["code"].as_str()), (StatusCode::CONFLICT, Some("invitation_closed")), "{again}");

    // Carl leaves: access ends at once, the subscriber sees the relation as left, carl is
    // inactive and, three months on, a plain user again.
    let (status, _, left) =
        p.bed.post(FROM, Some(&p.carl), &format!("/api/v1/subscribers/{}/leave", p.subscriber), json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{left}");
    assert_eq!(p.sees_machine(&p.carl).await.1["code"], "not_related");
    assert_eq!(p.contacts().await[0]["state"], "left");
    assert_eq!(p.mails().await[1], ("contact_left".into(), "olga@example.com".into()), "the subscriber is told");
    let carl = p.bed.api.shared.store.user(p.carl_id).await.unwrap().unwrap();
    assert!(carl.inactive_since.is_some(), "a contact of no subscriber is inactive");
    p.bed.api.clock.advance(time::Duration::days(89));
    assert_eq!(p.sweep().await, (0, 0), "not yet three months");
    p.bed.api.clock.advance(time::Duration::days(2));
    assert_eq!(p.sweep().await, (0, 1));
    let carl = p.bed.api.shared.store.user(p.carl_id).await.unwrap().unwrap();
    assert!(carl.inactive_since.is_none(), "a plain user after the inactive period");

    // The audit has who did what.
    let (status, _, rows) = p.bed.get(FROM, Some(&p.carl), &format!("/api/v1/users/{}/audit", p.carl_id)).await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    let actions: Vec<&str> = rows.as_array().unwrap().iter().filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(actions, ["contact.left", "contact.accepted"], "{rows}");
    let (status, _, rows) = p.bed.get(FROM, Some(&p.olga), &format!("/api/v1/devices/{}/audit", p.machine)).await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert_eq!(rows[0]["action"], "enrollment_token.created", "{rows}");
    assert_eq!(rows[1]["action"], "machine.enrolled", "{rows}");
    let (status, _, rows) = p.bed.get(FROM, Some(&p.carl), &format!("/api/v1/users/{}/audit", p.olga_id)).await;
    assert_eq!((status, rows["code"].as_str()), (StatusCode::FORBIDDEN, Some("operator_only")), "{rows}");
}

#[tokio::test]
async fn an_expired_invitation_says_a_new_one_is_needed() {
    let p = people().await;
    let guid = p.invite("dora@example.com").await;
    p.bed.api.clock.advance(time::Duration::days(7) + time::Duration::seconds(1));
    let (status, refused) = p.accept(&p.dora, guid).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::GONE, Some("invitation_expired")), "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("a new invitation is needed"), "{refused}");
    let (_, _, view) = p.bed.get(FROM, Some(&p.dora), &format!("/api/v1/invitations/{guid}")).await;
    assert_eq!(view["state"], "expired", "{view}");
    assert_eq!(p.sweep().await, (1, 0));
    assert_eq!(p.contacts().await[0]["state"], "expired");
    // A new invitation works.
    let again = p.invite("dora@example.com").await;
    assert_eq!(p.accept(&p.dora, again).await.0, StatusCode::OK);
    assert_eq!(p.sees_machine(&p.dora).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_subscriber_removes_contacts_before_and_after_acceptance() {
    let p = people().await;
    let pending = p.invite("someone@example.com").await;
    let guid = p.invite("carl@example.com").await;
    assert_eq!(p.accept(&p.carl, guid).await.0, StatusCode::OK);
    let contacts = p.contacts().await;
    let id_of =
        |guid: Uuid| contacts.iter().find(|c| c["invitation_guid"] == json!(guid)).unwrap()["id"].as_i64().unwrap();
    let base = format!("/api/v1/subscribers/{}/contacts", p.subscriber);
    // Never mailed (no mail worker here): removed without telling anyone.
    let (status, _, removed) = p.bed.delete(FROM, Some(&p.olga), &format!("{base}/{}", id_of(pending))).await;
    assert_eq!(
        (status, removed["was"].as_str(), removed["told"].as_bool()),
        (StatusCode::OK, Some("invited"), Some(false))
    );
    let (status, gone) = p.accept(&p.dora, pending).await;
    assert_eq!((status, gone["code"].as_str()), (StatusCode::CONFLICT, Some("invitation_closed")), "{gone}");
    // Carl is told, and loses access at once.
    let (status, _, removed) = p.bed.delete(FROM, Some(&p.olga), &format!("{base}/{}", id_of(guid))).await;
    assert_eq!(
        (status, removed["was"].as_str(), removed["told"].as_bool()),
        (StatusCode::OK, Some("active"), Some(true))
    );
    assert_eq!(p.sees_machine(&p.carl).await.1["code"], "not_related");
    let removals: Vec<_> = p.mails().await.into_iter().filter(|(kind, _)| kind == "contact_removed").collect();
    assert_eq!(removals, [("contact_removed".into(), "carl@example.com".into())], "only carl is told");
    // Only the subscriber (or an operator) manages contacts.
    let (status, _, refused) = p.bed.delete(FROM, Some(&p.carl), &format!("{base}/{}", id_of(guid))).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::FORBIDDEN, Some("not_related")), "{refused}");
    let (status, _, refused) = p.bed.post(FROM, Some(&p.carl), &base, json!({"email": "x@example.com"})).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::FORBIDDEN, Some("not_related")), "{refused}");
}

#[tokio::test]
async fn a_terminated_subscription_and_a_suspension_end_access_at_once() {
    let p = people().await;
    let guid = p.invite("carl@example.com").await;
    assert_eq!(p.accept(&p.carl, guid).await.0, StatusCode::OK);
    let guid = p.invite("dora@example.com").await;
    assert_eq!(p.accept(&p.dora, guid).await.0, StatusCode::OK);

    let suspend = format!("/api/v1/users/{}/suspend", p.carl_id);
    let (status, _, refused) = p.bed.post(FROM, Some(&p.olga), &suspend, json!(null)).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::FORBIDDEN, Some("operator_only")), "{refused}");
    assert_eq!(p.bed.post(FROM, Some(&p.operator), &suspend, json!(null)).await.0, StatusCode::OK);
    assert_eq!(p.sees_machine(&p.carl).await.1["code"], "suspended");
    let unsuspend = format!("/api/v1/users/{}/unsuspend", p.carl_id);
    assert_eq!(p.bed.post(FROM, Some(&p.operator), &unsuspend, json!(null)).await.0, StatusCode::OK);
    assert_eq!(p.sees_machine(&p.carl).await.0, StatusCode::OK);

    let terminate = format!("/api/v1/subscribers/{}/terminate", p.subscriber);
    let (status, _, refused) = p.bed.post(FROM, Some(&p.olga), &terminate, json!({"reason": "unpaid"})).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::FORBIDDEN, Some("operator_only")), "{refused}");
    let (status, _, done) = p.bed.post(FROM, Some(&p.operator), &terminate, json!({"reason": "unpaid"})).await;
    assert_eq!((status, done["contacts_ended"].as_u64()), (StatusCode::OK, Some(2)), "{done}");
    assert_eq!(p.sees_machine(&p.carl).await.1["code"], "not_related");
    assert_eq!(p.sees_machine(&p.dora).await.1["code"], "not_related");
    let mut told: Vec<_> = p.mails().await.into_iter().filter(|(kind, _)| kind == "subscription_terminated").collect();
    told.sort();
    let want = |to: &str| ("subscription_terminated".to_string(), to.to_string());
    assert_eq!(told, [want("carl@example.com"), want("dora@example.com")], "each contact is told");
    // The owner still sees its own records, and changes nothing.
    assert_eq!(p.sees_machine(&p.olga).await.0, StatusCode::OK);
    let (status, _, refused) = p
        .bed
        .post(
            FROM,
            Some(&p.olga),
            &format!("/api/v1/subscribers/{}/contacts", p.subscriber),
            json!({"email": "x@example.com"}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("subscription_terminated")),
        "{refused}"
    );
    // The reason is the operators'.
    let path = format!("/api/v1/subscribers/{}", p.subscriber);
    let (_, _, seen) = p.bed.get(FROM, Some(&p.olga), &path).await;
    assert!(seen.get("terminate_reason").is_none(), "{seen}");
    let (_, _, seen) = p.bed.get(FROM, Some(&p.operator), &path).await;
    assert_eq!(seen["terminate_reason"], "unpaid", "{seen}");
}

#[tokio::test]
async fn an_operator_issues_a_subscriber_an_mps_account_and_nobody_else_can() {
    let p = people().await;
    let path = format!("/api/v1/subscribers/{}/mps-account", p.subscriber);
    let (status, _, refused) = p.bed.post(FROM, Some(&p.olga), &path, json!({})).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::FORBIDDEN, Some("operator_only")), "{refused}");
    let issued = created(&p.bed, &p.operator, &path, json!({})).await;
    let username = format!("sub{}", p.subscriber);
    assert_eq!(issued["username"], json!(username));
    let password = issued["password"].as_str().unwrap();
    let store = &p.bed.api.shared.store;
    let (hash, subscriber) = store.mps_account(&username).await.unwrap().unwrap();
    assert_eq!(subscriber, Some(p.subscriber));
    assert!(auth::verify_password(&hash, password.as_bytes()), "the returned password is the account's");
    // The gateway-wide account's name is not the subscriber's to take.
    store.set_mps_account("tether", "hash").await.unwrap();
    let (status, _, refused) = p.bed.post(FROM, Some(&p.operator), &path, json!({"username": "tether"})).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_input")), "{refused}");
}

#[tokio::test]
async fn bad_input_gets_a_stable_code_and_a_message() {
    let p = people().await;
    let path = format!("/api/v1/subscribers/{}/contacts", p.subscriber);
    let (status, _, refused) = p.bed.post(FROM, Some(&p.olga), &path, json!({"email": "not an address"})).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_input")), "{refused}");
    let (status, _, refused) =
        p.bed.post(FROM, Some(&p.operator), "/api/v1/users", json!({"username": "x", "password": "short"})).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_input")), "{refused}");
    let (status, _, refused) = p
        .bed
        .post(FROM, Some(&p.operator), "/api/v1/users", json!({"username": "olga", "password": "a long password"}))
        .await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::CONFLICT, Some("username_taken")), "{refused}");
    let unknown = Uuid::new_v4();
    let (status, _, refused) = p.bed.get(FROM, Some(&p.carl), &format!("/api/v1/invitations/{unknown}")).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_such_invitation")), "{refused}");
}

#[tokio::test]
async fn a_user_changes_their_email_once_the_link_sent_to_the_new_address_is_followed() {
    let p = people().await;
    let (status, _, answer) =
        p.bed.post(FROM, Some(&p.carl), "/api/v1/me/email", json!({"email": "carl@new.example"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (_, _, me) = p.bed.get(FROM, Some(&p.carl), "/api/v1/me").await;
    assert_eq!(me["user"]["email"], "carl@example.com", "nothing changes before the link is followed");
    // Read the link as the mail worker would send it.
    let now = time::OffsetDateTime::now_utc();
    let store = &p.bed.api.shared.store;
    let mail = store.claim_mail(now, now + time::Duration::minutes(1), 10).await.unwrap();
    let mail = mail.iter().find(|m| m.kind == "email_change").expect("the confirmation mail is queued");
    assert_eq!(mail.recipient, "carl@new.example", "the link goes to the new address");
    let secret = mail.body.split("secret=").nth(1).unwrap().split_whitespace().next().unwrap();
    let confirm =
        |secret: &str| p.bed.post(FROM, Some(&p.carl), "/api/v1/email-changes/confirm", json!({"secret": secret}));
    let (status, _, refused) = confirm("not-the-secret").await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_such_email_change")), "{refused}");
    let (status, _, changed) = confirm(secret).await;
    assert_eq!((status, changed["email"].as_str()), (StatusCode::OK, Some("carl@new.example")), "{changed}");
    let (_, _, me) = p.bed.get(FROM, Some(&p.carl), "/api/v1/me").await;
    assert_eq!(me["user"]["email"], "carl@new.example");
    let (status, _, again) = confirm(secret).await;
    assert_eq!(
        (status, again["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_such_email_change")),
        "once: {again}"
    );
}
