//! Attacks played with raw frames against `ServerConnection`: each test checks the answer
//! (GOAWAY code, RST_STREAM, 431) and that memory stays bounded (streams, queued data, queued
//! output, buffered input).

mod common;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use common::{sid, Answer, Raw};
use ferry_http2::frame::{flags, FrameHeader, Kind, StreamId};
use ferry_http2::hpack::encode_int;
use ferry_http2::{
    Body, ClientConnection, Config, Error, Event, Reason, SendError, ServerConnection, PREFACE,
};
use ferry_proto::{Connection, Instant};

const END_HEADERS: u8 = flags::END_HEADERS;
const END_STREAM: u8 = flags::END_STREAM;

/// Send frames until the server fails; returns how many were accepted.
fn until_error(
    r: &mut Raw,
    max: usize,
    mut frame: impl FnMut(&mut Raw, usize) -> Result<(), Error>,
) -> (usize, Error) {
    for i in 0..max {
        if let Err(e) = frame(r, i) {
            return (i, e);
        }
        // Bounded memory at every step.
        assert!(r.server.open_streams() <= 100);
        assert!(r.server.queued_output() <= r.server.config().max_pending_output + 64 * 1024);
        let _ = r.frames();
    }
    panic!("server never stopped the attack");
}

#[test]
fn rapid_reset_cve_2023_44487() {
    let mut r = Raw::default();
    r.auto_respond = false;
    let (n, e) = until_error(&mut r, 10_000, |r, i| {
        let id = 1 + 2 * i as u32;
        r.post(id)?;
        r.rst(id, Reason::CANCEL.0)
    });
    assert_eq!(e, Error::RapidReset);
    assert!(n <= 201, "stopped after {n} resets");
    r.expect_connection_error(Reason::ENHANCE_YOUR_CALM);
    assert_eq!(r.server.open_streams(), 0);
    // Resets spread over time are fine.
    let mut c = Config::default();
    c.max_resets = 10;
    let mut r = Raw::new(c);
    r.auto_respond = false;
    for i in 0..50u32 {
        r.post(1 + 2 * i).unwrap();
        r.rst(1 + 2 * i, 8).unwrap();
        r.advance(std::time::Duration::from_secs(2));
    }
    r.expect_alive();
}

#[test]
fn continuation_flood_cve_2024_27316() {
    // Endless empty CONTINUATION frames without END_HEADERS.
    let mut r = Raw::default();
    let block = r.block(&Raw::get_fields());
    r.raw(1, END_STREAM, 1, &block).unwrap();
    let (n, e) = until_error(&mut r, 100_000, |r, _| r.raw(9, 0, 1, &[]));
    assert_eq!(e, Error::HeaderBlockTooLarge);
    assert!(n <= r.server.config().max_continuation_frames);
    r.expect_connection_error(Reason::ENHANCE_YOUR_CALM);

    // Full-size CONTINUATION frames: stopped at the block size limit, never buffered beyond it.
    let mut r = Raw::default();
    r.raw(1, END_STREAM, 1, &block).unwrap();
    let junk = vec![0x40u8; 16_384];
    let (n, e) = until_error(&mut r, 100_000, |r, _| r.raw(9, 0, 1, &junk));
    assert_eq!(e, Error::HeaderBlockTooLarge);
    assert!(n * 16_384 <= r.server.config().max_header_block);
    r.expect_connection_error(Reason::ENHANCE_YOUR_CALM);
    assert!(r.input.is_empty());
}

#[test]
fn hpack_bomb_is_answered_with_431() {
    let mut r = Raw::default();
    // Request 1 puts a 4 000-octet field in the dynamic table...
    let mut block = BytesMut::new();
    block.extend_from_slice(&r.block(&Raw::get_fields()));
    block.extend_from_slice(&[0x40, 0x05]);
    block.extend_from_slice(b"x-big");
    encode_int(4000, 7, 0, &mut block);
    block.extend_from_slice(&[b'v'; 4000]);
    r.raw(1, END_HEADERS | END_STREAM, 1, &block).unwrap();
    r.expect_response(1);
    // ...request 3 references it 10 000 times: 10 KB of input, 40 MB of fields.
    let mut bomb = r.block(&Raw::get_fields()).to_vec();
    // The big entry is now at dynamic index 62 + (entries added after it).
    let idx = 62 + r.enc.table().len();
    let mut one = BytesMut::new();
    encode_int(idx, 7, 0x80, &mut one);
    for _ in 0..10_000 {
        bomb.extend_from_slice(&one);
    }
    let before = r.events.len();
    for (i, piece) in bomb.chunks(16_384).enumerate() {
        let last = (i + 1) * 16_384 >= bomb.len();
        let fl = if last { END_HEADERS } else { 0 };
        if i == 0 {
            r.raw(1, fl | END_STREAM, 3, piece).unwrap();
        } else {
            r.raw(9, fl, 3, piece).unwrap();
        }
    }
    let a = r.answers();
    assert!(a.iter().any(|a| matches!(a, Answer::Headers { stream: 3, fields, end_stream: true } if fields.iter().any(|(n, v)| n == ":status" && v == "431"))), "{a:?}");
    assert!(
        !r.events[before..]
            .iter()
            .any(|e| matches!(e, Event::Request { .. })),
        "the request never reaches the application"
    );
    r.expect_alive();
    // The decoder stayed in sync: another request works.
    r.get(5).unwrap();
    r.expect_response(5);
}

#[test]
fn settings_flood() {
    let mut r = Raw::default();
    let (n, e) = until_error(&mut r, 100_000, |r, _| r.settings(&[(3, 100)]));
    assert_eq!(e, Error::Flood);
    assert!(n <= 1000);
    r.expect_connection_error(Reason::ENHANCE_YOUR_CALM);
}

#[test]
fn ping_flood() {
    let mut r = Raw::default();
    let (n, e) = until_error(&mut r, 100_000, |r, _| r.ping(*b"flooding"));
    assert_eq!(e, Error::Flood);
    assert!(n <= 1000);
    r.expect_connection_error(Reason::ENHANCE_YOUR_CALM);
}

#[test]
fn ping_flood_without_reading_answers_is_bounded() {
    // The peer never reads: PING ACKs pile up in our output until the limit.
    let mut c = Config::default();
    c.max_control_frames = u32::MAX;
    c.max_pending_output = 64 * 1024;
    let mut r = Raw::new(c);
    let mut e = None;
    for _ in 0..100_000 {
        if let Err(err) = r.ping(*b"no-read!") {
            e = Some(err);
            break;
        }
    }
    assert_eq!(e, Some(Error::Flood));
    assert!(r.server.queued_output() <= 64 * 1024 + 64);
}

#[test]
fn empty_data_flood() {
    let mut r = Raw::default();
    r.auto_respond = false;
    r.post(1).unwrap();
    let (n, e) = until_error(&mut r, 100_000, |r, _| r.data(1, &[], false));
    assert_eq!(e, Error::Flood);
    assert!(n <= 1000);
    r.expect_connection_error(Reason::ENHANCE_YOUR_CALM);
}

#[test]
fn window_update_flood_zero_and_tiny_increments() {
    // Zero increment: PROTOCOL_ERROR at once on the connection.
    let mut r = Raw::default();
    assert!(r.window_update(0, 0).is_err());
    r.expect_connection_error(Reason::PROTOCOL_ERROR);
    // Tiny increments: counted as control frames.
    let mut r = Raw::default();
    let (n, e) = until_error(&mut r, 100_000, |r, _| r.window_update(0, 1));
    assert_eq!(e, Error::Flood);
    assert!(n <= 1000);
    r.expect_connection_error(Reason::ENHANCE_YOUR_CALM);
}

/// A client with a tiny window that acknowledges every DATA frame (a stream and a connection
/// WINDOW_UPDATE each) is a legitimate slow reader, not a flood: the download completes. Tiny
/// updates not earned by DATA we sent still count (above).
#[test]
fn tiny_window_reader_acknowledging_each_frame_is_not_a_flood() {
    let mut r = Raw::default();
    r.auto_respond = false;
    // SETTINGS_INITIAL_WINDOW_SIZE = 16 and a connection window kept just as small.
    r.settings(&[(4, 16)]).unwrap();
    let _ = r.frames();
    r.get(1).unwrap();
    let body = Bytes::from(vec![7u8; 64 * 1024]);
    r.server
        .send_response(sid(1), 200, &[], Body::Full(body.clone()))
        .unwrap();
    let mut got = 0;
    let mut ended = false;
    for _ in 0..10_000 {
        let mut acks = Vec::new();
        for f in r.frames() {
            if let ferry_http2::frame::Frame::Data(d) = f {
                got += d.data.len();
                ended |= d.end_stream;
                if !d.data.is_empty() {
                    acks.push(d.data.len() as u32);
                }
            }
        }
        if ended {
            break;
        }
        for n in acks {
            r.window_update(1, n)
                .expect("stream WINDOW_UPDATE accepted");
            r.window_update(0, n)
                .expect("connection WINDOW_UPDATE accepted");
        }
    }
    assert!(ended, "download did not finish ({got} bytes)");
    assert_eq!(got, body.len());
    r.expect_alive();
}

#[test]
fn zero_window_slow_reader_is_bounded() {
    let mut r = Raw::default();
    r.auto_respond = false;
    r.settings(&[(4, 0)]).unwrap();
    let _ = r.frames();
    let max_stream = r.server.config().max_send_buffer;
    let max_conn = r.server.config().max_send_buffer_connection;
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    for i in 0..40u32 {
        let id = sid(1 + 2 * i);
        r.get(id.get()).unwrap();
        r.server
            .send_response(id, 200, &[], Body::Streaming)
            .unwrap();
        // The application tries to push 100 MB per stream.
        let mut refused = false;
        for _ in 0..1600 {
            match r.server.send_data(id, chunk.clone(), false) {
                Ok(()) => {}
                Err(SendError::BufferFull) => {
                    refused = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused);
        assert!(r.server.queued_data() <= max_conn + chunk.len());
        let _ = r.frames();
    }
    assert!(r.server.queued_data() <= max_conn + chunk.len());
    assert!(
        r.server.send_capacity(sid(1)).unwrap() == 0 || r.server.queued_data() <= max_stream * 40
    );
    // Nothing but headers went out: the window is zero.
    assert!(!r
        .answers()
        .iter()
        .any(|a| matches!(a, Answer::Data { len, .. } if *len > 0)));
    // Opening the window drains it and SendReady tells the application.
    r.settings(&[(4, 1 << 20)]).unwrap();
    r.window_update(0, 100 << 20).unwrap();
    let sent: usize = r
        .answers()
        .iter()
        .map(|a| {
            if let Answer::Data { len, .. } = a {
                *len
            } else {
                0
            }
        })
        .sum();
    assert!(sent > 0);
}

#[test]
fn stream_id_exhaustion() {
    let mut r = Raw::default();
    r.get(0x7fff_ffff).unwrap();
    r.expect_response(0x7fff_ffff);
    // No larger id exists; any other new stream id is not larger than the last one.
    assert!(r.get(3).is_err());
    r.expect_connection_error(Reason::PROTOCOL_ERROR);
    // Our client refusing to go past the last id (SendError::StreamIdsExhausted) is a unit
    // test in src/client.rs (it needs to fast-forward the id counter).
}

#[test]
fn oversized_frames_are_rejected_before_buffering() {
    let mut r = Raw::default();
    // Only the 9-octet header of a 16 MiB DATA frame: rejected at once.
    let mut b = BytesMut::new();
    FrameHeader::new(Kind::Data, 0, StreamId::new(1), (1 << 24) - 1).emit(&mut b);
    assert_eq!(
        r.send_bytes(&b),
        Err(Error::Frame(ferry_http2::FrameError::TooLarge))
    );
    r.expect_connection_error(Reason::FRAME_SIZE_ERROR);
    // SETTINGS with an oversized payload, same.
    let mut r = Raw::default();
    let mut b = BytesMut::new();
    FrameHeader::new(Kind::Settings, 0, StreamId::ZERO, 20_000).emit(&mut b);
    assert!(r.send_bytes(&b).is_err());
    r.expect_connection_error(Reason::FRAME_SIZE_ERROR);
}

/// Fuzz finding (fuzz/regressions/h2_server_conn/ping-after-connection-error): after the
/// GOAWAY for a connection error, an application `ping` sends nothing (RFC 9113 §5.4.1).
#[test]
fn ping_after_connection_error_sends_nothing() {
    let mut r = Raw::default();
    let mut b = BytesMut::new();
    FrameHeader::new(Kind::Headers, 0x4, StreamId::new(1), (1 << 24) - 1).emit(&mut b);
    assert!(r.send_bytes(&b).is_err());
    r.expect_connection_error(Reason::FRAME_SIZE_ERROR);
    r.server.ping(*b"afterend");
    assert_eq!(ferry_proto::Connection::poll_transmit(&mut r.server), None);
    assert!(r.server.is_closed());
}

/// xorshift64*: a fixed-seed RNG (no unseeded randomness anywhere).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random frames with plausible headers: kinds 0..=10 and 0x10, any flags, small stream ids,
/// random (sometimes valid-looking) payloads.
fn random_frames(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        let kind = match rng.below(12) {
            11 => 0x10,
            k => k as u8,
        };
        let len = match rng.below(4) {
            0 => rng.below(10),
            1 => [4, 5, 6, 8][rng.below(4) as usize],
            _ => rng.below(200),
        } as usize;
        let stream = rng.below(8) as u32;
        let mut b = BytesMut::new();
        if kind <= 1 && rng.below(2) == 0 {
            // A well-formed request (stateless HPACK: static indexes and a literal without
            // indexing) or DATA, so the fuzzing reaches open streams.
            let block: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'x'];
            let payload: &[u8] = if kind == 1 { block } else { b"some body bytes" };
            let fl = (rng.below(256) as u8) & (flags::END_STREAM | flags::END_HEADERS);
            let id = StreamId::new(stream | 1);
            FrameHeader::new(Kind::from_u8(kind), fl, id, payload.len() as u32).emit(&mut b);
            out.extend_from_slice(&b);
            out.extend_from_slice(payload);
            continue;
        }
        FrameHeader::new(
            Kind::from_u8(kind),
            rng.below(256) as u8,
            StreamId::new(stream),
            len as u32,
        )
        .emit(&mut b);
        out.extend_from_slice(&b);
        for _ in 0..len {
            out.push(rng.below(256) as u8);
        }
    }
    out
}

#[test]
fn garbage_never_panics_server_or_client() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // FERRY_FUZZ_ROUNDS raises the count for a longer soak (same fixed seed).
    let rounds = std::env::var("FERRY_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000u64);
    for round in 0..rounds {
        let config = Arc::new(Config::default());
        let mut server = ServerConnection::new(config.clone(), Instant::ZERO);
        let mut client = ClientConnection::new(config, Instant::ZERO);
        let _ = client.send_request(
            &ferry_http2::RequestHead::new("GET", "http", "x", "/"),
            Body::Streaming,
        );
        let mut input = BytesMut::new();
        if round % 3 != 0 {
            input.extend_from_slice(PREFACE);
            input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        }
        if round % 5 == 0 {
            for _ in 0..rng.below(300) {
                input.extend_from_slice(&[rng.below(256) as u8]);
            }
        } else {
            let n = 1 + rng.below(30) as usize;
            input.extend_from_slice(&random_frames(&mut rng, n));
        }
        let mut cin = BytesMut::from(&input[if round % 3 != 0 { PREFACE.len() } else { 0 }..]);
        // Deliver in random pieces.
        let mut fed = BytesMut::new();
        while !input.is_empty() {
            let n = (1 + rng.below(64) as usize).min(input.len());
            fed.extend_from_slice(&input.split_to(n));
            let _ = server.handle_input(Instant::from_nanos(round), &mut fed);
            while let Some(ev) = server.poll_event() {
                if let Event::Request { id, .. } = ev {
                    let _ =
                        server.send_response(id, 200, &[], Body::Full(Bytes::from_static(b"x")));
                }
            }
            while server.poll_transmit().is_some() {}
        }
        let _ = client.handle_input(Instant::ZERO, &mut cin);
        while client.poll_event().is_some() {}
        while client.poll_transmit().is_some() {}
        server.handle_timeout(Instant::from_nanos(u64::MAX / 2));
        client.handle_eof(Instant::ZERO);
        assert!(server.queued_output() < 1 << 20);
    }
}

#[test]
fn unreleased_credit_is_returned_when_a_stream_resets() {
    let mut c = Config::default();
    c.auto_release = false;
    c.initial_connection_window = 65_535;
    let mut r = Raw::new(c);
    r.auto_respond = false;
    r.post(1).unwrap();
    r.data(1, &[1; 16_000], false).unwrap();
    r.data(1, &[2; 16_000], false).unwrap();
    r.data(1, &[3; 8_000], false).unwrap();
    // Not released by the application: no WINDOW_UPDATE yet.
    assert!(!r
        .answers()
        .iter()
        .any(|a| matches!(a, Answer::WindowUpdate { .. })));
    r.rst(1, 8).unwrap();
    let a = r.answers();
    assert!(
        a.contains(&Answer::WindowUpdate {
            stream: 0,
            inc: 40_000
        }),
        "{a:?}"
    );
    // Releasing after the fact is harmless (no double credit).
    r.server.release_capacity(sid(1), 40_000);
    assert!(!r
        .answers()
        .iter()
        .any(|a| matches!(a, Answer::WindowUpdate { .. })));
}

#[test]
fn too_many_fields_is_answered_with_431() {
    let mut c = Config::default();
    c.max_header_fields = 10;
    let mut r = Raw::new(c);
    let names: Vec<String> = (0..11).map(|i| format!("x-f{i}")).collect();
    // Ten fields plus any number of cookie crumbs (one field in HTTP/1.1): served.
    let mut fields = Raw::get_fields();
    fields.extend(names[..10].iter().map(|n| (n.as_str(), "v")));
    fields.extend([("cookie", "a=1"), ("cookie", "b=2")]);
    fields.retain(|(n, _)| *n != "x-f9");
    r.headers(1, &fields, true).unwrap();
    r.expect_response(1);
    // Eleven: 431 before the application sees it; the connection carries on.
    let mut fields = Raw::get_fields();
    fields.extend(names.iter().map(|n| (n.as_str(), "v")));
    let before = r.events.len();
    r.headers(3, &fields, true).unwrap();
    let a = r.answers();
    assert!(a.iter().any(|a| matches!(a, Answer::Headers { stream: 3, fields, end_stream: true } if fields.iter().any(|(n, v)| n == ":status" && v == "431"))), "{a:?}");
    assert!(!r.events[before..]
        .iter()
        .any(|e| matches!(e, Event::Request { .. })));
    r.expect_alive();
    r.get(5).unwrap();
    r.expect_response(5);
}
