//! The client side of a RESP connection.
//!
//! Commands are written with [`ClientConnection::send_command`] (pipelining: send as many as
//! you like before reading); each gets a [`RequestId`] and exactly one [`Event::Reply`], in
//! order, through a correlation queue. Out-of-band frames are kept apart as [`Event::Push`]:
//! RESP3 `>` pushes, and in RESP2 pub/sub mode the `message`/`pmessage`/`smessage` arrays.
//!
//! - `HELLO` ([`hello`](ClientConnection::hello) or a raw `send_command`) switches the
//!   connection's protocol when the server accepts it (with `AUTH` and `SETNAME` options).
//! - `(P|S)SUBSCRIBE` / `(P|S)UNSUBSCRIBE` get one `Reply` each whose value is an array of the
//!   per-channel confirmations (the server sends one per channel); the connection tracks the
//!   subscription counts to know when RESP2 pub/sub mode starts and ends.
//! - [`send_transaction`](ClientConnection::send_transaction) sends `MULTI`, the commands and
//!   `EXEC` and reports only `EXEC`'s reply (the array of results, a null array if a `WATCH`
//!   aborted it, or `EXECABORT`); the `+OK`/`+QUEUED` replies are consumed.
//! - `RESET` returns the connection to RESP2 without subscriptions; `QUIT` closes it.

use alloc::collections::{BTreeSet, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::time::Duration;
use ferry_proto::{Connection, Instant, Lifecycle, ProtocolInfo, State};

use crate::encode::encode_command;
use crate::parse::{parse_buf_resume, FrameScan, Limits};
use crate::server::{SubKind, RESP_INFO};
use crate::{Error, ParseError, Protocol, SendError, Value};

/// Limits and behaviour of a [`ClientConnection`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Parser limits for replies (bulk length, aggregate length, nesting depth, line length).
    pub limits: Limits,
    /// Most commands sent and not yet answered; more get [`SendError::PipelineFull`].
    /// Default 1 048 576.
    pub max_pipelined: usize,
    /// Time allowed for the oldest outstanding reply. Default `None`.
    pub response_timeout: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            limits: Limits::default(),
            max_pipelined: 1 << 20,
            response_timeout: None,
        }
    }
}

/// Identifies a command sent on a [`ClientConnection`]; its reply carries the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl RequestId {
    /// The sequence number.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// What a [`ClientConnection`] tells the application.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The reply to a command (errors from the server are `Value::Error` replies, not failures).
    Reply {
        /// The command answered.
        id: RequestId,
        /// The reply.
        value: Value,
    },
    /// An out-of-band frame: a pub/sub message, an invalidation, any RESP3 push.
    Push(Value),
    /// The connection failed (bad frame, unexpected reply, EOF with replies owed, timeout).
    Error(Error),
}

#[derive(Debug)]
enum Kind {
    Normal,
    Hello(Option<Protocol>),
    Reset,
    Quit,
    Sub {
        kind: SubKind,
        name: &'static [u8],
        remaining: usize,
        frames: Vec<Value>,
    },
    /// `MULTI` and queued commands of a transaction: their replies are consumed.
    Swallow,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    kind: Kind,
    sent: Instant,
}

/// The client side of one RESP connection (sans-IO). Polling order: see [`Connection`].
#[derive(Debug)]
pub struct ClientConnection {
    config: Arc<ClientConfig>,
    proto: Protocol,
    pending: VecDeque<Pending>,
    next_id: u64,
    wbuf: BytesMut,
    events: VecDeque<Event>,
    error: Option<Error>,
    closing: bool,
    eof: bool,
    /// Subscriptions as they will be once every command sent is processed.
    projected: [BTreeSet<Bytes>; 3],
    /// Counts the server last confirmed: channels + patterns, shard channels.
    confirmed: (i64, i64),
    now: Instant,
    lifecycle: Lifecycle,
    /// How far the measuring of the incomplete reply at the front of the input got, so
    /// that each read costs only its new bytes.
    scan: FrameScan,
}

fn kind_index(k: SubKind) -> usize {
    match k {
        SubKind::Channel => 0,
        SubKind::Pattern => 1,
        SubKind::Shard => 2,
    }
}

fn frame_name(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Push(items) | Value::Array(items) => match items.first() {
            Some(Value::BulkString(b)) | Some(Value::SimpleString(b)) => Some(b),
            _ => None,
        },
        _ => None,
    }
}

impl ClientConnection {
    /// A connection whose transport was established at `now`.
    pub fn new(config: Arc<ClientConfig>, now: Instant) -> Self {
        let mut lifecycle = Lifecycle::new(State::Connected);
        let _ = lifecycle.transition(State::Ready);
        ClientConnection {
            config,
            proto: Protocol::Resp2,
            pending: VecDeque::new(),
            next_id: 0,
            wbuf: BytesMut::new(),
            events: VecDeque::new(),
            error: None,
            closing: false,
            eof: false,
            projected: Default::default(),
            confirmed: (0, 0),
            now,
            lifecycle,
            scan: FrameScan::new(),
        }
    }

    /// The protocol the server speaks to us (after a successful HELLO).
    pub fn protocol(&self) -> Protocol {
        self.proto
    }

    /// Commands sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether the server confirmed any subscription that is still active.
    pub fn is_subscribed(&self) -> bool {
        self.confirmed.0 > 0 || self.confirmed.1 > 0
    }

    /// The stored fatal error.
    pub fn error(&self) -> Option<Error> {
        self.error
    }

    /// The lifecycle, to attach observers or read counters.
    pub fn lifecycle_mut(&mut self) -> &mut Lifecycle {
        &mut self.lifecycle
    }

    fn check_send(&self, n: usize) -> Result<(), SendError> {
        if self.error.is_some() || self.closing || self.eof {
            return Err(SendError::Closed);
        }
        if self.pending.len() + n > self.config.max_pipelined {
            return Err(SendError::PipelineFull);
        }
        Ok(())
    }

    fn push_pending(&mut self, kind: Kind) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(Pending {
            id,
            kind,
            sent: self.now,
        });
        RequestId(id)
    }

    fn classify<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Kind {
        let name = args[0].as_ref();
        let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        let sub = [
            ("subscribe", SubKind::Channel, true),
            ("psubscribe", SubKind::Pattern, true),
            ("ssubscribe", SubKind::Shard, true),
            ("unsubscribe", SubKind::Channel, false),
            ("punsubscribe", SubKind::Pattern, false),
            ("sunsubscribe", SubKind::Shard, false),
        ]
        .into_iter()
        .find(|(n, _, _)| is(n));
        if let Some((n, kind, subscribe)) = sub {
            let set = &mut self.projected[kind_index(kind)];
            let remaining = if subscribe {
                for a in &args[1..] {
                    set.insert(Bytes::copy_from_slice(a.as_ref()));
                }
                args.len() - 1
            } else if args.len() > 1 {
                for a in &args[1..] {
                    set.remove(a.as_ref());
                }
                args.len() - 1
            } else {
                let n = set.len().max(1);
                set.clear();
                n
            };
            let name: &'static [u8] = match n {
                "subscribe" => b"subscribe",
                "psubscribe" => b"psubscribe",
                "ssubscribe" => b"ssubscribe",
                "unsubscribe" => b"unsubscribe",
                "punsubscribe" => b"punsubscribe",
                _ => b"sunsubscribe",
            };
            return Kind::Sub {
                kind,
                name,
                remaining: remaining.max(1),
                frames: Vec::new(),
            };
        }
        if is("hello") {
            let v = args
                .get(1)
                .and_then(|a| core::str::from_utf8(a.as_ref()).ok()?.parse::<i64>().ok());
            let _ = self.lifecycle.transition(State::Authenticating);
            return Kind::Hello(v.and_then(Protocol::from_version));
        }
        if is("reset") {
            self.projected = Default::default();
            return Kind::Reset;
        }
        if is("quit") {
            return Kind::Quit;
        }
        Kind::Normal
    }

    /// Time moves only forward: an earlier `now` than one already seen is ignored.
    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    /// Send one command (`args[0]` is its name) at `now` (its
    /// [`response_timeout`](ClientConfig::response_timeout) counts from then). Pipelining:
    /// call it as often as you like before reading; replies come back in order as
    /// [`Event::Reply`] with the returned id.
    pub fn send_command<A: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        args: &[A],
    ) -> Result<RequestId, SendError> {
        self.advance(now);
        if args.is_empty() {
            return Err(SendError::InvalidState);
        }
        self.check_send(1)?;
        let kind = self.classify(args);
        if matches!(kind, Kind::Quit) {
            self.closing = true;
        }
        encode_command(args, &mut self.wbuf);
        Ok(self.push_pending(kind))
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: negotiate the protocol (and
    /// authenticate, and name the connection). The reply is the server's info map (an array
    /// under RESP2) or an error (`NOPROTO`, `WRONGPASS`, …), which leaves the protocol as it was.
    pub fn hello(
        &mut self,
        now: Instant,
        protover: Option<Protocol>,
        auth: Option<(&[u8], &[u8])>,
        setname: Option<&[u8]>,
    ) -> Result<RequestId, SendError> {
        let mut args: Vec<&[u8]> = Vec::with_capacity(7);
        args.push(b"HELLO");
        let v = match protover {
            Some(Protocol::Resp3) => &b"3"[..],
            Some(Protocol::Resp2) => &b"2"[..],
            None => &b""[..],
        };
        if protover.is_some() {
            args.push(v);
            if let Some((u, p)) = auth {
                args.extend_from_slice(&[b"AUTH", u, p]);
            }
            if let Some(n) = setname {
                args.extend_from_slice(&[b"SETNAME", n]);
            }
        }
        self.send_command(now, &args)
    }

    /// Send `MULTI`, `commands` and `EXEC`; only `EXEC`'s reply is reported (see module docs).
    pub fn send_transaction<A: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        commands: &[&[A]],
    ) -> Result<RequestId, SendError> {
        self.advance(now);
        if commands.iter().any(|c| c.is_empty()) {
            return Err(SendError::InvalidState);
        }
        self.check_send(commands.len() + 2)?;
        encode_command(&["MULTI"], &mut self.wbuf);
        self.push_pending(Kind::Swallow);
        for c in commands {
            encode_command(c, &mut self.wbuf);
            self.push_pending(Kind::Swallow);
        }
        encode_command(&["EXEC"], &mut self.wbuf);
        Ok(self.push_pending(Kind::Normal))
    }

    /// Stop sending; the connection is closed once every outstanding reply arrived.
    pub fn close(&mut self) {
        self.closing = true;
        let _ = self.lifecycle.transition(State::Closing);
    }

    fn fail(&mut self, e: Error) -> Error {
        self.error = Some(e);
        self.events.push_back(Event::Error(e));
        let _ = self.lifecycle.transition(State::Error);
        e
    }

    fn note_count(&mut self, kind: SubKind, v: &Value) {
        if let Some(items) = v.as_slice() {
            if let Some(Value::Integer(n)) = items.get(2) {
                match kind {
                    SubKind::Shard => self.confirmed.1 = *n,
                    _ => self.confirmed.0 = *n,
                }
            }
        }
    }

    fn on_frame(&mut self, v: Value) -> Result<(), Error> {
        let name = frame_name(&v).map(|n| n.to_ascii_lowercase());
        // A confirmation for the subscription command at the front? (Pushes in RESP3,
        // arrays in RESP2.)
        let frame_ok = matches!(v, Value::Push(_)) || self.proto == Protocol::Resp2;
        if let Some(Pending {
            kind: Kind::Sub { name: want, .. },
            ..
        }) = self.pending.front()
        {
            if frame_ok && name.as_deref() == Some(*want) {
                let Some(Pending {
                    kind:
                        Kind::Sub {
                            kind,
                            remaining,
                            frames,
                            ..
                        },
                    ..
                }) = self.pending.front_mut()
                else {
                    return Ok(());
                };
                let kind = *kind;
                frames.push(v.clone());
                *remaining -= 1;
                let finished = *remaining == 0;
                self.note_count(kind, &v);
                if finished {
                    if let Some(Pending {
                        id,
                        kind: Kind::Sub { frames, .. },
                        ..
                    }) = self.pending.pop_front()
                    {
                        self.events.push_back(Event::Reply {
                            id: RequestId(id),
                            value: Value::Array(frames),
                        });
                    }
                }
                return Ok(());
            }
        }
        if matches!(v, Value::Push(_)) {
            self.events.push_back(Event::Push(v));
            return Ok(());
        }
        if self.proto == Protocol::Resp2
            && self.is_subscribed()
            && matches!(
                name.as_deref(),
                Some(b"message" | b"pmessage" | b"smessage")
            )
        {
            self.events.push_back(Event::Push(v));
            return Ok(());
        }
        let Some(p) = self.pending.pop_front() else {
            return Err(Error::UnexpectedReply);
        };
        match p.kind {
            Kind::Swallow => return Ok(()),
            Kind::Hello(proto) => {
                if !v.is_error() {
                    if let Some(proto) = proto {
                        self.proto = proto;
                    }
                }
                let _ = self.lifecycle.transition(State::Ready);
            }
            Kind::Reset => {
                self.proto = Protocol::Resp2;
                self.confirmed = (0, 0);
            }
            Kind::Quit => self.closing = true,
            Kind::Sub { .. } | Kind::Normal => {}
        }
        self.events.push_back(Event::Reply {
            id: RequestId(p.id),
            value: v,
        });
        Ok(())
    }
}

impl Connection for ClientConnection {
    type Event = Event;
    type Error = Error;

    fn info(&self) -> &'static ProtocolInfo {
        &RESP_INFO
    }

    fn handle_input(&mut self, now: Instant, input: &mut BytesMut) -> Result<(), Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if now > self.now {
            self.now = now;
        }
        loop {
            // The scan is reset when a frame is split off; a caller that only appends to
            // `input` between calls (the contract) gets each byte examined about once.
            match parse_buf_resume(input, &self.config.limits, &mut self.scan) {
                Ok(Some(v)) => {
                    if let Err(e) = self.on_frame(v) {
                        return Err(self.fail(e));
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(Error::Protocol(e))),
            }
        }
    }

    fn handle_eof(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        self.eof = true;
        if self.error.is_none() && !self.pending.is_empty() {
            self.fail(Error::UnexpectedEof);
        } else {
            let _ = self.lifecycle.transition(State::Closing);
            let _ = self.lifecycle.transition(State::Closed);
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.wbuf.is_empty() {
            if self.is_closed() && self.error.is_none() {
                let _ = self.lifecycle.transition(State::Closing);
                let _ = self.lifecycle.transition(State::Closed);
            }
            return None;
        }
        Some(self.wbuf.split().freeze())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        let t = self.config.response_timeout?;
        self.pending.front().map(|p| p.sent + t)
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        if let Some(d) = self.poll_timeout() {
            if now >= d {
                self.fail(Error::Timeout);
            }
        }
    }

    fn wants_read(&self) -> bool {
        self.error.is_none() && !self.eof
    }

    fn is_closed(&self) -> bool {
        self.error.is_some()
            || (self.wbuf.is_empty() && (self.eof || (self.closing && self.pending.is_empty())))
    }

    fn state(&self) -> State {
        self.lifecycle.state()
    }
}

/// The reply of a parse error: kept for API symmetry with the server.
impl From<ParseError> for Event {
    fn from(e: ParseError) -> Self {
        Event::Error(Error::Protocol(e))
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
