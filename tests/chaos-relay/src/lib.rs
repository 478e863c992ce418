//! # ferry-chaos-relay
//!
//! A fault-injecting TCP relay for chaos tests, on a Ferry driver (`ferry-epoll`, using the
//! drivers' outbound connections and worker-local mail). It listens on one address and relays
//! every connection to one upstream, with faults that can be changed while it runs:
//!
//! - latency with jitter per chunk (`50 ms ± 20 ms`), order preserved;
//! - stalls (stop forwarding for a while or until told otherwise);
//! - resets (an RST to the client after N bytes in one direction, on a seeded random share
//!   of connections);
//! - half-open connections (one direction dropped silently, both sockets kept open);
//! - refusal (close right after accept) and a bandwidth limit.
//!
//! Closing: an upstream's close reaches the client after the bytes before it; a client's
//! close (or half-close) closes the upstream connection after the bytes before it, and
//! whatever the upstream sends after that is discarded (half-closed connections are not kept
//! half-open). Resets abort the client socket with an RST at once (the session asks its driver
//! through `Session::wants_abort`: `close` under `SO_LINGER {1, 0}`) and close the upstream
//! connection.
//!
//! The schedule is a sans-IO core ([`fault::Pipe`]) tested with a virtual clock; the
//! [`Relay`] runs it on one I/O worker thread. The `ferry-chaos-relay` binary wraps it with a
//! line-based control socket ([`control`]).
//!
//! ```
//! use std::io::{Read, Write};
//! use std::time::Duration;
//! use ferry_chaos_relay::{Faults, Relay};
//!
//! // An echo server to relay to.
//! let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let upstream = echo.local_addr().unwrap();
//! std::thread::spawn(move || {
//!     let (mut s, _) = echo.accept().unwrap();
//!     let mut b = [0u8; 5];
//!     s.read_exact(&mut b).unwrap();
//!     s.write_all(&b).unwrap();
//! });
//!
//! let faults = Faults::none().with_latency(Duration::from_millis(20), Duration::from_millis(5));
//! let relay = Relay::start("127.0.0.1:0".parse().unwrap(), upstream, faults).unwrap();
//! let mut c = std::net::TcpStream::connect(relay.local_addr()).unwrap();
//! c.write_all(b"hello").unwrap();
//! let mut back = [0u8; 5];
//! c.read_exact(&mut back).unwrap();
//! assert_eq!(&back, b"hello");
//! relay.stall_for(Duration::from_millis(100)); // faults change at runtime
//! relay.stop();
//! ```
#![deny(missing_docs)]

pub mod control;
pub mod fault;
pub mod relay;

pub use fault::{Dir, Faults, ResetFault, Stall};
pub use relay::{Relay, RelayError, Stats};
