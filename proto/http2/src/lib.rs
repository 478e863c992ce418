//! # ferry-http2: sans-IO HTTP/2 (RFC 9113) with HPACK (RFC 7541)
//!
//! [`ServerConnection`] and [`ClientConnection`] are state machines over bytes: you feed them
//! what you read and the current time, they give you [`Event`]s, bytes to write and a deadline.
//! They hold no socket, thread or clock, so they run in any event loop.
//!
//! - [`frame`]: one module per frame type (DATA … CONTINUATION, plus RFC 9218
//!   PRIORITY_UPDATE), each a `Repr` with `parse` / `emit` / `buffer_len`; payloads are
//!   zero-copy `Bytes` slices of the input; unknown frame types and flags are ignored.
//! - [`hpack`]: our own HPACK: static and dynamic tables, table-driven Huffman decoding,
//!   size updates, never-indexed literals, and a header-list limit against HPACK bombs.
//! - [`stream`]: the RFC 9113 §5.1 stream state machine and flow-control windows.
//! - Connections: preface, SETTINGS with ACK and timeout, PING, two-phase graceful GOAWAY,
//!   max concurrent streams, trailers, server push, RFC 9218 priorities for scheduling,
//!   extended CONNECT (RFC 8441), h2c upgrade from HTTP/1.1, and header validation (§8.2).
//! - Serving both protocols on one port: [`sniff`] tells the preface from HTTP/1.x;
//!   [`ALPN_H2`] for TLS.
//! - Hardening, with limits in [`Config`]: rapid reset (CVE-2023-44487), CONTINUATION flood,
//!   HPACK bomb, SETTINGS/PING/empty-DATA/WINDOW_UPDATE floods, bounded send queues against
//!   zero-window readers, oversized frames.
//!
//! Flow control keeps large transfers at line rate: receive windows are configurable (1 MiB
//! per stream and 16 MiB per connection by default) and credit is returned in one
//! WINDOW_UPDATE once half a window is consumed.
//!
//! ## Embedding: a blocking server loop over a std socket
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::sync::Arc;
//! use bytes::{Bytes, BytesMut};
//! use ferry_http2::{Body, Config, Event, ServerConnection};
//! use ferry_proto::{Connection, Instant};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let config = Arc::new(Config::default());
//! let start = std::time::Instant::now();
//! let now = || Instant::from_nanos(start.elapsed().as_nanos() as u64);
//! let (mut sock, _) = listener.accept().unwrap();
//! let mut conn = ServerConnection::new(config, now());
//! let mut input = BytesMut::with_capacity(64 * 1024);
//! let mut buf = vec![0u8; 64 * 1024];
//! loop {
//!     // 1. events: answer every request with "hello world\n"
//!     while let Some(ev) = conn.poll_event() {
//!         if let Event::End { id } = ev {
//!             let _ = conn.send_response(id, 200, &[("content-type", b"text/plain")],
//!                 Body::Full(Bytes::from_static(b"hello world\n")));
//!         }
//!     }
//!     // 2. transmits (HEADERS, DATA as flow control allows, SETTINGS ACKs, ...)
//!     while let Some(chunk) = conn.poll_transmit() {
//!         sock.write_all(&chunk).unwrap();
//!     }
//!     if conn.is_closed() {
//!         break;
//!     }
//!     // 3. read (a real loop also arms a timer from `poll_timeout`)
//!     match sock.read(&mut buf) {
//!         Ok(0) | Err(_) => conn.handle_eof(now()),
//!         Ok(n) => {
//!             input.extend_from_slice(&buf[..n]);
//!             let _ = conn.handle_input(now(), &mut input); // errors are answered with GOAWAY
//!         }
//!     }
//! }
//! ```
//!
//! `examples/h2c_server.rs` is the complete version (timeouts, echo with flow control).
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod client;
mod config;
mod conn;
mod error;
mod event;
pub mod frame;
pub mod hpack;
mod message;
mod server;
pub mod stream;
mod streams;

pub use client::{ClientConnection, RequestHead};
pub use config::Config;
pub use conn::PREFACE;
pub use error::{Error, FrameError, HpackError, Reason, SendError};
pub use event::Event;
pub use frame::StreamId;
pub use message::{Fields, Priority, Request, Response};
pub use server::{ServerConnection, HTTP2_INFO};

use bytes::Bytes;

/// The ALPN protocol identifier for HTTP/2 over TLS (RFC 9113 §3.2): offer it in the TLS
/// handshake and start a [`ServerConnection`] / [`ClientConnection`] when it is selected.
pub const ALPN_H2: &[u8] = b"h2";

/// What the first bytes of a cleartext connection say (for a listener that serves HTTP/1.1
/// and h2c with prior knowledge on the same port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniff {
    /// The HTTP/2 client preface: hand the connection (and these bytes) to
    /// [`ServerConnection::new`].
    Http2,
    /// Not HTTP/2 prior knowledge: HTTP/1.x (which may still ask for `Upgrade: h2c`, see
    /// [`ServerConnection::from_upgrade`]).
    NotHttp2,
    /// Too few bytes to tell (a prefix of the preface).
    NeedMore,
}

/// Classify the first bytes a client sent.
pub fn sniff(first_bytes: &[u8]) -> Sniff {
    let n = first_bytes.len().min(PREFACE.len());
    if first_bytes[..n] != PREFACE[..n] {
        Sniff::NotHttp2
    } else if n < PREFACE.len() {
        Sniff::NeedMore
    } else {
        Sniff::Http2
    }
}

/// What the application sends as a message body.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// No body: the head carries END_STREAM.
    Empty,
    /// The whole body now (a `content-length` is added).
    Full(Bytes),
    /// Streamed later with `send_data` / `send_trailers`.
    Streaming,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_the_preface() {
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"PRI * HT"), Sniff::NeedMore);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::NotHttp2);
        assert_eq!(sniff(b"PRI * HTTP/1.1"), Sniff::NotHttp2);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"), Sniff::Http2);
    }
}
