//! # ferry-kv: the demo in-memory store behind `ferry serve --redis`
//!
//! A key-value store with Redis's semantics for the commands of Ferry's contract (strings with
//! expiry, lists, sets, hashes, sorted sets, streams' XADD, pub/sub fan-out, SCAN cursors,
//! MULTI/EXEC with WATCH, and the INFO / CONFIG GET / COMMAND replies redis-cli and
//! redis-benchmark ask for). Deadlines are kept in Unix milliseconds, as Redis keeps them (any
//! deadline up to `i64::MAX` ms); INCRBYFLOAT computes in an exact emulation of x86-64's
//! `long double`, as Redis does. It is sans-IO like the protocol crates: no sockets, threads
//! or clocks. Time comes in as [`ferry_proto::Instant`] plus the wall-clock time of
//! `Instant::ZERO` (for EXPIREAT and INFO); expired keys are removed lazily on access and by
//! [`Store::active_expire`], which a driver calls from a timer with a work budget.
//!
//! ```
//! use bytes::Bytes;
//! use ferry_kv::{Store, StoreConfig};
//! use ferry_proto::Instant;
//! use ferry_resp::Value;
//!
//! let mut store = Store::new(StoreConfig::default(), Instant::ZERO);
//! let mut client = store.new_client();
//! let args = |s: &str| s.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect::<Vec<_>>();
//! assert_eq!(store.execute(Instant::ZERO, &mut client, &args("SET k v")), Value::ok());
//! assert_eq!(store.execute(Instant::ZERO, &mut client, &args("GET k")), Value::bulk("v"));
//! ```
//!
//! ## Pub/sub
//!
//! `ferry_resp::ServerConnection` answers `(P|S)SUBSCRIBE`/`(P|S)UNSUBSCRIBE` itself and
//! reports them as events; the driver passes them to [`Store::subscribe`] /
//! [`Store::unsubscribe`] with the client's id. `PUBLISH` returns the number of receivers and
//! queues one [`Delivery`] per receiver, which the driver drains with
//! [`Store::take_deliveries`] and routes to the connections by client id
//! (`send_message` / `send_pmessage`). [`Store::remove_client`] forgets a closed connection.
//!
//! With `ServerConfig::queue_pubsub_in_multi`, (un)subscriptions inside MULTI come to
//! [`Store::execute`] like any command: they are queued, and EXEC updates the broker and
//! answers each with the request as a push for the connection to confirm.
//!
//! ## WATCH
//!
//! A write to a key (any command that modifies it, whoever sends it) fails the EXEC of every
//! client watching it; so does a watched key whose deadline passed while it is still stored
//! (Redis 7.0's rules: deleting an expired key is not a write). The store keeps a map of
//! watched keys, and a write looks in it only when it is not empty: keys nobody watches cost
//! one branch per write. The watch state lives in the store and in [`ClientState`], both
//! behind whatever serialises commands (one lock in `ferry serve`), so it holds with
//! application workers too.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod commands;
pub mod dict;
pub mod glob;
mod longdouble;
mod types;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::Instant;
use ferry_resp::{Protocol, SubKind, Value};

pub use types::{Data, Entry};

/// Store-wide settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Unix time in milliseconds at `Instant::ZERO` (EXPIREAT, SET EXAT/PXAT, INFO).
    pub unix_ms_at_zero: u64,
    /// The TCP port reported by INFO and CONFIG GET port.
    pub port: u16,
    /// Seed of the generator behind SPOP (deterministic for tests).
    pub seed: u64,
    /// `proto-max-bulk-len` reported by CONFIG GET (enforced by the connection).
    pub proto_max_bulk_len: u64,
    /// Messages a PUBLISH produces for the publishing client itself are put in its reply, as
    /// `Value::Push([message…, reply])`, instead of [`take_deliveries`](Store::take_deliveries),
    /// for a connection with `ServerConfig::pushes_before_reply` to write them first, where
    /// Redis does: before the reply of a RESP3 client's PUBLISH, and inside the EXEC array (an
    /// EXEC reply is then `Push([Array])`). Default `false`.
    pub inline_own_messages: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            unix_ms_at_zero: 0,
            port: 6379,
            seed: 0x9e37_79b9_7f4a_7c15,
            proto_max_bulk_len: 512 << 20,
            inline_own_messages: false,
        }
    }
}

/// Per-connection state the store keeps for a client.
#[derive(Debug)]
pub struct ClientState {
    /// The id CLIENT ID reports and deliveries are addressed to.
    pub id: u64,
    /// CLIENT SETNAME / HELLO SETNAME.
    pub name: Option<Bytes>,
    /// The protocol the client speaks (HELLO 3 / RESET); shapes replies (maps, doubles, …).
    pub proto: Protocol,
    /// Commands queued by MULTI (`None` outside a transaction).
    multi: Option<Vec<Vec<Bytes>>>,
    /// A command failed to queue: EXEC will abort.
    multi_dirty: bool,
    /// Keys under WATCH (empty for almost every client).
    watching: Vec<Bytes>,
}

/// One message for one subscriber, produced by PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The receiving client's id.
    pub client: u64,
    /// `Channel` for `message`, `Pattern` for `pmessage`, `Shard` for `smessage`.
    pub kind: SubKind,
    /// The matching pattern for `pmessage`.
    pub pattern: Option<Bytes>,
    /// The channel published to.
    pub channel: Bytes,
    /// The message.
    pub payload: Bytes,
}

#[derive(Default, Debug)]
struct Broker {
    channels: HashMap<Bytes, HashSet<u64>>,
    patterns: HashMap<Bytes, HashSet<u64>>,
    shard: HashMap<Bytes, HashSet<u64>>,
    deliveries: Vec<Delivery>,
}

impl Broker {
    fn map(&mut self, kind: SubKind) -> &mut HashMap<Bytes, HashSet<u64>> {
        match kind {
            SubKind::Channel => &mut self.channels,
            SubKind::Pattern => &mut self.patterns,
            SubKind::Shard => &mut self.shard,
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    commands: u64,
    connections: u64,
    expired: u64,
    hits: u64,
    misses: u64,
}

/// The store: one database (SELECT 0 only), a pub/sub broker and statistics.
pub struct Store {
    db: dict::Dict<Entry>,
    /// Keys with a TTL, by deadline in Unix ms (active expiry pops from the front).
    expires: BTreeSet<(u64, Bytes)>,
    /// WATCHed keys → the ids of the clients watching them. Empty unless someone watches:
    /// writes check it only then (Redis's `touchWatchedKey`).
    watched: HashMap<Bytes, Vec<u64>>,
    /// Clients one of whose watched keys was modified: their next EXEC fails.
    dirty_cas: HashSet<u64>,
    config: StoreConfig,
    broker: Broker,
    rng: u64,
    next_client: u64,
    clients: u64,
    start: Instant,
    stats: Stats,
}

impl Store {
    /// An empty store created at `now`.
    pub fn new(config: StoreConfig, now: Instant) -> Store {
        let rng = config.seed | 1;
        Store {
            db: dict::Dict::default(),
            expires: BTreeSet::new(),
            watched: HashMap::new(),
            dirty_cas: HashSet::new(),
            config,
            broker: Broker::default(),
            rng,
            next_client: 1,
            clients: 0,
            start: now,
            stats: Stats::default(),
        }
    }

    /// Register a new connection; returns its state (id from 1 up).
    pub fn new_client(&mut self) -> ClientState {
        let id = self.next_client;
        self.next_client += 1;
        self.clients += 1;
        self.stats.connections += 1;
        ClientState {
            id,
            name: None,
            proto: Protocol::Resp2,
            multi: None,
            multi_dirty: false,
            watching: Vec::new(),
        }
    }

    /// Forget a closed connection: its subscriptions are dropped.
    pub fn remove_client(&mut self, client: &ClientState) {
        self.clients = self.clients.saturating_sub(1);
        self.unwatch_keys(client.id, &client.watching);
        self.dirty_cas.remove(&client.id);
        for kind in [SubKind::Channel, SubKind::Pattern, SubKind::Shard] {
            let map = self.broker.map(kind);
            map.retain(|_, ids| {
                ids.remove(&client.id);
                !ids.is_empty()
            });
        }
    }

    /// `RESET` from the connection: leave MULTI, forget the name, back to RESP2, drop
    /// subscriptions.
    pub fn reset_client(&mut self, client: &mut ClientState) {
        client.multi = None;
        client.multi_dirty = false;
        self.unwatch_all(client);
        client.name = None;
        client.proto = Protocol::Resp2;
        for kind in [SubKind::Channel, SubKind::Pattern, SubKind::Shard] {
            self.broker.map(kind).retain(|_, ids| {
                ids.remove(&client.id);
                !ids.is_empty()
            });
        }
    }

    /// The client subscribed to `channels` (from `ferry_resp::server::Event::Subscribe`).
    pub fn subscribe(&mut self, client: u64, kind: SubKind, channels: &[Bytes]) {
        let map = self.broker.map(kind);
        for c in channels {
            map.entry(c.clone()).or_default().insert(client);
        }
    }

    /// The client unsubscribed from `channels`.
    pub fn unsubscribe(&mut self, client: u64, kind: SubKind, channels: &[Bytes]) {
        let map = self.broker.map(kind);
        for c in channels {
            if let Some(ids) = map.get_mut(c) {
                ids.remove(&client);
                if ids.is_empty() {
                    map.remove(c);
                }
            }
        }
    }

    /// A `(P|S)(UN)SUBSCRIBE` queued by MULTI, run by EXEC (the connection queues them with
    /// `ServerConfig::queue_pubsub_in_multi`): the broker is updated here and the reply is
    /// the request as a push, which the connection turns into Redis's confirmations.
    fn queued_pubsub(
        &mut self,
        client: &ClientState,
        name: &str,
        a: &[Bytes],
    ) -> Result<Value, Value> {
        let (kind, sub) = match name {
            "subscribe" => (SubKind::Channel, true),
            "psubscribe" => (SubKind::Pattern, true),
            // Redis 7.0 refuses it inside a transaction.
            "ssubscribe" => {
                return Err(Value::error(
                    "ERR SSUBSCRIBE isn't allowed for a DENY BLOCKING client",
                ))
            }
            "unsubscribe" => (SubKind::Channel, false),
            "punsubscribe" => (SubKind::Pattern, false),
            _ => (SubKind::Shard, false),
        };
        let channels = &a[1..];
        if sub {
            self.subscribe(client.id, kind, channels);
        } else if channels.is_empty() {
            self.broker.map(kind).retain(|_, ids| {
                ids.remove(&client.id);
                !ids.is_empty()
            });
        } else {
            self.unsubscribe(client.id, kind, channels);
        }
        let mut parts = Vec::with_capacity(a.len());
        parts.push(Value::BulkString(Bytes::copy_from_slice(name.as_bytes())));
        parts.extend(channels.iter().map(|c| Value::BulkString(c.clone())));
        Ok(Value::Push(parts))
    }

    /// Whether PUBLISH produced messages not yet taken.
    pub fn has_deliveries(&self) -> bool {
        !self.broker.deliveries.is_empty()
    }

    /// Messages produced by PUBLISH since the last call, for the driver to route.
    pub fn take_deliveries(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.broker.deliveries)
    }

    /// Publish `payload` on `channel`: queue deliveries, return the number of receivers.
    pub fn publish(&mut self, channel: &Bytes, payload: &Bytes) -> i64 {
        let mut n = 0;
        if let Some(ids) = self.broker.channels.get(channel) {
            for &id in ids {
                self.broker.deliveries.push(Delivery {
                    client: id,
                    kind: SubKind::Channel,
                    pattern: None,
                    channel: channel.clone(),
                    payload: payload.clone(),
                });
                n += 1;
            }
        }
        for (pat, ids) in &self.broker.patterns {
            if glob::matches(pat, channel) {
                for &id in ids {
                    self.broker.deliveries.push(Delivery {
                        client: id,
                        kind: SubKind::Pattern,
                        pattern: Some(pat.clone()),
                        channel: channel.clone(),
                        payload: payload.clone(),
                    });
                    n += 1;
                }
            }
        }
        n
    }

    /// Publish on a shard channel (SPUBLISH): only SSUBSCRIBE subscribers receive it.
    pub fn spublish(&mut self, channel: &Bytes, payload: &Bytes) -> i64 {
        let mut n = 0;
        if let Some(ids) = self.broker.shard.get(channel) {
            for &id in ids {
                self.broker.deliveries.push(Delivery {
                    client: id,
                    kind: SubKind::Shard,
                    pattern: None,
                    channel: channel.clone(),
                    payload: payload.clone(),
                });
                n += 1;
            }
        }
        n
    }

    /// Number of keys (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.db.len()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.db.is_empty()
    }

    /// Remove up to `budget` keys whose deadline passed; returns how many were removed.
    pub fn active_expire(&mut self, now: Instant, budget: usize) -> usize {
        let now_ms = self.unix_ms(now);
        let mut n = 0;
        while n < budget {
            let Some((t, _)) = self.expires.first() else {
                break;
            };
            // Redis: expired once the clock is past the deadline.
            if *t >= now_ms {
                break;
            }
            let Some((_, key)) = self.expires.pop_first() else {
                break;
            };
            self.db.remove(&key);
            self.stats.expired += 1;
            n += 1;
        }
        n
    }

    /// The earliest key deadline, for a driver's timer (saturating at the largest
    /// [`Instant`] for deadlines centuries away).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expires
            .first()
            .map(|(t, _)| self.instant_of(t.saturating_add(1)))
    }

    /// The [`Instant`] of Unix time `ms` (saturating).
    fn instant_of(&self, ms: u64) -> Instant {
        let rel = ms.saturating_sub(self.config.unix_ms_at_zero);
        Instant::ZERO.saturating_add(Duration::from_millis(rel))
    }

    /// Execute one command (`args[0]` is the name) for `client` at `now`.
    ///
    /// `(P|S)SUBSCRIBE`, `(P|S)UNSUBSCRIBE`, `QUIT` and `RESET` are answered by
    /// `ferry_resp::ServerConnection`; see [`subscribe`](Self::subscribe) and
    /// [`reset_client`](Self::reset_client).
    pub fn execute(&mut self, now: Instant, client: &mut ClientState, args: &[Bytes]) -> Value {
        if args.is_empty() {
            return Value::error("ERR empty command");
        }
        self.stats.commands += 1;
        let v = commands::execute(self, now, client, args);
        // A RESP2 client can PUBLISH to itself only inside EXEC, which inlines by itself.
        if self.has_deliveries()
            && self.config.inline_own_messages
            && client.proto == Protocol::Resp3
        {
            return self.own_messages_first(client.id, v);
        }
        v
    }

    /// `reply` preceded by the messages queued for client `id` (see
    /// [`StoreConfig::inline_own_messages`]); other clients' messages stay queued.
    #[cold]
    pub(crate) fn own_messages_first(&mut self, id: u64, reply: Value) -> Value {
        if !self.broker.deliveries.iter().any(|d| d.client == id) {
            return reply;
        }
        let mut own = Vec::new();
        self.broker.deliveries.retain(|d| {
            if d.client != id {
                return true;
            }
            let mut frame = Vec::with_capacity(4);
            frame.push(Value::BulkString(Bytes::from_static(match d.kind {
                SubKind::Channel => b"message",
                SubKind::Pattern => b"pmessage",
                SubKind::Shard => b"smessage",
            })));
            frame.extend(d.pattern.clone().map(Value::BulkString));
            frame.push(Value::BulkString(d.channel.clone()));
            frame.push(Value::BulkString(d.payload.clone()));
            own.push(Value::Push(frame));
            false
        });
        own.push(reply);
        Value::Push(own)
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.config.unix_ms_at_zero + now.as_nanos() / 1_000_000
    }

    /// The entry at `key`, removing it first if its deadline passed.
    fn lookup(&mut self, now: Instant, key: &[u8]) -> Option<&mut Entry> {
        let slot = self.db.slot(key)?;
        let zero = self.config.unix_ms_at_zero;
        // Only keys with a TTL pay for the clock: GET/SET of plain keys stay as they were.
        let expired = self.db.at_mut(slot)?.expire.is_some_and(|t| {
            let now_ms = zero + now.as_nanos() / 1_000_000;
            now_ms > t
        });
        if expired {
            // Expiry is not a modification for WATCH (Redis 7.0 neither touches watched keys
            // when it deletes expired ones; EXEC checks deadlines itself).
            self.remove_entry(key);
            self.stats.expired += 1;
            return None;
        }
        self.db.at_mut(slot)
    }

    /// Remove `key` and its deadline without touching watchers.
    fn remove_entry(&mut self, key: &[u8]) -> bool {
        match self.db.remove(key) {
            Some(e) => {
                if let Some(t) = e.expire {
                    self.expires.remove(&(t, Bytes::copy_from_slice(key)));
                }
                true
            }
            None => false,
        }
    }

    fn delete(&mut self, key: &[u8]) -> bool {
        let removed = self.remove_entry(key);
        if removed {
            self.touch(key);
        }
        removed
    }

    /// A write to `key`: clients watching it fail their next EXEC. One branch unless
    /// someone watches something.
    #[inline]
    fn touch(&mut self, key: &[u8]) {
        if !self.watched.is_empty() {
            self.touch_watched(key);
        }
    }

    #[cold]
    fn touch_watched(&mut self, key: &[u8]) {
        if let Some(ids) = self.watched.get(key) {
            self.dirty_cas.extend(ids.iter().copied());
        }
    }

    /// WATCH `keys` for `client` (expired keys are dropped first, so the watch sees the key's
    /// logical state).
    fn watch(&mut self, now: Instant, client: &mut ClientState, keys: &[Bytes]) {
        for k in keys {
            let _ = self.lookup(now, k);
            if client.watching.iter().any(|w| w == k) {
                continue;
            }
            let k = Bytes::copy_from_slice(k);
            self.watched.entry(k.clone()).or_default().push(client.id);
            client.watching.push(k);
        }
    }

    fn unwatch_keys(&mut self, id: u64, keys: &[Bytes]) {
        for k in keys {
            if let Some(ids) = self.watched.get_mut(k) {
                ids.retain(|&i| i != id);
                if ids.is_empty() {
                    self.watched.remove(k);
                }
            }
        }
    }

    /// UNWATCH (also EXEC, DISCARD, RESET): forget the client's watches and their outcome.
    fn unwatch_all(&mut self, client: &mut ClientState) {
        if client.watching.is_empty() && self.dirty_cas.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut client.watching);
        self.unwatch_keys(client.id, &keys);
        self.dirty_cas.remove(&client.id);
    }

    /// Whether EXEC must fail: a watched key was written, or expired since WATCH.
    fn watch_failed(&self, now: Instant, client: &ClientState) -> bool {
        if client.watching.is_empty() {
            return false;
        }
        if self.dirty_cas.contains(&client.id) {
            return true;
        }
        let now_ms = self.unix_ms(now);
        client.watching.iter().any(|k| {
            self.db
                .get(k)
                .and_then(|e| e.expire)
                .is_some_and(|t| now_ms > t)
        })
    }

    /// FLUSHDB / FLUSHALL: watchers of keys that existed fail their EXEC.
    fn flush(&mut self) {
        if !self.watched.is_empty() {
            let hit: Vec<u64> = self
                .watched
                .iter()
                .filter(|(k, _)| self.db.get(k).is_some())
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect();
            self.dirty_cas.extend(hit);
        }
        self.db.clear();
        self.expires.clear();
    }

    /// Set or clear the deadline (Unix ms) of `key`.
    fn set_expire(&mut self, key: &Bytes, at: Option<u64>) {
        self.touch(key);
        if let Some(e) = self.db.get_mut(key) {
            let old = std::mem::replace(&mut e.expire, at);
            if let Some(t) = old {
                self.expires.remove(&(t, key.clone()));
            }
            if let Some(t) = at {
                self.expires.insert((t, key.clone()));
            }
        }
    }

    /// Store `data` at `key`, dropping any TTL unless `keep_ttl`.
    fn store(&mut self, key: &Bytes, data: Data, keep_ttl: bool) {
        self.touch(key);
        if let Some(e) = self.db.get_mut(key) {
            e.data = data;
            if !keep_ttl {
                if let Some(t) = e.expire.take() {
                    self.expires.remove(&(t, key.clone()));
                }
            }
        } else {
            // A copy: a slice of the connection's read buffer would pin the whole buffer.
            self.db
                .insert(Bytes::copy_from_slice(key), Entry { data, expire: None });
        }
    }
}
