//! One agent connection: its control stream, from the first message to the close.
//!
//! The first message decides what the connection is for:
//! - `Enroll` (no client certificate needed): the token is spent, the machine enrolled for the
//!   token's subscriber, and a certificate issued for the key in the request; the gateway answers
//!   `Enrolled` (the certificate, the agent CA, the signing key's public half, the gateways to
//!   use) and closes.
//! - `Hello`: the client certificate must be one this gateway's store issued for the hello's UUID
//!   and not revoked; a UUID alone proves nothing. The gateway answers `Welcome` and a signed
//!   `Config`, takes the agent's place in the registry (a newer connection of the same machine
//!   replaces an older one: the certificate proves it is the same machine), then stores each
//!   `Report` and acknowledges it only once it is committed. Support actions, messages, their
//!   results and relayed sessions: [`super::deliver`].
//!
//! - `ContentGet`: the same certificate and admission as `Hello`, then the root's signed content
//!   item (`ContentItem`, then its bytes from the offset asked; [`crate::content`]), without
//!   taking the machine's place in the registry.
//!
//! Everything else closes the connection with a [`CloseCode`] and a reason the agent logs.
//!
//! The same session runs over either transport ([`Link`]): a QUIC connection (its first
//! bidirectional stream is the control stream), or a TLS stream over TCP on the CIRA port, told
//! apart from AMT's CIRA by its ALPN `tether/1` (`cira::serve` hands it here). Over TLS there is no
//! connection migration; everything else is the same, client certificate included.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::BytesMut;
use protocols::tap::{self, Capabilities, CloseCode, ConfigBody, Message, SignDomain, Signed};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::deliver::{self, Resend};
use super::keys::{peer_identity, AgentKeys, PeerIdentity};
use crate::auth;
use crate::metrics::{CloseReason, TunnelKind};
use crate::registry::{OpenRefused, OpenRequest, TunnelCommand, TunnelHandle};
use crate::silo::{Refusal, Silo};
use crate::state::Shared;
use crate::store::{choose_silo, AgentHello, AuditAction, CertStanding, NewAudit, SiloClient, SiloError, SiloRecord};
use protocols::entitlement::Entitlement;

/// Longest enrollment token accepted (ours are 47 characters).
const MAX_TOKEN_LEN: usize = 128;

/// Why a session ended, for the log and the close frame.
#[derive(Debug)]
struct Ended {
    code: CloseCode,
    text: String,
}

impl Ended {
    fn new(code: CloseCode, text: impl Into<String>) -> Self {
        Ended { code, text: text.into() }
    }
}

/// What carries a session: a QUIC connection, or a TLS stream over TCP (the fallback where UDP
/// is blocked), whose two halves are the [`Control`] stream itself.
pub(super) enum Link {
    Quic(quinn::Connection),
    Tls { remote: SocketAddr },
}

impl Link {
    fn transport(&self) -> &'static str {
        match self {
            Link::Quic(_) => "quic",
            Link::Tls { .. } => "tls",
        }
    }

    fn remote(&self) -> SocketAddr {
        match self {
            Link::Quic(connection) => connection.remote_address(),
            Link::Tls { remote } => *remote,
        }
    }

    /// Over TLS, resolves once the agent has been silent for `idle` since `last_heard` (its
    /// pings come every keepalive; TCP would not notice a vanished peer). QUIC has its own idle
    /// timeout: never.
    async fn silent(&self, last_heard: tokio::time::Instant, idle: Duration) {
        match self {
            Link::Quic(_) => std::future::pending().await,
            Link::Tls { .. } => tokio::time::sleep_until(last_heard + idle).await,
        }
    }

    /// Resolves when the transport itself is gone (over TLS, the control stream says so).
    async fn closed(&self) -> String {
        match self {
            Link::Quic(connection) => connection.closed().await.to_string(),
            Link::Tls { .. } => std::future::pending().await,
        }
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The control stream: frames in and out.
struct Control {
    send: Writer,
    recv: Reader,
    buf: BytesMut,
    limits: tap::Limits,
}

impl Control {
    async fn read(&mut self) -> Result<Message, Ended> {
        loop {
            match tap::decode(&self.buf, &self.limits) {
                Ok(Some((message, used))) => {
                    let _ = self.buf.split_to(used);
                    return Ok(message);
                }
                Ok(None) => {}
                Err(err) => return Err(Ended::new(CloseCode::BadMessage, err.to_string())),
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.recv.read(&mut chunk).await {
                Ok(0) => return Err(Ended::new(CloseCode::Normal, "the agent closed its control stream")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err) => return Err(Ended::new(CloseCode::Normal, format!("control stream: {err}"))),
            }
        }
    }

    async fn write(&mut self, message: &Message) -> Result<(), Ended> {
        let mut out = BytesMut::with_capacity(message.encoded_len());
        message.encode(&mut out);
        let sent = async {
            self.send.write_all(&out).await?;
            // TLS holds records until flushed; QUIC's flush is a no-op.
            self.send.flush().await
        };
        sent.await.map_err(|err| Ended::new(CloseCode::Normal, format!("control stream: {err}")))
    }
}

/// Drives one agent connection over QUIC to its end.
pub async fn run(
    connection: quinn::Connection,
    shared: Arc<Shared>,
    keys: Arc<AgentKeys>,
    pending: OwnedSemaphorePermit,
    held: Arc<Semaphore>,
) {
    let deadline = hello_deadline(&shared);
    let stream = tokio::time::timeout_at(deadline, connection.accept_bi()).await;
    let control = match stream {
        Ok(Ok((send, recv))) => Control::new(Box::new(send), Box::new(recv)),
        Ok(Err(err)) => {
            return close(&Link::Quic(connection), None, Ended::new(CloseCode::Normal, err.to_string())).await
        }
        Err(_) => {
            return close(&Link::Quic(connection), None, Ended::new(CloseCode::Timeout, "no control stream in time"))
                .await
        }
    };
    let certs = peer_certs(&connection);
    drive(Link::Quic(connection), control, certs, deadline, shared, keys, pending, held).await;
}

/// When the first message must have come: `agents.hello_timeout_secs` from now.
fn hello_deadline(shared: &Shared) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(shared.config.agents.hello_timeout_secs.into())
}

/// Drives one agent connection over TLS on TCP (the fallback on the CIRA port) to its end.
pub async fn run_tls(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    remote: SocketAddr,
    shared: Arc<Shared>,
    keys: Arc<AgentKeys>,
    pending: OwnedSemaphorePermit,
    held: Arc<Semaphore>,
) {
    let certs = tls.get_ref().1.peer_certificates().map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
    let (recv, send) = tokio::io::split(tls);
    let control = Control::new(Box::new(send), Box::new(recv));
    let deadline = hello_deadline(&shared);
    drive(Link::Tls { remote }, control, certs, deadline, shared, keys, pending, held).await;
}

impl Control {
    fn new(send: Writer, recv: Reader) -> Control {
        Control { send, recv, buf: BytesMut::new(), limits: tap::Limits::default() }
    }
}

/// The session, whichever transport carries it: the first message within the hello timeout,
/// then enrollment or the authenticated agent's session.
#[allow(clippy::too_many_arguments)]
async fn drive(
    link: Link,
    mut control: Control,
    certs: Option<Vec<CertificateDer<'static>>>,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
    keys: Arc<AgentKeys>,
    pending: OwnedSemaphorePermit,
    held: Arc<Semaphore>,
) {
    let remote = link.remote();
    let message = match tokio::time::timeout_at(deadline, control.read()).await {
        Ok(Ok(message)) => message,
        Ok(Err(ended)) => return close(&link, None, ended).await,
        Err(_) => return close(&link, Some(&mut control), Ended::new(CloseCode::Timeout, "no hello in time")).await,
    };
    match message {
        Message::Enroll { token, uuid, hostname, csr_der } => {
            let ended = enroll(&shared, &keys, &mut control, remote, &token, uuid, &hostname, &csr_der).await;
            drop(pending);
            close(&link, Some(&mut control), ended).await
        }
        Message::Hello { uuid, agent_version, hostname, os, capabilities, remote_help } => {
            if let Err(ended) = identify(&shared, certs.as_ref(), uuid, remote).await {
                return close(&link, Some(&mut control), ended).await;
            }
            let Ok(slot) = held.try_acquire_owned() else {
                let ended = Ended::new(CloseCode::Busy, "this gateway holds all the agents it may; try another");
                return close(&link, Some(&mut control), ended).await;
            };
            drop(pending);
            let now = OffsetDateTime::now_utc();
            let hello = AgentHello {
                uuid,
                hostname,
                os,
                agent_version,
                capabilities: capabilities.bits(),
                remote_help,
                remote_addr: remote.to_string(),
                instance_id: shared.instance.clone(),
                now,
            };
            let mut agent = Agent {
                shared: &shared,
                keys: &keys,
                uuid,
                remote,
                remote_help,
                since: now,
                pace: Pace::new(),
                channels: Arc::new(Semaphore::new(deliver::MAX_CHANNELS)),
                next_channel: 0,
                cert_sha256: certs
                    .as_ref()
                    .and_then(|c| c.first())
                    .map(|c| crate::silo::moves::sha256(c.as_ref()))
                    .unwrap_or_default(),
                move_sent: false,
                transfer_taken: false,
            };
            let ended = agent.serve(&link, &mut control, &hello, capabilities).await;
            drop(slot);
            close(&link, Some(&mut control), ended).await
        }
        Message::ContentGet { uuid, name, offset } => {
            if let Err(ended) = identify(&shared, certs.as_ref(), uuid, remote).await {
                return close(&link, Some(&mut control), ended).await;
            }
            drop(pending);
            match send_content(&shared, &link, &mut control, uuid, &name, offset).await {
                Ok(()) => {}
                Err(ended) => close(&link, Some(&mut control), ended).await,
            }
        }
        other => {
            let ended =
                Ended::new(CloseCode::BadMessage, format!("expected Hello or Enroll first, not {}", name(&other)));
            close(&link, Some(&mut control), ended).await
        }
    }
}

/// How long sending a content item may stall (a write that makes no progress), and how long the
/// agent has to hang up once it has everything.
const CONTENT_STALL: Duration = Duration::from_secs(30);

/// Sends content item `name` from `offset`: its signed manifest, then its bytes, then waits for
/// the agent to hang up (closing at once could drop what QUIC has not yet delivered).
async fn send_content(
    shared: &Shared,
    link: &Link,
    control: &mut Control,
    uuid: Uuid,
    name: &str,
    offset: u64,
) -> Result<(), Ended> {
    use crate::content::ContentError;
    let Ok(_turn) = tokio::time::timeout(CONTENT_STALL, Arc::clone(&shared.content_transfers).acquire_owned()).await
    else {
        return Err(Ended::new(CloseCode::Busy, "this gateway is sending as many content items as it may; try again"));
    };
    let item = shared.content.item(name).await.map_err(|err| match err {
        err @ (ContentError::Busy | ContentError::Unavailable { .. }) => Ended::new(CloseCode::Busy, err.to_string()),
        err => Ended::new(CloseCode::Normal, err.to_string()),
    })?;
    let from = offset.min(item.manifest.size);
    info!(%uuid, name, offset = from, size = item.manifest.size, "sending a content item to an agent");
    control.write(&Message::ContentItem(item.signed.clone())).await?;
    let lost = |err: std::io::Error| Ended::new(CloseCode::Normal, format!("sending the content item: {err}"));
    let mut file = tokio::fs::File::open(&item.path).await.map_err(lost)?;
    tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(from)).await.map_err(lost)?;
    let mut left = item.manifest.size - from;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want]).await.map_err(lost)?;
        if n == 0 {
            return Err(Ended::new(CloseCode::Normal, "the content item is shorter than its manifest"));
        }
        tokio::time::timeout(CONTENT_STALL, control.send.write_all(&buf[..n]))
            .await
            .map_err(|_| Ended::new(CloseCode::Timeout, "the agent stopped reading the content item"))?
            .map_err(lost)?;
        left -= n as u64;
    }
    let _ = control.send.flush().await;
    let _ = tokio::time::timeout(CONTENT_STALL, hung_up(link, control)).await;
    if let Link::Quic(connection) = link {
        connection.close(quinn::VarInt::from_u32(CloseCode::Normal as u32), b"content sent");
    }
    Ok(())
}

/// Ends this side of the stream and waits for the agent to hang up (over TLS, its end of the
/// stream, whatever it still sends).
async fn hung_up(link: &Link, control: &mut Control) {
    let _ = control.send.shutdown().await;
    match link {
        Link::Quic(connection) => {
            connection.closed().await;
        }
        Link::Tls { .. } => {
            let mut sink = [0u8; 1024];
            while control.recv.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        }
    }
}

fn name(message: &Message) -> String {
    format!("{message:?}").split([' ', '(', '{']).next().unwrap_or("?").to_string()
}

fn peer_certs(connection: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    connection.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok().map(|b| *b)
}

/// Sends the close frame (when the stream is up) and ends the stream, gives the agent a moment
/// to read it and go, then closes the connection with the code.
async fn close(link: &Link, control: Option<&mut Control>, ended: Ended) {
    debug!(remote = %link.remote(), transport = %link.transport(), code = ?ended.code, reason = %ended.text, "agent connection closing");
    if let Some(control) = control {
        let message = Message::Close { code: ended.code, text: ended.text.chars().take(200).collect() };
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = control.write(&message).await;
            hung_up(link, control).await;
        })
        .await;
    }
    if let Link::Quic(connection) = link {
        connection.close(quinn::VarInt::from_u32(ended.code as u32), ended.text.as_bytes());
    }
}

/// The machine `uuid` says it is, proven by its certificate (`certs`, verified in the handshake)
/// and admitted here ([`admit`]).
async fn identify(
    shared: &Shared,
    certs: Option<&Vec<CertificateDer<'static>>>,
    uuid: Uuid,
    remote: SocketAddr,
) -> Result<PeerIdentity, Ended> {
    let cert = certs.and_then(|c| c.first());
    let Some(identity) = cert.and_then(peer_identity) else {
        return Err(Ended::new(CloseCode::Unauthenticated, "no client certificate: enroll first"));
    };
    if identity.uuid != uuid {
        warn!(%remote, certificate = %identity.uuid, claimed = %uuid, "agent hello for another machine's UUID");
        return Err(Ended::new(CloseCode::Unauthenticated, "the certificate is for another machine"));
    }
    admit(shared, &identity, cert, remote).await?;
    Ok(identity)
}

/// Whether the agent behind a verified certificate may be served here. An `all` or root gateway
/// asks its store (it issued the certificate; was it revoked?); a maintenance silo asks the
/// certificate itself (its entitlement names this silo, a tier served here, a future expiry) and
/// the root's last revocation list, so that it never needs the root.
async fn admit(
    shared: &Shared,
    identity: &PeerIdentity,
    cert: Option<&CertificateDer<'static>>,
    remote: SocketAddr,
) -> Result<(), Ended> {
    let uuid = identity.uuid;
    let maintenance =
        match &shared.silo {
            Silo::All => None,
            Silo::Root => return Err(Ended::new(
                CloseCode::Refused,
                "this is the root silo, which serves no agents: connect to the maintenance silo your certificate names",
            )),
            Silo::Maintenance(maintenance) => Some(maintenance),
        };
    if let Some(maintenance) = maintenance {
        let Some(cert) = cert else {
            return Err(Ended::new(CloseCode::Unauthenticated, "no client certificate: enroll first"));
        };
        let now = OffsetDateTime::now_utc();
        let admitted = maintenance.admit(cert, uuid, &identity.serial, now).map_err(|refusal| {
            info!(%remote, %uuid, %refusal, "agent refused by its certificate");
            let code = if refusal == Refusal::Revoked { CloseCode::Revoked } else { CloseCode::Unauthenticated };
            Ended::new(code, refusal.to_string())
        })?;
        let entitled_until =
            OffsetDateTime::from_unix_timestamp(admitted.entitlement.not_after).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let client = SiloClient {
            uuid,
            subscriber: admitted.entitlement.subscriber,
            service: admitted.entitlement.service,
            tier: admitted.entitlement.tier,
            serial: admitted.serial,
            entitled_until,
            first_seen: now,
            last_seen: now,
            moved_from: None,
        };
        return shared.store.silo_client_seen(&client).await.map_err(|err| {
            warn!(error = %err, "cannot record an admitted client");
            Ended::new(CloseCode::Busy, "the gateway cannot record the connection now; try again")
        });
    }
    match shared.store.agent_cert_standing(&identity.serial, uuid).await {
        Ok(CertStanding::Valid) => Ok(()),
        Ok(CertStanding::Revoked(reason)) => {
            info!(%remote, %uuid, %reason, "agent with a revoked certificate refused");
            Err(Ended::new(CloseCode::Revoked, format!("this machine's certificate was revoked: {reason}")))
        }
        Ok(CertStanding::Unknown) => {
            Err(Ended::new(CloseCode::Unauthenticated, "this gateway did not issue that certificate"))
        }
        Err(err) => {
            warn!(error = %err, "cannot check an agent's certificate");
            Err(Ended::new(CloseCode::Busy, "the gateway cannot check certificates now; try again"))
        }
    }
}

/// On a root: the entitlement a new machine of the token's subscriber gets, naming the silo it
/// goes to (the one it had, else [`choose_silo`]'s).
async fn root_entitlement(
    shared: &Shared,
    hash: &str,
    uuid: Uuid,
    lifetime: time::Duration,
) -> Result<(Entitlement, SiloRecord), Ended> {
    let refused = |code: &str, text: String| Ended::new(CloseCode::EnrollRefused, format!("{text} ({code})"));
    let store_failed = |err: &dyn std::fmt::Display| {
        warn!(error = %err, "cannot look up the enrollment's entitlement");
        Ended::new(CloseCode::Busy, "the gateway cannot enroll now; try again")
    };
    let subscriber = match shared.store.enrollment_token_subscriber(hash).await {
        Ok(Some(subscriber)) => subscriber,
        Ok(None) => return Err(refused("unknown_token", "no such enrollment token, or it was used".into())),
        Err(err) => return Err(store_failed(&err)),
    };
    let entitlement = match shared.store.entitlement(subscriber).await {
        Ok(entitlement) => entitlement,
        Err(SiloError::Store(err)) => return Err(store_failed(&err)),
        Err(err) => return Err(refused(err.code(), err.to_string())),
    };
    let now = OffsetDateTime::now_utc();
    if entitlement.valid_until.is_some_and(|end| end <= now) {
        return Err(refused("entitlement_expired", "the subscriber's entitlement has ended".into()));
    }
    let silo = match shared.store.assigned_silo(uuid).await {
        Ok(Some(silo)) => silo,
        Ok(None) => match shared.store.silos().await {
            Ok(silos) => choose_silo(&silos, &entitlement)
                .ok_or_else(|| refused(SiloError::NoRoom.code(), SiloError::NoRoom.to_string()))?,
            Err(err) => return Err(store_failed(&err)),
        },
        Err(err) => return Err(store_failed(&err)),
    };
    let granted = crate::silo::grant(entitlement, &silo, lifetime, now)
        .map_err(|why| refused("entitlement_expired", why.to_string()))?;
    Ok((granted, silo))
}

#[allow(clippy::too_many_arguments)]
async fn enroll(
    shared: &Shared,
    keys: &AgentKeys,
    control: &mut Control,
    remote: SocketAddr,
    token: &str,
    uuid: Uuid,
    hostname: &str,
    csr: &[u8],
) -> Ended {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || uuid.is_nil() {
        return Ended::new(CloseCode::EnrollRefused, "the enrollment token or UUID is malformed");
    }
    let lifetime = time::Duration::days(shared.config.agents.cert_valid_days.into());
    let hash = auth::hash_token(token);
    let (entitlement, silo) = match &shared.silo {
        Silo::Maintenance(_) => {
            return Ended::new(CloseCode::EnrollRefused, "this is a maintenance silo: enroll through the root silo")
        }
        Silo::All => (None, None),
        Silo::Root => match root_entitlement(shared, &hash, uuid, lifetime).await {
            Ok((entitlement, silo)) => (Some(entitlement), Some(silo)),
            Err(ended) => return ended,
        },
    };
    let issued = match keys.issue(csr, uuid, lifetime, entitlement.as_ref()) {
        Ok(issued) => issued,
        Err(err) => return Ended::new(CloseCode::EnrollRefused, err.to_string()),
    };
    let now = OffsetDateTime::now_utc();
    let cert = issued.record(uuid, now);
    let hello = AgentHello {
        uuid,
        hostname: hostname.to_string(),
        os: String::new(),
        agent_version: String::new(),
        capabilities: 0,
        remote_help: false,
        remote_addr: remote.to_string(),
        instance_id: shared.instance.clone(),
        now,
    };
    let redeemed = match shared.store.redeem_enrollment_token(&hash, uuid, &cert, &hello).await {
        Ok(redeemed) => redeemed,
        Err(err) => {
            info!(%remote, %uuid, error = %err, "agent enrollment refused");
            return Ended::new(CloseCode::EnrollRefused, format!("{} ({})", err, err.code()));
        }
    };
    let audit = NewAudit {
        at: now,
        actor_user_id: None,
        action: AuditAction::AgentEnrolled,
        machine_uuid: Some(uuid),
        subscriber_id: Some(redeemed.subscriber_id),
        detail: format!("hostname {hostname}, certificate {}, from {remote}", issued.serial),
    };
    if let Err(err) = shared.store.append_audit(&audit).await {
        warn!(error = %err, "cannot audit an agent's enrollment");
    }
    let gateways = match &silo {
        // The silo's location leads; the agent needs no other (the root serves no agents).
        Some(silo) => {
            if let Err(err) = shared.store.assign_silo(uuid, &silo.name, now).await {
                warn!(error = %err, %uuid, silo = %silo.name, "cannot record the machine's silo");
            }
            vec![silo.location.clone()]
        }
        None => shared.config.agents.advertise.clone(),
    };
    info!(%remote, %uuid, subscriber = redeemed.subscriber_id, new_machine = redeemed.new_machine, silo = silo.as_ref().map(|s| s.name.as_str()), "agent enrolled");
    let reply = Message::Enrolled {
        cert_der: issued.der.to_vec().into(),
        ca_der: keys.ca().to_vec().into(),
        signing_key: keys.signing_public(),
        gateways,
    };
    match control.write(&reply).await {
        Ok(()) => Ended::new(CloseCode::Normal, "enrolled"),
        Err(ended) => ended,
    }
}

/// A connected, authenticated agent.
struct Agent<'a> {
    shared: &'a Shared,
    keys: &'a AgentKeys,
    uuid: Uuid,
    remote: SocketAddr,
    remote_help: bool,
    since: OffsetDateTime,
    /// Paces the agent's reports (a flood is slowed down, not stored at full speed).
    pace: Pace,
    /// Places for relayed sessions to the PC.
    channels: Arc<Semaphore>,
    next_channel: u32,
    /// SHA-256 of the certificate the agent connected with (a move's order names it).
    cert_sha256: [u8; 32],
    /// This session sent the client its move to another silo (once per session).
    move_sent: bool,
    /// This session took the client's handover (once per session).
    transfer_taken: bool,
}

/// Reports an agent may send per second, sustained, and in one burst (a spool sent again after
/// an outage): beyond, the gateway reads the next report only when the bucket allows, and QUIC's
/// flow control slows the agent down. One agent cannot take the store from the others.
const REPORTS_PER_SEC: f64 = 20.0;
const REPORT_BURST: f64 = 200.0;

/// A token bucket for one connection's reports.
#[derive(Debug)]
struct Pace {
    tokens: f64,
    at: std::time::Instant,
}

impl Pace {
    fn new() -> Pace {
        Pace { tokens: REPORT_BURST, at: std::time::Instant::now() }
    }

    /// How long to wait before taking one report.
    fn take(&mut self) -> Duration {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * REPORTS_PER_SEC).min(REPORT_BURST);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / REPORTS_PER_SEC)
        }
    }
}

impl Agent<'_> {
    async fn serve(
        &mut self,
        link: &Link,
        control: &mut Control,
        hello: &AgentHello,
        capabilities: Capabilities,
    ) -> Ended {
        let shared = self.shared;
        if let Err(err) = shared.store.agent_connected(hello).await {
            warn!(error = %err, "cannot record an agent's hello");
            return Ended::new(CloseCode::Busy, "the gateway cannot record the connection now; try again");
        }
        let config = &shared.config.agents;
        let welcome =
            Message::Welcome { server_time: hello.now.unix_timestamp(), heartbeat_secs: config.heartbeat_secs };
        if let Err(ended) = control.write(&welcome).await {
            return ended;
        }
        // A maintenance silo first shows the root's certification of the key its configuration
        // is signed with (agents pinned the root's key, not the silo's).
        if let Silo::Maintenance(maintenance) = &shared.silo {
            match maintenance.bundle.silo_key_message() {
                Ok(signed) => {
                    if let Err(ended) = control.write(&Message::SiloKey(signed)).await {
                        return ended;
                    }
                }
                Err(err) => warn!(error = %format!("{err:#}"), "the bundle's silo key cannot be sent"),
            }
        }
        if let Err(ended) = control.write(&self.signed_config()).await {
            return ended;
        }

        // The registry entry: others reach the agent through its command queue.
        let (commands, mut queue) = mpsc::channel(8);
        let handle = TunnelHandle {
            id: shared.registry.next_id(),
            uuid: self.uuid,
            kind: TunnelKind::Agent,
            remote: self.remote,
            connected_since: self.since,
            trigger_reason: 0,
            commands,
            ports: Arc::new(Mutex::new(BTreeSet::new())),
        };
        let id = handle.id;
        if let Err(handle) = shared.registry.try_insert(handle) {
            if let Some(old) = shared.registry.get(self.uuid, TunnelKind::Agent) {
                if shared.registry.replace_if(old.id, handle) {
                    old.close(CloseReason::Replaced);
                }
            }
        }
        shared.metrics.tunnel_opened(TunnelKind::Agent);
        info!(uuid = %self.uuid, remote = %self.remote, transport = %link.transport(), capabilities = capabilities.bits(), "agent connected");

        // What waits for the PC: after the registry entry, so that nothing made meanwhile waits
        // for the next poll.
        let failed = self.deliver(control, Resend::Yes).await.err();

        let idle = Duration::from_secs(config.idle_timeout_secs.into());
        let mut last_heard = tokio::time::Instant::now();
        let poll = Duration::from_secs(config.delivery_poll_secs.max(1).into());
        let mut delivery_poll = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        let ended = if let Some(ended) = failed {
            ended
        } else {
            loop {
                tokio::select! {
                    message = control.read() => match message {
                        Ok(message) => {
                            last_heard = tokio::time::Instant::now();
                            if let Err(ended) = self.handle(control, message).await {
                                break ended;
                            }
                            if let Link::Quic(connection) = link {
                                self.follow_migration(connection).await;
                            }
                        }
                        Err(ended) => break ended,
                    },
                    command = queue.recv() => match command {
                        Some(TunnelCommand::Close { reason }) => break match reason {
                            CloseReason::Replaced => Ended::new(CloseCode::Refused, "a newer connection of this machine took over"),
                            CloseReason::AuthFailed => Ended::new(CloseCode::Revoked, "this machine's certificate was revoked"),
                            _ => Ended::new(CloseCode::Shutdown, "gateway shutting down"),
                        },
                        Some(TunnelCommand::Probe { reply }) => {
                            let _ = reply.send(crate::registry::Liveness::Alive);
                        }
                        Some(TunnelCommand::Open(request)) => self.open(link, *request),
                        Some(TunnelCommand::Deliver) => {
                            if let Err(ended) = self.deliver(control, Resend::No).await {
                                break ended;
                            }
                        }
                        None => break Ended::new(CloseCode::Shutdown, "gateway shutting down"),
                    },
                    _ = delivery_poll.tick() => {
                        if let Err(ended) = self.deliver(control, Resend::No).await {
                            break ended;
                        }
                    }
                    reason = link.closed() => break Ended::new(CloseCode::Normal, format!("connection lost: {reason}")),
                    () = link.silent(last_heard, idle) => break Ended::new(CloseCode::Timeout, "nothing heard from the agent within agents.idle_timeout_secs"),
                }
            }
        };
        shared.registry.remove(self.uuid, TunnelKind::Agent, id);
        let reason = match ended.code {
            CloseCode::Normal => CloseReason::PeerClosed,
            CloseCode::BadMessage => CloseReason::ProtocolError,
            CloseCode::Refused => CloseReason::Replaced,
            CloseCode::Revoked => CloseReason::AuthFailed,
            CloseCode::Shutdown => CloseReason::Shutdown,
            _ => CloseReason::Unknown,
        };
        shared.metrics.tunnel_closed(TunnelKind::Agent, reason);
        if let Err(err) = shared.store.agent_disconnected(self.uuid, &shared.instance, self.since).await {
            warn!(error = %err, "cannot record an agent's disconnection");
        }
        info!(uuid = %self.uuid, reason = %ended.text, "agent disconnected");
        ended
    }

    /// Notes a new address of the agent: its NAT changed its public address or it moved to
    /// another network, and QUIC migrated the connection (the session goes on).
    async fn follow_migration(&mut self, connection: &quinn::Connection) {
        let now = connection.remote_address();
        if now == self.remote {
            return;
        }
        info!(uuid = %self.uuid, from = %self.remote, to = %now, "agent's address changed: the connection migrated");
        self.remote = now;
        if let Err(err) = self.shared.store.set_agent_address(self.uuid, &now.to_string()).await {
            warn!(error = %err, "cannot record an agent's new address");
        }
    }

    /// Sends the support actions and messages waiting in the store (with `Resend::Yes`, also
    /// those sent before and not yet answered: on a new connection).
    async fn deliver(&mut self, control: &mut Control, resend: Resend) -> Result<(), Ended> {
        for message in deliver::due(self.shared, self.uuid, resend).await {
            control.write(&message).await?;
        }
        self.send_move(control).await
    }

    /// On a maintenance silo: the client's move to another silo, once the root ordered one
    /// (with its history, exported now).
    async fn send_move(&mut self, control: &mut Control) -> Result<(), Ended> {
        let Silo::Maintenance(maintenance) = &self.shared.silo else { return Ok(()) };
        if self.move_sent {
            return Ok(());
        }
        match crate::silo::moves::handover(maintenance, &self.shared.store, self.keys, self.uuid).await {
            Ok(Some(message)) => {
                control.write(&message).await?;
                self.move_sent = true;
                info!(uuid = %self.uuid, "sent the client its move to another silo, with its history");
            }
            Ok(None) => {}
            Err(err) => warn!(uuid = %self.uuid, error = %format!("{err:#}"), "cannot hand the client over now"),
        }
        Ok(())
    }

    /// A technician's stream to a port of the PC: refused here while the PC's user has remote
    /// help off or the agent is on TLS (one stream only); else asked of the agent on a new QUIC
    /// stream, which answers with its local policy.
    fn open(&mut self, link: &Link, request: OpenRequest) {
        let refusal = |text: &str| Err(OpenRefused::NotAllowed(text.to_string()));
        let answer = if !self.remote_help {
            refusal("the PC user has turned remote help off (`tether-agent enable` on the PC turns it on)")
        } else {
            match (link, Arc::clone(&self.channels).try_acquire_owned()) {
                (Link::Tls { .. }, _) => refusal(
                    "this agent is connected over TLS (UDP to the gateway is blocked where it is): relayed sessions need its QUIC connection",
                ),
                (Link::Quic(_), Err(_)) => Err(OpenRefused::TooManyChannels),
                (Link::Quic(connection), Ok(permit)) => {
                    self.next_channel = self.next_channel.wrapping_add(1);
                    deliver::open_channel(connection.clone(), self.uuid, self.next_channel, request, permit);
                    return;
                }
            }
        };
        let _ = request.reply.send(answer);
    }

    fn signed_config(&self) -> Message {
        let config = &self.shared.config.agents;
        let body = ConfigBody {
            issued_at: OffsetDateTime::now_utc().unix_timestamp(),
            heartbeat_secs: config.heartbeat_secs,
            keepalive_secs: config.keepalive_secs,
            gateways: config.advertise.clone(),
        };
        let mut payload = BytesMut::new();
        body.encode(&mut payload);
        let signature = self.keys.sign(SignDomain::Config, &payload);
        Message::Config(Signed { payload: payload.freeze(), signature })
    }

    async fn handle(&mut self, control: &mut Control, message: Message) -> Result<(), Ended> {
        match message {
            Message::Report { seq, taken_at, report } => {
                let wait = self.pace.take();
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let seq =
                    i64::try_from(seq).map_err(|_| Ended::new(CloseCode::BadMessage, "sequence number over 2^63"))?;
                let taken_at = OffsetDateTime::from_unix_timestamp(taken_at)
                    .map_err(|_| Ended::new(CloseCode::BadMessage, "the report's time is out of range"))?;
                let mut encoded = BytesMut::new();
                report.encode(&mut encoded);
                let text = base64::engine::general_purpose::STANDARD.encode(&encoded);
                let received = OffsetDateTime::now_utc();
                let new = match self.shared.store.insert_report(self.uuid, seq, taken_at, received, &text).await {
                    Ok(new) => new,
                    // Not acknowledged: the agent keeps it and sends it again.
                    Err(err) => {
                        warn!(uuid = %self.uuid, error = %err, "cannot store an agent's report");
                        return Err(Ended::new(CloseCode::Busy, "the gateway cannot store reports now; try again"));
                    }
                };
                debug!(uuid = %self.uuid, seq, new, "report stored");
                control.write(&Message::Ack { seq: seq as u64 }).await?;
                // A report sent again (its ack was lost) was rated the first time.
                if new {
                    crate::meter::report_stored(self.shared, self.uuid, &report, taken_at).await;
                }
                Ok(())
            }
            Message::RemoteHelp { enabled } => {
                self.remote_help = enabled;
                if let Err(err) = self.shared.store.set_agent_remote_help(self.uuid, enabled).await {
                    warn!(error = %err, "cannot record an agent's remote-help consent");
                }
                info!(uuid = %self.uuid, enabled, "remote help changed by the PC user");
                Ok(())
            }
            Message::ActionResult(result) => match deliver::action_result(self.shared, self.uuid, result).await {
                Some(receipt) => control.write(&receipt).await,
                None => Ok(()),
            },
            Message::MessageState { id, read } => {
                match deliver::message_state(self.shared, self.uuid, id, read).await {
                    Some(receipt) => control.write(&receipt).await,
                    None => Ok(()),
                }
            }
            Message::Transfer(handover) => {
                let Silo::Maintenance(maintenance) = &self.shared.silo else {
                    // Left over from a move before the agent enrolled here: nothing to take.
                    debug!(uuid = %self.uuid, "ignoring a handover: this gateway is not a maintenance silo");
                    return Ok(());
                };
                // One per session: each costs three signature checks and a transaction.
                if std::mem::replace(&mut self.transfer_taken, true) {
                    return Err(Ended::new(CloseCode::BadMessage, "one handover per connection"));
                }
                let (store, keys) = (&self.shared.store, &self.shared.agent_keys);
                match crate::silo::moves::take_transfer(
                    store,
                    keys,
                    maintenance,
                    self.uuid,
                    &self.cert_sha256,
                    &handover,
                )
                .await
                {
                    Ok(Some(answer)) => control.write(&answer).await,
                    Ok(None) => Ok(()),
                    Err(err) => {
                        warn!(uuid = %self.uuid, error = %err, "cannot import a client's history");
                        Err(Ended::new(CloseCode::Busy, "the gateway cannot take the handover now; try again"))
                    }
                }
            }
            Message::Ping { nonce } => control.write(&Message::Pong { nonce }).await,
            Message::Pong { .. } => Ok(()),
            Message::Close { code, text } => {
                Err(Ended::new(CloseCode::Normal, format!("the agent closed ({code:?}): {text}")))
            }
            other => Err(Ended::new(CloseCode::BadMessage, format!("unexpected {} from an agent", name(&other)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_reports_passes_and_a_flood_is_paced() {
        let mut pace = Pace::new();
        for _ in 0..REPORT_BURST as usize {
            assert_eq!(pace.take(), Duration::ZERO);
        }
        let wait = pace.take();
        assert!(wait > Duration::from_millis(40) && wait <= Duration::from_millis(55), "{wait:?}");
        // The waits grow with the flood: the n-th report beyond the burst waits about n / rate.
        for _ in 0..19 {
            pace.take();
        }
        assert!(pace.take() >= Duration::from_millis(950));
    }
}
