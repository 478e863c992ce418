//! # ferry-proxy: an HTTP reverse proxy / L7 load balancer, a Redis and a PostgreSQL pooling proxy
//!
//! Both run inline on Ferry's I/O workers (`ferry-epoll` or `ferry-uring`): every client
//! connection and every upstream connection is a session of the same worker, and the two
//! halves of an exchange talk through worker-local mail (`WorkerCtx::post`), with upstream
//! connections opened by the worker itself (`WorkerCtx::connect`). No threads and no shared
//! state on the data path: pools, balancers, breakers and retry budgets are per worker
//! (behind a mutex only that worker's thread takes); counters are relaxed atomics.
//!
//! - [`http`]: HTTP/1.1 with streaming bodies both ways, per-worker keep-alive pools
//!   (`ferry-pool`: connection limit per upstream, wait queue, idle timeout), round
//!   robin / least requests / consistent hashing ([`Balance`]), retries of idempotent
//!   requests within a retry budget, per-upstream circuit breakers (`ferry-reliability`'s
//!   `CircuitBreaker`, `RetryBudget` and `TraceParent`), `X-Forwarded-For`, `Via`, W3C
//!   `traceparent`, hop-by-hop fields removed (RFC 9110 §7.6.1), 502/503/504 with clear bodies.
//! - [`redis`]: many client connections pipelined over a few upstream connections per
//!   worker, replies matched in order; a subscribing client gets a dedicated upstream.
//! - [`postgres`]: a PgBouncer-class PostgreSQL pooling proxy: clients share a few server
//!   connections per worker, handed out per transaction (or per session), with proxy-side
//!   SCRAM authentication, cancel requests routed across workers, and session state kept
//!   from leaking between clients.
//! - [`health`]: active health checks and host-name resolution, off the I/O workers;
//!   [`metrics`]: Prometheus text on the admin listener (`/metrics`).
//!
//! ## Embedding
//!
//! ```no_run
//! use ferry_proxy::{start, ProxyConfig, ProxyOptions, Protocol};
//!
//! let upstreams: Vec<ferry_proxy::Upstream> =
//!     vec!["127.0.0.1:8081".parse().unwrap(), "backend.internal:8082".parse().unwrap()];
//! let mut opts = ProxyOptions::new("127.0.0.1:8080".parse().unwrap(), Protocol::Http, ProxyConfig::new(upstreams));
//! opts.admin = Some("127.0.0.1:9901".parse().unwrap()); // GET /metrics
//! let proxy = start(opts).unwrap();
//! println!("proxy on {} ({})", proxy.handle.local_addr, proxy.handle.driver);
//! // later: proxy.handle.shutdown.trigger(); proxy.wait();
//! ```
#![deny(missing_docs)]

pub mod access_log;
pub mod balance;
mod client_cert;
pub mod config;
pub mod health;
pub mod http;
pub mod limit;
pub mod metrics;
pub mod postgres;
pub mod redis;
pub mod reload;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

pub use access_log::{AccessFormat, AccessLog};
pub use balance::Balance;
pub use config::{
    tls_server_config, upstream_tls_config, AccessLogSpec, HealthConfig, Protocol, ProxyConfig,
    Upstream, UpstreamTls,
};
use ferry_driver::{
    DriverKind, Launch, ListenAddr, Request, Response, ServerHandle, ServerOptions, Service,
};
pub use ferry_reliability::{BreakerConfig, BreakerState};
pub use metrics::ProxyStats;

/// Everything [`start`] needs.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Where clients connect.
    pub listen: ListenAddr,
    /// Admin listener (`/metrics`, `/health`), if any.
    pub admin: Option<SocketAddr>,
    /// HTTP, Redis or PostgreSQL.
    pub protocol: Protocol,
    /// Event loop (`Auto` picks io_uring when it works, else epoll).
    pub driver: DriverKind,
    /// I/O workers, listener and HTTP server settings.
    pub server: ServerOptions,
    /// Upstreams and policies.
    pub config: ProxyConfig,
}

impl ProxyOptions {
    /// Defaults around the essentials.
    pub fn new(listen: ListenAddr, protocol: Protocol, config: ProxyConfig) -> ProxyOptions {
        ProxyOptions {
            listen,
            admin: None,
            protocol,
            driver: DriverKind::Auto,
            server: ServerOptions::default(),
            config,
        }
    }
}

/// Why a proxy did not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// Bad configuration (no upstreams, too many).
    Config(String),
    /// A listener could not be bound.
    Bind(ferry_driver::BindError),
    /// The driver or a thread could not start.
    Io(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(s) => f.write_str(s),
            StartError::Bind(e) => write!(f, "{e}"),
            StartError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    /// The proxy's I/O workers (trigger `handle.shutdown` to stop).
    pub handle: ServerHandle,
    /// The admin listener's server.
    pub admin: Option<ServerHandle>,
    /// The counters `/metrics` shows.
    pub stats: Arc<ProxyStats>,
    health: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    access: Option<Arc<AccessLog>>,
    /// The loaded configuration (reloads publish a new one).
    live: Arc<reload::Live>,
    /// The options the proxy started with (what a reload may not change).
    started: ProxyOptions,
}

impl Proxy {
    /// The admin listener's address.
    pub fn admin_addr(&self) -> Option<&ListenAddr> {
        self.admin.as_ref().map(|a| &a.local_addr)
    }

    /// The loaded configuration: its generation, and the `RELOAD` hook.
    pub fn live(&self) -> &Arc<reload::Live> {
        &self.live
    }

    /// Reload: replace the configuration with `new`'s, in place, or refuse and keep the
    /// running one (see [`reload::check`] for what may change). Counts the result in
    /// `ferry_proxy_config_reloads_total`; returns the new generation.
    pub fn reload(&self, new: ProxyOptions) -> Result<u64, reload::ReloadError> {
        self.reloader().reload(new)
    }

    /// A handle that reloads this proxy from another thread (a signal handler, the
    /// PostgreSQL console's `RELOAD`).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            live: self.live.clone(),
            stats: self.stats.clone(),
            started: Arc::new(self.started.clone()),
        }
    }

    /// Wait for the workers to finish (after `handle.shutdown.trigger()`), then stop the
    /// admin listener and the health checks. Returns how many threads panicked.
    pub fn wait(self) -> usize {
        let mut bad = self.handle.wait();
        if let Some(log) = &self.access {
            log.flush_all();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.admin {
            a.shutdown.trigger();
            bad += a.wait();
        }
        if let Some(h) = self.health {
            h.thread().unpark();
            bad += usize::from(h.join().is_err());
        }
        bad
    }
}

/// Reloads a running proxy ([`Proxy::reloader`]).
#[derive(Clone, Debug)]
pub struct Reloader {
    live: Arc<reload::Live>,
    stats: Arc<ProxyStats>,
    started: Arc<ProxyOptions>,
}

impl Reloader {
    /// See [`Proxy::reload`].
    pub fn reload(&self, mut new: ProxyOptions) -> Result<u64, reload::ReloadError> {
        let cur = self.live.snapshot();
        // Compare what was asked for, as at start.
        new.server.app_workers = 0;
        let r =
            reload::check(&self.started, &cur.cfg, &new).and_then(|()| self.live.apply(new.config));
        if r.is_err() {
            self.stats.reloads_error.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Count a reload that failed before [`Reloader::reload`] (an unreadable or invalid
    /// file) in `ferry_proxy_config_reloads_total{result="error"}`.
    pub fn count_error(&self) {
        self.stats.reloads_error.fetch_add(1, Ordering::Relaxed);
    }

    /// The loaded configuration.
    pub fn live(&self) -> &Arc<reload::Live> {
        &self.live
    }
}

struct Admin {
    stats: Arc<ProxyStats>,
    /// The proxy's workers' shutdown: once triggered, `/health` says the proxy is draining.
    shutdown: ferry_driver::Shutdown,
}

impl Service for Admin {
    fn call(&self, req: Request) -> Response {
        match req.path() {
            "/metrics" => Response::new(200)
                .header(
                    "content-type",
                    bytes::Bytes::from_static(b"text/plain; version=0.0.4"),
                )
                .body(ferry_driver::Body::Full(self.stats.render().into())),
            // A load balancer in front stops sending new connections (the listener is closed
            // too) while the requests in flight finish (as Envoy's `/ready`).
            "/health" if self.shutdown.is_triggered() => Response::text(503, "draining\n"),
            "/health" => Response::text(200, "ok\n"),
            _ => Response::text(404, "not found (try /metrics)\n"),
        }
    }
}

struct NoHttp;
impl Service for NoHttp {
    fn call(&self, _req: Request) -> Response {
        Response::text(500, "unused\n")
    }
}

fn run<S: ferry_driver::Session>(
    driver: DriverKind,
    launch: Launch,
    shared: Arc<S::Shared>,
) -> std::io::Result<ServerHandle> {
    match driver {
        DriverKind::Epoll => ferry_epoll::start_with::<S>(launch, shared),
        _ => ferry_uring::start_with::<S>(launch, shared),
    }
}

/// Run a relay proxy: with `tls` (any TLS option set), on a relay whose connections may
/// start TLS; else on one with the TLS tests compiled out of every driver call
/// (`Relay<D, U, false>`).
fn run_relay<D, U>(
    driver: DriverKind,
    launch: Launch,
    shared: Arc<D::Shared>,
    tls: bool,
) -> std::io::Result<ServerHandle>
where
    D: ferry_driver::relay::Downstream,
    U: ferry_driver::relay::Upstream<Shared = D::Shared, Mail = D::Mail>,
{
    use ferry_driver::relay::Relay;
    if tls {
        run::<Relay<D, U, true>>(driver, launch, shared)
    } else {
        run::<Relay<D, U, false>>(driver, launch, shared)
    }
}

/// Whether any TLS option is set: connections may start TLS (see [`run_relay`]). Every TLS
/// option of [`ProxyConfig`] belongs here.
fn uses_tls(cfg: &ProxyConfig) -> bool {
    cfg.tls.is_some() || cfg.upstream_tls.is_some()
}

/// Bind, start the I/O workers, the admin listener and the health checks.
pub fn start(opts: ProxyOptions) -> Result<Proxy, StartError> {
    let mut started = opts.clone();
    started.server.app_workers = 0;
    let cfg = opts.config;
    if cfg.upstreams.is_empty() {
        return Err(StartError::Config(
            "--upstream: at least one address".into(),
        ));
    }
    if cfg.upstreams.len() > 255 {
        return Err(StartError::Config(
            "--upstream: at most 255 addresses".into(),
        ));
    }
    let driver = match opts.driver {
        DriverKind::Auto | DriverKind::Uring if ferry_uring::probe().is_ok() => DriverKind::Uring,
        _ => DriverKind::Epoll,
    };
    let mut server = opts.server;
    server.app_workers = 0;
    let workers = server.workers.max(1);
    let proto_name = match opts.protocol {
        Protocol::Redis => "redis",
        Protocol::Postgres => "postgres",
        _ => "http",
    };
    let access = match &cfg.access_log {
        Some(_) if opts.protocol != Protocol::Http => {
            return Err(StartError::Config(
                "--access-log: only for --protocol http".into(),
            ))
        }
        Some(spec) => Some(Arc::new(
            AccessLog::open(&spec.path, spec.format, workers).map_err(|e| {
                StartError::Config(format!("--access-log {}: {e}", spec.path.display()))
            })?,
        )),
        None => None,
    };
    let stats = Arc::new(ProxyStats::new(proto_name, &cfg.upstreams, workers));
    let launch =
        Launch::prepare(opts.listen, server, Arc::new(NoHttp)).map_err(StartError::Bind)?;
    let admin = match opts.admin {
        Some(a) => {
            let aopts = ServerOptions {
                workers: 1,
                pin: false,
                ..ServerOptions::default()
            };
            let l = Launch::prepare(
                a,
                aopts,
                Arc::new(Admin {
                    stats: stats.clone(),
                    shutdown: launch.shutdown.clone(),
                }),
            )
            .map_err(StartError::Bind)?;
            Some(ferry_epoll::start(l).map_err(StartError::Io)?)
        }
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Names resolve once now (so the first requests can go), then on the health thread.
    for (u, up) in stats.upstreams.iter().zip(&cfg.upstreams) {
        if let Upstream::Name { .. } = up {
            let a = up.resolve();
            if a.is_none() {
                tracing::warn!("upstream {up} does not resolve (yet); it gets no requests");
            }
            u.set_resolved(a);
        }
    }
    let live = reload::Live::new(cfg.clone(), stats.clone(), workers);
    // Always running: a reload may add names to resolve or turn checks on.
    let health = Some(
        health::spawn(live.clone(), opts.protocol, stats.clone(), stop.clone())
            .map_err(StartError::Io)?,
    );
    let tls = uses_tls(&cfg);
    let handle = match opts.protocol {
        Protocol::Redis => {
            let shared = redis::RedisShared::new(cfg, workers, stats.clone(), live.clone());
            run_relay::<redis::RDown, redis::RUp>(driver, launch, shared, tls)
        }
        Protocol::Postgres => {
            let shared = postgres::PgShared::new(cfg, workers, stats.clone(), live.clone());
            shared.set_shutdown(launch.shutdown.clone());
            run_relay::<postgres::PgDown, postgres::PgUp>(driver, launch, shared, tls)
        }
        _ => {
            let shared =
                http::HttpShared::new(cfg, workers, stats.clone(), access.clone(), live.clone());
            run_relay::<http::Down, http::Up>(driver, launch, shared, tls)
        }
    }
    .map_err(StartError::Io)?;
    Ok(Proxy {
        handle,
        admin,
        stats,
        health,
        stop,
        access,
        live,
        started,
    })
}

/// The health checks `cfg` asks for (`None`: resolution only), with the protocol's
/// defaults: Redis probes authenticate as the proxy does, probes use the upstream TLS.
pub(crate) fn health_checks(cfg: &ProxyConfig, protocol: Protocol) -> Option<HealthConfig> {
    cfg.health
        .clone()
        .filter(|h| !h.interval.is_zero())
        .map(|mut h| {
            if protocol == Protocol::Redis && h.redis_auth.is_none() {
                h.redis_auth = cfg.redis_upstream_auth.clone();
            }
            if h.tls.is_none() {
                h.tls = cfg.upstream_tls.clone();
            }
            h.http2 |= protocol == Protocol::Http && cfg.upstream_http2;
            h
        })
}
