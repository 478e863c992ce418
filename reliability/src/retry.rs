//! Retry policies, the idempotency gate, retry budgets and adaptive client-side throttling.
//!
//! - [`Backoff`]: fixed, exponential and the three jittered schedules of the AWS Architecture
//!   Blog ("Exponential Backoff And Jitter"): full, equal and decorrelated jitter.
//! - [`RetryPolicy::decide`]: one call per failed attempt answers "retry, and when?". It only
//!   retries transient failures, only idempotent requests unless
//!   [`RetryPolicy::retry_non_idempotent`] is set, never past the [`Deadline`], and only when
//!   a [`RetryGate`] (a [`RetryBudget`], an [`AdaptiveThrottle`] or [`Unlimited`]) agrees.
//! - [`RetryBudget`]: retries may be at most a ratio of requests over a sliding window, plus a
//!   minimum number per second (Finagle's `RetryBudget`, tower's `TpsBudget`).
//! - [`AdaptiveThrottle`]: Google SRE client-side throttling, rejecting locally with
//!   probability `max(0, (requests - K·accepts) / (requests + 1))`.

use core::time::Duration;

use ferry_proto::Instant;

use crate::config::{in_range, nonzero, ConfigError};
use crate::deadline::Deadline;
use crate::rng::{nanos, Rng};
use crate::window::SlotWindow;

/// Whether an HTTP method is idempotent per RFC 9110 §9.2.2 (GET, HEAD, OPTIONS, TRACE, PUT,
/// DELETE). Method names are case-sensitive.
pub fn is_idempotent_method(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// What the retry decision needs to know about the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// Whether repeating the request is safe.
    pub idempotent: bool,
}

impl RequestInfo {
    /// Classifies by HTTP method ([`is_idempotent_method`]).
    pub fn from_method(method: &[u8]) -> Self {
        RequestInfo {
            idempotent: is_idempotent_method(method),
        }
    }

    /// The caller knows better (e.g. an `Idempotency-Key` header, or a Redis `GET`).
    pub fn with_idempotent(idempotent: bool) -> Self {
        RequestInfo { idempotent }
    }
}

/// How an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The connection could not be established: the request provably never left.
    ConnectFailed,
    /// No answer in time.
    Timeout,
    /// The connection was reset or closed before a complete response.
    Reset,
    /// A complete response with this status code.
    Status(u16),
    /// A failure that repeating cannot fix (bad request, protocol error).
    Fatal,
}

impl Failure {
    /// Transient failures worth retrying: connect failures, timeouts, resets, and statuses
    /// 429, 502, 503, 504.
    pub fn is_transient(self) -> bool {
        match self {
            Failure::ConnectFailed | Failure::Timeout | Failure::Reset => true,
            Failure::Status(s) => matches!(s, 429 | 502 | 503 | 504),
            Failure::Fatal => false,
        }
    }
}

/// A delay schedule. `attempt` counts retries from 0 (the delay before the first retry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backoff {
    /// The same delay every time.
    Fixed(Duration),
    /// `min(cap, base · 2^attempt)`.
    Exponential {
        /// First delay.
        base: Duration,
        /// Upper bound.
        cap: Duration,
    },
    /// `random(0, min(cap, base · 2^attempt))`.
    FullJitter {
        /// First delay bound.
        base: Duration,
        /// Upper bound.
        cap: Duration,
    },
    /// `t = min(cap, base · 2^attempt); t/2 + random(0, t/2)`.
    EqualJitter {
        /// First delay bound.
        base: Duration,
        /// Upper bound.
        cap: Duration,
    },
    /// `min(cap, random(base, previous · 3))`, with `previous = base` initially.
    DecorrelatedJitter {
        /// Lower bound of every delay.
        base: Duration,
        /// Upper bound.
        cap: Duration,
    },
}

fn exp(base: Duration, cap: Duration, attempt: u32) -> u64 {
    let factor = 1u64 << attempt.min(63);
    nanos(base).saturating_mul(factor).min(nanos(cap))
}

impl Backoff {
    /// Checks the schedule: for the growing ones a positive `base` (from zero they never
    /// grow: every retry would go out at once) and `cap >= base` (else every delay is `cap`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            Backoff::Fixed(_) => Ok(()),
            Backoff::Exponential { base, cap }
            | Backoff::FullJitter { base, cap }
            | Backoff::EqualJitter { base, cap }
            | Backoff::DecorrelatedJitter { base, cap } => {
                nonzero("base", base.is_zero())?;
                if cap < base {
                    Err(ConfigError::Inconsistent { field: "cap" })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The delay before retry number `attempt` (0-based); `previous` is the delay returned
    /// for the previous retry (only decorrelated jitter uses it; pass `Duration::ZERO` first).
    pub fn delay(&self, attempt: u32, previous: Duration, rng: &mut Rng) -> Duration {
        let d = match *self {
            Backoff::Fixed(d) => return d,
            Backoff::Exponential { base, cap } => exp(base, cap, attempt),
            Backoff::FullJitter { base, cap } => rng.between(0, exp(base, cap, attempt)),
            Backoff::EqualJitter { base, cap } => {
                let t = exp(base, cap, attempt);
                t / 2 + rng.between(0, t - t / 2)
            }
            Backoff::DecorrelatedJitter { base, cap } => {
                let b = nanos(base);
                let prev = nanos(previous).max(b);
                rng.between(b, prev.saturating_mul(3)).min(nanos(cap))
            }
        };
        Duration::from_nanos(d)
    }
}

/// Something that may veto a retry (budget, throttle). `deposit` is called once per original
/// request, `try_withdraw` once per retry it would allow.
pub trait RetryGate {
    /// An original (non-retry) request was sent at `now`.
    fn deposit(&mut self, now: Instant);
    /// May one retry be sent at `now`? Consumes budget when it answers `true`.
    fn try_withdraw(&mut self, now: Instant, rng: &mut Rng) -> bool;
}

/// A gate that always allows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unlimited;

impl RetryGate for Unlimited {
    fn deposit(&mut self, _now: Instant) {}
    fn try_withdraw(&mut self, _now: Instant, _rng: &mut Rng) -> bool {
        true
    }
}

/// Retry policy configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 = never retry).
    pub max_attempts: u32,
    /// Delay schedule.
    pub backoff: Backoff,
    /// Retry requests that are not idempotent too (default `false`).
    pub retry_non_idempotent: bool,
    /// Retry a non-idempotent request when the failure is [`Failure::ConnectFailed`] (it never
    /// left the client; Finagle calls this a requeue). Default `false`.
    pub requeue_connect_failures: bool,
    /// Give up once this long has passed since the first attempt.
    pub max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    /// 3 attempts, full jitter from 25 ms capped at 1 s, idempotent requests only.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::FullJitter {
                base: Duration::from_millis(25),
                cap: Duration::from_secs(1),
            },
            retry_non_idempotent: false,
            requeue_connect_failures: false,
            max_elapsed: None,
        }
    }
}

/// Per-request retry bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryState {
    req: RequestInfo,
    deadline: Deadline,
    attempts: u32,
    previous: Duration,
    first_at: Instant,
    retry_after: Option<Duration>,
}

impl RetryState {
    /// The first attempt of `req`, bounded by `deadline`, is being sent at `now`.
    /// Also call [`RetryGate::deposit`] once.
    pub fn new(now: Instant, req: RequestInfo, deadline: Deadline) -> Self {
        RetryState {
            req,
            deadline,
            attempts: 1,
            previous: Duration::ZERO,
            first_at: now,
            retry_after: None,
        }
    }

    /// The server asked to wait at least `d` (`Retry-After`, gRPC pushback): the next retry
    /// is not scheduled earlier than that.
    pub fn set_retry_after(&mut self, d: Duration) {
        self.retry_after = Some(d);
    }

    /// Attempts made so far (including the first).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// Why no retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUp {
    /// The failure is not transient.
    NotRetryable,
    /// The request is not idempotent and the policy does not allow it.
    NonIdempotent,
    /// `max_attempts` reached.
    AttemptsExhausted,
    /// The retry would start at or after the deadline, or after `max_elapsed`.
    DeadlineTooClose,
    /// The gate (budget or throttle) refused.
    BudgetExhausted,
}

/// The answer of [`RetryPolicy::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryDecision {
    /// Send attempt number `attempt` (1-based, so `2` is the first retry) at `at`.
    Retry {
        /// When to send it (arm a timer).
        at: Instant,
        /// Attempt number.
        attempt: u32,
    },
    /// Report the failure to the caller.
    GiveUp(GiveUp),
}

impl RetryPolicy {
    /// Checks the policy: `max_attempts >= 1` (0 would refuse even the first attempt's
    /// retries without saying why), a valid [`Backoff`], a positive `max_elapsed`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        nonzero("max_attempts", self.max_attempts == 0)?;
        self.backoff.validate()?;
        nonzero("max_elapsed", self.max_elapsed.is_some_and(|d| d.is_zero()))
    }

    /// A policy with `max_attempts` and `backoff`, other fields default.
    pub fn new(max_attempts: u32, backoff: Backoff) -> Self {
        RetryPolicy {
            max_attempts,
            backoff,
            ..RetryPolicy::default()
        }
    }

    /// Decides what to do after an attempt failed with `failure` at `now`.
    /// On [`RetryDecision::Retry`] the state already counts the new attempt.
    pub fn decide(
        &self,
        state: &mut RetryState,
        failure: Failure,
        now: Instant,
        gate: &mut impl RetryGate,
        rng: &mut Rng,
    ) -> RetryDecision {
        let (req, deadline) = (state.req, state.deadline);
        use RetryDecision::GiveUp as G;
        if !failure.is_transient() {
            return G(GiveUp::NotRetryable);
        }
        let requeue = self.requeue_connect_failures && failure == Failure::ConnectFailed;
        if !req.idempotent && !self.retry_non_idempotent && !requeue {
            return G(GiveUp::NonIdempotent);
        }
        if state.attempts >= self.max_attempts {
            return G(GiveUp::AttemptsExhausted);
        }
        let backoff = self.backoff.delay(state.attempts - 1, state.previous, rng);
        let delay = state.retry_after.take().map_or(backoff, |d| d.max(backoff));
        let at = now + delay;
        let too_late = self.max_elapsed.is_some_and(|m| at - state.first_at >= m);
        if deadline.is_expired(at) || too_late {
            return G(GiveUp::DeadlineTooClose);
        }
        if !gate.try_withdraw(now, rng) {
            return G(GiveUp::BudgetExhausted);
        }
        state.attempts += 1;
        state.previous = delay;
        RetryDecision::Retry {
            at,
            attempt: state.attempts,
        }
    }
}

/// Retries limited to a ratio of requests over a sliding window, plus a floor per second.
///
/// A retry is admitted only while the retries of the current window (the last `ttl`, in 10
/// buckets) are fewer than `floor(ratio · requests in the window) + floor(min_per_sec · ttl)`.
/// So within one window retries never exceed that bound, and over a long run retries are at
/// most `ratio` of requests plus the reserve once per window. Only original requests are
/// deposited: retries do not earn more retries.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    /// `[requests, retries]` per slot.
    window: SlotWindow<2>,
    ppm: u64,
    reserve: u64,
}

impl RetryBudget {
    /// `ratio` of requests may be retried (e.g. `0.2` for 20%), over a window of `ttl`
    /// (Finagle: 1 s to 60 s; default 10 s), plus `min_per_sec` retries per second always.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.max(0.0)
        } else {
            0.0
        };
        let ppm = (ratio * 1_000_000.0).round().min(1e15) as u64;
        let reserve = u64::from(min_per_sec).saturating_mul(nanos(ttl)) / 1_000_000_000;
        RetryBudget {
            window: SlotWindow::new(ttl, 10),
            ppm,
            reserve,
        }
    }

    /// [`new`](Self::new), rejecting what `new` would clamp: a `ratio` that is NaN,
    /// negative or infinite, and a zero `ttl`.
    pub fn try_new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Result<Self, ConfigError> {
        nonzero("ttl", ttl.is_zero())?;
        in_range("ratio", ratio, 0.0, f64::MAX, false)?;
        Ok(RetryBudget::new(ttl, min_per_sec, ratio))
    }

    /// Retries that would be allowed now.
    pub fn balance(&self, now: Instant) -> u64 {
        let [requests, retries] = self.window.totals(now);
        let earned = requests.saturating_mul(self.ppm) / 1_000_000;
        earned.saturating_add(self.reserve).saturating_sub(retries)
    }
}

impl Default for RetryBudget {
    /// Finagle's default: 10 s window, 10 retries per second, 20% of requests.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2)
    }
}

impl RetryGate for RetryBudget {
    fn deposit(&mut self, now: Instant) {
        self.window.add(now, [1, 0]);
    }

    fn try_withdraw(&mut self, now: Instant, _rng: &mut Rng) -> bool {
        if self.balance(now) == 0 {
            return false;
        }
        self.window.add(now, [0, 1]);
        true
    }
}

/// Envoy's retry budget: retries *in flight* may be at most `percent` of the active requests,
/// but at least `min_concurrency` (Envoy's `budget_percent` and `min_retry_concurrency`).
///
/// Unlike [`RetryBudget`] this limits concurrency, not a rate: call
/// [`ConcurrentRetryBudget::on_request_start`]/[`on_request_end`](Self::on_request_end) for
/// every request (retries included), [`try_start_retry`](Self::try_start_retry) before a
/// retry and [`on_retry_end`](Self::on_retry_end) when an admitted retry finishes.
#[derive(Clone, Debug, PartialEq)]
pub struct ConcurrentRetryBudget {
    percent: f64,
    min_concurrency: u32,
    active: u32,
    retries_active: u32,
}

impl ConcurrentRetryBudget {
    /// `percent` (0.0..=1.0, Envoy default 0.2) of active requests, at least `min_concurrency`
    /// (Envoy default 3).
    pub fn new(percent: f64, min_concurrency: u32) -> Self {
        let percent = if percent.is_nan() {
            0.0
        } else {
            percent.clamp(0.0, 1.0)
        };
        ConcurrentRetryBudget {
            percent,
            min_concurrency,
            active: 0,
            retries_active: 0,
        }
    }

    /// A request (first attempt or retry) started.
    pub fn on_request_start(&mut self) {
        self.active = self.active.saturating_add(1);
    }

    /// A request ended.
    pub fn on_request_end(&mut self) {
        self.active = self.active.saturating_sub(1);
    }

    /// Retries allowed in flight now.
    pub fn limit(&self) -> u32 {
        let share = (f64::from(self.active) * self.percent) as u32;
        share.max(self.min_concurrency)
    }

    /// Admits one retry if fewer than [`limit`](Self::limit) are in flight.
    pub fn try_start_retry(&mut self) -> bool {
        if self.retries_active >= self.limit() {
            return false;
        }
        self.retries_active += 1;
        true
    }

    /// An admitted retry finished.
    pub fn on_retry_end(&mut self) {
        self.retries_active = self.retries_active.saturating_sub(1);
    }

    /// Retries in flight.
    pub fn retries_active(&self) -> u32 {
        self.retries_active
    }
}

impl Default for ConcurrentRetryBudget {
    /// Envoy's defaults: 20%, at least 3.
    fn default() -> Self {
        ConcurrentRetryBudget::new(0.2, 3)
    }
}

/// Google SRE adaptive client-side throttling ("Handling Overload").
///
/// Call [`AdaptiveThrottle::on_request`] (or [`RetryGate::deposit`], the same) for every
/// request the application wants to send (including ones this throttle rejects) and [`AdaptiveThrottle::on_accept`] when the backend
/// accepted one (any response that is not an overload signal). [`AdaptiveThrottle::throttle`]
/// rejects locally with probability `max(0, (requests - K·accepts) / (requests + 1))`.
#[derive(Clone, Debug)]
pub struct AdaptiveThrottle {
    /// `[requests, accepts]` per slot.
    window: SlotWindow<2>,
    k: f64,
}

impl AdaptiveThrottle {
    /// Multiplier `k` (SRE suggests 2; lower is more aggressive) over a `window` (2 minutes).
    pub fn new(window: Duration, k: f64) -> Self {
        AdaptiveThrottle {
            window: SlotWindow::new(window, 12),
            k: if k.is_finite() { k.max(0.0) } else { 2.0 },
        }
    }

    /// The application wants to send a request.
    pub fn on_request(&mut self, now: Instant) {
        self.window.add(now, [1, 0]);
    }

    /// The backend accepted a request.
    pub fn on_accept(&mut self, now: Instant) {
        self.window.add(now, [0, 1]);
    }

    /// The current local rejection probability.
    pub fn reject_probability(&self, now: Instant) -> f64 {
        let [requests, accepts] = self.window.totals(now);
        let r = requests as f64;
        ((r - self.k * accepts as f64) / (r + 1.0)).max(0.0)
    }

    /// Whether to reject this request locally (without sending it).
    pub fn throttle(&self, now: Instant, rng: &mut Rng) -> bool {
        let p = self.reject_probability(now);
        p > 0.0 && rng.next_f64() < p
    }
}

impl Default for AdaptiveThrottle {
    /// 2-minute window, K = 2.
    fn default() -> Self {
        AdaptiveThrottle::new(Duration::from_secs(120), 2.0)
    }
}

impl RetryGate for AdaptiveThrottle {
    /// Counts the original request (same as [`AdaptiveThrottle::on_request`]).
    fn deposit(&mut self, now: Instant) {
        self.on_request(now);
    }

    /// A retry is one more request: counted, then possibly throttled.
    fn try_withdraw(&mut self, now: Instant, rng: &mut Rng) -> bool {
        self.on_request(now);
        !self.throttle(now, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }
    const MS: Duration = Duration::from_millis(1);

    fn pol(max: u32) -> RetryPolicy {
        RetryPolicy::new(max, Backoff::Fixed(10 * MS))
    }

    #[test]
    fn idempotency_by_method() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent_method(m.as_bytes()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get", ""] {
            assert!(!is_idempotent_method(m.as_bytes()), "{m}");
        }
        assert!(RequestInfo::with_idempotent(true).idempotent);
    }

    #[test]
    fn retries_until_attempts_exhausted() {
        let p = pol(3);
        let req = RequestInfo::from_method(b"GET");
        let mut st = RetryState::new(ms(0), req, Deadline::NONE);
        let mut rng = Rng::new(1);
        let d = |st: &mut RetryState, rng: &mut Rng, now| {
            p.decide(st, Failure::Timeout, now, &mut Unlimited, rng)
        };
        assert_eq!(
            d(&mut st, &mut rng, ms(5)),
            RetryDecision::Retry {
                at: ms(15),
                attempt: 2
            }
        );
        assert_eq!(
            d(&mut st, &mut rng, ms(20)),
            RetryDecision::Retry {
                at: ms(30),
                attempt: 3
            }
        );
        assert_eq!(
            d(&mut st, &mut rng, ms(40)),
            RetryDecision::GiveUp(GiveUp::AttemptsExhausted)
        );
        assert_eq!(st.attempts(), 3);
    }

    #[test]
    fn fatal_deadline_and_elapsed_stop_retries() {
        let mut p = pol(5);
        let req = RequestInfo::from_method(b"GET");
        let mut rng = Rng::new(1);
        let mut st = RetryState::new(ms(0), req, Deadline::at(ms(12)));
        let r = p.decide(
            &mut st,
            Failure::Status(400),
            ms(1),
            &mut Unlimited,
            &mut rng,
        );
        assert_eq!(r, RetryDecision::GiveUp(GiveUp::NotRetryable));
        let r = p.decide(
            &mut st,
            Failure::Status(503),
            ms(2),
            &mut Unlimited,
            &mut rng,
        );
        assert_eq!(r, RetryDecision::GiveUp(GiveUp::DeadlineTooClose));
        p.max_elapsed = Some(20 * MS);
        let mut st = RetryState::new(ms(0), req, Deadline::NONE);
        let r = p.decide(&mut st, Failure::Reset, ms(9), &mut Unlimited, &mut rng);
        assert!(matches!(r, RetryDecision::Retry { .. }));
        let r = p.decide(&mut st, Failure::Reset, ms(10), &mut Unlimited, &mut rng);
        assert_eq!(r, RetryDecision::GiveUp(GiveUp::DeadlineTooClose));
        assert!(!Failure::Fatal.is_transient());
        assert!(Failure::Status(429).is_transient());
    }

    #[test]
    fn non_idempotent_only_when_allowed_or_requeued() {
        let mut p = pol(3);
        let post = RequestInfo::from_method(b"POST");
        let mut rng = Rng::new(1);
        let mut st = RetryState::new(ms(0), post, Deadline::NONE);
        for f in [
            Failure::ConnectFailed,
            Failure::Timeout,
            Failure::Reset,
            Failure::Status(503),
        ] {
            let r = p.decide(&mut st, f, ms(1), &mut Unlimited, &mut rng);
            assert_eq!(r, RetryDecision::GiveUp(GiveUp::NonIdempotent));
        }
        p.requeue_connect_failures = true;
        let r = p.decide(&mut st, Failure::Timeout, ms(1), &mut Unlimited, &mut rng);
        assert_eq!(r, RetryDecision::GiveUp(GiveUp::NonIdempotent));
        let r = p.decide(
            &mut st,
            Failure::ConnectFailed,
            ms(1),
            &mut Unlimited,
            &mut rng,
        );
        assert!(matches!(r, RetryDecision::Retry { .. }));
        p.retry_non_idempotent = true;
        let r = p.decide(&mut st, Failure::Timeout, ms(1), &mut Unlimited, &mut rng);
        assert!(matches!(r, RetryDecision::Retry { .. }));
    }

    #[test]
    fn exponential_schedule() {
        let b = Backoff::Exponential {
            base: 100 * MS,
            cap: 1000 * MS,
        };
        let mut rng = Rng::new(0);
        let got: Vec<_> = (0..6)
            .map(|a| b.delay(a, Duration::ZERO, &mut rng))
            .collect();
        assert_eq!(
            got,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        assert_eq!(b.delay(200, Duration::ZERO, &mut rng), 1000 * MS);
    }

    #[test]
    fn budget_expires_with_window_and_keeps_reserve() {
        let mut b = RetryBudget::new(Duration::from_secs(10), 1, 0.5);
        let mut rng = Rng::new(0);
        assert_eq!(b.balance(ms(0)), 10, "reserve = 1/s * 10 s");
        for _ in 0..10 {
            b.deposit(ms(0));
        }
        assert_eq!(b.balance(ms(0)), 15);
        for _ in 0..15 {
            assert!(b.try_withdraw(ms(1), &mut rng));
        }
        assert!(!b.try_withdraw(ms(1), &mut rng));
        // After the window slides past everything, only the reserve is left.
        assert_eq!(b.balance(ms(20_000)), 10);
    }

    #[test]
    fn retry_after_hint_delays_the_retry() {
        let p = pol(3);
        let mut rng = Rng::new(1);
        let req = RequestInfo::from_method(b"GET");
        let mut st = RetryState::new(ms(0), req, Deadline::at(ms(1000)));
        st.set_retry_after(Duration::from_millis(500));
        let r = p.decide(
            &mut st,
            Failure::Status(429),
            ms(1),
            &mut Unlimited,
            &mut rng,
        );
        assert_eq!(
            r,
            RetryDecision::Retry {
                at: ms(501),
                attempt: 2
            }
        );
        let r = p.decide(
            &mut st,
            Failure::Status(429),
            ms(600),
            &mut Unlimited,
            &mut rng,
        );
        assert_eq!(
            r,
            RetryDecision::Retry {
                at: ms(610),
                attempt: 3
            },
            "hint used once"
        );
        let mut st = RetryState::new(ms(0), req, Deadline::at(ms(1000)));
        st.set_retry_after(Duration::from_secs(5));
        let r = p.decide(
            &mut st,
            Failure::Status(503),
            ms(1),
            &mut Unlimited,
            &mut rng,
        );
        assert_eq!(r, RetryDecision::GiveUp(GiveUp::DeadlineTooClose));
    }

    #[test]
    fn concurrent_budget_limits_retries_in_flight() {
        let mut b = ConcurrentRetryBudget::default();
        for _ in 0..100 {
            b.on_request_start();
        }
        assert_eq!(b.limit(), 20);
        let admitted = (0..50).filter(|_| b.try_start_retry()).count();
        assert_eq!(admitted, 20);
        b.on_retry_end();
        assert!(b.try_start_retry());
        for _ in 0..100 {
            b.on_request_end();
        }
        assert_eq!(b.limit(), 3, "floor of min_concurrency");
        assert!(!b.try_start_retry(), "20 still in flight");
        assert_eq!(b.retries_active(), 20);
    }

    #[test]
    fn adaptive_throttle_rejects_when_backend_refuses() {
        let mut t = AdaptiveThrottle::default();
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            t.on_request(ms(0));
            t.on_accept(ms(0));
        }
        assert_eq!(t.reject_probability(ms(0)), 0.0);
        assert!(!t.throttle(ms(0), &mut rng));
        for _ in 0..900 {
            t.on_request(ms(1));
        }
        let p = t.reject_probability(ms(1));
        assert!((p - 800.0 / 1001.0).abs() < 1e-9, "{p}");
        let rejected = (0..1000).filter(|_| t.throttle(ms(1), &mut rng)).count();
        assert!((700..900).contains(&rejected), "{rejected}");
        assert_eq!(t.reject_probability(ms(1_000_000)), 0.0, "window expired");
    }

    proptest! {
        #[test]
        fn jitter_within_bounds_and_reproducible(seed in any::<u64>(), base_ms in 1u64..1000,
                                                 cap_ms in 1u64..100_000, attempt in 0u32..80) {
            let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let t = exp(base, cap, attempt);
            let kinds = [
                Backoff::FullJitter { base, cap },
                Backoff::EqualJitter { base, cap },
                Backoff::DecorrelatedJitter { base, cap },
            ];
            for b in kinds {
                let mut r1 = Rng::new(seed);
                let mut r2 = Rng::new(seed);
                let mut prev = Duration::ZERO;
                for a in 0..attempt.min(10) + 1 {
                    let d = b.delay(a, prev, &mut r1);
                    prop_assert_eq!(d, b.delay(a, prev, &mut r2));
                    let d_ns = nanos(d);
                    match b {
                        Backoff::FullJitter { .. } => prop_assert!(d_ns <= exp(base, cap, a)),
                        Backoff::EqualJitter { .. } => {
                            let t = exp(base, cap, a);
                            prop_assert!(d_ns >= t / 2 && d_ns <= t);
                        }
                        _ => {
                            prop_assert!(d <= cap);
                            prop_assert!(d >= base.min(cap));
                            prop_assert!(d_ns <= nanos(prev.max(base)) * 3);
                        }
                    }
                    prev = d;
                }
            }
            prop_assert!(t <= nanos(cap));
        }

        #[test]
        fn budget_caps_retries_at_ratio_under_total_failure(
            ratio_pct in 0u32..=100, requests in 1u64..2000, min_per_sec in 0u32..5,
            max_attempts in 2u32..6, seed in any::<u64>())
        {
            let ttl = Duration::from_secs(10);
            let mut budget = RetryBudget::new(ttl, min_per_sec, f64::from(ratio_pct) / 100.0);
            let policy = RetryPolicy::new(max_attempts, Backoff::Fixed(Duration::ZERO));
            let mut rng = Rng::new(seed);
            let req = RequestInfo::from_method(b"GET");
            let mut retries = 0u64;
            // All within one window (1 ms apart at most 2 s), every attempt fails.
            for i in 0..requests {
                let now = Instant::from_nanos(i * 1_000_000);
                let mut st = RetryState::new(now, req, Deadline::NONE);
                budget.deposit(now);
                while let RetryDecision::Retry { .. } =
                    policy.decide(&mut st, Failure::Status(503), now, &mut budget, &mut rng)
                {
                    retries += 1;
                }
            }
            let cap = requests * u64::from(ratio_pct) / 100 + u64::from(min_per_sec) * 10;
            prop_assert!(retries <= cap, "retries {} > cap {}", retries, cap);
            // And the budget is not stingier than that, up to the attempts limit.
            prop_assert_eq!(retries, cap.min(requests * u64::from(max_attempts - 1)));
        }

        #[test]
        fn budget_long_run_ratio(ratio_pct in 0u32..=50, gap_ms in 1u64..200,
                                 requests in 100u64..3000, seed in any::<u64>()) {
            // Steady traffic over many windows, everything fails, unlimited attempts.
            let ttl = Duration::from_secs(2);
            let mut budget = RetryBudget::new(ttl, 1, f64::from(ratio_pct) / 100.0);
            let policy = RetryPolicy::new(u32::MAX, Backoff::Fixed(Duration::ZERO));
            let mut rng = Rng::new(seed);
            let req = RequestInfo::from_method(b"GET");
            let mut retries = 0u64;
            for i in 0..requests {
                let now = ms(i * gap_ms);
                let mut st = RetryState::new(now, req, Deadline::NONE);
                budget.deposit(now);
                while let RetryDecision::Retry { .. } =
                    policy.decide(&mut st, Failure::Timeout, now, &mut budget, &mut rng)
                {
                    retries += 1;
                }
            }
            let windows = (requests * gap_ms) / 2000 + 2;
            let cap = requests * u64::from(ratio_pct) / 100 + windows * 2 /* reserve */;
            // Bucketing lets a window see up to 10% more history than `ttl`.
            let slack = requests * u64::from(ratio_pct) / 100 / 10 + windows;
            prop_assert!(retries <= cap + slack, "{} > {} + {}", retries, cap, slack);
        }

        #[test]
        fn non_idempotent_never_retried_unless_allowed(
            seed in any::<u64>(), max_attempts in 1u32..10, allow in any::<bool>(),
            failures in proptest::collection::vec(0u8..5, 1..20))
        {
            let mut p = RetryPolicy::new(max_attempts, Backoff::FullJitter { base: MS, cap: 100 * MS });
            p.retry_non_idempotent = allow;
            let mut rng = Rng::new(seed);
            let mut st = RetryState::new(ms(0), RequestInfo::from_method(b"POST"), Deadline::NONE);
            for (i, f) in failures.iter().enumerate() {
                let f = match f {
                    0 => Failure::ConnectFailed,
                    1 => Failure::Timeout,
                    2 => Failure::Reset,
                    3 => Failure::Status(503),
                    _ => Failure::Status(500),
                };
                let d = p.decide(&mut st, f, ms(i as u64), &mut Unlimited, &mut rng);
                let retried = matches!(d, RetryDecision::Retry { .. });
                prop_assert!(allow || !retried);
            }
            prop_assert!(st.attempts() <= max_attempts.max(1));
        }
    }
}
