//! Tests of the redirection service: the handler driven directly (no driver, no socket), with the
//! exchanges recorded in redirection.md §2, a real shell on a pty for SOL, and
//! `protocols::scsi::Target` as the IDE-R console.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocols::redir::{
    self, AmtiderOpen, AtaRegisters, AuthReply, AuthReplyBody, AuthRequest, DigestAuth, DigestMethod, FeaturesRequest,
    IderOpen, Message, RegisterArea, Sender, SequenceCheck, SolSettings, ATTR_COMPLETED,
};
use protocols::scsi::{self, DeviceKind, Target};
use protocols::session::ChannelId;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::*;
use crate::amt::service::WakeSet;

const UUID: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
/// Longest wait for the shell.
const STEP: Duration = Duration::from_secs(20);

fn service(password: &str) -> RedirectionService {
    RedirectionService::new(RedirectionConfig { admin_password: password.to_owned(), ..RedirectionConfig::default() })
}

/// A handler and what a driver keeps for it.
struct Harness {
    handler: RedirectionChannel,
    buf: BytesMut,
    marks: VecDeque<usize>,
    closed: bool,
    wakes: Arc<WakeSet>,
}

impl Harness {
    fn new(service: &RedirectionService, uuid: Uuid) -> Self {
        let wakes = WakeSet::new();
        let handler = service.handler(uuid, wakes.waker(ChannelId(1)));
        Self { handler, buf: BytesMut::new(), marks: VecDeque::new(), closed: false, wakes }
    }

    /// The messages written so far, split where the handler marked their ends.
    fn take(&mut self) -> Vec<Vec<u8>> {
        let mut messages = Vec::new();
        let mut start = 0;
        for &end in &self.marks {
            messages.push(self.buf[start..end].to_vec());
            start = end;
        }
        assert_eq!(start, self.buf.len(), "output after the last message boundary");
        self.buf.clear();
        self.marks.clear();
        messages
    }

    /// Offers `bytes` until all are taken; returns the messages written.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut offset = 0;
        while offset < bytes.len() {
            let data = &bytes[offset..];
            let n = self.handler.on_data(data, &mut outbox(&mut self.buf, &mut self.closed, &mut self.marks));
            assert!(n > 0, "the handler took nothing");
            offset += n;
        }
        self.take()
    }

    fn timer(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.handler.on_timer(now, &mut outbox(&mut self.buf, &mut self.closed, &mut self.marks));
        self.take()
    }

    fn wake(&mut self) -> Vec<Vec<u8>> {
        self.handler.on_wake(&mut outbox(&mut self.buf, &mut self.closed, &mut self.marks));
        self.take()
    }

    fn eof(&mut self) {
        self.handler.on_eof(&mut outbox(&mut self.buf, &mut self.closed, &mut self.marks));
    }

    /// Waits for wake-ups until the SOL output decoded so far satisfies `done`, or fails.
    async fn sol_output_until(&mut self, done: impl Fn(&str) -> bool) -> String {
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            for message in self.wake() {
                if let Message::SolDataFromHost { data, .. } = decode_device(&message) {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            if done(&text) {
                return text;
            }
            if tokio::time::timeout_at(deadline, self.wakes.notified()).await.is_err() {
                panic!("SOL output not as expected within {STEP:?}: {text:?}");
            }
            self.wakes.take();
        }
    }
}

/// The outbox a driver would pass, over the harness's buffers.
fn outbox<'a>(buf: &'a mut BytesMut, closed: &'a mut bool, marks: &'a mut VecDeque<usize>) -> Outbox<'a> {
    Outbox::with_boundaries(buf, 256 * 1024, closed, marks)
}

fn decode_device(bytes: &[u8]) -> Message {
    let (message, len) = redir::decode(bytes, Sender::Device, &redir::Limits::default())
        .expect("a valid device message")
        .expect("a whole device message");
    assert_eq!(len, bytes.len(), "one message exactly: {bytes:02x?}");
    message
}

fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    redir::encode(message, &mut out);
    out
}

fn basic_auth(user: &[u8], password: &[u8]) -> Vec<u8> {
    encode(&Message::AuthenticateSession(AuthRequest::UsernamePassword {
        username: Bytes::copy_from_slice(user),
        password: Bytes::copy_from_slice(password),
    }))
}

const START_SOL: [u8; 8] = [0x10, 0, 0, 0, 0x53, 0x4f, 0x4c, 0x20];
const START_IDER: [u8; 8] = [0x10, 0, 0, 0, 0x49, 0x44, 0x45, 0x52];
const SESSION_OK: [u8; 13] = [0x11, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
const AUTH_OK_BASIC: [u8; 9] = [0x14, 0, 0, 0, 1, 0, 0, 0, 0];
const AUTH_FAILED_BASIC: [u8; 9] = [0x14, 1, 0, 0, 1, 0, 0, 0, 0];

#[tokio::test]
async fn amtterm_1_4_exchange_is_answered_byte_for_byte() {
    let service = service("P@ssw0rd");
    let mut h = Harness::new(&service, UUID);
    assert_eq!(h.feed(&START_SOL), [SESSION_OK.to_vec()]);
    let mut auth = vec![0x13, 0, 0, 0, 1, 0x0f, 0, 0, 0, 5];
    auth.extend_from_slice(b"admin");
    auth.push(8);
    auth.extend_from_slice(b"P@ssw0rd");
    assert_eq!(h.feed(&auth), [AUTH_OK_BASIC.to_vec()]);
    let start_sol = [0x20, 0, 0, 0, 0, 0, 0, 0, 0xe8, 0x03, 0x64, 0, 0, 0, 0x10, 0x27, 0, 0, 0x88, 0x13, 0, 0, 0, 0];
    let replies = h.feed(&start_sol);
    assert!(replies.len() >= 2, "{replies:02x?}");
    assert_eq!(
        replies[0],
        [0x21, 0, 0, 0, 0, 0, 0, 0, 0xe8, 0x03, 0x64, 0, 0, 0, 0x10, 0x27, 0, 0, 0x88, 0x13, 0, 0, 0]
    );
    assert_eq!(replies[1], [0x29, 0, 0, 0, 1, 0, 0, 0, 0x03, 0x04]);
    // Keystrokes, amtterm's echo of a heartbeat (not answered), then ^] and the close sequence.
    assert!(h.feed(&[0x28, 0, 0, 0, 0, 0, 0, 0, 3, 0, b'h', b'i', 0x0d]).iter().all(|m| m[0] == 0x2a));
    assert!(h.feed(&[0x2b, 0, 0, 0, 3, 0, 0, 0]).iter().all(|m| m[0] == 0x2a), "no echo of an echo");
    let end = h.feed(&[0x22, 0, 0, 0, 0, 0, 0, 0]);
    assert!(end.contains(&vec![0x23, 0, 0, 0, 0, 0, 0, 0]), "{end:02x?}");
    assert!(!h.closed);
    assert!(h.feed(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x1d]).is_empty(), "^] after EndSOL is tolerated");
    assert!(!h.closed);
    assert!(h.feed(&[0x12, 0, 0, 0]).is_empty());
    assert!(h.closed, "EndRedirectionSession closes the channel");
}

#[test]
fn replies_fed_together_still_go_out_as_separate_messages() {
    let service = service("P@ssw0rd");
    let mut h = Harness::new(&service, UUID);
    let mut both = START_SOL.to_vec();
    both.extend(basic_auth(b"admin", b"P@ssw0rd"));
    assert_eq!(h.feed(&both), [SESSION_OK.to_vec(), AUTH_OK_BASIC.to_vec()]);
}

fn digest_login(method: DigestMethod, password: &[u8]) -> (Harness, Vec<Vec<u8>>) {
    let service = service("P@ssw0rd");
    let mut h = Harness::new(&service, UUID);
    assert_eq!(h.feed(&START_SOL), [SESSION_OK.to_vec()]);
    assert_eq!(
        h.feed(&[0x13, 0, 0, 0, 0, 0, 0, 0, 0]),
        [vec![0x14, 0, 0, 0, 0, 3, 0, 0, 0, 1, 3, 4]],
        "the query lists 1, 3 and 4"
    );
    let initial = encode(&Message::AuthenticateSession(AuthRequest::Digest(DigestAuth::initial(method, b"admin"))));
    let challenge = h.feed(&initial);
    assert_eq!(challenge.len(), 1);
    let code = method.auth_method() as u8;
    assert_eq!(&challenge[0][..5], [0x14, 1, 0, 0, code], "status 1: challenge follows");
    let Message::AuthenticateSessionReply(AuthReply {
        status: 1,
        body: AuthReplyBody::Digest { challenge: Some(challenge), .. },
    }) = decode_device(&challenge[0])
    else {
        panic!("not a challenge: {:02x?}", challenge[0]);
    };
    let realm = std::str::from_utf8(&challenge.realm).unwrap();
    let hex = realm.strip_prefix("Digest:").expect("realm Digest:…");
    assert!(hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{realm}");
    assert!(challenge.nonce.len() == 32 && challenge.nonce.iter().all(u8::is_ascii_hexdigit));
    let qop: &[u8] = if method == DigestMethod::Rfc2617 { b"auth" } else { b"" };
    assert_eq!(&challenge.qop[..], qop);
    let answer = DigestAuth::answer(method, b"admin", password, &challenge, b"0123456789abcdef0123456789abcdef");
    let verdict = h.feed(&encode(&Message::AuthenticateSession(AuthRequest::Digest(answer))));
    (h, verdict)
}

#[test]
fn digest_flow_of_amtterm_head_authenticates() {
    for (method, code) in [(DigestMethod::Rfc2617, 4), (DigestMethod::Rfc2069, 3)] {
        let (h, verdict) = digest_login(method, b"P@ssw0rd");
        assert_eq!(verdict, [vec![0x14, 0, 0, 0, code, 0, 0, 0, 0]]);
        assert!(!h.closed);
        assert!(h.handler.authenticated);
    }
}

#[test]
fn wrong_digest_password_gets_status_1_and_the_channel_closes_later() {
    let (mut h, verdict) = digest_login(DigestMethod::Rfc2617, b"wrong");
    assert_eq!(verdict, [vec![0x14, 1, 0, 0, 4, 0, 0, 0, 0]]);
    assert!(!h.closed, "the console closes first");
    let at = h.handler.poll_deadline().expect("a close deadline");
    assert!(h.timer(at).is_empty());
    assert!(h.closed);
}

#[test]
fn wrong_password_gets_status_1_and_eof_closes() {
    let service = service("P@ssw0rd");
    let mut h = Harness::new(&service, UUID);
    h.feed(&START_SOL);
    assert_eq!(h.feed(&basic_auth(b"admin", b"nope")), [AUTH_FAILED_BASIC.to_vec()]);
    assert!(h.feed(&START_SOL).is_empty(), "input after a refusal is discarded");
    h.eof();
    assert!(h.closed);
    // The refused console no longer holds the SOL slot.
    let mut other = Harness::new(&service, UUID);
    assert_eq!(other.feed(&START_SOL), [SESSION_OK.to_vec()]);
}

#[test]
fn kerberos_is_refused() {
    let service = service("P@ssw0rd");
    let mut h = Harness::new(&service, UUID);
    h.feed(&START_SOL);
    let kerberos = encode(&Message::AuthenticateSession(AuthRequest::Kerberos { token: Bytes::from_static(b"tok") }));
    assert_eq!(h.feed(&kerberos)[0][..5], [0x14, 1, 0, 0, 2]);
}

#[test]
fn sol_or_ider_before_authentication_closes_the_channel() {
    let service = service("P@ssw0rd");
    let start_sol = encode(&Message::StartSol { seq: 0, settings: SolSettings::default() });
    let start_ider = encode(&Message::StartIder(IderOpen::default()));
    for (start, message) in [(START_SOL, start_sol), (START_IDER, start_ider)] {
        let mut h = Harness::new(&service, UUID);
        h.feed(&start);
        assert!(h.feed(&message).is_empty());
        assert!(h.closed);
    }
    // Garbage closes too.
    let mut h = Harness::new(&service, UUID);
    h.feed(&START_SOL);
    h.feed(&[0x99]);
    assert!(h.closed);
}

#[test]
fn one_session_per_kind_and_device() {
    let service = service("P@ssw0rd");
    let mut first = Harness::new(&service, UUID);
    assert_eq!(first.feed(&START_SOL), [SESSION_OK.to_vec()]);
    let mut second = Harness::new(&service, UUID);
    let refused = second.feed(&START_SOL);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0][..2], [0x11, STATUS_SESSION_REFUSED]);
    assert!(second.closed, "closed after the refusal");
    // Another kind, and another device, are free.
    assert_eq!(Harness::new(&service, UUID).feed(&START_IDER), [SESSION_OK.to_vec()]);
    let other = Uuid::from_u128(7);
    assert_eq!(Harness::new(&service, other).feed(&START_SOL), [SESSION_OK.to_vec()]);
    // The slot is freed when the holder goes away.
    drop(first);
    assert_eq!(Harness::new(&service, UUID).feed(&START_SOL), [SESSION_OK.to_vec()]);
}

/// A SOL session on a real `/bin/sh`, logged in as `admin`.
fn sol_session(service: &RedirectionService) -> Harness {
    let mut h = Harness::new(service, UUID);
    h.feed(&START_SOL);
    assert_eq!(h.feed(&basic_auth(b"admin", b"P@ssw0rd")), [AUTH_OK_BASIC.to_vec()]);
    let settings = SolSettings { max_tx_buffer: 1000, heartbeat_interval: 5000, ..SolSettings::default() };
    let replies = h.feed(&encode(&Message::StartSol { seq: 0, settings }));
    assert_eq!(replies[0][0], 0x21);
    h
}

fn keys(text: &str) -> Vec<u8> {
    encode(&Message::SolDataToHost { seq: 0, data: Bytes::copy_from_slice(text.as_bytes()) })
}

#[tokio::test]
async fn sol_runs_a_real_shell() {
    let service = service("P@ssw0rd");
    let mut h = sol_session(&service);
    h.feed(&keys("echo hi-$((40+2))\r"));
    // The echo of the typed line shows `$((40+2))`; only the shell's output shows `hi-42`.
    h.sol_output_until(|text| text.contains("hi-42")).await;
    // Heartbeats when due, numbered on.
    let at = h.handler.poll_deadline().expect("a heartbeat deadline");
    let beats = h.timer(at);
    assert_eq!(beats.len(), 1);
    assert!(matches!(decode_device(&beats[0]), Message::SolHeartbeat { .. }), "{beats:02x?}");
    // A ping gets a pong with the ping's number.
    assert_eq!(h.feed(&[0x24, 0, 0, 0, 9, 0, 0, 0]), [vec![0x25, 0, 0, 0, 9, 0, 0, 0]]);
    // The shell exits: the console is told, the channel closes.
    h.feed(&keys("exit 3\r"));
    let text = h.sol_output_until(|text| text.contains("SOL: shell exited")).await;
    assert!(text.contains("SOL: shell exited (exit status: 3)\r\n"), "{text:?}");
    assert!(h.closed);
}

#[tokio::test]
async fn sol_output_respects_max_tx_buffer_and_numbers_messages() {
    let service = service("P@ssw0rd");
    let mut h = Harness::new(&service, UUID);
    h.feed(&START_SOL);
    h.feed(&basic_auth(b"admin", b"P@ssw0rd"));
    let settings = SolSettings { max_tx_buffer: 64, ..SolSettings::default() };
    let replies = h.feed(&encode(&Message::StartSol { seq: 0, settings }));
    let mut seqs = SequenceCheck::consecutive(0);
    for message in &replies {
        seqs.check_message(&decode_device(message)).unwrap();
    }
    h.feed(&keys("i=0; while [ $i -lt 50 ]; do echo line-$i; i=$((i+1)); done; echo END-$((1+1))\r"));
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + STEP;
    while !text.contains("END-2") {
        for message in h.wake() {
            let decoded = decode_device(&message);
            seqs.check_message(&decoded).unwrap();
            if let Message::SolDataFromHost { data, .. } = decoded {
                assert!(data.len() <= 64, "{} bytes over MaxTxBuffer", data.len());
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        if !text.contains("END-2") {
            tokio::time::timeout_at(deadline, h.wakes.notified()).await.expect("more output");
            h.wakes.take();
        }
    }
    assert!(text.contains("line-49"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// IDE-R, with protocols::scsi::Target as the console

/// The console side of IDE-R: two targets and their images.
struct Console {
    cd: Target,
    cd_image: Vec<u8>,
    floppy: Target,
    floppy_image: Vec<u8>,
    read_buffer: usize,
    seq: u32,
}

fn registers_good(drive: u8) -> AtaRegisters {
    AtaRegisters {
        mask: 0xC5,
        error: 0,
        sector_count: 3,
        sector_number: 0,
        byte_count: 0,
        drive_select: drive,
        status: 0x50,
    }
}

impl Console {
    fn new(cd_image: Vec<u8>, floppy_image: Vec<u8>) -> Self {
        Self {
            cd: Target::new(DeviceKind::CdRom, cd_image.len() as u64),
            cd_image,
            floppy: Target::new(DeviceKind::Floppy, floppy_image.len() as u64),
            floppy_image,
            read_buffer: 8192,
            seq: 0,
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    /// The console's messages answering one CommandWritten.
    fn answer(&mut self, drive: u8, packet: &[u8; 12]) -> Vec<u8> {
        let (target, image) =
            if drive & 0x10 != 0 { (&mut self.cd, &self.cd_image) } else { (&mut self.floppy, &self.floppy_image) };
        let data = match target.handle(packet) {
            scsi::Response::Good => None,
            scsi::Response::Data(data) => Some(data),
            scsi::Response::Read { offset, len } => {
                let start = offset as usize;
                let mut data = image[start.min(image.len())..(start + len as usize).min(image.len())].to_vec();
                data.resize(len as usize, 0);
                Some(data)
            }
            scsi::Response::CheckCondition(sense) => {
                let area = RegisterArea {
                    output: AtaRegisters {
                        mask: 0x87,
                        error: sense.key.code() << 4,
                        sector_count: 3,
                        sector_number: 0,
                        byte_count: 0,
                        drive_select: drive,
                        status: 0x51,
                    },
                    sense: redir::Sense { key: sense.key.code(), asc: sense.asc, ascq: sense.ascq },
                    ..RegisterArea::default()
                };
                let seq = self.next_seq();
                return encode(&Message::IderCommandEndResponse {
                    seq,
                    attributes: ATTR_COMPLETED,
                    transfer_bytes: 0,
                    area,
                });
            }
        };
        let mut out = Vec::new();
        match data {
            None => {
                let area = RegisterArea { output: registers_good(drive), ..RegisterArea::default() };
                let seq = self.next_seq();
                redir::encode(
                    &Message::IderCommandEndResponse { seq, attributes: ATTR_COMPLETED, transfer_bytes: 0, area },
                    &mut out,
                );
            }
            Some(data) => {
                let chunks: Vec<&[u8]> = data.chunks(self.read_buffer).collect();
                for (i, chunk) in chunks.iter().enumerate() {
                    let last = i + 1 == chunks.len();
                    let input = AtaRegisters {
                        mask: 0xB5,
                        error: 0,
                        sector_count: 2,
                        sector_number: 0,
                        byte_count: chunk.len() as u16,
                        drive_select: drive,
                        status: 0x58,
                    };
                    let output = if last {
                        AtaRegisters { mask: 0x85, status: 0x50, ..registers_good(drive) }
                    } else {
                        AtaRegisters::default()
                    };
                    let area = RegisterArea { input, output, ..RegisterArea::default() };
                    let seq = self.next_seq();
                    let attributes = if last { ATTR_COMPLETED } else { 0 };
                    redir::encode(
                        &Message::IderDataToHost { seq, attributes, area, data: Bytes::copy_from_slice(chunk) },
                        &mut out,
                    );
                }
            }
        }
        out
    }
}

/// An IDE-R session logged in as admin, with the device's serial console attached to a sink.
fn ider_session(config: RedirectionConfig, amtider: bool) -> (Harness, Arc<SerialSink>, Attachment, Vec<Vec<u8>>) {
    let service = RedirectionService::new(RedirectionConfig { admin_password: "P@ssw0rd".to_owned(), ..config });
    let wakes = WakeSet::new();
    let sink = SerialSink::new(wakes.waker(ChannelId(99)));
    let attachment = service.consoles().attach(UUID, Arc::clone(&sink));
    let mut h = Harness::new(&service, UUID);
    h.feed(&START_IDER);
    h.feed(&basic_auth(b"admin", b"P@ssw0rd"));
    let open = if amtider {
        Message::StartIderAmtider(AmtiderOpen { rx_timeout: 100, tx_timeout: 10000, heartbeat: 5000, version: 1 })
    } else {
        Message::StartIder(IderOpen { seq: 0, rx_timeout: 30000, tx_timeout: 0, heartbeat: 20000, version: 1 })
    };
    let mut replies = h.feed(&encode(&open));
    let set = Message::IderDisableEnableFeatures { seq: 1, request: FeaturesRequest::SetState(0x09) };
    replies.extend(h.feed(&encode(&set)));
    (h, sink, attachment, replies)
}

fn console_lines(sink: &SerialSink) -> String {
    String::from_utf8(sink.take(usize::MAX)).unwrap()
}

/// Runs the boot to its end; returns every device message.
fn run_boot(h: &mut Harness, console: &mut Console, mut pending: Vec<Vec<u8>>) -> Vec<Message> {
    let mut all = Vec::new();
    let mut rounds = 0;
    while let Some(message) = pending.pop() {
        assert!(pending.is_empty(), "one command outstanding at a time");
        let decoded = decode_device(&message);
        all.push(decoded.clone());
        if let Message::IderCommandWritten { command, .. } = decoded {
            assert_eq!(command.command, 0xA0, "ATA PACKET");
            rounds += 1;
            assert!(rounds < 10_000, "the boot does not end");
            pending = h.feed(&console.answer(command.drive_select, &command.packet));
            pending.reverse();
        }
    }
    all
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn random_image(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut image = vec![0u8; len];
    rand::rng().fill_bytes(&mut image);
    image
}

#[test]
fn ider_boot_reads_and_hashes_the_cd_and_the_floppy() {
    for amtider in [false, true] {
        let cd = random_image(1 << 20);
        let floppy = random_image(1440 * 1024);
        let config = RedirectionConfig { boot_ider: true, ..RedirectionConfig::default() };
        let (mut h, sink, _attached, replies) = ider_session(config, amtider);
        assert_eq!(replies.len(), 3, "0x41, 0x49 and the first command, each on its own: {replies:02x?}");
        let Message::StartIderReply(open) = decode_device(&replies[0]) else { panic!("{:02x?}", replies[0]) };
        assert_eq!((open.status, open.seq, open.read_buffer_size, open.write_buffer_size), (0, 0, 8192, 8192));
        assert_eq!((open.features, open.oem_data.len()), (0, 0));
        assert_eq!(replies[1], [0x49, 0, 0, 0, 1, 0, 0, 0, 3, 1, 0, 0, 0]);
        let mut console = Console::new(cd.clone(), floppy.clone());
        let first = replies[2].clone();
        let mut messages = vec![decode_device(&replies[0]), decode_device(&replies[1])];
        messages.extend(run_boot(&mut h, &mut console, vec![first]));
        let mut seqs = SequenceCheck::consecutive(0);
        for message in &messages {
            seqs.check_message(message).expect("device messages numbered 0, 1, 2, … without gaps");
        }
        let opcodes: Vec<(u8, u8)> = messages
            .iter()
            .filter_map(|m| match m {
                Message::IderCommandWritten { command, .. } => Some((command.drive_select, command.packet[0])),
                _ => None,
            })
            .collect();
        let cd_reads = (1 << 20) / (32 * 2048);
        let mut expected = vec![(0xB0, 0x00), (0xB0, 0x5A), (0xB0, 0x46), (0xB0, 0x4A), (0xB0, 0x25), (0xB0, 0x43)];
        expected.extend(std::iter::repeat_n((0xB0, 0x28), cd_reads));
        expected.extend([(0xA0, 0x00), (0xA0, 0x23), (0xA0, 0x25)]);
        expected.extend(std::iter::repeat_n((0xA0, 0x28), (1440 * 1024usize).div_ceil(32 * 512)));
        assert_eq!(opcodes, expected);
        let lines = console_lines(&sink);
        let want = format!(
            "IDE-R boot: starting\r\nIDE-R boot: cd read {} bytes sha256={}\r\nIDE-R boot: floppy read {} bytes sha256={}\r\n",
            cd.len(),
            sha256_hex(&cd),
            floppy.len(),
            sha256_hex(&floppy)
        );
        assert_eq!(lines, want);
        // The session stays open until the console ends it.
        assert!(!h.closed);
        let end = h.feed(&encode(&Message::EndIder { seq: 100 }));
        assert!(matches!(decode_device(&end[0]), Message::EndIderReply { .. }));
        h.feed(&[0x12, 0, 0, 0]);
        assert!(h.closed);
    }
}

#[test]
fn ider_boot_reports_absent_media_and_a_short_medium() {
    // No CD; a floppy image that is not a whole number of blocks is padded by the console.
    let floppy = random_image(3 * 512 + 100);
    let config = RedirectionConfig { boot_ider: true, ider_read_blocks: 2, ..RedirectionConfig::default() };
    let (mut h, sink, _attached, replies) = ider_session(config, false);
    let mut console = Console::new(Vec::new(), floppy.clone());
    run_boot(&mut h, &mut console, vec![replies[2].clone()]);
    let mut padded = floppy.clone();
    padded.resize(4 * 512, 0);
    let want = format!(
        "IDE-R boot: starting\r\nIDE-R boot: cd absent\r\nIDE-R boot: floppy read 2048 bytes sha256={}\r\n",
        sha256_hex(&padded)
    );
    assert_eq!(console_lines(&sink), want);
}

#[test]
fn ider_console_that_never_answers_fails_the_boot_after_the_timeout() {
    let config = RedirectionConfig { boot_ider: true, ..RedirectionConfig::default() };
    let (mut h, sink, _attached, replies) = ider_session(config, false);
    let Message::IderCommandWritten { seq, command, .. } = decode_device(&replies[2]) else { panic!() };
    assert_eq!((seq, command.packet[0]), (2, 0x00));
    let now = Instant::now();
    // Heartbeats while waiting, numbered on.
    let beats = h.timer(now + Duration::from_secs(3));
    assert_eq!(beats, [vec![0x4b, 0, 0, 0, 3, 0, 0, 0]]);
    assert_eq!(console_lines(&sink), "IDE-R boot: starting\r\n");
    let deadline = h.handler.poll_deadline().unwrap();
    assert!(deadline <= now + Duration::from_secs(31));
    h.timer(now + Duration::from_secs(31));
    assert_eq!(console_lines(&sink), "IDE-R boot: cd failed: no answer to TEST UNIT READY in 30s\r\n");
    assert!(!h.closed, "the session stays open");
    // A ping is still answered.
    let pong = h.feed(&encode(&Message::IderKeepAlivePing { seq: 2 }));
    assert!(matches!(decode_device(&pong[0]), Message::IderKeepAlivePong { .. }));
}

#[test]
fn ider_without_boot_flag_only_answers() {
    let (mut h, sink, _attached, replies) = ider_session(RedirectionConfig::default(), false);
    assert_eq!(replies.len(), 2, "no boot without --boot-ider");
    let state = h.feed(&encode(&Message::IderDisableEnableFeatures { seq: 2, request: FeaturesRequest::GetState }));
    assert_eq!(state, [vec![0x49, 0, 0, 0, 2, 0, 0, 0, 2, 2, 0, 0, 0]]);
    assert!(sink.is_empty());
    // Data with no command outstanding is a protocol error.
    let area = RegisterArea::default();
    h.feed(&encode(&Message::IderCommandEndResponse { seq: 3, attributes: ATTR_COMPLETED, transfer_bytes: 0, area }));
    assert!(h.closed);
}

#[test]
fn ider_boot_retries_test_unit_ready_once_after_unit_attention() {
    let cd = random_image(64 * 1024);
    let config = RedirectionConfig { boot_ider: true, ..RedirectionConfig::default() };
    let (mut h, sink, _attached, replies) = ider_session(config, false);
    let Message::IderCommandWritten { command, .. } = decode_device(&replies[2]) else { panic!() };
    assert_eq!((command.drive_select, command.packet[0]), (0xB0, 0x00));
    // Medium changed: CHECK CONDITION 06/28/00, then the same command again.
    let area = RegisterArea {
        output: AtaRegisters {
            mask: 0x87,
            error: 0x60,
            sector_count: 3,
            drive_select: 0xB0,
            status: 0x51,
            ..Default::default()
        },
        sense: redir::Sense { key: 6, asc: 0x28, ascq: 0 },
        ..RegisterArea::default()
    };
    let retry = h.feed(&encode(&Message::IderCommandEndResponse {
        seq: 2,
        attributes: ATTR_COMPLETED,
        transfer_bytes: 0,
        area,
    }));
    let Message::IderCommandWritten { command, .. } = decode_device(&retry[0]) else { panic!("{retry:02x?}") };
    assert_eq!((command.drive_select, command.packet[0]), (0xB0, 0x00), "TEST UNIT READY again");
    let mut console = Console::new(cd.clone(), Vec::new());
    console.seq = 2;
    run_boot(&mut h, &mut console, retry);
    let want = format!(
        "IDE-R boot: starting\r\nIDE-R boot: cd read {} bytes sha256={}\r\nIDE-R boot: floppy absent\r\n",
        cd.len(),
        sha256_hex(&cd)
    );
    assert_eq!(console_lines(&sink), want);
}

#[test]
fn ider_chunks_over_the_read_buffer_fail_the_medium() {
    let cd = random_image(64 * 1024);
    let config = RedirectionConfig { boot_ider: true, ider_buffer: 4096, ..RedirectionConfig::default() };
    let (mut h, sink, _attached, replies) = ider_session(config, false);
    // The console ignores the announced 4096 and sends 8192-byte chunks.
    let mut console = Console::new(cd, Vec::new());
    run_boot(&mut h, &mut console, vec![replies[2].clone()]);
    let lines = console_lines(&sink);
    assert!(
        lines.contains(
            "IDE-R boot: cd failed: READ(10) data came in a chunk of 8192 bytes, over the read buffer of 4096\r\n"
        ),
        "{lines}"
    );
    assert!(lines.ends_with("IDE-R boot: floppy absent\r\n"), "{lines}");
}

#[tokio::test]
async fn ider_boot_result_shows_on_the_devices_sol_console() {
    let cd = random_image(256 * 1024);
    let service = RedirectionService::new(RedirectionConfig {
        admin_password: "P@ssw0rd".to_owned(),
        boot_ider: true,
        ..RedirectionConfig::default()
    });
    let mut sol = sol_session(&service);
    let mut ider = Harness::new(&service, UUID);
    ider.feed(&START_IDER);
    ider.feed(&basic_auth(b"admin", b"P@ssw0rd"));
    ider.feed(&encode(&Message::StartIder(IderOpen {
        seq: 0,
        rx_timeout: 30000,
        tx_timeout: 0,
        heartbeat: 20000,
        version: 1,
    })));
    let replies =
        ider.feed(&encode(&Message::IderDisableEnableFeatures { seq: 1, request: FeaturesRequest::SetState(0x09) }));
    let mut console = Console::new(cd.clone(), Vec::new());
    run_boot(&mut ider, &mut console, vec![replies[1].clone()]);
    let want = format!("IDE-R boot: cd read {} bytes sha256={}\r\n", cd.len(), sha256_hex(&cd));
    let text = sol.sol_output_until(|text| text.contains("floppy absent")).await;
    assert!(text.contains("IDE-R boot: starting\r\n"), "{text:?}");
    assert!(text.contains(&want), "{text:?}");
    // Another device's boot does not show here.
    let other = Uuid::from_u128(5);
    service.consoles().print(other, "IDE-R boot: starting");
    let more: Vec<u8> = sol.wake().concat();
    assert!(!String::from_utf8_lossy(&more).contains("IDE-R"), "{more:02x?}");
}

// ---------------------------------------------------------------------------------------------
// With the firmware state of the WS-MAN side

use crate::amt::wsman::{Firmware, FirmwareConfig};

fn firmware(config: FirmwareConfig) -> Firmware {
    Firmware::new(FirmwareConfig { admin_password: "P@ssw0rd".to_owned(), ..config }, SerialConsoles::new())
}

/// An IDE-R session of `service` logged in, opened and enabled; the serial console attached.
fn ider_session_on(service: &RedirectionService) -> (Harness, Arc<SerialSink>, Attachment, Vec<Vec<u8>>) {
    let wakes = WakeSet::new();
    let sink = SerialSink::new(wakes.waker(ChannelId(99)));
    let attachment = service.consoles().attach(UUID, Arc::clone(&sink));
    let mut h = Harness::new(service, UUID);
    let started = h.feed(&START_IDER);
    assert_eq!(started[0][1], 0, "session accepted: {started:02x?}");
    h.feed(&basic_auth(b"admin", b"P@ssw0rd"));
    let open = Message::StartIder(IderOpen { seq: 0, rx_timeout: 30000, tx_timeout: 0, heartbeat: 20000, version: 1 });
    let mut replies = h.feed(&encode(&open));
    let set = Message::IderDisableEnableFeatures { seq: 1, request: FeaturesRequest::SetState(0x09) };
    replies.extend(h.feed(&encode(&set)));
    (h, sink, attachment, replies)
}

/// A power-on/reset/cycle as the WS-MAN responder makes it, with UseIDER set to the CD.
fn boot_from_ider_cd(fw: &Firmware) {
    fw.with(UUID, |state, _, effects| {
        state.boot.use_ider = true;
        state.boot.ider_boot_device = 1;
        state.boot(UUID, effects);
    });
}

#[test]
fn a_power_boot_with_use_ider_is_served_by_the_open_ider_session() {
    let fw = firmware(FirmwareConfig::default());
    let service =
        RedirectionService::new(RedirectionConfig { admin_password: "P@ssw0rd".to_owned(), ..Default::default() })
            .with_firmware(fw.clone());
    let (mut h, sink, _attached, replies) = ider_session_on(&service);
    assert_eq!(replies.len(), 2, "no boot until the firmware boots");
    boot_from_ider_cd(&fw);
    assert!(h.wakes.take_one(ChannelId(1)), "the IDE-R channel was woken");
    let first = h.wake();
    assert_eq!(first.len(), 1, "the boot's first command");
    let cd = random_image(256 * 1024);
    let mut console = Console::new(cd.clone(), Vec::new());
    run_boot(&mut h, &mut console, first);
    let lines = console_lines(&sink);
    assert!(lines.contains("BIOS: booting from IDE-R CD-ROM"), "{lines}");
    assert!(lines.contains(&format!("IDE-R boot: cd read {} bytes sha256={}", cd.len(), sha256_hex(&cd))), "{lines}");
    assert!(!fw.take_pending_boot(UUID, std::time::Instant::now()), "served");
}

#[test]
fn a_boot_pending_before_the_session_starts_once_the_console_enables_ider() {
    let fw = firmware(FirmwareConfig::default());
    let service =
        RedirectionService::new(RedirectionConfig { admin_password: "P@ssw0rd".to_owned(), ..Default::default() })
            .with_firmware(fw.clone());
    boot_from_ider_cd(&fw);
    let (mut h, sink, _attached, replies) = ider_session_on(&service);
    assert_eq!(replies.len(), 3, "0x41, 0x49 and the boot's first command: {replies:02x?}");
    let cd = random_image(64 * 1024);
    run_boot(&mut h, &mut Console::new(cd.clone(), Vec::new()), vec![replies[2].clone()]);
    assert!(console_lines(&sink).contains(&format!("cd read {} bytes", cd.len())));
    // The session is recorded: a power off is refused while it is open, and freed when it ends.
    assert!(fw.with(UUID, |state, _, _| state.ider_open));
    drop(h);
    assert!(!fw.with(UUID, |state, _, _| state.ider_open));
}

#[test]
fn disabled_redirection_or_missing_consent_refuses_sessions_with_status_1() {
    for config in [
        FirmwareConfig { redirection_enabled: false, ..Default::default() },
        FirmwareConfig { consent: true, ..Default::default() },
    ] {
        let fw = firmware(config);
        let service =
            RedirectionService::new(RedirectionConfig { admin_password: "P@ssw0rd".to_owned(), ..Default::default() })
                .with_firmware(fw);
        for start in [START_IDER, START_SOL] {
            let mut h = Harness::new(&service, UUID);
            let replies = h.feed(&start);
            assert_eq!(replies.len(), 1);
            assert_eq!(replies[0][0], 0x11);
            assert_eq!(replies[0][1], STATUS_SESSION_REFUSED, "{replies:02x?}");
            assert!(h.closed);
        }
    }
}
