//! The relay: pipes one technician WebSocket to one tunnel channel, both ways, with backpressure.
//!
//! Framing on the WebSocket: binary messages carry bytes; a text message `eof` means "no more data
//! from this side" (TCP half-close); a close frame ends the channel. Towards the technician, bytes
//! are acknowledged to the device (window granted) only after the WebSocket has taken them, and
//! towards the device, each channel has a fixed send budget: nothing on the path buffers without
//! bound.
//!
//! What it does not do: open streams (`registry`, `api`) or speak any tunnel protocol (`cira`).

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};

use tokio::io::AsyncWriteExt;

use crate::stream::DeviceStream;

/// The text message that signals a half-close.
pub const EOF_MESSAGE: &str = "eof";

/// Relays until either side closes.
pub async fn run(socket: WebSocket, stream: DeviceStream) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut from_device, mut to_device) = stream.into_split();

    let device_to_technician = async {
        loop {
            match from_device.chunk().await {
                Ok(Some(bytes)) => {
                    let n = bytes.len();
                    // One device message, one WebSocket message: redirection consoles care.
                    if ws_tx.send(Message::Binary(bytes)).await.is_err() {
                        return;
                    }
                    // Credit back only what left for the technician.
                    from_device.release(n);
                }
                Ok(None) => {
                    if ws_tx.send(Message::Text(EOF_MESSAGE.into())).await.is_err() {
                        return;
                    }
                    // Half-closed: keep the relay up for the technician's side.
                    std::future::pending::<()>().await;
                }
                Err(_) => break,
            }
        }
        let frame = CloseFrame { code: 1000, reason: "the device closed the channel".into() };
        let _ = ws_tx.send(Message::Close(Some(frame))).await;
    };

    let technician_to_device = async {
        while let Some(Ok(message)) = ws_rx.next().await {
            match message {
                Message::Binary(bytes) => {
                    if to_device.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Message::Text(text) if text.as_str() == EOF_MESSAGE => {
                    let _ = to_device.shutdown().await;
                }
                Message::Close(_) => return,
                Message::Text(_) | Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    };

    tokio::select! {
        _ = device_to_technician => {},
        _ = technician_to_device => {},
    }
}
