//! In-memory test harness: drive a client connection against a server connection with a
//! virtual clock, optionally delivering the byte streams in small pieces so every parser sees
//! every split point. Sans-IO, so it is usable from any crate's unit tests (and fuzz targets).

use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::fmt;
use core::time::Duration;

use crate::{Connection, ErrorKind, Instant, ProtoError, ProtocolInfo, State};

/// Which side of a [`Pair`] failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PairError<C, S> {
    /// The client connection returned an error from `handle_input`.
    Client(C),
    /// The server connection returned an error from `handle_input`.
    Server(S),
}

/// A client and a server joined by two in-memory byte pipes and one virtual clock.
///
/// `max_chunk` bounds how many bytes one `handle_input` call receives: with `1`, every byte
/// boundary of both streams is exercised.
pub struct Pair<C: Connection, S: Connection> {
    /// The client side.
    pub client: C,
    /// The server side.
    pub server: S,
    /// The virtual clock, moved only by [`Pair::advance`].
    pub now: Instant,
    /// Bytes the server sent that the client has not consumed yet.
    pub to_client: BytesMut,
    /// Bytes the client sent that the server has not consumed yet.
    pub to_server: BytesMut,
    /// Everything the client ever sent, for assertions.
    pub client_sent: Vec<u8>,
    /// Everything the server ever sent, for assertions.
    pub server_sent: Vec<u8>,
    client_pending: BytesMut,
    server_pending: BytesMut,
    /// Largest piece delivered per `handle_input` call.
    pub max_chunk: usize,
    client_eof_sent: bool,
    server_eof_sent: bool,
}

impl<C: Connection, S: Connection> Pair<C, S> {
    /// Join `client` and `server`, whole-buffer delivery, clock at zero.
    pub fn new(client: C, server: S) -> Self {
        Pair {
            client,
            server,
            now: Instant::ZERO,
            to_client: BytesMut::new(),
            to_server: BytesMut::new(),
            client_sent: Vec::new(),
            server_sent: Vec::new(),
            client_pending: BytesMut::new(),
            server_pending: BytesMut::new(),
            max_chunk: usize::MAX,
            client_eof_sent: false,
            server_eof_sent: false,
        }
    }

    /// Deliver at most `n` bytes per `handle_input` call (`n >= 1`).
    pub fn with_max_chunk(mut self, n: usize) -> Self {
        self.max_chunk = n.max(1);
        self
    }

    /// Move bytes both ways until neither side has anything more to do, handing every event to
    /// the callbacks (which may issue commands on the connection they are given).
    pub fn drive_with(
        &mut self,
        mut on_client: impl FnMut(&mut C, C::Event),
        mut on_server: impl FnMut(&mut S, S::Event),
    ) -> Result<(), PairError<C::Error, S::Error>> {
        loop {
            let mut progress = false;
            while let Some(ev) = self.client.poll_event() {
                on_client(&mut self.client, ev);
                progress = true;
            }
            while let Some(ev) = self.server.poll_event() {
                on_server(&mut self.server, ev);
                progress = true;
            }
            while let Some(b) = self.client.poll_transmit() {
                self.client_sent.extend_from_slice(&b);
                self.to_server.extend_from_slice(&b);
                progress = true;
            }
            while let Some(b) = self.server.poll_transmit() {
                self.server_sent.extend_from_slice(&b);
                self.to_client.extend_from_slice(&b);
                progress = true;
            }
            if deliver(
                &mut self.server,
                self.now,
                &mut self.to_server,
                &mut self.server_pending,
                self.max_chunk,
            )
            .map_err(PairError::Server)?
            {
                progress = true;
            }
            if deliver(
                &mut self.client,
                self.now,
                &mut self.to_client,
                &mut self.client_pending,
                self.max_chunk,
            )
            .map_err(PairError::Client)?
            {
                progress = true;
            }
            if !self.server_eof_sent && self.client.is_closed() && self.to_server.is_empty() {
                self.server_eof_sent = true;
                self.server.handle_eof(self.now);
                progress = true;
            }
            if !self.client_eof_sent && self.server.is_closed() && self.to_client.is_empty() {
                self.client_eof_sent = true;
                self.client.handle_eof(self.now);
                progress = true;
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// [`drive_with`](Pair::drive_with), collecting the events instead.
    #[allow(clippy::type_complexity)]
    pub fn drive(
        &mut self,
    ) -> Result<(Vec<C::Event>, Vec<S::Event>), PairError<C::Error, S::Error>> {
        let mut ce = Vec::new();
        let mut se = Vec::new();
        self.drive_with(|_, e| ce.push(e), |_, e| se.push(e))?;
        Ok((ce, se))
    }

    /// Move the clock forward by `d` and fire any due timeouts on both sides.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        for _ in 0..64 {
            let mut fired = false;
            if let Some(t) = self.client.poll_timeout() {
                if t <= self.now {
                    self.client.handle_timeout(self.now);
                    fired = true;
                }
            }
            if let Some(t) = self.server.poll_timeout() {
                if t <= self.now {
                    self.server.handle_timeout(self.now);
                    fired = true;
                }
            }
            if !fired {
                break;
            }
        }
    }

    /// Tell the server the client closed its sending side (EOF).
    pub fn client_eof(&mut self) {
        if !self.server_eof_sent {
            self.server_eof_sent = true;
            self.server.handle_eof(self.now);
        }
    }

    /// Tell the client the server closed its sending side (EOF).
    pub fn server_eof(&mut self) {
        if !self.client_eof_sent {
            self.client_eof_sent = true;
            self.client.handle_eof(self.now);
        }
    }
}

/// Deliver pending bytes of `wire` to `conn` in pieces of at most `max_chunk`, honouring
/// `wants_read`. Returns whether anything was consumed.
fn deliver<T: Connection>(
    conn: &mut T,
    now: Instant,
    wire: &mut BytesMut,
    pending: &mut BytesMut,
    max_chunk: usize,
) -> Result<bool, T::Error> {
    let mut progress = false;
    if !pending.is_empty() && conn.wants_read() && !conn.is_closed() {
        let before = pending.len();
        conn.handle_input(now, pending)?;
        progress |= pending.len() != before;
    }
    while !wire.is_empty() && conn.wants_read() && !conn.is_closed() {
        let n = wire.len().min(max_chunk);
        pending.extend_from_slice(&wire.split_to(n));
        progress = true;
        conn.handle_input(now, pending)?;
    }
    Ok(progress)
}

/// Feed `data` to `conn` split into two pieces at every boundary `1..data.len()`, each time on a
/// fresh connection from `make`, and hand each run's connection to `check`.
pub fn for_each_split<T: Connection>(
    data: &[u8],
    now: Instant,
    mut make: impl FnMut() -> T,
    mut check: impl FnMut(usize, T, Result<(), T::Error>),
) {
    for at in 1..data.len().max(2) {
        let at = at.min(data.len());
        let mut conn = make();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&data[..at]);
        let mut res = conn.handle_input(now, &mut buf);
        if res.is_ok() {
            buf.extend_from_slice(&data[at..]);
            res = conn.handle_input(now, &mut buf);
        }
        check(at, conn, res);
    }
}

/// A trivial connection that echoes every byte back and reports it as an event; used by docs
/// and harness tests.
#[derive(Debug, Default)]
pub struct Echo {
    out: Vec<Bytes>,
    events: Vec<Bytes>,
    eof: bool,
}

/// [`Echo`] never fails; this type has no values.
#[derive(Debug, PartialEq, Eq)]
pub enum Never {}

impl fmt::Display for Never {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}
impl core::error::Error for Never {}
impl ProtoError for Never {
    fn kind(&self) -> ErrorKind {
        match *self {}
    }
}

static ECHO_INFO: ProtocolInfo = ProtocolInfo {
    name: "echo",
    default_port: 7,
    binary: true,
    streaming: true,
    tls: crate::TlsRequirement::Optional,
    multiplexing: crate::Multiplexing::None,
};

impl Connection for Echo {
    type Event = Bytes;
    type Error = Never;
    fn info(&self) -> &'static ProtocolInfo {
        &ECHO_INFO
    }
    fn handle_input(&mut self, _now: Instant, input: &mut BytesMut) -> Result<(), Never> {
        if !input.is_empty() {
            let b = input.split().freeze();
            self.out.push(b.clone());
            self.events.push(b);
        }
        Ok(())
    }
    fn handle_eof(&mut self, _now: Instant) {
        self.eof = true;
    }
    fn poll_event(&mut self) -> Option<Bytes> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.remove(0))
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn wants_read(&self) -> bool {
        !self.eof
    }
    fn is_closed(&self) -> bool {
        self.eof
    }
    fn state(&self) -> State {
        if self.eof {
            State::Closed
        } else {
            State::Ready
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_moves_bytes_in_small_pieces() {
        let mut client = Echo::default();
        client.out.push(Bytes::from_static(b"hello"));
        let mut pair = Pair::new(client, Echo::default()).with_max_chunk(2);
        // Echo echoes back forever between two echoes; stop after the first exchange by EOF.
        pair.server.eof = false;
        let mut seen = Vec::new();
        let mut rounds = 0;
        pair.drive_with(
            |c, _e| {
                rounds += 1;
                if rounds > 3 {
                    c.eof = true;
                }
            },
            |_s, e| seen.extend_from_slice(&e),
        )
        .unwrap();
        assert!(seen.starts_with(b"hello"));
    }

    #[test]
    fn for_each_split_visits_every_boundary() {
        let mut ats = Vec::new();
        for_each_split(b"abcd", Instant::ZERO, Echo::default, |at, mut c, r| {
            assert!(r.is_ok());
            let mut all = Vec::new();
            while let Some(e) = c.poll_event() {
                all.extend_from_slice(&e);
            }
            assert_eq!(all, b"abcd");
            ats.push(at);
        });
        assert_eq!(ats, [1, 2, 3]);
    }

    #[test]
    fn advance_fires_nothing_without_deadlines() {
        let mut pair = Pair::new(Echo::default(), Echo::default());
        pair.advance(Duration::from_secs(5));
        assert_eq!(pair.now, Instant::from_nanos(5_000_000_000));
    }
}
