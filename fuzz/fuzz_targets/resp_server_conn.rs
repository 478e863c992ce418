//! `ferry_resp::ServerConnection` driven by arbitrary action sequences: peer bytes (raw or
//! generated commands, multibulk or inline), EOF, time passing, and the application answering
//! outstanding commands in any order (or closing, or pushing pub/sub messages).
//!
//! Input: two bytes giving the length of a script, the script (actions decoded with
//! `arbitrary`), then the peer's byte stream: `Feed(n)` actions hand over its next bytes, and
//! whatever is left is fed at the end, so a seed that is just a RESP pipeline (empty script)
//! gets straight to command handling.
//!
//! Invariants: no panic; `Command` ids strictly increase; the application's replies (tagged
//! with their command id) leave in command order; every byte sent parses as complete RESP
//! values; while the connection wants to read it leaves at most one partial argument in the
//! input (`proto_max_bulk_len + max_inline_size`); an error is returned again by every later
//! `handle_input` and reported by `error()`; once the peer is gone and every command is
//! answered, the connection ends closed.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use ferry_proto::{Connection, Instant};
use ferry_resp::server::Event;
use ferry_resp::{encode_command, parse, CommandId, Error, ServerConfig, ServerConnection, Value};
use libfuzzer_sys::fuzz_target;

/// Replies carry `TAG + id` (integers) or start with `tag:<id>:` (strings, errors).
const TAG: i64 = 1_000_000_000;

#[derive(Arbitrary, Debug)]
enum Action {
    Feed(u8),
    Command {
        name: Name,
        args: Vec<Vec<u8>>,
        inline: bool,
        split: u8,
    },
    Eof,
    Wait(u16),
    Reply {
        pick: u8,
        kind: ReplyKind,
    },
    Close,
    Message(bool),
    Push,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Name {
    Get,
    Set,
    Ping,
    Hello,
    Hello2,
    Hello3,
    Subscribe,
    Unsubscribe,
    Psubscribe,
    Ssubscribe,
    Reset,
    Quit,
    Multi,
    Exec,
    Echo,
}

impl Name {
    fn args(self) -> &'static [&'static str] {
        match self {
            Name::Get => &["GET"],
            Name::Set => &["set"],
            Name::Ping => &["PING"],
            Name::Hello => &["HELLO"],
            Name::Hello2 => &["HELLO", "2"],
            Name::Hello3 => &["hello", "3"],
            Name::Subscribe => &["SUBSCRIBE"],
            Name::Unsubscribe => &["UNSUBSCRIBE"],
            Name::Psubscribe => &["PSUBSCRIBE"],
            Name::Ssubscribe => &["SSUBSCRIBE"],
            Name::Reset => &["RESET"],
            Name::Quit => &["QUIT"],
            Name::Multi => &["MULTI"],
            Name::Exec => &["EXEC"],
            Name::Echo => &["ECHO"],
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ReplyKind {
    Int,
    Bulk(u16),
    Err,
    Map,
}

fn config() -> Arc<ServerConfig> {
    let mut c = ServerConfig::default();
    c.proto_max_bulk_len = 1024;
    c.max_multibulk_len = 64;
    c.max_inline_size = 256;
    c.max_query_buffer = 4096;
    c.max_pipelined = 4;
    c.max_buffered_out_of_order = 8192;
    c.max_subscriptions = 8;
    c.idle_timeout = Some(Duration::from_secs(5));
    Arc::new(c)
}

struct Harness {
    conn: ServerConnection,
    config: Arc<ServerConfig>,
    input: BytesMut,
    now: Instant,
    outstanding: Vec<CommandId>,
    last_id: Option<u64>,
    error: Option<Error>,
    output: Vec<u8>,
}

impl Harness {
    fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        self.pump();
    }

    fn pump(&mut self) {
        for _ in 0..64 {
            let before = self.input.len();
            match self.conn.handle_input(self.now, &mut self.input) {
                Ok(()) => {
                    assert_eq!(self.error, None, "Ok after an error");
                    if self.conn.wants_read() {
                        let bound = self.config.proto_max_bulk_len as usize
                            + self.config.max_inline_size
                            + 2;
                        assert!(
                            self.input.len() <= bound,
                            "{} bytes left in the input",
                            self.input.len()
                        );
                    }
                }
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
                Event::Command(c) => {
                    let id = c.id.get();
                    assert!(
                        self.last_id.is_none_or(|l| id > l),
                        "command id {id} after {:?}",
                        self.last_id
                    );
                    assert!(!c.args.is_empty());
                    self.last_id = Some(id);
                    self.outstanding.push(c.id);
                }
                Event::Error(e) => {
                    assert_eq!(self.conn.error(), Some(e));
                }
                _ => {}
            }
        }
        while let Some(b) = self.conn.poll_transmit() {
            progress = true;
            self.output.extend_from_slice(&b);
        }
        progress
    }

    fn reply(&mut self, pick: usize, kind: ReplyKind) {
        if self.outstanding.is_empty() {
            return;
        }
        let id = self.outstanding.remove(pick % self.outstanding.len());
        let n = id.get();
        let v = match kind {
            ReplyKind::Int => Value::Integer(TAG + n as i64),
            ReplyKind::Bulk(len) => {
                let mut b = format!("tag:{n}:").into_bytes();
                b.resize(b.len() + (len as usize % 20_000), b'x');
                Value::BulkString(b.into())
            }
            ReplyKind::Err => Value::Error(format!("tag:{n}: ERR nope").into()),
            ReplyKind::Map => Value::Map(vec![(
                Value::BulkString(format!("tag:{n}:").into()),
                Value::Double(1.5),
            )]),
        };
        match self.conn.send_reply(id, &v) {
            Ok(()) => {}
            Err(e) => {
                assert!(
                    self.error.is_some() || matches!(e, ferry_resp::SendError::BufferFull),
                    "send_reply({n}) failed: {e:?} (no connection error)"
                );
                // Not answered: keep owing it (a later reply may succeed after a flush).
                if matches!(e, ferry_resp::SendError::BufferFull) {
                    self.outstanding.push(id);
                }
            }
        }
        self.pump();
    }
}

/// The tag of a reply value we sent, if it is one.
fn tag_of(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) if *i >= TAG => Some((*i - TAG) as u64),
        Value::BulkString(b) | Value::Error(b) | Value::SimpleString(b) => {
            let s = b.strip_prefix(b"tag:")?;
            let end = s.iter().position(|&c| c == b':')?;
            std::str::from_utf8(&s[..end]).ok()?.parse().ok()
        }
        Value::Map(m) => m.first().and_then(|(k, _)| tag_of(k)),
        Value::Array(a) if a.len() == 2 => match (&a[0], &a[1]) {
            (Value::BulkString(k), Value::BulkString(d))
                if k.starts_with(b"tag:") && d.starts_with(b"1.5") =>
            {
                tag_of(&a[0])
            }
            _ => None,
        },
        _ => None,
    }
}

fn check_output(out: &[u8]) {
    let mut buf = Bytes::copy_from_slice(out);
    let mut last: Option<u64> = None;
    while !buf.is_empty() {
        let (v, n) = match parse(&buf) {
            Ok(Some(x)) => x,
            other => panic!(
                "output does not parse ({other:?}) at {:?}",
                &buf[..buf.len().min(80)]
            ),
        };
        if let Some(t) = tag_of(&v) {
            assert!(
                last.is_none_or(|l| t > l),
                "reply for {t} after reply for {last:?}"
            );
            last = Some(t);
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
        conn: ServerConnection::new(config.clone(), now),
        config,
        input: BytesMut::new(),
        now,
        outstanding: Vec::new(),
        last_id: None,
        error: None,
        output: Vec::new(),
    };
    let mut eof = false;
    for _ in 0..64 {
        let Ok(a) = Action::arbitrary(&mut u) else {
            break;
        };
        match a {
            Action::Feed(k) => {
                let (now_, rest) = payload.split_at((k as usize + 1).min(payload.len()));
                payload = rest;
                h.feed(now_);
            }
            Action::Command {
                name,
                args,
                inline,
                split,
            } => {
                let mut all: Vec<Vec<u8>> =
                    name.args().iter().map(|s| s.as_bytes().to_vec()).collect();
                all.extend(args.into_iter().take(6));
                let mut b = BytesMut::new();
                if inline {
                    for (i, a) in all.iter().enumerate() {
                        if i > 0 {
                            b.extend_from_slice(b" ");
                        }
                        b.extend(a.iter().filter(|c| !b"\r\n \"'".contains(c)));
                    }
                    b.extend_from_slice(b"\r\n");
                } else {
                    encode_command(&all, &mut b);
                }
                let s = split as usize % (b.len() + 1);
                h.feed(&b[..s]);
                h.feed(&b[s..]);
            }
            Action::Eof => {
                eof = true;
                h.conn.handle_eof(h.now);
                h.pump();
            }
            Action::Wait(ms) => {
                h.now = h.now + Duration::from_millis(ms as u64 * 4);
                if let Some(t) = h.conn.poll_timeout() {
                    assert!(t >= now, "deadline in the past");
                }
                h.conn.handle_timeout(h.now);
                h.pump();
            }
            Action::Reply { pick, kind } => h.reply(pick as usize, kind),
            Action::Close => {
                h.conn.close();
                h.pump();
            }
            Action::Message(pattern) => {
                let (c, p) = (Bytes::from_static(b"ch"), Bytes::from_static(b"hi"));
                let _ = if pattern {
                    h.conn.send_pmessage(&Bytes::from_static(b"c*"), &c, &p)
                } else {
                    h.conn.send_message(&c, &p)
                };
                h.pump();
            }
            Action::Push => {
                let _ = h
                    .conn
                    .send_push(&Value::Push(vec![Value::bulk("invalidate")]));
                h.pump();
            }
        }
    }
    // The rest of the stream arrives (answering as it goes), then the peer leaves and the
    // application answers everything it owes.
    for chunk in payload.chunks(512) {
        h.feed(chunk);
        for _ in 0..64 {
            if h.outstanding.is_empty() {
                break;
            }
            h.reply(0, ReplyKind::Int);
        }
    }
    if !eof {
        h.conn.handle_eof(h.now);
    }
    h.pump();
    for _ in 0..200 {
        if h.outstanding.is_empty() {
            break;
        }
        h.reply(0, ReplyKind::Int);
    }
    h.pump();
    check_output(&h.output);
    assert!(
        h.outstanding.is_empty(),
        "replies could not be sent: {:?}",
        h.outstanding
    );
    assert!(
        h.conn.is_closed(),
        "not closed after EOF with every command answered"
    );
});
