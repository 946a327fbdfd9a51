//! Tests of the SCSI/MMC target: every command's reply byte for byte (the expected layouts are
//! worked out by hand from SPC-3, SBC, MMC and SFF-8070i, field by field, in the comments),
//! allocation-length truncation, sense reporting, read ranges, and property tests over arbitrary
//! packets.

use super::*;
use crate::test_util::hex;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Helpers

const MIB: u64 = 1024 * 1024;
/// A 64 MiB CD image: 32768 blocks of 2048 bytes.
const CD_64_MIB: u64 = 64 * MIB;
/// A 1.44 MB floppy image: 2880 blocks of 512 bytes (80 cylinders, 2 heads, 18 sectors).
const FLOPPY_144: u64 = 1_474_560;

fn cd() -> Target {
    Target::new(DeviceKind::CdRom, CD_64_MIB)
}

fn floppy() -> Target {
    Target::new(DeviceKind::Floppy, FLOPPY_144)
}

/// A 12-byte packet from hex digits (shorter input is zero-padded).
fn packet(digits: &str) -> [u8; 12] {
    let bytes = hex(digits);
    let mut packet = [0u8; 12];
    packet[..bytes.len()].copy_from_slice(&bytes);
    packet
}

fn data(response: Response) -> Vec<u8> {
    match response {
        Response::Data(data) => data,
        other => panic!("expected data, got {other:?}"),
    }
}

fn check(response: Response) -> Sense {
    match response {
        Response::CheckCondition(sense) => sense,
        other => panic!("expected CHECK CONDITION, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Capacity

#[test]
fn block_counts() {
    assert_eq!(cd().block_count(), 32768);
    assert_eq!(floppy().block_count(), 2880);
    // A partial last block counts.
    assert_eq!(Target::new(DeviceKind::CdRom, 2049).block_count(), 2);
    assert_eq!(Target::new(DeviceKind::Floppy, 1).block_count(), 1);
    assert_eq!(Target::new(DeviceKind::Floppy, 0).block_count(), 0);
}

#[test]
fn read_capacity_of_a_64_mib_cd() {
    // Last LBA 32767 = 0x7FFF, block length 2048 = 0x800, both BE u32.
    assert_eq!(data(cd().handle(&packet("25"))), hex("00007fff 00000800"));
}

#[test]
fn read_capacity_of_a_144_floppy() {
    // Last LBA 2879 = 0xB3F, block length 512 = 0x200.
    assert_eq!(data(floppy().handle(&packet("25"))), hex("00000b3f 00000200"));
}

#[test]
fn read_capacity_counts_a_partial_last_block() {
    // 3000 bytes on a CD: two blocks, last LBA 1.
    let mut target = Target::new(DeviceKind::CdRom, 3000);
    assert_eq!(data(target.handle(&packet("25"))), hex("00000001 00000800"));
}

#[test]
fn read_capacity_saturates_past_32_bits() {
    // 2^32 + 1 floppy blocks: the last LBA does not fit, SBC says report 0xFFFFFFFF.
    let mut target = Target::new(DeviceKind::Floppy, ((1u64 << 32) + 1) * 512);
    assert_eq!(data(target.handle(&packet("25"))), hex("ffffffff 00000200"));
}

#[test]
fn read_format_capacities_floppy() {
    // Capacity list header: 3 reserved bytes, list length 8. Current/maximum descriptor: 2880
    // blocks (0xB40), descriptor type 2 (formatted medium), block length 512 as a 24-bit value.
    assert_eq!(data(floppy().handle(&packet("23 00 00 00 00 00 00 00 fc"))), hex("00000008 00000b40 02 000200"));
}

#[test]
fn read_format_capacities_cd() {
    // 32768 blocks (0x8000), formatted, 2048-byte blocks.
    assert_eq!(data(cd().handle(&packet("23 00 00 00 00 00 00 00 fc"))), hex("00000008 00008000 02 000800"));
}

#[test]
fn read_format_capacities_without_medium() {
    // Descriptor type 3: no medium present.
    let mut target = Target::new(DeviceKind::Floppy, 0);
    assert_eq!(data(target.handle(&packet("23 00 00 00 00 00 00 00 fc"))), hex("00000008 00000000 03 000200"));
}

#[test]
fn read_format_capacities_honours_allocation_length() {
    assert_eq!(data(floppy().handle(&packet("23 00 00 00 00 00 00 00 04"))), hex("00000008"));
    assert_eq!(floppy().handle(&packet("23")), Response::Good);
}

// ---------------------------------------------------------------------------------------------
// Simple status commands

#[test]
fn test_unit_ready_start_stop_prevent_allow() {
    for target in [&mut cd(), &mut floppy()] {
        assert_eq!(target.handle(&packet("00")), Response::Good);
        assert_eq!(target.handle(&packet("1b 00 00 00 01")), Response::Good); // START
        assert_eq!(target.handle(&packet("1b 00 00 00 02")), Response::Good); // LoEj: ignored
        assert_eq!(target.handle(&packet("1e 00 00 00 01")), Response::Good); // PREVENT
        assert_eq!(target.handle(&packet("1e")), Response::Good); // ALLOW
    }
}

#[test]
fn no_medium_is_not_ready() {
    let mut target = Target::new(DeviceKind::CdRom, 0);
    assert_eq!(check(target.handle(&packet("00"))), Sense::MEDIUM_NOT_PRESENT);
    assert_eq!(check(target.handle(&packet("25"))), Sense::MEDIUM_NOT_PRESENT);
    assert_eq!(check(target.handle(&packet("28 00 00000000 00 0001"))), Sense::MEDIUM_NOT_PRESENT);
    assert_eq!(check(target.handle(&packet("43 00 00 00 00 00 00 0014"))), Sense::MEDIUM_NOT_PRESENT);
    assert_eq!(Sense::MEDIUM_NOT_PRESENT, Sense { key: SenseKey::NotReady, asc: 0x3A, ascq: 0 });
    // INQUIRY still answers.
    assert_eq!(data(target.handle(&packet("12 00 00 00 24")))[0], 0x05);
}

#[test]
fn unknown_opcodes_are_invalid() {
    // READ(6), READ DISC INFORMATION, MODE SELECT(10), a vendor code.
    for opcode in ["08", "51", "55", "ff"] {
        let sense = check(cd().handle(&packet(opcode)));
        assert_eq!(sense, Sense { key: SenseKey::IllegalRequest, asc: 0x20, ascq: 0x00 });
    }
}

#[test]
fn opcodes_round_trip() {
    let known: Vec<u8> = (0..=u8::MAX).filter(|&code| Opcode::from_u8(code).is_some()).collect();
    for &code in &known {
        assert_eq!(Opcode::from_u8(code).map(|opcode| opcode as u8), Some(code));
    }
    assert_eq!(known.len(), 17);
}

#[test]
fn writes_are_write_protected() {
    for opcode in ["2a", "2e", "aa"] {
        assert_eq!(check(floppy().handle(&packet(opcode))), Sense { key: SenseKey::DataProtect, asc: 0x27, ascq: 0 });
    }
}

#[test]
fn mmc_commands_are_invalid_on_the_floppy() {
    for cdb in ["43 00 00 00 00 00 00 0014", "46 00 0000 000000 0100", "4a 01 00 00 10 00 00 0008"] {
        assert_eq!(check(floppy().handle(&packet(cdb))), Sense::INVALID_OPCODE);
    }
}

// ---------------------------------------------------------------------------------------------
// INQUIRY

#[test]
fn inquiry_cd() {
    // Byte 0: qualifier 0, type 0x05 (CD/DVD). Byte 1: RMB. Byte 2: version 5 (SPC-3). Byte 3:
    // response data format 2. Byte 4: additional length 31. Bytes 5..7: no flags. Then vendor (8),
    // product (16) and revision (4), ASCII.
    let expected = [&hex("05 80 05 02 1f 00 00 00")[..], b"TETHER  IDE-R CDROM     1.0 "].concat();
    assert_eq!(data(cd().handle(&packet("12 00 00 00 24"))), expected);
    assert_eq!(expected.len(), 36);
}

#[test]
fn inquiry_floppy() {
    // Type 0x00 (direct access) with RMB set.
    let expected = [&hex("00 80 05 02 1f 00 00 00")[..], b"TETHER  IDE-R FLOPPY    1.0 "].concat();
    assert_eq!(data(floppy().handle(&packet("12 00 00 00 24"))), expected);
}

#[test]
fn inquiry_honours_allocation_length() {
    // SPC-3: allocation length in bytes 3..4. 5 bytes is the header up to ADDITIONAL LENGTH.
    assert_eq!(data(cd().handle(&packet("12 00 00 00 05"))), hex("05 80 05 02 1f"));
    // More than there is: the 36 bytes.
    assert_eq!(data(cd().handle(&packet("12 00 00 01 00"))).len(), 36);
    assert_eq!(cd().handle(&packet("12")), Response::Good);
}

#[test]
fn inquiry_vital_product_data_is_not_supported() {
    assert_eq!(check(cd().handle(&packet("12 01 00 00 ff"))), Sense::INVALID_FIELD_IN_CDB);
    assert_eq!(check(cd().handle(&packet("12 00 80 00 ff"))), Sense::INVALID_FIELD_IN_CDB);
}

// ---------------------------------------------------------------------------------------------
// REQUEST SENSE

#[test]
fn request_sense_reports_the_last_error_and_clears_it() {
    let mut target = cd();
    assert_eq!(check(target.handle(&packet("ff"))), Sense::INVALID_OPCODE);
    assert_eq!(target.sense(), Sense::INVALID_OPCODE);
    // Fixed format: response code 0x70, sense key in byte 2, additional length 10, ASC/ASCQ in
    // bytes 12..13.
    assert_eq!(data(target.handle(&packet("03 00 00 00 12"))), hex("70 00 05 00000000 0a 00000000 20 00 00 000000"));
    assert_eq!(target.sense(), Sense::NONE);
    assert_eq!(data(target.handle(&packet("03 00 00 00 12"))), hex("70 00 00 00000000 0a 00000000 00 00 00 000000"));
}

#[test]
fn request_sense_after_an_out_of_range_read() {
    let mut target = floppy();
    // LBA 2880 is one past the last.
    assert_eq!(check(target.handle(&packet("28 00 00000b40 00 0001"))), Sense::LBA_OUT_OF_RANGE);
    assert_eq!(data(target.handle(&packet("03 00 00 00 12"))), hex("70 00 05 00000000 0a 00000000 21 00 00 000000"));
}

#[test]
fn request_sense_honours_allocation_length() {
    let mut target = cd();
    target.handle(&packet("ff"));
    assert_eq!(data(target.handle(&packet("03 00 00 00 03"))), hex("70 00 05"));
    // Reading it (even truncated) clears it.
    assert_eq!(target.sense(), Sense::NONE);
    // Allocation length 0: nothing to send.
    target.handle(&packet("ff"));
    assert_eq!(target.handle(&packet("03")), Response::Good);
}

#[test]
fn a_later_command_replaces_the_sense() {
    let mut target = cd();
    target.handle(&packet("ff"));
    assert_eq!(target.handle(&packet("00")), Response::Good);
    assert_eq!(target.sense(), Sense::NONE);
}

#[test]
fn a_failed_image_read_is_a_medium_error() {
    let mut target = cd();
    assert!(matches!(target.handle(&packet("28 00 00000010 00 0001")), Response::Read { .. }));
    assert_eq!(target.read_failed(), Sense { key: SenseKey::MediumError, asc: 0x11, ascq: 0 });
    assert_eq!(data(target.handle(&packet("03 00 00 00 12"))), hex("70 00 03 00000000 0a 00000000 11 00 00 000000"));
}

// ---------------------------------------------------------------------------------------------
// READ(10) and READ(12)

#[test]
fn read10_and_read12_agree() {
    let mut target = cd();
    // LBA 16 (the ISO 9660 volume descriptors), 4 blocks.
    let ten = target.handle(&packet("28 00 00000010 00 0004"));
    let twelve = target.handle(&packet("a8 00 00000010 00000004"));
    assert_eq!(ten, Response::Read { offset: 16 * 2048, len: 4 * 2048 });
    assert_eq!(ten, twelve);
}

#[test]
fn read_floppy_boot_sector() {
    assert_eq!(floppy().handle(&packet("28 00 00000000 00 0001")), Response::Read { offset: 0, len: 512 });
}

#[test]
fn read_up_to_the_last_block() {
    assert_eq!(cd().handle(&packet("28 00 00007ffe 00 0002")), Response::Read { offset: 32766 * 2048, len: 4096 });
    assert_eq!(
        floppy().handle(&packet("a8 00 00000000 00000b40")),
        Response::Read { offset: 0, len: FLOPPY_144 as u32 }
    );
}

#[test]
fn reads_beyond_the_medium_are_out_of_range() {
    let mut target = cd();
    // One block past the end; a range straddling the end; an LBA past the end with length 0.
    assert_eq!(check(target.handle(&packet("28 00 00008000 00 0001"))), Sense::LBA_OUT_OF_RANGE);
    assert_eq!(check(target.handle(&packet("28 00 00007fff 00 0002"))), Sense::LBA_OUT_OF_RANGE);
    assert_eq!(check(target.handle(&packet("a8 00 ffffffff ffffffff"))), Sense::LBA_OUT_OF_RANGE);
    assert_eq!(check(target.handle(&packet("28 00 00008000 00 0000"))), Sense::LBA_OUT_OF_RANGE);
}

#[test]
fn zero_length_read_is_good() {
    assert_eq!(cd().handle(&packet("28 00 00000010 00 0000")), Response::Good);
    assert_eq!(cd().handle(&packet("a8 00 00000000 00000000")), Response::Good);
}

#[test]
fn read_of_a_partial_last_block() {
    // 3000 bytes: block 1 holds 952 bytes of image and 1096 bytes of padding.
    let mut target = Target::new(DeviceKind::CdRom, 3000);
    assert_eq!(target.handle(&packet("28 00 00000001 00 0001")), Response::Read { offset: 2048, len: 2048 });
    assert_eq!(target.bytes_in_image(2048, 2048), 952);
    assert_eq!(target.bytes_in_image(0, 4096), 3000);
    assert_eq!(target.bytes_in_image(0, 2048), 2048);
    assert_eq!(target.bytes_in_image(4096, 2048), 0);
}

#[test]
fn read12_of_4_gib_is_refused() {
    // 2^21 CD blocks are 4 GiB, one byte more than a u32 length holds.
    let mut target = Target::new(DeviceKind::CdRom, 8 << 30);
    assert_eq!(check(target.handle(&packet("a8 00 00000000 00200000"))), Sense::INVALID_FIELD_IN_CDB);
    assert_eq!(target.handle(&packet("a8 00 00000000 001fffff")), Response::Read { offset: 0, len: 0x1f_ffff * 2048 });
}

// ---------------------------------------------------------------------------------------------
// MODE SENSE

/// Page 0x2A (MMC-2 layout): page length 0x14; bytes 2..5 no optional read/write/audio
/// abilities; byte 6 0x29 = tray (001b << 5), eject (bit 3), lock (bit 0); bytes 8..9 maximum
/// read speed 2816 kB/s (0x0B00); bytes 14..15 current read speed, the same; everything else 0.
const PAGE_2A: &str = "2a 14 00 00 00 00 29 00 0b00 0000 0000 0b00 00 00 0000 0000";
/// Page 0x01 (read-write error recovery): page length 0x0A, all parameters 0.
const PAGE_01: &str = "01 0a 00 00 00 00 00 00 00 00 00 00";
/// Page 0x05 (flexible disk) for 1.44 MB: page length 0x1E; transfer rate 500 kbit/s (0x01F4);
/// 2 heads; 18 (0x12) sectors per track; 512 (0x0200) bytes per sector; 80 (0x50) cylinders;
/// bytes 10..27 0; medium rotation rate 300 rpm (0x012C) at bytes 28..29; 2 reserved bytes.
const PAGE_05: &str = "05 1e 01f4 02 12 0200 0050 0000 0000 0000 00 0000 00 00 00 00 00 00 00 00 00 012c 0000";

#[test]
fn mode_sense10_cd_capabilities_page() {
    // Header (8 bytes): mode data length = 8 + 22 - 2 = 28 (0x1C), medium type 0,
    // device-specific 0, 2 reserved, block descriptor length 0.
    let expected = hex(&format!("001c 00 00 0000 0000 {PAGE_2A}"));
    assert_eq!(expected.len(), 30);
    assert_eq!(data(cd().handle(&packet("5a 00 2a 00 00 00 00 0100"))), expected);
}

#[test]
fn mode_sense10_all_pages_cd() {
    // 8 + 12 + 22 = 42 bytes, mode data length 40 (0x28); pages in ascending order.
    let expected = hex(&format!("0028 00 00 0000 0000 {PAGE_01} {PAGE_2A}"));
    assert_eq!(data(cd().handle(&packet("5a 00 3f 00 00 00 00 0100"))), expected);
    // Subpage 0xFF with page 0x3F is the same.
    assert_eq!(data(cd().handle(&packet("5a 00 3f ff 00 00 00 0100"))), expected);
}

#[test]
fn mode_sense10_floppy_flexible_disk_page() {
    // Header: mode data length 8 + 32 - 2 = 38 (0x26), device-specific 0x80 (WP).
    let expected = hex(&format!("0026 00 80 0000 0000 {PAGE_05}"));
    assert_eq!(expected.len(), 40);
    assert_eq!(data(floppy().handle(&packet("5a 00 05 00 00 00 00 0100"))), expected);
}

#[test]
fn mode_sense6_all_pages_floppy() {
    // Header (4 bytes): mode data length 4 + 12 + 32 - 1 = 47 (0x2F), medium type 0, WP, block
    // descriptor length 0.
    let expected = hex(&format!("2f 00 80 00 {PAGE_01} {PAGE_05}"));
    assert_eq!(data(floppy().handle(&packet("1a 00 3f 00 ff"))), expected);
}

#[test]
fn mode_sense6_cd_capabilities_page() {
    // Mode data length 4 + 22 - 1 = 25 (0x19).
    let expected = hex(&format!("19 00 00 00 {PAGE_2A}"));
    assert_eq!(data(cd().handle(&packet("1a 00 2a 00 ff"))), expected);
}

#[test]
fn mode_sense_unknown_page_is_header_only() {
    // Page 0x0D (CD parameters) is not implemented; page 0x05 is not a CD page; a subpage.
    assert_eq!(data(cd().handle(&packet("5a 00 0d 00 00 00 00 0100"))), hex("0006 00 00 0000 0000"));
    assert_eq!(data(cd().handle(&packet("5a 00 05 00 00 00 00 0100"))), hex("0006 00 00 0000 0000"));
    assert_eq!(data(cd().handle(&packet("1a 00 2a 01 ff"))), hex("03 00 00 00"));
    assert_eq!(data(floppy().handle(&packet("1a 00 2a 00 ff"))), hex("03 00 80 00"));
}

#[test]
fn mode_sense_changeable_values_are_zero() {
    // PC = 01b (changeable): the page headers stay, every parameter is 0.
    let expected = hex("001c 00 00 0000 0000 2a 14 00000000 00000000 00000000 00000000 00000000");
    assert_eq!(data(cd().handle(&packet("5a 00 6a 00 00 00 00 0100"))), expected);
}

#[test]
fn mode_sense_honours_allocation_length() {
    // MODE SENSE(10): bytes 7..8; MODE SENSE(6): byte 4.
    assert_eq!(data(cd().handle(&packet("5a 00 2a 00 00 00 00 0008"))), hex("001c 00 00 0000 0000"));
    assert_eq!(data(cd().handle(&packet("1a 00 2a 00 02"))), hex("19 00"));
    assert_eq!(cd().handle(&packet("1a 00 2a 00 00")), Response::Good);
}

// ---------------------------------------------------------------------------------------------
// READ TOC

#[test]
fn read_toc_format0_lba_of_a_64_mib_cd() {
    // Header: TOC data length 18 (0x12), first track 1, last track 1. Track 1: reserved, ADR 1 /
    // CONTROL 4 (0x14), track 1, reserved, LBA 0. Lead-out: track 0xAA at LBA 32768 (0x8000).
    let expected = hex("0012 01 01  00 14 01 00 00000000  00 14 aa 00 00008000");
    assert_eq!(data(cd().handle(&packet("43 00 00 00 00 00 00 0014"))), expected);
}

#[test]
fn read_toc_format0_msf_of_a_64_mib_cd() {
    // MSF: LBA + 150 frames, 75 frames a second. Track 1: 150 frames = 00:02:00. Lead-out:
    // 32918 frames = 7 min (31500), 18 s (1350), 68 frames = 00 07 12 44.
    let expected = hex("0012 01 01  00 14 01 00 00 00 02 00  00 14 aa 00 00 07 12 44");
    assert_eq!(data(cd().handle(&packet("43 02 00 00 00 00 00 0014"))), expected);
}

#[test]
fn read_toc_format0_from_the_lead_out() {
    // Starting track 0xAA: the lead-out alone, TOC data length 10.
    assert_eq!(data(cd().handle(&packet("43 00 00 00 00 00 aa 0014"))), hex("000a 01 01 00 14 aa 00 00008000"));
    // Starting track 2 does not exist.
    assert_eq!(check(cd().handle(&packet("43 00 00 00 00 00 02 0014"))), Sense::INVALID_FIELD_IN_CDB);
}

#[test]
fn read_toc_format1_session_info() {
    // TOC data length 10, first and last session 1, first track of the last session 1 at LBA 0.
    assert_eq!(data(cd().handle(&packet("43 00 01 00 00 00 00 000c"))), hex("000a 01 01 00 14 01 00 00000000"));
    assert_eq!(data(cd().handle(&packet("43 02 01 00 00 00 00 000c"))), hex("000a 01 01 00 14 01 00 00000200"));
}

#[test]
fn read_toc_old_format_field() {
    // SFF-8020: format in byte 9 bits 6..7 (0x40 = session info) when byte 2 says 0.
    assert_eq!(data(cd().handle(&packet("43 00 00 00 00 00 00 000c 40"))), hex("000a 01 01 00 14 01 00 00000000"));
}

#[test]
fn read_toc_other_formats_are_invalid() {
    assert_eq!(check(cd().handle(&packet("43 00 02 00 00 00 00 0100"))), Sense::INVALID_FIELD_IN_CDB);
}

#[test]
fn read_toc_honours_allocation_length() {
    // A BIOS often asks for the 4-byte header first.
    assert_eq!(data(cd().handle(&packet("43 00 00 00 00 00 00 0004"))), hex("0012 01 01"));
}

#[test]
fn msf_conversion() {
    assert_eq!(lba_to_msf(0), [0, 0, 2, 0]);
    assert_eq!(lba_to_msf(4350), [0, 1, 0, 0]); // 4500 frames
    assert_eq!(lba_to_msf(u64::MAX), [0, 255, 59, 74]);
    assert_eq!(lba_to_msf(256 * 4500), [0, 255, 59, 74]);
}

// ---------------------------------------------------------------------------------------------
// GET CONFIGURATION

/// Feature descriptors, each: feature code (BE u16), version << 2 | persistent << 1 | current,
/// additional length, data.
/// - 0x0000 profile list: version 0, persistent, current (0x03); one profile descriptor: 0x0008
///   CD-ROM, CurrentP set.
/// - 0x0001 core: version 1, persistent, current (0x07); physical interface 2 (ATAPI), DBE set.
/// - 0x0003 removable medium: 0x03; tray, eject, lock (0x29).
/// - 0x0010 random readable: current (0x01); block size 2048, blocking 1, PP 0.
/// - 0x001E CD read: current (0x01); no CD-Text, C2 or DAP.
const FEATURES: &str = "0000 03 04 0008 01 00
                        0001 07 08 00000002 01 000000
                        0003 03 04 29 000000
                        0010 01 08 00000800 0001 00 00
                        001e 01 04 00000000";

#[test]
fn get_configuration_all_features() {
    // Header: data length 8 + 12 + 8 + 12 + 8 + 4 = 52 (0x34, everything after the length
    // field), 2 reserved, current profile 0x0008.
    let expected = hex(&format!("00000034 0000 0008 {FEATURES}"));
    assert_eq!(expected.len(), 56);
    assert_eq!(data(cd().handle(&packet("46 00 0000 000000 0100"))), expected);
    // RT 1 (current only): all are current with a medium.
    assert_eq!(data(cd().handle(&packet("46 01 0000 000000 0100"))), expected);
}

#[test]
fn get_configuration_one_feature() {
    // RT 2, starting feature 0x0001: the core feature alone; data length 4 + 12 = 16.
    assert_eq!(
        data(cd().handle(&packet("46 02 0001 000000 0100"))),
        hex("00000010 0000 0008 0001 07 08 00000002 01 000000")
    );
    // RT 2 with a feature the target does not have: the header alone.
    assert_eq!(data(cd().handle(&packet("46 02 0002 000000 0100"))), hex("00000004 0000 0008"));
}

#[test]
fn get_configuration_from_a_starting_feature() {
    // RT 0 from 0x0010: random readable and CD read; data length 4 + 12 + 8 = 24.
    assert_eq!(
        data(cd().handle(&packet("46 00 0010 000000 0100"))),
        hex("00000018 0000 0008 0010 01 08 00000800 0001 00 00 001e 01 04 00000000")
    );
}

#[test]
fn get_configuration_without_medium() {
    // Current profile 0, CurrentP clear; RT 1 leaves out random readable and CD read. Data
    // length 4 + 8 + 12 + 8 = 32 (0x20).
    let expected = hex("00000020 0000 0000
         0000 03 04 0008 00 00
         0001 07 08 00000002 01 000000
         0003 03 04 29 000000");
    assert_eq!(data(Target::new(DeviceKind::CdRom, 0).handle(&packet("46 01 0000 000000 0100"))), expected);
}

#[test]
fn get_configuration_honours_allocation_length() {
    // The header alone, as a BIOS asks first.
    assert_eq!(data(cd().handle(&packet("46 00 0000 000000 0008"))), hex("00000034 0000 0008"));
}

#[test]
fn get_configuration_reserved_rt_is_invalid() {
    assert_eq!(check(cd().handle(&packet("46 03 0000 000000 0100"))), Sense::INVALID_FIELD_IN_CDB);
}

// ---------------------------------------------------------------------------------------------
// GET EVENT STATUS NOTIFICATION

#[test]
fn get_event_status_media_class() {
    // Header: event data length 6, NEA 0 and class 4 (media), supported classes 0x10 (media).
    // Media event: code 0 (no change), status 0x02 (media present, tray closed), slots 0.
    assert_eq!(data(cd().handle(&packet("4a 01 00 00 10 00 00 0008"))), hex("0006 04 10 00 02 00 00"));
    // No medium: status 0.
    assert_eq!(
        data(Target::new(DeviceKind::CdRom, 0).handle(&packet("4a 01 00 00 10 00 00 0008"))),
        hex("0006 04 10 00 00 00 00")
    );
}

#[test]
fn get_event_status_other_classes() {
    // Operational change (0x04) only: no event available (NEA), length 2, supported 0x10.
    assert_eq!(data(cd().handle(&packet("4a 01 00 00 04 00 00 0008"))), hex("0002 80 10"));
}

#[test]
fn get_event_status_requires_polling() {
    assert_eq!(check(cd().handle(&packet("4a 00 00 00 10 00 00 0008"))), Sense::INVALID_FIELD_IN_CDB);
}

#[test]
fn get_event_status_honours_allocation_length() {
    assert_eq!(data(cd().handle(&packet("4a 01 00 00 10 00 00 0004"))), hex("0006 04 10"));
}

// ---------------------------------------------------------------------------------------------
// A BIOS's sequence

#[test]
fn bios_cd_boot_sequence() {
    let mut target = cd();
    for cdb in [
        "00",                        // TEST UNIT READY
        "12 00 00 00 24",            // INQUIRY
        "5a 00 2a 00 00 00 00 0080", // MODE SENSE(10), capabilities
        "46 00 0000 000000 0008",    // GET CONFIGURATION, header
        "4a 01 00 00 10 00 00 0008", // GET EVENT STATUS NOTIFICATION
        "25",                        // READ CAPACITY
        "43 00 00 00 00 00 00 0014", // READ TOC
    ] {
        let response = target.handle(&packet(cdb));
        assert!(!matches!(response, Response::CheckCondition(_)), "{cdb}: {response:?}");
    }
    // The El Torito boot record volume descriptor at LBA 17.
    assert_eq!(target.handle(&packet("28 00 00000011 00 0001")), Response::Read { offset: 17 * 2048, len: 2048 });
}

// ---------------------------------------------------------------------------------------------
// Properties

fn any_target() -> impl Strategy<Value = Target> {
    let kind = prop_oneof![Just(DeviceKind::CdRom), Just(DeviceKind::Floppy)];
    let len = prop_oneof![
        Just(0u64),
        Just(FLOPPY_144),
        Just(CD_64_MIB),
        0u64..1 << 20,
        // Up to 4 PiB: past what READ(12) can address, without overflowing the checks below.
        0u64..1 << 52,
    ];
    (kind, len).prop_map(|(kind, len)| Target::new(kind, len))
}

/// Packets that are mostly reads, so ranges come up, plus arbitrary bytes.
fn any_packet() -> impl Strategy<Value = [u8; 12]> {
    prop_oneof![
        any::<[u8; 12]>(),
        (prop_oneof![Just(0x28u8), Just(0xA8u8)], any::<[u8; 11]>()).prop_map(|(opcode, rest)| {
            let mut packet = [opcode; 12];
            packet[1..].copy_from_slice(&rest);
            packet
        }),
        // Small LBAs and counts, which land inside small images.
        (prop_oneof![Just(0x28u8), Just(0xA8u8)], 0u32..4096, 0u16..64).prop_map(|(opcode, lba, count)| {
            let mut packet = [0u8; 12];
            packet[0] = opcode;
            packet[2..6].copy_from_slice(&lba.to_be_bytes());
            if opcode == 0x28 {
                packet[7..9].copy_from_slice(&count.to_be_bytes());
            } else {
                packet[8..10].copy_from_slice(&count.to_be_bytes());
            }
            packet
        }),
    ]
}

proptest! {
    #[test]
    fn any_packet_gets_an_answer(mut target in any_target(), packets in proptest::collection::vec(any_packet(), 1..8)) {
        for packet in &packets {
            let response = target.handle(packet);
            match &response {
                Response::CheckCondition(sense) => prop_assert_eq!(target.sense(), *sense),
                Response::Data(data) => prop_assert!(!data.is_empty()),
                Response::Good | Response::Read { .. } => {}
            }
            if packet[0] != 0x03 && !matches!(response, Response::CheckCondition(_)) {
                prop_assert_eq!(target.sense(), Sense::NONE);
            }
        }
    }

    #[test]
    fn reads_stay_inside_the_image(target in any_target(), packet in any_packet()) {
        let mut target = target;
        if let Response::Read { offset, len } = target.handle(&packet) {
            let block = u64::from(target.block_size());
            prop_assert!(len > 0);
            prop_assert_eq!(offset % block, 0);
            prop_assert_eq!(u64::from(len) % block, 0);
            // Inside the medium's blocks; past the image only within the last, partial block.
            prop_assert!(offset + u64::from(len) <= target.block_count() * block);
            prop_assert!(offset < target.image_len());
            prop_assert!(offset + u64::from(len) < target.image_len() + block);
            let in_image = target.bytes_in_image(offset, len);
            prop_assert_eq!(u64::from(in_image), (offset + u64::from(len)).min(target.image_len()) - offset);
        }
    }
}
