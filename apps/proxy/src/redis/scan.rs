//! Raw-byte scanners of the Redis proxy's fast path: where a client's command ends
//! ([`scan`], [`scan_command`], [`scan_inline`]) and where an upstream's reply ends
//! ([`reply_len`]), without building values or copying bytes.
//!
//! They agree with `ferry-resp`'s full parsers wherever they answer: a command they call
//! [`Scan::Complete`] parses (`ferry_resp::parse` / `ferry_resp::split_args`) to exactly
//! those bytes, with that name and first argument; [`reply_len`] measures every complete
//! frame as `ferry_resp::parse::frame_len` does. What they cannot delimit cheaply they leave
//! to the slow path ([`Scan::Other`]). Reported lengths never exceed the input. The
//! `redis_proxy_scan` fuzz target (fuzz/) checks all of this on arbitrary bytes; it includes
//! this file by path, so it uses nothing but `std` and `ferry_resp`.
//!
//! ```
//! use ferry_proxy::redis::scan::{scan, Scan};
//!
//! let input = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nPING\r\n";
//! let Scan::Complete { len, name, key } = scan(input, 1 << 20, 64 * 1024) else { panic!() };
//! assert_eq!((&input[name.0..name.1], key.map(|k| &input[k.0..k.1])), (&b"GET"[..], Some(&b"key"[..])));
//! let Scan::Complete { len: inline, .. } = scan(&input[len..], 1 << 20, 64 * 1024) else { panic!() };
//! assert_eq!(len + inline, input.len());
//! ```

use ferry_resp::parse::{frame_len, frame_len_resume, FrameScan};
use ferry_resp::{Limits, ParseError};

/// Most arguments of a command the fast path forwards.
pub const MAX_FAST_ARGS: u64 = 1 << 16;

/// A command at the start of some input, as the fast path sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scan {
    /// A complete command of `len` bytes; its name and first argument (if any) at these
    /// spans (`start..end`) of the input.
    Complete {
        /// Bytes of the command, line ending included.
        len: usize,
        /// The command name.
        name: (usize, usize),
        /// The first argument (the key of most commands).
        key: Option<(usize, usize)>,
    },
    /// More bytes are needed.
    Incomplete,
    /// Not a command the fast path forwards as it is (malformed, empty, quoted inline
    /// arguments, at a limit): the full parser must look at it.
    Other,
}

/// `t digits \r\n` at the start of `b`: the number and the length of the line (strict: no
/// sign, no leading zero, at most 18 digits). `Ok(None)`: incomplete.
#[inline(always)]
fn header(b: &[u8], t: u8) -> Result<Option<(u64, usize)>, ()> {
    // Most headers of real traffic have one or two digits: `$3\r\n`, `$16\r\n`.
    if let [c0, c1, c2, c3, ..] = *b {
        let d1 = c1.wrapping_sub(b'0');
        if c0 == t && d1 <= 9 {
            if c2 == b'\r' && c3 == b'\n' {
                return Ok(Some((u64::from(d1), 4)));
            }
            let d2 = c2.wrapping_sub(b'0');
            if d1 != 0 && d2 <= 9 && c3 == b'\r' && b.get(4) == Some(&b'\n') {
                return Ok(Some((u64::from(d1 * 10 + d2), 5)));
            }
        }
    }
    header_slow(b, t)
}

/// [`header`] for any input.
#[inline(never)]
fn header_slow(b: &[u8], t: u8) -> Result<Option<(u64, usize)>, ()> {
    let Some((&first, rest)) = b.split_first() else {
        return Ok(None);
    };
    if first != t {
        return Err(());
    }
    let mut v: u64 = 0;
    let mut k = 0;
    loop {
        let Some(&c) = rest.get(k) else {
            return Ok(None);
        };
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            if c != b'\r' || k == 0 {
                return Err(());
            }
            break;
        }
        if k >= 18 || (k == 1 && v == 0) {
            return Err(()); // too long, or a leading zero
        }
        v = v * 10 + u64::from(d);
        k += 1;
    }
    match rest.get(k + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((v, k + 3))),
        Some(_) => Err(()),
    }
}

/// The command at the start of `b`, multibulk or inline.
#[inline(always)]
pub fn scan(b: &[u8], max_bulk: u64, max_inline: usize) -> Scan {
    match b.first() {
        None => Scan::Incomplete,
        Some(b'*') => scan_command(b, max_bulk),
        Some(_) => scan_inline(b, max_inline),
    }
}

/// A multibulk command (`*N` then `N` bulk strings, each at most `max_bulk` bytes) at the
/// start of `b`. Length headers must be canonical (no sign, no leading zero); `*0`, `*-1`
/// and more than [`MAX_FAST_ARGS`] arguments are [`Scan::Other`].
#[inline]
pub fn scan_command(b: &[u8], max_bulk: u64) -> Scan {
    match scan_command_short(b, max_bulk) {
        Some(s) => s,
        None => scan_command_any(b, max_bulk),
    }
}

/// The 8 bytes at `at` of `b`, little-endian.
#[inline(always)]
fn word(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(*b.get(at..)?.first_chunk::<8>()?))
}

/// A bulk string header `$D\r\n` or `$DD\r\n` (canonical: no leading zero) in the low
/// bytes of `w`, read at `pos`: the span of its data. `None`: any other header.
#[inline(always)]
fn short_head(w: u64, pos: usize) -> Option<(usize, usize)> {
    let [_, c1, c2, ..] = w.to_le_bytes();
    let (d1, d2) = (c1.wrapping_sub(b'0'), c2.wrapping_sub(b'0'));
    if w & 0xFFFF_00FF == 0x0A0D_0024 && d1 <= 9 {
        Some((pos + 4, pos + 4 + usize::from(d1)))
    } else if w & 0xFF_FF00_00FF == 0x0A_0D00_0024 && d1.wrapping_sub(1) < 9 && d2 <= 9 {
        Some((pos + 5, pos + 5 + usize::from(d1 * 10 + d2)))
    } else {
        None
    }
}

/// [`scan_command`] for the usual command: complete, `*1` to `*9`, every argument shorter
/// than 100 bytes (and `max_bulk` at least 99). `None`: anything else (incomplete, odd,
/// longer), which [`scan_command_any`] decides from the start; where this answers, it
/// answers as that does. One 8-byte load per argument checks the line end of one
/// argument and the header of the next (a complete command has at least 8 bytes after
/// the data of any argument but its last: `\r\n$0\r\n\r\n`).
#[inline(always)]
fn scan_command_short(b: &[u8], max_bulk: u64) -> Option<Scan> {
    let &[b'*', c1, b'\r', b'\n', ..] = b else {
        return None;
    };
    let n = c1.wrapping_sub(b'0');
    if !(1..=9).contains(&n) || max_bulk < 99 {
        return None;
    }
    let name = short_head(word(b, 4)?, 4)?;
    let mut end = name.1;
    let mut key = None;
    for k in 1..n {
        let w = word(b, end)?;
        if w & 0xFFFF != 0x0A0D {
            return None;
        }
        let span = short_head(w >> 16, end + 2)?;
        if k == 1 {
            key = Some(span);
        }
        end = span.1;
    }
    match b.get(end..end + 2) {
        Some(b"\r\n") => Some(Scan::Complete {
            len: end + 2,
            name,
            key,
        }),
        _ => None,
    }
}

/// [`scan_command`] for any input.
#[inline(never)]
fn scan_command_any(b: &[u8], max_bulk: u64) -> Scan {
    let (n, mut pos) = match header(b, b'*') {
        Ok(Some(x)) => x,
        Ok(None) => return Scan::Incomplete,
        Err(()) => return Scan::Other,
    };
    if n == 0 || n > MAX_FAST_ARGS {
        return Scan::Other;
    }
    let mut name = (0, 0);
    let mut key = None;
    for k in 0..n {
        let rest = b.get(pos..).unwrap_or_default();
        let (len, h) = match header(rest, b'$') {
            Ok(Some(x)) => x,
            Ok(None) => return Scan::Incomplete,
            Err(()) => return Scan::Other,
        };
        if len > max_bulk {
            return Scan::Other;
        }
        let start = pos + h;
        let Some(end) = usize::try_from(len).ok().and_then(|l| start.checked_add(l)) else {
            return Scan::Other;
        };
        match b.get(end..end.saturating_add(2)) {
            Some(b"\r\n") => {}
            Some(_) => return Scan::Other,
            None if end.saturating_add(2) > b.len() && b.len() > end => {
                // One byte of the line ending is there: it must be the `\r`.
                if b[end] != b'\r' {
                    return Scan::Other;
                }
                return Scan::Incomplete;
            }
            None => return Scan::Incomplete,
        }
        match k {
            0 => name = (start, end),
            1 => key = Some((start, end)),
            _ => {}
        }
        pos = end + 2;
    }
    Scan::Complete {
        len: pos,
        name,
        key,
    }
}

/// An inline command (`PING\r\n`, `GET key\n`) at the start of `b`, in the plain form only:
/// printable ASCII words without quotes, separated by spaces, ending in `\n` or `\r\n`, at
/// most `max_inline` bytes before the line ending. Blank lines (which Redis skips without
/// a reply) and anything else are [`Scan::Other`].
pub fn scan_inline(b: &[u8], max_inline: usize) -> Scan {
    let mut words = 0usize;
    let mut name = (0, 0);
    let mut key = None;
    let mut start = None;
    let mut close = |start: &mut Option<usize>, i: usize| {
        if let Some(s) = start.take() {
            match words {
                0 => name = (s, i),
                1 => key = Some((s, i)),
                _ => {}
            }
            words += 1;
        }
    };
    for (i, &c) in b.iter().enumerate() {
        if i > max_inline {
            return Scan::Other;
        }
        match c {
            b'\n' | b'\r' => {
                close(&mut start, i);
                let len = if c == b'\n' {
                    i + 1
                } else {
                    match b.get(i + 1) {
                        None => return Scan::Incomplete,
                        Some(b'\n') => i + 2,
                        Some(_) => return Scan::Other,
                    }
                };
                if words == 0 {
                    return Scan::Other;
                }
                return Scan::Complete { len, name, key };
            }
            b' ' => close(&mut start, i),
            b'"' | b'\'' => return Scan::Other,
            0x21..=0x7E => {
                if start.is_none() {
                    start = Some(i);
                }
            }
            _ => return Scan::Other,
        }
    }
    if b.len() > max_inline {
        Scan::Other
    } else {
        Scan::Incomplete
    }
}

/// A RESP integer as `ferry_resp` accepts it: optional sign, 1 to 20 digits, fits `i64`.
fn is_i64(s: &[u8]) -> bool {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 20 {
        return false;
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return false;
        }
        let d = i64::from(c - b'0');
        let next = v.checked_mul(10).and_then(|v| {
            if neg {
                v.checked_sub(d)
            } else {
                v.checked_add(d)
            }
        });
        match next {
            Some(n) => v = n,
            None => return false,
        }
    }
    true
}

/// What [`simple_len`] made of a value.
enum Measured {
    /// Complete, this many bytes.
    Done(usize),
    Incomplete,
    /// Not measured here: ask the frame parser.
    Fallback,
}

/// A simple string, error, integer or bulk string at the start of `b`, measured exactly as
/// `frame_len` would (same acceptance, same limits); anything else is
/// [`Measured::Fallback`].
#[inline(always)]
fn simple_len(b: &[u8], limits: &Limits) -> Measured {
    match b.first() {
        None => Measured::Incomplete,
        Some(&t @ (b'+' | b'-' | b':')) => {
            let end = b.len().min(limits.max_line.saturating_add(1));
            let line = &b[1..end.max(1)];
            match line.iter().position(|&c| c == b'\r' || c == b'\n') {
                Some(i) if line[i] == b'\r' && (t != b':' || is_i64(&line[..i])) => {
                    match b.get(i + 2) {
                        Some(b'\n') => Measured::Done(i + 3),
                        None => Measured::Incomplete,
                        Some(_) => Measured::Fallback,
                    }
                }
                // No line end yet, and within the line limit.
                None if end == b.len() && b.len() <= limits.max_line => Measured::Incomplete,
                _ => Measured::Fallback,
            }
        }
        Some(b'$') => match header(b, b'$') {
            Ok(Some((len, p))) if len <= limits.max_bulk_len => {
                let Some(end) = usize::try_from(len).ok().and_then(|l| p.checked_add(l)) else {
                    return Measured::Fallback;
                };
                match b.get(end..end.saturating_add(2)) {
                    Some(b"\r\n") => Measured::Done(end + 2),
                    None if b.len() <= end || b[end] == b'\r' => Measured::Incomplete,
                    _ => Measured::Fallback,
                }
            }
            Ok(None) => Measured::Incomplete,
            _ if b.starts_with(b"$-1\r\n") => Measured::Done(5),
            _ => Measured::Fallback,
        },
        _ => Measured::Fallback,
    }
}

/// Length of the complete reply at the start of `b` (`Ok(None)`: incomplete). Simple
/// strings, errors, integers, bulk strings and arrays of those (`LRANGE`, `MGET`…) are
/// measured here; anything else (and anything odd) by the full frame parser, whose answer
/// this always equals on a complete frame.
#[inline]
pub fn reply_len(b: &[u8], limits: &Limits) -> Result<Option<usize>, ParseError> {
    if let Some(n) = short_reply(b, limits) {
        return Ok(Some(n));
    }
    reply_len_any(b, limits)
}

/// [`reply_len`] for any input.
#[inline(never)]
fn reply_len_any(b: &[u8], limits: &Limits) -> Result<Option<usize>, ParseError> {
    match flat(b, limits, 0, 0) {
        Flat::Done(n) => Ok(Some(n)),
        Flat::Incomplete(..) => Ok(None),
        Flat::Fallback => frame_len(b, limits),
    }
}

/// Where [`reply_len_resume`] stopped in an incomplete reply.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// Bytes of a flat array reply measured so far (its header and its complete elements);
    /// 0: none.
    pos: usize,
    /// Elements of that array still to measure.
    left: u64,
    /// The reply is not one the flat scan measures (nested, RESP3, streamed, odd): `frame`
    /// measures it, resumably.
    deep: bool,
    frame: FrameScan,
}

impl Progress {
    /// Forget the reply in progress (the front of the input was consumed or replaced).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.left = 0;
        if self.deep {
            self.deep = false;
            self.frame.reset();
        }
    }

    /// Bytes examined by the resumable frame scan of replies the flat scan leaves to it.
    pub fn deep_examined(&self) -> u64 {
        self.frame.examined()
    }

    /// Measures a reply the flat scan does not, from its first byte, and carries on with it
    /// in the calls to come while it is incomplete.
    #[cold]
    #[inline(never)]
    fn start_deep(&mut self, b: &[u8], limits: &Limits) -> Result<Option<usize>, ParseError> {
        self.pos = 0;
        self.left = 0;
        self.frame.reset();
        self.deep = true;
        self.go_deep(b, limits)
    }

    #[inline(never)]
    fn go_deep(&mut self, b: &[u8], limits: &Limits) -> Result<Option<usize>, ParseError> {
        let r = frame_len_resume(b, limits, &mut self.frame);
        if !matches!(r, Ok(None)) {
            self.deep = false;
            self.frame.reset();
        }
        r
    }
}

/// The usual reply, complete: a simple string or error with a line of at most 15 bytes
/// (`+OK`, `+QUEUED`, `-ERR …` short), `$-1`, or a bulk string shorter than 100 bytes. Its
/// length, as [`simple_len`] measures it; `None`: anything else, left to the full scans.
#[inline(always)]
fn short_reply(b: &[u8], limits: &Limits) -> Option<usize> {
    match *b.first()? {
        b'+' if b.starts_with(b"+OK\r\n") => Some(5),
        b'+' | b'-' if limits.max_line >= 16 => {
            // The first `\r` or `\n` of the line, among its first 15 bytes.
            let line = b.get(1..b.len().min(16))?;
            let i = line.iter().position(|&c| c == b'\r' || c == b'\n')?;
            match (line[i], b.get(i + 2)) {
                (b'\r', Some(b'\n')) => Some(i + 3),
                _ => None,
            }
        }
        b'$' => {
            if b.starts_with(b"$-1\r\n") {
                return Some(5);
            }
            if limits.max_bulk_len < 99 {
                return None;
            }
            let (_, end) = short_head(word(b, 0)?, 0)?;
            match b.get(end..end + 2) {
                Some(b"\r\n") => Some(end + 2),
                _ => None,
            }
        }
        _ => None,
    }
}

/// What [`flat`] made of a reply.
enum Flat {
    Done(usize),
    /// Incomplete: measured up to this offset, with this many array elements still to go.
    Incomplete(usize, u64),
    Fallback,
}

/// The flat scan: a simple reply, or an array of them, from offset `pos` with `left`
/// elements to go (`left == 0`: from the start of `b`).
#[inline(always)]
fn flat(b: &[u8], limits: &Limits, mut pos: usize, mut left: u64) -> Flat {
    if left == 0 {
        if b.first() != Some(&b'*') {
            return match simple_len(b, limits) {
                Measured::Done(n) => Flat::Done(n),
                Measured::Incomplete => Flat::Incomplete(0, 0),
                Measured::Fallback => Flat::Fallback,
            };
        }
        match header(b, b'*') {
            Ok(Some((n, p))) if n <= limits.max_aggregate_len && limits.max_depth > 0 => {
                (pos, left) = (p, n);
            }
            Ok(None) => return Flat::Incomplete(0, 0),
            _ => return Flat::Fallback,
        }
    }
    while left > 0 {
        match simple_len(&b[pos..], limits) {
            Measured::Done(l) => {
                pos += l;
                left -= 1;
            }
            Measured::Incomplete => return Flat::Incomplete(pos, left),
            Measured::Fallback => return Flat::Fallback,
        }
    }
    Flat::Done(pos)
}

/// [`reply_len`] for a reply that arrives in pieces: `progress` carries what was measured
/// of an incomplete reply to the next call, so a large reply is scanned about once rather
/// than once per read: a flat array by the flat scan, anything else (nested arrays, maps,
/// RESP3 and streamed replies) by `ferry_resp`'s resumable frame scan. Between calls the
/// caller may only append to `b`; it calls [`Progress::reset`] when it consumes or drops the
/// front of `b` without a complete answer from here (a complete answer or an error resets
/// it already). Every answer equals [`reply_len`]'s on the same bytes.
#[inline]
pub fn reply_len_resume(
    b: &[u8],
    limits: &Limits,
    progress: &mut Progress,
) -> Result<Option<usize>, ParseError> {
    if progress.deep {
        return progress.go_deep(b, limits);
    }
    if progress.pos == 0 {
        if let Some(n) = short_reply(b, limits) {
            progress.left = 0;
            return Ok(Some(n));
        }
    }
    let resumed = progress.pos > 0 && progress.pos <= b.len() && b.first() == Some(&b'*');
    let (pos, left) = if resumed {
        (progress.pos, progress.left)
    } else {
        (0, 0)
    };
    match flat(b, limits, pos, left) {
        Flat::Done(n) => {
            progress.pos = 0;
            progress.left = 0;
            Ok(Some(n))
        }
        Flat::Incomplete(pos, left) => {
            progress.pos = pos;
            progress.left = left;
            Ok(None)
        }
        Flat::Fallback => progress.start_deep(b, limits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use ferry_resp::{encode_command, parse, split_args, Bytes, Value};
    use proptest::prelude::*;

    const MAX_BULK: u64 = 1 << 20;
    const MAX_INLINE: usize = 64 * 1024;

    /// The properties the fuzz target checks too: lengths within the input, and agreement
    /// with the full parsers.
    fn check_scan(b: &[u8]) -> Result<(), TestCaseError> {
        let bytes = Bytes::copy_from_slice(b);
        match scan(b, MAX_BULK, MAX_INLINE) {
            Scan::Complete { len, name, key } => {
                prop_assert!(len > 0 && len <= b.len());
                prop_assert!(name.0 <= name.1 && name.1 <= len);
                let args: Vec<Bytes> = if b[0] == b'*' {
                    let Ok(Some((Value::Array(items), used))) = parse(&bytes) else {
                        return Err(TestCaseError::fail(format!("parse disagrees on {b:?}")));
                    };
                    prop_assert_eq!(used, len);
                    items
                        .into_iter()
                        .map(|v| match v {
                            Value::BulkString(s) => Ok(s),
                            v => Err(TestCaseError::fail(format!("not a bulk: {v:?}"))),
                        })
                        .collect::<Result<_, _>>()?
                } else {
                    let end = len - if b[..len].ends_with(b"\r\n") { 2 } else { 1 };
                    split_args(&bytes.slice(..end))
                        .ok_or_else(|| TestCaseError::fail("unbalanced"))?
                        .into_vec()
                };
                prop_assert_eq!(&b[name.0..name.1], &args[0][..]);
                match key {
                    Some(k) => {
                        prop_assert!(k.0 <= k.1 && k.1 <= len);
                        prop_assert_eq!(&b[k.0..k.1], &args[1][..]);
                    }
                    None => prop_assert_eq!(args.len(), 1),
                }
            }
            Scan::Incomplete => {
                if b.first() == Some(&b'*') {
                    prop_assert!(!matches!(parse(&bytes), Ok(Some(_))));
                } else {
                    prop_assert!(!b.contains(&b'\n'));
                }
            }
            Scan::Other => {}
        }
        Ok(())
    }

    fn check_reply(b: &[u8]) -> Result<(), TestCaseError> {
        let l = Limits::default();
        let r = reply_len(b, &l);
        // Resuming after every prefix answers as a fresh call does.
        let mut progress = Progress::default();
        for cut in 0..=b.len() {
            let resumed = reply_len_resume(&b[..cut], &l, &mut progress);
            prop_assert_eq!(&resumed, &reply_len(&b[..cut], &l), "cut {}", cut);
            if !matches!(resumed, Ok(None)) {
                progress = Progress::default();
            }
        }
        let f = frame_len(b, &l);
        if let Ok(Some(n)) = r {
            prop_assert!(n <= b.len());
            prop_assert_eq!(&f, &Ok(Some(n)));
        }
        if let Ok(Some(n)) = f {
            prop_assert_eq!(r, Ok(Some(n)));
        }
        if let Ok(None) = r {
            prop_assert!(!matches!(f, Ok(Some(_))));
        }
        Ok(())
    }

    #[test]
    fn delimits_commands_like_the_encoder() {
        let mut b = BytesMut::new();
        encode_command(&["SET", "key", "value"], &mut b);
        encode_command(&["GET", "key"], &mut b);
        let first = match scan_command(&b, MAX_BULK) {
            Scan::Complete { len, name, key } => {
                assert_eq!(&b[name.0..name.1], b"SET");
                assert_eq!(&b[key.unwrap().0..key.unwrap().1], b"key");
                len
            }
            other => panic!("{other:?}"),
        };
        match scan_command(&b[first..], MAX_BULK) {
            Scan::Complete { len, key, .. } => {
                assert_eq!(first + len, b.len());
                assert_eq!(&b[first + key.unwrap().0..first + key.unwrap().1], b"key");
            }
            other => panic!("{other:?}"),
        }
        // Every strict prefix is incomplete.
        for cut in 0..first {
            assert_eq!(scan_command(&b[..cut], MAX_BULK), Scan::Incomplete, "{cut}");
        }
        for bad in [
            &b"GET k\r\n"[..],
            b"*0\r\n",
            b"*-1\r\n",
            b"*1\r\n+OK\r\n",
            b"*01\r\n$1\r\na\r\n",
            b"*1\r\n$01\r\na\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"*1\r\n$3\r\nabcXY",
            b"*1\r\n$3\r\nabcX",
            b"*1\r\n$1000\r\n",
            b"*1\r\n$1234567890123456789\r\n",
        ] {
            let got = scan_command(bad, 100);
            assert_eq!(got, Scan::Other, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn inline_commands_in_plain_form_only() {
        let ok = |s: &[u8], name: &[u8], key: Option<&[u8]>| match scan(s, MAX_BULK, 64) {
            Scan::Complete {
                len,
                name: n,
                key: k,
            } => {
                assert_eq!(len, s.len(), "{s:?}");
                assert_eq!(&s[n.0..n.1], name);
                assert_eq!(k.map(|k| &s[k.0..k.1]), key);
            }
            other => panic!("{s:?}: {other:?}"),
        };
        ok(b"PING\r\n", b"PING", None);
        ok(b"PING\n", b"PING", None);
        ok(b"  get   k1  \r\n", b"get", Some(b"k1"));
        ok(b"SET k v\r\n", b"SET", Some(b"k"));
        for other in [
            &b"\r\n"[..],
            b"   \n",
            b"SET k \"v w\"\r\n",
            b"SET k 'v'\r\n",
            b"SET\tk v\r\n",
            b"GET k\rX\n",
            b"GET \x00k\r\n",
            b"GET \xffk\r\n",
        ] {
            assert_eq!(scan(other, MAX_BULK, 64), Scan::Other, "{other:?}");
        }
        for incomplete in [&b"PIN"[..], b"PING\r", b"GET k"] {
            assert_eq!(scan(incomplete, MAX_BULK, 64), Scan::Incomplete);
        }
        // Longer than the inline limit: the full parser decides.
        let long = [b'a'; 70];
        assert_eq!(scan(&long, MAX_BULK, 64), Scan::Other);
        let mut line = long.to_vec();
        line.extend_from_slice(b"\r\n");
        assert_eq!(scan(&line, MAX_BULK, 64), Scan::Other);
    }

    #[test]
    fn reply_lengths_match_the_frame_parser() {
        let l = Limits::default();
        for r in [
            &b"+OK\r\n"[..],
            b"-ERR no\r\n",
            b":12\r\n",
            b":-9223372036854775808\r\n",
            b"$3\r\nabc\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
            b"*0\r\n",
            b"*-1\r\n",
            b"*4\r\n$1\r\na\r\n$-1\r\n-ERR x\r\n+b\r\n",
            b"*2\r\n*1\r\n+a\r\n$0\r\n\r\n",
            b"*1\r\n%1\r\n+a\r\n+b\r\n",
            b"%1\r\n+a\r\n+b\r\n",
            b"_\r\n",
        ] {
            let mut two = r.to_vec();
            two.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(reply_len(&two, &l).unwrap(), Some(r.len()), "{r:?}");
            assert_eq!(frame_len(r, &l).unwrap(), Some(r.len()));
            for cut in 0..r.len() {
                assert_eq!(reply_len(&r[..cut], &l).unwrap(), None, "{r:?} {cut}");
            }
        }
        for bad in [
            &b"$3\r\nabcXY"[..],
            b":12a\r\n",
            b":99999999999999999999\r\n",
            b"+a\nb\r\n",
            b"*2\r\n:x\r\n+a\r\n",
            b"*1\r\n$2\r\nabc\r\n",
        ] {
            assert!(reply_len(bad, &l).is_err(), "{bad:?}");
        }
    }

    /// `XRANGE`-like: `n` entries `[id, [field, value]]`.
    fn nested_reply(n: usize) -> Vec<u8> {
        let mut b = format!("*{n}\r\n").into_bytes();
        for i in 0..n {
            let id = format!("{}-0", 1_700_000_000_000u64 + i as u64);
            let v = format!("value-{i}");
            b.extend_from_slice(
                format!(
                    "*2\r\n${}\r\n{id}\r\n*2\r\n$5\r\nfield\r\n${}\r\n{v}\r\n",
                    id.len(),
                    v.len()
                )
                .as_bytes(),
            );
        }
        b
    }

    /// A nested reply (which the flat scan leaves to the frame scan) arriving in 4 KiB reads
    /// is measured about once, not once per read; answers are `reply_len`'s all along.
    #[test]
    fn nested_reply_in_small_reads_is_scanned_once() {
        let l = Limits::default();
        for b in [nested_reply(100_000), {
            // RESP3: a map of arrays, after a flat start the flat scan gives up on.
            let mut b = b"*3\r\n:1\r\n:2\r\n".to_vec();
            b.extend_from_slice(&nested_reply(20_000));
            b
        }] {
            let mut progress = Progress::default();
            let mut at = 0;
            let mut reads = 0;
            while at < b.len() {
                at = (at + 4096).min(b.len());
                reads += 1;
                let got = reply_len_resume(&b[..at], &l, &mut progress);
                assert_eq!(got, Ok((at == b.len()).then_some(b.len())), "at {at}");
                if reads % 97 == 0 {
                    assert_eq!(got, reply_len(&b[..at], &l));
                }
            }
            let examined = progress.deep_examined();
            assert!(examined > 0, "the frame scan measured it");
            assert!(
                examined <= 2 * b.len() as u64,
                "examined {examined} of {}",
                b.len()
            );
        }
    }

    /// Flat arrays stay on the flat scan, resumed too.
    #[test]
    fn flat_array_stays_flat() {
        let l = Limits::default();
        let mut b = b"*50000\r\n".to_vec();
        for i in 0..50_000 {
            let v = format!("v{i}");
            b.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
        }
        let mut progress = Progress::default();
        for at in (0..b.len()).step_by(4096).skip(1) {
            assert_eq!(reply_len_resume(&b[..at], &l, &mut progress), Ok(None));
        }
        assert_eq!(reply_len_resume(&b, &l, &mut progress), Ok(Some(b.len())));
        assert_eq!(progress.deep_examined(), 0);
    }

    fn limits_with(max_bulk_len: u64, max_line: usize) -> Limits {
        let mut l = Limits::default();
        l.max_bulk_len = max_bulk_len;
        l.max_line = max_line;
        l
    }

    /// The short paths answer as the general scans do, at every cut point of `b`.
    fn check_short_paths(b: &[u8], max_bulk: u64, limits: &Limits) -> Result<(), TestCaseError> {
        for cut in 0..=b.len() {
            let p = &b[..cut];
            prop_assert_eq!(
                scan_command(p, max_bulk),
                scan_command_any(p, max_bulk),
                "cut {}",
                cut
            );
            if let Some(s) = scan_command_short(p, max_bulk) {
                prop_assert_eq!(s, scan_command_any(p, max_bulk), "cut {}", cut);
            }
            prop_assert_eq!(
                reply_len(p, limits),
                reply_len_any(p, limits),
                "cut {}",
                cut
            );
            if let Some(n) = short_reply(p, limits) {
                prop_assert_eq!(reply_len_any(p, limits), Ok(Some(n)), "cut {}", cut);
            }
        }
        Ok(())
    }

    #[test]
    fn short_paths_on_usual_traffic() {
        let l = Limits::default();
        let mut b = BytesMut::new();
        encode_command(&["SET", "key:__rand_int__", "xxx"], &mut b);
        encode_command(&["GET", "key:__rand_int__"], &mut b);
        encode_command(&["PING"], &mut b);
        encode_command(&["MSET", "a", "1", "b", "2", "c", "3", "d", "4"], &mut b);
        check_short_paths(&b, MAX_BULK, &l).unwrap();
        let first = match scan_command_short(&b, MAX_BULK) {
            Some(Scan::Complete { len, .. }) => len,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            scan_command_short(&b[first..], MAX_BULK),
            Some(Scan::Complete { .. })
        ));
        // A bulk longer than the limit: the general scan says Other.
        assert_eq!(scan_command_short(&b, 2), None);
        assert_eq!(scan_command(&b, 2), Scan::Other);
        for r in [
            &b"+OK\r\n"[..],
            b"+QUEUED\r\n",
            b"-ERR wrong\r\n",
            b"$-1\r\n",
            b"$3\r\nxxx\r\n",
            b"$0\r\n\r\n",
            b"+\r\n",
        ] {
            let mut two = r.to_vec();
            two.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(short_reply(&two, &l), Some(r.len()), "{r:?}");
            check_short_paths(&two, MAX_BULK, &l).unwrap();
        }
        // Every single-byte corruption of usual traffic: the short path agrees or abstains.
        for at in 0..b.len() {
            for c in [b'\r', b'\n', b'$', b'*', b'-', b'0', b'1', b'9', b'x', 0] {
                let mut bad = b.to_vec();
                bad[at] = c;
                for from in [0, first] {
                    let p = &bad[from..];
                    assert_eq!(
                        scan_command(p, MAX_BULK),
                        scan_command_any(p, MAX_BULK),
                        "{at} {c}"
                    );
                    assert_eq!(reply_len(p, &l), reply_len_any(p, &l), "{at} {c}");
                }
            }
        }
        for r in [
            &b"+a\rb\r\n"[..],
            b"+a\nb\r\n",
            b"+0123456789abcdef\r\n",
            b"$01\r\na\r\n",
        ] {
            assert_eq!(short_reply(r, &l), None, "{r:?}");
            check_short_paths(r, MAX_BULK, &l).unwrap();
        }
    }

    proptest! {
        #[test]
        fn short_paths_agree_on_commands(
            args in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..4),
                    proptest::collection::vec(any::<u8>(), 95..105),
                ],
                1..12,
            ),
            max_bulk in prop_oneof![Just(MAX_BULK), 0u64..110],
            tail in proptest::collection::vec(any::<u8>(), 0..4),
            flip in proptest::option::of((
                any::<proptest::sample::Index>(),
                prop_oneof![
                    Just(b'\r'), Just(b'\n'), Just(b'$'), Just(b'*'), Just(b'0'),
                    Just(b'1'), Just(b'9'), any::<u8>(),
                ],
            )),
        ) {
            let mut b = BytesMut::new();
            encode_command(&args, &mut b);
            b.extend_from_slice(&tail);
            if let Some((at, c)) = flip {
                let at = at.index(b.len());
                b[at] = c;
            }
            let limits = limits_with(max_bulk, Limits::default().max_line);
            check_short_paths(&b, max_bulk, &limits)?;
        }

        #[test]
        fn short_paths_agree_on_replies(
            vals in proptest::collection::vec(
                prop_oneof![
                    "[a-zA-Z0-9 \r\n]{0,20}".prop_map(|s| Value::SimpleString(Bytes::from(s))),
                    "[a-zA-Z0-9 ]{0,20}".prop_map(|s| Value::Error(Bytes::from(format!("ERR {s}")))),
                    proptest::collection::vec(any::<u8>(), 0..4).prop_map(|v| Value::BulkString(Bytes::from(v))),
                    proptest::collection::vec(any::<u8>(), 97..103).prop_map(|v| Value::BulkString(Bytes::from(v))),
                    Just(Value::NullBulkString),
                    any::<i64>().prop_map(Value::Integer),
                ],
                1..4,
            ),
            max_line in prop_oneof![Just(Limits::default().max_line), 0usize..20],
            max_bulk in prop_oneof![Just(Limits::default().max_bulk_len), 0u64..110],
        ) {
            let mut b = BytesMut::new();
            for v in &vals {
                ferry_resp::encode(v, ferry_resp::Protocol::Resp2, &mut b);
            }
            let limits = limits_with(max_bulk, max_line);
            check_short_paths(&b, max_bulk, &limits)?;
        }

        #[test]
        fn short_paths_on_resp_like_bytes(
            parts in proptest::collection::vec(prop_oneof![
                Just(&b"*"[..]), Just(&b"$"[..]), Just(&b"+"[..]), Just(&b"-"[..]),
                Just(&b"\r\n"[..]), Just(&b"\r"[..]), Just(&b"\n"[..]), Just(&b"0"[..]),
                Just(&b"1"[..]), Just(&b"2"[..]), Just(&b"3"[..]), Just(&b"9"[..]),
                Just(&b"-1"[..]), Just(&b"a"[..]), Just(&b"GET"[..]),
                Just(&b"*2\r\n"[..]), Just(&b"$3\r\n"[..]), Just(&b"$10\r\n"[..]),
            ], 0..24),
        ) {
            let b: Vec<u8> = parts.concat();
            check_short_paths(&b, MAX_BULK, &Limits::default())?;
            check_short_paths(&b, 2, &limits_with(2, 3))?;
        }

        #[test]
        fn scanner_agrees_with_the_frame_parser(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
            cut in 0usize..400,
        ) {
            let mut b = BytesMut::new();
            encode_command(&args, &mut b);
            let whole = frame_len(&b, &Limits::default()).unwrap().unwrap();
            match scan_command(&b, MAX_BULK) {
                Scan::Complete { len, name, .. } => {
                    prop_assert_eq!(len, whole);
                    prop_assert_eq!(&b[name.0..name.1], &args[0][..]);
                }
                other => prop_assert!(false, "{:?}", other),
            }
            check_scan(&b)?;
            let cut = cut.min(b.len() - 1);
            prop_assert_eq!(scan_command(&b[..cut], MAX_BULK), Scan::Incomplete);
            check_scan(&b[..cut])?;
        }

        #[test]
        fn inline_scanner_agrees_with_split_args(
            words in proptest::collection::vec("[!-~]{1,8}", 1..5),
            gaps in proptest::collection::vec(1usize..3, 5),
            crlf in any::<bool>(),
        ) {
            let mut line = String::new();
            for (w, g) in words.iter().zip(&gaps) {
                line.push_str(w);
                line.push_str(&" ".repeat(*g));
            }
            line.push_str(if crlf { "\r\n" } else { "\n" });
            check_scan(line.as_bytes())?;
            // (A line starting with `*` is a multibulk header.)
            if !line.contains(['"', '\'']) && !line.starts_with('*') {
                let complete = matches!(scan(line.as_bytes(), MAX_BULK, MAX_INLINE), Scan::Complete { .. });
                prop_assert!(complete);
            }
        }

        #[test]
        fn scanners_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            check_scan(&b)?;
            check_reply(&b)?;
        }

        #[test]
        fn scanners_on_resp_like_bytes(
            parts in proptest::collection::vec(prop_oneof![
                Just(&b"*"[..]), Just(&b"$"[..]), Just(&b"+"[..]), Just(&b":"[..]),
                Just(&b"-"[..]), Just(&b"%"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..]),
                Just(&b"\n"[..]), Just(&b"0"[..]), Just(&b"1"[..]), Just(&b"2"[..]),
                Just(&b"3"[..]), Just(&b"-1"[..]), Just(&b"a"[..]), Just(&b"GET"[..]),
                Just(&b" "[..]),
            ], 0..24),
        ) {
            let b: Vec<u8> = parts.concat();
            check_scan(&b)?;
            check_reply(&b)?;
        }

        #[test]
        fn reply_len_agrees_on_encoded_values(
            vals in proptest::collection::vec(
                prop_oneof![
                    any::<i64>().prop_map(Value::Integer),
                    "[a-zA-Z0-9 ]{0,12}".prop_map(|s| Value::SimpleString(Bytes::from(s))),
                    "[a-zA-Z0-9 ]{0,12}".prop_map(|s| Value::Error(Bytes::from(format!("ERR {s}")))),
                    proptest::collection::vec(any::<u8>(), 0..20).prop_map(|v| Value::BulkString(Bytes::from(v))),
                    Just(Value::NullBulkString),
                    Just(Value::Null),
                ]
                .prop_recursive(2, 16, 6, |inner| {
                    proptest::collection::vec(inner, 0..6).prop_map(Value::Array)
                }),
                1..4,
            ),
            cut in 0usize..200,
            resp3 in any::<bool>(),
        ) {
            let proto = if resp3 { ferry_resp::Protocol::Resp3 } else { ferry_resp::Protocol::Resp2 };
            let mut b = BytesMut::new();
            for v in &vals {
                ferry_resp::encode(v, proto, &mut b);
            }
            let first = frame_len(&b, &Limits::default()).unwrap().unwrap();
            prop_assert_eq!(reply_len(&b, &Limits::default()), Ok(Some(first)));
            let cut = cut.min(b.len());
            check_reply(&b[..cut])?;
            check_reply(&b[cut..])?;
        }
    }
}
