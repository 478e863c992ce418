//! The lower-level API: I/O workers with no listener, for a [`Session`] of your own that only
//! opens outbound connections ([`WorkerCtx::connect`](ferry_driver::WorkerCtx::connect)).
//! [`Client`](crate::Client) is built on it; so is `ferry bench`'s load loop.
//!
//! A worker calls [`Session::take_mail`] once per loop turn (after its doorbell rang, and on
//! every other turn too) and [`Session::tick`] when the deadline it returned passes: that is
//! where such a session starts its connections (`ctx.connect` works in `take_mail`; it does
//! not yet in the very first `tick`, which runs before the worker's queues exist).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use ferry_driver::{
    Clock, DriverKind, EventFd, Launch, Request, Response, ServerHandle, ServerOptions, Service,
    Session, Shutdown, Wake,
};

/// How to start [`Workers`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// `Auto` (io_uring when it works, else epoll; `FERRY_DRIVER` overrides `Auto`), `Epoll`
    /// or `Uring`.
    pub driver: DriverKind,
    /// Worker threads.
    pub workers: usize,
    /// Pin worker `i` to the `i`-th CPU this process may run on.
    pub pin: bool,
    /// How long a shutdown waits for connections to finish.
    pub drain_timeout: Duration,
    /// Bytes read per `recv` (and the io_uring buffer size hint).
    pub read_chunk: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            driver: DriverKind::Auto,
            workers: 1,
            pin: false,
            drain_timeout: Duration::from_secs(1),
            read_chunk: 16 * 1024,
        }
    }
}

/// The workers' service (never called: nothing is accepted).
struct NoService;

impl Service for NoService {
    fn call(&self, _req: Request) -> Response {
        Response::text(404, "not a server\n")
    }
}

/// Running I/O workers for session type `S` (see the [module docs](self)).
#[derive(Debug)]
pub struct Workers {
    handle: Option<ServerHandle>,
    wakers: Vec<Arc<EventFd>>,
    clock: Clock,
    shutdown: Shutdown,
    driver: DriverKind,
}

/// Start `opts.workers` I/O workers running sessions of type `S` with `shared`.
///
/// The workers have no listener ([`Launch::outbound_only`]): [`Session::open`] is never called.
pub fn start<S: Session>(opts: &WorkerOptions, shared: Arc<S::Shared>) -> io::Result<Workers> {
    let env = std::env::var("FERRY_DRIVER").ok();
    let kind = ferry_driver::select::resolve(opts.driver, env.as_deref())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if !matches!(kind, DriverKind::Epoll | DriverKind::Uring) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("driver {kind} has no outbound TCP (use epoll or uring)"),
        ));
    }
    let so = ServerOptions {
        workers: opts.workers.max(1),
        pin: opts.pin,
        app_workers: 0,
        drain_timeout: opts.drain_timeout,
        linger: Duration::from_millis(500),
        read_chunk: opts.read_chunk.max(1024),
        ..ServerOptions::default()
    };
    let launch = Launch::outbound_only(so, Arc::new(NoService))?;
    let clock = launch.workers[0].clock;
    let wakers = launch.workers.iter().map(|w| w.waker.clone()).collect();
    let shutdown = launch.shutdown.clone();
    let handle = match kind {
        DriverKind::Uring => ferry_uring::start_with::<S>(launch, shared)?,
        _ => ferry_epoll::start_with::<S>(launch, shared)?,
    };
    Ok(Workers {
        driver: handle.driver,
        handle: Some(handle),
        wakers,
        clock,
        shutdown,
    })
}

impl Workers {
    /// The driver the workers run.
    pub fn driver(&self) -> DriverKind {
        self.driver
    }
    /// The workers' clock (what `now` means in their sessions).
    pub fn clock(&self) -> Clock {
        self.clock
    }
    /// How many workers run.
    pub fn len(&self) -> usize {
        self.wakers.len()
    }
    /// Whether no worker runs (never: at least one is started).
    pub fn is_empty(&self) -> bool {
        self.wakers.is_empty()
    }
    /// Ring worker `i`'s doorbell (its `take_mail` runs soon).
    pub fn wake(&self, i: usize) {
        if let Some(w) = self.wakers.get(i % self.wakers.len().max(1)) {
            w.wake();
        }
    }
    /// The doorbells, to ring from other threads.
    pub fn wakers(&self) -> &[Arc<EventFd>] {
        &self.wakers
    }
    /// Begin a graceful shutdown: sessions get `begin_shutdown`, workers exit once their
    /// connections closed or the drain timeout passed.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }
    /// Whether a shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_triggered()
    }
    /// Shut down and wait for the worker threads; returns how many panicked.
    pub fn join(mut self) -> usize {
        self.shutdown.trigger();
        self.handle.take().map_or(0, ServerHandle::wait)
    }
}

impl Drop for Workers {
    /// Shuts down; joins the threads unless called on one of them.
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(h) = self.handle.take() {
            let me = std::thread::current();
            let on_worker = me
                .name()
                .is_some_and(|n| n.starts_with("ferry-epoll-") || n.starts_with("ferry-uring-"));
            if !on_worker {
                h.wait();
            }
        }
    }
}
