//! The server's cost per h2c request as `ferry serve` pays it, without sockets: one
//! connection carrying h2load-like traffic (`h2load -c16 -m32`: batches of 32 concurrent
//! `GET /` streams whose HPACK blocks are all indexed after the first) through
//!
//! - `driver`: `ferry_driver::h2::HttpAuto` (the session `ferry serve` runs on its HTTP
//!   listener) with a service answering like the demo's `/` (`text/plain`, `hello world\n`),
//!   output taken the epoll way (`fill_iov` + `written`);
//! - `proto`: a bare `ferry_http2::ServerConnection` answering each request event with the same
//!   response (`send_response` with a full body), output drained with `poll_transmit`.
//!
//! Run it pinned, in release mode:
//! `taskset -c 1 cargo run --release -p ferry-benches --bin h2_ratio [-- ROUNDS]` prints ns per
//! request (fastest of ROUNDS rounds of ~50 ms, interleaved).
//!
//! `h2_ratio run WORKLOAD BATCHES` runs one workload and nothing else, for
//! `valgrind --tool=callgrind --toggle-collect='*h2_ratio*measured*' target/release/h2_ratio run
//! driver 2000`, which counts the instructions of the measured part alone; divide the reported
//! `Ir` by the request count it prints (BATCHES × 32).
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use bytes::{BufMut, Bytes, BytesMut};
use ferry_benches::{calibrate, ns_per_request, Timed};
use ferry_driver::h2::HttpAuto;
use ferry_driver::service::{ConnInfo, Request, Response, Service};
use ferry_driver::{Session, WorkerCtx};
use ferry_http2::{Body, Event, ServerConnection};
use ferry_proto::{Connection, Instant};

/// Streams per batch (h2load `-m32`).
const STREAMS: u32 = 32;

/// The demo's `/`.
struct Hello;

impl Service for Hello {
    fn call(&self, _req: Request) -> Response {
        Response::text(200, Bytes::from_static(b"hello world\n"))
    }
}

fn frame_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, id: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(id);
}

/// What h2load sends first: preface, SETTINGS (window 2^30-1), a connection WINDOW_UPDATE to
/// 2^30-1, and the ACK of the server's SETTINGS.
fn client_preface() -> BytesMut {
    let mut b = BytesMut::new();
    b.extend_from_slice(ferry_http2::PREFACE);
    frame_head(&mut b, 12, 0x4, 0, 0);
    b.put_u16(0x3); // MAX_CONCURRENT_STREAMS
    b.put_u32(100);
    b.put_u16(0x4); // INITIAL_WINDOW_SIZE
    b.put_u32((1 << 30) - 1);
    frame_head(&mut b, 4, 0x8, 0, 0);
    b.put_u32((1 << 30) - 1 - 65_535);
    frame_head(&mut b, 0, 0x4, 0x1, 0);
    b
}

/// h2load's request block: `:method GET`, `:path /`, `:scheme http` from the static table;
/// `:authority` and `user-agent` literal with incremental indexing the first time, then
/// indexed (dynamic 63 and 62).
fn request_block(first: bool) -> Vec<u8> {
    let mut b = vec![0x82, 0x84, 0x86];
    if first {
        let authority = b"127.0.0.1:8080";
        b.push(0x41);
        b.push(authority.len() as u8);
        b.extend_from_slice(authority);
        let agent = b"h2load nghttp2/1.52.0";
        b.push(0x40 | 58);
        b.push(agent.len() as u8);
        b.extend_from_slice(agent);
    } else {
        b.extend_from_slice(&[0xbf, 0xbe]);
    }
    b
}

/// Builds one batch of HEADERS frames (END_STREAM | END_HEADERS) for consecutive streams.
struct Client {
    next: u32,
    batch: BytesMut,
    first: Vec<u8>,
    later: Vec<u8>,
}

impl Client {
    fn new() -> Client {
        Client {
            next: 1,
            batch: BytesMut::new(),
            first: request_block(true),
            later: request_block(false),
        }
    }

    /// The next batch of `STREAMS` requests (stream ids wrap by starting a new connection).
    fn batch(&mut self) -> &[u8] {
        self.batch.clear();
        for _ in 0..STREAMS {
            let block = if self.next == 1 {
                &self.first
            } else {
                &self.later
            };
            frame_head(&mut self.batch, block.len(), 0x1, 0x5, self.next);
            self.batch.extend_from_slice(block);
            self.next += 2;
        }
        &self.batch
    }
}

fn ctx() -> WorkerCtx {
    WorkerCtx::detached(Arc::new(Hello)).expect("eventfd")
}

/// Batches per connection before a fresh one (keeps stream ids far below 2^31).
const BATCHES_PER_CONN: u64 = 1 << 20;

/// The `ferry serve` session on one connection.
struct DriverLoad {
    ctx: WorkerCtx,
    session: HttpAuto,
    client: Client,
    batches: u64,
    out_bytes: usize,
}

impl DriverLoad {
    fn new() -> DriverLoad {
        let mut ctx = ctx();
        let info = ConnInfo {
            worker: 0,
            token: 1,
            peer: None,
        };
        let mut session =
            HttpAuto::open(&mut ctx, &Arc::new(()), info, 1, Instant::ZERO).expect("open");
        let pre = client_preface();
        session.input().extend_from_slice(&pre);
        session.on_read(&ctx, pre.len());
        session.process(&mut ctx, Instant::ZERO);
        let mut d = DriverLoad {
            ctx,
            session,
            client: Client::new(),
            batches: 0,
            out_bytes: 0,
        };
        d.drain();
        d
    }

    fn drain(&mut self) -> usize {
        let mut total = 0;
        loop {
            let mut iov = [IoSlice::new(&[]); 64];
            let n = self.session.fill_iov(&mut iov);
            if n == 0 {
                break;
            }
            let len: usize = iov[..n].iter().map(|s| s.len()).sum();
            self.session.written(&self.ctx, len);
            total += len;
        }
        total
    }

    /// One batch: 32 requests in, every response out.
    #[inline(never)]
    fn measured(&mut self) {
        let now = self.ctx.clock.now();
        let batch = self.client.batch();
        self.session.input().extend_from_slice(batch);
        let n = batch.len();
        self.session.on_read(&self.ctx, n);
        self.session.process(&mut self.ctx, now);
        self.out_bytes = self.drain();
    }

    fn run(&mut self) -> Duration {
        if self.batches == BATCHES_PER_CONN {
            *self = DriverLoad::new();
        }
        self.batches += 1;
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
    client: Client,
    batches: u64,
    out_bytes: usize,
}

impl ProtoLoad {
    fn new() -> ProtoLoad {
        let mut cfg = ferry_http2::Config::default();
        cfg.auto_release = false;
        let mut p = ProtoLoad {
            conn: ServerConnection::new(Arc::new(cfg), Instant::ZERO),
            input: client_preface(),
            client: Client::new(),
            batches: 0,
            out_bytes: 0,
        };
        p.conn
            .handle_input(Instant::ZERO, &mut p.input)
            .expect("preface");
        while p.conn.poll_event().is_some() {}
        while p.conn.poll_transmit().is_some() {}
        p
    }

    #[inline(never)]
    fn measured(&mut self) {
        let batch = self.client.batch();
        self.input.extend_from_slice(batch);
        let _ = self.conn.handle_input(Instant::ZERO, &mut self.input);
        while let Some(ev) = self.conn.poll_event() {
            if let Event::Request { id, .. } = ev {
                let _ = self.conn.send_response(
                    id,
                    200,
                    &[("content-type", b"text/plain")],
                    Body::Full(Bytes::from_static(b"hello world\n")),
                );
            }
        }
        let mut out = 0;
        while let Some(b) = self.conn.poll_transmit() {
            out += b.len();
        }
        self.out_bytes = out;
    }

    fn run(&mut self) -> Duration {
        if self.batches == BATCHES_PER_CONN {
            *self = ProtoLoad::new();
        }
        self.batches += 1;
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
            "driver" => Load::Driver(Box::new(DriverLoad::new())),
            "proto" => Load::Proto(Box::new(ProtoLoad::new())),
            other => {
                eprintln!("unknown workload {other:?} (driver | proto)");
                std::process::exit(2);
            }
        }
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
        STREAMS as usize
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("run") {
        let name = args.get(1).map_or("driver", String::as_str);
        let batches: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
        let mut l = Load::new(name);
        for _ in 0..batches {
            l.run();
        }
        println!(
            "{name}: {} requests ({batches} batches of {STREAMS})",
            batches * u64::from(STREAMS)
        );
        return;
    }
    let rounds: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(15);
    let names = ["driver", "proto"];
    let mut loads: Vec<(Load, u64, f64)> = names
        .iter()
        .map(|n| {
            let mut l = Load::new(n);
            let b = calibrate(&mut l, Duration::from_millis(50));
            (l, b, f64::INFINITY)
        })
        .collect();
    for _ in 0..rounds {
        for (l, b, best) in loads.iter_mut() {
            *best = best.min(ns_per_request(l, *b));
        }
    }
    for (n, (_, _, best)) in names.iter().zip(&loads) {
        println!("{n:>7}: {best:8.1} ns/request (fastest of {rounds} rounds)");
    }
}
