//! The tap on recorded exchanges (redirection.md §2.1), cut at every byte; refusals, failed
//! logins, garbage and TLS; and the gateway's side: rows, metrics and the SOL transcript.

use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

/// What a test sink saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    kind: Option<RedirKind>,
    accepted: bool,
    user: Option<String>,
    authenticated: bool,
    sol_running: bool,
    ended: Vec<RedirOutcome>,
    unparsed: bool,
    errors: Vec<String>,
    sol_in: Vec<u8>,
    sol_out: Vec<u8>,
    to_device: usize,
    from_device: usize,
}

impl TapSink for Seen {
    fn event(&mut self, event: TapEvent<'_>) {
        match event {
            TapEvent::Started(kind) => {
                assert!(self.kind.is_none(), "started twice");
                self.kind = Some(kind);
            }
            TapEvent::Accepted => self.accepted = true,
            TapEvent::Unparsed => self.unparsed = true,
            TapEvent::DeviceUser(user) => self.user = Some(user.to_string()),
            TapEvent::Authenticated => self.authenticated = true,
            TapEvent::SolRunning => self.sol_running = true,
            TapEvent::Ended(outcome) => self.ended.push(outcome),
            TapEvent::Error(err) => self.errors.push(err.to_string()),
            TapEvent::SolData { from: Sender::Console, data } => self.sol_in.extend_from_slice(data),
            TapEvent::SolData { from: Sender::Device, data } => self.sol_out.extend_from_slice(data),
        }
    }

    fn bytes(&mut self, from: Sender, n: usize) {
        match from {
            Sender::Console => self.to_device += n,
            Sender::Device => self.from_device += n,
        }
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

const C: Sender = Sender::Console;
const D: Sender = Sender::Device;

/// Debian amtterm 1.4 against the simulator, message by message (redirection.md §2.1).
fn amtterm_exchange() -> Vec<(Sender, Vec<u8>)> {
    let start_sol = [0x20, 0, 0, 0, 0, 0, 0, 0, 0xe8, 0x03, 0x64, 0, 0, 0, 0x10, 0x27, 0, 0, 0x88, 0x13, 0, 0, 0, 0];
    vec![
        (C, b"\x10\x00\x00\x00SOL ".to_vec()),
        (D, vec![0x11, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        (C, cat(&[&[0x13, 0, 0, 0, 1, 0x0f, 0, 0, 0, 5], b"admin", &[8], b"P@ssw0rd"])),
        (D, vec![0x14, 0, 0, 0, 1, 0, 0, 0, 0]),
        (C, start_sol.to_vec()),
        (D, cat(&[&[0x21], &start_sol[1..23]])),
        (D, vec![0x29, 0, 0, 0, 1, 0, 0, 0, 3, 4]),
        (D, cat(&[&[0x2a, 0, 0, 0, 2, 0, 0, 0, 0x10, 0], b"Simulated BIOS> "])),
        (D, vec![0x2b, 0, 0, 0, 3, 0, 0, 0]),
        (C, vec![0x2b, 0, 0, 0, 3, 0, 0, 0]),
        (C, vec![0x28, 0, 0, 0, 0, 0, 0, 0, 3, 0, b'h', b'i', b'\r']),
        (C, vec![0x22, 0, 0, 0, 0, 0, 0, 0]),
        (D, vec![0x23, 0, 0, 0, 0, 0, 0, 0]),
        (C, vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x1d, 0x12, 0, 0, 0]),
    ]
}

fn total(exchange: &[(Sender, Vec<u8>)], side: Sender) -> usize {
    exchange.iter().filter(|(from, _)| *from == side).map(|(_, b)| b.len()).sum()
}

/// Feeds each message in pieces cut at the given points.
fn feed_cut(exchange: &[(Sender, Vec<u8>)], cut: impl Fn(usize) -> Vec<usize>) -> Seen {
    let mut tap = Tap::new(Seen::default());
    for (from, bytes) in exchange {
        let mut at = 0;
        for end in cut(bytes.len()).into_iter().chain([bytes.len()]) {
            let end = end.clamp(at, bytes.len());
            match from {
                Sender::Console => tap.from_console(&bytes[at..end]),
                Sender::Device => tap.from_device(&bytes[at..end]),
            }
            at = end;
        }
    }
    tap.into_sink()
}

fn assert_amtterm_session(seen: &Seen, exchange: &[(Sender, Vec<u8>)]) {
    assert_eq!(seen.kind, Some(RedirKind::Sol));
    assert_eq!(seen.user.as_deref(), Some("admin"));
    assert!(seen.accepted && seen.authenticated && seen.sol_running, "{seen:?}");
    assert_eq!(seen.ended, [RedirOutcome::Ended]);
    assert!(seen.errors.is_empty() && !seen.unparsed, "{seen:?}");
    assert_eq!(seen.sol_in, b"hi\r\x1d");
    assert_eq!(seen.sol_out, b"Simulated BIOS> ");
    assert_eq!((seen.to_device, seen.from_device), (total(exchange, C), total(exchange, D)));
}

#[test]
fn the_amtterm_session_is_read_with_every_message_cut_at_every_byte() {
    let exchange = amtterm_exchange();
    let longest = exchange.iter().map(|(_, b)| b.len()).max().unwrap();
    for at in 0..=longest {
        let seen = feed_cut(&exchange, |_| vec![at]);
        assert_amtterm_session(&seen, &exchange);
    }
    // One byte at a time.
    let seen = feed_cut(&exchange, |len| (1..len).collect());
    assert_amtterm_session(&seen, &exchange);
}

#[test]
fn each_direction_as_one_stream_cut_at_every_byte_reads_the_same() {
    let exchange = amtterm_exchange();
    let console: Vec<u8> = exchange.iter().filter(|(f, _)| *f == C).flat_map(|(_, b)| b.clone()).collect();
    let device: Vec<u8> = exchange.iter().filter(|(f, _)| *f == D).flat_map(|(_, b)| b.clone()).collect();
    for at in 0..=console.len().max(device.len()) {
        let mut tap = Tap::new(Seen::default());
        let (c, d) = (at.min(console.len()), at.min(device.len()));
        tap.from_console(&console[..c]);
        tap.from_device(&device[..d]);
        tap.from_console(&console[c..]);
        tap.from_device(&device[d..]);
        let seen = tap.into_sink();
        assert_eq!(seen.kind, Some(RedirKind::Sol), "cut at {at}");
        assert_eq!(seen.user.as_deref(), Some("admin"), "cut at {at}");
        assert_eq!(seen.ended, [RedirOutcome::Ended], "cut at {at}");
        assert_eq!((seen.sol_in.as_slice(), seen.sol_out.as_slice()), (&b"hi\r\x1d"[..], &b"Simulated BIOS> "[..]));
        assert!(seen.errors.is_empty(), "cut at {at}: {:?}", seen.errors);
    }
}

#[test]
fn a_wrong_password_ends_the_session_as_auth_failed() {
    let exchange = vec![
        (C, b"\x10\x00\x00\x00SOL ".to_vec()),
        (D, vec![0x11, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        (C, cat(&[&[0x13, 0, 0, 0, 1, 0x0b, 0, 0, 0, 5], b"admin", &[4], b"nope"])),
        (D, vec![0x14, 1, 0, 0, 1, 0, 0, 0, 0]),
    ];
    let seen = feed_cut(&exchange, |_| vec![]);
    assert_eq!(seen.kind, Some(RedirKind::Sol));
    assert_eq!(seen.user.as_deref(), Some("admin"));
    assert!(!seen.authenticated);
    assert_eq!(seen.ended, [RedirOutcome::AuthFailed]);
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
}

#[test]
fn a_digest_challenge_is_not_a_failure_and_the_username_is_read() {
    let uri = b"/RedirectionService";
    let exchange = vec![
        (C, b"\x10\x00\x00\x00IDER".to_vec()),
        (D, vec![0x11, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        (C, vec![0x13, 0, 0, 0, 0, 0, 0, 0, 0]),
        (D, vec![0x14, 0, 0, 0, 0, 3, 0, 0, 0, 1, 3, 4]),
        (C, cat(&[&[0x13, 0, 0, 0, 4, 32, 0, 0, 0, 5], b"admin", &[0, 0, 19], uri, &[0, 0, 0, 0]])),
        (D, cat(&[&[0x14, 1, 0, 0, 4, 12, 0, 0, 0, 4], b"real", &[1], b"n", &[4], b"auth"])),
        (D, vec![0x14, 0, 0, 0, 4, 0, 0, 0, 0]),
        (C, vec![0x42, 0, 0, 0, 1, 0, 0, 0]),
        (D, vec![0x43, 0, 0, 0, 1, 0, 0, 0]),
    ];
    let seen = feed_cut(&exchange, |len| vec![len / 2]);
    assert_eq!(seen.kind, Some(RedirKind::Ider));
    assert_eq!(seen.user.as_deref(), Some("admin"));
    assert!(seen.authenticated);
    assert_eq!(seen.ended, [RedirOutcome::Ended]);
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
}

#[test]
fn a_device_that_has_a_session_already_refuses_it_and_the_tap_says_so() {
    let exchange = vec![(C, b"\x10\x00\x00\x00SOL ".to_vec()), (D, vec![0x11, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])];
    let seen = feed_cut(&exchange, |_| vec![]);
    assert_eq!((seen.kind, seen.ended.as_slice()), (Some(RedirKind::Sol), &[RedirOutcome::RefusedInUse][..]));
    assert!(!seen.accepted);
}

#[test]
fn garbage_stops_the_tap_with_an_error_and_nothing_else() {
    let mut tap = Tap::new(Seen::default());
    tap.from_console(b"\x10\x00\x00\x00SOL ");
    tap.from_device(&[0x99, 1, 2, 3]);
    assert!(!tap.parsing());
    tap.from_device(&[0x11; 100]);
    tap.from_console(&[0xff; 100]);
    let seen = tap.into_sink();
    assert_eq!(seen.errors.len(), 1, "{:?}", seen.errors);
    assert!(seen.errors[0].contains("0x99"), "{:?}", seen.errors);
    assert_eq!((seen.to_device, seen.from_device), (108, 104));
    assert!(seen.ended.is_empty());

    // An unknown session tag, and a length over the limit.
    let mut tap = Tap::new(Seen::default());
    tap.from_console(b"\x10\x00\x00\x00XXXX");
    assert_eq!(tap.sink().errors.len(), 1);
    let mut tap = Tap::new(Seen::default());
    tap.from_console(&[0x10, 0, 0, 0, b'S', b'O', b'L', b' ', 0x13, 0, 0, 0, 1, 0xff, 0xff, 0, 0]);
    assert!(tap.sink().errors[0].contains("over the limit"), "{:?}", tap.sink().errors);
}

#[test]
fn tls_on_16995_is_unparsed_without_an_error() {
    let mut tap = Tap::new(Seen::default());
    // A TLS ClientHello record header, then anything.
    tap.from_console(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]);
    tap.from_device(&[0x16, 0x03, 0x03, 0x00, 0x7a]);
    tap.from_console(&[0x10, 0, 0, 0, b'S', b'O', b'L', b' ']);
    let seen = tap.into_sink();
    assert!(seen.unparsed && seen.errors.is_empty() && seen.kind.is_none(), "{seen:?}");
    assert_eq!((seen.to_device, seen.from_device), (17, 5));
}

#[test]
fn kvm_is_read_until_its_authentication_then_left_alone() {
    let mut tap = Tap::new(Seen::default());
    tap.from_console(&[0x10, 1, 0, 0, b'K', b'V', b'M', b'R']);
    tap.from_device(&[0x11, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    // The answer to a query (status 0) is no verdict: the tap reads on.
    tap.from_console(&[0x13, 0, 0, 0, 0, 0, 0, 0, 0]);
    tap.from_device(&[0x14, 0, 0, 0, 0, 2, 0, 0, 0, 1, 4]);
    assert!(tap.parsing() && !tap.sink().authenticated);
    tap.from_console(&cat(&[&[0x13, 0, 0, 0, 1, 0x0b, 0, 0, 0, 5], b"admin", &[4], b"pass"]));
    tap.from_device(&[0x14, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert!(!tap.parsing() && tap.sink().authenticated);
    // RFB from here: not redirection.
    tap.from_console(&[0x40, 0, 0, 0, 0, 0, 0, 0]);
    tap.from_device(b"RFB 003.008\n");
    let seen = tap.into_sink();
    assert_eq!((seen.kind, seen.user.as_deref()), (Some(RedirKind::Kvm), Some("admin")));
    assert!(seen.errors.is_empty() && seen.ended.is_empty(), "{seen:?}");
}

proptest! {
    /// The recorded session cut anywhere, in both directions, reads the same.
    #[test]
    fn prop_any_chunking_reads_the_same(cuts in proptest::collection::vec(0usize..40, 0..6)) {
        let exchange = amtterm_exchange();
        let seen = feed_cut(&exchange, |len| {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
            at.sort_unstable();
            at
        });
        assert_amtterm_session(&seen, &exchange);
    }

    /// Any bytes, in any chunks, either way: no panic, every byte counted, at most one error.
    #[test]
    fn prop_never_panics(
        chunks in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..80)), 0..12),
        start_sol in any::<bool>(),
    ) {
        let mut tap = Tap::new(Seen::default());
        if start_sol {
            tap.from_console(b"\x10\x00\x00\x00SOL ");
        }
        let (mut to, mut from) = (if start_sol { 8 } else { 0 }, 0);
        for (console, bytes) in &chunks {
            if *console {
                tap.from_console(bytes);
                to += bytes.len();
            } else {
                tap.from_device(bytes);
                from += bytes.len();
            }
        }
        let seen = tap.into_sink();
        prop_assert_eq!((seen.to_device, seen.from_device), (to, from));
        prop_assert!(seen.errors.len() <= 1);
        prop_assert!(seen.ended.len() <= 1);
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway's side

use crate::config::Config;
use crate::state::TestState;

async fn state(record_sol: bool) -> TestState {
    TestState::new(Config { record_sol, ..Config::default() }).await
}

fn counted(shared: &Shared, series: &str) -> f64 {
    let text = shared.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{series} missing"))
}

/// Waits until the device's rows satisfy `done`.
async fn rows_until(
    shared: &Shared,
    uuid: Uuid,
    done: impl Fn(&[crate::store::RedirectionRecord]) -> bool,
) -> Vec<crate::store::RedirectionRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = shared.store.redirections_for(uuid, false, 100).await.unwrap();
        if done(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "rows never got there: {rows:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_sol_session_is_counted_recorded_and_transcribed() {
    let state = state(true).await;
    let shared = &state.shared;
    let uuid = Uuid::new_v4();
    let tap = RelayTap::for_relay(shared, uuid, "alice", 16994).unwrap();
    assert!(RelayTap::for_relay(shared, uuid, "alice", 16992).is_none());
    let exchange = amtterm_exchange();
    // Up to the running session: the row is open, the gauge up.
    for (from, bytes) in &exchange[..8] {
        match from {
            Sender::Console => tap.from_console(bytes),
            Sender::Device => tap.from_device(bytes),
        }
    }
    let rows = rows_until(shared, uuid, |rows| rows.first().is_some_and(|r| r.device_user.is_some())).await;
    assert_eq!((rows[0].kind.as_str(), rows[0].outcome.as_str()), ("sol", "active"));
    assert_eq!((rows[0].technician.as_str(), rows[0].device_user.as_deref()), ("alice", Some("admin")));
    assert_eq!((rows[0].port, rows[0].instance.as_str(), rows[0].ended_at), (16994, "test-gateway", None));
    assert_eq!(shared.store.redirections_for(uuid, true, 10).await.unwrap().len(), 1);
    assert_eq!(counted(shared, "tether_redirection_sessions_active{kind=\"sol\"}"), 1.0);
    for (from, bytes) in &exchange[8..] {
        match from {
            Sender::Console => tap.from_console(bytes),
            Sender::Device => tap.from_device(bytes),
        }
    }
    tap.finish();
    let (to, from) = (total(&exchange, C) as u64, total(&exchange, D) as u64);
    let rows = rows_until(shared, uuid, |rows| rows.first().is_some_and(|r| r.bytes_to_device == to)).await;
    let row = &rows[0];
    assert_eq!(row.outcome, "ended");
    assert!(row.ended_at.is_some() && row.duration_ms >= 0);
    assert_eq!((row.bytes_to_device, row.bytes_from_device), (to, from));
    assert!(shared.store.redirections_for(uuid, true, 10).await.unwrap().is_empty());
    assert_eq!(counted(shared, "tether_redirection_sessions_total{kind=\"sol\"}"), 1.0);
    assert_eq!(counted(shared, "tether_redirection_sessions_active{kind=\"sol\"}"), 0.0);
    let to_series = "tether_redirection_bytes_total{direction=\"to_device\",kind=\"sol\"}";
    assert_eq!(counted(shared, to_series), to as f64);

    // The transcript: asciicast v2, private, named in the row.
    let path = PathBuf::from(row.transcript.clone().expect("a transcript"));
    assert!(path.ends_with(format!("transcripts/{uuid}/{}.cast", row.id)), "{}", path.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 3 {
            break text;
        }
        assert!(Instant::now() < deadline, "transcript incomplete: {text:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["version"], 2);
    assert_eq!((&lines[1][1], &lines[1][2]), (&serde_json::json!("o"), &serde_json::json!("Simulated BIOS> ")));
    assert_eq!((&lines[2][1], &lines[2][2]), (&serde_json::json!("i"), &serde_json::json!("hi\r")));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[tokio::test]
async fn a_refused_session_is_never_left_active_and_tls_is_recorded_as_unparsed() {
    // Recording on: a refused session has no transcript all the same.
    let state = state(true).await;
    let shared = &state.shared;
    let uuid = Uuid::new_v4();
    let tap = RelayTap::for_relay(shared, uuid, "bob", 16994).unwrap();
    tap.from_console(b"\x10\x00\x00\x00SOL ");
    // Asked, not answered: no row yet, so a console the device refuses never finds its own
    // session named as the holder. (The writer keeps queue order: another session's row
    // written after this point means this one was not queued.)
    let other = Uuid::new_v4();
    let witness = RelayTap::for_relay(shared, other, "eve", 16994).unwrap();
    witness.from_console(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
    rows_until(shared, other, |rows| rows.len() == 1).await;
    assert!(shared.store.redirections_for(uuid, false, 10).await.unwrap().is_empty());
    witness.finish();
    tap.from_device(&[0x11, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    // The relay is still open, and the row has ended already.
    let rows = rows_until(shared, uuid, |rows| rows.first().is_some_and(|r| r.ended_at.is_some())).await;
    assert_eq!(rows[0].outcome, "refused_in_use");
    assert!(rows[0].transcript.is_none());
    assert_eq!(counted(shared, "tether_redirection_refused_total{kind=\"sol\"}"), 1.0);
    assert_eq!(counted(shared, "tether_redirection_sessions_active{kind=\"sol\"}"), 0.0);
    tap.finish();

    let tls = RelayTap::for_relay(shared, uuid, "carol", 16995).unwrap();
    tls.from_console(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
    let rows = rows_until(shared, uuid, |rows| rows.len() == 2).await;
    assert_eq!((rows[0].kind.as_str(), rows[0].outcome.as_str(), rows[0].ended_at), ("unknown", "unparsed", None));
    tls.finish();
    let rows = rows_until(shared, uuid, |rows| rows[0].ended_at.is_some()).await;
    assert_eq!((rows[0].outcome.as_str(), rows[0].bytes_to_device), ("unparsed", 10));
    assert_eq!(counted(shared, "tether_redirection_tap_errors_total"), 0.0);

    let garbage = RelayTap::for_relay(shared, uuid, "dave", 16994).unwrap();
    garbage.from_console(b"\x10\x00\x00\x00SOL \x77\x77");
    garbage.finish();
    let rows = rows_until(shared, uuid, |rows| rows.len() == 3 && rows[0].ended_at.is_some()).await;
    assert_eq!((rows[0].kind.as_str(), rows[0].outcome.as_str()), ("sol", "tap_error"));
    assert_eq!(counted(shared, "tether_redirection_tap_errors_total"), 1.0);
}

#[tokio::test]
async fn a_transcript_stops_at_its_cap_with_a_marker_and_notes_dropped_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("transcripts").join("dev").join("7.cast");
    let (path_tx, path_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(16);
    let dropped = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write_transcript(path_rx, rx, serde_json::json!({"version": 2}), dropped.clone(), 240));
    path_tx.send(path.clone()).unwrap();
    let event = |ms, input, data: &[u8]| CastEvent { at: Duration::from_millis(ms), input, data: data.to_vec() };
    // Three chunks were dropped before these.
    dropped.store(3, Ordering::Relaxed);
    tx.send(event(10, false, b"\xffBIOS\r\n")).await.unwrap();
    tx.send(event(20, true, b"x")).await.unwrap();
    // "é" cut between two chunks: written whole, with the second.
    tx.send(event(25, false, b"caf\xc3")).await.unwrap();
    tx.send(event(26, false, b"\xa9")).await.unwrap();
    tx.send(event(30, false, &[b'y'; 300])).await.unwrap();
    tx.send(event(40, false, b"after the cap")).await.unwrap();
    drop(tx);
    writer.await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert_eq!(lines[1][1], "m");
    assert!(lines[1][2].as_str().unwrap().contains("3 chunks dropped"), "{text}");
    assert_eq!(lines[2], serde_json::json!([0.01, "o", "\u{fffd}BIOS\r\n"]));
    assert_eq!(lines[3], serde_json::json!([0.02, "i", "x"]));
    assert_eq!((&lines[4][2], &lines[5][2]), (&serde_json::json!("caf"), &serde_json::json!("é")));
    assert!(lines[6][2].as_str().unwrap().contains("cap of 240 bytes"), "{text}");
    assert!(!text.contains("after the cap"));
}
