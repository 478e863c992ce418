//! Response parsing through `ClientConnection`: after sending up to six requests (GET, HEAD,
//! GET with `Upgrade`, CONNECT), arbitrary bytes arrive from the "server", fed whole, split at
//! a fuzzer-chosen point, and (for short inputs) one byte at a time; then EOF.
//!
//! Input: one byte for the number of requests, two bytes of request kinds (two bits each), two
//! bytes choosing the split point, then the response bytes.
//! Invariants: no panic; events in order (per request: `Informational`*, `Response`, then
//! `Data`* `Trailers`? `End` or `Upgraded`; HEAD/204/304 without body; `Error` names the oldest
//! waiting request; nothing after `Error`/`Upgraded`); errors are sticky; at most
//! `max_head_bytes` left in the input while the connection reads; the requests on the wire parse
//! in order; and the events do not depend on how the input was split.
#![no_main]

use bytes::BytesMut;
use ferry_fuzz::{check_client_output, normalize_client, small_client_config};
use ferry_fuzz::{ClientEventChecker, ClientNorm, Sent, TAG};
use ferry_http1::{Body, ClientConnection, Error, Method};
use ferry_proto::{Connection, Instant};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Run {
    events: Vec<ClientNorm>,
    error: Option<Error>,
}

fn run(n: u8, kinds: u16, pieces: &[&[u8]]) -> Run {
    let config = small_client_config();
    let now = Instant::from_nanos(1_000_000_000);
    let mut conn = ClientConnection::new(config.clone(), now);
    let mut checker = ClientEventChecker::default();
    let mut wire = Vec::new();
    for i in 0..n {
        let tag = i.to_string();
        let (method, upgrade) = match (kinds >> (2 * i)) & 3 {
            0 => (Method::Get, false),
            1 => (Method::Head, false),
            2 => (Method::Get, true),
            _ => (Method::Connect, false),
        };
        let mut fields: Vec<(&str, &[u8])> = vec![("Host", b"example.com"), (TAG, tag.as_bytes())];
        if upgrade {
            fields.push(("Connection", b"upgrade"));
            fields.push(("Upgrade", b"websocket"));
        }
        let target = if method == Method::Connect {
            "example.com:443"
        } else {
            "/"
        };
        match conn.send_request(now, method, target, &fields, Body::Empty) {
            Ok(id) => checker.sent(Sent {
                id: id.get(),
                head: method == Method::Head,
                connect: method == Method::Connect,
                upgrade,
            }),
            Err(_) => break,
        }
    }
    while let Some(b) = conn.poll_transmit() {
        wire.extend_from_slice(&b);
    }
    check_client_output(&wire);

    let mut r = Run {
        events: Vec::new(),
        error: None,
    };
    let mut input = BytesMut::new();
    let mut drain = |conn: &mut ClientConnection, r: &mut Run| {
        while let Some(ev) = conn.poll_event() {
            checker.check(&ev);
            normalize_client(&mut r.events, ev);
        }
        assert!(
            conn.poll_transmit().is_none(),
            "the client wrote without being asked"
        );
    };
    for piece in pieces {
        input.extend_from_slice(piece);
        match conn.handle_input(now, &mut input) {
            Ok(()) => {
                assert_eq!(r.error, None, "Ok after an error");
                if conn.wants_read() {
                    assert!(
                        input.len() <= config.max_head_bytes,
                        "{} bytes left in the input",
                        input.len()
                    );
                }
            }
            Err(e) => {
                assert!(
                    r.error.is_none_or(|p| p == e),
                    "error changed from {:?} to {e:?}",
                    r.error
                );
                assert_eq!(conn.error(), Some(e));
                r.error = Some(e);
            }
        }
        drain(&mut conn, &mut r);
    }
    conn.handle_eof(now);
    drain(&mut conn, &mut r);
    if r.error.is_none() {
        r.error = conn.error();
    }
    r
}

fn assert_same(a: &Run, b: &Run, how: &str) {
    assert_eq!(a.error, b.error, "{how}: errors differ");
    assert_eq!(a.events, b.events, "{how}: events differ");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let (ctl, bytes) = data.split_at(5);
    let n = 1 + ctl[0] % 6;
    let kinds = u16::from_le_bytes([ctl[1], ctl[2]]);
    let split = u16::from_le_bytes([ctl[3], ctl[4]]) as usize % (bytes.len() + 1);
    let whole = run(n, kinds, &[bytes]);
    let (a, b) = bytes.split_at(split);
    assert_same(
        &whole,
        &run(n, kinds, &[a, b]),
        &format!("split at {split}"),
    );
    if bytes.len() <= 700 {
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_same(&whole, &run(n, kinds, &singles), "byte by byte");
    }
});
