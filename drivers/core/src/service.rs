//! The application boundary: a [`Service`] takes requests and gives responses, without async.
//!
//! Two ways to answer:
//!
//! - **buffered**: [`Service::call`] gets a [`Request`] with its whole body and returns a
//!   [`Response`] (whose body may itself be a [`Body::Chunked`] pull stream);
//! - **streaming**: [`Service::stream`] sees the head first and may return a [`BodyStream`]
//!   that gets the body chunk by chunk as it arrives, answering through a [`Responder`]
//!   (head at any point, then data pieces).
//!
//! The same service runs inline on an I/O worker or on application workers; either way every
//! call is wrapped in `catch_unwind`: a panic is logged, answered with `500` when no response
//! head went out yet (the connection is closed otherwise), and the worker keeps running.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Bytes, BytesMut};
use ferry_http1::{Headers, Method, Version};

/// Which connection a request came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Index of the I/O worker that owns the connection.
    pub worker: usize,
    /// The connection's token inside that worker (reused after close).
    pub token: usize,
    /// The peer's address, when known.
    pub peer: Option<SocketAddr>,
}

/// An HTTP request as the application sees it: the parsed head (zero-copy views into one
/// shared buffer) and the body.
#[derive(Clone)]
pub struct Request {
    head: ferry_http1::Request,
    body: Bytes,
    conn: ConnInfo,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("head", &self.head)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Request {
    /// A request from a parsed head and a body.
    pub fn new(head: ferry_http1::Request, body: Bytes, conn: ConnInfo) -> Request {
        Request { head, body, conn }
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.head.method()
    }
    /// The method token as sent.
    pub fn method_str(&self) -> &str {
        self.head.method_str()
    }
    /// The request target as sent.
    pub fn target(&self) -> &str {
        self.head.target()
    }
    /// The path (target before `?`).
    pub fn path(&self) -> &str {
        self.head.path()
    }
    /// The query (after `?`).
    pub fn query(&self) -> Option<&str> {
        self.head.query()
    }
    /// The host the request is for: an absolute-form target's authority (its `Host` field is
    /// ignored then, RFC 9112 §3.2.2), else the `Host` field (HTTP/2: `:authority`).
    pub fn host(&self) -> Option<&str> {
        self.head.host()
    }
    /// HTTP version.
    pub fn version(&self) -> Version {
        self.head.version()
    }
    /// All header fields.
    pub fn headers(&self) -> &Headers {
        self.head.headers()
    }
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.headers().get(name)
    }
    /// The `Content-Length` the client announced, if any.
    pub fn content_length(&self) -> Option<u64> {
        match self.head.body_kind() {
            ferry_http1::BodyKind::Length(n) => Some(n),
            ferry_http1::BodyKind::Empty => Some(0),
            _ => None,
        }
    }
    /// The body (empty in [`Service::stream`], which sees the head only).
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// Take the body.
    pub fn into_body(self) -> Bytes {
        self.body
    }
    /// The connection.
    pub fn conn(&self) -> &ConnInfo {
        &self.conn
    }
    /// The protocol's own head.
    pub fn head(&self) -> &ferry_http1::Request {
        &self.head
    }
}

/// A header list: static or owned names, `Bytes` values. One field is kept inline, so a
/// response with just `content-type` costs no heap allocation (and stays small enough to move
/// cheaply); build one with [`Response::header`], `push`, or `collect()`.
pub type HeaderList = smallvec::SmallVec<[(Cow<'static, str>, Bytes); 1]>;

/// A response body.
pub enum Body {
    /// No body.
    Empty,
    /// The whole body.
    Full(Bytes),
    /// A stream of pieces of unknown total length, pulled by the I/O worker as the socket
    /// drains (sent chunked). The iterator runs on the I/O worker: it should only hand out
    /// bytes that are ready.
    Chunked(Box<dyn Iterator<Item = Bytes> + Send>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Empty => f.write_str("Empty"),
            Body::Full(b) => write!(f, "Full({} bytes)", b.len()),
            Body::Chunked(_) => f.write_str("Chunked(..)"),
        }
    }
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields (not `Content-Length`/`Transfer-Encoding`: the body decides those).
    pub headers: HeaderList,
    /// The body.
    pub body: Body,
}

impl Response {
    /// A response with a status, no fields and no body.
    #[inline]
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: HeaderList::new(),
            body: Body::Empty,
        }
    }

    /// A `text/plain` response.
    #[inline]
    pub fn text(status: u16, body: impl Into<Bytes>) -> Response {
        // Built in place (no builder steps, each a move of the whole response).
        Response {
            status,
            headers: HeaderList::from_buf([(
                Cow::Borrowed("content-type"),
                Bytes::from_static(b"text/plain"),
            )]),
            body: Body::Full(body.into()),
        }
    }

    /// Add a header field.
    #[inline]
    pub fn header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Bytes>,
    ) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    #[inline]
    pub fn body(mut self, body: Body) -> Response {
        self.body = body;
        self
    }
}

/// How a streamed response head frames its body.
pub enum HeadBody {
    /// No body.
    Empty,
    /// The whole body.
    Full(Bytes),
    /// Exactly this many bytes follow as [`Part::Data`].
    Length(u64),
    /// Chunked; pieces follow as [`Part::Data`], the last with `end`.
    Chunked,
    /// Chunked, pulled from an iterator by the I/O worker.
    Stream(Box<dyn Iterator<Item = Bytes> + Send>),
}

impl From<Body> for HeadBody {
    fn from(body: Body) -> HeadBody {
        match body {
            Body::Empty => HeadBody::Empty,
            Body::Full(b) => HeadBody::Full(b),
            Body::Chunked(it) => HeadBody::Stream(it),
        }
    }
}

impl fmt::Debug for HeadBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadBody::Empty => f.write_str("Empty"),
            HeadBody::Full(b) => write!(f, "Full({} bytes)", b.len()),
            HeadBody::Length(n) => write!(f, "Length({n})"),
            HeadBody::Chunked => f.write_str("Chunked"),
            HeadBody::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

/// One piece of a response, as it travels from the application to the I/O worker.
#[derive(Debug)]
#[non_exhaustive]
pub enum Part {
    /// The response head.
    Head {
        /// Status code.
        status: u16,
        /// Fields.
        headers: HeaderList,
        /// Body framing.
        body: HeadBody,
    },
    /// Body bytes; `end` finishes the body.
    Data {
        /// The bytes.
        data: Bytes,
        /// Last piece.
        end: bool,
    },
    /// The application failed after the head went out: close the connection.
    Abort,
    /// The application will read the request body: send the `100 Continue` an
    /// `Expect: 100-continue` request waits for (application workers send this when they
    /// took a request without answering it at its head).
    Continue,
}

/// Response parts in order; two fit without allocating (head + body, the common case).
pub type Parts = smallvec::SmallVec<[Part; 2]>;

/// Collects response parts for one request (see [`BodyStream`]).
#[derive(Debug, Default)]
pub struct Responder {
    parts: Parts,
    head_sent: bool,
    finished: bool,
}

impl Responder {
    /// An empty responder.
    pub fn new() -> Responder {
        Responder::default()
    }

    /// Send the response head. Only the first call counts.
    pub fn head(&mut self, status: u16, headers: HeaderList, body: HeadBody) {
        if self.head_sent {
            return;
        }
        self.head_sent = true;
        self.finished = matches!(
            body,
            HeadBody::Empty | HeadBody::Full(_) | HeadBody::Stream(_)
        );
        self.parts.push(Part::Head {
            status,
            headers,
            body,
        });
    }

    /// Send a whole response.
    pub fn respond(&mut self, r: Response) {
        self.head(r.status, r.headers, r.body.into());
    }

    /// Send body bytes (after a `Length`/`Chunked` head); `end` finishes the body.
    pub fn data(&mut self, data: Bytes, end: bool) {
        if !self.head_sent || self.finished {
            return;
        }
        self.finished = end;
        self.parts.push(Part::Data { data, end });
    }

    /// Whether the head went out.
    pub fn head_sent(&self) -> bool {
        self.head_sent
    }

    /// Whether the response is complete.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Take the parts collected so far.
    pub fn take(&mut self) -> Parts {
        std::mem::take(&mut self.parts)
    }

    fn abort(&mut self) {
        self.parts.push(Part::Abort);
        self.finished = true;
    }
}

/// Receives a request body piece by piece (see [`Service::stream`]).
pub trait BodyStream: Send {
    /// A piece of the body.
    fn on_data(&mut self, chunk: Bytes, out: &mut Responder);
    /// The body is complete; the response MUST be finished by now or in this call.
    fn on_end(&mut self, out: &mut Responder);
    /// The request failed or the connection closed before the end.
    fn on_abort(&mut self) {}
}

/// Health reported by [`Service::health`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Serving.
    Ok,
    /// Serving with a problem.
    Degraded(String),
    /// Not serving.
    Unavailable(String),
}

/// An application: request in, response out, plus the design's hooks. Methods take `&self`
/// and may run on several threads at once.
pub trait Service: Send + Sync + 'static {
    /// Answer a request whose whole body has arrived.
    fn call(&self, req: Request) -> Response;

    /// Called with each request head before its body. Return a [`BodyStream`] to receive the
    /// body as it arrives (answering through `out`, possibly right away); `None` (the
    /// default) buffers the body and calls [`call`](Service::call) at its end.
    fn stream(&self, head: &Request, out: &mut Responder) -> Option<Box<dyn BodyStream>> {
        let _ = (head, out);
        None
    }

    /// A connection was accepted; `false` closes it at once.
    fn on_connect(&self, conn: &ConnInfo) -> bool {
        let _ = conn;
        true
    }

    /// A connection closed.
    fn on_disconnect(&self, conn: &ConnInfo) {
        let _ = conn;
    }

    /// The protocol failed on a connection (the protocol's own answer, e.g. 400, is sent).
    fn on_error(&self, conn: &ConnInfo, error: &ferry_http1::Error) {
        let _ = (conn, error);
    }

    /// A connection timed out (header read: 408 sent; idle keep-alive: closed).
    fn on_timeout(&self, conn: &ConnInfo) {
        let _ = conn;
    }

    /// Health check.
    fn health(&self) -> Health {
        Health::Ok
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// The state of one request between its head and the end of its body: what both inline
/// dispatch and application workers run.
// The head is kept inline (no allocation per request on the inline path).
#[allow(clippy::large_enum_variant)]
pub enum Exchange {
    /// Buffering the body for [`Service::call`].
    Buffer {
        /// The head.
        req: Request,
        /// Body so far.
        body: BytesMut,
    },
    /// Streaming into the application.
    Stream(Box<dyn BodyStream>),
    /// Answered already (e.g. 413 or a panic); remaining body pieces are dropped.
    Done,
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exchange::Buffer { body, .. } => write!(f, "Buffer({} bytes)", body.len()),
            Exchange::Stream(_) => f.write_str("Stream"),
            Exchange::Done => f.write_str("Done"),
        }
    }
}

/// What happened while running application code for one exchange step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// The application panicked (logged, answered).
    pub panicked: bool,
}

impl Exchange {
    /// A request head arrived.
    pub fn start(
        service: &dyn Service,
        req: Request,
        max_body: usize,
        out: &mut Responder,
    ) -> (Exchange, StepOutcome) {
        let r = catch_unwind(AssertUnwindSafe(|| service.stream(&req, out)));
        match r {
            Ok(Some(s)) => (Exchange::Stream(s), StepOutcome::default()),
            Ok(None) => {
                if req.content_length().is_some_and(|n| n > max_body as u64) {
                    out.respond(Response::text(413, "content too large\n"));
                    return (Exchange::Done, StepOutcome::default());
                }
                (
                    Exchange::Buffer {
                        req,
                        body: BytesMut::new(),
                    },
                    StepOutcome::default(),
                )
            }
            Err(p) => {
                Self::panicked(&*p, out);
                (Exchange::Done, StepOutcome { panicked: true })
            }
        }
    }

    fn panicked(p: &(dyn std::any::Any + Send), out: &mut Responder) {
        tracing::error!("service panicked: {}", panic_message(p));
        if out.head_sent() {
            out.abort();
        } else {
            out.respond(Response::text(500, "internal server error\n"));
        }
    }

    /// A piece of the body arrived.
    pub fn data(
        &mut self,
        service: &dyn Service,
        chunk: Bytes,
        max_body: usize,
        out: &mut Responder,
    ) -> StepOutcome {
        let _ = service;
        match self {
            Exchange::Buffer { body, .. } => {
                if body.len() + chunk.len() > max_body {
                    out.respond(Response::text(413, "content too large\n"));
                    *self = Exchange::Done;
                } else {
                    body.extend_from_slice(&chunk);
                }
                StepOutcome::default()
            }
            Exchange::Stream(s) => match catch_unwind(AssertUnwindSafe(|| s.on_data(chunk, out))) {
                Ok(()) => StepOutcome::default(),
                Err(p) => {
                    Self::panicked(&*p, out);
                    *self = Exchange::Done;
                    StepOutcome { panicked: true }
                }
            },
            Exchange::Done => StepOutcome::default(),
        }
    }

    /// A request without a body: head and end at once, with as few moves of the head as
    /// possible (the inline fast path for GET and friends).
    pub fn run_bodyless(service: &dyn Service, req: Request, out: &mut Responder) -> StepOutcome {
        let r = catch_unwind(AssertUnwindSafe(|| match service.stream(&req, out) {
            Some(mut s) => s.on_end(out),
            None => out.respond(service.call(req)),
        }));
        Self::finish(r, out)
    }

    /// [`run_bodyless`](Self::run_bodyless), but a whole [`Response`] from
    /// [`Service::call`] comes back as it is instead of through `out` (the common case, with
    /// nothing to collect: the caller sends it). `None`: the answer, if any, is in `out`.
    pub fn answer_bodyless(
        service: &dyn Service,
        req: Request,
        out: &mut Responder,
    ) -> (Option<Response>, StepOutcome) {
        Self::answer_bodyless_in(service, &mut Some(req), out)
    }

    /// [`answer_bodyless`](Self::answer_bodyless) taking the request from `req`, where the
    /// caller built it (one move of the whole request less).
    pub(crate) fn answer_bodyless_in(
        service: &dyn Service,
        req: &mut Option<Request>,
        out: &mut Responder,
    ) -> (Option<Response>, StepOutcome) {
        // The closure borrows the request and the answer's slot rather than moving them
        // through `catch_unwind` (each move copies the whole request or response).
        let mut whole = None;
        let r = catch_unwind(AssertUnwindSafe(|| {
            let Some(head) = req.as_ref() else { return };
            match service.stream(head, out) {
                Some(mut s) => s.on_end(out),
                None => {
                    // Taken right into the call's argument (no copy in between).
                    if let Some(w) = req.take().map(|req| service.call(req)) {
                        whole = Some(w);
                    }
                }
            }
        }));
        match whole {
            // (A `stream` that answered through `out` yet returned `None` keeps its answer.)
            Some(w) if out.head_sent() => {
                out.respond(w);
                (None, Self::finish(r, out))
            }
            Some(w) => (Some(w), StepOutcome::default()),
            None => (None, Self::finish(r, out)),
        }
    }

    fn finish(r: std::thread::Result<()>, out: &mut Responder) -> StepOutcome {
        match r {
            Ok(()) => {
                if !out.is_finished() {
                    // A stream that forgot to finish: end what it started.
                    if out.head_sent() {
                        out.data(Bytes::new(), true);
                    } else {
                        out.respond(Response::text(500, "no response\n"));
                    }
                }
                StepOutcome::default()
            }
            Err(p) => {
                Self::panicked(&*p, out);
                StepOutcome { panicked: true }
            }
        }
    }

    /// The body is complete: answer.
    pub fn end(self, service: &dyn Service, out: &mut Responder) -> StepOutcome {
        let r = match self {
            Exchange::Buffer { req, body } => {
                let req = Request {
                    body: body.freeze(),
                    ..req
                };
                catch_unwind(AssertUnwindSafe(|| out.respond(service.call(req))))
            }
            Exchange::Stream(mut s) => catch_unwind(AssertUnwindSafe(|| {
                s.on_end(out);
            })),
            Exchange::Done => return StepOutcome::default(),
        };
        Self::finish(r, out)
    }

    /// The request failed before its end.
    pub fn abort(self) {
        if let Exchange::Stream(mut s) = self {
            let _ = catch_unwind(AssertUnwindSafe(|| s.on_abort()));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use bytes::BytesMut;
    use ferry_http1::{server::Event, ServerConfig, ServerConnection};
    use ferry_proto::{Connection, Instant};
    use std::sync::Arc;

    pub(crate) fn parse_head(raw: &[u8]) -> ferry_http1::Request {
        let mut c = ServerConnection::new(Arc::new(ServerConfig::default()), Instant::ZERO);
        let mut input = BytesMut::from(raw);
        c.handle_input(Instant::ZERO, &mut input).unwrap();
        match c.poll_event() {
            Some(Event::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    pub(crate) fn head(raw: &[u8]) -> Request {
        Request::new(
            parse_head(raw),
            Bytes::new(),
            ConnInfo {
                worker: 0,
                token: 0,
                peer: None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::parse_head;
    use super::*;

    struct Panicky;
    impl Service for Panicky {
        fn call(&self, req: Request) -> Response {
            if req.path() == "/boom" {
                panic!("boom");
            }
            Response::text(200, req.into_body())
        }
    }

    fn info() -> ConnInfo {
        ConnInfo {
            worker: 0,
            token: 0,
            peer: None,
        }
    }

    #[test]
    fn buffered_call_gets_the_whole_body() {
        let head = parse_head(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\n");
        let mut out = Responder::new();
        let (mut ex, _) = Exchange::start(
            &Panicky,
            Request::new(head, Bytes::new(), info()),
            100,
            &mut out,
        );
        ex.data(&Panicky, Bytes::from_static(b"ab"), 100, &mut out);
        ex.data(&Panicky, Bytes::from_static(b"cd"), 100, &mut out);
        assert!(out.take().is_empty());
        ex.end(&Panicky, &mut out);
        match &out.take()[..] {
            [Part::Head {
                status: 200,
                body: HeadBody::Full(b),
                ..
            }] => assert_eq!(&b[..], b"abcd"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn panic_is_caught_and_answered_500() {
        let head = parse_head(b"GET /boom HTTP/1.1\r\nhost: a\r\n\r\n");
        let mut out = Responder::new();
        let (ex, _) = Exchange::start(
            &Panicky,
            Request::new(head, Bytes::new(), info()),
            100,
            &mut out,
        );
        let o = ex.end(&Panicky, &mut out);
        assert!(o.panicked);
        assert!(matches!(&out.take()[..], [Part::Head { status: 500, .. }]));
    }

    #[test]
    fn answer_bodyless_hands_back_whole_responses_and_catches_panics() {
        let req = |raw: &[u8]| Request::new(parse_head(raw), Bytes::new(), info());
        let mut out = Responder::new();
        let (whole, o) = Exchange::answer_bodyless(
            &Panicky,
            req(b"GET /a HTTP/1.1\r\nhost: a\r\n\r\n"),
            &mut out,
        );
        assert!(!o.panicked);
        assert_eq!(whole.map(|r| r.status), Some(200));
        assert!(out.take().is_empty());
        let (whole, o) = Exchange::answer_bodyless(
            &Panicky,
            req(b"GET /boom HTTP/1.1\r\nhost: a\r\n\r\n"),
            &mut out,
        );
        assert!(o.panicked && whole.is_none());
        assert!(matches!(&out.take()[..], [Part::Head { status: 500, .. }]));

        // A streaming service answers through the responder.
        struct Streams;
        struct Ends;
        impl BodyStream for Ends {
            fn on_data(&mut self, _: Bytes, _: &mut Responder) {}
            fn on_end(&mut self, out: &mut Responder) {
                out.respond(Response::text(201, "made\n"));
            }
        }
        impl Service for Streams {
            fn call(&self, _: Request) -> Response {
                Response::new(500)
            }
            fn stream(&self, _: &Request, _: &mut Responder) -> Option<Box<dyn BodyStream>> {
                Some(Box::new(Ends))
            }
        }
        let mut out = Responder::new();
        let (whole, _) = Exchange::answer_bodyless(
            &Streams,
            req(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
            &mut out,
        );
        assert!(whole.is_none());
        assert!(matches!(&out.take()[..], [Part::Head { status: 201, .. }]));
    }

    #[test]
    fn oversized_buffered_body_gets_413() {
        let head = parse_head(b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n");
        let mut out = Responder::new();
        let (mut ex, _) = Exchange::start(
            &Panicky,
            Request::new(head, Bytes::new(), info()),
            3,
            &mut out,
        );
        ex.data(&Panicky, Bytes::from_static(b"abcd"), 3, &mut out);
        assert!(matches!(&out.take()[..], [Part::Head { status: 413, .. }]));
        ex.end(&Panicky, &mut out);
        assert!(out.take().is_empty());
    }
}
