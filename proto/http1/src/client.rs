//! The client side of an HTTP/1.1 connection.
//!
//! Requests are written with [`ClientConnection::send_request`] (then
//! [`send_data`](ClientConnection::send_data) / [`send_trailers`](ClientConnection::send_trailers)
//! for streamed bodies); responses are parsed from the caller's buffer and reported as
//! [`Event`]s. Several requests may be pipelined (up to
//! [`ClientConfig::max_pipelined`]); responses are matched to them strictly in order
//! (RFC 9112 §9.3.2).
//!
//! Request bodies go out one after another: a new request can only start once the previous
//! request's body is complete, since both share one byte stream.
//!
//! # Polling order
//!
//! As for every [`Connection`]: after each read, timer expiry or command, call `handle_input`
//! (or `handle_eof` / `handle_timeout`), drain [`poll_event`](Connection::poll_event), drain
//! [`poll_transmit`](Connection::poll_transmit) and write the chunks in order, re-arm the timer
//! from [`poll_timeout`](Connection::poll_timeout), and close the socket once
//! [`is_closed`](Connection::is_closed) is true.
//!
//! # Caller duties
//!
//! - HTTP/1.1 requires a `Host` field in every request (RFC 9112 §3.2): the caller MUST pass
//!   it in `fields`; the connection does not add one.
//! - The caller MUST NOT pass `Content-Length` or `Transfer-Encoding`; the connection derives
//!   them from the [`Body`].
//! - A pool SHOULD check [`is_reusable`](ClientConnection::is_reusable) before handing the
//!   connection out, and [`can_send_request`](ClientConnection::can_send_request) before
//!   pipelining another request on it.
//! - After [`Event::Upgraded`] the bytes left in the caller's input buffer, and everything read
//!   afterwards, belong to the new protocol.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use bytes::BytesMut;
//! use ferry_http1::{client::Event, Body, ClientConfig, ClientConnection, Method};
//! use ferry_proto::{Connection, Instant};
//!
//! let mut conn = ClientConnection::new(Arc::new(ClientConfig::default()), Instant::ZERO);
//! let id = conn
//!     .send_request(Instant::ZERO, Method::Get, "/hello", &[("Host", b"example.com")], Body::Empty)
//!     .unwrap();
//! let mut wire = Vec::new();
//! while let Some(chunk) = conn.poll_transmit() {
//!     wire.extend_from_slice(&chunk); // a driver writes this to the socket
//! }
//! assert_eq!(wire, b"GET /hello HTTP/1.1\r\nHost: example.com\r\n\r\n");
//!
//! // What the socket returned:
//! let mut input = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..]);
//! conn.handle_input(Instant::ZERO, &mut input).unwrap();
//! let mut body = Vec::new();
//! while let Some(ev) = conn.poll_event() {
//!     match ev {
//!         Event::Response(r) => assert_eq!((r.id(), r.status()), (id, 200)),
//!         Event::Data { data, .. } => body.extend_from_slice(&data),
//!         Event::End { id: done } => assert_eq!(done, id),
//!         other => panic!("unexpected {other:?}"),
//!     }
//! }
//! assert_eq!(body, b"hello");
//! assert!(conn.is_reusable());
//! ```

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_proto::{Connection, Instant, Lifecycle, ProtocolInfo, State};

use crate::chunked::{encode_chunk_head, ChunkedDecoder, Decoded};
use crate::encode::{
    copy_parsed_fields, is_token, write_content_length, write_extras, write_fields, AppHeaders,
    Body, Extra, COPY_BODY_MAX, OUT_BUF_CAPACITY,
};
use crate::head::{
    parse_response, BodyKind, Headers, IndexBuf, Method, Request, RequestId, Response,
};
use crate::server::HTTP1_INFO;
use crate::{ClientConfig, Error, HeadError, SendError};

/// What a [`ClientConnection`] tells the application.
///
/// For each request, in request order: any number of `Informational`, then `Response`, then
/// either `Data`* `Trailers`? `End`, or `Upgraded`. An `Error` ends the connection: it names
/// the oldest request still waiting (if any), and every other outstanding request fails with it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// An interim 1xx response (100 Continue, 103 Early Hints, …; not 101). The final response
    /// for the same request follows.
    Informational(Response),
    /// The final response head. Its body follows as `Data` events, then `End` (always, even
    /// without a body), unless `Upgraded` follows instead.
    Response(Response),
    /// A piece of the response body (a zero-copy slice of the input).
    Data {
        /// The request this answers.
        id: RequestId,
        /// The bytes.
        data: Bytes,
    },
    /// The trailer section of a chunked response body.
    Trailers {
        /// The request this answers.
        id: RequestId,
        /// The fields.
        trailers: Headers,
    },
    /// The response is complete.
    End {
        /// The request that was answered.
        id: RequestId,
    },
    /// The server switched protocols (101 to a request carrying `Upgrade`, or 2xx to CONNECT).
    /// The bytes left in the caller's input buffer, and everything after them, belong to the
    /// new protocol; this connection parses nothing more.
    Upgraded {
        /// The request that was upgraded.
        id: RequestId,
    },
    /// The connection failed (bad input, limit exceeded, timeout, EOF mid-response). Reported
    /// once; `handle_input` returns the same error from then on.
    Error {
        /// The oldest request still waiting for (the rest of) its response, if any.
        id: Option<RequestId>,
        /// What went wrong.
        error: Error,
    },
}

/// A request sent (head at least) whose final response is not complete yet.
#[derive(Clone, Copy, Debug)]
struct Pending {
    id: u64,
    /// HEAD: the response has no body whatever its framing fields say.
    head: bool,
    /// CONNECT: a 2xx response turns the connection into a tunnel.
    connect: bool,
    /// The request carried `Upgrade`: a 101 switches protocols.
    upgrade: bool,
    /// When the request (body included) was completely queued; `None` while it streams.
    sent_at: Option<Instant>,
}

/// The request body being streamed by `send_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendBody {
    Length { remaining: u64 },
    Chunked,
}

#[derive(Clone, Copy, Debug)]
struct Sending {
    id: u64,
    body: SendBody,
}

#[derive(Debug)]
enum Read {
    /// Waiting for a response head (or idle).
    Head,
    Length {
        id: u64,
        remaining: u64,
    },
    Chunked {
        id: u64,
        dec: ChunkedDecoder,
        seen: u64,
    },
    UntilClose {
        id: u64,
        seen: u64,
    },
    /// Protocol switched: the rest of the input belongs to the new protocol.
    Upgraded,
    /// No more responses will be read (closed, failed).
    Stopped,
}

/// The client side of one HTTP/1.1 connection (sans-IO).
///
/// Polling order: see [`Connection`] and the [module docs](self). After `handle_input`
/// returns an error, the connection is finished: drain the events (the `Error` event is among
/// them) and transmits, then [`is_closed`](Connection::is_closed) is true.
///
/// Connection reuse (RFC 9112 §9.3): no new request may be sent after a response without
/// keep-alive (`Connection: close`, HTTP/1.0 without `keep-alive`, a close-delimited body), a
/// request of ours carrying `Connection: close`, [`close`](Self::close), EOF, an error or an
/// upgrade; nor while an `Upgrade`/CONNECT request waits for its answer, while a request body is
/// still being streamed, or while [`ClientConfig::max_pipelined`] requests are outstanding.
#[derive(Debug)]
pub struct ClientConnection {
    config: Arc<ClientConfig>,
    read: Read,
    pending: VecDeque<Pending>,
    sending: Option<Sending>,
    next_id: u64,
    events: VecDeque<Event>,
    /// Where response field indexes are built (reused, like the input buffer).
    index: IndexBuf,
    out: VecDeque<Bytes>,
    wbuf: BytesMut,
    error: Option<Error>,
    /// No new requests (graceful close, `Connection: close` either way, EOF, error).
    closing: bool,
    /// The response being read closes the connection behind it.
    resp_close: bool,
    /// When the oldest outstanding request last started waiting for a head (previous response
    /// complete, or an interim response seen).
    head_wait_since: Instant,
    now: Instant,
    lifecycle: Lifecycle,
    requests: u64,
}

/// Whether `t` is acceptable as a request-target on the wire: non-empty, no whitespace, no
/// control bytes (which would split or smuggle the request line).
fn valid_target(t: &[u8]) -> bool {
    !t.is_empty() && t.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// Methods whose requests carry no `Content-Length: 0` when sent without a body (RFC 9110
/// §8.6: a user agent SHOULD NOT send it when the method defines no meaning for content).
fn empty_body_needs_no_length(m: Method) -> bool {
    matches!(
        m,
        Method::Get
            | Method::Head
            | Method::Delete
            | Method::Options
            | Method::Trace
            | Method::Connect
    )
}

impl ClientConnection {
    /// Whether events wait for `poll_event` (embedders that skip polling when nothing was
    /// read ask this first).
    #[inline]
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// A connection established at `now` (the transport is connected; TLS, if any, is the
    /// driver's business).
    pub fn new(config: Arc<ClientConfig>, now: Instant) -> Self {
        ClientConnection {
            config,
            read: Read::Head,
            pending: VecDeque::new(),
            sending: None,
            next_id: 0,
            events: VecDeque::new(),
            index: IndexBuf::new(),
            out: VecDeque::new(),
            // Sized once: later buffers inherit this as their original capacity, so a response
            // never regrows from a few bytes while earlier output is still being written.
            // Allocated on the first request, so an idle connection costs no output buffer.
            wbuf: BytesMut::new(),
            error: None,
            closing: false,
            resp_close: false,
            head_wait_since: now,
            now,
            lifecycle: Lifecycle::new(State::Ready),
            requests: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The lifecycle, to attach observers or read counters.
    pub fn lifecycle_mut(&mut self) -> &mut Lifecycle {
        &mut self.lifecycle
    }

    /// The stored fatal error, if the connection failed.
    pub fn error(&self) -> Option<Error> {
        self.error
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Requests sent whose final response is not complete yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether the server switched protocols (see [`Event::Upgraded`]).
    pub fn is_upgraded(&self) -> bool {
        matches!(self.read, Read::Upgraded)
    }

    /// Whether [`send_request`](Self::send_request) would accept a request now (see the
    /// reuse rules on [`ClientConnection`]).
    pub fn can_send_request(&self) -> bool {
        self.check_can_send().is_ok()
    }

    /// Whether the connection is idle and may carry another request: nothing in flight, no
    /// body being sent, keep-alive still allowed. What a pool checks before checkout.
    pub fn is_reusable(&self) -> bool {
        self.can_send_request() && self.pending.is_empty() && matches!(self.read, Read::Head)
    }

    fn check_can_send(&self) -> Result<(), SendError> {
        if self.error.is_some()
            || self.closing
            || matches!(self.read, Read::Upgraded | Read::Stopped)
        {
            return Err(SendError::Closed);
        }
        if self.sending.is_some()
            || self.pending.len() >= self.config.max_pipelined
            || self.pending.iter().any(|p| p.upgrade || p.connect)
        {
            return Err(SendError::InvalidState);
        }
        Ok(())
    }

    // ----- commands ------------------------------------------------------------------------

    /// Send a request: `METHOD target HTTP/1.1`, `fields` in order, then the framing derived
    /// from `body`. Returns the id its response events will carry.
    ///
    /// `now` is when the request is handed over: a request without a streamed body is
    /// complete then, and its [`response_timeout`](ClientConfig::response_timeout) counts
    /// from it (an earlier `now` than one already seen counts as the latest seen).
    ///
    /// - `fields` MUST include `Host` (HTTP/1.1 requires it; not checked) and MUST NOT include
    ///   `Content-Length` / `Transfer-Encoding` ([`SendError::FramingHeader`]).
    /// - [`Body::Empty`] sends no `Content-Length` for GET, HEAD, DELETE, OPTIONS, TRACE and
    ///   CONNECT, and `content-length: 0` for every other method. [`Body::Full`] sends
    ///   `content-length` and the bytes (small bodies are copied next to the head, large ones
    ///   queued as they are, zero-copy). [`Body::Length`] and [`Body::Chunked`] are followed by
    ///   [`send_data`](Self::send_data) / [`send_trailers`](Self::send_trailers).
    /// - `Connection: close` in `fields` makes this the last request on the connection.
    /// - A request carrying `Upgrade`, or a CONNECT, must be answered before another request
    ///   can be sent.
    ///
    /// Errors leave the connection unchanged: [`SendError::Closed`] when no more requests may be
    /// sent, [`SendError::InvalidState`] while a request body is still streaming, the
    /// pipelining depth is reached or an upgrade is pending, [`SendError::InvalidHeader`] for a
    /// bad field, or for [`Method::Other`] (use
    /// [`send_request_with_method_str`](Self::send_request_with_method_str)).
    pub fn send_request(
        &mut self,
        now: Instant,
        method: Method,
        target: &str,
        fields: &[(&str, &[u8])],
        body: Body,
    ) -> Result<RequestId, SendError> {
        let m = method.as_str().ok_or(SendError::InvalidHeader)?;
        self.send_request_with_method_str(now, m, target, fields, body)
    }

    /// [`send_request`](Self::send_request) with the method given as a token (extension
    /// methods such as `PURGE`). A method that is not a token, or a target that is empty or
    /// contains whitespace or control bytes, is refused with [`SendError::InvalidHeader`].
    pub fn send_request_with_method_str(
        &mut self,
        now: Instant,
        method: &str,
        target: &str,
        fields: &[(&str, &[u8])],
        body: Body,
    ) -> Result<RequestId, SendError> {
        self.advance(now);
        self.check_can_send()?;
        if !is_token(method.as_bytes()) || !valid_target(target.as_bytes()) {
            return Err(SendError::InvalidHeader);
        }
        let m = Method::from_token(method);
        let mark = self.start_head(method.as_bytes(), target.as_bytes());
        let facts = match write_fields(&mut self.wbuf, fields) {
            Ok(f) => f,
            Err(e) => {
                self.wbuf.truncate(mark);
                return Err(e);
            }
        };
        let upgrade = fields
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("upgrade"));
        Ok(self.finish_head(m, facts.close(), upgrade, body))
    }

    /// Forward `req` (a request parsed by a server connection, or built with
    /// [`Request::from_parts`]) upstream: its method, target and the fields for which
    /// `keep(name)` holds go out as they were received, followed by `extra`, in one pass and
    /// without validating the forwarded part again (a [`Request`] only holds fields that
    /// passed the parser's checks). `extra` is validated like
    /// [`send_request`](Self::send_request)'s fields.
    ///
    /// `keep` MUST refuse `Content-Length` and `Transfer-Encoding` (the connection derives
    /// framing from `body`; forwarded anyway, they are refused with
    /// [`SendError::FramingHeader`]) and whatever hop-by-hop fields the caller does not want
    /// to forward. Everything else is as for [`send_request`](Self::send_request): a forwarded
    /// or extra `Connection: close` makes this the last request, a field `Upgrade` makes it
    /// an upgrade request.
    pub fn send_forwarded_request(
        &mut self,
        now: Instant,
        req: &Request,
        keep: impl FnMut(&[u8]) -> bool,
        extra: &[(&str, &[u8])],
        body: Body,
    ) -> Result<RequestId, SendError> {
        self.forward_request(now, req, keep, |dst| write_fields(dst, extra), body)
    }

    /// [`send_forwarded_request`](Self::send_forwarded_request) with the extra fields as
    /// [`Extra`] pieces: [`FieldLines`](crate::FieldLines) made once (a proxy's `Via`) are
    /// copied without a second check. The bytes sent are those of
    /// `send_forwarded_request` with the same fields in the same order.
    pub fn send_forwarded_request_extra(
        &mut self,
        now: Instant,
        req: &Request,
        keep: impl FnMut(&[u8]) -> bool,
        extra: &[Extra<'_>],
        body: Body,
    ) -> Result<RequestId, SendError> {
        self.forward_request(now, req, keep, |dst| write_extras(dst, extra), body)
    }

    #[inline(always)]
    fn forward_request(
        &mut self,
        now: Instant,
        req: &Request,
        keep: impl FnMut(&[u8]) -> bool,
        put_extra: impl FnOnce(&mut BytesMut) -> Result<AppHeaders, SendError>,
        body: Body,
    ) -> Result<RequestId, SendError> {
        self.advance(now);
        self.check_can_send()?;
        let mark = match req.http11_request_line() {
            Some(line) => self.start_head_with_line(line),
            None => self.start_head(req.method_bytes(), req.target_bytes()),
        };
        let kept = match copy_parsed_fields(&mut self.wbuf, req.headers(), keep) {
            Ok(f) => f,
            Err(e) => {
                self.wbuf.truncate(mark);
                return Err(e);
            }
        };
        let facts = match put_extra(&mut self.wbuf) {
            Ok(f) => f,
            Err(e) => {
                self.wbuf.truncate(mark);
                return Err(e);
            }
        };
        let (close, upgrade) = (
            kept.close() | facts.close(),
            kept.upgrade() | facts.upgrade(),
        );
        Ok(self.finish_head(req.method(), close, upgrade, body))
    }

    /// Write the request line; returns where it starts (to truncate back to on error).
    fn start_head(&mut self, method: &[u8], target: &[u8]) -> usize {
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve(OUT_BUF_CAPACITY);
        }
        let mark = self.wbuf.len();
        let dst = &mut self.wbuf;
        // request-line = method SP request-target SP HTTP-version
        dst.reserve(method.len() + target.len() + 11);
        dst.put_slice(method);
        dst.put_u8(b' ');
        dst.put_slice(target);
        dst.put_slice(b" HTTP/1.1\r\n");
        mark
    }

    /// Write `line`, a complete request line; returns where it starts.
    #[inline]
    fn start_head_with_line(&mut self, line: &[u8]) -> usize {
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve(OUT_BUF_CAPACITY);
        }
        let mark = self.wbuf.len();
        self.wbuf.extend_from_slice(line);
        mark
    }

    /// The framing fields, the end of the head and an inline body; the request is pending
    /// from now on.
    #[inline]
    fn finish_head(&mut self, m: Method, close: bool, upgrade: bool, body: Body) -> RequestId {
        let dst = &mut self.wbuf;
        let mut inline_body = None;
        let streaming = match body {
            Body::Empty => {
                if !empty_body_needs_no_length(m) {
                    write_content_length(dst, 0);
                }
                None
            }
            Body::Full(b) => {
                write_content_length(dst, b.len() as u64);
                inline_body = Some(b);
                None
            }
            Body::Length(n) => {
                write_content_length(dst, n);
                (n > 0).then_some(SendBody::Length { remaining: n })
            }
            Body::Chunked => {
                dst.put_slice(b"transfer-encoding: chunked\r\n");
                Some(SendBody::Chunked)
            }
        };
        dst.put_slice(b"\r\n");
        if let Some(b) = inline_body {
            self.push_bytes(b);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.requests += 1;
        self.pending.push_back(Pending {
            id,
            head: m == Method::Head,
            connect: m == Method::Connect,
            upgrade,
            sent_at: streaming.is_none().then_some(self.now),
        });
        self.sending = streaming.map(|body| Sending { id, body });
        if close {
            self.closing = true;
            let _ = self.lifecycle.transition(State::Closing);
        }
        RequestId(id)
    }

    fn sending_for(&self, id: RequestId) -> Result<SendBody, SendError> {
        if self.error.is_some() {
            return Err(SendError::Closed);
        }
        match self.sending {
            Some(s) if s.id == id.0 => Ok(s.body),
            _ if matches!(self.read, Read::Stopped | Read::Upgraded) => Err(SendError::Closed),
            _ if id.0 < self.next_id => Err(SendError::InvalidState),
            _ => Err(SendError::UnknownId),
        }
    }

    /// Send body bytes of request `id` (sent with [`Body::Length`] or [`Body::Chunked`]);
    /// `end` finishes the body. A `Length` body ends by itself once all its bytes are sent, and
    /// [`SendError::LengthMismatch`] refuses more bytes than declared or fewer at `end`.
    ///
    /// The response may arrive before the body is complete (an error, or a final answer to
    /// `Expect: 100-continue`); sending the rest stays allowed.
    pub fn send_data(
        &mut self,
        now: Instant,
        id: RequestId,
        data: Bytes,
        end: bool,
    ) -> Result<(), SendError> {
        self.advance(now);
        match self.sending_for(id)? {
            SendBody::Length { remaining } => {
                let n = data.len() as u64;
                if n > remaining || (end && n != remaining) {
                    return Err(SendError::LengthMismatch);
                }
                if !data.is_empty() {
                    self.push_bytes(data);
                }
                if n == remaining {
                    self.finish_sending();
                } else if let Some(s) = self.sending.as_mut() {
                    s.body = SendBody::Length {
                        remaining: remaining - n,
                    };
                }
            }
            SendBody::Chunked => {
                if !data.is_empty() {
                    encode_chunk_head(&mut self.wbuf, data.len());
                    self.push_bytes(data);
                    self.wbuf.put_slice(b"\r\n");
                }
                if end {
                    self.wbuf.put_slice(b"0\r\n\r\n");
                    self.finish_sending();
                }
            }
        }
        Ok(())
    }

    /// End the chunked body of request `id` with a trailer section (RFC 9112 §7.1.2).
    pub fn send_trailers(
        &mut self,
        now: Instant,
        id: RequestId,
        fields: &[(&str, &[u8])],
    ) -> Result<(), SendError> {
        self.advance(now);
        if self.sending_for(id)? != SendBody::Chunked {
            return Err(SendError::TrailersNotAllowed);
        }
        let mark = self.wbuf.len();
        self.wbuf.put_slice(b"0\r\n");
        if let Err(e) = write_fields(&mut self.wbuf, fields) {
            self.wbuf.truncate(mark);
            return Err(e);
        }
        self.wbuf.put_slice(b"\r\n");
        self.finish_sending();
        Ok(())
    }

    /// Graceful close: send no more requests, read the responses still owed, then close.
    pub fn close(&mut self) {
        if self.closing {
            return;
        }
        self.closing = true;
        let _ = self.lifecycle.transition(State::Closing);
        self.maybe_stop();
        self.update_lifecycle();
    }

    /// Time moves only forward: an earlier `now` than one already seen is ignored.
    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    fn push_bytes(&mut self, data: Bytes) {
        if data.len() > COPY_BODY_MAX {
            if !self.wbuf.is_empty() {
                self.out.push_back(self.wbuf.split().freeze());
            }
            self.out.push_back(data);
        } else {
            self.wbuf.extend_from_slice(&data);
        }
    }

    fn finish_sending(&mut self) {
        let Some(s) = self.sending.take() else { return };
        let now = self.now;
        if let Some(p) = self.pending.iter_mut().find(|p| p.id == s.id) {
            p.sent_at = Some(now);
        }
        self.maybe_stop();
    }

    /// Once closing and nothing is owed, stop reading.
    fn maybe_stop(&mut self) {
        if self.closing && self.pending.is_empty() && matches!(self.read, Read::Head) {
            self.read = Read::Stopped;
            // A body still streaming after its response ended is abandoned.
            self.sending = None;
        }
    }

    /// The output buffer's bytes, as one piece (the buffer keeps its spare room).
    #[inline(never)]
    fn take_wbuf(&mut self) -> Bytes {
        self.wbuf.split().freeze()
    }

    #[inline]
    fn update_lifecycle(&mut self) {
        if self.is_closed() {
            let to = match self.error {
                Some(e) if e != Error::UnexpectedEof => State::Error,
                _ => State::Closed,
            };
            let _ = self.lifecycle.transition(to);
        }
    }

    // ----- input ---------------------------------------------------------------------------

    fn fail(&mut self, error: Error, id: Option<u64>) -> Error {
        self.error = Some(error);
        self.read = Read::Stopped;
        self.closing = true;
        self.resp_close = false;
        self.sending = None;
        self.pending.clear();
        let _ = self.lifecycle.transition(State::Closing);
        self.events.push_back(Event::Error {
            id: id.map(RequestId),
            error,
        });
        self.update_lifecycle();
        error
    }

    /// Parse one response head. `Ok(false)`: nothing more to do with this input now.
    fn read_head(&mut self, input: &mut BytesMut) -> Result<bool, (Error, Option<u64>)> {
        let Some(&front) = self.pending.front() else {
            // Nothing outstanding. Tolerate stray empty lines (some servers add CRLF after a
            // body); anything else is a response nobody asked for.
            let skip = input
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            input.advance(skip);
            return if input.is_empty() {
                Ok(false)
            } else {
                Err((Error::UnsolicitedResponse, None))
            };
        };
        if input.is_empty() {
            return Ok(false);
        }
        let cfg = &*self.config;
        let id = front.id;
        let parsed = match parse_response(
            input,
            cfg.max_headers,
            front.head,
            front.connect,
            &mut self.index,
        ) {
            Ok(Some(p)) => p,
            Ok(None) => {
                if input.len() > cfg.max_head_bytes {
                    return Err((Error::HeadTooLarge, Some(id)));
                }
                return Ok(false);
            }
            Err(e) => return Err((head_error(cfg, input, front, e), Some(id))),
        };
        if parsed.len > cfg.max_head_bytes {
            return Err((Error::HeadTooLarge, Some(id)));
        }
        let status = parsed.status;
        // status-code = 3DIGIT, and RFC 9110 §15 defines 100..=599 (we accept up to 999).
        if status < 100 || (status == 101 && !front.upgrade) {
            return Err((Error::InvalidHead(HeadError::Status), Some(id)));
        }
        let body = parsed.body;
        let keep_alive = parsed.keep_alive;
        let switching = status == 101 || (front.connect && (200..300).contains(&status));
        if let BodyKind::Length(n) = body {
            if n > cfg.max_body && !switching {
                return Err((Error::BodyTooLarge, Some(id)));
            }
        }
        let head = input.split_to(parsed.len).freeze();
        let resp = Response::build(RequestId(id), head, parsed);
        if switching {
            self.events.push_back(Event::Response(resp));
            self.events.push_back(Event::Upgraded { id: RequestId(id) });
            self.pending.clear();
            self.sending = self.sending.filter(|s| s.id == id);
            self.read = Read::Upgraded;
            self.closing = true;
            let _ = self.lifecycle.transition(State::Closing);
            return Ok(false);
        }
        if (100..200).contains(&status) {
            self.events.push_back(Event::Informational(resp));
            self.head_wait_since = self.now;
            return Ok(true);
        }
        self.events.push_back(Event::Response(resp));
        if !keep_alive {
            self.resp_close = true;
            self.closing = true;
            let _ = self.lifecycle.transition(State::Closing);
        }
        self.read = match body {
            // Complete: nothing more to read ends the call here (as the next turn would).
            BodyKind::Empty => return self.end_response(id).map(|()| !input.is_empty()),
            BodyKind::Length(remaining) => Read::Length { id, remaining },
            BodyKind::Chunked => Read::Chunked {
                id,
                dec: ChunkedDecoder::new(cfg.max_head_bytes, cfg.max_headers),
                seen: 0,
            },
            BodyKind::UntilClose => Read::UntilClose { id, seen: 0 },
        };
        Ok(true)
    }

    /// The response at the front is complete.
    fn end_response(&mut self, id: u64) -> Result<(), (Error, Option<u64>)> {
        self.events.push_back(Event::End { id: RequestId(id) });
        self.pending.pop_front();
        self.head_wait_since = self.now;
        self.read = Read::Head;
        if core::mem::take(&mut self.resp_close) {
            self.read = Read::Stopped;
            if let Some(next) = self.pending.front() {
                // The server closes after this response: requests pipelined behind it will
                // never be answered (retry them on a new connection).
                return Err((Error::UnexpectedEof, Some(next.id)));
            }
            self.sending = None;
        }
        self.maybe_stop();
        Ok(())
    }

    fn read_input(&mut self, input: &mut BytesMut) -> Result<(), (Error, Option<u64>)> {
        loop {
            match &mut self.read {
                Read::Head => {
                    // Nothing to read (the usual end of a call, after a whole response).
                    if input.is_empty() || !self.read_head(input)? {
                        return Ok(());
                    }
                }
                Read::Length { id, remaining } => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let id = *id;
                    let n = (*remaining).min(input.len() as u64) as usize;
                    *remaining -= n as u64;
                    let done = *remaining == 0;
                    let data = input.split_to(n).freeze();
                    self.events.push_back(Event::Data {
                        id: RequestId(id),
                        data,
                    });
                    if done {
                        self.end_response(id)?;
                        // The usual end of a call: a whole response was read.
                        if input.is_empty() {
                            return Ok(());
                        }
                    }
                }
                Read::Chunked { id, dec, seen } => {
                    let id = *id;
                    match dec.decode(input).map_err(|e| (e, Some(id)))? {
                        None => return Ok(()),
                        Some(Decoded::Data(data)) => {
                            *seen += data.len() as u64;
                            if *seen > self.config.max_body {
                                return Err((Error::BodyTooLarge, Some(id)));
                            }
                            self.events.push_back(Event::Data {
                                id: RequestId(id),
                                data,
                            });
                        }
                        Some(Decoded::Trailers(trailers)) => {
                            self.events.push_back(Event::Trailers {
                                id: RequestId(id),
                                trailers,
                            });
                        }
                        Some(Decoded::End) => self.end_response(id)?,
                    }
                }
                Read::UntilClose { id, seen } => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let id = *id;
                    *seen += input.len() as u64;
                    if *seen > self.config.max_body {
                        return Err((Error::BodyTooLarge, Some(id)));
                    }
                    let data = input.split().freeze();
                    self.events.push_back(Event::Data {
                        id: RequestId(id),
                        data,
                    });
                }
                Read::Upgraded | Read::Stopped => return Ok(()),
            }
        }
    }
}

/// The error to report for a response head that failed to parse: what a reader fed byte by
/// byte would have hit first (the size limit while the head was still incomplete), whatever
/// the segmentation. Out of line: only failing connections come here.
#[cold]
#[inline(never)]
fn head_error(cfg: &ClientConfig, input: &[u8], front: Pending, e: Error) -> Error {
    let h = cfg.max_head_bytes;
    if input.len() > h
        && matches!(
            parse_response(
                &input[..h + 1],
                cfg.max_headers,
                front.head,
                front.connect,
                &mut IndexBuf::new()
            ),
            Ok(None)
        )
    {
        Error::HeadTooLarge
    } else {
        e
    }
}

impl Connection for ClientConnection {
    type Event = Event;
    type Error = Error;

    fn info(&self) -> &'static ProtocolInfo {
        &HTTP1_INFO
    }

    /// Parse responses from `input`. Stops (leaving the rest in `input`) after an upgrade, and
    /// reads nothing once the connection is closed.
    fn handle_input(&mut self, now: Instant, input: &mut BytesMut) -> Result<(), Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if now > self.now {
            self.now = now;
        }
        self.index.recycle();
        match self.read_input(input) {
            Ok(()) => {
                self.update_lifecycle();
                Ok(())
            }
            Err((e, id)) => Err(self.fail(e, id)),
        }
    }

    /// The server closed its side: ends a close-delimited body; anywhere else with a request
    /// outstanding it is [`Error::UnexpectedEof`]; on an idle connection it is a clean close.
    fn handle_eof(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        match self.read {
            Read::Length { id, .. } | Read::Chunked { id, .. } => {
                self.fail(Error::UnexpectedEof, Some(id));
            }
            Read::UntilClose { id, .. } => {
                self.closing = true;
                let _ = self.lifecycle.transition(State::Closing);
                if let Err((e, id)) = self.end_response(id) {
                    self.fail(e, id);
                }
            }
            Read::Head => {
                if let Some(front) = self.pending.front() {
                    let id = front.id;
                    self.fail(Error::UnexpectedEof, Some(id));
                } else {
                    self.closing = true;
                    let _ = self.lifecycle.transition(State::Closing);
                    self.maybe_stop();
                }
            }
            Read::Upgraded | Read::Stopped => {}
        }
        self.update_lifecycle();
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queued pieces first, then the output buffer. Inlined: drivers poll until `None`, and
    /// the empty case is a few loads.
    #[inline]
    fn poll_transmit(&mut self) -> Option<Bytes> {
        if !self.out.is_empty() {
            return self.out.pop_front();
        }
        if !self.wbuf.is_empty() {
            return Some(self.take_wbuf());
        }
        self.update_lifecycle();
        None
    }

    /// The response deadline of the oldest request, while its head is awaited: from when the
    /// request was completely queued, or when the previous response ended (or an interim
    /// response arrived), whichever is later, plus [`ClientConfig::response_timeout`].
    fn poll_timeout(&self) -> Option<Instant> {
        let t = self.config.response_timeout?;
        if !matches!(self.read, Read::Head) {
            return None;
        }
        let sent = self.pending.front()?.sent_at?;
        Some(sent.max(self.head_wait_since) + t)
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        let Some(deadline) = self.poll_timeout() else {
            return;
        };
        if self.now < deadline {
            return;
        }
        let id = self.pending.front().map(|p| p.id);
        self.fail(Error::HeaderTimeout, id);
    }

    fn wants_read(&self) -> bool {
        !matches!(self.read, Read::Upgraded | Read::Stopped)
    }

    fn is_closed(&self) -> bool {
        matches!(self.read, Read::Stopped)
            && self.pending.is_empty()
            && self.sending.is_none()
            && self.out.is_empty()
            && self.wbuf.is_empty()
    }

    fn state(&self) -> State {
        self.lifecycle.state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{self, ServerConnection};
    use crate::ServerConfig;
    use alloc::string::{String, ToString};
    use alloc::vec;
    use alloc::vec::Vec;
    use core::time::Duration;
    use ferry_proto::testing::{for_each_split, Pair};
    use proptest::prelude::*;

    const HOST: (&str, &[u8]) = ("Host", b"example.com");

    fn client() -> ClientConnection {
        ClientConnection::new(Arc::new(ClientConfig::default()), Instant::ZERO)
    }

    fn client_with(f: impl FnOnce(&mut ClientConfig)) -> ClientConnection {
        let mut c = ClientConfig::default();
        f(&mut c);
        ClientConnection::new(Arc::new(c), Instant::ZERO)
    }

    fn server() -> ServerConnection {
        ServerConnection::new(Arc::new(ServerConfig::default()), Instant::ZERO)
    }

    fn wire(c: &mut ClientConnection) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(b) = c.poll_transmit() {
            v.extend_from_slice(&b);
        }
        v
    }

    fn wire_str(c: &mut ClientConnection) -> String {
        String::from_utf8(wire(c)).unwrap()
    }

    /// `n` GET requests in flight, their bytes already written.
    fn with_gets(n: usize) -> ClientConnection {
        let mut c = client();
        for i in 0..n {
            let t = alloc::format!("/{i}");
            c.send_request(Instant::ZERO, Method::Get, &t, &[HOST], Body::Empty)
                .unwrap();
        }
        let _ = wire(&mut c);
        c
    }

    /// Feed `bytes` in one call; returns what was left in the buffer.
    fn feed(c: &mut ClientConnection, bytes: &[u8]) -> Result<BytesMut, Error> {
        let mut b = BytesMut::from(bytes);
        c.handle_input(Instant::ZERO, &mut b).map(|()| b)
    }

    type Fields = Vec<(String, Vec<u8>)>;

    fn fields(h: &Headers) -> Fields {
        h.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect()
    }

    fn f(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// An owned, comparable view of an [`Event`].
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Ev {
        Info {
            id: u64,
            status: u16,
            headers: Fields,
        },
        Resp {
            id: u64,
            status: u16,
            headers: Fields,
        },
        Data {
            id: u64,
            data: Vec<u8>,
        },
        Trailers {
            id: u64,
            fields: Fields,
        },
        End {
            id: u64,
        },
        Upgraded {
            id: u64,
        },
        Error {
            id: Option<u64>,
            error: Error,
        },
    }

    fn to_ev(e: Event) -> Ev {
        match e {
            Event::Informational(r) => Ev::Info {
                id: r.id().get(),
                status: r.status(),
                headers: fields(r.headers()),
            },
            Event::Response(r) => Ev::Resp {
                id: r.id().get(),
                status: r.status(),
                headers: fields(r.headers()),
            },
            Event::Data { id, data } => Ev::Data {
                id: id.get(),
                data: data.to_vec(),
            },
            Event::Trailers { id, trailers } => Ev::Trailers {
                id: id.get(),
                fields: fields(&trailers),
            },
            Event::End { id } => Ev::End { id: id.get() },
            Event::Upgraded { id } => Ev::Upgraded { id: id.get() },
            Event::Error { id, error } => Ev::Error {
                id: id.map(RequestId::get),
                error,
            },
        }
    }

    /// Merge adjacent `Data` of one response (their split depends on how input arrived).
    fn normalize(evs: impl IntoIterator<Item = Ev>) -> Vec<Ev> {
        let mut out: Vec<Ev> = Vec::new();
        for e in evs {
            if let (
                Some(Ev::Data {
                    id: last,
                    data: acc,
                }),
                Ev::Data { id, data },
            ) = (out.last_mut(), &e)
            {
                if last == id {
                    acc.extend_from_slice(data);
                    continue;
                }
            }
            out.push(e);
        }
        out
    }

    fn evs(c: &mut ClientConnection) -> Vec<Ev> {
        normalize(core::iter::from_fn(|| c.poll_event()).map(to_ev))
    }

    fn resp(id: u64, status: u16, headers: &[(&str, &str)]) -> Ev {
        Ev::Resp {
            id,
            status,
            headers: f(headers),
        }
    }

    fn data(id: u64, d: &[u8]) -> Ev {
        Ev::Data {
            id,
            data: d.to_vec(),
        }
    }

    // ----- serialization -------------------------------------------------------------------

    #[test]
    fn serialize_get_byte_exact() {
        let mut c = client();
        let id = c
            .send_request(
                Instant::ZERO,
                Method::Get,
                "/index.html?q=1",
                &[HOST, ("Accept", b"*/*")],
                Body::Empty,
            )
            .unwrap();
        assert_eq!(id.get(), 0);
        assert_eq!(
            wire_str(&mut c),
            "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
        );
        assert_eq!((c.in_flight(), c.requests()), (1, 1));
        assert!(c.can_send_request());
        assert!(!c.is_reusable());
    }

    #[test]
    fn forwarded_request_extra_writes_what_the_field_list_writes() {
        use crate::encode::{Extra, FieldLines};
        use crate::head::Version;
        let fields: [(&[u8], &[u8]); 3] = [
            (b"Host", b"example.com"),
            (b"Accept", b"*/*"),
            (b"Connection", b"upgrade"),
        ];
        let req = Request::from_parts(
            RequestId(1),
            b"GET",
            b"/",
            Version::Http11,
            fields,
            BodyKind::Empty,
        )
        .unwrap();
        let fwd = FieldLines::new(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "http"),
        ])
        .unwrap();
        let via = FieldLines::new(&[("via", "1.1 ferry")]).unwrap();
        let up = FieldLines::new(&[("upgrade", "websocket")]).unwrap();
        let list: [(&str, &[u8]); 5] = [
            ("x-forwarded-for", b"10.0.0.1"),
            ("x-forwarded-proto", b"http"),
            ("traceparent", b"00-01-02-01"),
            ("via", b"1.1 ferry"),
            ("upgrade", b"websocket"),
        ];
        let pieces = [
            Extra::Lines(&fwd),
            Extra::Field("traceparent", b"00-01-02-01"),
            Extra::Lines(&via),
            Extra::Lines(&up),
        ];
        let (mut a, mut b) = (client(), client());
        a.send_forwarded_request(Instant::ZERO, &req, |_| true, &list, Body::Empty)
            .unwrap();
        b.send_forwarded_request_extra(Instant::ZERO, &req, |_| true, &pieces, Body::Empty)
            .unwrap();
        assert_eq!(wire(&mut a), wire(&mut b));
        // The facts of lines made before count: `Upgrade` makes it an upgrade request.
        assert_eq!(a.can_send_request(), b.can_send_request());
        // A bad field among the pieces: refused, nothing written.
        let bad = [Extra::Lines(&via), Extra::Field("x", b"a\r\nInjected: 1")];
        let mut c = client();
        assert_eq!(
            c.send_forwarded_request_extra(Instant::ZERO, &req, |_| true, &bad, Body::Empty)
                .unwrap_err(),
            SendError::InvalidHeader
        );
        assert!(c.poll_transmit().is_none());
        assert_eq!(c.in_flight(), 0);
        // Lines are checked when made.
        assert_eq!(
            FieldLines::new(&[("x", "a\r\nInjected: 1")]).unwrap_err(),
            SendError::InvalidHeader
        );
        assert_eq!(
            FieldLines::new(&[("Transfer-Encoding", "chunked")]).unwrap_err(),
            SendError::FramingHeader
        );
    }

    #[test]
    fn forwarded_request_copies_kept_fields_and_checks_extras() {
        use crate::head::Version;
        let fields: [(&[u8], &[u8]); 4] = [
            (b"Host", b"example.com"),
            (b"X-Drop", b"1"),
            (b"Accept", b"*/*"),
            (b"Connection", b"close"),
        ];
        let req = Request::from_parts(
            RequestId(7),
            b"PURGE",
            b"/a?b",
            Version::Http11,
            fields,
            BodyKind::Empty,
        )
        .unwrap();
        let mut c = client();
        // A bad extra field: refused, nothing written, the connection unchanged.
        let bad: [(&str, &[u8]); 1] = [("x", b"a\r\nInjected: 1")];
        assert_eq!(
            c.send_forwarded_request(Instant::ZERO, &req, |_| true, &bad, Body::Empty)
                .unwrap_err(),
            SendError::InvalidHeader
        );
        assert!(c.poll_transmit().is_none());
        assert_eq!(c.in_flight(), 0);
        let keep = |n: &[u8]| !n.eq_ignore_ascii_case(b"x-drop");
        let extra: [(&str, &[u8]); 1] = [("Via", b"1.1 p")];
        c.send_forwarded_request(Instant::ZERO, &req, keep, &extra, Body::Length(3))
            .unwrap();
        assert_eq!(
            wire_str(&mut c),
            "PURGE /a?b HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nConnection: close\r\n\
             Via: 1.1 p\r\ncontent-length: 3\r\n\r\n"
        );
        // The forwarded `Connection: close` makes it the last request.
        assert!(!c.can_send_request());
    }

    #[test]
    fn forwarded_request_line_is_always_http11() {
        use crate::head::Version;
        // Parsed heads: an HTTP/1.1 line goes out as it came, an HTTP/1.0 one is rewritten.
        for (input, line) in [
            (
                &b"GET /x?y HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                "GET /x?y HTTP/1.1\r\n",
            ),
            (b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n", "GET /x HTTP/1.1\r\n"),
            (
                b"\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
                "OPTIONS * HTTP/1.1\r\n",
            ),
        ] {
            let mut s = server();
            let mut buf = BytesMut::from(input);
            s.handle_input(Instant::ZERO, &mut buf).unwrap();
            let Some(server::Event::Request(req)) = s.poll_event() else {
                panic!("no request for {input:?}")
            };
            let mut c = client();
            c.send_forwarded_request(Instant::ZERO, &req, |_| true, &[], Body::Empty)
                .unwrap();
            assert_eq!(wire_str(&mut c), alloc::format!("{line}Host: a\r\n\r\n"));
        }
        // Built heads too.
        let fields: [(&[u8], &[u8]); 1] = [(b"Host", b"a")];
        let req = Request::from_parts(
            RequestId(1),
            b"GET",
            b"/",
            Version::Http10,
            fields,
            BodyKind::Empty,
        )
        .unwrap();
        let mut c = client();
        c.send_forwarded_request(Instant::ZERO, &req, |_| true, &[], Body::Empty)
            .unwrap();
        assert_eq!(wire_str(&mut c), "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[test]
    fn forwarded_request_refuses_framing_fields() {
        use crate::head::Version;
        let fields: [(&[u8], &[u8]); 2] = [(b"Host", b"h"), (b"Content-Length", b"0")];
        let req = Request::from_parts(
            RequestId(0),
            b"POST",
            b"/",
            Version::Http11,
            fields,
            BodyKind::Empty,
        )
        .unwrap();
        let mut c = client();
        assert_eq!(
            c.send_forwarded_request(Instant::ZERO, &req, |_| true, &[], Body::Empty)
                .unwrap_err(),
            SendError::FramingHeader
        );
        assert!(c.poll_transmit().is_none());
        let keep = |n: &[u8]| !n.eq_ignore_ascii_case(b"content-length");
        c.send_forwarded_request(Instant::ZERO, &req, keep, &[], Body::Empty)
            .unwrap();
        assert_eq!(
            wire_str(&mut c),
            "POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn serialize_post_full_body() {
        let mut c = client();
        c.send_request(
            Instant::ZERO,
            Method::Post,
            "/submit",
            &[HOST, ("Content-Type", b"text/plain")],
            Body::Full("hello".into()),
        )
        .unwrap();
        // Small body: one write, head and body together.
        assert_eq!(
            &c.poll_transmit().unwrap()[..],
            b"POST /submit HTTP/1.1\r\nHost: example.com\r\nContent-Type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert!(c.poll_transmit().is_none());

        // Large body: handed over as is, after the head.
        let big = Bytes::from(vec![b'x'; COPY_BODY_MAX + 1]);
        c.send_request(
            Instant::ZERO,
            Method::Put,
            "/big",
            &[HOST],
            Body::Full(big.clone()),
        )
        .unwrap();
        let head = c.poll_transmit().unwrap();
        assert_eq!(
            &head[..],
            b"PUT /big HTTP/1.1\r\nHost: example.com\r\ncontent-length: 4097\r\n\r\n"
        );
        let body = c.poll_transmit().unwrap();
        assert_eq!(body.as_ptr(), big.as_ptr(), "zero-copy");
        assert_eq!(body.len(), big.len());
        assert!(c.poll_transmit().is_none());
    }

    #[test]
    fn serialize_chunked_streamed_body_with_trailers() {
        let mut c = client();
        let id = c
            .send_request(Instant::ZERO, Method::Post, "/up", &[HOST], Body::Chunked)
            .unwrap();
        assert!(!c.can_send_request(), "body still streaming");
        assert_eq!(
            c.send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty),
            Err(SendError::InvalidState)
        );
        c.send_data(Instant::ZERO, id, Bytes::from_static(b"Wiki"), false)
            .unwrap();
        c.send_data(Instant::ZERO, id, Bytes::new(), false).unwrap();
        c.send_data(Instant::ZERO, id, Bytes::from_static(b"pedia"), false)
            .unwrap();
        c.send_trailers(Instant::ZERO, id, &[("Expires", b"never")])
            .unwrap();
        assert_eq!(
            wire_str(&mut c),
            "POST /up HTTP/1.1\r\nHost: example.com\r\ntransfer-encoding: chunked\r\n\r\n\
             4\r\nWiki\r\n5\r\npedia\r\n0\r\nExpires: never\r\n\r\n"
        );
        assert!(c.can_send_request());
        assert_eq!(
            c.send_data(Instant::ZERO, id, Bytes::from_static(b"x"), true),
            Err(SendError::InvalidState)
        );

        let id = c
            .send_request(Instant::ZERO, Method::Post, "/up2", &[HOST], Body::Chunked)
            .unwrap();
        c.send_data(Instant::ZERO, id, Bytes::from_static(b"x"), true)
            .unwrap();
        assert!(wire_str(&mut c).ends_with("\r\n\r\n1\r\nx\r\n0\r\n\r\n"));
    }

    #[test]
    fn serialize_head_and_empty_bodies() {
        let mut c = client();
        c.send_request(Instant::ZERO, Method::Head, "/", &[HOST], Body::Empty)
            .unwrap();
        c.send_request(Instant::ZERO, Method::Delete, "/r/1", &[HOST], Body::Empty)
            .unwrap();
        c.send_request(Instant::ZERO, Method::Options, "*", &[HOST], Body::Empty)
            .unwrap();
        c.send_request(Instant::ZERO, Method::Post, "/p", &[HOST], Body::Empty)
            .unwrap();
        c.send_request(Instant::ZERO, Method::Put, "/p", &[HOST], Body::Length(0))
            .unwrap();
        c.send_request_with_method_str(Instant::ZERO, "PURGE", "/cache", &[HOST], Body::Empty)
            .unwrap();
        c.send_request(
            Instant::ZERO,
            Method::Connect,
            "example.com:443",
            &[("Host", b"example.com:443")],
            Body::Empty,
        )
        .unwrap();
        assert_eq!(
            wire_str(&mut c),
            "HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n\
             DELETE /r/1 HTTP/1.1\r\nHost: example.com\r\n\r\n\
             OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n\
             POST /p HTTP/1.1\r\nHost: example.com\r\ncontent-length: 0\r\n\r\n\
             PUT /p HTTP/1.1\r\nHost: example.com\r\ncontent-length: 0\r\n\r\n\
             PURGE /cache HTTP/1.1\r\nHost: example.com\r\ncontent-length: 0\r\n\r\n\
             CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        );
        assert_eq!(c.in_flight(), 7);
        assert!(!c.can_send_request(), "CONNECT must be answered first");
    }

    #[test]
    fn invalid_requests_leave_connection_unchanged() {
        let mut c = client();
        let bad = |c: &mut ClientConnection, m: &str, t: &str, fl: &[(&str, &[u8])]| {
            c.send_request_with_method_str(Instant::ZERO, m, t, fl, Body::Full("x".into()))
                .unwrap_err()
        };
        assert_eq!(
            c.send_request(Instant::ZERO, Method::Other, "/", &[HOST], Body::Empty),
            Err(SendError::InvalidHeader)
        );
        for m in ["", "GE T", "GET\r\n", "G(T"] {
            assert_eq!(
                bad(&mut c, m, "/", &[HOST]),
                SendError::InvalidHeader,
                "{m:?}"
            );
        }
        for t in ["", "/a b", "/a\r\nX: y", "/\0", "/\t", "/a\x7f"] {
            assert_eq!(
                bad(&mut c, "GET", t, &[HOST]),
                SendError::InvalidHeader,
                "{t:?}"
            );
        }
        assert_eq!(
            bad(&mut c, "POST", "/", &[HOST, ("Content-Length", b"5")]),
            SendError::FramingHeader
        );
        assert_eq!(
            bad(
                &mut c,
                "POST",
                "/",
                &[HOST, ("transfer-encoding", b"chunked")]
            ),
            SendError::FramingHeader
        );
        assert_eq!(
            bad(&mut c, "POST", "/", &[HOST, ("X", b"a\r\nInjected: 1")]),
            SendError::InvalidHeader
        );
        assert_eq!(
            bad(&mut c, "POST", "/", &[HOST, ("bad name", b"")]),
            SendError::InvalidHeader
        );
        assert!(wire(&mut c).is_empty());
        assert_eq!((c.in_flight(), c.requests()), (0, 0));
        assert!(c.is_reusable());
        let id = c
            .send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty)
            .unwrap();
        assert_eq!(id.get(), 0);
        assert_eq!(
            wire_str(&mut c),
            "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
        );
    }

    #[test]
    fn body_command_misuse() {
        let mut c = client();
        let get = c
            .send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty)
            .unwrap();
        assert_eq!(
            c.send_data(Instant::ZERO, get, Bytes::from_static(b"x"), true),
            Err(SendError::InvalidState)
        );
        assert_eq!(
            c.send_data(Instant::ZERO, RequestId(9), Bytes::new(), true),
            Err(SendError::UnknownId)
        );
        let put = c
            .send_request(Instant::ZERO, Method::Put, "/", &[HOST], Body::Length(5))
            .unwrap();
        assert!(!c.can_send_request());
        assert_eq!(
            c.send_data(Instant::ZERO, put, Bytes::from_static(b"toolong"), false),
            Err(SendError::LengthMismatch)
        );
        assert_eq!(
            c.send_data(Instant::ZERO, put, Bytes::from_static(b"ab"), true),
            Err(SendError::LengthMismatch)
        );
        assert_eq!(
            c.send_trailers(Instant::ZERO, put, &[]),
            Err(SendError::TrailersNotAllowed)
        );
        c.send_data(Instant::ZERO, put, Bytes::from_static(b"abc"), false)
            .unwrap();
        c.send_data(Instant::ZERO, put, Bytes::from_static(b"de"), false)
            .unwrap();
        assert!(
            c.can_send_request(),
            "a Length body ends with its last byte"
        );
        assert_eq!(
            c.send_data(Instant::ZERO, put, Bytes::from_static(b"f"), false),
            Err(SendError::InvalidState)
        );
        assert!(wire_str(&mut c).ends_with("content-length: 5\r\n\r\nabcde"));

        let post = c
            .send_request(Instant::ZERO, Method::Post, "/", &[HOST], Body::Chunked)
            .unwrap();
        let _ = wire(&mut c);
        assert_eq!(
            c.send_trailers(Instant::ZERO, post, &[("a", b"\r\n")]),
            Err(SendError::InvalidHeader)
        );
        assert!(
            wire(&mut c).is_empty(),
            "a refused trailer section writes nothing"
        );
        c.send_trailers(Instant::ZERO, post, &[]).unwrap();
        assert_eq!(wire_str(&mut c), "0\r\n\r\n");
    }

    // ----- response parsing (RFC 9112 vectors) --------------------------------------------

    #[test]
    fn content_length_response() {
        let mut c = with_gets(1);
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nHello World!";
        assert!(feed(&mut c, raw).unwrap().is_empty());
        let Some(Event::Response(r)) = c.poll_event() else {
            panic!()
        };
        assert_eq!(
            (r.id().get(), r.status(), r.reason(), r.version()),
            (0, 200, "OK", crate::Version::Http11)
        );
        assert_eq!(r.body_kind(), BodyKind::Length(12));
        assert!(r.keep_alive());
        assert_eq!(r.headers().get("content-type"), Some(&b"text/plain"[..]));
        assert_eq!(evs(&mut c), [data(0, b"Hello World!"), Ev::End { id: 0 }]);
        assert!(c.is_reusable());
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn chunked_response_with_trailers() {
        let mut c = with_gets(1);
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Expires\r\n\r\n\
                    4\r\nWiki\r\n5;name=val\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n";
        feed(&mut c, raw).unwrap();
        assert_eq!(
            evs(&mut c),
            [
                resp(
                    0,
                    200,
                    &[("Transfer-Encoding", "chunked"), ("Trailer", "Expires")]
                ),
                data(0, b"Wikipedia in\r\n\r\nchunks."),
                Ev::Trailers {
                    id: 0,
                    fields: f(&[("Expires", "never")])
                },
                Ev::End { id: 0 },
            ]
        );
        assert!(c.is_reusable());
    }

    #[test]
    fn http10_close_delimited_response() {
        let mut c = with_gets(1);
        feed(
            &mut c,
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome data",
        )
        .unwrap();
        feed(&mut c, b", more").unwrap();
        assert!(!c.can_send_request());
        assert!(c.wants_read());
        assert!(!c.is_closed());
        c.handle_eof(Instant::ZERO);
        assert_eq!(
            evs(&mut c),
            [
                resp(0, 200, &[("Content-Type", "text/plain")]),
                data(0, b"some data, more"),
                Ev::End { id: 0 }
            ]
        );
        assert!(c.is_closed());
        assert_eq!(c.error(), None);
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn status_204_and_304_have_no_body() {
        let mut c = with_gets(3);
        let raw = b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n\
                    HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 100\r\n\r\n\
                    HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        feed(&mut c, raw).unwrap();
        assert_eq!(
            evs(&mut c),
            [
                resp(0, 204, &[("Content-Length", "7")]),
                Ev::End { id: 0 },
                resp(1, 304, &[("ETag", "\"x\""), ("Content-Length", "100")]),
                Ev::End { id: 1 },
                resp(2, 200, &[("Content-Length", "2")]),
                data(2, b"ok"),
                Ev::End { id: 2 },
            ]
        );
        assert!(c.is_reusable());
    }

    #[test]
    fn head_response_has_no_body() {
        let mut c = client();
        c.send_request(Instant::ZERO, Method::Head, "/", &[HOST], Body::Empty)
            .unwrap();
        c.send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty)
            .unwrap();
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n\
                    HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        feed(&mut c, raw).unwrap();
        assert_eq!(
            evs(&mut c),
            [
                resp(0, 200, &[("Content-Length", "1000")]),
                Ev::End { id: 0 },
                resp(1, 200, &[("Transfer-Encoding", "chunked")]),
                data(1, b"hi"),
                Ev::End { id: 1 },
            ]
        );
    }

    #[test]
    fn continue_then_final_response() {
        let mut c = client_with(|c| c.response_timeout = Some(Duration::from_secs(5)));
        let id = c
            .send_request(
                Instant::ZERO,
                Method::Post,
                "/upload",
                &[HOST, ("Expect", b"100-continue")],
                Body::Length(4),
            )
            .unwrap();
        let _ = wire(&mut c);
        assert_eq!(
            c.poll_timeout(),
            None,
            "no response deadline before the request is sent"
        );
        feed(&mut c, b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        assert_eq!(
            evs(&mut c),
            [Ev::Info {
                id: 0,
                status: 100,
                headers: vec![]
            }]
        );
        assert_eq!(c.in_flight(), 1);
        c.send_data(Instant::ZERO, id, Bytes::from_static(b"data"), true)
            .unwrap();
        assert_eq!(wire(&mut c), b"data");
        assert_eq!(
            c.poll_timeout(),
            Some(Instant::ZERO + Duration::from_secs(5))
        );
        feed(&mut c, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(
            evs(&mut c),
            [resp(0, 201, &[("Content-Length", "0")]), Ev::End { id: 0 }]
        );
        assert!(c.is_reusable());
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn final_response_before_request_body_is_sent() {
        let mut c = client();
        let id = c
            .send_request(
                Instant::ZERO,
                Method::Post,
                "/upload",
                &[HOST, ("Expect", b"100-continue")],
                Body::Length(4),
            )
            .unwrap();
        feed(
            &mut c,
            b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            evs(&mut c),
            [resp(0, 417, &[("Content-Length", "0")]), Ev::End { id: 0 }]
        );
        assert!(!c.can_send_request(), "the body must still be finished");
        c.send_data(Instant::ZERO, id, Bytes::from_static(b"data"), true)
            .unwrap();
        assert!(c.is_reusable());
    }

    #[test]
    fn early_hints_103() {
        let mut c = with_gets(1);
        feed(
            &mut c,
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
        .unwrap();
        assert_eq!(
            evs(&mut c),
            [
                Ev::Info {
                    id: 0,
                    status: 103,
                    headers: f(&[("Link", "</style.css>; rel=preload; as=style")])
                },
                resp(0, 200, &[("Content-Length", "2")]),
                data(0, b"ok"),
                Ev::End { id: 0 },
            ]
        );
    }

    /// A transfer coding besides `chunked` is flagged (the data is still in that coding);
    /// plain `chunked`, and a body-less response, are not.
    #[test]
    fn other_transfer_coding_is_flagged() {
        for (te, coded) in [
            ("gzip, chunked", true),
            ("gzip", true),
            ("chunked", false),
            ("Chunked", false),
        ] {
            for head in [false, true] {
                let mut c = client();
                let m = if head { Method::Head } else { Method::Get };
                c.send_request(Instant::ZERO, m, "/", &[HOST], Body::Empty)
                    .unwrap();
                let raw = alloc::format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
                let _ = feed(&mut c, raw.as_bytes());
                let Some(Event::Response(r)) = c.poll_event() else {
                    panic!("{te}: no response")
                };
                assert_eq!(r.has_other_transfer_coding(), coded && !head, "{te} {head}");
            }
        }
    }

    #[test]
    fn upgrade_101_leaves_trailing_bytes() {
        let mut c = client();
        c.send_request(
            Instant::ZERO,
            Method::Get,
            "/chat",
            &[HOST, ("Upgrade", b"websocket"), ("Connection", b"Upgrade")],
            Body::Empty,
        )
        .unwrap();
        assert!(
            !c.can_send_request(),
            "an upgrade request must be answered first"
        );
        let rest = feed(
            &mut c,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
        )
        .unwrap();
        assert_eq!(&rest[..], b"\x81\x05hello");
        assert_eq!(
            evs(&mut c),
            [
                resp(
                    0,
                    101,
                    &[("Upgrade", "websocket"), ("Connection", "Upgrade")]
                ),
                Ev::Upgraded { id: 0 }
            ]
        );
        assert!(c.is_upgraded());
        assert!(!c.wants_read());
        assert!(!c.can_send_request());
        assert!(!c.is_closed());
        assert_eq!(c.poll_timeout(), None);
        let mut rest = rest;
        c.handle_input(Instant::ZERO, &mut rest).unwrap();
        assert_eq!(
            &rest[..],
            b"\x81\x05hello",
            "nothing consumed after the switch"
        );
        c.handle_eof(Instant::ZERO);
        assert!(c.is_upgraded());
        assert!(evs(&mut c).is_empty());
    }

    #[test]
    fn connect_tunnel_and_refusal() {
        let mut c = client();
        let host: (&str, &[u8]) = ("Host", b"example.com:443");
        c.send_request(
            Instant::ZERO,
            Method::Connect,
            "example.com:443",
            &[host],
            Body::Empty,
        )
        .unwrap();
        let rest = feed(
            &mut c,
            b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x01",
        )
        .unwrap();
        assert_eq!(&rest[..], b"\x16\x03\x01");
        assert_eq!(evs(&mut c), [resp(0, 200, &[]), Ev::Upgraded { id: 0 }]);
        assert!(c.is_upgraded());

        let mut c = client();
        c.send_request(
            Instant::ZERO,
            Method::Connect,
            "example.com:443",
            &[host],
            Body::Empty,
        )
        .unwrap();
        feed(
            &mut c,
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 3\r\n\r\nno!",
        )
        .unwrap();
        assert_eq!(
            evs(&mut c),
            [
                resp(0, 407, &[("Content-Length", "3")]),
                data(0, b"no!"),
                Ev::End { id: 0 }
            ]
        );
        assert!(!c.is_upgraded());
        assert!(c.is_reusable());
    }

    #[test]
    fn unrequested_101_is_an_error() {
        let mut c = with_gets(1);
        let e = Error::InvalidHead(HeadError::Status);
        assert_eq!(
            feed(&mut c, b"HTTP/1.1 101 Switching Protocols\r\n\r\n").unwrap_err(),
            e
        );
        assert_eq!(
            evs(&mut c),
            [Ev::Error {
                id: Some(0),
                error: e
            }]
        );
        let mut c = with_gets(1);
        assert_eq!(feed(&mut c, b"HTTP/1.1 099 Odd\r\n\r\n").unwrap_err(), e);
    }

    #[test]
    fn stray_empty_lines_between_responses() {
        let mut c = with_gets(2);
        feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\r\n")
            .unwrap();
        assert_eq!(evs(&mut c).len(), 4);
        assert!(c.is_reusable());
    }

    // ----- split points --------------------------------------------------------------------

    const PIPELINED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nworld\r\n3;ext=1\r\n!!!\r\n0\r\nX-Checksum: 42\r\n\r\n\
HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nbye";

    fn pipelined_expected() -> Vec<Ev> {
        vec![
            resp(0, 200, &[("Content-Length", "5")]),
            data(0, b"hello"),
            Ev::End { id: 0 },
            resp(1, 200, &[("Transfer-Encoding", "chunked")]),
            data(1, b"world!!!"),
            Ev::Trailers {
                id: 1,
                fields: f(&[("X-Checksum", "42")]),
            },
            Ev::End { id: 1 },
            resp(2, 404, &[("Content-Length", "3")]),
            data(2, b"bye"),
            Ev::End { id: 2 },
        ]
    }

    #[test]
    fn pipelined_responses_every_split() {
        let mut whole = with_gets(3);
        assert!(feed(&mut whole, PIPELINED).unwrap().is_empty());
        let expected = pipelined_expected();
        assert_eq!(evs(&mut whole), expected);
        let mut runs = 0;
        for_each_split(
            PIPELINED,
            Instant::ZERO,
            || with_gets(3),
            |at, mut c, r| {
                r.unwrap_or_else(|e| panic!("split at {at}: {e}"));
                assert_eq!(evs(&mut c), expected, "split at {at}");
                assert!(c.is_reusable(), "split at {at}");
                runs += 1;
            },
        );
        assert_eq!(runs, PIPELINED.len() - 1);
    }

    #[test]
    fn pipelined_responses_one_byte_pieces() {
        let mut c = with_gets(3);
        let mut buf = BytesMut::new();
        for &b in PIPELINED {
            buf.extend_from_slice(&[b]);
            c.handle_input(Instant::ZERO, &mut buf).unwrap();
        }
        assert!(buf.is_empty());
        assert_eq!(evs(&mut c), pipelined_expected());
        assert!(c.is_reusable());
    }

    // ----- client <-> server ---------------------------------------------------------------

    #[derive(Clone, Debug, Default)]
    struct Seen {
        method: String,
        target: String,
        fields: Fields,
        body: Vec<u8>,
        trailers: Fields,
        ended: bool,
    }

    /// Record what a server sees, per request id.
    fn record(seen: &mut Vec<Seen>, e: &server::Event) {
        match e {
            server::Event::Request(r) => {
                assert_eq!(r.id().get() as usize, seen.len());
                seen.push(Seen {
                    method: r.method_str().to_string(),
                    target: r.target().to_string(),
                    fields: fields(r.headers()),
                    ..Seen::default()
                });
            }
            server::Event::Data { id, data } => {
                seen[id.get() as usize].body.extend_from_slice(data)
            }
            server::Event::Trailers { id, trailers } => {
                seen[id.get() as usize].trailers = fields(trailers)
            }
            server::Event::End { id } => seen[id.get() as usize].ended = true,
            server::Event::Error { id, error } => panic!("server error {error} for {id:?}"),
        }
    }

    fn pair_mixed(max_chunk: usize) {
        let mut pair = Pair::new(client(), server()).with_max_chunk(max_chunk);
        let c = &mut pair.client;
        c.send_request(Instant::ZERO, Method::Get, "/a", &[HOST], Body::Empty)
            .unwrap();
        c.send_request(
            Instant::ZERO,
            Method::Post,
            "/b",
            &[HOST, ("Content-Type", b"text/plain")],
            Body::Full("full body".into()),
        )
        .unwrap();
        let id = c
            .send_request(Instant::ZERO, Method::Post, "/c", &[HOST], Body::Chunked)
            .unwrap();
        c.send_data(Instant::ZERO, id, Bytes::from_static(b"chunk one, "), false)
            .unwrap();
        c.send_data(Instant::ZERO, id, Bytes::from_static(b"chunk two"), false)
            .unwrap();
        c.send_trailers(Instant::ZERO, id, &[("X-Sum", b"2")])
            .unwrap();
        c.send_request(Instant::ZERO, Method::Head, "/d", &[HOST], Body::Empty)
            .unwrap();
        let id = c
            .send_request(Instant::ZERO, Method::Put, "/e", &[HOST], Body::Length(6))
            .unwrap();
        c.send_data(Instant::ZERO, id, Bytes::from_static(b"put"), false)
            .unwrap();
        c.send_data(Instant::ZERO, id, Bytes::from_static(b"PUT"), true)
            .unwrap();
        assert_eq!(c.in_flight(), 5);
        assert!(c.can_send_request() && !c.is_reusable());

        let mut seen = Vec::new();
        let mut got = Vec::new();
        pair.drive_with(
            |_, e| got.push(to_ev(e)),
            |s, e| {
                record(&mut seen, &e);
                let server::Event::End { id } = e else { return };
                let r = seen[id.get() as usize].clone();
                match r.target.as_str() {
                    "/a" => s.send_response(
                        id,
                        200,
                        &[("Content-Type", b"text/plain")],
                        Body::Full("alpha".into()),
                    ),
                    "/b" => s.send_response(
                        id,
                        201,
                        &[("X-Method", r.method.as_bytes())],
                        Body::Full(r.body.into()),
                    ),
                    "/c" => {
                        s.send_response(id, 200, &[], Body::Chunked).unwrap();
                        s.send_data(id, r.body.into(), false).unwrap();
                        let sum = r.trailers[0].1.clone();
                        s.send_trailers(id, &[("X-Echo", &sum)])
                    }
                    "/d" => s.send_response(id, 200, &[], Body::Full("invisible".into())),
                    "/e" => {
                        s.send_response(id, 200, &[], Body::Length(r.body.len() as u64))
                            .unwrap();
                        let (a, b) = r.body.split_at(2);
                        s.send_data(id, Bytes::copy_from_slice(a), false).unwrap();
                        s.send_data(id, Bytes::copy_from_slice(b), true)
                    }
                    t => panic!("unexpected target {t}"),
                }
                .unwrap();
            },
        )
        .unwrap();

        let expect_req = [
            ("GET", "/a", "", f(&[("Host", "example.com")])),
            (
                "POST",
                "/b",
                "full body",
                f(&[
                    ("Host", "example.com"),
                    ("Content-Type", "text/plain"),
                    ("content-length", "9"),
                ]),
            ),
            (
                "POST",
                "/c",
                "chunk one, chunk two",
                f(&[("Host", "example.com"), ("transfer-encoding", "chunked")]),
            ),
            ("HEAD", "/d", "", f(&[("Host", "example.com")])),
            (
                "PUT",
                "/e",
                "putPUT",
                f(&[("Host", "example.com"), ("content-length", "6")]),
            ),
        ];
        assert_eq!(seen.len(), 5, "max_chunk {max_chunk}");
        for (s, (m, t, b, fl)) in seen.iter().zip(expect_req) {
            assert_eq!(
                (
                    s.method.as_str(),
                    s.target.as_str(),
                    s.body.as_slice(),
                    &s.fields
                ),
                (m, t, b.as_bytes(), &fl)
            );
            assert!(s.ended);
        }
        assert_eq!(seen[2].trailers, f(&[("X-Sum", "2")]));

        assert_eq!(
            normalize(got),
            [
                resp(
                    0,
                    200,
                    &[("Content-Type", "text/plain"), ("content-length", "5")]
                ),
                data(0, b"alpha"),
                Ev::End { id: 0 },
                resp(1, 201, &[("X-Method", "POST"), ("content-length", "9")]),
                data(1, b"full body"),
                Ev::End { id: 1 },
                resp(2, 200, &[("transfer-encoding", "chunked")]),
                data(2, b"chunk one, chunk two"),
                Ev::Trailers {
                    id: 2,
                    fields: f(&[("X-Echo", "2")])
                },
                Ev::End { id: 2 },
                resp(3, 200, &[("content-length", "9")]),
                Ev::End { id: 3 },
                resp(4, 200, &[("content-length", "6")]),
                data(4, b"putPUT"),
                Ev::End { id: 4 },
            ],
            "max_chunk {max_chunk}"
        );
        assert!(pair.client.is_reusable());
        assert_eq!(pair.client.in_flight(), 0);
        assert_eq!(pair.server.in_flight(), 0);
    }

    #[test]
    fn pair_pipelined_mixed_requests() {
        for max_chunk in [1, 2, 7, usize::MAX] {
            pair_mixed(max_chunk);
        }
    }

    #[test]
    fn pair_expect_continue() {
        for max_chunk in [1, usize::MAX] {
            let mut pair = Pair::new(client(), server()).with_max_chunk(max_chunk);
            let id = pair
                .client
                .send_request(
                    Instant::ZERO,
                    Method::Put,
                    "/f",
                    &[HOST, ("Expect", b"100-continue")],
                    Body::Length(5),
                )
                .unwrap();
            let mut seen = Vec::new();
            let mut got = Vec::new();
            pair.drive_with(
                |c, e| {
                    if let Event::Informational(r) = &e {
                        assert_eq!(r.status(), 100);
                        c.send_data(Instant::ZERO, id, Bytes::from_static(b"hello"), true)
                            .unwrap();
                    }
                    got.push(to_ev(e));
                },
                |s, e| {
                    record(&mut seen, &e);
                    if let server::Event::End { id } = e {
                        s.send_response(id, 204, &[], Body::Empty).unwrap();
                    }
                },
            )
            .unwrap();
            assert_eq!(seen[0].body, b"hello");
            assert_eq!(
                normalize(got),
                [
                    Ev::Info {
                        id: 0,
                        status: 100,
                        headers: vec![]
                    },
                    resp(0, 204, &[]),
                    Ev::End { id: 0 }
                ]
            );
            assert!(pair.client.is_reusable());
        }
    }

    #[test]
    fn pair_upgrade_and_close() {
        let mut pair = Pair::new(client(), server());
        pair.client
            .send_request(
                Instant::ZERO,
                Method::Get,
                "/ws",
                &[HOST, ("Upgrade", b"websocket"), ("Connection", b"upgrade")],
                Body::Empty,
            )
            .unwrap();
        let mut got = Vec::new();
        pair.drive_with(
            |_, e| got.push(to_ev(e)),
            |s, e| {
                if let server::Event::End { id } = e {
                    s.send_response(
                        id,
                        101,
                        &[("Upgrade", b"websocket"), ("Connection", b"upgrade")],
                        Body::Empty,
                    )
                    .unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(got.last(), Some(&Ev::Upgraded { id: 0 }));
        assert!(pair.client.is_upgraded() && pair.server.is_upgraded());

        // `Connection: close` from the client: both sides end closed.
        let mut pair = Pair::new(client(), server());
        pair.client
            .send_request(
                Instant::ZERO,
                Method::Get,
                "/",
                &[HOST, ("Connection", b"close")],
                Body::Empty,
            )
            .unwrap();
        let mut got = Vec::new();
        pair.drive_with(
            |_, e| got.push(to_ev(e)),
            |s, e| {
                if let server::Event::End { id } = e {
                    s.send_response(id, 200, &[], Body::Full("bye".into()))
                        .unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(
            normalize(got),
            [
                resp(0, 200, &[("content-length", "3"), ("connection", "close")]),
                data(0, b"bye"),
                Ev::End { id: 0 }
            ]
        );
        assert!(pair.client.is_closed() && pair.server.is_closed());
        assert_eq!(
            (pair.client.state(), pair.server.state()),
            (State::Closed, State::Closed)
        );
    }

    // ----- connection reuse ----------------------------------------------------------------

    #[test]
    fn keep_alive_response_is_reusable() {
        let mut c = with_gets(1);
        feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert!(c.is_reusable() && c.can_send_request() && c.wants_read() && !c.is_closed());
        assert_eq!(c.state(), State::Ready);
        let mut c = with_gets(1);
        feed(
            &mut c,
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        )
        .unwrap();
        assert!(c.is_reusable());
    }

    #[test]
    fn server_connection_close_ends_reuse() {
        let mut c = with_gets(1);
        feed(
            &mut c,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
        )
        .unwrap();
        assert!(!c.can_send_request(), "known as soon as the head arrives");
        assert_eq!(
            c.send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty),
            Err(SendError::Closed)
        );
        assert!(c.wants_read() && !c.is_closed());
        feed(&mut c, b"ok").unwrap();
        assert_eq!(evs(&mut c).last(), Some(&Ev::End { id: 0 }));
        assert!(!c.is_reusable() && !c.wants_read());
        assert!(c.is_closed());
        assert_eq!(c.state(), State::Closed);
        assert_eq!(c.error(), None);
    }

    #[test]
    fn closing_response_fails_requests_pipelined_behind_it() {
        let mut c = with_gets(3);
        let e = feed(
            &mut c,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap_err();
        assert_eq!(e, Error::UnexpectedEof);
        assert_eq!(
            evs(&mut c),
            [
                resp(0, 200, &[("Connection", "close"), ("Content-Length", "0")]),
                Ev::End { id: 0 },
                Ev::Error {
                    id: Some(1),
                    error: Error::UnexpectedEof
                },
            ]
        );
        assert_eq!(c.in_flight(), 0);
        assert!(c.is_closed());
    }

    #[test]
    fn http10_response_ends_reuse() {
        let mut c = with_gets(1);
        feed(&mut c, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert!(!c.is_reusable() && !c.can_send_request());
        assert!(c.is_closed());
    }

    #[test]
    fn close_delimited_body_ends_reuse() {
        let mut c = with_gets(1);
        feed(&mut c, b"HTTP/1.1 200 OK\r\n\r\nstream").unwrap();
        assert!(!c.can_send_request());
        assert!(c.wants_read() && !c.is_closed());
        c.handle_eof(Instant::ZERO);
        assert_eq!(
            evs(&mut c),
            [resp(0, 200, &[]), data(0, b"stream"), Ev::End { id: 0 }]
        );
        assert!(c.is_closed() && !c.is_reusable());
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn own_connection_close_ends_reuse() {
        let mut c = client();
        c.send_request(
            Instant::ZERO,
            Method::Get,
            "/",
            &[HOST, ("Connection", b"close")],
            Body::Empty,
        )
        .unwrap();
        assert!(!c.can_send_request());
        assert_eq!(
            c.send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty),
            Err(SendError::Closed)
        );
        assert_eq!(c.state(), State::Closing);
        assert!(c.wants_read());
        assert_eq!(
            wire_str(&mut c),
            "GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
        );
        assert!(!c.is_closed(), "the response is still owed");
        feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(evs(&mut c).len(), 2);
        assert!(c.is_closed());
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn graceful_close_waits_for_in_flight() {
        let mut c = with_gets(2);
        c.close();
        assert!(!c.can_send_request() && c.wants_read() && !c.is_closed());
        feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!c.is_closed());
        feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(c.is_closed());
        assert_eq!(c.state(), State::Closed);

        // Idle: closed at once.
        let mut c = client();
        c.close();
        assert!(c.is_closed() && !c.wants_read());
        assert_eq!(c.state(), State::Closed);

        // Unsent requests are still written out before the connection counts as closed.
        let mut c = client();
        c.send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty)
            .unwrap();
        c.close();
        feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!c.is_closed());
        let _ = wire(&mut c);
        assert!(c.is_closed());
    }

    #[test]
    fn eof_on_idle_connection_is_a_clean_close() {
        let mut c = with_gets(1);
        feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        let _ = evs(&mut c);
        c.handle_eof(Instant::ZERO);
        assert!(evs(&mut c).is_empty());
        assert!(c.is_closed() && !c.can_send_request());
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn error_ends_reuse_and_is_sticky() {
        let mut c = with_gets(2);
        let e = feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").unwrap_err();
        assert_eq!(e, Error::InvalidContentLength);
        assert_eq!(
            evs(&mut c),
            [Ev::Error {
                id: Some(0),
                error: e
            }]
        );
        assert!(!c.can_send_request() && !c.is_reusable() && !c.wants_read());
        assert!(c.is_closed());
        assert_eq!(c.state(), State::Error);
        assert_eq!(c.error(), Some(e));
        assert_eq!(c.in_flight(), 0);
        assert_eq!(feed(&mut c, b"HTTP/1.1 200 OK\r\n\r\n"), Err(e));
        c.handle_eof(Instant::ZERO);
        c.handle_timeout(Instant::FAR_FUTURE);
        assert!(evs(&mut c).is_empty(), "reported once");
        assert_eq!(
            c.send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty),
            Err(SendError::Closed)
        );
        assert_eq!(
            c.send_data(Instant::ZERO, RequestId(1), Bytes::new(), true),
            Err(SendError::Closed)
        );
    }

    #[test]
    fn pipelining_depth_is_limited() {
        let mut c = client_with(|c| c.max_pipelined = 2);
        c.send_request(Instant::ZERO, Method::Get, "/1", &[HOST], Body::Empty)
            .unwrap();
        c.send_request(Instant::ZERO, Method::Get, "/2", &[HOST], Body::Empty)
            .unwrap();
        assert!(!c.can_send_request());
        assert_eq!(
            c.send_request(Instant::ZERO, Method::Get, "/3", &[HOST], Body::Empty),
            Err(SendError::InvalidState)
        );
        feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(c.can_send_request() && !c.is_reusable());
        assert_eq!(
            c.send_request(Instant::ZERO, Method::Get, "/3", &[HOST], Body::Empty)
                .unwrap()
                .get(),
            2
        );
    }

    // ----- errors --------------------------------------------------------------------------

    #[test]
    fn unsolicited_response() {
        let mut c = client();
        feed(&mut c, b"\r\n").unwrap();
        assert!(c.is_reusable(), "a stray empty line is tolerated");
        let e = feed(
            &mut c,
            b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n",
        )
        .unwrap_err();
        assert_eq!(e, Error::UnsolicitedResponse);
        assert_eq!(evs(&mut c), [Ev::Error { id: None, error: e }]);
        assert!(c.is_closed());

        let mut c = with_gets(1);
        feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx").unwrap();
        assert_eq!(
            feed(&mut c, b"HTTP/1.1 200 OK\r\n"),
            Err(Error::UnsolicitedResponse)
        );
    }

    #[test]
    fn head_too_large_and_too_many_headers() {
        let mut c = client_with(|c| c.max_head_bytes = 64);
        c.send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty)
            .unwrap();
        let mut partial = Vec::from(&b"HTTP/1.1 200 OK\r\nX-Long: "[..]);
        partial.resize(65, b'a');
        assert_eq!(feed(&mut c, &partial), Err(Error::HeadTooLarge));
        assert_eq!(
            evs(&mut c),
            [Ev::Error {
                id: Some(0),
                error: Error::HeadTooLarge
            }]
        );

        let mut c = client_with(|c| c.max_head_bytes = 64);
        c.send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty)
            .unwrap();
        let mut complete = partial.clone();
        complete.extend_from_slice(b"\r\n\r\n");
        assert_eq!(feed(&mut c, &complete), Err(Error::HeadTooLarge));

        let mut c = client_with(|c| c.max_headers = 2);
        c.send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty)
            .unwrap();
        assert_eq!(
            feed(&mut c, b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
            Err(Error::TooManyHeaders)
        );
    }

    #[test]
    fn body_too_large() {
        let limited = || {
            let mut c = client_with(|c| c.max_body = 10);
            c.send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty)
                .unwrap();
            c
        };
        let mut c = limited();
        assert_eq!(
            feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"),
            Err(Error::BodyTooLarge)
        );
        let mut c = limited();
        feed(
            &mut c,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
        )
        .unwrap();
        assert!(c.is_reusable());
        let mut c = limited();
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n8\r\n01234567\r\n";
        assert_eq!(feed(&mut c, raw), Err(Error::BodyTooLarge));
        assert_eq!(
            evs(&mut c).last(),
            Some(&Ev::Error {
                id: Some(0),
                error: Error::BodyTooLarge
            })
        );
        let mut c = limited();
        feed(&mut c, b"HTTP/1.1 200 OK\r\n\r\n0123456789").unwrap();
        assert_eq!(feed(&mut c, b"x"), Err(Error::BodyTooLarge));
    }

    #[test]
    fn eof_mid_response() {
        let eof = Ev::Error {
            id: Some(0),
            error: Error::UnexpectedEof,
        };
        let mut c = with_gets(1);
        feed(&mut c, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").unwrap();
        c.handle_eof(Instant::ZERO);
        assert_eq!(
            evs(&mut c),
            [
                resp(0, 200, &[("Content-Length", "10")]),
                data(0, b"abc"),
                eof.clone()
            ]
        );
        assert!(c.is_closed());
        assert_eq!(c.state(), State::Closed);
        assert_eq!(feed(&mut c, b"x"), Err(Error::UnexpectedEof));

        let mut c = with_gets(1);
        feed(
            &mut c,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        )
        .unwrap();
        c.handle_eof(Instant::ZERO);
        assert_eq!(evs(&mut c).last(), Some(&eof));

        let mut c = with_gets(1);
        feed(&mut c, b"HTTP/1.1 200 O").unwrap();
        c.handle_eof(Instant::ZERO);
        assert_eq!(evs(&mut c), core::slice::from_ref(&eof));

        // The server closed without answering (keep-alive race): the request failed.
        let mut c = with_gets(1);
        c.handle_eof(Instant::ZERO);
        assert_eq!(evs(&mut c), [eof]);
        assert!(c.is_closed());
    }

    #[test]
    fn malformed_bodies_and_framing() {
        let cases: [(&[u8], Error); 6] = [
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                Error::InvalidChunkSize,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd",
                Error::InvalidChunkTerminator,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Error::ContentLengthWithTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                Error::InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n",
                Error::BareLineFeed,
            ),
            (
                b"HTTP/2.0 200 OK\r\n\r\n",
                Error::InvalidHead(HeadError::Version),
            ),
        ];
        for (raw, want) in cases {
            let mut c = with_gets(1);
            assert_eq!(
                feed(&mut c, raw),
                Err(want),
                "{}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(
                evs(&mut c).last(),
                Some(&Ev::Error {
                    id: Some(0),
                    error: want
                })
            );
            assert!(c.is_closed());
        }
    }

    #[test]
    fn response_timeout_counts_from_the_send_time() {
        let secs = |s| Instant::ZERO + Duration::from_secs(s);
        let mut c = client_with(|c| c.response_timeout = Some(Duration::from_secs(5)));
        // No input for a while: the request is stamped with the `now` it was sent at, not
        // with the time of the connection's last input.
        c.send_request(secs(100), Method::Get, "/", &[HOST], Body::Empty)
            .unwrap();
        assert_eq!(c.poll_timeout(), Some(secs(105)));
        c.handle_timeout(secs(104));
        assert!(c.error().is_none());
        // Time never goes back: an older `now` counts as the latest seen.
        let id = c
            .send_request(secs(50), Method::Post, "/", &[HOST], Body::Length(1))
            .unwrap();
        c.send_data(secs(200), id, Bytes::from_static(b"x"), true)
            .unwrap();
        c.handle_timeout(secs(105));
        assert_eq!(c.error(), Some(Error::HeaderTimeout));
    }

    #[test]
    fn response_timeout() {
        let secs = |s| Instant::ZERO + Duration::from_secs(s);
        let mut c = client_with(|c| c.response_timeout = Some(Duration::from_secs(5)));
        assert_eq!(c.poll_timeout(), None, "idle");
        c.send_request(Instant::ZERO, Method::Get, "/1", &[HOST], Body::Empty)
            .unwrap();
        c.send_request(Instant::ZERO, Method::Get, "/2", &[HOST], Body::Empty)
            .unwrap();
        assert_eq!(c.poll_timeout(), Some(secs(5)));
        c.handle_timeout(secs(4));
        assert!(c.error().is_none(), "early timeouts are no-ops");
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"[..]);
        c.handle_input(secs(3), &mut b).unwrap();
        assert_eq!(c.poll_timeout(), None, "no deadline while a body is read");
        let mut b = BytesMut::from(&b"cd"[..]);
        c.handle_input(secs(4), &mut b).unwrap();
        assert_eq!(
            c.poll_timeout(),
            Some(secs(9)),
            "the second request waits from the first's end"
        );
        let _ = evs(&mut c);
        c.handle_timeout(secs(9));
        assert_eq!(
            evs(&mut c),
            [Ev::Error {
                id: Some(1),
                error: Error::HeaderTimeout
            }]
        );
        assert_eq!(
            c.state(),
            State::Closing,
            "until the queued requests are handed over"
        );
        let _ = wire(&mut c);
        assert!(c.is_closed());
        assert_eq!(c.state(), State::Error);
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(
            feed(&mut c, b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(Error::HeaderTimeout)
        );

        // Through the harness: a server that never answers.
        let mut pair = Pair::new(
            client_with(|c| c.response_timeout = Some(Duration::from_secs(5))),
            server(),
        );
        pair.client
            .send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty)
            .unwrap();
        let (ce, se) = pair.drive().unwrap();
        assert!(ce.is_empty());
        assert_eq!(se.len(), 2);
        pair.advance(Duration::from_secs(6));
        assert_eq!(pair.client.error(), Some(Error::HeaderTimeout));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        const PREFIXES: [&[u8]; 5] = [
            b"",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ];
        const ALPHABET: &[u8] = b"HTP/1.0 2345\r\n:;-abcdefxX\t\x00\xff";
        for round in 0..2000 {
            let mut c = client_with(|c| {
                c.max_body = 64;
                c.max_head_bytes = 128;
            });
            let up: &[(&str, &[u8])] = &[HOST, ("Upgrade", b"x")];
            c.send_request(Instant::ZERO, Method::Head, "/", &[HOST], Body::Empty)
                .unwrap();
            c.send_request(
                Instant::ZERO,
                Method::Get,
                "/",
                if round % 7 == 0 { up } else { &[HOST] },
                Body::Empty,
            )
            .unwrap();
            let mut raw = Vec::from(PREFIXES[(next() % 5) as usize]);
            for _ in 0..next() % 300 {
                let r = next();
                raw.push(if r % 3 == 0 {
                    r as u8
                } else {
                    ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                });
            }
            let mut buf = BytesMut::new();
            let mut pos = 0;
            while pos < raw.len() {
                let n = (1 + next() % 40) as usize;
                let end = (pos + n).min(raw.len());
                buf.extend_from_slice(&raw[pos..end]);
                pos = end;
                if c.handle_input(Instant::ZERO, &mut buf).is_err() {
                    break;
                }
            }
            c.handle_eof(Instant::ZERO);
            c.handle_timeout(Instant::FAR_FUTURE);
            let all = evs(&mut c);
            let errors = all.iter().filter(|e| matches!(e, Ev::Error { .. })).count();
            assert!(errors <= 1, "round {round}: {all:?}");
            assert_eq!(errors == 1, c.error().is_some());
            let _ = wire(&mut c);
            assert!(c.is_closed() || c.is_upgraded(), "round {round}: {all:?}");
        }
    }

    // ----- property tests ------------------------------------------------------------------

    const FIELD_NAME: &str = "x-[a-z0-9!#$%&'*+.^_`|~-]{1,16}";
    const FIELD_VALUE: &str = "([!-~]([ -~]{0,30}[!-~])?)?";

    fn pieces_of<'a>(body: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut rest = body;
        sizes.iter().cycle().map_while(move |&n| {
            if rest.is_empty() {
                return None;
            }
            let (a, b) = rest.split_at(n.min(rest.len()));
            rest = b;
            Some(a)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn request_round_trip(
            method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"]),
            target in "/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,40}(\\?[A-Za-z0-9=&%]{0,20})?",
            user_fields in prop::collection::vec((FIELD_NAME, FIELD_VALUE), 0..10),
            body in prop::collection::vec(any::<u8>(), 0..600),
            chunked in any::<bool>(),
            sizes in prop::collection::vec(1usize..200, 1..8),
            max_chunk in prop::sample::select(vec![1usize, 3, 64, usize::MAX]),
        ) {
            let mut fl: Vec<(&str, &[u8])> = vec![HOST];
            fl.extend(user_fields.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
            let mut pair = Pair::new(client(), server()).with_max_chunk(max_chunk);
            let c = &mut pair.client;
            if chunked {
                let id = c.send_request_with_method_str(Instant::ZERO, method, &target, &fl, Body::Chunked).unwrap();
                for p in pieces_of(&body, &sizes) {
                    c.send_data(Instant::ZERO, id, Bytes::copy_from_slice(p), false).unwrap();
                }
                c.send_data(Instant::ZERO, id, Bytes::new(), true).unwrap();
            } else {
                c.send_request_with_method_str(Instant::ZERO, method, &target, &fl, Body::Full(body.clone().into())).unwrap();
            }
            let mut seen = Vec::new();
            pair.drive_with(|_, _| {}, |_, e| record(&mut seen, &e)).unwrap();
            prop_assert_eq!(seen.len(), 1);
            let s = &seen[0];
            prop_assert!(s.ended);
            prop_assert_eq!(s.method.as_str(), method);
            prop_assert_eq!(&s.target, &target);
            let got: Fields = s
                .fields
                .iter()
                .filter(|(n, _)| !n.eq_ignore_ascii_case("content-length") && !n.eq_ignore_ascii_case("transfer-encoding"))
                .cloned()
                .collect();
            let want: Fields = fl.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(&s.body, &body);
        }

        #[test]
        fn response_round_trip(
            status in (200u16..600).prop_filter("bodiless statuses", |s| *s != 204 && *s != 304),
            user_fields in prop::collection::vec((FIELD_NAME, FIELD_VALUE), 0..10),
            body in prop::collection::vec(any::<u8>(), 0..600),
            chunked in any::<bool>(),
            sizes in prop::collection::vec(1usize..200, 1..8),
            max_chunk in prop::sample::select(vec![1usize, 3, 64, usize::MAX]),
        ) {
            let fl: Vec<(&str, &[u8])> = user_fields.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
            let mut pair = Pair::new(client(), server()).with_max_chunk(max_chunk);
            pair.client.send_request(Instant::ZERO, Method::Get, "/", &[HOST], Body::Empty).unwrap();
            let mut got = Vec::new();
            pair.drive_with(
                |_, e| got.push(to_ev(e)),
                |s, e| {
                    let server::Event::End { id } = e else { return };
                    if chunked {
                        s.send_response(id, status, &fl, Body::Chunked).unwrap();
                        for p in pieces_of(&body, &sizes) {
                            s.send_data(id, Bytes::copy_from_slice(p), false).unwrap();
                        }
                        s.send_data(id, Bytes::new(), true).unwrap();
                    } else {
                        s.send_response(id, status, &fl, Body::Full(body.clone().into())).unwrap();
                    }
                },
            )
            .unwrap();
            let got = normalize(got);
            let framing = |n: &str| n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding");
            let Some(Ev::Resp { id: 0, status: st, headers }) = got.first() else {
                return Err(TestCaseError::fail(alloc::format!("no response: {got:?}")));
            };
            prop_assert_eq!(*st, status);
            let user: Fields = headers.iter().filter(|(n, _)| !framing(n)).cloned().collect();
            let want: Fields = fl.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
            prop_assert_eq!(user, want);
            let mut expect_tail = Vec::new();
            if !body.is_empty() {
                expect_tail.push(data(0, &body));
            }
            expect_tail.push(Ev::End { id: 0 });
            prop_assert_eq!(&got[1..], &expect_tail[..]);
            prop_assert!(pair.client.is_reusable());
        }
    }
}
