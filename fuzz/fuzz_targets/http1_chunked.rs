//! `ChunkedDecoder` on arbitrary bytes, decoded whole, split at a fuzzer-chosen point and one
//! byte at a time.
//!
//! Input: two bytes choosing the split point, then the chunked body.
//! Invariants: no panic; the concatenated `Data` never exceeds the input; at most one trailer
//! section, before `End`; a partial trailer section left in the buffer stays within the limit;
//! after `End` nothing more is consumed; and the result (data, trailers, outcome, bytes left
//! after the body) does not depend on how the input was split.
#![no_main]

use bytes::BytesMut;
use ferry_http1::chunked::{ChunkedDecoder, Decoded};
use ferry_http1::Error;
use libfuzzer_sys::fuzz_target;

const MAX_TRAILER_BYTES: usize = 256;
const MAX_TRAILERS: usize = 8;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// `End` with this many input bytes after the body.
    End {
        rest: usize,
    },
    /// Ran out of input.
    NeedMore,
    Failed(Error),
}

#[derive(Debug, PartialEq, Eq)]
struct Run {
    data: Vec<u8>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
    outcome: Outcome,
}

fn run(input: &[u8], pieces: &[&[u8]]) -> Run {
    let mut dec = ChunkedDecoder::new(MAX_TRAILER_BYTES, MAX_TRAILERS);
    let mut buf = BytesMut::new();
    let mut r = Run {
        data: Vec::new(),
        trailers: None,
        outcome: Outcome::NeedMore,
    };
    let mut fed = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(Decoded::Data(d))) => {
                    assert!(r.trailers.is_none(), "Data after Trailers");
                    r.data.extend_from_slice(&d);
                    assert!(r.data.len() <= input.len(), "more data than input");
                }
                Ok(Some(Decoded::Trailers(t))) => {
                    assert!(r.trailers.is_none(), "two trailer sections");
                    assert!(!t.is_empty(), "empty trailer section reported");
                    r.trailers = Some(t.iter().map(|(n, v)| (n.to_owned(), v.to_vec())).collect());
                }
                Ok(Some(Decoded::End)) => {
                    assert!(dec.is_done());
                    let rest = buf.len() + (input.len() - fed);
                    // Done means done: nothing more is decoded or consumed.
                    let left = buf.len();
                    assert_eq!(dec.decode(&mut buf), Ok(None));
                    assert_eq!(buf.len(), left);
                    r.outcome = Outcome::End { rest };
                    return r;
                }
                Ok(None) => {
                    assert!(
                        buf.len() <= MAX_TRAILER_BYTES,
                        "{} bytes buffered",
                        buf.len()
                    );
                    break;
                }
                Err(e) => {
                    r.outcome = Outcome::Failed(e);
                    return r;
                }
            }
        }
    }
    r
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (ctl, input) = data.split_at(2);
    let split = u16::from_le_bytes([ctl[0], ctl[1]]) as usize % (input.len() + 1);
    let whole = run(input, &[input]);
    let (a, b) = input.split_at(split);
    assert_eq!(
        whole,
        run(input, &[a, b]),
        "split at {split} changed the result"
    );
    let singles: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(
        whole,
        run(input, &singles),
        "decoding byte by byte changed the result"
    );
});
