//! The redirection tap: a passive observer of the relays to AMT's redirection ports (16994 and
//! 16995). The relay passes every chunk of both directions through [`RelayTap`] before
//! forwarding it, untouched; the tap follows the message boundaries and learns the session's
//! kind (SOL, IDE-R, KVM), the AMT user the console logs in as (the username only, never a
//! password or digest), whether the device accepted the credentials and the session, and when
//! the session ends. From that it counts sessions and bytes in the metrics, records each session
//! in the store (`redirections`), and with `--record-sol` writes the SOL transcript (asciicast
//! v2) to `DATA_DIR/transcripts/UUID/ID.cast`.
//!
//! Cost: the tap does not copy the stream. It reads the type and length fields of each message
//! where they lie in the chunk, keeps at most a message's first bytes when they straddle two
//! chunks (a whole message only for the few it reads, authentication being the longest at
//! 1 KiB), and passes over data payloads with a counter. SOL data is copied only when recorded.
//! Nothing on the relay's path waits: store writes go through a bounded queue to one writer task
//! and transcript chunks to one writer task per session; when a queue is full the write is
//! dropped and counted (the row's end is written again, waiting, once the relay has ended).
//!
//! Failure: a stream that does not start as redirection (TLS on 16995, anything else) turns the
//! tap off for that relay and is recorded as `unparsed`, without an error. A parse failure later
//! counts `tether_redirection_tap_errors_total` and turns the tap off for that relay; the relay
//! goes on. A KVM session switches to RFB after authentication: the tap stops reading there.
//!
//! What it does not do: change, delay or reorder any byte; decrypt TLS; parse RFB or IDE-R
//! commands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::IntCounter;
use protocols::redir::{self, Limits, Message, MessageType, RedirError, Sender, SessionType};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;
use uuid::Uuid;

pub use crate::metrics::RedirKind;
use crate::metrics::{Direction, StoreWrite};
use crate::redir_log::{write_transcript, CastEvent, LogCommand, Recorder, RedirLog, TRANSCRIPT_CAP, TRANSCRIPT_QUEUE};
use crate::state::Shared;
use crate::store::{NewRedirection, RedirOutcome, RedirectionEnd};

impl From<SessionType> for RedirKind {
    fn from(kind: SessionType) -> Self {
        match kind {
            SessionType::Sol => RedirKind::Sol,
            SessionType::Ider => RedirKind::Ider,
            SessionType::Kvm => RedirKind::Kvm,
        }
    }
}

/// The redirection ports: plain (16994) and TLS (16995, which the tap finds unparsed).
pub const REDIRECTION_PORTS: [u16; 2] = [16994, 16995];

/// How long the end of a session may wait for room in the store queue once its relay ended.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// Why the tap stopped reading a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    Redir(#[from] RedirError),
    #[error("malformed {0:?}: {1}")]
    Malformed(MessageType, &'static str),
}

/// What the tap learns, as it learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapEvent<'a> {
    /// StartRedirectionSession: the session's kind.
    Started(RedirKind),
    /// The device accepted the session (StartRedirectionSessionReply with status 0).
    Accepted,
    /// The stream is not redirection the tap can read (TLS, or another protocol): the tap is off.
    Unparsed,
    /// The AMT username of an AuthenticateSession.
    DeviceUser(&'a str),
    /// The device accepted the credentials.
    Authenticated,
    /// The device accepted StartSOLRedirection.
    SolRunning,
    /// The session ended in the protocol: ended, refused (in use), authentication or start
    /// refused. Sent once.
    Ended(RedirOutcome),
    /// The tap could not parse the stream and is off.
    Error(&'a TapError),
    /// SOL data: keystrokes (from the console) or screen output (from the device), as they pass.
    SolData { from: Sender, data: &'a [u8] },
}

/// Where the tap's findings go.
pub trait TapSink {
    fn event(&mut self, event: TapEvent<'_>);
    /// Every chunk's size, parsed or not.
    fn bytes(&mut self, from: Sender, n: usize);
}

/// Where the tap is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No byte yet.
    Waiting,
    Parsing,
    /// Not reading any more: unparsed, failed, or a KVM session past its authentication.
    Off,
}

/// Message framing of one direction.
#[derive(Debug, Default)]
struct Framer {
    /// The first bytes of the current message, when they straddle chunks.
    head: Vec<u8>,
    /// The current message's length and the bytes of it the tap reads, once known.
    len: Option<(usize, usize)>,
    /// Bytes of the current message still to pass over.
    skip: usize,
    /// Whether those bytes are SOL data.
    skip_sol: bool,
}

/// Bytes `message_len` may need to name a message's length (StartIDERRedirectionReply's OEM
/// length is at offset 29).
const LEN_PROBE: usize = 30;

/// The bytes of a message of type `ty` (and length `len`) the tap reads; the rest it passes over.
fn read_len(ty: MessageType, len: usize) -> usize {
    use MessageType as T;
    let wanted = match ty {
        T::StartRedirectionSession | T::AuthenticateSession => len,
        // Status, method and payload length: enough to tell a digest challenge from a verdict.
        T::AuthenticateSessionReply => 9,
        // The status byte.
        T::StartRedirectionSessionReply | T::StartSolReply | T::StartIderReply => 2,
        // The header and the length: the payload is passed over (or to the recorder).
        T::SolDataToHost | T::SolDataFromHost => 10,
        _ => 1,
    };
    wanted.min(len)
}

/// The per-relay state machine (sans I/O): fed the chunks of both directions, it tells its
/// [`TapSink`] what it learns.
#[derive(Debug)]
pub struct Tap<S> {
    sink: S,
    limits: Limits,
    phase: Phase,
    kind: Option<RedirKind>,
    ended: bool,
    console: Framer,
    device: Framer,
}

impl<S: TapSink> Tap<S> {
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            limits: Limits::default(),
            phase: Phase::Waiting,
            kind: None,
            ended: false,
            console: Framer::default(),
            device: Framer::default(),
        }
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    pub fn into_sink(self) -> S {
        self.sink
    }

    /// Whether the tap still reads the stream.
    pub fn parsing(&self) -> bool {
        self.phase != Phase::Off
    }

    /// The kind learnt so far.
    pub fn kind(&self) -> Option<RedirKind> {
        self.kind
    }

    /// A chunk the technician's console sent toward the device.
    pub fn from_console(&mut self, chunk: &[u8]) {
        self.feed(Sender::Console, chunk)
    }

    /// A chunk the device sent toward the console.
    pub fn from_device(&mut self, chunk: &[u8]) {
        self.feed(Sender::Device, chunk)
    }

    fn feed(&mut self, from: Sender, chunk: &[u8]) {
        self.sink.bytes(from, chunk.len());
        if chunk.is_empty() {
            return;
        }
        if self.phase == Phase::Waiting {
            // The console speaks first, and its first message is StartRedirectionSession. TLS
            // (a 0x16 record) or anything else: not ours to read.
            if from == Sender::Console && chunk[0] == MessageType::StartRedirectionSession as u8 {
                self.phase = Phase::Parsing;
            } else {
                self.phase = Phase::Off;
                self.sink.event(TapEvent::Unparsed);
                return;
            }
        }
        if self.phase != Phase::Parsing {
            return;
        }
        if let Err(err) = self.parse(from, chunk) {
            self.phase = Phase::Off;
            self.sink.event(TapEvent::Error(&err));
        }
    }

    fn framer(&mut self, from: Sender) -> &mut Framer {
        match from {
            Sender::Console => &mut self.console,
            Sender::Device => &mut self.device,
        }
    }

    /// Follows the messages of `chunk`, reading the few bytes that matter.
    fn parse(&mut self, from: Sender, chunk: &[u8]) -> Result<(), TapError> {
        let limits = self.limits;
        let mut pos = 0;
        while pos < chunk.len() && self.phase == Phase::Parsing {
            let rest = &chunk[pos..];
            let framer = self.framer(from);
            if framer.skip > 0 {
                let n = framer.skip.min(rest.len());
                framer.skip -= n;
                if framer.skip_sol {
                    self.sink.event(TapEvent::SolData { from, data: &rest[..n] });
                }
                pos += n;
                continue;
            }
            if framer.head.is_empty() {
                // The whole of what the tap reads is in this chunk: read it where it lies.
                if let Some(len) = redir::message_len(rest, from, &limits)? {
                    let ty = message_type(rest[0]);
                    let read = read_len(ty, len);
                    if rest.len() >= read {
                        pos += read;
                        self.message(from, ty, &rest[..read], len - read)?;
                        continue;
                    }
                }
            }
            // Straddling chunks: keep the first bytes until the length, then the bytes read, are
            // all there.
            let framer = self.framer(from);
            let before = framer.head.len();
            let want = framer.len.map_or(LEN_PROBE, |(_, read)| read);
            let take = want.saturating_sub(before).min(rest.len());
            framer.head.extend_from_slice(&rest[..take]);
            pos += take;
            let (len, read) = match framer.len {
                Some(known) => known,
                None => match redir::message_len(&framer.head, from, &limits)? {
                    None => continue,
                    Some(len) => {
                        let read = read_len(message_type(framer.head[0]), len);
                        // Bytes taken past the message's end go back to the chunk (they all
                        // came from it: the length was unknown before).
                        let excess = framer.head.len().saturating_sub(len);
                        framer.head.truncate(framer.head.len() - excess);
                        pos = pos.saturating_sub(excess);
                        framer.len = Some((len, read));
                        (len, read)
                    }
                },
            };
            if framer.head.len() >= read {
                let head = std::mem::take(&mut framer.head);
                framer.len = None;
                let taken = head.len();
                self.message(from, message_type(head[0]), &head[..read], len.saturating_sub(taken))?;
                if taken > read && self.framer(from).skip_sol {
                    // SOL data taken while looking for the length.
                    self.sink.event(TapEvent::SolData { from, data: &head[read..] });
                }
                // Keep a small buffer's allocation for the next straddling message.
                if head.capacity() <= 2 * LEN_PROBE {
                    let framer = self.framer(from);
                    framer.head = head;
                    framer.head.clear();
                }
            }
        }
        Ok(())
    }

    /// One message: `head` is its first `read_len` bytes, `skip` how many of its bytes are still
    /// to come.
    fn message(&mut self, from: Sender, ty: MessageType, head: &[u8], skip: usize) -> Result<(), TapError> {
        use MessageType as T;
        let framer = self.framer(from);
        framer.skip = skip;
        framer.skip_sol = matches!(ty, T::SolDataToHost | T::SolDataFromHost);
        let status = head.get(1).copied().unwrap_or_default();
        match ty {
            T::StartRedirectionSession => {
                let Some((Message::StartRedirectionSession { session_type }, _)) =
                    redir::decode(head, from, &self.limits)?
                else {
                    return Err(TapError::Malformed(ty, "incomplete"));
                };
                if self.kind.is_none() {
                    let kind = RedirKind::from(session_type);
                    self.kind = Some(kind);
                    self.sink.event(TapEvent::Started(kind));
                }
            }
            T::StartRedirectionSessionReply if status == 0 => self.sink.event(TapEvent::Accepted),
            T::StartRedirectionSessionReply => self.end(RedirOutcome::RefusedInUse),
            T::AuthenticateSession => {
                if let Some(user) = username(head, &self.limits)? {
                    let user = String::from_utf8_lossy(user);
                    self.sink.event(TapEvent::DeviceUser(&user));
                }
            }
            T::AuthenticateSessionReply => {
                let method = head[4];
                let payload = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
                let digest_challenge = matches!(method, 3 | 4) && payload > 0;
                if method == 0 {
                    // The answer to a query: the methods the device supports, not a verdict.
                } else if status == 0 {
                    self.sink.event(TapEvent::Authenticated);
                    if self.kind == Some(RedirKind::Kvm) {
                        // RFB from here on.
                        self.phase = Phase::Off;
                    }
                } else if !digest_challenge {
                    self.end(RedirOutcome::AuthFailed);
                }
            }
            T::StartSolReply if status == 0 => self.sink.event(TapEvent::SolRunning),
            T::StartSolReply | T::StartIderReply if status != 0 => self.end(RedirOutcome::StartFailed),
            T::EndRedirectionSession | T::EndSolReply | T::EndIderReply => self.end(RedirOutcome::Ended),
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, outcome: RedirOutcome) {
        if !self.ended {
            self.ended = true;
            self.sink.event(TapEvent::Ended(outcome));
        }
    }
}

/// The type of a byte `message_len` accepted.
fn message_type(code: u8) -> MessageType {
    MessageType::from_u8(code).unwrap_or(MessageType::SessionRecorded)
}

/// The username of an AuthenticateSession (`message` whole): the first string of a
/// username/password or digest payload; none for a query or Kerberos. The password and digest
/// fields are not read.
fn username<'a>(message: &'a [u8], limits: &Limits) -> Result<Option<&'a [u8]>, TapError> {
    let malformed = |detail| TapError::Malformed(MessageType::AuthenticateSession, detail);
    let method = message.get(4).copied().ok_or(malformed("too short"))?;
    if !matches!(method, 1 | 3 | 4) {
        return Ok(None);
    }
    let payload = message.get(9..).ok_or(malformed("too short"))?;
    let Some((&ulen, rest)) = payload.split_first() else {
        return Err(malformed("the payload has no username"));
    };
    let ulen = usize::from(ulen);
    if ulen > limits.max_auth_string {
        return Err(RedirError::TooLong { field: "username", len: ulen, max: limits.max_auth_string }.into());
    }
    let user = rest.get(..ulen).ok_or(malformed("the username runs past the payload"))?;
    Ok((!user.is_empty()).then_some(user))
}

// ---------------------------------------------------------------------------------------------
// The gateway's side: metrics, store records and the transcript of one relay.

/// The gateway's [`TapSink`]: metrics, store records and the transcript of one relay.
#[derive(Debug)]
pub struct Observer {
    shared: Arc<Shared>,
    log: RedirLog,
    key: u64,
    row: NewRedirection,
    /// The session's kind, once counted in the metrics (`Unknown` for unparsed streams).
    kind: Option<RedirKind>,
    /// Whether the session is counted in `tether_redirection_sessions_active`.
    active: bool,
    /// A session the device has not accepted yet has no row: a console refused because the
    /// kind is held must not find itself listed as the holder. Written once accepted, or whole
    /// when the relay ends.
    unwritten: bool,
    ended: Option<RedirOutcome>,
    failed: bool,
    to_device: u64,
    from_device: u64,
    /// Bytes seen before the kind was known, counted once it is.
    uncounted: (u64, u64),
    counters: Option<(IntCounter, IntCounter)>,
    recorder: Option<Recorder>,
}

impl Observer {
    pub fn new(shared: Arc<Shared>, uuid: Uuid, technician: String, port: u16) -> Self {
        let log = shared.redirections.clone();
        let key = log.next_key.fetch_add(1, Ordering::Relaxed);
        let row = NewRedirection {
            uuid,
            kind: RedirKind::Unknown.as_str(),
            technician,
            device_user: None,
            port,
            instance: shared.instance.clone(),
            started_at: OffsetDateTime::now_utc(),
            outcome: RedirOutcome::Active,
        };
        Self {
            shared,
            log,
            key,
            row,
            kind: None,
            active: false,
            unwritten: false,
            ended: None,
            failed: false,
            to_device: 0,
            from_device: 0,
            uncounted: (0, 0),
            counters: None,
            recorder: None,
        }
    }

    fn send(&self, command: LogCommand) {
        if !self.log.try_send(command) {
            self.shared.metrics.store_write_dropped(StoreWrite::Redirection);
        }
    }

    /// The session begins: counted, and recorded now, or once the device accepts it (`defer`).
    fn begin(&mut self, kind: RedirKind, outcome: RedirOutcome, defer: bool) {
        if self.kind.is_some() {
            return;
        }
        let metrics = &self.shared.metrics;
        metrics.redirection_started(kind);
        let to = metrics.redirection_bytes(kind, Direction::ToDevice);
        let from = metrics.redirection_bytes(kind, Direction::FromDevice);
        to.inc_by(self.uncounted.0);
        from.inc_by(self.uncounted.1);
        self.uncounted = (0, 0);
        self.counters = Some((to, from));
        self.kind = Some(kind);
        self.active = true;
        self.row.kind = kind.as_str();
        self.row.outcome = outcome;
        self.row.started_at = OffsetDateTime::now_utc();
        self.unwritten = defer;
        if !defer {
            self.send(LogCommand::Start { key: self.key, row: self.row.clone() });
        }
    }

    /// The device accepted the session: its row, if not written yet.
    fn accepted(&mut self) {
        if self.unwritten && self.ended.is_none() {
            self.unwritten = false;
            self.send(LogCommand::Start { key: self.key, row: self.row.clone() });
        }
    }

    /// SOL runs: with recording on, its transcript starts (a refused or failed session has none).
    fn record(&mut self) {
        if self.log.transcripts.is_none()
            || self.kind != Some(RedirKind::Sol)
            || self.ended.is_some()
            || self.recorder.is_some()
        {
            return;
        }
        let (path_tx, path_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(TRANSCRIPT_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let header = serde_json::json!({
            "version": 2,
            "width": 80,
            "height": 25,
            "timestamp": OffsetDateTime::now_utc().unix_timestamp(),
            "title": format!("SOL {} by {}", self.row.uuid, self.row.technician),
        });
        tokio::spawn(write_transcript(path_rx, rx, header, Arc::clone(&dropped), TRANSCRIPT_CAP));
        self.recorder = Some(Recorder { tx, started: Instant::now(), dropped });
        self.send(LogCommand::Transcript { key: self.key, uuid: self.row.uuid, reply: path_tx });
    }

    /// The session ends (in the protocol, or with its relay): the gauge goes down once, the
    /// transcript closes, and the row ends.
    fn end(&mut self, outcome: RedirOutcome, last: bool) {
        if self.ended.is_none() {
            self.ended = Some(outcome);
            if let (true, Some(kind)) = (self.active, self.kind) {
                self.shared.metrics.redirection_ended(kind);
                self.active = false;
            }
            // Its writer flushes and closes the file once the queue is drained.
            self.recorder = None;
        }
        let end = RedirectionEnd {
            ended_at: OffsetDateTime::now_utc(),
            outcome: self.ended.unwrap_or(outcome),
            bytes_to_device: self.to_device,
            bytes_from_device: self.from_device,
        };
        // A session never accepted is written whole, ended, so it is never listed as open. At
        // the relay's end the row goes along too, in case its start was dropped.
        let whole = (self.unwritten || last).then(|| Box::new(self.row.clone()));
        self.unwritten = false;
        let command = LogCommand::End { key: self.key, end, whole, last };
        if last {
            // Not on the relay's path: the relay has ended. Wait for room, a while.
            let tx = self.log.tx.clone();
            let metrics_shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                if tokio::time::timeout(FINISH_WAIT, tx.send(command)).await.is_err() {
                    metrics_shared.metrics.store_write_dropped(StoreWrite::Redirection);
                }
            });
        } else {
            self.send(command);
        }
    }

    /// The relay ended: the session's last record.
    fn finish(&mut self) {
        match self.kind {
            // Not a byte either way: nothing happened.
            None if self.to_device + self.from_device == 0 => {}
            None => {
                // Bytes from a side that was not read (e.g. only the device spoke).
                self.begin(RedirKind::Unknown, RedirOutcome::Unparsed, false);
                self.end(RedirOutcome::Unparsed, true);
            }
            Some(_) => {
                let outcome = if self.failed {
                    RedirOutcome::TapError
                } else if self.row.outcome == RedirOutcome::Unparsed {
                    RedirOutcome::Unparsed
                } else {
                    RedirOutcome::Closed
                };
                self.end(outcome, true);
            }
        }
    }
}

impl TapSink for Observer {
    fn event(&mut self, event: TapEvent<'_>) {
        match event {
            TapEvent::Started(kind) => self.begin(kind, RedirOutcome::Active, true),
            TapEvent::Accepted => self.accepted(),
            TapEvent::Unparsed => self.begin(RedirKind::Unknown, RedirOutcome::Unparsed, false),
            TapEvent::DeviceUser(user) => {
                if self.row.device_user.as_deref() != Some(user) {
                    self.row.device_user = Some(user.to_string());
                    self.send(LogCommand::User { key: self.key, user: user.to_string() });
                }
            }
            TapEvent::SolRunning => self.record(),
            TapEvent::Authenticated => {}
            TapEvent::Ended(outcome) => {
                match outcome {
                    RedirOutcome::AuthFailed => self.shared.metrics.redirection_auth_failure(),
                    RedirOutcome::RefusedInUse => {
                        self.shared.metrics.redirection_refused(self.kind.unwrap_or(RedirKind::Unknown))
                    }
                    _ => {}
                }
                self.end(outcome, false);
            }
            TapEvent::Error(err) => {
                self.shared.metrics.redirection_tap_error();
                self.failed = true;
                debug!(uuid = %self.row.uuid, port = self.row.port, error = %err, "redirection tap stopped reading");
                if self.kind.is_none() {
                    self.begin(RedirKind::Unknown, RedirOutcome::Active, false);
                } else {
                    // Unread from here on: whether the device accepts is never seen.
                    self.accepted();
                }
            }
            TapEvent::SolData { from, data } => {
                if let Some(recorder) = &self.recorder {
                    let event = CastEvent {
                        at: recorder.started.elapsed(),
                        input: from == Sender::Console,
                        data: data.to_vec(),
                    };
                    if recorder.tx.try_send(event).is_err() {
                        recorder.dropped.fetch_add(1, Ordering::Relaxed);
                        self.shared.metrics.transcript_dropped();
                    }
                }
            }
        }
    }

    fn bytes(&mut self, from: Sender, n: usize) {
        let n = n as u64;
        let (total, uncounted, counter) = match from {
            Sender::Console => (&mut self.to_device, &mut self.uncounted.0, self.counters.as_ref().map(|c| &c.0)),
            Sender::Device => (&mut self.from_device, &mut self.uncounted.1, self.counters.as_ref().map(|c| &c.1)),
        };
        *total += n;
        match counter {
            Some(counter) => counter.inc_by(n),
            None => *uncounted += n,
        }
    }
}

/// The tap of one relay, as the relay holds it: both directions feed it from the relay's one
/// task (the lock is never contended nor held across an await).
#[derive(Debug)]
pub struct RelayTap {
    tap: Mutex<Tap<Observer>>,
}

impl RelayTap {
    /// A tap for a relay to `port` of `uuid` opened by `technician`; `None` for ports other than
    /// the redirection ports.
    pub fn for_relay(shared: &Arc<Shared>, uuid: Uuid, technician: &str, port: u16) -> Option<RelayTap> {
        REDIRECTION_PORTS.contains(&port).then(|| RelayTap {
            tap: Mutex::new(Tap::new(Observer::new(Arc::clone(shared), uuid, technician.to_string(), port))),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tap<Observer>> {
        self.tap.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn from_console(&self, chunk: &[u8]) {
        self.lock().from_console(chunk)
    }

    pub fn from_device(&self, chunk: &[u8]) {
        self.lock().from_device(chunk)
    }

    /// The relay ended: ends the session's record (and transcript).
    pub fn finish(self) {
        let mut tap = self.tap.into_inner().unwrap_or_else(PoisonError::into_inner);
        tap.sink_mut().finish();
    }
}

#[cfg(test)]
#[path = "redir_tap_test.rs"]
mod tests;
