//! # ferry-http1: sans-IO HTTP/1.1 (RFC 9110, RFC 9112)
//!
//! [`ServerConnection`] and [`ClientConnection`] are state machines over bytes: you feed them
//! what you read, they give you [`server::Event`]s / [`client::Event`]s and bytes to write. They
//! hold no socket, thread or clock, so they run inside any event loop: Ferry's own drivers
//! (epoll, io_uring, AF_XDP, DPDK) or yours.
//!
//! - Header names and values are slices of one frozen `Bytes` per head (one reference count
//!   per request, not per field). Request heads, response heads, trailer sections and
//!   `multipart` part headers are parsed by the crate's own one-pass parser (below).
//! - Bodies stream as `Data` events (zero-copy slices of your input buffer): Content-Length,
//!   chunked with extensions and trailers, and close-delimited responses.
//! - Keep-alive, pipelining (responses strictly in request order), `Expect: 100-continue`,
//!   HEAD/1xx/204/304, `Upgrade` and CONNECT, a cached `Date` field.
//! - Limits in [`ServerConfig`] / [`ClientConfig`] with safe defaults (414, 431, 413, 408),
//!   and request-smuggling defenses answered with 400 and close.
//! - [`multipart`]: a streaming `multipart/form-data` parser.
//!
//! ## Embedding: a blocking server loop over a std socket
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::sync::Arc;
//! use bytes::BytesMut;
//! use ferry_http1::{server::Event, Body, ServerConfig, ServerConnection};
//! use ferry_proto::{Connection, Instant};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let config = Arc::new(ServerConfig::default());
//! let start = std::time::Instant::now();
//! let now = || Instant::from_nanos(start.elapsed().as_nanos() as u64);
//! for stream in listener.incoming() {
//!     let mut stream = stream.unwrap();
//!     let mut conn = ServerConnection::new(config.clone(), now());
//!     let mut input = BytesMut::with_capacity(16 * 1024);
//!     let mut chunk = [0u8; 16 * 1024];
//!     loop {
//!         let n = stream.read(&mut chunk).unwrap_or(0);
//!         if n == 0 {
//!             conn.handle_eof(now());
//!         } else {
//!             input.extend_from_slice(&chunk[..n]);
//!             let _ = conn.handle_input(now(), &mut input); // errors are answered on the wire
//!         }
//!         while let Some(ev) = conn.poll_event() {
//!             if let Event::End { id } = ev {
//!                 conn.send_response(id, 200, &[("content-type", b"text/plain")],
//!                     Body::Full("hello world\n".into())).unwrap();
//!             }
//!         }
//!         while let Some(bytes) = conn.poll_transmit() {
//!             stream.write_all(&bytes).unwrap();
//!         }
//!         if conn.is_closed() || n == 0 {
//!             break;
//!         }
//!     }
//! }
//! ```
//!
//! `examples/blocking_server.rs` is the complete version (timeouts, echo of request bodies).
//!
//! ## What parses heads, and why not httparse
//!
//! A server's cost per request is dominated by its request-head parse, and issue 3 set the
//! budget: bytes → `Request` event within 1.2× of a bare `httparse::Request::parse` of the same
//! bytes. With httparse we measured 1.33× (callgrind, a 12-field browser request: 4319 vs 3256
//! instructions), because we walked httparse's field array a second time to build the index
//! and read the framing fields, and httparse's field loop costs ~160 instructions per line.
//! The crate's own parser (`src/parse.rs`) does it in one pass: field names and values eight
//! bytes at a time (SWAR, safe code), each field indexed and classified as it is found. It
//! brought the figure to 1.12× (3651 instructions; pipelined ×16: 1.11×), under the httparse
//! baseline itself for the parse proper. Names and values are now read sixteen bytes at a
//! time (`src/scan.rs`: SSE2 on x86-64, the crate's only `unsafe`, a portable loop
//! elsewhere), which took ~170 instructions off each request a proxy forwards.
//!
//! A client (`ferry proxy --protocol http` reading upstream responses, `ferry bench`,
//! ferry-client) pays the same on the response side, so response heads (status line, then the
//! same field loop) and trailer sections (the field loop alone) go through that parser too:
//! reading a typical nginx response head into a `Response` went from 2323 to 1481
//! instructions (a bare `httparse::Response::parse` of it: 1480), and a whole exchange on a
//! `ClientConnection` (send a request, feed the response, take the events) from 4021 to 3063
//! (`ratio run client-response` in `benches/`).
//!
//! Its verdicts are httparse 1.10's, byte for byte, for all three (`Request::parse`,
//! `Response::parse` with the default `ParserConfig`, `parse_headers`): the same accept /
//! incomplete / error on every input, the same fields, version, status and reason. Differential
//! proptests beside the parser and the fuzz target `http1_head_diff` hold it to that, RFC 9112
//! vectors pin the status-line grammar, and the checks made on top (bare LF, obs-fold,
//! framing, limits) are unchanged. httparse is now only a dev-dependency: the reference in
//! those tests (`multipart` part headers use the field-section parser too).
#![no_std]
#![deny(missing_docs)]
// The one exception: SSE2 intrinsics in `scan` (x86-64), each with its SAFETY note.
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod chunked;
pub mod client;
mod config;
pub mod date;
mod encode;
mod error;
pub mod head;
/// Streaming `multipart/form-data` parser (RFC 7578).
pub mod multipart;
mod parse;
mod scan;
pub mod server;

pub use client::ClientConnection;
pub use config::{ClientConfig, ServerConfig};
pub use encode::{is_token, reason_phrase, Body, Extra, FieldLines};
pub use error::{Error, HeadError, SendError};
pub use head::{BodyKind, Headers, Method, Request, RequestId, Response, Version, MAX_HEADERS_CAP};
pub use server::ServerConnection;

/// Internals for Ferry's fuzz targets (`fuzz/fuzz_targets/http1_head_diff.rs`); not a stable
/// API.
#[doc(hidden)]
pub mod __fuzz {
    use alloc::vec::Vec;

    pub use crate::parse::{ParseError, Status};

    /// A request head as the crate's own parser saw it (offsets into the parsed buffer).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RequestHead {
        /// Head length.
        pub len: usize,
        /// Method start and end.
        pub method: (usize, usize),
        /// Target start and end.
        pub target: (usize, usize),
        /// 0: HTTP/1.0, 1: HTTP/1.1.
        pub version: u8,
        /// Each field: line offset, name, value.
        pub fields: Vec<(usize, Vec<u8>, Vec<u8>)>,
        /// A bare LF ended the request line, the last field line or the head.
        pub outer_bare_lf: bool,
        /// A bare LF ended a field line.
        pub field_bare_lf: bool,
    }

    /// Parse a request head with the parser `ServerConnection` uses.
    pub fn parse_request_head(
        buf: &[u8],
        max_headers: usize,
    ) -> Result<Status<RequestHead>, ParseError> {
        let mut fields = Vec::new();
        let mut sink = |_: usize, at: usize, name: &[u8], value: &[u8]| {
            fields.push((at, name.to_vec(), value.to_vec()))
        };
        let r = match crate::parse::parse_request_head(buf, max_headers, &mut sink)? {
            Status::Complete(r) => r,
            Status::Partial => return Ok(Status::Partial),
        };
        Ok(Status::Complete(RequestHead {
            len: r.len,
            method: r.method,
            target: r.target,
            version: r.version,
            fields,
            outer_bare_lf: r.line_ends.outer_bare,
            field_bare_lf: r.line_ends.field_bare,
        }))
    }

    /// A response head as the crate's own parser saw it (offsets into the parsed buffer).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ResponseHead {
        /// Head length.
        pub len: usize,
        /// 0: HTTP/1.0, 1: HTTP/1.1.
        pub version: u8,
        /// Status code.
        pub status: u16,
        /// Reason phrase start and end; `(0, 0)` when empty or holding obs-text.
        pub reason: (usize, usize),
        /// Each field: line offset, name, value.
        pub fields: Vec<(usize, Vec<u8>, Vec<u8>)>,
        /// A line of the head ended in a bare LF.
        pub bare_lf: bool,
    }

    /// Parse a response head with the parser `ClientConnection` uses.
    pub fn parse_response_head(
        buf: &[u8],
        max_headers: usize,
    ) -> Result<Status<ResponseHead>, ParseError> {
        let mut fields = Vec::new();
        let mut sink = |_: usize, at: usize, name: &[u8], value: &[u8]| {
            fields.push((at, name.to_vec(), value.to_vec()))
        };
        let r = match crate::parse::parse_response_head(buf, max_headers, &mut sink)? {
            Status::Complete(r) => r,
            Status::Partial => return Ok(Status::Partial),
        };
        Ok(Status::Complete(ResponseHead {
            len: r.len,
            version: r.version,
            status: r.status,
            reason: r.reason,
            fields,
            bare_lf: r.bare_lf,
        }))
    }

    /// A field section (trailers): length, fields (line offset, name, value), bare LF.
    pub type FieldSection = (usize, Vec<(usize, Vec<u8>, Vec<u8>)>, bool);

    /// Parse a field section with the parser the chunked decoder uses for trailers.
    pub fn parse_field_section(
        buf: &[u8],
        max_headers: usize,
    ) -> Result<Status<FieldSection>, ParseError> {
        let mut fields = Vec::new();
        let mut sink = |_: usize, at: usize, name: &[u8], value: &[u8]| {
            fields.push((at, name.to_vec(), value.to_vec()))
        };
        Ok(
            match crate::parse::parse_field_section(buf, max_headers, &mut sink)? {
                Status::Complete((len, _, bare)) => Status::Complete((len, fields, bare)),
                Status::Partial => Status::Partial,
            },
        )
    }
}
