//! Prints the cost of turning HTTP/1.1 request bytes into `ServerConnection` events (and of
//! also queueing a response) relative to raw `httparse` parsing of the same bytes, for one
//! browser request and for a pipelined batch of 16; the targets of issue 3 are ≤ 1.2× and ≤ 2×.
//!
//! Run it pinned, in release mode: `taskset -c 1 cargo run --release -p ferry-benches --bin
//! ratio [-- ROUNDS]`. Each workload runs in ROUNDS (default 15) rounds of ~50 ms, interleaved
//! so that frequency and neighbour noise hit all of them alike; the figure per workload is its
//! fastest round (the least disturbed), ns per request.
use std::hint::black_box;
use std::time::{Duration, Instant};

use ferry_benches::{HttparseParse, ServerEvent, ServerRespond, Workload, PIPELINE_DEPTH};

/// Nanoseconds per request of one round of about `target` long.
fn round(w: &mut dyn Workload, iters: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        w.run();
    }
    let el = black_box(start.elapsed());
    el.as_nanos() as f64 / (iters as f64 * w.requests() as f64)
}

/// Iterations that take about `target`.
fn calibrate(w: &mut dyn Workload, target: Duration) -> u64 {
    let mut iters = 1u64;
    loop {
        let start = Instant::now();
        for _ in 0..iters {
            w.run();
        }
        let el = start.elapsed();
        if el >= target / 4 {
            return (iters as f64 * target.as_secs_f64() / el.as_secs_f64()).ceil() as u64;
        }
        iters *= 2;
    }
}

fn measure(n: usize, rounds: usize) -> [f64; 3] {
    let mut ws: [Box<dyn Workload>; 3] = [
        Box::new(HttparseParse::new(n)),
        Box::new(ServerEvent::new(n)),
        Box::new(ServerRespond::new(n)),
    ];
    let target = Duration::from_millis(50);
    let iters: Vec<u64> = ws
        .iter_mut()
        .map(|w| calibrate(w.as_mut(), target))
        .collect();
    let mut best = [f64::INFINITY; 3];
    for _ in 0..rounds {
        for (i, w) in ws.iter_mut().enumerate() {
            best[i] = best[i].min(round(w.as_mut(), iters[i]));
        }
    }
    best
}

/// `ratio run WORKLOAD DEPTH ITERS`: run one workload ITERS times and nothing else, for an
/// instruction count under `valgrind --tool=callgrind` (two runs with different ITERS give the
/// cost per iteration without the setup; `scripts/bench http1-parse --instructions` does that).
fn run_only(args: &[String]) {
    let [workload, depth, iters] = args else {
        eprintln!("usage: ratio run httparse|event|event+response DEPTH ITERS");
        std::process::exit(2);
    };
    let n: usize = depth.parse().expect("DEPTH");
    let iters: u64 = iters.parse().expect("ITERS");
    let mut w: Box<dyn Workload> = match workload.as_str() {
        "httparse" => Box::new(HttparseParse::new(n)),
        "event" => Box::new(ServerEvent::new(n)),
        "event+response" => Box::new(ServerRespond::new(n)),
        other => panic!("unknown workload {other}"),
    };
    for _ in 0..iters {
        w.run();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("run") {
        return run_only(&args[1..]);
    }
    let rounds = args.first().and_then(|a| a.parse().ok()).unwrap_or(15);
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; run with --release for meaningful figures");
    }
    println!(
        "{:<14} {:>10} {:>10} {:>16} {:>16} {:>24}",
        "case", "httparse", "event", "event+response", "event/httparse", "event+response/httparse"
    );
    for (name, n) in [("single", 1), ("pipelined16", PIPELINE_DEPTH)] {
        let [h, e, r] = measure(n, rounds);
        println!(
            "{:<14} {:>8.1}ns {:>8.1}ns {:>14.1}ns {:>15.2}x {:>23.2}x",
            name,
            h,
            e,
            r,
            e / h,
            r / h
        );
    }
    println!("(ns per request, best of {rounds} rounds; targets: event/httparse <= 1.2x, event+response/httparse <= 2x)");
}
