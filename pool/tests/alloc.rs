//! Zero allocations per checkout → checkin cycle once warm, the way the HTTP proxy drives its
//! per-worker pool: `usize` keys, a validator, events drained after every call, LIFO reuse of
//! warm connections over 1 and 3 keys with several leases in flight.
//!
//! `cargo test -p ferry-pool --test alloc -- --nocapture` prints the exact count.

use std::collections::VecDeque;
use std::time::Duration;

use ferry_pool::{Checkout, Config, Event, Pool};
use ferry_proto::Instant;

#[path = "../../tests/support/count_alloc.rs"]
mod count_alloc;

#[global_allocator]
static GLOBAL: count_alloc::CountingAlloc = count_alloc::CountingAlloc;

const MEASURED: u64 = 10_000;

/// Runs `cycles` checkout → checkin cycles over `keys` keys with `depth` leases in flight.
fn cycles(
    pool: &mut Pool<usize, u64>,
    ring: &mut VecDeque<ferry_pool::Lease<usize, u64>>,
    from: u64,
    n: u64,
    keys: usize,
    depth: usize,
) {
    let mut next_conn = 1_000_000 + from;
    for i in from..from + n {
        let now = Instant::from_nanos(1_000_000 + i * 1_000);
        match pool.checkout(i as usize % keys, now) {
            Ok(Checkout::Ready(l)) => ring.push_back(l),
            Ok(Checkout::Connect(t)) => {
                next_conn += 1;
                ring.push_back(pool.connected(t, next_conn, now).unwrap().unwrap());
            }
            other => panic!("{other:?}"),
        }
        if let Some(ev) = pool.poll_event() {
            panic!("unexpected {ev:?}");
        }
        if ring.len() >= depth {
            let l = ring.pop_front().unwrap();
            pool.checkin(l, true, now).unwrap();
            if let Some(Event::Close(_)) = pool.poll_event() {
                panic!("a healthy connection was closed");
            }
        }
    }
}

#[test]
fn no_allocation_per_cycle_once_warm() {
    count_alloc::assert_counting();
    for (keys, depth) in [(1, 1), (1, 16), (3, 12)] {
        let mut c = Config::dynamic(0, 64);
        c.idle_timeout = Some(Duration::from_secs(90));
        let mut pool = Pool::new(c).with_validator(|c: &u64| *c != 0);
        let mut ring = VecDeque::with_capacity(64);
        cycles(&mut pool, &mut ring, 0, 1_000, keys, depth);
        let ((), allocations) =
            count_alloc::counted(|| cycles(&mut pool, &mut ring, 1_000, MEASURED, keys, depth));
        eprintln!(
            "{keys} keys, {depth} in flight: {allocations} allocations over {MEASURED} cycles"
        );
        assert_eq!(allocations, 0, "{keys} keys, {depth} in flight");
        let m = pool.metrics();
        assert_eq!(m.wait_time.count(), 1_000 + MEASURED);
        assert_eq!(m.closed, 0);
    }
}
