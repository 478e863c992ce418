//! Hedged requests: send another attempt if the first is slow, keep the first answer.
//!
//! Following "The Tail at Scale" (Dean & Barroso): after a delay — fixed, or a latency
//! percentile (e.g. p95) observed by a [`LatencyTracker`] — send a second copy of an
//! idempotent request, at most [`HedgePolicy::max_extra`] extra copies in total, and cancel
//! the losers when one answers. Sans-IO: a [`Hedge`] only *tells* the caller what to do via
//! [`HedgeAction`]s; the caller sends, cancels and reports. Only hedge idempotent requests,
//! and consider guarding hedges with a [`crate::retry::RetryBudget`] so they stay a small
//! fraction of traffic.

use core::time::Duration;
use std::collections::VecDeque;

use ferry_proto::Instant;

use crate::config::{in_range, ConfigError};
use crate::retry::RetryGate;
use crate::rng::{nanos, Rng};

/// When to hedge.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// A fixed delay after the previous attempt.
    Fixed(Duration),
    /// The `p`-th percentile (0.0..=1.0) of recent latencies, but at least `min`; `fallback`
    /// until the tracker has enough samples.
    Percentile {
        /// Percentile, e.g. 0.95.
        p: f64,
        /// Lower bound.
        min: Duration,
        /// Used while the tracker is warming up.
        fallback: Duration,
    },
}

/// Hedging policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HedgePolicy {
    /// When to send each extra attempt.
    pub delay: HedgeDelay,
    /// Extra attempts allowed beyond the first.
    pub max_extra: u32,
    /// Send the next extra attempt at once when every attempt in flight has failed.
    pub hedge_on_failure: bool,
}

impl Default for HedgePolicy {
    /// One extra attempt at p95 (at least 1 ms, 50 ms while warming up).
    fn default() -> Self {
        HedgePolicy {
            delay: HedgeDelay::Percentile {
                p: 0.95,
                min: Duration::from_millis(1),
                fallback: Duration::from_millis(50),
            },
            max_extra: 1,
            hedge_on_failure: true,
        }
    }
}

/// The last `capacity` latencies, for percentile queries.
///
/// The samples are also kept sorted, so [`percentile`](Self::percentile) (asked once per
/// hedged request) is a lookup, and [`record`](Self::record) moves at most `capacity` words
/// (no allocation once full).
#[derive(Clone, Debug)]
pub struct LatencyTracker {
    ring: Vec<u64>,
    /// The same samples as `ring`, ascending.
    sorted: Vec<u64>,
    next: usize,
    capacity: usize,
    min_samples: usize,
}

impl LatencyTracker {
    /// Keeps `capacity` samples (at least 1); answers once it holds `min_samples`.
    pub fn new(capacity: usize, min_samples: usize) -> Self {
        let capacity = capacity.max(1);
        LatencyTracker {
            ring: Vec::with_capacity(capacity.min(65_536)),
            sorted: Vec::with_capacity(capacity.min(65_536)),
            next: 0,
            capacity,
            min_samples: min_samples.max(1),
        }
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let v = nanos(latency);
        if self.ring.len() < self.capacity {
            self.ring.push(v);
        } else {
            let old = core::mem::replace(&mut self.ring[self.next], v);
            if let Ok(i) = self.sorted.binary_search(&old) {
                self.sorted.remove(i);
            }
        }
        let at = self.sorted.partition_point(|&x| x < v);
        self.sorted.insert(at, v);
        self.next = (self.next + 1) % self.capacity;
    }

    /// The `p`-th percentile (nearest rank), or `None` while warming up.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.ring.len() < self.min_samples {
            return None;
        }
        let sorted = &self.sorted;
        let p = if p.is_nan() { 1.0 } else { p.clamp(0.0, 1.0) };
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(Duration::from_nanos(sorted[rank - 1]))
    }
}

impl Default for LatencyTracker {
    /// 1024 samples, answers after 20.
    fn default() -> Self {
        LatencyTracker::new(1024, 20)
    }
}

impl HedgePolicy {
    /// Checks the policy: a percentile in `0.0..=1.0` and `fallback >= min`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let HedgeDelay::Percentile { p, min, fallback } = self.delay {
            in_range("p", p, 0.0, 1.0, false)?;
            if fallback < min {
                return Err(ConfigError::Inconsistent { field: "fallback" });
            }
        }
        Ok(())
    }

    /// The delay to use now, given recent latencies.
    pub fn delay(&self, tracker: &LatencyTracker) -> Duration {
        match self.delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Percentile { p, min, fallback } => {
                tracker.percentile(p).map_or(fallback, |d| d.max(min))
            }
        }
    }

    /// Starts hedging a request whose first attempt (number 0) is sent at `now`.
    pub fn start(&self, now: Instant, tracker: &LatencyTracker) -> Hedge {
        let delay = self.delay(tracker);
        Hedge {
            delay,
            max_extra: self.max_extra,
            hedge_on_failure: self.hedge_on_failure,
            attempts: vec![Attempt::InFlight],
            next_at: (self.max_extra > 0).then(|| now + delay),
            actions: VecDeque::new(),
            done: false,
        }
    }
}

/// What the caller must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HedgeAction {
    /// Send attempt number `attempt` now.
    Send {
        /// Attempt number (1 = first hedge).
        attempt: u32,
    },
    /// Cancel attempt `attempt` (it lost).
    Cancel {
        /// Attempt number.
        attempt: u32,
    },
    /// Attempt `winner` answered: deliver its reply.
    Won {
        /// The winning attempt.
        winner: u32,
    },
    /// Every attempt failed and none is left: report the last failure.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    InFlight,
    Failed,
    Done,
}

/// Hedging state of one request. Polling order: after `start` and after each `on_*` or
/// `handle_timeout` call, drain [`Hedge::poll_action`], then re-arm [`Hedge::poll_timeout`].
#[derive(Clone, Debug)]
pub struct Hedge {
    delay: Duration,
    max_extra: u32,
    hedge_on_failure: bool,
    attempts: Vec<Attempt>,
    next_at: Option<Instant>,
    actions: VecDeque<HedgeAction>,
    done: bool,
}

impl Hedge {
    /// When to send the next hedge, if one may still be sent.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            None
        } else {
            self.next_at
        }
    }

    fn extra_sent(&self) -> u32 {
        (self.attempts.len() - 1) as u32
    }

    fn send(&mut self, now: Instant) {
        let attempt = self.attempts.len() as u32;
        self.attempts.push(Attempt::InFlight);
        self.actions.push_back(HedgeAction::Send { attempt });
        self.next_at = (self.extra_sent() < self.max_extra).then(|| now + self.delay);
    }

    /// The hedge timer fired: queues a [`HedgeAction::Send`] if due (early calls: no-op).
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.done && self.next_at.is_some_and(|t| now >= t) {
            self.send(now);
        }
    }

    /// Like [`handle_timeout`](Self::handle_timeout), but a due hedge is only sent if `gate`
    /// (e.g. a [`crate::retry::RetryBudget`] shared by all requests) allows it; otherwise no
    /// further hedges are scheduled for this request.
    pub fn handle_timeout_gated(&mut self, now: Instant, gate: &mut impl RetryGate, rng: &mut Rng) {
        if !self.done && self.next_at.is_some_and(|t| now >= t) {
            if gate.try_withdraw(now, rng) {
                self.send(now);
            } else {
                self.next_at = None;
            }
        }
    }

    /// Attempt `attempt` succeeded: queues `Won` and a `Cancel` for each other one in flight.
    /// Later replies are ignored.
    pub fn on_success(&mut self, attempt: u32) {
        let i = attempt as usize;
        if self.done || self.attempts.get(i) != Some(&Attempt::InFlight) {
            return;
        }
        self.done = true;
        self.attempts[i] = Attempt::Done;
        self.actions.push_back(HedgeAction::Won { winner: attempt });
        for (j, a) in self.attempts.iter_mut().enumerate() {
            if *a == Attempt::InFlight {
                *a = Attempt::Done;
                self.actions
                    .push_back(HedgeAction::Cancel { attempt: j as u32 });
            }
        }
    }

    /// Attempt `attempt` failed at `now`. When nothing is in flight any more, hedges at once
    /// (if allowed and left) or queues `Failed`.
    pub fn on_failure(&mut self, now: Instant, attempt: u32) {
        self.failed(now, attempt, |_| true);
    }

    /// Like [`on_failure`](Self::on_failure), but the immediate hedge is only sent if `gate`
    /// (the budget [`handle_timeout_gated`](Self::handle_timeout_gated) uses) allows it;
    /// otherwise the request fails. Without it, a hedge sent on failure is a retry that no
    /// budget sees.
    pub fn on_failure_gated(
        &mut self,
        now: Instant,
        attempt: u32,
        gate: &mut impl RetryGate,
        rng: &mut Rng,
    ) {
        self.failed(now, attempt, |now| gate.try_withdraw(now, rng));
    }

    fn failed(&mut self, now: Instant, attempt: u32, allow: impl FnOnce(Instant) -> bool) {
        let i = attempt as usize;
        if self.done || self.attempts.get(i) != Some(&Attempt::InFlight) {
            return;
        }
        self.attempts[i] = Attempt::Failed;
        if self.attempts.contains(&Attempt::InFlight) {
            return;
        }
        if self.hedge_on_failure && self.extra_sent() < self.max_extra && allow(now) {
            self.send(now);
        } else {
            self.done = true;
            self.actions.push_back(HedgeAction::Failed);
        }
    }

    /// The next thing to do.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<HedgeAction> {
        self.actions.pop_front()
    }

    /// Attempts sent so far, including the first.
    pub fn attempts(&self) -> u32 {
        self.attempts.len() as u32
    }

    /// Whether the request is decided (won or failed).
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    fn drain(h: &mut Hedge) -> Vec<HedgeAction> {
        core::iter::from_fn(|| h.poll_action()).collect()
    }

    #[test]
    fn hedges_after_delay_and_cancels_losers() {
        let p = HedgePolicy {
            delay: HedgeDelay::Fixed(10 * MS),
            max_extra: 2,
            hedge_on_failure: true,
        };
        let mut h = p.start(ms(0), &LatencyTracker::default());
        assert_eq!(h.poll_timeout(), Some(ms(10)));
        h.handle_timeout(ms(5));
        assert!(drain(&mut h).is_empty());
        h.handle_timeout(ms(10));
        assert_eq!(drain(&mut h), [HedgeAction::Send { attempt: 1 }]);
        assert_eq!(h.poll_timeout(), Some(ms(20)));
        h.on_success(1);
        assert_eq!(
            drain(&mut h),
            [
                HedgeAction::Won { winner: 1 },
                HedgeAction::Cancel { attempt: 0 }
            ]
        );
        assert_eq!(h.poll_timeout(), None);
        h.on_success(0);
        assert!(drain(&mut h).is_empty(), "late reply ignored");
    }

    #[test]
    fn failure_triggers_immediate_hedge_then_gives_up() {
        let p = HedgePolicy {
            delay: HedgeDelay::Fixed(10 * MS),
            max_extra: 1,
            hedge_on_failure: true,
        };
        let mut h = p.start(ms(0), &LatencyTracker::default());
        h.on_failure(ms(2), 0);
        assert_eq!(drain(&mut h), [HedgeAction::Send { attempt: 1 }]);
        assert_eq!(h.poll_timeout(), None);
        h.on_failure(ms(3), 1);
        assert_eq!(drain(&mut h), [HedgeAction::Failed]);
        assert!(h.is_done());
    }

    #[test]
    fn budget_gates_hedges() {
        use crate::retry::{RetryBudget, RetryGate};
        let p = HedgePolicy {
            delay: HedgeDelay::Fixed(10 * MS),
            max_extra: 3,
            hedge_on_failure: false,
        };
        // 10% of requests, no reserve: 10 requests earn exactly one hedge.
        let mut budget = RetryBudget::new(Duration::from_secs(10), 0, 0.1);
        let mut rng = Rng::new(1);
        let mut sent = 0;
        for _ in 0..10 {
            budget.deposit(ms(0));
        }
        for _ in 0..5 {
            let mut h = p.start(ms(0), &LatencyTracker::default());
            for t in [10, 20, 30, 40] {
                h.handle_timeout_gated(ms(t), &mut budget, &mut rng);
            }
            sent += drain(&mut h).len();
            assert!(h.poll_timeout().is_none());
        }
        assert_eq!(sent, 1);
    }

    #[test]
    fn percentile_delay() {
        let mut t = LatencyTracker::new(100, 10);
        let p = HedgePolicy::default();
        assert_eq!(p.delay(&t), 50 * MS, "fallback while warming up");
        for i in 1..=100 {
            t.record(i * MS);
        }
        assert_eq!(t.percentile(0.95), Some(95 * MS));
        assert_eq!(t.percentile(0.0), Some(MS));
        assert_eq!(p.delay(&t), 95 * MS);
        for _ in 0..100 {
            t.record(Duration::ZERO);
        }
        assert_eq!(p.delay(&t), MS, "at least min");
    }

    #[test]
    fn failure_hedge_asks_the_gate() {
        let p = HedgePolicy {
            delay: HedgeDelay::Fixed(10 * MS),
            max_extra: 2,
            hedge_on_failure: true,
        };
        let mut rng = Rng::new(1);
        // A budget with no requests and no reserve admits nothing.
        let mut empty = crate::retry::RetryBudget::new(Duration::from_secs(1), 0, 0.0);
        let mut h = p.start(ms(0), &LatencyTracker::default());
        h.on_failure_gated(ms(1), 0, &mut empty, &mut rng);
        assert_eq!(h.poll_action(), Some(HedgeAction::Failed));
        assert_eq!(h.attempts(), 1);
        // A budget with room pays for the hedge.
        let mut budget = crate::retry::RetryBudget::new(Duration::from_secs(1), 1, 0.0);
        let mut h = p.start(ms(0), &LatencyTracker::default());
        h.on_failure_gated(ms(1), 0, &mut budget, &mut rng);
        assert_eq!(h.poll_action(), Some(HedgeAction::Send { attempt: 1 }));
        assert_eq!(budget.balance(ms(1)), 0);
    }

    proptest! {
        /// The kept-sorted samples answer exactly what sorting the last `capacity` samples
        /// would, for every percentile, as the ring wraps.
        #[test]
        fn percentile_matches_sorting_the_window(
            capacity in 1usize..40,
            samples in proptest::collection::vec(0u64..50, 0..200),
            p in 0.0f64..=1.0,
        ) {
            let mut t = LatencyTracker::new(capacity, 1);
            let mut all = Vec::new();
            for s in samples {
                t.record(Duration::from_nanos(s));
                all.push(s);
                let mut window: Vec<u64> = all.iter().rev().take(capacity).copied().collect();
                window.sort_unstable();
                let rank = ((p * window.len() as f64).ceil() as usize).clamp(1, window.len());
                prop_assert_eq!(t.percentile(p), Some(Duration::from_nanos(window[rank - 1])));
            }
        }

        #[test]
        fn never_exceeds_max_extra(max_extra in 0u32..5,
                                   events in proptest::collection::vec((0u8..3, 0u32..8), 0..60)) {
            let p = HedgePolicy { delay: HedgeDelay::Fixed(MS), max_extra, hedge_on_failure: true };
            let mut h = p.start(ms(0), &LatencyTracker::default());
            let mut sends = 0;
            let mut won = 0;
            for (i, (kind, which)) in events.into_iter().enumerate() {
                let now = ms(i as u64 + 1);
                match kind {
                    0 => h.handle_timeout(now),
                    1 => h.on_failure(now, which),
                    _ => h.on_success(which),
                }
                while let Some(a) = h.poll_action() {
                    match a {
                        HedgeAction::Send { .. } => sends += 1,
                        HedgeAction::Won { .. } => won += 1,
                        _ => {}
                    }
                }
                prop_assert!(sends <= max_extra);
                prop_assert!(h.attempts() <= max_extra + 1);
                prop_assert!(won <= 1);
            }
        }
    }
}
