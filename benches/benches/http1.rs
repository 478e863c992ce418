//! HTTP/1.1 server-side parse and respond throughput, next to raw httparse on the same bytes.
//!
//! `cargo bench -p ferry-benches --bench http1` (or `scripts/bench http1-parse`). Groups:
//! `http1/single` (one ~450-byte browser request per iteration) and `http1/pipelined16`
//! (16 of them in one buffer); in each, `httparse` (raw parse), `event` (bytes → `Request` +
//! `End` events on a kept-alive `ServerConnection`) and `event+response` (plus a queued 200
//! response with a 12-byte body and the transmit drained). Throughput is in requests
//! (elements), so the rates compare directly; `src/bin/ratio.rs` prints the ratios.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferry_benches::{HttparseParse, ServerEvent, ServerRespond, Workload, PIPELINE_DEPTH};

fn bench_case(c: &mut Criterion, group: &str, n: usize) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(n as u64));
    let mut workloads: Vec<(&str, Box<dyn Workload>)> = vec![
        ("httparse", Box::new(HttparseParse::new(n))),
        ("event", Box::new(ServerEvent::new(n))),
        ("event+response", Box::new(ServerRespond::new(n))),
    ];
    for (name, w) in workloads.iter_mut() {
        g.bench_function(BenchmarkId::from_parameter(name), |b| b.iter(|| w.run()));
    }
    g.finish();
}

fn http1(c: &mut Criterion) {
    bench_case(c, "http1/single", 1);
    bench_case(c, "http1/pipelined16", PIPELINE_DEPTH);
}

criterion_group!(benches, http1);
criterion_main!(benches);
