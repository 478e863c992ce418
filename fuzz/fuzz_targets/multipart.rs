//! `MultipartParser` with a fixed boundary on arbitrary bytes, fed whole, split at a
//! fuzzer-chosen point and one byte at a time.
//!
//! Input: two bytes choosing the split point, one byte of flags, then the body.
//! Invariants: no panic; events in order (`PartStart`, non-empty `Data`..., `PartEnd`, ...,
//! `End` last); the concatenated `Data` never exceeds the input; the tail left in the buffer is
//! bounded as documented; an error is returned again by every later call; and the events and
//! outcome do not depend on how the body was split.
#![no_main]

use bytes::{Bytes, BytesMut};
use ferry_http1::multipart::{MultipartConfig, MultipartError, MultipartEvent, MultipartParser};
use libfuzzer_sys::fuzz_target;

const BOUNDARY: &[u8] = b"XyZ-b0undary";

#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Start {
        raw: Bytes,
        name: Option<String>,
        filename: Option<String>,
        content_type: Option<Vec<u8>>,
    },
    Data(Vec<u8>),
    PartEnd,
    End,
}

#[derive(Debug, PartialEq, Eq)]
struct Run {
    events: Vec<Ev>,
    result: Result<(), MultipartError>,
}

fn config(flags: u8) -> MultipartConfig {
    let mut c = MultipartConfig::default();
    c.max_part_head_bytes = 256;
    c.max_part_headers = 6;
    c.max_parts = 6;
    c.max_preamble_bytes = 128;
    c.require_content_disposition = flags & 1 != 0;
    c
}

fn run(flags: u8, input: &[u8], pieces: &[&[u8]]) -> Run {
    let config = config(flags);
    let mut p = MultipartParser::new(Bytes::from_static(BOUNDARY), config);
    let mut buf = BytesMut::new();
    let mut r = Run {
        events: Vec::new(),
        result: Ok(()),
    };
    let mut data_len = 0;
    let mut in_part = false;
    let mut ended = false;
    let mut drain = |p: &mut MultipartParser, r: &mut Run| {
        while let Some(ev) = p.poll_event() {
            assert!(!ended, "event after End: {ev:?}");
            match ev {
                MultipartEvent::PartStart(h) => {
                    assert!(!in_part, "PartStart inside a part");
                    in_part = true;
                    for (n, v) in h.headers() {
                        let _ = (n.len(), v.len());
                    }
                    r.events.push(Ev::Start {
                        raw: h.raw().clone(),
                        name: h.name().map(str::to_owned),
                        filename: h.filename().map(str::to_owned),
                        content_type: h.content_type().map(<[u8]>::to_vec),
                    });
                }
                MultipartEvent::Data(d) => {
                    assert!(in_part, "Data outside a part");
                    assert!(!d.is_empty(), "empty Data");
                    data_len += d.len();
                    assert!(data_len <= input.len(), "more data than input");
                    if let Some(Ev::Data(last)) = r.events.last_mut() {
                        last.extend_from_slice(&d);
                    } else {
                        r.events.push(Ev::Data(d.to_vec()));
                    }
                }
                MultipartEvent::PartEnd => {
                    assert!(in_part, "PartEnd outside a part");
                    in_part = false;
                    r.events.push(Ev::PartEnd);
                }
                MultipartEvent::End => {
                    assert!(!in_part, "End inside a part");
                    ended = true;
                    r.events.push(Ev::End);
                }
                _ => {}
            }
        }
    };
    for piece in pieces {
        buf.extend_from_slice(piece);
        let res = p.feed(&mut buf);
        drain(&mut p, &mut r);
        if let Err(e) = res {
            assert_eq!(
                p.feed(&mut buf),
                Err(e),
                "a failed parser must keep failing"
            );
            assert_eq!(p.finish(), Err(e));
            r.result = Err(e);
            return r;
        }
        let bound = (4 + BOUNDARY.len()).max(config.max_part_head_bytes);
        assert!(buf.len() < bound, "{} bytes left in the buffer", buf.len());
    }
    r.result = p.finish();
    drain(&mut p, &mut r);
    assert_eq!(r.result.is_ok(), p.is_complete());
    r
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (ctl, input) = data.split_at(3);
    let split = u16::from_le_bytes([ctl[0], ctl[1]]) as usize % (input.len() + 1);
    let flags = ctl[2];
    let whole = run(flags, input, &[input]);
    let (a, b) = input.split_at(split);
    assert_eq!(
        whole,
        run(flags, input, &[a, b]),
        "split at {split} changed the result"
    );
    let singles: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(
        whole,
        run(flags, input, &singles),
        "byte-by-byte parsing changed the result"
    );
});
