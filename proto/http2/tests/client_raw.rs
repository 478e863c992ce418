//! `ClientConnection` against hand-built server frames: response validation, 1xx, trailers,
//! push refusal, GOAWAY handling and the connection errors a client must raise.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_http2::frame::{self, flags, Frame, FrameHeader, Kind, Settings, Status, StreamId};
use ferry_http2::hpack::Encoder;
use ferry_http2::{Body, ClientConnection, Config, Error, Event, Reason, RequestHead};
use ferry_proto::{Connection, Instant};

struct RawServer {
    client: ClientConnection,
    enc: Encoder,
    input: BytesMut,
    out: BytesMut,
}

impl RawServer {
    fn new(config: Config) -> RawServer {
        let mut r = RawServer {
            client: ClientConnection::new(Arc::new(config), Instant::ZERO),
            enc: Encoder::default(),
            input: BytesMut::new(),
            out: BytesMut::new(),
        };
        let first = r.drain();
        assert!(r.out.is_empty());
        assert!(first.len() >= 24 && &first[..24] == ferry_http2::PREFACE);
        r.send(|b| Settings::default().emit(b)).unwrap();
        r.send(|b| Settings::ACK.emit(b)).unwrap();
        let _ = r.frames();
        r
    }

    fn drain(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(b) = self.client.poll_transmit() {
            v.extend_from_slice(&b);
        }
        v
    }

    fn frames(&mut self) -> Vec<Frame> {
        let d = self.drain();
        self.out.extend_from_slice(&d);
        let mut v = Vec::new();
        while let Ok(Status::Complete((h, p))) =
            frame::decode(&mut self.out, frame::MAX_MAX_FRAME_SIZE)
        {
            v.push(Frame::parse(&h, p).unwrap());
        }
        v
    }

    fn send(&mut self, f: impl FnOnce(&mut BytesMut)) -> Result<(), Error> {
        let mut b = BytesMut::new();
        f(&mut b);
        self.input.extend_from_slice(&b);
        self.client.handle_input(Instant::ZERO, &mut self.input)
    }

    fn raw(&mut self, kind: u8, fl: u8, stream: u32, payload: &[u8]) -> Result<(), Error> {
        self.send(|b| {
            FrameHeader::new(
                Kind::from_u8(kind),
                fl,
                StreamId::new(stream),
                payload.len() as u32,
            )
            .emit(b);
            b.extend_from_slice(payload);
        })
    }

    fn headers(
        &mut self,
        stream: u32,
        fields: &[(&str, &str)],
        end_stream: bool,
    ) -> Result<(), Error> {
        let mut block = BytesMut::new();
        self.enc.encode(
            fields
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes(), false)),
            &mut block,
        );
        let fl = flags::END_HEADERS | if end_stream { flags::END_STREAM } else { 0 };
        self.raw(1, fl, stream, &block)
    }

    fn events(&mut self) -> Vec<Event> {
        let mut v = Vec::new();
        while let Some(e) = self.client.poll_event() {
            v.push(e);
        }
        v
    }

    fn get(&mut self) -> StreamId {
        self.client
            .send_request(&RequestHead::new("GET", "http", "x", "/"), Body::Empty)
            .unwrap()
    }

    fn goaway_code(&mut self) -> Option<Reason> {
        self.frames().into_iter().find_map(|f| {
            if let Frame::GoAway(g) = f {
                Some(g.error)
            } else {
                None
            }
        })
    }

    fn rst_code(&mut self, id: u32) -> Option<Reason> {
        self.frames().into_iter().find_map(|f| match f {
            Frame::RstStream(r) if r.stream_id.get() == id => Some(r.error),
            _ => None,
        })
    }
}

#[test]
fn informational_then_final_response_then_trailers() {
    let mut r = RawServer::new(Config::default());
    let id = r.get();
    r.headers(1, &[(":status", "103"), ("link", "</a.css>")], false)
        .unwrap();
    r.headers(1, &[(":status", "200"), ("content-length", "5")], false)
        .unwrap();
    r.raw(0, 0, 1, b"hello").unwrap();
    r.headers(1, &[("grpc-status", "0")], true).unwrap();
    let ev = r.events();
    assert!(matches!(&ev[0], Event::Informational { response, .. } if response.status() == 103));
    assert!(
        matches!(&ev[1], Event::Response { response, .. } if response.status() == 200 && response.content_length() == Some(5))
    );
    assert!(matches!(&ev[2], Event::Data { data, .. } if &data[..] == b"hello"));
    assert!(
        matches!(&ev[3], Event::Trailers { trailers, .. } if trailers.get("grpc-status") == Some(&b"0"[..]))
    );
    assert!(matches!(&ev[4], Event::End { id: e } if *e == id));
    assert_eq!(r.client.open_streams(), 0);
}

#[test]
fn malformed_responses_are_stream_errors() {
    let cases: [&[(&str, &str)]; 4] = [
        &[("content-type", "text/plain")],              // no :status
        &[(":status", "20x")],                          // not 3 digits
        &[(":status", "200"), (":path", "/")],          // request pseudo-header
        &[(":status", "200"), ("connection", "close")], // connection-specific
    ];
    for fields in cases {
        let mut r = RawServer::new(Config::default());
        r.get();
        r.headers(1, fields, true).unwrap();
        assert_eq!(r.rst_code(1), Some(Reason::PROTOCOL_ERROR), "{fields:?}");
        assert!(r
            .events()
            .iter()
            .any(|e| matches!(e, Event::Reset { remote: false, .. })));
    }
}

#[test]
fn content_length_mismatch_in_response() {
    let mut r = RawServer::new(Config::default());
    r.get();
    r.headers(1, &[(":status", "200"), ("content-length", "10")], false)
        .unwrap();
    r.raw(0, flags::END_STREAM, 1, b"short").unwrap();
    assert_eq!(r.rst_code(1), Some(Reason::PROTOCOL_ERROR));
    // HEAD: the content-length describes the would-be body.
    let mut r = RawServer::new(Config::default());
    r.client
        .send_request(&RequestHead::new("HEAD", "http", "x", "/"), Body::Empty)
        .unwrap();
    r.headers(1, &[(":status", "200"), ("content-length", "10")], true)
        .unwrap();
    assert!(r.events().iter().any(|e| matches!(e, Event::End { .. })));
}

#[test]
fn data_on_a_stream_never_opened_is_a_connection_error() {
    let mut r = RawServer::new(Config::default());
    assert_eq!(r.raw(0, 0, 1, b"x"), Err(Error::IdleStream));
    assert_eq!(r.goaway_code(), Some(Reason::PROTOCOL_ERROR));
    let mut r = RawServer::new(Config::default());
    assert_eq!(
        r.headers(3, &[(":status", "200")], true),
        Err(Error::IdleStream)
    );
}

#[test]
fn push_refused_when_disabled_and_enable_push_from_server() {
    let mut c = Config::default();
    c.enable_push = false;
    let mut r = RawServer::new(c);
    r.get();
    let mut block = BytesMut::new();
    r.enc.encode(
        [
            (&b":method"[..], &b"GET"[..], false),
            (b":scheme", b"http", false),
            (b":path", b"/p", false),
            (b":authority", b"x", false),
        ],
        &mut block,
    );
    let mut p = vec![0, 0, 0, 2];
    p.extend_from_slice(&block);
    assert_eq!(
        r.raw(5, flags::END_HEADERS, 1, &p),
        Err(Error::UnexpectedPush)
    );
    assert_eq!(r.goaway_code(), Some(Reason::PROTOCOL_ERROR));
    // A server may not set SETTINGS_ENABLE_PUSH = 1.
    let mut r = RawServer::new(Config::default());
    assert!(r.raw(4, 0, 0, &[0, 2, 0, 0, 0, 1]).is_err());
    assert_eq!(r.goaway_code(), Some(Reason::PROTOCOL_ERROR));
}

#[test]
fn push_promise_accepted_and_refusable() {
    let mut r = RawServer::new(Config::default());
    let id = r.get();
    let mut block = BytesMut::new();
    r.enc.encode(
        [
            (&b":method"[..], &b"GET"[..], false),
            (b":scheme", b"http", false),
            (b":path", b"/p", false),
            (b":authority", b"x", false),
        ],
        &mut block,
    );
    let mut p = vec![0, 0, 0, 2];
    p.extend_from_slice(&block);
    r.raw(5, flags::END_HEADERS, 1, &p).unwrap();
    let ev = r.events();
    assert!(
        matches!(&ev[0], Event::PushPromise { id: a, promised, request } if *a == id && promised.get() == 2 && request.path() == "/p")
    );
    r.client.reset(StreamId::new(2), Reason::CANCEL).unwrap();
    assert_eq!(r.rst_code(2), Some(Reason::CANCEL));
    // Late frames for the refused push are ignored.
    r.headers(2, &[(":status", "200")], false).unwrap();
    r.raw(0, flags::END_STREAM, 2, b"late").unwrap();
    assert!(r.client.error().is_none());
}

#[test]
fn goaway_refuses_streams_above_last_id() {
    let mut r = RawServer::new(Config::default());
    let a = r.get();
    let b = r.get();
    let mut g = BytesMut::new();
    frame::GoAway {
        last_stream_id: a,
        error: Reason::NO_ERROR,
        debug: Bytes::new(),
    }
    .emit(&mut g);
    r.send(|buf| buf.extend_from_slice(&g)).unwrap();
    let ev = r.events();
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Reset { id, reason: Reason::REFUSED_STREAM, .. } if *id == b)));
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::GoAway { last_stream_id, .. } if *last_stream_id == a)));
    assert!(!r.client.can_send_request());
    r.headers(1, &[(":status", "200")], true).unwrap();
    let _ = r.frames();
    assert!(r.client.is_closed(), "done once the last stream finished");
}

#[test]
fn server_window_and_max_frame_size_are_respected() {
    let mut r = RawServer::new(Config::default());
    r.raw(4, 0, 0, &[0, 4, 0, 0, 0, 10, 0, 5, 0, 0, 0x80, 0])
        .unwrap(); // window 10, frames 32 KiB
    let _ = r.frames();
    let id = r
        .client
        .send_request(
            &RequestHead::new("POST", "http", "x", "/"),
            Body::Full(Bytes::from(vec![1u8; 100])),
        )
        .unwrap();
    let sent: usize = r
        .frames()
        .iter()
        .map(|f| {
            if let Frame::Data(d) = f {
                d.data.len()
            } else {
                0
            }
        })
        .sum();
    assert_eq!(sent, 10);
    r.raw(8, 0, id.get(), &90u32.to_be_bytes()).unwrap();
    let data: Vec<Frame> = r
        .frames()
        .into_iter()
        .filter(|f| matches!(f, Frame::Data(_)))
        .collect();
    assert!(matches!(data.as_slice(), [Frame::Data(d)] if d.data.len() == 90 && d.end_stream));
}
