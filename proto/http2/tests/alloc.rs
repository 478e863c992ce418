//! Allocations per request on a warmed-up connection carrying h2load-like traffic: batches of
//! 32 concurrent `GET /` streams (HPACK blocks fully indexed after the first), each answered
//! with a `Body::Full` response, transmits drained. A counting global allocator counts every
//! allocation made by this test's thread during the measured batches.
//!
//! `cargo test -p ferry-http2 --test alloc -- --nocapture` prints the exact count.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_http2::{Body, Config, Event, ServerConnection, PREFACE};
use ferry_proto::{Connection, Instant};

#[path = "../../../tests/support/count_alloc.rs"]
mod count_alloc;

#[global_allocator]
static GLOBAL: count_alloc::CountingAlloc = count_alloc::CountingAlloc;

fn frame_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, id: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(id);
}

/// HEADERS (END_STREAM | END_HEADERS) for `STREAMS` streams from `*next` on.
fn batch(out: &mut BytesMut, next: &mut u32) {
    for _ in 0..STREAMS {
        let block: &[u8] = if *next == 1 {
            b"\x82\x84\x86\x41\x0e127.0.0.1:8080\x7a\x15h2load nghttp2/1.52.0"
        } else {
            b"\x82\x84\x86\xbf\xbe"
        };
        frame_head(out, block.len(), 0x1, 0x5, *next);
        out.extend_from_slice(block);
        *next += 2;
    }
}

const STREAMS: u32 = 32;

fn run_batch(conn: &mut ServerConnection, input: &mut BytesMut, next: &mut u32) -> usize {
    batch(input, next);
    conn.handle_input(Instant::ZERO, input).unwrap();
    let mut answered = 0;
    while let Some(ev) = conn.poll_event() {
        if let Event::Request { id, request } = ev {
            assert_eq!(request.path(), "/");
            conn.send_response(
                id,
                200,
                &[("content-type", b"text/plain")],
                Body::Full(Bytes::from_static(b"hello world\n")),
            )
            .unwrap();
            answered += 1;
        }
    }
    while conn.poll_transmit().is_some() {}
    answered
}

#[test]
fn allocations_per_request_stay_low() {
    let mut cfg = Config::default();
    cfg.auto_release = false;
    let mut conn = ServerConnection::new(Arc::new(cfg), Instant::ZERO);
    let mut input = BytesMut::with_capacity(64 * 1024);
    input.extend_from_slice(PREFACE);
    frame_head(&mut input, 6, 0x4, 0, 0);
    input.put_u16(0x4); // INITIAL_WINDOW_SIZE
    input.put_u32((1 << 30) - 1);
    frame_head(&mut input, 4, 0x8, 0, 0);
    input.put_u32((1 << 30) - 1 - 65_535);
    frame_head(&mut input, 0, 0x4, 0x1, 0);
    let mut next = 1;
    for _ in 0..10 {
        assert_eq!(
            run_batch(&mut conn, &mut input, &mut next),
            STREAMS as usize
        );
    }
    const BATCHES: usize = 500;
    count_alloc::assert_counting();
    let (answered, n) = count_alloc::counted(|| {
        let mut answered = 0;
        for _ in 0..BATCHES {
            answered += run_batch(&mut conn, &mut input, &mut next);
        }
        answered
    });
    assert_eq!(answered, BATCHES * STREAMS as usize);
    let per = n as f64 / answered as f64;
    println!("{n} allocations for {answered} requests ({per:.2} per request)");
    // The request's field list is the one allocation a request needs; output and input
    // buffers are reused (their occasional regrowth is amortized over the batch).
    assert!(per <= 1.5, "{per:.2} allocations per request");
}
