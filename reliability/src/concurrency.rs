//! Adaptive concurrency limits (AIMD, Gradient2) and load shedding.
//!
//! Instead of a fixed request rate, the limit on requests *in flight* is learned from latency
//! and drops, like a TCP congestion window (Netflix `concurrency-limits`). A
//! [`ConcurrencyLimiter`] admits a request while `in_flight < limit` (a smaller share of the
//! limit for lower [`Priority`] classes, so sheddable traffic goes first), optionally rejects
//! requests that already queued too long, and feeds each completion's round-trip time back
//! into the [`LimitAlgorithm`].

use core::time::Duration;

use ferry_proto::Instant;

use crate::config::{in_range, ConfigError};
use crate::rng::nanos;

/// A limit that adapts to samples.
pub trait LimitAlgorithm {
    /// The current limit (at least 1).
    fn limit(&self) -> u32;
    /// A request that started with `in_flight` requests outstanding took `rtt`; `dropped` if
    /// it timed out or was rejected for overload.
    fn on_sample(&mut self, rtt: Duration, in_flight: u32, dropped: bool);
}

/// A fixed limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedLimit(pub u32);

impl LimitAlgorithm for FixedLimit {
    fn limit(&self) -> u32 {
        self.0.max(1)
    }
    fn on_sample(&mut self, _: Duration, _: u32, _: bool) {}
}

/// Additive increase, multiplicative decrease.
///
/// On a drop (or an RTT above `timeout`): `limit = max(min, min(limit - 1, ⌊limit · backoff⌋))`.
/// On success while the limit is in use (`in_flight · 2 >= limit`): `limit += increase`,
/// up to `max`. Otherwise unchanged (an idle client must not inflate its limit).
#[derive(Clone, Debug, PartialEq)]
pub struct Aimd {
    limit: u32,
    /// Lower bound.
    pub min: u32,
    /// Upper bound.
    pub max: u32,
    /// Multiplier on a drop, in `(0, 1)` (default 0.9).
    pub backoff: f64,
    /// Added per successful sample (default 1).
    pub increase: u32,
    /// Samples slower than this count as drops (default 5 s).
    pub timeout: Duration,
}

impl Aimd {
    /// Starts at `initial`, within `min..=max`, other fields default.
    pub fn new(initial: u32, min: u32, max: u32) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        Aimd {
            limit: initial.clamp(min, max),
            min,
            max,
            backoff: 0.9,
            increase: 1,
            timeout: Duration::from_secs(5),
        }
    }
}

impl LimitAlgorithm for Aimd {
    fn limit(&self) -> u32 {
        self.limit
    }

    fn on_sample(&mut self, rtt: Duration, in_flight: u32, dropped: bool) {
        if dropped || rtt > self.timeout {
            let backoff = self.backoff.clamp(0.0, 1.0);
            let shrunk = (f64::from(self.limit) * backoff) as u32;
            self.limit = shrunk
                .min(self.limit.saturating_sub(1))
                .max(self.min)
                .max(1);
        } else if u64::from(in_flight) * 2 >= u64::from(self.limit) {
            self.limit = self
                .limit
                .saturating_add(self.increase)
                .min(self.max.max(1));
        }
    }
}

/// Netflix's Gradient2: compares a short-term RTT (the last sample) with a long-term
/// exponential average and moves the limit by their ratio.
///
/// `gradient = clamp(tolerance · long / short, 0.5, 1.0)`, `new = limit · gradient + queue_size`, smoothed
/// `limit = limit · (1 - smoothing) + new · smoothing`, clamped to `min..=max`. When the long
/// average exceeds twice the short RTT (load went away), the average decays by 10% per sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradient2 {
    estimate: f64,
    long_rtt: f64,
    samples: u32,
    /// Lower bound (default 20).
    pub min: u32,
    /// Upper bound (default 200).
    pub max: u32,
    /// Headroom added to the limit, allowing some queueing (default 4).
    pub queue_size: u32,
    /// How fast the limit follows the estimate, in `(0, 1]` (default 0.2).
    pub smoothing: f64,
    /// Samples in the long-term average (default 600; the first 10 are a plain mean).
    pub long_window: u32,
    /// How much slower than the long-term average a sample may be before the limit shrinks
    /// (Netflix's `rttTolerance`, default 1.5; at 1.0 ordinary jitter shrinks the limit).
    pub tolerance: f64,
}

impl Gradient2 {
    /// Starts at `initial`, other fields default.
    pub fn new(initial: u32) -> Self {
        Gradient2 {
            estimate: f64::from(initial.clamp(1, 200)),
            long_rtt: 0.0,
            samples: 0,
            min: 20.min(initial.max(1)),
            max: 200.max(initial),
            queue_size: 4,
            smoothing: 0.2,
            long_window: 600,
            tolerance: 1.5,
        }
    }

    /// The long-term RTT average in nanoseconds.
    pub fn long_rtt(&self) -> f64 {
        self.long_rtt
    }
}

impl Default for Gradient2 {
    /// Netflix's defaults: initial 20, min 20, max 200.
    fn default() -> Self {
        Gradient2::new(20)
    }
}

impl LimitAlgorithm for Gradient2 {
    fn limit(&self) -> u32 {
        (self.estimate as u32).max(1)
    }

    fn on_sample(&mut self, rtt: Duration, in_flight: u32, _dropped: bool) {
        let short = (nanos(rtt) as f64).max(1.0);
        const WARMUP: u32 = 10;
        if self.samples < WARMUP {
            self.samples += 1;
            self.long_rtt += (short - self.long_rtt) / f64::from(self.samples);
        } else {
            let factor = 2.0 / (f64::from(self.long_window.max(1)) + 1.0);
            self.long_rtt = self.long_rtt * (1.0 - factor) + short * factor;
        }
        if self.long_rtt / short > 2.0 {
            self.long_rtt *= 0.9;
        }
        // Application-limited: no evidence about capacity.
        if f64::from(in_flight) < self.estimate / 2.0 {
            return;
        }
        let tolerance = if self.tolerance.is_finite() {
            self.tolerance.max(1.0)
        } else {
            1.5
        };
        let gradient = (tolerance * self.long_rtt / short).clamp(0.5, 1.0);
        let target = self.estimate * gradient + f64::from(self.queue_size);
        let s = self.smoothing.clamp(0.0, 1.0);
        let next = self.estimate * (1.0 - s) + target * s;
        self.estimate = next.clamp(
            f64::from(self.min.max(1)),
            f64::from(self.max.max(self.min)),
        );
    }
}

/// Importance of a request: lower classes may only use part of the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Priority {
    /// May use the whole limit.
    Critical,
    /// May use `normal_share` of it.
    Normal,
    /// May use `sheddable_share` of it (shed first).
    Sheddable,
}

/// Load-shedding configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShedConfig {
    /// Share of the limit usable by [`Priority::Normal`] (default 0.9).
    pub normal_share: f64,
    /// Share of the limit usable by [`Priority::Sheddable`] (default 0.5).
    pub sheddable_share: f64,
    /// Reject requests that waited longer than this before admission (default none).
    pub max_queue_time: Option<Duration>,
}

impl ShedConfig {
    /// Checks the shares: each in `0.0..=1.0`, and `sheddable_share <= normal_share` (else
    /// sheddable traffic could outlast normal traffic).
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range("normal_share", self.normal_share, 0.0, 1.0, false)?;
        in_range("sheddable_share", self.sheddable_share, 0.0, 1.0, false)?;
        if self.sheddable_share > self.normal_share {
            return Err(ConfigError::Inconsistent {
                field: "sheddable_share",
            });
        }
        Ok(())
    }
}

impl Default for ShedConfig {
    fn default() -> Self {
        ShedConfig {
            normal_share: 0.9,
            sheddable_share: 0.5,
            max_queue_time: None,
        }
    }
}

/// Why a request was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shed {
    /// In flight reached the (class share of the) limit.
    OverLimit {
        /// The limit that applied to this priority.
        limit: u32,
        /// Requests in flight.
        in_flight: u32,
    },
    /// The request queued for longer than `max_queue_time`.
    QueueTimeout,
}

/// How an admitted request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Completed; its RTT is a valid sample.
    Success,
    /// Timed out or was rejected for overload: shrink the limit.
    Dropped,
    /// Cancelled or failed for reasons unrelated to load: no sample.
    Ignore,
}

/// Proof of admission; hand it back to [`ConcurrencyLimiter::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "release the token when the request ends"]
pub struct Token {
    started: Instant,
    in_flight: u32,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterMetrics {
    /// Requests admitted.
    pub admitted: u64,
    /// Requests shed because of the limit.
    pub shed_over_limit: u64,
    /// Requests shed because they queued too long.
    pub shed_queue_timeout: u64,
    /// Admitted requests that ended in a drop.
    pub dropped: u64,
}

/// Admission control around a [`LimitAlgorithm`].
#[derive(Clone, Debug)]
pub struct ConcurrencyLimiter<A> {
    algo: A,
    shed: ShedConfig,
    in_flight: u32,
    metrics: LimiterMetrics,
}

impl<A: LimitAlgorithm> ConcurrencyLimiter<A> {
    /// A limiter with default shedding.
    pub fn new(algo: A) -> Self {
        Self::with_shedding(algo, ShedConfig::default())
    }

    /// A limiter with the given shedding config.
    pub fn with_shedding(algo: A, shed: ShedConfig) -> Self {
        ConcurrencyLimiter {
            algo,
            shed,
            in_flight: 0,
            metrics: LimiterMetrics::default(),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.algo.limit().max(1)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The algorithm (for its figures).
    pub fn algorithm(&self) -> &A {
        &self.algo
    }

    /// Counters.
    pub fn metrics(&self) -> LimiterMetrics {
        self.metrics
    }

    fn class_limit(&self, p: Priority) -> u32 {
        let l = self.limit();
        let share = match p {
            Priority::Critical => return l,
            Priority::Normal => self.shed.normal_share,
            Priority::Sheddable => self.shed.sheddable_share,
        };
        let share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        ((f64::from(l) * share).ceil() as u32).min(l)
    }

    /// Admits a request that arrives at `now`.
    pub fn try_acquire(&mut self, now: Instant, priority: Priority) -> Result<Token, Shed> {
        self.try_acquire_queued(now, now, priority)
    }

    /// Admits a request that was enqueued at `enqueued_at` and is dequeued at `now`.
    pub fn try_acquire_queued(
        &mut self,
        now: Instant,
        enqueued_at: Instant,
        priority: Priority,
    ) -> Result<Token, Shed> {
        if self
            .shed
            .max_queue_time
            .is_some_and(|m| now - enqueued_at > m)
        {
            self.metrics.shed_queue_timeout += 1;
            return Err(Shed::QueueTimeout);
        }
        let limit = self.class_limit(priority);
        if self.in_flight >= limit {
            self.metrics.shed_over_limit += 1;
            return Err(Shed::OverLimit {
                limit,
                in_flight: self.in_flight,
            });
        }
        self.in_flight += 1;
        self.metrics.admitted += 1;
        Ok(Token {
            started: now,
            in_flight: self.in_flight,
        })
    }

    /// The request admitted with `token` ended at `now`.
    pub fn release(&mut self, now: Instant, token: Token, outcome: Outcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Success => self
                .algo
                .on_sample(now - token.started, token.in_flight, false),
            Outcome::Dropped => {
                self.metrics.dropped += 1;
                self.algo
                    .on_sample(now - token.started, token.in_flight, true);
            }
            Outcome::Ignore => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    #[test]
    fn aimd_grows_and_shrinks() {
        let mut a = Aimd::new(10, 1, 100);
        a.on_sample(10 * MS, 5, false);
        assert_eq!(a.limit(), 11);
        a.on_sample(10 * MS, 1, false);
        assert_eq!(a.limit(), 11, "app-limited: no growth");
        a.on_sample(10 * MS, 11, true);
        assert_eq!(a.limit(), 9, "floor(11 * 0.9)");
        a.on_sample(Duration::from_secs(6), 9, false);
        assert_eq!(a.limit(), 8, "slow = drop");
        let mut a = Aimd::new(2, 2, 3);
        a.on_sample(MS, 2, true);
        assert_eq!(a.limit(), 2, "never below min");
    }

    #[test]
    fn gradient2_tolerates_jitter_below_its_tolerance() {
        // Latency jitters ±20% around 10 ms, the limit fully used: no congestion, so the
        // limit grows to its maximum (Netflix's rttTolerance 1.5) instead of shrinking on
        // every sample above the average.
        let mut g = Gradient2::new(50);
        for i in 0..2000 {
            let rtt = if i % 2 == 0 { 8 * MS } else { 12 * MS };
            g.on_sample(rtt, g.limit(), false);
        }
        assert_eq!(g.limit(), g.max);
        // Twice the usual latency still shrinks it.
        for _ in 0..30 {
            g.on_sample(40 * MS, g.limit(), false);
        }
        assert!(g.limit() < g.max, "{}", g.limit());
    }

    #[test]
    fn gradient2_backs_off_on_latency_and_recovers() {
        let mut g = Gradient2::new(50);
        for _ in 0..200 {
            g.on_sample(10 * MS, 50, false);
        }
        let steady = g.limit();
        assert!(
            steady > 50,
            "grows by queue_size while latency is flat: {steady}"
        );
        for _ in 0..30 {
            g.on_sample(40 * MS, g.limit(), false);
        }
        let loaded = g.limit();
        assert!(loaded < steady, "{loaded} < {steady}");
        assert!(loaded >= g.min);
        for _ in 0..300 {
            g.on_sample(10 * MS, g.limit(), false);
        }
        assert!(g.limit() > loaded);
        assert!(g.long_rtt() > 0.0);
    }

    #[test]
    fn limiter_sheds_by_priority_and_queue_time() {
        let shed = ShedConfig {
            max_queue_time: Some(50 * MS),
            ..ShedConfig::default()
        };
        let mut l = ConcurrencyLimiter::with_shedding(FixedLimit(10), shed);
        let mut toks = Vec::new();
        for _ in 0..5 {
            toks.push(l.try_acquire(ms(0), Priority::Sheddable).unwrap());
        }
        assert_eq!(
            l.try_acquire(ms(0), Priority::Sheddable),
            Err(Shed::OverLimit {
                limit: 5,
                in_flight: 5
            })
        );
        for _ in 0..4 {
            toks.push(l.try_acquire(ms(0), Priority::Normal).unwrap());
        }
        assert!(l.try_acquire(ms(0), Priority::Normal).is_err());
        toks.push(l.try_acquire(ms(0), Priority::Critical).unwrap());
        assert!(l.try_acquire(ms(0), Priority::Critical).is_err());
        assert_eq!(
            l.try_acquire_queued(ms(100), ms(0), Priority::Critical),
            Err(Shed::QueueTimeout)
        );
        for t in toks {
            l.release(ms(1), t, Outcome::Ignore);
        }
        assert_eq!(l.in_flight(), 0);
        let m = l.metrics();
        assert_eq!(
            (m.admitted, m.shed_over_limit, m.shed_queue_timeout),
            (10, 3, 1)
        );
    }

    proptest! {
        #[test]
        fn aimd_additive_increase_multiplicative_decrease(
            initial in 1u32..500, samples in proptest::collection::vec((any::<bool>(), 0u32..600), 1..200))
        {
            let mut a = Aimd::new(initial, 1, 1000);
            for (drop, in_flight) in samples {
                let before = a.limit();
                a.on_sample(MS, in_flight, drop);
                let after = a.limit();
                if drop {
                    let expect = ((f64::from(before) * 0.9) as u32).min(before - 1).max(1);
                    prop_assert_eq!(after, expect);
                    prop_assert!(after < before || before == 1);
                } else if in_flight * 2 >= before {
                    prop_assert_eq!(after, (before + 1).min(1000));
                } else {
                    prop_assert_eq!(after, before);
                }
            }
        }

        #[test]
        fn limiter_never_exceeds_limit(ops in proptest::collection::vec((0u8..3, any::<bool>()), 1..300)) {
            let mut l = ConcurrencyLimiter::new(Aimd::new(5, 1, 20));
            let mut held = Vec::new();
            let mut now = 0;
            for (op, drop) in ops {
                now += 1;
                if op < 2 {
                    if let Ok(t) = l.try_acquire(ms(now), Priority::Critical) {
                        held.push(t);
                    }
                } else if let Some(t) = held.pop() {
                    l.release(ms(now), t, if drop { Outcome::Dropped } else { Outcome::Success });
                }
                prop_assert_eq!(l.in_flight() as usize, held.len());
                // The limit may shrink below what is already in flight, but admission never
                // pushes in_flight past the limit in force at that moment.
                prop_assert!(l.limit() >= 1 && l.limit() <= 20);
            }
        }

        #[test]
        fn gradient2_stays_in_bounds(rtts in proptest::collection::vec((1u64..1_000_000, 0u32..400), 1..300)) {
            let mut g = Gradient2::new(20);
            for (us, inflight) in rtts {
                g.on_sample(Duration::from_micros(us), inflight, false);
                prop_assert!(g.limit() >= g.min && g.limit() <= g.max);
            }
        }
    }
}
