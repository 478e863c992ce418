//! Parsed message heads: zero-copy views into one frozen `Bytes` per head.
//!
//! RFC 9112 §2.1:
//! ```text
//! HTTP-message   = start-line CRLF *( field-line CRLF ) CRLF [ message-body ]
//! start-line     = request-line / status-line
//! request-line   = method SP request-target SP HTTP-version
//! status-line    = HTTP-version SP status-code SP [ reason-phrase ]
//! field-line     = field-name ":" OWS field-value OWS
//! ```

use bytes::{Bytes, BytesMut};
use core::fmt;
use smallvec::SmallVec;

use crate::Error;

/// Fields collected on the stack by [`Request::from_parts`] before spilling to the heap.
const INLINE_HEADERS: usize = 16;
/// Hard upper bound on `max_headers` (the parser's stack array).
pub const MAX_HEADERS_CAP: usize = 256;

/// Request method. Extension methods are [`Method::Other`]; the text is in
/// [`Request::method_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// CONNECT
    Connect,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// PATCH
    Patch,
    /// Any other token.
    Other,
}

impl Method {
    /// Classify a method token (case-sensitive, as RFC 9110 §9.1 says).
    #[inline]
    pub fn from_token(s: &str) -> Method {
        Method::from_bytes(s.as_bytes())
    }

    /// [`from_token`](Self::from_token) on bytes.
    #[inline]
    pub(crate) fn from_bytes(s: &[u8]) -> Method {
        match s {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// The token, for the standard methods (`None` for [`Method::Other`]).
    pub fn as_str(self) -> Option<&'static str> {
        Some(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other => return None,
        })
    }

    /// RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// HTTP version of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

impl Version {
    /// `"HTTP/1.0"` or `"HTTP/1.1"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// Bytes of one index entry: the offset of a field line in its head (`u32`, little-endian).
/// A field's line ends where the next one starts (the last one's where the empty line that
/// ends the head starts). The line structure is the parser's: `name ":" OWS value OWS CRLF`,
/// names are tokens (no `:`), values carry no CR or LF, so the name ends at the first `:`
/// and the value's bounds follow from the line's.
const ENTRY: usize = 4;

/// Fields whose line offsets a [`Headers`] holds itself, as `u16`s (when the head is at most
/// 64 KiB): a typical request needs neither an index buffer nor a second reference count.
/// 21 keeps the index at 48 bytes, a `Request`/`Response` at 120 and a client or server
/// `Event` at 128: moved with inline stores, not a `memcpy` call (24 made the client's
/// `Event` 136 bytes; one exchange through the proxy moves events and heads a dozen times).
const INLINE_FIELDS: usize = 21;
const _: () = assert!(INLINE_FIELDS <= 32, "one bit per inline field in a u32");

/// Where a head's field line offsets are.
#[derive(Clone)]
pub(crate) enum Index {
    /// In place (`len` fields, offsets below 64 KiB), with a bit set in `verbatim` for each
    /// line that is exactly `name ": " value CRLF` (bit `i` for line `i`; its value is then
    /// found without looking at the line's ends again). The size matters: a `Request` or
    /// `Response` of at most 128 bytes is moved without a `memcpy` call.
    Inline {
        len: u8,
        at: [u16; INLINE_FIELDS],
        verbatim: u32,
    },
    /// [`ENTRY`] bytes each, cut from an [`IndexBuf`] (more fields, or a bigger head).
    Spilled(Bytes),
}

impl Default for Index {
    fn default() -> Index {
        Index::Inline {
            len: 0,
            at: [0; INLINE_FIELDS],
            verbatim: 0,
        }
    }
}

impl Index {
    /// Whether `fields` fields of a head of `len` bytes fit in place.
    #[inline]
    fn fits(fields: usize, len: usize) -> bool {
        fields <= INLINE_FIELDS && len <= u16::MAX as usize
    }

    #[inline]
    fn len(&self) -> usize {
        match self {
            Index::Inline { len, .. } => *len as usize,
            Index::Spilled(b) => b.len() / ENTRY,
        }
    }

    /// The offsets in `offsets` (as many as `n`) of a head of `len` bytes: in place if they
    /// [fit](Self::fits), else in `out` (a buffer of their own without one: one allocation).
    fn build(
        n: usize,
        len: usize,
        offsets: impl Iterator<Item = usize>,
        out: Option<&mut IndexBuf>,
    ) -> Index {
        if Index::fits(n, len) {
            let mut at = [0u16; INLINE_FIELDS];
            for (slot, o) in at.iter_mut().zip(offsets) {
                *slot = o as u16;
            }
            Index::Inline {
                len: n as u8,
                at,
                verbatim: 0,
            }
        } else if let Some(out) = out {
            out.reserve(n);
            for o in offsets {
                out.push(o as u32);
            }
            Index::Spilled(out.take())
        } else {
            let mut v = alloc::vec::Vec::with_capacity(n * ENTRY);
            for o in offsets {
                v.extend_from_slice(&(o as u32).to_le_bytes());
            }
            Index::Spilled(Bytes::from(v))
        }
    }
}

/// Capacity of an [`IndexBuf`]: the indexes of ~75 typical browser requests, so a pipelined
/// batch fits and the buffer is reused once the batch's requests are dropped.
const INDEX_BUF_CAPACITY: usize = 4096;

/// Where a connection builds header indexes: each index is cut off as a frozen `Bytes`
/// (a reference count, no allocation), and the buffer is reclaimed in place once every
/// index cut from it has been dropped, as the input buffer is.
#[derive(Debug, Default)]
pub(crate) struct IndexBuf {
    buf: BytesMut,
}

impl IndexBuf {
    /// An empty buffer; it allocates on first use.
    pub(crate) fn new() -> IndexBuf {
        IndexBuf {
            buf: BytesMut::new(),
        }
    }

    /// Between reads: take the whole buffer back if the indexes cut from it are all gone
    /// (cheap, and never allocates), so a batch of requests does not run out of room
    /// half-way while earlier requests of the batch are still alive.
    #[inline]
    pub(crate) fn recycle(&mut self) {
        // Zero: never used (typical heads are indexed in place), or full; `grow` reclaims.
        let room = self.buf.capacity();
        if room != 0 && room < INDEX_BUF_CAPACITY / 2 {
            let _ = self.buf.try_reclaim(INDEX_BUF_CAPACITY);
        }
    }

    /// Room for `n` more entries.
    #[inline]
    fn reserve(&mut self, n: usize) {
        let need = n * ENTRY;
        if self.buf.capacity() - self.buf.len() < need {
            self.grow(need);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, need: usize) {
        if !self.buf.try_reclaim(need) {
            self.buf.reserve(need.max(INDEX_BUF_CAPACITY));
        }
    }

    /// Append the entry for the line starting at `offset`.
    #[inline(always)]
    fn push(&mut self, offset: u32) {
        self.buf.extend_from_slice(&offset.to_le_bytes());
    }

    /// Cut off the entries pushed since the last `take`.
    #[inline]
    fn take(&mut self) -> Bytes {
        if self.buf.is_empty() {
            return Bytes::new();
        }
        self.buf.split().freeze()
    }

    /// Drop entries pushed since the last `take` (a head that failed half-way).
    #[inline]
    fn discard(&mut self) {
        self.buf.clear();
    }
}

/// The offsets of an [`Index`], borrowed.
#[derive(Clone, Copy)]
enum Offsets<'a> {
    Inline(&'a [u16]),
    Spilled(&'a [u8]),
}

impl Offsets<'_> {
    #[inline(always)]
    fn get(self, i: usize) -> Option<usize> {
        match self {
            Offsets::Inline(at) => at.get(i).map(|&o| o as usize),
            Offsets::Spilled(b) => {
                let e = b.get(i.checked_mul(ENTRY)?..)?.first_chunk::<ENTRY>()?;
                Some(u32::from_le_bytes(*e) as usize)
            }
        }
    }
}

/// The field lines of a [`Headers`]: each line's offset and the next line's.
struct Lines<'a> {
    offsets: Offsets<'a>,
    /// The offset of line `i`.
    cur: usize,
    i: usize,
    len: usize,
    /// Where the empty line that ends the head starts.
    end: usize,
}

impl Iterator for Lines<'_> {
    type Item = (usize, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        if self.i >= self.len {
            return None;
        }
        self.i += 1;
        let start = self.cur;
        let next = if self.i < self.len {
            self.offsets.get(self.i).unwrap_or(self.end)
        } else {
            self.end
        };
        self.cur = next;
        Some((start, next))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.len - self.i.min(self.len);
        (n, Some(n))
    }
}

/// [`Headers::raw_fields`] for a line the parser did not note as verbatim (or a spilled
/// index): the line is looked at.
#[inline(never)]
fn scan_line(buf: &[u8], start: usize, next: usize) -> RawField<'_> {
    let line = buf.get(start..next.saturating_sub(2)).unwrap_or(&[]);
    let colon = crate::scan::colon_in(buf, start, start + line.len());
    let after = line.get(colon + 1..).unwrap_or(&[]);
    // Nearly always one space before the value and nothing after it.
    let (value, verbatim) = match after {
        [b' ', v @ ..] if !matches!(v, [b' ' | b'\t', ..] | [.., b' ' | b'\t']) => {
            (v, buf.get(next.saturating_sub(2)..next) == Some(b"\r\n"))
        }
        _ => (trim_ows(after), false),
    };
    RawField {
        start,
        next,
        name: &line[..colon],
        value,
        verbatim,
    }
}

/// The name and value of field line `i` (`start..next`) when the parser noted it as verbatim
/// (bit `i` of `verbatim`): `name ": " value CRLF`, so the value is what follows the name's
/// colon and a space, with no look at the line's ends.
#[inline(always)]
fn verbatim_line(
    buf: &[u8],
    verbatim: u32,
    i: usize,
    start: usize,
    next: usize,
) -> Option<(&[u8], &[u8])> {
    if i >= 32 || verbatim & (1 << i) == 0 {
        return None;
    }
    let end = next.checked_sub(2)?;
    let colon = start + crate::scan::colon_in(buf, start, end);
    Some((buf.get(start..colon)?, buf.get(colon + 2..end)?))
}

/// Where the first `:` of a field line is (the end of its name; the line's length if there
/// is none).
#[cfg(test)]
fn colon_at(line: &[u8]) -> usize {
    crate::scan::colon_in(line, 0, line.len())
}

/// One field of a parsed head, with where its line is (see [`Headers::raw_fields`]).
pub(crate) struct RawField<'a> {
    /// The offset of the line in the head.
    pub start: usize,
    /// The offset of the line after it.
    pub next: usize,
    pub name: &'a [u8],
    pub value: &'a [u8],
    /// The line is exactly `name: value\r\n`.
    pub verbatim: bool,
}

/// Header fields of one message: name/value slices of a single shared `Bytes` (the head), so
/// holding a `Headers` costs one reference count however many fields it has (two past 24
/// fields or 64 KiB of head, whose field index is shared too).
#[derive(Clone, Default)]
pub struct Headers {
    pub(crate) buf: Bytes,
    /// Field line offsets.
    idx: Index,
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, v)| (n, Bytes::copy_from_slice(v))))
            .finish()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Headers {
    pub(crate) fn from_parts(buf: Bytes, idx: Index) -> Headers {
        Headers { buf, idx }
    }

    /// Each field's line: its offset and the offset of the next line (for the last field,
    /// the empty line that ends the head, 2 bytes before its end).
    #[inline]
    fn lines(&self) -> Lines<'_> {
        let end = self.buf.len().saturating_sub(2);
        let offsets = match &self.idx {
            Index::Inline { len, at, .. } => {
                Offsets::Inline(at.get(..*len as usize).unwrap_or(&[]))
            }
            Index::Spilled(b) => Offsets::Spilled(b),
        };
        Lines {
            cur: offsets.get(0).unwrap_or(end),
            offsets,
            i: 0,
            len: self.idx.len(),
            end,
        }
    }

    /// Each field as its line's bounds (`start..next`, the line ending included), its name
    /// and its value, and whether the line is exactly `name: value\r\n` (so copying the line
    /// as it is writes what [`put_field`](crate::encode) would).
    #[inline]
    pub(crate) fn raw_fields(&self) -> impl Iterator<Item = RawField<'_>> + '_ {
        let buf = &self.buf[..];
        let verbatim = self.verbatim_lines();
        self.lines().zip(0..).map(
            #[inline(always)]
            move |((start, next), i)| match verbatim_line(buf, verbatim, i, start, next) {
                Some((name, value)) => RawField {
                    start,
                    next,
                    name,
                    value,
                    verbatim: true,
                },
                None => scan_line(buf, start, next),
            },
        )
    }

    /// The lines the parser noted as verbatim (bit `i`: line `i`; none for a spilled index).
    #[inline(always)]
    fn verbatim_lines(&self) -> u32 {
        match &self.idx {
            Index::Inline { verbatim, .. } => *verbatim,
            Index::Spilled(_) => 0,
        }
    }

    /// Number of fields (repeated names count each time).
    pub fn len(&self) -> usize {
        self.idx.len()
    }

    /// No fields at all.
    pub fn is_empty(&self) -> bool {
        self.idx.len() == 0
    }

    /// The field line `start..next` (`next` is the offset of the line after it) split into
    /// its name and its value.
    #[inline]
    fn field(&self, (start, next): (usize, usize), i: usize) -> (&str, &[u8]) {
        if let Some((name, value)) = verbatim_line(&self.buf, self.verbatim_lines(), i, start, next)
        {
            return (core::str::from_utf8(name).unwrap_or(""), value);
        }
        let line = self.buf.get(start..next.saturating_sub(2)).unwrap_or(&[]);
        let colon = crate::scan::colon_in(&self.buf, start, start + line.len());
        // The parsers only accept token bytes in names, all ASCII.
        let name = core::str::from_utf8(&line[..colon]).unwrap_or("");
        (name, trim_ows(line.get(colon + 1..).unwrap_or(&[])))
    }

    /// The value of the field line `start..next` if its name is `name` (case-insensitive).
    #[inline]
    // A plain loop: `contains` calls `memchr`, dearer for a name of a few bytes.
    #[allow(clippy::manual_contains)]
    fn value_if(&self, (start, next): (usize, usize), name: &[u8]) -> Option<&[u8]> {
        // The name ends at the line's first `:`: a `name` with a `:` in it matches no line.
        // Checked last, on a match only (most lines fail the first test).
        let line = self.buf.get(start..next.saturating_sub(2))?;
        if line.get(name.len()) != Some(&b':')
            || !line[..name.len()].eq_ignore_ascii_case(name)
            || name.iter().any(|&b| b == b':')
        {
            return None;
        }
        Some(trim_ows(&line[name.len() + 1..]))
    }

    /// Fields in the order received, names as sent (not lower-cased).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.lines().zip(0..).map(move |(l, i)| self.field(l, i))
    }

    /// [`iter`](Self::iter) with names as bytes (no UTF-8 check: cheaper in a hot loop).
    pub fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let verbatim = self.verbatim_lines();
        self.lines().zip(0..).map(move |((start, next), i)| {
            if let Some(nv) = verbatim_line(&self.buf, verbatim, i, start, next) {
                return nv;
            }
            let line = self.buf.get(start..next.saturating_sub(2)).unwrap_or(&[]);
            let colon = crate::scan::colon_in(&self.buf, start, start + line.len());
            (
                &line[..colon],
                trim_ows(line.get(colon + 1..).unwrap_or(&[])),
            )
        })
    }

    /// First value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        self.lines().find_map(|l| self.value_if(l, name))
    }

    /// First value of `name` as a zero-copy `Bytes` slice of the head.
    pub fn get_bytes(&self, name: &str) -> Option<Bytes> {
        let v = self.get(name)?;
        Some(self.buf.slice_ref(v))
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_bytes();
        self.lines().filter_map(move |l| self.value_if(l, name))
    }

    /// Whether a field `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Whether any comma-separated element of any `name` field equals `token`
    /// (case-insensitive), e.g. `has_token("connection", "close")`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).any(|v| list_has_token(v, token))
    }

    /// The shared buffer the fields point into.
    pub fn buffer(&self) -> &Bytes {
        &self.buf
    }
}

/// Whether the comma-separated list `value` contains `token` (case-insensitive, OWS trimmed).
pub(crate) fn list_has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
}

pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Bytes a `Host` value may hold (RFC 3986 `reg-name`, IP literals, `:port`): unreserved,
/// `%`, sub-delims, `:`, `[`, `]`.
const HOST_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            );
        b += 1;
    }
    t
};

/// Whether an absolute-form target's authority (after any `userinfo@`) holds only the bytes
/// a `Host` may ([`HOST_BYTE`]); true for the other forms (origin, authority, `*`). A proxy
/// makes the forwarded `Host` from it.
/// Whether `value` is a `Host` value an HTTP/1.1 server accepts: a `reg-name`, IP literal
/// or `:port` of RFC 3986, as the request parser checks it (a proxy checks an HTTP/2
/// `:authority` with it before making it a `Host`).
pub fn is_host_value(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(|&b| HOST_BYTE[b as usize])
}

pub(crate) fn absolute_authority_ok(target: &[u8]) -> bool {
    absolute_authority(target).is_none_or(|h| h.iter().all(|&b| HOST_BYTE[b as usize]))
}

/// The authority of an absolute-form request target (`scheme://authority/path?query`) without
/// its userinfo (`http://u@h:1/p` → `h:1`); `None` for the other forms (origin-form `/…`,
/// authority-form, `*`).
#[inline]
pub(crate) fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    if target.first().is_none_or(|b| !b.is_ascii_alphabetic()) {
        return None;
    }
    let at = memchr::memmem::find(target, b"://")?;
    let rest = &target[at + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let auth = &rest[..end];
    Some(match auth.iter().rposition(|&b| b == b'@') {
        Some(i) => &auth[i + 1..],
        None => auth,
    })
}

/// Framing-relevant facts gathered in one pass over the header fields.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Framing {
    pub content_length: Option<u64>,
    pub transfer_encoding: bool,
    pub chunked_final: bool,
    pub te_other: bool,
    pub conn_close: bool,
    pub conn_keep_alive: bool,
    pub conn_upgrade: bool,
    /// A `Connection` token other than `close`, `keep-alive`, `upgrade` (or an empty list
    /// element) was seen: the field may name fields to drop when forwarding.
    pub conn_others: bool,
    pub upgrade: bool,
    pub expect_continue: bool,
    pub host_count: u8,
    /// A `Host` value that is not a `uri-host [":" port]` (RFC 9112 §3.2: 400).
    pub host_invalid: bool,
}

impl Framing {
    /// Take one field into account. Names are classified by length first, so most fields
    /// cost one compare.
    #[inline(always)]
    pub(crate) fn field(&mut self, n: &[u8], value: &[u8]) -> Result<(), Error> {
        match n.len() {
            4 if token_eq(n, b"host") => {
                self.host_count = self.host_count.saturating_add(1);
                self.host_invalid |= !value.iter().all(|&b| HOST_BYTE[b as usize]);
            }
            6 if token_eq(n, b"expect") => {
                self.expect_continue |= trim_ows(value).eq_ignore_ascii_case(b"100-continue")
            }
            7 if token_eq(n, b"upgrade") => self.upgrade = true,
            10 if token_eq(n, b"connection") => {
                // `token_eq` is exact for field values too: no letter or `-` folds onto
                // another byte a value may hold (only CR folds onto `-`).
                if token_eq_inline(value, b"keep-alive") {
                    self.conn_keep_alive = true;
                } else if token_eq_inline(value, b"close") {
                    self.conn_close = true;
                } else {
                    self.connection(value)
                }
            }
            14 if token_eq(n, b"content-length") => {
                // Nearly always a few digits (every response with a body has one): read here;
                // anything else (a list, a repeat, bad bytes) in `content_length`.
                match short_length(value) {
                    Some(len) if self.content_length.is_none() => self.content_length = Some(len),
                    _ => self.content_length(value)?,
                }
            }
            17 if token_eq(n, b"transfer-encoding") => self.transfer_encoding(value)?,
            _ => {}
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn connection(&mut self, value: &[u8]) {
        for t in value.split(|&b| b == b',') {
            let t = trim_ows(t);
            if t.eq_ignore_ascii_case(b"close") {
                self.conn_close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.conn_keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.conn_upgrade = true;
            } else if !t.is_empty() {
                self.conn_others = true;
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn content_length(&mut self, value: &[u8]) -> Result<(), Error> {
        // RFC 9110 §8.6: a list of identical values MAY be accepted; anything else is
        // unrecoverable. Nearly always one number: no list to split, nothing to trim.
        if !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
            let len = parse_content_length(value)?;
            return match self.content_length {
                Some(prev) if prev != len => Err(Error::InvalidContentLength),
                _ => {
                    self.content_length = Some(len);
                    Ok(())
                }
            };
        }
        for v in value.split(|&b| b == b',') {
            let len = parse_content_length(trim_ows(v))?;
            match self.content_length {
                Some(prev) if prev != len => return Err(Error::InvalidContentLength),
                _ => self.content_length = Some(len),
            }
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn transfer_encoding(&mut self, value: &[u8]) -> Result<(), Error> {
        for coding in value.split(|&b| b == b',') {
            let coding = trim_ows(coding);
            if coding.is_empty() {
                continue;
            }
            if self.chunked_final {
                // `chunked` was not the final coding, or it was repeated.
                return Err(Error::InvalidTransferEncoding);
            }
            self.transfer_encoding = true;
            if coding.eq_ignore_ascii_case(b"chunked") {
                self.chunked_final = true;
            } else {
                self.te_other = true;
            }
        }
        if !self.transfer_encoding {
            return Err(Error::InvalidTransferEncoding);
        }
        Ok(())
    }

    /// The checks that need all fields.
    #[inline]
    pub(crate) fn finish(self) -> Result<Framing, Error> {
        if self.transfer_encoding && self.content_length.is_some() {
            return Err(Error::ContentLengthWithTransferEncoding);
        }
        Ok(self)
    }

    /// What a request with these fields means (RFC 9112 §6, §9.3; RFC 9110 §10.1.1):
    /// body framing, keep-alive, `Expect: 100-continue`, upgrade.
    #[inline(always)]
    pub(crate) fn request_facts(
        &self,
        method: Method,
        version: Version,
    ) -> Result<RequestFacts, Error> {
        if self.transfer_encoding {
            if version == Version::Http10 {
                return Err(Error::TransferEncodingInHttp10);
            }
            if !self.chunked_final || self.te_other {
                // RFC 9112 §6.3: a request whose final coding is not chunked has no
                // determinable length.
                return Err(Error::InvalidTransferEncoding);
            }
        }
        let keep_alive = match version {
            Version::Http11 => !self.conn_close,
            Version::Http10 => self.conn_keep_alive && !self.conn_close,
        };
        let body = if self.chunked_final {
            BodyKind::Chunked
        } else {
            match self.content_length {
                Some(0) | None => BodyKind::Empty,
                Some(n) => BodyKind::Length(n),
            }
        };
        Ok(RequestFacts {
            body,
            keep_alive,
            expect_continue: self.expect_continue && version == Version::Http11,
            upgrade: (self.upgrade && self.conn_upgrade) || method == Method::Connect,
        })
    }
}

/// What the framing fields of a request mean.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestFacts {
    pub body: BodyKind,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub upgrade: bool,
}

/// Case-insensitive comparison of a field name (a token: no CR, LF or other controls) with a
/// lower-case ASCII constant, eight bytes at a time. OR-ing 0x20 folds letters to lower case
/// and leaves `-` and digits alone; no token byte folds onto a different letter.
#[inline]
pub(crate) fn token_eq(name: &[u8], lower: &[u8]) -> bool {
    token_eq_inline(name, lower)
}

/// [`token_eq`], always inlined: for hot compares whose first operand's length is not known
/// (a `Connection` value), so the compare folds to a length test and two word compares.
#[inline(always)]
pub(crate) fn token_eq_inline(name: &[u8], lower: &[u8]) -> bool {
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    #[inline(always)]
    fn word8(b: &[u8], i: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(w)
    }
    #[inline(always)]
    fn word4(b: &[u8], i: usize) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&b[i..i + 4]);
        u32::from_le_bytes(w)
    }
    if n >= 8 {
        let mut i = 0;
        while i + 8 <= n {
            if word8(name, i) | 0x2020_2020_2020_2020 != word8(lower, i) | 0x2020_2020_2020_2020 {
                return false;
            }
            i += 8;
        }
        i == n
            || word8(name, n - 8) | 0x2020_2020_2020_2020
                == word8(lower, n - 8) | 0x2020_2020_2020_2020
    } else if n >= 4 {
        word4(name, 0) | 0x2020_2020 == word4(lower, 0) | 0x2020_2020
            && word4(name, n - 4) | 0x2020_2020 == word4(lower, n - 4) | 0x2020_2020
    } else {
        name.eq_ignore_ascii_case(lower)
    }
}

/// A `Content-Length` value of 1 to 19 digits (so no overflow), else `None`.
#[inline(always)]
fn short_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n * 10 + u64::from(d);
    }
    Some(n)
}

/// `Content-Length = 1*DIGIT`, no sign, no whitespace inside, no overflow.
pub(crate) fn parse_content_length(v: &[u8]) -> Result<u64, Error> {
    if v.is_empty() || v.len() > 19 {
        return Err(Error::InvalidContentLength);
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(Error::InvalidContentLength);
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Ok(n)
}

/// Identifies one request/response exchange on a connection, in order of arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// An id with sequence number `n` (for requests built with [`Request::from_parts`], e.g.
    /// an HTTP/2 or HTTP/3 stream id).
    pub const fn new(n: u64) -> RequestId {
        RequestId(n)
    }

    /// The sequence number (0 for the first request on the connection).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A request head received by a server: zero-copy views into one frozen `Bytes`.
#[derive(Clone)]
pub struct Request {
    pub(crate) id: RequestId,
    pub(crate) method: Method,
    pub(crate) method_len: u16,
    pub(crate) target: (u32, u32),
    pub(crate) version: Version,
    pub(crate) headers: Headers,
    pub(crate) body: BodyKind,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    pub(crate) upgrade: bool,
    pub(crate) conn_others: bool,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("method", &self.method_str())
            .field("target", &self.target())
            .field("version", &self.version)
            .field("headers", &self.headers)
            .field("body", &self.body)
            .finish()
    }
}

/// The path-and-query of an absolute-form target (`scheme://authority/path?query`): from the
/// first `/` after the authority, or `/` when the path is empty. Other targets as they are.
fn absolute_path(t: &str) -> &str {
    let Some(at) = t.find("://") else {
        return t;
    };
    let rest = &t[at + 3..];
    // `/` and `?` are ASCII: the cuts fall on char boundaries.
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        _ => "/",
    }
}

/// Where the query of a target starts (its `?`), or the target's length.
#[inline]
fn query_at(t: &[u8]) -> usize {
    // Paths are short: a plain loop beats a SIMD search's setup.
    if t.len() <= 32 {
        t.iter().position(|&b| b == b'?').unwrap_or(t.len())
    } else {
        memchr::memchr(b'?', t).unwrap_or(t.len())
    }
}

impl Request {
    /// Builds a request head from already-decoded parts (an HTTP/2 or HTTP/3 HEADERS block),
    /// so one application API serves every HTTP version without re-parsing text.
    ///
    /// `headers` are the regular fields (no pseudo-fields: their names are not tokens), in
    /// order; pass the authority as a `host` field if the application should see one.
    /// `body` says how the body arrives: [`BodyKind::Empty`] (the HEADERS ended the stream),
    /// [`BodyKind::Length`] when the length is known, [`BodyKind::Chunked`] (or
    /// [`BodyKind::UntilClose`]) when it is not.
    ///
    /// The fields are validated as the HTTP/1.1 parser validates them: the method and names
    /// must be tokens, the target visible ASCII or UTF-8 without spaces, values free of CR, LF,
    /// NUL and other controls but HTAB, with no leading or trailing whitespace. `keep_alive`,
    /// `expects_continue` and `is_upgrade` are derived from the fields and `version` as for a
    /// parsed request, and `Content-Length` / `Transfer-Encoding` must agree with `body`
    /// (RFC 9113 §8.1.1). The head is laid out as HTTP/1.1 text in one buffer (one allocation,
    /// plus one for the field index beyond 16 fields), which
    /// [`head_bytes`](Self::head_bytes) returns.
    ///
    /// ```
    /// use ferry_http1::{BodyKind, Method, Request, RequestId, Version};
    ///
    /// let fields: [(&[u8], &[u8]); 2] = [(b"host", b"example.com"), (b"accept", b"*/*")];
    /// let req = Request::from_parts(RequestId::new(1), b"GET", b"/index.html?q=1",
    ///     Version::Http11, fields, BodyKind::Empty).unwrap();
    /// assert_eq!(req.method(), Method::Get);
    /// assert_eq!(req.path(), "/index.html");
    /// assert_eq!(req.headers().get("Host"), Some(&b"example.com"[..]));
    /// assert!(req.keep_alive());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidHead`] with [`HeadError::Token`](crate::HeadError::Token) (method or
    /// target), [`HeaderName`](crate::HeadError::HeaderName) or
    /// [`HeaderValue`](crate::HeadError::HeaderValue); the framing errors of the parser
    /// ([`Error::InvalidContentLength`], also for a length that contradicts `body`;
    /// [`Error::InvalidTransferEncoding`], [`Error::ContentLengthWithTransferEncoding`],
    /// [`Error::TransferEncodingInHttp10`]); [`Error::HeadTooLarge`] past 4 GiB.
    pub fn from_parts<'a, I>(
        id: RequestId,
        method: &[u8],
        target: &[u8],
        version: Version,
        headers: I,
        body: BodyKind,
    ) -> Result<Request, Error>
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    {
        use crate::HeadError;
        if !crate::is_token(method) {
            return Err(Error::InvalidHead(HeadError::Token));
        }
        // httparse's request-target bytes (visible ASCII and obs-text), valid UTF-8 as
        // `target()` returns a `str`.
        if target.is_empty()
            || !target.iter().all(|&b| b > b' ' && b != 0x7f)
            || core::str::from_utf8(target).is_err()
        {
            return Err(Error::InvalidHead(HeadError::Token));
        }
        if method.len() > u16::MAX as usize {
            return Err(Error::HeadTooLarge);
        }
        let fields: SmallVec<[(&[u8], &[u8]); INLINE_HEADERS]> = headers.into_iter().collect();
        let mut framing = Framing::default();
        // "METHOD SP target SP HTTP/1.1 CRLF" + "name: value CRLF"... + CRLF
        let mut len = method.len() + target.len() + 12;
        for &(name, value) in &fields {
            if !crate::is_token(name) {
                return Err(Error::InvalidHead(HeadError::HeaderName));
            }
            // Controls other than HTAB, and DEL; branch-free so the loop vectorizes.
            let bad = value.iter().fold(false, |acc, &b| {
                acc | ((b < b' ') & (b != b'\t')) | (b == 0x7f)
            });
            if bad
                || matches!(value.first(), Some(b' ' | b'\t'))
                || matches!(value.last(), Some(b' ' | b'\t'))
            {
                return Err(Error::InvalidHead(HeadError::HeaderValue));
            }
            if name.len() > u16::MAX as usize {
                return Err(Error::HeadTooLarge);
            }
            framing.field(name, value)?;
            len += name.len() + value.len() + 4;
        }
        len += 2;
        if len > u32::MAX as usize {
            return Err(Error::HeadTooLarge);
        }
        let framing = framing.finish()?;
        // `method` is a token, so ASCII.
        let m = Method::from_token(core::str::from_utf8(method).unwrap_or(""));
        let facts = framing.request_facts(m, version)?;
        // The fields may announce a length; it must agree with how the body arrives.
        match (facts.body, body) {
            (BodyKind::Chunked, BodyKind::Chunked | BodyKind::UntilClose) => {}
            (BodyKind::Chunked, _) => return Err(Error::InvalidTransferEncoding),
            (BodyKind::Length(n), BodyKind::Length(m)) if n != m => {
                return Err(Error::InvalidContentLength)
            }
            (BodyKind::Length(_), BodyKind::Empty) => return Err(Error::InvalidContentLength),
            (BodyKind::Empty, BodyKind::Length(_)) if framing.content_length.is_some() => {
                return Err(Error::InvalidContentLength)
            }
            _ => {}
        }
        let mut buf = alloc::vec::Vec::with_capacity(len);
        buf.extend_from_slice(method);
        buf.push(b' ');
        buf.extend_from_slice(target);
        buf.push(b' ');
        buf.extend_from_slice(version.as_str().as_bytes());
        buf.extend_from_slice(b"\r\n");
        let mut starts: SmallVec<[usize; INLINE_HEADERS]> = SmallVec::new();
        for &(name, value) in &fields {
            starts.push(buf.len());
            buf.extend_from_slice(name);
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        debug_assert_eq!(buf.len(), len);
        Ok(Request {
            id,
            method: m,
            method_len: method.len() as u16,
            target: (method.len() as u32 + 1, target.len() as u32),
            version,
            headers: Headers::from_parts(
                Bytes::from(buf),
                Index::build(starts.len(), len, starts.into_iter(), None),
            ),
            body,
            keep_alive: facts.keep_alive,
            expect_continue: facts.expect_continue,
            upgrade: facts.upgrade,
            conn_others: framing.conn_others,
        })
    }

    /// This exchange's id on its connection.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The method token as sent.
    pub fn method_str(&self) -> &str {
        // A known method is exactly its token (`Method::from_bytes`): no UTF-8 check.
        match self.method.as_str() {
            Some(m) => m,
            None => core::str::from_utf8(self.method_bytes()).unwrap_or(""),
        }
    }

    /// [`method_str`](Self::method_str) as bytes: a token, so without the UTF-8 check.
    #[inline]
    pub(crate) fn method_bytes(&self) -> &[u8] {
        self.headers
            .buf
            .get(..self.method_len as usize)
            .unwrap_or(&[])
    }

    /// The bytes `method SP request-target SP "HTTP/1.1" CRLF` when the head starts with
    /// exactly those (what [`ClientConnection`](crate::ClientConnection) writes for this
    /// request): forwarded as they are, in one copy.
    #[inline]
    pub(crate) fn http11_request_line(&self) -> Option<&[u8]> {
        let (s, l) = self.target;
        let m = self.method_len as usize;
        let end = (s + l) as usize;
        let buf = &self.headers.buf[..];
        if s as usize != m + 1 || buf.get(m) != Some(&b' ') {
            return None;
        }
        let line = buf.get(..end + 11)?;
        (line[end..] == *b" HTTP/1.1\r\n").then_some(line)
    }

    /// [`target`](Self::target) as bytes, without the UTF-8 check (the parser and
    /// [`Request::new`] check it, so both are the same bytes).
    #[inline]
    pub fn target_bytes(&self) -> &[u8] {
        let (s, l) = self.target;
        self.headers
            .buf
            .get(s as usize..(s + l) as usize)
            .unwrap_or(&[])
    }

    /// The request target as sent (origin-form path and query, absolute-form, authority-form
    /// for CONNECT, or `*`).
    pub fn target(&self) -> &str {
        let (s, l) = self.target;
        core::str::from_utf8(&self.headers.buf[s as usize..(s + l) as usize]).unwrap_or("")
    }

    /// The path part of the target (before `?`). For an absolute-form target
    /// (`http://host/p?q`, which servers must accept: RFC 9112 §3.2.2) it is the path after the
    /// authority (`/p`, or `/` when empty); authority-form and `*` come back as sent.
    pub fn path(&self) -> &str {
        let t = self.target();
        let t = match t.as_bytes().first() {
            Some(b'/') | None => t,
            Some(_) => absolute_path(t),
        };
        // `?` is ASCII: the cut falls on a char boundary.
        t.get(..query_at(t.as_bytes())).unwrap_or(t)
    }

    /// The host the request is for (`host[:port]`, as sent): for an absolute-form target the
    /// target's authority, whatever the `Host` field says (RFC 9112 §3.2.2: the field is
    /// ignored then); for CONNECT the authority-form target; otherwise the `Host` field. `None`
    /// when there is none (an HTTP/1.0 request without `Host`) or it is empty.
    pub fn host(&self) -> Option<&str> {
        let t = self.target();
        let host = match t.as_bytes().first() {
            Some(b'/' | b'*') | None => {
                let v = self.headers.get("host")?;
                core::str::from_utf8(v).ok()?.trim_matches([' ', '\t'])
            }
            Some(_) if self.method == Method::Connect => t,
            Some(_) => self.target_authority().unwrap_or(""),
        };
        (!host.is_empty()).then_some(host)
    }

    /// The authority of an absolute-form target (`http://u@h:1/p` → `h:1`, without userinfo),
    /// which RFC 9112 §3.2.2 puts before the `Host` field; `None` for other target forms.
    #[inline]
    pub fn target_authority(&self) -> Option<&str> {
        core::str::from_utf8(absolute_authority(self.target_bytes())?).ok()
    }

    /// The query part of the target (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        let t = self.target();
        t.get(query_at(t.as_bytes())..)?.strip_prefix('?')
    }

    /// HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Header fields.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// How the body is delimited (its data arrives as `Data` events).
    pub fn body_kind(&self) -> BodyKind {
        self.body
    }

    /// Whether the connection stays open after this exchange (per the request alone).
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Whether a `Connection` field may name fields beyond the standard tokens: `false`
    /// means every `Connection` field of this head (if any) holds only `close`,
    /// `keep-alive`, `upgrade` (any case) and empty list elements, so the list of fields
    /// it names for removal when forwarding (RFC 9110 §7.6.1) is certainly empty and need
    /// not be computed. `true` means some other token is present (which may still be a
    /// standard hop-by-hop name such as `TE`). Recorded by the parser at no extra cost.
    pub fn connection_names_others(&self) -> bool {
        self.conn_others
    }

    /// Whether the client sent `Expect: 100-continue` (HTTP/1.1 only).
    pub fn expects_continue(&self) -> bool {
        self.expect_continue
    }

    /// Whether this request asks to switch protocols (`Connection: upgrade` + `Upgrade`) or is
    /// a CONNECT: answering it with 101 (or 2xx to CONNECT) hands the connection over.
    pub fn is_upgrade(&self) -> bool {
        self.upgrade
    }

    /// The whole request head as received (request line and fields), one shared buffer.
    pub fn head_bytes(&self) -> &Bytes {
        &self.headers.buf
    }
}

/// A response head received by a client.
#[derive(Clone)]
pub struct Response {
    pub(crate) id: RequestId,
    pub(crate) status: u16,
    pub(crate) reason: (u32, u32),
    pub(crate) version: Version,
    pub(crate) headers: Headers,
    pub(crate) body: BodyKind,
    pub(crate) keep_alive: bool,
    pub(crate) conn_others: bool,
    pub(crate) coded: bool,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("version", &self.version)
            .field("headers", &self.headers)
            .field("body", &self.body)
            .finish()
    }
}

impl Response {
    /// The request this answers.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Reason phrase as sent (may be empty).
    pub fn reason(&self) -> &str {
        let (s, l) = self.reason;
        match &self.headers.buf[s as usize..(s + l) as usize] {
            b"OK" => "OK", // nearly every response: no UTF-8 check
            r => core::str::from_utf8(r).unwrap_or(""),
        }
    }

    /// HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Header fields.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// How the body is delimited.
    pub fn body_kind(&self) -> BodyKind {
        self.body
    }

    /// Whether the server lets the connection be reused after this response.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Whether a `Connection` field may name fields beyond the standard tokens: `false`
    /// means every `Connection` field of this head (if any) holds only `close`,
    /// `keep-alive`, `upgrade` (any case) and empty list elements, so the list of fields
    /// it names for removal when forwarding (RFC 9110 §7.6.1) is certainly empty and need
    /// not be computed. `true` means some other token is present (which may still be a
    /// standard hop-by-hop name such as `TE`). Recorded by the parser at no extra cost.
    pub fn connection_names_others(&self) -> bool {
        self.conn_others
    }

    /// The whole response head as received.
    pub fn head_bytes(&self) -> &Bytes {
        &self.headers.buf
    }

    /// Whether the body has a transfer coding other than `chunked` (`Transfer-Encoding:
    /// gzip, chunked`, or `gzip` alone): its `Data` events carry the bytes still in that
    /// coding, which only the named coding can read. A proxy that re-frames the body must not
    /// forward them as they are (nginx answers `502` to such a response).
    pub fn has_other_transfer_coding(&self) -> bool {
        self.coded
    }
}

/// A request head parsed in place: offsets into the input, so the caller can split the head
/// off its buffer afterwards without copying and put it in `req` (whose head is empty until
/// then).
pub(crate) struct ParsedRequest {
    pub len: usize,
    pub host_count: u8,
    pub host_invalid: bool,
    pub req: Request,
}

/// Parse a request head at the start of `buf`, with at most `max_headers` fields, its field
/// index going to `out`. `Ok(None)` means more bytes are needed. Applies the framing rules of
/// RFC 9112 §6.
///
/// One pass over the bytes ([`crate::parse`]): each field line's offset goes to the index and
/// the framing fields to [`Framing`] as the parser finds them. Errors are reported in this
/// order: the parser's (httparse's verdicts), framing fields, empty lines before the request
/// line, bare LF ending the request line, the last field line or the head, transfer coding,
/// then bare LF ending other field lines.
#[inline]
pub(crate) fn parse_request(
    buf: &[u8],
    max_headers: usize,
    out: &mut IndexBuf,
) -> Result<Option<ParsedRequest>, Error> {
    let r = request_head(buf, max_headers.min(MAX_HEADERS_CAP), out);
    if !matches!(r, Ok(Some(_))) {
        out.discard();
    }
    r
}

/// Where [`request_head`] puts field line offsets while parsing: in place while they fit
/// ([`Index::fits`]), then in the connection's [`IndexBuf`].
struct IndexWriter<'a> {
    at: [u16; INLINE_FIELDS],
    /// Verbatim lines (see [`Index::Inline`]).
    verbatim: u32,
    spilled: bool,
    out: &'a mut IndexBuf,
}

impl IndexWriter<'_> {
    /// Offsets grow with `i`: once one does not fit in place, no later one does.
    #[inline(always)]
    fn push(&mut self, i: usize, offset: usize) {
        match self.at.get_mut(i) {
            Some(slot) if offset <= u16::MAX as usize => *slot = offset as u16,
            _ => self.push_slow(i, offset),
        }
    }

    /// [`push`](Self::push), noting whether the line is verbatim.
    #[inline(always)]
    fn push_line(&mut self, i: usize, offset: usize, verbatim: bool) {
        match self.at.get_mut(i) {
            Some(slot) if offset <= u16::MAX as usize => {
                *slot = offset as u16;
                // `i` < INLINE_FIELDS ≤ 32.
                self.verbatim |= u32::from(verbatim) << (i & 31);
            }
            _ => self.push_slow(i, offset),
        }
    }

    #[cold]
    #[inline(never)]
    fn push_slow(&mut self, i: usize, offset: usize) {
        self.spill(i);
        self.out.reserve(1);
        self.out.push(offset as u32);
    }

    /// Move the first `n` offsets out of place.
    fn spill(&mut self, n: usize) {
        if !self.spilled {
            self.spilled = true;
            self.out.reserve(n + 1);
            for &o in &self.at[..n] {
                self.out.push(u32::from(o));
            }
        }
    }

    #[inline(always)]
    fn finish(mut self, n: usize, len: usize) -> Index {
        if !self.spilled && Index::fits(n, len) {
            return Index::Inline {
                len: n as u8,
                at: self.at,
                verbatim: self.verbatim,
            };
        }
        self.spill(n);
        Index::Spilled(self.out.take())
    }
}

/// What [`request_head`] and [`response_head`] build from the fields as the parser finds them.
struct HeadFields<'a> {
    index: IndexWriter<'a>,
    framing: Framing,
    /// The first framing error: reported once the parser has accepted the whole head (its
    /// errors come first).
    framing_err: Option<Error>,
}

impl<'a> HeadFields<'a> {
    /// Nothing found yet; spilled offsets go to `out`.
    #[inline(always)]
    fn new(out: &'a mut IndexBuf) -> HeadFields<'a> {
        HeadFields {
            index: IndexWriter {
                at: [0; INLINE_FIELDS],
                verbatim: 0,
                spilled: false,
                out,
            },
            framing: Framing::default(),
            framing_err: None,
        }
    }

    /// The index writer and the framing facts, once the parser accepted the head: the first
    /// framing error, if any, now.
    #[inline(always)]
    fn finish(self) -> Result<(IndexWriter<'a>, Framing), Error> {
        match self.framing_err {
            Some(e) => Err(e),
            None => Ok((self.index, self.framing.finish()?)),
        }
    }
}

impl crate::parse::FieldSink for HeadFields<'_> {
    #[inline(always)]
    fn field(&mut self, i: usize, offset: usize, name: &[u8], value: &[u8]) {
        self.field_line(i, offset, name, value, false)
    }

    #[inline(always)]
    fn field_line(&mut self, i: usize, offset: usize, name: &[u8], value: &[u8], verbatim: bool) {
        let _ = name;
        self.index.push_line(i, offset, verbatim);
        // Most names are none of the framing fields: one table look-up by length and first
        // letter rules them out.
        if let (Some(&first), Some(&want)) = (name.first(), FRAMING_FIRST.get(name.len())) {
            if first | 0x20 == want && self.framing_err.is_none() {
                if let Err(e) = self.framing.field(name, value) {
                    self.framing_err = Some(e);
                }
            }
        }
    }
}

/// [`parse_request`]'s work: the parser, the index and the framing facts in one pass.
#[inline(always)]
fn request_head(
    buf: &[u8],
    max_headers: usize,
    out: &mut IndexBuf,
) -> Result<Option<ParsedRequest>, Error> {
    let mut fields = HeadFields::new(out);
    let raw = crate::parse::parse_request_head(buf, max_headers, &mut fields);
    let raw = match raw {
        Ok(crate::parse::Status::Complete(r)) => r,
        Ok(crate::parse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::from_parse(e)),
    };
    let (index, framing) = fields.finish()?;
    let len = raw.len;
    if raw.method.0 != 0 {
        // Empty lines before the request line; the caller strips them first.
        return Err(Error::InvalidHead(crate::HeadError::NewLine));
    }
    if raw.line_ends.outer_bare {
        return Err(Error::BareLineFeed);
    }
    let version = if raw.version == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    // The request line starts the buffer (checked above): `GET ` is the parser's word test.
    let method = if buf.first_chunk::<4>() == Some(b"GET ") {
        Method::Get
    } else {
        Method::from_bytes(&buf[..raw.method.1])
    };
    let facts = framing.request_facts(method, version)?;
    if raw.line_ends.field_bare {
        return Err(Error::BareLineFeed);
    }
    if len > u32::MAX as usize {
        return Err(Error::HeadTooLarge);
    }
    let idx = index.finish(raw.fields, len);
    let (target_start, target_end) = raw.target;
    Ok(Some(ParsedRequest {
        len,
        host_count: framing.host_count,
        host_invalid: framing.host_invalid,
        req: Request {
            id: RequestId(0),
            method,
            method_len: raw.method.1 as u16,
            target: (target_start as u32, (target_end - target_start) as u32),
            version,
            headers: Headers {
                buf: Bytes::new(),
                idx,
            },
            body: facts.body,
            keep_alive: facts.keep_alive,
            expect_continue: facts.expect_continue,
            upgrade: facts.upgrade,
            conn_others: framing.conn_others,
        },
    }))
}

/// For each name length, the first letter (lower case) of the framing field with that length
/// ([`Framing::field`]), or 0.
const FRAMING_FIRST: [u8; 18] = {
    let mut t = [0u8; 18];
    t[4] = b'h'; // host
    t[6] = b'e'; // expect
    t[7] = b'u'; // upgrade
    t[10] = b'c'; // connection
    t[14] = b'c'; // content-length
    t[17] = b't'; // transfer-encoding
    t
};

/// A response head parsed in place (offsets into the input).
pub(crate) struct ParsedResponse {
    pub len: usize,
    pub status: u16,
    pub reason: (u32, u32),
    pub version: Version,
    pub idx: Index,
    pub body: BodyKind,
    pub keep_alive: bool,
    pub conn_others: bool,
    /// A transfer coding other than `chunked` applies to the body.
    pub coded: bool,
}

/// Parse a response head at the start of `buf`, with at most `max_headers` fields, its field
/// index going to `out`. `Ok(None)` means more bytes are needed. `head_request` /
/// `connect_request` say what the matching request was, since they change how the body is
/// delimited (RFC 9112 §6.3).
///
/// One pass over the bytes ([`crate::parse`]), as for requests: each field line's offset goes
/// to the index and the framing fields to [`Framing`] as the parser finds them. Errors are
/// reported in this order: the parser's (httparse's verdicts), a bare LF ending any line,
/// framing fields, `Transfer-Encoding` in HTTP/1.0.
#[inline]
pub(crate) fn parse_response(
    buf: &[u8],
    max_headers: usize,
    head_request: bool,
    connect_request: bool,
    out: &mut IndexBuf,
) -> Result<Option<ParsedResponse>, Error> {
    let r = response_head(
        buf,
        max_headers.min(MAX_HEADERS_CAP),
        head_request,
        connect_request,
        out,
    );
    if !matches!(r, Ok(Some(_))) {
        out.discard();
    }
    r
}

/// [`parse_response`]'s work.
#[inline(always)]
fn response_head(
    buf: &[u8],
    max_headers: usize,
    head_request: bool,
    connect_request: bool,
    out: &mut IndexBuf,
) -> Result<Option<ParsedResponse>, Error> {
    let mut fields = HeadFields::new(out);
    let raw = match crate::parse::parse_response_head(buf, max_headers, &mut fields) {
        Ok(crate::parse::Status::Complete(r)) => r,
        Ok(crate::parse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::from_parse(e)),
    };
    if raw.bare_lf {
        return Err(Error::BareLineFeed);
    }
    let (index, framing) = fields.finish()?;
    let status = raw.status;
    let version = if raw.version == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    let mut coded = false;
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyKind::Empty
    } else if connect_request && (200..300).contains(&status) {
        BodyKind::UntilClose
    } else if framing.transfer_encoding {
        if version == Version::Http10 {
            return Err(Error::TransferEncodingInHttp10);
        }
        coded = framing.te_other;
        if framing.chunked_final {
            BodyKind::Chunked
        } else {
            BodyKind::UntilClose
        }
    } else {
        match framing.content_length {
            Some(0) => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
            None => BodyKind::UntilClose,
        }
    };
    let keep_alive = body != BodyKind::UntilClose
        && match version {
            Version::Http11 => !framing.conn_close,
            Version::Http10 => framing.conn_keep_alive && !framing.conn_close,
        };
    let len = raw.len;
    if len > u32::MAX as usize {
        return Err(Error::HeadTooLarge);
    }
    let (reason_start, reason_end) = raw.reason;
    Ok(Some(ParsedResponse {
        len,
        status,
        reason: (reason_start as u32, (reason_end - reason_start) as u32),
        version,
        idx: index.finish(raw.fields, len),
        body,
        keep_alive,
        conn_others: framing.conn_others,
        coded,
    }))
}

impl Response {
    /// A response head from its HTTP/1.1 bytes (status line, field lines, empty line), as a
    /// client connection parses it for request `id` (`head_request`: it answers a HEAD): for
    /// a head that came another way (an HTTP/2 response written out as HTTP/1.1) to go
    /// where a parsed one goes. Bytes after the head are not part of it.
    ///
    /// ```
    /// use ferry_http1::{BodyKind, RequestId, Response};
    /// let r = Response::from_head(
    ///     RequestId::new(0),
    ///     bytes::Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"),
    ///     false,
    /// )
    /// .unwrap();
    /// assert_eq!((r.status(), r.body_kind()), (200, BodyKind::Length(3)));
    /// ```
    ///
    /// # Errors
    ///
    /// The parser's errors (as [`ClientConnection`](crate::ClientConnection) reports them);
    /// [`Error::UnexpectedEof`] for an incomplete head.
    pub fn from_head(id: RequestId, head: Bytes, head_request: bool) -> Result<Response, Error> {
        let mut out = IndexBuf::new();
        let p = parse_response(&head, MAX_HEADERS_CAP, head_request, false, &mut out)?
            .ok_or(Error::UnexpectedEof)?;
        Ok(Response::build(id, head, p))
    }

    pub(crate) fn build(id: RequestId, buf: Bytes, p: ParsedResponse) -> Response {
        Response {
            id,
            status: p.status,
            reason: p.reason,
            version: p.version,
            headers: Headers::from_parts(buf, p.idx),
            body: p.body,
            keep_alive: p.keep_alive,
            conn_others: p.conn_others,
            coded: p.coded,
        }
    }
}

/// Parse a trailer section (`*( field-line CRLF ) CRLF`) at the start of `buf`, with at most
/// `max_headers` fields (1..=64). `Ok(None)`: incomplete. Returns the section length and the
/// field index. The same field parser as heads ([`crate::parse`]): httparse's verdicts, then a
/// bare LF ending any line is rejected.
pub(crate) fn parse_trailers(
    buf: &[u8],
    max_headers: usize,
) -> Result<Option<(usize, Index)>, Error> {
    // Trailers are rare: a big index gets a buffer of its own.
    let mut out = IndexBuf::new();
    let mut index = IndexWriter {
        at: [0; INLINE_FIELDS],
        verbatim: 0,
        spilled: false,
        out: &mut out,
    };
    let mut sink = |i: usize, offset: usize, _: &[u8], _: &[u8]| index.push(i, offset);
    let n = max_headers.clamp(1, 64);
    match crate::parse::parse_field_section(buf, n, &mut sink) {
        Ok(crate::parse::Status::Complete((len, fields, bare_lf))) => {
            if bare_lf || len > u32::MAX as usize {
                return Err(Error::InvalidTrailers);
            }
            Ok(Some((len, index.finish(fields, len))))
        }
        Ok(crate::parse::Status::Partial) => Ok(None),
        Err(crate::parse::ParseError::TooManyHeaders) => Err(Error::TooManyHeaders),
        Err(_) => Err(Error::InvalidTrailers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_from_its_head_bytes_is_the_parsed_one() {
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nGrpc-Status: 5\r\n\r\n";
        let r = Response::from_head(RequestId::new(3), Bytes::from_static(raw), false).unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.reason(), "Not Found");
        assert_eq!(r.body_kind(), BodyKind::Chunked);
        assert_eq!(r.headers().get("grpc-status"), Some(&b"5"[..]));
        assert_eq!(r.id(), RequestId::new(3));
        // A HEAD's answer has no body whatever it declares; a torn head is an error.
        let h = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
        let r = Response::from_head(RequestId::new(0), Bytes::from_static(h), true).unwrap();
        assert_eq!(r.body_kind(), BodyKind::Empty);
        assert_eq!(
            Response::from_head(
                RequestId::new(0),
                Bytes::from_static(b"HTTP/1.1 200 OK\r\n"),
                false
            )
            .err(),
            Some(Error::UnexpectedEof)
        );
        assert!(Response::from_head(
            RequestId::new(0),
            Bytes::from_static(b"HTTP/1.1 2x\r\n\r\n"),
            false
        )
        .is_err());
    }

    #[test]
    fn parses_browser_request_zero_copy() {
        let raw = b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\nrest";
        let p = parse_request(raw, 100, &mut IndexBuf::new())
            .unwrap()
            .unwrap();
        assert_eq!(p.len, raw.len() - 4);
        let mut r = p.req;
        r.headers.buf = Bytes::copy_from_slice(&raw[..p.len]);
        assert_eq!(r.method(), Method::Get);
        assert_eq!(r.method_str(), "GET");
        assert_eq!(r.target(), "/index.html?q=1");
        assert_eq!(r.path(), "/index.html");
        assert_eq!(r.query(), Some("q=1"));
        assert_eq!(r.headers().get("HOST"), Some(&b"example.com"[..]));
        assert_eq!(r.headers().len(), 3);
        assert!(r.keep_alive());
        assert_eq!(r.body_kind(), BodyKind::Empty);
        let hb = r.headers().get_bytes("user-agent").unwrap();
        // zero-copy: the value points into the head buffer
        let base = r.head_bytes().as_ptr() as usize;
        assert!(
            hb.as_ptr() as usize >= base && (hb.as_ptr() as usize) < base + r.head_bytes().len()
        );
    }

    /// The `GET ` word test (parser and method) agrees with the general token read.
    #[test]
    fn get_fast_path_methods() {
        let method = |raw: &[u8]| {
            parse_request(raw, 100, &mut IndexBuf::new())
                .map(|p| p.map(|p| (p.req.method(), p.req.method_len)))
        };
        let get = Some((Method::Get, 3));
        assert_eq!(method(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap(), get);
        assert_eq!(method(b"GET /").unwrap(), None);
        let other = |n| Some((Method::Other, n));
        assert_eq!(method(b"GETS / HTTP/1.1\r\n\r\n").unwrap(), other(4));
        assert_eq!(method(b"get / HTTP/1.1\r\n\r\n").unwrap(), other(3));
        assert!(method(b"GET\t/ HTTP/1.1\r\n\r\n").is_err());
        assert!(method(b"\r\nGET / HTTP/1.1\r\n\r\n").is_err());
    }

    /// Parse `raw` (a complete head) into a `Request` as the server does.
    fn parsed(raw: &[u8]) -> Request {
        let p = parse_request(raw, 100, &mut IndexBuf::new())
            .unwrap()
            .unwrap();
        assert_eq!(p.len, raw.len());
        let mut r = p.req;
        r.id = RequestId(7);
        r.headers.buf = Bytes::copy_from_slice(raw);
        r
    }

    /// The authority of an absolute-form target, without userinfo; none for other forms.
    #[test]
    fn absolute_authority_of_targets() {
        for (t, want) in [
            (&b"http://evil/x?y"[..], Some(&b"evil"[..])),
            (b"HTTP://Evil:8080", Some(b"Evil:8080")),
            (b"https://user:pw@h.example:1/p", Some(b"h.example:1")),
            (b"http://h?q=/", Some(b"h")),
            (b"/x", None),
            (b"/http://evil/", None),
            (b"*", None),
            (b"example.com:443", None),
            (b"", None),
        ] {
            assert_eq!(absolute_authority(t), want, "{t:?}");
        }
    }

    /// Absolute-form targets (RFC 9112 §3.2.2) route like their origin-form path.
    #[test]
    fn path_of_absolute_form_target() {
        use alloc::format;
        use alloc::string::ToString;
        let path_query = |target: &str| {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            let r = parsed(raw.as_bytes());
            (r.path().to_string(), r.query().map(str::to_string))
        };
        let pq = |p: &str, q: Option<&str>| (p.to_string(), q.map(str::to_string));
        assert_eq!(path_query("http://a/"), pq("/", None));
        assert_eq!(path_query("http://a:8080/x/y?q=1"), pq("/x/y", Some("q=1")));
        assert_eq!(path_query("HTTP://a"), pq("/", None));
        assert_eq!(path_query("http://a?q"), pq("/", Some("q")));
        assert_eq!(path_query("/o?q"), pq("/o", Some("q")));
        assert_eq!(path_query("*"), pq("*", None));
        let c = parsed(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
        assert_eq!(c.path(), "a:443");
    }

    /// RFC 9112 §3.2.2: with an absolute-form target the host comes from the target and the
    /// `Host` field is ignored; otherwise it is the `Host` field.
    #[test]
    fn host_of_a_request() {
        let host = |raw: &[u8]| parsed(raw).host().map(alloc::string::ToString::to_string);
        let h = |s: &str| Some(s.to_string());
        use alloc::string::ToString;
        assert_eq!(host(b"GET /x HTTP/1.1\r\nHost:  b:81 \r\n\r\n"), h("b:81"));
        assert_eq!(host(b"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n"), h("a"));
        assert_eq!(
            host(b"GET http://u@a:8080?q HTTP/1.1\r\nHost: b\r\n\r\n"),
            h("a:8080")
        );
        // HTTP/1.0 may omit Host: the target still names it.
        assert_eq!(host(b"GET http://a/ HTTP/1.0\r\n\r\n"), h("a"));
        assert_eq!(host(b"GET / HTTP/1.0\r\n\r\n"), None);
        assert_eq!(host(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"), None);
        assert_eq!(
            host(b"CONNECT a:443 HTTP/1.1\r\nHost: b\r\n\r\n"),
            h("a:443")
        );
        assert_eq!(host(b"OPTIONS * HTTP/1.1\r\nHost: b\r\n\r\n"), h("b"));
    }

    fn assert_same(a: &Request, b: &Request) {
        assert_eq!(a.id(), b.id());
        assert_eq!(a.method(), b.method());
        assert_eq!(a.method_str(), b.method_str());
        assert_eq!(a.target(), b.target());
        assert_eq!(a.path(), b.path());
        assert_eq!(a.query(), b.query());
        assert_eq!(a.version(), b.version());
        assert_eq!(a.headers(), b.headers());
        assert_eq!(a.body_kind(), b.body_kind());
        assert_eq!(a.keep_alive(), b.keep_alive());
        assert_eq!(a.expects_continue(), b.expects_continue());
        assert_eq!(a.is_upgrade(), b.is_upgrade());
        assert_eq!(a.connection_names_others(), b.connection_names_others());
        assert_eq!(a.head_bytes(), b.head_bytes());
    }

    #[test]
    fn from_parts_matches_parsed_text() {
        type Fields<'a> = &'a [(&'a [u8], &'a [u8])];
        type Case<'a> = (&'a [u8], &'a [u8], Version, Fields<'a>, BodyKind);
        let cases: [Case<'_>; 7] = [
            (
                b"GET",
                b"/a?b=c",
                Version::Http11,
                &[(b"Host", b"x"), (b"Accept", b"*/*")],
                BodyKind::Empty,
            ),
            (
                b"POST",
                b"/up",
                Version::Http11,
                &[
                    (b"host", b"x"),
                    (b"content-length", b"5"),
                    (b"expect", b"100-continue"),
                ],
                BodyKind::Length(5),
            ),
            (
                b"PUT",
                b"/c",
                Version::Http11,
                &[
                    (b"host", b"x"),
                    (b"Transfer-Encoding", b"chunked"),
                    (b"x-e", b""),
                ],
                BodyKind::Chunked,
            ),
            (
                b"GET",
                b"/",
                Version::Http10,
                &[(b"connection", b"keep-alive")],
                BodyKind::Empty,
            ),
            (
                b"GET",
                b"/",
                Version::Http11,
                &[(b"connection", b"close"), (b"v", b"a \t b\x80")],
                BodyKind::Empty,
            ),
            (
                b"GET",
                b"/ws",
                Version::Http11,
                &[
                    (b"host", b"x"),
                    (b"Connection", b"Upgrade"),
                    (b"upgrade", b"websocket"),
                ],
                BodyKind::Empty,
            ),
            (
                b"CONNECT",
                b"example.com:443",
                Version::Http11,
                &[(b"host", b"example.com:443")],
                BodyKind::Empty,
            ),
        ];
        for (method, target, version, fields, body) in cases {
            let mut text = alloc::vec::Vec::new();
            text.extend_from_slice(method);
            text.push(b' ');
            text.extend_from_slice(target);
            text.push(b' ');
            text.extend_from_slice(version.as_str().as_bytes());
            text.extend_from_slice(b"\r\n");
            for (n, v) in fields {
                text.extend_from_slice(n);
                text.extend_from_slice(b": ");
                text.extend_from_slice(v);
                text.extend_from_slice(b"\r\n");
            }
            text.extend_from_slice(b"\r\n");
            let want = parsed(&text);
            let got = Request::from_parts(
                RequestId::new(7),
                method,
                target,
                version,
                fields.iter().copied(),
                body,
            )
            .unwrap();
            assert_same(&got, &want);
            assert_eq!(got.head_bytes().as_ref(), &text[..]);
        }
        // Many fields (past the inline index) still round-trip.
        let names: alloc::vec::Vec<alloc::string::String> =
            (0..40).map(|i| alloc::format!("x-f{i}")).collect();
        let fields: alloc::vec::Vec<(&[u8], &[u8])> =
            names.iter().map(|n| (n.as_bytes(), &b"v"[..])).collect();
        let r = Request::from_parts(
            RequestId::new(0),
            b"GET",
            b"/",
            Version::Http11,
            fields,
            BodyKind::Empty,
        )
        .unwrap();
        assert_eq!(r.headers().len(), 40);
        assert_eq!(r.headers().get("X-F39"), Some(&b"v"[..]));
    }

    #[test]
    fn from_parts_rejects_what_the_parser_rejects() {
        use crate::HeadError;
        let ok: (&[u8], &[u8]) = (b"host", b"x");
        let build = |method: &[u8], target: &[u8], f: (&[u8], &[u8]), body| {
            Request::from_parts(
                RequestId::new(0),
                method,
                target,
                Version::Http11,
                [ok, f],
                body,
            )
            .map(|_| ())
        };
        let e = |h| Err(Error::InvalidHead(h));
        assert_eq!(
            build(b"G T", b"/", ok, BodyKind::Empty),
            e(HeadError::Token)
        );
        assert_eq!(build(b"", b"/", ok, BodyKind::Empty), e(HeadError::Token));
        assert_eq!(build(b"GET", b"", ok, BodyKind::Empty), e(HeadError::Token));
        assert_eq!(
            build(b"GET", b"/a b", ok, BodyKind::Empty),
            e(HeadError::Token)
        );
        assert_eq!(
            build(b"GET", b"/a\r\n", ok, BodyKind::Empty),
            e(HeadError::Token)
        );
        assert_eq!(
            build(b"GET", b"/\xff", ok, BodyKind::Empty),
            e(HeadError::Token)
        );
        assert_eq!(
            build(b"GET", b"/", (b":path", b"/"), BodyKind::Empty),
            e(HeadError::HeaderName)
        );
        assert_eq!(
            build(b"GET", b"/", (b"a b", b"/"), BodyKind::Empty),
            e(HeadError::HeaderName)
        );
        assert_eq!(
            build(b"GET", b"/", (b"", b"/"), BodyKind::Empty),
            e(HeadError::HeaderName)
        );
        for v in [
            &b"a\rb"[..],
            b"a\nb",
            b"a\0b",
            b"a\x7fb",
            b"a\x01",
            b" a",
            b"a\t",
        ] {
            assert_eq!(
                build(b"GET", b"/", (b"x", v), BodyKind::Empty),
                e(HeadError::HeaderValue),
                "{v:?}"
            );
        }
        let cl: (&[u8], &[u8]) = (b"content-length", b"5");
        assert_eq!(
            build(b"POST", b"/", cl, BodyKind::Length(6)),
            Err(Error::InvalidContentLength)
        );
        assert_eq!(
            build(b"POST", b"/", cl, BodyKind::Empty),
            Err(Error::InvalidContentLength)
        );
        assert_eq!(build(b"POST", b"/", cl, BodyKind::Chunked), Ok(()));
        assert_eq!(
            build(b"POST", b"/", (b"content-length", b"x"), BodyKind::Chunked),
            Err(Error::InvalidContentLength)
        );
        let te: (&[u8], &[u8]) = (b"transfer-encoding", b"gzip");
        assert_eq!(
            build(b"POST", b"/", te, BodyKind::Chunked),
            Err(Error::InvalidTransferEncoding)
        );
        let te: (&[u8], &[u8]) = (b"transfer-encoding", b"chunked");
        assert_eq!(
            build(b"POST", b"/", te, BodyKind::Length(3)),
            Err(Error::InvalidTransferEncoding)
        );
        let r = Request::from_parts(
            RequestId::new(0),
            b"POST",
            b"/",
            Version::Http11,
            [te, (b"content-length", b"1")],
            BodyKind::Chunked,
        );
        assert_eq!(r.map(|_| ()), Err(Error::ContentLengthWithTransferEncoding));
        let r = Request::from_parts(
            RequestId::new(0),
            b"POST",
            b"/",
            Version::Http10,
            [te],
            BodyKind::Chunked,
        );
        assert_eq!(r.map(|_| ()), Err(Error::TransferEncodingInHttp10));
    }

    /// A request head with `fields`, each written `name ":" ows value ows CRLF`.
    fn head_with(
        fields: &[(alloc::string::String, alloc::vec::Vec<u8>, &str, &str)],
    ) -> alloc::vec::Vec<u8> {
        let mut text = b"GET / HTTP/1.1\r\n".to_vec();
        for (n, v, ows1, ows2) in fields {
            text.extend_from_slice(n.as_bytes());
            text.push(b':');
            text.extend_from_slice(ows1.as_bytes());
            text.extend_from_slice(v);
            text.extend_from_slice(ows2.as_bytes());
            text.extend_from_slice(b"\r\n");
        }
        text.extend_from_slice(b"\r\n");
        text
    }

    /// Our accessors against httparse's own view of the same head.
    fn check_against_httparse(text: &[u8], out: &mut IndexBuf) {
        let mut hdrs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hdrs);
        assert!(req.parse(text).unwrap().is_complete());
        let p = parse_request(text, 64, out).unwrap().unwrap();
        let mut r = p.req;
        r.headers.buf = Bytes::copy_from_slice(text);
        let h = r.headers();
        assert_eq!(h.len(), req.headers.len());
        assert_eq!(h.is_empty(), req.headers.is_empty());
        for ((n, v), want) in h.iter().zip(req.headers.iter()) {
            assert_eq!((n, v), (want.name, want.value));
            let first = req
                .headers
                .iter()
                .find(|x| x.name.eq_ignore_ascii_case(n))
                .unwrap();
            assert_eq!(h.get(&n.to_ascii_uppercase()), Some(first.value));
            assert_eq!(h.get_bytes(n).as_deref(), Some(first.value));
            let all: alloc::vec::Vec<&[u8]> = h.get_all(n).collect();
            let want_all: alloc::vec::Vec<&[u8]> = req
                .headers
                .iter()
                .filter(|x| x.name.eq_ignore_ascii_case(n))
                .map(|x| x.value)
                .collect();
            assert_eq!(all, want_all);
        }
        assert_eq!(h.get("x-absent"), None);
    }

    #[test]
    fn accessors_follow_the_line_structure() {
        let s = |x: &str| alloc::string::String::from(x);
        let fields = [
            (s("Host"), b"example.com".to_vec(), " ", ""),
            (s("X-Empty"), b"".to_vec(), "", ""),
            (s("X-Blank"), b"".to_vec(), " \t ", ""),
            (s("X-Ows"), b"a \t b".to_vec(), "\t", " \t"),
            (s("X-Colon"), b"a:b: c".to_vec(), "", ""),
            (s("X-Obs"), b"caf\xc3\xa9 \x80".to_vec(), " ", " "),
            (s("host"), b"second".to_vec(), " ", ""),
        ];
        let text = head_with(&fields);
        check_against_httparse(&text, &mut IndexBuf::new());
        let p = parse_request(&text, 64, &mut IndexBuf::new())
            .unwrap()
            .unwrap();
        let mut r = p.req;
        r.headers.buf = Bytes::copy_from_slice(&text);
        let h = r.headers();
        assert_eq!(h.get("x-ows"), Some(&b"a \t b"[..]));
        assert_eq!(h.get("x-blank"), Some(&b""[..]));
        assert_eq!(h.get("x-colon"), Some(&b"a:b: c"[..]));
        // Names that no field can have never match, even where the text would.
        assert_eq!(h.get("x-colon:a"), None);
        assert_eq!(h.get("X-Colon: a"), None);
        assert_eq!(h.get("Host: example.com\r\nX-Empty"), None);
        assert_eq!(h.get(""), None);
        assert_eq!(h.get_all("host").count(), 2);
        // Zero-copy.
        let v = h.get_bytes("x-obs").unwrap();
        let base = h.buffer().as_ptr() as usize;
        assert!((v.as_ptr() as usize) > base && (v.as_ptr() as usize) < base + text.len());
    }

    #[test]
    fn big_heads_spill_the_index() {
        let s = |i: usize| alloc::format!("x-f{i}");
        // More fields than fit in place.
        let many: alloc::vec::Vec<_> = (0..40).map(|i| (s(i), b"v".to_vec(), " ", "")).collect();
        let mut out = IndexBuf::new();
        check_against_httparse(&head_with(&many), &mut out);
        check_against_httparse(&head_with(&many[..INLINE_FIELDS]), &mut out);
        check_against_httparse(&head_with(&many[..INLINE_FIELDS + 1]), &mut out);
        // A head past 64 KiB.
        let big = alloc::vec![b'a'; 70_000];
        let fields = [
            (s(0), b"x".to_vec(), "", ""),
            (s(1), big, " ", ""),
            (s(2), b"y".to_vec(), "", ""),
        ];
        check_against_httparse(&head_with(&fields), &mut out);
        // Every field line starts below 64 KiB, the head ends past it.
        check_against_httparse(&head_with(&fields[..2]), &mut out);
        // Responses and from_parts too.
        let names: alloc::vec::Vec<_> = (0..30).map(s).collect();
        let r = Request::from_parts(
            RequestId::new(0),
            b"GET",
            b"/",
            Version::Http11,
            names.iter().map(|n| (n.as_bytes(), &b"v"[..])),
            BodyKind::Empty,
        )
        .unwrap();
        assert_eq!(r.headers().len(), 30);
        assert_eq!(r.headers().get("x-f29"), Some(&b"v"[..]));
        let mut text = b"HTTP/1.1 200 OK\r\n".to_vec();
        for n in &names {
            text.extend_from_slice(alloc::format!("{n}: w\r\n").as_bytes());
        }
        text.extend_from_slice(b"\r\n");
        let p = parse_response(&text, 64, false, false, &mut out)
            .unwrap()
            .unwrap();
        let resp = Response::build(RequestId(0), Bytes::copy_from_slice(&text), p);
        assert_eq!(resp.headers().len(), 30);
        assert_eq!(resp.headers().iter().last(), Some(("x-f29", &b"w"[..])));
    }

    #[test]
    fn spilled_index_survives_failed_and_partial_heads() {
        let s = |i: usize| alloc::format!("x-f{i}");
        let many: alloc::vec::Vec<_> = (0..30).map(|i| (s(i), b"v".to_vec(), " ", "")).collect();
        let good = head_with(&many);
        let mut out = IndexBuf::new();
        // Fields past the in-place ones were indexed into `out` before the parse failed or ran
        // out of bytes: none of it may leak into the next head's index.
        let mut bad = good[..good.len() - 2].to_vec();
        bad.extend_from_slice(b"x-bad\x01: v\r\n\r\n");
        assert!(parse_request(&bad, 64, &mut out).is_err());
        assert!(parse_request(&good[..good.len() - 1], 64, &mut out)
            .unwrap()
            .is_none());
        let mut framing = good[..good.len() - 2].to_vec();
        framing.extend_from_slice(b"content-length: 1\r\ncontent-length: 2\r\n\r\n");
        assert_eq!(
            parse_request(&framing, 64, &mut out).err(),
            Some(Error::InvalidContentLength)
        );
        check_against_httparse(&good, &mut out);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn field() -> impl Strategy<
            Value = (
                alloc::string::String,
                alloc::vec::Vec<u8>,
                &'static str,
                &'static str,
            ),
        > {
            let name = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}";
            let value = proptest::collection::vec(
                prop_oneof![
                    Just(b' '),
                    Just(b'\t'),
                    Just(b':'),
                    0x21u8..0x7f,
                    0x80u8..=0xff
                ],
                0..16,
            );
            let ows = prop_oneof![Just(""), Just(" "), Just("\t "), Just("  ")];
            (name, value, ows.clone(), ows)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn headers_match_httparse(fields in proptest::collection::vec(field(), 0..40)) {
                let text = head_with(&fields);
                check_against_httparse(&text, &mut IndexBuf::new());
            }
        }
    }

    #[test]
    fn partial_is_not_an_error() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n";
        for i in 0..raw.len() {
            assert!(
                parse_request(&raw[..i], 100, &mut IndexBuf::new())
                    .unwrap()
                    .is_none(),
                "at {i}"
            );
        }
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(parse_content_length(b"0"), Ok(0));
        assert!(parse_content_length(b"18446744073709551615").is_err());
        assert_eq!(
            parse_content_length(b"1234567890123456789"),
            Ok(1234567890123456789)
        );
        assert!(parse_content_length(b"+1").is_err());
        assert!(parse_content_length(b"1 2").is_err());
        assert!(parse_content_length(b"").is_err());
        let ok = parse_request(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            100,
            &mut IndexBuf::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.req.body, BodyKind::Length(5));
        assert!(parse_request(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            100,
            &mut IndexBuf::new(),
        )
        .is_err());
    }

    #[test]
    fn token_eq_folds_case_only() {
        for (a, b, eq) in [
            (&b"Host"[..], &b"host"[..], true),
            (b"HOST", b"host", true),
            (b"hosT", b"host", true),
            (b"hosu", b"host", false),
            (b"Content-Length", b"content-length", true),
            (b"Content-Lengti", b"content-length", false),
            (b"Content_Length", b"content-length", false),
            (b"TRANSFER-ENCODING", b"transfer-encoding", true),
            (b"Transfer-Encodinh", b"transfer-encoding", false),
            (b"Connection", b"connection", true),
            (b"Connectio", b"connection", false),
            (b"ab", b"AB", true),
            (b"Expect", b"expect", true),
            (b"Upgrade", b"upgrade", true),
            (b"Upgradf", b"upgrade", false),
        ] {
            assert_eq!(token_eq(a, b), eq, "{:?} {:?}", a, b);
        }
    }

    #[test]
    fn tokens_in_lists() {
        assert!(list_has_token(b" keep-alive , Upgrade", "upgrade"));
        assert!(!list_has_token(b"closed", "close"));
    }

    #[test]
    fn response_framing() {
        let p = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            100,
            false,
            false,
            &mut IndexBuf::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.body, BodyKind::Length(3));
        let p = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            100,
            true,
            false,
            &mut IndexBuf::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.body, BodyKind::Empty);
        let p = parse_response(
            b"HTTP/1.1 204 No Content\r\n\r\n",
            100,
            false,
            false,
            &mut IndexBuf::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.body, BodyKind::Empty);
        let p = parse_response(
            b"HTTP/1.0 200 OK\r\n\r\n",
            100,
            false,
            false,
            &mut IndexBuf::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.body, BodyKind::UntilClose);
        assert!(!p.keep_alive);
        let p = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            100,
            false,
            false,
            &mut IndexBuf::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.body, BodyKind::Chunked);
    }
}

/// [`Request::connection_names_others`] / [`Response::connection_names_others`] against a
/// copy of the proxy's `Connection` scan (apps/proxy/src/http.rs: `connection_names`).
#[cfg(test)]
mod conn_others_tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// Heads stay small enough to be moved with inline stores (see [`INLINE_FIELDS`]); the
    /// client's and server's events carry them.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn heads_stay_small() {
        assert!(core::mem::size_of::<Request>() <= 120);
        assert!(core::mem::size_of::<Response>() <= 120);
        assert!(core::mem::size_of::<crate::client::Event>() <= 128);
        assert!(core::mem::size_of::<crate::server::Event>() <= 128);
    }

    /// `h` without the verbatim lines the parser noted (every line scanned again).
    fn unnoted(h: &Headers) -> Headers {
        let mut h = h.clone();
        if let Index::Inline { verbatim, .. } = &mut h.idx {
            *verbatim = 0;
        }
        h
    }

    type Raw = Vec<(usize, usize, Vec<u8>, Vec<u8>, bool)>;

    fn raw(h: &Headers) -> Raw {
        h.raw_fields()
            .map(|f| {
                (
                    f.start,
                    f.next,
                    f.name.to_vec(),
                    f.value.to_vec(),
                    f.verbatim,
                )
            })
            .collect()
    }

    proptest! {
        /// The name lengths noted while parsing read every field as the scan of its line
        /// does (names, values, verbatim or not), for any spacing around values.
        #[test]
        fn noted_lines_read_as_scanned_lines(lines in proptest::collection::vec((
            prop_oneof![Just("Host"), Just("x"), Just("Content-Type"), Just("X-Long-Field-Name-Here")],
            prop_oneof![Just(":"), Just(": "), Just(":  "), Just(":\t"), Just(": \t")],
            prop_oneof![Just(""), Just("v"), Just("a b"), Just("a\tb"), Just("text/plain; q=1")],
            prop_oneof![Just(""), Just(" "), Just("\t"), Just(" \t")],
        ), 0..30)) {
            let mut head = std::string::String::from("GET / HTTP/1.1\r\n");
            for (n, sep, v, tail) in &lines {
                head.push_str(n);
                head.push_str(sep);
                head.push_str(v);
                head.push_str(tail);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let Ok(Some(p)) = parse_request(head.as_bytes(), 100, &mut IndexBuf::new()) else {
                return Err(TestCaseError::fail("not parsed"));
            };
            let mut h = p.req.headers.clone();
            h.buf = Bytes::copy_from_slice(&head.as_bytes()[..p.len]);
            let plain = unnoted(&h);
            prop_assert_eq!(raw(&h), raw(&plain));
            prop_assert_eq!(
                h.iter_bytes().collect::<Vec<_>>(),
                plain.iter_bytes().collect::<Vec<_>>()
            );
            prop_assert_eq!(h.iter().collect::<Vec<_>>(), plain.iter().collect::<Vec<_>>());
            // A line is noted exactly when it is verbatim (and within the inline index).
            if let Index::Inline { verbatim, len, .. } = &h.idx {
                for (i, f) in h.raw_fields().enumerate().take(*len as usize) {
                    prop_assert_eq!(verbatim & (1 << i) != 0, f.verbatim);
                }
            }
        }

        /// `colon_at` is the first `:` (or the length), for any bytes (high ones too).
        #[test]
        fn colon_at_is_the_first_colon(line in proptest::collection::vec(
            prop_oneof![Just(b':'), Just(0x3bu8), Just(0xbau8), any::<u8>()], 0..40)) {
            let want = line.iter().position(|&b| b == b':').unwrap_or(line.len());
            prop_assert_eq!(colon_at(&line), want);
        }
    }

    /// The proxy's standard hop-by-hop names.
    const HOP_BY_HOP: [&str; 10] = [
        "te",
        "expect",
        "trailer",
        "upgrade",
        "connection",
        "keep-alive",
        "content-length",
        "proxy-connection",
        "transfer-encoding",
        "proxy-authorization",
    ];

    /// The proxy's `connection_names`: the tokens of every `Connection` field that are not
    /// hop-by-hop names, `close` or empty (ASCII whitespace trimmed).
    fn proxy_names(h: &Headers) -> Vec<Vec<u8>> {
        let standard = |t: &[u8]| {
            t.is_empty()
                || t.eq_ignore_ascii_case(b"close")
                || HOP_BY_HOP
                    .iter()
                    .any(|n| t.eq_ignore_ascii_case(n.as_bytes()))
        };
        h.get_all("connection")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !standard(t))
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// Whether any `Connection` token (OWS trimmed) is other than the three the flag knows.
    fn reference_others(h: &Headers) -> bool {
        h.get_all("connection")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(trim_ows)
            .any(|t| {
                !(t.is_empty()
                    || t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"keep-alive")
                    || t.eq_ignore_ascii_case(b"upgrade"))
            })
    }

    fn head(start: &[u8], fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut t = start.to_vec();
        for (n, v) in fields {
            t.extend_from_slice(n);
            t.extend_from_slice(b": ");
            t.extend_from_slice(v);
            t.extend_from_slice(b"\r\n");
        }
        t.extend_from_slice(b"\r\n");
        t
    }

    /// The request and the response with these fields, if the parser accepts them.
    fn parse_both(fields: &[(&[u8], &[u8])]) -> Option<(Request, Response)> {
        let raw = head(b"GET / HTTP/1.1\r\nHost: a\r\n", fields);
        let p = parse_request(&raw, 64, &mut IndexBuf::new()).ok()??;
        let mut req = p.req;
        req.headers.buf = Bytes::copy_from_slice(&raw);
        let raw = head(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", fields);
        let p = parse_response(&raw, 64, false, false, &mut IndexBuf::new()).ok()??;
        let resp = Response::build(RequestId(0), Bytes::copy_from_slice(&raw), p);
        Some((req, resp))
    }

    /// Checks both heads and `from_parts` against the references; returns the flag.
    fn flag(fields: &[(&[u8], &[u8])]) -> bool {
        let (req, resp) = parse_both(fields).expect("valid head");
        let f = req.connection_names_others();
        assert_eq!(resp.connection_names_others(), f, "{fields:?}");
        assert_eq!(f, reference_others(req.headers()), "{fields:?}");
        if !f {
            assert!(proxy_names(req.headers()).is_empty(), "{fields:?}");
            assert!(proxy_names(resp.headers()).is_empty(), "{fields:?}");
        }
        let built = Request::from_parts(
            RequestId(0),
            b"GET",
            b"/",
            Version::Http11,
            fields.iter().copied(),
            BodyKind::Empty,
        )
        .unwrap();
        assert_eq!(built.connection_names_others(), f, "{fields:?}");
        f
    }

    #[test]
    fn standard_tokens_only_clear_the_flag() {
        let c: &[u8] = b"Connection";
        for (fields, others) in [
            (&[][..], false),
            (&[(&b"X-Foo"[..], &b"close"[..])][..], false),
            (&[(c, &b"keep-alive"[..])], false),
            (&[(c, b"Keep-Alive")], false),
            (&[(c, b"close")], false),
            (&[(c, b"CLOSE")], false),
            (&[(c, b"upgrade")], false),
            (&[(c, b"Keep-Alive , Upgrade")], false),
            (&[(c, b"")], false),
            (&[(c, b",")], false),
            (&[(c, b", ,\t, close,,")], false),
            (
                &[
                    (c, b"close"),
                    (b"connection", b"keep-alive"),
                    (c, b"UPGRADE"),
                ],
                false,
            ),
            (&[(c, b"x-foo")], true),
            (&[(c, b"close, x-foo")], true),
            (&[(c, b"x-foo ,close")], true),
            (&[(c, b"keep-alive2")], true),
            (&[(c, b"keep-alive\tclose")], true),
            (&[(c, b"TE")], true), // hop-by-hop: the proxy names nothing, but true is safe
            (&[(c, b"close"), (b"CONNECTION", b"X-Secret")], true),
            (&[(c, b"keep-alive"), (b"X-Connection", b"x-foo")], false),
        ] {
            assert_eq!(flag(fields), others, "{fields:?}");
        }
    }

    #[test]
    fn obs_fold_is_rejected() {
        // No folded `Connection` value to misread: the parser refuses the head.
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close,\r\n x-foo\r\n\r\n";
        assert!(parse_request(raw, 64, &mut IndexBuf::new()).is_err());
        let raw = b"HTTP/1.1 200 OK\r\nConnection: close,\r\n x-foo\r\n\r\n";
        assert!(parse_response(raw, 64, false, false, &mut IndexBuf::new()).is_err());
    }

    /// A `Connection` list of tokens (in random case) and separators.
    fn conn_value() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just("close"),
            Just("keep-alive"),
            Just("upgrade"),
            Just(""),
            Just("te"),
            Just("trailer"),
            Just("proxy-connection"),
            Just("x-foo"),
            Just("closed"),
            Just("keep-alive2"),
            Just("upgrad"),
        ];
        let sep = prop_oneof![Just(","), Just(", "), Just(" ,"), Just("\t,\t"), Just(",,")];
        let piece = (token, sep, proptest::collection::vec(any::<bool>(), 16));
        proptest::collection::vec(piece, 0..4).prop_map(|ps| {
            let mut v = Vec::new();
            for (i, (t, sep, up)) in ps.into_iter().enumerate() {
                if i > 0 {
                    v.extend_from_slice(sep.as_bytes());
                }
                v.extend(
                    t.bytes()
                        .zip(up)
                        .map(|(b, u)| if u { b.to_ascii_uppercase() } else { b }),
                );
            }
            v
        })
    }

    /// Any value bytes the parser may accept (visible ASCII, SP, HTAB, obs-text).
    fn any_value() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => Just(b','),
            2 => Just(b' '),
            1 => Just(b'\t'),
            4 => proptest::sample::select(&b"closekeep-aliveupgradeCLOSEKEEP-ALIVEUPGRADE"[..]),
            1 => 0x21u8..0x7f,
            1 => 0x80u8..=0xff,
        ];
        proptest::collection::vec(byte, 0..24)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The flag is false only when the proxy's scan names nothing, and is exactly
        /// "some token is not close / keep-alive / upgrade / empty".
        #[test]
        fn flag_false_only_when_the_proxy_names_nothing(
            values in proptest::collection::vec(
                (prop_oneof![conn_value(), any_value()], any::<bool>(), any::<bool>()),
                0..4,
            ),
        ) {
            let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
            for (v, upper, other_first) in &values {
                if *other_first {
                    fields.push((b"x-other", b"x-foo"));
                }
                let n: &[u8] = if *upper { b"CONNECTION" } else { b"connection" };
                fields.push((n, v));
            }
            let trimmed = values.iter().all(|(v, _, _)| {
                !matches!(v.first(), Some(b' ' | b'\t')) && !matches!(v.last(), Some(b' ' | b'\t'))
            });
            if trimmed {
                flag(&fields);
            } else if let Some((req, resp)) = parse_both(&fields) {
                // `from_parts` refuses values with outer whitespace; the parser trims it.
                for (f, h) in [
                    (req.connection_names_others(), req.headers()),
                    (resp.connection_names_others(), resp.headers()),
                ] {
                    prop_assert_eq!(f, reference_others(h));
                    prop_assert!(f || proxy_names(h).is_empty());
                }
            }
        }
    }
}
