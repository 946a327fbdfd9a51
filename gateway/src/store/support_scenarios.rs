//! Support actions and messages in the store, one scenario per function, written once against the
//! store's public API: run on SQLite by the gateway's unit tests (`support_tests.rs`) and on SQLite
//! and a real PostgreSQL by `tests/tests/store.rs`, which include this file. The including module
//! provides the names imported below.

use super::{ActionOutcome, NewSupportAction, NewSupportMessage, OffsetDateTime, Store, Uuid};

fn now() -> OffsetDateTime {
    // Whole seconds, as the gateway stores what it signs.
    OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).expect("a valid time")
}

fn action(uuid: Uuid, expires_in: i64) -> NewSupportAction {
    let created_at = now();
    NewSupportAction {
        id: Uuid::new_v4(),
        uuid,
        subscriber_id: None,
        kind: "script",
        body: "echo hi\n".into(),
        timeout_secs: 60,
        issued_by_user_id: 1,
        issued_by: "operator (user 1)".into(),
        created_at,
        expires_at: created_at + time::Duration::seconds(expires_in),
        payload: "cGF5bG9hZA==".into(),
        signature: "c2lnbmF0dXJl".into(),
    }
}

fn outcome(state: &'static str, exit_code: i64) -> ActionOutcome {
    ActionOutcome {
        state,
        exit_code,
        duration_ms: 12,
        output: "hi\n".into(),
        output_truncated: false,
        text: String::new(),
        report_seq: Some(7),
        at: now(),
    }
}

/// An action waits until sent, is sent again until answered, takes the first result of its own
/// machine only, and one never answered in time is expired.
pub async fn an_action_is_sent_until_answered_and_keeps_its_first_result(store: &Store) {
    let (pc, other) = (Uuid::new_v4(), Uuid::new_v4());
    let first = action(pc, 3600);
    store.create_support_action(&first).await.unwrap();
    let due = store.deliverable_actions(pc, now(), true).await.unwrap();
    assert_eq!(due, vec![(first.id, first.payload.clone(), first.signature.clone())]);
    assert!(store.deliverable_actions(other, now(), true).await.unwrap().is_empty(), "another machine's");

    assert!(store.mark_action_sent(first.id, now()).await.unwrap(), "the first send counts");
    assert!(!store.mark_action_sent(first.id, now()).await.unwrap(), "a second one does not");
    assert_eq!(store.support_action(first.id).await.unwrap().unwrap().state, "sent");
    // Sent without an answer: sent again at the next connection, not on a poll of the live one.
    assert_eq!(store.deliverable_actions(pc, now(), true).await.unwrap().len(), 1);
    assert!(store.deliverable_actions(pc, now(), false).await.unwrap().is_empty(), "sent on this connection");

    // Another machine's word about it is not taken.
    assert!(store.record_action_outcome(first.id, other, &outcome("completed", 0)).await.unwrap().is_none());
    let done = store.record_action_outcome(first.id, pc, &outcome("completed", 3)).await.unwrap().expect("recorded");
    assert_eq!((done.state.as_str(), done.exit_code, done.report_seq), ("completed", Some(3), Some(7)));
    assert_eq!(done.output.as_deref(), Some("hi\n"));
    // The first result stands.
    assert!(store.record_action_outcome(first.id, pc, &outcome("refused_replayed", -1)).await.unwrap().is_none());
    assert!(store.deliverable_actions(pc, now(), true).await.unwrap().is_empty());

    // Expired before it was answered: never sent, and listed as expired.
    let late = action(pc, -1);
    store.create_support_action(&late).await.unwrap();
    assert!(store.deliverable_actions(pc, now(), true).await.unwrap().is_empty());
    assert_eq!(store.expire_support_actions(pc, now()).await.unwrap(), 1);
    let listed = store.support_actions(pc).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().find(|a| a.id == late.id).unwrap().state, "expired");
}

/// A broadcast's copies are delivered each to its machine until received; received and read are
/// counted once each, read implying received.
pub async fn a_broadcast_is_counted_as_each_machine_receives_and_reads_it(store: &Store) {
    let machines: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let created_at = now();
    let message = NewSupportMessage {
        id: Uuid::new_v4(),
        scope: "gateway",
        subscriber_id: None,
        uuid: None,
        from_user_id: 1,
        from_name: "operator (user 1)".into(),
        text: "Maintenance tonight".into(),
        created_at,
        expires_at: created_at + time::Duration::hours(1),
        deliveries: machines.iter().map(|m| (*m, format!("payload-{m}"), "sig".to_string())).collect(),
    };
    store.create_support_message(&message).await.unwrap();
    let counts = || async {
        let m = store.support_message(message.id).await.unwrap().unwrap();
        (m.machines, m.sent, m.received, m.read)
    };
    assert_eq!(counts().await, (3, 0, 0, 0));
    let due = store.deliverable_messages(machines[0], now(), true).await.unwrap();
    assert_eq!(due, vec![(message.id, format!("payload-{}", machines[0]), "sig".to_string())]);

    store.mark_message_sent(message.id, machines[0], now()).await.unwrap();
    assert_eq!(store.deliverable_messages(machines[0], now(), true).await.unwrap().len(), 1, "unanswered: resent");
    assert!(store.deliverable_messages(machines[0], now(), false).await.unwrap().is_empty(), "but not on a poll");
    assert!(store.record_message_state(message.id, machines[0], false, now()).await.unwrap());
    assert!(store.deliverable_messages(machines[0], now(), true).await.unwrap().is_empty(), "received: not sent again");
    // Read without a received first (its ack was lost): both count.
    assert!(store.record_message_state(message.id, machines[1], true, now()).await.unwrap());
    assert!(store.record_message_state(message.id, machines[1], true, now()).await.unwrap());
    assert_eq!(counts().await, (3, 2, 2, 1));
    assert!(!store.record_message_state(message.id, Uuid::new_v4(), true, now()).await.unwrap(), "not its message");

    let deliveries = store.message_deliveries(message.id, 10).await.unwrap();
    assert_eq!(deliveries.len(), 3);
    let read = deliveries.iter().find(|d| d.uuid == machines[1]).unwrap();
    assert!(read.received_at.is_some() && read.read_at.is_some());
    assert_eq!(store.support_messages(Some(1)).await.unwrap().len(), 1);
    assert!(store.support_messages(Some(2)).await.unwrap().is_empty(), "another sender's");
    assert_eq!(store.support_messages(None).await.unwrap()[0].id, message.id);
}
