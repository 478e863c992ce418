//! Circuit breakers per destination: closed → open → half-open → closed.
//!
//! Modelled on resilience4j's breaker, with Hystrix-style half-open probing:
//!
//! - **Closed**: calls flow. Each outcome is recorded in a sliding window (the last N calls,
//!   or the last T of time in buckets). The breaker opens when `consecutive_failures` fail in
//!   a row, or — once the window holds at least `minimum_calls` — when the failure rate or the
//!   slow-call rate reaches its threshold.
//! - **Open**: every call is rejected until `open_duration` has passed (optionally doubling on
//!   each consecutive re-open, up to `max_open_duration`).
//! - **Half-open**: exactly `half_open_calls` probes are admitted; the breaker closes when all
//!   of them succeed and re-opens on the first failure (or slow probe, when slow calls count),
//!   or when the probes have not decided within `max_half_open_wait`.
//!
//! Sans-IO: time is passed in. A driver asks [`CircuitBreaker::try_acquire`] before each call
//! and reports the outcome with the returned [`Permit`]; it arms a timer at
//! [`CircuitBreaker::poll_timeout`] (the end of the open period) and calls
//! [`CircuitBreaker::handle_timeout`], though `try_acquire` also moves an expired open breaker
//! to half-open by itself. State changes are queued as [`BreakerEvent`]s for
//! [`CircuitBreaker::poll_event`]. A permit from an earlier state (e.g. a slow call started
//! before the breaker opened) is counted in the metrics but does not drive state.

use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use ferry_proto::Instant;

use crate::config::{in_range, nonzero, ConfigError};
use crate::window::{SlotWindow, MAX_SLOTS};

/// The three states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls flow and are measured.
    Closed,
    /// Calls are rejected.
    Open,
    /// A limited number of probes is admitted.
    HalfOpen,
}

/// The kind of sliding window used in the closed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlidingWindow {
    /// The last `n` calls.
    Count(u32),
    /// Calls of the last `span`, kept in `buckets` buckets (at most 65 536, and at least
    /// 1 ns each; more are clamped).
    Time {
        /// Window length.
        span: Duration,
        /// Number of buckets (resolution).
        buckets: u32,
    },
}

/// Breaker configuration. Every trigger is optional.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Open after this many failures in a row (`None` = off).
    pub consecutive_failures: Option<u32>,
    /// Open when failures / calls in the window reach this (0.0..=1.0; `None` = off).
    pub failure_rate: Option<f64>,
    /// Open when slow calls / calls in the window reach this (`None` = off).
    pub slow_call_rate: Option<f64>,
    /// A call taking at least this long is slow.
    pub slow_call_duration: Duration,
    /// The window the rates are computed over.
    pub window: SlidingWindow,
    /// Rates are only evaluated once the window holds this many calls.
    pub minimum_calls: u32,
    /// How long the breaker stays open.
    pub open_duration: Duration,
    /// If set, the open duration doubles on each consecutive re-open up to this bound.
    pub max_open_duration: Option<Duration>,
    /// Probes admitted in half-open; this many successes close the breaker.
    pub half_open_calls: u32,
    /// Re-open if the probes have not decided within this long (a probe that never returns
    /// would otherwise hold the breaker half-open forever). `None` = wait indefinitely.
    pub max_half_open_wait: Option<Duration>,
    /// At most this many events are queued; older ones are dropped (and counted).
    pub event_capacity: usize,
}

impl BreakerConfig {
    /// Checks the configuration: rates in `(0, 1]`, positive counts and durations
    /// (`consecutive_failures`, `half_open_calls`, `open_duration`, the window,
    /// `max_half_open_wait`, `event_capacity`), `max_open_duration >= open_duration`, and at
    /// least one trigger on. [`CircuitBreaker::new`] instead clamps what it can (a rate of
    /// NaN or above 1 then silently never opens the breaker; a rate of 0 opens it on the
    /// first `minimum_calls` calls, failed or not).
    pub fn validate(&self) -> Result<(), ConfigError> {
        nonzero("consecutive_failures", self.consecutive_failures == Some(0))?;
        if let Some(r) = self.failure_rate {
            in_range("failure_rate", r, 0.0, 1.0, true)?;
        }
        if let Some(r) = self.slow_call_rate {
            in_range("slow_call_rate", r, 0.0, 1.0, true)?;
        }
        if self.consecutive_failures.is_none()
            && self.failure_rate.is_none()
            && self.slow_call_rate.is_none()
        {
            return Err(ConfigError::Inconsistent {
                field: "consecutive_failures",
            });
        }
        match self.window {
            SlidingWindow::Count(n) => nonzero("window", n == 0)?,
            SlidingWindow::Time { span, buckets } => {
                nonzero("window", span.is_zero() || buckets == 0)?;
                if u128::from(buckets) > span.as_nanos() || buckets > MAX_SLOTS {
                    return Err(ConfigError::Inconsistent { field: "window" });
                }
            }
        }
        nonzero("open_duration", self.open_duration.is_zero())?;
        if self
            .max_open_duration
            .is_some_and(|m| m < self.open_duration)
        {
            return Err(ConfigError::Inconsistent {
                field: "max_open_duration",
            });
        }
        nonzero("half_open_calls", self.half_open_calls == 0)?;
        nonzero(
            "max_half_open_wait",
            self.max_half_open_wait.is_some_and(|w| w.is_zero()),
        )?;
        nonzero("event_capacity", self.event_capacity == 0)
    }
}

impl Default for BreakerConfig {
    /// 5 consecutive failures, or ≥ 50% failures over the last 100 calls (minimum 20);
    /// open 5 s (doubling to 60 s); 3 half-open probes.
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: Some(5),
            failure_rate: Some(0.5),
            slow_call_rate: None,
            slow_call_duration: Duration::from_secs(5),
            window: SlidingWindow::Count(100),
            minimum_calls: 20,
            open_duration: Duration::from_secs(5),
            max_open_duration: Some(Duration::from_secs(60)),
            half_open_calls: 3,
            max_half_open_wait: Some(Duration::from_secs(30)),
            event_capacity: 64,
        }
    }
}

/// Why the breaker opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenReason {
    /// `consecutive_failures` in a row.
    ConsecutiveFailures,
    /// The failure rate reached its threshold.
    FailureRate,
    /// The slow-call rate reached its threshold.
    SlowCallRate,
    /// A half-open probe failed.
    ProbeFailed,
    /// The half-open probes did not decide within `max_half_open_wait`.
    ProbesStuck,
    /// [`CircuitBreaker::force_open`].
    Forced,
}

/// What observers see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerEvent {
    /// The breaker opened until `until`.
    Opened {
        /// Why.
        reason: OpenReason,
        /// When it will admit probes.
        until: Instant,
    },
    /// The open period ended; probes are admitted.
    HalfOpened,
    /// All probes succeeded (or [`CircuitBreaker::reset`]).
    Closed,
}

/// A call was rejected because the breaker is open or out of half-open probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejected {
    /// Open; retry after this instant.
    Open {
        /// End of the open period.
        until: Instant,
    },
    /// Half-open and all probe slots are taken.
    ProbesExhausted,
}

/// Permission for one call; hand it back with the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "report the outcome with on_success/on_failure/on_ignored"]
pub struct Permit {
    epoch: u64,
    started: Instant,
    probe: bool,
}

impl Permit {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Counters since creation, plus current window figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BreakerMetrics {
    /// Calls admitted.
    pub permitted: u64,
    /// Calls rejected.
    pub rejected: u64,
    /// Successful outcomes reported.
    pub successes: u64,
    /// Failed outcomes reported.
    pub failures: u64,
    /// Slow outcomes reported (success or failure).
    pub slow_calls: u64,
    /// Times the breaker opened.
    pub opened: u64,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
    /// Calls in the current window.
    pub window_calls: u64,
    /// Failure rate of the current window (0.0 when empty).
    pub failure_rate: f64,
    /// Slow-call rate of the current window (0.0 when empty).
    pub slow_call_rate: f64,
}

#[derive(Clone, Debug)]
enum Window {
    /// Ring of outcomes (bit 0: failed, bit 1: slow; grown up to `cap`, then overwritten
    /// oldest first at `next`) and running totals `[calls, failures, slow]`.
    Count {
        ring: Vec<u8>,
        next: usize,
        cap: usize,
        totals: [u64; 3],
    },
    Time(SlotWindow<3>),
}

impl Window {
    fn new(kind: SlidingWindow) -> Self {
        match kind {
            SlidingWindow::Count(n) => Window::Count {
                ring: Vec::with_capacity(n.clamp(1, 4096) as usize),
                next: 0,
                cap: n.max(1) as usize,
                totals: [0; 3],
            },
            SlidingWindow::Time { span, buckets } => Window::Time(SlotWindow::new(span, buckets)),
        }
    }

    #[inline]
    fn record(&mut self, now: Instant, failed: bool, slow: bool) {
        match self {
            Window::Count {
                ring,
                next,
                cap,
                totals,
            } => {
                let v = u8::from(failed) | (u8::from(slow) << 1);
                if ring.len() < *cap {
                    ring.push(v);
                } else if let Some(old) = ring.get_mut(*next) {
                    let o = std::mem::replace(old, v);
                    totals[0] -= 1;
                    totals[1] -= u64::from(o & 1);
                    totals[2] -= u64::from(o >> 1);
                    *next = if *next + 1 >= *cap { 0 } else { *next + 1 };
                }
                totals[0] += 1;
                totals[1] += u64::from(failed);
                totals[2] += u64::from(slow);
            }
            Window::Time(w) => w.add(now, [1, u64::from(failed), u64::from(slow)]),
        }
    }

    fn totals(&self, now: Instant) -> [u64; 3] {
        match self {
            Window::Count { totals, .. } => *totals,
            Window::Time(w) => w.totals(now),
        }
    }

    fn clear(&mut self) {
        match self {
            Window::Count {
                ring, next, totals, ..
            } => {
                ring.clear();
                *next = 0;
                *totals = [0; 3];
            }
            Window::Time(w) => w.clear(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Inner {
    Closed {
        consecutive: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        issued: u32,
        succeeded: u32,
        since: Instant,
    },
}

/// One circuit breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Inner,
    epoch: u64,
    /// Consecutive opens without a close in between (drives exponential open duration).
    reopen_level: u32,
    window: Window,
    events: VecDeque<BreakerEvent>,
    metrics: BreakerMetrics,
}

fn rate(part: u64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        part as f64 / calls as f64
    }
}

/// `rate(part, calls) >= t`, without the division when `part` is zero (the usual case: then
/// the rate is 0.0, which reaches `t` exactly when `t <= 0.0`).
#[inline]
fn reaches(part: u64, calls: u64, t: f64) -> bool {
    if part == 0 {
        t <= 0.0
    } else {
        rate(part, calls) >= t
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            window: Window::new(config.window),
            config,
            inner: Inner::Closed { consecutive: 0 },
            epoch: 0,
            reopen_level: 0,
            events: VecDeque::new(),
            metrics: BreakerMetrics::default(),
        }
    }

    /// A closed breaker, after checking `config` with [`BreakerConfig::validate`].
    pub fn try_new(config: BreakerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(CircuitBreaker::new(config))
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state at `now` (an expired open period reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if now < until => BreakerState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make one call at `now`.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, Rejected> {
        self.handle_timeout(now);
        let probe = match &mut self.inner {
            Inner::Closed { .. } => false,
            Inner::Open { until } => {
                let until = *until;
                self.metrics.rejected += 1;
                return Err(Rejected::Open { until });
            }
            Inner::HalfOpen { issued, .. } => {
                if *issued >= self.config.half_open_calls.max(1) {
                    self.metrics.rejected += 1;
                    return Err(Rejected::ProbesExhausted);
                }
                *issued += 1;
                true
            }
        };
        self.metrics.permitted += 1;
        Ok(Permit {
            epoch: self.epoch,
            started: now,
            probe,
        })
    }

    /// The call succeeded at `now` (it still counts as slow if it took too long).
    pub fn on_success(&mut self, now: Instant, permit: Permit) {
        self.record(now, permit, false);
    }

    /// The call failed at `now`.
    pub fn on_failure(&mut self, now: Instant, permit: Permit) {
        self.record(now, permit, true);
    }

    /// The call ended without a verdict (cancelled, or an error that says nothing about the
    /// destination): frees a half-open probe slot, records nothing.
    pub fn on_ignored(&mut self, permit: Permit) {
        if permit.epoch != self.epoch {
            return;
        }
        if let Inner::HalfOpen { issued, .. } = &mut self.inner {
            *issued = issued.saturating_sub(1);
        }
    }

    #[inline(always)]
    fn record(&mut self, now: Instant, permit: Permit, failed: bool) {
        let slow = now - permit.started >= self.config.slow_call_duration;
        if failed {
            self.metrics.failures += 1;
        } else {
            self.metrics.successes += 1;
        }
        self.metrics.slow_calls += u64::from(slow);
        if permit.epoch != self.epoch {
            return;
        }
        match &mut self.inner {
            Inner::Closed { consecutive } => {
                *consecutive = if failed {
                    consecutive.saturating_add(1)
                } else {
                    0
                };
                let consecutive = *consecutive;
                self.window.record(now, failed, slow);
                if let Some(reason) = self.should_open(now, consecutive) {
                    self.open(now, reason);
                }
            }
            Inner::HalfOpen { succeeded, .. } => {
                let bad = failed || (slow && self.config.slow_call_rate.is_some());
                if bad {
                    self.open(now, OpenReason::ProbeFailed);
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.config.half_open_calls.max(1) {
                        self.reopen_level = 0;
                        self.transition(Inner::Closed { consecutive: 0 }, BreakerEvent::Closed);
                    }
                }
            }
            Inner::Open { .. } => {}
        }
    }

    #[inline]
    fn should_open(&self, now: Instant, consecutive: u32) -> Option<OpenReason> {
        let c = &self.config;
        if c.consecutive_failures
            .is_some_and(|n| consecutive >= n.max(1))
        {
            return Some(OpenReason::ConsecutiveFailures);
        }
        let [calls, failures, slow] = self.window.totals(now);
        if calls == 0 || calls < u64::from(c.minimum_calls) {
            return None;
        }
        if c.failure_rate.is_some_and(|t| reaches(failures, calls, t)) {
            return Some(OpenReason::FailureRate);
        }
        if c.slow_call_rate.is_some_and(|t| reaches(slow, calls, t)) {
            return Some(OpenReason::SlowCallRate);
        }
        None
    }

    fn open_duration(&self) -> Duration {
        let base = self.config.open_duration;
        match self.config.max_open_duration {
            Some(max) => {
                let factor = 1u32 << self.reopen_level.min(20);
                base.checked_mul(factor).unwrap_or(max).min(max)
            }
            None => base,
        }
    }

    #[cold]
    fn open(&mut self, now: Instant, reason: OpenReason) {
        let until = now + self.open_duration();
        self.reopen_level = self.reopen_level.saturating_add(1);
        self.metrics.opened += 1;
        self.transition(
            Inner::Open { until },
            BreakerEvent::Opened { reason, until },
        );
    }

    fn transition(&mut self, to: Inner, ev: BreakerEvent) {
        self.inner = to;
        self.epoch += 1;
        self.window.clear();
        if self.events.len() >= self.config.event_capacity.max(1) {
            self.events.pop_front();
            self.metrics.events_dropped += 1;
        }
        self.events.push_back(ev);
    }

    /// When the open period ends or half-open probing times out (arm a timer), or `None`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.inner {
            Inner::Open { until } => Some(until),
            Inner::HalfOpen { since, .. } => self.config.max_half_open_wait.map(|w| since + w),
            Inner::Closed { .. } => None,
        }
    }

    /// Moves an expired open breaker to half-open, or a stuck half-open one back to open;
    /// otherwise a no-op.
    #[inline]
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.inner {
            Inner::Open { until } if now >= until => {
                let half = Inner::HalfOpen {
                    issued: 0,
                    succeeded: 0,
                    since: now,
                };
                self.transition(half, BreakerEvent::HalfOpened);
            }
            Inner::HalfOpen { since, .. }
                if self
                    .config
                    .max_half_open_wait
                    .is_some_and(|w| now >= since + w) =>
            {
                self.open(now, OpenReason::ProbesStuck);
            }
            _ => {}
        }
    }

    /// The next queued state change.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<BreakerEvent> {
        self.events.pop_front()
    }

    /// Whether a state change is queued ([`poll_event`](Self::poll_event) has one).
    #[inline]
    #[must_use]
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Opens the breaker now (operator action).
    pub fn force_open(&mut self, now: Instant) {
        self.open(now, OpenReason::Forced);
    }

    /// Closes the breaker and forgets history.
    pub fn reset(&mut self) {
        self.reopen_level = 0;
        self.transition(Inner::Closed { consecutive: 0 }, BreakerEvent::Closed);
    }

    /// Counters and the current window's rates.
    pub fn metrics(&self, now: Instant) -> BreakerMetrics {
        let [calls, failures, slow] = self.window.totals(now);
        BreakerMetrics {
            window_calls: calls,
            failure_rate: rate(failures, calls),
            slow_call_rate: rate(slow, calls),
            ..self.metrics
        }
    }
}

/// One breaker per destination key, created on first use with a shared config.
///
/// Keys are ordered (a `BTreeMap`), so iteration and event order are deterministic.
#[derive(Clone, Debug)]
pub struct Breakers<K> {
    config: BreakerConfig,
    map: BTreeMap<K, CircuitBreaker>,
}

impl<K: Ord + Clone> Breakers<K> {
    /// An empty map; every breaker gets `config`.
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            map: BTreeMap::new(),
        }
    }

    /// [`new`](Self::new) after checking `config` with [`BreakerConfig::validate`].
    pub fn try_new(config: BreakerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Breakers::new(config))
    }

    /// The breaker for `key`, created closed if absent.
    pub fn get_mut(&mut self, key: &K) -> &mut CircuitBreaker {
        let config = &self.config;
        self.map
            .entry(key.clone())
            .or_insert_with(|| CircuitBreaker::new(config.clone()))
    }

    /// The breaker for `key`, if it exists.
    pub fn get(&self, key: &K) -> Option<&CircuitBreaker> {
        self.map.get(key)
    }

    /// [`CircuitBreaker::try_acquire`] on `key`'s breaker.
    pub fn try_acquire(&mut self, key: &K, now: Instant) -> Result<Permit, Rejected> {
        self.get_mut(key).try_acquire(now)
    }

    /// [`CircuitBreaker::on_success`] on `key`'s breaker. A permit whose breaker was
    /// [`remove`](Self::remove)d meanwhile is dropped: it neither re-creates the breaker (a
    /// destination that left would come back with every late reply) nor counts on a new one.
    pub fn on_success(&mut self, key: &K, now: Instant, permit: Permit) {
        if let Some(b) = self.map.get_mut(key) {
            b.on_success(now, permit);
        }
    }

    /// [`CircuitBreaker::on_failure`] on `key`'s breaker (a removed one: see
    /// [`on_success`](Self::on_success)).
    pub fn on_failure(&mut self, key: &K, now: Instant, permit: Permit) {
        if let Some(b) = self.map.get_mut(key) {
            b.on_failure(now, permit);
        }
    }

    /// Keys whose breaker is not open at `now` (a half-open one may still be out of probes).
    pub fn available(&self, now: Instant) -> impl Iterator<Item = &K> + '_ {
        self.map
            .iter()
            .filter(move |(_, b)| b.state(now) != BreakerState::Open)
            .map(|(k, _)| k)
    }

    /// The earliest open period end over all breakers.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.map.values().filter_map(|b| b.poll_timeout()).min()
    }

    /// [`CircuitBreaker::handle_timeout`] on every breaker.
    pub fn handle_timeout(&mut self, now: Instant) {
        for b in self.map.values_mut() {
            b.handle_timeout(now);
        }
    }

    /// The next queued event of any breaker, with its key.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<(K, BreakerEvent)> {
        self.map
            .iter_mut()
            .find_map(|(k, b)| b.poll_event().map(|e| (k.clone(), e)))
    }

    /// Every breaker with its key (for exporting per-destination metrics).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &CircuitBreaker)> + '_ {
        self.map.iter()
    }

    /// Forgets `key`'s breaker (e.g. the destination left service discovery).
    pub fn remove(&mut self, key: &K) -> Option<CircuitBreaker> {
        self.map.remove(key)
    }

    /// Number of breakers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The count window's ring keeps the totals of exactly the last `cap` outcomes (a
        /// plain queue as the model), across clears.
        #[test]
        fn count_window_totals_match_a_queue(
            cap in 1u32..9,
            ops in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u8..20), 0..80),
        ) {
            let mut w = Window::new(SlidingWindow::Count(cap));
            let mut model: VecDeque<(bool, bool)> = VecDeque::new();
            for (failed, slow, op) in ops {
                if op == 0 {
                    w.clear();
                    model.clear();
                    continue;
                }
                w.record(Instant::ZERO, failed, slow);
                if model.len() == cap as usize {
                    model.pop_front();
                }
                model.push_back((failed, slow));
                let want = [
                    model.len() as u64,
                    model.iter().filter(|o| o.0).count() as u64,
                    model.iter().filter(|o| o.1).count() as u64,
                ];
                prop_assert_eq!(w.totals(Instant::ZERO), want);
            }
        }

        /// `reaches` is `rate(part, calls) >= t`, also for a zero part and odd thresholds.
        #[test]
        fn reaches_is_the_rate_compare(
            calls in 1u64..1000,
            part in 0u64..1000,
            t in prop_oneof![
                Just(0.0),
                Just(-0.0),
                Just(-1.0),
                Just(f64::NAN),
                Just(f64::INFINITY),
                -2.0f64..2.0,
            ],
        ) {
            let part = part.min(calls);
            prop_assert_eq!(reaches(part, calls, t), rate(part, calls) >= t);
        }
    }

    #[test]
    fn has_events_says_whether_poll_event_has_one() {
        let mut b = CircuitBreaker::new(BreakerConfig::default());
        assert!(!b.has_events());
        b.force_open(Instant::ZERO);
        assert!(b.has_events());
        assert!(b.poll_event().is_some());
        assert!(!b.has_events());
        assert!(b.poll_event().is_none());
    }

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }
    const MS: Duration = Duration::from_millis(1);

    fn consecutive(n: u32, probes: u32) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: Some(n),
            failure_rate: None,
            open_duration: 100 * MS,
            max_open_duration: None,
            half_open_calls: probes,
            ..BreakerConfig::default()
        }
    }

    fn fail(b: &mut CircuitBreaker, now: Instant) -> Result<(), Rejected> {
        let p = b.try_acquire(now)?;
        b.on_failure(now, p);
        Ok(())
    }

    fn succeed(b: &mut CircuitBreaker, now: Instant) -> Result<(), Rejected> {
        let p = b.try_acquire(now)?;
        b.on_success(now, p);
        Ok(())
    }

    #[test]
    fn full_cycle_with_events() {
        let mut b = CircuitBreaker::new(consecutive(3, 2));
        for _ in 0..3 {
            fail(&mut b, ms(0)).unwrap();
        }
        assert_eq!(b.state(ms(0)), BreakerState::Open);
        assert_eq!(
            b.poll_event(),
            Some(BreakerEvent::Opened {
                reason: OpenReason::ConsecutiveFailures,
                until: ms(100)
            })
        );
        assert_eq!(
            b.try_acquire(ms(50)),
            Err(Rejected::Open { until: ms(100) })
        );
        assert_eq!(b.poll_timeout(), Some(ms(100)));
        b.handle_timeout(ms(99));
        assert_eq!(b.poll_event(), None);
        b.handle_timeout(ms(100));
        assert_eq!(b.poll_event(), Some(BreakerEvent::HalfOpened));
        succeed(&mut b, ms(101)).unwrap();
        succeed(&mut b, ms(102)).unwrap();
        assert_eq!(b.state(ms(102)), BreakerState::Closed);
        assert_eq!(b.poll_event(), Some(BreakerEvent::Closed));
        let m = b.metrics(ms(102));
        assert_eq!(
            (m.opened, m.rejected, m.failures, m.successes),
            (1, 1, 3, 2)
        );
    }

    #[test]
    fn half_open_failure_reopens_with_exponential_duration() {
        let mut cfg = consecutive(1, 1);
        cfg.max_open_duration = Some(350 * MS);
        let mut b = CircuitBreaker::new(cfg);
        fail(&mut b, ms(0)).unwrap();
        assert_eq!(b.poll_timeout(), Some(ms(100)));
        fail(&mut b, ms(100)).unwrap(); // probe fails
        assert_eq!(b.poll_timeout(), Some(ms(300)), "200 ms");
        fail(&mut b, ms(300)).unwrap();
        assert_eq!(b.poll_timeout(), Some(ms(650)), "capped at 350 ms");
        succeed(&mut b, ms(650)).unwrap();
        assert_eq!(b.state(ms(650)), BreakerState::Closed);
        fail(&mut b, ms(700)).unwrap();
        assert_eq!(
            b.poll_timeout(),
            Some(ms(800)),
            "back to base after closing"
        );
    }

    #[test]
    fn stuck_probes_reopen() {
        let mut cfg = consecutive(1, 1);
        cfg.max_half_open_wait = Some(500 * MS);
        let mut b = CircuitBreaker::new(cfg);
        fail(&mut b, ms(0)).unwrap();
        let stuck = b.try_acquire(ms(100)).unwrap();
        assert_eq!(b.try_acquire(ms(200)), Err(Rejected::ProbesExhausted));
        assert_eq!(b.poll_timeout(), Some(ms(600)));
        b.handle_timeout(ms(600));
        assert_eq!(b.state(ms(600)), BreakerState::Open);
        b.on_success(ms(601), stuck); // too late: ignored
        assert_eq!(b.state(ms(601)), BreakerState::Open);
        let events: Vec<_> = core::iter::from_fn(|| b.poll_event()).collect();
        assert!(matches!(
            events.last(),
            Some(BreakerEvent::Opened {
                reason: OpenReason::ProbesStuck,
                ..
            })
        ));
    }

    #[test]
    fn stale_permits_do_not_drive_state() {
        let mut b = CircuitBreaker::new(consecutive(2, 1));
        let old = b.try_acquire(ms(0)).unwrap();
        fail(&mut b, ms(0)).unwrap();
        fail(&mut b, ms(0)).unwrap();
        b.handle_timeout(ms(100));
        // A call from the closed period finishes now: must not count as the probe.
        b.on_success(ms(100), old);
        assert_eq!(b.state(ms(100)), BreakerState::HalfOpen);
        let p = b.try_acquire(ms(100)).unwrap();
        assert!(p.is_probe());
        b.on_ignored(p);
        let p = b.try_acquire(ms(100)).unwrap();
        b.on_success(ms(101), p);
        assert_eq!(b.state(ms(101)), BreakerState::Closed);
    }

    #[test]
    fn failure_rate_needs_minimum_calls_count_window() {
        let cfg = BreakerConfig {
            consecutive_failures: None,
            failure_rate: Some(0.5),
            window: SlidingWindow::Count(10),
            minimum_calls: 6,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(cfg);
        for _ in 0..5 {
            fail(&mut b, ms(0)).unwrap();
        }
        assert_eq!(b.state(ms(0)), BreakerState::Closed, "5 < minimum 6");
        fail(&mut b, ms(0)).unwrap();
        assert_eq!(b.state(ms(0)), BreakerState::Open);
        assert_eq!(
            b.poll_event(),
            Some(BreakerEvent::Opened {
                reason: OpenReason::FailureRate,
                until: ms(5000)
            })
        );
    }

    #[test]
    fn count_window_slides() {
        let cfg = BreakerConfig {
            consecutive_failures: None,
            failure_rate: Some(0.5),
            window: SlidingWindow::Count(4),
            minimum_calls: 4,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(cfg);
        // F S S S F S S S ...: one failure in every 4 consecutive calls (25%).
        for i in 0..40 {
            if i % 4 == 0 {
                fail(&mut b, ms(i)).unwrap();
            } else {
                succeed(&mut b, ms(i)).unwrap();
            }
        }
        assert_eq!(b.state(ms(40)), BreakerState::Closed);
        assert_eq!(b.metrics(ms(40)).window_calls, 4);
        fail(&mut b, ms(41)).unwrap(); // window: S S S F → 25%
        assert_eq!(b.state(ms(41)), BreakerState::Closed);
        fail(&mut b, ms(42)).unwrap(); // window: S S F F → 50%
        assert_eq!(b.state(ms(42)), BreakerState::Open);
    }

    #[test]
    fn time_window_forgets_old_failures() {
        let cfg = BreakerConfig {
            consecutive_failures: None,
            failure_rate: Some(0.5),
            window: SlidingWindow::Time {
                span: Duration::from_secs(10),
                buckets: 10,
            },
            minimum_calls: 4,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(cfg);
        for _ in 0..3 {
            fail(&mut b, ms(0)).unwrap();
        }
        // 11 s later those failures are out of the window.
        succeed(&mut b, ms(11_000)).unwrap();
        fail(&mut b, ms(11_000)).unwrap();
        assert_eq!(
            b.state(ms(11_000)),
            BreakerState::Closed,
            "2 calls < minimum 4"
        );
        fail(&mut b, ms(11_001)).unwrap();
        fail(&mut b, ms(11_002)).unwrap();
        assert_eq!(b.state(ms(11_002)), BreakerState::Open);
    }

    #[test]
    fn slow_call_rate_opens() {
        let cfg = BreakerConfig {
            consecutive_failures: None,
            failure_rate: None,
            slow_call_rate: Some(0.5),
            slow_call_duration: 100 * MS,
            window: SlidingWindow::Count(4),
            minimum_calls: 4,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(cfg);
        for i in 0..4u64 {
            let p = b.try_acquire(ms(i * 1000)).unwrap();
            let took = if i < 2 { 150 } else { 10 };
            b.on_success(ms(i * 1000 + took), p);
        }
        assert_eq!(b.state(ms(4000)), BreakerState::Open);
        assert_eq!(b.metrics(ms(4000)).slow_calls, 2);
    }

    #[test]
    fn forced_open_reset_and_event_capacity() {
        let mut cfg = consecutive(1, 1);
        cfg.event_capacity = 2;
        let mut b = CircuitBreaker::new(cfg);
        b.force_open(ms(0));
        b.reset();
        b.force_open(ms(0));
        assert_eq!(b.metrics(ms(0)).events_dropped, 1);
        assert_eq!(b.poll_event(), Some(BreakerEvent::Closed));
        assert!(matches!(
            b.poll_event(),
            Some(BreakerEvent::Opened {
                reason: OpenReason::Forced,
                ..
            })
        ));
    }

    #[test]
    fn breakers_map_per_destination() {
        let mut m: Breakers<&str> = Breakers::new(consecutive(2, 1));
        for _ in 0..2 {
            let p = m.try_acquire(&"a", ms(0)).unwrap();
            m.on_failure(&"a", ms(0), p);
        }
        let p = m.try_acquire(&"b", ms(0)).unwrap();
        m.on_success(&"b", ms(0), p);
        assert_eq!(m.len(), 2);
        assert!(m.try_acquire(&"a", ms(1)).is_err());
        assert_eq!(m.available(ms(1)).collect::<Vec<_>>(), vec![&"b"]);
        assert_eq!(m.poll_timeout(), Some(ms(100)));
        assert!(matches!(
            m.poll_event(),
            Some(("a", BreakerEvent::Opened { .. }))
        ));
        m.handle_timeout(ms(100));
        assert_eq!(m.poll_event(), Some(("a", BreakerEvent::HalfOpened)));
        assert_eq!(m.iter().count(), 2);
        assert!(m.remove(&"a").is_some());
        assert!(!m.is_empty());
        assert!(m.get(&"b").is_some());
    }

    #[test]
    fn late_outcomes_do_not_resurrect_a_removed_breaker() {
        let mut m: Breakers<u32> = Breakers::new(consecutive(1, 1));
        let p = m.try_acquire(&7, ms(0)).unwrap();
        // The destination leaves service discovery while its call is in flight.
        assert!(m.remove(&7).is_some());
        m.on_failure(&7, ms(1), p);
        assert!(m.is_empty(), "re-created by a late reply");
        let p = m.try_acquire(&7, ms(2)).unwrap();
        assert!(m.remove(&7).is_some());
        m.on_success(&7, ms(3), p);
        assert!(m.get(&7).is_none());
    }

    proptest! {
        #[test]
        fn opens_after_exactly_n_failures(n in 1u32..50, successes_before in 0u32..20) {
            let mut b = CircuitBreaker::new(consecutive(n, 1));
            for _ in 0..successes_before {
                succeed(&mut b, ms(0)).unwrap();
            }
            for i in 0..n {
                prop_assert_eq!(b.state(ms(0)), BreakerState::Closed, "after {} failures", i);
                fail(&mut b, ms(0)).unwrap();
            }
            prop_assert_eq!(b.state(ms(0)), BreakerState::Open);
            prop_assert!(b.try_acquire(ms(0)).is_err());
        }

        #[test]
        fn half_open_admits_exactly_n_probes(n in 1u32..20, extra in 1u32..10,
                                             fail_at in proptest::option::of(0u32..20)) {
            let mut b = CircuitBreaker::new(consecutive(1, n));
            fail(&mut b, ms(0)).unwrap();
            let now = ms(100);
            let permits: Vec<_> = (0..n).map(|_| b.try_acquire(now).unwrap()).collect();
            for _ in 0..extra {
                prop_assert_eq!(b.try_acquire(now), Err(Rejected::ProbesExhausted));
            }
            let fail_at = fail_at.filter(|&f| f < n);
            for (i, p) in permits.into_iter().enumerate() {
                if Some(i as u32) == fail_at {
                    b.on_failure(now, p);
                    prop_assert_eq!(b.state(now), BreakerState::Open);
                    break;
                }
                prop_assert_eq!(b.state(now), BreakerState::HalfOpen);
                b.on_success(now, p);
            }
            let expect = if fail_at.is_some() { BreakerState::Open } else { BreakerState::Closed };
            prop_assert_eq!(b.state(now), expect);
        }

        #[test]
        fn failure_rate_never_opens_below_minimum_calls(min in 2u32..50, calls in 1u32..50) {
            let cfg = BreakerConfig {
                consecutive_failures: None,
                failure_rate: Some(0.1),
                window: SlidingWindow::Count(100),
                minimum_calls: min,
                ..BreakerConfig::default()
            };
            let mut b = CircuitBreaker::new(cfg);
            for i in 0..calls {
                fail(&mut b, ms(0)).unwrap();
                let open = b.state(ms(0)) == BreakerState::Open;
                prop_assert_eq!(open, i + 1 >= min);
                if open { break; }
            }
        }
    }
}
