//! The cost in ferry-http1 of one exchange proxied by `ferry proxy --protocol http`, without
//! sockets: the state machines the proxy drives, by hand, on wrk's request and nginx's
//! response.
//!
//! One exchange: a `ServerConnection` parses `GET / HTTP/1.1\r\nHost: …\r\n\r\n` → a
//! `ClientConnection` forwards it with `send_forwarded_request` (the fields the proxy adds:
//! `x-forwarded-for`, `x-forwarded-proto`, `traceparent`, `via`) → `poll_transmit` → the
//! client parses nginx's keep-alive response → the server forwards it with
//! `send_forwarded_response` (plus `via`) and `send_data` → `poll_transmit`. Both connections
//! stay open (keep-alive), as in the proxy under `ferry bench -c16`.
//!
//! `taskset -c 1 cargo run --release -p ferry-benches --bin proxy_exchange [-- ROUNDS]`
//! prints ns and allocations per exchange. `proxy_exchange run N` runs N exchanges and
//! nothing else, for `valgrind --tool=callgrind --toggle-collect='*proxy_exchange*measured*'
//! target/release/proxy_exchange run 20000` (divide `Ir` by N plus the warm-up of 100).
//!
//! Figures (callgrind `Ir` per exchange, this bench's own part included: the input copies,
//! the proxy's hop-by-hop filter copied here): 8805 before the changes that came with it,
//! 8183 after (verbatim field lines copied in runs, no UTF-8 checks of parsed method and
//! target, `poll_transmit` inlined for its empty case, cheaper value checks and lookups);
//! 7314 with `connection_names_others`; 6092 with the proxy's extra fields as `FieldLines`
//! made once (`send_forwarded_*_extra`: `x-forwarded-for`/`x-forwarded-proto` per
//! connection, `via` once; only `traceparent` is checked per request), verbatim field lines
//! noted by the parser (no second look at their ends when forwarded), 21 inline index
//! entries (heads and events of at most 128 bytes: moved without `memcpy` calls) and short
//! `Content-Length` values read inline; 5814 with the connections' per-message work trimmed
//! (head-error paths out of line, read loops that stop on empty input instead of taking
//! another turn, `advance_front` only once a front response is complete, a parsed
//! `… HTTP/1.1` request line forwarded in one copy, `200 OK` status lines and the request
//! framing written inline): the client's `handle_input` 1829 → 1811, the server's 925 → 853,
//! `respond_with` 1467 → 1391; 5291 with field names, values and the colons of forwarded
//! lines read sixteen bytes at a time (`ferry_http1`'s `scan`: SSE2 on x86-64), the framing
//! and `Date` checks of forwarded and extra fields as word compares (the connection's facts
//! about them as bits), the extra `traceparent` value checked sixteen bytes at a time,
//! `HTTP/1.x` read as one word and the forwarding copy inlined: the client's `handle_input`
//! 1811 → 1564, the server's 853 → 812, `respond_with` 1391 → 1263; 5048 with the usual
//! status line (`HTTP/1.x DDD OK`) and a `GET ` request line start read as words, field names
//! and values split where their bounds are known, one test for the usual single space before
//! a value, and the `Connection` value compare inlined: the client's `handle_input` 1564 →
//! 1408, the server's 812 → 724. Allocations per exchange once warm: 0.
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use bytes::{Buf, Bytes, BytesMut};
use ferry_http1::client::Event as CEvent;
use ferry_http1::server::Event as SEvent;
use ferry_http1::{
    Body, ClientConfig, ClientConnection, Extra, FieldLines, ServerConfig, ServerConnection,
};
use ferry_proto::{Connection, Instant};

/// Counts heap allocations (and reallocations).
#[path = "../../../tests/support/count_alloc.rs"]
mod count_alloc;

#[global_allocator]
static GLOBAL: count_alloc::CountingAlloc = count_alloc::CountingAlloc;

/// What `ferry bench`/wrk send.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n";

/// What the nginx upstream answers.
const RESPONSE: &[u8] = ferry_benches::NGINX_RESPONSE;

/// What goes upstream.
const FORWARDED: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nvia: 1.1 ferry\r\n\r\n";

/// What goes back to the client.
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 16:00:00 GMT\r\nContent-Type: text/plain\r\nvia: 1.1 ferry\r\ncontent-length: 12\r\n\r\nhello world\n";

/// The proxy's hop-by-hop test (apps/proxy/src/http.rs).
fn hop_by_hop(name: &[u8]) -> bool {
    let is = |h: &str| name.eq_ignore_ascii_case(h.as_bytes());
    match name.len() {
        2 => is("te"),
        6 => is("expect"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        14 => is("content-length"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// The proxy's `connection_names`: fields named by `Connection` beyond the standard ones.
fn connection_names(h: &ferry_http1::Headers) -> Vec<&[u8]> {
    let mut names = Vec::new();
    for v in h.get_all("connection") {
        for t in v.split(|&b| b == b',') {
            let t = t.trim_ascii();
            if !(hop_by_hop(t) || t.eq_ignore_ascii_case(b"close") || t.is_empty()) {
                names.push(t);
            }
        }
    }
    names
}

struct Exchange {
    server: ServerConnection,
    client: ClientConnection,
    down_in: BytesMut,
    up_in: BytesMut,
    up_out: Vec<u8>,
    down_out: Vec<u8>,
    check: bool,
    /// As the proxy: `x-forwarded-for` and `x-forwarded-proto`, made once per connection.
    fwd: FieldLines,
    /// As the proxy: `via`, made once.
    via: FieldLines,
}

impl Exchange {
    fn new() -> Exchange {
        let mut scfg = ServerConfig::default();
        scfg.date_origin_unix_nanos = Some(0);
        Exchange {
            server: ServerConnection::new(Arc::new(scfg), Instant::ZERO),
            client: ClientConnection::new(Arc::new(ClientConfig::default()), Instant::ZERO),
            down_in: BytesMut::with_capacity(4096),
            up_in: BytesMut::with_capacity(4096),
            up_out: Vec::with_capacity(4096),
            down_out: Vec::with_capacity(4096),
            check: true,
            fwd: FieldLines::new(&[
                ("x-forwarded-for", &b"127.0.0.1"[..]),
                ("x-forwarded-proto", b"http"),
            ])
            .expect("fields"),
            via: FieldLines::new(&[("via", "1.1 ferry")]).expect("fields"),
        }
    }

    #[inline(never)]
    fn measured(&mut self) {
        let now = Instant::ZERO;
        // Downstream: the client's request.
        self.down_in.extend_from_slice(REQUEST);
        self.server
            .handle_input(now, &mut self.down_in)
            .expect("request");
        let Some(SEvent::Request(req)) = self.server.poll_event() else {
            panic!("no request")
        };
        while self.server.poll_event().is_some() {}
        // Upstream: forward it.
        let tp: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let fields = [
            Extra::Lines(&self.fwd),
            Extra::Field("traceparent", tp),
            Extra::Lines(&self.via),
        ];
        // As the proxy: the parser's flag says whether `Connection` may name any field.
        let named = if req.connection_names_others() {
            connection_names(req.headers())
        } else {
            Vec::new()
        };
        let keep = |n: &[u8]| {
            let ours = match n.len() {
                11 => n.eq_ignore_ascii_case(b"traceparent"),
                15 => n.eq_ignore_ascii_case(b"x-forwarded-for"),
                _ => false,
            };
            !(ours || hop_by_hop(n) || named.iter().any(|t| t.eq_ignore_ascii_case(n)))
        };
        self.client
            .send_forwarded_request_extra(now, &req, keep, &fields, Body::Empty)
            .expect("forward request");
        while let Some(mut b) = self.client.poll_transmit() {
            if self.check {
                self.up_out.extend_from_slice(&b);
            }
            b.advance(b.len());
        }
        // Upstream: nginx's response.
        self.up_in.extend_from_slice(RESPONSE);
        self.client
            .handle_input(now, &mut self.up_in)
            .expect("response");
        let mut resp = None;
        let mut body = Bytes::new();
        let mut ended = false;
        while let Some(ev) = self.client.poll_event() {
            match ev {
                CEvent::Response(r) => resp = Some(r),
                CEvent::Data { data, .. } => body = data,
                CEvent::End { .. } => ended = true,
                _ => {}
            }
        }
        let resp = resp.expect("response head");
        assert!(ended);
        // Downstream: forward it.
        let named = if resp.connection_names_others() {
            connection_names(resp.headers())
        } else {
            Vec::new()
        };
        let keep = |n: &[u8]| !(hop_by_hop(n) || named.iter().any(|t| t.eq_ignore_ascii_case(n)));
        let extra = [Extra::Lines(&self.via)];
        let len = match resp.body_kind() {
            ferry_http1::BodyKind::Length(n) => n,
            _ => panic!("length"),
        };
        self.server
            .send_forwarded_response_extra(req.id(), &resp, None, keep, &extra, Body::Length(len))
            .expect("forward response");
        self.server.send_data(req.id(), body, true).expect("body");
        while let Some(mut b) = self.server.poll_transmit() {
            if self.check {
                self.down_out.extend_from_slice(&b);
            }
            b.advance(b.len());
        }
        if self.check {
            self.check = false;
            assert_eq!(
                String::from_utf8_lossy(&self.up_out),
                String::from_utf8_lossy(FORWARDED)
            );
            assert_eq!(
                String::from_utf8_lossy(&self.down_out),
                String::from_utf8_lossy(ANSWER)
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut x = Exchange::new();
    for _ in 0..100 {
        x.measured();
    }
    if args.get(1).map(String::as_str) == Some("run") {
        let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000);
        for _ in 0..n {
            x.measured();
        }
        println!("{} exchanges (+100 warm-up)", n);
        return;
    }
    let rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let (_, allocs) = count_alloc::counted(|| {
        for _ in 0..1000 {
            x.measured();
        }
    });
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let start = StdInstant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(50) {
            for _ in 0..100 {
                x.measured();
            }
            n += 100;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(n));
    }
    println!(
        "{best:.0} ns/exchange, {:.2} allocations/exchange",
        allocs as f64 / 1000.0
    );
}
