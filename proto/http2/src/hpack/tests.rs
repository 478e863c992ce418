//! RFC 7541 Appendix C vectors (C.1–C.6), both directions, plus property and garbage tests.

use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    s.chunks(2)
        .map(|c| u8::from_str_radix(core::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect()
}

fn decode_all(d: &mut Decoder, block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    d.decode(&Bytes::copy_from_slice(block), usize::MAX, |f| {
        out.push((f.name.to_vec(), f.value.to_vec()))
    })
    .unwrap();
    out
}

fn pairs(v: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    v.iter()
        .map(|(n, val)| (n.as_bytes().to_vec(), val.as_bytes().to_vec()))
        .collect()
}

fn table_of(t: &DynamicTable) -> Vec<(Vec<u8>, Vec<u8>)> {
    t.iter()
        .map(|e| (e.name.to_vec(), e.value.to_vec()))
        .collect()
}

fn encode(e: &mut Encoder, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut dst = BytesMut::new();
    e.encode(
        fields
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes(), false)),
        &mut dst,
    );
    dst.to_vec()
}

// ---- C.1 integer representation -------------------------------------------------------------

#[test]
fn c1_1_ten_with_5_bit_prefix() {
    let mut b = BytesMut::new();
    encode_int(10, 5, 0, &mut b);
    assert_eq!(&b[..], &[0x0a]);
    assert_eq!(decode_int(&b, &mut 0, 5), Ok(10));
}

#[test]
fn c1_2_1337_with_5_bit_prefix() {
    let mut b = BytesMut::new();
    encode_int(1337, 5, 0, &mut b);
    assert_eq!(&b[..], &[0x1f, 0x9a, 0x0a]);
    let mut pos = 0;
    assert_eq!(decode_int(&b, &mut pos, 5), Ok(1337));
    assert_eq!(pos, 3);
}

#[test]
fn c1_3_42_at_octet_boundary() {
    let mut b = BytesMut::new();
    encode_int(42, 8, 0, &mut b);
    assert_eq!(&b[..], &[0x2a]);
    assert_eq!(decode_int(&b, &mut 0, 8), Ok(42));
}

// ---- C.2 header field representation ----------------------------------------------------------

#[test]
fn c2_1_literal_with_indexing() {
    let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
    let mut d = Decoder::new(4096);
    assert_eq!(
        decode_all(&mut d, &block),
        pairs(&[("custom-key", "custom-header")])
    );
    assert_eq!(
        table_of(d.table()),
        pairs(&[("custom-key", "custom-header")])
    );
    assert_eq!(d.table().size(), 55);
    let mut e = Encoder::default();
    e.set_huffman(false);
    assert_eq!(encode(&mut e, &[("custom-key", "custom-header")]), block);
}

#[test]
fn c2_2_literal_without_indexing() {
    let block = hex("040c 2f73 616d 706c 652f 7061 7468");
    let mut d = Decoder::new(4096);
    assert_eq!(
        decode_all(&mut d, &block),
        pairs(&[(":path", "/sample/path")])
    );
    assert!(d.table().is_empty());
    let mut e = Encoder::default();
    e.set_huffman(false);
    assert_eq!(encode(&mut e, &[(":path", "/sample/path")]), block);
}

#[test]
fn c2_3_literal_never_indexed() {
    let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
    let mut d = Decoder::new(4096);
    let mut got = Vec::new();
    d.decode(&Bytes::from(block.clone()), usize::MAX, |f| got.push(f))
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (&got[0].name[..], &got[0].value[..], got[0].sensitive),
        (&b"password"[..], &b"secret"[..], true)
    );
    assert!(d.table().is_empty());
    let mut e = Encoder::default();
    e.set_huffman(false);
    let mut dst = BytesMut::new();
    e.encode([(&b"password"[..], &b"secret"[..], true)], &mut dst);
    assert_eq!(&dst[..], &block[..]);
}

#[test]
fn c2_4_indexed_field() {
    let mut d = Decoder::new(4096);
    assert_eq!(decode_all(&mut d, &[0x82]), pairs(&[(":method", "GET")]));
    assert!(d.table().is_empty());
    assert_eq!(
        encode(&mut Encoder::default(), &[(":method", "GET")]),
        [0x82]
    );
}

// ---- C.3 / C.4 requests --------------------------------------------------------------------

const REQ1: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
];
const REQ2: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
    ("cache-control", "no-cache"),
];
const REQ3: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
];

fn run_requests(blocks: [&str; 3], huffman: bool) {
    let mut d = Decoder::new(4096);
    let mut e = Encoder::default();
    e.set_huffman(huffman);
    let tables: [&[(&str, &str)]; 3] = [
        &[(":authority", "www.example.com")],
        &[
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ],
        &[
            ("custom-key", "custom-value"),
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ],
    ];
    let sizes = [57, 110, 164];
    for (i, (block, req)) in blocks.iter().zip([REQ1, REQ2, REQ3]).enumerate() {
        let block = hex(block);
        assert_eq!(decode_all(&mut d, &block), pairs(req), "request {}", i + 1);
        assert_eq!(table_of(d.table()), pairs(tables[i]));
        assert_eq!(d.table().size(), sizes[i]);
        assert_eq!(encode(&mut e, req), block, "encoding request {}", i + 1);
        assert_eq!(e.table().size(), sizes[i]);
    }
}

#[test]
fn c3_requests_without_huffman() {
    run_requests(
        [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ],
        false,
    );
}

#[test]
fn c4_requests_with_huffman() {
    run_requests(
        [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ],
        true,
    );
}

// ---- C.5 / C.6 responses (table size 256: eviction) ------------------------------------------

const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

fn run_responses(blocks: [&str; 3], huffman: bool) {
    let resp1: &[(&str, &str)] = &[
        (":status", "302"),
        ("cache-control", "private"),
        ("date", DATE1),
        ("location", "https://www.example.com"),
    ];
    let resp2: &[(&str, &str)] = &[
        (":status", "307"),
        ("cache-control", "private"),
        ("date", DATE1),
        ("location", "https://www.example.com"),
    ];
    let resp3: &[(&str, &str)] = &[
        (":status", "200"),
        ("cache-control", "private"),
        ("date", DATE2),
        ("location", "https://www.example.com"),
        ("content-encoding", "gzip"),
        ("set-cookie", COOKIE),
    ];
    let tables: [&[(&str, &str)]; 3] = [
        &[
            ("location", "https://www.example.com"),
            ("date", DATE1),
            ("cache-control", "private"),
            (":status", "302"),
        ],
        &[
            (":status", "307"),
            ("location", "https://www.example.com"),
            ("date", DATE1),
            ("cache-control", "private"),
        ],
        &[
            ("set-cookie", COOKIE),
            ("content-encoding", "gzip"),
            ("date", DATE2),
        ],
    ];
    let sizes = [222, 222, 215];
    let mut d = Decoder::new(256);
    let mut e = Encoder::new(256);
    e.set_huffman(huffman);
    for (i, (block, resp)) in blocks.iter().zip([resp1, resp2, resp3]).enumerate() {
        let block = hex(block);
        assert_eq!(
            decode_all(&mut d, &block),
            pairs(resp),
            "response {}",
            i + 1
        );
        assert_eq!(table_of(d.table()), pairs(tables[i]));
        assert_eq!(d.table().size(), sizes[i]);
        let mut expected = Vec::new();
        if i == 0 {
            // Our encoder signals its 256-octet table (the RFC example leaves this implicit).
            expected.extend_from_slice(&[0x3f, 0xe1, 0x01]);
        }
        expected.extend_from_slice(&block);
        assert_eq!(
            encode(&mut e, resp),
            expected,
            "encoding response {}",
            i + 1
        );
        assert_eq!(table_of(&e.table()), pairs(tables[i]));
    }
}

#[test]
fn c5_responses_without_huffman() {
    run_responses(
        [
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
        ],
        false,
    );
}

#[test]
fn c6_responses_with_huffman() {
    run_responses(
        [
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ],
        true,
    );
}

// ---- decoding errors (h2spec's HPACK section) -------------------------------------------------

fn err(block: &[u8]) -> HpackError {
    Decoder::new(4096)
        .decode(&Bytes::copy_from_slice(block), usize::MAX, |_| {})
        .unwrap_err()
}

#[test]
fn invalid_indexes() {
    assert_eq!(err(&[0x80]), HpackError::InvalidIndex);
    assert_eq!(err(&[0xbe]), HpackError::InvalidIndex); // 62: empty dynamic table
    assert_eq!(err(&[0x7e, 0x01, b'x']), HpackError::InvalidIndex); // literal, name index 62
}

#[test]
fn size_update_rules() {
    // Above the limit.
    assert_eq!(err(&[0x3f, 0xe2, 0x1f]), HpackError::InvalidSizeUpdate); // 4097
                                                                         // After a field.
    assert_eq!(err(&[0x82, 0x20]), HpackError::LateSizeUpdate);
    // Several at the start are fine.
    let mut d = Decoder::new(4096);
    d.decode(
        &Bytes::from_static(&[0x20, 0x3f, 0xe1, 0x1f, 0x82]),
        usize::MAX,
        |_| {},
    )
    .unwrap();
    assert_eq!(d.table().max_size(), 4096);
}

#[test]
fn truncated_and_overflowing() {
    assert_eq!(err(&[0x40]), HpackError::Truncated);
    assert_eq!(err(&[0x40, 0x05, b'a']), HpackError::Truncated);
    assert_eq!(
        err(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        HpackError::IntegerOverflow
    );
}

#[test]
fn hpack_bomb_is_bounded_by_the_list_limit() {
    // One 4 KiB-ish entry, then a block that references it 10 000 times (20 KB of input would
    // expand to 40 MB of fields).
    let mut d = Decoder::new(4096);
    let mut first = BytesMut::new();
    first.extend_from_slice(&[0x40, 0x01, b'x']);
    encode_int(4000, 7, 0, &mut first);
    first.extend_from_slice(&[b'v'; 4000]);
    d.decode(&first.freeze(), usize::MAX, |_| {}).unwrap();
    let bomb = Bytes::from(alloc::vec![0xbe; 10_000]);
    let mut kept = 0usize;
    assert_eq!(
        d.decode(&bomb, 16 * 1024, |f| kept += f.list_size()),
        Err(HpackError::HeaderListTooLarge)
    );
    assert!(kept <= 16 * 1024);
    // The table is still in sync: the next block decodes.
    assert_eq!(decode_all(&mut d, &[0xbe]).len(), 1);
}

proptest! {
    #[test]
    fn encoder_decoder_round_trip(fields in proptest::collection::vec(
        ("[a-z][a-z0-9-]{0,12}", proptest::collection::vec(any::<u8>(), 0..40), any::<bool>()), 0..20),
        table in 0usize..5000, blocks in 1usize..4) {
        let mut e = Encoder::new(table);
        let mut d = Decoder::new(4096);
        for _ in 0..blocks {
            let mut dst = BytesMut::new();
            e.encode(fields.iter().map(|(n, v, s)| (n.as_bytes(), &v[..], *s)), &mut dst);
            let mut got = Vec::new();
            d.decode(&dst.freeze(), usize::MAX, |f| got.push(f)).unwrap();
            prop_assert_eq!(got.len(), fields.len());
            for (g, (n, v, s)) in got.iter().zip(&fields) {
                prop_assert_eq!(&g.name[..], n.as_bytes());
                prop_assert_eq!(&g.value[..], &v[..]);
                if *s {
                    prop_assert!(g.sensitive);
                }
            }
            prop_assert_eq!(table_of(&e.table()), table_of(d.table()));
        }
    }

    /// Blocks that repeat (the memos of `encode_memo` and of the decoder) interleaved with
    /// blocks that insert, evict and resize: every block still decodes to its fields.
    #[test]
    fn memoized_blocks_stay_in_sync(blocks in proptest::collection::vec(
        (proptest::collection::vec((0usize..6, 0usize..3, any::<bool>()), 0..6), 0usize..8), 1..40)) {
        const NAMES: [&str; 6] = [":status", "content-type", "x-a", "x-b", "content-length", "authorization"];
        const VALUES: [&str; 3] = ["200", "text/plain", "a-fairly-long-value-that-fills-the-small-table"];
        let mut e = Encoder::new(4096);
        let mut d = Decoder::new(4096);
        for (fields, resize) in blocks {
            if resize == 0 {
                // The peer shrinks (then later grows) the table: a size update leads the block.
                e.set_max_table_size(100);
            } else if resize == 1 {
                e.set_max_table_size(4096);
            }
            let list: Vec<(&[u8], &[u8], bool)> = fields
                .iter()
                .map(|&(n, v, s)| (NAMES[n].as_bytes(), VALUES[v].as_bytes(), s))
                .collect();
            for _ in 0..2 {
                let mut dst = BytesMut::new();
                e.encode_memo(&list, &mut dst);
                let got = decode_all(&mut d, &dst);
                let want: Vec<(Vec<u8>, Vec<u8>)> =
                    list.iter().map(|(n, v, _)| (n.to_vec(), v.to_vec())).collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(table_of(&e.table()), table_of(d.table()));
            }
        }
    }

    #[test]
    fn garbage_never_panics(block in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut d = Decoder::new(4096);
        let _ = d.decode(&Bytes::from(block), 1 << 16, |_| {});
    }
}

#[test]
fn decoder_memo_follows_the_table() {
    let mut d = Decoder::new(4096);
    // x-a: 1 inserted (index 62).
    let mut first = alloc::vec![0x40, 3];
    first.extend_from_slice(b"x-a");
    first.extend_from_slice(&[1, b'1']);
    decode_all(&mut d, &first);
    let indexed = [0x82, 0xbe];
    let a = pairs(&[(":method", "GET"), ("x-a", "1")]);
    assert_eq!(decode_all(&mut d, &indexed), a);
    assert_eq!(decode_all(&mut d, &indexed), a, "memo hit");
    // A block that starts indexed and goes on with a literal must not leave a half memo.
    let mut mixed = alloc::vec![0x82, 0x00, 1, b'y', 1, b'2'];
    assert_eq!(
        decode_all(&mut d, &mixed),
        pairs(&[(":method", "GET"), ("y", "2")])
    );
    assert_eq!(decode_all(&mut d, &indexed), a);
    // x-b: 2 inserted: index 62 now names it.
    mixed.clear();
    mixed.extend_from_slice(&[0x40, 3]);
    mixed.extend_from_slice(b"x-b");
    mixed.extend_from_slice(&[1, b'2']);
    decode_all(&mut d, &mixed);
    assert_eq!(
        decode_all(&mut d, &indexed),
        pairs(&[(":method", "GET"), ("x-b", "2")])
    );
    // A size update that empties the table: index 62 is gone.
    assert!(d
        .decode(&Bytes::from_static(&[0x20, 0xbe]), usize::MAX, |_| {})
        .is_err());
    assert!(d
        .decode(&Bytes::from_static(&[0x82, 0xbe]), usize::MAX, |_| {})
        .is_err());
}
