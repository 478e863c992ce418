//! Zero allocations per request on a warmed-up, kept-alive `ServerConnection` (issue 3, item 5):
//! a counting global allocator counts every allocation made by this test's thread while 10 000
//! requests go through one connection (bytes fed into a reused `BytesMut`, `Request` and `End`
//! events polled and dropped, a `Body::Full` static response sent, transmits drained and
//! dropped).
//!
//! `cargo test -p ferry-http1 --test alloc -- --nocapture` prints the exact count.
//! With `FERRY_ALLOC_TRACE=1` it also prints a backtrace for each of the first 20 allocations
//! of the measured phase, to find where they come from (tests/support/count_alloc.rs).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_http1::server::Event;
use ferry_http1::{Body, ServerConfig, ServerConnection};
use ferry_proto::{Connection, Instant};

#[path = "../../../tests/support/count_alloc.rs"]
mod count_alloc;

#[global_allocator]
static GLOBAL: count_alloc::CountingAlloc = count_alloc::CountingAlloc;

/// A typical browser navigation request (~450 bytes, 13 header fields); the same bytes as
/// `benches/src/lib.rs`.
const REQUEST: &[u8] = b"GET /articles/sans-io-protocols?page=2 HTTP/1.1\r\n\
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

const WARMUP: usize = 100;
const MEASURED: usize = 10_000;

/// One keep-alive exchange, as a driver and an application would run it; returns the bytes
/// transmitted.
fn exchange(conn: &mut ServerConnection, input: &mut BytesMut, now: Instant) -> usize {
    input.extend_from_slice(REQUEST);
    conn.handle_input(now, input).expect("valid request");
    assert!(input.is_empty(), "the whole request is consumed");
    let mut ended = 0;
    while let Some(ev) = conn.poll_event() {
        match ev {
            Event::Request(req) => drop(req),
            Event::End { id } => {
                ended += 1;
                conn.send_response(
                    id,
                    200,
                    &[("content-type", b"text/plain")],
                    Body::Full(Bytes::from_static(b"hello world\n")),
                )
                .expect("response accepted");
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(ended, 1);
    let mut sent = 0;
    while let Some(chunk) = conn.poll_transmit() {
        sent += chunk.len();
        drop(chunk);
    }
    sent
}

#[test]
fn no_allocation_per_request_once_warm() {
    let mut config = ServerConfig::default();
    // As a driver configures it: responses carry the cached `Date` field.
    config.date_origin_unix_nanos = Some(1_790_000_000_000_000_000);
    let mut now = Instant::from_nanos(1_000_000_000);
    let mut conn = ServerConnection::new(Arc::new(config), now);
    let mut input = BytesMut::with_capacity(4096);

    for _ in 0..WARMUP {
        now += std::time::Duration::from_millis(1);
        assert!(exchange(&mut conn, &mut input, now) > 0);
    }

    count_alloc::assert_counting();
    let (sent, allocations) = count_alloc::counted(|| {
        let mut sent = 0;
        for _ in 0..MEASURED {
            // 1 ms per request: the `Date` field changes every 1000 requests.
            now += std::time::Duration::from_millis(1);
            sent += exchange(&mut conn, &mut input, now);
        }
        sent
    });

    assert!(sent > MEASURED * 100, "responses were sent");
    assert_eq!(conn.requests(), (WARMUP + MEASURED) as u64);
    eprintln!(
        "{allocations} allocations over {MEASURED} kept-alive requests ({:.4} per request)",
        allocations as f64 / MEASURED as f64
    );
    // Zero per request; a handful in total is tolerated for amortized buffer growth.
    assert!(
        allocations <= 10,
        "{allocations} allocations over {MEASURED} requests (at most 10 allowed)"
    );
}

/// `batch` requests (each `request`) pipelined in one buffer, answered, transmits drained;
/// returns the bytes transmitted.
fn pipelined(
    conn: &mut ServerConnection,
    input: &mut BytesMut,
    now: Instant,
    request: &[u8],
    batch: usize,
) -> usize {
    for _ in 0..batch {
        input.extend_from_slice(request);
    }
    conn.handle_input(now, input).expect("valid requests");
    assert!(input.is_empty(), "the whole batch is consumed");
    let mut ended = 0;
    while let Some(ev) = conn.poll_event() {
        match ev {
            Event::Request(req) => drop(req),
            Event::End { id } => {
                ended += 1;
                conn.send_response(
                    id,
                    200,
                    &[("content-type", b"text/plain")],
                    Body::Full(Bytes::from_static(b"hello world\n")),
                )
                .expect("response accepted");
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(ended, batch);
    let mut sent = 0;
    while let Some(chunk) = conn.poll_transmit() {
        sent += chunk.len();
    }
    sent
}

/// Allocations made by `run` on this thread.
fn count_allocations(run: impl FnOnce()) -> usize {
    count_alloc::counted(run).1
}

/// The same for pipelined batches of 16, with the browser request and with one whose 30
/// fields do not fit in a `Request`'s own field index (it goes to the connection's reused
/// index buffer instead).
#[test]
fn no_allocation_per_pipelined_request_once_warm() {
    let mut many = b"GET /many HTTP/1.1\r\nHost: example.com\r\n".to_vec();
    for i in 0..29 {
        many.extend_from_slice(format!("X-Field-{i}: value {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    for request in [REQUEST, &many[..]] {
        let mut config = ServerConfig::default();
        config.date_origin_unix_nanos = Some(1_790_000_000_000_000_000);
        let mut now = Instant::from_nanos(1_000_000_000);
        let mut conn = ServerConnection::new(Arc::new(config), now);
        let mut input = BytesMut::with_capacity(64 * 1024);
        for _ in 0..20 {
            now += std::time::Duration::from_millis(1);
            pipelined(&mut conn, &mut input, now, request, 16);
        }
        let batches = 500;
        let allocations = count_allocations(|| {
            for _ in 0..batches {
                now += std::time::Duration::from_millis(1);
                assert!(pipelined(&mut conn, &mut input, now, request, 16) > 0);
            }
        });
        eprintln!(
            "{allocations} allocations over {} pipelined requests ({} bytes each)",
            batches * 16,
            request.len()
        );
        assert!(
            allocations <= 10,
            "{allocations} allocations over {} pipelined requests",
            batches * 16
        );
    }
}
