//! HPACK (RFC 7541) encode and decode: ferry-http2's `hpack::{Encoder, Decoder}` next to the
//! `hpack` crate 0.3 (unmaintained since 2016) on the same header lists.
//!
//! `cargo bench -p ferry-benches --bench hpack`. Groups `hpack/encode/<workload>` and
//! `hpack/decode/<workload>`, one function per implementation; throughput is in header blocks,
//! so `time / elements` is the cost of one block. Workloads:
//!
//! - `request`: one browser request (RFC 7541 C.4's fields plus a realistic user-agent, accept
//!   lists and a ~300-byte cookie), encoded/decoded with a fresh table (first request on a
//!   connection);
//! - `response`: one response head (status, content type/length, date, cache fields,
//!   set-cookie...), fresh table;
//! - `shared100`: 100 requests on one connection (paths and a request id change, everything
//!   else repeats), one encoder/decoder pair for all 100, so the dynamic table carries them.
//!
//! Every decoder decodes the same bytes (ferry's encoder output with Huffman coding); `hpack`
//! 0.3's encoder never Huffman-codes, so `ferry-raw` (Huffman off) is the like-for-like encoder
//! line. h2 0.4 is not compared: its `hpack` module is private even with the `unstable`
//! feature (only `frame` and `proto` become public).
use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferry_http2::hpack;

type List = Vec<(Vec<u8>, Vec<u8>)>;

fn list(fields: &[(&str, &str)]) -> List {
    fields
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                  Chrome/124.0.0.0 Safari/537.36";
const COOKIE: &str = "_ga=GA1.2.1234567890.1700000000; _gid=GA1.2.987654321.1700000000; \
    session_id=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08; \
    prefs=lang%3Den-US%26theme%3Ddark%26tz%3DEurope%2FBerlin; csrftoken=Zx8Yq3Lm0Pn5Rt7Vw2Bc4Df6; \
    _fbp=fb.1.1700000000000.1122334455; consent=analytics:1,ads:0,functional:1";

fn request(path: &str, id: usize) -> List {
    let rid = format!("{id:016x}");
    list(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
        ("custom-key", "custom-value"),
        ("user-agent", UA),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.9,de;q=0.8"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://www.example.com/"),
        ("cookie", COOKIE),
        ("x-request-id", &rid),
    ])
}

fn response() -> List {
    list(&[
        (":status", "200"),
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", "14231"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("server", "ferry"),
        ("cache-control", "private, max-age=0, must-revalidate"),
        ("etag", "\"5f2a-61c8b0e9c4d1a\""),
        ("last-modified", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("vary", "accept-encoding"),
        ("content-encoding", "gzip"),
        (
            "strict-transport-security",
            "max-age=63072000; includeSubDomains; preload",
        ),
        ("x-content-type-options", "nosniff"),
        (
            "set-cookie",
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1; path=/; secure; httponly",
        ),
    ])
}

struct Workload {
    name: &'static str,
    blocks: Vec<List>,
    /// Ferry's encoding of `blocks` with one encoder: what every decoder decodes.
    encoded: Vec<Bytes>,
}

impl Workload {
    fn new(name: &'static str, blocks: Vec<List>) -> Workload {
        let mut enc = hpack::Encoder::new(4096);
        let encoded = blocks.iter().map(|b| ferry_encode(&mut enc, b)).collect();
        let w = Workload {
            name,
            blocks,
            encoded,
        };
        w.check();
        w
    }

    /// Both decoders read back the lists, and ferry decodes `hpack`'s encoding too.
    fn check(&self) {
        let mut fd = hpack::Decoder::new(4096);
        let mut hd = ::hpack::Decoder::new();
        let mut he = ::hpack::Encoder::new();
        let mut fd2 = hpack::Decoder::new(4096);
        for (block, bytes) in self.blocks.iter().zip(&self.encoded) {
            let mut got = Vec::new();
            fd.decode(bytes, usize::MAX, |f| {
                got.push((f.name.to_vec(), f.value.to_vec()))
            })
            .unwrap();
            assert_eq!(&got, block);
            assert_eq!(&hd.decode(bytes).unwrap(), block);
            let theirs = Bytes::from(he.encode(block.iter().map(|(n, v)| (&n[..], &v[..]))));
            got.clear();
            fd2.decode(&theirs, usize::MAX, |f| {
                got.push((f.name.to_vec(), f.value.to_vec()))
            })
            .unwrap();
            assert_eq!(&got, block);
        }
    }
}

fn ferry_encode(enc: &mut hpack::Encoder, block: &List) -> Bytes {
    let mut dst = BytesMut::with_capacity(1024);
    enc.encode(block.iter().map(|(n, v)| (&n[..], &v[..], false)), &mut dst);
    dst.freeze()
}

fn time(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let workloads = [
        Workload::new("request", vec![request("/index.html", 1)]),
        Workload::new("response", vec![response()]),
        Workload::new(
            "shared100",
            (0..100)
                .map(|i| request(&format!("/assets/{}/app-{i}.js", i % 7), i))
                .collect(),
        ),
    ];
    for w in &workloads {
        let n = w.blocks.len() as u64;
        let mut g = c.benchmark_group(format!("hpack/encode/{}", w.name));
        g.throughput(Throughput::Elements(n));
        for (name, huffman) in [("ferry", true), ("ferry-raw", false)] {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                let mut dst = BytesMut::with_capacity(64 * 1024);
                b.iter_custom(|iters| {
                    time(iters, || {
                        let mut enc = hpack::Encoder::new(4096);
                        enc.set_huffman(huffman);
                        for block in &w.blocks {
                            dst.clear();
                            enc.encode(
                                block.iter().map(|(n, v)| (&n[..], &v[..], false)),
                                &mut dst,
                            );
                            black_box(&dst);
                        }
                    })
                })
            });
        }
        g.bench_function(BenchmarkId::from_parameter("hpack"), |b| {
            let mut dst = Vec::with_capacity(64 * 1024);
            b.iter_custom(|iters| {
                time(iters, || {
                    let mut enc = ::hpack::Encoder::new();
                    for block in &w.blocks {
                        dst.clear();
                        enc.encode_into(block.iter().map(|(n, v)| (&n[..], &v[..])), &mut dst)
                            .unwrap();
                        black_box(&dst);
                    }
                })
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("hpack/decode/{}", w.name));
        g.throughput(Throughput::Elements(n));
        g.bench_function(BenchmarkId::from_parameter("ferry"), |b| {
            b.iter_custom(|iters| {
                time(iters, || {
                    let mut dec = hpack::Decoder::new(4096);
                    for bytes in &w.encoded {
                        dec.decode(bytes, usize::MAX, |f| {
                            black_box(f);
                        })
                        .unwrap();
                    }
                })
            })
        });
        g.bench_function(BenchmarkId::from_parameter("hpack"), |b| {
            b.iter_custom(|iters| {
                time(iters, || {
                    let mut dec = ::hpack::Decoder::new();
                    for bytes in &w.encoded {
                        dec.decode_with_cb(bytes, |n, v| {
                            black_box((n, v));
                        })
                        .unwrap();
                    }
                })
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
