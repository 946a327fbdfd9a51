//! The Tether agent end to end, with the real `tether` and `tether-agent` binaries over QUIC on
//! loopback: a subscriber's one-time token enrolls a PC (the gateway signs a certificate for the
//! PC's own key), the agent reports on its heartbeat, and nothing it reported is lost or stored
//! twice across a gateway killed with SIGKILL and an agent restarted; a token works once; a
//! revoked machine is refused and told why. Behind a NAT in network namespaces: a session
//! survives the NAT changing its public address (QUIC migration), and reports taken while the
//! home's uplink is down arrive, each once, when it is back; behind a router that drops UDP, the
//! agent enrolls and reports over TLS on the CIRA port. In a fleet of two gateways sharing
//! PostgreSQL, an agent moves on to the second when the first is killed.

use std::time::Duration;

use e2e::agent::{enrolled_behind_nat, enrollment_token, gateway_with_subscriber, Pc};
use e2e::api::{runtime, ApiClient};
use e2e::{wait_for, Gateway};
use uuid::Uuid;

const REPORT_WAIT: Duration = Duration::from_secs(30);

/// GET `path` as the operator; the JSON.
fn get(gateway: &Gateway, path: &str) -> serde_json::Value {
    let rt = runtime();
    let response = rt.block_on(ApiClient::new(gateway).get(path, gateway.token())).expect("an API request");
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.json()
}

/// The sequence numbers the gateway stored for `uuid`, oldest first.
fn stored_sequences(gateway: &Gateway, uuid: Uuid) -> Vec<i64> {
    let reports = get(gateway, &format!("/api/v1/devices/{uuid}/telemetry"));
    let mut seqs: Vec<i64> = reports.as_array().unwrap().iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    seqs.reverse();
    seqs
}

#[test]
fn a_pc_enrolls_with_a_one_time_token_and_its_reports_arrive() {
    let (gateway, subscriber) = gateway_with_subscriber();
    let token = enrollment_token(&gateway, &subscriber);
    let pc = Pc::new();
    let enrolled = pc.enroll(&gateway, &token).expect("enrollment");
    assert!(enrolled.contains(&pc.uuid.to_string()), "the UUID is printed for the technician: {enrolled}");
    for file in ["key.pem", "cert.pem", "enrollment.json", "gateway-ca.pem"] {
        assert!(pc.state_path().join(file).exists(), "{file} kept");
    }

    // The token is spent: another PC cannot use it.
    let thief = Pc::new();
    let refused = thief.enroll(&gateway, &token).expect_err("a used token is refused");
    assert!(refused.contains("token_used"), "{refused}");
    // Nor does a made-up one work.
    let refused = thief.enroll(&gateway, "tte_not-a-token").expect_err("an unknown token is refused");
    assert!(refused.contains("unknown_token"), "{refused}");

    let mut agent = pc.run();
    wait_for("the first report", REPORT_WAIT, || {
        get(&gateway, &format!("/api/v1/devices/{}/agent", pc.uuid))["latest"].is_object()
    });
    let shown = get(&gateway, &format!("/api/v1/devices/{}/agent", pc.uuid));
    assert_eq!(shown["connected"], true, "{shown}");
    assert_eq!(shown["agent"]["remote_help"], false, "consent is off until the PC user gives it: {shown}");
    let parameters = &shown["latest"]["parameters"];
    assert_eq!(parameters["os_version"]["value"], "Tether Test OS 1", "{shown}");
    assert!(parameters["firewall"]["unknown"].is_string(), "no firewall tool: unknown with a reason: {shown}");
    // The machine is the subscriber's: listed among its machines.
    let machines = get(&gateway, &format!("/api/v1/subscribers/{subscriber}/machines"));
    assert!(machines.to_string().contains(&pc.uuid.to_string()), "{machines}");

    // The PC user turns remote help on: the gateway hears of it.
    let out = pc.agent().arg("enable").output().unwrap();
    assert!(out.status.success());
    wait_for("the consent to reach the gateway", REPORT_WAIT, || {
        get(&gateway, &format!("/api/v1/devices/{}/agent", pc.uuid))["agent"]["remote_help"] == true
    });
    // Stopped (SIGTERM, as systemd stops it), the agent closes its connection: the gateway sees
    // the PC offline at once, not after agents.idle_timeout_secs (60 s here).
    agent.terminate(Duration::from_secs(10));
    wait_for("the gateway to see the agent gone", Duration::from_secs(10), || {
        get(&gateway, &format!("/api/v1/devices/{}/agent", pc.uuid))["connected"] == false
    });
}

#[test]
fn no_report_is_lost_or_stored_twice_across_a_gateway_crash_and_an_agent_restart() {
    let (mut gateway, subscriber) = gateway_with_subscriber();
    let pc = Pc::new();
    pc.enroll(&gateway, &enrollment_token(&gateway, &subscriber)).expect("enrollment");
    let mut agent = pc.run();
    wait_for("two reports", REPORT_WAIT, || stored_sequences(&gateway, pc.uuid).len() >= 2);

    // The gateway dies mid-stream; the agent keeps reporting into its spool.
    gateway.kill();
    wait_for("reports to wait in the spool", REPORT_WAIT, || pc.status()["spooled_reports"].as_u64() >= Some(2));
    gateway.restart();
    wait_for("the spool to empty", Duration::from_secs(60), || pc.status()["spooled_reports"] == 0);

    // The agent restarts: its sequence goes on.
    let before = pc.status()["next_seq"].as_u64().unwrap();
    agent.terminate(Duration::from_secs(10));
    let mut agent = pc.run();
    wait_for("a report after the agent's restart", REPORT_WAIT, || {
        stored_sequences(&gateway, pc.uuid).last().copied() >= Some(before as i64)
    });
    agent.terminate(Duration::from_secs(10));

    let seqs = stored_sequences(&gateway, pc.uuid);
    let expected: Vec<i64> = (0..seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "every report stored once, none missing");
}

#[test]
fn a_revoked_pc_is_refused_and_told_why() {
    let (gateway, subscriber) = gateway_with_subscriber();
    let pc = Pc::new();
    pc.enroll(&gateway, &enrollment_token(&gateway, &subscriber)).expect("enrollment");
    let mut agent = pc.run();
    wait_for("the agent to connect", REPORT_WAIT, || {
        get(&gateway, &format!("/api/v1/devices/{}/agent", pc.uuid))["connected"] == true
    });

    let rt = runtime();
    let client = ApiClient::new(&gateway);
    let revoked = rt
        .block_on(client.post(&format!("/api/v1/devices/{}/agent/revoke", pc.uuid), gateway.token()))
        .expect("a request");
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json()["revoked"], 1);
    wait_for("the agent to hear it was revoked", REPORT_WAIT, || {
        agent.stderr().contains("revoked this machine's certificate")
    });
    // It stays refused when it comes back.
    std::thread::sleep(Duration::from_secs(3));
    let shown = get(&gateway, &format!("/api/v1/devices/{}/agent", pc.uuid));
    assert_eq!(shown["connected"], false, "{shown}");
    let audit = get(&gateway, &format!("/api/v1/devices/{}/audit", pc.uuid));
    assert!(audit.to_string().contains("agent.cert_revoked"), "{audit}");
    assert!(audit.to_string().contains("agent.enrolled"), "{audit}");
    agent.terminate(Duration::from_secs(10));
}

/// Runs `ip ARGS` in the router's namespace.
fn router_ip(topology: &e2e::netns::Topology, args: &[&str]) {
    let status = topology.command(e2e::netns::Host::Router, "ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

#[test]
fn an_agent_behind_nat_keeps_its_session_when_the_nat_changes_its_public_address() {
    use e2e::netns::{Host, Topology};
    let topology = Topology::create_unique("migr").expect("network namespaces (run as root)");
    let (gateway, pc, agent) = enrolled_behind_nat(&topology, "heartbeat_secs = 5\n", &[]);
    let last_ack = || pc.status()["last_ack"].as_i64();
    wait_for("a report acknowledged", REPORT_WAIT, || last_ack().is_some());
    let gateway_saw = gateway.process().log_line_containing("agent connected").expect("the gateway logged the agent");
    assert!(gateway_saw.contains(Host::Router.ip()), "the gateway sees the NAT's address: {gateway_saw}");

    // The NAT's public address changes (its uplink drops and comes back with a new lease from
    // the ISP): 198.18.0.2 → 198.18.0.3. The link going down flushes the router's NAT mappings.
    let ip = |args: &[&str]| router_ip(&topology, args);
    ip(&["link", "set", "rp", "down"]);
    ip(&["addr", "del", "198.18.0.2/24", "dev", "rp"]);
    ip(&["addr", "add", "198.18.0.3/24", "dev", "rp"]);
    ip(&["link", "set", "rp", "up"]);
    let before = last_ack().unwrap();
    wait_for("a report acknowledged after the change", REPORT_WAIT, || last_ack() > Some(before + 1));
    wait_for("the gateway to follow the migration", REPORT_WAIT, || {
        gateway.process().log_line_containing("the connection migrated").is_some()
    });
    let migrated = gateway.process().log_line_containing("the connection migrated").unwrap();
    assert!(migrated.contains("198.18.0.3"), "{migrated}");
    let connects = agent.stderr().lines().filter(|l| l.contains(" connected")).count();
    assert_eq!(connects, 1, "one session throughout, no reconnect:\n{}", agent.stderr());
}

/// [`stored_sequences`] for a gateway in `topology`'s public network: the API asked with curl
/// from inside it.
fn stored_sequences_in(topology: &e2e::netns::Topology, gateway: &Gateway, uuid: Uuid) -> Vec<i64> {
    let url = format!("{}/api/v1/devices/{uuid}/telemetry", gateway.api_url());
    let output = topology
        .command(e2e::netns::Host::Public, "curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(gateway.ca_path())
        .args(["-H", &format!("Authorization: Bearer {}", gateway.token()), &url])
        .output()
        .expect("running curl");
    assert!(output.status.success(), "GET {url}: {}", String::from_utf8_lossy(&output.stderr));
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let mut seqs: Vec<i64> = reports.as_array().unwrap().iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    seqs.reverse();
    seqs
}

#[test]
fn reports_taken_during_a_network_outage_arrive_once_it_is_over() {
    use e2e::netns::Topology;
    let topology = Topology::create_unique("outg").expect("network namespaces (run as root)");
    // Sessions end after 6 s without a packet, so that the outage ends this one.
    let (gateway, pc, agent) =
        enrolled_behind_nat(&topology, "heartbeat_secs = 5\nkeepalive_secs = 2\nidle_timeout_secs = 6\n", &[]);
    wait_for("two reports", REPORT_WAIT, || stored_sequences_in(&topology, &gateway, pc.uuid).len() >= 2);

    // The home's uplink goes down: the session times out, and the agent, offline, goes on taking
    // a report every heartbeat into its spool.
    router_ip(&topology, &["link", "set", "rp", "down"]);
    wait_for("the agent to notice it is offline", REPORT_WAIT, || pc.status()["connected_to"].is_null());
    let offline_since = pc.status()["next_seq"].as_u64().unwrap();
    wait_for("reports kept while offline", REPORT_WAIT, || {
        pc.status()["next_seq"].as_u64().unwrap() >= offline_since + 2
    });
    let offline = pc.status();
    assert!(offline["connected_to"].is_null(), "still offline: {offline}");
    assert!(offline["spooled_reports"].as_u64() >= Some(2), "{offline}");
    let taken_offline = offline["next_seq"].as_u64().unwrap();

    router_ip(&topology, &["link", "set", "rp", "up"]);
    wait_for("the spool to empty after the outage", Duration::from_secs(90), || {
        let status = pc.status();
        !status["connected_to"].is_null() && status["spooled_reports"] == 0
    });
    let seqs = stored_sequences_in(&topology, &gateway, pc.uuid);
    assert!(seqs.len() as u64 >= taken_offline, "every report taken offline arrived: {seqs:?}");
    let expected: Vec<i64> = (0..seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "every report stored once, none missing");
    let connects = agent.stderr().lines().filter(|l| l.contains(" connected")).count();
    assert!(connects >= 2, "the agent reconnected after the outage:\n{}", agent.stderr());
}

#[test]
fn an_agent_behind_a_firewall_that_drops_udp_enrolls_and_reports_over_tls_on_the_cira_port() {
    use e2e::netns::{Host, Topology};
    let topology = Topology::create_unique("udpx").expect("network namespaces (run as root)");
    // The home's router forwards no UDP to the gateway: QUIC cannot get through.
    let rules = "table inet firewall {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n  \
                 udp dport 4433 counter drop\n }\n}\n";
    let mut nft = topology.command(Host::Router, "nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().expect("nft");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft -f in the router");

    // AMT's CIRA and the agents' QUIC on 4433, as in production: TCP 4433 serves both.
    let listen = format!("{}:4433", Host::Public.ip());
    let args = ["--cira-listen", &listen, "--agent-listen", &listen];
    let config = "heartbeat_secs = 5\nkeepalive_secs = 2\nidle_timeout_secs = 6\n";
    let (gateway, pc, agent) = enrolled_behind_nat(&topology, config, &args);
    wait_for("two reports over TLS", REPORT_WAIT, || stored_sequences_in(&topology, &gateway, pc.uuid).len() >= 2);
    let connected = gateway.process().log_line_containing("agent connected").expect("the gateway logged the agent");
    assert!(connected.contains("transport=tls"), "{connected}");
    let agent_log = agent.stderr();
    assert!(agent_log.contains("transport=tls"), "the agent says it connected over TLS:\n{agent_log}");
    let dropped = topology.command(Host::Router, "nft").args(["list", "ruleset"]).output().unwrap();
    let dropped = String::from_utf8_lossy(&dropped.stdout).into_owned();
    assert!(!dropped.contains("packets 0 "), "the router did drop QUIC's packets: {dropped}");

    // The session holds past the gateway's idle timeout (6 s): the agent's pings every 2 s.
    std::thread::sleep(Duration::from_secs(8));
    let connects = agent.stderr().lines().filter(|l| l.contains(" connected")).count();
    assert_eq!(connects, 1, "one session throughout:\n{}", agent.stderr());
    let seqs = stored_sequences_in(&topology, &gateway, pc.uuid);
    let expected: Vec<i64> = (0..seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "every report stored once, none missing");
}

#[test]
fn an_agent_moves_on_to_the_next_gateway_of_its_fleet_when_one_is_down() {
    use e2e::postgres::Postgres;
    use e2e::process::{free_local_port, operator_in};
    let postgres = Postgres::start().expect("PostgreSQL (run scripts/install-test-deps.sh)");
    let database_url = postgres.create_database("agents_fleet").unwrap();
    // Both gateways are advertised to agents, so each gateway's address is chosen up front.
    let (port_a, port_b) = (free_local_port(), free_local_port());
    let (addr_a, addr_b) = (format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}"));
    let config = format!(
        "database_url = \"{database_url}\"\n[fleet]\ninternal_listen = \"127.0.0.1:0\"\n\
         [agents]\nheartbeat_secs = 5\nkeepalive_secs = 2\nidle_timeout_secs = 6\n\
         advertise = [\"{addr_a}\", \"{addr_b}\"]\n"
    );
    let bundle_dir = tempfile::tempdir().unwrap();
    let bundle = bundle_dir.path().join("join.json");
    let mut a = Gateway::start_with_setup(&config, &["--agent-listen", &addr_a], |dir| {
        operator_in(dir, &["fleet", "init", bundle.to_str().unwrap()]);
    });
    let b = Gateway::start_with_setup(&config, &["--agent-listen", &addr_b], |dir| {
        operator_in(dir, &["fleet", "join", bundle.to_str().unwrap()]);
    });
    a.operator_with_stdin(&["user", "add", "olga", "--password-stdin"], "pw-olga-long-enough\n");
    let out = a.operator(&["subscriber", "register", "--owner", "olga", "--name", "Olga", "--email", "o@example.com"]);
    let subscriber = out.split_whitespace().nth(1).unwrap().to_string();
    let pc = Pc::new();
    pc.enroll(&a, &enrollment_token(&a, &subscriber)).expect("enrollment at the first gateway");
    let mut agent = pc.run();
    wait_for("reports through the first gateway", REPORT_WAIT, || stored_sequences(&a, pc.uuid).len() >= 2);
    let status = pc.status();
    assert_eq!(status["connected_to"], addr_a.as_str(), "{status}");
    // The gateways of the fleet came in the enrollment and the signed configuration.
    let gateways = status["gateways"].as_array().unwrap();
    assert!(gateways.iter().any(|g| g == addr_b.as_str()), "the agent knows the second gateway: {status}");

    // The first gateway dies: the agent moves on to the second, which admits its certificate
    // (the fleet shares the agent CA) and stores its reports in the same store.
    a.kill();
    let moved = e2e::poll_until(Duration::from_secs(90), || pc.status()["connected_to"] == addr_b.as_str());
    assert!(moved, "the agent did not move to {addr_b}: {}\n{}", pc.status(), agent.stderr());
    let before = stored_sequences(&b, pc.uuid).len();
    wait_for("reports through the second gateway", REPORT_WAIT, || stored_sequences(&b, pc.uuid).len() >= before + 2);
    let seqs = stored_sequences(&b, pc.uuid);
    let expected: Vec<i64> = (0..seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "every report stored once, none missing, across the move");
    agent.terminate(Duration::from_secs(10));
}
