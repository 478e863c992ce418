//! A time-bucketed sliding window of counters, shared by budgets, throttles and breakers.

use core::time::Duration;

use ferry_proto::Instant;

use crate::rng::nanos;

/// `K` counters per slot, summed over the last `slots` slots of `slot_len` each.
///
/// Time only moves forward: an instant older than the newest one seen by
/// [`add`](Self::add) counts as that newest one, so an out-of-order timestamp lands in the
/// current slot instead of wiping a newer slot that shares its ring position.
#[derive(Clone, Debug)]
pub(crate) struct SlotWindow<const K: usize> {
    slot_nanos: u64,
    /// `(slot number, counters)`; a slot whose number is too old counts as empty.
    slots: Vec<(u64, [u64; K])>,
    /// Newest slot number written.
    head: u64,
}

/// Most slots a window keeps (a config asking for more gets this many): each slot is a few
/// words, and a breaker per destination must not allocate gigabytes for a typo.
pub(crate) const MAX_SLOTS: u32 = 65_536;

impl<const K: usize> SlotWindow<K> {
    /// A window of `span` split into `slots` buckets (at least 1 ns each; 1 to [`MAX_SLOTS`]).
    pub(crate) fn new(span: Duration, slots: u32) -> Self {
        let slots = u64::from(slots.clamp(1, MAX_SLOTS)).min(nanos(span).max(1)) as u32;
        let slot_nanos = (nanos(span) / u64::from(slots)).max(1);
        SlotWindow {
            slot_nanos,
            slots: vec![(u64::MAX, [0; K]); slots as usize],
            head: 0,
        }
    }

    fn current(&self, now: Instant) -> u64 {
        (now.as_nanos() / self.slot_nanos).max(self.head)
    }

    /// Adds `delta` to the counters of the slot holding `now`.
    pub(crate) fn add(&mut self, now: Instant, delta: [u64; K]) {
        let cur = self.current(now);
        self.head = cur;
        let n = self.slots.len() as u64;
        let slot = &mut self.slots[(cur % n) as usize];
        if slot.0 != cur {
            *slot = (cur, [0; K]);
        }
        for (c, d) in slot.1.iter_mut().zip(delta) {
            *c = c.saturating_add(d);
        }
    }

    /// Sums of the counters over the window ending at `now`.
    pub(crate) fn totals(&self, now: Instant) -> [u64; K] {
        let cur = self.current(now);
        let n = self.slots.len() as u64;
        let mut sum = [0u64; K];
        for (id, c) in &self.slots {
            if *id <= cur && cur - *id < n {
                for (s, v) in sum.iter_mut().zip(c) {
                    *s = s.saturating_add(*v);
                }
            }
        }
        sum
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        for s in &mut self.slots {
            *s = (u64::MAX, [0; K]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slides() {
        let mut w = SlotWindow::<2>::new(Duration::from_secs(10), 10);
        let s = |n: u64| Instant::from_nanos(n * 1_000_000_000);
        w.add(s(0), [1, 0]);
        w.add(s(5), [1, 1]);
        assert_eq!(w.totals(s(9)), [2, 1]);
        assert_eq!(w.totals(s(10)), [1, 1], "slot 0 aged out");
        assert_eq!(w.totals(s(15)), [0, 0]);
        w.add(s(15), [3, 0]);
        assert_eq!(w.totals(s(15)), [3, 0]);
        w.clear();
        assert_eq!(w.totals(s(15)), [0, 0]);
    }

    #[test]
    fn slot_count_is_bounded() {
        let w = SlotWindow::<3>::new(Duration::from_secs(3600), u32::MAX);
        assert_eq!(w.slots.len(), MAX_SLOTS as usize);
        let w = SlotWindow::<3>::new(Duration::from_nanos(5), 1000);
        assert_eq!((w.slots.len(), w.slot_nanos), (5, 1));
        let w = SlotWindow::<3>::new(Duration::ZERO, 0);
        assert_eq!((w.slots.len(), w.slot_nanos), (1, 1));
    }

    #[test]
    fn an_older_instant_counts_as_the_newest_and_wipes_nothing() {
        let mut w = SlotWindow::<1>::new(Duration::from_secs(10), 10);
        let s = |n: u64| Instant::from_nanos(n * 1_000_000_000);
        w.add(s(15), [10]);
        // 5 s shares slot 15's ring position; it must not reset it.
        w.add(s(5), [1]);
        assert_eq!(w.totals(s(15)), [11]);
        assert_eq!(
            w.totals(s(5)),
            [11],
            "an older query reads the newest window"
        );
        assert_eq!(w.totals(s(25)), [0]);
    }
}
