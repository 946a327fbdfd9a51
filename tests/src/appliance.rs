//! The appliance images under qemu: boots what `appliance-image/build.sh` made (the minimal
//! image: Debian's kernel and an initramfs with busybox and `tether`; its ISO, by BIOS or UEFI;
//! the Debian disk image, by BIOS or UEFI) with a seed disk and, but for the disk image (which
//! has its own data partition), a blank data disk, and speaks to it only through qemu's host
//! forwards, as a technician and devices on the network would. What it does not do: build the
//! images or install qemu (a missing one is an error naming the command that makes it).
//!
//! The guest is cut off from any outside network (user networking with `restrict=on`); its CIRA,
//! API and metrics ports are forwarded from free ports on 127.0.0.1. Its first-boot config goes in
//! on a seed disk (a tar archive with `tether-seed/`), and the appliance answers on the same disk
//! (`tether-reply/ca.pem`, `tether-reply/token`), as `appliance-image/README.md` describes. The
//! guest's serial console goes to a file, printed when a test fails.
//!
//! Always `-accel tcg`: `/dev/kvm` exists on the CI machines but KVM does not work there.

use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use uuid::Uuid;

use crate::process::{bin, bin_dir, free_local_port, last_line, poll_until, run, Process};

/// What the setup menu (appliance-image/disk/menu) asks, on the serial console and tty1.
pub const MENU_PROMPT: &str = "Enter an option: ";

/// The guest's fixed ports (the gateway's defaults).
const GUEST_CIRA: u16 = 4433;
const GUEST_API: u16 = 8443;
const GUEST_METRICS: u16 = 9464;
/// Size of the blank data disk the appliance formats at first boot.
const DATA_DISK_BYTES: u64 = 64 << 20;
/// Size of the seed disk (the seed, then the reply, are small tar archives).
const SEED_DISK_BYTES: u64 = 1 << 20;

/// The folder `build.sh` writes to: `$TETHER_APPLIANCE_DIR`, else `target/appliance` beside the
/// binaries' `target/<profile>/`.
pub fn image_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TETHER_APPLIANCE_DIR") {
        return PathBuf::from(dir);
    }
    let bins = bin_dir();
    bins.parent().unwrap_or(&bins).join("appliance")
}

/// What qemu boots.
#[derive(Debug, Clone)]
pub enum Medium {
    /// The minimal image, `-kernel vmlinuz -initrd initrd.img` (qemu's firmware loads them).
    Minimal { kernel: PathBuf, initrd: PathBuf },
    /// The ISO as a CD-ROM, booted by SeaBIOS and GRUB.
    IsoBios(PathBuf),
    /// The ISO as a CD-ROM, booted by OVMF (UEFI) and GRUB.
    IsoUefi(PathBuf),
    /// The Debian disk image (`build.sh disk`) as the first disk, through a qcow2 overlay of
    /// [`DISK_OVERLAY_BYTES`] (bigger than the image: the data partition grows into the rest),
    /// booted by SeaBIOS and SYSLINUX. It holds its own data partition: no blank data disk.
    DiskBios(PathBuf),
    /// The same, booted by OVMF (UEFI) and the GRUB on its EFI system partition.
    DiskUefi(PathBuf),
}

/// The disk the disk image's overlay makes the guest see.
const DISK_OVERLAY_BYTES: u64 = 4 << 30;

/// Debian's OVMF (package ovmf): the firmware, and the variable store each boot gets a copy of.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl Medium {
    /// The minimal image (`build.sh minimal`); an error naming the build command when missing.
    pub fn minimal() -> Result<Medium> {
        let dir = image_dir().join("minimal");
        let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.img"));
        for file in [&kernel, &initrd] {
            ensure!(file.is_file(), "{}", missing(file, "minimal"));
        }
        Ok(Medium::Minimal { kernel, initrd })
    }

    /// The ISO (`build.sh iso`) booted through the BIOS; an error naming the build command when missing.
    pub fn iso_bios() -> Result<Medium> {
        let iso = image_dir().join("iso/tether-appliance.iso");
        ensure!(iso.is_file(), "{}", missing(&iso, "iso"));
        Ok(Medium::IsoBios(iso))
    }

    /// The ISO (`build.sh iso`) booted through UEFI firmware (OVMF); an error naming what to
    /// build or install when missing.
    pub fn iso_uefi() -> Result<Medium> {
        let iso = image_dir().join("iso/tether-appliance.iso");
        ensure!(iso.is_file(), "{}", missing(&iso, "iso"));
        ovmf_present()?;
        Ok(Medium::IsoUefi(iso))
    }

    /// The disk image (`build.sh disk`) booted through the BIOS; an error naming the build command when missing.
    pub fn disk_bios() -> Result<Medium> {
        Ok(Medium::DiskBios(disk_image()?))
    }

    /// The disk image booted through UEFI firmware (OVMF).
    pub fn disk_uefi() -> Result<Medium> {
        ovmf_present()?;
        Ok(Medium::DiskUefi(disk_image()?))
    }

    /// Guest RAM: GRUB under OVMF runs out of memory loading the initramfs with 256 MiB; Debian's
    /// initramfs (all modules) is 30 MB.
    fn memory(&self) -> &'static str {
        match self {
            Medium::IsoUefi(_) | Medium::DiskBios(_) | Medium::DiskUefi(_) => "512M",
            _ => "256M",
        }
    }

    /// Whether the medium brings its own data partition (else a blank data disk is attached).
    fn has_data_partition(&self) -> bool {
        matches!(self, Medium::DiskBios(_) | Medium::DiskUefi(_))
    }

    fn qemu_args(&self, command: &mut Command, work: &Path) -> Result<()> {
        match self {
            Medium::Minimal { kernel, initrd } => {
                command.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd);
                command.args(["-append", "console=ttyS0 panic=1 quiet"]);
            }
            Medium::IsoBios(iso) => {
                command.arg("-cdrom").arg(iso).args(["-boot", "d"]);
            }
            Medium::DiskBios(_) => {}
            Medium::IsoUefi(_) | Medium::DiskUefi(_) => {
                let vars = work.join("OVMF_VARS.fd");
                fs::copy(OVMF_VARS, &vars).with_context(|| format!("copying {OVMF_VARS}"))?;
                command.arg("-drive").arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
                command.arg("-drive").arg(format!("if=pflash,format=raw,file={}", vars.display()));
                if let Medium::IsoUefi(iso) = self {
                    command.arg("-cdrom").arg(iso).args(["-boot", "d"]);
                }
            }
        }
        Ok(())
    }
}

fn disk_image() -> Result<PathBuf> {
    let image = image_dir().join("disk/tether-appliance.img");
    ensure!(image.is_file(), "{}", missing(&image, "disk"));
    Ok(image)
}

fn ovmf_present() -> Result<()> {
    for file in [OVMF_CODE, OVMF_VARS] {
        ensure!(Path::new(file).is_file(), "{file} is missing: install ovmf (scripts/install-test-deps.sh does)");
    }
    Ok(())
}

fn missing(file: &Path, artifact: &str) -> String {
    format!(
        "{} is missing: build the appliance image first with `appliance-image/build.sh {artifact}` \
         (scripts/test.sh does; TETHER_APPLIANCE_DIR points elsewhere)",
        file.display()
    )
}

/// `qemu-system-x86_64` (`$TETHER_QEMU` overrides); an error naming the package when missing.
pub fn qemu() -> Result<PathBuf> {
    let program = std::env::var_os("TETHER_QEMU").map(PathBuf::from).unwrap_or_else(|| "qemu-system-x86_64".into());
    let works = Command::new(&program).arg("--version").stdin(Stdio::null()).output().is_ok_and(|o| o.status.success());
    ensure!(
        works,
        "{} does not run: install qemu-system-x86 (scripts/install-test-deps.sh does, downgrading qemu-utils to \
         Debian 12's in the same apt command)",
        program.display()
    );
    Ok(program)
}

/// What the seed disk gives the appliance at first boot.
#[derive(Debug, Clone)]
pub struct Seed {
    /// `tether-seed/tether.toml`, the gateway's configuration.
    pub tether_toml: String,
    pub mps_user: String,
    pub mps_password: String,
    /// The name of the API token the appliance creates and hands back.
    pub token_name: String,
}

impl Seed {
    /// MPS credentials and a token name made up for this boot; metrics on every interface
    /// (the forward reaches the guest's eth0, not its loopback).
    pub fn fresh() -> Seed {
        Seed {
            tether_toml: "metrics_listen = \"0.0.0.0:9464\"\n".to_string(),
            mps_user: "mpsuser".to_string(),
            mps_password: format!("P@ss-{}", Uuid::new_v4().simple()),
            token_name: format!("appliance-test-{}", &Uuid::new_v4().simple().to_string()[..8]),
        }
    }

    /// Writes the seed disk image: a tar archive of `tether-seed/`, padded to its disk size.
    fn write_disk(&self, work: &Path, disk: &Path) -> Result<()> {
        let dir = work.join("seed/tether-seed");
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("tether.toml"), &self.tether_toml)?;
        fs::write(
            dir.join("seed.conf"),
            format!("mps_user={}\nmps_password={}\ntoken_name={}\n", self.mps_user, self.mps_password, self.token_name),
        )?;
        run(Command::new("tar")
            .args(["--format=ustar", "--owner=0", "--group=0", "-cf"])
            .arg(disk)
            .arg("-C")
            .arg(work.join("seed"))
            .arg("tether-seed"));
        fs::remove_dir_all(work.join("seed"))?;
        let file = fs::OpenOptions::new().write(true).open(disk)?;
        ensure!(file.metadata()?.len() <= SEED_DISK_BYTES, "the seed does not fit its {SEED_DISK_BYTES}-byte disk");
        file.set_len(SEED_DISK_BYTES)?;
        Ok(())
    }
}

/// How a test wants qemu started beyond the medium and the seed.
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    /// Let a guest reboot restart the VM (a reboot from the setup menu, tether-update's trial
    /// boot, a rollback); without it qemu exits on a reboot (`-no-reboot`), as a crash would.
    pub allow_reboot: bool,
    /// Disks attached after the data (or image) and seed disks, read-only unless `.1`: the guest
    /// sees them as /dev/vdc, /dev/vdd, … in this order.
    pub extra_disks: Vec<(PathBuf, bool)>,
    /// No seed: the second disk is blank, and the boot returns once qemu runs (the first-boot
    /// config comes another way, e.g. on the data partition: [`Appliance::reply_from_data_partition`]).
    pub no_seed_disk: bool,
}

/// A booted appliance in qemu, serving through host forwards on 127.0.0.1. Dropping it
/// kills qemu; unless [`Appliance::shut_down`] was called (the test got through), the guest's
/// serial log is printed first.
#[derive(Debug)]
pub struct Appliance {
    qemu: Process,
    /// How qemu was started, to start it again on the same disks ([`Appliance::power_cycle`]).
    qemu_command: Vec<std::ffi::OsString>,
    work: tempfile::TempDir,
    cira: SocketAddr,
    api: SocketAddr,
    metrics: SocketAddr,
    token: String,
    seed: Seed,
    boot_started: Instant,
    done: bool,
    /// The guest's serial console, connected at the first [`Appliance::console_send`].
    console: Option<UnixStream>,
}

impl Appliance {
    /// Boots `medium` with a blank data disk and `seed`'s disk, waits (up to `timeout`) for the
    /// seed reply and then for the API to answer with the token from the reply.
    pub fn boot(medium: &Medium, seed: Seed, timeout: Duration) -> Result<Appliance> {
        Appliance::boot_with(medium, seed, timeout, BootOptions::default())
    }

    /// [`Appliance::boot`] with [`BootOptions`].
    pub fn boot_with(medium: &Medium, seed: Seed, timeout: Duration, options: BootOptions) -> Result<Appliance> {
        let qemu = qemu()?;
        let work = tempfile::Builder::new().prefix("tether-appliance-").tempdir()?;
        // The first disk: a blank data disk, or the disk image's overlay.
        let (data, seed_disk, serial) =
            (work.path().join("data.img"), work.path().join("seed.img"), work.path().join("serial.log"));
        if let Medium::DiskBios(image) | Medium::DiskUefi(image) = medium {
            // The image stays as built: the guest writes to an overlay.
            run(Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(image)
                .arg(&data)
                .arg(DISK_OVERLAY_BYTES.to_string()));
        } else {
            fs::File::create(&data)?.set_len(DATA_DISK_BYTES)?;
        }
        if options.no_seed_disk {
            fs::File::create(&seed_disk)?.set_len(SEED_DISK_BYTES)?;
        } else {
            seed.write_disk(work.path(), &seed_disk)?;
        }
        fs::write(&serial, "")?;

        let (cira, api, metrics) = (free_local_port(), free_local_port(), free_local_port());
        let netdev = format!(
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{cira}-:{GUEST_CIRA},\
             hostfwd=tcp:127.0.0.1:{api}-:{GUEST_API},hostfwd=tcp:127.0.0.1:{metrics}-:{GUEST_METRICS}"
        );
        let mut command = Command::new(qemu);
        // The serial console: everything the guest writes goes to serial.log; a test types on
        // it through the socket (the setup menu runs there).
        let socket = work.path().join("serial.sock");
        command
            .args(["-machine", "q35", "-accel", "tcg", "-m", medium.memory(), "-smp", "1"])
            .args(["-display", "none", "-monitor", "none"])
            .args(if options.allow_reboot { &[][..] } else { &["-no-reboot"][..] })
            .arg("-chardev")
            .arg(format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
                socket.display(),
                serial.display()
            ))
            .args(["-serial", "chardev:serial0"])
            .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0,romfile="])
            .args(["-device", "virtio-rng-pci"])
            .arg("-drive")
            .arg(format!(
                "file={},format={},if=virtio",
                data.display(),
                if medium.has_data_partition() { "qcow2" } else { "raw" }
            ))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", seed_disk.display()));
        for (disk, writable) in &options.extra_disks {
            command.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio{}",
                disk.display(),
                if *writable { "" } else { ",readonly=on" }
            ));
        }
        medium.qemu_args(&mut command, work.path())?;
        let qemu_command: Vec<_> =
            std::iter::once(command.get_program().to_owned()).chain(command.get_args().map(|a| a.to_owned())).collect();
        let boot_started = Instant::now();
        let qemu = Process::spawn("qemu", &mut command);
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut appliance = Appliance {
            qemu,
            qemu_command,
            work,
            cira: SocketAddr::new(any.ip(), cira),
            api: SocketAddr::new(any.ip(), api),
            metrics: SocketAddr::new(any.ip(), metrics),
            token: String::new(),
            seed,
            boot_started,
            done: false,
            console: None,
        };
        if options.no_seed_disk {
            return Ok(appliance);
        }
        appliance.wait_for_serial("seed reply written", timeout)?;
        appliance.read_reply()?;
        // The reply comes once the gateway listens; still, wait for an API answer with the token
        // (slirp accepts the host side of a forward before the guest answers anything).
        appliance.wait_for_api(timeout.saturating_sub(boot_started.elapsed()).max(Duration::from_secs(30)))?;
        Ok(appliance)
    }

    /// Waits until `tether devices` through the API forward succeeds with the appliance's token.
    pub fn wait_for_api(&self, timeout: Duration) -> Result<()> {
        let mut last_error = String::new();
        let answered = poll_until(timeout, || match self.try_cli(&["devices", "--json"]) {
            Ok(_) => true,
            Err(e) => {
                last_error = format!("{e:#}");
                false
            }
        });
        ensure!(answered, "the appliance's API did not answer within {timeout:?}: {last_error}");
        Ok(())
    }

    /// Cuts the power (qemu killed) and boots again from the same disks; waits (up to `timeout`)
    /// until the gateway listens and its API answers the token from the first boot.
    pub fn power_cycle(&mut self, timeout: Duration) -> Result<()> {
        let _ = self.qemu.terminate(Duration::from_secs(5));
        // qemu starts a new serial log: keep the first boot's with it.
        let log = self.work.path().join("serial.log");
        let earlier = self.work.path().join("serial.earlier.log");
        let mut previous = fs::read(&earlier).unwrap_or_default();
        previous.extend(fs::read(&log)?);
        previous.extend(b"\n--- power cycle ---\n");
        fs::write(&earlier, previous)?;
        fs::write(&log, "")?;
        let (program, args) = self.qemu_command.split_first().context("no qemu command")?;
        self.boot_started = Instant::now();
        self.console = None;
        self.qemu = Process::spawn("qemu", Command::new(program).args(args));
        self.wait_for_serial("gateway listening", timeout)?;
        self.wait_for_api(timeout.saturating_sub(self.boot_started.elapsed()).max(Duration::from_secs(30)))
    }

    /// Seconds from starting qemu to now.
    pub fn since_boot(&self) -> Duration {
        self.boot_started.elapsed()
    }

    /// Everything the guest wrote on its serial console since it last booted.
    pub fn serial_log(&self) -> String {
        // Not UTF-8 throughout: GRUB draws its menu with code page 437 box characters.
        fs::read(self.work.path().join("serial.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The serial logs of boots before a [`Appliance::power_cycle`].
    fn earlier_serial_log(&self) -> String {
        fs::read(self.work.path().join("serial.earlier.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until a serial console line contains `needle`; an error if qemu exits or `timeout` passes.
    pub fn wait_for_serial(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_serial_after(0, needle, timeout)
    }

    /// How many bytes the serial log holds: a mark for [`Appliance::wait_for_serial_after`].
    pub fn serial_mark(&self) -> usize {
        fs::metadata(self.work.path().join("serial.log")).map(|m| m.len() as usize).unwrap_or(0)
    }

    /// The serial log from byte `mark` on.
    pub fn serial_since(&self, mark: usize) -> String {
        let log = fs::read(self.work.path().join("serial.log")).unwrap_or_default();
        String::from_utf8_lossy(log.get(mark..).unwrap_or_default()).into_owned()
    }

    /// Waits until a serial console line written after byte `mark` contains `needle`.
    pub fn wait_for_serial_after(&mut self, mark: usize, needle: &str, timeout: Duration) -> Result<String> {
        let mut found = None;
        let mut exited = None;
        poll_until(timeout, || {
            found = self.serial_since(mark).lines().find(|l| l.contains(needle)).map(str::to_string);
            if found.is_none() {
                exited = self.qemu.try_wait();
            }
            found.is_some() || exited.is_some()
        });
        match (found, exited) {
            (Some(line), _) => Ok(line),
            (None, Some(status)) => bail!("qemu exited ({status}) before the guest printed {needle:?}"),
            (None, None) => bail!("the guest printed no {needle:?} within {timeout:?}"),
        }
    }

    /// Types `text` on the guest's serial console.
    pub fn console_send(&mut self, text: &str) -> Result<()> {
        if self.console.is_none() {
            let socket = self.work.path().join("serial.sock");
            let stream = UnixStream::connect(&socket).with_context(|| format!("connecting to {}", socket.display()))?;
            // What the guest writes comes to this socket too (serial.log has it all): drain it,
            // or qemu stops sending and the guest's console stalls.
            let mut drain = stream.try_clone()?;
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while drain.read(&mut buffer).is_ok_and(|n| n > 0) {}
            });
            self.console = Some(stream);
        }
        let console = self.console.as_mut().context("no console")?;
        // A serial line at 115200 baud, and a guest tty that may be busy: a character at a time
        // would be slow, but a burst can overrun the 16550's FIFO; lines of up to 16 bytes with a
        // pause are safe.
        for chunk in text.as_bytes().chunks(16) {
            console.write_all(chunk)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Hangs up the test's connection to the serial console: qemu serves one client at a time,
    /// and another (expect) may want it.
    pub fn console_release(&mut self) {
        if let Some(console) = self.console.take() {
            let _ = console.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Brings up the setup menu's prompt (Enter, repeated until the prompt shows: the menu may
    /// not run yet, or sit in a sub-prompt), then picks `option`; returns the mark where the
    /// option's output starts.
    pub fn menu(&mut self, option: &str, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mark = self.serial_mark();
            self.console_send("\r")?;
            if self.wait_for_serial_after(mark, MENU_PROMPT, Duration::from_secs(10)).is_ok() {
                break;
            }
            ensure!(Instant::now() < deadline, "the setup menu did not show within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
        let at = self.serial_mark();
        self.console_send(&format!("{option}\r"))?;
        Ok(at)
    }

    /// Waits (after `mark`) for `prompt`, then answers `answer` and Enter; returns the new mark.
    pub fn answer(&mut self, mark: usize, prompt: &str, answer: &str, timeout: Duration) -> Result<usize> {
        self.wait_for_serial_after(mark, prompt, timeout)?;
        let at = self.serial_mark();
        self.console_send(&format!("{answer}\r"))?;
        Ok(at)
    }

    /// The folder this boot's disks and logs are in (removed when the appliance is dropped).
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// The seed this appliance was booted with.
    pub fn seed(&self) -> &Seed {
        &self.seed
    }

    /// Whether qemu still runs.
    pub fn is_running(&mut self) -> bool {
        self.qemu.try_wait().is_none()
    }

    /// Reads the appliance's answer off the seed disk: its CA (into the work dir) and the token.
    fn read_reply(&mut self) -> Result<()> {
        let reply = self.work.path().join("reply");
        fs::create_dir_all(&reply)?;
        let output = Command::new("tar")
            .arg("-xf")
            .arg(self.work.path().join("seed.img"))
            .arg("-C")
            .arg(&reply)
            .stdin(Stdio::null())
            .output()
            .context("running tar")?;
        ensure!(
            output.status.success(),
            "the seed disk holds no readable reply: tar says {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let dir = reply.join("tether-reply");
        ensure!(dir.join("ca.pem").is_file(), "the reply has no tether-reply/ca.pem");
        let token = fs::read_to_string(dir.join("token")).context("the reply's tether-reply/token")?;
        self.token = last_line(&token).context("an empty token in the reply")?.to_string();
        ensure!(
            !String::from_utf8_lossy(&fs::read(self.work.path().join("seed.img"))?).contains(&self.seed.mps_password),
            "the seed's MPS password is still on the seed disk after the reply"
        );
        Ok(())
    }

    /// For a first-boot config taken from the data partition: waits for the appliance's reply
    /// (DATA/tether-reply/, on the appliance), has it copied onto the blank second disk through
    /// the setup menu's shell on the serial console (root's, as an operator at the console
    /// would with a USB stick), reads it from there, then waits for the API to answer with its
    /// token.
    pub fn reply_from_data_partition(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for_serial("first-boot reply written to", timeout)?;
        let mark = self.menu("9", Duration::from_secs(120))?;
        self.wait_for_serial_after(mark, "exit returns to the menu", Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_secs(2));
        let at = self.serial_mark();
        // The marker is computed by the shell, so that the echo of the typed line never matches.
        self.console_send("tar -C /var/lib/tether -cf /dev/vdb tether-reply && sync && echo \"copied-$((6*7))\"\r")?;
        self.wait_for_serial_after(at, "copied-42", Duration::from_secs(60))?;
        self.console_send("exit\r")?;
        self.read_reply()?;
        self.wait_for_api(timeout.saturating_sub(self.boot_started.elapsed()).max(Duration::from_secs(60)))
    }

    /// The CA the appliance made, as read back from the seed disk.
    pub fn ca_path(&self) -> PathBuf {
        self.work.path().join("reply/tether-reply/ca.pem")
    }

    /// The SHA-256 fingerprint of the CA read back from the seed disk (of its DER), as
    /// `AB:CD:…`, the form the gateway and the appliance's console print.
    pub fn ca_fingerprint(&self) -> Result<String> {
        use sha2::Digest;
        let pem = fs::read(self.ca_path())?;
        let der = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .context("no certificate in the reply's ca.pem")?
            .context("the reply's ca.pem")?;
        let digest = sha2::Sha256::digest(der.as_ref());
        Ok(digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn cira_addr(&self) -> SocketAddr {
        self.cira
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// `https://127.0.0.1:PORT`, the API's host forward.
    pub fn api_url(&self) -> String {
        format!("https://{}", self.api)
    }

    /// A technician's `tether` command against the appliance (`--api`, `--token`, `--ca`).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("tether"));
        command.arg("--api").arg(self.api_url()).arg("--token").arg(&self.token).arg("--ca").arg(self.ca_path());
        command.args(args).env("NO_COLOR", "1").env_remove("TETHER_DATA_DIR");
        command
    }

    /// Runs a technician command; its stdout, or an error with its output.
    pub fn try_cli(&self, args: &[&str]) -> Result<String> {
        let output = self.cli_command(args).stdin(Stdio::null()).output().context("running tether")?;
        ensure!(
            output.status.success(),
            "`tether {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `tether devices --json`, parsed.
    pub fn devices_json(&self) -> Result<serde_json::Value> {
        let out = self.try_cli(&["devices", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("`devices --json` printed no JSON: {out}"))
    }

    /// Whether `tether devices --json` lists `uuid` as connected.
    pub fn is_connected(&self, uuid: Uuid) -> bool {
        let uuid = uuid.to_string();
        self.devices_json().ok().and_then(|d| d.as_array().cloned()).is_some_and(|devices| {
            devices.iter().any(|d| d["uuid"].as_str() == Some(uuid.as_str()) && d["connected"] == true)
        })
    }

    /// `amt-sim` dialling the appliance's CIRA forward with the seed's MPS account, as device `uuid`.
    pub fn start_device(&self, uuid: Uuid) -> Process {
        self.start_device_as(uuid, &self.seed.mps_user, &self.seed.mps_password)
    }

    /// `amt-sim` dialling the appliance with the MPS account `user`.
    pub fn start_device_as(&self, uuid: Uuid, user: &str, password: &str) -> Process {
        let mut command = Command::new(bin("amt-sim"));
        command
            .arg("--gateway")
            .arg(self.cira.to_string())
            .arg("--ca")
            .arg(self.ca_path())
            .args(["--username", user, "--password", password])
            .args(["--uuid", &uuid.to_string()])
            .env("RUST_LOG", "info");
        Process::spawn("amt-sim", &mut command)
    }

    /// `tether forward UUID PORT --listen 127.0.0.1:0` through the appliance, once it listens:
    /// the process and its local address.
    pub fn forward(&self, uuid: Uuid, port: u16) -> Result<(Process, SocketAddr)> {
        let mut command =
            self.cli_command(&["forward", &uuid.to_string(), &port.to_string(), "--listen", "127.0.0.1:0"]);
        let mut process = Process::spawn("tether forward", &mut command);
        let line = process.wait_for_log("forwarding ", Duration::from_secs(60));
        let addr = line
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .with_context(|| format!("no address in tether forward's line {line:?}"))?;
        Ok((process, addr))
    }

    /// Stops qemu; the test got through, so the serial log is not printed.
    pub fn shut_down(mut self) {
        self.done = true;
        let _ = self.qemu.terminate(Duration::from_secs(5));
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if !self.done {
            eprintln!(
                "--- the appliance's serial console ({:.1} s after qemu started):\n{}\n--- end of the serial console",
                self.boot_started.elapsed().as_secs_f64(),
                without_escapes(&(self.earlier_serial_log() + &self.serial_log()))
            );
            // A panic prints it already (Process's own drop).
            if !std::thread::panicking() {
                eprintln!("{}", self.qemu.tail());
            }
        }
    }
}

/// `text` without terminal escape sequences (`ESC [ … letter`: the firmware's and GRUB's screen
/// drawing), so that printing a serial log neither clears nor recolours the reader's terminal.
fn without_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}
