//! The meter at work on a real store: reports rated and alerts queued in the outbox by each
//! contact's preferences, nothing repeated while unchanged, a resolved notice only to those
//! alerted, many machines going stale together summarised once, and a change recorded once when
//! two gateways rate the same machine.

use protocols::telemetry::{Firewall, FirewallBackend, Reading, Report};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{record, report_stored, sweep};
use crate::config::Config;
use crate::health::{Health, Meter};
use crate::policy::Role;
use crate::state::TestState;
use crate::store::{Acceptance, AgentHello, NewSubscriber, SubscriberPii};

fn report(firewall_on: bool) -> Report {
    Report {
        firewall: Reading::Value(Firewall {
            backend: FirewallBackend::Nftables,
            active: firewall_on,
            rules: if firewall_on { 2 } else { 0 },
            default_deny: firewall_on,
        }),
        antivirus: Reading::unknown("ClamAV is not installed"),
        last_full_scan: Reading::unknown("no scan log"),
        updates: Reading::unknown("apt-get not found"),
        backup: Reading::unknown("no backup source configured"),
        os_version: Reading::Value("Debian GNU/Linux 12 (bookworm)".into()),
        boot_time: Reading::unknown("not read"),
        disk: Reading::unknown("not read"),
        agent_version: "0.1.0".into(),
    }
}

/// Olga's subscriber with `machines` machines; contacts carl (every change, and a webhook) and
/// rita (red only); (state, machines).
async fn shop(machines: usize, configure: impl FnOnce(&mut Config)) -> (TestState, Vec<Uuid>) {
    let mut config = Config::default();
    configure(&mut config);
    let state = TestState::new(config).await;
    let store = &state.shared.store;
    let now = OffsetDateTime::now_utc();
    let subscriber = store
        .register_subscriber(
            &NewSubscriber {
                username: "olga".into(),
                password: None,
                pii: SubscriberPii {
                    name: "Olga's Bakery".into(),
                    email: "olga@example.com".into(),
                    phone: None,
                    billing_note: None,
                },
                max_machines: 50,
                max_contacts: 5,
            },
            now,
        )
        .await
        .unwrap()
        .subscriber_id;
    for (name, prefs) in [
        ("carl", json!({"red": true, "yellow": true, "green": true, "webhook": "https://hooks.example/carl"})),
        ("rita", json!({"red": true, "yellow": false, "green": true})),
    ] {
        let user = store.create_user(name, Some(&format!("{name}@example.com")), None, Role::User, now).await.unwrap();
        let guid = store
            .invite_contact(subscriber, &format!("{name}@example.com"), now, time::Duration::days(7))
            .await
            .unwrap()
            .guid;
        let acceptance =
            Acceptance { terms_version: "1".into(), nickname: name.into(), contact_email: None, alert_prefs: prefs };
        store.accept_invitation(guid, user, &acceptance, now).await.unwrap();
    }
    let mut uuids = Vec::new();
    for i in 0..machines {
        let uuid = Uuid::new_v4();
        store.enroll_machine(subscriber, uuid, Some(&format!("pc {i}")), now).await.unwrap();
        let hello = AgentHello {
            uuid,
            hostname: format!("pc{i}"),
            os: "Debian".into(),
            agent_version: "0.1.0".into(),
            capabilities: 1,
            remote_help: false,
            remote_addr: "192.0.2.1:5000".into(),
            instance_id: "test-gateway".into(),
            now,
        };
        store.agent_connected(&hello).await.unwrap();
        uuids.push(uuid);
    }
    (state, uuids)
}

/// The outbox: (kind, recipient), oldest first.
async fn outbox(state: &TestState) -> Vec<(String, String)> {
    let mut list = state.shared.store.list_outbox(1000).await.unwrap();
    list.sort_by_key(|m| m.id);
    list.into_iter().map(|m| (m.kind, m.recipient)).collect()
}

/// Stores `report` as the agent's next one and rates it.
async fn reports(state: &TestState, uuid: Uuid, seq: i64, report: &Report) {
    let now = OffsetDateTime::now_utc();
    let mut encoded = bytes::BytesMut::new();
    report.encode(&mut encoded);
    let text = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &encoded);
    state.shared.store.insert_report(uuid, seq, now, now, &text).await.unwrap();
    report_stored(&state.shared, uuid, report, now).await;
}

#[tokio::test]
async fn a_firewall_going_off_alerts_each_contact_once_and_its_fix_resolves_it() {
    let (state, machines) = shop(1, |_| {}).await;
    let pc = machines[0];
    reports(&state, pc, 0, &report(true)).await;
    assert!(outbox(&state).await.is_empty(), "green at first: nobody is alerted");

    reports(&state, pc, 1, &report(false)).await;
    let mut expected = vec![
        ("health_raised".to_string(), "carl@example.com".to_string()),
        ("health_raised".to_string(), "https://hooks.example/carl".to_string()),
        ("health_raised".to_string(), "rita@example.com".to_string()),
    ];
    let mut sent = outbox(&state).await;
    sent.sort();
    expected.sort();
    assert_eq!(sent, expected);

    // Still red: nothing more.
    reports(&state, pc, 2, &report(false)).await;
    assert_eq!(outbox(&state).await.len(), 3);
    let meter = state.shared.store.health(pc).await.unwrap().unwrap();
    assert_eq!(meter.health, "red");
    assert!(meter.reasons.contains("firewall_off"), "{}", meter.reasons);

    reports(&state, pc, 3, &report(true)).await;
    let resolved: Vec<_> = outbox(&state).await.into_iter().skip(3).collect();
    assert_eq!(resolved.len(), 3, "a resolved notice to each who was alerted: {resolved:?}");
    assert!(resolved.iter().all(|(kind, _)| kind == "health_resolved"), "{resolved:?}");

    let since = OffsetDateTime::now_utc() - time::Duration::days(7);
    let changes = state.shared.store.health_changes(pc, since).await.unwrap();
    let healths: Vec<&str> = changes.iter().rev().map(|c| c.health.as_str()).collect();
    assert_eq!(healths, ["green", "red", "green"]);
    let deliveries = state.shared.store.deliveries(pc, since).await.unwrap();
    assert_eq!(deliveries.len(), 6, "every delivery recorded");
}

#[tokio::test]
async fn machines_going_stale_together_make_one_summary_per_contact() {
    let (state, machines) = shop(6, |c| {
        c.agents.heartbeat_secs = 60;
        c.health.stale_summary_threshold = 5;
    })
    .await;
    for (i, pc) in machines.iter().enumerate() {
        reports(&state, *pc, i as i64, &report(true)).await;
    }
    // Their last reports were two hours ago (a gateway outage).
    let long_ago = OffsetDateTime::now_utc() - time::Duration::hours(2);
    for pc in &machines {
        for sql in
            ["UPDATE agents SET last_report = $2 WHERE uuid = $1", "UPDATE telemetry SET taken_at = $2 WHERE uuid = $1"]
        {
            let stmt = crate::store::Stmt::new(sql).text(pc.to_string()).time(long_ago);
            state.shared.store.execute(stmt).await.unwrap();
        }
    }
    sweep(&state.shared).await;
    let sent = outbox(&state).await;
    // Carl wants yellow: one summary by mail and one by webhook; Rita (red only) nothing.
    assert_eq!(
        sent,
        [
            ("health_stale_summary".to_string(), "carl@example.com".to_string()),
            ("health_stale_summary".to_string(), "https://hooks.example/carl".to_string()),
        ],
        "{sent:?}"
    );
    for pc in &machines {
        assert_eq!(state.shared.store.health(*pc).await.unwrap().unwrap().health, "yellow");
    }
    // A second sweep finds nothing new.
    sweep(&state.shared).await;
    assert_eq!(outbox(&state).await.len(), 2);
}

#[tokio::test]
async fn two_gateways_rating_the_same_change_record_it_once() {
    let (state, machines) = shop(1, |_| {}).await;
    let pc = machines[0];
    reports(&state, pc, 0, &report(true)).await;
    let red = Meter::from_reasons(vec![crate::health::Reason {
        code: crate::health::ReasonCode::FirewallOff,
        health: Health::Red,
        text: "firewall off".into(),
    }]);
    let now = OffsetDateTime::now_utc();
    // Both read green, both try to record red: one wins.
    let (a, b) = tokio::join!(record(&state.shared, pc, red.clone(), now), record(&state.shared, pc, red.clone(), now));
    let recorded = [a.unwrap(), b.unwrap()].into_iter().flatten().count();
    assert_eq!(recorded, 1, "one change, so one alert");
}

#[tokio::test]
async fn an_amt_pc_without_an_agent_is_rated_by_its_tunnel() {
    let (state, _) = shop(0, |c| c.health.amt_offline_grace_minutes = 10).await;
    let store = &state.shared.store;
    let subscriber = store.list_subscribers().await.unwrap()[0].subscriber.id;
    let (online, offline) = (Uuid::new_v4(), Uuid::new_v4());
    let now = OffsetDateTime::now_utc();
    for (uuid, connected) in [(online, true), (offline, false)] {
        store.enroll_machine(subscriber, uuid, None, now).await.unwrap();
        let stmt = crate::store::Stmt::new(
            "INSERT INTO devices (uuid, registered, connected_since, last_disconnect) VALUES ($1, 1, $2, $3)",
        )
        .text(uuid.to_string())
        .int(connected.then(|| (now.unix_timestamp() - 60) * 1000))
        .int((!connected).then(|| (now.unix_timestamp() - 3600) * 1000));
        store.execute(stmt).await.unwrap();
    }
    sweep(&state.shared).await;
    assert_eq!(store.health(online).await.unwrap().unwrap().health, "green");
    let down = store.health(offline).await.unwrap().unwrap();
    assert_eq!(down.health, "yellow");
    assert!(down.reasons.contains("offline"), "{}", down.reasons);
    // Carl wants yellow: told once; a second round changes nothing.
    assert_eq!(outbox(&state).await.iter().filter(|(k, _)| k == "health_raised").count(), 2, "mail and webhook");
    sweep(&state.shared).await;
    assert_eq!(outbox(&state).await.len(), 2);
}
