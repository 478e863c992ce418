//! `ServerConnection` driven by an arbitrary sequence of peer and application actions: bytes
//! arriving in arbitrary pieces (generated requests or raw bytes), EOF, time passing,
//! responses to the oldest / newest / any outstanding request with arbitrary status and body
//! kind, streamed body data, trailers, graceful close.
//!
//! Invariants: no panic; events in order; an error is returned again by every later
//! `handle_input`; at most `max_head_bytes` left in the input while the connection reads;
//! at most `max_pipelined` (+1 error answer) requests in flight; `handle_timeout` before the
//! deadline, or twice, does nothing; nothing is sent after `is_closed()`; and the transmitted
//! bytes parse (httparse) as responses in request order, each body holding only its request's
//! tag byte, nothing after `connection: close`.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use ferry_fuzz::{body_byte, check_server_output, max_buffered_input, small_server_config};
use ferry_fuzz::{ReqSpec, ServerEventChecker, TAG};
use ferry_http1::server::Event;
use ferry_http1::{Body, Error, RequestId, SendError, ServerConnection};
use ferry_proto::{Connection, Instant};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

#[derive(Arbitrary, Debug)]
enum Pick {
    Oldest,
    Newest,
    Any(u8),
}

#[derive(Arbitrary, Debug)]
enum Status {
    Ok,
    NoContent,
    NotModified,
    NotFound,
    Continue,
    EarlyHints,
    Switching,
    Other(u16),
}

#[derive(Arbitrary, Debug)]
enum RespBody {
    Empty,
    Full(u8),
    Length(u8),
    Chunked,
}

#[derive(Arbitrary, Debug)]
enum Action {
    /// Queue a generated request on the wire.
    Push(ReqSpec),
    /// Queue raw bytes on the wire.
    PushRaw(Vec<u8>),
    /// The driver reads up to `n` queued bytes (0: all) if the connection wants to read.
    Deliver(u16),
    /// The peer closes its sending side.
    Eof,
    /// Time passes (in units of 10 ms), then the driver calls `handle_timeout`.
    Advance(u16),
    /// The application answers an outstanding request.
    Respond {
        pick: Pick,
        status: Status,
        body: RespBody,
        close: bool,
    },
    /// The application sends body bytes; `exact` keeps within a declared length.
    SendData {
        pick: Pick,
        len: u8,
        end: bool,
        exact: bool,
    },
    /// The application ends a chunked body with trailers.
    Trailers { pick: Pick },
    /// Graceful close by the application.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Model {
    Waiting,
    /// Final head sent; `Some(n)`: n bytes of a Content-Length body still owed.
    Streaming(Option<u64>),
    Done,
}

struct Harness {
    conn: ServerConnection,
    now: Instant,
    wire: Vec<u8>,
    input: BytesMut,
    eof: bool,
    error: Option<Error>,
    checker: ServerEventChecker,
    ids: Vec<RequestId>,
    model: Vec<Model>,
    output: Vec<u8>,
    closed: bool,
}

impl Harness {
    fn pick(&self, pick: &Pick, want: impl Fn(Model) -> bool) -> Option<usize> {
        let open: Vec<usize> = (0..self.model.len())
            .filter(|&i| want(self.model[i]))
            .collect();
        match pick {
            Pick::Oldest => open.first().copied(),
            Pick::Newest => open.last().copied(),
            Pick::Any(n) if !open.is_empty() => Some(open[*n as usize % open.len()]),
            Pick::Any(_) => None,
        }
    }

    /// Drain events and transmits; true if anything came out.
    fn drain(&mut self) -> bool {
        let mut any = false;
        while let Some(ev) = self.conn.poll_event() {
            any = true;
            assert!(!self.closed, "event after is_closed: {ev:?}");
            self.checker.check(&ev);
            if let Event::Request(r) = &ev {
                self.ids.push(r.id());
                self.model.push(Model::Waiting);
            }
        }
        while let Some(b) = self.conn.poll_transmit() {
            any = true;
            assert!(!self.closed, "transmit after is_closed");
            self.output.extend_from_slice(&b);
        }
        if self.conn.is_closed() {
            self.closed = true;
        }
        any
    }

    fn feed(&mut self) {
        let before = self.input.len();
        match self.conn.handle_input(self.now, &mut self.input) {
            Ok(()) => assert_eq!(self.error, None, "Ok after an error"),
            Err(e) => {
                assert!(
                    self.error.is_none_or(|p| p == e),
                    "error changed from {:?} to {e:?}",
                    self.error
                );
                assert_eq!(self.conn.error(), Some(e));
                self.error = Some(e);
            }
        }
        assert!(self.input.len() <= before, "handle_input grew the input");
    }

    /// After any step: the driver feeds what is buffered while the connection wants it (a
    /// released backpressure), drains, and checks the bounds.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let progressed = self.drain();
            if !(self.conn.wants_read() && !self.input.is_empty() && self.error.is_none()) {
                if !progressed {
                    break;
                }
                continue;
            }
            let before = self.input.len();
            self.feed();
            if self.input.len() == before && !self.drain() {
                break;
            }
        }
        if self.conn.wants_read() && self.error.is_none() {
            let max = max_buffered_input(self.conn.config());
            assert!(
                self.input.len() <= max,
                "{} bytes left in the input while reading",
                self.input.len()
            );
        }
        let cap = self.conn.config().max_pipelined + 1;
        assert!(
            self.conn.in_flight() <= cap,
            "{} requests in flight",
            self.conn.in_flight()
        );
    }

    fn step(&mut self, a: Action) {
        match a {
            Action::Push(spec) => spec.write(&mut self.wire),
            Action::PushRaw(raw) => self.wire.extend_from_slice(&raw),
            Action::Deliver(n) => {
                if self.eof || !self.conn.wants_read() || self.wire.is_empty() {
                    return;
                }
                let n = if n == 0 {
                    self.wire.len()
                } else {
                    (n as usize).min(self.wire.len())
                };
                self.input.extend_from_slice(&self.wire[..n]);
                self.wire.drain(..n);
                self.feed();
            }
            Action::Eof => {
                if !self.eof {
                    self.eof = true;
                    self.conn.handle_eof(self.now);
                }
            }
            Action::Advance(t) => {
                self.now += Duration::from_millis(10 * t as u64);
                let deadline = self.conn.poll_timeout();
                let early = deadline.is_none_or(|d| self.now < d);
                self.conn.handle_timeout(self.now);
                if early {
                    assert!(
                        self.conn.poll_event().is_none(),
                        "early handle_timeout made an event"
                    );
                    assert!(
                        self.conn.poll_transmit().is_none(),
                        "early handle_timeout made output"
                    );
                } else {
                    self.drain();
                    self.conn.handle_timeout(self.now);
                    assert!(
                        self.conn.poll_event().is_none(),
                        "repeated handle_timeout made an event"
                    );
                    assert!(
                        self.conn.poll_transmit().is_none(),
                        "repeated handle_timeout made output"
                    );
                }
            }
            Action::Respond {
                pick,
                status,
                body,
                close,
            } => {
                let Some(i) = self.pick(&pick, |m| m == Model::Waiting) else {
                    return;
                };
                let status = match status {
                    Status::Ok => 200,
                    Status::NoContent => 204,
                    Status::NotModified => 304,
                    Status::NotFound => 404,
                    Status::Continue => 100,
                    Status::EarlyHints => 103,
                    Status::Switching => 101,
                    Status::Other(s) => s % 1100,
                };
                let tag = i.to_string();
                let mut fields: Vec<(&str, &[u8])> = vec![(TAG, tag.as_bytes())];
                if close {
                    fields.push(("connection", b"close"));
                }
                let b = body_byte(i as u64);
                let (body, next) = match body {
                    RespBody::Empty => (Body::Empty, Model::Done),
                    RespBody::Full(n) => {
                        (Body::Full(Bytes::from(vec![b; n as usize])), Model::Done)
                    }
                    RespBody::Length(n) => (
                        Body::Length(n as u64),
                        if n == 0 {
                            Model::Done
                        } else {
                            Model::Streaming(Some(n as u64))
                        },
                    ),
                    RespBody::Chunked => (Body::Chunked, Model::Streaming(None)),
                };
                match self.conn.send_response(self.ids[i], status, &fields, body) {
                    Ok(()) => {
                        let facts = self.checker.requests[i];
                        let switching = (status == 101 && facts.upgrade)
                            || (facts.connect && (200..300).contains(&status));
                        self.model[i] = if switching {
                            Model::Done
                        } else if (100..200).contains(&status) {
                            Model::Waiting
                        } else {
                            next
                        };
                    }
                    Err(SendError::UnknownId | SendError::Closed) => self.model[i] = Model::Done,
                    Err(_) => {}
                }
            }
            Action::SendData {
                pick,
                len,
                end,
                exact,
            } => {
                let Some(i) = self.pick(&pick, |m| matches!(m, Model::Streaming(_))) else {
                    return;
                };
                let Model::Streaming(remaining) = self.model[i] else {
                    unreachable!()
                };
                let (len, end) = match remaining {
                    Some(r) if exact => {
                        let n = (len as u64).min(r);
                        (n as usize, n == r)
                    }
                    _ => (len as usize, end),
                };
                let data = Bytes::from(vec![body_byte(i as u64); len]);
                match self.conn.send_data(self.ids[i], data, end) {
                    Ok(()) => {
                        self.model[i] = match remaining {
                            Some(r) if r == len as u64 => Model::Done,
                            Some(r) => Model::Streaming(Some(r - len as u64)),
                            None if end => Model::Done,
                            None => Model::Streaming(None),
                        };
                    }
                    Err(SendError::LengthMismatch) => assert!(!exact || remaining.is_none()),
                    Err(_) => self.model[i] = Model::Done,
                }
            }
            Action::Trailers { pick } => {
                let Some(i) = self.pick(&pick, |m| m == Model::Streaming(None)) else {
                    return;
                };
                match self.conn.send_trailers(self.ids[i], &[("x-trailer", b"1")]) {
                    Ok(()) => self.model[i] = Model::Done,
                    Err(SendError::TrailersNotAllowed) => {}
                    Err(_) => self.model[i] = Model::Done,
                }
            }
            Action::Close => self.conn.close(),
        }
    }
}

fuzz_target!(|actions: Vec<Action>| {
    let now = Instant::from_nanos(1_000_000_000);
    let mut h = Harness {
        conn: ServerConnection::new(small_server_config(), now),
        now,
        wire: Vec::new(),
        input: BytesMut::new(),
        eof: false,
        error: None,
        checker: ServerEventChecker::default(),
        ids: Vec::new(),
        model: Vec::new(),
        output: Vec::new(),
        closed: false,
    };
    for a in actions.into_iter().take(256) {
        h.step(a);
        h.settle();
    }
    check_server_output(&h.output, &h.checker.requests);
});
