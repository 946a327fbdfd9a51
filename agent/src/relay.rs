//! Relayed sessions: the gateway opens a QUIC stream per session (the TLS fallback has one
//! stream, so no sessions over it), starting with one `ChannelOpen` frame. The agent refuses
//! (`ChannelRefuse`) when the PC user has remote help off, when the port is not in the local
//! policy's `[forward] ports`, when [`MAX_CHANNELS`] are open already, or when nothing answers on
//! `127.0.0.1:PORT` within 5 s; otherwise it answers `ChannelAccept` and copies raw bytes both
//! ways until either side ends, finishing the stream at the local side's end of file.
//!
//! Exactly one frame is read from the stream (its header, then its body): the session's bytes
//! follow it and must reach the local port untouched.
//!
//! What it does not do: accept the streams (`conn`), or decide who may ask (the gateway).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use protocols::tap::{self, Message, RefuseReason};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::actions::REMOTE_HELP_OFF;
use crate::state::StateDir;

/// Relayed sessions open at once at most (beyond: `Busy`).
pub const MAX_CHANNELS: usize = 16;
/// Time for the gateway's `ChannelOpen` to arrive on a new stream, and for the answer to go.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for the local port to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What relayed sessions need: the consent (read from `state.json` at each open), the ports the
/// local policy forwards, the channel slots.
#[derive(Debug, Clone)]
pub struct Relay {
    state: StateDir,
    ports: Arc<Vec<u16>>,
    slots: Arc<Semaphore>,
    /// Where forwarded ports are: 127.0.0.1.
    host: Ipv4Addr,
}

impl Relay {
    pub fn new(state: StateDir, ports: Vec<u16>) -> Relay {
        Relay {
            state,
            ports: Arc::new(ports),
            slots: Arc::new(Semaphore::new(MAX_CHANNELS)),
            host: Ipv4Addr::LOCALHOST,
        }
    }

    /// Channels open now.
    pub fn open_channels(&self) -> usize {
        MAX_CHANNELS - self.slots.available_permits()
    }

    /// Serves a stream the gateway opened, in a task of its own.
    pub fn spawn<R, W>(&self, recv: R, send: W)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(self.clone().serve(recv, send));
    }

    /// One stream: its `ChannelOpen`, the answer, then the session.
    pub async fn serve<R, W>(self, mut recv: R, mut send: W)
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let (channel, port, requested_by) = match tokio::time::timeout(OPEN_TIMEOUT, read_open(&mut recv)).await {
            Ok(Ok(open)) => open,
            Ok(Err(err)) => {
                warn!(error = %format!("{err:#}"), "a relayed-session stream did not start with a channel open");
                let _ = send.shutdown().await;
                return;
            }
            Err(_) => {
                warn!("no channel open on a relayed-session stream within 10 s");
                let _ = send.shutdown().await;
                return;
            }
        };
        let refuse = |reason, text: String| Message::ChannelRefuse { channel, reason, text };
        let remote_help = self.state.state().map(|s| s.remote_help).unwrap_or(false);
        let (answer, local) = if !remote_help {
            (refuse(RefuseReason::RemoteHelpDisabled, REMOTE_HELP_OFF.into()), None)
        } else if !self.ports.contains(&port) {
            let text = format!("port {port} is not in this PC's forward policy ([forward] ports in policy.toml)");
            (refuse(RefuseReason::PortNotAllowed, text), None)
        } else if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            let addr = SocketAddr::from((self.host, port));
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => (Message::ChannelAccept { channel }, Some((tcp, permit))),
                Ok(Err(err)) => (refuse(RefuseReason::ConnectFailed, format!("connecting to {addr}: {err}")), None),
                Err(_) => (refuse(RefuseReason::ConnectFailed, format!("no answer from {addr} within 5 s")), None),
            }
        } else {
            let text = format!("{MAX_CHANNELS} relayed sessions are open on this PC already");
            (refuse(RefuseReason::Busy, text), None)
        };
        match &answer {
            Message::ChannelRefuse { reason, text, .. } => {
                info!(port, channel, %requested_by, ?reason, %text, "relayed session refused")
            }
            _ => info!(port, channel, %requested_by, "relayed session opened"),
        }
        let mut frame = BytesMut::with_capacity(answer.encoded_len());
        answer.encode(&mut frame);
        let wrote = tokio::time::timeout(OPEN_TIMEOUT, async {
            send.write_all(&frame).await?;
            send.flush().await
        })
        .await;
        if !matches!(wrote, Ok(Ok(()))) {
            debug!(port, channel, "could not answer the channel open");
            return;
        }
        let Some((mut tcp, _permit)) = local else {
            let _ = send.shutdown().await;
            return;
        };
        let _ = tcp.set_nodelay(true);
        let mut stream = tokio::io::join(recv, send);
        match tokio::io::copy_bidirectional(&mut stream, &mut tcp).await {
            Ok((up, down)) => info!(port, channel, to_port = up, from_port = down, "relayed session ended"),
            Err(err) => info!(port, channel, error = %err, "relayed session ended"),
        }
    }
}

/// Reads exactly one frame, which must be a `ChannelOpen`: channel, port, requested by.
async fn read_open<R: AsyncRead + Unpin>(recv: &mut R) -> Result<(u32, u16, String)> {
    let limits = tap::Limits::default();
    let mut frame = vec![0u8; tap::HEADER_LEN];
    recv.read_exact(&mut frame).await.context("reading the frame header")?;
    let len = u32::from_be_bytes([frame[2], frame[3], frame[4], frame[5]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > limits.max_frame {
        bail!("a {len}-byte frame, over the limit of {}", limits.max_frame);
    }
    frame.resize(tap::HEADER_LEN + len, 0);
    recv.read_exact(&mut frame[tap::HEADER_LEN..]).await.context("reading the frame body")?;
    match tap::decode(&frame, &limits).context("the frame does not decode")? {
        Some((Message::ChannelOpen { channel, port, requested_by }, used)) if used == frame.len() => {
            Ok((channel, port, requested_by))
        }
        Some((other, _)) => bail!("the first frame is {other:?}, not a channel open"),
        None => bail!("the frame is incomplete"),
    }
}

#[cfg(test)]
#[path = "relay_test.rs"]
mod tests;
