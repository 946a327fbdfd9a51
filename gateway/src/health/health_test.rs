//! The health meter's rules at and around each threshold, unknown never red, stale, AMT.

use protocols::telemetry::{Antivirus, Backup, Disk, Firewall, FirewallBackend, Reading, Report, Scan, Updates};

use super::*;

const DAY: i64 = 86_400;
/// 2027-01-15 08:00 UTC.
const NOW: i64 = 1_800_000_000;
const HEARTBEAT: u32 = 300;

/// A report of a machine in good order, taken at `NOW`.
fn good() -> Report {
    Report {
        firewall: Reading::Value(Firewall {
            backend: FirewallBackend::Nftables,
            active: true,
            rules: 12,
            default_deny: true,
        }),
        antivirus: Reading::Value(Antivirus {
            product: "ClamAV".into(),
            running: true,
            updater_running: true,
            signatures_at: Some(NOW - DAY),
        }),
        last_full_scan: Reading::Value(Scan { finished_at: NOW - 2 * DAY, threats_found: 0, threats_cleaned: 0 }),
        updates: Reading::Value(Updates {
            pending: 4,
            security_pending: 0,
            security_pending_since: None,
            last_success: Some(NOW - DAY),
        }),
        backup: Reading::Value(Backup { last_snapshot: NOW - DAY }),
        os_version: Reading::Value("Debian GNU/Linux 12 (bookworm)".into()),
        boot_time: Reading::Value(NOW - 10 * DAY),
        disk: Reading::Value(Disk { free_bytes: 1 << 30, total_bytes: 1 << 34 }),
        agent_version: "0.1.0".into(),
    }
}

/// Everything wrong that the default rules see.
fn bad() -> Report {
    let mut r = good();
    r.firewall =
        Reading::Value(Firewall { backend: FirewallBackend::Iptables, active: false, rules: 0, default_deny: false });
    r.antivirus = Reading::Value(Antivirus {
        product: "ClamAV".into(),
        running: false,
        updater_running: false,
        signatures_at: Some(NOW - 40 * DAY),
    });
    r.last_full_scan = Reading::Value(Scan { finished_at: NOW - 40 * DAY, threats_found: 3, threats_cleaned: 1 });
    r.updates = Reading::Value(Updates {
        pending: 9,
        security_pending: 2,
        security_pending_since: Some(NOW - 40 * DAY),
        last_success: None,
    });
    r.backup = Reading::Value(Backup { last_snapshot: NOW - 40 * DAY });
    r
}

fn meter(report: &Report) -> Meter {
    evaluate(&HealthRules::default(), report, NOW, Some(NOW), HEARTBEAT, NOW)
}

fn with_rules(rules: &HealthRules, report: &Report) -> Meter {
    evaluate(rules, report, NOW, Some(NOW), HEARTBEAT, NOW)
}

/// The reason of `code`, if any.
fn reason(meter: &Meter, code: ReasonCode) -> Option<&Reason> {
    meter.reasons.iter().find(|r| r.code == code)
}

fn health_of(meter: &Meter, code: ReasonCode) -> Option<Health> {
    reason(meter, code).map(|r| r.health)
}

#[test]
fn a_machine_in_good_order_is_green_without_reasons() {
    let m = meter(&good());
    assert_eq!(m, Meter::green());
}

#[test]
fn everything_wrong_is_red_with_every_reason_worst_first() {
    let m = meter(&bad());
    assert_eq!(m.health, Health::Red);
    let codes: Vec<ReasonCode> = m.reasons.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [
            ReasonCode::FirewallOff,
            ReasonCode::AntivirusOff,
            ReasonCode::SignaturesOld,
            ReasonCode::ThreatsNotCleaned,
            ReasonCode::BackupOld,
            ReasonCode::SecurityUpdatesPending,
            ReasonCode::ScanOld,
        ]
    );
    assert_eq!(reason(&m, ReasonCode::FirewallOff).unwrap().text, "firewall off (iptables, no filtering rules)");
    assert_eq!(reason(&m, ReasonCode::AntivirusOff).unwrap().text, "antivirus off (ClamAV is not running)");
    assert_eq!(reason(&m, ReasonCode::SignaturesOld).unwrap().text, "ClamAV signatures are 40 days old (2026-12-06)");
    assert_eq!(
        reason(&m, ReasonCode::ThreatsNotCleaned).unwrap().text,
        "2 threats not cleaned: the full scan of 2026-12-06 found 3, cleaned 1"
    );
    assert_eq!(reason(&m, ReasonCode::BackupOld).unwrap().text, "last backup 40 days ago (2026-12-06)");
    assert_eq!(
        reason(&m, ReasonCode::SecurityUpdatesPending).unwrap().text,
        "2 security updates pending for 40 days (since 2026-12-06)"
    );
    assert_eq!(reason(&m, ReasonCode::ScanOld).unwrap().text, "last full scan 40 days ago (2026-12-06)");
}

/// Makes one parameter of a report unknown.
type MakeUnknown = fn(&mut Report);

#[test]
fn unknown_never_gives_a_reason_let_alone_red() {
    let unknown = |mut r: Report| {
        r.firewall = Reading::unknown("nft: permission denied");
        r.antivirus = Reading::unknown("clamd is not installed");
        r.last_full_scan = Reading::unknown("no scan log");
        r.updates = Reading::unknown("/var/log/apt/history.log: permission denied");
        r.backup = Reading::unknown("no backup tool found");
        r.os_version = Reading::unknown("?");
        r.boot_time = Reading::unknown("?");
        r.disk = Reading::unknown("?");
        r
    };
    assert_eq!(meter(&unknown(bad())), Meter::green());
    // One at a time: each parameter of the bad report made unknown takes its reasons away.
    let cases: [(MakeUnknown, &[ReasonCode]); 5] = [
        (|r| r.firewall = Reading::unknown("x"), &[ReasonCode::FirewallOff]),
        (|r| r.antivirus = Reading::unknown("x"), &[ReasonCode::AntivirusOff, ReasonCode::SignaturesOld]),
        (|r| r.last_full_scan = Reading::unknown("x"), &[ReasonCode::ScanOld, ReasonCode::ThreatsNotCleaned]),
        (|r| r.updates = Reading::unknown("x"), &[ReasonCode::SecurityUpdatesPending]),
        (|r| r.backup = Reading::unknown("x"), &[ReasonCode::BackupOld]),
    ];
    for (make_unknown, gone) in cases {
        let mut r = bad();
        make_unknown(&mut r);
        let m = meter(&r);
        for code in gone {
            assert!(!m.has(*code), "{code:?}: {m:?}");
        }
        assert_eq!(m.codes().len(), 7 - gone.len(), "{m:?}");
    }
    // Unknown dates inside a known value: no reason either.
    let mut r = good();
    r.antivirus = Reading::Value(Antivirus {
        product: "ClamAV".into(),
        running: true,
        updater_running: true,
        signatures_at: None,
    });
    r.updates =
        Reading::Value(Updates { pending: 3, security_pending: 3, security_pending_since: None, last_success: None });
    assert_eq!(meter(&r), Meter::green());
}

#[test]
fn the_firewall_off_is_red_and_on_is_green() {
    let mut r = good();
    r.firewall =
        Reading::Value(Firewall { backend: FirewallBackend::Nftables, active: false, rules: 0, default_deny: false });
    let m = meter(&r);
    assert_eq!(m.health, Health::Red);
    assert_eq!(m.reasons[0].text, "firewall off (nftables, no filtering rules)");
    r.firewall = Reading::Value(Firewall {
        backend: FirewallBackend::WindowsSecurityCenter,
        active: false,
        rules: 4,
        default_deny: false,
    });
    assert_eq!(meter(&r).reasons[0].text, "firewall off (Windows Security Center, 4 rules, none filtering)");
    // A default-deny policy without rules filters: active.
    r.firewall =
        Reading::Value(Firewall { backend: FirewallBackend::Nftables, active: true, rules: 0, default_deny: true });
    assert_eq!(meter(&r), Meter::green());
    r.firewall =
        Reading::Value(Firewall { backend: FirewallBackend::Nftables, active: false, rules: 0, default_deny: false });
    let off = HealthRules { firewall_off_red: false, ..HealthRules::default() };
    assert_eq!(with_rules(&off, &r), Meter::green());
}

#[test]
fn the_antivirus_not_running_is_red_and_its_name_is_kept_on_one_line() {
    let mut r = good();
    r.antivirus = Reading::Value(Antivirus {
        product: "Evil\nAV".into(),
        running: false,
        updater_running: true,
        signatures_at: Some(NOW - DAY),
    });
    let m = meter(&r);
    assert_eq!(m.health, Health::Red);
    assert_eq!(m.reasons[0].text, "antivirus off (Evil AV is not running)");
    let off = HealthRules { antivirus_off_red: false, ..HealthRules::default() };
    assert_eq!(with_rules(&off, &r), Meter::green());
}

fn signatures(age: i64) -> Report {
    let mut r = good();
    r.antivirus = Reading::Value(Antivirus {
        product: "ClamAV".into(),
        running: true,
        updater_running: true,
        signatures_at: Some(NOW - age),
    });
    r
}

#[test]
fn signatures_turn_yellow_after_3_days_and_red_after_7() {
    let code = ReasonCode::SignaturesOld;
    assert_eq!(health_of(&meter(&signatures(3 * DAY)), code), None);
    assert_eq!(health_of(&meter(&signatures(3 * DAY + 1)), code), Some(Health::Yellow));
    assert_eq!(health_of(&meter(&signatures(7 * DAY)), code), Some(Health::Yellow));
    assert_eq!(health_of(&meter(&signatures(7 * DAY + 1)), code), Some(Health::Red));
    assert_eq!(meter(&signatures(9 * DAY)).reasons[0].text, "ClamAV signatures are 9 days old (2027-01-06)");
    // A date in the future (the agent's clock ahead) is fresh.
    assert_eq!(meter(&signatures(-5 * DAY)), Meter::green());
    let no_yellow = HealthRules { signatures_yellow_days: 0, ..HealthRules::default() };
    assert_eq!(with_rules(&no_yellow, &signatures(5 * DAY)), Meter::green());
    assert_eq!(with_rules(&no_yellow, &signatures(8 * DAY)).health, Health::Red);
    let no_red = HealthRules { signatures_red_days: 0, ..HealthRules::default() };
    assert_eq!(with_rules(&no_red, &signatures(800 * DAY)).health, Health::Yellow);
}

fn security_pending(count: u32, age: Option<i64>) -> Report {
    let mut r = good();
    r.updates = Reading::Value(Updates {
        pending: count + 1,
        security_pending: count,
        security_pending_since: age.map(|a| NOW - a),
        last_success: None,
    });
    r
}

#[test]
fn security_updates_pending_over_7_days_are_yellow() {
    let code = ReasonCode::SecurityUpdatesPending;
    assert_eq!(health_of(&meter(&security_pending(1, Some(7 * DAY))), code), None);
    let m = meter(&security_pending(1, Some(7 * DAY + 1)));
    assert_eq!((m.health, health_of(&m, code)), (Health::Yellow, Some(Health::Yellow)));
    assert_eq!(m.reasons[0].text, "1 security update pending for 7 days (since 2027-01-08)");
    // Nothing pending from a security origin: no matter how old the date.
    assert_eq!(meter(&security_pending(0, Some(90 * DAY))), Meter::green());
    let off = HealthRules { security_updates_yellow_days: 0, ..HealthRules::default() };
    assert_eq!(with_rules(&off, &security_pending(5, Some(90 * DAY))), Meter::green());
}

fn scanned(age: i64, found: u32, cleaned: u32) -> Report {
    let mut r = good();
    r.last_full_scan = Reading::Value(Scan { finished_at: NOW - age, threats_found: found, threats_cleaned: cleaned });
    r
}

#[test]
fn a_full_scan_older_than_14_days_is_yellow() {
    assert_eq!(meter(&scanned(14 * DAY, 0, 0)), Meter::green());
    let m = meter(&scanned(14 * DAY + 1, 0, 0));
    assert_eq!((m.health, m.reasons[0].code), (Health::Yellow, ReasonCode::ScanOld));
    assert_eq!(m.reasons[0].text, "last full scan 14 days ago (2027-01-01)");
    let off = HealthRules { scan_yellow_days: 0, ..HealthRules::default() };
    assert_eq!(with_rules(&off, &scanned(400 * DAY, 0, 0)), Meter::green());
}

#[test]
fn threats_found_and_not_cleaned_are_red_cleaned_ones_are_not() {
    assert_eq!(meter(&scanned(DAY, 2, 2)), Meter::green());
    let m = meter(&scanned(DAY, 1, 0));
    assert_eq!((m.health, m.reasons[0].code), (Health::Red, ReasonCode::ThreatsNotCleaned));
    assert_eq!(m.reasons[0].text, "1 threat not cleaned: the full scan of 2027-01-14 found 1, cleaned 0");
    // More cleaned than found (a counting quirk) is not a threat left.
    assert_eq!(meter(&scanned(DAY, 1, 2)), Meter::green());
    let off = HealthRules { threats_not_cleaned_red: false, ..HealthRules::default() };
    assert_eq!(with_rules(&off, &scanned(DAY, 5, 0)), Meter::green());
}

fn backed_up(age: i64) -> Report {
    let mut r = good();
    r.backup = Reading::Value(Backup { last_snapshot: NOW - age });
    r
}

#[test]
fn a_backup_older_than_7_days_is_yellow_and_30_days_red() {
    let code = ReasonCode::BackupOld;
    assert_eq!(health_of(&meter(&backed_up(7 * DAY)), code), None);
    assert_eq!(health_of(&meter(&backed_up(7 * DAY + 1)), code), Some(Health::Yellow));
    assert_eq!(health_of(&meter(&backed_up(30 * DAY)), code), Some(Health::Yellow));
    assert_eq!(health_of(&meter(&backed_up(30 * DAY + 1)), code), Some(Health::Red));
    assert_eq!(meter(&backed_up(DAY + 5)).reasons.len(), 0);
    let off = HealthRules { backup_yellow_days: 0, backup_red_days: 0, ..HealthRules::default() };
    assert_eq!(with_rules(&off, &backed_up(1000 * DAY)), Meter::green());
}

#[test]
fn no_report_for_more_than_3_heartbeats_is_stale_and_yellow() {
    let rules = HealthRules::default();
    let limit = 3 * i64::from(HEARTBEAT);
    let at = |last: i64| evaluate(&rules, &good(), last, Some(last), HEARTBEAT, NOW);
    assert_eq!(at(NOW - limit), Meter::green());
    let m = at(NOW - limit - 1);
    assert_eq!((m.health, m.reasons[0].code), (Health::Yellow, ReasonCode::Stale));
    assert_eq!(
        m.reasons[0].text,
        "no report for 15 minutes (last 2027-01-15 07:44 UTC; the agent reports every 5 minutes)"
    );
    // The later of the report's time and the last report heard counts.
    let heard_since = evaluate(&rules, &good(), NOW - DAY, Some(NOW - 60), HEARTBEAT, NOW);
    assert_eq!(heard_since, Meter::green());
    let never_heard = evaluate(&rules, &good(), NOW - DAY, None, HEARTBEAT, NOW);
    assert_eq!(never_heard.reasons[0].text.split(" (").next(), Some("no report for 24 hours"));
    // No schedule, or the rule off: never stale.
    assert_eq!(evaluate(&rules, &good(), NOW - DAY, None, 0, NOW), Meter::green());
    let off = HealthRules { stale_heartbeats: 0, ..rules.clone() };
    assert_eq!(evaluate(&off, &good(), NOW - DAY, None, HEARTBEAT, NOW), Meter::green());
    // Stale adds to the report's own reasons; it does not hide them.
    let m = evaluate(&rules, &bad(), NOW - DAY, None, HEARTBEAT, NOW);
    assert_eq!(m.health, Health::Red);
    assert!(m.has(ReasonCode::Stale) && m.has(ReasonCode::FirewallOff) && !m.only_stale());
}

#[test]
fn an_amt_pc_is_green_while_connected_and_yellow_offline_after_the_grace() {
    let rules = HealthRules::default();
    assert_eq!(evaluate_amt(&rules, true, Some(NOW - 100 * DAY), NOW), Meter::green());
    assert_eq!(evaluate_amt(&rules, true, None, NOW), Meter::green());
    let m = evaluate_amt(&rules, false, Some(NOW - 2 * 3600), NOW);
    assert_eq!((m.health, m.reasons[0].code), (Health::Yellow, ReasonCode::Offline));
    assert_eq!(m.reasons[0].text, "AMT not connected for 2 hours (last connected 2027-01-15 06:00 UTC)");
    let never = evaluate_amt(&rules, false, None, NOW);
    assert_eq!(
        (never.health, never.reasons[0].text.as_str()),
        (Health::Yellow, "AMT has never connected to the gateway")
    );
    let night = HealthRules { amt_offline_grace_minutes: 720, ..rules.clone() };
    assert_eq!(evaluate_amt(&night, false, Some(NOW - 720 * 60), NOW), Meter::green());
    assert_eq!(evaluate_amt(&night, false, Some(NOW - 720 * 60 - 1), NOW).health, Health::Yellow);
    let off = HealthRules { amt_offline_yellow: false, ..rules };
    assert_eq!(evaluate_amt(&off, false, None, NOW), Meter::green());
}

#[test]
fn same_as_compares_health_and_codes_not_texts() {
    let nine = meter(&signatures(9 * DAY));
    let ten = meter(&signatures(10 * DAY));
    assert_ne!(nine, ten);
    assert!(nine.same_as(&ten));
    let yellow = meter(&signatures(4 * DAY));
    assert!(!yellow.same_as(&nine), "yellow to red is a change");
    let mut two = bad();
    two.firewall = good().firewall;
    assert!(!meter(&two).same_as(&meter(&bad())), "a reason fewer, still red, is a change");
    assert!(Meter::green().same_as(&Meter::default()));
}

#[test]
fn health_and_codes_have_stable_names_as_stored_and_serialised() {
    for health in [Health::Green, Health::Yellow, Health::Red] {
        assert_eq!(Health::parse(health.as_str()), Some(health));
        assert_eq!(serde_json::to_value(health).unwrap(), health.as_str());
    }
    assert!(Health::Green < Health::Yellow && Health::Yellow < Health::Red);
    assert_eq!(Health::parse("Red"), None);
    for code in ReasonCode::ALL {
        assert_eq!(ReasonCode::parse(code.as_str()), Some(code));
        assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
    }
    assert_eq!(ReasonCode::FirewallOff.as_str(), "firewall_off");
    assert_eq!(ReasonCode::SecurityUpdatesPending.as_str(), "security_updates_pending");
    assert_eq!(ReasonCode::parse("disk_full"), None);
    let m = meter(&bad());
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(serde_json::from_str::<Meter>(&json).unwrap(), m);
}
