//! The load tools keep working: `tether-loadtest` measures a relay through Tether end to end
//! (`tether forward` → gateway → `amt-sim --expose` → a TCP echo), and its scenarios (idle, storm,
//! bulk, latency, agents) run against a gateway with small counts and report what they saw. Seconds long
//! each; the full side-by-side bench is `loadtest/bench.sh`, the scenario figures at scale are in
//! docs/benchmarks.md.

use std::process::Command;
use std::time::Duration;

use e2e::process::{bin, free_local_port, run};
use e2e::remote::pc;
use e2e::{Gateway, Process};
use serde_json::Value;

#[test]
fn technician_measures_round_trips_and_throughput_through_an_exposed_device_port() {
    let echo_port = free_local_port();
    let echo_addr = format!("127.0.0.1:{echo_port}");
    let mut echo = Process::spawn(
        "tether-loadtest echo",
        Command::new(bin("tether-loadtest")).args(["echo", "--listen", &echo_addr]),
    );
    echo.wait_for_log("echo listening on", Duration::from_secs(10));
    let gateway = Gateway::start(&[]);
    let expose = format!("7={echo_addr}");
    let (uuid, _sim) = pc(&gateway, &["--expose", &expose, "--window", "262144", "--adjust-step", "65536"]);
    let forward = gateway.forward(uuid, 7);
    let target = forward.addr().to_string();

    let out = run(Command::new(bin("tether-loadtest")).args(["rtt", "--connect", &target, "--count", "300", "--json"]));
    let rtt: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(rtt["count"], 300, "{rtt}");
    let (p50, p99) = (rtt["p50_us"].as_f64().unwrap(), rtt["p99_us"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50, "{rtt}");
    eprintln!("FIGURE 64-byte round trip through Tether: p50 {p50} µs, p99 {p99} µs");

    let out = run(Command::new(bin("tether-loadtest")).args(["push", "--connect", &target, "--mib", "16", "--json"]));
    let push: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(push["bytes"], 16 * 1024 * 1024, "{push}");
    eprintln!("FIGURE 16 MiB each way at once through Tether: {} bit/s", push["bits_per_second"]);
}

/// `tether-loadtest SCENARIO` against `gateway` with its device flags, `--json` and `args`;
/// panics unless it exits with success; the report.
fn scenario(gateway: &Gateway, name: &str, args: &[&str]) -> Value {
    let (user, password) = gateway.mps_credentials();
    let mut command = Command::new(bin("tether-loadtest"));
    command
        .arg(name)
        .args(["--gateway", &gateway.cira_addr().to_string(), "--username", &user, "--password", &password])
        .arg("--ca")
        .arg(gateway.ca_path())
        .args(["--json", "--timeout", "120"])
        .args(args);
    let out = run(&mut command);
    let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["scenario"], name, "{report}");
    assert_eq!(report["result"], "ok", "{report}");
    report
}

/// The technician-side flags of bulk and latency: `tether forward` on the gateway's data dir.
fn technician(gateway: &Gateway) -> [String; 4] {
    [
        "--data-dir".into(),
        gateway.data_dir().display().to_string(),
        "--tether".into(),
        bin("tether").display().to_string(),
    ]
}

#[test]
fn operator_holds_an_idle_fleet_and_reads_the_gateways_cost_per_tunnel() {
    let gateway = Gateway::start(&[]);
    let pid = gateway.pid().to_string();
    // Two workers, so that the split and the sum are exercised.
    let args = ["--count", "200", "--hold", "3", "--per-worker", "120", "--gateway-pid", &pid];
    let report = scenario(&gateway, "idle", &args);
    assert_eq!(report["admitted"], 200, "{report}");
    assert_eq!(report["workers"], 2, "{report}");
    assert_eq!(report["failures"]["auth"], 0, "{report}");
    let seconds = report["admitted_per_second"].as_array().expect("samples");
    assert!(seconds.len() >= 3 && seconds.last() == Some(&Value::from(200)), "one sample a second: {report}");
    assert!(report["handshakes_per_second_peak"].as_u64() >= Some(1), "{report}");
    let g = &report["gateway"];
    let per_tunnel = g["rss_per_tunnel_kib"].as_f64().expect("RSS per tunnel");
    assert!(per_tunnel > 0.0 && per_tunnel < 1024.0, "{report}");
    assert!(g["cpu_ramp_seconds"].as_f64() > Some(0.0), "{report}");
    assert!(report["slab_kib_hold"].as_u64() > Some(0), "{report}");
    eprintln!("FIGURE idle 200: {per_tunnel:.1} KiB per tunnel, {} handshakes/s", report["handshakes_per_second_mean"]);
}

#[test]
fn every_device_comes_back_after_a_network_blip() {
    let gateway = Gateway::start(&[]);
    let pid = gateway.pid().to_string();
    let report = scenario(&gateway, "storm", &["--count", "200", "--gateway-pid", &pid]);
    assert_eq!(report["trigger"], "blip", "{report}");
    assert_eq!((report["back"].as_u64(), report["gave_up"].as_u64()), (Some(200), Some(0)), "{report}");
    let after = report["all_back_after_seconds"].as_f64().expect("a time");
    assert!(after > 0.0, "{report}");
    assert!(report["handshakes"].as_u64() >= Some(200), "every device dialled again: {report}");
    assert!(report["gateway_cpu_seconds"].as_f64() > Some(0.0), "{report}");
    assert!(gateway.metrics_text().contains("tether_"), "the gateway still answers");
    eprintln!("FIGURE storm 200: all back in {after:.2}s, {} resumed", report["resumed"]);
}

#[test]
fn technician_pushes_bulk_streams_through_two_devices() {
    let gateway = Gateway::start(&[]);
    let pid = gateway.pid().to_string();
    let mut args: Vec<String> = ["--streams", "2", "--mib", "8", "--gateway-pid", &pid].map(String::from).to_vec();
    args.extend(technician(&gateway));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = scenario(&gateway, "bulk", &args);
    let streams = report["per_stream"].as_array().expect("streams");
    assert_eq!(streams.len(), 2, "{report}");
    for stream in streams {
        assert_eq!(stream["bytes_sent"], 8 * 1024 * 1024, "{report}");
        assert_eq!(stream["bytes_received"], 8 * 1024 * 1024, "exactly what was sent: {report}");
        assert!(stream["seconds"].as_f64() > Some(0.0), "{report}");
    }
    assert!(report["aggregate_mib_per_second_each_way"].as_f64() > Some(0.0), "{report}");
    assert!(report["gateway_cpu_seconds_per_gb"].as_f64() > Some(0.0), "{report}");
    eprintln!("FIGURE bulk 2 x 8 MiB: {} MiB/s each way", report["aggregate_mib_per_second_each_way"]);
}

#[test]
fn sol_sized_round_trips_beside_idle_devices() {
    let gateway = Gateway::start(&[]);
    let mut args: Vec<String> = ["--busy", "2", "--idle", "100", "--size", "1-64", "--count", "300", "--warmup", "20"]
        .map(String::from)
        .to_vec();
    args.extend(technician(&gateway));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = scenario(&gateway, "latency", &args);
    assert_eq!((report["busy"].as_u64(), report["idle"].as_u64()), (Some(2), Some(100)), "{report}");
    assert_eq!(report["samples"], 600, "{report}");
    let (p50, p99, max) =
        (report["p50_us"].as_f64().unwrap(), report["p99_us"].as_f64().unwrap(), report["max_us"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50 && max >= p99, "{report}");
    assert_eq!(report["per_loop"].as_array().map(Vec::len), Some(2), "{report}");
    eprintln!("FIGURE latency 2 busy beside 100 idle, 1-64 bytes: p50 {p50} µs, p99 {p99} µs");
}

#[test]
fn devices_resume_their_tls_sessions_after_the_gateway_restarts() {
    const DEVICES: f64 = 100.0;
    const FULL: &str = "tether_tls_handshakes_total{kind=\"full\"}";
    const RESUMED: &str = "tether_tls_handshakes_total{kind=\"resumed\"}";
    const ACTIVE: &str = "tether_tunnels_active{kind=\"cira\"}";
    let mut gateway = Gateway::start(&[]);
    let base = uuid::Uuid::new_v4().to_string();
    let _fleet = e2e::Sim::start(
        &gateway,
        &[
            "--uuid",
            &base,
            "--count",
            "100",
            "--resume-sessions",
            "--reconnect-min-ms",
            "200",
            "--reconnect-max-ms",
            "1000",
        ],
    );
    gateway.wait_for_metric(ACTIVE, DEVICES, Duration::from_secs(60));
    assert_eq!(gateway.metrics().value(FULL), DEVICES, "the first connections are full handshakes");

    // The ticket keys are in the data dir: the restarted gateway opens the tickets it issued.
    gateway.restart();
    gateway.wait_for_metric(ACTIVE, DEVICES, Duration::from_secs(60));
    let metrics = gateway.metrics();
    let (full, resumed) = (metrics.value(FULL), metrics.value(RESUMED));
    eprintln!("FIGURE after a restart, {DEVICES} devices came back with {resumed} resumed and {full} full handshakes");
    assert_eq!(resumed + full, DEVICES, "one handshake per device after the restart");
    assert!(
        resumed >= DEVICES * 0.9,
        "only {resumed} of {DEVICES} devices resumed their TLS session after the restart"
    );
}

#[test]
fn a_nat_that_held_a_thousand_devices_brings_them_all_back_at_once_after_a_restart() {
    const DEVICES: f64 = 1000.0;
    const ACTIVE: &str = "tether_tunnels_active{kind=\"cira\"}";
    const RATE: &str = "tether_connections_rejected_total{reason=\"connection_rate\"}";
    const PENDING: &str = "tether_connections_rejected_total{reason=\"pending_per_source\"}";
    const BURST: f64 = 20.0;
    let redial = ["--reconnect-min-ms", "200", "--reconnect-max-ms", "1000"];
    // First run: a burst big enough for the whole NAT, so that the thousand get in quickly.
    let mut gateway = Gateway::start_with_config("[limits]\nconnection_burst_per_source = 5000\n", &[]);
    let base = uuid::Uuid::new_v4().to_string();
    let mut args = vec!["--uuid", &base, "--count", "1000", "--resume-sessions"];
    args.extend(redial);
    let _nat = e2e::Sim::start(&gateway, &args);
    gateway.wait_for_metric(ACTIVE, DEVICES, Duration::from_secs(120));

    // Then strict limits: one connection a second per source after a burst of 20, and at most
    // 50 connections of one source waiting for authentication. Without the counts remembered in
    // the store, the thousand would need 16 minutes to come back.
    let strict = format!(
        "[apf]\nmax_pending_per_source = 50\n[limits]\nconnection_burst_per_source = {BURST}\nconnections_per_second_per_source = 1\n"
    );
    std::fs::write(gateway.data_dir().join("tether.toml"), strict).unwrap();
    let restarted = std::time::Instant::now();
    gateway.restart();
    gateway.wait_for_metric(ACTIVE, DEVICES, Duration::from_secs(90));
    let back = restarted.elapsed();
    let metrics = gateway.metrics();
    let (refused, pending) = (metrics.get(RATE).unwrap_or(0.0), metrics.get(PENDING).unwrap_or(0.0));
    eprintln!(
        "FIGURE 1,000 devices behind one address were all back {:.1} s after the restart ({refused} refused for the rate, {pending} for the per-source pending cap)",
        back.as_secs_f64()
    );
    assert_eq!(refused, 0.0, "a source that held 1,000 tunnels was refused for its rate while bringing them back");
    assert_eq!(pending, 0.0, "a source that held 1,000 tunnels was held to the per-source pending cap of 50");

    // A source the gateway never saw keeps the small burst.
    let other = uuid::Uuid::new_v4().to_string();
    let mut args = vec!["--uuid", &other, "--count", "100"];
    args.extend(redial);
    let _newcomer = e2e::Sim::start_from(&gateway, "127.0.0.2", &args);
    gateway.wait_for_metric_at_least(RATE, 1.0, Duration::from_secs(30));
    let admitted = gateway.wait_for_metric_at_least(ACTIVE, DEVICES + BURST, Duration::from_secs(30)) - DEVICES;
    std::thread::sleep(Duration::from_secs(2));
    let admitted_later = gateway.metrics().value(ACTIVE) - DEVICES;
    assert!(
        admitted_later <= BURST + 10.0,
        "an unknown source got {admitted_later} (first {admitted}) of its 100 devices in at once, past its burst of {BURST}"
    );
}

#[test]
fn operator_measures_how_fast_agents_flush_their_spools_into_the_store() {
    let gateway = Gateway::start(&[]);
    gateway.operator_with_stdin(&["user", "add", "bench", "--password-stdin"], "bench-password-long\n");
    let out = gateway.operator(&[
        "subscriber",
        "register",
        "--owner",
        "bench",
        "--name",
        "Bench Ltd",
        "--email",
        "bench@example.com",
        "--max-machines",
        "30",
    ]);
    let subscriber = out.split_whitespace().nth(1).unwrap_or_else(|| panic!("no subscriber id in {out:?}"));
    let tokens_out = gateway.operator(&["machine", "enroll", subscriber, "--count", "30"]);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, &tokens_out).unwrap();
    assert_eq!(tokens_out.lines().filter(|l| l.starts_with("tte_")).count(), 30, "{tokens_out}");

    let pid = gateway.pid().to_string();
    let agents = dir.path().join("agents");
    let flags = |count: &str, tokens: Option<&std::path::Path>| {
        let mut command = Command::new(bin("tether-loadtest"));
        command
            .args(["agents", "--gateway", &gateway.agent_addr().to_string(), "--ca"])
            .arg(gateway.ca_path())
            .arg("--dir")
            .arg(&agents)
            .args(["--count", count, "--reports", "20", "--hold", "2", "--gateway-pid", &pid, "--json"])
            .args(["--timeout", "120"]);
        if let Some(tokens) = tokens {
            command.arg("--tokens").arg(tokens);
        }
        command
    };
    let out = run(&mut flags("30", Some(&tokens)));
    let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((report["scenario"].as_str(), report["result"].as_str()), (Some("agents"), Some("ok")), "{report}");
    assert_eq!((report["enrolled"].as_u64(), report["connected"].as_u64()), (Some(30), Some(30)), "{report}");
    // 20 spooled each, and each one's first heartbeat on connecting.
    assert_eq!(report["acknowledged"], 30 * 21, "{report}");
    let rate = report["durable_reports_per_second"].as_f64().unwrap();
    assert!(rate > 0.0, "{report}");
    assert!(report["gateway"]["cpu_flush_seconds"].as_f64() > Some(0.0), "{report}");
    eprintln!("FIGURE agents 30 x 21 reports: {rate:.0} durable reports/s");

    // Again with the same dir: the agents are enrolled already and spend no token.
    let again: Value = serde_json::from_str(run(&mut flags("30", None)).trim()).unwrap();
    assert_eq!((again["result"].as_str(), again["enrolled"].as_u64()), (Some("ok"), Some(0)), "{again}");
    // One more agent and no token for it: refused before any work, and told how to get one.
    let output = flags("31", None).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("tether machine enroll"), "{stderr}");
}
