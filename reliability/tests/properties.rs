//! Property tests of the policies against small reference models, on a virtual clock.
//!
//! Each model is the policy's documented rule written the plain way (a queue of outcomes, a
//! list of timestamps, governor's GCRA formula), so a divergence is a bug in one of the two.

use std::collections::VecDeque;
use std::time::Duration;

use ferry_reliability::breaker::SlidingWindow;
use ferry_reliability::hedge::HedgeDelay;
use ferry_reliability::{
    Backoff, BreakerConfig, BreakerEvent, BreakerState, CircuitBreaker, Gcra, Hedge, HedgeAction,
    HedgePolicy, Instant, LatencyTracker, Quota, RateLimited, RetryBudget, RetryGate, Rng,
};
use proptest::prelude::*;

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}

/// Only the trigger under test; no doubling of the open period.
fn only(consecutive: Option<u32>, rate: Option<f64>, window: SlidingWindow) -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: consecutive,
        failure_rate: rate,
        slow_call_rate: None,
        window,
        minimum_calls: 1,
        open_duration: Duration::from_secs(1),
        max_open_duration: None,
        half_open_calls: 1,
        max_half_open_wait: None,
        ..BreakerConfig::default()
    }
}

fn opened(b: &mut CircuitBreaker) -> bool {
    let mut opened = false;
    while let Some(e) = b.poll_event() {
        opened |= matches!(e, BreakerEvent::Opened { .. });
    }
    opened
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The breaker opens on exactly the `n`-th failure in a row, whatever successes come
    /// between runs, and not a call earlier.
    #[test]
    fn breaker_opens_after_exactly_n_consecutive_failures(
        n in 1u32..12,
        outcomes in prop::collection::vec(prop::bool::weighted(0.7), 1..200),
    ) {
        let mut b = CircuitBreaker::new(only(Some(n), None, SlidingWindow::Count(10)));
        let mut run = 0;
        for (i, failed) in outcomes.into_iter().enumerate() {
            let now = ms(i as u64);
            let p = b.try_acquire(now).unwrap();
            if failed { b.on_failure(now, p) } else { b.on_success(now, p) }
            run = if failed { run + 1 } else { 0 };
            let open = b.state(now) == BreakerState::Open;
            prop_assert_eq!(open, run == n, "call {} run {}", i, run);
            prop_assert_eq!(opened(&mut b), run == n);
            if open {
                return Ok(());
            }
        }
    }

    /// Half-open admits exactly `half_open_calls` probes; it closes after that many successes
    /// and re-opens on any failed probe. An ignored probe gives its slot back.
    #[test]
    fn half_open_admits_exactly_n_probes(
        n in 1u32..10,
        fail_at in prop::option::of(0u32..10),
        ignore_first in any::<bool>(),
    ) {
        let mut c = only(Some(1), None, SlidingWindow::Count(10));
        c.half_open_calls = n;
        let mut b = CircuitBreaker::new(c);
        let p = b.try_acquire(ms(0)).unwrap();
        b.on_failure(ms(0), p);
        prop_assert!(b.try_acquire(ms(999)).is_err(), "still open");
        let t = ms(1000);
        if ignore_first {
            let p = b.try_acquire(t).unwrap();
            b.on_ignored(p);
        }
        let probes: Vec<_> = (0..n).map(|_| b.try_acquire(t).unwrap()).collect();
        prop_assert!(probes.iter().all(|p| p.is_probe()));
        prop_assert!(b.try_acquire(t).is_err(), "probe {} of {} admitted", n + 1, n);
        for (i, p) in probes.into_iter().enumerate() {
            if fail_at == Some(i as u32) {
                b.on_failure(t, p);
                prop_assert_eq!(b.state(t), BreakerState::Open);
                return Ok(());
            }
            prop_assert_eq!(b.state(t), BreakerState::HalfOpen);
            b.on_success(t, p);
        }
        prop_assert_eq!(b.state(t), BreakerState::Closed);
    }

    /// Failure rate over a count window: opens at the first call after which the last `w`
    /// outcomes (at least `minimum_calls` of them) fail at `rate` or more, as a plain queue
    /// says, also after the window rolled over many times.
    #[test]
    fn count_window_failure_rate_matches_a_queue(
        w in 1u32..20,
        min_calls in 1u32..20,
        rate_pct in 1u32..=100,
        outcomes in prop::collection::vec(prop::bool::weighted(0.3), 1..300),
    ) {
        let rate = f64::from(rate_pct) / 100.0;
        let mut c = only(None, Some(rate), SlidingWindow::Count(w));
        c.minimum_calls = min_calls;
        let mut b = CircuitBreaker::new(c);
        let mut q = VecDeque::new();
        for (i, failed) in outcomes.into_iter().enumerate() {
            let now = ms(i as u64);
            let p = b.try_acquire(now).unwrap();
            if failed { b.on_failure(now, p) } else { b.on_success(now, p) }
            if q.len() == w as usize { q.pop_front(); }
            q.push_back(failed);
            let fails = q.iter().filter(|f| **f).count() as f64;
            let want = q.len() as u32 >= min_calls && fails / q.len() as f64 >= rate;
            prop_assert_eq!(b.state(now) == BreakerState::Open, want, "call {}", i);
            if want {
                return Ok(());
            }
        }
    }

    /// Failure rate over a time window: only outcomes of the last `buckets` buckets count
    /// (the window rolls bucket by bucket). Time may also step backwards: an older instant
    /// counts as the newest seen, and must not wipe newer buckets.
    #[test]
    fn time_window_failure_rate_matches_timestamps(
        buckets in 1u32..8,
        steps in prop::collection::vec((0u64..400, any::<bool>(), prop::bool::weighted(0.3)), 1..200),
    ) {
        let span = Duration::from_secs(1);
        let slot = 1_000 / u64::from(buckets); // ms per bucket (span divides evenly enough)
        let window = SlidingWindow::Time { span, buckets };
        let mut c = only(None, Some(0.5), window);
        c.minimum_calls = 4;
        let mut b = CircuitBreaker::new(c);
        let slot_of = |t: u64| t * 1_000_000 / (1_000_000_000 / u64::from(buckets));
        let _ = slot;
        let mut head = 0u64; // newest time seen, ms
        let mut seen: Vec<(u64, bool)> = Vec::new(); // (slot, failed)
        let mut t = 0u64;
        for (i, (dt, back, failed)) in steps.into_iter().enumerate() {
            // Mostly forward; sometimes an instant from the past.
            let now_ms = if back { t.saturating_sub(dt) } else { t += dt; t };
            head = head.max(now_ms);
            let now = ms(now_ms);
            let p = b.try_acquire(now).unwrap();
            if failed { b.on_failure(now, p) } else { b.on_success(now, p) }
            let cur = slot_of(head);
            seen.push((cur, failed));
            let live: Vec<bool> = seen
                .iter()
                .filter(|(s, _)| cur - s < u64::from(buckets))
                .map(|x| x.1)
                .collect();
            let fails = live.iter().filter(|f| **f).count();
            let want = live.len() >= 4 && fails * 2 >= live.len();
            let m = b.metrics(ms(head));
            prop_assert_eq!(m.window_calls as usize, if want { 0 } else { live.len() }, "step {}", i);
            prop_assert_eq!(b.state(ms(head)) == BreakerState::Open, want, "step {}", i);
            if want {
                return Ok(());
            }
        }
    }

    /// Under 100% failure, the retries a budget admits in its window never exceed
    /// `floor(ratio · requests in the window) + min_per_sec · ttl`, counted with the budget's
    /// own 10 buckets; out-of-order instants count as the newest one.
    #[test]
    fn retry_budget_caps_retries_at_its_ratio(
        ratio_pct in 0u32..=100,
        min_per_sec in 0u32..3,
        steps in prop::collection::vec((0u64..700, prop::bool::weighted(0.1), 0u32..4), 1..300),
        seed in any::<u64>(),
    ) {
        let ttl = Duration::from_secs(2);
        let slot_ms = 200;
        let mut budget = RetryBudget::new(ttl, min_per_sec, f64::from(ratio_pct) / 100.0);
        let reserve = u64::from(min_per_sec) * 2;
        let mut rng = Rng::new(seed);
        let (mut t, mut head) = (0u64, 0u64);
        let mut log: Vec<(u64, bool)> = Vec::new(); // (slot, is_retry)
        for (dt, back, attempts) in steps {
            let now_ms = if back { t.saturating_sub(dt) } else { t += dt; t };
            head = head.max(now_ms);
            let now = ms(now_ms);
            budget.deposit(now);
            log.push((head / slot_ms, false));
            for _ in 0..attempts {
                let admitted = budget.try_withdraw(now, &mut rng);
                if admitted {
                    log.push((head / slot_ms, true));
                }
                let cur = head / slot_ms;
                let live = log.iter().filter(|(s, _)| cur - s < 10);
                let (mut req, mut ret) = (0u64, 0u64);
                for (_, r) in live { if *r { ret += 1 } else { req += 1 } }
                let cap = req * u64::from(ratio_pct) / 100 + reserve;
                // Checked when a retry is admitted: later, old requests leave the window
                // before the retries they paid for, and the window may hold more for a while.
                if admitted {
                    prop_assert!(ret <= cap, "{} retries > {} (requests {})", ret, cap, req);
                } else {
                    prop_assert!(ret >= cap, "refused with {} of {} used", ret, cap);
                }
                // And the budget says what is left exactly.
                prop_assert_eq!(budget.balance(ms(head)), cap.saturating_sub(ret));
            }
        }
    }

    /// GCRA decides exactly as governor's published algorithm (`tau = t · (burst - 1)`;
    /// a cell at `t0` conforms iff `t0 >= tat + t · (n - 1) - tau`; then
    /// `tat = max(tat, t0) + t · n`), and reports the same earliest conforming instant, for
    /// any burst, interval (up to ~584 years, so the nanosecond math saturates), batch size
    /// and arrival times, including arrivals that jump far ahead.
    #[test]
    fn gcra_matches_governor(
        burst in 1u32..50,
        interval in prop_oneof![1u64..1_000, 1_000u64..10_000_000_000, Just(u64::MAX / 3), Just(u64::MAX)],
        steps in prop::collection::vec((prop_oneof![0u64..2_000, 0u64..20_000_000_000, Just(u64::MAX / 4)], 1u32..4), 1..100),
    ) {
        let q = Quota::new(1, Duration::from_nanos(interval)).with_burst(burst);
        let mut g = Gcra::new(q);
        let t = u128::from(interval);
        let tau = t * u128::from(burst - 1);
        let mut tat: Option<u128> = None;
        let mut now = 0u64;
        for (dt, n) in steps {
            now = now.saturating_add(dt);
            let t0 = u128::from(now);
            let got = g.check_n(Instant::from_nanos(now), n);
            if n > burst {
                prop_assert_eq!(got, Err(RateLimited::ExceedsBurst));
                continue;
            }
            let cur = tat.unwrap_or(t0);
            let earliest = (cur + t * u128::from(n - 1)).saturating_sub(tau);
            // Where the reference's u128 state leaves u64 time, the crate saturates.
            if cur + t * u128::from(n) > u128::from(u64::MAX) {
                return Ok(());
            }
            if t0 < earliest {
                let retry_at = Instant::from_nanos(earliest as u64);
                prop_assert_eq!(got, Err(RateLimited::Until { retry_at }), "at {}", now);
            } else {
                prop_assert_eq!(got, Ok(()), "at {}", now);
                tat = Some(cur.max(t0) + t * u128::from(n));
            }
        }
    }

    /// Every schedule stays within its documented bounds, for any attempt number and
    /// durations up to `Duration::MAX` (no overflow, no panic).
    #[test]
    fn backoff_delays_stay_in_bounds(
        base_ns in prop_oneof![0u64..1_000_000, Just(u64::MAX)],
        cap_ns in prop_oneof![0u64..10_000_000, Just(u64::MAX)],
        attempt in prop_oneof![0u32..70, Just(u32::MAX)],
        prev_ns in prop_oneof![0u64..10_000_000, Just(u64::MAX)],
        seed in any::<u64>(),
    ) {
        let (base, cap, prev) = (
            Duration::from_nanos(base_ns),
            Duration::from_nanos(cap_ns),
            Duration::from_nanos(prev_ns),
        );
        let mut rng = Rng::new(seed);
        let exp = base_ns.saturating_mul(1u64.checked_shl(attempt.min(63)).unwrap_or(0)).min(cap_ns);
        let exp = Duration::from_nanos(exp);
        let d = Backoff::Exponential { base, cap }.delay(attempt, prev, &mut rng);
        prop_assert_eq!(d, exp);
        let d = Backoff::FullJitter { base, cap }.delay(attempt, prev, &mut rng);
        prop_assert!(d <= exp);
        let d = Backoff::EqualJitter { base, cap }.delay(attempt, prev, &mut rng);
        prop_assert!(d <= exp && d >= exp / 2);
        let d = Backoff::DecorrelatedJitter { base, cap }.delay(attempt, prev, &mut rng);
        prop_assert!(d <= cap);
        if base <= cap {
            prop_assert!(d >= base);
        }
    }

    /// Whatever order answers, failures and hedge timers come in — including the first
    /// attempt answering after the hedge fired — a hedge sends at most `max_extra` extra
    /// attempts, decides once (`Won` by an attempt that was in flight, or `Failed` once all
    /// failed), cancels every other attempt still in flight, and sends nothing after.
    #[test]
    fn hedge_decides_once_and_cancels_the_rest(
        max_extra in 0u32..4,
        on_failure in any::<bool>(),
        events in prop::collection::vec((0u8..3, 0u32..6, 0u64..5), 0..40),
    ) {
        let p = HedgePolicy { delay: HedgeDelay::Fixed(2 * MS), max_extra, hedge_on_failure: on_failure };
        let mut h: Hedge = p.start(ms(0), &LatencyTracker::default());
        let mut state = vec![0u8]; // per attempt: 0 in flight, 1 failed, 2 won, 3 cancelled
        let mut decided = false;
        let mut now = 0;
        for (kind, which, dt) in events {
            now += dt;
            let which_state = state.get(which as usize).copied();
            match kind {
                0 => { if h.poll_timeout().is_some_and(|t| t <= ms(now)) { h.handle_timeout(ms(now)) } }
                1 => h.on_failure(ms(now), which),
                _ => h.on_success(which),
            }
            while let Some(a) = h.poll_action() {
                prop_assert!(!decided, "{:?} after the decision", a);
                match a {
                    HedgeAction::Send { attempt } => {
                        prop_assert_eq!(attempt as usize, state.len());
                        state.push(0);
                    }
                    HedgeAction::Won { winner } => {
                        prop_assert_eq!(kind, 2);
                        prop_assert_eq!(winner, which);
                        prop_assert_eq!(which_state, Some(0), "winner was in flight");
                        state[winner as usize] = 2;
                    }
                    HedgeAction::Cancel { attempt } => {
                        prop_assert_eq!(state[attempt as usize], 0);
                        state[attempt as usize] = 3;
                    }
                    HedgeAction::Failed => {
                        prop_assert!(state.iter().all(|s| *s == 0 || *s == 1));
                        decided = true;
                    }
                    _ => {}
                }
            }
            if kind == 1 && which_state == Some(0) {
                state[which as usize] = 1;
            }
            if state.contains(&2) {
                prop_assert!(state.iter().all(|s| *s != 0), "all others cancelled: {:?}", state);
                decided = true;
            }
            prop_assert!(state.len() as u32 <= max_extra + 1);
            prop_assert_eq!(h.is_done(), decided);
            if decided {
                prop_assert_eq!(h.poll_timeout(), None);
            }
        }
    }
}

/// Governor's documented example: a quota of 50/s with a burst of 5 admits 5 at once, then
/// one every 20 ms, and says when.
#[test]
fn gcra_burst_exactness_like_governor() {
    let q = Quota::per_second(50).with_burst(5);
    let mut g = Gcra::new(q);
    let t0 = Instant::from_nanos(1_000_000_000);
    for _ in 0..5 {
        g.check(t0).unwrap();
    }
    assert_eq!(
        g.check(t0),
        Err(RateLimited::Until {
            retry_at: t0 + 20 * MS
        })
    );
    g.check(t0 + 20 * MS).unwrap();
    assert!(g.check(t0 + 20 * MS).is_err());
    // Idle long enough for the whole burst again, not more.
    let later = t0 + Duration::from_secs(10);
    for _ in 0..5 {
        g.check(later).unwrap();
    }
    assert!(g.check(later).is_err());
    assert_eq!(g.check_n(later, 6), Err(RateLimited::ExceedsBurst));
}

/// A hedge's first attempt answering after the hedge was sent wins; the hedge is cancelled.
#[test]
fn first_answer_after_the_hedge_fired_wins() {
    let p = HedgePolicy {
        delay: HedgeDelay::Fixed(10 * MS),
        max_extra: 1,
        hedge_on_failure: true,
    };
    let mut h = p.start(ms(0), &LatencyTracker::default());
    assert_eq!(h.poll_timeout(), Some(ms(10)));
    h.handle_timeout(ms(10));
    assert_eq!(h.poll_action(), Some(HedgeAction::Send { attempt: 1 }));
    h.on_success(0);
    assert_eq!(h.poll_action(), Some(HedgeAction::Won { winner: 0 }));
    assert_eq!(h.poll_action(), Some(HedgeAction::Cancel { attempt: 1 }));
    assert_eq!(h.poll_action(), None);
    // The hedge's own late answer changes nothing.
    h.on_success(1);
    h.on_failure(ms(12), 1);
    assert_eq!(h.poll_action(), None);
    assert!(h.is_done());
}
