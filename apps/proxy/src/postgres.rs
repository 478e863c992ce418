//! The PostgreSQL pooling proxy (`--protocol postgres`), run inline on the I/O workers as a
//! `ferry_driver::relay::Relay` ([`PostgresProxy`]) of two halves: client connections
//! ([`PgDown`]) and server connections ([`PgUp`]), PgBouncer-style.
//!
//! - **Startup** (`ferry_postgres::server::Login`). `SSLRequest` gets `S` and TLS starts on
//!   the same connection when the proxy has a certificate (`ProxyConfig::tls`), else `N`
//!   (the client goes on in the clear); `GSSENCRequest` gets `N`. Protocol 3.x
//!   only (else FATAL `0A000`, PostgreSQL 15's words), no replication connections (`0A000`);
//!   `_pq_.` options get NegotiateProtocolVersion. Clients are grouped by **pool key**: user,
//!   database (default: the user) and every other startup parameter except
//!   `application_name`.
//! - **Client authentication** at the proxy: with a client password
//!   ([`PostgresConfig::client_password`]) SCRAM-SHA-256; a wrong password (or another
//!   user than [`PostgresConfig::client_user`]) gets FATAL `28P01`
//!   `password authentication failed for user "…"`. Without one, every client is trusted:
//!   bind the proxy to loopback or set a client password. The client then gets
//!   `AuthenticationOk`, the `ParameterStatus` set of a server connection of its pool key
//!   (taken from the first one opened), a proxy-made `BackendKeyData` and `ReadyForQuery`.
//! - **Server connections** are opened by the worker to an upstream picked round robin
//!   (skipping those whose breaker is open or whose health checks fail), as
//!   [`PostgresConfig::upstream_user`] (else the client's user) with the pool key's database
//!   and parameters, authenticated with the upstream password (SCRAM-SHA-256, MD5 or
//!   cleartext, as the server asks; `ferry_postgres::client::Login`, SCRAM keys cached per
//!   upstream and role). With upstream TLS (`ProxyConfig::upstream_tls`) each one (and a
//!   CancelRequest's) sends `SSLRequest` first and starts TLS on `S` (`sslmode=verify-full`:
//!   `N`, or a byte after the `S`, fails the login). At most
//!   [`PostgresConfig::pool_size`] per pool key per upstream per worker; idle ones close
//!   after `idle_timeout`. A client waiting longer than `pool_wait_timeout` gets `53300`
//!   (an ERROR it can retry after; FATAL during login). A login the server refuses reaches
//!   the waiting clients as the server's FATAL.
//! - **Pooling** ([`PoolMode`]). Transaction mode: a client holds a server connection from
//!   its first message until a `ReadyForQuery` with status `I` when it owes nothing more
//!   (every `Query`, `Sync` and `FunctionCall` answered, no extended-protocol message after
//!   its last `Sync`). A client is **pinned** to its server connection for the rest of its
//!   session when a `Query` or `Parse` text leaves session state
//!   (`ferry_postgres::sql::session_effect`: `SET` without `LOCAL`, `LISTEN`, SQL-level
//!   `PREPARE`, temporary tables, session advisory locks, ...). A client attached to a server
//!   connection of another upstream than the one whose `ParameterStatus` set it was last told
//!   gets the values that differ first (PgBouncer does the same).
//! - **Named prepared statements** (protocol level; transaction mode,
//!   [`PostgresConfig::max_prepared_statements`] > 0, as PgBouncer 1.21) do not pin: the
//!   proxy keeps each client's names and prepares their statements on whichever server
//!   connection serves it, under its own names (`ferry_<random token>_<worker>_<N>`, shared
//!   by identical statements; another client cannot guess them), in order with what the
//!   client sent (`postgres/prepared.rs`). A client's names are PostgreSQL's: a `Parse` of
//!   a name it has is `42P05` (after its text's own errors) and the rest up to `Sync` is
//!   skipped; a `Parse` the server rejects, or skips after an error, leaves no name, a
//!   skipped `Close` leaves the name (a later `Sync` group pipelined behind waits for the
//!   replies that decide). Beyond `max_prepared_statements` names (or a first named
//!   `Parse` pipelined behind replies still owed), its named statements go as they are and
//!   pin it, as with 0. A lone `DEALLOCATE name` or `DEALLOCATE ALL` `Query` of the
//!   client's own statements is answered by the proxy once every reply before it came
//!   (`DEALLOCATE` / `DEALLOCATE ALL`, `25P02` in a failed transaction): it affects only
//!   that client's names, the shared server statements stay, and it does not pin (as
//!   PgBouncer 1.22). Any other `Query` or `Parse` text with `DEALLOCATE` or `DISCARD`
//!   (it pins: SQL-level statements, `DISCARD ALL`, a `DEALLOCATE` of a server name read
//!   in `pg_prepared_statements`) makes the server forget the proxy's statements first
//!   (they are closed and parsed again at their next use) and clears the client's names
//!   (only the one named by a lone `DEALLOCATE name`); a `Parse` text's run at its
//!   `Execute` is approximated by that (names go at the `Parse`). Session mode:
//!   one server connection for the client's whole session. A pinned or session connection
//!   whose client leaves between transactions is reset with `DISCARD ALL` before it is
//!   reused; one left mid-transaction or mid-query is closed. A client's `Terminate` is
//!   never forwarded.
//! - **Between queries** (transaction mode): each send tells the server half how many
//!   `ReadyForQuery` replies it asks for and whether the client keeps the connection anyway
//!   (pinned, unsynced, session mode). The server half's scan (`scan`) stops at the
//!   `ReadyForQuery` `I` that answers the last of them: what the server says after it until
//!   the client sends again is not the client's (PgBouncer drops it too). A FATAL there
//!   (a server terminated right after its last answer) is logged at info level and the
//!   connection closed without telling the client, which gives it back (never pooled: see
//!   `Pool::went`) and whose next query goes to another one.
//! - **Cancel.** A `CancelRequest` with a proxy-made key, on any worker, opens a connection
//!   to the upstream of that client's current server connection and sends the server's own
//!   key. Unknown keys are ignored (closed silently, as PostgreSQL does).
//! - **Limits.** A client message longer than [`PostgresConfig::max_message_bytes`] is a
//!   FATAL `08P01`. Messages stream through (only `Query` and `Parse` are held whole, to
//!   be read, and `Bind`, `Describe`, `Close` of a client with named statements); each
//!   direction stops reading when the other side has 256 KiB unwritten.
//!   A server connection that breaks under a client gives it FATAL `08006` (what reached
//!   the server is not retried: SQL is not idempotent) and counts as a failure for the
//!   upstream's breaker. A client whose server connection broke before it took any of the
//!   client's messages (it died idle in the pool in the loop turn the client took it) is
//!   given another one, where its named statements are prepared again as usual.
//! - **Drain** (SIGTERM): idle clients get FATAL `57P01`; a client in a transaction gets it
//!   when the transaction ends.
//! - **Admin console** (`postgres/admin.rs`): a client of the database `ferry` or
//!   `pgbouncer` is authenticated as any other, then answered by the proxy itself
//!   (`SHOW POOLS|CLIENTS|SERVERS|STATS|CONFIG|STATE|VERSION|HELP`, `PAUSE`, `RESUME`,
//!   `KILL`, `KILL_CLIENT`, `RECONNECT`, `WAIT_CLOSE`, `SHUTDOWN`, ..., as PgBouncer's
//!   console). Every connection publishes its state to the console's registry
//!   after each event it handles (`show`), never blocking on the console.

mod admin;
mod cancel;
mod prepared;
mod startup;
mod track;

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_driver::relay::{Downstream, Half, Io, Peer, Relay, Upstream};
use ferry_driver::WorkerCtx;
use ferry_postgres::auth::{AuthError, DerivedKeys, ScramSecret, ScramServer};
use ferry_postgres::backend::{self, sqlstate, TxStatus};
use ferry_postgres::message::{Step, Walker};
use ferry_postgres::{client, frontend, message, server};
use ferry_proto::Instant;
use ferry_reliability::{BreakerEvent, BreakerState, CircuitBreaker, Permit};

use crate::config::ProxyConfig;
use crate::metrics::ProxyStats;
use crate::reload::{Live, Snapshot, Tunables};
use cancel::{CancelCell, CancelTable, Rng};
use startup::PoolKey;
use track::Tracker;

/// The PostgreSQL proxy as a driver session.
pub type PostgresProxy = Relay<PgDown, PgUp>;

/// Unwritten bytes on one side that stop reading on the other.
const WINDOW: usize = 256 * 1024;
/// Time a client has to send its startup packet and authenticate.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Distinct pool keys per worker.
const MAX_POOLS: usize = 10_000;
/// Largest server message read whole during a server connection's login.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;
/// The FATAL of a client whose server connection broke.
const LOST: &str = "ferry proxy: server connection lost";
/// The same after `--response-timeout`.
const SILENT: &str = "ferry proxy: server connection lost: no reply within --response-timeout";
/// SCRAM iterations of the proxy's own client verifier (PostgreSQL's default).
const SCRAM_ITERATIONS: u32 = 4096;

/// `--pool-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolMode {
    /// A server connection per transaction (PgBouncer's `transaction`).
    #[default]
    Transaction,
    /// A server connection per client session.
    Session,
}

impl FromStr for PoolMode {
    type Err = String;
    fn from_str(s: &str) -> Result<PoolMode, String> {
        match s {
            "transaction" => Ok(PoolMode::Transaction),
            "session" => Ok(PoolMode::Session),
            _ => Err(format!(
                "unknown pool mode `{s}` (use transaction or session)"
            )),
        }
    }
}

/// PostgreSQL settings of a proxy.
#[derive(Clone)]
pub struct PostgresConfig {
    /// Most server connections per pool key per upstream per I/O worker. Default 10.
    pub pool_size: usize,
    /// Transaction or session pooling. Default transaction.
    pub pool_mode: PoolMode,
    /// Longest client message (bytes, tag included). Default 64 MiB.
    pub max_message_bytes: usize,
    /// The user server connections log in as (default: the client's).
    pub upstream_user: Option<String>,
    /// The password server connections log in with, if the server asks for one.
    pub upstream_password: Option<Vec<u8>>,
    /// The only user clients may log in as (with `client_password`).
    pub client_user: Option<String>,
    /// Clients authenticate to the proxy with this password (SCRAM-SHA-256); `None`:
    /// clients are trusted.
    pub client_password: Option<Vec<u8>>,
    /// Longest wait for a server's reply while a client waits for one. Default none
    /// (queries may run long).
    pub response_timeout: Option<Duration>,
    /// Transaction mode: protocol-level named prepared statements kept per client and
    /// prepared on server connections as needed (at most this many per server connection,
    /// least recently used closed first; at most this many per client, more pin the
    /// client), as PgBouncer's `max_prepared_statements`. 0: a named statement pins the
    /// client to its server connection. Default 200.
    pub max_prepared_statements: usize,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            pool_size: 10,
            pool_mode: PoolMode::Transaction,
            max_message_bytes: 64 << 20,
            upstream_user: None,
            upstream_password: None,
            client_user: None,
            client_password: None,
            response_timeout: None,
            max_prepared_statements: 200,
        }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("pool_size", &self.pool_size)
            .field("pool_mode", &self.pool_mode)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("upstream_user", &self.upstream_user)
            .field(
                "upstream_password",
                &self.upstream_password.as_ref().map(|_| "<redacted>"),
            )
            .field("client_user", &self.client_user)
            .field(
                "client_password",
                &self.client_password.as_ref().map(|_| "<redacted>"),
            )
            .field("response_timeout", &self.response_timeout)
            .field("max_prepared_statements", &self.max_prepared_statements)
            .finish()
    }
}

/// A server connection as the pool hands it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SrvRef {
    peer: Peer,
    up: usize,
    pid: i32,
    secret: i32,
    /// Its database's `RECONNECT` generation when it was made (admin console).
    epoch: u32,
}

/// One pool key's server connections on one worker.
#[derive(Debug)]
struct Pool {
    key: Arc<PoolKey>,
    idle: Vec<SrvRef>,
    /// Per upstream: connections open or opening.
    count: Vec<u32>,
    /// Per upstream: the `ParameterStatus` set of its last server login.
    params: Vec<Option<ServerParams>>,
    waiters: VecDeque<Peer>,
    /// Server connections that closed while a client held them, until that client hears
    /// it (`Lost`) or gives the server back: a client may give back a server that died
    /// after its last answer and before the client read that answer (the mail of one loop
    /// turn), and a dead server must not be pooled. At most [`WENT_CAP`] (older ones are
    /// long past that turn).
    went: Vec<Peer>,
}

/// See [`Pool::went`].
const WENT_CAP: usize = 64;

/// A connect in flight, by its tag.
#[derive(Debug)]
enum Pending {
    Server {
        pool: usize,
        up: usize,
        permit: Permit,
    },
    Cancel {
        up: usize,
        pid: i32,
        secret: i32,
    },
}

/// What a client asking for a server connection gets.
#[derive(Debug)]
enum Acquire {
    Got(SrvRef),
    Wait,
    NoUpstream,
}

/// One worker's pools and breakers (locked only by that worker's thread).
#[derive(Debug)]
struct PgWorker {
    /// The configuration generation this state was built for.
    generation: u64,
    index: usize,
    ids: HashMap<Arc<PoolKey>, usize>,
    pools: Vec<Pool>,
    breakers: Vec<CircuitBreaker>,
    rr: usize,
    next_tag: u64,
    pending: HashMap<u64, Pending>,
    /// Named prepared statements by text, shared by this worker's clients.
    stmts: prepared::Registry,
    /// Gauges and counters for `/metrics` (`ProxyStats::pool`): active, idle, connecting,
    /// waiting, created, closed, failed, timed out.
    m: [u64; 8],
}

const M_ACTIVE: usize = 0;
const M_IDLE: usize = 1;
const M_CONNECTING: usize = 2;
const M_WAITING: usize = 3;
const M_CREATED: usize = 4;
const M_CLOSED: usize = 5;
const M_FAILED: usize = 6;
const M_TIMED_OUT: usize = 7;

/// After a reload dropped an upstream: the most recently used idle server connection on an
/// upstream still listed (those of dropped ones stay until their idle timeout closes them).
#[cold]
fn idle_listed(idle: &mut Vec<SrvRef>, stats: &ProxyStats) -> Option<SrvRef> {
    let k = idle
        .iter()
        .rposition(|s| stats.upstreams[s.up].enabled.load(Relaxed))?;
    Some(idle.remove(k))
}

impl PgWorker {
    /// Take a reloaded configuration: breakers and per-pool counts for new upstream slots
    /// (all breakers anew when their settings changed). A dropped upstream gets no new
    /// server connection and its idle ones are not handed out again (they close at
    /// `idle_timeout`); connections serving clients finish their work.
    #[cold]
    fn refresh(&mut self, snap: &Snapshot, stats: &ProxyStats) {
        let cfg = &snap.cfg;
        let n = stats.upstreams.len();
        if self
            .breakers
            .first()
            .is_some_and(|b| *b.config() != cfg.breaker)
        {
            self.breakers.clear();
        }
        self.breakers
            .resize_with(n, || CircuitBreaker::new(cfg.breaker.clone()));
        for p in &mut self.pools {
            p.count.resize(n, 0);
            p.params.resize(n, None);
        }
        self.generation = snap.generation;
    }

    fn publish(&self, stats: &ProxyStats) {
        if let Some(p) = stats.pool.get(self.index) {
            for (a, v) in p.iter().zip(self.m) {
                a.store(v, Relaxed);
            }
        }
    }

    fn bump(&mut self, i: usize, up: bool) {
        self.m[i] = if up {
            self.m[i] + 1
        } else {
            self.m[i].saturating_sub(1)
        };
    }

    /// The pool id of `key`, made if new (`None`: too many pools).
    fn pool_id(&mut self, key: &PoolKey, ups: usize) -> Option<usize> {
        if let Some(&i) = self.ids.get(key) {
            return Some(i);
        }
        if self.pools.len() >= MAX_POOLS {
            return None;
        }
        let key = Arc::new(key.clone());
        let i = self.pools.len();
        self.pools.push(Pool {
            key: key.clone(),
            idle: Vec::new(),
            count: vec![0; ups],
            params: vec![None; ups],
            waiters: VecDeque::new(),
            went: Vec::new(),
        });
        self.ids.insert(key, i);
        Some(i)
    }

    /// A server connection for `client`: an idle one, else wait (opening one more if the
    /// pool may grow).
    fn acquire(
        &mut self,
        ctx: &WorkerCtx,
        sh: &PgShared,
        pool: usize,
        client: Peer,
        now: Instant,
    ) -> Acquire {
        let idle = &mut self.pools[pool].idle;
        // The most recently used one, on an upstream the configuration still lists.
        let last_ok = idle
            .last()
            .map(|s| sh.stats.upstreams[s.up].enabled.load(Relaxed));
        let got = match last_ok {
            Some(true) => idle.pop(),
            Some(false) => idle_listed(idle, &sh.stats),
            None => None,
        };
        if let Some(s) = got {
            self.bump(M_IDLE, false);
            self.bump(M_ACTIVE, true);
            self.publish(&sh.stats);
            return Acquire::Got(s);
        }
        let opened = self.open(ctx, sh, pool, now);
        if !opened && self.pools[pool].count.iter().all(|&c| c == 0) {
            return Acquire::NoUpstream;
        }
        self.pools[pool].waiters.push_back(client);
        self.bump(M_WAITING, true);
        self.publish(&sh.stats);
        Acquire::Wait
    }

    /// Open one more server connection for `pool` if an upstream has room.
    fn open(&mut self, ctx: &WorkerCtx, sh: &PgShared, pool: usize, now: Instant) -> bool {
        // The slots this worker's state knows (a reload may be adding more right now).
        let n = self.breakers.len();
        let size = sh.tun.pool_size().max(1);
        for k in 0..n {
            let i = (self.rr + k) % n;
            let u = &sh.stats.upstreams[i];
            if self.pools[pool].count[i] >= size
                || !u.usable()
                || self.breakers[i].state(now) == BreakerState::Open
            {
                continue;
            }
            let Some(addr) = u.current() else { continue };
            let Ok(permit) = self.breakers[i].try_acquire(now) else {
                continue;
            };
            let tag = self.next_tag;
            self.next_tag += 1;
            if !ctx.connect(addr, tag) {
                self.breakers[i].on_ignored(permit);
                return false;
            }
            u.connects.fetch_add(1, Relaxed);
            self.pending.insert(
                tag,
                Pending::Server {
                    pool,
                    up: i,
                    permit,
                },
            );
            self.pools[pool].count[i] += 1;
            self.rr = i + 1;
            self.bump(M_CONNECTING, true);
            self.bump(M_CREATED, true);
            return true;
        }
        false
    }

    /// `srv` is free: to the first waiter (returned: tell it), else idle.
    fn release(&mut self, sh: &PgShared, pool: usize, srv: SrvRef) -> Option<Peer> {
        let p = &mut self.pools[pool];
        if let Some(i) = p.went.iter().position(|&g| g == srv.peer) {
            // It closed already (`gone` counted it out): not pooled, nobody gets it.
            p.went.swap_remove(i);
            return None;
        }
        let w = p.waiters.pop_front();
        if w.is_some() {
            self.bump(M_WAITING, false);
        } else {
            p.idle.push(srv);
            self.bump(M_ACTIVE, false);
            self.bump(M_IDLE, true);
        }
        self.publish(&sh.stats);
        w
    }

    /// A server that just logged in: to the first waiter (returned), else idle.
    fn ready(&mut self, sh: &PgShared, pool: usize, srv: SrvRef) -> Option<Peer> {
        self.bump(M_CONNECTING, false);
        self.bump(M_ACTIVE, true);
        self.release(sh, pool, srv)
    }

    /// Take `srv` out of the idle list (idle timeout, drain); `false`: not there (taken).
    fn remove_idle(&mut self, sh: &PgShared, pool: usize, srv: Peer) -> bool {
        let p = &mut self.pools[pool];
        match p.idle.iter().position(|s| s.peer == srv) {
            Some(i) => {
                p.idle.swap_remove(i);
                self.bump(M_IDLE, false);
                self.bump(M_ACTIVE, true);
                self.publish(&sh.stats);
                true
            }
            None => false,
        }
    }

    /// The client that held `srv` heard it closed (`Lost`): it will not give it back.
    fn forget_went(&mut self, pool: usize, srv: Peer) {
        let went = &mut self.pools[pool].went;
        if let Some(i) = went.iter().position(|&g| g == srv) {
            went.swap_remove(i);
        }
    }

    /// A client stopped waiting.
    fn unwait(&mut self, sh: &PgShared, pool: usize, client: Peer) {
        let p = &mut self.pools[pool];
        if let Some(i) = p.waiters.iter().position(|&c| c == client) {
            p.waiters.remove(i);
            self.bump(M_WAITING, false);
            self.publish(&sh.stats);
        }
    }

    /// A server connection of `pool` to upstream `up` closed (`idle`: it was in the idle
    /// list, `active`: counted active). Returns the waiters to fail when none is left.
    #[allow(clippy::too_many_arguments)]
    fn gone(
        &mut self,
        ctx: &WorkerCtx,
        sh: &PgShared,
        pool: usize,
        up: usize,
        me: Peer,
        active: bool,
        now: Instant,
    ) -> Vec<Peer> {
        let p = &mut self.pools[pool];
        p.count[up] = p.count[up].saturating_sub(1);
        let was_idle = match p.idle.iter().position(|s| s.peer == me) {
            Some(i) => {
                p.idle.swap_remove(i);
                true
            }
            None => false,
        };
        if was_idle {
            self.bump(M_IDLE, false);
        } else if active {
            self.bump(M_ACTIVE, false);
            let went = &mut self.pools[pool].went;
            if went.len() == WENT_CAP {
                went.remove(0);
            }
            went.push(me);
        }
        self.bump(M_CLOSED, true);
        let mut failed = Vec::new();
        if !self.pools[pool].waiters.is_empty()
            && !self.open(ctx, sh, pool, now)
            && self.pools[pool].count.iter().all(|&c| c == 0)
        {
            failed.extend(self.pools[pool].waiters.drain(..));
            self.m[M_WAITING] = self.m[M_WAITING].saturating_sub(failed.len() as u64);
        }
        self.publish(&sh.stats);
        failed
    }

    /// Report a server connection's outcome to its upstream's breaker.
    fn report(&mut self, sh: &PgShared, up: usize, permit: Permit, ok: bool, now: Instant) {
        let b = &mut self.breakers[up];
        if ok {
            b.on_success(now, permit);
        } else {
            b.on_failure(now, permit);
        }
        self.breaker_events(sh, up, now);
    }

    /// A failure of upstream `up` outside a connect (a connection broke under a client).
    fn failure(&mut self, sh: &PgShared, up: usize, now: Instant) {
        if let Ok(p) = self.breakers[up].try_acquire(now) {
            self.report(sh, up, p, false, now);
        }
    }

    fn breaker_events(&mut self, sh: &PgShared, up: usize, now: Instant) {
        let u = &sh.stats.upstreams[up];
        let b = &mut self.breakers[up];
        while let Some(ev) = b.poll_event() {
            match ev {
                BreakerEvent::Opened { reason, .. } => {
                    u.breaker_opened.fetch_add(1, Relaxed);
                    tracing::warn!("postgres upstream {}: circuit opened ({reason:?})", u.addr);
                }
                BreakerEvent::Closed => {
                    tracing::info!("postgres upstream {}: circuit closed", u.addr)
                }
                _ => {}
            }
        }
        let g = match b.state(now) {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            _ => 2,
        };
        u.breaker[self.index % u.breaker.len()].store(g, Relaxed);
    }
}

/// A server's `ParameterStatus` set after login.
type ServerParams = Arc<Vec<(String, String)>>;

/// State shared by every worker of a PostgreSQL proxy.
pub struct PgShared {
    /// The configuration at start (what a reload cannot change; see `live`, `tun`).
    cfg: ProxyConfig,
    /// The loaded configuration (reloads).
    live: Arc<Live>,
    /// Timeouts and the pool size of the loaded configuration.
    tun: Tunables,
    stats: Arc<ProxyStats>,
    workers: Vec<Mutex<PgWorker>>,
    /// Each pool key's server `ParameterStatus` set (from its last server login) and the
    /// upstream it came from.
    params: Mutex<HashMap<PoolKey, (usize, ServerParams)>>,
    cancels: CancelTable,
    rng: Rng,
    /// The client password's SCRAM verifier (made once, with a random salt).
    scram: Option<ScramSecret>,
    /// SCRAM keys the upstream password gave per (upstream, user): PBKDF2 (4096 HMAC pairs,
    /// ~10 ms of the I/O worker's CPU) runs once per role instead of at every server login.
    scram_keys: Mutex<HashMap<(usize, String), DerivedKeys>>,
    /// `ferry_<random token>_`: the prefix of the proxy's statement names on servers.
    stmt_prefix: String,
    /// Every connection and the per-database counters, for the admin console.
    admin: admin::Registry,
    /// The workers' shutdown, for the console's `SHUTDOWN` (set by the proxy's start).
    shutdown: std::sync::OnceLock<ferry_driver::Shutdown>,
}

impl std::fmt::Debug for PgShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgShared")
            .field("upstreams", &self.cfg.upstreams)
            .field("postgres", &self.cfg.postgres)
            .finish()
    }
}

impl PgShared {
    /// Shared state for `workers` I/O workers.
    pub fn new(
        cfg: ProxyConfig,
        workers: usize,
        stats: Arc<ProxyStats>,
        live: Arc<Live>,
    ) -> Arc<PgShared> {
        let rng = Rng::new();
        let scram = cfg.postgres.client_password.as_ref().map(|pw| {
            let mut salt = [0u8; 16];
            rng.fill(&mut salt);
            ScramSecret::from_password(pw, &salt, SCRAM_ITERATIONS)
        });
        let n = cfg.upstreams.len();
        // Unguessable statement names: another client cannot EXECUTE or DEALLOCATE a
        // statement of the proxy's by name without reading pg_prepared_statements first.
        let token = rng.u64();
        let admin = admin::Registry::new(workers);
        let workers = (0..workers.max(1))
            .map(|w| {
                Mutex::new(PgWorker {
                    generation: 1,
                    index: w,
                    ids: HashMap::new(),
                    pools: Vec::new(),
                    breakers: (0..n)
                        .map(|_| CircuitBreaker::new(cfg.breaker.clone()))
                        .collect(),
                    rr: w,
                    next_tag: 1,
                    pending: HashMap::new(),
                    stmts: prepared::Registry::new(token, w),
                    m: [0; 8],
                })
            })
            .collect();
        let sh = Arc::new(PgShared {
            tun: Tunables::new(&cfg),
            cfg,
            live: live.clone(),
            stats,
            workers,
            params: Mutex::new(HashMap::new()),
            cancels: CancelTable::new(),
            rng,
            scram,
            scram_keys: Mutex::new(HashMap::new()),
            stmt_prefix: prepared::name_prefix(token),
            admin,
            shutdown: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&sh);
        live.listen(Box::new(move |snap| {
            if let Some(sh) = weak.upgrade() {
                sh.tun.store(&snap.cfg);
            }
        }));
        sh
    }

    /// The loaded configuration (reloads; `RELOAD` on the admin console).
    pub(crate) fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The workers' shutdown the console's `SHUTDOWN` triggers (as SIGTERM does); without
    /// it `SHUTDOWN` is an error. Set once (later calls are ignored).
    pub fn set_shutdown(&self, shutdown: ferry_driver::Shutdown) {
        let _ = self.shutdown.set(shutdown);
    }

    fn scram_keys(&self) -> MutexGuard<'_, HashMap<(usize, String), DerivedKeys>> {
        self.scram_keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn worker(&self, i: usize) -> MutexGuard<'_, PgWorker> {
        let mut w = self.workers[i % self.workers.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A reload: this worker's safe point to take the new configuration.
        if w.generation != self.live.generation() {
            self.refresh(&mut w);
        }
        w
    }

    /// A worker takes the loaded configuration (out of line: rare).
    #[cold]
    #[inline(never)]
    fn refresh(&self, w: &mut PgWorker) {
        w.refresh(&self.live.snapshot(), &self.stats);
    }

    fn params_of(&self, key: &PoolKey) -> Option<(usize, ServerParams)> {
        self.params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn nonce(&self) -> [u8; 18] {
        let mut n = [0u8; 18];
        self.rng.fill(&mut n);
        n
    }
}

/// Mail between client and server connections of one worker.
#[derive(Debug)]
pub struct PgMail(M);

#[derive(Debug)]
enum M {
    /// Client → server: forward these bytes (the server now belongs to `from`).
    Send {
        from: Peer,
        to: Peer,
        bytes: Bytes,
        /// First bytes since the client attached: its `application_name` (the server
        /// sets it first when its own differs).
        app: Option<Arc<str>>,
        /// The client tracks named prepared statements: the tags of the messages starting
        /// in `bytes`, for the server's reply queue.
        tags: Option<Box<[u8]>>,
        /// `ReadyForQuery` replies these bytes ask for (`Query`, `Sync`, `FunctionCall`).
        owes: u32,
        /// The client keeps the server past its next `ReadyForQuery` `I` that answers
        /// everything (session pooling, pinned, extended-protocol messages after its
        /// last `Sync`): see [`PgUp::spent`].
        keep: bool,
    },
    /// Client → server: a message about one of the client's named prepared statements
    /// (`len`: its length as the client sent it, for flow control).
    Op {
        from: Peer,
        to: Peer,
        op: prepared::Op,
        len: usize,
        app: Option<Arc<str>>,
        /// As for [`M::Send`].
        keep: bool,
    },
    /// Client → server: you are free (clean, between transactions); the client already put
    /// you back in the pool.
    Release,
    /// Client → server: the client left between transactions with session state: run
    /// `DISCARD ALL`, then go back to the pool.
    Reset,
    /// Client → server: the client left mid-transaction or mid-query: close.
    Close,
    /// Either way: `n` bytes of the peer's were written.
    Ack(usize),
    /// Server → client: this server connection is yours.
    Attached(SrvRef, Arc<PoolKey>),
    /// Server → client: bytes for you, with `rfqs` ReadyForQuery, the last with `status`.
    Data { bytes: Bytes, rfqs: u32, status: u8 },
    /// Server → client: the server connection broke (why, for the client's FATAL).
    Lost(Peer, &'static str),
    /// Server → client: these bytes (or this op) were never written to this (broken) server
    /// connection, nor any of the client's before them: the client may send them on
    /// another one.
    Retry(Peer, Out),
    /// Server → client: name changes of the client's the server failed or skipped (before
    /// the `Data` with their `ReadyForQuery`).
    Undo(Vec<prepared::Undo>),
    /// Server → waiting clients: the server refused the login (its ErrorResponse).
    LoginFailed(Bytes),
    /// Server → waiting clients: no server connection could be made.
    ConnectFailed,
    /// A worker's tick → its connection: an admin console order (`KILL`, `RECONNECT`, or
    /// publish your state for a console session that just opened).
    Admin(admin::Order),
}

/// A client TLS session for upstream `up` (`--upstream-tls`), its certificate to be checked
/// for the configured name or the upstream's own.
fn upstream_tls(sh: &PgShared, up: usize) -> Option<ferry_tls::Tls> {
    let t = sh.cfg.upstream_tls.as_ref()?;
    let name = t.name_for(&sh.stats.upstreams.get(up)?.upstream);
    ferry_tls::Tls::client(&t.config, &name).ok()
}

fn post(ctx: &WorkerCtx, to: Peer, m: M) {
    let _ = to.post(ctx, PgMail(m));
}

/// A FATAL or ERROR ErrorResponse.
fn error_bytes(severity: &str, code: &str, msg: &str) -> Bytes {
    let mut b = BytesMut::new();
    backend::error_response(&mut b, severity, code, msg);
    b.freeze()
}

enum Phase {
    /// The startup packet (SSLRequest/GSSENCRequest answered on the way) and the SCRAM
    /// exchange with the proxy.
    Auth(Box<server::Login>),
    /// Authenticated; waiting for a server connection to learn the ParameterStatus set.
    Login,
    /// Relaying.
    Ready,
    /// An admin console session (`admin.rs`).
    Admin(Box<admin::Console>),
}

impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Auth(_) => "Auth",
            Phase::Login => "Login",
            Phase::Ready => "Ready",
            Phase::Admin(_) => "Admin",
        })
    }
}

/// What a client connection sends its server connection.
#[derive(Debug)]
enum Out {
    /// Client bytes as they are (with their message tags when the client tracks named
    /// statements) and the `ReadyForQuery` replies they ask for.
    Bytes(Bytes, Option<Box<[u8]>>, u32),
    /// A named-statement op and the length of the client message it stands for.
    Op(prepared::Op, usize),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Bytes(b, ..) => b.len(),
            Out::Op(_, n) => *n,
        }
    }
}

/// A client message turned into an op, found while reading the input.
#[derive(Debug)]
struct Cut {
    /// Where the message is in the input read, and its length.
    pos: usize,
    total: usize,
    op: CutOp,
    /// Tags of the messages before it (in the relay's tag list).
    tags_at: usize,
    /// `ReadyForQuery` replies asked for by the messages before it.
    syncs_at: u32,
}

/// [`prepared::Op`] with ranges of the message (made Bytes once the input is split off).
#[derive(Debug)]
enum CutOp {
    /// A named `Parse`, a duplicate one, a `Describe` or `Close` of a client statement.
    Op(prepared::Op),
    Bind {
        stmt: Arc<prepared::Stmt>,
        portal: std::ops::Range<usize>,
        rest: std::ops::Range<usize>,
    },
    /// Before the message (a `Query` or `Parse` text that may deallocate).
    Forget,
    /// The proxy answers the message itself (a client's `DEALLOCATE` of its own names):
    /// these bytes, nothing to the server.
    Answer(Bytes),
}

/// What becomes of a client message about named statements.
#[derive(Debug)]
enum Icpt {
    /// It goes as it is.
    Pass,
    /// It is cut out: an op or the proxy's answer.
    Cut(Cut),
    /// Not now: it depends on replies still to come (read again when they came).
    Wait,
}

/// A client connection.
pub struct PgDown {
    io: Io,
    shared: Arc<PgShared>,
    phase: Phase,
    user: String,
    app: Option<String>,
    /// `application_name` as servers should have it while serving this client.
    app_name: Arc<str>,
    /// Attached and nothing sent yet: the next send carries `app_name`.
    fresh: bool,
    /// The ParameterStatus set this client was last told, and the upstream it came from: a
    /// server connection of another upstream tells it what differs first.
    told: Option<(usize, ServerParams)>,
    key: Option<Arc<PoolKey>>,
    pool: usize,
    /// The proxy-made BackendKeyData and its cancel cell.
    cancel: Option<(i32, i32, Arc<CancelCell>)>,
    srv: Option<SrvRef>,
    /// Waiting for a server connection until then.
    waiting: Option<Instant>,
    login_deadline: Option<Instant>,
    /// Bytes for a server connection not attached yet.
    pending: Vec<Out>,
    pending_len: usize,
    /// Queries and syncs in `pending` (counted for their upstream once sent).
    pending_syncs: u32,
    t: Tracker,
    /// Named prepared statements (transaction mode, `max_prepared_statements` > 0): set at
    /// the first; from then on every send carries its message tags.
    prep: Option<Box<prepared::Client>>,
    /// Reading stopped at a message that waits for replies ([`Icpt::Wait`]).
    stalled: bool,
    /// Where the stream is: bytes of the current (streamed) message still to forward.
    walk: Walker,
    /// Bytes of an abandoned message still to drop.
    drop: usize,
    /// Bytes posted to the server not yet written by it.
    unacked: usize,
    /// Bytes from the server not yet acknowledged to it.
    owed: usize,
    /// What a broken server gave back ([`M::Retry`]) so far, and its length.
    retry_bytes: Vec<Out>,
    retried: usize,
    /// Closing: no more reading; close once the output went out.
    done: bool,
    draining: bool,
    /// Its entry for the admin console (from the startup packet on).
    adm: Option<admin::Handle>,
    /// Held by the console's `PAUSE` (until `RESUME`, or `waiting` runs out).
    held: bool,
    /// When to check the console's `PAUSE`/`RESUME` again (a held client, or a console
    /// session whose `PAUSE` waits for server connections to be released).
    tick: Option<Instant>,
}

impl std::fmt::Debug for PgDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDown")
            .field("phase", &self.phase)
            .field("srv", &self.srv)
            .field("t", &self.t)
            .finish()
    }
}

impl PgDown {
    fn me(&self) -> Peer {
        self.io.me()
    }

    fn mode(&self) -> PoolMode {
        self.shared.cfg.postgres.pool_mode
    }

    /// Send a FATAL and close.
    fn fatal(&mut self, code: &str, msg: &str) {
        self.io.out.push(error_bytes("FATAL", code, msg));
        self.finish();
    }

    /// Stop reading and close once the output went out.
    fn finish(&mut self) {
        self.done = true;
        self.io.input.clear();
        self.pending.clear();
        self.pending_syncs = 0;
        self.pending_len = 0;
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        loop {
            if self.done {
                self.io.input.clear();
                return;
            }
            let progressed = match self.phase {
                Phase::Auth(_) => self.login(ctx, now),
                Phase::Login => return,
                Phase::Ready => {
                    self.relay(ctx, now);
                    return;
                }
                Phase::Admin(_) => {
                    self.console(now);
                    return;
                }
            };
            if !progressed {
                return;
            }
        }
    }

    /// The client's login (startup packet, SCRAM); `false` when more bytes are needed.
    fn login(&mut self, ctx: &mut WorkerCtx, now: Instant) -> bool {
        let Phase::Auth(l) = &mut self.phase else {
            return false;
        };
        let ev = l.handle_input(&mut self.io.input);
        let mut tls = None;
        if ev == Some(server::Event::SslRequested) {
            // With a certificate: `S`, then the handshake on the same socket (the relay
            // decrypts into `io.input` from here on; bytes the client sent behind its
            // SSLRequest are taken as the first ciphertext). Without one: `N`, and the
            // client goes on in the clear.
            // The loaded configuration's certificate (a reload rotates it).
            tls = match (self.shared.cfg.tls.is_some(), self.io.tls()) {
                (true, None) => {
                    let snap = self.shared.live.snapshot();
                    snap.cfg
                        .tls
                        .as_ref()
                        .and_then(|c| ferry_tls::Tls::server(c).ok())
                }
                _ => None,
            };
            l.answer_ssl(tls.is_some());
        }
        self.flush_login();
        if let Some(tls) = tls {
            self.io.start_tls(tls); // after the `S`, which goes out in clear
        }
        match ev {
            None => false,
            Some(server::Event::SslRequested) => true,
            Some(server::Event::Cancel { pid, secret }) => {
                self.cancel_request(ctx, pid, secret);
                self.finish();
                false
            }
            Some(server::Event::Startup(p)) => {
                self.started(ctx, p);
                true
            }
            Some(server::Event::Authenticated) => {
                self.authenticated(ctx, now);
                true
            }
            Some(server::Event::Failed(_)) => {
                self.finish();
                false
            }
            Some(_) => false,
        }
    }

    /// A valid StartupMessage: find its pool, then authenticate the client.
    fn started(&mut self, ctx: &mut WorkerCtx, p: server::StartupParams) {
        let tls = self.shared.cfg.tls.as_ref();
        let certs_required = tls.is_some_and(ferry_tls::ServerConfig::requires_client_certs);
        if certs_required && self.io.tls().is_none() {
            // `--tls-client-ca`: a client in the clear (no SSLRequest) shows no certificate.
            if let Phase::Auth(l) = &mut self.phase {
                l.refuse(
                    sqlstate::INVALID_AUTHORIZATION,
                    "ferry proxy: a client certificate is required (connect with TLS and a \
                     certificate: sslmode=require sslcert=... sslkey=...)",
                );
            }
            return;
        }
        let s = startup::startup(p);
        self.user = s.key.user.clone();
        self.app = s.application_name;
        self.app_name = Arc::from(self.app.as_deref().unwrap_or(""));
        let sh = self.shared.clone();
        self.adm = Some(sh.admin.register(
            ctx.index,
            admin::Entry {
                client: true,
                me: self.io.me(),
                user: &s.key.user,
                database: &s.key.database,
                pool: (&s.key.user, &s.key.database),
                addr: self.io.peer_addr(),
                app: self.app.as_deref().unwrap_or(""),
            },
        ));
        if admin::is_console(&s.key.database) {
            self.console_auth(&s.key.user);
            return;
        }
        if self.disabled() {
            if let Phase::Auth(l) = &mut self.phase {
                l.refuse(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("database does not allow connections: {}", s.key.database),
                );
            }
            self.flush_login();
            return;
        }
        let id = {
            let mut w = sh.worker(ctx.index);
            let n = w.breakers.len();
            w.pool_id(&s.key, n)
        };
        let Phase::Auth(l) = &mut self.phase else {
            return;
        };
        let Some(id) = id else {
            l.refuse(
                sqlstate::TOO_MANY_CONNECTIONS,
                "ferry proxy: too many distinct users, databases and startup parameters",
            );
            return;
        };
        self.pool = id;
        self.key = Some(sh.worker(ctx.index).pools[id].key.clone());
        match sh.scram.clone() {
            Some(secret) => {
                let server = Box::new(ScramServer::new(secret, &sh.nonce()));
                // Another user than --client-user: the exchange runs to its end and fails
                // as a wrong password does.
                let bad_user = sh
                    .cfg
                    .postgres
                    .client_user
                    .as_deref()
                    .is_some_and(|u| u != self.user);
                l.authenticate(if bad_user {
                    server::Auth::ScramRefused(server)
                } else {
                    server::Auth::Scram(server)
                });
            }
            None => l.authenticate(server::Auth::Trust),
        }
        self.flush_login();
    }

    /// The login's answers to the client.
    fn flush_login(&mut self) {
        if let Phase::Auth(l) = &mut self.phase {
            while let Some(b) = l.poll_transmit() {
                self.io.out.push(b);
            }
        }
    }

    /// A `CancelRequest`: find the client it names and cancel its server's query.
    fn cancel_request(&mut self, ctx: &mut WorkerCtx, pid: i32, secret: i32) {
        let sh = self.shared.clone();
        let Some(cell) = sh.cancels.lookup(pid, secret) else {
            return;
        };
        let Some((up, spid, ssecret)) = cell.get() else {
            return;
        };
        let Some(addr) = sh.stats.upstreams.get(up).and_then(|u| u.current()) else {
            return;
        };
        let mut w = sh.worker(ctx.index);
        let tag = w.next_tag;
        w.next_tag += 1;
        if ctx.connect(addr, tag) {
            w.pending.insert(
                tag,
                Pending::Cancel {
                    up,
                    pid: spid,
                    secret: ssecret,
                },
            );
        }
    }

    /// Authenticated: greet now if the pool key's parameters are known (transaction
    /// mode), else get a server connection first.
    fn authenticated(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.key.is_none() {
            // No pool: the admin console.
            self.console_greet(now);
            return;
        }
        self.phase = Phase::Login;
        let sh = self.shared.clone();
        let (pid, secret, cell) = sh.cancels.register(&sh.rng);
        self.cancel = Some((pid, secret, cell));
        let known = self.key.as_ref().and_then(|k| sh.params_of(k)).is_some();
        if known && self.mode() == PoolMode::Transaction {
            self.greet();
            return;
        }
        self.acquire(ctx, now);
    }

    /// AuthenticationOk, the ParameterStatus set, BackendKeyData, ReadyForQuery.
    fn greet(&mut self) {
        let mut b = BytesMut::with_capacity(512);
        let sh = self.shared.clone();
        let known = self.key.as_ref().and_then(|k| sh.params_of(k));
        if let Some((_, ps)) = &known {
            self.t.scan_as(ps);
        }
        let ps = known.as_ref().map(|(_, ps)| &ps[..]).unwrap_or_default();
        let app = [("application_name", self.app.as_deref().unwrap_or(""))];
        server::greet(
            &mut b,
            ps.iter()
                .filter(|(k, _)| k != "application_name")
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .chain(app),
            self.cancel.as_ref().map(|(pid, secret, _)| (*pid, *secret)),
        );
        self.told = known;
        self.io.out.push(b.freeze());
        self.phase = Phase::Ready;
        self.login_deadline = None;
    }

    /// Attached to a server connection of upstream `up`: tell the client the ParameterStatus
    /// values of that upstream's servers that differ from what it was told (PgBouncer does
    /// the same), before any reply of the server's.
    #[cold]
    fn retell(&mut self, ctx: &WorkerCtx, up: usize) {
        let sh = self.shared.clone();
        let Some(ps) = sh.worker(ctx.index).pools[self.pool].params[up].clone() else {
            return;
        };
        let old = self.told.take().map(|(_, old)| old);
        let mut b = BytesMut::new();
        for (k, v) in ps.iter() {
            let same = old
                .as_ref()
                .is_some_and(|o| o.iter().any(|(ok, ov)| ok == k && ov == v));
            if !same && k != "application_name" {
                backend::parameter_status(&mut b, k, v);
            }
        }
        if !b.is_empty() {
            self.t.scan_as(&ps);
            self.io.out.push(b.freeze());
        }
        self.told = Some((up, ps));
    }

    /// Ask the pool for a server connection.
    fn acquire(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.hold(now) {
            return;
        }
        let sh = self.shared.clone();
        let me = self.me();
        let r = sh.worker(ctx.index).acquire(ctx, &sh, self.pool, me, now);
        match r {
            Acquire::Got(s) => self.attach(ctx, s, now),
            Acquire::Wait => self.waiting = Some(now + sh.tun.pool_wait_timeout()),
            Acquire::NoUpstream => self.no_server(
                sqlstate::CONNECTION_FAILURE,
                "ferry proxy: no upstream server available",
            ),
        }
    }

    /// A server connection is ours.
    fn attach(&mut self, ctx: &mut WorkerCtx, s: SrvRef, now: Instant) {
        self.waiting = None;
        self.srv = Some(s);
        if let Some((_, _, cell)) = &self.cancel {
            cell.set(s.up, s.pid, s.secret);
        }
        let from_login = matches!(self.phase, Phase::Login);
        if from_login {
            self.greet();
            if self.draining {
                self.fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command",
                );
                return;
            }
        }
        if self.told.as_ref().map(|t| t.0) != Some(s.up) {
            self.retell(ctx, s.up);
        }
        self.fresh = true;
        if self.pending_syncs > 0 {
            let n = u64::from(std::mem::take(&mut self.pending_syncs));
            self.shared.stats.upstreams[s.up]
                .requests
                .fetch_add(n, Relaxed);
        }
        for o in std::mem::take(&mut self.pending) {
            self.send(ctx, s, o);
        }
        self.pending_len = 0;
        if from_login {
            // Something may be waiting in the input (sent right after the startup packet).
            self.relay(ctx, now);
        }
        if self.mode() == PoolMode::Transaction && self.t.can_release() && self.walk.rest() == 0 {
            self.release(ctx);
        }
    }

    /// Give the server connection back between transactions.
    fn release(&mut self, ctx: &mut WorkerCtx) {
        let Some(s) = self.srv.take() else { return };
        if let Some((_, _, cell)) = &self.cancel {
            cell.clear();
        }
        self.unacked = 0;
        self.owed = 0;
        if self.stale(s.epoch) {
            // Made before the console's RECONNECT: closed, not pooled (a new one is made
            // for whoever waits).
            post(ctx, s.peer, M::Close);
            self.release_draining();
            return;
        }
        post(ctx, s.peer, M::Release);
        let sh = self.shared.clone();
        let key = self.key.clone();
        if let Some(w) = sh.worker(ctx.index).release(&sh, self.pool, s) {
            if let Some(k) = key {
                post(ctx, w, M::Attached(s, k));
            }
        }
        self.release_draining();
    }

    /// After giving the server connection back: a draining client goes.
    fn release_draining(&mut self) {
        if self.draining {
            self.fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            );
        }
    }

    /// No server connection for what the client sent: an ERROR (FATAL during login).
    fn no_server(&mut self, code: &str, msg: &str) {
        self.waiting = None;
        if !matches!(self.phase, Phase::Ready) {
            self.fatal(code, msg);
            return;
        }
        self.pending.clear();
        self.pending_syncs = 0;
        self.pending_len = 0;
        self.drop = self.walk.rest();
        self.walk.clear();
        let mut b = BytesMut::new();
        backend::error_response(&mut b, "ERROR", code, msg);
        for _ in 0..self.t.outstanding.max(1) {
            backend::ready_for_query(&mut b, TxStatus::Idle);
        }
        self.t.clear();
        if let Some(p) = self.prep.as_mut() {
            // No replies will come for what was pending: nothing to wait for.
            p.dirty = false;
            p.unsure = 0;
        }
        self.stalled = false;
        self.io.out.push(b.freeze());
        self.io.input.clear();
    }

    /// Forward complete (and streamed) client messages.
    fn relay(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if !matches!(self.phase, Phase::Ready) || self.done {
            return;
        }
        self.stalled = false;
        if self.drop > 0 {
            let n = self.drop.min(self.io.input.len());
            let _ = self.io.input.split_to(n);
            self.drop -= n;
            if self.drop > 0 {
                return;
            }
        }
        let max = self.shared.cfg.postgres.max_message_bytes;
        // Named prepared statements kept by the proxy (transaction mode only).
        let prep_on = self.shared.cfg.postgres.max_prepared_statements > 0
            && self.mode() == PoolMode::Transaction;
        let mut pos = 0usize;
        let mut syncs = 0u32;
        // Only Flush messages: nothing a server must see when none is attached.
        let mut flush_only = true;
        let mut terminate = false;
        let mut bad: Option<String> = None;
        // With named statements: the messages turned into ops, and the tags of the others.
        let mut cuts: Vec<Cut> = Vec::new();
        let mut tags: Vec<u8> = Vec::new();
        // Out of `self` while read (the named-statement calls borrow `self`); no copy.
        let input = std::mem::take(&mut self.io.input);
        {
            let buf = &input[..];
            loop {
                let (tag, total) = match self.walk.next(buf, &mut pos) {
                    Step::Header { tag, total } => (tag, total),
                    Step::More => break,
                    Step::BadLength(n) => {
                        bad = Some(format!("invalid message length {n}"));
                        break;
                    }
                };
                if total > max {
                    bad = Some(format!(
                        "message of {total} bytes is longer than the limit of {max}"
                    ));
                    break;
                }
                let have = buf.len() - pos;
                let was_flush_only = flush_only;
                flush_only &= tag == b'H';
                match tag {
                    b'X' => {
                        terminate = true;
                        break;
                    }
                    b'Q' | b'P' => {
                        if have < total {
                            break;
                        }
                        let body = &buf[pos + 5..pos + total];
                        // A named Parse, or anything once the client has named statements (an
                        // unnamed Parse costs one byte's look).
                        if prep_on
                            && (self.prep.is_some() || (tag == b'P' && body.first() != Some(&0)))
                        {
                            match self.intercept(ctx, tag, body, pos, total) {
                                Icpt::Pass => {}
                                Icpt::Cut(c) => {
                                    cuts.push(Cut {
                                        tags_at: tags.len(),
                                        syncs_at: syncs,
                                        ..c
                                    });
                                    pos += total;
                                    continue;
                                }
                                Icpt::Wait => {
                                    flush_only = was_flush_only;
                                    self.stalled = true;
                                    break;
                                }
                            }
                        }
                        let n = self.t.on_client(tag, body);
                        syncs += n;
                        if prep_on && self.t.pinned {
                            // Before this message: its own reply is not counted in.
                            let at = (tags.len(), syncs - n);
                            self.may_deallocate(tag, body, pos, at, &mut cuts);
                        }
                        if let Some(p) = self.prep.as_mut() {
                            tags.push(tag);
                            if n > 0 {
                                p.synced(self.t.outstanding);
                            }
                        }
                        pos += total;
                    }
                    b'B' | b'D' | b'C' if self.prep.is_some() => {
                        if have < total {
                            break;
                        }
                        let body = &buf[pos + 5..pos + total];
                        match self.intercept(ctx, tag, body, pos, total) {
                            Icpt::Pass => {
                                tags.push(tag);
                                self.t.on_client(tag, &[]);
                            }
                            Icpt::Cut(c) => cuts.push(Cut {
                                tags_at: tags.len(),
                                syncs_at: syncs,
                                ..c
                            }),
                            Icpt::Wait => {
                                flush_only = was_flush_only;
                                self.stalled = true;
                                break;
                            }
                        }
                        pos += total;
                    }
                    _ => {
                        let n = self.t.on_client(tag, &[]);
                        syncs += n;
                        if let Some(p) = self.prep.as_mut() {
                            tags.push(tag);
                            if n > 0 {
                                p.synced(self.t.outstanding);
                            }
                        }
                        self.walk.pass(buf, &mut pos, total);
                    }
                }
            }
        }
        self.io.input = input;
        if pos > 0 {
            let bytes = self.io.input.split_to(pos).freeze();
            if !cuts.is_empty() {
                self.forward_cut(ctx, bytes, cuts, tags, syncs, now);
            } else if flush_only && self.srv.is_none() && self.pending.is_empty() {
                // A Flush with nothing pending: no server connection for that.
            } else {
                let tags = self.prep.is_some().then(|| tags.into_boxed_slice());
                self.forward(ctx, Out::Bytes(bytes, tags, syncs), syncs, now);
            }
        }
        if let Some(msg) = bad {
            self.fatal(sqlstate::PROTOCOL_VIOLATION, &msg);
            return;
        }
        if terminate {
            self.finish();
        }
    }

    /// A pinned client's `Query` or `Parse` goes as it is: a Forget op before it when its
    /// text may deallocate ([`prepared::forwarded_may_deallocate`]).
    #[cold]
    fn may_deallocate(
        &mut self,
        tag: u8,
        body: &[u8],
        pos: usize,
        (tags_at, syncs_at): (usize, u32),
        cuts: &mut Vec<Cut>,
    ) {
        if prepared::forwarded_may_deallocate(tag, body, &self.t, &mut self.prep) {
            cuts.push(Cut {
                pos,
                total: 0,
                op: CutOp::Forget,
                tags_at,
                syncs_at,
            });
        }
    }

    /// A message about named prepared statements ([`prepared::decide`]): made an op or
    /// answered, passed as it is, or left for later. `pos`, `total`: where it is in the
    /// input, its length.
    #[cold]
    fn intercept(
        &mut self,
        ctx: &WorkerCtx,
        tag: u8,
        body: &[u8],
        pos: usize,
        total: usize,
    ) -> Icpt {
        let cap = self.shared.cfg.postgres.max_prepared_statements;
        let sh = &self.shared;
        let d = prepared::decide(tag, body, &mut self.t, &mut self.prep, cap, |rest| {
            sh.worker(ctx.index).stmts.get(&rest)
        });
        let op = match d {
            prepared::Decision::Pass => return Icpt::Pass,
            prepared::Decision::Wait => return Icpt::Wait,
            prepared::Decision::Op(op) => CutOp::Op(op),
            prepared::Decision::Bind { stmt, portal, rest } => CutOp::Bind { stmt, portal, rest },
            prepared::Decision::Answer(b) => CutOp::Answer(b),
        };
        Icpt::Cut(Cut {
            pos,
            total,
            op,
            tags_at: 0,
            syncs_at: 0,
        })
    }

    /// Forward `bytes` (the input up to where it was read) with the ops cut out of it.
    #[cold]
    fn forward_cut(
        &mut self,
        ctx: &mut WorkerCtx,
        bytes: Bytes,
        cuts: Vec<Cut>,
        tags: Vec<u8>,
        syncs: u32,
        now: Instant,
    ) {
        let tracked = self.prep.is_some();
        let mut at = 0usize;
        let mut tag_at = 0usize;
        let mut syncs_at = 0u32;
        for c in cuts {
            // Tags of the messages before this cut.
            let tag_end = c.tags_at;
            if c.pos > at {
                let t = tracked.then(|| tags[tag_at..tag_end].into());
                let owes = c.syncs_at - syncs_at;
                self.forward(ctx, Out::Bytes(bytes.slice(at..c.pos), t, owes), 0, now);
            }
            tag_at = tag_end;
            syncs_at = c.syncs_at;
            let op = match c.op {
                CutOp::Op(op) => op,
                CutOp::Bind { stmt, portal, rest } => prepared::Op::Bind {
                    stmt,
                    portal: bytes.slice(c.pos + portal.start..c.pos + portal.end),
                    rest: bytes.slice(c.pos + rest.start..c.pos + rest.end),
                },
                CutOp::Forget => prepared::Op::Forget,
                CutOp::Answer(b) => {
                    // Nothing was owed before it: in order.
                    self.io.out.push(b);
                    at = c.pos + c.total;
                    continue;
                }
            };
            self.forward(ctx, Out::Op(op, c.total), 0, now);
            at = c.pos + c.total;
        }
        let t = tracked.then(|| tags[tag_at..].into());
        if bytes.len() > at {
            let owes = syncs - syncs_at;
            self.forward(ctx, Out::Bytes(bytes.slice(at..), t, owes), syncs, now);
        } else if syncs > 0 {
            self.shared
                .stats
                .requests
                .fetch_add(u64::from(syncs), Relaxed);
        }
    }

    /// Whether this client keeps its server connection past a `ReadyForQuery` `I` that
    /// answers everything it sent so far (what [`PgDown::release`] is not called for).
    fn keeps_server(&self) -> bool {
        self.mode() != PoolMode::Transaction
            || self.t.pinned
            || self.t.unsynced
            || self.walk.rest() != 0
    }

    /// Bytes or an op to the attached server connection.
    fn send(&mut self, ctx: &WorkerCtx, s: SrvRef, out: Out) {
        let app = std::mem::take(&mut self.fresh).then(|| self.app_name.clone());
        let keep = self.keeps_server();
        let m = match out {
            Out::Bytes(bytes, tags, owes) => {
                self.unacked += bytes.len();
                M::Send {
                    from: self.io.me(),
                    to: s.peer,
                    bytes,
                    app,
                    tags,
                    owes,
                    keep,
                }
            }
            Out::Op(op, len) => {
                self.unacked += len;
                M::Op {
                    from: self.io.me(),
                    to: s.peer,
                    op,
                    len,
                    app,
                    keep,
                }
            }
        };
        post(ctx, s.peer, m);
    }

    fn forward(&mut self, ctx: &mut WorkerCtx, out: Out, syncs: u32, now: Instant) {
        let sh = &self.shared;
        if syncs > 0 {
            sh.stats.requests.fetch_add(u64::from(syncs), Relaxed);
        }
        match self.srv {
            Some(s) => {
                if syncs > 0 {
                    sh.stats.upstreams[s.up]
                        .requests
                        .fetch_add(u64::from(syncs), Relaxed);
                }
                self.send(ctx, s, out);
            }
            None => {
                self.pending_len += out.len();
                self.pending_syncs += syncs;
                self.pending.push(out);
                if self.waiting.is_none() {
                    self.acquire(ctx, now);
                }
            }
        }
    }

    fn apply(&mut self, ctx: &mut WorkerCtx, m: M, now: Instant) {
        match m {
            M::Attached(s, _) => {
                if self.srv.is_some() || self.done || self.waiting.is_none() {
                    // Not waiting (any more): give it straight back.
                    let sh = self.shared.clone();
                    let key = self.key.clone();
                    post(ctx, s.peer, M::Release);
                    if let Some(w) = sh.worker(ctx.index).release(&sh, self.pool, s) {
                        if let Some(k) = key {
                            post(ctx, w, M::Attached(s, k));
                        }
                    }
                    return;
                }
                self.attach(ctx, s, now);
            }
            M::Data {
                bytes,
                rfqs,
                status,
            } => {
                if self.srv.is_none() {
                    return;
                }
                self.owed += bytes.len();
                self.io.out.push(bytes);
                if rfqs > 0 {
                    self.t.on_server(rfqs, status);
                    if let Some(p) = self.prep.as_mut() {
                        p.answered(rfqs);
                    }
                    if self.mode() == PoolMode::Transaction
                        && self.t.can_release()
                        && self.walk.rest() == 0
                    {
                        self.release(ctx);
                    } else if self.draining && self.t.idle() && self.walk.rest() == 0 {
                        self.fatal(
                            sqlstate::ADMIN_SHUTDOWN,
                            "terminating connection due to administrator command",
                        );
                    }
                    if self.stalled && !self.done {
                        // The message it stopped at may go on now.
                        self.relay(ctx, now);
                    }
                }
            }
            M::Undo(u) => {
                if let Some(p) = self.prep.as_mut() {
                    p.undo(u);
                }
            }
            M::Ack(n) => self.unacked = self.unacked.saturating_sub(n),
            M::Lost(srv, why) => {
                if self.srv.is_some_and(|s| s.peer == srv) {
                    self.srv = None;
                    let sh = self.shared.clone();
                    sh.worker(ctx.index).forget_went(self.pool, srv);
                    let code = if why == admin::KILLED {
                        sqlstate::PROTOCOL_VIOLATION
                    } else {
                        sqlstate::CONNECTION_FAILURE
                    };
                    self.fatal(code, why);
                }
            }
            M::Retry(srv, out) => self.retry(ctx, srv, out, now),
            M::LoginFailed(err) => {
                if self.waiting.take().is_some() {
                    self.io.out.push(err);
                    self.finish();
                }
            }
            M::ConnectFailed => {
                if self.waiting.is_some() {
                    self.no_server(
                        sqlstate::CONNECTION_FAILURE,
                        "ferry proxy: could not connect to an upstream server",
                    );
                }
            }
            M::Admin(admin::Order::Kill) => self.killed(ctx, admin::KILLED),
            M::Admin(admin::Order::KillClient) => self.killed(ctx, admin::KICKED),
            // Publish: `show` after every mail does it.
            M::Send { .. }
            | M::Op { .. }
            | M::Release
            | M::Reset
            | M::Close
            | M::Admin(admin::Order::Reconnect | admin::Order::Publish) => {}
        }
    }

    /// The console's `KILL` of the client's database (`why`: [`admin::KILLED`]; its
    /// server gets the order too) or `KILL_CLIENT` ([`admin::KICKED`]): FATAL now, its
    /// server connection closed.
    #[cold]
    fn killed(&mut self, ctx: &mut WorkerCtx, why: &str) {
        if self.done {
            return;
        }
        if let Some(s) = self.srv.take() {
            if let Some((_, _, cell)) = &self.cancel {
                cell.clear();
            }
            post(ctx, s.peer, M::Close);
        }
        self.fatal(sqlstate::PROTOCOL_VIOLATION, why);
    }

    /// Bytes or an op of ours a broken server never wrote ([`M::Retry`]). Once all we sent
    /// it since we took it came back (none of it reached PostgreSQL), they go to another
    /// server connection (which prepares our named statements as it needs, as for any
    /// send); anything else of ours it took means `Lost` (FATAL) instead.
    #[cold]
    fn retry(&mut self, ctx: &mut WorkerCtx, srv: Peer, out: Out, now: Instant) {
        if self.done || !self.srv.is_some_and(|s| s.peer == srv) {
            return;
        }
        self.retried += out.len();
        self.retry_bytes.push(out);
        // `unacked`: all sent to this server since we took it (it acked nothing).
        if self.retried < self.unacked {
            return;
        }
        self.srv = None;
        if let Some((_, _, cell)) = &self.cancel {
            cell.clear();
        }
        self.unacked = 0;
        self.owed = 0;
        self.retried = 0;
        self.pending = std::mem::take(&mut self.retry_bytes);
        self.pending_len = self.pending.iter().map(Out::len).sum();
        self.acquire(ctx, now);
    }

    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.tick.is_some_and(|t| now >= t) {
            self.tick = None;
            self.on_tick(ctx, now);
        }
        if self.login_deadline.is_some_and(|d| now >= d) && !matches!(self.phase, Phase::Ready) {
            self.login_deadline = None;
            if matches!(&self.phase, Phase::Auth(l) if l.user().is_empty()) {
                self.finish();
            } else {
                self.fatal(sqlstate::PROTOCOL_VIOLATION, "ferry proxy: login timeout");
            }
            return;
        }
        if self.waiting.is_some_and(|d| now >= d) {
            let sh = self.shared.clone();
            {
                let mut w = sh.worker(ctx.index);
                w.unwait(&sh, self.pool, self.me());
                w.bump(M_TIMED_OUT, true);
                w.publish(&sh.stats);
            }
            self.no_server(
                sqlstate::TOO_MANY_CONNECTIONS,
                "ferry proxy: no server connection available (pool_wait_timeout)",
            );
        }
    }
}

/// Where [`scan`] stops early.
enum Stop<'a> {
    /// Nowhere: every complete message (and the start of a streamed one) goes.
    Never,
    /// After the first `ReadyForQuery` (a reset's).
    FirstReady,
    /// After the `ReadyForQuery` that [`answered`] the owner's last query.
    Answered { owes: &'a mut u32, keep: bool },
}

/// What [`scan`] found.
#[derive(Debug, PartialEq, Eq)]
struct Scan {
    /// Bytes to pass on (whole messages, and what there is of a streamed one).
    pos: usize,
    /// `ReadyForQuery` messages among them, those with status `I`, the last one's status.
    rfqs: u32,
    xacts: u32,
    status: u8,
    /// Not PostgreSQL: the connection is to close.
    bad: bool,
    /// Stopped at [`Stop::Answered`]: the rest is not the owner's.
    cut: bool,
}

/// The server half's message scan of `buf` (the server's input): how much to pass on, and
/// the `ReadyForQuery` messages in it. Only `ReadyForQuery` is read whole; other messages
/// stream through `walk`.
fn scan(walk: &mut Walker, buf: &[u8], mut stop: Stop<'_>) -> Scan {
    let mut s = Scan {
        pos: 0,
        rfqs: 0,
        xacts: 0,
        status: b'I',
        bad: false,
        cut: false,
    };
    loop {
        let (tag, total) = match walk.next(buf, &mut s.pos) {
            Step::Header { tag, total } => (tag, total),
            Step::More => break,
            Step::BadLength(_) => {
                s.bad = true;
                break;
            }
        };
        let have = buf.len() - s.pos;
        if tag == b'Z' {
            if have < 6 || total != 6 {
                s.bad = total != 6;
                break;
            }
            s.rfqs += 1;
            s.status = buf[s.pos + 5];
            s.xacts += u32::from(s.status == b'I');
            s.pos += 6;
            match &mut stop {
                Stop::Never => {}
                Stop::FirstReady => break,
                Stop::Answered { owes, keep } => {
                    if answered(owes, *keep, s.status) {
                        s.cut = true;
                        break;
                    }
                }
            }
            continue;
        }
        walk.pass(buf, &mut s.pos, total);
    }
    s
}

/// A `ReadyForQuery` with transaction status `status` came for the owner of a server
/// connection that still `owes` that many: whether it answers the last of what the owner
/// asked for, so that the owner gives the connection back ([`PgUp::spent`]). Pipelined
/// queries (more owed), an open transaction, a kept connection (`keep`: session pooling,
/// pinned, unsynced messages) go on.
fn answered(owes: &mut u32, keep: bool, status: u8) -> bool {
    if *owes == 0 {
        // More than was asked for (not PostgreSQL's way): not ours to judge.
        return false;
    }
    *owes -= 1;
    *owes == 0 && !keep && status == b'I'
}

/// Whether asynchronous messages a server sent while idle hold an ErrorResponse (only ever
/// FATAL there: the session is ending).
#[cold]
fn idle_fatal(mut b: &[u8]) -> bool {
    while b.len() >= 5 {
        if b[0] == b'E' {
            return true;
        }
        let n = i32::from_be_bytes([b[1], b[2], b[3], b[4]]).max(4) as usize;
        b = &b[(n + 1).min(b.len())..];
    }
    false
}

/// A string as an SQL literal (`'…'` with quotes doubled; `E'…'` when it holds a
/// backslash, which is then doubled too, whatever `standard_conforming_strings` is).
fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    if s.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[derive(Debug)]
enum SPhase {
    /// Sending a CancelRequest, then closing.
    Cancel,
    /// Logging in.
    Login,
    /// Logged in: idle in the pool, or serving its owner.
    Ready,
    /// Running `DISCARD ALL` for a client that left; back to the pool at its
    /// ReadyForQuery.
    Resetting,
}

/// A server connection.
pub struct PgUp {
    io: Io,
    shared: Arc<PgShared>,
    phase: SPhase,
    pool: usize,
    up: usize,
    key: Arc<PoolKey>,
    /// Counted in its pool and the upstream's open connections (not a cancel connection).
    counted: bool,
    owner: Option<Peer>,
    pid: i32,
    secret: i32,
    permit: Option<Permit>,
    /// The login, until it ends.
    login: Option<Box<client::Login>>,
    /// Where the stream is: bytes of the current (streamed) message still to forward.
    walk: Walker,
    /// Replies (up to their ReadyForQuery) of the proxy's own queries still to drop.
    swallow: u32,
    /// Named prepared statements on this connection and the replies owed (made at the
    /// first op or tagged send).
    prep: Option<Box<prepared::Server>>,
    /// This server session's `application_name` (empty at login and after DISCARD ALL).
    app: Arc<str>,
    unacked: usize,
    owed: usize,
    idle_since: Option<Instant>,
    login_deadline: Option<Instant>,
    /// Counted as active in the worker's gauges (logged in, not idle).
    active: bool,
    done: bool,
    draining: bool,
    /// `--response-timeout`: since when the server has been silent while its client waits
    /// for a reply (from its last send, or the last bytes of a reply in progress).
    last_send: Option<Instant>,
    /// Its entry for the admin console (not a cancel connection).
    adm: Option<admin::Handle>,
    /// Its database's `RECONNECT` generation when it was made.
    epoch: u32,
    /// `ReadyForQuery` replies the owner's bytes written so far ask for and not yet came.
    owes: u32,
    /// The owner keeps this connection past a `ReadyForQuery` `I` that answers all it owes
    /// (as of its last send's `keep`).
    keep: bool,
    /// A `ReadyForQuery` `I` answered all the owner asked for and it does not keep the
    /// connection: it is giving it back (transaction pooling). Until the owner sends
    /// again, what the server says is not the client's (a FATAL of a dying server is
    /// logged and the connection closed, the client never sees it; PgBouncer drops what a
    /// server says while no client query is outstanding).
    spent: bool,
}

impl std::fmt::Debug for PgUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgUp")
            .field("phase", &self.phase)
            .field("up", &self.up)
            .field("owner", &self.owner)
            .finish()
    }
}

impl PgUp {
    fn me_ref(&self) -> SrvRef {
        SrvRef {
            peer: self.io.me(),
            up: self.up,
            pid: self.pid,
            secret: self.secret,
            epoch: self.epoch,
        }
    }

    /// Close now (a Terminate first when logged in).
    fn terminate(&mut self) {
        if matches!(self.phase, SPhase::Ready | SPhase::Resetting) && !self.io.saw_eof() {
            let mut b = BytesMut::new();
            frontend::terminate(&mut b);
            self.io.out.push(b.freeze());
        }
        self.done = true;
        self.owner = None;
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.done {
            self.io.input.clear();
            return;
        }
        match self.phase {
            SPhase::Cancel => self.cancel_over_tls(),
            SPhase::Login => self.login(ctx, now),
            SPhase::Ready | SPhase::Resetting => self.relay(ctx, now),
        }
    }

    /// A cancel connection with upstream TLS (not `done` yet): the server's `S`, TLS, the
    /// CancelRequest (held by the session until the handshake ends), then close.
    fn cancel_over_tls(&mut self) {
        if self.io.tls().is_none() {
            match client::ssl_response(&mut self.io.input) {
                Ok(false) => return,
                Ok(true) => match upstream_tls(&self.shared, self.up) {
                    Some(tls) => {
                        self.io.start_tls(tls);
                        let mut b = BytesMut::new();
                        message::encode_cancel(&mut b, self.pid, self.secret);
                        self.io.out.push(b.freeze());
                    }
                    None => self.done = true,
                },
                Err(e) => {
                    tracing::debug!(
                        "postgres upstream {}: cancel: {e}",
                        self.shared.stats.upstreams[self.up].addr
                    );
                    self.done = true;
                }
            }
        }
        self.io.input.clear();
        if self.io.tls().is_some_and(|t| !t.is_handshaking()) {
            // The CancelRequest went into the session: out, then close_notify and FIN.
            self.done = true;
        }
    }

    /// The login exchange.
    fn login(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let Some(l) = self.login.as_mut() else { return };
        let mut r = l.handle_input(&mut self.io.input);
        if l.wants_tls() {
            // `S` (and nothing after it): TLS from here, then the StartupMessage inside it.
            match upstream_tls(&self.shared, self.up) {
                Some(tls) => {
                    self.io.start_tls(tls);
                    l.tls_started();
                }
                None => {
                    r = Err(client::LoginError::Protocol(
                        "no TLS session for the server",
                    ))
                }
            }
        }
        while let Some(b) = l.poll_transmit() {
            self.io.out.push(b);
        }
        match r {
            Ok(None) => {}
            Ok(Some(done)) => {
                self.login = None;
                if let Some(keys) = done.scram_keys {
                    // The server proved the password: the keys are right for it.
                    let key = (self.up, self.login_user().to_owned());
                    self.shared.scram_keys().insert(key, keys);
                }
                if let Some((pid, secret)) = done.cancel_key {
                    self.pid = pid;
                    self.secret = secret;
                }
                self.logged_in(ctx, done.parameters, now);
                if !self.io.input.is_empty() {
                    self.relay(ctx, now);
                }
            }
            Err(client::LoginError::Server(e)) => {
                self.login = None;
                let mut b = BytesMut::new();
                e.encode(&mut b);
                self.login_failed(ctx, Some(b.freeze()), "", now);
            }
            Err(e) => {
                self.login = None;
                let why = match e {
                    client::LoginError::PasswordRequired => "ferry proxy: the server asks for a password and none is configured (--upstream-password-file or FERRY_UPSTREAM_PASSWORD)".to_owned(),
                    client::LoginError::UnsupportedMechanisms(_) => "ferry proxy: the server offers no SASL mechanism the proxy supports (SCRAM-SHA-256)".to_owned(),
                    client::LoginError::UnsupportedMethod(_) => "ferry proxy: the server asks for an authentication method the proxy does not support".to_owned(),
                    client::LoginError::Auth(AuthError::BadServerSignature) => "ferry proxy: the server's SCRAM signature is wrong".to_owned(),
                    client::LoginError::Auth(e) => format!("ferry proxy: SCRAM exchange with the server failed: {e}"),
                    client::LoginError::TlsRefused => {
                        "ferry proxy: the server does not accept TLS (it answered N to \
                         SSLRequest; --upstream-tls requires it)"
                            .to_owned()
                    }
                    e @ (client::LoginError::SslResponse(_)
                    | client::LoginError::DataAfterSslResponse) => {
                        format!("ferry proxy: TLS with the server refused: {e}")
                    }
                    e => format!("ferry proxy: bad login from server: {e}"),
                };
                self.login_failed(ctx, None, &why, now);
            }
        }
    }

    fn login_user(&self) -> &str {
        match &self.shared.cfg.postgres.upstream_user {
            Some(u) => u,
            None => &self.key.user,
        }
    }

    /// Logged in: cache the parameters, serve a waiter or go idle.
    fn logged_in(&mut self, ctx: &mut WorkerCtx, params: Vec<(String, String)>, now: Instant) {
        self.phase = SPhase::Ready;
        self.login_deadline = None;
        let sh = self.shared.clone();
        let mut w = sh.worker(ctx.index);
        if let Some(p) = self.permit.take() {
            w.report(&sh, self.up, p, true, now);
        }
        let key = w.pools[self.pool].key.clone();
        let params: ServerParams = Arc::new(params);
        w.pools[self.pool].params[self.up] = Some(params.clone());
        {
            let mut map = sh.params.lock().unwrap_or_else(|p| p.into_inner());
            map.insert((*key).clone(), (self.up, params));
        }
        self.active = true;
        if self.draining || self.stale() {
            w.bump(M_CONNECTING, false);
            w.publish(&sh.stats);
            drop(w);
            self.terminate();
            return;
        }
        match w.ready(&sh, self.pool, self.me_ref()) {
            Some(c) => post(ctx, c, M::Attached(self.me_ref(), key)),
            None => {
                self.active = false;
                self.idle_since = Some(now);
            }
        }
    }

    /// The login failed: with the server's ErrorResponse (`err`), or a reason of ours.
    fn login_failed(&mut self, ctx: &mut WorkerCtx, err: Option<Bytes>, why: &str, now: Instant) {
        let sh = self.shared.clone();
        let mut w = sh.worker(ctx.index);
        if let Some(p) = self.permit.take() {
            // The server answered: not an upstream failure (bad credentials, no database).
            w.report(&sh, self.up, p, true, now);
        }
        w.bump(M_CONNECTING, false);
        w.bump(M_FAILED, true);
        // With other connections in this pool the waiters may still be served by them: the
        // refusal goes to the oldest waiter only; else to every one.
        let others = w.pools[self.pool].count.iter().sum::<u32>() > 1;
        let waiters: Vec<Peer> = if others {
            w.pools[self.pool].waiters.pop_front().into_iter().collect()
        } else {
            w.pools[self.pool].waiters.drain(..).collect()
        };
        w.m[M_WAITING] = w.m[M_WAITING].saturating_sub(waiters.len() as u64);
        w.publish(&sh.stats);
        drop(w);
        let err = err.unwrap_or_else(|| error_bytes("FATAL", sqlstate::CONNECTION_FAILURE, why));
        if let Ok(backend::Message::ErrorResponse(f)) = backend::parse(&err) {
            tracing::warn!(
                "postgres upstream {}: login refused: {} ({})",
                sh.stats.upstreams[self.up].addr,
                f.message(),
                f.code()
            );
        }
        for c in waiters {
            post(ctx, c, M::LoginFailed(err.clone()));
        }
        self.done = true;
    }

    /// Logged in: stream server messages to the owner, watching ReadyForQuery.
    fn relay(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.swallow > 0 && !self.drop_own_replies() {
            return;
        }
        // Serving a client that may get what comes (not given back after its last answer).
        let owned = self.owner.is_some() && !self.spent;
        if owned && self.prep.as_ref().is_some_and(|p| !p.settled()) {
            self.relay_tracked(ctx, now);
            return;
        }
        let resetting = matches!(self.phase, SPhase::Resetting);
        let stop = if resetting {
            Stop::FirstReady
        } else if owned {
            Stop::Answered {
                owes: &mut self.owes,
                keep: self.keep,
            }
        } else {
            Stop::Never
        };
        let Scan {
            pos,
            rfqs,
            xacts,
            status,
            bad,
            cut,
        } = scan(&mut self.walk, &self.io.input, stop);
        if bad {
            self.broke(ctx, now);
            return;
        }
        if pos == 0 {
            return;
        }
        let bytes = self.io.input.split_to(pos).freeze();
        if resetting {
            if rfqs > 0 {
                self.phase = SPhase::Ready;
                self.walk.clear();
                self.free(ctx, now);
                if !self.io.input.is_empty() && !self.done {
                    self.relay(ctx, now);
                }
            }
            return;
        }
        // Without an owner: asynchronous messages while idle (notices, parameter changes).
        if let Some(o) = self.owner.filter(|_| owned) {
            if let Some(a) = &self.adm {
                a.replies(rfqs, xacts);
            }
            self.unacked += bytes.len();
            if self.last_send.is_some() {
                // Progress; a ReadyForQuery ends the wait (until the client sends again).
                self.last_send = (rfqs == 0).then_some(now);
            }
            post(
                ctx,
                o,
                M::Data {
                    bytes,
                    rfqs,
                    status,
                },
            );
            if cut {
                self.spend(ctx, now);
            }
        } else if idle_fatal(&bytes) {
            // PostgreSQL ends an idle session with a FATAL (shutdown, terminated backend)
            // before the EOF: out of the idle list now, not when the EOF comes.
            // Spent (given back by its client, or about to be): the client does not hear
            // of it, a pool never takes it (`went`).
            self.unsolicited_fatal(&bytes);
            self.broke(ctx, now);
        }
    }

    /// The owner got its last answer ([`PgUp::spent`]): what is left of the input is
    /// not the client's.
    fn spend(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.spent = true;
        self.last_send = None;
        if !self.io.input.is_empty() && !self.done {
            self.relay(ctx, now);
        }
    }

    /// Log the FATAL among asynchronous messages no client gets.
    #[cold]
    fn unsolicited_fatal(&self, mut b: &[u8]) {
        while b.len() >= 5 {
            let n = (i32::from_be_bytes([b[1], b[2], b[3], b[4]]).max(4) as usize + 1).min(b.len());
            if b[0] == b'E' {
                if let Ok(backend::Message::ErrorResponse(f)) = backend::parse(&b[..n]) {
                    tracing::info!(
                        "postgres upstream {}: server connection closing between transactions: {} ({}, {})",
                        self.shared.stats.upstreams[self.up].addr,
                        f.message(),
                        f.severity(),
                        f.code()
                    );
                }
                return;
            }
            b = &b[n..];
        }
    }

    /// [`relay`](PgUp::relay) with replies owed to a client with named statements: each
    /// message goes through the reply queue, which drops the replies to what the proxy
    /// injected and makes its own at their turn.
    #[cold]
    fn relay_tracked(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        enum Piece {
            Input(usize, usize),
            Made(Bytes),
        }
        let mut pieces: Vec<Piece> = Vec::new();
        let mut pos = 0usize;
        let mut seg = 0usize;
        let mut rfqs = 0u32;
        let mut xacts = 0u32;
        let mut status = b'I';
        let mut bad = false;
        let mut cut = false;
        let Some(prep) = self.prep.as_mut() else {
            return;
        };
        {
            let buf = &self.io.input[..];
            loop {
                if !self.walk.pass_rest(buf, &mut pos) {
                    break;
                }
                // Replies the proxy makes, due now.
                let mut made = BytesMut::new();
                prep.fakes(&mut made);
                if !made.is_empty() {
                    if pos > seg {
                        pieces.push(Piece::Input(seg, pos));
                    }
                    seg = pos;
                    pieces.push(Piece::Made(made.freeze()));
                }
                let (tag, total) = match message::header(buf, pos) {
                    Step::Header { tag, total } => (tag, total),
                    Step::More => break,
                    Step::BadLength(_) => {
                        bad = true;
                        break;
                    }
                };
                let have = buf.len() - pos;
                if tag == b'Z' && (have < 6 || total != 6) {
                    bad = total != 6;
                    break;
                }
                if have < total && prep.may_drop(tag) {
                    if total > MAX_LOGIN_MESSAGE {
                        bad = true;
                    }
                    break;
                }
                match prep.reply(tag) {
                    prepared::Verdict::Pass => {
                        self.walk.pass(buf, &mut pos, total);
                        if tag == b'Z' {
                            rfqs += 1;
                            status = buf[pos - 1];
                            xacts += u32::from(status == b'I');
                            if answered(&mut self.owes, self.keep, status) && prep.settled() {
                                cut = true;
                                break;
                            }
                        }
                    }
                    prepared::Verdict::Drop => {
                        if pos > seg {
                            pieces.push(Piece::Input(seg, pos));
                        }
                        pos += total;
                        seg = pos;
                    }
                }
            }
        }
        if bad {
            self.broke(ctx, now);
            return;
        }
        if pos > seg {
            pieces.push(Piece::Input(seg, pos));
        }
        let bytes = self.io.input.split_to(pos).freeze();
        let Some(o) = self.owner else { return };
        if let Some(u) = self.prep.as_mut().map(|p| std::mem::take(&mut p.undo)) {
            if !u.is_empty() {
                // Before the ReadyForQuery that ends their Sync group.
                post(ctx, o, M::Undo(u));
            }
        }
        if let Some(a) = &self.adm {
            a.replies(rfqs, xacts);
        }
        if self.last_send.is_some() && !pieces.is_empty() {
            self.last_send = (rfqs == 0).then_some(now);
        }
        let last = pieces.len();
        for (i, p) in pieces.into_iter().enumerate() {
            let b = match p {
                Piece::Input(a, z) => bytes.slice(a..z),
                Piece::Made(b) => b,
            };
            // The ReadyForQuery count goes with the last piece: the client may be released
            // only once it has everything.
            let (r, st) = if i + 1 == last {
                (rfqs, status)
            } else {
                (0, b'I')
            };
            self.unacked += b.len();
            post(
                ctx,
                o,
                M::Data {
                    bytes: b,
                    rfqs: r,
                    status: st,
                },
            );
        }
        if cut {
            self.spend(ctx, now);
        }
    }

    /// Drop the replies to the proxy's own queries (whole messages up to each
    /// ReadyForQuery); `false` while some are still to come.
    fn drop_own_replies(&mut self) -> bool {
        while self.swallow > 0 {
            let f = match message::frame(&self.io.input, MAX_LOGIN_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => return false,
                Err(_) => {
                    // Not PostgreSQL: let `relay` find out and close.
                    self.swallow = 0;
                    return true;
                }
            };
            let _ = self.io.input.split_to(f.len);
            if f.tag == b'Z' {
                self.swallow -= 1;
            }
        }
        true
    }

    /// Back to the pool (after a reset): a waiter gets it, else idle.
    fn free(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.owner = None;
        self.unacked = 0;
        self.owed = 0;
        if self.draining || self.stale() {
            self.terminate();
            return;
        }
        let sh = self.shared.clone();
        let mut w = sh.worker(ctx.index);
        let key = w.pools[self.pool].key.clone();
        match w.release(&sh, self.pool, self.me_ref()) {
            Some(c) => post(ctx, c, M::Attached(self.me_ref(), key)),
            None => {
                self.active = false;
                self.idle_since = Some(now);
            }
        }
    }

    /// The connection broke (EOF, reset, bad message, timeout).
    fn broke(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.broke_because(ctx, LOST, now)
    }

    /// [`broke`](PgUp::broke), telling the client `why`.
    fn broke_because(&mut self, ctx: &mut WorkerCtx, why: &'static str, now: Instant) {
        if self.done {
            return;
        }
        let sh = self.shared.clone();
        match self.phase {
            SPhase::Login => {
                let mut w = sh.worker(ctx.index);
                if let Some(p) = self.permit.take() {
                    w.report(&sh, self.up, p, false, now);
                }
                w.bump(M_CONNECTING, false);
                w.bump(M_FAILED, true);
                w.publish(&sh.stats);
                sh.stats.upstreams[self.up].failures.fetch_add(1, Relaxed);
            }
            SPhase::Cancel => {}
            SPhase::Ready | SPhase::Resetting => {
                if self.spent {
                    // Its client had all its answers: it is not told (as for an idle
                    // one); what it sends after comes back to it (`M::Retry`).
                    self.owner = None;
                }
                if self.owner.is_none() && matches!(self.phase, SPhase::Ready) {
                    // No client may take a dead server from the idle list from now on. If
                    // one already did (or it was handed to a waiter), it counts as active.
                    let _ = sh
                        .worker(ctx.index)
                        .remove_idle(&sh, self.pool, self.io.me());
                    self.active = true;
                }
                if let Some(o) = self.owner.take() {
                    post(ctx, o, M::Lost(self.io.me(), why));
                    sh.worker(ctx.index).failure(&sh, self.up, now);
                    sh.stats.upstreams[self.up].failures.fetch_add(1, Relaxed);
                }
            }
        }
        self.done = true;
        self.io.input.clear();
    }

    fn apply(&mut self, ctx: &mut WorkerCtx, m: M, now: Instant) {
        match m {
            M::Send {
                from,
                bytes,
                app,
                tags,
                owes,
                keep,
                ..
            } => {
                if self.done && self.owner != Some(from) {
                    // Broke before taking anything from this client (it took us from the
                    // idle list in the loop turn we broke in): it may go elsewhere.
                    let out = Out::Bytes(bytes, tags, owes);
                    post(ctx, from, M::Retry(self.io.me(), out));
                    return;
                }
                if !self.accept(ctx, from, app, now) {
                    return;
                }
                self.owes += owes;
                self.keep = keep;
                if let Some(tags) = tags {
                    self.tracked().sent(&tags);
                }
                self.owed += bytes.len();
                self.io.out.push(bytes);
            }
            M::Op {
                from,
                op,
                len,
                app,
                keep,
                ..
            } => {
                if self.done && self.owner != Some(from) {
                    // As for bytes: another server connection prepares what it needs.
                    post(ctx, from, M::Retry(self.io.me(), Out::Op(op, len)));
                    return;
                }
                if !self.accept(ctx, from, app, now) {
                    return;
                }
                self.keep = keep;
                self.op(ctx, from, op, len);
            }
            M::Release => {
                if let Some(p) = &mut self.prep {
                    p.release();
                }
                self.owner = None;
                self.spent = false;
                self.unacked = 0;
                self.owed = 0;
                self.last_send = None;
                self.active = false;
                self.idle_since = Some(now);
                if (self.draining || self.stale()) && !self.done {
                    let sh = self.shared.clone();
                    if sh
                        .worker(ctx.index)
                        .remove_idle(&sh, self.pool, self.io.me())
                    {
                        self.active = true;
                        self.terminate();
                    }
                }
            }
            M::Reset => {
                // DISCARD ALL deallocates the proxy's statements too.
                if let Some(p) = &mut self.prep {
                    p.reset();
                }
                self.owner = None;
                self.spent = false;
                self.unacked = 0;
                self.owed = 0;
                self.last_send = None;
                if self.done {
                    return;
                }
                if self.draining {
                    self.terminate();
                    return;
                }
                let mut b = BytesMut::new();
                frontend::query(&mut b, b"DISCARD ALL");
                self.io.out.push(b.freeze());
                self.phase = SPhase::Resetting;
                self.app = Arc::from("");
            }
            M::Close => {
                self.owner = None;
                self.terminate();
            }
            M::Ack(n) => self.unacked = self.unacked.saturating_sub(n),
            M::Admin(o) => self.order(ctx, o),
            _ => {}
        }
    }

    /// An admin console order: `KILL` closes now (its client is told), `RECONNECT` closes
    /// an idle connection (a busy one closes once released).
    #[cold]
    fn order(&mut self, ctx: &mut WorkerCtx, o: admin::Order) {
        if self.done
            || matches!(self.phase, SPhase::Cancel)
            || matches!(o, admin::Order::Publish | admin::Order::KillClient)
        {
            // Publish: `show` after every mail does it (KillClient is for clients).
            return;
        }
        let sh = self.shared.clone();
        let idle = self.owner.is_none() && matches!(self.phase, SPhase::Ready);
        if o == admin::Order::Reconnect {
            if idle
                && sh
                    .worker(ctx.index)
                    .remove_idle(&sh, self.pool, self.io.me())
            {
                self.active = true;
                self.terminate();
            }
            return;
        }
        if idle {
            // Out of the idle list; if a client took it meanwhile, it counts as active.
            let _ = sh
                .worker(ctx.index)
                .remove_idle(&sh, self.pool, self.io.me());
            self.active = true;
        }
        if let Some(p) = self.permit.take() {
            // Still logging in: not an upstream failure.
            let mut w = sh.worker(ctx.index);
            w.breakers[self.up].on_ignored(p);
            w.bump(M_CONNECTING, false);
            w.publish(&sh.stats);
        }
        if let Some(o) = self.owner {
            post(ctx, o, M::Lost(self.io.me(), admin::KILLED));
        }
        self.terminate();
    }

    /// The owner's bytes or op is coming: set its `application_name` first if it is new
    /// here, take the owner. `false`: the connection is gone (the client is told).
    fn accept(&mut self, ctx: &WorkerCtx, from: Peer, app: Option<Arc<str>>, now: Instant) -> bool {
        if self.done {
            post(ctx, from, M::Lost(self.io.me(), LOST));
            return false;
        }
        if let Some(app) = app {
            if app != self.app {
                // The client's application_name, as PgBouncer does; the reply is
                // swallowed (`swallow`).
                let mut b = BytesMut::new();
                let sql = format!("SET application_name = {}", quote_literal(&app));
                frontend::query(&mut b, sql.as_bytes());
                self.io.out.push(b.freeze());
                self.swallow += 1;
                self.app = app;
            }
        }
        if self.owner != Some(from) {
            self.owner = Some(from);
            self.unacked = 0;
            self.owed = 0;
            self.owes = 0;
            self.active = true;
        }
        // Whatever the server says from now on may answer these bytes.
        self.spent = false;
        self.idle_since = None;
        if self.shared.cfg.postgres.response_timeout.is_some() && self.last_send.is_none() {
            self.last_send = Some(now);
        }
        true
    }

    /// The server's named-statement state (made at the first tracked send).
    fn tracked(&mut self) -> &mut prepared::Server {
        let cap = self.shared.cfg.postgres.max_prepared_statements;
        let prefix = &self.shared.stmt_prefix;
        self.prep
            .get_or_insert_with(|| Box::new(prepared::Server::new(cap, prefix)))
    }

    /// A named-statement op of the owner's: rewritten (a Parse injected first if needed),
    /// or answered at its turn.
    #[cold]
    fn op(&mut self, ctx: &WorkerCtx, from: Peer, op: prepared::Op, len: usize) {
        let mut out = Vec::new();
        if matches!(op, prepared::Op::Forget) {
            // Maybe DISCARD ALL, which resets application_name too.
            self.app = Arc::from("");
        }
        let p = self.tracked();
        p.op(op, &mut out);
        if !p.undo.is_empty() {
            // Skipped after an error (before the client's Sync).
            let u = std::mem::take(&mut p.undo);
            post(ctx, from, M::Undo(u));
        }
        let mut fakes = BytesMut::new();
        p.fakes(&mut fakes);
        if out.is_empty() {
            // Nothing to write for it: acknowledged at once.
            if len > 0 {
                post(ctx, from, M::Ack(len));
            }
        } else {
            self.owed += len;
            for b in out {
                self.io.out.push(b);
            }
        }
        if !fakes.is_empty() {
            self.unacked += fakes.len();
            post(
                ctx,
                from,
                M::Data {
                    bytes: fakes.freeze(),
                    rfqs: 0,
                    status: b'I',
                },
            );
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        if let Some(d) = self.login_deadline {
            return Some(d);
        }
        if self.owner.is_none() {
            return self.idle_since.map(|t| t + self.shared.tun.idle_timeout());
        }
        match (self.last_send, self.shared.cfg.postgres.response_timeout) {
            (Some(t), Some(d)) => Some(t + d),
            _ => None,
        }
    }

    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.done {
            return;
        }
        if self.login_deadline.is_some_and(|d| now >= d) {
            tracing::debug!(
                "postgres upstream {}: login timeout",
                self.shared.stats.upstreams[self.up].addr
            );
            self.broke(ctx, now);
            return;
        }
        if self.owner.is_none() {
            if let Some(t) = self.idle_since {
                if now >= t + self.shared.tun.idle_timeout() {
                    let sh = self.shared.clone();
                    if sh
                        .worker(ctx.index)
                        .remove_idle(&sh, self.pool, self.io.me())
                    {
                        self.active = true;
                        self.terminate();
                    } else {
                        self.idle_since = None;
                    }
                }
            }
            return;
        }
        if let (Some(t), Some(d)) = (self.last_send, self.shared.cfg.postgres.response_timeout) {
            if now >= t + d {
                tracing::debug!(
                    "postgres upstream {}: response timeout",
                    self.shared.stats.upstreams[self.up].addr
                );
                self.broke_because(ctx, SILENT, now);
            }
        }
    }
}

impl Half for PgDown {
    type Shared = PgShared;
    type Mail = PgMail;

    ferry_driver::half_io!();
    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        if self.done || self.io.out.len() >= WINDOW {
            return false;
        }
        match self.phase {
            Phase::Login => false,
            Phase::Ready => {
                !self.stalled
                    && self.unacked < WINDOW
                    && self.pending_len < WINDOW
                    // A Query or Parse is read whole (up to the message limit).
                    && (self.io.input.len() < ctx.options.input_high_water
                        || (self.walk.rest() == 0 && matches!(self.io.input.first(), Some(b'Q' | b'P')))
                        // With named statements, Bind, Describe and Close too.
                        || (self.walk.rest() == 0
                            && self.prep.is_some()
                            && matches!(self.io.input.first(), Some(b'B' | b'D' | b'C'))))
            }
            Phase::Admin(_) => self.io.input.len() < admin::MAX_MESSAGE + 5,
            // A startup packet, or a SASL message (PostgreSQL's limits).
            _ => self.io.input.len() < server::MAX_AUTH_MESSAGE + 16,
        }
    }
    fn is_finished(&self) -> bool {
        self.done && self.io.out.is_empty()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        [self.login_deadline, self.waiting, self.tick]
            .into_iter()
            .flatten()
            .min()
    }
    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let before = self.io.input.len();
        PgDown::process(self, ctx, now);
        self.show(ctx, now, before);
    }
    fn on_written(&mut self, ctx: &WorkerCtx, n: usize) {
        if let Some(a) = &self.adm {
            a.sent(n);
        }
        let a = n.min(self.owed);
        if a > 0 {
            self.owed -= a;
            if let Some(s) = self.srv {
                post(ctx, s.peer, M::Ack(a));
            }
        }
    }
    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let before = self.io.input.len();
        PgDown::process(self, ctx, now);
        self.show(ctx, now, before);
        self.finish();
    }
    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let before = self.io.input.len();
        PgDown::on_timeout(self, ctx, now);
        self.show(ctx, now, before);
    }
    fn begin_shutdown(&mut self, _ctx: &mut WorkerCtx, _now: Instant) {
        self.draining = true;
        if self.done {
            return;
        }
        let idle = match self.phase {
            Phase::Ready => match self.srv {
                None => true,
                Some(_) => self.t.idle() && self.walk.rest() == 0,
            },
            _ => true,
        };
        if idle {
            self.fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            );
        }
    }
    fn on_mail(&mut self, ctx: &mut WorkerCtx, mail: PgMail, now: Instant) {
        if let M::Ack(n) = mail.0 {
            // Flow control only: nothing the console shows changes.
            self.unacked = self.unacked.saturating_sub(n);
            return;
        }
        let before = self.io.input.len();
        self.apply(ctx, mail.0, now);
        self.show(ctx, now, before);
    }
    fn close(self, ctx: &mut WorkerCtx) {
        let sh = self.shared.clone();
        sh.stats.downstream_open.fetch_sub(1, Relaxed);
        if matches!(self.phase, Phase::Admin(_)) {
            sh.admin.unwatch();
        }
        if let Some((pid, _, _)) = &self.cancel {
            sh.cancels.remove(*pid);
        }
        let me = self.io.me();
        if self.waiting.is_some() {
            sh.worker(ctx.index).unwait(&sh, self.pool, me);
        }
        if let Some(s) = self.srv {
            let clean = self.t.idle() && self.walk.rest() == 0 && self.pending.is_empty();
            if !clean {
                post(ctx, s.peer, M::Close);
            } else if self.t.pinned || self.mode() == PoolMode::Session {
                post(ctx, s.peer, M::Reset);
            } else {
                post(ctx, s.peer, M::Release);
                if let Some(w) = sh.worker(ctx.index).release(&sh, self.pool, s) {
                    if let Some(k) = self.key.clone() {
                        post(ctx, w, M::Attached(s, k));
                    }
                }
            }
        }
    }
}

impl Downstream for PgDown {
    fn open(ctx: &mut WorkerCtx, shared: &Arc<PgShared>, io: Io, now: Instant) -> Option<Self> {
        let _ = ctx;
        shared.stats.downstream_open.fetch_add(1, Relaxed);
        Some(PgDown {
            io,
            shared: shared.clone(),
            phase: Phase::Auth(Box::default()),
            user: String::new(),
            app: None,
            app_name: Arc::from(""),
            fresh: false,
            told: None,
            key: None,
            pool: 0,
            cancel: None,
            srv: None,
            waiting: None,
            login_deadline: Some(now + LOGIN_TIMEOUT),
            pending: Vec::new(),
            pending_len: 0,
            pending_syncs: 0,
            t: Tracker::default(),
            prep: None,
            stalled: false,
            walk: Walker::default(),
            drop: 0,
            unacked: 0,
            owed: 0,
            retry_bytes: Vec::new(),
            retried: 0,
            done: false,
            draining: false,
            adm: None,
            held: false,
            tick: None,
        })
    }

    /// Every [`admin::TICK`]: carry out the console's `KILL`/`RECONNECT` orders for this
    /// worker's connections; stop after `SHUTDOWN WAIT_FOR_SERVERS` once no server
    /// connection is left.
    fn tick(ctx: &mut WorkerCtx, shared: &PgShared, now: Instant) -> Option<Instant> {
        shared
            .admin
            .orders(ctx.index, |peer, o| post(ctx, peer, M::Admin(o)));
        if shared.admin.shutdown_due() {
            if let Some(s) = shared.shutdown.get() {
                s.trigger();
            }
        }
        Some(now + admin::TICK)
    }

    /// Mail for a connection that is gone: a server connection handed to a vanished client
    /// goes back to the pool; bytes for a vanished server tell their client it is lost.
    fn drop_mail(ctx: &mut WorkerCtx, shared: &PgShared, mail: PgMail) {
        match mail.0 {
            M::Attached(s, key) => {
                let mut w = shared.worker(ctx.index);
                let Some(&pool) = w.ids.get(&key) else { return };
                post(ctx, s.peer, M::Release);
                if let Some(c) = w.release(shared, pool, s) {
                    post(ctx, c, M::Attached(s, key));
                }
            }
            // Its owner (if any) was told `Lost` when it closed; the client checks.
            M::Send {
                from,
                to,
                bytes,
                tags,
                owes,
                ..
            } => post(ctx, from, M::Retry(to, Out::Bytes(bytes, tags, owes))),
            M::Op {
                from, to, op, len, ..
            } => post(ctx, from, M::Retry(to, Out::Op(op, len))),
            _ => {}
        }
    }
}

impl Half for PgUp {
    type Shared = PgShared;
    type Mail = PgMail;

    ferry_driver::half_io!();
    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        !self.done
            && self.unacked < WINDOW
            && self.io.out.len() < WINDOW
            && self.io.input.len() < ctx.options.input_high_water.max(MAX_LOGIN_MESSAGE)
    }
    fn is_finished(&self) -> bool {
        self.done && self.io.out.is_empty()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline()
    }
    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        PgUp::process(self, ctx, now);
        self.show(ctx, now);
    }
    fn on_written(&mut self, ctx: &WorkerCtx, n: usize) {
        let a = n.min(self.owed);
        if a > 0 {
            self.owed -= a;
            if let Some(o) = self.owner {
                post(ctx, o, M::Ack(a));
            }
        }
    }
    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        PgUp::process(self, ctx, now);
        self.broke(ctx, now);
    }
    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        PgUp::on_timeout(self, ctx, now);
        self.show(ctx, now);
    }
    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, _now: Instant) {
        self.draining = true;
        if self.done || self.owner.is_some() {
            return;
        }
        if matches!(self.phase, SPhase::Ready) {
            let sh = self.shared.clone();
            if sh
                .worker(ctx.index)
                .remove_idle(&sh, self.pool, self.io.me())
            {
                self.active = true;
                self.terminate();
            }
        }
    }
    fn on_mail(&mut self, ctx: &mut WorkerCtx, mail: PgMail, now: Instant) {
        if let M::Ack(n) = mail.0 {
            // Flow control only: nothing the console shows changes.
            self.unacked = self.unacked.saturating_sub(n);
            return;
        }
        self.apply(ctx, mail.0, now);
        self.show(ctx, now);
    }
    fn close(mut self, ctx: &mut WorkerCtx) {
        if !self.counted {
            return; // a cancel connection
        }
        let now = ctx.clock.now();
        if !self.done {
            let tls_failed = self.io.tls().and_then(|t| t.error()).map(|e| e.to_string());
            match tls_failed {
                // A certificate refused (or any TLS failure) while logging in: the waiting
                // clients hear why, and no other connection is tried for them.
                Some(e) if matches!(self.phase, SPhase::Login) => {
                    self.login = None;
                    let why = format!("ferry proxy: TLS with the server failed: {e}");
                    self.login_failed(ctx, None, &why, now);
                }
                _ => self.broke(ctx, now),
            }
        }
        let sh = self.shared.clone();
        sh.stats.upstreams[self.up].open.fetch_sub(1, Relaxed);
        let failed = {
            let mut w = sh.worker(ctx.index);
            if let Some(p) = self.permit.take() {
                w.report(&sh, self.up, p, false, now);
                w.bump(M_CONNECTING, false);
            }
            w.gone(ctx, &sh, self.pool, self.up, self.io.me(), self.active, now)
        };
        for c in failed {
            post(ctx, c, M::ConnectFailed);
        }
    }
}

impl Upstream for PgUp {
    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<PgShared>,
        io: Io,
        tag: u64,
        now: Instant,
    ) -> Option<Self> {
        let (pending, key) = {
            let mut w = shared.worker(ctx.index);
            let p = w.pending.remove(&tag)?;
            let key = match &p {
                Pending::Server { pool, .. } => w.pools[*pool].key.clone(),
                Pending::Cancel { .. } => Arc::new(PoolKey {
                    user: String::new(),
                    database: String::new(),
                    params: Vec::new(),
                }),
            };
            (p, key)
        };
        let mut b = BytesMut::new();
        let mut s = PgUp {
            io,
            shared: shared.clone(),
            phase: SPhase::Cancel,
            pool: 0,
            up: 0,
            key,
            counted: false,
            owner: None,
            pid: 0,
            secret: 0,
            permit: None,
            login: None,
            walk: Walker::default(),
            swallow: 0,
            prep: None,
            app: Arc::from(""),
            unacked: 0,
            owed: 0,
            idle_since: None,
            login_deadline: None,
            active: false,
            done: false,
            draining: false,
            last_send: None,
            adm: None,
            epoch: 0,
            owes: 0,
            keep: false,
            spent: false,
        };
        match pending {
            Pending::Cancel { up, pid, secret } if shared.cfg.upstream_tls.is_some() => {
                // SSLRequest first; the CancelRequest goes inside TLS (`cancel_over_tls`).
                message::encode_ssl_request(&mut b);
                (s.up, s.pid, s.secret) = (up, pid, secret);
                s.login_deadline =
                    Some(now + shared.tun.connect_timeout().max(Duration::from_secs(5)));
            }
            Pending::Cancel { pid, secret, .. } => {
                message::encode_cancel(&mut b, pid, secret);
                s.done = true;
            }
            Pending::Server { pool, up, permit } => {
                s.phase = SPhase::Login;
                s.pool = pool;
                s.up = up;
                s.permit = Some(permit);
                s.counted = true;
                shared.stats.upstreams[up].open.fetch_add(1, Relaxed);
                let key = s.key.clone();
                let pg = &shared.cfg.postgres;
                let user = pg.upstream_user.as_deref().unwrap_or(&key.user);
                s.register(ctx, user);
                let params: Vec<(&str, &str)> = key
                    .params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut login = client::Login::new(
                    user,
                    Some(&key.database),
                    &params,
                    pg.upstream_password.as_deref(),
                    &shared.nonce(),
                )
                .with_max_message(MAX_LOGIN_MESSAGE);
                if shared.cfg.upstream_tls.is_some() {
                    // SSLRequest first, the StartupMessage once TLS is up (`login`).
                    login = login.with_ssl_request();
                }
                let cached = shared.scram_keys().get(&(up, user.to_owned())).cloned();
                if let Some(keys) = cached {
                    login = login.with_cached_keys(keys);
                }
                while let Some(m) = login.poll_transmit() {
                    b.extend_from_slice(&m);
                }
                s.login = Some(Box::new(login));
                let login = shared.tun.connect_timeout().max(Duration::from_secs(5));
                s.login_deadline = Some(now + login);
            }
        }
        s.io.out.push(b.freeze());
        s.io.set_connect_deadline(Some(now + shared.tun.connect_timeout()));
        Some(s)
    }

    fn connect_failed(&mut self, ctx: &mut WorkerCtx, error: std::io::Error, now: Instant) {
        tracing::debug!(
            "postgres upstream {} connect failed: {error}",
            self.shared.stats.upstreams[self.up].addr
        );
        if !matches!(self.phase, SPhase::Cancel) {
            self.broke(ctx, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoService;
    impl ferry_driver::Service for NoService {
        fn call(&self, _req: ferry_driver::Request) -> ferry_driver::Response {
            ferry_driver::Response::text(500, "unused\n")
        }
    }

    fn peer(token: usize) -> Peer {
        Peer { token, gen: 1 }
    }

    fn srv(token: usize) -> SrvRef {
        SrvRef {
            peer: peer(token),
            up: 0,
            pid: token as i32,
            secret: 7,
            epoch: 0,
        }
    }

    /// The pool's hand-outs: idle connections last in first out, a released one goes to the
    /// oldest waiter, a waiter that left is skipped, gauges follow.
    #[test]
    fn the_pool_hands_connections_to_waiters_in_order() {
        let ups: Vec<crate::Upstream> = vec!["127.0.0.1:1".parse().unwrap()];
        let stats = Arc::new(ProxyStats::new("postgres", &ups, 1));
        let mut cfg = ProxyConfig::new(ups);
        cfg.postgres.pool_size = 1;
        let live = crate::reload::Live::new(cfg.clone(), stats.clone(), 1);
        let sh = PgShared::new(cfg, 1, stats.clone(), live);
        // No driver on this thread: connects are refused, so nothing new opens.
        let ctx = WorkerCtx::detached(Arc::new(NoService)).unwrap();
        let now = Instant::ZERO;
        let key = PoolKey {
            user: "u".into(),
            database: "d".into(),
            params: Vec::new(),
        };
        let mut w = sh.worker(0);
        let id = w.pool_id(&key, 1).unwrap();
        assert_eq!(w.pool_id(&key, 1), Some(id), "one pool per key");
        assert!(matches!(
            w.acquire(&ctx, &sh, id, peer(100), now),
            Acquire::NoUpstream
        ));
        // Two logged-in connections (counted as open by the pool).
        w.pools[id].count[0] = 2;
        w.m[M_CONNECTING] = 2;
        assert_eq!(w.ready(&sh, id, srv(1)), None);
        assert_eq!(w.ready(&sh, id, srv(2)), None);
        assert_eq!(w.m[M_IDLE], 2);
        match w.acquire(&ctx, &sh, id, peer(100), now) {
            Acquire::Got(s) => assert_eq!(s, srv(2), "the warmest first"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            w.acquire(&ctx, &sh, id, peer(101), now),
            Acquire::Got(_)
        ));
        // Both busy: clients queue.
        for c in [102, 103, 104] {
            assert!(matches!(
                w.acquire(&ctx, &sh, id, peer(c), now),
                Acquire::Wait
            ));
        }
        assert_eq!(w.m[M_WAITING], 3);
        w.unwait(&sh, id, peer(103));
        assert_eq!(w.release(&sh, id, srv(2)), Some(peer(102)));
        assert_eq!(w.release(&sh, id, srv(1)), Some(peer(104)), "103 left");
        assert_eq!(w.release(&sh, id, srv(1)), None);
        assert_eq!((w.m[M_IDLE], w.m[M_WAITING]), (1, 0));
        assert!(w.remove_idle(&sh, id, peer(1)));
        assert!(!w.remove_idle(&sh, id, peer(1)), "taken already");
        assert!(w.gone(&ctx, &sh, id, 0, peer(1), true, now).is_empty());
        assert_eq!(w.pools[id].count[0], 1);
        // The last connection of a pool with waiters goes: they are failed (nothing opens).
        assert!(matches!(
            w.acquire(&ctx, &sh, id, peer(105), now),
            Acquire::Wait
        ));
        assert_eq!(
            w.gone(&ctx, &sh, id, 0, peer(2), true, now),
            vec![peer(105)]
        );
        drop(w);
        let p = &stats.pool[0];
        assert_eq!(p[M_WAITING].load(Relaxed), 0);
        assert_eq!(p[M_CLOSED].load(Relaxed), 2);
    }

    #[test]
    fn literals_quote() {
        assert_eq!(quote_literal("psql"), "'psql'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'c"), r"E'a\\b''c'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn pool_modes_parse() {
        assert_eq!("transaction".parse(), Ok(PoolMode::Transaction));
        assert_eq!("session".parse(), Ok(PoolMode::Session));
        assert!("statement".parse::<PoolMode>().is_err());
    }

    #[test]
    fn passwords_do_not_show_in_debug() {
        let c = PostgresConfig {
            upstream_password: Some(b"s3cret".to_vec()),
            client_password: Some(b"hunter2".to_vec()),
            ..PostgresConfig::default()
        };
        let d = format!("{c:?}");
        assert!(!d.contains("s3cret") && !d.contains("hunter2"), "{d}");
    }

    /// An idle server's asynchronous messages: a FATAL among them is found (the session is
    /// ending), notices and parameter changes alone are not one; truncated input is safe.
    #[test]
    fn idle_fatal_finds_an_error_response() {
        let mut b = BytesMut::new();
        backend::error_response(&mut b, "NOTICE", "00000", "hello");
        let notice: Vec<u8> = b
            .iter()
            .map(|&c| if c == b'E' { b'N' } else { c })
            .collect();
        let mut fatal = BytesMut::new();
        backend::error_response(&mut fatal, "FATAL", "57P01", "terminating connection");
        assert!(!idle_fatal(&notice[..1]));
        assert!(!idle_fatal(&notice));
        let mut both = notice.clone();
        both.extend_from_slice(&fatal);
        assert!(idle_fatal(&both));
        assert!(idle_fatal(&fatal[..5]));
        assert!(
            !idle_fatal(&[b'S', 0, 0, 0, 0, b'E']),
            "a bad length is skipped"
        );
    }

    /// A server's answer to a simple `Query` (a message, then ReadyForQuery `status`).
    fn answer(b: &mut BytesMut, status: TxStatus) {
        backend::parameter_status(b, "is_superuser", "off");
        backend::ready_for_query(b, status);
    }

    /// The farewell of a dying server read with the answer to its client's last query:
    /// the scan stops after that answer's ReadyForQuery (the FATAL is not the client's),
    /// but not while more is owed (pipelined `Sync`s), inside a transaction or when the
    /// client keeps the connection (session pooling, pinned, unsynced messages).
    #[test]
    fn the_scan_stops_after_the_last_answer_owed() {
        let mut b = BytesMut::new();
        answer(&mut b, TxStatus::Idle);
        let end = b.len();
        backend::error_response(&mut b, "FATAL", "57P01", "terminating connection");
        let buf = b.freeze();
        let mut owes = 1;
        let s = scan(
            &mut Walker::default(),
            &buf,
            Stop::Answered {
                owes: &mut owes,
                keep: false,
            },
        );
        assert_eq!((s.pos, s.rfqs, s.cut, s.bad), (end, 1, true, false));
        assert_eq!(owes, 0);
        // Kept (session pooling, pinned): everything goes, the FATAL too.
        let mut owes = 1;
        let stop = Stop::Answered {
            owes: &mut owes,
            keep: true,
        };
        let s = scan(&mut Walker::default(), &buf, stop);
        assert_eq!((s.pos, s.cut), (buf.len(), false));
        // Idle or resetting: as before.
        let s = scan(&mut Walker::default(), &buf, Stop::Never);
        assert_eq!((s.pos, s.cut), (buf.len(), false));
        let s = scan(&mut Walker::default(), &buf, Stop::FirstReady);
        assert_eq!((s.pos, s.cut), (end, false));

        // Three pipelined Syncs: the first two answers do not end it.
        let mut b = BytesMut::new();
        answer(&mut b, TxStatus::Idle);
        answer(&mut b, TxStatus::Idle);
        let two = b.len();
        answer(&mut b, TxStatus::Idle);
        let three = b.len();
        backend::error_response(&mut b, "FATAL", "57P01", "terminating connection");
        let buf = b.freeze();
        let mut owes = 3;
        let mut walk = Walker::default();
        let s = scan(
            &mut walk,
            &buf[..two],
            Stop::Answered {
                owes: &mut owes,
                keep: false,
            },
        );
        assert_eq!((s.pos, s.rfqs, s.cut), (two, 2, false));
        assert_eq!(owes, 1);
        let s = scan(
            &mut walk,
            &buf[two..],
            Stop::Answered {
                owes: &mut owes,
                keep: false,
            },
        );
        assert_eq!((two + s.pos, s.rfqs, s.cut), (three, 1, true));

        // A transaction left open: the client keeps it.
        let mut b = BytesMut::new();
        answer(&mut b, TxStatus::InTransaction);
        backend::error_response(&mut b, "FATAL", "57P01", "terminating connection");
        let mut owes = 1;
        let stop = Stop::Answered {
            owes: &mut owes,
            keep: false,
        };
        let s = scan(&mut Walker::default(), &b, stop);
        assert_eq!((s.pos, s.cut), (b.len(), false));
        // A ReadyForQuery nothing asked for (owes 0) cuts nothing.
        let mut b = BytesMut::new();
        answer(&mut b, TxStatus::Idle);
        let mut owes = 0;
        let stop = Stop::Answered {
            owes: &mut owes,
            keep: false,
        };
        assert!(!scan(&mut Walker::default(), &b, stop).cut);
    }
}
