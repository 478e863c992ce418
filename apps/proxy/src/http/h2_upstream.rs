//! HTTP/2 to the upstreams (`--upstream-http2`, h2c with prior knowledge): an upstream
//! connection ([`Up`]) runs a `ferry_http2::ClientConnection` instead of the HTTP/1.1 one,
//! and each exchange it carries is one stream. Everything around the connection is the
//! HTTP/1.1 path's: the keep-alive pool (a connection carries one stream at a time, and
//! goes back to the pool when it ends), balancing, breakers, retries, timeouts, forwarded
//! fields, trace context, access log, metrics.
//!
//! - Request head: the request line and `Host` become `:method`, `:path`, `:authority`
//!   (`:scheme` `http`); the client's fields without the hop-by-hop ones (standard or named
//!   by `Connection`), names lower-cased, plus the proxy's (`x-forwarded-*`, `traceparent`,
//!   `via`); `te: trailers` goes when the client sent it (RFC 9113 §8.2.2: the one `te`
//!   value allowed; gRPC needs it); `content-length` when the body has one.
//! - Response head: written out as an HTTP/1.1 head ([`ferry_http1::Response::from_head`])
//!   so that it goes to the client as an HTTP/1.1 upstream's would: `content-length` when
//!   the upstream gave one (or `0` when the HEADERS ended the stream: a gRPC
//!   "trailers-only" response keeps its `grpc-status` in the head), else chunked.
//! - Trailers both ways ([`super::trailers`]): a HEADERS frame with END_STREAM.
//! - Flow control end to end: the stream's receive window is [`WINDOW`] and its credit goes
//!   back (WINDOW_UPDATE) only as the client's side acknowledges the bytes; request bytes
//!   are acknowledged to the client's side as they leave the HTTP/2 send queue.
//! - Failures: an upstream RST_STREAM fails that exchange (REFUSED_STREAM before any
//!   response byte, or a stream above a GOAWAY's last stream id, as never processed: it
//!   goes again whatever its method, RFC 9113 §8.7); a GOAWAY drains the connection (no new
//!   stream, not reused); a connection error, EOF or a response head that does not come in
//!   the response timeout fails the exchange as on HTTP/1.1.

use ferry_http2::{Event as H2Event, Reason, StreamId};

use super::*;

/// The settings of the proxy's HTTP/2 upstream connections.
pub(super) fn config(cfg: &ProxyConfig) -> ferry_http2::Config {
    let mut c = ferry_http2::Config::default();
    // Credit goes back as the client takes the bytes (`release_capacity`): at most `WINDOW`
    // of one response in the proxy.
    c.auto_release = false;
    c.initial_stream_window = WINDOW as u32;
    c.initial_connection_window = (4 * WINDOW) as u32;
    c.enable_push = false;
    c.max_header_list_size = cfg.http2_max_header_list.max(1024);
    // The client's side stops at `WINDOW` unacknowledged bytes: never refused.
    c.max_send_buffer = 2 * WINDOW;
    c.max_send_buffer_connection = 4 * WINDOW;
    c.idle_timeout = None; // the pool's idle timeout governs
    c
}

/// An upstream connection's HTTP/2 side.
pub(super) struct H2Up {
    conn: ferry_http2::ClientConnection,
    /// The stream of the exchange in progress.
    stream: Option<StreamId>,
    /// It answers a HEAD (no body whatever the head says).
    head_req: bool,
    /// When its request went out (the response timeout runs until its head).
    sent_at: Instant,
    /// The upstream sent GOAWAY: no new stream; the connection is not reused.
    goaway: bool,
}

impl H2Up {
    pub(super) fn new(cfg: Arc<ferry_http2::Config>, now: Instant) -> Box<H2Up> {
        Box::new(H2Up {
            conn: ferry_http2::ClientConnection::new(cfg, now),
            stream: None,
            head_req: false,
            sent_at: now,
            goaway: false,
        })
    }
}

/// The fields of encoded lines (`name: value\r\n`...), as pairs.
fn lines(l: &FieldLines) -> impl Iterator<Item = (&[u8], &[u8])> {
    l.as_bytes().split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let c = line.iter().position(|&b| b == b':')?;
        Some((&line[..c], line[c + 1..].trim_ascii()))
    })
}

/// Add the fields of encoded lines to `fields`, names lower-cased.
fn push_lines<'a>(fields: &mut Vec<(String, &'a [u8])>, l: &'a FieldLines) {
    for (n, v) in lines(l) {
        fields.push((String::from_utf8_lossy(n).to_ascii_lowercase(), v));
    }
}

/// The `:path` of an HTTP/1.1 request target: as it is in origin-form (or `*`), the path
/// and query of an absolute-form target.
fn path_of(target: &str) -> &str {
    if target.starts_with('/') || target == "*" {
        return target;
    }
    let rest = target.split_once("://").map_or(target, |(_, r)| r);
    match rest.find('/') {
        Some(i) => &rest[i..],
        None => "/",
    }
}

/// The HTTP/1.1 head for an HTTP/2 response (`end`: its HEADERS ended the stream).
fn h1_head(
    id: RequestId,
    status: u16,
    fields: &ferry_http2::Fields,
    end: bool,
    head_req: bool,
) -> Result<ferry_http1::Response, ferry_http1::Error> {
    let mut b = BytesMut::with_capacity(256);
    let mut st = itoa::Buffer::new();
    b.put_slice(b"HTTP/1.1 ");
    b.put_slice(st.format(status).as_bytes());
    b.put_u8(b' ');
    b.put_slice(ferry_http1::reason_phrase(status).as_bytes());
    b.put_slice(b"\r\n");
    let mut length = false;
    for (n, v) in fields.iter() {
        length |= n == "content-length";
        b.put_slice(n.as_bytes());
        b.put_slice(b": ");
        b.put_slice(v);
        b.put_slice(b"\r\n");
    }
    if !length && !(100..200).contains(&status) {
        b.put_slice(if end {
            &b"content-length: 0\r\n"[..]
        } else {
            b"transfer-encoding: chunked\r\n"
        });
    }
    b.put_slice(b"\r\n");
    ferry_http1::Response::from_head(id, b.freeze(), head_req)
}

impl Up {
    /// Send the owner's request as a new stream (or fail it as never sent).
    pub(super) fn h2_send_request(&mut self, ctx: &mut WorkerCtx, req: &SendReq, now: Instant) {
        let SendReq { head, extra, .. } = req;
        self.req_trailers = None;
        self.owner = Some(req.owner);
        self.tag = Some(req.tag);
        self.reported = false;
        self.resp_started = false;
        self.reused_idle = self.served;
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        if self.done || self.io.saw_eof() || !self.alive.load(Relaxed) || h.goaway {
            self.fail_with(ctx, UpFailure::Broken, true);
            return;
        }
        let sh = self.shared.clone();
        let sh = &*sh;
        let rare = extra.rare.as_deref();
        let (keep_xfp, keep_xfh, own_xfh, keep_xfcc) = rare
            .map_or((false, false, false, false), |r| {
                (r.keep_xfp, r.keep_xfh, r.own_xfh, r.keep_xfcc)
            });
        let named = if extra.conn_named {
            connection_names(head.headers())
        } else {
            SmallVec::new()
        };
        let mut fields: Vec<(String, &[u8])> = Vec::with_capacity(head.headers().len() + 8);
        let mut te_trailers = false;
        for (n, v) in head.headers().iter_bytes() {
            if n.eq_ignore_ascii_case(b"te") {
                te_trailers |= v
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
                continue;
            }
            if !forward_request_field(n, &named, (keep_xfp, keep_xfh, keep_xfcc))
                || n.eq_ignore_ascii_case(b"host")
            {
                continue;
            }
            let name = String::from_utf8_lossy(n).to_ascii_lowercase();
            fields.push((name, v));
        }
        if te_trailers {
            fields.push(("te".into(), b"trailers"));
        }
        let mut len = itoa::Buffer::new();
        if let BodyKind::Length(n) = head.body_kind() {
            fields.push(("content-length".into(), len.format(n).as_bytes()));
        }
        match &extra.fwd {
            Fwd::Lines(l) => push_lines(&mut fields, l),
            Fwd::Xff(xff) => {
                if let Some(x) = xff.as_ref().filter(|x| !x.is_empty()) {
                    fields.push(("x-forwarded-for".into(), x));
                }
                if !keep_xfp {
                    push_lines(&mut fields, &sh.xfp);
                }
                if let Some(x) = rare.and_then(|r| r.xfcc.as_ref()) {
                    push_lines(&mut fields, x);
                }
            }
        }
        if !keep_xfh && (own_xfh || matches!(extra.fwd, Fwd::Xff(_))) {
            if let Some(h) = head
                .host()
                .filter(|h| h.bytes().all(|c| c >= b' ' && c != 0x7f))
            {
                fields.push(("x-forwarded-host".into(), h.as_bytes()));
            }
        }
        fields.push(("traceparent".into(), &extra.traceparent[..]));
        push_lines(&mut fields, if extra.h2 { &sh.via2 } else { &sh.via });
        let upstream = sh.cfg.upstreams[self.idx].to_string();
        let authority = match rare.and_then(|r| r.host.as_ref()) {
            Some(h) => std::str::from_utf8(h).unwrap_or(&upstream),
            None => head.host().unwrap_or(&upstream),
        };
        let pairs: SmallVec<[(&str, &[u8]); 24]> =
            fields.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        let rh = ferry_http2::RequestHead::new(
            head.method_str(),
            "http",
            authority,
            path_of(head.target()),
        )
        .fields(&pairs);
        let body = if head.body_kind() == BodyKind::Empty {
            ferry_http2::Body::Empty
        } else {
            ferry_http2::Body::Streaming
        };
        match h.conn.send_request(&rh, body) {
            Ok(id) => {
                h.stream = Some(id);
                h.head_req = head.method() == Method::Head;
                h.sent_at = now;
                self.req = Some(RequestId::new(u64::from(id.get())));
                self.inflight = 1;
            }
            Err(e) => {
                tracing::debug!("upstream HTTP/2 request not sent: {e:?}");
                let why = if matches!(e, ferry_http2::SendError::InvalidHeader) {
                    UpFailure::InvalidResponse
                } else {
                    UpFailure::Broken
                };
                self.fail_with(ctx, why, true);
            }
        }
    }

    /// Mail from the owner (or the pool) for an HTTP/2 upstream connection.
    #[cold]
    #[inline(never)]
    pub(super) fn h2_apply(&mut self, ctx: &mut WorkerCtx, kind: Kind, now: Instant) {
        match kind {
            Kind::Send(req) => {
                if let Some(r) = req.send_req() {
                    self.h2_send_request(ctx, r, now);
                }
                req.keep(&mut self.spare);
            }
            Kind::Trailers(t, _) => self.req_trailers = Some(t),
            Kind::ReqData(b, end) => {
                self.owed += b.len();
                let Some(id) = self.h2.as_deref().and_then(|h| h.stream) else {
                    return;
                };
                let trailers = if end { self.req_trailers.take() } else { None };
                let Some(h) = self.h2.as_deref_mut() else {
                    return;
                };
                let r = match trailers {
                    Some(t) => {
                        if !b.is_empty() {
                            let _ = h.conn.send_data(id, b, false);
                        }
                        h.conn.send_trailers(id, &t.pairs())
                    }
                    None if b.is_empty() && !end => Ok(()),
                    None => h.conn.send_data(id, b, end),
                };
                if let Err(e) = r {
                    tracing::debug!("upstream HTTP/2 request body not queued: {e:?}");
                }
            }
            Kind::Ack(n, _) => {
                self.unacked = self.unacked.saturating_sub(n);
                if let Some(h) = self.h2.as_deref_mut() {
                    if let Some(id) = h.stream {
                        h.conn.release_capacity(id, n);
                    }
                }
            }
            Kind::Close => {
                self.alive.store(false, Relaxed);
                if self.owner.is_some() && !self.reported {
                    self.fail(ctx, UpFailure::Broken);
                }
                self.owner = None;
                self.done = true;
                if let Some(h) = self.h2.as_deref_mut() {
                    h.conn.close();
                }
            }
            _ => {}
        }
        self.h2_transmit();
    }

    /// Move what the connection has to send to the output queue.
    pub(super) fn h2_transmit(&mut self) {
        if let Some(h) = self.h2.as_deref_mut() {
            while let Some(b) = h.conn.poll_transmit() {
                self.io.out.push(b);
            }
        }
    }

    /// Acknowledge to the owner the request bytes that left the send queue.
    #[cold]
    #[inline(never)]
    pub(super) fn h2_ack(&mut self, ctx: &WorkerCtx) {
        let queued = self.h2.as_deref().map_or(0, |h| h.conn.queued_data());
        let a = self.owed.saturating_sub(queued);
        if a > 0 {
            self.owed -= a;
            self.to_owner(ctx, Kind::Ack(a, self.tag.unwrap_or(0)));
        }
    }

    /// The stream in progress ended one way or another: this connection carries no
    /// exchange now.
    fn h2_stream_over(&mut self) {
        self.resp_started = false;
        self.unacked = 0;
        self.owed = 0;
        self.inflight = 0;
        self.owner = None;
        self.req = None;
        self.req_trailers = None;
        if let Some(h) = self.h2.as_deref_mut() {
            h.stream = None;
        }
    }

    /// Input, events and output of an HTTP/2 upstream connection.
    #[cold]
    #[inline(never)]
    pub(super) fn h2_process_input(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if !self.io.is_connected() || self.done {
            self.h2_transmit();
            return;
        }
        let Some(h) = self.h2.as_deref_mut() else {
            return;
        };
        if !self.io.input.is_empty() {
            self.reused_idle = false;
            if h.conn.handle_input(now, &mut self.io.input).is_err() {
                // The error comes as an event too (GOAWAY queued).
            }
        }
        let mut events: SmallVec<[H2Event; 8]> = SmallVec::new();
        while let Some(ev) = h.conn.poll_event() {
            events.push(ev);
        }
        let mut head: Option<Parcel> = None;
        let mut data: Option<Bytes> = None;
        let mut evs = events.into_iter().peekable();
        while let Some(ev) = evs.next() {
            let current = self.h2.as_deref().and_then(|h| h.stream);
            match ev {
                H2Event::Response { id, response } if Some(id) == current => {
                    let end = matches!(evs.peek(), Some(H2Event::End { id: e }) if *e == id);
                    let head_req = self.h2.as_deref().is_some_and(|h| h.head_req);
                    let rid = RequestId::new(u64::from(id.get()));
                    match h1_head(rid, response.status(), response.fields(), end, head_req) {
                        Ok(r) => {
                            self.resp_started = true;
                            head = Some(Parcel::head_of(&mut self.spare, r));
                        }
                        Err(_) => {
                            self.fail(ctx, UpFailure::InvalidResponse);
                            break;
                        }
                    }
                }
                H2Event::Informational { id, response } if Some(id) == current => {
                    let rid = RequestId::new(u64::from(id.get()));
                    let status = response.status();
                    if status != 100 {
                        if let Ok(r) = h1_head(rid, status, response.fields(), false, false) {
                            let p = Parcel::head_of(&mut self.spare, r);
                            self.to_owner(
                                ctx,
                                Kind::Info {
                                    head: p,
                                    tag: self.tag,
                                },
                            );
                        }
                    }
                }
                H2Event::Data { id, data: d } if Some(id) == current => {
                    self.unacked += d.len();
                    if data.is_some() {
                        self.flush_resp(ctx, &mut head, &mut data);
                    }
                    data = Some(d);
                }
                H2Event::Trailers { id, trailers } if Some(id) == current => {
                    self.flush_resp(ctx, &mut head, &mut data);
                    if let Some(t) = Trailers::of_http2(&trailers) {
                        self.to_owner(ctx, Kind::Trailers(t, self.tag));
                    }
                }
                H2Event::End { id } if Some(id) == current => {
                    let reusable = self.h2.as_deref().is_some_and(|h| !h.goaway)
                        && !self.io.saw_eof()
                        && self.alive.load(Relaxed);
                    self.served = true;
                    let (head, data) = (head.take(), data.take());
                    self.to_owner(
                        ctx,
                        Kind::Resp {
                            head,
                            data,
                            end: Some(reusable),
                            tag: self.tag,
                        },
                    );
                    self.h2_stream_over();
                }
                H2Event::Reset { id, reason, .. } if Some(id) == current => {
                    self.flush_resp(ctx, &mut head, &mut data);
                    // Refused: never processed, it goes again whatever its method; on a
                    // connection that served before (the server is draining it, as an
                    // idle keep-alive connection it closed) without counting as a retry.
                    let refused = reason == Reason::REFUSED_STREAM && !self.resp_started;
                    if !self.reported && self.owner.is_some() {
                        self.reported = true;
                        self.to_owner(
                            ctx,
                            Kind::Failed {
                                why: UpFailure::Broken,
                                before: !self.resp_started,
                                fresh: refused && self.served,
                                unsent: refused,
                                tag: self.tag,
                                wait: self.wait,
                            },
                        );
                    }
                    self.h2_stream_over();
                    // Not reused (the pool closes it when the exchange gives it back).
                    self.alive.store(false, Relaxed);
                }
                H2Event::GoAway { .. } => {
                    // No new stream: drained, then closed (the streams it refused come as
                    // `Reset` REFUSED_STREAM).
                    if let Some(h) = self.h2.as_deref_mut() {
                        h.goaway = true;
                    }
                    self.alive.store(false, Relaxed);
                }
                H2Event::Error { error } => {
                    tracing::debug!("upstream HTTP/2 connection error: {error:?}");
                    self.flush_resp(ctx, &mut head, &mut data);
                    self.fail(ctx, UpFailure::Broken);
                }
                _ => {}
            }
        }
        self.flush_resp(ctx, &mut head, &mut data);
        self.h2_transmit();
        let idle_closed = self.h2.as_deref().is_some_and(|h| h.conn.is_closed());
        if idle_closed && self.owner.is_none() {
            self.done = true;
            self.alive.store(false, Relaxed);
        }
    }

    /// When the response head is due (the response timeout after the request went out).
    fn h2_response_deadline(&self) -> Option<Instant> {
        let h = self.h2.as_deref()?;
        (h.stream.is_some() && !self.resp_started && self.owner.is_some())
            .then(|| h.sent_at + self.shared.cfg.response_timeout)
    }

    #[cold]
    #[inline(never)]
    pub(super) fn h2_poll_timeout(&self) -> Option<Instant> {
        let h = self.h2.as_deref()?;
        match (h.conn.poll_timeout(), self.h2_response_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn h2_on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.h2_response_deadline().is_some_and(|d| now >= d) {
            if let Some(h) = self.h2.as_deref_mut() {
                if let Some(id) = h.stream {
                    let _ = h.conn.reset(id, Reason::CANCEL);
                }
            }
            self.fail(ctx, UpFailure::Timeout);
        }
        if let Some(h) = self.h2.as_deref_mut() {
            h.conn.handle_timeout(now);
        }
        self.h2_process_input(ctx, now);
    }

    #[cold]
    #[inline(never)]
    pub(super) fn h2_on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.h2_process_input(ctx, now);
        if let Some(h) = self.h2.as_deref_mut() {
            h.conn.handle_eof(now);
        }
        self.alive.store(false, Relaxed);
        if self.owner.is_some() {
            self.fail(ctx, UpFailure::Broken);
        }
        self.done = true;
    }

    #[cold]
    #[inline(never)]
    pub(super) fn h2_wants_read(&self, ctx: &WorkerCtx) -> bool {
        !self.done
            && self.io.input.len() < ctx.options.input_high_water
            && self.h2.as_deref().is_some_and(|h| h.conn.wants_read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_targets_go_as_their_path() {
        assert_eq!(path_of("/a?b"), "/a?b");
        assert_eq!(path_of("*"), "*");
        assert_eq!(path_of("http://h:1/x/y?z"), "/x/y?z");
        assert_eq!(path_of("http://h:1"), "/");
    }

    #[test]
    fn response_heads_are_framed_as_http1() {
        let none = ferry_http2::Fields::default();
        let id = RequestId::new(1);
        let r = h1_head(id, 200, &none, false, false).unwrap();
        assert_eq!(r.body_kind(), BodyKind::Chunked);
        let r = h1_head(id, 200, &none, true, false).unwrap();
        assert_eq!(r.body_kind(), BodyKind::Empty);
        let r = h1_head(id, 200, &none, false, true).unwrap();
        assert_eq!(r.body_kind(), BodyKind::Empty);
    }

    #[test]
    fn encoded_lines_read_back_as_pairs() {
        let l = FieldLines::new(&[("x-forwarded-for", "1.2.3.4"), ("via", "2 ferry")]).unwrap();
        let got: Vec<_> = lines(&l).collect();
        assert_eq!(
            got,
            [
                (&b"x-forwarded-for"[..], &b"1.2.3.4"[..]),
                (&b"via"[..], &b"2 ferry"[..])
            ]
        );
    }
}
