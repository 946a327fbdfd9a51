//! The technician's side of AMT redirection (port 16994/16995): `tether console` watches and types
//! on the PC's serial console (Serial-over-LAN) and `tether ider` serves a rescue image to the PC's
//! virtual CD or floppy drive (IDE-R), through the gateway's relay or straight to a PC on the LAN.
//!
//! - [`link`]: the pipe (API relay WebSocket, TLS with a pinned certificate, plain TCP) and the
//!   message reader and writer on it;
//! - [`pin`]: trust on first use for devices reached directly;
//! - this module: opening a session (start, authentication), and the "already in use" answer;
//! - [`console`]: SOL on the technician's terminal; [`terminal`]: raw mode and its restoration;
//! - [`ider`]: IDE-R, serving images through [`protocols::scsi::Target`];
//! - [`rescue`]: `tether rescue` (the whole remote fix) and the commands that ask the gateway's
//!   WS-MAN client for power, boot, redirection and the session's end;
//! - [`device_call`]: the AMT account and the API call that waits on a device, which both use;
//! - [`served`]: `--image content:NAME`, the gateway serving one of its content items over IDE-R
//!   instead of this machine (`crate::content_ider`);
//! - [`link::Endpoint::Tunnel`]: the same sessions opened by the gateway itself, through the
//!   device's tunnel.
//!
//! The wire format is [`protocols::redir`]; this module does the I/O and the user's side.

pub mod console;
pub mod device_call;
pub mod ider;
pub mod link;
pub mod pin;
pub mod rescue;
pub mod served;
pub mod terminal;

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use protocols::redir::{AuthMethod, AuthReplyBody, AuthRequest, DigestAuth, DigestMethod, Message, SessionType};
use rand::RngCore;

pub use link::{Endpoint, MessageReader, MessageWriter};

/// How long each step of opening a session may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// The device's AMT account (not the gateway's token).
#[derive(Clone)]
pub struct Account {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account").field("username", &self.username).finish_non_exhaustive()
    }
}

/// An authenticated redirection session, ready for SOL or IDE-R to start.
#[derive(Debug)]
pub struct Session {
    pub reader: MessageReader,
    pub writer: MessageWriter,
    /// How the device was reached, for messages.
    pub target: String,
}

impl Session {
    /// Waits for the next message other than a heartbeat, within [`STEP_TIMEOUT`].
    pub async fn expect(&mut self, what: &str) -> Result<Message> {
        let target = &self.target;
        let wait = async {
            loop {
                match self.reader.next().await? {
                    Some(Message::SolHeartbeat { .. } | Message::IderHeartbeat { .. }) => continue,
                    Some(message) => return Ok(message),
                    None => bail!(
                        "{target} closed the connection while this console waited for {what}{}",
                        reason(&self.reader)
                    ),
                }
            }
        };
        tokio::time::timeout(STEP_TIMEOUT, wait)
            .await
            .map_err(|_| anyhow!("{target} did not send {what} within {} s", STEP_TIMEOUT.as_secs()))?
    }
}

fn reason(reader: &MessageReader) -> String {
    reader.close_reason().map(|r| format!(" ({r})")).unwrap_or_default()
}

fn kind_name(kind: SessionType) -> &'static str {
    match kind {
        SessionType::Sol => "Serial-over-LAN",
        SessionType::Ider => "IDE-R",
        SessionType::Kvm => "KVM",
    }
}

/// Connects, starts a redirection session of `kind` and authenticates with the best method the
/// device offers (digest with qop, digest, then username/password). When the device refuses the
/// session because one of that kind is already open, the error names who holds it (asked of the
/// gateway) and since when.
pub async fn open(endpoint: &Endpoint, kind: SessionType, account: &Account) -> Result<Session> {
    let (reader, writer) = endpoint.connect().await?;
    let mut session = Session { reader, writer, target: endpoint.describe() };
    session.writer.send(&Message::StartRedirectionSession { session_type: kind }).await?;
    match session.expect("its answer to the session start").await? {
        Message::StartRedirectionSessionReply(reply) if reply.status == 0 => {}
        Message::StartRedirectionSessionReply(reply) => {
            session.writer.close().await;
            bail!("{}", in_use_message(endpoint, kind, reply.status).await);
        }
        other => bail!("{} answered the session start with {:?}", session.target, other.message_type()),
    }
    authenticate(&mut session, account).await?;
    Ok(session)
}

/// What to tell the technician when the device refused a session of `kind`.
async fn in_use_message(endpoint: &Endpoint, kind: SessionType, status: u8) -> String {
    let name = kind_name(kind);
    let base = format!(
        "{} refused a {name} session (status {status}): AMT holds one {name} session at a time and one is already open",
        endpoint.describe()
    );
    let (client, uuid) = match endpoint {
        Endpoint::Relay { client, uuid, .. } => (client, uuid),
        Endpoint::Tunnel { uuid, .. } => {
            return format!("{base} (`GET /api/v1/devices/{uuid}/redirections?active=true` names who holds it)")
        }
        Endpoint::Direct { .. } => return format!("{base} (by another console on the network)"),
    };
    let tag = crate::redir_tap::RedirKind::from(kind).as_str();
    match client.get_json(&format!("/api/v1/devices/{uuid}/redirections?active=true")).await {
        Ok(serde_json::Value::Array(rows)) => {
            let holder = rows.iter().find(|row| row.get("kind").and_then(|k| k.as_str()) == Some(tag));
            match holder {
                Some(row) => {
                    let who = row.get("technician").and_then(|v| v.as_str()).unwrap_or("an unknown technician");
                    let since = row.get("started_at").and_then(|v| v.as_str()).unwrap_or("an unknown time");
                    let via = row.get("instance").and_then(|v| v.as_str()).unwrap_or("?");
                    format!("{base}: held by {who} since {since} (through gateway {via})")
                }
                None => format!(
                    "{base}, not through this gateway: another console on the device's network holds it, or the \
                     device has {name} disabled (`tether redirection {uuid} enable`)"
                ),
            }
        }
        Ok(_) | Err(_) => format!("{base} (the gateway could not say by whom)"),
    }
}

async fn authenticate(session: &mut Session, account: &Account) -> Result<()> {
    let user = account.username.as_bytes();
    let password = account.password.as_bytes();
    if user.len() > 32 || password.len() > 32 {
        bail!("AMT usernames and passwords are at most 32 bytes");
    }
    session.writer.send(&Message::AuthenticateSession(AuthRequest::Query)).await?;
    let methods = match session.expect("the list of authentication methods").await? {
        Message::AuthenticateSessionReply(reply) => match reply.body {
            AuthReplyBody::Methods(methods) => methods,
            _ => bail!("{} answered the authentication query with something else", session.target),
        },
        other => bail!("{} answered the authentication query with {:?}", session.target, other.message_type()),
    };
    let offers = |m: AuthMethod| methods.contains(&(m as u8));
    let refused = |target: &str| {
        anyhow!("{target} refused the AMT credentials of user {:?} (check --user and --password)", account.username)
    };
    let digest = if offers(AuthMethod::DigestQop) {
        Some(DigestMethod::Rfc2617)
    } else if offers(AuthMethod::Digest) {
        Some(DigestMethod::Rfc2069)
    } else {
        None
    };
    if let Some(method) = digest {
        let initial = DigestAuth::initial(method, user);
        session.writer.send(&Message::AuthenticateSession(AuthRequest::Digest(initial))).await?;
        let challenge = match session.expect("a digest challenge").await? {
            Message::AuthenticateSessionReply(reply) => match reply.body {
                AuthReplyBody::Digest { challenge: Some(challenge), .. } => challenge,
                _ if reply.status != 0 => return Err(refused(&session.target)),
                _ => bail!("{} sent no digest challenge", session.target),
            },
            other => bail!("{} answered the digest request with {:?}", session.target, other.message_type()),
        };
        let mut cnonce = [0u8; 16];
        rand::rng().fill_bytes(&mut cnonce);
        let cnonce = hex::encode(cnonce);
        let answer = DigestAuth::answer(method, user, password, &challenge, cnonce.as_bytes());
        session.writer.send(&Message::AuthenticateSession(AuthRequest::Digest(answer))).await?;
    } else if offers(AuthMethod::UsernamePassword) {
        let request = AuthRequest::UsernamePassword {
            username: Bytes::copy_from_slice(user),
            password: Bytes::copy_from_slice(password),
        };
        session.writer.send(&Message::AuthenticateSession(request)).await?;
    } else {
        bail!(
            "{} offers no authentication method this console speaks (codes {:?}; Kerberos is not supported)",
            session.target,
            methods.as_ref()
        );
    }
    match session.expect("the authentication verdict").await? {
        Message::AuthenticateSessionReply(reply) if reply.status == 0 => Ok(()),
        Message::AuthenticateSessionReply(_) => {
            session.writer.close().await;
            Err(refused(&session.target))
        }
        other => bail!("{} answered the credentials with {:?}", session.target, other.message_type()),
    }
}

/// Ends a session politely: the kind's end message (already sent by the caller), then
/// EndRedirectionSession and the connection's end.
pub async fn finish(writer: &mut MessageWriter) {
    let _ = tokio::time::timeout(Duration::from_secs(2), writer.send(&Message::EndRedirectionSession)).await;
    writer.close().await;
}

/// Which device a redirection command reaches, and how (shared by `tether console` and
/// `tether ider`).
#[derive(Debug, Clone, clap::Args)]
pub struct RedirectArgs {
    /// The device, reached through the gateway's relay (needs --api and --token).
    #[arg(required_unless_present = "direct")]
    pub uuid: Option<uuid::Uuid>,
    /// Reach a PC on this network directly instead (host name or address): TLS to port 16995,
    /// with the certificate it presents pinned on first use.
    #[arg(long, value_name = "HOST", conflicts_with = "uuid")]
    pub direct: Option<String>,
    /// With --direct: the port [default: 16995, or 16994 with --plain].
    #[arg(long, requires = "direct")]
    pub port: Option<u16>,
    /// With --direct: plain TCP to 16994, for firmware before CSME 16.1 (newer firmware closes
    /// the plain port to remote hosts).
    #[arg(long, requires = "direct")]
    pub plain: bool,
    /// With --direct: the file of pinned device certificates [default:
    /// ~/.config/tether/known_devices].
    #[arg(long, env = "TETHER_KNOWN_DEVICES", value_name = "FILE")]
    pub known_devices: Option<std::path::PathBuf>,
    /// The AMT account on the device.
    #[arg(long, env = "AMT_USER", default_value = "admin")]
    pub user: String,
    /// The AMT account's password.
    #[arg(long, env = "AMT_PASSWORD", hide_env_values = true)]
    pub password: String,
}

impl RedirectArgs {
    /// The endpoint: direct when --direct is given, else the relay of `client` (built lazily, as
    /// a direct connection needs no API).
    pub fn endpoint(&self, client: impl FnOnce() -> Result<crate::client::ApiClient>) -> Result<Endpoint> {
        match (&self.direct, self.uuid) {
            (Some(host), _) => Ok(Endpoint::Direct {
                host: host.clone(),
                port: self.port.unwrap_or(if self.plain { 16994 } else { 16995 }),
                tls: !self.plain,
                known: self.known_devices.clone().unwrap_or_else(pin::default_known_devices),
            }),
            (None, Some(uuid)) => Ok(Endpoint::Relay { client: client()?, uuid, port: 16994 }),
            (None, None) => bail!("name the device (UUID) or give --direct HOST"),
        }
    }

    pub fn account(&self) -> Account {
        Account { username: self.user.clone(), password: self.password.clone() }
    }
}
