//! `ferry_postgres::sql::session_effect`: the cost a transaction-pooling proxy pays per simple
//! Query of a client that is not pinned (one lexing pass, no allocation).
//!
//! `cargo bench -p ferry-benches --bench pg_sql`. Throughput is in bytes, so the report shows
//! the cost per byte; the helper that wrote the lexer measured about 4 ns per byte (1.4 µs for
//! the 354-byte three-statement query), 55% of it lexing.
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ferry_postgres::sql::{session_effect, token_spans, ScanOptions};

const QUERY: &str = "SELECT u.id, u.name, o.total /* join */ FROM users u JOIN orders o ON \
     o.user_id = u.id WHERE u.email = 'someone@example.com' AND o.created_at > now() - \
     interval '7 days' AND o.status IN ('paid', 'shipped') -- recent\n ORDER BY o.total DESC \
     LIMIT 50; UPDATE counters SET n = n + 1 WHERE k = $1; INSERT INTO log (msg) VALUES \
     (E'line\\n'), ($$dollar 'body'$$)";

fn bench(c: &mut Criterion) {
    let big = QUERY.repeat(16);
    let mut g = c.benchmark_group("pg_sql");
    for (name, sql) in [("query", QUERY), ("query_x16", big.as_str())] {
        g.throughput(Throughput::Bytes(sql.len() as u64));
        g.bench_function(format!("session_effect/{name}"), |b| {
            b.iter(|| session_effect(black_box(sql.as_bytes())))
        });
        g.bench_function(format!("lex_only/{name}"), |b| {
            b.iter(|| token_spans(black_box(sql.as_bytes()), ScanOptions::new()).count())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
