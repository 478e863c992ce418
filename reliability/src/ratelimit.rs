//! Rate limiting: a token bucket and GCRA (the Generic Cell Rate Algorithm).
//!
//! Both admit a burst of `burst` requests, then one per `interval`. The token bucket stores a
//! token count; GCRA stores one number, the *theoretical arrival time* (TAT): a request at
//! `now` is admitted if `max(TAT, now) + interval - now <= burst · interval`, and then TAT
//! advances by `interval` (as in the `governor` crate and ATM traffic shaping). Both use exact
//! integer nanosecond arithmetic, so they admit exactly the configured burst and rate.

use core::fmt;
use core::time::Duration;
use std::collections::HashMap;
use std::hash::Hash;

use ferry_proto::Instant;

use crate::config::{nonzero, ConfigError};
use crate::rng::nanos;

/// A rate: `burst` at once, then one every `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    burst: u32,
    interval: Duration,
}

impl Quota {
    /// `n` per second with a burst of `n` (`n` at least 1).
    pub fn per_second(n: u32) -> Self {
        Quota::new(n, Duration::from_secs(1))
    }

    /// `n` per `period` with a burst of `n` (`n` at least 1; the interval at least 1 ns).
    pub fn new(n: u32, period: Duration) -> Self {
        let n = n.max(1);
        Quota {
            burst: n,
            interval: (period / n).max(Duration::from_nanos(1)),
        }
    }

    /// [`new`](Self::new), rejecting what `new` would round up: `n == 0` (which `new` turns
    /// into 1, not "deny all") and a `period` shorter than `n` nanoseconds.
    pub fn try_new(n: u32, period: Duration) -> Result<Self, ConfigError> {
        nonzero("n", n == 0)?;
        nonzero("period", period.as_nanos() < u128::from(n))?;
        Ok(Quota::new(n, period))
    }

    /// The same rate with another burst size (at least 1).
    pub fn with_burst(self, burst: u32) -> Self {
        Quota {
            burst: burst.max(1),
            ..self
        }
    }

    /// Requests admitted at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Time between two admissions at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimited {
    /// Over the rate; the same request would be admitted at `retry_at`.
    Until {
        /// Earliest instant it can succeed.
        retry_at: Instant,
    },
    /// The request asks for more than the burst: it can never be admitted.
    ExceedsBurst,
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimited::Until { retry_at } => write!(f, "rate limited until {retry_at:?}"),
            RateLimited::ExceedsBurst => f.write_str("request exceeds the burst size"),
        }
    }
}

impl std::error::Error for RateLimited {}

/// A token bucket that starts full.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    quota: Quota,
    tokens: u64,
    /// Time up to which refill has been credited.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(quota: Quota, now: Instant) -> Self {
        TokenBucket {
            quota,
            tokens: u64::from(quota.burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let cap = u64::from(self.quota.burst);
        let interval = nanos(self.quota.interval);
        if self.tokens >= cap || now < self.last {
            if self.tokens >= cap {
                self.last = self.last.max(now);
            }
            return;
        }
        let add = nanos(now - self.last) / interval;
        self.tokens = self.tokens.saturating_add(add).min(cap);
        self.last = if self.tokens == cap {
            now
        } else {
            self.last + Duration::from_nanos(add * interval)
        };
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens
    }

    /// Takes one token.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), RateLimited> {
        self.try_acquire_n(now, 1)
    }

    /// Takes `n` tokens at once, or none.
    pub fn try_acquire_n(&mut self, now: Instant, n: u32) -> Result<(), RateLimited> {
        if n > self.quota.burst {
            return Err(RateLimited::ExceedsBurst);
        }
        self.refill(now);
        let n = u64::from(n);
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        let missing = n - self.tokens;
        let wait = Duration::from_nanos(missing.saturating_mul(nanos(self.quota.interval)));
        Err(RateLimited::Until {
            retry_at: self.last + wait,
        })
    }
}

/// GCRA state: one theoretical arrival time.
#[derive(Clone, Debug)]
pub struct Gcra {
    quota: Quota,
    tat: Instant,
}

impl Gcra {
    /// A limiter with a full burst available from time zero on.
    pub fn new(quota: Quota) -> Self {
        Gcra {
            quota,
            tat: Instant::ZERO,
        }
    }

    /// Admits one request at `now`.
    pub fn check(&mut self, now: Instant) -> Result<(), RateLimited> {
        self.check_n(now, 1)
    }

    /// Admits `n` requests at `now`, or none.
    pub fn check_n(&mut self, now: Instant, n: u32) -> Result<(), RateLimited> {
        if n > self.quota.burst {
            return Err(RateLimited::ExceedsBurst);
        }
        let t = nanos(self.quota.interval);
        let tau = t.saturating_mul(u64::from(self.quota.burst));
        let tat = self.tat.max(now).as_nanos();
        let new_tat = tat.saturating_add(t.saturating_mul(u64::from(n)));
        if new_tat - now.as_nanos() > tau {
            return Err(RateLimited::Until {
                retry_at: Instant::from_nanos(new_tat - tau),
            });
        }
        self.tat = Instant::from_nanos(new_tat);
        Ok(())
    }

    /// Whether the state equals a fresh limiter's at `now` (the burst is fully replenished).
    pub fn is_idle(&self, now: Instant) -> bool {
        self.tat <= now
    }
}

/// One GCRA per key (client, tenant, route), sharing a quota. Idle keys can be dropped with
/// [`RateLimiters::retain_active`] without changing behaviour.
#[derive(Clone, Debug)]
pub struct RateLimiters<K> {
    quota: Quota,
    map: HashMap<K, Gcra>,
}

impl<K: Hash + Eq + Clone> RateLimiters<K> {
    /// An empty map.
    pub fn new(quota: Quota) -> Self {
        RateLimiters {
            quota,
            map: HashMap::new(),
        }
    }

    /// Admits one request for `key` at `now`.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), RateLimited> {
        let quota = self.quota;
        self.map
            .entry(key.clone())
            .or_insert_with(|| Gcra::new(quota))
            .check(now)
    }

    /// The quota every key shares.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Change the quota. Another quota forgets every key's state: each starts again with a
    /// full burst (a state kept under the old rate would mean something else under the new).
    pub fn set_quota(&mut self, quota: Quota) {
        if quota != self.quota {
            self.quota = quota;
            self.map.clear();
        }
    }

    /// Drops keys whose state is indistinguishable from a fresh one (bounds memory).
    pub fn retain_active(&mut self, now: Instant) {
        self.map.retain(|_, g| !g.is_idle(now));
    }

    /// Number of tracked keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    #[test]
    fn a_new_quota_starts_every_key_afresh() {
        let one = Quota::new(1, Duration::from_secs(60));
        let mut m = RateLimiters::new(one);
        assert!(m.check(&"a", ms(0)).is_ok());
        assert!(m.check(&"a", ms(1)).is_err());
        // The same quota again changes nothing: "a" is still limited.
        m.set_quota(one);
        assert!(m.check(&"a", ms(2)).is_err());
        let three = Quota::new(3, Duration::from_secs(60));
        m.set_quota(three);
        assert_eq!(m.quota(), three);
        for t in 3..6 {
            assert!(m.check(&"a", ms(t)).is_ok(), "{t}");
        }
        assert!(m.check(&"a", ms(6)).is_err());
    }

    #[test]
    fn try_new_rejects_what_new_rounds() {
        assert_eq!(
            Quota::try_new(0, Duration::from_secs(1)),
            Err(ConfigError::Zero { field: "n" })
        );
        assert_eq!(
            Quota::try_new(10, Duration::from_nanos(9)),
            Err(ConfigError::Zero { field: "period" })
        );
        assert_eq!(
            Quota::try_new(10, Duration::from_secs(1)),
            Ok(Quota::per_second(10))
        );
    }

    #[test]
    fn token_bucket_basics() {
        let mut b = TokenBucket::new(Quota::per_second(10).with_burst(3), ms(0));
        for _ in 0..3 {
            b.try_acquire(ms(0)).unwrap();
        }
        assert_eq!(
            b.try_acquire(ms(0)),
            Err(RateLimited::Until { retry_at: ms(100) })
        );
        assert_eq!(
            b.try_acquire(ms(99)),
            Err(RateLimited::Until { retry_at: ms(100) })
        );
        b.try_acquire(ms(100)).unwrap();
        assert_eq!(b.available(ms(10_000)), 3);
        assert_eq!(
            b.try_acquire_n(ms(10_000), 4),
            Err(RateLimited::ExceedsBurst)
        );
        b.try_acquire_n(ms(10_000), 3).unwrap();
        assert_eq!(
            b.try_acquire_n(ms(10_000), 2),
            Err(RateLimited::Until {
                retry_at: ms(10_200)
            })
        );
    }

    #[test]
    fn gcra_basics() {
        let mut g = Gcra::new(Quota::per_second(10).with_burst(3));
        let start = ms(1000);
        for _ in 0..3 {
            g.check(start).unwrap();
        }
        assert_eq!(
            g.check(start),
            Err(RateLimited::Until { retry_at: ms(1100) })
        );
        g.check(ms(1100)).unwrap();
        assert_eq!(g.check_n(ms(1100), 4), Err(RateLimited::ExceedsBurst));
        assert!(!g.is_idle(ms(1100)));
        assert!(g.is_idle(ms(1400)));
        g.check_n(ms(5000), 3).unwrap();
    }

    #[test]
    fn keyed_limiters() {
        let mut l = RateLimiters::new(Quota::per_second(1));
        l.check(&"a", ms(0)).unwrap();
        assert!(l.check(&"a", ms(10)).is_err());
        l.check(&"b", ms(10)).unwrap();
        assert_eq!(l.len(), 2);
        l.retain_active(ms(5000));
        assert!(l.is_empty());
    }

    /// Every `step` ns over `[0, span]`, sends requests until one is refused; counts
    /// admissions.
    fn admitted(mut f: impl FnMut(Instant) -> bool, step: u64, span: u64) -> u64 {
        let mut n = 0;
        for i in 0..=span / step {
            for _ in 0..1000 {
                if !f(Instant::from_nanos(i * step)) {
                    break;
                }
                n += 1;
            }
        }
        n
    }

    proptest! {
        #[test]
        fn admit_exactly_burst_then_rate(burst in 1u32..50, step in 1u64..2_000_000,
                                         periods in 0u64..200, step_div in 1u64..8) {
            // Probes land on every multiple of the interval, so each token is taken as soon
            // as it is replenished (a late probe would legitimately shift the schedule).
            let t = step * step_div;
            let q = Quota::new(1, Duration::from_nanos(t)).with_burst(burst);
            let span = periods * t;
            let expected = u64::from(burst) + span / t;

            let mut g = Gcra::new(q);
            prop_assert_eq!(admitted(|now| g.check(now).is_ok(), step, span), expected);
            let mut b = TokenBucket::new(q, Instant::ZERO);
            prop_assert_eq!(admitted(|now| b.try_acquire(now).is_ok(), step, span), expected);
        }

        #[test]
        fn retry_at_is_honest(burst in 1u32..10, interval_us in 1u64..1000,
                              times in proptest::collection::vec(0u64..10_000_000, 1..50)) {
            let q = Quota::new(1, Duration::from_micros(interval_us)).with_burst(burst);
            let mut g = Gcra::new(q);
            let mut b = TokenBucket::new(q, Instant::ZERO);
            let mut sorted = times.clone();
            sorted.sort_unstable();
            for ns in sorted {
                let now = Instant::from_nanos(ns);
                if let Err(RateLimited::Until { retry_at }) = g.check(now) {
                    prop_assert!(retry_at > now);
                    let mut g2 = g.clone();
                    prop_assert!(g2.check(retry_at).is_ok());
                }
                if let Err(RateLimited::Until { retry_at }) = b.try_acquire(now) {
                    prop_assert!(retry_at > now);
                    let mut b2 = b.clone();
                    prop_assert!(b2.try_acquire(retry_at).is_ok());
                }
            }
        }
    }
}
