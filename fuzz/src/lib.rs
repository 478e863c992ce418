//! Shared pieces of Ferry's fuzz targets: small configurations that make the limits reachable
//! with short inputs, checkers for the invariants every target asserts, and structured message
//! generators (`arbitrary`) that get the fuzzer past the request line quickly.
//!
//! Everything here panics on a broken invariant: that is how libFuzzer learns about it.

pub mod h2;

use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use ferry_http1::server::Event;
use ferry_http1::{BodyKind, Error, ServerConfig};

/// A server configuration with limits small enough for fuzz inputs (a few KiB) to hit every
/// one of them: 431, 414, 413, too many headers, pipelining backpressure, timeouts.
pub fn small_server_config() -> Arc<ServerConfig> {
    let mut c = ServerConfig::default();
    c.max_request_line = 200;
    c.max_head_bytes = 600;
    c.max_headers = 12;
    c.max_body = 3000;
    c.header_read_timeout = Some(Duration::from_secs(2));
    c.keep_alive_timeout = Some(Duration::from_secs(5));
    c.max_pipelined = 4;
    c.max_buffered_out_of_order = 2048;
    c.date_origin_unix_nanos = Some(784_111_777_000_000_000);
    Arc::new(c)
}

/// How much input a connection may leave in the caller's buffer while it still wants to read:
/// an incomplete head (or chunked trailer section) is bounded by `max_head_bytes`.
pub fn max_buffered_input(c: &ServerConfig) -> usize {
    c.max_head_bytes
}

/// Checks the order of `server::Event`s: ids start at 0 and increase by one, a body's events
/// belong to the request being read, `End` closes it, nothing follows `Error`, and a
/// Content-Length body delivers exactly its length.
#[derive(Debug, Default)]
pub struct ServerEventChecker {
    next_id: u64,
    /// The request whose body is being delivered, its body kind and the bytes seen so far.
    current: Option<(u64, BodyKind, u64)>,
    trailers_seen: bool,
    failed: bool,
    /// Whether each request id was HEAD / CONNECT, and its version, for the output checker.
    pub requests: Vec<RequestFacts>,
}

/// What the response checker needs to know about a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts {
    /// HEAD request: its response has no body.
    pub head: bool,
    /// CONNECT request: a 2xx switches to a tunnel.
    pub connect: bool,
    /// Upgrade request: a 101 switches protocols.
    pub upgrade: bool,
}

impl ServerEventChecker {
    /// Check one event (after reading the accessors, so they are exercised too).
    pub fn check(&mut self, ev: &Event) {
        assert!(!self.failed, "event after Error: {ev:?}");
        match ev {
            Event::Request(r) => {
                // Exercise every accessor: none may panic on any accepted head.
                let _ = (
                    r.method(),
                    r.method_str(),
                    r.target(),
                    r.path(),
                    r.query(),
                    r.version(),
                );
                let _ = (
                    r.keep_alive(),
                    r.expects_continue(),
                    r.is_upgrade(),
                    r.head_bytes().len(),
                );
                for (n, v) in r.headers().iter() {
                    assert!(!n.is_empty(), "empty header name");
                    let _ = v.len();
                }
                let _ = r.headers().get("content-length");
                assert!(
                    self.current.is_none(),
                    "Request {:?} before End of {:?}",
                    r.id(),
                    self.current
                );
                assert_eq!(
                    r.id().get(),
                    self.next_id,
                    "request ids must increase by one"
                );
                self.next_id += 1;
                self.current = Some((r.id().get(), r.body_kind(), 0));
                self.trailers_seen = false;
                self.requests.push(RequestFacts {
                    head: r.method() == ferry_http1::Method::Head,
                    connect: r.method() == ferry_http1::Method::Connect,
                    upgrade: r.is_upgrade(),
                });
            }
            Event::Data { id, data } => {
                let cur = self.current.as_mut().expect("Data outside a request body");
                assert_eq!(cur.0, id.get(), "Data for a request that is not being read");
                assert!(!data.is_empty(), "empty Data event");
                assert!(!self.trailers_seen, "Data after Trailers");
                cur.2 += data.len() as u64;
                match cur.1 {
                    BodyKind::Length(n) => assert!(cur.2 <= n, "more body than Content-Length"),
                    BodyKind::Chunked => {}
                    k => panic!("Data for a request with body kind {k:?}"),
                }
            }
            Event::Trailers { id, trailers } => {
                let cur = self
                    .current
                    .as_ref()
                    .expect("Trailers outside a request body");
                assert_eq!(cur.0, id.get());
                assert_eq!(cur.1, BodyKind::Chunked, "Trailers on a non-chunked body");
                assert!(!self.trailers_seen, "two trailer sections");
                self.trailers_seen = true;
                for (n, v) in trailers.iter() {
                    let _ = (n.len(), v.len());
                }
            }
            Event::End { id } => {
                let cur = self.current.take().expect("End outside a request");
                assert_eq!(cur.0, id.get(), "End for the wrong request");
                if let BodyKind::Length(n) = cur.1 {
                    assert_eq!(cur.2, n, "End before the whole Content-Length body");
                }
            }
            Event::Error { id, error } => {
                if let Some(id) = id {
                    let cur = self.current.as_ref().expect("body Error outside a request");
                    assert_eq!(cur.0, id.get(), "body Error names the wrong request");
                }
                let _ = error.status();
                self.failed = true;
            }
            _ => {}
        }
    }
}

/// A server event reduced to what must not depend on how the input was split: body data is
/// merged per request, heads compared as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Request head bytes.
    Request(u64, Bytes),
    /// Body bytes (consecutive `Data` events merged).
    Data(u64, Vec<u8>),
    /// Trailer fields.
    Trailers(u64, Vec<(String, Vec<u8>)>),
    /// End of a request.
    End(u64),
    /// Failure.
    Error(Option<u64>, Error),
}

/// Append `ev` to `out` in normalized form.
pub fn normalize(out: &mut Vec<Norm>, ev: Event) {
    match ev {
        Event::Request(r) => out.push(Norm::Request(r.id().get(), r.head_bytes().clone())),
        Event::Data { id, data } => {
            if let Some(Norm::Data(last, buf)) = out.last_mut() {
                if *last == id.get() {
                    buf.extend_from_slice(&data);
                    return;
                }
            }
            out.push(Norm::Data(id.get(), data.to_vec()));
        }
        Event::Trailers { id, trailers } => {
            let t = trailers
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_vec()))
                .collect();
            out.push(Norm::Trailers(id.get(), t));
        }
        Event::End { id } => out.push(Norm::End(id.get())),
        Event::Error { id, error } => out.push(Norm::Error(id.map(|i| i.get()), error)),
        _ => {}
    }
}

/// The byte every body byte of the response to request `id` carries, so the output checker can
/// tell whose body it is reading.
pub fn body_byte(id: u64) -> u8 {
    b'a' + (id % 26) as u8
}

/// The response header that tags a response with its request id.
pub const TAG: &str = "x-req";

/// One response as parsed back from a server's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// The request id from the `x-req` tag (`None`: the connection's own error answer).
    pub tag: Option<u64>,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
    /// Whether the body was complete.
    pub complete: bool,
}

/// Parses a server's whole output with httparse and checks it: every response the application
/// sent carries `x-req: <id>`, and final responses appear in request order (0, 1, 2, ...), the
/// connection's own error answer (untagged, `connection: close`) taking the next place; bodies
/// are framed correctly and hold only their request's byte; nothing follows a response with
/// `connection: close`; only the last message may be cut short (a close mid-body).
///
/// Returns the responses, without the connection's own `100 Continue`s (whether one is owed
/// depends on whether the body had arrived, so on how the input was split).
pub fn check_server_output(out: &[u8], requests: &[RequestFacts]) -> Vec<Resp> {
    let mut resps = Vec::new();
    let mut pos = 0;
    let mut next_final: u64 = 0;
    let mut closed = false;
    while pos < out.len() {
        assert!(
            !closed,
            "bytes after a `connection: close` response at {pos}: {:?}",
            show(&out[pos..])
        );
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        let head_len = match res.parse(&out[pos..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                panic!("incomplete response head at {pos}: {:?}", show(&out[pos..]))
            }
            Err(e) => panic!(
                "unparsable response at {pos} ({e}): {:?}",
                show(&out[pos..])
            ),
        };
        let status = res.code.expect("status");
        let mut tag = None;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        for h in res.headers.iter() {
            let v = std::str::from_utf8(h.value).unwrap_or("");
            if h.name.eq_ignore_ascii_case(TAG) {
                assert!(tag.is_none(), "two tags");
                tag = Some(v.parse::<u64>().expect("tag value"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                assert!(length.is_none(), "two content-length fields");
                length = Some(v.parse::<usize>().expect("content-length value"));
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                assert_eq!(v, "chunked");
                chunked = true;
            } else if h.name.eq_ignore_ascii_case("connection") {
                close |= v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
            }
        }
        assert!(
            !(chunked && length.is_some()),
            "both content-length and chunked"
        );
        pos += head_len;
        if (100..200).contains(&status) && status != 101 {
            // Interim: the application's (tagged, for the request at the front) or the
            // connection's own `100 Continue`.
            if let Some(t) = tag {
                assert_eq!(t, next_final, "interim response out of order");
                resps.push(Resp {
                    status,
                    tag,
                    body: Vec::new(),
                    complete: true,
                });
            } else {
                assert_eq!(status, 100, "untagged interim response");
            }
            continue;
        }
        let id = next_final;
        if let Some(t) = tag {
            assert_eq!(
                t, id,
                "response for request {t} where request {id}'s was due"
            );
        } else {
            assert!(
                close,
                "the connection's own error response without `connection: close`"
            );
            assert!(
                (400..600).contains(&status),
                "untagged response with status {status}"
            );
        }
        next_final += 1;
        let facts = requests.get(id as usize).copied();
        let connect = facts.is_some_and(|f| f.connect);
        if (status == 101 && tag.is_some()) || (connect && (200..300).contains(&status)) {
            resps.push(Resp {
                status,
                tag,
                body: Vec::new(),
                complete: true,
            });
            return resps; // protocol switch: the rest is the tunnel's
        }
        let head = facts.is_some_and(|f| f.head);
        let expect = tag.map(body_byte);
        // (body bytes, bytes of the stream used, whether the body is complete)
        let (body, used, complete) = if head || status == 204 || status == 304 {
            (Vec::new(), 0, true)
        } else if chunked {
            dechunk(&out[pos..])
        } else if let Some(n) = length {
            let m = n.min(out.len() - pos);
            (out[pos..pos + m].to_vec(), m, m == n)
        } else {
            assert!(close, "a close-delimited body without `connection: close`");
            (out[pos..].to_vec(), out.len() - pos, true)
        };
        check_body(&body, expect);
        pos += used;
        resps.push(Resp {
            status,
            tag,
            body,
            complete,
        });
        if !complete {
            assert_eq!(
                pos,
                out.len(),
                "a body cut short in the middle of the stream"
            );
            return resps;
        }
        if close {
            closed = true;
        }
    }
    resps
}

fn check_body(body: &[u8], expect: Option<u8>) {
    if let Some(b) = expect {
        if let Some(p) = body.iter().position(|&x| x != b) {
            panic!(
                "body byte {:?} at {p} in a body of {:?}s",
                body[p] as char, b as char
            );
        }
    }
}

/// Minimal independent chunked decoder for checking output: (data, bytes used, complete).
pub fn dechunk(mut s: &[u8]) -> (Vec<u8>, usize, bool) {
    let start = s.len();
    let mut data = Vec::new();
    loop {
        let Some(nl) = s.iter().position(|&b| b == b'\n') else {
            return (data, start - s.len(), false);
        };
        let line = &s[..nl];
        let line = line
            .strip_suffix(b"\r")
            .expect("chunk size line without CR");
        let size =
            usize::from_str_radix(std::str::from_utf8(line).expect("ascii"), 16).expect("hex size");
        let after = &s[nl + 1..];
        if size == 0 {
            // Trailers: field lines until the empty line.
            let mut t = after;
            loop {
                let Some(nl) = t.iter().position(|&b| b == b'\n') else {
                    return (data, start - s.len(), false);
                };
                let empty = nl == 1 && t[0] == b'\r';
                t = &t[nl + 1..];
                if empty {
                    return (data, start - t.len(), true);
                }
            }
        }
        if after.len() < size + 2 {
            data.extend_from_slice(&after[..size.min(after.len())]);
            return (data, start, false);
        }
        data.extend_from_slice(&after[..size]);
        assert_eq!(
            &after[size..size + 2],
            b"\r\n",
            "chunk data not followed by CRLF"
        );
        s = &after[size + 2..];
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

// ----- structured requests --------------------------------------------------------------------

/// A request method for generated requests.
#[derive(Arbitrary, Clone, Copy, Debug)]
#[allow(missing_docs)]
pub enum MethodChoice {
    Get,
    Head,
    Post,
    Put,
    Connect,
    Options,
    Delete,
}

/// The `Connection` field of a generated message.
#[derive(Arbitrary, Clone, Copy, Debug)]
#[allow(missing_docs)]
pub enum ConnChoice {
    None,
    Close,
    KeepAlive,
    Upgrade,
}

/// How a generated message frames its body.
#[derive(Arbitrary, Clone, Debug)]
pub enum BodyChoice {
    /// No body fields.
    None,
    /// `Content-Length: n` and `n` bytes.
    Length(u8),
    /// `Content-Length: declared`, but `sent` bytes (short body or extra bytes).
    WrongLength {
        /// Declared length.
        declared: u8,
        /// Bytes actually sent.
        sent: u8,
    },
    /// Chunked with these chunk sizes, then a last chunk, with or without a trailer.
    Chunked(Vec<u8>, bool),
}

/// A request generated from structure (valid unless `raw_field` or `WrongLength` says
/// otherwise), so the fuzzer reaches bodies, pipelining and upgrades without guessing syntax.
#[derive(Arbitrary, Clone, Debug)]
pub struct ReqSpec {
    /// Method.
    pub method: MethodChoice,
    /// HTTP/1.0 instead of 1.1.
    pub http10: bool,
    /// Send `Host` (0 = none, 1 = once, 2+ = twice).
    pub host: u8,
    /// `Connection` field.
    pub conn: ConnChoice,
    /// Send `Upgrade: websocket`.
    pub upgrade: bool,
    /// Send `Expect: 100-continue`.
    pub expect: bool,
    /// Body framing.
    pub body: BodyChoice,
    /// An extra field line, as raw bytes (may be invalid).
    pub raw_field: Option<Vec<u8>>,
}

impl ReqSpec {
    /// Serialize; body bytes are `b'0' + id % 10` so they can be recognised.
    pub fn write(&self, out: &mut Vec<u8>) {
        let m = match self.method {
            MethodChoice::Get => "GET",
            MethodChoice::Head => "HEAD",
            MethodChoice::Post => "POST",
            MethodChoice::Put => "PUT",
            MethodChoice::Connect => "CONNECT",
            MethodChoice::Options => "OPTIONS",
            MethodChoice::Delete => "DELETE",
        };
        let target = match self.method {
            MethodChoice::Connect => "example.com:443",
            MethodChoice::Options => "*",
            _ => "/p?q=1",
        };
        let v = if self.http10 { "1.0" } else { "1.1" };
        out.extend_from_slice(format!("{m} {target} HTTP/{v}\r\n").as_bytes());
        for _ in 0..self.host.min(2) {
            out.extend_from_slice(b"Host: example.com\r\n");
        }
        match self.conn {
            ConnChoice::None => {}
            ConnChoice::Close => out.extend_from_slice(b"Connection: close\r\n"),
            ConnChoice::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            ConnChoice::Upgrade => out.extend_from_slice(b"Connection: Upgrade\r\n"),
        }
        if self.upgrade {
            out.extend_from_slice(b"Upgrade: websocket\r\n");
        }
        if self.expect {
            out.extend_from_slice(b"Expect: 100-continue\r\n");
        }
        if let Some(f) = &self.raw_field {
            out.extend_from_slice(&f[..f.len().min(64)]);
            out.extend_from_slice(b"\r\n");
        }
        match &self.body {
            BodyChoice::None => out.extend_from_slice(b"\r\n"),
            BodyChoice::Length(n) => {
                out.extend_from_slice(format!("Content-Length: {n}\r\n\r\n").as_bytes());
                out.extend(std::iter::repeat_n(b'x', *n as usize));
            }
            BodyChoice::WrongLength { declared, sent } => {
                out.extend_from_slice(format!("Content-Length: {declared}\r\n\r\n").as_bytes());
                out.extend(std::iter::repeat_n(b'y', *sent as usize));
            }
            BodyChoice::Chunked(sizes, trailer) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for &s in sizes.iter().take(8) {
                    if s == 0 {
                        continue;
                    }
                    out.extend_from_slice(format!("{s:x}\r\n").as_bytes());
                    out.extend(std::iter::repeat_n(b'z', s as usize));
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                if *trailer {
                    out.extend_from_slice(b"X-Checksum: abc\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

// ----- client side ----------------------------------------------------------------------------

/// A client configuration with limits small enough for fuzz inputs to reach them.
pub fn small_client_config() -> Arc<ferry_http1::ClientConfig> {
    let mut c = ferry_http1::ClientConfig::default();
    c.max_head_bytes = 600;
    c.max_headers = 12;
    c.max_body = 3000;
    c.max_pipelined = 6;
    c.response_timeout = Some(Duration::from_secs(2));
    Arc::new(c)
}

/// What the client checker knows about a request it sent.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// Request id.
    pub id: u64,
    /// HEAD: no response body.
    pub head: bool,
    /// CONNECT: 2xx switches to a tunnel.
    pub connect: bool,
    /// Carried `Upgrade`: 101 switches protocols.
    pub upgrade: bool,
}

/// Checks the order of `client::Event`s: per request, in request order, `Informational`*,
/// `Response`, then `Data`* `Trailers`? `End` or `Upgraded`; `Error` names the oldest request
/// still waiting and ends everything; HEAD responses have no body; Content-Length bodies are
/// delivered exactly; optionally (`tags`), responses carry the `x-req` tag of the request they
/// answer and bodies hold only that tag's byte.
#[derive(Debug, Default)]
pub struct ClientEventChecker {
    /// Requests sent whose response is not complete, oldest first.
    pub outstanding: std::collections::VecDeque<Sent>,
    /// Response being read: (id, body kind, bytes seen, trailers seen, status, tag).
    current: Option<(u64, BodyKind, u64, bool, u16, Option<u64>)>,
    failed: bool,
    upgraded: bool,
    /// Check `x-req` tags and body bytes.
    pub tags: bool,
}

impl ClientEventChecker {
    /// A checker that also checks `x-req` tags (until `tags` is cleared).
    pub fn with_tags() -> Self {
        ClientEventChecker {
            tags: true,
            ..Default::default()
        }
    }

    /// Record a request the application sent.
    pub fn sent(&mut self, s: Sent) {
        self.outstanding.push_back(s);
    }

    fn tag_of(r: &ferry_http1::Response) -> Option<u64> {
        r.headers()
            .get(TAG)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
    }

    /// Check one event.
    pub fn check(&mut self, ev: &ferry_http1::client::Event) {
        use ferry_http1::client::Event as E;
        assert!(
            !self.failed && !self.upgraded,
            "event after Error/Upgraded: {ev:?}"
        );
        match ev {
            E::Informational(r) | E::Response(r) => {
                let _ = (
                    r.reason(),
                    r.version(),
                    r.keep_alive(),
                    r.head_bytes().len(),
                    r.headers().len(),
                );
                assert!(
                    self.current.is_none(),
                    "response head while a body is being read: {ev:?}"
                );
                let front = *self
                    .outstanding
                    .front()
                    .expect("response with no request outstanding");
                assert_eq!(r.id().get(), front.id, "response for the wrong request");
                let tag = Self::tag_of(r);
                if self.tags {
                    if let Some(t) = tag {
                        assert_eq!(
                            t, front.id,
                            "response tagged {t} reported for request {}",
                            front.id
                        );
                    }
                }
                if let E::Informational(_) = ev {
                    assert!(
                        (100..200).contains(&r.status()) && r.status() != 101,
                        "Informational {}",
                        r.status()
                    );
                } else {
                    assert!(
                        !(100..200).contains(&r.status()) || r.status() == 101,
                        "final response {}",
                        r.status()
                    );
                    if front.head || r.status() == 204 || r.status() == 304 {
                        assert_eq!(
                            r.body_kind(),
                            BodyKind::Empty,
                            "body on a response that has none"
                        );
                    }
                    self.current = Some((front.id, r.body_kind(), 0, false, r.status(), tag));
                }
            }
            E::Data { id, data } => {
                let cur = self.current.as_mut().expect("Data outside a response");
                assert_eq!(cur.0, id.get(), "Data for the wrong response");
                assert!(!data.is_empty(), "empty Data");
                assert!(!cur.3, "Data after Trailers");
                cur.2 += data.len() as u64;
                match cur.1 {
                    BodyKind::Length(n) => assert!(cur.2 <= n, "more than Content-Length"),
                    BodyKind::Chunked | BodyKind::UntilClose => {}
                    k => panic!("Data on a body of kind {k:?}"),
                }
                if self.tags {
                    if let Some(t) = cur.5 {
                        assert!(
                            data.iter().all(|&b| b == body_byte(t)),
                            "foreign bytes in body of {t}"
                        );
                    }
                }
            }
            E::Trailers { id, .. } => {
                let cur = self.current.as_mut().expect("Trailers outside a response");
                assert_eq!(cur.0, id.get());
                assert_eq!(cur.1, BodyKind::Chunked);
                assert!(!cur.3, "two trailer sections");
                cur.3 = true;
            }
            E::End { id } => {
                let cur = self.current.take().expect("End outside a response");
                assert_eq!(cur.0, id.get(), "End for the wrong response");
                if let BodyKind::Length(n) = cur.1 {
                    assert_eq!(cur.2, n, "End before the whole Content-Length body");
                }
                assert_eq!(self.outstanding.pop_front().map(|s| s.id), Some(id.get()));
            }
            E::Upgraded { id } => {
                let cur = self.current.take().expect("Upgraded without a response");
                assert_eq!(cur.0, id.get());
                let front = self.outstanding.pop_front().expect("outstanding");
                let st = cur.4;
                assert!(
                    (st == 101 && front.upgrade) || (front.connect && (200..300).contains(&st)),
                    "Upgraded after status {st}"
                );
                self.upgraded = true;
            }
            E::Error { id, error } => {
                let _ = error.status();
                let front = self.outstanding.front().map(|s| s.id);
                assert_eq!(
                    id.map(|i| i.get()),
                    front,
                    "Error must name the oldest waiting request"
                );
                self.failed = true;
            }
            _ => {}
        }
    }
}

/// A client event reduced to what must not depend on how the input was split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientNorm {
    /// Interim head.
    Informational(u64, Bytes),
    /// Final head.
    Response(u64, Bytes),
    /// Body bytes (consecutive `Data` merged).
    Data(u64, Vec<u8>),
    /// Trailers.
    Trailers(u64, Vec<(String, Vec<u8>)>),
    /// End.
    End(u64),
    /// Upgraded.
    Upgraded(u64),
    /// Failure.
    Error(Option<u64>, Error),
}

/// Append a client event to `out` in normalized form.
pub fn normalize_client(out: &mut Vec<ClientNorm>, ev: ferry_http1::client::Event) {
    use ferry_http1::client::Event as E;
    match ev {
        E::Informational(r) => out.push(ClientNorm::Informational(
            r.id().get(),
            r.head_bytes().clone(),
        )),
        E::Response(r) => out.push(ClientNorm::Response(r.id().get(), r.head_bytes().clone())),
        E::Data { id, data } => {
            if let Some(ClientNorm::Data(last, buf)) = out.last_mut() {
                if *last == id.get() {
                    buf.extend_from_slice(&data);
                    return;
                }
            }
            out.push(ClientNorm::Data(id.get(), data.to_vec()));
        }
        E::Trailers { id, trailers } => {
            let t = trailers
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_vec()))
                .collect();
            out.push(ClientNorm::Trailers(id.get(), t));
        }
        E::End { id } => out.push(ClientNorm::End(id.get())),
        E::Upgraded { id } => out.push(ClientNorm::Upgraded(id.get())),
        E::Error { id, error } => out.push(ClientNorm::Error(id.map(|i| i.get()), error)),
        _ => {}
    }
}

/// Parses a client's whole output with httparse: requests tagged `x-req: 0, 1, 2, ...` in
/// order, correctly framed, bodies holding only their tag's byte, nothing after a request with
/// `connection: close`; only the last body may be incomplete (still streaming).
pub fn check_client_output(out: &[u8]) {
    let mut pos = 0;
    let mut next: u64 = 0;
    let mut closed = false;
    while pos < out.len() {
        assert!(
            !closed,
            "bytes after a `connection: close` request: {:?}",
            show(&out[pos..])
        );
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&out[pos..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                panic!("incomplete request head at {pos}: {:?}", show(&out[pos..]))
            }
            Err(e) => panic!("unparsable request at {pos} ({e}): {:?}", show(&out[pos..])),
        };
        let (mut tag, mut length, mut chunked) = (None, None, false);
        for h in req.headers.iter() {
            let v = std::str::from_utf8(h.value).unwrap_or("");
            if h.name.eq_ignore_ascii_case(TAG) {
                tag = Some(v.parse::<u64>().expect("tag"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                assert!(length.is_none(), "two content-length fields");
                length = Some(v.parse::<usize>().expect("content-length"));
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                assert_eq!(v, "chunked");
                chunked = true;
            } else if h.name.eq_ignore_ascii_case("connection") {
                closed |= v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
            }
        }
        assert!(
            !(chunked && length.is_some()),
            "both content-length and chunked"
        );
        assert_eq!(tag, Some(next), "request out of order");
        next += 1;
        pos += head_len;
        let (body, used, complete) = if chunked {
            dechunk(&out[pos..])
        } else if let Some(n) = length {
            let m = n.min(out.len() - pos);
            (out[pos..pos + m].to_vec(), m, m == n)
        } else {
            (Vec::new(), 0, true)
        };
        check_body(&body, tag.map(body_byte));
        pos += used;
        if !complete {
            assert_eq!(
                pos,
                out.len(),
                "a request body cut short in the middle of the stream"
            );
            return;
        }
    }
}

/// A response generated from structure for the client targets.
#[derive(Arbitrary, Clone, Debug)]
pub struct RespSpec {
    /// Status code choice.
    pub status: StatusChoice,
    /// HTTP/1.0 status line.
    pub http10: bool,
    /// `Connection` field.
    pub conn: ConnChoice,
    /// Body framing (`None`: close-delimited, or no body where the status has none).
    pub body: BodyChoice,
    /// An extra field line as raw bytes.
    pub raw_field: Option<Vec<u8>>,
}

/// Status codes for generated responses.
#[derive(Arbitrary, Clone, Copy, Debug)]
#[allow(missing_docs)]
pub enum StatusChoice {
    Continue,
    Switching,
    EarlyHints,
    Ok,
    NoContent,
    NotModified,
    NotFound,
    ServerError,
    Other(u16),
}

impl StatusChoice {
    /// The code.
    pub fn code(self) -> u16 {
        match self {
            StatusChoice::Continue => 100,
            StatusChoice::Switching => 101,
            StatusChoice::EarlyHints => 103,
            StatusChoice::Ok => 200,
            StatusChoice::NoContent => 204,
            StatusChoice::NotModified => 304,
            StatusChoice::NotFound => 404,
            StatusChoice::ServerError => 500,
            StatusChoice::Other(s) => s % 1000,
        }
    }
}

impl RespSpec {
    /// Serialize as the response to request `tag`; `body_allowed: false` (HEAD, 1xx, 204, 304)
    /// keeps the framing fields but sends no body bytes. Body bytes are `body_byte(tag)`.
    pub fn write(&self, tag: u64, body_allowed: bool, out: &mut Vec<u8>) {
        let v = if self.http10 { "1.0" } else { "1.1" };
        let code = self.status.code();
        out.extend_from_slice(format!("HTTP/{v} {code:03} Reason\r\n{TAG}: {tag}\r\n").as_bytes());
        match self.conn {
            ConnChoice::None => {}
            ConnChoice::Close => out.extend_from_slice(b"Connection: close\r\n"),
            ConnChoice::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            ConnChoice::Upgrade => {
                out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: websocket\r\n")
            }
        }
        if let Some(f) = &self.raw_field {
            out.extend_from_slice(&f[..f.len().min(64)]);
            out.extend_from_slice(b"\r\n");
        }
        let b = body_byte(tag);
        let n = |k: usize| std::iter::repeat_n(b, if body_allowed { k } else { 0 });
        match &self.body {
            BodyChoice::None => out.extend_from_slice(b"\r\n"),
            BodyChoice::Length(len) => {
                out.extend_from_slice(format!("Content-Length: {len}\r\n\r\n").as_bytes());
                out.extend(n(*len as usize));
            }
            BodyChoice::WrongLength { declared, sent } => {
                out.extend_from_slice(format!("Content-Length: {declared}\r\n\r\n").as_bytes());
                out.extend(n(*sent as usize));
            }
            BodyChoice::Chunked(sizes, trailer) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                if body_allowed {
                    for &s in sizes.iter().take(8).filter(|&&s| s != 0) {
                        out.extend_from_slice(format!("{s:x}\r\n").as_bytes());
                        out.extend(n(s as usize));
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(if *trailer {
                        b"0\r\nX-T: 1\r\n\r\n"
                    } else {
                        b"0\r\n\r\n"
                    });
                }
            }
        }
    }
}

/// `FERRY_FUZZ_STRICT=1`: assert even the invariants that a known, reported and not yet fixed
/// library bug breaks (see `fuzz/regressions/README.md`, "Open findings"). Without it the
/// targets tolerate exactly those bugs so the smoke run keeps looking for new ones.
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("FERRY_FUZZ_STRICT").is_some_and(|v| v == "1"))
}
