//! # ferry-proto: the shared sans-IO vocabulary
//!
//! Every Ferry protocol (HTTP/1.1, HTTP/2, RESP, …) is a *sans-IO* state machine: it never
//! touches a socket, a thread or a clock. The caller hands it the bytes it read and the current
//! time, and asks it for bytes to write, events for the application and the next deadline.
//! This crate holds what all of them share:
//!
//! - [`Connection`]: the method set a driver pumps generically
//!   (`handle_input` / `poll_transmit` / `poll_event` / `poll_timeout` / `handle_timeout`);
//! - [`Instant`]: time as a plain number the caller passes in;
//! - [`Lifecycle`]: the eight connection states of the design (Disconnected … Error), with
//!   observers and transition counters;
//! - [`ProtocolInfo`]: static metadata (name, default port, binary, streaming, TLS, multiplexing);
//! - [`ErrorKind`]: the coarse classes every protocol error maps onto;
//! - [`testing::Pair`]: an in-memory client/server harness with a virtual clock that can split
//!   the byte stream at every boundary.
//!
//! ## Embedding: a complete run loop
//!
//! A driver does the same five steps for any protocol. Here with an in-memory "socket"
//! (a real driver reads from a `TcpStream`, io_uring completion or UMEM frame instead):
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use ferry_proto::{Connection, Instant, testing::Echo};
//!
//! let mut conn = Echo::default();               // any `Connection`
//! let mut input = BytesMut::from(&b"ping"[..]);  // what the socket gave us
//! let now = Instant::from_nanos(0);
//!
//! conn.handle_input(now, &mut input).unwrap();   // 1. feed bytes (consumed from `input`)
//! while let Some(ev) = conn.poll_event() {       // 2. hand events to the application
//!     assert_eq!(ev, Bytes::from_static(b"ping"));
//! }
//! let mut wire = Vec::new();
//! while let Some(chunk) = conn.poll_transmit() { // 3. write what it queued (vectored is fine)
//!     wire.extend_from_slice(&chunk);
//! }
//! assert_eq!(wire, b"ping");
//! if let Some(deadline) = conn.poll_timeout() {  // 4. arm one timer per connection
//!     conn.handle_timeout(deadline);             // 5. ... and call back when it fires
//! }
//! ```
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod connection;
mod error;
mod info;
mod lifecycle;
pub mod testing;
mod time;

pub use connection::Connection;
pub use error::{ErrorKind, ProtoError};
pub use info::{Multiplexing, ProtocolInfo, TlsRequirement};
pub use lifecycle::{InvalidTransition, Lifecycle, LifecycleObserver, State};
pub use time::Instant;

/// Re-exported so drivers and protocols agree on one `Bytes` type.
pub use bytes;
