//! Accounts end to end with the real `tether` and `amt-sim` binaries: an operator registers a
//! subscriber with its owner, enrolls one of two connected devices as its machine, invites a
//! support contact who accepts; the contact's token sees only that machine and is refused a relay
//! to the other device with the policy's stable code; once the contact is removed (or suspended)
//! the token is refused and an open relay is cut. A subscriber's own MPS account admits only
//! that subscriber's machines.

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::api::{runtime, ApiClient};
use e2e::process::last_line;
use e2e::{bin, wait_for, Gateway, Sim};
use uuid::Uuid;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// `tether --data-dir DIR ARGS` with `stdin` fed in; panics unless it succeeds; stdout.
fn operator_with_stdin(gateway: &Gateway, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(bin("tether"))
        .arg("--data-dir")
        .arg(gateway.data_dir())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tether");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("writing stdin");
    let output = child.wait_with_output().expect("tether ran");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "tether {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// `tether --data-dir DIR ARGS` expected to fail; its stderr.
fn operator_fails(gateway: &Gateway, args: &[&str]) -> String {
    let output =
        Command::new(bin("tether")).arg("--data-dir").arg(gateway.data_dir()).args(args).output().expect("tether");
    assert!(!output.status.success(), "tether {args:?} succeeded: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `tether devices --json` with `token`, as a technician runs it.
fn devices_as(gateway: &Gateway, token: &str) -> Vec<String> {
    let output = Command::new(bin("tether"))
        .arg("--api")
        .arg(gateway.api_url())
        .arg("--token")
        .arg(token)
        .arg("--ca")
        .arg(gateway.ca_path())
        .args(["devices", "--json"])
        .output()
        .expect("tether devices");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "tether devices failed: {}", String::from_utf8_lossy(&output.stderr));
    let devices: serde_json::Value = serde_json::from_str(&stdout).expect("devices --json prints JSON");
    devices.as_array().unwrap().iter().filter_map(|d| d["uuid"].as_str().map(str::to_string)).collect()
}

/// A gateway with two connected devices, subscriber `olga` owning the first, and `carl` her
/// active support contact with a token of his own; (gateway, sims, olga's machine, the other
/// device, the subscriber's id, carl's token).
struct Setup {
    gateway: Gateway,
    _sims: (Sim, Sim),
    mine: Uuid,
    other: Uuid,
    subscriber: String,
    carl: String,
}

fn setup() -> Setup {
    let gateway = Gateway::start(&[]);
    let (mine, other) = (Uuid::new_v4(), Uuid::new_v4());
    let sims =
        (Sim::start(&gateway, &["--uuid", &mine.to_string()]), Sim::start(&gateway, &["--uuid", &other.to_string()]));
    wait_for("both devices to connect", CONNECT_TIMEOUT, || gateway.is_connected(mine) && gateway.is_connected(other));

    operator_with_stdin(
        &gateway,
        &["user", "add", "olga", "--email", "olga@example.com", "--password-stdin"],
        "pw-olga-long-enough\n",
    );
    let out = gateway.operator(&[
        "subscriber",
        "register",
        "--owner",
        "olga",
        "--name",
        "Olga's Bakery",
        "--email",
        "olga@example.com",
        "--max-machines",
        "2",
    ]);
    let subscriber = out.split_whitespace().nth(1).unwrap_or_else(|| panic!("no subscriber id in {out:?}")).to_string();
    gateway.operator(&["machine", "enroll", &subscriber, &mine.to_string(), "--nickname", "till"]);
    let invited = gateway.operator(&["contact", "invite", &subscriber, "carl@example.com"]);
    let guid = last_line(&invited).unwrap_or_else(|| panic!("no GUID in {invited:?}")).to_string();
    operator_with_stdin(&gateway, &["user", "add", "carl", "--password-stdin"], "pw-carl-long-enough\n");
    let accepted = gateway.operator(&["contact", "accept", &guid, "--user", "carl", "--terms", "2026-01"]);
    assert!(accepted.contains("active contact"), "{accepted}");
    let carl = gateway.create_token("carl-laptop", &["--user", "carl"]);
    Setup { gateway, _sims: sims, mine, other, subscriber, carl }
}

#[test]
fn a_contact_sees_only_the_subscribers_machine_and_cannot_reach_another_device() {
    let s = setup();
    assert_eq!(devices_as(&s.gateway, &s.carl), vec![s.mine.to_string()], "carl sees olga's machine only");
    let mut all = devices_as(&s.gateway, s.gateway.token());
    all.sort();
    let mut both = vec![s.mine.to_string(), s.other.to_string()];
    both.sort();
    assert_eq!(all, both, "the operator sees both devices");

    let client = ApiClient::new(&s.gateway);
    let rt = runtime();
    let refused = match rt.block_on(client.relay(s.other, 5900, &s.carl)) {
        Ok(_) => panic!("carl opened a relay to a device that is not olga's"),
        Err(refused) => refused,
    };
    assert_eq!(refused.status, Some(403), "{refused}");
    assert!(refused.message.contains("\"code\":\"unassigned_machine\""), "{refused}");
    // `tether forward` says so with the code, before it listens.
    let forward = Command::new(bin("tether"))
        .arg("--api")
        .arg(s.gateway.api_url())
        .arg("--token")
        .arg(&s.carl)
        .arg("--ca")
        .arg(s.gateway.ca_path())
        .args(["forward", &s.other.to_string(), "5900", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .expect("tether forward");
    let stderr = String::from_utf8_lossy(&forward.stderr);
    assert!(!forward.status.success(), "tether forward to another device started: {stderr}");
    assert!(stderr.contains("HTTP 403, code unassigned_machine"), "{stderr}");
    let shown = rt.block_on(client.get(&format!("/api/v1/devices/{}", s.other), &s.carl)).expect("a request");
    assert_eq!((shown.status, shown.json()["code"].as_str()), (403, Some("unassigned_machine")), "{}", shown.text());

    let mut relay = rt
        .block_on(client.relay(s.mine, 5900, &s.carl))
        .unwrap_or_else(|r| panic!("carl's relay to olga's machine was refused: {r}"));
    let echo = rt.block_on(relay.echo(b"hello till", Duration::from_secs(20))).expect("an echo through the relay");
    assert_eq!(echo, b"hello till");
}

#[test]
fn a_subscriber_removes_a_contact_and_the_contacts_relay_is_cut() {
    let s = setup();
    let client = ApiClient::new(&s.gateway);
    let rt = runtime();
    let mut relay = rt
        .block_on(client.relay(s.mine, 5900, &s.carl))
        .unwrap_or_else(|r| panic!("carl's relay to olga's machine was refused: {r}"));
    assert_eq!(rt.block_on(relay.echo(b"before", Duration::from_secs(20))).expect("an echo"), b"before");

    let contacts = s.gateway.operator(&["contact", "list", &s.subscriber, "--json"]);
    let contacts: serde_json::Value = serde_json::from_str(&contacts).expect("contact list --json prints JSON");
    let id = contacts[0]["id"].as_i64().expect("a contact id").to_string();
    assert_eq!(contacts[0]["state"], "active", "{contacts}");
    s.gateway.operator(&["contact", "remove", &s.subscriber, &id]);

    let end = rt.block_on(relay.wait_closed(Duration::from_secs(6)));
    assert!(end.is_some(), "carl's relay was still open 6 s after he was removed as a contact");
    let after = rt.block_on(client.get(&format!("/api/v1/devices/{}", s.mine), &s.carl)).expect("a request");
    assert_eq!((after.status, after.json()["code"].as_str()), (403, Some("not_related")), "{}", after.text());
    assert!(devices_as(&s.gateway, &s.carl).is_empty(), "a removed contact sees no machine");
    // Removing twice says what happened.
    let err = operator_fails(&s.gateway, &["contact", "remove", &s.subscriber, &id]);
    assert!(err.contains("removed"), "{err}");
}

#[test]
fn a_contact_who_leaves_loses_access_and_the_subscriber_is_told() {
    let s = setup();
    assert_eq!(devices_as(&s.gateway, &s.carl), [s.mine.to_string()]);
    let left = s.gateway.operator(&["contact", "leave", &s.subscriber, "--user", "carl"]);
    assert!(left.contains("left subscriber"), "{left}");
    assert!(devices_as(&s.gateway, &s.carl).is_empty(), "a contact who left sees no machine");
    // The gateway has no SMTP server here: the letters wait in the outbox.
    let outbox = s.gateway.operator(&["mail", "list", "--json"]);
    let outbox: serde_json::Value = serde_json::from_str(&outbox).expect("mail list --json prints JSON");
    let letters: Vec<(&str, &str)> = outbox
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| (m["kind"].as_str().unwrap_or_default(), m["recipient"].as_str().unwrap_or_default()))
        .collect();
    assert!(letters.contains(&("contact_left", "olga@example.com")), "the subscriber is told: {outbox}");
    assert!(letters.contains(&("invitation", "carl@example.com")), "the invitation was queued: {outbox}");
    let err = operator_fails(&s.gateway, &["contact", "leave", &s.subscriber, "--user", "carl"]);
    assert!(err.contains("not yours"), "leaving twice is refused by the policy: {err}");
}

#[test]
fn an_operator_suspends_a_contact_and_every_request_and_relay_ends() {
    let s = setup();
    let client = ApiClient::new(&s.gateway);
    let rt = runtime();
    let mut relay = rt
        .block_on(client.relay(s.mine, 5900, &s.carl))
        .unwrap_or_else(|r| panic!("carl's relay to olga's machine was refused: {r}"));
    assert_eq!(rt.block_on(relay.echo(b"before", Duration::from_secs(20))).expect("an echo"), b"before");

    let out = s.gateway.operator(&["user", "suspend", "carl"]);
    assert!(out.contains("suspended"), "{out}");
    let end = rt.block_on(relay.wait_closed(Duration::from_secs(6)));
    assert!(end.is_some(), "carl's relay was still open 6 s after `tether user suspend carl`");
    let after = rt.block_on(client.get("/api/v1/devices", &s.carl)).expect("a request");
    assert_eq!((after.status, after.json()["code"].as_str()), (403, Some("suspended")), "{}", after.text());

    s.gateway.operator(&["user", "unsuspend", "carl"]);
    assert_eq!(devices_as(&s.gateway, &s.carl), vec![s.mine.to_string()], "unsuspended, carl sees the machine again");
    let users = s.gateway.operator(&["user", "list", "--json"]);
    assert!(users.contains("\"carl\"") && users.contains("\"olga\""), "{users}");
}

#[test]
fn an_operator_terminates_a_subscription_and_its_contact_loses_access_and_relays() {
    let s = setup();
    let client = ApiClient::new(&s.gateway);
    let rt = runtime();
    let mut relay = rt
        .block_on(client.relay(s.mine, 5900, &s.carl))
        .unwrap_or_else(|r| panic!("carl's relay to olga's machine was refused: {r}"));
    assert_eq!(rt.block_on(relay.echo(b"before", Duration::from_secs(20))).expect("an echo"), b"before");

    let out = s.gateway.operator(&["subscriber", "terminate", &s.subscriber, "--reason", "contract ended"]);
    assert!(out.contains("1 contact relations ended"), "{out}");
    let end = rt.block_on(relay.wait_closed(Duration::from_secs(6)));
    assert!(end.is_some(), "carl's relay was still open 6 s after the subscription was terminated");
    assert!(devices_as(&s.gateway, &s.carl).is_empty(), "a former contact sees no machine");
    let listed = s.gateway.operator(&["subscriber", "list", "--json"]);
    assert!(listed.contains("\"terminated\""), "{listed}");
    // A terminated subscription takes no more contacts, and says so.
    let err = operator_fails(&s.gateway, &["contact", "invite", &s.subscriber, "new@example.com"]);
    assert!(err.contains("terminated"), "{err}");
}

#[test]
fn an_operator_who_names_what_does_not_exist_is_told_what_to_do() {
    let gateway = Gateway::start(&[]);
    operator_with_stdin(&gateway, &["user", "add", "carl", "--password-stdin"], "pw-carl-long-enough\n");
    let err =
        operator_fails(&gateway, &["contact", "accept", &Uuid::new_v4().to_string(), "--user", "carl", "--terms", "1"]);
    assert!(err.contains("no such invitation"), "{err}");
    let err = operator_fails(&gateway, &["machine", "enroll", "42", &Uuid::new_v4().to_string()]);
    assert!(err.contains("subscriber list"), "{err}");
    let err =
        operator_fails(&gateway, &["subscriber", "register", "--owner", "nobody", "--name", "N", "--email", "e@x"]);
    assert!(err.contains("tether user add nobody"), "{err}");
}

/// The value of `tether_auth_failures_total{reason="REASON"}` on the gateway's metrics.
fn auth_failures(gateway: &Gateway, reason: &str) -> f64 {
    let series = format!("tether_auth_failures_total{{reason=\"{reason}\"}}");
    gateway
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn a_subscribers_mps_account_admits_only_that_subscribers_machines() {
    let gateway = Gateway::start(&[]);
    let mut subscribers = Vec::new();
    for (owner, name) in [("olga", "Olga's Bakery"), ("otto", "Otto's Garage")] {
        let args = ["user", "add", owner, "--password-stdin"];
        operator_with_stdin(&gateway, &args, "a long password\n");
        let email = format!("{owner}@example.com");
        let out =
            gateway.operator(&["subscriber", "register", "--owner", owner, "--name", name, "--email", email.as_str()]);
        subscribers.push(out.split_whitespace().nth(1).expect("subscriber id").to_string());
    }
    let [olgas, ottos, olgas_second, nobodys] = [(); 4].map(|()| Uuid::new_v4());
    for (subscriber, uuid) in [(&subscribers[0], olgas), (&subscribers[1], ottos), (&subscribers[0], olgas_second)] {
        gateway.operator(&["machine", "enroll", subscriber, &uuid.to_string()]);
    }
    let issued = gateway.operator(&["subscriber", "mps-account", &subscribers[0]]);
    let field = |name: &str| {
        issued
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {issued:?}"))
            .trim()
            .to_string()
    };
    let (user, password) = (field("username:"), field("password:"));

    // Olga's account admits her machine.
    let _olgas = Sim::start_as(&gateway, &user, &password, &["--uuid", &olgas.to_string()]);
    wait_for("olga's machine to connect with her MPS account", CONNECT_TIMEOUT, || gateway.is_connected(olgas));

    // It admits no machine of another subscriber, and no UUID nobody enrolled.
    let before = auth_failures(&gateway, "credential_mismatch");
    let ottos_with_olgas = Sim::start_as(&gateway, &user, &password, &["--uuid", &ottos.to_string()]);
    let _nobodys = Sim::start_as(&gateway, &user, &password, &["--uuid", &nobodys.to_string()]);
    // Olga's other machine through the gateway-wide account: her subscriber has its own now.
    let _wide = Sim::start(&gateway, &["--uuid", &olgas_second.to_string()]);
    wait_for("three refusals as credential_mismatch", CONNECT_TIMEOUT, || {
        auth_failures(&gateway, "credential_mismatch") >= before + 3.0
    });
    for uuid in [ottos, nobodys, olgas_second] {
        assert!(!gateway.is_connected(uuid), "{uuid} got in with an account that is not its subscriber's");
    }

    // The gateway-wide account stays for subscribers without an account of their own (a UUID
    // that kept failing gets a real check every few seconds).
    drop(ottos_with_olgas);
    let _ottos_wide = Sim::start(&gateway, &["--uuid", &ottos.to_string()]);
    wait_for("otto's machine to connect with the gateway-wide account", CONNECT_TIMEOUT, || {
        gateway.is_connected(ottos)
    });
}
