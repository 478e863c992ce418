//! Shared harness of the HTTP/2 connection targets (`h2_server_conn`, `h2_client_conn`).

use bytes::{Bytes, BytesMut};
use ferry_http2::frame::{decode, Frame, FrameHeader, Kind, Status};
use ferry_http2::{Config, Error, Event};
use ferry_proto::{Connection, Instant};
use std::sync::Arc;
use std::time::Duration;

/// Small limits so that short inputs reach them: few streams, small windows and buffers.
pub fn small_config() -> Arc<Config> {
    let mut c = Config::default();
    c.max_concurrent_streams = 8;
    c.initial_stream_window = 4096;
    c.initial_connection_window = 16384;
    c.max_header_list_size = 2048;
    c.max_header_block = 4096;
    c.max_continuation_frames = 4;
    c.settings_timeout = Duration::from_secs(2);
    c.handshake_timeout = Some(Duration::from_secs(3));
    c.idle_timeout = Some(Duration::from_secs(10));
    c.max_send_buffer = 8192;
    c.max_send_buffer_connection = 32768;
    c.max_queued_events = 16;
    c.max_resets = 8;
    c.max_control_frames = 32;
    c.max_pending_output = 16384;
    Arc::new(c)
}

/// A SETTINGS frame with `pairs`, or an ACK.
pub fn settings(pairs: &[(u16, u32)], ack: bool) -> Vec<u8> {
    let mut v = Vec::new();
    let len = pairs.len() * 6;
    v.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    v.extend_from_slice(&[4, ack as u8, 0, 0, 0, 0]);
    for (k, val) in pairs {
        v.extend_from_slice(&k.to_be_bytes());
        v.extend_from_slice(&val.to_be_bytes());
    }
    v
}

/// Drives one connection: input pumping with the sticky-error and bounded-input checks,
/// output draining (or not, while `stall` > 0) with the bounded-output check.
pub struct Harness<C> {
    /// The connection.
    pub conn: C,
    /// `error()` of the concrete type.
    pub error_of: fn(&C) -> Option<Error>,
    /// Bytes from the peer not yet consumed.
    pub input: BytesMut,
    /// Virtual clock.
    pub now: Instant,
    /// The error `handle_input` returned.
    pub error: Option<Error>,
    /// Everything transmitted.
    pub output: Vec<u8>,
    /// Drains left to skip (the peer is not reading).
    pub stall: u8,
    /// Most input the connection may leave while it wants to read.
    pub in_bound: usize,
    /// Most output it may have queued at any time.
    pub out_bound: usize,
    /// Events not yet looked at by the target.
    pub events: Vec<Event>,
    /// Output length once the error's answer was drained: nothing may follow.
    after_error: Option<usize>,
    /// The output starts with the client preface.
    client: bool,
}

impl<C: Connection<Event = Event, Error = Error>> Harness<C> {
    /// The output starts with the client preface (a client connection).
    pub fn client(mut self) -> Self {
        self.client = true;
        self
    }

    /// A harness for `conn` with bounds derived from `config`.
    pub fn new(conn: C, error_of: fn(&C) -> Option<Error>, config: &Config, now: Instant) -> Self {
        Harness {
            conn,
            error_of,
            input: BytesMut::new(),
            now,
            error: None,
            output: Vec::new(),
            stall: 0,
            in_bound: 9 + config.max_frame_size as usize,
            // Control answers are capped by max_pending_output, data by the send buffers;
            // heads, the odd frame over the cap and the final GOAWAY come on top.
            out_bound: config.max_pending_output
                + config.max_send_buffer_connection
                + 2 * config.max_frame_size as usize
                + config.max_concurrent_streams as usize * 2048
                + 4096,
            events: Vec::new(),
            after_error: None,
            client: false,
        }
    }

    /// Hand over peer bytes and pump.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        self.pump();
    }

    /// Call `handle_input` until nothing moves, draining events and output as it goes.
    pub fn pump(&mut self) {
        for _ in 0..64 {
            let before = self.input.len();
            match self.conn.handle_input(self.now, &mut self.input) {
                Ok(()) => {
                    assert_eq!(self.error, None, "Ok after an error");
                    if self.conn.wants_read() {
                        assert!(
                            self.input.len() <= self.in_bound,
                            "{} bytes left in the input while reading",
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
                    self.error = Some(e);
                }
            }
            if let Some(e) = self.error {
                assert_eq!((self.error_of)(&self.conn), Some(e), "error() forgot it");
            }
            let mut progress = self.input.len() != before;
            while let Some(ev) = self.conn.poll_event() {
                if let Event::Error { error } = ev {
                    assert_eq!((self.error_of)(&self.conn), Some(error));
                }
                self.events.push(ev);
                progress = true;
            }
            progress |= self.drain();
            if !progress || !self.conn.wants_read() && self.input.len() == before {
                break;
            }
        }
    }

    /// Take the queued output unless stalled; checks its size.
    pub fn drain(&mut self) -> bool {
        if self.stall > 0 {
            self.stall -= 1;
            return false;
        }
        let start = self.output.len();
        while let Some(b) = self.conn.poll_transmit() {
            self.output.extend_from_slice(&b);
            assert!(
                self.output.len() - start <= self.out_bound,
                "{} octets of output queued (bound {})",
                self.output.len() - start,
                self.out_bound
            );
        }
        if let Some(len) = self.after_error {
            if self.output.len() != len {
                let before = check_frames(&self.output[..len], self.client);
                let extra = check_frames(&self.output[len..], false);
                panic!(
                    "sent after the connection error {:?} (last frame then: {:?}): {extra:?}",
                    self.error,
                    before.last()
                );
            }
        } else if (self.error_of)(&self.conn).is_some() {
            self.after_error = Some(self.output.len());
        }
        self.output.len() != start
    }

    /// Move the clock by `ms` and handle the timeout (an early call must do nothing).
    pub fn wait(&mut self, ms: u64) {
        let later = self.now + Duration::from_millis(ms);
        if let Some(d) = self.conn.poll_timeout() {
            if later < d {
                let n = self.output.len();
                self.conn.handle_timeout(later);
                assert!(
                    self.conn.poll_event().is_none(),
                    "event from an early timeout"
                );
                let _ = n;
            }
        }
        self.now = later;
        self.conn.handle_timeout(self.now);
        self.pump();
    }

    /// End of run: drain everything and check the output as a frame stream.
    pub fn finish(&mut self, client_preface: bool) {
        self.stall = 0;
        self.pump();
        self.drain();
        let frames = check_frames(&self.output, self.client || client_preface);
        if std::env::var_os("FERRY_FUZZ_DEBUG").is_some() {
            eprintln!("error: {:?}", self.error);
            for f in &frames {
                eprintln!("sent {f:?}");
            }
        }
        // EOF is the one error answered with nothing: the peer is gone.
        if self.error.is_some_and(|e| e != Error::UnexpectedEof) {
            let last = frames
                .last()
                .expect("nothing sent after a connection error");
            assert_eq!(
                last.kind,
                Kind::GoAway,
                "last frame after a connection error"
            );
        }
    }
}

/// Parses a whole output stream as complete, valid frames.
pub fn check_frames(out: &[u8], client_preface: bool) -> Vec<FrameHeader> {
    let mut buf = BytesMut::from(out);
    if client_preface {
        assert!(
            out.starts_with(ferry_http2::PREFACE),
            "client output without the preface"
        );
        let _ = buf.split_to(ferry_http2::PREFACE.len());
    }
    let mut heads = Vec::new();
    while !buf.is_empty() {
        let (head, payload): (FrameHeader, Bytes) = match decode(&mut buf, (1 << 24) - 1) {
            Ok(Status::Complete(x)) => x,
            other => panic!(
                "output is not a frame stream ({other:?}) after {} frames",
                heads.len()
            ),
        };
        if let Err(e) = Frame::parse(&head, payload.clone()) {
            panic!("sent an invalid frame {head:?} ({e:?}): {payload:?}");
        }
        heads.push(head);
    }
    heads
}
