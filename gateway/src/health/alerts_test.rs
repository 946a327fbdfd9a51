//! The alert decisions as a table and over sequences of meters, stale grouping, and rendering.

use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::health::{Reason, ReasonCode};

/// 2027-01-15 08:00 UTC.
const NOW: i64 = 1_800_000_000;
const BASE: &str = "https://gw.example:8443/";

fn reason(code: ReasonCode, health: Health, text: &str) -> Reason {
    Reason { code, health, text: text.into() }
}

fn meter(reasons: &[(ReasonCode, Health)]) -> Meter {
    Meter::from_reasons(reasons.iter().map(|(code, health)| reason(*code, *health, code.as_str())).collect())
}

fn green() -> Meter {
    Meter::green()
}
fn yellow() -> Meter {
    meter(&[(ReasonCode::BackupOld, Health::Yellow)])
}
fn yellow_other() -> Meter {
    meter(&[(ReasonCode::ScanOld, Health::Yellow)])
}
fn red() -> Meter {
    meter(&[(ReasonCode::FirewallOff, Health::Red)])
}
fn red_more() -> Meter {
    meter(&[(ReasonCode::FirewallOff, Health::Red), (ReasonCode::AntivirusOff, Health::Red)])
}
fn stale() -> Meter {
    meter(&[(ReasonCode::Stale, Health::Yellow)])
}

use AlertPreference::{RedOnly, YellowAndRed};
use Health::{Red, Yellow};

/// (name, previous, current, preference, last alerted, expected).
type Case = (&'static str, Option<Meter>, Meter, AlertPreference, Option<Health>, Option<AlertKind>);

#[test]
fn decide_follows_the_documented_table() {
    let raised = |health| Some(AlertKind::Raised { health });
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("unchanged green", Some(green()), green(), YellowAndRed, None, None),
        ("green to yellow", Some(green()), yellow(), YellowAndRed, None, raised(Yellow)),
        ("green to yellow, red only: filtered", Some(green()), yellow(), RedOnly, None, None),
        ("green to red, red only", Some(green()), red(), RedOnly, None, raised(Red)),
        ("green to red", Some(green()), red(), YellowAndRed, None, raised(Red)),
        ("yellow to red after a yellow alert", Some(yellow()), red(), YellowAndRed, Some(Yellow), raised(Red)),
        ("yellow to red, red only", Some(yellow()), red(), RedOnly, None, raised(Red)),
        ("red to yellow", Some(red()), yellow(), YellowAndRed, Some(Red), Some(AlertKind::Changed)),
        ("red to yellow, red only: no longer red", Some(red()), yellow(), RedOnly, Some(Red), Some(AlertKind::Resolved)),
        ("red to green", Some(red()), green(), YellowAndRed, Some(Red), Some(AlertKind::Resolved)),
        ("red to green, red only", Some(red()), green(), RedOnly, Some(Red), Some(AlertKind::Resolved)),
        ("yellow to green, never alerted", Some(yellow()), green(), RedOnly, None, None),
        ("yellow to green, alerted", Some(yellow()), green(), YellowAndRed, Some(Yellow), Some(AlertKind::Resolved)),
        ("red, a reason more", Some(red()), red_more(), YellowAndRed, Some(Red), Some(AlertKind::Changed)),
        ("red, a reason more, red only", Some(red()), red_more(), RedOnly, Some(Red), Some(AlertKind::Changed)),
        ("yellow, other reasons", Some(yellow()), yellow_other(), YellowAndRed, Some(Yellow), Some(AlertKind::Changed)),
        ("yellow, other reasons, red only", Some(yellow()), yellow_other(), RedOnly, None, None),
        ("unchanged red, alerted: no repeat", Some(red()), red(), YellowAndRed, Some(Red), None),
        ("unchanged red, never alerted: no repeat", Some(red()), red(), YellowAndRed, None, None),
        ("new machine, red", None, red(), YellowAndRed, None, raised(Red)),
        ("new machine, green", None, green(), YellowAndRed, None, None),
        ("restart, red as alerted", None, red(), YellowAndRed, Some(Red), None),
        ("restart, yellow after a red alert", None, yellow(), YellowAndRed, Some(Red), Some(AlertKind::Changed)),
        ("restart, green after an alert", None, green(), YellowAndRed, Some(Red), Some(AlertKind::Resolved)),
        ("preference none", Some(green()), red(), AlertPreference::None, None, None),
        ("preference none, resolved", Some(red()), green(), AlertPreference::None, Some(Red), None),
    ];
    for (name, previous, current, pref, last_alerted, expected) in cases {
        assert_eq!(decide(previous.as_ref(), &current, pref, last_alerted), expected, "{name}");
    }
}

/// Feeds meters through `decide` as the caller would (keeping the previous meter and the open
/// alert), and returns what was sent.
fn run(pref: AlertPreference, meters: &[Meter]) -> Vec<AlertKind> {
    let mut previous: Option<Meter> = None;
    let mut last_alerted = None;
    let mut sent = Vec::new();
    for current in meters {
        if let Some(kind) = decide(previous.as_ref(), current, pref, last_alerted) {
            last_alerted = match kind {
                AlertKind::Resolved => None,
                AlertKind::Raised { .. } | AlertKind::Changed => Some(current.health),
            };
            sent.push(kind);
        }
        previous = Some(current.clone());
    }
    sent
}

#[test]
fn a_sequence_of_meters_alerts_once_per_change_and_resolves_once() {
    let day = [green(), green(), red(), red(), red(), yellow(), yellow(), green(), green(), yellow(), red()];
    assert_eq!(
        run(YellowAndRed, &day),
        [
            AlertKind::Raised { health: Red },
            AlertKind::Changed,
            AlertKind::Resolved,
            AlertKind::Raised { health: Yellow },
            AlertKind::Raised { health: Red },
        ]
    );
    assert_eq!(
        run(RedOnly, &day),
        [AlertKind::Raised { health: Red }, AlertKind::Resolved, AlertKind::Raised { health: Red }]
    );
    assert!(run(AlertPreference::None, &day).is_empty());
    // Yellow flapping between the same reasons is one alert per change, never a repeat of one.
    let flapping = [yellow(), yellow(), yellow_other(), yellow_other(), yellow()];
    assert_eq!(
        run(YellowAndRed, &flapping),
        [AlertKind::Raised { health: Yellow }, AlertKind::Changed, AlertKind::Changed]
    );
    assert!(run(RedOnly, &flapping).is_empty());
}

#[test]
fn many_machines_merely_going_stale_together_make_one_summary() {
    let ids: Vec<Uuid> = (1..=7u128).map(Uuid::from_u128).collect();
    let changes = vec![
        (ids[0], green(), stale()),
        (ids[1], green(), stale()),
        (ids[2], red(), stale()),
        (ids[3], yellow(), stale()),
        (ids[4], green(), stale()),
        // Not merely stale: other reasons too, or stale already.
        (ids[5], yellow(), meter(&[(ReasonCode::BackupOld, Yellow), (ReasonCode::Stale, Yellow)])),
        (ids[6], stale(), stale()),
    ];
    let batch = group_stale(&changes, 5);
    assert_eq!(batch.stale_summary, Some(ids[..5].to_vec()));
    assert_eq!(batch.individual, ids[5..].to_vec());
    // Below the threshold, or with summaries off: one by one.
    let all = AlertBatch { individual: ids.clone(), stale_summary: None };
    assert_eq!(group_stale(&changes, 6), all);
    assert_eq!(group_stale(&changes, 0), all);
    assert_eq!(group_stale(&[], 5), AlertBatch::default());
}

#[test]
fn preferences_and_channels_have_stable_names_and_checks() {
    for pref in [AlertPreference::None, RedOnly, YellowAndRed] {
        assert_eq!(AlertPreference::parse(pref.as_str()), Some(pref));
        assert_eq!(serde_json::to_value(pref).unwrap(), pref.as_str());
    }
    assert_eq!(AlertPreference::parse("red"), None);
    assert_eq!(AlertPreference::default(), YellowAndRed);
    assert!(RedOnly.wants(Red) && !RedOnly.wants(Yellow) && !RedOnly.wants(Health::Green));
    assert!(YellowAndRed.wants(Yellow) && YellowAndRed.wants(Red) && !YellowAndRed.wants(Health::Green));
    assert!(!AlertPreference::None.wants(Red));
    let portal = |v| AlertPreference::from_portal_prefs(&v);
    assert_eq!(portal(json!({"red": true, "yellow": true, "green": true})), YellowAndRed);
    assert_eq!(portal(json!({"red": true, "yellow": false, "green": true})), RedOnly);
    assert_eq!(portal(json!({"red": false, "yellow": false, "green": true})), AlertPreference::None);
    assert_eq!(portal(json!({"email": true})), AlertPreference::None);

    let channels: Channels = serde_json::from_value(json!({"webhook": "https://hooks.example/t"})).unwrap();
    assert_eq!(channels, Channels { email: true, webhook: Some("https://hooks.example/t".into()) });
    channels.validate().unwrap();
    Channels::default().validate().unwrap();
    for bad in ["http://hooks.example/t", "https://", "https:///x", "https://a b", "ftp://x", "https://x\n"] {
        let c = Channels { email: false, webhook: Some(bad.into()) };
        assert!(c.validate().unwrap_err().starts_with("webhook"), "{bad}");
    }
    assert!(serde_json::from_value::<Channels>(json!({"sms": true})).is_err());
}

fn machine(nickname: Option<&str>) -> MachineRef<'_> {
    MachineRef { uuid: Uuid::from_u128(0xabc), nickname, subscriber_id: 42, subscriber: "Olga's Bakery" }
}

fn firewall_and_backup() -> Meter {
    Meter::from_reasons(vec![
        reason(ReasonCode::BackupOld, Yellow, "last backup 9 days ago (2027-01-06)"),
        reason(ReasonCode::FirewallOff, Red, "firewall off (nftables, no filtering rules)"),
    ])
}

#[test]
fn an_alert_mail_names_the_machine_health_reasons_and_link() {
    let current = firewall_and_backup();
    let previous = green();
    let alert = Alert {
        kind: AlertKind::Raised { health: Red },
        machine: machine(Some("Front desk")),
        previous: Some(&previous),
        current: &current,
        at: NOW,
    };
    let mail = render_mail(&alert, BASE);
    assert_eq!(mail.subject, "Front desk is red: firewall off (nftables, no filtering rules) (+1 more)");
    for part in [
        "The health of Front desk is red (it was green).\n",
        "  Subscriber: Olga's Bakery\n  Machine:    00000000-0000-0000-0000-000000000abc\n",
        "  Seen at:    2027-01-15 08:00 UTC\n",
        "  - red: firewall off (nftables, no filtering rules)\n  - yellow: last backup 9 days ago (2027-01-06)\n",
        "    https://gw.example:8443/portal/machines/00000000-0000-0000-0000-000000000abc\n",
        "https://gw.example:8443/portal/profile\n",
    ] {
        assert!(mail.body.contains(part), "{part}\n{}", mail.body);
    }

    let back = green();
    let resolved = Alert { kind: AlertKind::Resolved, previous: Some(&current), current: &back, ..alert };
    let mail = render_mail(&resolved, BASE);
    assert_eq!(mail.subject, "Front desk is back to green");
    assert!(mail.body.contains("is back to green (it was red).") && mail.body.contains("Nothing needs attention"));

    let still_yellow = yellow();
    let below = Alert { kind: AlertKind::Resolved, previous: Some(&current), current: &still_yellow, ..alert };
    assert_eq!(render_mail(&below, BASE).subject, "Front desk is no longer red: now yellow");

    let more = red_more();
    let changed = Alert { kind: AlertKind::Changed, previous: Some(&current), current: &more, ..alert };
    assert!(render_mail(&changed, BASE).subject.starts_with("Front desk is still red, for other reasons: "));
    let improved = Alert { kind: AlertKind::Changed, previous: Some(&current), current: &still_yellow, ..alert };
    assert_eq!(render_mail(&improved, BASE).subject, "Front desk is now yellow: backup_old");

    let unnamed = Alert { machine: machine(None), ..alert };
    assert!(render_mail(&unnamed, BASE).subject.starts_with("00000000-0000-0000-0000-000000000abc is red"));

    for a in [alert, resolved, below, changed, improved, unnamed] {
        let r = render_mail(&a, BASE);
        assert!(!r.subject.contains(['\r', '\n']), "{r:?}");
        assert!(r.body.ends_with('\n') && !r.body.contains('\r'), "{r:?}");
        assert!(r.body.lines().all(|l| l.chars().count() <= 90), "{}", r.body);
    }
}

#[test]
fn values_from_people_cannot_break_an_alert_subject() {
    let current = red();
    let evil = MachineRef { nickname: Some("Evil\r\nBcc: victim@example.org"), subscriber: "A\nB", ..machine(None) };
    let alert =
        Alert { kind: AlertKind::Raised { health: Red }, machine: evil, previous: None, current: &current, at: NOW };
    let mail = render_mail(&alert, BASE);
    assert!(mail.subject.starts_with("Evil  Bcc: victim@example.org is red"), "{}", mail.subject);
    assert!(!mail.body.contains("\r") && mail.body.contains("  Subscriber: A B\n"), "{}", mail.body);
    let long = "x".repeat(10_000);
    let alert = Alert { machine: MachineRef { nickname: Some(&long), ..machine(None) }, ..alert };
    assert!(render_mail(&alert, BASE).subject.chars().count() <= 201);
}

#[test]
fn the_webhook_payload_has_the_documented_fields() {
    let current = firewall_and_backup();
    let previous = yellow();
    let alert = Alert {
        kind: AlertKind::Raised { health: Red },
        machine: machine(Some("Front desk")),
        previous: Some(&previous),
        current: &current,
        at: NOW,
    };
    assert_eq!(
        webhook_payload(&alert, BASE),
        json!({
            "event": "health_changed",
            "kind": "raised",
            "machine_uuid": "00000000-0000-0000-0000-000000000abc",
            "nickname": "Front desk",
            "subscriber_id": 42,
            "subscriber": "Olga's Bakery",
            "health": "red",
            "previous": "yellow",
            "reasons": [
                {"code": "firewall_off", "health": "red", "text": "firewall off (nftables, no filtering rules)"},
                {"code": "backup_old", "health": "yellow", "text": "last backup 9 days ago (2027-01-06)"},
            ],
            "at": "2027-01-15T08:00:00Z",
            "link": "https://gw.example:8443/portal/machines/00000000-0000-0000-0000-000000000abc",
        })
    );
    let back = green();
    let resolved = Alert { kind: AlertKind::Resolved, machine: machine(None), previous: None, current: &back, ..alert };
    let payload = webhook_payload(&resolved, BASE);
    assert_eq!((payload["event"].as_str(), payload["kind"].as_str()), (Some("resolved"), Some("resolved")));
    assert!(payload["nickname"].is_null() && payload["previous"].is_null());
    assert_eq!((payload["health"].as_str(), payload["reasons"].as_array().map(Vec::len)), (Some("green"), Some(0)));
}

#[test]
fn a_stale_summary_is_one_mail_and_one_payload_for_many_machines() {
    let names: Vec<String> = (0..60).map(|i| format!("PC {i}")).collect();
    let machines: Vec<MachineRef<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| MachineRef {
            uuid: Uuid::from_u128(i as u128 + 1),
            nickname: (i % 2 == 0).then_some(n.as_str()),
            ..machine(None)
        })
        .collect();
    let summary = StaleSummary { subscriber_id: 42, subscriber: "Olga's Bakery", machines: &machines, at: NOW };
    let mail = render_stale_summary_mail(&summary, BASE);
    assert_eq!(mail.subject, "60 machines of Olga's Bakery stopped reporting");
    assert!(mail.body.contains("  - PC 0 (00000000-0000-0000-0000-000000000001)\n"), "{}", mail.body);
    assert!(mail.body.contains("  - 00000000-0000-0000-0000-000000000002\n"), "{}", mail.body);
    assert!(mail.body.contains("  … and 10 more\n") && !mail.body.contains("PC 50"), "{}", mail.body);
    assert!(mail.body.contains("    https://gw.example:8443/portal/machines\n"), "{}", mail.body);
    assert!(mail.body.lines().all(|l| l.chars().count() <= 90), "{}", mail.body);

    let payload = stale_summary_payload(&StaleSummary { machines: &machines[..2], ..summary }, BASE);
    assert_eq!(
        payload,
        json!({
            "event": "stale_summary",
            "subscriber_id": 42,
            "subscriber": "Olga's Bakery",
            "health": "yellow",
            "count": 2,
            "machines": [
                {"machine_uuid": "00000000-0000-0000-0000-000000000001", "nickname": "PC 0"},
                {"machine_uuid": "00000000-0000-0000-0000-000000000002", "nickname": null},
            ],
            "at": "2027-01-15T08:00:00Z",
            "link": "https://gw.example:8443/portal/machines",
        })
    );
}
