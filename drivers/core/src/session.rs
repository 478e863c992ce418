//! One HTTP/1.1 connection as an I/O worker drives it: the sans-IO [`ServerConnection`], the
//! input buffer, the output queue and the glue to the [`Service`](crate::Service) (inline or
//! over the channels to application workers).
//!
//! A driver only moves bytes: it appends what it read to [`HttpSession::input`], calls
//! [`HttpSession::process`], writes [`HttpSession::out`] (vectored) and reports how much went
//! out with [`HttpSession::written`]. Everything the protocol and the application decide
//! happens here, identically for every driver.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_channel::TrySendError;
use ferry_http1::{server::Event, Body as WireBody, RequestId, ServerConnection};
use ferry_proto::{Connection, Instant};
use smallvec::SmallVec;

use crate::metrics::{add, bump};
use crate::pool::{shard, Job, JobKind, Reply};
use crate::runtime::WorkerCtx;
use crate::service::{ConnInfo, Exchange, HeadBody, Part, Parts, Request, Responder};

type PullStream = Box<dyn Iterator<Item = Bytes> + Send>;

/// One connection's protocol state, buffers and application glue.
pub struct HttpSession {
    conn: ServerConnection,
    /// Bytes read and not yet consumed by the protocol. Drivers append here.
    pub input: BytesMut,
    /// Output taken from the protocol and not yet written (ahead of what the protocol still
    /// holds, which epoll-style drivers write straight from its buffer).
    out: VecDeque<Bytes>,
    /// Bytes queued in `out` plus bytes handed to the kernel and not yet confirmed.
    out_bytes: usize,
    info: ConnInfo,
    gen: u32,
    inline: Vec<(u64, Exchange, Responder)>,
    /// Jobs the application channel refused (full): reading pauses until they are taken.
    pending: VecDeque<Job>,
    /// Requests whose head went to an application worker and whose end did not yet.
    remote_open: SmallVec<[RequestId; 4]>,
    streams: VecDeque<(RequestId, PullStream)>,
    started: VecDeque<(u64, Instant)>,
    eof: bool,
    abort: bool,
    errored: bool,
    /// A bodyless request answered at its head: its `End` event is skipped.
    skip_end: Option<RequestId>,
    /// Answer `Upgrade: h2c` requests with 101 (the HTTP listener's [`HttpAuto`](crate::h2::HttpAuto)).
    pub(crate) allow_h2c: bool,
    h2c: Option<H2cUpgrade>,
}

/// An `Upgrade: h2c` request answered with 101: the HTTP/2 connection, its stream 1 made of
/// the request. Built before the 101 goes out, so a request whose `HTTP2-Settings` (or head)
/// HTTP/2 cannot take is answered over HTTP/1.1 instead.
pub(crate) struct H2cUpgrade {
    pub(crate) conn: Box<ferry_http2::ServerConnection>,
}

impl std::fmt::Debug for H2cUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2cUpgrade")
    }
}

impl std::fmt::Debug for HttpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSession")
            .field("info", &self.info)
            .field("input", &self.input.len())
            .field("out_bytes", &self.out_bytes)
            .finish()
    }
}

impl HttpSession {
    /// A session for a connection just accepted (the caller has already asked
    /// [`Service::on_connect`](crate::Service::on_connect)).
    pub fn new(ctx: &WorkerCtx, info: ConnInfo, gen: u32, now: Instant) -> HttpSession {
        add(&ctx.metrics.accepted, 1);
        HttpSession {
            conn: ServerConnection::new(ctx.http.clone(), now),
            input: BytesMut::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            info,
            gen,
            inline: Vec::new(),
            pending: VecDeque::new(),
            remote_open: SmallVec::new(),
            streams: VecDeque::new(),
            started: VecDeque::new(),
            eof: false,
            abort: false,
            errored: false,
            skip_end: None,
            allow_h2c: false,
            h2c: None,
        }
    }

    /// Whether an `Upgrade: h2c` request was answered with 101.
    pub(crate) fn has_h2c_upgrade(&self) -> bool {
        self.h2c.is_some()
    }

    /// Hand over an answered h2c upgrade: the request, the unread input, the queued output and
    /// the output byte count (including bytes in flight).
    pub(crate) fn take_h2c_upgrade(
        &mut self,
    ) -> Option<(H2cUpgrade, BytesMut, VecDeque<Bytes>, usize)> {
        let up = self.h2c.take()?;
        self.collect();
        let n = std::mem::take(&mut self.out_bytes);
        Some((
            up,
            std::mem::take(&mut self.input),
            std::mem::take(&mut self.out),
            n,
        ))
    }

    /// Give back the buffers that are empty now (see [`Session::release_idle`]).
    ///
    /// [`Session::release_idle`]: crate::Session::release_idle
    #[cold]
    pub fn release_idle(&mut self) {
        self.conn.release_idle_buffers();
        if self.out.is_empty() {
            self.out = VecDeque::new();
        }
        if self.started.is_empty() {
            self.started = VecDeque::new();
        }
    }

    /// The connection's identity.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// The generation this session was created with.
    pub fn gen(&self) -> u32 {
        self.gen
    }

    /// The protocol connection.
    pub fn connection(&self) -> &ServerConnection {
        &self.conn
    }

    /// Whether the driver should read from the socket now.
    pub fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        !self.eof
            && !self.errored
            && !self.abort
            && self.pending.is_empty()
            && self.queued() < ctx.options.write_high_water
            && self.input.len() < ctx.options.input_high_water
            && self.conn.wants_read()
    }

    /// Whether the socket can be closed: the protocol is done and every byte went out, or the
    /// application aborted.
    pub fn is_finished(&self) -> bool {
        self.abort || (self.conn.is_closed() && self.out_bytes == 0)
    }

    /// Whether the peer closed its side.
    pub fn saw_eof(&self) -> bool {
        self.eof
    }

    /// Whether jobs wait for room in an application channel.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The protocol's next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// All queued output, oldest first (write these, vectored, then call
    /// [`written`](Self::written)); [`fill_iov`](Self::fill_iov) does the same without taking
    /// the output out of the protocol's buffer.
    pub fn out(&mut self) -> &VecDeque<Bytes> {
        self.collect();
        &self.out
    }

    /// Output bytes queued here or in the protocol, or in flight.
    fn queued(&self) -> usize {
        self.out_bytes + self.conn.pending_transmit_len()
    }

    /// Whether output is waiting to be written (or confirmed).
    pub fn has_output(&self) -> bool {
        self.queued() > 0
    }

    /// Fill `iov` with slices of queued output, oldest first; returns how many were filled.
    pub fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        if !self.out.is_empty() {
            for b in self.out.iter().map(|b| &b[..]) {
                let Some(slot) = iov.get_mut(n) else {
                    return n;
                };
                *slot = IoSlice::new(b);
                n += 1;
            }
        }
        for b in self.conn.pending_transmit() {
            let Some(slot) = iov.get_mut(n) else {
                return n;
            };
            *slot = IoSlice::new(b);
            n += 1;
        }
        n
    }

    /// `n` bytes of the queued output were written (epoll style: output stays queued until
    /// written).
    pub fn written(&mut self, ctx: &WorkerCtx, mut n: usize) {
        bump(&ctx.metrics.bytes_out, n as u64);
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            let k = front.len().min(n);
            self.out_bytes -= k;
            n -= k;
            if k == front.len() {
                self.out.pop_front();
            } else {
                front.advance(k);
            }
        }
        if n > 0 {
            // The rest came straight from the protocol's buffer.
            self.conn.consume_transmit(n);
        }
    }

    /// Take up to `max` queued chunks to hand to the kernel (io_uring style: the driver keeps
    /// them alive until the completion, then calls [`sent`](Self::sent)).
    pub fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        for _ in 0..max {
            match self.out.pop_front() {
                Some(b) => into.push(b),
                None => match self.conn.poll_transmit() {
                    Some(b) => {
                        if !b.is_empty() {
                            self.out_bytes += b.len();
                            into.push(b);
                        }
                    }
                    None => break,
                },
            }
        }
    }

    /// A completion wrote `n` of the chunks taken with [`take_out`](Self::take_out); the
    /// unwritten rest goes back to the front of the queue.
    pub fn sent(&mut self, ctx: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        bump(&ctx.metrics.bytes_out, n as u64);
        self.out_bytes -= n;
        let mut skip = n;
        let mut rest = Vec::new();
        for mut b in chunks.drain(..) {
            if skip >= b.len() {
                skip -= b.len();
            } else {
                let _ = b.split_to(skip);
                skip = 0;
                rest.push(b);
            }
        }
        for b in rest.into_iter().rev() {
            self.out.push_front(b);
        }
    }

    /// The bytes read were appended to `input`: count them.
    pub fn on_read(&mut self, ctx: &WorkerCtx, n: usize) {
        bump(&ctx.metrics.bytes_in, n as u64);
    }

    /// The peer closed its side.
    pub fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if !self.eof {
            self.eof = true;
            self.process(ctx, now);
            self.conn.handle_eof(now);
            self.process(ctx, now);
        }
    }

    /// The timer fired.
    pub fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let before = (self.conn.is_closed(), self.conn.error());
        self.conn.handle_timeout(now);
        if (self.conn.is_closed(), self.conn.error()) != before {
            add(&ctx.metrics.timeouts, 1);
            let svc = ctx.service.clone();
            let info = self.info;
            let _ = catch_unwind(AssertUnwindSafe(|| svc.on_timeout(&info)));
        }
        self.process(ctx, now);
    }

    /// Graceful shutdown: answer what was received, read no new requests, then close.
    pub fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.conn.close();
        self.process(ctx, now);
    }

    /// Feed `input` to the protocol, hand events to the application, queue output.
    pub fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        loop {
            let before = self.input.len();
            if !self.errored
                && self.pending.is_empty()
                && !self.input.is_empty()
                && self.conn.handle_input(now, &mut self.input).is_err()
            {
                self.errored = true;
            }
            let mut progressed = self.input.len() != before;
            while let Some(ev) = self.conn.poll_event() {
                progressed = true;
                self.dispatch(ctx, ev, now);
            }
            if self.errored {
                self.input.clear();
            }
            // (With the input used up, another round would find nothing: dispatching queues
            // no events.)
            if !progressed || self.input.is_empty() || !self.pending.is_empty() || self.abort {
                break;
            }
        }
        self.pump_streams(ctx, now);
    }

    /// Move the protocol's output into `out` (before handing the queue over).
    fn collect(&mut self) {
        while let Some(b) = self.conn.poll_transmit() {
            if !b.is_empty() {
                self.out_bytes += b.len();
                self.out.push_back(b);
            }
        }
    }

    fn dispatch(&mut self, ctx: &mut WorkerCtx, ev: Event, now: Instant) {
        let remote = !ctx.jobs.is_empty();
        match ev {
            Event::Request(head) => {
                bump(&ctx.metrics.requests, 1);
                let id = head.id();
                // Only with nothing else in flight: the switch hands over the output queue.
                // RFC 9110 §7.8: `Upgrade` in an HTTP/1.0 request is ignored.
                if head.is_upgrade()
                    && head.version() == ferry_http1::Version::Http11
                    && self.allow_h2c
                    && self.h2c.is_none()
                    && self.inline.is_empty()
                    && self.remote_open.is_empty()
                    && self.streams.is_empty()
                    && self.pending.is_empty()
                    && head.body_kind() == ferry_http1::BodyKind::Empty
                {
                    let hs = head.headers();
                    let h2c = hs
                        .get("upgrade")
                        .is_some_and(|v| v.eq_ignore_ascii_case(b"h2c"));
                    let conn = match (h2c, hs.get("http2-settings")) {
                        (true, Some(settings)) => {
                            let pairs: Vec<(&str, &[u8])> = hs.iter().collect();
                            ferry_http2::ServerConnection::from_upgrade(
                                crate::h2::h2_config(&ctx.http),
                                now,
                                settings,
                                head.method_str(),
                                head.target(),
                                &pairs,
                            )
                            .ok()
                        }
                        _ => None,
                    };
                    if let Some(conn) = conn {
                        let up = H2cUpgrade {
                            conn: Box::new(conn),
                        };
                        let fields: [(&str, &[u8]); 2] =
                            [("connection", b"Upgrade"), ("upgrade", b"h2c")];
                        if self
                            .conn
                            .send_response(id, 101, &fields, WireBody::Empty)
                            .is_ok()
                        {
                            self.h2c = Some(up);
                            self.skip_end = Some(id);
                            self.collect();
                            return;
                        }
                    }
                }
                let bodyless = head.body_kind() == ferry_http1::BodyKind::Empty;
                if bodyless && !remote {
                    self.answer_bodyless(ctx, head, now);
                    return;
                }
                self.started.push_back((id.get(), now));
                let req = Request::new(head, Bytes::new(), self.info);
                if remote {
                    if req.head().expects_continue() {
                        // The application worker says whether the body is wanted.
                        self.conn.hold_continue(id);
                    }
                    self.remote_open.push(id);
                    self.send_job(ctx, id, JobKind::Head(Box::new(req)));
                } else {
                    let mut out = Responder::new();
                    let (ex, o) = Exchange::start(
                        &*ctx.service,
                        req,
                        ctx.options.max_buffered_body,
                        &mut out,
                    );
                    if o.panicked {
                        add(&ctx.metrics.panics, 1);
                    }
                    let parts = out.take();
                    self.inline.push((id.get(), ex, out));
                    self.apply_parts(ctx, id, parts, now);
                }
            }
            Event::Data { id, data } => {
                if remote {
                    self.send_job(ctx, id, JobKind::Data(data));
                } else if let Some(i) = self.inline.iter().position(|e| e.0 == id.get()) {
                    let (_, ex, out) = &mut self.inline[i];
                    let o = ex.data(&*ctx.service, data, ctx.options.max_buffered_body, out);
                    if o.panicked {
                        add(&ctx.metrics.panics, 1);
                    }
                    let parts = out.take();
                    self.apply_parts(ctx, id, parts, now);
                }
            }
            Event::End { id } if self.skip_end == Some(id) => self.skip_end = None,
            Event::End { id } => {
                if remote {
                    self.remote_open.retain(|x| *x != id);
                    self.send_job(ctx, id, JobKind::End);
                } else if let Some(i) = self.inline.iter().position(|e| e.0 == id.get()) {
                    let (_, ex, mut out) = self.inline.swap_remove(i);
                    let o = ex.end(&*ctx.service, &mut out);
                    if o.panicked {
                        add(&ctx.metrics.panics, 1);
                    }
                    let parts = out.take();
                    self.apply_parts(ctx, id, parts, now);
                }
            }
            Event::Error { id, error } => {
                add(&ctx.metrics.protocol_errors, 1);
                let svc = ctx.service.clone();
                let info = self.info;
                let _ = catch_unwind(AssertUnwindSafe(|| svc.on_error(&info, &error)));
                if let Some(id) = id {
                    self.abort_request(ctx, id);
                }
            }
            _ => {}
        }
    }

    /// A request without a body, served inline: no body will come, so answer now (no
    /// exchange parked) and skip the `End` event that follows.
    fn answer_bodyless(&mut self, ctx: &mut WorkerCtx, head: ferry_http1::Request, now: Instant) {
        let id = head.id();
        let mut out = Responder::new();
        let mut req = Some(Request::new(head, Bytes::new(), self.info));
        let (whole, o) = Exchange::answer_bodyless_in(&*ctx.service, &mut req, &mut out);
        if o.panicked {
            add(&ctx.metrics.panics, 1);
        }
        self.skip_end = Some(id);
        match whole {
            // The common case: straight to the wire, nothing collected (and nothing in
            // `started` unless the response outlives this call).
            Some(r) => {
                let head = (r.status, &r.headers[..]);
                self.send_head(ctx, id, head, r.body.into(), now, Some(now))
            }
            None => {
                self.started.push_back((id.get(), now));
                let parts = out.take();
                self.apply_parts(ctx, id, parts, now);
            }
        }
    }

    fn abort_request(&mut self, ctx: &mut WorkerCtx, id: RequestId) {
        if let Some(i) = self.inline.iter().position(|e| e.0 == id.get()) {
            let (_, ex, _) = self.inline.swap_remove(i);
            ex.abort();
        }
        if self.remote_open.contains(&id) {
            self.remote_open.retain(|x| *x != id);
            self.send_job(ctx, id, JobKind::Abort);
        }
    }

    fn send_job(&mut self, ctx: &mut WorkerCtx, id: RequestId, kind: JobKind) {
        let job = Job {
            io: ctx.index,
            token: self.info.token,
            gen: self.gen,
            id,
            kind,
        };
        if !self.pending.is_empty() {
            self.pending.push_back(job);
            return;
        }
        let tx = &ctx.jobs[shard(ctx.index, self.info.token, ctx.jobs.len())];
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                add(&ctx.metrics.backpressure, 1);
                self.pending.push_back(job);
            }
            Err(TrySendError::Disconnected(_)) => self.abort = true,
        }
    }

    /// Retry jobs the application channel refused. Returns whether all went through.
    pub fn retry_pending(&mut self, ctx: &mut WorkerCtx, now: Instant) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let tx = &ctx.jobs[shard(ctx.index, self.info.token, ctx.jobs.len())];
        while let Some(job) = self.pending.pop_front() {
            match tx.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.pending.push_front(job);
                    return false;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.abort = true;
                    self.pending.clear();
                }
            }
        }
        // Room again: parse what waited in the input buffer.
        self.process(ctx, now);
        self.pending.is_empty()
    }

    /// Apply an application worker's reply.
    pub fn apply_reply(&mut self, ctx: &mut WorkerCtx, reply: Reply, now: Instant) {
        if reply.gen != self.gen {
            return;
        }
        self.apply_parts(ctx, reply.id, reply.parts, now);
        self.process(ctx, now);
    }

    fn finish(&mut self, ctx: &WorkerCtx, id: RequestId, now: Instant) {
        // Responses complete in request order but for streams: the front, nearly always.
        let started = match self.started.front() {
            Some(&(f, t)) if f == id.get() => {
                self.started.pop_front();
                Some(t)
            }
            _ => self
                .started
                .iter()
                .position(|s| s.0 == id.get())
                .and_then(|i| self.started.remove(i))
                .map(|(_, t)| t),
        };
        Self::finished(ctx, started, now);
    }

    /// A response completed; `started`: when its request arrived, if known.
    fn finished(ctx: &WorkerCtx, started: Option<Instant>, now: Instant) {
        bump(&ctx.metrics.responses, 1);
        if let Some(t) = started {
            ctx.metrics
                .observe_latency_us(now.saturating_duration_since(t).as_micros() as u64);
        }
    }

    /// Send a response head (and a whole body) to the protocol. `untracked`: when the request
    /// arrived if it is not in `started` yet (it goes there if the response outlives this
    /// call).
    fn send_head(
        &mut self,
        ctx: &mut WorkerCtx,
        id: RequestId,
        (status, headers): (u16, &[(Cow<'static, str>, Bytes)]),
        body: HeadBody,
        now: Instant,
        untracked: Option<Instant>,
    ) {
        let (wire, done, stream) = match body {
            HeadBody::Empty => (WireBody::Empty, true, None),
            HeadBody::Full(b) => (WireBody::Full(b), true, None),
            HeadBody::Length(n) => (WireBody::Length(n), n == 0, None),
            HeadBody::Chunked => (WireBody::Chunked, false, None),
            HeadBody::Stream(it) => (WireBody::Chunked, false, Some(it)),
        };
        match self.conn.send_response_fields(id, status, headers, wire) {
            Ok(()) => {
                match (done, untracked) {
                    (true, None) => self.finish(ctx, id, now),
                    (true, Some(t)) => Self::finished(ctx, Some(t), now),
                    (false, Some(t)) => self.started.push_back((id.get(), t)),
                    (false, None) => {}
                }
                if let Some(it) = stream {
                    self.streams.push_back((id, it));
                }
            }
            Err(_) => {
                // The request is gone (connection failed) or the application misused the
                // API: nothing sensible to send.
            }
        }
    }

    fn apply_parts(&mut self, ctx: &mut WorkerCtx, id: RequestId, parts: Parts, now: Instant) {
        for p in parts {
            match p {
                Part::Head {
                    status,
                    headers,
                    body,
                } => self.send_head(ctx, id, (status, &headers), body, now, None),
                Part::Data { data, end } => {
                    if self.conn.send_data(id, data, end).is_ok() && end {
                        self.finish(ctx, id, now);
                    }
                }
                Part::Abort => self.abort = true,
                Part::Continue => {
                    let _ = self.conn.send_continue(id);
                }
            }
        }
    }

    fn pump_streams(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        while self.queued() < ctx.options.write_high_water {
            let Some((id, it)) = self.streams.front_mut() else {
                break;
            };
            let id = *id;
            match catch_unwind(AssertUnwindSafe(|| it.next())) {
                Ok(Some(b)) => {
                    if !b.is_empty() && self.conn.send_data(id, b, false).is_err() {
                        self.streams.pop_front();
                    }
                }
                Ok(None) => {
                    self.streams.pop_front();
                    if self.conn.send_data(id, Bytes::new(), true).is_ok() {
                        self.finish(ctx, id, now);
                    }
                }
                Err(_) => {
                    tracing::error!("response stream panicked; closing the connection");
                    add(&ctx.metrics.panics, 1);
                    self.streams.pop_front();
                    self.abort = true;
                }
            }
        }
    }

    /// The socket is being closed: tell the application (abort open requests, on_disconnect).
    pub fn close(mut self, ctx: &mut WorkerCtx) {
        for (_, ex, _) in self.inline.drain(..) {
            ex.abort();
        }
        let open: SmallVec<[RequestId; 4]> = std::mem::take(&mut self.remote_open);
        if !ctx.jobs.is_empty() {
            let tx = &ctx.jobs[shard(ctx.index, self.info.token, ctx.jobs.len())];
            for id in open {
                // Best effort: with a full channel the app worker keeps the state until exit.
                let _ = tx.try_send(Job {
                    io: ctx.index,
                    token: self.info.token,
                    gen: self.gen,
                    id,
                    kind: JobKind::Abort,
                });
            }
        }
        add(&ctx.metrics.closed, 1);
        let svc: Arc<dyn crate::Service> = ctx.service.clone();
        let info = self.info;
        let _ = catch_unwind(AssertUnwindSafe(|| svc.on_disconnect(&info)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::WorkerMetrics;
    use crate::runtime::{Clock, ServerOptions};
    use crate::service::{Response, Service};
    use crate::shutdown::{EventFd, Shutdown};
    use crossbeam_channel::Receiver;

    struct Hello;
    impl Service for Hello {
        fn call(&self, req: Request) -> Response {
            Response::text(200, format!("{}:{}", req.path(), req.body().len()))
        }
    }

    fn ctx(jobs: Vec<crossbeam_channel::Sender<Job>>) -> WorkerCtx {
        let options = ServerOptions {
            workers: 1,
            ..ServerOptions::default()
        };
        WorkerCtx {
            index: 0,
            cpu: None,
            service: Arc::new(Hello),
            http: Arc::new(options.http.clone()),
            options: Arc::new(options),
            metrics: Arc::new(WorkerMetrics::default()),
            jobs,
            replies: None,
            waker: Arc::new(EventFd::new().unwrap()),
            shutdown: Shutdown::new(),
            clock: Clock::new(),
        }
    }

    fn info() -> ConnInfo {
        ConnInfo {
            worker: 0,
            token: 3,
            peer: None,
        }
    }

    fn output(s: &mut HttpSession, ctx: &WorkerCtx) -> String {
        let mut v = Vec::new();
        for b in s.out() {
            v.extend_from_slice(b);
        }
        let n = v.len();
        s.written(ctx, n);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn inline_service_answers_pipelined_requests_in_order() {
        let mut c = ctx(Vec::new());
        let mut s = HttpSession::new(&c, info(), 1, Instant::ZERO);
        s.input.extend_from_slice(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\nhost: x\r\n\r\n");
        s.process(&mut c, Instant::ZERO);
        let out = output(&mut s, &c);
        let a = out.find("/a:0").unwrap();
        let b = out.find("/b:3").unwrap();
        let cc = out.find("/c:0").unwrap();
        assert!(a < b && b < cc, "{out}");
        assert!(!s.has_output());
        assert_eq!(
            c.metrics
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        assert_eq!(
            c.metrics
                .responses
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }

    fn drain(rx: &Receiver<Job>) -> Vec<(u64, &'static str)> {
        rx.try_iter()
            .map(|j| {
                let k = match j.kind {
                    JobKind::Head(_) => "head",
                    JobKind::Data(_) => "data",
                    JobKind::End => "end",
                    JobKind::Abort => "abort",
                };
                (j.id.get(), k)
            })
            .collect()
    }

    #[test]
    fn full_channel_pauses_reading_and_drops_nothing() {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(2);
        let mut c = ctx(vec![tx]);
        let mut s = HttpSession::new(&c, info(), 1, Instant::ZERO);
        let mut raw = Vec::new();
        for i in 0..5 {
            raw.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes());
        }
        s.input.extend_from_slice(&raw);
        assert!(s.wants_read(&c));
        s.process(&mut c, Instant::ZERO);
        // Two jobs fit; the rest wait on the connection, and reading pauses.
        assert!(s.has_pending());
        assert!(!s.wants_read(&c));
        assert!(
            c.metrics
                .backpressure
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
        let mut seen = drain(&rx);
        assert_eq!(seen.len(), 2);
        // The application catches up: retry until everything went through, in order.
        for _ in 0..20 {
            if s.retry_pending(&mut c, Instant::ZERO) && rx.is_empty() && s.input.is_empty() {
                break;
            }
            seen.extend(drain(&rx));
        }
        seen.extend(drain(&rx));
        let want: Vec<(u64, &str)> = (0..5u64).flat_map(|i| [(i, "head"), (i, "end")]).collect();
        assert_eq!(seen, want);
        assert!(s.wants_read(&c));
    }

    #[test]
    fn replies_from_app_workers_are_applied_and_stale_ones_dropped() {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(16);
        let mut c = ctx(vec![tx]);
        let mut s = HttpSession::new(&c, info(), 7, Instant::ZERO);
        s.input
            .extend_from_slice(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        s.process(&mut c, Instant::ZERO);
        let id = rx.try_iter().next().unwrap().id;
        let stale = Reply {
            token: 3,
            gen: 6,
            id,
            parts: smallvec::smallvec![Part::Abort],
        };
        s.apply_reply(&mut c, stale, Instant::ZERO);
        assert!(!s.is_finished());
        let mut out = Responder::new();
        out.respond(Response::text(200, "ok"));
        s.apply_reply(
            &mut c,
            Reply {
                token: 3,
                gen: 7,
                id,
                parts: out.take(),
            },
            Instant::ZERO,
        );
        let text = output(&mut s, &c);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\nok"),
            "{text}"
        );
    }

    #[test]
    fn write_high_water_pauses_reading() {
        let mut c = ctx(Vec::new());
        let mut s = HttpSession::new(&c, info(), 1, Instant::ZERO);
        s.input
            .extend_from_slice(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        s.process(&mut c, Instant::ZERO);
        assert!(s.wants_read(&c));
        let hw = c.options.write_high_water;
        s.out.push_back(Bytes::from(vec![0u8; hw]));
        s.out_bytes += hw;
        assert!(!s.wants_read(&c));
        let mut taken = Vec::new();
        s.take_out(usize::MAX, &mut taken);
        // A short write: the unwritten tail goes back to the front of the queue.
        s.sent(&c, 10, &mut taken);
        let front = s.out().front().unwrap().len();
        assert_eq!(front, s.out_bytes.min(front));
        let rest = s.out_bytes;
        s.written(&c, rest);
        assert!(!s.has_output());
        assert!(s.wants_read(&c));
    }

    /// Writes the session's output `step` bytes at a time, epoll style.
    fn trickle(s: &mut HttpSession, ctx: &WorkerCtx, step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while s.has_output() {
            let mut iov = [IoSlice::new(&[]); 4];
            let n = s.fill_iov(&mut iov);
            assert!(n > 0);
            let mut left = step;
            for b in &iov[..n] {
                let k = b.len().min(left);
                got.extend_from_slice(&b[..k]);
                left -= k;
            }
            let wrote = step - left;
            s.written(ctx, wrote);
        }
        got
    }

    #[test]
    fn short_writes_straight_from_the_protocol_buffer_keep_every_byte_in_order() {
        let mut c = ctx(Vec::new());
        let mut s = HttpSession::new(&c, info(), 1, Instant::ZERO);
        // A large response body (queued as its own piece, past the copy limit) between small
        // answers: the answer echoes the long path.
        let long = format!("/{}", "x".repeat(6000));
        let raw = format!(
            "GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nxyzGET {long} HTTP/1.1\r\nhost: x\r\n\r\n"
        );
        s.input.extend_from_slice(raw.as_bytes());
        s.process(&mut c, Instant::ZERO);
        let mut got = trickle(&mut s, &c, 7);
        // Another round reuses the output buffer from its start.
        s.input
            .extend_from_slice(b"GET /d HTTP/1.1\r\nhost: x\r\n\r\n");
        s.process(&mut c, Instant::ZERO);
        got.extend(trickle(&mut s, &c, 1000));
        let text = String::from_utf8(got).unwrap();
        let bodies: Vec<&str> = text
            .split("HTTP/1.1 200 OK\r\n")
            .skip(1)
            .map(|r| r.split_once("\r\n\r\n").unwrap().1)
            .collect();
        assert_eq!(bodies, ["/a:0", "/b:3", &format!("{long}:0"), "/d:0"]);
        assert_eq!(
            c.metrics
                .bytes_out
                .load(std::sync::atomic::Ordering::Relaxed),
            text.len() as u64
        );
        assert!(s.wants_read(&c));
    }

    #[test]
    fn graceful_shutdown_closes_an_idle_session() {
        let mut c = ctx(Vec::new());
        let mut s = HttpSession::new(&c, info(), 1, Instant::ZERO);
        s.input
            .extend_from_slice(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        s.process(&mut c, Instant::ZERO);
        output(&mut s, &c);
        assert!(!s.is_finished());
        s.begin_shutdown(&mut c, Instant::ZERO);
        assert!(s.is_finished());
    }
}
