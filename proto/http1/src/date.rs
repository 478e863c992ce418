//! The `Date` field (RFC 9110 §6.6.1, IMF-fixdate), formatted at most once per second.

use ferry_proto::Instant;

/// Caches the formatted `Date` value for the current second.
#[derive(Clone, Debug)]
pub struct DateCache {
    origin_unix_nanos: u64,
    sec: u64,
    buf: [u8; 29],
}

impl DateCache {
    /// A cache for a clock whose `Instant::ZERO` is `origin_unix_nanos` after the Unix epoch.
    pub fn new(origin_unix_nanos: u64) -> Self {
        let mut d = DateCache {
            origin_unix_nanos,
            sec: u64::MAX,
            buf: [b' '; 29],
        };
        d.update(Instant::ZERO);
        d
    }

    /// The value for `now`, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub fn get(&mut self, now: Instant) -> &[u8; 29] {
        self.update(now);
        &self.buf
    }

    fn update(&mut self, now: Instant) {
        let secs = (self.origin_unix_nanos.saturating_add(now.as_nanos())) / 1_000_000_000;
        if secs != self.sec {
            self.sec = secs;
            self.buf = format_imf_fixdate(secs);
        }
    }
}

/// A Unix time broken into UTC calendar fields (proleptic Gregorian, years clamped to
/// 0..=9999).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    /// Year.
    pub year: u16,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of the month, 1..=31.
    pub day: u8,
    /// Hour, 0..=23.
    pub hour: u8,
    /// Minute, 0..=59.
    pub minute: u8,
    /// Second, 0..=59.
    pub second: u8,
    /// Day of the week, 0 = Sunday.
    pub weekday: u8,
}

impl Civil {
    /// The calendar fields of `secs` seconds after the Unix epoch.
    pub fn from_unix(secs: u64) -> Civil {
        let days = secs / 86400;
        let rem = secs % 86400;
        // Howard Hinnant's civil_from_days.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let mth = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(mth <= 2);
        Civil {
            year: y.clamp(0, 9999) as u16,
            month: mth as u8,
            day: d as u8,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday.
            weekday: ((days + 4) % 7) as u8,
        }
    }

    /// The month's English three-letter abbreviation (`Jan`…`Dec`).
    pub fn month_abbr(&self) -> &'static [u8; 3] {
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        MONTHS[usize::from(self.month.clamp(1, 12) - 1)]
    }
}

/// Writes `v` (0..=99) as two digits.
pub fn two_digits(b: &mut [u8], v: u8) {
    b[0] = b'0' + v / 10;
    b[1] = b'0' + v % 10;
}

/// Format Unix seconds as IMF-fixdate.
pub fn format_imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
    let c = Civil::from_unix(secs);
    let mut b = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    b[..3].copy_from_slice(DAYS[usize::from(c.weekday)]);
    two_digits(&mut b[5..7], c.day);
    b[8..11].copy_from_slice(c.month_abbr());
    two_digits(&mut b[12..14], (c.year / 100) as u8);
    two_digits(&mut b[14..16], (c.year % 100) as u8);
    two_digits(&mut b[17..19], c.hour);
    two_digits(&mut b[20..22], c.minute);
    two_digits(&mut b[23..25], c.second);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_example() {
        assert_eq!(
            &format_imf_fixdate(784111777),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(&format_imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format_imf_fixdate(951782400),
            b"Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            &format_imf_fixdate(1798761599),
            b"Thu, 31 Dec 2026 23:59:59 GMT"
        );
    }

    #[test]
    fn cached_per_second() {
        let mut c = DateCache::new(784_111_777_000_000_000);
        assert_eq!(
            c.get(Instant::from_nanos(999_999_999)),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            c.get(Instant::from_nanos(1_000_000_000)),
            b"Sun, 06 Nov 1994 08:49:38 GMT"
        );
    }
}
