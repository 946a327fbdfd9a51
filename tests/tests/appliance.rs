//! The appliance images, booted under qemu (TCG) the way an MSP runs them on a VM: a data disk
//! (or partition), a seed disk with the first-boot config, and nothing of the guest reachable but
//! its forwarded ports. Needs the images (`appliance-image/build.sh all`) and qemu-system-x86
//! (scripts/install-test-deps.sh); a missing one fails the test with the command to run.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use e2e::appliance::{image_dir, Appliance, BootOptions, Medium, Seed};
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

/// The ISO's UEFI path (grub-mkrescue's EFI image) in the full run; CI boots the ISO through the
/// BIOS and the disk image through UEFI (the update test).
#[test]
#[ignore = "full run only (about 1 minute under TCG): cargo test --release -p tether-tests --test appliance -- --include-ignored"]
fn an_appliance_boots_from_its_iso_through_uefi_and_serves() -> Result<()> {
    boots_and_serves("ISO, UEFI", &Medium::iso_uefi()?).map(drop)
}

#[test]
fn an_appliance_installed_from_its_disk_image_boots_and_serves() -> Result<()> {
    disk_image_boots_and_serves("disk image, BIOS", &Medium::disk_bios()?)
}

/// In the full run: in CI the update test boots the same disk image through UEFI, and the disk
/// image's BIOS boot checks the data partition's growth.
#[test]
#[ignore = "full run only (about 1 minute under TCG): cargo test --release -p tether-tests --test appliance -- --include-ignored"]
fn an_appliance_installed_from_its_disk_image_boots_through_uefi_and_serves() -> Result<()> {
    disk_image_boots_and_serves("disk image, UEFI", &Medium::disk_uefi()?)
}

fn disk_image_boots_and_serves(what: &str, medium: &Medium) -> Result<()> {
    let log = boots_and_serves(what, medium)?;
    // The first boot grew the data partition into the rest of the (4 GiB) disk; the root is
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

/// The signed update bundle `build.sh update-bundle` (or `all`) made; an error naming the command.
fn update_bundle() -> Result<PathBuf> {
    let bundle = image_dir().join("update/tether-appliance.bundle");
    ensure!(
        bundle.is_file(),
        "{} is missing: build it with `appliance-image/build.sh update-bundle` (scripts/test.sh does)",
        bundle.display()
    );
    Ok(bundle)
}

/// The repository's root (build.sh lives in appliance-image/).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn run_ok(command: &mut Command) -> Result<String> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The good bundle with its signature replaced by one from a key the appliance does not trust:
/// what a forged or tampered bundle looks like.
fn bundle_signed_by_another_key(dir: &Path) -> Result<PathBuf> {
    let bad = dir.join("other-key.bundle");
    fs::copy(update_bundle()?, &bad)?;
    let key = dir.join("other.key");
    run_ok(Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&key))?;
    run_ok(Command::new("tar").arg("-xf").arg(&bad).arg("-C").arg(dir).arg("manifest"))?;
    run_ok(
        Command::new("openssl")
            .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
            .arg(&key)
            .arg("-in")
            .arg(dir.join("manifest"))
            .arg("-out")
            .arg(dir.join("manifest.sig")),
    )?;
    run_ok(Command::new("tar").arg("--delete").arg("-f").arg(&bad).arg("manifest.sig"))?;
    run_ok(Command::new("tar").args(["--format=ustar", "-rf"]).arg(&bad).arg("-C").arg(dir).arg("manifest.sig"))?;
    Ok(bad)
}

/// A bundle, signed with the build's own update key, whose root has no `tether` binary: it boots,
/// but the gateway never answers.
fn bundle_whose_gateway_fails(dir: &Path) -> Result<PathBuf> {
    let root_zst = dir.join("root.img.zst");
    let root = dir.join("root.img");
    let bundle = update_bundle()?;
    run_ok(Command::new("tar").arg("-xf").arg(&bundle).arg("-C").arg(dir).arg("root.img.zst"))?;
    run_ok(Command::new("zstd").args(["-q", "-d", "-f"]).arg(&root_zst).arg("-o").arg(&root))?;
    fs::remove_file(&root_zst)?;
    let version = dir.join("version");
    fs::write(&version, "tether appliance (broken on purpose: no tether binary)\n")?;
    let commands = dir.join("debugfs.cmds");
    fs::write(
        &commands,
        format!(
            "rm /usr/bin/tether\nrm /etc/tether-appliance-version\nwrite {} /etc/tether-appliance-version\n",
            version.display()
        ),
    )?;
    run_ok(Command::new("debugfs").arg("-w").arg("-f").arg(&commands).arg(&root))?;
    let broken = dir.join("broken.bundle");
    let target = image_dir().parent().context("the image dir has no parent")?.to_path_buf();
    run_ok(
        Command::new(repo_root().join("appliance-image/build.sh"))
            .arg("update-bundle")
            .env("CARGO_TARGET_DIR", &target)
            .env("UPDATE_ROOT", &root)
            .env("UPDATE_BUNDLE_OUT", &broken)
            .env("UPDATE_ZSTD_LEVEL", "3"),
    )?;
    fs::remove_file(&root)?;
    Ok(broken)
}

/// Runs `command` in the appliance's shell (menu option 9) and returns the serial output after it.
fn in_guest_shell(appliance: &mut Appliance, command: &str, expect: &str) -> Result<String> {
    let mark = appliance.menu("9", Duration::from_secs(120))?;
    appliance.wait_for_serial_after(mark, "exit returns to the menu", Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_secs(2));
    let at = appliance.serial_mark();
    appliance.console_send(&format!("{command}\r"))?;
    let line = appliance.wait_for_serial_after(at, expect, Duration::from_secs(60))?;
    appliance.console_send("exit\r")?;
    Ok(line)
}

/// Picks "Update from a bundle" in the setup menu and names the disk holding the bundle.
fn update_from_menu(appliance: &mut Appliance, disk: &str) -> Result<usize> {
    let mark = appliance.menu("6", Duration::from_secs(120))?;
    appliance.answer(mark, "bundle file, or the disk holding it", disk, Duration::from_secs(20))
}

/// A device dials the appliance and shows as connected; the device process is returned.
fn device_connected(appliance: &Appliance, uuid: Uuid) -> Result<e2e::process::Process> {
    let mut device = appliance.start_device(uuid);
    let connected = poll_until(Duration::from_secs(90), || appliance.is_connected(uuid));
    ensure!(connected, "amt-sim {uuid} did not connect\n{}", device.tail());
    ensure!(device.is_running(), "amt-sim exited\n{}", device.tail());
    Ok(device)
}

/// The longest test in CI: named to sort first, so that libtest starts it first and the shorter
/// ones run beside it.
#[test]
fn an_appliance_applies_a_signed_update_into_its_other_slot_and_keeps_its_data() -> Result<()> {
    updates_and_keeps_its_data("UEFI", &Medium::disk_uefi()?)
}

/// The same update booted through the BIOS (SYSLINUX: the new slot is its default, set back only
/// by slot-check): in the full run.
#[test]
#[ignore = "full run only (about 4 minutes under TCG): cargo test --release -p tether-tests --test appliance -- --include-ignored"]
fn an_appliance_booted_through_the_bios_updates_into_its_other_slot_and_keeps_its_data() -> Result<()> {
    updates_and_keeps_its_data("BIOS", &Medium::disk_bios()?)
}

fn updates_and_keeps_its_data(what: &str, medium: &Medium) -> Result<()> {
    let started = Instant::now();
    let scratch = tempfile::tempdir()?;
    let bundle = update_bundle()?;
    let forged = bundle_signed_by_another_key(scratch.path())?;
    let options = BootOptions {
        allow_reboot: true,
        extra_disks: vec![(bundle.clone(), false), (forged, false)],
        ..BootOptions::default()
    };
    let mut appliance = Appliance::boot_with(medium, Seed::fresh(), Duration::from_secs(300), options)?;
    let fingerprint = appliance.ca_fingerprint()?;
    let uuid = Uuid::new_v4();
    let device = device_connected(&appliance, uuid)?;
    appliance.wait_for_serial("booted slot a (committed)", Duration::from_secs(60))?;

    // A bundle signed by another key is refused before anything is written: slot B stays blank.
    let mark = update_from_menu(&mut appliance, "/dev/vdd")?;
    let refused = appliance.wait_for_serial_after(mark, "tether-update: ", Duration::from_secs(120))?;
    ensure!(
        refused.contains("signature does not verify") && refused.contains("nothing written"),
        "the forged bundle was not refused for its signature: {refused:?}\n{}",
        appliance.serial_since(mark)
    );
    in_guest_shell(
        &mut appliance,
        "echo \"slot b: $(head -c 4194304 /dev/vda3 | tr -d '\\000' | wc -c) bytes other than zero\"",
        "slot b: 0 bytes other than zero",
    )
    .context("slot B after the forged bundle")?;

    // The real bundle: verified, written to slot B, booted once on trial, marked good.
    let update_started = Instant::now();
    let mark = update_from_menu(&mut appliance, "/dev/vdc")?;
    appliance.wait_for_serial_after(mark, "tether-update: signature good", Duration::from_secs(120))?;
    appliance.wait_for_serial_after(mark, "tether-update: checksum good", Duration::from_secs(300))?;
    let written = appliance.wait_for_serial_after(mark, "tether-update: slot b written", Duration::from_secs(600))?;
    appliance.wait_for_serial_after(mark, "tether-update: rebooting", Duration::from_secs(120))?;
    let verified_and_written = update_started.elapsed();
    appliance.wait_for_serial_after(mark, "booted slot b on trial", Duration::from_secs(300))?;
    appliance.wait_for_serial_after(mark, "slot b marked good", Duration::from_secs(300))?;
    let marked_good = update_started.elapsed();
    let log = appliance.serial_since(mark);
    ensure!(log.contains("root filesystem mounted ro, /dev/vda3"), "the new boot's root is not slot B:\n{log}");

    // The data partition came through: the first boot's token and CA, the device (its MPS
    // account) back, the same CA fingerprint on the console.
    appliance.wait_for_api(Duration::from_secs(120))?;
    let back = poll_until(Duration::from_secs(120), || appliance.is_connected(uuid));
    ensure!(back, "amt-sim {uuid} did not come back after the update\n{}", device.tail());
    let banner = appliance.wait_for_serial_after(mark, "CA SHA-256 fingerprint ", Duration::from_secs(60))?;
    ensure!(
        banner.trim_end().ends_with(&fingerprint),
        "after the update the console shows {banner:?}, the CA was {fingerprint}"
    );
    println!("FIGURE appliance update ({what}): bundle {} bytes", fs::metadata(&bundle)?.len());
    println!("FIGURE appliance update ({what}): {}", written.trim());
    println!(
        "FIGURE appliance update A->B ({what}): menu option to reboot {:.1}s, to slot B marked good {:.1}s, whole test {:.1}s",
        verified_and_written.as_secs_f64(),
        marked_good.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    appliance.shut_down();
    Ok(())
}

#[test]
#[ignore = "full run only (about 6 minutes under TCG): cargo test --release -p tether-tests --test appliance -- --include-ignored"]
fn a_broken_update_rolls_back_to_the_old_slot_by_itself() -> Result<()> {
    let started = Instant::now();
    let scratch = tempfile::tempdir()?;
    let broken = bundle_whose_gateway_fails(scratch.path())?;
    println!("FIGURE appliance rollback: broken bundle built in {:.1}s", started.elapsed().as_secs_f64());
    let options = BootOptions { allow_reboot: true, extra_disks: vec![(broken, false)], ..BootOptions::default() };
    let mut appliance = Appliance::boot_with(&Medium::disk_uefi()?, Seed::fresh(), Duration::from_secs(300), options)?;
    let uuid = Uuid::new_v4();
    let device = device_connected(&appliance, uuid)?;
    appliance.wait_for_serial("booted slot a (committed)", Duration::from_secs(60))?;
    // A shorter health bound than the default 120 s keeps the test short; the gateway of a good
    // slot answers well within it under TCG.
    in_guest_shell(
        &mut appliance,
        "mkdir -p /var/lib/tether/appliance && echo SLOT_CHECK_SECONDS=60 >/var/lib/tether/appliance/slot-check.conf && echo conf-written-ok",
        "conf-written-ok",
    )?;

    let update_started = Instant::now();
    let mark = update_from_menu(&mut appliance, "/dev/vdc")?;
    appliance.wait_for_serial_after(mark, "tether-update: rebooting", Duration::from_secs(600))?;
    let trial = appliance.wait_for_serial_after(mark, "booted slot b on trial", Duration::from_secs(300))?;
    ensure!(trial.contains("broken on purpose"), "the trial boot is not the broken root: {trial:?}");
    appliance.wait_for_serial_after(mark, "rolling back to slot a", Duration::from_secs(300))?;
    let rolled_back = update_started.elapsed();
    appliance.wait_for_serial_after(mark, "booted slot a (committed)", Duration::from_secs(300))?;
    appliance.wait_for_api(Duration::from_secs(120))?;
    let log = appliance.serial_since(mark);
    ensure!(!log.contains("slot b marked good"), "the broken slot was marked good:\n{log}");
    ensure!(
        log.rsplit("booted slot b on trial")
            .next()
            .is_some_and(|after| after.contains("root filesystem mounted ro, /dev/vda2")),
        "the boot after the trial is not slot A:\n{log}"
    );
    let back = poll_until(Duration::from_secs(120), || appliance.is_connected(uuid));
    ensure!(back, "amt-sim {uuid} did not come back after the rollback\n{}", device.tail());
    println!(
        "FIGURE appliance rollback: menu option to rollback decided {:.1}s, to slot A serving again {:.1}s, whole test {:.1}s",
        rolled_back.as_secs_f64(),
        update_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    appliance.shut_down();
    Ok(())
}

/// Runs tests/expect/setup-menu.exp against the appliance's serial console.
fn drive_menu(appliance: &mut Appliance, args: &[&str]) -> Result<()> {
    appliance.console_release();
    // qemu takes the next client once it has seen the last one go.
    std::thread::sleep(Duration::from_secs(1));
    let script = repo_root().join("tests/expect/setup-menu.exp");
    let output = Command::new("expect")
        .arg("-f")
        .arg(&script)
        .arg(appliance.work_dir().join("serial.sock"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running expect (package expect; scripts/install-test-deps.sh installs it)")?;
    ensure!(
        output.status.success(),
        "{} {} failed ({}):\n{}{}",
        script.display(),
        args.first().unwrap_or(&""),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// An unattended install (the first-boot config on the data partition, no seed disk), then the
/// setup menu driven over the serial console with expect (status, MPS account, backup, factory
/// reset, restore). One boot for both: each is a minute and more of CI under TCG. Named to sort
/// second, after the update test: the two long tests start first, one on each of CI's two test
/// threads.
#[test]
fn an_appliance_at_first_boot_takes_its_config_from_its_data_partition_and_is_set_up_from_its_console_menu(
) -> Result<()> {
    let started = Instant::now();
    let scratch = tempfile::tempdir()?;
    // The site's config goes into (a copy of) the disk image before it is written to the box.
    let image = scratch.path().join("tether-appliance.img");
    run_ok(Command::new("cp").arg("--sparse=always").arg(image_dir().join("disk/tether-appliance.img")).arg(&image))?;
    let seed = Seed::fresh();
    let config = scratch.path().join("config");
    fs::create_dir_all(&config)?;
    fs::write(config.join("tether.toml"), &seed.tether_toml)?;
    fs::write(
        config.join("seed.conf"),
        format!("mps_user={}\nmps_password={}\ntoken_name={}\n", seed.mps_user, seed.mps_password, seed.token_name),
    )?;
    run_ok(Command::new(repo_root().join("appliance-image/firstboot.sh")).arg(&image).arg(&config))?;
    // A USB stick: a FAT filesystem on a whole 32 MiB disk, written without mounting.
    let usb = scratch.path().join("usb.img");
    run_ok(Command::new("mkfs.vfat").arg("-C").arg(&usb).arg("32768"))?;
    let options = BootOptions { allow_reboot: true, extra_disks: vec![(usb.clone(), true)], no_seed_disk: true };
    let mut appliance = Appliance::boot_with(&Medium::DiskBios(image), seed, Duration::from_secs(300), options)?;
    appliance.reply_from_data_partition(Duration::from_secs(300))?;
    let fingerprint = appliance.ca_fingerprint()?;
    let log = appliance.serial_log();
    ensure!(log.contains("first-boot config found on the data partition"), "no first-boot config taken:\n{log}");
    ensure!(log.contains("seed: MPS account "), "the config's MPS account was not set:\n{log}");
    // The config's MPS account lets a device in; the reply's token lets the technician see it.
    drop(device_connected(&appliance, Uuid::new_v4())?);
    // The config (with its password) is gone from the data partition.
    in_guest_shell(
        &mut appliance,
        "echo \"config-$([ -e /var/lib/tether/tether-seed ] && echo still-there || echo removed)\"",
        "config-removed",
    )?;
    println!(
        "FIGURE appliance first-boot config on the data partition: serving after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Status, then a new MPS account set from the menu: a device authenticating with it gets in.
    let (user, password) = ("sitempsuser", format!("Menu-{}", &Uuid::new_v4().simple().to_string()[..12]));
    drive_menu(&mut appliance, &["setup", user, &password])?;
    let uuid = Uuid::new_v4();
    let device = appliance.start_device_as(uuid, user, &password);
    let connected = poll_until(Duration::from_secs(90), || appliance.is_connected(uuid));
    ensure!(connected, "amt-sim with the MPS account set in the menu did not connect\n{}", device.tail());
    drop(device);

    // Factory reset: refused without a backup, a backup onto the USB stick, then erased.
    let mark = appliance.serial_mark();
    drive_menu(&mut appliance, &["reset", "/dev/vdc"])?;
    // The appliance reboots into a first boot: a new CA; the old token is gone with the database.
    let banner = appliance.wait_for_serial_after(mark, "CA SHA-256 fingerprint ", Duration::from_secs(300))?;
    ensure!(!banner.trim_end().ends_with(&fingerprint), "the CA survived the factory reset: {banner:?}");
    ensure!(appliance.try_cli(&["devices", "--json"]).is_err(), "the first boot's token still works after the reset");

    // The backup on the USB stick holds the old CA (what would bring the fleet back).
    let listing = run_ok(Command::new("mdir").args(["-b", "-i"]).arg(&usb).arg("::").env("MTOOLS_SKIP_CHECK", "1"))?;
    let name = listing
        .lines()
        .map(str::trim)
        .find(|l| l.contains("tether-backup-"))
        .with_context(|| format!("no backup on the USB stick: {listing}"))?
        .trim_start_matches("::/")
        .to_string();
    let backup = scratch.path().join("backup.tar.gz");
    run_ok(
        Command::new("mcopy").arg("-i").arg(&usb).arg(format!("::/{name}")).arg(&backup).env("MTOOLS_SKIP_CHECK", "1"),
    )?;
    let restored = scratch.path().join("restored");
    fs::create_dir_all(&restored)?;
    run_ok(Command::new("tar").arg("-xzf").arg(&backup).arg("-C").arg(&restored))?;
    let ca = fs::read_to_string(restored.join("tls/ca.pem")).context("the backup's tls/ca.pem")?;
    ensure!(ca == fs::read_to_string(appliance.ca_path())?, "the backup's CA is not the appliance's first CA");

    // The menu restores that backup from the stick: the first CA, token, devices and MPS
    // accounts are back.
    let mark = appliance.serial_mark();
    let restoring = Instant::now();
    drive_menu(&mut appliance, &["restore", "/dev/vdc"])?;
    let done =
        appliance.wait_for_serial_after(mark, "restore done: CA SHA-256 fingerprint ", Duration::from_secs(10))?;
    ensure!(done.trim_end().ends_with(&fingerprint), "the console shows another CA after the restore: {done:?}");
    // The first boot's token, over TLS checked against the first CA.
    let devices = appliance.devices_json().context("the first boot's token and CA after the restore")?;
    ensure!(
        devices.as_array().is_some_and(|d| d.iter().any(|d| d["uuid"].as_str() == Some(uuid.to_string().as_str()))),
        "the device known before the backup is not listed after the restore: {devices}"
    );
    drop(device_connected(&appliance, Uuid::new_v4())?);
    println!(
        "FIGURE appliance restore from the USB stick through the menu: device back {:.1}s after the option",
        restoring.elapsed().as_secs_f64()
    );
    println!("FIGURE appliance first-boot config and setup menu: whole test {:.1}s", started.elapsed().as_secs_f64());
    appliance.shut_down();
    Ok(())
}
