//! # ferry-client: HTTP/1.1 requests over Ferry's I/O workers
//!
//! A [`Client`] owns one or more I/O workers on the driver this host supports (io_uring or
//! epoll, chosen like `ferry serve` does, `FERRY_DRIVER` honoured) and sends requests on
//! their outbound connections. No async runtime: a request returns a [`ResponseHandle`] to
//! wait on ([`wait`](ResponseHandle::wait), [`wait_timeout`](ResponseHandle::wait_timeout))
//! or to hand a callback ([`on_complete`](ResponseHandle::on_complete)).
//!
//! ```
//! use bytes::Bytes;
//! use ferry_client::Client;
//! # use std::io::{Read, Write};
//! # // A one-shot HTTP/1.1 server on loopback, to have something to talk to.
//! # let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! # let addr = listener.local_addr()?;
//! # std::thread::spawn(move || {
//! #     let (mut s, _) = listener.accept().unwrap();
//! #     let mut buf = [0; 1024];
//! #     let _ = s.read(&mut buf);
//! #     s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n").unwrap();
//! # });
//!
//! let client = Client::builder().build()?; // cloneable, Send + Sync
//! let req = http::Request::get(format!("http://{addr}/hello")).body(Bytes::new())?;
//! let resp = client.request(req).wait()?;
//! assert_eq!(resp.status(), 200);
//! assert_eq!(&resp.body()[..], b"hello\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## What it does
//!
//! - **Connections** are opened by the I/O worker itself (non-blocking connect through
//!   `ferry_driver::WorkerCtx::connect`), bounded by a
//!   [connect timeout](ClientBuilder::connect_timeout).
//! - **Names** resolve on resolver threads (blocking `getaddrinfo`, cached for
//!   [`dns_ttl`](ClientBuilder::dns_ttl)), never on an I/O worker; IP literals skip them.
//! - **Keep-alive**: each worker keeps a `ferry-pool` per destination: idle connections are
//!   reused most-recently-used first, at most
//!   [`max_idle_per_host`](ClientBuilder::max_idle_per_host) of them, closed after
//!   [`idle_timeout`](ClientBuilder::idle_timeout); at most
//!   [`max_connections_per_host`](ClientBuilder::max_connections_per_host) per destination
//!   and worker, further requests wait for one. A response that ends the connection
//!   (`Connection: close`, HTTP/1.0 without keep-alive, a close-delimited body, an error) is
//!   never reused. An idempotent request whose reused connection closed before any response
//!   byte is sent again once on a new connection (the keep-alive race every HTTP/1.1 client
//!   has).
//! - **Bounded**: a response head above [`max_head_bytes`](ClientBuilder::max_head_bytes) or
//!   a body above [`max_response_bytes`](ClientBuilder::max_response_bytes) fails the
//!   request with [`Error::Protocol`]; the inboxes are bounded
//!   ([`max_queued`](ClientBuilder::max_queued), then [`Error::Busy`]).
//! - **Timeouts**: [`request_timeout`](ClientBuilder::request_timeout) covers the whole
//!   exchange (resolution, waiting for a connection, sending, receiving);
//!   [`Client::request_with_timeout`] sets it per request.
//! - **Types**: requests are `http::Request<Bytes>`, responses `http::Response<Bytes>` (the
//!   `http` crate's `HeaderMap` both ways, via `ferry_driver::compat`); errors are
//!   [`Error`].
//!
//! Only `http://` (no TLS yet), whole bodies (no streaming) and HTTP/1.1 for now.
//!
//! ## Threads
//!
//! [`Client::request`] checks the request, then hands it to a worker's inbox (round robin)
//! and rings its doorbell, or to the resolver threads first. A worker drains its inbox once
//! per loop turn and routes each request through its pool. Callbacks run on the thread that
//! completes the request (usually an I/O worker): they must not block. Dropping the last
//! clone of a client stops its workers; requests still in flight complete with
//! [`Error::Closed`].
#![deny(missing_docs)]

mod error;
mod handle;
mod request;
mod resolve;
mod session;
pub mod workers;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use ferry_driver::{Clock, DriverKind, EventFd, Wake};

pub use error::Error;
pub use handle::{Outcome, ResponseHandle};

use request::{Job, Target};
use session::{Conn, Shared, Worker};
use workers::{WorkerOptions, Workers};

/// Settings of a [`Client`]; [`Client::builder`] starts from the defaults.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    driver: DriverKind,
    workers: usize,
    pin: bool,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    max_connections_per_host: usize,
    max_idle_per_host: usize,
    idle_timeout: Duration,
    max_response_bytes: u64,
    max_head_bytes: usize,
    max_queued: usize,
    resolver_threads: usize,
    dns_ttl: Duration,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            driver: DriverKind::Auto,
            workers: 1,
            pin: false,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Some(Duration::from_secs(30)),
            max_connections_per_host: 64,
            max_idle_per_host: 32,
            idle_timeout: Duration::from_secs(90),
            max_response_bytes: 64 << 20,
            max_head_bytes: 64 * 1024,
            max_queued: 16 * 1024,
            resolver_threads: 2,
            dns_ttl: Duration::from_secs(30),
        }
    }
}

impl ClientBuilder {
    /// The driver: `Auto` (default: io_uring when it works, else epoll; `FERRY_DRIVER`
    /// overrides `Auto`), `Epoll` or `Uring`.
    pub fn driver(mut self, d: DriverKind) -> Self {
        self.driver = d;
        self
    }
    /// I/O worker threads (default 1). Each has its own connections and pool.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }
    /// Pin worker `i` to the `i`-th CPU this process may run on (default off).
    pub fn pin(mut self, on: bool) -> Self {
        self.pin = on;
        self
    }
    /// Longest a TCP connect may take (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// Longest a whole request may take, `None` for no limit (default 30 s).
    pub fn request_timeout(mut self, t: Option<Duration>) -> Self {
        self.request_timeout = t;
        self
    }
    /// Most connections (open or connecting) per destination and worker (default 64).
    pub fn max_connections_per_host(mut self, n: usize) -> Self {
        self.max_connections_per_host = n.max(1);
        self
    }
    /// Most idle keep-alive connections kept per destination and worker (default 32; 0
    /// closes every connection after its response).
    pub fn max_idle_per_host(mut self, n: usize) -> Self {
        self.max_idle_per_host = n;
        self
    }
    /// How long an idle connection is kept (default 90 s).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }
    /// Largest response body accepted (default 64 MiB); more fails the request.
    pub fn max_response_bytes(mut self, n: u64) -> Self {
        self.max_response_bytes = n;
        self
    }
    /// Largest response head accepted (default 64 KiB).
    pub fn max_head_bytes(mut self, n: usize) -> Self {
        self.max_head_bytes = n.max(64);
        self
    }
    /// Most requests waiting in each worker's inbox and in the resolver queue (default
    /// 16 384); beyond, requests fail at once with [`Error::Busy`].
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = n.max(1);
        self
    }
    /// Name resolution threads (default 2).
    pub fn resolver_threads(mut self, n: usize) -> Self {
        self.resolver_threads = n.max(1);
        self
    }
    /// How long a resolved name is reused (default 30 s).
    pub fn dns_ttl(mut self, t: Duration) -> Self {
        self.dns_ttl = t;
        self
    }

    /// Start the workers and resolver threads.
    ///
    /// Fails with `InvalidInput` for an unknown `FERRY_DRIVER` or a driver without outbound
    /// TCP (kernel-bypass ones), or with the error of starting a thread or an event loop.
    pub fn build(self) -> io::Result<Client> {
        let n = self.workers;
        let mut h1 = ferry_http1::ClientConfig::default();
        h1.max_body = self.max_response_bytes;
        h1.max_head_bytes = self.max_head_bytes;
        h1.max_pipelined = 1;
        let mut pool = ferry_pool::Config::dynamic(0, self.max_connections_per_host);
        pool.idle_timeout = Some(self.idle_timeout);
        pool.max_waiters_per_key = self.max_queued;
        pool.wait_timeout = self.request_timeout.unwrap_or(Duration::from_secs(3600));
        pool.reconnect_backoff = Duration::ZERO;
        let mut inboxes = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..n {
            let (tx, rx) = crossbeam_channel::bounded(self.max_queued);
            inboxes.push(tx);
            receivers.push(rx);
        }
        let shared = Arc::new(Shared {
            inbox: receivers,
            workers: (0..n)
                .map(|_| Mutex::new(Worker::new(pool.clone())))
                .collect(),
            h1: Arc::new(h1),
            connect_timeout: self.connect_timeout,
            max_idle_per_host: self.max_idle_per_host,
            counters: Default::default(),
        });
        let wopts = WorkerOptions {
            driver: self.driver,
            workers: n,
            pin: self.pin,
            ..WorkerOptions::default()
        };
        let workers = workers::start::<Conn>(&wopts, shared.clone())?;
        let clock = workers.clock();
        let wakers = workers.wakers().to_vec();
        let router = Arc::new(Router {
            inboxes,
            wakers,
            next: AtomicUsize::new(0),
        });
        let (rtx, rrx) = crossbeam_channel::bounded::<Job>(self.max_queued);
        let cache = Arc::new(resolve::Cache::default());
        let mut resolvers = Vec::new();
        for i in 0..self.resolver_threads {
            let (rx, cache, router) = (rrx.clone(), cache.clone(), router.clone());
            let ttl = self.dns_ttl;
            let t = std::thread::Builder::new()
                .name(format!("ferry-resolve-{i}"))
                .spawn(move || {
                    resolve::run(rx, cache, ttl, move || clock.now(), |job| router.send(job))
                });
            match t {
                Ok(t) => resolvers.push(t),
                Err(e) => return Err(e),
            }
        }
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                router,
                resolver: Some(rtx),
                clock,
                request_timeout: self.request_timeout,
                driver: workers.driver(),
                workers: Some(workers),
                _resolvers: resolvers,
            }),
        })
    }
}

/// Hands resolved requests to the workers, round robin.
struct Router {
    inboxes: Vec<Sender<Job>>,
    wakers: Vec<Arc<EventFd>>,
    next: AtomicUsize,
}

impl Router {
    fn send(&self, job: Job) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.inboxes.len();
        match self.inboxes[i].try_send(job) {
            Ok(()) => self.wakers[i].wake(),
            Err(TrySendError::Full(job)) => job.fail(Error::Busy),
            Err(TrySendError::Disconnected(job)) => job.fail(Error::Closed),
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    router: Arc<Router>,
    resolver: Option<Sender<Job>>,
    clock: Clock,
    request_timeout: Option<Duration>,
    driver: DriverKind,
    workers: Option<Workers>,
    _resolvers: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.resolver = None; // resolver threads end once their queue is empty
                              // Stops the workers; joins them unless this runs on one (a callback dropped the
                              // last clone).
        self.workers = None;
    }
}

/// Counters of a client since it started (all workers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// TCP connects started.
    pub connects: u64,
    /// Connects that failed or timed out.
    pub connect_failures: u64,
    /// Requests written to a connection (retries included).
    pub requests: u64,
    /// Requests that got an idle keep-alive connection.
    pub reused: u64,
    /// Requests sent again after a reused connection closed under them.
    pub retries: u64,
}

/// An HTTP/1.1 client over Ferry's I/O workers; see the [crate docs](crate). Cheap to clone
/// (all clones share the workers), `Send + Sync`.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("driver", &self.inner.driver)
            .field("workers", &self.inner.router.inboxes.len())
            .finish()
    }
}

impl Client {
    /// Settings, starting from the defaults.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client with the default settings.
    pub fn new() -> io::Result<Client> {
        ClientBuilder::default().build()
    }

    /// The driver the workers run.
    pub fn driver(&self) -> DriverKind {
        self.inner.driver
    }

    /// Send `req` (an `http://` URI with a host; `Host` is added from it when missing;
    /// `Content-Length` comes from the body). Never blocks: the outcome comes through the
    /// handle, errors included.
    pub fn request(&self, req: http::Request<Bytes>) -> ResponseHandle {
        self.request_with_timeout(req, self.inner.request_timeout)
    }

    /// [`request`](Self::request) with its own timeout (`None`: no limit).
    pub fn request_with_timeout(
        &self,
        req: http::Request<Bytes>,
        timeout: Option<Duration>,
    ) -> ResponseHandle {
        let inner = &*self.inner;
        if inner.workers.as_ref().is_none_or(Workers::is_shutting_down) {
            return ResponseHandle::ready(Err(Error::Closed));
        }
        let c = match request::check(req) {
            Ok(c) => c,
            Err(e) => return ResponseHandle::ready(Err(e)),
        };
        let (handle, done) = handle::pair();
        let job = Job {
            method: c.method,
            target: c.target,
            headers: c.headers,
            body: c.body,
            dest: c.dest,
            fallback: Vec::new(),
            deadline: timeout.map(|t| inner.clock.now() + t),
            retried: false,
            done,
        };
        match (&job.dest, &inner.resolver) {
            (Target::Addr(_), _) => inner.router.send(job),
            (Target::Name(..), Some(r)) => match r.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => job.fail(Error::Busy),
                Err(TrySendError::Disconnected(job)) => job.fail(Error::Closed),
            },
            (Target::Name(..), None) => job.fail(Error::Closed),
        }
        handle
    }

    /// `GET uri`.
    pub fn get(&self, uri: &str) -> ResponseHandle {
        match http::Request::get(uri).body(Bytes::new()) {
            Ok(r) => self.request(r),
            Err(_) => ResponseHandle::ready(Err(Error::InvalidRequest("bad URI"))),
        }
    }

    /// Counters since the client started.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.shared.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            connects: l(&c.connects),
            connect_failures: l(&c.connect_failures),
            requests: l(&c.requests),
            reused: l(&c.reused),
            retries: l(&c.retries),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync + Clone>() {}
        fn send<T: Send>() {}
        send_sync::<Client>();
        send::<ResponseHandle>();
    }

    #[test]
    fn bad_requests_fail_without_a_round_trip() {
        let c = Client::builder().driver(DriverKind::Epoll).build().unwrap();
        assert!(matches!(
            c.get("https://127.0.0.1/").wait(),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            c.get("not a uri").wait(),
            Err(Error::InvalidRequest(_))
        ));
        assert_eq!(c.stats(), Stats::default());
    }
}
