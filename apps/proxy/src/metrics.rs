//! Counters every worker updates (relaxed atomics) and their Prometheus text form.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::Mutex;

use crate::config::Upstream;

/// One upstream's counters.
#[derive(Debug)]
pub struct UpstreamStats {
    /// `IP:PORT` or `HOST:PORT`, as configured.
    pub addr: String,
    /// The upstream itself (its slot's for the proxy's life).
    pub upstream: Upstream,
    /// Whether the loaded configuration lists it: a reload that drops it clears this (no new
    /// work goes there, its series leave `/metrics`), one that lists it again sets it.
    pub enabled: AtomicBool,
    /// The address connections go to (`None`: a name that does not resolve).
    resolved: Mutex<Option<SocketAddr>>,
    /// Whether `resolved` holds an address (read on every pick without the lock).
    pub has_addr: AtomicBool,
    /// Requests (HTTP) or commands (Redis) sent.
    pub requests: AtomicU64,
    /// Responses by class: 1xx..5xx (HTTP).
    pub responses: [AtomicU64; 5],
    /// Connect failures, resets, timeouts.
    pub failures: AtomicU64,
    /// Retries sent to this upstream.
    pub retries: AtomicU64,
    /// TCP connects started.
    pub connects: AtomicU64,
    /// Open connections (all workers).
    pub open: AtomicI64,
    /// Requests in flight (all workers).
    pub active: AtomicI64,
    /// Breaker state per worker: 0 closed, 1 open, 2 half-open.
    pub breaker: Vec<AtomicU8>,
    /// Times a breaker opened (all workers).
    pub breaker_opened: AtomicU64,
    /// Active health check verdict.
    pub healthy: AtomicBool,
    /// HTTP: from a request's head to the end of the upstream's response, for exchanges the
    /// upstream answered.
    pub duration: DurationHistogram,
}

/// Upper bounds (seconds) of [`DurationHistogram`]'s buckets, Prometheus's `le` (the last,
/// `+Inf`, is implied).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`DURATION_BUCKETS`] in nanoseconds.
const BUCKET_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A Prometheus histogram of durations with fixed buckets ([`DURATION_BUCKETS`]), in relaxed
/// atomics every worker adds to: two increments per sample, no lock, no allocation.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Samples per bucket (not cumulative), the last for `+Inf`.
    buckets: [AtomicU64; 15],
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// Records one sample of `nanos` nanoseconds.
    #[inline]
    pub fn record(&self, nanos: u64) {
        let i = BUCKET_NANOS.iter().take_while(|&&b| nanos > b).count();
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// `name_bucket`, `name_sum` and `name_count` lines with `labels` (`k="v",…`).
    fn render(&self, s: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cum += b.load(Relaxed);
            match DURATION_BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(s, "{name}_bucket{{{labels},le=\"{le}\"}} {cum}");
                }
                None => {
                    let _ = writeln!(s, "{name}_bucket{{{labels},le=\"+Inf\"}} {cum}");
                }
            }
        }
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(s, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(s, "{name}_count{{{labels}}} {cum}");
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Most upstream slots over a proxy's life (the balancers' `Tried` sets hold 255 indices).
pub const MAX_UPSTREAM_SLOTS: usize = 255;

/// The upstreams' counters by slot. An upstream gets a slot the first time a configuration
/// lists it and keeps it for the proxy's life: a slot index is what pools, balancers,
/// breakers and exchanges in flight hold, so a reload never moves one (an upstream dropped
/// and listed again gets its slot and counters back). Slots are only ever added, by the
/// configuration's writer (start, or a reload under its lock); workers read them without
/// a lock.
pub struct UpstreamTable {
    /// Null until given out; then a `Box::into_raw` pointer, never changed or freed before
    /// the table drops (a lookup is a load and a null test: the request path reads it).
    slots: Box<[AtomicPtr<UpstreamStats>]>,
    len: AtomicUsize,
}

impl Drop for UpstreamTable {
    fn drop(&mut self) {
        for s in self.slots.iter_mut() {
            let p = std::mem::replace(s.get_mut(), std::ptr::null_mut());
            if !p.is_null() {
                // SAFETY: `p` came from `Box::into_raw` in `push` and is dropped only here,
                // once (the slot is nulled), with no reference left (`&mut self`).
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

impl std::fmt::Debug for UpstreamTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl UpstreamTable {
    fn new() -> UpstreamTable {
        UpstreamTable {
            slots: (0..MAX_UPSTREAM_SLOTS)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            len: AtomicUsize::new(0),
        }
    }

    /// Slots given out so far (enabled or not): every upstream index is below it.
    #[inline]
    pub fn len(&self) -> usize {
        self.len.load(Acquire)
    }

    /// No slot given out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slot `i`'s counters.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&UpstreamStats> {
        let p = self.slots.get(i)?.load(Acquire);
        // SAFETY: non-null, `p` is a `Box::into_raw` pointer published with `Release` in
        // `push` (the stats fully written before), never changed nor freed while `self` is
        // borrowed (only `Drop` frees it); `UpstreamStats` is `Sync` (atomics and a mutex).
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// Every slot's counters, in slot order (dropped upstreams too).
    pub fn iter(&self) -> impl Iterator<Item = &UpstreamStats> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The upstreams the loaded configuration lists, in slot order.
    pub fn enabled(&self) -> impl Iterator<Item = &UpstreamStats> + '_ {
        self.iter().filter(|u| u.enabled.load(Relaxed))
    }

    /// The slot of `up`, if it has one.
    pub fn slot_of(&self, up: &Upstream) -> Option<usize> {
        (0..self.len()).find(|&i| self.get(i).is_some_and(|u| u.upstream == *up))
    }

    /// A new slot for `up` (not enabled yet); `None` when all are taken. One writer at a
    /// time (the start, or a reload under its lock).
    pub(crate) fn push(&self, up: &Upstream, workers: usize) -> Option<usize> {
        let i = self.len.load(Relaxed);
        let slot = self.slots.get(i)?;
        if !slot.load(Acquire).is_null() {
            return None;
        }
        let p = Box::into_raw(Box::new(UpstreamStats::new(up, workers)));
        slot.store(p, Release);
        self.len.store(i + 1, Release);
        Some(i)
    }
}

impl std::ops::Index<usize> for UpstreamTable {
    type Output = UpstreamStats;
    /// Slot `i`: an index a configuration handed out (below [`UpstreamTable::len`]).
    #[inline]
    fn index(&self, i: usize) -> &UpstreamStats {
        match self.get(i) {
            Some(u) => u,
            None => panic!("upstream slot {i} was never given out"),
        }
    }
}

/// The whole proxy's counters.
#[derive(Debug)]
pub struct ProxyStats {
    /// Protocol label.
    pub protocol: &'static str,
    /// Per upstream slot.
    pub upstreams: UpstreamTable,
    /// Configuration reloads applied (`ferry_proxy_config_reloads_total{result="ok"}`).
    pub reloads_ok: AtomicU64,
    /// Configuration reloads refused or failed (`result="error"`).
    pub reloads_error: AtomicU64,
    /// The loaded configuration's generation: 1 at start, one more per reload applied.
    pub config_generation: AtomicU64,
    /// When the loaded configuration was loaded, Unix seconds.
    pub config_loaded_at: AtomicU64,
    /// Downstream requests (HTTP) or commands (Redis) received.
    pub requests: AtomicU64,
    /// Answers the proxy made itself: 502, 503, 504.
    pub answered_502: AtomicU64,
    /// See `answered_502`.
    pub answered_503: AtomicU64,
    /// See `answered_502`.
    pub answered_504: AtomicU64,
    /// Requests refused with `429` (over `--rate-limit`).
    pub answered_429: AtomicU64,
    /// Downstream connections open.
    pub downstream_open: AtomicI64,
    /// Protocol switches relayed (HTTP `101` to an `Upgrade` request, `2xx` to CONNECT).
    pub upgrades: AtomicU64,
    /// HTTP exchanges abandoned because their client left (reset, EOF) before the response
    /// ended: their upstream connections were closed (nginx's 499).
    pub client_aborts: AtomicU64,
    /// Client connections that spoke HTTP/2 (h2c with prior knowledge, or ALPN `h2`).
    pub h2_connections: AtomicU64,
    /// Per worker, the keep-alive pool's figures (`ferry-pool`'s metrics): active, idle,
    /// connecting, waiting, created, closed, failed, timed out.
    pub pool: Vec<[AtomicU64; 8]>,
    /// Per worker, the keep-alive pool's checkout wait times (published with `pool`).
    pool_wait: Vec<Mutex<ferry_pool::WaitHistogram>>,
}

const POOL_NAMES: [(&str, &str, &str); 8] = [
    (
        "ferry_proxy_pool_active_connections",
        "gauge",
        "Upstream connections carrying a request, per worker.",
    ),
    (
        "ferry_proxy_pool_idle_connections",
        "gauge",
        "Idle pooled upstream connections, per worker.",
    ),
    (
        "ferry_proxy_pool_connecting",
        "gauge",
        "Upstream connects in progress, per worker.",
    ),
    (
        "ferry_proxy_pool_waiting_requests",
        "gauge",
        "Requests waiting for an upstream connection, per worker.",
    ),
    (
        "ferry_proxy_pool_created_total",
        "counter",
        "Upstream connections the pool opened.",
    ),
    (
        "ferry_proxy_pool_closed_total",
        "counter",
        "Upstream connections the pool closed.",
    ),
    (
        "ferry_proxy_pool_failed_total",
        "counter",
        "Upstream connects that failed.",
    ),
    (
        "ferry_proxy_pool_wait_timeouts_total",
        "counter",
        "Requests that waited too long for a connection (503).",
    ),
];

/// A family's `# HELP` and `# TYPE` lines (Prometheus text format 0.0.4).
fn family(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
}

impl UpstreamStats {
    /// Fresh counters for `a`, not enabled yet.
    fn new(a: &Upstream, workers: usize) -> UpstreamStats {
        UpstreamStats {
            addr: a.to_string(),
            upstream: a.clone(),
            enabled: AtomicBool::new(false),
            resolved: Mutex::new(match a {
                Upstream::Addr(x) => Some(*x),
                _ => None,
            }),
            has_addr: AtomicBool::new(matches!(a, Upstream::Addr(_))),
            requests: AtomicU64::new(0),
            responses: Default::default(),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            open: AtomicI64::new(0),
            active: AtomicI64::new(0),
            breaker: (0..workers).map(|_| AtomicU8::new(0)).collect(),
            breaker_opened: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            duration: DurationHistogram::default(),
        }
    }

    /// Where to connect now.
    pub fn current(&self) -> Option<SocketAddr> {
        *self.resolved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A (re-)resolution result.
    pub fn set_resolved(&self, a: Option<SocketAddr>) {
        let mut r = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if *r != a {
            match a {
                Some(x) => tracing::info!("upstream {} resolves to {x}", self.addr),
                None => tracing::warn!("upstream {} does not resolve", self.addr),
            }
        }
        *r = a;
        self.has_addr.store(a.is_some(), Relaxed);
    }

    /// Whether requests may go here: it resolves and its health checks pass.
    pub fn usable(&self) -> bool {
        self.has_addr.load(Relaxed) && self.healthy.load(Relaxed) && self.enabled.load(Relaxed)
    }
}

impl ProxyStats {
    /// Counters for these upstreams and `workers` I/O workers.
    pub fn new(protocol: &'static str, upstreams: &[Upstream], workers: usize) -> ProxyStats {
        let table = UpstreamTable::new();
        for u in upstreams.iter().take(MAX_UPSTREAM_SLOTS) {
            if let Some(i) = table.push(u, workers) {
                table[i].enabled.store(true, Relaxed);
            }
        }
        ProxyStats {
            protocol,
            upstreams: table,
            reloads_ok: AtomicU64::new(0),
            reloads_error: AtomicU64::new(0),
            config_generation: AtomicU64::new(1),
            config_loaded_at: AtomicU64::new(unix_now()),
            requests: AtomicU64::new(0),
            answered_502: AtomicU64::new(0),
            answered_503: AtomicU64::new(0),
            answered_504: AtomicU64::new(0),
            answered_429: AtomicU64::new(0),
            downstream_open: AtomicI64::new(0),
            upgrades: AtomicU64::new(0),
            client_aborts: AtomicU64::new(0),
            h2_connections: AtomicU64::new(0),
            pool: (0..workers).map(|_| Default::default()).collect(),
            pool_wait: (0..workers).map(|_| Default::default()).collect(),
        }
    }

    /// Publish worker `w`'s pool figures.
    pub fn publish_pool(&self, w: usize, m: &ferry_pool::Metrics) {
        if let Some(p) = self.pool.get(w) {
            let v = [
                m.active as u64,
                m.idle as u64,
                m.connecting as u64,
                m.waiting as u64,
                m.created,
                m.closed,
                m.failed,
                m.timed_out,
            ];
            for (a, x) in p.iter().zip(v) {
                a.store(x, Relaxed);
            }
        }
        if let Some(h) = self.pool_wait.get(w) {
            h.lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone_from(&m.wait_time);
        }
    }

    /// `ferry_proxy_pool_wait_seconds`: every worker's checkout waits, merged, in the
    /// pool's power-of-two buckets from 1 µs (2^10 ns) to 34 s (2^35 ns).
    fn render_pool_wait(&self, s: &mut String) {
        let name = "ferry_proxy_pool_wait_seconds";
        family(
            s,
            name,
            "histogram",
            "Time from asking the keep-alive pool for an upstream connection to holding one (0 for an idle hit).",
        );
        let mut all = ferry_pool::WaitHistogram::default();
        for h in &self.pool_wait {
            all.merge(&h.lock().unwrap_or_else(|p| p.into_inner()));
        }
        let p = self.protocol;
        let mut samples = all.buckets().peekable();
        let mut cum = 0;
        for k in 10..=35u32 {
            // Pool bucket upper bounds are 2^i - 1 ns: those below 2^k ns are `le` 2^k ns.
            while let Some((_, n)) = samples.next_if(|&(upper, _)| upper < 1u64 << k) {
                cum += n;
            }
            let le = (1u64 << k) as f64 / 1e9;
            let _ = writeln!(s, "{name}_bucket{{protocol=\"{p}\",le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(
            s,
            "{name}_bucket{{protocol=\"{p}\",le=\"+Inf\"}} {}",
            all.count()
        );
        let _ = writeln!(
            s,
            "{name}_sum{{protocol=\"{p}\"}} {}",
            all.sum().as_secs_f64()
        );
        let _ = writeln!(s, "{name}_count{{protocol=\"{p}\"}} {}", all.count());
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        let p = self.protocol;
        family(
            &mut s,
            "ferry_proxy_requests_total",
            "counter",
            "Requests (HTTP), commands (Redis) or queries and syncs (Postgres) received from clients.",
        );
        let _ = writeln!(
            s,
            "ferry_proxy_requests_total{{protocol=\"{p}\"}} {}",
            self.requests.load(Relaxed)
        );
        family(
            &mut s,
            "ferry_proxy_local_responses_total",
            "counter",
            "Error responses the proxy made itself, by status code.",
        );
        for (code, c) in [
            (429, &self.answered_429),
            (502, &self.answered_502),
            (503, &self.answered_503),
            (504, &self.answered_504),
        ] {
            let _ = writeln!(
                s,
                "ferry_proxy_local_responses_total{{protocol=\"{p}\",code=\"{code}\"}} {}",
                c.load(Relaxed)
            );
        }
        family(
            &mut s,
            "ferry_proxy_upgrades_total",
            "counter",
            "Protocol switches relayed (101 to an Upgrade request, 2xx to CONNECT).",
        );
        let _ = writeln!(
            s,
            "ferry_proxy_upgrades_total{{protocol=\"{p}\"}} {}",
            self.upgrades.load(Relaxed)
        );
        family(
            &mut s,
            "ferry_proxy_client_aborts_total",
            "counter",
            "HTTP exchanges aborted because their client left before the response ended (499).",
        );
        let _ = writeln!(
            s,
            "ferry_proxy_client_aborts_total{{protocol=\"{p}\"}} {}",
            self.client_aborts.load(Relaxed)
        );
        family(
            &mut s,
            "ferry_proxy_http2_connections_total",
            "counter",
            "Client connections that spoke HTTP/2 (h2c prior knowledge or ALPN h2).",
        );
        let _ = writeln!(
            s,
            "ferry_proxy_http2_connections_total{{protocol=\"{p}\"}} {}",
            self.h2_connections.load(Relaxed)
        );
        family(
            &mut s,
            "ferry_proxy_downstream_connections",
            "gauge",
            "Client connections open.",
        );
        let _ = writeln!(
            s,
            "ferry_proxy_downstream_connections{{protocol=\"{p}\"}} {}",
            self.downstream_open.load(Relaxed)
        );
        type Get = fn(&UpstreamStats) -> i64;
        let simple: [(&str, &str, &str, Get); 9] = [
            (
                "ferry_proxy_upstream_requests_total",
                "counter",
                "Requests (HTTP), commands (Redis) or queries and syncs (Postgres) sent to the upstream.",
                |u| u.requests.load(Relaxed) as i64,
            ),
            (
                "ferry_proxy_upstream_failures_total",
                "counter",
                "Upstream connect failures, resets and timeouts.",
                |u| u.failures.load(Relaxed) as i64,
            ),
            (
                "ferry_proxy_upstream_retries_total",
                "counter",
                "Retries sent to the upstream.",
                |u| u.retries.load(Relaxed) as i64,
            ),
            (
                "ferry_proxy_upstream_connects_total",
                "counter",
                "TCP connects started to the upstream.",
                |u| u.connects.load(Relaxed) as i64,
            ),
            (
                "ferry_proxy_upstream_connections",
                "gauge",
                "Connections open to the upstream.",
                |u| u.open.load(Relaxed),
            ),
            (
                "ferry_proxy_upstream_active_requests",
                "gauge",
                "Requests in flight to the upstream.",
                |u| u.active.load(Relaxed),
            ),
            (
                "ferry_proxy_upstream_healthy",
                "gauge",
                "1 while the upstream passes its active health checks.",
                |u| i64::from(u.healthy.load(Relaxed)),
            ),
            (
                "ferry_proxy_upstream_resolved",
                "gauge",
                "1 while the upstream's name resolves.",
                |u| i64::from(u.has_addr.load(Relaxed)),
            ),
            (
                "ferry_proxy_breaker_opened_total",
                "counter",
                "Times a circuit breaker for the upstream opened (all workers).",
                |u| u.breaker_opened.load(Relaxed) as i64,
            ),
        ];
        for (name, kind, help, get) in simple {
            family(&mut s, name, kind, help);
            for u in self.upstreams.enabled() {
                let _ = writeln!(
                    s,
                    "{name}{{protocol=\"{p}\",upstream=\"{}\"}} {}",
                    u.addr,
                    get(u)
                );
            }
        }
        family(
            &mut s,
            "ferry_proxy_upstream_responses_total",
            "counter",
            "Upstream responses by status class.",
        );
        for u in self.upstreams.enabled() {
            for (i, c) in u.responses.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "ferry_proxy_upstream_responses_total{{protocol=\"{p}\",upstream=\"{}\",class=\"{}xx\"}} {}",
                    u.addr,
                    i + 1,
                    c.load(Relaxed)
                );
            }
        }
        // Postgres: server connections (active: serving a client or resetting), clients
        // waiting for one, per worker.
        if self.protocol == "http" || self.protocol == "postgres" {
            for (k, (name, kind, help)) in POOL_NAMES.iter().enumerate() {
                family(&mut s, name, kind, help);
                for (w, pw) in self.pool.iter().enumerate() {
                    let _ = writeln!(
                        s,
                        "{name}{{protocol=\"{p}\",worker=\"{w}\"}} {}",
                        pw[k].load(Relaxed)
                    );
                }
            }
        }
        if self.protocol == "http" {
            let name = "ferry_proxy_request_duration_seconds";
            family(
                &mut s,
                name,
                "histogram",
                "From a request's head to the end of its upstream response (responses from the upstream).",
            );
            for u in self.upstreams.enabled() {
                let labels = format!("protocol=\"{p}\",upstream=\"{}\"", u.addr);
                u.duration.render(&mut s, name, &labels);
            }
            self.render_pool_wait(&mut s);
        }
        family(
            &mut s,
            "ferry_proxy_breaker_state",
            "gauge",
            "Circuit breaker state per worker: 0 closed, 1 open, 2 half-open.",
        );
        for u in self.upstreams.enabled() {
            for (w, b) in u.breaker.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "ferry_proxy_breaker_state{{protocol=\"{p}\",upstream=\"{}\",worker=\"{w}\"}} {}",
                    u.addr,
                    b.load(Relaxed)
                );
            }
        }
        self.render_reloads(&mut s);
        s
    }

    /// `ferry_proxy_config_reloads_total`, the loaded configuration's generation and time.
    fn render_reloads(&self, s: &mut String) {
        let p = self.protocol;
        family(
            s,
            "ferry_proxy_config_reloads_total",
            "counter",
            "Configuration reloads (SIGHUP, RELOAD) by result: applied (ok) or refused (error).",
        );
        for (result, c) in [("ok", &self.reloads_ok), ("error", &self.reloads_error)] {
            let _ = writeln!(
                s,
                "ferry_proxy_config_reloads_total{{protocol=\"{p}\",result=\"{result}\"}} {}",
                c.load(Relaxed)
            );
        }
        family(
            s,
            "ferry_proxy_config_generation",
            "gauge",
            "The loaded configuration's generation: 1 at start, one more per reload applied.",
        );
        let _ = writeln!(
            s,
            "ferry_proxy_config_generation{{protocol=\"{p}\"}} {}",
            self.config_generation.load(Relaxed)
        );
        family(
            s,
            "ferry_proxy_config_loaded_timestamp_seconds",
            "gauge",
            "When the loaded configuration was loaded (Unix time).",
        );
        let _ = writeln!(
            s,
            "ferry_proxy_config_loaded_timestamp_seconds{{protocol=\"{p}\"}} {}",
            self.config_loaded_at.load(Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let st = ProxyStats::new("http", &[Upstream::Addr(a)], 2);
        st.upstreams[0].breaker[1].store(1, Relaxed);
        st.upstreams[0].responses[1].fetch_add(3, Relaxed);
        let text = st.render();
        assert!(text.contains(
            "ferry_proxy_breaker_state{protocol=\"http\",upstream=\"127.0.0.1:1\",worker=\"1\"} 1"
        ));
        assert!(text.contains("class=\"2xx\"} 3"));
        for ns in [100_000, 400_000, 500_000, 2_000_000, 20_000_000_000] {
            st.upstreams[0].duration.record(ns);
        }
        let mut m = ferry_pool::Metrics::default();
        m.wait_time.record(std::time::Duration::ZERO);
        m.wait_time.record(std::time::Duration::from_micros(3));
        st.publish_pool(1, &m);
        let text = st.render();
        let up = "protocol=\"http\",upstream=\"127.0.0.1:1\"";
        for (le, n) in [
            ("0.0005", 3),
            ("0.001", 3),
            ("0.0025", 4),
            ("10", 4),
            ("+Inf", 5),
        ] {
            let line =
                format!("ferry_proxy_request_duration_seconds_bucket{{{up},le=\"{le}\"}} {n}");
            assert!(text.contains(&line), "{line}\n{text}");
        }
        assert!(text.contains(&format!(
            "ferry_proxy_request_duration_seconds_count{{{up}}} 5"
        )));
        assert!(text.contains(&format!(
            "ferry_proxy_request_duration_seconds_sum{{{up}}} 20.003"
        )));
        // Zero and 3 µs: both at or below 4.096 µs, one at or below 1.024 µs.
        let w = "ferry_proxy_pool_wait_seconds_bucket{protocol=\"http\",le=";
        assert!(text.contains(&format!("{w}\"0.000001024\"}} 1")), "{text}");
        assert!(text.contains(&format!("{w}\"0.000004096\"}} 2")), "{text}");
        assert!(text.contains(&format!("{w}\"+Inf\"}} 2")), "{text}");
        assert!(text.contains(
            "ferry_proxy_upstream_healthy{protocol=\"http\",upstream=\"127.0.0.1:1\"} 1"
        ));
        // Every family has its HELP line right before its TYPE line.
        let lines: Vec<&str> = text.lines().collect();
        for (k, l) in lines.iter().enumerate() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    k > 0 && lines[k - 1].starts_with(&format!("# HELP {name} ")),
                    "{name}"
                );
            }
        }
    }
}
