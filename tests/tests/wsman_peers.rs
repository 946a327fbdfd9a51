//! amt-sim's WS-Management against real peers: PyPI `amt`'s `amtctrl` (power control over HTTP
//! Digest, through `tether forward`) and MeshCentral's AMT manager (over CIRA, as the MPS). Both
//! are installed by `scripts/install-test-deps.sh`; a missing one fails the test saying so.

use std::process::Command;
use std::time::Duration;

use e2e::meshcentral::{node_id_for, MeshCentral, AMT_ADMIN_PASSWORD};
use e2e::{wait_for, Gateway, Sim};
use uuid::Uuid;

const ADMIN_PASSWORD: &str = "Amt-Admin-1";

fn require_amtctrl() {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("amtctrl").is_file()))
        .unwrap_or(false);
    assert!(found, "amtctrl is not installed: run scripts/install-test-deps.sh (PyPI package amt)");
}

/// `echo PASSWORD | amtctrl -p HOST COMMAND`: what it printed (it exits 0 on errors too).
fn amtctrl(host: &str, password: &str, command: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", &format!("echo '{password}' | timeout 60 amtctrl -p {host} {command}")])
        .output()
        .expect("running amtctrl");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "amtctrl {command} failed ({}):\n{text}", output.status);
    text.trim().to_owned()
}

#[test]
fn amtctrl_reads_and_changes_the_power_of_a_device_through_forward() {
    require_amtctrl();
    let gateway = Gateway::start(&[]);
    let uuid = Uuid::new_v4();
    let mut sim = Sim::start(&gateway, &["--uuid", &uuid.to_string(), "--admin-password", ADMIN_PASSWORD]);
    wait_for("the device to connect", Duration::from_secs(30), || gateway.is_connected(uuid));
    // amtctrl always dials port 16992 (as user admin): give it a loopback address of its own.
    let _forward = gateway.forward_on(uuid, 16992, "127.0.0.2:16992");
    let host = "127.0.0.2";

    assert_eq!(amtctrl(host, ADMIN_PASSWORD, "status"), "on");
    assert_eq!(amtctrl(host, ADMIN_PASSWORD, "off"), "", "a ReturnValue other than 0 is printed");
    sim.wait_for_log("power: on -> off", Duration::from_secs(10));
    assert_eq!(amtctrl(host, ADMIN_PASSWORD, "status"), "off");
    // Off again is an invalid transition: firmware answers ReturnValue 2, amtctrl prints it.
    let refused = amtctrl(host, ADMIN_PASSWORD, "off");
    assert!(refused.contains("ReturnValue>2<"), "{refused}");
    assert_eq!(amtctrl(host, ADMIN_PASSWORD, "on"), "");
    sim.wait_for_log("power: off -> on", Duration::from_secs(10));
    sim.wait_for_log("BIOS: booting from disk", Duration::from_secs(10));
    assert_eq!(amtctrl(host, ADMIN_PASSWORD, "status"), "on");
    // reboot is a power cycle (5); pxeboot sets the boot order and the role, then cycles.
    assert_eq!(amtctrl(host, ADMIN_PASSWORD, "reboot"), "");
    sim.wait_for_log("power: on -> cycle", Duration::from_secs(10));
    assert_eq!(amtctrl(host, ADMIN_PASSWORD, "pxeboot"), "");
    sim.wait_for_log("boot order: Intel(r) AMT: Force PXE Boot", Duration::from_secs(10));
    sim.wait_for_log("boot config role: Intel(r) AMT: Boot Configuration 0", Duration::from_secs(10));
    assert_eq!(sim.count_log_lines("power: on -> cycle"), 2);
    assert_eq!(amtctrl(host, ADMIN_PASSWORD, "status"), "on");

    // A wrong password: the digest is checked, amtctrl gets 401 and says so.
    let wrong = amtctrl(host, "not-the-password", "status");
    assert!(wrong.contains("401"), "{wrong}");
    assert!(sim.log_line_containing("digest authentication refused").is_some(), "{}", sim.tail());
    let wrong = amtctrl(host, "not-the-password", "off");
    assert!(wrong.contains("401"), "{wrong}");
    assert_eq!(amtctrl(host, ADMIN_PASSWORD, "status"), "on", "a refused request changes nothing");
}

#[test]
fn meshcentral_reads_version_and_power_state_over_cira_with_a_checked_digest() {
    let mesh = MeshCentral::start();
    let uuid = Uuid::new_v4();
    let mut command = mesh.sim_command(uuid);
    command.args(["--admin-password", AMT_ADMIN_PASSWORD]);
    let mut sim = Sim::from_command(&mut command);
    let node_id = node_id_for(uuid);

    // Its initial contact (what MeshCentral 1.1.55 sends, logged by amt-sim): Get
    // AMT_GeneralSettings and IPS_HostBasedSetupService, the realm compared with the challenge's;
    // then Enumerate/Pull CIM_ServiceAvailableToElement for the power state, and Get
    // IPS_PowerManagementService (AMT 10 and later, when the system is on).
    sim.wait_for_log("16992 WS-MAN Get AMT_GeneralSettings -> ok", Duration::from_secs(90));
    sim.wait_for_log("16992 WS-MAN Get IPS_HostBasedSetupService -> ok", Duration::from_secs(30));
    wait_for("MeshCentral to record the AMT version", Duration::from_secs(60), || {
        mesh.device(uuid).is_some_and(|d| d["intelamt"]["ver"] == "16.1.27")
    });
    sim.wait_for_log("16992 WS-MAN Enumerate CIM_ServiceAvailableToElement -> ok", Duration::from_secs(60));
    sim.wait_for_log("16992 WS-MAN Pull CIM_ServiceAvailableToElement -> ok", Duration::from_secs(30));
    // Power state 1 is S0 (on), from OSPowerSavingState 2.
    wait_for("MeshCentral to record the power state", Duration::from_secs(60), || {
        mesh.device(uuid).is_some_and(|d| d["pwr"] == 1)
    });
    let device = mesh.list_devices().into_iter().find(|d| d["_id"] == node_id.as_str()).unwrap();
    assert_eq!(device["intelamt"]["state"], 2, "provisioned: {device}");
    // No 401 loop: every request after the first challenge was accepted.
    assert_eq!(sim.count_log_lines("digest authentication refused"), 0, "{}", sim.tail());
}

#[test]
fn a_device_that_redials_on_power_change_comes_back_after_amtctrl_reboots_it() {
    require_amtctrl();
    let gateway = Gateway::start(&[]);
    let uuid = Uuid::new_v4();
    let args = ["--uuid", &uuid.to_string(), "--admin-password", ADMIN_PASSWORD, "--redial-on-power-change"];
    let mut sim = Sim::start(&gateway, &[&args[..], &["--redial-delay", "1"]].concat());
    wait_for("the device to connect", Duration::from_secs(30), || gateway.is_connected(uuid));
    let _forward = gateway.forward_on(uuid, 16992, "127.0.0.3:16992");
    // The answer left before the tunnel dropped: amtctrl saw ReturnValue 0.
    assert_eq!(amtctrl("127.0.0.3", ADMIN_PASSWORD, "reboot"), "");
    sim.wait_for_log("firmware: dropping the tunnel after the power change", Duration::from_secs(10));
    wait_for("the device to redial", Duration::from_secs(30), || sim.count_log_lines("established: ports") >= 2);
    wait_for("the gateway to list it again", Duration::from_secs(30), || gateway.is_connected(uuid));
    // The state survived the redial (kept per UUID).
    assert_eq!(amtctrl("127.0.0.3", ADMIN_PASSWORD, "off"), "");
    sim.wait_for_log("power: on -> off", Duration::from_secs(10));
    wait_for("the device to redial again", Duration::from_secs(30), || {
        sim.count_log_lines("established: ports") >= 3 && gateway.is_connected(uuid)
    });
    assert_eq!(amtctrl("127.0.0.3", ADMIN_PASSWORD, "status"), "off");
}

#[test]
fn a_user_initiated_device_stops_dialling_when_the_gateway_ends_its_tunnel_until_the_user_asks_again() {
    let mut gateway = Gateway::start(&[]);
    let uuid = Uuid::new_v4();
    let dir = tempfile::tempdir().unwrap();
    let help = dir.path().join("remote-help");
    let help_arg = help.to_str().unwrap();
    let mut sim = Sim::start(
        &gateway,
        &["--uuid", &uuid.to_string(), "--user-initiated", "--remote-help-file", help_arg, "--reconnect-min-ms", "200"],
    );
    wait_for("the device to connect", Duration::from_secs(30), || gateway.is_connected(uuid));
    assert!(help.exists(), "remote help is on at start");
    // The gateway ends the tunnel (it stops): the request is used up.
    gateway.restart();
    sim.wait_for_log("remote help ended by the gateway; waiting for the user", Duration::from_secs(30));
    assert!(!help.exists(), "the control file is removed");
    std::thread::sleep(Duration::from_secs(3));
    assert!(!gateway.is_connected(uuid), "no redial while remote help is off");
    assert_eq!(sim.count_log_lines("established: ports"), 1);
    // The user asks again.
    std::fs::write(&help, "on").unwrap();
    wait_for("the device to dial again", Duration::from_secs(30), || gateway.is_connected(uuid));
    sim.wait_for_log("remote help requested by the user; dialling", Duration::from_secs(5));
}

/// POSTs a WS-MAN request with `curl --digest` (a third-party client) to `addr`; the response.
fn curl_wsman(addr: std::net::SocketAddr, password: &str, request: &protocols::wsman::Request) -> String {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("request.xml");
    std::fs::write(&body, request.to_bytes().unwrap()).unwrap();
    let output = Command::new("curl")
        .args(["-s", "--max-time", "20", "--digest", "-u", &format!("admin:{password}")])
        .args(["-H", "Content-Type: application/soap+xml;charset=UTF-8", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("http://{addr}/wsman"))
        .output()
        .expect("running curl");
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_reset_with_use_ider_boots_the_image_tether_ider_serves_and_off_waits_for_the_session_to_end() {
    use protocols::wsman::{Class, EndpointReference, Method, Property, Request};
    let gateway = Gateway::start(&[]);
    let uuid = Uuid::new_v4();
    let mut sim = Sim::start(&gateway, &["--uuid", &uuid.to_string(), "--admin-password", ADMIN_PASSWORD]);
    wait_for("the device to connect", Duration::from_secs(30), || gateway.is_connected(uuid));
    let forward = gateway.forward(uuid, 16992);
    let to = format!("http://{}/wsman", forward.addr());

    // The technician serves a rescue image over IDE-R: the session is open, the BIOS waits.
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("rescue.iso");
    let sha = e2e::remote::random_image(&iso, 1 << 20);
    let mut serving = e2e::remote::ider(&gateway, uuid, ADMIN_PASSWORD, &["--image", iso.to_str().unwrap()]);
    sim.wait_for_log("IDE-R session started", Duration::from_secs(30));

    // Next boot from the IDE-R CD, then reset.
    let boot = Request::put(
        &to,
        Class::AmtBootSettingData.resource_uri(),
        Uuid::new_v4(),
        vec![
            Property::text("UseIDER", "true"),
            Property::text("IDERBootDevice", "1"),
            Property::text("UseSOL", "true"),
        ],
    );
    let answer = curl_wsman(forward.addr(), ADMIN_PASSWORD, &boot);
    assert!(answer.contains("UseIDER>true<"), "{answer}");
    sim.wait_for_log("boot settings: UseIDER=true IDERBootDevice=1 UseSOL=true", Duration::from_secs(10));
    let power = |state: u32| {
        let request = Request::invoke(
            &to,
            Method::RequestPowerStateChange,
            Uuid::new_v4(),
            vec![
                Property::text("PowerState", state.to_string()),
                Property::reference("ManagedElement", EndpointReference::managed_system()),
            ],
        );
        curl_wsman(forward.addr(), ADMIN_PASSWORD, &request)
    };
    // Off is refused while the IDE-R session is open; reset is not.
    assert!(power(8).contains("ReturnValue>2<"), "off during an IDE-R session");
    assert!(power(10).contains("ReturnValue>0<"), "reset");
    sim.wait_for_log("power: on -> reset", Duration::from_secs(10));
    sim.wait_for_log("BIOS: booting from IDE-R CD-ROM", Duration::from_secs(10));
    let line = sim.wait_for_log("IDE-R boot: cd read 1048576 bytes", Duration::from_secs(60));
    assert!(line.contains(&format!("sha256={sha}")), "the firmware read something else than {sha}: {line}");

    // The session ends; then off works.
    serving.signal("INT");
    serving.terminate(Duration::from_secs(10));
    wait_for("the IDE-R session to end", Duration::from_secs(30), || power(8).contains("ReturnValue>0<"));
    sim.wait_for_log("power: on -> off", Duration::from_secs(10));
}
