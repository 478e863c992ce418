//! Commands as a server reads them: a RESP array of bulk strings, or an inline line.
//!
//! The reader follows Redis's `processMultibulkBuffer` / `processInlineBuffer` (networking.c)
//! step by step, including its limits and error texts, and it is resumable: arguments of a
//! command that is still incomplete are split off the input as soon as they are complete, so
//! a large pipelined command is scanned once.

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::parse::parse_i64;
use crate::ParseError;

/// Arguments kept inline in a [`Command`] before spilling to the heap (3: `SET key value`
/// fits, and an [`Event`](crate::server::Event) stays small enough to be moved without a
/// `memcpy` call; 4 costs about 150 instructions more per command).
pub const INLINE_ARGS: usize = 3;

/// Most arguments a command may have to be read by the one-pass fast path.
const FAST_ARGS: usize = 8;

/// Identifies a command on its connection; replies are matched by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(pub(crate) u64);

impl CommandId {
    /// The sequence number (0 for the first command on the connection).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// One command: its name and arguments as zero-copy slices of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Command {
    /// Which command this is (pass it back to `send_reply`).
    pub id: CommandId,
    /// `args[0]` is the command name (any case), the rest its arguments. Never empty.
    pub args: SmallVec<[Bytes; INLINE_ARGS]>,
}

impl Command {
    /// The command name as sent (any case).
    pub fn name(&self) -> &[u8] {
        self.args.first().map_or(&[][..], |b| &b[..])
    }

    /// Whether the name equals `name` ignoring ASCII case.
    pub fn is(&self, name: &str) -> bool {
        self.name().eq_ignore_ascii_case(name.as_bytes())
    }

    /// For a `HELLO`: the parsed options (the connection already validated them).
    pub fn hello(&self) -> Option<Hello> {
        if !self.is("hello") {
            return None;
        }
        parse_hello(&self.args).ok()
    }
}

/// The options of a `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hello {
    /// The requested version (`None`: keep the current one).
    pub protover: Option<crate::Protocol>,
    /// `AUTH username password`.
    pub auth: Option<(Bytes, Bytes)>,
    /// `SETNAME clientname`.
    pub setname: Option<Bytes>,
}

/// Why a HELLO is refused (before the application sees it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HelloError {
    NotInteger,
    NoProto,
    /// Index of the offending option.
    Syntax(usize),
}

/// Validates HELLO the way Redis's `helloCommand` does.
pub(crate) fn parse_hello(args: &[Bytes]) -> Result<Hello, HelloError> {
    let mut h = Hello::default();
    let mut j = 1;
    if args.len() >= 2 {
        let v = string2ll(&args[1]).ok_or(HelloError::NotInteger)?;
        h.protover = Some(crate::Protocol::from_version(v).ok_or(HelloError::NoProto)?);
        j = 2;
    }
    while j < args.len() {
        let more = args.len() - 1 - j;
        let opt = &args[j];
        if opt.eq_ignore_ascii_case(b"auth") && more >= 2 {
            h.auth = Some((args[j + 1].clone(), args[j + 2].clone()));
            j += 3;
        } else if opt.eq_ignore_ascii_case(b"setname") && more >= 1 {
            h.setname = Some(args[j + 1].clone());
            j += 2;
        } else {
            return Err(HelloError::Syntax(j));
        }
    }
    Ok(h)
}

/// Limits of the command reader (a subset of [`ServerConfig`](crate::ServerConfig)).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadLimits {
    pub max_bulk_len: u64,
    pub max_multibulk_len: u64,
    pub max_inline: usize,
    pub max_query: usize,
}

#[derive(Debug, Default)]
pub(crate) struct CommandReader {
    /// Arguments still expected for the multibulk in progress (0: between commands).
    remaining: u64,
    /// Length of the bulk being read, once its header was parsed.
    bulk: Option<u64>,
    args: SmallVec<[Bytes; INLINE_ARGS]>,
    arg_bytes: usize,
    /// Bytes at the front of the input known to hold no `\n` (an incomplete inline
    /// command), so that each read searches only its new bytes.
    inline_scanned: usize,
    /// Tests: read step by step only (the reference for the fast path).
    #[cfg(test)]
    slow: bool,
}

/// `t digits \r ?` at `pos` (the byte after the CR is skipped unread, as Redis does): the
/// number (no sign, no leading zero: what `string2ll` accepts and is not negative) and the
/// position after the line. `None` for anything else.
#[inline]
fn header(b: &[u8], pos: usize, t: u8) -> Option<(u64, usize)> {
    if *b.get(pos)? != t {
        return None;
    }
    let start = pos + 1;
    let mut i = start;
    let mut v: u64 = 0;
    loop {
        let c = *b.get(i)?;
        if c == b'\r' {
            break;
        }
        if !c.is_ascii_digit() || i - start >= 18 {
            return None;
        }
        v = v * 10 + u64::from(c - b'0');
        i += 1;
    }
    if i == start || i + 2 > b.len() || (b[start] == b'0' && i - start > 1) {
        return None;
    }
    Some((v, i + 2))
}

/// Reads a multibulk command that is complete in `input` in one pass: one split of the input
/// and one slice per argument. `None`, with `input` untouched, for anything else (incomplete,
/// malformed, empty, many arguments, at a limit): the step-by-step reader then takes over and
/// gives Redis's exact answer.
fn fast(input: &mut BytesMut, l: &ReadLimits) -> Option<SmallVec<[Bytes; INLINE_ARGS]>> {
    let b: &[u8] = input;
    let (n, mut pos) = header(b, 0, b'*')?;
    if n == 0 || n > FAST_ARGS as u64 || n > l.max_multibulk_len {
        return None;
    }
    let n = n as usize;
    // Offsets fit in u32: anything larger is not complete in a buffer below 4 GiB anyway.
    if b.len() > u32::MAX as usize {
        return None;
    }
    let mut spans = [(0u32, 0u32); FAST_ARGS];
    let mut bytes: u64 = 0;
    for (i, span) in spans[..n].iter_mut().enumerate() {
        let (len, p) = header(b, pos, b'$')?;
        if len > l.max_bulk_len {
            return None;
        }
        // The query buffer limit, computed as the step-by-step reader does.
        let overhead = (i + 1) * core::mem::size_of::<Bytes>();
        if bytes.saturating_add(len).saturating_add(overhead as u64) > l.max_query as u64 {
            return None;
        }
        let end = p.checked_add(len as usize)?;
        if end.checked_add(2)? > b.len() {
            return None;
        }
        *span = (p as u32, end as u32);
        bytes += len;
        pos = end + 2;
    }
    let frame = input.split_to(pos).freeze();
    let mut args = SmallVec::with_capacity(n);
    let (a0, z0) = (spans[0].0 as usize, spans[0].1 as usize);
    let name = static_name(&frame[a0..z0]);
    let named = name.is_some();
    if let Some(name) = name {
        args.push(name);
        if n == 1 {
            return Some(args);
        }
    }
    for &(a, z) in &spans[usize::from(named)..n - 1] {
        args.push(frame.slice(a as usize..z as usize));
    }
    // The last argument reuses the frame's reference.
    let (a, z) = spans[n - 1];
    let mut last = frame;
    last.truncate(z as usize);
    last.advance(a as usize);
    args.push(last);
    Some(args)
}

/// Common command names as static `Bytes`: the same bytes without a reference to the input
/// buffer (two atomic reference-count updates fewer per command).
fn static_name(name: &[u8]) -> Option<Bytes> {
    macro_rules! names {
        ($($n:literal)*) => {
            match name {
                $($n => Some(Bytes::from_static($n)),)*
                _ => None,
            }
        };
    }
    if name.len() != 3 {
        return None;
    }
    names!(b"GET" b"SET" b"get" b"set" b"DEL" b"del")
}

fn find_cr(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\r', b)
}

/// Redis's `string2ll`: no `+`, no leading zeros, no `-0`.
fn string2ll(s: &[u8]) -> Option<i64> {
    match s {
        [] => None,
        [b'0'] => Some(0),
        [b'-', rest @ ..] if rest.first().is_some_and(|c| (b'1'..=b'9').contains(c)) => {
            parse_i64(s)
        }
        [c, ..] if (b'1'..=b'9').contains(c) => parse_i64(s),
        _ => None,
    }
}

impl CommandReader {
    /// Bytes the input must hold before the command being read can progress: the rest of a
    /// bulk argument whose length line was read (payload and CRLF), else 0.
    pub(crate) fn wanted(&self) -> usize {
        self.bulk.map_or(0, |n| {
            usize::try_from(n.saturating_add(2)).unwrap_or(usize::MAX)
        })
    }

    /// The next complete command (its arguments), `Ok(None)` when more input is needed.
    /// Empty commands (`*0`, `*-1`, blank inline lines) are skipped like Redis does.
    pub fn next(
        &mut self,
        input: &mut BytesMut,
        l: &ReadLimits,
    ) -> Result<Option<SmallVec<[Bytes; INLINE_ARGS]>>, ParseError> {
        loop {
            if self.remaining == 0 {
                let Some(&first) = input.first() else {
                    return Ok(None);
                };
                if first != b'*' {
                    match self.inline(input, l)? {
                        None => return Ok(None),
                        Some(args) if args.is_empty() => continue,
                        Some(args) => return Ok(Some(args)),
                    }
                }
                #[cfg(test)]
                let try_fast = !self.slow;
                #[cfg(not(test))]
                let try_fast = true;
                if try_fast {
                    if let Some(args) = fast(input, l) {
                        return Ok(Some(args));
                    }
                }
                let Some(cr) = find_cr(input) else {
                    if input.len() > l.max_inline {
                        return Err(ParseError::TooBigMultibulkCountString);
                    }
                    return Ok(None);
                };
                if cr + 2 > input.len() {
                    return Ok(None);
                }
                let n = match string2ll(&input[1..cr]) {
                    Some(n) if n as i128 <= l.max_multibulk_len as i128 => n,
                    _ => return Err(ParseError::InvalidMultibulkLength),
                };
                let _ = input.split_to(cr + 2);
                if n <= 0 {
                    continue;
                }
                self.remaining = n as u64;
                self.args.clear();
                self.arg_bytes = 0;
            }
            while self.remaining > 0 {
                let len = match self.bulk {
                    Some(len) => len,
                    None => {
                        let Some(cr) = find_cr(input) else {
                            if input.len() > l.max_inline {
                                return Err(ParseError::TooBigBulkCountString);
                            }
                            return Ok(None);
                        };
                        if cr + 2 > input.len() {
                            return Ok(None);
                        }
                        if input[0] != b'$' {
                            return Err(ParseError::ExpectedBulk(input[0]));
                        }
                        let len = match string2ll(&input[1..cr]) {
                            Some(n) if n >= 0 && n as u64 <= l.max_bulk_len => n as u64,
                            _ => return Err(ParseError::InvalidBulkLength),
                        };
                        // Query buffer limit: what this command would hold once complete.
                        let overhead = (self.args.len() + 1) * core::mem::size_of::<Bytes>();
                        if (self.arg_bytes as u64)
                            .saturating_add(len)
                            .saturating_add(overhead as u64)
                            > l.max_query as u64
                        {
                            return Err(ParseError::QueryBufferLimit);
                        }
                        let _ = input.split_to(cr + 2);
                        self.bulk = Some(len);
                        len
                    }
                };
                if (input.len() as u64) < len + 2 {
                    return Ok(None);
                }
                let arg = input.split_to(len as usize).freeze();
                // Redis skips the two bytes after the payload without looking at them.
                let _ = input.split_to(2);
                self.arg_bytes += arg.len();
                self.args.push(arg);
                self.bulk = None;
                self.remaining -= 1;
            }
            return Ok(Some(core::mem::take(&mut self.args)));
        }
    }

    fn inline(
        &mut self,
        input: &mut BytesMut,
        l: &ReadLimits,
    ) -> Result<Option<SmallVec<[Bytes; INLINE_ARGS]>>, ParseError> {
        // `inline_scanned` is only a hint: a shorter input than last time was not appended
        // to, so it is searched whole.
        let from = if self.inline_scanned <= input.len() {
            self.inline_scanned
        } else {
            0
        };
        let Some(nl) = memchr::memchr(b'\n', &input[from..]).map(|i| from + i) else {
            if input.len() > l.max_inline {
                self.inline_scanned = 0;
                return Err(ParseError::TooBigInlineRequest);
            }
            self.inline_scanned = input.len();
            return Ok(None);
        };
        self.inline_scanned = 0;
        let end = if nl > 0 && input[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let line = input.split_to(nl + 1).freeze();
        let args = split_args(&line.slice(..end)).ok_or(ParseError::UnbalancedQuotes)?;
        Ok(Some(args))
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Redis's `sdssplitargs`: whitespace-separated words, `"..."` with `\n \r \t \b \a \xHH`
/// escapes, `'...'` with `\'`; a closing quote must be followed by whitespace or the end.
/// Unquoted words are zero-copy slices of `line`. `None` on unbalanced quotes.
pub fn split_args(line: &Bytes) -> Option<SmallVec<[Bytes; INLINE_ARGS]>> {
    // C string semantics: a NUL ends the line.
    let stop = memchr::memchr(0, line).unwrap_or(line.len());
    let s = &line[..stop];
    let mut out = SmallVec::new();
    let mut p = 0;
    loop {
        while p < s.len() && is_space(s[p]) {
            p += 1;
        }
        if p >= s.len() {
            return Some(out);
        }
        let start = p;
        let mut quoted = false;
        let mut cur: alloc::vec::Vec<u8> = alloc::vec::Vec::new();
        let (mut inq, mut insq) = (false, false);
        loop {
            let c = s.get(p).copied();
            if inq {
                match c {
                    None => return None,
                    Some(b'\\')
                        if s.get(p + 1) == Some(&b'x')
                            && s.get(p + 2).and_then(|&c| hex(c)).is_some()
                            && s.get(p + 3).and_then(|&c| hex(c)).is_some() =>
                    {
                        let h = hex(s[p + 2]).unwrap_or(0) * 16 + hex(s[p + 3]).unwrap_or(0);
                        cur.push(h);
                        p += 3;
                    }
                    Some(b'\\') if p + 1 < s.len() => {
                        p += 1;
                        cur.push(match s[p] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            o => o,
                        });
                    }
                    Some(b'"') => {
                        if s.get(p + 1).is_some_and(|&c| !is_space(c)) {
                            return None;
                        }
                        p += 1;
                        break;
                    }
                    Some(o) => cur.push(o),
                }
            } else if insq {
                match c {
                    None => return None,
                    Some(b'\\') if s.get(p + 1) == Some(&b'\'') => {
                        p += 1;
                        cur.push(b'\'');
                    }
                    Some(b'\'') => {
                        if s.get(p + 1).is_some_and(|&c| !is_space(c)) {
                            return None;
                        }
                        p += 1;
                        break;
                    }
                    Some(o) => cur.push(o),
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => {
                        inq = true;
                        quoted = true;
                    }
                    Some(b'\'') => {
                        insq = true;
                        quoted = true;
                    }
                    Some(o) => cur.push(o),
                }
            }
            p += 1;
        }
        if quoted {
            out.push(Bytes::from(cur));
        } else {
            out.push(line.slice(start..start + cur.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn limits() -> ReadLimits {
        ReadLimits {
            max_bulk_len: 512 << 20,
            max_multibulk_len: i32::MAX as u64,
            max_inline: 64 * 1024,
            max_query: 1 << 30,
        }
    }

    fn read_all(data: &[u8]) -> Result<Vec<Vec<Bytes>>, ParseError> {
        let mut r = CommandReader::default();
        let mut b = BytesMut::from(data);
        let mut out = Vec::new();
        while let Some(a) = r.next(&mut b, &limits())? {
            out.push(a.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn multibulk_and_inline() {
        let v =
            read_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n  set a \"b c\"\n*0\r\n\r\n").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], [Bytes::from_static(b"GET"), Bytes::from_static(b"k")]);
        assert_eq!(v[1], [Bytes::from_static(b"PING")]);
        assert_eq!(
            v[2],
            [
                Bytes::from_static(b"set"),
                Bytes::from_static(b"a"),
                Bytes::from_static(b"b c")
            ]
        );
    }

    #[test]
    fn split_args_like_sdssplitargs() {
        let a = split_args(&Bytes::from_static(b"a \"\\x41\\n\" 'it\\'s' \"\"")).unwrap();
        assert_eq!(&a[..], [&b"a"[..], b"A\n", b"it's", b""]);
        assert!(split_args(&Bytes::from_static(b"\"abc")).is_none());
        assert!(split_args(&Bytes::from_static(b"\"abc\"x")).is_none());
        assert!(split_args(&Bytes::from_static(b"'abc")).is_none());
    }

    #[test]
    fn every_split_point_gives_the_same_commands() {
        let data =
            b"*3\r\n$3\r\nSET\r\n$5\r\nhello\r\n$5\r\nworld\r\nECHO 'x y'\r\n*1\r\n$4\r\nPING\r\n";
        let whole = read_all(data).unwrap();
        for at in 0..data.len() {
            let mut r = CommandReader::default();
            let mut b = BytesMut::from(&data[..at]);
            let mut out = Vec::new();
            while let Some(a) = r.next(&mut b, &limits()).unwrap() {
                out.push(a.to_vec());
            }
            b.extend_from_slice(&data[at..]);
            while let Some(a) = r.next(&mut b, &limits()).unwrap() {
                out.push(a.to_vec());
            }
            assert_eq!(out, whole, "split at {at}");
        }
    }

    fn read_with(
        slow: bool,
        data: &[u8],
        at: usize,
        l: &ReadLimits,
    ) -> (Vec<Vec<Bytes>>, Option<ParseError>) {
        let mut r = CommandReader {
            slow,
            ..CommandReader::default()
        };
        let mut b = BytesMut::from(&data[..at]);
        let mut out = Vec::new();
        for part in [&data[at..], &[][..]] {
            loop {
                match r.next(&mut b, l) {
                    Ok(Some(a)) => out.push(a.to_vec()),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
            b.extend_from_slice(part);
        }
        (out, None)
    }

    proptest::proptest! {
        /// The one-pass reader gives exactly what the step-by-step one gives (commands and
        /// errors), on valid and damaged input, whole or split anywhere, under tight limits.
        #[test]
        fn fast_path_matches_step_by_step(
            cmds in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12), 0..20),
                1..6,
            ),
            names in proptest::collection::vec(0usize..8, 6),
            damage in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 0..3),
            at in 0usize..4096,
            tight in proptest::prelude::any::<bool>(),
        ) {
            let mut data = Vec::new();
            let mut cmds = cmds;
            // Some commands named like the common ones (static names), alone or with arguments.
            for (c, &k) in cmds.iter_mut().zip(&names) {
                let known: [&[u8]; 5] = [b"GET", b"set", b"DEL", b"PING", b"GeT"];
                if let (Some(name), Some(first)) = (known.get(k), c.first_mut()) {
                    *first = name.to_vec();
                }
            }
            for c in &cmds {
                data.extend_from_slice(alloc::format!("*{}\r\n", c.len()).as_bytes());
                for a in c {
                    data.extend_from_slice(alloc::format!("${}\r\n", a.len()).as_bytes());
                    data.extend_from_slice(a);
                    data.extend_from_slice(b"\r\n");
                }
            }
            for (i, v) in damage {
                let n = data.len();
                data[i % n] = v;
            }
            let l = if tight {
                ReadLimits { max_bulk_len: 8, max_multibulk_len: 10, max_inline: 6, max_query: 150 }
            } else {
                limits()
            };
            let at = at % (data.len() + 1);
            let fast = read_with(false, &data, at, &l);
            let slow = read_with(true, &data, at, &l);
            proptest::prop_assert_eq!(fast, slow);
        }
    }

    #[test]
    fn redis_errors() {
        assert_eq!(read_all(b"*x\r\n"), Err(ParseError::InvalidMultibulkLength));
        assert_eq!(
            read_all(b"*3000000000\r\n"),
            Err(ParseError::InvalidMultibulkLength)
        );
        assert_eq!(
            read_all(b"*1\r\n$-1\r\n"),
            Err(ParseError::InvalidBulkLength)
        );
        assert_eq!(
            read_all(b"*1\r\n$600000000\r\n"),
            Err(ParseError::InvalidBulkLength)
        );
        assert_eq!(
            read_all(b"*1\r\n:1\r\n"),
            Err(ParseError::ExpectedBulk(b':'))
        );
        assert_eq!(read_all(b"set \"a\r\n"), Err(ParseError::UnbalancedQuotes));
        assert_eq!(
            read_all(&[b'a'; 70_000]),
            Err(ParseError::TooBigInlineRequest)
        );
        let mut big = alloc::vec![b'*'];
        big.extend_from_slice(&[b'1'; 70_000]);
        assert_eq!(read_all(&big), Err(ParseError::TooBigMultibulkCountString));
        let mut big = b"*1\r\n$".to_vec();
        big.extend_from_slice(&[b'1'; 70_000]);
        assert_eq!(read_all(&big), Err(ParseError::TooBigBulkCountString));
        assert_eq!(read_all(b"*-1\r\n*0\r\n").unwrap().len(), 0);
    }
}
