//! `ferry_http2::ClientConnection` after a valid server preface (the harness sends a SETTINGS
//! frame and the ACK of ours), then arbitrary server bytes and application actions in any
//! order: requests (empty, full, streamed bodies), data, trailers, resets, priority changes,
//! capacity release, PING, graceful close, time passing, EOF, and a peer that stops reading.
//!
//! Input: two bytes giving the length of a script, the script (actions decoded with
//! `arbitrary`), then the server's frames: `Feed(n)` hands over the next bytes and the rest is
//! fed at the end. With an empty script two GET requests (streams 1 and 3) are sent first, so
//! a seed that is a run of response frames gets straight to response handling.
//!
//! Invariants (see `ferry_fuzz::h2::Harness`): no panic; our streams are odd and strictly
//! increasing; responses, data and trailers only on streams we opened or that were promised
//! to us; an error is returned again by every later `handle_input` and by `error()`; at most
//! one frame left in the input while reading; bounded queued output; an early timeout does
//! nothing; everything sent is the preface then valid frames; after a connection error the
//! last frame sent is GOAWAY and nothing follows it.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use ferry_fuzz::h2::{settings, small_config, Harness};
use ferry_http2::{Body, ClientConnection, Event, Priority, Reason, RequestHead, StreamId};
use ferry_proto::Instant;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Action {
    Feed(u16),
    Request { body: u8, post: bool },
    Data { pick: u8, len: u16, end: bool },
    Trailers(u8),
    Reset(u8),
    Priority { pick: u8, urgency: u8 },
    Release { pick: u8, n: u16 },
    Ping,
    Close,
    Wait(u16),
    Eof,
    Stall(u8),
}

struct Streams {
    ours: Vec<StreamId>,
    promised: Vec<StreamId>,
    last: u32,
}

impl Streams {
    fn pick(&self, p: u8) -> StreamId {
        if self.ours.is_empty() {
            StreamId::new(1)
        } else {
            self.ours[p as usize % self.ours.len()]
        }
    }

    fn known(&self, id: StreamId) -> bool {
        self.ours.contains(&id) || self.promised.contains(&id)
    }
}

fn events(h: &mut Harness<ClientConnection>, s: &mut Streams) {
    for ev in h.events.drain(..) {
        match ev {
            Event::Response { id, .. }
            | Event::Informational { id, .. }
            | Event::Data { id, .. }
            | Event::Trailers { id, .. }
            | Event::End { id } => {
                assert!(
                    s.known(id),
                    "{ev:?} on a stream we neither opened nor were promised"
                )
            }
            Event::PushPromise { id, promised, .. } => {
                assert!(s.ours.contains(&id), "push promise on stream {}", id.get());
                assert!(
                    promised.get() % 2 == 0,
                    "promised odd stream {}",
                    promised.get()
                );
                s.promised.push(promised);
            }
            _ => {}
        }
    }
}

fn request(h: &mut Harness<ClientConnection>, s: &mut Streams, body: u8, post: bool) {
    let head = RequestHead::new(
        if post { "POST" } else { "GET" },
        "https",
        "a.example",
        "/x",
    )
    .fields(&[("accept", b"*/*")]);
    let body = match body % 3 {
        0 => Body::Empty,
        1 => Body::Full(Bytes::from(vec![b'y'; body as usize * 40])),
        _ => Body::Streaming,
    };
    if let Ok(id) = h.conn.send_request(&head, body) {
        assert!(
            id.get() % 2 == 1 && id.get() > s.last,
            "new stream {} after {}",
            id.get(),
            s.last
        );
        s.last = id.get();
        s.ours.push(id);
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
    let conn = ClientConnection::new(config.clone(), now);
    let mut h = Harness::new(conn, ClientConnection::error, &config, now);
    let mut s = Streams {
        ours: Vec::new(),
        promised: Vec::new(),
        last: 0,
    };
    if script.is_empty() {
        request(&mut h, &mut s, 0, false);
        request(&mut h, &mut s, 0, false);
    }
    let mut preface = settings(&[(3, 100), (4, 65535)], false);
    preface.extend(settings(&[], true));
    h.feed(&preface);
    events(&mut h, &mut s);
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
            Action::Request { body, post } => request(&mut h, &mut s, body, post),
            Action::Data { pick, len, end } => {
                let _ = c.send_data(
                    s.pick(pick),
                    Bytes::from(vec![b'd'; len as usize % 20000]),
                    end,
                );
            }
            Action::Trailers(p) => {
                let _ = c.send_trailers(s.pick(p), &[("x-t", b"1")]);
            }
            Action::Reset(p) => {
                let _ = c.reset(s.pick(p), Reason::CANCEL);
            }
            Action::Priority { pick, urgency } => {
                let p = Priority {
                    urgency: urgency % 8,
                    incremental: urgency > 127,
                };
                let _ = c.set_priority(s.pick(pick), p);
            }
            Action::Release { pick, n } => c.release_capacity(s.pick(pick), n as usize),
            // Fixed finding (regressions/h2_server_conn/ping-after-connection-error): `ping` on a
            // failed connection must not send anything after the final GOAWAY.
            Action::Ping => c.ping(*b"fuzzping"),
            Action::Close => c.close(),
            Action::Wait(ms) => h.wait(ms as u64 * 4),
            Action::Eof => ferry_proto::Connection::handle_eof(&mut h.conn, h.now),
            Action::Stall(n) => h.stall = n % 8,
        }
        h.pump();
        events(&mut h, &mut s);
    }
    h.feed(payload);
    events(&mut h, &mut s);
    h.finish(true);
});
