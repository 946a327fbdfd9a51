//! `tether forward UUID PORT`: listens on the technician's machine and carries every accepted TCP
//! connection through the gateway's relay to the device's port, so that third-party tools (amtterm,
//! amtctrl, a browser) pointed at the local address reach the device.
//!
//! Each connection gets its own WebSocket and so its own channel in the tunnel. Half-closes pass
//! through (`eof`), and nothing is buffered beyond one read: a slow side slows the other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};
use uuid::Uuid;

use crate::client::ApiClient;
use crate::relay::EOF_MESSAGE;

const READ_CHUNK: usize = 64 * 1024;

pub async fn run(client: ApiClient, uuid: Uuid, port: u16, listen: SocketAddr) -> Result<()> {
    // Fail early, with the API's words, if the device is unknown.
    let device = client.get_json(&format!("/api/v1/devices/{uuid}")).await?;
    if device.get("connected").and_then(|c| c.as_bool()) != Some(true) {
        warn!(%uuid, "the device is not connected right now; connections will fail until it is");
    }
    let listener = TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let local = listener.local_addr()?;
    println!("forwarding {local} -> device {uuid} port {port} (Ctrl-C to stop)");
    let path = format!("/api/v1/devices/{uuid}/tcp/{port}");
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let (tcp, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let client = client.clone();
        let path = path.clone();
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            match carry(&client, &path, tcp).await {
                Ok((up, down)) => info!(connection = n, %from, up, down, "connection closed"),
                Err(err) => warn!(connection = n, %from, "relay failed: {err:#}"),
            }
        });
    }
}

/// Carries one connection; returns the bytes sent up (to the device) and down.
async fn carry(client: &ApiClient, path: &str, tcp: TcpStream) -> Result<(u64, u64)> {
    let ws = client.websocket(path).await?;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut tcp_rx, mut tcp_tx) = tcp.into_split();
    let mut up_bytes = 0u64;
    let mut down_bytes = 0u64;

    let up = async {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = tcp_rx.read(&mut buf).await?;
            if n == 0 {
                ws_tx.send(Message::Text(EOF_MESSAGE.into())).await?;
                return anyhow::Ok(());
            }
            up_bytes += n as u64;
            ws_tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await?;
        }
    };
    let down = async {
        while let Some(message) = ws_rx.next().await {
            match message? {
                Message::Binary(bytes) => {
                    down_bytes += bytes.len() as u64;
                    tcp_tx.write_all(&bytes).await?;
                }
                Message::Text(text) if text.as_str() == EOF_MESSAGE => tcp_tx.shutdown().await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    {
        tokio::pin!(up, down);
        let mut up_done = false;
        loop {
            tokio::select! {
                result = &mut up, if !up_done => {
                    up_done = true;
                    // The local side is done sending (or broke): on error, stop; else wait for
                    // the device to finish.
                    result?;
                }
                result = &mut down => {
                    result?;
                    break;
                }
            }
        }
    }
    Ok((up_bytes, down_bytes))
}
