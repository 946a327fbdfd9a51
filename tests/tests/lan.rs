//! The appliance on its LAN, in network namespaces joined by a bridge (`e2e::lan`): the gateway
//! in the appliance's namespace with `lan.interfaces = ["lan0"]`, simulated AMT PCs
//! (`amt-sim --lan`) and a plain host on the LAN, and a technician on another network who uses
//! the CLI against the appliance's API. Needs root (CI runs the suite as root); without it each
//! test fails saying so.

use std::ffi::OsString;
use std::time::Duration;

use e2e::lan::{LanTopology, APPLIANCE_TECH_IP, LAN_IF, PLAIN_MAC, TECH_IF, TECH_IP};
use e2e::process::http_request_via;
use e2e::remote::{console, exit_of, ADMIN_PASSWORD};
use e2e::{poll_until, wait_for, Gateway};
use uuid::Uuid;

const LAN_CONFIG: &str = "[lan]\ninterfaces = [\"lan0\"]\ncheck_interval_secs = 1\n";

/// The appliance's gateway, its technician in the technician's namespace.
fn appliance(topology: &LanTopology) -> Gateway {
    let mut gateway = Gateway::start_at(APPLIANCE_TECH_IP, LAN_CONFIG, &[], |c| topology.in_appliance(c));
    gateway.set_cli_netns(&topology.tech());
    gateway
}

/// A technician command that must fail; its stderr.
fn refused(gateway: &Gateway, args: &[&str]) -> String {
    let output = gateway.cli_command(args).output().expect("running tether");
    assert!(
        !output.status.success(),
        "`tether {}` succeeded:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn host<'a>(hosts: &'a serde_json::Value, mac: &str) -> &'a serde_json::Value {
    hosts
        .as_array()
        .and_then(|h| h.iter().find(|h| h["mac"] == mac))
        .unwrap_or_else(|| panic!("no host {mac} among {hosts:#}"))
}

fn ports(host: &serde_json::Value) -> Vec<u64> {
    host["amt_ports"].as_array().map(|p| p.iter().filter_map(|x| x.as_u64()).collect()).unwrap_or_default()
}

#[test]
fn operator_scans_the_office_lan_and_finds_exactly_the_amt_pcs() {
    let topology = LanTopology::create("scan", 2).expect("the LAN namespaces");
    let [old, new] = [&topology.pcs()[0], &topology.pcs()[1]];
    let _old_pc = topology.start_pc(old, &["--amt-version", "11.8.50", "--lan-plain"]);
    let _new_pc = topology.start_pc(new, &["--amt-version", "16.1.27"]);
    let gateway = appliance(&topology);

    // The tools use only the interfaces the configuration names.
    let err = refused(&gateway, &["lan", "scan", "--interface", TECH_IF]);
    assert!(err.contains("lan.interfaces"), "{err}");
    let err = refused(&gateway, &["lan", "scan", "--interface", LAN_IF, "--cidr", "198.18.6.0/24"]);
    assert!(err.contains("not inside 198.18.5.0/24"), "{err}");

    let out = gateway.cli(&["lan", "scan", "--interface", LAN_IF, "--json"]);
    let scan: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(scan["state"], "done", "{scan:#}");
    assert_eq!(scan["cidr"], "198.18.5.0/24");
    assert_eq!(scan["total"], 253, "the /24 without its edges and the appliance itself");
    eprintln!("a /24 at the default rate: {} ms ({scan:#})", scan["elapsed_ms"]);
    let hosts = &scan["hosts"];
    assert_eq!(hosts.as_array().map(Vec::len), Some(3), "the two PCs and the plain host, nothing else: {hosts:#}");

    let found = host(hosts, &old.mac);
    assert_eq!((found["ip"].as_str(), found["amt"].as_bool()), (Some(old.ip.as_str()), Some(true)), "{found:#}");
    assert!(found["amt_version"].as_str().is_some_and(|v| v.starts_with("11.8.50")), "{found:#}");
    assert_eq!(found["provisioning"], "provisioned", "from the RMCP pong: {found:#}");
    assert_eq!(ports(found), vec![623, 16992, 16993], "{found:#}");

    let found = host(hosts, &new.mac);
    assert_eq!((found["ip"].as_str(), found["amt"].as_bool()), (Some(new.ip.as_str()), Some(true)), "{found:#}");
    assert!(found["amt_version"].as_str().is_some_and(|v| v.starts_with("16.1.27")), "{found:#}");
    assert_eq!(ports(found), vec![623, 16993], "only TLS, as firmware from CSME 16.1 on: {found:#}");

    let plain = host(hosts, PLAIN_MAC);
    assert_eq!(plain["amt"], false, "{plain:#}");
    assert!(plain["amt_version"].is_null() && ports(plain).is_empty(), "{plain:#}");

    // Kept in the store, listed with `lan devices`.
    let listed: serde_json::Value = serde_json::from_str(&gateway.cli(&["lan", "devices", "--json"])).unwrap();
    assert_eq!(listed["hosts"].as_array().map(Vec::len), Some(3), "{listed:#}");
    assert_eq!(host(&listed["hosts"], &new.mac)["amt"], true);
    let table = gateway.cli(&["lan", "devices"]);
    assert!(table.contains(&old.mac) && table.contains("11.8.50") && table.contains(PLAIN_MAC), "{table}");
    let metrics = gateway.metrics_text();
    assert!(metrics.contains("tether_lan_scans_total{outcome=\"done\"} 1"), "{metrics}");
}

#[test]
fn a_magic_packet_for_a_mac_goes_out_on_the_lan_as_a_frame_and_a_udp_broadcast() {
    let topology = LanTopology::create("wake", 1).expect("the LAN namespaces");
    let gateway = appliance(&topology);
    let sleeping = topology.pcs()[0].clone();
    // Captured by another host of the LAN: both go to everyone.
    let capture = topology.capture(topology.plain(), 20);

    let err = refused(&gateway, &["lan", "wake", &sleeping.mac, "--interface", TECH_IF]);
    assert!(err.contains("lan.interfaces"), "{err}");
    let out = gateway.cli(&["lan", "wake", &sleeping.mac, "--interface", LAN_IF]);
    assert!(out.contains("magic packet for 02:54:00:00:00:11 sent on lan0"), "{out}");
    assert!(out.contains("UDP to 198.18.5.255:9"), "{out}");

    let seen = || e2e::lan::magic_packets(&capture);
    let both = poll_until(Duration::from_secs(10), || {
        let seen = seen();
        seen.contains(&("ethertype-0842".into(), sleeping.mac.clone()))
            && seen.contains(&("udp-9".into(), sleeping.mac.clone()))
    });
    assert!(both, "the capture saw {:?}\n{}", seen(), capture.tail());
    assert!(seen().iter().all(|(_, mac)| *mac == sleeping.mac), "{:?}", seen());
    let metrics = gateway.metrics_text();
    assert!(metrics.contains("tether_lan_wakes_total{method=\"magic_packet\"} 1"), "{metrics}");
}

#[test]
fn technician_reaches_an_adopted_lan_pc_like_a_cira_pc() {
    let topology = LanTopology::create("adopt", 2).expect("the LAN namespaces");
    let (first, second) = (topology.pcs()[0].clone(), topology.pcs()[1].clone());
    let (uuid, off_uuid) = (Uuid::new_v4(), Uuid::new_v4());
    let admin = ["--admin-password", ADMIN_PASSWORD];
    let first_uuid = uuid.to_string();
    let _pc = topology.start_pc(&first, &[&["--uuid", first_uuid.as_str()][..], &admin].concat());
    let off_id = off_uuid.to_string();
    let mut off_pc = topology.start_pc(&second, &[&["--uuid", off_id.as_str(), "--power", "off"][..], &admin].concat());
    let gateway = appliance(&topology);
    let id = uuid.to_string();

    // A PC on the LAN that nobody adopted is out of reach.
    let err = refused(&gateway, &["power", &id, "status", "--password", ADMIN_PASSWORD]);
    assert!(err.contains("not connected"), "{err}");

    // Adopting reads the UUID through WS-MAN and pins the certificate; only LAN addresses with AMT.
    let out = gateway.cli(&["lan", "adopt", &first.ip, "--password", ADMIN_PASSWORD]);
    assert!(out.contains(&format!("as device {uuid}")) && out.contains("TLS certificate pinned"), "{out}");
    let err = refused(&gateway, &["lan", "adopt", &first.ip, "--password", ADMIN_PASSWORD]);
    assert!(err.contains("already adopted"), "{err}");
    let err = refused(&gateway, &["lan", "adopt", e2e::lan::PLAIN_IP, "--uuid", &Uuid::new_v4().to_string()]);
    assert!(err.contains("nothing answers on AMT's ports"), "{err}");
    let err = refused(&gateway, &["lan", "adopt", TECH_IP, "--uuid", &Uuid::new_v4().to_string()]);
    assert!(err.contains("on none of the LAN tools' interfaces"), "{err}");

    wait_for("the adopted PC to be listed connected", Duration::from_secs(20), || gateway.is_connected(uuid));
    let device = gateway.device(uuid).expect("the adopted PC in `tether devices`");
    assert_eq!(device["kinds"], serde_json::json!(["lan"]), "{device:#}");
    assert_eq!(device["ports"], serde_json::json!([16992, 16993, 16994, 16995]), "{device:#}");
    assert_eq!(device["lan"]["ip"], first.ip.as_str());
    let table = gateway.cli(&["devices"]);
    assert!(table.lines().any(|l| l.starts_with(&id) && l.contains(" lan ")), "{table}");

    // The same tools as for a CIRA PC: power through WS-MAN, SOL, a forwarded port.
    assert_eq!(gateway.cli(&["power", &id, "status", "--password", ADMIN_PASSWORD]).trim(), "on");
    let mut sol = console(&gateway, uuid, ADMIN_PASSWORD, &[]);
    sol.process.wait_for_log("Serial-over-LAN on", Duration::from_secs(30));
    sol.type_keys(b"echo lan-$((6*7))\n");
    sol.wait_for_screen("lan-42", Duration::from_secs(20));
    sol.type_keys(&[0x1d]);
    let (status, _, err) = exit_of(sol, Duration::from_secs(15));
    assert!(status.success(), "{err}");
    let forward = gateway.forward(uuid, 16992);
    let tech: Vec<OsString> = ["ip", "netns", "exec", &topology.tech()].iter().map(OsString::from).collect();
    let (status, _) = http_request_via(&tech, forward.addr(), "/").expect("HTTP through the forward");
    assert_eq!(status, 401, "AMT's web port answered through the gateway's pinned TLS");
    drop(forward);
    let rows: serde_json::Value =
        serde_json::from_str(&gateway.cli(&["redirections", &id, "--json"])).expect("redirections JSON");
    assert!(
        rows.as_array().is_some_and(|r| r.iter().any(|s| s["kind"] == "sol")),
        "SOL audited like a relay: {rows:#}"
    );

    // Wake a PC that is off: adopted by hand, woken through AMT, which then reports it on.
    let out = gateway.cli(&["lan", "adopt", &second.ip, "--uuid", &off_id]);
    assert!(out.contains(&format!("as device {off_uuid}")), "{out}");
    wait_for("the second PC to be listed", Duration::from_secs(20), || gateway.is_connected(off_uuid));
    let out = gateway.cli(&["lan", "wake", &off_id, "--password", ADMIN_PASSWORD]);
    assert!(out.contains("woken through AMT: power now on"), "{out}");
    off_pc.wait_for_log("power: off -> on", Duration::from_secs(10));
    let metrics = gateway.metrics_text();
    assert!(metrics.contains("tether_tunnels_active{kind=\"lan\"} 2"), "{metrics}");

    // Every step is in the device's record; forgetting ends the access.
    let actions = gateway.cli(&["actions", &id, "--json"]);
    assert!(actions.contains("lan.adopt"), "{actions}");
    gateway.cli(&["lan", "forget", &id]);
    let err = refused(&gateway, &["power", &id, "status", "--password", ADMIN_PASSWORD]);
    assert!(err.contains("not connected"), "{err}");
}

#[test]
fn scanning_needs_the_lan_tools_turned_on() {
    let topology = LanTopology::create("off", 0).expect("the LAN namespaces");
    let mut gateway = Gateway::start_at(APPLIANCE_TECH_IP, "", &[], |c| topology.in_appliance(c));
    gateway.set_cli_netns(&topology.tech());
    let err = refused(&gateway, &["lan", "scan", "--interface", LAN_IF]);
    assert!(err.contains("the LAN tools are off"), "{err}");
    let err = refused(&gateway, &["lan", "adopt", "198.18.5.20", "--uuid", &Uuid::new_v4().to_string()]);
    assert!(err.contains("the LAN tools are off"), "{err}");
}
