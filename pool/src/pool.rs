//! The pool state machine.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::fmt;

use ferry_proto::Instant;

use crate::config::{Config, ConfigError};
use crate::metrics::{Metrics, WaitHistogram};

/// A connection lent to the caller. Return it with [`Pool::checkin`] exactly once; it cannot be
/// cloned, so it cannot be returned twice.
#[must_use = "a lease must be checked in, or its connection leaks from the pool's accounting"]
pub struct Lease<K, C> {
    key: K,
    conn: C,
    meta: Meta,
    health_check: bool,
    /// Where the pool keeps `key`'s destination (a hint: checked against the key).
    slot: usize,
}

impl<K, C> Lease<K, C> {
    /// Destination this connection goes to.
    pub fn key(&self) -> &K {
        &self.key
    }
    /// The connection.
    pub fn conn(&self) -> &C {
        &self.conn
    }
    /// The connection, mutably (to read and write on it).
    pub fn conn_mut(&mut self) -> &mut C {
        &mut self.conn
    }
    /// Times this connection has been checked out, this time included.
    pub fn uses(&self) -> u64 {
        self.meta.uses
    }
    /// When the connection was reported connected.
    pub fn created(&self) -> Instant {
        self.meta.created
    }
    /// `true` for a lease from [`Event::HealthCheck`]: probe the connection and check it in
    /// with `reusable` = healthy.
    pub fn is_health_check(&self) -> bool {
        self.health_check
    }
}

impl<K: fmt::Debug, C> fmt::Debug for Lease<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("uses", &self.meta.uses)
            .field("health_check", &self.health_check)
            .finish_non_exhaustive()
    }
}

/// A request to open a connection to [`key`](Ticket::key). Report the outcome exactly once with
/// [`Pool::connected`] or [`Pool::connect_failed`]; until then it counts against the limits.
#[derive(Debug)]
#[must_use = "a ticket must be reported with connected() or connect_failed()"]
pub struct Ticket<K> {
    key: K,
    id: u64,
}

impl<K> Ticket<K> {
    /// Destination to connect to.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Names this connect in [`Event::ConnectTimedOut`].
    pub fn id(&self) -> TicketId {
        TicketId(self.id)
    }
}

/// Identifies a [`Ticket`] (see [`Event::ConnectTimedOut`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TicketId(u64);

/// Where a [`Pool`] keeps one key, remembered by the caller to skip the key look-up in
/// [`Pool::checkout_hinted`]: keep one per key (e.g. next to each upstream), starting from
/// `KeyHint::default()`. Only a hint: a wrong or stale one is detected and corrected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyHint(pub(crate) usize);

/// Identifies a queued checkout; it is answered later by [`Event::Ready`], [`Event::TimedOut`]
/// or [`Event::Failed`] carrying the same id, or withdrawn with [`Pool::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(pub(crate) u64);

/// What [`Pool::checkout`] tells the caller to do.
#[derive(Debug)]
#[non_exhaustive]
#[must_use]
pub enum Checkout<K, C> {
    /// Here is a warm idle connection.
    Ready(Lease<K, C>),
    /// None idle but there is room: open a connection yourself and report it with
    /// [`Pool::connected`] (which hands you the lease) or [`Pool::connect_failed`].
    Connect(Ticket<K>),
    /// At the limit: you are queued; wait for an event carrying this id.
    Queued(WaiterId),
}

/// Output of the pool, drained with [`Pool::poll_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<K, C> {
    /// Open a connection to the ticket's key (to serve waiters or to keep `min_per_key` open)
    /// and report it; the connection then goes to a waiter or into the idle set.
    Connect(Ticket<K>),
    /// A queued checkout got a connection.
    Ready {
        /// The queued checkout.
        waiter: WaiterId,
        /// Its connection.
        lease: Lease<K, C>,
    },
    /// A queued checkout waited `wait_timeout` without getting a connection.
    TimedOut {
        /// The queued checkout.
        waiter: WaiterId,
    },
    /// A connect made on behalf of the waiters failed; the oldest waiter is failed with it (it
    /// may retry with a fresh `checkout`, e.g. after a backoff).
    Failed {
        /// The queued checkout.
        waiter: WaiterId,
    },
    /// Probe this idle connection (a ping) and return it with
    /// `checkin(lease, healthy, now)`.
    HealthCheck(Lease<K, C>),
    /// The pool is done with this connection: close it. Every connection the pool takes in
    /// leaves through exactly one `Close`.
    Close(C),
    /// This connect was not reported within
    /// [`Config::connect_timeout`](crate::Config::connect_timeout): abandon it. The pool has
    /// already counted it failed (as [`Pool::connect_failed`] would have); reporting the ticket
    /// now is refused with [`PoolError::UnknownTicket`].
    ConnectTimedOut {
        /// The abandoned connect.
        ticket: TicketId,
    },
}

/// Why [`Pool::checkout`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckoutError {
    /// No idle connection, no room for another and `max_waiters_per_key` already queued.
    QueueFull,
}

/// Misuse of [`Pool::connected`], [`Pool::connect_failed`] or [`Pool::checkin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// The ticket was not issued by this pool (or was already reported). A connection passed
    /// with it is handed back in [`Event::Close`].
    UnknownTicket,
    /// The lease was not issued by this pool. Its connection is handed back in
    /// [`Event::Close`].
    UnknownLease,
}

impl fmt::Display for CheckoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection pool exhausted and its wait queue is full")
    }
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolError::UnknownTicket => "ticket not issued by this pool",
            PoolError::UnknownLease => "lease not issued by this pool",
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    created: Instant,
    last_used: Instant,
    last_checked: Instant,
    uses: u64,
}

struct Idle<C> {
    conn: C,
    meta: Meta,
}

struct Waiter {
    id: WaiterId,
    queued: Instant,
    deadline: Instant,
}

struct Pending<K> {
    key: K,
    /// `true`: asked by `checkout`, the lease goes to that caller; `false`: for the pool.
    own: bool,
    started: Instant,
}

/// One destination's connections.
struct Dest<K, C> {
    key: K,
    /// Most recently used last: checkout pops from the back (LIFO, warm first).
    idle: Vec<Idle<C>>,
    active: usize,
    checking: usize,
    connecting_own: usize,
    connecting_pool: usize,
    /// FIFO: served from the front.
    waiters: VecDeque<Waiter>,
    /// At or before the earliest waiter deadline (a lower bound: it may name a waiter that
    /// already left); `FAR_FUTURE` when none. Lets checkout/checkin skip the expiry scan.
    waiters_due: Instant,
    backoff_until: Instant,
}

impl<K, C> Dest<K, C> {
    fn new(key: K) -> Self {
        Dest {
            key,
            idle: Vec::new(),
            active: 0,
            checking: 0,
            connecting_own: 0,
            connecting_pool: 0,
            waiters: VecDeque::new(),
            waiters_due: Instant::FAR_FUTURE,
            backoff_until: Instant::ZERO,
        }
    }
}

impl<K, C> Dest<K, C> {
    /// Times out the waiters whose deadline is at or before `now`, in queue order, and
    /// recomputes `waiters_due`. Returns how many timed out.
    #[cold]
    fn expire_waiters(&mut self, now: Instant, events: &mut VecDeque<Event<K, C>>) -> u64 {
        let mut n = 0;
        let mut due = Instant::FAR_FUTURE;
        self.waiters.retain(|w| {
            if w.deadline <= now {
                events.push_back(Event::TimedOut { waiter: w.id });
                n += 1;
                false
            } else {
                due = due.min(w.deadline);
                true
            }
        });
        self.waiters_due = due;
        n
    }

    /// [`expire_waiters`](Self::expire_waiters) if some waiter may be due.
    #[inline]
    fn expire_due_waiters(&mut self, now: Instant, events: &mut VecDeque<Event<K, C>>) -> u64 {
        if self.waiters_due <= now && !self.waiters.is_empty() {
            self.expire_waiters(now, events)
        } else {
            0
        }
    }

    fn open(&self) -> usize {
        self.idle.len() + self.active + self.checking
    }
    fn load(&self) -> usize {
        self.open() + self.connecting_own + self.connecting_pool
    }
}

/// The destinations: a slab of [`Dest`]s, which stay put while their key has load or waiters,
/// and an ordered index from key to slot. A [`Lease`] remembers its slot, so `checkin` finds
/// its destination without a key look-up (the key is compared to rule out a reused slot), and
/// `checkout` tries the slot it used last before the index. Walks over all keys go through the
/// index, in key order, as they did when the map held the destinations.
struct Dests<K, C> {
    slots: Vec<Option<Dest<K, C>>>,
    index: BTreeMap<K, usize>,
    free: Vec<usize>,
    /// Slot of the last `checkout`: one key per pool is the common case.
    last: usize,
}

impl<K, C> Dests<K, C> {
    fn len(&self) -> usize {
        self.index.len()
    }
}

impl<K: Ord + Clone, C> Dests<K, C> {
    fn new() -> Self {
        Dests {
            slots: Vec::new(),
            index: BTreeMap::new(),
            free: Vec::new(),
            last: 0,
        }
    }

    /// The destination in `slot` if it is `key`'s, else `key`'s from the index.
    #[inline]
    fn hinted(&mut self, slot: usize, key: &K) -> Option<&mut Dest<K, C>> {
        let slot = match self.slots.get(slot) {
            Some(Some(d)) if d.key == *key => slot,
            _ => *self.index.get(key)?,
        };
        self.slots[slot].as_mut()
    }

    /// `key`'s slot, created empty if missing.
    fn slot_or_insert(&mut self, key: &K) -> usize {
        if let Some(&slot) = self.index.get(key) {
            return slot;
        }
        let dest = Some(Dest::new(key.clone()));
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = dest;
                slot
            }
            None => {
                self.slots.push(dest);
                self.slots.len() - 1
            }
        };
        self.index.insert(key.clone(), slot);
        slot
    }

    /// The destination in `slot` (which must be live).
    fn at(&mut self, slot: usize) -> &mut Dest<K, C> {
        self.slots[slot].as_mut().expect("live slot")
    }

    fn get(&self, key: &K) -> Option<&Dest<K, C>> {
        self.slots[*self.index.get(key)?].as_ref()
    }

    fn remove(&mut self, key: &K) {
        if let Some(slot) = self.index.remove(key) {
            self.slots[slot] = None;
            self.free.push(slot);
        }
    }

    /// In key order.
    fn iter(&self) -> impl Iterator<Item = (&K, &Dest<K, C>)> {
        self.index
            .iter()
            .filter_map(|(k, &slot)| Some((k, self.slots[slot].as_ref()?)))
    }

    /// In no particular order.
    fn values(&self) -> impl Iterator<Item = &Dest<K, C>> {
        self.slots.iter().flatten()
    }

    fn retain(&mut self, mut keep: impl FnMut(&Dest<K, C>) -> bool) {
        let (slots, free) = (&mut self.slots, &mut self.free);
        self.index.retain(|_, &mut slot| {
            let kept = slots[slot].as_ref().is_some_and(&mut keep);
            if !kept {
                slots[slot] = None;
                free.push(slot);
            }
            kept
        });
    }
}

/// A sans-IO connection pool keyed by destination: the per-worker pool.
///
/// `K` names a destination (an address, `(host, port)`, a shard name; `()` for a single
/// upstream) and `C` is the caller's connection handle, which the pool only stores and hands
/// back. The pool never connects, closes, reads a clock or blocks: it answers
/// [`checkout`](Self::checkout) and queues [`Event`]s telling the caller what to do.
///
/// One `Pool` belongs to one I/O worker and is used through `&mut self` with no locks; see
/// [`Shared`](crate::Shared) for one pool shared by several workers.
///
/// # Rules
///
/// - Idle connections are handed out **LIFO**: the most recently used one first, so a hot set
///   stays warm (TCP windows open, TLS sessions fresh) and the rest age out under
///   `idle_timeout`, which is how a dynamic pool shrinks back to `min_per_key`.
/// - Waiters are served **FIFO** per destination, and a new checkout never jumps the queue.
/// - `max_per_key` bounds open + connecting connections per destination and `max_total` all of
///   them. When only `max_total` is in the way of a checkout or a waiter, the least recently
///   used idle connection of another destination is closed to make room (demand beats a warm
///   reserve); refilling `min_per_key` only takes idle connections above another key's minimum.
/// - Retirement: at checkin, a connection is closed when the caller says it is not reusable,
///   when it is older than `max_lifetime` or when it reached `max_uses`; idle connections are
///   closed by [`handle_timeout`](Self::handle_timeout) past `max_lifetime` or (above
///   `min_per_key`) `idle_timeout`, and on checkout when the validator rejects them.
/// - Time only moves forward: a `now` earlier than one already seen is taken as the latest
///   seen. An early or repeated `handle_timeout` does nothing.
///
/// # Caller duties
///
/// After every call the caller SHOULD drain [`poll_event`](Self::poll_event) and re-arm one
/// timer at [`poll_timeout`](Self::poll_timeout), calling
/// [`handle_timeout`](Self::handle_timeout) when it fires. Every [`Ticket`] MUST be reported
/// once and every [`Lease`] checked in once, to the pool that issued it.
pub struct Pool<K, C> {
    config: Config,
    timers: Timers,
    validate: Option<fn(&C) -> bool>,
    dests: Dests<K, C>,
    pending: BTreeMap<u64, Pending<K>>,
    events: VecDeque<Event<K, C>>,
    now: Instant,
    next_id: u64,
    id_step: u64,
    total_load: usize,
    /// Some fill stopped at `max_total`: capacity freed anywhere must be offered to all keys.
    global_blocked: bool,
    created: u64,
    closed: u64,
    failed: u64,
    timed_out: u64,
    cancelled: u64,
    wait_time: WaitHistogram,
    /// Checkouts served from the idle set: zero waits, kept out of `wait_time` until `metrics`.
    idle_hits: u64,
}

impl<K: Ord + Clone, C> Pool<K, C> {
    /// An empty pool; it opens nothing until asked (see [`prewarm`](Self::prewarm)).
    pub fn new(config: Config) -> Self {
        Pool::with_ids(config, 0, 1)
    }

    /// An empty pool, after checking `config` with [`Config::validate`].
    pub fn try_new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Pool::new(config))
    }

    /// Ids `first, first + step, ...`: shards of a [`Shared`](crate::Shared) pool never clash.
    pub(crate) fn with_ids(config: Config, first: u64, step: u64) -> Self {
        Pool {
            timers: Timers::new(&config),
            config,
            validate: None,
            dests: Dests::new(),
            pending: BTreeMap::new(),
            events: VecDeque::new(),
            now: Instant::ZERO,
            next_id: first,
            id_step: step.max(1),
            total_load: 0,
            global_blocked: false,
            created: 0,
            closed: 0,
            failed: 0,
            timed_out: 0,
            cancelled: 0,
            wait_time: WaitHistogram::default(),
            idle_hits: 0,
        }
    }

    /// Runs `validate` on an idle connection before handing it out (a cheap, synchronous check
    /// such as "has the peer sent EOF?"); `false` closes it and tries the next one. Checks
    /// that need I/O belong in health checks.
    pub fn with_validator(mut self, validate: fn(&C) -> bool) -> Self {
        self.validate = Some(validate);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the configuration (a configuration reload): the new limits and timeouts
    /// apply from the next call on; connections already open or lent stay as they are, and
    /// idle ones over a lower limit close as they would have (idle timeout, lifetime).
    pub fn set_config(&mut self, config: Config) {
        self.timers = Timers::new(&config);
        self.config = config;
    }

    /// Closes `key`'s idle connections now ([`Event::Close`] for each; the destination was
    /// removed). Connections lent out are closed when checked in only if the caller says
    /// so. Returns how many were closed.
    pub fn close_idle(&mut self, key: &K) -> usize {
        let Some(&slot) = self.dests.index.get(key) else {
            return 0;
        };
        let Some(dest) = self.dests.slots[slot].as_mut() else {
            return 0;
        };
        let n = dest.idle.len();
        for idle in dest.idle.drain(..) {
            self.events.push_back(Event::Close(idle.conn));
        }
        self.total_load -= n;
        self.closed += n as u64;
        n
    }

    /// Asks for `min_per_key` connections to `key` now (as [`Event::Connect`]) instead of on
    /// first use; how a fixed-size pool is filled up front.
    pub fn prewarm(&mut self, key: K, now: Instant) {
        self.tick(now);
        self.dests.slot_or_insert(&key);
        self.settle(&key);
    }

    /// Asks for a connection to `key`.
    ///
    /// Returns a warm idle connection, a [`Ticket`] to open a new one, or a place in the wait
    /// queue. Fails only when the queue for `key` is full.
    ///
    /// Repeated checkouts of the same key skip the key look-up; a caller that alternates
    /// between keys can keep one [`KeyHint`] per key and use
    /// [`checkout_hinted`](Self::checkout_hinted) for the same effect.
    pub fn checkout(&mut self, key: K, now: Instant) -> Result<Checkout<K, C>, CheckoutError> {
        self.checkout_at(key, None, None, now)
    }

    /// [`checkout`](Self::checkout) for a request that must not wait past `deadline` (e.g.
    /// its propagated deadline, `ferry_reliability::Deadline::instant()`): if it is queued,
    /// it times out at the earlier of `deadline` and `now + wait_timeout`. A deadline at or
    /// before `now` still queues, and the waiter times out at the next
    /// [`handle_timeout`](Self::handle_timeout) (or checkout or checkin of its key).
    ///
    /// ```
    /// use std::time::Duration;
    /// use ferry_pool::{Checkout, Config, Event, Pool};
    /// use ferry_proto::Instant;
    ///
    /// let mut pool: Pool<&str, u32> = Pool::new(Config::dynamic(0, 1)); // wait_timeout 5 s
    /// let t0 = Instant::ZERO;
    /// let Ok(Checkout::Connect(ticket)) = pool.checkout("db", t0) else { unreachable!() };
    /// let lease = pool.connected(ticket, 7, t0).unwrap().unwrap();
    /// // The pool is full; this request has 20 ms left of its own deadline.
    /// let deadline = t0 + Duration::from_millis(20);
    /// let Ok(Checkout::Queued(waiter)) = pool.checkout_with_deadline("db", deadline, t0)
    /// else { unreachable!() };
    /// assert_eq!(pool.poll_timeout(), Some(deadline)); // the timer to arm
    /// pool.handle_timeout(deadline);
    /// assert!(matches!(pool.poll_event(), Some(Event::TimedOut { waiter: w }) if w == waiter));
    /// pool.checkin(lease, true, deadline).unwrap();
    /// ```
    pub fn checkout_with_deadline(
        &mut self,
        key: K,
        deadline: Instant,
        now: Instant,
    ) -> Result<Checkout<K, C>, CheckoutError> {
        self.checkout_at(key, None, Some(deadline), now)
    }

    /// [`checkout`](Self::checkout), skipping the key look-up when `hint` (one per key, kept
    /// by the caller, starting from `KeyHint::default()`) still says where this pool keeps
    /// `key`; it is updated when it did not. Behaves exactly like `checkout` whatever the hint
    /// holds: a wrong or stale one only costs the look-up.
    ///
    /// ```
    /// use ferry_pool::{Checkout, Config, KeyHint, Pool};
    /// use ferry_proto::Instant;
    ///
    /// // Two upstreams by index, each with its hint (a proxy keeps them per worker).
    /// let mut pool: Pool<usize, &str> = Pool::new(Config::dynamic(0, 8));
    /// let mut hints = [KeyHint::default(); 2];
    /// let now = Instant::ZERO;
    /// for (upstream, conn) in [(0, "a"), (1, "b")] {
    ///     let Ok(Checkout::Connect(ticket)) = pool.checkout_hinted(upstream, &mut hints[upstream], now)
    ///     else { unreachable!() };
    ///     let lease = pool.connected(ticket, conn, now).unwrap().unwrap();
    ///     pool.checkin(lease, true, now).unwrap();
    /// }
    /// // Alternating between the upstreams: each checkout finds its key from its hint.
    /// for upstream in [0, 1, 0, 1] {
    ///     let Ok(Checkout::Ready(lease)) = pool.checkout_hinted(upstream, &mut hints[upstream], now)
    ///     else { unreachable!() };
    ///     assert_eq!(*lease.conn(), ["a", "b"][upstream]);
    ///     pool.checkin(lease, true, now).unwrap();
    /// }
    /// ```
    pub fn checkout_hinted(
        &mut self,
        key: K,
        hint: &mut KeyHint,
        now: Instant,
    ) -> Result<Checkout<K, C>, CheckoutError> {
        self.checkout_at(key, Some(hint), None, now)
    }

    /// Both checkouts, inlined into each so that the hint's source folds away: the caller's
    /// `hint`, or else the slot of this pool's last checkout.
    #[inline(always)]
    fn checkout_at(
        &mut self,
        key: K,
        hint: Option<&mut KeyHint>,
        wait_until: Option<Instant>,
        now: Instant,
    ) -> Result<Checkout<K, C>, CheckoutError> {
        let now = self.tick(now);
        let min = self.config.min_per_key;
        let guess = hint.as_ref().map_or(self.dests.last, |h| h.0);
        let slot = match self.dests.slots.get(guess) {
            Some(Some(d)) if d.key == key => guess,
            _ => {
                let slot = self.dests.slot_or_insert(&key);
                match hint {
                    Some(h) => h.0 = slot,
                    None => self.dests.last = slot,
                }
                slot
            }
        };
        let dest = self.dests.at(slot);
        if dest.waiters.is_empty() {
            while let Some(Idle { conn, mut meta }) = dest.idle.pop() {
                let stale = expired(&self.timers, &meta, now)
                    || (idle_expired(&self.timers, &meta, now) && dest.open() >= min);
                if stale || self.validate.is_some_and(|ok| !ok(&conn)) {
                    self.total_load -= 1;
                    self.closed += 1;
                    self.events.push_back(Event::Close(conn));
                    continue;
                }
                dest.active += 1;
                meta.uses += 1;
                // A zero wait, folded into the histogram's bucket 0 by `metrics`.
                self.idle_hits += 1;
                // Hot path: `settle` would do nothing when the key holds its minimum (no refill
                // to ask for; no waiters here) and no fill is blocked on `max_total` (it holds a
                // lease now, so it is not empty either).
                let settled = (min == 0 || dest.load() >= min) && !self.global_blocked;
                let lease = Lease {
                    key,
                    conn,
                    meta,
                    health_check: false,
                    slot,
                };
                if !settled {
                    self.settle(&lease.key);
                }
                return Ok(Checkout::Ready(lease));
            }
            if self.has_room(&key, true) {
                let id = self.new_id();
                let dest = self.dest(&key);
                dest.connecting_own += 1;
                self.total_load += 1;
                self.pending.insert(
                    id,
                    Pending {
                        key: key.clone(),
                        own: true,
                        started: now,
                    },
                );
                self.settle(&key);
                return Ok(Checkout::Connect(Ticket { key, id }));
            }
        }
        if self.dests.at(slot).waiters_due <= now {
            // Waiters past their deadline leave the queue before this checkout joins it.
            return self.checkout_after_expiry(key, slot, wait_until, now);
        }
        let max_waiters = self.config.max_waiters_per_key;
        let mut deadline = now + self.config.wait_timeout;
        if let Some(until) = wait_until {
            deadline = deadline.min(until);
        }
        let id = WaiterId(self.new_id());
        let dest = self.dest(&key);
        if dest.waiters.len() >= max_waiters {
            self.settle(&key);
            return Err(CheckoutError::QueueFull);
        }
        dest.waiters_due = dest.waiters_due.min(deadline);
        dest.waiters.push_back(Waiter {
            id,
            queued: now,
            deadline,
        });
        self.settle(&key);
        Ok(Checkout::Queued(id))
    }

    /// Times out `slot`'s due waiters, then checks out again (with nobody due, the retry
    /// takes the idle connection or the room they leave, or queues).
    #[cold]
    #[inline(never)]
    fn checkout_after_expiry(
        &mut self,
        key: K,
        slot: usize,
        wait_until: Option<Instant>,
        now: Instant,
    ) -> Result<Checkout<K, C>, CheckoutError> {
        let dest = self.dests.at(slot);
        self.timed_out += dest.expire_waiters(now, &mut self.events);
        self.checkout_at(key, None, wait_until, now)
    }

    /// Withdraws a queued checkout; `false` if it is no longer queued: then it was already
    /// answered, and its [`Event::Ready`], if that was the answer, is still to be (or was)
    /// drained from [`poll_event`](Self::poll_event), with a lease that must be checked in.
    pub fn cancel(&mut self, waiter: WaiterId) -> bool {
        let queued = self
            .dests
            .iter()
            .find(|(_, d)| d.waiters.iter().any(|w| w.id == waiter));
        let Some(key) = queued.map(|(k, _)| k.clone()) else {
            return false;
        };
        self.dest(&key).waiters.retain(|w| w.id != waiter);
        self.cancelled += 1;
        self.settle(&key);
        true
    }

    /// Reports that the connection asked for by `ticket` is open.
    ///
    /// For a ticket from [`Checkout::Connect`] the lease is returned to the caller; for one
    /// from [`Event::Connect`] the connection goes to the oldest waiter or into the idle set
    /// and `Ok(None)` is returned.
    pub fn connected(
        &mut self,
        ticket: Ticket<K>,
        conn: C,
        now: Instant,
    ) -> Result<Option<Lease<K, C>>, PoolError> {
        let now = self.tick(now);
        let Some(p) = self.take_pending(&ticket) else {
            self.events.push_back(Event::Close(conn));
            return Err(PoolError::UnknownTicket);
        };
        self.created += 1;
        let mut meta = Meta {
            created: now,
            last_used: now,
            last_checked: now,
            uses: 0,
        };
        let slot = self.dests.slot_or_insert(&p.key);
        let dest = self.dests.at(slot);
        if p.own {
            dest.connecting_own -= 1;
            dest.active += 1;
            meta.uses = 1;
            self.wait_time.record(now - p.started);
            self.settle(&p.key);
            return Ok(Some(Lease {
                key: p.key,
                conn,
                meta,
                health_check: false,
                slot,
            }));
        }
        dest.connecting_pool -= 1;
        self.give(&p.key, conn, meta, now);
        self.settle(&p.key);
        Ok(None)
    }

    /// Reports that the connect asked for by `ticket` failed.
    ///
    /// A failed [`Event::Connect`] fails the oldest waiter ([`Event::Failed`]); the room it
    /// held goes to the next waiters, and refilling `min_per_key` pauses for
    /// `reconnect_backoff`.
    pub fn connect_failed(&mut self, ticket: Ticket<K>, now: Instant) -> Result<(), PoolError> {
        let now = self.tick(now);
        let Some(p) = self.take_pending(&ticket) else {
            return Err(PoolError::UnknownTicket);
        };
        self.fail_pending(p, now);
        Ok(())
    }

    fn fail_pending(&mut self, p: Pending<K>, now: Instant) {
        self.failed += 1;
        self.total_load -= 1;
        let backoff = now + self.config.reconnect_backoff;
        let slot = self.dests.slot_or_insert(&p.key);
        let dest = self.dests.at(slot);
        dest.backoff_until = backoff;
        if p.own {
            dest.connecting_own -= 1;
        } else {
            dest.connecting_pool -= 1;
            self.timed_out += dest.expire_due_waiters(now, &mut self.events);
            if let Some(w) = dest.waiters.pop_front() {
                self.events.push_back(Event::Failed { waiter: w.id });
            }
        }
        self.settle(&p.key);
    }

    /// Gives up the connects older than `connect_timeout` (rare: a caller that times its
    /// own connects out never gets here).
    #[cold]
    fn expire_connects(&mut self, timeout: core::time::Duration, now: Instant) {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.started + timeout <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(p) = self.pending.remove(&id) {
                self.events.push_back(Event::ConnectTimedOut {
                    ticket: TicketId(id),
                });
                self.fail_pending(p, now);
            }
        }
    }

    /// Returns a lease. `reusable` is `false` when the connection is broken or in an unknown
    /// state (e.g. a request was abandoned mid-response); for a health-check lease it is the
    /// probe's verdict. Connections not kept are handed back in [`Event::Close`].
    pub fn checkin(
        &mut self,
        lease: Lease<K, C>,
        reusable: bool,
        now: Instant,
    ) -> Result<(), PoolError> {
        let now = self.tick(now);
        let Lease {
            key,
            conn,
            mut meta,
            health_check,
            slot,
        } = lease;
        let Some(dest) = self.dests.hinted(slot, &key) else {
            self.events.push_back(Event::Close(conn));
            return Err(PoolError::UnknownLease);
        };
        let count = if health_check {
            &mut dest.checking
        } else {
            &mut dest.active
        };
        if *count == 0 {
            self.events.push_back(Event::Close(conn));
            return Err(PoolError::UnknownLease);
        }
        *count -= 1;
        let used_up = !health_check && self.config.max_uses.is_some_and(|max| meta.uses >= max);
        let keep = reusable && !used_up && !expired(&self.timers, &meta, now);
        if keep && dest.waiters.is_empty() {
            // Hot path: back on the idle stack. The load is unchanged and nobody waits, so
            // `settle` would only act if the key is below its minimum or some fill is blocked
            // on `max_total` (and the key is not empty: it holds this idle connection).
            if !health_check {
                meta.last_used = now;
            }
            meta.last_checked = now;
            dest.idle.push(Idle { conn, meta });
            let min = self.config.min_per_key;
            if (min != 0 && dest.load() < min) || self.global_blocked {
                self.settle(&key);
            }
            return Ok(());
        }
        if !keep {
            self.total_load -= 1;
            self.closed += 1;
            self.events.push_back(Event::Close(conn));
        } else {
            if !health_check {
                meta.last_used = now;
            }
            meta.last_checked = now;
            self.give(&key, conn, meta, now);
        }
        self.settle(&key);
        Ok(())
    }

    /// Next thing the caller must do or know.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event<K, C>> {
        self.events.pop_front()
    }

    /// Whether [`poll_event`](Self::poll_event) has something (a caller may skip polling
    /// after each call: usually there is nothing).
    #[inline]
    #[must_use]
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Earliest time [`handle_timeout`](Self::handle_timeout) has work to do: a waiter's
    /// deadline, an idle connection's idle timeout, lifetime or health check, the end of a
    /// reconnect backoff. Costs O(connections + keys).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = &self.config;
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for dest in self.dests.values() {
            if !dest.waiters.is_empty() {
                // Deadlines need not be in queue order (`checkout_with_deadline`).
                dest.waiters.iter().for_each(|w| at(w.deadline));
            }
            let shrinkable = dest.open() > c.min_per_key;
            for idle in &dest.idle {
                let m = &idle.meta;
                if let Some(life) = c.max_lifetime {
                    at(m.created + life);
                }
                if let (true, Some(t)) = (shrinkable, c.idle_timeout) {
                    at(m.last_used + t);
                }
                if let Some(every) = c.health_check_interval {
                    at(m.last_checked + every);
                }
            }
            if dest.load() < c.min_per_key && dest.backoff_until > self.now {
                at(dest.backoff_until);
            }
        }
        if let Some(t) = c.connect_timeout {
            if let Some(first) = self.pending.values().map(|p| p.started).min() {
                at(first + t);
            }
        }
        next
    }

    /// Does what is due at `now`: gives up connects past `connect_timeout`, times out waiters, closes idle connections past their
    /// lifetime or idle timeout, lends idle connections out for health checks, refills
    /// `min_per_key`. Nothing happens when nothing is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.tick(now);
        if let Some(t) = self.config.connect_timeout {
            if self.pending.values().any(|p| p.started + t <= now) {
                self.expire_connects(t, now);
            }
        }
        let c = &self.config;
        let t = &self.timers;
        // In key order, through the index (the slots are borrowed one at a time).
        for &slot in self.dests.index.values() {
            let Some(dest) = self.dests.slots[slot].as_mut() else {
                continue;
            };
            self.timed_out += dest.expire_due_waiters(now, &mut self.events);
            let mut closable = dest.open().saturating_sub(c.min_per_key);
            let mut i = 0;
            while i < dest.idle.len() {
                let m = &dest.idle[i].meta;
                let idle_out = closable > 0 && idle_expired(t, m, now);
                let check_due = c
                    .health_check_interval
                    .is_some_and(|every| m.last_checked + every <= now);
                if expired(t, m, now) || idle_out {
                    let idle = dest.idle.remove(i);
                    closable = closable.saturating_sub(1);
                    self.total_load -= 1;
                    self.closed += 1;
                    self.events.push_back(Event::Close(idle.conn));
                } else if check_due {
                    let idle = dest.idle.remove(i);
                    dest.checking += 1;
                    self.events.push_back(Event::HealthCheck(Lease {
                        key: dest.key.clone(),
                        conn: idle.conn,
                        meta: idle.meta,
                        health_check: true,
                        slot,
                    }));
                } else {
                    i += 1;
                }
            }
        }
        self.fill_all();
        let min = self.config.min_per_key;
        self.dests.retain(|d| !is_empty(d, min));
    }

    /// A snapshot of the gauges, counters and wait-time histogram.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics {
            created: self.created,
            closed: self.closed,
            failed: self.failed,
            timed_out: self.timed_out,
            cancelled: self.cancelled,
            wait_time: self.wait_time.clone(),
            ..Metrics::default()
        };
        m.wait_time.record_zeros(self.idle_hits);
        for d in self.dests.values() {
            m.active += d.active;
            m.idle += d.idle.len();
            m.checking += d.checking;
            m.connecting += d.connecting_own + d.connecting_pool;
            m.waiting += d.waiters.len();
        }
        m
    }

    /// Open plus connecting connections to `key`.
    pub fn load(&self, key: &K) -> usize {
        self.dests.get(key).map_or(0, Dest::load)
    }

    /// Open plus connecting connections over all keys.
    pub fn total_load(&self) -> usize {
        self.total_load
    }

    // ---- internals -----------------------------------------------------------------------

    fn tick(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(self.id_step);
        id
    }

    fn take_pending(&mut self, ticket: &Ticket<K>) -> Option<Pending<K>> {
        match self.pending.get(&ticket.id) {
            Some(p) if p.key == ticket.key => self.pending.remove(&ticket.id),
            _ => None,
        }
    }

    /// The entry for `key`; callers make sure it exists (it does while it has load or waiters).
    fn dest(&mut self, key: &K) -> &mut Dest<K, C> {
        let slot = self.dests.slot_or_insert(key);
        self.dests.at(slot)
    }

    /// A connection became available: to the oldest waiter, else idle.
    fn give(&mut self, key: &K, conn: C, mut meta: Meta, now: Instant) {
        let slot = self.dests.slot_or_insert(key);
        let dest = self.dests.at(slot);
        // A waiter past its deadline is timed out, not served late: the answer does not depend
        // on whether the caller's timer or this checkin came first.
        self.timed_out += dest.expire_due_waiters(now, &mut self.events);
        if let Some(w) = dest.waiters.pop_front() {
            dest.active += 1;
            meta.uses += 1;
            self.wait_time.record(now - w.queued);
            let lease = Lease {
                key: key.clone(),
                conn,
                meta,
                health_check: false,
                slot,
            };
            self.events.push_back(Event::Ready {
                waiter: w.id,
                lease,
            });
        } else {
            dest.idle.push(Idle { conn, meta });
        }
    }

    /// Is there room for one more connection to `key`? When only `max_total` is in the way,
    /// closes the least recently used idle connection of another key to make it: one above its
    /// minimum, or for `demand` (a checkout, a waiter) any idle one; demand beats a warm reserve.
    fn has_room(&mut self, key: &K, demand: bool) -> bool {
        if self
            .dests
            .get(key)
            .is_some_and(|d| d.load() >= self.config.max_per_key)
        {
            return false;
        }
        if self.total_load < self.config.max_total {
            return true;
        }
        let min = self.config.min_per_key;
        let victim = self
            .dests
            .iter()
            .filter(|(k, d)| *k != key && (demand || d.open() > min))
            .filter_map(|(k, d)| {
                let (i, idle) = d
                    .idle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, i)| i.meta.last_used)?;
                Some((idle.meta.last_used, k.clone(), i))
            })
            .min_by_key(|(t, _, _)| *t);
        let Some((_, victim, i)) = victim else {
            self.global_blocked = true;
            return false;
        };
        let idle = self.dest(&victim).idle.remove(i);
        self.closed += 1;
        self.events.push_back(Event::Close(idle.conn));
        if is_empty(self.dest(&victim), min) {
            self.dests.remove(&victim);
        }
        // The total stays the same: the freed place goes to `key`.
        self.total_load -= 1;
        true
    }

    /// Asks for connections `key` needs (for its waiters and its minimum) while there is room.
    fn fill(&mut self, key: &K) {
        let min = self.config.min_per_key;
        let now = self.now;
        loop {
            let Some(d) = self.dests.get(key) else { return };
            let for_waiters = d.waiters.len() > d.connecting_pool;
            let for_min = d.load() < min && now >= d.backoff_until;
            if !(for_waiters || for_min) || !self.has_room(key, for_waiters) {
                return;
            }
            let id = self.new_id();
            self.dest(key).connecting_pool += 1;
            self.total_load += 1;
            self.pending.insert(
                id,
                Pending {
                    key: key.clone(),
                    own: false,
                    started: now,
                },
            );
            self.events.push_back(Event::Connect(Ticket {
                key: key.clone(),
                id,
            }));
        }
    }

    /// Fills every key, the one with the oldest waiter first.
    fn fill_all(&mut self) {
        self.global_blocked = false;
        let mut keys: Vec<(Instant, K)> = self
            .dests
            .iter()
            .map(|(k, d)| {
                (
                    d.waiters.front().map_or(Instant::FAR_FUTURE, |w| w.queued),
                    k.clone(),
                )
            })
            .collect();
        keys.sort_by_key(|k| k.0);
        for (_, key) in keys {
            self.fill(&key);
        }
    }

    /// End of every operation on `key`: fill it, offer freed room to keys blocked on
    /// `max_total`, drop the entry if it holds nothing.
    fn settle(&mut self, key: &K) {
        self.fill(key);
        if self.global_blocked {
            self.fill_all();
        }
        let min = self.config.min_per_key;
        if self.dests.get(key).is_some_and(|d| is_empty(d, min)) {
            self.dests.remove(key);
        }
    }
}

fn is_empty<K, C>(d: &Dest<K, C>, min: usize) -> bool {
    min == 0 && d.load() == 0 && d.waiters.is_empty()
}

/// Past its lifetime.
fn expired(t: &Timers, m: &Meta, now: Instant) -> bool {
    t.lifetime
        .is_some_and(|life| m.created.as_nanos().saturating_add(life) <= now.as_nanos())
}

/// Unused for the idle timeout.
fn idle_expired(t: &Timers, m: &Meta, now: Instant) -> bool {
    t.idle
        .is_some_and(|idle| m.last_used.as_nanos().saturating_add(idle) <= now.as_nanos())
}

/// `Config`'s lifetime and idle timeout in nanoseconds, converted once: `Instant + Duration`
/// (a `u128` conversion) on every checkout and checkin was measurable. Same saturation.
#[derive(Clone, Copy, Debug)]
struct Timers {
    lifetime: Option<u64>,
    idle: Option<u64>,
}

impl Timers {
    fn new(c: &Config) -> Self {
        let nanos = |d: core::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Timers {
            lifetime: c.max_lifetime.map(nanos),
            idle: c.idle_timeout.map(nanos),
        }
    }
}

impl<K, C> fmt::Debug for Pool<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.config)
            .field("keys", &self.dests.len())
            .field("total_load", &self.total_load)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use core::time::Duration;
    use proptest::prelude::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    fn cfg(min: usize, max: usize) -> Config {
        let mut c = Config::dynamic(min, max);
        c.wait_timeout = Duration::from_millis(100);
        c.idle_timeout = None;
        c.max_waiters_per_key = 8;
        c
    }

    fn drain<K: Ord + Clone, C>(p: &mut Pool<K, C>) -> Vec<Event<K, C>> {
        core::iter::from_fn(|| p.poll_event()).collect()
    }

    /// Checkout that must be answered with a connect; reports it and returns the lease.
    fn open(p: &mut Pool<u8, u32>, key: u8, conn: u32, now: Instant) -> Lease<u8, u32> {
        match p.checkout(key, now) {
            Ok(Checkout::Connect(t)) => p.connected(t, conn, now).unwrap().unwrap(),
            other => panic!("expected Connect, got {other:?}"),
        }
    }

    fn queued(p: &mut Pool<u8, u32>, key: u8, now: Instant) -> WaiterId {
        match p.checkout(key, now) {
            Ok(Checkout::Queued(w)) => w,
            other => panic!("expected Queued, got {other:?}"),
        }
    }

    fn closed(events: &[Event<u8, u32>]) -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Close(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn connect_timeout_frees_the_room_and_refuses_the_late_report() {
        let mut c = cfg(0, 1);
        c.connect_timeout = Some(Duration::from_millis(50));
        c.wait_timeout = Duration::from_secs(10);
        let mut p: Pool<u8, u32> = Pool::new(c);
        let Ok(Checkout::Connect(t1)) = p.checkout(1, ms(0)) else {
            panic!("expected a connect")
        };
        let w = queued(&mut p, 1, ms(10));
        assert_eq!(
            p.poll_timeout(),
            Some(ms(50)),
            "the connect deadline comes first"
        );
        p.handle_timeout(ms(49));
        assert!(
            drain(&mut p).is_empty(),
            "nothing is due before the deadline"
        );
        p.handle_timeout(ms(50));
        let ev = drain(&mut p);
        assert!(
            matches!(ev[0], Event::ConnectTimedOut { ticket } if ticket == t1.id()),
            "{ev:?}"
        );
        // The room went to the waiter: the pool asks for a connect on its behalf.
        let t2 = match &ev[1..] {
            [Event::Connect(t2)] => t2.id(),
            other => panic!("expected a connect for the waiter, got {other:?}"),
        };
        assert_ne!(t2, t1.id());
        let m = p.metrics();
        assert_eq!((m.failed, m.connecting, m.waiting), (1, 1, 1));
        // The caller's connect completes after all: refused, its connection handed back.
        assert!(matches!(
            p.connected(t1, 7, ms(60)),
            Err(PoolError::UnknownTicket)
        ));
        assert_eq!(closed(&drain(&mut p)), vec![7]);
        let _ = w;
    }

    #[test]
    fn connect_timeout_of_a_pool_connect_fails_its_waiter() {
        let mut c = cfg(0, 1);
        c.connect_timeout = Some(Duration::from_millis(50));
        c.wait_timeout = Duration::from_secs(10);
        let mut p: Pool<u8, u32> = Pool::new(c);
        let lease = open(&mut p, 1, 1, ms(0));
        let w = queued(&mut p, 1, ms(1));
        // The leased connection breaks: the pool connects for the waiter, and that hangs.
        p.checkin(lease, false, ms(2)).unwrap();
        let ev = drain(&mut p);
        let Some(Event::Connect(t)) = ev.into_iter().find(|e| matches!(e, Event::Connect(_)))
        else {
            panic!("expected a connect for the waiter")
        };
        p.handle_timeout(ms(52));
        let ev = drain(&mut p);
        assert!(matches!(ev[0], Event::ConnectTimedOut { ticket } if ticket == t.id()));
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Failed { waiter } if *waiter == w)),
            "{ev:?}"
        );
        assert_eq!(p.connect_failed(t, ms(53)), Err(PoolError::UnknownTicket));
        assert_eq!(p.metrics().connecting, 0);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn without_connect_timeout_a_connect_waits_for_its_report() {
        let mut p: Pool<u8, u32> = Pool::new(cfg(0, 1));
        let Ok(Checkout::Connect(t)) = p.checkout(1, ms(0)) else {
            panic!("expected a connect")
        };
        p.handle_timeout(ms(3_600_000));
        assert!(drain(&mut p).is_empty());
        assert!(p.connected(t, 1, ms(3_600_001)).unwrap().is_some());
        let mut bad = cfg(0, 1);
        bad.connect_timeout = Some(Duration::ZERO);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn exactly_max_connections_then_queue_then_full() {
        let mut c = cfg(0, 3);
        c.max_waiters_per_key = 2;
        let mut p = Pool::new(c);
        let leases: Vec<_> = (0..3).map(|i| open(&mut p, 1, i, ms(0))).collect();
        queued(&mut p, 1, ms(0));
        queued(&mut p, 1, ms(0));
        assert_eq!(p.checkout(1, ms(0)).unwrap_err(), CheckoutError::QueueFull);
        let m = p.metrics();
        assert_eq!((m.created, m.active, m.waiting, m.connecting), (3, 3, 2, 0));
        assert_eq!(p.load(&1), 3);
        assert!(drain(&mut p).is_empty(), "no connect beyond max");
        // Another destination has its own limit.
        let other = open(&mut p, 2, 9, ms(0));
        for l in leases {
            p.checkin(l, true, ms(1)).unwrap();
        }
        p.checkin(other, true, ms(1)).unwrap();
    }

    #[test]
    fn waiters_are_served_fifo_and_idle_is_lifo() {
        let mut p = Pool::new(cfg(0, 2));
        let a = open(&mut p, 1, 10, ms(0));
        let b = open(&mut p, 1, 11, ms(0));
        let w: Vec<_> = (0..3).map(|i| queued(&mut p, 1, ms(i))).collect();
        p.checkin(a, true, ms(5)).unwrap();
        p.checkin(b, true, ms(6)).unwrap();
        let mut served = vec![];
        for e in drain(&mut p) {
            let Event::Ready { waiter, lease } = e else {
                panic!("{e:?}")
            };
            served.push((waiter, *lease.conn()));
            // A third checkout never jumps the queue: the last waiter is still first in line.
            p.checkin(lease, true, ms(7)).unwrap();
        }
        assert_eq!(served[..2], [(w[0], 10), (w[1], 11)]);
        let Some(Event::Ready { waiter, lease }) = p.poll_event() else {
            panic!()
        };
        assert_eq!((waiter, *lease.conn()), (w[2], 10));
        p.checkin(lease, true, ms(8)).unwrap();
        // Idle now: 11 (checked in at 7), then 10 (at 8): LIFO hands out 10 first.
        let Ok(Checkout::Ready(l)) = p.checkout(1, ms(9)) else {
            panic!()
        };
        assert_eq!(*l.conn(), 10);
        let Ok(Checkout::Ready(l2)) = p.checkout(1, ms(9)) else {
            panic!()
        };
        assert_eq!(*l2.conn(), 11);
        assert_eq!(l.uses(), 4);
        let m = p.metrics();
        assert_eq!(m.wait_time.count(), 7);
        // Each waiter waited 5 ms (queued at 0, 1, 2; served at 5, 6, 7).
        assert_eq!(m.wait_time.max(), Duration::from_millis(5));
    }

    #[test]
    fn waiter_times_out_exactly_at_its_deadline() {
        let mut p = Pool::new(cfg(0, 1));
        let l = open(&mut p, 1, 1, ms(0));
        let w = queued(&mut p, 1, ms(10));
        assert_eq!(p.poll_timeout(), Some(ms(110)));
        p.handle_timeout(Instant::from_nanos(ms(110).as_nanos() - 1));
        assert!(drain(&mut p).is_empty());
        assert_eq!(p.metrics().waiting, 1);
        p.handle_timeout(ms(110));
        assert!(matches!(drain(&mut p)[..], [Event::TimedOut { waiter }] if waiter == w));
        assert_eq!(p.metrics().timed_out, 1);
        assert_eq!(p.poll_timeout(), None);
        // The connection comes back to an empty queue and goes idle.
        p.checkin(l, true, ms(120)).unwrap();
        assert!(drain(&mut p).is_empty());
        assert_eq!(p.metrics().idle, 1);
    }

    #[test]
    fn idle_timeout_shrinks_dynamic_pool_to_min() {
        let mut c = cfg(1, 4);
        c.idle_timeout = Some(Duration::from_secs(1));
        let mut p = Pool::new(c);
        let leases: Vec<_> = (0..4).map(|i| open(&mut p, 1, i, ms(0))).collect();
        for (i, l) in leases.into_iter().enumerate() {
            p.checkin(l, true, ms(i as u64)).unwrap();
        }
        assert_eq!(p.poll_timeout(), Some(ms(1000)));
        p.handle_timeout(ms(999));
        assert!(drain(&mut p).is_empty());
        p.handle_timeout(ms(1000));
        assert_eq!(closed(&drain(&mut p)), [0]);
        p.handle_timeout(ms(1003));
        // Least recently used go first; the warmest one stays as the minimum.
        assert_eq!(closed(&drain(&mut p)), [1, 2]);
        assert_eq!(p.metrics().idle, 1);
        assert_eq!(p.poll_timeout(), None, "at min: nothing more to shrink");
        p.handle_timeout(ms(100_000));
        assert!(drain(&mut p).is_empty());
    }

    #[test]
    fn reload_changes_limits_and_closes_a_removed_keys_idle() {
        let mut p = Pool::new(cfg(0, 1));
        let a = open(&mut p, 1, 10, ms(0));
        p.checkin(a, true, ms(2)).unwrap();
        let b = open(&mut p, 2, 20, ms(3));
        p.checkin(b, true, ms(4)).unwrap();
        // A larger limit: a second connection to key 1 without waiting.
        p.set_config(cfg(0, 4));
        assert_eq!(p.config().max_per_key, 4);
        let l1 = match p.checkout(1, ms(5)) {
            Ok(Checkout::Ready(l)) => l,
            other => panic!("expected the idle one, got {other:?}"),
        };
        assert!(matches!(p.checkout(1, ms(5)), Ok(Checkout::Connect(_))));
        // Key 2 removed: its idle connection closes now, key 1's lent one stays.
        assert_eq!(p.close_idle(&2), 1);
        assert_eq!(closed(&drain(&mut p)), [20]);
        assert_eq!(p.close_idle(&2), 0);
        assert_eq!(p.close_idle(&9), 0);
        assert_eq!(p.metrics().idle, 0);
        assert_eq!(p.metrics().active, 1);
        p.checkin(l1, true, ms(6)).unwrap();
    }

    #[test]
    fn fixed_pool_prewarms_and_replaces_retired_connections() {
        let mut c = cfg(2, 2);
        c.max_lifetime = Some(Duration::from_secs(10));
        let mut p = Pool::new(c);
        p.prewarm(7, ms(0));
        let tickets: Vec<_> = drain(&mut p)
            .into_iter()
            .map(|e| match e {
                Event::Connect(t) => t,
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(tickets.len(), 2);
        for (i, t) in tickets.into_iter().enumerate() {
            assert_eq!(*t.key(), 7);
            assert!(p.connected(t, i as u32, ms(0)).unwrap().is_none());
        }
        assert_eq!(p.metrics().idle, 2);
        assert_eq!(p.poll_timeout(), Some(ms(10_000)));
        p.handle_timeout(ms(10_000));
        let ev = drain(&mut p);
        assert_eq!(closed(&ev), [0, 1]);
        assert_eq!(
            ev.iter().filter(|e| matches!(e, Event::Connect(_))).count(),
            2
        );
        assert_eq!(p.metrics().connecting, 2);
    }

    #[test]
    fn max_lifetime_and_max_uses_retire_on_checkin() {
        let mut c = cfg(0, 4);
        c.max_lifetime = Some(Duration::from_secs(5));
        c.max_uses = Some(2);
        let mut p = Pool::new(c);
        let l = open(&mut p, 1, 1, ms(0));
        p.checkin(l, true, ms(4999)).unwrap();
        let Ok(Checkout::Ready(l)) = p.checkout(1, ms(4999)) else {
            panic!()
        };
        assert_eq!(l.uses(), 2);
        p.checkin(l, true, ms(4999)).unwrap();
        assert_eq!(closed(&drain(&mut p)), [1], "second use was the last");
        let l = open(&mut p, 1, 2, ms(5000));
        p.checkin(l, true, ms(10_000)).unwrap();
        assert_eq!(closed(&drain(&mut p)), [2], "lifetime reached while leased");
        // An idle connection past its lifetime is not handed out even before handle_timeout.
        let l = open(&mut p, 1, 3, ms(10_000));
        p.checkin(l, true, ms(10_001)).unwrap();
        let Ok(Checkout::Connect(t)) = p.checkout(1, ms(15_000)) else {
            panic!()
        };
        assert_eq!(closed(&drain(&mut p)), [3]);
        p.connect_failed(t, ms(15_000)).unwrap();
        let m = p.metrics();
        assert_eq!((m.created, m.closed, m.failed, m.idle), (3, 3, 1, 0));
    }

    #[test]
    fn failed_connect_retries_for_waiters_then_fails_one() {
        let mut p = Pool::new(cfg(0, 1));
        let Ok(Checkout::Connect(t1)) = p.checkout(1, ms(0)) else {
            panic!()
        };
        let w1 = queued(&mut p, 1, ms(1));
        let w2 = queued(&mut p, 1, ms(2));
        // The caller's own connect failed: its room goes to the waiters (a retry for them).
        p.connect_failed(t1, ms(3)).unwrap();
        let [Event::Connect(t2)] = &mut drain(&mut p)[..] else {
            panic!()
        };
        let t2 = Ticket {
            key: t2.key,
            id: t2.id,
        };
        // A connect made for the waiters failed: the oldest waiter fails, the next gets a retry.
        p.connect_failed(t2, ms(4)).unwrap();
        let ev = drain(&mut p);
        assert!(
            matches!(ev[0], Event::Failed { waiter } if waiter == w1),
            "{ev:?}"
        );
        let Event::Connect(t3) = &ev[1] else {
            panic!("{ev:?}")
        };
        let t3 = Ticket {
            key: t3.key,
            id: t3.id,
        };
        assert_eq!(ev.len(), 2);
        assert!(p.connected(t3, 5, ms(5)).unwrap().is_none());
        let ev = drain(&mut p);
        let [Event::Ready { waiter, lease }] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!((*waiter, *lease.conn()), (w2, 5));
        assert_eq!(p.metrics().failed, 2);
        assert_eq!(p.metrics().wait_time.max(), Duration::from_millis(3));
    }

    #[test]
    fn failed_min_refill_backs_off() {
        let mut p: Pool<u8, u32> = Pool::new(cfg(1, 1));
        p.prewarm(1, ms(0));
        let Some(Event::Connect(t)) = p.poll_event() else {
            panic!()
        };
        p.connect_failed(t, ms(0)).unwrap();
        assert!(drain(&mut p).is_empty(), "no reconnect storm");
        assert_eq!(p.poll_timeout(), Some(ms(1000)));
        p.handle_timeout(ms(999));
        assert!(drain(&mut p).is_empty());
        p.handle_timeout(ms(1000));
        assert!(matches!(drain(&mut p)[..], [Event::Connect(_)]));
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn health_checks_close_failures_and_keep_the_healthy() {
        let mut c = cfg(0, 2);
        c.health_check_interval = Some(Duration::from_secs(10));
        let mut p = Pool::new(c);
        let a = open(&mut p, 1, 1, ms(0));
        let b = open(&mut p, 1, 2, ms(0));
        p.checkin(a, true, ms(0)).unwrap();
        p.checkin(b, true, ms(1)).unwrap();
        assert_eq!(p.poll_timeout(), Some(ms(10_000)));
        p.handle_timeout(ms(10_001));
        let mut checks: Vec<_> = drain(&mut p)
            .into_iter()
            .map(|e| match e {
                Event::HealthCheck(l) => l,
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|l| l.is_health_check()));
        assert_eq!(p.metrics().checking, 2);
        // While both are out being checked, a checkout must wait (they count as open).
        let w = queued(&mut p, 1, ms(10_002));
        let bad = checks.pop().unwrap();
        let good = checks.pop().unwrap();
        p.checkin(bad, false, ms(10_003)).unwrap();
        // The failed one is closed; its room is used to connect for the waiter.
        let ev = drain(&mut p);
        assert_eq!(closed(&ev), [2]);
        assert!(matches!(ev[1], Event::Connect(_)));
        p.checkin(good, true, ms(10_004)).unwrap();
        let ev = drain(&mut p);
        let [Event::Ready { waiter, lease }] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!((*waiter, *lease.conn(), lease.uses()), (w, 1, 2));
    }

    #[test]
    fn early_or_repeated_handle_timeout_is_a_noop() {
        let mut c = cfg(1, 2);
        c.idle_timeout = Some(Duration::from_millis(50));
        c.health_check_interval = Some(Duration::from_millis(70));
        let mut p = Pool::new(c);
        let a = open(&mut p, 1, 1, ms(0));
        let b = open(&mut p, 1, 2, ms(0));
        let _w = queued(&mut p, 1, ms(0));
        p.checkin(a, true, ms(0)).unwrap(); // to the waiter
        p.checkin(b, true, ms(0)).unwrap(); // idle, above min
        drain(&mut p);
        assert_eq!(p.poll_timeout(), Some(ms(50)));
        let before = p.metrics();
        for t in [0, 10, 49, 20] {
            p.handle_timeout(ms(t));
            assert!(drain(&mut p).is_empty(), "at {t} ms");
        }
        assert_eq!(p.metrics(), before);
        assert_eq!(p.poll_timeout(), Some(ms(50)));
        p.handle_timeout(ms(50));
        assert_eq!(drain(&mut p).len(), 1);
        p.handle_timeout(ms(50));
        p.handle_timeout(ms(50));
        assert!(drain(&mut p).is_empty());
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut p = Pool::new(cfg(0, 1));
        let l = open(&mut p, 1, 1, ms(100));
        let w1 = queued(&mut p, 1, ms(100));
        // An older `now` counts as 100 ms: the deadline is 200, not 150.
        let w2 = queued(&mut p, 1, ms(50));
        p.handle_timeout(ms(150));
        p.handle_timeout(ms(10));
        assert!(drain(&mut p).is_empty());
        assert_eq!(p.poll_timeout(), Some(ms(200)));
        p.handle_timeout(ms(200));
        let ev = drain(&mut p);
        assert!(
            matches!(ev[..], [Event::TimedOut { waiter: a }, Event::TimedOut { waiter: b }] if a == w1 && b == w2)
        );
        p.checkin(l, true, ms(0)).unwrap();
        assert_eq!(p.metrics().wait_time.count(), 1);
    }

    #[test]
    fn a_waiter_past_its_deadline_is_timed_out_not_served_late() {
        // The caller's timer for the waiter (due at 100) and a checkin at 150 race; the
        // checkin is processed first. The waiter must not get a lease 50 ms after its
        // deadline: it times out, and the connection goes idle.
        let mut p = Pool::new(cfg(0, 1));
        let l = open(&mut p, 1, 1, ms(0));
        let w = queued(&mut p, 1, ms(0));
        p.checkin(l, true, ms(150)).unwrap();
        let ev = drain(&mut p);
        assert!(
            matches!(ev[..], [Event::TimedOut { waiter }] if waiter == w),
            "{ev:?}"
        );
        let m = p.metrics();
        assert_eq!((m.timed_out, m.idle, m.waiting), (1, 1, 0));
        // The same at the deadline itself (a deadline equal to `now` has passed).
        let l = match p.checkout(1, ms(150)) {
            Ok(Checkout::Ready(l)) => l,
            other => panic!("{other:?}"),
        };
        let w = queued(&mut p, 1, ms(150));
        p.checkin(l, true, ms(250)).unwrap();
        assert!(matches!(drain(&mut p)[..], [Event::TimedOut { waiter }] if waiter == w));
        // A checkout after a waiter's deadline times that waiter out first and does not queue
        // behind it: it is first in line for the next connection.
        let l = match p.checkout(1, ms(300)) {
            Ok(Checkout::Ready(l)) => l,
            other => panic!("{other:?}"),
        };
        let w = queued(&mut p, 1, ms(300));
        let l2 = match p.checkout(1, ms(400)) {
            Ok(Checkout::Queued(w2)) => {
                assert!(matches!(drain(&mut p)[..], [Event::TimedOut { waiter }] if waiter == w));
                w2
            }
            other => panic!("{other:?}"),
        };
        p.checkin(l, true, ms(401)).unwrap();
        assert!(matches!(drain(&mut p)[..], [Event::Ready { waiter, .. }] if waiter == l2));
    }

    #[test]
    fn checkout_with_deadline_bounds_the_wait_out_of_queue_order() {
        let mut p = Pool::new(cfg(0, 1)); // wait_timeout 100 ms
        let l = open(&mut p, 1, 1, ms(0));
        let w1 = queued(&mut p, 1, ms(0));
        let Ok(Checkout::Queued(w2)) = p.checkout_with_deadline(1, ms(30), ms(0)) else {
            panic!()
        };
        // A deadline later than `now + wait_timeout` does not extend the wait.
        let Ok(Checkout::Queued(w3)) = p.checkout_with_deadline(1, ms(1000), ms(0)) else {
            panic!()
        };
        // The second waiter's deadline comes first although it queued behind the first.
        assert_eq!(p.poll_timeout(), Some(ms(30)));
        p.handle_timeout(ms(30));
        assert!(matches!(drain(&mut p)[..], [Event::TimedOut { waiter }] if waiter == w2));
        assert_eq!(p.poll_timeout(), Some(ms(100)));
        // FIFO among the rest.
        p.checkin(l, true, ms(40)).unwrap();
        let mut ev = drain(&mut p);
        let Some(Event::Ready { waiter, lease: l }) = ev.pop() else {
            panic!("{ev:?}")
        };
        assert!(ev.is_empty());
        assert_eq!(waiter, w1);
        p.handle_timeout(ms(100));
        assert!(matches!(drain(&mut p)[..], [Event::TimedOut { waiter }] if waiter == w3));
        // A deadline already passed: queued, timed out at the next handle_timeout.
        let Ok(Checkout::Queued(w4)) = p.checkout_with_deadline(1, ms(50), ms(100)) else {
            panic!()
        };
        assert_eq!(p.poll_timeout(), Some(ms(50)));
        p.handle_timeout(ms(100));
        assert!(matches!(drain(&mut p)[..], [Event::TimedOut { waiter }] if waiter == w4));
        p.checkin(l, true, ms(101)).unwrap();
        let m = p.metrics();
        assert_eq!((m.timed_out, m.waiting, m.idle), (3, 0, 1));
    }

    #[test]
    fn try_new_validates_and_cancel_is_counted() {
        let mut c = cfg(0, 1);
        c.health_check_interval = Some(Duration::ZERO);
        assert_eq!(
            Pool::<u8, u32>::try_new(c).unwrap_err(),
            ConfigError::ZeroDuration {
                field: "health_check_interval"
            }
        );
        let mut p = Pool::try_new(cfg(0, 1)).unwrap();
        let l = open(&mut p, 1, 1, ms(0));
        let w = queued(&mut p, 1, ms(0));
        assert!(p.cancel(w));
        assert_eq!(p.metrics().cancelled, 1);
        p.checkin(l, true, ms(1)).unwrap();
    }

    #[test]
    fn validator_rejects_on_checkout() {
        let mut p = Pool::new(cfg(0, 3)).with_validator(|c: &u32| *c % 2 == 0);
        let a = open(&mut p, 1, 2, ms(0));
        let b = open(&mut p, 1, 3, ms(0));
        p.checkin(a, true, ms(0)).unwrap();
        p.checkin(b, true, ms(1)).unwrap();
        let Ok(Checkout::Ready(l)) = p.checkout(1, ms(2)) else {
            panic!()
        };
        assert_eq!(*l.conn(), 2);
        assert_eq!(closed(&drain(&mut p)), [3]);
        p.checkin(l, true, ms(3)).unwrap();
    }

    #[test]
    fn global_limit_evicts_idle_of_other_keys_or_queues() {
        let mut c = cfg(0, 2);
        c.max_total = 2;
        let mut p = Pool::new(c);
        let a = open(&mut p, 1, 1, ms(0));
        let b = open(&mut p, 1, 2, ms(0));
        p.checkin(b, true, ms(1)).unwrap();
        // Key 2 needs room: key 1's idle connection is closed for it.
        let c2 = open(&mut p, 2, 3, ms(2));
        assert_eq!(closed(&drain(&mut p)), [2]);
        assert_eq!(p.total_load(), 2);
        // Nothing idle left to evict: key 3 waits, and gets a connect once room frees.
        let w = queued(&mut p, 3, ms(3));
        p.checkin(a, false, ms(4)).unwrap();
        let ev = drain(&mut p);
        assert_eq!(closed(&ev), [1]);
        let Event::Connect(t) = &ev[1] else {
            panic!("{ev:?}")
        };
        assert_eq!(*t.key(), 3);
        let t = Ticket {
            key: t.key,
            id: t.id,
        };
        assert!(p.connected(t, 4, ms(5)).unwrap().is_none());
        assert!(matches!(drain(&mut p)[..], [Event::Ready { waiter, .. }] if waiter == w));
        p.checkin(c2, true, ms(6)).unwrap();
        assert!(p.total_load() <= 2);
    }

    #[test]
    fn has_events_says_whether_poll_event_has_one() {
        let mut p = Pool::new(cfg(0, 1));
        assert!(!p.has_events());
        let Ok(Checkout::Connect(_)) = p.checkout(1u8, ms(0)) else {
            panic!()
        };
        let foreign = Ticket { key: 1u8, id: 999 };
        let _ = p.connected(foreign, 5, ms(0));
        assert!(p.has_events(), "the foreign connection is to be closed");
        assert_eq!(closed(&drain(&mut p)), [5]);
        assert!(!p.has_events());
        assert!(p.poll_event().is_none());
    }

    #[test]
    fn misuse_is_an_error_and_leaks_nothing() {
        let mut p = Pool::new(cfg(0, 1));
        let mut q = Pool::new(cfg(0, 1));
        let Ok(Checkout::Connect(t)) = q.checkout(1, ms(0)) else {
            panic!()
        };
        let foreign = Ticket { key: 1u8, id: 999 };
        assert_eq!(
            p.connected(foreign, 5, ms(0)).unwrap_err(),
            PoolError::UnknownTicket
        );
        assert_eq!(closed(&drain(&mut p)), [5]);
        let l = q.connected(t, 6, ms(0)).unwrap().unwrap();
        assert_eq!(
            p.checkin(l, true, ms(0)).unwrap_err(),
            PoolError::UnknownLease
        );
        assert_eq!(closed(&drain(&mut p)), [6]);
        assert_eq!(p.metrics(), Metrics::default());
        let w = queued(&mut q, 1, ms(0));
        assert!(q.cancel(w));
        assert!(!q.cancel(w));
        assert_eq!(q.metrics().waiting, 0);
    }

    #[test]
    fn slots_of_removed_keys_are_reused_and_leases_still_find_their_key() {
        let mut p = Pool::new(cfg(0, 2));
        let a = open(&mut p, 1, 1, ms(0));
        let b = open(&mut p, 2, 2, ms(0));
        assert_eq!((a.slot, b.slot), (0, 1));
        // Key 1 empties and goes away; key 3 takes its slot.
        p.checkin(a, false, ms(1)).unwrap();
        assert_eq!(closed(&drain(&mut p)), [1]);
        assert!(p.dests.get(&1).is_none());
        let c = open(&mut p, 3, 3, ms(2));
        assert_eq!(c.slot, 0);
        // A lease whose slot hint names another key is found through the index.
        let mut b = b;
        b.slot = 0;
        p.checkin(b, true, ms(3)).unwrap();
        assert_eq!(
            p.dests.get(&2).map(|d| (d.idle.len(), d.active)),
            Some((1, 0))
        );
        assert_eq!(
            p.dests.get(&3).map(|d| (d.idle.len(), d.active)),
            Some((0, 1))
        );
        // An out-of-range hint too.
        let mut c = c;
        c.slot = 77;
        p.checkin(c, true, ms(4)).unwrap();
        let m = p.metrics();
        assert_eq!((m.active, m.idle, m.closed), (0, 2, 1));
        // The checkout cache follows the key, not the slot.
        let Ok(Checkout::Ready(l)) = p.checkout(3, ms(5)) else {
            panic!()
        };
        assert_eq!((*l.key(), *l.conn()), (3, 3));
        let Ok(Checkout::Ready(l2)) = p.checkout(2, ms(5)) else {
            panic!()
        };
        assert_eq!(*l2.key(), 2);
        p.checkin(l, true, ms(6)).unwrap();
        p.checkin(l2, true, ms(6)).unwrap();
    }

    #[test]
    fn huge_timers_saturate_instead_of_expiring() {
        let mut c = cfg(0, 1);
        c.idle_timeout = Some(Duration::MAX);
        c.max_lifetime = Some(Duration::MAX);
        let mut p = Pool::new(c);
        let l = open(&mut p, 1, 1, Instant::from_nanos(u64::MAX / 2));
        let late = Instant::from_nanos(u64::MAX - 1);
        p.checkin(l, true, late).unwrap();
        let Ok(Checkout::Ready(l)) = p.checkout(1, late) else {
            panic!("expired early")
        };
        p.checkin(l, true, late).unwrap();
        p.handle_timeout(late);
        assert!(drain(&mut p).is_empty());
        assert_eq!(p.poll_timeout(), Some(Instant::FAR_FUTURE));
    }

    // ---- property tests ------------------------------------------------------------------

    #[derive(Clone, Debug)]
    enum Op {
        Checkout(u8),
        CheckoutBy(u8, u64),
        Connected(usize),
        Failed(usize),
        Checkin(usize, bool),
        Cancel(usize),
        Advance(u64),
        Timeout,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3).prop_map(Op::Checkout),
            1 => (0u8..3, 0u64..80).prop_map(|(k, d)| Op::CheckoutBy(k, d)),
            3 => any::<usize>().prop_map(Op::Connected),
            1 => any::<usize>().prop_map(Op::Failed),
            4 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(i, r)| Op::Checkin(i, r)),
            1 => any::<usize>().prop_map(Op::Cancel),
            2 => (0u64..60).prop_map(Op::Advance),
            2 => Just(Op::Timeout),
        ]
    }

    #[derive(Default)]
    struct Model {
        tickets: Vec<Ticket<u8>>,
        leases: Vec<Lease<u8, u32>>,
        waiters: Vec<WaiterId>,
        /// Each queued checkout's deadline (from its `wait_timeout` or its own).
        deadlines: alloc::collections::BTreeMap<WaiterId, Instant>,
        now: Instant,
        closes: u64,
        closed_conns: alloc::collections::BTreeSet<u32>,
        next_conn: u32,
    }

    impl Model {
        fn absorb(&mut self, p: &mut Pool<u8, u32>) {
            while let Some(e) = p.poll_event() {
                match e {
                    Event::Connect(t) => self.tickets.push(t),
                    Event::Ready { waiter, lease } => {
                        // Never served at or past its deadline.
                        assert!(self.now < self.deadlines[&waiter]);
                        self.answer(waiter);
                        self.leases.push(lease);
                    }
                    Event::TimedOut { waiter } => {
                        // Exactly at or after its deadline, never before.
                        assert!(self.now >= self.deadlines[&waiter]);
                        self.answer(waiter);
                    }
                    Event::Failed { waiter } => self.answer(waiter),
                    Event::ConnectTimedOut { ticket } => {
                        let i = self
                            .tickets
                            .iter()
                            .position(|t| t.id() == ticket)
                            .expect("timed out a ticket nobody holds");
                        // Abandoned: reporting it now is refused either way.
                        let t = self.tickets.swap_remove(i);
                        assert_eq!(p.connect_failed(t, self.now), Err(PoolError::UnknownTicket));
                    }
                    Event::HealthCheck(l) => self.leases.push(l),
                    Event::Close(conn) => {
                        self.closes += 1;
                        assert!(self.closed_conns.insert(conn), "{conn} closed twice");
                    }
                }
            }
        }
        fn answer(&mut self, w: WaiterId) {
            let i = self
                .waiters
                .iter()
                .position(|x| *x == w)
                .expect("waiter answered twice");
            self.waiters.remove(i);
        }
        fn check(&self, p: &Pool<u8, u32>, c: &Config) {
            let m = p.metrics();
            assert!(p.total_load() <= c.max_total);
            let mut total = 0;
            for k in 0..3 {
                assert!(p.load(&k) <= c.max_per_key);
                total += p.load(&k);
                if let Some(d) = p.dests.get(&k) {
                    assert!(d.waiters.len() <= c.max_waiters_per_key);
                    // Liveness: nobody waits while a connection idles or while there is room.
                    if !d.waiters.is_empty() {
                        assert!(d.idle.is_empty());
                        assert!(
                            d.connecting_pool >= d.waiters.len()
                                || d.load() >= c.max_per_key
                                || p.total_load() >= c.max_total
                        );
                        if d.connecting_pool < d.waiters.len() && d.load() < c.max_per_key {
                            // Blocked by `max_total` only: nothing idle anywhere to evict.
                            assert!(p.dests.values().all(|o| o.idle.is_empty()));
                        }
                    }
                }
            }
            assert_eq!(total, p.total_load());
            assert_eq!(
                m.created,
                m.closed + (m.active + m.idle + m.checking) as u64
            );
            assert_eq!(m.active + m.checking, self.leases.len());
            assert_eq!(m.connecting, self.tickets.len());
            assert_eq!(p.pending.len(), self.tickets.len());
            assert_eq!(m.waiting, self.waiters.len());
            assert_eq!(m.closed, self.closes);
            // A connection is in exactly one place: leased, idle or closed.
            let mut seen = alloc::collections::BTreeSet::new();
            let idle = p.dests.values().flat_map(|d| d.idle.iter().map(|i| i.conn));
            for conn in self.leases.iter().map(|l| *l.conn()).chain(idle) {
                assert!(seen.insert(conn) && !self.closed_conns.contains(&conn));
            }
            assert!(p.events.is_empty());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_operations_keep_the_invariants(
            min in 0usize..2,
            max in 0usize..4,
            max_total in 0usize..6,
            max_waiters in 0usize..3,
            connect_timeout in prop::option::of(1u64..200),
            ops in prop::collection::vec(op(), 1..120),
        ) {
            let mut c = cfg(min, max);
            c.max_total = max_total;
            c.max_waiters_per_key = max_waiters;
            c.wait_timeout = Duration::from_millis(50);
            c.idle_timeout = Some(Duration::from_millis(100));
            c.max_lifetime = Some(Duration::from_millis(300));
            c.max_uses = Some(3);
            c.health_check_interval = Some(Duration::from_millis(80));
            c.reconnect_backoff = Duration::from_millis(20);
            c.connect_timeout = connect_timeout.map(Duration::from_millis);
            let mut p = Pool::new(c.clone());
            let mut m = Model::default();
            let mut now = 0u64;
            for key in 0..3 { p.prewarm(key, ms(now)); }
            m.now = ms(now);
            m.absorb(&mut p);
            for op in ops {
                match op {
                    Op::Checkout(k) => match p.checkout(k, ms(now)) {
                        Ok(Checkout::Ready(l)) => m.leases.push(l),
                        Ok(Checkout::Connect(t)) => m.tickets.push(t),
                        Ok(Checkout::Queued(w)) => {
                            m.deadlines.insert(w, ms(now) + c.wait_timeout);
                            m.waiters.push(w);
                        }
                        Err(CheckoutError::QueueFull) => {}
                    },
                    Op::CheckoutBy(k, d) => match p.checkout_with_deadline(k, ms(now + d), ms(now)) {
                        Ok(Checkout::Ready(l)) => m.leases.push(l),
                        Ok(Checkout::Connect(t)) => m.tickets.push(t),
                        Ok(Checkout::Queued(w)) => {
                            m.deadlines.insert(w, ms(now + d).min(ms(now) + c.wait_timeout));
                            m.waiters.push(w);
                        }
                        Err(CheckoutError::QueueFull) => {}
                    },
                    Op::Connected(i) if !m.tickets.is_empty() => {
                        let t = m.tickets.swap_remove(i % m.tickets.len());
                        m.next_conn += 1;
                        if let Some(l) = p.connected(t, m.next_conn, ms(now)).unwrap() {
                            m.leases.push(l);
                        }
                    }
                    Op::Failed(i) if !m.tickets.is_empty() => {
                        let t = m.tickets.swap_remove(i % m.tickets.len());
                        p.connect_failed(t, ms(now)).unwrap();
                    }
                    Op::Checkin(i, r) if !m.leases.is_empty() => {
                        let l = m.leases.swap_remove(i % m.leases.len());
                        p.checkin(l, r, ms(now)).unwrap();
                    }
                    Op::Cancel(i) if !m.waiters.is_empty() => {
                        let w = m.waiters.swap_remove(i % m.waiters.len());
                        prop_assert!(p.cancel(w));
                    }
                    Op::Advance(d) => now += d,
                    Op::Timeout if p.poll_timeout().is_some_and(|t| t <= ms(now)) => {
                        p.handle_timeout(ms(now));
                        // Everything due was done: no deadline left at or before `now`.
                        let next = p.poll_timeout();
                        prop_assert!(next.is_none_or(|t| t > ms(now)), "{:?} <= {}", next, now);
                    }
                    _ => {}
                }
                m.now = ms(now);
                m.absorb(&mut p);
                m.check(&p, &c);
            }
            // Wind down: report every ticket, return every lease; let unserved waiters time
            // out (which may lend health checks or ask for refills); wind down again.
            for round in 0..2 {
                for _ in 0..100 {
                    if m.tickets.is_empty() && m.leases.is_empty() { break; }
                    for t in core::mem::take(&mut m.tickets) {
                        m.next_conn += 1;
                        if let Some(l) = p.connected(t, m.next_conn, ms(now)).unwrap() { m.leases.push(l); }
                    }
                    for l in core::mem::take(&mut m.leases) { p.checkin(l, true, ms(now)).unwrap(); }
                    m.now = ms(now);
                    m.absorb(&mut p);
                    m.check(&p, &c);
                }
                if round == 0 {
                    now += 1000;
                    p.handle_timeout(ms(now));
                    m.now = ms(now);
                    m.absorb(&mut p);
                    m.check(&p, &c);
                }
            }
            let end = p.metrics();
            prop_assert_eq!(end.active + end.checking + end.connecting, 0);
            prop_assert_eq!(end.waiting, 0);
        }
    }
}
