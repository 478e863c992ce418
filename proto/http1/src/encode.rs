//! Serialization shared by the server (responses) and the client (requests).

use bytes::{BufMut, Bytes, BytesMut};

use crate::SendError;

/// What the application sends as a message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body (`Content-Length: 0` where a length is required).
    Empty,
    /// The whole body, now.
    Full(Bytes),
    /// Exactly this many bytes, streamed later with `send_data`.
    Length(u64),
    /// A streamed body of unknown length (`Transfer-Encoding: chunked` to HTTP/1.1 peers,
    /// close-delimited to HTTP/1.0 clients).
    Chunked,
}

impl Body {
    /// The length, when it is known up front.
    pub fn known_len(&self) -> Option<u64> {
        match self {
            Body::Empty => Some(0),
            Body::Full(b) => Some(b.len() as u64),
            Body::Length(n) => Some(*n),
            Body::Chunked => None,
        }
    }
}

/// Initial capacity of a connection's output buffer (heads and small bodies are written here).
pub(crate) const OUT_BUF_CAPACITY: usize = 4096;

/// Bodies up to this size are copied next to the head, so a small response is one write.
pub(crate) const COPY_BODY_MAX: usize = 4096;

/// RFC 9110 §5.6.2 `tchar`.
const fn tchar_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
}
/// RFC 9110 §5.6.2 `tchar` as a table (field names, methods, media types).
pub(crate) static TCHAR: [bool; 256] = tchar_table();

/// Whether `s` is a valid token (field name, method).
pub fn is_token(s: &[u8]) -> bool {
    // Nearly every field name is letters and `-`: eight bytes at a time, then the table.
    (s.len() >= 8 && all_words(s, |w| not_alpha_dash(w) == 0))
        || (!s.is_empty() && s.iter().all(|&b| TCHAR[b as usize]))
}

pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;
pub(crate) const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether `ok` holds for every eight-byte word of `s` (the last one overlapping the one
/// before it); `s` has at least eight bytes.
#[inline(always)]
fn all_words(s: &[u8], ok: impl Fn(u64) -> bool) -> bool {
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        if let Some(w) = w.first_chunk::<8>() {
            if !ok(u64::from_le_bytes(*w)) {
                return false;
            }
        }
    }
    if words.remainder().is_empty() {
        return true;
    }
    match s.last_chunk::<8>() {
        Some(w) => ok(u64::from_le_bytes(*w)),
        None => false,
    }
}

/// Non-zero when some byte of `x` is zero (exact as a yes/no answer).
#[inline(always)]
fn has_zero(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGH
}

/// Non-zero when some byte of `x` is below 0x0e (exact as a yes/no answer, as for any bound
/// up to 0x80).
#[inline(always)]
fn has_less_0e(x: u64) -> u64 {
    x.wrapping_sub(ONES * 0x0e) & !x & HIGH
}

/// The high bit of each byte of `x` that is not an ASCII letter or `-`: exact as a yes/no
/// answer and for the lowest flagged byte (a carry out of a byte at or above 0x80 can flag
/// bytes above it). Shared by the encoder's name check and the parser's name scan.
#[inline(always)]
pub(crate) fn not_alpha_dash(x: u64) -> u64 {
    let l = x | (ONES * 0x20);
    let alpha = l.wrapping_add(ONES * 0x1f) & !l.wrapping_add(ONES * 0x05);
    let y = x ^ (ONES * b'-' as u64);
    let not_dash = y.wrapping_add(ONES * 0x7f) | y;
    let good = (alpha | !not_dash) & !x & HIGH;
    good ^ HIGH
}

/// Facts about the application's header fields that the connection acts on: a bit each, so
/// merging the facts of two sets of fields is one OR.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AppHeaders(u8);

impl AppHeaders {
    const CLOSE: u8 = 1;
    const DATE: u8 = 2;
    const HOST: u8 = 4;
    const UPGRADE: u8 = 8;

    /// A `Connection` field holds `close`.
    #[inline(always)]
    pub(crate) fn close(self) -> bool {
        self.0 & Self::CLOSE != 0
    }

    /// A `Date` field is there.
    #[inline(always)]
    pub(crate) fn has_date(self) -> bool {
        self.0 & Self::DATE != 0
    }

    /// An `Upgrade` field is there.
    #[inline(always)]
    pub(crate) fn upgrade(self) -> bool {
        self.0 & Self::UPGRADE != 0
    }

    /// Both sets of facts.
    #[inline]
    pub(crate) fn merge(&mut self, o: AppHeaders) {
        self.0 |= o.0;
    }

    /// Note what field `name: value` means to the connection; framing fields are refused (the
    /// connection writes them from the body). `n` is a token (every caller checked it, or
    /// it comes from a parsed head), so [`token_eq`](crate::head::token_eq) is exact.
    #[inline(always)]
    fn note(&mut self, n: &[u8], value: &[u8]) -> Result<(), SendError> {
        use crate::head::token_eq;
        match n.len() {
            4 if token_eq(n, b"date") => self.0 |= Self::DATE,
            4 if token_eq(n, b"host") => self.0 |= Self::HOST,
            7 if token_eq(n, b"upgrade") => self.0 |= Self::UPGRADE,
            10 if token_eq(n, b"connection") && crate::head::list_has_token(value, "close") => {
                self.0 |= Self::CLOSE
            }
            14 if token_eq(n, b"content-length") => return Err(SendError::FramingHeader),
            17 if token_eq(n, b"transfer-encoding") => return Err(SendError::FramingHeader),
            _ => {}
        }
        Ok(())
    }
}

/// Write `name: value\r\n`.
#[inline]
fn put_field(dst: &mut BytesMut, n: &[u8], value: &[u8]) {
    dst.reserve(n.len() + value.len() + 4);
    dst.put_slice(n);
    dst.put_slice(b": ");
    dst.put_slice(value);
    dst.put_slice(b"\r\n");
}

/// Copy the fields of a head this crate parsed that `keep` accepts, as they are: the parser
/// already held them to field syntax (token names; values without CR, LF or NUL), so they
/// are not validated again. Framing fields are refused like [`write_fields`] refuses them.
#[inline(always)]
pub(crate) fn copy_parsed_fields(
    dst: &mut BytesMut,
    headers: &crate::head::Headers,
    mut keep: impl FnMut(&[u8]) -> bool,
) -> Result<AppHeaders, SendError> {
    let mut facts = AppHeaders::default();
    let buf = &headers.buf[..];
    // Kept lines already in the form `put_field` writes go out as they are, a run of
    // adjacent ones in one copy.
    let mut run = 0..0;
    let flush = |dst: &mut BytesMut, run: core::ops::Range<usize>| {
        if !run.is_empty() {
            dst.extend_from_slice(buf.get(run).unwrap_or(&[]));
        }
    };
    for f in headers.raw_fields() {
        if !keep(f.name) {
            continue;
        }
        facts.note(f.name, f.value)?;
        if f.verbatim {
            if run.end != f.start || run.is_empty() {
                flush(dst, run);
                run = f.start..f.start;
            }
            run.end = f.next;
        } else {
            flush(dst, run);
            run = 0..0;
            put_field(dst, f.name, f.value);
        }
    }
    flush(dst, run);
    Ok(facts)
}

/// Whether `value` may go out as a field value: no CR, LF or NUL (RFC 9110 §5.5).
#[inline]
fn is_safe_value(value: &[u8]) -> bool {
    // Typical values are short: a block at a time beats a SIMD search's setup.
    match value.len() {
        0..8 => !value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
        // Most values have no byte below 0x0e at all (CR, LF and NUL are): that first.
        // Sixteen bytes at a time ([`crate::scan`]): a `traceparent` value is 55 bytes.
        16..=64 => !crate::scan::any_cr_lf_nul(value),
        8..16 => {
            all_words(value, |w| has_less_0e(w) == 0)
                || all_words(value, |w| {
                    has_zero(w)
                        | has_zero(w ^ (ONES * u64::from(b'\r')))
                        | has_zero(w ^ (ONES * 0x0a))
                        == 0
                })
        }
        _ => memchr::memchr3(b'\r', b'\n', 0, value).is_none(),
    }
}

/// Write `name: value\r\n` for each field after validating it (no framing fields, no CR/LF/NUL
/// in values, token names). On error nothing is guaranteed about `dst`'s tail; callers
/// truncate back.
pub(crate) fn write_fields<N: AsRef<str>, V: AsRef<[u8]>>(
    dst: &mut BytesMut,
    fields: &[(N, V)],
) -> Result<AppHeaders, SendError> {
    let mut facts = AppHeaders::default();
    for (name, value) in fields {
        let (n, value) = (name.as_ref().as_bytes(), value.as_ref());
        if !is_token(n) || !is_safe_value(value) {
            return Err(SendError::InvalidHeader);
        }
        facts.note(n, value)?;
        put_field(dst, n, value);
    }
    Ok(facts)
}

/// Header field lines checked and encoded once (`name: value\r\n` each), for extra fields
/// that go out with many messages (a proxy's `Via`, a connection's `X-Forwarded-For`): the
/// forwarding send methods that take [`Extra`] copy them as they are, with no second check.
///
/// ```
/// use ferry_http1::FieldLines;
/// let via = FieldLines::new(&[("via", "1.1 ferry")]).unwrap();
/// assert_eq!(via.as_bytes(), b"via: 1.1 ferry\r\n");
/// // Framing fields are the connection's: refused, as by every send method.
/// assert!(FieldLines::new(&[("content-length", "3")]).is_err());
/// ```
#[derive(Clone, Debug, Default)]
pub struct FieldLines {
    bytes: Bytes,
    facts: AppHeaders,
}

impl FieldLines {
    /// `fields` checked as the send methods check them (token names, no CR/LF/NUL in values,
    /// no framing fields) and encoded in order.
    pub fn new<N: AsRef<str>, V: AsRef<[u8]>>(fields: &[(N, V)]) -> Result<FieldLines, SendError> {
        let mut b = BytesMut::new();
        let facts = write_fields(&mut b, fields)?;
        Ok(FieldLines {
            bytes: b.freeze(),
            facts,
        })
    }

    /// The encoded lines.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// One piece of the extra fields a forwarding send method writes after the forwarded ones:
/// a field checked on the way, or [`FieldLines`] checked before.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Extra<'a> {
    /// `name: value`, checked as [`FieldLines::new`] checks it.
    Field(&'a str, &'a [u8]),
    /// Lines checked when they were made: copied as they are.
    Lines(&'a FieldLines),
}

/// Write `extras` in order (fields checked as [`write_fields`] checks them, lines copied).
pub(crate) fn write_extras(
    dst: &mut BytesMut,
    extras: &[Extra<'_>],
) -> Result<AppHeaders, SendError> {
    let mut facts = AppHeaders::default();
    for e in extras {
        match *e {
            Extra::Field(name, value) => {
                let n = name.as_bytes();
                if !is_token(n) || !is_safe_value(value) {
                    return Err(SendError::InvalidHeader);
                }
                facts.note(n, value)?;
                put_field(dst, n, value);
            }
            Extra::Lines(l) => {
                dst.extend_from_slice(&l.bytes);
                facts.merge(l.facts);
            }
        }
    }
    Ok(facts)
}

/// Write `content-length: n\r\n`.
pub(crate) fn write_content_length(dst: &mut BytesMut, n: u64) {
    let mut b = itoa::Buffer::new();
    dst.put_slice(b"content-length: ");
    dst.put_slice(b.format(n).as_bytes());
    dst.put_slice(b"\r\n");
}

/// Write `date: <value>\r\n`.
pub(crate) fn write_date(dst: &mut BytesMut, value: &[u8; 29]) {
    let mut line = *b"date: Thu, 01 Jan 1970 00:00:00 GMT\r\n";
    line[6..35].copy_from_slice(value);
    dst.put_slice(&line);
}

/// Write the status line for `status`. Inlined for `200 OK` (a constant copy); the rest out
/// of line.
#[inline]
pub(crate) fn write_status_line(dst: &mut BytesMut, status: u16, reason: Option<&str>) {
    match (status, reason) {
        (200, None) => dst.put_slice(b"HTTP/1.1 200 OK\r\n"),
        _ => write_other_status_line(dst, status, reason),
    }
}

/// [`write_status_line`] for every status line but `200 OK`.
#[inline(never)]
fn write_other_status_line(dst: &mut BytesMut, status: u16, reason: Option<&str>) {
    let mut b = itoa::Buffer::new();
    dst.put_slice(b"HTTP/1.1 ");
    dst.put_slice(b.format(status).as_bytes());
    dst.put_u8(b' ');
    let r = reason.filter(|r| !r.bytes().any(|c| c == b'\r' || c == b'\n'));
    dst.put_slice(r.unwrap_or_else(|| reason_phrase(status)).as_bytes());
    dst.put_slice(b"\r\n");
}

/// The standard reason phrase of a status code (RFC 9110 §15), or `""`.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_validated() {
        let mut b = BytesMut::new();
        assert_eq!(
            write_fields(&mut b, &[("x y", b"1")]).unwrap_err(),
            SendError::InvalidHeader
        );
        assert_eq!(
            write_fields(&mut b, &[("x", b"1\r\nInjected: yes")]).unwrap_err(),
            SendError::InvalidHeader
        );
        let long = [b'a'; 40];
        for bad in [b'\r', b'\n', 0] {
            for at in [0, 31, 32, 39] {
                let mut v = long;
                v[at] = bad;
                let short = &v[..(at + 1).max(8)];
                for value in [short, &v[..]] {
                    assert_eq!(
                        write_fields(&mut b, &[("x", value)]).unwrap_err(),
                        SendError::InvalidHeader
                    );
                }
            }
        }
        assert!(write_fields(&mut b, &[("x", &long[..])]).is_ok());
        assert_eq!(
            write_fields(&mut b, &[("Content-Length", b"1")]).unwrap_err(),
            SendError::FramingHeader
        );
        let mut b = BytesMut::new();
        let fields: [(&str, &[u8]); 2] = [("Connection", b"close"), ("X-A", b"v")];
        let f = write_fields(&mut b, &fields).unwrap();
        assert!(f.close());
        assert_eq!(&b[..], b"Connection: close\r\nX-A: v\r\n");
    }

    #[test]
    fn word_checks_agree_with_the_tables() {
        let by_table = |s: &[u8]| !s.is_empty() && s.iter().all(|&b| TCHAR[b as usize]);
        let safe = |s: &[u8]| !s.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0);
        for len in [1, 7, 8, 9, 12, 16, 17, 23, 64, 65, 80] {
            let base: alloc::vec::Vec<u8> = (0..len).map(|i| b"content-type-xyz"[i % 16]).collect();
            assert!(is_token(&base));
            assert!(is_safe_value(&base));
            for at in [0, len / 2, len - 1] {
                for b in 0..=255u8 {
                    let mut s = base.clone();
                    s[at] = b;
                    assert_eq!(is_token(&s), by_table(&s), "{s:?}");
                    assert_eq!(is_safe_value(&s), safe(&s), "{s:?}");
                }
            }
        }
        assert!(!is_token(b""));
        assert!(is_safe_value(b""));
    }

    #[test]
    fn content_lengths() {
        for n in [
            0,
            1,
            9,
            10,
            12,
            99,
            100,
            4096,
            65_535,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = BytesMut::new();
            write_content_length(&mut b, n);
            assert_eq!(&b[..], alloc::format!("content-length: {n}\r\n").as_bytes());
        }
    }

    #[test]
    fn status_lines() {
        let mut b = BytesMut::new();
        write_status_line(&mut b, 200, None);
        write_status_line(&mut b, 404, None);
        write_status_line(&mut b, 599, Some("Custom"));
        write_status_line(&mut b, 299, None);
        assert_eq!(&b[..], b"HTTP/1.1 200 OK\r\nHTTP/1.1 404 Not Found\r\nHTTP/1.1 599 Custom\r\nHTTP/1.1 299 \r\n");
    }

    /// `copy_parsed_fields` before it copied verbatim lines in runs: each kept field
    /// written with `put_field`.
    fn copy_by_field(
        dst: &mut BytesMut,
        headers: &crate::head::Headers,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), SendError> {
        for (n, value) in headers.iter_bytes() {
            if keep(n) {
                AppHeaders::default().note(n, value)?;
                put_field(dst, n, value);
            }
        }
        Ok(())
    }

    /// The parsed request head of `raw`, if the server side accepts it.
    fn parse_request(raw: &[u8]) -> Option<crate::Request> {
        use ferry_proto::{Connection, Instant};
        let mut c = crate::ServerConnection::new(
            alloc::sync::Arc::new(crate::ServerConfig::default()),
            Instant::ZERO,
        );
        let mut input = BytesMut::from(raw);
        c.handle_input(Instant::ZERO, &mut input).ok()?;
        match c.poll_event()? {
            crate::server::Event::Request(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn copied_fields_are_normalized_whatever_their_spacing() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-A:b\r\nX-B:  c  \r\nX-C: d\r\nX-D: e\r\n\
                    X-Drop: f\r\nX-E: \r\nX-F:\r\nX-G:\tg h\t\r\nX-H: i\r\n\r\n";
        let req = parse_request(raw).unwrap();
        let mut b = BytesMut::new();
        copy_parsed_fields(&mut b, req.headers(), |n| n != b"X-Drop").unwrap();
        assert_eq!(
            core::str::from_utf8(&b).unwrap(),
            "Host: a\r\nX-A: b\r\nX-B: c\r\nX-C: d\r\nX-D: e\r\nX-E: \r\nX-F: \r\n\
             X-G: g h\r\nX-H: i\r\n"
        );
    }

    proptest::proptest! {
        #[test]
        fn copied_fields_match_field_by_field_copy(
            fields in proptest::collection::vec(
                ("[A-Za-z][A-Za-z0-9-]{0,10}", "[ \t]{0,2}", "[!-~]([ -~]{0,12}[!-~])?|", "[ \t]{0,2}", proptest::bool::ANY),
                0..12,
            ),
            bare_lf in proptest::bool::ANY,
        ) {
            let eol = if bare_lf { "\n" } else { "\r\n" };
            let mut raw = alloc::string::String::from("GET / HTTP/1.1\r\n");
            for (n, lead, v, trail, _) in &fields {
                raw.push_str(&alloc::format!("{n}:{lead}{v}{trail}{eol}"));
            }
            raw.push_str("\r\n");
            let Some(req) = parse_request(raw.as_bytes()) else {
                return Ok(());
            };
            let keeps: alloc::vec::Vec<bool> = fields.iter().map(|f| f.4).collect();
            let (mut i, mut j) = (0, 0);
            let mut got = BytesMut::new();
            let mut want = BytesMut::new();
            let a = copy_parsed_fields(&mut got, req.headers(), |_| {
                i += 1;
                keeps[i - 1]
            });
            let b = copy_by_field(&mut want, req.headers(), |_| {
                j += 1;
                keeps[j - 1]
            });
            proptest::prop_assert_eq!(a.is_ok(), b.is_ok());
            if a.is_ok() {
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
