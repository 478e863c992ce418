//! Adaptive busy polling: after recent activity an I/O worker polls its event source without
//! sleeping for a short window before it blocks ([`ServerOptions::busy_poll`], off by default).
//!
//! Why: a worker that blocks in `epoll_wait`/`io_uring_enter` lets its CPU go idle, and waking
//! an idle CPU costs an inter-processor interrupt and, in a virtual machine, a halt exit: tens
//! of microseconds a request-response chain pays on every hop. On this project's 2-core VM a
//! Redis proxy between `redis-benchmark -P 16` and redis-server (both on the other core) ran at
//! half the direct throughput while both cores sat partly idle; with the proxy's core kept awake
//! it ran within a few percent of direct. Seastar, DPDK and the kernel's `SO_BUSY_POLL` make the
//! same trade: CPU time for latency. The window is adaptive: a worker with no events for longer
//! than the window blocks as before, so an idle server costs nothing.
//!
//! [`ServerOptions::busy_poll`]: crate::ServerOptions::busy_poll

use std::time::Duration;

use ferry_proto::Instant;

/// When a worker polls without sleeping.
#[derive(Clone, Copy, Debug)]
pub struct BusyPoll {
    window: Duration,
    last_active: Option<Instant>,
}

impl BusyPoll {
    /// Busy polling for up to `window` after the last activity; `None` or zero: never.
    pub fn new(window: Option<Duration>) -> BusyPoll {
        BusyPoll {
            window: window.unwrap_or(Duration::ZERO),
            last_active: None,
        }
    }

    /// Until when to poll without sleeping before a wait of `timeout` (`None`: no deadline),
    /// or `None` to block at once: busy polling is off, the loop would not wait anyway, or
    /// nothing happened within the window. Never past the loop's own deadline.
    pub fn spin_until(&self, now: Instant, timeout: Option<Duration>) -> Option<Instant> {
        if self.window.is_zero() || timeout == Some(Duration::ZERO) {
            return None;
        }
        let mut until = self.last_active?.saturating_add(self.window);
        if let Some(t) = timeout {
            until = until.min(now.saturating_add(t));
        }
        (until > now).then_some(until)
    }

    /// Note whether the last poll returned events.
    pub fn record(&mut self, now: Instant, active: bool) {
        if active {
            self.last_active = Some(now);
        }
    }

    /// The wait left of `timeout` at `now` after spinning from `start`.
    pub fn remaining(timeout: Option<Duration>, start: Instant, now: Instant) -> Option<Duration> {
        timeout.map(|t| t.saturating_sub(now.saturating_duration_since(start)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: u64) -> Instant {
        Instant::from_nanos(us * 1000)
    }
    const US: fn(u64) -> Duration = Duration::from_micros;

    #[test]
    fn off_never_spins() {
        let mut b = BusyPoll::new(None);
        b.record(at(0), true);
        assert_eq!(b.spin_until(at(1), None), None);
        let mut b = BusyPoll::new(Some(Duration::ZERO));
        b.record(at(0), true);
        assert_eq!(b.spin_until(at(1), None), None);
    }

    #[test]
    fn spins_only_within_the_window_after_activity() {
        let mut b = BusyPoll::new(Some(US(50)));
        assert_eq!(b.spin_until(at(0), None), None, "no activity yet");
        b.record(at(100), true);
        assert_eq!(b.spin_until(at(110), None), Some(at(150)));
        b.record(at(120), false);
        assert_eq!(b.spin_until(at(149), None), Some(at(150)));
        assert_eq!(b.spin_until(at(150), None), None, "window over: block");
        b.record(at(200), true);
        assert_eq!(b.spin_until(at(200), None), Some(at(250)));
    }

    #[test]
    fn never_past_the_loops_deadline_nor_when_it_would_not_wait() {
        let mut b = BusyPoll::new(Some(US(50)));
        b.record(at(100), true);
        assert_eq!(b.spin_until(at(100), Some(US(20))), Some(at(120)));
        assert_eq!(b.spin_until(at(100), Some(Duration::ZERO)), None);
        assert_eq!(
            BusyPoll::remaining(Some(US(20)), at(100), at(112)),
            Some(US(8))
        );
        assert_eq!(
            BusyPoll::remaining(Some(US(20)), at(100), at(130)),
            Some(Duration::ZERO)
        );
        assert_eq!(BusyPoll::remaining(None, at(100), at(130)), None);
    }
}
