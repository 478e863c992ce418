//! Request parsing through `ServerConnection`: arbitrary bytes fed whole, split at a
//! fuzzer-chosen point, and (for short inputs) one byte at a time.
//!
//! Input: two bytes choosing the split point, then the bytes the peer sends.
//! Invariants: no panic; events in order (ids 0, 1, 2, ...; body events belong to the request
//! being read; nothing after `Error`); an error is returned again by every later
//! `handle_input`; while the connection wants to read, it leaves at most `max_head_bytes` in
//! the input buffer; the responses on the wire parse and come in request order; and the events
//! and output do not depend on how the input was split.
#![no_main]

use bytes::{Bytes, BytesMut};
use ferry_fuzz::{
    body_byte, check_server_output, max_buffered_input, normalize, small_server_config,
};
use ferry_fuzz::{Norm, Resp, ServerEventChecker, TAG};
use ferry_http1::server::Event;
use ferry_http1::{Body, Error, ServerConnection};
use ferry_proto::{Connection, Instant};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Run {
    events: Vec<Norm>,
    output: Vec<u8>,
    responses: Vec<Resp>,
    error: Option<Error>,
}

fn run(pieces: &[&[u8]]) -> Run {
    let config = small_server_config();
    let now = Instant::from_nanos(1_000_000_000);
    let mut conn = ServerConnection::new(config.clone(), now);
    let mut checker = ServerEventChecker::default();
    let mut input = BytesMut::new();
    let mut out = Run {
        events: Vec::new(),
        output: Vec::new(),
        responses: Vec::new(),
        error: None,
    };
    for piece in pieces {
        input.extend_from_slice(piece);
        loop {
            let before = input.len();
            match conn.handle_input(now, &mut input) {
                Ok(()) => {
                    assert_eq!(out.error, None, "Ok after an error");
                    if conn.wants_read() {
                        assert!(
                            input.len() <= max_buffered_input(&config),
                            "{} bytes left in the input while reading",
                            input.len()
                        );
                    }
                }
                Err(e) => {
                    assert!(
                        out.error.is_none_or(|p| p == e),
                        "error changed from {:?} to {e:?}",
                        out.error
                    );
                    assert_eq!(conn.error(), Some(e));
                    out.error = Some(e);
                }
            }
            let mut progress = input.len() != before;
            progress |= drain(&mut conn, &mut checker, &mut out);
            if !progress {
                break;
            }
        }
    }
    conn.handle_eof(now);
    drain(&mut conn, &mut checker, &mut out);
    assert!(conn.poll_event().is_none());
    out.responses = check_server_output(&out.output, &checker.requests);
    out
}

/// Hand events to a trivial application that answers each request once its body ended, with a
/// body of its tag byte; then collect the output.
fn drain(conn: &mut ServerConnection, checker: &mut ServerEventChecker, out: &mut Run) -> bool {
    let mut progress = false;
    while let Some(ev) = conn.poll_event() {
        progress = true;
        checker.check(&ev);
        if let Event::End { id } = ev {
            let tag = id.get().to_string();
            let body = Bytes::from(vec![body_byte(id.get()); 12]);
            let _ = conn.send_response(id, 200, &[(TAG, tag.as_bytes())], Body::Full(body));
        }
        normalize(&mut out.events, ev);
    }
    while let Some(b) = conn.poll_transmit() {
        progress = true;
        out.output.extend_from_slice(&b);
    }
    progress
}

/// Two runs over the same bytes must agree on events, responses and error (the raw output
/// may differ in the connection's own `100 Continue`s, which depend on whether a body had
/// arrived).
fn assert_same(a: &Run, b: &Run, how: &str) {
    assert_eq!(a.error, b.error, "{how}: errors differ");
    assert_eq!(a.events, b.events, "{how}: events differ");
    assert_eq!(a.responses, b.responses, "{how}: responses differ");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (ctl, bytes) = data.split_at(2);
    let split = u16::from_le_bytes([ctl[0], ctl[1]]) as usize % (bytes.len() + 1);
    let whole = run(&[bytes]);
    let (a, b) = bytes.split_at(split);
    assert_same(&whole, &run(&[a, b]), &format!("split at {split}"));
    if bytes.len() <= 700 {
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_same(&whole, &run(&singles), "byte by byte");
    }
});
