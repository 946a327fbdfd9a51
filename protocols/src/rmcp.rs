//! RMCP/ASF presence ping and pong (UDP port 623): how a scanner finds Intel AMT on a LAN without
//! credentials, and what AMT says about itself in the pong. One message per datagram; a decoder
//! and an encoder, no I/O.
//!
//! Layout (DMTF ASF 2.0 §3.2.2; AMT's OEM bytes as MeshCentral's `amtscanner.js` reads them):
//!
//! | bytes | RMCP header | |
//! |---|---|---|
//! | 0 | version | 0x06 (RMCP 1.0) |
//! | 1 | reserved | 0 |
//! | 2 | sequence number | 0xFF asks for no acknowledgement (scanners also send 0) |
//! | 3 | class of message | 0x06 = ASF (bit 7 set: an RMCP acknowledgement) |
//! | 4–7 | IANA enterprise number | 4542 (ASF), big-endian |
//! | 8 | message type | 0x80 presence ping, 0x40 presence pong |
//! | 9 | message tag | echoed in the pong |
//! | 10 | reserved | 0 |
//! | 11 | data length | 0 for the ping, 16 for the pong |
//!
//! Pong data (bytes 12–27): the responder's IANA enterprise number (4 bytes; Intel is 343),
//! 4 OEM-defined bytes, supported entities (bit 7: IPMI; low nibble: ASF version, 1 = 1.0),
//! supported interactions (bit 5: DASH), 6 reserved bytes. AMT fills the OEM bytes as: the port
//! its web/WS-MAN service listens on (u16, 16992 or 16993), the firmware's major and minor version
//! (high and low nibble), and the provisioning state (bits 0–1: 0 pre, 1 in, 2 post) with bit 2
//! set when both 16992 and 16993 are open. Firmware from CSME 16.1 on may not answer remote pings
//! at all; a silent host may still have AMT on 16993.
//!
//! What it does not do: RMCP+ (IPMI 2.0 sessions), acknowledgements (recognised, refused with
//! [`RmcpError::Acknowledgement`]), or any other ASF message (refused with their type).

use nom::number::complete::{be_u16, be_u32, u8 as byte};
use nom::Parser;

/// The UDP port of RMCP.
pub const PORT: u16 = 623;
/// RMCP 1.0.
pub const VERSION: u8 = 0x06;
/// Class of message: ASF.
pub const CLASS_ASF: u8 = 0x06;
/// The class byte's bit marking an RMCP acknowledgement.
const CLASS_ACK: u8 = 0x80;
/// The ASF IANA enterprise number, in every ASF message header.
pub const ASF_IANA: u32 = 4542;
/// Intel's IANA enterprise number, in an AMT pong's data.
pub const INTEL_IANA: u32 = 343;
/// Presence ping.
pub const TYPE_PING: u8 = 0x80;
/// Presence pong.
pub const TYPE_PONG: u8 = 0x40;
/// The sequence number asking for no acknowledgement.
pub const NO_ACK: u8 = 0xFF;
/// Bytes of the RMCP and ASF headers.
pub const HEADER_LEN: usize = 12;
/// Bytes of a pong's data.
pub const PONG_DATA_LEN: usize = 16;
/// Supported interactions bit: DASH (AMT sets it).
pub const INTERACTION_DASH: u8 = 0x20;
/// Longest datagram accepted (a pong is 28 bytes; anything much longer is not one).
pub const MAX_DATAGRAM: usize = 512;

/// Why a datagram is not a presence ping or pong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RmcpError {
    #[error("{len} bytes is shorter than the {HEADER_LEN}-byte RMCP/ASF header")]
    TooShort { len: usize },
    #[error("{len} bytes is longer than any presence message ({MAX_DATAGRAM})")]
    TooLong { len: usize },
    #[error("RMCP version {0:#04x} (only 0x06, RMCP 1.0)")]
    Version(u8),
    #[error("an RMCP acknowledgement, not a message")]
    Acknowledgement,
    #[error("message class {0:#04x} is not ASF")]
    NotAsf(u8),
    #[error("IANA enterprise number {0} in the ASF header (must be 4542)")]
    Enterprise(u32),
    #[error("ASF message type {0:#04x} is neither a presence ping nor a pong")]
    MessageType(u8),
    #[error("the data length says {declared} bytes, the datagram has {available}")]
    DataLength { declared: usize, available: usize },
    #[error("a presence pong carries {0} bytes of data, not 16")]
    PongLength(usize),
}

/// An AMT provisioning state, as the pong reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provisioning {
    Pre,
    In,
    Post,
    /// The value 3, which AMT does not define.
    Unknown,
}

impl Provisioning {
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0x03 {
            0 => Provisioning::Pre,
            1 => Provisioning::In,
            2 => Provisioning::Post,
            _ => Provisioning::Unknown,
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Provisioning::Pre => 0,
            Provisioning::In => 1,
            Provisioning::Post => 2,
            Provisioning::Unknown => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provisioning::Pre => "pre-provisioning",
            Provisioning::In => "in provisioning",
            Provisioning::Post => "provisioned",
            Provisioning::Unknown => "unknown",
        }
    }
}

/// What a pong's data says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pong {
    /// The responder's IANA enterprise number (Intel: 343).
    pub enterprise: u32,
    pub oem: [u8; 4],
    pub supported_entities: u8,
    pub supported_interactions: u8,
}

/// What an AMT pong says about the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AmtPresence {
    pub major: u8,
    pub minor: u8,
    pub provisioning: Provisioning,
    /// The port AMT's web and WS-MAN service listens on (16992 or 16993).
    pub port: u16,
    /// Both 16992 and 16993 are open.
    pub both_ports: bool,
}

impl Pong {
    /// What AMT says in its OEM bytes, when the pong is from Intel AMT (Intel's enterprise
    /// number and DASH among the supported interactions).
    pub fn amt(&self) -> Option<AmtPresence> {
        if self.enterprise != INTEL_IANA || self.supported_interactions & INTERACTION_DASH == 0 {
            return None;
        }
        let [port_hi, port_lo, version, state] = self.oem;
        Some(AmtPresence {
            major: version >> 4,
            minor: version & 0x0F,
            provisioning: Provisioning::from_bits(state),
            port: u16::from_be_bytes([port_hi, port_lo]),
            both_ports: state & 0x04 != 0,
        })
    }

    /// The pong AMT `presence` sends (IPMI and ASF 1.0 supported, DASH).
    pub fn from_amt(presence: &AmtPresence) -> Pong {
        let [port_hi, port_lo] = presence.port.to_be_bytes();
        let version = (presence.major.min(15) << 4) | presence.minor.min(15);
        let state = presence.provisioning.bits() | if presence.both_ports { 0x04 } else { 0 };
        Pong {
            enterprise: INTEL_IANA,
            oem: [port_hi, port_lo, version, state],
            supported_entities: 0x81,
            supported_interactions: INTERACTION_DASH,
        }
    }
}

/// A presence message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    Ping { sequence: u8, tag: u8 },
    Pong { sequence: u8, tag: u8, pong: Pong },
}

impl Message {
    /// A ping asking for no acknowledgement.
    pub fn ping(tag: u8) -> Message {
        Message::Ping { sequence: NO_ACK, tag }
    }

    /// The pong answering `ping` (same sequence number and tag).
    pub fn pong_to(ping: &Message, pong: Pong) -> Option<Message> {
        match *ping {
            Message::Ping { sequence, tag } => Some(Message::Pong { sequence, tag, pong }),
            Message::Pong { .. } => None,
        }
    }

    pub fn tag(&self) -> u8 {
        match *self {
            Message::Ping { tag, .. } | Message::Pong { tag, .. } => tag,
        }
    }

    /// Bytes [`encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Message::Ping { .. } => HEADER_LEN,
            Message::Pong { .. } => HEADER_LEN + PONG_DATA_LEN,
        }
    }
}

/// Appends `message` to `out`.
pub fn encode(message: &Message, out: &mut Vec<u8>) {
    let (sequence, kind, tag, data_len) = match message {
        Message::Ping { sequence, tag } => (*sequence, TYPE_PING, *tag, 0u8),
        Message::Pong { sequence, tag, .. } => (*sequence, TYPE_PONG, *tag, PONG_DATA_LEN as u8),
    };
    out.extend_from_slice(&[VERSION, 0, sequence, CLASS_ASF]);
    out.extend_from_slice(&ASF_IANA.to_be_bytes());
    out.extend_from_slice(&[kind, tag, 0, data_len]);
    if let Message::Pong { pong, .. } = message {
        out.extend_from_slice(&pong.enterprise.to_be_bytes());
        out.extend_from_slice(&pong.oem);
        out.extend_from_slice(&[pong.supported_entities, pong.supported_interactions]);
        out.extend_from_slice(&[0; 6]);
    }
}

type Header = (u8, u8, u8, u8, u32, u8, u8, u8, u8);

fn header(input: &[u8]) -> nom::IResult<&[u8], Header> {
    (byte, byte, byte, byte, be_u32, byte, byte, byte, byte).parse(input)
}

fn pong_data(input: &[u8]) -> nom::IResult<&[u8], Pong> {
    let (input, (enterprise, oem_hi, oem_lo, supported_entities, supported_interactions)) =
        (be_u32, be_u16, be_u16, byte, byte).parse(input)?;
    let [a, b] = oem_hi.to_be_bytes();
    let [c, d] = oem_lo.to_be_bytes();
    Ok((input, Pong { enterprise, oem: [a, b, c, d], supported_entities, supported_interactions }))
}

/// Decodes one datagram. Bytes after the declared data (padding) are ignored.
pub fn decode(datagram: &[u8]) -> Result<Message, RmcpError> {
    let len = datagram.len();
    if len < HEADER_LEN {
        return Err(RmcpError::TooShort { len });
    }
    if len > MAX_DATAGRAM {
        return Err(RmcpError::TooLong { len });
    }
    let Ok((data, (version, _, sequence, class, enterprise, kind, tag, _, data_len))) = header(datagram) else {
        return Err(RmcpError::TooShort { len });
    };
    if version != VERSION {
        return Err(RmcpError::Version(version));
    }
    if class & CLASS_ACK != 0 {
        return Err(RmcpError::Acknowledgement);
    }
    if class != CLASS_ASF {
        return Err(RmcpError::NotAsf(class));
    }
    if enterprise != ASF_IANA {
        return Err(RmcpError::Enterprise(enterprise));
    }
    let declared = usize::from(data_len);
    if declared > data.len() {
        return Err(RmcpError::DataLength { declared, available: data.len() });
    }
    match kind {
        TYPE_PING => Ok(Message::Ping { sequence, tag }),
        TYPE_PONG => {
            if declared != PONG_DATA_LEN {
                return Err(RmcpError::PongLength(declared));
            }
            let (_, pong) = pong_data(&data[..declared]).map_err(|_| RmcpError::PongLength(declared))?;
            Ok(Message::Pong { sequence, tag, pong })
        }
        other => Err(RmcpError::MessageType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_scanners_ping_is_the_bytes_meshcentral_sends() {
        let mut wire = Vec::new();
        encode(&Message::Ping { sequence: 0, tag: 0x2A }, &mut wire);
        assert_eq!(hex(&wire), "06000006000011be802a0000");
        assert_eq!(decode(&wire), Ok(Message::Ping { sequence: 0, tag: 0x2A }));
    }

    #[test]
    fn an_amt_pong_carries_version_provisioning_and_ports() {
        let presence =
            AmtPresence { major: 11, minor: 8, provisioning: Provisioning::Post, port: 16993, both_ports: true };
        let pong = Message::pong_to(&Message::ping(7), Pong::from_amt(&presence)).unwrap();
        let mut wire = Vec::new();
        encode(&pong, &mut wire);
        assert_eq!(wire.len(), 28);
        // Bytes 16–19 as MeshCentral reads them: port, version nibbles, state with the dual bit.
        assert_eq!(&wire[16..20], &[0x42, 0x61, 0xB8, 0x06]);
        assert_eq!(wire[21] & INTERACTION_DASH, INTERACTION_DASH);
        let Message::Pong { tag, pong, sequence } = decode(&wire).unwrap() else { panic!("not a pong") };
        assert_eq!((tag, sequence), (7, NO_ACK));
        assert_eq!(pong.amt(), Some(presence));
    }

    #[test]
    fn a_pong_from_another_vendor_is_not_amt() {
        let mut pong = Pong::from_amt(&AmtPresence {
            major: 16,
            minor: 1,
            provisioning: Provisioning::Pre,
            port: 16992,
            both_ports: false,
        });
        pong.enterprise = 4542;
        assert_eq!(pong.amt(), None);
        pong.enterprise = INTEL_IANA;
        pong.supported_interactions = 0;
        assert_eq!(pong.amt(), None, "no DASH: not AMT");
    }

    #[test]
    fn bad_datagrams_get_their_own_errors() {
        let mut ping = Vec::new();
        encode(&Message::ping(1), &mut ping);
        assert_eq!(decode(&ping[..11]), Err(RmcpError::TooShort { len: 11 }));
        assert_eq!(decode(&vec![6; 600]), Err(RmcpError::TooLong { len: 600 }));
        let with = |i: usize, v: u8| {
            let mut w = ping.clone();
            w[i] = v;
            decode(&w)
        };
        assert_eq!(with(0, 7), Err(RmcpError::Version(7)));
        assert_eq!(with(3, 0x86), Err(RmcpError::Acknowledgement));
        assert_eq!(with(3, 0x07), Err(RmcpError::NotAsf(7)));
        assert_eq!(with(7, 0xBF), Err(RmcpError::Enterprise(4543)));
        assert_eq!(with(8, 0x41), Err(RmcpError::MessageType(0x41)));
        assert_eq!(with(11, 4), Err(RmcpError::DataLength { declared: 4, available: 0 }));
        let mut pong = ping.clone();
        pong[8] = TYPE_PONG;
        pong[11] = 8;
        pong.extend_from_slice(&[0; 8]);
        assert_eq!(decode(&pong), Err(RmcpError::PongLength(8)));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn any_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u8>(), any::<u8>()).prop_map(|(sequence, tag)| Message::Ping { sequence, tag }),
            (any::<u8>(), any::<u8>(), any::<u32>(), any::<[u8; 4]>(), any::<u8>(), any::<u8>()).prop_map(
                |(sequence, tag, enterprise, oem, supported_entities, supported_interactions)| Message::Pong {
                    sequence,
                    tag,
                    pong: Pong { enterprise, oem, supported_entities, supported_interactions },
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(message in any_message(), padding in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut wire = Vec::new();
            encode(&message, &mut wire);
            prop_assert_eq!(wire.len(), message.encoded_len());
            wire.extend_from_slice(&padding);
            prop_assert_eq!(decode(&wire), Ok(message));
        }

        #[test]
        fn amt_presence_round_trips(major in 0u8..16, minor in 0u8..16, bits in 0u8..4, port: u16, both: bool) {
            let presence = AmtPresence { major, minor, provisioning: Provisioning::from_bits(bits), port, both_ports: both };
            prop_assert_eq!(Pong::from_amt(&presence).amt(), Some(presence));
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
