//! The redirection service (device ports 16994, and 16995 without its TLS layer): Intel AMT's
//! SOL and IDE-R as the firmware speaks them to a console (amtterm, amtider, MeshCommander), with
//! the codec of [`protocols::redir`].
//!
//! Per channel: StartRedirectionSession (0x10) gets a 13-byte reply (0x11, no OEM data); then
//! authentication against the device's admin account ([`RedirectionConfig::admin_user`]): a query
//! lists methods 1, 3 and 4; username/password (1) is compared; digest (3 and 4) gets a challenge
//! (status 1; realm `Digest:` and 32 hex digits, a random 32-hex-digit nonce, qop `auth` for 4)
//! and the answer is checked with [`redir::verify`]. Wrong credentials, or Kerberos, get status 1,
//! and the channel closes after [`RedirectionConfig::reject_linger`] (or at the console's EOF).
//! Before authentication, any SOL or IDE-R message closes the channel. Then [`sol`] or [`ider`].
//!
//! One session of each kind per device, as AMT holds one SOL and one IDE-R session at a time
//! (keyed by device UUID, since a fleet shares one service): a StartRedirectionSession for a kind
//! already in use gets a 0x11 with **status 1** and the channel closes once it is sent. The slot
//! is freed when the holding channel closes, however it closes (the handler is dropped), or as
//! soon as it is refused authentication. KVM is refused the same way (status 1).
//!
//! Every reply is written as a message of its own ([`Outbox::end_message`]): amtterm reads some
//! replies with one read that consumes its whole buffer (redirection.md §1.8), so no two device
//! messages share a CHANNEL_DATA.
//!
//! A channel whose first byte is not 0x10 is not a console: it fails to parse and is closed, as
//! firmware does.
//!
//! A bad message (undecodable, or out of place) is logged and closes the channel. Buffers are
//! capped: the input at one message of [`redir::Limits::max_message_len`], the shell's pending
//! output at [`console::SINK_CAPACITY`], the keystrokes at a few messages.

pub mod console;
pub mod ider;
pub mod sol;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use protocols::redir::{
    self, AuthReply, AuthReplyBody, AuthRequest, Credentials, DigestChallenge, DigestMethod, Message, SessionReply,
    SessionType, Versions,
};
use rand::Rng;
use uuid::Uuid;

pub use console::{Attachment, SerialConsoles, SerialSink};

use super::service::{ChannelHandler, ChannelInfo, ChannelWaker, Outbox, Service};
use super::wsman::state::SessionGuard;
use super::wsman::Firmware;
use ider::IderFirmware;
use sol::SolSession;

/// The status of a StartRedirectionSessionReply refusing a session because the device already
/// has one of that kind (or does not do KVM).
pub const STATUS_SESSION_REFUSED: u8 = 1;

/// Output room a handler wants before it handles another message (the largest burst one
/// message causes is a reply plus an IDE-R command, under 100 bytes).
const RESERVE: usize = 256;

/// What the redirection service of a simulated device does.
#[derive(Clone)]
pub struct RedirectionConfig {
    /// The admin account consoles authenticate as (`--admin-user`, default `admin`).
    pub admin_user: String,
    /// Its password (`--admin-password`, default `admin`).
    pub admin_password: String,
    /// The program SOL runs on a pseudo-terminal (`--sol-shell`, default `/bin/sh`).
    pub sol_shell: PathBuf,
    /// Boot from IDE-R once a console enables it (`--boot-ider`).
    pub boot_ider: bool,
    /// Blocks per READ(10) of the simulated BIOS (`--ider-read-blocks`, default 32).
    pub ider_read_blocks: u16,
    /// The device's IDE-R read buffer size announced in 0x41 (`--ider-buffer`, default 8192).
    pub ider_buffer: u16,
    /// How long the simulated BIOS waits for a command's answer (30 s).
    pub command_timeout: Duration,
    /// Heartbeat interval of SOL (always) and IDE-R (when idle): 2 s, well under amtterm's 20 s.
    pub heartbeat: Duration,
    /// How long a channel refused authentication stays open for the console to close it (2 s).
    pub reject_linger: Duration,
    /// Parser limits for the console's messages.
    pub limits: redir::Limits,
}

impl Default for RedirectionConfig {
    fn default() -> Self {
        Self {
            admin_user: "admin".to_owned(),
            admin_password: "admin".to_owned(),
            sol_shell: PathBuf::from("/bin/sh"),
            boot_ider: false,
            ider_read_blocks: 32,
            ider_buffer: 8192,
            command_timeout: ider::COMMAND_TIMEOUT,
            heartbeat: Duration::from_secs(2),
            reject_linger: Duration::from_secs(2),
            limits: redir::Limits::default(),
        }
    }
}

impl fmt::Debug for RedirectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedirectionConfig")
            .field("admin_user", &self.admin_user)
            .field("admin_password", &"<redacted>")
            .field("sol_shell", &self.sol_shell)
            .field("boot_ider", &self.boot_ider)
            .field("ider_read_blocks", &self.ider_read_blocks)
            .field("ider_buffer", &self.ider_buffer)
            .field("command_timeout", &self.command_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("reject_linger", &self.reject_linger)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The sessions in use, by device and kind.
#[derive(Debug, Default)]
struct Slots {
    held: Mutex<HashSet<(Uuid, SessionType)>>,
}

impl Slots {
    fn take(self: &Arc<Self>, uuid: Uuid, kind: SessionType) -> Option<SlotGuard> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.insert((uuid, kind)).then(|| SlotGuard { slots: Arc::clone(self), key: (uuid, kind) })
    }
}

/// A device's session of one kind; freed when dropped.
#[derive(Debug)]
struct SlotGuard {
    slots: Arc<Slots>,
    key: (Uuid, SessionType),
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.held.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

/// The redirection service. Clones share the session slots and serial consoles, so serve 16994
/// and 16995 of a fleet with clones of one value.
#[derive(Debug, Clone)]
pub struct RedirectionService {
    config: Arc<RedirectionConfig>,
    slots: Arc<Slots>,
    consoles: SerialConsoles,
    firmware: Option<Firmware>,
}

impl Default for RedirectionService {
    fn default() -> Self {
        Self::new(RedirectionConfig::default())
    }
}

impl RedirectionService {
    /// A service with `config`.
    pub fn new(config: RedirectionConfig) -> Self {
        Self { config: Arc::new(config), slots: Arc::default(), consoles: SerialConsoles::new(), firmware: None }
    }

    /// This service gated by the devices' firmware state (shared with WS-MAN): a session is
    /// refused (status 1) while its kind is disabled in AMT_RedirectionService, the listener is
    /// off, or user consent is required and not given; open sessions are recorded there (a power
    /// off or cycle is refused during one), and an IDE-R session serves the boots the firmware
    /// leaves pending. The firmware's serial consoles become this service's.
    pub fn with_firmware(mut self, firmware: Firmware) -> Self {
        self.consoles = firmware.consoles().clone();
        self.firmware = Some(firmware);
        self
    }

    /// The devices' serial consoles (where the firmware prints).
    pub fn consoles(&self) -> &SerialConsoles {
        &self.consoles
    }

    /// A handler for a channel of device `uuid` (what [`Service::open`] returns).
    pub fn handler(&self, uuid: Uuid, waker: ChannelWaker) -> RedirectionChannel {
        RedirectionChannel {
            config: Arc::clone(&self.config),
            slots: Arc::clone(&self.slots),
            consoles: self.consoles.clone(),
            firmware: self.firmware.clone(),
            uuid,
            waker,
            input: BytesMut::new(),
            kind: None,
            slot: None,
            session: None,
            challenge: None,
            authenticated: false,
            mode: Mode::Start,
        }
    }
}

impl Service for RedirectionService {
    fn open(&self, channel: &ChannelInfo) -> Option<Box<dyn ChannelHandler>> {
        Some(Box::new(self.handler(channel.uuid, channel.waker.clone())))
    }
}

/// Where a channel is.
#[derive(Debug)]
enum Mode {
    /// Nothing received yet.
    Start,
    /// Session manager phase (0x10 seen; authentication, then waiting for StartSOL/StartIDER).
    Session,
    Sol(Box<SolSession>),
    /// After EndSOL: stray keystrokes are ignored until EndRedirectionSession.
    SolEnded,
    Ider(Box<IderFirmware>),
    /// After EndIDER.
    IderEnded,
    /// Closing; at `until` when a refused console has not closed by then.
    Closing {
        until: Option<Instant>,
    },
}

/// What handling one message came to.
enum Handled {
    Done,
    /// Not handled now (the keystroke queue is full); try again after a wake.
    Later,
}

/// One redirection channel. See the module doc.
pub struct RedirectionChannel {
    config: Arc<RedirectionConfig>,
    slots: Arc<Slots>,
    consoles: SerialConsoles,
    firmware: Option<Firmware>,
    uuid: Uuid,
    waker: ChannelWaker,
    /// Received bytes not yet decoded (at most one message).
    input: BytesMut,
    kind: Option<SessionType>,
    slot: Option<SlotGuard>,
    /// The session as the firmware state records it (freed with the slot).
    session: Option<SessionGuard>,
    /// The digest challenge sent: (realm, nonce).
    challenge: Option<(Bytes, Bytes)>,
    authenticated: bool,
    mode: Mode,
}

impl fmt::Debug for RedirectionChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedirectionChannel")
            .field("uuid", &self.uuid)
            .field("kind", &self.kind)
            .field("authenticated", &self.authenticated)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Writes `message` as a message of its own.
fn send(message: &Message, out: &mut Outbox<'_>) {
    let mut buf = Vec::with_capacity(32);
    redir::encode(message, &mut buf);
    out.write(&buf);
    out.end_message();
}

/// A session kind as logs name it.
fn session_name(kind: SessionType) -> &'static str {
    match kind {
        SessionType::Sol => "SOL",
        SessionType::Ider => "IDE-R",
        SessionType::Kvm => "KVM",
    }
}

/// `len` random bytes as hex digits.
fn random_hex(len: usize, upper: bool) -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(len * 2);
    for _ in 0..len {
        let byte: u8 = rng.random();
        let _ = if upper { write!(s, "{byte:02X}") } else { write!(s, "{byte:02x}") };
    }
    s
}

impl RedirectionChannel {
    fn close(&mut self, out: &mut Outbox<'_>, until: Option<Instant>) {
        if until.is_none() {
            out.close();
        }
        self.slot = None;
        self.session = None;
        self.mode = Mode::Closing { until };
    }

    /// A protocol error by the console: log, close.
    fn bad(&mut self, out: &mut Outbox<'_>, what: &dyn fmt::Display) {
        tracing::warn!("redirection: {what}; closing the channel");
        self.close(out, None);
    }

    /// Decodes and handles the buffered messages while there is room for the replies.
    fn process(&mut self, out: &mut Outbox<'_>) {
        loop {
            if matches!(self.mode, Mode::Closing { .. }) || out.is_closing() {
                self.input.clear();
                return;
            }
            if out.room() < RESERVE || self.input.is_empty() {
                return;
            }
            let (message, len) = match redir::decode(&self.input, redir::Sender::Console, &self.config.limits) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => return,
                Err(err) => return self.bad(out, &err),
            };
            match self.handle(message, out) {
                Handled::Done => self.input.advance(len),
                Handled::Later => return,
            }
        }
    }

    fn handle(&mut self, message: Message, out: &mut Outbox<'_>) -> Handled {
        let now = Instant::now();
        match message {
            Message::StartRedirectionSession { session_type } => {
                if self.kind.is_some() {
                    self.bad(out, &"a second StartRedirectionSession on one channel");
                    return Handled::Done;
                }
                self.start_session(session_type, out);
            }
            Message::AuthenticateSession(request) => {
                if self.kind.is_none() || self.authenticated {
                    self.bad(out, &"AuthenticateSession out of place");
                    return Handled::Done;
                }
                self.authenticate(request, now, out);
            }
            Message::EndRedirectionSession => {
                tracing::debug!("redirection: the console ended the session");
                self.close(out, None);
            }
            Message::StartSol { settings, .. } => {
                if !self.authenticated || self.kind != Some(SessionType::Sol) || !matches!(self.mode, Mode::Session) {
                    self.bad(out, &"StartSOLRedirection before authentication or out of place");
                    return Handled::Done;
                }
                let heartbeat = self.config.heartbeat;
                match SolSession::start(
                    &self.config.sol_shell,
                    self.uuid,
                    &self.consoles,
                    self.waker.clone(),
                    settings,
                    heartbeat,
                    out,
                ) {
                    Ok(sol) => {
                        tracing::info!("SOL session started");
                        self.mode = Mode::Sol(Box::new(sol));
                    }
                    Err(err) => {
                        tracing::error!("redirection: {err}");
                        send(&Message::StartSolReply { status: 1, seq: 0, settings }, out);
                        self.close(out, None);
                    }
                }
            }
            Message::StartIder(_) | Message::StartIderAmtider(_) => {
                if !self.authenticated || self.kind != Some(SessionType::Ider) || !matches!(self.mode, Mode::Session) {
                    self.bad(out, &"StartIDERRedirection before authentication or out of place");
                    return Handled::Done;
                }
                tracing::info!("IDE-R session started");
                let fw = IderFirmware::open(
                    Arc::clone(&self.config),
                    self.uuid,
                    self.consoles.clone(),
                    self.firmware.clone(),
                    now,
                    out,
                );
                self.mode = Mode::Ider(Box::new(fw));
            }
            message => return self.in_session(message, now, out),
        }
        Handled::Done
    }

    /// SOL and IDE-R messages after their start.
    fn in_session(&mut self, message: Message, now: Instant, out: &mut Outbox<'_>) -> Handled {
        match (&mut self.mode, message) {
            (Mode::Sol(sol), Message::SolDataToHost { data, .. }) => {
                if !sol.type_keys(data) {
                    return Handled::Later;
                }
            }
            (Mode::Sol(_) | Mode::SolEnded, Message::SolKeepAlivePing { seq }) => {
                send(&Message::SolKeepAlivePong { seq }, out)
            }
            (
                Mode::Sol(_) | Mode::SolEnded,
                Message::SolControlsToHost { .. } | Message::SolHeartbeat { .. } | Message::SolKeepAlivePong { .. },
            ) => {}
            (Mode::Sol(_), Message::EndSol { seq }) => {
                send(&Message::EndSolReply { seq }, out);
                tracing::info!("SOL session ended by the console");
                // Dropping the session kills the shell.
                self.mode = Mode::SolEnded;
            }
            // amtterm sends its ^] as data after EndSOL (redirection.md §1.8).
            (Mode::SolEnded, Message::SolDataToHost { .. }) => {}
            (Mode::Ider(fw), message) => match fw.handle(message, now, out) {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!("IDE-R session ended by the console");
                    self.mode = Mode::IderEnded;
                }
                Err(err) => self.bad(out, &err),
            },
            (Mode::IderEnded, Message::IderHeartbeat { .. } | Message::IderKeepAlivePong { .. }) => {}
            (_, message) => {
                let what = format!("{:?} out of place", message.message_type());
                self.bad(out, &what);
            }
        }
        Handled::Done
    }

    fn start_session(&mut self, kind: SessionType, out: &mut Outbox<'_>) {
        let mut slot = match kind {
            SessionType::Kvm => None,
            kind => self.slots.take(self.uuid, kind),
        };
        let mut session = None;
        if let (Some(firmware), Some(_)) = (&self.firmware, &slot) {
            let waker = (kind == SessionType::Ider).then(|| self.waker.clone());
            match firmware.start_session(self.uuid, kind, waker) {
                Ok(guard) => session = Some(guard),
                Err(refusal) => {
                    tracing::info!("redirection: {} session refused: {refusal}", session_name(kind));
                    slot = None;
                }
            }
        }
        let status = if slot.is_some() { 0 } else { STATUS_SESSION_REFUSED };
        let reply = SessionReply {
            status,
            versions: Versions { protocol_major: 1, protocol_minor: 0, firmware_major: 0, firmware_minor: 0 },
            oem_iana: 0,
            oem_data: Bytes::new(),
        };
        send(&Message::StartRedirectionSessionReply(reply), out);
        if slot.is_none() {
            tracing::info!("redirection: {} session refused (one is open already, or KVM)", session_name(kind));
            self.close(out, None);
            return;
        }
        self.kind = Some(kind);
        self.slot = slot;
        self.session = session;
        self.mode = Mode::Session;
    }

    fn authenticate(&mut self, request: AuthRequest, now: Instant, out: &mut Outbox<'_>) {
        let reply = |status, body| Message::AuthenticateSessionReply(AuthReply { status, body });
        match &request {
            AuthRequest::Query => {
                send(&reply(0, AuthReplyBody::Methods(Bytes::from_static(&[1, 3, 4]))), out);
                return;
            }
            AuthRequest::Digest(auth) if self.challenge.is_none() || auth.nonce.is_empty() => {
                let realm = Bytes::from(format!("Digest:{}", random_hex(16, true)));
                let nonce = Bytes::from(random_hex(16, false));
                let qop = match auth.method {
                    DigestMethod::Rfc2617 => Bytes::from_static(b"auth"),
                    DigestMethod::Rfc2069 => Bytes::new(),
                };
                let challenge = DigestChallenge { realm: realm.clone(), nonce: nonce.clone(), qop };
                self.challenge = Some((realm, nonce));
                send(&reply(1, AuthReplyBody::Digest { method: auth.method, challenge: Some(challenge) }), out);
                return;
            }
            _ => {}
        }
        let (realm, nonce) = self.challenge.clone().unwrap_or_default();
        let credentials = Credentials {
            username: self.config.admin_user.as_bytes(),
            password: self.config.admin_password.as_bytes(),
            realm: &realm,
            nonce: &nonce,
        };
        let result = redir::verify(&request, &credentials);
        let body = match &request {
            AuthRequest::Digest(auth) => AuthReplyBody::Digest { method: auth.method, challenge: None },
            AuthRequest::Kerberos { .. } => AuthReplyBody::Kerberos { token: Bytes::new() },
            _ => AuthReplyBody::UsernamePassword,
        };
        match result {
            Ok(()) => {
                send(&reply(0, body), out);
                self.authenticated = true;
                tracing::info!("redirection: {} console authenticated", self.kind.map_or("?", session_name));
            }
            Err(err) => {
                send(&reply(1, body), out);
                tracing::warn!("redirection: authentication refused: {err}");
                self.close(out, Some(now + self.config.reject_linger));
            }
        }
    }

    /// Moves SOL output; closes once the shell exited and all was sent.
    fn flush(&mut self, out: &mut Outbox<'_>) {
        if let Mode::Sol(sol) = &mut self.mode {
            if sol.flush(out) {
                tracing::info!("SOL: the shell exited; closing the channel");
                self.close(out, None);
            }
        }
    }
}

impl ChannelHandler for RedirectionChannel {
    fn on_data(&mut self, data: &[u8], out: &mut Outbox<'_>) -> usize {
        if matches!(self.mode, Mode::Start) {
            if data.is_empty() {
                return 0;
            }
            self.mode = Mode::Session;
        }
        if matches!(self.mode, Mode::Closing { .. }) {
            return data.len();
        }
        let cap = self.config.limits.max_message_len();
        let take = if out.room() >= RESERVE { data.len().min(cap.saturating_sub(self.input.len())) } else { 0 };
        self.input.extend_from_slice(&data[..take]);
        self.process(out);
        self.flush(out);
        take
    }

    fn on_eof(&mut self, out: &mut Outbox<'_>) {
        self.close(out, None);
    }

    fn on_wake(&mut self, out: &mut Outbox<'_>) {
        self.process(out);
        self.flush(out);
        if let Mode::Ider(fw) = &mut self.mode {
            if out.room() >= RESERVE {
                fw.poll_boot(Instant::now(), out);
            }
        }
    }

    fn poll_deadline(&self) -> Option<Instant> {
        match &self.mode {
            Mode::Sol(sol) => Some(sol.deadline()),
            Mode::Ider(fw) => Some(fw.deadline()),
            Mode::Closing { until } => *until,
            _ => None,
        }
    }

    fn on_timer(&mut self, now: Instant, out: &mut Outbox<'_>) {
        match &mut self.mode {
            Mode::Sol(sol) => sol.on_timer(now, out),
            Mode::Ider(fw) => fw.on_timer(now, out),
            Mode::Closing { until: Some(at) } if now >= *at => self.close(out, None),
            _ => {}
        }
    }
}
