//! HPACK (RFC 7541) encode and decode: ferry-http2's `hpack::{Encoder, Decoder}` next to the
//! `hpack` crate 0.3 (unmaintained since 2016) and h2 0.4.20's private `hpack` module (vendored
//! bench-only in `benches/peers/h2-hpack`), on the same header lists.
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
//! Every implementation uses a 4096-octet table. Encoders:
//!
//! - `ferry`: Huffman when shorter (RFC 7541 §5.2), like-for-like with `h2`, which always
//!   Huffman-codes non-empty strings;
//! - `ferry-raw`: Huffman off, like-for-like with `hpack` 0.3, whose encoder never Huffman-codes;
//! - `h2` is given its native input (`Header<Option<HeaderName>>`, built once outside the timed
//!   loop and cloned per block, which is reference-count bumps); its indexing policy differs
//!   from ours (it never indexes `cookie`, `set-cookie`, `location`, so it re-encodes the cookie
//!   on every request of `shared100`), so output sizes are printed once per workload.
//!
//! Every decoder decodes the same bytes (ferry's encoder output with Huffman coding). h2's
//! decoder consumes a `BytesMut` (it splits literals off it), so each block is copied into a
//! fresh one inside the timed loop, as h2 receives it from its frame codec; it also validates
//! names and values into `http` types, which ferry's decoder leaves to the HTTP/2 layer.
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use ferry_http2::hpack;
use h2_hpack::Header as H2Header;

type List = Vec<(Vec<u8>, Vec<u8>)>;
type H2List = Vec<H2Header<Option<http::HeaderName>>>;

fn h2_list(block: &List) -> H2List {
    block
        .iter()
        .map(|(n, v)| {
            match H2Header::new(Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)).unwrap() {
                H2Header::Field { name, value } => H2Header::Field {
                    name: Some(name),
                    value,
                },
                H2Header::Authority(v) => H2Header::Authority(v),
                H2Header::Method(v) => H2Header::Method(v),
                H2Header::Scheme(v) => H2Header::Scheme(v),
                H2Header::Path(v) => H2Header::Path(v),
                H2Header::Protocol(v) => H2Header::Protocol(v),
                H2Header::Status(v) => H2Header::Status(v),
            }
        })
        .collect()
}

fn h2_decode(dec: &mut h2_hpack::Decoder, bytes: &[u8]) -> List {
    let mut buf = BytesMut::from(bytes);
    let mut got = Vec::new();
    dec.decode(&mut std::io::Cursor::new(&mut buf), |h| {
        got.push((h.name().as_slice().to_vec(), h.value_slice().to_vec()));
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    got
}

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
    /// The same lists as h2 takes them.
    h2_blocks: Vec<H2List>,
    /// Ferry's encoding of `blocks` with one encoder: what every decoder decodes.
    encoded: Vec<Bytes>,
}

impl Workload {
    fn new(name: &'static str, blocks: Vec<List>) -> Workload {
        let mut enc = hpack::Encoder::new(4096);
        let encoded = blocks.iter().map(|b| ferry_encode(&mut enc, b)).collect();
        let h2_blocks = blocks.iter().map(h2_list).collect();
        let w = Workload {
            name,
            blocks,
            h2_blocks,
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
        // h2 decodes ferry's encoding, and ferry decodes h2's.
        let mut h2d = h2_hpack::Decoder::new(4096);
        let mut h2e = h2_hpack::Encoder::new(4096, 0);
        let mut fd3 = hpack::Decoder::new(4096);
        let mut sizes = [0usize; 4];
        let mut raw = hpack::Encoder::new(4096);
        raw.set_huffman(false);
        let mut he2 = ::hpack::Encoder::new();
        for ((block, h2b), bytes) in self.blocks.iter().zip(&self.h2_blocks).zip(&self.encoded) {
            assert_eq!(&h2_decode(&mut h2d, bytes), block);
            let mut theirs = BytesMut::new();
            h2e.encode(h2b.iter().cloned(), &mut theirs);
            let mut got = Vec::new();
            fd3.decode(&theirs.clone().freeze(), usize::MAX, |f| {
                got.push((f.name.to_vec(), f.value.to_vec()))
            })
            .unwrap();
            assert_eq!(&got, block);
            sizes[0] += bytes.len();
            sizes[1] += ferry_encode(&mut raw, block).len();
            sizes[2] += he2
                .encode(block.iter().map(|(n, v)| (&n[..], &v[..])))
                .len();
            sizes[3] += theirs.len();
        }
        eprintln!(
            "hpack/{}: encoded octets ferry {} ferry-raw {} (hpack 0.3: {}) h2 {}",
            self.name, sizes[0], sizes[1], sizes[2], sizes[3]
        );
    }
}

fn ferry_encode(enc: &mut hpack::Encoder, block: &List) -> Bytes {
    let mut dst = BytesMut::with_capacity(1024);
    enc.encode(block.iter().map(|(n, v)| (&n[..], &v[..], false)), &mut dst);
    dst.freeze()
}

const ENCODERS: [&str; 4] = ["ferry", "ferry-raw", "h2", "hpack"];
const DECODERS: [&str; 3] = ["ferry", "h2", "hpack"];

/// Encode (`encode`) or decode (`decode`) every block of `w` with implementation `imp`, `iters`
/// times, each time with a fresh encoder/decoder (a new connection).
fn run(op: &str, imp: &str, w: &Workload, iters: u64) {
    let mut dst = BytesMut::with_capacity(64 * 1024);
    match (op, imp) {
        ("encode", "ferry" | "ferry-raw") => {
            for _ in 0..iters {
                let mut enc = hpack::Encoder::new(4096);
                enc.set_huffman(imp == "ferry");
                for block in &w.blocks {
                    dst.clear();
                    enc.encode(block.iter().map(|(n, v)| (&n[..], &v[..], false)), &mut dst);
                    black_box(&dst);
                }
            }
        }
        ("encode", "h2") => {
            for _ in 0..iters {
                let mut enc = h2_hpack::Encoder::new(4096, 0);
                for block in &w.h2_blocks {
                    dst.clear();
                    enc.encode(block.iter().cloned(), &mut dst);
                    black_box(&dst);
                }
            }
        }
        ("encode", "hpack") => {
            let mut dst = Vec::with_capacity(64 * 1024);
            for _ in 0..iters {
                let mut enc = ::hpack::Encoder::new();
                for block in &w.blocks {
                    dst.clear();
                    enc.encode_into(block.iter().map(|(n, v)| (&n[..], &v[..])), &mut dst)
                        .unwrap();
                    black_box(&dst);
                }
            }
        }
        ("decode", "ferry") => {
            for _ in 0..iters {
                let mut dec = hpack::Decoder::new(4096);
                for bytes in &w.encoded {
                    dec.decode(bytes, usize::MAX, |f| {
                        black_box(f);
                    })
                    .unwrap();
                }
            }
        }
        ("decode", "h2") => {
            for _ in 0..iters {
                let mut dec = h2_hpack::Decoder::new(4096);
                for bytes in &w.encoded {
                    let mut buf = BytesMut::from(&bytes[..]);
                    dec.decode(&mut std::io::Cursor::new(&mut buf), |h| {
                        black_box(h);
                        std::ops::ControlFlow::Continue(())
                    })
                    .unwrap();
                }
            }
        }
        ("decode", "hpack") => {
            for _ in 0..iters {
                let mut dec = ::hpack::Decoder::new();
                for bytes in &w.encoded {
                    dec.decode_with_cb(bytes, |n, v| {
                        black_box((n, v));
                    })
                    .unwrap();
                }
            }
        }
        _ => panic!("unknown {op}/{imp}"),
    }
}

fn workloads() -> [Workload; 3] {
    [
        Workload::new("request", vec![request("/index.html", 1)]),
        Workload::new("response", vec![response()]),
        Workload::new(
            "shared100",
            (0..100)
                .map(|i| request(&format!("/assets/{}/app-{i}.js", i % 7), i))
                .collect(),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    for w in &workloads() {
        let n = w.blocks.len() as u64;
        for (op, imps) in [("encode", &ENCODERS[..]), ("decode", &DECODERS[..])] {
            let mut g = c.benchmark_group(format!("hpack/{op}/{}", w.name));
            g.throughput(Throughput::Elements(n));
            for imp in imps {
                g.bench_function(BenchmarkId::from_parameter(imp), |b| {
                    b.iter_custom(|iters| {
                        let start = std::time::Instant::now();
                        run(op, imp, w, iters);
                        start.elapsed()
                    })
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);

/// `FERRY_HPACK_RUN=op/imp/workload:iters` runs one loop and exits, without criterion: for
/// counting instructions, which stay repeatable on a loaded machine:
/// `valgrind --tool=callgrind` once with `:0` and once with `:N`, the difference over N is the
/// cost of one round (the loop is in benches/README.md, HPACK section).
fn main() {
    if let Ok(spec) = std::env::var("FERRY_HPACK_RUN") {
        let (what, iters) = spec.split_once(':').expect("op/imp/workload:iters");
        let mut it = what.splitn(3, '/');
        let (op, imp, name) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let ws = workloads();
        let w = ws.iter().find(|w| w.name == name).expect("workload");
        run(op, imp, w, iters.parse().expect("iters"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
