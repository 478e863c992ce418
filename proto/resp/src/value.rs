//! RESP2/RESP3 values: one enum for both protocol versions, with zero-copy [`Bytes`] payloads.

use alloc::boxed::Box;
use alloc::vec::Vec;
use bytes::Bytes;
use core::fmt::{self, Write as _};

/// The RESP version spoken on a connection (`HELLO 2` / `HELLO 3`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// RESP2, what every connection starts with.
    #[default]
    Resp2,
    /// RESP3 (maps, sets, doubles, push frames, …).
    Resp3,
}

impl Protocol {
    /// `2` or `3`.
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }

    /// From `2` or `3`.
    pub fn from_version(v: i64) -> Option<Protocol> {
        match v {
            2 => Some(Protocol::Resp2),
            3 => Some(Protocol::Resp3),
            _ => None,
        }
    }
}

/// One RESP value.
///
/// ```text
/// RESP2: +simple  -error  :integer  $bulk (incl. $-1 null)  *array (incl. *-1 null)
/// RESP3: _null  #t/#f  ,double  (big-number  !bulk-error  =verbatim  %map  ~set  |attribute  >push
/// ```
///
/// Encoding a RESP3-only variant for a RESP2 peer downgrades it the way Redis does (map → flat
/// array, set/push → array, double → bulk string in `%.17g` form, boolean → integer, null →
/// `$-1`, verbatim → bulk string, bulk error → simple error, attribute → dropped).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// `+OK`: a line without CR or LF.
    SimpleString(Bytes),
    /// `-ERR message`: the whole line after `-` (the code is its first word).
    Error(Bytes),
    /// `:123`.
    Integer(i64),
    /// `$3\r\nfoo`: binary-safe.
    BulkString(Bytes),
    /// `$-1` (RESP2's null bulk string; `_` in RESP3).
    NullBulkString,
    /// `*2\r\n…`.
    Array(Vec<Value>),
    /// `*-1` (RESP2's null array; `_` in RESP3).
    NullArray,
    /// `_` (RESP3 null).
    Null,
    /// `#t` / `#f`.
    Boolean(bool),
    /// `,1.5` (also `inf`, `-inf`, `nan`).
    Double(f64),
    /// `(3492890328409238509324850943850943825024385`: decimal digits with an optional `-`.
    BigNumber(Bytes),
    /// `!21\r\nSYNTAX invalid syntax`: a binary-safe error.
    BulkError(Bytes),
    /// `=15\r\ntxt:Some string`: three-byte format and text.
    VerbatimString {
        /// Format such as `txt` or `mkd`.
        format: [u8; 3],
        /// The text after `xxx:`.
        text: Bytes,
    },
    /// `%2\r\n…`: key/value pairs in wire order.
    Map(Vec<(Value, Value)>),
    /// `~2\r\n…`.
    Set(Vec<Value>),
    /// `|1\r\n…` followed by the value the attributes describe.
    Attribute {
        /// The attribute pairs.
        attrs: Vec<(Value, Value)>,
        /// The value they are attached to.
        value: Box<Value>,
    },
    /// `>3\r\n…`: out-of-band data (pub/sub messages, invalidations).
    Push(Vec<Value>),
}

impl Value {
    /// `+OK`.
    pub const fn ok() -> Value {
        Value::SimpleString(Bytes::from_static(b"OK"))
    }

    /// A simple string from a static text.
    pub const fn simple(s: &'static str) -> Value {
        Value::SimpleString(Bytes::from_static(s.as_bytes()))
    }

    /// An error reply from a static text such as `"ERR syntax error"`.
    pub const fn error(s: &'static str) -> Value {
        Value::Error(Bytes::from_static(s.as_bytes()))
    }

    /// A bulk string copied from `b`.
    pub fn bulk(b: impl AsRef<[u8]>) -> Value {
        Value::BulkString(Bytes::copy_from_slice(b.as_ref()))
    }

    /// An error reply built from formatted text; CR and LF become spaces (as Redis does).
    pub fn error_fmt(args: fmt::Arguments<'_>) -> Value {
        let mut s = alloc::string::String::new();
        let _ = s.write_fmt(args);
        let v: Vec<u8> = s
            .bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
            .collect();
        Value::Error(Bytes::from(v))
    }

    /// Whether this is an error (`-` or `!`).
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_) | Value::BulkError(_))
    }

    /// Whether this is a null of any kind.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null | Value::NullBulkString | Value::NullArray)
    }

    /// The bytes of a simple string, bulk string, verbatim string, error or big number.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::SimpleString(b)
            | Value::BulkString(b)
            | Value::Error(b)
            | Value::BulkError(b)
            | Value::BigNumber(b)
            | Value::VerbatimString { text: b, .. } => Some(b),
            _ => None,
        }
    }

    /// The integer of `:n`.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of an array, set or push frame.
    pub fn as_slice(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) | Value::Set(v) | Value::Push(v) => Some(v),
            _ => None,
        }
    }

    /// The value without attributes.
    pub fn strip_attributes(self) -> Value {
        match self {
            Value::Attribute { value, .. } => value.strip_attributes(),
            v => v,
        }
    }
}

/// Writes `d` the way C's `printf("%.17g", d)` does, which is how Redis formats doubles
/// (`inf`, `-inf` and `nan` for the special values).
pub fn write_double(out: &mut impl fmt::Write, d: f64) -> fmt::Result {
    if d.is_nan() {
        return out.write_str("nan");
    }
    if d.is_infinite() {
        return out.write_str(if d > 0.0 { "inf" } else { "-inf" });
    }
    if d == 0.0 {
        return out.write_str(if d.is_sign_negative() { "-0" } else { "0" });
    }
    // 17 significant digits in scientific form, e.g. "1.2345678901234567e3".
    let mut sci: heapless_str::Buf<40> = heapless_str::Buf::new();
    write!(sci, "{:.16e}", d.abs())?;
    let s = sci.as_str();
    let (mant, exp) = s.split_once('e').unwrap_or((s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: heapless_str::Buf<24> = heapless_str::Buf::new();
    for c in mant.chars().filter(|c| c.is_ascii_digit()) {
        digits.write_char(c)?;
    }
    let digits = digits.as_str();
    if d < 0.0 {
        out.write_char('-')?;
    }
    if (-4..17).contains(&exp) {
        let (int_part, frac): (&str, alloc::string::String) = if exp >= 0 {
            let k = (exp as usize + 1).min(digits.len());
            (&digits[..k], alloc::string::String::from(&digits[k..]))
        } else {
            let mut f = alloc::string::String::new();
            for _ in 0..(-exp - 1) {
                f.push('0');
            }
            f.push_str(digits);
            ("0", f)
        };
        out.write_str(int_part)?;
        let frac = frac.trim_end_matches('0');
        if !frac.is_empty() {
            out.write_char('.')?;
            out.write_str(frac)?;
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        out.write_str(first)?;
        let rest = rest.trim_end_matches('0');
        if !rest.is_empty() {
            out.write_char('.')?;
            out.write_str(rest)?;
        }
        write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        )?;
    }
    Ok(())
}

/// A tiny fixed-capacity string for formatting without allocation.
mod heapless_str {
    use core::fmt;

    pub struct Buf<const N: usize> {
        buf: [u8; N],
        len: usize,
    }

    impl<const N: usize> Buf<N> {
        pub fn new() -> Self {
            Buf {
                buf: [0; N],
                len: 0,
            }
        }
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
        }
    }

    impl<const N: usize> fmt::Write for Buf<N> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let b = s.as_bytes();
            if self.len + b.len() > N {
                return Err(fmt::Error);
            }
            self.buf[self.len..self.len + b.len()].copy_from_slice(b);
            self.len += b.len();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn g(d: f64) -> String {
        let mut s = String::new();
        write_double(&mut s, d).unwrap();
        s
    }

    #[test]
    fn double_formatting_matches_printf_17g() {
        assert_eq!(g(1.0), "1");
        assert_eq!(g(1.5), "1.5");
        assert_eq!(g(0.1), "0.10000000000000001");
        assert_eq!(g(-2.25), "-2.25");
        assert_eq!(g(1e20), "1e+20");
        assert_eq!(g(123456789012345678.0), "1.2345678901234568e+17");
        assert_eq!(g(1e16), "10000000000000000");
        assert_eq!(g(0.0001), "0.0001");
        assert_eq!(g(0.00001), "1.0000000000000001e-05");
        assert_eq!(g(f64::INFINITY), "inf");
        assert_eq!(g(f64::NEG_INFINITY), "-inf");
        assert_eq!(g(0.0), "0");
        assert_eq!(g(3.0e-300), "3.0000000000000002e-300");
        assert_eq!(g(f64::MAX), "1.7976931348623157e+308");
    }
}
