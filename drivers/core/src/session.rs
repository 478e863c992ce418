//! One HTTP/1.1 connection as an I/O worker drives it: the sans-IO [`ServerConnection`], the
//! input buffer, the output queue and the glue to the [`Service`](crate::Service) (inline or
//! over the channels to application workers).
//!
//! A driver only moves bytes: it appends what it read to [`HttpSession::input`], calls
//! [`HttpSession::process`], writes [`HttpSession::out`] (vectored) and reports how much went
//! out with [`HttpSession::written`]. Everything the protocol and the application decide
//! happens here, identically for every driver.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::TrySendError;
use ferry_http1::{server::Event, Body as WireBody, RequestId, ServerConnection};
use ferry_proto::{Connection, Instant};
use smallvec::SmallVec;

use crate::metrics::add;
use crate::pool::{shard, Job, JobKind, Reply};
use crate::runtime::WorkerCtx;
use crate::service::{ConnInfo, Exchange, HeadBody, Part, Request, Responder};

type PullStream = Box<dyn Iterator<Item = Bytes> + Send>;

/// One connection's protocol state, buffers and application glue.
pub struct HttpSession {
    conn: ServerConnection,
    /// Bytes read and not yet consumed by the protocol. Drivers append here.
    pub input: BytesMut,
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
            input: BytesMut::with_capacity(ctx.options.read_chunk),
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
            && self.out_bytes < ctx.options.write_high_water
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

    /// Queued output, oldest first (write these, vectored, then call [`written`](Self::written)).
    pub fn out(&self) -> &VecDeque<Bytes> {
        &self.out
    }

    /// Whether output is waiting to be written (or confirmed).
    pub fn has_output(&self) -> bool {
        self.out_bytes > 0
    }

    /// Fill `iov` with up to `iov.capacity()` slices of queued output.
    pub fn out_slices<'a>(&'a self, iov: &mut Vec<IoSlice<'a>>, max: usize) {
        iov.clear();
        for b in self.out.iter().take(max) {
            iov.push(IoSlice::new(b));
        }
    }

    /// `n` bytes of the queued output were written (epoll style: output stays queued until
    /// written).
    pub fn written(&mut self, ctx: &WorkerCtx, mut n: usize) {
        add(&ctx.metrics.bytes_out, n as u64);
        self.out_bytes -= n;
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.out.pop_front();
            } else {
                let _ = front.split_to(n);
                n = 0;
            }
        }
    }

    /// Take up to `max` queued chunks to hand to the kernel (io_uring style: the driver keeps
    /// them alive until the completion, then calls [`sent`](Self::sent)).
    pub fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        for _ in 0..max {
            match self.out.pop_front() {
                Some(b) => into.push(b),
                None => break,
            }
        }
    }

    /// A completion wrote `n` of the chunks taken with [`take_out`](Self::take_out); the
    /// unwritten rest goes back to the front of the queue.
    pub fn sent(&mut self, ctx: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        add(&ctx.metrics.bytes_out, n as u64);
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
        add(&ctx.metrics.bytes_in, n as u64);
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
            if !self.errored && self.pending.is_empty() && !self.input.is_empty() {
                if self.conn.handle_input(now, &mut self.input).is_err() {
                    self.errored = true;
                }
            }
            let mut progressed = self.input.len() != before;
            while let Some(ev) = self.conn.poll_event() {
                progressed = true;
                self.dispatch(ctx, ev, now);
            }
            if self.errored {
                self.input.clear();
            }
            if !progressed || !self.pending.is_empty() || self.abort {
                break;
            }
        }
        self.pump_streams(ctx, now);
        self.collect();
    }

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
                add(&ctx.metrics.requests, 1);
                let id = head.id();
                self.started.push_back((id.get(), now));
                let req = Request::new(head, Bytes::new(), self.info);
                if remote {
                    self.remote_open.push(id);
                    self.send_job(ctx, id, JobKind::Head(req));
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
        add(&ctx.metrics.responses, 1);
        if let Some(i) = self.started.iter().position(|s| s.0 == id.get()) {
            let (_, t) = self.started.remove(i).unwrap_or((0, now));
            ctx.metrics
                .observe_latency_us(now.saturating_duration_since(t).as_micros() as u64);
        }
    }

    fn apply_parts(&mut self, ctx: &mut WorkerCtx, id: RequestId, parts: Vec<Part>, now: Instant) {
        for p in parts {
            match p {
                Part::Head {
                    status,
                    headers,
                    body,
                } => {
                    let fields: SmallVec<[(&str, &[u8]); 8]> = headers
                        .iter()
                        .map(|(n, v)| (n.as_ref(), v.as_ref()))
                        .collect();
                    let (wire, done, stream) = match body {
                        HeadBody::Empty => (WireBody::Empty, true, None),
                        HeadBody::Full(b) => (WireBody::Full(b), true, None),
                        HeadBody::Length(n) => (WireBody::Length(n), n == 0, None),
                        HeadBody::Chunked => (WireBody::Chunked, false, None),
                        HeadBody::Stream(it) => (WireBody::Chunked, false, Some(it)),
                    };
                    match self.conn.send_response(id, status, &fields, wire) {
                        Ok(()) => {
                            if done {
                                self.finish(ctx, id, now);
                            }
                            if let Some(it) = stream {
                                self.streams.push_back((id, it));
                            }
                        }
                        Err(_) => {
                            // The request is gone (connection failed) or the application
                            // misused the API: nothing sensible to send.
                        }
                    }
                }
                Part::Data { data, end } => {
                    if self.conn.send_data(id, data, end).is_ok() && end {
                        self.finish(ctx, id, now);
                    }
                }
                Part::Abort => self.abort = true,
            }
            self.collect();
        }
    }

    fn pump_streams(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        while self.out_bytes < ctx.options.write_high_water {
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
                    eprintln!("ferry: response stream panicked; closing the connection");
                    add(&ctx.metrics.panics, 1);
                    self.streams.pop_front();
                    self.abort = true;
                }
            }
            self.collect();
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
