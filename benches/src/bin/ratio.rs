//! Prints the cost of turning HTTP/1.1 request bytes into `ServerConnection` events (and of
//! also queueing a response) relative to raw `httparse` parsing of the same bytes, for single
//! requests and for pipelined batches of 16; the targets of issue 3 are ≤ 1.2× and ≤ 2×.
//!
//! Run it pinned, in release mode:
//! `taskset -c 1 cargo run --release -p ferry-benches --bin ratio [-- ROUNDS]`.
//! Each workload runs ROUNDS (default 15) rounds of ~50 ms, interleaved so that frequency and
//! neighbour noise hit all of them alike; its figure is its fastest round (the least
//! disturbed), in ns per request.
//!
//! `ratio run WORKLOAD SHAPE BATCHES` runs one workload and nothing else, for
//! `valgrind --tool=callgrind --toggle-collect='*Workload::measured*'`, which counts the
//! instructions of the measured part alone (`scripts/bench http1-parse --instructions`).
//! `ratio run client-response single BATCHES` (or `httparse-response`, the baseline) does the
//! same for the client side: a typical nginx response read through `ClientConnection`
//! (`--toggle-collect='*ClientWorkload::measured*'`; SHAPE is ignored).
use std::time::Duration;

use ferry_benches::{calibrate, ns_per_request, ClientWorkload, Kind, Shape, Timed, Workload};

fn measure(shape: Shape, rounds: usize) -> [f64; 3] {
    let mut ws = Kind::ALL.map(|k| Workload::new(k, shape));
    let target = Duration::from_millis(50);
    let batches: Vec<u64> = ws.iter_mut().map(|w| calibrate(w, target)).collect();
    let mut best = [f64::INFINITY; 3];
    for _ in 0..rounds {
        for (i, w) in ws.iter_mut().enumerate() {
            best[i] = best[i].min(ns_per_request(w, batches[i]));
        }
    }
    best
}

fn shape_from(s: &str) -> Shape {
    match s {
        "single" => Shape::Single,
        "pipelined16" => Shape::Pipelined,
        other => panic!("unknown shape {other} (single, pipelined16)"),
    }
}

fn run_only(args: &[String]) {
    let [kind, shape, batches] = args else {
        eprintln!(
            "usage: ratio run httparse|event|event+response|client-response|httparse-response \
             single|pipelined16 BATCHES"
        );
        std::process::exit(2);
    };
    if let raw @ ("client-response" | "httparse-response") = kind.as_str() {
        // The client side: a response read through `ClientConnection` (or httparse alone).
        let mut w = ClientWorkload::new(raw == "httparse-response");
        for _ in 0..batches.parse::<u64>().expect("BATCHES") {
            w.measured();
        }
        return;
    }
    let kind = Kind::from_name(kind).expect("workload: httparse, event or event+response");
    let mut w = Workload::new(kind, shape_from(shape));
    for _ in 0..batches.parse::<u64>().expect("BATCHES") {
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
        "{:<12} {:>10} {:>10} {:>15} {:>15} {:>24}",
        "case", "httparse", "event", "event+response", "event/httparse", "event+response/httparse"
    );
    for shape in [Shape::Single, Shape::Pipelined] {
        let [h, e, r] = measure(shape, rounds);
        println!(
            "{:<12} {:>8.1}ns {:>8.1}ns {:>13.1}ns {:>14.2}x {:>23.2}x",
            shape.name(),
            h,
            e,
            r,
            e / h,
            r / h
        );
    }
    println!(
        "(ns per request, best of {rounds} rounds; targets: event/httparse <= 1.2x, \
         event+response/httparse <= 2x)"
    );
}
