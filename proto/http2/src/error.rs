//! Error codes (RFC 9113 §7) and the crate's typed errors.

use core::fmt;

use ferry_proto::{ErrorKind, ProtoError};

/// An HTTP/2 error code (RFC 9113 §7), as carried by RST_STREAM and GOAWAY. Unknown codes are
/// kept as they are ("MUST NOT trigger any special behavior").
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reason(pub u32);

impl Reason {
    /// Graceful shutdown / no error.
    pub const NO_ERROR: Reason = Reason(0x0);
    /// Unspecific protocol error.
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    /// Unexpected internal error.
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    /// Flow-control protocol violation.
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    /// SETTINGS not acknowledged in time.
    pub const SETTINGS_TIMEOUT: Reason = Reason(0x4);
    /// Frame received on a half-closed or closed stream.
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    /// Frame with an invalid size.
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    /// Stream refused before any application processing.
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    /// Stream no longer needed.
    pub const CANCEL: Reason = Reason(0x8);
    /// Field-section compression state cannot be maintained.
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    /// The CONNECT tunnel was reset or abnormally closed.
    pub const CONNECT_ERROR: Reason = Reason(0xa);
    /// The peer exhibits behaviour that might be generating excessive load.
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
    /// The transport does not meet minimum security requirements.
    pub const INADEQUATE_SECURITY: Reason = Reason(0xc);
    /// HTTP/1.1 must be used instead.
    pub const HTTP_1_1_REQUIRED: Reason = Reason(0xd);

    /// The code's name, for known codes.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0 => "NO_ERROR",
            0x1 => "PROTOCOL_ERROR",
            0x2 => "INTERNAL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "SETTINGS_TIMEOUT",
            0x5 => "STREAM_CLOSED",
            0x6 => "FRAME_SIZE_ERROR",
            0x7 => "REFUSED_STREAM",
            0x8 => "CANCEL",
            0x9 => "COMPRESSION_ERROR",
            0xa => "CONNECT_ERROR",
            0xb => "ENHANCE_YOUR_CALM",
            0xc => "INADEQUATE_SECURITY",
            0xd => "HTTP_1_1_REQUIRED",
            _ => return None,
        })
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Reason({:#x})", self.0),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a frame could not be parsed. The connection decides, from the frame's stream, whether
/// it is a stream or a connection error; [`FrameError::reason`] gives the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameError {
    /// The payload length is invalid for the frame type (RST_STREAM ≠ 4, PING ≠ 8, SETTINGS not
    /// a multiple of 6, SETTINGS ACK with payload, GOAWAY < 8, WINDOW_UPDATE ≠ 4, a padded or
    /// prioritized frame too short for its fields): FRAME_SIZE_ERROR.
    BadLength,
    /// A PRIORITY frame whose length is not 5: a *stream* error FRAME_SIZE_ERROR.
    PriorityLength,
    /// The frame is longer than the receiver's SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR.
    TooLarge,
    /// The padding length is not smaller than the payload: PROTOCOL_ERROR.
    BadPadding,
    /// Stream identifier 0 on a stream frame, or non-zero on a connection frame:
    /// PROTOCOL_ERROR.
    BadStreamId,
    /// A stream depends on itself (HEADERS or PRIORITY): a stream error PROTOCOL_ERROR.
    SelfDependency,
    /// SETTINGS_ENABLE_PUSH not 0/1, SETTINGS_MAX_FRAME_SIZE out of range, or
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL not 0/1: PROTOCOL_ERROR.
    BadSetting,
    /// SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1: FLOW_CONTROL_ERROR.
    BadWindowSetting,
    /// WINDOW_UPDATE with a zero increment: PROTOCOL_ERROR.
    ZeroIncrement,
}

impl FrameError {
    /// The error code this error is answered with.
    pub fn reason(self) -> Reason {
        match self {
            FrameError::BadLength | FrameError::PriorityLength | FrameError::TooLarge => {
                Reason::FRAME_SIZE_ERROR
            }
            FrameError::BadWindowSetting => Reason::FLOW_CONTROL_ERROR,
            _ => Reason::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FrameError::BadLength => "invalid frame length",
            FrameError::PriorityLength => "PRIORITY frame length is not 5",
            FrameError::TooLarge => "frame larger than SETTINGS_MAX_FRAME_SIZE",
            FrameError::BadPadding => "padding not smaller than the payload",
            FrameError::BadStreamId => "invalid stream identifier for the frame type",
            FrameError::SelfDependency => "stream depends on itself",
            FrameError::BadSetting => "invalid SETTINGS value",
            FrameError::BadWindowSetting => "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
            FrameError::ZeroIncrement => "WINDOW_UPDATE increment of 0",
        };
        f.write_str(s)
    }
}

impl core::error::Error for FrameError {}

/// Why an HPACK field block could not be decoded (RFC 7541). Every variant except
/// [`HpackError::HeaderListTooLarge`] is a connection error COMPRESSION_ERROR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HpackError {
    /// The block ends inside a representation.
    Truncated,
    /// An integer does not fit the decoder's limits.
    IntegerOverflow,
    /// Index 0, or an index past the end of the static + dynamic tables.
    InvalidIndex,
    /// Huffman padding longer than 7 bits or not all ones, or an EOS symbol.
    InvalidHuffman,
    /// A dynamic table size update above the allowed maximum.
    InvalidSizeUpdate,
    /// A dynamic table size update after the first field representation.
    LateSizeUpdate,
    /// A string longer than the decoder accepts.
    StringTooLong,
    /// The decoded header list is larger than the configured limit (the block was still
    /// decoded to keep the table in sync; the fields were dropped).
    HeaderListTooLarge,
}

impl fmt::Display for HpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            HpackError::Truncated => "truncated field block",
            HpackError::IntegerOverflow => "integer overflow",
            HpackError::InvalidIndex => "invalid table index",
            HpackError::InvalidHuffman => "invalid Huffman code",
            HpackError::InvalidSizeUpdate => "table size update above the maximum",
            HpackError::LateSizeUpdate => "table size update after a field",
            HpackError::StringTooLong => "string literal too long",
            HpackError::HeaderListTooLarge => "header list larger than the limit",
        };
        f.write_str(s)
    }
}

impl core::error::Error for HpackError {}

/// A connection error: the connection queued a GOAWAY with [`Error::reason`] (when it detected
/// the error) and stops. Small and `Copy`; every later `handle_input` returns it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The client connection preface (`PRI * HTTP/2.0...`) is wrong: PROTOCOL_ERROR.
    BadPreface,
    /// The first frame after the preface is not SETTINGS: PROTOCOL_ERROR.
    ExpectedSettings,
    /// A frame failed to parse as a connection error.
    Frame(FrameError),
    /// The field block could not be decoded: COMPRESSION_ERROR.
    Compression(HpackError),
    /// A frame other than CONTINUATION arrived inside a field block, or a CONTINUATION
    /// arrived outside one: PROTOCOL_ERROR.
    Continuation,
    /// A stream identifier of the wrong parity, or not larger than the previous one:
    /// PROTOCOL_ERROR.
    BadStreamId,
    /// A frame other than HEADERS/PRIORITY on an idle stream: PROTOCOL_ERROR.
    IdleStream,
    /// HEADERS (or DATA after END_STREAM) on a closed stream: STREAM_CLOSED.
    StreamClosed,
    /// A flow-control window overflowed, or the peer sent more than the connection window:
    /// FLOW_CONTROL_ERROR.
    FlowControl,
    /// The peer did not acknowledge our SETTINGS in time: SETTINGS_TIMEOUT.
    SettingsTimeout,
    /// PUSH_PROMISE from a client, or to a client that disabled push: PROTOCOL_ERROR.
    UnexpectedPush,
    /// The field block (HEADERS + CONTINUATION) is larger than allowed, or uses too many
    /// CONTINUATION frames (CVE-2024-27316 family): ENHANCE_YOUR_CALM.
    HeaderBlockTooLarge,
    /// Too many streams reset in too little time (rapid reset, CVE-2023-44487):
    /// ENHANCE_YOUR_CALM.
    RapidReset,
    /// Too many control frames (SETTINGS, PING, empty DATA, tiny WINDOW_UPDATE, PRIORITY) in
    /// too little time, or too many queued answers: ENHANCE_YOUR_CALM.
    Flood,
    /// Any other violation the RFC answers with PROTOCOL_ERROR (a frame a stream's state
    /// forbids, a PUSH_PROMISE on a stream we did not open, SETTINGS_ENABLE_PUSH = 1 from a
    /// server, a malformed `HTTP2-Settings` upgrade header, ...).
    Protocol,
    /// No preface or SETTINGS within the handshake timeout, or the connection stayed idle.
    Timeout,
    /// The transport closed (EOF) while streams were open or before the handshake finished.
    UnexpectedEof,
}

impl Error {
    /// The GOAWAY code this error is answered with.
    pub fn reason(self) -> Reason {
        match self {
            Error::Frame(e) => e.reason(),
            Error::Compression(_) => Reason::COMPRESSION_ERROR,
            Error::StreamClosed => Reason::STREAM_CLOSED,
            Error::FlowControl => Reason::FLOW_CONTROL_ERROR,
            Error::SettingsTimeout => Reason::SETTINGS_TIMEOUT,
            Error::HeaderBlockTooLarge | Error::RapidReset | Error::Flood => {
                Reason::ENHANCE_YOUR_CALM
            }
            Error::Timeout | Error::UnexpectedEof => Reason::NO_ERROR,
            _ => Reason::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadPreface => f.write_str("invalid connection preface"),
            Error::ExpectedSettings => f.write_str("first frame is not SETTINGS"),
            Error::Frame(e) => write!(f, "frame error: {e}"),
            Error::Compression(e) => write!(f, "HPACK error: {e}"),
            Error::Continuation => {
                f.write_str("field block interrupted or CONTINUATION out of place")
            }
            Error::BadStreamId => f.write_str("invalid stream identifier"),
            Error::IdleStream => f.write_str("frame on an idle stream"),
            Error::StreamClosed => f.write_str("frame on a closed stream"),
            Error::FlowControl => f.write_str("flow-control violation"),
            Error::SettingsTimeout => f.write_str("SETTINGS not acknowledged in time"),
            Error::UnexpectedPush => f.write_str("unexpected PUSH_PROMISE"),
            Error::HeaderBlockTooLarge => f.write_str("field block too large (CONTINUATION flood)"),
            Error::RapidReset => f.write_str("too many stream resets (rapid reset)"),
            Error::Flood => f.write_str("control frame flood"),
            Error::Protocol => f.write_str("protocol violation"),
            Error::Timeout => f.write_str("handshake or idle timeout"),
            Error::UnexpectedEof => f.write_str("connection closed with streams open"),
        }
    }
}

impl core::error::Error for Error {}

impl ProtoError for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::HeaderBlockTooLarge | Error::RapidReset | Error::Flood => {
                ErrorKind::LimitExceeded
            }
            Error::Timeout | Error::SettingsTimeout => ErrorKind::Timeout,
            Error::UnexpectedEof => ErrorKind::Closed,
            _ => ErrorKind::Malformed,
        }
    }
}

/// Why an application command was refused. The connection is left unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SendError {
    /// No open stream has this id (never existed, finished, or reset).
    UnknownStream,
    /// The command does not fit the stream's state (second response head, data after the end,
    /// data before the head, trailers twice).
    InvalidState,
    /// A field name or value is not allowed (uppercase or invalid name, CR/LF/NUL in a value,
    /// connection-specific field, unknown pseudo-header).
    InvalidHeader,
    /// The status code is outside 100..=999, or 101 (not allowed in HTTP/2).
    InvalidStatus,
    /// The stream's (or the connection's) queue of unsent data is full: wait for
    /// `Event::SendReady` and try again. Nothing was queued.
    BufferFull,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached.
    ConcurrencyLimit,
    /// All stream identifiers of this connection are used up; open a new connection.
    StreamIdsExhausted,
    /// The peer disabled server push (or this is not a client-initiated open stream).
    PushDisabled,
    /// Extended CONNECT (`:protocol`) but the peer did not send SETTINGS_ENABLE_CONNECT_PROTOCOL.
    ConnectProtocolDisabled,
    /// The connection is closing or closed: no new streams, nothing more can be sent.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            SendError::UnknownStream => "no such open stream",
            SendError::InvalidState => "command not allowed in this stream state",
            SendError::InvalidHeader => "invalid header field",
            SendError::InvalidStatus => "invalid status code",
            SendError::BufferFull => "send buffer full",
            SendError::ConcurrencyLimit => "peer's concurrent stream limit reached",
            SendError::StreamIdsExhausted => "stream identifiers exhausted",
            SendError::PushDisabled => "server push not allowed",
            SendError::ConnectProtocolDisabled => "peer does not support extended CONNECT",
            SendError::Closed => "connection closed",
        };
        f.write_str(s)
    }
}

impl core::error::Error for SendError {}

impl ProtoError for SendError {
    fn kind(&self) -> ErrorKind {
        match self {
            SendError::Closed | SendError::StreamIdsExhausted => ErrorKind::Closed,
            SendError::BufferFull | SendError::ConcurrencyLimit => ErrorKind::LimitExceeded,
            SendError::PushDisabled | SendError::ConnectProtocolDisabled => ErrorKind::Unsupported,
            _ => ErrorKind::InvalidState,
        }
    }
}
