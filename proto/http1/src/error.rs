use core::fmt;

use ferry_proto::{ErrorKind, ProtoError};

/// Why a message head, body or connection was rejected. Small and `Copy`; a connection that
/// fails stores it and returns it again from every later `handle_input`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// Invalid request line, status line or header syntax (httparse's verdict).
    InvalidHead(HeadError),
    /// The request line (method + target + version) is longer than `max_request_line`.
    UriTooLong,
    /// The header block is larger than `max_head_bytes`.
    HeadTooLarge,
    /// More header fields than `max_headers`.
    TooManyHeaders,
    /// A line ends in a bare LF, or a bare CR appears in the head.
    BareLineFeed,
    /// Both `Content-Length` and `Transfer-Encoding` were sent (request smuggling vector).
    ContentLengthWithTransferEncoding,
    /// `Content-Length` is not a valid number, or several differing values were sent.
    InvalidContentLength,
    /// A transfer coding other than a single, final `chunked` (or unknown codings in a request).
    InvalidTransferEncoding,
    /// `Transfer-Encoding` in an HTTP/1.0 message.
    TransferEncodingInHttp10,
    /// The HTTP version is not 1.0 or 1.1.
    UnsupportedVersion,
    /// A chunk size line is malformed (not hex, overflow, bad extension, bad line ending).
    InvalidChunkSize,
    /// Data after a chunk is not followed by CRLF.
    InvalidChunkTerminator,
    /// Malformed trailer section.
    InvalidTrailers,
    /// The body is longer than `max_body`.
    BodyTooLarge,
    /// The peer closed the connection in the middle of a message.
    UnexpectedEof,
    /// A request or response head was not complete within the header-read timeout.
    HeaderTimeout,
    /// A response arrived that no request asked for.
    UnsolicitedResponse,
    /// A `Host` header is missing from an HTTP/1.1 request, or appears more than once.
    InvalidHost,
}

/// httparse's classes of head syntax errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeadError {
    /// Invalid byte in a header name (includes whitespace before the colon).
    HeaderName,
    /// Invalid byte in a header value (includes obs-fold line folding).
    HeaderValue,
    /// Invalid line ending.
    NewLine,
    /// Invalid status code.
    Status,
    /// Invalid token (method).
    Token,
    /// Invalid HTTP version.
    Version,
}

impl Error {
    /// The status code a server answers this error with.
    pub fn status(self) -> u16 {
        match self {
            Error::UriTooLong => 414,
            Error::HeadTooLarge | Error::TooManyHeaders => 431,
            Error::BodyTooLarge => 413,
            Error::HeaderTimeout => 408,
            Error::UnsupportedVersion => 505,
            _ => 400,
        }
    }

    pub(crate) fn from_parse(e: crate::parse::ParseError) -> Error {
        use crate::parse::ParseError as P;
        Error::InvalidHead(match e {
            P::HeaderName => HeadError::HeaderName,
            P::HeaderValue => HeadError::HeaderValue,
            P::NewLine => HeadError::NewLine,
            P::Status => HeadError::Status,
            P::Token => HeadError::Token,
            P::Version => HeadError::Version,
            P::TooManyHeaders => return Error::TooManyHeaders,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Error::InvalidHead(h) => return write!(f, "invalid message head: {h:?}"),
            Error::UriTooLong => "request line too long",
            Error::HeadTooLarge => "header section too large",
            Error::TooManyHeaders => "too many header fields",
            Error::BareLineFeed => "bare CR or LF in message head",
            Error::ContentLengthWithTransferEncoding => "both Content-Length and Transfer-Encoding",
            Error::InvalidContentLength => "invalid or conflicting Content-Length",
            Error::InvalidTransferEncoding => "unsupported Transfer-Encoding",
            Error::TransferEncodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 message",
            Error::UnsupportedVersion => "unsupported HTTP version",
            Error::InvalidChunkSize => "invalid chunk size line",
            Error::InvalidChunkTerminator => "chunk data not followed by CRLF",
            Error::InvalidTrailers => "invalid trailer section",
            Error::BodyTooLarge => "body larger than the configured limit",
            Error::UnexpectedEof => "connection closed in the middle of a message",
            Error::HeaderTimeout => "message head not received in time",
            Error::UnsolicitedResponse => "response without a request",
            Error::InvalidHost => "missing or repeated Host header",
        };
        f.write_str(s)
    }
}

impl core::error::Error for Error {}

impl ProtoError for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::UriTooLong
            | Error::HeadTooLarge
            | Error::TooManyHeaders
            | Error::BodyTooLarge => ErrorKind::LimitExceeded,
            Error::HeaderTimeout => ErrorKind::Timeout,
            Error::UnexpectedEof => ErrorKind::Closed,
            Error::UnsupportedVersion => ErrorKind::Unsupported,
            _ => ErrorKind::Malformed,
        }
    }
}

/// Why an application command (`send_response`, `send_data`, `send_request`, …) was refused.
/// The connection is left unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SendError {
    /// No outstanding request/response has this id (already answered, or never existed).
    UnknownId,
    /// A response head was already sent for this request, or a body command came before it.
    InvalidState,
    /// A header name or value contains bytes that are not allowed (CR, LF, NUL, non-token name).
    InvalidHeader,
    /// The framing headers (`Content-Length`, `Transfer-Encoding`) are set by the connection
    /// from the body kind; the application may not pass them.
    FramingHeader,
    /// More body bytes than the declared `Content-Length`, or fewer at `end`.
    LengthMismatch,
    /// The status code is outside 100..=999, or 101 without an `Upgrade` request.
    InvalidStatus,
    /// The connection is closing or closed; nothing more can be sent.
    Closed,
    /// Trailers require a chunked body.
    TrailersNotAllowed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            SendError::UnknownId => "no such outstanding message",
            SendError::InvalidState => "command not allowed in this message state",
            SendError::InvalidHeader => "invalid header name or value",
            SendError::FramingHeader => "framing headers are set by the connection",
            SendError::LengthMismatch => "body length differs from the declared length",
            SendError::InvalidStatus => "invalid status code",
            SendError::Closed => "connection closed",
            SendError::TrailersNotAllowed => "trailers need a chunked body",
        };
        f.write_str(s)
    }
}

impl core::error::Error for SendError {}

impl ProtoError for SendError {
    fn kind(&self) -> ErrorKind {
        match self {
            SendError::Closed => ErrorKind::Closed,
            _ => ErrorKind::InvalidState,
        }
    }
}
