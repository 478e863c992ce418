//! The RESP2/RESP3 value parser (`ferry_resp::parse`) on arbitrary bytes.
//!
//! Input: two bytes choosing a split point, then the bytes. The bytes are parsed as a pipeline
//! of values (parse, consume, repeat) three ways: whole, in two pieces (parsing after each
//! piece arrives, as a reader would), and one byte at a time (short inputs).
//! Invariants: no panic; `Ok(None)` never after a complete frame was there (the three ways give
//! the same values, consumed lengths and error); a parsed value re-encodes as RESP3 and parses
//! back to itself (nulls merge into `_`, doubles compare bitwise, NaN as NaN), its RESP2
//! downgrade parses too, re-encoding is a fixed point, and `encoded_len` is exact. The
//! resumable measuring pass (`frame_len_resume`), fed the same growing buffer, answers as a
//! fresh `frame_len` every time (lengths and errors), under default and tight limits, for
//! cut points chosen by the input.
#![no_main]

use bytes::{Bytes, BytesMut};
use ferry_resp::parse::{frame_len, frame_len_resume, FrameScan};
use ferry_resp::{encode, encoded_len, parse, Limits, ParseError, Protocol, Value};
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
    let limits = Limits::default();
    let mut scan = FrameScan::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let resumed = frame_len_resume(&buf, &limits, &mut scan);
            assert_eq!(resumed, frame_len(&buf, &limits), "resumed scan of {buf:?}");
            if resumed.is_ok() {
                scan.reset();
            }
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

/// `frame_len_resume` over growing prefixes of `bytes` (cut every `step` bytes, and at the
/// end) against a fresh `frame_len` on each, going on after errors and complete frames.
fn check_resume(bytes: &[u8], limits: &Limits, step: usize) {
    let mut scan = FrameScan::new();
    let mut cut = 0;
    loop {
        let got = frame_len_resume(&bytes[..cut], limits, &mut scan);
        assert_eq!(
            got,
            frame_len(&bytes[..cut], limits),
            "cut {cut} of {bytes:?}"
        );
        if cut == bytes.len() {
            break;
        }
        cut = (cut + step).min(bytes.len());
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (ctl, bytes) = data.split_at(2);
    let split = u16::from_le_bytes([ctl[0], ctl[1]]) as usize % (bytes.len() + 1);
    let tight = {
        let mut l = Limits::default();
        l.max_bulk_len = 4 + u64::from(ctl[0] & 7);
        l.max_aggregate_len = 2 + u64::from(ctl[0] >> 5);
        l.max_depth = 1 + usize::from(ctl[1] & 3);
        l.max_line = 3 + usize::from(ctl[1] >> 4);
        l
    };
    let step = 1 + split % 13;
    check_resume(bytes, &Limits::default(), step);
    check_resume(bytes, &tight, step);
    let whole = run(&[bytes], true);
    let (a, b) = bytes.split_at(split);
    assert_eq!(whole, run(&[a, b], false), "split at {split}");
    if bytes.len() <= 600 {
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(whole, run(&singles, false), "byte by byte");
    }
});
