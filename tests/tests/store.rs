//! The store, on both databases: every behaviour the gateway relies on, run once against SQLite
//! (a file in a temp dir) and once against a real PostgreSQL (a throwaway cluster started by the
//! test, one database per test). Device records are written the way the gateway writes them,
//! through the journal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::postgres::Postgres;
use tether_gateway::auth::verify_password;
use tether_gateway::journal::{DeviceEvent, Journal, LiveState, LiveView};
use tether_gateway::policy::{authorize, Action, Denied, Resource, Role};
use tether_gateway::store::{
    choose_silo, ClientHistory, EntitlementChange, MoveRecord, NewAgentCert, NewSilo, RootGrant, SiloClient, SiloError,
    StoredAggregates, DEFAULT_TIER, SERVICE_SUPPORT,
};
use tether_gateway::store::{
    Acceptance, AccountError, ActionOutcome, AuditAction, ContactState, DevicePage, InstanceRegistration, Location,
    MailState, Migrate, NewAudit, NewMail, NewSubscriber, NewSupportAction, NewSupportMessage, PoolOptions,
    RegisterError, Store, StoreError, SubscriberPii, SubscriptionStatus, TokenScope,
};
use time::OffsetDateTime;
use uuid::Uuid;

/// The accounts' life cycle, written once with the gateway's unit tests (which run it on
/// SQLite only).
#[path = "../../gateway/src/store/accounts_scenarios.rs"]
mod accounts_scenarios;

/// The mail outbox's life cycle, likewise.
#[path = "../../gateway/src/store/outbox_scenarios.rs"]
mod outbox_scenarios;

/// Support actions and messages, likewise.
#[path = "../../gateway/src/store/support_scenarios.rs"]
mod support_scenarios;

/// The silos' tables, likewise.
#[path = "../../gateway/src/store/silos_scenarios.rs"]
mod silos_scenarios;

/// One cluster for the whole file; each test gets its own database in it.
fn cluster() -> &'static Postgres {
    static CLUSTER: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| Postgres::start().expect("a PostgreSQL cluster (run scripts/install-test-deps.sh)"))
}

/// Both stores for one test: SQLite in `dir`, PostgreSQL in a new database named after the test.
async fn both(name: &str) -> (tempfile::TempDir, Vec<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Location::Sqlite(dir.path().join("tether.db"));
    let url = cluster().create_database(name).expect("a database");
    let postgres = Location::resolve(Some(&url), dir.path()).unwrap();
    let mut stores = Vec::new();
    for location in [sqlite, postgres] {
        stores.push(Store::open(&location, Migrate::Yes, PoolOptions::default()).await.unwrap());
    }
    (dir, stores)
}

#[derive(Default)]
struct Live(Mutex<HashMap<Uuid, LiveState>>);

impl LiveView for Live {
    fn live_state(&self, uuid: Uuid) -> Option<LiveState> {
        self.0.lock().unwrap().get(&uuid).cloned()
    }
}

/// Writes `events` as gateway `instance` does (through the journal), and waits until they are
/// in the store.
async fn write(store: &Store, instance: &str, events: Vec<DeviceEvent>) {
    let errors = tether_gateway::metrics::Metrics::new().store_errors_of(tether_gateway::metrics::StoreTask::Journal);
    let (journal, task) = Journal::start(store.clone(), Arc::new(Live::default()), 1000, instance.to_string(), errors);
    for event in events {
        assert!(journal.record(event));
    }
    drop(journal);
    task.await.unwrap();
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn a_device_life_cycle_is_recorded_by_the_gateway_that_holds_it() {
    let (_dir, stores) = both("life_cycle").await;
    for store in stores {
        let kind = if store.is_postgres() { "postgres" } else { "sqlite" };
        let uuid = Uuid::new_v4();
        let remote = addr("198.18.0.2:40000");
        let t0 = OffsetDateTime::now_utc();
        write(
            &store,
            "gw-a",
            vec![
                DeviceEvent::Hello { uuid, at: t0, remote },
                DeviceEvent::Connected { uuid, at: t0, remote },
                DeviceEvent::Ports { uuid, ports: vec![16993, 16992, 16992] },
            ],
        )
        .await;
        let d = store.device(uuid).await.unwrap().unwrap();
        assert_eq!(d.ports, vec![16992, 16993], "{kind}");
        assert!(d.connected_since.is_some() && d.last_hello.is_some() && d.first_seen.is_some(), "{kind}");
        assert_eq!((d.remote_addr.as_deref(), d.instance.as_deref()), (Some("198.18.0.2:40000"), Some("gw-a")));
        assert_eq!(store.holder(uuid).await.unwrap().as_deref(), Some("gw-a"), "{kind}");
        assert!(!d.registered, "{kind}");

        // The device moves to gateway B; A's late disconnect must not end B's record.
        let t1 = t0 + time::Duration::seconds(5);
        write(&store, "gw-b", vec![DeviceEvent::Connected { uuid, at: t1, remote: addr("198.18.0.3:1") }]).await;
        write(&store, "gw-a", vec![DeviceEvent::Disconnected { uuid, at: t1, reason: "replaced".into() }]).await;
        let d = store.device(uuid).await.unwrap().unwrap();
        assert!(d.connected_since.is_some(), "{kind}: A's disconnect ended B's tunnel record");
        assert_eq!(d.instance.as_deref(), Some("gw-b"), "{kind}");
        write(&store, "gw-b", vec![DeviceEvent::Disconnected { uuid, at: t1, reason: "idle".into() }]).await;
        let d = store.device(uuid).await.unwrap().unwrap();
        assert_eq!((d.connected_since, d.last_disconnect_reason.as_deref()), (None, Some("idle")), "{kind}");
        assert_eq!(store.holder(uuid).await.unwrap(), None, "{kind}");

        // A restart of A marks only A's tunnels.
        let other = Uuid::new_v4();
        write(&store, "gw-a", vec![DeviceEvent::Connected { uuid: other, at: t1, remote }]).await;
        write(&store, "gw-b", vec![DeviceEvent::Connected { uuid, at: t1, remote }]).await;
        assert_eq!(store.mark_instance_disconnected("gw-a", t1, "gateway restarted", false).await.unwrap(), 1);
        assert!(store.device(uuid).await.unwrap().unwrap().connected_since.is_some(), "{kind}");

        let claimant = addr("198.18.0.9:9");
        let conflicts =
            (0..2).map(|_| DeviceEvent::Conflict { uuid, at: t1, live: "198.18.0.3:1".into(), claimant }).collect();
        write(&store, "gw-a", conflicts).await;
        let d = store.device(uuid).await.unwrap().unwrap();
        assert_eq!(d.conflict_count, 2, "{kind}");
        let note = d.conflict_note.unwrap();
        assert!(note.contains("198.18.0.3:1") && note.contains("198.18.0.9:9"), "{kind}: {note}");
    }
}

#[tokio::test]
async fn times_round_trip_to_the_millisecond_and_serialize_as_rfc3339() {
    let (_dir, stores) = both("times").await;
    for store in stores {
        let uuid = Uuid::new_v4();
        // 2024-05-06T07:08:09.123456Z
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_714_979_289_123_456_000).unwrap();
        write(&store, "gw-a", vec![DeviceEvent::Hello { uuid, at, remote: addr("[2001:db8::1]:4433") }]).await;
        let record = store.device(uuid).await.unwrap().unwrap();
        assert_eq!(record.last_hello, OffsetDateTime::from_unix_timestamp_nanos(1_714_979_289_123_000_000).ok());
        assert_eq!(record.first_seen, record.last_hello);
        assert_eq!(record.remote_addr.as_deref(), Some("[2001:db8::1]:4433"));
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["last_hello"], "2024-05-06T07:08:09.123Z");
        assert!(json["connected_since"].is_null());
        // A later hello keeps first_seen.
        let later = at + time::Duration::hours(1);
        write(&store, "gw-a", vec![DeviceEvent::Hello { uuid, at: later, remote: addr("198.18.0.1:1") }]).await;
        assert_eq!(store.device(uuid).await.unwrap().unwrap().first_seen, record.first_seen);
    }
}

#[tokio::test]
async fn devices_are_listed_in_pages_in_uuid_order() {
    let (_dir, stores) = both("pages").await;
    let mut uuids: Vec<Uuid> = (0..25).map(|_| Uuid::new_v4()).collect();
    for store in stores {
        let now = OffsetDateTime::now_utc();
        let hellos = uuids.iter().map(|&uuid| DeviceEvent::Hello { uuid, at: now, remote: addr("198.18.0.1:1") });
        write(&store, "gw-a", hellos.collect()).await;
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_devices(DevicePage { after, limit: 10 }).await.unwrap();
            listed.extend(page.iter().map(|d| d.uuid));
            if page.len() < 10 {
                break;
            }
            after = page.last().map(|d| d.uuid);
        }
        uuids.sort();
        assert_eq!(listed, uuids);
    }
}

#[tokio::test]
async fn accounts_devices_and_pins() {
    let (_dir, stores) = both("accounts").await;
    for store in stores {
        assert!(store.mps_accounts().await.unwrap().is_empty());
        assert!(store.add_mps_account_if_absent("admin", "h0").await.unwrap());
        assert!(!store.add_mps_account_if_absent("admin", "hx").await.unwrap());
        store.set_mps_account("other", "h2").await.unwrap();
        store.set_mps_account("admin", "h3").await.unwrap();
        assert_eq!(store.mps_accounts().await.unwrap(), ["admin", "other"]);
        assert_eq!(store.mps_account_hash("admin").await.unwrap().as_deref(), Some("h3"));
        assert!(store.remove_mps_account("other").await.unwrap() && !store.remove_mps_account("other").await.unwrap());
        assert_eq!(store.mps_account_hash("other").await.unwrap(), None);

        let uuid = Uuid::new_v4();
        assert_eq!(store.device_auth(uuid).await.unwrap(), None);
        // The first pin holds; a later one does not replace it.
        assert_eq!(store.pin_device(uuid, "account:admin").await.unwrap(), "account:admin");
        assert_eq!(store.pin_device(uuid, "account:other").await.unwrap(), "account:admin");
        assert!(!store.device_auth(uuid).await.unwrap().unwrap().registered);
        // An operator's device password re-pins the device to it; clearing it keeps the pin.
        store.add_device(uuid, Some("$argon2id$secret-hash")).await.unwrap();
        let auth = store.device_auth(uuid).await.unwrap().unwrap();
        assert!(auth.registered);
        assert_eq!(
            (auth.password_hash.as_deref(), auth.pinned.as_deref()),
            (Some("$argon2id$secret-hash"), Some("device"))
        );
        let record = store.device(uuid).await.unwrap().unwrap();
        assert!(record.has_password);
        let json = serde_json::to_string(&store.list_devices(DevicePage::default()).await.unwrap()).unwrap();
        assert!(!json.contains("secret-hash"), "{json}");
        store.add_device(uuid, None).await.unwrap();
        let auth = store.device_auth(uuid).await.unwrap().unwrap();
        assert_eq!((auth.password_hash, auth.pinned.as_deref()), (None, Some("device")));
        assert!(!store.device(uuid).await.unwrap().unwrap().has_password);
        assert!(store.remove_device(uuid).await.unwrap() && !store.remove_device(uuid).await.unwrap());

        let many: Vec<(Uuid, Option<String>)> = (0..2500).map(|i| (Uuid::new_v4(), Some(format!("h{i}")))).collect();
        let mut seen = Vec::new();
        store.add_devices(&many, |n| seen.push(n)).await.unwrap();
        assert_eq!(seen, [1000, 2000, 2500]);
        let auth = store.device_auth(many[2499].0).await.unwrap().unwrap();
        assert_eq!(auth.password_hash.as_deref(), Some("h2499"));
    }
}

#[tokio::test]
async fn tokens_have_scopes_expiry_can_be_revoked_and_ids_are_never_reused() {
    let (_dir, stores) = both("tokens").await;
    for store in stores {
        let now = OffsetDateTime::now_utc();
        let alice = store.create_token("alice", "ha", TokenScope::Attach, None).await.unwrap();
        let bob =
            store.create_token("bob", "hb", TokenScope::Read, Some(now + time::Duration::hours(1))).await.unwrap();
        let old =
            store.create_token("old", "ho", TokenScope::Read, Some(now - time::Duration::hours(1))).await.unwrap();
        let again = store.create_token("alice", "x", TokenScope::Read, None).await;
        assert!(matches!(again, Err(StoreError::TokenExists(_))), "{again:?}");
        let b = store.token_by_hash("hb").await.unwrap().unwrap();
        assert_eq!((b.id, b.scope), (bob, TokenScope::Read));
        assert!(!b.is_expired(now) && b.is_expired(now + time::Duration::hours(2)));
        assert!(store.token_by_hash("ho").await.unwrap().unwrap().is_expired(now));
        assert_eq!(store.live_token_ids(now).await.unwrap(), [alice, bob].into_iter().collect());
        assert!(store.revoke_token("alice").await.unwrap() && !store.revoke_token("alice").await.unwrap());
        assert_eq!(store.token_by_hash("ha").await.unwrap(), None);
        assert!(!store.live_token_ids(now).await.unwrap().contains(&old));
        // The name is free again, but never the id: the revoked token's relays are found by it.
        let second = store.create_token("alice", "ha2", TokenScope::Attach, None).await.unwrap();
        assert!(second > old, "a new token reused id {second}");
        store.revoke_token("alice").await.unwrap();
        let third = store.create_token("alice", "ha3", TokenScope::Attach, None).await.unwrap();
        assert!(third > second, "a new token reused id {third}");
        assert_eq!(store.list_tokens().await.unwrap().len(), 3);
        let local = store.create_or_replace_token("local-operator-gw-a", "l1").await.unwrap();
        assert_eq!(store.create_or_replace_token("local-operator-gw-a", "l2").await.unwrap(), local);
        assert_eq!(store.token_by_hash("l1").await.unwrap(), None);
        assert_eq!(store.token_by_hash("l2").await.unwrap().unwrap().scope, TokenScope::Attach);
    }
}

#[tokio::test]
async fn a_dead_gateways_tunnels_are_reaped_and_live_ones_are_not() {
    let (_dir, stores) = both("instances").await;
    let fresh = Duration::from_secs(10);
    for store in stores {
        let registration = |id: &str, run: &str| InstanceRegistration {
            id: id.into(),
            api_addr: Some(format!("{id}.example:8443")),
            internal_addr: Some(format!("{id}.example:8444")),
            version: "0.1.0".into(),
            run_id: run.into(),
        };
        for id in ["gw-a", "gw-b"] {
            store.register_instance(&registration(id, "run-1"), fresh).await.unwrap();
        }
        // Another process under a live instance's id is refused; the same run may re-register.
        let err = store.register_instance(&registration("gw-a", "run-2"), fresh).await.unwrap_err();
        assert!(matches!(err, RegisterError::InUse { .. }) && err.to_string().contains("gw-a"), "{err}");
        store.register_instance(&registration("gw-a", "run-1"), fresh).await.unwrap();
        assert!(!store.heartbeat("gw-a", "run-2").await.unwrap(), "a heartbeat of another run");

        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let remote = addr("198.18.0.1:1");
        let t0 = OffsetDateTime::now_utc();
        write(&store, "gw-a", vec![DeviceEvent::Connected { uuid: a, at: t0, remote }]).await;
        write(&store, "gw-b", vec![DeviceEvent::Connected { uuid: b, at: t0, remote }]).await;
        let listed = store.instances().await.unwrap();
        assert_eq!(listed.iter().map(|i| (i.id.as_str(), i.tunnels)).collect::<Vec<_>>(), [("gw-a", 1), ("gw-b", 1)]);
        assert!(listed.iter().all(|i| i.is_alive(fresh)), "{listed:?}");

        // Within the bound nothing is reaped; B's heartbeat then ages past a short bound while A
        // beats on: A reaps B's tunnel, never its own.
        assert_eq!(store.reap_stale_instances("gw-a", fresh).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.heartbeat("gw-a", "run-1").await.unwrap());
        let short = Duration::from_millis(200);
        assert_eq!(store.reap_stale_instances("gw-a", short).await.unwrap(), 1);
        assert_eq!(store.reap_stale_instances("gw-a", short).await.unwrap(), 0);
        let rb = store.device(b).await.unwrap().unwrap();
        assert!(rb.connected_since.is_none());
        assert!(rb.last_disconnect_reason.unwrap().contains("gw-b"));
        assert!(store.device(a).await.unwrap().unwrap().connected_since.is_some());
        let gw_b = store.instance("gw-b").await.unwrap().unwrap();
        assert!(!gw_b.is_alive(short) && gw_b.tunnels == 0 && gw_b.heartbeat_age_ms >= 300, "{gw_b:?}");
        assert!(store.instance("gw-a").await.unwrap().unwrap().is_alive(short));
        // A clean stop: not alive, and another run may take the id at once.
        store.instance_stopped("gw-a", "run-1").await.unwrap();
        assert!(!store.instance("gw-a").await.unwrap().unwrap().is_alive(fresh));
        store.register_instance(&registration("gw-a", "run-3"), fresh).await.unwrap();
        assert!(store.remove_instance("gw-b").await.unwrap());
        assert_eq!(store.instances().await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn the_schema_is_current_and_migrating_again_or_concurrently_changes_nothing() {
    let (dir, stores) = both("migrations").await;
    for store in &stores {
        let (found, known) = store.schema_version().await.unwrap();
        assert_eq!(found, known);
        assert_eq!(store.migrate().await.unwrap(), 0);
        let report = store.check().await.unwrap();
        assert_eq!((report.schema_version, report.integrity.starts_with("ok")), (known, true), "{report:?}");
    }
    // Several gateways starting at once on a new PostgreSQL database: one migrates.
    let url = cluster().create_database("migrations_race").unwrap();
    let location = Location::resolve(Some(&url), dir.path()).unwrap();
    let opens = (0..4).map(|_| {
        let location = location.clone();
        tokio::spawn(async move { Store::open(&location, Migrate::Yes, PoolOptions::default()).await })
    });
    for open in opens {
        open.await.unwrap().unwrap();
    }
    let store = Store::open(&location, Migrate::No, PoolOptions::default()).await.unwrap();
    assert_eq!(store.check().await.unwrap().devices, 0);
}

#[tokio::test]
async fn a_wrong_url_is_an_error_that_says_what_to_check_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let location = Location::resolve(Some("postgres://tether:s3cret@127.0.0.1:1/none"), dir.path()).unwrap();
    let err = Store::open(
        &location,
        Migrate::Yes,
        PoolOptions { acquire_timeout: std::time::Duration::from_secs(2), ..PoolOptions::default() },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("127.0.0.1:1") && !err.contains("s3cret") && err.contains("URL"), "{err}");
    let err = Location::resolve(Some("mysql://x"), dir.path()).unwrap_err().to_string();
    assert!(err.contains("postgres://"), "{err}");
}

#[tokio::test]
async fn redirection_sessions_are_recorded_ended_once_and_listed_newest_first() {
    use tether_gateway::store::{NewRedirection, RedirOutcome, RedirectionEnd};
    let (_dir, stores) = both("redirections").await;
    for store in stores {
        let kind = if store.is_postgres() { "postgres" } else { "sqlite" };
        let uuid = Uuid::new_v4();
        let t0 = OffsetDateTime::now_utc() - time::Duration::seconds(60);
        let new = |technician: &str, instance: &str, at: OffsetDateTime| NewRedirection {
            uuid,
            kind: "sol",
            technician: technician.to_string(),
            device_user: None,
            port: 16994,
            instance: instance.to_string(),
            started_at: at,
            outcome: RedirOutcome::Active,
        };
        let alice = store.start_redirection(&new("alice", "gw-a", t0)).await.unwrap();
        let bob = store.start_redirection(&new("bob", "gw-a", t0 + time::Duration::seconds(5))).await.unwrap();
        let carol = store.start_redirection(&new("carol", "gw-b", t0 + time::Duration::seconds(6))).await.unwrap();
        store.set_redirection_user(alice, "admin").await.unwrap();
        let end = |secs, outcome| RedirectionEnd {
            ended_at: t0 + time::Duration::seconds(secs),
            outcome,
            bytes_to_device: 8,
            bytes_from_device: 13,
        };
        store.end_redirection(bob, &end(6, RedirOutcome::RefusedInUse)).await.unwrap();
        store.end_redirection(bob, &end(30, RedirOutcome::Closed)).await.unwrap();
        let rows = store.redirections_for(uuid, false, 10).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [carol, bob, alice], "{kind}");
        assert_eq!(
            (rows[1].outcome.as_str(), rows[1].duration_ms, rows[1].bytes_to_device),
            ("refused_in_use", 1000, 8)
        );
        let active = store.redirections_for(uuid, true, 10).await.unwrap();
        assert_eq!(active.iter().map(|r| r.id).collect::<Vec<_>>(), [carol, alice], "{kind}");
        assert_eq!(active[1].device_user.as_deref(), Some("admin"), "{kind}");
        let view = serde_json::to_value(&active[1]).unwrap();
        assert!(view["started_at"].is_string() && view["ended_at"].is_null() && view.get("transcript").is_none());
        assert_eq!(store.end_instance_redirections("gw-a", OffsetDateTime::now_utc()).await.unwrap(), 1, "{kind}");
        let active = store.redirections_for(uuid, true, 10).await.unwrap();
        assert_eq!(active.iter().map(|r| r.id).collect::<Vec<_>>(), [carol], "{kind}");
    }
}

#[tokio::test]
async fn the_open_redirection_sessions_of_a_stopped_gateway_are_ended_by_another() {
    use tether_gateway::store::{NewRedirection, RedirOutcome};
    let (_dir, stores) = both("redirections_reaped").await;
    let stale = Duration::from_secs(10);
    for store in stores {
        let kind = if store.is_postgres() { "postgres" } else { "sqlite" };
        for id in ["gw-a", "gw-b"] {
            let me = InstanceRegistration {
                id: id.to_string(),
                api_addr: None,
                internal_addr: None,
                version: "test".to_string(),
                run_id: format!("run-{id}"),
            };
            store.register_instance(&me, stale).await.unwrap();
        }
        let uuid = Uuid::new_v4();
        for instance in ["gw-a", "gw-b"] {
            let row = NewRedirection {
                uuid,
                kind: "sol",
                technician: "alice".to_string(),
                device_user: None,
                port: 16994,
                instance: instance.to_string(),
                started_at: OffsetDateTime::now_utc(),
                outcome: RedirOutcome::Active,
            };
            store.start_redirection(&row).await.unwrap();
        }
        assert_eq!(store.end_stale_instance_redirections("gw-a", stale).await.unwrap(), 0, "{kind}");
        store.instance_stopped("gw-b", "run-gw-b").await.unwrap();
        assert_eq!(store.end_stale_instance_redirections("gw-a", stale).await.unwrap(), 1, "{kind}");
        let open: Vec<String> =
            store.redirections_for(uuid, true, 10).await.unwrap().into_iter().map(|r| r.instance).collect();
        assert_eq!(open, ["gw-a"], "{kind}");
    }
}

#[tokio::test]
async fn remote_fix_actions_amt_access_and_closed_sessions_are_kept() {
    use tether_gateway::store::{ClosedSession, NewAction, RescueRecord};
    let (_dir, stores) = both("remote_fix").await;
    for store in &stores {
        let kind = if store.is_postgres() { "postgres" } else { "sqlite" };
        let (uuid, other) = (Uuid::new_v4(), Uuid::new_v4());
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        for (i, (action, outcome)) in
            [("rescue.start", "ok"), ("power.off", "refused"), ("rescue.finish", "ok")].into_iter().enumerate()
        {
            let new = NewAction {
                uuid,
                at: at + time::Duration::seconds(i as i64),
                token_id: Some(7),
                technician: "alice".into(),
                action: action.into(),
                detail: format!("step {i}"),
                outcome: outcome.into(),
                message: (outcome == "refused").then(|| "ReturnValue 2".to_string()),
                instance: "gw-a".into(),
            };
            assert!(store.record_action(&new).await.unwrap() > 0, "{kind}");
        }
        let actions = store.actions_for(uuid, 2).await.unwrap();
        let names: Vec<&str> = actions.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(names, ["rescue.finish", "power.off"], "{kind}: newest first, limited");
        assert_eq!(actions[1].message.as_deref(), Some("ReturnValue 2"), "{kind}");
        assert_eq!((actions[1].token_id, actions[1].at), (Some(7), at + time::Duration::seconds(1)), "{kind}");
        assert!(store.actions_for(other, 10).await.unwrap().is_empty(), "{kind}");

        // AMT access: an account and a pin, set and cleared independently.
        assert_eq!(store.amt_access(uuid).await.unwrap(), Default::default(), "{kind}");
        store.remember_amt_account(uuid, Some(("admin", "c2VhbGVk")), at).await.unwrap();
        store.set_amt_tls_pin(uuid, Some("AA:BB"), at).await.unwrap();
        let access = store.amt_access(uuid).await.unwrap();
        assert_eq!(
            (access.user.as_deref(), access.sealed_password.as_deref(), access.tls_pin.as_deref()),
            (Some("admin"), Some("c2VhbGVk"), Some("AA:BB")),
            "{kind}"
        );
        store.remember_amt_account(uuid, None, at).await.unwrap();
        let access = store.amt_access(uuid).await.unwrap();
        assert_eq!((access.user, access.tls_pin.as_deref()), (None, Some("AA:BB")), "{kind}");

        // A rescue's findings: the first one stays until cleared (unless replaced on purpose).
        let first = RescueRecord { found: "{\"a\":1}".into(), by: "alice".into(), at };
        let second = RescueRecord { found: "{\"b\":2}".into(), by: "bob".into(), at };
        assert!(store.save_rescue(uuid, &first, false).await.unwrap(), "{kind}");
        assert!(!store.save_rescue(uuid, &second, false).await.unwrap(), "{kind}");
        assert_eq!(store.rescue(uuid).await.unwrap().unwrap().found, "{\"a\":1}", "{kind}");
        store.clear_rescue(uuid).await.unwrap();
        assert_eq!(store.rescue(uuid).await.unwrap(), None, "{kind}");
        assert!(store.save_rescue(uuid, &second, false).await.unwrap(), "{kind}");

        // Closing and opening the session.
        assert_eq!(store.closed_session(uuid).await.unwrap(), None, "{kind}");
        let closed = ClosedSession { at, by: "alice".into(), message: Some("fixed".into()) };
        store.close_session(uuid, &closed).await.unwrap();
        assert_eq!(store.closed_session(uuid).await.unwrap(), Some(closed), "{kind}");
        assert_eq!(store.rescue(uuid).await.unwrap().unwrap().by, "bob", "{kind}: closing keeps the rescue");
        assert!(store.open_session(uuid).await.unwrap(), "{kind}");
        assert!(!store.open_session(uuid).await.unwrap(), "{kind}");
        assert_eq!(store.closed_session(uuid).await.unwrap(), None, "{kind}");
    }
}

#[tokio::test]
async fn lan_hosts_keep_their_first_sighting_and_adoptions_are_unique_per_uuid_and_address() {
    use tether_gateway::store::{LanAdoption, LanHost};
    let (_dir, stores) = both("lan").await;
    for store in &stores {
        let kind = if store.is_postgres() { "postgres" } else { "sqlite" };
        let first = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let later = first + time::Duration::minutes(5);
        let host = |instance: &str, mac: &str, ip: &str, amt: bool, seen: OffsetDateTime| LanHost {
            instance: instance.into(),
            mac: mac.into(),
            ip: ip.into(),
            interface: "lan0".into(),
            amt,
            amt_version: amt.then(|| "16.1.27".to_string()),
            provisioning: amt.then(|| "provisioned".to_string()),
            amt_ports: if amt { vec![623, 16993] } else { Vec::new() },
            first_seen: seen,
            last_seen: seen,
        };
        store
            .save_lan_hosts(&[
                host("gw-a", "02:00:00:00:00:11", "198.18.5.11", true, first),
                host("gw-a", "02:00:00:00:00:09", "198.18.5.9", false, first),
                host("gw-b", "02:00:00:00:00:11", "10.0.0.11", true, first),
            ])
            .await
            .unwrap();
        // Seen again at a new address: the first sighting stays, the rest is this scan's.
        store.save_lan_hosts(&[host("gw-a", "02:00:00:00:00:11", "198.18.5.12", true, later)]).await.unwrap();
        let hosts = store.lan_hosts(Some("gw-a")).await.unwrap();
        assert_eq!(hosts.len(), 2, "{kind}: {hosts:?}");
        let pc = hosts.iter().find(|h| h.mac == "02:00:00:00:00:11").unwrap();
        assert_eq!((pc.ip.as_str(), pc.first_seen, pc.last_seen), ("198.18.5.12", first, later), "{kind}");
        assert_eq!(pc.amt_ports, vec![623, 16993], "{kind}");
        assert_eq!(store.lan_hosts(None).await.unwrap().len(), 3, "{kind}: every gateway's LAN");
        let by_ip = store.lan_host_by_ip("gw-a", "198.18.5.9").await.unwrap().unwrap();
        assert!(!by_ip.amt && by_ip.amt_version.is_none(), "{kind}");

        let (uuid, other) = (Uuid::new_v4(), Uuid::new_v4());
        let adoption = |uuid: Uuid, ip: &str| LanAdoption {
            uuid,
            instance: "gw-a".into(),
            ip: ip.into(),
            mac: Some("02:00:00:00:00:11".into()),
            tls_pin: Some("AA:BB".into()),
            plain_ports: false,
            adopted_at: first,
            adopted_by: "alice".into(),
        };
        assert!(store.adopt_lan_device(&adoption(uuid, "198.18.5.12")).await.unwrap(), "{kind}");
        assert!(!store.adopt_lan_device(&adoption(uuid, "198.18.5.13")).await.unwrap(), "{kind}: the UUID is taken");
        assert!(
            !store.adopt_lan_device(&adoption(other, "198.18.5.12")).await.unwrap(),
            "{kind}: the address is taken"
        );
        assert_eq!(store.lan_device(uuid).await.unwrap(), Some(adoption(uuid, "198.18.5.12")), "{kind}");
        assert_eq!(store.holder(uuid).await.unwrap().as_deref(), Some("gw-a"), "{kind}: reached by gw-a");
        assert_eq!(store.lan_devices(Some("gw-a"), None, 10).await.unwrap().len(), 1, "{kind}");
        assert!(store.lan_devices(Some("gw-b"), None, 10).await.unwrap().is_empty(), "{kind}");
        assert!(store.lan_devices(None, Some(uuid), 10).await.unwrap().is_empty(), "{kind}: after the last");
        assert!(store.forget_lan_device(uuid).await.unwrap(), "{kind}");
        assert!(!store.forget_lan_device(uuid).await.unwrap(), "{kind}");
        assert_eq!(store.holder(uuid).await.unwrap(), None, "{kind}");
    }
}

#[tokio::test]
async fn busy_sources_are_replaced_per_gateway_and_summed_over_the_fleet() {
    use tether_gateway::store::SourceTunnels;
    let (_dir, stores) = both("sources").await;
    for store in &stores {
        let kind = if store.is_postgres() { "postgres" } else { "sqlite" };
        let now = OffsetDateTime::now_utc();
        let held = |source: &str, tunnels: u64| SourceTunnels { source: source.into(), tunnels };
        store
            .save_source_tunnels("gw-a", now, &[held("198.51.100.7", 900), held("2001:db8:1:2::/64", 40)])
            .await
            .unwrap();
        store.save_source_tunnels("gw-b", now, &[held("198.51.100.7", 300), held("203.0.113.9", 12)]).await.unwrap();
        // An old record (a gateway gone for days) is not read.
        store.save_source_tunnels("gw-old", now - time::Duration::days(3), &[held("192.0.2.1", 5000)]).await.unwrap();
        let since = now - time::Duration::days(1);
        let sources = store.source_tunnels(since, 100).await.unwrap();
        assert_eq!(
            sources,
            vec![held("198.51.100.7", 1200), held("2001:db8:1:2::/64", 40), held("203.0.113.9", 12)],
            "{kind}: summed over the gateways, busiest first"
        );
        // A gateway's new record replaces its old one, and leaves the others' alone.
        store.save_source_tunnels("gw-a", now, &[held("198.51.100.7", 10)]).await.unwrap();
        let sources = store.source_tunnels(since, 1).await.unwrap();
        assert_eq!(sources, vec![held("198.51.100.7", 310)], "{kind}: at most the limit");
        store.save_source_tunnels("gw-b", now, &[]).await.unwrap();
        assert_eq!(store.source_tunnels(since, 100).await.unwrap(), vec![held("198.51.100.7", 10)], "{kind}");
    }
}

/// Runs each accounts scenario on both databases (a database of its own on PostgreSQL).
macro_rules! accounts_on_both {
    ($($name:ident => $database:literal),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_dir, stores) = both($database).await;
                for store in &stores {
                    accounts_scenarios::$name(store).await;
                }
            }
        )*
    };
}

accounts_on_both!(
    invitations_expire_after_their_validity => "accounts_expiry",
    contacts_see_machines_while_active_then_are_inactive_then_plain_users => "accounts_contact_life",
    removing_an_invitation_never_sent_is_due_no_mail => "accounts_removal",
    terminating_a_subscription_ends_every_contact_and_cuts_access_at_once => "accounts_termination",
    a_suspended_user_is_denied_everything => "accounts_suspension",
    machines_and_contacts_are_limited_by_the_subscription => "accounts_limits",
    an_email_change_takes_effect_only_once_confirmed => "accounts_email",
    the_audit_log_is_read_by_machine_and_by_user_newest_first => "accounts_audit",
    users_and_tokens_belong_together => "accounts_tokens",
);

#[tokio::test]
async fn outbox_a_mail_waits_until_sent_and_a_failed_one_is_retried_when_due() {
    let (_dir, stores) = both("outbox_life").await;
    for store in &stores {
        outbox_scenarios::a_mail_waits_until_sent_and_a_failed_one_is_retried_when_due(store).await;
    }
}

#[tokio::test]
async fn support_an_action_is_sent_until_answered_and_keeps_its_first_result() {
    let (_dir, stores) = both("support_actions").await;
    for store in &stores {
        support_scenarios::an_action_is_sent_until_answered_and_keeps_its_first_result(store).await;
    }
}

#[tokio::test]
async fn support_a_broadcast_is_counted_as_each_machine_receives_and_reads_it() {
    let (_dir, stores) = both("support_messages").await;
    for store in &stores {
        support_scenarios::a_broadcast_is_counted_as_each_machine_receives_and_reads_it(store).await;
    }
}

#[tokio::test]
async fn outbox_concurrent_claims_never_take_the_same_mail() {
    let (_dir, stores) = both("outbox_claims").await;
    for store in &stores {
        outbox_scenarios::concurrent_claims_never_take_the_same_mail(store).await;
    }
}

/// A PostgreSQL database from before accounts (schema 5) with tokens, one of them revoked: the
/// tokens are the built-in operator's, and no new token gets the revoked one's id.
#[tokio::test]
async fn a_postgres_store_from_before_accounts_gives_its_tokens_to_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let url = cluster().create_database("accounts_upgrade").unwrap();
    let before = tether_gateway::store::postgres_migrations()[..5].join("\n");
    let setup = format!(
        "{before}
         CREATE TABLE tether_schema (version BIGINT NOT NULL);
         INSERT INTO tether_schema (version) VALUES (5);
         INSERT INTO tokens (name, hash, created_at, scope) VALUES ('alice', 'ha', 1, 'read'), ('bob', 'hb', 2, 'attach');
         DELETE FROM tokens WHERE name = 'bob';"
    );
    cluster().psql("accounts_upgrade", &setup).unwrap();
    let location = Location::resolve(Some(&url), dir.path()).unwrap();
    let err = Store::open(&location, Migrate::No, PoolOptions::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Outdated { found: 5, .. }), "{err}");
    let store = Store::open(&location, Migrate::Yes, PoolOptions::default()).await.unwrap();
    let (found, known) = store.schema_version().await.unwrap();
    assert_eq!(found, known);
    let operator = store.user_by_name("operator").await.unwrap().unwrap();
    assert_eq!(operator.role, Role::Operator);
    let alice = store.token_by_hash("ha").await.unwrap().unwrap();
    assert_eq!((alice.user_id, alice.scope), (operator.id, TokenScope::Read));
    let next = store.create_token("carol", "hc", TokenScope::Attach, None).await.unwrap();
    assert!(next > 2, "a new token reused the revoked token's id {next}");
    assert_eq!(store.token_by_hash("hc").await.unwrap().unwrap().user_id, operator.id);
}

/// The portal's sessions on both databases: only the id's hash finds one, a user keeps at most
/// `MAX_SESSIONS_PER_USER` (the oldest go), expired ones are swept, and a TOTP step is spent once.
#[tokio::test]
async fn portal_sessions_are_capped_swept_and_totp_steps_spent_once() {
    use tether_gateway::store::{NewSession, MAX_SESSIONS_PER_USER};
    let (_dir, stores) = both("portal_sessions").await;
    for store in stores {
        let kind = if store.is_postgres() { "postgres" } else { "sqlite" };
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let user = store.create_user("ann", None, None, Role::User, t0).await.unwrap();
        let new = |i: i64| NewSession {
            id_hash: format!("hash-{i}"),
            user_id: user,
            now: t0 + time::Duration::seconds(i),
            expires_at: t0 + time::Duration::hours(12),
            second_factor: false,
            csrf_secret: format!("csrf-{i}"),
            via_root: i == 1,
        };
        let idle_before = t0 - time::Duration::minutes(30);
        for i in 0..=MAX_SESSIONS_PER_USER {
            store.create_session(&new(i), idle_before).await.unwrap();
        }
        assert_eq!(store.session_count(user).await.unwrap(), MAX_SESSIONS_PER_USER as u64, "{kind}");
        assert!(store.session("hash-0").await.unwrap().is_none(), "{kind}: the oldest went");
        let last = store.session(&format!("hash-{MAX_SESSIONS_PER_USER}")).await.unwrap().unwrap();
        let csrf = format!("csrf-{MAX_SESSIONS_PER_USER}");
        assert_eq!((last.user_id, last.second_factor, &last.csrf_secret), (user, false, &csrf), "{kind}");
        assert!(!last.via_root, "{kind}");
        assert!(store.session("hash-1").await.unwrap().unwrap().via_root, "{kind}: sent by the root");
        store.set_session_totp_pending(last.id, Some("sealed".into())).await.unwrap();
        store.pass_second_factor(last.id).await.unwrap();
        let last = store.session(&format!("hash-{MAX_SESSIONS_PER_USER}")).await.unwrap().unwrap();
        assert!(last.second_factor && last.totp_pending.is_none(), "{kind}");
        assert_eq!(store.delete_user_sessions(user, Some(last.id)).await.unwrap(), MAX_SESSIONS_PER_USER as u64 - 1);
        let later = t0 + time::Duration::hours(13);
        assert_eq!(store.sweep_sessions(later, later - time::Duration::minutes(30)).await.unwrap(), 1, "{kind}");
        assert_eq!(store.session_count(user).await.unwrap(), 0, "{kind}");

        assert!(store.user_totp_secret(user).await.unwrap().is_none(), "{kind}");
        store.set_user_totp_secret(user, Some("sealed-secret".into())).await.unwrap();
        assert_eq!(store.user_totp_secret(user).await.unwrap().as_deref(), Some("sealed-secret"), "{kind}");
        assert!(store.spend_totp_step(user, 100).await.unwrap(), "{kind}");
        assert!(!store.spend_totp_step(user, 100).await.unwrap(), "{kind}: the same step twice");
        assert!(!store.spend_totp_step(user, 99).await.unwrap(), "{kind}: an earlier step");
        assert!(store.spend_totp_step(user, 101).await.unwrap(), "{kind}");
        // A new secret starts afresh.
        store.set_user_totp_secret(user, None).await.unwrap();
        assert!(store.spend_totp_step(user, 50).await.unwrap(), "{kind}");
    }
}

#[tokio::test]
async fn silos_a_root_gives_machines_to_silos_and_a_silo_records_its_clients() {
    let (_dir, stores) = both("silos").await;
    for store in &stores {
        silos_scenarios::a_root_gives_machines_to_silos_and_a_silo_records_its_clients(store).await;
    }
}

#[tokio::test]
async fn silos_a_root_moves_a_machine_and_the_silos_hand_its_history_over() {
    let (_dir, stores) = both("silo_moves").await;
    for store in &stores {
        silos_scenarios::a_root_moves_a_machine_and_the_silos_hand_its_history_over(store).await;
    }
}

#[tokio::test]
async fn silos_a_person_the_root_sent_sees_the_clients_of_the_subscribers_it_was_granted() {
    let (_dir, stores) = both("silo_visitors").await;
    for store in &stores {
        silos_scenarios::a_person_the_root_sent_sees_the_clients_of_the_subscribers_it_was_granted(store).await;
    }
}
