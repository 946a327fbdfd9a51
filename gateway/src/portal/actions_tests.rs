//! Support actions in the portal, in process over the real router and a real SQLite store: an
//! active contact sends a script from the machine page (the form needs its CSRF token; an empty
//! script is refused with its code), the stored action is signed by the gateway's key over what
//! the form said, its page follows it to the result; a user of another subscriber can neither
//! see it nor send one.

use axum::http::StatusCode;
use base64::Engine;
use protocols::tap::{self, ActionBody, ActionKind, SignDomain};

use super::flows_tests::shop;
use super::tests::now;
use crate::store::{ActionOutcome, AgentHello};

#[tokio::test]
async fn a_contact_sends_a_script_from_the_machine_page_and_follows_it_to_its_result() {
    let shop = shop().await;
    let machine = shop.machine;
    let store = shop.bed.store();
    let hello = AgentHello {
        uuid: machine,
        hostname: "kitchen".into(),
        os: "Debian GNU/Linux 12".into(),
        agent_version: "0.1.0".into(),
        capabilities: 15,
        remote_help: true,
        remote_addr: "192.0.2.9:50000".into(),
        instance_id: "test-gateway".into(),
        now: now(),
    };
    store.agent_connected(&hello).await.unwrap();
    shop.active_contact("carl@example.com", "carl").await;
    let mut carl = shop.signed_in("carl", "192.0.2.41").await;

    let page = carl.get(&format!("/portal/machines/{machine}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Support actions") && page.body.contains("Sign and send"), "{}", page.body);
    let csrf = page.csrf();
    let path = format!("/portal/machines/{machine}/actions");
    let form = [("csrf", csrf.as_str()), ("kind", "script"), ("body", "echo hi\r\n"), ("timeout", "30")];
    assert_eq!(carl.post(&path, &form[1..]).await.status, StatusCode::FORBIDDEN, "no CSRF token, no action");
    let empty = carl.post(&path, &[("csrf", csrf.as_str()), ("kind", "script"), ("body", "  ")]).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST, "{}", empty.body);
    assert!(empty.body.contains("empty"), "{}", empty.body);
    assert!(store.support_actions(machine).await.unwrap().is_empty());

    let sent = carl.post(&path, &form).await;
    assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.body);
    let location = sent.location().to_string();
    let id: uuid::Uuid = location.strip_prefix("/portal/actions/").expect("the action's page").parse().unwrap();

    // Stored pending, signed by the gateway's key over what the form said.
    let stored = store.support_action(id).await.unwrap().expect("stored");
    assert_eq!((stored.state.as_str(), stored.kind.as_str(), stored.timeout_secs), ("pending", "script", 30));
    assert!(stored.issued_by.starts_with("carl (user "), "{}", stored.issued_by);
    let rows = store.deliverable_actions(machine, now(), true).await.unwrap();
    let engine = base64::engine::general_purpose::STANDARD;
    let payload = engine.decode(&rows[0].1).unwrap();
    let signature = engine.decode(&rows[0].2).unwrap();
    let public = shop.bed.state.shared.agent_keys.signing_public();
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, public);
    key.verify(&tap::signed_message(SignDomain::Action, &payload), &signature).expect("signed by the gateway's key");
    let body = ActionBody::decode(&payload).unwrap();
    assert_eq!((body.id, body.target, body.kind, body.timeout_secs), (id, machine, ActionKind::Script, 30));
    assert_eq!(body.body, "echo hi\n", "the browser's line ends are the PC's");

    let shown = carl.get(&location).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    assert!(shown.body.contains("pending") && shown.body.contains("echo hi"), "{}", shown.body);
    // The agent's result, as its session records it.
    let outcome = ActionOutcome {
        state: "completed",
        exit_code: 0,
        duration_ms: 15,
        output: "hi from the kitchen\n".into(),
        output_truncated: false,
        text: String::new(),
        report_seq: Some(4),
        at: now(),
    };
    store.record_action_outcome(id, machine, &outcome).await.unwrap().expect("recorded");
    let done = carl.get(&location).await;
    assert!(done.body.contains("completed") && done.body.contains("hi from the kitchen"), "{}", done.body);
    assert!(done.body.contains("report 4"), "the fresh report is named: {}", done.body);
    let machine_page = carl.get(&format!("/portal/machines/{machine}")).await;
    assert!(machine_page.body.contains(&location), "the machine page lists it: {}", machine_page.body);

    // Otto, another subscriber's owner: neither the action's page nor the form.
    let mut otto = shop.signed_in("otto", "192.0.2.42").await;
    assert_eq!(otto.get(&location).await.status, StatusCode::FORBIDDEN);
    let csrf = otto.csrf().await;
    let refused = otto.post(&path, &[("csrf", csrf.as_str()), ("kind", "script"), ("body", "id")]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert_eq!(store.support_actions(machine).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_action_kept_without_a_subscriber_is_shown_by_its_machines_subscriber() {
    // As a maintenance silo keeps the root's actions: no subscriber of its own on the row.
    let shop = shop().await;
    let machine = shop.machine;
    let store = shop.bed.store();
    let id = uuid::Uuid::new_v4();
    let action = crate::store::NewSupportAction {
        id,
        uuid: machine,
        subscriber_id: None,
        kind: "script",
        body: "echo from the root".into(),
        timeout_secs: 30,
        issued_by_user_id: 0,
        issued_by: "support (user 0123abcd)".into(),
        created_at: now(),
        expires_at: now() + time::Duration::hours(1),
        payload: String::new(),
        signature: String::new(),
    };
    store.create_support_action(&action).await.unwrap();
    shop.active_contact("carl@example.com", "carl").await;
    let mut carl = shop.signed_in("carl", "192.0.2.41").await;
    let shown = carl.get(&format!("/portal/actions/{id}")).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    assert!(shown.body.contains("echo from the root"), "{}", shown.body);
    let mut otto = shop.signed_in("otto", "192.0.2.42").await;
    assert_eq!(otto.get(&format!("/portal/actions/{id}")).await.status, StatusCode::FORBIDDEN);
}
