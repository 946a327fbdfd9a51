//! A fleet as an MSP runs it: two gateways sharing one PostgreSQL, behind HAProxy in TCP mode with
//! the PROXY protocol v2, devices dialling the balancer, technicians using either gateway.
//!
//! Everything is real and on loopback: a PostgreSQL cluster started for the test, Debian's HAProxy
//! (connecting to the gateways from 127.0.0.9, the only address they trust for PROXY headers),
//! the `tether` gateways (the second joined with the first's bundle) and `amt-sim` devices from
//! 127.0.0.2 and 127.0.0.3.
//!
//! `FLEET_DEVICES` sets the number of devices (default 500).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::haproxy::{Frontend, Haproxy};
use e2e::postgres::Postgres;
use e2e::{bin, operator_in, wait_for, Gateway, Sim};
use uuid::Uuid;

const BALANCER: &str = "127.0.0.9";

fn config(database_url: &str) -> String {
    format!(
        "database_url = \"{database_url}\"\n\
         [fleet]\ninternal_listen = \"127.0.0.1:0\"\nheartbeat_interval_secs = 1\nstale_after_secs = 5\n\
         [proxy]\ntrusted = [\"{BALANCER}/32\"]\n\
         [limits]\nconnection_burst_per_source = 5000\nconnections_per_second_per_source = 1000\n"
    )
}

/// The first gateway makes the fleet (`tether fleet init`), the second joins it with the bundle.
fn two_gateways(database_url: &str, bundle_dir: &Path) -> (Gateway, Gateway) {
    let bundle = bundle_dir.join("join.json");
    let config = config(database_url);
    let a = Gateway::start_with_setup(&config, &[], |dir| {
        operator_in(dir, &["fleet", "init", bundle.to_str().unwrap()]);
    });
    let b = Gateway::start_with_setup(&config, &[], |dir| {
        operator_in(dir, &["fleet", "join", bundle.to_str().unwrap()]);
    });
    assert_ne!(a.instance_id(), b.instance_id());
    assert_eq!(std::fs::read(a.ca_path()).unwrap(), std::fs::read(b.ca_path()).unwrap(), "one CIRA CA");
    (a, b)
}

/// `amt-sim` with `count` devices dialling `gateways` (in that order) from `source`.
fn sims(gateways: &[SocketAddr], ca: &Path, password: &str, source: &str, count: usize, first: Uuid) -> Sim {
    let list = gateways.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",");
    let mut command = Command::new(bin("amt-sim"));
    command
        .args(["--gateway", &list, "--server-name", "127.0.0.1", "--source", source])
        .arg("--ca")
        .arg(ca)
        .args(["--username", e2e::process::MPS_USER, "--password", password])
        .args(["--count", &count.to_string(), "--uuid", &first.to_string(), "--ramp-ms", "2000"])
        .args(["--reconnect-min-ms", "200", "--reconnect-max-ms", "2000"])
        .env("RUST_LOG", "warn");
    Sim::from_command(&mut command)
}

/// uuid → (connected, instance, remote_addr) as `gateway`'s API lists the devices.
fn listing(gateway: &Gateway) -> HashMap<Uuid, (bool, String, String)> {
    let devices = gateway.devices_json();
    let mut seen = HashMap::new();
    for d in devices.as_array().expect("an array") {
        let uuid: Uuid = d["uuid"].as_str().and_then(|u| u.parse().ok()).expect("a uuid");
        let entry = (
            d["connected"].as_bool() == Some(true),
            d["instance"].as_str().unwrap_or("").to_string(),
            d["remote_addr"].as_str().unwrap_or("").to_string(),
        );
        assert!(seen.insert(uuid, entry).is_none(), "{uuid} listed twice");
    }
    seen
}

fn connected_via(listing: &HashMap<Uuid, (bool, String, String)>, instance: &str) -> usize {
    listing.values().filter(|(connected, i, _)| *connected && i == instance).count()
}

/// Through `gateway`'s API (`tether forward`), bytes to a device's echo port come back.
fn echo_through(gateway: &Gateway, uuid: Uuid) {
    let forward = gateway.forward_on(uuid, 5900, "127.0.0.1:0");
    let mut tcp = TcpStream::connect(forward.addr()).expect("connecting to the forward");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let message: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    tcp.write_all(&message).unwrap();
    let mut back = vec![0u8; message.len()];
    tcp.read_exact(&mut back).expect("the echo");
    assert!(back == message, "the echo differs");
}

#[test]
fn a_fleet_behind_haproxy_serves_every_device_from_either_gateway_and_survives_kill_9() {
    let devices: usize = std::env::var("FLEET_DEVICES").ok().and_then(|n| n.parse().ok()).unwrap_or(500);
    let postgres = Postgres::start().expect("PostgreSQL (run scripts/install-test-deps.sh)");
    let database_url = postgres.create_database("fleet").unwrap();
    let bundle_dir = tempfile::tempdir().unwrap();
    let (a, mut b) = two_gateways(&database_url, bundle_dir.path());
    let (id_a, id_b) = (a.instance_id(), b.instance_id());
    // The MPS account is shared: the harness set it for each gateway, the second time last.
    let (_, password) = b.mps_credentials();

    let balancer: IpAddr = BALANCER.parse().unwrap();
    let haproxy = Haproxy::start(&[
        Frontend::new("cira", [a.cira_addr(), b.cira_addr()]).source(balancer),
        Frontend::new("api", [a.api_addr(), b.api_addr()]).source(balancer),
    ])
    .expect("HAProxy (run scripts/install-test-deps.sh)");
    haproxy.wait_for_servers_up("cira", 2, Duration::from_secs(20)).expect("both gateways up behind HAProxy");

    let half = devices / 2;
    let cira = [haproxy.frontend_addr("cira")];
    let first = Uuid::parse_str("5e1f0000-0000-4000-8000-000000000000").unwrap();
    let second = Uuid::parse_str("5e1f0000-0000-4000-8000-000100000000").unwrap();
    let _sims = [
        sims(&cira, &a.ca_path(), &password, "127.0.0.2", half, first),
        sims(&cira, &a.ca_path(), &password, "127.0.0.3", devices - half, second),
    ];

    // Spread over both gateways, every one listed connected by either gateway's API.
    let mut last = (0, 0);
    wait_for("every device connected, through both gateways", Duration::from_secs(120), || {
        let seen = listing(&a);
        last = (connected_via(&seen, &id_a), connected_via(&seen, &id_b));
        last.0 + last.1 == devices
    });
    assert!(last.0 > 0 && last.1 > 0, "HAProxy spread no devices to one gateway: {last:?}");
    for gateway in [&a, &b] {
        let seen = listing(gateway);
        assert_eq!(seen.values().filter(|(c, _, _)| *c).count(), devices);
        // The devices' own addresses, never the balancer's.
        for (uuid, (_, _, remote)) in &seen {
            assert!(remote.starts_with("127.0.0.2:") || remote.starts_with("127.0.0.3:"), "{uuid} from {remote}");
        }
    }

    // A technician on A reaches a device held by B (and the other way round).
    let seen = listing(&a);
    let on_b = *seen.iter().find(|(_, (c, i, _))| *c && *i == id_b).unwrap().0;
    let on_a = *seen.iter().find(|(_, (c, i, _))| *c && *i == id_a).unwrap().0;
    echo_through(&a, on_b);
    echo_through(&b, on_a);
    let shown = a.cli(&["device", "show", &on_b.to_string(), "--json"]);
    assert!(shown.contains(&id_b), "device show on A does not name B: {shown}");
    let status = a.operator(&["fleet", "status"]);
    assert!(status.contains(&id_a) && status.contains(&id_b) && status.contains("alive"), "{status}");

    // kill -9 B: its devices come back through HAProxy to A, and are never listed twice.
    let held_by_b = connected_via(&listing(&a), &id_b);
    let killed = Instant::now();
    b.kill();
    wait_for("every device connected through A after B died", Duration::from_secs(90), || {
        connected_via(&listing(&a), &id_a) == devices
    });
    let failover = killed.elapsed();
    let seen = listing(&a);
    assert_eq!(seen.len(), devices);
    assert_eq!(connected_via(&seen, &id_b), 0, "B's stale records show devices connected");
    // B's heartbeat stops: within fleet.stale_after_secs (5 s here) it shows as dead.
    wait_for("B shown dead in `fleet status`", Duration::from_secs(15), || {
        a.operator(&["fleet", "status"]).lines().any(|l| l.contains(&id_b) && l.contains("dead"))
    });
    println!(
        "fleet failover: {held_by_b} of {devices} devices held by the killed gateway, all {devices} connected through \
         the other {:.1} s after kill -9",
        failover.as_secs_f64()
    );
}

/// The hardened core's liveness rule, across gateways: a claim at A for a UUID live on B is
/// refused while B's tunnel answers, and replaces it once it does not.
#[test]
fn a_claim_at_one_gateway_for_a_uuid_live_on_another_follows_the_liveness_rule() {
    let postgres = Postgres::start().expect("PostgreSQL (run scripts/install-test-deps.sh)");
    let database_url = postgres.create_database("claims").unwrap();
    let bundle_dir = tempfile::tempdir().unwrap();
    let (a, b) = two_gateways(&database_url, bundle_dir.path());
    let (_, password) = b.mps_credentials();
    let uuid = Uuid::new_v4();

    let mut owner = sims(&[b.cira_addr()], &b.ca_path(), &password, "127.0.0.2", 1, uuid);
    wait_for("the device connected to B", Duration::from_secs(30), || {
        listing(&a).get(&uuid).is_some_and(|(c, i, _)| *c && *i == b.instance_id())
    });

    // Same UUID at A while the device on B answers: refused, counted and recorded.
    let mut impostor = sims(&[a.cira_addr()], &a.ca_path(), &password, "127.0.0.4", 1, uuid);
    wait_for("A refusing the claim as a UUID conflict", Duration::from_secs(30), || {
        a.metrics().get("tether_connections_rejected_total{reason=\"uuid_conflict\"}").unwrap_or(0.0) >= 1.0
    });
    let record = a.device(uuid).unwrap();
    assert_eq!(record["instance"], b.instance_id(), "{record}");
    assert!(record["remote_addr"].as_str().unwrap().starts_with("127.0.0.2:"), "{record}");
    assert!(record["conflict_note"].as_str().unwrap_or("").contains("127.0.0.4"), "{record}");
    impostor.process().terminate(Duration::from_secs(5));

    // The device on B stops answering (frozen): a claim at A replaces it. The impostor's last
    // claim may still be pending at A (waiting for B's answer) and win for a moment before its
    // closed socket is noticed; the newcomer's next claim then takes the UUID.
    owner.freeze();
    let mut newcomer = sims(&[a.cira_addr()], &a.ca_path(), &password, "127.0.0.5", 1, uuid);
    wait_for("the newcomer connected to A after B's tunnel stopped answering", Duration::from_secs(60), || {
        a.device(uuid).is_some_and(|d| {
            d["connected"] == true
                && d["instance"] == a.instance_id()
                && d["remote_addr"].as_str().is_some_and(|r| r.starts_with("127.0.0.5:"))
        })
    });
    owner.thaw();
    newcomer.process().terminate(Duration::from_secs(5));
}
