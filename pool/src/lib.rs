//! # ferry-pool: sans-IO connection pools
//!
//! A connection pool as a state machine, in the style of quinn-proto: it holds the caller's
//! connection handles `C` per destination `K`, but never opens, closes or reads a socket, never
//! reads a clock and never blocks. The caller asks, passing the time; the pool answers what to
//! do:
//!
//! - [`Pool::checkout`] → [`Checkout::Ready`] (a warm idle connection),
//!   [`Checkout::Connect`] (open one yourself, then report [`Pool::connected`] or
//!   [`Pool::connect_failed`]) or [`Checkout::Queued`] (answered later by an event);
//! - [`Pool::checkin`] returns a lease, reusable or not;
//! - [`Pool::poll_event`] yields [`Event`]s: `Connect` (open one for the waiters or the
//!   minimum), `Ready`/`TimedOut`/`Failed` (answers to queued checkouts), `HealthCheck` (ping
//!   this idle connection), `Close` (the pool is done with a connection);
//! - [`Pool::poll_timeout`] / [`Pool::handle_timeout`] drive waiter timeouts, idle timeouts,
//!   max lifetime, health checks, reconnect backoff and (if set) connect timeouts.
//!
//! The seed's pool kinds are settings and wrappers of that one machine:
//!
//! | kind | how |
//! |---|---|
//! | fixed-size | [`Config::fixed`]`(n)`: `n` per destination, opened by [`Pool::prewarm`], replaced when retired |
//! | dynamic | [`Config::dynamic`]`(min, max)`: grows on demand, shrinks to `min` by idle timeout |
//! | per-worker | [`Pool`] itself: one per I/O worker, `&mut self`, no locks (the default) |
//! | shared | [`Shared`]: sharded, `Send + Sync`, one short lock per call (trade-off in its docs) |
//! | per-destination | every pool is keyed: `max_per_key` per destination, `max_total` overall |
//!
//! Idle connections are reused **LIFO** (most recently used first, so the hot set stays warm and
//! the rest time out); queued checkouts are served **FIFO**, each waits at most
//! `wait_timeout` (or less, to its own deadline, with [`Pool::checkout_with_deadline`]), can be
//! withdrawn with [`Pool::cancel`], and is never served at or past its deadline: a waiter
//! whose deadline passed before a connection came back gets [`Event::TimedOut`], whether the
//! caller's timer or the checkin is handled first.
//!
//! Keys are any `Ord + Clone` type (`SocketAddr`, `(String, u16)`, an upstream index);
//! [`Shared`] also needs `Hash` to pick a shard. [`Config::validate`] (or [`Pool::try_new`])
//! rejects settings that cannot work, with a [`ConfigError`] naming the field; [`Pool::new`]
//! takes any.
//!
//! ## Embedding: an I/O worker around its own sockets
//!
//! Here with blocking std sockets on loopback to stay short; a real worker starts a
//! non-blocking connect on [`Checkout::Connect`] and reports it when the socket is writable,
//! parks a [`Checkout::Queued`] request until its [`Event::Ready`], and arms its timer wheel
//! from [`Pool::poll_timeout`].
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{SocketAddr, TcpListener, TcpStream};
//! use ferry_pool::{Checkout, Config, Event, Pool};
//! use ferry_proto::Instant;
//!
//! // An upstream on loopback that echoes what it reads.
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let upstream = listener.local_addr()?;
//! std::thread::spawn(move || {
//!     for mut s in listener.incoming().flatten() {
//!         std::thread::spawn(move || {
//!             let mut buf = [0; 64];
//!             while let Ok(n @ 1..) = s.read(&mut buf) {
//!                 let _ = s.write_all(&buf[..n]);
//!             }
//!         });
//!     }
//! });
//!
//! // The worker's clock, converted to the pool's `Instant`.
//! let start = std::time::Instant::now();
//! let now = || Instant::from_nanos(start.elapsed().as_nanos() as u64);
//! let mut pool: Pool<SocketAddr, TcpStream> = Pool::new(Config::dynamic(0, 4));
//!
//! // One request: get a connection, use it, give it back.
//! let request = |pool: &mut Pool<SocketAddr, TcpStream>, msg: &[u8]| -> std::io::Result<Vec<u8>> {
//!     let mut lease = match pool.checkout(upstream, now()) {
//!         Ok(Checkout::Ready(lease)) => lease, // a warm connection
//!         Ok(Checkout::Connect(ticket)) => match TcpStream::connect(ticket.key()) {
//!             Ok(stream) => pool.connected(ticket, stream, now()).unwrap().unwrap(),
//!             Err(e) => {
//!                 pool.connect_failed(ticket, now()).unwrap();
//!                 return Err(e);
//!             }
//!         },
//!         // Queued: park the request until `Event::Ready { waiter, .. }`; full: answer 503.
//!         _ => return Err(std::io::ErrorKind::WouldBlock.into()),
//!     };
//!     let mut reply = vec![0; msg.len()];
//!     let io = lease.conn_mut().write_all(msg).and_then(|()| lease.conn_mut().read_exact(&mut reply));
//!     pool.checkin(lease, io.is_ok(), now()).unwrap(); // a failed connection is not reused
//!     io.map(|()| reply)
//! };
//!
//! assert_eq!(request(&mut pool, b"ping")?, b"ping");
//! assert_eq!(request(&mut pool, b"pong")?, b"pong");
//! assert_eq!(pool.metrics().created, 1); // the second request reused the warm connection
//!
//! // After every batch of socket events the worker drains the pool's events ...
//! while let Some(event) = pool.poll_event() {
//!     match event {
//!         Event::Close(stream) => drop(stream),
//!         Event::Connect(ticket) => match TcpStream::connect(ticket.key()) {
//!             Ok(stream) => drop(pool.connected(ticket, stream, now())),
//!             Err(_) => drop(pool.connect_failed(ticket, now())),
//!         },
//!         Event::Ready { waiter: _, lease } => drop(pool.checkin(lease, true, now())), // resume it
//!         Event::TimedOut { waiter: _ } | Event::Failed { waiter: _ } => {} // answer 503
//!         Event::HealthCheck(lease) => drop(pool.checkin(lease, true, now())), // after a ping
//!         _ => {}
//!     }
//! }
//! // ... and arms one timer at `poll_timeout()`; when it fires:
//! if let Some(_deadline) = pool.poll_timeout() {
//!     pool.handle_timeout(now()); // early is harmless: nothing due means nothing happens
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## Design notes
//!
//! - **The caller connects.** Connecting is I/O (and protocol handshakes, TLS, auth), so the
//!   pool hands out [`Ticket`]s instead of calling a connect callback as r2d2/bb8/deadpool do;
//!   the same machine then serves blocking code, mio/io_uring loops and async runtimes. A
//!   ticket holds its place against the limits until reported, so the caller MUST report
//!   `connect_failed` when its own connect timeout fires, or set [`Config::connect_timeout`]
//!   and let the pool give the connect up ([`Event::ConnectTimedOut`]).
//! - **Events, not callbacks**, so there is no reentrancy: answers to queued checkouts, close
//!   requests and health checks queue up in order and are bounded by the connections and
//!   waiters the limits allow.
//! - **Time is an argument** ([`ferry_proto::Instant`]); `poll_timeout` is the one deadline
//!   to arm, which fits a timer wheel. Timers are checked by scanning (O(connections) per
//!   `poll_timeout` and `handle_timeout`), which suits pools of up to a few thousand
//!   connections per worker; `checkout` and `checkin` never scan.
//! - **The hot path is O(1) and allocation-free once warm**: a checkout served from the idle
//!   stack and a checkin back onto it touch one destination, found through the slot the
//!   previous checkout used (or the caller's [`KeyHint`] with [`Pool::checkout_hinted`]) or
//!   the one the [`Lease`] remembers (no key look-up then), check
//!   expiry with timers converted to nanoseconds once, count the zero wait instead of
//!   recording a histogram sample, and skip the refill and rebalancing work unless the key is
//!   below `min_per_key` or some key is blocked on `max_total`. About 230 instructions per
//!   checkout + checkin pair with a validator (`pool/benches/instructions.sh`; 537 before).
//! - **The rules follow HikariCP and r2d2** (idle timeout down to a minimum, max lifetime,
//!   validation on checkout, bounded waiting with a timeout) plus max uses and periodic health
//!   checks (HikariCP's `keepaliveTime`); LIFO reuse as in bb8's and deadpool's LIFO modes.
//! - The core is `#![no_std]` + `alloc` without the default `std` feature, which only adds
//!   [`Shared`].
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

extern crate alloc;

mod config;
mod metrics;
mod pool;
#[cfg(feature = "std")]
mod shared;

pub use config::{Config, ConfigError};
pub use metrics::{Metrics, WaitHistogram, BUCKETS};
pub use pool::{
    Checkout, CheckoutError, Event, KeyHint, Lease, Pool, PoolError, Ticket, TicketId, WaiterId,
};
#[cfg(feature = "std")]
pub use shared::Shared;
