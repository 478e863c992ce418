//! Workloads shared by Ferry's criterion benches (`benches/http1.rs`) and the `ratio` binary,
//! so both measure exactly the same thing.
//!
//! HTTP/1.1 server side, on a typical ~490-byte browser request, in two shapes:
//! [`Shape::Single`] (one request per buffer/call, as a client without pipelining sends them) and
//! [`Shape::Pipelined`] (16 requests in one buffer). Three workloads per shape:
//!
//! - [`Kind::Httparse`]: raw `httparse::Request::parse` of the bytes (the baseline);
//! - [`Kind::Event`]: the bytes appended to the input buffer of one kept-alive
//!   [`ServerConnection`], `handle_input`, the `Request` and `End` events polled and dropped;
//! - [`Kind::EventResponse`]: the same plus, per request, `send_response(200,
//!   [content-type], Body::Full(12-byte static))` and the transmit drained and dropped.
//!
//! Every [`Workload::run`] handles a batch of 16 requests and returns the time its measured part
//! took (two clock reads per 16 requests, the same for every workload). `Event` has to answer
//! its requests too, or they would pile up in the connection; it does so after the measured
//! part, untimed, so its figure is the cost of bytes → events alone.
#![deny(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use ferry_http1::server::Event;
use ferry_http1::{Body, RequestId, ServerConfig, ServerConnection};
use ferry_proto::{Connection, Instant};

/// A typical browser navigation request (494 bytes, 12 header fields).
pub const BROWSER_REQUEST: &[u8] = b"GET /articles/sans-io-protocols?page=2 HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Connection: keep-alive\r\n\
Cookie: session=3f9a1c2e; theme=dark\r\n\
Referer: https://www.example.com/articles\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: same-origin\r\n\r\n";

/// Requests per batch, and the pipelining depth.
pub const BATCH: usize = 16;

/// The response body: 12 bytes, static (no copy, no allocation to build it).
pub const BODY: &[u8] = b"hello world\n";

/// How requests arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One request per read (per `parse` / `handle_input` call).
    Single,
    /// [`BATCH`] requests in one buffer, handled by one call.
    Pipelined,
}

impl Shape {
    /// `"single"` / `"pipelined16"`.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Single => "single",
            Shape::Pipelined => "pipelined16",
        }
    }
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Raw `httparse::Request::parse`.
    Httparse,
    /// Bytes → `Request` + `End` events on a `ServerConnection`.
    Event,
    /// Events plus a queued response, transmit drained.
    EventResponse,
}

impl Kind {
    /// All three, baseline first.
    pub const ALL: [Kind; 3] = [Kind::Httparse, Kind::Event, Kind::EventResponse];

    /// `"httparse"` / `"event"` / `"event+response"`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Httparse => "httparse",
            Kind::Event => "event",
            Kind::EventResponse => "event+response",
        }
    }

    /// The inverse of [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// A load the `*ratio` binaries time batch by batch.
pub trait Timed {
    /// Run one batch; how long its measured part took.
    fn run(&mut self) -> Duration;
    /// Requests per batch.
    fn per_batch(&self) -> usize;
}

/// ns per request over `batches` batches.
pub fn ns_per_request(t: &mut impl Timed, batches: u64) -> f64 {
    let d: Duration = (0..batches).map(|_| t.run()).sum();
    d.as_nanos() as f64 / (batches as f64 * t.per_batch() as f64)
}

/// How many batches' measured parts take about `target`.
pub fn calibrate(t: &mut impl Timed, target: Duration) -> u64 {
    let mut batches = 1u64;
    loop {
        let d: Duration = (0..batches).map(|_| t.run()).sum();
        if d >= target / 4 {
            return (batches as f64 * target.as_secs_f64() / d.as_secs_f64()).ceil() as u64;
        }
        batches *= 2;
    }
}

/// One workload with its state (connection, buffers), kept across runs as a kept-alive
/// connection keeps it in a server.
pub struct Workload {
    kind: Kind,
    shape: Shape,
    /// What one call consumes: one request (single) or the whole batch (pipelined).
    bytes: Vec<u8>,
    conn: ServerConnection,
    input: BytesMut,
    ids: Vec<RequestId>,
}

const NOW: Instant = Instant::from_nanos(5_000_000_000);

impl Timed for Workload {
    /// Handle one batch of [`BATCH`] requests; returns the time of the measured part.
    fn run(&mut self) -> Duration {
        let start = StdInstant::now();
        self.measured();
        let elapsed = start.elapsed();
        if self.kind == Kind::Event {
            self.answer();
        }
        elapsed
    }

    fn per_batch(&self) -> usize {
        BATCH
    }
}

impl Workload {
    /// A fresh workload.
    pub fn new(kind: Kind, shape: Shape) -> Self {
        let mut config = ServerConfig::default();
        // As a driver sets it: responses carry the cached `Date` field.
        config.date_origin_unix_nanos = Some(1_790_000_000_000_000_000);
        let bytes = match shape {
            Shape::Single => BROWSER_REQUEST.to_vec(),
            Shape::Pipelined => BROWSER_REQUEST.repeat(BATCH),
        };
        Workload {
            kind,
            shape,
            bytes,
            conn: ServerConnection::new(Arc::new(config), NOW),
            input: BytesMut::with_capacity(16 * 1024),
            ids: Vec::with_capacity(BATCH),
        }
    }

    /// The measured part (not inlined, so `callgrind --toggle-collect` can count it alone).
    #[inline(never)]
    pub fn measured(&mut self) {
        let calls = match self.shape {
            Shape::Single => BATCH,
            Shape::Pipelined => 1,
        };
        for _ in 0..calls {
            match self.kind {
                Kind::Httparse => parse_all(black_box(&self.bytes)),
                Kind::Event => self.feed(false),
                Kind::EventResponse => self.feed(true),
            }
        }
    }

    fn feed(&mut self, respond: bool) {
        self.input.extend_from_slice(black_box(&self.bytes));
        let r = self.conn.handle_input(NOW, &mut self.input);
        debug_assert!(r.is_ok() && self.input.is_empty(), "{r:?}");
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::End { id } if respond => {
                    let r = self.conn.send_response(
                        id,
                        200,
                        &[("content-type", b"text/plain")],
                        Body::Full(Bytes::from_static(BODY)),
                    );
                    debug_assert!(r.is_ok());
                }
                Event::End { id } => self.ids.push(id),
                ev => drop(black_box(ev)),
            }
        }
        if respond {
            while let Some(chunk) = self.conn.poll_transmit() {
                drop(black_box(chunk));
            }
        }
    }

    /// `Event` only: answer the batch's requests (untimed) so the connection stays in its
    /// steady state.
    fn answer(&mut self) {
        for id in self.ids.drain(..) {
            let r = self.conn.send_response(id, 200, &[], Body::Empty);
            debug_assert!(r.is_ok());
        }
        while let Some(chunk) = self.conn.poll_transmit() {
            drop(chunk);
        }
    }
}

/// Raw httparse over `buf`, request after request, with a 32-entry header array on the stack
/// (what a typical httparse user does).
fn parse_all(mut buf: &[u8]) {
    while !buf.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                black_box(&req);
                buf = &buf[len..];
            }
            other => panic!("benchmark request does not parse: {other:?}"),
        }
    }
}

/// A typical upstream response (nginx 1.22, 12-byte body), as `ferry proxy --protocol http`
/// and `ferry bench` read them through a [`ClientConnection`](ferry_http1::ClientConnection).
pub const NGINX_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.22.1\r\n\
Date: Fri, 27 Nov 2026 16:00:00 GMT\r\n\
Content-Type: text/plain\r\n\
Content-Length: 12\r\n\
Connection: keep-alive\r\n\r\n\
hello world\n";

/// The client side: per exchange, `send_request(GET /)` on one kept-alive
/// [`ClientConnection`](ferry_http1::ClientConnection), its transmit drained, then
/// [`NGINX_RESPONSE`] fed to `handle_input` and the `Response`, `Data` and `End` events polled
/// and dropped (`raw`: a bare `httparse::Response::parse` of the same bytes instead, the
/// baseline). [`measured`](Self::measured) runs [`BATCH`] exchanges;
/// `ratio run client-response|httparse-response single BATCHES` runs it under callgrind
/// (`--toggle-collect='*ClientWorkload::measured*'`).
pub struct ClientWorkload {
    raw: bool,
    conn: ferry_http1::ClientConnection,
    input: BytesMut,
}

impl ClientWorkload {
    /// A fresh workload: `raw` for the httparse baseline.
    pub fn new(raw: bool) -> Self {
        let config = Arc::new(ferry_http1::ClientConfig::default());
        ClientWorkload {
            raw,
            conn: ferry_http1::ClientConnection::new(config, NOW),
            input: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// The measured part: [`BATCH`] exchanges (not inlined, for callgrind).
    #[inline(never)]
    pub fn measured(&mut self) {
        use ferry_http1::client::Event as ClientEvent;
        for _ in 0..BATCH {
            if self.raw {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut res = httparse::Response::new(&mut headers);
                let r = res.parse(black_box(NGINX_RESPONSE));
                assert!(matches!(r, Ok(httparse::Status::Complete(_))), "{r:?}");
                black_box(&res);
                continue;
            }
            let r = self.conn.send_request(
                NOW,
                ferry_http1::Method::Get,
                "/",
                &[("host", b"upstream")],
                Body::Empty,
            );
            assert!(r.is_ok(), "{r:?}");
            while let Some(chunk) = self.conn.poll_transmit() {
                drop(black_box(chunk));
            }
            self.input.extend_from_slice(black_box(NGINX_RESPONSE));
            let r = self.conn.handle_input(NOW, &mut self.input);
            assert!(r.is_ok() && self.input.is_empty(), "{r:?}");
            let mut ended = false;
            while let Some(ev) = self.conn.poll_event() {
                ended |= matches!(ev, ClientEvent::End { .. });
                drop(black_box(ev));
            }
            assert!(ended);
        }
    }
}
