//! Wake-on-LAN: the magic packet for a MAC, sent on one allowed interface twice over — as a raw
//! Ethernet frame (EtherType 0x0842, through pnet) and as a UDP datagram to port 9 of the
//! subnet's broadcast address — since NICs and switches differ in which one reaches a sleeping
//! PC. (A PC with AMT is better woken through AMT itself: `api::lan` tries that first.)
//!
//! What it does not do: know whether the PC woke (a magic packet has no answer).

use protocols::wol::{self, Mac};
use serde::Serialize;
use tracing::info;

use super::{Interface, LanError};
use crate::config::LanConfig;

/// What was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MagicSent {
    pub mac: String,
    pub interface: String,
    /// The raw frame went out.
    pub frame: bool,
    /// Where the UDP datagram went (`198.18.5.255:9`).
    pub udp: String,
}

/// Sends the magic packet for `mac` on `interface`.
pub async fn magic_packet(config: &LanConfig, interface: &str, mac: Mac) -> Result<MagicSent, LanError> {
    if !mac.is_unicast() {
        return Err(LanError::Io(format!("{mac} is not a PC's address (a broadcast or multicast MAC)")));
    }
    let iface = Interface::named(config, interface.trim())?;
    let frame = wol::ethernet_frame(iface.mac, mac, None);
    let raw_iface = iface.clone();
    tokio::task::spawn_blocking(move || send_frame(&raw_iface, &frame))
        .await
        .map_err(|e| LanError::Io(format!("sending the frame stopped: {e}")))??;

    let broadcast = iface.broadcast();
    let socket = tokio::net::UdpSocket::bind((iface.ip(), 0))
        .await
        .map_err(|e| LanError::Io(format!("binding a UDP socket on {}: {e}", iface.ip())))?;
    socket.set_broadcast(true).map_err(|e| LanError::Io(format!("allowing broadcasts: {e}")))?;
    let target = (broadcast, wol::UDP_PORT);
    socket
        .send_to(&wol::magic_packet(mac, None), target)
        .await
        .map_err(|e| LanError::Io(format!("sending the magic packet to {broadcast}:{}: {e}", wol::UDP_PORT)))?;
    info!(%mac, interface = %iface.name, udp = %broadcast, "magic packet sent (raw frame and UDP)");
    Ok(MagicSent {
        mac: mac.to_string(),
        interface: iface.name.clone(),
        frame: true,
        udp: format!("{broadcast}:{}", wol::UDP_PORT),
    })
}

fn send_frame(iface: &Interface, frame: &[u8]) -> Result<(), LanError> {
    let raw = |source| LanError::Raw { interface: iface.name.clone(), source };
    let config = pnet_datalink::Config { promiscuous: false, ..pnet_datalink::Config::default() };
    let mut tx = match pnet_datalink::channel(&iface.raw, config) {
        Ok(pnet_datalink::Channel::Ethernet(tx, _rx)) => tx,
        Ok(_) => return Err(LanError::Io(format!("{} is not an Ethernet interface", iface.name))),
        Err(err) => return Err(raw(err)),
    };
    match tx.send_to(frame, None) {
        Some(Err(err)) => Err(raw(err)),
        Some(Ok(())) | None => Ok(()),
    }
}
