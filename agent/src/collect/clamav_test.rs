use std::fs;

use super::*;

/// A daily.cld header as freshclam leaves it after incremental updates (padded to 512 bytes).
fn header(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(512, b' ');
    bytes.extend_from_slice(b"\x1f\x8b binary database follows");
    bytes
}

#[test]
fn database_header_build_time() {
    let cld = header("ClamAV-VDB:14 Nov 2026 08-29 +0000:27456:2070000:90:X:X:raynman:1794644940");
    assert_eq!(database_built_at(&cld), Some(1_794_644_940));
    let offset = header("ClamAV-VDB:14 Nov 2026 08-29 -0530:27456:2070000:90:X:X:raynman:0");
    assert_eq!(database_built_at(&offset), Some(1_794_664_740));
    let single_digit_day = header("ClamAV-VDB:4 Nov 2026 08-29 +0000:1:2:90");
    assert_eq!(database_built_at(&single_digit_day), Some(1_794_644_940 - 10 * 86_400));
}

#[test]
fn bad_database_headers_give_no_date() {
    for bad in [
        &b""[..],
        b"ClamAV-VDB:",
        b"ClamAV-VDB:32 Nov 2026 08-29 +0000:1",
        b"ClamAV-VDB:14 Foo 2026 08-29 +0000:1",
        b"ClamAV-VDB:14 Nov 2026 25-29 +0000:1",
        b"ClamAV-VDB:14 Nov 2026 08-29 +99999:1",
        b"ClamAV-VDB:14 Nov 2026 08-29 \xc3+000:1",
        b"\xff\xfe garbage",
        b"NotClamAV:14 Nov 2026 08-29 +0000:1",
    ] {
        assert_eq!(database_built_at(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

const SEPARATOR: &str = "-------------------------------------------------------------------------------";

/// Two runs of `clamscan -r --remove --log=…`: a clean one, then one that found two threats and
/// removed one.
fn two_scans() -> String {
    format!(
        "
{SEPARATOR}

----------- SCAN SUMMARY -----------
Known viruses: 8693276
Engine version: 1.0.7
Scanned directories: 120
Scanned files: 2210
Infected files: 0
Data scanned: 310.52 MB
Data read: 170.20 MB (ratio 1.82:1)
Time: 95.221 sec (1 m 35 s)
Start Date: 2026:11:29 00:58:25
End Date:   2026:11:29 01:00:00

{SEPARATOR}

/home/ana/Downloads/eicar.com: Win.Test.EICAR_HDB-1 FOUND
/home/ana/Downloads/eicar.com: Removed.
/home/ana/mail/attachment.zip: Win.Test.EICAR_HDB-1 FOUND

----------- SCAN SUMMARY -----------
Known viruses: 8693276
Engine version: 1.0.7
Scanned directories: 121
Scanned files: 2213
Infected files: 2
Data scanned: 310.60 MB
Data read: 170.21 MB (ratio 1.82:1)
Time: 100.002 sec (1 m 40 s)
Start Date: 2026:11:30 02:12:27
End Date:   2026:11:30 02:14:07
"
    )
}

#[test]
fn last_summary_wins() {
    assert_eq!(
        parse_scan_log(&two_scans()),
        Some(Scan { finished_at: 1_796_004_847, threats_found: 2, threats_cleaned: 1 })
    );
}

#[test]
fn clean_scan() {
    let text = two_scans();
    let first = &text[..text.rfind(SEPARATOR).unwrap()];
    assert_eq!(parse_scan_log(first), Some(Scan { finished_at: 1_795_914_000, threats_found: 0, threats_cleaned: 0 }));
}

#[test]
fn moved_files_count_as_cleaned() {
    let text = format!(
        "{SEPARATOR}\n\n/tmp/a: Eicar-Signature FOUND\n/tmp/a: moved to '/var/quarantine/a'\n\
         /tmp/b: Eicar-Signature FOUND\n/tmp/b: moved to '/var/quarantine/b'\n\n\
         ----------- SCAN SUMMARY -----------\nInfected files: 2\nEnd Date:   2026:11:30 02:14:07\n"
    );
    assert_eq!(parse_scan_log(&text).map(|s| (s.threats_found, s.threats_cleaned)), Some((2, 2)));
}

#[test]
fn incomplete_summaries_are_not_scans() {
    assert_eq!(parse_scan_log(""), None);
    assert_eq!(parse_scan_log("/tmp/a: OK\n"), None);
    // Cut off before the end date: the earlier complete scan stands.
    let text = two_scans();
    let cut = &text[..text.rfind("End Date:").unwrap()];
    assert_eq!(parse_scan_log(cut).map(|s| s.finished_at), Some(1_795_914_000));
    assert_eq!(
        parse_scan_log("----------- SCAN SUMMARY -----------\nInfected files: x\nEnd Date: 2026:11:30 02:14:07\n"),
        None
    );
    assert_eq!(
        parse_scan_log("----------- SCAN SUMMARY -----------\nInfected files: 0\nEnd Date: 2026:13:30 02:14:07\n"),
        None
    );
}

#[test]
fn clamscan_dates() {
    assert_eq!(parse_clamscan_date("2026:11:30 02:14:07"), Some(1_796_004_847));
    for bad in
        ["", "2026:11:30", "2026-11-30 02:14:07", "2026:11:30 02:14", "2026:11:30:1 02:14:07", "2026:02:30 00:00:00"]
    {
        assert_eq!(parse_clamscan_date(bad), None, "{bad}");
    }
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn paths(root: &Path) -> ClamavPaths<'_> {
    ClamavPaths {
        root,
        clamd: Path::new("/usr/sbin/clamd"),
        freshclam: Path::new("/usr/bin/freshclam"),
        proc_dir: Path::new("/proc"),
        database_dir: Path::new("/var/lib/clamav"),
    }
}

#[test]
fn not_installed_is_unknown() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(antivirus(&paths(root.path())), Reading::unknown("ClamAV is not installed"));
}

#[test]
fn installed_running_with_signatures() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write(&r.join("usr/sbin/clamd"), b"");
    write(&r.join("usr/bin/freshclam"), b"");
    write(&r.join("proc/1/comm"), b"systemd\n");
    write(&r.join("proc/812/comm"), b"clamd\n");
    write(&r.join("proc/self/comm"), b"freshclam\n"); // not a PID: ignored
    fs::create_dir_all(r.join("proc/999")).unwrap(); // exited between listing and reading
    let newer = header("ClamAV-VDB:14 Nov 2026 08-29 +0000:27456:2070000:90:X:X:raynman:0");
    let older = header("ClamAV-VDB:13 Nov 2026 08-29 +0000:27455:2069990:90:X:X:raynman:0");
    write(&r.join("var/lib/clamav/daily.cld"), &newer);
    write(&r.join("var/lib/clamav/daily.cvd"), &older);
    assert_eq!(
        antivirus(&paths(r)),
        Reading::Value(Antivirus {
            product: "ClamAV".into(),
            running: true,
            updater_running: false,
            signatures_at: Some(1_794_644_940),
        })
    );

    // No database yet: the date is not known, the rest is.
    fs::remove_dir_all(r.join("var/lib/clamav")).unwrap();
    write(&r.join("proc/813/comm"), b"freshclam\n");
    let reading = antivirus(&paths(r));
    let av = reading.value().unwrap();
    assert!(av.running && av.updater_running);
    assert_eq!(av.signatures_at, None);
}

#[test]
fn unreadable_proc_is_unknown() {
    let root = tempfile::tempdir().unwrap();
    write(&root.path().join("usr/bin/freshclam"), b"");
    assert_eq!(antivirus(&paths(root.path())), Reading::unknown("/proc: no such file"));
}

#[test]
fn scan_log_from_a_file() {
    let root = tempfile::tempdir().unwrap();
    let log = Path::new("/var/log/clamav/clamscan.log");
    assert_eq!(last_scan(root.path(), log), Reading::unknown("/var/log/clamav/clamscan.log: no such file"));
    write(&under_root(root.path(), log), b"ClamAV update process started\n");
    assert_eq!(
        last_scan(root.path(), log),
        Reading::unknown("/var/log/clamav/clamscan.log: no completed scan summary")
    );
    write(&under_root(root.path(), log), two_scans().as_bytes());
    assert_eq!(last_scan(root.path(), log).value().map(|s| s.threats_found), Some(2));
}
