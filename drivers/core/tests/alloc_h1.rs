//! Once warm, a keep-alive HTTP/1.1 connection served inline through `HttpAuto` (the session
//! `ferry serve` runs on its HTTP listener) allocates nothing per request: wrk's `GET /`
//! answered like the demo's `/` (`200 text/plain hello world\n`), one request per read and
//! sixteen pipelined, output taken the epoll way (`fill_iov` + `written`) and the io_uring way
//! (`take_out` + `sent`).
//!
//! `FERRY_ALLOC_TRACE=1 cargo test -p ferry-driver --test alloc_h1` prints where allocations
//! come from.

#[path = "../../../tests/support/count_alloc.rs"]
mod count_alloc;

#[global_allocator]
static GLOBAL: count_alloc::CountingAlloc = count_alloc::CountingAlloc;

use std::io::IoSlice;
use std::sync::Arc;

use bytes::Bytes;
use ferry_driver::h2::HttpAuto;
use ferry_driver::service::{ConnInfo, Request, Response, Service};
use ferry_driver::{Session, WorkerCtx};
use ferry_proto::Instant;

/// Answers like the demo's `/`.
struct Hello;

impl Service for Hello {
    fn call(&self, req: Request) -> Response {
        if req.path() == "/" {
            Response::text(200, Bytes::from_static(b"hello world\n"))
        } else {
            Response::text(404, Bytes::from_static(b"not found\n"))
        }
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

fn ctx() -> WorkerCtx {
    WorkerCtx::detached(Arc::new(Hello)).expect("eventfd")
}

fn open(ctx: &mut WorkerCtx) -> HttpAuto {
    let info = ConnInfo {
        worker: 0,
        token: 1,
        peer: None,
    };
    HttpAuto::open(ctx, &Arc::new(()), info, 1, Instant::ZERO).expect("open")
}

/// How output leaves the session.
#[derive(Clone, Copy)]
enum Drain {
    /// `fill_iov` + `written`.
    Epoll,
    /// `take_out` + `sent`, into a reused vector.
    Uring,
}

/// One read of `batch`, processed, every response taken out; returns the bytes out, and the
/// first `keep` of them.
fn turn(
    ctx: &mut WorkerCtx,
    s: &mut HttpAuto,
    batch: &[u8],
    drain: Drain,
    chunks: &mut Vec<Bytes>,
    keep: &mut Vec<u8>,
) -> usize {
    let now = ctx.clock.now();
    s.input().extend_from_slice(batch);
    s.on_read(ctx, batch.len());
    s.process(ctx, now);
    let mut total = 0;
    while s.has_output() {
        let n = match drain {
            Drain::Epoll => {
                let mut iov = [IoSlice::new(&[]); 64];
                let k = s.fill_iov(&mut iov);
                for b in &iov[..k] {
                    let room = keep.capacity() - keep.len();
                    keep.extend_from_slice(&b[..b.len().min(room)]);
                }
                let n = iov[..k].iter().map(|b| b.len()).sum();
                s.written(ctx, n);
                n
            }
            Drain::Uring => {
                s.take_out(64, chunks);
                for b in chunks.iter() {
                    let room = keep.capacity() - keep.len();
                    keep.extend_from_slice(&b[..b.len().min(room)]);
                }
                let n = chunks.iter().map(Bytes::len).sum();
                s.sent(ctx, n, chunks);
                n
            }
        };
        assert!(n > 0);
        total += n;
    }
    assert!(s.wants_read(ctx));
    assert!(!s.is_finished());
    total
}

fn check(depth: usize, drain: Drain) {
    count_alloc::assert_counting();
    let mut ctx = ctx();
    let mut s = open(&mut ctx);
    let batch = REQUEST.repeat(depth);
    let mut chunks = Vec::with_capacity(64);
    let mut first = Vec::with_capacity(4096);
    // Warm up: buffers reach their working size.
    for _ in 0..32 {
        turn(&mut ctx, &mut s, &batch, drain, &mut chunks, &mut first);
    }
    let text = String::from_utf8_lossy(&first).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: "));
    assert!(text.contains("\r\ncontent-length: 12\r\n\r\nhello world\nHTTP/1.1 200 OK\r\n"));
    let mut keep = Vec::new();
    let mut out = 0;
    let ((), allocations) = count_alloc::counted(|| {
        for _ in 0..200 {
            out += turn(&mut ctx, &mut s, &batch, drain, &mut chunks, &mut keep);
        }
    });
    let per_response = first.len().min(text.find("hello world\n").unwrap() + 12);
    assert_eq!(out, 200 * depth * per_response, "every request answered");
    assert_eq!(
        allocations,
        0,
        "{allocations} allocations for {} requests",
        200 * depth
    );
    let now = ctx.clock.now();
    s.on_eof(&mut ctx, now);
    assert!(s.is_finished());
    s.close(&mut ctx);
}

#[test]
fn one_request_per_read_allocates_nothing() {
    check(1, Drain::Epoll);
}

#[test]
fn sixteen_pipelined_allocate_nothing() {
    check(16, Drain::Epoll);
}

#[test]
fn io_uring_style_output_allocates_nothing() {
    check(1, Drain::Uring);
    check(16, Drain::Uring);
}
