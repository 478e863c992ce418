//! `ClientConnection` driven by an arbitrary sequence of application and peer actions: requests
//! of every method and body kind (with `Connection: close`, `Upgrade`), streamed body data and
//! trailers, generated or raw response bytes arriving in arbitrary pieces, EOF, time passing,
//! graceful close.
//!
//! Invariants: no panic; events in order (per request `Informational`*, `Response`, `Data`*,
//! `Trailers`?, `End` or `Upgraded`; `Error` names the oldest waiting request; nothing after
//! `Error`/`Upgraded`); while only generated responses were sent, each response event carries
//! the tag of the request it answers and its body only that tag's bytes; errors are sticky; at
//! most `max_head_bytes` left in the input while reading; at most `max_pipelined` in flight;
//! early or repeated `handle_timeout` does nothing; nothing is sent after `is_closed()`; and
//! the transmitted bytes parse (httparse) as the requests in order, correctly framed.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use ferry_fuzz::{body_byte, check_client_output, small_client_config};
use ferry_fuzz::{BodyChoice, ClientEventChecker, RespSpec, Sent, TAG};
use ferry_http1::client::Event;
use ferry_http1::{Body, ClientConnection, Error, Method, SendError};
use ferry_proto::{Connection, Instant};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum M {
    Get,
    Head,
    Post,
    Put,
    Connect,
    Options,
}

#[derive(Arbitrary, Debug)]
enum ReqBody {
    Empty,
    Full(u8),
    Length(u8),
    Chunked,
}

#[derive(Arbitrary, Debug)]
enum Action {
    /// The application sends a request.
    Send {
        method: M,
        body: ReqBody,
        close: bool,
        upgrade: bool,
    },
    /// The application streams body bytes of the request being sent.
    SendData { len: u8, end: bool, exact: bool },
    /// The application ends a chunked request body with trailers.
    Trailers,
    /// The server queues a generated response for the next request in order.
    Respond(RespSpec),
    /// The server queues raw bytes.
    PushRaw(Vec<u8>),
    /// The driver reads up to `n` queued bytes (0: all) if the connection wants to read.
    Deliver(u16),
    /// The server closes its side.
    Eof,
    /// Time passes (units of 10 ms), then `handle_timeout`.
    Advance(u16),
    /// Graceful close by the application.
    Close,
}

struct Harness {
    conn: ClientConnection,
    now: Instant,
    wire: Vec<u8>,
    input: BytesMut,
    eof: bool,
    error: Option<Error>,
    checker: ClientEventChecker,
    sent: Vec<Sent>,
    ids: Vec<ferry_http1::RequestId>,
    /// The body being streamed: (id, bytes still owed for a Content-Length body).
    sending: Option<(u64, Option<u64>)>,
    /// The request the next generated final response answers.
    next_resp: u64,
    output: Vec<u8>,
    closed: bool,
}

impl Harness {
    fn drain(&mut self) -> bool {
        let mut any = false;
        while let Some(ev) = self.conn.poll_event() {
            any = true;
            assert!(!self.closed, "event after is_closed: {ev:?}");
            self.checker.check(&ev);
            if let Event::Error { .. } = ev {
                self.sending = None;
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

    fn settle(&mut self) {
        self.drain();
        if self.conn.wants_read() && self.error.is_none() {
            let max = self.conn.config().max_head_bytes;
            assert!(
                self.input.len() <= max,
                "{} bytes left in the input while reading",
                self.input.len()
            );
        }
        let cap = self.conn.config().max_pipelined;
        assert!(
            self.conn.in_flight() <= cap,
            "{} requests in flight",
            self.conn.in_flight()
        );
    }

    fn step(&mut self, a: Action) {
        match a {
            Action::Send {
                method,
                body,
                close,
                upgrade,
            } => {
                let id = self.sent.len() as u64;
                let tag = id.to_string();
                let (method, target) = match method {
                    M::Get => (Method::Get, "/"),
                    M::Head => (Method::Head, "/h"),
                    M::Post => (Method::Post, "/p"),
                    M::Put => (Method::Put, "/u"),
                    M::Connect => (Method::Connect, "example.com:443"),
                    M::Options => (Method::Options, "*"),
                };
                let mut fields: Vec<(&str, &[u8])> =
                    vec![("Host", b"example.com"), (TAG, tag.as_bytes())];
                if close {
                    fields.push(("Connection", b"close"));
                } else if upgrade {
                    fields.push(("Connection", b"upgrade"));
                }
                if upgrade {
                    fields.push(("Upgrade", b"websocket"));
                }
                let b = body_byte(id);
                let (body, streaming) = match body {
                    ReqBody::Empty => (Body::Empty, None),
                    ReqBody::Full(n) => (Body::Full(Bytes::from(vec![b; n as usize])), None),
                    ReqBody::Length(n) => {
                        (Body::Length(n as u64), (n > 0).then_some(Some(n as u64)))
                    }
                    ReqBody::Chunked => (Body::Chunked, Some(None)),
                };
                if let Ok(rid) = self
                    .conn
                    .send_request(self.now, method, target, &fields, body)
                {
                    assert_eq!(rid.get(), id, "request ids must count from 0");
                    let s = Sent {
                        id,
                        head: method == Method::Head,
                        connect: method == Method::Connect,
                        upgrade,
                    };
                    self.sent.push(s);
                    self.ids.push(rid);
                    self.checker.sent(s);
                    self.sending = streaming.map(|r| (id, r));
                }
            }
            Action::SendData { len, end, exact } => {
                let Some((id, remaining)) = self.sending else {
                    return;
                };
                let (len, end) = match remaining {
                    Some(r) if exact => {
                        let n = (len as u64).min(r);
                        (n as usize, n == r)
                    }
                    _ => (len as usize, end),
                };
                let rid = self.conn_id(id);
                match self
                    .conn
                    .send_data(self.now, rid, Bytes::from(vec![body_byte(id); len]), end)
                {
                    Ok(()) => {
                        self.sending = match remaining {
                            Some(r) if r == len as u64 => None,
                            Some(r) => Some((id, Some(r - len as u64))),
                            None if end => None,
                            None => Some((id, None)),
                        };
                    }
                    Err(SendError::LengthMismatch) => assert!(!exact || remaining.is_none()),
                    Err(_) => self.sending = None,
                }
            }
            Action::Trailers => {
                let Some((id, None)) = self.sending else {
                    return;
                };
                let rid = self.conn_id(id);
                match self
                    .conn
                    .send_trailers(self.now, rid, &[("x-trailer", b"1")])
                {
                    Ok(()) => self.sending = None,
                    Err(_) => self.sending = None,
                }
            }
            Action::Respond(spec) => {
                let tag = self.next_resp;
                let code = spec.status.code();
                let req = self.sent.get(tag as usize).copied();
                let interim = (100..200).contains(&code) && code != 101;
                let no_body = interim || code == 204 || code == 304 || req.is_some_and(|r| r.head);
                spec.write(tag, !no_body, &mut self.wire);
                if !interim {
                    self.next_resp += 1;
                }
                // Tags stay meaningful only while every response is framed exactly as the
                // client will read it.
                let close_delimited = matches!(spec.body, BodyChoice::None) && !no_body;
                let wrong = matches!(spec.body, BodyChoice::WrongLength { declared, sent } if declared != sent);
                if req.is_none()
                    || spec.raw_field.is_some()
                    || close_delimited
                    || wrong
                    || code < 100
                {
                    self.checker.tags = false;
                }
            }
            Action::PushRaw(raw) => {
                self.wire.extend_from_slice(&raw);
                self.checker.tags = false;
            }
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
            Action::Close => self.conn.close(),
        }
    }

    /// The `RequestId` the connection gave request `id` (ids count from 0, checked in `Send`).
    fn conn_id(&self, id: u64) -> ferry_http1::RequestId {
        *self.ids.get(id as usize).expect("id of a sent request")
    }
}

fuzz_target!(|actions: Vec<Action>| {
    let now = Instant::from_nanos(1_000_000_000);
    let mut h = Harness {
        conn: ClientConnection::new(small_client_config(), now),
        now,
        wire: Vec::new(),
        input: BytesMut::new(),
        eof: false,
        error: None,
        checker: ClientEventChecker::with_tags(),
        sent: Vec::new(),
        ids: Vec::new(),
        sending: None,
        next_resp: 0,
        output: Vec::new(),
        closed: false,
    };
    for a in actions.into_iter().take(256) {
        h.step(a);
        h.settle();
    }
    check_client_output(&h.output);
});
