//! Raw-frame driver for `ServerConnection`: plays a client by hand-built frames and decodes
//! the server's answer frame by frame.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_http2::frame::{self, flags, Frame, FrameHeader, Kind, Settings, Status, StreamId};
use ferry_http2::hpack::{Decoder, Encoder};
use ferry_http2::{Body, Config, Error, Event, Reason, ServerConnection, PREFACE};
use ferry_proto::{Connection, Instant};

pub struct Raw {
    pub server: ServerConnection,
    pub enc: Encoder,
    pub dec: Decoder,
    pub now: Instant,
    pub input: BytesMut,
    out: BytesMut,
    pub events: Vec<Event>,
    pub last_error: Option<Error>,
    pub auto_respond: bool,
}

pub fn sid(n: u32) -> StreamId {
    StreamId::new(n)
}

impl Raw {
    /// A server, before any client byte.
    pub fn fresh(config: Config) -> Raw {
        let now = Instant::ZERO;
        Raw {
            server: ServerConnection::new(Arc::new(config), now),
            enc: Encoder::default(),
            dec: Decoder::new(4096),
            now,
            input: BytesMut::new(),
            out: BytesMut::new(),
            events: Vec::new(),
            last_error: None,
            auto_respond: true,
        }
    }

    /// Preface + empty SETTINGS + ACK of the server's SETTINGS; server output drained.
    pub fn new(config: Config) -> Raw {
        let mut r = Raw::fresh(config);
        r.handshake();
        r
    }

    pub fn default() -> Raw {
        Raw::new(Config::default())
    }

    pub fn handshake(&mut self) {
        self.send_bytes(PREFACE).unwrap();
        self.send_frame(|b| Settings::default().emit(b)).unwrap();
        let f = self.frames();
        assert!(
            matches!(f.first(), Some(Frame::Settings(s)) if !s.ack),
            "server preface must be SETTINGS: {f:?}"
        );
        self.send_frame(|b| Settings::ACK.emit(b)).unwrap();
        let _ = self.frames();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
    }

    pub fn send_bytes(&mut self, b: &[u8]) -> Result<(), Error> {
        self.input.extend_from_slice(b);
        let r = self.server.handle_input(self.now, &mut self.input);
        if let Err(e) = r {
            self.last_error = Some(e);
        }
        self.pump();
        r
    }

    pub fn send_frame(&mut self, f: impl FnOnce(&mut BytesMut)) -> Result<(), Error> {
        let mut b = BytesMut::new();
        f(&mut b);
        self.send_bytes(&b)
    }

    /// Send a raw frame from its parts.
    pub fn raw(&mut self, kind: u8, fl: u8, stream: u32, payload: &[u8]) -> Result<(), Error> {
        let mut b = BytesMut::new();
        FrameHeader::new(
            Kind::from_u8(kind),
            fl,
            StreamId::new(stream),
            payload.len() as u32,
        )
        .emit(&mut b);
        b.extend_from_slice(payload);
        self.send_bytes(&b)
    }

    /// The application: answer every complete request with 200 "ok" (echo length in a header).
    fn pump(&mut self) {
        while let Some(ev) = self.server.poll_event() {
            if self.auto_respond {
                if let Event::End { id } = &ev {
                    let _ = self.server.send_response(
                        *id,
                        200,
                        &[("content-type", b"text/plain")],
                        Body::Full(Bytes::from_static(b"hello world\n")),
                    );
                }
            }
            self.events.push(ev);
        }
    }

    pub fn block(&mut self, fields: &[(&str, &str)]) -> Bytes {
        let mut b = BytesMut::new();
        self.enc.encode(
            fields
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes(), false)),
            &mut b,
        );
        b.freeze()
    }

    pub fn get_fields() -> Vec<(&'static str, &'static str)> {
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "localhost"),
        ]
    }

    pub fn post_fields() -> Vec<(&'static str, &'static str)> {
        vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "localhost"),
        ]
    }

    /// HEADERS with the given fields and flags (END_HEADERS added unless `fl` has it cleared
    /// by `no_end_headers`).
    pub fn headers(
        &mut self,
        stream: u32,
        fields: &[(&str, &str)],
        end_stream: bool,
    ) -> Result<(), Error> {
        let block = self.block(fields);
        let fl = flags::END_HEADERS | if end_stream { flags::END_STREAM } else { 0 };
        self.raw(1, fl, stream, &block)
    }

    pub fn get(&mut self, stream: u32) -> Result<(), Error> {
        self.headers(stream, &Raw::get_fields(), true)
    }

    pub fn post(&mut self, stream: u32) -> Result<(), Error> {
        self.headers(stream, &Raw::post_fields(), false)
    }

    pub fn data(&mut self, stream: u32, data: &[u8], end_stream: bool) -> Result<(), Error> {
        self.raw(
            0,
            if end_stream { flags::END_STREAM } else { 0 },
            stream,
            data,
        )
    }

    pub fn rst(&mut self, stream: u32, code: u32) -> Result<(), Error> {
        self.raw(3, 0, stream, &code.to_be_bytes())
    }

    pub fn window_update(&mut self, stream: u32, inc: u32) -> Result<(), Error> {
        self.raw(8, 0, stream, &inc.to_be_bytes())
    }

    pub fn settings(&mut self, params: &[(u16, u32)]) -> Result<(), Error> {
        let mut p = Vec::new();
        for (id, v) in params {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        self.raw(4, 0, 0, &p)
    }

    pub fn ping(&mut self, payload: [u8; 8]) -> Result<(), Error> {
        self.raw(6, 0, 0, &payload)
    }

    /// Every complete frame the server wrote since the last call.
    pub fn frames(&mut self) -> Vec<Frame> {
        while let Some(b) = self.server.poll_transmit() {
            self.out.extend_from_slice(&b);
        }
        let mut v = Vec::new();
        loop {
            match frame::decode(&mut self.out, frame::MAX_MAX_FRAME_SIZE) {
                Ok(Status::Complete((h, p))) => match Frame::parse(&h, p) {
                    Ok(f) => v.push(f),
                    Err(e) => panic!("server sent an invalid frame {h:?}: {e}"),
                },
                Ok(Status::Partial) => break,
                Err(e) => panic!("server output: {e}"),
            }
        }
        v
    }

    /// Frames, with HEADERS blocks decoded (to keep our HPACK decoder in sync).
    pub fn answers(&mut self) -> Vec<Answer> {
        let frames = self.frames();
        let mut out = Vec::new();
        for f in frames {
            match f {
                Frame::Headers(h) => {
                    let mut fields = Vec::new();
                    self.dec
                        .decode(&h.block, usize::MAX, |f| {
                            fields.push((
                                String::from_utf8_lossy(&f.name).into_owned(),
                                String::from_utf8_lossy(&f.value).into_owned(),
                            ))
                        })
                        .expect("server HPACK");
                    out.push(Answer::Headers {
                        stream: h.stream_id.get(),
                        fields,
                        end_stream: h.end_stream,
                    });
                }
                Frame::Data(d) => out.push(Answer::Data {
                    stream: d.stream_id.get(),
                    len: d.data.len(),
                    end_stream: d.end_stream,
                }),
                Frame::RstStream(r) => out.push(Answer::Rst {
                    stream: r.stream_id.get(),
                    reason: r.error,
                }),
                Frame::GoAway(g) => out.push(Answer::GoAway {
                    last: g.last_stream_id.get(),
                    reason: g.error,
                }),
                Frame::Settings(s) => out.push(Answer::Settings { ack: s.ack }),
                Frame::Ping(p) => out.push(Answer::Ping {
                    ack: p.ack,
                    payload: p.payload,
                }),
                Frame::WindowUpdate(w) => out.push(Answer::WindowUpdate {
                    stream: w.stream_id.get(),
                    inc: w.increment,
                }),
                Frame::PushPromise(p) => {
                    let mut n = 0;
                    self.dec
                        .decode(&p.block, usize::MAX, |_| n += 1)
                        .expect("server HPACK");
                    out.push(Answer::PushPromise {
                        stream: p.stream_id.get(),
                        promised: p.promised_id.get(),
                    })
                }
                other => out.push(Answer::Other(format!("{other:?}"))),
            }
        }
        out
    }

    /// The GOAWAY code the server sent, if any.
    pub fn goaway(&mut self) -> Option<Reason> {
        self.answers().into_iter().find_map(|a| match a {
            Answer::GoAway { reason, .. } => Some(reason),
            _ => None,
        })
    }

    /// Assert a connection error with `reason`: GOAWAY sent, stored error, closed.
    pub fn expect_connection_error(&mut self, reason: Reason) {
        let got = self.goaway();
        assert_eq!(
            got,
            Some(reason),
            "expected GOAWAY {reason:?}; events {:?}",
            self.events
        );
        assert_eq!(self.server.error().map(|e| e.reason()), Some(reason));
        assert!(self.server.is_closed());
    }

    /// Assert a stream error on `stream` with `reason` (RST_STREAM), or accept a connection
    /// error with the same code (h2spec accepts either).
    pub fn expect_stream_error(&mut self, stream: u32, reason: Reason) {
        let answers = self.answers();
        let ok = answers.iter().any(|a| match a {
            Answer::Rst {
                stream: s,
                reason: r,
            } => *s == stream && *r == reason,
            Answer::GoAway { reason: r, .. } => *r == reason,
            _ => false,
        });
        assert!(
            ok,
            "expected RST_STREAM({stream}, {reason:?}) or GOAWAY({reason:?}), got {answers:?}"
        );
    }

    /// Assert that `stream` got a 200 response and the connection is healthy.
    pub fn expect_response(&mut self, stream: u32) {
        let answers = self.answers();
        let ok = answers.iter().any(|a| matches!(a, Answer::Headers { stream: s, fields, .. } if *s == stream && fields.iter().any(|(n, v)| n == ":status" && v == "200")));
        assert!(ok, "expected a 200 on stream {stream}, got {answers:?}");
        assert!(self.server.error().is_none());
    }

    /// Assert a PING round-trips (the connection is alive and in sync).
    pub fn expect_alive(&mut self) {
        self.ping(*b"alive?!!").unwrap();
        let answers = self.answers();
        assert!(
            answers.iter().any(
                |a| matches!(a, Answer::Ping { ack: true, payload } if payload == b"alive?!!")
            ),
            "{answers:?}"
        );
        assert!(self.server.error().is_none());
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Headers {
        stream: u32,
        fields: Vec<(String, String)>,
        end_stream: bool,
    },
    Data {
        stream: u32,
        len: usize,
        end_stream: bool,
    },
    Rst {
        stream: u32,
        reason: Reason,
    },
    GoAway {
        last: u32,
        reason: Reason,
    },
    Settings {
        ack: bool,
    },
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    WindowUpdate {
        stream: u32,
        inc: u32,
    },
    PushPromise {
        stream: u32,
        promised: u32,
    },
    Other(String),
}
