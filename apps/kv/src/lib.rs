//! # ferry-kv: the demo in-memory store behind `ferry serve --redis`
//!
//! A key-value store with Redis's semantics for the commands of Ferry's contract (strings with
//! expiry, lists, sets, hashes, sorted sets, streams' XADD, pub/sub fan-out, SCAN cursors,
//! MULTI/EXEC, and the INFO / CONFIG GET / COMMAND replies redis-cli and redis-benchmark ask
//! for). It is sans-IO like the protocol crates: no sockets, threads or clocks. Time comes in
//! as [`ferry_proto::Instant`] plus the wall-clock time of `Instant::ZERO` (for EXPIREAT and
//! INFO); expired keys are removed lazily on access and by [`Store::active_expire`], which a
//! driver calls from a timer with a work budget.
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
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod commands;
pub mod dict;
pub mod glob;
mod types;

use std::collections::{BTreeSet, HashMap, HashSet};

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
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            unix_ms_at_zero: 0,
            port: 6379,
            seed: 0x9e37_79b9_7f4a_7c15,
            proto_max_bulk_len: 512 << 20,
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
    /// Keys with a TTL, by deadline (active expiry pops from the front).
    expires: BTreeSet<(Instant, Bytes)>,
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
        }
    }

    /// Forget a closed connection: its subscriptions are dropped.
    pub fn remove_client(&mut self, client: &ClientState) {
        self.clients = self.clients.saturating_sub(1);
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
        let mut n = 0;
        while n < budget {
            let Some((t, _)) = self.expires.first() else {
                break;
            };
            if *t > now {
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

    /// The earliest key deadline, for a driver's timer.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expires.first().map(|(t, _)| *t)
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
        commands::execute(self, now, client, args)
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
        let expired = self.db.at_mut(slot)?.expire.is_some_and(|t| t <= now);
        if expired {
            self.delete(key);
            self.stats.expired += 1;
            return None;
        }
        self.db.at_mut(slot)
    }

    fn delete(&mut self, key: &[u8]) -> bool {
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

    fn set_expire(&mut self, key: &Bytes, at: Option<Instant>) {
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
