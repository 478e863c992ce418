//! The server side of a RESP connection.
//!
//! Commands are read from the caller's buffer and handed out as [`Event::Command`]s whose
//! arguments are zero-copy `Bytes`; the application answers each with
//! [`ServerConnection::send_reply`], in any order (from worker threads, say): replies leave in
//! command order, later ones are held (bounded) until the earlier ones are written.
//!
//! ## What the connection answers itself
//!
//! - **Protocol errors** with Redis's own text (`-ERR Protocol error: invalid bulk length`, …),
//!   after the replies owed to earlier commands; then it closes.
//! - **`QUIT`** (`+OK`, then close) and **`RESET`** (`+RESET`, back to RESP2, all
//!   subscriptions dropped; the application gets [`Event::Reset`] to clear its own per-client
//!   state: transaction, name, broker subscriptions).
//! - **Pub/sub bookkeeping**: `(P|S)SUBSCRIBE` / `(P|S)UNSUBSCRIBE` are answered by the
//!   connection (one confirmation per channel with Redis's counts, as RESP2 arrays or RESP3
//!   pushes) and reported as [`Event::Subscribe`] / [`Event::Unsubscribe`] so the
//!   application's broker can route messages; messages go out with
//!   [`send_message`](ServerConnection::send_message) and friends, which drop messages for
//!   channels the client is no longer subscribed to. In RESP2 pub/sub mode only
//!   `(P|S)SUBSCRIBE`, `(P|S)UNSUBSCRIBE`, `PING`, `QUIT` and `RESET` are allowed; anything
//!   else gets Redis's exact error, and `PING` answers `["pong", arg]`. With
//!   [`ServerConfig::queue_pubsub_in_multi`] they are queued inside `MULTI` as Redis queues
//!   them, and performed when the application's EXEC reply is written.
//! - **`HELLO`'s validation**: a non-integer or unsupported version (`-NOPROTO`) and bad
//!   options get Redis's errors. A well-formed HELLO goes to the application as a normal
//!   [`Event::Command`] ([`Command::hello`] parses it) because AUTH and the server-info map
//!   are the application's business. **The connection switches protocol exactly when the
//!   application's reply to that HELLO is not an error**, and encodes that reply already in the
//!   new protocol. Commands pipelined behind a HELLO are not read until it is answered.
//!
//! Everything else (including `PING` outside pub/sub mode) is the application's.

use alloc::collections::{BTreeSet, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use bytes::{BufMut, Bytes, BytesMut};
use core::time::Duration;
use ferry_proto::{
    Connection, Instant, Lifecycle, Multiplexing, ProtocolInfo, State, TlsRequirement,
};
use smallvec::SmallVec;

use crate::command::{parse_hello, CommandReader, HelloError, ReadLimits, INLINE_ARGS};
use crate::encode::encode;
use crate::{Command, CommandId, Error, ParseError, Protocol, SendError, Value};

/// RESP's protocol metadata.
pub static RESP_INFO: ProtocolInfo = ProtocolInfo {
    name: "RESP",
    default_port: 6379,
    binary: true,
    streaming: false,
    tls: TlsRequirement::Optional,
    multiplexing: Multiplexing::None,
};

/// Limits and behaviour of a [`ServerConnection`]; defaults are Redis's.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Longest bulk argument (`proto-max-bulk-len`). Default 512 MiB.
    pub proto_max_bulk_len: u64,
    /// Most arguments in one command (Redis 7: `INT_MAX`). Default `i32::MAX`.
    pub max_multibulk_len: u64,
    /// Longest inline command and longest length header (`PROTO_INLINE_MAX_SIZE`). 64 KiB.
    pub max_inline_size: usize,
    /// Largest single command held while it is read (`client-query-buffer-limit`); over it the
    /// connection closes without a reply, as Redis does. Default 1 GiB.
    pub max_query_buffer: usize,
    /// Commands read but not yet answered; more pipelined commands wait in the caller's buffer
    /// (`wants_read() == false`). Default 1024.
    pub max_pipelined: usize,
    /// Bytes of replies held for commands behind an unanswered one before `send_reply` for them
    /// returns [`SendError::BufferFull`]. Default 64 MiB.
    pub max_buffered_out_of_order: usize,
    /// Most channels + patterns + shard channels one connection may subscribe to. Default 100 000.
    pub max_subscriptions: usize,
    /// Close a connection idle this long with nothing owed (Redis's `timeout`; pub/sub clients
    /// are exempt). Default `None`.
    pub idle_timeout: Option<Duration>,
    /// Queue `(P|S)(UN)SUBSCRIBE` sent inside `MULTI` instead of running them at once, as
    /// Redis does: they reach the application as [`Event::Command`]s (to answer `+QUEUED`),
    /// and at `EXEC` the application answers each with the request as a push,
    /// `Value::Push([name, channel…])` (the lower-case command name, then its arguments), in
    /// the EXEC array; the connection then performs it (its subscription sets, Redis's
    /// confirmation frames with its counts, in the EXEC reply) and the application updates its
    /// own broker. Commands behind such an EXEC are read once it is answered. Default `false`
    /// (the connection answers them itself, in or out of MULTI).
    pub queue_pubsub_in_multi: bool,
    /// A reply given as `Value::Push([frame…, reply])` (each `frame` a `Value::Push`) writes
    /// the push frames first, then `reply`: how a server answers a RESP3 client's PUBLISH to a
    /// channel it is itself subscribed to (Redis writes the `message` before the count). The
    /// same inside an EXEC array: an element `Push([frame…, reply])` whose first item is a push
    /// is written as the frames, then the reply (the array header counts it once, as Redis's
    /// does). Default `false` (a `Value::Push` reply is written as it is).
    pub pushes_before_reply: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            proto_max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: i32::MAX as u64,
            max_inline_size: 64 * 1024,
            max_query_buffer: 1 << 30,
            max_pipelined: 1024,
            max_buffered_out_of_order: 64 << 20,
            max_subscriptions: 100_000,
            idle_timeout: None,
            queue_pubsub_in_multi: false,
            pushes_before_reply: false,
        }
    }
}

/// Which pub/sub namespace a subscription is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubKind {
    /// `SUBSCRIBE` / `UNSUBSCRIBE` / `message`.
    Channel,
    /// `PSUBSCRIBE` / `PUNSUBSCRIBE` / `pmessage`.
    Pattern,
    /// `SSUBSCRIBE` / `SUNSUBSCRIBE` / `smessage`.
    Shard,
}

impl SubKind {
    fn names(self) -> (&'static [u8], &'static [u8]) {
        match self {
            SubKind::Channel => (b"subscribe", b"unsubscribe"),
            SubKind::Pattern => (b"psubscribe", b"punsubscribe"),
            SubKind::Shard => (b"ssubscribe", b"sunsubscribe"),
        }
    }
}

/// What a [`ServerConnection`] tells the application.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A command to execute; answer with [`ServerConnection::send_reply`].
    Command(Command),
    /// The client subscribed to these (new) channels; no reply needed.
    Subscribe {
        /// Namespace.
        kind: SubKind,
        /// Channels or patterns newly subscribed.
        channels: Vec<Bytes>,
    },
    /// The client unsubscribed from these channels; no reply needed.
    Unsubscribe {
        /// Namespace.
        kind: SubKind,
        /// Channels or patterns actually removed.
        channels: Vec<Bytes>,
    },
    /// `RESET`: drop this client's transaction, name, subscriptions and other state.
    Reset,
    /// The connection failed; Redis's error reply (if any) is queued and it will close.
    Error(Error),
}

#[derive(Debug)]
struct Slot {
    id: u64,
    /// The protocol the reply is encoded in (and that holds after it).
    proto: Protocol,
    done: bool,
    held: BytesMut,
    /// `Some(v)`: a HELLO; switch to `v` (if given) when answered without an error.
    hello: Option<Option<Protocol>>,
    close: bool,
    /// An EXEC whose transaction queued pub/sub commands (see
    /// [`ServerConfig::queue_pubsub_in_multi`]).
    exec: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    Reading,
    AwaitHello,
    Stopped,
}

/// The server side of one RESP connection (sans-IO).
///
/// Polling order: see [`Connection`]. After `handle_input` returns an error, keep polling
/// transmits: replies owed and the error reply still go out, then
/// [`is_closed`](Connection::is_closed) becomes true. While a HELLO is unanswered or the
/// pipeline is full, `handle_input` leaves the rest of the input in the buffer: call it again
/// after answering.
#[derive(Debug)]
pub struct ServerConnection {
    config: Arc<ServerConfig>,
    limits: ReadLimits,
    reader: CommandReader,
    read: Read,
    proto: Protocol,
    out_proto: Protocol,
    slots: VecDeque<Slot>,
    next_id: u64,
    events: VecDeque<Event>,
    wbuf: BytesMut,
    out: VecDeque<Bytes>,
    held_total: usize,
    error: Option<Error>,
    closing: bool,
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
    shard: BTreeSet<Bytes>,
    last_activity: Instant,
    now: Instant,
    lifecycle: Lifecycle,
    commands: u64,
    /// Inside MULTI (tracked only with `queue_pubsub_in_multi`).
    multi: bool,
    /// A pub/sub command was queued in this MULTI.
    multi_pubsub: bool,
}

/// Replies larger than this are handed to the driver as their own chunk instead of copied.
const COPY_MAX: usize = 16 * 1024;

fn lower_name(name: &[u8]) -> alloc::string::String {
    name.iter()
        .map(|c| c.to_ascii_lowercase() as char)
        .collect()
}

/// `(kind, subscribe?)` of a lower-case (un)subscribe command name.
fn pubsub_kind(name: &[u8]) -> Option<(SubKind, bool)> {
    Some(match name {
        b"subscribe" => (SubKind::Channel, true),
        b"psubscribe" => (SubKind::Pattern, true),
        b"ssubscribe" => (SubKind::Shard, true),
        b"unsubscribe" => (SubKind::Channel, false),
        b"punsubscribe" => (SubKind::Pattern, false),
        b"sunsubscribe" => (SubKind::Shard, false),
        _ => return None,
    })
}

/// `ERR wrong number of arguments for '<cmd>' command`.
pub fn wrong_args(name: &[u8]) -> Value {
    Value::error_fmt(format_args!(
        "ERR wrong number of arguments for '{}' command",
        lower_name(name)
    ))
}

impl ServerConnection {
    /// A connection accepted at `now`.
    pub fn new(config: Arc<ServerConfig>, now: Instant) -> Self {
        let limits = ReadLimits {
            max_bulk_len: config.proto_max_bulk_len,
            max_multibulk_len: config.max_multibulk_len,
            max_inline: config.max_inline_size,
            max_query: config.max_query_buffer,
        };
        ServerConnection {
            config,
            limits,
            reader: CommandReader::default(),
            read: Read::Reading,
            proto: Protocol::Resp2,
            out_proto: Protocol::Resp2,
            slots: VecDeque::new(),
            next_id: 0,
            events: VecDeque::new(),
            wbuf: BytesMut::new(),
            out: VecDeque::new(),
            held_total: 0,
            error: None,
            closing: false,
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            shard: BTreeSet::new(),
            last_activity: now,
            now,
            lifecycle: Lifecycle::new(State::Ready),
            commands: 0,
            multi: false,
            multi_pubsub: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The protocol commands are currently read under (changes with HELLO and RESET).
    pub fn protocol(&self) -> Protocol {
        self.proto
    }

    /// The stored fatal error, if the connection failed.
    pub fn error(&self) -> Option<Error> {
        self.error
    }

    /// Commands read so far (including those the connection answered itself).
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// Bytes of input the connection must be given before it can read on (0 when any
    /// amount will do): the rest of a bulk argument whose length line was read. A driver
    /// that pauses reading over some buffered amount must keep reading below this one, or a
    /// bulk argument larger than its limit never completes.
    pub fn input_wanted(&self) -> usize {
        self.reader.wanted()
    }

    /// Commands read and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Whether the client is in pub/sub mode (subscribed to anything).
    pub fn is_subscribed(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard.is_empty())
    }

    /// Whether the client is subscribed to `channel` (`Channel`), `pattern` (`Pattern`) or the
    /// shard channel (`Shard`).
    pub fn is_subscribed_to(&self, kind: SubKind, name: &[u8]) -> bool {
        self.set(kind).contains(name)
    }

    /// Move every pending event to `into` (what [`poll_event`](Connection::poll_event) would
    /// return, in order). When `into` is empty this swaps buffers instead of moving events
    /// one by one.
    pub fn take_events(&mut self, into: &mut Vec<Event>) {
        if self.events.is_empty() {
            return;
        }
        if into.is_empty() {
            let spare = VecDeque::from(core::mem::take(into));
            let events = core::mem::replace(&mut self.events, spare);
            // O(1) when the ring starts at its buffer's beginning, as it does when it came
            // from a `Vec` and was only pushed to.
            *into = Vec::from(events);
        } else {
            into.extend(self.events.drain(..));
        }
    }

    /// The lifecycle, to attach observers or read counters.
    pub fn lifecycle_mut(&mut self) -> &mut Lifecycle {
        &mut self.lifecycle
    }

    fn set(&self, kind: SubKind) -> &BTreeSet<Bytes> {
        match kind {
            SubKind::Channel => &self.channels,
            SubKind::Pattern => &self.patterns,
            SubKind::Shard => &self.shard,
        }
    }

    fn set_mut(&mut self, kind: SubKind) -> &mut BTreeSet<Bytes> {
        match kind {
            SubKind::Channel => &mut self.channels,
            SubKind::Pattern => &mut self.patterns,
            SubKind::Shard => &mut self.shard,
        }
    }

    fn sub_count(&self, kind: SubKind) -> i64 {
        match kind {
            SubKind::Shard => self.shard.len() as i64,
            _ => (self.channels.len() + self.patterns.len()) as i64,
        }
    }

    // ----- input ---------------------------------------------------------------------------

    /// Queue a reply the connection produces itself, in order behind earlier commands.
    fn own_reply(&mut self, v: &Value, close: bool) {
        self.own_reply_with(|dst, proto| encode(v, proto, dst), close);
    }

    fn own_reply_with(&mut self, f: impl FnOnce(&mut BytesMut, Protocol), close: bool) {
        let proto = self.proto;
        let id = self.next_id;
        self.next_id += 1;
        self.commands += 1;
        if self.slots.is_empty() {
            f(&mut self.wbuf, proto);
            self.out_proto = proto;
            if close {
                self.stop_after_front();
            }
        } else {
            let mut held = BytesMut::new();
            f(&mut held, proto);
            self.held_total += held.len();
            self.slots.push_back(Slot {
                id,
                proto,
                done: true,
                held,
                hello: None,
                close,
                exec: false,
            });
            if close {
                // Read nothing more; close once the replies owed are written.
                self.closing = true;
                self.read = Read::Stopped;
                let _ = self.lifecycle.transition(State::Closing);
            }
        }
    }

    fn stop_after_front(&mut self) {
        self.closing = true;
        self.read = Read::Stopped;
        self.slots.clear();
        let _ = self.lifecycle.transition(State::Closing);
    }

    fn fail(&mut self, e: ParseError) -> Error {
        let err = Error::Protocol(e);
        self.error = Some(err);
        self.events.push_back(Event::Error(err));
        match e {
            ParseError::ExpectedBulk(c) => {
                let c = if c == b'\r' || c == b'\n' { b' ' } else { c };
                let mut text = Vec::from(&b"ERR Protocol error: expected '$', got '"[..]);
                text.push(c);
                text.push(b'\'');
                self.own_reply(&Value::Error(Bytes::from(text)), true);
            }
            _ => match e.redis_message() {
                Some(m) => self.own_reply(&Value::Error(Bytes::from_static(m.as_bytes())), true),
                None => {
                    self.closing = true;
                }
            },
        }
        self.read = Read::Stopped;
        self.closing = true;
        let _ = self.lifecycle.transition(State::Closing);
        err
    }

    fn read_input(&mut self, input: &mut BytesMut) -> Result<(), ParseError> {
        while self.read == Read::Reading
            && !self.closing
            && self.slots.len() < self.config.max_pipelined
            && self.events.len() < self.config.max_pipelined
        {
            let Some(args) = self.reader.next(input, &self.limits)? else {
                return Ok(());
            };
            self.dispatch(args);
        }
        Ok(())
    }

    fn dispatch(&mut self, args: SmallVec<[Bytes; INLINE_ARGS]>) {
        let name = &args[0];
        let n = name.len();
        // Only names of these lengths are the connection's own business (PING QUIT RESET
        // HELLO and the (un)subscribe family); anything else, outside RESP2 pub/sub mode, goes
        // straight to the application.
        // DISCARD (7) matters only inside a tracked MULTI.
        let own = matches!(n, 4 | 5 | 9..=12) || (n == 7 && self.multi);
        if !own && (self.proto != Protocol::Resp2 || !self.is_subscribed()) {
            return self.push_command(args, None);
        }
        let is = |s: &str| n == s.len() && name.eq_ignore_ascii_case(s.as_bytes());
        let sub = if is("subscribe") {
            Some((SubKind::Channel, true))
        } else if is("psubscribe") {
            Some((SubKind::Pattern, true))
        } else if is("ssubscribe") {
            Some((SubKind::Shard, true))
        } else if is("unsubscribe") {
            Some((SubKind::Channel, false))
        } else if is("punsubscribe") {
            Some((SubKind::Pattern, false))
        } else if is("sunsubscribe") {
            Some((SubKind::Shard, false))
        } else {
            None
        };
        let (ping, quit, reset, hello) = (is("ping"), is("quit"), is("reset"), is("hello"));
        if self.proto == Protocol::Resp2
            && self.is_subscribed()
            && sub.is_none()
            && !ping
            && !quit
            && !reset
        {
            let e = Value::error_fmt(format_args!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                lower_name(name)
            ));
            return self.own_reply(&e, false);
        }
        if self.config.queue_pubsub_in_multi {
            if self.multi {
                if sub.is_some() {
                    self.multi_pubsub = true;
                    return self.push_command(args, None);
                }
                let exec = is("exec");
                if (exec || is("discard")) && args.len() == 1 {
                    self.multi = false;
                    if exec && core::mem::take(&mut self.multi_pubsub) {
                        // The EXEC reply changes the subscriptions: read on once it is
                        // written (RESP2's pub/sub mode applies to what follows).
                        self.read = Read::AwaitHello;
                        self.push_command(args, None);
                        if let Some(slot) = self.slots.back_mut() {
                            slot.exec = true;
                        }
                        return;
                    }
                }
            } else if is("multi") && args.len() == 1 {
                self.multi = true;
                self.multi_pubsub = false;
            }
        }
        if let Some((kind, subscribe)) = sub {
            return self.pubsub(kind, subscribe, &args);
        }
        if quit {
            return self.own_reply(&Value::ok(), true);
        }
        if reset {
            if args.len() != 1 {
                return self.own_reply(&wrong_args(name), false);
            }
            self.proto = Protocol::Resp2;
            self.multi = false;
            self.multi_pubsub = false;
            self.channels.clear();
            self.patterns.clear();
            self.shard.clear();
            self.events.push_back(Event::Reset);
            return self.own_reply(&Value::simple("RESET"), false);
        }
        if ping && self.proto == Protocol::Resp2 && self.is_subscribed() {
            if args.len() > 2 {
                return self.own_reply(&wrong_args(name), false);
            }
            let arg = args.get(1).cloned().unwrap_or_default();
            return self.own_reply(
                &Value::Array(alloc::vec![Value::bulk("pong"), Value::BulkString(arg)]),
                false,
            );
        }
        let mut hello_slot = None;
        if hello {
            match parse_hello(&args) {
                Ok(h) => hello_slot = Some(h.protover),
                Err(e) => {
                    let v = match e {
                        HelloError::NotInteger => {
                            Value::error("ERR Protocol version is not an integer or out of range")
                        }
                        HelloError::NoProto => Value::error("NOPROTO unsupported protocol version"),
                        HelloError::Syntax(i) => Value::error_fmt(format_args!(
                            "ERR Syntax error in HELLO option '{}'",
                            alloc::string::String::from_utf8_lossy(&args[i])
                        )),
                    };
                    return self.own_reply(&v, false);
                }
            }
        }
        if hello_slot.is_some() {
            self.read = Read::AwaitHello;
            let _ = self.lifecycle.transition(State::Authenticating);
        }
        self.push_command(args, hello_slot);
    }

    #[inline]
    fn push_command(
        &mut self,
        args: SmallVec<[Bytes; INLINE_ARGS]>,
        hello: Option<Option<Protocol>>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        self.commands += 1;
        self.slots.push_back(Slot {
            id,
            proto: self.proto,
            done: false,
            held: BytesMut::new(),
            hello,
            close: false,
            exec: false,
        });
        self.events.push_back(Event::Command(Command {
            id: CommandId(id),
            args,
        }));
    }

    fn pubsub(&mut self, kind: SubKind, subscribe: bool, args: &[Bytes]) {
        if subscribe && args.len() < 2 {
            return self.own_reply(&wrong_args(&args[0]), false);
        }
        let mut frames = BytesMut::new();
        let changed = self.pubsub_frames(kind, subscribe, &args[1..], self.proto, &mut frames);
        if !changed.is_empty() {
            self.events.push_back(if subscribe {
                Event::Subscribe {
                    kind,
                    channels: changed,
                }
            } else {
                Event::Unsubscribe {
                    kind,
                    channels: changed,
                }
            });
        }
        self.own_reply_with(|dst, _| dst.extend_from_slice(&frames), false);
    }

    /// Apply a (un)subscription to the connection's sets and write Redis's confirmation
    /// frames; returns the channels actually added or removed.
    fn pubsub_frames(
        &mut self,
        kind: SubKind,
        subscribe: bool,
        channels: &[Bytes],
        proto: Protocol,
        frames: &mut BytesMut,
    ) -> Vec<Bytes> {
        let (sub_name, unsub_name) = kind.names();
        let mut changed = Vec::new();
        let frame =
            |frames: &mut BytesMut, kind_name: &'static [u8], ch: Option<&Bytes>, count: i64| {
                let v = Value::Push(alloc::vec![
                    Value::BulkString(Bytes::from_static(kind_name)),
                    ch.map_or(Value::NullBulkString, |c| Value::BulkString(c.clone())),
                    Value::Integer(count),
                ]);
                encode(&v, proto, frames);
            };
        if subscribe {
            for ch in channels {
                let total = self.channels.len() + self.patterns.len() + self.shard.len();
                if !self.set(kind).contains(ch) && total < self.config.max_subscriptions {
                    self.set_mut(kind).insert(ch.clone());
                    changed.push(ch.clone());
                }
                frame(frames, sub_name, Some(ch), self.sub_count(kind));
            }
        } else if !channels.is_empty() {
            for ch in channels {
                if self.set_mut(kind).remove(ch) {
                    changed.push(ch.clone());
                }
                frame(frames, unsub_name, Some(ch), self.sub_count(kind));
            }
        } else {
            let all: Vec<Bytes> = core::mem::take(self.set_mut(kind)).into_iter().collect();
            if all.is_empty() {
                frame(frames, unsub_name, None, self.sub_count(kind));
            }
            // Counts go down one by one, as Redis reports them.
            let mut left = self.sub_count(kind) + all.len() as i64;
            for ch in &all {
                left -= 1;
                frame(frames, unsub_name, Some(ch), left);
            }
            changed = all;
        }
        changed
    }

    /// A reply with push frames before it (`pushes_before_reply`) and/or the reply of an EXEC
    /// that queued pub/sub commands (`exec`).
    #[cold]
    fn encode_special(&mut self, reply: &Value, proto: Protocol, exec: bool) -> BytesMut {
        let mut buf = BytesMut::new();
        let last = match reply {
            Value::Push(items) if self.config.pushes_before_reply => match items.split_last() {
                Some((last, frames)) => {
                    for f in frames {
                        encode(f, proto, &mut buf);
                    }
                    last
                }
                None => reply,
            },
            _ => reply,
        };
        match last {
            Value::Array(items) if exec || self.config.pushes_before_reply => {
                self.encode_exec(items, proto, &mut buf, exec)
            }
            _ => encode(last, proto, &mut buf),
        }
        buf
    }

    /// An EXEC reply: Redis's array header counts the commands; with `apply`, each queued
    /// (un)subscription becomes its confirmation frames; with `pushes_before_reply`, an
    /// element `Push([frame…, reply])` (a push first) writes the frames, then the reply.
    #[cold]
    fn encode_exec(&mut self, items: &[Value], proto: Protocol, dst: &mut BytesMut, apply: bool) {
        let mut hdr = itoa::Buffer::new();
        dst.put_u8(b'*');
        dst.put_slice(hdr.format(items.len()).as_bytes());
        dst.put_slice(b"\r\n");
        for item in items {
            if let Value::Push(parts) = item {
                if self.config.pushes_before_reply && matches!(parts.first(), Some(Value::Push(_)))
                {
                    for p in parts {
                        encode(p, proto, dst);
                    }
                    continue;
                }
            }
            let op = match item {
                Value::Push(parts) if apply => match parts.first() {
                    Some(Value::BulkString(name)) => pubsub_kind(name).map(|k| (k, &parts[1..])),
                    _ => None,
                },
                _ => None,
            };
            match op {
                Some(((kind, subscribe), rest)) => {
                    let channels: Vec<Bytes> = rest
                        .iter()
                        .filter_map(|v| match v {
                            Value::BulkString(b) => Some(b.clone()),
                            _ => None,
                        })
                        .collect();
                    self.pubsub_frames(kind, subscribe, &channels, proto, dst);
                }
                None => encode(item, proto, dst),
            }
        }
    }

    // ----- output --------------------------------------------------------------------------

    fn slot_index(&self, id: CommandId) -> Result<usize, SendError> {
        let front = self.slots.front().ok_or(SendError::UnknownId)?.id;
        let i = id.0.checked_sub(front).ok_or(SendError::UnknownId)? as usize;
        if i >= self.slots.len() || self.slots[i].id != id.0 {
            return Err(SendError::UnknownId);
        }
        Ok(i)
    }

    /// Answer command `id` with `reply` (any order; replies leave in command order).
    ///
    /// Large bulk strings at the front of the queue are handed to the driver as their own
    /// chunk (no copy). Answering a HELLO with a non-error switches the protocol (see the
    /// module docs).
    pub fn send_reply(&mut self, id: CommandId, reply: &Value) -> Result<(), SendError> {
        if self.closing && self.slots.is_empty() {
            return Err(SendError::Closed);
        }
        let i = self.slot_index(id)?;
        if self.slots[i].done {
            return Err(SendError::UnknownId);
        }
        if i != 0 && self.held_total > self.config.max_buffered_out_of_order {
            return Err(SendError::BufferFull);
        }
        if let Some(hello) = self.slots[i].hello {
            if !reply.is_error() {
                if let Some(p) = hello {
                    self.proto = p;
                    self.slots[i].proto = p;
                }
            }
            if self.read == Read::AwaitHello {
                self.read = Read::Reading;
                let _ = self.lifecycle.transition(State::Ready);
            }
        }
        let proto = self.slots[i].proto;
        let exec = self.slots[i].exec;
        if exec && self.read == Read::AwaitHello {
            self.read = Read::Reading;
        }
        // Replies are never pushes on the common path: one discriminant test.
        if exec || (matches!(reply, Value::Push(_)) && self.config.pushes_before_reply) {
            let buf = self.encode_special(reply, proto, exec);
            self.place(i, &buf);
            return Ok(());
        }
        if i == 0 {
            match reply {
                Value::BulkString(b) if b.len() > COPY_MAX => {
                    let mut hdr = itoa::Buffer::new();
                    self.wbuf.put_u8(b'$');
                    self.wbuf.put_slice(hdr.format(b.len()).as_bytes());
                    self.wbuf.put_slice(b"\r\n");
                    self.out.push_back(self.wbuf.split().freeze());
                    self.out.push_back(b.clone());
                    self.wbuf.put_slice(b"\r\n");
                }
                _ => encode(reply, proto, &mut self.wbuf),
            }
        } else {
            let s = &mut self.slots[i];
            let before = s.held.len();
            encode(reply, proto, &mut s.held);
            self.held_total += s.held.len() - before;
        }
        self.slots[i].done = true;
        if i == 0 {
            self.advance_front();
        }
        Ok(())
    }

    /// Slot `i`'s whole reply, already encoded.
    #[cold]
    fn place(&mut self, i: usize, buf: &[u8]) {
        if i == 0 {
            self.wbuf.extend_from_slice(buf);
        } else {
            self.held_total += buf.len();
            self.slots[i].held.extend_from_slice(buf);
        }
        self.slots[i].done = true;
        if i == 0 {
            self.advance_front();
        }
    }

    fn advance_front(&mut self) {
        while let Some(front) = self.slots.front_mut() {
            if !front.done {
                break;
            }
            if !front.held.is_empty() {
                self.held_total -= front.held.len();
                let held = front.held.split();
                self.wbuf.extend_from_slice(&held);
            }
            self.out_proto = front.proto;
            let close = front.close;
            self.slots.pop_front();
            if close {
                self.stop_after_front();
                break;
            }
        }
        if self.slots.is_empty() {
            self.last_activity = self.now;
        }
    }

    /// Where a push goes: after the last completed reply, so a message never precedes the
    /// confirmation of its subscription.
    fn push_sink(&mut self) -> (&mut BytesMut, Protocol) {
        match self.slots.iter().rposition(|s| s.done) {
            Some(i) => {
                let s = &mut self.slots[i];
                (&mut s.held, s.proto)
            }
            None => (&mut self.wbuf, self.out_proto),
        }
    }

    fn push_frame(&mut self, v: &Value) {
        let before_total = self.held_total;
        let (dst, proto) = self.push_sink();
        let before = dst.len();
        encode(v, proto, dst);
        let added = dst.len() - before;
        if self.slots.iter().any(|s| s.done) {
            self.held_total = before_total + added;
        }
    }

    /// Deliver a `message` on `channel` if the client is subscribed to it. Returns whether it
    /// was queued (messages for channels the client left are dropped, as in Redis).
    pub fn send_message(&mut self, channel: &Bytes, payload: &Bytes) -> bool {
        if self.closing || !self.channels.contains(channel) {
            return false;
        }
        self.push_frame(&Value::Push(alloc::vec![
            Value::BulkString(Bytes::from_static(b"message")),
            Value::BulkString(channel.clone()),
            Value::BulkString(payload.clone()),
        ]));
        true
    }

    /// Deliver a `pmessage` for `pattern` if the client is subscribed to that pattern.
    pub fn send_pmessage(&mut self, pattern: &Bytes, channel: &Bytes, payload: &Bytes) -> bool {
        if self.closing || !self.patterns.contains(pattern) {
            return false;
        }
        self.push_frame(&Value::Push(alloc::vec![
            Value::BulkString(Bytes::from_static(b"pmessage")),
            Value::BulkString(pattern.clone()),
            Value::BulkString(channel.clone()),
            Value::BulkString(payload.clone()),
        ]));
        true
    }

    /// Deliver an `smessage` on a shard channel if the client is subscribed to it.
    pub fn send_smessage(&mut self, channel: &Bytes, payload: &Bytes) -> bool {
        if self.closing || !self.shard.contains(channel) {
            return false;
        }
        self.push_frame(&Value::Push(alloc::vec![
            Value::BulkString(Bytes::from_static(b"smessage")),
            Value::BulkString(channel.clone()),
            Value::BulkString(payload.clone()),
        ]));
        true
    }

    /// Send any out-of-band push frame (client-side caching invalidations, …). Only RESP3
    /// clients can tell a push from a reply: RESP2 gets [`SendError::InvalidState`].
    pub fn send_push(&mut self, push: &Value) -> Result<(), SendError> {
        if self.closing {
            return Err(SendError::Closed);
        }
        if self.proto != Protocol::Resp3 {
            return Err(SendError::InvalidState);
        }
        self.push_frame(push);
        Ok(())
    }

    /// Graceful close: read no more commands, answer those already read, then close.
    pub fn close(&mut self) {
        self.closing = true;
        self.read = Read::Stopped;
        let _ = self.lifecycle.transition(State::Closing);
    }

    fn update_lifecycle(&mut self) {
        if self.is_closed() {
            let to = if self.error.is_some() {
                State::Error
            } else {
                State::Closed
            };
            if self.lifecycle.state() != State::Closing && to == State::Closed {
                let _ = self.lifecycle.transition(State::Closing);
            }
            let _ = self.lifecycle.transition(to);
        }
    }
}

impl Connection for ServerConnection {
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
        if !input.is_empty() {
            self.last_activity = self.now;
        }
        match self.read_input(input) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn handle_eof(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        self.closing = true;
        self.read = Read::Stopped;
        let _ = self.lifecycle.transition(State::Closing);
        self.update_lifecycle();
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        let b = match self.out.pop_front() {
            Some(b) => Some(b),
            None if !self.wbuf.is_empty() => Some(self.wbuf.split().freeze()),
            None => None,
        };
        if b.is_none() {
            self.update_lifecycle();
        }
        b
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.closing || !self.slots.is_empty() || self.is_subscribed() {
            return None;
        }
        self.config.idle_timeout.map(|t| self.last_activity + t)
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        let Some(deadline) = self.poll_timeout() else {
            return;
        };
        if now >= deadline {
            self.close();
            self.update_lifecycle();
        }
    }

    fn wants_read(&self) -> bool {
        self.read == Read::Reading
            && !self.closing
            && self.slots.len() < self.config.max_pipelined
            && self.events.len() < self.config.max_pipelined
    }

    fn is_closed(&self) -> bool {
        self.closing
            && self.read == Read::Stopped
            && self.slots.is_empty()
            && self.wbuf.is_empty()
            && self.out.is_empty()
    }

    fn state(&self) -> State {
        self.lifecycle.state()
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
