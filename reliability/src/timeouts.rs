//! Connect, request, idle and keep-alive timeouts as timer state a driver arms on its wheel.
//!
//! Nothing here reads a clock: the driver calls the `handle_*`/`on_*` methods with the
//! current [`Instant`], arms one timer at [`RequestTimer::poll_timeout`] and calls
//! [`RequestTimer::handle_timeout`] when it fires. An early or repeated `handle_timeout` is a
//! no-op. Once a timeout fired it is sticky: [`RequestTimer::expired`] keeps returning it.
//!
//! Polling order for a request: `start` → (`on_connected`) → `on_activity`* → `finish`, with
//! `poll_timeout`/`handle_timeout` after each call.

use core::time::Duration;

use ferry_proto::Instant;

use crate::config::{nonzero, ConfigError};
use crate::deadline::Deadline;

/// The four timeout levels of the design, each optional (`None` = no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeoutConfig {
    /// How long establishing a connection (TCP + TLS) may take.
    pub connect: Option<Duration>,
    /// Total time for one request, from `start` to `finish` (including connecting).
    pub request: Option<Duration>,
    /// Longest silence (no bytes either way) while a request is in flight.
    pub idle: Option<Duration>,
    /// How long an idle, reusable connection is kept open between requests.
    pub keep_alive: Option<Duration>,
}

impl TimeoutConfig {
    /// Checks that no timeout is `Some(0)` (it would fire at once; `None` means no limit).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, d) in [
            ("connect", self.connect),
            ("request", self.request),
            ("idle", self.idle),
            ("keep_alive", self.keep_alive),
        ] {
            nonzero(field, d.is_some_and(|d| d.is_zero()))?;
        }
        Ok(())
    }
}

impl Default for TimeoutConfig {
    /// connect 5 s, request 30 s, idle 15 s, keep-alive 60 s.
    fn default() -> Self {
        TimeoutConfig {
            connect: Some(Duration::from_secs(5)),
            request: Some(Duration::from_secs(30)),
            idle: Some(Duration::from_secs(15)),
            keep_alive: Some(Duration::from_secs(60)),
        }
    }
}

/// Which limit fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// The connection was not established in time.
    Connect,
    /// The request as a whole took too long.
    Request,
    /// No progress for the idle period.
    Idle,
    /// An idle pooled connection outlived its keep-alive period.
    KeepAlive,
    /// The propagated [`Deadline`] passed.
    Deadline,
}

/// Timer state for one request.
#[derive(Clone, Debug)]
pub struct RequestTimer {
    config: TimeoutConfig,
    deadline: Deadline,
    connect_by: Option<Instant>,
    request_by: Option<Instant>,
    idle_by: Option<Instant>,
    expired: Option<TimeoutKind>,
    finished: bool,
}

impl RequestTimer {
    /// Starts timing a request at `now`. Pass `connecting = true` if it must first open a
    /// connection (arms the connect timer); `deadline` caps everything ([`Deadline::NONE`]
    /// for none).
    pub fn start(
        config: TimeoutConfig,
        now: Instant,
        deadline: Deadline,
        connecting: bool,
    ) -> Self {
        let mut t = RequestTimer {
            config,
            deadline,
            connect_by: None,
            request_by: config.request.map(|d| now + d),
            idle_by: None,
            expired: None,
            finished: false,
        };
        if connecting {
            t.connect_by = config.connect.map(|d| now + d);
        } else {
            t.idle_by = config.idle.map(|d| now + d);
        }
        t
    }

    /// The connection is up: disarms the connect timer, arms the idle timer.
    pub fn on_connected(&mut self, now: Instant) {
        self.connect_by = None;
        self.on_activity(now);
    }

    /// Bytes moved: pushes the idle timer forward.
    pub fn on_activity(&mut self, now: Instant) {
        if self.expired.is_none() && !self.finished && self.connect_by.is_none() {
            self.idle_by = self.config.idle.map(|d| now + d);
        }
    }

    /// The response is complete: disarms everything.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The next instant a timer must fire, or `None` when nothing is armed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished || self.expired.is_some() {
            return None;
        }
        let dl = (!self.deadline.is_none()).then(|| self.deadline.instant());
        [self.connect_by, self.request_by, self.idle_by, dl]
            .into_iter()
            .flatten()
            .min()
    }

    /// The timer fired at `now`: returns the timeout that expired, if any (an early call
    /// returns `None` and changes nothing). When several expire at once the most specific
    /// wins: connect, then deadline, then request, then idle.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<TimeoutKind> {
        if self.finished || self.expired.is_some() {
            return None;
        }
        let due = |t: Option<Instant>| t.is_some_and(|t| now >= t);
        let kind = if due(self.connect_by) {
            TimeoutKind::Connect
        } else if self.deadline.is_expired(now) {
            TimeoutKind::Deadline
        } else if due(self.request_by) {
            TimeoutKind::Request
        } else if due(self.idle_by) {
            TimeoutKind::Idle
        } else {
            return None;
        };
        self.expired = Some(kind);
        Some(kind)
    }

    /// The timeout that fired, if any (sticky).
    pub fn expired(&self) -> Option<TimeoutKind> {
        self.expired
    }

    /// Whether `finish` was called.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

/// Keep-alive timer for a pooled connection between requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepAliveTimer {
    keep_alive: Option<Duration>,
    close_at: Option<Instant>,
}

impl KeepAliveTimer {
    /// A timer with the config's keep-alive period, initially disarmed (connection busy).
    pub fn new(config: &TimeoutConfig) -> Self {
        KeepAliveTimer {
            keep_alive: config.keep_alive,
            close_at: None,
        }
    }

    /// The connection went idle at `now`: arm.
    pub fn on_idle(&mut self, now: Instant) {
        self.close_at = self.keep_alive.map(|d| now + d);
    }

    /// The connection was checked out again: disarm.
    pub fn on_busy(&mut self) {
        self.close_at = None;
    }

    /// When the idle connection must be closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.close_at
    }

    /// Returns `Some(TimeoutKind::KeepAlive)` once the idle connection should be closed.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<TimeoutKind> {
        match self.close_at {
            Some(t) if now >= t => {
                self.close_at = None;
                Some(TimeoutKind::KeepAlive)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    fn cfg() -> TimeoutConfig {
        TimeoutConfig {
            connect: Some(Duration::from_millis(100)),
            request: Some(Duration::from_millis(1000)),
            idle: Some(Duration::from_millis(300)),
            keep_alive: Some(Duration::from_millis(5000)),
        }
    }

    #[test]
    fn connect_timeout_fires_first_and_is_sticky() {
        let mut t = RequestTimer::start(cfg(), ms(0), Deadline::NONE, true);
        assert_eq!(t.poll_timeout(), Some(ms(100)));
        assert_eq!(t.handle_timeout(ms(50)), None, "early call is a no-op");
        assert_eq!(t.handle_timeout(ms(100)), Some(TimeoutKind::Connect));
        assert_eq!(t.handle_timeout(ms(2000)), None);
        assert_eq!(t.expired(), Some(TimeoutKind::Connect));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn idle_resets_on_activity_then_request_fires() {
        let mut t = RequestTimer::start(cfg(), ms(0), Deadline::NONE, true);
        t.on_connected(ms(50));
        assert_eq!(t.poll_timeout(), Some(ms(350)));
        for step in 1..=4 {
            t.on_activity(ms(50 + step * 200));
            assert_eq!(t.handle_timeout(ms(50 + step * 200)), None);
        }
        assert_eq!(t.poll_timeout(), Some(ms(1000)));
        assert_eq!(t.handle_timeout(ms(1000)), Some(TimeoutKind::Request));
    }

    #[test]
    fn idle_fires_without_activity() {
        let mut t = RequestTimer::start(cfg(), ms(0), Deadline::NONE, false);
        assert_eq!(t.poll_timeout(), Some(ms(300)));
        assert_eq!(t.handle_timeout(ms(300)), Some(TimeoutKind::Idle));
    }

    #[test]
    fn deadline_caps_and_finish_disarms() {
        let dl = Deadline::after(ms(0), Duration::from_millis(80));
        let mut t = RequestTimer::start(cfg(), ms(0), dl, true);
        assert_eq!(t.poll_timeout(), Some(ms(80)));
        assert_eq!(t.handle_timeout(ms(80)), Some(TimeoutKind::Deadline));

        let mut t = RequestTimer::start(cfg(), ms(0), dl, false);
        t.finish();
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.handle_timeout(ms(10_000)), None);
        assert!(t.is_finished());
    }

    #[test]
    fn keep_alive_timer() {
        let mut k = KeepAliveTimer::new(&cfg());
        assert_eq!(k.poll_timeout(), None);
        k.on_idle(ms(10));
        assert_eq!(k.poll_timeout(), Some(ms(5010)));
        assert_eq!(k.handle_timeout(ms(5000)), None);
        k.on_busy();
        assert_eq!(k.handle_timeout(ms(6000)), None);
        k.on_idle(ms(6000));
        assert_eq!(k.handle_timeout(ms(11_000)), Some(TimeoutKind::KeepAlive));
        assert_eq!(k.poll_timeout(), None);
    }
}
