//! User-space cost per command of `ferry serve --redis`: redis-benchmark's exact request bytes
//! (`SET key:__rand_int__ xxx` / `GET key:__rand_int__`, 16 pipelined or one at a time) fed
//! through the path the epoll and io_uring drivers run: `RespSession` (ferry-driver) → the
//! RESP server connection → the `Kv` service of `src/redis.rs` (ferry-kv's store) → reply
//! encoding → the output queue, drained as a driver does. No sockets, no syscalls.
//!
//! Run it pinned, in release mode:
//! `taskset -c 1 cargo run --release -p ferry-benches --bin resp_ratio [-- ROUNDS]`.
//! It prints, per workload, ns per command (best of ROUNDS rounds of ~50 ms) and heap
//! allocations per command once warm (a counting global allocator).
//!
//! `resp_ratio run WORKLOAD BATCHES` runs one workload and nothing else, for
//! `valgrind --tool=callgrind --toggle-collect='*Bench*measured*' …`, which counts the
//! instructions of the measured part alone; divide by BATCHES × commands per batch.
//! Workloads: `set16 get16 set1 get1` (the fixed key redis-benchmark sends without `-r`)
//! and `rset16 rget16` (keys `key:000000000000`…, 100 000 of them, as with `-r 100000`).
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use ferry_driver::resp::{RespSession, RespShared};
use ferry_driver::{
    ConnInfo, Launch, ListenAddr, Request, Response, ServerOptions, Service, Session, WorkerCtx,
};
use ferry_proto::Instant;

#[allow(dead_code)]
#[path = "../../../src/redis.rs"]
mod redis;

/// Counts heap allocations (and reallocations).
#[path = "../../../tests/support/count_alloc.rs"]
mod count_alloc;

#[global_allocator]
static GLOBAL: count_alloc::CountingAlloc = count_alloc::CountingAlloc;

struct Nothing;
impl Service for Nothing {
    fn call(&self, _req: Request) -> Response {
        Response::text(404, "")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Set,
    Get,
}

#[derive(Clone, Copy, Debug)]
struct Kind {
    name: &'static str,
    op: Op,
    pipeline: usize,
    /// Distinct keys (`None`: redis-benchmark's fixed `key:__rand_int__`).
    keys: Option<u64>,
}

const KINDS: [Kind; 6] = [
    Kind {
        name: "set16",
        op: Op::Set,
        pipeline: 16,
        keys: None,
    },
    Kind {
        name: "get16",
        op: Op::Get,
        pipeline: 16,
        keys: None,
    },
    Kind {
        name: "set1",
        op: Op::Set,
        pipeline: 1,
        keys: None,
    },
    Kind {
        name: "get1",
        op: Op::Get,
        pipeline: 1,
        keys: None,
    },
    Kind {
        name: "rset16",
        op: Op::Set,
        pipeline: 16,
        keys: Some(100_000),
    },
    Kind {
        name: "rget16",
        op: Op::Get,
        pipeline: 16,
        keys: Some(100_000),
    },
];

/// redis-benchmark's bytes for one command (`redisFormatCommand`).
fn command(op: Op, key: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let mut arg = |a: &[u8]| {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    };
    let mut head = match op {
        Op::Set => b"*3\r\n".to_vec(),
        Op::Get => b"*2\r\n".to_vec(),
    };
    match op {
        Op::Set => {
            arg(b"SET");
            arg(key);
            arg(b"xxx");
        }
        Op::Get => {
            arg(b"GET");
            arg(key);
        }
    }
    head.extend_from_slice(&v);
    head
}

struct Bench {
    kind: Kind,
    ctx: WorkerCtx,
    session: Option<RespSession<redis::Kv>>,
    /// Pre-built batches (one for fixed keys; a rotation for random keys).
    batches: Vec<Vec<u8>>,
    next: usize,
    now: u64,
    /// Reply bytes expected per batch (checked when warming up).
    reply_len: usize,
    _shared: Arc<RespShared<redis::Kv>>,
}

impl Bench {
    fn new(kind: Kind) -> Bench {
        let opts = ServerOptions {
            workers: 1,
            pin: false,
            ..ServerOptions::default()
        };
        let mut launch = Launch::prepare(
            "127.0.0.1:0".parse::<ListenAddr>().expect("addr"),
            opts,
            Arc::new(Nothing),
        )
        .expect("prepare");
        let shared = RespShared::new(
            redis::Kv::new(0, 6379),
            ferry_resp::ServerConfig::default(),
            &launch,
            0,
        );
        let mut ctx = launch.workers.remove(0);
        let info = ConnInfo {
            worker: 0,
            token: 0,
            peer: None,
        };
        let session = RespSession::open(&mut ctx, &shared, info, 1, Instant::ZERO).expect("open");
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let nbatches = if kind.keys.is_some() { 4096 } else { 1 };
        let batches = (0..nbatches)
            .map(|_| {
                let mut b = Vec::new();
                for _ in 0..kind.pipeline {
                    let key = match kind.keys {
                        None => b"key:__rand_int__".to_vec(),
                        Some(n) => {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            format!("key:{:012}", rng % n).into_bytes()
                        }
                    };
                    b.extend_from_slice(&command(kind.op, &key));
                }
                b
            })
            .collect();
        let mut b = Bench {
            kind,
            ctx,
            session: Some(session),
            batches,
            next: 0,
            now: 0,
            reply_len: 0,
            _shared: shared,
        };
        // Populate for GETs (every key of the random set), then warm up.
        if kind.op == Op::Get {
            b.populate();
        }
        let expect = match kind.op {
            Op::Set => 5 * kind.pipeline,
            Op::Get => 9 * kind.pipeline,
        };
        for _ in 0..64 {
            b.reply_len = b.batch();
        }
        assert_eq!(b.reply_len, expect, "{}: unexpected reply bytes", kind.name);
        b
    }

    /// SET every key the GET batches ask for.
    fn populate(&mut self) {
        let mut sets = Vec::new();
        for batch in &self.batches {
            let mut rest = &batch[..];
            while !rest.is_empty() {
                // `*2\r\n$3\r\nGET\r\n$L\r\nKEY\r\n` → `SET KEY xxx`.
                let s = std::str::from_utf8(rest).expect("ascii");
                let after = &s[13..];
                let nl = after.find("\r\n").expect("len");
                let len: usize = after[1..nl].parse().expect("len");
                let key = &after[nl + 2..nl + 2 + len];
                sets.extend_from_slice(&command(Op::Set, key.as_bytes()));
                rest = &rest[13 + nl + 2 + len + 2..];
            }
        }
        self.feed(&sets.clone());
    }

    fn feed(&mut self, bytes: &[u8]) -> usize {
        let s = self.session.as_mut().expect("session");
        s.input().extend_from_slice(bytes);
        s.on_read(&self.ctx, bytes.len());
        self.now += 1_000;
        s.process(&mut self.ctx, Instant::from_nanos(self.now));
        let mut total = 0;
        while s.has_output() {
            let mut iov = [IoSlice::new(&[]); 64];
            let n = s.fill_iov(&mut iov);
            let len: usize = iov[..n].iter().map(|b| b.len()).sum();
            s.written(&self.ctx, len);
            total += len;
        }
        total
    }

    /// One batch through the session; returns the reply bytes.
    #[inline(never)]
    fn batch(&mut self) -> usize {
        let i = self.next;
        self.next = (self.next + 1) % self.batches.len();
        let bytes = std::mem::take(&mut self.batches[i]);
        let n = self.feed(&bytes);
        self.batches[i] = bytes;
        n
    }

    /// `batches` batches: the part callgrind counts.
    #[inline(never)]
    fn measured(&mut self, batches: u64) -> usize {
        let mut n = 0;
        for _ in 0..batches {
            n += self.batch();
        }
        n
    }

    fn commands(&self) -> u64 {
        self.kind.pipeline as u64
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.close(&mut self.ctx);
        }
    }
}

/// ns per command over `batches` batches.
fn round(b: &mut Bench, batches: u64) -> f64 {
    let t = StdInstant::now();
    std::hint::black_box(b.measured(batches));
    t.elapsed().as_nanos() as f64 / (batches * b.commands()) as f64
}

fn calibrate(b: &mut Bench, target: Duration) -> u64 {
    let mut batches = 1u64;
    loop {
        let t = StdInstant::now();
        b.measured(batches);
        let t = t.elapsed();
        if t >= target / 4 {
            return (batches as f64 * target.as_secs_f64() / t.as_secs_f64()).ceil() as u64;
        }
        batches *= 2;
    }
}

fn allocs_per_command(b: &mut Bench) -> f64 {
    let batches = 2000;
    let (_, n) = count_alloc::counted(|| b.measured(batches));
    n as f64 / (batches * b.commands()) as f64
}

fn kind_from(name: &str) -> Kind {
    *KINDS.iter().find(|k| k.name == name).unwrap_or_else(|| {
        eprintln!("unknown workload {name}: set16 get16 set1 get1 rset16 rget16");
        std::process::exit(2)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("run") {
        let [_, kind, batches] = &args[..] else {
            eprintln!("usage: resp_ratio run WORKLOAD BATCHES");
            std::process::exit(2);
        };
        let mut b = Bench::new(kind_from(kind));
        let n: u64 = batches.parse().expect("BATCHES");
        std::hint::black_box(b.measured(n));
        return;
    }
    let rounds = args.first().and_then(|a| a.parse().ok()).unwrap_or(15);
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; run with --release for meaningful figures");
    }
    let mut benches: Vec<Bench> = KINDS.iter().map(|&k| Bench::new(k)).collect();
    let target = Duration::from_millis(50);
    let batches: Vec<u64> = benches.iter_mut().map(|b| calibrate(b, target)).collect();
    let mut best = vec![f64::INFINITY; benches.len()];
    for _ in 0..rounds {
        for (i, b) in benches.iter_mut().enumerate() {
            best[i] = best[i].min(round(b, batches[i]));
        }
    }
    println!("{:<8} {:>10} {:>14}", "workload", "ns/cmd", "allocs/cmd");
    for (i, b) in benches.iter_mut().enumerate() {
        let a = allocs_per_command(b);
        println!("{:<8} {:>10.1} {:>14.3}", b.kind.name, best[i], a);
    }
    println!("(best of {rounds} rounds; allocs counted once warm)");
}
