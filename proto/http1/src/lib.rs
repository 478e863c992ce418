//! # ferry-http1: sans-IO HTTP/1.1 (RFC 9110, RFC 9112)
//!
//! [`ServerConnection`] and [`ClientConnection`] are state machines over bytes: you feed them
//! what you read, they give you [`server::Event`]s / [`client::Event`]s and bytes to write. They
//! hold no socket, thread or clock, so they run inside any event loop: Ferry's own drivers
//! (epoll, io_uring, AF_XDP, DPDK) or yours.
//!
//! - Heads are parsed with `httparse`; header names and values are slices of one frozen
//!   `Bytes` per head (one reference count per request, not per field).
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
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

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
pub mod server;

pub use client::ClientConnection;
pub use config::{ClientConfig, ServerConfig};
pub use encode::{is_token, reason_phrase, Body};
pub use error::{Error, HeadError, SendError};
pub use head::{BodyKind, Headers, Method, Request, RequestId, Response, Version, MAX_HEADERS_CAP};
pub use server::ServerConnection;
