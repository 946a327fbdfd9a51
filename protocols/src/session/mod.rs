//! APF tunnel state machines (being written).

/// What a peer did wrong, as a closed set (used for metrics labels and DISCONNECT reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolErrorKind {
    /// A message type byte APF does not define.
    UnknownType,
    /// A length field over its limit.
    TooLong,
    /// A message whose fields do not parse.
    Malformed,
    /// A valid message at the wrong point of the handshake, or in the wrong direction.
    UnexpectedMessage,
    /// A protocol version this implementation does not speak.
    UnsupportedVersion,
    /// A service other than `auth@amt.intel.com` / `pfwd@amt.intel.com`.
    UnknownService,
    /// A channel message naming a channel that does not exist.
    UnknownChannel,
    /// More channel data than the window we granted.
    WindowExceeded,
    /// More input than allowed while the session was not reading (e.g. during an auth decision).
    InputOverflow,
}

impl ProtocolErrorKind {
    pub const ALL: [ProtocolErrorKind; 9] = [
        Self::UnknownType,
        Self::TooLong,
        Self::Malformed,
        Self::UnexpectedMessage,
        Self::UnsupportedVersion,
        Self::UnknownService,
        Self::UnknownChannel,
        Self::WindowExceeded,
        Self::InputOverflow,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownType => "unknown_type",
            Self::TooLong => "too_long",
            Self::Malformed => "malformed",
            Self::UnexpectedMessage => "unexpected_message",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownService => "unknown_service",
            Self::UnknownChannel => "unknown_channel",
            Self::WindowExceeded => "window_exceeded",
            Self::InputOverflow => "input_overflow",
        }
    }
}
