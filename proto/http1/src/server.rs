//! The server side of an HTTP/1.1 connection.
//!
//! Requests are parsed from the caller's buffer, reported as [`Event`]s, and answered with
//! [`ServerConnection::send_response`] / [`send_data`](ServerConnection::send_data) /
//! [`send_trailers`](ServerConnection::send_trailers). Responses always leave in request order:
//! an answer to a later pipelined request is held (bounded) until the earlier ones are complete.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_proto::{
    Connection, Instant, Lifecycle, Multiplexing, ProtocolInfo, State, TlsRequirement,
};

use crate::chunked::{encode_chunk_head, ChunkedDecoder, Decoded};
use crate::date::DateCache;
use crate::encode::{
    copy_parsed_fields, write_content_length, write_date, write_extras, write_fields,
    write_status_line, AppHeaders, Body, Extra, COPY_BODY_MAX, OUT_BUF_CAPACITY,
};
use crate::head::{
    parse_request, BodyKind, Headers, IndexBuf, Method, Request, RequestId, Version,
};
use crate::{Error, SendError, ServerConfig};

/// HTTP/1.1's protocol metadata.
pub static HTTP1_INFO: ProtocolInfo = ProtocolInfo {
    name: "HTTP/1.1",
    default_port: 80,
    binary: false,
    streaming: true,
    tls: TlsRequirement::Optional,
    multiplexing: Multiplexing::None,
};

/// What a [`ServerConnection`] tells the application.
// `Request` is large (inline header index) on purpose: boxing would allocate per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A request head. Its body follows as `Data` events, then `End` (always, even without a
    /// body).
    Request(Request),
    /// A piece of the request body (a zero-copy slice of the input).
    Data {
        /// The request this belongs to.
        id: RequestId,
        /// The bytes.
        data: Bytes,
    },
    /// The trailer section of a chunked request body.
    Trailers {
        /// The request this belongs to.
        id: RequestId,
        /// The fields.
        trailers: Headers,
    },
    /// The request body is complete.
    End {
        /// The request that ended.
        id: RequestId,
    },
    /// The connection failed (bad input, timeout, EOF mid-message). The protocol's answer
    /// (400/408/413/414/431) is queued where possible; a request whose body failed gets no
    /// application response.
    Error {
        /// The request affected, when the failure was inside its body.
        id: Option<RequestId>,
        /// What went wrong.
        error: Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    No,
    /// `100 Continue` owed once the request is at the front (and not yet answered).
    Pending,
    Sent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    /// No final response head yet.
    Waiting,
    /// Head sent, body streaming.
    Length {
        remaining: u64,
    },
    Chunked,
    UntilClose,
    /// The response is complete.
    Done,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    /// `Some(status)`: the connection answers this slot itself (protocol error) and closes.
    error: Option<u16>,
    head: bool,
    connect: bool,
    upgrade: bool,
    version: Version,
    keep_alive: bool,
    expect: Expect,
    body_done: bool,
    out: Out,
    /// The response leaves the connection closed behind it.
    close: bool,
    /// Drop body bytes (HEAD response, or a body the peer no longer reads).
    discard: bool,
    /// Output held while earlier responses are still in progress.
    held: BytesMut,
    /// The automatic `100 Continue` waits for [`ServerConnection::send_continue`].
    hold_continue: bool,
}

#[derive(Debug)]
enum Read {
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
    /// An upgrade/CONNECT request was read; waiting for the application's answer.
    AwaitUpgrade {
        id: u64,
    },
    /// Protocol switched: the rest of the input belongs to the new protocol.
    Upgraded,
    /// No more requests will be read.
    Stopped,
}

/// The server side of one HTTP/1.1 connection (sans-IO).
///
/// Polling order: see [`Connection`]. After `handle_input` returns an error, keep polling
/// events and transmits: earlier responses and the error response still have to go out, then
/// [`is_closed`](Connection::is_closed) becomes true.
#[derive(Debug)]
pub struct ServerConnection {
    config: Arc<ServerConfig>,
    read: Read,
    slots: VecDeque<Slot>,
    next_id: u64,
    events: VecDeque<Event>,
    /// The `End` of the bodyless request `poll_event` just handed out: such requests have
    /// no `End` in `events` (saves queueing one per request).
    end_next: Option<RequestId>,
    /// Where request field indexes are built (reused, like the input buffer).
    index: IndexBuf,
    out: VecDeque<Bytes>,
    wbuf: BytesMut,
    error: Option<Error>,
    /// Stop after the responses already owed (graceful close, EOF, `Connection: close`).
    closing: bool,
    head_started: Option<Instant>,
    idle_since: Instant,
    now: Instant,
    date: Option<DateCache>,
    lifecycle: Lifecycle,
    requests: u64,
    /// Requests below this id were handed out by `poll_event`: an automatic `100 Continue`
    /// waits until the application saw the head (and had its chance to refuse it).
    heads_out: u64,
    /// A request head was handed out: look at the `100 Continue` owed on the next call.
    continue_check: bool,
}

impl ServerConnection {
    /// A connection accepted at `now`.
    pub fn new(config: Arc<ServerConfig>, now: Instant) -> Self {
        let date = config.date_origin_unix_nanos.map(DateCache::new);
        ServerConnection {
            config,
            read: Read::Head,
            slots: VecDeque::new(),
            next_id: 0,
            events: VecDeque::new(),
            end_next: None,
            index: IndexBuf::new(),
            out: VecDeque::new(),
            // Sized once: later buffers inherit this as their original capacity, so a response
            // never regrows from a few bytes while earlier output is still being written.
            // Allocated on the first response, so an idle connection costs no output buffer.
            wbuf: BytesMut::new(),
            error: None,
            closing: false,
            head_started: None,
            idle_since: now,
            now,
            date,
            lifecycle: Lifecycle::new(State::Ready),
            requests: 0,
            heads_out: 0,
            continue_check: false,
        }
    }

    /// Whether events wait for `poll_event` (embedders that skip polling when nothing was
    /// read ask this first).
    #[inline]
    pub fn has_events(&self) -> bool {
        self.end_next.is_some() || !self.events.is_empty()
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<ServerConfig> {
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

    /// Requests parsed so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Requests parsed and not yet completely answered.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Whether the connection switched protocols (a 101 to an upgrade request, or 2xx to
    /// CONNECT was sent). Once the transmits are written, the socket and every byte left in
    /// the input buffer belong to the new protocol.
    pub fn is_upgraded(&self) -> bool {
        matches!(self.read, Read::Upgraded)
    }

    /// Whether the connection is between requests with nothing owed (safe to close now).
    pub fn is_idle(&self) -> bool {
        self.slots.is_empty() && self.head_started.is_none() && matches!(self.read, Read::Head)
    }

    /// Give back the buffers that are empty now (the output buffer, the request and event
    /// queues): for a connection found idle (drivers do it every few seconds), so that it
    /// costs a few hundred bytes rather than a few KiB. The next request allocates them again.
    /// Changes nothing observable.
    #[cold]
    pub fn release_idle_buffers(&mut self) {
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
        if self.slots.is_empty() {
            self.slots = VecDeque::new();
        }
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.out.is_empty() {
            self.out = VecDeque::new();
        }
    }

    /// Output not yet taken, oldest first, borrowed: for callers that write straight from the
    /// connection's buffers (vectored) and then report what went out with
    /// [`consume_transmit`](Self::consume_transmit), which saves the hand-over of
    /// [`poll_transmit`](Connection::poll_transmit) (the output buffer stays the
    /// connection's own and is reused in place). Both may be mixed: `poll_transmit` hands out
    /// whatever is still pending.
    pub fn pending_transmit(&self) -> impl Iterator<Item = &[u8]> {
        PendingTransmit {
            queued: (!self.out.is_empty()).then(|| self.out.iter()),
            tail: (!self.wbuf.is_empty()).then_some(&self.wbuf[..]),
        }
    }

    /// How many bytes [`pending_transmit`](Self::pending_transmit) holds.
    pub fn pending_transmit_len(&self) -> usize {
        if self.out.is_empty() {
            return self.wbuf.len();
        }
        self.out.iter().map(Bytes::len).sum::<usize>() + self.wbuf.len()
    }

    /// The first `n` bytes of [`pending_transmit`](Self::pending_transmit) were written.
    pub fn consume_transmit(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.out.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        if n >= self.wbuf.len() {
            // All of it: the buffer is reused from its start.
            self.wbuf.clear();
        } else {
            self.wbuf.advance(n);
        }
        if self.out.is_empty() && self.wbuf.is_empty() {
            self.update_lifecycle();
        }
    }

    fn slot_index(&self, id: RequestId) -> Result<usize, SendError> {
        let front = self.slots.front().ok_or(SendError::UnknownId)?.id;
        let i = id.0.checked_sub(front).ok_or(SendError::UnknownId)? as usize;
        if i >= self.slots.len() {
            return Err(SendError::UnknownId);
        }
        Ok(i)
    }

    // ----- input ---------------------------------------------------------------------------

    fn fail(&mut self, error: Error, body_of: Option<u64>) -> Error {
        self.error = Some(error);
        self.read = Read::Stopped;
        self.head_started = None;
        let _ = self.lifecycle.transition(State::Closing);
        let status = error.status();
        // A request whose body broke is answered by the connection if the application has
        // not started answering it; otherwise its response is cut short by the close.
        let mut handled = false;
        if let Some(id) = body_of {
            if let Some(slot) = self.slots.iter_mut().find(|s| s.id == id) {
                if slot.out == Out::Waiting {
                    slot.error = Some(status);
                    slot.body_done = true;
                } else if slot.out != Out::Done {
                    // A response streamed alongside a broken request body cannot end well:
                    // cut it short so the peer sees the failure, and close.
                    slot.out = Out::Done;
                }
                slot.close = true;
                handled = true;
            }
        }
        if !handled && error != Error::UnexpectedEof {
            let version = Version::Http11;
            self.slots.push_back(Slot::new(self.next_id, version));
            self.next_id += 1;
            let s = self.slots.back_mut().expect("just pushed");
            s.error = Some(status);
            s.body_done = true;
        }
        self.events.push_back(Event::Error {
            id: body_of.map(RequestId),
            error,
        });
        self.closing = true;
        self.advance_front();
        error
    }

    fn begin_request(&mut self, input: &mut BytesMut) -> Result<bool, Error> {
        let cfg = &*self.config;
        // RFC 9112 §2.2: ignore empty lines before a request line.
        while let [b'\r', b'\n', ..] | [b'\n', ..] = input[..] {
            let n = if input[0] == b'\n' { 1 } else { 2 };
            let _ = input.split_to(n);
        }
        if input.is_empty() {
            return Ok(false);
        }
        let mut parsed = match parse_request(input, cfg.max_headers, &mut self.index) {
            Ok(Some(p)) => p,
            Ok(None) => {
                if self.head_started.is_none() {
                    self.head_started = Some(self.now);
                }
                let line_limit = cfg.max_request_line.min(input.len());
                if input.len() > cfg.max_request_line
                    && memchr::memchr(b'\n', &input[..line_limit]).is_none()
                {
                    return Err(Error::UriTooLong);
                }
                if input.len() > cfg.max_head_bytes {
                    return Err(Error::HeadTooLarge);
                }
                return Ok(false);
            }
            Err(e) => return Err(request_head_error(cfg, input, e)),
        };
        // The same limits, in the same order, as the incomplete-head checks above would have
        // applied to every prefix of this head, then to the complete head.
        let (end, l, h) = (parsed.len, cfg.max_request_line, cfg.max_head_bytes);
        let (host_count, host_invalid) = (parsed.host_count, parsed.host_invalid);
        // Worked on in place and moved once, into the queue.
        let req = &mut parsed.req;
        let line_end = (req.target.0 + req.target.1) as usize + 9;
        if (end > l + 1 && memchr::memchr(b'\n', &input[..l]).is_none())
            || (end <= h + 1 && line_end > l)
        {
            return Err(Error::UriTooLong);
        }
        if end > h {
            return Err(Error::HeadTooLarge);
        }
        if cfg.require_host && (host_invalid || (req.version == Version::Http11 && host_count != 1))
        {
            return Err(Error::InvalidHost);
        }
        let (ts, tl) = (req.target.0 as usize, req.target.1 as usize);
        // Origin-form (`/…`, nearly every request) has no authority to check.
        if input.get(ts) != Some(&b'/')
            && !crate::head::absolute_authority_ok(input.get(ts..ts + tl).unwrap_or(&[]))
        {
            return Err(Error::InvalidHost);
        }
        if let BodyKind::Length(n) = req.body {
            if n > cfg.max_body {
                return Err(Error::BodyTooLarge);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.requests += 1;
        self.head_started = None;
        req.id = RequestId(id);
        let empty = core::mem::replace(&mut req.headers.buf, input.split_to(end).freeze());
        // `Bytes::new()`: static, nothing to release (skips a call through its vtable).
        core::mem::forget(empty);
        let body = req.body;
        let (upgrade, keep_alive) = (req.upgrade, req.keep_alive);
        let bodyless = !matches!(body, BodyKind::Length(_) | BodyKind::Chunked);
        self.slots.push_back(Slot {
            head: req.method == Method::Head,
            connect: req.method == Method::Connect,
            upgrade,
            keep_alive,
            expect: if req.expect_continue && !bodyless {
                Expect::Pending
            } else {
                Expect::No
            },
            body_done: bodyless,
            ..Slot::new(id, req.version)
        });
        self.events.push_back(Event::Request(parsed.req));
        self.read = match body {
            BodyKind::Length(n) => Read::Length { id, remaining: n },
            BodyKind::Chunked => Read::Chunked {
                id,
                dec: ChunkedDecoder::new(self.config.max_head_bytes, self.config.max_headers),
                seen: 0,
            },
            _ => {
                // The common case (GET and friends): the request is complete, and its slot
                // (the one just pushed) already says so. Its `End` is not queued:
                // `poll_event` hands it out right after the request. Nothing more to read
                // ends the call here (as the next turn would).
                self.after_request(id, upgrade, keep_alive);
                return Ok(!input.is_empty());
            }
        };
        Ok(true)
    }

    fn end_body(&mut self, id: u64, upgrade: bool, keep_alive: bool) {
        self.events.push_back(Event::End { id: RequestId(id) });
        if let Some(s) = self.slots.iter_mut().find(|s| s.id == id) {
            s.body_done = true;
            if s.expect == Expect::Pending {
                s.expect = Expect::No;
            }
        }
        self.after_request(id, upgrade, keep_alive);
    }

    /// What to read after request `id` was read completely.
    #[inline]
    fn after_request(&mut self, id: u64, upgrade: bool, keep_alive: bool) {
        self.read = if upgrade {
            Read::AwaitUpgrade { id }
        } else if !keep_alive || self.closing {
            self.closing = true;
            Read::Stopped
        } else {
            Read::Head
        };
    }

    fn slot_meta(&self, id: u64) -> (bool, bool) {
        self.slots
            .iter()
            .find(|s| s.id == id)
            // No slot: its response already went out (an early answer) without closing the
            // connection, so the rest of the body is read and the connection stays usable;
            // `after_request` still honours `closing`.
            .map_or((false, true), |s| (s.upgrade, s.keep_alive))
    }

    fn read_input(&mut self, input: &mut BytesMut) -> Result<(), (Error, Option<u64>)> {
        loop {
            match &mut self.read {
                Read::Head => {
                    // Nothing to read (the usual end of a call, after a whole request) is the
                    // first way out.
                    if input.is_empty()
                        || self.slots.len() >= self.config.max_pipelined
                        || self.closing
                    {
                        return Ok(());
                    }
                    if !self.begin_request(input).map_err(|e| (e, None))? {
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
                        let (u, k) = self.slot_meta(id);
                        self.end_body(id, u, k);
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
                        Some(Decoded::End) => {
                            let (u, k) = self.slot_meta(id);
                            self.end_body(id, u, k);
                        }
                    }
                }
                Read::AwaitUpgrade { .. } | Read::Upgraded | Read::Stopped => return Ok(()),
            }
        }
    }

    // ----- output --------------------------------------------------------------------------

    /// Send `100 Continue` for the front request if it is owed: once the application saw its
    /// head without answering it (a request refused at its head, e.g. 413, gets only the
    /// final answer: RFC 9110 §10.1.1).
    /// The head handed out last time (it had `Expect: 100-continue`) was dispatched: owe the
    /// `100 Continue` now. Out of line: rare, and `poll_event` stays small.
    #[cold]
    #[inline(never)]
    fn continue_owed(&mut self) {
        self.continue_check = false;
        self.maybe_continue();
    }

    fn maybe_continue(&mut self) {
        if !self.config.auto_continue {
            return;
        }
        let seen = self.heads_out;
        if let Some(s) = self.slots.front_mut() {
            if s.expect == Expect::Pending
                && s.out == Out::Waiting
                && s.error.is_none()
                && s.id < seen
                && !s.hold_continue
            {
                s.expect = Expect::Sent;
                self.wbuf.put_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
        }
    }

    fn sink(&mut self, i: usize) -> &mut BytesMut {
        if i == 0 {
            &mut self.wbuf
        } else {
            &mut self.slots[i].held
        }
    }

    fn push_bytes(&mut self, i: usize, data: Bytes) {
        if i == 0 && data.len() > COPY_BODY_MAX {
            if !self.wbuf.is_empty() {
                self.out.push_back(self.wbuf.split().freeze());
            }
            self.out.push_back(data);
        } else {
            self.sink(i).extend_from_slice(&data);
        }
    }

    /// Pop finished responses off the front, releasing held output of the next ones.
    fn advance_front(&mut self) {
        while let Some(front) = self.slots.front_mut() {
            if !front.held.is_empty() {
                let held = front.held.split();
                self.wbuf.extend_from_slice(&held);
            }
            if let Some(status) = front.error {
                if front.out == Out::Waiting {
                    front.out = Out::Done;
                    front.close = true;
                    let head = front.head;
                    write_error_response(
                        &mut self.wbuf,
                        status,
                        head,
                        self.date.as_mut().map(|d| d.get(self.now)),
                    );
                }
            }
            if front.out != Out::Done {
                break;
            }
            // A response complete before its request's body (streamed, so its head could not
            // say so): a large remainder is not read either.
            let (fid, body_done, close) = (front.id, front.body_done, front.close);
            let close = close || (!body_done && self.body_left_exceeds(fid));
            self.slots.pop_front();
            self.idle_since = self.now;
            if close {
                self.closing = true;
                self.read = match self.read {
                    Read::Upgraded => Read::Upgraded,
                    _ => Read::Stopped,
                };
                // Responses queued behind a closing one are never sent.
                self.slots.clear();
                break;
            }
        }
        self.maybe_continue();
        if self.closing && self.slots.is_empty() && !matches!(self.read, Read::Upgraded) {
            self.read = Read::Stopped;
        }
    }

    /// Whether the unread rest of request `id`'s body (being read now) is more than the
    /// connection reads and drops to stay open: over `max_discard_body`, or of unknown length.
    fn body_left_exceeds(&self, id: u64) -> bool {
        match self.read {
            Read::Length { id: r, remaining } if r == id => {
                remaining > self.config.max_discard_body
            }
            Read::Chunked { id: r, .. } => r == id,
            _ => false,
        }
    }

    fn check_open(&self, id: RequestId) -> Result<usize, SendError> {
        let i = self.slot_index(id)?;
        let s = &self.slots[i];
        if s.error.is_some() {
            return Err(SendError::Closed);
        }
        if i != 0
            && self.slots.iter().map(|s| s.held.len()).sum::<usize>()
                > self.config.max_buffered_out_of_order
        {
            return Err(SendError::InvalidState);
        }
        Ok(i)
    }

    /// Keep the automatic `100 Continue` for `id` (with `auto_continue`) until
    /// [`send_continue`](Self::send_continue): for an application that decides elsewhere (on
    /// another thread) whether it wants the body. Call it before the next `poll_event` after
    /// the request was handed out.
    pub fn hold_continue(&mut self, id: RequestId) {
        if let Ok(i) = self.slot_index(id) {
            self.slots[i].hold_continue = true;
        }
    }

    /// Send `100 Continue` for `id` now (with `auto_continue = false`, or after
    /// [`hold_continue`](Self::hold_continue)).
    pub fn send_continue(&mut self, id: RequestId) -> Result<(), SendError> {
        let i = self.check_open(id)?;
        let s = &mut self.slots[i];
        if s.expect != Expect::Pending || s.out != Out::Waiting {
            return Err(SendError::InvalidState);
        }
        s.expect = Expect::Sent;
        self.sink(i).put_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        Ok(())
    }

    /// Send the response head for request `id` (any order; output leaves in request order).
    ///
    /// `fields` must not contain `Content-Length` or `Transfer-Encoding`: the connection writes
    /// them from `body`. A 1xx status other than 101 is an interim response; 101 (to an upgrade
    /// request) or 2xx to CONNECT switches protocols. `Body::Length`/`Body::Chunked` are
    /// followed by [`send_data`](Self::send_data) calls. A response to HEAD carries the
    /// framing `body` gives a GET's (`Content-Length`, or `Transfer-Encoding: chunked` to an
    /// HTTP/1.1 client) and no body.
    pub fn send_response(
        &mut self,
        id: RequestId,
        status: u16,
        fields: &[(&str, &[u8])],
        body: Body,
    ) -> Result<(), SendError> {
        self.send_response_with_reason(id, status, None, fields, body)
    }

    /// [`send_response`](Self::send_response) with a custom reason phrase.
    pub fn send_response_with_reason(
        &mut self,
        id: RequestId,
        status: u16,
        reason: Option<&str>,
        fields: &[(&str, &[u8])],
        body: Body,
    ) -> Result<(), SendError> {
        self.respond(id, status, reason, fields, body)
    }

    /// [`send_response`](Self::send_response) with fields of any string-like name and
    /// byte-like value (e.g. `(Cow<'static, str>, Bytes)` pairs an application built), so the
    /// caller needs no list of borrowed pairs first.
    pub fn send_response_fields<N: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        id: RequestId,
        status: u16,
        fields: &[(N, V)],
        body: Body,
    ) -> Result<(), SendError> {
        self.respond(id, status, None, fields, body)
    }

    /// Forward a response head another connection of this crate parsed (a proxy's upstream
    /// response) for request `id`: its status, and the fields `keep` accepts copied as they
    /// are, without the checks [`send_response`](Self::send_response) makes (the parser
    /// already held them to field syntax); then `extra`, validated as usual. `reason` as for
    /// [`send_response_with_reason`](Self::send_response_with_reason).
    ///
    /// `keep` MUST refuse the hop-by-hop fields the caller does not forward; `Content-Length`
    /// and `Transfer-Encoding` are refused anyway ([`SendError::FramingHeader`]): the
    /// connection writes the framing from `body`.
    pub fn send_forwarded_response(
        &mut self,
        id: RequestId,
        head: &crate::Response,
        reason: Option<&str>,
        keep: impl FnMut(&[u8]) -> bool,
        extra: &[(&str, &[u8])],
        body: Body,
    ) -> Result<(), SendError> {
        self.respond_with(id, head.status(), reason, body, |dst| {
            let mut kept = copy_parsed_fields(dst, head.headers(), keep)?;
            kept.merge(write_fields(dst, extra)?);
            Ok(kept)
        })
    }

    /// [`send_forwarded_response`](Self::send_forwarded_response) with the extra fields as
    /// [`Extra`] pieces: [`FieldLines`](crate::FieldLines) made once (a proxy's `Via`) are
    /// copied without a second check. The bytes sent are those of
    /// `send_forwarded_response` with the same fields in the same order.
    pub fn send_forwarded_response_extra(
        &mut self,
        id: RequestId,
        head: &crate::Response,
        reason: Option<&str>,
        keep: impl FnMut(&[u8]) -> bool,
        extra: &[Extra<'_>],
        body: Body,
    ) -> Result<(), SendError> {
        self.respond_with(id, head.status(), reason, body, |dst| {
            let mut kept = copy_parsed_fields(dst, head.headers(), keep)?;
            kept.merge(write_extras(dst, extra)?);
            Ok(kept)
        })
    }

    fn respond<N: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        id: RequestId,
        status: u16,
        reason: Option<&str>,
        fields: &[(N, V)],
        body: Body,
    ) -> Result<(), SendError> {
        self.respond_with(id, status, reason, body, |dst| write_fields(dst, fields))
    }

    /// The response head with its fields written by `put_fields` (which says what they mean
    /// to the connection); on error the head is taken back.
    fn respond_with(
        &mut self,
        id: RequestId,
        status: u16,
        reason: Option<&str>,
        body: Body,
        put_fields: impl FnOnce(&mut BytesMut) -> Result<AppHeaders, SendError>,
    ) -> Result<(), SendError> {
        let i = self.check_open(id)?;
        if !(100..=999).contains(&status) {
            return Err(SendError::InvalidStatus);
        }
        let now = self.now;
        let last = i + 1 == self.slots.len();
        let closing = self.closing;
        let s = &self.slots[i];
        if s.out != Out::Waiting {
            return Err(SendError::InvalidState);
        }
        let switching = (status == 101 && s.upgrade && !s.connect)
            || (s.connect && (200..300).contains(&status));
        if status == 101 && !switching {
            return Err(SendError::InvalidStatus);
        }
        let interim = (100..200).contains(&status) && !switching;
        let (version, head_req, keep_alive, body_done, expect) =
            (s.version, s.head, s.keep_alive, s.body_done, s.expect);

        // A response that streams while the body is read (an echo) wants that body: the
        // `100 Continue` owed goes first.
        let streaming = !switching
            && !interim
            && status != 204
            && (matches!(body, Body::Chunked) || (matches!(body, Body::Length(n) if n > 0)));
        let too_much_left = !body_done && !streaming && self.body_left_exceeds(id.0);
        // The front response goes straight to the output buffer; later ones wait in their slot.
        let dst = if i == 0 {
            &mut self.wbuf
        } else {
            &mut self.slots[i].held
        };
        if dst.capacity() == 0 {
            dst.reserve(OUT_BUF_CAPACITY);
        }
        let mark = dst.len();
        let continued =
            streaming && !body_done && expect == Expect::Pending && self.config.auto_continue;
        if continued {
            dst.put_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        write_status_line(dst, status, reason);
        let facts = match put_fields(dst) {
            Ok(f) => f,
            Err(e) => {
                dst.truncate(mark);
                return Err(e);
            }
        };
        if continued {
            self.slots[i].expect = Expect::Sent;
        }
        let dst = if i == 0 {
            &mut self.wbuf
        } else {
            &mut self.slots[i].held
        };
        if !facts.has_date() && !interim {
            if let Some(d) = self.date.as_mut() {
                write_date(dst, d.get(now));
            }
        }
        if interim {
            dst.put_slice(b"\r\n");
            if status == 100 {
                self.slots[i].expect = Expect::Sent;
            }
            return Ok(());
        }
        // Whether the connection can stay open after this response.
        // A final answer complete before the request body was read (413, 404 to a POST…):
        // more than a little left to read is not read at all (as nginx and hyper do): the
        // connection closes after this response (the driver's lingering close keeps the answer
        // from being reset). A response still streaming reads on (an echo).
        let body_unread = !body_done && expect == Expect::Pending && !continued;
        let mut close =
            !keep_alive || facts.close() || (closing && last) || body_unread || too_much_left;
        let no_body = head_req || status == 204 || status == 304 || switching;
        let mut out = Out::Done;
        let mut inline_body = None;
        if switching {
            // Protocol switch: no framing.
        } else if status == 204
            || (status == 304 && !matches!(body, Body::Length(_) | Body::Full(_)))
        {
        } else {
            match body {
                Body::Empty => write_content_length(dst, 0),
                Body::Full(b) => {
                    write_content_length(dst, b.len() as u64);
                    if !no_body {
                        inline_body = Some(b);
                    }
                }
                Body::Length(n) => {
                    write_content_length(dst, n);
                    out = if n == 0 {
                        Out::Done
                    } else {
                        Out::Length { remaining: n }
                    };
                }
                Body::Chunked => {
                    if version == Version::Http11 {
                        // To HEAD too: the framing a GET's response would have (RFC 9110
                        // §9.3.2); the body is dropped.
                        dst.put_slice(b"transfer-encoding: chunked\r\n");
                        out = Out::Chunked;
                    } else if no_body {
                        // HTTP/1.0 HEAD: no body to delimit, the connection may stay.
                        out = Out::Chunked;
                    } else {
                        out = Out::UntilClose;
                        close = true;
                    }
                }
            }
        }
        if close && !switching {
            if !facts.close() {
                dst.put_slice(b"connection: close\r\n");
            }
        } else if version == Version::Http10 && !switching {
            dst.put_slice(b"connection: keep-alive\r\n");
        }
        dst.put_slice(b"\r\n");
        // A small body goes right after the head (one copy, one write).
        if let Some(b) = inline_body.take_if(|b| b.len() <= COPY_BODY_MAX) {
            dst.put_slice(&b);
        }
        if let Some(b) = inline_body {
            self.push_bytes(i, b);
        }
        let s = &mut self.slots[i];
        s.out = out;
        s.close |= close;
        s.discard = no_body;
        if s.expect == Expect::Pending {
            // A final answer before the body: the client may never send it.
            s.expect = Expect::No;
        }
        if switching {
            s.out = Out::Done;
            s.close = false;
            self.read = Read::Upgraded;
            let _ = self.lifecycle.transition(State::Closing);
        } else if let Read::AwaitUpgrade { id: up } = self.read {
            if up == id.0 {
                self.read = if keep_alive && !close {
                    Read::Head
                } else {
                    Read::Stopped
                };
            }
        }
        // Only a complete front response lets the ones behind it move up; with a body still to
        // come (its slot neither `Waiting` nor `Done`, no output held for the front, no error
        // possible here), `advance_front` would find nothing to do.
        if i == 0 && (out == Out::Done || switching) {
            self.advance_front();
        }
        Ok(())
    }

    /// Send body bytes of the response to `id`; `end` finishes the body. For a response
    /// without a body (to HEAD, a 304) whose head declared a length, the bytes are dropped
    /// and `end` finishes it whatever was declared.
    pub fn send_data(&mut self, id: RequestId, data: Bytes, end: bool) -> Result<(), SendError> {
        let i = self.check_open(id)?;
        let s = &mut self.slots[i];
        let discard = s.discard;
        // Whether the response is complete now.
        let mut done = end;
        match s.out {
            Out::Waiting | Out::Done => return Err(SendError::InvalidState),
            Out::Length { remaining } => {
                let n = data.len() as u64;
                if discard && end && n <= remaining {
                    // A body nobody sees (HEAD, 304): `end` completes it whatever length the
                    // head declared (a proxy forwarding a HEAD response's length need not
                    // count terabytes down).
                    s.out = Out::Done;
                    if i == 0 {
                        self.advance_front();
                    }
                    return Ok(());
                }
                if n > remaining || (end && n != remaining) {
                    return Err(SendError::LengthMismatch);
                }
                done = n == remaining;
                s.out = if done {
                    Out::Done
                } else {
                    Out::Length {
                        remaining: remaining - n,
                    }
                };
                if !discard && !data.is_empty() {
                    self.push_bytes(i, data);
                }
            }
            Out::Chunked => {
                if end {
                    s.out = Out::Done;
                }
                if !discard {
                    if !data.is_empty() {
                        encode_chunk_head(self.sink(i), data.len());
                        self.push_bytes(i, data);
                        self.sink(i).put_slice(b"\r\n");
                    }
                    if end {
                        self.sink(i).put_slice(b"0\r\n\r\n");
                    }
                }
            }
            Out::UntilClose => {
                if end {
                    s.out = Out::Done;
                }
                if !discard && !data.is_empty() {
                    self.push_bytes(i, data);
                }
            }
        }
        // Body bytes of an unfinished front response change nothing `advance_front` looks at.
        if i == 0 && done {
            self.advance_front();
        }
        Ok(())
    }

    /// End a chunked response body with a trailer section.
    pub fn send_trailers(
        &mut self,
        id: RequestId,
        fields: &[(&str, &[u8])],
    ) -> Result<(), SendError> {
        let i = self.check_open(id)?;
        let s = &mut self.slots[i];
        match s.out {
            Out::Chunked => {}
            Out::Waiting | Out::Done => return Err(SendError::InvalidState),
            _ => return Err(SendError::TrailersNotAllowed),
        }
        let discard = s.discard;
        if !discard {
            let mut dst = core::mem::take(self.sink(i));
            let mark = dst.len();
            dst.put_slice(b"0\r\n");
            let r = write_fields(&mut dst, fields);
            if r.is_err() {
                dst.truncate(mark);
            } else {
                dst.put_slice(b"\r\n");
            }
            *self.sink(i) = dst;
            r?;
        }
        self.slots[i].out = Out::Done;
        if i == 0 {
            self.advance_front();
        }
        Ok(())
    }

    /// Graceful close: read no more requests, answer those already received (the last one
    /// with `Connection: close`), then close.
    pub fn close(&mut self) {
        self.closing = true;
        if matches!(self.read, Read::Head) {
            self.read = Read::Stopped;
        }
        let _ = self.lifecycle.transition(State::Closing);
        self.advance_front();
    }

    /// The output buffer's bytes, as one piece (the buffer keeps its spare room).
    #[inline(never)]
    fn take_wbuf(&mut self) -> Bytes {
        self.wbuf.split().freeze()
    }

    #[inline]
    fn update_lifecycle(&mut self) {
        if self.is_closed() {
            let to = if self.error.is_some() && !matches!(self.error, Some(Error::UnexpectedEof)) {
                State::Error
            } else {
                State::Closed
            };
            let _ = self.lifecycle.transition(to);
        }
    }
}

/// [`ServerConnection::pending_transmit`]: the queued pieces (large bodies, rare), then the
/// output buffer.
struct PendingTransmit<'a> {
    queued: Option<alloc::collections::vec_deque::Iter<'a, Bytes>>,
    tail: Option<&'a [u8]>,
}

impl<'a> Iterator for PendingTransmit<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        if let Some(b) = self.queued.as_mut().and_then(Iterator::next) {
            return Some(b);
        }
        self.tail.take()
    }
}

impl Slot {
    fn new(id: u64, version: Version) -> Slot {
        Slot {
            id,
            error: None,
            head: false,
            connect: false,
            upgrade: false,
            version,
            keep_alive: true,
            expect: Expect::No,
            body_done: false,
            out: Out::Waiting,
            close: false,
            discard: false,
            held: BytesMut::new(),
            hold_continue: false,
        }
    }
}

/// The connection's own answer to a protocol error: a short plain-text body, then close.
/// A response to HEAD keeps its `content-length` but carries no body (RFC 9110 §9.3.2).
fn write_error_response(dst: &mut BytesMut, status: u16, head: bool, date: Option<&[u8; 29]>) {
    write_status_line(dst, status, None);
    if let Some(d) = date {
        write_date(dst, d);
    }
    let reason = crate::encode::reason_phrase(status);
    dst.put_slice(b"content-type: text/plain\r\nconnection: close\r\n");
    write_content_length(dst, reason.len() as u64 + 1);
    dst.put_slice(b"\r\n");
    if !head {
        dst.put_slice(reason.as_bytes());
        dst.put_u8(b'\n');
    }
}

/// The error to report for a request head that failed to parse: what a reader fed one byte
/// at a time would have hit first, so the answer does not depend on how TCP segmented the
/// bytes (a limit reached while a prefix was still incomplete wins over a syntax error further
/// on). Out of line: only failing connections come here.
#[cold]
#[inline(never)]
fn request_head_error(cfg: &ServerConfig, input: &[u8], e: Error) -> Error {
    let partial = |k: usize| {
        matches!(
            parse_request(&input[..k], cfg.max_headers, &mut IndexBuf::new()),
            Ok(None)
        )
    };
    let l = cfg.max_request_line;
    let h = cfg.max_head_bytes;
    if input.len() > l && memchr::memchr(b'\n', &input[..l]).is_none() && partial(l + 1) {
        return Error::UriTooLong;
    }
    if input.len() > h && partial(h + 1) {
        return Error::HeadTooLarge;
    }
    e
}

impl Connection for ServerConnection {
    type Event = Event;
    type Error = Error;

    fn info(&self) -> &'static ProtocolInfo {
        &HTTP1_INFO
    }

    fn handle_input(&mut self, now: Instant, input: &mut BytesMut) -> Result<(), Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if now > self.now {
            self.now = now;
        }
        self.index.recycle();
        if self.continue_check {
            self.continue_owed();
        }
        match self.read_input(input) {
            Ok(()) => Ok(()),
            Err((e, body_of)) => Err(self.fail(e, body_of)),
        }
    }

    fn handle_eof(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        match self.read {
            Read::Length { id, .. } | Read::Chunked { id, .. } => {
                self.fail(Error::UnexpectedEof, Some(id));
            }
            Read::Upgraded => {}
            _ => {
                // Half-close between requests: answer what was received, then close.
                self.closing = true;
                self.read = Read::Stopped;
                self.head_started = None;
                self.advance_front();
            }
        }
        self.update_lifecycle();
    }

    #[inline]
    fn poll_event(&mut self) -> Option<Event> {
        if let Some(id) = self.end_next.take() {
            return Some(Event::End { id });
        }
        if self.continue_check {
            self.continue_owed();
        }
        let ev = self.events.pop_front()?;
        if let Event::Request(r) = &ev {
            self.heads_out = r.id.0 + 1;
            self.continue_check = r.expect_continue;
            if !matches!(r.body, BodyKind::Length(_) | BodyKind::Chunked) {
                // A request without a body is complete: its `End` follows it (never queued).
                self.end_next = Some(r.id);
            }
        }
        Some(ev)
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

    fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() || matches!(self.read, Read::Upgraded) {
            return None;
        }
        if let Some(start) = self.head_started {
            return self.config.header_read_timeout.map(|t| start + t);
        }
        if self.is_idle() {
            // Before the first request, a silent client gets the header timeout.
            let t = if self.requests == 0 {
                self.config.header_read_timeout
            } else {
                self.config.keep_alive_timeout
            };
            return t.map(|t| self.idle_since + t);
        }
        None
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        let Some(deadline) = self.poll_timeout() else {
            return;
        };
        if now < deadline {
            return;
        }
        if self.head_started.is_some() {
            self.fail(Error::HeaderTimeout, None);
        } else if self.is_idle() {
            // Idle keep-alive: close silently.
            self.closing = true;
            self.read = Read::Stopped;
            let _ = self.lifecycle.transition(State::Closing);
        }
        self.update_lifecycle();
    }

    fn wants_read(&self) -> bool {
        match self.read {
            Read::Head => !self.closing && self.slots.len() < self.config.max_pipelined,
            Read::Length { .. } | Read::Chunked { .. } => true,
            _ => false,
        }
    }

    fn is_closed(&self) -> bool {
        matches!(self.read, Read::Stopped)
            && self.closing
            && self.slots.is_empty()
            && self.out.is_empty()
            && self.wbuf.is_empty()
    }

    fn state(&self) -> State {
        self.lifecycle.state()
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
