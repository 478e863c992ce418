//! Per-client request rate limiting (`--rate-limit N --rate-limit-burst B`): one GCRA
//! (`ferry_reliability::RateLimiters`) per client address, shared by every I/O worker, so a
//! client gets the configured rate however its connections spread over workers (as nginx's
//! `limit_req` zone in shared memory).
//!
//! The map is split into [`SHARDS`] shards by address, each behind its own mutex held for one
//! lookup, so workers rarely meet. A client whose state is indistinguishable from a new one
//! (its burst refilled) is dropped by [`ClientLimiter::sweep`], one shard per call from the
//! workers' ticks: memory follows the clients active within one burst's refill time.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use ferry_proto::Instant;
use ferry_reliability::ratelimit::{Quota, RateLimited, RateLimiters};

/// Shards of the address map.
pub const SHARDS: usize = 16;

/// The shared per-client limiter.
#[derive(Debug)]
pub struct ClientLimiter {
    shards: Box<[Mutex<RateLimiters<IpAddr>>]>,
    /// The next shard [`sweep`](Self::sweep) visits.
    next: AtomicUsize,
}

impl ClientLimiter {
    /// A limiter admitting `quota` per client address.
    pub fn new(quota: Quota) -> ClientLimiter {
        ClientLimiter {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(RateLimiters::new(quota)))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<RateLimiters<IpAddr>> {
        let mut h = DefaultHasher::new();
        ip.to_canonical().hash(&mut h);
        &self.shards[h.finish() as usize % SHARDS]
    }

    /// Change the quota (a reload): with another quota every client starts again with a full
    /// burst.
    pub fn set_quota(&self, quota: Quota) {
        for s in self.shards.iter() {
            s.lock().unwrap_or_else(|p| p.into_inner()).set_quota(quota);
        }
    }

    /// Admits one request from `ip` at `now`, or says how long until it would be admitted.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let ip = ip.to_canonical();
        let r = self
            .shard(&ip)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&ip, now);
        match r {
            Ok(()) => Ok(()),
            Err(RateLimited::Until { retry_at }) => Err(retry_at.saturating_duration_since(now)),
            // One request never exceeds a burst of at least one (and the enum may grow).
            Err(_) => Err(Duration::from_secs(1)),
        }
    }

    /// Drops the idle clients of one shard (the next in turn).
    pub fn sweep(&self, now: Instant) {
        let i = self.next.fetch_add(1, Relaxed) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain_active(now);
    }

    /// Clients tracked (all shards).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The client a trusted proxy forwarded for: the last address of its `X-Forwarded-For`
/// (the one that proxy appended), if it parses.
pub fn forwarded_client(xff: &[u8]) -> Option<IpAddr> {
    let last = xff.rsplit(|&b| b == b',').next()?;
    let s = std::str::from_utf8(last).ok()?.trim();
    // `[v6]:port` and `v4:port` forms some proxies write.
    let s = s
        .strip_prefix('[')
        .map_or(s, |r| r.split(']').next().unwrap_or(r));
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.rsplit_once(':')?.0.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn each_client_gets_its_burst_then_the_rate() {
        let l = ClientLimiter::new(Quota::per_second(10).with_burst(3));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        for _ in 0..3 {
            assert!(l.check(a, at(0)).is_ok());
        }
        let wait = l.check(a, at(0)).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Another client is not affected; an IPv4-mapped address is its IPv4 address.
        for _ in 0..3 {
            assert!(l.check(b, at(0)).is_ok());
        }
        assert!(l.check("::ffff:10.0.0.1".parse().unwrap(), at(0)).is_err());
        // One interval later, exactly one more.
        assert!(l.check(a, at(100)).is_ok());
        assert!(l.check(a, at(100)).is_err());
    }

    #[test]
    fn sweeping_forgets_only_idle_clients() {
        let l = ClientLimiter::new(Quota::per_second(10).with_burst(2));
        for i in 0..100u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            assert!(l.check(ip, at(0)).is_ok());
        }
        assert_eq!(l.len(), 100);
        // At 50 ms nobody has refilled: nothing goes.
        for _ in 0..SHARDS {
            l.sweep(at(50));
        }
        assert_eq!(l.len(), 100);
        // At 200 ms every burst is full again: all go.
        for _ in 0..SHARDS {
            l.sweep(at(200));
        }
        assert!(l.is_empty());
    }

    #[test]
    fn forwarded_client_is_the_last_address() {
        let f = |s: &str| forwarded_client(s.as_bytes());
        assert_eq!(f("1.2.3.4"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(f("9.9.9.9, 1.2.3.4"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(
            f("9.9.9.9,[2001:db8::1]:443"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(f("x, 1.2.3.4:8080"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(f("1.2.3.4, unknown"), None);
        assert_eq!(f(""), None);
    }
}
