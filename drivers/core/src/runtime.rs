//! What every driver's I/O workers share: options, the clock, the per-worker context and the
//! launch plan (listeners bound, app workers started, metrics allocated).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use ferry_http1::ServerConfig;
use ferry_proto::Instant;

use crate::listen::{bind, BindError, ListenAddr, ListenOptions, Listener};
use crate::metrics::WorkerMetrics;
use crate::pool::{start_app_workers, AppPool, Job, Reply};
use crate::service::Service;
use crate::shutdown::{EventFd, Shutdown};
use crate::{affinity, DriverKind};

/// Everything configurable about a server's I/O workers.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// I/O worker threads (each with its own listener and event loop). Default: the number of
    /// allowed CPUs.
    pub workers: usize,
    /// Application worker threads; 0 runs the service inline on the I/O workers.
    pub app_workers: usize,
    /// Pin I/O workers one per allowed CPU, in order. Default `true`.
    pub pin: bool,
    /// Listener and socket options.
    pub listen: ListenOptions,
    /// HTTP/1.1 limits and timeouts.
    pub http: ServerConfig,
    /// Most open connections per I/O worker; accepting pauses at the limit. Default 65536.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish after shutdown starts. Default 30 s.
    pub drain_timeout: Duration,
    /// Capacity of each bounded channel to an application worker. Default 1024.
    pub channel_capacity: usize,
    /// Largest request body buffered for [`Service::call`] before 413.
    /// Default 8 MiB (streaming services are not limited by this).
    pub max_buffered_body: usize,
    /// Bytes reserved per socket read. Default 16 KiB.
    pub read_chunk: usize,
    /// Output queued per connection above which reading pauses. Default 1 MiB.
    pub write_high_water: usize,
    /// Unparsed input per connection above which reading pauses. Default 256 KiB.
    pub input_high_water: usize,
    /// How long accepting pauses after EMFILE/ENFILE. Default 100 ms.
    pub accept_backoff: Duration,
    /// Lingering close: how long to wait for the peer's FIN after our last byte. Default 2 s.
    pub linger: Duration,
    /// io_uring driver options (ignored by the other drivers).
    pub uring: UringOptions,
    /// Adaptive busy polling ([`crate::spin`]): after activity, a worker polls without
    /// sleeping for up to this long before it blocks. Trades CPU for latency across cores.
    /// Default `None` (off).
    pub busy_poll: Option<Duration>,
}

/// io_uring features that are measured not to pay on every host, off by default (see
/// `ferry-uring`'s crate docs for the figures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UringOptions {
    /// Register each accepted socket in the ring's sparse file table
    /// (`IORING_REGISTER_FILES`) and address it by index in recv/send, saving the per-op file
    /// lookup at the cost of two `io_uring_register` calls per connection.
    pub registered_files: bool,
    /// Send single-chunk responses with `IORING_OP_SEND_ZC` (the buffer is held until the
    /// kernel's notification). Loopback copies anyway.
    pub send_zc: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            workers: affinity::allowed_cpus()
                .map(|c| c.len())
                .unwrap_or(1)
                .max(1),
            app_workers: 0,
            pin: true,
            listen: ListenOptions::default(),
            http: ServerConfig::default(),
            max_connections: 65536,
            drain_timeout: Duration::from_secs(30),
            channel_capacity: 1024,
            max_buffered_body: 8 << 20,
            read_chunk: 16 * 1024,
            write_high_water: 1 << 20,
            input_high_water: 256 * 1024,
            accept_backoff: Duration::from_millis(100),
            linger: Duration::from_secs(2),
            uring: UringOptions::default(),
            busy_poll: None,
        }
    }
}

/// Monotonic clock shared by a server's workers, converted to [`ferry_proto::Instant`].
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// `CLOCK_MONOTONIC` at the origin, in nanoseconds.
    origin: u64,
    unix_origin_nanos: u64,
}

/// `CLOCK_MONOTONIC` (what `std::time::Instant` reads on Linux) in nanoseconds, read directly:
/// no `Instant` subtraction with its overflow checks and `Duration` normalisation per call.
fn monotonic_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one `timespec` into the valid local we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Clock {
            origin: monotonic_nanos(),
            unix_origin_nanos: unix,
        }
    }

    /// Now.
    pub fn now(&self) -> Instant {
        Instant::from_nanos(monotonic_nanos().saturating_sub(self.origin))
    }

    /// Unix time in nanoseconds at `Instant::ZERO` (for the `Date` field).
    pub fn unix_origin_nanos(&self) -> u64 {
        self.unix_origin_nanos
    }

    /// How long until `deadline`, zero when it passed.
    pub fn until(&self, deadline: Instant) -> Duration {
        deadline.saturating_duration_since(self.now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// What one I/O worker needs, handed to its thread by the driver.
pub struct WorkerCtx {
    /// Worker index (0-based).
    pub index: usize,
    /// CPU to pin to, if pinning.
    pub cpu: Option<usize>,
    /// The application.
    pub service: Arc<dyn Service>,
    /// HTTP/1.1 configuration (with the `Date` origin set).
    pub http: Arc<ServerConfig>,
    /// Options.
    pub options: Arc<ServerOptions>,
    /// This worker's counters.
    pub metrics: Arc<WorkerMetrics>,
    /// Channels to the application workers (empty: inline).
    pub jobs: Vec<Sender<Job>>,
    /// Replies from the application workers.
    pub replies: Option<Receiver<Reply>>,
    /// The worker's doorbell (replies, shutdown).
    pub waker: Arc<EventFd>,
    /// The stop flag.
    pub shutdown: Shutdown,
    /// The clock.
    pub clock: Clock,
}

impl std::fmt::Debug for WorkerCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCtx")
            .field("index", &self.index)
            .field("cpu", &self.cpu)
            .finish()
    }
}

impl WorkerCtx {
    /// A context for driving sessions by hand, without a driver or sockets (benches, tests,
    /// an embedder's own loop): worker 0, not pinned, `service` inline, default options with
    /// the `Date` origin set, fresh counters, doorbell and stop flag.
    pub fn detached(service: Arc<dyn Service>) -> io::Result<WorkerCtx> {
        let options = ServerOptions {
            workers: 1,
            ..ServerOptions::default()
        };
        let clock = Clock::new();
        let mut http = options.http.clone();
        http.date_origin_unix_nanos = Some(clock.unix_origin_nanos());
        Ok(WorkerCtx {
            index: 0,
            cpu: None,
            service,
            http: Arc::new(http),
            options: Arc::new(options),
            metrics: Arc::new(WorkerMetrics::default()),
            jobs: Vec::new(),
            replies: None,
            waker: Arc::new(EventFd::new()?),
            shutdown: Shutdown::new(),
            clock,
        })
    }

    /// Pin the calling thread as configured; a failure is logged, not fatal.
    pub fn pin(&self) {
        if let Some(cpu) = self.cpu {
            if let Err(e) = affinity::pin_current_thread(cpu) {
                tracing::warn!("worker {}: cannot pin to cpu {cpu}: {e}", self.index);
            }
        }
    }
}

/// A server ready to run: listeners bound, contexts built, application workers running.
pub struct Launch {
    /// The bound address (real port).
    pub local_addr: ListenAddr,
    /// One listener per I/O worker, or none ([`Launch::outbound_only`]).
    pub listeners: Vec<Listener>,
    /// One context per I/O worker.
    pub workers: Vec<WorkerCtx>,
    /// Every worker's counters, for reporting.
    pub metrics: Vec<Arc<WorkerMetrics>>,
    /// The stop flag.
    pub shutdown: Shutdown,
    /// The application worker pool (if any).
    pub app: Option<AppPool>,
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("local_addr", &self.local_addr)
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl Launch {
    /// Bind listeners on `addr` (an IP socket address or a `unix:` path) and prepare
    /// `options.workers` I/O worker contexts.
    pub fn prepare(
        addr: impl Into<ListenAddr>,
        options: ServerOptions,
        service: Arc<dyn Service>,
    ) -> Result<Launch, BindError> {
        let addr: ListenAddr = addr.into();
        let n = options.workers.max(1);
        let (listeners, local_addr) = bind(&addr, n, &options.listen)?;
        Launch::with_listeners(local_addr, listeners, options, service).map_err(|source| {
            BindError {
                addr: addr.clone(),
                source,
            }
        })
    }

    /// Prepare `options.workers` I/O worker contexts with no listener: workers for sessions
    /// that only open outbound connections ([`WorkerCtx::connect`]), such as a client's or a
    /// load generator's. `local_addr` is the unspecified `0.0.0.0:0`; `service` is never
    /// called by the drivers (nothing is accepted) but sessions may use it.
    pub fn outbound_only(options: ServerOptions, service: Arc<dyn Service>) -> io::Result<Launch> {
        let none = ListenAddr::Inet(SocketAddr::from(([0, 0, 0, 0], 0)));
        Launch::with_listeners(none, Vec::new(), options, service)
    }

    /// Everything but binding: contexts, wakers, application workers.
    fn with_listeners(
        local_addr: ListenAddr,
        listeners: Vec<Listener>,
        options: ServerOptions,
        service: Arc<dyn Service>,
    ) -> io::Result<Launch> {
        let n = options.workers.max(1);
        let clock = Clock::new();
        let mut http = options.http.clone();
        http.date_origin_unix_nanos = Some(clock.unix_origin_nanos());
        let http = Arc::new(http);
        let shutdown = Shutdown::new();
        let allowed = if options.pin {
            affinity::allowed_cpus().unwrap_or_default()
        } else {
            Vec::new()
        };
        let metrics: Vec<_> = (0..n).map(|_| Arc::new(WorkerMetrics::default())).collect();
        let wakers: Vec<_> = (0..n)
            .map(|_| EventFd::new().map(Arc::new))
            .collect::<Result<_, _>>()?;
        for w in &wakers {
            shutdown.register(w.clone());
        }
        let mut reply_rx = Vec::new();
        let mut app = None;
        let mut jobs = Vec::new();
        if options.app_workers > 0 {
            let mut reply_tx = Vec::new();
            for w in &wakers {
                let (tx, rx) = crossbeam_channel::bounded(options.channel_capacity.max(1));
                reply_tx.push((tx, w.clone()));
                reply_rx.push(Some(rx));
            }
            let (senders, pool) = start_app_workers(
                options.app_workers,
                options.channel_capacity.max(1),
                service.clone(),
                options.max_buffered_body,
                reply_tx,
                metrics.clone(),
            );
            jobs = senders;
            app = Some(pool);
        } else {
            reply_rx.resize_with(n, || None);
        }
        let options = Arc::new(options);
        let workers = (0..n)
            .zip(reply_rx)
            .map(|(i, replies)| WorkerCtx {
                index: i,
                cpu: affinity::cpu_for_worker(&allowed, i),
                service: service.clone(),
                http: http.clone(),
                options: options.clone(),
                metrics: metrics[i].clone(),
                jobs: jobs.clone(),
                replies,
                waker: wakers[i].clone(),
                shutdown: shutdown.clone(),
                clock,
            })
            .collect();
        Ok(Launch {
            local_addr,
            listeners,
            workers,
            metrics,
            shutdown,
            app,
        })
    }
}

/// Running I/O workers (and application workers), joined by [`wait`](ServerHandle::wait).
pub struct ServerHandle {
    /// The driver actually running.
    pub driver: DriverKind,
    /// The bound address.
    pub local_addr: ListenAddr,
    /// Every worker's counters.
    pub metrics: Vec<Arc<WorkerMetrics>>,
    /// The stop flag: [`Shutdown::trigger`] starts a graceful shutdown.
    pub shutdown: Shutdown,
    threads: Vec<JoinHandle<()>>,
    app: Option<AppPool>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("driver", &self.driver)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl ServerHandle {
    /// Assemble a handle (drivers call this after spawning their threads).
    pub fn new(
        driver: DriverKind,
        local_addr: ListenAddr,
        metrics: Vec<Arc<WorkerMetrics>>,
        shutdown: Shutdown,
        threads: Vec<JoinHandle<()>>,
        app: Option<AppPool>,
    ) -> ServerHandle {
        ServerHandle {
            driver,
            local_addr,
            metrics,
            shutdown,
            threads,
            app,
        }
    }

    /// Wait for every I/O worker to finish (after a shutdown), then for the application
    /// workers; a Unix socket file is removed. Returns how many threads panicked.
    pub fn wait(self) -> usize {
        let mut bad = 0;
        for t in self.threads {
            bad += usize::from(t.join().is_err());
        }
        if let Some(app) = self.app {
            bad += app.join();
        }
        if let ListenAddr::Unix(path) = &self.local_addr {
            let _ = std::fs::remove_file(path);
        }
        bad
    }
}
