//! Support actions, messages and relayed sessions to agent PCs, end to end with the real
//! `tether` and `tether-agent`: a support contact runs a signed script on a PC and sees its
//! result and a fresh report; what the PC must refuse (a tampered, expired, replayed or
//! mis-targeted action: each a change an attacker with the gateway's database could make) is
//! refused, reported and audited; a PC whose user turned remote help off refuses everything and
//! says why; a contact removed from the subscriber can send nothing more; instructions and
//! messages reach the PC's user, who reads them, and the sender sees it; a broadcast reaches
//! 200 agents of the load generator; a technician reaches an echo port on an agent PC behind a
//! NAT in network namespaces.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::agent::{enrolled_behind_nat, enrollment_token, gateway_with_subscriber_config, Pc};
use e2e::process::last_line;
use e2e::{bin, wait_for, Gateway, Process};
use serde_json::Value;
use uuid::Uuid;

const RESULT_WAIT: Duration = Duration::from_secs(60);
/// Reports on a long heartbeat (the report after an action is then the action's own), sessions
/// that look in the store every 2 s (for rows changed behind the gateway's back), and a PC that
/// vanishes noticed within 10 s.
const CONFIG: &str =
    "[agents]\nheartbeat_secs = 300\ndelivery_poll_secs = 2\nkeepalive_secs = 2\nidle_timeout_secs = 10\n";

/// `tether ARGS` with `token` against `gateway`'s API.
fn tether_as(gateway: &Gateway, token: &str, args: &[&str]) -> Output {
    Command::new(bin("tether"))
        .arg("--api")
        .arg(gateway.api_url())
        .arg("--token")
        .arg(token)
        .arg("--ca")
        .arg(gateway.ca_path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tether")
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Carl, olga's active support contact, and a token of his.
fn add_contact(gateway: &Gateway, subscriber: &str) -> String {
    let invited = gateway.operator(&["contact", "invite", subscriber, "carl@example.com"]);
    let guid = last_line(&invited).unwrap_or_else(|| panic!("no GUID in {invited:?}")).to_string();
    gateway.operator_with_stdin(&["user", "add", "carl", "--password-stdin"], "pw-carl-long-enough\n");
    let accepted = gateway.operator(&["contact", "accept", &guid, "--user", "carl", "--terms", "2026-01"]);
    assert!(accepted.contains("active contact"), "{accepted}");
    gateway.create_token("carl-laptop", &["--user", "carl"])
}

/// A PC of olga's, enrolled, its user's consent to remote help `enabled`, its agent running.
fn running_pc(gateway: &Gateway, subscriber: &str, enabled: bool) -> (Pc, Process) {
    let pc = Pc::new();
    pc.enroll(gateway, &enrollment_token(gateway, subscriber)).expect("enrollment");
    if enabled {
        let out = pc.agent().arg("enable").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let agent = pc.run();
    wait_for("the agent's session", RESULT_WAIT, || pc.status()["connected_to"].is_string());
    (pc, agent)
}

fn api_get(gateway: &Gateway, path: &str) -> Value {
    let rt = e2e::api::runtime();
    let response = rt.block_on(e2e::api::ApiClient::new(gateway).get(path, gateway.token())).expect("a request");
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.json()
}

fn action(gateway: &Gateway, id: &str) -> Value {
    api_get(gateway, &format!("/api/v1/support-actions/{id}"))
}

/// Waits until action `id` leaves pending/sent; the action.
fn result_of(gateway: &Gateway, id: &str) -> Value {
    let mut last = Value::Null;
    let done = e2e::poll_until(RESULT_WAIT, || {
        last = action(gateway, id);
        !matches!(last["state"].as_str(), Some("pending" | "sent"))
    });
    assert!(done, "no result for action {id} within {RESULT_WAIT:?}: {last}");
    last
}

fn audit_text(gateway: &Gateway, uuid: Uuid) -> String {
    api_get(gateway, &format!("/api/v1/devices/{uuid}/audit")).to_string()
}

#[test]
fn a_contact_runs_a_signed_script_on_a_pc_and_sees_its_result_and_fresh_telemetry() {
    let (gateway, subscriber) = gateway_with_subscriber_config(CONFIG);
    let carl = add_contact(&gateway, &subscriber);
    let (pc, mut agent) = running_pc(&gateway, &subscriber, true);
    wait_for("the first report", RESULT_WAIT, || pc.status()["last_ack"].is_i64());

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("check.sh");
    std::fs::write(&script, "echo \"hello from the PC\"\necho to-stderr >&2\nenv | sort\nexit 3\n").unwrap();
    let started = Instant::now();
    let uuid = pc.uuid.to_string();
    let run = tether_as(
        &gateway,
        &carl,
        &["action", "run", &uuid, "--script", script.to_str().unwrap(), "--timeout", "20", "--json"],
    );
    let elapsed = started.elapsed();
    let result = json_of(&run);
    // A script that exits 3 is a failed command, with its result shown.
    assert_eq!(run.status.code(), Some(1), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!((result["state"].as_str(), result["exit_code"].as_i64()), (Some("completed"), Some(3)), "{result}");
    let output = result["output"].as_str().unwrap();
    assert!(output.contains("hello from the PC") && output.contains("to-stderr"), "{output}");
    // A clean environment: nothing of the agent's own (its RUST_LOG, its state dir).
    assert!(output.contains("TETHER_ACTION_ID="), "{output}");
    assert!(
        !output.contains("RUST_LOG") && !output.contains("TETHER_AGENT"),
        "the script saw the agent's environment:\n{output}"
    );
    assert_eq!(result["issued_by"].as_str().map(|b| b.starts_with("carl")), Some(true), "{result}");
    eprintln!("FIGURE action: `tether action run` to the result shown: {:.2}s", elapsed.as_secs_f64());

    // The fresh report the agent took after the action is stored.
    let seq = result["report_seq"].as_i64().expect("the result names its fresh report");
    let reports = api_get(&gateway, &format!("/api/v1/devices/{uuid}/telemetry"));
    assert!(
        reports.as_array().unwrap().iter().any(|r| r["seq"].as_i64() == Some(seq)),
        "report {seq} stored: {reports}"
    );

    // Instructions are shown to the PC's user, who reads them with `tether-agent messages`.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "Please restart the PC tonight.\n").unwrap();
    let shown =
        tether_as(&gateway, &carl, &["action", "run", &uuid, "--instructions", notes.to_str().unwrap(), "--json"]);
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    assert_eq!(json_of(&shown)["state"], "shown");

    // A message: delivered, received, then read by the user; the sender sees each step.
    let sent = tether_as(
        &gateway,
        &carl,
        &["message", "send", "--machine", &uuid, "--text", "Backup fixed, thanks!", "--json"],
    );
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let id = json_of(&sent)["id"].as_str().unwrap().to_string();
    let counts = |k: &str| api_get(&gateway, &format!("/api/v1/messages/{id}"))["message"][k].as_u64();
    wait_for("the message received", RESULT_WAIT, || counts("received") == Some(1));
    assert_eq!(counts("read"), Some(0));
    let listed = pc.agent().args(["messages", "--json"]).output().unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("Backup fixed, thanks!") && text.contains("Please restart the PC tonight."), "{text}");
    wait_for("the message read", RESULT_WAIT, || counts("read") == Some(1));

    let audit = audit_text(&gateway, pc.uuid);
    for what in ["action.created", "action.sent", "action.result", "message.sent"] {
        assert!(audit.contains(what), "{what} audited: {audit}");
    }
    agent.terminate(Duration::from_secs(10));
}

/// Runs `sql` on the gateway's SQLite store (what an attacker with the database could do).
fn sql(gateway: &Gateway, sql: &str) -> String {
    let output = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(gateway.data_dir().join("tether.db"))
        .arg(sql)
        .output()
        .expect("sqlite3 (scripts/install-test-deps.sh installs it)");
    assert!(output.status.success(), "{sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn create(gateway: &Gateway, uuid: &str, script: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sh");
    std::fs::write(&path, script).unwrap();
    let mut args = vec!["action", "run", uuid, "--script", path.to_str().unwrap(), "--no-wait", "--json"];
    args.extend_from_slice(extra);
    let out = gateway.cli_command(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    json_of(&out)["id"].as_str().unwrap().to_string()
}

#[test]
fn a_pc_refuses_tampered_expired_replayed_and_mistargeted_actions_and_the_refusals_are_audited() {
    use base64::Engine;
    let (gateway, subscriber) = gateway_with_subscriber_config(CONFIG);
    let (pc, mut agent) = running_pc(&gateway, &subscriber, true);
    let other = Pc::new();
    other.enroll(&gateway, &enrollment_token(&gateway, &subscriber)).expect("the second PC's enrollment");
    let uuid = pc.uuid.to_string();

    // A good action runs; then its row is set back to pending: delivered again, it is a replay.
    let good = create(&gateway, &uuid, "echo once\n", &[]);
    assert_eq!(result_of(&gateway, &good)["state"], "completed");
    sql(&gateway, &format!("UPDATE support_actions SET state = 'pending' WHERE id = '{good}'"));
    assert_eq!(result_of(&gateway, &good)["state"], "refused_replayed");

    agent.terminate(Duration::from_secs(10));
    // Offline from now: nothing below reaches the PC before its row is changed.
    wait_for("the gateway to see the PC offline", RESULT_WAIT, || {
        api_get(&gateway, &format!("/api/v1/devices/{uuid}/agent"))["connected"] == false
    });
    // Tampered: the script in the signed payload changed.
    let tampered = create(&gateway, &uuid, "echo harmless\n", &[]);
    let engine = base64::engine::general_purpose::STANDARD;
    let payload = sql(&gateway, &format!("SELECT payload FROM support_actions WHERE id = '{tampered}'"));
    let mut bytes = engine.decode(payload).unwrap();
    let at = bytes.len() - "harmless\n".len();
    bytes[at..at + 4].copy_from_slice(b"evil");
    sql(&gateway, &format!("UPDATE support_actions SET payload = '{}' WHERE id = '{tampered}'", engine.encode(&bytes)));
    // Mis-targeted: the other PC's action, redirected to this one.
    let stolen = create(&gateway, &other.uuid.to_string(), "echo for the other PC\n", &[]);
    sql(&gateway, &format!("UPDATE support_actions SET uuid = '{uuid}' WHERE id = '{stolen}'"));
    // Expired: signed to expire in 10 s, and the row's expiry moved on after it passed.
    let expired = create(&gateway, &uuid, "echo late\n", &["--expires-in", "10"]);
    std::thread::sleep(Duration::from_secs(11));
    let later = (time::OffsetDateTime::now_utc().unix_timestamp() + 3600) * 1000;
    sql(
        &gateway,
        &format!("UPDATE support_actions SET expires_at = {later}, state = 'pending' WHERE id = '{expired}'"),
    );

    let mut agent = pc.run();
    for (id, state) in
        [(&tampered, "refused_bad_signature"), (&stolen, "refused_wrong_target"), (&expired, "refused_expired")]
    {
        let result = result_of(&gateway, id);
        assert_eq!(result["state"], state, "{result}");
        assert!(result["result_text"].as_str().is_some_and(|t| !t.is_empty()), "the PC says why: {result}");
    }
    assert!(!agent.stderr().contains("evil"), "the tampered script ran:\n{}", agent.stderr());
    let audit = audit_text(&gateway, pc.uuid);
    assert!(audit.matches("action.refused").count() >= 4, "every refusal audited: {audit}");
    agent.terminate(Duration::from_secs(10));
}

#[test]
fn a_pc_whose_user_turned_remote_help_off_refuses_everything_and_says_why() {
    let (gateway, subscriber) = gateway_with_subscriber_config(CONFIG);
    let (pc, mut agent) = running_pc(&gateway, &subscriber, false);
    std::fs::write(pc.state_path().join("policy.toml"), "[forward]\nports = [22]\n").unwrap();
    let uuid = pc.uuid.to_string();
    let id = create(&gateway, &uuid, "echo never\n", &[]);
    let result = result_of(&gateway, &id);
    assert_eq!(result["state"], "refused_remote_help_off", "{result}");
    assert!(result["result_text"].as_str().unwrap().contains("remote help"), "{result}");
    // A technician's session to the PC is refused by the gateway, which knows the PC's consent.
    let rt = e2e::api::runtime();
    let refused = match rt.block_on(e2e::api::ApiClient::new(&gateway).relay(pc.uuid, 22, gateway.token())) {
        Ok(_) => panic!("a relayed session opened to a PC whose user turned remote help off"),
        Err(refused) => refused,
    };
    assert_eq!(refused.status, Some(403), "{refused}");
    assert!(refused.message.contains("remote help off"), "{refused}");
    agent.terminate(Duration::from_secs(10));
}

#[test]
fn a_contact_removed_from_the_subscriber_can_no_longer_send_actions() {
    let (gateway, subscriber) = gateway_with_subscriber_config(CONFIG);
    let carl = add_contact(&gateway, &subscriber);
    let machine = Uuid::new_v4().to_string();
    gateway.operator(&["machine", "enroll", &subscriber, &machine]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("s.sh");
    std::fs::write(&script, "true\n").unwrap();
    let send =
        || tether_as(&gateway, &carl, &["action", "run", &machine, "--script", script.to_str().unwrap(), "--no-wait"]);
    assert!(send().status.success(), "carl, an active contact, may send");

    let contacts: Value = serde_json::from_str(&gateway.operator(&["contact", "list", &subscriber, "--json"])).unwrap();
    let id = contacts[0]["id"].as_i64().unwrap().to_string();
    gateway.operator(&["contact", "remove", &subscriber, &id]);
    let refused = send();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("403") && stderr.contains("not_related"), "{stderr}");
    let message = tether_as(&gateway, &carl, &["message", "send", "--machine", &machine, "--text", "hi"]);
    assert!(!message.status.success(), "a removed contact sent a message");
}

#[test]
fn a_broadcast_reaches_200_agents_of_the_load_generator_and_every_acknowledgement_is_counted() {
    const AGENTS: u32 = 200;
    let (gateway, subscriber) = gateway_with_subscriber_config(CONFIG);
    let tokens = gateway.operator(&["machine", "enroll", &subscriber, "--count", &AGENTS.to_string()]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.txt"), &tokens).unwrap();
    let mut swarm = Command::new(bin("tether-loadtest"));
    swarm
        .args(["agents", "--gateway", &gateway.agent_addr().to_string(), "--ca"])
        .arg(gateway.ca_path())
        .arg("--dir")
        .arg(dir.path().join("agents"))
        .arg("--tokens")
        .arg(dir.path().join("tokens.txt"))
        .args(["--count", &AGENTS.to_string(), "--reports", "0", "--hold", "30", "--timeout", "150", "--json"]);
    let mut swarm = Process::spawn("tether-loadtest agents", &mut swarm);
    let connected = || gateway.metrics().get("tether_tunnels_active{kind=\"agent\"}").unwrap_or(0.0);
    wait_for("200 agents connected", Duration::from_secs(90), || connected() >= f64::from(AGENTS));

    let started = Instant::now();
    let sent = gateway.cli(&[
        "message",
        "send",
        "--subscriber",
        &subscriber,
        "--text",
        "Maintenance tonight at 22:00",
        "--json",
    ]);
    let id = serde_json::from_str::<Value>(&sent).unwrap()["id"].as_str().unwrap().to_string();
    let received = || api_get(&gateway, &format!("/api/v1/messages/{id}"))["message"]["received"].as_u64();
    wait_for("every agent's acknowledgement", Duration::from_secs(60), || received() == Some(u64::from(AGENTS)));
    eprintln!("FIGURE broadcast to {AGENTS} agents: all acknowledged in {:.2}s", started.elapsed().as_secs_f64());
    let message = api_get(&gateway, &format!("/api/v1/messages/{id}"));
    assert_eq!(message["message"]["machines"], AGENTS, "{message}");
    assert_eq!(message["deliveries"].as_array().unwrap().len(), AGENTS as usize);

    let mut status = None;
    e2e::poll_until(Duration::from_secs(120), || {
        status = swarm.try_wait();
        status.is_some()
    });
    let out = swarm.stdout();
    assert!(status.is_some_and(|s| s.success()), "the swarm failed ({status:?}): {out}\n{}", swarm.stderr());
    let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["messages_received"], AGENTS, "the swarm counts what its agents received: {report}");
}

#[test]
fn a_technician_reaches_an_echo_port_on_an_agent_pc_behind_nat() {
    use e2e::netns::{Host, Topology};
    let topology = Topology::create_unique("fwd").expect("network namespaces (run as root)");
    let (mut gateway, pc, mut agent) = enrolled_behind_nat(&topology, "heartbeat_secs = 300\n", &[]);
    gateway.set_cli_netns(&topology.ns(Host::Tech));
    // The PC's user allows remote help and lists the port in the PC's policy (read at start).
    agent.terminate(Duration::from_secs(10));
    std::fs::write(pc.state_path().join("policy.toml"), "[forward]\nports = [7007]\n").unwrap();
    let out = topology
        .wrap(Host::Home, {
            let mut c = pc.agent();
            c.arg("enable");
            c
        })
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut agent = Process::spawn(
        "tether-agent run (home)",
        &mut topology.wrap(Host::Home, {
            let mut c = pc.agent();
            c.arg("run");
            c
        }),
    );
    agent.wait_for_log(" connected", RESULT_WAIT);
    // An SSH-like service on the PC: an echo server on its loopback.
    let mut echo = topology.command(Host::Home, "socat");
    echo.args(["TCP-LISTEN:7007,bind=127.0.0.1,fork,reuseaddr", "EXEC:cat"]);
    let _echo = Process::spawn("echo on the PC", &mut echo);

    let forward = gateway.forward(pc.uuid, 7007);
    let mut answer = String::new();
    let reached = e2e::poll_until(Duration::from_secs(30), || {
        answer = talk_to(&topology, forward.addr(), "SSH-2.0-technician\n");
        answer == "SSH-2.0-technician\n"
    });
    assert!(reached, "the echo through the agent's QUIC stream: {answer:?}\n{}", agent.stderr());
    // A port the PC's policy does not list is refused, with the PC's reason: `tether forward`
    // logs the API's words for the connection it could not carry.
    let mut other = gateway.forward(pc.uuid, 7008);
    let answer = talk_to(&topology, other.addr(), "hello?\n");
    assert!(answer.is_empty(), "port 7008 answered: {answer:?}");
    let refused = other.process.wait_for_log("relay failed", Duration::from_secs(20));
    assert!(refused.contains("403") && refused.contains("policy"), "{refused}");
    agent.terminate(Duration::from_secs(10));
}

/// Sends `line` to `addr` from the technician's network with socat; what came back within 3 s
/// of the end of input.
fn talk_to(topology: &e2e::netns::Topology, addr: std::net::SocketAddr, line: &str) -> String {
    use std::io::Write;
    let mut command = topology.command(e2e::netns::Host::Tech, "socat");
    command.args(["-t", "3", "-", &format!("TCP:{addr}")]);
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(line.as_bytes()).unwrap();
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
}
