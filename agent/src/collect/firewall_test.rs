use std::time::Duration;

use super::*;

/// `nft -j list ruleset` of an empty ruleset (nft 1.0.6, Debian 12).
const NFT_EMPTY: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}]}"#;

/// An `inet filter` table: input policy drop, three accepts and a drop; a forward chain that does
/// not count.
const NFT_POLICY_DROP: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "filter", "handle": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}, {"chain": {"family": "inet", "table": "filter", "name": "forward_filter", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 3, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "198.18.0.9"}}, {"drop": null}]}}]}"#;

/// Policy accept, but the input chain jumps to a chain that rejects (firewalld's shape).
const NFT_JUMP_TO_REJECT: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "fw", "handle": 1}}, {"chain": {"family": "inet", "table": "fw", "name": "zones", "handle": 1}}, {"chain": {"family": "inet", "table": "fw", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}, {"rule": {"family": "inet", "table": "fw", "chain": "zones", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 23}}, {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]}}, {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 5, "expr": [{"jump": {"target": "zones"}}]}}]}"#;

/// Policy accept with accept rules only (a NAT box's input chain): counted, but not filtering.
const NFT_ACCEPT_ONLY: &str = r#"{"nftables": [{"table": {"family": "ip", "name": "t", "handle": 1}}, {"chain": {"family": "ip", "table": "t", "name": "in", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}, {"rule": {"family": "ip", "table": "t", "chain": "in", "handle": 2, "expr": [{"accept": null}]}}, {"chain": {"family": "ip", "table": "t", "name": "out", "handle": 3, "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}}, {"rule": {"family": "ip", "table": "t", "chain": "out", "handle": 4, "expr": [{"drop": null}]}}]}"#;

#[test]
fn empty_nft_ruleset_is_no_firewall() {
    let firewall = parse_nft(NFT_EMPTY).unwrap();
    assert_eq!(firewall, Firewall { backend: FirewallBackend::Nftables, active: false, rules: 0, default_deny: false });
}

#[test]
fn nft_policy_drop_input_chain() {
    let firewall = parse_nft(NFT_POLICY_DROP).unwrap();
    assert_eq!(firewall, Firewall { backend: FirewallBackend::Nftables, active: true, rules: 4, default_deny: true });
}

#[test]
fn nft_jump_to_a_rejecting_chain_filters() {
    let firewall = parse_nft(NFT_JUMP_TO_REJECT).unwrap();
    assert_eq!(firewall, Firewall { backend: FirewallBackend::Nftables, active: true, rules: 2, default_deny: false });
}

#[test]
fn nft_accept_rules_only_do_not_filter() {
    let firewall = parse_nft(NFT_ACCEPT_ONLY).unwrap();
    assert_eq!(firewall, Firewall { backend: FirewallBackend::Nftables, active: false, rules: 1, default_deny: false });
}

#[test]
fn nft_garbage_is_an_error() {
    assert!(parse_nft("").is_err());
    assert!(parse_nft("{\"x\": 1}").is_err());
    assert!(parse_nft("[1, 2").is_err());
    // Items of the wrong shape are skipped, not trusted.
    let odd = r#"{"nftables": [1, "x", {"chain": 3}, {"rule": {"family": 1}}, {"chain": {"family": "inet"}}]}"#;
    assert_eq!(parse_nft(odd).unwrap().rules, 0);
    // Deep nesting does not overflow the stack.
    let deep = format!(
        r#"{{"nftables": [{{"rule": {{"family": "inet", "table": "t", "chain": "c", "expr": {}1{}}}}}]}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert!(parse_nft(&deep).is_ok());
}

/// `iptables-save` with ufw-style policy DROP.
const IPTABLES_DROP: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Mon Nov 30 06:00:00 2026
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
# Completed on Mon Nov 30 06:00:00 2026
";

/// Policy ACCEPT, a user chain that rejects; a nat table whose rules do not count.
const IPTABLES_USER_CHAIN: &str = "\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
-A INPUT -j DROP
COMMIT
*filter
:INPUT ACCEPT [10:800]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:blocklist - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -j blocklist
-A blocklist -s 198.18.0.9/32 -j REJECT --reject-with icmp-port-unreachable
COMMIT
";

#[test]
fn iptables_policy_drop() {
    assert_eq!(
        parse_iptables_save(IPTABLES_DROP),
        Firewall { backend: FirewallBackend::Iptables, active: true, rules: 3, default_deny: true }
    );
}

#[test]
fn iptables_user_chain_that_rejects() {
    assert_eq!(
        parse_iptables_save(IPTABLES_USER_CHAIN),
        Firewall { backend: FirewallBackend::Iptables, active: true, rules: 2, default_deny: false }
    );
}

#[test]
fn iptables_nothing_loaded() {
    assert_eq!(
        parse_iptables_save(""),
        Firewall { backend: FirewallBackend::Iptables, active: false, rules: 0, default_deny: false }
    );
    // A loop between user chains terminates.
    let looped = "*filter\n:INPUT ACCEPT\n-A INPUT -j a\n-A a -j b\n-A b -j a\nCOMMIT\n";
    assert!(!parse_iptables_save(looped).active);
}

fn limits() -> Limits {
    Limits { timeout: Duration::from_secs(5), max_stdout: 1 << 20 }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[tokio::test]
async fn missing_tools_are_unknown_with_reason() {
    let reading = collect(&argv(&["/nonexistent/nft"]), &argv(&["/nonexistent/iptables-save"]), limits()).await;
    assert_eq!(reading, Reading::unknown("neither nft nor iptables-save is installed"));
}

#[cfg(unix)]
#[tokio::test]
async fn refused_nft_falls_back_to_iptables() {
    let script = format!("printf '%s' '{IPTABLES_DROP}'");
    let reading = collect(
        &argv(&["sh", "-c", "echo 'Operation not permitted (you must be root)' >&2; exit 1"]),
        &argv(&["sh", "-c", &script]),
        limits(),
    )
    .await;
    assert_eq!(reading.value().map(|f| f.backend), Some(FirewallBackend::Iptables));
    assert_eq!(reading.value().map(|f| f.rules), Some(3));

    let reading = collect(
        &argv(&["sh", "-c", "echo 'Operation not permitted (you must be root)' >&2; exit 1"]),
        &argv(&["/nonexistent/iptables-save"]),
        limits(),
    )
    .await;
    let Reading::Unknown(reason) = reading else { panic!("expected unknown: {reading:?}") };
    assert!(reason.contains("Operation not permitted"), "{reason}");
}

/// The real `nft`, in a network namespace of the test's own (`unshare -n`), never the host's
/// ruleset. Skipped (returns early) where namespaces cannot be made or nft is missing.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn real_nft_in_a_private_network_namespace() {
    let probe = std::process::Command::new("unshare").args(["-n", "nft", "--version"]).output();
    if !probe.is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: no unshare -n or no nft here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.nft");
    std::fs::write(
        &rules,
        "table inet filter {\n  chain input {\n    type filter hook input priority 0; policy drop;\n    \
         iif \"lo\" accept\n    tcp dport 22 accept\n  }\n}\n",
    )
    .unwrap();
    // The namespace lives as long as this one command: load the rules, then run `nft "$@"`.
    let script = format!("nft -f '{}' && exec nft \"$@\"", rules.display());
    let nft = argv(&["unshare", "-n", "sh", "-c", &script, "nft"]);
    let reading = collect(&nft, &argv(&["/nonexistent/iptables-save"]), limits()).await;
    assert_eq!(
        reading,
        Reading::Value(Firewall { backend: FirewallBackend::Nftables, active: true, rules: 2, default_deny: true })
    );

    let empty = argv(&["unshare", "-n", "nft"]);
    let reading = collect(&empty, &argv(&["/nonexistent/iptables-save"]), limits()).await;
    assert_eq!(reading.value().map(|f| (f.active, f.rules)), Some((false, 0)));
}
