//! Checks of the test harness itself, against the machine rather than against Tether: the NAT
//! topology really hides the home network, MeshCentral really starts offline as an MPS, and the
//! technician/attacker helpers (source addresses, silent crowds, frozen devices) do what they say
//! against a gateway of today.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::meshcentral::{self, MeshCentral};
use e2e::netns::{Host, Topology, HOME_IP, PUBLIC_IP, ROUTER_PUBLIC_IP, TECH_IP};
use e2e::wait_for;

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

#[test]
fn netns_home_reaches_public_through_nat_and_public_cannot_reach_home() {
    let started = Instant::now();
    let topology = Topology::create_unique("selftest").expect("building the namespaces (run as root)");
    println!("FIGURE namespaces built in {:.2}s", started.elapsed().as_secs_f64());
    let timeout = Duration::from_secs(3);

    // A listener on the public network sees the PC's connection come from the router's public
    // address: the source was rewritten by the NAT.
    let public = topology.tcp_listen(Host::Public, addr(PUBLIC_IP, 7000));
    let (local, peer) = topology.tcp_connect(Host::Home, public.addr(), timeout).expect("home → public");
    assert_eq!(local.ip().to_string(), HOME_IP, "the PC's own view of its address");
    assert_eq!(peer, public.addr());
    wait_for("the public listener to log the connection", Duration::from_secs(5), || {
        !public.accepted_peers().is_empty()
    });
    let seen = public.accepted_peers()[0];
    assert_eq!(seen.ip().to_string(), ROUTER_PUBLIC_IP, "the public side sees the NAT's address");

    // The technician reaches the public host (where the gateway runs), from its own address.
    let (tech_local, _) = topology.tcp_connect(Host::Tech, public.addr(), timeout).expect("tech → public");
    assert_eq!(tech_local.ip().to_string(), TECH_IP);
    wait_for("the technician's connection to be logged", Duration::from_secs(5), || {
        public.accepted_peers().iter().any(|p| p.ip().to_string() == TECH_IP)
    });

    // A listener in the home network is reachable at home, but not from the public side (it has
    // a route there: the router's filter drops new connections inward) nor from the technician.
    let home = topology.tcp_listen(Host::Home, addr(HOME_IP, 7001));
    topology.tcp_connect(Host::Home, home.addr(), timeout).expect("home → home");
    let err = topology.tcp_connect(Host::Public, home.addr(), timeout).expect_err("public → home must fail");
    println!("public → home: {err:#}");
    assert!(topology.tcp_connect(Host::Tech, home.addr(), timeout).is_err(), "tech → home must fail");
    assert_eq!(home.accepted_peers().len(), 1, "only the home connection arrived: {:?}", home.accepted_peers());

    // Dropping the topology deletes its namespaces.
    let names: Vec<String> = Host::ALL.iter().map(|h| topology.ns(*h)).collect();
    drop((public, home));
    drop(topology);
    let list = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for name in names {
        assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(name.as_str())), "{name} left behind");
    }
}

#[test]
fn meshcentral_starts_offline_with_an_amt_only_group_and_no_devices() {
    let started = Instant::now();
    let mut mesh = MeshCentral::start();
    println!(
        "FIGURE MeshCentral {} ready (group created) in {:.2}s; server listening {:.2}s after spawn",
        meshcentral::installed_version().unwrap_or_default(),
        started.elapsed().as_secs_f64(),
        mesh.startup_time.as_secs_f64()
    );
    assert!(mesh.group_id.starts_with("mesh//"), "{}", mesh.group_id);
    assert_eq!(mesh.cira_username.len(), 16, "{}", mesh.cira_username);
    assert!(mesh.cira_username.chars().all(|c| c.is_ascii_alphanumeric()), "{}", mesh.cira_username);
    assert!(mesh.root_cert_path().exists());
    assert_eq!(mesh.mps_addr.ip().to_string(), "127.0.0.1");

    let groups = mesh.meshctrl(&["ListDeviceGroups", "--json"]);
    let groups: serde_json::Value = serde_json::from_str(&groups).unwrap();
    let group = groups.as_array().unwrap().iter().find(|g| g["_id"] == mesh.group_id.as_str()).unwrap();
    assert_eq!(group["mtype"], 1, "an agent-less (Intel AMT only) group: {group}");
    assert!(mesh.list_devices().is_empty());

    // Stopping ends both processes and frees the ports.
    let pgid = mesh.process().pid();
    let mps = mesh.mps_addr;
    let stopping = Instant::now();
    mesh.stop();
    println!("FIGURE MeshCentral stopped in {:.2}s", stopping.elapsed().as_secs_f64());
    assert!(meshcentral::live_group_members(pgid).is_empty());
    assert!(std::net::TcpStream::connect_timeout(&mps, Duration::from_millis(500)).is_err(), "MPS still listening");
}

#[test]
fn meshcentral_ids_follow_apf_md() {
    // apf.md §1.2/§2.4: the node id is base64 of the canonical UUID bytes three times.
    let uuid: uuid::Uuid = "12345678-9abc-def0-1234-56789abcdef0".parse().unwrap();
    assert!(meshcentral::node_id_for(uuid).starts_with("node//EjRWeJq83vAS"));
    assert_eq!(meshcentral::cira_username_for("mesh//ab@c$defghijklmnopqrst"), "abXcXdefghijklmn");
}

/// The technician-side helpers against today's gateway: requests and relays really leave from
/// the loopback source they are given, silent crowds hold and release their connections, and a
/// frozen amt-sim is stopped (not gone) until thawed.
#[test]
fn api_client_crowd_and_freeze_do_what_they_say() {
    use e2e::api::{runtime, ApiClient};
    use e2e::attack::{loopback_sources, Silence, SilentCrowd};
    use e2e::{Gateway, Sim};

    let gateway = Gateway::start(&[]);
    let uuid = uuid::Uuid::new_v4();
    let mut sim = Sim::start(&gateway, &["--uuid", &uuid.to_string()]);
    wait_for("the device to connect", Duration::from_secs(30), || gateway.is_connected(uuid));

    let source: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    let client = ApiClient::new(&gateway).from_source(source);
    let rt = runtime();
    let listed = rt.block_on(client.get("/api/v1/devices", gateway.token())).unwrap();
    assert_eq!(listed.status, 200, "{}", listed.text());
    let wrong = rt.block_on(client.get("/api/v1/devices", &e2e::api::random_token())).unwrap();
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    rt.block_on(async {
        let mut relay = client.relay(uuid, 5900, gateway.token()).await.unwrap();
        assert_eq!(relay.echo(&data, Duration::from_secs(30)).await.unwrap(), data);
        relay.close().await;
    });
    let line = gateway.process().log_line_containing("relay opened").expect("the gateway logs the relay");
    assert!(line.contains("127.0.0.9:"), "the relay came from 127.0.0.9: {line}");

    let mut crowd = SilentCrowd::new();
    let opened =
        crowd.open(&Silence::Tcp, gateway.cira_addr(), &loopback_sources([0, 2], 5), 20, 8, Duration::from_secs(10));
    assert_eq!((opened.ok, opened.failed), (20, 0), "{opened:?}");
    assert_eq!(crowd.still_open(), 20);
    crowd.close_all();

    let state = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()).unwrap_or("?").to_string()
    };
    sim.freeze();
    assert!(e2e::poll_until(Duration::from_secs(5), || state(sim.pid()) == "T"), "amt-sim is {}", state(sim.pid()));
    sim.thaw();
    assert!(e2e::poll_until(Duration::from_secs(5), || state(sim.pid()) != "T"), "amt-sim is still stopped");
    assert!(gateway.is_connected(uuid));
}
