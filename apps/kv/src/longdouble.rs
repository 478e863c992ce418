//! INCRBYFLOAT's arithmetic: Redis computes in C's `long double` (x87 80-bit extended on
//! x86-64: a 64-bit significand, exponents down to 2^-16445 and up to 2^16383) and prints with
//! `%.17Lf`, trailing zeros trimmed. Rust has no such type, so this emulates it exactly with
//! a small big-integer: `strtold`'s correctly rounded parsing (decimal and hex, `inf`), one
//! correctly rounded addition, and glibc's exact decimal expansion. Cold code: only
//! INCRBYFLOAT uses it.

use std::cmp::Ordering;

/// Bits of the significand (explicit integer bit).
const MANT_BITS: u64 = 64;
/// The exponent of the least significant significand bit of the smallest subnormal.
const MIN_EXP: i64 = -16445;
/// The largest exponent of the least significant significand bit (2^16383 · (2 - 2^-63)).
const MAX_EXP: i64 = 16383 - 63;
/// Redis refuses longer float strings (`MAX_LONG_DOUBLE_CHARS`).
const MAX_CHARS: usize = 5 * 1024;

/// An unsigned big integer, 32-bit limbs, little-endian, no high zero limbs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Big(Vec<u32>);

impl Big {
    fn from_u64(v: u64) -> Big {
        let mut b = Big(vec![v as u32, (v >> 32) as u32]);
        b.trim();
        b
    }

    fn trim(&mut self) {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
    }

    fn is_zero(&self) -> bool {
        self.0.is_empty()
    }

    fn bits(&self) -> u64 {
        match self.0.last() {
            None => 0,
            Some(&top) => (self.0.len() as u64 - 1) * 32 + u64::from(32 - top.leading_zeros()),
        }
    }

    fn bit(&self, i: u64) -> bool {
        let (w, b) = ((i / 32) as usize, i % 32);
        self.0.get(w).is_some_and(|x| (x >> b) & 1 == 1)
    }

    /// Whether any bit below `n` is set.
    fn any_below(&self, n: u64) -> bool {
        let (w, b) = ((n / 32) as usize, n % 32);
        self.0.iter().take(w).any(|&x| x != 0)
            || (b > 0 && self.0.get(w).is_some_and(|&x| x & ((1u32 << b) - 1) != 0))
    }

    fn mul_small(&mut self, m: u32) {
        let mut carry = 0u64;
        for x in self.0.iter_mut() {
            let v = u64::from(*x) * u64::from(m) + carry;
            *x = v as u32;
            carry = v >> 32;
        }
        if carry != 0 {
            self.0.push(carry as u32);
        }
        self.trim();
    }

    fn add_small(&mut self, a: u32) {
        let mut carry = u64::from(a);
        for x in self.0.iter_mut() {
            if carry == 0 {
                break;
            }
            let v = u64::from(*x) + carry;
            *x = v as u32;
            carry = v >> 32;
        }
        if carry != 0 {
            self.0.push(carry as u32);
        }
    }

    fn mul_pow10(&mut self, mut n: u64) {
        while n >= 9 {
            self.mul_small(1_000_000_000);
            n -= 9;
        }
        if n > 0 {
            self.mul_small(10u32.pow(n as u32));
        }
    }

    fn shl(&self, n: u64) -> Big {
        if self.is_zero() {
            return Big(Vec::new());
        }
        let (w, b) = ((n / 32) as usize, n % 32);
        let mut out = vec![0u32; w];
        out.reserve(self.0.len() + 1);
        if b == 0 {
            out.extend_from_slice(&self.0);
        } else {
            let mut carry = 0u32;
            for &x in &self.0 {
                out.push((x << b) | carry);
                carry = x >> (32 - b);
            }
            out.push(carry);
        }
        let mut r = Big(out);
        r.trim();
        r
    }

    fn shr(&self, n: u64) -> Big {
        let (w, b) = ((n / 32) as usize, n % 32);
        if w >= self.0.len() {
            return Big(Vec::new());
        }
        let src = &self.0[w..];
        let mut out = Vec::with_capacity(src.len());
        for i in 0..src.len() {
            let lo = src[i] >> b;
            let hi = if b == 0 {
                0
            } else {
                src.get(i + 1).map_or(0, |&x| x << (32 - b))
            };
            out.push(lo | hi);
        }
        let mut r = Big(out);
        r.trim();
        r
    }

    fn cmp(&self, o: &Big) -> Ordering {
        self.0
            .len()
            .cmp(&o.0.len())
            .then_with(|| self.0.iter().rev().cmp(o.0.iter().rev()))
    }

    fn add(&self, o: &Big) -> Big {
        let n = self.0.len().max(o.0.len());
        let mut out = Vec::with_capacity(n + 1);
        let mut carry = 0u64;
        for i in 0..n {
            let v = u64::from(*self.0.get(i).unwrap_or(&0))
                + u64::from(*o.0.get(i).unwrap_or(&0))
                + carry;
            out.push(v as u32);
            carry = v >> 32;
        }
        out.push(carry as u32);
        let mut r = Big(out);
        r.trim();
        r
    }

    /// `self - o` for `self >= o`.
    fn sub(&self, o: &Big) -> Big {
        let mut out = Vec::with_capacity(self.0.len());
        let mut borrow = 0i64;
        for i in 0..self.0.len() {
            let mut v = i64::from(self.0[i]) - i64::from(*o.0.get(i).unwrap_or(&0)) - borrow;
            borrow = 0;
            if v < 0 {
                v += 1 << 32;
                borrow = 1;
            }
            out.push(v as u32);
        }
        let mut r = Big(out);
        r.trim();
        r
    }

    /// `(self / d, self % d != 0)` for a quotient of a few dozen bits (shift and subtract).
    fn div_sticky(&self, d: &Big) -> (Big, bool) {
        if self.cmp(d) == Ordering::Less {
            return (Big(Vec::new()), !self.is_zero());
        }
        let qbits = self.bits() - d.bits() + 1;
        let mut rem = self.clone();
        let mut q = Big(Vec::new());
        for i in (0..qbits).rev() {
            let t = d.shl(i);
            if rem.cmp(&t) != Ordering::Less {
                rem = rem.sub(&t);
                q = q.add(&Big::from_u64(1).shl(i));
            }
        }
        (q, !rem.is_zero())
    }

    fn low_u64(&self) -> u64 {
        u64::from(*self.0.first().unwrap_or(&0)) | (u64::from(*self.0.get(1).unwrap_or(&0)) << 32)
    }

    fn to_decimal(&self) -> String {
        if self.is_zero() {
            return "0".into();
        }
        let mut limbs = self.0.clone();
        let mut chunks = Vec::new();
        while !limbs.is_empty() {
            let mut rem = 0u64;
            for x in limbs.iter_mut().rev() {
                let v = (rem << 32) | u64::from(*x);
                *x = (v / 1_000_000_000) as u32;
                rem = v % 1_000_000_000;
            }
            while limbs.last() == Some(&0) {
                limbs.pop();
            }
            chunks.push(rem as u32);
        }
        let mut s = String::new();
        for (i, c) in chunks.iter().rev().enumerate() {
            if i == 0 {
                s.push_str(&c.to_string());
            } else {
                s.push_str(&format!("{c:09}"));
            }
        }
        s
    }
}

/// A finite or infinite `long double` (NaN is never kept: Redis refuses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LongDouble {
    neg: bool,
    /// `None`: infinity.
    finite: Option<(u64, i64)>,
}

/// Round `n · 2^e` (plus a sticky remainder below it) to the format; `None` on overflow.
fn round(n: &Big, e: i64, sticky: bool) -> Option<(u64, i64)> {
    if n.is_zero() {
        return Some((0, 0));
    }
    let bl = n.bits() as i64;
    let shift = (bl - MANT_BITS as i64).max(MIN_EXP - e);
    let (mut m, mut exp) = if shift > 0 {
        let s = shift as u64;
        let m = n.shr(s).low_u64();
        let half = n.bit(s - 1);
        let lower = sticky || n.any_below(s - 1);
        let up = half && (lower || m & 1 == 1);
        let (m, carry) = if up { m.overflowing_add(1) } else { (m, false) };
        if carry {
            (1u64 << 63, e + shift + 1)
        } else {
            (m, e + shift)
        }
    } else {
        (n.shl((-shift) as u64).low_u64(), e + shift)
    };
    if m == 0 {
        return Some((0, 0));
    }
    // Keep the exponent canonical for the arithmetic (not needed, but tidy).
    while m & 1 == 0 && exp < MAX_EXP && m.leading_zeros() > 0 {
        m >>= 1;
        exp += 1;
    }
    let top = exp + 64 - i64::from(m.leading_zeros());
    // The largest finite value is below 2^16384.
    if top > 16384 {
        return None;
    }
    Some((m, exp))
}

fn parse_digits_value(neg: bool, n: &Big, e2: i64, sticky: bool) -> Option<LongDouble> {
    let finite = round(n, e2, sticky)?;
    Some(LongDouble {
        neg,
        finite: Some(finite),
    })
}

impl LongDouble {
    /// `0`.
    pub(crate) const ZERO: LongDouble = LongDouble {
        neg: false,
        finite: Some((0, 0)),
    };

    /// `0` or `-0`.
    pub(crate) fn is_zero(&self) -> bool {
        self.finite.is_some_and(|(m, _)| m == 0)
    }

    /// Redis's `string2ld`: `strtold` of the whole string; no leading space, no NaN, no
    /// overflow, no underflow to zero.
    pub(crate) fn parse(s: &[u8]) -> Option<LongDouble> {
        if s.is_empty() || s.len() >= MAX_CHARS {
            return None;
        }
        if s[0].is_ascii_whitespace() || s[0] == 0x0b {
            return None;
        }
        // strtold reads a C string: it ends at the first NUL.
        let s = match s.iter().position(|&c| c == 0) {
            Some(i) => &s[..i],
            None => s,
        };
        if s.is_empty() {
            return Some(LongDouble::ZERO);
        }
        let (neg, body) = match s[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let lower: Vec<u8> = body.to_ascii_lowercase();
        if lower == b"inf" || lower == b"infinity" {
            return Some(LongDouble { neg, finite: None });
        }
        if lower.starts_with(b"nan") {
            return None;
        }
        let (v, nonzero_digits) = if lower.starts_with(b"0x") {
            parse_hex(neg, &lower[2..])?
        } else {
            parse_dec(neg, &lower)?
        };
        // Underflow to zero (ERANGE with a zero result) is refused.
        if v.is_zero() && nonzero_digits {
            return None;
        }
        Some(v)
    }

    /// `self + o` rounded to the format; `None` for an infinite or NaN result.
    pub(crate) fn add(&self, o: &LongDouble) -> Option<LongDouble> {
        let ((ma, ea), (mb, eb)) = (self.finite?, o.finite?);
        if ma == 0 && mb == 0 {
            return Some(LongDouble {
                neg: self.neg && o.neg,
                finite: Some((0, 0)),
            });
        }
        if ma == 0 {
            return Some(*o);
        }
        if mb == 0 {
            return Some(*self);
        }
        let emin = ea.min(eb);
        let na = Big::from_u64(ma).shl((ea - emin) as u64);
        let nb = Big::from_u64(mb).shl((eb - emin) as u64);
        let (n, neg) = if self.neg == o.neg {
            (na.add(&nb), self.neg)
        } else {
            match na.cmp(&nb) {
                Ordering::Equal => return Some(LongDouble::ZERO),
                Ordering::Greater => (na.sub(&nb), self.neg),
                Ordering::Less => (nb.sub(&na), o.neg),
            }
        };
        let finite = round(&n, emin, false)?;
        Some(LongDouble {
            neg,
            finite: Some(finite),
        })
    }

    /// The nearest `f64` (ties to even; infinities for values past `f64::MAX`), or `None`
    /// when the value lies exactly halfway between two `f64`s (where `strtod` of the
    /// original text and this double rounding may differ). For property tests and fuzzing.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn to_f64(self) -> Option<f64> {
        let sign = if self.neg { -1.0 } else { 1.0 };
        let Some((m, e)) = self.finite else {
            return Some(sign * f64::INFINITY);
        };
        if m == 0 {
            return Some(sign * 0.0);
        }
        let bl = i64::from(64 - m.leading_zeros());
        // Exponent of the last significand bit kept: 53 bits, down to 2^-1074.
        let t = (e + bl - 53).max(-1074);
        let shift = t - e;
        let q = if shift <= 0 {
            m
        } else if shift >= 64 {
            let half = shift == 64 && m >> 63 == 1;
            let lower = if shift == 64 { m << 1 != 0 } else { true };
            if half && !lower {
                return None;
            }
            u64::from(half)
        } else {
            let q = m >> shift;
            let half = (m >> (shift - 1)) & 1 == 1;
            let lower = m & ((1u64 << (shift - 1)) - 1) != 0;
            if half && !lower {
                return None;
            }
            q + u64::from(half && (lower || q & 1 == 1))
        };
        let (q, t) = if shift <= 0 { (q, e) } else { (q, t) };
        if q == 0 {
            return Some(sign * 0.0);
        }
        let qbits = i64::from(64 - q.leading_zeros());
        if qbits + t > 1024 {
            return Some(sign * f64::INFINITY);
        }
        // q < 2^54 and the result is representable: exact.
        let pow2 = if t >= -1022 {
            f64::from_bits(((t + 1023) as u64) << 52)
        } else {
            f64::from_bits(1u64 << (t + 1074))
        };
        Some(sign * (q as f64) * pow2)
    }

    /// Whether [`to_human`](Self::to_human)'s text reads back as exactly this value: its
    /// exact decimal has at most 17 fractional digits (the last significand bit weighs at
    /// least 2^-17), or neighbours are over twice the print's 1e-17 resolution apart
    /// (|v| >= 2^7: a step of 2^-56 or more). For property tests and fuzzing.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn print_is_exact(self) -> bool {
        match self.finite {
            None | Some((0, _)) => true,
            Some((m, e)) => e >= -17 || e + 64 - i64::from(m.leading_zeros()) > 7,
        }
    }

    /// `%.17Lf` with trailing zeros (and a bare `.`) removed, `-0` as `0`: Redis's
    /// `ld2string(LD_STR_HUMAN)`.
    pub(crate) fn to_human(self) -> String {
        let Some((m, e)) = self.finite else {
            return if self.neg {
                "-inf".into()
            } else {
                "inf".into()
            };
        };
        let n = Big::from_u64(m);
        let (int, frac) = if e >= 0 {
            (n.shl(e as u64).to_decimal(), String::new())
        } else {
            let k = (-e) as u64;
            let mut scaled = n.clone();
            scaled.mul_pow10(17);
            let mut q = scaled.shr(k);
            // Round half to even on the exact remainder.
            let half = scaled.bit(k - 1);
            let lower = scaled.any_below(k - 1);
            if half && (lower || q.bit(0)) {
                q.add_small(1);
            }
            let mut d = q.to_decimal();
            if d.len() < 18 {
                d = format!("{}{d}", "0".repeat(18 - d.len()));
            }
            let split = d.len() - 17;
            let frac = d[split..].trim_end_matches('0').to_string();
            (d[..split].to_string(), frac)
        };
        let mut out = String::new();
        if self.neg {
            out.push('-');
        }
        out.push_str(&int);
        if !frac.is_empty() {
            out.push('.');
            out.push_str(&frac);
        }
        if out == "-0" {
            out = "0".into();
        }
        out
    }
}

/// Decimal: `digits[.digits][e[+-]digits]`, at least one digit, all consumed.
fn parse_dec(neg: bool, s: &[u8]) -> Option<(LongDouble, bool)> {
    let mut i = 0;
    let mut n = Big(Vec::new());
    let mut any = false;
    let mut nonzero = false;
    let mut exp10: i64 = 0;
    let mut chunk = 0u32;
    let mut chunk_len = 0;
    let push = |n: &mut Big, d: u8, chunk: &mut u32, len: &mut u32| {
        *chunk = *chunk * 10 + u32::from(d);
        *len += 1;
        if *len == 9 {
            n.mul_small(1_000_000_000);
            n.add_small(*chunk);
            *chunk = 0;
            *len = 0;
        }
    };
    while i < s.len() && s[i].is_ascii_digit() {
        nonzero |= s[i] != b'0';
        push(&mut n, s[i] - b'0', &mut chunk, &mut chunk_len);
        any = true;
        i += 1;
    }
    if i < s.len() && s[i] == b'.' {
        i += 1;
        while i < s.len() && s[i].is_ascii_digit() {
            nonzero |= s[i] != b'0';
            push(&mut n, s[i] - b'0', &mut chunk, &mut chunk_len);
            exp10 -= 1;
            any = true;
            i += 1;
        }
    }
    if chunk_len > 0 {
        n.mul_small(10u32.pow(chunk_len));
        n.add_small(chunk);
    }
    if !any {
        return None;
    }
    if i < s.len() && s[i] == b'e' {
        i += 1;
        let eneg = match s.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        let mut e: i64 = 0;
        while i < s.len() && s[i].is_ascii_digit() {
            e = (e * 10 + i64::from(s[i] - b'0')).min(1 << 40);
            i += 1;
        }
        if i == start {
            return None;
        }
        exp10 += if eneg { -e } else { e };
    }
    if i != s.len() {
        return None;
    }
    if n.is_zero() {
        return Some((
            LongDouble {
                neg,
                finite: Some((0, 0)),
            },
            false,
        ));
    }
    // Far out of range either way: no big numbers needed to know.
    let log2 = n.bits() as f64 + exp10 as f64 * std::f64::consts::LOG2_10;
    if log2 > 16400.0 {
        return None;
    }
    if log2 < -16500.0 {
        return Some((LongDouble::ZERO, nonzero));
    }
    let v = if exp10 >= 0 {
        let mut n = n;
        n.mul_pow10(exp10 as u64);
        parse_digits_value(neg, &n, 0, false)?
    } else {
        let mut d = Big::from_u64(1);
        d.mul_pow10((-exp10) as u64);
        let s = (MANT_BITS as i64 + 3 + d.bits() as i64 - n.bits() as i64).max(0) as u64;
        let (q, sticky) = n.shl(s).div_sticky(&d);
        parse_digits_value(neg, &q, -(s as i64), sticky)?
    };
    Some((v, nonzero))
}

/// Hex (after `0x`): `hexdigits[.hexdigits][p[+-]digits]`, at least one hex digit.
fn parse_hex(neg: bool, s: &[u8]) -> Option<(LongDouble, bool)> {
    let mut i = 0;
    let mut n = Big(Vec::new());
    let mut any = false;
    let mut nonzero = false;
    let mut exp2: i64 = 0;
    let hex = |c: u8| (c as char).to_digit(16);
    while let Some(d) = s.get(i).and_then(|&c| hex(c)) {
        n.mul_small(16);
        n.add_small(d);
        nonzero |= d != 0;
        any = true;
        i += 1;
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        while let Some(d) = s.get(i).and_then(|&c| hex(c)) {
            n.mul_small(16);
            n.add_small(d);
            nonzero |= d != 0;
            exp2 -= 4;
            any = true;
            i += 1;
        }
    }
    if !any {
        return None;
    }
    if s.get(i) == Some(&b'p') {
        i += 1;
        let eneg = match s.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        let mut e: i64 = 0;
        while i < s.len() && s[i].is_ascii_digit() {
            e = (e * 10 + i64::from(s[i] - b'0')).min(1 << 40);
            i += 1;
        }
        if i == start {
            return None;
        }
        exp2 += if eneg { -e } else { e };
    }
    if i != s.len() {
        return None;
    }
    if n.is_zero() {
        return Some((
            LongDouble {
                neg,
                finite: Some((0, 0)),
            },
            false,
        ));
    }
    let top = n.bits() as i64 + exp2;
    if top > 16400 {
        return None;
    }
    if top < -16500 {
        return Some((LongDouble::ZERO, nonzero));
    }
    Some((parse_digits_value(neg, &n, exp2, false)?, nonzero))
}

#[cfg(test)]
mod tests {
    use super::LongDouble;
    use proptest::prelude::*;

    fn incr(cur: &str, by: &str) -> Option<String> {
        let a = LongDouble::parse(cur.as_bytes())?;
        let b = LongDouble::parse(by.as_bytes())?;
        Some(a.add(&b)?.to_human())
    }

    /// Vectors taken from redis-server 7.0.15 (x86-64) replies.
    #[test]
    fn redis_vectors() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("10.5", "0.1", Some("10.6")),
            ("5", "2", Some("7")),
            ("3.0e3", "2.0e2", Some("3200")),
            ("0", "1.5", Some("1.5")),
            ("1", "1e308", Some("99999999999999999996685879655845645660560099847415567207797047994921734868838061872100126921888539320446747225054013223152134749593960583597420814430196418767959100019603190778663109604507106667939153395788938914560543563061268364901618630217086589253444881623791300855757318142424510452728255046343928578048")),
            ("1e308", "1e308", Some("199999999999999999993371759311691291321120199694831134415594095989843469737676123744200253843777078640893494450108026446304269499187921167194841628860392837535918200039206381557326219209014213335878306791577877829121087126122536729803237260434173178506889763247582601711514636284849020905456510092687857156096")),
            ("abc", "1", None),
            ("1", "abc", None),
            ("1", " 1", None),
            ("1", "inf", None),
            ("1", "nan", None),
            ("0.1", "0.2", Some("0.3")),
            ("1", "-1", Some("0")),
            ("1", "1e-20", Some("1")),
            ("10", "5.0e-10", Some("10.0000000005")),
            ("123456789012345678", "1", Some("123456789012345679")),
            ("1", "0x10", Some("17")),
            ("1", "1.5e17", Some("150000000000000001")),
            ("0", "1e17", Some("100000000000000000")),
            ("0", "3.0", Some("3")),
            ("-0", "0", Some("0")),
            ("0", "-0", Some("0")),
            ("1", "+5", Some("6")),
            ("1", " ", None),
            ("1", "", None),
            ("1", "2 ", None),
            ("1.", "1", Some("2")),
            (".5", "1", Some("1.5")),
            ("1e", "1", None),
            ("7.0e-1", "0", Some("0.7")),
            ("1", "-inf", None),
            ("0", "1.0000000000000002", Some("1.0000000000000002")),
            ("0", "3.14159265358979323846", Some("3.14159265358979324")),
            ("0", "0.30000000000000004", Some("0.30000000000000004")),
            ("0", "1e21", Some("1000000000000000000000")),
            ("0", "123456789012345678901234567890", Some("123456789012345678899921813504")),
        ];
        for (cur, by, want) in cases {
            assert_eq!(incr(cur, by).as_deref(), *want, "{cur} + {by}");
        }
        let big = incr("1", "1e400").unwrap();
        assert!(big.starts_with("10000000000000000000281880683947586514586453433629052038625910693539685534008629862039363994848324160522094053927317616200295822777259255734023828976593340661017797447434546173917862448116674971723778943824391593338047470675026246684401359237513603830343735485505244955964979021825038280091068414947402456898653040951017512658092615827588920183472511643316591362664138176309734806343732497430221946880"), "{big}");
        assert_eq!(big.len(), 401);
    }

    /// `x` exactly, as hex text `strtold` reads (`[-]0x<m>p<e>`).
    fn hex_of(x: f64) -> String {
        let bits = x.to_bits();
        let neg = if bits >> 63 == 1 { "-" } else { "" };
        let exp = ((bits >> 52) & 0x7ff) as i64;
        let frac = bits & ((1 << 52) - 1);
        let (m, e) = if exp == 0 {
            (frac, -1074)
        } else {
            (frac | (1 << 52), exp - 1075)
        };
        format!("{neg}0x{m:x}p{e}")
    }

    fn ld(s: &str) -> LongDouble {
        LongDouble::parse(s.as_bytes()).unwrap_or_else(|| panic!("{s} does not parse"))
    }

    /// `n / 2` as Redis prints it.
    fn halves(n: i64) -> String {
        let sign = if n < 0 { "-" } else { "" };
        let a = n.unsigned_abs();
        if a % 2 == 0 {
            format!("{sign}{}", a / 2)
        } else {
            format!("{sign}{}.5", a / 2)
        }
    }

    /// Equal, `-0` and `0` being the same number.
    fn same(a: LongDouble, b: LongDouble) -> bool {
        a == b || (a.is_zero() && b.is_zero())
    }

    /// What a `long double` must satisfy whatever its origin: it prints as text that parses,
    /// the print is a fixed point, and reads back as the value where `%.17Lf` can hold it.
    fn check_print(v: LongDouble) {
        let Some(_) = v.finite else { return };
        let p = v.to_human();
        let w = LongDouble::parse(p.as_bytes()).unwrap_or_else(|| panic!("{p} of {v:?}"));
        assert_eq!(w.to_human(), p, "{v:?}");
        if v.print_is_exact() {
            assert!(same(w, v), "{v:?} printed {p} reads {w:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// No input makes the parser panic; what parses prints and reads back.
        #[test]
        fn parse_any_bytes(s in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(v) = LongDouble::parse(&s) {
                check_print(v);
            }
        }

        /// Float-looking text: digits, point, exponent, hex, signs.
        #[test]
        fn parse_float_text(s in "[-+]?(0x)?[0-9a-f]{0,30}(\\.[0-9a-f]{0,30})?([ep][-+]?[0-9]{1,5})?") {
            if let Some(v) = LongDouble::parse(s.as_bytes()) {
                check_print(v);
                let _ = v.add(&v);
            }
        }

        /// Every `f64` (subnormals included) is a `long double`: its exact decimal expansion
        /// and its hex form both parse to it exactly.
        #[test]
        fn f64_exact(bits in any::<u64>()) {
            let x = f64::from_bits(bits);
            prop_assume!(x.is_finite());
            prop_assert_eq!(ld(&hex_of(x)).to_f64().map(f64::to_bits), Some(bits));
            let dec = format!("{x:.800e}");
            prop_assert_eq!(ld(&dec).to_f64().map(f64::to_bits), Some(bits), "{}", dec);
        }

        /// Correct rounding: decimal text rounded to `long double` then to `f64` is what
        /// Rust's (correctly rounded) `f64` parser makes of it, unless the `long double`
        /// landed exactly on a midpoint of `f64`s.
        #[test]
        fn decimal_agrees_with_f64(
            int in "[0-9]{1,25}", frac in "[0-9]{0,25}", exp in -340i32..320,
        ) {
            let s = format!("{int}.{frac}e{exp}");
            let want: f64 = s.parse().unwrap();
            if let Some(v) = LongDouble::parse(s.as_bytes()) {
                if let Some(got) = v.to_f64() {
                    prop_assert_eq!(got.to_bits(), want.to_bits(), "{}", s);
                }
            } else {
                prop_assert!(want == 0.0, "{}", s);
            }
        }

        /// The sum of two `f64`s, rounded to `long double` then to `f64`, is the `f64` sum
        /// (unless at an `f64` midpoint); the sum commutes, `x + 0 = x`, `x + -x = 0`.
        #[test]
        fn add_agrees_with_f64(a in any::<u64>(), b in any::<u64>()) {
            let (x, y) = (f64::from_bits(a), f64::from_bits(b));
            prop_assume!(x.is_finite() && y.is_finite());
            let (lx, ly) = (ld(&hex_of(x)), ld(&hex_of(y)));
            let s = lx.add(&ly).unwrap();
            prop_assert_eq!(s, ly.add(&lx).unwrap());
            if let Some(got) = s.to_f64() {
                prop_assert_eq!(got.to_bits(), (x + y).to_bits(), "{} + {}", x, y);
            }
            prop_assert!(same(lx.add(&LongDouble::ZERO).unwrap(), lx));
            prop_assert!(lx.add(&ld(&hex_of(-x))).unwrap().is_zero());
            check_print(s);
        }

        /// Huge and tiny exponents: the sum never panics and stays in range or is refused.
        #[test]
        fn add_extremes(ma in any::<u64>(), ea in -16500i64..16400, mb in any::<u64>(), eb in -16500i64..16400, nb: bool) {
            let a = LongDouble::parse(format!("0x{ma:x}p{ea}").as_bytes());
            let b = LongDouble::parse(format!("{}0x{mb:x}p{eb}", if nb { "-" } else { "" }).as_bytes());
            if let (Some(a), Some(b)) = (a, b) {
                if let Some(s) = a.add(&b) {
                    prop_assert_eq!(Some(s), b.add(&a));
                    check_print(s);
                }
                check_print(a);
            }
        }

        /// Where `f64` is exact (halves of integers up to 2^50), INCRBYFLOAT's text is the
        /// exact sum.
        #[test]
        fn halves_are_exact(a in -(1i64 << 50)..(1i64 << 50), b in -(1i64 << 50)..(1i64 << 50)) {
            let got = ld(&halves(a)).add(&ld(&halves(b))).unwrap().to_human();
            prop_assert_eq!(got, halves(a + b));
            prop_assert_eq!(ld(&halves(a)).to_f64(), Some(a as f64 / 2.0));
        }
    }

    #[test]
    fn to_f64_edges() {
        assert_eq!(ld("1e-400").to_f64(), Some(0.0));
        assert_eq!(
            ld("-1e-400").to_f64().map(f64::to_bits),
            Some((-0.0f64).to_bits())
        );
        assert_eq!(ld("1e400").to_f64(), Some(f64::INFINITY));
        assert_eq!(
            ld("0x1p-1075").to_f64(),
            None,
            "half of the least subnormal"
        );
        assert_eq!(ld("0x3p-1076").to_f64(), Some(f64::from_bits(1)));
        assert_eq!(ld("0x1p1024").to_f64(), Some(f64::INFINITY));
        assert_eq!(ld("0x1fffffffffffffp971").to_f64(), Some(f64::MAX));
        // f64::MAX + half an ulp: a tie, rounding to even overflows.
        assert_eq!(ld("0x3fffffffffffffp970").to_f64(), None);
        assert_eq!(ld("0x1p-1").to_f64(), Some(0.5));
    }

    #[test]
    fn range_edges() {
        assert!(LongDouble::parse(b"1e5000").is_none());
        assert!(LongDouble::parse(b"1e-5000").is_none());
        assert!(LongDouble::parse(b"0e-5000").is_some());
        assert!(LongDouble::parse(b"1.19e4932").is_none());
        assert!(LongDouble::parse(b"1.18e4932").is_some());
        assert!(incr("1e4932", "0").is_some());
        assert!(incr("1e4932", "1e4932").is_none());
        assert_eq!(incr("0x1p-3", "0").as_deref(), Some("0.125"));
        assert_eq!(incr("-2.5", "1").as_deref(), Some("-1.5"));
        assert!(LongDouble::parse(b"0x").is_none());
        assert!(LongDouble::parse(b"--1").is_none());
    }
}
