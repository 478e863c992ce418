use core::fmt;

use ferry_proto::{ErrorKind, ProtoError};

/// Why bytes from the peer are not valid RESP (or break a configured limit). Small and `Copy`;
/// a connection that fails stores it and returns it again from every later `handle_input`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseError {
    /// A frame starts with a byte that is no RESP type.
    InvalidType(u8),
    /// A length header is not a number, negative (other than `-1`) or has a sign.
    InvalidLength,
    /// `:` with a malformed or overflowing integer.
    InvalidInteger,
    /// `,` with a malformed double.
    InvalidDouble,
    /// `#` with something other than `t` or `f`.
    InvalidBoolean,
    /// `(` with something other than an optionally signed run of digits.
    InvalidBigNumber,
    /// `_` followed by something other than CRLF.
    InvalidNull,
    /// `=` payload without the `xxx:` format prefix.
    InvalidVerbatim,
    /// A `$?` streamed string chunk is not `;len`.
    InvalidStreamChunk,
    /// A line does not end in CRLF, or payload is not followed by CRLF.
    InvalidLineEnding,
    /// A line (simple string, number, header) is longer than the line limit.
    LineTooLong,
    /// A bulk payload is longer than `proto-max-bulk-len`.
    BulkTooLong,
    /// An aggregate has more elements than allowed.
    AggregateTooLong,
    /// Aggregates nest deeper than allowed.
    TooDeep,
    /// Internal: a validated frame failed to build (never expected).
    Incomplete,
    // ----- command (request) parsing, with Redis's own error texts -----
    /// `Protocol error: too big inline request` (inline command longer than 64 KiB).
    TooBigInlineRequest,
    /// `Protocol error: unbalanced quotes in request`.
    UnbalancedQuotes,
    /// `Protocol error: too big mbulk count string`.
    TooBigMultibulkCountString,
    /// `Protocol error: invalid multibulk length`.
    InvalidMultibulkLength,
    /// `Protocol error: too big bulk count string`.
    TooBigBulkCountString,
    /// `Protocol error: expected '$', got '<c>'`.
    ExpectedBulk(u8),
    /// `Protocol error: invalid bulk length` (also bulk longer than `proto-max-bulk-len`).
    InvalidBulkLength,
    /// A command is larger than the query buffer limit (Redis closes without a reply).
    QueryBufferLimit,
}

impl ParseError {
    /// Redis's reply text for a command-parsing error, without the leading `-` (for example
    /// `ERR Protocol error: invalid bulk length`). `None` for errors Redis closes on silently.
    pub fn redis_message(self) -> Option<&'static str> {
        Some(match self {
            ParseError::TooBigInlineRequest => "ERR Protocol error: too big inline request",
            ParseError::UnbalancedQuotes => "ERR Protocol error: unbalanced quotes in request",
            ParseError::TooBigMultibulkCountString => {
                "ERR Protocol error: too big mbulk count string"
            }
            ParseError::InvalidMultibulkLength => "ERR Protocol error: invalid multibulk length",
            ParseError::TooBigBulkCountString => "ERR Protocol error: too big bulk count string",
            ParseError::InvalidBulkLength => "ERR Protocol error: invalid bulk length",
            ParseError::ExpectedBulk(_) => "ERR Protocol error: expected '$', got ' '",
            ParseError::QueryBufferLimit => return None,
            _ => "ERR Protocol error",
        })
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::InvalidType(b) => write!(f, "invalid RESP type byte 0x{b:02x}"),
            ParseError::ExpectedBulk(b) => {
                write!(f, "Protocol error: expected '$', got '{}'", *b as char)
            }
            ParseError::InvalidLength => f.write_str("invalid length"),
            ParseError::InvalidInteger => f.write_str("invalid integer"),
            ParseError::InvalidDouble => f.write_str("invalid double"),
            ParseError::InvalidBoolean => f.write_str("invalid boolean"),
            ParseError::InvalidBigNumber => f.write_str("invalid big number"),
            ParseError::InvalidNull => f.write_str("invalid null"),
            ParseError::InvalidVerbatim => f.write_str("invalid verbatim string"),
            ParseError::InvalidStreamChunk => f.write_str("invalid streamed string chunk"),
            ParseError::InvalidLineEnding => f.write_str("missing CRLF"),
            ParseError::LineTooLong => f.write_str("line too long"),
            ParseError::BulkTooLong => f.write_str("bulk string longer than the limit"),
            ParseError::AggregateTooLong => f.write_str("aggregate longer than the limit"),
            ParseError::TooDeep => f.write_str("aggregates nested too deep"),
            ParseError::Incomplete => f.write_str("incomplete frame"),
            ParseError::QueryBufferLimit => {
                f.write_str("command larger than the query buffer limit")
            }
            other => f.write_str(
                other
                    .redis_message()
                    .unwrap_or("protocol error")
                    .trim_start_matches("ERR "),
            ),
        }
    }
}

impl core::error::Error for ParseError {}

impl ProtoError for ParseError {
    fn kind(&self) -> ErrorKind {
        match self {
            ParseError::LineTooLong
            | ParseError::BulkTooLong
            | ParseError::AggregateTooLong
            | ParseError::TooDeep
            | ParseError::TooBigInlineRequest
            | ParseError::TooBigMultibulkCountString
            | ParseError::TooBigBulkCountString
            | ParseError::QueryBufferLimit => ErrorKind::LimitExceeded,
            _ => ErrorKind::Malformed,
        }
    }
}

/// A connection failure (stored; every later `handle_input` returns it again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The peer sent invalid RESP or broke a limit. A server answers with Redis's error text
    /// (where Redis answers) and closes.
    Protocol(ParseError),
    /// A client received a reply while no command was outstanding.
    UnexpectedReply,
    /// The server closed the connection while replies were still owed.
    UnexpectedEof,
    /// A reply did not arrive within the configured response timeout.
    Timeout,
}

impl From<ParseError> for Error {
    fn from(e: ParseError) -> Self {
        Error::Protocol(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::UnexpectedReply => f.write_str("reply without an outstanding command"),
            Error::UnexpectedEof => f.write_str("connection closed with replies outstanding"),
            Error::Timeout => f.write_str("reply not received in time"),
        }
    }
}

impl core::error::Error for Error {}

impl ProtoError for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Protocol(e) => e.kind(),
            Error::UnexpectedReply => ErrorKind::Malformed,
            Error::UnexpectedEof => ErrorKind::Closed,
            Error::Timeout => ErrorKind::Timeout,
        }
    }
}

/// Why an application command (`send_reply`, `send_command`, …) was refused. The connection is
/// left unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SendError {
    /// No outstanding command has this id (already answered, or never existed).
    UnknownId,
    /// Too much out-of-order output is buffered behind an unanswered command.
    BufferFull,
    /// Not allowed now (a push to a RESP2 client that is not subscribed, an empty command).
    InvalidState,
    /// The pipeline is full (client: `max_pipelined` commands outstanding).
    PipelineFull,
    /// The connection is closing or closed.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::UnknownId => "no such outstanding command",
            SendError::BufferFull => "out-of-order reply buffer full",
            SendError::InvalidState => "not allowed in the connection's current state",
            SendError::PipelineFull => "too many commands outstanding",
            SendError::Closed => "connection closed",
        })
    }
}

impl core::error::Error for SendError {}

impl ProtoError for SendError {
    fn kind(&self) -> ErrorKind {
        match self {
            SendError::Closed => ErrorKind::Closed,
            SendError::BufferFull | SendError::PipelineFull => ErrorKind::LimitExceeded,
            _ => ErrorKind::InvalidState,
        }
    }
}
