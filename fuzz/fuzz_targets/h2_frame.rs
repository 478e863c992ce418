//! HTTP/2 frame header and payload parsers (`ferry_http2::frame`) on arbitrary bytes.
//!
//! Input: one byte choosing `max_frame_size` (small, 16 KiB or the 2^24-1 maximum), two bytes
//! choosing a split point, then a stream of frames.
//! Invariants: no panic; `decode` splits the same frames off the stream whether it arrives
//! whole or in two pieces; a frame header re-emits to the same 9 octets; every frame that
//! parses re-emits as exactly one frame (length in its header matching the bytes written)
//! that decodes and parses back to the same frame.
#![no_main]

use bytes::BytesMut;
use ferry_http2::frame::{decode, Frame, FrameHeader, Status};
use ferry_http2::FrameError;
use libfuzzer_sys::fuzz_target;

type Item = Result<(FrameHeader, bytes::Bytes), FrameError>;

fn split_frames(pieces: &[&[u8]], max: u32) -> Vec<Item> {
    let mut input = BytesMut::new();
    let mut out = Vec::new();
    for p in pieces {
        input.extend_from_slice(p);
        loop {
            match decode(&mut input, max) {
                Ok(Status::Partial) => break,
                Ok(Status::Complete(x)) => out.push(Ok(x)),
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = match data[0] % 3 {
        0 => 64,
        1 => 16_384,
        _ => (1 << 24) - 1,
    };
    let bytes = &data[3..];
    let split = u16::from_le_bytes([data[1], data[2]]) as usize % (bytes.len() + 1);
    let whole = split_frames(&[bytes], max);
    let (a, b) = bytes.split_at(split);
    assert_eq!(whole, split_frames(&[a, b], max), "split at {split}");

    for item in whole {
        let Ok((head, payload)) = item else { break };
        assert_eq!(head.length as usize, payload.len());
        assert!(head.length <= max);
        let mut h = BytesMut::new();
        head.emit(&mut h);
        assert_eq!(h.len(), 9);
        assert_eq!(FrameHeader::parse(&h), Some(head), "header round trip");

        let Ok(frame) = Frame::parse(&head, payload) else {
            continue;
        };
        if matches!(frame, Frame::Unknown { .. }) {
            continue;
        }
        let mut e = BytesMut::new();
        frame.emit(&mut e);
        let emitted = e.clone();
        let (h2, p2) = match decode(&mut e, (1 << 24) - 1) {
            Ok(Status::Complete(x)) => x,
            other => panic!("re-emitted {frame:?} does not decode: {other:?} ({emitted:?})"),
        };
        assert!(
            e.is_empty(),
            "{frame:?} re-emitted as more than one frame: {emitted:?}"
        );
        assert_eq!(h2.kind, head.kind);
        assert_eq!(h2.stream_id, head.stream_id);
        match Frame::parse(&h2, p2) {
            Ok(back) => assert_eq!(back, frame, "re-parse of {emitted:?}"),
            Err(err) => panic!("re-emitted {frame:?} does not parse: {err:?} ({emitted:?})"),
        }
    }
});
