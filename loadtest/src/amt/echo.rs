//! The echo service: sends back every byte it receives, as fast as the window allows.
//!
//! It takes input only while there is room for the echo, so a gateway that does not read the
//! echo soon stops getting window to send more.

use super::service::{ChannelHandler, ChannelInfo, Outbox, Service};

/// Echoes every byte; closes the channel after the gateway's EOF once the echo is sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Service for Echo {
    fn open(&self, _channel: &ChannelInfo) -> Option<Box<dyn ChannelHandler>> {
        Some(Box::new(EchoChannel))
    }
}

#[derive(Debug)]
struct EchoChannel;

impl ChannelHandler for EchoChannel {
    fn on_data(&mut self, data: &[u8], out: &mut Outbox<'_>) -> usize {
        let n = data.len().min(out.room());
        out.write(&data[..n]);
        n
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    #[test]
    fn takes_only_what_fits() {
        let mut handler = EchoChannel;
        let mut buf = BytesMut::new();
        let mut close = false;
        let mut out = Outbox::new(&mut buf, 4, &mut close);
        assert_eq!(handler.on_data(b"abcdef", &mut out), 4);
        assert_eq!(handler.on_data(b"ef", &mut out), 0);
        handler.on_eof(&mut out);
        assert_eq!(&buf[..], b"abcd");
        assert!(close);
    }
}
