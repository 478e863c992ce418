//! HTTP/2 clients of the HTTP proxy: h2c with prior knowledge on a plain listener (the
//! client connection preface is recognized in the first bytes) and h2 over TLS (ALPN `h2`,
//! offered before `http/1.1`). A client connection ([`Down`]) that speaks HTTP/2 runs a
//! `ferry_http2::ServerConnection` instead of the HTTP/1.1 one; each request stream becomes
//! one [`Exchange`] on the same upstream machinery as an HTTP/1.1 request (balancing, the
//! keep-alive pools, breakers, retries of idempotent requests, timeouts, forwarded fields,
//! trace context, access log, rate limit, metrics), sent to the upstream as HTTP/1.1.
//!
//! - Request head: `:method`, `:path` and `:authority` become the request line and `Host`
//!   (RFC 9113 §8.3.1: `:authority` wins over a `host` field), `cookie` fields are joined
//!   with `; ` (§8.2.3), `te: trailers` is kept for an HTTP/2 upstream (hop-by-hop, it
//!   never goes to an HTTP/1.1 one; the HTTP/2 parser already refused every other
//!   connection-specific field). A head HTTP/1.1 cannot carry is answered `400`; CONNECT
//!   (plain or extended) `501`.
//! - Response head: the upstream's fields without the hop-by-hop ones (standard or named by
//!   `Connection`), names lower-cased, `content-length` kept when the upstream gave one,
//!   plus `via`; interim responses (1xx but 100 and 101) go as interim HEADERS.
//! - Trailers ([`super::trailers`]): request trailers (a HEADERS frame ending the stream)
//!   go to the upstream as the chunked body's trailer section (a body with a
//!   `content-length` cannot carry them: dropped); the upstream's response trailers end
//!   the stream as a HEADERS frame with END_STREAM. Forbidden and hop-by-hop fields are
//!   removed either way.
//! - Streams are independent: each has its own checkout (identified in the mails by a
//!   per-stream tag), so concurrent streams spread over upstream connections, and a
//!   failure gets that stream a `502`/`503`/`504` (or a retry), or, once its response
//!   started, an RST_STREAM; the connection goes on.
//! - Flow control is end-to-end backpressure: request DATA is handed on as it arrives and
//!   its window credit returns (WINDOW_UPDATE) only as the upstream connection writes it;
//!   response bytes are acknowledged to the upstream connection only once they left the
//!   HTTP/2 send queue (within the client's windows), so each stream holds at most
//!   [`WINDOW`] of response in the proxy.
//! - A client RST_STREAM ends the stream's exchange; its upstream connection is closed,
//!   not reused, unless the response had ended. Proxy shutdown sends GOAWAY (graceful,
//!   two-phase); open streams finish.

use std::collections::HashMap;

use ferry_http2::{Event as H2Event, Reason, StreamId};

use super::*;

/// The HTTP/2 settings of the proxy's client connections.
pub(super) fn config(cfg: &ProxyConfig) -> ferry_http2::Config {
    let mut c = ferry_http2::Config::default();
    c.max_concurrent_streams = cfg.http2_max_streams.max(1);
    c.max_header_list_size = cfg.http2_max_header_list.max(1024);
    // Credit goes back as the upstream takes the bytes (`release_capacity`).
    c.auto_release = false;
    c.enable_push = false;
    c.enable_connect_protocol = false;
    // A stream never has more than `WINDOW` of response unacknowledged, so these never
    // refuse what an upstream sent.
    c.max_send_buffer = 2 * WINDOW;
    c.max_send_buffer_connection = (c.max_concurrent_streams as usize).saturating_mul(2 * WINDOW);
    c
}

/// A client connection's HTTP/2 side.
pub(super) struct H2 {
    conn: ferry_http2::ServerConnection,
    /// Exchanges in progress, by stream id.
    streams: HashMap<u32, Stream>,
    /// The tag of each stream's current attempt (its checkout and its attachment to an
    /// upstream connection, echoed in the mails) → stream id.
    tags: HashMap<u32, u32>,
    next_tag: u32,
}

/// One request stream's exchange.
struct Stream {
    ex: Exchange,
    /// The tag of the current attempt.
    tag: u32,
    /// Response bytes handed to the connection and not yet acknowledged to the upstream.
    owed: usize,
    /// When it last moved (body bytes either way).
    progress: Instant,
}

impl H2 {
    /// A new tag for stream `id`'s next attempt (its earlier tag is forgotten: mails for it
    /// are stale).
    fn new_tag(&mut self, id: u32) -> u32 {
        if let Some(s) = self.streams.get(&id) {
            self.tags.remove(&s.tag);
        }
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        self.tags.insert(self.next_tag, id);
        if let Some(s) = self.streams.get_mut(&id) {
            s.tag = self.next_tag;
        }
        self.next_tag
    }

    /// Take stream `id`'s exchange out (its tag is forgotten).
    fn take(&mut self, id: u32) -> Option<Stream> {
        let s = self.streams.remove(&id)?;
        self.tags.remove(&s.tag);
        Some(s)
    }

    fn stream_of(&self, tag: u32) -> Option<u32> {
        self.tags.get(&tag).copied()
    }
}

/// Why a request head cannot go upstream as HTTP/1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Not expressible in HTTP/1.1 (a field value, method or path it does not allow, a
    /// `content-length` the stream contradicts): `400`.
    BadRequest,
    /// CONNECT (plain or extended): `501`.
    Connect,
}

impl Refused {
    fn status(self) -> u16 {
        match self {
            Refused::BadRequest => 400,
            Refused::Connect => 501,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Refused::BadRequest => "request head not valid for HTTP/1.1",
            Refused::Connect => "CONNECT over HTTP/2 is not supported",
        }
    }
}

/// The HTTP/1.1 request head for an HTTP/2 request (`end`: its HEADERS ended the stream):
/// `:method` `:path` as the request line, `:authority` as `Host` (or the `host` field when
/// there is no `:authority`; neither, or an invalid one, is a `400`, as is a target not in
/// origin-form), `cookie` crumbs joined in one field, `te: trailers` kept (hop-by-hop for HTTP/1.1). The body goes as
/// `Content-Length` when the request declared one, else chunked.
pub(super) fn to_http1(
    req: &ferry_http2::Request,
    id: StreamId,
    end: bool,
) -> Result<ferry_http1::Request, Refused> {
    if req.method_bytes() == b"CONNECT" {
        return Err(Refused::Connect);
    }
    let authority = req.authority_bytes().filter(|a| !a.is_empty());
    let fields = req.fields();
    let mut cookie: Vec<u8> = Vec::new();
    let mut list: SmallVec<[(&[u8], &[u8]); 16]> = SmallVec::new();
    if let Some(a) = authority {
        list.push((b"host", a));
    }
    for (n, v) in fields.iter() {
        match n {
            "host" if authority.is_some() => {}
            "cookie" => {
                if !cookie.is_empty() {
                    cookie.extend_from_slice(b"; ");
                }
                cookie.extend_from_slice(v);
            }
            _ => list.push((n.as_bytes(), v)),
        }
    }
    if !cookie.is_empty() {
        list.push((b"cookie", &cookie));
    }
    // RFC 9113 §8.3.1: an `http`/`https` request carries `:authority` or `Host`; HTTP/1.1
    // needs exactly one valid `Host` (RFC 9112 §3.2), and a target in origin-form (or `*`
    // for OPTIONS): what an HTTP/1.1 upstream would refuse is refused here.
    let mut hosts = list.iter().filter(|(n, _)| *n == b"host");
    let host_ok = hosts
        .next()
        .is_some_and(|(_, v)| ferry_http1::head::is_host_value(v))
        && hosts.next().is_none();
    let path = req.path_bytes();
    let target_ok =
        path.first() == Some(&b'/') || (path == b"*" && req.method_bytes() == b"OPTIONS");
    if !host_ok || !target_ok {
        return Err(Refused::BadRequest);
    }
    let body = match req.content_length() {
        Some(n) if end && n > 0 => return Err(Refused::BadRequest),
        Some(n) => BodyKind::Length(n),
        None if end => BodyKind::Empty,
        None => BodyKind::Chunked,
    };
    ferry_http1::Request::from_parts(
        RequestId::new(u64::from(id.get())),
        req.method_bytes(),
        req.path_bytes(),
        ferry_http1::Version::Http11,
        list,
        body,
    )
    .map_err(|_| Refused::BadRequest)
}

/// The fields of an upstream's response head for HTTP/2: hop-by-hop ones (standard or
/// named by `Connection`) dropped, names lower-cased into `names` (one buffer), and
/// `content-length` when `length` is known; `via` last.
pub(super) fn response_fields<'a>(
    resp: &'a ferry_http1::Response,
    length: Option<&'a [u8]>,
    names: &'a mut Vec<u8>,
) -> SmallVec<[(&'a str, &'a [u8]); 16]> {
    let named = response_connection_names(resp);
    let mut spans: SmallVec<[(usize, usize, &[u8]); 16]> = SmallVec::new();
    names.clear();
    for (n, v) in resp.headers().iter_bytes() {
        if !forward_response_field(n, &named) {
            continue;
        }
        let start = names.len();
        names.extend(n.iter().map(u8::to_ascii_lowercase));
        spans.push((start, names.len(), v));
    }
    let names: &'a [u8] = names;
    let mut out: SmallVec<[(&str, &[u8]); 16]> = spans
        .into_iter()
        .map(|(a, b, v)| (std::str::from_utf8(&names[a..b]).unwrap_or(""), v))
        .collect();
    if let Some(l) = length {
        out.push(("content-length", l));
    }
    out.push(("via", b"1.1 ferry"));
    out
}

impl Down {
    /// The first bytes: HTTP/2 (ALPN `h2`, or the client preface) or HTTP/1.x. `false`
    /// while they could still be the preface.
    pub(super) fn sniff(&mut self, now: Instant) -> bool {
        let alpn_h2 = self
            .io
            .tls()
            .and_then(|t| t.alpn_protocol())
            .is_some_and(|p| p == ferry_http2::ALPN_H2);
        let verdict = if alpn_h2 {
            ferry_http2::Sniff::Http2
        } else {
            ferry_http2::sniff(&self.io.input)
        };
        match verdict {
            ferry_http2::Sniff::NeedMore => return false,
            ferry_http2::Sniff::Http2 => {
                add(&self.shared.stats.h2_connections, 1);
                self.h2 = Some(Box::new(H2 {
                    conn: ferry_http2::ServerConnection::new(self.shared.h2.clone(), now),
                    streams: HashMap::new(),
                    tags: HashMap::new(),
                    next_tag: 0,
                }));
            }
            _ => {}
        }
        self.sniffing = false;
        true
    }

    /// Input, events and output of the HTTP/2 side.
    pub(super) fn h2_process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        if !self.io.input.is_empty() {
            let _ = h.conn.handle_input(now, &mut self.io.input);
        }
        loop {
            let Some(ev) = self.h2.as_deref_mut().and_then(|h| h.conn.poll_event()) else {
                break;
            };
            self.h2_event(ctx, ev, now);
        }
        self.h2_flush(ctx, now);
    }

    fn h2_event(&mut self, ctx: &mut WorkerCtx, ev: H2Event, now: Instant) {
        match ev {
            H2Event::Request { id, request } => self.h2_request(ctx, id, request, now),
            H2Event::Data { id, data } => self.h2_body(ctx, id, data, false, now),
            H2Event::End { id } => self.h2_body(ctx, id, Bytes::new(), true, now),
            H2Event::Reset { id, .. } => self.h2_abort(ctx, id.get(), 499, now),
            H2Event::Trailers { id, trailers } => self.h2_req_trailers(ctx, id, &trailers),
            // Errors and GOAWAY end the streams through `Reset`, or the connection.
            _ => {}
        }
    }

    /// A request head: refused here, or made an exchange and dispatched.
    fn h2_request(
        &mut self,
        ctx: &mut WorkerCtx,
        id: StreamId,
        request: ferry_http2::Request,
        now: Instant,
    ) {
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        let end = matches!(h.conn.peek_event(), Some(H2Event::End { id: e }) if *e == id);
        let head = match to_http1(&request, id, end) {
            Ok(head) => head,
            Err(why) => {
                tracing::debug!(?why, "HTTP/2 request refused");
                let text = local_text(&self.shared, why.status(), request.method(), why.text());
                self.h2_respond(id, why.status(), &text, &[]);
                if let Some(log) = self.shared.access.as_deref() {
                    let client = self.io.peer_addr().map(|p| p.ip().to_string());
                    let e = Entry {
                        client: client.as_deref().unwrap_or_default().as_bytes(),
                        method: request.method_bytes(),
                        target: request.path_bytes(),
                        protocol: "HTTP/2.0",
                        status: why.status(),
                        ..Entry::default()
                    };
                    log.record(ctx.index, &e);
                }
                return;
            }
        };
        if head.expects_continue() && !end {
            // The upstream never sees `Expect` (hop-by-hop): the body is asked for here.
            let _ = h.conn.send_informational(id, 100, &[]);
        }
        self.init_fwd(&head);
        let sh = self.shared.clone();
        let over = match sh.limiter.as_ref() {
            Some(l) => self.over_limit(l, &head, now),
            None => None,
        };
        let peer = (
            self.peer_ip.as_deref(),
            self.trusted,
            self.fwd_host.as_deref(),
        );
        let mut ex = {
            let mut ws = sh.worker(ctx.index);
            exchange(&sh, &mut ws, peer, head, now)
        };
        ex.h2 = true;
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        let sid = id.get();
        h.streams.insert(
            sid,
            Stream {
                ex,
                tag: 0,
                owed: 0,
                progress: now,
            },
        );
        match over {
            None => self.h2_dispatch(ctx, sid, now),
            Some(wait) => {
                add(&sh.stats.answered_429, 1);
                let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64;
                let retry = itoa::Buffer::new().format(secs).as_bytes().to_vec();
                let why = "rate limit for this client";
                self.h2_answer(ctx, sid, 429, why, &[("retry-after", &retry)], now);
            }
        }
    }

    /// Send stream `sid`'s exchange to an upstream (first attempt or retry).
    fn h2_dispatch(&mut self, ctx: &mut WorkerCtx, sid: u32, now: Instant) {
        let sh = self.shared.clone();
        let me = self.io.me();
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        let tag = h.new_tag(sid);
        let Some(s) = h.streams.get_mut(&sid) else {
            return;
        };
        let retry = s.ex.attempts > 0;
        let ws = sh.worker(ctx.index);
        match dispatch_attempt(ctx, &sh, ws, &mut s.ex, (me, tag), now) {
            Dispatched::Ready(lease) => self.h2_attach(ctx, sid, lease, now),
            Dispatched::Pending => {}
            Dispatched::Failed(why) => self.h2_failed(ctx, sid, why, (true, false, false), now),
            Dispatched::Nowhere(why) => {
                let (status, text) = nowhere_answer(&sh, &s.ex, retry, why);
                self.h2_answer(ctx, sid, status, &text, &[], now);
            }
        }
    }

    /// Stream `sid`'s attempt got its upstream connection: the request and the body so far.
    fn h2_attach(&mut self, ctx: &mut WorkerCtx, sid: u32, lease: Lease, now: Instant) {
        let sh = self.shared.clone();
        let me = self.io.me();
        let s = self
            .h2
            .as_deref_mut()
            .and_then(|h| h.streams.get_mut(&sid))
            .filter(|s| s.ex.lease.is_none() && s.ex.up.is_none() && s.ex.upstream == *lease.key());
        let Some(s) = s else {
            sh.worker(ctx.index)
                .checkin(ctx, &sh.stats, lease, true, now);
            return;
        };
        let up = lease.conn().peer;
        s.ex.waiter = None;
        s.ex.up = Some(up);
        s.ex.lease = Some(lease);
        let req = send_req(
            &sh,
            &s.ex,
            (me, s.tag),
            (&self.fwd, &self.fwd_base),
            &self.xfcc,
        );
        send(ctx, up, Kind::Send(Parcel::send(&mut self.spare, req)));
        if let Some(t) = &s.ex.req_trailers {
            send(ctx, up, Kind::Trailers(t.clone(), None));
        }
        for (b, end) in s.ex.held.drain(..) {
            send(ctx, up, Kind::ReqData(b, end));
        }
    }

    /// Request body bytes (`end`: the stream's end) of stream `id`.
    fn h2_body(&mut self, ctx: &mut WorkerCtx, id: StreamId, data: Bytes, end: bool, now: Instant) {
        let max_replay = self.shared.cfg.max_replay_body;
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        let Some(s) = h.streams.get_mut(&id.get()).filter(|s| !s.ex.resp_done) else {
            // Answered already: the rest of the body is dropped (its credit returned).
            h.conn.release_capacity(id, data.len());
            return;
        };
        s.progress = now;
        let ex = &mut s.ex;
        if end {
            ex.req_done = true;
        }
        ex.keep_for_replay(&data, max_replay);
        if data.is_empty() && ex.head.body_kind() == BodyKind::Empty {
            return;
        }
        match ex.up {
            Some(up) => send(ctx, up, Kind::ReqData(data, end)),
            None => ex.held.push_back((data, end)),
        }
    }

    /// Stream `id`'s request trailers: kept for a replay and handed to the upstream
    /// connection (the stream's end follows).
    fn h2_req_trailers(&mut self, ctx: &WorkerCtx, id: StreamId, fields: &ferry_http2::Fields) {
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        let Some(s) = h.streams.get_mut(&id.get()).filter(|s| !s.ex.resp_done) else {
            return;
        };
        let Some(t) = Trailers::of_http2(fields) else {
            return;
        };
        if let Some(up) = s.ex.up {
            send(ctx, up, Kind::Trailers(t.clone(), None));
        }
        s.ex.req_trailers = Some(t);
    }

    /// Stream `sid`'s attempt failed (`(before_response, fresh, unsent)` as for
    /// [`Down::failed`]): again elsewhere, or answered (reset once its response started).
    fn h2_failed(
        &mut self,
        ctx: &mut WorkerCtx,
        sid: u32,
        why: UpFailure,
        (before, fresh, unsent): (bool, bool, bool),
        now: Instant,
    ) {
        let sh = self.shared.clone();
        let Some(s) = self.h2.as_deref_mut().and_then(|h| h.streams.get_mut(&sid)) else {
            return;
        };
        if s.ex.upstream == usize::MAX {
            return;
        }
        let i = s.ex.upstream;
        if fail_attempt(ctx, &sh, &mut s.ex, why, before, fresh, unsent, now) {
            tracing::debug!(
                "upstream {} failed ({}); retrying",
                sh.stats.upstreams[i].addr,
                why.text()
            );
            self.h2_dispatch(ctx, sid, now);
            return;
        }
        if s.ex.resp_started {
            let status = s.ex.status;
            self.h2_abort(ctx, sid, status, now);
            self.h2_reset(sid, Reason::INTERNAL_ERROR);
        } else {
            let text = format!("upstream {}: {}", sh.stats.upstreams[i].addr, why.text());
            self.h2_answer(ctx, sid, why.status(), &text, &[], now);
        }
    }

    /// The proxy's own answer to stream `sid`; its exchange ends.
    fn h2_answer(
        &mut self,
        ctx: &mut WorkerCtx,
        sid: u32,
        status: u16,
        why: &str,
        extra: &[(&str, &[u8])],
        now: Instant,
    ) {
        let sh = self.shared.clone();
        let Some(mut s) = self.h2.as_deref_mut().and_then(|h| h.take(sid)) else {
            return;
        };
        let text = local_text(&sh, status, s.ex.head.method_str(), why);
        if let Some(log) = sh.access.as_deref() {
            let ip = self.peer_ip.as_deref();
            log_exchange(log, &sh, ctx, ip, &s.ex, status, text.len() as u64, now);
        }
        release(&sh, ctx, &mut s.ex, false, now);
        self.h2_respond(StreamId::new(sid), status, &text, extra);
    }

    /// A whole response of the proxy's own on stream `id`.
    fn h2_respond(&mut self, id: StreamId, status: u16, text: &str, extra: &[(&str, &[u8])]) {
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        let mut fields: SmallVec<[(&str, &[u8]); 3]> = SmallVec::new();
        fields.push(("content-type", b"text/plain; charset=utf-8"));
        fields.push(("via", b"1.1 ferry"));
        fields.extend_from_slice(extra);
        let body = ferry_http2::Body::Full(Bytes::copy_from_slice(text.as_bytes()));
        let _ = h.conn.send_response(id, status, &fields, body);
    }

    fn h2_reset(&mut self, sid: u32, reason: Reason) {
        if let Some(h) = self.h2.as_deref_mut() {
            let _ = h.conn.reset(StreamId::new(sid), reason);
        }
    }

    /// Stream `sid`'s exchange ends without a response of its own (client reset, failure
    /// mid-response): logged with `status` (499: the client left), its upstream connection
    /// closed unless the response had ended.
    fn h2_abort(&mut self, ctx: &mut WorkerCtx, sid: u32, status: u16, now: Instant) {
        let sh = self.shared.clone();
        let Some(mut s) = self.h2.as_deref_mut().and_then(|h| h.take(sid)) else {
            return;
        };
        if let Some(log) = sh.access.as_deref() {
            let ip = self.peer_ip.as_deref();
            log_exchange(log, &sh, ctx, ip, &s.ex, status, s.ex.resp_bytes, now);
        }
        if status == 499 {
            sh.stats.client_aborts.fetch_add(1, Relaxed);
        }
        release(&sh, ctx, &mut s.ex, false, now);
    }

    /// Mail from an upstream connection (or the pool) for one of the streams.
    pub(super) fn h2_apply(&mut self, ctx: &mut WorkerCtx, kind: Kind, now: Instant) {
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        match kind {
            Kind::Leased(lease, wait) => match h.stream_of(wait) {
                Some(sid) => self.h2_attach(ctx, sid, *lease, now),
                None => {
                    let sh = &*self.shared;
                    sh.worker(ctx.index)
                        .checkin(ctx, &sh.stats, *lease, true, now);
                }
            },
            Kind::PoolFailed(timed_out, wait) => {
                let Some(sid) = h.stream_of(wait) else { return };
                let Some(s) = h.streams.get_mut(&sid).filter(|s| s.ex.up.is_none()) else {
                    return;
                };
                s.ex.waiter = None;
                let why = if timed_out {
                    UpFailure::PoolTimeout
                } else {
                    UpFailure::Connect
                };
                self.h2_failed(ctx, sid, why, (true, false, false), now);
            }
            Kind::Ack(n, tag) => {
                if let Some(sid) = h.stream_of(tag) {
                    if let Some(s) = h.streams.get_mut(&sid) {
                        s.progress = now;
                    }
                    h.conn.release_capacity(StreamId::new(sid), n);
                }
            }
            Kind::Failed {
                why,
                before,
                fresh,
                unsent,
                tag,
                wait,
            } => {
                let Some(sid) = h.stream_of(tag.unwrap_or(wait)) else {
                    return;
                };
                let current = h
                    .streams
                    .get(&sid)
                    .is_some_and(|s| s.ex.up.is_some() == tag.is_some());
                if current {
                    self.h2_failed(ctx, sid, why, (before, fresh, unsent), now);
                }
            }
            Kind::Resp {
                head,
                data,
                end,
                tag,
            } => {
                let sid = tag.and_then(|t| h.stream_of(t));
                if let (Some(p), Some(sid)) = (head.as_ref(), sid) {
                    if let Some(r) = p.head() {
                        self.h2_head(ctx, sid, r, end.is_some(), now);
                    }
                }
                if let Some(p) = head {
                    p.keep(&mut self.spare);
                }
                // Checked again: the head may have ended the exchange.
                let current = |d: &mut Down| {
                    sid.filter(|s| {
                        d.h2.as_deref()
                            .is_some_and(|h| h.streams.get(s).is_some_and(|s| s.ex.resp_started))
                    })
                };
                if let (Some(b), Some(sid)) = (data, current(self)) {
                    self.h2_data(ctx, sid, b, now);
                }
                if let (Some(reusable), Some(sid)) = (end, current(self)) {
                    self.h2_end(ctx, sid, reusable, now);
                }
            }
            Kind::Info { head, tag } => {
                if let (Some(sid), Some(r)) = (h.stream_of(tag.unwrap_or(0)), head.head()) {
                    let status = r.status();
                    let started = h.streams.get(&sid).is_none_or(|s| s.ex.resp_started);
                    if !started && (102..200).contains(&status) {
                        let mut names = Vec::new();
                        let fields = response_fields(r, None, &mut names);
                        let fields = &fields[..fields.len() - 1]; // no `via` on interim heads
                        let _ = h
                            .conn
                            .send_informational(StreamId::new(sid), status, fields);
                    }
                }
                head.keep(&mut self.spare);
            }
            Kind::Trailers(t, tag) => {
                // They end the stream (after its queued data); the upstream's end follows.
                let sid = tag.and_then(|t| h.stream_of(t));
                let started = |sid: &u32| h.streams.get(sid).is_some_and(|s| s.ex.resp_started);
                if let Some(sid) = sid.filter(started) {
                    let _ = h.conn.send_trailers(StreamId::new(sid), &t.pairs());
                }
            }
            // No protocol switch is forwarded from HTTP/2 (an `Upgrade` field is malformed
            // there): nothing else comes.
            _ => {}
        }
    }

    /// The upstream's response head for stream `sid` (`defer`: it ends in the same mail).
    fn h2_head(
        &mut self,
        ctx: &mut WorkerCtx,
        sid: u32,
        resp: &ferry_http1::Response,
        defer: bool,
        now: Instant,
    ) {
        let sh = self.shared.clone();
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        let Some(s) = h.streams.get_mut(&sid) else {
            return;
        };
        let status = resp.status();
        response_started(ctx, &sh, &mut s.ex, status, defer, now);
        let head_req = s.ex.head.method() == Method::Head;
        let mut len_buf = itoa::Buffer::new();
        let length = match resp.body_kind() {
            _ if head_req => resp.headers().get("content-length"),
            _ if status == 204 || status == 304 => None,
            BodyKind::Length(n) => Some(len_buf.format(n).as_bytes()),
            _ => None,
        };
        let empty = head_req
            || status == 204
            || status == 304
            || resp.body_kind() == BodyKind::Empty
            || resp.body_kind() == BodyKind::Length(0);
        let body = if empty {
            ferry_http2::Body::Empty
        } else {
            ferry_http2::Body::Streaming
        };
        let mut names = Vec::new();
        let fields = response_fields(resp, length, &mut names);
        let id = StreamId::new(sid);
        if h.conn.send_response(id, status, &fields, body).is_err() {
            // A head HTTP/2 cannot carry: 502 instead, and that connection is not reused.
            drop(fields);
            self.h2_answer(
                ctx,
                sid,
                502,
                "invalid response head from upstream",
                &[],
                now,
            );
        }
    }

    /// Response body bytes for stream `sid`.
    fn h2_data(&mut self, ctx: &mut WorkerCtx, sid: u32, b: Bytes, now: Instant) {
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        let Some(s) = h.streams.get_mut(&sid) else {
            return;
        };
        let n = b.len();
        s.owed += n;
        s.ex.resp_bytes += n as u64;
        s.progress = now;
        if h.conn.send_data(StreamId::new(sid), b, false).is_err() {
            // The client's side of the stream is gone, or its queue is full (it cannot be
            // with at most `WINDOW` per stream): the exchange ends.
            let status = s.ex.status;
            self.h2_abort(ctx, sid, status, now);
            self.h2_reset(sid, Reason::INTERNAL_ERROR);
        }
    }

    /// Stream `sid`'s response is complete (`reusable`: the upstream connection may carry
    /// another request).
    fn h2_end(&mut self, ctx: &mut WorkerCtx, sid: u32, reusable: bool, now: Instant) {
        let sh = self.shared.clone();
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        let Some(mut s) = h.take(sid) else { return };
        let _ = h.conn.send_data(StreamId::new(sid), Bytes::new(), true);
        s.ex.resp_done = true;
        s.ex.reusable = reusable;
        if let Some(u) = sh.stats.upstreams.get(s.ex.upstream) {
            let nanos = now.as_nanos().saturating_sub(s.ex.started.as_nanos());
            u.duration.record(nanos);
        }
        if let Some(log) = sh.access.as_deref() {
            let ip = self.peer_ip.as_deref();
            log_exchange(log, &sh, ctx, ip, &s.ex, s.ex.status, s.ex.resp_bytes, now);
        }
        release(&sh, ctx, &mut s.ex, true, now);
    }

    /// Move output to the socket (as far as its queue allows) and acknowledge to each
    /// upstream the response bytes that left the stream's send queue.
    pub(super) fn h2_flush(&mut self, ctx: &WorkerCtx, now: Instant) {
        let high = ctx.options.write_high_water;
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        while self.io.out.len() < high {
            match h.conn.poll_transmit() {
                Some(b) => self.io.out.push(b),
                None => break,
            }
        }
        let max = self.shared.h2.max_send_buffer;
        for (&sid, s) in h.streams.iter_mut() {
            if s.owed == 0 {
                continue;
            }
            let queued = max - h.conn.send_capacity(StreamId::new(sid)).unwrap_or(max);
            let a = s.owed.saturating_sub(queued);
            if a > 0 {
                s.owed -= a;
                s.progress = now;
                if let Some(up) = s.ex.up {
                    send(ctx, up, Kind::Ack(a, 0));
                }
            }
        }
    }

    /// When the first stream stalls: its request body or its response made no progress
    /// for the response timeout (waiting for the response head is the upstream
    /// connection's timeout).
    fn h2_stall_deadline(&self) -> Option<Instant> {
        let h = self.h2.as_deref()?;
        let limit = self.shared.tun.response_timeout();
        h.streams
            .values()
            .filter(|s| !s.ex.req_done || s.ex.resp_started)
            .map(|s| s.progress + limit)
            .min()
    }

    /// The streams that stalled: a response is cut (RST_STREAM), a request body that
    /// stopped coming is answered `408`.
    fn h2_stalled(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let limit = self.shared.tun.response_timeout();
        let Some(h) = self.h2.as_deref() else { return };
        let stalled: SmallVec<[(u32, bool, bool); 4]> = h
            .streams
            .iter()
            .filter(|(_, s)| (!s.ex.req_done || s.ex.resp_started) && s.progress + limit <= now)
            .map(|(&sid, s)| (sid, s.ex.resp_started, s.ex.upstream == usize::MAX))
            .collect();
        for (sid, started, nowhere) in stalled {
            tracing::debug!(sid, started, "HTTP/2 stream stalled");
            if started {
                let status = self
                    .h2
                    .as_deref()
                    .and_then(|h| h.streams.get(&sid))
                    .map_or(0, |s| s.ex.status);
                self.h2_abort(ctx, sid, status, now);
                self.h2_reset(sid, Reason::CANCEL);
            } else if nowhere {
                let why = UpFailure::ClientStalled;
                self.h2_answer(ctx, sid, why.status(), why.text(), &[], now);
            } else {
                let why = UpFailure::ClientStalled;
                self.h2_failed(ctx, sid, why, (true, false, false), now);
            }
        }
    }

    // The `Half` methods of an HTTP/2 client connection.

    pub(super) fn h2_wants_read(&self, ctx: &WorkerCtx) -> bool {
        self.h2.as_deref().is_some_and(|h| {
            !self.abort
                && self.io.out.len() < ctx.options.write_high_water
                && self.io.input.len() < ctx.options.input_high_water
                && h.conn.wants_read()
        })
    }

    pub(super) fn h2_is_finished(&self) -> bool {
        self.h2
            .as_deref()
            .is_some_and(|h| self.abort || (h.conn.is_closed() && self.io.out.is_empty()))
    }

    pub(super) fn h2_poll_timeout(&self) -> Option<Instant> {
        let h = self.h2.as_deref()?;
        match (h.conn.poll_timeout(), self.h2_stall_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn h2_wants_process(&self) -> bool {
        !self.io.input.is_empty()
            || self
                .h2
                .as_deref()
                .is_some_and(|h| h.conn.peek_event().is_some())
    }

    pub(super) fn h2_on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.h2_process(ctx, now);
        if let Some(h) = self.h2.as_deref_mut() {
            h.conn.handle_eof(now);
        }
        self.h2_process(ctx, now);
    }

    pub(super) fn h2_on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.h2_stall_deadline().is_some_and(|d| now >= d) {
            self.h2_stalled(ctx, now);
        }
        if let Some(h) = self.h2.as_deref_mut() {
            h.conn.handle_timeout(now);
        }
        self.h2_process(ctx, now);
    }

    /// Proxy shutdown: GOAWAY (no new streams; those open finish).
    pub(super) fn h2_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if let Some(h) = self.h2.as_deref_mut() {
            h.conn.close();
        }
        self.h2_process(ctx, now);
    }

    /// The connection is gone: every exchange still open ends (499 in the log when its
    /// response had not ended), its upstream connection not reused.
    pub(super) fn h2_close(&mut self, ctx: &mut WorkerCtx) {
        let now = ctx.clock.now();
        let sids: Vec<u32> = self
            .h2
            .as_deref()
            .map(|h| h.streams.keys().copied().collect())
            .unwrap_or_default();
        for sid in sids {
            self.h2_abort(ctx, sid, 499, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_http2::{ClientConnection, Config, RequestHead, ServerConnection};
    use ferry_proto::Connection;

    /// The request events a server connection makes of what `send` has a client send.
    fn serve(send: impl FnOnce(&mut ClientConnection)) -> Vec<H2Event> {
        let now = Instant::ZERO;
        let mut client = ClientConnection::new(Arc::new(Config::default()), now);
        let mut server = ServerConnection::new(Arc::new(Config::default()), now);
        send(&mut client);
        let mut wire = BytesMut::new();
        while let Some(b) = client.poll_transmit() {
            wire.extend_from_slice(&b);
        }
        let _ = server.handle_input(now, &mut wire);
        std::iter::from_fn(|| server.poll_event()).collect()
    }

    fn request_of(events: &[H2Event]) -> (&ferry_http2::Request, StreamId, bool) {
        let mut it = events.iter();
        let (id, req) = it
            .find_map(|e| match e {
                H2Event::Request { id, request } => Some((*id, request)),
                _ => None,
            })
            .expect("a request");
        let end = matches!(it.next(), Some(H2Event::End { id: e }) if *e == id);
        (req, id, end)
    }

    /// What an HTTP/1.1 server reads of `head` sent upstream as the proxy sends it
    /// (`send_forwarded_request`, framing fields left to `body`): every request head it
    /// parses, and whether any byte was left over or refused.
    fn upstream_reads(head: &ferry_http1::Request) -> (Vec<ferry_http1::Request>, bool) {
        use ferry_http1::{Body as H1Body, ClientConfig, ClientConnection as H1Client};
        use ferry_http1::{ServerConfig, ServerConnection as H1Server};
        let now = Instant::ZERO;
        let mut client = H1Client::new(Arc::new(ClientConfig::default()), now);
        let body = match head.body_kind() {
            BodyKind::Length(n) => H1Body::Length(n),
            BodyKind::Empty => H1Body::Empty,
            _ => H1Body::Chunked,
        };
        // As the proxy forwards: `te` is hop-by-hop for an HTTP/1.1 upstream.
        let keep = |n: &[u8]| {
            !n.eq_ignore_ascii_case(b"content-length")
                && !n.eq_ignore_ascii_case(b"transfer-encoding")
                && !n.eq_ignore_ascii_case(b"te")
        };
        client
            .send_forwarded_request(now, head, keep, &[], body)
            .expect("a converted head is sent");
        let mut wire = BytesMut::new();
        while let Some(b) = client.poll_transmit() {
            wire.extend_from_slice(&b);
        }
        let mut server = H1Server::new(Arc::new(ServerConfig::default()), now);
        let refused = server.handle_input(now, &mut wire).is_err();
        let heads = std::iter::from_fn(|| server.poll_event())
            .filter_map(|e| match e {
                ferry_http1::server::Event::Request(r) => Some(r),
                _ => None,
            })
            .collect();
        (heads, refused || !wire.is_empty())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// No request smuggling through the downgrade: whatever head ferry-http2 accepts and
        /// the conversion lets through reaches an HTTP/1.1 upstream as exactly one request
        /// with the client's method, target, `Host` and fields (cookies joined, `te`
        /// dropped) and the framing the HTTP/2 stream had; everything else is refused.
        #[test]
        fn a_converted_head_is_read_upstream_as_exactly_that_request(
            method in proptest::prop_oneof![
                4 => proptest::sample::select(vec!["GET", "POST", "PUT", "OPTIONS"]),
                1 => proptest::sample::select(vec!["G ET", "GET\r\nX: y", "M:X", "", "get"]),
            ],
            path in proptest::prop_oneof![
                4 => proptest::sample::select(vec!["/", "/ok?q=1", "/%0d%0a", "*"]),
                1 => proptest::sample::select(vec!["/a b", "/a\r\nX: y", "http://x/", "/\0", "a"]),
            ],
            authority in proptest::prop_oneof![
                4 => proptest::sample::select(vec!["h", "h:80", "[::1]:8080", "u@h"]),
                1 => proptest::sample::select(vec!["h\r\nx: y", "", "a b", "h\n", "h/x"]),
            ],
            fields in proptest::collection::vec((
                proptest::prop_oneof![
                    4 => proptest::sample::select(vec![
                        "x-a", "cookie", "te", "host", "content-length", "accept", "x-b",
                    ]),
                    1 => proptest::sample::select(vec![
                        "x a", "x\r\nb", "x:y", "transfer-encoding", "connection", "upgrade",
                        "X-Up", "x\u{e9}",
                    ]),
                ],
                proptest::collection::vec(proptest::prop_oneof![
                    12 => proptest::sample::select(vec![b'a', b'0', b'5', b';', b',', b':', b'=', 0x80]),
                    1 => proptest::sample::select(vec![b'\r', b'\n', 0u8, 0x7f, b' ', b'\t']),
                ], 0..6),
            ), 0..6),
            streaming in proptest::bool::ANY,
        ) {
            let events = serve(|c| {
                let fs: Vec<(&str, &[u8])> = fields.iter().map(|(n, v)| (*n, &v[..])).collect();
                let head = RequestHead::new(method, "http", authority, path).fields(&fs);
                let body = if streaming { ferry_http2::Body::Streaming } else { ferry_http2::Body::Empty };
                let _ = c.send_request(&head, body);
            });
            let Some((id, req)) = events.iter().find_map(|e| match e {
                H2Event::Request { id, request } => Some((*id, request)),
                _ => None,
            }) else {
                return Ok(()); // refused by the HTTP/2 side (a stream or connection error)
            };
            let end = events.iter().any(|e| matches!(e, H2Event::End { id: e } if *e == id));
            let Ok(h1) = to_http1(req, id, end) else {
                return Ok(()); // refused by the conversion (400 or 501)
            };
            let (heads, leftover) = upstream_reads(&h1);
            proptest::prop_assert_eq!(heads.len(), 1);
            proptest::prop_assert!(!leftover);
            let up = &heads[0];
            proptest::prop_assert_eq!(up.method_str().as_bytes(), req.method_bytes());
            proptest::prop_assert_eq!(up.target_bytes(), req.path_bytes());
            let want_host = req.authority_bytes().filter(|a| !a.is_empty());
            if let Some(a) = want_host {
                proptest::prop_assert_eq!(up.headers().get_all("host").collect::<Vec<_>>(), vec![a]);
            }
            let mut cookie: Vec<u8> = Vec::new();
            let mut want: Vec<(String, Vec<u8>)> = Vec::new();
            for (n, v) in req.fields().iter() {
                match n {
                    "cookie" => {
                        if !cookie.is_empty() {
                            cookie.extend_from_slice(b"; ");
                        }
                        cookie.extend_from_slice(v);
                    }
                    "te" | "content-length" => {}
                    "host" if want_host.is_some() => {}
                    _ => want.push((n.to_string(), v.to_vec())),
                }
            }
            if !cookie.is_empty() {
                want.push(("cookie".into(), cookie));
            }
            let got: Vec<(String, Vec<u8>)> = up
                .headers()
                .iter_bytes()
                .filter(|(n, _)| {
                    !(n.eq_ignore_ascii_case(b"content-length")
                        || n.eq_ignore_ascii_case(b"transfer-encoding")
                        || (want_host.is_some() && n.eq_ignore_ascii_case(b"host")))
                })
                .map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec()))
                .collect();
            proptest::prop_assert_eq!(got, want);
            // The framing the stream had: no body when HEADERS ended it, else the declared
            // length or chunked.
            let framing = match (end, req.content_length()) {
                (true, _) => BodyKind::Empty,
                (false, Some(n)) => BodyKind::Length(n),
                (false, None) => BodyKind::Chunked,
            };
            let got_framing = match up.body_kind() {
                BodyKind::Length(0) if end => BodyKind::Empty,
                k => k,
            };
            proptest::prop_assert_eq!(got_framing, framing);
        }
    }

    #[test]
    fn pseudo_headers_become_the_request_line_and_host() {
        let events = serve(|c| {
            let fields: [(&str, &[u8]); 2] = [("accept", b"*/*"), ("host", b"other.example")];
            let head =
                RequestHead::new("GET", "https", "example.com:8443", "/a/b?q=1").fields(&fields);
            c.send_request(&head, ferry_http2::Body::Empty).unwrap();
        });
        let (req, id, end) = request_of(&events);
        assert!(end);
        let h1 = to_http1(req, id, end).unwrap();
        assert_eq!(h1.method(), Method::Get);
        assert_eq!(h1.target(), "/a/b?q=1");
        assert_eq!(h1.version(), ferry_http1::Version::Http11);
        assert_eq!(h1.body_kind(), BodyKind::Empty);
        // `:authority` is the `Host` (a `host` field beside it is dropped).
        let hs: Vec<_> = h1.headers().iter().collect();
        assert_eq!(hs[0], ("host", &b"example.com:8443"[..]));
        assert_eq!(h1.headers().get_all("host").count(), 1);
        assert_eq!(h1.headers().get("accept"), Some(&b"*/*"[..]));
        assert_eq!(h1.id().get(), u64::from(id.get()));
    }

    #[test]
    fn cookies_are_joined_and_te_kept_for_an_http2_upstream() {
        let events = serve(|c| {
            let fields: [(&str, &[u8]); 4] = [
                ("cookie", b"a=1"),
                ("te", b"trailers"),
                ("cookie", b"b=2"),
                ("cookie", b"c=3"),
            ];
            let head = RequestHead::new("GET", "http", "h", "/").fields(&fields);
            c.send_request(&head, ferry_http2::Body::Empty).unwrap();
        });
        let (req, id, end) = request_of(&events);
        let h1 = to_http1(req, id, end).unwrap();
        assert_eq!(h1.headers().get_all("cookie").count(), 1);
        assert_eq!(h1.headers().get("cookie"), Some(&b"a=1; b=2; c=3"[..]));
        // Kept in the head for an HTTP/2 upstream (`te: trailers`, the one value HTTP/2
        // allows, which gRPC needs); hop-by-hop, so never sent to an HTTP/1.1 one.
        assert_eq!(h1.headers().get("te"), Some(&b"trailers"[..]));
        assert!(!super::super::forward_request_field(
            b"te",
            &[],
            (false, false, false)
        ));
    }

    #[test]
    fn bodies_are_framed_by_length_or_chunked() {
        let events = serve(|c| {
            let fields: [(&str, &[u8]); 1] = [("content-length", b"5")];
            let head = RequestHead::new("POST", "http", "h", "/up").fields(&fields);
            c.send_request(&head, ferry_http2::Body::Streaming).unwrap();
        });
        let (req, id, end) = request_of(&events);
        assert!(!end);
        let h1 = to_http1(req, id, end).unwrap();
        assert_eq!(h1.body_kind(), BodyKind::Length(5));
        let events = serve(|c| {
            let head = RequestHead::new("POST", "http", "h", "/up");
            c.send_request(&head, ferry_http2::Body::Streaming).unwrap();
        });
        let (req, id, end) = request_of(&events);
        assert_eq!(
            to_http1(req, id, end).unwrap().body_kind(),
            BodyKind::Chunked
        );
        // A declared length the stream contradicts (it ended with the head).
        let events = serve(|c| {
            let fields: [(&str, &[u8]); 1] = [("content-length", b"5")];
            let head = RequestHead::new("POST", "http", "h", "/up").fields(&fields);
            c.send_request(&head, ferry_http2::Body::Empty).unwrap();
        });
        // Refused either way: the HTTP/2 side never hands it over, or it is a 400 here.
        if let Some((req, id)) = events.iter().find_map(|e| match e {
            H2Event::Request { id, request } => Some((request, *id)),
            _ => None,
        }) {
            assert_eq!(to_http1(req, id, true).unwrap_err(), Refused::BadRequest);
        }
        // The same head taken as ending with its HEADERS is refused by the conversion.
        let events = serve(|c| {
            let fields: [(&str, &[u8]); 1] = [("content-length", b"5")];
            let head = RequestHead::new("POST", "http", "h", "/up").fields(&fields);
            c.send_request(&head, ferry_http2::Body::Streaming).unwrap();
        });
        let (req, id, _) = request_of(&events);
        assert_eq!(to_http1(req, id, true).unwrap_err(), Refused::BadRequest);
    }

    #[test]
    fn heads_http1_cannot_carry_are_refused() {
        // A control character HTTP/2 lets through but HTTP/1.1 does not: 400.
        let events = serve(|c| {
            let fields: [(&str, &[u8]); 1] = [("x-odd", b"a\x01b")];
            let head = RequestHead::new("GET", "http", "h", "/").fields(&fields);
            c.send_request(&head, ferry_http2::Body::Empty).unwrap();
        });
        let (req, id, end) = request_of(&events);
        assert_eq!(to_http1(req, id, end).unwrap_err(), Refused::BadRequest);
        assert_eq!(Refused::BadRequest.status(), 400);
        // A method that is no token.
        let events = serve(|c| {
            let head = RequestHead::new("G(T", "http", "h", "/");
            c.send_request(&head, ferry_http2::Body::Empty).unwrap();
        });
        let (req, id, end) = request_of(&events);
        assert_eq!(to_http1(req, id, end).unwrap_err(), Refused::BadRequest);
        // CONNECT: 501.
        let events = serve(|c| {
            let head = RequestHead::new("CONNECT", "http", "h:443", "/");
            c.send_request(&head, ferry_http2::Body::Streaming).unwrap();
        });
        let (req, id, end) = request_of(&events);
        assert_eq!(to_http1(req, id, end).unwrap_err(), Refused::Connect);
        assert_eq!(Refused::Connect.status(), 501);
    }

    #[test]
    fn connection_specific_request_fields_are_a_stream_error() {
        // Refused by the HTTP/2 side itself (RFC 9113 §8.2.2): the stream is reset, no
        // request reaches the proxy. Encoded by hand: a client connection will not send it.
        use ferry_http2::hpack::{Encoder, Field};
        let now = Instant::ZERO;
        let mut server = ServerConnection::new(Arc::new(Config::default()), now);
        let mut wire = BytesMut::from(&ferry_http2::PREFACE[..]);
        wire.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS
        let mut block = BytesMut::new();
        let mut enc = Encoder::new(4096);
        let fields = [
            Field::from_static(":method", "GET"),
            Field::from_static(":scheme", "http"),
            Field::from_static(":path", "/"),
            Field::from_static(":authority", "h"),
            Field::from_static("connection", "keep-alive"),
        ];
        enc.encode(
            fields.iter().map(|f| (&f.name[..], &f.value[..], false)),
            &mut block,
        );
        let len = block.len();
        wire.extend_from_slice(&[
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            1,
            5,
            0,
            0,
            0,
            1,
        ]);
        wire.extend_from_slice(&block);
        let _ = server.handle_input(now, &mut wire);
        let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
        assert!(
            !events.iter().any(|e| matches!(e, H2Event::Request { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn response_hop_by_hop_fields_are_dropped_and_names_lowered() {
        let mut c =
            ferry_http1::ClientConnection::new(Arc::new(ClientConfig::default()), Instant::ZERO);
        let req = ferry_http1::Request::from_parts(
            RequestId::new(0),
            b"GET",
            b"/",
            ferry_http1::Version::Http11,
            [(&b"host"[..], &b"h"[..])],
            BodyKind::Empty,
        )
        .unwrap();
        c.send_forwarded_request_extra(Instant::ZERO, &req, |_| true, &[], Body::Empty)
            .unwrap();
        let mut input = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\n\
               Keep-Alive: timeout=5\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\n\
               Upgrade: foo\r\nX-Kept: yes\r\n\r\n"[..],
        );
        c.handle_input(Instant::ZERO, &mut input).unwrap();
        let resp = std::iter::from_fn(|| c.poll_event())
            .find_map(|e| match e {
                CEvent::Response(r) => Some(r),
                _ => None,
            })
            .expect("a response head");
        let mut names = Vec::new();
        let fields = response_fields(&resp, Some(b"12"), &mut names);
        let got: Vec<(&str, &[u8])> = fields.iter().copied().collect();
        assert_eq!(
            got,
            [
                ("content-type", &b"text/plain"[..]),
                ("x-kept", b"yes"),
                ("content-length", b"12"),
                ("via", b"1.1 ferry"),
            ]
        );
    }
}
