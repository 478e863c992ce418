//! Choosing an upstream: round robin, least requests, consistent hashing (a ring of virtual
//! nodes, as ketama and Envoy's ring hash do). Each I/O worker keeps its own balancer.

use std::fmt;
use std::str::FromStr;

/// The load-balancing policy (`--balance`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Balance {
    /// Each upstream in turn.
    #[default]
    RoundRobin,
    /// The upstream with the fewest requests in flight (from this worker); ties in turn.
    LeastRequests,
    /// Consistent hashing of a key (the request target for HTTP): a key keeps its upstream
    /// while that upstream is available, and only `1/n` of keys move when one goes away.
    Hash,
}

impl FromStr for Balance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" | "rr" => Ok(Balance::RoundRobin),
            "least-requests" | "least" => Ok(Balance::LeastRequests),
            "hash" | "consistent-hash" => Ok(Balance::Hash),
            _ => Err(format!(
                "unknown balance `{s}` (use round-robin, least-requests or hash)"
            )),
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastRequests => "least-requests",
            Balance::Hash => "hash",
        })
    }
}

/// A set of upstream indices (up to 255, the proxy's most): the first 64 in a word, the
/// rest (only with more than 64 upstreams) boxed. The upstreams a request or command was
/// already tried on (and those a pick skips), for the HTTP and Redis proxies alike.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tried {
    low: u64,
    high: Option<Box<[u64; 3]>>,
}

impl Tried {
    /// The empty set.
    pub(crate) const NONE: Tried = Tried { low: 0, high: None };

    /// Whether `i` is in the set.
    #[inline]
    pub(crate) fn has(&self, i: usize) -> bool {
        if i < 64 {
            self.low & (1 << i) != 0
        } else {
            self.has_high(i)
        }
    }

    /// Put `i` in the set (beyond 255: ignored).
    #[inline]
    pub(crate) fn add(&mut self, i: usize) {
        if i < 64 {
            self.low |= 1 << i;
        } else {
            self.add_high(i);
        }
    }

    /// Take `i` out of the set.
    #[inline]
    pub(crate) fn remove(&mut self, i: usize) {
        if i < 64 {
            self.low &= !(1 << i);
        } else if let Some(w) = self.high.as_deref_mut().and_then(|h| h.get_mut(i / 64 - 1)) {
            *w &= !(1 << (i % 64));
        }
    }

    /// How many indices are in the set.
    pub(crate) fn len(&self) -> usize {
        let high = self
            .high
            .as_deref()
            .map_or(0, |h| h.iter().map(|w| w.count_ones()).sum());
        (self.low.count_ones() + high) as usize
    }

    /// Whether the set is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cold]
    fn has_high(&self, i: usize) -> bool {
        let w = self.high.as_deref().and_then(|h| h.get(i / 64 - 1));
        w.is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    #[cold]
    fn add_high(&mut self, i: usize) {
        let h = self.high.get_or_insert_with(Default::default);
        if let Some(w) = h.get_mut(i / 64 - 1) {
            *w |= 1 << (i % 64);
        }
    }
}

const VNODES: usize = 160;

/// FNV-1a, 64 bit (stable across runs and hosts, which a hash ring needs).
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche (splitmix64) so nearby keys spread over the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// One worker's balancer over `n` upstreams.
#[derive(Clone, Debug)]
pub struct Balancer {
    kind: Balance,
    n: usize,
    next: usize,
    ring: Vec<(u64, usize)>,
}

impl Balancer {
    /// A balancer over upstreams `0..n`; `names` seed the hash ring (their addresses), so
    /// every worker and every proxy instance builds the same ring.
    pub fn new(kind: Balance, names: &[String], start: usize) -> Balancer {
        let mut ring = Vec::new();
        if kind == Balance::Hash {
            for (i, name) in names.iter().enumerate() {
                for v in 0..VNODES {
                    ring.push((fnv1a(format!("{name}#{v}").as_bytes()), i));
                }
            }
            ring.sort_unstable();
        }
        Balancer {
            kind,
            n: names.len(),
            next: start % names.len().max(1),
            ring,
        }
    }

    /// A balancer over upstream slots `0..n` (after a reload) of which `named` are listed,
    /// `(slot, address)`: the hash ring holds only those (the same ring as [`Balancer::new`]
    /// builds for the same addresses in the same order, so a reload that keeps the upstreams
    /// keeps every key where it was); round robin and least requests step over all slots,
    /// the picker's `usable` skipping the unlisted ones.
    pub fn over_slots(
        kind: Balance,
        n: usize,
        named: &[(usize, String)],
        start: usize,
    ) -> Balancer {
        let mut ring = Vec::new();
        if kind == Balance::Hash {
            for (i, name) in named {
                for v in 0..VNODES {
                    ring.push((fnv1a(format!("{name}#{v}").as_bytes()), *i));
                }
            }
            ring.sort_unstable();
        }
        Balancer {
            kind,
            n,
            next: start % n.max(1),
            ring,
        }
    }

    /// The policy.
    #[inline]
    pub fn kind(&self) -> Balance {
        self.kind
    }

    /// Pick an upstream for `key` among those `usable` says yes to (with `load` the requests
    /// in flight on each, for least-requests). `None` when none is usable.
    pub fn pick(
        &mut self,
        key: &[u8],
        usable: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        match self.kind {
            Balance::RoundRobin => {
                // `next < n` always: step with a compare, not a division.
                let mut i = self.next.min(self.n - 1);
                for _ in 0..self.n {
                    let after = if i + 1 == self.n { 0 } else { i + 1 };
                    if usable(i) {
                        self.next = after;
                        return Some(i);
                    }
                    i = after;
                }
                None
            }
            Balance::LeastRequests => {
                let mut best: Option<(usize, usize)> = None;
                for k in 0..self.n {
                    let i = (self.next + k) % self.n;
                    if usable(i) {
                        let l = load(i);
                        if best.is_none_or(|(_, b)| l < b) {
                            best = Some((i, l));
                        }
                    }
                }
                let (i, _) = best?;
                self.next = (i + 1) % self.n;
                Some(i)
            }
            Balance::Hash => {
                let h = fnv1a(key);
                let start = self.ring.partition_point(|&(p, _)| p < h);
                for k in 0..self.ring.len() {
                    let (_, i) = self.ring[(start + k) % self.ring.len()];
                    if usable(i) {
                        return Some(i);
                    }
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn slots_keep_the_ring_of_the_same_addresses() {
        let n = names(3);
        let named: Vec<(usize, String)> = n.iter().cloned().enumerate().collect();
        let mut a = Balancer::new(Balance::Hash, &n, 0);
        let mut b = Balancer::over_slots(Balance::Hash, 3, &named, 0);
        for k in 0..200u32 {
            let key = k.to_string();
            assert_eq!(
                a.pick(key.as_bytes(), |_| true, |_| 0),
                b.pick(key.as_bytes(), |_| true, |_| 0)
            );
        }
        // Slot 1 dropped, slot 3 added: keys only ever land on listed slots.
        let named = vec![
            (0, n[0].clone()),
            (2, n[2].clone()),
            (3, "10.0.0.9:80".into()),
        ];
        let mut c = Balancer::over_slots(Balance::Hash, 4, &named, 0);
        for k in 0..200u32 {
            let got = c.pick(k.to_string().as_bytes(), |_| true, |_| 0).unwrap();
            assert!([0, 2, 3].contains(&got), "{got}");
        }
        let mut rr = Balancer::over_slots(Balance::RoundRobin, 4, &named, 0);
        let got: Vec<_> = (0..6)
            .map(|_| rr.pick(b"", |i| i != 1, |_| 0).unwrap())
            .collect();
        assert_eq!(got, [0, 2, 3, 0, 2, 3]);
        assert_eq!(rr.kind(), Balance::RoundRobin);
    }

    #[test]
    fn round_robin_skips_unusable() {
        let mut b = Balancer::new(Balance::RoundRobin, &names(3), 0);
        let got: Vec<_> = (0..6)
            .map(|_| b.pick(b"", |i| i != 1, |_| 0).unwrap())
            .collect();
        assert_eq!(got, vec![0, 2, 0, 2, 0, 2]);
        assert_eq!(b.pick(b"", |_| false, |_| 0), None);
    }

    #[test]
    fn least_requests_prefers_idle() {
        let mut b = Balancer::new(Balance::LeastRequests, &names(3), 0);
        let load = [5, 1, 3];
        assert_eq!(b.pick(b"", |_| true, |i| load[i]), Some(1));
    }

    #[test]
    fn hashing_is_stable_and_moves_few_keys() {
        let mut a = Balancer::new(Balance::Hash, &names(4), 0);
        let keys: Vec<String> = (0..2000).map(|i| format!("/item/{i}")).collect();
        let before: Vec<_> = keys
            .iter()
            .map(|k| a.pick(k.as_bytes(), |_| true, |_| 0).unwrap())
            .collect();
        // Same answer again, and from another worker's balancer.
        let mut b = Balancer::new(Balance::Hash, &names(4), 3);
        for (k, &u) in keys.iter().zip(&before) {
            assert_eq!(b.pick(k.as_bytes(), |_| true, |_| 0), Some(u));
        }
        // Every upstream gets a fair share (within a wide margin).
        for u in 0..4 {
            let n = before.iter().filter(|&&x| x == u).count();
            assert!((250..=750).contains(&n), "upstream {u}: {n}");
        }
        // Upstream 2 goes away: only its keys move.
        for (k, &u) in keys.iter().zip(&before) {
            let now = a.pick(k.as_bytes(), |i| i != 2, |_| 0).unwrap();
            if u != 2 {
                assert_eq!(now, u);
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[test]
    fn tried_holds_every_upstream_index() {
        let mut t = Tried::default();
        assert!(t.is_empty());
        for i in [0, 1, 63, 64, 65, 127, 128, 200, 254] {
            assert!(!t.has(i), "{i}");
            t.add(i);
            assert!(t.has(i), "{i}");
        }
        assert_eq!(t.len(), 9);
        // No aliasing modulo 64.
        for i in [2, 66, 129, 130, 192, 255 - 64] {
            assert!(!t.has(i), "{i}");
        }
        t.remove(65);
        t.remove(1);
        assert!(!t.has(65) && !t.has(1) && t.has(64) && t.has(0));
        assert_eq!(t.len(), 7);
        t.add(300); // beyond the proxy's most: ignored
        assert_eq!(t.len(), 7);
    }
}
