//! `ferry_resp::ClientConnection` driven by arbitrary action sequences: commands, HELLO,
//! transactions, (un)subscriptions and QUIT sent by the application, server bytes arriving in
//! pieces, EOF, time passing, close.
//!
//! Input: two bytes giving the length of a script, the script (actions decoded with
//! `arbitrary`), then the server's byte stream: `Feed(n)` hands over its next bytes and the
//! rest is fed at the end, so a seed that is a run of RESP replies gets straight to reply
//! matching.
//!
//! Invariants: no panic; `Reply` ids strictly increase and name commands that were sent;
//! nothing but `Error` is reported after an error, which every later `handle_input` returns
//! again (and `error()` reports); the bytes sent parse as RESP arrays of bulk strings, one per
//! command; `in_flight` never exceeds `max_pipelined`; an early `handle_timeout` does nothing.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use ferry_proto::{Connection, Instant};
use ferry_resp::client::Event;
use ferry_resp::parse::Limits;
use ferry_resp::{parse, ClientConfig, ClientConnection, Error, Protocol, Value};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Action {
    Feed(u8),
    Send { name: u8, args: Vec<Vec<u8>> },
    Hello(Option<bool>),
    Transaction(u8),
    Eof,
    Wait(u16),
    Close,
}

const NAMES: &[&str] = &[
    "GET",
    "SET",
    "PING",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SSUBSCRIBE",
    "SUNSUBSCRIBE",
    "RESET",
    "QUIT",
    "MULTI",
    "EXEC",
    "HELLO",
    "CLIENT",
];

fn config() -> Arc<ClientConfig> {
    let mut c = ClientConfig::default();
    let mut l = Limits::default();
    l.max_bulk_len = 4096;
    l.max_aggregate_len = 64;
    l.max_depth = 8;
    l.max_line = 256;
    c.limits = l;
    c.max_pipelined = 8;
    c.response_timeout = Some(Duration::from_secs(2));
    Arc::new(c)
}

struct Harness {
    conn: ClientConnection,
    input: BytesMut,
    now: Instant,
    sent: u64,
    last_reply: Option<u64>,
    error: Option<Error>,
    output: Vec<u8>,
    max_pipelined: usize,
    /// The `Error` event was seen.
    failed: bool,
}

impl Harness {
    fn pump(&mut self) {
        for _ in 0..64 {
            let before = self.input.len();
            match self.conn.handle_input(self.now, &mut self.input) {
                Ok(()) => assert_eq!(self.error, None, "Ok after an error"),
                Err(e) => {
                    assert!(
                        self.error.is_none_or(|p| p == e),
                        "error changed from {:?} to {e:?}",
                        self.error
                    );
                    self.error = Some(e);
                }
            }
            if let Some(e) = self.error {
                assert_eq!(self.conn.error(), Some(e));
            }
            if !self.drain() && self.input.len() == before {
                break;
            }
        }
    }

    fn drain(&mut self) -> bool {
        let mut progress = false;
        while let Some(ev) = self.conn.poll_event() {
            progress = true;
            match ev {
                Event::Reply { id, .. } => {
                    assert!(!self.failed, "reply after the error event");
                    let id = id.get();
                    assert!(
                        self.last_reply.is_none_or(|l| id > l),
                        "reply {id} after {:?}",
                        self.last_reply
                    );
                    assert!(id < self.sent, "reply {id}, only {} sent", self.sent);
                    self.last_reply = Some(id);
                }
                Event::Push(_) => assert!(!self.failed, "push after the error event"),
                Event::Error(e) => {
                    assert_eq!(self.conn.error(), Some(e));
                    assert!(!self.failed, "two error events");
                    self.failed = true;
                }
                _ => {}
            }
        }
        while let Some(b) = self.conn.poll_transmit() {
            progress = true;
            self.output.extend_from_slice(&b);
        }
        assert!(
            self.conn.in_flight() <= self.max_pipelined,
            "{} in flight",
            self.conn.in_flight()
        );
        progress
    }

    fn sent(&mut self, r: Result<ferry_resp::RequestId, ferry_resp::SendError>) {
        if let Ok(id) = r {
            assert!(id.get() >= self.sent, "request id {} reused", id.get());
            self.sent = id.get() + 1;
        }
        self.pump();
    }
}

fn check_output(out: &[u8]) {
    let mut buf = Bytes::copy_from_slice(out);
    while !buf.is_empty() {
        let (v, n) = match parse(&buf) {
            Ok(Some(x)) => x,
            other => panic!(
                "output does not parse ({other:?}) at {:?}",
                &buf[..buf.len().min(80)]
            ),
        };
        match &v {
            Value::Array(a) if !a.is_empty() => {
                assert!(
                    a.iter().all(|x| matches!(x, Value::BulkString(_))),
                    "not a command: {v:?}"
                )
            }
            _ => panic!("not a command: {v:?}"),
        }
        let _ = buf.split_to(n);
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = u16::from_le_bytes([data[0], data[1]]) as usize % (data.len() - 1);
    let (script, mut payload) = data[2..].split_at(n);
    let mut u = Unstructured::new(script);
    let config = config();
    let now = Instant::from_nanos(1_000_000_000);
    let mut h = Harness {
        conn: ClientConnection::new(config.clone(), now),
        input: BytesMut::new(),
        now,
        sent: 0,
        last_reply: None,
        error: None,
        output: Vec::new(),
        max_pipelined: config.max_pipelined,
        failed: false,
    };
    let mut script_empty = true;
    for _ in 0..64 {
        let Ok(a) = Action::arbitrary(&mut u) else {
            break;
        };
        script_empty = false;
        match a {
            Action::Feed(k) => {
                let (now_, rest) = payload.split_at((k as usize + 1).min(payload.len()));
                payload = rest;
                h.input.extend_from_slice(now_);
                h.pump();
            }
            Action::Send { name, args } => {
                let mut all = vec![NAMES[name as usize % NAMES.len()].as_bytes().to_vec()];
                all.extend(args.into_iter().take(4));
                let r = h.conn.send_command(h.now, &all);
                h.sent(r);
            }
            Action::Hello(p) => {
                let p = p.map(|three| {
                    if three {
                        Protocol::Resp3
                    } else {
                        Protocol::Resp2
                    }
                });
                let r = h.conn.hello(h.now, p, None, Some(b"fuzz"));
                h.sent(r);
            }
            Action::Transaction(k) => {
                let cmds: Vec<&[&str]> = (0..k % 3).map(|_| &["INCR", "a"][..]).collect();
                let r = h.conn.send_transaction(h.now, &cmds);
                h.sent(r);
            }
            Action::Eof => {
                h.conn.handle_eof(h.now);
                h.pump();
            }
            Action::Wait(ms) => {
                let deadline = h.conn.poll_timeout();
                let later = h.now + Duration::from_millis(ms as u64 * 4);
                if let Some(d) = deadline {
                    if later < d {
                        // Early: nothing may change.
                        h.conn.handle_timeout(later);
                        assert!(h.conn.poll_event().is_none(), "event from an early timeout");
                    }
                }
                h.now = later;
                h.conn.handle_timeout(h.now);
                h.pump();
            }
            Action::Close => {
                h.conn.close();
                h.pump();
            }
        }
    }
    if script_empty {
        // A bare reply stream: send enough GETs (and one HELLO 3) for it to answer.
        let r = h.conn.hello(h.now, Some(Protocol::Resp3), None, None);
        h.sent(r);
        for _ in 0..7 {
            let r = h.conn.send_command(h.now, &["GET", "k"]);
            h.sent(r);
        }
    }
    h.input.extend_from_slice(payload);
    h.pump();
    h.conn.handle_eof(h.now);
    h.pump();
    check_output(&h.output);
});
