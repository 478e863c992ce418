//! One pool shared by several I/O workers: shards behind short locks.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::vec::Vec;

use ferry_proto::Instant;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::pool::{Checkout, CheckoutError, Event, Lease, Pool, PoolError, Ticket, WaiterId};

/// A pool shared by several threads (`Send + Sync`, `&self` methods): `N` [`Pool`] shards, each
/// behind its own `Mutex`, a destination always in the same shard (chosen by a fixed hash of
/// its key). It reads no clock and starts no thread; callers pass `now` as with [`Pool`].
///
/// # Trade-off against per-worker pools
///
/// - Shared: fewer connections in total (all workers reuse one warm set per destination) and
///   exact per-destination limits, FIFO waiters and LIFO reuse, because a destination lives in
///   one shard. The price is a lock per call and cache-line traffic between cores. No I/O
///   happens under a lock (a call is a few map operations), and workers that talk to different
///   destinations mostly hit different shards; but one hot destination serializes on its shard,
///   and `max_total` is split evenly over the shards, so one shard can be full while another
///   has room.
/// - Per-worker ([`Pool`] on each worker): no locks, no sharing, best locality, and a warm
///   connection is always on the worker's own core; but `workers × max_per_key` connections
///   may be open to a destination.
///
/// Choose per-worker pools for a few hot upstreams that can take the connections, shared for
/// many destinations or upstreams with tight connection limits (databases).
///
/// # Events
///
/// Events of all shards come out of [`poll_event`](Self::poll_event) on whichever thread asks:
/// an [`Event::Ready`] may answer another worker's queued checkout, so the caller routes
/// `Ready`/`TimedOut`/`Failed` by [`WaiterId`] (ids are unique over all shards).
pub struct Shared<K, C> {
    shards: Vec<Mutex<Pool<K, C>>>,
    next_poll: AtomicUsize,
}

impl<K: Ord + Clone + Hash, C> Shared<K, C> {
    /// `shards` shards (at least 1, at most `config.max_total`), each with `config` except
    /// `max_total`, which is split evenly between them.
    pub fn new(config: Config, shards: usize) -> Self {
        let n = shards.clamp(1, config.max_total.max(1));
        let shards = (0..n)
            .map(|i| {
                let mut c = config.clone();
                c.max_total = config.max_total / n;
                Mutex::new(Pool::with_ids(c, i as u64, n as u64))
            })
            .collect();
        Shared {
            shards,
            next_poll: AtomicUsize::new(0),
        }
    }

    /// [`new`](Self::new) after checking `config` with [`Config::validate`].
    pub fn try_new(config: Config, shards: usize) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Shared::new(config, shards))
    }

    /// See [`Pool::with_validator`].
    pub fn with_validator(mut self, validate: fn(&C) -> bool) -> Self {
        self.shards = self
            .shards
            .into_iter()
            .map(|m| {
                Mutex::new(
                    m.into_inner()
                        .unwrap_or_else(PoisonError::into_inner)
                        .with_validator(validate),
                )
            })
            .collect();
        self
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// A shard's lock. A panic while it was held (only possible in a caller's validator)
    /// left the shard consistent between calls, so poisoning is ignored.
    fn lock(&self, i: usize) -> MutexGuard<'_, Pool<K, C>> {
        self.shards[i % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, Pool<K, C>> {
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        self.lock((h % self.shards.len() as u64) as usize)
    }

    /// See [`Pool::prewarm`].
    pub fn prewarm(&self, key: K, now: Instant) {
        self.shard(&key).prewarm(key, now)
    }

    /// See [`Pool::checkout`].
    pub fn checkout(&self, key: K, now: Instant) -> Result<Checkout<K, C>, CheckoutError> {
        self.shard(&key).checkout(key, now)
    }

    /// See [`Pool::checkout_with_deadline`].
    pub fn checkout_with_deadline(
        &self,
        key: K,
        deadline: Instant,
        now: Instant,
    ) -> Result<Checkout<K, C>, CheckoutError> {
        self.shard(&key).checkout_with_deadline(key, deadline, now)
    }

    /// See [`Pool::cancel`].
    pub fn cancel(&self, waiter: WaiterId) -> bool {
        let n = self.shards.len() as u64;
        self.lock((waiter.0 % n) as usize).cancel(waiter)
    }

    /// See [`Pool::connected`].
    pub fn connected(
        &self,
        ticket: Ticket<K>,
        conn: C,
        now: Instant,
    ) -> Result<Option<Lease<K, C>>, PoolError> {
        self.shard(ticket.key()).connected(ticket, conn, now)
    }

    /// See [`Pool::connect_failed`].
    pub fn connect_failed(&self, ticket: Ticket<K>, now: Instant) -> Result<(), PoolError> {
        self.shard(ticket.key()).connect_failed(ticket, now)
    }

    /// See [`Pool::checkin`].
    pub fn checkin(
        &self,
        lease: Lease<K, C>,
        reusable: bool,
        now: Instant,
    ) -> Result<(), PoolError> {
        self.shard(lease.key()).checkin(lease, reusable, now)
    }

    /// Next event of any shard, visiting shards round robin.
    pub fn poll_event(&self) -> Option<Event<K, C>> {
        let start = self.next_poll.fetch_add(1, Ordering::Relaxed);
        (0..self.shards.len()).find_map(|i| self.lock(start.wrapping_add(i)).poll_event())
    }

    /// Earliest deadline over all shards.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (0..self.shards.len())
            .filter_map(|i| self.lock(i).poll_timeout())
            .min()
    }

    /// [`Pool::handle_timeout`] on every shard.
    pub fn handle_timeout(&self, now: Instant) {
        for i in 0..self.shards.len() {
            self.lock(i).handle_timeout(now);
        }
    }

    /// Metrics of all shards added up.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::default();
        for i in 0..self.shards.len() {
            m.merge(&self.lock(i).metrics());
        }
        m
    }
}

impl<K, C> core::fmt::Debug for Shared<K, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shared")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_is_send_sync_and_shards_split_the_total() {
        assert_send_sync::<Shared<std::string::String, std::vec::Vec<u8>>>();
        let mut c = Config::dynamic(0, 2);
        c.max_total = 8;
        let s: Shared<u32, u32> = Shared::new(c.clone(), 4);
        assert_eq!(s.shards(), 4);
        assert_eq!(s.lock(0).config().max_total, 2);
        c.max_total = 2;
        assert_eq!(Shared::<u32, u32>::new(c, 4).shards(), 2);
    }

    #[test]
    fn ids_route_back_to_their_shard() {
        let mut c = Config::dynamic(0, 1);
        c.max_total = 64;
        let s: Shared<u32, u32> = Shared::new(c, 4);
        let t0 = Instant::ZERO;
        for key in 0..16 {
            let Ok(Checkout::Connect(t)) = s.checkout(key, t0) else {
                panic!()
            };
            let lease = s.connected(t, key, t0).unwrap().unwrap();
            let Ok(Checkout::Queued(w)) = s.checkout(key, t0) else {
                panic!()
            };
            assert!(s.cancel(w));
            assert!(!s.cancel(w));
            s.checkin(lease, true, t0).unwrap();
        }
        let m = s.metrics();
        assert_eq!((m.created, m.idle, m.active, m.waiting), (16, 16, 0, 0));
    }
}
