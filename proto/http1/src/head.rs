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

use bytes::Bytes;
use core::fmt;
use core::mem::MaybeUninit;
use smallvec::SmallVec;

use crate::Error;

/// Header fields kept inline per message before spilling to the heap.
pub(crate) const INLINE_HEADERS: usize = 16;
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
    pub fn from_token(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
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

/// Field positions of one head, inline up to [`INLINE_HEADERS`] fields.
pub(crate) type HeaderIndex = SmallVec<[HeaderIdx; INLINE_HEADERS]>;

/// One field's position in its head: 12 bytes, so a typical request's index stays inline and
/// the `Request` event stays small enough to move cheaply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeaderIdx {
    name_start: u32,
    value_len: u32,
    name_len: u16,
    /// Bytes from the end of the name to the start of the value (`:` and OWS).
    value_gap: u16,
}

impl HeaderIdx {
    #[inline]
    fn value_start(&self) -> usize {
        self.name_start as usize + self.name_len as usize + self.value_gap as usize
    }
}

/// Header fields of one message: name/value slices of a single shared `Bytes` (the head), so
/// holding a `Headers` costs one reference count however many fields it has.
#[derive(Clone, Default)]
pub struct Headers {
    buf: Bytes,
    idx: HeaderIndex,
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
    /// Build from httparse's parsed headers, all borrowing from `head`, checking on the way
    /// that every field line ends in CRLF (httparse also accepts a bare LF, a smuggling vector
    /// behind lenient proxies).
    pub(crate) fn index(
        head: &[u8],
        parsed: &[httparse::Header<'_>],
    ) -> Result<HeaderIndex, Error> {
        let base = head.as_ptr() as usize;
        let mut idx = SmallVec::with_capacity(parsed.len());
        for h in parsed {
            let name_start = h.name.as_ptr() as usize - base;
            let name_end = name_start + h.name.len();
            let value_start = if h.value.is_empty() {
                name_end + 1
            } else {
                h.value.as_ptr() as usize - base
            };
            let mut line_end = value_start + h.value.len();
            while let Some(b' ' | b'\t') = head.get(line_end) {
                line_end += 1;
            }
            if head.get(line_end) != Some(&b'\r') {
                return Err(Error::BareLineFeed);
            }
            let (Ok(name_len), Ok(value_gap)) = (
                u16::try_from(h.name.len()),
                u16::try_from(value_start - name_end),
            ) else {
                return Err(Error::HeadTooLarge);
            };
            idx.push(HeaderIdx {
                name_start: name_start as u32,
                value_len: h.value.len() as u32,
                name_len,
                value_gap,
            });
        }
        Ok(idx)
    }

    pub(crate) fn from_parts(buf: Bytes, idx: HeaderIndex) -> Headers {
        Headers { buf, idx }
    }

    /// Number of fields (repeated names count each time).
    pub fn len(&self) -> usize {
        self.idx.len()
    }

    /// No fields at all.
    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }

    #[inline]
    fn name_at(&self, i: &HeaderIdx) -> &str {
        let start = i.name_start as usize;
        let b = &self.buf[start..start + i.name_len as usize];
        // httparse only accepts token bytes in names, all ASCII.
        core::str::from_utf8(b).unwrap_or("")
    }

    #[inline]
    fn value_at(&self, i: &HeaderIdx) -> &[u8] {
        let start = i.value_start();
        &self.buf[start..start + i.value_len as usize]
    }

    /// Fields in the order received, names as sent (not lower-cased).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.idx
            .iter()
            .map(move |i| (self.name_at(i), self.value_at(i)))
    }

    /// First value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let i = self
            .idx
            .iter()
            .find(|i| self.name_at(i).eq_ignore_ascii_case(name))?;
        Some(self.value_at(i))
    }

    /// First value of `name` as a zero-copy `Bytes` slice of the head.
    pub fn get_bytes(&self, name: &str) -> Option<Bytes> {
        let i = self
            .idx
            .iter()
            .find(|i| self.name_at(i).eq_ignore_ascii_case(name))?;
        let start = i.value_start();
        Some(self.buf.slice(start..start + i.value_len as usize))
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.idx
            .iter()
            .filter(move |i| self.name_at(i).eq_ignore_ascii_case(name))
            .map(move |i| self.value_at(i))
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
    pub upgrade: bool,
    pub expect_continue: bool,
    pub host_count: u8,
}

impl Framing {
    /// Scan fields once, applying the smuggling rules of RFC 9112 §6.1 and §6.3.
    pub(crate) fn scan(headers: &[httparse::Header<'_>]) -> Result<Framing, Error> {
        let mut f = Framing::default();
        for h in headers {
            let n = h.name.as_bytes();
            match n.len() {
                4 if token_eq(n, b"host") => f.host_count = f.host_count.saturating_add(1),
                6 if token_eq(n, b"expect") => {
                    f.expect_continue |= trim_ows(h.value).eq_ignore_ascii_case(b"100-continue")
                }
                7 if token_eq(n, b"upgrade") => f.upgrade = true,
                10 if token_eq(n, b"connection") => {
                    for t in h.value.split(|&b| b == b',') {
                        let t = trim_ows(t);
                        if t.eq_ignore_ascii_case(b"close") {
                            f.conn_close = true;
                        } else if t.eq_ignore_ascii_case(b"keep-alive") {
                            f.conn_keep_alive = true;
                        } else if t.eq_ignore_ascii_case(b"upgrade") {
                            f.conn_upgrade = true;
                        }
                    }
                }
                14 if token_eq(n, b"content-length") => {
                    // RFC 9110 §8.6: a list of identical values MAY be accepted; anything else
                    // is unrecoverable.
                    for v in h.value.split(|&b| b == b',') {
                        let len = parse_content_length(trim_ows(v))?;
                        match f.content_length {
                            Some(prev) if prev != len => return Err(Error::InvalidContentLength),
                            _ => f.content_length = Some(len),
                        }
                    }
                }
                17 if token_eq(n, b"transfer-encoding") => {
                    for coding in h.value.split(|&b| b == b',') {
                        let coding = trim_ows(coding);
                        if coding.is_empty() {
                            continue;
                        }
                        if f.chunked_final {
                            // `chunked` was not the final coding, or it was repeated.
                            return Err(Error::InvalidTransferEncoding);
                        }
                        f.transfer_encoding = true;
                        if coding.eq_ignore_ascii_case(b"chunked") {
                            f.chunked_final = true;
                        } else {
                            f.te_other = true;
                        }
                    }
                    if !f.transfer_encoding {
                        return Err(Error::InvalidTransferEncoding);
                    }
                }
                _ => {}
            }
        }
        if f.transfer_encoding && f.content_length.is_some() {
            return Err(Error::ContentLengthWithTransferEncoding);
        }
        Ok(f)
    }
}

/// Case-insensitive comparison of a field name (a token: no CR, LF or other controls) with a
/// lower-case ASCII constant, eight bytes at a time. OR-ing 0x20 folds letters to lower case
/// and leaves `-` and digits alone; no token byte folds onto a different letter.
#[inline]
pub(crate) fn token_eq(name: &[u8], lower: &[u8]) -> bool {
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

/// Reject a bare LF (not preceded by CR) anywhere in a head. httparse accepts LF line endings,
/// which RFC 9112 §2.2 permits but which are a request-smuggling vector behind lenient proxies.
pub(crate) fn check_line_endings(head: &[u8]) -> Result<(), Error> {
    for i in memchr::memchr_iter(b'\n', head) {
        if i == 0 || head[i - 1] != b'\r' {
            return Err(Error::BareLineFeed);
        }
    }
    Ok(())
}

/// Identifies one request/response exchange on a connection, in order of arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
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

impl Request {
    pub(crate) fn build(id: RequestId, buf: Bytes, p: ParsedRequest) -> Request {
        Request {
            id,
            method: p.method,
            method_len: p.method_len,
            target: p.target,
            version: p.version,
            headers: Headers::from_parts(buf, p.idx),
            body: p.body,
            keep_alive: p.keep_alive,
            expect_continue: p.expect_continue,
            upgrade: p.upgrade,
        }
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
        core::str::from_utf8(&self.headers.buf[..self.method_len as usize]).unwrap_or("")
    }

    /// The request target as sent (origin-form path and query, absolute-form, authority-form
    /// for CONNECT, or `*`).
    pub fn target(&self) -> &str {
        let (s, l) = self.target;
        core::str::from_utf8(&self.headers.buf[s as usize..(s + l) as usize]).unwrap_or("")
    }

    /// The path part of an origin-form target (before `?`).
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The query part of the target (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
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
        core::str::from_utf8(&self.headers.buf[s as usize..(s + l) as usize]).unwrap_or("")
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

    /// The whole response head as received.
    pub fn head_bytes(&self) -> &Bytes {
        &self.headers.buf
    }
}

/// A request head parsed in place: offsets into the input, so the caller can split the head
/// off its buffer afterwards without copying.
pub(crate) struct ParsedRequest {
    pub len: usize,
    pub method: Method,
    pub method_len: u16,
    pub target: (u32, u32),
    pub version: Version,
    pub idx: HeaderIndex,
    pub body: BodyKind,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub upgrade: bool,
    pub host_count: u8,
}

/// Parse a request head at the start of `buf`, with at most `max_headers` fields.
/// `Ok(None)` means more bytes are needed. Applies the framing rules of RFC 9112 §6.
#[inline]
pub(crate) fn parse_request(
    buf: &[u8],
    max_headers: usize,
) -> Result<Option<ParsedRequest>, Error> {
    let mut hdrs = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let n = max_headers.min(MAX_HEADERS_CAP);
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut hdrs[..n]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::from_httparse(e)),
    };
    let framing = Framing::scan(req.headers)?;
    let base = buf.as_ptr() as usize;
    let method_s = req.method.unwrap_or("");
    let path = req.path.unwrap_or("");
    if method_s.as_ptr() as usize != base {
        // httparse skipped empty lines before the request line; the caller strips them first.
        return Err(Error::InvalidHead(crate::HeadError::NewLine));
    }
    // CRLF after the request line (" HTTP/1.x" follows the target) and at the very end; field
    // lines are checked while indexing.
    let target_start = path.as_ptr() as usize - base;
    if buf.get(target_start + path.len() + 9) != Some(&b'\r') || !buf[..len].ends_with(b"\r\n\r\n")
    {
        return Err(Error::BareLineFeed);
    }
    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(Error::UnsupportedVersion),
    };
    if framing.transfer_encoding {
        if version == Version::Http10 {
            return Err(Error::TransferEncodingInHttp10);
        }
        if !framing.chunked_final || framing.te_other {
            // RFC 9112 §6.3: a request whose final coding is not chunked has no determinable
            // length.
            return Err(Error::InvalidTransferEncoding);
        }
    }
    let keep_alive = match version {
        Version::Http11 => !framing.conn_close,
        Version::Http10 => framing.conn_keep_alive && !framing.conn_close,
    };
    let body = if framing.chunked_final {
        BodyKind::Chunked
    } else {
        match framing.content_length {
            Some(0) | None => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
        }
    };
    let method = Method::from_token(method_s);
    Ok(Some(ParsedRequest {
        len,
        method,
        method_len: method_s.len() as u16,
        target: (target_start as u32, path.len() as u32),
        version,
        idx: Headers::index(buf, req.headers)?,
        body,
        keep_alive,
        expect_continue: framing.expect_continue && version == Version::Http11,
        upgrade: (framing.upgrade && framing.conn_upgrade) || method == Method::Connect,
        host_count: framing.host_count,
    }))
}

/// A response head parsed in place (offsets into the input).
pub(crate) struct ParsedResponse {
    pub len: usize,
    pub status: u16,
    pub reason: (u32, u32),
    pub version: Version,
    pub idx: HeaderIndex,
    pub body: BodyKind,
    pub keep_alive: bool,
}

/// Parse a response head at the start of `buf`. `head_request` / `connect_request` say what the
/// matching request was, since they change how the body is delimited (RFC 9112 §6.3).
pub(crate) fn parse_response(
    buf: &[u8],
    max_headers: usize,
    head_request: bool,
    connect_request: bool,
) -> Result<Option<ParsedResponse>, Error> {
    let mut hdrs = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let n = max_headers.min(MAX_HEADERS_CAP);
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut hdrs[..n],
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::from_httparse(e)),
    };
    check_line_endings(&buf[..len])?;
    let framing = Framing::scan(res.headers)?;
    let status = res.code.unwrap_or(0);
    let version = match res.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(Error::UnsupportedVersion),
    };
    let base = buf.as_ptr() as usize;
    let reason = res.reason.unwrap_or("");
    let reason_start = if reason.is_empty() {
        0
    } else {
        (reason.as_ptr() as usize - base) as u32
    };
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyKind::Empty
    } else if connect_request && (200..300).contains(&status) {
        BodyKind::UntilClose
    } else if framing.transfer_encoding {
        if version == Version::Http10 {
            return Err(Error::TransferEncodingInHttp10);
        }
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
    Ok(Some(ParsedResponse {
        len,
        status,
        reason: (reason_start, reason.len() as u32),
        version,
        idx: Headers::index(buf, res.headers)?,
        body,
        keep_alive,
    }))
}

impl Response {
    pub(crate) fn build(id: RequestId, buf: Bytes, p: ParsedResponse) -> Response {
        Response {
            id,
            status: p.status,
            reason: p.reason,
            version: p.version,
            headers: Headers::from_parts(buf, p.idx),
            body: p.body,
            keep_alive: p.keep_alive,
        }
    }
}

/// Parse a trailer section (`*( field-line CRLF ) CRLF`) at the start of `buf`.
/// `Ok(None)`: incomplete. Returns the section length and the field index.
pub(crate) fn parse_trailers(
    buf: &[u8],
    max_headers: usize,
) -> Result<Option<(usize, HeaderIndex)>, Error> {
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let n = max_headers.clamp(1, 64);
    match httparse::parse_headers(buf, &mut hdrs[..n]) {
        Ok(httparse::Status::Complete((len, parsed))) => {
            check_line_endings(&buf[..len]).map_err(|_| Error::InvalidTrailers)?;
            let idx = Headers::index(buf, parsed).map_err(|_| Error::InvalidTrailers)?;
            Ok(Some((len, idx)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Error::TooManyHeaders),
        Err(_) => Err(Error::InvalidTrailers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_browser_request_zero_copy() {
        let raw = b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\nrest";
        let p = parse_request(raw, 100).unwrap().unwrap();
        assert_eq!(p.len, raw.len() - 4);
        let buf = Bytes::copy_from_slice(&raw[..p.len]);
        let r = Request::build(RequestId(0), buf, p);
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

    #[test]
    fn partial_is_not_an_error() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n";
        for i in 0..raw.len() {
            assert!(parse_request(&raw[..i], 100).unwrap().is_none(), "at {i}");
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
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.body, BodyKind::Length(5));
        assert!(parse_request(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            100
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
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.body, BodyKind::Length(3));
        let p = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            100,
            true,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.body, BodyKind::Empty);
        let p = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", 100, false, false)
            .unwrap()
            .unwrap();
        assert_eq!(p.body, BodyKind::Empty);
        let p = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", 100, false, false)
            .unwrap()
            .unwrap();
        assert_eq!(p.body, BodyKind::UntilClose);
        assert!(!p.keep_alive);
        let p = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            100,
            false,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.body, BodyKind::Chunked);
    }
}
