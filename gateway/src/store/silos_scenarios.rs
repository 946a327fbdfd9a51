//! The silos' tables, one scenario per function, written once against the store's public API: run
//! on SQLite by the gateway's unit tests (`silos_tests.rs`) and on SQLite and a real PostgreSQL by
//! `tests/tests/store.rs`, which include this file. The including module provides the names
//! imported below.

use super::{
    choose_silo, EntitlementChange, NewSilo, NewSubscriber, OffsetDateTime, SiloClient, SiloError, Store,
    SubscriberPii, Uuid, DEFAULT_TIER, SERVICE_SUPPORT,
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
