//! IDE-R: the device's side of an IDE redirection session, and a simulated BIOS that boots from
//! the console's media.
//!
//! On StartIDERRedirection (0x40, either layout) the device answers 0x41 (read buffer
//! `--ider-buffer`, write buffer 8192, features 0, no OEM data); on DisableEnableFeatures (0x48) it
//! answers 0x49 (get supported: 1; get state: bit 1 when enabled; set: 1, accepted). Every device
//! message is numbered 0, 1, 2, … with no gaps; a heartbeat (0x4B) goes out after every idle
//! [`RedirectionConfig::heartbeat`](super::RedirectionConfig::heartbeat); a ping (0x44) gets a
//! pong (0x45); EndIDERRedirection (0x42) gets 0x43 and ends the boot.
//!
//! When a set-state enables the registers and `--boot-ider` is on, the firmware boots: it prints
//! `IDE-R boot: starting`, then sends the CD (drive 0xB0) TEST UNIT READY (no medium: `IDE-R
//! boot: cd absent`, move on; unit attention: retried once), MODE SENSE(10) page 0x3F, GET
//! CONFIGURATION, GET EVENT STATUS NOTIFICATION, READ CAPACITY(10), READ TOC (format 0), then
//! READ(10) over the whole medium, `--ider-read-blocks` blocks per command; then the floppy
//! (0xA0) TEST UNIT READY, READ FORMAT CAPACITIES, READ CAPACITY(10) and READ(10) over it all.
//! One command is outstanding at a time. Read data (0x54 chunks, the last one marked completed)
//! is hashed with SHA-256 and counted, never stored; a chunk over the announced read buffer, or
//! more or fewer bytes than asked for, fails the medium. Per medium it prints, on the device's serial
//! console ([`SerialConsoles::print`]):
//!
//! - `IDE-R boot: cd read <N> bytes sha256=<64 lowercase hex>` (`floppy` for the floppy);
//! - `IDE-R boot: cd failed: <reason>` when a command fails, the console sends other than what was
//!   asked, or a command goes unanswered for [`RedirectionConfig::command_timeout`]
//!   (`no answer to READ(10) in 30s`; this ends the boot, the other failures move on to the next
//!   device);
//! - `IDE-R boot: cd absent` (no medium).
//!
//! The session stays open after the boot until the console ends it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocols::redir::{
    AtaCommand, FeaturesCommand, FeaturesRequest, IderOpenReply, Message, RegisterArea, Versions, ATTR_COMPLETED,
};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::console::SerialConsoles;
use super::RedirectionConfig;
use crate::amt::service::Outbox;
use crate::amt::wsman::Firmware;

/// Drive select of the floppy / removable disk.
pub const DRIVE_FLOPPY: u8 = 0xA0;
/// Drive select of the CD-ROM.
pub const DRIVE_CD: u8 = 0xB0;
/// The device's write buffer size, announced in 0x41.
const WRITE_BUFFER: u16 = 8192;
/// ATA PACKET.
const ATA_PACKET: u8 = 0xA0;
/// Byte count limit written with every packet (even, as ATAPI wants).
const BYTE_COUNT_LIMIT: u16 = 0xFFFE;
/// Allocation length of the informational commands, and the most data kept of their replies.
const ALLOCATION: u16 = 0x1000;

/// The two media, in boot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Cd,
    Floppy,
}

impl Media {
    fn name(self) -> &'static str {
        match self {
            Media::Cd => "cd",
            Media::Floppy => "floppy",
        }
    }

    fn drive(self) -> u8 {
        match self {
            Media::Cd => DRIVE_CD,
            Media::Floppy => DRIVE_FLOPPY,
        }
    }
}

/// Where the boot of one medium is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    TestUnitReady { retried: bool },
    ModeSense,
    GetConfiguration,
    EventStatus,
    ReadFormatCapacities,
    ReadCapacity,
    ReadToc,
    Read { count: u16 },
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::TestUnitReady { .. } => "TEST UNIT READY",
            Step::ModeSense => "MODE SENSE(10)",
            Step::GetConfiguration => "GET CONFIGURATION",
            Step::EventStatus => "GET EVENT STATUS NOTIFICATION",
            Step::ReadFormatCapacities => "READ FORMAT CAPACITIES",
            Step::ReadCapacity => "READ CAPACITY(10)",
            Step::ReadToc => "READ TOC",
            Step::Read { .. } => "READ(10)",
        }
    }
}

/// The command in flight.
#[derive(Debug)]
struct Pending {
    step: Step,
    deadline: Instant,
    /// Bytes the command may return.
    expected: u64,
    received: u64,
    /// The reply of an informational command (capped at `expected`); empty for reads.
    data: Vec<u8>,
    /// The medium already failed during this transfer; its remaining chunks are discarded until
    /// the command completes, then the next medium boots.
    failed: bool,
}

/// The boot of one medium.
#[derive(Debug)]
struct Boot {
    media: Media,
    pending: Option<Pending>,
    block_len: u32,
    blocks: u64,
    next_lba: u64,
    read: u64,
    hasher: Sha256,
}

impl Boot {
    fn new(media: Media) -> Self {
        Self { media, pending: None, block_len: 0, blocks: 0, next_lba: 0, read: 0, hasher: Sha256::new() }
    }
}

/// How a command ended.
#[derive(Debug)]
enum Outcome {
    Good,
    Check { key: u8, asc: u8, ascq: u8 },
}

/// A protocol violation by the console: the channel is closed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Violation(pub(super) &'static str);

/// The device side of one IDE-R session. See the module doc.
#[derive(Debug)]
pub(super) struct IderFirmware {
    config: Arc<RedirectionConfig>,
    uuid: Uuid,
    consoles: SerialConsoles,
    seq: u32,
    last_sent: Instant,
    enabled: bool,
    boot: Option<Boot>,
    /// The `--boot-ider` boot ran (or was abandoned); it runs once per session.
    booted: bool,
    /// The firmware state: a power-on, reset or cycle with UseIDER set leaves a boot pending
    /// there, which this session serves once its registers are enabled.
    firmware: Option<Firmware>,
    /// When the session started (a boot pending after a redial is not served by a session from
    /// before it).
    opened: Instant,
}

impl IderFirmware {
    /// Answers StartIDERRedirection with 0x41 (sequence 0).
    pub(super) fn open(
        config: Arc<RedirectionConfig>,
        uuid: Uuid,
        consoles: SerialConsoles,
        firmware: Option<Firmware>,
        now: Instant,
        out: &mut Outbox<'_>,
    ) -> Self {
        let buffer = config.ider_buffer;
        let mut fw = Self {
            config,
            uuid,
            consoles,
            seq: 0,
            last_sent: now,
            enabled: false,
            boot: None,
            booted: false,
            firmware,
            opened: now,
        };
        let reply = |seq| IderOpenReply {
            status: 0,
            seq,
            versions: Versions { protocol_major: 1, protocol_minor: 0, firmware_major: 0, firmware_minor: 0 },
            read_buffer_size: buffer,
            write_buffer_size: WRITE_BUFFER,
            features: 0,
            oem_iana: 0,
            oem_data: Default::default(),
        };
        fw.send(now, out, |seq| Message::StartIderReply(reply(seq)));
        fw
    }

    /// Sends one message built with the next sequence number.
    fn send(&mut self, now: Instant, out: &mut Outbox<'_>, build: impl FnOnce(u32) -> Message) {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        super::send(&build(seq), out);
        self.last_sent = now;
    }

    /// When [`IderFirmware::on_timer`] is next due: a heartbeat, or a command's timeout.
    pub(super) fn deadline(&self) -> Instant {
        let heartbeat = self.last_sent + self.config.heartbeat;
        match self.boot.as_ref().and_then(|b| b.pending.as_ref()) {
            Some(pending) => heartbeat.min(pending.deadline),
            None => heartbeat,
        }
    }

    /// Fails a command that timed out; sends a heartbeat when idle long enough.
    pub(super) fn on_timer(&mut self, now: Instant, out: &mut Outbox<'_>) {
        let timed_out = self.boot.as_ref().and_then(|b| b.pending.as_ref()).filter(|p| now >= p.deadline);
        if let Some(pending) = timed_out {
            let reason = format!(
                "no answer to {} in {}s",
                pending.step.name(),
                self.config.command_timeout.as_secs_f64().round()
            );
            self.fail(&reason, false, now, out);
        }
        if now >= self.last_sent + self.config.heartbeat {
            self.send(now, out, |seq| Message::IderHeartbeat { seq });
        }
    }

    /// Handles one console message of the IDE-R phase. `Ok(true)` when the session ended (0x42).
    pub(super) fn handle(&mut self, message: Message, now: Instant, out: &mut Outbox<'_>) -> Result<bool, Violation> {
        match message {
            Message::IderDisableEnableFeatures { request, .. } => {
                let (command, value) = match request {
                    FeaturesRequest::GetSupported => (FeaturesCommand::GetSupported, 1),
                    FeaturesRequest::GetState => (FeaturesCommand::GetState, if self.enabled { 0b10 } else { 0 }),
                    FeaturesRequest::SetState(value) => {
                        self.enabled = value & 1 != 0;
                        (FeaturesCommand::SetState, 1)
                    }
                };
                self.send(now, out, |seq| Message::IderDisableEnableFeaturesReply { seq, command, value });
                self.poll_boot(now, out);
            }
            Message::IderKeepAlivePing { .. } => self.send(now, out, |seq| Message::IderKeepAlivePong { seq }),
            Message::IderKeepAlivePong { .. }
            | Message::IderHeartbeat { .. }
            | Message::IderResetOccurredResponse { .. } => {}
            Message::EndIder { .. } => {
                self.send(now, out, |seq| Message::EndIderReply { seq });
                if self.boot.take().is_some() {
                    tracing::debug!("IDE-R ended by the console during the boot");
                }
                return Ok(true);
            }
            Message::IderCommandEndResponse { attributes, area, .. } => {
                if self.pending_mut().is_none() {
                    return Err(Violation("CommandEndResponse with no command outstanding"));
                }
                if attributes & ATTR_COMPLETED == 0 {
                    tracing::debug!("IDE-R: CommandEndResponse without the completed bit");
                }
                self.complete(outcome(&area), now, out);
            }
            Message::IderDataToHost { attributes, area, data, .. } => {
                let Some(boot) = self.boot.as_mut() else {
                    return Err(Violation("DataToHost with no command outstanding"));
                };
                let Some(pending) = boot.pending.as_mut() else {
                    return Err(Violation("DataToHost with no command outstanding"));
                };
                let completed = attributes & ATTR_COMPLETED != 0;
                if pending.failed {
                    if completed {
                        self.complete(Outcome::Good, now, out);
                    }
                    return Ok(false);
                }
                pending.received += data.len() as u64;
                let problem = if data.len() > usize::from(self.config.ider_buffer) {
                    Some(format!(
                        "{} data came in a chunk of {} bytes, over the read buffer of {}",
                        pending.step.name(),
                        data.len(),
                        self.config.ider_buffer
                    ))
                } else if pending.received > pending.expected {
                    Some(format!(
                        "{} returned {} bytes, more than the {} asked for",
                        pending.step.name(),
                        pending.received,
                        pending.expected
                    ))
                } else {
                    None
                };
                if let Some(reason) = problem {
                    // Print now; move on once the console has finished this command.
                    pending.failed = true;
                    let media = boot.media;
                    self.print(&format!("IDE-R boot: {} failed: {reason}", media.name()));
                    if completed {
                        self.complete(Outcome::Good, now, out);
                    }
                    return Ok(false);
                }
                if matches!(pending.step, Step::Read { .. }) {
                    boot.hasher.update(&data);
                } else {
                    pending.data.extend_from_slice(&data);
                }
                if attributes & ATTR_COMPLETED != 0 {
                    self.complete(outcome(&area), now, out);
                }
            }
            Message::IderGetDataFromHost { .. } => {
                if self.pending_mut().is_none() {
                    return Err(Violation("GetDataFromHost with no command outstanding"));
                }
                self.fail("the console asked for write data for a read command", true, now, out);
            }
            _ => return Err(Violation("a message that does not belong to an IDE-R session")),
        }
        Ok(false)
    }

    /// Starts a boot when the registers are enabled and none runs: the `--boot-ider` boot (once
    /// per session), or a boot the firmware left pending (a power-on, reset or cycle with
    /// UseIDER set).
    pub(super) fn poll_boot(&mut self, now: Instant, out: &mut Outbox<'_>) {
        if !self.enabled || self.boot.is_some() {
            return;
        }
        let pending = self.firmware.as_ref().is_some_and(|f| f.take_pending_boot(self.uuid, self.opened));
        if pending || (self.config.boot_ider && !self.booted) {
            self.booted = true;
            self.print("IDE-R boot: starting");
            self.start_media(Media::Cd, now, out);
        }
    }

    fn pending_mut(&mut self) -> Option<&mut Pending> {
        self.boot.as_mut().and_then(|b| b.pending.as_mut())
    }

    fn print(&self, line: &str) {
        self.consoles.print(self.uuid, line);
    }

    fn start_media(&mut self, media: Media, now: Instant, out: &mut Outbox<'_>) {
        self.boot = Some(Boot::new(media));
        self.issue(Step::TestUnitReady { retried: false }, now, out);
    }

    /// Ends the current medium's boot with a failure line; moves on to the next medium unless
    /// `next` is false.
    fn fail(&mut self, reason: &str, next: bool, now: Instant, out: &mut Outbox<'_>) {
        let Some(boot) = self.boot.take() else { return };
        self.print(&format!("IDE-R boot: {} failed: {reason}", boot.media.name()));
        if next {
            self.next_media(boot.media, now, out);
        }
    }

    fn next_media(&mut self, done: Media, now: Instant, out: &mut Outbox<'_>) {
        match done {
            Media::Cd => self.start_media(Media::Floppy, now, out),
            Media::Floppy => self.boot = None,
        }
    }

    /// Sends the command for `step` of the current medium.
    fn issue(&mut self, step: Step, now: Instant, out: &mut Outbox<'_>) {
        let Some(boot) = self.boot.as_mut() else { return };
        let alloc = ALLOCATION.to_be_bytes();
        let mut cdb = [0u8; 12];
        let mut expected = u64::from(ALLOCATION);
        match step {
            Step::TestUnitReady { .. } => expected = 0,
            Step::ModeSense => {
                cdb[0] = 0x5A;
                cdb[2] = 0x3F;
                cdb[7..9].copy_from_slice(&alloc);
            }
            Step::GetConfiguration => {
                cdb[0] = 0x46;
                cdb[7..9].copy_from_slice(&alloc);
            }
            Step::EventStatus => {
                cdb[0] = 0x4A;
                cdb[1] = 0x01; // polled
                cdb[4] = 0x10; // media class
                cdb[7..9].copy_from_slice(&alloc);
            }
            Step::ReadFormatCapacities => {
                cdb[0] = 0x23;
                cdb[7..9].copy_from_slice(&alloc);
            }
            Step::ReadCapacity => {
                cdb[0] = 0x25;
                expected = 8;
            }
            Step::ReadToc => {
                cdb[0] = 0x43;
                cdb[7..9].copy_from_slice(&alloc);
            }
            Step::Read { count } => {
                cdb[0] = 0x28;
                // The LBA fits: READ CAPACITY(10) reported the last one as a u32.
                let lba = u32::try_from(boot.next_lba).unwrap_or(u32::MAX);
                cdb[2..6].copy_from_slice(&lba.to_be_bytes());
                cdb[7..9].copy_from_slice(&count.to_be_bytes());
                expected = u64::from(count) * u64::from(boot.block_len);
            }
        }
        let drive = boot.media.drive();
        boot.pending = Some(Pending {
            step,
            deadline: now + self.config.command_timeout,
            expected,
            received: 0,
            data: Vec::new(),
            failed: false,
        });
        let command = AtaCommand {
            cable_select: 0,
            feature: 0,
            sector_count: 0,
            sector_number: 0,
            byte_count_limit: BYTE_COUNT_LIMIT,
            drive_select: drive,
            command: ATA_PACKET,
            packet: cdb,
        };
        self.send(now, out, |seq| Message::IderCommandWritten { seq, attributes: 0, command });
    }

    /// The outstanding command ended with `outcome`: check it and issue the next one.
    fn complete(&mut self, outcome: Outcome, now: Instant, out: &mut Outbox<'_>) {
        let Some(boot) = self.boot.as_mut() else { return };
        let Some(pending) = boot.pending.take() else { return };
        let media = boot.media;
        let step = pending.step;
        if pending.failed {
            // Already reported; the console has finished the command.
            self.boot = None;
            return self.next_media(media, now, out);
        }
        if let Outcome::Check { key, asc, ascq } = outcome {
            match (step, key, asc) {
                (Step::TestUnitReady { .. }, 0x02, 0x3A) => {
                    self.boot = None;
                    self.print(&format!("IDE-R boot: {} absent", media.name()));
                    self.next_media(media, now, out);
                }
                (Step::TestUnitReady { retried: false }, 0x06, _) => {
                    self.issue(Step::TestUnitReady { retried: true }, now, out)
                }
                _ => {
                    let reason = format!("{}: CHECK CONDITION {key:02x}/{asc:02x}/{ascq:02x}", step.name());
                    self.fail(&reason, true, now, out);
                }
            }
            return;
        }
        let next = match step {
            Step::TestUnitReady { .. } => match media {
                Media::Cd => Step::ModeSense,
                Media::Floppy => Step::ReadFormatCapacities,
            },
            Step::ModeSense => Step::GetConfiguration,
            Step::GetConfiguration => Step::EventStatus,
            Step::EventStatus | Step::ReadFormatCapacities => Step::ReadCapacity,
            Step::ReadCapacity => {
                let Some(capacity) = pending.data.get(..8) else {
                    let reason = format!("READ CAPACITY(10) returned {} bytes, not 8", pending.data.len());
                    return self.fail(&reason, true, now, out);
                };
                let last = u32::from_be_bytes([capacity[0], capacity[1], capacity[2], capacity[3]]);
                let block_len = u32::from_be_bytes([capacity[4], capacity[5], capacity[6], capacity[7]]);
                if block_len == 0 || block_len > 64 * 1024 {
                    let reason = format!("READ CAPACITY(10) reported a block length of {block_len}");
                    return self.fail(&reason, true, now, out);
                }
                boot.block_len = block_len;
                boot.blocks = u64::from(last) + 1;
                match media {
                    Media::Cd => Step::ReadToc,
                    Media::Floppy => self.read_step(),
                }
            }
            Step::ReadToc => self.read_step(),
            Step::Read { count } => {
                let want = u64::from(count) * u64::from(boot.block_len);
                if pending.received != want {
                    let reason = format!(
                        "READ(10) of {count} blocks at {} returned {} bytes, not {want}",
                        boot.next_lba, pending.received
                    );
                    return self.fail(&reason, true, now, out);
                }
                boot.next_lba += u64::from(count);
                boot.read += want;
                self.read_step()
            }
        };
        if matches!(next, Step::Read { count: 0 }) {
            self.finish_media(now, out);
        } else {
            self.issue(next, now, out);
        }
    }

    /// The next READ(10) of the current medium (`count` 0 when it was all read).
    fn read_step(&self) -> Step {
        let Some(boot) = self.boot.as_ref() else { return Step::Read { count: 0 } };
        let left = boot.blocks.saturating_sub(boot.next_lba);
        let count = left.min(u64::from(self.config.ider_read_blocks.max(1)));
        Step::Read { count: u16::try_from(count).unwrap_or(u16::MAX) }
    }

    /// The whole medium was read: print its size and hash, then boot the next one.
    fn finish_media(&mut self, now: Instant, out: &mut Outbox<'_>) {
        let Some(boot) = self.boot.take() else { return };
        let mut hex = String::with_capacity(64);
        for byte in boot.hasher.finalize() {
            let _ = write!(hex, "{byte:02x}");
        }
        self.print(&format!("IDE-R boot: {} read {} bytes sha256={hex}", boot.media.name(), boot.read));
        self.next_media(boot.media, now, out);
    }
}

/// GOOD or CHECK CONDITION, from the sense bytes and the status register's ERR bit.
fn outcome(area: &RegisterArea) -> Outcome {
    let sense = area.sense;
    if sense.key != 0 || area.output.status & 0x01 != 0 {
        Outcome::Check { key: sense.key, asc: sense.asc, ascq: sense.ascq }
    } else {
        Outcome::Good
    }
}

/// The default per-command timeout of the simulated BIOS.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
