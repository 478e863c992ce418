//! The admin console, PgBouncer's: a client of the database `ferry` (or `pgbouncer`, for
//! existing tooling) is not pooled; the proxy answers its simple-query commands itself
//! (`SHOW POOLS`, `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW STATS`, `SHOW DATABASES`,
//! `SHOW USERS`, `SHOW LISTS`, `SHOW CONFIG`, `SHOW VERSION`, `SHOW STATE`, `SHOW HELP`),
//! every value a text column, and `PAUSE [db]`, `RESUME [db]`, `DISABLE db`, `ENABLE db`,
//! `KILL [db]`, `KILL_CLIENT id`, `RECONNECT [db]`, `WAIT_CLOSE [db]`, `RELOAD` (re-read `--config`, as SIGHUP) and `SHUTDOWN`.
//!
//! `PAUSE` (for every database, or one) holds every client (of that database) that needs a
//! server connection from then on (listed as waiting; `pool_wait_timeout` still applies),
//! closes its server connections as `RECONNECT` does (PgBouncer's: idle ones at once, busy
//! ones once released) and answers once none is left (checked every [`TICK`], from one
//! `TICK` on: whatever took a server connection before `PAUSE` has published it by then).
//! `RESUME` lets the held clients go on (within a `TICK`). `DISABLE` refuses new logins to
//! a database (PgBouncer's FATAL), `KILL` drops its clients and server connections and
//! pauses it, `RECONNECT` closes its server connections as they are released (idle ones at
//! once), `WAIT_CLOSE` answers once those are gone. `KILL_CLIENT` closes the client whose
//! `id` (a number given at registration, unique for the process's life) `SHOW CLIENTS`
//! lists. `SHUTDOWN` triggers the workers' shutdown (SIGTERM's drain) and answers nothing:
//! the drain ends the session, as PgBouncer's. `SHUTDOWN WAIT_FOR_SERVERS` pauses every
//! database (its server connections close once released), answers, and triggers the
//! shutdown at the first worker tick that finds no server connection left (the listeners
//! stay open until then: new clients are held, as under `PAUSE`). `SUSPEND` (an online
//! restart's socket handover, which the proxy does not do) and `SHUTDOWN WAIT_FOR_CLIENTS`
//! (the drain cannot stop accepting and leave idle clients be) are refused.
//!
//! What the console shows comes from a [`Registry`]: every client and server connection
//! keeps a [`Handle`] (an entry in its worker's shard, removed when it is dropped) in which
//! it counts bytes, queries, transactions and waits after the events it handles, and
//! publishes its state, link and times after each event while a console session is open
//! (without one, an event costs a relaxed load and a plain store: the first session to open
//! has every connection publish first, through the workers' ticks, and answers after that).
//! Each value is written by that connection's worker alone, with plain relaxed loads and
//! stores (no locked read-modify-write, no cache line shared by writers); the console sums
//! the counters when it asks, plus the totals of the connections closed (folded into their
//! shard's per-database totals when they drop, under the shard's lock, which the I/O path
//! takes only at register and drop). A console query locks each shard only to read its
//! entries, and memory is one entry per open connection plus one entry per database seen
//! (at most [`MAX_DBS`]) per shard. A state change made while no session was open is dated
//! by the connection's last event before the session opened (a wait by its start).
//!
//! `KILL`, `KILL_CLIENT`, `RECONNECT`, `PAUSE` and that refresh reach connections of other
//! workers through the workers' periodic tick ([`Registry::orders`], every [`TICK`]): each
//! worker walks its own shard and mails the orders to its connections.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst,
};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use ferry_driver::relay::Peer;
use ferry_driver::WorkerCtx;
use ferry_postgres::auth::ScramServer;
use ferry_postgres::backend::{self, sqlstate, TxStatus};
use ferry_postgres::{message, server};
use ferry_proto::Instant;

use super::{PgDown, PgShared, PgUp, Phase, PoolMode, SPhase};

/// Database names that reach the console instead of a pool.
pub(super) const DATABASES: [&str; 2] = ["ferry", "pgbouncer"];
/// Databases with their own entry (counters, `PAUSE`, `DISABLE`, ...); more share the
/// entry `*`.
pub(super) const MAX_DBS: usize = 10_000;
/// Users `SHOW USERS` lists at most.
const MAX_USERS: usize = 10_000;
/// Longest console message (a `Query` longer than this is a protocol violation).
pub(super) const MAX_MESSAGE: usize = 64 * 1024;
/// SQLSTATE `syntax_error`, PgBouncer's console's code for commands it does not know.
const SYNTAX_ERROR: &str = "42601";
/// How often a held client checks for `RESUME`, a console session waiting on `PAUSE`
/// or `KILL` checks again, and each worker looks for `KILL`/`RECONNECT` orders.
pub(super) const TICK: std::time::Duration = std::time::Duration::from_millis(100);
/// Ticks a `KILL` waits at most for the connections it dropped to be gone before it
/// answers anyway (they are closing: a client that reads nothing holds its socket open).
const KILL_TICKS: u32 = 50;
/// Ticks the first console session waits at most for every connection's state.
const REFRESH_TICKS: u32 = 20;
/// The FATAL a client of a killed database gets (PgBouncer's reason).
pub(super) const KILLED: &str = "database removed";
/// The FATAL a client `KILL_CLIENT` names gets (PgBouncer's reason).
pub(super) const KICKED: &str = "admin forced disconnect";

/// Whether a startup's database is the console.
pub(super) fn is_console(database: &str) -> bool {
    DATABASES.contains(&database)
}

/// What a connection is doing, as `SHOW CLIENTS`/`SHOW SERVERS` say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum State {
    /// Logging in (a client: startup and authentication; a server: its login).
    Login = 0,
    /// A client logged in (holding a server connection or not); a server linked to a client.
    Active = 1,
    /// A client waiting for a server connection.
    Waiting = 2,
    /// A server connection idle in its pool.
    Idle = 3,
    /// A server connection being reset (`DISCARD ALL`) before it goes back to its pool.
    Used = 4,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Active,
            2 => State::Waiting,
            3 => State::Idle,
            4 => State::Used,
            _ => State::Login,
        }
    }

    fn name(self) -> &'static str {
        match self {
            State::Login => "login",
            State::Active => "active",
            State::Waiting => "waiting",
            State::Idle => "idle",
            State::Used => "used",
        }
    }
}

/// One database as the console controls it (shared by its connections' entries).
#[derive(Debug, Default)]
pub(super) struct Db {
    /// `PAUSE db` (or `KILL db`) is in effect.
    paused: AtomicBool,
    /// `DISABLE db` is in effect: new logins are refused.
    disabled: AtomicBool,
    /// Bumped by `RECONNECT`: server connections made before are closed once released.
    epoch: AtomicU32,
    /// Bumped by `KILL`: connections registered before are dropped.
    kills: AtomicU32,
}

/// `SHOW STATS` counters of one connection, or of a database's closed connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    /// Transactions ended (ReadyForQuery `I` from a server to a client).
    xacts: u64,
    /// Queries answered (every ReadyForQuery from a server to a client).
    queries: u64,
    /// Bytes read from clients.
    received: u64,
    /// Bytes written to clients.
    sent: u64,
    /// Microseconds clients waited for a server connection.
    wait_us: u64,
}

impl Totals {
    fn add(&mut self, o: Totals) {
        self.xacts += o.xacts;
        self.queries += o.queries;
        self.received += o.received;
        self.sent += o.sent;
        self.wait_us += o.wait_us;
    }
}

/// A connection's counters: written by its worker alone (relaxed load and store, no
/// locked read-modify-write), read by the console.
#[derive(Debug, Default)]
struct Counters {
    xacts: AtomicU64,
    queries: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    wait_us: AtomicU64,
}

/// Add `n` to a counter only this thread writes.
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

impl Counters {
    fn totals(&self) -> Totals {
        Totals {
            xacts: self.xacts.load(Relaxed),
            queries: self.queries.load(Relaxed),
            received: self.received.load(Relaxed),
            sent: self.sent.load(Relaxed),
            wait_us: self.wait_us.load(Relaxed),
        }
    }
}

/// A pool as `SHOW POOLS` groups it: user and database.
type PoolName = (Box<str>, Box<str>);

/// One connection as the console sees it.
#[derive(Debug)]
struct Conn {
    client: bool,
    /// Its worker (peers are per worker).
    worker: usize,
    /// The proxy's id of the connection (`ptr`, and `link` of its peer).
    id: u64,
    /// Its number (`id` in `SHOW CLIENTS`/`SHOW SERVERS`, for `KILL_CLIENT`): unique for
    /// the process's life.
    num: u64,
    /// `KILL_CLIENT` named it: close it (once its worker's tick carries the order out).
    kick: AtomicBool,
    user: Box<str>,
    database: Box<str>,
    /// The pool it belongs to (`SHOW POOLS`): the client's user and database.
    pool: PoolName,
    /// Its database's entry (the pool's database) and that entry's name (`*` past
    /// [`MAX_DBS`]).
    db: Arc<Db>,
    db_name: Arc<str>,
    /// `db.kills` and `db.epoch` when it registered.
    born_kills: u32,
    born_epoch: u32,
    addr: Option<SocketAddr>,
    app: Box<str>,
    /// Unix microseconds.
    connect_time: u64,
    state: AtomicU8,
    /// Unix microseconds of the last change of state or link.
    since: AtomicU64,
    /// The id of the connection linked to it, plus one (0: none).
    link: AtomicU64,
    pid: AtomicI32,
    counters: Counters,
}

impl Conn {
    /// `KILL` dropped its database since it registered.
    fn killed(&self) -> bool {
        self.db.kills.load(SeqCst) != self.born_kills
    }

    /// A server connection made before the last `RECONNECT` of its database.
    fn stale(&self) -> bool {
        !self.client && self.db.epoch.load(SeqCst) != self.born_epoch
    }
}

/// One worker's connections, and the totals of its closed ones.
#[derive(Debug, Default)]
struct Shard {
    conns: HashMap<u64, Arc<Conn>>,
    /// `SHOW STATS` totals of the connections closed, by database entry name.
    closed: HashMap<Arc<str>, Totals>,
    /// The [`Registry::orders`] generation this worker has carried out.
    seen: u64,
    /// The refresh generation it has carried out.
    refreshed: u64,
}

type ShardRef = Arc<Mutex<Shard>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `now` of the worker's clock as Unix time in µs (no clock read).
fn unix_micros(ctx: &WorkerCtx, now: Instant) -> u64 {
    ctx.clock.unix_origin_nanos().saturating_add(now.as_nanos()) / 1000
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The databases and users seen.
#[derive(Debug, Default)]
struct Names {
    dbs: HashMap<Arc<str>, Arc<Db>>,
    users: BTreeSet<Box<str>>,
}

/// What a worker's tick tells one of its connections ([`Registry::orders`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Order {
    /// `KILL`: close now (a client gets the FATAL [`KILLED`]).
    Kill,
    /// `RECONNECT`: a server connection closes if idle (else once released).
    Reconnect,
    /// A console session started after none was open: publish your state now.
    Publish,
    /// `KILL_CLIENT`: a client closes now (FATAL [`KICKED`]).
    KillClient,
}

/// Every connection of the proxy, the databases and users seen, and the console's
/// switches.
#[derive(Debug)]
pub(super) struct Registry {
    shards: Vec<ShardRef>,
    names: Mutex<Names>,
    /// `PAUSE` (of every database) is in effect.
    paused: AtomicBool,
    /// Bumped after a `KILL` or `RECONNECT` (or a refresh): each worker then walks its
    /// shard once.
    orders: AtomicU64,
    /// Console sessions open: connections publish their state only while there is one.
    watchers: AtomicUsize,
    /// Bumped when the first console session opens: every connection publishes once.
    refresh: AtomicU64,
    /// The last connection number given ([`Conn::num`]).
    nums: AtomicU64,
    /// `SHUTDOWN WAIT_FOR_SERVERS` came: stop once no server connection is left.
    wait_for_servers: AtomicBool,
}

/// Who a connection is, when it registers.
#[derive(Debug)]
pub(super) struct Entry<'a> {
    pub client: bool,
    pub me: Peer,
    pub user: &'a str,
    pub database: &'a str,
    /// The client's user and database (for a server: its pool's).
    pub pool: (&'a str, &'a str),
    pub addr: Option<SocketAddr>,
    pub app: &'a str,
}

impl Registry {
    /// A registry for `workers` I/O workers.
    pub(super) fn new(workers: usize) -> Registry {
        Registry {
            shards: (0..workers.max(1)).map(|_| ShardRef::default()).collect(),
            names: Mutex::new(Names::default()),
            paused: AtomicBool::new(false),
            orders: AtomicU64::new(0),
            watchers: AtomicUsize::new(0),
            refresh: AtomicU64::new(0),
            nums: AtomicU64::new(0),
            wait_for_servers: AtomicBool::new(false),
        }
    }

    /// Whether a console session is open (connections publish their state after each
    /// event only then).
    #[inline]
    pub(super) fn watched(&self) -> bool {
        self.watchers.load(Relaxed) != 0
    }

    /// A console session opened: when it is the only one, every connection is told to
    /// publish its state. `Some(generation)`: that refresh is not carried out yet (see
    /// [`refreshed`](Registry::refreshed)), the session waits for it.
    fn watch(&self) -> Option<u64> {
        if self.watchers.fetch_add(1, SeqCst) == 0 {
            let g = self.refresh.fetch_add(1, SeqCst) + 1;
            self.order();
            return Some(g);
        }
        let g = self.refresh.load(SeqCst);
        (!self.refreshed(g)).then_some(g)
    }

    /// A console session closed.
    pub(super) fn unwatch(&self) {
        self.watchers.fetch_sub(1, SeqCst);
    }

    /// Whether every worker has told its connections to publish for refresh `g`.
    fn refreshed(&self, g: u64) -> bool {
        self.shards.iter().all(|s| lock(s).refreshed >= g)
    }

    /// Whether `PAUSE` (of every database) is in effect.
    pub(super) fn paused(&self) -> bool {
        self.paused.load(SeqCst)
    }

    /// A worker's tick after `SHUTDOWN WAIT_FOR_SERVERS`: whether the last server
    /// connection is gone, so that the proxy stops now (once: `true` at most once).
    pub(super) fn shutdown_due(&self) -> bool {
        self.wait_for_servers.load(Relaxed)
            && !self.servers(None)
            && self.wait_for_servers.swap(false, SeqCst)
    }

    /// Whether some server connection (of `db`, or any) is open (logging in, idle, busy).
    fn servers(&self, db: Option<&Arc<Db>>) -> bool {
        self.snapshot()
            .iter()
            .any(|c| !c.client && db.is_none_or(|d| Arc::ptr_eq(d, &c.db)))
    }

    /// Whether a server connection that `RECONNECT` (or `PAUSE`) is closing (of one of
    /// `dbs`) is still open.
    fn closing(&self, dbs: &[Arc<Db>]) -> bool {
        self.snapshot()
            .iter()
            .any(|c| c.stale() && dbs.iter().any(|d| Arc::ptr_eq(d, &c.db)))
    }

    /// `KILL_CLIENT num`: mark the client connection numbered `num` (not a console
    /// session's) to be closed by its worker's next tick; `false`: no such client.
    fn kick(&self, num: u64) -> bool {
        let Some(c) = self
            .snapshot()
            .into_iter()
            .find(|c| c.client && c.num == num && !is_console(&c.database))
        else {
            return false;
        };
        c.kick.store(true, SeqCst);
        self.order();
        true
    }

    /// Whether a connection `KILL` dropped (of one of `dbs`) is still open.
    fn killing(&self, dbs: &[Arc<Db>]) -> bool {
        self.snapshot()
            .iter()
            .any(|c| c.killed() && dbs.iter().any(|d| Arc::ptr_eq(d, &c.db)))
    }

    /// The entry of database `name` and its name: made if new (`*` past [`MAX_DBS`]).
    fn db(&self, name: &str) -> (Arc<str>, Arc<Db>) {
        let mut n = lock(&self.names);
        if let Some((k, d)) = n.dbs.get_key_value(name) {
            return (k.clone(), d.clone());
        }
        let name: Arc<str> = if n.dbs.len() >= MAX_DBS {
            Arc::from("*")
        } else {
            Arc::from(name)
        };
        let d = n.dbs.entry(name.clone()).or_default().clone();
        (name, d)
    }

    /// The entry of database `name` for a console command: `None` if unknown and not
    /// `make`, or past [`MAX_DBS`].
    fn find_db(&self, name: &str, make: bool) -> Option<Arc<Db>> {
        let mut n = lock(&self.names);
        if let Some(d) = n.dbs.get(name) {
            return Some(d.clone());
        }
        if !make || n.dbs.len() >= MAX_DBS {
            return None;
        }
        Some(n.dbs.entry(Arc::from(name)).or_default().clone())
    }

    /// Every database entry but the console's and `*`, sorted by name.
    fn pooled_dbs(&self) -> Vec<(Arc<str>, Arc<Db>)> {
        let mut v: Vec<(Arc<str>, Arc<Db>)> = lock(&self.names)
            .dbs
            .iter()
            .filter(|(k, _)| !is_console(k) && &***k != "*")
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Tell every worker to walk its shard for `KILL`/`RECONNECT` orders.
    fn order(&self) {
        self.orders.fetch_add(1, SeqCst);
    }

    /// A worker's tick: when a `KILL` or `RECONNECT` came since its last walk, call `f` with
    /// each of its connections the order concerns.
    pub(super) fn orders(&self, worker: usize, mut f: impl FnMut(Peer, Order)) {
        let g = self.orders.load(SeqCst);
        let todo: Vec<(u64, Order)> = {
            let mut s = lock(&self.shards[worker % self.shards.len()]);
            if s.seen == g {
                return;
            }
            s.seen = g;
            let r = self.refresh.load(SeqCst);
            let publish = s.refreshed < r;
            s.refreshed = r;
            s.conns
                .values()
                .filter_map(|c| {
                    if c.kick.load(SeqCst) {
                        Some((c.id, Order::KillClient))
                    } else if c.killed() {
                        Some((c.id, Order::Kill))
                    } else if c.stale() {
                        Some((c.id, Order::Reconnect))
                    } else if publish {
                        Some((c.id, Order::Publish))
                    } else {
                        None
                    }
                })
                .collect()
        };
        for (id, o) in todo {
            f(Peer::unpack(id), o);
        }
    }

    /// Register a connection of worker `worker`; it is listed until the handle drops.
    pub(super) fn register(&self, worker: usize, e: Entry<'_>) -> Handle {
        let now = unix_us();
        let id = e.me.pack();
        let (db_name, db) = self.db(e.pool.1);
        if e.client {
            let mut n = lock(&self.names);
            if n.users.len() < MAX_USERS && !n.users.contains(e.user) {
                n.users.insert(e.user.into());
            }
        }
        let conn = Arc::new(Conn {
            client: e.client,
            worker,
            id,
            num: self.nums.fetch_add(1, Relaxed) + 1,
            kick: AtomicBool::new(false),
            user: e.user.into(),
            database: e.database.into(),
            pool: (e.pool.0.into(), e.pool.1.into()),
            born_kills: db.kills.load(SeqCst),
            born_epoch: db.epoch.load(SeqCst),
            db,
            db_name,
            addr: e.addr,
            app: e.app.into(),
            connect_time: now,
            state: AtomicU8::new(State::Login as u8),
            since: AtomicU64::new(now),
            link: AtomicU64::new(0),
            pid: AtomicI32::new(0),
            counters: Counters::default(),
        });
        let shard = self.shards[worker % self.shards.len()].clone();
        lock(&shard).conns.insert(id, conn.clone());
        Handle {
            shard,
            conn,
            last: Cell::new((State::Login, None)),
            wait_from: Cell::new(None),
            unseen: Cell::new(None),
        }
    }

    /// Every connection now.
    fn snapshot(&self) -> Vec<Arc<Conn>> {
        let mut all = Vec::new();
        for s in &self.shards {
            all.extend(lock(s).conns.values().cloned());
        }
        all.sort_by_key(|c| (c.connect_time, c.id));
        all
    }

    /// `SHOW STATS` totals per database entry: the closed connections' plus the open ones'.
    fn totals(&self) -> HashMap<Arc<str>, Totals> {
        let mut t: HashMap<Arc<str>, Totals> = HashMap::new();
        for s in &self.shards {
            let s = lock(s);
            for (k, v) in &s.closed {
                t.entry(k.clone()).or_default().add(*v);
            }
            for c in s.conns.values() {
                t.entry(c.db_name.clone())
                    .or_default()
                    .add(c.counters.totals());
            }
        }
        t
    }
}

/// A connection's entry in the [`Registry`] (removed on drop, its counters kept in its
/// shard's totals).
#[derive(Debug)]
pub(super) struct Handle {
    shard: ShardRef,
    conn: Arc<Conn>,
    /// The state and link last published (only this connection's thread reads them):
    /// most events change neither, and then nothing is written.
    last: Cell<(State, Option<Peer>)>,
    /// A client waiting for a server connection: since when (Unix µs).
    wait_from: Cell<Option<u64>>,
    /// The last event handled while no console session was open (nothing published): the
    /// time a change found later is dated.
    unseen: Cell<Option<Instant>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let c = &self.conn;
        let mut s = lock(&self.shard);
        s.conns.remove(&c.id);
        let t = c.counters.totals();
        if t != Totals::default() {
            s.closed.entry(c.db_name.clone()).or_default().add(t);
        }
    }
}

impl Handle {
    /// Publish the connection's state, the peer it is linked to and (a server) the
    /// backend's pid, as of `now` (the worker's clock; or of the last event not published,
    /// see [`unseen`](Handle::unseen)). Nothing is written (nor the time converted) when
    /// state and link are those last published.
    #[inline]
    pub(super) fn set(
        &self,
        state: State,
        link: Option<Peer>,
        pid: i32,
        ctx: &WorkerCtx,
        now: Instant,
    ) {
        let at = self.unseen.take().unwrap_or(now);
        self.set_with(state, link, pid, || unix_micros(ctx, at));
    }

    /// [`set`](Handle::set) at `now_us()` (Unix time, µs; called only on a change).
    #[inline]
    fn set_with(&self, state: State, link: Option<Peer>, pid: i32, now_us: impl FnOnce() -> u64) {
        if self.last.get() == (state, link) {
            return;
        }
        self.changed(state, link, pid, now_us());
    }

    #[inline(never)]
    fn changed(&self, state: State, link: Option<Peer>, pid: i32, now: u64) {
        let c = &self.conn;
        self.last.set((state, link));
        // A waiting client's time is when it started waiting (also if it started while
        // nothing was published).
        let since = match (state, self.wait_from.get()) {
            (State::Waiting, Some(t)) => t,
            _ => now,
        };
        c.state.store(state as u8, Relaxed);
        c.link.store(link.map_or(0, |p| p.pack() + 1), Relaxed);
        c.since.store(since, Relaxed);
        if pid != 0 {
            c.pid.store(pid, Relaxed);
        }
    }

    /// An event handled while no console session is open: its state is not published
    /// (a console session that opens has every connection publish).
    #[inline]
    pub(super) fn unseen(&self, now: Instant) {
        self.unseen.set(Some(now));
    }

    /// Whether a client waits for a server connection after an event (`total_wait_time`
    /// counts each wait when it ends; kept whether or not a console session is open).
    #[inline]
    pub(super) fn waiting(&self, waiting: bool, ctx: &WorkerCtx, now: Instant) {
        if waiting != self.wait_from.get().is_some() {
            self.wait_changed(waiting, unix_micros(ctx, now));
        }
    }

    #[inline(never)]
    fn wait_changed(&self, waiting: bool, now: u64) {
        if let Some(from) = self.wait_from.replace(waiting.then_some(now)) {
            bump(&self.conn.counters.wait_us, now.saturating_sub(from));
        }
    }

    /// Bytes read from a client.
    #[inline]
    pub(super) fn received(&self, n: usize) {
        if n > 0 {
            bump(&self.conn.counters.received, n as u64);
        }
    }

    /// Bytes written to a client.
    #[inline]
    pub(super) fn sent(&self, n: usize) {
        bump(&self.conn.counters.sent, n as u64);
    }

    /// Replies a server passed to its client: `queries` ReadyForQuery, `xacts` of them `I`.
    #[inline]
    pub(super) fn replies(&self, queries: u32, xacts: u32) {
        if queries > 0 {
            let c = &self.conn.counters;
            bump(&c.queries, u64::from(queries));
            bump(&c.xacts, u64::from(xacts));
        }
    }

    /// `PAUSE db` (or `KILL db`) is in effect for the connection's database.
    pub(super) fn db_paused(&self) -> bool {
        self.conn.db.paused.load(SeqCst)
    }

    /// `DISABLE db` is in effect for the connection's database.
    pub(super) fn disabled(&self) -> bool {
        self.conn.db.disabled.load(SeqCst)
    }

    /// The `RECONNECT` generation of the connection's database now.
    #[inline]
    pub(super) fn epoch(&self) -> u32 {
        self.conn.db.epoch.load(Relaxed)
    }

    /// The `RECONNECT` generation of the connection's database when it registered.
    pub(super) fn born_epoch(&self) -> u32 {
        self.conn.born_epoch
    }
}

/// A console command that answers later (checked at each [`TICK`]).
#[derive(Debug)]
enum Pending {
    /// `PAUSE` (of every database: `None`) waits for server connections to be released.
    Pause(Option<Arc<Db>>),
    /// `KILL` waits (at most [`KILL_TICKS`]) for the connections it dropped to be gone.
    Kill(Vec<Arc<Db>>, u32),
    /// `WAIT_CLOSE` waits for the server connections `RECONNECT` closes (of these
    /// databases) to be gone.
    WaitClose(Vec<Arc<Db>>),
    /// `SHUTDOWN`: no answer (the drain closes the session, as PgBouncer's does).
    Shutdown,
    /// The first console session waits (at most [`REFRESH_TICKS`]) until every
    /// connection was told to publish its state (refresh `g`), and one more tick for them
    /// to do it (`ready`: ticks since every worker told them).
    Refresh { g: u64, ready: u32, waited: u32 },
}

/// A console session's protocol state.
#[derive(Debug, Default)]
pub(super) struct Console {
    /// An extended-protocol message was refused: drop messages up to the next `Sync`.
    skipping: bool,
    /// A `PAUSE`, a `KILL` or the session's first refresh waits (checked first at the next
    /// tick); nothing more is read meanwhile.
    pending: Option<Pending>,
}

/// What a console session's input gave.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Served {
    /// Everything complete was answered; more bytes are needed.
    More,
    /// A `PAUSE`, a `KILL` or a refresh waits: call again at the next [`TICK`].
    Pausing,
    /// The client sent `Terminate`.
    Terminate,
    /// A protocol violation (the FATAL's message).
    Bad(String),
}

impl Console {
    /// A console session; with `refresh` (the `Some` of [`Registry::watch`]) it waits for
    /// every connection to publish its state before it answers.
    pub(super) fn new(refresh: Option<u64>) -> Console {
        Console {
            skipping: false,
            pending: refresh.map(|g| Pending::Refresh {
                g,
                ready: 0,
                waited: 0,
            }),
        }
    }

    /// A [`TICK`] passed (a `KILL` or the first session's refresh counts them).
    pub(super) fn tick(&mut self, sh: &PgShared) {
        match &mut self.pending {
            Some(Pending::Kill(_, t)) => *t += 1,
            Some(Pending::Refresh { g, ready, waited }) => {
                *waited += 1;
                if *ready > 0 || sh.admin.refreshed(*g) {
                    *ready += 1;
                }
            }
            _ => {}
        }
    }

    /// The pending command's answer, if it is done (`false`: still waiting).
    fn settle(&mut self, out: &mut BytesMut, sh: &PgShared) -> bool {
        match &mut self.pending {
            None => return true,
            Some(Pending::Pause(db)) => {
                let paused = match db {
                    None => sh.admin.paused(),
                    Some(d) => d.paused.load(SeqCst),
                };
                if !paused {
                    backend::error_response(
                        out,
                        "ERROR",
                        SYNTAX_ERROR,
                        "ferry console: RESUME came before every server connection was released",
                    );
                } else if sh.admin.servers(db.as_ref()) {
                    return false;
                } else {
                    command_complete(out, "PAUSE");
                }
            }
            Some(Pending::Kill(dbs, ticks)) => {
                if *ticks < KILL_TICKS && sh.admin.killing(dbs) {
                    return false;
                }
                command_complete(out, "KILL");
            }
            Some(Pending::WaitClose(dbs)) => {
                if sh.admin.closing(dbs) {
                    return false;
                }
                command_complete(out, "WAIT_CLOSE");
            }
            Some(Pending::Shutdown) => return false,
            Some(Pending::Refresh { ready, waited, .. }) => {
                if *ready < 2 && *waited < REFRESH_TICKS {
                    return false;
                }
                self.pending = None;
                return true;
            }
        }
        self.pending = None;
        backend::ready_for_query(out, TxStatus::Idle);
        true
    }

    /// Answer the complete messages in `input` into `out`.
    pub(super) fn serve(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        sh: &PgShared,
    ) -> Served {
        if !self.settle(out, sh) {
            return Served::Pausing;
        }
        loop {
            let f = match message::frame(input, MAX_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => return Served::More,
                Err(e) => return Served::Bad(format!("ferry console: {e}")),
            };
            let m = input.split_to(f.len);
            match f.tag {
                b'X' => return Served::Terminate,
                b'Q' => {
                    self.skipping = false;
                    let body = &m[5..];
                    let text = body.strip_suffix(&[0]).unwrap_or(body);
                    let text = String::from_utf8_lossy(text);
                    if let Some(p) = query(out, &text, sh) {
                        self.pending = Some(p);
                        return Served::Pausing;
                    }
                    backend::ready_for_query(out, TxStatus::Idle);
                }
                b'S' => {
                    self.skipping = false;
                    backend::ready_for_query(out, TxStatus::Idle);
                }
                b'H' => {}
                _ => {
                    if !self.skipping {
                        self.skipping = true;
                        backend::error_response(
                            out,
                            "ERROR",
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "ferry console: only the simple query protocol is supported (use psql, or simple queries)",
                        );
                    }
                }
            }
        }
    }
}

impl PgDown {
    /// A console login: authenticate as other clients do; `--client-user`, when set, is
    /// the only user let in (also without a client password).
    pub(super) fn console_auth(&mut self, user: &str) {
        let sh = self.shared.clone();
        let Phase::Auth(l) = &mut self.phase else {
            return;
        };
        let other_user = sh
            .cfg
            .postgres
            .client_user
            .as_deref()
            .is_some_and(|u| u != user);
        match sh.scram.clone() {
            Some(secret) => {
                let server = Box::new(ScramServer::new(secret, &sh.nonce()));
                l.authenticate(if other_user {
                    server::Auth::ScramRefused(server)
                } else {
                    server::Auth::Scram(server)
                });
            }
            None if other_user => l.refuse(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "ferry proxy: the console is for user \"{}\" only",
                    sh.cfg.postgres.client_user.as_deref().unwrap_or_default()
                ),
            ),
            None => l.authenticate(server::Auth::Trust),
        }
        self.flush_login();
    }

    /// A console client authenticated: greet it as a server would.
    pub(super) fn console_greet(&mut self, now: Instant) {
        let mut b = BytesMut::with_capacity(256);
        let app = [("application_name", self.app.as_deref().unwrap_or(""))];
        server::greet(&mut b, PARAMETERS.into_iter().chain(app), None);
        self.io.out.push(b.freeze());
        // Connections publish their state from now on (the first session waits for all
        // of them to, before it answers).
        let refresh = self.shared.admin.watch();
        if refresh.is_some() {
            self.tick = Some(now + TICK);
        }
        self.phase = Phase::Admin(Box::new(Console::new(refresh)));
        self.login_deadline = None;
    }

    /// Answer the console commands read.
    pub(super) fn console(&mut self, now: Instant) {
        let Phase::Admin(c) = &mut self.phase else {
            return;
        };
        let mut out = BytesMut::new();
        let r = c.serve(&mut self.io.input, &mut out, &self.shared);
        if !out.is_empty() {
            self.io.out.push(out.freeze());
        }
        match r {
            Served::More => {}
            Served::Pausing => self.tick = Some(now + TICK),
            Served::Terminate => self.finish(),
            Served::Bad(m) => self.fatal(sqlstate::PROTOCOL_VIOLATION, &m),
        }
    }

    /// Whether `PAUSE` (of every database, or of this client's) is in effect.
    fn paused(&self) -> bool {
        self.shared.admin.paused() || self.adm.as_ref().is_some_and(Handle::db_paused)
    }

    /// `PAUSE` is in effect: hold the client (instead of asking for a server connection)
    /// until `RESUME` or its `pool_wait_timeout`. `false`: not paused.
    pub(super) fn hold(&mut self, now: Instant) -> bool {
        if !self.paused() {
            return false;
        }
        self.held = true;
        if self.waiting.is_none() {
            self.waiting = Some(now + self.shared.tun.pool_wait_timeout());
        }
        self.tick = Some(now + TICK);
        true
    }

    /// [`TICK`]: a console session's `PAUSE` may be done, a held client may go on.
    pub(super) fn on_tick(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if let Phase::Admin(c) = &mut self.phase {
            c.tick(&self.shared);
            self.console(now);
            return;
        }
        if !self.held || self.done {
            return;
        }
        if self.waiting.is_none() {
            // Its wait ran out (the client got its error).
            self.held = false;
        } else if self.paused() {
            self.tick = Some(now + TICK);
        } else {
            self.held = false;
            self.waiting = None;
            self.acquire(ctx, now);
        }
    }

    /// `DISABLE` is in effect for the client's database (checked at its startup).
    pub(super) fn disabled(&self) -> bool {
        self.adm.as_ref().is_some_and(Handle::disabled)
    }

    /// Publish the client's state for the console; `before`: the input's length before the
    /// event (what it consumed was received).
    #[inline]
    pub(super) fn show(&self, ctx: &WorkerCtx, now: Instant, before: usize) {
        let Some(a) = &self.adm else { return };
        a.received(before.saturating_sub(self.io.input.len()));
        a.waiting(
            matches!(self.phase, Phase::Ready) && self.waiting.is_some(),
            ctx,
            now,
        );
        if self.shared.admin.watched() {
            self.publish(a, ctx, now);
        } else {
            a.unseen(now);
        }
    }

    /// [`show`](PgDown::show) while a console session is open (out of line: the I/O path
    /// without one stays small).
    #[inline(never)]
    fn publish(&self, a: &Handle, ctx: &WorkerCtx, now: Instant) {
        let (st, link) = match self.phase {
            Phase::Auth(_) | Phase::Login => (State::Login, None),
            Phase::Admin(_) => (State::Active, None),
            Phase::Ready if self.waiting.is_some() => (State::Waiting, None),
            Phase::Ready => (State::Active, self.srv.map(|s| s.peer)),
        };
        a.set(st, link, 0, ctx, now);
    }

    /// Whether server connection `s`, given back now, was made before a `RECONNECT` of
    /// its database (it is closed instead of pooled).
    #[inline]
    pub(super) fn stale(&self, s_epoch: u32) -> bool {
        self.adm.as_ref().is_some_and(|a| a.epoch() != s_epoch)
    }
}

impl PgUp {
    /// List this server connection (logging in as `user`) for the console.
    pub(super) fn register(&mut self, ctx: &WorkerCtx, user: &str) {
        let addr = self.shared.stats.upstreams[self.up].current();
        let k = self.key.clone();
        let h = self.shared.admin.register(
            ctx.index,
            Entry {
                client: false,
                me: self.io.me(),
                user,
                database: &k.database,
                pool: (&k.user, &k.database),
                addr,
                app: "",
            },
        );
        self.epoch = h.born_epoch();
        self.adm = Some(h);
    }

    /// Made before the last `RECONNECT` of its database: close once released.
    pub(super) fn stale(&self) -> bool {
        self.adm.as_ref().is_some_and(|a| a.epoch() != self.epoch)
    }

    /// Publish the server connection's state for the console.
    #[inline]
    pub(super) fn show(&self, ctx: &WorkerCtx, now: Instant) {
        let Some(a) = &self.adm else { return };
        if self.shared.admin.watched() {
            self.publish(a, ctx, now);
        } else {
            a.unseen(now);
        }
    }

    /// [`show`](PgUp::show) while a console session is open.
    #[inline(never)]
    fn publish(&self, a: &Handle, ctx: &WorkerCtx, now: Instant) {
        let (st, link) = match self.phase {
            SPhase::Cancel => return,
            SPhase::Login => (State::Login, None),
            SPhase::Ready => match self.owner {
                Some(o) => (State::Active, Some(o)),
                None => (State::Idle, None),
            },
            SPhase::Resetting => (State::Used, None),
        };
        a.set(st, link, self.pid, ctx, now);
    }
}

/// The ParameterStatus set a console session is greeted with.
pub(super) const PARAMETERS: [(&str, &str); 6] = [
    ("server_version", "15.0 (ferry console)"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
];

/// One console command, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Cmd {
    /// `SHOW what` (upper case).
    Show(String),
    /// `PAUSE [db]`.
    Pause(Option<String>),
    /// `RESUME [db]`.
    Resume(Option<String>),
    /// `DISABLE db`.
    Disable(String),
    /// `ENABLE db`.
    Enable(String),
    /// `KILL [db]`.
    Kill(Option<String>),
    /// `RECONNECT [db]`.
    Reconnect(Option<String>),
    /// `WAIT_CLOSE [db]`.
    WaitClose(Option<String>),
    /// `KILL_CLIENT id`.
    KillClient(u64),
    /// `SHUTDOWN` (`true`: `WAIT_FOR_SERVERS`).
    Shutdown(bool),
    /// `RELOAD`: re-read `--config` (as SIGHUP).
    Reload,
}

/// The commands of a simple `Query`: split at `;` outside double quotes, each into words (a
/// double-quoted word may hold spaces; `""` in it is a `"`). Empty commands are left out.
fn split(text: &str) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' => {
                let w = word.get_or_insert_with(String::new);
                w.push('"');
                loop {
                    match chars.next() {
                        None => break,
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            w.push_str("\"\"");
                        }
                        Some('"') => {
                            w.push('"');
                            break;
                        }
                        Some(c) => w.push(c),
                    }
                }
            }
            ';' => {
                words.extend(word.take());
                if !words.is_empty() {
                    cmds.push(std::mem::take(&mut words));
                }
            }
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word.take());
    if !words.is_empty() {
        cmds.push(words);
    }
    cmds
}

/// A command's argument: a database name, unquoted (`"My db"` → `My db`).
fn arg(w: &str) -> Result<String, String> {
    match w.strip_prefix('"') {
        None => Ok(w.to_string()),
        Some(rest) => match rest.strip_suffix('"') {
            Some(inner) if !inner.is_empty() => Ok(inner.replace("\"\"", "\"")),
            _ => Err("bad arguments".into()),
        },
    }
}

/// Parse one command's words; `Err`: the ERROR's message.
fn parse(words: &[String]) -> Result<Cmd, String> {
    let invalid = || format!("invalid command '{}', use SHOW HELP;", words.join(" "));
    let verb = words
        .first()
        .map(|w| w.to_ascii_uppercase())
        .unwrap_or_default();
    let one = |mk: fn(Option<String>) -> Cmd| match words.len() {
        1 => Ok(mk(None)),
        2 => Ok(mk(Some(arg(&words[1])?))),
        _ => Err(invalid()),
    };
    let db = |mk: fn(String) -> Cmd| match words.len() {
        1 => Err("a database is required".to_string()),
        2 => Ok(mk(arg(&words[1])?)),
        _ => Err(invalid()),
    };
    match verb.as_str() {
        "SHOW" if words.len() == 2 => {
            let what = words[1].to_ascii_uppercase();
            if SHOWN.contains(&what.as_str()) {
                Ok(Cmd::Show(what))
            } else {
                Err(invalid())
            }
        }
        "PAUSE" => one(Cmd::Pause),
        "RESUME" => one(Cmd::Resume),
        "KILL" => one(Cmd::Kill),
        "RECONNECT" => one(Cmd::Reconnect),
        "DISABLE" => db(Cmd::Disable),
        "ENABLE" => db(Cmd::Enable),
        "RELOAD" if words.len() == 1 => Ok(Cmd::Reload),
        "WAIT_CLOSE" => one(Cmd::WaitClose),
        "KILL_CLIENT" => match words.len() {
            2 => words[1]
                .parse()
                .map(Cmd::KillClient)
                .map_err(|_| "invalid client pointer supplied".to_string()),
            _ => Err(invalid()),
        },
        "SHUTDOWN" => match words.get(1).map(|w| w.to_ascii_uppercase()) {
            None => Ok(Cmd::Shutdown(false)),
            Some(m) if words.len() == 2 && m == "WAIT_FOR_SERVERS" => Ok(Cmd::Shutdown(true)),
            Some(m) if words.len() == 2 && m == "WAIT_FOR_CLIENTS" => Err(
                "ferry console: SHUTDOWN WAIT_FOR_CLIENTS is not supported (the proxy cannot \
                 stop accepting while it leaves idle clients connected)"
                    .into(),
            ),
            Some(_) => Err(invalid()),
        },
        "SET" => Err(format!(
            "ferry console: {verb} is not supported (SHOW HELP lists the commands)"
        )),
        _ => Err(invalid()),
    }
}

/// One simple `Query` (commands separated by `;`), answered into `out` (without its
/// ReadyForQuery). The first error ends it. `Some`: it ended with a `PAUSE` or `KILL` whose
/// CommandComplete waits (until no server connection serves a client, or the connections
/// killed are gone).
fn query(out: &mut BytesMut, text: &str, sh: &PgShared) -> Option<Pending> {
    let cmds = split(text);
    if cmds.is_empty() {
        out.put_u8(b'I');
        out.put_i32(4);
        return None;
    }
    let last = cmds.len() - 1;
    for (i, words) in cmds.iter().enumerate() {
        match parse(words).and_then(|c| run(out, c, i == last, sh)) {
            Ok(Some(p)) => return Some(p),
            Ok(None) => {}
            Err(msg) => {
                backend::error_response(out, "ERROR", SYNTAX_ERROR, &msg);
                return None;
            }
        }
    }
    None
}

/// A console command's database: `Err` for the console's own (`what`: the verb PgBouncer's
/// message names) and, unless `make`, for one never seen.
fn console_db(sh: &PgShared, name: &str, what: &str, make: bool) -> Result<Arc<Db>, String> {
    if is_console(name) {
        return Err(format!("cannot {what} admin db: {name}"));
    }
    sh.admin
        .find_db(name, make)
        .ok_or_else(|| format!("no such database: {name}"))
}

/// Run one command (`last`: the last of its query); `Ok(Some)`: its answer waits.
fn run(out: &mut BytesMut, cmd: Cmd, last: bool, sh: &PgShared) -> Result<Option<Pending>, String> {
    let adm = &sh.admin;
    let must_be_last = |verb: &str| {
        if last {
            Ok(())
        } else {
            Err(format!(
                "ferry console: {verb} must be the last command of its query"
            ))
        }
    };
    match cmd {
        Cmd::Show(what) => show(out, &what, sh)?,
        Cmd::Pause(db) => {
            if adm.paused() {
                return Err("already suspended/paused".into());
            }
            let db = db
                .map(|name| console_db(sh, &name, "pause", true))
                .transpose()?;
            must_be_last("PAUSE")?;
            tracing::info!("postgres console: PAUSE {}", db_label(&db, sh));
            let dbs = match &db {
                None => {
                    adm.paused.store(true, SeqCst);
                    // Every entry, `*` too: PAUSE waits for all server connections.
                    let n = lock(&adm.names);
                    n.dbs
                        .iter()
                        .filter(|(k, _)| !is_console(k))
                        .map(|(_, d)| d.clone())
                        .collect()
                }
                Some(d) => {
                    d.paused.store(true, SeqCst);
                    vec![d.clone()]
                }
            };
            // PgBouncer's: server connections close as they are released (idle ones at
            // once), and PAUSE answers once none is left.
            for d in &dbs {
                d.epoch.fetch_add(1, SeqCst);
            }
            adm.order();
            return Ok(Some(Pending::Pause(db)));
        }
        Cmd::Resume(None) => {
            if adm.wait_for_servers.load(SeqCst) {
                return Err("pooler is shutting down".into());
            }
            if !adm.paused.swap(false, SeqCst) {
                return Err("pooler is not paused/suspended".into());
            }
            command_complete(out, "RESUME");
        }
        Cmd::Resume(Some(name)) => {
            let d = console_db(sh, &name, "resume", false)?;
            if !d.paused.swap(false, SeqCst) {
                return Err(format!("database {name} is not paused"));
            }
            command_complete(out, "RESUME");
        }
        Cmd::Disable(name) => {
            console_db(sh, &name, "disable", true)?
                .disabled
                .store(true, SeqCst);
            command_complete(out, "DISABLE");
        }
        Cmd::Enable(name) => {
            console_db(sh, &name, "enable", false)?
                .disabled
                .store(false, SeqCst);
            command_complete(out, "ENABLE");
        }
        Cmd::Kill(db) => {
            if adm.paused() {
                return Err("already suspended/paused".into());
            }
            let dbs = match db {
                Some(name) => vec![console_db(sh, &name, "kill", true)?],
                None => adm.pooled_dbs().into_iter().map(|(_, d)| d).collect(),
            };
            must_be_last("KILL")?;
            for d in &dbs {
                d.paused.store(true, SeqCst);
                d.kills.fetch_add(1, SeqCst);
            }
            adm.order();
            return Ok(Some(Pending::Kill(dbs, 0)));
        }
        Cmd::Reconnect(db) => {
            let dbs = match db {
                Some(name) => vec![console_db(sh, &name, "reconnect", true)?],
                None => adm.pooled_dbs().into_iter().map(|(_, d)| d).collect(),
            };
            for d in &dbs {
                d.epoch.fetch_add(1, SeqCst);
            }
            adm.order();
            command_complete(out, "RECONNECT");
        }
        Cmd::WaitClose(db) => {
            let dbs = match db {
                Some(name) => vec![console_db(sh, &name, "wait in", true)?],
                None => adm.pooled_dbs().into_iter().map(|(_, d)| d).collect(),
            };
            must_be_last("WAIT_CLOSE")?;
            return Ok(Some(Pending::WaitClose(dbs)));
        }
        Cmd::KillClient(num) => {
            if !adm.kick(num) {
                return Err("client not found".into());
            }
            tracing::info!("postgres console: KILL_CLIENT {num}");
            command_complete(out, "KILL_CLIENT");
        }
        Cmd::Shutdown(wait) => {
            let Some(stop) = sh.shutdown.get() else {
                return Err("ferry console: SHUTDOWN is not available here".into());
            };
            must_be_last("SHUTDOWN")?;
            if !wait {
                tracing::info!("postgres console: SHUTDOWN");
                stop.trigger();
                return Ok(Some(Pending::Shutdown));
            }
            // PgBouncer's: pause (every server connection closes once released), answer,
            // and stop once none is left ([`Registry::shutdown_due`], at the ticks).
            tracing::info!("postgres console: SHUTDOWN WAIT_FOR_SERVERS");
            adm.paused.store(true, SeqCst);
            for d in lock(&adm.names).dbs.values() {
                d.epoch.fetch_add(1, SeqCst);
            }
            adm.wait_for_servers.store(true, SeqCst);
            adm.order();
            command_complete(out, "SHUTDOWN");
        }
        Cmd::Reload => match sh.live().run_hook() {
            Some(Ok(_)) => command_complete(out, "RELOAD"),
            Some(Err(e)) => return Err(e),
            None => return Err("RELOAD: the proxy was started without --config".into()),
        },
    }
    Ok(None)
}

/// A `PAUSE`'s database for the log.
fn db_label(db: &Option<Arc<Db>>, sh: &PgShared) -> String {
    let Some(d) = db else {
        return "(every database)".into();
    };
    lock(&sh.admin.names)
        .dbs
        .iter()
        .find(|(_, v)| Arc::ptr_eq(v, d))
        .map_or_else(|| "?".into(), |(k, _)| k.to_string())
}

/// What `SHOW` shows.
const SHOWN: [&str; 11] = [
    "HELP",
    "VERSION",
    "POOLS",
    "CLIENTS",
    "SERVERS",
    "STATS",
    "CONFIG",
    "DATABASES",
    "USERS",
    "LISTS",
    "STATE",
];

/// `SHOW what` (one of [`SHOWN`]); `Err`: not a command.
fn show(out: &mut BytesMut, what: &str, sh: &PgShared) -> Result<(), String> {
    match what {
        "HELP" => help(out),
        "VERSION" => {
            let v = format!("ferry proxy {}", env!("CARGO_PKG_VERSION"));
            table(out, &["version"], [vec![v]]);
        }
        "POOLS" => pools(out, sh),
        "CLIENTS" => conns(out, sh, true),
        "SERVERS" => conns(out, sh, false),
        "STATS" => stats(out, sh),
        "CONFIG" => config(out, sh),
        "DATABASES" => databases(out, sh),
        "USERS" => users(out, sh),
        "LISTS" => lists(out, sh),
        "STATE" => {
            let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
            let paused = sh.admin.paused();
            let rows = [
                vec!["active".to_string(), yes(!paused)],
                vec!["paused".to_string(), yes(paused)],
                vec!["suspended".to_string(), yes(false)],
            ];
            table(out, &["key", "value"], rows);
        }
        _ => return Err(format!("invalid command 'SHOW {what}', use SHOW HELP;")),
    }
    Ok(())
}

fn help(out: &mut BytesMut) {
    backend::notice_response(
        out,
        "NOTICE",
        "00000",
        "Console usage\n\tSHOW HELP|POOLS|CLIENTS|SERVERS|STATS|DATABASES|USERS|LISTS|CONFIG|STATE|VERSION\n\tPAUSE [<db>]\n\tRESUME [<db>]\n\tDISABLE <db>\n\tENABLE <db>\n\tRECONNECT [<db>]\n\tKILL [<db>]\n\tKILL_CLIENT <client_id>\n\tRELOAD\n\tSHUTDOWN\n\tWAIT_CLOSE [<db>]",
    );
    command_complete(out, "SHOW");
}

/// A whole result: RowDescription, a DataRow per row, CommandComplete `SHOW`.
fn table<R: AsRef<[String]>>(out: &mut BytesMut, cols: &[&str], rows: impl IntoIterator<Item = R>) {
    row_description(out, cols);
    for r in rows {
        data_row(out, r.as_ref().iter().map(|v| Some(v.as_str())));
    }
    command_complete(out, "SHOW");
}

/// `RowDescription` of text columns (type `text`, OID 25).
pub(super) fn row_description(out: &mut BytesMut, cols: &[&str]) {
    let start = out.len();
    out.put_u8(b'T');
    out.put_i32(0);
    out.put_i16(cols.len() as i16);
    for c in cols {
        out.put_slice(c.as_bytes());
        out.put_u8(0);
        out.put_i32(0); // table OID
        out.put_i16(0); // column number
        out.put_i32(25); // type: text
        out.put_i16(-1); // variable length
        out.put_i32(-1); // no type modifier
        out.put_i16(0); // text format
    }
    patch_len(out, start);
}

/// `DataRow` of text values (`None`: NULL).
pub(super) fn data_row<'a>(
    out: &mut BytesMut,
    vals: impl ExactSizeIterator<Item = Option<&'a str>>,
) {
    let start = out.len();
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_i16(vals.len() as i16);
    for v in vals {
        match v {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    patch_len(out, start);
}

/// `CommandComplete` with `tag`.
pub(super) fn command_complete(out: &mut BytesMut, tag: &str) {
    let start = out.len();
    out.put_u8(b'C');
    out.put_i32(0);
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
    patch_len(out, start);
}

fn patch_len(out: &mut BytesMut, start: usize) {
    let n = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&n.to_be_bytes());
}

fn mode(sh: &PgShared) -> &'static str {
    match sh.cfg.postgres.pool_mode {
        PoolMode::Session => "session",
        _ => "transaction",
    }
}

/// `SHOW POOLS`: one row per (database, user) with connections.
fn pools(out: &mut BytesMut, sh: &PgShared) {
    #[derive(Default)]
    struct Row {
        cl_active: u64,
        cl_waiting: u64,
        sv_active: u64,
        sv_idle: u64,
        sv_used: u64,
        sv_login: u64,
        maxwait_us: u64,
    }
    let now = unix_us();
    let mut rows: Vec<(PoolName, Row)> = Vec::new();
    for c in sh.admin.snapshot() {
        let i = match rows.iter().position(|(k, _)| *k == c.pool) {
            Some(i) => i,
            None => {
                rows.push((c.pool.clone(), Row::default()));
                rows.len() - 1
            }
        };
        let r = &mut rows[i].1;
        let st = State::from_u8(c.state.load(Relaxed));
        match (c.client, st) {
            (true, State::Active) => r.cl_active += 1,
            (true, State::Waiting) => {
                r.cl_waiting += 1;
                r.maxwait_us = r.maxwait_us.max(now.saturating_sub(c.since.load(Relaxed)));
            }
            (false, State::Active) => r.sv_active += 1,
            (false, State::Idle) => r.sv_idle += 1,
            (false, State::Used) => r.sv_used += 1,
            (false, State::Login) => r.sv_login += 1,
            _ => {}
        }
    }
    rows.sort_by(|a, b| (&a.0 .1, &a.0 .0).cmp(&(&b.0 .1, &b.0 .0)));
    let mode = mode(sh);
    let cols = [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
    ];
    table(
        out,
        &cols,
        rows.into_iter().map(|((user, db), r)| {
            vec![
                db.into(),
                user.into(),
                r.cl_active.to_string(),
                r.cl_waiting.to_string(),
                r.sv_active.to_string(),
                r.sv_idle.to_string(),
                r.sv_used.to_string(),
                r.sv_login.to_string(),
                (r.maxwait_us / 1_000_000).to_string(),
                (r.maxwait_us % 1_000_000).to_string(),
                mode.to_string(),
            ]
        }),
    );
}

/// `SHOW CLIENTS` (`clients`) or `SHOW SERVERS`.
fn conns(out: &mut BytesMut, sh: &PgShared, clients: bool) {
    let now = unix_us();
    let cols = [
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "connect_time",
        "request_time",
        "wait",
        "wait_us",
        "ptr",
        "id",
        "link",
        "remote_pid",
        "application_name",
    ];
    let rows = sh
        .admin
        .snapshot()
        .into_iter()
        .filter(|c| c.client == clients)
        .map(|c| {
            let st = State::from_u8(c.state.load(Relaxed));
            let since = c.since.load(Relaxed);
            let wait = if st == State::Waiting {
                now.saturating_sub(since)
            } else {
                0
            };
            let link = c.link.load(Relaxed);
            vec![
                if c.client { "C" } else { "S" }.to_string(),
                c.user.to_string(),
                c.database.to_string(),
                st.name().to_string(),
                c.addr.map_or_else(String::new, |a| a.ip().to_string()),
                c.addr.map_or_else(String::new, |a| a.port().to_string()),
                timestamp(c.connect_time),
                timestamp(since),
                (wait / 1_000_000).to_string(),
                (wait % 1_000_000).to_string(),
                ptr(c.worker, c.id),
                c.num.to_string(),
                if link == 0 {
                    String::new()
                } else {
                    ptr(c.worker, link - 1)
                },
                c.pid.load(Relaxed).to_string(),
                c.app.to_string(),
            ]
        });
    table(out, &cols, rows);
}

/// `SHOW STATS`: the counters kept per database (no timings: none are measured), summed
/// over the open connections and the closed ones' totals.
fn stats(out: &mut BytesMut, sh: &PgShared) {
    let totals = sh.admin.totals();
    let mut names: Vec<Arc<str>> = lock(&sh.admin.names).dbs.keys().cloned().collect();
    names.sort();
    let cols = [
        "database",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_wait_time",
    ];
    table(
        out,
        &cols,
        names.into_iter().map(|name| {
            let s = totals.get(&name).copied().unwrap_or_default();
            vec![
                name.to_string(),
                s.xacts.to_string(),
                s.queries.to_string(),
                s.received.to_string(),
                s.sent.to_string(),
                s.wait_us.to_string(),
            ]
        }),
    );
}

/// `SHOW DATABASES` (PgBouncer 1.18's columns): the databases clients used or a console
/// command named, each pooled to every upstream (`host`: their addresses, `port`: the
/// first's); `current_connections`: its server connections now.
fn databases(out: &mut BytesMut, sh: &PgShared) {
    let ups = &sh.stats.upstreams;
    let split = |a: &str| -> (String, String) {
        match a.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (a.to_string(), String::new()),
        }
    };
    let hosts: Vec<String> = ups.enabled().map(|u| split(&u.addr).0).collect();
    let hosts = hosts.join(",");
    let port = ups
        .enabled()
        .next()
        .map_or(String::new(), |u| split(&u.addr).1);
    let conns = sh.admin.snapshot();
    let pg = &sh.cfg.postgres;
    let flag = |b: &AtomicBool| if b.load(SeqCst) { "1" } else { "0" }.to_string();
    let cols = [
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "min_pool_size",
        "reserve_pool",
        "pool_mode",
        "max_connections",
        "current_connections",
        "paused",
        "disabled",
    ];
    table(
        out,
        &cols,
        sh.admin.pooled_dbs().into_iter().map(|(name, d)| {
            let servers = conns
                .iter()
                .filter(|c| !c.client && Arc::ptr_eq(&c.db, &d))
                .count();
            vec![
                name.to_string(),
                hosts.clone(),
                port.clone(),
                name.to_string(),
                pg.upstream_user.clone().unwrap_or_default(),
                sh.tun.pool_size().to_string(),
                "0".into(),
                "0".into(),
                mode(sh).into(),
                "0".into(),
                servers.to_string(),
                flag(&d.paused),
                flag(&d.disabled),
            ]
        }),
    );
}

/// `SHOW USERS`: the users clients logged in as (at most [`MAX_USERS`]).
fn users(out: &mut BytesMut, sh: &PgShared) {
    let users: Vec<Box<str>> = lock(&sh.admin.names).users.iter().cloned().collect();
    table(
        out,
        &["name", "pool_mode"],
        users
            .into_iter()
            .map(|u| vec![u.to_string(), mode(sh).to_string()]),
    );
}

/// `SHOW LISTS` (PgBouncer 1.18's rows): `pools` as `SHOW POOLS` counts them; no free
/// lists or DNS cache here (0).
fn lists(out: &mut BytesMut, sh: &PgShared) {
    let (dbs, users) = {
        let n = lock(&sh.admin.names);
        let dbs = n.dbs.keys().filter(|k| &***k != "*").count();
        (dbs, n.users.len())
    };
    let conns = sh.admin.snapshot();
    let mut pools: Vec<&PoolName> = conns.iter().map(|c| &c.pool).collect();
    pools.sort();
    pools.dedup();
    let clients = conns.iter().filter(|c| c.client).count();
    let login = conns
        .iter()
        .filter(|c| c.client && c.state.load(Relaxed) == State::Login as u8)
        .count();
    let rows = [
        ("databases", dbs),
        ("users", users),
        ("pools", pools.len()),
        ("free_clients", 0),
        ("used_clients", clients),
        ("login_clients", login),
        ("free_servers", 0),
        ("used_servers", conns.len() - clients),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    table(
        out,
        &["list", "items"],
        rows.into_iter()
            .map(|(k, v)| vec![k.to_string(), v.to_string()]),
    );
}

/// `SHOW CONFIG`: the proxy's PostgreSQL settings (none changeable at run time).
fn config(out: &mut BytesMut, sh: &PgShared) {
    let c = &sh.cfg;
    let pg = &c.postgres;
    let secs = |d: std::time::Duration| format!("{}", d.as_secs_f64());
    let ups: Vec<String> = sh
        .stats
        .upstreams
        .enabled()
        .map(|u| u.addr.to_string())
        .collect();
    let kv: Vec<(&str, String)> = vec![
        ("upstreams", ups.join(",")),
        ("pool_mode", mode(sh).into()),
        ("pool_size", sh.tun.pool_size().to_string()),
        (
            "max_prepared_statements",
            pg.max_prepared_statements.to_string(),
        ),
        ("max_message_bytes", pg.max_message_bytes.to_string()),
        (
            "auth_type",
            if pg.client_password.is_some() {
                "scram-sha-256"
            } else {
                "trust"
            }
            .into(),
        ),
        ("client_user", pg.client_user.clone().unwrap_or_default()),
        (
            "upstream_user",
            pg.upstream_user.clone().unwrap_or_default(),
        ),
        ("connect_timeout", secs(c.connect_timeout)),
        ("idle_timeout", secs(c.idle_timeout)),
        ("pool_wait_timeout", secs(c.pool_wait_timeout)),
        (
            "response_timeout",
            pg.response_timeout.map(secs).unwrap_or_default(),
        ),
    ];
    table(
        out,
        &["key", "value", "changeable"],
        kv.into_iter()
            .map(|(k, v)| vec![k.to_string(), v, "no".to_string()]),
    );
}

/// A connection's id as `SHOW CLIENTS`/`SHOW SERVERS` show it (`ptr`, `link`): its
/// worker and its packed peer.
fn ptr(worker: usize, packed: u64) -> String {
    format!("{worker:x}.{packed:x}")
}

/// Unix microseconds as `YYYY-MM-DD HH:MM:SS UTC` (PgBouncer's format).
fn timestamp(us: u64) -> String {
    let c = ferry_http1::date::Civil::from_unix(us / 1_000_000);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse a backend message stream into (tag, body) pairs.
    fn messages(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let n = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            v.push((b[0], b[5..1 + n].to_vec()));
            b = &b[1 + n..];
        }
        v
    }

    #[test]
    fn row_description_is_text_columns() {
        let mut b = BytesMut::new();
        row_description(&mut b, &["database", "cl_active"]);
        let m = messages(&b);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, b'T');
        let body = &m[0].1;
        assert_eq!(&body[..2], &[0, 2]);
        let mut p = &body[2..];
        for name in ["database", "cl_active"] {
            let z = p.iter().position(|&c| c == 0).unwrap();
            assert_eq!(&p[..z], name.as_bytes());
            p = &p[z + 1..];
            assert_eq!(&p[..4], &[0, 0, 0, 0]);
            assert_eq!(&p[6..10], &25i32.to_be_bytes());
            assert_eq!(&p[10..12], &(-1i16).to_be_bytes());
            assert_eq!(&p[16..18], &[0, 0]);
            p = &p[18..];
        }
        assert!(p.is_empty());
        // Its length field covers exactly the message.
        assert_eq!(
            b.len(),
            1 + i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize
        );
    }

    #[test]
    fn data_row_has_lengths_and_nulls() {
        let mut b = BytesMut::new();
        data_row(&mut b, [Some("ab"), None, Some("")].into_iter());
        assert_eq!(
            &b[..],
            &[b'D', 0, 0, 0, 20, 0, 3, 0, 0, 0, 2, b'a', b'b', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]
                [..]
        );
    }

    #[test]
    fn command_complete_is_nul_terminated() {
        let mut b = BytesMut::new();
        command_complete(&mut b, "SHOW");
        assert_eq!(&b[..], b"C\0\0\0\x09SHOW\0");
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        // 2024-02-29 12:34:56 UTC.
        assert_eq!(timestamp(1_709_210_096_000_000), "2024-02-29 12:34:56 UTC");
    }

    fn shared() -> Arc<PgShared> {
        let ups: Vec<crate::Upstream> = vec!["127.0.0.1:5432".parse().unwrap()];
        let stats = Arc::new(crate::metrics::ProxyStats::new("postgres", &ups, 1));
        let mut cfg = crate::config::ProxyConfig::new(ups);
        cfg.postgres.pool_size = 7;
        let live = crate::reload::Live::new(cfg.clone(), stats.clone(), 2);
        PgShared::new(cfg, 2, stats, live)
    }

    fn peer(token: usize) -> Peer {
        Peer { token, gen: 1 }
    }

    /// The text values of every DataRow.
    fn rows(m: &[(u8, Vec<u8>)]) -> Vec<Vec<String>> {
        m.iter()
            .filter(|m| m.0 == b'D')
            .map(|(_, b)| {
                let n = i16::from_be_bytes([b[0], b[1]]) as usize;
                let mut p = &b[2..];
                (0..n)
                    .map(|_| {
                        let l = i32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                        let v = String::from_utf8(p[4..4 + l].to_vec()).unwrap();
                        p = &p[4 + l..];
                        v
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn show_pools_counts_registered_connections() {
        let sh = shared();
        let e = |client, me, db| Entry {
            client,
            me: peer(me),
            user: "u",
            database: db,
            pool: ("u", db),
            addr: None,
            app: "",
        };
        let c1 = sh.admin.register(0, e(true, 1, "d"));
        let c2 = sh.admin.register(1, e(true, 2, "d"));
        let s1 = sh.admin.register(1, e(false, 3, "d"));
        c1.set_with(State::Active, Some(peer(3)), 0, || 1);
        s1.set_with(State::Active, Some(peer(1)), 4242, || 1);
        c2.set_with(State::Waiting, None, 0, || 1);
        let mut out = BytesMut::new();
        query(&mut out, "show pools", &sh);
        let m = messages(&out);
        assert_eq!(m.iter().map(|m| m.0).collect::<Vec<_>>(), b"TDC");
        let r = &rows(&m)[0];
        assert_eq!(&r[..8], ["d", "u", "1", "1", "1", "0", "0", "0"]);
        assert_eq!(r[10], "transaction");
        // Gone from the lists once dropped.
        drop((c1, c2, s1));
        let mut out = BytesMut::new();
        query(&mut out, "SHOW SERVERS;", &sh);
        assert!(rows(&messages(&out)).is_empty());
    }

    #[test]
    fn unknown_commands_are_errors_and_empty_queries_empty() {
        let sh = shared();
        let mut out = BytesMut::new();
        query(&mut out, "SHOW VERSION; BOGUS 1; SHOW VERSION", &sh);
        let m = messages(&out);
        assert_eq!(m.iter().map(|m| m.0).collect::<Vec<_>>(), b"TDCE");
        let e = String::from_utf8_lossy(&m[3].1);
        assert!(e.contains("C42601\0"), "{e}");
        assert!(
            e.contains("invalid command 'BOGUS 1', use SHOW HELP;"),
            "{e}"
        );
        let mut out = BytesMut::new();
        query(&mut out, " ; ", &sh);
        assert_eq!(&out[..], b"I\0\0\0\x04");
    }

    #[test]
    fn extended_protocol_is_refused_until_sync() {
        let sh = shared();
        let mut c = Console::default();
        let mut input = BytesMut::new();
        for (tag, body) in [
            (b'P', &b"\0SHOW POOLS\0\0\0"[..]),
            (b'B', &b"\0\0\0\0\0\0\0\0"[..]),
            (b'S', &b""[..]),
            (b'Q', &b"SHOW CONFIG\0"[..]),
            (b'X', &b""[..]),
        ] {
            input.put_u8(tag);
            input.put_i32(4 + body.len() as i32);
            input.put_slice(body);
        }
        let mut out = BytesMut::new();
        assert_eq!(c.serve(&mut input, &mut out, &sh), Served::Terminate);
        let m = messages(&out);
        let tags: Vec<u8> = m.iter().map(|m| m.0).collect();
        assert_eq!(tags[..2], *b"EZ", "one ERROR, then ReadyForQuery at Sync");
        assert_eq!(tags[2], b'T');
        assert_eq!(*tags.last().unwrap(), b'Z');
        let cfg = rows(&m);
        assert!(
            cfg.contains(&vec!["pool_size".into(), "7".into(), "no".into()]),
            "{cfg:?}"
        );
    }

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn queries_split_at_semicolons_outside_quotes() {
        assert_eq!(
            split(" PAUSE \"my;db\" ;; show  pools;"),
            vec![words(&["PAUSE", "\"my;db\""]), words(&["show", "pools"])]
        );
        assert_eq!(
            split("KILL \"a \"\"b\"\"\""),
            vec![words(&["KILL", "\"a \"\"b\"\"\""])]
        );
        assert!(split(" ; \n; ").is_empty());
    }

    #[test]
    fn commands_parse() {
        let p = |t: &str| parse(&split(t)[0]);
        assert_eq!(p("pause"), Ok(Cmd::Pause(None)));
        assert_eq!(p("PAUSE db1"), Ok(Cmd::Pause(Some("db1".into()))));
        assert_eq!(
            p("Resume \"My \"\"db\"\"\""),
            Ok(Cmd::Resume(Some("My \"db\"".into())))
        );
        assert_eq!(p("kill x"), Ok(Cmd::Kill(Some("x".into()))));
        assert_eq!(p("KILL"), Ok(Cmd::Kill(None)));
        assert_eq!(p("reconnect"), Ok(Cmd::Reconnect(None)));
        assert_eq!(p("RECONNECT d"), Ok(Cmd::Reconnect(Some("d".into()))));
        assert_eq!(p("disable d"), Ok(Cmd::Disable("d".into())));
        assert_eq!(p("ENABLE d"), Ok(Cmd::Enable("d".into())));
        assert_eq!(p("show databases"), Ok(Cmd::Show("DATABASES".into())));
        assert_eq!(p("DISABLE"), Err("a database is required".into()));
        assert_eq!(p("ENABLE"), Err("a database is required".into()));
        assert_eq!(p("PAUSE \"\""), Err("bad arguments".into()));
        assert_eq!(
            p("KILL a b"),
            Err("invalid command 'KILL a b', use SHOW HELP;".into())
        );
        assert_eq!(
            p("show Nonsense"),
            Err("invalid command 'show Nonsense', use SHOW HELP;".into())
        );
        assert_eq!(
            p("SHOW"),
            Err("invalid command 'SHOW', use SHOW HELP;".into())
        );
        assert_eq!(p("reload"), Ok(Cmd::Reload));
        assert!(p("RELOAD now").is_err());
        assert_eq!(p("KILL_CLIENT 12"), Ok(Cmd::KillClient(12)));
        assert_eq!(
            p("KILL_CLIENT x"),
            Err("invalid client pointer supplied".into())
        );
        assert_eq!(p("wait_close"), Ok(Cmd::WaitClose(None)));
        assert_eq!(p("WAIT_CLOSE d"), Ok(Cmd::WaitClose(Some("d".into()))));
        assert_eq!(p("shutdown"), Ok(Cmd::Shutdown(false)));
        assert_eq!(p("SHUTDOWN wait_for_servers"), Ok(Cmd::Shutdown(true)));
        assert!(p("SHUTDOWN WAIT_FOR_CLIENTS")
            .unwrap_err()
            .contains("not supported"));
        assert_eq!(
            p("SHUTDOWN now"),
            Err("invalid command 'SHUTDOWN now', use SHOW HELP;".into())
        );
        // No socket handover for an online restart here: PgBouncer's words for a command
        // it does not have.
        assert_eq!(
            p("SUSPEND"),
            Err("invalid command 'SUSPEND', use SHOW HELP;".into())
        );
    }

    /// The ERROR message of the first error in a reply, if any.
    fn error(out: &BytesMut) -> Option<String> {
        messages(out)
            .into_iter()
            .find(|m| m.0 == b'E')
            .map(|(_, b)| {
                let s = String::from_utf8_lossy(&b).to_string();
                let m = s.split('\0').find(|f| f.starts_with('M')).unwrap_or("");
                m[1..].to_string()
            })
    }

    fn run_query(sh: &PgShared, text: &str) -> (BytesMut, Option<Pending>) {
        let mut out = BytesMut::new();
        let p = query(&mut out, text, sh);
        (out, p)
    }

    #[test]
    fn database_commands_check_their_database() {
        let sh = shared();
        let e = |q: &str| error(&run_query(&sh, q).0);
        assert_eq!(e("ENABLE nope").as_deref(), Some("no such database: nope"));
        assert_eq!(e("RESUME nope").as_deref(), Some("no such database: nope"));
        assert_eq!(
            e("PAUSE ferry").as_deref(),
            Some("cannot pause admin db: ferry")
        );
        assert_eq!(
            e("KILL pgbouncer").as_deref(),
            Some("cannot kill admin db: pgbouncer")
        );
        assert_eq!(
            e("DISABLE ferry").as_deref(),
            Some("cannot disable admin db: ferry")
        );
        assert_eq!(
            e("RECONNECT ferry").as_deref(),
            Some("cannot reconnect admin db: ferry")
        );
        // DISABLE names a database before any client used it (PgBouncer's auto-databases).
        assert_eq!(e("DISABLE d1"), None);
        let (out, _) = run_query(&sh, "SHOW DATABASES");
        let r = rows(&messages(&out));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            (&*r[0][0], &*r[0][1], &*r[0][2]),
            ("d1", "127.0.0.1", "5432")
        );
        assert_eq!((&*r[0][11], &*r[0][12]), ("0", "1"), "{r:?}");
        assert_eq!(e("RESUME d1").as_deref(), Some("database d1 is not paused"));
        assert_eq!(
            e("ENABLE d1; PAUSE d1; SHOW POOLS").as_deref(),
            Some("ferry console: PAUSE must be the last command of its query")
        );
        let (out, p) = run_query(&sh, "PAUSE d1");
        assert!(out.is_empty() && matches!(p, Some(Pending::Pause(Some(_)))));
        let (out, _) = run_query(&sh, "SHOW DATABASES");
        let r = rows(&messages(&out));
        assert_eq!((&*r[0][11], &*r[0][12]), ("1", "0"), "{r:?}");
        assert_eq!(e("RESUME d1"), None);
        assert_eq!(e("PAUSE"), None);
        assert_eq!(e("PAUSE d1").as_deref(), Some("already suspended/paused"));
        assert_eq!(e("KILL d1").as_deref(), Some("already suspended/paused"));
        assert_eq!(e("RESUME"), None);
    }

    /// The answer of a waiting command once settled (`None`: still waiting).
    fn settle(sh: &PgShared, p: Pending) -> Option<BytesMut> {
        let mut c = Console {
            skipping: false,
            pending: Some(p),
        };
        let mut out = BytesMut::new();
        c.settle(&mut out, sh).then_some(out)
    }

    #[test]
    fn kill_client_orders_that_client_only() {
        let sh = shared();
        let a = sh.admin.register(0, entry(true, 1, "d"));
        let b = sh.admin.register(1, entry(true, 2, "d"));
        let s = sh.admin.register(1, entry(false, 3, "d"));
        let orders = |w: usize| {
            let mut v = Vec::new();
            sh.admin.orders(w, |p, o| v.push((p.token, o)));
            v
        };
        assert!(a.conn.num != b.conn.num && b.conn.num != s.conn.num);
        // Servers are not clients; unknown numbers are not found.
        let e = |t: &str| error(&run_query(&sh, t).0);
        assert_eq!(
            e(&format!("KILL_CLIENT {}", s.conn.num)).as_deref(),
            Some("client not found")
        );
        assert_eq!(e("KILL_CLIENT 0").as_deref(), Some("client not found"));
        assert!(orders(0).is_empty() && orders(1).is_empty());
        let (out, p) = run_query(&sh, &format!("KILL_CLIENT {}", b.conn.num));
        assert_eq!((error(&out), p.is_none()), (None, true));
        assert_eq!(messages(&out)[0].1, b"KILL_CLIENT\0");
        assert!(orders(0).is_empty());
        assert_eq!(orders(1), vec![(2, Order::KillClient)]);
        drop((a, b, s));
    }

    #[test]
    fn pause_closes_servers_and_wait_close_waits_for_them() {
        let sh = shared();
        let c = sh.admin.register(0, entry(true, 1, "d"));
        let s = sh.admin.register(0, entry(false, 2, "d"));
        let other = sh.admin.register(0, entry(false, 3, "e"));
        // WAIT_CLOSE with nothing closing answers at once.
        let (_, p) = run_query(&sh, "WAIT_CLOSE d");
        let out = settle(&sh, p.expect("WAIT_CLOSE waits its turn")).expect("at once");
        assert_eq!(messages(&out)[0].1, b"WAIT_CLOSE\0");
        assert_eq!(
            error(&run_query(&sh, "WAIT_CLOSE ferry").0).as_deref(),
            Some("cannot wait in admin db: ferry")
        );
        // PAUSE d: d's server connections close as released (RECONNECT's order), and it
        // answers once none of d's is left; e's stay.
        let (_, p) = run_query(&sh, "PAUSE d");
        assert!(matches!(p, Some(Pending::Pause(Some(_)))));
        assert!(s.epoch() != s.born_epoch() && other.epoch() == other.born_epoch());
        let mut v = Vec::new();
        sh.admin.orders(0, |p, o| v.push((p.token, o)));
        assert_eq!(v, vec![(2, Order::Reconnect)]);
        assert!(settle(&sh, Pending::Pause(Some(c.conn.db.clone()))).is_none());
        // WAIT_CLOSE waits for it too.
        let (_, p) = run_query(&sh, "WAIT_CLOSE");
        let p = p.expect("WAIT_CLOSE waits");
        assert!(settle(&sh, Pending::WaitClose(vec![c.conn.db.clone()])).is_none());
        drop(s);
        let out = settle(&sh, Pending::Pause(Some(c.conn.db.clone()))).expect("done");
        assert_eq!(messages(&out)[0].1, b"PAUSE\0");
        assert!(settle(&sh, p).is_some());
        drop((c, other));
    }

    #[test]
    fn shutdown_triggers_the_workers_shutdown() {
        let sh = shared();
        assert!(error(&run_query(&sh, "SHUTDOWN").0)
            .unwrap()
            .contains("not available"));
        let stop = ferry_driver::Shutdown::new();
        sh.set_shutdown(stop.clone());
        assert_eq!(
            error(&run_query(&sh, "SHUTDOWN; SHOW VERSION").0).as_deref(),
            Some("ferry console: SHUTDOWN must be the last command of its query")
        );
        assert!(!stop.is_triggered());
        let (out, p) = run_query(&sh, "SHUTDOWN");
        assert!(out.is_empty(), "no answer: the drain closes the session");
        assert!(matches!(p, Some(Pending::Shutdown)));
        assert!(stop.is_triggered());
    }

    #[test]
    fn shutdown_wait_for_servers_pauses_and_stops_once_none_is_left() {
        let sh = shared();
        sh.set_shutdown(ferry_driver::Shutdown::new());
        let s = sh.admin.register(1, entry(false, 2, "d"));
        assert!(!sh.admin.shutdown_due());
        let (out, p) = run_query(&sh, "SHUTDOWN WAIT_FOR_SERVERS");
        assert_eq!((error(&out), p.is_none()), (None, true));
        assert_eq!(messages(&out)[0].1, b"SHUTDOWN\0");
        assert!(sh.admin.paused() && s.epoch() != s.born_epoch());
        let mut v = Vec::new();
        sh.admin.orders(1, |p, o| v.push((p.token, o)));
        assert_eq!(v, vec![(2, Order::Reconnect)]);
        assert!(!sh.admin.shutdown_due(), "a server connection is left");
        assert_eq!(
            error(&run_query(&sh, "RESUME").0).as_deref(),
            Some("pooler is shutting down")
        );
        drop(s);
        assert!(sh.admin.shutdown_due());
        assert!(!sh.admin.shutdown_due(), "once");
    }

    fn entry(client: bool, me: usize, db: &str) -> Entry<'_> {
        Entry {
            client,
            me: peer(me),
            user: "u",
            database: db,
            pool: ("u", db),
            addr: None,
            app: "",
        }
    }

    #[test]
    fn kill_and_reconnect_reach_each_workers_connections_once() {
        let sh = shared();
        let c = sh.admin.register(0, entry(true, 1, "d"));
        let s = sh.admin.register(0, entry(false, 2, "d"));
        let other = sh.admin.register(1, entry(false, 3, "e"));
        let orders = |w: usize| {
            let mut v = Vec::new();
            sh.admin.orders(w, |p, o| v.push((p.token, o)));
            v.sort_by_key(|x| x.0);
            v
        };
        assert!(orders(0).is_empty() && orders(1).is_empty());
        assert_eq!(error(&run_query(&sh, "RECONNECT").0), None);
        assert_eq!(orders(0), vec![(2, Order::Reconnect)]);
        assert_eq!(orders(1), vec![(3, Order::Reconnect)]);
        assert!(orders(0).is_empty(), "once per order");
        assert!(s.epoch() != s.born_epoch() && other.epoch() != other.born_epoch());
        // A server made after RECONNECT is not stale.
        let s2 = sh.admin.register(0, entry(false, 4, "d"));
        assert_eq!(s2.epoch(), s2.born_epoch());
        let (_, p) = run_query(&sh, "KILL d");
        assert!(matches!(p, Some(Pending::Kill(..))));
        assert_eq!(
            orders(0),
            vec![(1, Order::Kill), (2, Order::Kill), (4, Order::Kill)]
        );
        // Database e is not killed (its stale server is told again: harmless).
        assert_eq!(orders(1), vec![(3, Order::Reconnect)]);
        // KILL pauses the database; new connections are not killed.
        assert!(c.db_paused() && !other.db_paused());
        let c2 = sh.admin.register(0, entry(true, 5, "d"));
        assert!(!c2.conn.killed());
        assert!(sh.admin.killing(std::slice::from_ref(&c.conn.db)));
        drop((c, s, s2));
        assert!(!sh.admin.killing(std::slice::from_ref(&c2.conn.db)));
        drop((c2, other));
    }

    #[test]
    fn stats_keep_closed_connections_counts() {
        let sh = shared();
        let stats = |sh: &PgShared| {
            let (out, _) = run_query(sh, "SHOW STATS");
            rows(&messages(&out))
        };
        let c1 = sh.admin.register(0, entry(true, 1, "d"));
        let s1 = sh.admin.register(1, entry(false, 2, "d"));
        c1.received(100);
        c1.sent(40);
        s1.replies(3, 2);
        // A wait counts when it ends (published or not).
        c1.wait_changed(true, 1_000);
        c1.wait_changed(false, 1_250);
        let want = vec![vec![
            "d".to_string(),
            "2".into(),
            "3".into(),
            "100".into(),
            "40".into(),
            "250".into(),
        ]];
        assert_eq!(stats(&sh), want);
        // Closed connections' counts stay.
        drop((c1, s1));
        assert_eq!(stats(&sh), want);
        let c2 = sh.admin.register(1, entry(true, 3, "d"));
        c2.received(1);
        let r = stats(&sh);
        assert_eq!(r[0][3], "101");
        drop(c2);
        assert_eq!(stats(&sh)[0][3], "101");
    }

    #[test]
    fn the_first_console_session_has_every_connection_publish() {
        let sh = shared();
        let c = sh.admin.register(0, entry(true, 1, "d"));
        let s = sh.admin.register(1, entry(false, 2, "d"));
        assert!(!sh.admin.watched());
        let g = sh.admin.watch().expect("the first session refreshes");
        assert!(sh.admin.watched());
        assert_eq!(
            sh.admin.watch(),
            Some(g),
            "a second one waits for the same refresh"
        );
        assert!(!sh.admin.refreshed(g));
        let orders = |w: usize| {
            let mut v = Vec::new();
            sh.admin.orders(w, |p, o| v.push((p.token, o)));
            v
        };
        assert_eq!(orders(0), vec![(1, Order::Publish)]);
        assert!(!sh.admin.refreshed(g));
        assert_eq!(orders(1), vec![(2, Order::Publish)]);
        assert!(sh.admin.refreshed(g));
        assert!(orders(0).is_empty() && orders(1).is_empty());
        assert_eq!(sh.admin.watch(), None, "a third, after it, does not wait");
        // The session waits for a tick after that.
        let mut con = Console::new(Some(g));
        let mut out = BytesMut::new();
        assert!(!con.settle(&mut out, &sh));
        con.tick(&sh);
        assert!(!con.settle(&mut out, &sh));
        con.tick(&sh);
        assert!(con.settle(&mut out, &sh));
        assert!(out.is_empty());
        for _ in 0..2 {
            sh.admin.unwatch();
            assert!(sh.admin.watched());
        }
        sh.admin.unwatch();
        assert!(!sh.admin.watched());
        // A later first session refreshes again.
        assert!(sh.admin.watch().is_some_and(|g2| g2 > g));
        drop((c, s));
    }

    #[test]
    fn a_change_found_later_is_dated_by_the_last_unseen_event() {
        let sh = shared();
        let c = sh.admin.register(0, entry(true, 1, "d"));
        c.wait_changed(true, 5_000);
        c.set_with(State::Waiting, None, 0, || 9_000);
        assert_eq!(c.conn.since.load(Relaxed), 5_000, "a wait from its start");
        c.set_with(State::Active, Some(peer(2)), 0, || 9_500);
        assert_eq!(c.conn.since.load(Relaxed), 9_500);
        assert_eq!(c.conn.link.load(Relaxed), peer(2).pack() + 1);
        assert_eq!(c.conn.state.load(Relaxed), State::Active as u8);
        drop(c);
    }

    #[test]
    fn users_and_lists() {
        let sh = shared();
        let c = sh.admin.register(0, entry(true, 1, "d"));
        let s = sh.admin.register(0, entry(false, 2, "d"));
        let (out, _) = run_query(&sh, "SHOW USERS");
        assert_eq!(
            rows(&messages(&out)),
            vec![vec!["u".to_string(), "transaction".into()]]
        );
        let (out, _) = run_query(&sh, "SHOW LISTS");
        let l: HashMap<String, String> = rows(&messages(&out))
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
        assert_eq!(l["databases"], "1");
        assert_eq!(l["users"], "1");
        assert_eq!(l["pools"], "1");
        assert_eq!(l["used_clients"], "1");
        assert_eq!(l["login_clients"], "1");
        assert_eq!(l["used_servers"], "1");
        assert_eq!(l.len(), 12);
        drop((c, s));
    }

    #[test]
    fn console_databases() {
        assert!(is_console("ferry"));
        assert!(is_console("pgbouncer"));
        assert!(!is_console("postgres"));
        assert!(!is_console("Ferry"));
    }

    #[test]
    fn states_round_trip() {
        for s in [
            State::Login,
            State::Active,
            State::Waiting,
            State::Idle,
            State::Used,
        ] {
            assert_eq!(State::from_u8(s as u8), s);
        }
    }
}
