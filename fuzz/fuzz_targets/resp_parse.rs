//! The RESP2/RESP3 value parser (`ferry_resp::parse`) on arbitrary bytes.
//!
//! Input: two bytes choosing a split point, then the bytes. The bytes are parsed as a pipeline
//! of values (parse, consume, repeat) three ways: whole, in two pieces (parsing after each
//! piece arrives, as a reader would), and one byte at a time (short inputs).
//! Invariants: no panic; `Ok(None)` never after a complete frame was there (the three ways give
//! the same values, consumed lengths and error); a parsed value re-encodes as RESP3 and parses
//! back to itself (nulls merge into `_`, doubles compare bitwise, NaN as NaN), its RESP2
//! downgrade parses too, re-encoding is a fixed point, and `encoded_len` is exact.
#![no_main]

use bytes::{Bytes, BytesMut};
use ferry_resp::{encode, encoded_len, parse, ParseError, Protocol, Value};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Run {
    /// (value encoded as RESP3, consumed length) per value.
    values: Vec<(Vec<u8>, usize)>,
    error: Option<ParseError>,
}

/// Parse values off the front of the buffer as `pieces` arrive.
fn run(pieces: &[&[u8]], check: bool) -> Run {
    let mut buf = BytesMut::new();
    let mut out = Run {
        values: Vec::new(),
        error: None,
    };
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let bytes = buf.clone().freeze();
            match parse(&bytes) {
                Ok(None) => break,
                Ok(Some((v, n))) => {
                    assert!(n > 0 && n <= bytes.len(), "consumed {n} of {}", bytes.len());
                    if check {
                        check_value(&v);
                    }
                    let mut e = BytesMut::new();
                    encode(&v, Protocol::Resp3, &mut e);
                    out.values.push((e.to_vec(), n));
                    let _ = buf.split_to(n);
                }
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    out
}

fn enc(v: &Value, p: Protocol) -> Bytes {
    let mut e = BytesMut::new();
    encode(v, p, &mut e);
    assert_eq!(encoded_len(v, p), e.len(), "encoded_len for {p:?} of {v:?}");
    e.freeze()
}

fn check_value(v: &Value) {
    for p in [Protocol::Resp3, Protocol::Resp2] {
        let e = enc(v, p);
        let (back, n) = match parse(&e) {
            Ok(Some(x)) => x,
            other => panic!("{p:?} encoding of {v:?} = {e:?} does not parse: {other:?}"),
        };
        assert_eq!(n, e.len(), "{p:?} encoding {e:?} parsed short");
        assert_eq!(
            enc(&back, p),
            e,
            "{p:?} re-encoding is not a fixed point for {v:?}"
        );
        if p == Protocol::Resp3 {
            assert!(same(v, &back), "RESP3 round trip: {v:?} became {back:?}");
        }
    }
}

/// Value equality up to the null spellings RESP3 merges and bitwise doubles.
fn same(a: &Value, b: &Value) -> bool {
    use Value::*;
    let null = |v: &Value| matches!(v, Null | NullBulkString | NullArray);
    let all =
        |x: &[Value], y: &[Value]| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q));
    let pairs = |x: &[(Value, Value)], y: &[(Value, Value)]| {
        x.len() == y.len()
            && x.iter()
                .zip(y)
                .all(|(p, q)| same(&p.0, &q.0) && same(&p.1, &q.1))
    };
    match (a, b) {
        _ if null(a) && null(b) => true,
        (Double(x), Double(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
        (Array(x), Array(y)) | (Set(x), Set(y)) | (Push(x), Push(y)) => all(x, y),
        (Map(x), Map(y)) => pairs(x, y),
        (Attribute { attrs: x, value: v }, Attribute { attrs: y, value: w }) => {
            pairs(x, y) && same(v, w)
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (ctl, bytes) = data.split_at(2);
    let split = u16::from_le_bytes([ctl[0], ctl[1]]) as usize % (bytes.len() + 1);
    let whole = run(&[bytes], true);
    let (a, b) = bytes.split_at(split);
    assert_eq!(whole, run(&[a, b], false), "split at {split}");
    if bytes.len() <= 600 {
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(whole, run(&singles, false), "byte by byte");
    }
});
