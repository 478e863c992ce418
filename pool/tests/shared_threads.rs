//! `Shared` under real threads: bounded loops of checkout / connect / checkin from several
//! threads, with queued checkouts answered across threads. Asserts limits and accounting, never
//! timing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_pool::{Checkout, CheckoutError, Config, Event, Shared};
use ferry_proto::Instant;

const THREADS: usize = 4;
const ROUNDS: usize = 2_000;
const KEYS: u64 = 5;
const MAX_PER_KEY: usize = 2;

#[test]
fn shared_pool_under_threads_keeps_limits_and_accounting() {
    let mut config = Config::dynamic(0, MAX_PER_KEY);
    config.max_total = 8;
    config.max_waiters_per_key = 4;
    config.wait_timeout = Duration::from_millis(5);
    config.max_uses = Some(50);
    let pool = Arc::new(Shared::<u64, u64>::new(config, 4));
    // Virtual clock shared by the threads (each shard also clamps it to never go back).
    let clock = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(AtomicU64::new(0));
    // Leases held right now per key, as the callers see them.
    let held: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    // Every queued checkout is answered once, on whichever thread polls the event.
    let closed = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(Mutex::new(std::collections::HashSet::new()));

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pool, clock, conns, held, closed, answered) = (
                pool.clone(),
                clock.clone(),
                conns.clone(),
                held.clone(),
                closed.clone(),
                answered.clone(),
            );
            std::thread::spawn(move || {
                let now = || Instant::from_nanos(clock.fetch_add(10_000, Ordering::Relaxed));
                let note = |k: u64, d: isize| {
                    let h = &held[k as usize];
                    if d > 0 {
                        let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(n <= MAX_PER_KEY, "key {k}: {n} leases held");
                    } else {
                        h.fetch_sub(1, Ordering::SeqCst);
                    }
                };
                let mut mine = Vec::new();
                for i in 0..ROUNDS {
                    let key = ((i * 7 + t * 3) as u64) % KEYS;
                    let lease = match pool.checkout(key, now()) {
                        Ok(Checkout::Ready(l)) => Some(l),
                        Ok(Checkout::Connect(ticket)) => {
                            if i % 13 == 0 {
                                pool.connect_failed(ticket, now()).unwrap();
                                None
                            } else {
                                let c = conns.fetch_add(1, Ordering::Relaxed);
                                pool.connected(ticket, c, now()).unwrap()
                            }
                        }
                        Ok(Checkout::Queued(_)) | Err(CheckoutError::QueueFull) => None,
                        Ok(_) | Err(_) => unreachable!("no other answers exist today"),
                    };
                    // Hold up to two leases across iterations so threads overlap on keys.
                    if let Some(l) = lease {
                        note(*l.key(), 1);
                        mine.push(l);
                    }
                    if mine.len() > 2 || (i % 3 == 0 && !mine.is_empty()) {
                        let l = mine.remove(0);
                        note(*l.key(), -1);
                        pool.checkin(l, i % 17 != 0, now()).unwrap();
                    }
                    if i % 5 == 0 {
                        pool.handle_timeout(now());
                    }
                    while let Some(ev) = pool.poll_event() {
                        match ev {
                            Event::Ready { waiter, lease } => {
                                assert!(answered.lock().unwrap().insert(waiter));
                                note(*lease.key(), 1);
                                note(*lease.key(), -1);
                                pool.checkin(lease, true, now()).unwrap();
                            }
                            Event::TimedOut { waiter } | Event::Failed { waiter } => {
                                assert!(answered.lock().unwrap().insert(waiter));
                            }
                            Event::Connect(ticket) => {
                                let c = conns.fetch_add(1, Ordering::Relaxed);
                                assert!(pool.connected(ticket, c, now()).unwrap().is_none());
                            }
                            Event::Close(_) => {
                                closed.fetch_add(1, Ordering::Relaxed);
                            }
                            Event::HealthCheck(l) => pool.checkin(l, true, now()).unwrap(),
                            _ => {}
                        }
                    }
                }
                for l in mine {
                    note(*l.key(), -1);
                    pool.checkin(l, true, now()).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker panicked");
    }
    // Answer what is left (the last checkins may have served waiters), then let every
    // remaining waiter time out.
    let end = Instant::from_nanos(clock.load(Ordering::Relaxed)) + Duration::from_secs(1);
    pool.handle_timeout(end);
    for _ in 0..1000 {
        let Some(ev) = pool.poll_event() else { break };
        match ev {
            Event::Close(_) => {
                closed.fetch_add(1, Ordering::Relaxed);
            }
            Event::TimedOut { waiter } | Event::Failed { waiter } => {
                assert!(answered.lock().unwrap().insert(waiter))
            }
            Event::Ready { waiter, lease } => {
                assert!(answered.lock().unwrap().insert(waiter));
                pool.checkin(lease, true, end).unwrap();
            }
            Event::Connect(ticket) => {
                assert!(pool.connected(ticket, u64::MAX, end).unwrap().is_none());
            }
            Event::HealthCheck(l) => pool.checkin(l, true, end).unwrap(),
            other => panic!("unexpected: {other:?}"),
        }
    }
    let m = pool.metrics();
    assert_eq!(
        (m.active, m.checking, m.connecting, m.waiting),
        (0, 0, 0, 0)
    );
    assert!(m.idle <= 8, "idle {} over max_total", m.idle);
    assert_eq!(m.created, m.closed + m.idle as u64);
    assert_eq!(m.closed, closed.load(Ordering::Relaxed));
    assert!(m.created > 0 && m.failed > 0, "{m:?}");
    assert!(m.wait_time.count() > 0);
}
