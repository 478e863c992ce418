//! The connection core shared by [`ServerConnection`](crate::ServerConnection) and
//! [`ClientConnection`](crate::ClientConnection): frame reading, SETTINGS, PING, GOAWAY, the
//! stream map, flow control, priority scheduling and output. The public types add the
//! role-specific commands.

use alloc::collections::{BTreeSet, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use bytes::{BufMut, Bytes, BytesMut};
use ferry_proto::{Instant, Lifecycle, State as Life};

use crate::frame::{
    self, flags, Continuation, Data, Frame, FrameHeader, GoAway, Headers, Kind, Ping,
    PriorityUpdate, PushPromise, RstStream, Settings, Status, StreamId, WindowUpdate,
    DEFAULT_MAX_FRAME_SIZE, MAX_WINDOW,
};
use crate::hpack::{Decoder, Encoder, Field};
use crate::message::{self, Priority, Request};
use crate::stream::{Recv, RecvFlow, Send, State, Violation, Window};
use crate::streams::StreamMap;
use crate::{Config, Error, Event, FrameError, HpackError, Reason, SendError};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Opaque data of the PING that follows the first GOAWAY of a graceful shutdown.
const GRACEFUL_PING: [u8; 8] = *b"ferry-gw";
/// DATA payloads at least this long leave as their own `Bytes` chunk instead of being copied.
const ZERO_COPY_MIN: usize = 1024;
/// Output produced per `poll_transmit` refill, so one busy stream cannot monopolize memory.
const FLUSH_BUDGET: usize = 256 * 1024;
/// Streams we reset whose late frames are silently ignored.
const RECENTLY_RESET: usize = 128;
/// WINDOW_UPDATE increments below this count as flood points (beyond `Conn::window_credit`).
const TINY_INCREMENT: u32 = 1024;
/// Most tiny WINDOW_UPDATEs banked by DATA frames we sent.
const WINDOW_CREDIT_MAX: u32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handshake {
    /// Server: waiting for the 24-octet client preface.
    Preface,
    /// Waiting for the peer's first SETTINGS frame.
    Settings,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Graceful {
    None,
    /// First GOAWAY (last id 2^31-1) and a PING sent; waiting for the PING ACK.
    AwaitPing(Instant),
    /// Final GOAWAY sent.
    Done,
}

/// The peer's settings as they apply to what we send.
#[derive(Clone, Copy, Debug)]
struct PeerSettings {
    enable_push: bool,
    max_concurrent_streams: u32,
    initial_window: u32,
    max_frame_size: u32,
    connect_protocol: bool,
}

/// A field block being received over HEADERS + CONTINUATION.
#[derive(Debug)]
struct PartialBlock {
    stream_id: StreamId,
    block: BytesMut,
    frames: usize,
    end_stream: bool,
    self_dependent: bool,
    promised: Option<StreamId>,
}

type Key = (u8, u8, u64, u32);

#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) state: State,
    send: Window,
    recv: RecvFlow,
    queue: VecDeque<Bytes>,
    queued: usize,
    end_queued: bool,
    trailers: Option<Vec<(Bytes, Bytes)>>,
    /// Final response head sent (server) / request sent (client).
    pub(crate) head_sent: bool,
    /// Final response received (client).
    head_received: bool,
    expect_len: Option<u64>,
    recv_len: u64,
    priority: Priority,
    key: Option<Key>,
    want_ready: bool,
    peer_initiated: bool,
    /// The response to a HEAD request carries no body (client side: ignore content-length).
    head_request: bool,
    /// Server: the request was HEAD, so the response carries no body.
    pub(crate) head_response: bool,
    /// Received octets the application has not released yet (`auto_release = false`).
    unreleased: usize,
}

impl Stream {
    fn new(state: State, send: u32, recv: u32, peer_initiated: bool) -> Stream {
        Stream {
            state,
            send: Window::new(send),
            recv: RecvFlow::new(recv, recv),
            queue: VecDeque::new(),
            queued: 0,
            end_queued: false,
            trailers: None,
            head_sent: false,
            head_received: false,
            expect_len: None,
            recv_len: 0,
            priority: Priority::default(),
            key: None,
            want_ready: false,
            peer_initiated,
            head_request: false,
            head_response: false,
            unreleased: 0,
        }
    }

    fn sendable(&self) -> bool {
        if !self.queue.is_empty() {
            return self.send.available() > 0;
        }
        self.trailers.is_some() || (self.end_queued && self.state.can_send())
    }
}

pub(crate) struct Conn {
    pub(crate) role: Role,
    pub(crate) config: Arc<Config>,
    pub(crate) now: Instant,
    handshake: Handshake,
    created: Instant,
    /// SETTINGS we sent and the peer has not acknowledged, with when they were sent.
    unacked_settings: VecDeque<(Settings, Instant)>,
    peer: PeerSettings,
    dec: Decoder,
    enc: Encoder,
    hbuf: BytesMut,
    pub(crate) streams: StreamMap<Stream>,
    /// Highest stream id the peer opened (or promised, on a client).
    pub(crate) last_peer_stream: u32,
    /// Next id we open (client requests: odd; server pushes: even).
    pub(crate) next_local_stream: u32,
    peer_active: u32,
    pub(crate) local_active: u32,
    recently_reset: VecDeque<u32>,
    /// Peer streams recently closed, to tell "closed" (STREAM_CLOSED) from "skipped"
    /// (PROTOCOL_ERROR) identifiers below the last one.
    recently_closed: VecDeque<u32>,
    partial: Option<PartialBlock>,
    conn_send: Window,
    conn_recv: RecvFlow,
    /// The initial stream receive window in force: 65 535 until the peer acknowledges our
    /// SETTINGS_INITIAL_WINDOW_SIZE (it may send against the default until then).
    recv_initial: u32,
    queued_total: usize,
    ready: BTreeSet<Key>,
    rr: u64,
    wbuf: BytesMut,
    out: VecDeque<Bytes>,
    out_len: usize,
    pub(crate) events: VecDeque<Event>,
    /// GOAWAY we sent (last stream id).
    goaway_sent: Option<u32>,
    /// GOAWAY the peer sent (last stream id).
    pub(crate) goaway_received: Option<u32>,
    graceful: Graceful,
    pub(crate) error: Option<Error>,
    eof: bool,
    idle_since: Instant,
    reset_window_start: Instant,
    resets: u32,
    flood_window_start: Instant,
    control_frames: u32,
    /// Tiny WINDOW_UPDATEs the peer may send without counting as flood points: two (a stream
    /// and a connection update) per non-empty DATA frame we sent, so a peer with a small
    /// window that acknowledges each frame is not taken for a flood (like Envoy's
    /// `max_inbound_window_update_frames_per_data_frame_sent`). Capped at `WINDOW_CREDIT_MAX`.
    window_credit: u32,
    pub(crate) lifecycle: Lifecycle,
}

impl Conn {
    pub(crate) fn new(role: Role, config: Arc<Config>, now: Instant) -> Conn {
        let cfg = &*config;
        let mut c = Conn {
            role,
            now,
            handshake: if role == Role::Server {
                Handshake::Preface
            } else {
                Handshake::Settings
            },
            created: now,
            unacked_settings: VecDeque::new(),
            peer: PeerSettings {
                enable_push: true,
                max_concurrent_streams: u32::MAX,
                initial_window: 65_535,
                max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                connect_protocol: false,
            },
            dec: Decoder::new(cfg.header_table_size as usize),
            enc: Encoder::new(cfg.header_table_size as usize),
            hbuf: BytesMut::new(),
            streams: StreamMap::new(),
            last_peer_stream: 0,
            next_local_stream: if role == Role::Client { 1 } else { 2 },
            peer_active: 0,
            local_active: 0,
            recently_reset: VecDeque::new(),
            recently_closed: VecDeque::new(),
            partial: None,
            conn_send: Window::new(65_535),
            conn_recv: RecvFlow::new(65_535, cfg.initial_connection_window.max(65_535)),
            recv_initial: 65_535,
            queued_total: 0,
            ready: BTreeSet::new(),
            rr: 0,
            wbuf: BytesMut::with_capacity(16 * 1024),
            out: VecDeque::new(),
            out_len: 0,
            events: VecDeque::new(),
            goaway_sent: None,
            goaway_received: None,
            graceful: Graceful::None,
            error: None,
            eof: false,
            idle_since: now,
            reset_window_start: now,
            resets: 0,
            flood_window_start: now,
            control_frames: 0,
            window_credit: 0,
            lifecycle: Lifecycle::new(Life::Connected),
            config,
        };
        if role == Role::Client {
            c.wbuf.put_slice(PREFACE);
        }
        c.send_settings();
        let extra = c
            .config
            .initial_connection_window
            .saturating_sub(65_535)
            .min(MAX_WINDOW - 65_535);
        if extra > 0 {
            WindowUpdate {
                stream_id: StreamId::ZERO,
                increment: extra,
            }
            .emit(&mut c.wbuf);
            c.conn_recv.window = Window::new(65_535 + extra);
        }
        c
    }

    fn local_settings(&self) -> Settings {
        let cfg = &*self.config;
        Settings {
            header_table_size: (cfg.header_table_size != 4096).then_some(cfg.header_table_size),
            enable_push: match self.role {
                Role::Client => Some(cfg.enable_push),
                Role::Server => None,
            },
            max_concurrent_streams: Some(cfg.max_concurrent_streams),
            initial_window_size: Some(cfg.initial_stream_window.min(MAX_WINDOW)),
            max_frame_size: (cfg.max_frame_size != DEFAULT_MAX_FRAME_SIZE).then_some(
                cfg.max_frame_size
                    .clamp(DEFAULT_MAX_FRAME_SIZE, frame::MAX_MAX_FRAME_SIZE),
            ),
            max_header_list_size: Some(cfg.max_header_list_size),
            enable_connect_protocol: (self.role == Role::Server && cfg.enable_connect_protocol)
                .then_some(true),
            // RFC 9218 §2.1: we schedule by RFC 9218 signals, not RFC 7540 priorities.
            no_rfc7540_priorities: Some(true),
            ..Settings::default()
        }
    }

    fn send_settings(&mut self) {
        let s = self.local_settings();
        s.emit(&mut self.wbuf);
        self.unacked_settings.push_back((s, self.now));
    }

    // ----- accessors --------------------------------------------------------------------------

    pub(crate) fn local_max_frame_size(&self) -> u32 {
        self.config
            .max_frame_size
            .clamp(DEFAULT_MAX_FRAME_SIZE, frame::MAX_MAX_FRAME_SIZE)
    }

    pub(crate) fn peer_enable_push(&self) -> bool {
        self.peer.enable_push
    }

    pub(crate) fn peer_connect_protocol(&self) -> bool {
        self.peer.connect_protocol
    }

    pub(crate) fn peer_max_concurrent(&self) -> u32 {
        self.peer.max_concurrent_streams
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.goaway_sent.is_some()
            || self.goaway_received.is_some()
            || self.graceful != Graceful::None
            || self.error.is_some()
    }

    pub(crate) fn stream_count(&self) -> usize {
        self.streams.len()
    }

    pub(crate) fn queued_output(&self) -> usize {
        self.out_len + self.wbuf.len()
    }

    pub(crate) fn send_capacity(&self, id: StreamId) -> Option<usize> {
        let s = self.streams.get(&id.get())?;
        Some(self.config.max_send_buffer.saturating_sub(s.queued))
    }

    pub(crate) fn stream_send_window(&self, id: StreamId) -> Option<i64> {
        self.streams.get(&id.get()).map(|s| s.send.get())
    }

    pub(crate) fn connection_send_window(&self) -> i64 {
        self.conn_send.get()
    }

    pub(crate) fn queued_data(&self) -> usize {
        self.queued_total
    }

    fn is_peer_parity(&self, id: u32) -> bool {
        match self.role {
            Role::Server => id & 1 == 1,
            Role::Client => id & 1 == 0,
        }
    }

    /// Whether `id` (not in the map) was never used.
    fn is_idle(&self, id: u32) -> bool {
        if self.is_peer_parity(id) {
            id > self.last_peer_stream
        } else {
            id >= self.next_local_stream
        }
    }

    // ----- failure ------------------------------------------------------------------------------

    /// A connection error: queue GOAWAY (for errors we detect), drop every stream, store it.
    pub(crate) fn fail(&mut self, e: Error) -> Error {
        if let Some(prev) = self.error {
            return prev;
        }
        self.error = Some(e);
        if e != Error::UnexpectedEof {
            GoAway {
                last_stream_id: StreamId::new(self.last_peer_stream),
                error: e.reason(),
                debug: Bytes::new(),
            }
            .emit(&mut self.wbuf);
            self.goaway_sent = Some(self.last_peer_stream);
        }
        self.streams.clear();
        self.ready.clear();
        self.queued_total = 0;
        self.partial = None;
        self.events.push_back(Event::Error { error: e });
        let _ = self.lifecycle.transition(Life::Closing);
        e
    }

    fn count_control(&mut self) -> Result<(), Error> {
        if self.now.saturating_duration_since(self.flood_window_start) >= self.config.flood_window {
            self.flood_window_start = self.now;
            self.control_frames = 0;
        }
        self.control_frames += 1;
        if self.control_frames > self.config.max_control_frames {
            return Err(Error::Flood);
        }
        Ok(())
    }

    fn check_output_room(&self) -> Result<(), Error> {
        if self.queued_output() > self.config.max_pending_output {
            return Err(Error::Flood);
        }
        Ok(())
    }

    fn count_reset(&mut self) -> Result<(), Error> {
        if self.now.saturating_duration_since(self.reset_window_start) >= self.config.reset_window {
            self.reset_window_start = self.now;
            self.resets = 0;
        }
        self.resets += 1;
        if self.resets > self.config.max_resets {
            return Err(Error::RapidReset);
        }
        Ok(())
    }

    // ----- input -------------------------------------------------------------------------------

    pub(crate) fn handle_input(&mut self, now: Instant, input: &mut BytesMut) -> Result<(), Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if now > self.now {
            self.now = now;
        }
        match self.read(input) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    pub(crate) fn wants_read(&self) -> bool {
        self.error.is_none() && !self.eof && self.events.len() < self.config.max_queued_events
    }

    fn read(&mut self, input: &mut BytesMut) -> Result<(), Error> {
        if self.handshake == Handshake::Preface {
            let n = input.len().min(PREFACE.len());
            if input[..n] != PREFACE[..n] {
                return Err(Error::BadPreface);
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            let _ = input.split_to(PREFACE.len());
            self.handshake = Handshake::Settings;
        }
        while self.events.len() < self.config.max_queued_events && self.error.is_none() {
            let (head, payload) = match frame::decode(input, self.local_max_frame_size()) {
                Ok(Status::Partial) => return Ok(()),
                Ok(Status::Complete(f)) => f,
                Err(e) => return Err(Error::Frame(e)),
            };
            self.on_frame(head, payload)?;
        }
        Ok(())
    }

    fn on_frame(&mut self, head: FrameHeader, payload: Bytes) -> Result<(), Error> {
        if self.handshake == Handshake::Settings {
            if head.kind != Kind::Settings || head.has(flags::ACK) {
                return Err(Error::ExpectedSettings);
            }
            self.handshake = Handshake::Done;
            let _ = self.lifecycle.transition(Life::Ready);
        }
        if let Some(p) = &self.partial {
            if head.kind != Kind::Continuation || head.stream_id != p.stream_id {
                return Err(Error::Continuation);
            }
        }
        let frame = match Frame::parse(&head, payload) {
            Ok(f) => f,
            Err(e @ (FrameError::PriorityLength | FrameError::SelfDependency)) => {
                let n = head.stream_id.get();
                if !self.streams.contains_key(&n) && self.is_idle(n) {
                    // RST_STREAM may not be sent on an idle stream: make it a connection error.
                    return Err(Error::Frame(e));
                }
                return self.stream_error(head.stream_id, Reason::from_frame_error(head));
            }
            Err(FrameError::ZeroIncrement) if !head.stream_id.is_zero() => {
                let n = head.stream_id.get();
                if !self.streams.contains_key(&n) && self.is_idle(n) {
                    return Err(Error::IdleStream);
                }
                return self.stream_error(head.stream_id, Reason::PROTOCOL_ERROR);
            }
            Err(e) => return Err(Error::Frame(e)),
        };
        match frame {
            Frame::Data(d) => self.on_data(d),
            Frame::Headers(h) => self.on_headers(h),
            Frame::Priority(p) => {
                self.count_control()?;
                // RFC 7540 priorities are deprecated: accepted and ignored (on any stream).
                let _ = p;
                Ok(())
            }
            Frame::RstStream(r) => self.on_rst(r),
            Frame::Settings(s) => self.on_settings(s),
            Frame::PushPromise(p) => self.on_push_promise(p),
            Frame::Ping(p) => self.on_ping(p),
            Frame::GoAway(g) => self.on_goaway(g),
            Frame::WindowUpdate(w) => self.on_window_update(w),
            Frame::Continuation(c) => self.on_continuation(c),
            Frame::PriorityUpdate(p) => self.on_priority_update(p),
            _ => Ok(()),
        }
    }

    /// Answer with RST_STREAM and forget the stream.
    pub(crate) fn stream_error(&mut self, id: StreamId, reason: Reason) -> Result<(), Error> {
        self.check_output_room()?;
        self.count_reset()?;
        self.send_reset(id, reason);
        Ok(())
    }

    /// Queue RST_STREAM for `id` and drop the stream (reporting it if it was open).
    pub(crate) fn send_reset(&mut self, id: StreamId, reason: Reason) {
        RstStream {
            stream_id: id,
            error: reason,
        }
        .emit(&mut self.wbuf);
        if let Some(s) = self.remove_stream(id.get()) {
            let _ = s;
            self.events.push_back(Event::Reset {
                id,
                reason,
                remote: false,
            });
        }
        self.recently_reset.push_back(id.get());
        if self.recently_reset.len() > RECENTLY_RESET {
            self.recently_reset.pop_front();
        }
    }

    fn remove_stream(&mut self, id: u32) -> Option<Stream> {
        let s = self.streams.remove(&id)?;
        if let Some(k) = s.key {
            self.ready.remove(&k);
        }
        self.queued_total -= s.queued;
        if s.unreleased > 0 {
            // Credit the application never returned would be lost for the connection.
            self.release_conn(s.unreleased);
        }
        if s.peer_initiated {
            self.peer_active -= 1;
            self.recently_closed.push_back(id);
            if self.recently_closed.len() > RECENTLY_RESET {
                self.recently_closed.pop_front();
            }
        } else {
            self.local_active -= 1;
        }
        if self.streams.is_empty() {
            self.idle_since = self.now;
        }
        Some(s)
    }

    pub(crate) fn insert_stream(&mut self, id: u32, s: Stream) {
        if s.peer_initiated {
            self.peer_active += 1;
        } else {
            self.local_active += 1;
        }
        self.streams.insert(id, s);
    }

    pub(crate) fn new_stream(&self, state: State, peer_initiated: bool) -> Stream {
        let mut s = Stream::new(
            state,
            self.peer.initial_window,
            self.recv_initial,
            peer_initiated,
        );
        s.recv.target = self.config.initial_stream_window.min(MAX_WINDOW);
        s
    }

    /// Drop the stream if both sides are done.
    fn maybe_close(&mut self, id: u32) {
        if matches!(self.streams.get(&id), Some(s) if s.state == State::Closed) {
            self.remove_stream(id);
        }
    }

    fn release_conn(&mut self, n: usize) {
        if let Some(inc) = self.conn_recv.release(n as u32) {
            WindowUpdate {
                stream_id: StreamId::ZERO,
                increment: inc,
            }
            .emit(&mut self.wbuf);
        }
    }

    /// Return `n` consumed octets of `id` to the peer (connection and stream windows).
    pub(crate) fn release(&mut self, id: u32, n: usize) {
        self.release_conn(n);
        if let Some(s) = self.streams.get_mut(&id) {
            if s.state.can_recv() {
                if let Some(inc) = s.recv.release(n as u32) {
                    WindowUpdate {
                        stream_id: StreamId::new(id),
                        increment: inc,
                    }
                    .emit(&mut self.wbuf);
                }
            }
        }
    }

    /// The application consumed `n` octets of `id` (`auto_release = false`).
    pub(crate) fn release_app(&mut self, id: u32, n: usize) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let n = n.min(s.unreleased);
        s.unreleased -= n;
        if n > 0 {
            self.release(id, n);
        }
    }

    fn on_data(&mut self, d: Data) -> Result<(), Error> {
        let id = d.stream_id.get();
        let flow = d.flow_len();
        if self.conn_recv.recv(flow).is_err() {
            return Err(Error::FlowControl);
        }
        if d.data.is_empty() && !d.end_stream {
            self.count_control()?;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            if self.is_idle(id) {
                return Err(Error::IdleStream);
            }
            self.release_conn(flow);
            if self.recently_reset.contains(&id) {
                return Ok(());
            }
            return self.stream_error(d.stream_id, Reason::STREAM_CLOSED);
        };
        let next = match s.state.recv(Recv::Data(d.end_stream)) {
            Ok(n) => n,
            Err(Violation::Connection(_)) => return Err(Error::Protocol),
            Err(Violation::Stream(r)) => {
                self.release_conn(flow);
                return self.stream_error(d.stream_id, r);
            }
        };
        if s.recv.recv(flow).is_err() {
            self.release_conn(flow);
            return self.stream_error(d.stream_id, Reason::FLOW_CONTROL_ERROR);
        }
        s.recv_len += d.data.len() as u64;
        if let Some(l) = s.expect_len {
            if !s.head_request && (s.recv_len > l || (d.end_stream && s.recv_len != l)) {
                self.release_conn(flow);
                return self.stream_error(d.stream_id, Reason::PROTOCOL_ERROR);
            }
        }
        s.state = next;
        let n = d.data.len();
        if !self.config.auto_release {
            s.unreleased += n;
        }
        // Padding is consumed right away; the data when the application has it.
        let pad = flow - n;
        if !d.data.is_empty() {
            self.events.push_back(Event::Data {
                id: d.stream_id,
                data: d.data,
            });
        }
        if d.end_stream {
            self.events.push_back(Event::End { id: d.stream_id });
        }
        let release_now = pad + if self.config.auto_release { n } else { 0 };
        if release_now > 0 {
            self.release(id, release_now);
        }
        self.maybe_close(id);
        Ok(())
    }

    fn on_headers(&mut self, h: Headers) -> Result<(), Error> {
        let self_dependent = h.is_self_dependent();
        if !h.end_headers {
            if h.block.len() > self.config.max_header_block {
                return Err(Error::HeaderBlockTooLarge);
            }
            let mut block = BytesMut::with_capacity(h.block.len() * 2);
            block.extend_from_slice(&h.block);
            self.partial = Some(PartialBlock {
                stream_id: h.stream_id,
                block,
                frames: 1,
                end_stream: h.end_stream,
                self_dependent,
                promised: None,
            });
            return Ok(());
        }
        self.on_block(h.stream_id, h.block, h.end_stream, self_dependent, None)
    }

    fn on_continuation(&mut self, c: Continuation) -> Result<(), Error> {
        let Some(p) = self.partial.as_mut() else {
            return Err(Error::Continuation);
        };
        p.frames += 1;
        if p.frames > self.config.max_continuation_frames + 1
            || p.block.len() + c.block.len() > self.config.max_header_block
        {
            return Err(Error::HeaderBlockTooLarge);
        }
        p.block.extend_from_slice(&c.block);
        if !c.end_headers {
            return Ok(());
        }
        let Some(p) = self.partial.take() else {
            return Err(Error::Continuation);
        };
        self.on_block(
            p.stream_id,
            p.block.freeze(),
            p.end_stream,
            p.self_dependent,
            p.promised,
        )
    }

    fn on_push_promise(&mut self, p: PushPromise) -> Result<(), Error> {
        if self.role == Role::Server || !self.config.enable_push {
            return Err(Error::UnexpectedPush);
        }
        if !p.end_headers {
            if p.block.len() > self.config.max_header_block {
                return Err(Error::HeaderBlockTooLarge);
            }
            let mut block = BytesMut::with_capacity(p.block.len() * 2);
            block.extend_from_slice(&p.block);
            self.partial = Some(PartialBlock {
                stream_id: p.stream_id,
                block,
                frames: 1,
                end_stream: false,
                self_dependent: false,
                promised: Some(p.promised_id),
            });
            return Ok(());
        }
        self.on_block(p.stream_id, p.block, false, false, Some(p.promised_id))
    }

    /// Decode a complete field block (always, to keep HPACK in sync), then act on it.
    fn on_block(
        &mut self,
        id: StreamId,
        block: Bytes,
        end_stream: bool,
        self_dependent: bool,
        promised: Option<StreamId>,
    ) -> Result<(), Error> {
        // Room for a typical request's fields up front (one allocation, no regrowth).
        let mut fields = Vec::with_capacity(12);
        let too_large =
            match self
                .dec
                .decode(&block, self.config.max_header_list_size as usize, |f| {
                    fields.push(f)
                }) {
                Ok(()) => false,
                Err(HpackError::HeaderListTooLarge) => true,
                Err(e) => return Err(Error::Compression(e)),
            };
        if let Some(promised) = promised {
            return self.on_promise_block(id, promised, fields, too_large);
        }
        match self.role {
            Role::Server => {
                self.on_request_block(id, fields, end_stream, self_dependent, too_large)
            }
            Role::Client => self.on_response_block(id, fields, end_stream, too_large),
        }
    }

    fn on_request_block(
        &mut self,
        id: StreamId,
        fields: Vec<Field>,
        end_stream: bool,
        self_dependent: bool,
        too_large: bool,
    ) -> Result<(), Error> {
        let n = id.get();
        if !id.is_client_initiated() {
            return Err(Error::BadStreamId);
        }
        if let Some(s) = self.streams.get_mut(&n) {
            // Trailers (or a HEADERS the state does not allow).
            let next = match s.state.recv(Recv::Headers(end_stream)) {
                Ok(next) => next,
                Err(Violation::Connection(_)) => return Err(Error::Protocol),
                Err(Violation::Stream(r)) => return self.stream_error(id, r),
            };
            if !end_stream || too_large || self_dependent {
                return self.stream_error(id, Reason::PROTOCOL_ERROR);
            }
            let Ok(trailers) = message::parse_trailers(fields) else {
                return self.stream_error(id, Reason::PROTOCOL_ERROR);
            };
            if matches!(s.expect_len, Some(l) if l != s.recv_len) {
                return self.stream_error(id, Reason::PROTOCOL_ERROR);
            }
            s.state = next;
            self.events.push_back(Event::Trailers { id, trailers });
            self.events.push_back(Event::End { id });
            self.maybe_close(n);
            return Ok(());
        }
        if n <= self.last_peer_stream {
            if self.recently_reset.contains(&n) {
                return Ok(());
            }
            if self.recently_closed.contains(&n) {
                return Err(Error::StreamClosed);
            }
            // Lower than the last stream and not one we remember: a new stream with a
            // decreasing identifier (RFC 9113 §5.1.1).
            return Err(Error::BadStreamId);
        }
        self.last_peer_stream = n;
        if matches!(self.goaway_sent, Some(last) if n > last) {
            // After our final GOAWAY: not processed (the client may retry elsewhere).
            return Ok(());
        }
        if self_dependent {
            return self.stream_error(id, Reason::PROTOCOL_ERROR);
        }
        if self.peer_active >= self.config.max_concurrent_streams {
            return self.stream_error(id, Reason::REFUSED_STREAM);
        }
        let too_large = too_large || too_many_fields(&fields, self.config.max_header_fields);
        if too_large {
            // 431, straight from the connection (RFC 6585), then the stream is done.
            self.count_reset()?;
            let mut s = self.new_stream(State::Idle, true);
            s.state = State::Idle
                .recv(Recv::Headers(end_stream))
                .unwrap_or(State::Open);
            self.insert_stream(n, s);
            self.write_headers(id, &[(b":status", b"431")], &[], true);
            if let Some(s) = self.streams.get_mut(&n) {
                s.state = s.state.send(Send::Headers(true)).unwrap_or(State::Closed);
            }
            if self
                .streams
                .get(&n)
                .is_some_and(|s| s.state != State::Closed)
            {
                self.send_reset(id, Reason::NO_ERROR);
            } else {
                self.remove_stream(n);
            }
            return Ok(());
        }
        let Ok(request) = message::parse_request(fields, self.config.enable_connect_protocol)
        else {
            return self.stream_error(id, Reason::PROTOCOL_ERROR);
        };
        let mut s = self.new_stream(
            if end_stream {
                State::HalfClosedRemote
            } else {
                State::Open
            },
            true,
        );
        s.head_response = request.method_bytes() == b"HEAD";
        s.expect_len = request.content_length;
        s.priority = request.priority;
        if end_stream && matches!(s.expect_len, Some(l) if l != 0) {
            return self.stream_error(id, Reason::PROTOCOL_ERROR);
        }
        self.insert_stream(n, s);
        self.events.push_back(Event::Request { id, request });
        if end_stream {
            self.events.push_back(Event::End { id });
        }
        Ok(())
    }

    fn on_response_block(
        &mut self,
        id: StreamId,
        fields: Vec<Field>,
        end_stream: bool,
        too_large: bool,
    ) -> Result<(), Error> {
        let n = id.get();
        let Some(s) = self.streams.get_mut(&n) else {
            if self.is_idle(n) {
                return Err(Error::IdleStream);
            }
            if self.recently_reset.contains(&n) {
                return Ok(());
            }
            return Err(Error::StreamClosed);
        };
        let next = match s.state.recv(Recv::Headers(end_stream)) {
            Ok(next) => next,
            Err(Violation::Connection(_)) => return Err(Error::Protocol),
            Err(Violation::Stream(r)) => return self.stream_error(id, r),
        };
        if too_large {
            return self.stream_error(id, Reason::PROTOCOL_ERROR);
        }
        if s.head_received {
            if !end_stream {
                return self.stream_error(id, Reason::PROTOCOL_ERROR);
            }
            let Ok(trailers) = message::parse_trailers(fields) else {
                return self.stream_error(id, Reason::PROTOCOL_ERROR);
            };
            s.state = next;
            self.events.push_back(Event::Trailers { id, trailers });
            self.events.push_back(Event::End { id });
            self.maybe_close(n);
            return Ok(());
        }
        let Ok(response) = message::parse_response(fields) else {
            return self.stream_error(id, Reason::PROTOCOL_ERROR);
        };
        if response.status < 200 {
            if end_stream {
                return self.stream_error(id, Reason::PROTOCOL_ERROR);
            }
            self.events.push_back(Event::Informational { id, response });
            return Ok(());
        }
        s.state = next;
        s.head_received = true;
        s.expect_len = response.content_length;
        if response.status == 204 || response.status == 304 {
            s.head_request = true;
        }
        if end_stream && !s.head_request && matches!(s.expect_len, Some(l) if l != 0) {
            return self.stream_error(id, Reason::PROTOCOL_ERROR);
        }
        self.events.push_back(Event::Response { id, response });
        if end_stream {
            self.events.push_back(Event::End { id });
        }
        self.maybe_close(n);
        Ok(())
    }

    fn on_promise_block(
        &mut self,
        id: StreamId,
        promised: StreamId,
        fields: Vec<Field>,
        too_large: bool,
    ) -> Result<(), Error> {
        let p = promised.get();
        if !promised.is_server_initiated() || p <= self.last_peer_stream {
            return Err(Error::Protocol);
        }
        let assoc_ok = matches!(self.streams.get(&id.get()), Some(s) if !s.peer_initiated && matches!(s.state, State::Open | State::HalfClosedLocal));
        if !assoc_ok {
            return Err(Error::Protocol);
        }
        self.last_peer_stream = p;
        if too_large {
            return self.stream_error(promised, Reason::PROTOCOL_ERROR);
        }
        let Ok(request) = message::parse_request(fields, false) else {
            return self.stream_error(promised, Reason::PROTOCOL_ERROR);
        };
        if !matches!(request.method(), "GET" | "HEAD") {
            return self.stream_error(promised, Reason::PROTOCOL_ERROR);
        }
        let mut s = self.new_stream(State::ReservedRemote, true);
        s.head_sent = true;
        s.head_request = request.method_bytes() == b"HEAD";
        self.insert_stream(p, s);
        self.events.push_back(Event::PushPromise {
            id,
            promised,
            request,
        });
        Ok(())
    }

    fn on_rst(&mut self, r: RstStream) -> Result<(), Error> {
        let n = r.stream_id.get();
        let Some(s) = self.streams.get(&n) else {
            if self.is_idle(n) {
                return Err(Error::IdleStream);
            }
            return Ok(());
        };
        if s.state == State::Idle {
            return Err(Error::IdleStream);
        }
        let peer_initiated = s.peer_initiated;
        self.remove_stream(n);
        self.events.push_back(Event::Reset {
            id: r.stream_id,
            reason: r.error,
            remote: true,
        });
        if peer_initiated || self.role == Role::Server {
            self.count_reset()?;
        }
        Ok(())
    }

    fn on_settings(&mut self, s: Settings) -> Result<(), Error> {
        if s.ack {
            if let Some((acked, _)) = self.unacked_settings.pop_front() {
                if let Some(t) = acked.header_table_size {
                    self.dec.set_max_allowed(t as usize);
                }
                if let Some(w) = acked.initial_window_size {
                    // RFC 9113 §6.9.2: the new initial window applies to every open stream.
                    let delta = w as i64 - self.recv_initial as i64;
                    self.recv_initial = w;
                    for st in self.streams.values_mut() {
                        let _ = st.recv.window.adjust(delta);
                    }
                }
            }
            return Ok(());
        }
        self.count_control()?;
        self.check_output_room()?;
        if let Some(t) = s.header_table_size {
            self.enc.set_max_table_size(t as usize);
        }
        if let Some(p) = s.enable_push {
            if self.role == Role::Client && p {
                return Err(Error::Protocol);
            }
            self.peer.enable_push = p;
        }
        if let Some(m) = s.max_concurrent_streams {
            self.peer.max_concurrent_streams = m;
        }
        if let Some(w) = s.initial_window_size {
            let delta = w as i64 - self.peer.initial_window as i64;
            self.peer.initial_window = w;
            let ids: Vec<u32> = self.streams.keys().copied().collect();
            for id in ids {
                if let Some(st) = self.streams.get_mut(&id) {
                    if st.send.adjust(delta).is_err() {
                        return Err(Error::FlowControl);
                    }
                }
                if delta > 0 {
                    self.schedule(id);
                } else {
                    self.unschedule_if_blocked(id);
                }
            }
        }
        if let Some(f) = s.max_frame_size {
            self.peer.max_frame_size = f;
        }
        if let Some(c) = s.enable_connect_protocol {
            self.peer.connect_protocol = c;
        }
        Settings::ACK.emit(&mut self.wbuf);
        Ok(())
    }

    fn on_ping(&mut self, p: Ping) -> Result<(), Error> {
        if p.ack {
            if p.payload == GRACEFUL_PING && matches!(self.graceful, Graceful::AwaitPing(_)) {
                self.final_goaway();
            }
            return Ok(());
        }
        self.count_control()?;
        self.check_output_room()?;
        Ping {
            ack: true,
            payload: p.payload,
        }
        .emit(&mut self.wbuf);
        Ok(())
    }

    fn on_goaway(&mut self, g: GoAway) -> Result<(), Error> {
        let last = g.last_stream_id.get();
        let first = self.goaway_received.is_none();
        self.goaway_received = Some(self.goaway_received.map_or(last, |l| l.min(last)));
        let _ = self.lifecycle.transition(Life::Closing);
        // Streams we opened above `last` were not processed: report them refused (retryable).
        let refused: Vec<u32> = self
            .streams
            .iter()
            .filter(|(id, s)| !s.peer_initiated && **id > last)
            .map(|(id, _)| *id)
            .collect();
        for id in refused {
            self.remove_stream(id);
            self.events.push_back(Event::Reset {
                id: StreamId::new(id),
                reason: Reason::REFUSED_STREAM,
                remote: true,
            });
        }
        if first || g.error != Reason::NO_ERROR {
            self.events.push_back(Event::GoAway {
                last_stream_id: g.last_stream_id,
                reason: g.error,
                debug: g.debug,
            });
        }
        Ok(())
    }

    fn on_window_update(&mut self, w: WindowUpdate) -> Result<(), Error> {
        if w.increment < TINY_INCREMENT {
            if self.window_credit > 0 {
                self.window_credit -= 1;
            } else {
                self.count_control()?;
            }
        }
        let n = w.stream_id.get();
        if n == 0 {
            if self.conn_send.adjust(w.increment as i64).is_err() {
                return Err(Error::FlowControl);
            }
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&n) else {
            if self.is_idle(n) {
                return Err(Error::IdleStream);
            }
            return Ok(());
        };
        if s.state == State::Idle || s.state == State::ReservedRemote {
            return Err(Error::Protocol);
        }
        if s.send.adjust(w.increment as i64).is_err() {
            return self.stream_error(w.stream_id, Reason::FLOW_CONTROL_ERROR);
        }
        self.schedule(n);
        Ok(())
    }

    fn on_priority_update(&mut self, p: PriorityUpdate) -> Result<(), Error> {
        self.count_control()?;
        if self.role == Role::Client {
            return Ok(());
        }
        let n = p.prioritized_id.get();
        if !p.prioritized_id.is_client_initiated() {
            return Err(Error::Protocol);
        }
        if let Some(s) = self.streams.get_mut(&n) {
            s.priority.update(&p.field_value);
            if let Some(k) = s.key.take() {
                self.ready.remove(&k);
                self.schedule(n);
            }
        }
        Ok(())
    }

    pub(crate) fn handle_eof(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        self.eof = true;
        if self.error.is_some() {
            return;
        }
        let open = self.streams.values().any(|s| s.state != State::Closed);
        if open || self.handshake != Handshake::Done {
            self.fail(Error::UnexpectedEof);
        } else {
            self.goaway_sent.get_or_insert(self.last_peer_stream);
        }
    }

    // ----- timers ----------------------------------------------------------------------------

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() || self.eof {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut min = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some((_, at)) = self.unacked_settings.front() {
            min(*at + self.config.settings_timeout);
        }
        if self.handshake != Handshake::Done {
            if let Some(h) = self.config.handshake_timeout {
                min(self.created + h);
            }
        }
        if let Graceful::AwaitPing(at) = self.graceful {
            min(at);
        }
        if self.streams.is_empty() && self.goaway_sent.is_none() {
            if let Some(i) = self.config.idle_timeout {
                min(self.idle_since + i);
            }
        }
        t
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        if self.error.is_some() {
            return;
        }
        if let Some((_, at)) = self.unacked_settings.front() {
            if now >= *at + self.config.settings_timeout {
                self.fail(Error::SettingsTimeout);
                return;
            }
        }
        if self.handshake != Handshake::Done {
            if let Some(h) = self.config.handshake_timeout {
                if now >= self.created + h {
                    self.fail(Error::Timeout);
                    return;
                }
            }
        }
        if let Graceful::AwaitPing(at) = self.graceful {
            if now >= at {
                self.final_goaway();
            }
        }
        if self.streams.is_empty() && self.goaway_sent.is_none() {
            if let Some(i) = self.config.idle_timeout {
                if now >= self.idle_since + i {
                    self.graceful = Graceful::Done;
                    self.final_goaway();
                }
            }
        }
    }

    // ----- shutdown ----------------------------------------------------------------------------

    /// Graceful shutdown. Server: GOAWAY(2^31-1) + PING, then GOAWAY(last id) after the PING
    /// ACK (or `goaway_timeout`). Client: GOAWAY(last pushed id) at once.
    pub(crate) fn close(&mut self) {
        if self.error.is_some() || self.graceful != Graceful::None || self.goaway_sent.is_some() {
            return;
        }
        let _ = self.lifecycle.transition(Life::Closing);
        if self.role == Role::Server && self.handshake == Handshake::Done {
            GoAway {
                last_stream_id: StreamId::MAX,
                error: Reason::NO_ERROR,
                debug: Bytes::new(),
            }
            .emit(&mut self.wbuf);
            Ping {
                ack: false,
                payload: GRACEFUL_PING,
            }
            .emit(&mut self.wbuf);
            self.graceful = Graceful::AwaitPing(self.now + self.config.goaway_timeout);
        } else {
            self.graceful = Graceful::Done;
            self.final_goaway();
        }
    }

    fn final_goaway(&mut self) {
        self.graceful = Graceful::Done;
        if self.goaway_sent.is_some() && self.error.is_none() && self.goaway_received.is_none() {
            return;
        }
        if self.goaway_sent.is_none() {
            let _ = self.lifecycle.transition(Life::Closing);
            GoAway {
                last_stream_id: StreamId::new(self.last_peer_stream),
                error: Reason::NO_ERROR,
                debug: Bytes::new(),
            }
            .emit(&mut self.wbuf);
            self.goaway_sent = Some(self.last_peer_stream);
        }
    }

    /// Whether new streams may be opened by us.
    pub(crate) fn can_open(&self) -> bool {
        self.error.is_none()
            && self.goaway_received.is_none()
            && self.goaway_sent.is_none()
            && self.graceful == Graceful::None
    }

    pub(crate) fn is_closed(&self) -> bool {
        // A server told GOAWAY by its client keeps serving until EOF or idle timeout (the
        // client may still use the connection); a client told GOAWAY is done once its streams
        // are.
        let peer_gone = self.goaway_received.is_some() && self.role == Role::Client;
        let done = self.error.is_some()
            || ((self.goaway_sent.is_some() || peer_gone || self.eof) && self.streams.is_empty());
        done && self.out.is_empty() && self.wbuf.is_empty()
    }

    pub(crate) fn update_lifecycle(&mut self) {
        if self.is_closed() {
            let to = match self.error {
                Some(Error::UnexpectedEof) | None => Life::Closed,
                Some(_) => Life::Error,
            };
            let _ = self.lifecycle.transition(to);
        }
    }

    // ----- output ------------------------------------------------------------------------------

    /// Encode a field block and write HEADERS (+ CONTINUATION) frames now.
    pub(crate) fn write_headers(
        &mut self,
        id: StreamId,
        pseudo: &[(&[u8], &[u8])],
        fields: &[(&[u8], &[u8])],
        end_stream: bool,
    ) {
        let all: Block<'_> = pseudo
            .iter()
            .map(|&(n, v)| (n, v, false))
            .chain(
                fields
                    .iter()
                    .map(|&(n, v)| (n, v, message::is_sensitive(n))),
            )
            .collect();
        self.write_block(id, &all, end_stream);
    }

    /// Encode `fields` (name, value, sensitive; pseudo-fields first) and write HEADERS
    /// (+ CONTINUATION) frames now.
    pub(crate) fn write_block(
        &mut self,
        id: StreamId,
        fields: &[(&[u8], &[u8], bool)],
        end_stream: bool,
    ) {
        let mut block = core::mem::take(&mut self.hbuf);
        block.clear();
        // Responses repeat their heads: the memo skips re-encoding an identical one.
        self.enc.encode_memo(fields, &mut block);
        let max = self.peer.max_frame_size as usize;
        frame::emit_block(&mut self.wbuf, id, &block, max, 0, |d, n, end| {
            Headers {
                stream_id: id,
                priority: None,
                block: Bytes::new(),
                end_stream,
                end_headers: end,
                pad_len: None,
            }
            .emit_header_only(d, n)
        });
        self.hbuf = block;
    }

    /// Encode a request block and write PUSH_PROMISE (+ CONTINUATION) frames now.
    pub(crate) fn write_push_promise(
        &mut self,
        id: StreamId,
        promised: StreamId,
        pseudo: &[(&[u8], &[u8])],
        fields: &[(&[u8], &[u8])],
    ) {
        let mut block = core::mem::take(&mut self.hbuf);
        block.clear();
        self.enc.encode(
            pseudo
                .iter()
                .map(|&(n, v)| (n, v, false))
                .chain(fields.iter().map(|&(n, v)| (n, v, false))),
            &mut block,
        );
        let max = self.peer.max_frame_size as usize;
        frame::emit_block(&mut self.wbuf, id, &block, max, 4, |d, n, end| {
            FrameHeader::new(
                Kind::PushPromise,
                if end { flags::END_HEADERS } else { 0 },
                id,
                n as u32 + 4,
            )
            .emit(d);
            d.put_u32(promised.get());
        });
        self.hbuf = block;
    }

    /// Mark `id` as having sent HEADERS; apply END_STREAM.
    pub(crate) fn sent_headers(&mut self, id: u32, end_stream: bool) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.head_sent = true;
            s.state = s
                .state
                .send(Send::Headers(end_stream))
                .unwrap_or(State::Closed);
        }
        self.maybe_close(id);
    }

    pub(crate) fn stream(&self, id: StreamId) -> Option<&Stream> {
        self.streams.get(&id.get())
    }

    pub(crate) fn set_priority(&mut self, id: StreamId, p: Priority) {
        if let Some(s) = self.streams.get_mut(&id.get()) {
            s.priority = p;
            if let Some(k) = s.key.take() {
                self.ready.remove(&k);
                self.schedule(id.get());
            }
        }
    }

    /// Queue body data (and the end) for a stream whose head was sent.
    pub(crate) fn queue_data(
        &mut self,
        id: StreamId,
        data: Bytes,
        end: bool,
    ) -> Result<(), SendError> {
        self.queue(id, data, end, false)
    }

    /// [`queue_data`](Self::queue_data) without the queue limit (a whole body given at once).
    pub(crate) fn queue_data_unbounded(
        &mut self,
        id: StreamId,
        data: Bytes,
        end: bool,
    ) -> Result<(), SendError> {
        self.queue(id, data, end, true)
    }

    fn queue(
        &mut self,
        id: StreamId,
        data: Bytes,
        end: bool,
        unbounded: bool,
    ) -> Result<(), SendError> {
        if self.error.is_some() {
            return Err(SendError::Closed);
        }
        let max_stream = self.config.max_send_buffer;
        let max_conn = self.config.max_send_buffer_connection;
        let total = self.queued_total;
        let s = self
            .streams
            .get_mut(&id.get())
            .ok_or(SendError::UnknownStream)?;
        if !s.head_sent || s.end_queued || s.trailers.is_some() || !s.state.can_send() {
            return Err(SendError::InvalidState);
        }
        // A whole small body (the usual response) whose windows allow it, with no other
        // stream waiting to send: one DATA frame now, no queueing and scheduling round trip.
        let n = data.len();
        if unbounded
            && end
            && n > 0
            && s.queue.is_empty()
            && s.key.is_none()
            && self.ready.is_empty()
            && n <= self.peer.max_frame_size as usize
            && n <= s.send.available()
            && n <= self.conn_send.available()
        {
            let _ = s.send.consume(n);
            let _ = self.conn_send.consume(n);
            s.end_queued = true;
            s.state = s.state.send(Send::Data(true)).unwrap_or(State::Closed);
            FrameHeader::new(Kind::Data, flags::END_STREAM, id, n as u32).emit(&mut self.wbuf);
            self.window_credit = (self.window_credit + 2).min(WINDOW_CREDIT_MAX);
            if n >= ZERO_COPY_MIN {
                self.push_chunk(data);
            } else {
                self.wbuf.extend_from_slice(&data);
            }
            self.maybe_close(id.get());
            return Ok(());
        }
        if !unbounded && !data.is_empty() && (s.queued >= max_stream || total >= max_conn) {
            s.want_ready = true;
            return Err(SendError::BufferFull);
        }
        if !data.is_empty() {
            s.queued += data.len();
            self.queued_total += data.len();
            s.queue.push_back(data);
        }
        s.end_queued = end;
        self.schedule(id.get());
        Ok(())
    }

    pub(crate) fn queue_trailers(
        &mut self,
        id: StreamId,
        fields: Vec<(Bytes, Bytes)>,
    ) -> Result<(), SendError> {
        if self.error.is_some() {
            return Err(SendError::Closed);
        }
        let s = self
            .streams
            .get_mut(&id.get())
            .ok_or(SendError::UnknownStream)?;
        if !s.head_sent || s.end_queued || s.trailers.is_some() || !s.state.can_send() {
            return Err(SendError::InvalidState);
        }
        s.trailers = Some(fields);
        self.schedule(id.get());
        Ok(())
    }

    fn key_for(&mut self, id: u32) -> Key {
        let s = &self.streams[&id];
        let p = s.priority;
        if p.incremental {
            self.rr += 1;
            (p.urgency, 1, self.rr, id)
        } else {
            (p.urgency, 0, id as u64, id)
        }
    }

    /// Put a stream in the ready set if it has something it may send.
    fn schedule(&mut self, id: u32) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if s.key.is_some() || !s.sendable() {
            return;
        }
        let k = self.key_for(id);
        self.ready.insert(k);
        if let Some(s) = self.streams.get_mut(&id) {
            s.key = Some(k);
        }
    }

    fn unschedule_if_blocked(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.sendable() {
                if let Some(k) = s.key.take() {
                    self.ready.remove(&k);
                }
            }
        }
    }

    fn push_chunk(&mut self, b: Bytes) {
        if !self.wbuf.is_empty() {
            let w = self.wbuf.split().freeze();
            self.out_len += w.len();
            self.out.push_back(w);
        }
        self.out_len += b.len();
        self.out.push_back(b);
    }

    /// Write DATA (and queued trailers / END_STREAM) frames for ready streams, in priority
    /// order, within the flow-control windows, up to a budget.
    fn flush(&mut self) {
        let mut budget = FLUSH_BUDGET;
        while budget > 0 {
            let Some(&key) = self.ready.first() else {
                break;
            };
            let id = key.3;
            let max_frame = self.peer.max_frame_size as usize;
            let conn_avail = self.conn_send.available();
            let Some(s) = self.streams.get_mut(&id) else {
                self.ready.remove(&key);
                continue;
            };
            self.ready.remove(&key);
            s.key = None;
            let sid = StreamId::new(id);
            if let Some(front) = s.queue.front_mut() {
                if conn_avail == 0 {
                    // Blocked on the connection window: keep it ready for the next WINDOW_UPDATE.
                    s.key = Some(key);
                    self.ready.insert(key);
                    break;
                }
                let n = front
                    .len()
                    .min(max_frame)
                    .min(s.send.available())
                    .min(conn_avail);
                if n == 0 {
                    continue;
                }
                let chunk = if n == front.len() {
                    s.queue.pop_front().unwrap_or_default()
                } else {
                    front.split_to(n)
                };
                s.queued -= n;
                self.queued_total -= n;
                let _ = s.send.consume(n);
                let _ = self.conn_send.consume(n);
                let end = s.queue.is_empty() && s.end_queued && s.trailers.is_none();
                if end {
                    s.state = s.state.send(Send::Data(true)).unwrap_or(State::Closed);
                }
                let want_ready = s.want_ready
                    && s.queued < self.config.max_send_buffer / 2
                    && self.queued_total < self.config.max_send_buffer_connection / 2;
                if want_ready {
                    s.want_ready = false;
                    self.events.push_back(Event::SendReady { id: sid });
                }
                let head = FrameHeader::new(
                    Kind::Data,
                    if end { flags::END_STREAM } else { 0 },
                    sid,
                    n as u32,
                );
                head.emit(&mut self.wbuf);
                self.window_credit = (self.window_credit + 2).min(WINDOW_CREDIT_MAX);
                if n >= ZERO_COPY_MIN {
                    self.push_chunk(chunk);
                } else {
                    self.wbuf.extend_from_slice(&chunk);
                }
                budget = budget.saturating_sub(n + frame::HEADER_LEN);
            } else if let Some(t) = s.trailers.take() {
                s.end_queued = true;
                s.state = s.state.send(Send::Headers(true)).unwrap_or(State::Closed);
                let pairs: Vec<(&[u8], &[u8])> = t.iter().map(|(n, v)| (&n[..], &v[..])).collect();
                self.write_headers(sid, &[], &pairs, true);
                budget = budget.saturating_sub(64);
            } else if s.end_queued && s.state.can_send() {
                s.state = s.state.send(Send::Data(true)).unwrap_or(State::Closed);
                FrameHeader::new(Kind::Data, flags::END_STREAM, sid, 0).emit(&mut self.wbuf);
                budget = budget.saturating_sub(frame::HEADER_LEN);
            }
            self.maybe_close(id);
            self.schedule(id);
        }
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() && self.error.is_none() {
            self.flush();
        }
        if let Some(b) = self.out.pop_front() {
            self.out_len -= b.len();
            return Some(b);
        }
        if !self.wbuf.is_empty() {
            return Some(self.wbuf.split().freeze());
        }
        self.update_lifecycle();
        None
    }

    /// Reset a stream on the application's behalf.
    pub(crate) fn reset(&mut self, id: StreamId, reason: Reason) -> Result<(), SendError> {
        if !self.streams.contains_key(&id.get()) {
            return Err(SendError::UnknownStream);
        }
        RstStream {
            stream_id: id,
            error: reason,
        }
        .emit(&mut self.wbuf);
        self.remove_stream(id.get());
        self.recently_reset.push_back(id.get());
        if self.recently_reset.len() > RECENTLY_RESET {
            self.recently_reset.pop_front();
        }
        Ok(())
    }

    /// Append already-encoded frames to the output.
    pub(crate) fn push_raw(&mut self, b: BytesMut) {
        self.wbuf.extend_from_slice(&b);
    }

    /// Send a PING (its ACK is absorbed).
    pub(crate) fn ping(&mut self, payload: [u8; 8]) {
        // After a connection error the final GOAWAY is the last frame (RFC 9113 §5.4.1).
        if self.error.is_some() {
            return;
        }
        Ping {
            ack: false,
            payload,
        }
        .emit(&mut self.wbuf);
    }

    /// Apply settings received out of band (`HTTP2-Settings` of an h2c upgrade).
    pub(crate) fn apply_upgrade_settings(&mut self, s: Settings) -> Result<(), Error> {
        if let Some(t) = s.header_table_size {
            self.enc.set_max_table_size(t as usize);
        }
        if let Some(p) = s.enable_push {
            self.peer.enable_push = p;
        }
        if let Some(m) = s.max_concurrent_streams {
            self.peer.max_concurrent_streams = m;
        }
        if let Some(w) = s.initial_window_size {
            self.peer.initial_window = w;
        }
        if let Some(f) = s.max_frame_size {
            self.peer.max_frame_size = f;
        }
        Ok(())
    }

    pub(crate) fn upgraded_stream(&mut self, request: Request) {
        let mut s = self.new_stream(State::HalfClosedRemote, true);
        s.priority = request.priority;
        // An upgraded HEAD gets a response without content, as on any other stream.
        s.head_response = request.method_bytes() == b"HEAD";
        self.insert_stream(1, s);
        self.last_peer_stream = 1;
        let id = StreamId::new(1);
        self.events.push_back(Event::Request { id, request });
        self.events.push_back(Event::End { id });
    }

    pub(crate) fn response_head_request(&mut self, id: StreamId, head: bool) {
        if let Some(s) = self.streams.get_mut(&id.get()) {
            s.head_request = head;
        }
    }
}

/// Whether a request head has more than `max` regular fields (pseudo-fields aside, `cookie`
/// crumbs (RFC 9113 §8.2.3) counted as one field, as HTTP/1.1 sends them).
fn too_many_fields(fields: &[Field], max: usize) -> bool {
    if fields.len() <= max {
        return false;
    }
    let mut cookie = false;
    let mut n = 0;
    for f in fields {
        if f.name.first() == Some(&b':') {
            continue;
        }
        if &f.name[..] == b"cookie" {
            if cookie {
                continue;
            }
            cookie = true;
        }
        n += 1;
    }
    n > max
}

impl Reason {
    fn from_frame_error(head: FrameHeader) -> Reason {
        if head.kind == Kind::Priority && head.length != 5 {
            Reason::FRAME_SIZE_ERROR
        } else {
            Reason::PROTOCOL_ERROR
        }
    }
}

/// Convert application fields, checking them.
pub(crate) fn own_fields(fields: &[(&str, &[u8])]) -> Result<Vec<(Bytes, Bytes)>, SendError> {
    if !message::check_app_fields(fields) {
        return Err(SendError::InvalidHeader);
    }
    Ok(fields
        .iter()
        .map(|(n, v)| {
            (
                Bytes::copy_from_slice(n.as_bytes()),
                Bytes::copy_from_slice(v),
            )
        })
        .collect())
}

/// A field block to encode: `(name, value, sensitive)`, inline for typical heads.
pub(crate) type Block<'a> = smallvec::SmallVec<[(&'a [u8], &'a [u8], bool); 12]>;

/// Fields as byte pairs, inline for typical heads.
pub(crate) type Pairs<'a> = smallvec::SmallVec<[(&'a [u8], &'a [u8]); 12]>;

/// View application fields as byte pairs.
pub(crate) fn as_pairs<'a>(
    fields: &'a [(&'a str, &'a [u8])],
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
    fields.iter().map(|(n, v)| (n.as_bytes(), *v))
}

/// Implements [`ferry_proto::Connection`] for a role's connection type (a struct with a
/// `conn: Conn` field) by handing every call to the shared [`Conn`].
macro_rules! connection_via_conn {
    ($ty:ty) => {
        impl ferry_proto::Connection for $ty {
            type Event = crate::Event;
            type Error = crate::Error;

            fn info(&self) -> &'static ferry_proto::ProtocolInfo {
                &crate::server::HTTP2_INFO
            }

            fn handle_input(
                &mut self,
                now: ferry_proto::Instant,
                input: &mut bytes::BytesMut,
            ) -> Result<(), crate::Error> {
                self.conn.handle_input(now, input)
            }

            fn handle_eof(&mut self, now: ferry_proto::Instant) {
                self.conn.handle_eof(now);
                self.conn.update_lifecycle();
            }

            fn poll_event(&mut self) -> Option<crate::Event> {
                self.conn.events.pop_front()
            }

            fn poll_transmit(&mut self) -> Option<bytes::Bytes> {
                self.conn.poll_transmit()
            }

            fn poll_timeout(&self) -> Option<ferry_proto::Instant> {
                self.conn.poll_timeout()
            }

            fn handle_timeout(&mut self, now: ferry_proto::Instant) {
                self.conn.handle_timeout(now);
                self.conn.update_lifecycle();
            }

            fn wants_read(&self) -> bool {
                self.conn.wants_read()
            }

            fn is_closed(&self) -> bool {
                self.conn.is_closed()
            }

            fn state(&self) -> ferry_proto::State {
                self.conn.lifecycle.state()
            }
        }
    };
}
pub(crate) use connection_via_conn;
