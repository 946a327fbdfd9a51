//! The authorization matrix over the real router: each relation a user can have to a machine ×
//! each endpoint → allowed (the request got past the policy, whatever the endpoint then said) or
//! denied with the policy's stable code. Also: the device list shows each user only what the
//! policy lets them see.

use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::tests::{bed, relay, Bed};
use crate::auth;
use crate::policy::Role;
use crate::store::{Acceptance, NewSubscriber, SubscriberPii, TokenScope};
use axum::http::StatusCode;

/// What a request came to: past the policy, or refused by it with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    Allowed,
    Denied(&'static str),
}

use Got::{Allowed as A, Denied as D};

const NOT_RELATED: Got = D("not_related");
const OPERATOR_ONLY: Got = D("operator_only");
const UNASSIGNED: Got = D("unassigned_machine");
const SCOPE: Got = D("scope");
const SUSPENDED: Got = D("suspended");

/// Whether the policy refused (a 403 with one of its codes); anything else, a 403 of another
/// kind too (`lan_off`, `session_closed`), is past the policy.
fn got(status: StatusCode, body: &Value) -> Got {
    let policy = ["subscription_terminated", "wrong_resource"];
    match (status, body["code"].as_str()) {
        (StatusCode::FORBIDDEN, Some(code)) => {
            let known = ["not_related", "operator_only", "unassigned_machine", "scope", "suspended"];
            match known.into_iter().find(|k| *k == code) {
                Some(known) => D(known),
                None if policy.contains(&code) => D("other"),
                None => A,
            }
        }
        _ => A,
    }
}

struct World {
    bed: Bed,
    /// Subscriber 1's machine (connected), another subscriber's, and one enrolled by none.
    mine: Uuid,
    theirs: Uuid,
    unassigned: Uuid,
    /// Subscriber 1 (olga's) and carl's user id.
    subscriber: i64,
    carl: i64,
    /// Tokens, in the order of [`COLUMNS`].
    tokens: Vec<String>,
}

const COLUMNS: [&str; 6] = ["operator", "owner", "contact", "contact (read)", "stranger", "suspended contact"];

async fn token_of(bed: &Bed, user_id: i64, name: &str, scope: TokenScope) -> String {
    let token = auth::new_token();
    bed.api.shared.store.create_user_token(Some(user_id), name, &auth::hash_token(&token), scope, None).await.unwrap();
    token
}

async fn world() -> World {
    let bed = bed(|_| {}).await;
    let store = &bed.api.shared.store;
    let now = OffsetDateTime::now_utc();
    let register = |name: &str| NewSubscriber {
        username: name.into(),
        password: None,
        pii: SubscriberPii { name: name.into(), email: format!("{name}@example.com"), phone: None, billing_note: None },
        max_machines: 5,
        max_contacts: 5,
    };
    let owner = store.register_subscriber(&register("olga"), now).await.unwrap();
    let other = store.register_subscriber(&register("otto"), now).await.unwrap();
    let (mine, _ends) = bed.device();
    let (theirs, _ends) = bed.device();
    let (unassigned, _ends) = bed.device();
    store.enroll_machine(owner.subscriber_id, mine, None, now).await.unwrap();
    store.enroll_machine(other.subscriber_id, theirs, None, now).await.unwrap();
    let contact = |name: &'static str| async move {
        let id = store.create_user(name, None, None, Role::User, now).await.unwrap();
        let invitation =
            store.invite_contact(owner.subscriber_id, "c@example.com", now, time::Duration::days(7)).await.unwrap();
        let acceptance = Acceptance {
            terms_version: "1".into(),
            nickname: name.into(),
            contact_email: None,
            alert_prefs: json!({}),
        };
        store.accept_invitation(invitation.guid, id, &acceptance, now).await.unwrap();
        id
    };
    let carl = contact("carl").await;
    let sue = contact("sue").await;
    let stranger = store.create_user("sid", None, None, Role::User, now).await.unwrap();
    let operator = store.user_by_name(crate::store::OPERATOR).await.unwrap().unwrap().id;
    let tokens = vec![
        token_of(&bed, operator, "op", TokenScope::Attach).await,
        token_of(&bed, owner.user_id, "olga", TokenScope::Attach).await,
        token_of(&bed, carl, "carl", TokenScope::Attach).await,
        token_of(&bed, carl, "carl-read", TokenScope::Read).await,
        token_of(&bed, stranger, "sid", TokenScope::Attach).await,
        token_of(&bed, sue, "sue", TokenScope::Attach).await,
    ];
    store.suspend_user(sue, now).await.unwrap();
    World { bed, mine, theirs, unassigned, subscriber: owner.subscriber_id, carl, tokens }
}

#[tokio::test]
async fn each_relation_reaches_each_endpoint_as_the_policy_says() {
    let w = world().await;
    let (m, t, u) = (w.mine, w.theirs, w.unassigned);
    let (s1, carl, nobody) = (w.subscriber, w.carl, Uuid::new_v4());
    // columns: operator, owner, contact, contact (read), stranger, suspended contact
    #[rustfmt::skip]
    let rows: Vec<(&str, String, Option<Value>, [Got; 6])> = vec![
        ("GET", "/api/v1/devices".into(), None,                        [A, A, A, A, A, SUSPENDED]),
        ("GET", format!("/api/v1/devices/{m}"), None,                  [A, A, A, A, NOT_RELATED, SUSPENDED]),
        ("GET", format!("/api/v1/devices/{t}"), None,                  [A, NOT_RELATED, NOT_RELATED, NOT_RELATED, NOT_RELATED, SUSPENDED]),
        ("GET", format!("/api/v1/devices/{u}"), None,                  [A, UNASSIGNED, UNASSIGNED, UNASSIGNED, UNASSIGNED, SUSPENDED]),
        ("GET", format!("/api/v1/devices/{m}/redirections"), None,     [A, A, A, A, NOT_RELATED, SUSPENDED]),
        ("GET", format!("/api/v1/devices/{m}/actions"), None,          [A, A, A, A, NOT_RELATED, SUSPENDED]),
        ("GET", format!("/api/v1/devices/{m}/tcp/16994"), None,        [A, A, A, SCOPE, NOT_RELATED, SUSPENDED]),
        ("GET", format!("/api/v1/devices/{t}/tcp/16994"), None,        [A, NOT_RELATED, NOT_RELATED, SCOPE, NOT_RELATED, SUSPENDED]),
        ("GET", format!("/api/v1/devices/{u}/tcp/16994"), None,        [A, UNASSIGNED, UNASSIGNED, SCOPE, UNASSIGNED, SUSPENDED]),
        ("POST", format!("/api/v1/devices/{m}/power"), Some(json!({"action": "status"})),
                                                                       [A, A, A, SCOPE, NOT_RELATED, SUSPENDED]),
        ("POST", format!("/api/v1/devices/{t}/power"), Some(json!({"action": "status"})),
                                                                       [A, NOT_RELATED, NOT_RELATED, SCOPE, NOT_RELATED, SUSPENDED]),
        ("POST", format!("/api/v1/devices/{m}/session/open"), Some(json!({})),
                                                                       [A, A, A, SCOPE, NOT_RELATED, SUSPENDED]),
        ("POST", format!("/api/v1/devices/{m}/amt/forget"), Some(json!({})),
                                                                       [A, A, A, SCOPE, NOT_RELATED, SUSPENDED]),
        ("POST", format!("/api/v1/devices/{m}/wake"), Some(json!({})), [A, A, A, SCOPE, NOT_RELATED, SUSPENDED]),
        ("POST", format!("/api/v1/devices/{t}/rescue/finish"), Some(json!({})),
                                                                       [A, NOT_RELATED, NOT_RELATED, SCOPE, NOT_RELATED, SUSPENDED]),
        ("GET", "/api/v1/lan/hosts".into(), None,                      [A, OPERATOR_ONLY, OPERATOR_ONLY, OPERATOR_ONLY, OPERATOR_ONLY, SUSPENDED]),
        ("GET", "/api/v1/lan/devices".into(), None,                    [A, OPERATOR_ONLY, OPERATOR_ONLY, OPERATOR_ONLY, OPERATOR_ONLY, SUSPENDED]),
        ("POST", "/api/v1/lan/scans".into(), Some(json!({"interface": "eth0"})),
                                                                       [A, OPERATOR_ONLY, OPERATOR_ONLY, SCOPE, OPERATOR_ONLY, SUSPENDED]),
        ("POST", "/api/v1/lan/wake".into(), Some(json!({"mac": "00:11:22:33:44:55", "interface": "eth0"})),
                                                                       [A, OPERATOR_ONLY, OPERATOR_ONLY, SCOPE, OPERATOR_ONLY, SUSPENDED]),
        // The account endpoints. Bodies that pass the policy and are then refused by the flow
        // (bad input, not found) keep the world as it is for the next cells.
        ("GET", "/api/v1/me".into(), None,                             [A, A, A, A, A, SUSPENDED]),
        ("POST", "/api/v1/me/email".into(), Some(json!({"email": "not an address"})),
                                                                       [A, A, A, SCOPE, A, SUSPENDED]),
        ("POST", "/api/v1/email-changes/confirm".into(), Some(json!({"secret": "wrong"})),
                                                                       [A, A, A, A, A, SUSPENDED]),
        ("GET", "/api/v1/users".into(), None,                          [A, OPERATOR_ONLY, OPERATOR_ONLY, SCOPE, OPERATOR_ONLY, SUSPENDED]),
        ("POST", "/api/v1/users".into(), Some(json!({"username": "", "password": ""})),
                                                                       [A, OPERATOR_ONLY, OPERATOR_ONLY, SCOPE, OPERATOR_ONLY, SUSPENDED]),
        ("POST", "/api/v1/users/999999/suspend".into(), Some(json!(null)),
                                                                       [A, OPERATOR_ONLY, OPERATOR_ONLY, SCOPE, OPERATOR_ONLY, SUSPENDED]),
        ("POST", "/api/v1/users/999999/unsuspend".into(), Some(json!(null)),
                                                                       [A, OPERATOR_ONLY, OPERATOR_ONLY, SCOPE, OPERATOR_ONLY, SUSPENDED]),
        ("GET", format!("/api/v1/users/{carl}/audit"), None,           [A, OPERATOR_ONLY, A, A, OPERATOR_ONLY, SUSPENDED]),
        ("GET", format!("/api/v1/devices/{m}/audit"), None,            [A, A, A, A, NOT_RELATED, SUSPENDED]),
        ("GET", format!("/api/v1/devices/{t}/audit"), None,            [A, NOT_RELATED, NOT_RELATED, NOT_RELATED, NOT_RELATED, SUSPENDED]),
        ("GET", "/api/v1/subscribers".into(), None,                    [A, A, A, A, A, SUSPENDED]),
        ("POST", "/api/v1/subscribers".into(), Some(json!({"owner": "nobody", "name": "N", "email": "n@example.com"})),
                                                                       [A, OPERATOR_ONLY, OPERATOR_ONLY, SCOPE, OPERATOR_ONLY, SUSPENDED]),
        ("GET", format!("/api/v1/subscribers/{s1}"), None,             [A, A, NOT_RELATED, NOT_RELATED, NOT_RELATED, SUSPENDED]),
        ("POST", format!("/api/v1/subscribers/{s1}/terminate"), Some(json!({"reason": ""})),
                                                                       [A, OPERATOR_ONLY, OPERATOR_ONLY, SCOPE, OPERATOR_ONLY, SUSPENDED]),
        ("GET", format!("/api/v1/subscribers/{s1}/machines"), None,    [A, A, A, A, NOT_RELATED, SUSPENDED]),
        ("POST", format!("/api/v1/subscribers/{s1}/machines"), Some(json!({"uuid": m})),
                                                                       [A, A, NOT_RELATED, SCOPE, NOT_RELATED, SUSPENDED]),
        ("GET", format!("/api/v1/subscribers/{s1}/contacts"), None,    [A, A, NOT_RELATED, NOT_RELATED, NOT_RELATED, SUSPENDED]),
        ("POST", format!("/api/v1/subscribers/{s1}/contacts"), Some(json!({"email": "not an address"})),
                                                                       [A, A, NOT_RELATED, SCOPE, NOT_RELATED, SUSPENDED]),
        ("DELETE", format!("/api/v1/subscribers/{s1}/contacts/999999"), None,
                                                                       [A, A, NOT_RELATED, SCOPE, NOT_RELATED, SUSPENDED]),
        ("POST", format!("/api/v1/subscribers/{s1}/mps-account"), Some(json!({"username": "not valid!"})),
                                                                       [A, OPERATOR_ONLY, OPERATOR_ONLY, SCOPE, OPERATOR_ONLY, SUSPENDED]),
        ("GET", format!("/api/v1/invitations/{nobody}"), None,         [A, A, A, A, A, SUSPENDED]),
        ("POST", format!("/api/v1/invitations/{nobody}/accept"), Some(json!({"terms_version": "1", "nickname": "n"})),
                                                                       [A, A, A, SCOPE, A, SUSPENDED]),
        // Last: carl really leaves (the operator's cell is refused: not a contact).
        ("POST", format!("/api/v1/subscribers/{s1}/leave"), Some(json!(null)),
                                                                       [A, NOT_RELATED, A, SCOPE, NOT_RELATED, SUSPENDED]),
    ];
    let mut failures = Vec::new();
    for (row, (method, path, body, expected)) in rows.into_iter().enumerate() {
        for (i, want) in expected.into_iter().enumerate() {
            let token = Some(w.tokens[i].as_str());
            // A source of its own per cell: the per-source request budget is not what is tested.
            let from = format!("198.18.{row}.{}", i + 1);
            let (status, _, answer) = match method {
                "GET" => w.bed.get(&from, token, &path).await,
                "DELETE" => w.bed.delete(&from, token, &path).await,
                _ => w.bed.post(&from, token, &path, body.clone().unwrap_or(Value::Null)).await,
            };
            let is = got(status, &answer);
            if is != want {
                failures.push(format!("{method} {path} by {}: {is:?} ({status} {answer}), not {want:?}", COLUMNS[i]));
            }
        }
    }
    assert!(failures.is_empty(), "{} cells differ:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn the_device_list_shows_each_user_only_what_they_may_see() {
    let w = world().await;
    let list = |i: usize| {
        let (bed, token) = (&w.bed, w.tokens[i].clone());
        async move {
            let (status, _, body) = bed.get("198.18.0.1", Some(&token), "/api/v1/devices").await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let mut uuids: Vec<Uuid> =
                body.as_array().unwrap().iter().map(|d| d["uuid"].as_str().unwrap().parse().unwrap()).collect();
            uuids.sort();
            uuids
        }
    };
    let mut all = vec![w.mine, w.theirs, w.unassigned];
    all.sort();
    assert_eq!(list(0).await, all, "an operator sees every device, enrolled or not");
    assert_eq!(list(1).await, vec![w.mine], "the owner sees its own machine");
    assert_eq!(list(2).await, vec![w.mine], "a contact sees the subscriber's machine");
    assert_eq!(list(4).await, Vec::<Uuid>::new(), "a stranger sees nothing");
}

#[tokio::test]
async fn a_contact_removed_or_suspended_is_refused_at_once() {
    let w = world().await;
    let store = &w.bed.api.shared.store;
    let path = format!("/api/v1/devices/{}", w.mine);
    let carl = &w.tokens[2];
    assert_eq!(w.bed.get("198.18.0.1", Some(carl), &path).await.0, StatusCode::OK);
    let contact = store.contacts_of_user(store.user_by_name("carl").await.unwrap().unwrap().id).await.unwrap();
    store.remove_contact(contact[0].subscriber_id, contact[0].id, OffsetDateTime::now_utc()).await.unwrap();
    let (status, _, body) = w.bed.get("198.18.0.1", Some(carl), &path).await;
    assert_eq!(got(status, &body), NOT_RELATED, "{body}");
    assert!(body["error"].as_str().unwrap().contains("invite you"), "{body}");
    let (status, _, body) = w.bed.get("198.18.0.1", Some(&w.tokens[5]), "/api/v1/devices").await;
    assert_eq!(got(status, &body), SUSPENDED, "{body}");
}

#[tokio::test]
async fn a_contact_attaching_a_relay_is_audited_with_who_and_which_machine() {
    let w = world().await;
    let addr = w.bed.serve().await;
    let store = &w.bed.api.shared.store;
    let client = relay(addr, "127.0.0.1", &w.tokens[2], w.mine).await.expect("carl's relay to olga's machine");
    drop(client);
    let carl = store.user_by_name("carl").await.unwrap().unwrap().id;
    let rows = store.audit_for_machine(w.mine, None, 10).await.unwrap();
    let row = rows.iter().find(|r| r.action == "console.session").unwrap_or_else(|| panic!("no audit row: {rows:?}"));
    assert_eq!(row.actor_user_id, Some(carl), "{row:?}");
    assert!(row.subscriber_id.is_some() && row.detail.contains("port 16994"), "{row:?}");
    // A refused relay leaves no row.
    let refused = relay(addr, "127.0.0.1", &w.tokens[2], w.theirs).await.map(drop);
    assert_eq!(
        refused.map_err(|(status, body)| (status, body["code"].clone())),
        Err((StatusCode::FORBIDDEN, json!("not_related")))
    );
    assert!(store.audit_for_machine(w.theirs, None, 10).await.unwrap().is_empty());
}
