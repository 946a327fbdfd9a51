//! The gateway serving a rescue image from its signed content (`crate::content`) to a device's
//! virtual CD over IDE-R, instead of the technician's machine: `tether rescue UUID --image
//! content:NAME` and `POST /api/v1/devices/{uuid}/ider`.
//!
//! The gateway opens the device's redirection port (16994) through the device's own tunnel (held
//! here, or by another gateway of the fleet over the fleet link), authenticates with the device's
//! AMT account, and serves the item read-only as the CD with the technician's IDE-R code
//! (`crate::redirect::ider`), its progress bar hidden. Before serving, the item's file is hashed
//! and must be the manifest's size and SHA-256, of kind `rescue-image`; the very file hashed is
//! the one served. When the firmware drops its tunnel around a reset, the session is opened again
//! once the device has dialled back (after the technician's console, when one is attached), as
//! `tether rescue` does. Each session is recorded like a technician's relay to the redirection
//! port (`crate::redir_tap`: `GET …/redirections`, metrics).
//!
//! At most one session per device, and [`MAX_SESSIONS`] in all; a session ends when asked
//! ([`IderSessions::stop`]: `DELETE …/ider`, or the remote-fix session's close), when the gateway
//! shuts down, or when it cannot be opened again.
//!
//! What it does not do: the HTTP side (`api::ider`), WS-MAN (boot settings, power: `api::amt`),
//! or speak IDE-R itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use protocols::tap::ContentKind;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};
use uuid::Uuid;

use crate::content::{Content, ContentError};
use crate::redir_tap::RelayTap;
use crate::redirect::ider::{self, Images, Progress, ServeOptions};
use crate::redirect::link::{OpenedStream, StreamOpener};
use crate::redirect::{Account, Endpoint};
use crate::registry::OpenRefused;
use crate::state::Shared;

/// IDE-R sessions the gateway serves at once (each reads its image and holds a channel).
pub const MAX_SESSIONS: usize = 16;
/// Ended sessions kept for their status, beyond the running ones.
const MAX_ENDED: usize = 64;
/// AMT's redirection port (plain; the gateway reaches it through the tunnel).
const REDIRECTION_PORT: u16 = 16994;
/// How long the device may take to dial back after dropping its tunnel.
const REDIAL_WAIT: Duration = Duration::from_secs(180);
/// How long a new session waits for the technician's console to be attached again after a redial,
/// so that the boot it starts is on their screen.
const CONSOLE_FIRST: Duration = Duration::from_secs(20);
/// Sessions that fail to open in a row before serving gives up.
const MAX_FAILURES: u32 = 5;
/// Pause after a session that failed to open.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often the tunnel and the console are looked for while waiting.
const POLL: Duration = Duration::from_millis(500);
/// Bytes hashed per read when checking an image.
const HASH_BLOCK: usize = 1 << 20;

/// Why the gateway does not serve.
#[derive(Debug, thiserror::Error)]
pub enum IderServeError {
    #[error(
        "the gateway is already serving {content:?} to device {uuid} over IDE-R (AMT holds one IDE-R session at a \
         time); stop it first (`DELETE /api/v1/devices/{uuid}/ider`)"
    )]
    AlreadyServing { uuid: Uuid, content: String },
    #[error("the gateway already serves {0} IDE-R sessions, its most; stop one first")]
    TooMany(usize),
    #[error(
        "content item {name:?} is of kind {kind}, not a rescue image: publish the ISO with `tether content publish \
         NAME FILE --kind rescue-image`"
    )]
    NotRescueImage { name: String, kind: &'static str },
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(
        "content item {name:?} on this gateway does not match its signed manifest ({why}), so it was not served: \
         publish it again (on a maintenance silo, the next request fetches it again from the root)"
    )]
    Damaged { name: String, why: String },
}

/// A rescue image whose file was checked against its manifest, opened.
#[derive(Debug, Clone)]
pub struct CheckedImage {
    pub name: String,
    pub sha256: [u8; 32],
    pub size: u64,
    file: Arc<std::fs::File>,
}

/// The item `name`, checked: a rescue image, and its file (opened once, and that handle kept for
/// serving) the manifest's size and SHA-256.
pub async fn checked_image(content: &Content, name: &str) -> Result<CheckedImage, IderServeError> {
    let item = content.item(name).await?;
    let manifest = item.manifest;
    if manifest.kind != ContentKind::RescueImage {
        return Err(IderServeError::NotRescueImage { name: manifest.name, kind: manifest.kind.name() });
    }
    let path = item.path;
    let (file, size, sha256) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let file = std::fs::File::open(&path)?;
        let (size, sha256) = hash(&file)?;
        Ok((file, size, sha256))
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r)
    .map_err(ContentError::Io)?;
    let damaged = |why: String| IderServeError::Damaged { name: manifest.name.clone(), why };
    if size != manifest.size {
        return Err(damaged(format!("{size} bytes where it says {}", manifest.size)));
    }
    if sha256 != manifest.sha256 {
        return Err(damaged(format!("SHA-256 {} where it says {}", hex::encode(sha256), hex::encode(manifest.sha256))));
    }
    Ok(CheckedImage { name: manifest.name, sha256, size, file: Arc::new(file) })
}

/// The size and SHA-256 of what `file` holds, read at offsets (its cursor is not used).
fn hash(file: &std::fs::File) -> std::io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BLOCK];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            return Ok((offset, hasher.finalize().into()));
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IderState {
    /// Opening the first IDE-R session with the device.
    Starting,
    /// IDE-R is enabled on the device and the image is served (also while the device redials).
    Serving,
    /// Over: see `ended` and `error`.
    Ended,
}

/// A session's state, as `GET /api/v1/devices/{uuid}/ider` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IderStatus {
    pub uuid: Uuid,
    /// The content item served as the CD.
    pub content: String,
    /// Its SHA-256 (hex), checked against the signed manifest before serving.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    pub state: IderState,
    /// Who asked for it (the token's name).
    pub technician: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// Bytes of the image read by the device, over all its IDE-R sessions.
    pub bytes_served: u64,
    /// Reads of the medium answered.
    pub reads: u64,
    /// ATAPI commands answered.
    pub commands: u64,
    /// IDE-R sessions opened with the device (one more after each redial).
    pub sessions: u32,
    /// Why it ended, once it has.
    pub ended: Option<String>,
    /// What went wrong, when something did (the last failure while serving goes on).
    pub error: Option<String>,
}

#[derive(Debug)]
struct Mutable {
    state: IderState,
    ended_at: Option<OffsetDateTime>,
    sessions: u32,
    ended: Option<String>,
    error: Option<String>,
}

/// One session of the gateway serving IDE-R to a device.
#[derive(Debug)]
pub struct IderSession {
    uuid: Uuid,
    image: CheckedImage,
    technician: String,
    started_at: OffsetDateTime,
    progress: Arc<Progress>,
    stop: watch::Sender<bool>,
    state: Mutex<Mutable>,
}

impl IderSession {
    fn lock(&self) -> MutexGuard<'_, Mutable> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn status(&self) -> IderStatus {
        let state = self.lock();
        let served = self.progress.served();
        IderStatus {
            uuid: self.uuid,
            content: self.image.name.clone(),
            sha256: hex::encode(self.image.sha256),
            size: self.image.size,
            state: state.state,
            technician: self.technician.clone(),
            started_at: self.started_at,
            ended_at: state.ended_at,
            bytes_served: served.bytes,
            reads: served.reads,
            commands: served.commands,
            sessions: state.sessions,
            ended: state.ended.clone(),
            error: state.error.clone(),
        }
    }

    fn running(&self) -> bool {
        self.lock().state != IderState::Ended
    }

    /// Asks the session to end (politely: EndIDER, EndRedirectionSession).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits (at most `timeout`) until the session has ended.
    pub async fn ended(&self, timeout: Duration) -> bool {
        let wait = async {
            while self.running() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    fn end(&self, why: &str, error: Option<String>) {
        let mut state = self.lock();
        state.state = IderState::Ended;
        state.ended_at = Some(OffsetDateTime::now_utc());
        state.ended = Some(why.to_string());
        if error.is_some() {
            state.error = error;
        }
    }
}

/// The sessions the gateway serves: one per device, [`MAX_SESSIONS`] running at once, the ended
/// ones kept for their status until [`MAX_ENDED`] are.
#[derive(Debug, Default)]
pub struct IderSessions {
    table: Mutex<HashMap<Uuid, Arc<IderSession>>>,
}

/// What [`IderSessions::start`] needs.
#[derive(Debug)]
pub struct Start {
    pub uuid: Uuid,
    pub image: CheckedImage,
    pub account: Account,
    /// The token's name, for the status and the redirection record.
    pub technician: String,
    /// Who asked (the technician's address), passed on as the channel's originator.
    pub originator: SocketAddr,
}

impl IderSessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<IderSession>>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session of `uuid`, running or the last one ended.
    pub fn get(&self, uuid: Uuid) -> Option<Arc<IderSession>> {
        self.lock().get(&uuid).cloned()
    }

    /// Asks the running session of `uuid` to end; the session, if there was one.
    pub fn stop(&self, uuid: Uuid) -> Option<Arc<IderSession>> {
        let session = self.get(uuid)?;
        session.stop();
        Some(session)
    }

    /// Starts serving; the answer once the first IDE-R session is enabled on the device, or
    /// failed (then the status says why).
    pub fn start(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        start: Start,
    ) -> Result<(Arc<IderSession>, oneshot::Receiver<()>), IderServeError> {
        let (stop, _) = watch::channel(false);
        let session = Arc::new(IderSession {
            uuid: start.uuid,
            image: start.image,
            technician: start.technician,
            started_at: OffsetDateTime::now_utc(),
            progress: Arc::default(),
            stop,
            state: Mutex::new(Mutable {
                state: IderState::Starting,
                ended_at: None,
                sessions: 0,
                ended: None,
                error: None,
            }),
        });
        {
            let mut table = self.lock();
            if let Some(running) = table.get(&start.uuid).filter(|s| s.running()) {
                return Err(IderServeError::AlreadyServing { uuid: start.uuid, content: running.image.name.clone() });
            }
            let running = table.values().filter(|s| s.running()).count();
            if running >= MAX_SESSIONS {
                return Err(IderServeError::TooMany(MAX_SESSIONS));
            }
            if table.len() >= MAX_SESSIONS + MAX_ENDED {
                let oldest = table.values().filter(|s| !s.running()).min_by_key(|s| s.lock().ended_at).map(|s| s.uuid);
                if let Some(oldest) = oldest {
                    table.remove(&oldest);
                }
            }
            table.insert(start.uuid, Arc::clone(&session));
        }
        let (ready_tx, ready_rx) = oneshot::channel();
        let endpoint = tunnel_endpoint(shared, start.uuid, &session.technician, start.originator);
        info!(uuid = %start.uuid, content = %session.image.name, technician = %session.technician,
            "serving a content item over IDE-R");
        tokio::spawn(serve(Arc::clone(shared), Arc::clone(&session), endpoint, start.account, ready_tx));
        Ok((session, ready_rx))
    }
}

/// The endpoint of the device's redirection port through its tunnel, recorded as a session of
/// `technician`'s (served by the gateway).
fn tunnel_endpoint(shared: &Arc<Shared>, uuid: Uuid, technician: &str, originator: SocketAddr) -> Endpoint {
    let shared = Arc::clone(shared);
    let label = format!("{technician} (served by the gateway)");
    let open = StreamOpener(Arc::new(move || {
        let shared = Arc::clone(&shared);
        let label = label.clone();
        Box::pin(async move {
            let stream = open_stream(&shared, uuid, originator).await?;
            let tap = RelayTap::for_relay(&shared, uuid, &label, REDIRECTION_PORT);
            Ok(OpenedStream { stream, tap })
        })
    }));
    Endpoint::Tunnel { uuid, open }
}

/// A stream to the device's redirection port: through its tunnel here, or over the fleet link to
/// the gateway holding it.
async fn open_stream(
    shared: &Shared,
    uuid: Uuid,
    originator: SocketAddr,
) -> anyhow::Result<crate::stream::DeviceStream> {
    if let Some(tunnel) = shared.registry.any(uuid) {
        return Ok(tunnel.open_stream(REDIRECTION_PORT, originator, shared.channel_open_timeout()).await?);
    }
    let holder = shared.store.holder(uuid).await?;
    match (holder, &shared.peers) {
        (Some(instance), Some(peers)) if instance != shared.instance => {
            Ok(peers.open_stream(&instance, uuid, REDIRECTION_PORT, originator).await?)
        }
        _ => Err(OpenRefused::NotConnected(uuid).into()),
    }
}

/// Whether the device has a tunnel (here, or at another gateway of the fleet).
async fn connected(shared: &Shared, uuid: Uuid) -> bool {
    shared.registry.any(uuid).is_some()
        || (shared.peers.is_some() && shared.store.holder(uuid).await.ok().flatten().is_some())
}

/// Whether a technician's serial console on the device was started at or after `since` and is
/// open (`Some(false)`: one was seen since the session started, but none is open now).
async fn console_attached(shared: &Shared, uuid: Uuid, since: OffsetDateTime) -> Option<bool> {
    let rows = shared.store.redirections_for(uuid, false, 20).await.ok()?;
    let sol = |r: &&crate::store::RedirectionRecord| r.kind == "sol" && r.started_at >= since;
    let seen = rows.iter().any(|r| sol(&r));
    let open = rows.iter().any(|r| sol(&r) && r.ended_at.is_none());
    (seen || open).then_some(open)
}

/// Resolves once `stop` is true.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves until stopped, opening IDE-R again after every drop (see the module doc).
async fn serve(
    shared: Arc<Shared>,
    session: Arc<IderSession>,
    endpoint: Endpoint,
    account: Account,
    ready: oneshot::Sender<()>,
) {
    let uuid = session.uuid;
    let mut stop = session.stop.subscribe();
    // The gateway's shutdown stops serving too.
    let watcher = {
        let session = Arc::clone(&session);
        let mut shutdown = shared.shutdown.clone();
        let mut stop = session.stop.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = crate::state::stopping(&mut shutdown) => session.stop(),
                _ = stopped(&mut stop) => {}
            }
        })
    };
    let mut ready = Some(ready);
    let mut failures = 0u32;
    let images = Images { cd_opened: Some(Arc::clone(&session.image.file)), ..Images::default() };
    let outcome: Result<String, String> = loop {
        if *stop.borrow() {
            break Ok("stopped".into());
        }
        let (enabled_tx, enabled_rx) = oneshot::channel();
        let options = ServeOptions {
            quiet: true,
            stop: Some(session.stop.subscribe()),
            ready: Some(enabled_tx),
            progress: Some(Arc::clone(&session.progress)),
            ignore_signals: true,
        };
        let mut opened = false;
        let (result, ()) =
            tokio::join!(ider::run_with(endpoint.clone(), account.clone(), images.clone(), options), async {
                if enabled_rx.await.is_ok() {
                    opened = true;
                    {
                        let mut state = session.lock();
                        state.state = IderState::Serving;
                        state.sessions += 1;
                    }
                    info!(%uuid, content = %session.image.name, "IDE-R enabled on the device: serving the image");
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
            });
        match result {
            Ok((_, why)) => info!(%uuid, why = %why, "an IDE-R session served by the gateway ended"),
            Err(err) => {
                let text = format!("{err:#}");
                if opened {
                    info!(%uuid, error = %text, "an IDE-R session served by the gateway ended");
                } else {
                    warn!(%uuid, error = %text, "cannot open IDE-R with the device");
                    session.lock().error = Some(text.clone());
                    // The first session must open: the caller is told why it did not.
                    if ready.is_some() {
                        break Err(text);
                    }
                    failures += 1;
                    if failures >= MAX_FAILURES {
                        break Err(format!("IDE-R could not be opened {MAX_FAILURES} times in a row: {text}"));
                    }
                }
            }
        }
        if opened {
            failures = 0;
        }
        if *stop.borrow() {
            break Ok("stopped".into());
        }
        let dropped = OffsetDateTime::now_utc();
        tokio::select! {
            _ = stopped(&mut stop) => break Ok("stopped".into()),
            back = redialled(&shared, uuid, opened) => if !back {
                break Err(format!("device {uuid} did not dial back within {} s", REDIAL_WAIT.as_secs()));
            },
        }
        // The console first, when the technician has one on the device: the boot that the new
        // IDE-R session starts is then on their screen.
        let console = async {
            let deadline = tokio::time::Instant::now() + CONSOLE_FIRST;
            while tokio::time::Instant::now() < deadline {
                match console_attached(&shared, uuid, session.started_at).await {
                    None => return,
                    Some(true) if console_attached_since(&shared, uuid, dropped).await => return,
                    Some(_) => tokio::time::sleep(POLL).await,
                }
            }
        };
        tokio::select! {
            _ = stopped(&mut stop) => break Ok("stopped".into()),
            () = console => {}
        }
    };
    let (why, error) = match outcome {
        Ok(why) => (why, None),
        Err(error) => ("failed".to_string(), Some(error)),
    };
    session.end(&why, error.clone());
    watcher.abort();
    let served = session.progress.served();
    info!(%uuid, content = %session.image.name, bytes = served.bytes, reads = served.reads, why = %why,
        error = error.as_deref().unwrap_or(""), "the gateway stopped serving IDE-R");
}

/// Whether a console was opened on the device at or after `since` and is still open.
async fn console_attached_since(shared: &Shared, uuid: Uuid, since: OffsetDateTime) -> bool {
    console_attached(shared, uuid, since).await == Some(true)
}

/// Waits until the device has a tunnel again (after a pause, when the last session failed to
/// open); false when it did not dial back within [`REDIAL_WAIT`].
async fn redialled(shared: &Shared, uuid: Uuid, opened: bool) -> bool {
    if !opened {
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    let deadline = tokio::time::Instant::now() + REDIAL_WAIT;
    while tokio::time::Instant::now() < deadline {
        if connected(shared, uuid).await {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_of_a_file_is_read_whole_at_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let data: Vec<u8> = (0..(HASH_BLOCK + 12_345)).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let (size, sha) = hash(&file).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(&data)));
    }
}
