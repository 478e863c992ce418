//! The Redis pooling proxy, run inline on the I/O workers as a `ferry_driver::relay::Relay`
//! ([`RedisProxy`]) of two halves.
//!
//! - Each client connection ([`RDown`]) sends its commands over each I/O worker's few
//!   **shared** upstream connections ([`ProxyConfig::redis_connections`] per upstream per
//!   worker, [`RUp`]). Commands of many clients are pipelined over one connection; a
//!   correlation queue on it matches each reply (in order) to its client.
//! - **Fast path.** While a client has nothing else pending, every complete plain command
//!   in its input (multibulk, or inline without quotes; delimited by [`scan`](mod@scan)
//!   without parsing) is forwarded as the client's original bytes: everything parsed in one
//!   turn goes to an upstream as one chunk (one per upstream under `--balance hash`), and
//!   the replies come back as slices of the upstream's input (measured by
//!   [`scan::reply_len`], resumably for a large reply arriving over many reads), written
//!   to the client as they are (the shared connection speaks the client's protocol
//!   version). A sequence number per chunk keeps replies in command order when chunks go
//!   to different upstreams.
//! - **Slow path.** Anything else (the first command of a protocol switch, commands the
//!   proxy answers itself, `HELLO`, `CLIENT`, pub/sub, quoted inline commands) goes through a
//!   `ferry_resp::ServerConnection`, one command at a time, with replies re-encoded.
//! - Commands that carry connection state or block the connection (`SUBSCRIBE` and friends,
//!   `MULTI`/`WATCH`, `BLPOP`-style blocking commands, `SELECT`, `AUTH`, `CLIENT TRACKING`,
//!   `CLIENT ID`, `MONITOR`, `HELLO` with options, …) move the client to a **dedicated**
//!   upstream connection (a `ferry_resp::ClientConnection`) for the rest of its life, after
//!   its replies from the shared ones are in (so order holds). Pub/sub messages and tracking
//!   invalidations come back on it.
//! - **Upstream TLS** (`ProxyConfig::upstream_tls`): every upstream connection speaks TLS
//!   from its first byte (what it queues waits inside the session for the handshake).
//! - **Authentication** ([`auth`]): the proxy's own credentials go first on every upstream
//!   connection; with client authentication configured the proxy answers `AUTH` itself
//!   (and the client stays on the shared connections).
//! - **Balancing** (`--balance`): round robin and least requests choose an upstream per
//!   chunk of pipelined commands; `hash` chooses per command, by consistent hashing of its
//!   key (the first argument of most commands), or of the key's hash tag (`{user1}:name`
//!   hashes `user1`, as in Redis Cluster and twemproxy). Over several upstreams every key
//!   of a command counts (`redis/keys.rs`): `MGET`, `MSET`, `DEL`, `UNLINK`, `EXISTS` and
//!   `TOUCH` are split by upstream and their replies merged (as twemproxy and Envoy do);
//!   `DBSIZE`, `KEYS`, `FLUSHALL`, `FLUSHDB`, `SCRIPT LOAD|FLUSH` and
//!   `FUNCTION LOAD|DELETE|FLUSH` go to every upstream; `SCAN` walks the upstreams one
//!   after another (its cursors made global by the proxy); any other command whose keys
//!   are on different upstreams is refused with `-CROSSSLOT` (Redis Cluster's error). A
//!   transaction runs on the upstream of the first key after `MULTI` (or of `WATCH`'s);
//!   a command in it for another upstream is refused and `EXEC` then fails with
//!   `-EXECABORT`; after `EXEC`/`DISCARD` the client is back on the shared connections.
//!   A client on a dedicated connection for other state (`SELECT`, `SUBSCRIBE`, …) stays
//!   on its upstream: commands for keys elsewhere get `-CROSSSLOT`. `RANDOMKEY`, `INFO`
//!   and the like reach one upstream. Whatever the balance, over several upstreams
//!   `SCRIPT LOAD|FLUSH` and `FUNCTION LOAD|DELETE|FLUSH` reach every one (so `EVALSHA`
//!   and `FCALL` find them wherever they go).
//! - **Circuit breakers**: each chunk or command sent to a shared connection holds a permit
//!   of its upstream's `ferry-reliability` breaker (per worker): answered is a success, a
//!   connect failure, a reply timeout or a broken connection is a failure. While a breaker
//!   is open its upstream is skipped; with none left clients get
//!   `-ERR ferry proxy: no upstream available` at once.
//! - An upstream connection that breaks answers every command it owed with
//!   `-ERR ferry proxy: upstream connection lost`; clients reconnect on their next command.
//!   A client whose dedicated connection broke is then disconnected (its state — `SELECT`,
//!   `AUTH`, a transaction, subscriptions — is gone, as with Redis itself).
//! - **`-LOADING`.** Redis answers `-LOADING` without running the command while it loads
//!   its data: after a restart, during `DEBUG RELOAD`, on a replica in a full resync — on
//!   new connections and on ones that were answering. On a shared connection each such
//!   reply counts as a failure for the upstream's breaker (enough of them open it: the
//!   upstream is then skipped for a while), and the work goes back to its client
//!   ([`RUp::loading`]) to be sent to another upstream ([`RDown::retry`]): never to one
//!   that answered it `-LOADING` before, at most `--retries` times (default 2); with none
//!   left the client gets the `-LOADING` reply. What is retried: a slow-path command, or
//!   what is left of a fast-path chunk from its first `-LOADING` reply (its earlier replies
//!   went to the client already), when every other reply in that rest answers a command
//!   safe to run twice (`ECHO`, `PING`, `INFO`, `TIME`, … — Redis serves some of them while
//!   loading: a pipeline mixing them with data commands gets both kinds of reply). Each
//!   chunk of a pipeline in flight on the loading connection is retried on its own; the
//!   client's replies stay in order (chunk sequence numbers, command ids), and retries that
//!   go down one connection keep their order. Chunks already run in parallel on different
//!   upstreams under round robin; a retried command likewise may run after commands
//!   pipelined behind it that went elsewhere directly (under `--balance hash` only while a
//!   breaker changes state). Passed on as they are: a run of `-LOADING` replies followed in
//!   its chunk by replies to other commands (loading ended mid-chunk: moving the run would
//!   reorder what ran), replies to parts of split commands (merged by upstream), and
//!   anything on a dedicated connection — a transaction (Redis itself then fails `EXEC`
//!   with `-EXECABORT`), blocking commands, pub/sub, `SELECT`, a client's `AUTH`: that
//!   state lives on the connection and would not follow a command elsewhere, so the client
//!   sees what Redis said, as when connected to it directly.
//! - `--response-timeout` holds on dedicated connections too; a blocking command gets its
//!   own timeout on top (`BLPOP q 5`: 5 s more), and none while it may wait without end
//!   (timeout 0). A client that hangs up while blocked has its EOF passed on to its
//!   dedicated connection (Redis then frees it: nothing is popped for nobody).
//! - `MONITOR`, `CLIENT REPLY OFF|SKIP`, `SYNC` and `PSYNC` (replies not one per command)
//!   are refused with `-ERR ferry proxy: … is not supported`. A client with more than
//!   32 MiB of pub/sub messages unread is dropped (Redis's `pubsub` output buffer limit).

pub mod auth;
mod auth_gate;
mod keys;
pub mod scan;
mod tracking;

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_driver::metrics::add;
use ferry_driver::relay::{Downstream, Half, Io, Peer, Relay, Upstream};
use ferry_driver::WorkerCtx;
use ferry_proto::{Connection, Instant};
use ferry_reliability::{BreakerEvent, BreakerState, CircuitBreaker, Permit};
use ferry_resp::client::Event as CEvent;
use ferry_resp::parse::parse_buf;
use ferry_resp::server::Event as SEvent;
use ferry_resp::{
    encode, encode_command, ClientConfig, ClientConnection, CommandId, Limits, Protocol,
    ServerConfig, ServerConnection, SubKind, Value,
};
use smallvec::SmallVec;

use crate::balance::{Balance, Balancer, Tried};
use crate::config::ProxyConfig;
use crate::metrics::ProxyStats;
use crate::reload::{slot_names, Live, Snapshot, Tunables};
use auth_gate::{Feed, BIG_COMMAND};
use scan::{reply_len, reply_len_resume, scan, Progress, Scan};

/// Most commands a client may have in flight before the proxy stops reading from it.
const MAX_IN_FLIGHT: usize = 4096;
/// `held` entries and connect tags use this as "the dedicated connection".
const DEDICATED: usize = usize::MAX;
/// Deepest nesting of a reply measured on a shared connection (the scan keeps a stack of
/// this many small entries at most).
const MEASURE_DEPTH: usize = 1 << 16;
/// Pushes (pub/sub messages) queued for a client beyond this close it (Redis's default
/// `client-output-buffer-limit pubsub` hard limit).
const PUSH_OUT_LIMIT: usize = 32 << 20;
const LOST: &[u8] = b"-ERR ferry proxy: upstream connection lost\r\n";

type Args = SmallVec<[Bytes; ferry_resp::INLINE_ARGS]>;
type Owner = Peer;

/// The owner of replies nobody waits for (our own `HELLO`).
const NOBODY: Peer = Peer {
    token: usize::MAX,
    gen: 0,
};

/// State shared by every worker of a Redis proxy.
pub struct RedisShared {
    /// The configuration at start (what a reload cannot change; see `live`, `tun`).
    cfg: ProxyConfig,
    /// The loaded configuration (reloads).
    live: Arc<Live>,
    /// Retries and timeouts of the loaded configuration.
    tun: Tunables,
    /// Dedicated connections (no reply timeout of its own: [`RUp::reply_deadline`] exempts
    /// blocking commands).
    dedicated: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    /// Limits on replies read from upstreams.
    limits: Limits,
    /// The same for replies only measured (shared connections): deeper nesting, which
    /// the iterative scan handles and Redis produces (e.g. a Lua table 500 deep); a reply
    /// too deep to parse fails its own command, not the connection it shares.
    measure: Limits,
    stats: Arc<ProxyStats>,
    workers: Vec<Mutex<RWorker>>,
    /// `--balance hash` over several upstreams: commands are routed by all their keys
    /// ([`keys`]).
    keyed: bool,
}

impl std::fmt::Debug for RedisShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisShared")
            .field("upstreams", &self.cfg.upstreams)
            .finish()
    }
}

#[derive(Debug, Clone)]
enum Slot {
    Empty,
    /// Connect in flight; these clients wait for it.
    Connecting(Vec<Owner>),
    Ready(Peer),
}

/// One worker's shared upstream connections, balancer and breakers (locked only by that
/// worker's thread).
#[derive(Debug)]
struct RWorker {
    /// The configuration generation this state was built for.
    generation: u64,
    /// `[upstream][slot]`.
    slots: Vec<Vec<Slot>>,
    next_slot: usize,
    balancer: Balancer,
    breakers: Vec<CircuitBreaker>,
    /// Commands in flight per upstream from this worker (least-requests).
    active: Vec<usize>,
    /// The worker's index (breaker gauges).
    index: usize,
    /// `--balance hash`: keys hash by their hash tag ([`keys::hash_tag`]).
    tags: bool,
}

/// How a unit of work ended, for its upstream's breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    /// The client went away first: no verdict on the upstream.
    Ignored,
}

impl RWorker {
    /// Take a reloaded configuration: the balancer over its upstreams' slots, connection
    /// slots, breakers and in-flight counts for new upstream slots (all breakers anew when
    /// their settings changed). A dropped upstream's shared connections get no new work.
    #[cold]
    fn refresh(&mut self, snap: &Snapshot, stats: &ProxyStats, per: usize) {
        let cfg = &snap.cfg;
        let n = stats.upstreams.len();
        self.balancer = Balancer::over_slots(cfg.balance, n, &slot_names(snap), self.index);
        if self
            .breakers
            .first()
            .is_some_and(|b| *b.config() != cfg.breaker)
        {
            self.breakers.clear();
        }
        self.breakers
            .resize_with(n, || CircuitBreaker::new(cfg.breaker.clone()));
        self.active.resize(n, 0);
        self.slots.resize_with(n, || vec![Slot::Empty; 2 * per]);
        self.generation = snap.generation;
    }

    /// An upstream for `key` that is usable and whose breaker is not open (skipping those
    /// in `skip`), without taking a permit.
    fn candidate(
        &mut self,
        key: &[u8],
        stats: &ProxyStats,
        now: Instant,
        skip: &Tried,
    ) -> Option<usize> {
        let RWorker {
            balancer,
            breakers,
            active,
            tags,
            ..
        } = self;
        let key = if *tags { keys::hash_tag(key) } else { key };
        balancer.pick(
            key,
            |i| {
                !skip.has(i)
                    && stats.upstreams[i].usable()
                    && breakers[i].state(now) != BreakerState::Open
            },
            |i| active[i],
        )
    }

    /// An upstream for `key` (none of those in `tried`) and a permit of its breaker;
    /// `count` commands are charged to it.
    fn pick(
        &mut self,
        key: &[u8],
        count: usize,
        stats: &ProxyStats,
        now: Instant,
        tried: &Tried,
    ) -> Option<(usize, Permit)> {
        let mut skip = tried.clone();
        for _ in 0..stats.upstreams.len() {
            let i = self.candidate(key, stats, now, &skip)?;
            if let Some(p) = self.acquire(i, count, stats, now) {
                return Some((i, p));
            }
            skip.add(i); // out of half-open probes
        }
        None
    }

    /// A permit for upstream `i`, charging `count` commands to it.
    fn acquire(
        &mut self,
        i: usize,
        count: usize,
        stats: &ProxyStats,
        now: Instant,
    ) -> Option<Permit> {
        let p = self.breakers[i].try_acquire(now).ok()?;
        self.active[i] += count;
        stats.upstreams[i].active.fetch_add(count as i64, Relaxed);
        Some(p)
    }

    /// Report the outcome of `count` commands sent with `permit` to upstream `i`.
    fn report(
        &mut self,
        i: usize,
        permit: Permit,
        count: usize,
        outcome: Outcome,
        now: Instant,
        stats: &ProxyStats,
    ) {
        let worker = self.index;
        self.active[i] = self.active[i].saturating_sub(count);
        let u = &stats.upstreams[i];
        u.active.fetch_sub(count as i64, Relaxed);
        let b = &mut self.breakers[i];
        match outcome {
            Outcome::Success => b.on_success(now, permit),
            Outcome::Failure => b.on_failure(now, permit),
            Outcome::Ignored => b.on_ignored(permit),
        }
        while let Some(ev) = b.poll_event() {
            match ev {
                BreakerEvent::Opened { reason, .. } => {
                    u.breaker_opened.fetch_add(1, Relaxed);
                    tracing::warn!("redis upstream {}: circuit opened ({reason:?})", u.addr);
                }
                BreakerEvent::Closed => tracing::info!("redis upstream {}: circuit closed", u.addr),
                _ => {}
            }
        }
        let g = match b.state(now) {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            _ => 2,
        };
        u.breaker[worker % u.breaker.len()].store(g, Relaxed);
    }
}

impl RedisShared {
    /// Shared state for `workers` I/O workers.
    pub fn new(
        cfg: ProxyConfig,
        workers: usize,
        stats: Arc<ProxyStats>,
        live: Arc<Live>,
    ) -> Arc<RedisShared> {
        // Slots 0..n speak RESP2 upstream, n..2n RESP3 (for RESP3 clients).
        let n = cfg.redis_connections.clamp(1, 126);
        let names: Vec<String> = cfg.upstreams.iter().map(|a| a.to_string()).collect();
        let workers = (0..workers.max(1))
            .map(|w| {
                Mutex::new(RWorker {
                    generation: 1,
                    slots: names.iter().map(|_| vec![Slot::Empty; 2 * n]).collect(),
                    next_slot: 0,
                    balancer: Balancer::new(cfg.balance, &names, w),
                    breakers: names
                        .iter()
                        .map(|_| CircuitBreaker::new(cfg.breaker.clone()))
                        .collect(),
                    active: vec![0; names.len()],
                    index: w,
                    tags: cfg.balance == Balance::Hash,
                })
            })
            .collect();
        let sh = Arc::new(RedisShared {
            keyed: cfg.balance == Balance::Hash && cfg.upstreams.len() > 1,
            tun: Tunables::new(&cfg),
            cfg,
            live: live.clone(),
            dedicated: Arc::new(ClientConfig::default()),
            server: Arc::new(ServerConfig::default()),
            limits: Limits::default(),
            measure: {
                let mut l = Limits::default();
                l.max_depth = MEASURE_DEPTH;
                l
            },
            stats,
            workers,
        });
        let weak = Arc::downgrade(&sh);
        live.listen(Box::new(move |snap| {
            if let Some(sh) = weak.upgrade() {
                sh.tun.store(&snap.cfg);
            }
        }));
        sh
    }

    fn worker(&self, i: usize) -> MutexGuard<'_, RWorker> {
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
    fn refresh(&self, w: &mut RWorker) {
        w.refresh(
            &self.live.snapshot(),
            &self.stats,
            self.slots_per_protocol(),
        );
    }

    fn slots_per_protocol(&self) -> usize {
        self.cfg.redis_connections.clamp(1, 126)
    }
}

/// Work a client hands to an upstream connection.
#[derive(Debug)]
struct Unit {
    /// Upstream index, or [`DEDICATED`].
    up: usize,
    /// The upstream breaker's permit (shared connections only).
    permit: Option<Permit>,
    /// Commands in it.
    count: u32,
    /// The upstreams that answered it `-LOADING` already ([`RUp::loading`]).
    tried: Tried,
    work: Work,
}

#[derive(Debug)]
enum Work {
    /// Complete commands as the client sent them (fast path); replies come back as bytes.
    Raw { seq: u64, bytes: Bytes },
    /// One command (slow path; `id: None`: nobody waits for its reply).
    Cmd { id: Option<CommandId>, args: Args },
    /// The part for one upstream of command `id`, split by key ([`Split`]).
    Part { id: CommandId, args: Args },
}

/// Mail between client and upstream connections of one worker.
#[derive(Debug)]
pub struct RMail(RKind);

#[derive(Debug)]
enum RKind {
    /// Client → upstream.
    Send { owner: Owner, unit: Unit },
    /// Client → dedicated upstream: the client is gone.
    Release,
    /// Client → dedicated upstream: the client hung up (EOF) with a blocking command
    /// outstanding: pass the EOF on. Redis frees such a client at once; a blocked
    /// connection left behind would pop the next element pushed, for nobody.
    HangUp,
    /// Upstream → client: you may send to me (`slot`: the shared slot, or 0xFE/0xFF).
    Attached { up: usize, slot: usize, conn: Owner },
    /// Upstream → client: the connection to upstream `up` could not be made or broke
    /// (`conn: None`: whichever the client uses).
    Lost { up: usize, conn: Option<Owner> },
    /// Upstream → client: a reply (slow path).
    Reply(CommandId, Value),
    /// Upstream `up` → client: its reply to its part of split command `id`.
    Part(CommandId, usize, Value),
    /// Upstream → client: `n` replies of chunk `seq`, encoded for the client.
    RawReply { seq: u64, bytes: Bytes, n: u32 },
    /// Upstream → client: `n` replies of chunk `seq` are lost.
    RawLost { seq: u64, n: u32 },
    /// Upstream → client: a pub/sub message or other push.
    Push(Value),
    /// Upstream → client: a command of the proxy's own (no reply wanted) was answered.
    Ack,
    /// Upstream → client: it answered `unit` with `-LOADING` (`reply`, its replies as they
    /// came; `unit.tried` names it): send it elsewhere if possible ([`RUp::loading`]).
    Retry { unit: Unit, reply: Bytes },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Not bound yet.
    None,
    /// Shared connections, in this slot (which also says the protocol).
    Shared(usize),
    /// A dedicated connection to this upstream.
    Dedicated(usize),
}

/// A client's attachment to one upstream's shared connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Att {
    Idle,
    Waiting,
    Ready(Peer),
}

/// Replies owed for one fast-path chunk.
#[derive(Debug, Default)]
struct RawSlot {
    left: u32,
    /// Replies that arrived before those of earlier chunks.
    parked: Vec<Bytes>,
}

/// A fast-path chunk being built: (upstream, start, end, commands, permit).
type Batch = (usize, usize, usize, u32, Option<Permit>);

/// Why the fast path stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Input used up or the rest is an incomplete command.
    Wait,
    /// The next command needs the slow path.
    Slow,
}

/// A client's connection.
pub struct RDown {
    io: Io,
    shared: Arc<RedisShared>,
    conn: ServerConnection,
    /// Whole commands handed to `conn` and not yet read by it (pipeline full).
    sin: BytesMut,
    /// `conn` was told about the EOF.
    eof_done: bool,
    errored: bool,
    /// How input reaches `conn`; `feed.sticky`: slow path only, for good (input the fast
    /// scanner cannot delimit).
    feed: Feed,
    route: Route,
    /// Per upstream, the shared connection this client uses.
    ups: Vec<Att>,
    /// The dedicated connection.
    ded: Option<Owner>,
    /// Work waiting for an upstream connection (or for the shared ones to drain).
    held: VecDeque<Unit>,
    /// Slow-path commands sent and not answered yet.
    in_flight: usize,
    /// Fast-path chunks not fully answered; the front one has sequence number `raw_base`.
    raw: VecDeque<RawSlot>,
    raw_base: u64,
    /// Fast-path replies owed in all.
    raw_left: usize,
    /// Waiting to move to a dedicated connection (to the upstream of this key).
    want_dedicated: Option<Bytes>,
    /// `CLIENT SETNAME`, answered by the proxy.
    name: Option<Bytes>,
    /// A blocking command (`BLPOP`, …) sent to the dedicated connection and not answered.
    blocking: Option<CommandId>,
    /// Commands of the proxy's own (mirrored subscriptions, `RESET`, …) sent to the
    /// dedicated connection and not answered ([`RKind::Ack`]): output waits for them.
    unacked: usize,
    /// The dedicated connection answered something other than an error (state may have
    /// been set on it).
    ded_answered: bool,
    /// The proxy authenticates clients and this one has not yet ([`auth`]).
    locked: bool,
    /// A command that sets connection state (`MULTI`, `SELECT`, `WATCH`, …) went to the
    /// dedicated connection: if that breaks, what the client pipelined behind it must not
    /// run elsewhere (see [`RDown::lost`]).
    ded_state: bool,
    /// Commands split by key across upstreams, waiting for their parts' replies.
    splits: Vec<Split>,
    /// `--balance hash` over several upstreams: the transaction on the dedicated connection.
    tx: Tx,
}

/// A client's transaction under `--balance hash` over several upstreams: it runs on a
/// dedicated connection to the upstream of its first key (`MULTI` is answered by the
/// proxy and sent on with the first command after it); a command whose keys are on
/// another upstream is refused with `-CROSSSLOT` and makes `EXEC` fail with
/// `-EXECABORT`, as in Redis Cluster. Once the transaction is over (`EXEC`, `DISCARD`,
/// `UNWATCH`) and the client set no other state there, it goes back to the shared
/// connections (its next keys may be anywhere).
#[derive(Debug, Default, Clone, Copy)]
struct Tx {
    /// `MULTI` answered, its upstream not chosen yet.
    pending: bool,
    multi: bool,
    watch: bool,
    /// A command in `MULTI` was refused: `EXEC` fails.
    dirty: bool,
    /// The dedicated connection holds nothing but the transaction.
    only: bool,
}

/// A command split across upstreams (`--balance hash`): its parts' replies merge into one.
#[derive(Debug)]
struct Split {
    id: CommandId,
    merge: keys::Merge,
    /// Per part: its upstream and (for [`keys::Merge::Values`]) where its replies go.
    parts: SmallVec<[(usize, Vec<u32>); 4]>,
    left: usize,
    /// Upstreams in all.
    n: usize,
    values: Vec<Value>,
    sum: i64,
    err: Option<Value>,
}

/// A connection to an upstream (shared or dedicated).
pub struct RUp {
    io: Io,
    idx: usize,
    /// `Some(slot)` for a shared connection.
    slot: Option<usize>,
    /// The client of a dedicated connection.
    owner: Option<Owner>,
    shared: Arc<RedisShared>,
    /// Dedicated connections: the protocol state (subscriptions, pushes).
    conn: ClientConnection,
    /// Dedicated connections: who each outstanding reply goes to, in order.
    /// (With when it was sent and how long it may block, [`block_time`]: a command that may
    /// block without end has no reply deadline.)
    queue: VecDeque<(Owner, Option<CommandId>, Instant, Option<Duration>)>,
    /// Dedicated connections: when the last reply arrived (the next one is timed from
    /// then at the earliest).
    last_reply: Instant,
    /// Dedicated connections: the client's EOF was passed on (see [`RKind::HangUp`]).
    hung_up: bool,
    /// Shared connections: what each outstanding reply is, in order.
    entries: VecDeque<Entry>,
    /// Shared connections: the protocol the upstream speaks, and the one clients want.
    proto: Protocol,
    want: Protocol,
    /// The input holds the start of a reply and nothing complete.
    partial: bool,
    /// Shared connections: how far the incomplete reply at the front was measured.
    progress: Progress,
    done: bool,
    /// The proxy's own `AUTH` on this connection ([`auth`]).
    auth: auth::UpAuth,
}

#[derive(Debug)]
struct Entry {
    owner: Owner,
    what: What,
    permit: Option<Permit>,
    count: u32,
    sent: Instant,
    /// A command with a reply wanted: its arguments, to retry it elsewhere if the upstream
    /// answers `-LOADING` ([`RUp::loading`]).
    args: Option<Box<Args>>,
    /// The upstreams that answered it `-LOADING` before.
    tried: Tried,
}

#[derive(Debug)]
enum What {
    Raw {
        seq: u64,
        left: u32,
        /// The chunk as sent (to retry what is left of it elsewhere after `-LOADING`).
        bytes: Bytes,
    },
    One(Option<CommandId>),
    /// A part of a split command.
    Part(CommandId),
    /// Our own `HELLO 3`.
    Hello,
}

/// A connection of the Redis proxy: a client's ([`RDown`]) or one to an upstream ([`RUp`]).
pub type RedisProxy = Relay<RDown, RUp>;

/// Blocking commands (besides `XREAD`/`XREADGROUP` with `BLOCK`): they hold their connection
/// until answered or timed out, so they go to a connection of the client's own.
const BLOCKING_NAMES: [&str; 10] = [
    "blpop",
    "brpop",
    "brpoplpush",
    "blmove",
    "blmpop",
    "bzpopmin",
    "bzpopmax",
    "bzmpop",
    "wait",
    "waitaof",
];

/// Commands that set state on their connection (or stream): they go to a connection of the
/// client's own, as do [`BLOCKING_NAMES`].
const DEDICATED_NAMES: [&str; 14] = [
    "multi",
    "watch",
    "unwatch",
    "exec",
    "discard",
    "monitor",
    "select",
    "auth",
    "readonly",
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "sync",
    "psync",
];

/// Commands the fast path leaves to the slow one (besides [`DEDICATED_NAMES`] and
/// [`BLOCKING_NAMES`]): those the
/// client connection or the proxy answers itself, or that may need a dedicated connection.
/// (Spelled out again in [`is_slow`]'s match; this list is its test's reference.)
#[cfg_attr(not(test), allow(dead_code))]
const SLOW_NAMES: [&str; 11] = [
    "hello",
    "client",
    "quit",
    "reset",
    "unsubscribe",
    "punsubscribe",
    "sunsubscribe",
    "xread",
    "xreadgroup",
    "script",
    "function",
];

/// Whether a command with this name leaves the fast path: one of [`DEDICATED_NAMES`],
/// [`BLOCKING_NAMES`] or [`SLOW_NAMES`] in any case. (One length check for most commands; a unit test keeps
/// this list and the two arrays in step.)
fn is_slow(name: &[u8]) -> bool {
    if !(4..=12).contains(&name.len()) {
        return false;
    }
    let mut buf = [0u8; 12];
    let low = &mut buf[..name.len()];
    low.copy_from_slice(name);
    low.make_ascii_lowercase();
    matches!(
        &*low,
        b"multi"
            | b"watch"
            | b"unwatch"
            | b"exec"
            | b"discard"
            | b"blpop"
            | b"brpop"
            | b"brpoplpush"
            | b"blmove"
            | b"blmpop"
            | b"bzpopmin"
            | b"bzpopmax"
            | b"bzmpop"
            | b"wait"
            | b"waitaof"
            | b"monitor"
            | b"select"
            | b"auth"
            | b"readonly"
            | b"subscribe"
            | b"psubscribe"
            | b"ssubscribe"
            | b"sync"
            | b"psync"
            | b"hello"
            | b"client"
            | b"quit"
            | b"reset"
            | b"unsubscribe"
            | b"punsubscribe"
            | b"sunsubscribe"
            | b"xread"
            | b"xreadgroup"
            | b"script"
            | b"function"
    )
}

fn needs_dedicated(args: &[Bytes]) -> bool {
    let name = &args[0];
    if is_blocking(args)
        || DEDICATED_NAMES
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
    {
        return true;
    }
    if name.eq_ignore_ascii_case(b"client") {
        let sub = args
            .get(1)
            .map(|b| b.to_ascii_lowercase())
            .unwrap_or_default();
        return matches!(
            &sub[..],
            b"tracking" | b"reply" | b"caching" | b"no-evict" | b"no-touch" | b"pause" | b"id"
        );
    }
    if name.eq_ignore_ascii_case(b"hello") {
        return args.len() > 2; // AUTH / SETNAME go to a connection of the client's own
    }
    false
}

/// Blocking commands (they hold their connection until answered or timed out).
fn is_blocking(args: &[Bytes]) -> bool {
    let name = &args[0];
    if name.eq_ignore_ascii_case(b"xread") || name.eq_ignore_ascii_case(b"xreadgroup") {
        return args.iter().any(|a| a.eq_ignore_ascii_case(b"block"));
    }
    BLOCKING_NAMES
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// How long Redis may take to answer a command because it blocks: zero for commands that
/// do not (or whose timeout Redis rejects at once), `None` for a timeout of 0 (no end).
/// Read only for commands on dedicated connections.
fn block_time(args: &[Bytes]) -> Option<Duration> {
    if is_blocking(args) {
        blocking_timeout(args)
    } else {
        Some(Duration::ZERO)
    }
}

/// [`block_time`] of a blocking command: its timeout argument.
#[cold]
fn blocking_timeout(args: &[Bytes]) -> Option<Duration> {
    let name = args[0].to_ascii_lowercase();
    // (argument, in milliseconds rather than seconds)
    let (arg, millis) = match &name[..] {
        b"xread" | b"xreadgroup" => {
            let at = args.iter().position(|a| a.eq_ignore_ascii_case(b"block"));
            (at.and_then(|i| args.get(i + 1)), true)
        }
        b"wait" => (args.get(2), true),
        b"waitaof" => (args.get(3), true),
        b"blmpop" | b"bzmpop" => (args.get(1), false),
        _ => (args.last(), false),
    };
    let v = arg
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|a| a.parse::<f64>().ok())
        .filter(|v| *v >= 0.0);
    match v {
        None => Some(Duration::ZERO), // an error, answered at once
        Some(0.0) => None,
        Some(v) => Duration::try_from_secs_f64(if millis { v / 1000.0 } else { v }).ok(),
    }
}

/// Commands the proxy refuses (`Some(what)`): their replies do not map one to one onto
/// commands, which the correlation queues rely on (`MONITOR` streams, `CLIENT REPLY
/// OFF|SKIP` suppresses replies, `SYNC`/`PSYNC` turn the connection into a replication
/// stream).
fn unsupported(args: &[Bytes]) -> Option<&'static str> {
    let name = &args[0];
    if name.eq_ignore_ascii_case(b"monitor") {
        return Some("MONITOR");
    }
    if name.eq_ignore_ascii_case(b"sync") || name.eq_ignore_ascii_case(b"psync") {
        return Some("replication (SYNC, PSYNC)");
    }
    if name.eq_ignore_ascii_case(b"client")
        && args
            .get(1)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"reply"))
        && args
            .get(2)
            .is_some_and(|m| m.eq_ignore_ascii_case(b"off") || m.eq_ignore_ascii_case(b"skip"))
    {
        return Some("CLIENT REPLY OFF|SKIP");
    }
    None
}

fn lost() -> Value {
    Value::Error(Bytes::from_static(
        b"ERR ferry proxy: upstream connection lost",
    ))
}

fn lost_lines(n: u32) -> Bytes {
    if n == 1 {
        return Bytes::from_static(LOST);
    }
    let mut b = BytesMut::with_capacity(LOST.len() * n as usize);
    for _ in 0..n {
        b.extend_from_slice(LOST);
    }
    b.freeze()
}

fn no_upstream() -> Value {
    Value::Error(Bytes::from_static(
        b"ERR ferry proxy: no upstream available",
    ))
}

/// Report breaker outcomes for units' permits (one lock).
fn report_units<'a>(
    ctx: &WorkerCtx,
    shared: &RedisShared,
    units: impl IntoIterator<Item = &'a Unit>,
    outcome: Outcome,
    now: Instant,
) {
    let mut w: Option<MutexGuard<'_, RWorker>> = None;
    for u in units {
        if let Some(p) = u.permit {
            let w = w.get_or_insert_with(|| shared.worker(ctx.index));
            w.report(u.up, p, u.count as usize, outcome, now, &shared.stats);
        }
    }
}

impl RDown {
    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        !self.errored
            && self.raw_left + self.conn.in_flight() + self.held.len() < MAX_IN_FLIGHT
            && self.io.out.len() < ctx.options.write_high_water
            && self.io.input.len() < ctx.options.input_high_water
            && self.conn.wants_read()
    }

    fn resp3(&self) -> bool {
        self.conn.protocol() == Protocol::Resp3
    }

    fn collect(&mut self) {
        if self.unacked > 0 {
            // E.g. a SUBSCRIBE confirmation (the connection's own) goes out only once the
            // upstream subscribed too: a message published after the client saw it
            // reaches the client, as with Redis.
            return;
        }
        while let Some(b) = self.conn.poll_transmit() {
            self.io.out.push(b);
        }
    }

    /// Whether plain commands may take the fast path now: nothing of the slow path pending
    /// and the shared connections in the client's protocol.
    fn fast_ok(&self) -> bool {
        !self.feed.sticky
            && !self.locked
            && !self.errored
            && !self.eof_done
            && self.want_dedicated.is_none()
            && self.sin.is_empty()
            && self.in_flight == 0
            && self.conn.in_flight() == 0
            && !self.conn.is_subscribed()
            && self.conn.error().is_none()
            // Not after QUIT: nothing behind it may run.
            && self.conn.wants_read()
            && match self.route {
                Route::None => true,
                Route::Shared(s) => (s >= self.shared.slots_per_protocol()) == self.resp3(),
                Route::Dedicated(_) => false,
            }
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        for _ in 0..64 {
            let mut progressed = false;
            let mut stop = Stop::Slow;
            if self.fast_ok() {
                let (p, s) = self.fast(ctx, now);
                progressed |= p;
                stop = s;
            }
            if stop == Stop::Slow && self.raw_left == 0 && !self.errored {
                progressed |= self.slow(ctx, now);
            }
            if !progressed {
                break;
            }
        }
        if self.io.saw_eof()
            && !self.eof_done
            && self.raw_left == 0
            && self.sin.is_empty()
            && !(self.tx.only && self.tx_draining())
        {
            // Every complete command was read; what is left is a torn one.
            self.eof_done = true;
            self.io.input.clear();
            self.conn.handle_eof(now);
            while let Some(ev) = self.conn.poll_event() {
                self.event(ctx, ev, now);
            }
        }
        self.flush(ctx, now);
        if self.eof_done && self.blocking.is_some() {
            self.hang_up(ctx);
        }
        self.collect();
    }

    /// The client hung up while a blocking command of its is outstanding: tell the
    /// dedicated connection ([`RKind::HangUp`]; a command still blocked is answered with
    /// "connection lost"). Until the command went there, again later (once attached).
    fn hang_up(&mut self, ctx: &mut WorkerCtx) {
        if let (Route::Dedicated(_), Some(o)) = (self.route, self.ded) {
            self.blocking = None;
            post(ctx, o, RKind::HangUp);
        }
    }

    /// Forward every complete plain command at the front of the input as raw chunks.
    /// Returns whether any was, and why it stopped.
    fn fast(&mut self, ctx: &mut WorkerCtx, now: Instant) -> (bool, Stop) {
        if self.io.input.is_empty() {
            return (false, Stop::Wait);
        }
        let sh = self.shared.clone();
        let hash = sh.cfg.balance == Balance::Hash;
        let keyed = sh.keyed;
        let max_bulk = sh.server.proto_max_bulk_len;
        let max_inline = sh.server.max_inline_size;
        let limit = MAX_IN_FLIGHT.saturating_sub(self.raw_left + self.held.len());
        // (upstream, start, end, commands, permit)
        let mut batches: SmallVec<[Batch; 4]> = SmallVec::new();
        let mut pos = 0;
        let mut total = 0usize;
        let mut w = sh.worker(ctx.index);
        let b: &[u8] = &self.io.input;
        let stop = loop {
            if total >= limit {
                break Stop::Wait;
            }
            match scan(&b[pos..], max_bulk, max_inline) {
                Scan::Complete { len, name, key } => {
                    if is_slow(&b[pos + name.0..pos + name.1]) {
                        break Stop::Slow;
                    }
                    let same = match batches.last() {
                        Some(&(i, ..)) if !hash => Some(i),
                        _ => None,
                    };
                    let target = match same {
                        Some(i) => Some(i),
                        None => {
                            // (`keyed` implies `hash`: every command gets here then.)
                            if keyed && keys::needs_keys(&b[pos + name.0..pos + name.1]) {
                                break Stop::Slow;
                            }
                            let (a, z) = key.unwrap_or(name);
                            w.candidate(&b[pos + a..pos + z], &sh.stats, now, &Tried::NONE)
                        }
                    };
                    let Some(i) = target else {
                        break Stop::Slow; // the slow path answers "no upstream"
                    };
                    match batches.last_mut() {
                        Some(last) if last.0 == i => {
                            last.2 = pos + len;
                            last.3 += 1;
                        }
                        _ => batches.push((i, pos, pos + len, 1, None)),
                    }
                    pos += len;
                    total += 1;
                }
                Scan::Incomplete => {
                    if b.len() - pos >= BIG_COMMAND {
                        self.feed.sticky = true;
                        break Stop::Slow;
                    }
                    break Stop::Wait;
                }
                Scan::Other => {
                    break Stop::Slow;
                }
            }
        };
        // Permits, in order; a refusal ends the chunk list there (order must hold).
        let mut stop = stop;
        let mut keep = batches.len();
        for (k, batch) in batches.iter_mut().enumerate() {
            match w.acquire(batch.0, batch.3 as usize, &sh.stats, now) {
                Some(p) => batch.4 = Some(p),
                None => {
                    keep = k;
                    stop = Stop::Slow;
                    break;
                }
            }
        }
        drop(w);
        batches.truncate(keep);
        let Some(&(_, _, end, ..)) = batches.last() else {
            return (false, stop);
        };
        let all = self.io.input.split_to(end).freeze();
        let mut count = 0u64;
        for (i, a, z, n, permit) in batches {
            let seq = self.raw_base + self.raw.len() as u64;
            self.raw.push_back(RawSlot {
                left: n,
                parked: Vec::new(),
            });
            self.raw_left += n as usize;
            count += u64::from(n);
            self.held.push_back(Unit {
                up: i,
                permit,
                count: n,
                tried: Tried::NONE,
                work: Work::Raw {
                    seq,
                    bytes: all.slice(a..z),
                },
            });
        }
        add(&sh.stats.requests, count);
        self.flush(ctx, now);
        (true, stop)
    }

    /// Hand the next command (or, in sticky mode, everything; see [`Feed`]) to the client
    /// connection.
    fn slow(&mut self, ctx: &mut WorkerCtx, now: Instant) -> bool {
        if self.tx.only && self.tx_draining() {
            return false;
        }
        let (before_in, before_sin) = (self.io.input.len(), self.sin.len());
        if self.locked {
            if let Some(progressed) = self.gate_unauthenticated() {
                return progressed;
            }
        }
        let server = &self.shared.server;
        self.feed.step(
            &mut self.io.input,
            &mut self.sin,
            self.shared.cfg.redis_client_auth.is_some(),
            server.proto_max_bulk_len,
            server.max_inline_size,
        );
        if !self.sin.is_empty()
            && !self.errored
            && self.conn.handle_input(now, &mut self.sin).is_err()
        {
            self.errored = true;
        }
        let mut progressed = self.io.input.len() != before_in || self.sin.len() != before_sin;
        while let Some(ev) = self.conn.poll_event() {
            progressed = true;
            self.event(ctx, ev, now);
        }
        if self.errored {
            self.io.input.clear();
            self.sin.clear();
        }
        progressed
    }

    fn event(&mut self, ctx: &mut WorkerCtx, ev: SEvent, now: Instant) {
        match ev {
            SEvent::Command(cmd) => {
                add(&self.shared.stats.requests, 1);
                let Some(cmd) = self.client_auth(cmd) else {
                    return;
                };
                if cmd.is("ping") && self.conn.is_subscribed() && cmd.args.len() <= 2 {
                    // Only a RESP3 client gets here (the connection answers RESP2 pub/sub
                    // PINGs itself); Redis answers it as outside pub/sub mode.
                    let v = match cmd.args.get(1) {
                        Some(arg) => Value::BulkString(arg.clone()),
                        None => Value::simple("PONG"),
                    };
                    let _ = self.conn.send_reply(cmd.id, &v);
                    return;
                }
                if let Some(what) = unsupported(&cmd.args) {
                    let _ = self.conn.send_reply(
                        cmd.id,
                        &Value::error_fmt(format_args!("ERR ferry proxy: {what} is not supported")),
                    );
                    return;
                }
                let dedicated =
                    matches!(self.route, Route::Dedicated(_)) || self.want_dedicated.is_some();
                if cmd.is("hello") && cmd.args.len() <= 2 {
                    // Protocol negotiation is between the client and the proxy. (Without a
                    // version HELLO keeps the current one.)
                    let current = if self.resp3() { 3 } else { 2 };
                    let proto = cmd
                        .args
                        .get(1)
                        .map_or(current, |v| if &v[..] == b"3" { 3 } else { 2 });
                    let info = Value::Map(vec![
                        (Value::bulk("server"), Value::bulk("ferry-proxy")),
                        (
                            Value::bulk("version"),
                            Value::bulk(env!("CARGO_PKG_VERSION")),
                        ),
                        (Value::bulk("proto"), Value::Integer(proto)),
                        (Value::bulk("id"), Value::Integer(self.io.me().token as i64)),
                        (Value::bulk("mode"), Value::bulk("proxy")),
                        (Value::bulk("role"), Value::bulk("master")),
                        (Value::bulk("modules"), Value::Array(Vec::new())),
                    ]);
                    let _ = self.conn.send_reply(cmd.id, &info);
                    if dedicated {
                        // Keep the client's own upstream connection in the same protocol.
                        let mut args = Args::new();
                        args.push(Bytes::from_static(b"HELLO"));
                        args.push(Bytes::from(proto.to_string()));
                        self.hold_dedicated(None, args);
                    }
                    return;
                }
                if dedicated && cmd.is("client") {
                    self.note_name(&cmd.args);
                } else if cmd.is("client") {
                    let sub = cmd
                        .args
                        .get(1)
                        .map(|b| b.to_ascii_lowercase())
                        .unwrap_or_default();
                    let local = match &sub[..] {
                        b"setinfo" => Some(Value::ok()),
                        b"setname" => {
                            self.name = cmd.args.get(2).cloned();
                            Some(Value::ok())
                        }
                        b"getname" => Some(
                            self.name
                                .clone()
                                .map_or(Value::NullBulkString, Value::BulkString),
                        ),
                        // `CLIENT ID` takes a dedicated connection (its id is the upstream's,
                        // usable in `CLIENT TRACKING … REDIRECT`, `CLIENT KILL ID`); on the
                        // shared connections a client has no tracking, as these say.
                        b"getredir" | b"trackinginfo" | b"caching" => {
                            Some(tracking::untracked_reply(&sub, cmd.args.len()))
                        }
                        _ => None,
                    };
                    if let Some(v) = local {
                        let _ = self.conn.send_reply(cmd.id, &v);
                        return;
                    }
                }
                if !matches!(self.route, Route::Dedicated(_))
                    && self.want_dedicated.is_none()
                    && needs_dedicated(&cmd.args)
                {
                    if self.shared.keyed {
                        if self.tx_start(cmd.id, &cmd.args) {
                            return;
                        }
                    } else {
                        self.want_dedicated(cmd.args.get(1).cloned().unwrap_or_default());
                    }
                }
                if matches!(self.route, Route::Dedicated(_)) || self.want_dedicated.is_some() {
                    if self.shared.keyed && self.tx_check(ctx, cmd.id, &cmd.args, now) {
                        return;
                    }
                    if is_blocking(&cmd.args) {
                        self.blocking = Some(cmd.id);
                    } else if !self.ded_state && needs_dedicated(&cmd.args) {
                        self.ded_state = true;
                    }
                    self.hold_dedicated(Some(cmd.id), cmd.args);
                    return;
                }
                let sh = self.shared.clone();
                let mut key = cmd.args.get(1).unwrap_or(&cmd.args[0]);
                let first;
                if sh.keyed {
                    match self.route_keys(ctx, cmd.id, &cmd.args, now) {
                        Some(k) => {
                            first = k;
                            key = &first;
                        }
                        None => return,
                    }
                } else if sh.cfg.upstreams.len() > 1 && self.everywhere(ctx, &cmd, now) {
                    return;
                }
                let pick = sh
                    .worker(ctx.index)
                    .pick(key, 1, &sh.stats, now, &Tried::NONE);
                match pick {
                    Some((up, permit)) => self.held.push_back(Unit {
                        up,
                        permit: Some(permit),
                        count: 1,
                        tried: Tried::NONE,
                        work: Work::Cmd {
                            id: Some(cmd.id),
                            args: cmd.args,
                        },
                    }),
                    None => {
                        add(&sh.stats.answered_503, 1);
                        let _ = self.conn.send_reply(cmd.id, &no_upstream());
                    }
                }
            }
            SEvent::Subscribe { kind, channels } => self.mirror_sub(kind, channels, true),
            SEvent::Unsubscribe { kind, channels } => self.mirror_sub(kind, channels, false),
            SEvent::Reset => {
                self.name = None;
                self.tx = Tx::default();
                if matches!(self.route, Route::Dedicated(_)) || self.want_dedicated.is_some() {
                    let mut args = Args::new();
                    args.push(Bytes::from_static(b"RESET"));
                    self.hold_dedicated(None, args);
                }
                self.after_reset();
            }
            SEvent::Error(_) => self.errored = true,
            _ => {}
        }
    }

    /// `--balance hash` over several upstreams: route command `id` by all its keys. Returns
    /// the key to route it by, or `None` if it was dealt with here: split across upstreams
    /// (`MGET`, `MSET`, `DEL`, `UNLINK`, `EXISTS`, `TOUCH`; `DBSIZE`, `KEYS`, `FLUSHALL`,
    /// `FLUSHDB` go to every upstream), or refused with `-CROSSSLOT` (other commands whose
    /// keys are on different upstreams, as Redis Cluster does).
    #[cold]
    fn route_keys(
        &mut self,
        ctx: &mut WorkerCtx,
        id: CommandId,
        args: &[Bytes],
        now: Instant,
    ) -> Option<Bytes> {
        let sh = self.shared.clone();
        let low = args[0].to_ascii_lowercase();
        let n = sh.cfg.upstreams.len();
        if low == b"scan" && args.len() >= 2 {
            if let Some((i, inner)) = keys::scan_cursor(&args[1], n) {
                let mut sub: Args = args.iter().cloned().collect();
                sub[1] = Bytes::from(inner.to_string());
                let parts = std::iter::once((i, Vec::new())).collect();
                self.fan_out(ctx, id, keys::Merge::Scan, parts, vec![sub], now);
                return None;
            }
        }
        if let Some(merge) = keys::all_servers(&low, args) {
            let parts = (0..n).map(|i| (i, Vec::new())).collect();
            let sub = (0..n).map(|_| args.iter().cloned().collect()).collect();
            self.fan_out(ctx, id, merge, parts, sub, now);
            return None;
        }
        let Some(idx) = keys::key_indexes(args) else {
            return Some(args.get(1).unwrap_or(&args[0]).clone());
        };
        let Some(&k0) = idx.first() else {
            return Some(args.get(1).unwrap_or(&args[0]).clone());
        };
        // Each key's upstream, as a single-key command on it would go.
        let mut ups: SmallVec<[usize; 8]> = SmallVec::new();
        {
            let mut w = sh.worker(ctx.index);
            for &k in &idx {
                match w.candidate(&args[k], &sh.stats, now, &Tried::NONE) {
                    Some(i) => ups.push(i),
                    None => return Some(args[k0].clone()), // the pick answers "no upstream"
                }
            }
        }
        if ups.iter().all(|&u| u == ups[0]) {
            return Some(args[k0].clone());
        }
        let split = keys::split_kind(&low);
        if split.is_some_and(|(_, step)| (args.len() - 1) % step != 0) {
            // Malformed (`MSET` without a value for its last key): the upstream says why.
            return Some(args[k0].clone());
        }
        let Some((merge, step)) = split else {
            let _ = self.conn.send_reply(
                id,
                &Value::error_fmt(format_args!(
                    "CROSSSLOT Keys in request don't hash to the same upstream \
                     (ferry proxy --balance hash; use a {{hash tag}})"
                )),
            );
            return None;
        };
        let mut parts: SmallVec<[(usize, Vec<u32>); 4]> = SmallVec::new();
        let mut sub: Vec<Args> = Vec::new();
        for (pos, (&k, &u)) in idx.iter().zip(&ups).enumerate() {
            let p = match parts.iter().position(|&(i, _)| i == u) {
                Some(p) => p,
                None => {
                    parts.push((u, Vec::new()));
                    let mut a = Args::new();
                    a.push(args[0].clone());
                    sub.push(a);
                    parts.len() - 1
                }
            };
            parts[p].1.push(pos as u32);
            sub[p].extend(args[k..k + step].iter().cloned());
        }
        self.fan_out(ctx, id, merge, parts, sub, now);
        None
    }

    /// Any balance over several upstreams: `SCRIPT LOAD|FLUSH` and
    /// `FUNCTION LOAD|DELETE|FLUSH` go to every upstream (else `EVALSHA`/`FCALL` fail with
    /// `NOSCRIPT` wherever the script was not loaded). Returns whether `cmd` was one.
    #[cold]
    fn everywhere(&mut self, ctx: &mut WorkerCtx, cmd: &ferry_resp::Command, now: Instant) -> bool {
        let low = cmd.args[0].to_ascii_lowercase();
        if !matches!(&low[..], b"script" | b"function")
            || keys::all_servers(&low, &cmd.args).is_none()
        {
            return false;
        }
        let n = self.shared.cfg.upstreams.len();
        let parts = (0..n).map(|i| (i, Vec::new())).collect();
        let sub = (0..n).map(|_| cmd.args.clone()).collect();
        self.fan_out(ctx, cmd.id, keys::Merge::Same, parts, sub, now);
        true
    }

    /// Send the parts of split command `id` (`sub[p]` to upstream `parts[p].0`).
    fn fan_out(
        &mut self,
        ctx: &mut WorkerCtx,
        id: CommandId,
        merge: keys::Merge,
        parts: SmallVec<[(usize, Vec<u32>); 4]>,
        sub: Vec<Args>,
        now: Instant,
    ) {
        let sh = self.shared.clone();
        let mut permits = Vec::with_capacity(parts.len());
        {
            let mut w = sh.worker(ctx.index);
            for &(i, _) in &parts {
                match w.acquire(i, 1, &sh.stats, now) {
                    Some(p) => permits.push(p),
                    None => {
                        for (&(j, _), p) in parts.iter().zip(permits) {
                            w.report(j, p, 1, Outcome::Ignored, now, &sh.stats);
                        }
                        drop(w);
                        add(&sh.stats.answered_503, 1);
                        let _ = self.conn.send_reply(id, &no_upstream());
                        return;
                    }
                }
            }
        }
        let values = if merge == keys::Merge::Values {
            vec![Value::NullBulkString; parts.iter().map(|p| p.1.len()).sum()]
        } else {
            Vec::new()
        };
        for ((&(up, _), permit), args) in parts.iter().zip(permits).zip(sub) {
            self.held.push_back(Unit {
                up,
                permit: Some(permit),
                count: 1,
                tried: Tried::NONE,
                work: Work::Part { id, args },
            });
        }
        self.splits.push(Split {
            id,
            merge,
            left: parts.len(),
            n: sh.cfg.upstreams.len(),
            parts,
            values,
            sum: 0,
            err: None,
        });
    }

    /// Upstream `up`'s reply to its part of split command `id`; the merged reply goes out
    /// once every part answered (the first error, if any part failed).
    fn part_reply(&mut self, id: CommandId, up: usize, v: Value) {
        let Some(k) = self.splits.iter().position(|s| s.id == id) else {
            return;
        };
        let s = &mut self.splits[k];
        let Some(p) = s.parts.iter().position(|&(i, _)| i == up) else {
            return;
        };
        let slots = std::mem::take(&mut s.parts[p].1);
        s.parts[p].0 = usize::MAX; // answered
        s.left -= 1;
        if s.err.is_none() {
            let bad = || Value::error_fmt(format_args!("ERR ferry proxy: unexpected reply"));
            match (s.merge, &v) {
                (_, e) if e.is_error() => s.err = Some(v.clone()),
                (keys::Merge::Values, Value::Array(items)) if items.len() == slots.len() => {
                    for (slot, item) in slots.iter().zip(items) {
                        s.values[*slot as usize] = item.clone();
                    }
                }
                (keys::Merge::Concat, Value::Array(items) | Value::Set(items)) => {
                    s.values.extend(items.iter().cloned());
                }
                (keys::Merge::Sum, Value::Integer(i)) => s.sum = s.sum.saturating_add(*i),
                (keys::Merge::Ok, Value::SimpleString(_)) => {}
                (keys::Merge::Scan, Value::Array(page)) => {
                    let next = match page.first() {
                        Some(Value::BulkString(c)) => std::str::from_utf8(c)
                            .ok()
                            .and_then(|c| c.parse().ok())
                            .and_then(|c| keys::scan_next(c, up, s.n)),
                        _ => None,
                    };
                    match (next, page.get(1)) {
                        (Some(c), Some(keys)) => {
                            s.values =
                                vec![Value::BulkString(Bytes::from(c.to_string())), keys.clone()]
                        }
                        _ => s.err = Some(bad()),
                    }
                }
                (keys::Merge::Same, _) => {
                    if s.values.is_empty() {
                        s.values.push(v.clone());
                    }
                }
                _ => s.err = Some(bad()),
            }
        }
        if s.left > 0 {
            return;
        }
        let s = self.splits.swap_remove(k);
        let reply = match (s.err, s.merge) {
            (Some(e), _) => e,
            (None, keys::Merge::Values | keys::Merge::Concat | keys::Merge::Scan) => {
                Value::Array(s.values)
            }
            (None, keys::Merge::Sum) => Value::Integer(s.sum),
            (None, keys::Merge::Ok) => Value::ok(),
            (None, keys::Merge::Same) => s.values.into_iter().next().unwrap_or_else(Value::ok),
        };
        let _ = self.conn.send_reply(s.id, &reply);
    }

    /// `--balance hash` over several upstreams: a command moves the client to a dedicated
    /// connection (see [`Tx`]). Returns whether it was answered here (`MULTI`).
    #[cold]
    fn tx_start(&mut self, id: CommandId, args: &[Bytes]) -> bool {
        let low = args[0].to_ascii_lowercase();
        self.tx = Tx {
            only: matches!(
                &low[..],
                b"multi" | b"watch" | b"exec" | b"discard" | b"unwatch"
            ),
            ..Tx::default()
        };
        if low == b"multi" {
            self.tx.pending = true;
            self.want_dedicated = Some(Bytes::new());
            let _ = self.conn.send_reply(id, &Value::ok());
            return true;
        }
        let key = match keys::key_indexes(args) {
            Some(idx) => idx.first().map(|&k| args[k].clone()),
            None => args.get(1).cloned(),
        };
        self.want_dedicated(key.unwrap_or_default());
        false
    }

    /// `--balance hash` over several upstreams: command `id` for the dedicated connection.
    /// Returns whether it was answered here (its keys are on another upstream, or `EXEC`
    /// of a transaction with such a command).
    #[cold]
    fn tx_check(
        &mut self,
        ctx: &mut WorkerCtx,
        id: CommandId,
        args: &[Bytes],
        now: Instant,
    ) -> bool {
        let low = args[0].to_ascii_lowercase();
        let idx = match keys::key_indexes(args) {
            Some(idx) => idx,
            None if args.len() < 2 || keys::keyless(&low) => keys::KeyIdx::new(),
            None => std::iter::once(1).collect(),
        };
        if self.tx.pending {
            // The transaction goes to the upstream of its first command's key.
            self.tx.pending = false;
            self.tx.multi = true;
            self.want_dedicated(idx.first().map(|&k| args[k].clone()).unwrap_or_default());
            let mut multi = Args::new();
            multi.push(Bytes::from_static(b"MULTI"));
            self.hold_dedicated(None, multi);
        }
        let sh = self.shared.clone();
        let elsewhere = {
            let mut w = sh.worker(ctx.index);
            let target = match (self.route, &self.want_dedicated) {
                (Route::Dedicated(i), _) => Some(i),
                (_, Some(k)) => w.candidate(k, &sh.stats, now, &Tried::NONE),
                _ => None,
            };
            idx.iter()
                .any(|&k| w.candidate(&args[k], &sh.stats, now, &Tried::NONE) != target)
        };
        if elsewhere && self.follow_keys(ctx, args, &idx, now) {
            return false;
        }
        if elsewhere {
            self.tx.dirty |= self.tx.multi;
            let _ = self.conn.send_reply(
                id,
                &Value::error_fmt(format_args!(
                    "CROSSSLOT Keys in request don't hash to the upstream of this \
                     connection's transaction or state (ferry proxy --balance hash)"
                )),
            );
            return true;
        }
        match &low[..] {
            b"multi" => self.tx.multi = true,
            b"exec" if self.tx.dirty => {
                self.tx = Tx {
                    only: self.tx.only,
                    ..Tx::default()
                };
                let mut discard = Args::new();
                discard.push(Bytes::from_static(b"DISCARD"));
                self.hold_dedicated(None, discard);
                let _ = self.conn.send_reply(
                    id,
                    &Value::error_fmt(format_args!(
                        "EXECABORT Transaction discarded because of previous errors."
                    )),
                );
                return true;
            }
            b"exec" | b"discard" => {
                self.tx = Tx {
                    only: self.tx.only,
                    ..Tx::default()
                }
            }
            b"watch" if !self.tx.multi => self.tx.watch = true,
            b"unwatch" if !self.tx.multi => self.tx.watch = false,
            b"watch" | b"unwatch" => {}
            _ if needs_dedicated(args) => self.tx.only = false,
            _ => {}
        }
        false
    }

    /// The keys of a command for a dedicated connection that holds no state (it only ran
    /// blocking or keyed commands, all answered) now live on another upstream, all on the
    /// same one: their upstream changed (a breaker opened or closed, a failover or its
    /// failback). The client follows them to a dedicated connection there instead of being
    /// refused; returns whether it did.
    #[cold]
    fn follow_keys(
        &mut self,
        ctx: &mut WorkerCtx,
        args: &[Bytes],
        idx: &keys::KeyIdx,
        now: Instant,
    ) -> bool {
        let Some(&first) = idx.first() else {
            return false;
        };
        let stateless = !self.tx.pending
            && !self.tx.multi
            && !self.tx.watch
            && !self.ded_state
            && self.unacked == 0
            && self.in_flight == 0
            && self.held.is_empty()
            && self.blocking.is_none()
            && !self.conn.is_subscribed()
            && matches!(self.route, Route::Dedicated(_));
        if !stateless {
            return false;
        }
        let sh = self.shared.clone();
        {
            let mut w = sh.worker(ctx.index);
            let to = w.candidate(&args[first], &sh.stats, now, &Tried::NONE);
            if to.is_none()
                || idx
                    .iter()
                    .any(|&k| w.candidate(&args[k], &sh.stats, now, &Tried::NONE) != to)
            {
                return false;
            }
        }
        self.release_dedicated(ctx);
        self.want_dedicated(args[first].clone());
        true
    }

    /// Give the dedicated connection back (its state goes with it, see `lost`): the client
    /// is on the shared connections again, or about to move to another dedicated one.
    #[cold]
    fn release_dedicated(&mut self, ctx: &mut WorkerCtx) {
        if let Some(o) = self.ded.take() {
            post(ctx, o, RKind::Release);
        }
        self.route = Route::None;
        self.tx = Tx::default();
        self.ded_state = false;
        self.ded_answered = false;
        self.ups.iter_mut().for_each(|a| *a = Att::Idle);
    }

    /// A transaction is over, its dedicated connection about to be given back
    /// ([`Tx`]): the commands behind it wait (their keys may be on any upstream).
    #[cold]
    #[inline(never)]
    fn tx_draining(&self) -> bool {
        self.tx.only
            && !self.tx.pending
            && !self.tx.multi
            && !self.tx.watch
            && (matches!(self.route, Route::Dedicated(_)) || self.want_dedicated.is_some())
    }

    /// A transaction-only dedicated connection whose transaction is over and answered is
    /// given back (see [`Tx`]).
    #[cold]
    fn tx_end(&mut self, ctx: &mut WorkerCtx) {
        let t = self.tx;
        if t.pending
            || t.multi
            || t.watch
            || self.unacked > 0
            || !self.held.is_empty()
            || self.blocking.is_some()
            || self.conn.is_subscribed()
        {
            return;
        }
        if let (Route::Dedicated(_), Some(_)) = (self.route, self.ded) {
            self.release_dedicated(ctx);
        }
    }

    /// A `CLIENT` command for the dedicated connection: keep the name a valid
    /// `CLIENT SETNAME` gives (as Redis takes it), to set it again on another connection.
    #[cold]
    fn note_name(&mut self, args: &[Bytes]) {
        if let [_, sub, name] = args {
            if sub.eq_ignore_ascii_case(b"setname")
                && name.iter().all(|c| (b'!'..=b'~').contains(c))
            {
                self.name = (!name.is_empty()).then(|| name.clone());
            }
        }
    }

    /// Move to a dedicated connection (to the upstream of `key`) once the shared ones
    /// answered; the name the proxy kept for the client goes along (and stays kept: a
    /// dedicated connection may be given back, or left for another upstream's).
    fn want_dedicated(&mut self, key: Bytes) {
        self.want_dedicated = Some(key);
        if let Some(name) = self.name.clone() {
            let mut args = Args::new();
            args.push(Bytes::from_static(b"CLIENT"));
            args.push(Bytes::from_static(b"SETNAME"));
            args.push(name);
            self.hold_dedicated(None, args);
        }
    }

    fn hold_dedicated(&mut self, id: Option<CommandId>, args: Args) {
        if id.is_none() {
            self.unacked += 1;
        }
        self.held.push_back(Unit {
            up: DEDICATED,
            permit: None,
            count: 1,
            tried: Tried::NONE,
            work: Work::Cmd { id, args },
        });
    }

    /// The connection answered a (un)subscription itself; mirror it on the dedicated
    /// upstream connection (whose confirmations nobody waits for).
    fn mirror_sub(&mut self, kind: SubKind, channels: Vec<Bytes>, sub: bool) {
        if channels.is_empty() {
            return;
        }
        let name: &'static [u8] = match (kind, sub) {
            (SubKind::Channel, true) => b"SUBSCRIBE",
            (SubKind::Pattern, true) => b"PSUBSCRIBE",
            (SubKind::Shard, true) => b"SSUBSCRIBE",
            (SubKind::Channel, false) => b"UNSUBSCRIBE",
            (SubKind::Pattern, false) => b"PUNSUBSCRIBE",
            (SubKind::Shard, false) => b"SUNSUBSCRIBE",
        };
        let key = channels.first().cloned().unwrap_or_default();
        let mut args = Args::new();
        args.push(Bytes::from_static(name));
        args.extend(channels);
        if !matches!(self.route, Route::Dedicated(_)) && self.want_dedicated.is_none() {
            self.want_dedicated(key);
        }
        self.hold_dedicated(None, args);
    }

    /// Send held work where it can go now (in order); bind, re-bind or connect as needed.
    fn flush(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let sh = self.shared.clone();
        let n = sh.slots_per_protocol();
        while let Some(front) = self.held.front() {
            if front.up == DEDICATED {
                if let Route::Dedicated(_) = self.route {
                    let Some(to) = self.ded else { return };
                    let unit = self.held.pop_front().expect("front");
                    self.send(ctx, to, unit);
                    continue;
                }
                if self.raw_left > 0 || self.in_flight > 0 {
                    return; // after the shared connections answered this client's commands
                }
                let key = self.want_dedicated.take().unwrap_or_default();
                let Some(i) = sh
                    .worker(ctx.index)
                    .candidate(&key, &sh.stats, now, &Tried::NONE)
                else {
                    add(&sh.stats.answered_503, 1);
                    self.fail_held(|_| true, &no_upstream());
                    if self.ded_state {
                        // As when the connection is lost (see `lost`): what the client
                        // pipelined behind a failed `MULTI` must not run elsewhere.
                        self.errored = true;
                        self.conn.close();
                    }
                    return;
                };
                self.route = Route::Dedicated(i);
                self.ded = None;
                self.ded_answered = false;
                self.ups.iter_mut().for_each(|a| *a = Att::Idle);
                let resp3 = self.resp3();
                self.connect(ctx, i, if resp3 { 0xFE } else { 0xFF }, now);
                return;
            }
            let resp3 = self.resp3();
            match self.route {
                Route::Dedicated(_) => {
                    // Work picked for a shared connection before the move: it goes along.
                    let mut unit = self.held.pop_front().expect("front");
                    report_units(ctx, &sh, [&unit], Outcome::Ignored, now);
                    if let Work::Part { id, .. } = unit.work {
                        // Its merge waits for a reply from `unit.up`.
                        self.part_reply(id, unit.up, lost());
                        continue;
                    }
                    unit.up = DEDICATED;
                    unit.permit = None;
                    self.held.push_front(unit);
                    continue;
                }
                Route::Shared(s) if (s >= n) != resp3 => {
                    // The client switched protocol: re-bind once its replies are in.
                    if self.raw_left > 0 || self.in_flight > 0 {
                        return;
                    }
                    self.route = Route::None;
                    self.ups.iter_mut().for_each(|a| *a = Att::Idle);
                    continue;
                }
                Route::None => {
                    let mut w = sh.worker(ctx.index);
                    let s = w.next_slot % n + if resp3 { n } else { 0 };
                    w.next_slot = w.next_slot.wrapping_add(1);
                    self.route = Route::Shared(s);
                    continue;
                }
                Route::Shared(s) => {
                    let i = front.up;
                    if i >= self.ups.len() {
                        // An upstream a reload added after this client came.
                        self.ups.resize(i + 1, Att::Idle);
                    }
                    match self.ups[i] {
                        Att::Ready(to) => {
                            let unit = self.held.pop_front().expect("front");
                            self.send(ctx, to, unit);
                        }
                        Att::Waiting => return,
                        Att::Idle => {
                            let mut w = sh.worker(ctx.index);
                            match &mut w.slots[i][s] {
                                Slot::Ready(to) => self.ups[i] = Att::Ready(*to),
                                Slot::Connecting(waiters) => {
                                    waiters.push(self.io.me());
                                    self.ups[i] = Att::Waiting;
                                    return;
                                }
                                slot @ Slot::Empty => {
                                    *slot = Slot::Connecting(vec![self.io.me()]);
                                    drop(w);
                                    self.ups[i] = Att::Waiting;
                                    self.connect(ctx, i, s as u64, now);
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn send(&mut self, ctx: &mut WorkerCtx, to: Owner, unit: Unit) {
        if let Work::Cmd { id: Some(_), .. } | Work::Part { .. } = unit.work {
            self.in_flight += 1;
        }
        let owner = self.io.me();
        post(ctx, to, RKind::Send { owner, unit });
    }

    fn connect(&mut self, ctx: &mut WorkerCtx, i: usize, slot: u64, now: Instant) {
        let sh = self.shared.clone();
        sh.stats.upstreams[i].connects.fetch_add(1, Relaxed);
        // upstream (8 bits) | owner token (24) | owner generation (24) | slot (8, 0xFE/0xFF: dedicated)
        let tag = ((i as u64) << 56)
            | (((self.io.me().token as u64) & 0xFF_FFFF) << 32)
            | (u64::from(self.io.me().gen & 0xFF_FFFF) << 8)
            | (slot & 0xFF);
        let addr = sh.stats.upstreams[i].current();
        if !addr.is_some_and(|a| ctx.connect(a, tag)) {
            if slot < 0xFE {
                let mut w = sh.worker(ctx.index);
                if let Slot::Connecting(_) = w.slots[i][slot as usize] {
                    w.slots[i][slot as usize] = Slot::Empty;
                }
            }
            self.lost(ctx, i, None, now);
        }
    }

    /// Answer held work matching `which` with `err` (its permits are failures).
    fn fail_held(&mut self, which: impl Fn(&Unit) -> bool, err: &Value) {
        let mut keep = VecDeque::new();
        let mut failed = Vec::new();
        for u in self.held.drain(..) {
            if which(&u) {
                failed.push(u);
            } else {
                keep.push_back(u);
            }
        }
        self.held = keep;
        for u in failed {
            match u.work {
                Work::Cmd { id: Some(id), .. } => {
                    let _ = self.conn.send_reply(id, err);
                }
                Work::Cmd { id: None, .. } => self.unacked = self.unacked.saturating_sub(1),
                Work::Part { id, .. } => self.part_reply(id, u.up, err.clone()),
                Work::Raw { seq, .. } => {
                    let line = encode_error_line(err);
                    let mut b = BytesMut::with_capacity(line.len() * u.count as usize);
                    for _ in 0..u.count {
                        b.extend_from_slice(&line);
                    }
                    self.raw_deliver(seq, b.freeze(), u.count);
                }
            }
        }
    }

    /// The connection to upstream `up` (`conn`, or whichever) is gone.
    fn lost(&mut self, ctx: &mut WorkerCtx, up: usize, conn: Option<Owner>, now: Instant) {
        let sh = self.shared.clone();
        if let Route::Dedicated(i) = self.route {
            if (i != up && up != DEDICATED)
                || (conn.is_some() && self.ded.is_some() && self.ded != conn)
            {
                return;
            }
            // State (transaction, subscriptions, SELECT, AUTH, …) is lost with it: the
            // client must start over, so its connection closes once it got its errors (as if
            // it were connected to the upstream; carrying on quietly on the shared
            // connections would e.g. write to db 0 after a SELECT 1 that said +OK). So is a
            // client that sent a state-setting command there even if it was not answered:
            // commands it pipelined behind a `MULTI` that failed would otherwise run on the
            // shared connections, outside the transaction, when they arrive after the loss
            // (as Redis would not: they die with the connection). A client that got nothing
            // but errors from a connection it only used for blocking commands carries on.
            self.errored = self.conn.is_subscribed() || self.ded_answered || self.ded_state;
            self.route = Route::None;
            self.ded = None;
            self.in_flight = 0;
            self.unacked = 0;
            self.tx = Tx::default();
            self.fail_held(|_| true, &lost());
            if self.errored {
                self.conn.close();
            }
            return;
        }
        let Some(att) = self.ups.get_mut(up) else {
            return;
        };
        match (*att, conn) {
            (Att::Ready(to), Some(c)) if to != c => return,
            (Att::Idle, Some(_)) => return,
            _ => *att = Att::Idle,
        }
        let failed: Vec<&Unit> = self.held.iter().filter(|u| u.up == up).collect();
        report_units(ctx, &sh, failed, Outcome::Failure, now);
        for u in self.held.iter_mut().filter(|u| u.up == up) {
            u.permit = None;
        }
        self.fail_held(|u| u.up == up, &lost());
    }

    /// The upstreams in `unit.tried` answered it `-LOADING` ([`RUp::loading`]): send it
    /// to another one (by its first key under `--balance hash`), at most `--retries` times
    /// in all, or deliver `reply`.
    #[cold]
    #[inline(never)]
    fn retry(&mut self, ctx: &mut WorkerCtx, mut unit: Unit, reply: Bytes, now: Instant) {
        let sh = self.shared.clone();
        if let Work::Cmd { id: Some(_), .. } = unit.work {
            // (Counted again when sent again.)
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        let key = match &unit.work {
            Work::Raw { bytes, .. } => match scan(bytes, u64::MAX, usize::MAX) {
                Scan::Complete { name, key, .. } => {
                    let (a, z) = key.unwrap_or(name);
                    bytes.slice(a..z)
                }
                _ => Bytes::new(),
            },
            Work::Cmd { args, .. } | Work::Part { args, .. } => {
                args.get(1).unwrap_or(&args[0]).clone()
            }
        };
        let pick = if self.errored || unit.tried.len() > sh.tun.retries() as usize {
            None
        } else {
            let mut w = sh.worker(ctx.index);
            w.pick(&key, unit.count as usize, &sh.stats, now, &unit.tried)
        };
        match pick {
            Some((up, permit)) => {
                sh.stats.upstreams[up].retries.fetch_add(1, Relaxed);
                unit.up = up;
                unit.permit = Some(permit);
                hold_retry(&mut self.held, unit);
                self.flush(ctx, now);
            }
            _ => {
                report_units(ctx, &sh, [&unit], Outcome::Ignored, now);
                match unit.work {
                    Work::Raw { seq, .. } => {
                        self.raw_deliver(seq, reply, unit.count);
                        if self.raw_left == 0 {
                            self.flush(ctx, now);
                        }
                    }
                    Work::Cmd { id: Some(id), .. } => {
                        self.in_flight += 1;
                        let v = match parse_buf(&mut BytesMut::from(&reply[..]), &sh.limits) {
                            Ok(Some(v)) => v,
                            _ => lost(),
                        };
                        self.apply(ctx, RKind::Reply(id, v), now);
                    }
                    _ => {}
                }
            }
        }
    }

    /// `n` replies of fast-path chunk `seq`: written now if every earlier chunk is done,
    /// else parked until it is.
    fn raw_deliver(&mut self, seq: u64, bytes: Bytes, n: u32) {
        let Some(idx) = seq.checked_sub(self.raw_base) else {
            return;
        };
        let Some(slot) = self.raw.get_mut(idx as usize) else {
            return;
        };
        let n = n.min(slot.left);
        slot.left -= n;
        self.raw_left -= n as usize;
        if idx == 0 {
            self.io.out.push(bytes);
        } else {
            slot.parked.push(bytes);
        }
        while self.raw.front().is_some_and(|s| s.left == 0) {
            self.raw.pop_front();
            self.raw_base += 1;
            if let Some(next) = self.raw.front_mut() {
                for b in std::mem::take(&mut next.parked) {
                    self.io.out.push(b);
                }
            }
        }
    }

    fn apply(&mut self, ctx: &mut WorkerCtx, kind: RKind, now: Instant) {
        let draining = self.tx.only && self.tx_draining();
        let push = matches!(kind, RKind::Push(_));
        let answered = match &kind {
            RKind::Reply(_, v) => !v.is_error(),
            RKind::Ack | RKind::Push(_) => true,
            _ => false,
        };
        if answered && matches!(self.route, Route::Dedicated(_)) {
            self.ded_answered = true;
        }
        match kind {
            RKind::Attached { up, slot, conn } => {
                let dedicated = slot >= 0xFE;
                match self.route {
                    Route::Dedicated(i) if dedicated && i == up && self.ded.is_none() => {
                        self.ded = Some(conn);
                        self.flush(ctx, now);
                        if self.eof_done && self.blocking.is_some() {
                            self.hang_up(ctx);
                        }
                    }
                    Route::Shared(s)
                        if !dedicated && s == slot && self.ups.get(up) == Some(&Att::Waiting) =>
                    {
                        self.ups[up] = Att::Ready(conn);
                        self.flush(ctx, now);
                    }
                    _ if dedicated => {
                        // A dedicated connection nobody wants any more.
                        post(ctx, conn, RKind::Release);
                    }
                    _ => {}
                }
            }
            RKind::Reply(id, v) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                if self.blocking == Some(id) {
                    self.blocking = None;
                }
                let _ = self.conn.send_reply(id, &v);
                if self.in_flight == 0 {
                    if self.tx.only {
                        self.tx_end(ctx);
                    }
                    self.flush(ctx, now);
                }
            }
            RKind::RawReply { seq, bytes, n } => {
                self.raw_deliver(seq, bytes, n);
                if self.raw_left == 0 {
                    self.flush(ctx, now);
                }
            }
            RKind::RawLost { seq, n } => {
                self.raw_deliver(seq, lost_lines(n), n);
                if self.raw_left == 0 {
                    self.flush(ctx, now);
                }
            }
            RKind::Part(id, up, v) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.part_reply(id, up, v);
                if self.in_flight == 0 {
                    self.flush(ctx, now);
                }
            }
            RKind::Push(v) => self.push(v),
            RKind::Ack => {
                self.unacked = self.unacked.saturating_sub(1);
                if self.tx.only && self.in_flight == 0 {
                    self.tx_end(ctx);
                    self.flush(ctx, now);
                }
            }
            RKind::Lost { up, conn } => self.lost(ctx, up, conn, now),
            RKind::Retry { unit, reply } => self.retry(ctx, unit, reply, now),
            RKind::Send { .. } | RKind::Release | RKind::HangUp => {}
        }
        if draining && !self.tx_draining() {
            // The transaction's connection was given back: read the commands behind it.
            self.process(ctx, now);
        }
        self.collect();
        if push && self.io.out.len() > PUSH_OUT_LIMIT && !self.io.is_aborting() {
            // A subscriber that does not read: its dedicated connection is read on
            // regardless, so this is where Redis's `client-output-buffer-limit pubsub`
            // (hard limit 32 MiB) is kept; like Redis, drop the client.
            tracing::warn!(
                "redis client: {} bytes of pushes unread, closing",
                PUSH_OUT_LIMIT
            );
            self.io.abort();
        }
    }

    fn push(&mut self, v: Value) {
        let items = match &v {
            Value::Array(a) | Value::Push(a) => a.as_slice(),
            _ => return,
        };
        let b = |i: usize| items.get(i).and_then(|x| x.as_bytes()).cloned();
        let kind = items
            .first()
            .and_then(|x| x.as_bytes())
            .map(|k| k.to_ascii_lowercase());
        match kind.as_deref() {
            Some(b"message") => {
                if let (Some(c), Some(p)) = (b(1), b(2)) {
                    self.conn.send_message(&c, &p);
                } else {
                    // Not a bulk payload: a tracking invalidation (`REDIRECT` target).
                    self.send_invalidation(&v);
                }
            }
            Some(b"pmessage") => {
                if let (Some(pat), Some(c), Some(p)) = (b(1), b(2), b(3)) {
                    self.conn.send_pmessage(&pat, &c, &p);
                }
            }
            Some(b"smessage") => {
                if let (Some(c), Some(p)) = (b(1), b(2)) {
                    self.conn.send_smessage(&c, &p);
                }
            }
            _ => {
                let _ = self.conn.send_push(&v);
            }
        }
    }
}

/// Arguments this large go upstream as chunks of their own, not copied.
const BIG_ARG: usize = 64 * 1024;

/// Queue `args` as a multibulk command; large arguments (a 300 MB `SET` read whole by the
/// slow path) are queued as they are: encoding them would hold the value twice.
fn push_command(io: &mut Io, args: &[Bytes]) {
    let mut b = BytesMut::new();
    if args.iter().all(|a| a.len() < BIG_ARG) {
        encode_command(args, &mut b);
        return io.out.push(b.freeze());
    }
    b.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        if a.len() >= BIG_ARG {
            io.out.push(b.split().freeze());
            io.out.push(a.clone());
        } else {
            b.extend_from_slice(a);
        }
        b.extend_from_slice(b"\r\n");
    }
    io.out.push(b.freeze());
}

/// `-<text>\r\n` for an error value.
fn encode_error_line(v: &Value) -> Bytes {
    let mut b = BytesMut::new();
    encode(v, Protocol::Resp2, &mut b);
    b.freeze()
}

/// The worker's clock, for paths that have no `now` at hand.
fn ctx_now(ctx: &WorkerCtx) -> Instant {
    ctx.clock.now()
}

impl RUp {
    /// The connection is done: everything it owed fails, its clients are told.
    fn fail_all(&mut self, ctx: &WorkerCtx, now: Instant) {
        self.fail_parked(ctx, now);
        let sh = self.shared.clone();
        sh.stats.upstreams[self.idx].failures.fetch_add(1, Relaxed);
        let me = Some(self.io.me());
        let mut owners: Vec<Owner> = Vec::new();
        for (owner, id, ..) in self.queue.drain(..) {
            if let Some(id) = id {
                post(ctx, owner, RKind::Reply(id, lost()));
            }
            if !owners.contains(&owner) {
                owners.push(owner);
            }
        }
        if !self.entries.is_empty() {
            let mut w = sh.worker(ctx.index);
            for e in self.entries.drain(..) {
                if let Some(p) = e.permit {
                    w.report(
                        self.idx,
                        p,
                        e.count as usize,
                        Outcome::Failure,
                        now,
                        &sh.stats,
                    );
                }
                match e.what {
                    What::Raw { seq, left, .. } => {
                        post(ctx, e.owner, RKind::RawLost { seq, n: left });
                    }
                    What::One(Some(id)) => post(ctx, e.owner, RKind::Reply(id, lost())),
                    What::Part(id) => post(ctx, e.owner, RKind::Part(id, self.idx, lost())),
                    What::One(None) | What::Hello => {}
                }
                if e.owner != NOBODY && !owners.contains(&e.owner) {
                    owners.push(e.owner);
                }
            }
        }
        if let Some(o) = self.owner {
            if !owners.contains(&o) {
                owners.push(o);
            }
        }
        // Clients waiting for this connection to come up, too.
        if let Some(s) = self.slot {
            let mut w = sh.worker(ctx.index);
            match std::mem::replace(&mut w.slots[self.idx][s], Slot::Empty) {
                Slot::Ready(to) if to != self.io.me() => {
                    w.slots[self.idx][s] = Slot::Ready(to);
                }
                Slot::Connecting(waiters) => owners.extend(waiters),
                _ => {}
            }
        }
        for o in owners {
            post(
                ctx,
                o,
                RKind::Lost {
                    up: self.idx,
                    conn: me,
                },
            );
        }
        self.done = true;
    }

    /// A client's work arrived.
    fn accept(&mut self, ctx: &WorkerCtx, owner: Owner, unit: Unit, now: Instant) {
        if self.done || (self.slot.is_none() && matches!(unit.work, Work::Raw { .. })) {
            return fail_unit(ctx, &self.shared, owner, unit, Some(self.io.me()), now);
        }
        if self.auth.waiting() {
            return self.auth.park(owner, unit);
        }
        self.shared.stats.upstreams[self.idx]
            .requests
            .fetch_add(u64::from(unit.count), Relaxed);
        if self.slot.is_some() {
            let mut again = None;
            let what = match unit.work {
                Work::Raw { seq, bytes } => {
                    self.io.out.push(bytes.clone());
                    What::Raw {
                        seq,
                        left: unit.count,
                        bytes,
                    }
                }
                Work::Cmd { id, args } => {
                    push_command(&mut self.io, &args);
                    if id.is_some() {
                        again = Some(Box::new(args));
                    }
                    What::One(id)
                }
                Work::Part { id, args } => {
                    push_command(&mut self.io, &args);
                    What::Part(id)
                }
            };
            self.entries.push_back(Entry {
                owner,
                what,
                permit: unit.permit,
                count: unit.count,
                sent: now,
                args: again,
                tried: unit.tried,
            });
            return;
        }
        let (id, args) = match unit.work {
            Work::Cmd { id, args } => (id, args),
            Work::Part { id, .. } => {
                // Split commands use shared connections only.
                return post(ctx, owner, RKind::Part(id, self.idx, lost()));
            }
            Work::Raw { .. } => return,
        };
        // Replies are timed from the connection's clock: bring it to now.
        self.conn.handle_timeout(now);
        match self.conn.send_command(now, &args) {
            Ok(_) => self.queue.push_back((owner, id, now, block_time(&args))),
            Err(_) => match id {
                Some(id) => post(ctx, owner, RKind::Reply(id, lost())),
                None => post(ctx, owner, RKind::Ack),
            },
        }
        while let Some(b) = self.conn.poll_transmit() {
            self.io.out.push(b);
        }
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if !self.io.is_connected() || self.done {
            return;
        }
        if self.auth.waiting() && !self.auth_reply(ctx, now) {
            self.partial = !self.io.input.is_empty();
            return;
        }
        if self.slot.is_some() {
            self.process_shared(ctx, now);
        } else {
            self.process_dedicated(ctx, now);
        }
        // What is left is an incomplete reply (the parsers take every complete one).
        self.partial = !self.io.input.is_empty();
    }

    fn process_dedicated(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if !self.io.input.is_empty() {
            let _ = self.conn.handle_input(now, &mut self.io.input);
        }
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                CEvent::Reply { value, .. } => {
                    self.last_reply = now;
                    match self.queue.pop_front() {
                        Some((owner, Some(id), ..)) => post(ctx, owner, RKind::Reply(id, value)),
                        Some((owner, None, ..)) if owner != NOBODY => post(ctx, owner, RKind::Ack),
                        _ => {}
                    }
                }
                CEvent::Push(v) => {
                    if let Some(o) = self.owner {
                        post(ctx, o, RKind::Push(v));
                    }
                }
                CEvent::Error(_) => {
                    self.fail_all(ctx, now);
                    break;
                }
                _ => {}
            }
        }
        while let Some(b) = self.conn.poll_transmit() {
            self.io.out.push(b);
        }
    }

    /// Replies on a shared connection: runs of fast-path replies go back as slices of the
    /// input (re-encoded only if the upstream refused the client's protocol).
    fn process_shared(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let sh = self.shared.clone();
        let mut done: SmallVec<[(Permit, u32); 8]> = SmallVec::new();
        let mut broken = false;
        while !self.io.input.is_empty() {
            // The front reply is measured resumably: a large one arriving over many reads
            // is scanned once (the front only changes after it was measured whole).
            let len = match reply_len_resume(&self.io.input, &sh.measure, &mut self.progress) {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            };
            if self.io.input[0] == b'>' {
                // An out-of-band push on a shared connection belongs to nobody.
                let _ = self.io.input.split_to(len);
                continue;
            }
            if is_loading(&self.io.input[..len]) {
                match self.loading(ctx, len, now) {
                    Loading::No => {}
                    Loading::Wait => break,
                    Loading::Done => continue,
                }
            }
            let Some(front) = self.entries.front_mut() else {
                broken = true; // a reply nobody asked for
                break;
            };
            let owner = front.owner;
            let finished = match &mut front.what {
                What::Raw { seq, left, .. } => {
                    let mut total = len;
                    let mut k = 1u32;
                    while k < *left {
                        match reply_len(&self.io.input[total..], &sh.measure) {
                            // (A `-LOADING` starts a run of its own: see `loading`.)
                            Ok(Some(l))
                                if self.io.input[total] != b'>'
                                    && !is_loading(&self.io.input[total..total + l]) =>
                            {
                                total += l;
                                k += 1;
                            }
                            _ => break,
                        }
                    }
                    let bytes = take_replies(&mut self.io.input, total, self.proto, self.want);
                    post(
                        ctx,
                        owner,
                        RKind::RawReply {
                            seq: *seq,
                            bytes,
                            n: k,
                        },
                    );
                    *left -= k;
                    *left == 0
                }
                What::One(id) => {
                    let id = *id;
                    // Measured whole already: a reply too deep to parse fails alone.
                    let frame = self.io.input.split_to(len).freeze();
                    let v = match ferry_resp::parse::parse_with(&frame, &sh.limits) {
                        Ok(Some((v, _))) => v,
                        _ => Value::Error(Bytes::from_static(
                            b"ERR ferry proxy: reply nested too deeply",
                        )),
                    };
                    if let Some(id) = id {
                        post(ctx, owner, RKind::Reply(id, v));
                    }
                    true
                }
                What::Part(id) => {
                    let id = *id;
                    let frame = self.io.input.split_to(len).freeze();
                    let v = part_value(&frame, &sh.limits);
                    post(ctx, owner, RKind::Part(id, self.idx, v));
                    true
                }
                What::Hello => {
                    match parse_buf(&mut self.io.input, &sh.limits) {
                        Ok(Some(v)) if !v.is_error() => self.proto = Protocol::Resp3,
                        Ok(Some(_)) => {}
                        _ => {
                            broken = true;
                            break;
                        }
                    }
                    true
                }
            };
            if finished {
                if let Some(e) = self.entries.pop_front() {
                    if let Some(p) = e.permit {
                        done.push((p, e.count));
                    }
                }
            }
        }
        if !done.is_empty() {
            let mut w = sh.worker(ctx.index);
            for (p, count) in done {
                w.report(
                    self.idx,
                    p,
                    count as usize,
                    Outcome::Success,
                    now,
                    &sh.stats,
                );
            }
        }
        if broken {
            self.fail_all(ctx, now);
        }
    }

    /// A `-LOADING` reply (of `len` bytes, at the front of the input) on a shared
    /// connection. Redis answers `-LOADING …` without running the command while it loads
    /// its data (after a restart, during `DEBUG RELOAD`, on a replica during a full resync):
    /// the upstream is not ready. Like a connect failure this counts against its breaker,
    /// and the work goes back to its client to be sent to another upstream
    /// ([`RDown::retry`]): a single command, or what is left of a fast-path chunk (its
    /// earlier replies went to the client already) once all its replies are in, when the
    /// others among them answer commands safe to run again ([`replayable`]: `ECHO`, `INFO`,
    /// … which Redis serves while loading). Otherwise (loading ended mid-chunk and
    /// commands behind the run did run) the run of `-LOADING` replies is passed on as it
    /// is: moving it would reorder what ran. So are the replies to our own commands and to
    /// parts of split commands (merged by upstream).
    #[cold]
    #[inline(never)]
    fn loading(&mut self, ctx: &WorkerCtx, len: usize, now: Instant) -> Loading {
        let Some(front) = self.entries.front_mut() else {
            return Loading::No;
        };
        let sh = self.shared.clone();
        let count = front.count;
        let total = match &mut front.what {
            What::Raw { seq, left, bytes } => {
                // The commands of the replies still owed, from the first.
                let mut pos = skip_commands(bytes, count - *left);
                pos += skip_commands(&bytes[pos..], 1);
                // Where the first run of `-LOADING` replies ends, if something else
                // follows; whether every other reply answered a command safe to run again.
                let (mut total, mut k) = (len, 1u32);
                let mut run = None;
                let mut replay = true;
                while k < *left {
                    let l = match reply_len(&self.io.input[total..], &sh.measure) {
                        Ok(Some(l)) if self.io.input[total] != b'>' => l,
                        Ok(None) => return Loading::Wait,
                        _ => {
                            run.get_or_insert((total, k));
                            replay = false;
                            break;
                        }
                    };
                    if !is_loading(&self.io.input[total..total + l]) {
                        run.get_or_insert((total, k));
                        replay = replay && replayable(&bytes[pos..]);
                    }
                    pos += skip_commands(&bytes[pos..], 1);
                    total += l;
                    k += 1;
                }
                match run {
                    Some((total, k)) if !replay => {
                        // This run goes to the client as it is.
                        let bytes = take_replies(&mut self.io.input, total, self.proto, self.want);
                        post(
                            ctx,
                            front.owner,
                            RKind::RawReply {
                                seq: *seq,
                                bytes,
                                n: k,
                            },
                        );
                        *left -= k;
                        return Loading::Done;
                    }
                    _ => total,
                }
            }
            What::One(Some(_)) if front.args.is_some() => len,
            _ => return Loading::No,
        };
        let reply = self.io.input.split_to(total).freeze();
        let reply = if self.proto == self.want {
            reply
        } else {
            reencode(&reply, self.want)
        };
        let e = self.entries.pop_front().expect("front");
        sh.stats.upstreams[self.idx].failures.fetch_add(1, Relaxed);
        if let Some(p) = e.permit {
            let mut w = sh.worker(ctx.index);
            w.report(
                self.idx,
                p,
                e.count as usize,
                Outcome::Failure,
                now,
                &sh.stats,
            );
        }
        let mut tried = e.tried;
        tried.add(self.idx);
        let (count, work) = match (e.what, e.args) {
            (What::Raw { seq, left, bytes }, _) => {
                // The commands answered already stay answered.
                let pos = skip_commands(&bytes, e.count - left);
                let bytes = bytes.slice(pos..);
                (left, Work::Raw { seq, bytes })
            }
            (What::One(id), Some(args)) => (1, Work::Cmd { id, args: *args }),
            _ => return Loading::Done,
        };
        let unit = Unit {
            up: self.idx,
            permit: None,
            count,
            tried,
            work,
        };
        post(ctx, e.owner, RKind::Retry { unit, reply });
        Loading::Done
    }

    fn reply_deadline(&self) -> Option<Instant> {
        if let Some(d) = self.auth.deadline(self.shared.tun.response_timeout()) {
            return Some(d);
        }
        if self.slot.is_some() {
            let t = self.shared.tun.response_timeout();
            self.entries.front().map(|e| e.sent + t)
        } else {
            // `--response-timeout` holds here too, after the time a blocking command may
            // wait (a hung upstream must not hold `BLPOP q 1` for longer than that).
            let t = self.shared.tun.response_timeout();
            match self.queue.front() {
                Some(&(_, _, sent, Some(block))) => {
                    Some(sent.max(self.last_reply) + block.saturating_add(t))
                }
                _ => None,
            }
        }
    }
}

/// The reply to a part of a split command (measured whole already).
#[cold]
fn part_value(frame: &Bytes, limits: &Limits) -> Value {
    match ferry_resp::parse::parse_with(frame, limits) {
        Ok(Some((v, _))) => v,
        _ => Value::Error(Bytes::from_static(
            b"ERR ferry proxy: reply nested too deeply",
        )),
    }
}

/// Re-encode `n` complete frames for protocol `to`.
/// The first `total` bytes of `input` (whole replies in protocol `from`), in protocol `to`.
fn take_replies(input: &mut BytesMut, total: usize, from: Protocol, to: Protocol) -> Bytes {
    let bytes = input.split_to(total).freeze();
    if from == to {
        bytes
    } else {
        reencode(&bytes, to)
    }
}

fn reencode(frames: &Bytes, to: Protocol) -> Bytes {
    let mut out = BytesMut::with_capacity(frames.len());
    let mut rest = frames.clone();
    while !rest.is_empty() {
        match ferry_resp::parse(&rest) {
            Ok(Some((v, used))) => {
                encode(&v, to, &mut out);
                let _ = rest.split_to(used);
            }
            _ => break,
        }
    }
    out.freeze()
}

/// What [`RUp::loading`] made of a reply.
enum Loading {
    /// Not a `-LOADING` to retry: handle it as usual.
    No,
    /// Wait for more of the chunk's replies.
    Wait,
    /// Taken off the input: sent back to be retried, or passed on.
    Done,
}

/// Queue retried work: ahead of all work not sent yet, behind the retries of work sent
/// before it (two retries that go down one connection keep their order; the client's
/// replies are put in order anyway).
fn hold_retry(held: &mut VecDeque<Unit>, unit: Unit) {
    let at = held
        .iter()
        .position(|h| h.tried.is_empty() || !sent_before(h, &unit))
        .unwrap_or(held.len());
    held.insert(at, unit);
}

/// Whether work `a` went to its upstream before work `b` (fast-path chunks by sequence
/// number, slow-path commands by id; the two are never in flight together).
fn sent_before(a: &Unit, b: &Unit) -> bool {
    match (&a.work, &b.work) {
        (Work::Raw { seq: x, .. }, Work::Raw { seq: y, .. }) => x < y,
        (Work::Cmd { id: Some(x), .. }, Work::Cmd { id: Some(y), .. }) => x < y,
        _ => false,
    }
}

/// The length of the first `n` commands of a fast-path chunk.
fn skip_commands(chunk: &[u8], n: u32) -> usize {
    let mut pos = 0;
    for _ in 0..n {
        match scan(&chunk[pos..], u64::MAX, usize::MAX) {
            Scan::Complete { len, .. } => pos += len,
            _ => break,
        }
    }
    pos
}

/// Whether the command at the start of `chunk` may run again when what follows it in its
/// chunk is retried elsewhere after `-LOADING` ([`RUp::loading`]): it only reads, and
/// Redis answers it while loading (`ECHO`, `INFO`, …) or it does not change anything.
fn replayable(chunk: &[u8]) -> bool {
    const NAMES: [&[u8]; 7] = [
        b"echo",
        b"ping",
        b"info",
        b"time",
        b"lastsave",
        b"role",
        b"command",
    ];
    match scan(chunk, u64::MAX, usize::MAX) {
        Scan::Complete { name: (a, z), .. } => {
            NAMES.iter().any(|n| chunk[a..z].eq_ignore_ascii_case(n))
        }
        _ => false,
    }
}

/// Whether `reply` is Redis's `-LOADING …` error.
#[inline]
fn is_loading(reply: &[u8]) -> bool {
    reply.first() == Some(&b'-') && reply.starts_with(b"-LOADING ")
}

fn post(ctx: &WorkerCtx, to: Owner, kind: RKind) {
    let _ = to.post(ctx, RMail(kind));
}

/// Work that cannot be sent: its client gets errors, the breaker a failure.
fn fail_unit(
    ctx: &WorkerCtx,
    shared: &RedisShared,
    owner: Owner,
    unit: Unit,
    conn: Option<Owner>,
    now: Instant,
) {
    report_units(ctx, shared, [&unit], Outcome::Failure, now);
    match unit.work {
        Work::Raw { seq, .. } => post(ctx, owner, RKind::RawLost { seq, n: unit.count }),
        Work::Cmd { id: Some(id), .. } => post(ctx, owner, RKind::Reply(id, lost())),
        Work::Cmd { id: None, .. } => {}
        Work::Part { id, .. } => post(ctx, owner, RKind::Part(id, unit.up, lost())),
    }
    let up = if unit.up == DEDICATED {
        // Only the client knows which upstream its dedicated connection went to.
        None
    } else {
        Some(unit.up)
    };
    match up {
        Some(up) => post(ctx, owner, RKind::Lost { up, conn }),
        None => post(
            ctx,
            owner,
            RKind::Lost {
                up: DEDICATED,
                conn,
            },
        ),
    }
}

impl Half for RDown {
    type Shared = RedisShared;
    type Mail = RMail;

    ferry_driver::half_io!();
    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        RDown::wants_read(self, ctx)
    }
    fn is_finished(&self) -> bool {
        self.conn.is_closed() && self.io.out.is_empty() && self.raw_left == 0
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }
    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        RDown::process(self, ctx, now)
    }
    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        RDown::process(self, ctx, now)
    }
    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.conn.handle_timeout(now);
        RDown::process(self, ctx, now);
    }
    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.conn.close();
        RDown::process(self, ctx, now);
    }
    fn on_mail(&mut self, ctx: &mut WorkerCtx, mail: RMail, now: Instant) {
        self.apply(ctx, mail.0, now);
    }
    fn close(self, ctx: &mut WorkerCtx) {
        self.shared.stats.downstream_open.fetch_sub(1, Relaxed);
        report_units(
            ctx,
            &self.shared,
            &self.held,
            Outcome::Ignored,
            ctx_now(ctx),
        );
        if let (Route::Dedicated(_), Some(o)) = (self.route, self.ded) {
            post(ctx, o, RKind::Release);
        }
    }
}

impl Downstream for RDown {
    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<RedisShared>,
        mut io: Io,
        now: Instant,
    ) -> Option<Self> {
        if shared.cfg.tls.is_some() {
            // TLS from the first byte, as redis-server's `tls-port`, with the loaded
            // configuration's certificate (a reload rotates it for new connections).
            let snap = shared.live.snapshot();
            io.start_tls(ferry_tls::Tls::server(snap.cfg.tls.as_ref()?).ok()?);
        }
        shared.stats.downstream_open.fetch_add(1, Relaxed);
        let _ = ctx;
        Some(RDown {
            io,
            shared: shared.clone(),
            conn: ServerConnection::new(shared.server.clone(), now),
            sin: BytesMut::new(),
            eof_done: false,
            errored: false,
            feed: Feed::default(),
            route: Route::None,
            ups: vec![Att::Idle; shared.cfg.upstreams.len()],
            ded: None,
            held: VecDeque::new(),
            in_flight: 0,
            raw: VecDeque::new(),
            raw_base: 0,
            raw_left: 0,
            want_dedicated: None,
            name: None,
            blocking: None,
            unacked: 0,
            ded_answered: false,
            locked: shared.cfg.redis_client_auth.is_some(),
            ded_state: false,
            splits: Vec::new(),
            tx: Tx::default(),
        })
    }

    /// Mail for a connection that is gone: a dedicated upstream attached to a vanished
    /// client is released; work for a vanished upstream fails (its client is told).
    fn drop_mail(ctx: &mut WorkerCtx, shared: &RedisShared, mail: RMail) {
        let now = ctx_now(ctx);
        match mail.0 {
            RKind::Attached { slot, conn, .. } if slot >= 0xFE => post(ctx, conn, RKind::Release),
            RKind::Send { owner, unit } => fail_unit(ctx, shared, owner, unit, None, now),
            _ => {}
        }
    }
}

impl Half for RUp {
    type Shared = RedisShared;
    type Mail = RMail;

    ferry_driver::half_io!();
    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        // A reply larger than the high-water mark is read whole (replies are not streamed).
        !self.done && (self.io.input.len() < ctx.options.input_high_water || self.partial)
    }
    fn is_finished(&self) -> bool {
        self.done && self.io.out.is_empty()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            None
        } else {
            self.reply_deadline()
        }
    }
    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        RUp::process(self, ctx, now)
    }
    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        RUp::process(self, ctx, now);
        if !self.done {
            self.fail_all(ctx, now);
        }
    }
    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.done {
            return;
        }
        if self.reply_deadline().is_some_and(|d| now >= d) {
            tracing::debug!(
                "redis upstream {}: reply timeout",
                self.shared.stats.upstreams[self.idx].addr
            );
            self.fail_all(ctx, now);
        }
    }
    fn begin_shutdown(&mut self, _ctx: &mut WorkerCtx, _now: Instant) {
        if self.queue.is_empty() && self.entries.is_empty() && !self.auth.has_parked() {
            self.done = true;
        }
    }
    fn on_mail(&mut self, ctx: &mut WorkerCtx, mail: RMail, now: Instant) {
        match mail.0 {
            RKind::Send { owner, unit } => self.accept(ctx, owner, unit, now),
            RKind::Release if self.owner.is_some() => {
                self.owner = None;
                self.done = true;
            }
            RKind::HangUp if !self.done && !self.hung_up => {
                // Redis answers what it read before the EOF, then frees the client (which
                // unblocks it); we forward those replies, then fail what is left on its EOF.
                self.hung_up = true;
                self.io.shutdown_write();
            }
            _ => {}
        }
    }
    fn close(mut self, ctx: &mut WorkerCtx) {
        if let Some(e) = self.io.tls().and_then(|t| t.error()) {
            tracing::warn!(
                "redis upstream {}: TLS failed: {e}",
                self.shared.stats.upstreams[self.idx].addr
            );
        }
        if !self.done || !self.queue.is_empty() || !self.entries.is_empty() {
            self.fail_all(ctx, ctx_now(ctx));
        } else if let Some(s) = self.slot {
            let sh = self.shared.clone();
            let mut w = sh.worker(ctx.index);
            if let Slot::Ready(to) = w.slots[self.idx][s] {
                if to == self.io.me() {
                    w.slots[self.idx][s] = Slot::Empty;
                }
            }
        }
        self.shared.stats.upstreams[self.idx]
            .open
            .fetch_sub(1, Relaxed);
    }
}

impl Upstream for RUp {
    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<RedisShared>,
        mut io: Io,
        tag: u64,
        now: Instant,
    ) -> Option<Self> {
        // upstream (8 bits) | owner token (24) | owner generation (24) | slot (8)
        let idx = (tag >> 56) as usize;
        let owner = Peer {
            token: ((tag >> 32) & 0xFF_FFFF) as usize,
            gen: ((tag >> 8) & 0xFF_FFFF) as u32,
        };
        let slot = (tag & 0xFF) as usize;
        let n = shared.slots_per_protocol();
        let resp3 = slot == 0xFE || (slot < 0xFE && slot >= n);
        if let Some(t) = &shared.cfg.upstream_tls {
            // TLS from the first byte (redis-server's `tls-port`), started before anything
            // is queued (AUTH, HELLO, clients' commands: all held until the handshake ends).
            let name = t.name_for(&shared.stats.upstreams.get(idx)?.upstream);
            io.start_tls(ferry_tls::Tls::client(&t.config, &name).ok()?);
        }
        shared.stats.upstreams.get(idx)?.open.fetch_add(1, Relaxed);
        let me = io.me();
        let (slot_of, owner) = if slot >= 0xFE {
            post(
                ctx,
                owner,
                RKind::Attached {
                    up: idx,
                    slot,
                    conn: me,
                },
            );
            (None, Some(owner))
        } else {
            let mut w = shared.worker(ctx.index);
            let waiters = match std::mem::replace(&mut w.slots[idx][slot], Slot::Ready(me)) {
                Slot::Connecting(v) => v,
                _ => Vec::new(),
            };
            for o in waiters {
                post(
                    ctx,
                    o,
                    RKind::Attached {
                        up: idx,
                        slot,
                        conn: me,
                    },
                );
            }
            (Some(slot), None)
        };
        // The proxy's AUTH goes first, before our HELLO and any client's command.
        let auth = auth::UpAuth::start(shared.cfg.redis_upstream_auth.as_ref(), &mut io, now);
        let mut conn = ClientConnection::new(shared.dedicated.clone(), now);
        let mut queue = VecDeque::new();
        let mut entries = VecDeque::new();
        let want = if resp3 {
            Protocol::Resp3
        } else {
            Protocol::Resp2
        };
        if resp3 {
            if slot_of.is_some() {
                let mut b = BytesMut::new();
                encode_command(&["HELLO", "3"], &mut b);
                io.out.push(b.freeze());
                entries.push_back(Entry {
                    owner: NOBODY,
                    what: What::Hello,
                    permit: None,
                    count: 0,
                    sent: now,
                    args: None,
                    tried: Tried::NONE,
                });
            } else if conn.hello(now, Some(Protocol::Resp3), None, None).is_ok() {
                queue.push_back((NOBODY, None, now, Some(Duration::ZERO)));
                while let Some(b) = conn.poll_transmit() {
                    io.out.push(b);
                }
            }
        }
        io.set_connect_deadline(Some(now + shared.tun.connect_timeout()));
        Some(RUp {
            io,
            idx,
            slot: slot_of,
            owner,
            shared: shared.clone(),
            conn,
            queue,
            last_reply: now,
            entries,
            proto: Protocol::Resp2,
            want,
            partial: false,
            progress: Progress::default(),
            done: false,
            hung_up: false,
            auth,
        })
    }

    fn connect_failed(&mut self, ctx: &mut WorkerCtx, error: std::io::Error, now: Instant) {
        tracing::debug!(
            "redis upstream {} connect failed: {error}",
            self.shared.stats.upstreams[self.idx].addr
        );
        if !self.done {
            self.fail_all(ctx, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retried work goes ahead of work not sent yet and in the order it was first sent
    /// (a later retry used to jump ahead of an earlier one still waiting for its
    /// connection, and ran first).
    #[test]
    fn retries_keep_their_order() {
        let raw = |seq: u64, retry: bool| {
            let mut tried = Tried::default();
            if retry {
                tried.add(0);
            }
            Unit {
                up: 1,
                permit: None,
                count: 1,
                tried,
                work: Work::Raw {
                    seq,
                    bytes: Bytes::from_static(b"PING\r\n"),
                },
            }
        };
        let mut held = VecDeque::new();
        held.push_back(raw(7, false));
        hold_retry(&mut held, raw(3, true));
        hold_retry(&mut held, raw(5, true));
        hold_retry(&mut held, raw(1, true));
        let order: Vec<u64> = held
            .iter()
            .map(|u| match u.work {
                Work::Raw { seq, .. } => seq,
                _ => u64::MAX,
            })
            .collect();
        assert_eq!(order, [1, 3, 5, 7]);
    }

    /// More than 64 upstreams: a pick skips exactly the upstreams it is told to (the skip
    /// set was a 64-bit mask indexed modulo 64: skipping upstream 1 skipped 65 too, and
    /// with the first 64 tried nothing was left).
    #[test]
    fn picks_over_more_than_64_upstreams() {
        let addrs: Vec<std::net::SocketAddr> = (0..70)
            .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + i)))
            .collect();
        let cfg = ProxyConfig::new(addrs);
        let stats = Arc::new(ProxyStats::new("redis", &cfg.upstreams, 1));
        let live = crate::reload::Live::new(cfg.clone(), stats.clone(), 1);
        let sh = RedisShared::new(cfg, 1, stats.clone(), live);
        let now = Instant::ZERO;
        let mut w = sh.worker(0);
        let mut skip = Tried::default();
        skip.add(1);
        let mut seen = Tried::default();
        for _ in 0..70 {
            let i = w.candidate(b"k", &stats, now, &skip).expect("an upstream");
            assert_ne!(i, 1);
            seen.add(i);
        }
        assert!(seen.has(65) && seen.has(69), "{seen:?}");
        assert_eq!(seen.len(), 69);
        // Every one but the last tried: the last is the one left (and taken).
        let mut tried = Tried::default();
        (0..69).for_each(|i| tried.add(i));
        for _ in 0..3 {
            let (i, p) = w.pick(b"k", 1, &stats, now, &tried).expect("the last");
            assert_eq!(i, 69);
            w.report(i, p, 1, Outcome::Success, now, &stats);
        }
        tried.add(69);
        assert!(w.pick(b"k", 1, &stats, now, &tried).is_none());
    }

    #[test]
    fn stateful_commands_go_dedicated() {
        let a = |v: &[&str]| {
            v.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect::<Vec<_>>()
        };
        assert!(needs_dedicated(&a(&["MULTI"])));
        assert!(needs_dedicated(&a(&["blpop", "q", "0"])));
        assert!(needs_dedicated(&a(&[
            "XREAD", "BLOCK", "0", "STREAMS", "s", "$"
        ])));
        assert!(!needs_dedicated(&a(&["XREAD", "STREAMS", "s", "0"])));
        assert!(!needs_dedicated(&a(&["GET", "k"])));
        assert!(!needs_dedicated(&a(&["hello", "3"])));
        assert!(needs_dedicated(&a(&["hello", "3", "AUTH", "u", "p"])));
    }

    #[test]
    fn blocking_and_refused_commands() {
        let a = |v: &[&str]| {
            v.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect::<Vec<_>>()
        };
        for c in [
            &["BLPOP", "q", "0"][..],
            &["bzpopmin", "z", "1"],
            &["WAIT", "1", "0"],
            &[
                "xreadgroup",
                "GROUP",
                "g",
                "c",
                "block",
                "0",
                "STREAMS",
                "s",
                ">",
            ],
        ] {
            assert!(is_blocking(&a(c)), "{c:?}");
            assert!(needs_dedicated(&a(c)), "{c:?}");
        }
        for c in [
            &["LPOP", "q"][..],
            &["XREAD", "STREAMS", "s", "0"],
            &["MULTI"],
        ] {
            assert!(!is_blocking(&a(c)), "{c:?}");
        }
        let secs = |s: f64| Some(Duration::from_secs_f64(s));
        assert_eq!(block_time(&a(&["GET", "k"])), Some(Duration::ZERO));
        assert_eq!(block_time(&a(&["BLPOP", "a", "b", "0.5"])), secs(0.5));
        assert_eq!(block_time(&a(&["blpop", "a", "0"])), None);
        assert_eq!(
            block_time(&a(&["BLMOVE", "a", "b", "LEFT", "RIGHT", "2"])),
            secs(2.0)
        );
        assert_eq!(
            block_time(&a(&["BLMPOP", "3", "1", "a", "LEFT"])),
            secs(3.0)
        );
        assert_eq!(block_time(&a(&["WAIT", "1", "250"])), secs(0.25));
        assert_eq!(block_time(&a(&["WAIT", "1", "0"])), None);
        assert_eq!(
            block_time(&a(&[
                "XREAD", "COUNT", "1", "BLOCK", "1500", "STREAMS", "s", "$"
            ])),
            secs(1.5)
        );
        // Redis rejects these at once.
        // Longer than a Duration holds: no deadline (as for 0).
        assert_eq!(block_time(&a(&["BLPOP", "a", "1e300"])), None);
        assert_eq!(block_time(&a(&["BLPOP", "a", "-1"])), Some(Duration::ZERO));
        assert_eq!(
            block_time(&a(&["BLPOP", "a", "soon"])),
            Some(Duration::ZERO)
        );
        assert_eq!(unsupported(&a(&["monitor"])), Some("MONITOR"));
        assert!(unsupported(&a(&["CLIENT", "reply", "Off"])).is_some());
        assert!(unsupported(&a(&["client", "REPLY", "skip"])).is_some());
        assert_eq!(unsupported(&a(&["CLIENT", "REPLY", "ON"])), None);
        assert_eq!(unsupported(&a(&["CLIENT", "REPLY"])), None);
        assert_eq!(unsupported(&a(&["GET", "monitor"])), None);
        assert!(unsupported(&a(&["psync", "?", "-1"])).is_some());
    }

    #[test]
    fn fast_path_leaves_special_commands_alone() {
        for n in ["GET", "set", "incr", "PING", "mget", "eval"] {
            assert!(!is_slow(n.as_bytes()), "{n}");
        }
        for n in [
            "HELLO",
            "client",
            "MULTI",
            "subscribe",
            "QUIT",
            "reset",
            "xread",
            "Select",
        ] {
            assert!(is_slow(n.as_bytes()), "{n}");
        }
        // The match in `is_slow` lists exactly the two arrays' names.
        for n in DEDICATED_NAMES
            .iter()
            .chain(&BLOCKING_NAMES)
            .chain(&SLOW_NAMES)
        {
            assert!(is_slow(n.as_bytes()), "{n}");
            assert!(is_slow(n.to_ascii_uppercase().as_bytes()), "{n}");
            let mut longer = n.to_string();
            longer.push('x');
            assert!(!is_slow(longer.as_bytes()), "{longer}");
            let shorter = &n[..n.len() - 1];
            let listed = DEDICATED_NAMES
                .iter()
                .chain(&BLOCKING_NAMES)
                .chain(&SLOW_NAMES)
                .any(|m| *m == shorter);
            assert_eq!(is_slow(shorter.as_bytes()), listed, "{shorter}");
        }
        // redis-benchmark's default tests all take the fast path.
        for n in [
            "PING", "SET", "GET", "INCR", "LPUSH", "RPUSH", "LPOP", "RPOP", "SADD", "HSET", "SPOP",
            "ZADD", "ZPOPMIN", "LRANGE", "MSET", "XADD",
        ] {
            assert!(!is_slow(n.as_bytes()), "{n}");
        }
    }
}
