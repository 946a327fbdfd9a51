//! `tether lan …`: the technician's side of the appliance's LAN tools (`crate::lan` on the
//! gateway, through `/api/v1/lan`): scan with progress, list what was found, wake, adopt and
//! forget AMT PCs.
//!
//! What it does not do: touch the LAN itself — the gateway does, on its own interfaces.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::client::ApiClient;
use crate::operator::plain;
use crate::redirect::rescue::{post, print, AmtArgs};

/// How often a running scan's progress is read.
const POLL: Duration = Duration::from_millis(250);
/// Longest a scan is waited for (the gateway bounds it far below this).
const SCAN_WAIT: Duration = Duration::from_secs(30 * 60);

/// `tether lan scan --interface IF [--cidr CIDR]`: starts a scan on the gateway, shows its
/// progress, and prints what it found.
pub async fn scan(client: &ApiClient, interface: &str, cidr: Option<&str>, json_out: bool) -> Result<()> {
    let started = client.post_json("/api/v1/lan/scans", &json!({ "interface": interface, "cidr": cidr })).await?;
    let id = started["id"].as_u64().unwrap_or_default();
    let total = started["total"].as_u64().unwrap_or_default();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} addresses, {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    if bar.is_none() && !json_out {
        eprintln!(
            "scanning {} on {} ({total} addresses) on gateway {}",
            plain(&started["cidr"]),
            interface,
            plain(&started["instance"])
        );
    }
    let deadline = Instant::now() + SCAN_WAIT;
    let mut phase = String::new();
    let status = loop {
        let status = client.get_json(&format!("/api/v1/lan/scans/{id}")).await?;
        let now_phase = status["phase"].as_str().unwrap_or("").to_owned();
        if let Some(bar) = &bar {
            bar.set_position(status["swept"].as_u64().unwrap_or_default());
            bar.set_message(format!(
                "{} ({} live, {} probed)",
                now_phase,
                status["live"].as_u64().unwrap_or_default(),
                status["probed"].as_u64().unwrap_or_default()
            ));
        } else if now_phase != phase && !json_out {
            eprintln!("  {now_phase}: {} live hosts so far", status["live"].as_u64().unwrap_or_default());
        }
        phase = now_phase;
        if status["state"] != "running" {
            break status;
        }
        if Instant::now() > deadline {
            bail!("scan {id} still runs after {} minutes; see `tether lan devices` later", SCAN_WAIT.as_secs() / 60);
        }
        tokio::time::sleep(POLL).await;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if status["state"] == "failed" {
        bail!("the scan failed: {}", plain(&status["error"]));
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let hosts = &status["hosts"];
    println!(
        "scanned {} on {} in {:.1} s: {} live hosts, {} with AMT",
        plain(&status["cidr"]),
        interface,
        status["elapsed_ms"].as_u64().unwrap_or_default() as f64 / 1000.0,
        hosts.as_array().map_or(0, Vec::len),
        status["amt"].as_u64().unwrap_or_default()
    );
    print_hosts(hosts, &Value::Array(Vec::new()));
    Ok(())
}

/// `tether lan devices [--all] [--json]`: the hosts scans found, and which are adopted.
pub async fn devices(client: &ApiClient, all: bool, json_out: bool) -> Result<()> {
    let hosts = client.get_json(&format!("/api/v1/lan/hosts?all={all}")).await?;
    let adopted = client.get_json("/api/v1/lan/devices").await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&json!({ "hosts": hosts, "adopted": adopted }))?);
        return Ok(());
    }
    if hosts.as_array().is_none_or(Vec::is_empty) {
        println!("no hosts found yet: run `tether lan scan --interface IF`");
    } else {
        print_hosts(&hosts, &adopted);
    }
    Ok(())
}

fn print_hosts(hosts: &Value, adopted: &Value) {
    let empty = Vec::new();
    let adopted = adopted.as_array().unwrap_or(&empty);
    println!(
        "{:17}  {:15}  {:3}  {:9}  {:17}  {:17}  {:20}  {:36}",
        "MAC", "IP", "AMT", "VERSION", "PROVISIONING", "AMT PORTS", "LAST SEEN", "ADOPTED AS"
    );
    for host in hosts.as_array().unwrap_or(&empty) {
        let ports = host["amt_ports"]
            .as_array()
            .map(|p| p.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let adopted_as = adopted
            .iter()
            .find(|a| a["ip"] == host["ip"] && a["instance"] == host["instance"])
            .map(|a| plain(&a["uuid"]))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:17}  {:15}  {:3}  {:9}  {:17}  {:17}  {:20}  {:36}",
            plain(&host["mac"]),
            plain(&host["ip"]),
            if host["amt"] == true { "yes" } else { "no" },
            plain(&host["amt_version"]),
            plain(&host["provisioning"]),
            if ports.is_empty() { "-".to_owned() } else { ports },
            plain(&host["last_seen"]).chars().take(20).collect::<String>(),
            adopted_as
        );
    }
}

/// `tether lan wake MAC|UUID --interface IF`: a MAC gets a magic packet; a device's UUID is woken
/// through AMT when it can be (the power state AMT then reports), else by a magic packet.
pub async fn wake(
    client: &ApiClient,
    target: &str,
    interface: Option<&str>,
    amt: &AmtArgs,
    json_out: bool,
) -> Result<()> {
    let value = match Uuid::parse_str(target) {
        Ok(uuid) => {
            let body = amt.body(json!({ "interface": interface }));
            post(client, &format!("/api/v1/devices/{uuid}/wake"), &body).await?
        }
        Err(_) => {
            let Some(interface) = interface else {
                bail!("name the interface to send the magic packet on: --interface IF");
            };
            client.post_json("/api/v1/lan/wake", &json!({ "mac": target, "interface": interface })).await?
        }
    };
    print(&value, json_out, |v| match v["method"].as_str() {
        Some("amt") if v["changed"] == false => format!("AMT says the PC is already {}", plain(&v["power"])),
        Some("amt") => format!("woken through AMT: power now {}", plain(&v["power"])),
        _ => {
            let sent = &v["magic_packet"];
            let mut line = format!(
                "magic packet for {} sent on {} (raw frame, and UDP to {})",
                plain(&sent["mac"]),
                plain(&sent["interface"]),
                plain(&sent["udp"])
            );
            if let Some(why) = v["amt_error"].as_str() {
                line.push_str(&format!("; not through AMT: {why}"));
            }
            line
        }
    });
    Ok(())
}

/// `tether lan adopt IP [--uuid UUID]`.
pub async fn adopt(client: &ApiClient, ip: &str, uuid: Option<Uuid>, amt: &AmtArgs, json_out: bool) -> Result<()> {
    let value = post(client, "/api/v1/lan/devices", &amt.body(json!({ "ip": ip, "uuid": uuid }))).await?;
    print(&value, json_out, |v| {
        format!(
            "adopted {} as device {} (kind lan; {})",
            plain(&v["ip"]),
            plain(&v["uuid"]),
            match v["tls_pin"].as_str() {
                Some(pin) => format!("TLS certificate pinned: SHA-256 {pin}"),
                None => "no TLS on 16993: reached on 16992/16994 in the clear".to_owned(),
            }
        )
    });
    Ok(())
}

/// `tether lan forget UUID`.
pub async fn forget(client: &ApiClient, uuid: Uuid) -> Result<()> {
    client.post_json(&format!("/api/v1/lan/devices/{uuid}/forget"), &json!({})).await?;
    println!("device {uuid} forgotten: the gateway no longer reaches it on the LAN");
    Ok(())
}
