//! The appliance images, booted under qemu (TCG) the way an MSP runs them on a VM: a data disk
//! (or partition), a seed disk with the first-boot config, and nothing of the guest reachable but
//! its forwarded ports. Needs the images (`appliance-image/build.sh all`) and qemu-system-x86
//! (scripts/install-test-deps.sh); a missing one fails the test with the command to run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use e2e::appliance::{Appliance, Medium, Seed};
use e2e::process::http_request;
use e2e::{poll_until, Metrics};
use uuid::Uuid;

#[test]
fn an_appliance_boots_and_serves_devices_and_technicians() -> Result<()> {
    boots_and_serves("minimal image", &Medium::minimal()?).map(drop)
}

#[test]
fn an_appliance_boots_from_its_iso_through_the_bios_and_serves() -> Result<()> {
    boots_and_serves("ISO, BIOS", &Medium::iso_bios()?).map(drop)
}

#[test]
fn an_appliance_boots_from_its_iso_through_uefi_and_serves() -> Result<()> {
    boots_and_serves("ISO, UEFI", &Medium::iso_uefi()?).map(drop)
}

#[test]
fn an_appliance_installed_from_its_disk_image_boots_and_serves() -> Result<()> {
    disk_image_boots_and_serves("disk image, BIOS", &Medium::disk_bios()?)
}

#[test]
fn an_appliance_installed_from_its_disk_image_boots_through_uefi_and_serves() -> Result<()> {
    disk_image_boots_and_serves("disk image, UEFI", &Medium::disk_uefi()?)
}

fn disk_image_boots_and_serves(what: &str, medium: &Medium) -> Result<()> {
    let log = boots_and_serves(what, medium)?;
    // The first boot grew the data partition into the rest of the (2 GiB) disk; the root is
    // slot A's partition, read-only.
    let grown = log.lines().find(|l| l.contains("data partition /dev/vda4 grown to"));
    ensure!(grown.is_some_and(|l| !l.contains(" 64 MiB")), "the data partition did not grow:\n{log}");
    ensure!(log.contains("root filesystem mounted ro, /dev/vda2"), "the root is not slot A read-only:\n{log}");
    Ok(())
}

#[test]
fn an_appliance_keeps_its_ca_token_and_devices_across_a_power_cut() -> Result<()> {
    let mut appliance = Appliance::boot(&Medium::minimal()?, Seed::fresh(), Duration::from_secs(240))?;
    let uuid = Uuid::new_v4();
    let mut device = appliance.start_device(uuid);
    let connected = poll_until(Duration::from_secs(60), || appliance.is_connected(uuid));
    ensure!(connected, "amt-sim {uuid} did not connect before the power cut\n{}", device.tail());

    // The power goes: qemu is killed, not shut down. It boots again from the same disks; the API
    // answering the first boot's token through the first boot's CA is the proof that the data
    // disk kept the store and the keys.
    appliance.power_cycle(Duration::from_secs(240))?;
    println!("FIGURE appliance: power on to API answering, second boot: {:.1}s", appliance.since_boot().as_secs_f64());
    let second_boot = appliance.serial_log();
    ensure!(!second_boot.contains("first boot: formatting"), "the second boot formatted a disk again");
    ensure!(!second_boot.contains("seed disk"), "the second boot took the reply on the seed disk for a seed");

    // The device, still running, dials again and the appliance knows it.
    let back = poll_until(Duration::from_secs(120), || appliance.is_connected(uuid));
    ensure!(back, "amt-sim {uuid} did not come back after the power cut\n{}", device.tail());
    ensure!(device.is_running(), "amt-sim exited\n{}", device.tail());
    println!("FIGURE appliance: power on to the device back: {:.1}s", appliance.since_boot().as_secs_f64());
    appliance.shut_down();
    Ok(())
}

/// Boots `medium` with a fresh seed, then a device dials it, a technician forwards to the device
/// through it, and its metrics count that. Returns the serial log.
fn boots_and_serves(what: &str, medium: &Medium) -> Result<String> {
    let started = Instant::now();
    let mut appliance = Appliance::boot(medium, Seed::fresh(), Duration::from_secs(240))?;
    let serving = appliance.since_boot();
    println!(
        "FIGURE appliance ({what}): qemu start to API answering with the seed's token: {:.1}s",
        serving.as_secs_f64()
    );

    // The console tells the operator where the gateway is and the CA's fingerprint: the one of
    // the CA handed back on the seed disk.
    let fingerprint = appliance.ca_fingerprint()?;
    let banner = appliance.wait_for_serial("tether-appliance: CA SHA-256 fingerprint ", Duration::from_secs(60))?;
    ensure!(banner.trim_end().ends_with(&fingerprint), "the console shows {banner:?}, the CA's is {fingerprint}");
    let ready = appliance.wait_for_serial("tether-appliance: ready: ", Duration::from_secs(10))?;
    ensure!(ready.contains(":4433") && ready.contains(":8443"), "the console's ready line: {ready:?}");

    // A PC's AMT dials the appliance and shows up in the technician's device list.
    let uuid = Uuid::new_v4();
    let mut device = appliance.start_device(uuid);
    let connected = poll_until(Duration::from_secs(60), || appliance.is_connected(uuid));
    ensure!(
        connected,
        "amt-sim {uuid} did not appear connected in `tether devices` within 60 s; devices: {}\n{}",
        appliance.devices_json().map(|d| d.to_string()).unwrap_or_else(|e| format!("{e:#}")),
        device.tail()
    );
    ensure!(device.is_running(), "amt-sim exited\n{}", device.tail());

    // A technician forwards the device's VNC port through the appliance; amt-sim echoes.
    let (_forward, addr) = appliance.forward(uuid, 5900)?;
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to tether forward on {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let message = format!("hello from a technician to {uuid} through the appliance\n");
    stream.write_all(message.as_bytes())?;
    let mut echo = vec![0u8; message.len()];
    stream.read_exact(&mut echo).context("reading the echo through the appliance")?;
    ensure!(echo == message.as_bytes(), "the echo differs: {:?}", String::from_utf8_lossy(&echo));
    drop(stream);

    // Prometheus scrapes the appliance: the bytes relayed to the device are counted.
    let series = "tether_relayed_bytes_total{direction=\"to_device\"}";
    let mut last = String::new();
    let counted = poll_until(Duration::from_secs(20), || match http_request(appliance.metrics_addr(), "/metrics") {
        Ok((200, body)) => {
            let metrics = Metrics::parse(body);
            last = metrics.get(series).map(|v| format!("{series} = {v}")).unwrap_or_else(|| metrics.absent(series));
            metrics.get(series).is_some_and(|v| v >= message.len() as f64)
        }
        Ok((status, body)) => {
            last = format!("status {status}: {body}");
            false
        }
        Err(e) => {
            last = e.to_string();
            false
        }
    });
    ensure!(counted, "GET http://{}/metrics never counted the echo's bytes: {last}", appliance.metrics_addr());

    if let Some(line) = appliance.serial_log().lines().find(|l| l.contains("memory:")) {
        println!("FIGURE appliance ({what}): {}", line.trim());
    }
    println!("FIGURE appliance ({what}): the whole test took {:.1}s", started.elapsed().as_secs_f64());
    let log = appliance.serial_log();
    appliance.shut_down();
    Ok(log)
}
