//! HPACK and connection throughput.
//!
//! `cargo bench -p ferry-http2 --bench h2`. Groups:
//! - `hpack/decode`: a browser-like request (13 fields) decoded cold (fresh table, literals
//!   with incremental indexing) and warm (the same request again: mostly indexed fields);
//! - `hpack/encode`: the same request encoded cold and warm;
//! - `huffman`: decoding and encoding a 64-octet value;
//! - `server/100req`: 100 GET requests (one buffer, with the preface) through a fresh
//!   `ServerConnection`, each answered with a 12-byte `Full` body, transmits drained.
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ferry_http2::hpack::{huffman_coding, Decoder, Encoder};
use ferry_http2::{Body, ClientConnection, Config, Event, RequestHead, ServerConnection};
use ferry_proto::{Connection, Instant};

const REQUEST: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "www.example.com"),
    (":path", "/assets/app.3f9a1c.js?v=20240101"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"),
    ("accept", "*/*"),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-language", "en-US,en;q=0.9"),
    ("referer", "https://www.example.com/"),
    ("sec-fetch-dest", "script"),
    ("sec-fetch-mode", "no-cors"),
    ("sec-fetch-site", "same-origin"),
    ("cookie", "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark"),
];

fn fields() -> impl Iterator<Item = (&'static [u8], &'static [u8], bool)> {
    REQUEST
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes(), false))
}

fn hpack(c: &mut Criterion) {
    let mut enc = Encoder::default();
    let mut first = BytesMut::new();
    enc.encode(fields(), &mut first);
    let mut second = BytesMut::new();
    enc.encode(fields(), &mut second);
    let (first, second) = (first.freeze(), second.freeze());

    let mut g = c.benchmark_group("hpack/decode");
    g.throughput(Throughput::Elements(REQUEST.len() as u64));
    g.bench_function("cold", |b| {
        b.iter(|| {
            let mut d = Decoder::new(4096);
            let mut n = 0;
            d.decode(black_box(&first), 1 << 16, |f| n += f.value.len())
                .unwrap();
            n
        })
    });
    let mut warm = Decoder::new(4096);
    warm.decode(&first, 1 << 16, |_| {}).unwrap();
    g.bench_function("warm", |b| {
        b.iter(|| {
            let mut n = 0;
            warm.decode(black_box(&second), 1 << 16, |f| n += f.value.len())
                .unwrap();
            n
        })
    });
    g.finish();

    let mut g = c.benchmark_group("hpack/encode");
    g.throughput(Throughput::Elements(REQUEST.len() as u64));
    let mut dst = BytesMut::with_capacity(1024);
    g.bench_function("cold", |b| {
        b.iter(|| {
            let mut e = Encoder::default();
            dst.clear();
            e.encode(fields(), &mut dst);
            dst.len()
        })
    });
    let mut e = Encoder::default();
    e.encode(fields(), &mut BytesMut::new());
    g.bench_function("warm", |b| {
        b.iter(|| {
            dst.clear();
            e.encode(fields(), &mut dst);
            dst.len()
        })
    });
    g.finish();

    let value = REQUEST[4].1.as_bytes()[..64].to_vec();
    let mut coded = BytesMut::new();
    huffman_coding::encode(&value, &mut coded);
    let mut g = c.benchmark_group("huffman");
    g.throughput(Throughput::Bytes(value.len() as u64));
    let mut out = BytesMut::with_capacity(256);
    g.bench_function("decode", |b| {
        b.iter(|| {
            out.clear();
            huffman_coding::decode(black_box(&coded), &mut out).unwrap();
            out.len()
        })
    });
    g.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            huffman_coding::encode(black_box(&value), &mut out);
            out.len()
        })
    });
    g.finish();
}

fn server(c: &mut Criterion) {
    const N: usize = 100;
    let config = Arc::new(Config::default());
    let mut client = ClientConnection::new(config.clone(), Instant::ZERO);
    let fields: Vec<(&str, &[u8])> = REQUEST[4..]
        .iter()
        .map(|(n, v)| (*n, v.as_bytes()))
        .collect();
    for _ in 0..N {
        let head = RequestHead::new("GET", "https", "www.example.com", "/").fields(&fields);
        client.send_request(&head, Body::Empty).unwrap();
    }
    let mut wire = BytesMut::new();
    while let Some(b) = client.poll_transmit() {
        wire.extend_from_slice(&b);
    }
    let wire = wire.freeze();
    let mut g = c.benchmark_group("server");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("100req", |b| {
        b.iter(|| {
            let mut s = ServerConnection::new(config.clone(), Instant::ZERO);
            let mut input = BytesMut::from(&wire[..]);
            s.handle_input(Instant::ZERO, &mut input).unwrap();
            while let Some(ev) = s.poll_event() {
                if let Event::End { id } = ev {
                    s.send_response(
                        id,
                        200,
                        &[("content-type", b"text/plain")],
                        Body::Full(Bytes::from_static(b"hello world\n")),
                    )
                    .unwrap();
                }
            }
            let mut n = 0;
            while let Some(b) = s.poll_transmit() {
                n += b.len();
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, hpack, server);
criterion_main!(benches);
