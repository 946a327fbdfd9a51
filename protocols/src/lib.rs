//! Tether's wire formats and protocol state machines, without I/O.
//!
//! In the style of quinn-proto and rustls: everything here is fed bytes (and, for state machines,
//! the current time) and hands back bytes, events and deadlines. Nothing here opens a socket, spawns
//! a task or reads a clock. The gateway and the simulators are the drivers.
//!
//! - [`apf`]: the APF message format (CIRA, Intel AMT's tunnel to a management presence server).
//! - [`session`]: APF tunnel state machines, server role (gateway) and client role (device).
//! - [`proxy`]: the PROXY protocol v2 header a TCP load balancer (HAProxy's `send-proxy-v2`) puts
//!   in front of a relayed connection.
//! - [`redir`]: the AMT redirection protocol (SOL and IDE-R on ports 16994/16995): messages,
//!   digest authentication, sequence numbers.
//! - [`scsi`]: the SCSI/MMC target behind IDE-R: answers a BIOS's ATAPI packets for an emulated
//!   CD-ROM or floppy from an image it knows only by length.
//! - [`wsman`]: WS-Management as AMT speaks it (ports 16992/16993): resource URIs and actions,
//!   request envelopes, a bounded envelope parser, enumeration, return values and faults.
//! - [`http_digest`]: HTTP Digest authentication (RFC 2617, MD5, `qop=auth`) for WS-MAN's HTTP:
//!   challenge parsing, the client's `Authorization`, the server's check.
//! - [`rmcp`]: RMCP/ASF presence ping and pong (UDP 623), and what AMT says about itself in it.
//! - [`wol`]: Wake-on-LAN magic packets and MAC addresses.
//! - [`tap`]: the Tether agent protocol, spoken over QUIC between an agent on a PC and the
//!   gateway: framing, messages (hello, reports, signed configuration and messages, relayed
//!   channels, enrollment) and the bytes a signature covers.
//! - [`telemetry`]: the support parameters an agent reports about its PC, and their wire encoding.
//! - [`entitlement`]: the maintenance entitlement the root silo writes into a client's
//!   maintenance certificate (service, tier, serving silo and its location, opaque
//!   subscriber id, expiry): its strict DER encoding and the certificate URI that carries it.

pub mod apf;
pub mod entitlement;
pub mod http_digest;
pub mod proxy;
pub mod redir;
pub mod rmcp;
pub mod scsi;
pub mod session;
pub mod tap;
pub mod telemetry;
#[cfg(test)]
mod test_util;
pub mod wol;
pub mod wsman;
