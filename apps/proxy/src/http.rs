//! The HTTP/1.1 reverse proxy as one session type run inline on the I/O workers
//! ([`HttpProxy`], a `ferry_driver::relay::Relay`): [`Down`] is a client's connection (a
//! `ferry_http1::ServerConnection`), [`Up`] an upstream connection (a
//! `ferry_http1::ClientConnection`) opened with `WorkerCtx::connect` on the same worker. The
//! two halves of an exchange talk through worker-local mail ([`Mail`]); bodies stream chunk
//! by chunk both ways, with credit-based
//! flow control (the receiver acknowledges bytes as its socket takes them, the sender stops
//! reading from its peer above [`WINDOW`] unacknowledged bytes), so no body is ever buffered
//! whole.
//!
//! Per worker ([`WorkerState`]): a `ferry-pool` keep-alive pool keyed by upstream (LIFO reuse,
//! a connection limit per upstream with a bounded, timed wait queue, idle timeout, a
//! validator that skips connections the upstream closed), a balancer, a `ferry-reliability`
//! circuit breaker per upstream and a retry budget. The pool's timers run from the session
//! type's `tick` (every 100 ms).
//!
//! Failures: an idempotent request (RFC 9110 §9.2.2) whose upstream failed before sending
//! any response byte (connect refused/timed out, reset, EOF on a stale keep-alive connection)
//! is retried on another upstream, with its body replayed if it was small enough to keep;
//! anything else is answered `502 Bad Gateway` (`504 Gateway Timeout` when it or the connect
//! timed out, `503 Service Unavailable` when no upstream is usable), or the client connection is
//! cut if the response had already started. A pooled connection that breaks before any byte
//! of its response (the upstream closed it as idle just as the request went out) does not
//! count against the upstream: an idempotent request goes again, to any upstream. A request
//! none of which was written (its connect failed, or its pooled connection was found closed
//! before it went out) goes again whatever its method (RFC 9110 §9.2.2 only restricts
//! repeating a request the upstream may have processed), its body replayed as above. An
//! exchange whose body stops moving for the response timeout ends too: the client gets `408`
//! if it stopped sending its request body, else as for an upstream timeout.
//!
//! Client aborts (nginx's `proxy_ignore_client_abort off`, Envoy): a client that resets its
//! connection, or sends its EOF with a complete request in flight (HTTP/1.1 cannot tell a
//! half-close from a client that left; an `Upgrade`/CONNECT request excepted, whose
//! half-close the tunnel relays), ends every exchange it has in flight at once
//! (`Down::abandon`): each upstream connection carrying one is closed, nothing is retried,
//! each is logged 499 and counted (`ferry_proxy_client_aborts_total`). The client's socket is
//! read while an exchange is in flight even when its connection takes no more requests, so
//! that the reset or EOF is seen.
//!
//! Pipelining: when a client pipelines requests, the safe ones (GET, HEAD, OPTIONS without a
//! body or `Upgrade`) go down the upstream connection of the request before them,
//! back-to-back (up to [`ProxyConfig::pipeline_depth`] in flight; the first request's lease
//! carries the batch, handed from each finished exchange to the next), and the responses
//! come back in order. Any other request waits until the responses before it are in, then
//! goes alone. If the connection fails after answering some of them, the answered ones have
//! been delivered; the rest are sent again (on another upstream, each counting as a retry
//! under the budget and attempt limit, else answered 502/504 like any failed request), or,
//! when the upstream had announced `Connection: close` (and so processed none of them), on a
//! new connection without counting as a retry. The response timeout runs for the oldest
//! request in flight on a connection. Mails carry the client's attachment `tag`, so that
//! reports from a connection the client already left are dropped. (nginx, HAProxy, Envoy
//! and Pingora forward a client's pipeline one request at a time; Tempesta FW pipelines to
//! its backends with the same rule: non-idempotent requests are never pipelined, unanswered
//! ones are re-sent.)
//!
//! Trailers ([`trailers`]): a chunked body's trailer section (request or response) goes on
//! where the other side can carry it (a chunked HTTP/1.1 body, or HTTP/2), without the
//! hop-by-hop fields and those a trailer must not carry (RFC 9110 §6.5.1).
//!
//! Protocol switches: a request with `Upgrade` (and `Connection: upgrade`) goes out with both
//! fields, a CONNECT as it is. When the upstream switches (`101`, or `2xx` to CONNECT), its
//! response goes back with its `Upgrade`/`Connection` fields and both connections become a
//! raw byte relay under the same credit-based flow control: bytes each side sent right
//! behind the heads come first, a half-close is relayed (FIN after the bytes before it) and
//! the tunnel ends when both sides closed (or either connection is gone); the upstream
//! connection is never reused. Tunnels have no idle timeout of their own. Any other answer
//! to an upgrade request is an ordinary response.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::{BufMut, Bytes, BytesMut};
use ferry_driver::metrics::add;
use ferry_driver::relay::{Downstream, Half, Io, Peer, Relay, Upstream};
use ferry_driver::WorkerCtx;
use ferry_http1::client::Event as CEvent;
use ferry_http1::server::Event as SEvent;
use ferry_http1::{
    Body, BodyKind, ClientConfig, ClientConnection, Extra as FieldPiece, FieldLines, Headers,
    Method, RequestId, ServerConnection,
};
use ferry_proto::{Connection, Instant};
use smallvec::SmallVec;

use crate::access_log::{AccessLog, Entry};
use crate::balance::{Balancer, Tried};
use crate::config::ProxyConfig;
use crate::limit::{forwarded_client, ClientLimiter};
use crate::metrics::ProxyStats;
use crate::reload::{slot_names, Live, Snapshot, Tunables};
use ferry_pool::{Checkout, Event as PoolEvent, Pool, WaiterId};
use ferry_reliability::trace::TRACEPARENT_LEN;
use ferry_reliability::{
    BreakerEvent, BreakerState, CircuitBreaker, Permit, RetryBudget, RetryGate, Rng, TraceParent,
};

mod h2;
mod h2_upstream;
mod trailers;

use trailers::Trailers;

/// Unacknowledged body bytes one half may hand the other before it stops reading: what a
/// client that does not read its response costs in user space (beside about 50 KiB of
/// buffers). 256 KiB moves a 100 MB body over loopback as fast as 1 MiB did (about
/// 1.1 GB/s either way, one worker) for a quarter of the memory (100 stalled clients on
/// epoll: 30 MB RSS, not 109 MB); 64 KiB was slower.
pub const WINDOW: usize = 256 * 1024;

/// State shared by every worker of an HTTP proxy.
pub struct HttpShared {
    /// The configuration at start: what a reload cannot change is read here; the rest is in
    /// `live` (per-worker state, refreshed on a new generation) and `tun`.
    cfg: ProxyConfig,
    /// The loaded configuration (reloads).
    live: Arc<Live>,
    /// Retries and timeouts of the loaded configuration.
    tun: Tunables,
    /// Most requests in flight on one upstream connection (1: no pipelining; the hash
    /// balancer's, which a reload may turn on or off).
    depth: AtomicUsize,
    /// New upstream connections' settings (its response timeout follows reloads).
    client: RwLock<Arc<ClientConfig>>,
    stats: Arc<ProxyStats>,
    workers: Vec<Mutex<WorkerState>>,
    /// `via: 1.1 ferry`, encoded once (requests and responses).
    via: FieldLines,
    /// `via: 2 ferry`, for requests that came over HTTP/2 (RFC 9110 §7.6.3).
    via2: FieldLines,
    /// `x-forwarded-proto: http` (`https` with TLS), encoded once (requests that came with
    /// `X-Forwarded-For`).
    xfp: FieldLines,
    /// The access log (`--access-log`), if any.
    access: Option<Arc<AccessLog>>,
    /// Per-client rate limiting (`--rate-limit`), if any.
    limiter: Option<ClientLimiter>,
    /// `http`, or `https` when clients speak TLS (`ProxyConfig::tls`).
    scheme: &'static str,
    /// Settings of the HTTP/2 client connections ([`h2`]).
    h2: Arc<ferry_http2::Config>,
    /// Settings of the HTTP/2 upstream connections ([`h2_upstream`]), when the upstreams
    /// speak HTTP/2.
    h2_up: Option<Arc<ferry_http2::Config>>,
}

impl std::fmt::Debug for HttpShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpShared")
            .field("upstreams", &self.cfg.upstreams)
            .finish()
    }
}

impl HttpShared {
    /// Shared state for `workers` I/O workers.
    pub fn new(
        cfg: ProxyConfig,
        workers: usize,
        stats: Arc<ProxyStats>,
        access: Option<Arc<AccessLog>>,
        live: Arc<Live>,
    ) -> Arc<HttpShared> {
        let names: Vec<String> = cfg.upstreams.iter().map(|a| a.to_string()).collect();
        let (depth, client) = client_config(&cfg);
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let workers = (0..workers.max(1))
            .map(|w| {
                Mutex::new(WorkerState {
                    generation: 1,
                    balancer: Balancer::new(cfg.balance, &names, w),
                    breakers: names
                        .iter()
                        .map(|_| CircuitBreaker::new(cfg.breaker.clone()))
                        .collect(),
                    pool: Pool::new(pool_config(&cfg))
                        .with_validator(|h: &UpHandle| h.alive.load(Relaxed)),
                    active: vec![0; names.len()],
                    tickets: Vec::new(),
                    free_tickets: Vec::new(),
                    waiters: Vec::new(),
                    budget: RetryBudget::new(
                        std::time::Duration::from_secs(10),
                        cfg.retry_budget_min_per_sec,
                        cfg.retry_budget_ratio,
                    ),
                    rng: Rng::new(seed(w)),
                })
            })
            .collect();
        let limiter = cfg.rate_limit.map(ClientLimiter::new);
        let h2 = Arc::new(h2::config(&cfg));
        let h2_up = cfg
            .upstream_http2
            .then(|| Arc::new(h2_upstream::config(&cfg)));
        let sh = Arc::new(HttpShared {
            h2,
            h2_up,
            tun: Tunables::new(&cfg),
            cfg,
            live: live.clone(),
            depth: AtomicUsize::new(depth),
            client: RwLock::new(Arc::new(client)),
            stats,
            workers,
            via: FieldLines::new(&[("via", "1.1 ferry")]).unwrap_or_default(),
            via2: FieldLines::new(&[("via", "2 ferry")]).unwrap_or_default(),
            xfp: FieldLines::new(&[("x-forwarded-proto", scheme)]).unwrap_or_default(),
            scheme,
            access,
            limiter,
        });
        let weak = Arc::downgrade(&sh);
        live.listen(Box::new(move |snap| {
            if let Some(sh) = weak.upgrade() {
                sh.reloaded(&snap.cfg);
            }
        }));
        sh
    }

    /// A reload published `cfg`: the settings every worker shares.
    #[cold]
    fn reloaded(&self, cfg: &ProxyConfig) {
        self.tun.store(cfg);
        // The reload's check let the rate change only while limiting stays on.
        if let (Some(l), Some(q)) = (&self.limiter, cfg.rate_limit) {
            l.set_quota(q);
        }
        // As nginx's USR1: `logrotate` moves the file, a reload (SIGHUP) opens a new one.
        if let Some(Err(e)) = self.access.as_deref().map(AccessLog::reopen) {
            tracing::warn!("access log: reopen after the reload: {e} (kept the old file)");
        }
        let (depth, client) = client_config(cfg);
        self.depth.store(depth, Relaxed);
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(client);
    }

    /// Settings for a new upstream connection.
    fn client(&self) -> Arc<ClientConfig> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<ProxyStats> {
        &self.stats
    }

    #[inline]
    fn worker(&self, i: usize) -> MutexGuard<'_, WorkerState> {
        // `i` is a worker index, below the count (a compare, not a division).
        let m = self.workers.get(i).unwrap_or(&self.workers[0]);
        let mut ws = m.lock().unwrap_or_else(|p| p.into_inner());
        // A reload: this worker's safe point to take the new configuration.
        if ws.generation != self.live.generation() {
            self.refresh(&mut ws, i);
        }
        ws
    }

    /// Worker `i` takes the loaded configuration (out of line: rare).
    #[cold]
    #[inline(never)]
    fn refresh(&self, ws: &mut WorkerState, i: usize) {
        ws.refresh(&self.live.snapshot(), &self.stats, i);
    }
}

/// Pipelining depth and the upstream connections' settings for `cfg`.
fn client_config(cfg: &ProxyConfig) -> (usize, ClientConfig) {
    let mut client = ClientConfig::default();
    client.response_timeout = Some(cfg.response_timeout);
    // A request is pipelined only behind requests of the same upstream: not with the
    // hash balancer, where each request's key picks its upstream.
    let depth = match cfg.balance {
        _ if cfg.upstream_http2 => 1,
        crate::balance::Balance::Hash => 1,
        _ => cfg.pipeline_depth.clamp(1, 1024),
    };
    client.max_pipelined = depth;
    (depth, client)
}

/// One worker's pools, balancer and breakers (locked only by that worker's thread).
#[derive(Debug)]
pub struct WorkerState {
    /// The configuration generation this state was built for.
    generation: u64,
    balancer: Balancer,
    breakers: Vec<CircuitBreaker>,
    /// Keep-alive connections per upstream index (`ferry-pool`: limits, wait queue, idle
    /// timeout, LIFO reuse).
    pool: Pool<usize, UpHandle>,
    /// Requests in flight per upstream from this worker (least-requests).
    active: Vec<usize>,
    /// Connects in flight: the pool's ticket and the client waiting for it (if any).
    tickets: Vec<Option<TicketSlot>>,
    free_tickets: Vec<usize>,
    /// Queued checkouts and the clients they belong to.
    waiters: Vec<(WaiterId, Peer, u32)>,
    /// Retries per window, as a share of requests (Finagle/Envoy-style budget).
    budget: RetryBudget,
    rng: Rng,
}

/// A per-process, per-worker seed (jitter and ids must differ between processes).
fn seed(worker: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32) ^ (worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// How an attempt ended, for its upstream's breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    /// The client went away first: no verdict on the upstream.
    Ignored,
}

fn gauge(s: BreakerState) -> u8 {
    match s {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        _ => 2,
    }
}

impl WorkerState {
    /// Report an attempt's outcome to upstream `i`'s breaker and publish what changed.
    fn report(
        &mut self,
        i: usize,
        permit: Option<Permit>,
        outcome: Outcome,
        now: Instant,
        stats: &ProxyStats,
        worker: usize,
    ) {
        let b = &mut self.breakers[i];
        if let Some(p) = permit {
            match outcome {
                Outcome::Success => b.on_success(now, p),
                Outcome::Failure => b.on_failure(now, p),
                Outcome::Ignored => b.on_ignored(p),
            }
        }
        let u = &stats.upstreams[i];
        if b.has_events() {
            breaker_events(b, u);
        }
        u.breaker[worker % u.breaker.len()].store(gauge(b.state(now)), Relaxed);
    }
}

/// Count and log what changed in an upstream's breaker.
#[cold]
fn breaker_events(b: &mut CircuitBreaker, u: &crate::metrics::UpstreamStats) {
    while let Some(ev) = b.poll_event() {
        match ev {
            BreakerEvent::Opened { reason, .. } => {
                u.breaker_opened.fetch_add(1, Relaxed);
                tracing::warn!("upstream {}: circuit opened ({reason:?})", u.addr);
            }
            BreakerEvent::Closed => tracing::info!("upstream {}: circuit closed", u.addr),
            _ => {}
        }
    }
}

/// The pool's handle on an upstream connection: its token and generation, and whether it
/// is still usable (cleared on EOF or close, checked before an idle one is handed out).
#[derive(Debug, Clone)]
pub struct UpHandle {
    peer: Peer,
    alive: Arc<AtomicBool>,
}

type Lease = ferry_pool::Lease<usize, UpHandle>;
type Ticket = ferry_pool::Ticket<usize>;
/// A connect in flight: the pool's ticket and the client waiting for it with the wait's id
/// (echoed in `Leased`/`Failed`, see [`Kind::Leased`]; none when the pool asked for the
/// connection itself).
type TicketSlot = (Ticket, Option<(Peer, u32)>);

fn pool_config(cfg: &ProxyConfig) -> ferry_pool::Config {
    let mut c = ferry_pool::Config::dynamic(0, cfg.max_connections_per_upstream.max(1));
    c.max_waiters_per_key = cfg.max_waiters.max(1);
    c.wait_timeout = cfg.pool_wait_timeout;
    c.idle_timeout = Some(cfg.idle_timeout);
    c.reconnect_backoff = std::time::Duration::ZERO;
    c
}

impl WorkerState {
    /// Take a reloaded configuration: the balancer over its upstreams' slots, breakers and
    /// in-flight counts for new slots (all breakers anew when their settings changed), the
    /// pool's limits, the retry budget; idle connections to dropped upstreams close (the
    /// pool's `Close` events, sent at the next pump).
    #[cold]
    fn refresh(&mut self, snap: &Snapshot, stats: &ProxyStats, w: usize) {
        let cfg = &snap.cfg;
        let n = stats.upstreams.len();
        self.balancer = Balancer::over_slots(cfg.balance, n, &slot_names(snap), w);
        let fresh = self
            .breakers
            .first()
            .is_some_and(|b| *b.config() != cfg.breaker);
        if fresh {
            self.breakers.clear();
        }
        self.breakers
            .resize_with(n, || CircuitBreaker::new(cfg.breaker.clone()));
        self.active.resize(n, 0);
        self.pool.set_config(pool_config(cfg));
        for i in 0..n {
            if !snap.slots.contains(&i) {
                self.pool.close_idle(&i);
            }
        }
        self.budget = RetryBudget::new(
            std::time::Duration::from_secs(10),
            cfg.retry_budget_min_per_sec,
            cfg.retry_budget_ratio,
        );
        self.generation = snap.generation;
    }

    fn put_ticket(&mut self, t: Ticket, owner: Option<(Peer, u32)>) -> usize {
        match self.free_tickets.pop() {
            Some(i) => {
                self.tickets[i] = Some((t, owner));
                i
            }
            None => {
                self.tickets.push(Some((t, owner)));
                self.tickets.len() - 1
            }
        }
    }

    fn take_ticket(&mut self, i: usize) -> Option<TicketSlot> {
        let t = self.tickets.get_mut(i)?.take();
        if t.is_some() {
            self.free_tickets.push(i);
        }
        t
    }

    /// Act on what the pool asks for: connects, answers to queued checkouts, closes.
    #[inline]
    fn pump(&mut self, ctx: &WorkerCtx, stats: &ProxyStats) {
        if self.pool.has_events() {
            self.pump_events(ctx, stats);
        }
    }

    fn pump_events(&mut self, ctx: &WorkerCtx, stats: &ProxyStats) {
        while let Some(ev) = self.pool.poll_event() {
            match ev {
                PoolEvent::Connect(ticket) => {
                    let i = *ticket.key();
                    let slot = self.put_ticket(ticket, None);
                    stats.upstreams[i].connects.fetch_add(1, Relaxed);
                    let addr = stats.upstreams[i].current();
                    if !addr.is_some_and(|a| ctx.connect(a, ((slot as u64) << 8) | i as u64)) {
                        if let Some((t, _)) = self.take_ticket(slot) {
                            let _ = self.pool.connect_failed(t, ctx.clock.now());
                        }
                    }
                }
                PoolEvent::Ready { waiter, lease } => match self.take_waiter(waiter) {
                    Some((owner, wait)) => send(ctx, owner, Kind::Leased(Box::new(lease), wait)),
                    None => {
                        let _ = self.pool.checkin(lease, true, ctx.clock.now());
                    }
                },
                PoolEvent::TimedOut { waiter } => {
                    if let Some((owner, wait)) = self.take_waiter(waiter) {
                        send(ctx, owner, Kind::PoolFailed(true, wait));
                    }
                }
                PoolEvent::Failed { waiter } => {
                    if let Some((owner, wait)) = self.take_waiter(waiter) {
                        send(ctx, owner, Kind::PoolFailed(false, wait));
                    }
                }
                PoolEvent::HealthCheck(lease) => {
                    let ok = lease.conn().alive.load(Relaxed);
                    let _ = self.pool.checkin(lease, ok, ctx.clock.now());
                }
                PoolEvent::Close(h) => {
                    h.alive.store(false, Relaxed);
                    send(ctx, h.peer, Kind::Close);
                }
                _ => {}
            }
        }
    }

    fn take_waiter(&mut self, w: WaiterId) -> Option<(Peer, u32)> {
        let p = self.waiters.iter().position(|(id, ..)| *id == w)?;
        let (_, peer, wait) = self.waiters.swap_remove(p);
        Some((peer, wait))
    }

    /// Give a lease back (`reusable`: the exchange ended cleanly on it; a lease of an
    /// upstream a reload dropped is closed).
    #[inline(always)]
    fn checkin(
        &mut self,
        ctx: &WorkerCtx,
        stats: &ProxyStats,
        lease: Lease,
        reusable: bool,
        now: Instant,
    ) {
        let ok = reusable
            && lease.conn().alive.load(Relaxed)
            && !ctx.shutdown.is_triggered()
            && stats.upstreams[*lease.key()].enabled.load(Relaxed);
        let _ = self.pool.checkin(lease, ok, now);
        self.pump(ctx, stats);
    }
}

/// How far a failed attempt got (see [`Kind::Failed`]).
#[derive(Clone, Copy, Debug)]
struct Sent {
    /// No byte of the response had come.
    before_response: bool,
    /// The upstream processed none of the requests outstanding (it announced its close, or
    /// an idle pooled connection broke before any response byte): not a retry.
    fresh: bool,
    /// No byte of the request was written.
    unsent: bool,
}

/// Whether a failed attempt goes again (`within_attempts`: attempts so far are within
/// `retries`). A request never written goes again whatever its method (RFC 9110 §9.2.2
/// only restricts repeating a request that may have been processed); else only an
/// idempotent one, before any response byte. Its body must still be at hand (`replayable`).
fn may_retry(
    why: UpFailure,
    sent: Sent,
    idempotent: bool,
    replayable: bool,
    within_attempts: bool,
) -> bool {
    let Sent {
        before_response,
        fresh,
        unsent,
    } = sent;
    why != UpFailure::ClientStalled
        && replayable
        && before_response
        && (unsent || idempotent)
        && (fresh || within_attempts)
}

/// Why an upstream attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpFailure {
    /// The TCP connect failed.
    Connect,
    /// The TCP connect timed out.
    ConnectTimeout,
    /// The connection broke (reset, EOF mid-response).
    Broken,
    /// The upstream's response head was invalid (malformed, or framing the proxy does not
    /// pass on); the connection is not reused.
    InvalidResponse,
    /// No response head in time.
    Timeout,
    /// The pool's limit is reached and its wait queue is full.
    PoolFull,
    /// Waited for a pooled connection too long.
    PoolTimeout,
    /// The client sent no request body byte for the response timeout (not the upstream's
    /// failure: answered `408`, never retried).
    ClientStalled,
}

impl UpFailure {
    /// The status the proxy answers with when it gives up after this failure.
    fn status(self) -> u16 {
        match self {
            // A connect that timed out is a gateway timeout too (as nginx's 504 for
            // `proxy_connect_timeout`); a refused one is a 502.
            UpFailure::Timeout | UpFailure::ConnectTimeout => 504,
            UpFailure::PoolFull | UpFailure::PoolTimeout => 503,
            UpFailure::ClientStalled => 408,
            _ => 502,
        }
    }

    fn text(self) -> &'static str {
        match self {
            UpFailure::Connect => "connection refused or unreachable",
            UpFailure::ConnectTimeout => "connect timed out",
            UpFailure::Broken => "connection broken before a complete response",
            UpFailure::InvalidResponse => "invalid response head",
            UpFailure::Timeout => "no response in time",
            UpFailure::PoolFull => "connection limit reached and too many requests waiting",
            UpFailure::PoolTimeout => "no connection free in time (connection limit reached)",
            UpFailure::ClientStalled => "request body not received in time",
        }
    }
}

/// Why an upstream attempt failed, from its client connection's error.
#[cold]
fn error_failure(error: ferry_http1::Error, resp_started: bool) -> UpFailure {
    use ferry_http1::Error as E;
    match error {
        E::HeaderTimeout => UpFailure::Timeout,
        E::UnexpectedEof | E::BodyTooLarge => UpFailure::Broken,
        _ if resp_started => UpFailure::Broken,
        E::InvalidHead(_)
        | E::HeadTooLarge
        | E::TooManyHeaders
        | E::BareLineFeed
        | E::ContentLengthWithTransferEncoding
        | E::InvalidContentLength
        | E::InvalidTransferEncoding
        | E::TransferEncodingInHttp10
        | E::UnsupportedVersion
        | E::UnsolicitedResponse => UpFailure::InvalidResponse,
        _ => UpFailure::Broken,
    }
}

/// A box for a big mail payload (a request to send, a response head), used in place by
/// the receiver, which then keeps the empty box as its spare for the next payload it mails
/// ([`Parcel::send`], [`Parcel::head_of`], [`Parcel::keep`]): a request's box goes to the
/// upstream connection, which sends the response head back in it, so in the steady state
/// each side gets back a box for each one it sent and a request's mails allocate nothing
/// (and no per-thread stock is looked up). Each connection keeps at most one spare. A box
/// dropped with its value (a mail that was never delivered) is simply freed.
struct Parcel(Box<Payload>);

/// What a [`Parcel`] carries.
#[derive(Debug)]
enum Payload {
    /// Nothing (a spare box: no reference into a connection's buffers is kept).
    Empty,
    Send(SendReq),
    Head(ferry_http1::Response),
}

impl Parcel {
    /// A request in the `spare` box (a new one if there is none).
    #[inline]
    fn send(spare: &mut Option<Parcel>, r: SendReq) -> Parcel {
        match spare.take() {
            Some(mut b) => {
                b.fill(Payload::Send(r));
                b
            }
            None => Parcel(Box::new(Payload::Send(r))),
        }
    }

    /// Put `v` in this spare box. A spare is always empty ([`keep`](Self::keep) emptied
    /// it): nothing to drop, so no drop glue runs for the old value.
    #[inline(always)]
    fn fill(&mut self, v: Payload) {
        let old = std::mem::replace(&mut *self.0, v);
        debug_assert!(matches!(old, Payload::Empty));
        std::mem::forget(old);
    }

    /// A response head in the `spare` box (a new one if there is none). Written in place:
    /// only the head's bytes are copied, not a whole (bigger) `Payload`.
    #[inline]
    fn head_of(spare: &mut Option<Parcel>, r: ferry_http1::Response) -> Parcel {
        match spare.take() {
            Some(mut b) => {
                b.fill(Payload::Head(r));
                b
            }
            None => Parcel(Box::new(Payload::Head(r))),
        }
    }

    /// Drop the value; the box becomes `spare` (unless there is one already).
    #[inline]
    fn keep(mut self, spare: &mut Option<Parcel>) {
        *self.0 = Payload::Empty;
        if spare.is_none() {
            *spare = Some(self);
        }
    }

    /// The request, in place.
    fn send_req(&self) -> Option<&SendReq> {
        match &*self.0 {
            Payload::Send(r) => Some(r),
            _ => None,
        }
    }

    /// The response head, in place.
    fn head(&self) -> Option<&ferry_http1::Response> {
        match &*self.0 {
            Payload::Head(r) => Some(r),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Parcel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Mail between the halves of an exchange (same worker; opaque).
#[derive(Debug)]
pub struct Mail(Kind);

/// Queue `kind` for connection `to` of this worker.
fn send(ctx: &WorkerCtx, to: Peer, kind: Kind) {
    let _ = to.post(ctx, Mail(kind));
}

#[derive(Debug)]
enum Kind {
    // Downstream → upstream.
    /// A request to send (boxed: mails stay small, and they are moved a few times each;
    /// the box is reused).
    Send(Parcel),
    ReqData(Bytes, bool),
    /// Tunnel bytes from the client (after a protocol switch).
    Raw(Bytes),
    /// The pool is done with this connection (or the tunnel's client left): close it once
    /// what is queued went out.
    Close,
    // Either way.
    /// Bytes taken; upstream → downstream with the attachment `tag` the bytes came under
    /// (an HTTP/2 client connection has one per stream), `0` the other way.
    Ack(usize, u32),
    // Upstream → downstream.
    /// A connection for the exchange (from the pool, or just opened for it), with the id
    /// the client gave its checkout (`wait`: an HTTP/2 client connection waits for one
    /// per stream; an HTTP/1 one gives 0).
    /// (Boxed: a rare mail, and the biggest payload; every mail is as big as the biggest.)
    Leased(Box<Lease>, u32),
    /// The pool could not provide one (`true`: waited too long); the checkout's id.
    PoolFailed(bool, u32),
    /// The upstream connection failed. `before`: before any byte of the oldest outstanding
    /// response; `fresh`: the upstream had announced it would close (`Connection: close`)
    /// and so processed none of the requests still outstanding; `tag`: the attachment the
    /// failed requests were sent under (`None`: the connect failed); `unsent`: no byte of
    /// the oldest outstanding request was written (any request may go again); `wait`: the
    /// checkout's id when the connect failed (`tag` is `None` then).
    Failed {
        why: UpFailure,
        before: bool,
        fresh: bool,
        unsent: bool,
        tag: Option<u32>,
        wait: u32,
    },
    /// Tunnel bytes from the upstream (after a protocol switch).
    Data(Bytes),
    /// What one read of the response gave, in one mail: the head, then body bytes, then
    /// the end (whether the connection can carry another request), each if present.
    /// `tag`: the attachment the request was sent under (a mail from a connection the
    /// client already gave up is dropped).
    Resp {
        /// A [`Payload::Head`].
        head: Option<Parcel>,
        data: Option<Bytes>,
        end: Option<bool>,
        tag: Option<u32>,
    },
    /// An interim response (1xx but 100 and 101: 103 Early Hints, 102 Processing) before the
    /// final one; a [`Payload::Head`]. `tag` as for `Resp`.
    Info {
        head: Parcel,
        tag: Option<u32>,
    },
    /// The upstream switched protocols (101, or 2xx to CONNECT): from now on `Data` carries
    /// tunnel bytes.
    Upgraded,
    /// Either way: this side's peer closed its sending side of the tunnel (after the
    /// bytes before it): relay the half-close.
    TunnelEof,
    /// Either way: the trailer section of the body (already filtered; the end follows):
    /// downstream → upstream for the request (`None`), upstream → downstream for the
    /// response with the `tag` as for `Resp`.
    Trailers(Box<Trailers>, Option<u32>),
}

/// A request for an upstream connection.
#[derive(Debug)]
struct SendReq {
    owner: Peer,
    /// The client's attachment to this connection (echoed in `Failed`).
    tag: u32,
    head: ferry_http1::Request,
    extra: Extra,
}

/// Fields the proxy adds to a forwarded request (small: a [`SendReq`] is copied into its
/// box in one go).
#[derive(Debug)]
struct Extra {
    fwd: Fwd,
    traceparent: [u8; TRACEPARENT_LEN],
    /// The request's `Connection` may name fields to drop beyond the standard hop-by-hop ones
    /// (else the fields need no second look).
    conn_named: bool,
    /// Fields few requests need (`None`: neither).
    rare: Option<Box<Rare>>,
    /// The request came over HTTP/2 (`via: 2 ferry`).
    h2: bool,
}

/// Where a forwarded request says it came from.
#[derive(Debug)]
enum Fwd {
    /// The connection's `x-forwarded-for` (the client's address), `x-forwarded-proto` and
    /// (unless [`Rare::own_xfh`]) `x-forwarded-host` lines (the request had no
    /// `X-Forwarded-For`).
    Lines(FieldLines),
    /// `X-Forwarded-For` as the request had it plus the client's address (`None`: no lines
    /// either); `x-forwarded-proto` follows from the shared lines.
    Xff(Option<Bytes>),
}

impl Fwd {
    /// The request's `X-Forwarded-For` (if it had one), else the connection's lines.
    fn of(xff: &Option<Bytes>, lines: &Option<FieldLines>) -> Fwd {
        match (xff, lines) {
            (None, Some(l)) => Fwd::Lines(l.clone()),
            (x, _) => Fwd::Xff(x.clone()),
        }
    }
}

/// The fields of [`Extra`] that few requests need.
#[derive(Debug)]
struct Rare {
    /// `Host` for a request that had none (HTTP/1.0): the upstream's address.
    host: Option<Bytes>,
    /// The client's `Upgrade` field, forwarded with `Connection: upgrade`.
    upgrade: Option<Bytes>,
    /// A trusted proxy's request with an `X-Forwarded-Proto`: it is kept (ours is not
    /// written).
    keep_xfp: bool,
    /// The same for `X-Forwarded-Host`.
    keep_xfh: bool,
    /// The same for `X-Forwarded-Client-Cert`: a trusted proxy's is kept (ours, if the
    /// connection has a verified client certificate, follows it: Envoy's APPEND_FORWARD).
    keep_xfcc: bool,
    /// The connection's forwarded lines carry another `X-Forwarded-Host` than this request's
    /// (the first request's `Host`): the lines without it go, and this request's (unless
    /// kept) is written on its own.
    own_xfh: bool,
    /// The connection's `x-forwarded-client-cert` line (mutual TLS), for a request whose
    /// forwarded fields are not the connection's lines ([`Fwd::Xff`]).
    xfcc: Option<FieldLines>,
}

impl Rare {
    /// `None` when there is neither field and nothing to keep.
    fn of(
        host: Option<Bytes>,
        upgrade: Option<Bytes>,
        (keep_xfp, keep_xfh, own_xfh, keep_xfcc): (bool, bool, bool, bool),
        xfcc: Option<FieldLines>,
    ) -> Option<Box<Rare>> {
        let any = keep_xfp || own_xfh || keep_xfcc;
        (host.is_some() || upgrade.is_some() || any || xfcc.is_some()).then(|| {
            Box::new(Rare {
                host,
                upgrade,
                keep_xfp,
                keep_xfh,
                keep_xfcc,
                own_xfh,
                xfcc,
            })
        })
    }
}

/// A connection of the HTTP proxy: [`Relay::Down`] for a client's connection,
/// [`Relay::Up`] for a connection to an upstream.
pub type HttpProxy = Relay<Down, Up>;

/// Hop-by-hop fields (RFC 9110 §7.6.1) and the framing fields the connections write
/// themselves, never forwarded.
#[inline(always)]
fn hop_by_hop(name: &[u8]) -> bool {
    // By length first: one comparison (two or three word compares) at most for the fields
    // that are forwarded.
    match name.len() {
        2 => (name[0] | 0x20) == b't' && (name[1] | 0x20) == b'e',
        6 => is4(name, &EXPECT),
        7 => is4(name, &TRAILER) || is4(name, &UPGRADE),
        10 => is8(name, &CONNECTION) || is8(name, &KEEP_ALIVE),
        14 => is8(name, &CONTENT_LENGTH),
        16 => is8(name, &PROXY_CONNECTION),
        17 => is8(name, &TRANSFER_ENCODING),
        19 => is8(name, &PROXY_AUTHORIZATION),
        _ => false,
    }
}

/// A lower-case name as words for a case-insensitive compare: (value, mask of the letters'
/// case bit) at three offsets (start, middle, end; overlapping) that together cover it.
/// `x | mask == value` is exactly `eq_ignore_ascii_case` on a word: a letter matches in
/// either case, any other byte only itself.
#[derive(Clone, Copy)]
struct Words<T> {
    at: [usize; 3],
    w: [(T, T); 3],
}

/// [`Words`] of `s` in 8-byte words (`s` has 8 to 24 bytes).
const fn words8(s: &[u8]) -> Words<u64> {
    let n = s.len();
    let mid = if n >= 16 { 8 } else { n - 8 };
    let at = [0, mid, n - 8];
    let mut w = [(0u64, 0u64); 3];
    let mut k = 0;
    while k < 3 {
        let mut i = 0;
        while i < 8 {
            let b = s[at[k] + i];
            w[k].0 |= (b as u64) << (8 * i);
            if b.is_ascii_lowercase() {
                w[k].1 |= 0x20 << (8 * i);
            }
            i += 1;
        }
        k += 1;
    }
    Words { at, w }
}

/// [`Words`] of `s` in 4-byte words (`s` has 4 to 8 bytes).
const fn words4(s: &[u8]) -> Words<u32> {
    let n = s.len();
    let at = [0, n - 4, n - 4];
    let mut w = [(0u32, 0u32); 3];
    let mut k = 0;
    while k < 3 {
        let mut i = 0;
        while i < 4 {
            let b = s[at[k] + i];
            w[k].0 |= (b as u32) << (8 * i);
            if b.is_ascii_lowercase() {
                w[k].1 |= 0x20 << (8 * i);
            }
            i += 1;
        }
        k += 1;
    }
    Words { at, w }
}

const EXPECT: Words<u32> = words4(b"expect");
const TRAILER: Words<u32> = words4(b"trailer");
const UPGRADE: Words<u32> = words4(b"upgrade");
const CONNECTION: Words<u64> = words8(b"connection");
const KEEP_ALIVE: Words<u64> = words8(b"keep-alive");
const CONTENT_LENGTH: Words<u64> = words8(b"content-length");
const PROXY_CONNECTION: Words<u64> = words8(b"proxy-connection");
const TRANSFER_ENCODING: Words<u64> = words8(b"transfer-encoding");
const PROXY_AUTHORIZATION: Words<u64> = words8(b"proxy-authorization");
const TRACEPARENT: Words<u64> = words8(b"traceparent");
const X_FORWARDED_FOR: Words<u64> = words8(b"x-forwarded-for");
const X_FORWARDED_PROTO: Words<u64> = words8(b"x-forwarded-proto");
const X_FORWARDED_HOST: Words<u64> = words8(b"x-forwarded-host");

/// Whether `name` (as long as the name `k` was made of) equals it, ASCII case-insensitive.
#[inline(always)]
fn is8(name: &[u8], k: &Words<u64>) -> bool {
    k.at.iter().zip(&k.w).all(|(&at, &(v, m))| {
        name.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .is_some_and(|b| u64::from_le_bytes(b) | m == v)
    })
}

/// [`is8`] for names of 4 to 8 bytes.
#[inline(always)]
fn is4(name: &[u8], k: &Words<u32>) -> bool {
    k.at.iter().zip(&k.w).all(|(&at, &(v, m))| {
        name.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .is_some_and(|b| u32::from_le_bytes(b) | m == v)
    })
}

/// The fields a message's `Connection` fields name beyond the standard hop-by-hop ones (those
/// are hop-by-hop too); empty for the usual `keep-alive`, `close` or `upgrade`.
fn connection_names(h: &Headers) -> SmallVec<[&[u8]; 4]> {
    let mut names = SmallVec::new();
    for v in h.get_all("connection") {
        if !names_fields(v) {
            continue;
        }
        names.extend(v.split(|&b| b == b',').filter_map(|t| {
            let t = t.trim_ascii();
            (!standard_connection_token(t)).then_some(t)
        }));
    }
    names
}

/// [`connection_names`] of a response. The parser saw every `Connection` token: usually
/// only `keep-alive` or `close`, which name no field, and the fields need no second look.
#[inline]
fn response_connection_names(resp: &ferry_http1::Response) -> SmallVec<[&[u8]; 4]> {
    if resp.connection_names_others() {
        connection_names(resp.headers())
    } else {
        SmallVec::new()
    }
}

/// A `Connection` token that names no field beyond the standard hop-by-hop ones.
fn standard_connection_token(t: &[u8]) -> bool {
    hop_by_hop(t) || t.eq_ignore_ascii_case(b"close") || t.is_empty()
}

/// Whether a `Connection` field value names fields beyond the standard hop-by-hop ones.
#[inline]
fn names_fields(v: &[u8]) -> bool {
    // The usual value is one standard token.
    let one = match v.len() {
        5 => v.eq_ignore_ascii_case(b"close"),
        7 => is4(v, &UPGRADE),
        10 => is8(v, &KEEP_ALIVE),
        _ => false,
    };
    !one && v
        .split(|&b| b == b',')
        .any(|t| !standard_connection_token(t.trim_ascii()))
}

/// Whether a response field `name` goes downstream: not hop-by-hop (standard or named by
/// the response's `Connection`).
#[inline(always)]
fn forward_response_field(name: &[u8], named: &[&[u8]]) -> bool {
    !(hop_by_hop(name) || named.iter().any(|t| t.eq_ignore_ascii_case(name)))
}

/// Whether a request field `name` goes upstream: not hop-by-hop (standard or named by
/// `Connection`), and not one the proxy writes itself (`X-Forwarded-For`, `traceparent`,
/// `X-Forwarded-Proto`: the client's claim of a scheme is replaced by the one it used,
/// unless `keep_xfp`, a trusted proxy's; `X-Forwarded-Host` likewise, unless `keep_xfh`;
/// `X-Forwarded-Client-Cert` too, unless `keep_xfcc`, a trusted proxy's: otherwise only the
/// proxy vouches for a client certificate). `keep`: (`keep_xfp`, `keep_xfh`, `keep_xfcc`).
fn forward_request_field(
    name: &[u8],
    named: &[&[u8]],
    (keep_xfp, keep_xfh, keep_xfcc): (bool, bool, bool),
) -> bool {
    let ours = match name.len() {
        11 => is8(name, &TRACEPARENT),
        15 => is8(name, &X_FORWARDED_FOR),
        16 => !keep_xfh && is8(name, &X_FORWARDED_HOST),
        17 => !keep_xfp && is8(name, &X_FORWARDED_PROTO),
        23 => !keep_xfcc && name.eq_ignore_ascii_case(crate::client_cert::XFCC.as_bytes()),
        _ => false,
    };
    !(ours || hop_by_hop(name) || named.iter().any(|t| t.eq_ignore_ascii_case(name)))
}

/// Whether the request's `Connection` names `field` (a hop-by-hop field then).
#[cold]
fn conn_names(h: &Headers, field: &[u8]) -> bool {
    connection_names(h)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(field))
}

/// The request's target is origin-form (`/path`) or `*`: its `Host` names the host.
#[inline(always)]
fn origin_form(head: &ferry_http1::Request) -> bool {
    matches!(head.target_bytes().first(), Some(b'/' | b'*'))
}

/// The `host` field the proxy writes for a request, replacing the client's: the authority
/// of an absolute-form target (RFC 9112 §3.2.2: a proxy must ignore the received `Host` and
/// send one made from the target, so that the upstream and any hop before it agree on the
/// host), else the upstream's address when the client sent no `Host` (HTTP/1.0); `None`
/// (the usual case) keeps the client's.
#[inline]
fn host_field(
    head: &ferry_http1::Request,
    has_host: bool,
    upstream: &impl std::fmt::Display,
) -> Option<Bytes> {
    match head.target_authority() {
        Some(a) => Some(Bytes::copy_from_slice(a.as_bytes())),
        None => (!has_host).then(|| Bytes::from(upstream.to_string())),
    }
}

// ----------------------------------------------------------------------------------------
// Downstream
// ----------------------------------------------------------------------------------------

/// The `Upgrade` field to forward for an upgrade request, if any. Not for CONNECT, nor in an
/// HTTP/1.0 request (RFC 9110 §7.8: ignored), nor `h2c` (as Envoy: a client must not talk
/// HTTP/2 to the upstream past the proxy, "h2c smuggling"). Without it the upstream answers a
/// plain request.
#[cold]
fn forwarded_upgrade(head: &ferry_http1::Request) -> Option<Bytes> {
    if head.method() == Method::Connect || head.version() != ferry_http1::Version::Http11 {
        return None;
    }
    let v = head.headers().get("upgrade")?;
    let h2c = v
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    (!h2c).then(|| Bytes::copy_from_slice(v))
}

/// The request an event of the client's connection belongs to.
fn event_id(ev: &SEvent) -> Option<RequestId> {
    match ev {
        SEvent::Request(r) => Some(r.id()),
        SEvent::Data { id, .. } | SEvent::Trailers { id, .. } | SEvent::End { id } => Some(*id),
        SEvent::Error { id, .. } => *id,
        _ => None,
    }
}

/// Whether a request may be pipelined to an upstream: safe to send behind others and to
/// send again if the connection fails before answering it. Safe methods only (GET, HEAD,
/// OPTIONS: RFC 9110 §9.2.1, stricter than idempotent), no body, no protocol switch.
fn pipelineable(r: &ferry_http1::Request) -> bool {
    matches!(r.method(), Method::Get | Method::Head | Method::Options)
        && r.body_kind() == BodyKind::Empty
        && !r.is_upgrade()
}

/// One exchange in progress on a downstream connection.
#[derive(Debug)]
struct Exchange {
    id: RequestId,
    head: ferry_http1::Request,
    idempotent: bool,
    upstream: usize,
    up: Option<Peer>,
    lease: Option<Lease>,
    waiter: Option<WaiterId>,
    /// Set when the upstream said whether its connection may be reused.
    reusable: bool,
    /// The upstream and failure of the last failed attempt.
    last_failure: Option<(usize, UpFailure)>,
    attempts: u32,
    /// The upstreams it went to.
    tried: Tried,
    /// Body chunks not yet handed to the current upstream.
    held: VecDeque<(Bytes, bool)>,
    /// Every body chunk so far, kept while the body may be replayed (a body that came
    /// with its head is one chunk: no allocation).
    replay: SmallVec<[Bytes; 1]>,
    replay_len: usize,
    replayable: bool,
    /// Sent to an upstream before (a body goes again from `replay`).
    dispatched: bool,
    req_done: bool,
    resp_started: bool,
    resp_done: bool,
    /// The breaker's permit for this attempt (it must hear the outcome).
    permit: Option<Permit>,
    /// The outcome the response head gave, for the breaker to hear when the exchange is
    /// released in the same mail (one lock for both).
    verdict: Option<Outcome>,
    /// `X-Forwarded-For` when the request came with one (else the connection's lines go).
    extra_xff: Option<Bytes>,
    /// A trusted proxy's request with an `X-Forwarded-Proto`: it is kept.
    keep_xfp: bool,
    /// A trusted proxy's request with an `X-Forwarded-Host`: it is kept.
    keep_xfh: bool,
    /// A trusted proxy's request with an `X-Forwarded-Client-Cert`: it is kept.
    keep_xfcc: bool,
    /// Its `X-Forwarded-Host` is not the connection's ([`Rare::own_xfh`]).
    own_xfh: bool,
    /// The request has a `Host` field.
    has_host: bool,
    /// The request's `Connection` may name fields beyond the standard hop-by-hop ones.
    conn_named: bool,
    traceparent: [u8; TRACEPARENT_LEN],
    /// When the request head arrived (the access log's duration).
    started: Instant,
    /// The status the client got (set with the response head).
    status: u16,
    /// Response body bytes handed to the client.
    resp_bytes: u64,
    /// The request came over HTTP/2 (the access log's protocol).
    h2: bool,
    /// The request body's trailer section (sent again with a replayed body).
    req_trailers: Option<Box<Trailers>>,
}

impl Exchange {
    /// Keep a body chunk for a replay while the request may go again (any method: a
    /// request none of which was written goes again too) and the body so far fits in
    /// `max`; past that, the request is no longer replayable.
    #[inline]
    fn keep_for_replay(&mut self, data: &Bytes, max: usize) {
        if !self.replayable || self.resp_started {
            return;
        }
        if self.replay_len + data.len() <= max {
            self.replay_len += data.len();
            if !data.is_empty() {
                self.replay.push(data.clone());
            }
        } else {
            self.replayable = false;
            self.replay.clear();
        }
    }

    /// Whether the client's EOF means it left: its request is complete and its response has
    /// not ended. Not for a protocol switch in the making (`Upgrade`, CONNECT), where a
    /// half-close is relayed through the tunnel; a request still missing body bytes fails
    /// on the EOF by itself.
    fn gone_on_eof(&self) -> bool {
        self.req_done
            && !self.resp_done
            && !self.head.is_upgrade()
            && self.head.method() != Method::Connect
    }
}

/// A client's connection.
pub struct Down {
    io: Io,
    shared: Arc<HttpShared>,
    conn: ServerConnection,
    errored: bool,
    abort: bool,
    /// Events of requests behind the current one (pipelining) that wait, in order.
    backlog: VecDeque<SEvent>,
    /// The exchange whose response comes next.
    ex: Option<Exchange>,
    /// Requests pipelined behind `ex`, in order: first those sent down `ex`'s upstream
    /// connection behind it (`up` set), then those waiting to be sent (`up` unset: their
    /// attempt there failed, or they could not join).
    pipe: VecDeque<Exchange>,
    /// Counts attachments to upstream connections: a `Failed` for an older one is stale.
    tag: u32,
    /// The last request whose exchange ended (later body events for it are dropped).
    last_done: Option<RequestId>,
    /// Body bytes handed to the upstream and not yet acknowledged.
    unacked: usize,
    /// Response body bytes received and not yet acknowledged to the upstream.
    owed: usize,
    /// When the exchange in progress last moved: bytes from the client, mail from the
    /// upstream side (response bytes, request bytes it took), bytes the client took. With
    /// the request body or the response under way, it ends after the response timeout
    /// without any (a client or upstream that stalls mid-body must not hold both
    /// connections forever; nginx: `client_body_timeout`, `proxy_read_timeout`).
    progress: Instant,
    /// After a protocol switch: the raw byte relay that replaced HTTP on this connection.
    tunnel: Option<Tunnel>,
    /// The client's address as text (for `X-Forwarded-For`), made at the first request.
    peer_ip: Option<Bytes>,
    /// `x-forwarded-for: <client address>` (if known), `x-forwarded-proto: http` and
    /// `x-forwarded-host: <fwd_host>` (if any), encoded at the first request.
    fwd: Option<FieldLines>,
    /// The same without `x-forwarded-host`, for requests that want another (or none).
    fwd_base: Option<FieldLines>,
    /// The `Host` of the connection's first request, as in `fwd` (most clients send the
    /// same on every request of a connection).
    fwd_host: Option<Bytes>,
    /// The client is a trusted proxy (`trusted_proxies`; set with `fwd`).
    trusted: bool,
    /// `x-forwarded-client-cert: Subject="..."` for a client's verified certificate (mutual
    /// TLS; also in `fwd` and `fwd_base`), set with `fwd`.
    xfcc: Option<FieldLines>,
    /// A box for the next request's mail (the last response head's).
    spare: Option<Parcel>,
    /// No input seen yet: the first bytes (or ALPN) tell HTTP/1.x from HTTP/2.
    sniffing: bool,
    /// The HTTP/2 side, when the client speaks HTTP/2 (then `conn` stays unused).
    h2: Option<Box<h2::H2>>,
}

/// A downstream connection's tunnel to its upstream connection (WebSocket, CONNECT).
#[derive(Debug)]
struct Tunnel {
    up: Peer,
    /// The upstream connection, held (not reusable) until the tunnel closes.
    lease: Option<Lease>,
    /// The upstream closed its sending side.
    up_eof: bool,
    /// The tunnel is over (both sides' EOF, or one side gone; the upstream connection was
    /// told): finish once the output went out.
    closed: bool,
}

/// A new exchange for a request (counted; its trace context and `X-Forwarded-For` made),
/// with the worker's state locked by the caller. `peer_ip`: the client's address as text;
/// `trusted`: the client is a trusted proxy; `fwd_host`: the `Host` in the connection's
/// forwarded lines.
#[inline(always)]
fn exchange(
    sh: &HttpShared,
    ws: &mut WorkerState,
    (peer_ip, trusted, fwd_host): (Option<&[u8]>, bool, Option<&[u8]>),
    head: ferry_http1::Request,
    now: Instant,
) -> Exchange {
    add(&sh.stats.requests, 1);
    let hs = head.headers();
    // One pass over the fields for everything the proxy looks at in a request.
    let (mut has_xff, mut has_host, mut keep_xfp) = (false, false, false);
    let (mut keep_xfh, mut keep_xfcc) = (false, false);
    let mut host = None;
    // The parser saw every `Connection` token: false means none names a field.
    let conn_named = head.connection_names_others();
    let mut traceparent = None;
    for (n, v) in hs.iter_bytes() {
        match n.len() {
            4 if n.eq_ignore_ascii_case(b"host") => {
                has_host = true;
                host = Some(v);
            }
            11 if traceparent.is_none() && is8(n, &TRACEPARENT) => traceparent = Some(v),
            15 => has_xff |= is8(n, &X_FORWARDED_FOR),
            16 if trusted => keep_xfh |= is8(n, &X_FORWARDED_HOST),
            17 if trusted => keep_xfp |= is8(n, &X_FORWARDED_PROTO),
            23 if trusted => {
                keep_xfcc |= n.eq_ignore_ascii_case(crate::client_cert::XFCC.as_bytes())
            }
            _ => {}
        }
    }
    if (keep_xfp || keep_xfh || keep_xfcc) && conn_named {
        // Named by `Connection`: hop-by-hop, as if not sent (ours goes instead).
        keep_xfp &= !conn_names(hs, b"x-forwarded-proto");
        keep_xfh &= !conn_names(hs, b"x-forwarded-host");
        keep_xfcc &= !conn_names(hs, crate::client_cert::XFCC.as_bytes());
    }
    // The connection's lines say another `X-Forwarded-Host` than this request wants.
    let own_xfh = keep_xfh || !origin_form(&head) || host != fwd_host;
    let xff = if has_xff || keep_xfp {
        let ip = peer_ip.unwrap_or_default();
        let mut xff = BytesMut::new();
        for (i, v) in hs.get_all("x-forwarded-for").enumerate() {
            if i > 0 {
                xff.put_slice(b", ");
            }
            xff.put_slice(v);
        }
        if !ip.is_empty() {
            if !xff.is_empty() {
                xff.put_slice(b", ");
            }
            xff.put_slice(ip);
        }
        Some(xff.freeze())
    } else {
        None // the usual case: the connection's lines
    };
    let tp = {
        let rng = &mut ws.rng;
        let t = match traceparent.map(TraceParent::parse) {
            Some(Ok(t)) => t.child(rng),
            _ => TraceParent::new_root(rng, false),
        };
        ws.budget.deposit(now);
        t.to_bytes()
    };
    Exchange {
        id: head.id(),
        idempotent: head.method().is_idempotent(),
        head,
        upstream: usize::MAX,
        up: None,
        lease: None,
        waiter: None,
        reusable: false,
        last_failure: None,
        attempts: 0,
        tried: Tried::default(),
        held: VecDeque::new(),
        replay: SmallVec::new(),
        replay_len: 0,
        replayable: true,
        dispatched: false,
        req_done: false,
        resp_started: false,
        resp_done: false,
        permit: None,
        verdict: None,
        extra_xff: xff,
        keep_xfp,
        keep_xfh,
        keep_xfcc,
        own_xfh,
        has_host,
        conn_named,
        traceparent: tp,
        started: now,
        status: 0,
        resp_bytes: 0,
        h2: false,
        req_trailers: None,
    }
}

/// What [`dispatch_attempt`] got for an exchange.
enum Dispatched {
    /// A pooled connection: attach now.
    Ready(Lease),
    /// A connect or a place in the pool's queue: a `Leased` or `Failed` mail follows.
    Pending,
    /// The checkout failed at once.
    Failed(UpFailure),
    /// No upstream may take it (or the retry budget is spent): answer it.
    Nowhere(&'static str),
}

/// Pick an upstream for `ex`'s next attempt (first or retry) and check out a connection
/// to it, with the worker's state locked by the caller (released here). `owner`: the
/// client's connection and the id it gives this checkout (echoed in `Leased`,
/// `PoolFailed` and a connect's `Failed`). The body so far is queued again in `ex.held`
/// for a retry. Shared by the HTTP/1 and HTTP/2 client halves.
fn dispatch_attempt(
    ctx: &mut WorkerCtx,
    sh: &HttpShared,
    mut ws: MutexGuard<'_, WorkerState>,
    ex: &mut Exchange,
    owner: (Peer, u32),
    now: Instant,
) -> Dispatched {
    let hash = ws.balancer.kind() == crate::balance::Balance::Hash;
    let key = if hash {
        ex.head.target().as_bytes()
    } else {
        &[][..]
    };
    // (Plus those out of half-open probes, skipped for this pick only.)
    let mut tried = ex.tried.clone();
    let retry = ex.attempts > 0;
    // One lock for the pick and the checkout.
    let pick = {
        let WorkerState {
            balancer,
            breakers,
            active,
            budget,
            rng,
            ..
        } = &mut *ws;
        let stats = &sh.stats;
        if retry && !budget.try_withdraw(now, rng) {
            Err("retry budget exhausted")
        } else {
            let mut got = Err("no upstream available (all down or circuit open)");
            for _ in 0..stats.upstreams.len() {
                let choice = balancer.pick(
                    key,
                    |i| {
                        !tried.has(i)
                            && stats.upstreams[i].usable()
                            && breakers[i].state(now) != BreakerState::Open
                    },
                    |i| active[i],
                );
                let Some(i) = choice else { break };
                breakers[i].handle_timeout(now);
                match breakers[i].try_acquire(now) {
                    Ok(permit) => {
                        active[i] += 1;
                        got = Ok((i, permit));
                        break;
                    }
                    Err(_) => tried.add(i), // out of half-open probes
                }
            }
            got
        }
    };
    let (i, permit) = match pick {
        Ok(x) => x,
        Err(why) => return Dispatched::Nowhere(why),
    };
    ex.permit = Some(permit);
    let u = &sh.stats.upstreams[i];
    u.requests.fetch_add(1, Relaxed);
    u.active.fetch_add(1, Relaxed);
    if ex.attempts > 0 {
        u.retries.fetch_add(1, Relaxed);
    }
    ex.upstream = i;
    ex.attempts += 1;
    ex.tried.add(i);
    // The body so far goes again, from the replay copy (a first attempt usually holds
    // nothing: no second look then; one that went again as never sent or `fresh` has
    // its attempt count back at 0, not its body).
    let again = std::mem::replace(&mut ex.dispatched, true);
    if again || !ex.held.is_empty() {
        ex.held.clear();
        if again {
            let n = ex.replay.len();
            for (k, b) in ex.replay.iter().enumerate() {
                ex.held.push_back((b.clone(), ex.req_done && k + 1 == n));
            }
            if ex.req_done && n == 0 {
                ex.held.push_back((Bytes::new(), true));
            }
        }
    }
    // A connection: warm from the pool, a new one, or a place in the pool's queue.
    let got = {
        let r = match ws.pool.checkout(i, now) {
            Ok(Checkout::Ready(lease)) => Dispatched::Ready(lease),
            Ok(Checkout::Connect(ticket)) => {
                let slot = ws.put_ticket(ticket, Some(owner));
                u.connects.fetch_add(1, Relaxed);
                let tag = ((slot as u64) << 8) | i as u64;
                if u.current().is_some_and(|a| ctx.connect(a, tag)) {
                    Dispatched::Pending
                } else {
                    if let Some((t, _)) = ws.take_ticket(slot) {
                        let _ = ws.pool.connect_failed(t, now);
                    }
                    Dispatched::Failed(UpFailure::Connect)
                }
            }
            Ok(Checkout::Queued(w)) => {
                ws.waiters.push((w, owner.0, owner.1));
                ex.waiter = Some(w);
                Dispatched::Pending
            }
            Ok(_) | Err(_) => Dispatched::Failed(UpFailure::PoolFull),
        };
        ws.pump(ctx, &sh.stats);
        r
    };
    drop(ws);
    got
}

/// The answer to an exchange no upstream may take ([`Dispatched::Nowhere`]): a retry that
/// found nowhere else to go answers for the failure it retried.
fn nowhere_answer(sh: &HttpShared, ex: &Exchange, retry: bool, why: &str) -> (u16, String) {
    match ex.last_failure {
        Some((u, f)) if retry => {
            let text = format!("upstream {}: {}", sh.stats.upstreams[u].addr, f.text());
            (f.status(), text)
        }
        _ => (503, why.to_string()),
    }
}

/// An attempt of `ex` failed (see [`Down::failed`] for `fresh` and `unsent`): the breaker
/// hears it, the connection (or the place in the queue) goes back, and the answer is whether
/// the request goes again ([`may_retry`]). Shared by the HTTP/1 and HTTP/2 client halves.
#[allow(clippy::too_many_arguments)]
fn fail_attempt(
    ctx: &mut WorkerCtx,
    sh: &HttpShared,
    ex: &mut Exchange,
    why: UpFailure,
    before_response: bool,
    fresh: bool,
    unsent: bool,
    now: Instant,
) -> bool {
    ex.up = None;
    let i = ex.upstream;
    let ours = matches!(
        why,
        UpFailure::PoolFull | UpFailure::PoolTimeout | UpFailure::ClientStalled
    );
    let fresh = fresh && before_response && !ex.resp_started;
    if fresh {
        ex.attempts = ex.attempts.saturating_sub(1);
        ex.tried.remove(i);
    } else {
        ex.last_failure = Some((i, why));
    }
    if !ours && !fresh {
        sh.stats.upstreams[i].failures.fetch_add(1, Relaxed);
    }
    {
        let mut ws = sh.worker(ctx.index);
        let permit = ex.permit.take();
        let outcome = if ours || fresh {
            Outcome::Ignored
        } else {
            Outcome::Failure
        };
        ws.report(i, permit, outcome, now, &sh.stats, ctx.index);
        ws.active[i] = ws.active[i].saturating_sub(1);
        if let Some(w) = ex.waiter.take() {
            ws.pool.cancel(w);
            ws.take_waiter(w);
        }
        if let Some(lease) = ex.lease.take() {
            ws.checkin(ctx, &sh.stats, lease, false, now);
        }
    }
    sh.stats.upstreams[i].active.fetch_sub(1, Relaxed);
    ex.upstream = usize::MAX;
    may_retry(
        why,
        Sent {
            before_response: before_response && !ex.resp_started,
            fresh,
            unsent,
        },
        ex.idempotent,
        ex.replayable,
        ex.attempts <= sh.tun.retries(),
    )
}

/// The request to send for `ex` on its upstream connection (`owner`, `tag`: the client's
/// connection and attachment; `fwd`, `fwd_base`: the connection's forwarded lines, with and
/// without `x-forwarded-host`; `xfcc`: its client certificate line).
fn send_req(
    sh: &HttpShared,
    ex: &Exchange,
    (owner, tag): (Peer, u32),
    (fwd, fwd_base): (&Option<FieldLines>, &Option<FieldLines>),
    xfcc: &Option<FieldLines>,
) -> SendReq {
    let host = host_field(
        &ex.head,
        ex.has_host,
        &sh.stats.upstreams[ex.upstream].upstream,
    );
    let upgrade = if ex.head.is_upgrade() {
        forwarded_upgrade(&ex.head)
    } else {
        None
    };
    SendReq {
        owner,
        tag,
        head: ex.head.clone(),
        extra: Extra {
            fwd: Fwd::of(&ex.extra_xff, if ex.own_xfh { fwd_base } else { fwd }),
            conn_named: ex.conn_named,
            traceparent: ex.traceparent,
            rare: Rare::of(
                host,
                upgrade,
                (ex.keep_xfp, ex.keep_xfh, ex.own_xfh, ex.keep_xfcc),
                ex.extra_xff.as_ref().and(xfcc.clone()),
            ),
            h2: ex.h2,
        },
    }
}

/// The text of one of the proxy's own answers (counted in the metrics for 502..504).
fn local_text(sh: &HttpShared, status: u16, method: &str, why: &str) -> String {
    let st = &sh.stats;
    match status {
        502 => add(&st.answered_502, 1),
        503 => add(&st.answered_503, 1),
        504 => add(&st.answered_504, 1),
        _ => {}
    };
    format!(
        "{} {}: {} {}\n",
        status,
        match status {
            400 => "Bad Request",
            408 => "Request Timeout",
            429 => "Too Many Requests",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            _ => "Gateway Timeout",
        },
        method,
        why
    )
}

impl Down {
    fn process_input(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.sniffing && !self.io.input.is_empty() && !self.sniff(now) {
            return; // maybe the HTTP/2 preface: more bytes tell
        }
        if self.h2.is_some() {
            self.h2_process(ctx, now);
            return;
        }
        if !self.io.input.is_empty() {
            self.progress = now;
        }
        if let Some(t) = self.tunnel.as_ref() {
            if !self.io.input.is_empty() && !t.closed {
                let b = self.io.input.split().freeze();
                self.unacked += b.len();
                send(ctx, t.up, Kind::Raw(b));
            }
            return;
        }
        loop {
            let before = self.io.input.len();
            if !self.errored
                && self.backlog.is_empty()
                && !self.io.input.is_empty()
                && self.conn.handle_input(now, &mut self.io.input).is_err()
            {
                self.errored = true;
            }
            let mut progressed = self.io.input.len() != before;
            while let Some(ev) = self.conn.poll_event() {
                progressed = true;
                self.event(ctx, ev, now);
            }
            if self.errored {
                self.io.input.clear();
            }
            if !progressed || !self.backlog.is_empty() {
                break;
            }
        }
        self.collect();
    }

    /// Move what the connection has to send to the output queue. Inlined: it runs after
    /// every read and mail, and there is usually nothing to move.
    #[inline]
    fn collect(&mut self) {
        while let Some(b) = self.conn.poll_transmit() {
            self.io.out.push(b);
        }
    }

    fn event(&mut self, ctx: &mut WorkerCtx, ev: SEvent, now: Instant) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(ev);
            return;
        }
        // The usual two first, as `route` would take them: a request when no exchange is in
        // progress, and the end of the current request.
        match ev {
            SEvent::Request(head) if self.ex.is_none() => self.start(ctx, head, now),
            ev @ SEvent::End { id }
                if self.ex.as_ref().is_some_and(|ex| ex.id == id)
                    && self.last_done.is_none_or(|done| id > done) =>
            {
                // An `End` owns nothing: no drop glue to run for it.
                std::mem::forget(ev);
                self.request_end(ctx, now)
            }
            ev => {
                if let Some(ev) = self.route(ctx, ev, now) {
                    self.backlog.push_back(ev);
                }
            }
        }
    }

    /// Handle `ev` now if its turn has come (else it is handed back: it waits for the
    /// exchanges before it).
    fn route(&mut self, ctx: &mut WorkerCtx, ev: SEvent, now: Instant) -> Option<SEvent> {
        let id = event_id(&ev);
        if let (Some(id), Some(done)) = (id, self.last_done) {
            if id <= done && !matches!(ev, SEvent::Request(_)) {
                return None; // the rest of a body whose exchange already ended
            }
        }
        let Some(ex) = self.ex.as_ref() else {
            return match ev {
                SEvent::Request(head) => {
                    self.start(ctx, head, now);
                    None
                }
                ev => {
                    self.handle(ctx, ev, now);
                    None
                }
            };
        };
        match (ev, id) {
            (SEvent::Request(head), _) => self.pipeline(ctx, head, now).map(SEvent::Request),
            (ev, Some(id)) if id == ex.id => {
                self.handle(ctx, ev, now);
                None
            }
            (ev @ SEvent::Error { .. }, None) => {
                self.handle(ctx, ev, now);
                None
            }
            (ev, Some(id)) => match self.pipe.iter_mut().find(|f| f.id == id) {
                // A pipelined request has no body: only its end (or an error) follows.
                Some(f) => {
                    match ev {
                        SEvent::End { .. } => f.req_done = true,
                        ev @ SEvent::Error { .. } => self.handle(ctx, ev, now),
                        _ => {}
                    }
                    None
                }
                None => Some(ev),
            },
            (ev, None) => {
                self.handle(ctx, ev, now);
                None
            }
        }
    }

    fn handle(&mut self, ctx: &mut WorkerCtx, ev: SEvent, now: Instant) {
        match ev {
            SEvent::Request(head) => self.start(ctx, head, now),
            SEvent::Data { data, .. } => self.body(ctx, data, false, now),
            SEvent::End { .. } => self.body(ctx, Bytes::new(), true, now),
            SEvent::Trailers { trailers, .. } => self.req_trailers(ctx, &trailers),
            SEvent::Error { error, .. } => {
                // The protocol answered (400/408/413/…) or the body broke: drop the exchange.
                self.errored = true;
                if let Some(log) = self.shared.access.as_deref() {
                    self.log_error(log, ctx, error, now);
                }
                if let Some(mut ex) = self.ex.take() {
                    if error == ferry_http1::Error::UnexpectedEof && !ex.resp_done {
                        // The client left mid-body (its EOF): aborted like a reset.
                        self.shared.stats.client_aborts.fetch_add(1, Relaxed);
                    }
                    self.last_done = Some(ex.id);
                    self.release(ctx, &mut ex, false, now);
                    self.abort = ex.resp_started;
                }
                self.drop_pipe(ctx, now);
            }
            _ => {}
        }
    }

    fn start(&mut self, ctx: &mut WorkerCtx, head: ferry_http1::Request, now: Instant) {
        self.init_fwd(&head);
        // One lock for the exchange's trace id and the dispatch.
        let sh = self.shared.clone();
        let mut ws = sh.worker(ctx.index);
        // Built in place (an `Exchange` is big).
        let peer = (
            self.peer_ip.as_deref(),
            self.trusted,
            self.fwd_host.as_deref(),
        );
        let over = match sh.limiter.as_ref() {
            Some(l) => self.over_limit(l, &head, now),
            None => None,
        };
        self.ex = Some(exchange(&sh, &mut ws, peer, head, now));
        match over {
            None => self.dispatch_with(ctx, &sh, ws, now),
            Some(wait) => {
                drop(ws);
                self.refuse_over_limit(ctx, wait, now);
            }
        }
    }

    /// How long until the client of `head` may send another request, if it is over
    /// `--rate-limit` now (the request counts against it when it is not).
    #[cold]
    fn over_limit(
        &self,
        l: &ClientLimiter,
        head: &ferry_http1::Request,
        now: Instant,
    ) -> Option<std::time::Duration> {
        let peer = self.io.peer_addr()?.ip();
        let client = if self.trusted {
            let xff = head.headers().get("x-forwarded-for");
            xff.and_then(forwarded_client).unwrap_or(peer)
        } else {
            peer
        };
        l.check(client, now).err()
    }

    /// The exchange just made is over the rate limit: `429` with `Retry-After`.
    #[cold]
    fn refuse_over_limit(&mut self, ctx: &mut WorkerCtx, wait: std::time::Duration, now: Instant) {
        let ex = self.ex.take().expect("exchange");
        self.last_done = Some(ex.id);
        add(&self.shared.stats.answered_429, 1);
        // Whole seconds, rounded up (RFC 9110 §10.2.3).
        let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64;
        let retry = itoa::Buffer::new().format(secs).as_bytes().to_vec();
        let why = "rate limit for this client";
        self.answer(ctx, &ex, 429, why, &[("retry-after", &retry)], now);
        self.resume(ctx, now);
    }

    /// A request pipelined behind `ex`: sent down the same upstream connection right away
    /// when it may be (`pipelineable`, the connection attached, depth left, the breaker
    /// agrees), else queued behind the others (`pipe`) or, if it must go alone, handed
    /// back.
    fn pipeline(
        &mut self,
        ctx: &mut WorkerCtx,
        head: ferry_http1::Request,
        now: Instant,
    ) -> Option<ferry_http1::Request> {
        let Some(ex) = self.ex.as_ref() else {
            return Some(head);
        };
        let tail = self.pipe.back().unwrap_or(ex);
        let depth = self.shared.depth.load(Relaxed);
        let ok = depth > 1
            && !self.errored
            && !self.abort
            && pipelineable(&ex.head)
            && pipelineable(&head)
            && tail.req_done
            && 1 + self.pipe.len() < depth
            && !ctx.shutdown.is_triggered();
        if !ok {
            return Some(head);
        }
        self.init_fwd(&head);
        if let Some(l) = self.shared.limiter.as_ref() {
            if self.over_limit(l, &head, now).is_some() {
                // Answered in its turn, after the responses before it (`start`).
                return Some(head);
            }
        }
        let sh = &*self.shared;
        let mut f = exchange(
            sh,
            &mut sh.worker(ctx.index),
            (
                self.peer_ip.as_deref(),
                self.trusted,
                self.fwd_host.as_deref(),
            ),
            head,
            now,
        );
        // No body: complete with its head (its `End` event follows right after).
        f.req_done = true;
        self.pipe.push_back(f);
        self.join_pipe(ctx, now);
        None
    }

    /// Send the waiting pipelined requests (in order, while each may go) down `ex`'s
    /// upstream connection. A request that was sent before counts as a retry.
    #[inline]
    fn join_pipe(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if !self.pipe.is_empty() {
            self.join_pipe_now(ctx, now); // else nothing pipelined (the usual case)
        }
    }

    /// [`join_pipe`](Self::join_pipe) when something is pipelined.
    fn join_pipe_now(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let Some(ex) = self.ex.as_ref() else { return };
        let (Some(up), i) = (ex.up, ex.upstream) else {
            return;
        };
        if !pipelineable(&ex.head) || self.abort || self.errored {
            return;
        }
        let sh = self.shared.clone();
        let u = &sh.stats.upstreams[i];
        let mut ws = None;
        // Those already sent are a prefix: start behind the last of them.
        let first = self
            .pipe
            .iter()
            .rposition(|f| f.up.is_some())
            .map_or(0, |k| k + 1);
        for f in self.pipe.range_mut(first..) {
            let retry = f.attempts > 0;
            if !f.req_done
                || (retry && (f.attempts > sh.tun.retries() || f.tried.has(i)))
                || !u.usable()
            {
                break;
            }
            let ws: &mut WorkerState = ws.get_or_insert_with(|| sh.worker(ctx.index));
            if retry && !ws.budget.try_withdraw(now, &mut ws.rng) {
                break;
            }
            ws.breakers[i].handle_timeout(now);
            let Ok(permit) = ws.breakers[i].try_acquire(now) else {
                break;
            };
            ws.active[i] += 1;
            u.requests.fetch_add(1, Relaxed);
            u.active.fetch_add(1, Relaxed);
            if retry {
                u.retries.fetch_add(1, Relaxed);
            }
            f.permit = Some(permit);
            f.upstream = i;
            f.attempts += 1;
            f.tried.add(i);
            f.dispatched = true;
            f.up = Some(up);
            let req = SendReq {
                owner: self.io.me(),
                tag: self.tag,
                head: f.head.clone(),
                extra: Extra {
                    fwd: Fwd::of(
                        &f.extra_xff,
                        if f.own_xfh { &self.fwd_base } else { &self.fwd },
                    ),
                    traceparent: f.traceparent,
                    conn_named: f.conn_named,
                    rare: Rare::of(
                        host_field(&f.head, f.has_host, &sh.stats.upstreams[i].upstream),
                        None,
                        (f.keep_xfp, f.keep_xfh, f.own_xfh, f.keep_xfcc),
                        f.extra_xff.as_ref().and(self.xfcc.clone()),
                    ),
                    h2: false, // pipelining is HTTP/1.1's
                },
            };
            send(ctx, up, Kind::Send(Parcel::send(&mut self.spare, req)));
        }
    }

    /// The requests pipelined behind the head lose their upstream connection (it failed
    /// before answering them): none was answered, so each goes again later (`fresh`: the
    /// upstream had said it would process none of them, so it is not even a retry).
    fn detach_pipe(&mut self, ctx: &mut WorkerCtx, why: UpFailure, fresh: bool, now: Instant) {
        let sh = self.shared.clone();
        let mut ws = None;
        for f in self.pipe.iter_mut() {
            if f.up.take().is_none() {
                continue;
            }
            let i = f.upstream;
            f.upstream = usize::MAX;
            if fresh {
                f.attempts = f.attempts.saturating_sub(1);
                f.tried.remove(i);
            } else {
                f.last_failure = Some((i, why));
            }
            let ws = ws.get_or_insert_with(|| sh.worker(ctx.index));
            let permit = f.permit.take();
            ws.report(i, permit, Outcome::Ignored, now, &sh.stats, ctx.index);
            ws.active[i] = ws.active[i].saturating_sub(1);
            sh.stats.upstreams[i].active.fetch_sub(1, Relaxed);
        }
    }

    /// The client connection is going: every pipelined exchange ends unanswered.
    fn drop_pipe(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        while let Some(mut f) = self.pipe.pop_front() {
            self.last_done = Some(f.id);
            self.release(ctx, &mut f, false, now);
        }
    }

    /// The client left (reset, error, or EOF with a request in flight): every exchange it
    /// has in flight ends now, none retried. The current one and the pipelined ones already
    /// sent are logged 499 (unless their response had ended) and counted; their upstream
    /// connection is closed, never pooled mid-response (`release` with `ok` false). Requests
    /// not sent yet are dropped.
    fn abandon(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let sh = self.shared.clone();
        let ip = self.peer_ip.as_deref();
        let mut aborted = 0;
        let sent = self.pipe.iter().filter(|f| f.up.is_some());
        for ex in self.ex.iter().chain(sent) {
            let status = if ex.resp_done { ex.status } else { 499 };
            aborted += u64::from(!ex.resp_done);
            if let Some(log) = sh.access.as_deref() {
                log_exchange(log, &sh, ctx, ip, ex, status, ex.resp_bytes, now);
            }
        }
        if aborted > 0 {
            sh.stats.client_aborts.fetch_add(aborted, Relaxed);
        }
        if let Some(mut ex) = self.ex.take() {
            self.last_done = Some(ex.id);
            self.release(ctx, &mut ex, false, now);
        }
        self.drop_pipe(ctx, now);
        self.backlog.clear();
    }

    /// `ex` is gone: the next pipelined request becomes the head (it keeps the upstream
    /// connection it was sent on, or goes to one now, or is answered if it may not go again).
    fn promote(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        while self.ex.is_none() && !self.abort && !self.errored {
            let Some(f) = self.pipe.pop_front() else {
                return;
            };
            if f.up.is_some() {
                self.ex = Some(f);
                return;
            }
            if f.attempts > self.shared.tun.retries() {
                let (u, why) = f.last_failure.unwrap_or((0, UpFailure::Broken));
                let text = format!(
                    "upstream {}: {}",
                    self.shared.stats.upstreams[u].addr,
                    why.text()
                );
                self.last_done = Some(f.id);
                self.local_answer(ctx, &f, why.status(), &text, now);
                continue;
            }
            self.ex = Some(f);
            self.dispatch(ctx, now);
        }
    }

    /// The client's address and this connection's `x-forwarded-for`/`x-forwarded-proto`
    /// lines, made at the first request (once per connection, not per request).
    #[inline]
    fn init_fwd(&mut self, head: &ferry_http1::Request) {
        if self.peer_ip.is_none() {
            self.make_fwd(head);
        }
    }

    #[cold]
    fn make_fwd(&mut self, head: &ferry_http1::Request) {
        let sh = &*self.shared;
        let peer = self.io.peer_addr().map(|p| p.ip());
        // `trusted_proxies` as loaded: the start's until a reload (one atomic load), then the
        // reloaded snapshot's (a read lock, once per connection).
        let snap;
        let trusted = if sh.live.generation() == 1 {
            &sh.cfg.trusted_proxies
        } else {
            snap = sh.live.snapshot();
            &snap.cfg.trusted_proxies
        };
        self.trusted = !trusted.is_empty() && peer.is_some_and(|p| trusted.contains(p));
        let ip = peer.map(|p| Bytes::from(p.to_string())).unwrap_or_default();
        // The first request's `Host` (an origin-form target's: an absolute-form one names
        // its own), if it makes a valid field.
        let host = origin_form(head)
            .then(|| head.headers().get_bytes("host"))
            .flatten();
        // Mutual TLS: the verified client certificate's subject.
        let xfcc = self
            .io
            .tls()
            .and_then(|t| t.peer_certificates())
            .and_then(|c| crate::client_cert::xfcc_value(c.first()?));
        self.xfcc = xfcc
            .as_ref()
            .and_then(|v| FieldLines::new(&[(crate::client_cert::XFCC, v.as_str())]).ok());
        let (base, with_host) = {
            let mut fields: SmallVec<[(&str, &[u8]); 4]> = SmallVec::new();
            if !ip.is_empty() {
                fields.push(("x-forwarded-for", &ip[..]));
            }
            fields.push(("x-forwarded-proto", sh.scheme.as_bytes()));
            if let Some(v) = &xfcc {
                fields.push((crate::client_cert::XFCC, v.as_bytes()));
            }
            let base = FieldLines::new(&fields).unwrap_or_else(|_| sh.xfp.clone());
            let with_host = host.as_deref().and_then(|h| {
                fields.push(("x-forwarded-host", h));
                FieldLines::new(&fields).ok()
            });
            (base, with_host)
        };
        self.fwd_host = if with_host.is_some() { host } else { None };
        self.fwd = Some(with_host.unwrap_or_else(|| base.clone()));
        self.fwd_base = Some(base);
        self.peer_ip = Some(ip);
    }

    /// When the exchange in progress fails for lack of progress: while the request body
    /// comes in or the response goes out (waiting for the response head is the upstream
    /// connection's `response_timeout`).
    fn stall_deadline(&self) -> Option<Instant> {
        let Some(ex) = self.ex.as_ref() else {
            return self.tunnel_deadline();
        };
        let moving = (!ex.req_done || ex.resp_started) && self.tunnel.is_none() && !self.abort;
        moving.then(|| self.progress + self.shared.tun.response_timeout())
    }

    /// When an open tunnel that carried nothing either way since `progress` ends.
    #[cold]
    fn tunnel_deadline(&self) -> Option<Instant> {
        let t = self.tunnel.as_ref()?;
        let limit = self.shared.tun.tunnel_idle_timeout();
        (!t.closed && !limit.is_zero()).then(|| self.progress + limit)
    }

    /// Nothing moved for the response timeout: the response stalled (the client connection
    /// is cut, as when an upstream breaks mid-response), the upstream stopped taking the
    /// request body (`504`, or a retry), or the client stopped sending it (`408`).
    #[cold]
    fn stalled(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.progress = now; // once per stall, even if nothing is left to fail
        let Some(ex) = self.ex.as_ref() else {
            if self.tunnel.as_ref().is_some_and(|t| !t.closed) {
                // An idle tunnel: its client may be long gone without a FIN. Both sides go
                // (nothing is waiting to be said).
                tracing::debug!("tunnel idle for the tunnel idle timeout: closed");
                self.io.abort();
                self.end_tunnel(ctx);
            }
            return;
        };
        let (started, upstream_full) = (ex.resp_started, self.unacked >= WINDOW);
        tracing::debug!(started, upstream_full, "exchange stalled");
        if started || upstream_full {
            self.failed(ctx, UpFailure::Timeout, !started, false, false, now);
            return;
        }
        // The rest of the body will not be read: the `408` closes the connection.
        self.conn.close();
        if ex.upstream == usize::MAX {
            // Not sent anywhere yet (waiting for a connection): answer here.
            let ex = self.ex.take().expect("exchange");
            self.last_done = Some(ex.id);
            let why = UpFailure::ClientStalled;
            self.local_answer(ctx, &ex, why.status(), why.text(), now);
            self.resume(ctx, now);
        } else {
            self.failed(ctx, UpFailure::ClientStalled, true, false, false, now);
        }
    }

    /// Send the current exchange to an upstream (first attempt or retry).
    fn dispatch(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let sh = self.shared.clone();
        let ws = sh.worker(ctx.index);
        self.dispatch_with(ctx, &sh, ws, now);
    }

    /// [`dispatch`](Self::dispatch) with the worker's state locked by the caller.
    fn dispatch_with(
        &mut self,
        ctx: &mut WorkerCtx,
        sh: &HttpShared,
        ws: MutexGuard<'_, WorkerState>,
        now: Instant,
    ) {
        let me = self.io.me();
        let Some(ex) = self.ex.as_mut() else { return };
        let retry = ex.attempts > 0;
        let got = dispatch_attempt(ctx, sh, ws, ex, (me, 0), now);
        if !matches!(got, Dispatched::Nowhere(_)) {
            self.unacked = ex.held.iter().map(|(b, _)| b.len()).sum();
        }
        match got {
            Dispatched::Ready(lease) => self.attach(ctx, lease, now),
            Dispatched::Pending => {} // a `Leased` or `Failed` mail follows
            Dispatched::Failed(why) => self.failed(ctx, why, true, false, false, now),
            Dispatched::Nowhere(why) => {
                let ex = self.ex.take().expect("exchange");
                self.last_done = Some(ex.id);
                let (status, text) = nowhere_answer(sh, &ex, retry, why);
                self.local_answer(ctx, &ex, status, &text, now);
                self.resume(ctx, now);
            }
        }
    }

    /// The current attempt has its upstream connection: send the request and any held body.
    fn attach(&mut self, ctx: &mut WorkerCtx, lease: Lease, now: Instant) {
        let wanted = self
            .ex
            .as_ref()
            .is_some_and(|ex| ex.lease.is_none() && ex.up.is_none() && ex.upstream == *lease.key());
        if !wanted {
            let sh = &*self.shared;
            sh.worker(ctx.index)
                .checkin(ctx, &sh.stats, lease, true, now);
            return;
        }
        let ex = self.ex.as_mut().expect("exchange");
        let up = lease.conn().peer;
        self.tag = self.tag.wrapping_add(1);
        ex.waiter = None;
        ex.up = Some(up);
        ex.lease = Some(lease);
        let me = (self.io.me(), self.tag);
        let req = send_req(
            &self.shared,
            ex,
            me,
            (&self.fwd, &self.fwd_base),
            &self.xfcc,
        );
        send(ctx, up, Kind::Send(Parcel::send(&mut self.spare, req)));
        if let Some(t) = &ex.req_trailers {
            send(ctx, up, Kind::Trailers(t.clone(), None));
        }
        if !ex.held.is_empty() {
            for (b, end) in ex.held.drain(..) {
                send(ctx, up, Kind::ReqData(b, end));
            }
        }
        // Requests pipelined behind this one go down the same connection.
        self.join_pipe(ctx, now);
        self.resume(ctx, now);
    }

    /// The current request is complete. One without a body (the usual) said it all in its
    /// head: only noted (what [`body`](Self::body) would do with an empty last chunk).
    #[inline]
    fn request_end(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if let Some(ex) = self.ex.as_mut() {
            if ex.head.body_kind() == BodyKind::Empty && !ex.resp_done {
                ex.req_done = true;
                return;
            }
        }
        self.body(ctx, Bytes::new(), true, now);
    }

    fn body(&mut self, ctx: &mut WorkerCtx, data: Bytes, end: bool, now: Instant) {
        let max_replay = self.shared.cfg.max_replay_body;
        let Some(ex) = self.ex.as_mut() else { return };
        if end {
            ex.req_done = true;
        }
        if ex.resp_done {
            // Answered early: the rest of the body is read and dropped.
            if end {
                self.finish(ctx, now);
                self.resume(ctx, now);
            }
            return;
        }
        ex.keep_for_replay(&data, max_replay);
        if data.is_empty() && ex.head.body_kind() == BodyKind::Empty {
            return; // the end of a request without a body: the head said it all
        }
        self.unacked += data.len();
        match ex.up {
            Some(up) => send(ctx, up, Kind::ReqData(data, end)),
            None => ex.held.push_back((data, end)),
        }
    }

    /// An answer of the proxy's own.
    fn local_answer(
        &mut self,
        ctx: &WorkerCtx,
        ex: &Exchange,
        status: u16,
        why: &str,
        now: Instant,
    ) {
        self.answer(ctx, ex, status, why, &[], now);
    }

    /// [`local_answer`](Self::local_answer) with `extra` fields.
    fn answer(
        &mut self,
        ctx: &WorkerCtx,
        ex: &Exchange,
        status: u16,
        why: &str,
        extra: &[(&str, &[u8])],
        now: Instant,
    ) {
        let text = local_text(&self.shared, status, ex.head.method_str(), why);
        let mut fields: SmallVec<[(&str, &[u8]); 3]> = SmallVec::new();
        fields.push(("content-type", b"text/plain; charset=utf-8"));
        fields.push(("via", b"1.1 ferry"));
        fields.extend_from_slice(extra);
        if let Some(log) = self.shared.access.as_deref() {
            let (sh, ip) = (&*self.shared, self.peer_ip.as_deref());
            let len = text.len() as u64;
            log_exchange(log, sh, ctx, ip, ex, status, len, now);
        }
        let _ = self
            .conn
            .send_response(ex.id, status, &fields[..], Body::Full(Bytes::from(text)));
        self.collect();
    }

    /// The upstream attempt failed.
    ///
    /// `fresh`: the upstream had announced it would close and so processed none of the
    /// outstanding requests: they go again without counting as a retry (and may go to the
    /// same upstream, on another connection).
    /// `unsent`: no byte of the request was written, so it goes again whatever its method.
    fn failed(
        &mut self,
        ctx: &mut WorkerCtx,
        why: UpFailure,
        before_response: bool,
        fresh: bool,
        unsent: bool,
        now: Instant,
    ) {
        let sh = self.shared.clone();
        self.detach_pipe(ctx, why, fresh, now);
        let Some(ex) = self.ex.as_mut() else { return };
        if ex.upstream == usize::MAX {
            return; // not sent anywhere: nothing of ours failed
        }
        let i = ex.upstream;
        let retry = fail_attempt(ctx, &sh, ex, why, before_response, fresh, unsent, now);
        if retry {
            tracing::debug!(
                "upstream {} failed ({}); retrying",
                sh.stats.upstreams[i].addr,
                why.text()
            );
            self.dispatch(ctx, now);
            return;
        }
        let ex = self.ex.take().expect("exchange");
        self.last_done = Some(ex.id);
        if ex.resp_started {
            if let Some(log) = sh.access.as_deref() {
                let ip = self.peer_ip.as_deref();
                log_exchange(log, &sh, ctx, ip, &ex, ex.status, ex.resp_bytes, now);
            }
            self.abort = true;
            self.drop_pipe(ctx, now);
        } else {
            let status = why.status();
            let why = format!("upstream {}: {}", sh.stats.upstreams[i].addr, why.text());
            self.local_answer(ctx, &ex, status, &why, now);
        }
        self.resume(ctx, now);
    }

    /// The exchange ended: tell the upstream, account, go on with pipelined requests.
    fn finish(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        // Released where it is, then dropped there (not moved out: an `Exchange` is big).
        let Some(ex) = self.ex.as_mut() else { return };
        self.last_done = Some(ex.id);
        if let Some(u) = self.shared.stats.upstreams.get(ex.upstream) {
            let nanos = now.as_nanos().saturating_sub(ex.started.as_nanos());
            u.duration.record(nanos);
        }
        if let Some(log) = self.shared.access.as_deref() {
            let (sh, ip) = (&*self.shared, self.peer_ip.as_deref());
            log_exchange(log, sh, ctx, ip, ex, ex.status, ex.resp_bytes, now);
        }
        // The next request pipelined on that connection takes it over.
        if let Some(next) = self.pipe.front_mut() {
            if next.up.is_some() && next.up == ex.up && ex.resp_done {
                next.lease = ex.lease.take();
            }
        }
        self.unacked = 0;
        self.owed = 0;
        release(&self.shared, ctx, ex, true, now);
        self.ex = None;
    }

    /// The exchange is over for this side: the lease goes back (reused only after a clean
    /// end), a queued checkout is withdrawn, the breaker hears the outcome if nobody told it.
    fn release(&mut self, ctx: &mut WorkerCtx, ex: &mut Exchange, ok: bool, now: Instant) {
        self.unacked = 0;
        self.owed = 0;
        release(&self.shared, ctx, ex, ok, now);
    }

    /// Go on after an exchange ended: the next pipelined request becomes the head, and the
    /// events that waited are handled (in order) as far as they may be now.
    #[inline]
    fn resume(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        // Usually nothing is pipelined and nothing waits: no call for either.
        if !self.pipe.is_empty() {
            self.promote(ctx, now);
        }
        if !self.backlog.is_empty() {
            self.resume_backlog(ctx, now);
        }
    }

    /// The events that waited, in order, as far as they may go now.
    fn resume_backlog(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        while let Some(ev) = self.backlog.pop_front() {
            if let Some(ev) = self.route(ctx, ev, now) {
                self.backlog.push_front(ev);
                break;
            }
        }
    }

    fn apply(&mut self, ctx: &mut WorkerCtx, kind: Kind, now: Instant) {
        match kind {
            Kind::Leased(lease, _) => self.attach(ctx, *lease, now),
            Kind::PoolFailed(timed_out, _) => {
                let waiting = self.ex.as_ref().is_some_and(|ex| ex.up.is_none());
                if waiting {
                    if let Some(ex) = self.ex.as_mut() {
                        ex.waiter = None;
                    }
                    let why = if timed_out {
                        UpFailure::PoolTimeout
                    } else {
                        UpFailure::Connect
                    };
                    self.failed(ctx, why, true, false, false, now);
                }
            }
            Kind::Ack(n, _) => self.unacked = self.unacked.saturating_sub(n),
            Kind::Failed {
                why,
                before,
                fresh,
                unsent,
                tag,
                ..
            } => {
                // Only for the connection the head is on now (or waits for): a report from
                // an earlier attachment is stale.
                let current = match (tag, self.ex.as_ref()) {
                    (Some(t), Some(ex)) => ex.up.is_some() && t == self.tag,
                    (None, Some(ex)) => ex.up.is_none(),
                    _ => false,
                };
                if current {
                    self.failed(ctx, why, before, fresh, unsent, now);
                }
            }
            Kind::Upgraded => self.upgraded(ctx, now),
            Kind::TunnelEof => {
                // The upstream is done sending: so are we (FIN after what is queued); the
                // client may still send.
                self.io.shutdown_write();
                if let Some(t) = self.tunnel.as_mut() {
                    t.up_eof = true;
                }
                if self.io.saw_eof() {
                    self.end_tunnel(ctx);
                }
            }
            Kind::Data(b) => self.on_data(b),
            Kind::Resp {
                head,
                data,
                end,
                tag,
            } => {
                // Checked before each part: the head may end the exchange (a 502 for a head
                // we cannot forward) and the next one may already be on another connection.
                let current = |d: &Down| {
                    d.ex.as_ref()
                        .is_some_and(|ex| ex.up.is_some() && tag == Some(d.tag))
                };
                if let Some(h) = head {
                    if current(self) {
                        // With the end in the same mail the breaker hears the outcome at the
                        // release, right after (nothing reads it in between).
                        self.on_head(ctx, h, end.is_some(), now);
                    } else {
                        h.keep(&mut self.spare);
                    }
                }
                if let Some(d) = data.filter(|_| current(self)) {
                    self.on_data(d);
                }
                if let Some(r) = end.filter(|_| current(self)) {
                    self.on_end(ctx, r, now);
                }
            }
            Kind::Info { head, tag } => {
                self.interim(&head, tag);
                head.keep(&mut self.spare);
            }
            Kind::Close => self.tunnel_gone(ctx),
            Kind::Trailers(t, tag) => self.resp_trailers(&t, tag),
            Kind::Send(_) | Kind::ReqData(..) | Kind::Raw(_) => {}
        }
    }

    /// The tunnel's upstream connection is gone (reset, or a write to it failed): what it
    /// sent before goes out, then the client connection closes (it would wait forever).
    #[cold]
    fn tunnel_gone(&mut self, ctx: &mut WorkerCtx) {
        let Some(t) = self.tunnel.as_mut() else {
            return;
        };
        t.closed = true;
        self.io.shutdown_write();
        self.end_tunnel(ctx);
    }

    /// Forward an interim response (RFC 9110 §15.2: a proxy forwards 1xx responses) to an
    /// HTTP/1.1 client, before the final response of the current exchange. `100 Continue`
    /// never comes here: the client's connection answers `Expect` itself.
    fn interim(&mut self, head: &Parcel, tag: Option<u32>) {
        let Some(ex) = self.ex.as_ref() else { return };
        let Some(r) = head.head() else { return };
        // Dropped when the client is not taking what it was sent: interim responses are
        // outside the body's flow control, and an upstream may send any number.
        if ex.up.is_none()
            || tag != Some(self.tag)
            || ex.resp_started
            || ex.head.version() != ferry_http1::Version::Http11
            || self.io.out.len() >= WINDOW
        {
            return;
        }
        let named = response_connection_names(r);
        let keep = |n: &[u8]| forward_response_field(n, &named);
        let via = [FieldPiece::Lines(&self.shared.via)];
        let reason = Some(r.reason());
        let _ = self
            .conn
            .send_forwarded_response_extra(ex.id, r, reason, keep, &via, Body::Empty);
    }

    /// A response head from the upstream (its box is kept for the next request after).
    #[inline]
    fn on_head(&mut self, ctx: &mut WorkerCtx, resp: Parcel, defer: bool, now: Instant) {
        if let Some(r) = resp.head() {
            self.head(ctx, r, defer, now);
        }
        resp.keep(&mut self.spare);
    }

    /// Response body bytes (tunnel bytes after a protocol switch).
    #[inline]
    fn on_data(&mut self, b: Bytes) {
        if self.tunnel.is_some() {
            self.owed += b.len();
            self.io.out.push(b);
        } else if let Some(ex) = self.ex.as_mut() {
            self.owed += b.len();
            ex.resp_bytes += b.len() as u64;
            // Collected after the whole mail (`on_mail`): a small response's head and body
            // leave as one slice.
            let _ = self.conn.send_data(ex.id, b, false);
        }
    }

    /// The response is complete (`reusable`: the upstream connection may carry another).
    #[inline]
    fn on_end(&mut self, ctx: &mut WorkerCtx, reusable: bool, now: Instant) {
        let Some(ex) = self.ex.as_mut() else { return };
        let _ = self.conn.send_data(ex.id, Bytes::new(), true);
        ex.resp_done = true;
        ex.reusable = reusable;
        // Done even if the request body is still arriving (an early answer): the rest of it
        // is read and dropped, and that upstream connection is not reused.
        self.finish(ctx, now);
        self.resume(ctx, now);
    }

    /// The upstream switched protocols (its 101 went out already): the exchange is over
    /// and both connections become a raw byte relay. Bytes the client sent after its
    /// request (still in the input) go first.
    fn upgraded(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let Some(mut ex) = self.ex.take() else { return };
        if !self.conn.is_upgraded() {
            // Our side did not switch (the 101 could not be forwarded): nothing to relay.
            self.last_done = Some(ex.id);
            self.release(ctx, &mut ex, false, now);
            return;
        }
        let Some(up) = ex.up else { return };
        let lease = ex.lease.take();
        ex.resp_done = true;
        self.last_done = Some(ex.id);
        if let Some(log) = self.shared.access.as_deref() {
            let (sh, ip) = (&*self.shared, self.peer_ip.as_deref());
            log_exchange(log, sh, ctx, ip, &ex, ex.status, 0, now);
        }
        self.release(ctx, &mut ex, true, now);
        add(&self.shared.stats.upgrades, 1);
        self.backlog.clear();
        self.tunnel = Some(Tunnel {
            up,
            lease,
            up_eof: false,
            closed: false,
        });
        self.process_input(ctx, now);
        if self.io.saw_eof() {
            // The client finished sending before the switch (its EOF was read already): the
            // upstream gets the FIN too, after those bytes.
            send(ctx, up, Kind::TunnelEof);
        }
    }

    /// The tunnel ends (either side): the upstream connection closes after its output and
    /// goes back to the pool as not reusable.
    fn end_tunnel(&mut self, ctx: &mut WorkerCtx) {
        let Some(t) = self.tunnel.as_mut() else {
            return;
        };
        if !t.closed {
            t.closed = true;
            send(ctx, t.up, Kind::Close);
        }
        if let Some(lease) = t.lease.take() {
            let sh = self.shared.clone();
            sh.worker(ctx.index)
                .checkin(ctx, &sh.stats, lease, false, ctx.clock.now());
        }
    }

    /// A response head goes to the client. `defer`: the exchange is released in the same
    /// mail, which tells the breaker the head's outcome.
    fn head(
        &mut self,
        ctx: &mut WorkerCtx,
        resp: &ferry_http1::Response,
        defer: bool,
        now: Instant,
    ) {
        let sh = self.shared.clone();
        let Some(ex) = self.ex.as_mut() else { return };
        let status = resp.status();
        response_started(ctx, &sh, ex, status, defer, now);
        // A HEAD response's body kind says "none"; its Content-Length is the GET's length.
        let head_len = (ex.head.method() == Method::Head)
            .then(|| resp.headers().get("content-length"))
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
        let switching = (status == 101 && ex.head.is_upgrade())
            || (ex.head.method() == Method::Connect && (200..300).contains(&status));
        let body = if switching {
            Body::Empty // the tunnel follows
        } else if let Some(n) = head_len {
            Body::Length(n) // the length a GET would have; no body follows a HEAD
        } else if ex.head.method() == Method::Head {
            Body::Chunked // no body either way
        } else if status == 204 || status == 304 {
            Body::Empty
        } else {
            match resp.body_kind() {
                BodyKind::Empty => Body::Empty,
                BodyKind::Length(n) => Body::Length(n),
                _ => Body::Chunked,
            }
        };
        let hs = resp.headers();
        let via = FieldPiece::Lines(&sh.via);
        let mut pieces = [via; 3];
        let n = if status == 101 {
            pieces[1] = FieldPiece::Field("connection", b"upgrade");
            match hs.get("upgrade") {
                Some(u) => {
                    pieces[2] = FieldPiece::Field("upgrade", u);
                    3
                }
                None => 2,
            }
        } else if !ex.req_done {
            // Answered before the request body is in (an early 413, a `return`): say that
            // this connection ends after the response rather than close it silently later.
            pieces[1] = FieldPiece::Field("connection", b"close");
            2
        } else {
            1 // the usual: `via` only
        };
        let extra = &pieces[..n];
        // `None` writes the usual status line from a table.
        let reason = Some(resp.reason()).filter(|r| !(status == 200 && *r == "OK"));
        // The upstream's fields go out as our parser accepted them, minus the hop-by-hop ones.
        let named = response_connection_names(resp);
        let keep = |n: &[u8]| forward_response_field(n, &named);
        if self
            .conn
            .send_forwarded_response_extra(ex.id, resp, reason, keep, extra, body)
            .is_err()
        {
            // A head our client side would not accept: answer 502 instead.
            let mut ex = self.ex.take().expect("exchange");
            self.last_done = Some(ex.id);
            self.release(ctx, &mut ex, false, now);
            self.local_answer(ctx, &ex, 502, "invalid response head from upstream", now);
            // That connection is dropped: requests pipelined on it go again.
            self.detach_pipe(ctx, UpFailure::Broken, false, now);
            self.resume(ctx, now);
            return;
        }
        if head_len.is_some() {
            // No body follows a HEAD response whatever length it declares: end it now (not
            // by counting the declared length down, which for a huge one stalls the worker).
            let _ = self.conn.send_data(ex.id, Bytes::new(), true);
        }
    }

    /// The access-log line for a request the protocol refused: the exchange in progress
    /// (its response had started: the status it got; else the refusal's), or a head that
    /// never made a request (no line for a client that just closed or idled out).
    #[cold]
    fn log_error(&self, log: &AccessLog, ctx: &WorkerCtx, error: ferry_http1::Error, now: Instant) {
        let eof = error == ferry_http1::Error::UnexpectedEof;
        let refused = if eof { 499 } else { error.status() };
        let ip = self.peer_ip.as_deref();
        if let Some(ex) = self.ex.as_ref() {
            let status = if ex.resp_started { ex.status } else { refused };
            log_exchange(log, &self.shared, ctx, ip, ex, status, ex.resp_bytes, now);
        } else if !eof && error != ferry_http1::Error::HeaderTimeout {
            let client = self.io.peer_addr().map(|p| p.ip().to_string());
            let e = Entry {
                client: client.as_deref().unwrap_or_default().as_bytes(),
                status: refused,
                ..Entry::default()
            };
            log.record(ctx.index, &e);
        }
    }

    fn ack(&mut self, ctx: &WorkerCtx, n: usize) {
        let a = n.min(self.owed);
        if a > 0 {
            self.owed -= a;
            let up = match self.tunnel.as_ref() {
                Some(t) => (!t.closed).then_some(t.up),
                None => self.ex.as_ref().and_then(|e| e.up),
            };
            if let Some(up) = up {
                send(ctx, up, Kind::Ack(a, 0));
            }
        }
    }
}

/// The response head (`status`) of `ex` came: counted, and its breaker hears the outcome
/// (`defer`: the exchange is released in the same mail, which tells the breaker).
fn response_started(
    ctx: &WorkerCtx,
    sh: &HttpShared,
    ex: &mut Exchange,
    status: u16,
    defer: bool,
    now: Instant,
) {
    ex.resp_started = true;
    ex.replay.clear();
    ex.status = status;
    let i = ex.upstream;
    let class = (status / 100).clamp(1, 5) as usize - 1;
    sh.stats.upstreams[i].responses[class].fetch_add(1, Relaxed);
    if ex.permit.is_some() {
        let outcome = if matches!(status, 502..=504) {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        if defer {
            ex.verdict = Some(outcome);
        } else {
            let permit = ex.permit.take();
            let mut ws = sh.worker(ctx.index);
            ws.report(i, permit, outcome, now, &sh.stats, ctx.index);
        }
    }
}

/// One access-log line for `ex`, answered `status` with `bytes` of body.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn log_exchange(
    log: &AccessLog,
    sh: &HttpShared,
    ctx: &WorkerCtx,
    peer_ip: Option<&[u8]>,
    ex: &Exchange,
    status: u16,
    bytes: u64,
    now: Instant,
) {
    let upstream = match (ex.upstream, ex.last_failure) {
        (i, _) if i != usize::MAX => Some(i),
        (_, Some((i, _))) => Some(i),
        _ => None,
    };
    let hs = ex.head.headers();
    let e = Entry {
        client: peer_ip.unwrap_or_default(),
        method: ex.head.method_str().as_bytes(),
        target: ex.head.target_bytes(),
        protocol: match ex.head.version() {
            _ if ex.h2 => "HTTP/2.0",
            ferry_http1::Version::Http10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        status,
        bytes,
        referer: hs.get("referer"),
        user_agent: hs.get("user-agent"),
        upstream: upstream
            .and_then(|i| sh.stats.upstreams.get(i))
            .map(|u| u.addr.as_str()),
        duration: now.saturating_duration_since(ex.started),
        trace_id: ex.traceparent.get(3..35).unwrap_or_default(),
    };
    let unix = ctx.clock.unix_origin_nanos().saturating_add(now.as_nanos());
    log.record_at(ctx.index, std::time::Duration::from_nanos(unix), &e);
}

/// An exchange is over for its client's side: the lease goes back (reused only after a clean
/// end), a queued checkout is withdrawn, the breaker hears the outcome if nobody told it.
fn release(sh: &HttpShared, ctx: &mut WorkerCtx, ex: &mut Exchange, ok: bool, now: Instant) {
    if ex.upstream == usize::MAX {
        return;
    }
    let mut ws = sh.worker(ctx.index);
    let i = ex.upstream;
    let outcome = if ok {
        Outcome::Success
    } else {
        Outcome::Ignored
    };
    if let Some(permit) = ex.permit.take() {
        // Usually told at the response head already, or the head left its verdict.
        let outcome = ex.verdict.take().unwrap_or(outcome);
        ws.report(i, Some(permit), outcome, now, &sh.stats, ctx.index);
    }
    ws.active[i] = ws.active[i].saturating_sub(1);
    sh.stats.upstreams[i].active.fetch_sub(1, Relaxed);
    if let Some(w) = ex.waiter.take() {
        ws.pool.cancel(w);
        ws.take_waiter(w);
    }
    if let Some(lease) = ex.lease.take() {
        let reusable = ok && ex.reusable && ex.resp_done;
        ws.checkin(ctx, &sh.stats, lease, reusable, now);
    }
}

// ----------------------------------------------------------------------------------------
// Upstream
// ----------------------------------------------------------------------------------------

/// A connection to an upstream.
pub struct Up {
    io: Io,
    idx: usize,
    shared: Arc<HttpShared>,
    conn: ClientConnection,
    /// The pool's ticket slot until the connect is reported.
    ticket: Option<usize>,
    /// Shared with the pool's handle: cleared when this connection is no longer usable.
    alive: Arc<AtomicBool>,
    /// The client whose request this connection carries (or that waits for the connect).
    owner: Option<Peer>,
    /// The id the owner gave the checkout this connect is for (echoed in `Failed`).
    wait: u32,
    /// The last request sent (its body goes out with `ReqData`).
    req: Option<RequestId>,
    /// Requests sent whose response has not ended (more than one when pipelined).
    inflight: usize,
    /// The owner's attachment the requests were sent under (echoed in `Failed`).
    tag: Option<u32>,
    /// A response said the upstream closes after it: it processes no request behind it.
    close_announced: bool,
    /// A response ended on this connection: it has been used before.
    served: bool,
    /// The requests in flight went out on a connection that sat idle after earlier
    /// exchanges, and no response byte came since: if it breaks now, the upstream most
    /// likely closed it as idle before it saw them (the keep-alive race), so they go again
    /// as if never sent.
    reused_idle: bool,
    /// A pipelined request arrived that this connection cannot take (it closes after the
    /// responses in flight): reported, as never sent, once those ended.
    refused: bool,
    resp_started: bool,
    done: bool,
    unacked: usize,
    owed: usize,
    /// The owner was told how the exchange ended.
    reported: bool,
    /// After a protocol switch: a raw byte relay to the owner.
    tunnel: bool,
    /// A box for the next response head's mail (the last request's).
    spare: Option<Parcel>,
    /// The trailer section of the request body being sent (it goes at the body's end).
    req_trailers: Option<Box<Trailers>>,
    /// The upstream speaks HTTP/2 ([`h2_upstream`]): `conn` is unused.
    h2: Option<Box<h2_upstream::H2Up>>,
}

impl Up {
    fn to_owner(&self, ctx: &WorkerCtx, kind: Kind) {
        if let Some(owner) = self.owner {
            send(ctx, owner, kind);
        }
    }

    /// This connection is finished: tell the owner (once) and the pool.
    fn fail(&mut self, ctx: &WorkerCtx, why: UpFailure) {
        self.fail_with(ctx, why, false);
    }

    /// [`fail`](Self::fail); `unsent`: no byte of the owner's request was written (a
    /// failed connect is never sent either).
    fn fail_with(&mut self, ctx: &WorkerCtx, why: UpFailure, unsent: bool) {
        if !self.reported && self.owner.is_some() {
            self.reported = true;
            self.to_owner(
                ctx,
                Kind::Failed {
                    why,
                    before: !self.resp_started,
                    fresh: (self.close_announced
                        || (self.reused_idle && matches!(why, UpFailure::Broken)))
                        && !self.resp_started,
                    unsent: unsent || matches!(why, UpFailure::Connect | UpFailure::ConnectTimeout),
                    tag: self.tag,
                    wait: self.wait,
                },
            );
        }
        self.owner = None;
        self.inflight = 0;
        self.refused = false;
        self.done = true;
        self.alive.store(false, Relaxed);
        self.ticket_failed(ctx);
    }

    /// A connect the pool is waiting for did not happen.
    fn ticket_failed(&mut self, ctx: &WorkerCtx) {
        if let Some(slot) = self.ticket.take() {
            let sh = self.shared.clone();
            let mut ws = sh.worker(ctx.index);
            if let Some((t, _)) = ws.take_ticket(slot) {
                let _ = ws.pool.connect_failed(t, ctx.clock.now());
            }
            ws.pump(ctx, &sh.stats);
        }
    }

    /// The connect completed: hand the connection to the pool (and to the client that asked
    /// for it, if any).
    fn connected(&mut self, ctx: &WorkerCtx, now: Instant) {
        let Some(slot) = self.ticket.take() else {
            return;
        };
        let sh = self.shared.clone();
        let mut ws = sh.worker(ctx.index);
        let Some((ticket, owner)) = ws.take_ticket(slot) else {
            return;
        };
        let handle = UpHandle {
            peer: self.io.me(),
            alive: self.alive.clone(),
        };
        if let Ok(Some(lease)) = ws.pool.connected(ticket, handle, now) {
            match owner {
                Some((owner, wait)) => send(ctx, owner, Kind::Leased(Box::new(lease), wait)),
                None => {
                    let _ = ws.pool.checkin(lease, true, now);
                }
            }
        }
        // The client comes back with `Send` once it has the lease.
        self.owner = None;
        ws.pump(ctx, &sh.stats);
    }

    fn process_input(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.h2.is_some() {
            self.h2_process_input(ctx, now);
            return;
        }
        if self.tunnel {
            self.tunnel_input(ctx);
            return;
        }
        if self.io.is_connected() && !self.done {
            if !self.io.input.is_empty() {
                // The upstream answered something: not an idle connection it had closed.
                self.reused_idle = false;
                let _ = self.conn.handle_input(now, &mut self.io.input);
            }
            // A head and the body bytes after it go to the owner in one mail (with the end
            // when the read had all of it: the usual small response is one mail).
            let mut head = None;
            let mut data = None;
            while let Some(ev) = self.conn.poll_event() {
                let flush = match ev {
                    CEvent::Data { .. } => data.is_some(),
                    CEvent::End { .. } => false,
                    _ => true,
                };
                if flush {
                    self.flush_resp(ctx, &mut head, &mut data);
                }
                match ev {
                    CEvent::Response(r) if r.has_other_transfer_coding() => {
                        // `Transfer-Encoding: gzip, chunked` (or `gzip`): the body would go
                        // out re-chunked without its coding, unreadable. A bad response, as
                        // for nginx (502); the connection is not reused.
                        tracing::debug!(
                            "upstream response with a transfer coding other than chunked"
                        );
                        self.fail(ctx, UpFailure::InvalidResponse);
                    }
                    CEvent::Response(r) => {
                        self.resp_started = true;
                        self.close_announced |= !r.keep_alive();
                        head = Some(Parcel::head_of(&mut self.spare, r));
                    }
                    CEvent::Data { data: d, .. } => {
                        self.unacked += d.len();
                        data = Some(d);
                    }
                    CEvent::End { .. } => {
                        // The client gives the lease back; this connection is idle from now.
                        let reusable = self.conn.is_reusable() && !self.io.saw_eof();
                        self.served = true;
                        let (head, data) = (head.take(), data.take());
                        self.to_owner(
                            ctx,
                            Kind::Resp {
                                head,
                                data,
                                end: Some(reusable),
                                tag: self.tag,
                            },
                        );
                        self.resp_started = false;
                        self.unacked = 0;
                        self.owed = 0;
                        self.inflight = self.inflight.saturating_sub(1);
                        if self.inflight == 0 {
                            if std::mem::take(&mut self.refused) {
                                // Never sent: they go elsewhere, and this connection ends.
                                self.to_owner(
                                    ctx,
                                    Kind::Failed {
                                        why: UpFailure::Broken,
                                        before: true,
                                        fresh: true,
                                        unsent: true,
                                        tag: self.tag,
                                        wait: self.wait,
                                    },
                                );
                                self.done = true;
                                self.alive.store(false, Relaxed);
                            }
                            self.owner = None;
                            self.req = None;
                            self.reported = false;
                        }
                    }
                    CEvent::Informational(r) if r.status() != 100 => {
                        let head = Parcel::head_of(&mut self.spare, r);
                        self.to_owner(
                            ctx,
                            Kind::Info {
                                head,
                                tag: self.tag,
                            },
                        );
                    }
                    CEvent::Trailers { trailers, .. } => self.resp_trailers(ctx, &trailers),
                    CEvent::Error { error, .. } => {
                        let why = error_failure(error, self.resp_started);
                        self.fail(ctx, why);
                    }
                    CEvent::Upgraded { .. } => {
                        // A raw byte relay from now on, dedicated to this client; what
                        // follows the 101 in the input is the new protocol's.
                        self.tunnel = true;
                        self.reported = true;
                        self.alive.store(false, Relaxed);
                        self.unacked = 0;
                        self.owed = 0;
                        self.to_owner(ctx, Kind::Upgraded);
                    }
                    _ => {}
                }
            }
            self.flush_resp(ctx, &mut head, &mut data);
        }
        while let Some(b) = self.conn.poll_transmit() {
            self.io.out.push(b);
        }
        if self.tunnel {
            self.tunnel_input(ctx);
            return;
        }
        if self.conn.is_closed() && self.req.is_none() && self.owner.is_none() {
            self.done = true;
            self.alive.store(false, Relaxed);
        }
    }

    /// Mail the response head and body bytes collected so far (if any) to the owner.
    fn flush_resp(&self, ctx: &WorkerCtx, head: &mut Option<Parcel>, data: &mut Option<Bytes>) {
        if head.is_some() || data.is_some() {
            let (head, data) = (head.take(), data.take());
            self.to_owner(
                ctx,
                Kind::Resp {
                    head,
                    data,
                    end: None,
                    tag: self.tag,
                },
            );
        }
    }

    /// Tunnel: what the upstream sent goes to the client as it is.
    fn tunnel_input(&mut self, ctx: &WorkerCtx) {
        if !self.io.input.is_empty() && !self.done {
            let b = self.io.input.split().freeze();
            self.unacked += b.len();
            self.to_owner(ctx, Kind::Data(b));
        }
    }

    fn apply(&mut self, ctx: &mut WorkerCtx, kind: Kind, now: Instant) {
        if matches!(kind, Kind::Send(_) | Kind::ReqData(..)) {
            // The connection stamps requests with the time it last saw: bring it up to now,
            // or a request sent after an idle spell would start with its timeout half gone.
            self.conn.handle_timeout(now);
        }
        match kind {
            Kind::Send(req) => {
                // Used in place (no copy out of the box), then the box carries the response
                // head back.
                if let Some(r) = req.send_req() {
                    self.send_request(ctx, r, now);
                }
                req.keep(&mut self.spare);
            }
            Kind::ReqData(b, end) if end && self.req_trailers.is_some() => {
                self.owed += b.len();
                self.end_with_trailers(b, now);
            }
            Kind::Trailers(t, _) => self.req_trailers = Some(t),
            Kind::ReqData(b, end) => {
                let n = b.len();
                if let Some(id) = self.req {
                    // A `Length` body ends by itself; its final empty `end` is refused: fine.
                    let _ = self.conn.send_data(now, id, b, end);
                }
                self.owed += n;
            }
            Kind::Raw(b) if self.tunnel && !self.done => {
                self.owed += b.len();
                self.io.out.push(b);
            }
            Kind::TunnelEof => self.io.shutdown_write(),
            Kind::Ack(n, _) => self.unacked = self.unacked.saturating_sub(n),
            Kind::Close => {
                self.alive.store(false, Relaxed);
                if self.owner.is_some() && !self.reported {
                    self.fail(ctx, UpFailure::Broken);
                }
                self.owner = None;
                self.done = true;
            }
            _ => {}
        }
    }

    /// A request from the owner: send it (or refuse it, or fail).
    fn send_request(&mut self, ctx: &mut WorkerCtx, req: &SendReq, now: Instant) {
        let SendReq { head, extra, .. } = req;
        self.req_trailers = None;
        self.owner = Some(req.owner);
        self.tag = Some(req.tag);
        if self.inflight > 0 && !self.done && (self.refused || !self.conn.can_send_request()) {
            // Pipelined behind responses after which this connection closes.
            self.refused = true;
            return;
        }
        self.reported = false;
        if self.inflight == 0 {
            self.reused_idle = self.served;
        }
        if self.done || self.io.saw_eof() || !self.alive.load(Relaxed) {
            // Went away while idle: nothing of this request was written, so it goes again
            // whatever its method (unless requests before it are still unanswered here).
            let unsent = self.inflight == 0;
            self.fail_with(ctx, UpFailure::Broken, unsent);
            return;
        }
        // Fields in the order: host, x-forwarded-for, x-forwarded-proto, x-forwarded-host,
        // traceparent, via (the lines made once are copied as they are).
        let sh = &*self.shared;
        let traceparent = FieldPiece::Field("traceparent", &extra.traceparent[..]);
        let via = FieldPiece::Lines(if extra.h2 { &sh.via2 } else { &sh.via });
        let usual;
        let mut all: SmallVec<[FieldPiece<'_>; 8]> = SmallVec::new();
        let fields: &[FieldPiece<'_>] = match (&extra.fwd, extra.rare.as_deref()) {
            // The usual request: the connection's lines (`x-forwarded-host` included), no
            // rare field.
            (Fwd::Lines(fwd), None) => {
                usual = [FieldPiece::Lines(fwd), traceparent, via];
                &usual
            }
            (fwd, rare) => {
                let (host, upgrade, keep_xfp, keep_xfh, own_xfh) = match rare {
                    Some(r) => (
                        r.host.as_ref(),
                        r.upgrade.as_ref(),
                        r.keep_xfp,
                        r.keep_xfh,
                        r.own_xfh,
                    ),
                    None => (None, None, false, false, false),
                };
                // Our `x-forwarded-host`, unless the connection's lines carry it: the host
                // the client asked for (its `Host`, or an absolute-form target's
                // authority; none from an HTTP/1.0 client that sent no `Host`).
                let xfh = (!keep_xfh && (own_xfh || matches!(fwd, Fwd::Xff(_))))
                    .then(|| head.host())
                    .flatten()
                    .filter(|h| h.bytes().all(|c| c >= b' ' && c != 0x7f))
                    .map(|h| FieldPiece::Field("x-forwarded-host", h.as_bytes()));
                if let Some(h) = host {
                    all.push(FieldPiece::Field("host", h));
                }
                match fwd {
                    Fwd::Lines(fwd) => all.push(FieldPiece::Lines(fwd)),
                    Fwd::Xff(xff) => {
                        if let Some(x) = xff.as_ref().filter(|x| !x.is_empty()) {
                            all.push(FieldPiece::Field("x-forwarded-for", x));
                        }
                        if !keep_xfp {
                            all.push(FieldPiece::Lines(&sh.xfp));
                        }
                        if let Some(x) = rare.and_then(|r| r.xfcc.as_ref()) {
                            all.push(FieldPiece::Lines(x));
                        }
                    }
                }
                if let Some(xfh) = xfh {
                    all.push(xfh);
                }
                all.push(traceparent);
                all.push(via);
                if let Some(u) = upgrade {
                    all.push(FieldPiece::Field("connection", b"upgrade"));
                    all.push(FieldPiece::Field("upgrade", u));
                }
                &all
            }
        };
        let body = match head.body_kind() {
            BodyKind::Empty => Body::Empty,
            BodyKind::Length(n) => Body::Length(n),
            _ => Body::Chunked,
        };
        // The client's fields go out as parsed (validated once, by our server side),
        // ours after them.
        let named = if extra.conn_named {
            connection_names(head.headers())
        } else {
            SmallVec::new()
        };
        // A `host` of ours (absolute-form target, or none sent) replaces the client's.
        let own_host = extra.rare.as_ref().is_some_and(|r| r.host.is_some());
        let kept = extra.rare.as_ref().map_or((false, false, false), |r| {
            (r.keep_xfp, r.keep_xfh, r.keep_xfcc)
        });
        let keep = |n: &[u8]| {
            forward_request_field(n, &named, kept) && !(own_host && n.eq_ignore_ascii_case(b"host"))
        };
        let sent = self
            .conn
            .send_forwarded_request_extra(now, head, keep, fields, body);
        drop(all);
        match sent {
            Ok(id) => {
                self.req = Some(id);
                self.inflight += 1;
            }
            // Not sent: the responses in flight still come.
            Err(_) if self.inflight > 0 => self.refused = true,
            Err(_) => self.fail_with(ctx, UpFailure::Broken, true),
        }
    }

    fn ack(&mut self, ctx: &WorkerCtx, n: usize) {
        let a = n.min(self.owed);
        if a > 0 {
            self.owed -= a;
            self.to_owner(ctx, Kind::Ack(a, self.tag.unwrap_or(0)));
        }
    }
}

// ----------------------------------------------------------------------------------------
// The Session
// ----------------------------------------------------------------------------------------

impl Half for Down {
    type Shared = HttpShared;
    type Mail = Mail;

    ferry_driver::half_io!();

    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        if self.h2.is_some() {
            return self.h2_wants_read(ctx);
        }
        if let Some(t) = self.tunnel.as_ref() {
            return !t.closed
                && self.unacked < WINDOW
                && self.io.out.len() < ctx.options.write_high_water;
        }
        !self.errored
            && !self.abort
            && self.backlog.len() < 64
            && self.unacked < WINDOW
            && self.io.out.len() < ctx.options.write_high_water
            && self.io.input.len() < ctx.options.input_high_water
            // With an exchange in flight the socket is watched even when the connection
            // takes no more input (`Connection: close`, the pipeline full): a client that
            // leaves (EOF, reset) is seen at once, and its upstream work is aborted. Bytes
            // the connection does not take wait in the input (bounded above).
            && (self.conn.wants_read() || self.ex.is_some())
    }

    fn release_idle(&mut self) {
        // No unconsumed input at the drivers' idle sweep: the empty output buffer and queues go.
        self.conn.release_idle_buffers();
    }

    fn is_finished(&self) -> bool {
        if self.h2.is_some() {
            return self.h2_is_finished();
        }
        match self.tunnel.as_ref() {
            Some(t) => t.closed && self.io.out.is_empty(),
            None => {
                self.abort || (self.conn.is_closed() && self.io.out.is_empty() && self.ex.is_none())
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.h2.is_some() {
            return self.h2_poll_timeout();
        }
        if self.ex.is_some() || self.tunnel.is_some() {
            // The upstream's timeouts govern an exchange in progress, but for a stall.
            self.stall_deadline()
        } else {
            self.conn.poll_timeout()
        }
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.process_input(ctx, now);
    }

    fn wants_process(&self) -> bool {
        // With no input and no event waiting, `process_input` finds nothing: what the
        // connection has to send is collected after every mail too, and the events waiting
        // for earlier exchanges (`backlog`) are resumed by the mail that ends those.
        if self.h2.is_some() {
            return self.h2_wants_process();
        }
        !self.io.input.is_empty() || self.tunnel.is_some() || self.conn.has_events()
    }

    fn on_written(&mut self, ctx: &WorkerCtx, n: usize) {
        if self.h2.is_some() {
            self.h2_flush(ctx, ctx.clock.now());
            return;
        }
        // Usually the exchange ended before its last bytes were written: no clock read then.
        if n > 0 && self.ex.is_some() {
            self.progress = ctx.clock.now();
        }
        self.ack(ctx, n);
    }

    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        // What came so far is all there is: HTTP/1.x unless it was the whole preface.
        self.sniffing = false;
        if self.h2.is_some() {
            self.h2_on_eof(ctx, now);
            return;
        }
        self.process_input(ctx, now);
        if let Some(t) = self.tunnel.as_ref() {
            // The client is done sending: the upstream gets a FIN after what it has queued,
            // and the tunnel ends once the upstream is done too.
            if t.up_eof {
                self.end_tunnel(ctx);
            } else if !t.closed {
                send(ctx, t.up, Kind::TunnelEof);
            }
            return;
        }
        if self.ex.as_ref().is_some_and(Exchange::gone_on_eof) {
            // The client half-closed with a complete request in flight: HTTP/1.1 cannot tell
            // "done sending" from "gone", and nginx (`proxy_ignore_client_abort off`) and
            // Envoy take it as gone: the exchanges end, their upstream connections close.
            self.abandon(ctx, now);
            self.abort = true;
            return;
        }
        self.conn.handle_eof(now);
        self.process_input(ctx, now);
    }

    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.h2.is_some() {
            self.h2_on_timeout(ctx, now);
            return;
        }
        if self.stall_deadline().is_some_and(|d| now >= d) {
            self.stalled(ctx, now);
        }
        self.conn.handle_timeout(now);
        self.process_input(ctx, now);
    }

    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.h2.is_some() {
            self.h2_shutdown(ctx, now);
            return;
        }
        self.conn.close();
        self.process_input(ctx, now);
    }

    fn on_mail(&mut self, ctx: &mut WorkerCtx, mail: Mail, now: Instant) {
        if self.h2.is_some() {
            self.h2_apply(ctx, mail.0, now);
            self.h2_flush(ctx, now);
            return;
        }
        self.progress = now;
        self.apply(ctx, mail.0, now);
        self.collect();
    }

    fn close(mut self, ctx: &mut WorkerCtx) {
        self.shared.stats.downstream_open.fetch_sub(1, Relaxed);
        if self.h2.is_some() {
            self.h2_close(ctx);
            return;
        }
        self.end_tunnel(ctx);
        let now = ctx.clock.now();
        self.abandon(ctx, now);
    }
}

impl Downstream for Down {
    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<HttpShared>,
        mut io: Io,
        now: Instant,
    ) -> Option<Self> {
        if shared.cfg.tls.is_some() {
            // HTTPS: TLS from the first byte (the relay decrypts into `io.input`), with the
            // loaded configuration's certificate (a reload rotates it for new connections).
            let snap = shared.live.snapshot();
            io.start_tls(ferry_tls::Tls::server(snap.cfg.tls.as_ref()?).ok()?);
        }
        shared.stats.downstream_open.fetch_add(1, Relaxed);
        Some(Down {
            io,
            shared: shared.clone(),
            conn: ServerConnection::new(ctx.http.clone(), now),
            errored: false,
            abort: false,
            backlog: VecDeque::new(),
            ex: None,
            pipe: VecDeque::new(),
            tag: 0,
            last_done: None,
            unacked: 0,
            owed: 0,
            progress: now,
            tunnel: None,
            peer_ip: None,
            fwd: None,
            fwd_base: None,
            fwd_host: None,
            trusted: false,
            xfcc: None,
            spare: None,
            sniffing: true,
            h2: None,
        })
    }

    fn drop_mail(ctx: &mut WorkerCtx, shared: &HttpShared, mail: Mail) {
        drop_stale(ctx, shared, mail.0)
    }

    fn tick(ctx: &mut WorkerCtx, shared: &HttpShared, now: Instant) -> Option<Instant> {
        let mut ws = shared.worker(ctx.index);
        ws.pool.handle_timeout(now);
        ws.pump(ctx, &shared.stats);
        shared.stats.publish_pool(ctx.index, &ws.pool.metrics());
        drop(ws);
        if let Some(log) = shared.access.as_deref() {
            log.flush(ctx.index);
        }
        if let Some(l) = shared.limiter.as_ref() {
            l.sweep(now);
        }
        Some(now + std::time::Duration::from_millis(100))
    }
}

impl Half for Up {
    type Shared = HttpShared;
    type Mail = Mail;

    ferry_driver::half_io!();

    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        if self.h2.is_some() {
            return self.h2_wants_read(ctx);
        }
        !self.done
            && self.unacked < WINDOW
            && self.io.input.len() < ctx.options.input_high_water
            && (self.tunnel || self.conn.wants_read())
    }

    fn is_finished(&self) -> bool {
        self.done && self.io.out.is_empty()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.tunnel {
            None
        } else if self.h2.is_none() {
            self.conn.poll_timeout()
        } else {
            self.h2_poll_timeout()
        }
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.process_input(ctx, now);
    }

    fn wants_process(&self) -> bool {
        // With no input and no event waiting (`Kind::Send` may raise a timeout error), the
        // call only moves output (done after every mail too), unless the connection closed:
        // then it may be done with.
        !self.io.input.is_empty()
            || self.tunnel
            || !self.io.is_connected()
            || (self.h2.is_none() && (self.conn.has_events() || self.conn.is_closed()))
    }

    fn on_written(&mut self, ctx: &WorkerCtx, n: usize) {
        if self.h2.is_some() {
            self.h2_ack(ctx);
            return;
        }
        self.ack(ctx, n);
    }

    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.h2.is_some() {
            self.h2_on_eof(ctx, now);
            return;
        }
        self.process_input(ctx, now);
        if self.tunnel {
            // The upstream is done sending: the client gets what came before, then a FIN;
            // this connection closes when the client side is done too (`Close`).
            self.to_owner(ctx, Kind::TunnelEof);
            return;
        }
        self.conn.handle_eof(now);
        self.process_input(ctx, now);
        self.alive.store(false, Relaxed);
        if self.owner.is_some() && self.inflight > 0 {
            self.fail(ctx, UpFailure::Broken);
        }
        if self.owner.is_none() {
            self.done = true;
        }
    }

    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.h2.is_some() {
            self.h2_on_timeout(ctx, now);
            return;
        }
        self.conn.handle_timeout(now);
        self.process_input(ctx, now);
    }

    fn begin_shutdown(&mut self, _ctx: &mut WorkerCtx, _now: Instant) {
        if self.owner.is_none() {
            // Idle (in the pool): gone; the pool's validator skips it from now.
            self.alive.store(false, Relaxed);
            self.done = true;
        }
    }

    fn on_mail(&mut self, ctx: &mut WorkerCtx, mail: Mail, now: Instant) {
        if self.h2.is_some() {
            self.h2_apply(ctx, mail.0, now);
            return;
        }
        self.apply(ctx, mail.0, now);
        while let Some(b) = self.conn.poll_transmit() {
            self.io.out.push(b);
        }
    }

    fn close(mut self, ctx: &mut WorkerCtx) {
        self.alive.store(false, Relaxed);
        if self.owner.is_some() && !self.reported {
            self.fail(ctx, UpFailure::Broken);
        } else if self.tunnel {
            // The tunnel's client has not left (it would have said `Close`): end its side.
            self.to_owner(ctx, Kind::Close);
        }
        self.ticket_failed(ctx);
        self.shared.stats.upstreams[self.idx]
            .open
            .fetch_sub(1, Relaxed);
    }
}

impl Upstream for Up {
    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<HttpShared>,
        mut io: Io,
        tag: u64,
        now: Instant,
    ) -> Option<Self> {
        let slot = (tag >> 8) as usize;
        let idx = (tag & 0xFF) as usize;
        let u = shared.stats.upstreams.get(idx)?;
        u.open.fetch_add(1, Relaxed);
        // Who waits for this connect (to be told if it fails).
        let (owner, wait) = shared
            .worker(ctx.index)
            .tickets
            .get(slot)
            .and_then(|t| t.as_ref().and_then(|(_, o)| *o))
            .map_or((None, 0), |(p, w)| (Some(p), w));
        io.set_connect_deadline(Some(now + shared.tun.connect_timeout()));
        if let Some(t) = &shared.cfg.upstream_tls {
            // HTTPS upstream: the handshake starts once the connect completes; the request
            // queued meanwhile is held inside the session until the handshake ends.
            let name = t.name_for(&shared.stats.upstreams.get(idx)?.upstream);
            io.start_tls(ferry_tls::Tls::client(&t.config, &name).ok()?);
        }
        Some(Up {
            io,
            idx,
            shared: shared.clone(),
            conn: ClientConnection::new(shared.client(), now),
            ticket: Some(slot),
            alive: Arc::new(AtomicBool::new(true)),
            owner,
            wait,
            req: None,
            inflight: 0,
            tag: None,
            close_announced: false,
            served: false,
            reused_idle: false,
            refused: false,
            resp_started: false,
            done: false,
            unacked: 0,
            owed: 0,
            reported: false,
            tunnel: false,
            spare: None,
            req_trailers: None,
            h2: shared
                .h2_up
                .as_ref()
                .map(|c| h2_upstream::H2Up::new(c.clone(), now)),
        })
    }

    fn on_connected(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.connected(ctx, now);
    }

    fn connect_failed(&mut self, ctx: &mut WorkerCtx, error: std::io::Error, _now: Instant) {
        tracing::debug!(
            "upstream {} connect failed: {error}",
            self.shared.stats.upstreams[self.idx].addr
        );
        let why = if error.kind() == std::io::ErrorKind::TimedOut {
            UpFailure::ConnectTimeout
        } else {
            UpFailure::Connect
        };
        self.fail(ctx, why);
    }
}

/// Mail for a connection that is gone (or a reused token): a lease for a vanished client
/// goes back to the pool; a request for a vanished upstream connection fails (nothing was
/// sent, so the client may retry it).
fn drop_stale(ctx: &mut WorkerCtx, shared: &HttpShared, kind: Kind) {
    match kind {
        Kind::Leased(lease, _) => {
            shared
                .worker(ctx.index)
                .checkin(ctx, &shared.stats, *lease, true, ctx.clock.now());
        }
        Kind::Send(req) => {
            if let Some(r) = req.send_req() {
                let failed = Kind::Failed {
                    why: UpFailure::Broken,
                    before: true,
                    fresh: false,
                    unsent: true,
                    tag: Some(r.tag),
                    wait: 0,
                };
                send(ctx, r.owner, failed);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOP_BY_HOP: [&str; 10] = [
        "te",
        "expect",
        "trailer",
        "upgrade",
        "connection",
        "keep-alive",
        "content-length",
        "proxy-connection",
        "transfer-encoding",
        "proxy-authorization",
    ];

    #[test]
    fn requests_never_written_go_again_whatever_the_method() {
        let sent = |before_response, fresh, unsent| Sent {
            before_response,
            fresh,
            unsent,
        };
        let broken = UpFailure::Broken;
        // A pooled connection found dead before any byte of the request went out: a POST
        // goes again like a GET (fresh: not counted as a retry; else within the attempts).
        assert!(may_retry(
            broken,
            sent(true, true, true),
            false,
            true,
            false
        ));
        assert!(may_retry(
            broken,
            sent(true, false, true),
            false,
            true,
            true
        ));
        assert!(!may_retry(
            broken,
            sent(true, false, true),
            false,
            true,
            false
        ));
        // A failed connect sent nothing either.
        assert!(may_retry(
            UpFailure::Connect,
            sent(true, false, true),
            false,
            true,
            true
        ));
        // Some bytes written: only idempotent requests go again.
        assert!(!may_retry(
            broken,
            sent(true, true, false),
            false,
            true,
            true
        ));
        assert!(!may_retry(
            broken,
            sent(true, false, false),
            false,
            true,
            true
        ));
        assert!(may_retry(
            broken,
            sent(true, false, false),
            true,
            true,
            true
        ));
        assert!(may_retry(
            broken,
            sent(true, true, false),
            true,
            true,
            false
        ));
        // Never after a response byte, without the body at hand, or for a stalled client.
        assert!(!may_retry(
            broken,
            sent(false, false, true),
            true,
            true,
            true
        ));
        assert!(!may_retry(
            broken,
            sent(true, true, true),
            true,
            false,
            true
        ));
        assert!(!may_retry(
            UpFailure::ClientStalled,
            sent(true, true, true),
            true,
            true,
            true
        ));
    }

    #[test]
    fn mails_stay_small() {
        // Every mail is moved a few times between the halves: the big payloads are boxed.
        assert!(
            std::mem::size_of::<Mail>() <= 64,
            "{}",
            std::mem::size_of::<Mail>()
        );
        // A request's box is filled with one copy: at most 256 bytes is a short one.
        assert!(
            std::mem::size_of::<SendReq>() <= 256,
            "{}",
            std::mem::size_of::<SendReq>()
        );
    }

    #[test]
    fn parcels_are_reused_and_hold_nothing_while_spare() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut conn = ClientConnection::new(Arc::new(ClientConfig::default()), Instant::ZERO);
        conn.send_request(
            Instant::ZERO,
            Method::Get,
            "/",
            &[("host", b"a")],
            Body::Empty,
        )
        .unwrap();
        let mut input = BytesMut::from(&raw[..]);
        conn.handle_input(Instant::ZERO, &mut input).unwrap();
        let Some(CEvent::Response(r)) = conn.poll_event() else {
            panic!()
        };
        let mut spare = None;
        let first = Parcel::head_of(&mut spare, r.clone());
        let at = &*first.0 as *const Payload;
        assert_eq!(first.head().map(|r| r.status()), Some(200));
        assert!(first.send_req().is_none());
        first.keep(&mut spare);
        // The spare holds no value (so no reference into a connection's input buffer).
        assert!(spare
            .as_ref()
            .is_some_and(|b| matches!(*b.0, Payload::Empty)));
        let second = Parcel::head_of(&mut spare, r.clone());
        assert!(spare.is_none());
        assert_eq!(&*second.0 as *const _, at, "the same box again");
        // A second spare is not kept: one is enough.
        let third = Parcel::head_of(&mut spare, r);
        second.keep(&mut spare);
        third.keep(&mut spare);
        assert_eq!(spare.as_ref().map(|b| &*b.0 as *const _), Some(at));
    }

    /// The plain definition [`hop_by_hop`] must agree with.
    fn reference_hop_by_hop(name: &[u8]) -> bool {
        HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
    }

    proptest! {
        /// Word compares agree with `eq_ignore_ascii_case` on any bytes: hop-by-hop names
        /// in random case, near misses (any byte swapped for any other), arbitrary names.
        #[test]
        fn hop_by_hop_is_the_case_insensitive_list(
            k in 0..HOP_BY_HOP.len(),
            flips in proptest::collection::vec(any::<bool>(), 19),
            change in proptest::option::of((0usize..19, any::<u8>())),
            other in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut b: Vec<u8> = HOP_BY_HOP[k]
                .bytes()
                .zip(&flips)
                .map(|(c, &f)| if f { c.to_ascii_uppercase() } else { c })
                .collect();
            if let Some((i, v)) = change {
                let i = i % b.len();
                b[i] = v;
            }
            prop_assert_eq!(hop_by_hop(&b), reference_hop_by_hop(&b));
            prop_assert_eq!(hop_by_hop(&other), reference_hop_by_hop(&other));
            let ours = |n: &[u8]| {
                n.eq_ignore_ascii_case(b"traceparent")
                    || n.eq_ignore_ascii_case(b"x-forwarded-for")
                    || n.eq_ignore_ascii_case(b"x-forwarded-proto")
                    || n.eq_ignore_ascii_case(b"x-forwarded-host")
                    || n.eq_ignore_ascii_case(b"x-forwarded-client-cert")
            };
            for n in [
                &b[..],
                &other[..],
                b"TraceParent",
                b"X-Forwarded-FOR",
                b"traceparenT!",
                b"X-Forwarded-Proto",
                b"x-forwarded-protO!",
                b"X-Forwarded-Host",
                b"x-forwarded-hosT!",
                b"X-Forwarded-Client-Cert",
                b"x-forwarded-client-cerT!",
            ] {
                prop_assert_eq!(
                    forward_request_field(n, &[], (false, false, false)),
                    !(ours(n) || reference_hop_by_hop(n))
                );
                let xfp = n.eq_ignore_ascii_case(b"x-forwarded-proto");
                let xfh = n.eq_ignore_ascii_case(b"x-forwarded-host");
                let xfcc = n.eq_ignore_ascii_case(b"x-forwarded-client-cert");
                prop_assert_eq!(
                    forward_request_field(n, &[], (true, false, false)),
                    xfp || !(ours(n) || reference_hop_by_hop(n))
                );
                prop_assert_eq!(
                    forward_request_field(n, &[], (false, true, false)),
                    xfh || !(ours(n) || reference_hop_by_hop(n))
                );
                prop_assert_eq!(
                    forward_request_field(n, &[], (false, false, true)),
                    xfcc || !(ours(n) || reference_hop_by_hop(n))
                );
            }
        }
    }

    #[test]
    fn hop_by_hop_fields_are_dropped() {
        let raw = Bytes::from_static(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Ok: 2\r\n\r\n",
        );
        let mut conn = ServerConnection::new(
            Arc::new(ferry_http1::ServerConfig::default()),
            Instant::ZERO,
        );
        let mut input = BytesMut::from(&raw[..]);
        conn.handle_input(Instant::ZERO, &mut input).unwrap();
        let Some(SEvent::Request(r)) = conn.poll_event() else {
            panic!()
        };
        let named = connection_names(r.headers());
        assert!(named.as_slice() == [b"X-Secret".as_slice()]);
        for (v, names) in [
            (&b"keep-alive, X-Secret"[..], true),
            (b"x-secret", true),
            (b"keep-alive", false),
            (b"Keep-Alive", false),
            (b"close", false),
            (b"Upgrade", false),
            (b"close, upgrade , TE", false),
            (b"", false),
            (b"keep-alive2", true),
        ] {
            assert_eq!(names_fields(v), names, "{v:?}");
        }
        let names: Vec<&[u8]> = r
            .headers()
            .iter_bytes()
            .map(|(n, _)| n)
            .filter(|n| forward_response_field(n, &named))
            .collect();
        assert_eq!(names, vec![b"Host".as_slice(), b"X-Ok"]);
    }

    /// An absolute-form target's authority becomes the forwarded `host` (RFC 9112 §3.2.2),
    /// whatever `Host` the client sent; other targets keep the client's.
    #[test]
    fn absolute_form_target_sets_the_host() {
        let parse = |raw: &[u8]| {
            let mut conn = ServerConnection::new(
                Arc::new(ferry_http1::ServerConfig::default()),
                Instant::ZERO,
            );
            let mut input = BytesMut::from(raw);
            conn.handle_input(Instant::ZERO, &mut input).unwrap();
            match conn.poll_event() {
                Some(SEvent::Request(r)) => r,
                other => panic!("{other:?}"),
            }
        };
        let up = "127.0.0.1:1";
        let r = parse(b"GET http://evil/x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(host_field(&r, true, &up).as_deref(), Some(&b"evil"[..]));
        let r = parse(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(host_field(&r, true, &up), None);
        assert_eq!(host_field(&r, false, &up).as_deref(), Some(up.as_bytes()));
    }

    /// A response's `Connection` tokens skip the scan only when they name nothing, and
    /// named fields are still dropped.
    #[test]
    fn response_connection_names_match_the_full_scan() {
        for (conn, named) in [
            (None, &[][..]),
            (Some(&b"keep-alive"[..]), &[][..]),
            (Some(b"Close"), &[]),
            (Some(b"Keep-Alive , Upgrade"), &[]),
            (Some(b", ,"), &[]),
            (Some(b"TE, trailer"), &[]),
            (Some(b"x-secret"), &[&b"x-secret"[..]][..]),
            (Some(b"close, X-Secret"), &[b"X-Secret"]),
            (
                Some(b"keep-alive, X-Secret, x-other"),
                &[b"X-Secret", b"x-other"],
            ),
        ] {
            let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
            if let Some(c) = conn {
                raw.extend_from_slice(b"Connection: ");
                raw.extend_from_slice(c);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"X-Secret: 1\r\nX-Ok: 2\r\n\r\n");
            let mut conn = ClientConnection::new(Arc::new(ClientConfig::default()), Instant::ZERO);
            conn.send_request(
                Instant::ZERO,
                Method::Get,
                "/",
                &[("host", b"a")],
                Body::Empty,
            )
            .unwrap();
            let mut input = BytesMut::from(&raw[..]);
            conn.handle_input(Instant::ZERO, &mut input).unwrap();
            let Some(CEvent::Response(r)) = conn.poll_event() else {
                panic!()
            };
            let got = response_connection_names(&r);
            assert_eq!(got, connection_names(r.headers()), "{raw:?}");
            assert_eq!(got.as_slice(), named, "{raw:?}");
            let kept: Vec<&[u8]> = r
                .headers()
                .iter_bytes()
                .map(|(n, _)| n)
                .filter(|n| forward_response_field(n, &got))
                .collect();
            let secret_named = named.iter().any(|n| n.eq_ignore_ascii_case(b"x-secret"));
            let want: &[&[u8]] = if secret_named {
                &[b"X-Ok"]
            } else {
                &[b"X-Secret", b"X-Ok"]
            };
            assert_eq!(kept, want, "{raw:?}");
        }
    }

    #[test]
    fn hop_by_hop_names_any_case_and_nothing_else() {
        // Every hop-by-hop name with one byte's case flipped, or one byte changed.
        for n in HOP_BY_HOP {
            for i in 0..n.len() {
                let mut b = n.as_bytes().to_vec();
                b[i] ^= 0x20;
                assert_eq!(hop_by_hop(&b), reference_hop_by_hop(&b), "{b:?}");
                b[i] ^= 0x20 ^ 0x01;
                assert!(!hop_by_hop(&b), "{b:?}");
            }
        }
        for n in [
            "Connection",
            "KEEP-ALIVE",
            "proxy-connection",
            "Te",
            "trailer",
            "Transfer-Encoding",
            "upgrade",
            "content-length",
            "Proxy-Authorization",
            "expect",
        ] {
            assert!(hop_by_hop(n.as_bytes()), "{n}");
        }
        for n in [
            "host",
            "tee",
            "trailers",
            "upgrades",
            "x-connection",
            "",
            "content-type",
        ] {
            assert!(!hop_by_hop(n.as_bytes()), "{n}");
        }
    }
}
