//! Per-worker counters and a latency histogram, written by one worker, read by `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the latency buckets, in microseconds (the last bucket is `+Inf`).
pub const LATENCY_BOUNDS_US: [u64; 20] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Counters of one I/O worker. Relaxed atomics: each is written by its own worker (or, for
/// `panics`, the application worker that caught one) and only read for reporting.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Requests received (heads parsed).
    pub requests: AtomicU64,
    /// Responses completed.
    pub responses: AtomicU64,
    /// Bytes read from sockets.
    pub bytes_in: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections closed.
    pub closed: AtomicU64,
    /// Protocol errors (400/408/413/431... sent by the connection).
    pub protocol_errors: AtomicU64,
    /// Timeouts (header read or idle keep-alive).
    pub timeouts: AtomicU64,
    /// Panics caught in the application.
    pub panics: AtomicU64,
    /// Accept failures (EMFILE/ENFILE and others) that paused accepting.
    pub accept_errors: AtomicU64,
    /// Times a connection's reading paused because the application channel was full.
    pub backpressure: AtomicU64,
    /// Event loop wake-ups.
    pub loops: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    latency_sum_us: AtomicU64,
}

/// Add `n` to a counter (an atomic read-modify-write: safe from any thread).
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Add `n` to a counter that only the calling I/O worker writes: a plain load and store, no
/// locked instruction (readers still see whole values). For the per-request hot counters
/// (requests, responses, bytes, loop turns, latency); [`add`] for anything another thread
/// may also write.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl WorkerMetrics {
    /// Record one request's latency.
    pub fn observe_latency_us(&self, us: u64) {
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        // Written by the owning I/O worker only.
        bump(&self.latency[i], 1);
        bump(&self.latency_sum_us, us);
    }

    /// Non-cumulative bucket counts (the last is `+Inf`) and the sum in microseconds.
    pub fn latency(&self) -> (Vec<u64>, u64) {
        (
            self.latency.iter().map(|c| c.load(Relaxed)).collect(),
            self.latency_sum_us.load(Relaxed),
        )
    }

    /// Open connections (accepted − closed).
    pub fn active(&self) -> u64 {
        self.accepted
            .load(Relaxed)
            .saturating_sub(self.closed.load(Relaxed))
    }
}

/// Estimate quantile `q` (0..1) from non-cumulative bucket counts: the bucket bound where the
/// cumulative count reaches `q` of the total (`None` without samples).
pub fn quantile_us(buckets: &[u64], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (i, c) in buckets.iter().enumerate() {
        acc += c;
        if acc >= want {
            return Some(LATENCY_BOUNDS_US.get(i).copied().unwrap_or(u64::MAX));
        }
    }
    Some(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let m = WorkerMetrics::default();
        for us in [5, 20, 20, 90, 3_000, 100_000_000] {
            m.observe_latency_us(us);
        }
        let (b, sum) = m.latency();
        assert_eq!(b.iter().sum::<u64>(), 6);
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 2);
        assert_eq!(*b.last().unwrap(), 1);
        assert_eq!(sum, 5 + 20 + 20 + 90 + 3_000 + 100_000_000);
        assert_eq!(quantile_us(&b, 0.5), Some(25));
        assert_eq!(quantile_us(&b, 0.99), Some(u64::MAX));
        assert_eq!(quantile_us(&[0; 21], 0.5), None);
    }
}
