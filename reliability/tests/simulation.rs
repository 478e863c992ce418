//! End-to-end: a client spreading requests over three upstreams with a virtual clock.
//! Deadlines, per-destination breakers, retries with a budget and the idempotency gate work
//! together: idempotent requests survive a dead upstream, non-idempotent ones are never sent
//! twice, the dead upstream's breaker opens (and closes again once it recovers), and the
//! healthy upstreams' breakers never open.

use std::collections::HashMap;
use std::time::Duration;

use ferry_reliability::breaker::{BreakerEvent, OpenReason};
use ferry_reliability::retry::GiveUp;
use ferry_reliability::{
    Backoff, BreakerConfig, BreakerState, Breakers, Deadline, Failure, Instant, RequestInfo,
    RetryBudget, RetryDecision, RetryGate, RetryPolicy, RetryState, Rng,
};

const MS: Duration = Duration::from_millis(1);

/// Upstream 1 is down (503) until `recover_at`; 0 and 2 answer in 5 ms.
fn upstream(i: usize, now: Instant, recover_at: Instant) -> (Duration, Result<(), Failure>) {
    if i == 1 && now < recover_at {
        (2 * MS, Err(Failure::Status(503)))
    } else {
        (5 * MS, Ok(()))
    }
}

struct Outcome {
    ok: u64,
    failed_post: u64,
    sends_per_post: Vec<u32>,
    events: Vec<(usize, BreakerEvent)>,
    breakers: Breakers<usize>,
    end: Instant,
}

fn run(requests: u64, recover_at: Instant) -> Outcome {
    let mut rng = Rng::new(7);
    let mut now = Instant::ZERO;
    let mut breakers: Breakers<usize> = Breakers::new(BreakerConfig {
        consecutive_failures: Some(5),
        open_duration: Duration::from_secs(1),
        max_open_duration: Some(Duration::from_secs(4)),
        half_open_calls: 2,
        ..BreakerConfig::default()
    });
    let policy = RetryPolicy::new(
        3,
        Backoff::FullJitter {
            base: 5 * MS,
            cap: 50 * MS,
        },
    );
    let mut budget = RetryBudget::default();
    let mut rr = 0usize;
    let mut out = Outcome {
        ok: 0,
        failed_post: 0,
        sends_per_post: Vec::new(),
        events: Vec::new(),
        breakers: Breakers::new(BreakerConfig::default()),
        end: Instant::ZERO,
    };

    for n in 0..requests {
        let method: &[u8] = if n % 5 == 0 { b"POST" } else { b"GET" };
        let req = RequestInfo::from_method(method);
        let deadline = Deadline::after(now, Duration::from_millis(500));
        let mut state = RetryState::new(now, req, deadline);
        budget.deposit(now);
        let mut sends = 0u32;
        let result = loop {
            // Round robin over upstreams whose breaker admits a call.
            let mut picked = None;
            for _ in 0..3 {
                rr = (rr + 1) % 3;
                if let Ok(p) = breakers.try_acquire(&rr, now) {
                    picked = Some((rr, p));
                    break;
                }
            }
            let Some((up, permit)) = picked else {
                break Err(GiveUp::BudgetExhausted);
            };
            // The header the upstream would see never exceeds what is left.
            let hdr = deadline.to_header(now).unwrap();
            let granted = ferry_reliability::TimeoutHeader::decode(hdr.as_bytes()).unwrap();
            assert!(granted <= deadline.remaining(now));

            sends += 1;
            let (took, res) = upstream(up, now, recover_at);
            now += took;
            match res {
                Ok(()) => {
                    breakers.on_success(&up, now, permit);
                    break Ok(());
                }
                Err(f) => {
                    breakers.on_failure(&up, now, permit);
                    match policy.decide(&mut state, f, now, &mut budget, &mut rng) {
                        RetryDecision::Retry { at, .. } => now = at,
                        RetryDecision::GiveUp(why) => break Err(why),
                        _ => unreachable!("no other decisions today"),
                    }
                }
            }
        };
        while let Some(ev) = breakers.poll_event() {
            out.events.push(ev);
        }
        match (result, method) {
            (Ok(()), _) => out.ok += 1,
            (Err(why), b"POST") => {
                assert_eq!(why, GiveUp::NonIdempotent);
                out.failed_post += 1;
            }
            (Err(why), _) => panic!("GET #{n} failed: {why:?}"),
        }
        if method == b"POST" {
            out.sends_per_post.push(sends);
        }
        now += 10 * MS; // think time
    }
    out.breakers = breakers;
    out.end = now;
    out
}

#[test]
fn dead_upstream_is_isolated_and_idempotent_requests_survive() {
    let out = run(2000, Instant::FAR_FUTURE);
    // Every GET succeeded (asserted in `run`); POSTs were sent exactly once.
    assert!(out.sends_per_post.iter().all(|&s| s == 1));
    assert!(out.failed_post >= 1, "some POSTs hit the dead upstream");
    assert!(out.failed_post < 50, "the breaker keeps POSTs away from it");
    // Only upstream 1 ever opened, first for consecutive failures, then failed probes.
    assert!(out.events.iter().all(|(k, _)| *k == 1));
    let opened: Vec<_> = out
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            BreakerEvent::Opened { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(opened[0], OpenReason::ConsecutiveFailures);
    assert!(opened[1..].iter().all(|r| *r == OpenReason::ProbeFailed));
    assert!(opened.len() >= 3, "{opened:?}");
    for healthy in [0, 2] {
        let m = out.breakers.get(&healthy).unwrap().metrics(out.end);
        assert_eq!(m.opened, 0);
        assert_eq!(m.failures, 0);
    }
}

#[test]
fn recovered_upstream_closes_after_probes() {
    let recover_at = Instant::ZERO + Duration::from_secs(10);
    let out = run(2000, recover_at);
    let closed_at = out
        .events
        .iter()
        .position(|(_, e)| *e == BreakerEvent::Closed)
        .expect("breaker closed after recovery");
    assert!(closed_at > 0);
    let b = out.breakers.get(&1).unwrap();
    assert_eq!(b.state(out.end), BreakerState::Closed);
    // After recovery upstream 1 carries its share again.
    assert!(b.metrics(out.end).successes > 300);
    let mut per_kind: HashMap<&str, usize> = HashMap::new();
    for (_, e) in &out.events {
        let k = match e {
            BreakerEvent::Opened { .. } => "opened",
            BreakerEvent::HalfOpened => "half",
            BreakerEvent::Closed => "closed",
            _ => "other",
        };
        *per_kind.entry(k).or_default() += 1;
    }
    assert_eq!(per_kind["closed"], 1);
    assert_eq!(per_kind["half"], per_kind["opened"]);
}
