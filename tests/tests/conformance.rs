//! Conformance with a real MPS: MeshCentral, installed from npm and run on loopback, accepts
//! `amt-sim` as a CIRA-connected Intel AMT device, and its own WS-MAN requests travel through the
//! tunnel to the simulator's 16992 service.

use std::time::Duration;

use e2e::meshcentral::{node_id_for, MeshCentral, AMT_ADMIN_PASSWORD};
use e2e::{wait_for, Sim};
use uuid::Uuid;

#[test]
fn meshcentral_lists_amt_sim_as_a_cira_device_and_reaches_its_wsman_port() {
    let mesh = MeshCentral::start();
    let uuid = Uuid::new_v4();
    // amt-sim verifies MeshCentral's MPS certificate against its root CA, for the name CERT_NAME;
    // its admin account is the one MeshCentral tries (amt-sim checks the digest).
    let sim = Sim::from_command(mesh.sim_command(uuid).args(["--admin-password", AMT_ADMIN_PASSWORD]));

    let node_id = node_id_for(uuid);
    let mut listed = None;
    wait_for("MeshCentral to list the device as CIRA-connected", Duration::from_secs(60), || {
        listed = mesh.list_devices().into_iter().find(|d| d["_id"] == node_id.as_str());
        // conn is a bit set; 2 is CIRA.
        listed.as_ref().and_then(|d| d["conn"].as_u64()).is_some_and(|conn| conn & 2 != 0)
    });
    let device = listed.unwrap();
    // 7: present; 1 (S0) once its AMT manager has read the power state over WS-MAN.
    assert!(device["pwr"] == 7 || device["pwr"] == 1, "MeshCentral marks a CIRA device present: {device}");

    // MeshCentral's AMT manager opens a forwarded-tcpip channel to 16992 and speaks WS-MAN.
    wait_for("MeshCentral's WS-MAN request to reach the simulator", Duration::from_secs(60), || {
        sim.log_line_containing("16992 request: POST /wsman").is_some()
    });
    // It went on past the Digest challenge and read the simulated firmware version.
    wait_for("MeshCentral to record the AMT version", Duration::from_secs(30), || {
        mesh.list_devices().iter().any(|d| d["_id"] == node_id.as_str() && d["intelamt"]["ver"].is_string())
    });
}
