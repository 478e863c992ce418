//! HTTP/1.1 server-side parse and respond throughput, next to raw httparse on the same bytes.
//!
//! `cargo bench -p ferry-benches --bench http1` (or `scripts/bench http1-parse`). Groups
//! `http1/single` (one ~490-byte browser request per call) and `http1/pipelined16` (16 of them
//! in one buffer), each with `httparse` (raw parse), `event` (bytes → `Request` + `End` events
//! on a kept-alive `ServerConnection`) and `event+response` (plus a queued 200 response with a
//! 12-byte body, transmit drained); see `ferry_benches` for what exactly is timed. Throughput
//! is in requests (elements), so the rates compare directly; `src/bin/ratio.rs` prints the
//! ratios.
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferry_benches::{Kind, Shape, Timed, Workload, BATCH};

fn http1(c: &mut Criterion) {
    for shape in [Shape::Single, Shape::Pipelined] {
        let mut g = c.benchmark_group(format!("http1/{}", shape.name()));
        // One criterion iteration is one batch of BATCH requests.
        g.throughput(Throughput::Elements(BATCH as u64));
        for kind in Kind::ALL {
            let mut w = Workload::new(kind, shape);
            g.bench_function(BenchmarkId::from_parameter(kind.name()), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| w.run()).sum::<Duration>())
            });
        }
        g.finish();
    }
}

criterion_group!(benches, http1);
criterion_main!(benches);
