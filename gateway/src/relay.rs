//! The relay: pipes one technician WebSocket to one device stream, both ways, with backpressure,
//! and ends it when either side is done or one of its limits is reached.
//!
//! Framing on the WebSocket: binary messages carry bytes, and each device message (one chunk of
//! the stream) goes out as one binary message, so redirection consoles see the device's message
//! boundaries. A text message `eof` means "no more data from this side" (TCP half-close); once both
//! sides have sent it, the relay ends. A close frame ends the relay; the gateway's close frame says
//! why in its reason.
//!
//! Bounds: a device chunk is credited back to the device only once its WebSocket send completed,
//! and technician messages are written into the stream's send budget. A relay therefore holds at
//! most the device's window, the chunk being sent, the stream's send budget and one technician
//! message (`api.max_frame_bytes`): a technician who stops reading stalls the device, not the
//! gateway's memory.
//!
//! Ends ([`RelayEnd`]): either side closing, the device's tunnel going away, no payload either way
//! for the idle timeout, the maximum duration, the ping timeout, a frame over the size limit
//! (checked by the WebSocket layer before buffering, see [`limit_frames`]), or a [`Stop`] from
//! outside (token revoked or expired). Pings go out every ping interval, and the ping timeout ends
//! a relay when no frame at all came from the technician for that long, or a send to it has not
//! completed for that long (it stopped reading). Its timer runs apart from the sends, so it fires
//! while a send is stuck; while the relay waits for the device to take the technician's data, the
//! technician's frames are not read, and its silence alone does not count.
//!
//! Taps: a relay to a redirection port may carry a [`RelayTap`], which is shown every chunk of
//! both directions before it is forwarded (a synchronous call, no copy, no wait; see
//! `redir_tap`).
//!
//! What it does not do: open streams, check tokens or keep the table of live relays (`api`), or
//! speak any tunnel protocol (`cira`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::ApiConfig;
pub use crate::metrics::RelayEnd;
use crate::redir_tap::RelayTap;
use crate::stream::{DeviceReader, DeviceStream, DeviceWriter};

/// The text message that signals a half-close.
pub const EOF_MESSAGE: &str = "eof";

/// How long the gateway's close frame may take to go out, and then the technician's answer to
/// come back, before the connection is dropped anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The limits of one relay (from the `[api]` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_duration: Duration,
    /// Named in the close reason; the WebSocket layer enforces it.
    pub max_frame_bytes: usize,
}

impl RelayLimits {
    pub fn from_config(api: &ApiConfig) -> Self {
        Self {
            ping_interval: Duration::from_secs(api.ping_interval_secs.max(1)),
            ping_timeout: Duration::from_secs(api.ping_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(api.relay_idle_timeout_secs.max(1)),
            max_duration: Duration::from_secs(api.relay_max_duration_secs.max(1)),
            max_frame_bytes: api.max_frame_bytes,
        }
    }
}

/// Applies the frame and message size limit to an upgrade. The WebSocket layer (tungstenite)
/// checks a frame's length as soon as its header arrives, before buffering the payload.
pub fn limit_frames(ws: WebSocketUpgrade, limits: &RelayLimits) -> WebSocketUpgrade {
    ws.max_frame_size(limits.max_frame_bytes).max_message_size(limits.max_frame_bytes)
}

/// Why something outside the relay ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    TokenRevoked,
    TokenExpired,
    /// A technician closed the device's remote-fix session (`tether session close`).
    SessionClosed,
    /// The token's user may no longer reach the machine: suspended, removed as a contact, or
    /// the subscription was terminated (counted as `token_revoked`).
    AccessRevoked,
}

/// How a relay went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub end: RelayEnd,
    /// Payload bytes written to the device stream.
    pub to_device: u64,
    /// Payload bytes sent to the technician.
    pub from_device: u64,
    pub duration: Duration,
}

/// How the relay loop ended, before the close frame is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    End(RelayEnd),
    Stopped(Stop),
    /// Writing to the device failed: the device closed the channel, or its tunnel is gone.
    DeviceWriteFailed,
}

/// Most device bytes sent to the technician with one flush.
const MAX_BATCH: usize = 256 * 1024;

/// Relays until either side is done or a limit is reached; closes the WebSocket with a reason.
pub async fn run(
    socket: WebSocket,
    stream: DeviceStream,
    limits: RelayLimits,
    stop: oneshot::Receiver<Stop>,
) -> Outcome {
    run_tapped(socket, stream, limits, stop, None).await
}

/// [`run`], showing every chunk to `tap` (if any) before forwarding it.
pub async fn run_tapped(
    socket: WebSocket,
    stream: DeviceStream,
    limits: RelayLimits,
    stop: oneshot::Receiver<Stop>,
    tap: Option<&RelayTap>,
) -> Outcome {
    let started = Instant::now();
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut from_device, mut to_device) = stream.into_split();

    let progress = Progress::new(started);
    let ending = {
        let to_technician =
            device_to_technician(&mut from_device, &mut ws_tx, &progress, started, limits.ping_interval, tap);
        let to_device_side = technician_to_device(&mut ws_rx, &mut to_device, &progress, tap);
        tokio::pin!(to_technician, to_device_side);
        let mut stop = stop;
        let mut stop_open = true;
        let max_deadline = started + limits.max_duration;
        loop {
            let idle_deadline = progress.at(&progress.payload) + limits.idle_timeout;
            let next = max_deadline.min(idle_deadline).min(progress.ping_deadline(limits.ping_timeout));
            tokio::select! {
                ending = &mut to_technician => break ending,
                ending = &mut to_device_side => break ending,
                stopped = &mut stop, if stop_open => match stopped {
                    Ok(why) => break Ending::Stopped(why),
                    // Whoever could stop the relay is gone; nothing else changes.
                    Err(_) => stop_open = false,
                },
                _ = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    if now >= max_deadline {
                        break Ending::End(RelayEnd::MaxDuration);
                    }
                    if now >= progress.at(&progress.payload) + limits.idle_timeout {
                        break Ending::End(RelayEnd::IdleTimeout);
                    }
                    if now >= progress.ping_deadline(limits.ping_timeout) {
                        break Ending::End(RelayEnd::PingTimeout);
                    }
                }
            }
        }
    };

    let end = match ending {
        Ending::End(end) => end,
        Ending::Stopped(Stop::SessionClosed) => RelayEnd::SessionClosed,
        Ending::Stopped(_) => RelayEnd::TokenRevoked,
        Ending::DeviceWriteFailed => device_end(&mut from_device),
    };
    // Close the channel to the device before the WebSocket goodbye, which may take a while.
    drop((from_device, to_device));
    let frame = CloseFrame { code: close_code(end), reason: close_reason(ending, end, &limits).into() };
    let sent = tokio::time::timeout(CLOSE_WAIT, ws_tx.send(Message::Close(Some(frame)))).await;
    if end != RelayEnd::TechnicianClosed && matches!(sent, Ok(Ok(()))) {
        // Give the technician a moment to read the close frame and answer it; dropping the
        // connection at once could reset it before the reason arrives.
        let answered = async {
            while let Some(Ok(message)) = ws_rx.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, answered).await;
    }
    Outcome {
        end,
        to_device: progress.to_device.load(Ordering::Relaxed),
        from_device: progress.from_device.load(Ordering::Relaxed),
        duration: started.elapsed(),
    }
}

/// Device → technician, and the pings: one sender, in order. Each device chunk goes out as one
/// WebSocket message and is credited back to the device only once sent.
async fn device_to_technician(
    from_device: &mut DeviceReader,
    ws_tx: &mut SplitSink<WebSocket, Message>,
    progress: &Progress,
    started: Instant,
    ping_interval: Duration,
    tap: Option<&RelayTap>,
) -> Ending {
    let mut ping = tokio::time::interval_at(started + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            chunk = from_device.chunk(), if !progress.device_eof.load(Ordering::Relaxed) => match chunk {
                Ok(Some(bytes)) => {
                    // One device message, one WebSocket message (redirection consoles care); the
                    // messages already queued go out together, with one flush.
                    let mut batch = 0;
                    let mut next = Some(bytes);
                    progress.mark(&progress.sending_since);
                    while let Some(bytes) = next.take() {
                        batch += bytes.len();
                        // Before the send: the tap sees a reply before the console can answer it.
                        if let Some(tap) = tap {
                            tap.from_device(&bytes);
                        }
                        if ws_tx.feed(Message::Binary(bytes)).await.is_err() {
                            return Ending::End(RelayEnd::TechnicianClosed);
                        }
                        if batch < MAX_BATCH && from_device.queued().0 > 0 {
                            // Queued: ready at once, and never the end of the stream.
                            if let Some(Ok(Some(more))) = from_device.chunk().now_or_never() {
                                next = Some(more);
                            }
                        }
                    }
                    let flushed = ws_tx.flush().await.is_ok();
                    progress.sending_since.store(NOT_SENDING, Ordering::Relaxed);
                    if !flushed {
                        return Ending::End(RelayEnd::TechnicianClosed);
                    }
                    // Credit back only what left for the technician.
                    from_device.release(batch);
                    progress.from_device.fetch_add(batch as u64, Ordering::Relaxed);
                    progress.mark(&progress.payload);
                }
                Ok(None) => {
                    if !send(ws_tx, progress, Message::Text(EOF_MESSAGE.into())).await {
                        return Ending::End(RelayEnd::TechnicianClosed);
                    }
                    progress.device_eof.store(true, Ordering::Relaxed);
                    if let Some(first) = progress.both_done(RelayEnd::DeviceClosed) {
                        return Ending::End(first);
                    }
                }
                Err(_) => return Ending::End(RelayEnd::TunnelGone),
            },
            _ = ping.tick() => {
                if !send(ws_tx, progress, Message::Ping(Bytes::new())).await {
                    return Ending::End(RelayEnd::TechnicianClosed);
                }
            }
        }
    }
}

/// Technician → device: binary messages into the device stream, `eof` as a half-close.
async fn technician_to_device(
    ws_rx: &mut SplitStream<WebSocket>,
    to_device: &mut DeviceWriter,
    progress: &Progress,
    tap: Option<&RelayTap>,
) -> Ending {
    loop {
        let Some(message) = ws_rx.next().await else { return Ending::End(RelayEnd::TechnicianClosed) };
        progress.mark(&progress.heard);
        match message {
            Err(err) if is_too_large(&err) => return Ending::End(RelayEnd::FrameTooLarge),
            Err(_) | Ok(Message::Close(_)) => return Ending::End(RelayEnd::TechnicianClosed),
            // Data after the technician's own `eof` has nowhere to go.
            Ok(Message::Binary(_)) if progress.technician_eof.load(Ordering::Relaxed) => {}
            Ok(Message::Binary(bytes)) => {
                if let Some(tap) = tap {
                    tap.from_console(&bytes);
                }
                progress.writing.store(true, Ordering::Relaxed);
                let written = to_device.write_all(&bytes).await;
                progress.writing.store(false, Ordering::Relaxed);
                // Waiting for the device is not the technician's silence.
                progress.mark(&progress.heard);
                if written.is_err() {
                    return Ending::DeviceWriteFailed;
                }
                progress.to_device.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                progress.mark(&progress.payload);
            }
            Ok(Message::Text(text))
                if text.as_str() == EOF_MESSAGE && !progress.technician_eof.load(Ordering::Relaxed) =>
            {
                progress.writing.store(true, Ordering::Relaxed);
                let shut = to_device.shutdown().await;
                progress.writing.store(false, Ordering::Relaxed);
                progress.mark(&progress.heard);
                if shut.is_err() {
                    return Ending::DeviceWriteFailed;
                }
                progress.technician_eof.store(true, Ordering::Relaxed);
                if let Some(first) = progress.both_done(RelayEnd::TechnicianClosed) {
                    return Ending::End(first);
                }
            }
            Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)) => {}
        }
    }
}

/// What the parts of one relay share. They run on one task, so nothing here is contended; atomics
/// only because that task may move between threads.
#[derive(Debug)]
struct Progress {
    started: Instant,
    /// When the technician last sent a frame (any kind), as time since `started`.
    heard: AtomicU64,
    /// When payload last moved either way.
    payload: AtomicU64,
    /// A technician message is on its way into the device stream (its budget is full): the
    /// technician's frames are not being read, so its silence does not count.
    writing: AtomicBool,
    /// When the send to the technician now under way started; [`NOT_SENDING`] if none is.
    sending_since: AtomicU64,
    to_device: AtomicU64,
    from_device: AtomicU64,
    device_eof: AtomicBool,
    technician_eof: AtomicBool,
    /// Which side sent `eof` first: 0 none yet, 1 the device, 2 the technician.
    first_eof: AtomicU8,
}

impl Progress {
    fn new(started: Instant) -> Self {
        Progress {
            started,
            heard: AtomicU64::new(0),
            payload: AtomicU64::new(0),
            writing: AtomicBool::new(false),
            sending_since: AtomicU64::new(NOT_SENDING),
            to_device: AtomicU64::new(0),
            from_device: AtomicU64::new(0),
            device_eof: AtomicBool::new(false),
            technician_eof: AtomicBool::new(false),
            first_eof: AtomicU8::new(0),
        }
    }

    fn mark(&self, when: &AtomicU64) {
        let since = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        when.store(since, Ordering::Relaxed);
    }

    fn at(&self, when: &AtomicU64) -> Instant {
        self.started + Duration::from_nanos(when.load(Ordering::Relaxed))
    }

    /// When the technician is taken for gone: after `timeout` of silence, or of a send to it that
    /// does not complete (it stopped reading). While a write to the device is waiting, silence
    /// does not count (the technician's frames are not being read): the deadline is then a whole
    /// timeout away, and checked again then; a stuck send still counts.
    fn ping_deadline(&self, timeout: Duration) -> Instant {
        let silence = if self.writing.load(Ordering::Relaxed) {
            Instant::now() + timeout
        } else {
            self.at(&self.heard) + timeout
        };
        match self.sending_since.load(Ordering::Relaxed) {
            NOT_SENDING => silence,
            since => silence.min(self.started + Duration::from_nanos(since) + timeout),
        }
    }

    /// Records that `side` sent `eof`; once both have, the relay's end: the side that finished
    /// first is the one that ended it.
    fn both_done(&self, side: RelayEnd) -> Option<RelayEnd> {
        let code = if side == RelayEnd::DeviceClosed { 1 } else { 2 };
        let _ = self.first_eof.compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
        let both = self.device_eof.load(Ordering::Relaxed) && self.technician_eof.load(Ordering::Relaxed);
        both.then(|| {
            if self.first_eof.load(Ordering::Relaxed) == 1 {
                RelayEnd::DeviceClosed
            } else {
                RelayEnd::TechnicianClosed
            }
        })
    }
}

const NOT_SENDING: u64 = u64::MAX;

/// Sends one message to the technician, noting while it is under way; false if the connection
/// broke.
async fn send(ws_tx: &mut SplitSink<WebSocket, Message>, progress: &Progress, message: Message) -> bool {
    progress.mark(&progress.sending_since);
    let sent = ws_tx.send(message).await.is_ok();
    progress.sending_since.store(NOT_SENDING, Ordering::Relaxed);
    sent
}

/// After a failed write: whether the device closed the channel or its tunnel went away. The
/// reading half tells them apart (the tunnel's end is an error once the queue is drained).
fn device_end(from_device: &mut DeviceReader) -> RelayEnd {
    loop {
        match from_device.chunk().now_or_never() {
            // Nobody will read what is left.
            Some(Ok(Some(_))) => continue,
            Some(Err(_)) => return RelayEnd::TunnelGone,
            Some(Ok(None)) | None => return RelayEnd::DeviceClosed,
        }
    }
}

/// Whether a WebSocket error is a frame or message over the configured size: tungstenite (the
/// same version axum uses) reports it as a capacity error, checked from the frame header before
/// the payload is buffered.
fn is_too_large(err: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<Error>())
        .is_some_and(|e| matches!(e, Error::Capacity(_)))
}

fn close_code(end: RelayEnd) -> u16 {
    match end {
        RelayEnd::TechnicianClosed | RelayEnd::DeviceClosed | RelayEnd::IdleTimeout => 1000,
        RelayEnd::TunnelGone | RelayEnd::PingTimeout => 1001,
        RelayEnd::MaxDuration | RelayEnd::TokenRevoked | RelayEnd::SessionClosed => 1008,
        RelayEnd::FrameTooLarge => 1009,
    }
}

fn close_reason(ending: Ending, end: RelayEnd, limits: &RelayLimits) -> String {
    match (ending, end) {
        (Ending::Stopped(Stop::TokenExpired), _) => "the token expired".into(),
        (Ending::Stopped(Stop::TokenRevoked), _) => "the token was revoked".into(),
        (Ending::Stopped(Stop::SessionClosed), _) => "a technician closed the device's remote-fix session".into(),
        (Ending::Stopped(Stop::AccessRevoked), _) => {
            "access to the machine was withdrawn (user suspended, contact removed or subscription ended)".into()
        }
        (_, RelayEnd::TechnicianClosed) => "closed by the technician".into(),
        (_, RelayEnd::DeviceClosed) => "the device closed the connection".into(),
        (_, RelayEnd::TunnelGone) => "the device's tunnel closed (device offline, or gateway restarting)".into(),
        (_, RelayEnd::IdleTimeout) => {
            format!("no data either way for {} (api.relay_idle_timeout_secs)", span(limits.idle_timeout))
        }
        (_, RelayEnd::MaxDuration) => {
            format!(
                "the relay reached its maximum duration, {} (api.relay_max_duration_secs)",
                span(limits.max_duration)
            )
        }
        (_, RelayEnd::PingTimeout) => {
            format!("no answer to pings for {} (api.ping_timeout_secs)", span(limits.ping_timeout))
        }
        (_, RelayEnd::FrameTooLarge) => {
            format!("a message was larger than {} bytes (api.max_frame_bytes)", limits.max_frame_bytes)
        }
        (_, RelayEnd::TokenRevoked) => "the token was revoked".into(),
        (_, RelayEnd::SessionClosed) => "a technician closed the device's remote-fix session".into(),
    }
}

fn span(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
#[path = "relay_test.rs"]
mod tests;
