//! A SCSI/MMC target for IDE-R: it answers the 12-byte ATAPI packets (SCSI CDBs) that a device's
//! BIOS or boot loader sends to the emulated CD-ROM or floppy, from an image it never holds.
//!
//! Sans-IO, in the style of quinn-proto: [`Target::handle`] takes one packet and returns a
//! [`Response`]. Small replies are built in memory ([`Response::Data`]); a read of the medium comes
//! back as [`Response::Read`], a byte range of the image that the caller reads and sends (splitting
//! it into as many transfers as it likes). The target knows only the image's length.
//!
//! What this module does not do: the IDE-R message format (task-file registers, chunking, the
//! GOOD/CHECK CONDITION register shapes) or any I/O. It is independent of the redirection codec: a
//! driver takes the packet out of an IDE-R CommandWritten message, calls [`Target::handle`], and
//! turns the response into IDE-R data and status messages.
//!
//! The command sequences this serves (see `redirection.md` §1.7):
//!
//! - CD-ROM (2048-byte blocks): TEST UNIT READY, INQUIRY, MODE SENSE(10) (page 0x2A or 0x3F),
//!   GET CONFIGURATION (current profile CD-ROM), GET EVENT STATUS NOTIFICATION (polled, media
//!   class), READ CAPACITY, READ TOC (formats 0 and 1), then READ(10) of the El Torito boot record
//!   and catalog and of the boot image.
//! - Floppy or removable disk (512-byte blocks): TEST UNIT READY, INQUIRY, READ FORMAT CAPACITIES,
//!   READ CAPACITY, MODE SENSE (page 0x05 or 0x3F), then READ(10) from the boot sector on.
//!
//! Every command other than REQUEST SENSE replaces the target's sense data with its own outcome
//! (NO SENSE when it succeeds), so REQUEST SENSE right after a CHECK CONDITION reports why, and
//! clears it. Sense data is in fixed format only (the DESC bit of REQUEST SENSE is ignored).
//!
//! The medium is read-only: writes get DATA PROTECT, WRITE PROTECTED. An image of length 0 is "no
//! medium": commands that need one get NOT READY, MEDIUM NOT PRESENT. An image whose length is not
//! a whole number of blocks has a last, partial block that counts as a block; a [`Response::Read`]
//! that covers it reaches past the image's end, and the caller pads the missing bytes with zeros
//! ([`Target::bytes_in_image`] says how many bytes of a range the image holds).

/// Logical block size of the CD-ROM (MMC, user data of a mode 1 sector).
pub const CD_BLOCK_SIZE: u32 = 2048;
/// Logical block size of the floppy / removable disk.
pub const DISK_BLOCK_SIZE: u32 = 512;

/// Length of fixed-format sense data (SPC: 8 bytes plus 10 additional bytes).
pub const SENSE_DATA_LEN: usize = 18;

/// Vendor identification reported by INQUIRY (8 ASCII bytes, space padded).
const VENDOR: &[u8; 8] = b"TETHER  ";
/// Product revision level reported by INQUIRY (4 ASCII bytes).
const REVISION: &[u8; 4] = b"1.0 ";

/// The kind of device the target emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// A CD-ROM drive (MMC, peripheral device type 0x05, 2048-byte blocks). IDE-R device 0xB0.
    CdRom,
    /// A removable floppy or LS-120 style disk (peripheral device type 0x00 with RMB set,
    /// 512-byte blocks). IDE-R device 0xA0.
    Floppy,
}

impl DeviceKind {
    /// Bytes per logical block.
    pub fn block_size(self) -> u32 {
        match self {
            DeviceKind::CdRom => CD_BLOCK_SIZE,
            DeviceKind::Floppy => DISK_BLOCK_SIZE,
        }
    }

    /// SPC peripheral device type (INQUIRY byte 0).
    fn peripheral_type(self) -> u8 {
        match self {
            DeviceKind::CdRom => 0x05,
            DeviceKind::Floppy => 0x00,
        }
    }

    /// INQUIRY product identification (16 ASCII bytes, space padded).
    fn product(self) -> &'static [u8; 16] {
        match self {
            DeviceKind::CdRom => b"IDE-R CDROM     ",
            DeviceKind::Floppy => b"IDE-R FLOPPY    ",
        }
    }
}

/// The SCSI operation codes the target knows (the first byte of the packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    TestUnitReady = 0x00,
    RequestSense = 0x03,
    Inquiry = 0x12,
    ModeSense6 = 0x1A,
    StartStopUnit = 0x1B,
    PreventAllowMediumRemoval = 0x1E,
    ReadFormatCapacities = 0x23,
    ReadCapacity10 = 0x25,
    Read10 = 0x28,
    Write10 = 0x2A,
    WriteAndVerify10 = 0x2E,
    ReadToc = 0x43,
    GetConfiguration = 0x46,
    GetEventStatusNotification = 0x4A,
    ModeSense10 = 0x5A,
    Read12 = 0xA8,
    Write12 = 0xAA,
}

impl Opcode {
    /// The opcode for a wire code, or `None` for one the target does not implement.
    pub fn from_u8(code: u8) -> Option<Self> {
        use Opcode::*;
        Some(match code {
            0x00 => TestUnitReady,
            0x03 => RequestSense,
            0x12 => Inquiry,
            0x1A => ModeSense6,
            0x1B => StartStopUnit,
            0x1E => PreventAllowMediumRemoval,
            0x23 => ReadFormatCapacities,
            0x25 => ReadCapacity10,
            0x28 => Read10,
            0x2A => Write10,
            0x2E => WriteAndVerify10,
            0x43 => ReadToc,
            0x46 => GetConfiguration,
            0x4A => GetEventStatusNotification,
            0x5A => ModeSense10,
            0xA8 => Read12,
            0xAA => Write12,
            _ => return None,
        })
    }
}

/// The sense keys the target reports (SPC sense key codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SenseKey {
    /// No error to report.
    NoSense = 0x0,
    /// The medium is not there.
    NotReady = 0x2,
    /// The image could not be read (reported by the caller through [`Target::read_failed`]).
    MediumError = 0x3,
    /// The packet asked for something the target does not do.
    IllegalRequest = 0x5,
    /// A write to the read-only medium.
    DataProtect = 0x7,
}

impl SenseKey {
    /// The wire code (the low nibble of fixed sense data byte 2).
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Sense data: why the last command failed (or that it did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sense {
    pub key: SenseKey,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// NO SENSE: nothing to report.
    pub const NONE: Sense = Sense { key: SenseKey::NoSense, asc: 0x00, ascq: 0x00 };
    /// 02/3A/00 MEDIUM NOT PRESENT.
    pub const MEDIUM_NOT_PRESENT: Sense = Sense { key: SenseKey::NotReady, asc: 0x3A, ascq: 0x00 };
    /// 03/11/00 UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Sense = Sense { key: SenseKey::MediumError, asc: 0x11, ascq: 0x00 };
    /// 05/20/00 INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Sense = Sense { key: SenseKey::IllegalRequest, asc: 0x20, ascq: 0x00 };
    /// 05/21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Sense = Sense { key: SenseKey::IllegalRequest, asc: 0x21, ascq: 0x00 };
    /// 05/24/00 INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Sense = Sense { key: SenseKey::IllegalRequest, asc: 0x24, ascq: 0x00 };
    /// 07/27/00 WRITE PROTECTED.
    pub const WRITE_PROTECTED: Sense = Sense { key: SenseKey::DataProtect, asc: 0x27, ascq: 0x00 };

    /// Fixed-format sense data (SPC, response code 0x70 "current"), 18 bytes.
    pub fn to_fixed(self) -> [u8; SENSE_DATA_LEN] {
        let mut data = [0u8; SENSE_DATA_LEN];
        data[0] = 0x70; // VALID = 0 (no INFORMATION), response code 0x70: current error, fixed.
        data[2] = self.key.code();
        data[7] = (SENSE_DATA_LEN - 8) as u8; // additional sense length
        data[12] = self.asc;
        data[13] = self.ascq;
        data
    }
}

/// What the device gets back for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Data to send to the device, then status GOOD. Already truncated to the command's
    /// allocation length, and never empty (an empty reply is [`Response::Good`]).
    Data(Vec<u8>),
    /// Send `len` bytes of the image starting at byte `offset`, then status GOOD. `len` is a whole
    /// number of blocks and is never 0. The range lies within the medium's blocks; it can reach
    /// past the image's end only inside the last, partial block, and those bytes are zeros the
    /// caller supplies (see [`Target::bytes_in_image`]). The caller may split the transfer. If the
    /// image cannot be read, the caller reports CHECK CONDITION with [`Target::read_failed`].
    Read { offset: u64, len: u32 },
    /// No data; status GOOD.
    Good,
    /// No data; status CHECK CONDITION with this sense (also kept for REQUEST SENSE).
    CheckCondition(Sense),
}

/// A SCSI/MMC target serving one image. See the module documentation.
#[derive(Debug, Clone)]
pub struct Target {
    kind: DeviceKind,
    image_len: u64,
    /// Sense data of the last command, for REQUEST SENSE.
    sense: Sense,
}

impl Target {
    /// A target of `kind` serving an image of `image_len` bytes (0 means no medium).
    pub fn new(kind: DeviceKind, image_len: u64) -> Self {
        Self { kind, image_len, sense: Sense::NONE }
    }

    /// The device the target emulates.
    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// The image's length in bytes.
    pub fn image_len(&self) -> u64 {
        self.image_len
    }

    /// Bytes per logical block (2048 for the CD-ROM, 512 for the floppy).
    pub fn block_size(&self) -> u32 {
        self.kind.block_size()
    }

    /// Number of logical blocks on the medium; a partial last block counts.
    pub fn block_count(&self) -> u64 {
        self.image_len.div_ceil(u64::from(self.block_size()))
    }

    /// The sense data REQUEST SENSE would report now.
    pub fn sense(&self) -> Sense {
        self.sense
    }

    /// How many bytes of the range `offset..offset + len` (from a [`Response::Read`]) the image
    /// holds; the caller sends those, then `len` minus that many zero bytes.
    pub fn bytes_in_image(&self, offset: u64, len: u32) -> u32 {
        let available = self.image_len.saturating_sub(offset);
        // Bounded by `len`, so the conversion back cannot fail.
        u32::try_from(available.min(u64::from(len))).unwrap_or(len)
    }

    /// Records that the caller could not read the image for the last [`Response::Read`]: the
    /// command ends in CHECK CONDITION with the returned sense (MEDIUM ERROR, UNRECOVERED READ
    /// ERROR), which REQUEST SENSE then reports.
    pub fn read_failed(&mut self) -> Sense {
        self.sense = Sense::UNRECOVERED_READ_ERROR;
        self.sense
    }

    /// Answers one ATAPI packet.
    pub fn handle(&mut self, packet: &[u8; 12]) -> Response {
        let response = match Opcode::from_u8(packet[0]) {
            Some(opcode) => self.dispatch(opcode, packet),
            None => Response::CheckCondition(Sense::INVALID_OPCODE),
        };
        // Every command's outcome becomes the sense data; REQUEST SENSE, which always succeeds,
        // thereby clears what it has just reported.
        self.sense = match &response {
            Response::CheckCondition(sense) => *sense,
            _ => Sense::NONE,
        };
        response
    }

    fn has_medium(&self) -> bool {
        self.image_len > 0
    }

    fn dispatch(&self, opcode: Opcode, cdb: &[u8; 12]) -> Response {
        let cd = self.kind == DeviceKind::CdRom;
        match opcode {
            // Fixed format whatever the DESC bit says. Allocation length: byte 4.
            Opcode::RequestSense => data_reply(self.sense.to_fixed().to_vec(), usize::from(cdb[4])),
            Opcode::TestUnitReady => self.need_medium().unwrap_or(Response::Good),
            Opcode::StartStopUnit | Opcode::PreventAllowMediumRemoval => Response::Good,
            Opcode::Inquiry => self.inquiry(cdb),
            Opcode::ModeSense6 => self.mode_sense(cdb, false),
            Opcode::ModeSense10 => self.mode_sense(cdb, true),
            Opcode::ReadFormatCapacities => self.read_format_capacities(cdb),
            Opcode::ReadCapacity10 => self.need_medium().unwrap_or_else(|| self.read_capacity()),
            Opcode::Read10 => self.read(be32(cdb, 2), u32::from(be16(cdb, 7))),
            Opcode::Read12 => self.read(be32(cdb, 2), be32(cdb, 6)),
            Opcode::Write10 | Opcode::WriteAndVerify10 | Opcode::Write12 => {
                Response::CheckCondition(Sense::WRITE_PROTECTED)
            }
            Opcode::ReadToc if cd => self.need_medium().unwrap_or_else(|| self.read_toc(cdb)),
            Opcode::GetConfiguration if cd => self.get_configuration(cdb),
            Opcode::GetEventStatusNotification if cd => self.get_event_status(cdb),
            // MMC-only commands on the floppy (an SFF-8070i device does not have them).
            Opcode::ReadToc | Opcode::GetConfiguration | Opcode::GetEventStatusNotification => {
                Response::CheckCondition(Sense::INVALID_OPCODE)
            }
        }
    }

    /// CHECK CONDITION, MEDIUM NOT PRESENT when there is no medium.
    fn need_medium(&self) -> Option<Response> {
        (!self.has_medium()).then_some(Response::CheckCondition(Sense::MEDIUM_NOT_PRESENT))
    }

    /// INQUIRY (SPC): standard data only. EVPD (byte 1 bit 0) or a page code without it is
    /// INVALID FIELD IN CDB. Allocation length: bytes 3..4.
    fn inquiry(&self, cdb: &[u8; 12]) -> Response {
        if cdb[1] & 0x01 != 0 || cdb[2] != 0 {
            return Response::CheckCondition(Sense::INVALID_FIELD_IN_CDB);
        }
        let mut data = Vec::with_capacity(36);
        data.push(self.kind.peripheral_type()); // peripheral qualifier 0: connected
        data.push(0x80); // RMB: removable medium
        data.push(0x05); // VERSION: SPC-3
        data.push(0x02); // RESPONSE DATA FORMAT 2
        data.push(36 - 5); // ADDITIONAL LENGTH
        data.extend_from_slice(&[0, 0, 0]); // no optional features
        data.extend_from_slice(VENDOR);
        data.extend_from_slice(self.kind.product());
        data.extend_from_slice(REVISION);
        data_reply(data, usize::from(be16(cdb, 3)))
    }

    /// MODE SENSE(6) and (10) (SPC). No block descriptors. Page control "changeable" gets the
    /// pages with every parameter zero (nothing is changeable); current, default and saved values
    /// are the same. An unknown page, or a subpage other than 0 (0xFF with page 0x3F), gets the
    /// header alone rather than CHECK CONDITION: BIOSes probe pages and carry on.
    fn mode_sense(&self, cdb: &[u8; 12], ten: bool) -> Response {
        let page_control = cdb[2] >> 6;
        let page = cdb[2] & 0x3F;
        let subpage = cdb[3];
        let mut pages = Vec::new();
        if subpage == 0 || (page == 0x3F && subpage == 0xFF) {
            let wanted: &[u8] = match page {
                0x3F => match self.kind {
                    DeviceKind::CdRom => &[0x01, 0x2A],
                    DeviceKind::Floppy => &[0x01, 0x05],
                },
                0x01 => &[0x01],
                0x2A if self.kind == DeviceKind::CdRom => &[0x2A],
                0x05 if self.kind == DeviceKind::Floppy => &[0x05],
                _ => &[],
            };
            for &code in wanted {
                let mut body = self.mode_page(code);
                if page_control == 1 {
                    body[2..].fill(0);
                }
                pages.extend_from_slice(&body);
            }
        }
        // Medium type 0 (default / obsolete in MMC). Device-specific parameter: WP (bit 7) on the
        // floppy, whose medium is read-only; reserved for MMC devices.
        let device_specific = match self.kind {
            DeviceKind::CdRom => 0x00,
            DeviceKind::Floppy => 0x80,
        };
        let mut data;
        let alloc;
        if ten {
            let len = 8 + pages.len();
            data = Vec::with_capacity(len);
            data.extend_from_slice(&((len - 2) as u16).to_be_bytes()); // MODE DATA LENGTH
            data.extend_from_slice(&[0x00, device_specific, 0, 0]);
            data.extend_from_slice(&0u16.to_be_bytes()); // BLOCK DESCRIPTOR LENGTH
            alloc = usize::from(be16(cdb, 7));
        } else {
            let len = 4 + pages.len();
            data = Vec::with_capacity(len);
            data.push((len - 1) as u8); // MODE DATA LENGTH
            data.extend_from_slice(&[0x00, device_specific, 0]); // ..., BLOCK DESCRIPTOR LENGTH
            alloc = usize::from(cdb[4]);
        }
        data.extend_from_slice(&pages);
        data_reply(data, alloc)
    }

    /// One mode page, with its 2-byte page header.
    fn mode_page(&self, code: u8) -> Vec<u8> {
        match code {
            // Read-write error recovery (SPC/MMC): page length 0x0A, all parameters 0 (default
            // recovery, no retries reported).
            0x01 => {
                let mut page = vec![0u8; 12];
                page[0] = 0x01;
                page[1] = 0x0A;
                page
            }
            // Flexible disk (SBC / SFF-8070i): page length 0x1E.
            0x05 => {
                let geometry = FloppyGeometry::for_blocks(self.block_count());
                let mut page = vec![0u8; 32];
                page[0] = 0x05;
                page[1] = 0x1E;
                page[2..4].copy_from_slice(&geometry.transfer_rate_kbps.to_be_bytes());
                page[4] = geometry.heads;
                page[5] = geometry.sectors_per_track;
                page[6..8].copy_from_slice(&(DISK_BLOCK_SIZE as u16).to_be_bytes());
                page[8..10].copy_from_slice(&geometry.cylinders.to_be_bytes());
                page[28..30].copy_from_slice(&300u16.to_be_bytes()); // MEDIUM ROTATION RATE, rpm
                page
            }
            // CD capabilities and mechanical status (MMC-2 layout, page length 0x14).
            0x2A => {
                let mut page = vec![0u8; 22];
                page[0] = 0x2A;
                page[1] = 0x14;
                // Bytes 2..5: reads CD-ROM only (no CD-R/RW, DVD, audio or mode 2 bits), writes
                // nothing.
                page[6] = MECHANISM; // tray, eject, lock
                page[8..10].copy_from_slice(&CD_SPEED_KBPS.to_be_bytes()); // maximum read speed
                page[14..16].copy_from_slice(&CD_SPEED_KBPS.to_be_bytes()); // current read speed
                page
            }
            _ => Vec::new(),
        }
    }

    /// READ FORMAT CAPACITIES (SFF-8070i / MMC): a 4-byte capacity list header and the current /
    /// maximum capacity descriptor; no formattable capacity descriptors (the medium is
    /// read-only). Allocation length: bytes 7..8.
    fn read_format_capacities(&self, cdb: &[u8; 12]) -> Response {
        // Descriptor type: 2 = formatted medium, 3 = no medium present.
        let (blocks, descriptor_type) =
            if self.has_medium() { (clamp_u32(self.block_count()), 0x02) } else { (0, 0x03) };
        let mut data = Vec::with_capacity(12);
        data.extend_from_slice(&[0, 0, 0, 8]); // CAPACITY LIST LENGTH: one descriptor
        data.extend_from_slice(&blocks.to_be_bytes());
        data.push(descriptor_type);
        data.extend_from_slice(&self.block_size().to_be_bytes()[1..]); // 24-bit BLOCK LENGTH
        data_reply(data, usize::from(be16(cdb, 7)))
    }

    /// READ CAPACITY(10) (SBC/MMC): last LBA and block length, 8 bytes. A medium of more than
    /// 2^32 blocks reports 0xFFFFFFFF, as SBC specifies.
    fn read_capacity(&self) -> Response {
        let last_lba = clamp_u32(self.block_count() - 1);
        let mut data = Vec::with_capacity(8);
        data.extend_from_slice(&last_lba.to_be_bytes());
        data.extend_from_slice(&self.block_size().to_be_bytes());
        Response::Data(data)
    }

    /// READ(10) and READ(12). An LBA at or past the end, or a range reaching past it, is LBA OUT
    /// OF RANGE (even for a transfer length of 0); a transfer length of 0 is otherwise GOOD. A
    /// READ(12) of 4 GiB or more (more than a `Response::Read` can say) is INVALID FIELD IN CDB.
    fn read(&self, lba: u32, count: u32) -> Response {
        if let Some(response) = self.need_medium() {
            return response;
        }
        let blocks = self.block_count();
        if u64::from(lba) >= blocks || u64::from(lba) + u64::from(count) > blocks {
            return Response::CheckCondition(Sense::LBA_OUT_OF_RANGE);
        }
        if count == 0 {
            return Response::Good;
        }
        let block_size = u64::from(self.block_size());
        match u32::try_from(u64::from(count) * block_size) {
            Ok(len) => Response::Read { offset: u64::from(lba) * block_size, len },
            Err(_) => Response::CheckCondition(Sense::INVALID_FIELD_IN_CDB),
        }
    }

    /// READ TOC/PMA/ATIP (MMC), CD only. MSF: byte 1 bit 1. Format: byte 2 bits 0..3, or the
    /// older SFF-8020 place (byte 9 bits 6..7) when byte 2 says 0. Track/session number: byte 6.
    /// Allocation length: bytes 7..8. One session with one data track (ADR 1, CONTROL 4) starting
    /// at LBA 0; the lead-out (track 0xAA) starts at the block count.
    fn read_toc(&self, cdb: &[u8; 12]) -> Response {
        let msf = cdb[1] & 0x02 != 0;
        let format = match cdb[2] & 0x0F {
            0 => cdb[9] >> 6,
            format => format,
        };
        let track = cdb[6];
        let address = |lba: u64| if msf { lba_to_msf(lba) } else { clamp_u32(lba).to_be_bytes() };
        let mut data = Vec::with_capacity(20);
        match format {
            // Format 0: TOC.
            0 => {
                let mut descriptors: Vec<(u8, u64)> = Vec::with_capacity(2);
                match track {
                    0 | 1 => descriptors.push((1, 0)),
                    0xAA => {}
                    _ => return Response::CheckCondition(Sense::INVALID_FIELD_IN_CDB),
                }
                descriptors.push((0xAA, self.block_count()));
                let len = 4 + 8 * descriptors.len();
                data.extend_from_slice(&((len - 2) as u16).to_be_bytes()); // TOC DATA LENGTH
                data.extend_from_slice(&[1, 1]); // first and last track
                for (number, lba) in descriptors {
                    data.extend_from_slice(&[0, 0x14, number, 0]);
                    data.extend_from_slice(&address(lba));
                }
            }
            // Format 1: session information.
            1 => {
                data.extend_from_slice(&10u16.to_be_bytes()); // TOC DATA LENGTH
                data.extend_from_slice(&[1, 1]); // first and last complete session
                data.extend_from_slice(&[0, 0x14, 1, 0]); // first track in the last session
                data.extend_from_slice(&address(0));
            }
            _ => return Response::CheckCondition(Sense::INVALID_FIELD_IN_CDB),
        }
        data_reply(data, usize::from(be16(cdb, 7)))
    }

    /// GET CONFIGURATION (MMC), CD only. RT (byte 1 bits 0..1): 0 every feature from the
    /// starting feature number (bytes 2..3) on, 1 only current ones, 2 only that one feature.
    /// Allocation length: bytes 7..8. Features: profile list (CD-ROM), core (ATAPI), removable
    /// medium (tray), random readable (2048-byte blocks), CD read. Without a medium the current
    /// profile is 0 and the medium features are not current.
    fn get_configuration(&self, cdb: &[u8; 12]) -> Response {
        let rt = cdb[1] & 0x03;
        let start = be16(cdb, 2);
        let medium = self.has_medium();
        let current_profile: u16 = if medium { PROFILE_CD_ROM } else { 0 };

        // (feature code, version, persistent, current, additional data)
        let profile_list = [&PROFILE_CD_ROM.to_be_bytes()[..], &[u8::from(medium), 0]].concat();
        let core = [&2u32.to_be_bytes()[..], &[0x01, 0, 0, 0]].concat(); // ATAPI; DBE set
        let removable = vec![MECHANISM, 0, 0, 0];
        let random_readable = [&CD_BLOCK_SIZE.to_be_bytes()[..], &1u16.to_be_bytes(), &[0, 0]].concat();
        let cd_read = vec![0, 0, 0, 0]; // no CD-Text, C2 flags or digital audio play
        let features: [(u16, u8, bool, bool, Vec<u8>); 5] = [
            (0x0000, 0, true, true, profile_list),
            (0x0001, 1, true, true, core),
            (0x0003, 0, true, true, removable),
            (0x0010, 0, false, medium, random_readable),
            (0x001E, 0, false, medium, cd_read),
        ];

        let mut data = Vec::with_capacity(56);
        data.extend_from_slice(&[0; 4]); // DATA LENGTH, filled below
        data.extend_from_slice(&[0, 0]);
        data.extend_from_slice(&current_profile.to_be_bytes());
        for (code, version, persistent, current, body) in features {
            let selected = match rt {
                0 => code >= start,
                1 => code >= start && current,
                2 => code == start,
                _ => return Response::CheckCondition(Sense::INVALID_FIELD_IN_CDB),
            };
            if selected {
                data.extend_from_slice(&code.to_be_bytes());
                data.push(version << 2 | u8::from(persistent) << 1 | u8::from(current));
                data.push(body.len() as u8);
                data.extend_from_slice(&body);
            }
        }
        let len = (data.len() - 4) as u32;
        data[0..4].copy_from_slice(&len.to_be_bytes());
        data_reply(data, usize::from(be16(cdb, 7)))
    }

    /// GET EVENT STATUS NOTIFICATION (MMC), CD only, polled only (asynchronous, byte 1 bit 0
    /// clear, is INVALID FIELD IN CDB). Only the media class is supported: if the notification
    /// class request (byte 4) asks for it, one media event "no change" with the medium's
    /// presence; otherwise the header alone with NEA ("no event available"). Allocation length:
    /// bytes 7..8.
    fn get_event_status(&self, cdb: &[u8; 12]) -> Response {
        if cdb[1] & 0x01 == 0 {
            return Response::CheckCondition(Sense::INVALID_FIELD_IN_CDB);
        }
        let data = if cdb[4] & MEDIA_CLASS_BIT != 0 {
            let media_status = if self.has_medium() { 0x02 } else { 0x00 }; // Media Present
            vec![0x00, 0x06, 0x04, MEDIA_CLASS_BIT, 0x00, media_status, 0x00, 0x00]
        } else {
            vec![0x00, 0x02, 0x80, MEDIA_CLASS_BIT]
        };
        data_reply(data, usize::from(be16(cdb, 7)))
    }
}

/// MMC profile 0x0008, CD-ROM.
const PROFILE_CD_ROM: u16 = 0x0008;
/// Loading mechanism and its abilities, as in mode page 0x2A byte 6 and the removable medium
/// feature: tray (001b in bits 5..7), eject (bit 3), lock (bit 0).
const MECHANISM: u8 = 0x29;
/// Read speed reported in mode page 0x2A: 16x (16 × 176 kB/s).
const CD_SPEED_KBPS: u16 = 2816;
/// The media class bit in GET EVENT STATUS NOTIFICATION's class fields (class 4).
const MEDIA_CLASS_BIT: u8 = 0x10;

/// Floppy geometry for mode page 0x05: the standard PC formats by size, otherwise a hard-disk
/// style 16-head, 63-sector geometry with enough cylinders (a hint only; BIOSes address by LBA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FloppyGeometry {
    transfer_rate_kbps: u16,
    heads: u8,
    sectors_per_track: u8,
    cylinders: u16,
}

impl FloppyGeometry {
    fn for_blocks(blocks: u64) -> Self {
        let (transfer_rate_kbps, heads, sectors_per_track, cylinders) = match blocks {
            720 => (250, 2, 9, 40),    // 360 KB
            1440 => (250, 2, 9, 80),   // 720 KB
            2400 => (500, 2, 15, 80),  // 1.2 MB
            2880 => (500, 2, 18, 80),  // 1.44 MB
            5760 => (1000, 2, 36, 80), // 2.88 MB
            _ => (500, 16, 63, u16::try_from(blocks.div_ceil(16 * 63)).unwrap_or(u16::MAX)),
        };
        Self { transfer_rate_kbps, heads, sectors_per_track, cylinders }
    }
}

/// A data reply truncated to the allocation length; GOOD when nothing is left.
fn data_reply(mut data: Vec<u8>, alloc: usize) -> Response {
    data.truncate(alloc);
    if data.is_empty() {
        Response::Good
    } else {
        Response::Data(data)
    }
}

fn be16(cdb: &[u8; 12], at: usize) -> u16 {
    u16::from_be_bytes([cdb[at], cdb[at + 1]])
}

fn be32(cdb: &[u8; 12], at: usize) -> u32 {
    u32::from_be_bytes([cdb[at], cdb[at + 1], cdb[at + 2], cdb[at + 3]])
}

fn clamp_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// An LBA as an MMC MSF address (reserved, minute, second, frame): 75 frames a second, and LBA 0
/// is 00:02:00 (the 150-frame pregap). The minute field is one byte: addresses past 255:59:74
/// (images over about 2.2 GiB at 2048 bytes a frame) saturate there.
fn lba_to_msf(lba: u64) -> [u8; 4] {
    let frames = lba.saturating_add(150);
    let minutes = frames / (60 * 75);
    if minutes > 255 {
        return [0, 255, 59, 74];
    }
    [0, minutes as u8, ((frames / 75) % 60) as u8, (frames % 75) as u8]
}

#[cfg(test)]
#[path = "scsi_test.rs"]
mod tests;
