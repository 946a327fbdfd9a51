//! A PC adopted on the LAN, reached through the same tunnel interface as a CIRA PC: one task per
//! adopted PC holds a [`TunnelHandle`] of kind `lan` in the registry while the PC's AMT answers,
//! and opens a direct connection for each stream asked of it.
//!
//! Ports, as a technician sees them (the same as a CIRA PC's):
//! - 16992 and 16994 — WS-MAN and SOL/IDE-R in the clear, as inside a CIRA tunnel: the gateway
//!   connects to 16993/16995 with TLS, the PC's certificate pinned at adoption, and carries the
//!   plaintext (so the redirection tap sees SOL, as for CIRA). A PC adopted without TLS (older
//!   firmware with only 16992/16994 open) is reached on those ports directly.
//! - 16993 and 16995 — passed through as they are (TLS end to end, the technician's own pin).
//!
//! Only the adopted address is ever connected to, only on these ports. The PC's reachability is
//! checked every `lan.check_interval_secs` (a TCP connect to its AMT port): an unreachable PC
//! leaves the registry (shown as not connected) and comes back when it answers again. Streams
//! are capped like a CIRA tunnel's channels (`apf.max_channels_per_tunnel`), and each one is
//! logged with who asked for it.
//!
//! What it does not do: adopt (`adopt`), or relay (the API's relays use the stream it returns).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::probe::{self, HTTPS_PORT, HTTP_PORT, REDIRECTION_PORT, REDIRECTION_TLS_PORT};
use crate::metrics::{CloseReason, TunnelKind};
use crate::registry::{Liveness, OpenRefused, OpenRequest, TunnelCommand, TunnelHandle};
use crate::state::Shared;
use crate::store::LanAdoption;
use crate::stream::DeviceStream;

/// Commands queued per LAN tunnel.
const QUEUE: usize = 64;

/// How one technician port is reached on the PC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// TLS to this port of the PC, pinned; plaintext to the technician.
    Tls(u16),
    /// A plain TCP connection to this port of the PC.
    Direct(u16),
}

/// The ports an adopted PC offers, and how each is reached.
pub fn route(device: &LanAdoption, port: u16) -> Option<Route> {
    match (port, device.tls_pin.is_some()) {
        (HTTP_PORT, true) => Some(Route::Tls(HTTPS_PORT)),
        (REDIRECTION_PORT, true) => Some(Route::Tls(REDIRECTION_TLS_PORT)),
        (HTTPS_PORT | REDIRECTION_TLS_PORT, true) => Some(Route::Direct(port)),
        (HTTP_PORT | REDIRECTION_PORT, false) if device.plain_ports => Some(Route::Direct(port)),
        _ => None,
    }
}

/// The ports a technician sees on an adopted PC.
pub fn ports(device: &LanAdoption) -> BTreeSet<u16> {
    [HTTP_PORT, HTTPS_PORT, REDIRECTION_PORT, REDIRECTION_TLS_PORT]
        .into_iter()
        .filter(|port| route(device, *port).is_some())
        .collect()
}

/// Starts the LAN side of the daemon: a tunnel task for each PC adopted on this gateway's LAN,
/// and the periodic scan when `lan.scan_every_secs` asks for one.
pub async fn start(shared: Arc<Shared>) -> anyhow::Result<()> {
    let adopted = shared.store.lan_devices(Some(&shared.instance), None, crate::store::MAX_LAN_ROWS).await?;
    if !adopted.is_empty() {
        tracing::info!(devices = adopted.len(), "reaching the PCs adopted on this gateway's LAN");
    }
    for device in adopted {
        spawn(Arc::clone(&shared), device);
    }
    if shared.config.lan.scan_every_secs > 0 && !shared.config.lan.interfaces.is_empty() {
        tokio::spawn(super::scan::periodic(shared));
    }
    Ok(())
}

/// Starts the task of an adopted PC.
pub fn spawn(shared: Arc<Shared>, device: LanAdoption) {
    let Ok(ip) = device.ip.parse::<Ipv4Addr>() else {
        warn!(uuid = %device.uuid, ip = %device.ip, "an adopted LAN PC has no valid IPv4 address; not reached");
        return;
    };
    let (commands, queue) = mpsc::channel(QUEUE);
    shared.lan.add_tunnel(device.uuid, commands.clone());
    tokio::spawn(async move {
        let uuid = device.uuid;
        run(&shared, device, ip, commands.clone(), queue).await;
        shared.lan.remove_tunnel(uuid, &commands);
    });
}

/// The PC's AMT port used to tell whether it is reachable.
fn check_port(device: &LanAdoption) -> u16 {
    if device.tls_pin.is_some() {
        HTTPS_PORT
    } else {
        HTTP_PORT
    }
}

async fn run(
    shared: &Arc<Shared>,
    device: LanAdoption,
    ip: Ipv4Addr,
    commands: mpsc::Sender<TunnelCommand>,
    mut queue: mpsc::Receiver<TunnelCommand>,
) {
    let device = Arc::new(device);
    let uuid = device.uuid;
    let config = &shared.config;
    let timeout = Duration::from_millis(config.lan.probe_timeout_ms);
    let remote = SocketAddr::new(IpAddr::V4(ip), check_port(&device));
    let streams = Arc::new(Semaphore::new(config.apf.max_channels_per_tunnel.max(1)));
    let mut check = tokio::time::interval(Duration::from_secs(config.lan.check_interval_secs.max(1)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = shared.shutdown.clone();
    // The connection id while the PC is in the registry.
    let mut registered: Option<u64> = None;
    let deregister = |registered: &mut Option<u64>, reason: CloseReason| {
        if let Some(id) = registered.take() {
            if shared.registry.remove(uuid, TunnelKind::Lan, id) {
                shared.metrics.tunnel_closed(TunnelKind::Lan, reason);
            }
        }
    };
    let reason = loop {
        tokio::select! {
            _ = check.tick() => {
                // Forgotten, perhaps through another gateway of the fleet.
                if matches!(shared.store.lan_device(uuid).await, Ok(None)) {
                    info!(%uuid, "LAN device no longer adopted");
                    break CloseReason::Shutdown;
                }
                let up = probe::connect(ip, remote.port(), timeout).await.is_ok();
                match (up, registered) {
                    (true, None) => {
                        let handle = TunnelHandle {
                            id: shared.registry.next_id(),
                            uuid,
                            kind: TunnelKind::Lan,
                            remote,
                            connected_since: OffsetDateTime::now_utc(),
                            trigger_reason: 0,
                            commands: commands.clone(),
                            ports: Arc::new(Mutex::new(ports(&device))),
                        };
                        let id = handle.id;
                        if shared.registry.try_insert(handle).is_ok() {
                            shared.metrics.tunnel_opened(TunnelKind::Lan);
                            registered = Some(id);
                            info!(%uuid, %remote, "LAN device reachable");
                        }
                    }
                    (false, Some(_)) => {
                        deregister(&mut registered, CloseReason::IdleTimeout);
                        info!(%uuid, %remote, "LAN device unreachable; checking again every {}s", config.lan.check_interval_secs);
                    }
                    _ => {}
                }
            }
            command = queue.recv() => match command {
                Some(TunnelCommand::Open(request)) => {
                    let OpenRequest { port, originator, reply } = *request;
                    let Ok(permit) = Arc::clone(&streams).try_acquire_owned() else {
                        let _ = reply.send(Err(OpenRefused::TooManyChannels));
                        continue;
                    };
                    let device = Arc::clone(&device);
                    tokio::spawn(async move {
                        let opened = open(&device, ip, port, timeout, permit).await;
                        match &opened {
                            Ok(_) => info!(%uuid, ip = %ip, port, %originator, "LAN stream opened"),
                            Err(refused) => info!(%uuid, ip = %ip, port, %originator, error = %refused, "LAN stream refused"),
                        }
                        let _ = reply.send(opened);
                    });
                }
                Some(TunnelCommand::Probe { reply }) => answer_probe(ip, remote.port(), timeout, reply),
                // Forgotten: the task ends. Any other close (a technician closed the remote-fix
                // session) takes the PC out of the registry until its next check; the API refuses
                // technicians meanwhile.
                Some(TunnelCommand::Close { reason: CloseReason::Shutdown }) => break CloseReason::Shutdown,
                Some(TunnelCommand::Close { reason }) => deregister(&mut registered, reason),
                Some(TunnelCommand::Deliver) => {}
                None => break CloseReason::Shutdown,
            },
            _ = crate::state::stopping(&mut shutdown) => break CloseReason::Shutdown,
        }
    };
    deregister(&mut registered, reason);
    debug!(%uuid, reason = reason.as_str(), "LAN tunnel task ended");
}

fn answer_probe(ip: Ipv4Addr, port: u16, timeout: Duration, reply: oneshot::Sender<Liveness>) {
    tokio::spawn(async move {
        if probe::connect(ip, port, timeout).await.is_ok() {
            let _ = reply.send(Liveness::Alive);
        }
        // Unreachable: the reply is dropped unanswered, which means "gone".
    });
}

/// A stream to `port` of the PC.
/// The stream holds `permit` (its place under the tunnel's cap on streams) until it ends.
async fn open(
    device: &LanAdoption,
    ip: Ipv4Addr,
    port: u16,
    timeout: Duration,
    permit: OwnedSemaphorePermit,
) -> Result<DeviceStream, OpenRefused> {
    let route = route(device, port).ok_or(OpenRefused::PortNotForwarded(port))?;
    let target = match route {
        Route::Tls(target) | Route::Direct(target) => target,
    };
    let tcp = probe::connect(ip, target, timeout).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => OpenRefused::Timeout,
        _ => OpenRefused::DeviceRefused(format!("connecting to {ip}:{target}: {e}")),
    })?;
    let _ = tcp.set_nodelay(true);
    crate::limits::detect_dead_peer(&tcp);
    match route {
        Route::Direct(_) => Ok(crate::bridge::bridge_holding(tcp, port, permit)),
        Route::Tls(_) => {
            let pinned = device.tls_pin.as_deref();
            let (tls, _) = probe::tls(tcp, pinned, timeout).await.map_err(|e| {
                warn!(uuid = %device.uuid, %ip, port = target, error = %e, "LAN device's TLS refused");
                OpenRefused::DeviceRefused(format!("{ip}:{target}: {e}"))
            })?;
            Ok(crate::bridge::bridge_holding(tls, port, permit))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adopted(tls: bool, plain: bool) -> LanAdoption {
        LanAdoption {
            uuid: uuid::Uuid::new_v4(),
            instance: "gw".into(),
            ip: "198.18.5.20".into(),
            mac: None,
            tls_pin: tls.then(|| "AA:BB".to_owned()),
            plain_ports: plain,
            adopted_at: OffsetDateTime::now_utc(),
            adopted_by: "operator".into(),
        }
    }

    #[test]
    fn a_tls_pc_offers_the_cira_ports_with_the_plain_ones_carried_over_tls() {
        let pc = adopted(true, false);
        assert_eq!(ports(&pc).into_iter().collect::<Vec<_>>(), vec![16992, 16993, 16994, 16995]);
        assert_eq!(route(&pc, 16992), Some(Route::Tls(16993)));
        assert_eq!(route(&pc, 16994), Some(Route::Tls(16995)));
        assert_eq!(route(&pc, 16995), Some(Route::Direct(16995)));
        // Nothing else on the PC, and never another host: no open proxy into the LAN.
        assert_eq!(route(&pc, 22), None);
        assert_eq!(route(&pc, 623), None);
        // Even when its plain ports were open, TLS is used.
        assert_eq!(route(&adopted(true, true), 16994), Some(Route::Tls(16995)));
    }

    #[test]
    fn a_pc_without_tls_is_reached_on_its_plain_ports_only() {
        let pc = adopted(false, true);
        assert_eq!(ports(&pc).into_iter().collect::<Vec<_>>(), vec![16992, 16994]);
        assert_eq!(route(&pc, 16994), Some(Route::Direct(16994)));
        assert_eq!(route(&pc, 16995), None);
        assert!(ports(&adopted(false, false)).is_empty());
    }
}
