//! h2c on the HTTP listener: [`H2Session`] drives `ferry_http2::ServerConnection` with the same
//! [`Service`](crate::Service) as HTTP/1.1, and [`HttpAuto`] is the HTTP listener's session:
//! it starts as HTTP/1.1 and switches to HTTP/2 when the first bytes are the HTTP/2 preface
//! (prior knowledge, `ferry_http2::sniff`) or when the first request asks for `Upgrade: h2c`
//! (answered `101`, then stream 1 is that request).
//!
//! HTTP/2 requests run inline on the I/O worker (also with application workers configured).
//! The service sees each request as an HTTP/1.1-shaped [`Request`]: its head
//! is rebuilt as HTTP/1.1 text and parsed by `ferry_http1` (the crate has no public
//! constructor for a request head), with `content-length` or `transfer-encoding: chunked`
//! telling whether a body follows.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_http2::{sniff, Body, Reason, ServerConnection, Sniff, StreamId};
use ferry_proto::{Connection, Instant};
use smallvec::SmallVec;

use crate::driven::{OutQueue, Session};
use crate::metrics::add;
use crate::pool::Reply;
use crate::runtime::WorkerCtx;
use crate::service::{ConnInfo, Exchange, HeadBody, Part, Parts, Request, Responder};
use crate::session::HttpSession;

type PullStream = Box<dyn Iterator<Item = Bytes> + Send>;

#[derive(Default)]
struct H2Stream {
    /// The request head until the first body piece or the end shows whether a body follows.
    head: Option<ferry_http2::Request>,
    exchange: Option<(Exchange, Responder)>,
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
}

/// One HTTP/2 connection (h2c) as an I/O worker drives it.
pub struct H2Session {
    conn: ServerConnection,
    input: BytesMut,
    out: OutQueue,
    info: ConnInfo,
    streams: HashMap<StreamId, H2Stream>,
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

fn h2_config() -> Arc<ferry_http2::Config> {
    use std::sync::OnceLock;
    static CONFIG: OnceLock<Arc<ferry_http2::Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut c = ferry_http2::Config::default();
            c.auto_release = false;
            Arc::new(c)
        })
        .clone()
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
    fn with_conn(conn: ServerConnection, info: ConnInfo, input: BytesMut, out: OutQueue) -> Self {
        H2Session {
            conn,
            input,
            out,
            info,
            streams: HashMap::new(),
            eof: false,
        }
    }

    /// A prior-knowledge connection whose first bytes are in `input`.
    pub fn new(info: ConnInfo, input: BytesMut, now: Instant) -> H2Session {
        H2Session::with_conn(
            ServerConnection::new(h2_config(), now),
            info,
            input,
            OutQueue::default(),
        )
    }

    fn collect(&mut self) {
        while let Some(b) = self.conn.poll_transmit() {
            self.out.push(b);
        }
    }

    /// Rebuild `head` as an HTTP/1.1 request the service understands.
    fn to_request(
        &self,
        ctx: &WorkerCtx,
        head: &ferry_http2::Request,
        has_body: bool,
        now: Instant,
    ) -> Option<Request> {
        let mut text = BytesMut::with_capacity(256);
        text.put_slice(head.method().as_bytes());
        text.put_u8(b' ');
        text.put_slice(head.path().as_bytes());
        text.put_slice(b" HTTP/1.1\r\nhost: ");
        text.put_slice(head.authority().unwrap_or("localhost").as_bytes());
        text.put_slice(b"\r\n");
        let mut has_length = false;
        for (n, v) in head.fields().iter() {
            if n == "host" || HOP_BY_HOP.contains(&n) || n.starts_with(':') {
                continue;
            }
            if n == "content-length" {
                if !has_body {
                    continue;
                }
                has_length = true;
            }
            text.put_slice(n.as_bytes());
            text.put_slice(b": ");
            text.put_slice(v);
            text.put_slice(b"\r\n");
        }
        if has_body && !has_length {
            text.put_slice(b"transfer-encoding: chunked\r\n");
        }
        text.put_slice(b"\r\n");
        let mut h1 = ferry_http1::ServerConnection::new(ctx.http.clone(), now);
        h1.handle_input(now, &mut text).ok()?;
        match h1.poll_event()? {
            ferry_http1::server::Event::Request(h) => {
                Some(Request::new(h, Bytes::new(), self.info))
            }
            _ => None,
        }
    }

    fn start(&mut self, ctx: &mut WorkerCtx, id: StreamId, has_body: bool, now: Instant) {
        let Some(head) = self.streams.get_mut(&id).and_then(|s| s.head.take()) else {
            return;
        };
        let Some(req) = self.to_request(ctx, &head, has_body, now) else {
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
        let mut out = Responder::new();
        if has_body {
            let (ex, o) =
                Exchange::start(&*ctx.service, req, ctx.options.max_buffered_body, &mut out);
            if o.panicked {
                add(&ctx.metrics.panics, 1);
            }
            let parts = out.take();
            if let Some(s) = self.streams.get_mut(&id) {
                s.exchange = Some((ex, out));
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

    fn on_event(&mut self, ctx: &mut WorkerCtx, ev: ferry_http2::Event, now: Instant) {
        use ferry_http2::Event;
        match ev {
            Event::Request { id, request } => {
                add(&ctx.metrics.requests, 1);
                self.streams.insert(
                    id,
                    H2Stream {
                        head: Some(request),
                        started: Some(now),
                        ..H2Stream::default()
                    },
                );
            }
            Event::Data { id, data } => {
                match self.streams.get_mut(&id) {
                    Some(s) => s.unreleased += data.len(),
                    None => self.conn.release_capacity(id, data.len()),
                }
                if self.streams.get(&id).is_some_and(|s| s.head.is_some()) {
                    self.start(ctx, id, true, now);
                }
                let parts = match self.streams.get_mut(&id).and_then(|s| s.exchange.as_mut()) {
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
                    self.start(ctx, id, false, now);
                } else if let Some((ex, mut out)) =
                    self.streams.get_mut(&id).and_then(|s| s.exchange.take())
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
                    if let Some((ex, _)) = s.exchange.take() {
                        ex.abort();
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
                    let lower: SmallVec<[(String, Bytes); 8]> = headers
                        .iter()
                        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                        .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()))
                        .collect();
                    let fields: SmallVec<[(&str, &[u8]); 8]> = lower
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_ref()))
                        .collect();
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
                        add(&ctx.metrics.responses, 1);
                    }
                }
                Part::Data { data, end } => {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.pending.push_back((data, end));
                    }
                    self.flush_pending(ctx, id);
                }
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
                add(&ctx.metrics.responses, 1);
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
            if !self.input.is_empty() && self.conn.wants_read() {
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
    fn close(mut self) {
        for (_, mut s) in self.streams.drain() {
            if let Some((ex, _)) = s.exchange.take() {
                ex.abort();
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
                let mut s = H2Session::new(info, input, now);
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
                    let pairs: Vec<(&str, &[u8])> = up
                        .fields
                        .iter()
                        .map(|(n, v)| (n.as_str(), &v[..]))
                        .collect();
                    match ServerConnection::from_upgrade(
                        h2_config(),
                        now,
                        &up.settings,
                        &up.method,
                        &up.path,
                        &pairs,
                    ) {
                        Ok(conn) => {
                            let mut s = H2Session::with_conn(
                                conn,
                                info,
                                input,
                                OutQueue::from_parts(out, out_bytes),
                            );
                            s.process(ctx, now);
                            Mode::H2(Box::new(s))
                        }
                        Err(_) => {
                            // The 101 went out already: nothing sensible to continue with.
                            let mut s = H2Session::new(info, BytesMut::new(), now);
                            s.out = OutQueue::from_parts(out, out_bytes);
                            s.conn.close();
                            s.eof = true;
                            Mode::H2(Box::new(s))
                        }
                    }
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
            _ => false,
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
                add(&ctx.metrics.bytes_out, n as u64);
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
                add(&ctx.metrics.bytes_out, n as u64);
                s.out.sent(n, chunks)
            }
            Mode::Switching => {}
        }
    }
    fn on_read(&mut self, ctx: &WorkerCtx, n: usize) {
        add(&ctx.metrics.bytes_in, n as u64);
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
            _ => true,
        }
    }
    fn take_mail(ctx: &mut WorkerCtx, shared: &(), into: &mut Vec<(usize, Reply)>) {
        <HttpSession as Session>::take_mail(ctx, shared, into)
    }
    fn apply_mail(&mut self, ctx: &mut WorkerCtx, mail: Reply, now: Instant) {
        if let Mode::Undecided(h) | Mode::H1(h) = &mut self.mode {
            h.apply_reply(ctx, mail, now);
        }
    }
    fn close(self, ctx: &mut WorkerCtx) {
        match self.mode {
            Mode::Undecided(h) | Mode::H1(h) => h.close(ctx),
            Mode::H2(s) => {
                let info = s.info;
                s.close();
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
}
