//! Checkout → checkin cycles the way `apps/proxy/src/http.rs` drives its per-worker pool:
//! `usize` keys (upstream index), a handle with an `Arc<AtomicBool>` "alive" flag checked by the
//! validator, `poll_event` drained after every call, a 100 ms `handle_timeout` + `metrics` tick.
//!
//! `cargo bench -p ferry-pool --bench cycle` prints ns per cycle for each case;
//! `pool/benches/instructions.sh` counts instructions per cycle with callgrind (the `measured`
//! function only, two run lengths differenced so that set-up cancels out).
//!
//! Cases:
//! - `one`: one key, one warm connection: checkout, checkin, repeat;
//! - `inflight`: one key, 32 requests in flight (a ring: check in the oldest, check out anew);
//! - `keys4`: 4 keys round-robin, 8 in flight each;
//! - `keys4h`: the same through `checkout_hinted`, one `KeyHint` per key;
//! - `expire`: one key; every 2000 cycles a burst of 32 connections opens and the extras then
//!   expire under a 1 ms idle timeout, reaped by the 100 µs tick (`handle_timeout` +
//!   `poll_timeout` + `metrics`): the tick and expiry cost is amortised into each cycle.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use ferry_pool::{Checkout, CheckoutError, Config, Event, KeyHint, Lease, Pool, PoolError, Ticket};
use ferry_proto::Instant;

/// Like the proxy's `UpHandle`: a peer token and a shared "alive" flag.
#[derive(Debug, Clone)]
struct Handle {
    #[allow(dead_code)]
    peer: (u32, u32),
    alive: Arc<AtomicBool>,
}

type P = Pool<usize, Handle>;

struct State {
    pool: P,
    now: u64,
    step: u64,
    tick_every: u64,
    next_tick: u64,
    next_peer: u32,
    inflight: VecDeque<Lease<usize, Handle>>,
    keys: usize,
    /// One per key when checking out through `checkout_hinted`.
    hints: Option<Vec<KeyHint>>,
    depth: usize,
    burst_every: u64,
    cycles: u64,
}

fn handle(peer: u32) -> Handle {
    Handle {
        peer: (peer, 0),
        alive: Arc::new(AtomicBool::new(true)),
    }
}

impl State {
    fn new(case: &str) -> State {
        let mut c = Config::dynamic(0, 256);
        c.max_waiters_per_key = 1024;
        c.wait_timeout = Duration::from_secs(5);
        c.idle_timeout = Some(Duration::from_secs(60));
        c.reconnect_backoff = Duration::ZERO;
        let (keys, depth, burst_every) = match case {
            "one" => (1, 1, 0),
            "inflight" => (1, 32, 0),
            "keys4" | "keys4h" => (4, 32, 0),
            "expire" => {
                c.idle_timeout = Some(Duration::from_millis(1));
                (1, 1, 2000)
            }
            _ => panic!("unknown case {case}: one | inflight | keys4 | keys4h | expire"),
        };
        let pool = Pool::new(c).with_validator(|h: &Handle| h.alive.load(Relaxed));
        State {
            pool,
            now: 1_000_000,
            // 1 µs per cycle of virtual time; the proxy's tick is every 100 ms of real time at
            // ~100k req/s per worker, so every 10_000 cycles (here 100 µs for `expire`).
            step: 1_000,
            tick_every: if case == "expire" {
                100_000
            } else {
                10_000_000
            },
            next_tick: 0,
            next_peer: 0,
            inflight: VecDeque::new(),
            keys,
            hints: (case == "keys4h").then(|| vec![KeyHint::default(); keys]),
            depth,
            burst_every,
            cycles: 0,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(self.now)
    }

    fn pump(&mut self) {
        while let Some(ev) = self.pool.poll_event() {
            match ev {
                Event::Close(h) => h.alive.store(false, Relaxed),
                Event::Connect(t) => self.connect(t),
                Event::HealthCheck(l) => {
                    let ok = l.conn().alive.load(Relaxed);
                    let now = self.now();
                    let _ = pool_checkin(&mut self.pool, l, ok, now);
                }
                Event::Ready { lease, .. } => self.inflight.push_back(lease),
                _ => {}
            }
        }
    }

    fn connect(&mut self, t: Ticket<usize>) {
        self.next_peer += 1;
        let h = handle(self.next_peer);
        let now = self.now();
        if let Ok(Some(l)) = pool_connected(&mut self.pool, t, h, now) {
            self.inflight.push_back(l);
        }
    }

    /// One proxied request's pool work: check out (a new connection when none is idle), then
    /// check in the oldest lease in flight.
    #[inline(always)]
    fn cycle(&mut self) {
        self.now += self.step;
        let now = self.now();
        let key = (self.cycles as usize) % self.keys;
        self.cycles += 1;
        let got = match &mut self.hints {
            Some(hints) => pool_checkout_hinted(&mut self.pool, key, &mut hints[key], now),
            None => pool_checkout(&mut self.pool, key, now),
        };
        match got {
            Ok(Checkout::Ready(l)) => {
                black_box(l.conn().alive.load(Relaxed));
                self.inflight.push_back(l);
            }
            Ok(Checkout::Connect(t)) => self.connect(t),
            _ => {}
        }
        self.pump();
        if self.inflight.len() >= self.depth {
            if let Some(l) = self.inflight.pop_front() {
                let ok = l.conn().alive.load(Relaxed);
                let now = self.now();
                let _ = pool_checkin(&mut self.pool, l, ok, now);
                self.pump();
            }
        }
        if self.burst_every != 0 && self.cycles % self.burst_every == 0 {
            // A burst: 32 at once, most of which will expire idle.
            for _ in 0..32 {
                match pool_checkout(&mut self.pool, 0, now) {
                    Ok(Checkout::Ready(l)) => self.inflight.push_back(l),
                    Ok(Checkout::Connect(t)) => self.connect(t),
                    _ => {}
                }
            }
            while self.inflight.len() > 1 {
                let l = self.inflight.pop_front().unwrap();
                let _ = pool_checkin(&mut self.pool, l, true, now);
            }
            self.pump();
        }
        if self.now >= self.next_tick {
            self.next_tick = self.now + self.tick_every;
            pool_handle_timeout(&mut self.pool, now);
            self.pump();
            black_box(pool_poll_timeout(&self.pool));
            black_box(pool_metrics(&self.pool));
        }
    }
}

// The pool's entry points behind `#[inline(never)]` wrappers, so that callgrind can count the
// pool's part alone (`--toggle-collect='*cycle::pool_*'`) however LLVM inlines the pool.

#[inline(never)]
fn pool_checkout(
    p: &mut P,
    key: usize,
    now: Instant,
) -> Result<Checkout<usize, Handle>, CheckoutError> {
    p.checkout(key, now)
}

#[inline(never)]
fn pool_checkout_hinted(
    p: &mut P,
    key: usize,
    hint: &mut KeyHint,
    now: Instant,
) -> Result<Checkout<usize, Handle>, CheckoutError> {
    p.checkout_hinted(key, hint, now)
}

#[inline(never)]
fn pool_checkin(
    p: &mut P,
    l: Lease<usize, Handle>,
    ok: bool,
    now: Instant,
) -> Result<(), PoolError> {
    p.checkin(l, ok, now)
}

#[inline(never)]
fn pool_connected(
    p: &mut P,
    t: Ticket<usize>,
    h: Handle,
    now: Instant,
) -> Result<Option<Lease<usize, Handle>>, PoolError> {
    p.connected(t, h, now)
}

#[inline(never)]
fn pool_handle_timeout(p: &mut P, now: Instant) {
    p.handle_timeout(now)
}

#[inline(never)]
fn pool_poll_timeout(p: &P) -> Option<Instant> {
    p.poll_timeout()
}

#[inline(never)]
fn pool_metrics(p: &P) -> ferry_pool::Metrics {
    p.metrics()
}

/// The part callgrind counts (`--toggle-collect='*measured*'`).
#[inline(never)]
fn measured(s: &mut State, n: u64) {
    for _ in 0..n {
        s.cycle();
    }
}

fn warm(case: &str) -> State {
    let mut s = State::new(case);
    measured(&mut s, 10_000);
    s
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, case, n] = &args[..] {
        if mode == "run" {
            let mut s = warm(case);
            measured(&mut s, n.parse().expect("count"));
            black_box(s.pool.metrics());
            return;
        }
    }
    // `cargo bench` passes `--bench`: time every case.
    for case in ["one", "inflight", "keys4", "keys4h", "expire"] {
        let mut s = warm(case);
        let n = 2_000_000;
        let t = std::time::Instant::now();
        measured(&mut s, n);
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        let m = s.pool.metrics();
        println!(
            "{case:9} {ns:7.1} ns/cycle  (created {}, closed {}, idle {}, active {})",
            m.created, m.closed, m.idle, m.active
        );
    }
}
