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
//!     .send_request(Method::Get, "/hello", &[("Host", b"example.com")], Body::Empty)
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
use crate::encode::{is_token, write_content_length, write_fields, Body, COPY_BODY_MAX};
use crate::head::{parse_response, BodyKind, Headers, Method, RequestId, Response};
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
        Method::Get | Method::Head | Method::Delete | Method::Options | Method::Trace | Method::Connect
    )
}

impl ClientConnection {
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
            out: VecDeque::new(),
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
        if self.error.is_some() || self.closing || matches!(self.read, Read::Upgraded | Read::Stopped) {
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
        method: Method,
        target: &str,
        fields: &[(&str, &[u8])],
        body: Body,
    ) -> Result<RequestId, SendError> {
        let m = method.as_str().ok_or(SendError::InvalidHeader)?;
        self.send_request_with_method_str(m, target, fields, body)
    }

    /// [`send_request`](Self::send_request) with the method given as a token (extension
    /// methods such as `PURGE`). A method that is not a token, or a target that is empty or
    /// contains whitespace or control bytes, is refused with [`SendError::InvalidHeader`].
    pub fn send_request_with_method_str(
        &mut self,
        method: &str,
        target: &str,
        fields: &[(&str, &[u8])],
        body: Body,
    ) -> Result<RequestId, SendError> {
        self.check_can_send()?;
        if !is_token(method.as_bytes()) || !valid_target(target.as_bytes()) {
            return Err(SendError::InvalidHeader);
        }
        let m = Method::from_token(method);
        let mark = self.wbuf.len();
        let dst = &mut self.wbuf;
        // request-line = method SP request-target SP HTTP-version
        dst.reserve(method.len() + target.len() + 11);
        dst.put_slice(method.as_bytes());
        dst.put_u8(b' ');
        dst.put_slice(target.as_bytes());
        dst.put_slice(b" HTTP/1.1\r\n");
        let facts = match write_fields(dst, fields) {
            Ok(f) => f,
            Err(e) => {
                dst.truncate(mark);
                return Err(e);
            }
        };
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
            upgrade: fields.iter().any(|(n, _)| n.eq_ignore_ascii_case("upgrade")),
            sent_at: streaming.is_none().then_some(self.now),
        });
        self.sending = streaming.map(|body| Sending { id, body });
        if facts.close {
            self.closing = true;
            let _ = self.lifecycle.transition(State::Closing);
        }
        Ok(RequestId(id))
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
    pub fn send_data(&mut self, id: RequestId, data: Bytes, end: bool) -> Result<(), SendError> {
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
                    s.body = SendBody::Length { remaining: remaining - n };
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
    pub fn send_trailers(&mut self, id: RequestId, fields: &[(&str, &[u8])]) -> Result<(), SendError> {
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
        self.events.push_back(Event::Error { id: id.map(RequestId), error });
        self.update_lifecycle();
        error
    }

    /// Parse one response head. `Ok(false)`: nothing more to do with this input now.
    fn read_head(&mut self, input: &mut BytesMut) -> Result<bool, (Error, Option<u64>)> {
        let Some(&front) = self.pending.front() else {
            // Nothing outstanding. Tolerate stray empty lines (some servers add CRLF after a
            // body); anything else is a response nobody asked for.
            let skip = input.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            input.advance(skip);
            return if input.is_empty() { Ok(false) } else { Err((Error::UnsolicitedResponse, None)) };
        };
        if input.is_empty() {
            return Ok(false);
        }
        let cfg = &*self.config;
        let id = front.id;
        let parsed = match parse_response(input, cfg.max_headers, front.head, front.connect) {
            Ok(Some(p)) => p,
            Ok(None) => {
                if input.len() > cfg.max_head_bytes {
                    return Err((Error::HeadTooLarge, Some(id)));
                }
                return Ok(false);
            }
            Err(Error::TooManyHeaders) => return Err((Error::TooManyHeaders, Some(id))),
            Err(e) => {
                // A head too large for the limits is reported as such, whatever follows.
                let e = if input.len() > cfg.max_head_bytes { Error::HeadTooLarge } else { e };
                return Err((e, Some(id)));
            }
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
            BodyKind::Empty => return self.end_response(id).map(|()| true),
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
                    if !self.read_head(input)? {
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
                    self.events.push_back(Event::Data { id: RequestId(id), data });
                    if done {
                        self.end_response(id)?;
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
                            self.events.push_back(Event::Data { id: RequestId(id), data });
                        }
                        Some(Decoded::Trailers(trailers)) => {
                            self.events.push_back(Event::Trailers { id: RequestId(id), trailers });
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
                    self.events.push_back(Event::Data { id: RequestId(id), data });
                }
                Read::Upgraded | Read::Stopped => return Ok(()),
            }
        }
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

    fn poll_transmit(&mut self) -> Option<Bytes> {
        let b = match self.out.pop_front() {
            Some(b) => Some(b),
            None if !self.wbuf.is_empty() => Some(self.wbuf.split().freeze()),
            None => None,
        };
        if b.is_none() {
            self.update_lifecycle();
        }
        b
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
        let Some(deadline) = self.poll_timeout() else { return };
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
