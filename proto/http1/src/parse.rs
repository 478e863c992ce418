//! Our own head parser: request heads, response heads and field sections (trailers,
//! `multipart` part headers), each in one pass over the bytes, sharing one field-line loop
//! ([`parse_fields`]).
//!
//! Why not httparse: with httparse, turning a typical browser request into a `Request` event
//! cost 1.33× httparse's own parse of the same bytes (4319 vs 3256 instructions per request
//! under callgrind; issue 3's budget is 1.2×): after httparse's pass over the bytes we walked
//! its field array again to build the index and find the framing fields, and httparse's field
//! loop costs ~160 instructions per field line (a byte-at-a-time name scan, a
//! runtime-dispatched vector call per value). Here names (letters and `-`) and values are read
//! eight bytes at a time (SWAR, safe code; the token table only for rarer name bytes; now
//! sixteen at a time, [`crate::scan`]), and each
//! field goes to a [`FieldSink`] as it is found, so the index and the framing facts are built
//! on the way: 3651 instructions per request, 1.12×. Response heads went the same way (a
//! typical nginx response into a `Response`: 2323 → 1481 instructions).
//!
//! Its verdicts are httparse 1.10's, byte for byte: the same `Complete`/`Partial`/error (the
//! same `httparse::Error` variant, as [`ParseError`]) for every input, the same method, target,
//! version, status, reason, field names and values, and the same head length (`tests` below
//! check it against httparse's `Request::parse`, `Response::parse` (default config) and `parse_headers` on
//! generated and mutated heads, and so does the fuzz target `http1_head_diff`). Like
//! httparse it accepts a bare LF as a line ending; it reports where it saw one
//! ([`LineEnds`], [`RawResponse::bare_lf`]), and [`crate::head`] rejects those heads (RFC 9112
//! §2.2), as before.

/// A parse that did not fail: done (with what it found), or more bytes are needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// The whole head (or section) was there.
    Complete(T),
    /// More bytes are needed.
    Partial,
}

/// Why bytes are not a head: httparse's error classes, one for one (its `Error` variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Invalid byte in a field name (whitespace before the colon, obs-fold).
    HeaderName,
    /// Invalid byte in a field value.
    HeaderValue,
    /// Invalid line ending (a CR not followed by LF).
    NewLine,
    /// Invalid status code or reason phrase.
    Status,
    /// Invalid method or request target.
    Token,
    /// More fields than allowed.
    TooManyHeaders,
    /// Invalid HTTP version.
    Version,
}

/// `tchar` (RFC 9110 §5.6.2): field name and method bytes.
use crate::encode::TCHAR as TOKEN;
use crate::encode::{not_alpha_dash, HIGH, ONES};

/// The high bit of each byte of `x` that is below `n` (`n` ≤ 0x80) or equal to DEL. Only the
/// lowest flagged byte is exact (a borrow can flag bytes above it), which is all we use.
#[inline(always)]
fn below_or_del(x: u64, n: u8) -> u64 {
    let lt = x.wrapping_sub(ONES * n as u64) & !x;
    let d = x ^ (ONES * 0x7f);
    let del = d.wrapping_sub(ONES) & !d;
    (lt | del) & HIGH
}

/// The length of the run of bytes at the start of `rest` that are neither below `n` nor DEL
/// (`n = 0x21`: request-target bytes; `n = 0x20`: field-value bytes but HTAB), and whether
/// any byte read (some may lie past the run) has its high bit set.
#[inline(always)]
fn run_len(rest: &[u8], n: u8) -> (usize, bool) {
    let mut len = 0;
    let mut high = 0;
    let mut words = rest.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        high |= w;
        let m = below_or_del(w, n);
        if m != 0 {
            return (len + (m.trailing_zeros() / 8) as usize, high & HIGH != 0);
        }
        len += 8;
    }
    for &b in words.remainder() {
        if b < n || b == 0x7f {
            break;
        }
        high |= u64::from(b);
        len += 1;
    }
    (len, high & HIGH != 0)
}

/// The length of the token at the start of `rest` (field-name bytes): eight bytes at a time
/// while they are letters and `-` (nearly every name), then through the table.
#[inline(always)]
fn token_len(rest: &[u8]) -> usize {
    let mut len = 0;
    let mut words = rest.chunks_exact(8);
    for w in &mut words {
        let m = not_alpha_dash(u64::from_le_bytes([
            w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7],
        ]));
        if m != 0 {
            len += (m.trailing_zeros() / 8) as usize;
            if rest.get(len) == Some(&b':') {
                return len;
            }
            break;
        }
        len += 8;
    }
    while let Some(&b) = rest.get(len) {
        if !TOKEN[b as usize] {
            break;
        }
        len += 1;
    }
    len
}

/// The length of the field name at the start of `rest` when it is letters and `-` followed by
/// `:` (nearly every name), read sixteen bytes at a time ([`crate::scan`]); `None` for
/// anything else.
#[inline(always)]
fn fast_name(rest: &[u8]) -> Option<usize> {
    let mut n = 0;
    loop {
        let m = crate::scan::name_stops(rest, n);
        if m != 0 {
            n += m.trailing_zeros() as usize;
            return (n != 0 && rest.get(n) == Some(&b':')).then_some(n);
        }
        n += 16;
    }
}

/// [`fast_name`]'s other cases: the length of the name (followed by `:`), or `Err(None)` if
/// more bytes are needed, or the error.
#[cold]
#[inline(never)]
fn slow_name(rest: &[u8]) -> Result<usize, Option<ParseError>> {
    let n = token_len(rest);
    match rest.get(n) {
        _ if n == 0 => Err(Some(ParseError::HeaderName)),
        Some(b':') => Ok(n),
        Some(_) => Err(Some(ParseError::HeaderName)),
        None => Err(None),
    }
}

/// The length of the field value at the start of `rest` when it has no HTAB and ends in CRLF
/// (nearly every value), read sixteen bytes at a time ([`crate::scan`]); `None` for anything
/// else (including a value that is not complete yet).
#[inline(always)]
fn fast_value(rest: &[u8]) -> Option<usize> {
    let mut n = 0;
    loop {
        // Zeros past the end of `rest` stop the scan; the CRLF test then fails.
        let m = crate::scan::value_stops(rest, n);
        if m != 0 {
            n += m.trailing_zeros() as usize;
            return (rest.get(n..n + 2) == Some(b"\r\n")).then_some(n);
        }
        n += 16;
    }
}

/// [`fast_value`]'s other cases: the value's length (with trailing whitespace) and its line
/// ending's (2, or 1 for a bare LF), or `Err(None)` if more bytes are needed, or the error.
#[cold]
#[inline(never)]
fn slow_value(rest: &[u8]) -> Result<(usize, usize), Option<ParseError>> {
    let mut n = 0;
    loop {
        n += run_len(&rest[n..], 0x20).0;
        match &rest[n..] {
            [b'\t', ..] => n += 1,
            [b'\r', b'\n', ..] => return Ok((n, 2)),
            [b'\n', ..] => return Ok((n, 1)),
            [] | [b'\r'] => return Err(None),
            _ => return Err(Some(ParseError::HeaderValue)),
        }
    }
}

/// Where a head used a bare LF (not CRLF) as a line ending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LineEnds {
    /// The request line, the last field line or the empty line ending the head.
    pub outer_bare: bool,
    /// Any field line.
    pub field_bare: bool,
}

/// A request head: offsets into the parsed buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawRequest {
    /// The head's length (up to and including the empty line).
    pub len: usize,
    /// Where the method starts (after empty lines before the request line) and ends.
    pub method: (usize, usize),
    /// The request target's start and end.
    pub target: (usize, usize),
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Field lines.
    pub fields: usize,
    /// Bare LF line endings.
    pub line_ends: LineEnds,
}

/// Takes the fields of a head as [`parse_request_head`] finds them.
pub(crate) trait FieldSink {
    /// Field line `i` starts at `offset` of the buffer; `name` and `value` are its parts
    /// (the value without leading and trailing whitespace).
    fn field(&mut self, i: usize, offset: usize, name: &[u8], value: &[u8]);

    /// [`field`](Self::field), also told whether the line is exactly `name ": " value CRLF`
    /// (one space before the value, none after it, a CRLF line ending).
    #[inline(always)]
    fn field_line(&mut self, i: usize, offset: usize, name: &[u8], value: &[u8], verbatim: bool) {
        let _ = verbatim;
        self.field(i, offset, name, value)
    }
}

impl<F: FnMut(usize, usize, &[u8], &[u8])> FieldSink for F {
    #[inline(always)]
    fn field(&mut self, i: usize, offset: usize, name: &[u8], value: &[u8]) {
        self(i, offset, name, value)
    }
}

/// A parse step: `Ok(Complete(v))`, `Ok(Partial)` (more bytes needed) or the error.
type Step<T> = Result<Status<T>, ParseError>;

/// Parse the request head at the start of `buf` as httparse's `Request::parse` does, with at
/// most `max_headers` fields. `sink` gets each field line as soon as it is complete (so also
/// for heads that turn out incomplete or invalid further on: the caller must only keep what it
/// learned on `Complete`).
#[inline(always)]
pub(crate) fn parse_request_head(
    buf: &[u8],
    max_headers: usize,
    sink: &mut impl FieldSink,
) -> Step<RawRequest> {
    let at = |rest: &[u8]| buf.len() - rest.len();
    let mut rest = buf;
    // Empty lines before the request line.
    loop {
        match rest {
            [b'\r', b'\n', r @ ..] | [b'\n', r @ ..] => rest = r,
            [b'\r', _, ..] => return Err(ParseError::NewLine),
            [] | [b'\r'] => return Ok(Status::Partial),
            _ => break,
        }
    }
    // method SP
    let method_start = at(rest);
    // Nearly every request is a `GET`: one word compare (`token_len` gives the same 3).
    let n = if rest.first_chunk::<4>() == Some(b"GET ") {
        3
    } else {
        token_len(rest)
    };
    let method_end = method_start + n;
    match rest.get(n) {
        _ if n == 0 && !rest.is_empty() => return Err(ParseError::Token),
        None => return Ok(Status::Partial),
        Some(b' ') => rest = &rest[n + 1..],
        Some(_) => return Err(ParseError::Token),
    }
    // request-target SP
    let target_start = at(rest);
    let (n, non_ascii) = run_len(rest, 0x21);
    let target = &rest[..n];
    match rest.get(n) {
        None => return Ok(Status::Partial),
        Some(b' ') if n != 0 => rest = &rest[n + 1..],
        Some(_) => return Err(ParseError::Token),
    }
    if non_ascii && core::str::from_utf8(target).is_err() {
        return Err(ParseError::Token);
    }
    // HTTP-version
    let version = match http_version(rest)? {
        Status::Complete(v) => v,
        Status::Partial => return Ok(Status::Partial),
    };
    let mut line_ends = LineEnds::default();
    rest = match &rest[8..] {
        [b'\r', b'\n', r @ ..] => r,
        [b'\n', r @ ..] => {
            line_ends.outer_bare = true;
            r
        }
        [] | [b'\r'] => return Ok(Status::Partial),
        _ => return Err(ParseError::NewLine),
    };
    let (len, fields) = match parse_fields(buf, at(rest), max_headers, sink, &mut line_ends)? {
        Status::Complete(v) => v,
        Status::Partial => return Ok(Status::Partial),
    };
    Ok(Status::Complete(RawRequest {
        len,
        method: (method_start, method_end),
        target: (target_start, target_start + target.len()),
        version,
        fields,
        line_ends,
    }))
}

/// `HTTP/1.0` (0) or `HTTP/1.1` (1) at the start of `rest`, as httparse reads it: `Partial` for
/// a prefix of `HTTP/1.` (whatever comes after), `Version` for anything else. On `Complete`,
/// `rest` has at least 8 bytes.
#[inline(always)]
fn http_version(rest: &[u8]) -> Step<u8> {
    // One compare of eight bytes each.
    const V10: u64 = u64::from_le_bytes(*b"HTTP/1.0");
    const V11: u64 = u64::from_le_bytes(*b"HTTP/1.1");
    match rest.first_chunk::<8>().map(|v| u64::from_le_bytes(*v)) {
        Some(V11) => Ok(Status::Complete(1)),
        Some(V10) => Ok(Status::Complete(0)),
        Some(_) => Err(ParseError::Version),
        None => {
            let n = rest.len().min(7);
            if rest[..n] == b"HTTP/1."[..n] {
                Ok(Status::Partial)
            } else {
                Err(ParseError::Version)
            }
        }
    }
}

/// The field lines of a head and the empty line that ends it, from `buf[start..]` (a request
/// head, a response head, or a trailer section with `start = 0`), at most `max_headers` of
/// them, each given to `sink` as it is found. Returns the length of `buf` up to and including
/// the empty line, and the number of fields. Sets `line_ends.field_bare` if a field line ended
/// in a bare LF, and `line_ends.outer_bare` if the last one or the empty line did.
#[inline(always)]
fn parse_fields(
    buf: &[u8],
    start: usize,
    max_headers: usize,
    sink: &mut impl FieldSink,
    line_ends: &mut LineEnds,
) -> Step<(usize, usize)> {
    let at = |rest: &[u8]| buf.len() - rest.len();
    let mut rest = &buf[start..];
    let mut fields = 0;
    let mut last_bare_field = usize::MAX;
    let mut end = 2;
    loop {
        // The empty line that ends the head, or field-name ":"
        let line = rest;
        if let [b'\r', b'\n', ..] = rest {
            break;
        }
        // Nearly every other line is a name of letters and `-`: that first (it never starts
        // with CR or LF, so the other cases go to the match).
        // Split in each arm, where the bounds are known: no checks again after the merge.
        let (name, after) = match fast_name(rest) {
            Some(n) => (&rest[..n], &rest[n + 1..]),
            None => match rest {
                [b'\r', b'\n', ..] => break,
                [b'\n', ..] => {
                    line_ends.outer_bare = true;
                    end = 1;
                    break;
                }
                [b'\r', _, ..] => return Err(ParseError::NewLine),
                [] | [b'\r'] => return Ok(Status::Partial),
                _ => match slow_name(rest) {
                    Ok(n) => (&rest[..n], &rest[n + 1..]),
                    Err(None) => return Ok(Status::Partial),
                    Err(Some(e)) => return Err(e),
                },
            },
        };
        rest = after;
        // OWS field-value OWS CRLF
        let mut verbatim = true;
        match rest {
            [b' ', c, ..] if *c != b' ' && *c != b'\t' => rest = &rest[1..],
            _ => {
                verbatim = false;
                while let [b' ' | b'\t', r @ ..] = rest {
                    rest = r;
                }
            }
        }
        let (mut value, after) = match fast_value(rest) {
            Some(n) => (&rest[..n], &rest[n + 2..]),
            None => match slow_value(rest) {
                Ok((n, eol)) => {
                    if eol == 1 {
                        last_bare_field = fields;
                        verbatim = false;
                    }
                    (&rest[..n], &rest[n + eol..])
                }
                Err(None) => return Ok(Status::Partial),
                Err(Some(e)) => return Err(e),
            },
        };
        rest = after;
        if fields == max_headers {
            return Err(ParseError::TooManyHeaders);
        }
        // Trailing OWS is not part of the value (which starts with a visible byte).
        while let [v @ .., b' ' | b'\t'] = value {
            value = v;
            verbatim = false;
        }
        sink.field_line(fields, at(line), name, value, verbatim);
        fields += 1;
    }
    // `rest` starts with the empty line.
    let len = at(rest) + end;
    if last_bare_field != usize::MAX {
        line_ends.field_bare = true;
        line_ends.outer_bare |= last_bare_field + 1 == fields;
    }
    Ok(Status::Complete((len, fields)))
}

/// Parse a field section (`*( field-line CRLF ) CRLF`: a trailer section) at the start of
/// `buf` as httparse's `parse_headers` does, with at most `max_headers` fields, each given to
/// `sink` as for [`parse_request_head`]. Returns the section's length, the number of fields,
/// and whether any line ended in a bare LF.
#[inline]
pub(crate) fn parse_field_section(
    buf: &[u8],
    max_headers: usize,
    sink: &mut impl FieldSink,
) -> Step<(usize, usize, bool)> {
    let mut line_ends = LineEnds::default();
    Ok(
        match parse_fields(buf, 0, max_headers, sink, &mut line_ends)? {
            Status::Complete((len, fields)) => {
                Status::Complete((len, fields, line_ends.outer_bare || line_ends.field_bare))
            }
            Status::Partial => Status::Partial,
        },
    )
}

/// A response head: offsets into the parsed buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawResponse {
    /// The head's length (up to and including the empty line; empty lines before the status
    /// line included).
    pub len: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The status code (three digits: 0..=999).
    pub status: u16,
    /// The reason phrase's start and end (trailing whitespace included, as httparse has it);
    /// `(0, 0)` when it is empty or holds obs-text (httparse then reports `""`).
    pub reason: (usize, usize),
    /// Field lines.
    pub fields: usize,
    /// Whether any line of the head (empty lines before the status line included) ended in a
    /// bare LF.
    pub bare_lf: bool,
}

/// Parse the response head at the start of `buf` as httparse's `Response::parse` does (default
/// `ParserConfig`: single spaces in the status line, no obs-fold), with at most `max_headers`
/// fields, each given to `sink` as for [`parse_request_head`]. The status line is
/// `HTTP-version SP 3DIGIT ( SP reason-phrase )? CRLF`, the reason being `*( HTAB / SP /
/// VCHAR / obs-text )`; a missing `SP reason-phrase` is accepted, as httparse does.
#[inline(always)]
pub(crate) fn parse_response_head(
    buf: &[u8],
    max_headers: usize,
    sink: &mut impl FieldSink,
) -> Step<RawResponse> {
    let at = |rest: &[u8]| buf.len() - rest.len();
    let mut rest = buf;
    let mut bare = false;
    // Empty lines before the status line.
    loop {
        match rest {
            [b'\r', b'\n', r @ ..] => rest = r,
            [b'\n', r @ ..] => {
                bare = true;
                rest = r;
            }
            [b'\r', _, ..] => return Err(ParseError::NewLine),
            [] | [b'\r'] => return Ok(Status::Partial),
            _ => break,
        }
    }
    let (version, status, reason) = if let Some((version, status)) = ok_status_line(rest) {
        // The usual status line (nginx's `HTTP/1.1 200 OK`): the same verdict as below.
        let start = at(rest);
        rest = &rest[OK_STATUS_LINE..];
        (version, status, (start + 13, start + 15))
    } else {
        match slow_status_line(buf, &mut rest, &mut bare)? {
            Status::Complete(v) => v,
            Status::Partial => return Ok(Status::Partial),
        }
    };
    let mut line_ends = LineEnds::default();
    let (len, fields) = match parse_fields(buf, at(rest), max_headers, sink, &mut line_ends)? {
        Status::Complete(v) => v,
        Status::Partial => return Ok(Status::Partial),
    };
    Ok(Status::Complete(RawResponse {
        len,
        version,
        status,
        reason,
        fields,
        bare_lf: bare || line_ends.outer_bare || line_ends.field_bare,
    }))
}

/// The length of [`ok_status_line`]'s line: `HTTP/1.x DDD OK` CRLF.
const OK_STATUS_LINE: usize = 17;

/// The version (0 or 1) and status code of a status line `HTTP/1.x DDD OK` CRLF at the start
/// of `rest` (nearly every response: two word compares and a three-digit check), or `None` for
/// any other line, or a shorter `rest` (then [`slow_status_line`] gives the verdict).
#[inline(always)]
fn ok_status_line(rest: &[u8]) -> Option<(u8, u16)> {
    const V10: u64 = u64::from_le_bytes(*b"HTTP/1.0");
    const V11: u64 = u64::from_le_bytes(*b"HTTP/1.1");
    // Bytes 0 and 4..8 of the second word: ` ` and ` OK\r`; bytes 1..4 are the digits.
    const FIXED: u64 = 0xffff_ffff_0000_00ff;
    const PATTERN: u64 = u64::from_le_bytes(*b" \0\0\0 OK\r");
    const HIGH_NIBBLES: u64 = 0x0000_0000_f0f0_f000;
    const ZEROS: u64 = 0x0000_0000_3030_3000;
    const SIXES: u64 = 0x0000_0000_0606_0600;
    let l = rest.first_chunk::<OK_STATUS_LINE>()?;
    let (v, w) = (l.first_chunk::<8>()?, l[8..].first_chunk::<8>()?);
    let (v, w) = (u64::from_le_bytes(*v), u64::from_le_bytes(*w));
    let version = match v {
        V11 => 1,
        V10 => 0,
        _ => return None,
    };
    // A digit is 0x30..=0x39: its high nibble is 3, and still is with 6 added (no carry can
    // leave a byte whose high nibble is 3).
    let d = w & !FIXED;
    if w & FIXED != PATTERN
        || d & HIGH_NIBBLES != ZEROS
        || (d + SIXES) & HIGH_NIBBLES != ZEROS
        || l[16] != b'\n'
    {
        return None;
    }
    // Each digit's value is its low nibble.
    let digit = |i: u32| ((w >> (8 * i)) & 0xf) as u16;
    Some((version, digit(1) * 100 + digit(2) * 10 + digit(3)))
}

/// Any status line at the start of `*rest` (after the empty lines before it): its version,
/// status code and reason (offsets into `buf`, whose tail `*rest` is; as for
/// [`RawResponse`]). Moves `*rest` past the line and sets `*bare` if it ended in a bare LF.
#[inline(never)]
fn slow_status_line(
    buf: &[u8],
    rest: &mut &[u8],
    bare: &mut bool,
) -> Step<(u8, u16, (usize, usize))> {
    let at = |rest: &[u8]| buf.len() - rest.len();
    // HTTP-version SP
    let version = match http_version(rest)? {
        Status::Complete(v) => v,
        Status::Partial => return Ok(Status::Partial),
    };
    *rest = match &rest[8..] {
        [b' ', r @ ..] => r,
        [] => return Ok(Status::Partial),
        _ => return Err(ParseError::Version),
    };
    // status-code: three digits, each checked as it comes.
    let mut status = 0u16;
    for i in 0..3 {
        match rest.get(i) {
            Some(&d) if d.is_ascii_digit() => status = status * 10 + u16::from(d - b'0'),
            Some(_) => return Err(ParseError::Status),
            None => return Ok(Status::Partial),
        }
    }
    *rest = &rest[3..];
    // SP reason-phrase CRLF, or the line ends right after the code.
    let mut reason = (0, 0);
    let eol = match *rest {
        [b' ', r @ ..] => {
            let start = at(r);
            let (n, eol, obs_text) = match reason_len(r)? {
                Status::Complete(v) => v,
                Status::Partial => return Ok(Status::Partial),
            };
            if n != 0 && !obs_text {
                reason = (start, start + n);
            }
            *rest = &r[n..];
            eol
        }
        [b'\r', b'\n', ..] => 2,
        [b'\n', ..] => 1,
        [] | [b'\r'] => return Ok(Status::Partial),
        _ => return Err(ParseError::Status),
    };
    *bare |= eol == 1;
    *rest = &rest[eol..];
    Ok(Status::Complete((version, status, reason)))
}

/// The reason phrase at the start of `rest` (after the SP that follows the status code): its
/// length, its line ending's (2, or 1 for a bare LF), and whether it holds obs-text (httparse
/// reports the phrase as empty then).
#[inline(always)]
fn reason_len(rest: &[u8]) -> Step<(usize, usize, bool)> {
    let mut n = 0;
    let mut high = false;
    loop {
        let (k, h) = run_len(&rest[n..], 0x20);
        n += k;
        high |= h;
        let eol = match &rest[n..] {
            [b'\t', ..] => {
                n += 1;
                continue;
            }
            [b'\r', b'\n', ..] => 2,
            [b'\n', ..] => 1,
            [] | [b'\r'] => return Ok(Status::Partial),
            _ => return Err(ParseError::Status),
        };
        // `run_len` may have seen high bytes past the phrase: look again.
        let obs_text = high && !rest[..n].is_ascii();
        return Ok(Status::Complete((n, eol, obs_text)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::MaybeUninit;
    use proptest::prelude::*;
    use std::string::String;
    use std::vec::Vec;

    /// httparse's verdict in this module's types.
    fn from_h<T>(r: Result<httparse::Status<T>, httparse::Error>) -> Result<Status<T>, ParseError> {
        match r {
            Ok(httparse::Status::Complete(v)) => Ok(Status::Complete(v)),
            Ok(httparse::Status::Partial) => Ok(Status::Partial),
            Err(e) => Err(match e {
                httparse::Error::HeaderName => ParseError::HeaderName,
                httparse::Error::HeaderValue => ParseError::HeaderValue,
                httparse::Error::NewLine => ParseError::NewLine,
                httparse::Error::Status => ParseError::Status,
                httparse::Error::Token => ParseError::Token,
                httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
                httparse::Error::Version => ParseError::Version,
            }),
        }
    }

    /// What a parse says, in terms both parsers can be compared in.
    #[derive(Debug, PartialEq, Eq)]
    struct Verdict {
        len: usize,
        method: (usize, usize),
        target: (usize, usize),
        version: u8,
        /// (line offset, name, value)
        fields: Vec<(usize, Vec<u8>, Vec<u8>)>,
    }

    fn ours(buf: &[u8], max: usize) -> (Result<Status<Verdict>, ParseError>, Option<LineEnds>) {
        let mut fields = Vec::new();
        let mut sink = |_i: usize, at: usize, name: &[u8], value: &[u8]| {
            fields.push((at, name.to_vec(), value.to_vec()))
        };
        match parse_request_head(buf, max, &mut sink) {
            Ok(Status::Complete(r)) => {
                assert_eq!(r.fields, fields.len());
                let v = Verdict {
                    len: r.len,
                    method: r.method,
                    target: r.target,
                    version: r.version,
                    fields,
                };
                (Ok(Status::Complete(v)), Some(r.line_ends))
            }
            Ok(Status::Partial) => (Ok(Status::Partial), None),
            Err(e) => (Err(e), None),
        }
    }

    fn httparse(buf: &[u8], max: usize) -> Result<Status<Verdict>, ParseError> {
        let mut hdrs = std::vec![MaybeUninit::<httparse::Header<'_>>::uninit(); max];
        let mut req = httparse::Request::new(&mut []);
        let len = match from_h(req.parse_with_uninit_headers(buf, &mut hdrs)) {
            Ok(Status::Complete(n)) => n,
            Ok(Status::Partial) => return Ok(Status::Partial),
            Err(e) => return Err(e),
        };
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| s.as_ptr() as usize - base;
        let (m, p) = (req.method.unwrap(), req.path.unwrap());
        Ok(Status::Complete(Verdict {
            len,
            method: (at(m.as_bytes()), at(m.as_bytes()) + m.len()),
            target: (at(p.as_bytes()), at(p.as_bytes()) + p.len()),
            version: req.version.unwrap(),
            fields: req
                .headers
                .iter()
                .map(|h| {
                    (
                        at(h.name.as_bytes()),
                        h.name.as_bytes().to_vec(),
                        h.value.to_vec(),
                    )
                })
                .collect(),
        }))
    }

    /// The bare-LF checks `head` made on httparse's output before this parser existed.
    fn line_ends_of(buf: &[u8], v: &Verdict) -> LineEnds {
        let rl_bare = buf[v.target.1 + 9] != b'\r';
        let outer_bare = rl_bare || !buf[..v.len].ends_with(b"\r\n\r\n");
        let field_bare = v.fields.iter().any(|(at, _, _)| buf[at - 2] != b'\r');
        LineEnds {
            outer_bare,
            field_bare,
        }
    }

    fn check(buf: &[u8], max: usize) {
        let (a, ends) = ours(buf, max);
        let b = httparse(buf, max);
        assert_eq!(a, b, "{:?} (max {max})", String::from_utf8_lossy(buf));
        if let (Ok(Status::Complete(v)), Some(ends)) = (&a, ends) {
            let old = line_ends_of(buf, v);
            assert_eq!(
                ends.outer_bare,
                old.outer_bare,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
            if !old.outer_bare {
                assert_eq!(
                    ends.field_bare,
                    old.field_bare,
                    "{:?}",
                    String::from_utf8_lossy(buf)
                );
            }
        }
    }

    /// Every prefix, and the whole thing, with a few limits on the number of fields.
    fn check_all(buf: &[u8]) {
        for max in [0, 1, 3, 100] {
            for k in 0..=buf.len() {
                check(&buf[..k], max);
            }
        }
    }

    const BROWSER: &[u8] = b"GET /articles/sans-io-protocols?page=2 HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Connection: keep-alive\r\n\
Cookie: session=3f9a1c2e; theme=dark\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\r\n";

    const ODD: &[u8] = b"\r\n\t :\0\x01\x7f\x80\xff\xc3\xa9\"(),/;<=>?@[\\]{}_.!~|^`'HTP/1.09aZ-";

    #[test]
    fn vectors() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\n\n",
            b"\r\n\nGET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"POST /x?y=%20 HTTP/1.1\r\nContent-Length: 5\r\nX-1_2.3: \t v a l \t \r\n\r\n",
            b"GET / HTTP/1.1\r\nA:\r\nB: \r\nC:\t\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\nC: d\r\n\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
            b"GET /\xc3 HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo\x80st: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) \xff\r\n\r\n",
            b"GET / HTTP/1.1\r\n:a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\rX",
            b"\rGET / HTTP/1.1\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"GET\t/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET / HTTP/1.1\r\r\n\r\n",
            b"GET / HTTP/1.1\r\nA-Very-Long-Header-Name-That-Spans-Words: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nSec-CH-UA-Platform-Version9: x\r\nX-B3-TraceId: 1\r\n\r\n",
        ];
        for c in cases {
            check_all(c);
        }
        check_all(BROWSER);
    }

    fn field_line() -> impl Strategy<Value = Vec<u8>> {
        let name = prop_oneof![
            prop::sample::select(
                &[
                    "Host",
                    "host",
                    "Content-Length",
                    "Transfer-Encoding",
                    "Connection",
                    "X_y.z",
                    "Sec-Fetch-Dest",
                    "a",
                    "Accept-Encoding",
                    "X-Forwarded-For9",
                ][..]
            )
            .prop_map(|s| s.as_bytes().to_vec()),
            prop::collection::vec(prop::sample::select(ODD), 0..20),
        ];
        let ows = prop::sample::select(&["", " ", "\t", "  \t ", " \t"][..]);
        let value = prop_oneof![
            prop::collection::vec(0x20u8..0x7f, 0..40),
            prop::collection::vec(prop::sample::select(ODD), 0..40),
            prop::collection::vec(any::<u8>(), 0..12),
        ];
        let eol = prop::sample::select(&["\r\n", "\r\n", "\r\n", "\n", "\r", ""][..]);
        (name, ows.clone(), value, ows, eol).prop_map(|(n, a, v, b, e)| {
            let mut l = n;
            l.push(b':');
            l.extend_from_slice(a.as_bytes());
            l.extend_from_slice(&v);
            l.extend_from_slice(b.as_bytes());
            l.extend_from_slice(e.as_bytes());
            l
        })
    }

    fn head() -> impl Strategy<Value = Vec<u8>> {
        let lead = prop::sample::select(&["", "", "\r\n", "\n", "\r\n\n"][..]);
        let method =
            prop::sample::select(&["GET", "POST", "PUT", "M-SEARCH", "G\x01T", "", "get"][..]);
        let target = prop_oneof![
            prop::sample::select(&["/", "*", "/a?b=c", "http://x/y", "/\u{e9}"][..])
                .prop_map(|s| s.as_bytes().to_vec()),
            prop::collection::vec(0x21u8..0x7f, 0..30),
            prop::collection::vec(any::<u8>(), 0..10),
        ];
        let version =
            prop::sample::select(&["HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "HTTP/1."][..]);
        let eol = prop::sample::select(&["\r\n", "\r\n", "\n", "\r", " \r\n"][..]);
        let fields = prop::collection::vec(field_line(), 0..8);
        (lead, method, target, version, eol.clone(), fields, eol).prop_map(
            |(lead, m, t, v, e, fields, end)| {
                let mut h = lead.as_bytes().to_vec();
                h.extend_from_slice(m.as_bytes());
                h.push(b' ');
                h.extend_from_slice(&t);
                h.push(b' ');
                h.extend_from_slice(v.as_bytes());
                h.extend_from_slice(e.as_bytes());
                for f in fields {
                    h.extend_from_slice(&f);
                }
                h.extend_from_slice(end.as_bytes());
                h.extend_from_slice(b"body");
                h
            },
        )
    }

    /// Heads from `heads` with up to four edits (overwrite, insert, delete) at chosen places.
    fn edited(heads: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
        let edit = (
            any::<prop::sample::Index>(),
            0u8..3,
            prop_oneof![prop::sample::select(ODD), any::<u8>()],
        );
        (heads, prop::collection::vec(edit, 0..4)).prop_map(|(mut h, edits)| {
            for (at, kind, b) in edits {
                let i = at.index(h.len() + 1);
                match kind {
                    0 if i < h.len() => h[i] = b,
                    1 => h.insert(i, b),
                    _ if i < h.len() => {
                        h.remove(i);
                    }
                    _ => {}
                }
            }
            h
        })
    }

    /// Generated request heads, edited.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        edited(head())
    }

    /// [`fast_name`] and [`fast_value`] as their doc comments say, a byte at a time.
    fn fast_name_ref(rest: &[u8]) -> Option<usize> {
        let n = rest
            .iter()
            .position(|b| !(b.is_ascii_alphabetic() || *b == b'-'))?;
        (n != 0 && rest[n] == b':').then_some(n)
    }

    fn fast_value_ref(rest: &[u8]) -> Option<usize> {
        let n = rest.iter().position(|&b| b < 0x20 || b == 0x7f)?;
        (rest.get(n..n + 2) == Some(b"\r\n")).then_some(n)
    }

    proptest! {
        /// The block scans (sixteen bytes at a time, zero-padded at the end of the buffer)
        /// find what a byte-at-a-time scan finds, wherever the buffer ends.
        #[test]
        fn block_scans_match_byte_scans(
            s in prop::collection::vec(prop_oneof![
                6 => prop::sample::select(&b"abcXYZ-"[..]),
                1 => prop::sample::select(&b":\r\n\t \x00\x7f\x80\xff0_"[..]),
                1 => any::<u8>(),
            ], 0..70),
        ) {
            prop_assert_eq!(fast_name(&s), fast_name_ref(&s));
            prop_assert_eq!(fast_value(&s), fast_value_ref(&s));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn same_verdicts_as_httparse(h in mutated(), cut in any::<prop::sample::Index>(), max in 0usize..10) {
            check(&h, max);
            check(&h, 100);
            check(&h[..cut.index(h.len() + 1)], max);
        }

        #[test]
        fn same_verdicts_on_bytes(h in prop::collection::vec(prop_oneof![prop::sample::select(ODD), any::<u8>()], 0..64)) {
            check(&h, 4);
            let mut g = b"GET / HTTP/1.1\r\n".to_vec();
            g.extend_from_slice(&h);
            check(&g, 4);
        }
    }

    // ---- Response heads and trailer sections: the same, against httparse's
    // `Response::parse` (default `ParserConfig`, as `head.rs` used it) and `parse_headers`.

    /// What a response parse says: length, version, status, reason (offsets; `(0, 0)` when
    /// httparse reports it empty), fields, and whether a line ended in a bare LF.
    type ResponseVerdict = (
        usize,
        u8,
        u16,
        (usize, usize),
        Vec<(usize, Vec<u8>, Vec<u8>)>,
        bool,
    );

    fn ours_response(buf: &[u8], max: usize) -> Result<Status<ResponseVerdict>, ParseError> {
        let mut fields = Vec::new();
        let mut sink = |_i: usize, at: usize, name: &[u8], value: &[u8]| {
            fields.push((at, name.to_vec(), value.to_vec()))
        };
        Ok(match parse_response_head(buf, max, &mut sink)? {
            Status::Complete(r) => {
                assert_eq!(r.fields, fields.len());
                Status::Complete((r.len, r.version, r.status, r.reason, fields, r.bare_lf))
            }
            Status::Partial => Status::Partial,
        })
    }

    /// The bare-LF check `head` made on httparse's output before this parser read responses.
    fn any_bare_lf(head: &[u8]) -> bool {
        (0..head.len()).any(|i| head[i] == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    }

    fn httparse_response(buf: &[u8], max: usize) -> Result<Status<ResponseVerdict>, ParseError> {
        let mut hdrs = std::vec![MaybeUninit::<httparse::Header<'_>>::uninit(); max];
        let mut res = httparse::Response::new(&mut []);
        let len = match from_h(
            httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut res, buf, &mut hdrs),
        )? {
            Status::Complete(n) => n,
            Status::Partial => return Ok(Status::Partial),
        };
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| s.as_ptr() as usize - base;
        let reason = res.reason.unwrap().as_bytes();
        let reason = if reason.is_empty() {
            (0, 0)
        } else {
            (at(reason), at(reason) + reason.len())
        };
        let fields = res
            .headers
            .iter()
            .map(|h| {
                (
                    at(h.name.as_bytes()),
                    h.name.as_bytes().to_vec(),
                    h.value.to_vec(),
                )
            })
            .collect();
        let v = (
            len,
            res.version.unwrap(),
            res.code.unwrap(),
            reason,
            fields,
            any_bare_lf(&buf[..len]),
        );
        Ok(Status::Complete(v))
    }

    fn check_response(buf: &[u8], max: usize) {
        let a = ours_response(buf, max);
        let b = httparse_response(buf, max);
        assert_eq!(a, b, "{:?} (max {max})", String::from_utf8_lossy(buf));
    }

    /// A trailer section: length, fields, bare LF.
    type SectionVerdict = (usize, Vec<(usize, Vec<u8>, Vec<u8>)>, bool);

    fn check_section(buf: &[u8], max: usize) {
        let mut fields = Vec::new();
        let mut sink = |_i: usize, at: usize, name: &[u8], value: &[u8]| {
            fields.push((at, name.to_vec(), value.to_vec()))
        };
        let a: Result<Status<SectionVerdict>, ParseError> =
            parse_field_section(buf, max, &mut sink).map(|s| match s {
                Status::Complete((len, n, bare)) => {
                    assert_eq!(n, fields.len());
                    Status::Complete((len, fields, bare))
                }
                Status::Partial => Status::Partial,
            });
        let mut hdrs = std::vec![httparse::EMPTY_HEADER; max];
        let base = buf.as_ptr() as usize;
        let b = from_h(httparse::parse_headers(buf, &mut hdrs)).map(|s| match s {
            Status::Complete((len, hs)) => Status::Complete((
                len,
                hs.iter()
                    .map(|h| {
                        let name = h.name.as_bytes();
                        (
                            name.as_ptr() as usize - base,
                            name.to_vec(),
                            h.value.to_vec(),
                        )
                    })
                    .collect(),
                any_bare_lf(&buf[..len]),
            )),
            Status::Partial => Status::Partial,
        });
        assert_eq!(a, b, "{:?} (max {max})", String::from_utf8_lossy(buf));
    }

    fn check_all_responses(buf: &[u8]) {
        for max in [0, 1, 3, 100] {
            for k in 0..=buf.len() {
                check_response(&buf[..k], max);
            }
        }
    }

    /// What nginx sends for a small static file.
    const NGINX: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.22.1\r\n\
Date: Fri, 27 Nov 2026 16:00:00 GMT\r\n\
Content-Type: text/plain\r\n\
Content-Length: 12\r\n\
Connection: keep-alive\r\n\r\n\
hello world\n";

    /// Status lines and response heads, valid and not, with what they mean (RFC 9112 §4:
    /// `status-line = HTTP-version SP status-code SP [ reason-phrase ]`, `status-code =
    /// 3DIGIT`, `reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )`; §2.2 on line endings).
    /// Each is also checked against httparse, on every prefix.
    #[test]
    fn rfc9112_status_lines() {
        use ParseError::{HeaderName, HeaderValue, NewLine, TooManyHeaders, Version};
        type Want = Result<Option<(u8, u16, &'static [u8], usize)>, ParseError>;
        let cases: &[(&[u8], Want)] = &[
            // Valid: version, code, reason, fields.
            (b"HTTP/1.1 200 OK\r\n\r\n", Ok(Some((1, 200, b"OK", 0)))),
            (
                b"HTTP/1.0 404 Not Found\r\n\r\n",
                Ok(Some((0, 404, b"Not Found", 0))),
            ),
            // §4: the reason may be empty (SP kept)...
            (b"HTTP/1.1 204 \r\n\r\n", Ok(Some((1, 204, b"", 0)))),
            // ...and a recipient may be lenient about a missing SP before it (httparse is).
            (b"HTTP/1.1 204\r\n\r\n", Ok(Some((1, 204, b"", 0)))),
            // HTAB, SP, VCHAR inside the reason; trailing whitespace is part of it.
            (
                b"HTTP/1.1 200 A\tB c!~ \r\n\r\n",
                Ok(Some((1, 200, b"A\tB c!~ ", 0))),
            ),
            // obs-text: accepted, reported as an empty reason.
            (
                b"HTTP/1.1 200 \xc3\xa9t\xe9\r\n\r\n",
                Ok(Some((1, 200, b"", 0))),
            ),
            // Any three digits (semantics are the caller's: `client` rejects < 100).
            (b"HTTP/1.1 999 X\r\n\r\n", Ok(Some((1, 999, b"X", 0)))),
            (b"HTTP/1.1 000 X\r\n\r\n", Ok(Some((1, 0, b"X", 0)))),
            (
                b"HTTP/1.1 100 Continue\r\n\r\n",
                Ok(Some((1, 100, b"Continue", 0))),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX:y\r\n\r\n",
                Ok(Some((1, 200, b"OK", 2))),
            ),
            // Empty lines before the status line are skipped (§2.2 allows it for requests).
            (
                b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
                Ok(Some((1, 200, b"OK", 0))),
            ),
            // Incomplete.
            (b"HTTP/1.1 200 OK\r\n", Ok(None)),
            (b"HTTP/1.1 200 OK\r", Ok(None)),
            (b"HTTP/1.1 2", Ok(None)),
            (b"HTTP/1.", Ok(None)),
            // Invalid: version.
            (b"HTTP/1.2 200 OK\r\n\r\n", Err(Version)),
            (b"HTTP/2.0 200 OK\r\n\r\n", Err(Version)),
            (b"http/1.1 200 OK\r\n\r\n", Err(Version)),
            (b"HTTP/1.1\t200 OK\r\n\r\n", Err(Version)),
            (b"HTTP/1.1\r\n\r\n", Err(Version)),
            (b"ICY 200 OK\r\n\r\n", Err(Version)),
            // Invalid: one SP only (httparse's default), and exactly 3DIGIT.
            (b"HTTP/1.1  200 OK\r\n\r\n", Err(ParseError::Status)),
            (b"HTTP/1.1 20 OK\r\n\r\n", Err(ParseError::Status)),
            (b"HTTP/1.1 2000 OK\r\n\r\n", Err(ParseError::Status)),
            (b"HTTP/1.1 -20 OK\r\n\r\n", Err(ParseError::Status)),
            (b"HTTP/1.1 20x OK\r\n\r\n", Err(ParseError::Status)),
            (b"HTTP/1.1 200\tOK\r\n\r\n", Err(ParseError::Status)),
            // Invalid: control bytes in the reason, a CR not before LF.
            (b"HTTP/1.1 200 O\x00K\r\n\r\n", Err(ParseError::Status)),
            (b"HTTP/1.1 200 O\x7fK\r\n\r\n", Err(ParseError::Status)),
            (b"HTTP/1.1 200 O\rK\r\n\r\n", Err(ParseError::Status)),
            (b"HTTP/1.1 200\rX\r\n\r\n", Err(ParseError::Status)),
            // Invalid: a CR not before LF in the empty lines before the status line.
            (b"\rHTTP/1.1 200 OK\r\n\r\n", Err(NewLine)),
            // Invalid fields: whitespace before the colon (§5.1), obs-fold (§5.2, rejected by
            // httparse's default for responses), too many.
            (b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n", Err(HeaderName)),
            (b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", Err(HeaderName)),
            (b"HTTP/1.1 200 OK\r\nA: b\x00\r\n\r\n", Err(HeaderValue)),
        ];
        for (raw, want) in cases {
            let mut sink = |_: usize, _: usize, _: &[u8], _: &[u8]| {};
            let got = parse_response_head(raw, 8, &mut sink).map(|s| match s {
                Status::Complete(r) => {
                    assert!(!r.bare_lf);
                    Some((r.version, r.status, &raw[r.reason.0..r.reason.1], r.fields))
                }
                Status::Partial => None,
            });
            assert_eq!(got, *want, "{:?}", String::from_utf8_lossy(raw));
            check_all_responses(raw);
        }
        // §2.2: a bare LF as a line terminator is parsed (and reported, for `head` to reject).
        for raw in [
            &b"HTTP/1.1 200 OK\n\r\n"[..],
            b"HTTP/1.1 200\n\r\n",
            b"\nHTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\n\r\n",
            b"HTTP/1.1 200 OK\r\n\n",
        ] {
            let mut sink = |_: usize, _: usize, _: &[u8], _: &[u8]| {};
            match parse_response_head(raw, 8, &mut sink) {
                Ok(Status::Complete(r)) => assert!(r.bare_lf, "{raw:?}"),
                other => panic!("{raw:?}: {other:?}"),
            }
            check_all_responses(raw);
        }
        let mut sink = |_: usize, _: usize, _: &[u8], _: &[u8]| {};
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n", 0, &mut sink),
            Err(TooManyHeaders)
        );
    }

    /// [`ok_status_line`] on the lines it must take and the near misses it must leave to
    /// [`slow_status_line`].
    #[test]
    fn ok_status_line_cases() {
        assert_eq!(ok_status_line(b"HTTP/1.1 200 OK\r\n"), Some((1, 200)));
        assert_eq!(
            ok_status_line(b"HTTP/1.0 404 OK\r\nA: b\r\n"),
            Some((0, 404))
        );
        assert_eq!(ok_status_line(b"HTTP/1.1 000 OK\r\n"), Some((1, 0)));
        assert_eq!(ok_status_line(b"HTTP/1.1 999 OK\r\n"), Some((1, 999)));
        for miss in [
            &b"HTTP/1.1 200 OK\r"[..],
            b"HTTP/1.1 200 OK\n\n",
            b"HTTP/1.1 200 Ok\r\n",
            b"HTTP/1.1 2:0 OK\r\n",
            b"HTTP/1.1 20/ OK\r\n",
            b"HTTP/1.1 ?00 OK\r\n",
            b"HTTP/1.1 2\x800 OK\r\n",
            b"HTTP/1.1  200 OK\r\n",
            b"HTTP/1.1 200  OK\r\n",
            b"HTTP/1.2 200 OK\r\n",
            b"HTTP/1.1\t200 OK\r\n",
        ] {
            assert_eq!(ok_status_line(miss), None, "{:?}", miss);
        }
    }

    #[test]
    fn response_vectors() {
        check_all_responses(NGINX);
        let cases: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.0 200\n\n",
            b"\n\r\nHTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA:\r\nB: \r\nC:\t\r\n\r\n",
            b"HTTP/1.1 200 \t\t\r\n\r\n",
            b"HTTP/1.1 200 \xff\r\n\r\n\xff\xff",
            b"HTTP/1.1 200 OK\r\n\r\n\x80\x80\x80\x80",
            b"HTTP/1.1 200 ok\xc3\xa9 but long enough for words\r\nX: y\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nHo\x80st: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\rX",
        ];
        for c in cases {
            check_all_responses(c);
        }
        for c in [
            &b"\r\n"[..],
            b"\n",
            b"A: b\r\n\r\n",
            b"A: b\nC: d\n\n",
            b"Expires: 0\r\nX-Checksum: abc\r\n\r\nrest",
            b" A: b\r\n\r\n",
            b"A: b\r\n c\r\n\r\n",
        ] {
            for max in [0, 1, 64] {
                for k in 0..=c.len() {
                    check_section(&c[..k], max);
                }
            }
        }
    }

    fn response_head() -> impl Strategy<Value = Vec<u8>> {
        let lead = prop::sample::select(&["", "", "\r\n", "\n", "\r\n\n"][..]);
        let version = prop::sample::select(
            &[
                "HTTP/1.1", "HTTP/1.0", "HTTP/1.1", "HTTP/1.2", "HTTP/2.0", "HTTP/1.",
            ][..],
        );
        let sp = prop::sample::select(&[" ", " ", " ", "", "  ", "\t"][..]);
        let code = prop_oneof![
            prop::sample::select(&["200", "204", "304", "101", "100", "404", "999"][..])
                .prop_map(|s| s.as_bytes().to_vec()),
            prop::collection::vec(prop::sample::select(ODD), 0..5),
        ];
        let reason = prop_oneof![
            prop::sample::select(&["OK", "", "Not Found", " ", "A\tB", "Moved Permanently"][..])
                .prop_map(|s| s.as_bytes().to_vec()),
            prop::collection::vec(0x20u8..0x7f, 0..30),
            prop::collection::vec(prop::sample::select(ODD), 0..30),
            prop::collection::vec(any::<u8>(), 0..10),
        ];
        let eol = prop::sample::select(&["\r\n", "\r\n", "\n", "\r", " \r\n"][..]);
        let fields = prop::collection::vec(field_line(), 0..8);
        (
            (lead, version, sp.clone(), code),
            (sp, reason, eol.clone(), fields, eol),
        )
            .prop_map(|((lead, v, sp1, code), (sp2, reason, e, fields, end))| {
                let mut h = lead.as_bytes().to_vec();
                h.extend_from_slice(v.as_bytes());
                h.extend_from_slice(sp1.as_bytes());
                h.extend_from_slice(&code);
                h.extend_from_slice(sp2.as_bytes());
                h.extend_from_slice(&reason);
                h.extend_from_slice(e.as_bytes());
                for f in fields {
                    h.extend_from_slice(&f);
                }
                h.extend_from_slice(end.as_bytes());
                h.extend_from_slice(b"body\xff");
                h
            })
    }

    /// Generated response heads, edited.
    fn mutated_response() -> impl Strategy<Value = Vec<u8>> {
        edited(response_head())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn same_response_verdicts_as_httparse(h in mutated_response(), cut in any::<prop::sample::Index>(), max in 0usize..10) {
            check_response(&h, max);
            check_response(&h, 100);
            check_response(&h[..cut.index(h.len() + 1)], max);
        }

        #[test]
        fn same_response_verdicts_on_bytes(h in prop::collection::vec(prop_oneof![prop::sample::select(ODD), any::<u8>()], 0..64)) {
            check_response(&h, 4);
            let mut g = b"HTTP/1.1 200 OK\r\n".to_vec();
            g.extend_from_slice(&h);
            check_response(&g, 4);
            let mut g = b"HTTP/1.1 ".to_vec();
            g.extend_from_slice(&h);
            check_response(&g, 4);
        }

        /// Status lines near `HTTP/1.x DDD OK` CRLF: the fast path ([`ok_status_line`]) gives
        /// what the general one ([`slow_status_line`]) gives whenever it answers, and whole
        /// heads get httparse's verdicts either way.
        #[test]
        fn ok_status_line_matches_general(
            v in prop::sample::select(&["HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/1.1 "][..]),
            tail in prop::collection::vec(prop_oneof![
                4 => prop::sample::select(&b"0123456789 OK\r\n"[..]),
                1 => prop::sample::select(&b"/:?@\t\x80\xff\x00\x06\x7fAok"[..]),
                1 => any::<u8>(),
            ], 0..14),
            fields in prop::collection::vec(field_line(), 0..3),
            end in prop::sample::select(&["\r\n", "\n", ""][..]),
        ) {
            let mut h = v.as_bytes().to_vec();
            h.extend_from_slice(&tail);
            for f in fields {
                h.extend_from_slice(&f);
            }
            h.extend_from_slice(end.as_bytes());
            if let Some((version, status)) = ok_status_line(&h) {
                let mut rest = &h[..];
                let mut bare = false;
                let general = slow_status_line(&h, &mut rest, &mut bare);
                prop_assert_eq!(general, Ok(Status::Complete((version, status, (13, 15)))));
                prop_assert_eq!(h.len() - rest.len(), OK_STATUS_LINE);
                prop_assert!(!bare);
            }
            check_response(&h, 4);
            for cut in 0..h.len().min(20) {
                check_response(&h[..cut], 4);
            }
        }

        #[test]
        fn same_trailer_verdicts_as_httparse(fields in prop::collection::vec(field_line(), 0..6), end in prop::sample::select(&["\r\n", "\n", "\r", ""][..]), cut in any::<prop::sample::Index>(), max in 1usize..8) {
            let mut h: Vec<u8> = fields.concat();
            h.extend_from_slice(end.as_bytes());
            h.extend_from_slice(b"next");
            check_section(&h, max);
            check_section(&h[..cut.index(h.len() + 1)], max);
        }
    }
}
