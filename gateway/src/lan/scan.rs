//! Discovery: which hosts live on a subnet of one allowed interface, and which of them are AMT.
//!
//! 1. ARP sweep (raw Ethernet through pnet): a who-has request for each address, and the
//!    replies addressed to us give the live hosts and their MACs. Sent from a blocking thread,
//!    reading replies between requests.
//! 2. An RMCP presence ping to each live host (UDP 623, from the interface's address): AMT's pong
//!    carries its version and provisioning state.
//! 3. A probe of 16993 (TLS) and 16992 on each live host: AMT's 401 names its version in the
//!    `Server:` header (firmware from CSME 16.1 on may close 16992 and not answer 623 to remote
//!    hosts, so 16993 is the normal case).
//!
//! Every packet and connect of a scan is paced by one rate limiter (`lan.rate_pps`, small bursts),
//! each phase has its deadline, and probes run at most [`PROBES_AT_ONCE`] at a time. The hosts
//! found are written to the store (`lan_hosts`), and the scan's progress is kept for the API.
//!
//! What it does not do: decide which interface (the caller names it), or wake or adopt anything.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use pnet_datalink::{Channel, MacAddr};
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::{MutablePacket, Packet};
use protocols::rmcp::AmtPresence;
use protocols::wol::Mac;
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::net::UdpSocket;
use tracing::{info, warn};

use super::jobs::Scan;
use super::probe::{self, HTTPS_PORT, HTTP_PORT};
use super::{Interface, LanError};
use crate::state::Shared;
use crate::store::LanHost;

/// Web probes in flight at once.
pub const PROBES_AT_ONCE: usize = 32;
/// Most packets the limiter lets out back to back.
const MAX_BURST: u32 = 8;
/// An ARP request: Ethernet header and the 28-byte ARP body.
const ARP_FRAME_LEN: usize = 14 + 28;

/// What a technician asks to scan.
#[derive(Debug, Clone, Deserialize)]
pub struct ScanRequest {
    pub interface: String,
    /// Default: the interface's subnet.
    pub cidr: Option<String>,
}

/// Starts a scan in the background; its handle, for progress.
pub fn start(shared: &Arc<Shared>, request: &ScanRequest) -> Result<Arc<Scan>, LanError> {
    let config = &shared.config.lan;
    let iface = Interface::named(config, request.interface.trim())?;
    let (cidr, targets) = iface.targets(request.cidr.as_deref(), config.max_hosts)?;
    let scan = shared.lan.start_scan(&iface.name, cidr, targets.len())?;
    info!(scan = scan.id(), interface = %iface.name, %cidr, addresses = targets.len(), rate_pps = config.rate_pps, "LAN scan started");
    let shared = Arc::clone(shared);
    let running = Arc::clone(&scan);
    tokio::spawn(async move {
        let outcome = run(&shared, &iface, targets, &running).await;
        let elapsed = running.started.elapsed();
        match outcome {
            Ok(hosts) => {
                let amt = hosts.iter().filter(|h| h.amt).count();
                info!(
                    scan = running.id(),
                    interface = %iface.name,
                    %cidr,
                    live = hosts.len(),
                    amt,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "LAN scan done"
                );
                shared.metrics.lan_scan(true);
                running.update(|s| {
                    s.state = "done";
                    s.phase = "done";
                    s.amt = amt;
                    s.hosts = hosts;
                });
            }
            Err(err) => {
                warn!(scan = running.id(), interface = %iface.name, error = %err, "LAN scan failed");
                shared.metrics.lan_scan(false);
                running.update(|s| {
                    s.state = "failed";
                    s.error = Some(err.to_string());
                });
            }
        }
    });
    Ok(scan)
}

/// The rate limiter a scan's packets and connects share.
fn limiter(rate_pps: u32) -> Arc<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(rate_pps.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate_pps.clamp(1, MAX_BURST)).unwrap_or(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)))
}

async fn run(
    shared: &Arc<Shared>,
    iface: &Interface,
    targets: Vec<Ipv4Addr>,
    scan: &Arc<Scan>,
) -> Result<Vec<LanHost>, LanError> {
    let config = &shared.config.lan;
    let pace = limiter(config.rate_pps);
    let wait = Duration::from_millis(config.reply_wait_ms);
    let probe_timeout = Duration::from_millis(config.probe_timeout_ms);

    // 1. ARP.
    let live = {
        let (iface, pace, progress) = (iface.clone(), Arc::clone(&pace), Arc::clone(scan));
        tokio::task::spawn_blocking(move || {
            arp_sweep(&iface, &targets, &pace, wait, |swept, live| {
                progress.update(|s| {
                    s.swept = swept;
                    s.live = live;
                })
            })
        })
        .await
        .map_err(|e| LanError::Io(format!("the ARP sweep stopped: {e}")))??
    };
    let ips: Vec<Ipv4Addr> = live.keys().copied().collect();

    // 2. RMCP presence pings.
    scan.update(|s| s.phase = "ping");
    let socket = UdpSocket::bind((iface.ip(), 0))
        .await
        .map_err(|e| LanError::Io(format!("binding a UDP socket on {} for RMCP pings: {e}", iface.ip())))?;
    let pongs = probe::ping_all(&socket, &ips, wait, || pace.until_ready()).await;
    drop(socket);

    // 3. AMT's web ports.
    scan.update(|s| s.phase = "probe");
    let mut probes = tokio::task::JoinSet::new();
    let mut answers: BTreeMap<Ipv4Addr, Vec<probe::WebAnswer>> = BTreeMap::new();
    let mut queue = ips.iter().flat_map(|ip| [(*ip, HTTPS_PORT), (*ip, HTTP_PORT)]).collect::<Vec<_>>().into_iter();
    let mut probed: HashSet<Ipv4Addr> = HashSet::new();
    loop {
        while probes.len() < PROBES_AT_ONCE {
            let Some((ip, port)) = queue.next() else { break };
            pace.until_ready().await;
            probes.spawn(async move { (ip, probe::web(ip, port, probe_timeout).await) });
        }
        let Some(done) = probes.join_next().await else { break };
        let Ok((ip, answer)) = done else { continue };
        if let Some(answer) = answer {
            answers.entry(ip).or_default().push(answer);
        }
        probed.insert(ip);
        scan.update(|s| s.probed = probed.len());
    }

    let now = OffsetDateTime::now_utc();
    // A host seen before keeps its first sighting (the store keeps it; the answer shows it too).
    let seen_before: std::collections::HashMap<String, OffsetDateTime> =
        match shared.store.lan_hosts(Some(&shared.instance)).await {
            Ok(known) => known.into_iter().map(|h| (h.mac, h.first_seen)).collect(),
            Err(_) => Default::default(),
        };
    let mut hosts = Vec::with_capacity(live.len());
    for (ip, mac) in live {
        let pong = pongs.get(&ip).copied().flatten();
        let web = answers.remove(&ip).unwrap_or_default();
        let mut host = describe(&shared.instance, &iface.name, ip, mac, pong, pongs.contains_key(&ip), &web, now);
        if let Some(first) = seen_before.get(&host.mac) {
            host.first_seen = *first;
        }
        hosts.push(host);
    }
    shared.store.save_lan_hosts(&hosts).await.map_err(|e| LanError::Io(format!("recording the hosts found: {e}")))?;
    Ok(hosts)
}

/// A host as the store keeps it, from what it answered.
#[allow(clippy::too_many_arguments)]
fn describe(
    instance: &str,
    interface: &str,
    ip: Ipv4Addr,
    mac: Mac,
    pong: Option<AmtPresence>,
    answered_ping: bool,
    web: &[probe::WebAnswer],
    now: OffsetDateTime,
) -> LanHost {
    let web_version = web.iter().find_map(probe::WebAnswer::amt_version);
    let amt = pong.is_some() || web_version.is_some();
    let mut amt_ports: Vec<u16> = if amt { web.iter().map(|w| w.port).collect() } else { Vec::new() };
    if answered_ping && pong.is_some() {
        amt_ports.push(protocols::rmcp::PORT);
    }
    amt_ports.sort_unstable();
    amt_ports.dedup();
    LanHost {
        instance: instance.to_owned(),
        mac: mac.to_string(),
        ip: ip.to_string(),
        interface: interface.to_owned(),
        amt,
        amt_version: web_version.or_else(|| pong.map(|p| format!("{}.{}", p.major, p.minor))),
        provisioning: pong.map(|p| p.provisioning.as_str().to_owned()),
        amt_ports,
        first_seen: now,
        last_seen: now,
    }
}

/// The ARP request for `target` from this interface.
pub fn arp_request(source: Mac, source_ip: Ipv4Addr, target: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut frame = [0u8; ARP_FRAME_LEN];
    if let Some(mut ethernet) = MutableEthernetPacket::new(&mut frame) {
        ethernet.set_destination(MacAddr::broadcast());
        ethernet.set_source(MacAddr::from(source.0));
        ethernet.set_ethertype(EtherTypes::Arp);
        if let Some(mut arp) = MutableArpPacket::new(ethernet.payload_mut()) {
            arp.set_hardware_type(ArpHardwareTypes::Ethernet);
            arp.set_protocol_type(EtherTypes::Ipv4);
            arp.set_hw_addr_len(6);
            arp.set_proto_addr_len(4);
            arp.set_operation(ArpOperations::Request);
            arp.set_sender_hw_addr(MacAddr::from(source.0));
            arp.set_sender_proto_addr(source_ip);
            arp.set_target_hw_addr(MacAddr::zero());
            arp.set_target_proto_addr(target);
        }
    }
    frame
}

/// The sender of an ARP reply addressed to `our_ip`, if `frame` is one.
pub fn arp_reply(frame: &[u8], our_ip: Ipv4Addr) -> Option<(Ipv4Addr, Mac)> {
    let ethernet = EthernetPacket::new(frame)?;
    if ethernet.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let arp = ArpPacket::new(ethernet.payload())?;
    let valid = arp.get_operation() == ArpOperations::Reply
        && arp.get_hardware_type() == ArpHardwareTypes::Ethernet
        && arp.get_protocol_type() == EtherTypes::Ipv4
        && arp.get_target_proto_addr() == our_ip;
    let mac = Mac(arp.get_sender_hw_addr().octets());
    (valid && mac.is_unicast()).then(|| (arp.get_sender_proto_addr(), mac))
}

/// Sends an ARP request for each target (paced by `pace`) and collects the replies until `wait`
/// after the last one, or until every target answered. `progress(swept, live)` as it goes.
fn arp_sweep(
    iface: &Interface,
    targets: &[Ipv4Addr],
    pace: &DefaultDirectRateLimiter,
    wait: Duration,
    progress: impl Fn(usize, usize),
) -> Result<BTreeMap<Ipv4Addr, Mac>, LanError> {
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(10)),
        promiscuous: false,
        ..pnet_datalink::Config::default()
    };
    let raw = |source| LanError::Raw { interface: iface.name.clone(), source };
    let (mut tx, mut rx) = match pnet_datalink::channel(&iface.raw, config) {
        Ok(Channel::Ethernet(tx, rx)) => (tx, rx),
        Ok(_) => return Err(LanError::Io(format!("{} is not an Ethernet interface", iface.name))),
        Err(err) => return Err(raw(err)),
    };
    let wanted: HashSet<Ipv4Addr> = targets.iter().copied().collect();
    let mut found = BTreeMap::new();
    let mut next = 0;
    let mut last_sent = Instant::now();
    let clock = DefaultClock::default();
    loop {
        // Every request that is due goes out before replies are read.
        while next < targets.len() {
            match pace.check() {
                Ok(()) => {
                    let frame = arp_request(iface.mac, iface.ip(), targets[next]);
                    if let Some(Err(err)) = tx.send_to(&frame, None) {
                        return Err(raw(err));
                    }
                    next += 1;
                    last_sent = Instant::now();
                }
                Err(not_until) => {
                    let due = not_until.wait_time_from(clock.now());
                    if due > Duration::from_millis(10) {
                        break;
                    }
                    std::thread::sleep(due);
                }
            }
        }
        if next == targets.len() && (found.len() == wanted.len() || last_sent.elapsed() >= wait) {
            break;
        }
        match rx.next() {
            Ok(frame) => {
                if let Some((ip, mac)) = arp_reply(frame, iface.ip()) {
                    if wanted.contains(&ip) {
                        found.insert(ip, mac);
                    }
                }
            }
            Err(err) if matches!(err.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {}
            Err(err) => return Err(raw(err)),
        }
        progress(next, found.len());
    }
    progress(next, found.len());
    Ok(found)
}

/// Scans each allowed interface's subnet every `lan.scan_every_secs`.
pub async fn periodic(shared: Arc<Shared>) {
    let every = Duration::from_secs(shared.config.lan.scan_every_secs);
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::state::stopping(&mut shutdown) => return,
        }
        for interface in &shared.config.lan.interfaces {
            let request = ScanRequest { interface: interface.clone(), cidr: None };
            match start(&shared, &request) {
                Ok(scan) => info!(scan = scan.id(), %interface, "periodic LAN scan"),
                Err(LanError::Busy(..)) => {}
                Err(err) => warn!(%interface, error = %err, "periodic LAN scan not started"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arp_request_asks_who_has_the_target_and_its_reply_names_the_sender() {
        let ours = Mac([0x02, 0, 0, 0, 0, 0x01]);
        let our_ip = Ipv4Addr::new(198, 18, 5, 1);
        let target = Ipv4Addr::new(198, 18, 5, 20);
        let request = arp_request(ours, our_ip, target);
        assert_eq!(&request[..6], &[0xFF; 6], "broadcast");
        assert_eq!(&request[12..14], &[0x08, 0x06], "EtherType ARP");
        assert_eq!(&request[20..22], &[0, 1], "operation: request");
        assert_eq!(&request[38..42], &target.octets());
        // Our own request is not a reply.
        assert_eq!(arp_reply(&request, our_ip), None);

        // The target answers: the request with operation 2, addresses swapped.
        let theirs = Mac([0x02, 0, 0, 0, 0, 0x20]);
        let mut reply = arp_request(theirs, target, our_ip);
        reply[..6].copy_from_slice(&ours.0);
        reply[21] = 2;
        assert_eq!(arp_reply(&reply, our_ip), Some((target, theirs)));
        // A reply to someone else, or a truncated frame, is not ours.
        assert_eq!(arp_reply(&reply, Ipv4Addr::new(198, 18, 5, 2)), None);
        assert_eq!(arp_reply(&reply[..30], our_ip), None);
    }

    #[test]
    fn a_host_is_amt_when_its_pong_or_its_server_header_says_so() {
        let now = OffsetDateTime::now_utc();
        let mac = Mac([0x02, 0, 0, 0, 0, 0x20]);
        let ip = Ipv4Addr::new(198, 18, 5, 20);
        let plain = describe("gw", "lan0", ip, mac, None, false, &[], now);
        assert!(!plain.amt && plain.amt_version.is_none() && plain.amt_ports.is_empty());
        let nginx = probe::WebAnswer { port: 16993, status: 200, server: Some("nginx".into()), fingerprint: None };
        assert!(!describe("gw", "lan0", ip, mac, None, false, &[nginx], now).amt);
        let amt = probe::WebAnswer {
            port: 16993,
            status: 401,
            server: Some("Intel(R) Active Management Technology 16.1.27".into()),
            fingerprint: Some("AA".into()),
        };
        let pong = AmtPresence {
            major: 16,
            minor: 1,
            provisioning: protocols::rmcp::Provisioning::Post,
            port: 16993,
            both_ports: false,
        };
        let host = describe("gw", "lan0", ip, mac, Some(pong), true, &[amt], now);
        assert!(host.amt);
        assert_eq!(host.amt_version.as_deref(), Some("16.1.27"), "the header's full version wins");
        assert_eq!(host.provisioning.as_deref(), Some("provisioned"));
        assert_eq!(host.amt_ports, vec![623, 16993]);
        let pong_only = describe("gw", "lan0", ip, mac, Some(pong), true, &[], now);
        assert_eq!(pong_only.amt_version.as_deref(), Some("16.1"));
    }
}
