//! The Redis pooling proxy as one [`Session`] type run inline on the I/O workers.
//!
//! - Each client connection ([`RedisProxy::Down`], a `ferry_resp::ServerConnection`) is bound
//!   on its first command to one upstream (round robin over healthy upstreams) and to one of
//!   that worker's few **shared** upstream connections ([`ProxyConfig::redis_connections`]
//!   per upstream per worker, [`RedisProxy::Up`], a `ferry_resp::ClientConnection`). Commands
//!   of many clients are pipelined over it; a correlation queue on the upstream connection
//!   matches each reply (in order) to its client and command id, and the client's
//!   `ServerConnection` puts replies back in that client's command order.
//! - Commands that carry connection state or block the connection (`SUBSCRIBE` and friends,
//!   `MULTI`/`WATCH`, `BLPOP`-style blocking commands, `SELECT`, `AUTH`, `CLIENT`, `MONITOR`,
//!   `HELLO` with options, …) move the client to a **dedicated** upstream connection for the
//!   rest of its life, after its replies from the shared one are in (so order holds). Pub/sub
//!   messages come back on it and are delivered with `send_message` and friends.
//! - An upstream connection that breaks answers every command it owed with
//!   `-ERR ferry proxy: upstream connection lost`; clients are re-bound on their next command.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use ferry_driver::metrics::add;
use ferry_driver::{ConnInfo, OutQueue, Session, WorkerCtx};
use ferry_proto::{Connection, Instant};
use ferry_resp::client::Event as CEvent;
use ferry_resp::server::Event as SEvent;
use ferry_resp::{
    ClientConfig, ClientConnection, CommandId, Protocol, ServerConfig, ServerConnection, SubKind,
    Value,
};

use crate::config::ProxyConfig;
use crate::metrics::ProxyStats;

/// Most commands a client may have in flight before the proxy stops reading from it.
const MAX_IN_FLIGHT: usize = 4096;

/// State shared by every worker of a Redis proxy.
pub struct RedisShared {
    cfg: ProxyConfig,
    /// Shared connections: a reply must come within `response_timeout`.
    client: Arc<ClientConfig>,
    /// Dedicated connections: no reply timeout (blocking commands, subscriptions).
    dedicated: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    stats: Arc<ProxyStats>,
    workers: Vec<Mutex<RWorker>>,
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
    Connecting(Vec<(usize, u32)>),
    Ready(usize, u32),
}

/// One worker's shared upstream connections.
#[derive(Debug)]
struct RWorker {
    /// `[upstream][slot]`.
    slots: Vec<Vec<Slot>>,
    next_upstream: usize,
    next_slot: usize,
}

impl RedisShared {
    /// Shared state for `workers` I/O workers.
    pub fn new(cfg: ProxyConfig, workers: usize, stats: Arc<ProxyStats>) -> Arc<RedisShared> {
        // Slots 0..n speak RESP2 upstream, n..2n RESP3 (for RESP3 clients).
        let n = cfg.redis_connections.clamp(1, 126);
        let workers = (0..workers.max(1))
            .map(|w| {
                Mutex::new(RWorker {
                    slots: cfg
                        .upstreams
                        .iter()
                        .map(|_| vec![Slot::Empty; 2 * n])
                        .collect(),
                    next_upstream: w,
                    next_slot: 0,
                })
            })
            .collect();
        let mut shared_client = ClientConfig::default();
        shared_client.response_timeout = Some(cfg.response_timeout);
        Arc::new(RedisShared {
            cfg,
            client: Arc::new(shared_client),
            dedicated: Arc::new(ClientConfig::default()),
            server: Arc::new(ServerConfig::default()),
            stats,
            workers,
        })
    }

    fn worker(&self, i: usize) -> MutexGuard<'_, RWorker> {
        self.workers[i % self.workers.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Mail between client and upstream connections of one worker.
#[derive(Debug)]
pub struct RMail {
    gen: u32,
    kind: RKind,
}

#[derive(Debug)]
enum RKind {
    /// Client → upstream: a command (`id: None`: fire and forget, e.g. pub/sub bookkeeping).
    Cmd {
        owner: (usize, u32),
        id: Option<CommandId>,
        args: smallvec::SmallVec<[Bytes; 4]>,
    },
    /// Client → dedicated upstream: the client is gone.
    Release,
    /// Upstream → client: you may send to me.
    Attached(usize, u32),
    /// Upstream → client: I could not connect or I broke.
    Lost,
    /// Upstream → client: a reply.
    Reply(CommandId, Value),
    /// Upstream → client: a pub/sub message or other push.
    Push(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Not bound yet.
    None,
    /// A shared connection (upstream index, slot) and whether it is attached.
    Shared(usize, usize),
    /// A dedicated connection to this upstream.
    Dedicated(usize),
}

/// A client's connection.
pub struct RDown {
    token: usize,
    gen: u32,
    shared: Arc<RedisShared>,
    conn: ServerConnection,
    input: BytesMut,
    out: OutQueue,
    eof: bool,
    errored: bool,
    route: Route,
    up: Option<(usize, u32)>,
    /// Commands waiting for an upstream connection (or for the shared one to drain).
    held: VecDeque<(Option<CommandId>, smallvec::SmallVec<[Bytes; 4]>)>,
    /// Commands sent to an upstream and not answered yet.
    in_flight: usize,
    /// Waiting to move to a dedicated connection once `in_flight` is 0.
    want_dedicated: bool,
    /// `CLIENT SETNAME`, answered by the proxy.
    name: Option<Bytes>,
}

/// A connection to an upstream (shared or dedicated).
pub struct RUp {
    token: usize,
    gen: u32,
    idx: usize,
    /// `Some(slot)` for a shared connection.
    slot: Option<usize>,
    /// The client of a dedicated connection.
    owner: Option<(usize, u32)>,
    shared: Arc<RedisShared>,
    conn: ClientConnection,
    input: BytesMut,
    out: OutQueue,
    connected: bool,
    connect_deadline: Option<Instant>,
    /// Who each outstanding reply goes to, in order (`None` id: nobody waits for it).
    queue: VecDeque<((usize, u32), Option<CommandId>)>,
    done: bool,
    eof: bool,
}

/// A connection of the Redis proxy.
#[allow(clippy::large_enum_variant)]
pub enum RedisProxy {
    /// A client's connection.
    Down(RDown),
    /// A connection to an upstream.
    Up(RUp),
}

fn needs_dedicated(args: &[Bytes]) -> bool {
    let name = &args[0];
    const NAMES: [&str; 24] = [
        "multi",
        "watch",
        "unwatch",
        "exec",
        "discard",
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
    if NAMES
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
            b"tracking" | b"reply" | b"caching" | b"no-evict" | b"no-touch" | b"pause"
        );
    }
    if name.eq_ignore_ascii_case(b"xread") || name.eq_ignore_ascii_case(b"xreadgroup") {
        return args.iter().any(|a| a.eq_ignore_ascii_case(b"block"));
    }
    if name.eq_ignore_ascii_case(b"hello") {
        return args.len() > 2; // AUTH / SETNAME go to a connection of the client's own
    }
    false
}

fn lost() -> Value {
    Value::Error(Bytes::from_static(
        b"ERR ferry proxy: upstream connection lost",
    ))
}

impl RDown {
    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        !self.eof
            && !self.errored
            && self.in_flight + self.held.len() < MAX_IN_FLIGHT
            && self.out.len() < ctx.options.write_high_water
            && self.input.len() < ctx.options.input_high_water
            && self.conn.wants_read()
    }

    fn collect(&mut self) {
        while let Some(b) = self.conn.poll_transmit() {
            self.out.push(b);
        }
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        loop {
            let before = self.input.len();
            if !self.errored
                && !self.input.is_empty()
                && self.conn.handle_input(now, &mut self.input).is_err()
            {
                self.errored = true;
            }
            let mut progressed = self.input.len() != before;
            while let Some(ev) = self.conn.poll_event() {
                progressed = true;
                self.event(ctx, ev);
            }
            if self.errored {
                self.input.clear();
            }
            if !progressed || !self.wants_read(ctx) {
                break;
            }
        }
        self.flush(ctx);
        self.collect();
    }

    fn event(&mut self, ctx: &mut WorkerCtx, ev: SEvent) {
        match ev {
            SEvent::Command(cmd) => {
                add(&self.shared.stats.requests, 1);
                if cmd.is("ping") && self.conn.is_subscribed() {
                    let arg = cmd.args.get(1).cloned().unwrap_or_default();
                    let _ = self.conn.send_reply(
                        cmd.id,
                        &Value::Array(vec![Value::bulk("pong"), Value::BulkString(arg)]),
                    );
                    return;
                }
                if cmd.is("hello") && cmd.args.len() <= 2 {
                    // Protocol negotiation is between the client and the proxy.
                    let proto = cmd
                        .args
                        .get(1)
                        .map_or(2, |v| if &v[..] == b"3" { 3 } else { 2 });
                    let info = Value::Map(vec![
                        (Value::bulk("server"), Value::bulk("ferry-proxy")),
                        (
                            Value::bulk("version"),
                            Value::bulk(env!("CARGO_PKG_VERSION")),
                        ),
                        (Value::bulk("proto"), Value::Integer(proto)),
                        (Value::bulk("id"), Value::Integer(self.token as i64)),
                        (Value::bulk("mode"), Value::bulk("proxy")),
                        (Value::bulk("role"), Value::bulk("master")),
                        (Value::bulk("modules"), Value::Array(Vec::new())),
                    ]);
                    let _ = self.conn.send_reply(cmd.id, &info);
                    if let Route::Dedicated(_) = self.route {
                        // Keep the client's own upstream connection in the same protocol.
                        let mut args = smallvec::SmallVec::new();
                        args.push(Bytes::from_static(b"HELLO"));
                        args.push(Bytes::from(proto.to_string()));
                        self.held.push_back((None, args));
                        self.flush(ctx);
                    }
                    return;
                }
                if cmd.is("client") && !matches!(self.route, Route::Dedicated(_)) {
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
                        b"id" => Some(Value::Integer(self.token as i64)),
                        _ => None,
                    };
                    if let Some(v) = local {
                        let _ = self.conn.send_reply(cmd.id, &v);
                        return;
                    }
                }
                if !matches!(self.route, Route::Dedicated(_)) && needs_dedicated(&cmd.args) {
                    self.want_dedicated = true;
                }
                self.held.push_back((Some(cmd.id), cmd.args));
                self.flush(ctx);
            }
            SEvent::Subscribe { kind, channels } => self.mirror_sub(ctx, kind, channels, true),
            SEvent::Unsubscribe { kind, channels } => self.mirror_sub(ctx, kind, channels, false),
            SEvent::Reset => {
                if matches!(self.route, Route::Dedicated(_)) {
                    let mut args = smallvec::SmallVec::new();
                    args.push(Bytes::from_static(b"RESET"));
                    self.held.push_back((None, args));
                    self.flush(ctx);
                }
            }
            SEvent::Error(_) => self.errored = true,
            _ => {}
        }
    }

    /// The connection answered a (un)subscription itself; mirror it on the dedicated
    /// upstream connection (whose confirmations nobody waits for).
    fn mirror_sub(&mut self, ctx: &mut WorkerCtx, kind: SubKind, channels: Vec<Bytes>, sub: bool) {
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
        let mut args = smallvec::SmallVec::new();
        args.push(Bytes::from_static(name));
        args.extend(channels);
        if !matches!(self.route, Route::Dedicated(_)) {
            self.want_dedicated = true;
        }
        self.held.push_back((None, args));
        self.flush(ctx);
    }

    /// Send held commands where they can go now; bind or re-bind as needed.
    fn flush(&mut self, ctx: &mut WorkerCtx) {
        if self.held.is_empty() {
            return;
        }
        let resp3 = self.conn.protocol() == Protocol::Resp3;
        let n = self.shared.cfg.redis_connections.clamp(1, 126);
        if let Route::Shared(_, s) = self.route {
            if (s >= n) != resp3 {
                // The client switched protocol: re-bind once its replies are in.
                if self.in_flight > 0 {
                    return;
                }
                self.route = Route::None;
                self.up = None;
            }
        }
        if self.want_dedicated && !matches!(self.route, Route::Dedicated(_)) {
            if self.in_flight > 0 {
                return; // after the shared connection answered this client's commands
            }
            self.up = None;
            let Some(i) = self.pick_upstream(ctx) else {
                return self.fail_held();
            };
            self.route = Route::Dedicated(i);
            self.want_dedicated = false;
            self.connect(ctx, i, if resp3 { 0xFE } else { 0xFF });
            return;
        }
        if self.route == Route::None {
            let Some(i) = self.pick_upstream(ctx) else {
                return self.fail_held();
            };
            let sh = self.shared.clone();
            let mut w = sh.worker(ctx.index);
            let s = w.next_slot % n + if resp3 { n } else { 0 };
            w.next_slot = w.next_slot.wrapping_add(1);
            self.route = Route::Shared(i, s);
            match &mut w.slots[i][s] {
                Slot::Ready(t, g) => self.up = Some((*t, *g)),
                Slot::Connecting(waiters) => waiters.push((self.token, self.gen)),
                slot @ Slot::Empty => {
                    *slot = Slot::Connecting(vec![(self.token, self.gen)]);
                    drop(w);
                    self.connect(ctx, i, s as u64);
                }
            }
        }
        let Some((t, g)) = self.up else { return };
        for (id, args) in self.held.drain(..) {
            if id.is_some() {
                self.in_flight += 1;
            }
            let _ = ctx.post(
                t,
                RMail {
                    gen: g,
                    kind: RKind::Cmd {
                        owner: (self.token, self.gen),
                        id,
                        args,
                    },
                },
            );
        }
    }

    fn connect(&mut self, ctx: &mut WorkerCtx, i: usize, slot: u64) {
        let sh = &self.shared;
        sh.stats.upstreams[i].connects.fetch_add(1, Relaxed);
        // upstream (8 bits) | owner token (24) | owner generation (24) | slot (8, 0xFF: dedicated)
        let tag = ((i as u64) << 56)
            | (((self.token as u64) & 0xFF_FFFF) << 32)
            | (u64::from(self.gen & 0xFF_FFFF) << 8)
            | (slot & 0xFF);
        let addr = sh.stats.upstreams[i].current();
        if !addr.is_some_and(|a| ctx.connect(a, tag)) {
            self.lost(ctx);
        }
    }

    fn pick_upstream(&mut self, ctx: &WorkerCtx) -> Option<usize> {
        let sh = &self.shared;
        let n = sh.cfg.upstreams.len();
        let mut w = sh.worker(ctx.index);
        for k in 0..n {
            let i = (w.next_upstream + k) % n;
            if sh.stats.upstreams[i].usable() {
                w.next_upstream = i + 1;
                return Some(i);
            }
        }
        None
    }

    fn fail_held(&mut self) {
        add(&self.shared.stats.answered_503, 1);
        for (id, _) in self.held.drain(..) {
            if let Some(id) = id {
                let _ = self.conn.send_reply(
                    id,
                    &Value::Error(Bytes::from_static(
                        b"ERR ferry proxy: no upstream available",
                    )),
                );
            }
        }
    }

    /// The upstream connection is gone: unbind; held commands get an error.
    fn lost(&mut self, _ctx: &mut WorkerCtx) {
        self.up = None;
        if matches!(self.route, Route::Dedicated(_)) {
            // State (transaction, subscriptions) is lost with it: the client must start over.
            self.errored = self.conn.is_subscribed();
        }
        self.route = Route::None;
        self.in_flight = 0;
        for (id, _) in self.held.drain(..) {
            if let Some(id) = id {
                let _ = self.conn.send_reply(id, &lost());
            }
        }
        if self.errored {
            self.conn.close();
        }
    }

    fn apply(&mut self, ctx: &mut WorkerCtx, kind: RKind) {
        match kind {
            RKind::Attached(t, g) => {
                if self.route != Route::None && self.up.is_none() {
                    self.up = Some((t, g));
                    self.flush(ctx);
                } else if matches!(self.route, Route::None) {
                    // A dedicated connection nobody wants any more.
                    let _ = ctx.post(
                        t,
                        RMail {
                            gen: g,
                            kind: RKind::Release,
                        },
                    );
                }
            }
            RKind::Reply(id, v) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                let _ = self.conn.send_reply(id, &v);
                if self.in_flight == 0 && self.want_dedicated {
                    self.flush(ctx);
                }
            }
            RKind::Push(v) => self.push(v),
            RKind::Lost => self.lost(ctx),
            RKind::Cmd { .. } | RKind::Release => {}
        }
        self.collect();
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

impl RUp {
    fn fail_all(&mut self, ctx: &WorkerCtx) {
        let sh = self.shared.clone();
        sh.stats.upstreams[self.idx].failures.fetch_add(1, Relaxed);
        let mut owners: Vec<(usize, u32)> = Vec::new();
        for (owner, id) in self.queue.drain(..) {
            if let Some(id) = id {
                let _ = ctx.post(
                    owner.0,
                    RMail {
                        gen: owner.1,
                        kind: RKind::Reply(id, lost()),
                    },
                );
            }
            if !owners.contains(&owner) {
                owners.push(owner);
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
                Slot::Ready(t, g) if (t, g) != (self.token, self.gen) => {
                    w.slots[self.idx][s] = Slot::Ready(t, g);
                }
                Slot::Connecting(waiters) => owners.extend(waiters),
                _ => {}
            }
        }
        for o in owners {
            let _ = ctx.post(
                o.0,
                RMail {
                    gen: o.1,
                    kind: RKind::Lost,
                },
            );
        }
        self.done = true;
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.connected && !self.done {
            if !self.input.is_empty() {
                let _ = self.conn.handle_input(now, &mut self.input);
            }
            while let Some(ev) = self.conn.poll_event() {
                match ev {
                    CEvent::Reply { value, .. } => {
                        if let Some((owner, Some(id))) = self.queue.pop_front() {
                            let _ = ctx.post(
                                owner.0,
                                RMail {
                                    gen: owner.1,
                                    kind: RKind::Reply(id, value),
                                },
                            );
                        }
                    }
                    CEvent::Push(v) => {
                        if let Some(o) = self.owner {
                            let _ = ctx.post(
                                o.0,
                                RMail {
                                    gen: o.1,
                                    kind: RKind::Push(v),
                                },
                            );
                        }
                    }
                    CEvent::Error(_) => {
                        self.fail_all(ctx);
                        break;
                    }
                    _ => {}
                }
            }
        }
        while let Some(b) = self.conn.poll_transmit() {
            self.out.push(b);
        }
    }
}

impl Session for RedisProxy {
    type Shared = RedisShared;
    type Mail = RMail;

    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<RedisShared>,
        info: ConnInfo,
        gen: u32,
        now: Instant,
    ) -> Option<Self> {
        shared.stats.downstream_open.fetch_add(1, Relaxed);
        add(&ctx.metrics.accepted, 1);
        Some(RedisProxy::Down(RDown {
            token: info.token,
            gen: gen & 0xFF_FFFF,
            shared: shared.clone(),
            conn: ServerConnection::new(shared.server.clone(), now),
            input: BytesMut::with_capacity(ctx.options.read_chunk),
            out: OutQueue::default(),
            eof: false,
            errored: false,
            route: Route::None,
            up: None,
            held: VecDeque::new(),
            in_flight: 0,
            want_dedicated: false,
            name: None,
        }))
    }

    fn open_outbound(
        ctx: &mut WorkerCtx,
        shared: &Arc<RedisShared>,
        info: ConnInfo,
        tag: u64,
        gen: u32,
        now: Instant,
    ) -> Option<Self> {
        let idx = (tag >> 56) as usize;
        let owner = (
            ((tag >> 32) & 0xFF_FFFF) as usize,
            ((tag >> 8) & 0xFF_FFFF) as u32,
        );
        let slot = (tag & 0xFF) as usize;
        let gen = gen & 0xFF_FFFF;
        let n = shared.cfg.redis_connections.clamp(1, 126);
        let resp3 = slot == 0xFE || (slot < 0xFE && slot >= n);
        shared.stats.upstreams.get(idx)?.open.fetch_add(1, Relaxed);
        let me = (info.token, gen);
        let (slot, owner) = if slot >= 0xFE {
            let _ = ctx.post(
                owner.0,
                RMail {
                    gen: owner.1,
                    kind: RKind::Attached(me.0, me.1),
                },
            );
            (None, Some(owner))
        } else {
            let mut w = shared.worker(ctx.index);
            let waiters = match std::mem::replace(&mut w.slots[idx][slot], Slot::Ready(me.0, me.1))
            {
                Slot::Connecting(v) => v,
                _ => Vec::new(),
            };
            for o in waiters {
                let _ = ctx.post(
                    o.0,
                    RMail {
                        gen: o.1,
                        kind: RKind::Attached(me.0, me.1),
                    },
                );
            }
            (Some(slot), None)
        };
        let config = if slot.is_some() {
            shared.client.clone()
        } else {
            shared.dedicated.clone()
        };
        let mut conn = ClientConnection::new(config, now);
        let mut queue = VecDeque::new();
        if resp3 && conn.hello(Some(Protocol::Resp3), None, None).is_ok() {
            queue.push_back(((usize::MAX, 0), None));
        }
        Some(RedisProxy::Up(RUp {
            token: info.token,
            gen,
            idx,
            slot,
            owner,
            shared: shared.clone(),
            conn,
            input: BytesMut::with_capacity(ctx.options.read_chunk),
            out: OutQueue::default(),
            connected: false,
            connect_deadline: Some(now + shared.cfg.connect_timeout),
            queue,
            done: false,
            eof: false,
        }))
    }

    fn on_connected(&mut self, _ctx: &mut WorkerCtx, _now: Instant) {
        if let RedisProxy::Up(u) = self {
            u.connected = true;
            u.connect_deadline = None;
        }
    }

    fn connect_failed(&mut self, ctx: &mut WorkerCtx, error: std::io::Error, _now: Instant) {
        if let RedisProxy::Up(u) = self {
            tracing::debug!(
                "redis upstream {} connect failed: {error}",
                u.shared.stats.upstreams[u.idx].addr
            );
            u.fail_all(ctx);
        }
    }

    fn input(&mut self) -> &mut BytesMut {
        match self {
            RedisProxy::Down(d) => &mut d.input,
            RedisProxy::Up(u) => &mut u.input,
        }
    }

    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        match self {
            RedisProxy::Down(d) => d.wants_read(ctx),
            RedisProxy::Up(u) => {
                u.connected && !u.done && !u.eof && u.input.len() < ctx.options.input_high_water
            }
        }
    }

    fn is_finished(&self) -> bool {
        match self {
            RedisProxy::Down(d) => d.conn.is_closed() && d.out.is_empty(),
            RedisProxy::Up(u) => u.done && u.out.is_empty(),
        }
    }

    fn saw_eof(&self) -> bool {
        match self {
            RedisProxy::Down(d) => d.eof,
            RedisProxy::Up(u) => u.eof,
        }
    }

    fn has_pending(&self) -> bool {
        false
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            RedisProxy::Down(d) => d.conn.poll_timeout(),
            RedisProxy::Up(u) => u
                .connect_deadline
                .into_iter()
                .chain(u.conn.poll_timeout())
                .min(),
        }
    }

    fn has_output(&self) -> bool {
        match self {
            RedisProxy::Down(d) => !d.out.is_empty(),
            RedisProxy::Up(u) => u.connected && !u.out.is_empty(),
        }
    }

    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        match self {
            RedisProxy::Down(d) => d.out.fill_iov(iov),
            RedisProxy::Up(u) => u.out.fill_iov(iov),
        }
    }

    fn written(&mut self, ctx: &WorkerCtx, n: usize) {
        add(&ctx.metrics.bytes_out, n as u64);
        match self {
            RedisProxy::Down(d) => d.out.written(n),
            RedisProxy::Up(u) => u.out.written(n),
        }
    }

    fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        match self {
            RedisProxy::Down(d) => d.out.take_out(max, into),
            RedisProxy::Up(u) => u.out.take_out(max, into),
        }
    }

    fn sent(&mut self, ctx: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        add(&ctx.metrics.bytes_out, n as u64);
        match self {
            RedisProxy::Down(d) => d.out.sent(n, chunks),
            RedisProxy::Up(u) => u.out.sent(n, chunks),
        }
    }

    fn on_read(&mut self, ctx: &WorkerCtx, n: usize) {
        add(&ctx.metrics.bytes_in, n as u64);
    }

    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        match self {
            RedisProxy::Down(d) => {
                if !d.eof {
                    d.eof = true;
                    d.process(ctx, now);
                    d.conn.handle_eof(now);
                    d.process(ctx, now);
                }
            }
            RedisProxy::Up(u) => {
                if !u.eof {
                    u.eof = true;
                    u.process(ctx, now);
                    u.fail_all(ctx);
                }
            }
        }
    }

    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        match self {
            RedisProxy::Down(d) => {
                d.conn.handle_timeout(now);
                d.process(ctx, now);
            }
            RedisProxy::Up(u) => {
                if u.connect_deadline.is_some_and(|d| now >= d) {
                    u.connect_deadline = None;
                    u.fail_all(ctx);
                    return;
                }
                u.conn.handle_timeout(now);
                u.process(ctx, now);
            }
        }
    }

    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        match self {
            RedisProxy::Down(d) => {
                d.conn.close();
                d.process(ctx, now);
            }
            RedisProxy::Up(u) => {
                if u.queue.is_empty() {
                    u.done = true;
                }
            }
        }
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        match self {
            RedisProxy::Down(d) => d.process(ctx, now),
            RedisProxy::Up(u) => u.process(ctx, now),
        }
    }

    fn retry_pending(&mut self, _ctx: &mut WorkerCtx, _now: Instant) -> bool {
        true
    }

    fn take_mail(_ctx: &mut WorkerCtx, _shared: &RedisShared, _into: &mut Vec<(usize, RMail)>) {}

    fn apply_mail(&mut self, ctx: &mut WorkerCtx, mail: RMail, now: Instant) {
        match self {
            RedisProxy::Down(d) => {
                if mail.gen != d.gen {
                    return drop_stale(ctx, mail);
                }
                d.apply(ctx, mail.kind);
            }
            RedisProxy::Up(u) => {
                if mail.gen != u.gen {
                    return drop_stale(ctx, mail);
                }
                match mail.kind {
                    RKind::Cmd { owner, id, args } => {
                        if u.done {
                            if let Some(id) = id {
                                let _ = ctx.post(
                                    owner.0,
                                    RMail {
                                        gen: owner.1,
                                        kind: RKind::Reply(id, lost()),
                                    },
                                );
                            }
                            return;
                        }
                        u.shared.stats.upstreams[u.idx]
                            .requests
                            .fetch_add(1, Relaxed);
                        // Replies are timed from the connection's clock: bring it to now.
                        u.conn.handle_timeout(now);
                        match u.conn.send_command(&args) {
                            Ok(_) => u.queue.push_back((owner, id)),
                            Err(_) => {
                                if let Some(id) = id {
                                    let _ = ctx.post(
                                        owner.0,
                                        RMail {
                                            gen: owner.1,
                                            kind: RKind::Reply(id, lost()),
                                        },
                                    );
                                }
                            }
                        }
                        while let Some(b) = u.conn.poll_transmit() {
                            u.out.push(b);
                        }
                    }
                    RKind::Release if u.owner.is_some() => {
                        u.owner = None;
                        u.done = true;
                    }
                    _ => {}
                }
            }
        }
    }

    fn drop_mail(ctx: &mut WorkerCtx, _shared: &RedisShared, mail: RMail) {
        drop_stale(ctx, mail)
    }

    fn close(self, ctx: &mut WorkerCtx) {
        match self {
            RedisProxy::Down(d) => {
                d.shared.stats.downstream_open.fetch_sub(1, Relaxed);
                add(&ctx.metrics.closed, 1);
                if let (Route::Dedicated(_), Some((t, g))) = (d.route, d.up) {
                    let _ = ctx.post(
                        t,
                        RMail {
                            gen: g,
                            kind: RKind::Release,
                        },
                    );
                }
            }
            RedisProxy::Up(mut u) => {
                if !u.done || !u.queue.is_empty() {
                    u.fail_all(ctx);
                } else if let Some(s) = u.slot {
                    let sh = u.shared.clone();
                    let mut w = sh.worker(ctx.index);
                    if let Slot::Ready(t, g) = w.slots[u.idx][s] {
                        if (t, g) == (u.token, u.gen) {
                            w.slots[u.idx][s] = Slot::Empty;
                        }
                    }
                }
                u.shared.stats.upstreams[u.idx].open.fetch_sub(1, Relaxed);
            }
        }
    }
}

/// Mail for a connection that is gone: a dedicated upstream attached to a vanished client
/// is released; commands for a vanished upstream are dropped (their client is told when
/// that upstream closed).
fn drop_stale(ctx: &mut WorkerCtx, mail: RMail) {
    match mail.kind {
        RKind::Attached(t, g) => {
            let _ = ctx.post(
                t,
                RMail {
                    gen: g,
                    kind: RKind::Release,
                },
            );
        }
        RKind::Cmd { owner, id, .. } => {
            if let Some(id) = id {
                let _ = ctx.post(
                    owner.0,
                    RMail {
                        gen: owner.1,
                        kind: RKind::Reply(id, lost()),
                    },
                );
            }
            let _ = ctx.post(
                owner.0,
                RMail {
                    gen: owner.1,
                    kind: RKind::Lost,
                },
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
