//! Pool metrics: gauges, counters and a wait-time histogram.

use core::time::Duration;

/// Number of buckets in a [`WaitHistogram`]: bucket 0 holds zero, bucket `i` holds
/// `[2^(i-1), 2^i)` nanoseconds, up to `2^64`.
pub const BUCKETS: usize = 65;

/// A log2-bucketed histogram of wait times (nanosecond resolution, factor-of-two precision).
///
/// Why not `hdrhistogram`: a pool lives on every I/O worker and in every shard, so its
/// histogram must be tiny, allocation-free, `no_std`, `Copy`-cheap to snapshot and mergeable by
/// addition; 65 counters (520 bytes) do that. Waits for a connection matter by order of
/// magnitude (0, microseconds, milliseconds, a timeout), which power-of-two buckets resolve. A
/// caller who wants exact percentiles records [`Event`](crate::Event) timings into its own
/// `hdrhistogram`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitHistogram {
    buckets: [u64; BUCKETS],
    count: u64,
    sum_nanos: u128,
    max_nanos: u64,
}

impl Default for WaitHistogram {
    fn default() -> Self {
        WaitHistogram {
            buckets: [0; BUCKETS],
            count: 0,
            sum_nanos: 0,
            max_nanos: 0,
        }
    }
}

fn bucket_of(nanos: u64) -> usize {
    (u64::BITS - nanos.leading_zeros()) as usize
}

impl WaitHistogram {
    /// Records one wait.
    pub fn record(&mut self, wait: Duration) {
        let nanos = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(nanos)] += 1;
        self.count += 1;
        self.sum_nanos += u128::from(nanos);
        self.max_nanos = self.max_nanos.max(nanos);
    }

    /// Records `n` zero waits at once (the pool counts idle hits and adds them here).
    pub(crate) fn record_zeros(&mut self, n: u64) {
        self.buckets[0] += n;
        self.count += n;
    }

    /// Number of recorded waits.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The recorded waits added up.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(u64::try_from(self.sum_nanos).unwrap_or(u64::MAX))
    }

    /// Longest recorded wait.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_nanos)
    }

    /// Mean wait, zero when empty.
    pub fn mean(&self) -> Duration {
        match self.count {
            0 => Duration::ZERO,
            n => Duration::from_nanos(
                u64::try_from(self.sum_nanos / u128::from(n)).unwrap_or(u64::MAX),
            ),
        }
    }

    /// Upper bound of the bucket holding quantile `q` (`0.0..=1.0`; clamped), capped at
    /// [`max`](Self::max): the true value is at most this and more than half of it.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // Rank of the wanted sample, 1-based; `as` saturates.
        let rank = ((q * self.count as f64) as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = if i == 0 {
                    0
                } else {
                    1u64.checked_shl(i as u32).map_or(u64::MAX, |v| v - 1)
                };
                return Duration::from_nanos(upper.min(self.max_nanos));
            }
        }
        self.max()
    }

    /// `(upper bound in nanoseconds, count)` for each non-empty bucket, in increasing order:
    /// what an exporter turns into Prometheus `le` buckets.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| {
                let upper = if i == 0 {
                    0
                } else {
                    1u64.checked_shl(i as u32).map_or(u64::MAX, |v| v - 1)
                };
                (upper, n)
            })
    }

    /// Adds `other`'s samples to `self` (for shards and per-worker pools).
    pub fn merge(&mut self, other: &WaitHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum_nanos += other.sum_nanos;
        self.max_nanos = self.max_nanos.max(other.max_nanos);
    }
}

/// A snapshot of a pool's state and history.
///
/// Invariant (checked by the tests): `created == closed + active + idle + checking`, where
/// `created` counts successful connects and `closed` counts [`Event::Close`](crate::Event::Close)
/// events emitted for them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Connections leased to the caller right now.
    pub active: usize,
    /// Idle connections in the pool right now.
    pub idle: usize,
    /// Idle connections lent out for a health check right now.
    pub checking: usize,
    /// Connects asked of the caller and not yet reported.
    pub connecting: usize,
    /// Checkouts queued right now.
    pub waiting: usize,
    /// Connections ever reported `connected`.
    pub created: u64,
    /// Connections ever handed back in [`Event::Close`](crate::Event::Close).
    pub closed: u64,
    /// Connects ever reported failed.
    pub failed: u64,
    /// Waiters ever timed out.
    pub timed_out: u64,
    /// Waiters ever withdrawn with [`Pool::cancel`](crate::Pool::cancel).
    pub cancelled: u64,
    /// Time from `checkout` to holding a lease (0 for an idle hit).
    pub wait_time: WaitHistogram,
}

impl Metrics {
    /// Adds `other` into `self` (gauges and counters summed, histograms merged).
    pub fn merge(&mut self, other: &Metrics) {
        self.active += other.active;
        self.idle += other.idle;
        self.checking += other.checking;
        self.connecting += other.connecting;
        self.waiting += other.waiting;
        self.created += other.created;
        self.closed += other.closed;
        self.failed += other.failed;
        self.timed_out += other.timed_out;
        self.cancelled += other.cancelled;
        self.wait_time.merge(&other.wait_time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let mut h = WaitHistogram::default();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
        h.record(Duration::ZERO);
        h.record(Duration::from_nanos(1));
        h.record(Duration::from_nanos(1000));
        h.record(Duration::from_millis(5));
        assert_eq!(h.count(), 4);
        assert_eq!(h.quantile(0.25), Duration::ZERO);
        assert_eq!(h.quantile(0.5), Duration::from_nanos(1));
        // 1000 ns lies in [512, 1024).
        assert_eq!(h.quantile(0.75), Duration::from_nanos(1023));
        assert_eq!(h.quantile(1.0), Duration::from_millis(5));
        assert_eq!(h.max(), Duration::from_millis(5));
        let b: Vec<_> = h.buckets().collect();
        assert_eq!(b.len(), 4);
        assert_eq!(b[0], (0, 1));
        h.record(Duration::MAX);
        assert_eq!(h.quantile(1.0), Duration::from_nanos(u64::MAX));
        let mut m = WaitHistogram::default();
        m.merge(&h);
        assert_eq!(m, h);
    }
}
