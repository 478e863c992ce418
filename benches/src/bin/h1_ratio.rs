//! The server's cost per HTTP/1.1 request as `ferry serve --http` pays it under wrk, without
//! sockets: one keep-alive connection carrying wrk's `GET / HTTP/1.1\r\nHost: …\r\n\r\n`
//! through
//!
//! - `driver`: `ferry_driver::h2::HttpAuto` (the session `ferry serve` runs on its HTTP
//!   listener) with the demo application itself (`src/demo.rs`, route `/` → `200 text/plain
//!   hello world\n`), one request per read as wrk sends them; output taken the epoll way
//!   (`fill_iov` + `written`);
//! - `driver-p16`: the same, 16 pipelined requests per read;
//! - `proto`: a bare `ferry_http1::ServerConnection` answering each request with the same
//!   response (`send_response` with a full body), output drained with `poll_transmit`.
//!
//! It also counts heap allocations (a counting global allocator) and prints them per request.
//!
//! Run it pinned, in release mode:
//! `taskset -c 1 cargo run --release -p ferry-benches --bin h1_ratio [-- ROUNDS]` prints ns
//! and allocations per request (fastest of ROUNDS rounds of ~50 ms, interleaved).
//!
//! `h1_ratio run WORKLOAD N` runs N batches of one workload and nothing else, for
//! `valgrind --tool=callgrind --toggle-collect='*h1_ratio*measured*' target/release/h1_ratio
//! run driver 20000`, which counts the instructions of the measured part alone; divide the
//! reported `Ir` by the request count it prints (every call of `measured` counts, the
//! warm-up's too). `h1_ratio sizes` prints the sizes of the types moved per request.
//!
//! Figures (callgrind `Ir` per request; "session" counts only the calls into `HttpAuto`,
//! leaving out this bench's own part: the input copy standing in for `read`, the `IoSlice`
//! arrays, the clock):
//!
//! | workload     | before: all | before: session | after: all | after: session |
//! |--------------|------------:|----------------:|-----------:|---------------:|
//! | `driver`     |        4496 |            3871 |       3301 |           2676 |
//! | `driver-p16` |        3573 |            3525 |       2336 |           2277 |
//! | `proto`      |        2281 |               – |       2046 |              – |
//!
//! Allocations per request once warm went from 1 (`driver`) and 1.1 (`driver-p16`) to 0
//! (pinned by `drivers/core/tests/alloc_h1.rs`).
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use bytes::{Buf, BytesMut};
use ferry_benches::{calibrate, ns_per_request, Timed};
use ferry_driver::h2::HttpAuto;
use ferry_driver::service::ConnInfo;
use ferry_driver::{Clock, Session, WorkerCtx};
use ferry_http1::{server::Event, Body, ServerConfig, ServerConnection};
use ferry_proto::{Connection, Instant};

#[allow(dead_code)]
#[path = "../../../src/demo.rs"]
mod demo;

/// Counts heap allocations (and reallocations).
#[path = "../../../tests/support/count_alloc.rs"]
mod count_alloc;

#[global_allocator]
static GLOBAL: count_alloc::CountingAlloc = count_alloc::CountingAlloc;

/// What wrk sends for `wrk http://127.0.0.1:8080/`.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// What the demo's `/` answers, minus the `date` field (checked once per workload).
const RESPONSE_PREFIX: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n";

fn ctx() -> WorkerCtx {
    WorkerCtx::detached(Arc::new(demo::Demo::new())).expect("eventfd")
}

/// The `ferry serve` session on one connection, `depth` requests per read.
struct DriverLoad {
    ctx: WorkerCtx,
    session: HttpAuto,
    batch: Vec<u8>,
    depth: usize,
    out_bytes: usize,
    /// A copy of the first response, checked once.
    sample: Option<Vec<u8>>,
}

impl DriverLoad {
    fn new(depth: usize) -> DriverLoad {
        let mut ctx = ctx();
        let info = ConnInfo {
            worker: 0,
            token: 1,
            peer: None,
        };
        let session =
            HttpAuto::open(&mut ctx, &Arc::new(()), info, 1, Instant::ZERO).expect("open");
        DriverLoad {
            ctx,
            session,
            batch: REQUEST.repeat(depth),
            depth,
            out_bytes: 0,
            sample: None,
        }
    }

    fn drain(&mut self) -> usize {
        let mut total = 0;
        loop {
            let mut iov = [IoSlice::new(&[]); 64];
            let n = self.session.fill_iov(&mut iov);
            if n == 0 {
                break;
            }
            if self.sample.is_none() {
                self.sample = Some(iov[..n].iter().flat_map(|s| s.iter().copied()).collect());
            }
            let len: usize = iov[..n].iter().map(|s| s.len()).sum();
            self.session.written(&self.ctx, len);
            total += len;
        }
        total
    }

    /// One read's worth of requests in, every response out (as the epoll driver does it).
    #[inline(never)]
    fn measured(&mut self) {
        let now = self.ctx.clock.now();
        let n = self.batch.len();
        self.session.input().extend_from_slice(&self.batch);
        self.session.on_read(&self.ctx, n);
        self.session.process(&mut self.ctx, now);
        let _ = self.session.wants_read(&self.ctx);
        self.out_bytes = self.drain();
        let _ = self.session.is_finished();
        let _ = self.session.poll_timeout();
    }

    fn run(&mut self) -> Duration {
        let t = StdInstant::now();
        self.measured();
        let d = t.elapsed();
        assert!(self.out_bytes > 0, "no response");
        d
    }
}

/// A bare `ServerConnection` answering each request.
struct ProtoLoad {
    conn: ServerConnection,
    input: BytesMut,
    out_bytes: usize,
}

impl ProtoLoad {
    fn new() -> ProtoLoad {
        let clock = Clock::new();
        let mut cfg = ServerConfig::default();
        cfg.date_origin_unix_nanos = Some(clock.unix_origin_nanos());
        ProtoLoad {
            conn: ServerConnection::new(Arc::new(cfg), Instant::ZERO),
            input: BytesMut::new(),
            out_bytes: 0,
        }
    }

    #[inline(never)]
    fn measured(&mut self) {
        self.input.extend_from_slice(REQUEST);
        let _ = self.conn.handle_input(Instant::ZERO, &mut self.input);
        while let Some(ev) = self.conn.poll_event() {
            if let Event::Request(r) = ev {
                let _ = self.conn.send_response(
                    r.id(),
                    200,
                    &[("content-type", b"text/plain")],
                    Body::Full(bytes::Bytes::from_static(b"hello world\n")),
                );
            }
        }
        let mut out = 0;
        while let Some(mut b) = self.conn.poll_transmit() {
            out += b.len();
            b.advance(b.len());
        }
        self.out_bytes = out;
    }

    fn run(&mut self) -> Duration {
        let t = StdInstant::now();
        self.measured();
        let d = t.elapsed();
        assert!(self.out_bytes > 0, "no response");
        d
    }
}

enum Load {
    Driver(Box<DriverLoad>),
    Proto(Box<ProtoLoad>),
}

impl Load {
    fn new(name: &str) -> Load {
        match name {
            "driver" => Load::Driver(Box::new(DriverLoad::new(1))),
            "driver-p16" => Load::Driver(Box::new(DriverLoad::new(16))),
            "proto" => Load::Proto(Box::new(ProtoLoad::new())),
            other => {
                eprintln!("unknown workload {other:?} (driver | driver-p16 | proto)");
                std::process::exit(2);
            }
        }
    }

    /// Run a few batches, check the response, and return allocations per request once warm.
    fn warm_up(&mut self) -> f64 {
        for _ in 0..WARM_UP {
            self.run();
        }
        if let Load::Driver(d) = self {
            let s = d.sample.as_deref().expect("a response");
            assert!(
                s.starts_with(RESPONSE_PREFIX),
                "{}",
                String::from_utf8_lossy(s)
            );
            assert!(
                s.ends_with(b"content-length: 12\r\n\r\nhello world\n"),
                "{}",
                String::from_utf8_lossy(s)
            );
        }
        let ((), n) = count_alloc::counted(|| {
            for _ in 0..ALLOC_BATCHES {
                self.run();
            }
        });
        n as f64 / (ALLOC_BATCHES as usize * self.per_batch()) as f64
    }
}

impl Timed for Load {
    fn run(&mut self) -> Duration {
        match self {
            Load::Driver(d) => d.run(),
            Load::Proto(p) => p.run(),
        }
    }

    fn per_batch(&self) -> usize {
        match self {
            Load::Driver(d) => d.depth,
            Load::Proto(_) => 1,
        }
    }
}

/// Batches run before counting allocations.
const WARM_UP: u64 = 64;
/// Batches over which allocations are counted.
const ALLOC_BATCHES: u64 = 1000;

const NAMES: [&str; 3] = ["driver", "driver-p16", "proto"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("sizes") {
        println!(
            "Request {} http1::Request {} Response {} Event {} Part {}",
            std::mem::size_of::<ferry_driver::service::Request>(),
            std::mem::size_of::<ferry_http1::Request>(),
            std::mem::size_of::<ferry_driver::service::Response>(),
            std::mem::size_of::<Event>(),
            std::mem::size_of::<ferry_driver::service::Part>(),
        );
        return;
    }
    if args.first().map(String::as_str) == Some("run") {
        let name = args.get(1).map_or("driver", String::as_str);
        let batches: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000);
        let mut l = Load::new(name);
        let allocs = l.warm_up();
        for _ in 0..batches {
            l.run();
        }
        // Every call of `measured` counts, the warm-up's too.
        let total = batches + WARM_UP + ALLOC_BATCHES;
        println!(
            "{name}: {} requests ({total} batches of {}), {allocs:.3} allocations/request",
            total * l.per_batch() as u64,
            l.per_batch()
        );
        return;
    }
    let rounds: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(15);
    let mut loads: Vec<(Load, u64, f64, f64)> = NAMES
        .iter()
        .map(|n| {
            let mut l = Load::new(n);
            let allocs = l.warm_up();
            let b = calibrate(&mut l, Duration::from_millis(50));
            (l, b, f64::INFINITY, allocs)
        })
        .collect();
    for _ in 0..rounds {
        for (l, b, best, _) in loads.iter_mut() {
            *best = best.min(ns_per_request(l, *b));
        }
    }
    for (n, (_, _, best, allocs)) in NAMES.iter().zip(&loads) {
        println!(
            "{n:>10}: {best:8.1} ns/request, {allocs:.3} allocations/request (fastest of {rounds} rounds)"
        );
    }
}
