//! Pool limits and timers.

use core::fmt;
use core::time::Duration;

/// Why [`Config::validate`] rejected a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A limit that must be at least 1 is 0 (`max_per_key`, `max_total`, `max_uses`): no
    /// connection could ever be handed out, or none reused.
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// A timer that must be positive is zero (`idle_timeout`, `max_lifetime`,
    /// `health_check_interval`): connections would expire as they open, or an idle
    /// connection would be due for a health check again at the instant it came back, so
    /// `poll_timeout` would never move forward.
    ZeroDuration {
        /// The field's name.
        field: &'static str,
    },
    /// `min_per_key` is above `max_per_key`.
    MinAboveMax,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Zero { field } => write!(f, "pool config: {field} must be at least 1"),
            ConfigError::ZeroDuration { field } => {
                write!(f, "pool config: {field} must be positive")
            }
            ConfigError::MinAboveMax => f.write_str("pool config: min_per_key > max_per_key"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConfigError {}

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
    /// A connect not reported within this long is given up by the pool itself: its room is
    /// freed, a waiter it served is failed as by [`Pool::connect_failed`](crate::Pool::connect_failed),
    /// and [`Event::ConnectTimedOut`](crate::Event::ConnectTimedOut) tells the caller to
    /// abandon it (a late report is then refused and its connection handed back in
    /// [`Event::Close`](crate::Event::Close)). `None`: the caller times connects out.
    pub connect_timeout: Option<Duration>,
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

    /// Checks the limits and timers; [`Pool::try_new`](crate::Pool::try_new) calls it.
    /// [`Pool::new`](crate::Pool::new) takes any configuration as it is (a zero limit then
    /// queues every checkout until it times out).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let zero = |field| Err(ConfigError::Zero { field });
        let zero_time = |field| Err(ConfigError::ZeroDuration { field });
        if self.max_per_key == 0 {
            return zero("max_per_key");
        }
        if self.max_total == 0 {
            return zero("max_total");
        }
        if self.max_uses == Some(0) {
            return zero("max_uses");
        }
        if self.min_per_key > self.max_per_key {
            return Err(ConfigError::MinAboveMax);
        }
        for (field, d) in [
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("health_check_interval", self.health_check_interval),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d == Some(Duration::ZERO) {
                return zero_time(field);
            }
        }
        Ok(())
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
            connect_timeout: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_bad_field() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert_eq!(Config::fixed(4).validate(), Ok(()));
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        let zero = |field| ConfigError::Zero { field };
        let zero_time = |field| ConfigError::ZeroDuration { field };
        assert_eq!(bad(|c| c.max_per_key = 0), zero("max_per_key"));
        assert_eq!(bad(|c| c.max_total = 0), zero("max_total"));
        assert_eq!(bad(|c| c.max_uses = Some(0)), zero("max_uses"));
        assert_eq!(bad(|c| c.min_per_key = 33), ConfigError::MinAboveMax);
        assert_eq!(
            bad(|c| c.idle_timeout = Some(Duration::ZERO)),
            zero_time("idle_timeout")
        );
        assert_eq!(
            bad(|c| c.max_lifetime = Some(Duration::ZERO)),
            zero_time("max_lifetime")
        );
        assert_eq!(
            bad(|c| c.health_check_interval = Some(Duration::ZERO)),
            zero_time("health_check_interval")
        );
        assert_eq!(
            zero("max_total").to_string(),
            "pool config: max_total must be at least 1"
        );
    }
}
