//! `frame_len_resume` against `frame_len`: same answers on every prefix, however the input is
//! cut, on valid, streamed, damaged and garbage input, under default and tight limits; and
//! the work it does stays linear.

use super::*;
use crate::encode::tests::value_strategy;
use crate::parse::frame_len;
use crate::{encode, Protocol, Value};
use alloc::format;
use alloc::vec::Vec;
use bytes::BytesMut;
use proptest::prelude::*;

/// Feeds growing prefixes of `b` (ending at each of `cuts`, increasing) to one scan and
/// checks every answer against a fresh `frame_len` on the same bytes. Goes on after errors
/// and complete frames: the answers must still agree.
fn check_cuts(
    b: &[u8],
    cuts: impl IntoIterator<Item = usize>,
    l: &Limits,
) -> Result<(), TestCaseError> {
    let mut st = FrameScan::new();
    for cut in cuts {
        let cut = cut.min(b.len());
        let got = frame_len_resume(&b[..cut], l, &mut st);
        prop_assert_eq!(&got, &frame_len(&b[..cut], l), "cut {} of {:?}", cut, b);
    }
    Ok(())
}

fn every_cut(b: &[u8], l: &Limits) -> Result<(), TestCaseError> {
    check_cuts(b, 0..=b.len(), l)
}

/// RESP3 with some aggregates and bulk strings streamed (`*?` … `.`, `$?` `;n` … `;0`),
/// which the encoder never writes; `coin` decides node by node.
fn enc_streamed(v: &Value, coin: &mut dyn FnMut() -> u8, out: &mut Vec<u8>) {
    let header = |out: &mut Vec<u8>, t: u8, n: usize| {
        out.push(t);
        out.extend_from_slice(format!("{n}\r\n").as_bytes());
    };
    let streamed = coin() % 2 == 0;
    match v {
        Value::BulkString(b) if streamed => {
            out.extend_from_slice(b"$?\r\n");
            let mut rest = &b[..];
            while !rest.is_empty() {
                let k = (usize::from(coin()) % 5 + 1).min(rest.len());
                header(out, b';', k);
                out.extend_from_slice(&rest[..k]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[k..];
            }
            out.extend_from_slice(b";0\r\n");
        }
        Value::Array(x) | Value::Set(x) | Value::Push(x) => {
            let t = match v {
                Value::Array(_) => b'*',
                Value::Set(_) => b'~',
                _ => b'>',
            };
            if streamed {
                out.extend_from_slice(&[t, b'?', b'\r', b'\n']);
            } else {
                header(out, t, x.len());
            }
            for e in x {
                enc_streamed(e, coin, out);
            }
            if streamed {
                out.extend_from_slice(b".\r\n");
            }
        }
        Value::Map(x) => {
            if streamed {
                out.extend_from_slice(b"%?\r\n");
            } else {
                header(out, b'%', x.len());
            }
            for (k, e) in x {
                enc_streamed(k, coin, out);
                enc_streamed(e, coin, out);
            }
            if streamed {
                out.extend_from_slice(b".\r\n");
            }
        }
        Value::Attribute { attrs, value } => {
            header(out, b'|', attrs.len());
            for (k, e) in attrs {
                enc_streamed(k, coin, out);
                enc_streamed(e, coin, out);
            }
            enc_streamed(value, coin, out);
        }
        leaf => {
            let mut b = BytesMut::new();
            encode(leaf, Protocol::Resp3, &mut b);
            out.extend_from_slice(&b);
        }
    }
}

fn limits_strategy() -> impl Strategy<Value = Limits> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(b, a, d, l)| {
        let mut lim = Limits::default();
        if b {
            lim.max_bulk_len = 3;
        }
        if a {
            lim.max_aggregate_len = 2;
        }
        if d {
            lim.max_depth = 2;
        }
        if l {
            lim.max_line = 4;
        }
        lim
    })
}

fn damage(mut b: Vec<u8>, hits: &[(usize, u8)]) -> Vec<u8> {
    if !b.is_empty() {
        for &(i, c) in hits {
            let n = b.len();
            b[i % n] = c;
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Encoded values (RESP2 and RESP3, two frames back to back), cut at every point.
    #[test]
    fn every_prefix_of_encoded_values(v in value_strategy(), w in value_strategy(), resp3 in any::<bool>(), l in limits_strategy()) {
        let p = if resp3 { Protocol::Resp3 } else { Protocol::Resp2 };
        let mut b = BytesMut::new();
        encode(&v, p, &mut b);
        encode(&w, p, &mut b);
        every_cut(&b, &Limits::default())?;
        every_cut(&b, &l)?;
    }

    /// Streamed strings and aggregates, cut at every point and in random chunks.
    #[test]
    fn every_prefix_of_streamed_values(
        v in value_strategy(),
        coins in proptest::collection::vec(any::<u8>(), 1..64),
        chunks in proptest::collection::vec(1usize..40, 1..64),
        l in limits_strategy(),
    ) {
        let mut i = 0;
        let mut coin = || { i += 1; coins[i % coins.len()] };
        let mut b = Vec::new();
        enc_streamed(&v, &mut coin, &mut b);
        enc_streamed(&v, &mut coin, &mut b);
        // The parser reads it all back as one frame.
        prop_assert!(matches!(frame_len(&b, &Limits::default()), Ok(Some(_))));
        every_cut(&b, &Limits::default())?;
        every_cut(&b, &l)?;
        let mut cuts = Vec::new();
        let mut at = 0;
        for c in chunks.iter().cycle().take(b.len()) {
            at += c;
            cuts.push(at);
            if at >= b.len() {
                break;
            }
        }
        check_cuts(&b, cuts, &Limits::default())?;
    }

    /// Damaged encodings: errors are the same errors, detected at the same prefix.
    #[test]
    fn every_prefix_of_damaged_values(
        v in value_strategy(),
        coins in proptest::collection::vec(any::<u8>(), 1..16),
        hits in proptest::collection::vec((any::<usize>(), prop_oneof![
            Just(b'\r'), Just(b'\n'), Just(b'*'), Just(b'?'), Just(b'.'), Just(b';'), Just(b'-'),
            Just(b'0'), Just(b'9'), any::<u8>(),
        ]), 1..4),
        l in limits_strategy(),
    ) {
        let mut i = 0;
        let mut coin = || { i += 1; coins[i % coins.len()] };
        let mut b = Vec::new();
        enc_streamed(&v, &mut coin, &mut b);
        let b = damage(b, &hits);
        every_cut(&b, &Limits::default())?;
        every_cut(&b, &l)?;
    }

    /// Arbitrary bytes over RESP's alphabet.
    #[test]
    fn every_prefix_of_resp_alphabet_garbage(
        s in "[*$:+\\-%~>|_#,(!=?;.0-9\r\nabtf]{0,64}",
        l in limits_strategy(),
    ) {
        every_cut(s.as_bytes(), &Limits::default())?;
        every_cut(s.as_bytes(), &l)?;
    }

    #[test]
    fn every_prefix_of_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..64), l in limits_strategy()) {
        every_cut(&b, &l)?;
    }
}

#[test]
fn fixed_cases_agree() {
    let l = Limits::default();
    let tight = Limits {
        max_bulk_len: 10,
        max_aggregate_len: 3,
        max_depth: 3,
        max_line: 8,
    };
    for b in [
        &b"+OK\r\n"[..],
        b"*3\r\n$?\r\n;2\r\nab\r\n;0\r\n%1\r\n+a\r\n,2.5\r\n=7\r\ntxt:abc\r\n",
        b"|1\r\n+k\r\n:2\r\n>1\r\n+x\r\n",
        b"%?\r\n+a\r\n:1\r\n.\r\n",
        b"*?\r\n:1\r\n:1\r\n:1\r\n:1\r\n.\r\n",
        b"$?\r\n;6\r\nabcdef\r\n;6\r\nabcdef\r\n;0\r\n",
        b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        b"+0123456789\r\n",
        b"+a\nb\r\n",
        b"+0123456789\nab\r\n",
        b"+01234567\r\n",
        b"=3\r\nabc\r\n",
        b"*?\r\n.x\r\n",
        b"%?\r\n+a\r\n.\r\n",
        b"$?\r\n;?\r\n",
        b"$?\r\n;-1\r\n",
        b"$?\r\nx",
        b"*0\r\n",
        b"%0\r\n",
        b"|0\r\n:1\r\n",
        b"*-1\r\n",
        b"~-1\r\n",
        b"|?\r\n",
        b"!?\r\n",
        b"$3\r\nfooXY",
    ] {
        every_cut(b, &l).unwrap();
        every_cut(b, &tight).unwrap();
    }
}

#[test]
fn nothing_on_the_heap_for_usual_nesting() {
    let mut st = FrameScan::new();
    let b = b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1";
    assert_eq!(frame_len_resume(b, &Limits::default(), &mut st), Ok(None));
    assert!(!st.stack.spilled());
    // Deeper than inline: still right.
    let mut deep = Vec::new();
    for _ in 0..100 {
        deep.extend_from_slice(b"*1\r\n");
    }
    deep.extend_from_slice(b":1\r\n");
    every_cut(&deep, &Limits::default()).unwrap();
    let mut deeper = deep.clone();
    deeper.splice(0..0, b"*1\r\n".repeat(40));
    assert_eq!(
        frame_len_resume(&deeper, &Limits::default(), &mut FrameScan::new()),
        Err(ParseError::TooDeep)
    );
}

#[test]
fn a_replaced_input_starts_over() {
    let l = Limits::default();
    let mut st = FrameScan::new();
    assert_eq!(frame_len_resume(b"*2\r\n:1\r\n", &l, &mut st), Ok(None));
    // Shorter, or another first byte: not an append.
    assert_eq!(frame_len_resume(b"+OK\r\n", &l, &mut st), Ok(Some(5)));
    assert_eq!(frame_len_resume(b"+OK\r\n+X", &l, &mut st), Ok(Some(5)));
    assert_eq!(
        frame_len_resume(b":12345678\r\n", &l, &mut st),
        Ok(Some(11))
    );
    st.reset();
    assert_eq!(frame_len_resume(b"*1\r\n", &l, &mut st), Ok(None));
    assert_eq!(
        frame_len_resume(b"*1\r\n$3\r\nabc\r\n", &l, &mut st),
        Ok(Some(13))
    );
}

/// `XRANGE`-like: `n` entries `[id, [field, value]]`.
pub(crate) fn nested_reply(n: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(format!("*{n}\r\n").as_bytes());
    for i in 0..n {
        let id = format!("{}-0", 1_700_000_000_000u64 + i as u64);
        b.extend_from_slice(
            format!("*2\r\n${}\r\n{id}\r\n*2\r\n$5\r\nfield\r\n", id.len()).as_bytes(),
        );
        let v = format!("value-{i}");
        b.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
    }
    b
}

/// The point of the resumable scan: a 100k-entry nested reply fed in 4 KiB reads is
/// examined about once, where measuring afresh on every read examines it hundreds of times.
#[test]
fn linear_work_on_a_large_nested_reply_in_small_reads() {
    let b = nested_reply(100_000);
    let l = Limits::default();
    let mut st = FrameScan::new();
    let mut calls = 0u64;
    let mut answer = None;
    let mut fresh_sampled = 0u64;
    let mut at = 0;
    while at < b.len() {
        at = (at + 4096).min(b.len());
        calls += 1;
        answer = frame_len_resume(&b[..at], &l, &mut st).unwrap();
        // What measuring from the first byte on every read costs (one read in 64 sampled).
        if calls % 64 == 0 {
            let mut fresh = FrameScan::new();
            assert_eq!(frame_len_resume(&b[..at], &l, &mut fresh), Ok(None));
            fresh_sampled += fresh.examined();
        }
        assert_eq!(answer.is_some(), at == b.len());
    }
    assert_eq!(answer, Some(b.len()));
    assert_eq!(frame_len(&b, &l), Ok(Some(b.len())));
    let len = b.len() as u64;
    let resumed = st.examined();
    let fresh = fresh_sampled * 64;
    std::println!(
        "{} bytes in {calls} reads: resumed scan examined {resumed} bytes ({:.2}x), \
         a fresh scan per read ~{fresh} ({:.0}x)",
        len,
        resumed as f64 / len as f64,
        fresh as f64 / len as f64
    );
    assert!(
        resumed <= 2 * len,
        "resumed scan examined {resumed} of {len}"
    );
    // About what one scan of the whole frame examines: only the token cut by each read is
    // looked at again.
    let mut once = FrameScan::new();
    assert_eq!(frame_len_resume(&b, &l, &mut once), Ok(Some(b.len())));
    assert!(
        resumed <= once.examined() + calls * 64,
        "{resumed} vs {}",
        once.examined()
    );
    assert!(fresh > 100 * len);
}
