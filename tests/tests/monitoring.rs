//! An SRE watches Tether from Prometheus and Grafana with what ships in `deploy/`: Debian's
//! Prometheus scrapes two live gateways on loopback and loads `deploy/prometheus/tether-alerts.yml`;
//! one gateway gets simulated AMT devices, a technician's relay, a device with a wrong password
//! and two boards sharing a UUID, the other is stopped. Then every panel of
//! `deploy/grafana/tether-gateway.json` and every rule's expression is evaluated through
//! Prometheus's HTTP API and returns a series, and the alerts this run should raise fire.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::prometheus::{repo_file, Prometheus};
use e2e::{wait_for, Gateway, Sim};
use serde_json::Value;
use uuid::Uuid;

/// Every PromQL query of the dashboard's panels (rows' nested panels included): (title, expr).
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.to_string(), expr.to_string()));
                }
            }
            walk(panel["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), &mut out);
    out
}

/// The rule's expression with each comparison made a `bool` one, so that it answers a series
/// whether or not the alert's condition holds (the rules are written with each comparison
/// operator between single spaces).
fn unconditional(expr: &str) -> String {
    let mut expr = expr.to_string();
    for op in [">=", "<=", "==", "!=", ">", "<"] {
        expr = expr.replace(&format!(" {op} "), &format!(" {op} bool "));
    }
    expr
}

/// The rules file as shipped, with every `for:` cut to 0 s: the alerts this run raises fire at
/// the next evaluation instead of after minutes.
fn rules_without_for(text: &str) -> String {
    text.lines()
        .map(|line| match line.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: 0s", &line[..line.len() - line.trim_start().len()]),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends `bytes` through a relay to the device's echo port and reads them back.
fn echo_through(addr: std::net::SocketAddr, bytes: usize) {
    let mut stream = TcpStream::connect(addr).expect("connecting to the relay");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let sent: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    stream.write_all(&sent).unwrap();
    let mut back = vec![0u8; bytes];
    stream.read_exact(&mut back).expect("the echo");
    assert_eq!(back, sent, "the relay changed the bytes");
}

#[test]
fn prometheus_evaluates_every_dashboard_panel_and_alert_rule_against_a_live_gateway() {
    let dashboard_text = std::fs::read_to_string(repo_file("deploy/grafana/tether-gateway.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    let panels = panel_queries(&dashboard);
    assert!(panels.len() >= 12, "the dashboard has only {} queries", panels.len());
    let rules_text = std::fs::read_to_string(repo_file("deploy/prometheus/tether-alerts.yml")).unwrap();

    let gateway = Gateway::start_with_config("[devices]\nliveness_timeout_ms = 1000\n", &[]);
    let mut second = Gateway::start(&[]);
    let prometheus =
        Prometheus::start(&[gateway.metrics_addr(), second.metrics_addr()], &rules_without_for(&rules_text));
    let started = Instant::now();

    // Two devices, one of them relayed to by a technician.
    let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
    let _one = Sim::start(&gateway, &["--uuid", &one.to_string()]);
    let _two = Sim::start(&gateway, &["--uuid", &two.to_string()]);
    wait_for("both devices to connect", Duration::from_secs(30), || {
        gateway.is_connected(one) && gateway.is_connected(two)
    });
    let forward = gateway.forward(one, 5900);
    echo_through(forward.addr(), 64 * 1024);
    // A device with a wrong password that keeps retrying, and two boards sharing a UUID.
    let _wrong = Sim::start_with_password(
        &gateway,
        "not-the-password",
        &["--uuid", &Uuid::new_v4().to_string(), "--reconnect-min-ms", "100", "--reconnect-max-ms", "300"],
    );
    let shared = Uuid::new_v4();
    let clone_args = ["--uuid", &shared.to_string(), "--reconnect-min-ms", "200", "--reconnect-max-ms", "500"];
    let _board = Sim::start(&gateway, &clone_args);
    wait_for("the first board to connect", Duration::from_secs(30), || gateway.is_connected(shared));
    let _clone = Sim::start(&gateway, &clone_args);
    // The second gateway was scraped; now it is down.
    wait_for("Prometheus to scrape both gateways", Duration::from_secs(30), || {
        prometheus.targets().iter().filter(|(_, health)| health == "up").count() == 2
    });
    second.stop();

    let expected =
        ["TetherAdmissionFailureRatioHigh", "TetherAuthFailuresHigh", "TetherGatewayDown", "TetherUuidConflictsRising"];
    let mut firing = Vec::new();
    wait_for("the alerts of this run to fire", Duration::from_secs(120), || {
        firing = prometheus.firing();
        expected.iter().all(|name| firing.iter().any(|f| f == name))
    });
    println!(
        "FIGURE alerts firing {:.0} s after Prometheus started: {}",
        started.elapsed().as_secs_f64(),
        firing.join(", ")
    );
    for quiet in
        ["TetherStoreErrors", "TetherStoreWritesDropped", "TetherFleetInstanceMissing", "TetherHandshakeP99High"]
    {
        assert!(!firing.iter().any(|f| f == quiet), "{quiet} fired in a healthy run: {:?}", prometheus.alerts());
    }

    let mut empty = Vec::new();
    for (title, expr) in &panels {
        if prometheus.query(expr).is_empty() {
            empty.push(format!("panel {title:?}: {expr}"));
        }
    }
    let rules = prometheus.rules();
    let names: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    for required in [
        "TetherGatewayDown",
        "TetherAdmissionFailureRatioHigh",
        "TetherHandshakeP99High",
        "TetherStoreErrors",
        "TetherFleetInstanceMissing",
        "TetherUuidConflictsRising",
        "TetherAuthFailuresHigh",
    ] {
        assert!(names.contains(&required), "no rule {required} in deploy/prometheus/tether-alerts.yml: {names:?}");
    }
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or_default();
        assert_eq!(rule["health"], "ok", "rule {name} does not evaluate: {}", rule["lastError"]);
        let expr = unconditional(rule["query"].as_str().unwrap_or_default());
        if prometheus.query(&expr).is_empty() {
            empty.push(format!("rule {name}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "queries that return no series:\n{}", empty.join("\n"));
    println!(
        "FIGURE {} dashboard queries and {} rules evaluated through Prometheus, each with a series",
        panels.len(),
        rules.len()
    );
}

#[test]
fn the_rule_rewrites_of_this_test_do_what_they_say() {
    assert_eq!(unconditional("sum(x) > 0.5 and sum(y) >= 5"), "sum(x) > bool 0.5 and sum(y) >= bool 5");
    assert_eq!(unconditional("up{job=\"tether\"} == 0"), "up{job=\"tether\"} == bool 0");
    assert_eq!(rules_without_for("  - alert: A\n    for: 5m\n    expr: x"), "  - alert: A\n    for: 0s\n    expr: x");
}

#[test]
fn the_shipped_rules_and_config_pass_promtool_and_its_rule_unit_tests() {
    let promtool = |args: &[&str]| {
        let output = std::process::Command::new("promtool")
            .args(args)
            .current_dir(repo_file("deploy/prometheus"))
            .output()
            .expect("promtool (Debian's prometheus package; scripts/install-test-deps.sh installs it)");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "promtool {args:?}:\n{text}");
        text
    };
    let checked = promtool(&["check", "rules", "tether-alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    promtool(&["test", "rules", "tether-alerts.test.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
}
