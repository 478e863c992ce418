//! h2c on the HTTP listener: [`H2Session`] drives `ferry_http2::ServerConnection` with the same
//! [`Service`](crate::Service) as HTTP/1.1, and [`HttpAuto`] is the HTTP listener's session:
//! it starts as HTTP/1.1 and switches to HTTP/2 when the first bytes are the HTTP/2 preface
//! (prior knowledge, `ferry_http2::sniff`) or when the first request asks for `Upgrade: h2c`
//! (answered `101`, then stream 1 is that request).
//!
//! The service sees each request as an HTTP/1.1-shaped [`Request`], built with
//! `ferry_http1::Request::from_parts` from the decoded fields (the authority becomes `host`,
//! hop-by-hop fields are dropped, split `cookie` fields are joined with `"; "` as RFC 9113
//! §8.2.3 asks), whose [`RequestId`] is the stream id. Whether a body follows is known at the
//! first DATA or the end of the stream: its length is the `content-length`, else unknown.
//!
//! Without application workers requests run inline on the I/O worker; with them
//! (`ServerOptions::app_workers`), every stream goes through the same bounded channels as
//! HTTP/1.1 ([`pool`](crate::pool)): head, body pieces and end as [`Job`]s (each stream to one
//! application worker, so its events stay in order, different streams of a connection spread
//! over the workers), replies back as the I/O worker's mail. A full channel keeps the job on
//! the connection and stops reading (no byte or request dropped) until the retry gets through.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::IoSlice;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::TrySendError;
use ferry_http1::{BodyKind, RequestId, Version};
use ferry_http2::{sniff, Body, Reason, ServerConnection, Sniff, StreamId};
use ferry_proto::{Connection, Instant};
use smallvec::SmallVec;

use crate::driven::{OutQueue, Session};
use crate::metrics::{add, bump};
use crate::pool::{shard, Job, JobKind, Reply};
use crate::runtime::WorkerCtx;
use crate::service::{ConnInfo, Exchange, HeadBody, Part, Parts, Request, Responder};
use crate::session::HttpSession;

type PullStream = Box<dyn Iterator<Item = Bytes> + Send>;

#[derive(Default)]
struct H2Stream {
    /// The request head until the first body piece or the end shows whether a body follows.
    head: Option<ferry_http2::Request>,
    /// Boxed: only requests with a body have one, and it keeps the stream small to move.
    exchange: Option<Box<(Exchange, Responder)>>,
    /// Response data `send_data` refused (buffer full), with END_STREAM flags.
    pending: VecDeque<(Bytes, bool)>,
    pull: Option<PullStream>,
    request_done: bool,
    response_done: bool,
    started: Option<Instant>,
    /// Request body octets received and not yet returned to the peer's flow-control window:
    /// credit goes back only once the application's output for them is queued, so a client
    /// that sends without reading stalls instead of growing our memory.
    unreleased: usize,
    /// The request went to an application worker (its events follow as jobs).
    remote: bool,
    /// Request body octets received, against the listener's `max_body`.
    received: u64,
}

/// Hashes stream ids with one multiply: they are distinct small integers the peer must
/// raise with every stream, and at most `max_concurrent_streams` are open, so SipHash's
/// flood resistance buys nothing here.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b) ^ (self.0 as u32).rotate_left(8));
        }
    }
    fn write_u32(&mut self, n: u32) {
        let h = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 29);
    }
}

/// One HTTP/2 connection (h2c) as an I/O worker drives it.
pub struct H2Session {
    conn: ServerConnection,
    input: BytesMut,
    out: OutQueue,
    info: ConnInfo,
    /// Connection generation (replies from application workers carry it).
    gen: u32,
    streams: HashMap<StreamId, H2Stream, BuildHasherDefault<IdHasher>>,
    /// Jobs an application channel refused (full): reading pauses until they are taken.
    pending: VecDeque<Job>,
    eof: bool,
}

impl std::fmt::Debug for H2Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Session")
            .field("info", &self.info)
            .field("streams", &self.streams.len())
            .finish()
    }
}

/// The HTTP/2 settings for a listener whose HTTP/1.1 settings are `http`: its timeouts apply
/// to h2c connections too (`keep_alive_timeout` closes idle ones, `header_read_timeout` bounds
/// the wait for the preface when shorter than HTTP/2's own handshake timeout), and so do its
/// head limits (`max_head_bytes` is the header list size advertised and enforced,
/// `max_headers` the most fields: 431 past either). Built once per
/// listener configuration and thread.
pub(crate) fn h2_config(http: &Arc<ferry_http1::ServerConfig>) -> Arc<ferry_http2::Config> {
    use std::cell::RefCell;
    thread_local! {
        static CONFIG: RefCell<Option<(Arc<ferry_http1::ServerConfig>, Arc<ferry_http2::Config>)>> =
            const { RefCell::new(None) };
    }
    CONFIG.with_borrow_mut(|cached| match cached {
        Some((h, c)) if Arc::ptr_eq(h, http) => c.clone(),
        _ => {
            let mut c = ferry_http2::Config::default();
            c.auto_release = false;
            c.idle_timeout = http.keep_alive_timeout;
            // The listener's head limits hold for HTTP/2 heads too (a header list over
            // `max_head_bytes`, or more than `max_headers` fields, is 431 either way).
            c.max_header_list_size = u32::try_from(http.max_head_bytes).unwrap_or(u32::MAX);
            c.max_header_fields = http.max_headers;
            if let Some(t) = http.header_read_timeout {
                c.handshake_timeout = Some(c.handshake_timeout.map_or(t, |h| h.min(t)));
            }
            let c = Arc::new(c);
            *cached = Some((http.clone(), c.clone()));
            c
        }
    })
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

impl H2Session {
    fn with_conn(
        conn: ServerConnection,
        info: ConnInfo,
        gen: u32,
        input: BytesMut,
        out: OutQueue,
    ) -> Self {
        H2Session {
            conn,
            input,
            out,
            info,
            gen,
            streams: HashMap::default(),
            pending: VecDeque::new(),
            eof: false,
        }
    }

    /// A prior-knowledge connection of generation `gen` whose first bytes are in `input`.
    pub fn new(
        config: Arc<ferry_http2::Config>,
        info: ConnInfo,
        gen: u32,
        input: BytesMut,
        now: Instant,
    ) -> H2Session {
        H2Session::with_conn(
            ServerConnection::new(config, now),
            info,
            gen,
            input,
            OutQueue::default(),
        )
    }

    fn collect(&mut self) {
        while let Some(b) = self.conn.poll_transmit() {
            self.out.push(b);
        }
    }

    /// `head` as the HTTP/1.1-shaped request the service understands, or `None` if it cannot
    /// be one (answered 400).
    fn to_request(
        &self,
        id: StreamId,
        head: &ferry_http2::Request,
        has_body: bool,
    ) -> Option<Request> {
        // RFC 9113 §8.2.3: split `cookie` fields are joined for HTTP/1.1 consumers.
        let mut joined: Vec<u8> = Vec::new();
        if head.fields().get_all("cookie").nth(1).is_some() {
            for v in head.fields().get_all("cookie") {
                if !joined.is_empty() {
                    joined.extend_from_slice(b"; ");
                }
                joined.extend_from_slice(v);
            }
        }
        let mut fields: SmallVec<[(&[u8], &[u8]); 16]> = SmallVec::new();
        fields.push((b"host", head.authority_bytes().unwrap_or(b"localhost")));
        let mut cookie_done = false;
        for f in head.fields().fields() {
            let (n, v) = (&f.name[..], &f.value[..]);
            if n == b"host"
                || HOP_BY_HOP.iter().any(|h| h.as_bytes() == n)
                || n.first() == Some(&b':')
            {
                continue;
            }
            if n == b"content-length" && !has_body {
                continue;
            }
            if n == b"cookie" && !joined.is_empty() {
                if !cookie_done {
                    fields.push((b"cookie", &joined));
                    cookie_done = true;
                }
                continue;
            }
            fields.push((n, v));
        }
        let body = match (has_body, head.content_length()) {
            (false, _) => BodyKind::Empty,
            (true, Some(n)) => BodyKind::Length(n),
            (true, None) => BodyKind::Chunked,
        };
        let h1 = ferry_http1::Request::from_parts(
            RequestId::new(u64::from(id.get())),
            head.method_bytes(),
            head.path_bytes(),
            Version::Http11,
            fields.iter().copied(),
            body,
        )
        .ok()?;
        Some(Request::new(h1, Bytes::new(), self.info))
    }

    fn start(&mut self, ctx: &mut WorkerCtx, id: StreamId, has_body: bool) {
        let Some(head) = self.streams.get_mut(&id).and_then(|s| s.head.take()) else {
            return;
        };
        let Some(req) = self.to_request(id, &head, has_body) else {
            let _ = self.conn.send_response(
                id,
                400,
                &[("content-type", b"text/plain")],
                Body::Full(Bytes::from_static(b"bad request\n")),
            );
            if let Some(s) = self.streams.get_mut(&id) {
                s.response_done = true;
            }
            return;
        };
        if !ctx.jobs.is_empty() {
            if let Some(s) = self.streams.get_mut(&id) {
                s.remote = true;
            }
            self.send_job(ctx, id, JobKind::Head(Box::new(req)));
            if !has_body {
                self.send_job(ctx, id, JobKind::End);
            }
            return;
        }
        let mut out = Responder::new();
        if has_body {
            let (ex, o) =
                Exchange::start(&*ctx.service, req, ctx.options.max_buffered_body, &mut out);
            if o.panicked {
                add(&ctx.metrics.panics, 1);
            }
            let parts = out.take();
            if let Some(s) = self.streams.get_mut(&id) {
                s.exchange = Some(Box::new((ex, out)));
            }
            self.apply_parts(ctx, id, parts);
        } else {
            let o = Exchange::run_bodyless(&*ctx.service, req, &mut out);
            if o.panicked {
                add(&ctx.metrics.panics, 1);
            }
            let parts = out.take();
            self.apply_parts(ctx, id, parts);
        }
    }

    /// Run the service inline for a request without a body (`Event::End` already taken).
    fn answer_whole(
        &mut self,
        ctx: &mut WorkerCtx,
        id: StreamId,
        head: ferry_http2::Request,
        now: Instant,
    ) {
        let Some(req) = self.to_request(id, &head, false) else {
            let _ = self.conn.send_response(
                id,
                400,
                &[("content-type", b"text/plain")],
                Body::Full(Bytes::from_static(b"bad request\n")),
            );
            ctx.metrics.observe_latency_us(0);
            return;
        };
        drop(head);
        let mut out = Responder::new();
        let o = Exchange::run_bodyless(&*ctx.service, req, &mut out);
        if o.panicked {
            add(&ctx.metrics.panics, 1);
        }
        let parts = out.take();
        let finished = parts.len() == 1
            && matches!(
                &parts[0],
                Part::Head {
                    body: HeadBody::Empty | HeadBody::Full(_) | HeadBody::Length(0),
                    ..
                }
            );
        if finished {
            self.apply_parts(ctx, id, parts);
            ctx.metrics.observe_latency_us(0);
            return;
        }
        self.streams.insert(
            id,
            H2Stream {
                request_done: true,
                started: Some(now),
                ..H2Stream::default()
            },
        );
        self.apply_parts(ctx, id, parts);
        self.reap(ctx, id, now);
    }

    /// The application channel of stream `id`: one per stream, so a stream's jobs stay in
    /// order while a connection's streams spread over the application workers.
    fn channel(&self, ctx: &WorkerCtx, id: u64) -> usize {
        let key = self
            .info
            .token
            .wrapping_add((id as usize).wrapping_mul(0x9e37_79b9));
        shard(ctx.index, key, ctx.jobs.len())
    }

    fn send_job(&mut self, ctx: &mut WorkerCtx, id: StreamId, kind: JobKind) {
        let job = Job {
            io: ctx.index,
            token: self.info.token,
            gen: self.gen,
            id: RequestId::new(u64::from(id.get())),
            kind,
        };
        if !self.pending.is_empty() {
            self.pending.push_back(job);
            return;
        }
        let tx = &ctx.jobs[self.channel(ctx, job.id.get())];
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                add(&ctx.metrics.backpressure, 1);
                self.pending.push_back(job);
            }
            Err(TrySendError::Disconnected(_)) => self.app_gone(id),
        }
    }

    /// A request body passed the listener's `max_body` (as HTTP/1.1 enforces it): `413` when
    /// the application has not seen the request yet (the usual case: its `content-length`
    /// says so up front), else RST_STREAM CANCEL. Either way the stream is forgotten here, so
    /// the rest of its body is only returned to the flow-control window.
    fn body_too_large(&mut self, ctx: &mut WorkerCtx, id: StreamId) {
        add(&ctx.metrics.protocol_errors, 1);
        let Some(mut s) = self.streams.remove(&id) else {
            return;
        };
        if s.unreleased > 0 {
            self.conn.release_capacity(id, s.unreleased);
        }
        if s.head.is_some() {
            let _ = self.conn.send_response(
                id,
                413,
                &[("content-type", b"text/plain")],
                Body::Full(Bytes::from_static(b"content too large\n")),
            );
            return;
        }
        if let Some((ex, _)) = s.exchange.take().map(|b| *b) {
            ex.abort();
        }
        if s.remote && !s.request_done {
            self.send_job(ctx, id, JobKind::Abort);
        }
        let _ = self.conn.reset(id, Reason::CANCEL);
    }

    /// The application workers are gone (shutting down): the stream cannot be answered.
    fn app_gone(&mut self, id: StreamId) {
        let _ = self.conn.reset(id, Reason::INTERNAL_ERROR);
        if let Some(s) = self.streams.get_mut(&id) {
            s.remote = false;
            s.response_done = true;
        }
    }

    /// Retry jobs the application channels refused. Returns whether all went through.
    fn retry_pending(&mut self, ctx: &mut WorkerCtx, now: Instant) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        while let Some(job) = self.pending.pop_front() {
            let id = StreamId::new(job.id.get() as u32);
            match ctx.jobs[self.channel(ctx, job.id.get())].try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.pending.push_front(job);
                    return false;
                }
                Err(TrySendError::Disconnected(_)) => self.app_gone(id),
            }
        }
        // Room again: read what waited in the input buffer.
        self.process(ctx, now);
        self.pending.is_empty()
    }

    /// Apply an application worker's reply.
    fn apply_reply(&mut self, ctx: &mut WorkerCtx, reply: Reply, now: Instant) {
        if reply.gen != self.gen {
            return;
        }
        let id = StreamId::new(reply.id.get() as u32);
        if self.streams.contains_key(&id) {
            self.apply_parts(ctx, id, reply.parts);
            self.flush(ctx, id, now);
        }
        self.process(ctx, now);
    }

    fn on_event(&mut self, ctx: &mut WorkerCtx, ev: ferry_http2::Event, now: Instant) {
        use ferry_http2::Event;
        match ev {
            Event::Request { id, request } => {
                bump(&ctx.metrics.requests, 1);
                let whole = ctx.jobs.is_empty()
                    && matches!(self.conn.peek_event(), Some(Event::End { id: e }) if *e == id);
                if whole {
                    // The usual GET: the request ended with its head. Answer it at once; the
                    // stream gets an entry only if its response goes on after this.
                    let _ = self.conn.poll_event();
                    self.answer_whole(ctx, id, request, now);
                    return;
                }
                let too_large = request
                    .content_length()
                    .is_some_and(|n| n > ctx.http.max_body);
                self.streams.insert(
                    id,
                    H2Stream {
                        head: Some(request),
                        started: Some(now),
                        ..H2Stream::default()
                    },
                );
                if too_large {
                    self.body_too_large(ctx, id);
                }
            }
            Event::Data { id, data } => {
                let max_body = ctx.http.max_body;
                match self.streams.get_mut(&id) {
                    Some(s) => {
                        s.unreleased += data.len();
                        s.received += data.len() as u64;
                        if s.received > max_body {
                            self.body_too_large(ctx, id);
                            return;
                        }
                    }
                    None => self.conn.release_capacity(id, data.len()),
                }
                if self.streams.get(&id).is_some_and(|s| s.head.is_some()) {
                    self.start(ctx, id, true);
                }
                if self.streams.get(&id).is_some_and(|s| s.remote) {
                    self.send_job(ctx, id, JobKind::Data(data));
                    self.release(id);
                    return;
                }
                let parts = match self
                    .streams
                    .get_mut(&id)
                    .and_then(|s| s.exchange.as_deref_mut())
                {
                    Some((ex, out)) => {
                        let o = ex.data(&*ctx.service, data, ctx.options.max_buffered_body, out);
                        if o.panicked {
                            add(&ctx.metrics.panics, 1);
                        }
                        out.take()
                    }
                    None => Parts::new(),
                };
                self.apply_parts(ctx, id, parts);
                self.release(id);
            }
            Event::End { id } => {
                if self.streams.get(&id).is_some_and(|s| s.head.is_some()) {
                    self.start(ctx, id, false);
                } else if self.streams.get(&id).is_some_and(|s| s.remote) {
                    self.send_job(ctx, id, JobKind::End);
                } else if let Some((ex, mut out)) = self
                    .streams
                    .get_mut(&id)
                    .and_then(|s| s.exchange.take().map(|b| *b))
                {
                    let o = ex.end(&*ctx.service, &mut out);
                    if o.panicked {
                        add(&ctx.metrics.panics, 1);
                    }
                    let parts = out.take();
                    self.apply_parts(ctx, id, parts);
                }
                if let Some(s) = self.streams.get_mut(&id) {
                    s.request_done = true;
                }
                self.reap(ctx, id, now);
            }
            Event::Reset { id, .. } => {
                if let Some(mut s) = self.streams.remove(&id) {
                    if s.unreleased > 0 {
                        // The connection window still counts these octets.
                        self.conn.release_capacity(id, s.unreleased);
                    }
                    if let Some((ex, _)) = s.exchange.take().map(|b| *b) {
                        ex.abort();
                    }
                    if s.remote && !s.request_done {
                        self.send_job(ctx, id, JobKind::Abort);
                    }
                }
            }
            Event::SendReady { id } => {
                self.flush(ctx, id, now);
            }
            Event::Error { error } => {
                add(&ctx.metrics.protocol_errors, 1);
                tracing::debug!("h2 connection error: {error}");
            }
            _ => {}
        }
    }

    fn apply_parts(&mut self, ctx: &mut WorkerCtx, id: StreamId, parts: Parts) {
        for p in parts {
            match p {
                Part::Head {
                    status,
                    headers,
                    body,
                } => {
                    // Names are usually lowercase already: copy only those that are not.
                    let upper = |n: &str| n.bytes().any(|b| b.is_ascii_uppercase());
                    let owned: SmallVec<[String; 2]> = headers
                        .iter()
                        .filter(|(n, _)| upper(n))
                        .map(|(n, _)| n.to_ascii_lowercase())
                        .collect();
                    let mut next_owned = owned.iter();
                    let mut fields: SmallVec<[(&str, &[u8]); 8]> = SmallVec::new();
                    for (n, v) in headers.iter() {
                        let n: &str = if upper(n) {
                            next_owned.next().map_or("", String::as_str)
                        } else {
                            n
                        };
                        if !HOP_BY_HOP.contains(&n) {
                            fields.push((n, v));
                        }
                    }
                    let (wire, done, pull) = match body {
                        HeadBody::Empty => (Body::Empty, true, None),
                        HeadBody::Full(b) => (Body::Full(b), true, None),
                        HeadBody::Length(0) => (Body::Empty, true, None),
                        HeadBody::Length(_) | HeadBody::Chunked => (Body::Streaming, false, None),
                        HeadBody::Stream(it) => (Body::Streaming, false, Some(it)),
                    };
                    let ok = self.conn.send_response(id, status, &fields, wire).is_ok();
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.pull = pull;
                        if done || !ok {
                            s.response_done = true;
                        }
                    }
                    if ok && done {
                        bump(&ctx.metrics.responses, 1);
                    }
                }
                Part::Data { data, end } => {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.pending.push_back((data, end));
                    }
                    self.flush_pending(ctx, id);
                }
                // HTTP/2 sends no `100 Continue` (the client sends its body anyway).
                Part::Continue => {}
                Part::Abort => {
                    let _ = self.conn.reset(id, Reason::INTERNAL_ERROR);
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.response_done = true;
                        s.pending.clear();
                        s.pull = None;
                    }
                }
            }
        }
    }

    /// Give the peer its credit back once nothing waits to be sent on the stream.
    fn release(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.pending.is_empty() && s.unreleased > 0 {
                let n = std::mem::take(&mut s.unreleased);
                self.conn.release_capacity(id, n);
            }
        }
    }

    fn flush_pending(&mut self, ctx: &WorkerCtx, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        while let Some((b, end)) = s.pending.pop_front() {
            if self.conn.send_data(id, b.clone(), end).is_err() {
                if self.conn.send_capacity(id).is_none() {
                    // The stream is gone (reset): drop the rest.
                    s.pending.clear();
                    s.response_done = true;
                    return;
                }
                s.pending.push_front((b, end));
                return;
            }
            if end {
                s.response_done = true;
                bump(&ctx.metrics.responses, 1);
            }
        }
    }

    fn flush(&mut self, ctx: &mut WorkerCtx, id: StreamId, now: Instant) {
        self.flush_pending(ctx, id);
        self.pump(ctx, id);
        self.release(id);
        self.reap(ctx, id, now);
    }

    /// Pull from a streaming response body while the stream accepts data.
    fn pump(&mut self, ctx: &mut WorkerCtx, id: StreamId) {
        loop {
            let Some(s) = self.streams.get_mut(&id) else {
                return;
            };
            if !s.pending.is_empty() {
                return;
            }
            let Some(it) = s.pull.as_mut() else {
                return;
            };
            match catch_unwind(AssertUnwindSafe(|| it.next())) {
                Ok(Some(b)) => {
                    if !b.is_empty() {
                        s.pending.push_back((b, false));
                    }
                }
                Ok(None) => {
                    s.pull = None;
                    s.pending.push_back((Bytes::new(), true));
                }
                Err(_) => {
                    add(&ctx.metrics.panics, 1);
                    s.pull = None;
                    s.pending.push_back((Bytes::new(), true));
                }
            }
            self.flush_pending(ctx, id);
            if self.out.len() + self.conn.queued_output() >= ctx.options.write_high_water {
                return;
            }
        }
    }

    fn reap(&mut self, ctx: &WorkerCtx, id: StreamId, now: Instant) {
        if let Some(s) = self.streams.get(&id) {
            if s.request_done && s.response_done && s.pending.is_empty() && s.pull.is_none() {
                if let Some(t) = s.started {
                    ctx.metrics
                        .observe_latency_us(now.saturating_duration_since(t).as_micros() as u64);
                }
                self.streams.remove(&id);
            }
        }
    }
}

impl H2Session {
    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        !self.eof
            && self.pending.is_empty()
            && self.out.len() < ctx.options.write_high_water
            && self.input.len() < ctx.options.input_high_water
            && self.conn.wants_read()
    }
    fn is_finished(&self) -> bool {
        self.conn.is_closed() && self.out.is_empty()
    }
    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if !self.eof {
            self.eof = true;
            self.process(ctx, now);
            self.conn.handle_eof(now);
            self.process(ctx, now);
        }
    }
    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.conn.handle_timeout(now);
        self.process(ctx, now);
    }
    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.conn.close();
        self.process(ctx, now);
    }
    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        for _ in 0..64 {
            let before = self.input.len();
            if !self.input.is_empty() && self.pending.is_empty() && self.conn.wants_read() {
                // Errors are answered on the wire (GOAWAY); keep pumping until closed.
                if self.conn.handle_input(now, &mut self.input).is_err() {
                    self.input.clear();
                }
            }
            let mut progressed = self.input.len() != before;
            while let Some(ev) = self.conn.poll_event() {
                progressed = true;
                self.on_event(ctx, ev, now);
            }
            if !progressed {
                break;
            }
        }
        let ids: SmallVec<[StreamId; 8]> = self
            .streams
            .iter()
            .filter(|(_, s)| s.pull.is_some() || !s.pending.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.flush(ctx, id, now);
        }
        self.collect();
    }
    fn close(mut self, ctx: &mut WorkerCtx) {
        for (id, mut s) in std::mem::take(&mut self.streams) {
            if let Some((ex, _)) = s.exchange.take().map(|b| *b) {
                ex.abort();
            }
            if s.remote && !s.request_done && !ctx.jobs.is_empty() {
                // Best effort: with a full channel the app worker keeps the state until exit.
                let job = Job {
                    io: ctx.index,
                    token: self.info.token,
                    gen: self.gen,
                    id: RequestId::new(u64::from(id.get())),
                    kind: JobKind::Abort,
                };
                let _ = ctx.jobs[self.channel(ctx, job.id.get())].try_send(job);
            }
        }
    }
}

enum Mode {
    /// HTTP/1.1 so far; the first bytes (or the first request) may still switch.
    Undecided(HttpSession),
    H1(HttpSession),
    H2(Box<H2Session>),
    /// Only while switching (never observed outside `settle`).
    Switching,
}

/// The HTTP listener's session: HTTP/1.1, or h2c by prior knowledge or `Upgrade: h2c`.
pub struct HttpAuto {
    mode: Mode,
    /// Handed out by `input` in the (unobservable) `Switching` state.
    spare: BytesMut,
}

impl std::fmt::Debug for HttpAuto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mode {
            Mode::Undecided(s) | Mode::H1(s) => s.fmt(f),
            Mode::H2(s) => s.fmt(f),
            Mode::Switching => f.write_str("Switching"),
        }
    }
}

impl HttpAuto {
    /// Decide between HTTP/1.1 and prior-knowledge HTTP/2 from the first bytes; switch after an
    /// answered `Upgrade: h2c`.
    fn settle(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let decide = match &mut self.mode {
            Mode::Undecided(h) => match sniff(&h.input) {
                Sniff::Http2 => Some(true),
                Sniff::NeedMore if !h.saw_eof() => None,
                _ => Some(false),
            },
            Mode::H1(h) if h.has_h2c_upgrade() => Some(true),
            _ => None,
        };
        let Some(h2) = decide else {
            return;
        };
        let mode = std::mem::replace(&mut self.mode, Mode::Switching);
        self.mode = match mode {
            Mode::Undecided(mut h) if h2 => {
                let input = std::mem::take(&mut h.input);
                let info = *h.info();
                let mut s = H2Session::new(h2_config(&ctx.http), info, h.gen(), input, now);
                s.process(ctx, now);
                Mode::H2(Box::new(s))
            }
            Mode::Undecided(mut h) => {
                h.allow_h2c = true;
                h.process(ctx, now);
                if h.has_h2c_upgrade() {
                    self.mode = Mode::H1(h);
                    return self.settle(ctx, now);
                }
                Mode::H1(h)
            }
            Mode::H1(mut h) => match h.take_h2c_upgrade() {
                Some((up, input, out, out_bytes)) => {
                    let info = *h.info();
                    let mut s = H2Session::with_conn(
                        *up.conn,
                        info,
                        h.gen(),
                        input,
                        OutQueue::from_parts(out, out_bytes),
                    );
                    s.process(ctx, now);
                    Mode::H2(Box::new(s))
                }
                None => Mode::H1(h),
            },
            other => other,
        };
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match &$self.mode {
            Mode::Undecided($s) | Mode::H1($s) => $e,
            Mode::H2($s) => {
                let $s = &**$s;
                $e
            }
            Mode::Switching => Default::default(),
        }
    };
}

impl Session for HttpAuto {
    type Shared = ();
    type Mail = Reply;

    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<()>,
        info: ConnInfo,
        gen: u32,
        now: Instant,
    ) -> Option<Self> {
        <HttpSession as Session>::open(ctx, shared, info, gen, now).map(|h| HttpAuto {
            mode: Mode::Undecided(h),
            spare: BytesMut::new(),
        })
    }
    fn input(&mut self) -> &mut BytesMut {
        match &mut self.mode {
            Mode::Undecided(h) | Mode::H1(h) => &mut h.input,
            Mode::H2(s) => &mut s.input,
            Mode::Switching => &mut self.spare,
        }
    }
    fn release_idle(&mut self) {
        if let Mode::Undecided(h) | Mode::H1(h) = &mut self.mode {
            h.release_idle();
        }
    }
    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        match &self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.wants_read(ctx),
            Mode::H2(s) => s.wants_read(ctx),
            Mode::Switching => false,
        }
    }
    fn is_finished(&self) -> bool {
        each!(self, s => s.is_finished())
    }
    fn saw_eof(&self) -> bool {
        match &self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.saw_eof(),
            Mode::H2(s) => s.eof,
            Mode::Switching => false,
        }
    }
    fn has_pending(&self) -> bool {
        match &self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.has_pending(),
            Mode::H2(s) => !s.pending.is_empty(),
            Mode::Switching => false,
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        match &self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.poll_timeout(),
            Mode::H2(s) => s.conn.poll_timeout(),
            Mode::Switching => None,
        }
    }
    fn has_output(&self) -> bool {
        match &self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.has_output(),
            Mode::H2(s) => !s.out.is_empty(),
            Mode::Switching => false,
        }
    }
    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        match &self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.fill_iov(iov),
            Mode::H2(s) => s.out.fill_iov(iov),
            Mode::Switching => 0,
        }
    }
    fn written(&mut self, ctx: &WorkerCtx, n: usize) {
        match &mut self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.written(ctx, n),
            Mode::H2(s) => {
                bump(&ctx.metrics.bytes_out, n as u64);
                s.out.written(n)
            }
            Mode::Switching => {}
        }
    }
    fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        match &mut self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.take_out(max, into),
            Mode::H2(s) => s.out.take_out(max, into),
            Mode::Switching => {}
        }
    }
    fn sent(&mut self, ctx: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        match &mut self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.sent(ctx, n, chunks),
            Mode::H2(s) => {
                bump(&ctx.metrics.bytes_out, n as u64);
                s.out.sent(n, chunks)
            }
            Mode::Switching => {}
        }
    }
    fn on_read(&mut self, ctx: &WorkerCtx, n: usize) {
        // Written by this I/O worker only: a plain load and store, not a locked add.
        bump(&ctx.metrics.bytes_in, n as u64);
    }
    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.settle(ctx, now);
        if matches!(self.mode, Mode::Undecided(_)) {
            // EOF before the preface was complete: HTTP/1.1 answers whatever it was.
            if let Mode::Undecided(h) = std::mem::replace(&mut self.mode, Mode::Switching) {
                self.mode = Mode::H1(h);
            }
        }
        match &mut self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.on_eof(ctx, now),
            Mode::H2(s) => s.on_eof(ctx, now),
            Mode::Switching => {}
        }
        self.settle(ctx, now);
    }
    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        match &mut self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.on_timeout(ctx, now),
            Mode::H2(s) => s.on_timeout(ctx, now),
            Mode::Switching => {}
        }
    }
    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        match &mut self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.begin_shutdown(ctx, now),
            Mode::H2(s) => s.begin_shutdown(ctx, now),
            Mode::Switching => {}
        }
    }
    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if let Mode::H1(h) = &mut self.mode {
            if !h.has_h2c_upgrade() {
                // Settled on HTTP/1.1 (the common case): only an answered upgrade switches.
                h.process(ctx, now);
                if h.has_h2c_upgrade() {
                    self.settle(ctx, now);
                }
                return;
            }
        }
        self.settle(ctx, now);
        match &mut self.mode {
            Mode::Undecided(_) => {}
            Mode::H1(h) => {
                h.process(ctx, now);
                if h.has_h2c_upgrade() {
                    self.settle(ctx, now);
                }
            }
            Mode::H2(s) => s.process(ctx, now),
            Mode::Switching => {}
        }
    }
    fn retry_pending(&mut self, ctx: &mut WorkerCtx, now: Instant) -> bool {
        match &mut self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.retry_pending(ctx, now),
            Mode::H2(s) => s.retry_pending(ctx, now),
            Mode::Switching => true,
        }
    }
    fn take_mail(ctx: &mut WorkerCtx, shared: &(), into: &mut Vec<(usize, Reply)>) {
        <HttpSession as Session>::take_mail(ctx, shared, into)
    }
    fn apply_mail(&mut self, ctx: &mut WorkerCtx, mail: Reply, now: Instant) {
        match &mut self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.apply_reply(ctx, mail, now),
            Mode::H2(s) => s.apply_reply(ctx, mail, now),
            Mode::Switching => {}
        }
    }
    fn close(self, ctx: &mut WorkerCtx) {
        match self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.close(ctx),
            Mode::H2(s) => {
                let info = s.info;
                s.close(ctx);
                add(&ctx.metrics.closed, 1);
                let svc = ctx.service.clone();
                let _ = catch_unwind(AssertUnwindSafe(|| svc.on_disconnect(&info)));
            }
            Mode::Switching => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::WorkerMetrics;
    use crate::runtime::{Clock, ServerOptions};
    use crate::service::{Request, Response, Service};
    use crate::shutdown::{EventFd, Shutdown};

    struct Hello;
    impl Service for Hello {
        fn call(&self, req: Request) -> Response {
            Response::text(200, format!("hi {}", req.path()))
        }
    }

    fn ctx() -> WorkerCtx {
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
            jobs: Vec::new(),
            replies: None,
            waker: Arc::new(EventFd::new().unwrap()),
            shutdown: Shutdown::new(),
            clock: Clock::new(),
        }
    }

    fn info() -> ConnInfo {
        ConnInfo {
            worker: 0,
            token: 1,
            peer: None,
        }
    }

    fn drain(s: &mut HttpAuto, ctx: &WorkerCtx) -> Vec<u8> {
        let mut chunks = Vec::new();
        s.take_out(usize::MAX, &mut chunks);
        let v: Vec<u8> = chunks.iter().flat_map(|b| b.iter().copied()).collect();
        s.sent(ctx, v.len(), &mut chunks);
        v
    }

    #[test]
    fn http1_stays_http1() {
        let mut c = ctx();
        let mut s = HttpAuto::open(&mut c, &Arc::new(()), info(), 1, Instant::ZERO).unwrap();
        s.input()
            .extend_from_slice(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n");
        s.process(&mut c, Instant::ZERO);
        let out = String::from_utf8(drain(&mut s, &c)).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("hi /a"),
            "{out}"
        );
    }

    #[test]
    fn a_partial_preface_waits_then_switches_to_h2() {
        let mut c = ctx();
        let mut s = HttpAuto::open(&mut c, &Arc::new(()), info(), 1, Instant::ZERO).unwrap();
        s.input().extend_from_slice(b"PRI * HTTP/2.0\r\n");
        s.process(&mut c, Instant::ZERO);
        assert!(matches!(s.mode, Mode::Undecided(_)));
        assert!(!s.has_output());
        s.input().extend_from_slice(b"\r\nSM\r\n\r\n");
        s.process(&mut c, Instant::ZERO);
        assert!(matches!(s.mode, Mode::H2(_)));
        // Our SETTINGS frame (type 4) goes out first.
        let out = drain(&mut s, &c);
        assert!(out.len() >= 9 && out[3] == 4, "{out:?}");
    }

    #[test]
    fn upgrade_h2c_answers_101_then_speaks_h2() {
        let mut c = ctx();
        let mut s = HttpAuto::open(&mut c, &Arc::new(()), info(), 1, Instant::ZERO).unwrap();
        s.input().extend_from_slice(
            b"GET /u HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        );
        s.process(&mut c, Instant::ZERO);
        assert!(matches!(s.mode, Mode::H2(_)));
        let out = drain(&mut s, &c);
        assert!(out.starts_with(b"HTTP/1.1 101"), "{out:?}");
    }

    /// An upgrade HTTP/2 cannot take (undecodable or invalid `HTTP2-Settings`, or an
    /// HTTP/1.0 request: RFC 9110 §7.8) is answered over HTTP/1.1, not with a 101 and a
    /// GOAWAY that drops the request.
    #[test]
    fn unusable_h2c_upgrade_is_answered_over_http1() {
        for (version, settings) in [
            ("1.1", "!!!"),      // not base64url
            ("1.1", "AAMA"),     // not a whole setting
            ("1.1", "AAIAAAAC"), // ENABLE_PUSH = 2
            ("1.0", "AAMAAABk"), // valid, but HTTP/1.0
        ] {
            let mut c = ctx();
            let mut s = HttpAuto::open(&mut c, &Arc::new(()), info(), 1, Instant::ZERO).unwrap();
            s.input().extend_from_slice(
                format!("GET /u HTTP/{version}\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: {settings}\r\n\r\n").as_bytes(),
            );
            s.process(&mut c, Instant::ZERO);
            assert!(matches!(s.mode, Mode::H1(_)), "{version} {settings}");
            let out = String::from_utf8(drain(&mut s, &c)).unwrap();
            assert!(
                out.starts_with("HTTP/1.1 200") && out.ends_with("hi /u"),
                "{version} {settings}: {out}"
            );
        }
    }

    /// Answers with the name of the thread that ran it and the body length.
    struct ThreadName;
    impl Service for ThreadName {
        fn call(&self, req: Request) -> Response {
            let name = std::thread::current().name().unwrap_or("?").to_string();
            Response::text(200, format!("{name} {} {}", req.path(), req.body().len()))
        }
    }

    /// A client connection and the bytes it wants to send.
    fn client() -> ferry_http2::ClientConnection {
        ferry_http2::ClientConnection::new(Arc::new(ferry_http2::Config::default()), Instant::ZERO)
    }

    fn client_out(c: &mut ferry_http2::ClientConnection) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(b) = c.poll_transmit() {
            v.extend_from_slice(&b);
        }
        v
    }

    /// Feed the server's output to the client; the complete responses `(stream, status, body)`.
    fn responses(
        c: &mut ferry_http2::ClientConnection,
        bytes: &[u8],
        done: &mut Vec<(u32, u16, String)>,
    ) {
        let mut input = BytesMut::from(bytes);
        c.handle_input(Instant::ZERO, &mut input).unwrap();
        let mut partial: HashMap<u32, (u16, Vec<u8>)> = HashMap::new();
        while let Some(ev) = c.poll_event() {
            match ev {
                ferry_http2::Event::Response { id, response } => {
                    partial.insert(id.get(), (response.status(), Vec::new()));
                }
                ferry_http2::Event::Data { id, data } => {
                    c.release_capacity(id, data.len());
                    if let Some(p) = partial.get_mut(&id.get()) {
                        p.1.extend_from_slice(&data);
                    }
                }
                ferry_http2::Event::End { id } => {
                    if let Some((st, b)) = partial.remove(&id.get()) {
                        done.push((id.get(), st, String::from_utf8(b).unwrap()));
                    }
                }
                _ => {}
            }
        }
    }

    /// `/full` whole, `/chunks` as a pulled stream of pieces.
    struct FullOrChunks;
    impl Service for FullOrChunks {
        fn call(&self, req: Request) -> Response {
            if req.path() == "/chunks" {
                let pieces = vec![
                    Bytes::from_static(b"one "),
                    Bytes::from_static(b"two "),
                    Bytes::from_static(b"three"),
                ];
                Response::new(200).body(crate::service::Body::Chunked(Box::new(pieces.into_iter())))
            } else {
                Response::text(200, format!("full {}", req.path()))
            }
        }
    }

    #[test]
    fn h2_bodyless_requests_are_answered_inline_and_leave_no_state() {
        let mut c = ctx();
        c.service = Arc::new(FullOrChunks);
        let mut s = HttpAuto::open(&mut c, &Arc::new(()), info(), 1, Instant::ZERO).unwrap();
        let mut cl = client();
        for path in ["/full", "/chunks", "/bad path", "/full"] {
            let head = ferry_http2::RequestHead::new("GET", "http", "x", path);
            cl.send_request(&head, Body::Empty).unwrap();
        }
        s.input().extend_from_slice(&client_out(&mut cl));
        s.process(&mut c, Instant::ZERO);
        let mut done = Vec::new();
        for _ in 0..10 {
            responses(&mut cl, &drain(&mut s, &c), &mut done);
            s.input().extend_from_slice(&client_out(&mut cl));
            s.process(&mut c, Instant::ZERO);
        }
        done.sort();
        assert_eq!(
            done,
            [
                (1, 200, "full /full".to_string()),
                (3, 200, "one two three".to_string()),
                (5, 400, "bad request\n".to_string()),
                (7, 200, "full /full".to_string()),
            ]
        );
        let Mode::H2(h2) = &s.mode else {
            panic!("not h2")
        };
        assert!(h2.streams.is_empty(), "{:?}", h2.streams.len());
    }

    #[test]
    fn h2_streams_run_on_application_workers() {
        let bell = Arc::new(EventFd::new().unwrap());
        let (rtx, rrx) = crossbeam_channel::bounded(16);
        let (jobs, pool) = crate::pool::start_app_workers(
            2,
            4,
            Arc::new(ThreadName),
            1 << 20,
            vec![(rtx, bell)],
            vec![Arc::new(WorkerMetrics::default())],
        );
        let mut c = ctx();
        c.service = Arc::new(ThreadName);
        c.jobs = jobs;
        let mut s = HttpAuto::open(&mut c, &Arc::new(()), info(), 1, Instant::ZERO).unwrap();
        let mut cl = client();
        let head = ferry_http2::RequestHead::new("GET", "http", "x", "/get");
        cl.send_request(&head, Body::Empty).unwrap();
        let head = ferry_http2::RequestHead::new("POST", "http", "x", "/post");
        cl.send_request(&head, Body::Full(Bytes::from_static(b"hello")))
            .unwrap();
        s.input().extend_from_slice(&client_out(&mut cl));
        s.process(&mut c, Instant::ZERO);
        assert!(matches!(s.mode, Mode::H2(_)));
        let mut done = Vec::new();
        responses(&mut cl, &drain(&mut s, &c), &mut done);
        // Nothing was answered on this (the I/O) thread.
        assert!(done.is_empty(), "{done:?}");
        let mut replies = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while replies < 2 && std::time::Instant::now() < deadline {
            // As the driver does: retry what a full channel refused, then read the mail.
            s.retry_pending(&mut c, Instant::ZERO);
            if let Ok(reply) = rrx.recv_timeout(std::time::Duration::from_millis(50)) {
                assert_eq!((reply.token, reply.gen), (1, 1));
                s.apply_mail(&mut c, reply, Instant::ZERO);
                replies += 1;
            }
        }
        responses(&mut cl, &drain(&mut s, &c), &mut done);
        done.sort();
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(done[0].0, 1);
        assert!(
            done[0].2.starts_with("ferry-app-") && done[0].2.ends_with(" /get 0"),
            "{done:?}"
        );
        assert_eq!(done[1].0, 3);
        assert!(
            done[1].2.starts_with("ferry-app-") && done[1].2.ends_with(" /post 5"),
            "{done:?}"
        );
        assert!(done.iter().all(|d| d.1 == 200));
        s.close(&mut c);
        c.jobs.clear();
        assert_eq!(pool.join(), 0);
    }

    #[test]
    fn h2_full_channel_pauses_reading_and_drops_no_stream() {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(2);
        let mut c = ctx();
        c.jobs = vec![tx];
        let mut s = HttpAuto::open(&mut c, &Arc::new(()), info(), 7, Instant::ZERO).unwrap();
        let mut cl = client();
        for i in 0..5 {
            let path = format!("/{i}");
            let head = ferry_http2::RequestHead::new("GET", "http", "x", &path);
            cl.send_request(&head, Body::Empty).unwrap();
        }
        s.input().extend_from_slice(&client_out(&mut cl));
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
        let kind = |j: &Job| match j.kind {
            JobKind::Head(ref r) => format!("head {}", r.path()),
            JobKind::Data(_) => "data".into(),
            JobKind::End => "end".into(),
            JobKind::Abort => "abort".into(),
        };
        let mut seen: Vec<(u64, String)> = Vec::new();
        let mut jobs = Vec::new();
        for _ in 0..50 {
            for j in rx.try_iter() {
                seen.push((j.id.get(), kind(&j)));
                jobs.push(j);
            }
            if s.retry_pending(&mut c, Instant::ZERO) && rx.is_empty() {
                break;
            }
        }
        seen.extend(rx.try_iter().map(|j| {
            let k = (j.id.get(), kind(&j));
            jobs.push(j);
            k
        }));
        let want: Vec<(u64, String)> = (0..5u64)
            .flat_map(|i| [(2 * i + 1, format!("head /{i}")), (2 * i + 1, "end".into())])
            .collect();
        assert_eq!(seen, want);
        assert!(!s.has_pending());
        assert!(s.wants_read(&c));
        // Answer them all, as an application worker would: every stream gets its response.
        for j in jobs.iter().filter(|j| matches!(j.kind, JobKind::End)) {
            let mut out = Responder::new();
            out.respond(Response::text(200, format!("ok {}", j.id.get())));
            let reply = Reply {
                token: j.token,
                gen: j.gen,
                id: j.id,
                parts: out.take(),
            };
            s.apply_mail(&mut c, reply, Instant::ZERO);
        }
        // A stale reply (older connection generation) is ignored.
        let mut out = Responder::new();
        out.respond(Response::text(500, "stale"));
        s.apply_mail(
            &mut c,
            Reply {
                token: 1,
                gen: 6,
                id: RequestId::new(1),
                parts: out.take(),
            },
            Instant::ZERO,
        );
        let mut done = Vec::new();
        responses(&mut cl, &drain(&mut s, &c), &mut done);
        done.sort();
        let want: Vec<(u32, u16, String)> = (0..5u32)
            .map(|i| (2 * i + 1, 200, format!("ok {}", 2 * i + 1)))
            .collect();
        assert_eq!(done, want);
    }
}
