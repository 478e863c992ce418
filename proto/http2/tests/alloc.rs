//! Allocations per request on a warmed-up connection carrying h2load-like traffic: batches of
//! 32 concurrent `GET /` streams (HPACK blocks fully indexed after the first), each answered
//! with a `Body::Full` response, transmits drained. A counting global allocator counts every
//! allocation made by this test's thread during the measured batches.
//!
//! `cargo test -p ferry-http2 --test alloc -- --nocapture` prints the exact count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_http2::{Body, Config, Event, ServerConnection, PREFACE};
use ferry_proto::{Connection, Instant};

/// Counts allocations (`alloc`, `alloc_zeroed`, `realloc`) made on threads that turned counting
/// on, and forwards everything to the system allocator.
struct CountingAlloc;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Count allocations of this thread only (not the test harness's).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn record() {
    // `try_with`: thread-locals may be gone while a thread exits; then nothing is counted.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the arguments it was given, so the
// `GlobalAlloc` contract carries over unchanged; the bookkeeping touches only an atomic and a
// `const`-initialised thread-local without destructor, which never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record();
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

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
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let mut answered = 0;
    for _ in 0..BATCHES {
        answered += run_batch(&mut conn, &mut input, &mut next);
    }
    COUNTING.with(|c| c.set(false));
    let n = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(answered, BATCHES * STREAMS as usize);
    let per = n as f64 / answered as f64;
    println!("{n} allocations for {answered} requests ({per:.2} per request)");
    // The request's field list is the one allocation a request needs; output and input
    // buffers are reused (their occasional regrowth is amortized over the batch).
    assert!(per <= 1.5, "{per:.2} allocations per request");
}
