//! A hierarchical timer wheel keyed by connection token.
//!
//! Each connection has at most one timer: the deadline its protocol state machine reports from
//! `poll_timeout`. Drivers arm it after every burst of work and call `handle_timeout` when it
//! fires (an early fire is harmless: the protocol treats it as a no-op, then the driver re-arms
//! from the new `poll_timeout`).
//!
//! Layout (the classic Varghese & Lauck design, as in the Linux kernel and tokio): six levels of
//! 64 slots; level `l` slots span `64^l` ticks, so the wheel covers `64^6` ticks (about 795 days
//! at the default 1 ms tick). A timer sits at the level of the highest bit where its deadline
//! differs from the current tick; when the wheel reaches a higher-level slot, its timers cascade
//! down. Deadlines further out than the wheel covers sit in the top level and cascade again until
//! they are due. Insert and cancel are O(1); `advance` is O(expired + cascaded) and jumps over
//! empty slots with a 64-bit occupancy map per level, so a long idle sleep costs nothing.
//!
//! Cancelling is lazy: every token carries a generation, and a slot entry whose generation is
//! stale is dropped when its slot is processed. Re-arming the same token many times inside one
//! slot range leaves stale entries behind until then; drivers avoid that by re-arming only when
//! the deadline moves earlier or the timer fired (see `ferry-epoll`).

use std::time::Duration;

use ferry_proto::Instant;

const LEVELS: usize = 6;
const SLOTS: usize = 64;
const SLOT_BITS: u32 = 6;
/// Largest distance (in ticks) placed exactly; further deadlines wrap in the top level.
const MAX_TICKS: u64 = (1u64 << (SLOT_BITS * LEVELS as u32)) - 1;

#[derive(Clone, Copy, Debug)]
struct Entry {
    token: usize,
    gen: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Armed {
    gen: u32,
    /// Deadline in ticks, `None` when not armed.
    at: Option<u64>,
}

#[derive(Debug)]
struct Level {
    occupied: u64,
    slots: Vec<Vec<Entry>>,
}

/// A hierarchical timer wheel with one timer per token (see the [module docs](self)).
#[derive(Debug)]
pub struct TimerWheel {
    origin: Instant,
    tick_nanos: u64,
    /// Current tick: everything at or before it has been expired.
    now: u64,
    levels: Vec<Level>,
    /// Bit `l` set when level `l` has an occupied slot (`next_slot` skips empty levels).
    levels_occupied: u32,
    /// Timers inserted with a deadline at or before `now`: they fire on the next `advance`.
    due: Vec<Entry>,
    armed: Vec<Armed>,
    len: usize,
}

impl TimerWheel {
    /// A wheel whose tick 0 is `origin`, with `tick` resolution (at least 1 ns). Deadlines are
    /// rounded up to the next tick, so a timer never fires before its deadline.
    pub fn new(origin: Instant, tick: Duration) -> TimerWheel {
        let tick_nanos = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX).max(1);
        TimerWheel {
            origin,
            tick_nanos,
            now: 0,
            levels: (0..LEVELS)
                .map(|_| Level {
                    occupied: 0,
                    slots: (0..SLOTS).map(|_| Vec::new()).collect(),
                })
                .collect(),
            levels_occupied: 0,
            due: Vec::new(),
            armed: Vec::new(),
            len: 0,
        }
    }

    fn to_tick_ceil(&self, t: Instant) -> u64 {
        let d = t.as_nanos().saturating_sub(self.origin.as_nanos());
        d / self.tick_nanos + u64::from(d % self.tick_nanos != 0)
    }

    fn to_tick_floor(&self, t: Instant) -> u64 {
        t.as_nanos().saturating_sub(self.origin.as_nanos()) / self.tick_nanos
    }

    fn tick_to_instant(&self, tick: u64) -> Instant {
        Instant::from_nanos(
            self.origin
                .as_nanos()
                .saturating_add(tick.saturating_mul(self.tick_nanos)),
        )
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The deadline (rounded up to the tick) armed for `token`.
    pub fn deadline(&self, token: usize) -> Option<Instant> {
        self.armed
            .get(token)
            .and_then(|a| a.at)
            .map(|t| self.tick_to_instant(t))
    }

    /// Arm `token`'s timer for `deadline`, replacing any earlier one.
    pub fn insert(&mut self, token: usize, deadline: Instant) {
        if token >= self.armed.len() {
            self.armed.resize(token + 1, Armed::default());
        }
        let at = self.to_tick_ceil(deadline);
        let a = &mut self.armed[token];
        if a.at.is_none() {
            self.len += 1;
        }
        a.gen = a.gen.wrapping_add(1);
        a.at = Some(at);
        let e = Entry { token, gen: a.gen };
        self.place(e, at);
    }

    /// Disarm `token`'s timer; returns whether one was armed.
    pub fn cancel(&mut self, token: usize) -> bool {
        match self.armed.get_mut(token) {
            Some(a) if a.at.is_some() => {
                a.at = None;
                a.gen = a.gen.wrapping_add(1);
                self.len -= 1;
                true
            }
            _ => false,
        }
    }

    fn place(&mut self, e: Entry, at: u64) {
        if at <= self.now {
            self.due.push(e);
            return;
        }
        let at = at.min(self.now + MAX_TICKS);
        let masked = (self.now ^ at) | (SLOTS as u64 - 1);
        let significant = 63 - masked.leading_zeros();
        let level = ((significant / SLOT_BITS) as usize).min(LEVELS - 1);
        let slot = ((at >> (level as u32 * SLOT_BITS)) as usize) & (SLOTS - 1);
        let l = &mut self.levels[level];
        l.slots[slot].push(e);
        l.occupied |= 1 << slot;
        self.levels_occupied |= 1 << level;
    }

    /// The earliest (level, slot, tick) to process, if any.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        if self.levels_occupied == 0 {
            return None;
        }
        let level = self.levels_occupied.trailing_zeros() as usize;
        let l = &self.levels[level];
        let shift = level as u32 * SLOT_BITS;
        let slot_range = 1u64 << shift;
        let level_range = slot_range << SLOT_BITS;
        let now_slot = ((self.now >> shift) as usize) & (SLOTS - 1);
        let zeros = l.occupied.rotate_right(now_slot as u32).trailing_zeros() as usize;
        let slot = (now_slot + zeros) % SLOTS;
        let level_start = self.now & !(level_range - 1);
        let mut at = level_start + slot as u64 * slot_range;
        if at <= self.now && level > 0 {
            // A slot "behind" the current one at this level lies in the next rotation.
            at += level_range;
        }
        Some((level, slot, at.max(self.now)))
    }

    /// When [`advance`](Self::advance) next has work: the earliest slot boundary holding a
    /// timer (possibly earlier than the timer itself, when a far slot must cascade), or now when
    /// timers are due. `None` when nothing is armed.
    pub fn next_expiration(&self) -> Option<Instant> {
        if !self.due.is_empty() {
            return Some(self.tick_to_instant(self.now));
        }
        self.next_slot().map(|(_, _, at)| self.tick_to_instant(at))
    }

    /// Move time to `now`, pushing the token of every timer whose deadline passed onto
    /// `expired` (each fires once, then is disarmed). Time never moves backwards.
    pub fn advance(&mut self, now: Instant, expired: &mut Vec<usize>) {
        let target = self.to_tick_floor(now);
        if !self.due.is_empty() {
            for e in std::mem::take(&mut self.due) {
                self.fire(e, expired);
            }
        }
        while let Some((level, slot, at)) = self.next_slot() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            let l = &mut self.levels[level];
            l.occupied &= !(1u64 << slot);
            if l.occupied == 0 {
                self.levels_occupied &= !(1 << level);
            }
            let entries = std::mem::take(&mut l.slots[slot]);
            for e in &entries {
                let Some(a) = self.armed.get(e.token) else {
                    continue;
                };
                if a.gen != e.gen {
                    continue; // cancelled or re-armed
                }
                match a.at {
                    Some(t) if t <= self.now => self.fire(*e, expired),
                    Some(t) => self.place(*e, t),
                    None => {}
                }
            }
            // Keep the slot's allocation for reuse.
            let mut entries = entries;
            entries.clear();
            let l = &mut self.levels[level];
            if l.slots[slot].is_empty() {
                l.slots[slot] = entries;
            }
        }
        self.now = self.now.max(target);
    }

    fn fire(&mut self, e: Entry, expired: &mut Vec<usize>) {
        if let Some(a) = self.armed.get_mut(e.token) {
            if a.gen == e.gen && a.at.is_some() {
                a.at = None;
                a.gen = a.gen.wrapping_add(1);
                self.len -= 1;
                expired.push(e.token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    fn wheel() -> TimerWheel {
        TimerWheel::new(Instant::ZERO, Duration::from_millis(1))
    }

    fn run(w: &mut TimerWheel, to: u64) -> Vec<usize> {
        let mut v = Vec::new();
        w.advance(ms(to), &mut v);
        v.sort();
        v
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = wheel();
        w.insert(1, ms(10));
        w.insert(2, ms(5));
        assert_eq!(w.len(), 2);
        assert_eq!(w.next_expiration(), Some(ms(5)));
        assert_eq!(run(&mut w, 4), Vec::<usize>::new());
        assert_eq!(run(&mut w, 5), vec![2]);
        assert_eq!(run(&mut w, 9), Vec::<usize>::new());
        assert_eq!(run(&mut w, 10), vec![1]);
        assert!(w.is_empty());
        assert_eq!(w.next_expiration(), None);
    }

    #[test]
    fn rounds_up_to_the_tick() {
        let mut w = wheel();
        w.insert(0, Instant::from_nanos(1_500_000));
        assert_eq!(run(&mut w, 1), Vec::<usize>::new());
        assert_eq!(run(&mut w, 2), vec![0]);
    }

    #[test]
    fn cancel_and_rearm() {
        let mut w = wheel();
        w.insert(3, ms(20));
        assert!(w.cancel(3));
        assert!(!w.cancel(3));
        assert_eq!(run(&mut w, 30), Vec::<usize>::new());
        w.insert(3, ms(100));
        w.insert(3, ms(40)); // replaces
        assert_eq!(w.len(), 1);
        assert_eq!(w.deadline(3), Some(ms(40)));
        assert_eq!(run(&mut w, 40), vec![3]);
        assert_eq!(run(&mut w, 200), Vec::<usize>::new());
    }

    #[test]
    fn past_deadline_fires_on_next_advance() {
        let mut w = wheel();
        run(&mut w, 50);
        w.insert(7, ms(10));
        assert_eq!(w.next_expiration(), Some(ms(50)));
        assert_eq!(run(&mut w, 50), vec![7]);
    }

    #[test]
    fn far_deadlines_cascade_exactly() {
        let mut w = wheel();
        let deadlines = [
            63u64,
            64,
            65,
            4095,
            4096,
            4097,
            262_143,
            262_144,
            300_000,
            16_777_300,
            1 << 30,
        ];
        for (i, d) in deadlines.iter().enumerate() {
            w.insert(i, ms(*d));
        }
        for (i, d) in deadlines.iter().enumerate() {
            assert_eq!(run(&mut w, d - 1), Vec::<usize>::new(), "early at {d}");
            assert_eq!(run(&mut w, *d), vec![i], "deadline {d}");
        }
        assert!(w.is_empty());
    }

    #[test]
    fn beyond_the_wheel_wraps_and_still_fires_on_time() {
        let mut w = wheel();
        let far = MAX_TICKS * 2 + 12_345;
        w.insert(1, ms(far));
        let mut v = Vec::new();
        // Jump in large steps; the timer must not fire early.
        let mut t = 0;
        while t < far - 1 {
            t = (t + MAX_TICKS / 3).min(far - 1);
            w.advance(ms(t), &mut v);
            assert!(v.is_empty(), "fired early at {t}");
        }
        w.advance(ms(far), &mut v);
        assert_eq!(v, vec![1]);
    }

    #[test]
    fn big_jump_fires_everything_once() {
        let mut w = wheel();
        for i in 0..1000 {
            w.insert(i, ms((i as u64 * 7919) % 500_000 + 1));
        }
        let v = run(&mut w, 1_000_000);
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
        assert!(w.is_empty());
    }

    #[test]
    fn matches_a_naive_model() {
        // Deterministic pseudo-random schedule compared with a brute-force model.
        let mut w = wheel();
        let mut model: Vec<Option<u64>> = vec![None; 64];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut now = 0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let tok = (x % 64) as usize;
            match (x >> 8) % 4 {
                0 | 1 => {
                    let d = now
                        + (x >> 16) % [10, 5_000, 300_000, 20_000_000][((x >> 40) % 4) as usize];
                    w.insert(tok, ms(d));
                    model[tok] = Some(d);
                }
                2 => {
                    assert_eq!(w.cancel(tok), model[tok].is_some());
                    model[tok] = None;
                }
                _ => {
                    now += (x >> 20) % 70_000;
                    let got = run(&mut w, now);
                    let mut want = Vec::new();
                    for (i, m) in model.iter_mut().enumerate() {
                        if matches!(m, Some(d) if *d <= now) {
                            want.push(i);
                            *m = None;
                        }
                    }
                    assert_eq!(got, want, "at {now}");
                }
            }
            assert_eq!(w.len(), model.iter().filter(|m| m.is_some()).count());
            // The wheel wakes no later than the earliest armed deadline (earlier is allowed:
            // a far slot cascading, or stale entries of cancelled timers).
            if let Some(first) = model.iter().flatten().min() {
                let next = w.next_expiration().expect("a timer is armed");
                assert!(
                    next <= ms(*first).max(ms(now)),
                    "at {now}: {next:?} > {first}"
                );
            }
        }
    }
}
