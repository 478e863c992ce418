//! What can go wrong with a request.

use std::fmt;
use std::io;

/// Why a request produced no response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The request cannot be sent as given (no host, a scheme other than `http`, a bad
    /// method or target); nothing went on the wire.
    InvalidRequest(&'static str),
    /// The host name did not resolve (the resolver's message).
    Resolve(String),
    /// The TCP connect failed (refused, unreachable, reset).
    Connect(io::ErrorKind),
    /// The TCP connect did not finish within
    /// [`connect_timeout`](crate::ClientBuilder::connect_timeout).
    ConnectTimeout,
    /// No complete response within the request's timeout (resolution, waiting for a
    /// connection, sending and receiving included).
    Timeout,
    /// The server's answer broke HTTP/1.1 or a limit (e.g. `BodyTooLarge` beyond
    /// [`max_response_bytes`](crate::ClientBuilder::max_response_bytes)), or the
    /// connection ended before the response was complete (`UnexpectedEof`).
    Protocol(ferry_http1::Error),
    /// Too many requests queued: the worker's inbox is full
    /// ([`max_queued`](crate::ClientBuilder::max_queued)), or the destination's connection
    /// limit is reached and too many requests wait for one.
    Busy,
    /// The client shut down (or its I/O worker died) before the request completed.
    Closed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            Error::Resolve(why) => write!(f, "name resolution failed: {why}"),
            Error::Connect(kind) => write!(f, "connect failed: {}", io::Error::from(*kind)),
            Error::ConnectTimeout => f.write_str("connect timed out"),
            Error::Timeout => f.write_str("request timed out"),
            Error::Protocol(e) => write!(f, "HTTP/1.1 error: {e}"),
            Error::Busy => f.write_str("too many requests queued"),
            Error::Closed => f.write_str("client closed"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_cause() {
        assert_eq!(
            Error::Connect(io::ErrorKind::ConnectionRefused).to_string(),
            format!(
                "connect failed: {}",
                io::Error::from(io::ErrorKind::ConnectionRefused)
            )
        );
        assert!(Error::Protocol(ferry_http1::Error::BodyTooLarge)
            .to_string()
            .starts_with("HTTP/1.1 error"));
        assert_eq!(Error::ConnectTimeout.to_string(), "connect timed out");
    }
}
