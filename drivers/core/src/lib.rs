//! # ferry-driver: what every Ferry driver shares
//!
//! Drivers (`ferry-epoll`, `ferry-uring`, later AF_XDP/DPDK) own sockets, buffers and clocks;
//! protocols (`ferry-http1`, …) are sans-IO state machines; applications implement
//! [`Service`]. This crate is the middle:
//!
//! - [`Transport`], [`TransportKind`] and [`Capabilities`]: the transport abstraction;
//! - [`affinity`]: `sched_getaffinity`/`sched_setaffinity`, one pinned I/O worker per CPU;
//! - [`TimerWheel`]: a hierarchical timer wheel keyed by connection token, armed from each
//!   connection's `poll_timeout`;
//! - [`Service`], [`Request`], [`Response`], [`BodyStream`], [`Responder`]: the application
//!   boundary, usable without async, with streaming request bodies and chunked responses, and
//!   panics caught (`500`, logged, worker alive);
//! - [`pool`]: bounded lock-free channels (crossbeam-channel; see the module docs for why)
//!   between I/O workers and application workers, where backpressure comes from;
//! - [`HttpSession`]: the per-connection glue every driver uses, so drivers only move bytes;
//! - [`Session`]: the protocol-generic face of a connection that drivers are generic over
//!   (monomorphised, no dynamic dispatch on the hot path); implemented by [`HttpSession`],
//!   [`h2::HttpAuto`] (HTTP/1.1 plus h2c by prior knowledge or `Upgrade: h2c`) and
//!   [`resp::RespSession`] (RESP2/RESP3 over a [`resp::RespService`], with pub/sub routing
//!   across workers through per-worker mailboxes and the workers' doorbells);
//! - [`select`]: `auto|epoll|uring` with `FERRY_DRIVER`, and [`probe`];
//! - [`Shutdown`] and [`EventFd`]: graceful stop (stop accepting, close idle keep-alives,
//!   drain in-flight requests up to a deadline);
//! - [`compat`]: conversions to and from the `http` crate's types;
//! - [`outbound`]: outbound TCP connections opened by a session on its own worker
//!   ([`WorkerCtx::connect`]) and worker-local mail between connections ([`WorkerCtx::post`]);
//! - [`relay`]: [`relay::Relay`], a proxy or relay written as its downstream and upstream
//!   halves ([`relay::Downstream`], [`relay::Upstream`]) run as one [`Session`];
//! - [`Launch`]: binds the `SO_REUSEPORT` listeners and builds each worker's context.
//!
//! ## Embedding
//!
//! A service, served by whichever driver this host supports (the driver crates provide
//! `start(Launch) -> ServerHandle`):
//!
//! ```no_run
//! use std::sync::Arc;
//! use ferry_driver::{Launch, ListenAddr, Request, Response, ServerOptions, Service};
//!
//! struct Hello;
//! impl Service for Hello {
//!     fn call(&self, req: Request) -> Response {
//!         match req.path() {
//!             "/" => Response::text(200, "hello world\n"),
//!             _ => Response::text(404, "not found\n"),
//!         }
//!     }
//! }
//!
//! let opts = ServerOptions { workers: 1, ..ServerOptions::default() };
//! let launch = Launch::prepare("127.0.0.1:0".parse::<ListenAddr>().unwrap(), opts, Arc::new(Hello)).unwrap();
//! println!("listening on {}", launch.local_addr);
//! // let handle = ferry_epoll::start(launch).unwrap();
//! // handle.shutdown.trigger(); handle.wait();
//! ```
#![deny(missing_docs)]

pub mod affinity;
pub mod compat;
pub mod driven;
pub mod h2;
pub mod listen;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod relay;
mod relay_tls;
pub mod resp;
pub mod runtime;
pub mod select;
pub mod service;
pub mod session;
pub mod shutdown;
pub mod spin;
pub mod timer;
pub mod transport;
pub mod turn;

pub use driven::{OutQueue, Session};
pub use ferry_http1::{Method, ServerConfig};
pub use listen::{BindError, ListenAddr, ListenOptions, Listener};
pub use metrics::WorkerMetrics;
pub use outbound::ConnectRequest;
pub use runtime::{Clock, Launch, ServerHandle, ServerOptions, UringOptions, WorkerCtx};
pub use select::{probe, DriverKind, ProbeRow};
pub use service::{
    Body, BodyStream, ConnInfo, HeadBody, Health, Part, Request, Responder, Response, Service,
};
pub use session::HttpSession;
pub use shutdown::{EventFd, Shutdown, Wake};
pub use timer::TimerWheel;
pub use transport::{
    Capabilities, ConnectionId, Readiness, StdTransport, Transport, TransportKind,
};
