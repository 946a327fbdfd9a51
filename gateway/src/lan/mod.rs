//! The appliance on its LAN: finding AMT PCs (`scan`: an ARP sweep over raw Ethernet with pnet,
//! then RMCP presence pings and probes of AMT's ports, `probe`), waking them (`wake`: AMT's own
//! power-on, or a magic packet as a raw frame and a UDP broadcast), and reaching the PCs an
//! operator adopted like CIRA PCs (`tunnel`: a tunnel of kind `lan` per adopted PC, whose streams
//! are direct connections to that PC's AMT ports, TLS pinned at adoption; `adopt`).
//!
//! Everything here is off until `lan.interfaces` names the interfaces it may use: the tools never
//! pick an interface by themselves, scan only inside an allowed interface's subnet, and reach
//! only the addresses the operator adopted (no open proxy into the LAN).
//!
//! What it does not do: speak WS-MAN (`crate::wsman`), or answer technicians (`api::lan`).

pub mod adopt;
pub mod jobs;
pub mod probe;
pub mod scan;
pub mod tunnel;
pub mod wake;

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use protocols::wol::Mac;

use crate::config::LanConfig;

pub use jobs::{Lan, Scan, ScanStatus};
pub use scan::ScanRequest;

/// Why a LAN tool refused or failed; the messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error(
        "the LAN tools are off on this gateway: name the interfaces they may use in lan.interfaces in tether.toml"
    )]
    Off,
    #[error("interface {name:?} is not one the LAN tools may use (lan.interfaces: {allowed})")]
    NotAllowed { name: String, allowed: String },
    #[error("this machine has no interface {name:?} (it has {available})")]
    NoSuchInterface { name: String, available: String },
    #[error("interface {0:?} has no MAC address or no IPv4 address: the LAN tools need both")]
    NoAddress(String),
    #[error("{cidr} is not inside {net}, the subnet of interface {interface:?}: ARP reaches only the interface's own subnet")]
    CidrOutside { cidr: Ipv4Network, net: Ipv4Network, interface: String },
    #[error("{cidr} has {hosts} addresses; one scan covers at most {max} (lan.max_hosts): scan a smaller range")]
    TooManyHosts { cidr: Ipv4Network, hosts: u64, max: u32 },
    #[error("{0} is not an IPv4 network (give it as 192.168.1.0/24)")]
    BadCidr(String),
    #[error("{0} is on none of the LAN tools' interfaces ({1}): only PCs on this gateway's LAN can be adopted")]
    NotOnLan(Ipv4Addr, String),
    #[error("a scan of {0} is already running (scan {1}); wait for it")]
    Busy(String, u64),
    #[error("opening a raw socket on {interface:?}: {source} (raw frames need CAP_NET_RAW: run the gateway as root, or grant it the capability)")]
    Raw { interface: String, source: std::io::Error },
    #[error("{0}")]
    Io(String),
}

/// An interface the LAN tools may use, as the system has it now.
#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub mac: Mac,
    /// Its first IPv4 address, with its subnet.
    pub net: Ipv4Network,
    raw: pnet_datalink::NetworkInterface,
}

impl Interface {
    /// The named interface, if the configuration allows it and it has a MAC and an IPv4 address.
    pub fn named(config: &LanConfig, name: &str) -> Result<Interface, LanError> {
        if config.interfaces.is_empty() {
            return Err(LanError::Off);
        }
        if !config.interfaces.iter().any(|allowed| allowed == name) {
            return Err(LanError::NotAllowed { name: name.to_owned(), allowed: config.interfaces.join(", ") });
        }
        let all = pnet_datalink::interfaces();
        let Some(raw) = all.iter().find(|i| i.name == name).cloned() else {
            let available = all.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(LanError::NoSuchInterface { name: name.to_owned(), available });
        };
        let mac = raw.mac.filter(|m| !m.is_zero()).map(|m| Mac(m.octets()));
        let net = raw.ips.iter().find_map(|ip| match ip {
            ipnetwork::IpNetwork::V4(net) => Some(*net),
            ipnetwork::IpNetwork::V6(_) => None,
        });
        match (mac, net) {
            (Some(mac), Some(net)) => Ok(Interface { name: raw.name.clone(), mac, net, raw }),
            _ => Err(LanError::NoAddress(name.to_owned())),
        }
    }

    /// The allowed interface whose subnet holds `ip`.
    pub fn holding(config: &LanConfig, ip: Ipv4Addr) -> Result<Interface, LanError> {
        if config.interfaces.is_empty() {
            return Err(LanError::Off);
        }
        config
            .interfaces
            .iter()
            .filter_map(|name| Interface::named(config, name).ok())
            .find(|iface| iface.net.contains(ip) && iface.net.ip() != ip)
            .ok_or_else(|| LanError::NotOnLan(ip, config.interfaces.join(", ")))
    }

    /// This interface's own address.
    pub fn ip(&self) -> Ipv4Addr {
        self.net.ip()
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        self.net.broadcast()
    }

    /// The addresses of `cidr` (default: the interface's subnet) a scan sweeps: inside the
    /// subnet, without the network, broadcast and the interface's own address.
    pub fn targets(&self, cidr: Option<&str>, max_hosts: u32) -> Result<(Ipv4Network, Vec<Ipv4Addr>), LanError> {
        let subnet =
            Ipv4Network::new(self.net.network(), self.net.prefix()).map_err(|e| LanError::Io(e.to_string()))?;
        let cidr = match cidr {
            None => subnet,
            Some(text) => {
                let parsed: Ipv4Network = text.trim().parse().map_err(|_| LanError::BadCidr(text.to_owned()))?;
                Ipv4Network::new(parsed.network(), parsed.prefix()).map_err(|_| LanError::BadCidr(text.to_owned()))?
            }
        };
        if !(subnet.contains(cidr.network()) && subnet.contains(cidr.broadcast())) {
            return Err(LanError::CidrOutside { cidr, net: subnet, interface: self.name.clone() });
        }
        let hosts = u64::from(cidr.size());
        if hosts > u64::from(max_hosts) + 2 {
            return Err(LanError::TooManyHosts { cidr, hosts, max: max_hosts });
        }
        let edge = |ip: Ipv4Addr| subnet.prefix() < 31 && (ip == subnet.network() || ip == subnet.broadcast());
        let targets = cidr.iter().filter(|ip| !edge(*ip) && *ip != self.ip()).collect();
        Ok((cidr, targets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(cidr: &str) -> Interface {
        Interface {
            name: "lan0".into(),
            mac: Mac([2, 0, 0, 0, 0, 1]),
            net: cidr.parse().unwrap(),
            raw: pnet_datalink::NetworkInterface {
                name: "lan0".into(),
                description: String::new(),
                index: 1,
                mac: None,
                ips: Vec::new(),
                flags: 0,
            },
        }
    }

    #[test]
    fn a_scan_sweeps_the_subnet_without_its_edges_and_the_gateway_itself() {
        let lan = iface("198.18.5.1/24");
        let (cidr, targets) = lan.targets(None, 1024).unwrap();
        assert_eq!(cidr.to_string(), "198.18.5.0/24");
        assert_eq!(targets.len(), 253);
        assert_eq!(targets[0], Ipv4Addr::new(198, 18, 5, 2));
        assert_eq!(*targets.last().unwrap(), Ipv4Addr::new(198, 18, 5, 254));
        let (_, part) = lan.targets(Some("198.18.5.128/28"), 1024).unwrap();
        assert_eq!(part.len(), 16);
    }

    #[test]
    fn a_scan_stays_inside_the_interface_subnet_and_its_size_cap() {
        let lan = iface("198.18.5.1/24");
        assert!(matches!(lan.targets(Some("198.18.6.0/24"), 1024), Err(LanError::CidrOutside { .. })));
        assert!(matches!(lan.targets(Some("198.18.0.0/16"), 1024), Err(LanError::CidrOutside { .. })));
        assert!(matches!(lan.targets(Some("bogus"), 1024), Err(LanError::BadCidr(_))));
        assert!(matches!(lan.targets(None, 100), Err(LanError::TooManyHosts { .. })));
    }

    #[test]
    fn the_tools_are_off_until_interfaces_are_named() {
        let off = LanConfig::default();
        assert!(matches!(Interface::named(&off, "lo"), Err(LanError::Off)));
        let config = LanConfig { interfaces: vec!["lan0".into()], ..LanConfig::default() };
        assert!(matches!(Interface::named(&config, "lo"), Err(LanError::NotAllowed { .. })));
        assert!(matches!(Interface::holding(&off, Ipv4Addr::new(10, 0, 0, 1)), Err(LanError::Off)));
    }
}
