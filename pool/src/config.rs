//! Pool limits and timers.

use core::time::Duration;

/// Limits and timers of a [`Pool`](crate::Pool). Per-destination values apply to each key
/// separately; `max_total` bounds the whole pool.
///
/// Fixed-size and dynamic pools are two settings of the same machine: [`Config::fixed`] keeps
/// `min == max` connections open per destination (the pool asks for them up front and replaces
/// any it retires), [`Config::dynamic`] grows from `min` to `max` on demand and shrinks back to
/// `min` as connections sit idle longer than `idle_timeout`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Connections per destination the pool keeps open (it emits
    /// [`Event::Connect`](crate::Event::Connect) to get back up to this).
    pub min_per_key: usize,
    /// Most connections (open + connecting) per destination.
    pub max_per_key: usize,
    /// Most connections (open + connecting) over all destinations.
    pub max_total: usize,
    /// Most queued checkouts per destination; beyond it `checkout` fails with
    /// [`CheckoutError::QueueFull`](crate::CheckoutError::QueueFull). 0 disables waiting.
    pub max_waiters_per_key: usize,
    /// How long a queued checkout waits before [`Event::TimedOut`](crate::Event::TimedOut).
    pub wait_timeout: Duration,
    /// An idle connection unused this long is closed while more than `min_per_key` are open.
    pub idle_timeout: Option<Duration>,
    /// A connection older than this is closed when idle or at its next checkin.
    pub max_lifetime: Option<Duration>,
    /// A connection checked out this many times is closed at its next checkin.
    pub max_uses: Option<u64>,
    /// An idle connection not used or checked for this long is lent out in
    /// [`Event::HealthCheck`](crate::Event::HealthCheck).
    pub health_check_interval: Option<Duration>,
    /// After a failed connect, the pool waits this long before asking again to refill
    /// `min_per_key` (connects on behalf of waiters are not delayed: each waiter costs at most
    /// one failed connect, see [`Event::Failed`](crate::Event::Failed)).
    pub reconnect_backoff: Duration,
}

impl Config {
    /// Exactly `size` connections per destination, kept open and replaced when retired.
    pub fn fixed(size: usize) -> Self {
        Config::dynamic(size, size)
    }

    /// Between `min` and `max` connections per destination (`min` is capped at `max`).
    pub fn dynamic(min: usize, max: usize) -> Self {
        Config {
            min_per_key: min.min(max),
            max_per_key: max,
            max_total: usize::MAX,
            max_waiters_per_key: 1024,
            wait_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(90)),
            max_lifetime: None,
            max_uses: None,
            health_check_interval: None,
            reconnect_backoff: Duration::from_secs(1),
        }
    }
}

impl Default for Config {
    /// `dynamic(0, 32)`: grows on demand, shrinks to nothing after 90 s idle.
    fn default() -> Self {
        Config::dynamic(0, 32)
    }
}
