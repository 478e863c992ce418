//! Reloading the configuration in place (SIGHUP, `RELOAD` on the PostgreSQL console).
//!
//! A reload is all or nothing: the new [`ProxyOptions`] are checked against the running
//! proxy's ([`check`]: the listener, protocol, driver, workers and the other settings the
//! I/O workers were built with cannot change), then [`Live::apply`] publishes a new
//! [`Snapshot`] under a new generation. Nothing is half-applied: every check runs before the
//! first change.
//!
//! Workers never take a lock to read the configuration on the request path: each compares
//! its own generation with [`Live::generation`] (one atomic load) when it takes its
//! per-worker state, and only on a change rebuilds its balancer, breakers and pool settings
//! from the new snapshot (see `refresh` in `http`, `redis` and `postgres`).
//!
//! Upstreams live in slots ([`crate::metrics::UpstreamTable`]) that never move: an added
//! upstream gets a new slot (pools, breakers, metrics series, health checks), a removed one
//! is disabled (no new work; exchanges in flight finish; idle pooled connections close; its
//! series leave `/metrics`), and one listed again gets its old slot and counters back.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use crate::config::{Protocol, ProxyConfig, Upstream};
use crate::metrics::{unix_now, ProxyStats, MAX_UPSTREAM_SLOTS};
use crate::ProxyOptions;

/// One loaded configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// 1 at start, one more per reload applied.
    pub generation: u64,
    /// The settings.
    pub cfg: ProxyConfig,
    /// `cfg.upstreams[i]`'s slot.
    pub slots: Vec<usize>,
}

/// What the PostgreSQL console's `RELOAD` calls: re-read the file and reload (set by the
/// command line, which knows the file and the flags); the new generation or why not.
pub type ReloadHook = Box<dyn Fn() -> Result<u64, String> + Send + Sync>;

/// The loaded configuration, shared by the workers, the health checks and the reloader.
pub struct Live {
    generation: AtomicU64,
    snapshot: RwLock<Arc<Snapshot>>,
    /// One reload at a time.
    writer: Mutex<()>,
    stats: Arc<ProxyStats>,
    workers: usize,
    hook: OnceLock<ReloadHook>,
    /// Run with each new snapshot (the protocols' shared settings).
    listeners: Mutex<Vec<Listener>>,
    /// The health checker, woken by a reload.
    health: OnceLock<std::thread::Thread>,
}

/// What [`Live::listen`] registers.
type Listener = Box<dyn Fn(&Snapshot) + Send + Sync>;

/// The settings read on the request path outside the per-worker state, as relaxed atomics
/// (a load as cheap as a field's), stored again by each reload.
#[derive(Debug)]
pub(crate) struct Tunables {
    retries: AtomicU32,
    connect_timeout: AtomicU64,
    response_timeout: AtomicU64,
    tunnel_idle_timeout: AtomicU64,
    idle_timeout: AtomicU64,
    pool_wait_timeout: AtomicU64,
    pool_size: AtomicU32,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Tunables {
    /// `cfg`'s values.
    pub(crate) fn new(cfg: &ProxyConfig) -> Tunables {
        let t = Tunables {
            retries: AtomicU32::new(0),
            connect_timeout: AtomicU64::new(0),
            response_timeout: AtomicU64::new(0),
            tunnel_idle_timeout: AtomicU64::new(0),
            idle_timeout: AtomicU64::new(0),
            pool_wait_timeout: AtomicU64::new(0),
            pool_size: AtomicU32::new(0),
        };
        t.store(cfg);
        t
    }

    /// Take `cfg`'s values.
    pub(crate) fn store(&self, cfg: &ProxyConfig) {
        let r = Ordering::Relaxed;
        self.retries.store(cfg.retries, r);
        self.connect_timeout.store(nanos(cfg.connect_timeout), r);
        self.response_timeout.store(nanos(cfg.response_timeout), r);
        self.tunnel_idle_timeout
            .store(nanos(cfg.tunnel_idle_timeout), r);
        self.idle_timeout.store(nanos(cfg.idle_timeout), r);
        self.pool_wait_timeout
            .store(nanos(cfg.pool_wait_timeout), r);
        let size = u32::try_from(cfg.postgres.pool_size).unwrap_or(u32::MAX);
        self.pool_size.store(size, r);
    }

    /// `idle_timeout`.
    #[inline]
    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_nanos(self.idle_timeout.load(Ordering::Relaxed))
    }

    /// `pool_wait_timeout`.
    #[inline]
    pub(crate) fn pool_wait_timeout(&self) -> Duration {
        Duration::from_nanos(self.pool_wait_timeout.load(Ordering::Relaxed))
    }

    /// Postgres `pool_size`.
    #[inline]
    pub(crate) fn pool_size(&self) -> u32 {
        self.pool_size.load(Ordering::Relaxed)
    }

    /// `retries`.
    #[inline]
    pub(crate) fn retries(&self) -> u32 {
        self.retries.load(Ordering::Relaxed)
    }

    /// `connect_timeout`.
    #[inline]
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_nanos(self.connect_timeout.load(Ordering::Relaxed))
    }

    /// `response_timeout`.
    #[inline]
    pub(crate) fn response_timeout(&self) -> Duration {
        Duration::from_nanos(self.response_timeout.load(Ordering::Relaxed))
    }

    /// `tunnel_idle_timeout`.
    #[inline]
    pub(crate) fn tunnel_idle_timeout(&self) -> Duration {
        Duration::from_nanos(self.tunnel_idle_timeout.load(Ordering::Relaxed))
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("generation", &self.generation())
            .finish()
    }
}

/// Why a reload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// A setting that needs a restart changed (the key, as in `--config`, and why).
    Unchangeable {
        /// The `--config` key.
        key: &'static str,
    },
    /// The new settings are not valid.
    Invalid(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Unchangeable { key } => write!(
                f,
                "`{key}` cannot change without a restart (kept the running configuration)"
            ),
            ReloadError::Invalid(s) => write!(f, "{s} (kept the running configuration)"),
        }
    }
}

impl std::error::Error for ReloadError {}

impl Live {
    /// The configuration at start: generation 1, upstream `i` in slot `i` (`stats` was built
    /// for `cfg.upstreams`).
    pub(crate) fn new(cfg: ProxyConfig, stats: Arc<ProxyStats>, workers: usize) -> Arc<Live> {
        let slots = (0..cfg.upstreams.len()).collect();
        Arc::new(Live {
            generation: AtomicU64::new(1),
            snapshot: RwLock::new(Arc::new(Snapshot {
                generation: 1,
                cfg,
                slots,
            })),
            writer: Mutex::new(()),
            stats,
            workers: workers.max(1),
            hook: OnceLock::new(),
            listeners: Mutex::new(Vec::new()),
            health: OnceLock::new(),
        })
    }

    /// The health checker's thread (woken by each reload).
    pub(crate) fn set_health_thread(&self, t: std::thread::Thread) {
        let _ = self.health.set(t);
    }

    /// Run `f` with every snapshot a reload publishes (right after, on the reloader's
    /// thread): for settings shared by all workers.
    pub(crate) fn listen(&self, f: Listener) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    /// The loaded configuration's generation (what workers compare theirs with).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The loaded configuration.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Set what `RELOAD` on the PostgreSQL console runs (once; later calls are ignored).
    pub fn set_hook(&self, hook: ReloadHook) {
        let _ = self.hook.set(hook);
    }

    /// Run the reload hook (`RELOAD`); `None` when there is none (no `--config`).
    pub fn run_hook(&self) -> Option<Result<u64, String>> {
        self.hook.get().map(|h| h())
    }

    /// Publish `cfg` as the next generation: slots for new upstreams, the dropped ones
    /// disabled. Checks first, changes after: an error changes nothing.
    pub(crate) fn apply(&self, cfg: ProxyConfig) -> Result<u64, ReloadError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        validate_upstreams(&cfg.upstreams)?;
        let table = &self.stats.upstreams;
        let new = cfg
            .upstreams
            .iter()
            .filter(|u| table.slot_of(u).is_none())
            .count();
        if table.len() + new > MAX_UPSTREAM_SLOTS {
            return Err(ReloadError::Invalid(format!(
                "upstream: at most {MAX_UPSTREAM_SLOTS} distinct upstreams over the proxy's life \
                 ({} used, {new} new); restart to start over",
                table.len()
            )));
        }
        let mut slots = Vec::with_capacity(cfg.upstreams.len());
        for up in &cfg.upstreams {
            let slot = match table.slot_of(up) {
                Some(s) => s,
                None => {
                    let Some(s) = table.push(up, self.workers) else {
                        return Err(ReloadError::Invalid("upstream: no slot left".into()));
                    };
                    if let Upstream::Name { .. } = up {
                        // Resolved once now (as at start), then by the health thread.
                        table[s].set_resolved(up.resolve());
                    }
                    s
                }
            };
            slots.push(slot);
        }
        // Listed ones on first, then the new generation, then dropped ones off: a worker
        // still on the old configuration always has an upstream to pick.
        let log = |u: &crate::metrics::UpstreamStats, what: &str| {
            tracing::info!("ferry: reload: upstream {} {what}", u.addr);
        };
        for &i in &slots {
            if !table[i].enabled.swap(true, Ordering::Relaxed) {
                log(&table[i], "added");
            }
        }
        let mut snap = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        let generation = snap.generation + 1;
        let next = Arc::new(Snapshot {
            generation,
            cfg,
            slots,
        });
        *snap = next.clone();
        drop(snap);
        self.generation.store(generation, Ordering::Release);
        for (i, u) in table.iter().enumerate() {
            if !next.slots.contains(&i) && u.enabled.swap(false, Ordering::Relaxed) {
                log(u, "removed");
            }
        }
        for f in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            f(&next);
        }
        self.stats
            .config_generation
            .store(generation, Ordering::Relaxed);
        self.stats
            .config_loaded_at
            .store(unix_now(), Ordering::Relaxed);
        self.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.health.get() {
            t.unpark();
        }
        Ok(generation)
    }
}

/// `(slot, name)` of each upstream `snap` lists (seeds of a balancer's hash ring).
pub(crate) fn slot_names(snap: &Snapshot) -> Vec<(usize, String)> {
    snap.slots
        .iter()
        .zip(&snap.cfg.upstreams)
        .map(|(&i, u)| (i, u.to_string()))
        .collect()
}

/// The upstream list's own rules (as at start): one at least, each once.
fn validate_upstreams(ups: &[Upstream]) -> Result<(), ReloadError> {
    if ups.is_empty() {
        return Err(ReloadError::Invalid(
            "upstream: at least one address".into(),
        ));
    }
    if let Some(dup) = ups
        .iter()
        .enumerate()
        .find_map(|(i, u)| ups[..i].contains(u).then_some(u))
    {
        return Err(ReloadError::Invalid(format!(
            "upstream: `{dup}` is listed twice (list each upstream once)"
        )));
    }
    Ok(())
}

/// Whether `new` may replace the running options `old` (whose configuration is `cur`): the
/// first setting that cannot change in place, by its `--config` key. What may change:
/// `upstream`, `balance`, the timeouts (`connect_timeout`, `response_timeout`,
/// `idle_timeout`, `tunnel_idle_timeout`, `pool_wait_timeout`), `retries`, the breaker
/// (`breaker_failures`, `breaker_open`), `max_upstream_connections`, `pool_size`, health
/// checks (`health_interval`, `health_path`) and the listener's TLS certificate and key
/// (`tls_cert`, `tls_key`, `tls_client_ca`, when TLS was on already).
pub fn check(old: &ProxyOptions, cur: &ProxyConfig, new: &ProxyOptions) -> Result<(), ReloadError> {
    let n = &new.config;
    let refuse = |key: &'static str| Err(ReloadError::Unchangeable { key });
    if old.listen != new.listen {
        return refuse("listen");
    }
    if old.protocol != new.protocol {
        return refuse("protocol");
    }
    if old.admin != new.admin {
        return refuse("admin");
    }
    if old.driver != new.driver {
        return refuse("driver");
    }
    let (os, ns) = (&old.server, &new.server);
    if os.workers != ns.workers {
        return refuse("workers");
    }
    if os.drain_timeout != ns.drain_timeout {
        return refuse("drain_timeout");
    }
    if os.busy_poll != ns.busy_poll {
        return refuse("busy_poll");
    }
    if os.http.max_body != ns.http.max_body {
        return refuse("max_body");
    }
    if os.http.max_head_bytes != ns.http.max_head_bytes {
        return refuse("max_head_bytes");
    }
    if os.http.max_headers != ns.http.max_headers {
        return refuse("max_headers");
    }
    if os.http.max_request_line != ns.http.max_request_line {
        return refuse("max_request_line");
    }
    if cur.http2_max_streams != n.http2_max_streams {
        return refuse("http2_max_streams");
    }
    if cur.http2_max_header_list != n.http2_max_header_list {
        return refuse("http2_max_header_list");
    }
    if cur.tls.is_some() != n.tls.is_some() {
        return refuse("tls_cert");
    }
    if cur.upstream_tls != n.upstream_tls {
        return refuse("upstream_tls");
    }
    if cur.access_log != n.access_log {
        return refuse("access_log");
    }
    if cur.rate_limit.is_some() != n.rate_limit.is_some() {
        // The rate may change; turning limiting on or off may not (a request pays for the
        // limiter only when it was there at start).
        return refuse("rate_limit");
    }
    if cur.pipeline_depth != n.pipeline_depth {
        return refuse("pipeline_depth");
    }
    if cur.redis_connections != n.redis_connections {
        return refuse("redis_connections");
    }
    if cur.redis_upstream_auth != n.redis_upstream_auth
        || cur.redis_client_auth != n.redis_client_auth
    {
        return refuse("upstream_user");
    }
    let (op, np) = (&cur.postgres, &n.postgres);
    if op.pool_mode != np.pool_mode {
        return refuse("pool_mode");
    }
    if op.max_message_bytes != np.max_message_bytes {
        return refuse("max_message_bytes");
    }
    if op.max_prepared_statements != np.max_prepared_statements {
        return refuse("max_prepared_statements");
    }
    if op.upstream_user != np.upstream_user
        || op.upstream_password != np.upstream_password
        || op.client_user != np.client_user
        || op.client_password != np.client_password
    {
        return refuse("upstream_user");
    }
    if op.response_timeout != np.response_timeout {
        return refuse("response_timeout");
    }
    let client_ca = |t: &Option<ferry_tls::ServerConfig>| {
        t.as_ref()
            .is_some_and(ferry_tls::ServerConfig::requires_client_certs)
    };
    if client_ca(&cur.tls) != client_ca(&n.tls) {
        return refuse("tls_client_ca");
    }
    if new.protocol == Protocol::Redis
        && cur.upstreams != n.upstreams
        && (cur.upstreams.len() > 1 || n.upstreams.len() > 1)
    {
        // Keys, SCAN cursors and commands sent to every server map onto the list.
        return Err(ReloadError::Invalid(
            "upstream: a redis proxy over several upstreams keeps its list until a restart \
             (one upstream may be replaced by another)"
                .into(),
        ));
    }
    if new.protocol != Protocol::Http && cur.balance != n.balance {
        return refuse("balance");
    }
    validate_upstreams(&n.upstreams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn opts(ups: &[&str]) -> ProxyOptions {
        let ups: Vec<Upstream> = ups.iter().map(|u| u.parse().unwrap()).collect();
        ProxyOptions::new(
            "127.0.0.1:7000".parse().unwrap(),
            Protocol::Http,
            ProxyConfig::new(ups),
        )
    }

    #[test]
    fn changeable_settings_pass_the_check() {
        let old = opts(&["127.0.0.1:1", "127.0.0.1:2"]);
        let mut new = opts(&["127.0.0.1:3"]);
        new.config.balance = crate::Balance::LeastRequests;
        new.config.retries = 0;
        new.config.connect_timeout = Duration::from_millis(5);
        new.config.response_timeout = Duration::from_secs(1);
        new.config.max_connections_per_upstream = 3;
        new.config.breaker.consecutive_failures = None;
        new.config.health = None;
        new.config.trusted_proxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(check(&old, &old.config, &new), Ok(()));
        // A rate limit's rate may change (not turned on or off: the other test).
        let mut limited = opts(&["127.0.0.1:1"]);
        limited.config.rate_limit = Some(ferry_reliability::Quota::new(1, Duration::from_secs(1)));
        let mut faster = opts(&["127.0.0.1:1"]);
        faster.config.rate_limit =
            Some(ferry_reliability::Quota::new(50, Duration::from_millis(1)));
        assert_eq!(check(&limited, &limited.config, &faster), Ok(()));
    }

    #[test]
    fn unchangeable_settings_are_refused_by_key() {
        let old = opts(&["127.0.0.1:1"]);
        type Change = Box<dyn Fn(&mut ProxyOptions)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "listen",
                Box::new(|o| o.listen = "127.0.0.1:7001".parse().unwrap()),
            ),
            ("protocol", Box::new(|o| o.protocol = Protocol::Redis)),
            (
                "admin",
                Box::new(|o| o.admin = Some("127.0.0.1:9".parse().unwrap())),
            ),
            (
                "driver",
                Box::new(|o| o.driver = ferry_driver::DriverKind::Epoll),
            ),
            ("workers", Box::new(|o| o.server.workers += 1)),
            ("max_body", Box::new(|o| o.server.http.max_body = 1)),
            ("pipeline_depth", Box::new(|o| o.config.pipeline_depth = 1)),
            (
                "rate_limit",
                Box::new(|o| {
                    o.config.rate_limit =
                        Some(ferry_reliability::Quota::new(1, Duration::from_secs(1)))
                }),
            ),
        ];
        for (key, change) in cases {
            let mut new = opts(&["127.0.0.1:1"]);
            change(&mut new);
            let e = check(&old, &old.config, &new).unwrap_err();
            assert_eq!(e, ReloadError::Unchangeable { key }, "{key}");
            assert!(e.to_string().contains(&format!("`{key}`")), "{e}");
        }
    }

    #[test]
    fn bad_upstream_lists_are_refused() {
        let old = opts(&["127.0.0.1:1"]);
        let e = check(&old, &old.config, &opts(&[])).unwrap_err();
        assert!(e.to_string().contains("at least one"), "{e}");
        let e = check(&old, &old.config, &opts(&["127.0.0.1:2", "127.0.0.1:2"])).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
    }

    #[test]
    fn apply_keeps_slots_and_disables_the_dropped() {
        let start = opts(&["127.0.0.1:1", "127.0.0.1:2"]).config;
        let stats = Arc::new(ProxyStats::new("http", &start.upstreams, 2));
        let live = Live::new(start, stats.clone(), 2);
        assert_eq!(live.generation(), 1);
        let g = live
            .apply(opts(&["127.0.0.1:2", "127.0.0.1:3"]).config)
            .unwrap();
        assert_eq!(g, 2);
        assert_eq!(live.generation(), 2);
        let snap = live.snapshot();
        assert_eq!(snap.slots, vec![1, 2], "2 keeps its slot, 3 gets a new one");
        let on: Vec<_> = stats.upstreams.enabled().map(|u| u.addr.clone()).collect();
        assert_eq!(on, ["127.0.0.1:2", "127.0.0.1:3"]);
        assert!(!stats.upstreams[0].usable());
        // Listed again: its old slot.
        live.apply(opts(&["127.0.0.1:1"]).config).unwrap();
        assert_eq!(live.snapshot().slots, vec![0]);
        assert_eq!(stats.upstreams.len(), 3);
        assert_eq!(stats.config_generation.load(Ordering::Relaxed), 3);
        assert_eq!(stats.reloads_ok.load(Ordering::Relaxed), 2);
        let text = stats.render();
        assert!(text.contains("upstream=\"127.0.0.1:1\""), "{text}");
        assert!(!text.contains("upstream=\"127.0.0.1:3\""), "{text}");
        assert!(text.contains("ferry_proxy_config_generation{protocol=\"http\"} 3"));
        assert!(
            text.contains("ferry_proxy_config_reloads_total{protocol=\"http\",result=\"ok\"} 2")
        );
    }

    #[test]
    fn apply_refuses_past_the_slot_limit_without_a_change() {
        let start = opts(&["127.0.0.1:1"]).config;
        let stats = Arc::new(ProxyStats::new("http", &start.upstreams, 1));
        let live = Live::new(start, stats.clone(), 1);
        let many: Vec<String> = (2..=300).map(|p| format!("127.0.0.1:{p}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = live.apply(opts(&many).config).unwrap_err();
        assert!(e.to_string().contains("at most 255"), "{e}");
        assert_eq!(live.generation(), 1);
        assert_eq!(stats.upstreams.len(), 1);
        assert!(stats.upstreams[0].usable());
    }
}
