//! End-to-end scenarios, named after what a user does. Each starts the real `tether` and
//! `amt-sim` binaries (release build) on loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{wait_for, Gateway, Sim};
use uuid::Uuid;

fn device_entry(devices: &serde_json::Value, uuid: Uuid) -> Option<serde_json::Value> {
    devices.as_array()?.iter().find(|d| d["uuid"].as_str() == Some(&uuid.to_string())).cloned()
}

fn connected(gateway: &Gateway, uuid: Uuid) -> bool {
    device_entry(&gateway.devices_json(), uuid).is_some_and(|d| d["connected"] == true)
}

/// A deterministic byte pattern, so that a reader can check what a writer sent without holding it.
fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = offset + i as u64;
        *b = (x.wrapping_mul(2654435761) >> 13) as u8;
    }
}

/// The counter value of `name{labels}` in a Prometheus text exposition, 0 if absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn device_hello_appears_in_devices_json() {
    let gateway = Gateway::start(&[]);
    let uuid = Uuid::new_v4();
    let _sim = Sim::start(&gateway, &["--uuid", &uuid.to_string()]);
    wait_for("the device to be listed as connected", Duration::from_secs(30), || connected(&gateway, uuid));
    let device = device_entry(&gateway.devices_json(), uuid).unwrap();
    assert!(device["last_hello"].is_string(), "{device}");
    let ports: Vec<u64> = device["ports"].as_array().unwrap().iter().filter_map(|p| p.as_u64()).collect();
    for port in [16992, 16993, 16994, 16995, 623, 664, 5900] {
        assert!(ports.contains(&port), "port {port} missing in {device}");
    }
    // `device show` speaks the same API.
    let shown = gateway.cli(&["device", "show", &uuid.to_string(), "--json"]);
    assert!(shown.contains(&uuid.to_string()), "{shown}");
}

#[test]
fn technician_pushes_256_mib_both_ways_through_forward() {
    const TOTAL: u64 = 256 << 20;
    let gateway = Gateway::start(&[]);
    let uuid = Uuid::new_v4();
    // A wider device window than firmware's 4 KiB, still granted back in steps.
    let _sim = Sim::start(&gateway, &["--uuid", &uuid.to_string(), "--window", "262144", "--adjust-step", "65536"]);
    wait_for("the device to connect", Duration::from_secs(30), || connected(&gateway, uuid));
    let forward = gateway.forward(uuid, 5900);

    let stream = TcpStream::connect(forward.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let mut writer = stream;
    let started = Instant::now();
    let write_thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        while sent < TOTAL {
            let n = buf.len().min((TOTAL - sent) as usize);
            pattern(sent, &mut buf[..n]);
            writer.write_all(&buf[..n]).unwrap();
            sent += n as u64;
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut received = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut expected = vec![0u8; 256 * 1024];
    while received < TOTAL {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed after {received} bytes");
        pattern(received, &mut expected[..n]);
        assert!(buf[..n] == expected[..n], "bytes differ at offset {received}");
        received += n as u64;
    }
    let elapsed = started.elapsed();
    write_thread.join().unwrap();
    // After the echo of everything, the half-close comes back as end of stream.
    assert_eq!(reader.read(&mut buf).unwrap(), 0, "more bytes than were sent");
    let mib_s = (TOTAL as f64 / (1 << 20) as f64) / elapsed.as_secs_f64();
    println!(
        "FIGURE 256 MiB each way through tether forward: {:.2}s, {mib_s:.1} MiB/s each way",
        elapsed.as_secs_f64()
    );
    let metrics = gateway.metrics_text();
    assert!(metric(&metrics, "tether_relayed_bytes_total{direction=\"to_device\"}") >= TOTAL as f64);
    assert!(metric(&metrics, "tether_relayed_bytes_total{direction=\"from_device\"}") >= TOTAL as f64);
}

#[test]
fn wrong_password_is_refused_and_counted() {
    let gateway = Gateway::start(&[]);
    let uuid = Uuid::new_v4();
    let sim = Sim::start_with_password(
        &gateway,
        "not-the-password",
        &["--uuid", &uuid.to_string(), "--exit-on-auth-failure"],
    );
    let status = sim.wait(Duration::from_secs(30));
    assert!(!status.success(), "amt-sim should fail on a refused password");
    wait_for("the failure to be counted", Duration::from_secs(10), || {
        metric(&gateway.metrics_text(), "tether_auth_failures_total{reason=\"bad_password\"}") >= 1.0
    });
    assert!(!connected(&gateway, uuid));
}

/// Speaks APF by hand over TLS, to send what no well-behaved device sends.
struct RawDevice {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl RawDevice {
    fn connect(gateway: &Gateway, uuid: Uuid) -> RawDevice {
        let pem = std::fs::read(gateway.ca_path()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(gateway.cira_addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut device = RawDevice { tls: rustls::StreamOwned::new(conn, tcp) };
        // A correct handshake first: the tunnel is established before the bad message.
        use protocols::apf::{AuthMethod, GlobalRequest, Message, SERVICE_AUTH, SERVICE_PFWD};
        let (user, password) = gateway.mps_credentials();
        device.send(&[
            Message::ProtocolVersion { major: 1, minor: 0, trigger_reason: 0, uuid },
            Message::ServiceRequest { service: SERVICE_AUTH.into() },
            Message::UserauthRequest {
                username: user.into_bytes().into(),
                service: SERVICE_PFWD.into(),
                method: AuthMethod::Password(password.into_bytes().into()),
            },
            Message::ServiceRequest { service: SERVICE_PFWD.into() },
            Message::GlobalRequest {
                want_reply: true,
                request: GlobalRequest::TcpipForward { address: Default::default(), port: 16992 },
            },
        ]);
        device
    }

    fn send(&mut self, messages: &[protocols::apf::Message]) {
        let mut buf = bytes::BytesMut::new();
        for m in messages {
            m.encode(&mut buf);
        }
        self.send_raw(&buf);
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).unwrap();
        self.tls.flush().unwrap();
    }

    /// Reads until the gateway closes; returns every message it sent.
    fn read_until_closed(&mut self) -> Vec<protocols::apf::Message> {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading from the gateway: {e}"),
            }
        }
        let limits = protocols::apf::Limits::default();
        let mut messages = Vec::new();
        let mut rest = &data[..];
        while let Ok(Some((m, n))) = protocols::apf::decode(rest, &limits) {
            messages.push(m);
            rest = &rest[n..];
        }
        messages
    }
}

#[test]
fn malformed_and_oversized_messages_close_only_their_own_tunnel() {
    use protocols::apf::{DisconnectReason, Message};
    let gateway = Gateway::start(&[]);
    let good = Uuid::new_v4();
    let _sim = Sim::start(&gateway, &["--uuid", &good.to_string()]);
    wait_for("the good device to connect", Duration::from_secs(30), || connected(&gateway, good));

    let malformed_uuid = Uuid::new_v4();
    let mut malformed = RawDevice::connect(&gateway, malformed_uuid);
    wait_for("the raw device to connect", Duration::from_secs(30), || connected(&gateway, malformed_uuid));
    malformed.send_raw(&[0x0a, 0x00, 0x01]);
    let replies = malformed.read_until_closed();
    assert_eq!(replies.last(), Some(&Message::Disconnect { reason: DisconnectReason::ProtocolError }), "{replies:?}");

    let oversized_uuid = Uuid::new_v4();
    let mut oversized = RawDevice::connect(&gateway, oversized_uuid);
    wait_for("the second raw device to connect", Duration::from_secs(30), || connected(&gateway, oversized_uuid));
    // CHANNEL_DATA claiming 64 MiB.
    let mut lie = vec![94u8, 0, 0, 0, 4];
    lie.extend_from_slice(&(64u32 << 20).to_be_bytes());
    oversized.send_raw(&lie);
    let replies = oversized.read_until_closed();
    assert_eq!(replies.last(), Some(&Message::Disconnect { reason: DisconnectReason::ProtocolError }), "{replies:?}");

    wait_for("both bad tunnels to be gone", Duration::from_secs(10), || {
        !connected(&gateway, malformed_uuid) && !connected(&gateway, oversized_uuid)
    });
    let metrics = gateway.metrics_text();
    assert!(metric(&metrics, "tether_apf_protocol_errors_total{kind=\"unknown_type\"}") >= 1.0, "{metrics}");
    assert!(metric(&metrics, "tether_apf_protocol_errors_total{kind=\"too_long\"}") >= 1.0, "{metrics}");

    // The good device never noticed: still connected, and a relay to it still works.
    assert!(connected(&gateway, good));
    let forward = gateway.forward(good, 5900);
    let mut stream = TcpStream::connect(forward.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(b"still here").unwrap();
    let mut echo = [0u8; 10];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still here");
}

#[test]
fn two_thousand_devices_connect_at_once_and_all_appear() {
    const COUNT: usize = 2000;
    // One loopback source for all 2,000: raise the per-source connection burst and the
    // per-source share of the unauthenticated pool for this test.
    let gateway = Gateway::start_with_config(
        "[limits]\nconnections_per_second_per_source = 1000\nconnection_burst_per_source = 5000\n\
         [apf]\nmax_pending_per_source = 4096\n",
        &[],
    );
    let base = Uuid::new_v4();
    let started = Instant::now();
    let sim = Sim::start(&gateway, &["--uuid", &base.to_string(), "--count", &COUNT.to_string()]);
    wait_for("2,000 devices to connect", Duration::from_secs(180), || {
        gateway.devices_json().as_array().map(|a| a.iter().filter(|d| d["connected"] == true).count()) == Some(COUNT)
    });
    let elapsed = started.elapsed();
    println!("FIGURE 2000 devices connected and listed in {:.2}s", elapsed.as_secs_f64());
    if let Some(line) = sim.log_line_containing("devices established in") {
        println!("FIGURE amt-sim: {line}");
    }
    // Let the handshakes' garbage settle, then measure the gateway with 2,000 idle tunnels.
    std::thread::sleep(Duration::from_secs(3));
    let rss_kib = gateway.rss_kib();
    println!("FIGURE gateway RSS with {COUNT} idle tunnels: {:.1} MiB", rss_kib as f64 / 1024.0);
    let metrics = gateway.metrics_text();
    assert_eq!(metric(&metrics, "tether_tunnels_active{kind=\"cira\"}") as usize, COUNT);
}

#[test]
fn devices_come_back_by_themselves_after_a_gateway_restart() {
    let mut gateway = Gateway::start(&[]);
    let base = Uuid::new_v4();
    let _sim = Sim::start(&gateway, &["--uuid", &base.to_string(), "--count", "20", "--reconnect-max-ms", "3000"]);
    let all_connected = |gateway: &Gateway| {
        gateway.devices_json().as_array().map(|a| a.iter().filter(|d| d["connected"] == true).count()) == Some(20)
    };
    wait_for("20 devices to connect", Duration::from_secs(60), || all_connected(&gateway));
    gateway.restart();
    wait_for("20 devices to come back", Duration::from_secs(60), || all_connected(&gateway));
    let devices = gateway.devices_json();
    let restarted = devices
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["last_disconnect_reason"].as_str().is_some_and(|r| r.contains("gateway")))
        .count();
    assert_eq!(restarted, 20, "each device's record says why it dropped: {devices}");
}

#[test]
fn technician_reaches_device_behind_nat() {
    use e2e::netns::{Host, Topology, HOME_IP, PUBLIC_IP, ROUTER_PUBLIC_IP};
    let topology =
        Topology::create(&format!("tt{}", std::process::id() % 100_000)).expect("building namespaces (root?)");
    let mut gateway = Gateway::start_at(PUBLIC_IP, "", &[], |c| topology.wrap(Host::Public, c));
    gateway.set_cli_netns(&topology.ns(Host::Tech));

    // The PC in the home network dials out through the NAT.
    let uuid = Uuid::new_v4();
    let (user, password) = gateway.mps_credentials();
    let mut sim = topology.command(Host::Home, e2e::bin("amt-sim"));
    sim.args(["--gateway", &gateway.cira_addr().to_string(), "--ca", gateway.ca_path().to_str().unwrap()])
        .args(["--username", &user, "--password", &password, "--uuid", &uuid.to_string()])
        .env("RUST_LOG", "info");
    let _sim = Sim::from_command(&mut sim);
    wait_for("the device behind NAT to connect", Duration::from_secs(30), || connected(&gateway, uuid));
    let device = device_entry(&gateway.devices_json(), uuid).unwrap();
    let remote = device["remote_addr"].as_str().unwrap();
    assert!(remote.starts_with(&format!("{ROUTER_PUBLIC_IP}:")), "the gateway sees the router's address, got {remote}");

    // The technician, on another network, reaches the device's 16992 through the gateway with
    // curl (a third-party client) pointed at `tether forward`.
    let forward = gateway.forward(uuid, 16992);
    let url = format!("http://{}/wsman", forward.addr());
    let output = topology
        .command(Host::Tech, "curl")
        .args(["-s", "-i", "--max-time", "10", "-X", "POST", "--data", "<x/>", &url])
        .output()
        .unwrap();
    let response = String::from_utf8_lossy(&output.stdout);
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(response.contains("WWW-Authenticate: Digest"), "{response}");

    // The public side cannot open a connection into the home network, though it can route there.
    // python3 may be a shim that forks the interpreter: start the interpreter itself, so that
    // killing it stops the server.
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap();
    let mut listener = topology.command(Host::Home, &python);
    listener.args(["-m", "http.server", "--bind", HOME_IP, "18080"]);
    let _listener = e2e::Process::spawn("home listener", &mut listener);
    let reach = |host: Host| {
        topology
            .command(host, "curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "3", &format!("http://{HOME_IP}:18080/")])
            .status()
            .unwrap()
            .success()
    };
    wait_for("the home listener to answer at home", Duration::from_secs(20), || reach(Host::Home));
    assert!(!reach(Host::Public), "the public side opened a connection into the home network");
}

#[test]
fn two_pcs_sharing_one_uuid_are_reported_and_the_first_keeps_it() {
    let gateway = Gateway::start_with_config("[devices]\nliveness_timeout_ms = 1000\n", &[]);
    let uuid = Uuid::new_v4();
    // Two boards with the same (OEM-duplicated) UUID behind one NAT: the one connected first is
    // alive and answers the liveness check, so the other is refused each time it dials, and the
    // device record says why. The tunnel never flaps between them.
    let args = ["--uuid", &uuid.to_string(), "--reconnect-min-ms", "200", "--reconnect-max-ms", "500"];
    let _first = Sim::start(&gateway, &args);
    wait_for("the first board to connect", Duration::from_secs(30), || connected(&gateway, uuid));
    let _second = Sim::start(&gateway, &args);
    let mut device = serde_json::Value::Null;
    wait_for("the gateway to report the shared UUID", Duration::from_secs(60), || {
        let output = gateway.cli_command(&["device", "show", &uuid.to_string(), "--json"]).output().unwrap();
        device = serde_json::from_slice(&output.stdout).unwrap_or_default();
        device["conflict_count"].as_u64().unwrap_or(0) >= 2
    });
    let note = device["conflict_note"].as_str().unwrap_or_default();
    assert!(note.contains("same UUID"), "{device}");
    let metrics = gateway.metrics_text();
    assert_eq!(metric(&metrics, "tether_tunnels_closed_total{kind=\"cira\",reason=\"replaced\"}"), 0.0, "{metrics}");
    assert!(metric(&metrics, "tether_connections_rejected_total{reason=\"uuid_conflict\"}") >= 2.0, "{metrics}");
    assert!(connected(&gateway, uuid));
}

#[test]
fn a_device_with_its_own_password_must_use_it() {
    let gateway = Gateway::start(&[]);
    let uuid = Uuid::new_v4();
    e2e::process::run(std::process::Command::new(e2e::bin("tether")).args([
        "--data-dir",
        gateway.data_dir().to_str().unwrap(),
        "device",
        "add",
        &uuid.to_string(),
        "--password",
        "Own-Passw0rd!",
    ]));
    // The gateway-wide password no longer opens this device's tunnel...
    let refused = Sim::start(&gateway, &["--uuid", &uuid.to_string(), "--exit-on-auth-failure"]);
    assert!(!refused.wait(Duration::from_secs(30)).success());
    // ...its own does.
    let _sim = Sim::start_with_password(&gateway, "Own-Passw0rd!", &["--uuid", &uuid.to_string()]);
    wait_for("the device to connect with its own password", Duration::from_secs(30), || connected(&gateway, uuid));
    let device = device_entry(&gateway.devices_json(), uuid).unwrap();
    assert_eq!(device["registered"], true);
    assert_eq!(device["has_password"], true);
}

#[test]
fn repeated_wrong_passwords_put_the_source_in_back_off() {
    let gateway = Gateway::start_with_config("[limits]\nauth_failures_per_minute = 1\nauth_failure_burst = 2\n", &[]);
    let uuid = Uuid::new_v4();
    // A device that keeps retrying a wrong password, quickly.
    let _sim = Sim::start_with_password(
        &gateway,
        "wrong",
        &["--uuid", &uuid.to_string(), "--reconnect-min-ms", "100", "--reconnect-max-ms", "300"],
    );
    wait_for("the source to be put in back-off", Duration::from_secs(30), || {
        let metrics = gateway.metrics_text();
        metric(&metrics, "tether_connections_rejected_total{reason=\"auth_backoff\"}") >= 1.0
            && metric(&metrics, "tether_auth_failures_total{reason=\"rate_limited\"}") >= 1.0
    });
    // During the back-off a password not yet proven good is refused from that source and UUID
    // without an argon2 run (one proven good earlier would still be accepted).
    let blocked = Sim::start(&gateway, &["--uuid", &uuid.to_string()]);
    wait_for("the right password to be turned away too", Duration::from_secs(30), || {
        blocked.log_line_containing("disconnected").is_some()
    });
    assert!(!connected(&gateway, uuid), "{}", blocked.tail());
}
