use super::*;
use crate::signature::testing;
use bytes::BytesMut;

fn entry(id: Uuid, received_at: i64) -> Entry {
    Entry {
        id,
        kind: EntryKind::Message,
        from: "Support".into(),
        text: format!("message {id}"),
        issued_at: received_at,
        expires_at: received_at + 3600,
        received_at,
        confirmed: Confirmed::None,
    }
}

#[test]
fn messages_are_deduplicated_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let inbox = Inbox::open(&state).unwrap();
    let id = Uuid::new_v4();
    assert!(inbox.add(entry(id, 10)).unwrap());
    assert!(!inbox.add(entry(id, 11)).unwrap());
    assert_eq!(inbox.len(), 1);
    let again = Inbox::open(&state).unwrap();
    assert_eq!(again.len(), 1);
    let listed = list(&state).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0.received_at, 10);
    assert!(!listed[0].1);
}

#[test]
fn the_inbox_is_capped_dropping_the_oldest_read_first() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let inbox = Inbox::open(&state).unwrap();
    let ids: Vec<Uuid> = (0..MAX_INBOX).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        inbox.add(entry(*id, i as i64)).unwrap();
    }
    // Two read, late in the list: they go before the oldest unread.
    mark_read(&state, ids[300]).unwrap();
    mark_read(&state, ids[400]).unwrap();
    inbox.add(entry(Uuid::new_v4(), 1_000)).unwrap();
    inbox.add(entry(Uuid::new_v4(), 1_001)).unwrap();
    assert_eq!(inbox.len(), MAX_INBOX);
    let kept: Vec<Uuid> = list(&state).unwrap().into_iter().map(|(e, _)| e.id).collect();
    assert!(!kept.contains(&ids[300]) && !kept.contains(&ids[400]));
    assert!(kept.contains(&ids[0]));
    assert!(!state.path("read").join(ids[300].to_string()).exists(), "the marker goes with its entry");
    // None read left: the oldest goes.
    inbox.add(entry(Uuid::new_v4(), 1_002)).unwrap();
    let kept: Vec<Uuid> = list(&state).unwrap().into_iter().map(|(e, _)| e.id).collect();
    assert!(!kept.contains(&ids[0]));
    // Newest first.
    assert_eq!(list(&state).unwrap()[0].0.received_at, 1_002);
}

#[test]
fn read_markers_become_states_until_the_gateway_confirms_them() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let inbox = Inbox::open(&state).unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    inbox.add(entry(a, 1)).unwrap();
    inbox.add(entry(b, 2)).unwrap();
    // A new connection: both as received.
    let mut states = inbox.states_to_send(true);
    states.sort();
    let mut want = vec![(a, false), (b, false)];
    want.sort();
    assert_eq!(states, want);
    // Nothing new on the tick until the user reads one.
    assert!(inbox.states_to_send(false).is_empty());
    mark_read(&state, a).unwrap();
    assert!(inbox.is_read(a));
    assert_eq!(inbox.states_to_send(false), vec![(a, true)]);
    assert!(inbox.states_to_send(false).is_empty(), "sent once per connection");
    // Receipts in order: a received, b received, a read.
    assert!(inbox.receipt(a).unwrap());
    assert!(inbox.receipt(b).unwrap());
    assert!(inbox.receipt(a).unwrap());
    assert!(!inbox.receipt(Uuid::new_v4()).unwrap());
    let confirmed: HashMap<Uuid, Confirmed> =
        Inbox::open(&state).unwrap().entries().iter().map(|e| (e.id, e.confirmed)).collect();
    assert_eq!(confirmed[&a], Confirmed::Read);
    assert_eq!(confirmed[&b], Confirmed::Received);
    // On the next connection only what is unconfirmed goes again: nothing, until b is read.
    assert!(inbox.states_to_send(true).is_empty());
    mark_read(&state, b).unwrap();
    assert_eq!(inbox.states_to_send(true), vec![(b, true)]);
}

#[test]
fn instructions_send_no_message_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let inbox = Inbox::open(&state).unwrap();
    let mut instructions = entry(Uuid::new_v4(), 1);
    instructions.kind = EntryKind::Instructions;
    inbox.add(instructions).unwrap();
    assert!(inbox.states_to_send(true).is_empty());
}

#[test]
fn only_valid_messages_for_this_pc_pass() {
    let key = testing::key();
    let public = testing::public(&key);
    let me = Uuid::new_v4();
    let body = MessageBody {
        id: Uuid::new_v4(),
        issued_at: 100,
        expires_at: 200,
        target: me,
        from: "Alice at Example IT".into(),
        text: "Please restart your PC tonight.".into(),
    };
    let sign = |body: &MessageBody| {
        let mut payload = BytesMut::new();
        body.encode(&mut payload);
        testing::sign(&key, SignDomain::Message, payload.to_vec())
    };
    assert_eq!(verify_message(&public, me, &sign(&body), 150).unwrap(), body);
    assert!(verify_message(&public, me, &sign(&body), 201).unwrap_err().contains("expired"));
    assert!(verify_message(&public, Uuid::new_v4(), &sign(&body), 150).unwrap_err().contains("not this one"));
    let mut tampered = sign(&body);
    let mut payload = tampered.payload.to_vec();
    *payload.last_mut().unwrap() ^= 1;
    tampered.payload = payload.into();
    assert!(verify_message(&public, me, &tampered, 150).unwrap_err().contains("signature"));
    // An action's signature is no message's.
    let mut payload = BytesMut::new();
    body.encode(&mut payload);
    let as_action = testing::sign(&key, SignDomain::Action, payload.to_vec());
    assert!(verify_message(&public, me, &as_action, 150).is_err());
}
