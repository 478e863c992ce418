//! The streaming RESP2/RESP3 value parser.
//!
//! ```text
//! value      = simple / error / integer / bulk / array / null / boolean / double / bignum
//!            / bulk-error / verbatim / map / set / attribute / push
//! simple     = "+" line CRLF          error   = "-" line CRLF      integer = ":" [sign] digits CRLF
//! bulk       = "$" len CRLF bytes CRLF / "$-1" CRLF / "$?" CRLF *(";" len CRLF bytes CRLF) ";0" CRLF
//! array      = "*" count CRLF count(value) / "*-1" CRLF / "*?" CRLF *value "." CRLF
//! null       = "_" CRLF               boolean = "#" ("t" / "f") CRLF
//! double     = "," (float / "inf" / "-inf" / "nan") CRLF
//! bignum     = "(" ["-"] digits CRLF
//! bulk-error = "!" len CRLF bytes CRLF      verbatim = "=" len CRLF 3fmt ":" bytes CRLF
//! map        = "%" count CRLF count(value value)   (and "%?" streamed)
//! set        = "~" count CRLF count(value)         (and "~?")
//! attribute  = "|" count CRLF count(value value) value
//! push       = ">" count CRLF count(value)         (and ">?")
//! ```
//!
//! [`parse`] looks at a byte slice and returns `Ok(None)` while the frame is incomplete
//! (`Partial` is never an error), `Ok(Some((value, len)))` once it is complete; bulk payloads
//! are zero-copy slices of the `Bytes` given. A first pass only validates and measures (no
//! allocation), so an incomplete frame costs nothing but a scan. [`frame_len`] scans from the
//! first byte on every call; for a frame arriving over many reads, [`frame_len_resume`] (and
//! [`parse_buf_resume`]) carry a [`FrameScan`] from call to call so that each read costs
//! only its new bytes, with the same answers.

use alloc::boxed::Box;
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};

pub use crate::scan::{frame_len_resume, FrameScan};
use crate::{ParseError, Value};

/// Limits applied while parsing values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest bulk string, bulk error or verbatim string (also the total of a streamed
    /// string). Redis's `proto-max-bulk-len`; default 512 MiB.
    pub max_bulk_len: u64,
    /// Most elements in one aggregate (pairs count twice). Default `i32::MAX` like Redis.
    pub max_aggregate_len: u64,
    /// Deepest nesting of aggregates. Default 128.
    pub max_depth: usize,
    /// Longest simple line (`+`, `-`, `:`, `,`, `(`, length headers). Default 64 KiB.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_aggregate_len: i32::MAX as u64,
            max_depth: 128,
            max_line: 64 * 1024,
        }
    }
}

/// Parse one value from the start of `input` with default limits.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((value, consumed)))` otherwise.
/// Bulk payloads are slices of `input` (no copy).
pub fn parse(input: &Bytes) -> Result<Option<(Value, usize)>, ParseError> {
    parse_with(input, &Limits::default())
}

/// [`parse`] with explicit limits.
pub fn parse_with(input: &Bytes, limits: &Limits) -> Result<Option<(Value, usize)>, ParseError> {
    let Some(len) = frame_len(input, limits)? else {
        return Ok(None);
    };
    let mut p = Parser {
        buf: &input[..len],
        src: Some(input),
        pos: 0,
        limits,
    };
    match p.value(0)? {
        Some(v) => Ok(Some((v, len))),
        None => Err(ParseError::Incomplete),
    }
}

/// Length of the complete frame at the start of `input`, or `None` if it is incomplete.
/// Validates the whole frame; allocates nothing.
pub fn frame_len(input: &[u8], limits: &Limits) -> Result<Option<usize>, ParseError> {
    let mut p = Parser {
        buf: input,
        src: None,
        pos: 0,
        limits,
    };
    Ok(p.value(0)?.map(|_| p.pos))
}

/// Split one complete value off the front of `input` (zero-copy), or leave `input` untouched
/// and return `Ok(None)` when it is incomplete.
pub fn parse_buf(input: &mut BytesMut, limits: &Limits) -> Result<Option<Value>, ParseError> {
    let Some(len) = frame_len(input, limits)? else {
        return Ok(None);
    };
    split_frame(input, len, limits)
}

/// [`parse_buf`], resumable: measures with [`frame_len_resume`] so that an incomplete frame
/// costs only the bytes appended since the last call. `state` is reset when a frame is split
/// off (or on an error); the caller resets it if it consumes or replaces `input` itself.
pub fn parse_buf_resume(
    input: &mut BytesMut,
    limits: &Limits,
    state: &mut FrameScan,
) -> Result<Option<Value>, ParseError> {
    let Some(len) = frame_len_resume(input, limits, state)? else {
        return Ok(None);
    };
    state.reset();
    split_frame(input, len, limits)
}

/// Split the measured frame of `len` bytes off the front of `input` and build its value.
fn split_frame(
    input: &mut BytesMut,
    len: usize,
    limits: &Limits,
) -> Result<Option<Value>, ParseError> {
    let frame = input.split_to(len).freeze();
    let mut p = Parser {
        buf: &frame,
        src: Some(&frame),
        pos: 0,
        limits,
    };
    p.value(0)?.map(Some).ok_or(ParseError::Incomplete)
}

struct Parser<'a> {
    buf: &'a [u8],
    /// `Some` when building values, `None` for the measuring pass.
    src: Option<&'a Bytes>,
    pos: usize,
    limits: &'a Limits,
}

/// Parses a RESP integer: optional sign, at least one digit, no overflow.
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        let d = (c - b'0') as i64;
        v = if neg {
            v.checked_mul(10)?.checked_sub(d)?
        } else {
            v.checked_mul(10)?.checked_add(d)?
        };
    }
    Some(v)
}

/// Parses a double as RESP3 allows (`inf`, `-inf`, `nan`, decimal with optional exponent).
pub(crate) fn parse_f64(s: &[u8]) -> Option<f64> {
    let t = core::str::from_utf8(s).ok()?;
    match t {
        "inf" | "+inf" => return Some(f64::INFINITY),
        "-inf" => return Some(f64::NEG_INFINITY),
        "nan" | "-nan" => return Some(f64::NAN),
        _ => {}
    }
    if t.is_empty()
        || !t
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    t.parse().ok()
}

impl<'a> Parser<'a> {
    fn building(&self) -> bool {
        self.src.is_some()
    }

    fn slice(&self, a: usize, b: usize) -> Bytes {
        match self.src {
            Some(src) => src.slice(a..b),
            None => Bytes::new(),
        }
    }

    /// The line starting at `pos` (without CRLF); advances past the CRLF.
    fn line(&mut self) -> Result<Option<(usize, usize)>, ParseError> {
        let rest = &self.buf[self.pos..];
        let Some(i) = memchr::memchr(b'\r', rest) else {
            if rest.len() > self.limits.max_line {
                return Err(ParseError::LineTooLong);
            }
            if memchr::memchr(b'\n', rest).is_some() {
                return Err(ParseError::InvalidLineEnding);
            }
            return Ok(None);
        };
        if i > self.limits.max_line {
            return Err(ParseError::LineTooLong);
        }
        if memchr::memchr(b'\n', &rest[..i]).is_some() {
            return Err(ParseError::InvalidLineEnding);
        }
        match rest.get(i + 1) {
            None => return Ok(None),
            Some(b'\n') => {}
            Some(_) => return Err(ParseError::InvalidLineEnding),
        }
        let start = self.pos;
        self.pos += i + 2;
        Ok(Some((start, start + i)))
    }

    fn length(&mut self, max: u64, err: ParseError) -> Result<Option<Len>, ParseError> {
        let Some((a, b)) = self.line()? else {
            return Ok(None);
        };
        length_of(&self.buf[a..b], max, err).map(Some)
    }

    /// `n` bytes of payload plus CRLF.
    fn payload(&mut self, n: u64) -> Result<Option<(usize, usize)>, ParseError> {
        let avail = (self.buf.len() - self.pos) as u64;
        if avail < n.saturating_add(2) {
            // Check the CRLF early when it is already there.
            return Ok(None);
        }
        let a = self.pos;
        let b = a + n as usize;
        if &self.buf[b..b + 2] != b"\r\n" {
            return Err(ParseError::InvalidLineEnding);
        }
        self.pos = b + 2;
        Ok(Some((a, b)))
    }

    fn value(&mut self, depth: usize) -> Result<Option<Value>, ParseError> {
        let Some(&t) = self.buf.get(self.pos) else {
            return Ok(None);
        };
        self.pos += 1;
        macro_rules! tri {
            ($e:expr) => {
                match $e? {
                    Some(x) => x,
                    None => return Ok(None),
                }
            };
        }
        let v = match t {
            b'+' | b'-' => {
                let (a, b) = tri!(self.line());
                let s = self.slice(a, b);
                if t == b'+' {
                    Value::SimpleString(s)
                } else {
                    Value::Error(s)
                }
            }
            b':' => {
                let (a, b) = tri!(self.line());
                Value::Integer(parse_i64(&self.buf[a..b]).ok_or(ParseError::InvalidInteger)?)
            }
            b'_' => {
                let (a, b) = tri!(self.line());
                if a != b {
                    return Err(ParseError::InvalidNull);
                }
                Value::Null
            }
            b'#' => {
                let (a, b) = tri!(self.line());
                match &self.buf[a..b] {
                    b"t" => Value::Boolean(true),
                    b"f" => Value::Boolean(false),
                    _ => return Err(ParseError::InvalidBoolean),
                }
            }
            b',' => {
                let (a, b) = tri!(self.line());
                Value::Double(parse_f64(&self.buf[a..b]).ok_or(ParseError::InvalidDouble)?)
            }
            b'(' => {
                let (a, b) = tri!(self.line());
                let s = &self.buf[a..b];
                let digits = s.strip_prefix(b"-").unwrap_or(s);
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(ParseError::InvalidBigNumber);
                }
                Value::BigNumber(self.slice(a, b))
            }
            b'$' | b'!' | b'=' => {
                let max = self.limits.max_bulk_len;
                match tri!(self.length(max, ParseError::BulkTooLong)) {
                    Len::Null if t == b'$' => Value::NullBulkString,
                    Len::Null => return Err(ParseError::InvalidLength),
                    Len::Streamed => {
                        if t != b'$' {
                            return Err(ParseError::InvalidLength);
                        }
                        tri!(self.streamed_string())
                    }
                    Len::N(n) => {
                        let (a, b) = tri!(self.payload(n));
                        match t {
                            b'$' => Value::BulkString(self.slice(a, b)),
                            b'!' => Value::BulkError(self.slice(a, b)),
                            _ => {
                                if b - a < 4 || self.buf[a + 3] != b':' {
                                    return Err(ParseError::InvalidVerbatim);
                                }
                                let f = &self.buf[a..a + 3];
                                Value::VerbatimString {
                                    format: [f[0], f[1], f[2]],
                                    text: self.slice(a + 4, b),
                                }
                            }
                        }
                    }
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                if depth >= self.limits.max_depth {
                    return Err(ParseError::TooDeep);
                }
                let pairs = matches!(t, b'%' | b'|');
                let max = self.limits.max_aggregate_len;
                let len = tri!(self.length(max, ParseError::AggregateTooLong));
                let n = match len {
                    Len::Null if t == b'*' => return Ok(Some(Value::NullArray)),
                    Len::Null => return Err(ParseError::InvalidLength),
                    Len::Streamed if t == b'|' => return Err(ParseError::InvalidLength),
                    Len::Streamed => None,
                    Len::N(n) => Some(n),
                };
                let build = self.building();
                let cap = n.unwrap_or(0).min(1024) as usize;
                let mut items: Vec<Value> = if build {
                    Vec::with_capacity(cap)
                } else {
                    Vec::new()
                };
                let mut pairs_v: Vec<(Value, Value)> = if build && pairs {
                    Vec::with_capacity(cap)
                } else {
                    Vec::new()
                };
                let mut count: u64 = 0;
                loop {
                    match n {
                        Some(n) if count == n => break,
                        None => {
                            // Streamed aggregate: ends with ".\r\n".
                            match self.buf.get(self.pos) {
                                None => return Ok(None),
                                Some(b'.') => {
                                    let save = self.pos;
                                    self.pos += 1;
                                    let (a, b) = tri!(self.line());
                                    if a != b {
                                        self.pos = save;
                                        return Err(ParseError::InvalidLength);
                                    }
                                    break;
                                }
                                _ => {}
                            }
                            if count >= max {
                                return Err(ParseError::AggregateTooLong);
                            }
                        }
                        _ => {}
                    }
                    let a = tri!(self.value(depth + 1));
                    if pairs {
                        let b = tri!(self.value(depth + 1));
                        if build {
                            pairs_v.push((a, b));
                        }
                    } else if build {
                        items.push(a);
                    }
                    count += 1;
                }
                match t {
                    b'*' => Value::Array(items),
                    b'~' => Value::Set(items),
                    b'>' => Value::Push(items),
                    b'%' => Value::Map(pairs_v),
                    _ => {
                        let inner = tri!(self.value(depth + 1));
                        Value::Attribute {
                            attrs: pairs_v,
                            value: Box::new(inner),
                        }
                    }
                }
            }
            other => return Err(ParseError::InvalidType(other)),
        };
        Ok(Some(v))
    }

    /// The chunks of `$?`: `;len CRLF bytes CRLF` until `;0 CRLF`.
    fn streamed_string(&mut self) -> Result<Option<Value>, ParseError> {
        let mut total: u64 = 0;
        let mut acc = BytesMut::new();
        let mut single: Option<(usize, usize)> = None;
        let mut chunks = 0usize;
        loop {
            match self.buf.get(self.pos) {
                None => return Ok(None),
                Some(b';') => self.pos += 1,
                Some(_) => return Err(ParseError::InvalidStreamChunk),
            }
            let n = match self.length(self.limits.max_bulk_len, ParseError::BulkTooLong)? {
                None => return Ok(None),
                Some(Len::N(n)) => n,
                Some(_) => return Err(ParseError::InvalidStreamChunk),
            };
            if n == 0 {
                break;
            }
            total = total.saturating_add(n);
            if total > self.limits.max_bulk_len {
                return Err(ParseError::BulkTooLong);
            }
            let Some((a, b)) = self.payload(n)? else {
                return Ok(None);
            };
            if self.building() {
                chunks += 1;
                if chunks == 1 {
                    single = Some((a, b));
                } else {
                    if let Some((sa, sb)) = single.take() {
                        acc.extend_from_slice(&self.buf[sa..sb]);
                    }
                    acc.extend_from_slice(&self.buf[a..b]);
                }
            }
        }
        Ok(Some(Value::BulkString(match single {
            Some((a, b)) if chunks == 1 => self.slice(a, b),
            _ => acc.freeze(),
        })))
    }
}

/// A length header's value.
pub(crate) enum Len {
    Null,
    Streamed,
    N(u64),
}

/// The value of a length line (`?`, `-1` or a count of at most `max`, else `err`).
#[inline]
pub(crate) fn length_of(s: &[u8], max: u64, err: ParseError) -> Result<Len, ParseError> {
    if s == b"?" {
        return Ok(Len::Streamed);
    }
    if s == b"-1" {
        return Ok(Len::Null);
    }
    match parse_i64(s) {
        Some(n) if n >= 0 && s[0] != b'+' => {
            if n as u64 > max {
                return Err(err);
            }
            Ok(Len::N(n as u64))
        }
        _ => Err(ParseError::InvalidLength),
    }
}

/// The checks the value parser makes on the line of a `t`-typed scalar.
#[inline]
pub(crate) fn validate_line(t: u8, s: &[u8]) -> Result<(), ParseError> {
    match t {
        b':' if parse_i64(s).is_none() => Err(ParseError::InvalidInteger),
        b'_' if !s.is_empty() => Err(ParseError::InvalidNull),
        b'#' if s != b"t" && s != b"f" => Err(ParseError::InvalidBoolean),
        b',' if parse_f64(s).is_none() => Err(ParseError::InvalidDouble),
        b'(' => {
            let digits = s.strip_prefix(b"-").unwrap_or(s);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(ParseError::InvalidBigNumber);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn p(s: &[u8]) -> Result<Option<(Value, usize)>, ParseError> {
        parse(&Bytes::copy_from_slice(s))
    }

    #[test]
    fn scalars() {
        assert_eq!(p(b"+OK\r\n").unwrap(), Some((Value::ok(), 5)));
        assert_eq!(p(b"-ERR x\r\n").unwrap().unwrap().0, Value::error("ERR x"));
        assert_eq!(p(b":-42\r\n").unwrap().unwrap().0, Value::Integer(-42));
        assert_eq!(p(b"$3\r\nfoo\r\n").unwrap().unwrap().0, Value::bulk("foo"));
        assert_eq!(p(b"$-1\r\n").unwrap().unwrap().0, Value::NullBulkString);
        assert_eq!(p(b"*-1\r\n").unwrap().unwrap().0, Value::NullArray);
        assert_eq!(p(b"_\r\n").unwrap().unwrap().0, Value::Null);
        assert_eq!(p(b"#t\r\n").unwrap().unwrap().0, Value::Boolean(true));
        assert_eq!(p(b",1.5\r\n").unwrap().unwrap().0, Value::Double(1.5));
        assert_eq!(
            p(b",-inf\r\n").unwrap().unwrap().0,
            Value::Double(f64::NEG_INFINITY)
        );
        assert_eq!(
            p(b"(-123\r\n").unwrap().unwrap().0,
            Value::BigNumber(Bytes::from_static(b"-123"))
        );
        assert_eq!(
            p(b"!3\r\nbad\r\n").unwrap().unwrap().0,
            Value::BulkError(Bytes::from_static(b"bad"))
        );
        assert_eq!(
            p(b"=7\r\ntxt:abc\r\n").unwrap().unwrap().0,
            Value::VerbatimString {
                format: *b"txt",
                text: Bytes::from_static(b"abc")
            }
        );
    }

    #[test]
    fn aggregates_and_streams() {
        let v = p(b"%1\r\n+a\r\n*2\r\n:1\r\n~1\r\n#f\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(
            v,
            Value::Map(vec![(
                Value::simple("a"),
                Value::Array(vec![
                    Value::Integer(1),
                    Value::Set(vec![Value::Boolean(false)])
                ])
            )])
        );
        let v = p(b"|1\r\n+k\r\n:2\r\n>1\r\n+x\r\n").unwrap().unwrap().0;
        assert!(matches!(v, Value::Attribute { .. }));
        assert_eq!(
            p(b"$?\r\n;2\r\nab\r\n;1\r\nc\r\n;0\r\n")
                .unwrap()
                .unwrap()
                .0,
            Value::bulk("abc")
        );
        assert_eq!(
            p(b"*?\r\n:1\r\n:2\r\n.\r\n").unwrap().unwrap().0,
            Value::Array(vec![Value::Integer(1), Value::Integer(2)])
        );
        assert_eq!(
            p(b"%?\r\n+a\r\n:1\r\n.\r\n").unwrap().unwrap().0,
            Value::Map(vec![(Value::simple("a"), Value::Integer(1))])
        );
    }

    #[test]
    fn partial_is_never_an_error() {
        let frame = b"*3\r\n$?\r\n;2\r\nab\r\n;0\r\n%1\r\n+a\r\n,2.5\r\n=7\r\ntxt:abc\r\n";
        for i in 0..frame.len() {
            assert_eq!(p(&frame[..i]).unwrap(), None, "at {i}");
        }
        assert_eq!(p(frame).unwrap().unwrap().1, frame.len());
    }

    #[test]
    fn errors() {
        assert_eq!(p(b"?x\r\n"), Err(ParseError::InvalidType(b'?')));
        assert_eq!(p(b":12a\r\n"), Err(ParseError::InvalidInteger));
        assert_eq!(p(b"$-2\r\n"), Err(ParseError::InvalidLength));
        assert_eq!(p(b"$3\r\nfooXY"), Err(ParseError::InvalidLineEnding));
        assert_eq!(p(b"#x\r\n"), Err(ParseError::InvalidBoolean));
        assert_eq!(p(b",abc\r\n"), Err(ParseError::InvalidDouble));
        assert_eq!(p(b"=2\r\nab\r\n"), Err(ParseError::InvalidVerbatim));
        assert_eq!(p(b"+a\rb\r\n"), Err(ParseError::InvalidLineEnding));
    }

    #[test]
    fn limit_depth() {
        let mut deep = Vec::new();
        for _ in 0..200 {
            deep.extend_from_slice(b"*1\r\n");
        }
        deep.extend_from_slice(b":1\r\n");
        assert_eq!(p(&deep), Err(ParseError::TooDeep));
        let l = Limits {
            max_depth: 300,
            ..Limits::default()
        };
        assert!(parse_with(&Bytes::from(deep), &l).unwrap().is_some());
    }

    #[test]
    fn limit_bulk_len_and_aggregate_len() {
        let l = Limits {
            max_bulk_len: 10,
            max_aggregate_len: 3,
            ..Limits::default()
        };
        assert_eq!(
            parse_with(&Bytes::from_static(b"$11\r\n"), &l),
            Err(ParseError::BulkTooLong)
        );
        assert_eq!(
            parse_with(&Bytes::from_static(b"$?\r\n;6\r\nabcdef\r\n;6\r\n"), &l),
            Err(ParseError::BulkTooLong)
        );
        assert_eq!(
            parse_with(&Bytes::from_static(b"*4\r\n"), &l),
            Err(ParseError::AggregateTooLong)
        );
        assert_eq!(
            parse_with(&Bytes::from_static(b"*?\r\n:1\r\n:1\r\n:1\r\n:1\r\n"), &l),
            Err(ParseError::AggregateTooLong)
        );
        assert!(
            parse_with(&Bytes::from_static(b"$10\r\n0123456789\r\n"), &l)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn limit_line() {
        let l = Limits {
            max_line: 8,
            ..Limits::default()
        };
        assert_eq!(
            parse_with(&Bytes::from_static(b"+0123456789"), &l),
            Err(ParseError::LineTooLong)
        );
        assert!(parse_with(&Bytes::from_static(b"+01234567\r\n"), &l)
            .unwrap()
            .is_some());
    }

    #[test]
    fn zero_copy_slices() {
        let input = Bytes::from_static(b"$5\r\nhello\r\n");
        let (v, _) = parse(&input).unwrap().unwrap();
        let Value::BulkString(b) = v else { panic!() };
        assert_eq!(b.as_ptr(), input[4..].as_ptr());
    }
}
