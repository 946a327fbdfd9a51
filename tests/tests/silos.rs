//! Silos end to end, with real `tether` gateways (a root and a maintenance silo, each with its own
//! SQLite store) and real `tether-agent`s on loopback: a PC enrolls through the root, which gives
//! it to silo A in a maintenance certificate; A admits it by that certificate alone, with the root
//! stopped, and stores its reports; A's database holds none of the subscriber's personal data; a
//! certificate the root revokes is refused by A within one pull of the revocation list. And the
//! refusals: an expired entitlement, a tier A does not serve, an enrollment at A, a hello at the
//! root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::agent::{enrollment_token, register_olga, Pc};
use e2e::api::{runtime, ApiClient};
use e2e::browser::{browser_step, screens_dir};
use e2e::{operator_in, wait_for, Gateway};

const WAIT: Duration = Duration::from_secs(30);

/// GET `path` as the gateway's operator; the JSON.
fn get(gateway: &Gateway, path: &str) -> serde_json::Value {
    let response = runtime().block_on(ApiClient::new(gateway).get(path, gateway.token())).expect("an API request");
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.json()
}

/// A UDP port free on loopback now (the silo's agent listener must be known before it starts:
/// the root tells agents where it is).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free UDP port").port()
}

/// A root, a maintenance silo `silo-a` that joined it, and `silo-b` when asked (their `[silo]`
/// settings `silo_toml`); the CA file agents trust holds every gateway's TLS CA.
struct Silos {
    root: Gateway,
    a: Gateway,
    b: Option<Gateway>,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

fn root_and_silo_a(silo_toml: &str) -> Silos {
    root_and_silos(silo_toml, false)
}

fn root_and_silos(silo_toml: &str, with_b: bool) -> Silos {
    let dir = tempfile::tempdir().unwrap();
    let root = Gateway::start_with_config("[agents]\nheartbeat_secs = 5\n", &["--role", "root"]);
    let a = maintenance_silo(&root, "silo-a", silo_toml, dir.path());
    let b = with_b.then(|| maintenance_silo(&root, "silo-b", silo_toml, dir.path()));
    let ca = dir.path().join("cas.pem");
    let cas = [Some(&root), Some(&a), b.as_ref()]
        .into_iter()
        .flatten()
        .map(|g| std::fs::read_to_string(g.ca_path()).unwrap())
        .collect::<String>();
    std::fs::write(&ca, cas).unwrap();
    Silos { root, a, b, ca, _dir: dir }
}

/// A maintenance silo `name` of `root`, joined with the bundle the root wrote for its key.
fn maintenance_silo(root: &Gateway, name: &str, silo_toml: &str, dir: &Path) -> Gateway {
    let port = free_udp_port();
    let bundle = dir.join(format!("{name}.json"));
    let config =
        format!("[agents]\nheartbeat_secs = 5\ndelivery_poll_secs = 2\n[silo]\nrevocations_pull_secs = 1\naggregates_push_secs = 1\n{silo_toml}");
    let agent_listen = format!("127.0.0.1:{port}");
    Gateway::start_with_setup(&config, &["--role", "maintenance", "--agent-listen", &agent_listen], |data| {
        // The silo's key goes to the root, which certifies it in the bundle the silo joins with.
        let key = operator_in(data, &["silo", "key"]);
        add_silo(root, name, port, key.trim(), &bundle);
        let joined = operator_in(data, &["silo", "join", bundle.to_str().unwrap()]);
        assert!(joined.contains(&format!("as silo {name}")), "{joined}");
    })
}

/// `tether silo add NAME` on `root`: location 127.0.0.1:`port`, region eu (us for `silo-b`), the
/// silo's signing key `key`; the bundle written to `bundle`.
fn add_silo(root: &Gateway, name: &str, port: u16, key: &str, bundle: &Path) {
    let region = if name == "silo-b" { "us" } else { "eu" };
    let added = root.operator(&[
        "silo",
        "add",
        name,
        "--location",
        &format!("127.0.0.1:{port}"),
        "--capacity",
        "100",
        "--region",
        region,
        "--root-api",
        &root.api_url(),
        "--signing-key",
        key,
        "--bundle",
        bundle.to_str().unwrap(),
    ]);
    assert!(added.contains(&format!("silo {name} registered")), "{added}");
}

/// Every row of every table of the SQLite store in `data_dir`, as `sqlite3 .dump` prints it.
fn dump(data_dir: &Path) -> String {
    let output = std::process::Command::new("sqlite3")
        .arg(data_dir.join("tether.db"))
        .arg(".dump")
        .output()
        .expect("running sqlite3 (scripts/install-test-deps.sh installs it)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Registers subscriber "Pavel Novak Plumbing" (owner pavel, an email and a phone number) on
/// the root; its id.
fn register_pavel(root: &Gateway) -> String {
    root.operator_with_stdin(
        &["user", "add", "pavel", "--email", "pavel.contact@example.org", "--password-stdin"],
        "pw-pavel-long-enough\n",
    );
    let registered = root.operator(&[
        "subscriber",
        "register",
        "--owner",
        "pavel",
        "--name",
        "Pavel Novak Plumbing",
        "--email",
        "pavel.contact@example.org",
        "--phone",
        "+420 601 234 567",
        "--max-machines",
        "10",
    ]);
    registered.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn a_pc_enrolled_through_the_root_is_served_by_its_silo_with_the_root_stopped() {
    let Silos { mut root, a, ca, _dir, .. } = root_and_silo_a("");
    let subscriber = register_olga(&root);
    // Personal data the root keeps and silo A must never see.
    let pavel = register_pavel(&root);

    let pc = Pc::new();
    let token = enrollment_token(&root, &pavel);
    let enrolled = pc.enroll_at(&root.agent_addr().to_string(), &token, &ca).expect("enrollment through the root");
    assert!(enrolled.contains(&pc.uuid.to_string()), "{enrolled}");
    let status = pc.status();
    assert_eq!(status["gateways"], serde_json::json!([a.agent_addr().to_string()]), "sent to silo A only: {status}");
    let silos = root.operator(&["silo", "list", "--json"]);
    let silos: serde_json::Value = serde_json::from_str(&silos).unwrap();
    assert_eq!(silos[0]["assigned"], 1, "{silos}");
    let _ = subscriber;

    // The root goes away; A admits the PC by its certificate and stores its reports.
    root.stop();
    let mut agent = pc.run();
    wait_for("a report stored on silo A", WAIT, || {
        get(&a, &format!("/api/v1/devices/{}/agent", pc.uuid))["latest"].is_object()
    });
    // Its configuration is signed by A's key, which the root certified: the agent takes it.
    wait_for("the agent to take silo A's configuration", WAIT, || {
        agent.stderr().contains("configuration from the gateway applied (signature verified)")
    });
    assert!(agent.stderr().contains("the silo's signing key is certified by the root"), "{}", agent.tail());
    // A message made on A, signed with A's key: the PC user gets it.
    let sent = a.cli(&["message", "send", "--machine", &pc.uuid.to_string(), "--text", "Silo A says hello"]);
    assert!(!sent.is_empty(), "{sent}");
    wait_for("the agent to keep silo A's message", WAIT, || agent.stderr().contains("message for the PC user kept"));
    let clients: serde_json::Value = serde_json::from_str(&a.operator(&["silo", "clients", "--json"])).unwrap();
    let client = &clients[0];
    assert_eq!(client["uuid"], pc.uuid.to_string(), "{clients}");
    assert_eq!(client["tier"], "standard", "{clients}");
    assert_eq!(client["service"], "support", "{clients}");
    let opaque = client["subscriber"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&opaque).is_ok(), "the subscriber is an opaque id: {opaque}");
    assert_ne!(opaque, pavel, "not the root's own id");

    // Nothing A stored names the subscriber.
    let a_rows = dump(a.data_dir());
    for pii in ["Pavel Novak Plumbing", "pavel.contact@example.org", "+420 601 234 567", "pavel", "Olga", "olga@"] {
        assert!(!a_rows.to_lowercase().contains(&pii.to_lowercase()), "silo A's store holds {pii:?}");
    }
    let root_rows = dump(root.data_dir());
    assert!(root_rows.contains("pavel.contact@example.org"), "the root keeps the personal data");
    assert!(root_rows.contains(&opaque), "the root knows the opaque id");

    // The root revokes the PC: A refuses it within a pull, and ends its session.
    root.restart();
    let revoked = runtime()
        .block_on(ApiClient::new(&root).post(&format!("/api/v1/devices/{}/agent/revoke", pc.uuid), root.token()))
        .expect("a request");
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    wait_for("silo A to end the revoked PC's session", WAIT, || {
        get(&a, &format!("/api/v1/devices/{}/agent", pc.uuid))["connected"] == false
    });
    wait_for("the agent to hear it was revoked", WAIT, || agent.stderr().contains("revoked"));
    // It stays refused, the root stopped again (A keeps the list it pulled).
    root.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(get(&a, &format!("/api/v1/devices/{}/agent", pc.uuid))["connected"], false);
    agent.terminate(Duration::from_secs(10));
}

#[test]
fn silos_refuse_what_the_certificate_does_not_allow() {
    let Silos { root, a, ca, _dir, .. } = root_and_silo_a("tiers = [\"standard\"]\n");
    let olga = register_olga(&root);
    let root_addr = root.agent_addr().to_string();

    // A tier silo A does not serve.
    root.operator(&["silo", "entitle", &olga, "--tier", "gold"]);
    let gold = Pc::new();
    gold.enroll_at(&root_addr, &enrollment_token(&root, &olga), &ca).expect("enrollment");
    let mut agent = gold.run();
    wait_for("silo A to refuse the gold tier", WAIT, || agent.stderr().contains("tier gold is not served"));
    agent.terminate(Duration::from_secs(10));

    // An entitlement that has ended: the certificate ends with it.
    let until = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let until = until.format(&time::format_description::well_known::Rfc3339).unwrap();
    root.operator(&["silo", "entitle", &olga, "--tier", "standard", "--until", &until]);
    let short = Pc::new();
    short.enroll_at(&root_addr, &enrollment_token(&root, &olga), &ca).expect("enrollment");
    std::thread::sleep(Duration::from_secs(5));
    let mut agent = short.run();
    wait_for("silo A to refuse the expired certificate", WAIT, || {
        short.status()["last_error"].as_str().is_some_and(|e| e.to_lowercase().contains("expired"))
    });
    agent.terminate(Duration::from_secs(10));
    let clients: serde_json::Value = serde_json::from_str(&a.operator(&["silo", "clients", "--json"])).unwrap();
    assert_eq!(clients, serde_json::json!([]), "neither was admitted");
    // And no new machine once the entitlement has ended.
    let refused = Pc::new().enroll_at(&root_addr, &enrollment_token(&root, &olga), &ca).expect_err("refused");
    assert!(refused.contains("entitlement_expired"), "{refused}");

    // Enrolling at a maintenance silo is refused: the root enrolls.
    root.operator(&["silo", "entitle", &olga, "--no-end"]);
    let token = enrollment_token(&root, &olga);
    let refused = Pc::new().enroll_at(&a.agent_addr().to_string(), &token, &ca).expect_err("refused at A");
    assert!(refused.contains("enroll through the root"), "{refused}");
}

#[test]
fn a_silo_joins_only_with_a_bundle_the_root_signed_for_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = Gateway::start(&["--role", "root"]);
    let silo_dir = tempfile::tempdir().unwrap();
    let own_key = operator_in(silo_dir.path(), &["silo", "key"]);
    let join = |bundle: &Path| {
        let output = std::process::Command::new(e2e::bin("tether"))
            .arg("--data-dir")
            .arg(silo_dir.path())
            .args(["silo", "join"])
            .arg(bundle)
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };

    // The root certified another key (a silo that lost or swapped its key).
    let other = dir.path().join("other.json");
    add_silo(&root, "silo-x", free_udp_port(), &"ab".repeat(32), &other);
    let (code, err) = join(&other);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("certifies signing key"), "{err}");

    // A bundle whose certification was altered after the root signed it.
    let good = dir.path().join("good.json");
    add_silo(&root, "silo-y", free_udp_port(), own_key.trim(), &good);
    let mut bundle: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&good).unwrap()).unwrap();
    let payload = bundle["silo_key"].as_str().unwrap().to_string();
    let last = if payload.ends_with('0') { '1' } else { '0' };
    bundle["silo_key"] = format!("{}{last}", &payload[..payload.len() - 1]).into();
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, bundle.to_string()).unwrap();
    let (code, err) = join(&tampered);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not signed by the root"), "{err}");

    // The bundle as the root wrote it joins.
    let (code, err) = join(&good);
    assert_eq!(code, Some(0), "{err}");
}

/// The aggregates silo `silo` last sent `root`, as its API shows them (null: none yet).
fn aggregates_of(root: &Gateway, silo: &str) -> serde_json::Value {
    let silos = get(root, "/api/v1/silos");
    let one = silos["silos"].as_array().unwrap().iter().find(|s| s["name"] == silo).cloned();
    one.map(|s| s["aggregates"].clone()).unwrap_or_default()
}

/// The reports silo `gateway` stores of machine `uuid`: their sequence numbers, oldest first.
fn report_seqs(gateway: &Gateway, uuid: uuid::Uuid) -> Vec<u64> {
    let reports = get(gateway, &format!("/api/v1/devices/{uuid}/telemetry"));
    let mut seqs: Vec<u64> = reports.as_array().unwrap().iter().filter_map(|r| r["seq"].as_u64()).collect();
    seqs.sort_unstable();
    seqs
}

#[test]
fn an_operator_moves_a_subscribers_pcs_to_silo_b_and_their_history_follows() {
    let Silos { root, a, b, ca, _dir } = root_and_silos("", true);
    let b = b.unwrap();
    let olga = register_olga(&root);
    // Olga's machines go to the region of silo A (B is in another).
    root.operator(&["silo", "entitle", &olga, "--region", "eu"]);
    let root_addr = root.agent_addr().to_string();
    // Two PCs on silo A: one runs through the move, the other is off during it.
    let (running, off) = (Pc::new(), Pc::new());
    for pc in [&running, &off] {
        pc.enroll_at(&root_addr, &enrollment_token(&root, &olga), &ca).expect("enrollment through the root");
        assert_eq!(pc.status()["gateways"], serde_json::json!([a.agent_addr().to_string()]));
    }
    let mut agent = running.run();
    let mut later = off.run();
    wait_for("both PCs' reports and meters on silo A", WAIT, || {
        [&running, &off].iter().all(|pc| {
            report_seqs(&a, pc.uuid).len() >= 2
                && get(&a, &format!("/api/v1/devices/{}/health", pc.uuid))["health"].is_string()
        })
    });
    later.terminate(Duration::from_secs(10));
    let on_a = report_seqs(&a, running.uuid);
    let meter_on_a = get(&a, &format!("/api/v1/devices/{}/health", running.uuid));

    // Silo A's aggregates reach the root, signed, and match the PCs' meters on A.
    let meters: Vec<String> = [&running, &off]
        .iter()
        .map(|pc| get(&a, &format!("/api/v1/devices/{}/health", pc.uuid))["health"].as_str().unwrap().to_string())
        .collect();
    let expected = |state: &str| meters.iter().filter(|m| *m == state).count() as u64;
    wait_for("silo A's aggregates on the root", WAIT, || {
        let got = aggregates_of(&root, "silo-a");
        got["machines"]["machines"] == 2
            && ["green", "yellow", "red"].iter().all(|s| got["machines"][*s].as_u64() == Some(expected(s)))
            && got["connected"] == 1
    });
    let got = aggregates_of(&root, "silo-a");
    let opaque = got["subscribers"].as_object().unwrap().keys().next().unwrap().clone();
    assert!(uuid::Uuid::parse_str(&opaque).is_ok(), "subscribers by opaque id only: {got}");
    assert_eq!(got["subscribers"][&opaque]["machines"], 2, "{got}");
    assert_eq!(got["tiers"]["standard"]["machines"], 2, "{got}");
    let table = root.operator(&["silo", "aggregates"]);
    assert!(table.lines().any(|l| l.starts_with("silo-a") && l.split_whitespace().nth(1) == Some("2")), "{table}");

    // The operator moves every machine of the subscriber to silo B.
    let started = std::time::Instant::now();
    let moved = root.operator(&["silo", "move", "--subscriber", &olga, "--to", "silo-b", "--json"]);
    let moved: serde_json::Value = serde_json::from_str(&moved).unwrap();
    assert_eq!(moved.as_array().unwrap().len(), 2, "{moved}");
    assert!(moved.as_array().unwrap().iter().all(|m| m["from"] == "silo-a" && m["to"] == "silo-b"), "{moved}");

    // The running PC gets there through A, while it runs, with its history.
    wait_for("the running PC on silo B", WAIT, || {
        get(&b, &format!("/api/v1/devices/{}/agent", running.uuid))["connected"] == true
    });
    let took = started.elapsed();
    eprintln!("move of a connected PC from silo A to silo B: {} ms", took.as_millis());
    assert!(agent.stderr().contains("moved by the root to another silo"), "{}", agent.tail());
    wait_for("the running PC's history on silo B", WAIT, || {
        let on_b = report_seqs(&b, running.uuid);
        on_a.iter().all(|seq| on_b.contains(seq))
    });
    let meter_on_b = get(&b, &format!("/api/v1/devices/{}/health", running.uuid));
    assert_eq!(meter_on_b["changes"].as_array().map(Vec::len), meter_on_a["changes"].as_array().map(Vec::len));
    assert_eq!(running.status()["gateways"], serde_json::json!([b.agent_addr().to_string()]));
    // B has it, reported so to the root: A forgets it.
    wait_for("silo A to forget the running PC", WAIT, || {
        let clients: serde_json::Value = serde_json::from_str(&a.operator(&["silo", "clients", "--json"])).unwrap();
        !clients.as_array().unwrap().iter().any(|c| c["uuid"] == running.uuid.to_string())
    });
    assert!(report_seqs(&a, running.uuid).is_empty(), "silo A still holds the running PC's reports");
    assert!(!dump(a.data_dir()).contains(&running.uuid.to_string()), "silo A's store still names the running PC");
    // New reports go on at B.
    let last_on_a = *on_a.last().unwrap();
    wait_for("a new report on silo B", WAIT, || report_seqs(&b, running.uuid).iter().any(|s| *s > last_on_a + 1));

    // The PC that was off dials A, its silo as far as it knows, and is sent on to B.
    let mut later = off.run();
    wait_for("the PC that was off on silo B", WAIT, || {
        get(&b, &format!("/api/v1/devices/{}/agent", off.uuid))["connected"] == true
    });
    wait_for("silo A to forget the PC that was off", WAIT, || {
        let clients: serde_json::Value = serde_json::from_str(&a.operator(&["silo", "clients", "--json"])).unwrap();
        clients.as_array().unwrap().is_empty()
    });
    let on_b: serde_json::Value = serde_json::from_str(&b.operator(&["silo", "clients", "--json"])).unwrap();
    assert_eq!(on_b.as_array().unwrap().len(), 2, "{on_b}");
    assert!(on_b.as_array().unwrap().iter().all(|c| c["moved_from"] == "silo-a"), "{on_b}");
    let silos: serde_json::Value = serde_json::from_str(&root.operator(&["silo", "list", "--json"])).unwrap();
    let assigned =
        |name: &str| silos.as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()["assigned"].clone();
    assert_eq!((assigned("silo-a"), assigned("silo-b")), (0.into(), 2.into()), "{silos}");
    // The aggregates follow: both on B, none left on A; the sum across silos is still two.
    wait_for("the aggregates to show both PCs on silo B", WAIT, || {
        let total = get(&root, "/api/v1/silos")["total"].clone();
        aggregates_of(&root, "silo-b")["machines"]["machines"] == 2
            && aggregates_of(&root, "silo-a")["machines"]["machines"] == 0
            && total["machines"]["machines"] == 2
    });
    later.terminate(Duration::from_secs(10));
    agent.terminate(Duration::from_secs(10));
}

/// `len` bytes that differ from one item to the next (`seed`).
fn item_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `tether-agent content get NAME --out OUT --json` on `pc`: its JSON, or its error.
fn agent_gets(pc: &Pc, name: &str, out: &Path) -> Result<serde_json::Value, String> {
    let output = pc
        .agent()
        .args(["content", "get", name, "--json", "--out"])
        .arg(out)
        .output()
        .expect("tether-agent content get");
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).expect("content get --json prints JSON"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `tether content get NAME` through `gateway`'s API, checked with `root_key`: its JSON, or its
/// exit code and error.
fn technician_gets(
    gateway: &Gateway,
    name: &str,
    out: &Path,
    root_key: &str,
) -> Result<serde_json::Value, (i32, String)> {
    let output = gateway
        .cli_command(&["content", "get", name, "--json", "--root-key", root_key, "--out", out.to_str().unwrap()])
        .output()
        .expect("tether content get");
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).expect("content get --json prints JSON"))
    } else {
        Err((output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned()))
    }
}

#[test]
fn the_root_publishes_content_silo_a_caches_it_and_only_the_roots_bytes_are_kept() {
    // A's cache holds 5 MiB: a second 3 MiB item evicts the first.
    let Silos { mut root, a, ca, _dir, .. } = root_and_silo_a("[content]\ncache_max_bytes = 5242880\n");
    let olga = register_olga(&root);
    let pc = Pc::new();
    pc.enroll_at(&root.agent_addr().to_string(), &enrollment_token(&root, &olga), &ca).expect("enrollment");
    let work = tempfile::tempdir().unwrap();

    // The root publishes 3 MiB of signatures, signed with its key.
    let sigs = item_bytes(3 << 20, 1);
    let file = work.path().join("sigs.bin");
    std::fs::write(&file, &sigs).unwrap();
    let published: serde_json::Value = serde_json::from_str(&root.operator(&[
        "content",
        "publish",
        "av-sigs",
        file.to_str().unwrap(),
        "--kind",
        "signatures",
        "--json",
    ]))
    .unwrap();
    assert_eq!(published["sha256"], sha256_hex(&sigs), "{published}");
    let root_key = published["root_key"].as_str().unwrap().to_string();
    assert_eq!(published["root_key"], pc.status()["signing_key"], "the key the PC pinned at enrollment");

    // An earlier download to A broke off after 1 MiB: A goes on from there.
    let cache = a.data_dir().join("content/cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join(format!("av-sigs.{}.part", sha256_hex(&sigs))), &sigs[..1 << 20]).unwrap();

    // The agent asks A, which fetches it from the root first; the agent checks it with the key
    // it pinned, and keeps it.
    let kept = work.path().join("agent-sigs.bin");
    let got = agent_gets(&pc, "av-sigs", &kept).expect("the agent gets the item");
    assert_eq!(got["verified"], true, "{got}");
    assert_eq!(got["sha256"], sha256_hex(&sigs), "{got}");
    assert_eq!(got["gateway"], a.agent_addr().to_string(), "{got}");
    assert_eq!(std::fs::read(&kept).unwrap(), sigs);
    assert!(
        a.process().stderr().contains("resuming a content item's download from the root"),
        "A did not resume its part:\n{}",
        a.process().tail()
    );
    let listed: serde_json::Value = serde_json::from_str(&a.cli(&["content", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "av-sigs", "{listed}");
    assert_eq!(listed[0]["sha256"], sha256_hex(&sigs), "{listed}");

    // A technician fetches it through A's API and checks it with the root's key; with another
    // key, it is refused (exit code 4) and nothing is kept.
    let tech = work.path().join("tech-sigs.bin");
    let got = technician_gets(&a, "av-sigs", &tech, &root_key).expect("the technician gets the item");
    assert_eq!(got["sha256"], sha256_hex(&sigs), "{got}");
    assert_eq!(std::fs::read(&tech).unwrap(), sigs);
    let rogue = work.path().join("rogue.bin");
    let (code, err) = technician_gets(&a, "av-sigs", &rogue, &"ab".repeat(32)).unwrap_err();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not signed by the root"), "{err}");
    assert!(!rogue.exists());

    // With the root stopped, A serves what it holds.
    root.stop();
    let again = work.path().join("again.bin");
    agent_gets(&pc, "av-sigs", &again).expect("from A's cache with the root stopped");
    assert_eq!(std::fs::read(&again).unwrap(), sigs);

    // Someone alters A's copy: the agent and the technician refuse it, and keep nothing.
    let data = cache.join(format!("av-sigs.{}.data", sha256_hex(&sigs)));
    let mut altered = std::fs::read(&data).unwrap();
    altered[12_345] ^= 0x40;
    std::fs::write(&data, &altered).unwrap();
    let refused_at = work.path().join("altered.bin");
    let err = agent_gets(&pc, "av-sigs", &refused_at).unwrap_err();
    assert!(err.contains("was altered"), "{err}");
    assert!(!refused_at.exists() && !work.path().join("altered.bin.part").exists());
    let (code, err) = technician_gets(&a, "av-sigs", &refused_at, &root_key).unwrap_err();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("was altered"), "{err}");

    // A second item does not fit beside the first in A's 5 MiB: the first, used least recently,
    // is evicted.
    root.restart();
    let script = item_bytes(3 << 20, 2);
    std::fs::write(&file, &script).unwrap();
    root.operator(&["content", "publish", "big-script", file.to_str().unwrap(), "--kind", "script"]);
    let got = agent_gets(&pc, "big-script", &work.path().join("script.bin")).expect("the second item");
    assert_eq!(got["sha256"], sha256_hex(&script), "{got}");
    let listed: serde_json::Value = serde_json::from_str(&a.cli(&["content", "list", "--json"])).unwrap();
    let names: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(names, ["big-script"], "{listed}");
    assert!(!data.exists(), "the evicted item's bytes are gone");
    // Asked again, the first comes back from the root, whole.
    let back = work.path().join("back.bin");
    agent_gets(&pc, "av-sigs", &back).expect("the evicted item again");
    assert_eq!(std::fs::read(&back).unwrap(), sigs);
    // An item the root never published.
    let err = agent_gets(&pc, "no-such-item", &work.path().join("none")).unwrap_err();
    assert!(err.contains("no content item"), "{err}");

    // A rescue image the root published reaches an AMT PC behind silo A over IDE-R: A fetches it
    // into its cache and serves it itself; the PC's firmware reads it whole, with the root's hash.
    let iso = work.path().join("rescue.iso");
    let len = 1 << 20;
    let sha = e2e::remote::random_image(&iso, len);
    root.operator(&["content", "publish", "small-rescue", iso.to_str().unwrap(), "--kind", "rescue-image"]);
    let (uuid, mut sim) = e2e::remote::pc(&a, &["--boot-ider"]);
    let mut serving = e2e::remote::ider(&a, uuid, e2e::remote::ADMIN_PASSWORD, &["--image", "content:small-rescue"]);
    sim.wait_for_log(&format!("IDE-R boot: cd read {len} bytes sha256={sha}"), Duration::from_secs(120));
    serving.signal("INT");
    let status = serving.terminate(Duration::from_secs(30));
    assert!(status.success(), "tether ider through silo A failed ({status}):\n{}", serving.stderr());
    let listed: serde_json::Value = serde_json::from_str(&a.cli(&["content", "list", "--json"])).unwrap();
    assert!(listed.as_array().unwrap().iter().any(|i| i["name"] == "small-rescue" && i["sha256"] == sha), "{listed}");
}

#[test]
fn a_subscriber_signs_in_at_the_root_and_sees_its_pc_on_silo_a_in_the_browser_with_the_root_stopped() {
    let Silos { mut root, a, ca, _dir, .. } = root_and_silo_a("");
    let olga = register_olga(&root);
    let pavel = register_pavel(&root);
    let (olgas_pc, pavels_pc) = (Pc::new(), Pc::new());
    let mut agents = Vec::new();
    for (pc, subscriber) in [(&olgas_pc, &olga), (&pavels_pc, &pavel)] {
        let token = enrollment_token(&root, subscriber);
        pc.enroll_at(&root.agent_addr().to_string(), &token, &ca).expect("enrollment through the root");
        agents.push(pc.run());
        wait_for("a report stored on silo A", WAIT, || {
            get(&a, &format!("/api/v1/devices/{}/agent", pc.uuid))["latest"].is_object()
        });
    }
    // Two host names for the browser (each keeps its own cookies), both on loopback.
    let (root_url, silo_url) = (
        format!("https://root.test:{}", root.api_addr().port()),
        format!("https://silo-a.test:{}", a.api_addr().port()),
    );
    let hosts = "MAP root.test 127.0.0.1, MAP silo-a.test 127.0.0.1";
    let set = root.operator(&["silo", "portal", "silo-a", &silo_url]);
    assert!(set.contains("silo silo-a's portal is"), "{set}");

    let state = _dir.path().join("browser-state.json");
    let at_root = browser_step(
        "root_signin.mjs",
        serde_json::json!({
            "step": "root",
            "root": root_url,
            "silo": silo_url,
            "username": "olga",
            "password": "pw-olga-long-enough",
            "machine": olgas_pc.uuid,
            "hidden": pavels_pc.uuid,
            "state": state,
            "hosts": hosts,
            "screens": screens_dir(),
        }),
    );
    assert!(
        at_root.contains(&format!("ok: on silo A, sees {} and not {}", olgas_pc.uuid, pavels_pc.uuid)),
        "{at_root}"
    );
    let handoff = at_root.lines().find_map(|l| l.strip_prefix("ok: handoff ")).expect("the sign-in link").to_string();
    assert!(handoff.starts_with(&format!("{silo_url}/portal/root-signin?assertion=")), "{handoff}");

    // The root goes away: the session silo A opened goes on; the link is spent.
    root.stop();
    let at_silo = browser_step(
        "root_signin.mjs",
        serde_json::json!({
            "step": "silo",
            "silo": silo_url,
            "machine": olgas_pc.uuid,
            "state": state,
            "handoff": handoff,
            "hosts": hosts,
            "screens": screens_dir(),
        }),
    );
    assert!(at_silo.contains("ok: a tampered sign-in link is refused"), "{at_silo}");
    assert!(a.process().log_line_containing("signed in through the root").is_some(), "silo A logs the arrival");

    // Silo A knows olga only by an opaque id.
    let rows = dump(a.data_dir());
    for pii in ["olga", "Olga's Bakery", "pavel", "Pavel Novak Plumbing"] {
        assert!(!rows.to_lowercase().contains(&pii.to_lowercase()), "silo A's store holds {pii:?}");
    }
    assert!(rows.contains("'root:"), "the person is kept under the root's opaque id");
    for mut agent in agents {
        agent.terminate(Duration::from_secs(10));
    }
}

/// `tether action run UUID --script FILE --json` against `gateway`; its JSON (whatever its exit).
fn run_script(gateway: &Gateway, uuid: uuid::Uuid, script: &Path) -> serde_json::Value {
    let uuid = uuid.to_string();
    let args = ["action", "run", &uuid, "--script", script.to_str().unwrap(), "--timeout", "20", "--json"];
    let output = gateway.cli_command(&args).output().expect("running tether action run");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("tether action run printed no JSON ({e}):\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

#[test]
fn the_root_signs_an_action_for_a_pc_on_silo_a_which_runs_it_and_the_result_reaches_the_root() {
    let Silos { root, a, ca, _dir, .. } = root_and_silo_a("");
    let olga = register_olga(&root);
    let pc = Pc::new();
    let token = enrollment_token(&root, &olga);
    pc.enroll_at(&root.agent_addr().to_string(), &token, &ca).expect("enrollment through the root");
    let enabled = pc.agent().arg("enable").output().unwrap();
    assert!(enabled.status.success(), "{}", String::from_utf8_lossy(&enabled.stderr));
    let mut agent = pc.run();
    wait_for("the PC's session on silo A", WAIT, || {
        get(&a, &format!("/api/v1/devices/{}/agent", pc.uuid))["connected"] == true
    });
    let script = _dir.path().join("hello.sh");
    std::fs::write(&script, "echo \"hello from a PC of silo A\"\n").unwrap();

    // Made and signed at the root; fetched, delivered and answered through silo A.
    let started = std::time::Instant::now();
    let result = run_script(&root, pc.uuid, &script);
    assert_eq!((result["state"].as_str(), result["exit_code"].as_i64()), (Some("completed"), Some(0)), "{result}");
    assert!(result["output"].as_str().unwrap_or_default().contains("hello from a PC of silo A"), "{result}");
    let issued_by = result["issued_by"].as_str().unwrap_or_default();
    assert!(issued_by.starts_with("support (user "), "the root names no one to the silo: {result}");
    eprintln!(
        "FIGURE silo action: `tether action run` at the root to the result: {:.2}s",
        started.elapsed().as_secs_f64()
    );
    let id = result["id"].as_str().unwrap();
    let on_a = get(&a, &format!("/api/v1/support-actions/{id}"));
    assert_eq!(on_a["state"], "completed", "silo A kept the root's action and its result: {on_a}");
    assert!(agent.stderr().contains(id), "{}", agent.tail());

    // An action silo A signs itself is refused by the PC: only the root's are run.
    let own = run_script(&a, pc.uuid, &script);
    assert_eq!(own["state"], "refused_bad_signature", "{own}");
    assert!(!own["output"].as_str().unwrap_or_default().contains("hello"), "{own}");
    agent.terminate(Duration::from_secs(10));
}
