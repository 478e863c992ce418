//! `ferry_http2::ServerConnection` after a valid client preface (the harness sends the magic,
//! a SETTINGS frame and the ACK of ours), then arbitrary peer bytes and application actions
//! in any order: responses (empty, full, streamed), interim heads, data, trailers, resets,
//! server push, capacity release, PING, graceful close, time passing, EOF, and a peer that
//! stops reading for a while.
//!
//! Input: two bytes giving the length of a script, the script (actions decoded with
//! `arbitrary`), then the client's frames: `Feed(n)` hands over the next bytes and the rest
//! is fed at the end (then every open stream gets a response), so a seed that is a run of
//! frames gets straight to stream handling.
//!
//! Invariants (see `ferry_fuzz::h2::Harness`): no panic; request stream ids strictly
//! increase; an error is returned again by every later `handle_input` and by `error()`; at
//! most one frame (9 + max_frame_size octets) left in the input while reading; queued output
//! bounded by the config (pending-output cap + send buffers + heads); an early timeout does
//! nothing; everything sent parses as valid frames; after a connection error the last frame
//! sent is GOAWAY and nothing follows it.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use ferry_fuzz::h2::{settings, small_config, Harness};
use ferry_http2::{Body, Event, Reason, ServerConnection, StreamId};
use ferry_proto::Instant;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Action {
    Feed(u16),
    Respond { pick: u8, status: u16, body: u8 },
    Interim(u8),
    Data { pick: u8, len: u16, end: bool },
    Trailers(u8),
    Reset(u8),
    Push(u8),
    Release { pick: u8, n: u16 },
    Ping,
    Close,
    Wait(u16),
    Eof,
    Stall(u8),
}

fn pick(open: &[StreamId], p: u8) -> StreamId {
    if open.is_empty() {
        StreamId::new(1)
    } else {
        open[p as usize % open.len()]
    }
}

fn events(h: &mut Harness<ServerConnection>, open: &mut Vec<StreamId>, last: &mut u32) {
    for ev in h.events.drain(..) {
        match ev {
            Event::Request { id, .. } => {
                assert!(id.get() % 2 == 1, "request on even stream {}", id.get());
                assert!(
                    id.get() > *last,
                    "request stream {} after {}",
                    id.get(),
                    *last
                );
                *last = id.get();
                open.push(id);
            }
            Event::Reset { id, .. } => open.retain(|s| *s != id),
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = u16::from_le_bytes([data[0], data[1]]) as usize % (data.len() - 1);
    let (script, mut payload) = data[2..].split_at(n);
    let mut u = Unstructured::new(script);
    let config = small_config();
    let now = Instant::from_nanos(1_000_000_000);
    let conn = ServerConnection::new(config.clone(), now);
    let mut h = Harness::new(conn, ServerConnection::error, &config, now);
    let mut preface = ferry_http2::PREFACE.to_vec();
    preface.extend(settings(&[(2, 0), (4, 65535)], false));
    preface.extend(settings(&[], true));
    h.feed(&preface);
    let (mut open, mut last) = (Vec::new(), 0u32);
    events(&mut h, &mut open, &mut last);
    let body = |n: usize| Bytes::from(vec![b'x'; n]);
    for _ in 0..48 {
        let Ok(a) = Action::arbitrary(&mut u) else {
            break;
        };
        let c = &mut h.conn;
        match a {
            Action::Feed(k) => {
                let (now_, rest) = payload.split_at((k as usize % 4096 + 1).min(payload.len()));
                payload = rest;
                h.feed(now_);
            }
            Action::Respond {
                pick: p,
                status,
                body: b,
            } => {
                let b = match b % 3 {
                    0 => Body::Empty,
                    1 => Body::Full(body(b as usize * 64)),
                    _ => Body::Streaming,
                };
                let _ = c.send_response(pick(&open, p), 200 + status % 400, &[("x-a", b"1")], b);
            }
            Action::Interim(p) => {
                let _ = c.send_informational(pick(&open, p), 103, &[("link", b"</a>")]);
            }
            Action::Data { pick: p, len, end } => {
                let _ = c.send_data(pick(&open, p), body(len as usize % 20000), end);
            }
            Action::Trailers(p) => {
                let _ = c.send_trailers(pick(&open, p), &[("x-t", b"1")]);
            }
            Action::Reset(p) => {
                let _ = c.reset(pick(&open, p), Reason::CANCEL);
            }
            Action::Push(p) => {
                if let Ok(id) = c.push_promise(pick(&open, p), "https", "a", "/p", &[]) {
                    open.push(id);
                }
            }
            Action::Release { pick: p, n } => c.release_capacity(pick(&open, p), n as usize),
            // Fixed finding (regressions/h2_server_conn/ping-after-connection-error): `ping` on a
            // failed connection must not send anything after the final GOAWAY.
            Action::Ping => c.ping(*b"fuzzping"),
            Action::Close => c.close(),
            Action::Wait(ms) => h.wait(ms as u64 * 4),
            Action::Eof => ferry_proto::Connection::handle_eof(&mut h.conn, h.now),
            Action::Stall(n) => h.stall = n % 8,
        }
        h.pump();
        events(&mut h, &mut open, &mut last);
    }
    h.feed(payload);
    events(&mut h, &mut open, &mut last);
    for id in open.clone() {
        let _ = h
            .conn
            .send_response(id, 200, &[], Body::Full(Bytes::from_static(b"ok")));
    }
    h.finish(false);
});
