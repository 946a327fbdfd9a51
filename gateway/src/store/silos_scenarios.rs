//! The silos' tables, one scenario per function, written once against the store's public API: run
//! on SQLite by the gateway's unit tests (`silos_tests.rs`) and on SQLite and a real PostgreSQL by
//! `tests/tests/store.rs`, which include this file. The including module provides the names
//! imported below.

use super::{
    authorize, choose_silo, Action, ClientHistory, Denied, EntitlementChange, MoveRecord, NewAgentCert, NewSilo,
    NewSubscriber, OffsetDateTime, Resource, Role, RootGrant, SiloClient, SiloError, Store, StoredAggregates,
    SubscriberPii, TokenScope, Uuid, DEFAULT_TIER, SERVICE_SUPPORT,
};

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time")
}

fn silo(name: &str, capacity: i64, region: Option<&str>) -> NewSilo {
    NewSilo {
        name: name.into(),
        location: format!("{name}.example.net:4433"),
        capacity,
        region: region.map(Into::into),
        oem: None,
        signing_key: Some(hex::encode([7u8; 32])),
        portal_url: None,
        now: t0(),
    }
}

/// A root registers silos, gives machines to them by room and region, and keeps each
/// subscriber's entitlement under one opaque id; a maintenance silo records the clients it admits.
pub async fn a_root_gives_machines_to_silos_and_a_silo_records_its_clients(store: &Store) {
    store.add_silo(&silo("silo-a", 2, Some("eu"))).await.unwrap();
    store.add_silo(&silo("silo-b", 10, Some("us"))).await.unwrap();
    let again = store.add_silo(&silo("silo-a", 5, None)).await.unwrap_err();
    assert!(matches!(again, SiloError::Exists(_)), "{again}");

    let new = NewSubscriber {
        username: "silo-scenario".into(),
        password: None,
        pii: SubscriberPii {
            name: "Scenario Ltd".into(),
            email: "scenario@example.org".into(),
            phone: None,
            billing_note: None,
        },
        max_machines: 10,
        max_contacts: 1,
    };
    let subscriber = store.register_subscriber(&new, t0()).await.unwrap().subscriber_id;
    let first = store.entitlement(subscriber).await.unwrap();
    assert_eq!((first.service.as_str(), first.tier.as_str()), (SERVICE_SUPPORT, DEFAULT_TIER));
    assert!(Uuid::parse_str(&first.opaque_id).is_ok(), "{}", first.opaque_id);
    assert_eq!(store.entitlement(subscriber).await.unwrap().opaque_id, first.opaque_id, "made once");
    assert!(matches!(store.entitlement(subscriber + 1000).await, Err(SiloError::NoSubscriber(_))));

    let until = t0() + time::Duration::days(30);
    let change = EntitlementChange {
        tier: Some("gold".into()),
        valid_until: Some(Some(until)),
        region: Some(Some("eu".into())),
        oem: None,
    };
    let changed = store.change_entitlement(subscriber, &change).await.unwrap();
    assert_eq!(
        (changed.tier.as_str(), changed.valid_until, changed.region.as_deref()),
        ("gold", Some(until), Some("eu"))
    );
    assert_eq!(changed.opaque_id, first.opaque_id);

    // Region eu first, until silo-a is full; then the other.
    let mut given = Vec::new();
    for _ in 0..3 {
        let uuid = Uuid::new_v4();
        let chosen = choose_silo(&store.silos().await.unwrap(), &changed).expect("room");
        store.assign_silo(uuid, &chosen.name, t0()).await.unwrap();
        assert_eq!(store.assigned_silo(uuid).await.unwrap().unwrap().name, chosen.name);
        given.push(chosen.name);
    }
    assert_eq!(given, ["silo-a", "silo-a", "silo-b"]);
    let silos = store.silos().await.unwrap();
    assert_eq!(silos.iter().map(|s| (s.name.as_str(), s.assigned)).collect::<Vec<_>>(), [("silo-a", 2), ("silo-b", 1)]);
    assert_eq!(store.assigned_silo(Uuid::new_v4()).await.unwrap(), None);

    let uuid = Uuid::new_v4();
    let mut client = SiloClient {
        uuid,
        subscriber: first.opaque_id.clone(),
        service: SERVICE_SUPPORT.into(),
        tier: "gold".into(),
        serial: "4a01".into(),
        entitled_until: until,
        first_seen: t0(),
        last_seen: t0(),
        moved_from: None,
    };
    store.silo_client_seen(&client).await.unwrap();
    client.serial = "4a02".into();
    client.last_seen = t0() + time::Duration::hours(1);
    store.silo_client_seen(&client).await.unwrap();
    let clients = store.silo_clients().await.unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(
        (clients[0].serial.as_str(), clients[0].first_seen, clients[0].last_seen),
        ("4a02", t0(), client.last_seen)
    );
}

fn client_of(uuid: Uuid) -> SiloClient {
    SiloClient {
        uuid,
        subscriber: Uuid::new_v4().to_string(),
        service: SERVICE_SUPPORT.into(),
        tier: DEFAULT_TIER.into(),
        serial: "4c01".into(),
        entitled_until: t0() + time::Duration::days(30),
        first_seen: t0(),
        last_seen: t0(),
        moved_from: None,
    }
}

/// A root orders a move (the machine counts for the silo it goes to; only that silo confirms
/// it, once; the old certificate is revoked); the silo left exports the history and forgets the
/// client; the silo it goes to imports it once and reports it.
pub async fn a_root_moves_a_machine_and_the_silos_hand_its_history_over(store: &Store) {
    let t1 = t0() + time::Duration::hours(1);
    store.add_silo(&silo("silo-m1", 5, None)).await.unwrap();
    store.add_silo(&silo("silo-m2", 5, None)).await.unwrap();
    assert_eq!(store.silo_signing_key("silo-m2").await.unwrap(), Some(hex::encode([7u8; 32])));
    let uuid = Uuid::new_v4();
    store.assign_silo(uuid, "silo-m1", t0()).await.unwrap();
    let cert = NewAgentCert {
        serial: "4b01".into(),
        uuid,
        fingerprint: "AA".into(),
        issued_at: t0(),
        expires_at: t1,
        spki: Some("30aa".into()),
    };
    store.add_agent_cert(&cert).await.unwrap();
    assert_eq!(store.agent_key(uuid).await.unwrap(), Some(("4b01".into(), "30aa".into())));
    let record = MoveRecord {
        id: "move-1".into(),
        uuid,
        from_silo: "silo-m1".into(),
        to_silo: "silo-m2".into(),
        old_serial: Some("4b01".into()),
        serial: "4b02".into(),
        certificate: "Y2VydA==".into(),
        order_payload: "b3JkZXI=".into(),
        order_signature: "00".into(),
        created_at: t0(),
        confirmed_at: None,
    };
    store.put_move(&record).await.unwrap();
    assert_eq!(store.assigned_silo(uuid).await.unwrap().unwrap().name, "silo-m2");
    assert_eq!(store.moves_from("silo-m1", t0()).await.unwrap(), vec![record.clone()]);
    assert!(store.moves_from("silo-m2", t0()).await.unwrap().is_empty());
    assert_eq!(store.move_of(uuid).await.unwrap(), Some(record));
    assert_eq!(store.confirm_move("move-1", "silo-m1", t1).await.unwrap(), None, "only the silo it goes to");
    let done = store.confirm_move("move-1", "silo-m2", t1).await.unwrap().expect("confirmed");
    assert_eq!(done.confirmed_at, Some(t1));
    assert_eq!(store.confirm_move("move-1", "silo-m2", t1).await.unwrap(), None, "once");
    assert_eq!(store.moves_from("silo-m1", t1).await.unwrap().len(), 1, "listed a while after");
    assert!(store.moves_from("silo-m1", t1 + time::Duration::seconds(1)).await.unwrap().is_empty());
    // Confirmed with the old certificate revoked.
    assert_eq!(store.agent_key(uuid).await.unwrap(), None, "no standing certificate left");

    // The silo left: the client's history, then forgetting it.
    let client = Uuid::new_v4();
    store.silo_client_seen(&client_of(client)).await.unwrap();
    store.insert_report(client, 1, t0(), t0(), "cmVwb3J0").await.unwrap();
    store.insert_report(client, 2, t1, t1, "cmVwb3J0Mg==").await.unwrap();
    store.set_health(client, None, "yellow", "[]", true, t0()).await.unwrap();
    let history = store.client_history(client, 10, 10).await.unwrap();
    assert_eq!(history.reports.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2], "oldest first");
    assert_eq!(history.changes.len(), 1);
    assert_eq!(history.health.as_ref().map(|h| h.health.as_str()), Some("yellow"));
    assert_eq!(store.client_history(client, 1, 10).await.unwrap().reports[0].seq, 2, "the newest");
    assert!(store.forget_client(client).await.unwrap());
    assert!(!store.forget_client(client).await.unwrap());
    let gone = store.client_history(client, 10, 10).await.unwrap();
    assert!(gone.reports.is_empty() && gone.changes.is_empty() && gone.health.is_none());

    // The silo it goes to: imported once, reported once.
    store.silo_client_seen(&client_of(client)).await.unwrap();
    assert!(store.import_client(&history, client, "silo-m1", "move-2").await.unwrap());
    assert!(!store.import_client(&history, client, "silo-m1", "move-2").await.unwrap(), "once");
    let back = store.client_history(client, 10, 10).await.unwrap();
    assert_eq!(back.reports, history.reports);
    assert_eq!(back.health, history.health);
    let change = |h: &ClientHistory| h.changes.iter().map(|c| (c.at, c.health.clone())).collect::<Vec<_>>();
    assert_eq!(change(&back), change(&history));
    assert_eq!(store.unreported_moves().await.unwrap(), vec![(client, "move-2".to_string())]);
    store.move_reported("move-2", t1).await.unwrap();
    assert!(store.unreported_moves().await.unwrap().is_empty());
    let clients = store.silo_clients().await.unwrap();
    let moved = clients.iter().find(|c| c.uuid == client).unwrap();
    assert_eq!(moved.moved_from.as_deref(), Some("silo-m1"));

    // What the silo counts, and the root keeping each silo's newest aggregates.
    let tally = store.silo_tally(t0()).await.unwrap();
    let counted = tally.clients.iter().find(|c| c.health.as_deref() == Some("yellow")).expect("the client, rated");
    assert_eq!((counted.tier.as_str(), counted.connected), (DEFAULT_TIER, false));
    assert_eq!((tally.alerts, tally.actions), (0, 0));
    let kept = StoredAggregates { silo: "silo-m1".into(), issued_at: t1, received_at: t1, payload: "{}".into() };
    assert!(store.put_silo_aggregates(&kept).await.unwrap());
    let older = StoredAggregates { issued_at: t0(), payload: "{\"old\":1}".into(), ..kept.clone() };
    assert!(!store.put_silo_aggregates(&older).await.unwrap(), "older ones are ignored");
    assert_eq!(store.silo_aggregates().await.unwrap(), vec![kept]);
}

/// A person the root sends to a maintenance silo is a user there under its opaque id (no name),
/// related to the subscribers the assertion granted: it sees their clients and no other, until
/// the next arrival grants otherwise; an operator sees every client. Each nonce is taken once.
/// On the root, a user's opaque id is made once.
pub async fn a_person_the_root_sent_sees_the_clients_of_the_subscribers_it_was_granted(store: &Store) {
    let (mine, theirs) = (Uuid::new_v4(), Uuid::new_v4());
    for (uuid, subscriber) in [(mine, "opaque-mine"), (theirs, "opaque-theirs")] {
        let client = SiloClient { subscriber: subscriber.into(), ..client_of(uuid) };
        store.silo_client_seen(&client).await.unwrap();
    }
    let grants = [
        RootGrant { subscriber: "opaque-mine".into(), owner: true, active: true },
        RootGrant { subscriber: "opaque-not-here-yet".into(), owner: false, active: false },
    ];
    let user = store.root_visitor("subject-1", Role::User, &grants, t0()).await.unwrap();
    assert_eq!(store.root_visitor("subject-1", Role::User, &grants, t0()).await.unwrap(), user, "one user");
    let record = store.user(user).await.unwrap().unwrap();
    assert_eq!((record.username.as_str(), record.email.as_deref()), ("root:subject-1", None), "no name");
    let principal = store.principal(user, TokenScope::Attach).await.unwrap().unwrap();
    let relations = store.relations(user).await.unwrap();
    assert_eq!(relations.owns.len(), 1, "{relations:?}");
    assert!(relations.owns[0].subscription_active);
    assert_eq!(relations.contact_of.len(), 1, "{relations:?}");
    assert!(!relations.contact_of[0].subscription_active);

    let seen = store.visible_machines(&principal, None, 100).await.unwrap();
    assert_eq!(seen.iter().map(|m| m.uuid).collect::<Vec<_>>(), [mine]);
    let machine = store.machine(mine).await.unwrap().unwrap();
    assert_eq!(machine.subscriber_id, relations.owns[0].subscriber_id);
    let resource = |uuid, subscriber_id| Resource::Machine { uuid, subscriber_id: Some(subscriber_id) };
    authorize(&principal, &relations, Action::ViewMachine, resource(mine, machine.subscriber_id)).unwrap();
    let other = store.machine(theirs).await.unwrap().unwrap();
    let denied = authorize(&principal, &relations, Action::ViewMachine, resource(theirs, other.subscriber_id));
    assert_eq!(denied, Err(Denied::NotRelated));

    // The root grants nothing at the next arrival: nothing is seen.
    store.root_visitor("subject-1", Role::User, &[], t0()).await.unwrap();
    assert!(store.visible_machines(&principal, None, 100).await.unwrap().is_empty());
    // An operator of the root sees every client.
    let operator = store.root_visitor("subject-2", Role::Operator, &[], t0()).await.unwrap();
    let operator = store.principal(operator, TokenScope::Attach).await.unwrap().unwrap();
    assert_eq!(operator.role, Role::Operator);
    let all = store.visible_machines(&operator, None, 100).await.unwrap();
    assert!(all.iter().any(|m| m.uuid == mine) && all.iter().any(|m| m.uuid == theirs), "{all:?}");

    let ends = t0() + time::Duration::seconds(60);
    assert!(store.spend_signin_nonce("nonce-1", ends, t0()).await.unwrap());
    assert!(!store.spend_signin_nonce("nonce-1", ends, t0()).await.unwrap(), "once");
    let later = ends + time::Duration::seconds(1);
    assert!(
        store.spend_signin_nonce("nonce-1", later + time::Duration::seconds(60), later).await.unwrap(),
        "forgotten"
    );

    // The root's side: the built-in operator's opaque id, made once.
    let made = store.user_opaque_id(1).await.unwrap().expect("user 1 is the built-in operator");
    assert_eq!(made.len(), 32, "{made}");
    assert_eq!(store.user_opaque_id(1).await.unwrap(), Some(made));
}
