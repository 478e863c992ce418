//! Workloads shared by Ferry's criterion benches (`benches/http1.rs`) and the `ratio` binary,
//! so both measure exactly the same thing.
//!
//! HTTP/1.1 server side, for one typical browser request and for a pipelined batch of 16:
//!
//! - [`HttparseParse`]: raw `httparse::Request::parse` of the bytes (the baseline);
//! - [`ServerEvent`]: the bytes fed to one kept-alive [`ServerConnection`], the `Request` and
//!   `End` events polled and dropped;
//! - [`ServerRespond`]: the same plus `send_response(200, content-type, 12-byte static body)`
//!   and the transmit drained and dropped.
//!
//! Each workload keeps its state across iterations (one connection, one input buffer refilled
//! every iteration), as a kept-alive connection in a server does.
#![deny(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_http1::server::Event;
use ferry_http1::{Body, ServerConfig, ServerConnection};
use ferry_proto::{Connection, Instant};

/// A typical browser navigation request (~450 bytes, 13 header fields).
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

/// Requests per pipelined batch.
pub const PIPELINE_DEPTH: usize = 16;

/// The response body: 12 bytes, static (no copy, no allocation to build it).
pub const BODY: &[u8] = b"hello world\n";

/// `n` copies of [`BROWSER_REQUEST`] in one buffer.
pub fn batch(n: usize) -> Vec<u8> {
    BROWSER_REQUEST.repeat(n)
}

/// A measured workload: one call handles `requests()` requests.
pub trait Workload {
    /// Requests handled by one [`run`](Workload::run).
    fn requests(&self) -> usize;
    /// Handle one batch.
    fn run(&mut self);
}

/// Raw `httparse::Request::parse` over the buffer, request after request, with a
/// 32-entry header array (what a typical httparse user allocates on the stack).
pub struct HttparseParse {
    bytes: Vec<u8>,
    n: usize,
}

impl HttparseParse {
    /// Over `n` pipelined copies of the browser request.
    pub fn new(n: usize) -> Self {
        HttparseParse { bytes: batch(n), n }
    }
}

impl Workload for HttparseParse {
    fn requests(&self) -> usize {
        self.n
    }

    fn run(&mut self) {
        let mut buf: &[u8] = black_box(&self.bytes);
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
}

fn config() -> Arc<ServerConfig> {
    let mut c = ServerConfig::default();
    // As a driver sets it: responses carry a cached `Date` field.
    c.date_origin_unix_nanos = Some(1_790_000_000_000_000_000);
    Arc::new(c)
}

const NOW: Instant = Instant::from_nanos(5_000_000_000);

/// Bytes → `Request` (and `End`) events on a kept-alive `ServerConnection`, events dropped, no
/// responses.
///
/// Unanswered requests pile up in the connection (at most `max_pipelined`, then it stops
/// reading), so the connection is replaced by a fresh one when 48 are outstanding: one
/// construction per 48 requests, a negligible share.
pub struct ServerEvent {
    bytes: Vec<u8>,
    n: usize,
    config: Arc<ServerConfig>,
    conn: ServerConnection,
    input: BytesMut,
}

impl ServerEvent {
    /// Over `n` pipelined copies of the browser request.
    pub fn new(n: usize) -> Self {
        let config = config();
        let conn = ServerConnection::new(config.clone(), NOW);
        ServerEvent {
            bytes: batch(n),
            n,
            config,
            conn,
            input: BytesMut::with_capacity(16 * 1024),
        }
    }
}

impl Workload for ServerEvent {
    fn requests(&self) -> usize {
        self.n
    }

    fn run(&mut self) {
        if self.conn.in_flight() + self.n > 48 {
            self.conn = ServerConnection::new(self.config.clone(), NOW);
        }
        self.input.extend_from_slice(black_box(&self.bytes));
        let r = self.conn.handle_input(NOW, &mut self.input);
        debug_assert!(r.is_ok() && self.input.is_empty());
        while let Some(ev) = self.conn.poll_event() {
            black_box(&ev);
        }
    }
}

/// Bytes → events → `send_response(200, [content-type], Body::Full(12-byte static))` for each
/// request → transmit drained; one kept-alive connection for the whole run.
pub struct ServerRespond {
    bytes: Vec<u8>,
    n: usize,
    conn: ServerConnection,
    input: BytesMut,
}

impl ServerRespond {
    /// Over `n` pipelined copies of the browser request.
    pub fn new(n: usize) -> Self {
        let conn = ServerConnection::new(config(), NOW);
        ServerRespond {
            bytes: batch(n),
            n,
            conn,
            input: BytesMut::with_capacity(16 * 1024),
        }
    }
}

impl Workload for ServerRespond {
    fn requests(&self) -> usize {
        self.n
    }

    fn run(&mut self) {
        self.input.extend_from_slice(black_box(&self.bytes));
        let r = self.conn.handle_input(NOW, &mut self.input);
        debug_assert!(r.is_ok() && self.input.is_empty());
        while let Some(ev) = self.conn.poll_event() {
            if let Event::End { id } = ev {
                let r = self.conn.send_response(
                    id,
                    200,
                    &[("content-type", b"text/plain")],
                    Body::Full(Bytes::from_static(BODY)),
                );
                debug_assert!(r.is_ok());
            } else {
                black_box(&ev);
            }
        }
        while let Some(chunk) = self.conn.poll_transmit() {
            black_box(&chunk);
        }
    }
}
