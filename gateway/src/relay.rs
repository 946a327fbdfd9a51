//! The relay: pipes one technician WebSocket to one tunnel channel, both ways, with backpressure.
//!
//! Framing on the WebSocket: binary messages carry bytes; a text message `eof` means "no more data
//! from this side" (TCP half-close); a close frame ends the channel. Towards the technician, bytes
//! are acknowledged to the device (window granted) only after the WebSocket has taken them, and
//! towards the device, each channel has a fixed send budget: nothing on the path buffers without
//! bound.
//!
//! What it does not do: open channels (`registry`, `api`) or speak APF (`cira`).

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};

use crate::registry::{ChannelEnd, ChannelMessage};

/// The text message that signals a half-close.
pub const EOF_MESSAGE: &str = "eof";

/// Relays until either side closes.
pub async fn run(socket: WebSocket, end: ChannelEnd) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let ChannelEnd { rx: mut from_device, tx: to_device, .. } = end;

    let device_to_technician = async {
        while let Some(message) = from_device.recv().await {
            match message {
                ChannelMessage::Data(bytes) => {
                    let n = bytes.len();
                    if ws_tx.send(Message::Binary(bytes)).await.is_err() {
                        return;
                    }
                    if to_device.consumed(n).await.is_err() {
                        break;
                    }
                }
                ChannelMessage::Eof => {
                    if ws_tx.send(Message::Text(EOF_MESSAGE.into())).await.is_err() {
                        return;
                    }
                }
                ChannelMessage::Closed => break,
            }
        }
        let frame = CloseFrame { code: 1000, reason: "the device closed the channel".into() };
        let _ = ws_tx.send(Message::Close(Some(frame))).await;
    };

    let technician_to_device = async {
        while let Some(Ok(message)) = ws_rx.next().await {
            match message {
                Message::Binary(bytes) => {
                    if to_device.send(bytes).await.is_err() {
                        return;
                    }
                }
                Message::Text(text) if text.as_str() == EOF_MESSAGE => to_device.eof().await,
                Message::Close(_) => return,
                Message::Text(_) | Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    };

    tokio::select! {
        _ = device_to_technician => {},
        _ = technician_to_device => {},
    }
    to_device.close().await;
}
