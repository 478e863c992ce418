//! Deadlines that propagate across hops and split a remaining budget.
//!
//! A [`Deadline`] is an absolute [`Instant`] on the caller's clock. It travels between
//! processes as a *relative* timeout in the gRPC `grpc-timeout` format
//! (`TimeoutValue = 1*8DIGIT`, `TimeoutUnit = "H" / "M" / "S" / "m" / "u" / "n"`), because
//! clocks of different hosts do not agree. Encoding rounds *down*, so a deadline never grows
//! when it crosses a hop; splitting and child deadlines are always `<=` their parent.

use core::fmt;
use core::time::Duration;

use ferry_proto::Instant;

use crate::rng::nanos;

/// An absolute point in time by which work must be finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

/// Why a `grpc-timeout`-style header value was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadlineError {
    /// Empty value, or no digits before the unit.
    Empty,
    /// More than 8 digits (the grammar's limit).
    TooManyDigits,
    /// A byte that is not an ASCII digit where a digit was expected.
    InvalidDigit,
    /// The unit is not one of `H M S m u n`.
    InvalidUnit,
}

impl fmt::Display for DeadlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeadlineError::Empty => "empty timeout value",
            DeadlineError::TooManyDigits => "timeout value has more than 8 digits",
            DeadlineError::InvalidDigit => "timeout value has a non-digit",
            DeadlineError::InvalidUnit => "timeout unit is not one of H M S m u n",
        })
    }
}

impl std::error::Error for DeadlineError {}

impl Deadline {
    /// No deadline at all (never expires, encodes to no header).
    pub const NONE: Deadline = Deadline {
        at: Instant::FAR_FUTURE,
    };

    /// A deadline at the absolute instant `at`.
    pub const fn at(at: Instant) -> Self {
        Deadline { at }
    }

    /// A deadline `timeout` after `now`.
    pub fn after(now: Instant, timeout: Duration) -> Self {
        Deadline { at: now + timeout }
    }

    /// The absolute instant.
    pub const fn instant(self) -> Instant {
        self.at
    }

    /// Whether this is [`Deadline::NONE`].
    pub fn is_none(self) -> bool {
        self.at == Instant::FAR_FUTURE
    }

    /// Time left at `now` (zero once expired).
    pub fn remaining(self, now: Instant) -> Duration {
        self.at - now
    }

    /// Whether the deadline has passed at `now` (a deadline equal to `now` has expired).
    pub fn is_expired(self, now: Instant) -> bool {
        now >= self.at
    }

    /// The earlier of two deadlines (a child never outlives its parent).
    pub fn min(self, other: Deadline) -> Deadline {
        if other.at < self.at {
            other
        } else {
            self
        }
    }

    /// A child deadline for a sub-call that may use `timeout`, capped by this deadline.
    pub fn child(self, now: Instant, timeout: Duration) -> Deadline {
        self.min(Deadline::after(now, timeout))
    }

    /// A child deadline that gets `fraction` (clamped to `0.0..=1.0`) of the remaining budget,
    /// e.g. `split(now, 0.5)` for the first of two sequential attempts. Never later than `self`.
    /// Splitting [`Deadline::NONE`] returns `NONE`.
    pub fn split(self, now: Instant, fraction: f64) -> Deadline {
        if self.is_none() {
            return self;
        }
        let f = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let left = nanos(self.remaining(now));
        let share = (left as f64 * f) as u64;
        self.min(Deadline::at(now + Duration::from_nanos(share.min(left))))
    }

    /// A child deadline that keeps `reserve` back for the caller (e.g. to send a fallback
    /// reply): `self - reserve`, but never earlier than `now`.
    pub fn reserve(self, now: Instant, reserve: Duration) -> Deadline {
        if self.is_none() {
            return self;
        }
        let left = self.remaining(now).saturating_sub(reserve);
        self.min(Deadline::after(now, left))
    }

    /// The remaining time as a `grpc-timeout` header value, or `None` for [`Deadline::NONE`].
    /// An expired deadline encodes as `0n`.
    pub fn to_header(self, now: Instant) -> Option<TimeoutHeader> {
        if self.is_none() {
            None
        } else {
            Some(TimeoutHeader::encode(self.remaining(now)))
        }
    }

    /// The deadline a receiver derives at `now` from a `grpc-timeout` header value.
    pub fn from_header(now: Instant, value: &[u8]) -> Result<Deadline, DeadlineError> {
        Ok(Deadline::after(now, TimeoutHeader::decode(value)?))
    }
}

/// A `grpc-timeout` value (at most 8 digits and a unit), stored inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TimeoutHeader {
    buf: [u8; 9],
    len: u8,
}

const UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60_000_000_000),
    (b'H', 3_600_000_000_000),
];
const MAX_VALUE: u64 = 99_999_999;

impl TimeoutHeader {
    /// Encodes `d` with the finest unit whose value fits in 8 digits, rounding down.
    /// Durations beyond `99999999H` are clamped to it.
    pub fn encode(d: Duration) -> TimeoutHeader {
        let n = nanos(d);
        let (unit, value) = UNITS
            .iter()
            .map(|&(u, scale)| (u, n / scale))
            .find(|&(_, v)| v <= MAX_VALUE)
            .unwrap_or((b'H', MAX_VALUE));
        let mut buf = [0u8; 9];
        let mut digits = [0u8; 8];
        let mut v = value;
        let mut nd = 0;
        loop {
            digits[nd] = b'0' + (v % 10) as u8;
            nd += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for i in 0..nd {
            buf[i] = digits[nd - 1 - i];
        }
        buf[nd] = unit;
        TimeoutHeader {
            buf,
            len: (nd + 1) as u8,
        }
    }

    /// Parses a header value into a duration.
    pub fn decode(value: &[u8]) -> Result<Duration, DeadlineError> {
        let (&unit, digits) = value.split_last().ok_or(DeadlineError::Empty)?;
        if digits.is_empty() {
            return Err(DeadlineError::Empty);
        }
        if digits.len() > 8 {
            return Err(DeadlineError::TooManyDigits);
        }
        let mut v: u64 = 0;
        for &b in digits {
            if !b.is_ascii_digit() {
                return Err(DeadlineError::InvalidDigit);
            }
            v = v * 10 + u64::from(b - b'0');
        }
        let scale = UNITS
            .iter()
            .find(|&&(u, _)| u == unit)
            .map(|&(_, s)| s)
            .ok_or(DeadlineError::InvalidUnit)?;
        let total = u128::from(v) * u128::from(scale);
        let secs = u64::try_from(total / 1_000_000_000).unwrap_or(u64::MAX);
        Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
    }

    /// The header value bytes, e.g. `b"1500m"`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The header value as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and unit letters are ever written.
        core::str::from_utf8(self.as_bytes()).unwrap_or("0n")
    }
}

impl fmt::Debug for TimeoutHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimeoutHeader({})", self.as_str())
    }
}

impl fmt::Display for TimeoutHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn remaining_and_expiry() {
        let d = Deadline::after(t(0), Duration::from_millis(100));
        assert_eq!(d.remaining(t(40)), Duration::from_millis(60));
        assert!(!d.is_expired(t(99)));
        assert!(d.is_expired(t(100)));
        assert_eq!(d.remaining(t(500)), Duration::ZERO);
        assert!(!Deadline::NONE.is_expired(t(u64::MAX / 2_000_000)));
    }

    #[test]
    fn split_child_and_reserve() {
        let d = Deadline::after(t(0), Duration::from_millis(100));
        assert_eq!(d.split(t(20), 0.5).instant(), t(60));
        assert_eq!(d.split(t(20), 2.0), d);
        assert_eq!(d.split(t(20), -1.0).instant(), t(20));
        assert_eq!(d.split(t(20), f64::NAN).instant(), t(20));
        assert_eq!(d.child(t(0), Duration::from_millis(30)).instant(), t(30));
        assert_eq!(d.child(t(0), Duration::from_secs(30)), d);
        assert_eq!(d.reserve(t(0), Duration::from_millis(10)).instant(), t(90));
        assert_eq!(d.reserve(t(0), Duration::from_secs(1)).instant(), t(0));
        assert_eq!(Deadline::NONE.split(t(5), 0.5), Deadline::NONE);
        assert!(Deadline::NONE.to_header(t(0)).is_none());
    }

    #[test]
    fn header_encoding() {
        let e = |d| TimeoutHeader::encode(d).as_str().to_owned();
        assert_eq!(e(Duration::from_millis(1500)), "1500000u");
        assert_eq!(e(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(e(Duration::from_secs(100)), "100000m");
        assert_eq!(e(Duration::ZERO), "0n");
        assert_eq!(e(Duration::MAX), "5124095H");
        let hdr = Deadline::after(t(0), Duration::from_secs(2))
            .to_header(t(500))
            .unwrap();
        assert_eq!(hdr.as_bytes(), b"1500000u");
        assert_eq!(
            Deadline::from_header(t(10), b"1500m").unwrap().instant(),
            t(1510)
        );
    }

    #[test]
    fn header_decoding_errors() {
        assert_eq!(TimeoutHeader::decode(b""), Err(DeadlineError::Empty));
        assert_eq!(TimeoutHeader::decode(b"S"), Err(DeadlineError::Empty));
        assert_eq!(
            TimeoutHeader::decode(b"123456789S"),
            Err(DeadlineError::TooManyDigits)
        );
        assert_eq!(
            TimeoutHeader::decode(b"1x0S"),
            Err(DeadlineError::InvalidDigit)
        );
        assert_eq!(
            TimeoutHeader::decode(b"10s"),
            Err(DeadlineError::InvalidUnit)
        );
        assert_eq!(TimeoutHeader::decode(b"2H"), Ok(Duration::from_secs(7200)));
        assert_eq!(
            TimeoutHeader::decode(b"99999999H"),
            Ok(Duration::from_secs(99_999_999 * 3600))
        );
    }

    proptest! {
        #[test]
        fn split_never_grows(start in 0u64..1 << 40, budget in 0u64..1 << 40,
                             elapsed in 0u64..1 << 41, fraction in -1.0f64..2.0) {
            let now0 = Instant::from_nanos(start);
            let d = Deadline::after(now0, Duration::from_nanos(budget));
            let now = Instant::from_nanos(start + elapsed);
            let c = d.split(now, fraction);
            prop_assert!(c <= d);
            prop_assert!(c.remaining(now) <= d.remaining(now));
            prop_assert!(d.child(now, Duration::from_nanos(budget)) <= d);
            prop_assert!(d.reserve(now, Duration::from_nanos(elapsed)) <= d);
        }

        #[test]
        fn header_round_trip_never_grows(n in any::<u64>()) {
            let d = Duration::from_nanos(n);
            let h = TimeoutHeader::encode(d);
            let back = TimeoutHeader::decode(h.as_bytes()).unwrap();
            prop_assert!(back <= d);
            // A coarser unit is only chosen when the value is >= 100_000 of it: loss < 1e-5.
            prop_assert!(d - back <= d / 100_000 + Duration::from_nanos(1));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = TimeoutHeader::decode(&bytes);
        }
    }
}
