//! End-to-end scenarios of the hardened relay core (issue 10), named after what a user or an
//! attacker does: device identity (impostors, silent devices, device policies), admission before
//! auth (crowds of silent connections), and technicians (token storms, technicians who stop
//! reading, revoked and read-only tokens). Each starts the real `tether` and `amt-sim` binaries
//! (release build) on loopback; attackers use other loopback addresses (127.0.0.2, 127.0.1.x, …)
//! as their sources.
//!
//! The configuration keys, CLI commands and metric series used here are those of the issue's
//! shared plan; a failure names the one the gateway does not offer (yet).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use e2e::api::{percentile, probe, runtime, server_name_for, tls_config, ApiClient, WriteStop};
use e2e::attack::{
    cpu_seconds, loopback_sources, open_files_limit, raise_fd_limit, token_storm, with_fd_limit, with_soft_fd_limit,
    Silence, SilentCrowd, StormLimits,
};
use e2e::metrics::{mib, RssSampler};
use e2e::process::{operator_in, require_sim_flag, MPS_USER};
use e2e::{poll_until, wait_for, Gateway, Sim};
use uuid::Uuid;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The spec's default `[devices] liveness_timeout_ms`.
const DEFAULT_LIVENESS: Duration = Duration::from_millis(3000);

const UUID_CONFLICTS: &str = "tether_connections_rejected_total{reason=\"uuid_conflict\"}";
const REPLACED: &str = "tether_tunnels_closed_total{kind=\"cira\",reason=\"replaced\"}";
const CHANNELS_ACTIVE: &str = "tether_channels_active";
const PENDING: &str = "tether_pending_connections";

/// The `remote_addr` of `uuid`'s live tunnel, if `devices --json` lists it as connected.
fn connected_remote(gateway: &Gateway, uuid: Uuid) -> Option<String> {
    let device = gateway.device(uuid)?;
    (device["connected"] == true).then(|| device["remote_addr"].as_str().unwrap_or_default().to_string())
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

#[test]
fn impostor_with_the_mps_password_cannot_take_a_live_devices_uuid() {
    require_sim_flag("--source", "an impostor dialling from another loopback address");
    let gateway = Gateway::start_with_config("[devices]\nliveness_timeout_ms = 1000\n", &[]);
    let uuid = Uuid::new_v4();
    let real = Sim::start(&gateway, &["--uuid", &uuid.to_string()]);
    wait_for("the real device to connect", CONNECT_TIMEOUT, || gateway.is_connected(uuid));
    let real_remote = connected_remote(&gateway, uuid).expect("the real device's remote address");
    assert!(real_remote.starts_with("127.0.0.1:"), "the real device dials from 127.0.0.1, got {real_remote}");

    // The impostor knows the UUID and the gateway-wide MPS account, dials from another address,
    // and keeps retrying as a device does.
    let mut impostor = Sim::start_from(
        &gateway,
        "127.0.0.2",
        &["--uuid", &uuid.to_string(), "--reconnect-min-ms", "300", "--reconnect-max-ms", "600"],
    );
    impostor.wait_for_log("disconnected:", CONNECT_TIMEOUT);
    // A second attempt does not succeed where the first failed.
    wait_for("the impostor's second attempt to end", CONNECT_TIMEOUT, || {
        impostor.count_log_lines("disconnected:") >= 2
    });
    gateway.wait_for_metric_at_least(UUID_CONFLICTS, 1.0, Duration::from_secs(10));

    assert_eq!(
        connected_remote(&gateway, uuid).as_deref(),
        Some(real_remote.as_str()),
        "the real device's tunnel (from {real_remote}) must stay the live one\n{}",
        impostor.tail()
    );
    assert_eq!(
        real.count_log_lines("established: ports"),
        1,
        "the real device was dropped and came back\n{}",
        real.tail()
    );
    assert_eq!(impostor.count_log_lines("established: ports"), 0, "the impostor got a tunnel\n{}", impostor.tail());
    let metrics = gateway.metrics();
    assert_eq!(metrics.value(REPLACED), 0.0, "a live tunnel was replaced");

    // The device record tells the operator what happened, with both addresses.
    let mut record = serde_json::Value::Null;
    let recorded = poll_until(Duration::from_secs(10), || {
        record = gateway.device_record(uuid).unwrap_or_default();
        record["conflict_count"].as_u64().unwrap_or(0) >= 1
    });
    assert!(recorded, "`tether device show {uuid} --json` has no conflict_count >= 1 after the refusals:\n{record:#}");
    let note = record["conflict_note"].as_str().unwrap_or_default();
    assert!(
        note.contains("127.0.0.2") && note.contains("127.0.0.1"),
        "conflict_note must name the impostor's (127.0.0.2) and the live tunnel's (127.0.0.1) addresses: {record:#}"
    );
    assert!(record["last_conflict_at"].is_string(), "no last_conflict_at in {record:#}");
}

#[test]
fn a_device_that_went_silent_is_admitted_again_from_a_new_address() {
    require_sim_flag("--source", "the device's new address after a network change");
    // The default liveness timeout: the figure is what an operator gets out of the box.
    let gateway = Gateway::start(&[]);
    let uuid = Uuid::new_v4();
    let mut old = Sim::start(&gateway, &["--uuid", &uuid.to_string()]);
    wait_for("the device to connect", CONNECT_TIMEOUT, || gateway.is_connected(uuid));

    // The PC loses its network: its TCP connection stays open on the gateway's side, but nothing
    // answers on it any more.
    old.freeze();
    let started = Instant::now();
    let new = Sim::start_from(&gateway, "127.0.0.2", &["--uuid", &uuid.to_string()]);
    let deadline = DEFAULT_LIVENESS + Duration::from_secs(10);
    let mut back_after = None;
    let back = poll_until(deadline, || {
        let admitted = connected_remote(&gateway, uuid).is_some_and(|r| r.starts_with("127.0.0.2:"));
        if admitted {
            back_after = Some(started.elapsed());
        }
        admitted
    });
    assert!(
        back,
        "the device was not admitted from 127.0.0.2 within {deadline:?} (liveness timeout {DEFAULT_LIVENESS:?} + 10 s); \
         the gateway lists it as {:?}\n{}",
        gateway.device(uuid),
        new.tail()
    );
    println!("FIGURE device back after address change: {:.2}s", back_after.unwrap_or_default().as_secs_f64());
    gateway.wait_for_metric_at_least(REPLACED, 1.0, Duration::from_secs(10));
    old.thaw();
    drop(old);
}

#[test]
fn registered_policy_refuses_unknown_uuids() {
    const OWN_PASSWORD: &str = "Own-Passw0rd!";
    let gateway = Gateway::start_with_config("[devices]\npolicy = \"registered\"\n", &[]);
    let known = Uuid::new_v4();
    gateway.operator(&["device", "add", &known.to_string(), "--password", OWN_PASSWORD]);
    let _known = Sim::start_with_password(&gateway, OWN_PASSWORD, &["--uuid", &known.to_string()]);
    wait_for("the registered device to connect with its own password", CONNECT_TIMEOUT, || gateway.is_connected(known));

    // A UUID nobody registered, with the valid gateway-wide MPS account.
    let unknown = Uuid::new_v4();
    let stranger = Sim::start(&gateway, &["--uuid", &unknown.to_string(), "--exit-on-auth-failure"]);
    let status = stranger.wait(CONNECT_TIMEOUT);
    assert!(!status.success(), "an unregistered UUID was not refused at authentication (amt-sim exited {status})");
    gateway.wait_for_metric_at_least(
        "tether_auth_failures_total{reason=\"not_registered\"}",
        1.0,
        Duration::from_secs(10),
    );
    assert!(!gateway.is_connected(unknown), "the unregistered UUID is listed as connected");
    assert!(gateway.is_connected(known), "the registered device lost its tunnel");
}

#[test]
fn pinned_policy_refuses_a_second_credential() {
    const OTHER_USER: &str = "othercustomer";
    const OTHER_PASSWORD: &str = "Other-Passw0rd-2";
    // Two MPS accounts (one per customer): the harness's own and another one.
    let gateway = Gateway::start_with_setup("", &[], |dir| {
        operator_in(dir, &["mps-credentials", "set", OTHER_USER, OTHER_PASSWORD]);
    });
    let accounts = gateway.operator(&["mps-credentials", "list"]);
    assert!(
        accounts.contains(MPS_USER) && accounts.contains(OTHER_USER),
        "`tether mps-credentials list` must show both accounts ({MPS_USER}, {OTHER_USER}):\n{accounts}"
    );

    // The other account is valid: it admits a UUID of its own.
    let theirs = Uuid::new_v4();
    let _theirs = Sim::start_as(&gateway, OTHER_USER, OTHER_PASSWORD, &["--uuid", &theirs.to_string()]);
    wait_for("a device of the other account to connect", CONNECT_TIMEOUT, || gateway.is_connected(theirs));

    // A UUID first admitted with the harness's account (A) is pinned to it.
    let uuid = Uuid::new_v4();
    let mut first = Sim::start(&gateway, &["--uuid", &uuid.to_string()]);
    wait_for("the device to connect with account A", CONNECT_TIMEOUT, || gateway.is_connected(uuid));
    first.process().terminate(Duration::from_secs(20));
    wait_for("the device to be listed as disconnected", Duration::from_secs(10), || !gateway.is_connected(uuid));

    // The same UUID with account B, whose password is right, is refused...
    let claim =
        Sim::start_as(&gateway, OTHER_USER, OTHER_PASSWORD, &["--uuid", &uuid.to_string(), "--exit-on-auth-failure"]);
    let status = claim.wait(CONNECT_TIMEOUT);
    assert!(!status.success(), "a UUID pinned to account A was admitted with account B (amt-sim exited {status})");
    gateway.wait_for_metric_at_least(
        "tether_auth_failures_total{reason=\"credential_mismatch\"}",
        1.0,
        Duration::from_secs(10),
    );
    assert!(!gateway.is_connected(uuid));

    // ...and with account A it is admitted again.
    let _again = Sim::start(&gateway, &["--uuid", &uuid.to_string()]);
    wait_for("the device to come back with account A", CONNECT_TIMEOUT, || gateway.is_connected(uuid));
}

#[test]
fn a_gateway_started_with_a_1024_open_files_limit_raises_its_own() {
    // systemd's default soft limit; the hard limit stays what this process has.
    let (_, hard) = open_files_limit(std::process::id());
    let gateway = Gateway::start_at("127.0.0.1", "", &[], with_soft_fd_limit(1024));
    let (soft, gateway_hard) = open_files_limit(gateway.pid());
    let wanted = hard.min(gateway_hard).min(65_536);
    assert!(
        soft >= wanted,
        "the gateway started under a soft open-files limit of 1024 still has {soft} (hard {gateway_hard}): it should \
         raise its own soft limit (to the hard limit, or at least {wanted}), or 1,024 silent connections lock devices out"
    );
}

const CIRA_ACTIVE: &str = "tether_tunnels_active{kind=\"cira\"}";
const FILE_LIMIT_REFUSALS: &str = "tether_connections_rejected_total{reason=\"file_limit\"}";
const OUT_OF_FILES: &str = "tether_accept_errors_total{kind=\"out_of_files\",listener=\"cira\"}";

/// Writes `bytes` to an echo at `addr` and reads them back.
fn echo_round_trip(addr: std::net::SocketAddr, bytes: usize) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).expect("connecting to tether forward");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).expect("a read timeout");
    let sent: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    tcp.write_all(&sent).expect("writing through the relay");
    let mut back = vec![0; bytes];
    tcp.read_exact(&mut back).expect("reading the echo back through the relay");
    assert!(back == sent, "the echo came back different");
}

#[test]
fn a_gateway_at_its_open_files_limit_refuses_new_devices_and_keeps_the_ones_it_holds() {
    // 400 files, soft and hard: the reserve is a quarter (100), so 300 device connections fit.
    const LIMIT: u64 = 400;
    const CEILING: f64 = 300.0;
    let gateway = Gateway::start_at("127.0.0.1", "", &[], with_fd_limit(LIMIT));
    assert_eq!(open_files_limit(gateway.pid()), (LIMIT, LIMIT));
    let logged = gateway.process().log_line_containing("up to 300 device connections");
    assert!(logged.is_some(), "the gateway did not log its open-files ceiling:\n{}", gateway.process().tail());

    let held = Uuid::new_v4();
    let _held = Sim::start(&gateway, &["--uuid", &held.to_string(), "--count", "250"]);
    gateway.wait_for_metric(CIRA_ACTIVE, 250.0, CONNECT_TIMEOUT);

    // 150 more from other sources than the first 250: only 50 fit.
    let more = Uuid::new_v4();
    let _more = Sim::start_from(&gateway, "127.0.0.3", &["--uuid", &more.to_string(), "--count", "150"]);
    let refused = gateway.wait_for_metric_at_least(FILE_LIMIT_REFUSALS, 1.0, CONNECT_TIMEOUT);
    let mut active = 0.0;
    poll_until(Duration::from_secs(20), || {
        active = gateway.metrics().value(CIRA_ACTIVE);
        active >= CEILING - 10.0
    });
    std::thread::sleep(Duration::from_secs(3));
    let metrics = gateway.metrics();
    active = metrics.value(CIRA_ACTIVE);
    println!(
        "FIGURE at 400 open files: {active} tunnels held, {} connections refused as file_limit (first seen: {refused})",
        metrics.value(FILE_LIMIT_REFUSALS)
    );
    assert!(
        (CEILING - 10.0..=CEILING).contains(&active),
        "{active} tunnels with room for {CEILING} device connections: the gateway should fill its budget, never pass it"
    );
    assert_eq!(metrics.value(OUT_OF_FILES), 0.0, "the reserve should keep accept() itself from running out of files");

    // The tunnels it holds keep working, and the API (technicians' half of the reserve) answers.
    assert!(gateway.is_connected(held), "the first device lost its tunnel");
    let forward = gateway.forward(held, 5900);
    echo_round_trip(forward.addr(), 256 * 1024);
    let connected =
        gateway.devices_json().as_array().map_or(0, |d| d.iter().filter(|d| d["connected"] == true).count());
    assert!(connected as f64 >= CEILING - 10.0, "the API lists {connected} connected devices");
}

#[test]
fn a_gateway_out_of_files_backs_off_instead_of_spinning() {
    // No reserve: accept() itself meets EMFILE once the crowd has taken every file.
    const LIMIT: u64 = 200;
    let gateway = Gateway::start_at("127.0.0.1", "[limits]\nreserved_files = 0\n", &[], with_fd_limit(LIMIT));
    let device = Uuid::new_v4();
    let _device = Sim::start(&gateway, &["--uuid", &device.to_string()]);
    wait_for("the device to connect", CONNECT_TIMEOUT, || gateway.is_connected(device));

    let mut crowd = SilentCrowd::new();
    let opened =
        crowd.open(&Silence::Tcp, gateway.cira_addr(), &loopback_sources([0, 3], 50), 300, 64, CONNECT_TIMEOUT);
    // Connections past the limit wait in the kernel's backlog: connect() succeeds for them all.
    assert_eq!(opened.ok, 300, "{opened:?}");
    std::thread::sleep(Duration::from_secs(1));
    let (cpu_before, started) = (cpu_seconds(gateway.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(4));
    let cpu = cpu_seconds(gateway.pid()) - cpu_before;
    let elapsed = started.elapsed().as_secs_f64();
    println!("FIGURE out of files with 300 silent connections: gateway CPU {cpu:.2}s in {elapsed:.1}s");
    assert!(
        cpu < 0.5 * elapsed,
        "the gateway used {cpu:.2}s of CPU in {elapsed:.1}s out of files: its accept loop spins"
    );
    assert!(gateway.is_connected(device), "the device lost its tunnel while the gateway was out of files");

    crowd.close_all();
    let errors = gateway.wait_for_metric_at_least(OUT_OF_FILES, 1.0, CONNECT_TIMEOUT);
    println!("FIGURE failed accepts counted as out_of_files: {errors}");
    // Once files are free again, new devices get in.
    let late = Uuid::new_v4();
    let _late = Sim::start(&gateway, &["--uuid", &late.to_string()]);
    wait_for("a new device to connect after the crowd left", CONNECT_TIMEOUT, || gateway.is_connected(late));
}

#[test]
fn two_thousand_silent_connections_do_not_keep_a_good_device_out() {
    const EACH: usize = 1000;
    const RSS_SLACK_KIB: u64 = 16 * 1024;
    // 2,000 connections here and as many sockets in the gateway, plus its own.
    raise_fd_limit(8192);
    let gateway = Gateway::start(&[]);
    let (soft, _) = open_files_limit(gateway.pid());
    assert!(soft >= 4096, "the gateway may open only {soft} files: too few for {} connections", 2 * EACH);

    let warm_up = Uuid::new_v4();
    let _warm_up = Sim::start(&gateway, &["--uuid", &warm_up.to_string()]);
    wait_for("the warm-up device to connect", CONNECT_TIMEOUT, || gateway.is_connected(warm_up));
    let rss_before = gateway.rss_kib();

    // 1,000 TLS connections that stop after the handshake, then 1,000 plain TCP connections
    // that never start it (the TLS handshake timeout, 10 s, runs from here: be quick).
    let sources = loopback_sources([0, 1], 250);
    let mut crowd = SilentCrowd::new();
    let tls = Silence::Tls(tls_config(&gateway.ca_path(), &[]), server_name_for(gateway.cira_addr()));
    let tls_opened = crowd.open(&tls, gateway.cira_addr(), &sources, EACH, 64, Duration::from_secs(90));
    let tcp_opened = crowd.open(&Silence::Tcp, gateway.cira_addr(), &sources, EACH, 256, Duration::from_secs(30));
    println!(
        "FIGURE {EACH} silent TLS connections opened in {:.2}s, {EACH} silent TCP in {:.2}s, from {} sources",
        tls_opened.elapsed.as_secs_f64(),
        tcp_opened.elapsed.as_secs_f64(),
        sources.len()
    );
    assert_eq!(tls_opened.ok, EACH, "silent TLS connections that failed: {tls_opened:?}");
    assert_eq!(tcp_opened.ok, EACH, "silent TCP connections that failed: {tcp_opened:?}");
    let rss_open = gateway.rss_kib();
    if let Some(pending) = gateway.metrics().get(PENDING) {
        println!("FIGURE {PENDING} with the crowd open: {pending}");
    }

    // A good device gets in while they are open.
    let good = Uuid::new_v4();
    let started = Instant::now();
    let _good = Sim::start(&gateway, &["--uuid", &good.to_string()]);
    let mut open_when_admitted = 0;
    let admitted = poll_until(Duration::from_secs(10), || {
        let admitted = gateway.is_connected(good);
        if admitted {
            open_when_admitted = crowd.still_open();
        }
        admitted
    });
    assert!(
        admitted,
        "a good device was not admitted within 10 s while {} silent connections were open",
        crowd.still_open()
    );
    println!(
        "FIGURE good device admitted in {:.2}s with {open_when_admitted} silent connections open",
        started.elapsed().as_secs_f64()
    );
    assert!(
        open_when_admitted >= 2 * EACH * 95 / 100,
        "only {open_when_admitted} of {} silent connections were still open when the device got in \
         ({} closed by the gateway): the test proved little",
        2 * EACH,
        crowd.closed_by_gateway()
    );

    // Drop them all; the gateway forgets them.
    crowd.close_all();
    let pending_exported = gateway.metrics().get(PENDING).is_some();
    if pending_exported {
        gateway.wait_for_metric(PENDING, 0.0, Duration::from_secs(30));
    } else {
        // Without the gauge, give the gateway a moment to notice the closed sockets.
        std::thread::sleep(Duration::from_secs(3));
    }
    // Freed memory goes back to the system within seconds, not at once: give it up to 30 s.
    let dropped = Instant::now();
    let mut rss_after = gateway.rss_kib();
    poll_until(Duration::from_secs(30), || {
        rss_after = gateway.rss_kib();
        rss_after <= rss_before + RSS_SLACK_KIB
    });
    println!("FIGURE gateway RSS back within 16 MiB after {:.1}s", dropped.elapsed().as_secs_f64());
    println!("FIGURE gateway RSS before 2,000 silent connections: {:.1} MiB", mib(rss_before));
    println!("FIGURE gateway RSS with 2,000 silent connections open: {:.1} MiB", mib(rss_open));
    println!("FIGURE gateway RSS after they were dropped: {:.1} MiB", mib(rss_after));
    assert!(
        rss_after <= rss_before + RSS_SLACK_KIB,
        "the gateway's RSS is {:.1} MiB after the silent connections were dropped, {:.1} MiB more than before them \
         (allowed: 16 MiB)",
        mib(rss_after),
        mib(rss_after.saturating_sub(rss_before))
    );
    assert!(gateway.is_connected(good) && gateway.is_connected(warm_up), "a good device lost its tunnel");
    assert!(pending_exported, "{}", gateway.metrics().absent(PENDING));
}

#[test]
fn memory_comes_back_after_a_fleet_and_a_bulk_transfer_leave() {
    const RSS_SLACK_KIB: u64 = 16 * 1024;
    raise_fd_limit(8192);
    let gateway = Gateway::start(&[]);
    // The tunnels it keeps: 500 devices, settled.
    let kept = Uuid::new_v4();
    let _kept = Sim::start(&gateway, &["--uuid", &kept.to_string(), "--count", "500"]);
    gateway.wait_for_metric(CIRA_ACTIVE, 500.0, CONNECT_TIMEOUT);
    std::thread::sleep(Duration::from_secs(3));
    let idle = gateway.rss_kib();

    // The load: 2,000 more devices from four other sources (each within a source's burst of
    // 500), and 64 MiB through one of the kept ones.
    let mut visiting: Vec<Sim> = (4..8)
        .map(|i| {
            let uuid = Uuid::new_v4().to_string();
            Sim::start_from(&gateway, &format!("127.0.0.{i}"), &["--uuid", &uuid, "--count", "500"])
        })
        .collect();
    gateway.wait_for_metric(CIRA_ACTIVE, 2500.0, Duration::from_secs(90));
    let forward = gateway.forward(kept, 5900);
    for _ in 0..16 {
        echo_round_trip(forward.addr(), 4 * 1024 * 1024);
    }
    let loaded = gateway.rss_kib();
    drop(forward);
    for sim in &mut visiting {
        sim.process().signal("KILL");
    }
    gateway.wait_for_metric(CIRA_ACTIVE, 500.0, Duration::from_secs(60));

    let drained = Instant::now();
    let mut after = gateway.rss_kib();
    poll_until(Duration::from_secs(40), || {
        after = gateway.rss_kib();
        after <= idle + RSS_SLACK_KIB
    });
    println!(
        "FIGURE gateway RSS with 500 tunnels {:.1} MiB; with 2,500 and a 64 MiB echo {:.1} MiB; {:.1} MiB {:.1}s after \
         the 2,000 left",
        mib(idle),
        mib(loaded),
        mib(after),
        drained.elapsed().as_secs_f64()
    );
    assert!(
        after <= idle + RSS_SLACK_KIB,
        "the gateway holds the same 500 tunnels as before the load, but its RSS is {:.1} MiB, {:.1} MiB above its \
         idle figure (allowed: 16 MiB)",
        mib(after),
        mib(after.saturating_sub(idle))
    );
    assert!(gateway.is_connected(kept), "a kept device lost its tunnel");
}

#[test]
fn a_storm_of_wrong_tokens_is_answered_429_while_a_valid_token_keeps_working() {
    const PATH: &str = "/api/v1/devices";
    const SKIP: usize = 100;
    let gateway = Gateway::start(&[]);
    let storm_client = ApiClient::new(&gateway).from_source(ip("127.0.0.3"));
    let valid_client = ApiClient::new(&gateway).from_source(ip("127.0.0.1"));
    // 1,000 requests a second for 5 s: fifty times the per-source rate, and long enough for the
    // valid token to make many requests during it.
    let limits = StormLimits {
        connections: 4,
        max_requests: 5000,
        max_duration: Duration::from_secs(6),
        requests_per_second: Some(1000),
    };
    let rt = runtime();
    let (storm, probes) = rt.block_on(async {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let valid = tokio::spawn(probe(
            valid_client,
            PATH.to_string(),
            gateway.token().to_string(),
            Duration::from_millis(50),
            stopped,
        ));
        let storm = token_storm(&storm_client, PATH, limits).await;
        let _ = stop.send(());
        (storm, valid.await.expect("the valid-token prober panicked"))
    });

    let (limited_after, answered_after) = storm.count_after(SKIP, 429);
    let latencies: Vec<Duration> = probes.iter().map(|p| p.latency).collect();
    println!(
        "FIGURE token storm: {} requests answered ({} failed) in {:.1}s over {} connections; {} answered 429 \
         ({limited_after} of the {answered_after} after the first {SKIP})",
        storm.statuses.len(),
        storm.failures,
        storm.elapsed.as_secs_f64(),
        storm.connections_opened,
        storm.count(429)
    );
    println!(
        "FIGURE valid token during the storm: {} requests, p50 {:.1} ms, p99 {:.1} ms",
        probes.len(),
        percentile(&latencies, 50.0).as_secs_f64() * 1e3,
        percentile(&latencies, 99.0).as_secs_f64() * 1e3
    );

    assert!(
        storm.statuses.len() >= 1000,
        "the storm got only {} answers ({} failures, e.g. {:?}): too few to judge the rate limit",
        storm.statuses.len(),
        storm.failures,
        storm.first_failures
    );
    assert!(
        limited_after * 4 >= answered_after * 3,
        "only {limited_after} of {answered_after} wrong-token requests after the first {SKIP} were answered 429 \
         (the others: {} × 401, {} other); a per-source limit before the token lookup should answer most of them 429",
        storm.statuses[SKIP.min(storm.statuses.len())..].iter().filter(|&&s| s == 401).count(),
        storm.statuses[SKIP.min(storm.statuses.len())..].iter().filter(|&&s| s != 401 && s != 429).count()
    );
    assert_eq!(storm.missing_retry_after, 0, "429 answers without Retry-After");

    assert!(probes.len() >= 10, "the valid token made only {} requests", probes.len());
    let bad: Vec<String> = probes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.status != Ok(200))
        .map(|(i, p)| format!("#{i}: {:?} after {:?}", p.status, p.latency))
        .collect();
    assert!(bad.is_empty(), "the valid token from another source was not served during the storm: {bad:?}");
    gateway.wait_for_metric_at_least("tether_api_rejected_total{reason=\"source_rate\"}", 1.0, Duration::from_secs(5));
}

#[test]
fn a_technician_who_stops_reading_is_dropped_after_the_ping_timeout() {
    const PING_TIMEOUT: Duration = Duration::from_secs(3);
    const CHANNEL_WINDOW_KIB: u64 = 256;
    /// Four windows plus slack for the connection's TLS and WebSocket buffers and the allocator.
    const GROWTH_LIMIT_KIB: u64 = 4 * CHANNEL_WINDOW_KIB + 6 * 1024;
    let gateway = Gateway::start_with_config("[api]\nping_interval_secs = 1\nping_timeout_secs = 3\n", &[]);
    let uuid = Uuid::new_v4();
    let _sim = Sim::start(&gateway, &["--uuid", &uuid.to_string()]);
    wait_for("the device to connect", CONNECT_TIMEOUT, || gateway.is_connected(uuid));
    let client = ApiClient::new(&gateway);
    let rt = runtime();

    // A relay that reads, first: the first relay's allocations are not the stalled one's.
    rt.block_on(async {
        let mut relay =
            client.relay(uuid, 5900, gateway.token()).await.unwrap_or_else(|r| panic!("warm-up relay: {r}"));
        relay.echo(&vec![7u8; 1 << 20], Duration::from_secs(60)).await.expect("the warm-up echo of 1 MiB");
        relay.close().await;
    });
    gateway.wait_for_metric(CHANNELS_ACTIVE, 0.0, Duration::from_secs(10));
    let rss_before = gateway.rss_kib();

    // The technician writes and never reads (so never answers a ping either).
    let sampler = RssSampler::start(gateway.pid(), Duration::from_millis(50));
    let mut relay = rt
        .block_on(client.relay(uuid, 5900, gateway.token()))
        .unwrap_or_else(|r| panic!("the relay did not open: {r}"));
    let written =
        rt.block_on(relay.write_without_reading(64 * 1024, 64 << 20, Duration::from_secs(1), Duration::from_secs(30)));
    println!(
        "FIGURE technician wrote {:.1} MiB before stopping ({:?})",
        written.bytes as f64 / (1 << 20) as f64,
        written.stop
    );
    assert!(
        !matches!(written.stop, WriteStop::MaxBytes | WriteStop::MaxTime),
        "the gateway took {:.1} MiB from a technician who reads nothing, without pushing back ({:?})",
        written.bytes as f64 / (1 << 20) as f64,
        written.stop
    );

    // The gateway drops the technician within the ping timeout (and some seconds).
    let deadline = PING_TIMEOUT + Duration::from_secs(10);
    let dropped = poll_until(deadline.saturating_sub(written.last_progress.elapsed()), || {
        gateway.metrics().get(CHANNELS_ACTIVE) == Some(0.0)
    });
    let dropped_after = written.last_progress.elapsed();
    let peak = sampler.stop();
    println!(
        "FIGURE gateway RSS growth with a technician who stopped reading: {:.1} MiB (peak {:.1} MiB); dropped {:.1}s \
         after the last write",
        mib(peak.saturating_sub(rss_before)),
        mib(peak),
        dropped_after.as_secs_f64()
    );
    assert!(
        peak <= rss_before + GROWTH_LIMIT_KIB,
        "the gateway's RSS grew by {:.1} MiB while a technician stopped reading (allowed {:.1} MiB: 4 channel windows \
         of {CHANNEL_WINDOW_KIB} KiB and 6 MiB of slack)",
        mib(peak.saturating_sub(rss_before)),
        mib(GROWTH_LIMIT_KIB)
    );
    assert!(
        dropped,
        "{CHANNELS_ACTIVE} was still {:?} {:.1}s after the technician's last write (ping timeout {PING_TIMEOUT:?})",
        gateway.metrics().get(CHANNELS_ACTIVE),
        dropped_after.as_secs_f64()
    );
    gateway.wait_for_metric_at_least(
        "tether_relays_closed_total{reason=\"ping_timeout\"}",
        1.0,
        Duration::from_secs(5),
    );
    drop(relay);
}

#[test]
fn revoking_a_token_ends_its_live_relays() {
    const PATH: &str = "/api/v1/devices";
    let gateway = Gateway::start(&[]);
    let uuid = Uuid::new_v4();
    let _sim = Sim::start(&gateway, &["--uuid", &uuid.to_string()]);
    wait_for("the device to connect", CONNECT_TIMEOUT, || gateway.is_connected(uuid));
    let client = ApiClient::new(&gateway);
    let rt = runtime();

    let bob = gateway.create_token("bob", &[]);
    let mut relay =
        rt.block_on(client.relay(uuid, 5900, &bob)).unwrap_or_else(|r| panic!("bob's token opened no relay: {r}"));
    let echo = rt
        .block_on(relay.echo(b"before the revocation", Duration::from_secs(20)))
        .expect("an echo through bob's relay");
    assert_eq!(echo, b"before the revocation");

    gateway.operator(&["token", "revoke", "bob"]);
    let revoked = Instant::now();
    let end = rt.block_on(relay.wait_closed(Duration::from_secs(6)));
    assert!(end.is_some(), "bob's relay was still open 6 s after `tether token revoke bob` (the plan says ~2 s)");
    println!("FIGURE relay closed {:.2}s after its token was revoked ({end:?})", revoked.elapsed().as_secs_f64());
    let after = rt.block_on(client.get(PATH, &bob)).expect("a request with the revoked token");
    assert_eq!(after.status, 401, "a revoked token must get 401 on {PATH}: {}", after.text());
    gateway.wait_for_metric_at_least(
        "tether_relays_closed_total{reason=\"token_revoked\"}",
        1.0,
        Duration::from_secs(5),
    );

    // A read-scope token lists devices but opens no relay.
    let reader = gateway.create_token("reader", &["--scope", "read"]);
    let list = rt.block_on(client.get(PATH, &reader)).expect("a request with the read token");
    assert_eq!(list.status, 200, "a read-scope token must list devices: {}", list.text());
    assert!(list.text().contains(&uuid.to_string()), "the device is missing from the list: {}", list.text());
    match rt.block_on(client.relay(uuid, 5900, &reader)) {
        Ok(relay) => {
            rt.block_on(relay.close());
            panic!("a read-scope token opened a relay");
        }
        Err(refused) => assert_eq!(refused.status, Some(403), "a read-scope token's relay must get 403: {refused}"),
    }
    gateway.wait_for_metric_at_least("tether_api_rejected_total{reason=\"scope\"}", 1.0, Duration::from_secs(5));
}

#[test]
fn an_operator_imports_devices_with_their_passwords_and_removes_one() {
    let gateway = Gateway::start_with_config("[devices]\npolicy = \"registered\"\n", &[]);
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let csv = gateway.data_dir().join("devices.csv");
    std::fs::write(&csv, format!("uuid,password\n{a},Pass-A-1!\n{b},Pass-B-2!\n\n{c},\n")).unwrap();
    let out = gateway.operator(&["device", "import", csv.to_str().unwrap()]);
    assert!(out.contains("imported 3 devices (2 with their own MPS password)"), "{out}");
    // A bad line changes nothing.
    std::fs::write(&csv, format!("{a},x\nnot-a-uuid,y\n")).unwrap();
    let refused = std::process::Command::new(e2e::bin("tether"))
        .arg("--data-dir")
        .arg(gateway.data_dir())
        .args(["device", "import", csv.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("devices.csv:2"), "{stderr}");

    let _a = Sim::start_with_password(&gateway, "Pass-A-1!", &["--uuid", &a.to_string()]);
    wait_for("an imported device to connect with its own password", CONNECT_TIMEOUT, || gateway.is_connected(a));
    // Removed: it is no longer registered, so under `registered` it is refused.
    gateway.operator(&["device", "remove", &b.to_string()]);
    let removed =
        Sim::start_with_password(&gateway, "Pass-B-2!", &["--uuid", &b.to_string(), "--exit-on-auth-failure"]);
    assert!(!removed.wait(CONNECT_TIMEOUT).success(), "a removed device got in");
    gateway.wait_for_metric_at_least(
        "tether_auth_failures_total{reason=\"not_registered\"}",
        1.0,
        Duration::from_secs(10),
    );
}
