//! The sans-IO core: fault configuration, a seeded PRNG and the per-direction [`Pipe`] that
//! decides when each chunk is released (latency with jitter, order preserved, bandwidth,
//! stalls, a reset after N bytes, a silently dropped direction). Time is passed in.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::Instant;

/// One direction of a relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dir {
    /// Client → relay → upstream (requests).
    ToUpstream,
    /// Upstream → relay → client (responses).
    ToDownstream,
}

/// A stall: nothing is forwarded (reading continues up to the high-water mark, then stops).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stall {
    /// Forwarding runs.
    #[default]
    None,
    /// Forwarding stops until this time.
    Until(std::time::Instant),
    /// Forwarding stops until told otherwise.
    Forever,
}

/// Reset connections: an RST (`SO_LINGER 0` semantics) to the client after `after_bytes`
/// bytes went in direction `dir`, on a share `probability` of connections (chosen with the
/// relay's seeded PRNG, so a seed replays the same choice per connection number).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResetFault {
    /// Bytes forwarded in `dir` before the reset (0: reset right after accept).
    pub after_bytes: u64,
    /// Share of connections reset, 0.0..=1.0.
    pub probability: f64,
    /// Which direction's bytes are counted.
    pub dir: Dir,
}

/// Everything a relay can do to its connections. Changeable at runtime; latency, bandwidth,
/// stalls and half-open apply to bytes arriving after the change (stalls also to bytes already
/// queued), reset, refuse and probability choices to connections accepted after it.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Faults {
    /// Added one-way delay per chunk, each direction.
    pub latency: Duration,
    /// Uniform jitter around `latency` (`latency ± jitter`, clamped at zero); order is kept.
    pub jitter: Duration,
    /// Stop forwarding.
    pub stall: Stall,
    /// Reset connections.
    pub reset: Option<ResetFault>,
    /// Drop this direction's bytes (and its EOF) silently, keeping both sockets open.
    pub half_open: Option<Dir>,
    /// Close every new connection right after accepting it.
    pub refuse: bool,
    /// Bytes per second per connection and direction (`None`: unlimited).
    pub bandwidth: Option<u64>,
    /// Seed of the PRNG (jitter, reset choice).
    pub seed: u64,
}

impl Faults {
    /// No faults: a plain relay.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// `latency ± jitter` per chunk.
    pub fn with_latency(mut self, latency: Duration, jitter: Duration) -> Faults {
        self.latency = latency;
        self.jitter = jitter;
        self
    }

    /// Reset a share of connections after `after_bytes` bytes in `dir`.
    pub fn with_reset(mut self, after_bytes: u64, probability: f64, dir: Dir) -> Faults {
        self.reset = Some(ResetFault {
            after_bytes,
            probability: probability.clamp(0.0, 1.0),
            dir,
        });
        self
    }

    /// Drop direction `dir` silently.
    pub fn with_half_open(mut self, dir: Dir) -> Faults {
        self.half_open = Some(dir);
        self
    }

    /// Refuse (close at once) every new connection.
    pub fn with_refuse(mut self) -> Faults {
        self.refuse = true;
        self
    }

    /// Limit each direction of each connection to `bytes_per_sec`.
    pub fn with_bandwidth(mut self, bytes_per_sec: u64) -> Faults {
        self.bandwidth = Some(bytes_per_sec.max(1));
        self
    }

    /// Stall forwarding as given.
    pub fn with_stall(mut self, stall: Stall) -> Faults {
        self.stall = stall;
        self
    }

    /// Seed the PRNG.
    pub fn with_seed(mut self, seed: u64) -> Faults {
        self.seed = seed;
        self
    }

    /// Whether connection number `n` (0-based, in accept order) is chosen for the reset fault.
    pub fn resets_connection(&self, n: u64) -> Option<ResetFault> {
        let r = self.reset?;
        let mut rng = SplitMix64::new(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (rng.next_f64() < r.probability).then_some(r)
    }
}

/// SplitMix64: a tiny, well-known, seedable PRNG (Steele, Lea, Flood 2014).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with this seed.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a [`Pipe`] releases.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Release {
    /// Bytes to forward.
    Data(Bytes),
    /// The sender closed its side: forward the EOF.
    Eof,
    /// The reset point was reached: reset the connection (after the data released before).
    Reset,
}

#[derive(Debug)]
enum Item {
    Data(Bytes),
    Eof,
}

/// The fault parameters a [`Pipe`] needs, resolved to the pipe's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipeFaults {
    /// Added delay per chunk.
    pub latency: Duration,
    /// Jitter around it.
    pub jitter: Duration,
    /// Bytes per second (`None`: unlimited).
    pub bandwidth: Option<u64>,
    /// Release nothing before this time (`Some(FAR_FUTURE)`: stalled forever).
    pub stalled_until: Option<Instant>,
    /// Drop everything pushed (silently, EOF included).
    pub drop_all: bool,
    /// Release a [`Release::Reset`] once this many bytes were released.
    pub reset_after: Option<u64>,
}

/// One direction's schedule: chunks pushed with their arrival time are released in order at
/// `arrival + latency ± jitter` (never before an earlier chunk), paced by the bandwidth and
/// held while stalled. Sans-IO: the caller reads, pushes, asks [`Pipe::next_deadline`] and
/// calls [`Pipe::pop_due`] at or after it.
#[derive(Debug)]
pub struct Pipe {
    queue: VecDeque<(Instant, Item)>,
    rng: SplitMix64,
    buffered: usize,
    released: u64,
    dropped: u64,
    last_release: Instant,
    bw_free_at: Instant,
    reset_sent: bool,
}

impl Pipe {
    /// An empty pipe whose jitter draws from `seed`.
    pub fn new(seed: u64) -> Pipe {
        Pipe {
            queue: VecDeque::new(),
            rng: SplitMix64::new(seed),
            buffered: 0,
            released: 0,
            dropped: 0,
            last_release: Instant::ZERO,
            bw_free_at: Instant::ZERO,
            reset_sent: false,
        }
    }

    /// Bytes held, not yet released.
    pub fn buffered(&self) -> usize {
        self.buffered
    }
    /// Bytes released so far.
    pub fn released(&self) -> u64 {
        self.released
    }
    /// Bytes dropped (half-open).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
    /// Whether the reset point was released.
    pub fn reset_sent(&self) -> bool {
        self.reset_sent
    }

    fn delay(&mut self, f: &PipeFaults) -> Duration {
        if f.jitter.is_zero() {
            return f.latency;
        }
        let j = f.jitter.as_nanos() as f64;
        let offset = (self.rng.next_f64() * 2.0 - 1.0) * j;
        let d = f.latency.as_nanos() as f64 + offset;
        Duration::from_nanos(d.max(0.0) as u64)
    }

    fn schedule(&mut self, now: Instant, f: &PipeFaults, len: usize) -> Instant {
        let mut at = now + self.delay(f);
        if at < self.last_release {
            at = self.last_release;
        }
        if let Some(rate) = f.bandwidth {
            if at < self.bw_free_at {
                at = self.bw_free_at;
            }
            let cost =
                Duration::from_nanos((len as u128 * 1_000_000_000 / rate.max(1) as u128) as u64);
            self.bw_free_at = at + cost;
        }
        self.last_release = at;
        at
    }

    /// Bytes arrived at `now`.
    pub fn push(&mut self, now: Instant, f: &PipeFaults, mut data: Bytes) {
        if self.reset_sent {
            return; // the connection is being reset: nothing more goes anywhere
        }
        if f.drop_all {
            self.dropped += data.len() as u64;
            return;
        }
        // Pace in slices of ~20 ms worth so a big read is not released in one burst.
        let slice = f
            .bandwidth
            .map_or(usize::MAX, |r| ((r / 50) as usize).max(1));
        while !data.is_empty() {
            let part = data.split_to(data.len().min(slice));
            let at = self.schedule(now, f, part.len());
            self.buffered += part.len();
            self.queue.push_back((at, Item::Data(part)));
        }
    }

    /// The sender's EOF arrived at `now` (released after the data before it).
    pub fn push_eof(&mut self, now: Instant, f: &PipeFaults) {
        if f.drop_all || self.reset_sent {
            return;
        }
        let at = self.schedule(now, f, 0);
        self.queue.push_back((at, Item::Eof));
    }

    /// When the next release is due (`None`: nothing held, or stalled forever).
    pub fn next_deadline(&self, f: &PipeFaults) -> Option<Instant> {
        let (at, _) = self.queue.front()?;
        let at = match f.stalled_until {
            Some(s) if s == Instant::FAR_FUTURE => return None,
            Some(s) => (*at).max(s),
            None => *at,
        };
        Some(at)
    }

    /// Release everything due at `now` into `out`, in order.
    pub fn pop_due(&mut self, now: Instant, f: &PipeFaults, out: &mut Vec<Release>) {
        if self.reset_sent || f.stalled_until.is_some_and(|s| now < s) {
            return;
        }
        while let Some((at, _)) = self.queue.front() {
            if *at > now {
                break;
            }
            let Some((_, item)) = self.queue.pop_front() else {
                break;
            };
            match item {
                Item::Eof => out.push(Release::Eof),
                Item::Data(mut b) => {
                    self.buffered -= b.len();
                    if let Some(limit) = f.reset_after {
                        let room = limit.saturating_sub(self.released);
                        if (b.len() as u64) >= room {
                            let head = b.split_to(room as usize);
                            self.released += head.len() as u64;
                            if !head.is_empty() {
                                out.push(Release::Data(head));
                            }
                            out.push(Release::Reset);
                            self.reset_sent = true;
                            self.buffered = 0;
                            self.queue.clear();
                            return;
                        }
                    }
                    self.released += b.len() as u64;
                    out.push(Release::Data(b));
                }
            }
        }
    }

    /// Forget everything held (the connection is going away).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.buffered = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn at(n: u64) -> Instant {
        Instant::ZERO + ms(n)
    }
    fn data(out: &[Release]) -> Vec<u8> {
        out.iter()
            .flat_map(|r| match r {
                Release::Data(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn no_faults_releases_at_once() {
        let f = PipeFaults::default();
        let mut p = Pipe::new(1);
        p.push(at(0), &f, Bytes::from_static(b"abc"));
        assert_eq!(p.next_deadline(&f), Some(at(0)));
        let mut out = Vec::new();
        p.pop_due(at(0), &f, &mut out);
        assert_eq!(out, vec![Release::Data(Bytes::from_static(b"abc"))]);
        assert!(p.is_empty());
        assert_eq!(p.released(), 3);
    }

    #[test]
    fn latency_holds_until_due() {
        let f = PipeFaults {
            latency: ms(50),
            ..Default::default()
        };
        let mut p = Pipe::new(1);
        p.push(at(10), &f, Bytes::from_static(b"x"));
        assert_eq!(p.next_deadline(&f), Some(at(60)));
        let mut out = Vec::new();
        p.pop_due(at(59), &f, &mut out);
        assert!(out.is_empty());
        assert_eq!(p.buffered(), 1);
        p.pop_due(at(60), &f, &mut out);
        assert_eq!(data(&out), b"x");
    }

    #[test]
    fn jitter_stays_in_bounds_and_order_is_kept() {
        let f = PipeFaults {
            latency: ms(50),
            jitter: ms(20),
            ..Default::default()
        };
        let mut p = Pipe::new(42);
        for i in 0..200u64 {
            p.push(at(i), &f, Bytes::from(vec![i as u8]));
        }
        let mut out = Vec::new();
        let mut prev = Instant::ZERO;
        let mut distinct = std::collections::HashSet::new();
        while let Some(d) = p.next_deadline(&f) {
            assert!(d >= prev, "deadlines never go back");
            prev = d;
            let before = out.len();
            p.pop_due(d, &f, &mut out);
            assert!(out.len() > before);
            distinct.insert(d);
        }
        let got = data(&out);
        assert_eq!(got, (0..200u64).map(|i| i as u8).collect::<Vec<_>>());
        // Every chunk waited at least latency - jitter, and the last at most latency + jitter
        // after its arrival (order keeping only delays, never past the max of earlier ones).
        assert!(prev >= at(199 + 30) && prev <= at(199 + 70), "{prev:?}");
        assert!(distinct.len() > 20, "jitter varies");
    }

    #[test]
    fn same_seed_same_schedule() {
        let f = PipeFaults {
            latency: ms(50),
            jitter: ms(20),
            ..Default::default()
        };
        let run = |seed| {
            let mut p = Pipe::new(seed);
            let mut v = Vec::new();
            for i in 0..20 {
                p.push(at(i * 100), &f, Bytes::from_static(b"a"));
                v.push(p.next_deadline(&f));
                p.pop_due(at(i * 100 + 100), &f, &mut Vec::new());
            }
            v
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn bandwidth_paces_releases() {
        let f = PipeFaults {
            bandwidth: Some(1000), // 1000 B/s: slices of 20 B, 20 ms each
            ..Default::default()
        };
        let mut p = Pipe::new(1);
        p.push(at(0), &f, Bytes::from(vec![0u8; 100]));
        let mut out = Vec::new();
        p.pop_due(at(0), &f, &mut out);
        assert_eq!(data(&out).len(), 20);
        p.pop_due(at(50), &f, &mut out);
        assert_eq!(data(&out).len(), 60);
        assert_eq!(p.next_deadline(&f), Some(at(60)));
        p.pop_due(at(100), &f, &mut out);
        assert_eq!(data(&out).len(), 100);
    }

    #[test]
    fn stall_holds_everything_until_it_ends() {
        let mut f = PipeFaults {
            stalled_until: Some(at(500)),
            ..Default::default()
        };
        let mut p = Pipe::new(1);
        p.push(at(0), &f, Bytes::from_static(b"abc"));
        assert_eq!(p.next_deadline(&f), Some(at(500)));
        let mut out = Vec::new();
        p.pop_due(at(499), &f, &mut out);
        assert!(out.is_empty());
        f.stalled_until = Some(Instant::FAR_FUTURE);
        assert_eq!(p.next_deadline(&f), None, "stalled forever: no deadline");
        p.pop_due(at(10_000), &f, &mut out);
        assert!(out.is_empty());
        f.stalled_until = None;
        p.pop_due(at(10_000), &f, &mut out);
        assert_eq!(data(&out), b"abc");
    }

    #[test]
    fn reset_cuts_at_exactly_n_bytes() {
        let f = PipeFaults {
            reset_after: Some(5),
            ..Default::default()
        };
        let mut p = Pipe::new(1);
        p.push(at(0), &f, Bytes::from_static(b"abc"));
        p.push(at(0), &f, Bytes::from_static(b"defgh"));
        p.push_eof(at(0), &f);
        let mut out = Vec::new();
        p.pop_due(at(0), &f, &mut out);
        assert_eq!(
            out,
            vec![
                Release::Data(Bytes::from_static(b"abc")),
                Release::Data(Bytes::from_static(b"de")),
                Release::Reset
            ]
        );
        assert!(p.reset_sent() && p.is_empty());
        p.push(at(1), &f, Bytes::from_static(b"more"));
        out.clear();
        p.pop_due(at(1), &f, &mut out);
        assert!(out.is_empty(), "nothing after the reset");
    }

    #[test]
    fn reset_after_zero_resets_before_any_byte() {
        let f = PipeFaults {
            reset_after: Some(0),
            ..Default::default()
        };
        let mut p = Pipe::new(1);
        p.push(at(0), &f, Bytes::from_static(b"a"));
        let mut out = Vec::new();
        p.pop_due(at(0), &f, &mut out);
        assert_eq!(out, vec![Release::Reset]);
    }

    #[test]
    fn half_open_drops_data_and_eof() {
        let f = PipeFaults {
            drop_all: true,
            ..Default::default()
        };
        let mut p = Pipe::new(1);
        p.push(at(0), &f, Bytes::from_static(b"abc"));
        p.push_eof(at(0), &f);
        assert!(p.is_empty());
        assert_eq!(p.dropped(), 3);
        assert_eq!(p.next_deadline(&f), None);
    }

    #[test]
    fn eof_follows_delayed_data() {
        let f = PipeFaults {
            latency: ms(30),
            ..Default::default()
        };
        let mut p = Pipe::new(1);
        p.push(at(0), &f, Bytes::from_static(b"a"));
        p.push_eof(at(1), &f);
        let mut out = Vec::new();
        p.pop_due(at(30), &f, &mut out);
        assert_eq!(out, vec![Release::Data(Bytes::from_static(b"a"))]);
        p.pop_due(at(31), &f, &mut out);
        assert_eq!(out.last(), Some(&Release::Eof));
    }

    #[test]
    fn reset_choice_follows_probability_and_seed() {
        let f = Faults::none()
            .with_reset(10, 0.25, Dir::ToDownstream)
            .with_seed(3);
        let chosen = (0..4000)
            .filter(|n| f.resets_connection(*n).is_some())
            .count();
        assert!((800..1200).contains(&chosen), "{chosen}");
        let again = (0..4000)
            .filter(|n| f.resets_connection(*n).is_some())
            .count();
        assert_eq!(chosen, again);
        assert!(Faults::none().resets_connection(0).is_none());
        let all = Faults::none().with_reset(0, 1.0, Dir::ToUpstream);
        assert!((0..100).all(|n| all.resets_connection(n).is_some()));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the faults (latency, jitter, bandwidth, a reset point), bytes come out
            /// in order, never before they arrived plus `latency - jitter`, and a reset cuts at
            /// exactly its byte count.
            #[test]
            fn releases_keep_order_and_bounds(
                chunks in proptest::collection::vec((0u64..50, 1usize..300), 1..40),
                latency in 0u64..100,
                jitter in 0u64..50,
                bandwidth in proptest::option::of(100u64..100_000),
                reset in proptest::option::of(0u64..5000),
                seed in any::<u64>(),
            ) {
                let f = PipeFaults {
                    latency: ms(latency),
                    jitter: ms(jitter.min(latency)),
                    bandwidth,
                    reset_after: reset,
                    ..Default::default()
                };
                let mut p = Pipe::new(seed);
                let mut now = Instant::ZERO;
                let mut sent = Vec::new();
                let mut out = Vec::new();
                let mut arrivals = Vec::new();
                for (gap, len) in &chunks {
                    now += ms(*gap);
                    let data: Vec<u8> = (0..*len).map(|i| (sent.len() + i) as u8).collect();
                    sent.extend_from_slice(&data);
                    arrivals.push((now, sent.len()));
                    p.push(now, &f, Bytes::from(data));
                    p.pop_due(now, &f, &mut out);
                }
                let mut last = now;
                while let Some(d) = p.next_deadline(&f) {
                    prop_assert!(d >= Instant::ZERO);
                    last = last.max(d);
                    let before = out.len();
                    p.pop_due(last, &f, &mut out);
                    prop_assert!(out.len() > before, "a due deadline released nothing");
                }
                let got = data(&out);
                match reset {
                    Some(n) if (n as usize) <= sent.len() => {
                        prop_assert_eq!(got.len(), n as usize);
                        prop_assert_eq!(out.last(), Some(&Release::Reset));
                    }
                    _ => prop_assert!(!out.contains(&Release::Reset)),
                }
                prop_assert_eq!(&got[..], &sent[..got.len()]);
            }
        }
    }
}
